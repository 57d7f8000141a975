//! Zone transfer to configured secondaries and NOTIFY on change, both TSIG-signed.
//!
//! * AXFR (RFC 5936) over TCP from the current [`Snapshot`]: SOA first and last, then NS,
//!   the pool name as a delegation to the head-ends ([`zone_records`]), glue and every
//!   gateway name, [`RECORDS_PER_MESSAGE`] records per message.
//!   Over UDP: REFUSED (RFC 5936 section 4.2 leaves AXFR over UDP undefined).
//! * IXFR (RFC 1995): a client that already has the current serial gets the single SOA
//!   (section 4); one whose serial is a snapshot we transferred to it (remembered per
//!   secondary IP) gets the difference, one condensed sequence (section 4); any other a
//!   full AXFR-style answer (section 4 allows it). Over UDP always the single SOA
//!   (section 2: "does not fit"), which sends the client to TCP.
//! * Access: the request's source IP must be a `[[dns.secondary]]` address and the
//!   request signed with that secondary's key (RFC 8945). Unsigned or from elsewhere:
//!   REFUSED. A bad signature: NOTAUTH with the TSIG error BADKEY / BADSIG (unsigned) or
//!   BADTIME (signed, with our time), RFC 8945 section 5.2.
//! * Any other query carrying a TSIG (a secondary's SOA check before a transfer) is
//!   verified and answered signed.
//! * NOTIFY (RFC 1996): one task per secondary waits for the serial to change, lets the
//!   burst settle ([`NOTIFY_DELAY`]), sends one signed NOTIFY and retries it
//!   ([`NOTIFY_TRIES`]) until a signed answer arrives; changes in the meantime are
//!   coalesced into the next NOTIFY, so at most one is in flight per secondary.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::server::ResponseHandler;
use hickory_server::zone_handler::{MessageRequest, MessageResponseBuilder};

use crate::config::DnsConfig;
use crate::error::Error;
use crate::metrics::Outcome;
use crate::tsig::{self, Rejected, TsigKey, TsigRecord};
use crate::zone::{Snapshot, Zone};

/// Records per AXFR message: 200 of the largest (255-octet owner, AAAA) stay below
/// 64 KiB with the question and TSIG.
pub const RECORDS_PER_MESSAGE: usize = 200;
/// How long a burst of changes settles before NOTIFY goes out.
pub const NOTIFY_DELAY: Duration = Duration::from_secs(1);
/// NOTIFY attempts per change (RFC 1996 section 3.6: retransmit until answered).
pub const NOTIFY_TRIES: u32 = 5;
/// Wait for a NOTIFY answer before retrying.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(2);

/// One secondary, resolved from `[[dns.secondary]]`.
#[derive(Debug, Clone)]
pub struct Secondary {
    /// NOTIFY target; transfers are accepted from its IP.
    pub addr: SocketAddr,
    /// The key its transfers and our NOTIFYs are signed with.
    pub key: Arc<TsigKey>,
    /// Whether it gets NOTIFY.
    pub notify: bool,
}

/// Transfer and NOTIFY counters.
#[derive(Debug, Default)]
pub struct XfrStats {
    /// Full transfers sent (AXFR, and IXFR answered AXFR-style).
    pub full: AtomicU64,
    /// IXFR answered with the difference from the client's serial (RFC 1995 section 4).
    pub incremental: AtomicU64,
    /// IXFR answered with the single current SOA (client up to date, or UDP).
    pub up_to_date: AtomicU64,
    /// Transfers refused (not a secondary, unsigned, AXFR over UDP, not our zone).
    pub refused: AtomicU64,
    /// Requests with a bad TSIG (NOTAUTH: BADKEY, BADSIG, BADTIME).
    pub notauth: AtomicU64,
    /// Other signed queries answered signed.
    pub signed_queries: AtomicU64,
    /// NOTIFY messages sent (retries included).
    pub notify_sent: AtomicU64,
    /// NOTIFYs answered by the secondary with a valid signature.
    pub notify_acked: AtomicU64,
    /// Changes whose NOTIFY was never answered after every try.
    pub notify_failed: AtomicU64,
}

impl XfrStats {
    /// Nothing counted yet (no secondary ever asked, no NOTIFY sent).
    pub fn is_idle(&self) -> bool {
        self.by_label().iter().all(|(_, n)| *n == 0)
    }

    /// `(label, value)` pairs, for status output and metrics.
    pub fn by_label(&self) -> Vec<(&'static str, u64)> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("full", l(&self.full)),
            ("incremental", l(&self.incremental)),
            ("up_to_date", l(&self.up_to_date)),
            ("refused", l(&self.refused)),
            ("notauth", l(&self.notauth)),
            ("signed_queries", l(&self.signed_queries)),
            ("notify_sent", l(&self.notify_sent)),
            ("notify_acked", l(&self.notify_acked)),
            ("notify_failed", l(&self.notify_failed)),
        ]
    }
}

/// Keys, secondaries and counters of zone transfer.
#[derive(Debug, Default)]
pub struct Transfer {
    keys: Vec<Arc<TsigKey>>,
    secondaries: Vec<Secondary>,
    stats: XfrStats,
    /// Snapshots transferred, by the secondary's IP: the bases IXFR deltas start from.
    /// Only what this member sent to that secondary: another member's snapshot with the
    /// same serial may hold other data while the cluster converges.
    history: Mutex<VecDeque<(IpAddr, Arc<Snapshot>)>>,
}

/// Snapshots remembered for IXFR (all secondaries together); they share structure.
const HISTORY: usize = 64;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 1982: is `a` at least `b`?
fn serial_ge(a: u32, b: u32) -> bool {
    a.wrapping_sub(b) < (1 << 31)
}

/// True when the request is for us: a zone transfer, or signed.
pub(crate) fn wants(req: &MessageRequest) -> bool {
    req.queries
        .queries()
        .iter()
        .any(|q| matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR))
        || req
            .additionals
            .iter()
            .any(|r| matches!(r.data, RData::TSIG(_)))
}

/// One response message of a transfer (or the single response to anything else).
pub(crate) struct Msg<'s> {
    pub(crate) metadata: Metadata,
    pub(crate) answers: Vec<Cow<'s, Record>>,
    pub(crate) authority: Vec<&'s Record>,
    pub(crate) additional: Vec<&'s Record>,
    pub(crate) tsig: Option<TsigRecord>,
}

/// The responses to one request, and how it is counted.
pub(crate) struct Answer<'s> {
    pub(crate) msgs: Vec<Msg<'s>>,
    pub(crate) edns: Option<Edns>,
    pub(crate) outcome: Outcome,
}

