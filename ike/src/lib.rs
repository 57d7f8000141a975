//! Sans-IO IKEv2 engine (RFC 7296) and ESP packet transforms (RFC 4303).
//!
//! The engine owns no sockets, no clock and no RNG source: the driver passes
//! datagrams, `now` and a seed in, and asks for datagrams (`Endpoint::poll_transmit`),
//! the next deadline (`Endpoint::poll_timeout`) and events (`Endpoint::poll`) out,
//! in the manner of quinn-proto.
#![forbid(unsafe_code)]

pub mod cert;
pub mod config;
pub mod crypto;
pub mod endpoint;
pub mod error;
pub mod esp;
pub mod event;
#[doc(hidden)]
pub mod fuzz;
pub mod message;
pub mod negotiate;
pub mod pool;
pub mod sa;

pub use config::*;
pub use error::{Error, ErrorKind};
pub use event::*;
