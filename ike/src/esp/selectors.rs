//! Traffic selector checks on inner packets (RFC 4301 4.4.1.1, 5.1, 5.2, 7).
//!
//! A selector matches a packet when the address, the next layer protocol and the port
//! all fall in it. Ports are the TCP, UDP, SCTP and UDP-Lite source and destination
//! ports; for ICMP and ICMPv6 the port fields hold type (high octet) and code (low octet),
//! RFC 4301 4.4.1.1 / RFC 7296 3.13.1, and that one value is checked against the
//! selectors on both sides. The port range 0..=65535 is ANY (matches every packet,
//! ports or not); 65535..=0 is OPAQUE (matches only packets whose ports are not
//! available: non-initial fragments, protocols without ports). Every other range needs
//! the port: a non-initial fragment cannot match it here and is refused as
//! [`EspDrop::NonInitialFragment`], unless a [`FragmentTable`](super::FragmentTable)
//! remembers that its initial fragment passed (RFC 4301 7.4, stateful fragment checking).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{EspDrop, NextHeader};
use crate::event::TrafficSelector;

const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const SCTP: u8 = 132;
const UDPLITE: u8 = 136;

/// IPv6 extension headers walked at most (RFC 8200 4.1 recommends a handful).
const MAX_EXT_HEADERS: usize = 8;

/// The selector-relevant fields of an IP packet (RFC 4301 4.4.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Next layer protocol (after IPv6 extension headers).
    pub protocol: u8,
    /// Source and destination port, ICMP type<<8|code in both; `None` when not
    /// available (OPAQUE).
    pub ports: Option<(u16, u16)>,
    /// A fragment other than the first (offset not zero).
    pub non_initial_fragment: bool,
    /// Where this packet sits in a fragmented datagram; `None` for a whole packet
    /// (an IPv6 atomic fragment, offset 0 without M, is a whole packet: RFC 6946).
    pub fragment: Option<Fragment>,
}

/// An IP fragment's identity and extent (RFC 791 3.2, RFC 8200 4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Identification: IPv4's 16 bits, IPv6's 32.
    pub id: u32,
    /// Offset of this fragment's data in the fragmentable part, in octets.
    pub offset: u32,
    /// Octets of fragment data this packet carries.
    pub len: u32,
    /// More Fragments.
    pub more: bool,
    /// Largest `offset + len` a reassembled datagram allows (65535 minus the headers in
    /// front of the fragmentable part; RFC 791 3.1, RFC 8200 4.5).
    pub limit: u32,
    /// Initial fragment: octets from the start of the fragmentable part to the end of the
    /// upper-layer header fields the selectors read (extension headers after the Fragment
    /// header, then 8 octets of TCP/UDP/ICMP header). A later fragment starting before
    /// this would overwrite what was checked (RFC 1858, RFC 5722).
    pub header_end: u32,
    /// A second Fragment header in one packet (RFC 8200 4.1 allows one).
    pub nested: bool,
}

