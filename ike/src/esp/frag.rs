//! Stateful fragment checking (RFC 4301 7.4).
//!
//! A non-initial fragment carries no ports, so it cannot be checked against selectors
//! that name ports (RFC 4301 7). The initial fragment can: when it passes, its identity
//! (source, destination, protocol, Identification, SA) is remembered for a while, and
//! the later fragments of that datagram pass on the strength of it. A non-initial
//! fragment whose initial fragment was not seen (or was refused) stays refused as
//! [`EspDrop::NonInitialFragment`].
//!
//! Fragments that no sender produces are refused as [`EspDrop::BadFragment`] whatever
//! the selectors: zero-length fragments, a More Fragments fragment whose length is not a
//! multiple of 8 (RFC 791 3.2, RFC 8200 4.5), data reaching past the 65535-octet limit
//! of the reassembled datagram ("ping of death"), a second Fragment header, an initial
//! fragment too short to hold the headers the selectors read (RFC 1858 3.2 tiny
//! fragments, RFC 7112), and a non-initial fragment that would overwrite those headers
//! (RFC 1858 3.3, RFC 5722 overlap). IPv6 atomic fragments (offset 0, no M) are whole
//! packets (RFC 6946) and never enter the table.
//!
//! The table is a fixed array of slots made once (no allocation per packet), 4-way set
//! associative on a seeded hash: a full set evicts its oldest entry, so a flood of
//! fragments can push out entries but never grow memory. Entries expire after
//! [`FRAGMENT_LIFETIME`]. The clock is the caller's: `now` is only asked for when a
//! packet is a fragment. One table per worker thread; no locks.
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::selectors::{check_inbound_flow, check_outbound_flow, flow_of, Flow};
use super::{EspDrop, NextHeader};
use crate::event::TrafficSelector;

/// Default number of slots of a [`FragmentTable`].
pub const FRAGMENT_SLOTS: usize = 4096;
/// How long an initial fragment's verdict is remembered. Fragments of one datagram leave
/// a sender back to back; short enough that a reused IPv4 Identification rarely meets a
/// stale entry (the kernel's own reassembly gives up after 30 s).
pub const FRAGMENT_LIFETIME: Duration = Duration::from_secs(10);

/// Slots per set.
const WAYS: usize = 4;

/// One datagram's fragments on one SA: what the table (and [`super::EarlyFragments`])
/// is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Key {
    src: [u8; 16],
    dst: [u8; 16],
    id: u32,
    sa: u32,
    protocol: u8,
    v6: bool,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: Key,
    /// See [`super::Fragment::header_end`].
    header_end: u32,
    /// `None`: empty.
    expires: Option<Instant>,
    /// Insertion order: among entries expiring at the same instant the oldest goes first.
    stamp: u64,
}

/// Remembered verdicts of initial fragments (RFC 4301 7.4), bounded.
pub struct FragmentTable {
    slots: Box<[Slot]>,
    /// Number of sets minus one (a power of two).
    mask: usize,
    seed: u64,
    lifetime: Duration,
    inserted: u64,
}

fn octets(ip: &IpAddr) -> ([u8; 16], bool) {
    match ip {
        IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), false),
        IpAddr::V6(a) => (a.octets(), true),
    }
}

impl Key {
    /// The datagram of the fragment `f` with Identification `id`, on SA `sa`.
    pub(super) fn of(f: &Flow, id: u32, sa: u32) -> Key {
        let (src, v6) = octets(&f.src);
        Key {
            src,
            dst: octets(&f.dst).0,
            id,
            sa,
            protocol: f.protocol,
            v6,
        }
    }
}

