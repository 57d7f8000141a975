//! Hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014).
//!
//! A stamp is a `u64`: the top 48 bits are unix milliseconds, the low 16 bits a logical
//! counter. Stamps only grow, every received stamp pushes the clock forward, so a change made
//! after seeing another change always carries a larger stamp whatever the wall clocks say.

/// Number of low bits holding the logical counter.
pub const LOGICAL_BITS: u32 = 16;

/// A hybrid logical clock; wall-clock time is passed in (sans-IO).
#[derive(Debug, Clone, Default)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// A clock that will never issue a stamp at or below `floor` (e.g. the largest stamp
    /// found in the store after a restart).
    pub fn with_floor(floor: u64) -> Self {
        Self { last: floor }
    }

    /// The largest stamp issued or observed so far.
    pub fn last(&self) -> u64 {
        self.last
    }

    fn physical(wall_ms: u64) -> u64 {
        // Clamp to 48 bits so the shift never overflows.
        (wall_ms & ((1u64 << 48) - 1)) << LOGICAL_BITS
    }

    /// Issue a stamp for a local event at wall-clock `wall_ms` (unix ms).
    pub fn now(&mut self, wall_ms: u64) -> u64 {
        let pt = Self::physical(wall_ms);
        self.last = if pt > self.last {
            pt
        } else {
            self.last.saturating_add(1)
        };
        self.last
    }

    /// Merge a stamp received from another member.
    pub fn observe(&mut self, remote: u64, wall_ms: u64) {
        let pt = Self::physical(wall_ms);
        self.last = self.last.max(remote).max(pt);
    }
}

/// Unix milliseconds encoded in a stamp.
pub fn stamp_millis(stamp: u64) -> u64 {
    stamp >> LOGICAL_BITS
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stamps_grow_even_when_the_wall_clock_goes_back() {
        let mut c = Hlc::default();
        let a = c.now(10_000);
        let b = c.now(5_000);
        let d = c.now(5_000);
        assert!(a < b && b < d);
        assert_eq!(stamp_millis(d), 10_000);
    }

    #[test]
    fn a_change_after_seeing_a_remote_stamp_is_newer_despite_a_slow_clock() {
        let mut fast = Hlc::default();
        let mut slow = Hlc::default();
        let remote = fast.now(1_000_000);
        slow.observe(remote, 2_000);
        let local = slow.now(2_001);
        assert!(local > remote);
    }
}
