//! Anti-replay window (RFC 4303 3.4.3 and Appendix A), kept as a ring of 64-bit words
//! in the manner of RFC 6479 so that sliding costs one word clear per 64 sequence numbers.
use super::EspDrop;

/// Default window size in packets (RFC 4303 3.4.3 asks for at least 32; fast links
/// with reordering across cores want far more).
pub const DEFAULT_REPLAY_WINDOW: u32 = 1024;
/// Largest configurable window.
pub const MAX_REPLAY_WINDOW: u32 = 1 << 20;

/// The receive window of one inbound SA. `top` is the highest authenticated sequence
/// number (64-bit, also for 32-bit SAs); 0 means nothing received yet.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    size: u64,
    top: u64,
    bitmap: Box<[u64]>,
    mask: u64,
}

impl ReplayWindow {
    /// A window of `size` packets (clamped to 32 ..= [`MAX_REPLAY_WINDOW`]).
    pub fn new(size: u32) -> Self {
        let size = size.clamp(32, MAX_REPLAY_WINDOW) as u64;
        // One spare word so the word holding `top` never aliases the window's bottom.
        let words = (size.div_ceil(64) + 1).next_power_of_two();
        ReplayWindow {
            size,
            top: 0,
            bitmap: vec![0u64; words as usize].into_boxed_slice(),
            mask: words - 1,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Highest sequence number accepted so far.
    pub fn top(&self) -> u64 {
        self.top
    }

    /// Reconstructs the full 64-bit sequence number of an ESN SA from the 32 low-order
    /// bits on the wire (RFC 4303 Appendix A2.2). `None` when the packet would lie below
    /// sequence number zero.
    pub fn infer_esn(&self, seq_lo: u32) -> Option<u64> {
        let w = self.size;
        let th = self.top >> 32;
        let tl = self.top & 0xffff_ffff;
        let seql = seq_lo as u64;
        let seqh = if tl >= w - 1 {
            // Case A: the window lies within one 2^32 subspace.
            if seql >= tl - (w - 1) {
                th
            } else {
                th + 1
            }
        } else {
            // Case B: the window spans two subspaces.
            let bottom = (tl + (1 << 32) - (w - 1)) & 0xffff_ffff;
            if seql >= bottom {
                th.checked_sub(1)?
            } else {
                th
            }
        };
        if seqh > 0xffff_ffff {
            return None;
        }
        Some(seqh << 32 | seql)
    }

    /// Cheap pre-check before ICV verification: is `seq` new and inside the window?
    /// The window is not changed (RFC 4303 3.4.3: update only after the ICV passed).
    pub fn check(&self, seq: u64) -> Result<(), EspDrop> {
        if seq == 0 {
            // Sequence number 0 is never sent (RFC 4303 3.3.3).
            return Err(EspDrop::TooOld);
        }
        if seq > self.top {
            return Ok(());
        }
        if self.top - seq >= self.size {
            return Err(EspDrop::TooOld);
        }
        if self.bitmap[self.word(seq)] & bit(seq) != 0 {
            return Err(EspDrop::Replayed);
        }
        Ok(())
    }

    /// Marks `seq` received (after its ICV was verified), sliding the window forward if
    /// it is the new highest. Rechecks, since another packet with the same number may
    /// have been accepted between [`check`](Self::check) and here.
    pub fn update(&mut self, seq: u64) -> Result<(), EspDrop> {
        self.check(seq)?;
        if seq > self.top {
            let old_word = self.top >> 6;
            let new_word = seq >> 6;
            let advance = new_word - old_word;
            if advance > self.mask {
                self.bitmap.fill(0);
            } else {
                for w in old_word + 1..=new_word {
                    self.bitmap[(w & self.mask) as usize] = 0;
                }
            }
            self.top = seq;
        }
        let i = self.word(seq);
        self.bitmap[i] |= bit(seq);
        Ok(())
    }

    fn word(&self, seq: u64) -> usize {
        ((seq >> 6) & self.mask) as usize
    }
}

fn bit(seq: u64) -> u64 {
    1u64 << (seq & 63)
}
