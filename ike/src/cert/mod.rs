//! Certificate authentication for IKE_AUTH (RFC 7296 2.15, 3.6, 3.7, 3.8; RFC 7427;
//! RFC 4754) and X.509 path validation (RFC 5280 6.1, simplified: no policies, no name
//! constraints).
//!
//! [`CertAuth`] holds the trusted CA certificates, our own certificate chain and key, and
//! the current CRL set. It is shared (`Arc`) between the engine configuration and the
//! driver, which swaps the CRL set with [`CertAuth::set_crls`] when the files change.
//! The engine never reads files or clocks: certificates, keys and CRLs come in as DER
//! and the wall-clock time comes from the driver (`Endpoint::set_wall_clock`).
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509Name};
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::time::ASN1Time;

use crate::error::Error;
use crate::event::Identity;
use crate::message::{AuthMethod, Payload};

mod sig;

pub use sig::{
    RsaPadding, SigningKey, AUTH_DIGITAL_SIGNATURE, AUTH_ECDSA_256, AUTH_ECDSA_384, AUTH_RSA_SIG,
    HASH_IDENTITY, HASH_SHA2_256, HASH_SHA2_384, HASH_SHA2_512,
};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

/// Certificate encoding "X.509 Certificate - Signature" (RFC 7296 3.6).
pub const CERT_X509_SIGNATURE: u8 = 4;
/// At most this many CERT payloads are looked at (end entity plus intermediates).
pub const MAX_PEER_CERTS: usize = 8;
/// Longest accepted path: end entity, intermediates, trust anchor.
pub const MAX_PATH_DEPTH: usize = 8;

/// Why a peer's certificate authentication was refused. Each one is answered with
/// AUTHENTICATION_FAILED (RFC 7296 2.21.2) and counted under [`CertReject::label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CertReject {
    /// No CERT payload of encoding 4 with the AUTH payload.
    NoCertificate,
    /// A certificate, CRL or AUTH payload does not parse.
    Malformed,
    /// A certificate in the path is past its notAfter.
    Expired,
    /// A certificate in the path is before its notBefore.
    NotYetValid,
    /// No configured CA issued the chain.
    UnknownCa,
    /// An issuer in the path lacks basicConstraints cA (RFC 5280 4.2.1.9).
    NotACa,
    /// A pathLenConstraint in the path is exceeded (RFC 5280 4.2.1.9).
    PathLenExceeded,
    /// keyUsage forbids the use (digitalSignature for the end entity, keyCertSign for CAs;
    /// RFC 5280 4.2.1.3).
    KeyUsage,
    /// A CRL of the issuing CA lists the certificate.
    Revoked,
    /// The IKE identity is neither the subject DN nor a subjectAltName of the certificate.
    IdentityMismatch,
    /// A certificate signature or the AUTH signature does not verify.
    BadSignature,
    /// Signature, hash or key algorithm not supported (SHA-1 certificates included).
    UnsupportedAlgorithm,
    /// The AUTH method does not fit the certificate's key (e.g. ECDSA_256 with RSA).
    KeyMismatch,
    /// The path is longer than [`MAX_PATH_DEPTH`] or the peer sent too many certificates.
    ChainTooLong,
    /// The driver never passed the wall-clock time: validity cannot be checked.
    NoWallClock,
}

impl CertReject {
    /// A short stable label for counters and logs.
    pub fn label(self) -> &'static str {
        use CertReject::*;
        match self {
            NoCertificate => "cert_missing",
            Malformed => "cert_malformed",
            Expired => "cert_expired",
            NotYetValid => "cert_not_yet_valid",
            UnknownCa => "cert_unknown_ca",
            NotACa => "cert_not_a_ca",
            PathLenExceeded => "cert_path_len",
            KeyUsage => "cert_key_usage",
            Revoked => "cert_revoked",
            IdentityMismatch => "cert_identity_mismatch",
            BadSignature => "cert_bad_signature",
            UnsupportedAlgorithm => "cert_unsupported_algorithm",
            KeyMismatch => "cert_key_mismatch",
            ChainTooLong => "cert_chain_too_long",
            NoWallClock => "cert_no_wall_clock",
        }
    }
}

