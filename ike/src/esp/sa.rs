//! One direction of a CHILD SA: sequence numbers, replay window, lifetimes, and the
//! ESP packet layout of RFC 4303 2 around a [`Transform`].
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::{EspDrop, NextHeader, ReplayWindow, Transform, ESP_HEADER_LEN};
use crate::error::Error;
use crate::event::{EspKeys, Spi};

/// Byte and packet limits of an SA (RFC 4301 4.4.2.1). Zero means no limit.
///
/// Crossing a soft limit asks for a rekey once ([`RekeyReason`]); crossing a hard limit
/// refuses further packets ([`EspDrop::LifetimeExpired`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetimes {
    pub soft_bytes: u64,
    pub soft_packets: u64,
    pub hard_bytes: u64,
    pub hard_packets: u64,
}

/// Why an SA asks to be rekeyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RekeyReason {
    Bytes,
    Packets,
    /// The sequence number is close to cycling (RFC 4303 3.3.3).
    SequenceNumber,
}

/// Distance from the last sequence number at which a rekey is requested.
const SEQ_SOFT_MARGIN: u64 = 1 << 24;

struct Usage {
    bytes: AtomicU64,
    packets: AtomicU64,
    soft_fired: AtomicBool,
}

impl Usage {
    fn new() -> Self {
        Usage {
            bytes: AtomicU64::new(0),
            packets: AtomicU64::new(0),
            soft_fired: AtomicBool::new(false),
        }
    }

    fn hard_exceeded(&self, l: &Lifetimes) -> bool {
        (l.hard_bytes != 0 && self.bytes.load(Ordering::Relaxed) >= l.hard_bytes)
            || (l.hard_packets != 0 && self.packets.load(Ordering::Relaxed) >= l.hard_packets)
    }

    /// Counts one packet; returns a rekey reason the first time a soft limit is crossed.
    fn count(&self, l: &Lifetimes, len: usize) -> Option<RekeyReason> {
        let bytes = self.bytes.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
        let packets = self.packets.fetch_add(1, Ordering::Relaxed) + 1;
        let reason = if l.soft_bytes != 0 && bytes >= l.soft_bytes {
            RekeyReason::Bytes
        } else if l.soft_packets != 0 && packets >= l.soft_packets {
            RekeyReason::Packets
        } else {
            return None;
        };
        self.fire(reason)
    }

    fn fire(&self, reason: RekeyReason) -> Option<RekeyReason> {
        if self.soft_fired.swap(true, Ordering::Relaxed) {
            None
        } else {
            Some(reason)
        }
    }
}

/// An encapsulated packet: `range` is the ESP packet (SPI .. ICV) within the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encapsulated {
    pub range: Range<usize>,
    pub seq: u64,
    /// Set once, when this packet crossed a soft lifetime or neared sequence exhaustion.
    pub rekey: Option<RekeyReason>,
}

/// A decapsulated packet: `range` is the inner IP packet within the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decapsulated {
    pub range: Range<usize>,
    pub next_header: NextHeader,
    pub seq: u64,
    pub rekey: Option<RekeyReason>,
}

/// The sending half of a CHILD SA. Shared by all workers (`&self` methods, atomics).
pub struct OutboundSa {
    spi: Spi,
    transform: Transform,
    esn: bool,
    /// Next sequence number to use; starts at 1 (RFC 4303 3.3.3).
    next_seq: AtomicU64,
    lifetimes: Lifetimes,
    usage: Usage,
    /// Inner packets up to this length are padded to [`Transform::block_align`], longer
    /// ones only to [`Transform::align`] (see [`OutboundSa::fit_padding`]).
    block_pad_upto: usize,
}

impl std::fmt::Debug for OutboundSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundSa")
            .field("spi", &format_args!("{:08x}", self.spi.0))
            .field("transform", &self.transform)
            .field("esn", &self.esn)
            .finish_non_exhaustive()
    }
}

impl OutboundSa {
    pub fn new(keys: &EspKeys, lifetimes: Lifetimes) -> Result<Self, Error> {
        Ok(OutboundSa {
            spi: keys.spi,
            transform: Transform::new(keys)?,
            esn: keys.esn,
            next_seq: AtomicU64::new(1),
            lifetimes,
            usage: Usage::new(),
            block_pad_upto: usize::MAX,
        })
    }

