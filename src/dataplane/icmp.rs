//! ICMP "destination unreachable" for packets from the TUN device that no SA covers
//! (issue 3: "packets for an address with no tunnel get the right ICMP").
//!
//! ICMPv4 type 3 code 1, host unreachable (RFC 792, RFC 1812 4.3.2); ICMPv6 type 1
//! code 3, address unreachable (RFC 4443 3.1). Never in answer to an ICMP error, a
//! non-initial fragment, or a packet whose destination or source is not one unique host
//! (multicast, broadcast, unspecified, loopback: RFC 1812 4.3.2.7, RFC 4443 2.4 (e)).
//! Rate-limited by a token bucket per encrypt worker, like the kernel's
//! `icmp_msgs_per_sec` / `icmp_msgs_burst` (the configured rate and burst are shared
//! out over the queues).
//!
//! The error is written back into the TUN device, to the offending packet's source. Its
//! own source is the unreachable destination address: the kernel drops packets that
//! arrive on the TUN device from one of the host's own addresses, and this address is
//! routed to the TUN device, so the reply passes reverse-path filtering too.
//!
//! No allocation per packet: one buffer per worker, made once.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use tun_rs::{SyncDevice, VIRTIO_NET_HDR_LEN};

/// RFC 1812 4.3.2.3: an ICMPv4 error carries as much of the original packet as fits in
/// 576 octets.
const V4_MAX: usize = 576;
/// RFC 4443 2.4 (c): an ICMPv6 error must not exceed the minimum IPv6 MTU.
const V6_MAX: usize = 1280;

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
    /// `rate` errors per second with bursts of `burst`, for this worker.
    pub fn new(rate: u64, burst: u64) -> Self {
        Unreachable {
            bucket: Bucket::new(rate, burst),
            buf: vec![0u8; VIRTIO_NET_HDR_LEN + V6_MAX],
        }
    }

    /// Answers `pkt` (an inner packet read from the TUN device that no SA routes) with
    /// a destination unreachable written to `tun`.
    pub fn answer(&mut self, pkt: &[u8], tun: &SyncDevice) -> Outcome {
        let hdr = if tun.tcp_gso() { VIRTIO_NET_HDR_LEN } else { 0 };
        let len = match build(pkt, &mut self.buf[hdr..]) {
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

/// Builds the ICMP error for `pkt` into `out`; its length, or `None` when `pkt` must
/// not be answered.
pub(super) fn build(pkt: &[u8], out: &mut [u8]) -> Option<usize> {
    let f = ike::esp::flow_of(pkt)?;
    if f.non_initial_fragment {
        return None;
    }
    match (f.src, f.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            if f.protocol == 1 {
                // ICMP errors (RFC 1812 4.3.2.7): unreachable, source quench, redirect,
                // time exceeded, parameter problem; unknown when the type is cut off.
                let (t, _) = f.ports?;
                if matches!(t >> 8, 3 | 4 | 5 | 11 | 12) {
                    return None;
                }
            }
            if !unique_v4(src) || !unique_v4(dst) {
                return None;
            }
            build_v4(pkt, src, dst, out)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            if f.protocol == 58 {
                // ICMPv6 error messages have types 0-127 (RFC 4443 2.1).
                let (t, _) = f.ports?;
                if (t >> 8) < 128 {
                    return None;
                }
            }
            if !unique_v6(src) || !unique_v6(dst) {
                return None;
            }
            build_v6(pkt, src, dst, out)
        }
        _ => None,
    }
}

fn unique_v4(a: Ipv4Addr) -> bool {
    !(a.is_multicast()
        || a.is_broadcast()
        || a.is_unspecified()
        || a.is_loopback()
        || a.octets()[0] >= 240)
}

fn unique_v6(a: Ipv6Addr) -> bool {
    !(a.is_multicast() || a.is_unspecified() || a.is_loopback())
}

/// Internet checksum (RFC 1071) over `data`, starting from `sum`.
fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [b] = chunks.remainder() {
        sum += (*b as u32) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 header + ICMP type 3 code 1 + as much of `pkt` as fits in 576 octets.
fn build_v4(pkt: &[u8], orig_src: Ipv4Addr, orig_dst: Ipv4Addr, out: &mut [u8]) -> Option<usize> {
    let quote = pkt.len().min(V4_MAX - 28);
    let total = 28 + quote;
    let out = out.get_mut(..total)?;
    out[..28].fill(0);
    out[0] = 0x45;
    out[1] = 0xc0; // internetwork control, as the kernel marks ICMP errors
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[8] = 64;
    out[9] = 1;
    out[12..16].copy_from_slice(&orig_dst.octets());
    out[16..20].copy_from_slice(&orig_src.octets());
    let c = checksum(0, &out[..20]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    out[20] = 3;
    out[21] = 1;
    out[28..].copy_from_slice(&pkt[..quote]);
    let c = checksum(0, &out[20..]);
    out[22..24].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

/// IPv6 header + ICMPv6 type 1 code 3 + as much of `pkt` as fits in 1280 octets.
fn build_v6(pkt: &[u8], orig_src: Ipv6Addr, orig_dst: Ipv6Addr, out: &mut [u8]) -> Option<usize> {
    let quote = pkt.len().min(V6_MAX - 48);
    let total = 48 + quote;
    let icmp_len = 8 + quote;
    let out = out.get_mut(..total)?;
    out[..48].fill(0);
    out[0] = 0x60;
    out[4..6].copy_from_slice(&(icmp_len as u16).to_be_bytes());
    out[6] = 58;
    out[7] = 64;
    out[8..24].copy_from_slice(&orig_dst.octets());
    out[24..40].copy_from_slice(&orig_src.octets());
    out[40] = 1;
    out[41] = 3;
    out[48..].copy_from_slice(&pkt[..quote]);
    // Pseudo-header (RFC 8200 8.1): source, destination, upper-layer length, 58.
    let mut sum = 0u32;
    for c in out[8..40].chunks_exact(2) {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    sum += icmp_len as u32;
    sum += 58;
    let c = checksum(sum, &out[40..]);
    out[42..44].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let c = checksum(0, &p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(l4);
        p
    }

    fn v6(src: &str, dst: &str, nh: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
        p[6] = nh;
        p[7] = 64;
        p[8..24].copy_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(l4);
        p
    }

    #[test]
    fn v4_host_unreachable_to_the_source_quoting_the_packet() {
        let echo = v4(
            [10, 200, 1, 2],
            [10, 99, 0, 7],
            1,
            &[8, 0, 0xf7, 0xfe, 0, 1, 0, 1],
        );
        let mut out = [0u8; 1500];
        let n = build(&echo, &mut out).unwrap();
        let r = &out[..n];
        assert_eq!(n, 28 + echo.len());
        assert_eq!(r[9], 1);
        assert_eq!(&r[12..16], &[10, 99, 0, 7]);
        assert_eq!(&r[16..20], &[10, 200, 1, 2]);
        assert_eq!((r[20], r[21]), (3, 1));
        assert_eq!(&r[28..], &echo[..]);
        // Both checksums verify (a correct checksum sums to zero).
        assert_eq!(checksum(0, &r[..20]), 0);
        assert_eq!(checksum(0, &r[20..]), 0);
        // Long packets are cut at 576 octets in all.
        let big = v4([10, 200, 1, 2], [10, 99, 0, 7], 17, &[0u8; 1400]);
        assert_eq!(build(&big, &mut out), Some(576));
    }

    #[test]
    fn v6_address_unreachable_with_a_valid_checksum() {
        let echo = v6(
            "2001:db8:200::2",
            "2001:db8:99::7",
            58,
            &[128, 0, 0, 0, 0, 1, 0, 1],
        );
        let mut out = [0u8; 1500];
        let n = build(&echo, &mut out).unwrap();
        let r = &out[..n];
        assert_eq!((r[6], r[40], r[41]), (58, 1, 3));
        assert_eq!(&r[8..24], &echo[24..40]);
        assert_eq!(&r[24..40], &echo[8..24]);
        let mut sum = 0u32;
        for c in r[8..40].chunks_exact(2) {
            sum += u16::from_be_bytes([c[0], c[1]]) as u32;
        }
        sum += (n - 40) as u32 + 58;
        assert_eq!(checksum(sum, &r[40..]), 0);
        let big = v6("2001:db8:200::2", "2001:db8:99::7", 17, &[0u8; 2000]);
        assert_eq!(build(&big, &mut out), Some(1280));
    }

    #[test]
    fn never_for_errors_fragments_multicast_or_broadcast() {
        let mut out = [0u8; 1500];
        let from = [10, 200, 1, 2];
        let to = [10, 99, 0, 7];
        for t in [3u8, 4, 5, 11, 12] {
            assert_eq!(
                build(&v4(from, to, 1, &[t, 0, 0, 0, 0, 0, 0, 0]), &mut out),
                None,
                "type {t}"
            );
        }
        // Echo reply, timestamp: queries, answered.
        assert!(build(&v4(from, to, 1, &[0, 0, 0, 0, 0, 0, 0, 0]), &mut out).is_some());
        let mut frag = v4(from, to, 17, &[0u8; 16]);
        frag[6..8].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(build(&frag, &mut out), None);
        let mut first = v4(from, to, 17, &[0u8; 16]);
        first[6] = 0x20; // MF, offset 0: the first fragment is answered
        assert!(build(&first, &mut out).is_some());
        assert_eq!(
            build(&v4(from, [224, 0, 0, 5], 17, &[0; 8]), &mut out),
            None
        );
        assert_eq!(
            build(&v4(from, [255, 255, 255, 255], 17, &[0; 8]), &mut out),
            None
        );
        assert_eq!(build(&v4([0, 0, 0, 0], to, 17, &[0; 8]), &mut out), None);
        assert_eq!(build(&v4([239, 1, 1, 1], to, 17, &[0; 8]), &mut out), None);
        assert_eq!(build(&v4([127, 0, 0, 1], to, 17, &[0; 8]), &mut out), None);
        // IPv6: errors, multicast, unspecified source, non-initial fragments.
        let (s6, d6) = ("2001:db8:200::2", "2001:db8:99::7");
        assert_eq!(
            build(&v6(s6, d6, 58, &[1, 3, 0, 0, 0, 0, 0, 0]), &mut out),
            None
        );
        assert_eq!(
            build(&v6(s6, d6, 58, &[2, 0, 0, 0, 0, 0, 0, 0]), &mut out),
            None
        );
        assert_eq!(build(&v6(s6, "ff02::1", 17, &[0; 8]), &mut out), None);
        assert_eq!(build(&v6("::", d6, 17, &[0; 8]), &mut out), None);
        let mut fh = vec![17u8, 0, 0, 0, 0, 0, 0, 0];
        fh[2..4].copy_from_slice(&(8u16 << 3).to_be_bytes());
        fh.extend_from_slice(&[0; 8]);
        assert_eq!(build(&v6(s6, d6, 44, &fh), &mut out), None);
        // Garbage and runts are not answered, and never panic.
        for n in 0..30 {
            let _ = build(&v4(from, to, 1, &[8, 0, 0, 0])[..n.min(24)], &mut out);
        }
        assert_eq!(build(&[0x45, 0, 0], &mut out), None);
    }

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