impl FragmentTable {
    /// A table of about `slots` entries (rounded up to a power of two, at least one set);
    /// `seed` keys the hash so that colliding keys cannot be chosen from outside.
    pub fn new(slots: usize, seed: u64) -> Self {
        let sets = slots.div_ceil(WAYS).max(1).next_power_of_two();
        let empty = Slot {
            key: Key {
                src: [0; 16],
                dst: [0; 16],
                id: 0,
                sa: 0,
                protocol: 0,
                v6: false,
            },
            header_end: 0,
            expires: None,
            stamp: 0,
        };
        FragmentTable {
            slots: vec![empty; sets * WAYS].into_boxed_slice(),
            mask: sets - 1,
            seed,
            lifetime: FRAGMENT_LIFETIME,
            inserted: 0,
        }
    }

    /// How long entries live (tests).
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Entries not yet expired at `now`.
    pub fn live(&self, now: Instant) -> usize {
        self.slots
            .iter()
            .filter(|s| s.expires.is_some_and(|e| e > now))
            .count()
    }

    fn set_of(&self, k: &Key) -> std::ops::Range<usize> {
        // A keyed multiply-xorshift over the fields (not cryptographic: the seed and the
        // bounded sets are what keep a flood from targeting one datagram).
        let mut h = self.seed ^ 0x9e37_79b9_7f4a_7c15;
        let mut mix = |x: u64| {
            h = (h ^ x).wrapping_mul(0xff51_afd7_ed55_8ccd);
            h ^= h >> 29;
        };
        for c in k.src.chunks_exact(8).chain(k.dst.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            mix(u64::from_le_bytes(b));
        }
        mix(((k.id as u64) << 32) | k.sa as u64);
        mix(((k.protocol as u64) << 1) | k.v6 as u64);
        let set = (h as usize) & self.mask;
        set * WAYS..set * WAYS + WAYS
    }

    fn remember(&mut self, key: Key, header_end: u32, now: Instant) {
        let set = self.set_of(&key);
        let slots = &mut self.slots[set];
        let expires = Some(now + self.lifetime);
        // The same datagram again (a retransmitted first fragment): refresh it.
        if let Some(s) = slots
            .iter_mut()
            .find(|s| s.key == key && s.expires.is_some_and(|e| e > now))
        {
            s.header_end = header_end;
            s.expires = expires;
            return;
        }
        // An empty or expired slot, else the one that expires first.
        self.inserted += 1;
        if let Some(victim) = slots
            .iter_mut()
            .min_by_key(|s| (s.expires.filter(|e| *e > now), s.stamp))
        {
            *victim = Slot {
                key,
                header_end,
                expires,
                stamp: self.inserted,
            };
        }
    }

    fn forget(&mut self, key: &Key) {
        let set = self.set_of(key);
        for s in self.slots[set].iter_mut().filter(|s| s.key == *key) {
            s.expires = None;
        }
    }

    fn lookup(&self, key: &Key, now: Instant) -> Option<u32> {
        self.slots[self.set_of(key)]
            .iter()
            .find(|s| s.key == *key && s.expires.is_some_and(|e| e > now))
            .map(|s| s.header_end)
    }

    /// Applies stateful fragment checking to `verdict`, the stateless selector check of
    /// `f` on the SA `sa` (any number naming the SA and direction, e.g. its SPI). A whole
    /// packet keeps its verdict. A fragment that cannot be legitimate is refused. An
    /// initial fragment keeps its verdict and is remembered when it passes (forgotten when
    /// it does not). A non-initial fragment refused only for want of ports passes when its
    /// initial fragment passed on the same SA. `now` is called for fragments only.
    pub fn check(
        &mut self,
        f: &Flow,
        sa: u32,
        verdict: Result<(), EspDrop>,
        now: impl FnOnce() -> Instant,
    ) -> Result<(), EspDrop> {
        let Some(frag) = f.fragment else {
            return verdict;
        };
        let initial = frag.offset == 0;
        if frag.nested
            || frag.len == 0
            || (frag.more && frag.len % 8 != 0)
            || frag.offset + frag.len > frag.limit
            || (initial && frag.len < frag.header_end)
        {
            return Err(EspDrop::BadFragment);
        }
        let key = Key::of(f, frag.id, sa);
        if initial {
            match verdict {
                Ok(()) => self.remember(key, frag.header_end, now()),
                Err(_) => self.forget(&key),
            }
            return verdict;
        }
        match verdict {
            Err(EspDrop::NonInitialFragment) => match self.lookup(&key, now()) {
                Some(end) if frag.offset < end => Err(EspDrop::BadFragment),
                Some(_) => Ok(()),
                None => Err(EspDrop::NonInitialFragment),
            },
            v => v,
        }
    }

