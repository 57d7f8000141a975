//! Authentication of the IKE_AUTH exchange (RFC 7296 2.15).
//!
//! This is the seam for certificates (issue 7): [`auth_payload`] and [`verify_auth`]
//! dispatch on [`AuthConfig`]; a certificate arm adds CERT/CERTREQ handling and signature
//! methods (RFC 7427) here without touching the state machine.
use std::time::SystemTime;

use crate::cert::{HASH_IDENTITY, HASH_SHA2_256, HASH_SHA2_384, HASH_SHA2_512};
use crate::config::{AuthConfig, PrfAlg};
use crate::crypto::{auth_matches, psk_auth};
use crate::error::Error;
use crate::event::Identity;
use crate::message::{AuthMethod, Notify, NotifyType, Payload, ProtocolId};

/// The key shared with `peer` (by identity, else the default), RFC 7296 2.15.
fn psk_for<'a>(auth: &'a AuthConfig, peer: Option<&Identity>) -> Option<&'a [u8]> {
    match auth {
        AuthConfig::Psk(store) => peer
            .and_then(|p| store.by_identity.get(p))
            .or(store.default.as_ref())
            .map(Vec::as_slice),
        AuthConfig::Cert(_) => None,
    }
}

/// Payloads for our IKE_SA_INIT message: with certificates, SIGNATURE_HASH_ALGORITHMS
/// (RFC 7427 4) and, from the responder, a CERTREQ naming our CAs (RFC 7296 3.7).
pub(crate) fn init_payloads(auth: &AuthConfig, responder: bool) -> Vec<Payload> {
    let AuthConfig::Cert(c) = auth else {
        return Vec::new();
    };
    let data = [HASH_SHA2_256, HASH_SHA2_384, HASH_SHA2_512, HASH_IDENTITY]
        .iter()
        .flat_map(|h| h.to_be_bytes())
        .collect();
    let mut v = vec![Payload::Notify(Notify {
        protocol: ProtocolId::Other(0),
        spi: vec![],
        kind: NotifyType::SIGNATURE_HASH_ALGORITHMS,
        data,
    })];
    if responder {
        v.extend(c.certreq());
    }
    v
}

/// The initiator's CERTREQ in IKE_AUTH (RFC 7296 1.2), with certificates.
pub(crate) fn auth_certreq(auth: &AuthConfig) -> Option<Payload> {
    match auth {
        AuthConfig::Cert(c) => c.certreq(),
        AuthConfig::Psk(_) => None,
    }
}

/// Our AUTH payload over `signed_octets` (the octets of RFC 7296 2.15 for our side),
/// preceded by our CERT payloads with certificates. `peer` selects the shared key: PSKs
/// are per pair of peers.
pub(crate) fn auth_payloads(
    auth: &AuthConfig,
    peer: Option<&Identity>,
    prf: PrfAlg,
    signed_octets: &[u8],
) -> Result<Vec<Payload>, Error> {
    if let AuthConfig::Cert(c) = auth {
        return c.sign(signed_octets);
    }
    let psk = psk_for(auth, peer)
        .ok_or_else(|| Error::AuthenticationFailed("no pre-shared key for this peer".into()))?;
    Ok(vec![Payload::Auth {
        method: AuthMethod::SHARED_KEY_MIC,
        data: psk_auth(prf, psk, signed_octets),
    }])
}

/// Verifies the peer's AUTH payload (`method`, `data`) over its signed octets; with
/// certificates also the CERT payloads among `payloads` at `wall_clock`. Returns the CN of
/// a certificate peer's subject.
#[allow(clippy::too_many_arguments)]
pub(crate) fn verify_auth(
    auth: &AuthConfig,
    peer: &Identity,
    prf: PrfAlg,
    signed_octets: &[u8],
    method: AuthMethod,
    data: &[u8],
    payloads: &[Payload],
    wall_clock: Option<SystemTime>,
) -> Result<Option<String>, Error> {
    if let AuthConfig::Cert(c) = auth {
        let p = c.verify(wall_clock, peer, payloads, method, data, signed_octets)?;
        return Ok(p.cn);
    }
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
    Ok(None)
}