/// Parses the addresses, next layer protocol and ports of an IPv4 or IPv6 packet.
/// `None` for anything too short or not IP.
pub fn flow_of(packet: &[u8]) -> Option<Flow> {
    match packet.first()? >> 4 {
        4 => {
            if packet.len() < 20 {
                return None;
            }
            let ihl = ((packet[0] & 0x0f) as usize) * 4;
            if ihl < 20 || ihl > packet.len() {
                return None;
            }
            let a =
                |i: usize| Ipv4Addr::new(packet[i], packet[i + 1], packet[i + 2], packet[i + 3]);
            let offset = u16::from_be_bytes([packet[6] & 0x1f, packet[7]]);
            let more = packet[6] & 0x20 != 0;
            let protocol = packet[9];
            let non_initial_fragment = offset != 0;
            let ports = if non_initial_fragment {
                None
            } else {
                ports_of(protocol, ICMP, &packet[ihl..])
            };
            let total = (u16::from_be_bytes([packet[2], packet[3]]) as usize).min(packet.len());
            let fragment = (more || non_initial_fragment).then(|| Fragment {
                id: u16::from_be_bytes([packet[4], packet[5]]) as u32,
                offset: offset as u32 * 8,
                len: total.saturating_sub(ihl) as u32,
                more,
                limit: 65535 - ihl as u32,
                header_end: 8,
                nested: false,
            });
            Some(Flow {
                src: IpAddr::V4(a(12)),
                dst: IpAddr::V4(a(16)),
                protocol,
                ports,
                non_initial_fragment,
                fragment,
            })
        }
        6 => {
            if packet.len() < 40 {
                return None;
            }
            let a = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&packet[i..i + 16]);
                Ipv6Addr::from(o)
            };
            let mut nh = packet[6];
            let mut off = 40usize;
            let mut non_initial_fragment = false;
            let end = (40 + u16::from_be_bytes([packet[4], packet[5]]) as usize).min(packet.len());
            // The Fragment header and where the fragmentable part starts.
            let mut fragment: Option<(Fragment, usize)> = None;
            for _ in 0..MAX_EXT_HEADERS {
                let hdr = packet.get(off..off + 8);
                let len = match (nh, hdr) {
                    // Hop-by-Hop, Routing, Destination Options (RFC 8200 4.3-4.6).
                    (0 | 43 | 60, Some(h)) => (h[1] as usize + 1) * 8,
                    // A second Fragment header: nothing legitimate sends one.
                    (44, Some(_)) if fragment.is_some() => {
                        if let Some((f, _)) = fragment.as_mut() {
                            f.nested = true;
                        }
                        break;
                    }
                    // Fragment (RFC 8200 4.5).
                    (44, Some(h)) => {
                        let fo = u16::from_be_bytes([h[2], h[3]]);
                        let more = fo & 1 != 0;
                        non_initial_fragment = fo >> 3 != 0;
                        // Offset 0 without M: an atomic fragment, a whole packet (RFC 6946).
                        if more || non_initial_fragment {
                            let f = Fragment {
                                id: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                                offset: (fo >> 3) as u32 * 8,
                                len: end.saturating_sub(off + 8) as u32,
                                more,
                                limit: 65535u32.saturating_sub((off - 40) as u32),
                                header_end: 8,
                                nested: false,
                            };
                            fragment = Some((f, off + 8));
                        }
                        8
                    }
                    // Authentication Header (RFC 4302 2.2: length in 4-octet units - 2).
                    (51, Some(h)) => (h[1] as usize + 2) * 4,
                    (0 | 43 | 60 | 44 | 51, None) => return None,
                    _ => break,
                };
                nh = hdr.map(|h| h[0]).unwrap_or(nh);
                off += len;
                if non_initial_fragment {
                    break;
                }
            }
            let ports = if non_initial_fragment {
                None
            } else {
                packet.get(off..).and_then(|l4| ports_of(nh, ICMPV6, l4))
            };
            let fragment = fragment.map(|(mut f, start)| {
                f.header_end = (off - start) as u32 + 8;
                f
            });
            Some(Flow {
                src: IpAddr::V6(a(8)),
                dst: IpAddr::V6(a(24)),
                protocol: nh,
                ports,
                non_initial_fragment,
                fragment,
            })
        }
        _ => None,
    }
}

fn ports_of(protocol: u8, icmp: u8, l4: &[u8]) -> Option<(u16, u16)> {
    match protocol {
        TCP | UDP | SCTP | UDPLITE if l4.len() >= 4 => Some((
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )),
        p if p == icmp && l4.len() >= 2 => {
            let tc = u16::from_be_bytes([l4[0], l4[1]]);
            Some((tc, tc))
        }
        _ => None,
    }
}

/// Whether a selector's port range admits `port` (RFC 4301 4.4.1.1 ANY / OPAQUE).
fn port_ok(ts: &TrafficSelector, port: Option<u16>) -> bool {
    match (ts.start_port, ts.end_port, port) {
        (0, 65535, _) => true,
        (65535, 0, None) => true,
        (_, _, None) => false,
        (a, b, Some(p)) => a <= p && p <= b,
    }
}