    /// [`check_inner_selectors`](super::check_inner_selectors) with stateful fragment
    /// checking, for the inbound SA `sa`.
    pub fn check_inbound(
        &mut self,
        packet: &[u8],
        next_header: NextHeader,
        remote_ts: &[TrafficSelector],
        local_ts: &[TrafficSelector],
        sa: u32,
        now: impl FnOnce() -> Instant,
    ) -> Result<(), EspDrop> {
        let f = flow_of(packet).ok_or(EspDrop::TsMismatch)?;
        let v = check_inbound_flow(&f, next_header, remote_ts, local_ts);
        self.check(&f, sa, v, now)
    }

    /// [`check_outbound_selectors`](super::check_outbound_selectors) with stateful
    /// fragment checking, for the outbound SA `sa`.
    pub fn check_outbound(
        &mut self,
        packet: &[u8],
        local_ts: &[TrafficSelector],
        remote_ts: &[TrafficSelector],
        sa: u32,
        now: impl FnOnce() -> Instant,
    ) -> Result<(), EspDrop> {
        let f = flow_of(packet).ok_or(EspDrop::NoRoute)?;
        let v = check_outbound_flow(&f, local_ts, remote_ts);
        self.check(&f, sa, v, now)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use crate::esp::tests::fragments::{sel4, v4};
    use crate::esp::tests::ports::ts;

    /// A UDP header from port 40000 to `dport`, then `n - 8` octets of payload.
    fn udp(dport: u16, n: usize) -> Vec<u8> {
        let mut v = 40000u16.to_be_bytes().to_vec();
        v.extend_from_slice(&dport.to_be_bytes());
        v.resize(n, 0xab);
        v
    }

    /// IPv6 2001:db8::5 -> 2001:db8:1::1: `ext` headers (type, body), then UDP `l4`.
    fn v6(ext: &[(u8, Vec<u8>)], l4: &[u8]) -> Vec<u8> {
        crate::esp::tests::ports::v6(ext, 17, l4)
    }

    /// An IPv6 Fragment header.
    fn fh(id: u32, offset: u16, more: bool) -> (u8, Vec<u8>) {
        let mut h = vec![0u8; 8];
        h[2..4].copy_from_slice(&(offset | more as u16).to_be_bytes());
        h[4..8].copy_from_slice(&id.to_be_bytes());
        (44, h)
    }

    fn sel6() -> ([TrafficSelector; 1], [TrafficSelector; 1]) {
        (
            [ts("2001:db8::5", "2001:db8::5", 17, 0, 65535)],
            [ts("2001:db8:1::", "2001:db8:1::ffff", 17, 53, 53)],
        )
    }

    fn table() -> FragmentTable {
        FragmentTable::new(64, 7)
    }

    #[test]
    fn later_fragments_follow_the_verdict_of_their_initial_fragment() {
        let (peer, inside) = sel4();
        let mut t = table();
        let now = Instant::now();
        let first = v4(77, 0, true, &udp(53, 1480));
        let mid = v4(77, 1480, true, &[0xcd; 1480]);
        let last = v4(77, 2960, false, &[0xcd; 1040]);
        let chk = |t: &mut FragmentTable, p: &[u8]| {
            t.check_inbound(p, NextHeader::Ipv4, &peer, &inside, 1, || now)
        };
        // Without the first fragment, later ones cannot be checked: refused.
        assert_eq!(chk(&mut t, &mid), Err(EspDrop::NonInitialFragment));
        assert_eq!(chk(&mut t, &first), Ok(()));
        assert_eq!(chk(&mut t, &mid), Ok(()));
        assert_eq!(chk(&mut t, &last), Ok(()));
        // Duplicates and reordering within the datagram pass too.
        assert_eq!(chk(&mut t, &mid), Ok(()));
        // Another datagram (another Identification) has no verdict of its own yet.
        let other = v4(78, 1480, false, &[0xcd; 16]);
        assert_eq!(chk(&mut t, &other), Err(EspDrop::NonInitialFragment));
        // The same Identification on another SA is another datagram.
        assert_eq!(
            t.check_inbound(&mid, NextHeader::Ipv4, &peer, &inside, 2, || now),
            Err(EspDrop::NonInitialFragment)
        );
        // Expired: refused again.
        let later = now + FRAGMENT_LIFETIME + Duration::from_millis(1);
        assert_eq!(
            t.check_inbound(&mid, NextHeader::Ipv4, &peer, &inside, 1, || later),
            Err(EspDrop::NonInitialFragment)
        );
        // Whole packets never touch the table or the clock.
        let whole = v4(0, 0, false, &udp(53, 64));
        assert_eq!(
            t.check_inbound(&whole, NextHeader::Ipv4, &peer, &inside, 1, || {
                panic!("clock read for a whole packet")
            }),
            Ok(())
        );
    }

    #[test]
    fn a_refused_initial_fragment_lets_nothing_through_and_forgets_the_datagram() {
        let (peer, inside) = sel4();
        let mut t = table();
        let now = Instant::now();
        let chk = |t: &mut FragmentTable, p: &[u8]| {
            t.check_inbound(p, NextHeader::Ipv4, &peer, &inside, 1, || now)
        };
        let wrong_port = v4(9, 0, true, &udp(54, 1480));
        let mid = v4(9, 1480, false, &[0; 80]);
        assert_eq!(chk(&mut t, &wrong_port), Err(EspDrop::TsMismatch));
        assert_eq!(chk(&mut t, &mid), Err(EspDrop::NonInitialFragment));
        // A good first fragment, then a refused one with the same Identification (a
        // reused ID, or a forgery): the later fragments are refused again.
        assert_eq!(chk(&mut t, &v4(9, 0, true, &udp(53, 1480))), Ok(()));
        assert_eq!(chk(&mut t, &mid), Ok(()));
        assert_eq!(chk(&mut t, &wrong_port), Err(EspDrop::TsMismatch));
        assert_eq!(chk(&mut t, &mid), Err(EspDrop::NonInitialFragment));
        // Outside the addresses: a plain mismatch, whatever the table says.
        let mut spoof = mid.clone();
        spoof[15] = 6;
        assert_eq!(chk(&mut t, &spoof), Err(EspDrop::TsMismatch));
    }

    #[test]
    fn outbound_fragments_are_checked_the_same_way() {
        let (peer, inside) = sel4();
        let mut t = table();
        let now = Instant::now();
        // From the inside port 53 to the peer.
        let mut first = v4(5, 0, true, &udp(40000, 1480));
        first[20..22].copy_from_slice(&53u16.to_be_bytes());
        let mut last = v4(5, 1480, false, &[1; 100]);
        for p in [&mut first, &mut last] {
            p[12..16].copy_from_slice(&[10, 200, 3, 4]);
            p[16..20].copy_from_slice(&[10, 100, 0, 5]);
        }
        assert_eq!(
            t.check_outbound(&last, &inside, &peer, 3, || now),
            Err(EspDrop::NonInitialFragment)
        );
        assert_eq!(t.check_outbound(&first, &inside, &peer, 3, || now), Ok(()));
        assert_eq!(t.check_outbound(&last, &inside, &peer, 3, || now), Ok(()));
    }

    #[test]
    fn hostile_ipv4_fragments_are_refused() {
        let (peer, inside) = sel4();
        let mut t = table();
        let now = Instant::now();
        let mut chk = |p: &[u8]| t.check_inbound(p, NextHeader::Ipv4, &peer, &inside, 1, || now);
        assert_eq!(chk(&v4(1, 0, true, &udp(53, 1480))), Ok(()));
        // Zero-length, first or later.
        assert_eq!(chk(&v4(1, 1480, true, &[])), Err(EspDrop::BadFragment));
        assert_eq!(chk(&v4(1, 1480, false, &[])), Err(EspDrop::BadFragment));
        assert_eq!(chk(&v4(2, 0, true, &[])), Err(EspDrop::BadFragment));
        // More Fragments with a length that is not a multiple of 8.
        assert_eq!(chk(&v4(1, 1480, true, &[0; 13])), Err(EspDrop::BadFragment));
        // Reaching past 65535 octets (the last offset is 65528, x8 = 8191 units).
        assert_eq!(
            chk(&v4(1, 65528, false, &[0; 16])),
            Err(EspDrop::BadFragment)
        );
        assert_eq!(
            chk(&v4(1, 65000, false, &[0; 600])),
            Err(EspDrop::BadFragment)
        );
        // Right up to the limit is fine.
        assert_eq!(chk(&v4(1, 65504, false, &[0; 11])), Ok(()));
        // A total length beyond the packet is cut to what arrived; garbage never panics.
        let mut lying = v4(1, 1480, false, &[0; 8]);
        lying[2..4].copy_from_slice(&0xffffu16.to_be_bytes());
        assert_eq!(chk(&lying), Ok(()));
        let frag = v4(1, 1480, false, &[0; 40]);
        for n in 0..frag.len() {
            let _ = chk(&frag[..n]);
        }
    }

    #[test]
    fn ipv6_fragments_follow_their_initial_fragment() {
        let (peer, inside) = sel6();
        let mut t = table();
        let now = Instant::now();
        let mut chk = |p: &[u8]| t.check_inbound(p, NextHeader::Ipv6, &peer, &inside, 1, || now);
        let first = v6(&[fh(0x1234_5678, 0, true)], &udp(53, 1232));
        let last = v6(&[fh(0x1234_5678, 1232, false)], &[0; 300]);
        assert_eq!(chk(&last), Err(EspDrop::NonInitialFragment));
        assert_eq!(chk(&first), Ok(()));
        assert_eq!(chk(&last), Ok(()));
        // The 32-bit Identification is the key: a neighbour's ID is unknown.
        let other = v6(&[fh(0x1234_5679, 1232, false)], &[0; 300]);
        assert_eq!(chk(&other), Err(EspDrop::NonInitialFragment));
        // Hop-by-Hop in front of the Fragment header (unfragmentable part) is fine.
        let first_hbh = v6(&[(0, vec![0; 8]), fh(7, 0, true)], &udp(53, 1224));
        let last_hbh = v6(&[(0, vec![0; 8]), fh(7, 1224, false)], &[0; 8]);
        assert_eq!(chk(&first_hbh), Ok(()));
        assert_eq!(chk(&last_hbh), Ok(()));
    }

    #[test]
    fn ipv6_atomic_fragments_are_whole_packets() {
        let (peer, inside) = sel6();
        let mut t = table();
        let now = Instant::now();
        // Offset 0 without M (RFC 6946): checked by its ports, never remembered.
        let atomic = v6(&[fh(42, 0, false)], &udp(53, 64));
        assert_eq!(
            t.check_inbound(&atomic, NextHeader::Ipv6, &peer, &inside, 1, || {
                panic!("an atomic fragment is not a fragment")
            }),
            Ok(())
        );
        assert_eq!(t.live(now), 0);
        let later = v6(&[fh(42, 1232, false)], &[0; 64]);
        assert_eq!(
            t.check_inbound(&later, NextHeader::Ipv6, &peer, &inside, 1, || now),
            Err(EspDrop::NonInitialFragment)
        );
        let wrong = v6(&[fh(43, 0, false)], &udp(54, 64));
        assert_eq!(
            t.check_inbound(&wrong, NextHeader::Ipv6, &peer, &inside, 1, || now),
            Err(EspDrop::TsMismatch)
        );
    }

    #[test]
    fn hostile_ipv6_fragments_are_refused() {
        let (peer, inside) = sel6();
        let mut t = table();
        let now = Instant::now();
        let mut chk = |p: &[u8]| t.check_inbound(p, NextHeader::Ipv6, &peer, &inside, 1, || now);
        // A Fragment header chain: two in one packet.
        let chain = v6(&[fh(1, 0, true), fh(1, 1232, false)], &udp(53, 64));
        assert_eq!(chk(&chain), Err(EspDrop::BadFragment));
        let chain2 = v6(&[fh(1, 0, true), fh(2, 0, true)], &udp(53, 64));
        assert_eq!(chk(&chain2), Err(EspDrop::BadFragment));
        // Zero-length and past the 65535-octet payload limit.
        assert_eq!(chk(&v6(&[fh(3, 0, true)], &[])), Err(EspDrop::BadFragment));
        assert_eq!(
            chk(&v6(&[fh(3, 65528, false)], &[0; 16])),
            Err(EspDrop::BadFragment)
        );
        // The first fragment must hold the whole header chain and the UDP header
        // (RFC 7112): a Destination Options header (16 octets) after the Fragment header,
        // then only 0 octets of UDP.
        let mut dopt = vec![0u8; 16];
        dopt[1] = 1;
        let tiny = v6(&[fh(4, 0, true), (60, dopt.clone())], &[]);
        assert_eq!(chk(&tiny), Err(EspDrop::BadFragment));
        // With the chain whole, the datagram passes; a later fragment at offset 8 would
        // overwrite the checked UDP ports (which sit at 16..20): refused as overlapping.
        let first = v6(&[fh(5, 0, true), (60, dopt)], &udp(53, 1208));
        assert_eq!(chk(&first), Ok(()));
        let overlap = v6(&[fh(5, 8, false)], &[0xff; 64]);
        assert_eq!(chk(&overlap), Err(EspDrop::BadFragment));
        let fine = v6(&[fh(5, 1224, false)], &[0xff; 64]);
        assert_eq!(chk(&fine), Ok(()));
        // Truncated Fragment headers never panic.
        let f = v6(&[fh(6, 1232, false)], &[0; 16]);
        for n in 0..f.len() {
            let _ = chk(&f[..n]);
        }
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood() {
        let (peer, inside) = sel4();
        let mut t = FragmentTable::new(64, 99);
        let now = Instant::now();
        let base = t.slots.len();
        for id in 0..10_000u16 {
            let p = v4(id, 0, true, &udp(53, 1480));
            assert_eq!(
                t.check_inbound(&p, NextHeader::Ipv4, &peer, &inside, 1, || now),
                Ok(())
            );
        }
        assert_eq!(t.slots.len(), base);
        assert_eq!(t.live(now), base);
        // The newest datagram survives the flood (the oldest entry of a set goes first).
        let mid = v4(9_999, 1480, false, &[0; 8]);
        assert_eq!(
            t.check_inbound(&mid, NextHeader::Ipv4, &peer, &inside, 1, || now),
            Ok(())
        );
        // Expired entries are reused before live ones.
        let later = now + FRAGMENT_LIFETIME * 2;
        let p = v4(1, 0, true, &udp(53, 1480));
        assert_eq!(
            t.check_inbound(&p, NextHeader::Ipv4, &peer, &inside, 1, || later),
            Ok(())
        );
        assert_eq!(t.live(later), 1);
    }
}
