//! Non-initial fragments that arrive before their initial fragment (RFC 4301 7.4).
//!
//! Stateful fragment checking ([`super::FragmentTable`]) lets a non-initial fragment pass
//! only once the initial fragment of its datagram passed the SA's selectors. Inner
//! fragments can be reordered on the way (and a sender may emit the last first), so a
//! non-initial fragment refused only for want of its initial fragment is held for a short
//! while instead of dropped: when the initial fragment passes, the held fragments of its
//! datagram are handed back ([`EarlyFragments::release`]) to be checked again and go on
//! the SA their initial fragment chose. A fragment not released within
//! [`EARLY_FRAGMENT_LIFETIME`] is dropped as [`EspDrop::FragmentExpired`].
//!
//! Both bounds are explicit: a fixed number of slots, each of a fixed size, allocated once
//! (slots x slot size octets, never more), and the hold time. When every slot is taken, the
//! fragment held longest makes room for the newest (also `FragmentExpired`), so a flood of
//! orphan fragments can only churn the hold, never grow it. Good traffic pays one
//! emptiness test per initial fragment while nothing is held. The clock is the caller's.
use std::time::{Duration, Instant};

use super::frag::Key;
use super::selectors::flow_of;
use super::EspDrop;

/// Default number of early fragments a worker holds.
pub const EARLY_FRAGMENT_SLOTS: usize = 64;
/// How long an early fragment waits for its initial fragment. Reordering on a path is a
/// matter of microseconds to a few milliseconds; an initial fragment that is lost is
/// never coming, so the slot is soon given back.
pub const EARLY_FRAGMENT_LIFETIME: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy)]
struct Held {
    key: Key,
    len: usize,
    /// `None`: free.
    expires: Option<Instant>,
    /// Arrival order, for eviction.
    stamp: u64,
}

/// The datagram whose held fragments an initial fragment releases
/// ([`EarlyFragments::waiting`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram(Key);

/// Early non-initial fragments, bounded in number, size and time.
pub struct EarlyFragments {
    slots: Box<[Held]>,
    data: Box<[u8]>,
    slot_len: usize,
    lifetime: Duration,
    live: usize,
    /// The earliest expiry among held fragments.
    next_expiry: Option<Instant>,
    arrivals: u64,
}

impl EarlyFragments {
    /// Room for `slots` fragments of at most `slot_len` octets each (both allocated now);
    /// a longer fragment is never held.
    pub fn new(slots: usize, slot_len: usize) -> Self {
        let free = Held {
            key: Key::default(),
            len: 0,
            expires: None,
            stamp: 0,
        };
        EarlyFragments {
            slots: vec![free; slots].into_boxed_slice(),
            data: vec![0u8; slots * slot_len].into_boxed_slice(),
            slot_len,
            lifetime: EARLY_FRAGMENT_LIFETIME,
            live: 0,
            next_expiry: None,
            arrivals: 0,
        }
    }

    /// How long fragments are held (tests, configuration).
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Nothing held: the common case, one comparison.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Fragments held now.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Octets of fragment storage, fixed at creation.
    pub fn capacity_octets(&self) -> usize {
        self.data.len()
    }

