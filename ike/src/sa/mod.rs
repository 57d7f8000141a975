//! IKE SA and CHILD SA state (RFC 7296 2.1-2.9), driven by [`crate::endpoint::Endpoint`].
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::event::{Identity, IkeSaId, Spi, TrafficSelector};

/// Where an IKE SA stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IkeSaState {
    /// Initiator: IKE_SA_INIT request sent.
    InitSent,
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH (half-open).
    InitDone,
    /// Initiator: IKE_AUTH request sent.
    AuthSent,
    /// Authenticated; CHILD SAs may exist.
    Established,
    /// A rekey replaced this SA; it lingers until its Delete completes (RFC 7296 2.8).
    Rekeyed,
    /// We sent a Delete for this SA and wait for the answer.
    Deleting,
}

/// Status of one CHILD SA, for `Endpoint::ike_sas`.
#[derive(Debug, Clone)]
pub struct ChildSaInfo {
    pub inbound: Spi,
    pub outbound: Spi,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    pub established_at: Instant,
}

/// Status of one IKE SA, for the daemon's status command.
#[derive(Debug, Clone)]
pub struct IkeSaInfo {
    pub id: IkeSaId,
    pub state: IkeSaState,
    /// We were the original initiator of this IKE SA.
    pub initiator: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub udp_encap: bool,
    pub local_id: Option<Identity>,
    pub remote_id: Option<Identity>,
    pub spi_i: u64,
    pub spi_r: u64,
    pub virtual_ips: Vec<IpAddr>,
    pub child_sas: Vec<ChildSaInfo>,
    pub established_at: Option<Instant>,
}

mod auth;
mod fragments;
pub(crate) mod neg;
mod state;

pub(crate) use auth::{auth_certreq, auth_payloads, init_payloads, verify_auth};
pub(crate) use fragments::{Reassembly, MAX_FRAGMENTS};
pub(crate) use state::*;
