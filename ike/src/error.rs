//! The engine's one error type (RFC 7296 2.21 error handling).
//!
//! Variants fall into three kinds, as in rustls: the peer misbehaved, the peer is
//! incompatible with our configuration, or a message was malformed. [`ErrorKind`] says
//! which; `TryFrom<&Error> for NotifyType` says which notify (if any) answers it.
use crate::message::NotifyType;

/// Everything that can go wrong in the engine.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    // --- malformed (RFC 7296 2.21.2: INVALID_SYNTAX) ---
    #[error("message truncated: need {needed} octets, have {have}")]
    Truncated { needed: usize, have: usize },
    #[error("length field {field} is inconsistent: {detail}")]
    BadLength { field: &'static str, detail: String },
    #[error("message of {0} octets exceeds the limit")]
    Oversized(usize),
    #[error("too many payloads or nested structures ({0})")]
    TooMany(&'static str),
    #[error("invalid {field}: {detail}")]
    InvalidField { field: &'static str, detail: String },
    #[error("unsupported critical payload type {0}")]
    UnsupportedCriticalPayload(u8),
    #[error("IKE major version {0} is not supported")]
    InvalidMajorVersion(u8),

    // --- peer misbehaved ---
    #[error("integrity check failed")]
    IntegrityCheckFailed,
    #[error("authentication failed: {0}")]
    AuthenticationFailed(String),
    /// Certificate authentication refused (issue 7): answered with AUTHENTICATION_FAILED.
    #[error("certificate authentication failed: {0}")]
    Certificate(crate::cert::CertReject),
    #[error("unexpected {0} in this state")]
    UnexpectedMessage(&'static str),
    #[error("unknown IKE SPI")]
    InvalidIkeSpi,
    #[error("unknown ESP SPI {0:08x}")]
    InvalidSpi(u32),
    #[error("message ID {got} outside the window (expected {expected})")]
    InvalidMessageId { got: u32, expected: u32 },
    #[error("missing {0} payload")]
    MissingPayload(&'static str),
    /// A rekey or delete names a CHILD SA we do not have (RFC 7296 2.25, 3.10.1).
    #[error("no CHILD SA with SPI {0:08x}")]
    ChildSaNotFound(u32),

    // --- incompatible ---
    #[error("no proposal chosen")]
    NoProposalChosen,
    #[error("key exchange group {got} not acceptable, want {want}")]
    InvalidKePayload { got: u16, want: u16 },
    #[error("traffic selectors unacceptable")]
    TsUnacceptable,
    #[error("no internal address available")]
    InternalAddressFailure,
    #[error("configuration payload required")]
    FailedCpRequired,

    // --- local conditions ---
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
    #[error("resource limit reached: {0}")]
    Limit(&'static str),
    #[error("temporary failure: {0}")]
    TemporaryFailure(&'static str),
    #[error("no such SA")]
    NoSuchSa,

    // --- ESP data plane (RFC 4303): a dropped packet, by reason ---
    #[error("ESP packet dropped: {0}")]
    Esp(crate::esp::EspDrop),
}

/// Which side is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Malformed,
    PeerMisbehaved,
    Incompatible,
    Local,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        use Error::*;
        match self {
            Truncated { .. }
            | BadLength { .. }
            | Oversized(_)
            | TooMany(_)
            | InvalidField { .. }
            | UnsupportedCriticalPayload(_)
            | InvalidMajorVersion(_) => ErrorKind::Malformed,
            IntegrityCheckFailed
            | AuthenticationFailed(_)
            | Certificate(_)
            | UnexpectedMessage(_)
            | InvalidIkeSpi
            | InvalidSpi(_)
            | InvalidMessageId { .. }
            | MissingPayload(_)
            | ChildSaNotFound(_) => ErrorKind::PeerMisbehaved,
            NoProposalChosen
            | InvalidKePayload { .. }
            | TsUnacceptable
            | InternalAddressFailure
            | FailedCpRequired => ErrorKind::Incompatible,
            Crypto(_) | Limit(_) | TemporaryFailure(_) | NoSuchSa => ErrorKind::Local,
            Esp(d) => d.kind(),
        }
    }

    /// A short stable label for counters and metrics.
    pub fn label(&self) -> &'static str {
        use Error::*;
        match self {
            Truncated { .. } => "truncated",
            BadLength { .. } => "bad_length",
            Oversized(_) => "oversized",
            TooMany(_) => "too_many",
            InvalidField { .. } => "invalid_field",
            UnsupportedCriticalPayload(_) => "unsupported_critical",
            InvalidMajorVersion(_) => "invalid_major_version",
            IntegrityCheckFailed => "integrity",
            AuthenticationFailed(_) => "auth_failed",
            Certificate(r) => r.label(),
            UnexpectedMessage(_) => "unexpected",
            InvalidIkeSpi => "invalid_ike_spi",
            InvalidSpi(_) => "invalid_spi",
            InvalidMessageId { .. } => "invalid_message_id",
            MissingPayload(_) => "missing_payload",
            ChildSaNotFound(_) => "child_sa_not_found",
            NoProposalChosen => "no_proposal",
            InvalidKePayload { .. } => "invalid_ke",
            TsUnacceptable => "ts_unacceptable",
            InternalAddressFailure => "no_address",
            FailedCpRequired => "cp_required",
            Crypto(_) => "crypto",
            Limit(_) => "limit",
            TemporaryFailure(_) => "temporary",
            NoSuchSa => "no_such_sa",
            Esp(d) => d.label(),
        }
    }
}

/// The notify that answers an error in a response, where RFC 7296 says one is sent.
/// Errors with no notify (dropped silently, e.g. an integrity failure) return `Err(())`.
impl TryFrom<&Error> for NotifyType {
    type Error = ();
    fn try_from(e: &Error) -> Result<Self, ()> {
        use Error::*;
        Ok(match e {
            Truncated { .. }
            | BadLength { .. }
            | TooMany(_)
            | InvalidField { .. }
            | MissingPayload(_) => NotifyType::INVALID_SYNTAX,
            UnsupportedCriticalPayload(_) => NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD,
            InvalidMajorVersion(_) => NotifyType::INVALID_MAJOR_VERSION,
            AuthenticationFailed(_) | Certificate(_) => NotifyType::AUTHENTICATION_FAILED,
            InvalidSpi(_) => NotifyType::INVALID_SPI,
            NoProposalChosen => NotifyType::NO_PROPOSAL_CHOSEN,
            InvalidKePayload { .. } => NotifyType::INVALID_KE_PAYLOAD,
            TsUnacceptable => NotifyType::TS_UNACCEPTABLE,
            InternalAddressFailure => NotifyType::INTERNAL_ADDRESS_FAILURE,
            FailedCpRequired => NotifyType::FAILED_CP_REQUIRED,
            TemporaryFailure(_) => NotifyType::TEMPORARY_FAILURE,
            InvalidMessageId { .. } => NotifyType::INVALID_MESSAGE_ID,
            InvalidIkeSpi => NotifyType::INVALID_IKE_SPI,
            ChildSaNotFound(_) => NotifyType::CHILD_SA_NOT_FOUND,
            Oversized(_) | IntegrityCheckFailed | UnexpectedMessage(_) | Crypto(_) | Limit(_)
            | NoSuchSa | Esp(_) => return Err(()),
        })
    }
}
