//! strongSwan-style proposal strings ("aes256gcm16-prfsha256-x25519") parsed into the
//! engine's [`IkeProposal`] / [`EspProposal`] (RFC 7296 3.3 transforms).
//!
//! Keywords, separated by `-`, in any order:
//! - encryption: `aes128`, `aes256` (AES-CBC, RFC 3602), `aes128gcm16`, `aes256gcm16`
//!   (also `aes128gcm`, `aes256gcm`; RFC 4106/5282), `chacha20poly1305` (RFC 7634);
//! - integrity: `sha256`, `sha384`, `sha512` (also `sha2_256` ...; RFC 4868);
//! - PRF (IKE only): `prfsha256`, `prfsha384`, `prfsha512`; a non-AEAD IKE proposal
//!   without one uses the PRF matching its integrity algorithm, as strongSwan does;
//! - key exchange: `x25519`/`curve25519` (31), `ecp256` (19), `ecp384` (20), `modp2048` (14);
//! - ESP only: `esn` / `noesn` (RFC 4303 2.2.1).
use ike::{DhGroup, EncrAlg, EspProposal, IkeProposal, IntegAlg, PrfAlg};

/// Why a proposal string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposalError {
    #[error("empty proposal")]
    Empty,
    #[error("unknown algorithm '{0}'")]
    Unknown(String),
    #[error("'{0}' is not allowed in an {1} proposal")]
    NotAllowed(String, &'static str),
    #[error("no encryption algorithm")]
    NoEncryption,
    #[error("no integrity algorithm for a non-AEAD cipher")]
    NoIntegrity,
    #[error("integrity algorithm given with an AEAD cipher")]
    IntegrityWithAead,
    #[error("AEAD and non-AEAD ciphers mixed in one proposal")]
    MixedAead,
    #[error("no PRF (add prfsha256/prfsha384/prfsha512)")]
    NoPrf,
    #[error("no key exchange method (add x25519, ecp256, ecp384 or modp2048)")]
    NoKeyExchange,
}

enum Token {
    Encr(EncrAlg),
    Integ(IntegAlg),
    Prf(PrfAlg),
    Dh(DhGroup),
    Esn(bool),
}

fn token(word: &str) -> Result<Token, ProposalError> {
    use Token::*;
    let t = match word.to_ascii_lowercase().as_str() {
        "aes" | "aes128" => Encr(EncrAlg::AesCbc(128)),
        "aes256" => Encr(EncrAlg::AesCbc(256)),
        "aes128gcm16" | "aes128gcm" => Encr(EncrAlg::AesGcm16(128)),
        "aes256gcm16" | "aes256gcm" => Encr(EncrAlg::AesGcm16(256)),
        "chacha20poly1305" => Encr(EncrAlg::ChaCha20Poly1305),
        "sha256" | "sha2_256" => Integ(IntegAlg::HmacSha256_128),
        "sha384" | "sha2_384" => Integ(IntegAlg::HmacSha384_192),
        "sha512" | "sha2_512" => Integ(IntegAlg::HmacSha512_256),
        "prfsha256" => Prf(PrfAlg::HmacSha256),
        "prfsha384" => Prf(PrfAlg::HmacSha384),
        "prfsha512" => Prf(PrfAlg::HmacSha512),
        "x25519" | "curve25519" => Dh(DhGroup::Curve25519),
        "ecp256" => Dh(DhGroup::Ecp256),
        "ecp384" => Dh(DhGroup::Ecp384),
        "modp2048" => Dh(DhGroup::Modp2048),
        "esn" => Esn(true),
        "noesn" => Esn(false),
        _ => return Err(ProposalError::Unknown(word.to_string())),
    };
    Ok(t)
}

fn is_aead(e: &EncrAlg) -> bool {
    matches!(e, EncrAlg::AesGcm16(_) | EncrAlg::ChaCha20Poly1305)
}

fn push<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

fn words(s: &str) -> Result<impl Iterator<Item = &str>, ProposalError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(ProposalError::Empty);
    }
    Ok(s.split('-'))
}

