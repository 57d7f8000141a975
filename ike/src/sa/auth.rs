//! Authentication of the IKE_AUTH exchange (RFC 7296 2.15).
//!
//! This is the seam for certificates (issue 7): [`auth_payload`] and [`verify_auth`]
//! dispatch on [`AuthConfig`]; a certificate arm adds CERT/CERTREQ handling and signature
//! methods (RFC 7427) here without touching the state machine.
use crate::config::{AuthConfig, PrfAlg};
use crate::crypto::{auth_matches, psk_auth};
use crate::error::Error;
use crate::event::Identity;
use crate::message::{AuthMethod, Payload};

/// The key shared with `peer` (by identity, else the default), RFC 7296 2.15.
fn psk_for<'a>(auth: &'a AuthConfig, peer: Option<&Identity>) -> Option<&'a [u8]> {
    match auth {
        AuthConfig::Psk(store) => peer
            .and_then(|p| store.by_identity.get(p))
            .or(store.default.as_ref())
            .map(Vec::as_slice),
    }
}

/// Our AUTH payload over `signed_octets` (the octets of RFC 7296 2.15 for our side).
/// `peer` selects the shared key: PSKs are per pair of peers.
pub(crate) fn auth_payload(
    auth: &AuthConfig,
    peer: Option<&Identity>,
    prf: PrfAlg,
    signed_octets: &[u8],
) -> Result<Payload, Error> {
    let psk = psk_for(auth, peer)
        .ok_or_else(|| Error::AuthenticationFailed("no pre-shared key for this peer".into()))?;
    Ok(Payload::Auth {
        method: AuthMethod::SHARED_KEY_MIC,
        data: psk_auth(prf, psk, signed_octets),
    })
}

/// Verifies the peer's AUTH payload (`method`, `data`) over its signed octets.
pub(crate) fn verify_auth(
    auth: &AuthConfig,
    peer: &Identity,
    prf: PrfAlg,
    signed_octets: &[u8],
    method: AuthMethod,
    data: &[u8],
) -> Result<(), Error> {
    if method != AuthMethod::SHARED_KEY_MIC {
        return Err(Error::AuthenticationFailed(format!(
            "auth method {} not configured",
            method.0
        )));
    }
    let psk = psk_for(auth, Some(peer))
        .ok_or_else(|| Error::AuthenticationFailed(format!("no pre-shared key for {peer}")))?;
    let want = psk_auth(prf, psk, signed_octets);
    if !auth_matches(&want, data) {
        return Err(Error::AuthenticationFailed(format!(
            "AUTH of {peer} does not verify"
        )));
    }
    Ok(())
}
