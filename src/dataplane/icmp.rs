//! ICMP errors the data plane writes back into the TUN device (issue 3: "packets for an
//! address with no tunnel get the right ICMP"; packets bigger than the tunnel carries).
//!
//! Destination unreachable for packets no SA covers; too big for the tunnel for an inner
//! packet longer than `[dataplane] mtu` or its SA carries (IPv4 without DF is fragmented
//! instead, see `worker.rs`). [`ike::esp::icmp::build`] makes the packets (which ones are answered,
//! and how).
//! Rate-limited by one token bucket per encrypt worker for both kinds, like the kernel's
//! `icmp_msgs_per_sec` / `icmp_msgs_burst` (the configured rate and burst are shared
//! out over the queues).
//!
//! The error is written back into the TUN device, to the offending packet's source. Its
//! own source (RFC 1812 4.3.2.4 wants the router's address on the interface; the data
//! plane has none, it sits behind the TUN device) is `[dataplane] icmp_source` of the
//! family when set, else the offending packet's destination (the unreachable address, or
//! the peer address the packet was too big for). Either way it must be an address the
//! host does not own: the kernel drops packets that arrive on the TUN device from one of
//! its own addresses (martians), and one routed to the TUN device passes reverse-path
//! filtering.
//!
//! No allocation per packet: one buffer per worker, made once.
use std::time::Instant;

use ike::esp::icmp;
pub(super) use ike::esp::icmp::{Kind, Sources};
use tun_rs::{SyncDevice, VIRTIO_NET_HDR_LEN};

/// Token bucket (tokens in millitokens so integer arithmetic suffices).
struct Bucket {
    rate_per_sec: u64,
    burst_milli: u64,
    milli: u64,
    last: Instant,
}

impl Bucket {
    fn new(rate_per_sec: u64, burst: u64) -> Self {
        Bucket {
            rate_per_sec,
            burst_milli: burst.max(1) * 1000,
            milli: burst.max(1) * 1000,
            last: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if self.rate_per_sec == 0 {
            return false;
        }
        let us = now.saturating_duration_since(self.last).as_micros() as u64;
        // rate tokens/s = rate millitokens/ms = rate/1000 millitokens/us.
        let add = us.saturating_mul(self.rate_per_sec) / 1000;
        if add > 0 {
            self.milli = (self.milli + add).min(self.burst_milli);
            self.last = now;
        }
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// One encrypt worker's ICMP error generator.
pub(super) struct Unreachable {
    bucket: Bucket,
    buf: Vec<u8>,
    sources: Sources,
}

/// What [`Unreachable::answer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Sent,
    /// The packet must not be answered (ICMP error, fragment, multicast...).
    NotEligible,
    RateLimited,
    WriteFailed,
}

impl Unreachable {
    /// `rate` errors per second with bursts of `burst`, for this worker, from `sources`.
    pub fn new(rate: u64, burst: u64, sources: Sources) -> Self {
        Unreachable {
            bucket: Bucket::new(rate, burst),
            buf: vec![0u8; VIRTIO_NET_HDR_LEN + icmp::MAX_LEN],
            sources,
        }
    }

    /// Answers `pkt` (an inner packet read from the TUN device that no SA routes, or one
    /// too big) with the ICMP error `kind` written to `tun`.
    pub fn answer(&mut self, pkt: &[u8], kind: Kind, tun: &SyncDevice) -> Outcome {
        let hdr = if tun.tcp_gso() { VIRTIO_NET_HDR_LEN } else { 0 };
        let len = match icmp::build(pkt, kind, self.sources, &mut self.buf[hdr..]) {
            Some(n) => n,
            None => return Outcome::NotEligible,
        };
        if !self.bucket.take(Instant::now()) {
            return Outcome::RateLimited;
        }
        // With IFF_VNET_HDR every write starts with a virtio header; all zero means no
        // offload and no checksum to complete (ours are complete).
        self.buf[..hdr].fill(0);
        match tun.send(&self.buf[..hdr + len]) {
            Ok(_) => Outcome::Sent,
            Err(_) => Outcome::WriteFailed,
        }
    }
}

/// The length an IP packet read whole (`pkt`, behind a virtio header whose GSO type was
/// `gso_type`) claims: `None` for a GSO super-packet (its segments are the packets) or
/// anything that is not an IP header with a length within `pkt`.
pub(super) fn oversized(pkt: &[u8], gso_type: u8) -> Option<usize> {
    if gso_type != 0 {
        return None;
    }
    let len = match pkt.first()? >> 4 {
        4 => u16::from_be_bytes([*pkt.get(2)?, *pkt.get(3)?]) as usize,
        6 => 40 + u16::from_be_bytes([*pkt.get(4)?, *pkt.get(5)?]) as usize,
        _ => return None,
    };
    (len <= pkt.len()).then_some(len)
}

/// Whether a router may fragment `pkt` instead of answering it as too big: IPv4 without
/// Don't Fragment (RFC 791 2.3; IPv6 is never fragmented on the way, RFC 8200 5).
pub(super) fn may_fragment(pkt: &[u8]) -> bool {
    pkt.len() >= 20 && pkt[0] >> 4 == 4 && pkt[6] & 0x40 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 50);
        b.last = t0;
        let sent = (0..200).filter(|_| b.take(t0)).count();
        assert_eq!(sent, 50);
        // 10 ms later: 10 more at 1000/s.
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!((0..200).filter(|_| b.take(t1)).count(), 10);
        // Never more than the burst, however long the pause.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..200).filter(|_| b.take(t2)).count(), 50);
        // Rate 0 turns errors off.
        let mut off = Bucket::new(0, 50);
        assert!(!off.take(t2));
    }
}
