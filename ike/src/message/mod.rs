//! IKEv2 message data model and wire codec (RFC 7296 section 3).
//!
//! Decoding is bounded and never panics: every rejection is a typed [`crate::Error`].
//! Encrypted (SK, RFC 7296 3.14) and encrypted-fragment (SKF, RFC 7383 2.5) payloads are
//! carried opaque here; `crate::crypto` seals and opens them.
//!
//! Entry points: [`Header::decode`] (demux), [`Message::decode`] /
//! [`Message::decode_locating_sk`], [`Message::encode`], [`encode_payloads`] /
//! [`decode_payloads`] for the inner chain of SK, and [`encode_sk_prefix`] /
//! [`encode_skf_prefix`] for the bytes the crypto layer seals after.

use std::net::IpAddr;

use crate::event::{Identity, Spi, TrafficSelector};

mod codec;
#[cfg(test)]
pub(crate) mod tests;

pub use codec::*;

/// Payload type numbers (RFC 7296 3.2, RFC 7383 2.5).
pub mod payload_type {
    /// No Next Payload.
    pub const NONE: u8 = 0;
    pub const SA: u8 = 33;
    pub const KE: u8 = 34;
    pub const IDI: u8 = 35;
    pub const IDR: u8 = 36;
    pub const CERT: u8 = 37;
    pub const CERTREQ: u8 = 38;
    pub const AUTH: u8 = 39;
    pub const NONCE: u8 = 40;
    pub const NOTIFY: u8 = 41;
    pub const DELETE: u8 = 42;
    pub const VENDOR_ID: u8 = 43;
    pub const TSI: u8 = 44;
    pub const TSR: u8 = 45;
    pub const SK: u8 = 46;
    pub const CP: u8 = 47;
    pub const EAP: u8 = 48;
    pub const SKF: u8 = 53;
}

/// Identification types (RFC 7296 3.5).
pub mod id_type {
    pub const IPV4_ADDR: u8 = 1;
    pub const FQDN: u8 = 2;
    pub const RFC822_ADDR: u8 = 3;
    pub const IPV6_ADDR: u8 = 5;
    pub const DER_ASN1_DN: u8 = 9;
    pub const KEY_ID: u8 = 11;
}

/// Traffic selector types (RFC 7296 3.13.1).
pub mod ts_type {
    pub const IPV4_ADDR_RANGE: u8 = 7;
    pub const IPV6_ADDR_RANGE: u8 = 8;
}

/// Exchange types (RFC 7296 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeType {
    IkeSaInit,
    IkeAuth,
    CreateChildSa,
    Informational,
    Other(u8),
}

/// The fixed IKE header (RFC 7296 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub spi_i: u64,
    pub spi_r: u64,
    /// Type of the first payload.
    pub next_payload: u8,
    pub major_version: u8,
    pub minor_version: u8,
    pub exchange: ExchangeType,
    /// Initiator (I) flag: set by the original initiator of the IKE SA.
    pub initiator: bool,
    /// Response (R) flag.
    pub response: bool,
    pub message_id: u32,
    /// Length of the whole message in octets.
    pub length: u32,
}

/// Protocol IDs (RFC 7296 3.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolId {
    Ike,
    Ah,
    Esp,
    Other(u8),
}

/// One transform (RFC 7296 3.3.2): type, ID and an optional key length attribute.
///
/// On decode, a transform carrying an attribute other than Key Length is dropped from its
/// proposal, which makes it unacceptable as RFC 7296 3.3.6 requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transform {
    pub kind: u8,
    pub id: u16,
    pub key_length: Option<u16>,
}

impl Transform {
    /// Transform type 1: encryption algorithm (RFC 7296 3.3.2).
    pub const ENCR: u8 = 1;
    /// Transform type 2: pseudo-random function.
    pub const PRF: u8 = 2;
    /// Transform type 3: integrity algorithm.
    pub const INTEG: u8 = 3;
    /// Transform type 4: key exchange method (Diffie-Hellman group).
    pub const DH: u8 = 4;
    /// Transform type 5: extended sequence numbers.
    pub const ESN: u8 = 5;
}

/// One proposal (RFC 7296 3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub number: u8,
    pub protocol: ProtocolId,
    /// Empty for the IKE SA in IKE_SA_INIT; 4 bytes for ESP; 8 for an IKE rekey.
    pub spi: Vec<u8>,
    pub transforms: Vec<Transform>,
}

/// Notify message types used by this engine (RFC 7296 3.10.1 and extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NotifyType(pub u16);

