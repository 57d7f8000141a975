//! Gateway IDs and the embedded authoritative DNS server (seed 003, chapter 4).
//!
//! * [`GatewayId`]: the DNS label of a peer router, from its identity.
//! * [`Zone`]: the zone `<domain>`, written by the daemon and the cluster, read by
//!   queries from an immutable [`Snapshot`] swapped atomically.
//! * [`DnsServer`]: UDP (SO_REUSEPORT, one loop per socket) and TCP (own framing, [`tcp`])
//!   listeners answering from the zone through [`DnsHandler`].
//! * [`Transfer`]: AXFR/IXFR to configured secondaries and NOTIFY, TSIG-signed.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod error;
mod fast;
#[doc(hidden)]
pub mod fuzz;
pub mod gateway_id;
pub mod handler;
pub mod metrics;
pub mod server;
pub mod tcp;
pub mod tsig;
pub mod xfr;
pub mod zone;

pub use config::{
    DnsConfig, NsConfig, SecondaryAddr, SecondaryConfig, SoaConfig, TsigAlgorithmName,
    TsigKeyConfig, TsigSecret,
};
pub use error::Error;
pub use gateway_id::{cn_from_dn, GatewayId, Treatment};
pub use handler::DnsHandler;
pub use metrics::{CounterValues, Counters, Outcome, Shard};
pub use server::DnsServer;
pub use xfr::{Transfer, XfrStats};
pub use zone::{Change, PoolMember, Snapshot, TunnelKey, Zone, ZoneConfig};
