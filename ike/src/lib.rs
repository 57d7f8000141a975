//! Sans-IO IKEv2 engine (RFC 7296) and ESP packet transforms (RFC 4303).
//!
//! The engine owns no sockets, no clock and no RNG source: the driver passes
//! datagrams, `now` and a seed in, and asks for datagrams ([`Endpoint::poll_transmit`]),
//! the next deadline ([`Endpoint::poll_timeout`]) and events ([`Endpoint::poll`]) out,
//! in the manner of quinn-proto.
#![forbid(unsafe_code)]

pub mod config;
pub mod event;
pub mod message;

pub use config::*;
pub use event::*;