impl NotifyType {
    pub const UNSUPPORTED_CRITICAL_PAYLOAD: Self = Self(1);
    pub const INVALID_IKE_SPI: Self = Self(4);
    pub const INVALID_MAJOR_VERSION: Self = Self(5);
    pub const INVALID_SYNTAX: Self = Self(7);
    pub const INVALID_MESSAGE_ID: Self = Self(9);
    pub const INVALID_SPI: Self = Self(11);
    pub const NO_PROPOSAL_CHOSEN: Self = Self(14);
    pub const INVALID_KE_PAYLOAD: Self = Self(17);
    pub const AUTHENTICATION_FAILED: Self = Self(24);
    pub const SINGLE_PAIR_REQUIRED: Self = Self(34);
    pub const NO_ADDITIONAL_SAS: Self = Self(35);
    pub const INTERNAL_ADDRESS_FAILURE: Self = Self(36);
    pub const FAILED_CP_REQUIRED: Self = Self(37);
    pub const TS_UNACCEPTABLE: Self = Self(38);
    pub const INVALID_SELECTORS: Self = Self(39);
    pub const TEMPORARY_FAILURE: Self = Self(43);
    pub const CHILD_SA_NOT_FOUND: Self = Self(44);
    pub const INITIAL_CONTACT: Self = Self(16384);
    pub const SET_WINDOW_SIZE: Self = Self(16385);
    pub const ADDITIONAL_TS_POSSIBLE: Self = Self(16386);
    pub const IPCOMP_SUPPORTED: Self = Self(16387);
    pub const NAT_DETECTION_SOURCE_IP: Self = Self(16388);
    pub const NAT_DETECTION_DESTINATION_IP: Self = Self(16389);
    pub const COOKIE: Self = Self(16390);
    pub const USE_TRANSPORT_MODE: Self = Self(16391);
    pub const REKEY_SA: Self = Self(16393);
    pub const ESP_TFC_PADDING_NOT_SUPPORTED: Self = Self(16394);
    pub const NON_FIRST_FRAGMENTS_ALSO: Self = Self(16395);
    pub const MOBIKE_SUPPORTED: Self = Self(16396);
    pub const IKEV2_FRAGMENTATION_SUPPORTED: Self = Self(16430);
    pub const SIGNATURE_HASH_ALGORITHMS: Self = Self(16431);

    /// Types below 16384 report errors (RFC 7296 3.10.1).
    pub fn is_error(self) -> bool {
        self.0 < 16384
    }
}

/// Notify payload (RFC 7296 3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub protocol: ProtocolId,
    pub spi: Vec<u8>,
    pub kind: NotifyType,
    pub data: Vec<u8>,
}

/// Authentication methods (RFC 7296 3.8, RFC 7427).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthMethod(pub u8);

impl AuthMethod {
    pub const RSA_SIG: Self = Self(1);
    pub const SHARED_KEY_MIC: Self = Self(2);
    pub const ECDSA_256: Self = Self(9);
    pub const ECDSA_384: Self = Self(10);
    pub const DIGITAL_SIGNATURE: Self = Self(14);
}

/// Configuration payload types (RFC 7296 3.15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CfgType {
    Request,
    Reply,
    Set,
    Ack,
    Other(u8),
}

/// One configuration attribute (RFC 7296 3.15.1), kept raw: type and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CfgAttribute {
    pub kind: u16,
    pub value: Vec<u8>,
}

impl CfgAttribute {
    pub const INTERNAL_IP4_ADDRESS: u16 = 1;
    pub const INTERNAL_IP4_NETMASK: u16 = 2;
    pub const INTERNAL_IP4_DNS: u16 = 3;
    pub const INTERNAL_IP6_ADDRESS: u16 = 8;
    pub const INTERNAL_IP6_DNS: u16 = 10;
}

/// Delete payload (RFC 7296 3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub protocol: ProtocolId,
    /// Empty for the IKE SA; ESP SPIs otherwise.
    pub spis: Vec<Spi>,
}

/// One payload (RFC 7296 3.2 onwards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// SA (33).
    Sa(Vec<Proposal>),
    /// Key Exchange (34): group number and public value.
    Ke { group: u16, data: Vec<u8> },
    /// Identification - Initiator (35).
    IdI(Identity),
    /// Identification - Responder (36).
    IdR(Identity),
    /// Certificate (37): encoding and data.
    Cert { encoding: u8, data: Vec<u8> },
    /// Certificate Request (38).
    CertReq { encoding: u8, data: Vec<u8> },
    /// Authentication (39).
    Auth { method: AuthMethod, data: Vec<u8> },
    /// Nonce (40), 16 to 256 octets.
    Nonce(Vec<u8>),
    /// Notify (41).
    Notify(Notify),
    /// Delete (42).
    Delete(Delete),
    /// Vendor ID (43).
    VendorId(Vec<u8>),
    /// Traffic Selector - Initiator (44).
    TsI(Vec<TrafficSelector>),
    /// Traffic Selector - Responder (45).
    TsR(Vec<TrafficSelector>),
    /// Encrypted and Authenticated (46): first inner payload type and the opaque body
    /// (IV, ciphertext, padding, ICV).
    Sk { first_inner: u8, body: Vec<u8> },
    /// Configuration (47).
    Cfg {
        kind: CfgType,
        attributes: Vec<CfgAttribute>,
    },
    /// Encrypted and Authenticated Fragment (53, RFC 7383 2.5).
    Skf {
        first_inner: u8,
        number: u16,
        total: u16,
        body: Vec<u8>,
    },
    /// A payload type this engine does not know, with its critical bit.
    Unknown {
        kind: u8,
        critical: bool,
        body: Vec<u8>,
    },
}

/// A decoded message: header plus payloads in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub payloads: Vec<Payload>,
}

/// A virtual address from a CFG_REPLY, for convenience.
pub fn cfg_address(attr: &CfgAttribute) -> Option<IpAddr> {
    match (attr.kind, attr.value.len()) {
        (CfgAttribute::INTERNAL_IP4_ADDRESS, 4) => {
            let b: [u8; 4] = attr.value[..4].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        (CfgAttribute::INTERNAL_IP6_ADDRESS, 17) => {
            let b: [u8; 16] = attr.value[..16].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}