impl std::fmt::Display for CertReject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use CertReject::*;
        f.write_str(match self {
            NoCertificate => "no certificate sent",
            Malformed => "malformed certificate or signature",
            Expired => "certificate expired",
            NotYetValid => "certificate not yet valid",
            UnknownCa => "certificate not issued by a trusted CA",
            NotACa => "issuer is not a CA",
            PathLenExceeded => "path length constraint exceeded",
            KeyUsage => "key usage does not allow this use",
            Revoked => "certificate revoked",
            IdentityMismatch => "identity does not match the certificate",
            BadSignature => "signature does not verify",
            UnsupportedAlgorithm => "unsupported algorithm",
            KeyMismatch => "AUTH method does not match the certificate key",
            ChainTooLong => "certificate chain too long",
            NoWallClock => "no wall-clock time to check validity",
        })
    }
}

/// What a successful validation learned about the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The first commonName of the end-entity subject (seed 003 ch. 4 gateway IDs).
    pub cn: Option<String>,
    /// The end-entity subject DN, DER.
    pub subject: Vec<u8>,
}

/// Trusted CAs, own credential and CRLs for certificate authentication.
pub struct CertAuth {
    /// Our certificate first, then the intermediates to send with it.
    chain: Vec<Vec<u8>>,
    key: Option<SigningKey>,
    /// How an RSA `key` signs AUTH payloads.
    rsa_padding: RsaPadding,
    cas: Vec<Vec<u8>>,
    /// SHA-1 of each CA's SubjectPublicKeyInfo, concatenated: the CERTREQ data (3.7).
    certreq: Vec<u8>,
    crls: RwLock<Arc<Vec<Vec<u8>>>>,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
}

impl std::fmt::Debug for CertAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuth")
            .field("chain", &self.chain.len())
            .field("key", &self.key)
            .field("rsa_padding", &self.rsa_padding)
            .field("cas", &self.cas.len())
            .field("crls", &self.crls.read().map(|c| c.len()).unwrap_or(0))
            .finish()
    }
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, CertReject> {
    match X509Certificate::from_der(der) {
        Ok(([], c)) => Ok(c),
        _ => Err(CertReject::Malformed),
    }
}

fn config_err(what: &'static str) -> Error {
    Error::InvalidField {
        field: "certificate configuration",
        detail: what.into(),
    }
}

