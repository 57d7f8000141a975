//! ICMP errors for inner packets the data plane cannot forward (issue 3): destination
//! unreachable for packets no SA covers: ICMPv4 type 3 code 1, host unreachable (RFC 792,
//! RFC 1812 4.3.2); ICMPv6 type 1 code 3, address unreachable (RFC 4443 3.1). Too big
//! for the tunnel: ICMPv4 type 3 code 4, fragmentation needed, with the next-hop MTU
//! (RFC 1191 4), for packets with DF set only; ICMPv6 type 2, Packet Too Big with the MTU
//! (RFC 4443 3.2). Never in answer to an ICMP error, a non-initial fragment, or a packet
//! whose destination or source is not one unique host (multicast, broadcast, unspecified,
//! loopback: RFC 1812 4.3.2.7, RFC 4443 2.4 (e); a Packet Too Big may answer an IPv6
//! multicast destination, 2.4 (e.2)).
//!
//! Packet building only: the data plane (`src/dataplane/icmp.rs`) rate limits the errors,
//! picks their source address and writes them into the TUN device.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::flow_of;

/// RFC 1812 4.3.2.3: an ICMPv4 error carries as much of the original packet as fits in
/// 576 octets.
const V4_MAX: usize = 576;
/// RFC 4443 2.4 (c): an ICMPv6 error must not exceed the minimum IPv6 MTU.
const V6_MAX: usize = 1280;
/// Longest error [`build`] writes.
pub const MAX_LEN: usize = V6_MAX;

/// Which ICMP error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No SA covers the destination.
    Unreachable,
    /// Longer than the tunnel carries; the MTU to report.
    TooBig(u16),
}

/// The source address of the errors, per family (`[dataplane] icmp_source`); `None`:
/// the offending packet's destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sources {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl Sources {
    /// The first address of each family in `list`.
    pub fn from_list(list: &[IpAddr]) -> Self {
        Sources {
            v4: list.iter().find_map(|a| match a {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            }),
            v6: list.iter().find_map(|a| match a {
                IpAddr::V6(a) => Some(*a),
                IpAddr::V4(_) => None,
            }),
        }
    }
}

