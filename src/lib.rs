//! The headend daemon: configuration, the IKE driver around the sans-IO engine, the
//! peer-router side, the load generator, and the glue to DNS, cluster and data plane.
//!
//! `src/main.rs` is a thin CLI over these modules; integration tests and benches use
//! them directly.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bench;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod demo;
pub mod dns;
pub mod driver;
pub mod error;
pub mod event;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod peer;
pub mod plan;
pub mod pool_dns;
pub mod proposal;
pub mod run;
pub mod services;

pub use error::Error;
pub use event::GatewayEvent;