/// How the responses are signed.
enum Signing {
    None,
    /// Sign with `key`, chaining from the request MAC.
    Key {
        key: Arc<TsigKey>,
        request_mac: Vec<u8>,
    },
    /// Signed BADTIME error response with our time (RFC 8945 section 5.2.3).
    BadTime {
        key: Arc<TsigKey>,
        request_mac: Vec<u8>,
    },
    /// Unsigned TSIG carrying BADKEY / BADSIG.
    Unsigned(TsigRecord),
}

impl Transfer {
    /// Resolve `[[dns.tsig_key]]` and `[[dns.secondary]]`: every secondary names a key
    /// that exists; key names are unique.
    pub fn new(cfg: &DnsConfig) -> Result<Transfer, Error> {
        let mut keys: Vec<Arc<TsigKey>> = Vec::new();
        for (i, k) in cfg.tsig_key.iter().enumerate() {
            let key = TsigKey::new(k).map_err(|e| Error::ConfigKey {
                key: format!("tsig_key[{i}].name"),
                reason: e.to_string(),
            })?;
            if keys.iter().any(|o| o.name() == key.name()) {
                return Err(Error::ConfigKey {
                    key: format!("tsig_key[{i}].name"),
                    reason: format!("{:?} is defined twice", k.name),
                });
            }
            keys.push(Arc::new(key));
        }
        let mut secondaries = Vec::new();
        for (i, s) in cfg.secondary.iter().enumerate() {
            let want = s.tsig_key.trim_end_matches('.').to_ascii_lowercase();
            let key = keys
                .iter()
                .find(|k| k.name().to_ascii().trim_end_matches('.') == want)
                .ok_or_else(|| Error::ConfigKey {
                    key: format!("secondary[{i}].tsig_key"),
                    reason: format!("no [[dns.tsig_key]] named {:?}", s.tsig_key),
                })?;
            secondaries.push(Secondary {
                addr: s.address.0,
                key: Arc::clone(key),
                notify: s.notify,
            });
        }
        Ok(Transfer {
            keys,
            secondaries,
            stats: XfrStats::default(),
            history: Mutex::default(),
        })
    }

    /// Counters.
    pub fn stats(&self) -> &XfrStats {
        &self.stats
    }

    /// The configured secondaries.
    pub fn secondaries(&self) -> &[Secondary] {
        &self.secondaries
    }

    fn allowed(&self, ip: IpAddr, key: &TsigKey) -> bool {
        self.secondaries
            .iter()
            .any(|s| s.addr.ip() == ip && s.key.name() == key.name())
    }