fn addr_ok(ts: &TrafficSelector, ip: &IpAddr) -> bool {
    match (ts.start, ts.end, ip) {
        (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(x)) => a <= *x && *x <= b,
        (IpAddr::V6(a), IpAddr::V6(b), IpAddr::V6(x)) => a <= *x && *x <= b,
        _ => false,
    }
}

/// Whether one of `list` covers (address, protocol, port); an empty list covers all.
fn covers(
    list: &[TrafficSelector],
    ip: &IpAddr,
    protocol: u8,
    port: Option<u16>,
    check_ports: bool,
) -> bool {
    list.is_empty()
        || list.iter().any(|ts| {
            (ts.protocol == 0 || ts.protocol == protocol)
                && addr_ok(ts, ip)
                && (!check_ports || port_ok(ts, port))
        })
}

/// Whether any selector narrows protocol or ports (then the outbound path checks the
/// whole flow, not only the destination it routed by).
pub fn selectors_narrow(ts: &[TrafficSelector]) -> bool {
    ts.iter()
        .any(|t| t.protocol != 0 || (t.start_port, t.end_port) != (0, 65535))
}

/// Source in `src_ts`, destination in `dst_ts`, ports included.
fn check_flow(
    f: &Flow,
    src_ts: &[TrafficSelector],
    dst_ts: &[TrafficSelector],
) -> Result<(), EspDrop> {
    let (sp, dp) = match f.ports {
        Some((s, d)) => (Some(s), Some(d)),
        None => (None, None),
    };
    if covers(src_ts, &f.src, f.protocol, sp, true) && covers(dst_ts, &f.dst, f.protocol, dp, true)
    {
        return Ok(());
    }
    // Would it match but for the ports a non-initial fragment does not carry?
    if f.non_initial_fragment
        && covers(src_ts, &f.src, f.protocol, None, false)
        && covers(dst_ts, &f.dst, f.protocol, None, false)
    {
        return Err(EspDrop::NonInitialFragment);
    }
    Err(EspDrop::TsMismatch)
}

/// Inbound policy check after decapsulation (RFC 4301 5.2 step 4): the inner packet's
/// IP version must match Next Header, its source (and source port) must lie in one of
/// the peer's selectors (`remote_ts`) and its destination (and destination port) in one
/// of ours (`local_ts`), with the protocol of that selector. An empty selector list
/// accepts anything.
pub fn check_inner_selectors(
    packet: &[u8],
    next_header: NextHeader,
    remote_ts: &[TrafficSelector],
    local_ts: &[TrafficSelector],
) -> Result<(), EspDrop> {
    let f = flow_of(packet).ok_or(EspDrop::TsMismatch)?;
    check_inbound_flow(&f, next_header, remote_ts, local_ts)
}

/// [`check_inner_selectors`] on a packet already parsed.
pub fn check_inbound_flow(
    f: &Flow,
    next_header: NextHeader,
    remote_ts: &[TrafficSelector],
    local_ts: &[TrafficSelector],
) -> Result<(), EspDrop> {
    match (next_header, &f.src) {
        (NextHeader::Ipv4, IpAddr::V4(_)) | (NextHeader::Ipv6, IpAddr::V6(_)) => {}
        _ => return Err(EspDrop::TsMismatch),
    }
    check_flow(f, remote_ts, local_ts)
}

/// Outbound policy check of the SA the destination routed to (RFC 4301 5.1 step 1):
/// source (and port) in our selectors (`local_ts`), destination (and port) in the
/// peer's (`remote_ts`).
pub fn check_outbound_selectors(
    packet: &[u8],
    local_ts: &[TrafficSelector],
    remote_ts: &[TrafficSelector],
) -> Result<(), EspDrop> {
    let f = flow_of(packet).ok_or(EspDrop::NoRoute)?;
    check_outbound_flow(&f, local_ts, remote_ts)
}

/// [`check_outbound_selectors`] on a packet already parsed: a data plane choosing among
/// several SAs to one destination parses the packet once and tries each SA in turn.
pub fn check_outbound_flow(
    f: &Flow,
    local_ts: &[TrafficSelector],
    remote_ts: &[TrafficSelector],
) -> Result<(), EspDrop> {
    check_flow(f, local_ts, remote_ts)
}
