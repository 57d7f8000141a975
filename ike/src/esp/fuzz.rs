//! Bodies of the ESP fuzz targets, shared by the cargo-fuzz targets in `ike/fuzz/` and
//! the seed tests below, so CI runs exactly what the fuzzer runs. Not an API (hidden from
//! the documentation).
//!
//! [`esp_inbound`]: an [`InboundSa`] of every transform (fixed test keys, 32-bit and ESN
//! sequence numbers) is fed records (RFC 4303 3.4):
//! * `[0][len: u16][bytes]`: arbitrary bytes into `decapsulate`;
//! * `[1][len][seq][nh][mutations][selectors][inner]`: `inner` sealed by the matching
//!   [`OutboundSa`] with that sequence number and Next Header, then mutated (XOR, cut,
//!   append), then decapsulated; what decrypts goes through [`check_inner_selectors`];
//! * `[2][len][seq][plaintext]`: `plaintext` (padding and trailer included) sealed as it
//!   is, to reach the trailer checks after authentication (RFC 4303 2.4, 2.6).
//!
//! `seq` is `[0x80 | _][u64]` (absolute) or `[_][i16]` (relative to the highest accepted).
//! Invariants: nothing panics; an accepted inner packet lies within the buffer and is the
//! sealed one; a mutated packet is refused; an authentic packet is accepted exactly when
//! a model of the replay window (RFC 4303 3.4.3, Appendix A2.2 for ESN) says so, and a
//! replayed sequence number is refused.
//!
//! [`inner_packet`]: the parsers of inner packets in the data plane: Next Header from
//! the version nibble, the selector checks (RFC 4301 5.1, 5.2) with stateful fragment
//! checking ([`FragmentTable`], RFC 4301 7.4, against a model) and the hold for
//! non-initial fragments that come first ([`EarlyFragments`]: bounded, releases only the
//! datagram's own fragments), the IPv4 fragmenter ([`Ipv4Fragments`] at an MTU of 68 +
//! `out_len`: fragments within it that reassemble to the packet), the ICMP destination
//! error builder ([`icmp`]) and the receive coalescer ([`gro`]). Input:
//! `[flags][out_len: u16][icmp][mtu: u16, if icmp bit 0][selectors][selectors]`, then
//! packets `[len: u16][bytes]`.
//! Flags: bits 0-1 the Next Header (from the packet, IPv4, IPv6, none), bit 2 a virtio
//! header (coalescing on), bit 3 USO, bits 4-5 how many SAs the packets alternate over,
//! bits 6-7 seconds between packets. `icmp`: bit 0 Packet Too Big with `mtu` rather than
//! unreachable, bits 1 and 2 a configured IPv4 and IPv6 source.
//!
//! [`outer_demux`]: the data plane's outer receive demultiplexing ([`outer`]): GRO
//! receives split into datagrams, each told apart as NAT keepalive, IKE or ESP (RFC 3948
//! 2.1-2.3) behind the IPv4 header of a raw socket where there is one. Input:
//! `[n][spi: u32; n % 8]` (the SA table) then receives `[carrier][seg: u16][len: u16]
//! [bytes]`: carrier 0 the NAT-T port with GRO segment size `seg` (0: none), 1 a raw IPv4
//! socket, 2 a raw IPv6 one. Invariants: the segments cover the receive in order, each
//! octet once, all `seg` long but the last; a keepalive is exactly one 0xFF and IKE
//! exactly what starts with the non-ESP marker, on UDP only, the marker kept; ESP starts
//! at the SPI that was looked up (after IHL words on IPv4, IHL at least 5 and within the
//! datagram) with the SA found for it and a whole ESP header; a refusal says why and
//! looks up nothing but an unknown SPI.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::gro::{self, Coalescer, Part};
use super::outer::{self, Carrier, Outer, OuterDrop};
use super::{
    check_inner_selectors, check_outbound_selectors, flow_of, icmp, EarlyFragments, EspDrop,
    FragmentTable, InboundSa, Ipv4Fragments, Lifetimes, NextHeader, OutboundSa, Transform,
    ESP_HEADER_LEN, FRAGMENT_LIFETIME, MAX_HEADROOM, MAX_REPLAY_WINDOW, MAX_TAILROOM,
};
use crate::config::{EncrAlg, IntegAlg};
use crate::error::Error;
use crate::event::{EspKeys, Spi, TrafficSelector};

/// Reads fuzzer input front to back; past the end everything reads as zero.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    /// A `[len: u16][bytes]` record.
    fn record(&mut self) -> &'a [u8] {
        let n = self.u16() as usize;
        self.bytes(n)
    }
}

/// The SA keys of the targets: every supported transform (`i % 6`), fixed test keys.
fn suite(i: u8, esn: bool) -> EspKeys {
    let key = |n: usize, b: u8| Zeroizing::new((0..n).map(|j| b.wrapping_add(j as u8)).collect());
    let none = || Zeroizing::new(Vec::new());
    let (encr, encr_key, integ, integ_key) = match i % 6 {
        0 => (EncrAlg::AesGcm16(128), key(20, 0x10), None, none()),
        1 => (EncrAlg::AesGcm16(256), key(36, 0x20), None, none()),
        2 => (EncrAlg::ChaCha20Poly1305, key(36, 0x30), None, none()),
        3 => (
            EncrAlg::AesCbc(128),
            key(16, 0x40),
            Some(IntegAlg::HmacSha256_128),
            key(32, 0x50),
        ),
        4 => (
            EncrAlg::AesCbc(256),
            key(32, 0x60),
            Some(IntegAlg::HmacSha384_192),
            key(48, 0x70),
        ),
        _ => (
            EncrAlg::AesCbc(256),
            key(32, 0x80),
            Some(IntegAlg::HmacSha512_256),
            key(64, 0x90),
        ),
    };
    EspKeys {
        spi: Spi(0x0f0f_0001),
        encr,
        encr_key,
        integ,
        integ_key,
        esn,
    }
}