    /// Decide the responses to `req` (received as `raw` from `src`). `edns_size` is our
    /// EDNS(0) payload size.
    pub(crate) fn answer<'s>(
        &self,
        snap: &'s Arc<Snapshot>,
        req: &MessageRequest,
        raw: &[u8],
        src: SocketAddr,
        tcp: bool,
        edns_size: u16,
    ) -> Answer<'s> {
        let now = now_secs();
        let mut metadata = Metadata::response_from_request(&req.metadata);
        metadata.recursion_available = false;
        let edns = req.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(edns_size.max(512));
            e
        });
        let single = |metadata: Metadata, rcode: ResponseCode, outcome: Outcome| {
            let mut m = metadata;
            m.response_code = rcode;
            Answer {
                msgs: vec![Msg {
                    metadata: m,
                    answers: Vec::new(),
                    authority: Vec::new(),
                    additional: Vec::new(),
                    tsig: None,
                }],
                edns: edns.clone(),
                outcome,
            }
        };
        // 1. The signature (RFC 8945 section 5.2), before anything else.
        let received = match tsig::find(raw, &req.additionals) {
            Ok(r) => r,
            Err(()) => return single(metadata, ResponseCode::FormErr, Outcome::FormErr),
        };
        let signing = match &received {
            None => Signing::None,
            Some(r) => match tsig::verify(&self.keys, raw, r, None, now) {
                Ok((key, request_mac)) => Signing::Key { key, request_mac },
                Err(rej) => {
                    self.stats.notauth.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%src, key = %r.name, error = ?rej.error(),
                        "DNS: TSIG rejected");
                    let signing = match *rej {
                        Rejected::BadKey { name, algorithm } => {
                            Signing::Unsigned(tsig::unsigned_error(
                                &name,
                                algorithm,
                                req.metadata.id,
                                now,
                                TsigError::BadKey,
                            ))
                        }
                        Rejected::BadSig { key } => Signing::Unsigned(tsig::unsigned_error(
                            key.name(),
                            r.tsig.algorithm.clone(),
                            req.metadata.id,
                            now,
                            TsigError::BadSig,
                        )),
                        Rejected::BadTime { key, mac } => Signing::BadTime {
                            key,
                            request_mac: mac,
                        },
                    };
                    let a = single(metadata, ResponseCode::NotAuth, Outcome::NotAuth);
                    return self.sign(req, a, signing, now);
                }
            },
        };
        let a = self.decide(snap, req, src, tcp, edns_size, edns, metadata, &signing);
        self.sign(req, a, signing, now)
    }

    /// The unsigned responses, once the signature (if any) verified.
    #[allow(clippy::too_many_arguments)]
    fn decide<'s>(
        &self,
        snap: &'s Arc<Snapshot>,
        req: &MessageRequest,
        src: SocketAddr,
        tcp: bool,
        edns_size: u16,
        edns: Option<Edns>,
        mut metadata: Metadata,
        signing: &Signing,
    ) -> Answer<'s> {
        let one = |metadata: Metadata, answers: Vec<&'s Record>, authority, outcome| Answer {
            msgs: vec![Msg {
                metadata,
                answers: answers.into_iter().map(Cow::Borrowed).collect(),
                authority,
                additional: Vec::new(),
                tsig: None,
            }],
            edns: edns.clone(),
            outcome,
        };
        let queries = req.queries.queries();
        let xfr = queries
            .iter()
            .any(|q| matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR));
        if !xfr {
            // A signed ordinary query (e.g. a secondary's SOA check): the normal answer.
            self.stats.signed_queries.fetch_add(1, Ordering::Relaxed);
            let r = crate::handler::respond(snap, req, edns_size);
            let mut a = Answer {
                msgs: vec![Msg {
                    metadata: r.metadata,
                    answers: r.answers[0]
                        .iter()
                        .chain(r.answers[1].iter())
                        .map(Cow::Borrowed)
                        .collect(),
                    authority: r.authority.iter().collect(),
                    additional: r.additional.iter().collect(),
                    tsig: None,
                }],
                edns: r.edns,
                outcome: r.outcome,
            };
            if !tcp {
                // Over UDP the signed answer must fit with its TSIG RR (key name, algorithm
                // name and MAC: at most about 400 octets); else header and question only,
                // TC set, still signed, and the client retries over TCP (RFC 2181 section 9).
                let max = match &req.edns {
                    Some(e) => e.max_payload().clamp(512, edns_size),
                    None => 512,
                };
                let mut probe = Vec::new();
                let fits = a.msgs.first().is_some_and(|m| {
                    encode(req, m, a.edns.as_ref(), u16::MAX, &mut probe).is_ok()
                        && probe.len() + 400 <= usize::from(max)
                });
                if !fits {
                    if let Some(m) = a.msgs.first_mut() {
                        m.metadata.truncation = true;
                        m.answers.clear();
                        m.authority.clear();
                        m.additional.clear();
                    }
                }
            }
            return a;
        }
        let refuse = |metadata: Metadata, why: &str| {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%src, why, "DNS: zone transfer refused");
            let mut m = metadata;
            m.response_code = ResponseCode::Refused;
            one(m, Vec::new(), Vec::new(), Outcome::Refused)
        };
        if req.metadata.op_code != OpCode::Query || queries.len() != 1 {
            let mut m = metadata;
            m.response_code = ResponseCode::FormErr;
            return one(m, Vec::new(), Vec::new(), Outcome::FormErr);
        }
        let q = &queries[0];
        if q.query_class() != DNSClass::IN || q.name() != &snap.statics.origin {
            return refuse(metadata, "not our zone");
        }
        let ixfr = q.query_type() == RecordType::IXFR;
        if !ixfr && !tcp {
            return refuse(metadata, "AXFR over UDP");
        }
        let key = match signing {
            Signing::Key { key, .. } => key,
            _ => return refuse(metadata, "not signed"),
        };
        if !self.allowed(src.ip(), key) {
            return refuse(metadata, "not a secondary with this key");
        }
        if !snap.synced {
            let mut m = metadata;
            m.response_code = ResponseCode::ServFail;
            return one(m, Vec::new(), Vec::new(), Outcome::ServFail);
        }
        metadata.authoritative = true;
        let soa = &snap.soa[0];
        if ixfr {
            // RFC 1995 section 3: the client's SOA is in the authority section.
            let Some(theirs) = req.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(s) => Some(s.serial),
                _ => None,
            }) else {
                let mut m = metadata;
                m.response_code = ResponseCode::FormErr;
                m.authoritative = false;
                return one(m, Vec::new(), Vec::new(), Outcome::FormErr);
            };
            if !tcp || serial_ge(theirs, snap.serial()) {
                self.stats.up_to_date.fetch_add(1, Ordering::Relaxed);
                return one(metadata, vec![soa], Vec::new(), Outcome::Transfer);
            }
            // A snapshot this secondary got from us: send the difference.
            if let Some(old) = self.served(src.ip(), theirs) {
                if let Some(records) = delta(&old, snap) {
                    self.stats.incremental.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%src, key = %key.name(), from = theirs, to = snap.serial(),
                        changes = records.len().saturating_sub(4), "DNS: zone transfer (IXFR)");
                    self.remember(src.ip(), snap);
                    return chunked(metadata, records, edns);
                }
            }
        }
        self.stats.full.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%src, key = %key.name(), serial = snap.serial(),
            kind = if ixfr { "IXFR (full)" } else { "AXFR" }, "DNS: zone transfer");
        self.remember(src.ip(), snap);
        chunked(metadata, zone_records(snap), edns)
    }

    /// The snapshot with `serial` that we transferred to `ip`, if still remembered.
    fn served(&self, ip: IpAddr, serial: u32) -> Option<Arc<Snapshot>> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.iter()
            .rev()
            .find(|(i, s)| *i == ip && s.serial() == serial)
            .map(|(_, s)| Arc::clone(s))
    }

    /// Remember that `ip` now holds `snap` (the base of its next IXFR).
    fn remember(&self, ip: IpAddr, snap: &Arc<Snapshot>) {
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if h.iter().any(|(i, s)| *i == ip && Arc::ptr_eq(s, snap)) {
            return;
        }
        if h.len() >= HISTORY {
            h.pop_front();
        }
        h.push_back((ip, Arc::clone(snap)));
    }

    /// Attach TSIG RRs: the first message chains from the request MAC, later ones from
    /// the previous message with timers only (RFC 8945 section 5.3.1).
    fn sign<'s>(
        &self,
        req: &MessageRequest,
        mut a: Answer<'s>,
        signing: Signing,
        now: u64,
    ) -> Answer<'s> {
        let (key, mut prior, error, other) = match signing {
            Signing::None => return a,
            Signing::Unsigned(t) => {
                for m in &mut a.msgs {
                    m.tsig = Some(t.clone());
                }
                return a;
            }
            Signing::Key { key, request_mac } => (key, request_mac, None, Vec::new()),
            Signing::BadTime { key, request_mac } => (
                key,
                request_mac,
                Some(TsigError::BadTime),
                tsig::time_other(now),
            ),
        };
        for (i, m) in a.msgs.iter_mut().enumerate() {
            let mut unsigned = Vec::with_capacity(4096);
            if encode(req, m, a.edns.as_ref(), u16::MAX, &mut unsigned).is_err() {
                continue; // sent as SERVFAIL by the caller's encoding
            }
            if let Some((t, mac)) = tsig::sign(
                &key,
                &unsigned,
                Some(&prior),
                i > 0,
                now,
                error,
                other.clone(),
            ) {
                m.tsig = Some(t);
                prior = mac;
            }
        }
        a
    }
}

/// Split `records` into messages of [`RECORDS_PER_MESSAGE`].
fn chunked<'s>(
    metadata: Metadata,
    records: Vec<Cow<'s, Record>>,
    edns: Option<Edns>,
) -> Answer<'s> {
    let msgs = records
        .chunks(RECORDS_PER_MESSAGE)
        .map(|c| Msg {
            metadata,
            answers: c.to_vec(),
            authority: Vec::new(),
            additional: Vec::new(),
            tsig: None,
        })
        .collect();
    Answer {
        msgs,
        edns,
        outcome: Outcome::Transfer,
    }
}

/// The records of one name in `old` and not in `new`, appended to `out`.
fn missing<'s>(
    old: &'s crate::zone::NameRecords,
    new: Option<&crate::zone::NameRecords>,
    out: &mut Vec<Cow<'s, Record>>,
) {
    for r in old.a.iter().chain(old.aaaa.iter()) {
        let kept = new.is_some_and(|n| n.a.iter().chain(n.aaaa.iter()).any(|x| x == r));
        if !kept {
            out.push(Cow::Borrowed(r));
        }
    }
}

