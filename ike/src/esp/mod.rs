//! Sans-IO ESP packet transforms (RFC 4303, tunnel mode).
//!
//! [`OutboundSa::encapsulate`] turns an inner IP packet into an ESP packet and
//! [`InboundSa::decapsulate`] turns it back, both in place in a caller buffer and without
//! allocating. The caller (the data plane) owns sockets, the TUN device, the SPI lookup
//! table and the clock; this module owns the wire format, the ciphers, the sequence
//! numbers, the anti-replay window and the lifetimes.
//!
//! Ciphers: AES-GCM with a 16-octet ICV (RFC 4106), ChaCha20-Poly1305 (RFC 7634), both
//! through ring, and AES-CBC (RFC 3602, RustCrypto `aes` + `cbc`) with HMAC-SHA2
//! (RFC 4868, ring). 32-bit and extended sequence numbers (RFC 4303 2.2.1).
//!
//! Every dropped packet is an [`Error::Esp`](crate::Error::Esp) carrying an [`EspDrop`]
//! reason the caller counts by.

mod replay;
mod sa;
mod transform;

#[cfg(test)]
mod kat_published;
#[cfg(test)]
mod tests;

pub use replay::{ReplayWindow, DEFAULT_REPLAY_WINDOW, MAX_REPLAY_WINDOW};
pub use sa::{Decapsulated, Encapsulated, InboundSa, Lifetimes, OutboundSa, RekeyReason};
pub use transform::{CbcCipher, Transform};

use crate::error::ErrorKind;

/// Length of the SPI plus the sequence number field (RFC 4303 2).
pub const ESP_HEADER_LEN: usize = 8;
/// Largest ESP header (SPI, sequence number, IV) of any supported transform: reserve this
/// much headroom in front of an inner packet before [`OutboundSa::encapsulate`].
pub const MAX_HEADROOM: usize = ESP_HEADER_LEN + 16;
/// Largest trailer (padding, pad length, next header, ICV) of any supported transform:
/// reserve this much tailroom behind an inner packet.
pub const MAX_TAILROOM: usize = 15 + 2 + 32;

/// IP protocol numbers carried in the Next Header field in tunnel mode (RFC 4303 2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NextHeader {
    /// IPv4 (4).
    Ipv4,
    /// IPv6 (41).
    Ipv6,
    /// A dummy packet (59, RFC 4303 2.6): dropped silently by the receiver.
    NoNext,
}

impl NextHeader {
    pub fn to_u8(self) -> u8 {
        match self {
            NextHeader::Ipv4 => 4,
            NextHeader::Ipv6 => 41,
            NextHeader::NoNext => 59,
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            4 => Some(NextHeader::Ipv4),
            41 => Some(NextHeader::Ipv6),
            59 => Some(NextHeader::NoNext),
            _ => None,
        }
    }

    /// The next header for an inner packet, from its IP version nibble.
    pub fn for_inner_packet(packet: &[u8]) -> Option<Self> {
        match packet.first().map(|b| b >> 4) {
            Some(4) => Some(NextHeader::Ipv4),
            Some(6) => Some(NextHeader::Ipv6),
            _ => None,
        }
    }
}

/// Why the ESP layer refused a packet. Counted by the data plane per reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EspDrop {
    /// Shorter than header + IV + minimal trailer + ICV, or ciphertext not block-aligned.
    Truncated,
    /// An inner packet too large for the buffer or the 16-bit length fields.
    Oversized,
    /// No SA for the SPI (looked up by the caller, RFC 4303 3.4.2).
    UnknownSpi,
    /// The sequence number was already received (RFC 4303 3.4.3).
    Replayed,
    /// The sequence number is left of the replay window (RFC 4303 3.4.3).
    TooOld,
    /// ICV verification failed (RFC 4303 3.4.4).
    Integrity,
    /// Pad length exceeds the payload, or the padding bytes are not 1, 2, 3, ...
    /// (RFC 4303 2.4).
    BadPadding,
    /// Next Header is not IPv4, IPv6 or "no next header" (tunnel mode, RFC 4303 2.6).
    BadNextHeader,
    /// A dummy packet (Next Header 59): discarded by design (RFC 4303 2.6).
    Dummy,
    /// The sequence number would cycle: the SA must be rekeyed (RFC 4303 3.3.3).
    SeqOverflow,
    /// The hard byte or packet lifetime is used up (RFC 4301 4.4.2.1).
    LifetimeExpired,
    /// The caller's buffer has too little headroom or tailroom.
    NoRoom,
    /// Not an IPv4/IPv6 packet, or no SA routes its destination (data plane).
    NoRoute,
    /// The decapsulated packet's addresses or protocol lie outside the SA's traffic
    /// selectors, or its IP version contradicts Next Header (RFC 4301 5.2 step 4).
    TsMismatch,
}

