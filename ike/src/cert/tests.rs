//! Certificate validation and signature tests on certificates made here with rcgen, and
//! engine-to-engine IKE_AUTH with certificates.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams,
    CertificateRevocationListParams, DistinguishedName, DnType, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber, SignatureAlgorithm,
};

use super::*;

const RSA2048_PKCS8: &[u8] = include_bytes!("testdata/rsa2048.pk8");

/// 2026-06-01T00:00:00Z.
fn june_2026() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_780_272_000)
}

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::OrganizationName, "headend test");
    d.push(DnType::CommonName, cn);
    d
}

fn ca_params(cn: &str, path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2040, 1, 1);
    p
}

fn root(cn: &str, path_len: Option<u8>) -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = ca_params(cn, path_len).self_signed(&key).unwrap();
    Ca { cert, key }
}

fn intermediate(parent: &Ca, cn: &str, params: Option<CertificateParams>) -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let p = params.unwrap_or_else(|| ca_params(cn, Some(0)));
    let cert = p.signed_by(&key, &parent.cert, &parent.key).unwrap();
    Ca { cert, key }
}

/// An end-entity certificate (CN `cn`, SAN dNSName `fqdn`) issued by `issuer`.
struct Ee {
    der: Vec<u8>,
    key_der: Vec<u8>,
}

fn ee_params(cn: &str, fqdn: &str, serial: u64) -> CertificateParams {
    let mut p = CertificateParams::new(vec![fqdn.to_string()]).unwrap();
    p.distinguished_name = dn(cn);
    p.serial_number = Some(SerialNumber::from(serial));
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = date_time_ymd(2025, 1, 1);
    p.not_after = date_time_ymd(2030, 1, 1);
    p
}

fn key_for(alg: &'static SignatureAlgorithm) -> KeyPair {
    if alg == &rcgen::PKCS_RSA_SHA256 {
        KeyPair::from_pkcs8_der_and_sign_algo(&RSA2048_PKCS8.into(), &rcgen::PKCS_RSA_SHA256)
            .unwrap()
    } else {
        KeyPair::generate_for(alg).unwrap()
    }
}

fn issue(issuer: &Ca, p: CertificateParams, alg: &'static SignatureAlgorithm) -> Ee {
    let key = key_for(alg);
    let cert = p.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
    Ee {
        der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    }
}

/// root -> intermediate -> end entity "router-1" / r1.example.net.
struct Pki {
    root: Ca,
    inter: Ca,
    ee: Ee,
}

fn pki(alg: &'static SignatureAlgorithm) -> Pki {
    pki_named(alg, "Test Root")
}

fn pki_named(alg: &'static SignatureAlgorithm, root_cn: &str) -> Pki {
    let root = root(root_cn, Some(1));
    let inter = intermediate(&root, "Test Intermediate", None);
    let ee = issue(&inter, ee_params("router-1", "r1.example.net", 7), alg);
    Pki { root, inter, ee }
}

fn verifier(p: &Pki) -> CertAuth {
    CertAuth::new(vec![p.root.der()]).unwrap()
}

fn signer(ee: &Ee, chain: &[Vec<u8>]) -> CertAuth {
    let mut c = vec![ee.der.clone()];
    c.extend_from_slice(chain);
    CertAuth::new(vec![])
        .unwrap()
        .with_own(c, &ee.key_der)
        .unwrap()
}

const OCTETS: &[u8] = b"RealMessage1 | Nr | prf(SK_p, IDi')";

/// Signs OCTETS as `ee` (sending the intermediate) and verifies as `v` under `id`.
fn check(v: &CertAuth, p: &Pki, id: &Identity, at: SystemTime) -> Result<PeerCert, Error> {
    let payloads = signer(&p.ee, &[p.inter.der()]).sign(OCTETS).unwrap();
    verify_payloads(v, id, &payloads, at)
}

fn verify_payloads(
    v: &CertAuth,
    id: &Identity,
    payloads: &[Payload],
    at: SystemTime,
) -> Result<PeerCert, Error> {
    let (method, data) = payloads
        .iter()
        .find_map(|p| match p {
            Payload::Auth { method, data } => Some((*method, data.clone())),
            _ => None,
        })
        .unwrap();
    v.verify(Some(at), id, payloads, method, &data, OCTETS)
}

fn fqdn() -> Identity {
    Identity::Fqdn("r1.example.net".into())
}

fn rejected(r: Result<PeerCert, Error>) -> CertReject {
    match r {
        Err(Error::Certificate(c)) => c,
        other => panic!("expected a certificate refusal, got {other:?}"),
    }
}

#[test]
fn ecdsa_rsa_ed25519_peers_through_an_intermediate_are_accepted_with_their_cn() {
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
        &rcgen::PKCS_RSA_SHA256,
    ] {
        let p = pki(alg);
        let v = verifier(&p);
        let got = check(&v, &p, &fqdn(), june_2026()).unwrap();
        assert_eq!(got.cn.as_deref(), Some("router-1"), "{alg:?}");
        // The AUTH payload is RFC 7427 Digital Signature.
        let payloads = signer(&p.ee, &[]).sign(OCTETS).unwrap();
        assert!(payloads.iter().any(
            |x| matches!(x, Payload::Auth { method, .. } if *method == AUTH_DIGITAL_SIGNATURE)
        ));
    }
}

