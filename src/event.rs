//! Gateway events: a tunnel came up or went down (seed 003 ch. 4, "Dynamic DNS").
//!
//! The daemon publishes one [`GatewayEvent`] per IKE SA that reaches ESTABLISHED and one when
//! it goes away for good, on a `tokio::sync::broadcast` channel; the DNS server and the
//! cluster consume them. IKE SA rekeys (RFC 7296 2.8) do not produce events: the tunnel,
//! identified by its [`TunnelId`], stays the same.
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use ddns::GatewayId;
use ike::Identity;

/// A daemon-local tunnel handle: the [`ike::IkeSaId`] of the tunnel's first IKE SA. It stays
/// the same across IKE SA rekeys. Unique within one daemon run; combine with the member
/// address for a cluster-wide key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelId(pub u64);

impl std::fmt::Display for TunnelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What one tunnel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayEvent {
    /// IKE_AUTH completed for a peer router (RFC 7296 1.2).
    Up {
        tunnel: TunnelId,
        /// The DNS label the router is answered under (from the certificate CN, else the
        /// identity, sanitized by `ddns::GatewayId`).
        gateway_id: GatewayId,
        identity: Identity,
        /// Virtual addresses assigned in the configuration payload (RFC 7296 3.15).
        vips: Vec<IpAddr>,
        remote: SocketAddr,
        at: SystemTime,
    },
    /// The tunnel is gone (deleted, timed out, replaced via INITIAL_CONTACT, daemon stop).
    Down {
        tunnel: TunnelId,
        gateway_id: GatewayId,
        identity: Identity,
        vips: Vec<IpAddr>,
        remote: SocketAddr,
        /// Short reason, e.g. "peer-deleted", "timeout", "initial-contact", "shutdown".
        reason: String,
        at: SystemTime,
    },
}

impl GatewayEvent {
    pub fn tunnel(&self) -> TunnelId {
        match self {
            GatewayEvent::Up { tunnel, .. } | GatewayEvent::Down { tunnel, .. } => *tunnel,
        }
    }

    pub fn gateway_id(&self) -> &GatewayId {
        match self {
            GatewayEvent::Up { gateway_id, .. } | GatewayEvent::Down { gateway_id, .. } => {
                gateway_id
            }
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(self, GatewayEvent::Up { .. })
    }
}

/// The gateway ID of a peer: from the certificate CN when there is one, else from the
/// identity string (seed 003 ch. 4). Logs a line naming the peer when the sanitizer had to
/// go beyond the seed's rules (empty or over-long result).
pub fn gateway_id_for(identity: &Identity, cert_cn: Option<&str>) -> GatewayId {
    let source = match cert_cn {
        Some(cn) => cn.to_string(),
        None => identity.to_string(),
    };
    let (id, treatment) = GatewayId::from_identity(source.as_bytes());
    if treatment.needs_log() {
        tracing::warn!(identity = %identity, gateway_id = %id, ?treatment,
            "peer identity does not sanitize to a plain DNS label; using a derived gateway ID");
    }
    id
}