/// What the receiver should remember: the replay window (RFC 4303 3.4.3) and the hard
/// packet lifetime, kept the simple way.
struct Model {
    size: u64,
    esn: bool,
    top: u64,
    seen: BTreeSet<u64>,
    accepted: u64,
    hard_packets: u64,
}

impl Model {
    /// The verdict on an authentic, unmodified packet with sequence number `seq`;
    /// `None` (any refusal) for an ESN packet outside the range the receiver infers
    /// the high half correctly for: it takes the one number with those low 32 bits in
    /// [top - W + 1, top - W + 1 + 2^32) (RFC 4303 A2.2), so the ICV fails for others.
    fn expect(&self, seq: u64) -> Option<Result<(), EspDrop>> {
        if self.hard_packets != 0 && self.accepted >= self.hard_packets {
            return Some(Err(EspDrop::LifetimeExpired));
        }
        if self.esn
            && !(seq.saturating_add(self.size) > self.top
                && seq < self.top.saturating_add(1 << 32) - (self.size - 1))
        {
            return None;
        }
        Some(
            if seq == 0 || (seq <= self.top && self.top - seq >= self.size) {
                Err(EspDrop::TooOld)
            } else if self.seen.contains(&seq) {
                Err(EspDrop::Replayed)
            } else {
                Ok(())
            },
        )
    }

    /// An authentic, unmodified packet with `seq` got `got`; `after_icv` is what the
    /// checks after authentication (trailer, Next Header) must say of it.
    fn check(&mut self, seq: u64, got: Result<(), EspDrop>, after_icv: Result<(), EspDrop>) {
        match self.expect(seq).map(|w| w.and(after_icv)) {
            Some(w) => assert_eq!(got, w, "seq {seq}, top {}", self.top),
            None => assert!(
                got.is_err(),
                "ESN seq {seq} far from the window (top {}, size {}) accepted",
                self.top,
                self.size
            ),
        }
        self.record(seq, &got);
    }

    /// An authentic packet got `got`: the window moved if it passed the ICV.
    fn record(&mut self, seq: u64, got: &Result<(), EspDrop>) {
        let authentic = match got {
            Ok(()) => {
                self.accepted += 1;
                true
            }
            Err(e) => matches!(
                e,
                EspDrop::BadPadding | EspDrop::BadNextHeader | EspDrop::Dummy
            ),
        };
        if authentic {
            assert!(
                self.seen.insert(seq),
                "sequence number {seq} accepted twice"
            );
            self.top = self.top.max(seq);
        }
    }

    fn seq(&self, inp: &mut Input) -> u64 {
        let mode = inp.u8();
        if mode & 0x80 != 0 {
            u64::from_be_bytes(std::array::from_fn(|_| inp.u8()))
        } else {
            self.top.wrapping_add(inp.u16() as i16 as i64 as u64)
        }
    }
}

fn drop_of(r: &Result<super::Decapsulated, Error>) -> Result<(), EspDrop> {
    match r {
        Ok(_) => Ok(()),
        Err(Error::Esp(d)) => Err(*d),
        Err(e) => panic!("decapsulate failed outside the ESP drop reasons: {e}"),
    }
}

