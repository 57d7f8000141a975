//! Engine configuration. Built by the daemon from its TOML file; the engine never
//! reads files.
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::event::{Identity, TrafficSelector};

/// Encryption transform IDs (IANA "Transform Type 1").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncrAlg {
    /// ENCR_AES_CBC (12), key length in bits (128 or 256).
    AesCbc(u16),
    /// ENCR_AES_GCM_16 (20), key length in bits (128 or 256). RFC 4106 / RFC 5282.
    AesGcm16(u16),
    /// ENCR_CHACHA20_POLY1305 (28). RFC 7634.
    ChaCha20Poly1305,
}

/// Pseudo-random functions (IANA "Transform Type 2").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrfAlg {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

/// Integrity algorithms (IANA "Transform Type 3"). Not used with AEAD ciphers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntegAlg {
    HmacSha256_128,
    HmacSha384_192,
    HmacSha512_256,
}

/// Key exchange methods (IANA "Transform Type 4").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DhGroup {
    Modp2048,
    Ecp256,
    Ecp384,
    Curve25519,
}

/// One IKE SA proposal: every listed transform is acceptable (RFC 7296 3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeProposal {
    pub encr: Vec<EncrAlg>,
    pub prf: Vec<PrfAlg>,
    /// Empty for AEAD-only proposals.
    pub integ: Vec<IntegAlg>,
    pub dh: Vec<DhGroup>,
}

/// One ESP (CHILD SA) proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspProposal {
    pub encr: Vec<EncrAlg>,
    pub integ: Vec<IntegAlg>,
    /// Key exchange for PFS on CREATE_CHILD_SA; empty means no PFS.
    pub dh: Vec<DhGroup>,
    /// Offer/accept extended sequence numbers (RFC 4303 2.2.1).
    pub esn: bool,
}

/// Pre-shared keys: one per peer identity plus an optional default.
#[derive(Clone, Default)]
pub struct PskStore {
    pub by_identity: HashMap<Identity, Vec<u8>>,
    pub default: Option<Vec<u8>>,
}

impl std::fmt::Debug for PskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PskStore")
            .field("identities", &self.by_identity.len())
            .field("default", &self.default.is_some())
            .finish()
    }
}

/// Lifetimes and liveness (RFC 7296 2.4, 2.8).
#[derive(Debug, Clone)]
pub struct Lifetimes {
    /// IKE SA rekey interval (the initiator of a rekey is whichever side's timer fires first).
    pub ike_rekey: Duration,
    /// CHILD SA rekey interval.
    pub child_rekey: Duration,
    /// Random jitter subtracted from rekey intervals, to avoid collisions.
    pub rekey_jitter: Duration,
    /// Send a liveness check (empty INFORMATIONAL) after this long without inbound traffic.
    /// `None` disables DPD.
    pub dpd_delay: Option<Duration>,
}

/// Request retransmission (RFC 7296 2.1): first timeout, then doubled per try.
#[derive(Debug, Clone)]
pub struct Retransmit {
    pub initial: Duration,
    pub tries: u32,
}

/// Resource bounds and DoS protection (RFC 7296 2.6).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Half-open IKE SAs above which the responder requires a COOKIE.
    pub cookie_threshold: usize,
    /// Hard cap on half-open IKE SAs; further IKE_SA_INIT requests are dropped.
    pub half_open_max: usize,
    /// A half-open SA is dropped after this long without IKE_AUTH completing.
    pub half_open_timeout: Duration,
    /// Cap on established IKE SAs.
    pub ike_sa_max: usize,
    /// Largest IKE message accepted after fragment reassembly.
    pub max_message: usize,
    /// Fragment outgoing messages above this size when the peer supports RFC 7383.
    pub fragment_mtu: usize,
}

/// Addresses handed out in the configuration payload (RFC 7296 3.15).
#[derive(Debug, Clone, Default)]
pub struct PoolConfig {
    pub v4: Option<Ipv4Net>,
    pub v6: Option<Ipv6Net>,
    /// INTERNAL_IP4_DNS / INTERNAL_IP6_DNS attributes.
    pub dns: Vec<IpAddr>,
}

/// How this endpoint authenticates itself and its peers.
#[derive(Debug, Clone)]
pub enum AuthConfig {
    /// Shared key authentication (RFC 7296 2.15).
    Psk(PskStore),
    /// Certificate authentication (RFC 7296 2.15 with signatures, RFC 7427; issue 7).
    /// Shared with the driver, which swaps CRLs through it.
    Cert(std::sync::Arc<crate::cert::CertAuth>),
}

/// Responder (head-end) configuration.
#[derive(Debug, Clone)]
pub struct ResponderConfig {
    pub local_id: Identity,
    pub auth: AuthConfig,
    pub ike_proposals: Vec<IkeProposal>,
    pub esp_proposals: Vec<EspProposal>,
    /// Local traffic selectors offered to peers (the inside networks).
    pub local_ts: Vec<TrafficSelector>,
    pub pool: PoolConfig,
}

/// Initiator (peer router) configuration for one connection.
#[derive(Debug, Clone)]
pub struct InitiatorConfig {
    pub local_id: Identity,
    /// Expected remote identity; `None` accepts any authenticated identity.
    pub remote_id: Option<Identity>,
    pub auth: AuthConfig,
    pub ike_proposals: Vec<IkeProposal>,
    pub esp_proposals: Vec<EspProposal>,
    /// Ask for a virtual IPv4 (and IPv6) address in a CFG_REQUEST.
    pub request_vip4: bool,
    pub request_vip6: bool,
    /// Traffic selectors requested for the first CHILD SA.
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// Send INITIAL_CONTACT in IKE_AUTH.
    pub initial_contact: bool,
    /// The responder's NAT-T port to move to when NAT is detected (4500 normally).
    pub remote_natt_port: u16,
}

/// Whole-endpoint configuration.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Local port of the NAT-T socket (4500 by default); the engine sends from it once
    /// NAT is detected (RFC 7296 2.23).
    pub local_natt_port: u16,
    /// `None` makes an initiator-only endpoint (peer routers, load generator).
    pub responder: Option<ResponderConfig>,
    pub lifetimes: Lifetimes,
    pub retransmit: Retransmit,
    pub limits: Limits,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            ike_rekey: Duration::from_secs(4 * 3600),
            child_rekey: Duration::from_secs(3600),
            rekey_jitter: Duration::from_secs(60),
            dpd_delay: Some(Duration::from_secs(30)),
        }
    }
}

impl Default for Retransmit {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            tries: 5,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cookie_threshold: 1000,
            half_open_max: 20_000,
            half_open_timeout: Duration::from_secs(30),
            ike_sa_max: 200_000,
            max_message: 64 * 1024,
            fragment_mtu: 1280,
        }
    }
}