#[test]
fn subject_dn_identity_matches_and_other_dns_do_not() {
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v = verifier(&p);
    let own = signer(&p.ee, &[]).own_dn().unwrap();
    assert!(check(&v, &p, &own, june_2026()).is_ok());
    let other = Identity::DerAsn1Dn(dn("router-2").into_name_der());
    assert_eq!(
        rejected(check(&v, &p, &other, june_2026())),
        CertReject::IdentityMismatch
    );
    for id in [
        Identity::Fqdn("r2.example.net".into()),
        Identity::Rfc822("router-1@example.net".into()),
        Identity::Ipv4(Ipv4Addr::new(192, 0, 2, 1)),
        Identity::KeyId(b"router-1".to_vec()),
    ] {
        assert_eq!(
            rejected(check(&v, &p, &id, june_2026())),
            CertReject::IdentityMismatch,
            "{id}"
        );
    }
}

/// rcgen's DistinguishedName has no public DER encoder; take it from a certificate.
trait NameDer {
    fn into_name_der(self) -> Vec<u8>;
}
impl NameDer for DistinguishedName {
    fn into_name_der(self) -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = self;
        let c = p.self_signed(&key).unwrap();
        let (_, x) = X509Certificate::from_der(c.der()).unwrap();
        x.subject().as_raw().to_vec()
    }
}