/// The IXFR answer from `old` to `new` (RFC 1995 section 4, one condensed difference
/// sequence): new SOA, old SOA, deleted records, new SOA, added records, new SOA.
/// None when the zone's fixed part changed (configuration): send it all.
fn delta<'s>(old: &Snapshot, new: &'s Snapshot) -> Option<Vec<Cow<'s, Record>>> {
    if !Arc::ptr_eq(&old.statics, &new.statics) {
        return None;
    }
    let mut deleted: Vec<Cow<'s, Record>> = Vec::new();
    let mut added: Vec<Cow<'s, Record>> = Vec::new();
    // owned copies of what left (borrowed from `old`, which the caller drops)
    let mut gone: Vec<Cow<'_, Record>> = Vec::new();
    // the pool is transferred as a delegation (see `zone_records`): static
    for (k, o) in old.names.iter() {
        match new.names.get(k) {
            Some(n) if Arc::ptr_eq(o, n) => {}
            n => missing(o, n.map(|n| n.as_ref()), &mut gone),
        }
    }
    for (k, n) in new.names.iter() {
        match old.names.get(k) {
            Some(o) if Arc::ptr_eq(o, n) => {}
            o => missing(n, o.map(|o| o.as_ref()), &mut added),
        }
    }
    deleted.extend(gone.into_iter().map(|r| Cow::Owned(r.into_owned())));
    let soa = &new.soa[0];
    let mut v = Vec::with_capacity(deleted.len() + added.len() + 4);
    v.push(Cow::Borrowed(soa));
    v.push(Cow::Owned(old.soa[0].clone()));
    v.extend(deleted);
    v.push(Cow::Borrowed(soa));
    v.extend(added);
    v.push(Cow::Borrowed(soa));
    Some(v)
}

/// Every record of the zone in transfer order: SOA, NS, glue, gateway names, SOA.
///
/// The pool name is not transferred as addresses: its answer follows member health
/// without a serial change (it is not zone data), and a secondary holding a copy would
/// keep handing out a member that failed (seed 003 ch. 3, "DNS keeps giving out the
/// failed server"). Secondaries get a delegation of the pool name to the zone's name
/// servers instead, so a resolver asking them is referred to the head-ends for it.
pub(crate) fn zone_records(snap: &Snapshot) -> Vec<Cow<'_, Record>> {
    let st = &snap.statics;
    let mut v: Vec<Cow<'_, Record>> = Vec::with_capacity(snap.names.len() + 16);
    v.push(Cow::Borrowed(&snap.soa[0]));
    v.extend(st.ns.iter().map(Cow::Borrowed));
    for (rel, f) in &st.fixed {
        if !matches!(f, crate::zone::Fixed::Pool) {
            continue;
        }
        let Some(name) = hickory_proto::rr::Name::from_ascii(rel)
            .ok()
            .and_then(|n| n.append_domain(snap.origin()).ok())
        else {
            continue;
        };
        for ns in &st.ns {
            let mut r = ns.clone();
            r.name = name.clone();
            v.push(Cow::Owned(r));
        }
    }
    v.extend(st.glue.iter().map(Cow::Borrowed));
    for n in snap.names.values() {
        v.extend(n.a.iter().chain(n.aaaa.iter()).map(Cow::Borrowed));
    }
    v.push(Cow::Borrowed(&snap.soa[0]));
    v
}

/// Write one response message to `out` (cleared), with its TSIG RR if it has one.
pub(crate) fn encode(
    req: &MessageRequest,
    m: &Msg<'_>,
    edns: Option<&Edns>,
    max_size: u16,
    out: &mut Vec<u8>,
) -> Result<bool, hickory_proto::ProtoError> {
    out.clear();
    let mut enc = BinEncoder::new(out);
    enc.set_max_size(max_size);
    let mut msg = MessageResponseBuilder::new(&req.queries, edns).build(
        m.metadata,
        m.answers.iter().map(|r| r.as_ref()),
        m.authority.iter().copied(),
        std::iter::empty(),
        m.additional.iter().copied(),
    );
    if let Some(t) = &m.tsig {
        msg.set_signature(t.clone());
    }
    Ok(msg.destructive_emit(&mut enc)?.truncation)
}

/// Send `a` over a hickory TCP connection, message by message.
pub(crate) async fn send<R: ResponseHandler>(
    req: &MessageRequest,
    a: &Answer<'_>,
    handle: &mut R,
) -> Result<(), hickory_server::net::NetError> {
    for m in &a.msgs {
        let mut msg = MessageResponseBuilder::new(&req.queries, a.edns.as_ref()).build(
            m.metadata,
            m.answers.iter().map(|r| r.as_ref()),
            m.authority.iter().copied(),
            std::iter::empty(),
            m.additional.iter().copied(),
        );
        if let Some(t) = &m.tsig {
            msg.set_signature(t.clone());
        }
        handle.send_response(msg).await?;
    }
    Ok(())
}

/// The NOTIFY senders: one task per secondary with `notify`, fed by a watcher that
/// polls the zone's serial. Aborted when the returned handles are dropped by
/// [`crate::DnsServer`].
pub fn spawn_notifier(
    transfer: Arc<Transfer>,
    zone: Zone,
    listen: &[IpAddr],
) -> Vec<tokio::task::JoinHandle<()>> {
    let targets: Vec<Secondary> = transfer
        .secondaries
        .iter()
        .filter(|s| s.notify)
        .cloned()
        .collect();
    if targets.is_empty() {
        return Vec::new();
    }
    let mut base = zone.snapshot();
    let (tx, rx) = tokio::sync::watch::channel(base.serial());
    let mut tasks = Vec::new();
    let watch_zone = zone.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            if tx.is_closed() {
                break;
            }
            let snap = watch_zone.snapshot();
            // a member not yet synced would SERVFAIL the transfer: wait
            if !snap.synced() || snap.serial() == base.serial() {
                continue;
            }
            // A new serial without a record changed (e.g. the pool refreshed with the
            // same members) is not worth a NOTIFY: secondaries catch it at the next one.
            let changed =
                base.synced() != snap.synced() || delta(&base, &snap).is_none_or(|d| d.len() > 4);
            if changed {
                tx.send_replace(snap.serial());
                base = snap;
            }
        }
    }));
    for sec in targets {
        let mut rx = rx.clone();
        let (transfer, zone) = (Arc::clone(&transfer), zone.clone());
        // NOTIFY from our own listen address of that family, so the secondary's ACL
        // (by address) sees the server it transfers from; else the routing's choice.
        let source = listen
            .iter()
            .find(|ip| ip.is_ipv4() == sec.addr.is_ipv4() && !ip.is_unspecified())
            .copied();
        tasks.push(tokio::spawn(async move {
            rx.borrow_and_update();
            while rx.changed().await.is_ok() {
                // let the burst settle: everything changed until now goes in one NOTIFY
                tokio::time::sleep(NOTIFY_DELAY).await;
                let serial = *rx.borrow_and_update();
                notify_one(&transfer, &zone, &sec, source, serial).await;
            }
        }));
    }
    tasks
}

