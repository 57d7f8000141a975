//! Signatures: certificate/CRL signatures (RFC 5280 4.1.1.2) and the IKE AUTH payload
//! of signature methods (RFC 7296 3.8, RFC 4754, RFC 7427). Verification and signing are
//! ring's; this file only maps algorithm identifiers onto ring's algorithms.
use ring::signature::{self, KeyPair, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::prelude::{FromDer, SubjectPublicKeyInfo};
use x509_parser::x509::AlgorithmIdentifier;

use super::CertReject;
use crate::message::AuthMethod;

/// RFC 7296 3.8 RSA Digital Signature (PKCS#1 v1.5 with SHA-1).
pub const AUTH_RSA_SIG: AuthMethod = AuthMethod(1);
/// RFC 4754 ECDSA with SHA-256 on the P-256 curve.
pub const AUTH_ECDSA_256: AuthMethod = AuthMethod(9);
/// RFC 4754 ECDSA with SHA-384 on the P-384 curve.
pub const AUTH_ECDSA_384: AuthMethod = AuthMethod(10);
/// RFC 7427 Digital Signature.
pub const AUTH_DIGITAL_SIGNATURE: AuthMethod = AuthMethod(14);

/// Hash algorithm numbers of the SIGNATURE_HASH_ALGORITHMS notify (RFC 7427 4, IANA).
pub const HASH_SHA2_256: u16 = 2;
pub const HASH_SHA2_384: u16 = 3;
pub const HASH_SHA2_512: u16 = 4;
/// RFC 8420: "Identity" hash, used with Ed25519.
pub const HASH_IDENTITY: u16 = 5;

// Object identifiers (dotted), compared against x509-parser's `Oid::to_id_string`.
const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const RSA_PSS: &str = "1.2.840.113549.1.1.10";
const SHA1_RSA: &str = "1.2.840.113549.1.1.5";
const SHA256_RSA: &str = "1.2.840.113549.1.1.11";
const SHA384_RSA: &str = "1.2.840.113549.1.1.12";
const SHA512_RSA: &str = "1.2.840.113549.1.1.13";
const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
const ECDSA_SHA512: &str = "1.2.840.10045.4.3.4";
const P256: &str = "1.2.840.10045.3.1.7";
const P384: &str = "1.3.132.0.34";
const ED25519: &str = "1.3.101.112";
const SHA256: &str = "2.16.840.1.101.3.4.2.1";
const SHA384: &str = "2.16.840.1.101.3.4.2.2";
const SHA512: &str = "2.16.840.1.101.3.4.2.3";

/// AlgorithmIdentifier encodings we sign with (RFC 7427 Appendix A).
const ALGID_SHA256_RSA: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
];
/// RSASSA-PSS (RFC 4055 3.1) with SHA-256, MGF1-SHA-256, salt 32, trailer 1 (the
/// default, so absent in DER); hash parameters absent as in RFC 7427 A.4.3.
const ALGID_RSA_PSS_SHA256: &[u8] = &[
    0x30, 0x3d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30, 0x30, 0xa0,
    0x0d, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0xa1, 0x1a,
    0x30, 0x18, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30, 0x0b, 0x06,
    0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0xa2, 0x03, 0x02, 0x01, 0x20,
];
const ALGID_ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];
const ALGID_ECDSA_SHA384: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
];
const ALGID_ED25519: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];

/// The kind of a subject public key, from its SubjectPublicKeyInfo (RFC 5280 4.1.2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

pub(crate) fn key_kind(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyKind, CertReject> {
    match spki.algorithm.algorithm.to_id_string().as_str() {
        RSA_ENCRYPTION => Ok(KeyKind::Rsa),
        ED25519 => Ok(KeyKind::Ed25519),
        EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            match curve.as_deref() {
                Some(P256) => Ok(KeyKind::P256),
                Some(P384) => Ok(KeyKind::P384),
                _ => Err(CertReject::UnsupportedAlgorithm),
            }
        }
        _ => Err(CertReject::UnsupportedAlgorithm),
    }
}