/// Builds the ICMP error `kind` for `pkt` into `out`, from `sources`: its length (at
/// most [`MAX_LEN`]), or `None` when `pkt` must not be answered or `out` is too short.
pub fn build(pkt: &[u8], kind: Kind, sources: Sources, out: &mut [u8]) -> Option<usize> {
    let f = flow_of(pkt)?;
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
            // Type, code, and the second word (RFC 792; RFC 1191 4: next-hop MTU).
            let head = match kind {
                Kind::Unreachable => [3, 1, 0, 0, 0, 0, 0, 0],
                // Without DF the sender expects us to fragment, not to answer.
                Kind::TooBig(_) if pkt[6] & 0x40 == 0 => return None,
                Kind::TooBig(mtu) => {
                    let [a, b] = mtu.to_be_bytes();
                    [3, 4, 0, 0, 0, 0, a, b]
                }
            };
            build_v4(pkt, sources.v4.unwrap_or(dst), src, head, out)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            if f.protocol == 58 {
                // ICMPv6 error messages have types 0-127 (RFC 4443 2.1).
                let (t, _) = f.ports?;
                if (t >> 8) < 128 {
                    return None;
                }
            }
            let too_big = matches!(kind, Kind::TooBig(_));
            if !unique_v6(src) || !(unique_v6(dst) || too_big && dst.is_multicast()) {
                return None;
            }
            let head = match kind {
                Kind::Unreachable => [1, 3, 0, 0, 0, 0, 0, 0],
                Kind::TooBig(mtu) => {
                    let [a, b] = mtu.to_be_bytes();
                    [2, 0, 0, 0, 0, 0, a, b]
                }
            };
            // A multicast destination is no source: answer from the configured address
            // or not at all.
            let from = match (sources.v6, dst.is_multicast()) {
                (Some(a), _) => a,
                (None, false) => dst,
                (None, true) => return None,
            };
            build_v6(pkt, from, src, head, out)
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

/// IPv4 header from `from` to `to` + the ICMP header `head` + as much of `pkt` as fits
/// in 576 octets.
fn build_v4(
    pkt: &[u8],
    from: Ipv4Addr,
    to: Ipv4Addr,
    head: [u8; 8],
    out: &mut [u8],
) -> Option<usize> {
    let quote = pkt.len().min(V4_MAX - 28);
    let total = 28 + quote;
    let out = out.get_mut(..total)?;
    out[..28].fill(0);
    out[0] = 0x45;
    out[1] = 0xc0; // internetwork control, as the kernel marks ICMP errors
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[8] = 64;
    out[9] = 1;
    out[12..16].copy_from_slice(&from.octets());
    out[16..20].copy_from_slice(&to.octets());
    let c = checksum(0, &out[..20]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    out[20..28].copy_from_slice(&head);
    out[28..].copy_from_slice(&pkt[..quote]);
    let c = checksum(0, &out[20..]);
    out[22..24].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

/// IPv6 header from `from` to `to` + the ICMPv6 header `head` + as much of `pkt` as fits
/// in 1280 octets.
fn build_v6(
    pkt: &[u8],
    from: Ipv6Addr,
    to: Ipv6Addr,
    head: [u8; 8],
    out: &mut [u8],
) -> Option<usize> {
    let quote = pkt.len().min(V6_MAX - 48);
    let total = 48 + quote;
    let icmp_len = 8 + quote;
    let out = out.get_mut(..total)?;
    out[..48].fill(0);
    out[0] = 0x60;
    out[4..6].copy_from_slice(&(icmp_len as u16).to_be_bytes());
    out[6] = 58;
    out[7] = 64;
    out[8..24].copy_from_slice(&from.octets());
    out[24..40].copy_from_slice(&to.octets());
    out[40..48].copy_from_slice(&head);
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

    /// A destination unreachable from the unreachable address.
    fn unreach(pkt: &[u8], out: &mut [u8]) -> Option<usize> {
        build(pkt, Kind::Unreachable, Sources::default(), out)
    }

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
        let n = unreach(&echo, &mut out).unwrap();
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
        assert_eq!(unreach(&big, &mut out), Some(576));
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
        let n = unreach(&echo, &mut out).unwrap();
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
        assert_eq!(unreach(&big, &mut out), Some(1280));
    }

    #[test]
    fn never_for_errors_fragments_multicast_or_broadcast() {
        let mut out = [0u8; 1500];
        let from = [10, 200, 1, 2];
        let to = [10, 99, 0, 7];
        for t in [3u8, 4, 5, 11, 12] {
            assert_eq!(
                unreach(&v4(from, to, 1, &[t, 0, 0, 0, 0, 0, 0, 0]), &mut out),
                None,
                "type {t}"
            );
        }
        // Echo reply, timestamp: queries, answered.
        assert!(unreach(&v4(from, to, 1, &[0, 0, 0, 0, 0, 0, 0, 0]), &mut out).is_some());
        let mut frag = v4(from, to, 17, &[0u8; 16]);
        frag[6..8].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(unreach(&frag, &mut out), None);
        let mut first = v4(from, to, 17, &[0u8; 16]);
        first[6] = 0x20; // MF, offset 0: the first fragment is answered
        assert!(unreach(&first, &mut out).is_some());
        assert_eq!(
            unreach(&v4(from, [224, 0, 0, 5], 17, &[0; 8]), &mut out),
            None
        );
        assert_eq!(
            unreach(&v4(from, [255, 255, 255, 255], 17, &[0; 8]), &mut out),
            None
        );
        assert_eq!(unreach(&v4([0, 0, 0, 0], to, 17, &[0; 8]), &mut out), None);
        assert_eq!(
            unreach(&v4([239, 1, 1, 1], to, 17, &[0; 8]), &mut out),
            None
        );
        assert_eq!(
            unreach(&v4([127, 0, 0, 1], to, 17, &[0; 8]), &mut out),
            None
        );
        // IPv6: errors, multicast, unspecified source, non-initial fragments.
        let (s6, d6) = ("2001:db8:200::2", "2001:db8:99::7");
        assert_eq!(
            unreach(&v6(s6, d6, 58, &[1, 3, 0, 0, 0, 0, 0, 0]), &mut out),
            None
        );
        assert_eq!(
            unreach(&v6(s6, d6, 58, &[2, 0, 0, 0, 0, 0, 0, 0]), &mut out),
            None
        );
        assert_eq!(unreach(&v6(s6, "ff02::1", 17, &[0; 8]), &mut out), None);
        assert_eq!(unreach(&v6("::", d6, 17, &[0; 8]), &mut out), None);
        let mut fh = vec![17u8, 0, 0, 0, 0, 0, 0, 0];
        fh[2..4].copy_from_slice(&(8u16 << 3).to_be_bytes());
        fh.extend_from_slice(&[0; 8]);
        assert_eq!(unreach(&v6(s6, d6, 44, &fh), &mut out), None);
        // Garbage and runts are not answered, and never panic.
        for n in 0..30 {
            let _ = unreach(&v4(from, to, 1, &[8, 0, 0, 0])[..n.min(24)], &mut out);
        }
        assert_eq!(unreach(&[0x45, 0, 0], &mut out), None);
    }

    #[test]
    fn too_big_reports_the_mtu_for_df_and_ipv6_only() {
        let mut out = [0u8; 1500];
        let mut df = v4(
            [10, 201, 0, 2],
            [10, 100, 0, 5],
            1,
            &[8, 0, 0, 0, 0, 1, 0, 1],
        );
        df[6] = 0x40;
        df.resize(1500, 0);
        let n = build(&df, Kind::TooBig(1400), Sources::default(), &mut out).unwrap();
        let r = &out[..n];
        // Fragmentation needed, the next-hop MTU in the second word (RFC 1191 4).
        assert_eq!((r[20], r[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([r[26], r[27]]), 1400);
        assert_eq!(
            (&r[12..16], &r[16..20]),
            (&[10, 100, 0, 5][..], &[10, 201, 0, 2][..])
        );
        assert_eq!(checksum(0, &r[20..]), 0);
        assert_eq!(n, 576);
        // Without DF the sender did not ask to be told.
        df[6] = 0;
        assert_eq!(
            build(&df, Kind::TooBig(1400), Sources::default(), &mut out),
            None
        );
        // IPv6: Packet Too Big, type 2 code 0, the MTU in the second word (RFC 4443 3.2).
        let big6 = v6("fd00:201::2", "fd00:99::8", 17, &[0; 1460]);
        let n = build(&big6, Kind::TooBig(1400), Sources::default(), &mut out).unwrap();
        let r = &out[..n];
        assert_eq!((r[40], r[41]), (2, 0));
        assert_eq!(u32::from_be_bytes([r[44], r[45], r[46], r[47]]), 1400);
        assert_eq!(n, 1280);
        let mut sum = 0u32;
        for c in r[8..40].chunks_exact(2) {
            sum += u16::from_be_bytes([c[0], c[1]]) as u32;
        }
        sum += (n - 40) as u32 + 58;
        assert_eq!(checksum(sum, &r[40..]), 0);
        // To a multicast group only from a configured source (RFC 4443 2.4 (e.2)).
        let mc = v6("fd00:201::2", "ff0e::1", 17, &[0; 1460]);
        assert_eq!(
            build(&mc, Kind::TooBig(1400), Sources::default(), &mut out),
            None
        );
        let src = Sources::from_list(&["fd00:99::fffe".parse().unwrap()]);
        assert!(build(&mc, Kind::TooBig(1400), src, &mut out).is_some());
        assert_eq!(build(&mc, Kind::Unreachable, src, &mut out), None);
    }

    #[test]
    fn the_configured_source_replaces_the_offending_destination() {
        let mut out = [0u8; 1500];
        let src = Sources::from_list(&[
            "fd00:99::fffe".parse().unwrap(),
            "10.99.0.254".parse().unwrap(),
            "10.99.0.253".parse().unwrap(),
        ]);
        assert_eq!(src.v4, Some(Ipv4Addr::new(10, 99, 0, 254)));
        let echo = v4(
            [10, 201, 0, 2],
            [10, 99, 0, 7],
            1,
            &[8, 0, 0, 0, 0, 1, 0, 1],
        );
        let n = build(&echo, Kind::Unreachable, src, &mut out).unwrap();
        assert_eq!(&out[12..16], &[10, 99, 0, 254]);
        assert_eq!(&out[16..20], &[10, 201, 0, 2]);
        assert_eq!(checksum(0, &out[..20]), 0);
        assert_eq!(checksum(0, &out[20..n]), 0);
        let echo6 = v6("fd00:201::2", "fd00:99::7", 58, &[128, 0, 0, 0, 0, 1, 0, 1]);
        build(&echo6, Kind::Unreachable, src, &mut out).unwrap();
        assert_eq!(
            &out[8..24],
            &"fd00:99::fffe".parse::<Ipv6Addr>().unwrap().octets()
        );
        // Unset: the unreachable address itself.
        unreach(&echo, &mut out).unwrap();
        assert_eq!(&out[12..16], &[10, 99, 0, 7]);
    }
}