/// Runs one input through the ESP receive path; returns how many packets were accepted
/// (the seed tests check the seeds get past authentication).
pub fn esp_inbound(data: &[u8]) -> usize {
    let mut inp = Input(data);
    let flags = inp.u8();
    let esn = flags & 0x80 != 0;
    let keys = suite(flags & 0x7f, esn);
    let window = u32::from(inp.u16()) << (flags >> 4 & 7);
    let hard_packets = u64::from(inp.u8());
    let lifetimes = Lifetimes {
        hard_packets,
        ..Lifetimes::default()
    };
    let (Ok(sa), Ok(out), Ok(raw)) = (
        InboundSa::new(&keys, lifetimes, window),
        OutboundSa::new(&keys, Lifetimes::default()),
        Transform::new(&keys),
    ) else {
        panic!("test keys rejected")
    };
    let mut model = Model {
        size: u64::from(window.clamp(32, MAX_REPLAY_WINDOW)),
        esn,
        top: 0,
        seen: BTreeSet::new(),
        accepted: 0,
        hard_packets,
    };
    let mut accepted = 0;
    while !inp.0.is_empty() {
        let op = inp.u8();
        let mut rec = Input(inp.record());
        match op % 3 {
            0 => {
                let mut pkt = rec.0.to_vec();
                let r = sa.decapsulate(&mut pkt);
                if let Ok(d) = &r {
                    // A forgery: checked against the model like any authentic packet.
                    assert!(d.range.start <= d.range.end && d.range.end <= pkt.len());
                    model.record(d.seq, &Ok(()));
                    accepted += 1;
                }
                let _ = drop_of(&r);
            }
            1 => {
                let seq = model.seq(&mut rec);
                let nh = match rec.u8() % 8 {
                    0 => NextHeader::Ipv6,
                    1 => NextHeader::NoNext,
                    _ => NextHeader::Ipv4,
                };
                let muts: Vec<(u8, u16, u8)> = (0..rec.u8() % 4)
                    .map(|_| (rec.u8(), rec.u16(), rec.u8()))
                    .collect();
                let remote = selectors(&mut rec);
                let local = selectors(&mut rec);
                let inner = rec.0;
                let mut buf = vec![0u8; MAX_HEADROOM + inner.len() + MAX_TAILROOM];
                buf[MAX_HEADROOM..MAX_HEADROOM + inner.len()].copy_from_slice(inner);
                out.set_next_seq(seq);
                let Ok(e) = out.encapsulate(&mut buf, MAX_HEADROOM, inner.len(), nh) else {
                    // Sequence number 0 or past the 32-bit space: never sent.
                    continue;
                };
                let sealed = buf[e.range].to_vec();
                let mut pkt = sealed.clone();
                for (how, at, v) in muts {
                    let at = at as usize % (pkt.len() + 1);
                    match how % 3 {
                        0 if at < pkt.len() => pkt[at] ^= v.max(1),
                        1 => pkt.truncate(at),
                        _ => pkt.extend(std::iter::repeat_n(v, at % 17 + 1)),
                    }
                }
                let mutated = pkt != sealed;
                let r = sa.decapsulate(&mut pkt);
                let got = drop_of(&r);
                if mutated {
                    // Only ciphertext the key made authenticates.
                    assert!(got.is_err(), "a mutated packet was accepted");
                    continue;
                }
                let dummy = if nh == NextHeader::NoNext {
                    Err(EspDrop::Dummy)
                } else {
                    Ok(())
                };
                model.check(seq, got, dummy);
                let Ok(d) = r else { continue };
                accepted += 1;
                assert_eq!((d.seq, d.next_header), (seq, nh));
                assert!(d.range.start <= d.range.end && d.range.end <= pkt.len());
                assert_eq!(&pkt[d.range.clone()], inner);
                selector_invariants(&pkt[d.range.clone()], Some(nh), &remote, &local);
                // The same packet again: refused (RFC 4303 3.4.3).
                let mut again = sealed;
                let r = drop_of(&sa.decapsulate(&mut again));
                assert_eq!(Some(r), model.expect(seq));
                assert!(r.is_err(), "replayed sequence number {seq} accepted");
            }
            _ => {
                // Without ESN only the low half is sent and authenticated.
                let seq = model.seq(&mut rec) & if esn { u64::MAX } else { 0xffff_ffff };
                let mut pt = rec.0.to_vec();
                let align = if keys.integ.is_some() { 16 } else { 4 };
                while pt.len() < 2 || pt.len() % align != 0 {
                    pt.insert(0, 0);
                }
                let hdr = ESP_HEADER_LEN + raw.iv_len();
                let mut pkt = vec![0u8; hdr + pt.len() + raw.icv_len()];
                pkt[..4].copy_from_slice(&keys.spi.0.to_be_bytes());
                pkt[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
                pkt[hdr..hdr + pt.len()].copy_from_slice(&pt);
                if raw.seal(&mut pkt, seq, esn).is_err() {
                    continue;
                }
                let r = sa.decapsulate(&mut pkt);
                let got = drop_of(&r);
                model.check(seq, got, trailer(&pt).map(|_| ()));
                if let Ok(d) = r {
                    accepted += 1;
                    let len = trailer(&pt).unwrap_or(0);
                    assert_eq!(d.range, hdr..hdr + len);
                    assert_eq!(&pkt[d.range], &pt[..len]);
                }
            }
        }
    }
    accepted
}

/// The payload length of a plaintext (payload, padding, pad length, next header) the
/// receiver must accept (RFC 4303 2.4: padding 1, 2, 3, ...; 2.6: IPv4 or IPv6).
fn trailer(pt: &[u8]) -> Result<usize, EspDrop> {
    let (pad_len, nh) = (pt[pt.len() - 2] as usize, pt[pt.len() - 1]);
    let payload = (pt.len() - 2)
        .checked_sub(pad_len)
        .ok_or(EspDrop::BadPadding)?;
    if (0..pad_len).any(|i| pt[payload + i] as usize != i + 1) {
        return Err(EspDrop::BadPadding);
    }
    match nh {
        4 | 41 => Ok(payload),
        59 => Err(EspDrop::Dummy),
        _ => Err(EspDrop::BadNextHeader),
    }
}

/// Up to three selectors: `[flags]` then the fields the flags ask for. Flags: bit 0 IPv6,
/// bits 1-3 the protocol, bits 4-5 ANY / OPAQUE / a port range, bit 6 any address.
fn selectors(inp: &mut Input) -> Vec<TrafficSelector> {
    (0..inp.u8() % 4)
        .map(|_| {
            let f = inp.u8();
            let v6 = f & 1 != 0;
            let protocol = match f >> 1 & 7 {
                0 => 0,
                1 => 6,
                2 => 17,
                3 => 1,
                4 => 58,
                5 => 132,
                _ => inp.u8(),
            };
            let mut addr = |fill: Option<u8>| {
                let mut o = [0u8; 16];
                for b in &mut o[..if v6 { 16 } else { 4 }] {
                    *b = fill.unwrap_or_else(|| inp.u8());
                }
                if v6 {
                    IpAddr::V6(Ipv6Addr::from(o))
                } else {
                    IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3]))
                }
            };
            let (start, end) = if f & 0x40 != 0 {
                (addr(Some(0)), addr(Some(0xff)))
            } else {
                (addr(None), addr(None))
            };
            let (start_port, end_port) = match f >> 4 & 3 {
                0 => (0, 65535),
                1 => (65535, 0),
                _ => (inp.u16(), inp.u16()),
            };
            TrafficSelector {
                start,
                end,
                protocol,
                start_port,
                end_port,
            }
        })
        .collect()
}