    /// Keeps the extra block padding (see [`Transform::block_align`]) to inner packets
    /// whose ESP packet still fits `budget` octets (the path MTU less the outer IP and UDP
    /// headers), so that padding never makes a packet that [`max_inner_len`] admits too
    /// long for the path.
    ///
    /// [`max_inner_len`]: Self::max_inner_len
    pub fn fit_padding(&mut self, budget: usize) {
        self.block_pad_upto = self.longest_inner(budget, self.transform.block_align());
    }

    pub fn spi(&self) -> Spi {
        self.spi
    }

    /// Octets written in front of the inner packet (SPI, sequence number, IV).
    pub fn header_len(&self) -> usize {
        ESP_HEADER_LEN + self.transform.iv_len()
    }

    /// Octets written behind an inner packet of `len` octets (padding, pad length, next
    /// header, ICV).
    pub fn trailer_len(&self, len: usize) -> usize {
        let align = if len <= self.block_pad_upto {
            self.transform.block_align()
        } else {
            self.transform.align()
        };
        let padded = (len + 2).div_ceil(align) * align;
        padded - len + self.transform.icv_len()
    }

    /// The longest inner packet whose ESP packet (header, padding, trailer, ICV) fits in
    /// `budget` octets (the path MTU less the outer IP and UDP headers); 0 when none does.
    pub fn max_inner_len(&self, budget: usize) -> usize {
        self.longest_inner(budget, self.transform.align())
    }

    /// The longest inner packet that, padded to `align` with pad length and next header,
    /// fits `budget` octets behind the ESP header and IV and before the ICV.
    fn longest_inner(&self, budget: usize, align: usize) -> usize {
        let room = budget.saturating_sub(self.header_len() + self.transform.icv_len());
        ((room / align) * align).saturating_sub(2)
    }

    /// Bytes and packets sent so far.
    pub fn usage(&self) -> (u64, u64) {
        (
            self.usage.bytes.load(Ordering::Relaxed),
            self.usage.packets.load(Ordering::Relaxed),
        )
    }

    /// Sets the next sequence number (tests and SA migration).
    pub fn set_next_seq(&self, seq: u64) {
        self.next_seq.store(seq, Ordering::Relaxed);
    }

    fn max_seq(&self) -> u64 {
        if self.esn {
            u64::MAX
        } else {
            u32::MAX as u64
        }
    }

    /// Encapsulates the inner packet at `buf[start..start + len]` in place (RFC 4303 3.3).
    ///
    /// Needs `start >= header_len()` and `buf.len() >= start + len + trailer_len(len)`.
    /// Refuses with [`EspDrop::SeqOverflow`] rather than let the sequence number cycle.
    pub fn encapsulate(
        &self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        next_header: NextHeader,
    ) -> Result<Encapsulated, Error> {
        let hdr = self.header_len();
        let begin = start.checked_sub(hdr).ok_or(EspDrop::NoRoom)?;
        let trailer = self.trailer_len(len);
        let end = start
            .checked_add(len)
            .and_then(|e| e.checked_add(trailer))
            .ok_or(EspDrop::Oversized)?;
        if end > buf.len() {
            return Err(EspDrop::NoRoom.into());
        }
        if self.usage.hard_exceeded(&self.lifetimes) {
            return Err(EspDrop::LifetimeExpired.into());
        }
        let max = self.max_seq();
        let seq = self
            .next_seq
            // After u64::MAX the counter reads 0: exhausted as well.
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                if s > max || s == 0 {
                    None
                } else {
                    Some(s.wrapping_add(1))
                }
            })
            .map_err(|_| EspDrop::SeqOverflow)?;
        if seq > max || seq == 0 {
            return Err(EspDrop::SeqOverflow.into());
        }

        // Trailer: padding 1, 2, 3, ... (RFC 4303 2.4), pad length, next header.
        let icv_len = self.transform.icv_len();
        let pad_len = trailer - icv_len - 2;
        let mut p = start + len;
        for i in 0..pad_len {
            buf[p + i] = (i + 1) as u8;
        }
        p += pad_len;
        buf[p] = pad_len as u8;
        buf[p + 1] = next_header.to_u8();

        let pkt = &mut buf[begin..end];
        pkt[..4].copy_from_slice(&self.spi.0.to_be_bytes());
        pkt[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        self.transform.seal(pkt, seq, self.esn)?;

        let mut rekey = self.usage.count(&self.lifetimes, len);
        if rekey.is_none() && max - seq < SEQ_SOFT_MARGIN {
            rekey = self.usage.fire(RekeyReason::SequenceNumber);
        }
        Ok(Encapsulated {
            range: begin..end,
            seq,
            rekey,
        })
    }
}