    /// Holds a copy of `packet`, a non-initial fragment that arrived on SA `sa` (any number
    /// naming the SA and direction; outbound, where the SA is chosen by the initial
    /// fragment, a number no SA uses, e.g. 0, the reserved SPI) and was refused only for
    /// want of its initial fragment. Returns how many held fragments were dropped to make
    /// room (expired ones, or the one held longest when all slots are taken), to count as
    /// [`EspDrop::FragmentExpired`]. Refused (`NonInitialFragment`, as before it was
    /// held): not a non-initial fragment, longer than a slot, or no slots at all.
    pub fn hold(&mut self, packet: &[u8], sa: u32, now: Instant) -> Result<usize, EspDrop> {
        let key = match flow_of(packet) {
            Some(f) => match f.fragment {
                Some(frag) if frag.offset > 0 && packet.len() <= self.slot_len => {
                    Key::of(&f, frag.id, sa)
                }
                _ => return Err(EspDrop::NonInitialFragment),
            },
            None => return Err(EspDrop::NonInitialFragment),
        };
        let mut dropped = self.expire(now);
        let Some(i) = self
            .slots
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| (s.expires.is_some(), s.stamp))
            .map(|(i, _)| i)
        else {
            return Err(EspDrop::NonInitialFragment);
        };
        if self.slots[i].expires.is_some() {
            // Every slot taken: the oldest goes.
            dropped += 1;
            self.live -= 1;
        }
        self.arrivals += 1;
        let expires = now + self.lifetime;
        self.slots[i] = Held {
            key,
            len: packet.len(),
            expires: Some(expires),
            stamp: self.arrivals,
        };
        self.data[i * self.slot_len..i * self.slot_len + packet.len()].copy_from_slice(packet);
        self.live += 1;
        self.next_expiry = Some(self.next_expiry.map_or(expires, |e| e.min(expires)));
        Ok(dropped)
    }

    /// Frees the fragments held past their time at `now`; returns how many, to count as
    /// [`EspDrop::FragmentExpired`]. Costs nothing while none is due (callers may ask on
    /// every batch).
    pub fn expire(&mut self, now: Instant) -> usize {
        match self.next_expiry {
            Some(e) if e <= now => {}
            _ => return 0,
        }
        let mut n = 0;
        let mut next: Option<Instant> = None;
        for s in self.slots.iter_mut() {
            match s.expires {
                Some(e) if e <= now => {
                    s.expires = None;
                    n += 1;
                }
                Some(e) => next = Some(next.map_or(e, |x| x.min(e))),
                None => {}
            }
        }
        self.live -= n;
        self.next_expiry = next;
        n
    }

    /// Whether fragments of the datagram of `initial`, an initial fragment that passed on
    /// SA `sa` (the number given to [`hold`](Self::hold)), are held. Call before the
    /// packet is encrypted in place.
    pub fn waiting(&self, initial: &[u8], sa: u32) -> Option<Datagram> {
        if self.live == 0 {
            return None;
        }
        let f = flow_of(initial)?;
        let frag = f.fragment.filter(|fr| fr.offset == 0)?;
        let key = Key::of(&f, frag.id, sa);
        self.slots
            .iter()
            .any(|s| s.expires.is_some() && s.key == key)
            .then_some(Datagram(key))
    }

    /// Hands every held fragment of `datagram` to `each` (in arrival order) and frees its
    /// slot; returns how many. The caller checks each again (its initial fragment is now
    /// known) before sending it on.
    pub fn release(&mut self, datagram: Datagram, mut each: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while let Some(i) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.expires.is_some() && s.key == datagram.0)
            .min_by_key(|(_, s)| s.stamp)
            .map(|(i, _)| i)
        {
            self.slots[i].expires = None;
            self.live -= 1;
            n += 1;
            let at = i * self.slot_len;
            each(&self.data[at..at + self.slots[i].len]);
        }
        if self.live == 0 {
            self.next_expiry = None;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::esp::tests::fragments::{sel4, v4};
    use crate::esp::{FragmentTable, NextHeader};

    /// A UDP header to port 53, then payload up to `n` octets.
    fn udp53(n: usize) -> Vec<u8> {
        let mut v = vec![0x9c, 0x40, 0, 53];
        v.resize(n, 0xab);
        v
    }

    /// The data plane's inbound path in miniature: a refused non-initial fragment is held;
    /// an initial fragment that passes releases its datagram's held fragments, each
    /// checked again. Returns what was delivered, in order.
    struct Path {
        table: FragmentTable,
        early: EarlyFragments,
        delivered: Vec<Vec<u8>>,
        expired: usize,
    }

    impl Path {
        fn new(early: EarlyFragments) -> Self {
            Path {
                table: FragmentTable::new(64, 3),
                early,
                delivered: Vec::new(),
                expired: 0,
            }
        }

        fn arrive(&mut self, p: &[u8], sa: u32, now: Instant) -> Result<(), EspDrop> {
            let (peer, inside) = sel4();
            self.expired += self.early.expire(now);
            match self
                .table
                .check_inbound(p, NextHeader::Ipv4, &peer, &inside, sa, || now)
            {
                Err(EspDrop::NonInitialFragment) => {
                    self.expired += self.early.hold(p, sa, now)?;
                    Ok(())
                }
                Err(d) => Err(d),
                Ok(()) => {
                    self.delivered.push(p.to_vec());
                    if let Some(d) = self.early.waiting(p, sa) {
                        let (table, delivered) = (&mut self.table, &mut self.delivered);
                        self.early.release(d, |f| {
                            let v = table.check_inbound(
                                f,
                                NextHeader::Ipv4,
                                &peer,
                                &inside,
                                sa,
                                || now,
                            );
                            assert_eq!(v, Ok(()));
                            delivered.push(f.to_vec());
                        });
                    }
                    Ok(())
                }
            }
        }
    }

    #[test]
    fn fragments_before_their_initial_fragment_are_released_by_it() {
        let mut path = Path::new(EarlyFragments::new(8, 1500));
        let now = Instant::now();
        let first = v4(7, 0, true, &udp53(1480));
        let mid = v4(7, 1480, true, &[1; 1480]);
        let last = v4(7, 2960, false, &[2; 100]);
        // Reverse order: the last two wait, the first lets all three through.
        assert_eq!(path.arrive(&last, 1, now), Ok(()));
        assert_eq!(path.arrive(&mid, 1, now), Ok(()));
        assert!(path.delivered.is_empty());
        assert_eq!(path.early.len(), 2);
        assert_eq!(path.arrive(&first, 1, now), Ok(()));
        assert_eq!(path.delivered, [first.clone(), last.clone(), mid.clone()]);
        assert!(path.early.is_empty());
        // A held fragment of another SA is another datagram: it stays held.
        assert_eq!(path.arrive(&v4(8, 1480, false, &[3; 8]), 2, now), Ok(()));
        assert_eq!(path.arrive(&v4(8, 0, true, &udp53(1480)), 1, now), Ok(()));
        assert_eq!(path.early.len(), 1);
        assert_eq!(path.expired, 0);
    }

    #[test]
    fn a_refused_initial_fragment_releases_nothing_and_its_fragments_expire() {
        let mut path = Path::new(EarlyFragments::new(8, 1500));
        let now = Instant::now();
        assert_eq!(path.arrive(&v4(9, 1480, false, &[1; 80]), 1, now), Ok(()));
        // The initial fragment names port 54: refused, the held fragment stays held...
        let mut wrong = udp53(1480);
        wrong[3] = 54;
        assert_eq!(
            path.arrive(&v4(9, 0, true, &wrong), 1, now),
            Err(EspDrop::TsMismatch)
        );
        assert!(path.delivered.is_empty());
        assert_eq!(path.early.len(), 1);
        // ...until its time is up: then it is dropped and counted, never delivered.
        let soon = now + EARLY_FRAGMENT_LIFETIME - Duration::from_millis(1);
        assert_eq!(path.early.expire(soon), 0);
        let later = now + EARLY_FRAGMENT_LIFETIME;
        assert_eq!(path.arrive(&v4(10, 0, false, &udp53(64)), 1, later), Ok(()));
        assert_eq!(path.expired, 1);
        assert!(path.early.is_empty());
        // A late initial fragment finds nothing to release.
        assert_eq!(path.arrive(&v4(9, 0, true, &udp53(1480)), 1, later), Ok(()));
        assert_eq!(path.delivered.len(), 2);
    }

    #[test]
    fn the_hold_is_bounded_in_slots_octets_and_time_under_a_flood() {
        let early = EarlyFragments::new(16, 1500).with_lifetime(Duration::from_millis(100));
        let octets = early.capacity_octets();
        assert_eq!(octets, 16 * 1500);
        let mut path = Path::new(early);
        let t0 = Instant::now();
        // 10 000 orphan fragments (no initial fragment ever comes), 10 per millisecond.
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_micros(100 * i as u64);
            let p = v4(i as u16, 1480, false, &[0; 1000]);
            assert_eq!(path.arrive(&p, 1, now), Ok(()));
            assert!(path.early.len() <= 16);
        }
        assert_eq!(path.early.capacity_octets(), octets);
        // Every orphan but the 16 still held was dropped and counted.
        assert_eq!(path.expired, 10_000 - 16);
        assert!(path.delivered.is_empty());
        // A good datagram reordered in the middle of the flood still arrives whole: its
        // fragment is among the newest when its initial fragment follows.
        let now = t0 + Duration::from_secs(1);
        let last = v4(60_000, 1480, false, &[5; 200]);
        assert_eq!(path.arrive(&last, 1, now), Ok(()));
        assert_eq!(
            path.arrive(&v4(60_000, 0, true, &udp53(1480)), 1, now),
            Ok(())
        );
        assert_eq!(path.delivered.len(), 2);
        assert_eq!(path.delivered[1], last);
        // Too long for a slot, or no slots at all: refused as before.
        let mut small = EarlyFragments::new(4, 100);
        let now = Instant::now();
        assert_eq!(
            small.hold(&v4(1, 1480, false, &[0; 100]), 1, now),
            Err(EspDrop::NonInitialFragment)
        );
        let mut none = EarlyFragments::new(0, 1500);
        assert_eq!(
            none.hold(&v4(1, 1480, false, &[0; 100]), 1, now),
            Err(EspDrop::NonInitialFragment)
        );
        // Whole packets and initial fragments are never held; garbage never panics.
        assert_eq!(
            small.hold(&v4(1, 0, true, &[0; 16]), 1, now),
            Err(EspDrop::NonInitialFragment)
        );
        let f = v4(1, 1480, false, &[0; 40]);
        for n in 0..f.len() {
            let _ = small.hold(&f[..n], 1, now);
            let _ = small.waiting(&f[..n], 1);
        }
    }
}
