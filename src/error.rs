//! The daemon's one error type.
use std::path::PathBuf;

/// Everything the daemon can fail with outside the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration file failed to parse or validate; the message names file, line and key.
    #[error("{0}")]
    Config(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("IKE engine: {0}")]
    Ike(#[from] ike::Error),
    #[error("{0}")]
    Other(String),
}