/// The selector checks on one inner packet (RFC 4301 5.1 step 1, 5.2 step 4): refusals
/// are the selector reasons; a selector list accepts no more than an empty one does; the
/// packet's own addresses, protocol and ports (or OPAQUE) always match.
fn selector_invariants(
    pkt: &[u8],
    nh: Option<NextHeader>,
    remote: &[TrafficSelector],
    local: &[TrafficSelector],
) {
    let flow = flow_of(pkt);
    let version = NextHeader::for_inner_packet(pkt);
    if let Some(f) = &flow {
        let want = if f.src.is_ipv4() {
            NextHeader::Ipv4
        } else {
            NextHeader::Ipv6
        };
        assert_eq!(version, Some(want));
    }
    let Some(nh) = nh.or(version) else { return };
    let inbound = check_inner_selectors(pkt, nh, remote, local);
    let open = check_inner_selectors(pkt, nh, &[], &[]);
    let outbound = check_outbound_selectors(pkt, local, remote);
    for r in [&inbound, &outbound] {
        if let Err(e) = r {
            assert!(matches!(
                e,
                EspDrop::TsMismatch | EspDrop::NonInitialFragment | EspDrop::NoRoute
            ));
            if *e == EspDrop::NonInitialFragment {
                assert!(flow.is_some_and(|f| f.non_initial_fragment));
            }
        }
    }
    if inbound.is_ok() {
        assert!(open.is_ok());
    }
    let Some(f) = flow else {
        assert_eq!(open, Err(EspDrop::TsMismatch));
        assert_eq!(outbound, Err(EspDrop::NoRoute));
        return;
    };
    assert_eq!(open.is_ok(), version == Some(nh));
    let exact = |ip: IpAddr, port: Option<u16>| TrafficSelector {
        start: ip,
        end: ip,
        protocol: f.protocol,
        start_port: port.unwrap_or(65535),
        end_port: port.unwrap_or(0),
    };
    let (sp, dp) = (f.ports.map(|p| p.0), f.ports.map(|p| p.1));
    let (src, dst) = ([exact(f.src, sp)], [exact(f.dst, dp)]);
    assert_eq!(check_outbound_selectors(pkt, &src, &dst), Ok(()));
    if open.is_ok() {
        assert_eq!(check_inner_selectors(pkt, nh, &src, &dst), Ok(()));
    }
}

/// Runs one input through the inner-packet parsers; `start` is the clock of the
/// fragment table. Returns how many packets the coalescer merged into others (the seed
/// tests check the seeds reach it).
pub fn inner_packet(data: &[u8], start: Instant) -> usize {
    let mut inp = Input(data);
    let flags = inp.u8();
    let out_len = inp.u16() as usize % (icmp::MAX_LEN + 64);
    let which = inp.u8();
    let kind = if which & 1 != 0 {
        icmp::Kind::TooBig(inp.u16())
    } else {
        icmp::Kind::Unreachable
    };
    let sources = icmp::Sources {
        v4: (which & 2 != 0).then_some(Ipv4Addr::new(192, 0, 2, 254)),
        v6: (which & 4 != 0).then_some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe)),
    };
    let remote = selectors(&mut inp);
    let local = selectors(&mut inp);
    let mut bufs = Vec::new();
    while !inp.0.is_empty() {
        bufs.push(inp.record().to_vec());
    }
    let mut out = vec![0u8; out_len];
    let mut frags = Fragments {
        table: FragmentTable::new(16, 7),
        passed: BTreeMap::new(),
        early: EarlyFragments::new(4, 256),
    };
    let nh = match flags & 3 {
        0 => None,
        1 => Some(NextHeader::Ipv4),
        2 => Some(NextHeader::Ipv6),
        _ => Some(NextHeader::NoNext),
    };
    for (i, pkt) in bufs.iter().enumerate() {
        selector_invariants(pkt, nh, &remote, &local);
        let now = start + Duration::from_secs(i as u64 * u64::from(flags >> 6));
        let sa = (i % (1 + usize::from(flags >> 4 & 3))) as u32;
        let nh = nh.or(NextHeader::for_inner_packet(pkt));
        if let Some(nh) = nh {
            frags.check(pkt, nh, &remote, &local, sa, now);
        }
        if let Some(n) = icmp::build(pkt, kind, sources, &mut out) {
            icmp_invariants(pkt, kind, sources, &out[..n]);
        }
        split_invariants(pkt, 68 + out_len);
    }
    // Every flag bit has a job already: checksum verification goes by their parity.
    let verify = flags.count_ones() % 2 == 1;
    coalesce(flags & 4 != 0, flags & 8 != 0, verify, &mut bufs)
}