/// ring's algorithm for a signature `alg` made with a key of kind `key`. SHA-1 is only
/// accepted where `legacy_sha1` (the classic RSA_SIG AUTH method), never in certificates.
fn ring_alg(
    alg: &AlgorithmIdentifier<'_>,
    key: KeyKind,
    legacy_sha1: bool,
) -> Result<&'static dyn VerificationAlgorithm, CertReject> {
    use KeyKind::*;
    let oid = alg.algorithm.to_id_string();
    Ok(match (oid.as_str(), key) {
        (SHA256_RSA, Rsa) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (SHA384_RSA, Rsa) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (SHA512_RSA, Rsa) => &signature::RSA_PKCS1_2048_8192_SHA512,
        (SHA1_RSA, Rsa) if legacy_sha1 => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        (RSA_PSS, Rsa) => {
            // RFC 4055 3.1: the hash and MGF1 hash must agree, salt = hash length.
            let sa = x509_parser::signature_algorithm::SignatureAlgorithm::try_from(alg)
                .map_err(|_| CertReject::UnsupportedAlgorithm)?;
            let x509_parser::signature_algorithm::SignatureAlgorithm::RSASSA_PSS(p) = sa else {
                return Err(CertReject::UnsupportedAlgorithm);
            };
            let hash = p.hash_algorithm_oid().to_id_string();
            let mgf_hash = p.mask_gen_algorithm().ok().map(|m| m.hash.to_id_string());
            if mgf_hash.as_deref() != Some(hash.as_str()) {
                return Err(CertReject::UnsupportedAlgorithm);
            }
            let (alg, len): (&'static dyn VerificationAlgorithm, u32) = match hash.as_str() {
                SHA256 => (&signature::RSA_PSS_2048_8192_SHA256, 32),
                SHA384 => (&signature::RSA_PSS_2048_8192_SHA384, 48),
                SHA512 => (&signature::RSA_PSS_2048_8192_SHA512, 64),
                _ => return Err(CertReject::UnsupportedAlgorithm),
            };
            if p.salt_length() != len {
                return Err(CertReject::UnsupportedAlgorithm);
            }
            alg
        }
        (ECDSA_SHA256, P256) => &signature::ECDSA_P256_SHA256_ASN1,
        (ECDSA_SHA384, P256) => &signature::ECDSA_P256_SHA384_ASN1,
        (ECDSA_SHA256, P384) => &signature::ECDSA_P384_SHA256_ASN1,
        (ECDSA_SHA384, P384) => &signature::ECDSA_P384_SHA384_ASN1,
        (ED25519, Ed25519) => &signature::ED25519,
        (ECDSA_SHA512, _) | (_, _) => return Err(CertReject::UnsupportedAlgorithm),
    })
}

/// Verifies `sig` over `data` by the holder of `spki`, `alg` naming the algorithm
/// (certificate and CRL signatures, RFC 5280 4.1.1.2).
pub(crate) fn verify_x509(
    spki: &SubjectPublicKeyInfo<'_>,
    alg: &AlgorithmIdentifier<'_>,
    data: &[u8],
    sig: &[u8],
) -> Result<(), CertReject> {
    let key = key_kind(spki)?;
    let ring_alg = ring_alg(alg, key, false)?;
    UnparsedPublicKey::new(ring_alg, &spki.subject_public_key.data)
        .verify(data, sig)
        .map_err(|_| CertReject::BadSignature)
}

/// Verifies an AUTH payload of a signature method (`method`, `data`) over the peer's
/// signed octets (RFC 7296 2.15) with the public key of its end-entity certificate.
pub(crate) fn verify_auth_signature(
    spki: &SubjectPublicKeyInfo<'_>,
    method: AuthMethod,
    data: &[u8],
    octets: &[u8],
) -> Result<(), CertReject> {
    let key = key_kind(spki)?;
    let (alg, sig): (&'static dyn VerificationAlgorithm, &[u8]) = match method {
        // RFC 7427 3: one octet of AlgorithmIdentifier length, the ASN.1, the signature.
        AUTH_DIGITAL_SIGNATURE => {
            let (&len, rest) = data.split_first().ok_or(CertReject::Malformed)?;
            let len = usize::from(len);
            if rest.len() < len {
                return Err(CertReject::Malformed);
            }
            let (asn1, sig) = rest.split_at(len);
            let (tail, alg_id) =
                AlgorithmIdentifier::from_der(asn1).map_err(|_| CertReject::Malformed)?;
            if !tail.is_empty() {
                return Err(CertReject::Malformed);
            }
            (ring_alg(&alg_id, key, false)?, sig)
        }
        AUTH_RSA_SIG if key == KeyKind::Rsa => (
            &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            data,
        ),
        AUTH_ECDSA_256 if key == KeyKind::P256 => (&signature::ECDSA_P256_SHA256_FIXED, data),
        AUTH_ECDSA_384 if key == KeyKind::P384 => (&signature::ECDSA_P384_SHA384_FIXED, data),
        AUTH_RSA_SIG | AUTH_ECDSA_256 | AUTH_ECDSA_384 => return Err(CertReject::KeyMismatch),
        _ => return Err(CertReject::UnsupportedAlgorithm),
    };
    UnparsedPublicKey::new(alg, &spki.subject_public_key.data)
        .verify(octets, sig)
        .map_err(|_| CertReject::BadSignature)
}