fn check_cipher_mix(encr: &[EncrAlg], integ: &[IntegAlg]) -> Result<(), ProposalError> {
    if encr.is_empty() {
        return Err(ProposalError::NoEncryption);
    }
    let aead = encr.iter().filter(|e| is_aead(e)).count();
    if aead != 0 && aead != encr.len() {
        return Err(ProposalError::MixedAead);
    }
    if aead != 0 && !integ.is_empty() {
        return Err(ProposalError::IntegrityWithAead);
    }
    if aead == 0 && integ.is_empty() {
        return Err(ProposalError::NoIntegrity);
    }
    Ok(())
}

/// Parses an IKE SA proposal, e.g. `aes256gcm16-prfsha256-x25519` or `aes128-sha256-ecp256`.
pub fn parse_ike(s: &str) -> Result<IkeProposal, ProposalError> {
    let mut p = IkeProposal {
        encr: vec![],
        prf: vec![],
        integ: vec![],
        dh: vec![],
    };
    for w in words(s)? {
        match token(w)? {
            Token::Encr(e) => push(&mut p.encr, e),
            Token::Integ(i) => push(&mut p.integ, i),
            Token::Prf(f) => push(&mut p.prf, f),
            Token::Dh(d) => push(&mut p.dh, d),
            Token::Esn(_) => return Err(ProposalError::NotAllowed(w.to_string(), "IKE")),
        }
    }
    check_cipher_mix(&p.encr, &p.integ)?;
    if p.prf.is_empty() {
        // strongSwan derives the PRF from the integrity algorithm when none is given.
        for i in &p.integ {
            let f = match i {
                IntegAlg::HmacSha256_128 => PrfAlg::HmacSha256,
                IntegAlg::HmacSha384_192 => PrfAlg::HmacSha384,
                IntegAlg::HmacSha512_256 => PrfAlg::HmacSha512,
            };
            push(&mut p.prf, f);
        }
    }
    if p.prf.is_empty() {
        return Err(ProposalError::NoPrf);
    }
    if p.dh.is_empty() {
        return Err(ProposalError::NoKeyExchange);
    }
    Ok(p)
}