impl CertAuth {
    /// Trust the CA certificates `cas` (DER). Without an own credential this side can only
    /// verify peers; add one with [`CertAuth::with_own`].
    pub fn new(cas: Vec<Vec<u8>>) -> Result<Self, Error> {
        let mut certreq = Vec::with_capacity(20 * cas.len());
        for der in &cas {
            let c = parse_cert(der).map_err(|_| config_err("a CA certificate does not parse"))?;
            let h =
                ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, c.public_key().raw);
            certreq.extend_from_slice(h.as_ref());
        }
        Ok(Self {
            chain: Vec::new(),
            key: None,
            rsa_padding: RsaPadding::default(),
            cas,
            certreq,
            crls: RwLock::new(Arc::new(Vec::new())),
            rejected: Mutex::new(BTreeMap::new()),
        })
    }

    /// Our certificate (`chain[0]`), the intermediates sent along with it, and the private
    /// key (PKCS#8 DER, or PKCS#1 DER for RSA). Fails if the key is not the certificate's.
    pub fn with_own(mut self, chain: Vec<Vec<u8>>, key_der: &[u8]) -> Result<Self, Error> {
        let key = SigningKey::from_der(key_der)?;
        let ee = chain
            .first()
            .ok_or_else(|| config_err("no own certificate"))?;
        for der in &chain {
            parse_cert(der).map_err(|_| config_err("an own certificate does not parse"))?;
        }
        let c = parse_cert(ee).map_err(|_| config_err("own certificate does not parse"))?;
        if c.public_key().subject_public_key.data.as_ref() != key.public_key() {
            return Err(config_err("private key does not belong to the certificate"));
        }
        self.chain = chain;
        self.key = Some(key);
        Ok(self)
    }

    /// Signs with RSASSA-PSS instead of PKCS#1 v1.5 when our key is RSA (RFC 7427 3,
    /// RFC 8247 3.2); the default stays PKCS#1 v1.5, which every peer verifies.
    pub fn with_rsa_padding(mut self, rsa_padding: RsaPadding) -> Self {
        self.rsa_padding = rsa_padding;
        self
    }

    /// Replaces the CRL set (DER CRLs) at once; validations already running keep the old
    /// one. A CRL counts only for the CA whose key signed it, checked at use.
    pub fn set_crls(&self, crls: Vec<Vec<u8>>) -> Result<(), Error> {
        for der in &crls {
            match CertificateRevocationList::from_der(der) {
                Ok(([], _)) => {}
                _ => return Err(config_err("a CRL does not parse")),
            }
        }
        let mut g = self.crls.write().unwrap_or_else(|p| p.into_inner());
        *g = Arc::new(crls);
        Ok(())
    }

    /// Number of CRLs in the current set.
    pub fn crl_count(&self) -> usize {
        self.crls.read().map(|c| c.len()).unwrap_or(0)
    }

    /// Refusals so far, by [`CertReject::label`].
    pub fn rejections(&self) -> BTreeMap<&'static str, u64> {
        self.rejected.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// The subject DN of our certificate as an IKE identity (ID_DER_ASN1_DN), the usual
    /// local identity of a certificate peer.
    pub fn own_dn(&self) -> Option<Identity> {
        let c = parse_cert(self.chain.first()?).ok()?;
        Some(Identity::DerAsn1Dn(c.subject().as_raw().to_vec()))
    }

    /// The CERTREQ payload naming our CAs (RFC 7296 3.7), if any are configured.
    pub fn certreq(&self) -> Option<Payload> {
        (!self.certreq.is_empty()).then(|| Payload::CertReq {
            encoding: CERT_X509_SIGNATURE,
            data: self.certreq.clone(),
        })
    }

    /// Our CERT payloads followed by the AUTH payload over `octets` (RFC 7427).
    pub fn sign(&self, octets: &[u8]) -> Result<Vec<Payload>, Error> {
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| Error::AuthenticationFailed("no own certificate configured".into()))?;
        let mut out: Vec<Payload> = self
            .chain
            .iter()
            .map(|c| Payload::Cert {
                encoding: CERT_X509_SIGNATURE,
                data: c.clone(),
            })
            .collect();
        out.push(Payload::Auth {
            method: AUTH_DIGITAL_SIGNATURE,
            data: key.sign_auth(octets, self.rsa_padding)?,
        });
        Ok(out)
    }

    /// Validates the peer: its certificates (the CERT payloads of `payloads`, end entity
    /// first) up to a configured CA at `wall_clock`, revocation, that `id` names the end
    /// entity, and the AUTH signature (`method`, `data`) over its signed `octets`.
    /// A refusal is counted and returned as [`Error::Certificate`].
    pub fn verify(
        &self,
        wall_clock: Option<SystemTime>,
        id: &Identity,
        payloads: &[Payload],
        method: AuthMethod,
        data: &[u8],
        octets: &[u8],
    ) -> Result<PeerCert, Error> {
        let certs: Vec<&[u8]> = payloads
            .iter()
            .filter_map(|p| match p {
                Payload::Cert {
                    encoding: CERT_X509_SIGNATURE,
                    data,
                } => Some(data.as_slice()),
                _ => None,
            })
            .collect();
        self.verify_certs(wall_clock, id, &certs, method, data, octets)
            .map_err(|r| {
                if let Ok(mut m) = self.rejected.lock() {
                    *m.entry(r.label()).or_default() += 1;
                }
                Error::Certificate(r)
            })
    }

    fn verify_certs(
        &self,
        wall_clock: Option<SystemTime>,
        id: &Identity,
        certs: &[&[u8]],
        method: AuthMethod,
        data: &[u8],
        octets: &[u8],
    ) -> Result<PeerCert, CertReject> {
        let (ee_der, inter) = certs.split_first().ok_or(CertReject::NoCertificate)?;
        if certs.len() > MAX_PEER_CERTS {
            return Err(CertReject::ChainTooLong);
        }
        let now = wall_clock.ok_or(CertReject::NoWallClock)?;
        let secs = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).map_err(|_| CertReject::NoWallClock)?,
            Err(_) => return Err(CertReject::NoWallClock),
        };
        let now = ASN1Time::from_timestamp(secs).map_err(|_| CertReject::NoWallClock)?;
        let ee = parse_cert(ee_der)?;
        // The AUTH signature first: it is cheap to refuse a peer that cannot prove
        // possession, and it fails the same way whatever the chain.
        sig::verify_auth_signature(ee.public_key(), method, data, octets)?;
        identity_matches(&ee, id)?;
        check_validity(&ee, now)?;
        if let Ok(Some(ku)) = ee.key_usage() {
            if !ku.value.digital_signature() {
                return Err(CertReject::KeyUsage);
            }
        }
        let inter: Vec<X509Certificate<'_>> = inter
            .iter()
            .map(|d| parse_cert(d))
            .collect::<Result<_, _>>()?;
        let cas: Vec<X509Certificate<'_>> =
            self.cas.iter().filter_map(|d| parse_cert(d).ok()).collect();
        let crls_arc = self.crls.read().map(|c| Arc::clone(&c)).unwrap_or_default();
        let crls: Vec<CertificateRevocationList<'_>> = crls_arc
            .iter()
            .filter_map(|d| CertificateRevocationList::from_der(d).ok().map(|(_, c)| c))
            .collect();
        validate_path(&ee, &inter, &cas, &crls, now)?;
        let cn = ee
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned);
        Ok(PeerCert {
            cn,
            subject: ee.subject().as_raw().to_vec(),
        })
    }
}