/// The RSA signature scheme we sign AUTH payloads with (RFC 7427 3); verification
/// accepts both whatever this says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RsaPadding {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (sha256WithRSAEncryption): what every peer takes.
    #[default]
    Pkcs1,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-octet salt (RFC 4055 3.1, RFC 8247 3.2).
    Pss,
}

enum Key {
    Rsa(signature::RsaKeyPair),
    Ecdsa(signature::EcdsaKeyPair, KeyKind),
    Ed25519(signature::Ed25519KeyPair),
}

/// Our private key, loaded from PKCS#8 (or, for RSA, PKCS#1 RSAPrivateKey) DER.
///
/// Signs AUTH payloads with RFC 7427 Digital Signature: RSA PKCS#1 v1.5 or PSS with SHA-256,
/// ECDSA P-256/SHA-256, ECDSA P-384/SHA-384, or Ed25519. RSA and ECDSA signing take
/// randomness from ring's `SystemRandom` (ring's `SecureRandom` is sealed, as for its
/// ephemeral ECDH keys in `crypto::KeyExchange`).
pub struct SigningKey {
    key: Key,
    public: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.key {
            Key::Rsa(_) => "rsa",
            Key::Ecdsa(_, KeyKind::P384) => "ecdsa-p384",
            Key::Ecdsa(..) => "ecdsa-p256",
            Key::Ed25519(_) => "ed25519",
        };
        f.debug_struct("SigningKey")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads a private key from PKCS#8 DER (any supported kind) or PKCS#1 DER (RSA).
    pub fn from_der(der: &[u8]) -> Result<Self, crate::Error> {
        let rng = ring::rand::SystemRandom::new();
        let key = if let Ok(k) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            Key::Ed25519(k)
        } else if let Ok(k) = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            der,
            &rng,
        ) {
            Key::Ecdsa(k, KeyKind::P256)
        } else if let Ok(k) = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            der,
            &rng,
        ) {
            Key::Ecdsa(k, KeyKind::P384)
        } else if let Ok(k) = signature::RsaKeyPair::from_pkcs8(der) {
            Key::Rsa(k)
        } else if let Ok(k) = signature::RsaKeyPair::from_der(der) {
            Key::Rsa(k)
        } else {
            return Err(crate::Error::Crypto(
                "private key is not PKCS#8/PKCS#1 RSA, ECDSA P-256/P-384 or Ed25519",
            ));
        };
        let public = match &key {
            Key::Rsa(k) => k.public_key().as_ref().to_vec(),
            Key::Ecdsa(k, _) => k.public_key().as_ref().to_vec(),
            Key::Ed25519(k) => k.public_key().as_ref().to_vec(),
        };
        Ok(Self { key, public })
    }

    /// The public key as it appears in a SubjectPublicKeyInfo's BIT STRING, to check
    /// that the key belongs to the certificate.
    pub(crate) fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// The AUTH payload data of RFC 7427 3 (method 14) over `octets`.
    /// An RSA key signs with `rsa_padding`; other keys ignore it.
    pub(crate) fn sign_auth(
        &self,
        octets: &[u8],
        rsa_padding: RsaPadding,
    ) -> Result<Vec<u8>, crate::Error> {
        let rng = ring::rand::SystemRandom::new();
        let (algid, sig) = match &self.key {
            Key::Rsa(k) => {
                let (encoding, algid): (&'static dyn signature::RsaEncoding, _) = match rsa_padding
                {
                    RsaPadding::Pkcs1 => (&signature::RSA_PKCS1_SHA256, ALGID_SHA256_RSA),
                    RsaPadding::Pss => (&signature::RSA_PSS_SHA256, ALGID_RSA_PSS_SHA256),
                };
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(encoding, &rng, octets, &mut sig)
                    .map_err(|_| crate::Error::Crypto("RSA signing"))?;
                (algid, sig)
            }
            Key::Ecdsa(k, kind) => {
                let sig = k
                    .sign(&rng, octets)
                    .map_err(|_| crate::Error::Crypto("ECDSA signing"))?;
                let algid = if *kind == KeyKind::P384 {
                    ALGID_ECDSA_SHA384
                } else {
                    ALGID_ECDSA_SHA256
                };
                (algid, sig.as_ref().to_vec())
            }
            Key::Ed25519(k) => (ALGID_ED25519, k.sign(octets).as_ref().to_vec()),
        };
        let mut out = Vec::with_capacity(1 + algid.len() + sig.len());
        // Lengths are constants below 256.
        out.push(algid.len() as u8);
        out.extend_from_slice(algid);
        out.extend_from_slice(&sig);
        Ok(out)
    }
}
