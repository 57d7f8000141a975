//! The ipsec-ddns cluster: replication of gateway-ID records between members (seed 003,
//! chapter 4; issue 5).
//!
//! Mechanism: scuttlebutt anti-entropy (as in Cassandra and chitchat) built here, because
//! chitchat is UDP-shaped, unauthenticated and stores strings. [`node`] is the sans-IO core,
//! [`store`] the on-disk state, [`net`] the TLS transport and [`Cluster`] the daemon's handle.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod hlc;
pub mod join;
pub mod net;
pub mod node;
pub mod store;
pub mod tls;
pub mod tool;

pub use config::ClusterConfig;
pub use error::Error;
pub use net::{Cluster, ClusterHandle, Started, Stats};
pub use node::{Event, MemberInfo, MemberState, MemberStatus, Record};