/// Datagram key of the fragment model: addresses, protocol, Identification, SA.
type DatagramKey = (IpAddr, IpAddr, u8, u32, u32);

/// A [`FragmentTable`] beside the simple model of it: the initial fragments that passed,
/// with when they expire and where their headers end.
struct Fragments {
    table: FragmentTable,
    passed: BTreeMap<DatagramKey, (Instant, u32)>,
    early: EarlyFragments,
}

impl Fragments {
    /// Stateful fragment checking (RFC 4301 7.4): the verdict differs from the stateless
    /// one only for fragments, by refusing malformed ones or by passing a non-initial
    /// fragment whose initial fragment passed on the same SA, not long ago, and which
    /// does not overlap the headers that one carried.
    fn check(
        &mut self,
        pkt: &[u8],
        nh: NextHeader,
        remote: &[TrafficSelector],
        local: &[TrafficSelector],
        sa: u32,
        now: Instant,
    ) {
        let got = self.table.check_inbound(pkt, nh, remote, local, sa, || now);
        self.hold(pkt, sa, now, got);
        let plain = check_inner_selectors(pkt, nh, remote, local);
        let Some((f, frag)) = flow_of(pkt).and_then(|f| Some((f, f.fragment?))) else {
            assert_eq!(got, plain, "a whole packet keeps its verdict");
            return;
        };
        let key = (f.src, f.dst, f.protocol, frag.id, sa);
        if got.is_ok() && plain.is_err() {
            assert_eq!(plain, Err(EspDrop::NonInitialFragment));
            let passed = self.passed.get(&key).copied();
            assert!(
                passed.is_some_and(|(expires, end)| expires > now && frag.offset >= end),
                "a non-initial fragment passed without its initial fragment"
            );
        } else {
            assert!(got == plain || got == Err(EspDrop::BadFragment));
        }
        if frag.offset == 0 {
            if got.is_ok() {
                self.passed
                    .insert(key, (now + FRAGMENT_LIFETIME, frag.header_end));
            } else if got == plain {
                self.passed.remove(&key);
            }
        }
    }
}

impl Fragments {
    /// The data plane's use of [`EarlyFragments`]: a fragment refused for want of its
    /// initial fragment is held; one that passes releases what is held of its datagram
    /// on its SA, and nothing else. The hold never exceeds its slots.
    fn hold(&mut self, pkt: &[u8], sa: u32, now: Instant, got: Result<(), EspDrop>) {
        self.early.expire(now);
        match got {
            Err(EspDrop::NonInitialFragment) => {
                let _ = self.early.hold(pkt, sa, now);
            }
            Ok(()) => {
                let Some(d) = self.early.waiting(pkt, sa) else {
                    return;
                };
                let f = flow_of(pkt).and_then(|f| Some((f, f.fragment?)));
                let Some((f, frag)) = f else {
                    panic!("a datagram released by a packet that is no fragment")
                };
                assert_eq!(frag.offset, 0, "released by a non-initial fragment");
                let n = self.early.release(d, |held| {
                    let h = flow_of(held).and_then(|h| Some((h, h.fragment?)));
                    let Some((h, hf)) = h else {
                        panic!("held something that is no fragment")
                    };
                    assert_eq!(
                        (h.src, h.dst, h.protocol, hf.id),
                        (f.src, f.dst, f.protocol, frag.id)
                    );
                    assert!(hf.offset > 0);
                });
                assert!(n > 0);
                assert!(self.early.waiting(pkt, sa).is_none());
            }
            Err(_) => {}
        }
        assert!(self.early.len() <= 4);
    }
}

/// The fragments [`Ipv4Fragments`] cuts `pkt` into at `mtu`: each within it, an IPv4
/// fragment of the same addresses, protocol and Identification, More Fragments on all
/// but the last, data in 8-octet units, offsets that follow one another, and their data
/// together is the packet's.
fn split_invariants(pkt: &[u8], mtu: usize) {
    let Ok(mut it) = Ipv4Fragments::new(pkt, mtu) else {
        return;
    };
    let Some(p) = flow_of(pkt) else {
        panic!("fragmented a packet that does not parse")
    };
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    let base = usize::from(u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff) * 8;
    let n = it.remaining();
    let mut out = vec![0u8; mtu];
    let mut data = Vec::new();
    let mut count = 0;
    while let Some(len) = it.next_into(&mut out) {
        let f = &out[..len];
        assert!(len <= mtu);
        let fihl = usize::from(f[0] & 0x0f) * 4;
        assert_eq!(usize::from(u16::from_be_bytes([f[2], f[3]])), len);
        assert_eq!(f[4..6], pkt[4..6]);
        assert_eq!(
            gro::fold(
                f[..fihl]
                    .chunks(2)
                    .map(|c| u64::from(u16::from_be_bytes([c[0], c[1]])))
                    .sum()
            ),
            0xffff
        );
        let fo = u16::from_be_bytes([f[6], f[7]]);
        assert_eq!(
            usize::from(fo & 0x1fff) * 8,
            base + data.len(),
            "offsets follow"
        );
        let last = data.len() + len - fihl == total - ihl;
        if !last {
            assert!(fo & 0x2000 != 0 && (len - fihl) % 8 == 0);
        }
        let Some(q) = flow_of(f) else {
            panic!("a fragment that does not parse")
        };
        assert_eq!((q.src, q.dst, q.protocol), (p.src, p.dst, p.protocol));
        data.extend_from_slice(&f[fihl..]);
        count += 1;
    }
    assert_eq!(count, n);
    assert_eq!(data, pkt[ihl..total]);
}

