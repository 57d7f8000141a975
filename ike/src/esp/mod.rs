//! Sans-IO ESP packet transforms (RFC 4303, tunnel mode).
//!
//! [`OutboundSa::encapsulate`] turns an inner IP packet into an ESP packet and
//! [`InboundSa::decapsulate`] turns it back, both in place in a caller buffer and without
//! allocating. The caller (the data plane) owns sockets, the TUN device, the SPI lookup
//! table and the clock; this module owns the wire format, the ciphers, the sequence
//! numbers, the anti-replay window and the lifetimes, and tells what a received datagram
//! is ([`outer::classify_outer`]: NAT keepalive, IKE or ESP, RFC 3948 2).
//!
//! Ciphers: AES-GCM with a 16-octet ICV (RFC 4106), ChaCha20-Poly1305 (RFC 7634), both
//! through ring, and AES-CBC (RFC 3602, RustCrypto `aes` + `cbc`) with HMAC-SHA2
//! (RFC 4868, ring). 32-bit and extended sequence numbers (RFC 4303 2.2.1).
//!
//! Every dropped packet is an [`Error::Esp`](crate::Error::Esp) carrying an [`EspDrop`]
//! reason the caller counts by.

mod frag;
#[doc(hidden)]
pub mod fuzz;
pub mod gro;
mod hold;
pub mod icmp;
pub mod outer;
mod replay;
mod sa;
mod selectors;
mod split;
mod transform;

#[cfg(test)]
mod kat_published;
#[cfg(test)]
mod tests;

pub use frag::{FragmentTable, FRAGMENT_LIFETIME, FRAGMENT_SLOTS};
pub use hold::{Datagram, EarlyFragments, EARLY_FRAGMENT_LIFETIME, EARLY_FRAGMENT_SLOTS};
pub use replay::{ReplayWindow, DEFAULT_REPLAY_WINDOW, MAX_REPLAY_WINDOW};
pub use sa::{Decapsulated, Encapsulated, InboundSa, Lifetimes, OutboundSa, RekeyReason};
pub use selectors::{
    check_inbound_flow, check_inner_selectors, check_outbound_flow, check_outbound_selectors,
    flow_of, selectors_narrow, Flow, Fragment,
};
pub use split::{Ipv4Fragments, MIN_IPV4_MTU};
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
    /// The packet's addresses, protocol or ports lie outside the SA's traffic
    /// selectors, or its IP version contradicts Next Header (RFC 4301 5.1, 5.2 step 4).
    TsMismatch,
    /// A non-initial fragment for an SA whose selectors name ports, with no initial
    /// fragment of its datagram seen passing on that SA (RFC 4301 7.4).
    NonInitialFragment,
    /// A fragment no sender produces: zero-length, misaligned, past 65535 octets, a
    /// second Fragment header, a first fragment too short for the headers checked, or
    /// one overlapping them (RFC 791 3.2, RFC 8200 4.5, RFC 1858, RFC 5722).
    BadFragment,
    /// A non-initial fragment held for its initial fragment (it arrived first, RFC 4301
    /// 7.4) that did not come within the hold time, or pushed out of the full hold by
    /// newer ones ([`EarlyFragments`]).
    FragmentExpired,
}

impl EspDrop {
    /// All reasons, for counter arrays indexed by `reason as usize`.
    pub const ALL: [EspDrop; 17] = [
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
        EspDrop::NonInitialFragment,
        EspDrop::BadFragment,
        EspDrop::FragmentExpired,
    ];

    /// This reason's place in [`ALL`](Self::ALL): the index of its counter.
    pub fn index(self) -> usize {
        self as usize
    }

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
            EspDrop::NonInitialFragment => "esp_non_initial_fragment",
            EspDrop::BadFragment => "esp_bad_fragment",
            EspDrop::FragmentExpired => "esp_fragment_expired",
        }
    }

    pub fn kind(self) -> ErrorKind {
        match self {
            EspDrop::Truncated
            | EspDrop::Oversized
            | EspDrop::BadPadding
            | EspDrop::BadNextHeader
            | EspDrop::BadFragment => ErrorKind::Malformed,
            EspDrop::UnknownSpi
            | EspDrop::Replayed
            | EspDrop::TooOld
            | EspDrop::Integrity
            | EspDrop::TsMismatch => ErrorKind::PeerMisbehaved,
            EspDrop::Dummy
            | EspDrop::SeqOverflow
            | EspDrop::LifetimeExpired
            | EspDrop::NoRoom
            | EspDrop::NoRoute
            | EspDrop::NonInitialFragment
            | EspDrop::FragmentExpired => ErrorKind::Local,
        }
    }
}

impl std::fmt::Display for EspDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl From<EspDrop> for crate::Error {
    fn from(d: EspDrop) -> Self {
        crate::Error::Esp(d)
    }
}