fn random_id() -> u16 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u16::from_be_bytes(b)
}

/// Send one NOTIFY (RFC 1996 section 3.7: QUERY for the apex SOA, opcode NOTIFY, AA,
/// the SOA in the answer) and retry until a signed answer comes back.
async fn notify_one(
    t: &Transfer,
    zone: &Zone,
    sec: &Secondary,
    source: Option<IpAddr>,
    serial: u32,
) {
    let bind: SocketAddr = match source {
        Some(ip) => (ip, 0).into(),
        None if sec.addr.is_ipv4() => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        None => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = match tokio::net::UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, secondary = %sec.addr, "DNS: cannot open a NOTIFY socket");
            t.stats.notify_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let snap = zone.snapshot();
    let mut buf = vec![0u8; 4096];
    for attempt in 1..=NOTIFY_TRIES {
        let id = random_id();
        let mut m = Message::new(id, MessageType::Query, OpCode::Notify);
        m.metadata.authoritative = true;
        m.add_query(Query::query(snap.origin().clone(), RecordType::SOA));
        m.add_answer(snap.soa[0].clone());
        let Ok(mut bytes) = m.to_vec() else { return };
        let now = now_secs();
        let Some((rr, mac)) = tsig::sign(&sec.key, &bytes, None, false, now, None, Vec::new())
        else {
            return;
        };
        if tsig::append(&mut bytes, &rr).is_none() {
            return;
        }
        t.stats.notify_sent.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = sock.send_to(&bytes, sec.addr).await {
            tracing::debug!(%error, secondary = %sec.addr, "DNS: NOTIFY send failed");
        }
        let deadline = tokio::time::Instant::now() + NOTIFY_TIMEOUT;
        loop {
            let got = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await;
            let Ok(Ok((n, from))) = got else { break };
            let resp = &buf[..n];
            if from != sec.addr || n < 12 || resp[..2] != id.to_be_bytes() || resp[2] & 0x80 == 0 {
                continue; // not the answer: ignore
            }
            let rcode = resp[3] & 0x0f;
            match tsig::verify_response(&sec.key, resp, &mac, now_secs()) {
                Ok(()) if rcode == 0 => {
                    t.stats.notify_acked.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(secondary = %sec.addr, serial, attempt, "DNS: NOTIFY acknowledged");
                    return;
                }
                Ok(()) => {
                    t.stats.notify_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(secondary = %sec.addr, serial, rcode,
                        "DNS: NOTIFY answered with an error; not retried");
                    return;
                }
                Err(error) => {
                    tracing::warn!(secondary = %sec.addr, %error,
                        "DNS: NOTIFY answer with a bad signature, ignored");
                }
            }
        }
    }
    t.stats.notify_failed.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(secondary = %sec.addr, serial, tries = NOTIFY_TRIES,
        "DNS: NOTIFY not answered; the secondary will catch up at its SOA refresh");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NsConfig, SecondaryAddr, SecondaryConfig, TsigKeyConfig, TsigSecret};
    use crate::gateway_id::GatewayId;
    use crate::handler::DnsHandler;
    use crate::zone::{TunnelKey, ZoneConfig};
    use hickory_proto::op::Message;
    use hickory_proto::rr::rdata::SOA;
    use hickory_proto::rr::Name;

    const DOMAIN: &str = "vpn.example.com";
    const SECRET: &[u8] = b"unit-test-secret-unit-test-secret";

    fn cfg(secondary: SocketAddr) -> DnsConfig {
        DnsConfig {
            ns: vec![NsConfig {
                name: "ns1".into(),
                addrs: vec!["192.0.2.1".parse().unwrap()],
            }],
            tsig_key: vec![TsigKeyConfig {
                name: "k".into(),
                algorithm: Default::default(),
                secret: TsigSecret(SECRET.to_vec()),
            }],
            secondary: vec![
                SecondaryConfig {
                    address: SecondaryAddr(secondary),
                    tsig_key: "k".into(),
                    notify: true,
                },
                SecondaryConfig {
                    address: SecondaryAddr("127.0.0.3:53".parse().unwrap()),
                    tsig_key: "k".into(),
                    notify: false,
                },
            ],
            ..DnsConfig::default()
        }
    }

    fn key(secret: &[u8]) -> TsigKey {
        TsigKey::new(&TsigKeyConfig {
            name: "k".into(),
            algorithm: Default::default(),
            secret: TsigSecret(secret.to_vec()),
        })
        .unwrap()
    }

    fn src() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    fn handler(gateways: u32) -> DnsHandler {
        let c = cfg("127.0.0.1:53".parse().unwrap());
        let zone = Zone::new(ZoneConfig::new(&c, DOMAIN).unwrap());
        zone.set_synced(true);
        zone.apply((0..gateways).map(|i| crate::zone::Change::Upsert {
            key: TunnelKey::new("m", i.to_string()),
            gateway_id: GatewayId::from_identity(format!("gw-{i}")).0,
            addrs: vec![IpAddr::from([10, 0, (i >> 8) as u8, i as u8])],
            stamp: u64::from(i + 1) << 20,
        }));
        DnsHandler::new(zone, 1232).with_transfer(Arc::new(Transfer::new(&c).unwrap()))
    }

    /// A request for the zone, signed with `k` at `time` when given; IXFR carries
    /// `serial` in the authority section.
    fn request(
        qtype: RecordType,
        serial: Option<u32>,
        k: Option<(&TsigKey, u64)>,
    ) -> (Vec<u8>, Vec<u8>) {
        let mut m = Message::query();
        m.metadata.id = 0x5151;
        let origin = Name::from_ascii("vpn.example.com.").unwrap();
        m.add_query(Query::query(origin.clone(), qtype));
        if let Some(s) = serial {
            let soa = SOA::new(origin.clone(), origin.clone(), s, 0, 0, 0, 0);
            m.add_authority(Record::from_rdata(origin, 0, RData::SOA(soa)));
        }
        let mut bytes = m.to_vec().unwrap();
        let mut mac = Vec::new();
        if let Some((k, time)) = k {
            let (rr, m) = tsig::sign(k, &bytes, None, false, time, None, Vec::new()).unwrap();
            tsig::append(&mut bytes, &rr).unwrap();
            mac = m;
        }
        (bytes, mac)
    }

    /// Every message of the answer, encoded as the TCP server sends them.
    fn transfer(h: &DnsHandler, q: &[u8], from: SocketAddr, tcp: bool) -> (Vec<Vec<u8>>, Outcome) {
        let req = hickory_server::server::Request::from_bytes(
            q.to_vec(),
            from,
            hickory_server::net::xfer::Protocol::Tcp,
        )
        .unwrap();
        let snap = h.zone().snapshot();
        let a = h.transfer().answer(&snap, &req, q, from, tcp, 1232);
        let msgs = a
            .msgs
            .iter()
            .map(|m| {
                let mut out = Vec::new();
                encode(&req, m, a.edns.as_ref(), u16::MAX, &mut out).unwrap();
                out
            })
            .collect();
        (msgs, a.outcome)
    }

    fn tsig_of(msg: &[u8]) -> tsig::Received {
        let m = Message::from_vec(msg).unwrap();
        tsig::find(msg, &m.additionals).unwrap().expect("signed")
    }

    #[test]
    fn axfr_is_the_whole_zone_soa_first_and_last_in_chained_signed_messages() {
        let h = handler(1000);
        let k = key(SECRET);
        let now = now_secs();
        let (q, qmac) = request(RecordType::AXFR, None, Some((&k, now)));
        let (msgs, outcome) = transfer(&h, &q, src(), true);
        assert_eq!(outcome, Outcome::Transfer);
        assert!(msgs.len() >= 1000 / RECORDS_PER_MESSAGE, "{}", msgs.len());
        let mut records = Vec::new();
        let mut prior = qmac;
        for (i, raw) in msgs.iter().enumerate() {
            assert!(raw.len() <= usize::from(u16::MAX));
            let m = Message::from_vec(raw).unwrap();
            assert_eq!(m.metadata.id, 0x5151);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert!(m.metadata.authoritative);
            // RFC 8945 5.3.1: first message over request MAC + all variables, later ones
            // over the previous MAC + timers only
            let r = tsig_of(raw);
            let unsigned = tsig::strip(raw, r.offset, r.tsig.oid).unwrap();
            let tbs = tsig::to_be_signed(Some(&prior), &unsigned, &r.name, &r.tsig, i > 0).unwrap();
            let alg = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
            ring::hmac::verify(&alg, &tbs, &r.tsig.mac).expect("message MAC verifies");
            prior = r.tsig.mac.clone();
            records.extend(m.answers);
        }
        let soa_at = |i: usize| matches!(records[i].data, RData::SOA(_));
        assert!(soa_at(0) && soa_at(records.len() - 1));
        assert_eq!(
            records
                .iter()
                .filter(|r| matches!(r.data, RData::SOA(_)))
                .count(),
            2
        );
        // SOA, NS, pool delegation (NS), glue, 1000 gateways, SOA
        assert_eq!(records.len(), 1 + 1 + 1 + 1 + 1000 + 1);
        let pool_ns: Vec<&Record> = records
            .iter()
            .filter(|r| r.name.to_ascii() == "pool.vpn.example.com.")
            .collect();
        assert_eq!(pool_ns.len(), 1);
        assert!(
            matches!(&pool_ns[0].data, RData::NS(n) if n.0.to_ascii() == "ns1.vpn.example.com.")
        );
        let names: std::collections::HashSet<String> =
            records.iter().map(|r| r.name.to_ascii()).collect();
        assert!(names.contains("gw-999.vpn.example.com."));
        assert_eq!(h.transfer().stats().full.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn who_may_transfer_unsigned_elsewhere_and_udp_are_refused_bad_tsig_is_notauth() {
        let h = handler(3);
        let k = key(SECRET);
        let now = now_secs();
        let rcode = |msgs: &[Vec<u8>]| Message::from_vec(&msgs[0]).unwrap().metadata.response_code;
        // unsigned
        let (q, _) = request(RecordType::AXFR, None, None);
        let (m, o) = transfer(&h, &q, src(), true);
        assert_eq!((rcode(&m), o), (ResponseCode::Refused, Outcome::Refused));
        // signed, but not from a secondary's address: refused, and the refusal is signed
        let (q, qmac) = request(RecordType::AXFR, None, Some((&k, now)));
        let (m, _) = transfer(&h, &q, "127.0.0.2:40000".parse().unwrap(), true);
        assert_eq!(rcode(&m), ResponseCode::Refused);
        let kk = Arc::new(key(SECRET));
        tsig::verify_response(&kk, &m[0], &qmac, now).unwrap();
        // AXFR over UDP (RFC 5936 4.2)
        let (m, _) = transfer(&h, &q, src(), false);
        assert_eq!(rcode(&m), ResponseCode::Refused);
        // wrong secret: NOTAUTH + BADSIG, unsigned
        let (q, _) = request(RecordType::AXFR, None, Some((&key(b"wrong"), now)));
        let (m, o) = transfer(&h, &q, src(), true);
        assert_eq!((rcode(&m), o), (ResponseCode::NotAuth, Outcome::NotAuth));
        let t = tsig_of(&m[0]);
        assert_eq!(t.tsig.error, Some(TsigError::BadSig));
        assert!(t.tsig.mac.is_empty());
        // unknown key name: BADKEY
        let other = TsigKey::new(&TsigKeyConfig {
            name: "other".into(),
            algorithm: Default::default(),
            secret: TsigSecret(SECRET.to_vec()),
        })
        .unwrap();
        let (q, _) = request(RecordType::AXFR, None, Some((&other, now)));
        let (m, _) = transfer(&h, &q, src(), true);
        assert_eq!(tsig_of(&m[0]).tsig.error, Some(TsigError::BadKey));
        // an hour off: BADTIME, signed, with our time in Other Data (RFC 8945 5.2.3)
        let (q, qmac) = request(RecordType::AXFR, None, Some((&k, now - 3600)));
        let (m, _) = transfer(&h, &q, src(), true);
        assert_eq!(rcode(&m), ResponseCode::NotAuth);
        let t = tsig_of(&m[0]);
        assert_eq!(t.tsig.error, Some(TsigError::BadTime));
        assert_eq!(t.tsig.other.len(), 6);
        let unsigned = tsig::strip(&m[0], t.offset, t.tsig.oid).unwrap();
        let tbs = tsig::to_be_signed(Some(&qmac), &unsigned, &t.name, &t.tsig, false).unwrap();
        let alg = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
        ring::hmac::verify(&alg, &tbs, &t.tsig.mac).expect("BADTIME response is signed");
        let st = h.transfer().stats();
        assert_eq!(st.notauth.load(Ordering::Relaxed), 3);
        assert_eq!(st.refused.load(Ordering::Relaxed), 3);
        assert_eq!(st.full.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn ixfr_current_serial_or_udp_is_one_soa_older_serial_is_a_full_transfer() {
        let h = handler(5);
        let k = key(SECRET);
        let now = now_secs();
        let serial = h.zone().serial();
        let answers = |msgs: &[Vec<u8>]| -> Vec<Record> {
            msgs.iter()
                .flat_map(|m| Message::from_vec(m).unwrap().answers)
                .collect()
        };
        let (q, _) = request(RecordType::IXFR, Some(serial), Some((&k, now)));
        let (m, o) = transfer(&h, &q, src(), true);
        assert_eq!(o, Outcome::Transfer);
        let a = answers(&m);
        assert_eq!(a.len(), 1);
        assert!(matches!(&a[0].data, RData::SOA(s) if s.serial == serial));
        // older: AXFR-style (RFC 1995 section 4), SOA first and last
        let (q, _) = request(
            RecordType::IXFR,
            Some(serial.wrapping_sub(10)),
            Some((&k, now)),
        );
        let (m, _) = transfer(&h, &q, src(), true);
        let a = answers(&m);
        assert_eq!(a.len(), 1 + 1 + 1 + 1 + 5 + 1);
        // over UDP: the single SOA, whatever the client has
        let (m, _) = transfer(&h, &q, src(), false);
        assert_eq!(answers(&m).len(), 1);
        // IXFR without the client's SOA is malformed
        let (q, _) = request(RecordType::IXFR, None, Some((&k, now)));
        let (m, o) = transfer(&h, &q, src(), true);
        assert_eq!(o, Outcome::FormErr);
        assert_eq!(
            Message::from_vec(&m[0]).unwrap().metadata.response_code,
            ResponseCode::FormErr
        );
    }

    fn rrs(msgs: &[Vec<u8>]) -> Vec<Record> {
        msgs.iter()
            .flat_map(|m| Message::from_vec(m).unwrap().answers)
            .collect()
    }

    fn serial_of(r: &Record) -> Option<u32> {
        match &r.data {
            RData::SOA(s) => Some(s.serial),
            _ => None,
        }
    }

    /// What a secondary does with an IXFR answer (RFC 1995 section 4): apply each
    /// difference sequence to the records it holds.
    fn apply(held: &mut Vec<Record>, ixfr: &[Record]) {
        let new = serial_of(&ixfr[0]).unwrap();
        assert_eq!(serial_of(ixfr.last().unwrap()), Some(new));
        let body = &ixfr[1..ixfr.len() - 1];
        let mut deleting = true;
        let mut seen_old_soa = false;
        for r in body {
            if let Some(s) = serial_of(r) {
                if !seen_old_soa {
                    seen_old_soa = true;
                    assert_ne!(s, new);
                    deleting = true;
                } else {
                    assert_eq!(s, new);
                    deleting = false;
                }
                continue;
            }
            if deleting {
                let at = held
                    .iter()
                    .position(|h| h == r)
                    .expect("deleted record was held");
                held.remove(at);
            } else {
                assert!(!held.contains(r), "added record was not held");
                held.push(r.clone());
            }
        }
    }

    #[test]
    fn ixfr_sends_the_difference_from_what_this_secondary_got() {
        let h = handler(50);
        let k = key(SECRET);
        let now = now_secs();
        let (q, _) = request(RecordType::AXFR, None, Some((&k, now)));
        let (m, _) = transfer(&h, &q, src(), true);
        let mut held: Vec<Record> = rrs(&m);
        held.pop();
        held.remove(0); // the SOAs
        let base = h.zone().serial();
        // one added, one removed, one moved, one re-upserted unchanged
        let stamp = 1u64 << 40;
        h.zone().upsert(
            TunnelKey::new("m", "new"),
            GatewayId::from_identity("brand-new").0,
            vec!["10.7.0.1".parse().unwrap(), "fd00::7".parse().unwrap()],
            stamp,
        );
        h.zone().remove(&TunnelKey::new("m", "3"), stamp + 1);
        h.zone().upsert(
            TunnelKey::new("m", "4"),
            GatewayId::from_identity("gw-4").0,
            vec!["10.7.0.4".parse().unwrap()],
            stamp + 2,
        );
        h.zone().upsert(
            TunnelKey::new("m", "5"),
            GatewayId::from_identity("gw-5").0,
            vec![IpAddr::from([10, 0, 0, 5])],
            stamp + 3,
        );
        let (q, _) = request(RecordType::IXFR, Some(base), Some((&k, now)));
        let (m, o) = transfer(&h, &q, src(), true);
        assert_eq!(o, Outcome::Transfer);
        let ixfr = rrs(&m);
        // SOA new, SOA old, 2 deleted (gw-3, gw-4's old A), SOA new, 3 added, SOA new
        assert_eq!(ixfr.len(), 4 + 2 + 3, "{ixfr:#?}");
        assert_eq!(serial_of(&ixfr[1]), Some(base));
        apply(&mut held, &ixfr);
        let (q, _) = request(RecordType::AXFR, None, Some((&k, now)));
        let (m, _) = transfer(&h, &q, "127.0.0.3:40000".parse().unwrap(), true);
        let mut want = rrs(&m);
        want.pop();
        want.remove(0);
        let key_of = |r: &Record| format!("{r}");
        held.sort_by_key(key_of);
        want.sort_by_key(key_of);
        assert_eq!(held, want, "the secondary holds the new zone");
        let st = h.transfer().stats();
        assert_eq!(st.incremental.load(Ordering::Relaxed), 1);
        // A secondary that never got `base` from us gets everything.
        let (q, _) = request(RecordType::IXFR, Some(base), Some((&k, now)));
        let before = st.full.load(Ordering::Relaxed);
        let (m, _) = transfer(&h, &q, "127.0.0.3:40000".parse().unwrap(), true);
        assert!(rrs(&m).len() > 50);
        assert_eq!(st.full.load(Ordering::Relaxed), before + 1);
    }

    #[test]
    fn not_synced_is_servfail_and_signed_queries_are_answered_signed() {
        let h = handler(2);
        let k = key(SECRET);
        let kk = Arc::new(key(SECRET));
        let now = now_secs();
        // a secondary's SOA check before a transfer: signed query, signed answer
        let (q, qmac) = request(RecordType::SOA, None, Some((&k, now)));
        let shard = h.counters().shard();
        let mut out = Vec::new();
        assert!(h.handle_bytes(&q, src(), false, &shard, &mut out));
        let m = Message::from_vec(&out).unwrap();
        assert!(matches!(&m.answers[0].data, RData::SOA(s) if s.serial == h.zone().serial()));
        tsig::verify_response(&kk, &out, &qmac, now).unwrap();
        // a signed answer too big for UDP: TC, no records, still signed
        h.zone().upsert(
            TunnelKey::new("m", "big"),
            GatewayId::from_identity("big").0,
            (0..60u8).map(|i| IpAddr::from([10, 9, 0, i])).collect(),
            1 << 40,
        );
        let mut m = Message::query();
        m.metadata.id = 0x7777;
        m.add_query(Query::query(
            Name::from_ascii("big.vpn.example.com.").unwrap(),
            RecordType::A,
        ));
        let mut q = m.to_vec().unwrap();
        let (rr, qmac) = tsig::sign(&k, &q, None, false, now, None, Vec::new()).unwrap();
        tsig::append(&mut q, &rr).unwrap();
        assert!(h.handle_bytes(&q, src(), false, &shard, &mut out));
        assert!(out.len() <= 512);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.metadata.truncation && m.answers.is_empty(), "{m:?}");
        tsig::verify_response(&kk, &out, &qmac, now).unwrap();
        // over TCP: all 60, signed
        assert!(h.handle_bytes(&q, src(), true, &shard, &mut out));
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.answers.len(), 60);
        tsig::verify_response(&kk, &out, &qmac, now).unwrap();
        h.zone().set_synced(false);
        let (q, _) = request(RecordType::AXFR, None, Some((&k, now)));
        let (m, o) = transfer(&h, &q, src(), true);
        assert_eq!(o, Outcome::ServFail);
        assert_eq!(
            Message::from_vec(&m[0]).unwrap().metadata.response_code,
            ResponseCode::ServFail
        );
    }

    /// A fake secondary: NOTIFYs are coalesced (one for a burst), signed, retried when
    /// unanswered, and a signed answer ends the retries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notify_is_coalesced_signed_and_retried_until_answered() {
        let sec = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let c = cfg(sec.local_addr().unwrap());
        let zone = Zone::new(ZoneConfig::new(&c, DOMAIN).unwrap());
        zone.set_synced(true);
        let t = Arc::new(Transfer::new(&c).unwrap());
        let tasks = spawn_notifier(
            Arc::clone(&t),
            zone.clone(),
            &["127.0.0.1".parse().unwrap()],
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        // a burst of five changes
        for i in 0..5u64 {
            zone.upsert(
                TunnelKey::new("m", i.to_string()),
                GatewayId::from_identity(format!("n{i}")).0,
                vec![IpAddr::from([10, 0, 0, i as u8])],
                (i + 1) << 30,
            );
        }
        let k = Arc::new(key(SECRET));
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        // first NOTIFY: not answered; second (retry): answered
        for answer in [false, true] {
            let (n, from) = tokio::time::timeout(Duration::from_secs(5), sec.recv_from(&mut buf))
                .await
                .expect("NOTIFY within the delay + timeout")
                .unwrap();
            let raw = buf[..n].to_vec();
            let m = Message::from_vec(&raw).unwrap();
            assert_eq!(m.metadata.op_code, OpCode::Notify);
            assert!(m.metadata.authoritative);
            assert_eq!(m.queries[0].query_type(), RecordType::SOA);
            assert!(matches!(&m.answers[0].data, RData::SOA(s) if s.serial == zone.serial()));
            let r = tsig_of(&raw);
            let (_, mac) =
                tsig::verify(std::slice::from_ref(&k), &raw, &r, None, now_secs()).unwrap();
            got.push(m.metadata.id);
            if answer {
                let mut resp = Message::new(m.metadata.id, MessageType::Response, OpCode::Notify);
                resp.metadata.authoritative = true;
                resp.add_query(m.queries[0].clone());
                let mut bytes = resp.to_vec().unwrap();
                let (rr, _) =
                    tsig::sign(&k, &bytes, Some(&mac), false, now_secs(), None, Vec::new())
                        .unwrap();
                tsig::append(&mut bytes, &rr).unwrap();
                sec.send_to(&bytes, from).await.unwrap();
            }
        }
        assert_eq!(got.len(), 2);
        // new serials without a changed record (the pool refreshed with the same
        // members): no NOTIFY
        for _ in 0..5 {
            zone.set_pool(Vec::new());
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        // acknowledged: nothing more arrives
        let more = tokio::time::timeout(Duration::from_secs(3), sec.recv_from(&mut buf)).await;
        assert!(
            more.is_err(),
            "one NOTIFY for the burst, no retry after the answer"
        );
        let st = t.stats();
        assert_eq!(st.notify_sent.load(Ordering::Relaxed), 2);
        assert_eq!(st.notify_acked.load(Ordering::Relaxed), 1);
        for task in tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod seed_tests {
    use super::*;
    use crate::fuzz::{handler, mutations, seeds};

    /// The fuzz seeds are what they claim: signed with the fuzz target's key (so the
    /// fuzzer starts past TSIG verification: the MAC verifies, only the time is old).
    #[test]
    fn fuzz_seeds_are_signed_transfer_messages() {
        let (h, shard) = handler();
        let seeds = seeds("query");
        for (name, q) in &seeds {
            let mut out = Vec::new();
            assert!(h.handle_bytes(q, "127.0.0.1:5353".parse().unwrap(), true, shard, &mut out));
            let m = Message::from_vec(&out).unwrap();
            let want = match name.as_str() {
                "axfr-unsigned" => ResponseCode::Refused,
                "notify-tsig" => ResponseCode::NotAuth, // signature checked before opcode
                _ => ResponseCode::NotAuth,
            };
            assert_eq!(m.metadata.response_code, want, "{name}");
            let t = tsig::find(&out, &m.additionals).unwrap();
            let want_err = match name.as_str() {
                "axfr-unsigned" => None,
                "axfr-tsig-unknown-key" => Some(TsigError::BadKey),
                _ => Some(TsigError::BadTime), // valid MAC, signed in 2026-11
            };
            assert_eq!(t.and_then(|t| t.tsig.error), want_err, "{name}");
        }
        assert_eq!(seeds.len(), 6);
    }

    /// Deterministic smoke fuzz of the transfer path through the query target:
    /// mutations of the signed seeds never panic, and every reply is a well-formed
    /// response with the query's ID.
    #[test]
    fn smoke_fuzz_signed_transfer_requests_never_panic() {
        let (h, shard) = handler();
        let seeds: Vec<Vec<u8>> = seeds("query").into_values().collect();
        let mut out = Vec::new();
        let mut answered = 0;
        mutations(&seeds, 100_000, |i, msg| {
            answered += crate::fuzz::query(msg);
            let tcp = i % 2 == 0;
            if h.handle_bytes(msg, "127.0.0.1:5353".parse().unwrap(), tcp, shard, &mut out) {
                if let Err(e) = Message::from_vec(&out) {
                    panic!("{e}: query {msg:02x?} -> response {out:02x?}");
                }
            }
        });
        assert!(answered > 150_000, "{answered}");
    }
}
