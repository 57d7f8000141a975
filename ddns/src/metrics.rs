//! Query counters by outcome and by reason for dropping, sharded per receive loop so
//! that the query path never shares a cache line between cores.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What happened to one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Outcome {
    /// NOERROR with at least one answer record.
    Answer = 0,
    /// NOERROR, no answer (the name exists, not the type: RFC 2308 section 2.2).
    NoData,
    /// NXDOMAIN (RFC 2308 section 2.1).
    NxDomain,
    /// SERVFAIL (not yet synced with the cluster, or an internal encoding failure).
    ServFail,
    /// REFUSED (outside our zone, not class IN, zone transfer not allowed).
    Refused,
    /// FORMERR (malformed query: RFC 1035 section 4.1.1).
    FormErr,
    /// NOTIMP (opcode other than QUERY).
    NotImp,
    /// BADVERS (EDNS version above 0: RFC 6891 section 6.1.3).
    BadVers,
    /// Dropped: shorter than a DNS header, nothing to answer to.
    DropShort,
    /// Dropped: QR bit set (a response: never answered, avoids reflection loops).
    DropResponse,
    /// Dropped: source port 0 or otherwise unanswerable source.
    DropSource,
    /// NOTAUTH: a TSIG that does not verify (RFC 8945 section 5.2: BADKEY, BADSIG,
    /// BADTIME).
    NotAuth,
    /// A zone transfer served (AXFR, IXFR, or IXFR's single SOA), counted once.
    Transfer,
}

const N: usize = 13;

/// Every outcome, in index order.
pub const OUTCOMES: [Outcome; N] = [
    Outcome::Answer,
    Outcome::NoData,
    Outcome::NxDomain,
    Outcome::ServFail,
    Outcome::Refused,
    Outcome::FormErr,
    Outcome::NotImp,
    Outcome::BadVers,
    Outcome::DropShort,
    Outcome::DropResponse,
    Outcome::DropSource,
    Outcome::NotAuth,
    Outcome::Transfer,
];

impl Outcome {
    /// Stable label, for logs and status output.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Answer => "noerror",
            Outcome::NoData => "nodata",
            Outcome::NxDomain => "nxdomain",
            Outcome::ServFail => "servfail",
            Outcome::Refused => "refused",
            Outcome::FormErr => "formerr",
            Outcome::NotImp => "notimp",
            Outcome::BadVers => "badvers",
            Outcome::DropShort => "drop_short",
            Outcome::DropResponse => "drop_response",
            Outcome::DropSource => "drop_source",
            Outcome::NotAuth => "notauth",
            Outcome::Transfer => "xfr",
        }
    }
}

/// One shard of counters (one per receive loop).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Shard {
    outcomes: [AtomicU64; N],
    truncated: AtomicU64,
    udp: AtomicU64,
    tcp: AtomicU64,
}

impl Shard {
    /// Count one message and its outcome.
    pub fn count(&self, outcome: Outcome, tcp: bool, truncated: bool) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        if tcp {
            self.tcp.fetch_add(1, Ordering::Relaxed);
        } else {
            self.udp.fetch_add(1, Ordering::Relaxed);
        }
        if truncated {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// All counters of one server.
#[derive(Debug, Default)]
pub struct Counters {
    shards: Mutex<Vec<Arc<Shard>>>,
}

/// Totals at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterValues {
    /// Per outcome, indexed like [`OUTCOMES`].
    pub outcomes: [u64; N],
    /// UDP responses sent with TC=1 (client should retry over TCP).
    pub truncated: u64,
    /// Messages received over UDP.
    pub udp: u64,
    /// Messages received over TCP.
    pub tcp: u64,
}

impl CounterValues {
    /// Count for one outcome.
    pub fn get(&self, o: Outcome) -> u64 {
        self.outcomes[o as usize]
    }

    /// `(label, count)` pairs for every outcome.
    pub fn by_label(&self) -> Vec<(&'static str, u64)> {
        OUTCOMES.iter().map(|o| (o.label(), self.get(*o))).collect()
    }
}

impl Counters {
    /// A new shard that is included in the totals.
    pub fn shard(&self) -> Arc<Shard> {
        let s = Arc::new(Shard::default());
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&s));
        s
    }

    /// Sum over all shards.
    pub fn values(&self) -> CounterValues {
        let mut v = CounterValues::default();
        for s in self.shards.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            for (i, c) in s.outcomes.iter().enumerate() {
                v.outcomes[i] += c.load(Ordering::Relaxed);
            }
            v.truncated += s.truncated.load(Ordering::Relaxed);
            v.udp += s.udp.load(Ordering::Relaxed);
            v.tcp += s.tcp.load(Ordering::Relaxed);
        }
        v
    }
}