#[test]
fn ip_and_email_subject_alt_names_match_their_identity_types() {
    let root = root("Root", None);
    let mut p = ee_params("router-9", "r9.example.net", 9);
    p.subject_alt_names
        .push(SanType::IpAddress(IpAddr::from([192, 0, 2, 9])));
    p.subject_alt_names
        .push(SanType::Rfc822Name("r9@example.net".try_into().unwrap()));
    let ee = issue(&root, p, &rcgen::PKCS_ECDSA_P256_SHA256);
    let v = CertAuth::new(vec![root.der()]).unwrap();
    let payloads = signer(&ee, &[]).sign(OCTETS).unwrap();
    for id in [
        Identity::Ipv4(Ipv4Addr::new(192, 0, 2, 9)),
        Identity::Rfc822("R9@example.net".into()),
        Identity::Fqdn("R9.EXAMPLE.NET".into()),
    ] {
        assert!(
            verify_payloads(&v, &id, &payloads, june_2026()).is_ok(),
            "{id}"
        );
    }
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused() {
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v = verifier(&p);
    let y2031 = june_2026() + Duration::from_secs(5 * 365 * 86400);
    assert_eq!(rejected(check(&v, &p, &fqdn(), y2031)), CertReject::Expired);
    let y2024 = june_2026() - Duration::from_secs(2 * 365 * 86400);
    assert_eq!(
        rejected(check(&v, &p, &fqdn(), y2024)),
        CertReject::NotYetValid
    );
    // An expired intermediate fails the chain though the end entity is valid.
    let mut ip = ca_params("Old Intermediate", Some(0));
    ip.not_after = date_time_ymd(2026, 1, 1);
    let old = intermediate(&p.root, "", Some(ip));
    let ee = issue(
        &old,
        ee_params("router-1", "r1.example.net", 8),
        &rcgen::PKCS_ED25519,
    );
    let payloads = signer(&ee, &[old.der()]).sign(OCTETS).unwrap();
    assert_eq!(
        rejected(verify_payloads(&v, &fqdn(), &payloads, june_2026())),
        CertReject::Expired
    );
}

#[test]
fn unknown_ca_and_missing_intermediate_are_refused() {
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let stranger = root("Test Root", Some(1)); // same name, other key
    let v = CertAuth::new(vec![stranger.der()]).unwrap();
    assert_eq!(
        rejected(check(&v, &p, &fqdn(), june_2026())),
        CertReject::BadSignature
    );
    let other = root("Other Root", None);
    let v = CertAuth::new(vec![other.der()]).unwrap();
    assert_eq!(
        rejected(check(&v, &p, &fqdn(), june_2026())),
        CertReject::UnknownCa
    );
    // Right root, but the peer does not send the intermediate.
    let v = verifier(&p);
    let payloads = signer(&p.ee, &[]).sign(OCTETS).unwrap();
    assert_eq!(
        rejected(verify_payloads(&v, &fqdn(), &payloads, june_2026())),
        CertReject::UnknownCa
    );
    // Trusting the intermediate directly is enough.
    let v = CertAuth::new(vec![p.inter.der()]).unwrap();
    assert!(verify_payloads(&v, &fqdn(), &payloads, june_2026()).is_ok());
}

#[test]
fn revoked_certificates_are_refused_and_crls_can_be_swapped() {
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v = verifier(&p);
    let crl = |issuer: &Ca, serial: u64| {
        CertificateRevocationListParams {
            this_update: date_time_ymd(2026, 1, 1),
            next_update: date_time_ymd(2027, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time: date_time_ymd(2026, 1, 1),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer.cert, &issuer.key)
        .unwrap()
        .der()
        .to_vec()
    };
    assert!(check(&v, &p, &fqdn(), june_2026()).is_ok());
    // Another serial revoked: still fine.
    v.set_crls(vec![crl(&p.inter, 99)]).unwrap();
    assert!(check(&v, &p, &fqdn(), june_2026()).is_ok());
    v.set_crls(vec![crl(&p.inter, 7)]).unwrap();
    assert_eq!(
        rejected(check(&v, &p, &fqdn(), june_2026())),
        CertReject::Revoked
    );
    // The root revoking the intermediate fails the whole chain.
    let inter_serial = {
        let (_, c) = X509Certificate::from_der(p.inter.cert.der()).unwrap();
        c.raw_serial().to_vec()
    };
    let root_crl = CertificateRevocationListParams {
        this_update: date_time_ymd(2026, 1, 1),
        next_update: date_time_ymd(2027, 1, 1),
        crl_number: SerialNumber::from(2u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(inter_serial),
            revocation_time: date_time_ymd(2026, 1, 1),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&p.root.cert, &p.root.key)
    .unwrap();
    v.set_crls(vec![root_crl.der().to_vec()]).unwrap();
    assert_eq!(
        rejected(check(&v, &p, &fqdn(), june_2026())),
        CertReject::Revoked
    );
    // A CRL under the intermediate's name but signed by another key does not count.
    let forger = intermediate(&p.root, "", Some(ca_params("Test Intermediate", Some(0))));
    v.set_crls(vec![crl(&forger, 7)]).unwrap();
    assert!(check(&v, &p, &fqdn(), june_2026()).is_ok());
    // Swapping the set back to empty re-admits the peer; junk is refused whole.
    v.set_crls(vec![crl(&p.inter, 7)]).unwrap();
    assert!(v.set_crls(vec![b"not a crl".to_vec()]).is_err());
    assert_eq!(v.crl_count(), 1, "a bad set must not replace the good one");
    v.set_crls(vec![]).unwrap();
    assert!(check(&v, &p, &fqdn(), june_2026()).is_ok());
}

#[test]
fn basic_constraints_path_length_and_key_usage_are_enforced() {
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    // Root with pathLen 0 cannot have an intermediate below it.
    let r0 = Ca {
        key: KeyPair::try_from(p.root.key.serialize_der()).unwrap(),
        cert: ca_params("Test Root", Some(0))
            .self_signed(&KeyPair::try_from(p.root.key.serialize_der()).unwrap())
            .unwrap(),
    };
    let v = CertAuth::new(vec![r0.der()]).unwrap();
    assert_eq!(
        rejected(check(&v, &p, &fqdn(), june_2026())),
        CertReject::PathLenExceeded
    );
    let v = verifier(&p);
    // An "intermediate" that is not a CA.
    let mut np = ca_params("Not A CA", None);
    np.is_ca = IsCa::ExplicitNoCa;
    let not_ca = intermediate(&p.root, "", Some(np));
    let ee = issue(
        &not_ca,
        ee_params("router-1", "r1.example.net", 10),
        &rcgen::PKCS_ED25519,
    );
    let pl = signer(&ee, &[not_ca.der()]).sign(OCTETS).unwrap();
    assert_eq!(
        rejected(verify_payloads(&v, &fqdn(), &pl, june_2026())),
        CertReject::NotACa
    );
    // A CA without keyCertSign.
    let mut kp = ca_params("No CertSign", Some(0));
    kp.key_usages = vec![KeyUsagePurpose::CrlSign];
    let no_sign = intermediate(&p.root, "", Some(kp));
    let ee = issue(
        &no_sign,
        ee_params("router-1", "r1.example.net", 11),
        &rcgen::PKCS_ED25519,
    );
    let pl = signer(&ee, &[no_sign.der()]).sign(OCTETS).unwrap();
    assert_eq!(
        rejected(verify_payloads(&v, &fqdn(), &pl, june_2026())),
        CertReject::KeyUsage
    );
    // An end entity without digitalSignature.
    let mut ep = ee_params("router-1", "r1.example.net", 12);
    ep.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    let ee = issue(&p.inter, ep, &rcgen::PKCS_ED25519);
    let pl = signer(&ee, &[p.inter.der()]).sign(OCTETS).unwrap();
    assert_eq!(
        rejected(verify_payloads(&v, &fqdn(), &pl, june_2026())),
        CertReject::KeyUsage
    );
}

#[test]
fn bad_signatures_and_unsupported_methods_are_refused() {
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v = verifier(&p);
    let payloads = signer(&p.ee, &[p.inter.der()]).sign(OCTETS).unwrap();
    let (method, data) = match payloads.last().unwrap() {
        Payload::Auth { method, data } => (*method, data.clone()),
        _ => unreachable!(),
    };
    // Signature over other octets.
    let r = v.verify(
        Some(june_2026()),
        &fqdn(),
        &payloads,
        method,
        &data,
        b"other",
    );
    assert_eq!(rejected(r), CertReject::BadSignature);
    // A flipped bit in the signature.
    let mut bad = data.clone();
    *bad.last_mut().unwrap() ^= 1;
    let r = v.verify(Some(june_2026()), &fqdn(), &payloads, method, &bad, OCTETS);
    assert_eq!(rejected(r), CertReject::BadSignature);
    // ECDSA_521 (11) and shared key (2) are not signature methods we take here.
    for m in [AuthMethod(11), AuthMethod(2)] {
        let r = v.verify(Some(june_2026()), &fqdn(), &payloads, m, &data, OCTETS);
        assert_eq!(rejected(r), CertReject::UnsupportedAlgorithm);
    }
    // RFC 7427 with an unknown AlgorithmIdentifier (sha1WithRSAEncryption on ECDSA).
    let mut sha1 = vec![15u8];
    sha1.extend_from_slice(&[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05, 0x05, 0x00,
    ]);
    sha1.extend_from_slice(&data[data[0] as usize + 1..]);
    let r = v.verify(Some(june_2026()), &fqdn(), &payloads, method, &sha1, OCTETS);
    assert_eq!(rejected(r), CertReject::UnsupportedAlgorithm);
    // Truncated RFC 7427 data.
    let r = v.verify(
        Some(june_2026()),
        &fqdn(),
        &payloads,
        method,
        &data[..5],
        OCTETS,
    );
    assert_eq!(rejected(r), CertReject::Malformed);
    // The classic method for another key type.
    let r = v.verify(
        Some(june_2026()),
        &fqdn(),
        &payloads,
        AUTH_RSA_SIG,
        &data,
        OCTETS,
    );
    assert_eq!(rejected(r), CertReject::KeyMismatch);
    // A tampered certificate (subject altered) no longer verifies under its issuer.
    let mut tampered = payloads.clone();
    if let Payload::Cert { data, .. } = &mut tampered[0] {
        let at = data.windows(8).position(|w| w == b"router-1").unwrap();
        data[at + 7] = b'2';
    }
    let r = v.verify(Some(june_2026()), &fqdn(), &tampered, method, &data, OCTETS);
    // The AUTH signature still verifies with the (unchanged) key; the chain does not.
    assert_eq!(rejected(r), CertReject::BadSignature);
    // No certificate, no wall clock.
    let only_auth = vec![payloads.last().unwrap().clone()];
    let r = v.verify(
        Some(june_2026()),
        &fqdn(),
        &only_auth,
        method,
        &data,
        OCTETS,
    );
    assert_eq!(rejected(r), CertReject::NoCertificate);
    let r = v.verify(None, &fqdn(), &payloads, method, &data, OCTETS);
    assert_eq!(rejected(r), CertReject::NoWallClock);
    // Garbage as the certificate.
    let junk = vec![
        Payload::Cert {
            encoding: CERT_X509_SIGNATURE,
            data: vec![0x30, 0x82, 0xff],
        },
        payloads.last().unwrap().clone(),
    ];
    let r = v.verify(Some(june_2026()), &fqdn(), &junk, method, &data, OCTETS);
    assert_eq!(rejected(r), CertReject::Malformed);
    // Too many certificates.
    let mut many = payloads.clone();
    for _ in 0..MAX_PEER_CERTS {
        many.insert(1, payloads[1].clone());
    }
    let r = v.verify(Some(june_2026()), &fqdn(), &many, method, &data, OCTETS);
    assert_eq!(rejected(r), CertReject::ChainTooLong);
    // Every refusal was counted under its label.
    let counts = v.rejections();
    assert_eq!(counts.get("cert_bad_signature"), Some(&3));
    assert_eq!(counts.get("cert_unsupported_algorithm"), Some(&3));
    assert_eq!(counts.get("cert_no_wall_clock"), Some(&1));
}

#[test]
fn classic_ecdsa_and_rsa_pss_auth_signatures_verify() {
    use ring::signature as rs;
    let rng = ring::rand::SystemRandom::new();
    // ECDSA_256 (RFC 4754): fixed-size r || s.
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v = verifier(&p);
    let k = rs::EcdsaKeyPair::from_pkcs8(&rs::ECDSA_P256_SHA256_FIXED_SIGNING, &p.ee.key_der, &rng)
        .unwrap();
    let sig = k.sign(&rng, OCTETS).unwrap();
    let certs = [
        Payload::Cert {
            encoding: CERT_X509_SIGNATURE,
            data: p.ee.der.clone(),
        },
        Payload::Cert {
            encoding: CERT_X509_SIGNATURE,
            data: p.inter.der(),
        },
    ];
    let r = v.verify(
        Some(june_2026()),
        &fqdn(),
        &certs,
        AUTH_ECDSA_256,
        sig.as_ref(),
        OCTETS,
    );
    assert_eq!(r.unwrap().cn.as_deref(), Some("router-1"));
    let r = v.verify(
        Some(june_2026()),
        &fqdn(),
        &certs,
        AUTH_ECDSA_384,
        sig.as_ref(),
        OCTETS,
    );
    assert_eq!(rejected(r), CertReject::KeyMismatch);

    // RFC 7427 with RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32 (RFC 7427 A.4.3 shape).
    let p = pki(&rcgen::PKCS_RSA_SHA256);
    let v = verifier(&p);
    let k = rs::RsaKeyPair::from_pkcs8(RSA2048_PKCS8).unwrap();
    let mut sig = vec![0; k.public().modulus_len()];
    k.sign(&rs::RSA_PSS_SHA256, &rng, OCTETS, &mut sig).unwrap();
    let pss: &[u8] = &[
        0x30, 0x41, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30, 0x34,
        0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
        0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0xa2, 0x03, 0x02, 0x01, 0x20,
    ];
    let mut data = vec![pss.len() as u8];
    data.extend_from_slice(pss);
    data.extend_from_slice(&sig);
    let certs = [
        Payload::Cert {
            encoding: CERT_X509_SIGNATURE,
            data: p.ee.der.clone(),
        },
        Payload::Cert {
            encoding: CERT_X509_SIGNATURE,
            data: p.inter.der(),
        },
    ];
    let r = v.verify(
        Some(june_2026()),
        &fqdn(),
        &certs,
        AUTH_DIGITAL_SIGNATURE,
        &data,
        OCTETS,
    );
    assert_eq!(r.unwrap().cn.as_deref(), Some("router-1"));
    // Classic RSA_SIG is PKCS#1 v1.5 with SHA-1: a PSS signature does not pass as one.
    let r = v.verify(
        Some(june_2026()),
        &fqdn(),
        &certs,
        AUTH_RSA_SIG,
        &sig,
        OCTETS,
    );
    assert_eq!(rejected(r), CertReject::BadSignature);
}

/// The RFC 7427 AlgorithmIdentifier and signature of an AUTH payload list.
fn auth_algid(payloads: &[Payload]) -> (Vec<u8>, Vec<u8>) {
    let data = payloads
        .iter()
        .find_map(|p| match p {
            Payload::Auth { method, data } if *method == AUTH_DIGITAL_SIGNATURE => Some(data),
            _ => None,
        })
        .unwrap();
    let len = usize::from(data[0]);
    (data[1..1 + len].to_vec(), data[1 + len..].to_vec())
}

#[test]
fn rsa_signs_with_pss_when_configured_and_tampered_pss_is_refused() {
    use x509_parser::signature_algorithm::SignatureAlgorithm as Sa;
    let p = pki(&rcgen::PKCS_RSA_SHA256);
    let v = verifier(&p);
    let chain = vec![p.ee.der.clone(), p.inter.der()];
    let pss = CertAuth::new(vec![])
        .unwrap()
        .with_own(chain.clone(), &p.ee.key_der)
        .unwrap()
        .with_rsa_padding(RsaPadding::Pss);
    let payloads = pss.sign(OCTETS).unwrap();

    // RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-octet salt (RFC 4055 3.1).
    let (algid, sig) = auth_algid(&payloads);
    let (rest, a) = x509_parser::x509::AlgorithmIdentifier::from_der(&algid).unwrap();
    assert!(rest.is_empty());
    let Sa::RSASSA_PSS(params) = Sa::try_from(&a).unwrap() else {
        panic!("not RSASSA-PSS: {a:?}")
    };
    assert_eq!(
        params.hash_algorithm_oid().to_id_string(),
        "2.16.840.1.101.3.4.2.1"
    );
    assert_eq!(
        params.mask_gen_algorithm().unwrap().hash.to_id_string(),
        "2.16.840.1.101.3.4.2.1"
    );
    assert_eq!(params.salt_length(), 32);
    assert_eq!(sig.len(), 256);

    let cert = verify_payloads(&v, &fqdn(), &payloads, june_2026()).unwrap();
    assert_eq!(cert.cn.as_deref(), Some("router-1"));
    // PSS is randomised: two signatures of the same octets differ, both verify.
    let again = pss.sign(OCTETS).unwrap();
    assert_ne!(auth_algid(&again).1, sig);
    verify_payloads(&v, &fqdn(), &again, june_2026()).unwrap();

    // One flipped bit in the signature, or PSS parameters the signature was not made
    // with (the PKCS#1 v1.5 identifier), and the peer is refused.
    let tamper = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut out = payloads.clone();
        for pl in &mut out {
            if let Payload::Auth { data, .. } = pl {
                f(data);
            }
        }
        rejected(verify_payloads(&v, &fqdn(), &out, june_2026()))
    };
    assert_eq!(
        tamper(&|d| {
            let n = d.len() - 1;
            d[n] ^= 1;
        }),
        CertReject::BadSignature
    );
    assert_eq!(
        tamper(&|d| {
            let sig = d[1 + usize::from(d[0])..].to_vec();
            let pkcs1 = auth_algid(&signer(&p.ee, &[]).sign(OCTETS).unwrap()).0;
            *d = vec![pkcs1.len() as u8];
            d.extend_from_slice(&pkcs1);
            d.extend_from_slice(&sig);
        }),
        CertReject::BadSignature
    );

    // The default stays PKCS#1 v1.5 with SHA-256 (sha256WithRSAEncryption).
    let (algid, _) = auth_algid(&signer(&p.ee, &[]).sign(OCTETS).unwrap());
    let (_, a) = x509_parser::x509::AlgorithmIdentifier::from_der(&algid).unwrap();
    assert_eq!(a.algorithm.to_id_string(), "1.2.840.113549.1.1.11");
}

#[test]
fn own_credential_must_match_its_key_and_certreq_names_the_cas() {
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    assert!(CertAuth::new(vec![])
        .unwrap()
        .with_own(vec![p.ee.der.clone()], &other.serialize_der())
        .is_err());
    assert!(CertAuth::new(vec![])
        .unwrap()
        .with_own(vec![p.ee.der.clone()], b"junk")
        .is_err());
    assert!(CertAuth::new(vec![b"junk".to_vec()]).is_err());
    // RSA keys load from PKCS#1 as well as PKCS#8.
    let r = pki(&rcgen::PKCS_RSA_SHA256);
    assert!(CertAuth::new(vec![])
        .unwrap()
        .with_own(
            vec![r.ee.der.clone()],
            include_bytes!("testdata/rsa2048.pk1")
        )
        .is_ok());
    let v = CertAuth::new(vec![p.root.der(), p.inter.der()]).unwrap();
    let Some(Payload::CertReq { encoding, data }) = v.certreq() else {
        panic!("no CERTREQ");
    };
    assert_eq!(encoding, CERT_X509_SIGNATURE);
    let (_, root) = X509Certificate::from_der(p.root.cert.der()).unwrap();
    let h = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        root.public_key().raw,
    );
    assert_eq!(data.len(), 40);
    assert_eq!(&data[..20], h.as_ref());
    assert!(CertAuth::new(vec![]).unwrap().certreq().is_none());
}

// ---------------------------------------------------------------------------------------
// Engine to engine: IKE_AUTH with certificates on both sides.
// ---------------------------------------------------------------------------------------

mod engine {
    use super::*;
    use crate::config::*;
    use crate::endpoint::Endpoint;
    use crate::event::Event;

    fn configs(
        gw: Arc<CertAuth>,
        gw_id: Identity,
        router: Arc<CertAuth>,
        router_id: Identity,
    ) -> (
        Arc<EndpointConfig>,
        Arc<EndpointConfig>,
        Arc<InitiatorConfig>,
    ) {
        let ike = IkeProposal {
            encr: vec![EncrAlg::AesGcm16(256)],
            prf: vec![PrfAlg::HmacSha256],
            integ: vec![],
            dh: vec![DhGroup::Curve25519],
        };
        let esp = EspProposal {
            encr: vec![EncrAlg::AesGcm16(256)],
            integ: vec![],
            dh: vec![],
            esn: false,
        };
        let any = crate::negotiate::ts_any(false);
        let base = |responder| EndpointConfig {
            local_natt_port: 4500,
            responder,
            lifetimes: Lifetimes {
                dpd_delay: None,
                ..Lifetimes::default()
            },
            retransmit: Retransmit::default(),
            limits: Limits::default(),
        };
        let r = ResponderConfig {
            local_id: gw_id.clone(),
            auth: AuthConfig::Cert(gw),
            ike_proposals: vec![ike.clone()],
            esp_proposals: vec![esp.clone()],
            local_ts: vec![any.clone()],
            pool: PoolConfig {
                v4: Some("100.64.0.0/24".parse().unwrap()),
                v6: None,
                dns: vec![],
            },
        };
        let i = InitiatorConfig {
            local_id: router_id,
            remote_id: Some(gw_id),
            auth: AuthConfig::Cert(router),
            ike_proposals: vec![ike],
            esp_proposals: vec![esp],
            request_vip4: true,
            request_vip6: false,
            local_ts: vec![],
            remote_ts: vec![any],
            initial_contact: false,
            remote_natt_port: 4500,
        };
        (Arc::new(base(None)), Arc::new(base(Some(r))), Arc::new(i))
    }

    struct Run {
        i_events: Vec<Event>,
        r_events: Vec<Event>,
        r_sas: usize,
        i_sas: usize,
        /// Decoded IKE_SA_INIT response payloads.
        init_resp: Vec<Payload>,
    }

    fn run(
        ic: Arc<EndpointConfig>,
        rc: Arc<EndpointConfig>,
        cfg: Arc<InitiatorConfig>,
        at: SystemTime,
    ) -> Run {
        let now = Instant::now();
        let mut i = Endpoint::new(ic, [1; 32]);
        let mut r = Endpoint::new(rc, [2; 32]);
        i.set_wall_clock(at);
        r.set_wall_clock(at);
        let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 500);
        let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 500);
        i.initiate(now, local, remote, cfg).unwrap();
        let mut init_resp = None;
        loop {
            let mut moved = false;
            while let Some(t) = i.poll_transmit() {
                r.handle(now, t.socket, t.remote, t.local, &t.payload);
                moved = true;
            }
            while let Some(t) = r.poll_transmit() {
                if init_resp.is_none() {
                    let m =
                        crate::message::Message::decode(&t.payload, &Default::default()).unwrap();
                    init_resp = Some(m.payloads);
                }
                i.handle(now, t.socket, t.remote, t.local, &t.payload);
                moved = true;
            }
            if !moved {
                break;
            }
        }
        Run {
            i_events: std::iter::from_fn(|| i.poll()).collect(),
            r_events: std::iter::from_fn(|| r.poll()).collect(),
            r_sas: r.ike_sas().len(),
            i_sas: i.ike_sas().len(),
            init_resp: init_resp.unwrap_or_default(),
        }
    }

    fn cn_of(events: &[Event]) -> Option<Option<String>> {
        events.iter().find_map(|e| match e {
            Event::IkeSaEstablished { remote_cert_cn, .. } => Some(remote_cert_cn.clone()),
            _ => None,
        })
    }

    struct Setup {
        gw: Arc<CertAuth>,
        router: Arc<CertAuth>,
        router_id: Identity,
        gw_id: Identity,
        p: Pki,
    }

    fn setup() -> Setup {
        let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
        let gw_ee = issue(
            &p.root,
            ee_params("gw.example.net", "gw.example.net", 100),
            &rcgen::PKCS_RSA_SHA256,
        );
        let gw = CertAuth::new(vec![p.root.der()])
            .unwrap()
            .with_own(vec![gw_ee.der.clone()], &gw_ee.key_der)
            .unwrap();
        let router = CertAuth::new(vec![p.root.der()])
            .unwrap()
            .with_own(vec![p.ee.der.clone(), p.inter.der()], &p.ee.key_der)
            .unwrap();
        let router_id = router.own_dn().unwrap();
        Setup {
            gw: Arc::new(gw),
            router: Arc::new(router),
            router_id,
            gw_id: Identity::Fqdn("gw.example.net".into()),
            p,
        }
    }

    #[test]
    fn certificate_peers_establish_and_report_the_cn() {
        let s = setup();
        let (ic, rc, cfg) = configs(s.gw.clone(), s.gw_id, s.router, s.router_id);
        let out = run(ic, rc, cfg, june_2026());
        assert_eq!(cn_of(&out.r_events), Some(Some("router-1".into())));
        assert_eq!(cn_of(&out.i_events), Some(Some("gw.example.net".into())));
        assert!(out
            .r_events
            .iter()
            .any(|e| matches!(e, Event::ChildSaInstalled(_))));
        // The responder asked for certificates from its CA and announced RFC 7427 hashes.
        assert!(out
            .init_resp
            .iter()
            .any(|p| matches!(p, Payload::CertReq { encoding: 4, data } if data.len() == 20)));
        assert!(out.init_resp.iter().any(|p| matches!(p, Payload::Notify(n) if n.kind == crate::message::NotifyType::SIGNATURE_HASH_ALGORITHMS)));
        assert!(s.gw.rejections().is_empty());
    }

    #[test]
    fn rsa_pss_gateway_signature_is_verified_by_the_router() {
        let s = setup();
        let gw = Arc::new(
            Arc::try_unwrap(s.gw)
                .unwrap()
                .with_rsa_padding(RsaPadding::Pss),
        );
        let (ic, rc, cfg) = configs(gw.clone(), s.gw_id, s.router.clone(), s.router_id);
        let out = run(ic, rc, cfg, june_2026());
        assert_eq!(cn_of(&out.i_events), Some(Some("gw.example.net".into())));
        assert_eq!(cn_of(&out.r_events), Some(Some("router-1".into())));
        assert!(s.router.rejections().is_empty());
    }

    fn refused(out: &Run) {
        assert_eq!(cn_of(&out.r_events), None);
        assert_eq!(out.r_sas, 0, "nothing may be left on the responder");
        assert_eq!(out.i_sas, 0);
        let reason = out
            .i_events
            .iter()
            .find_map(|e| match e {
                Event::NegotiationFailed { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .unwrap();
        assert!(reason.contains("AUTHENTICATION_FAILED"), "{reason}");
    }

    #[test]
    fn expired_revoked_and_mismatched_peers_get_authentication_failed() {
        // Expired router certificate.
        let s = setup();
        let (ic, rc, cfg) = configs(
            s.gw.clone(),
            s.gw_id.clone(),
            s.router.clone(),
            s.router_id.clone(),
        );
        let y2031 = june_2026() + Duration::from_secs(5 * 365 * 86400);
        // The gateway's own certificate is also expired then, but the router fails first.
        refused(&run(ic, rc, cfg, y2031));
        assert_eq!(s.gw.rejections().get("cert_expired"), Some(&1));

        // Revoked by the intermediate's CRL.
        let crl = CertificateRevocationListParams {
            this_update: date_time_ymd(2026, 1, 1),
            next_update: date_time_ymd(2027, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(7u64),
                revocation_time: date_time_ymd(2026, 1, 1),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&s.p.inter.cert, &s.p.inter.key)
        .unwrap();
        s.gw.set_crls(vec![crl.der().to_vec()]).unwrap();
        let (ic, rc, cfg) = configs(
            s.gw.clone(),
            s.gw_id.clone(),
            s.router.clone(),
            s.router_id.clone(),
        );
        refused(&run(ic, rc, cfg, june_2026()));
        assert_eq!(s.gw.rejections().get("cert_revoked"), Some(&1));
        s.gw.set_crls(vec![]).unwrap();

        // Identity not in the certificate.
        let (ic, rc, cfg) = configs(
            s.gw.clone(),
            s.gw_id.clone(),
            s.router.clone(),
            Identity::Fqdn("someone-else.example.net".into()),
        );
        refused(&run(ic, rc, cfg, june_2026()));
        assert_eq!(s.gw.rejections().get("cert_identity_mismatch"), Some(&1));

        // A router from another PKI.
        let q = pki_named(&rcgen::PKCS_ED25519, "Other Root");
        let stranger = Arc::new(signer(&q.ee, &[q.inter.der()]));
        let sid = stranger.own_dn().unwrap();
        let (ic, rc, cfg) = configs(s.gw.clone(), s.gw_id.clone(), stranger, sid);
        refused(&run(ic, rc, cfg, june_2026()));
        assert_eq!(s.gw.rejections().get("cert_unknown_ca"), Some(&1));

        // And the good router still gets in afterwards.
        let (ic, rc, cfg) = configs(s.gw.clone(), s.gw_id, s.router, s.router_id);
        let out = run(ic, rc, cfg, june_2026());
        assert_eq!(cn_of(&out.r_events), Some(Some("router-1".into())));
    }

    #[test]
    fn initiator_refuses_a_gateway_certificate_it_cannot_validate() {
        let s = setup();
        // The same router credential, trusting only another root.
        let q = pki_named(&rcgen::PKCS_ECDSA_P256_SHA256, "Other Root");
        let router = CertAuth::new(vec![q.root.der()])
            .unwrap()
            .with_own(vec![s.p.ee.der.clone(), s.p.inter.der()], &s.p.ee.key_der)
            .unwrap();
        let router = Arc::new(router);
        let (ic, rc, cfg) = configs(s.gw.clone(), s.gw_id, router.clone(), s.router_id);
        let out = run(ic, rc, cfg, june_2026());
        // The gateway accepted the router, the router refused the gateway.
        assert_eq!(cn_of(&out.r_events), Some(Some("router-1".into())));
        assert_eq!(cn_of(&out.i_events), None);
        assert_eq!(out.i_sas, 0);
        assert_eq!(router.rejections().get("cert_unknown_ca"), Some(&1));
    }
}

#[test]
fn hostile_certificate_and_auth_bytes_never_panic_and_are_refused() {
    use rand::{Rng, SeedableRng};
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v = verifier(&p);
    let good = signer(&p.ee, &[p.inter.der()]).sign(OCTETS).unwrap();
    let (method, data) = match good.last().unwrap() {
        Payload::Auth { method, data } => (*method, data.clone()),
        _ => unreachable!(),
    };
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    for round in 0..2000 {
        // Truncations and bit flips of the real end-entity and intermediate certificates,
        // and of the AUTH data.
        let mut payloads = good.clone();
        let which = rng.gen_range(0..3);
        let target: &mut Vec<u8> = match &mut payloads[which] {
            Payload::Cert { data, .. } | Payload::Auth { data, .. } => data,
            _ => unreachable!(),
        };
        if round % 2 == 0 {
            let cut = rng.gen_range(0..target.len());
            target.truncate(cut);
        } else {
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..target.len());
                target[i] ^= 1 << rng.gen_range(0..8);
            }
        }
        let auth = match payloads.last().unwrap() {
            Payload::Auth { data, .. } => data.clone(),
            _ => unreachable!(),
        };
        let r = v.verify(Some(june_2026()), &fqdn(), &payloads, method, &auth, OCTETS);
        if let Ok(pc) = r {
            // A flip in a part no signature covers (e.g. the outer signature algorithm
            // parameters) may still verify; then the subject must be unchanged.
            assert_eq!(pc.cn.as_deref(), Some("router-1"));
        }
    }
    // Random bytes as certificates.
    for _ in 0..500 {
        let n = rng.gen_range(0..600);
        let junk: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        let payloads = vec![
            Payload::Cert {
                encoding: CERT_X509_SIGNATURE,
                data: junk,
            },
            good.last().unwrap().clone(),
        ];
        assert!(v
            .verify(Some(june_2026()), &fqdn(), &payloads, method, &data, OCTETS)
            .is_err());
    }
}