impl EspDrop {
    /// All reasons, for counter arrays indexed by `reason as usize`.
    pub const ALL: [EspDrop; 14] = [
        EspDrop::Truncated,
        EspDrop::Oversized,
        EspDrop::UnknownSpi,
        EspDrop::Replayed,
        EspDrop::TooOld,
        EspDrop::Integrity,
        EspDrop::BadPadding,
        EspDrop::BadNextHeader,
        EspDrop::Dummy,
        EspDrop::SeqOverflow,
        EspDrop::LifetimeExpired,
        EspDrop::NoRoom,
        EspDrop::NoRoute,
        EspDrop::TsMismatch,
    ];

    /// A short stable label for counters.
    pub fn label(self) -> &'static str {
        match self {
            EspDrop::Truncated => "esp_truncated",
            EspDrop::Oversized => "esp_oversized",
            EspDrop::UnknownSpi => "esp_unknown_spi",
            EspDrop::Replayed => "esp_replayed",
            EspDrop::TooOld => "esp_too_old",
            EspDrop::Integrity => "esp_integrity",
            EspDrop::BadPadding => "esp_bad_padding",
            EspDrop::BadNextHeader => "esp_bad_next_header",
            EspDrop::Dummy => "esp_dummy",
            EspDrop::SeqOverflow => "esp_seq_overflow",
            EspDrop::LifetimeExpired => "esp_lifetime_expired",
            EspDrop::NoRoom => "esp_no_room",
            EspDrop::NoRoute => "esp_no_route",
            EspDrop::TsMismatch => "esp_ts_mismatch",
        }
    }

    pub fn kind(self) -> ErrorKind {
        match self {
            EspDrop::Truncated
            | EspDrop::Oversized
            | EspDrop::BadPadding
            | EspDrop::BadNextHeader => ErrorKind::Malformed,
            EspDrop::UnknownSpi
            | EspDrop::Replayed
            | EspDrop::TooOld
            | EspDrop::Integrity
            | EspDrop::TsMismatch => ErrorKind::PeerMisbehaved,
            EspDrop::Dummy
            | EspDrop::SeqOverflow
            | EspDrop::LifetimeExpired
            | EspDrop::NoRoom
            | EspDrop::NoRoute => ErrorKind::Local,
        }
    }
}

impl std::fmt::Display for EspDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Inbound policy check after decapsulation (RFC 4301 5.2 step 4): the inner packet's
/// IP version must match Next Header, its source must lie in one of the peer's selectors
/// (`remote_ts`) and its destination in one of ours (`local_ts`); a selector with a
/// protocol other than 0 also pins the IP protocol (the first Next Header for IPv6).
/// Ports are not checked. An empty selector list accepts anything.
pub fn check_inner_selectors(
    packet: &[u8],
    next_header: NextHeader,
    remote_ts: &[crate::event::TrafficSelector],
    local_ts: &[crate::event::TrafficSelector],
) -> Result<(), EspDrop> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let (src, dst, proto) = match (next_header, packet.first().map(|b| b >> 4)) {
        (NextHeader::Ipv4, Some(4)) if packet.len() >= 20 => {
            let a =
                |i: usize| Ipv4Addr::new(packet[i], packet[i + 1], packet[i + 2], packet[i + 3]);
            (IpAddr::V4(a(12)), IpAddr::V4(a(16)), packet[9])
        }
        (NextHeader::Ipv6, Some(6)) if packet.len() >= 40 => {
            let a = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&packet[i..i + 16]);
                Ipv6Addr::from(o)
            };
            (IpAddr::V6(a(8)), IpAddr::V6(a(24)), packet[6])
        }
        _ => return Err(EspDrop::TsMismatch),
    };
    let covers = |list: &[crate::event::TrafficSelector], ip: &IpAddr| {
        list.is_empty()
            || list.iter().any(|ts| {
                (ts.protocol == 0 || ts.protocol == proto)
                    && match (ts.start, ts.end, ip) {
                        (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(x)) => a <= *x && *x <= b,
                        (IpAddr::V6(a), IpAddr::V6(b), IpAddr::V6(x)) => a <= *x && *x <= b,
                        _ => false,
                    }
            })
    };
    if covers(remote_ts, &src) && covers(local_ts, &dst) {
        Ok(())
    } else {
        Err(EspDrop::TsMismatch)
    }
}

impl From<EspDrop> for crate::Error {
    fn from(d: EspDrop) -> Self {
        crate::Error::Esp(d)
    }
}