/// An ICMP error goes back to the source, from the configured address or else the
/// destination, says what `kind` asks (type, code, MTU: RFC 792, RFC 1191 4, RFC 4443
/// 3.1, 3.2), quotes the packet, and both checksums verify (RFC 1071; RFC 8200 8.1).
fn icmp_invariants(pkt: &[u8], kind: icmp::Kind, sources: icmp::Sources, r: &[u8]) {
    assert!(r.len() <= icmp::MAX_LEN);
    let (Some(f), Some(e)) = (flow_of(pkt), flow_of(r)) else {
        panic!("an error for a packet that does not parse, or one that does not parse")
    };
    let ok = |s: u64| gro::fold(s) == 0xffff;
    let mtu = match kind {
        icmp::Kind::TooBig(mtu) => Some(mtu.to_be_bytes()),
        icmp::Kind::Unreachable => None,
    };
    let from = match f.dst {
        IpAddr::V4(d) => IpAddr::V4(sources.v4.unwrap_or(d)),
        IpAddr::V6(d) => IpAddr::V6(sources.v6.unwrap_or(d)),
    };
    assert_eq!((e.src, e.dst), (from, f.src));
    if r[0] >> 4 == 4 {
        let code = if mtu.is_some() { 4 } else { 1 };
        assert_eq!(
            (e.protocol, e.ports),
            (1, Some((0x0300 | code, 0x0300 | code)))
        );
        if let Some(m) = mtu {
            assert!(pkt[6] & 0x40 != 0, "fragmentation needed only with DF");
            assert_eq!(r[26..28], m);
        }
        assert!(ok(gro::sum(&r[..20], 0)) && ok(gro::sum(&r[20..], 0)));
        assert_eq!(u16::from_be_bytes([r[2], r[3]]) as usize, r.len());
        assert!(pkt.starts_with(&r[28..]));
    } else {
        let tc = if mtu.is_some() { 0x0200 } else { 0x0103 };
        assert_eq!((e.protocol, e.ports), (58, Some((tc, tc))));
        if let Some(m) = mtu {
            assert_eq!(r[46..48], m);
        }
        let l4 = r.len() as u64 - 40;
        assert!(ok(gro::sum(&r[40..], gro::sum(&r[8..40], l4 + 58))));
        assert!(pkt.starts_with(&r[48..]));
    }
}

/// Every packet into a [`Coalescer`] and out again: each is written exactly once, a
/// merged write's IP length is its length, its virtio header describes it, and the
/// partial transport checksum completes to a valid one.
fn coalesce(vnet: bool, uso: bool, verify: bool, bufs: &mut [Vec<u8>]) -> usize {
    let mut c = Coalescer::new(vnet, uso, verify);
    let (mut written, mut merged) = (0, 0);
    let mut flush = |c: &mut Coalescer, bufs: &mut [Vec<u8>]| {
        let failed = c.flush(bufs, |parts| {
            let parts: Vec<&[u8]> = parts.collect();
            let (hdr, pkts) = if vnet {
                parts
                    .split_first()
                    .map(|(h, p)| (*h, p))
                    .unwrap_or((&[], &[]))
            } else {
                (&[][..], &parts[..])
            };
            written += pkts.len();
            merged += pkts.len().saturating_sub(1);
            if pkts.len() > 1 {
                merged_invariants(hdr, &pkts.concat());
            } else {
                assert!(hdr.iter().all(|&b| b == 0));
            }
            true
        });
        assert_eq!(failed, 0);
    };
    for i in 0..bufs.len() {
        if c.full() {
            flush(&mut c, bufs);
        }
        let range = 0..bufs[i].len();
        c.push(bufs, Part { buf: i, range });
    }
    flush(&mut c, bufs);
    assert_eq!(written, bufs.len(), "every packet written exactly once");
    merged
}

fn merged_invariants(hdr: &[u8], pkt: &[u8]) {
    let h = |i: usize| u16::from_ne_bytes([hdr[i], hdr[i + 1]]) as usize;
    let (hdr_len, gso_size, csum_start, csum_off) = (h(2), h(4), h(6), h(8));
    assert_eq!(hdr[0], 1, "NEEDS_CSUM");
    let v6 = pkt[0] >> 4 == 6;
    let proto = if v6 { pkt[6] } else { pkt[9] };
    let ip_len = if v6 {
        u16::from_be_bytes([pkt[4], pkt[5]]) as usize + 40
    } else {
        u16::from_be_bytes([pkt[2], pkt[3]]) as usize
    };
    assert_eq!(ip_len, pkt.len());
    assert_eq!(csum_start, if v6 { 40 } else { 20 });
    assert!(gso_size > 0 && hdr_len + gso_size < pkt.len());
    // The kernel completes CHECKSUM_PARTIAL: the sum from csum_start, complemented.
    let mut p = pkt.to_vec();
    let at = csum_start + csum_off;
    let c = !gro::fold(gro::sum(&p[csum_start..], 0));
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
    let addrs = if v6 { &p[8..40] } else { &p[12..20] };
    let l4 = (p.len() - csum_start) as u64;
    let s = gro::sum(&p[csum_start..], gro::sum(addrs, proto as u64 + l4));
    assert_eq!(gro::fold(s), 0xffff, "completed checksum verifies");
}