/// The receiving half of a CHILD SA. Shared by all workers; the replay window is behind
/// a short mutex held only for the check and the update, never across decryption.
pub struct InboundSa {
    spi: Spi,
    transform: Transform,
    esn: bool,
    pub(super) window: Mutex<ReplayWindow>,
    lifetimes: Lifetimes,
    usage: Usage,
}

impl std::fmt::Debug for InboundSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundSa")
            .field("spi", &format_args!("{:08x}", self.spi.0))
            .field("transform", &self.transform)
            .field("esn", &self.esn)
            .finish_non_exhaustive()
    }
}

impl InboundSa {
    pub fn new(keys: &EspKeys, lifetimes: Lifetimes, replay_window: u32) -> Result<Self, Error> {
        Ok(InboundSa {
            spi: keys.spi,
            transform: Transform::new(keys)?,
            esn: keys.esn,
            window: Mutex::new(ReplayWindow::new(replay_window)),
            lifetimes,
            usage: Usage::new(),
        })
    }

    pub fn spi(&self) -> Spi {
        self.spi
    }

    /// Bytes and packets received so far.
    pub fn usage(&self) -> (u64, u64) {
        (
            self.usage.bytes.load(Ordering::Relaxed),
            self.usage.packets.load(Ordering::Relaxed),
        )
    }

    /// Highest sequence number accepted.
    pub fn highest_seq(&self) -> u64 {
        self.window.lock().map(|w| w.top()).unwrap_or(0)
    }

    /// Smallest ESP packet this SA can accept.
    pub fn min_len(&self) -> usize {
        ESP_HEADER_LEN + self.transform.iv_len() + self.transform.align() + self.transform.icv_len()
    }

    /// Decapsulates the ESP packet `pkt` (SPI through ICV; the caller looked the SPI up)
    /// in place (RFC 4303 3.4). The inner packet ends up at `pkt[range]`.
    pub fn decapsulate(&self, pkt: &mut [u8]) -> Result<Decapsulated, Error> {
        if pkt.len() < self.min_len() {
            return Err(EspDrop::Truncated.into());
        }
        if self.usage.hard_exceeded(&self.lifetimes) {
            return Err(EspDrop::LifetimeExpired.into());
        }
        let seq_lo = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        // Replay pre-check (RFC 4303 3.4.3): cheap, before the ICV.
        let seq = {
            let w = self
                .window
                .lock()
                .map_err(|_| Error::Crypto("replay window poisoned"))?;
            let seq = if self.esn {
                w.infer_esn(seq_lo).ok_or(EspDrop::TooOld)?
            } else {
                seq_lo as u64
            };
            w.check(seq)?;
            seq
        };
        let pt = self.transform.open(pkt, seq, self.esn)?;
        // Authentic: now the window may move (RFC 4303 3.4.3).
        self.window
            .lock()
            .map_err(|_| Error::Crypto("replay window poisoned"))?
            .update(seq)?;

        // Trailer checks (RFC 4303 2.4, 2.6).
        let last = pt.end - 1;
        let nh = pkt[last];
        let pad_len = pkt[last - 1] as usize;
        let payload_len = (pt.end - pt.start)
            .checked_sub(pad_len + 2)
            .ok_or(EspDrop::BadPadding)?;
        let pad_start = pt.start + payload_len;
        for (i, b) in pkt[pad_start..pad_start + pad_len].iter().enumerate() {
            if *b as usize != i + 1 {
                return Err(EspDrop::BadPadding.into());
            }
        }
        let next_header = match NextHeader::from_u8(nh) {
            Some(NextHeader::NoNext) => return Err(EspDrop::Dummy.into()),
            Some(n) => n,
            None => return Err(EspDrop::BadNextHeader.into()),
        };
        let rekey = self.usage.count(&self.lifetimes, payload_len);
        Ok(Decapsulated {
            range: pt.start..pad_start,
            next_header,
            seq,
            rekey,
        })
    }
}
