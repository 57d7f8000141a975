//! TLS 1.3 (rustls, ring provider) for both cluster ports, and the cluster CA (rcgen).
//!
//! * Port 4369 (membership/join): the server shows any certificate; the client checks only
//!   its handshake signature ([`AnyServerCert`]). Who is on the other end is proven by the
//!   PAKE bound to the TLS exporter ([`crate::join`]), not by the certificate.
//! * Port 9100 (replication): mutual TLS, both sides pinned to the cluster CA, the server
//!   name checked against the member address.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::Error;

/// Material that makes a host a member: the cluster CA and its own certificate.
#[derive(Clone)]
pub struct Credentials {
    /// Cluster CA certificate (trust anchor of the replication links).
    pub ca_cert: CertificateDer<'static>,
    /// Cluster CA key (PKCS#8 PEM), shared with joiners so any member can admit new ones.
    pub ca_key_pem: String,
    /// This member's certificate, signed by the CA, SAN = member address.
    pub cert: CertificateDer<'static>,
    /// This member's key (PKCS#8 DER).
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn ca_params() -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "headend ipsec-ddns cluster CA");
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

/// Create a new cluster CA ("Creating new ipsec-ddns cluster"); returns (cert DER, key PEM).
pub fn new_ca() -> Result<(CertificateDer<'static>, String), Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = ca_params()?.self_signed(&key)?;
    Ok((cert.der().clone(), key.serialize_pem()))
}

/// Issue this member's certificate from the CA key.
pub fn issue_member(
    ca_cert: CertificateDer<'static>,
    ca_key_pem: &str,
    member: &str,
) -> Result<Credentials, Error> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    // Same subject and key as the stored CA certificate: signatures chain to it.
    let issuer = ca_params()?.self_signed(&ca_key)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::new(vec![member.to_owned()])?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, member);
    p.use_authority_key_identifier_extension = true;
    let cert = p.signed_by(&key, &issuer, &ca_key)?;
    Ok(Credentials {
        ca_cert,
        ca_key_pem: ca_key_pem.to_owned(),
        cert: cert.der().clone(),
        key: key.serialize_der(),
    })
}

fn key_der(c: &Credentials) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key.clone()))
}

fn roots(c: &Credentials) -> Result<Arc<RootCertStore>, Error> {
    let mut r = RootCertStore::empty();
    r.add(c.ca_cert.clone())?;
    Ok(Arc::new(r))
}

/// Server side of a replication link: TLS 1.3, client certificate required, CA-pinned.
pub fn replication_server(c: &Credentials) -> Result<Arc<ServerConfig>, Error> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(c)?, provider())
            .build()
            .map_err(|e| Error::InvalidConfig(format!("client verifier: {e}")))?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![c.cert.clone()], key_der(c))?;
    Ok(Arc::new(cfg))
}

/// Client side of a replication link: TLS 1.3, presents the member certificate, accepts only
/// a server certificate from the cluster CA naming the dialled member.
pub fn replication_client(c: &Credentials) -> Result<Arc<ClientConfig>, Error> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(c)?)
        .with_client_auth_cert(vec![c.cert.clone()], key_der(c))?;
    Ok(Arc::new(cfg))
}

/// Server side of the join port: shows the member certificate, or a throw-away one before
/// this host has joined.
pub fn join_server(c: Option<&Credentials>) -> Result<Arc<ServerConfig>, Error> {
    let (cert, key) = match c {
        Some(c) => (c.cert.clone(), key_der(c)),
        None => {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let cert =
                CertificateParams::new(vec!["ipsec-ddns-join".to_owned()])?.self_signed(&key)?;
            (
                cert.der().clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
        }
    };
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    Ok(Arc::new(cfg))
}

/// Client side of the join port.
pub fn join_client() -> Result<Arc<ClientConfig>, Error> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider())))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Accepts any server certificate but still checks the handshake signature. Safe only
/// because the join protocol authenticates the session by a PAKE bound to the exporter.
#[derive(Debug)]
pub struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The member address a (CA-verified) client certificate is valid for must be `member`.
pub fn cert_names_member(cert: &CertificateDer<'_>, member: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(member) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

/// Server name to dial a member by.
pub fn server_name(member: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(member.to_owned())
        .map_err(|_| Error::InvalidConfig(format!("{member:?} is not an address or host name")))
}