/// Runs one input through the outer receive demultiplexing; returns how many datagrams
/// got each outcome, by carrier.
pub fn outer_demux(data: &[u8]) -> BTreeMap<String, usize> {
    let mut inp = Input(data);
    let table: Vec<u32> = (0..inp.u8() % 8)
        .map(|_| u32::from_be_bytes(std::array::from_fn(|_| inp.u8())))
        .collect();
    let mut tally = BTreeMap::new();
    while !inp.0.is_empty() {
        let carrier = match inp.u8() % 3 {
            0 => Carrier::Udp,
            1 => Carrier::RawV4,
            _ => Carrier::RawV6,
        };
        let seg = usize::from(inp.u16());
        let recv = inp.record();
        // Only the NAT-T sockets receive with UDP GRO.
        let seg = if carrier == Carrier::Udp { seg } else { 0 };
        let mut covered = 0;
        let mut n = 0;
        for r in outer::segments(recv.len(), seg) {
            // In order, no gap, no overlap; all but the last exactly `seg` octets.
            assert_eq!(r.start, covered, "segments of {} by {seg}", recv.len());
            assert!(r.end <= recv.len());
            if seg == 0 {
                assert_eq!(r, 0..recv.len());
            } else {
                assert!(r.len() <= seg);
                assert!(r.end == recv.len() || r.len() == seg);
            }
            assert!(!r.is_empty() || recv.is_empty());
            covered = r.end;
            n += 1;
            let outcome = datagram(carrier, &recv[r], &table);
            let key = format!(
                "{carrier:?} {}",
                outcome.map_or_else(|e| format!("{e:?}"), String::from)
            );
            *tally.entry(key).or_insert(0) += 1;
        }
        assert_eq!(covered, recv.len(), "every octet in a segment");
        let expect = if seg == 0 || recv.is_empty() {
            1
        } else {
            recv.len().div_ceil(seg)
        };
        assert_eq!(n, expect);
    }
    tally
}

