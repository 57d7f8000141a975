//! The one error enum of the cluster crate.

use std::net::SocketAddr;

/// Everything that can go wrong in the cluster; each variant names its cause so an operator
/// can act on it (seed 003, "Incorrect response when Initializing or Adding to a Cluster").
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `secret` shorter than the seed's minimum of 8 characters.
    #[error("ipsec-ddns secret must be at least 8 characters")]
    SecretTooShort,
    /// Some other configuration value is unusable.
    #[error("invalid ipsec-ddns configuration: {0}")]
    InvalidConfig(String),
    /// The peer does not know the same secret (the PAKE key confirmation failed).
    #[error("peer {peer} refused: wrong ipsec-ddns secret (secrets differ)")]
    WrongSecret { peer: String },
    /// The peer belongs to a cluster serving another domain.
    #[error("peer {peer} serves domain {theirs:?}, this member is configured for {ours:?}")]
    DomainMismatch {
        peer: String,
        ours: String,
        theirs: String,
    },
    /// The cluster already has ten members.
    #[error("peer {peer} refused: the cluster already has {max} members")]
    ClusterFull { peer: String, max: usize },
    /// Too many failed attempts from this address; try again later.
    #[error("peer {peer} refused: too many failed attempts, retry later")]
    RateLimited { peer: String },
    /// No configured peer could be reached.
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable { peer: String, reason: String },
    /// A frame or message broke the wire format or its limits.
    #[error("malformed cluster message: {0}")]
    Malformed(&'static str),
    /// A peer broke the protocol (unexpected message, bad certificate).
    #[error("cluster protocol violation from {peer}: {reason}")]
    Protocol { peer: String, reason: String },
    /// The on-disk store failed.
    #[error("cluster store: {0}")]
    Store(#[from] sled::Error),
    /// Encoding of persisted state failed.
    #[error("cluster store encoding: {0}")]
    Encoding(#[from] serde_json::Error),
    /// TLS setup or handshake failure.
    #[error("cluster TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Certificate generation failure.
    #[error("cluster certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// Socket-level failure.
    #[error("cluster I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Binding a listening port failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The cluster task has stopped.
    #[error("cluster service stopped")]
    Stopped,
}