/// The DER objects in a file's contents: every PEM block (RFC 7468) when the text has
/// any, else the whole input as one DER object. At most [`MAX_PEM_BLOCKS`] blocks.
pub fn pem_or_der(data: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let text_start = data
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    if !data[text_start..].starts_with(b"-----BEGIN") {
        return Ok(vec![data.to_vec()]);
    }
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(data) {
        let block = block.map_err(|_| config_err("bad PEM block"))?;
        if out.len() == MAX_PEM_BLOCKS {
            return Err(config_err("too many PEM blocks"));
        }
        out.push(block.contents);
    }
    if out.is_empty() {
        return Err(config_err("no PEM block"));
    }
    Ok(out)
}

/// Bound on PEM blocks read from one file (CA bundles).
pub const MAX_PEM_BLOCKS: usize = 1024;

fn check_validity(c: &X509Certificate<'_>, now: ASN1Time) -> Result<(), CertReject> {
    let v = c.validity();
    if now < v.not_before {
        return Err(CertReject::NotYetValid);
    }
    if now > v.not_after {
        return Err(CertReject::Expired);
    }
    Ok(())
}

/// RFC 5280 6.1: from the end entity up through the peer's intermediates to a trust
/// anchor. Each issuer must be a CA allowed to sign certificates, valid now, with a path
/// length constraint that admits the intermediates below it; each certificate must not be
/// on a CRL signed by its issuer.
fn validate_path(
    ee: &X509Certificate<'_>,
    inter: &[X509Certificate<'_>],
    cas: &[X509Certificate<'_>],
    crls: &[CertificateRevocationList<'_>],
    now: ASN1Time,
) -> Result<(), CertReject> {
    let mut used = vec![false; inter.len()];
    let mut current = ee;
    // Intermediates between the current certificate and the end entity (RFC 5280 6.1.4 (m)).
    let mut below = 0u32;
    for _ in 0..MAX_PATH_DEPTH {
        let mut name_matched = None;
        for ca in cas {
            if ca.subject().as_raw() != current.issuer().as_raw() {
                continue;
            }
            match issued_by(current, ca) {
                Ok(()) => {
                    check_issuer(ca, below, now)?;
                    check_revocation(current, ca, crls)?;
                    return Ok(());
                }
                Err(e) => name_matched = Some(e),
            }
        }
        let mut next = None;
        for (i, c) in inter.iter().enumerate() {
            if used[i] || c.subject().as_raw() != current.issuer().as_raw() {
                continue;
            }
            match issued_by(current, c) {
                Ok(()) => {
                    next = Some(i);
                    break;
                }
                Err(e) => name_matched = Some(e),
            }
        }
        let Some(i) = next else {
            return Err(name_matched.unwrap_or(CertReject::UnknownCa));
        };
        used[i] = true;
        let issuer = &inter[i];
        check_issuer(issuer, below, now)?;
        check_revocation(current, issuer, crls)?;
        // Self-issued certificates do not count against path lengths (6.1.4 (l)).
        if issuer.subject().as_raw() != issuer.issuer().as_raw() {
            below += 1;
        }
        current = issuer;
    }
    Err(CertReject::ChainTooLong)
}

fn issued_by(c: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Result<(), CertReject> {
    sig::verify_x509(
        issuer.public_key(),
        &c.signature_algorithm,
        c.tbs_certificate.as_ref(),
        &c.signature_value.data,
    )
}

fn check_issuer(ca: &X509Certificate<'_>, below: u32, now: ASN1Time) -> Result<(), CertReject> {
    check_validity(ca, now)?;
    let bc = ca.basic_constraints().map_err(|_| CertReject::Malformed)?;
    let Some(bc) = bc else {
        return Err(CertReject::NotACa);
    };
    if !bc.value.ca {
        return Err(CertReject::NotACa);
    }
    if let Some(max) = bc.value.path_len_constraint {
        if below > max {
            return Err(CertReject::PathLenExceeded);
        }
    }
    if let Ok(Some(ku)) = ca.key_usage() {
        if !ku.value.key_cert_sign() {
            return Err(CertReject::KeyUsage);
        }
    }
    Ok(())
}

fn check_revocation(
    c: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
    crls: &[CertificateRevocationList<'_>],
) -> Result<(), CertReject> {
    for crl in crls {
        if crl.issuer().as_raw() != issuer.subject().as_raw() {
            continue;
        }
        // A CRL counts only if the issuer's key signed it (RFC 5280 6.3.3 (f)).
        if sig::verify_x509(
            issuer.public_key(),
            &crl.signature_algorithm,
            crl.tbs_cert_list.as_ref(),
            &crl.signature_value.data,
        )
        .is_err()
        {
            tracing::warn!("ignoring a CRL whose signature does not verify with its issuer");
            continue;
        }
        if crl
            .iter_revoked_certificates()
            .any(|r| r.raw_serial() == c.raw_serial())
        {
            return Err(CertReject::Revoked);
        }
    }
    Ok(())
}

/// RFC 7296 3.5 / RFC 4945 3.1: the identity must be the subject DN (ID_DER_ASN1_DN) or
/// a subjectAltName of the same type (ID_FQDN, ID_RFC822_ADDR, ID_IPV4/6_ADDR).
fn identity_matches(c: &X509Certificate<'_>, id: &Identity) -> Result<(), CertReject> {
    let sans = || -> Vec<GeneralName<'_>> {
        match c.subject_alternative_name() {
            Ok(Some(s)) => s.value.general_names.clone(),
            _ => Vec::new(),
        }
    };
    let ok = match id {
        Identity::DerAsn1Dn(dn) => {
            dn.as_slice() == c.subject().as_raw() || same_dn(dn, c.subject())
        }
        Identity::Fqdn(f) => sans()
            .iter()
            .any(|g| matches!(g, GeneralName::DNSName(n) if n.eq_ignore_ascii_case(f))),
        Identity::Rfc822(e) => sans()
            .iter()
            .any(|g| matches!(g, GeneralName::RFC822Name(n) if n.eq_ignore_ascii_case(e))),
        Identity::Ipv4(a) => sans()
            .iter()
            .any(|g| matches!(g, GeneralName::IPAddress(b) if *b == a.octets())),
        Identity::Ipv6(a) => sans()
            .iter()
            .any(|g| matches!(g, GeneralName::IPAddress(b) if *b == a.octets())),
        Identity::KeyId(_) => false,
    };
    if ok {
        Ok(())
    } else {
        Err(CertReject::IdentityMismatch)
    }
}

/// Compares two DNs attribute by attribute (type and string value), so a DN re-encoded
/// with other string types still matches.
fn same_dn(der: &[u8], subject: &X509Name<'_>) -> bool {
    let Ok((rest, other)) = X509Name::from_der(der) else {
        return false;
    };
    if !rest.is_empty() {
        return false;
    }
    let a: Vec<_> = other.iter_attributes().collect();
    let b: Vec<_> = subject.iter_attributes().collect();
    a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| {
            x.attr_type() == y.attr_type()
                && matches!((x.as_str(), y.as_str()), (Ok(p), Ok(q)) if p == q)
        })
}