/// One datagram through [`outer::classify_outer`] against an SA table of `table`'s SPIs
/// (the SA is the index of the SPI's first entry), with the invariants of each outcome.
fn datagram(carrier: Carrier, b: &[u8], table: &[u32]) -> Result<&'static str, OuterDrop> {
    let mut asked = Vec::new();
    let r = outer::classify_outer(carrier, b, |spi| {
        asked.push(spi);
        table.iter().position(|&s| s == spi)
    });
    // Where ESP must start, when the carrier says so: no IPv4 header length below five
    // words, none past the datagram (RFC 791 3.1).
    let esp_at = match carrier {
        Carrier::Udp | Carrier::RawV6 => Some(0),
        Carrier::RawV4 => b
            .first()
            .map(|v| usize::from(v & 0x0f) * 4)
            .filter(|&ihl| ihl >= 20 && ihl <= b.len()),
    };
    let spi_at = |at: usize| {
        b.get(at..at + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    };
    let marker = carrier == Carrier::Udp && b.len() >= 4 && b[..4] == [0; 4];
    let keepalive = carrier == Carrier::Udp && b == [0xff];
    // A keepalive is exactly one 0xFF on the NAT-T port (RFC 3948 2.3), IKE exactly what
    // starts with the non-ESP marker there (2.2): nothing else, and nothing looked up.
    assert_eq!(r == Ok(Outer::Keepalive), keepalive);
    assert_eq!(matches!(r, Ok(Outer::Ike(_))), marker);
    if keepalive || marker || !matches!(r, Ok(Outer::Esp { .. }) | Err(OuterDrop::UnknownSpi)) {
        assert!(
            asked.is_empty(),
            "{carrier:?} {b:02x?}: looked up {asked:x?}"
        );
    }
    match r {
        Ok(Outer::Keepalive) => Ok("keepalive"),
        Ok(Outer::Ike(m)) => {
            // The whole datagram, marker included, not a copy.
            assert!(std::ptr::eq(m, b));
            Ok("ike")
        }
        Ok(Outer::Esp { start, spi, sa }) => {
            // ESP starts at the SPI that was looked up, and the one SA found for it.
            assert_eq!(Some(start), esp_at);
            assert_eq!(asked, [spi]);
            assert_eq!(spi_at(start), Some(spi));
            assert_eq!(table.iter().position(|&s| s == spi), Some(sa));
            assert!(b.len() - start >= ESP_HEADER_LEN);
            // RFC 3948 2.1: on UDP an SPI is never zero (that is the marker).
            assert!(carrier != Carrier::Udp || spi != 0);
            Ok("esp")
        }
        Err(e) => {
            assert!(matches!(
                e.esp_drop(),
                EspDrop::Truncated | EspDrop::UnknownSpi
            ));
            match e {
                OuterDrop::Empty => assert!(b.is_empty()),
                OuterDrop::BadIhl => {
                    assert_eq!(carrier, Carrier::RawV4);
                    assert!(b[0] & 0x0f < 5);
                }
                OuterDrop::CutIpHeader => {
                    assert_eq!(carrier, Carrier::RawV4);
                    assert!(b[0] & 0x0f >= 5 && b.len() < usize::from(b[0] & 0x0f) * 4);
                }
                OuterDrop::Runt => {
                    let at = esp_at.unwrap_or_else(|| panic!("runt without ESP: {b:02x?}"));
                    assert!(!b.is_empty() && b.len() - at < ESP_HEADER_LEN);
                }
                OuterDrop::UnknownSpi => {
                    let at = esp_at.unwrap_or_else(|| panic!("SPI without ESP: {b:02x?}"));
                    assert!(b.len() - at >= ESP_HEADER_LEN);
                    assert_eq!(asked.len(), 1);
                    assert_eq!(spi_at(at), Some(asked[0]));
                    assert!(!table.contains(&asked[0]));
                }
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::seeds;

    /// Deterministic mutations of the seeds (byte flips, cuts, inserted bytes), as a
    /// short stand-in for the fuzzer that runs in every `cargo test`.
    fn smoke(
        seeds: &std::collections::BTreeMap<String, Vec<u8>>,
        rounds: u32,
        target: impl Fn(&[u8]) -> usize,
    ) {
        use rand::{Rng, SeedableRng};
        let seeds: Vec<&Vec<u8>> = seeds.values().collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4303);
        for _ in 0..rounds {
            let mut m = seeds[rng.gen_range(0..seeds.len())].clone();
            for _ in 0..rng.gen_range(1..=4) {
                let pos = rng.gen_range(0..=m.len());
                match (rng.gen_range(0..4), pos < m.len()) {
                    (0, true) => m[pos] = rng.gen(),
                    (1, true) => m[pos] ^= 1 << rng.gen_range(0..8),
                    (2, _) => m.truncate(pos),
                    _ => m.insert(pos, rng.gen()),
                }
            }
            target(&m);
        }
    }

    /// The seeds cover every transform with 32-bit and extended sequence numbers, and
    /// get packets past authentication; then a smoke run of mutations.
    #[test]
    fn esp_inbound_fuzz_target_on_seeds_and_mutations() {
        let seeds = seeds("esp_inbound");
        let mut suites = BTreeSet::new();
        for (name, s) in &seeds {
            assert!(esp_inbound(s) > 0, "seed {name} accepts nothing");
            suites.insert((s[0] & 0x7f) % 6 + (s[0] & 0x80));
        }
        assert_eq!(suites.len(), 12, "every transform, 32-bit and ESN");
        smoke(&seeds, 20_000, esp_inbound);
    }

    /// Inputs the fuzzer once failed on (harness errors, kept so they stay fixed).
    #[test]
    fn esp_inbound_past_failures() {
        // A 32-bit SA sealing sequence number 2^56 raw: the receiver sees 0, TooOld.
        let seq_2_56: &[u8] = &[
            4, 4, 7, 0, 1, 0, 37, 0, 0, 1, 2, 0, 1, 64, 0, 69, 0, 0, 80, 0, 1, 0, 0, 64, 6, 101,
            118, 10, 100, 0, 5, 10, 200, 0, 1, 156, 64, 184, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 5, 32, 13, 184, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 102, 35, 0, 12, 13, 14, 15,
            16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
        ];
        esp_inbound(seq_2_56);
    }

    /// The seeds are TCP, UDP, ICMP and fragments over IPv4 and IPv6 that the coalescer
    /// merges; then a smoke run of mutations.
    #[test]
    fn inner_packet_fuzz_target_on_seeds_and_mutations() {
        let seeds = seeds("inner_packet");
        // Four TCP segments of one flow (the last shorter, with PSH) become one write;
        // so do three UDP datagrams of one flow where the TUN device takes USO.
        let now = Instant::now();
        assert_eq!(inner_packet(&seeds["tcp4-gro"], now), 3);
        assert_eq!(inner_packet(&seeds["udp6-uso"], now), 2);
        for s in seeds.values() {
            inner_packet(s, now);
        }
        smoke(&seeds, 20_000, |m| inner_packet(m, now));
    }

    /// The seeds reach every outcome on every carrier: keepalive, IKE, ESP and each
    /// refusal on the NAT-T port, ESP and each refusal behind raw IPv4 and IPv6 sockets,
    /// a GRO receive split into its datagrams; then a smoke run of mutations.
    #[test]
    fn outer_demux_fuzz_target_on_seeds_and_mutations() {
        let seeds = seeds("outer_demux");
        let mut reached = BTreeSet::new();
        for s in seeds.values() {
            reached.extend(outer_demux(s).into_keys());
        }
        let want: BTreeSet<String> = [
            "Udp keepalive",
            "Udp ike",
            "Udp esp",
            "Udp UnknownSpi",
            "Udp Runt",
            "Udp Empty",
            "RawV4 esp",
            "RawV4 UnknownSpi",
            "RawV4 Runt",
            "RawV4 BadIhl",
            "RawV4 CutIpHeader",
            "RawV4 Empty",
            "RawV6 esp",
            "RawV6 UnknownSpi",
            "RawV6 Runt",
            "RawV6 Empty",
        ]
        .map(String::from)
        .into();
        assert_eq!(reached, want);
        // Three GRO receives: 3 ESP segments and a keepalive last, 2 ESP (the last
        // shorter), one datagram shorter than its segment size.
        let gro = outer_demux(&seeds["udp-gro"]);
        assert_eq!(gro.get("Udp esp"), Some(&6), "{gro:?}");
        assert_eq!(gro.get("Udp keepalive"), Some(&1), "{gro:?}");
        smoke(&seeds, 20_000, |m| outer_demux(m).len());
    }
}
