//! Gateway IDs and the embedded authoritative DNS server (seed 003, chapter 4).
#![forbid(unsafe_code)]

pub mod gateway_id;

pub use gateway_id::{cn_from_dn, GatewayId, Treatment};
