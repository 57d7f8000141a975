//! The one error enum of the ddns crate.

use std::net::SocketAddr;

/// Everything that can go wrong configuring or starting the DNS server.
///
/// Query-time problems are never errors: a hostile or malformed query is answered
/// (FORMERR, REFUSED, ...) or dropped and counted in [`crate::Counters`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A domain or host name in the configuration is not a valid DNS name.
    #[error("invalid DNS name {name:?}: {reason}")]
    InvalidName {
        /// The name as configured.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The configuration is inconsistent (e.g. no NS, name outside the zone).
    #[error("invalid [dns] configuration: {0}")]
    Config(String),
    /// One key of `[dns]` is wrong in a way only visible with the others (e.g. a
    /// secondary naming a TSIG key that is not defined).
    #[error("dns.{key}: {reason}")]
    ConfigKey {
        /// Path below `[dns]`, e.g. `secondary[0].tsig_key`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Binding a listening socket failed.
    #[error("cannot listen on {addr} ({proto}): {source}")]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// "udp" or "tcp".
        proto: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Any other I/O error while starting or running the server.
    #[error("DNS server I/O error: {0}")]
    Io(#[from] std::io::Error),
}