/// Parses an ESP proposal, e.g. `aes256gcm16`, `aes128-sha256-modp2048` (PFS), `aes256gcm16-esn`.
pub fn parse_esp(s: &str) -> Result<EspProposal, ProposalError> {
    let mut p = EspProposal {
        encr: vec![],
        integ: vec![],
        dh: vec![],
        esn: false,
    };
    for w in words(s)? {
        match token(w)? {
            Token::Encr(e) => push(&mut p.encr, e),
            Token::Integ(i) => push(&mut p.integ, i),
            Token::Prf(_) => return Err(ProposalError::NotAllowed(w.to_string(), "ESP")),
            Token::Dh(d) => push(&mut p.dh, d),
            Token::Esn(e) => p.esn = e,
        }
    }
    check_cipher_mix(&p.encr, &p.integ)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_suites_parse_to_the_right_transforms() {
        let p = parse_ike("aes256gcm16-prfsha256-x25519").unwrap();
        assert_eq!(p.encr, vec![EncrAlg::AesGcm16(256)]);
        assert_eq!(p.prf, vec![PrfAlg::HmacSha256]);
        assert!(p.integ.is_empty());
        assert_eq!(p.dh, vec![DhGroup::Curve25519]);

        let p = parse_ike("aes128-sha256-ecp256").unwrap();
        assert_eq!(p.encr, vec![EncrAlg::AesCbc(128)]);
        assert_eq!(p.integ, vec![IntegAlg::HmacSha256_128]);
        assert_eq!(p.prf, vec![PrfAlg::HmacSha256], "PRF implied by integrity");
        assert_eq!(p.dh, vec![DhGroup::Ecp256]);

        let p = parse_ike("aes256-sha384-modp2048").unwrap();
        assert_eq!(p.encr, vec![EncrAlg::AesCbc(256)]);
        assert_eq!(p.integ, vec![IntegAlg::HmacSha384_192]);
        assert_eq!(p.prf, vec![PrfAlg::HmacSha384]);
        assert_eq!(p.dh, vec![DhGroup::Modp2048]);

        let p = parse_ike("chacha20poly1305-prfsha512-x25519").unwrap();
        assert_eq!(p.encr, vec![EncrAlg::ChaCha20Poly1305]);
        assert_eq!(p.prf, vec![PrfAlg::HmacSha512]);
        assert_eq!(p.dh, vec![DhGroup::Curve25519]);
    }

    #[test]
    fn multiple_algorithms_per_type_are_all_offered_in_order() {
        let p = parse_ike("aes256gcm16-aes128gcm16-prfsha384-prfsha256-x25519-ecp384").unwrap();
        assert_eq!(p.encr, vec![EncrAlg::AesGcm16(256), EncrAlg::AesGcm16(128)]);
        assert_eq!(p.prf, vec![PrfAlg::HmacSha384, PrfAlg::HmacSha256]);
        assert_eq!(p.dh, vec![DhGroup::Curve25519, DhGroup::Ecp384]);
        // duplicates collapse
        let p = parse_ike("aes256gcm-aes256gcm16-prfsha256-x25519").unwrap();
        assert_eq!(p.encr, vec![EncrAlg::AesGcm16(256)]);
    }

    #[test]
    fn explicit_prf_wins_over_implied_one() {
        let p = parse_ike("aes256-sha256-prfsha512-ecp384").unwrap();
        assert_eq!(p.prf, vec![PrfAlg::HmacSha512]);
        assert_eq!(p.integ, vec![IntegAlg::HmacSha256_128]);
    }

    #[test]
    fn esp_proposals() {
        let p = parse_esp("aes256gcm16").unwrap();
        assert_eq!(p.encr, vec![EncrAlg::AesGcm16(256)]);
        assert!(p.integ.is_empty() && p.dh.is_empty() && !p.esn);

        let p = parse_esp("aes128-sha256-modp2048-esn").unwrap();
        assert_eq!(p.encr, vec![EncrAlg::AesCbc(128)]);
        assert_eq!(p.integ, vec![IntegAlg::HmacSha256_128]);
        assert_eq!(p.dh, vec![DhGroup::Modp2048], "PFS group");
        assert!(p.esn);

        let p = parse_esp("CHACHA20POLY1305-noesn").unwrap();
        assert_eq!(p.encr, vec![EncrAlg::ChaCha20Poly1305]);
        assert!(!p.esn);
    }

    #[test]
    fn rejections_name_the_problem() {
        assert_eq!(
            parse_ike("aes257-sha256-x25519"),
            Err(ProposalError::Unknown("aes257".into()))
        );
        assert_eq!(parse_ike(""), Err(ProposalError::Empty));
        assert_eq!(parse_ike("aes256gcm16-x25519"), Err(ProposalError::NoPrf));
        assert_eq!(
            parse_ike("aes256gcm16-prfsha256"),
            Err(ProposalError::NoKeyExchange)
        );
        assert_eq!(parse_ike("aes256-x25519"), Err(ProposalError::NoIntegrity));
        assert_eq!(
            parse_ike("sha256-prfsha256-x25519"),
            Err(ProposalError::NoEncryption)
        );
        assert_eq!(
            parse_ike("aes256gcm16-sha256-prfsha256-x25519"),
            Err(ProposalError::IntegrityWithAead)
        );
        assert_eq!(
            parse_ike("aes256gcm16-aes256-sha256-x25519"),
            Err(ProposalError::MixedAead)
        );
        assert_eq!(
            parse_ike("aes256gcm16-prfsha256-x25519-esn"),
            Err(ProposalError::NotAllowed("esn".into(), "IKE"))
        );
        assert_eq!(
            parse_esp("aes256gcm16-prfsha256"),
            Err(ProposalError::NotAllowed("prfsha256".into(), "ESP"))
        );
        assert_eq!(
            parse_esp("aes256-modp2048"),
            Err(ProposalError::NoIntegrity)
        );
        assert_eq!(
            parse_ike("aes256gcm16--prfsha256-x25519"),
            Err(ProposalError::Unknown(String::new()))
        );
    }
}
