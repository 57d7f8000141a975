//! Key exchange (RFC 7296 2.7/3.4): MODP-2048 (RFC 3526 group 14), ECP-256/384
//! (RFC 5903) and Curve25519 (RFC 8031).
//!
//! The elliptic-curve groups use ring. ring's ephemeral private keys can only be made from
//! ring's own `SystemRandom` (its `SecureRandom` trait is sealed), so for groups 19, 20 and
//! 31 the private key comes from the operating system's RNG, not from the caller's `rng`.
//! The MODP private exponent is drawn from the caller's `rng`.
use crypto_bigint::modular::{MontyForm, MontyParams};
use crypto_bigint::{Odd, U2048};
use rand::{CryptoRng, RngCore};
use ring::agreement;
use zeroize::Zeroizing;

use crate::config::DhGroup;
use crate::error::Error;

/// IANA Transform Type 4 number of a group (RFC 7296 3.3.2, RFC 5903, RFC 8031).
pub fn group_number(group: DhGroup) -> u16 {
    match group {
        DhGroup::Modp2048 => 14,
        DhGroup::Ecp256 => 19,
        DhGroup::Ecp384 => 20,
        DhGroup::Curve25519 => 31,
    }
}

/// Length of the Key Exchange Data in a KE payload for `group` (RFC 7296 3.4: MODP values
/// are zero-padded to the prime's length; RFC 5903 7: ECP values are `x | y`; RFC 8031 2:
/// 32 octets for Curve25519).
pub fn public_value_len(group: DhGroup) -> usize {
    match group {
        DhGroup::Modp2048 => MODP_LEN,
        DhGroup::Ecp256 => 64,
        DhGroup::Ecp384 => 96,
        DhGroup::Curve25519 => 32,
    }
}

/// Length of the shared secret g^ir for `group`.
pub fn shared_secret_len(group: DhGroup) -> usize {
    match group {
        DhGroup::Modp2048 => MODP_LEN,
        DhGroup::Ecp256 => 32,
        DhGroup::Ecp384 => 48,
        DhGroup::Curve25519 => 32,
    }
}

const MODP_LEN: usize = 256;

/// Bits of the MODP private exponent. RFC 3526 8 rates group 14 at 110-160 bits of
/// strength, which needs an exponent of at least twice that; 512 bits is well above.
const MODP_EXPONENT_BITS: u32 = 512;

/// The 2048-bit MODP prime, RFC 3526 section 3 (generator 2). `Odd::from_be_hex` checks
/// oddness at compile time.
const MODP2048_P: Odd<U2048> = Odd::<U2048>::from_be_hex(concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74",
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437",
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05",
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB",
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718",
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
));

/// Montgomery parameters for the prime, computed once.
fn modp_params() -> MontyParams<{ U2048::LIMBS }> {
    static PARAMS: std::sync::OnceLock<MontyParams<{ U2048::LIMBS }>> = std::sync::OnceLock::new();
    *PARAMS.get_or_init(|| MontyParams::new_vartime(MODP2048_P))
}

enum Private {
    Ecdh(agreement::EphemeralPrivateKey),
    Modp(Zeroizing<U2048>),
}

/// One side of a Diffie-Hellman exchange: our private value and the public value sent in
/// the KE payload (RFC 7296 3.4). Consumed by [`KeyExchange::agree`].
pub struct KeyExchange {
    group: DhGroup,
    public: Vec<u8>,
    private: Private,
}

impl std::fmt::Debug for KeyExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyExchange")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

fn ring_alg(group: DhGroup) -> Option<&'static agreement::Algorithm> {
    match group {
        DhGroup::Ecp256 => Some(&agreement::ECDH_P256),
        DhGroup::Ecp384 => Some(&agreement::ECDH_P384),
        DhGroup::Curve25519 => Some(&agreement::X25519),
        DhGroup::Modp2048 => None,
    }
}

impl KeyExchange {
    /// A fresh key pair for `group`. `rng` supplies the MODP exponent; the ECP and
    /// Curve25519 keys come from ring's system RNG (see the module docs).
    pub fn generate(group: DhGroup, rng: &mut (impl RngCore + CryptoRng)) -> Result<Self, Error> {
        Self::generate_with(group, rng, &ring::rand::SystemRandom::new())
    }

    /// `generate` with an explicit ring RNG for the elliptic-curve groups (tests use a
    /// fixed one to check published vectors).
    pub(crate) fn generate_with(
        group: DhGroup,
        rng: &mut (impl RngCore + CryptoRng),
        ring_rng: &dyn ring::rand::SecureRandom,
    ) -> Result<Self, Error> {
        match ring_alg(group) {
            Some(alg) => {
                let private = agreement::EphemeralPrivateKey::generate(alg, ring_rng)
                    .map_err(|_| Error::Crypto("key generation failed"))?;
                let public = private
                    .compute_public_key()
                    .map_err(|_| Error::Crypto("public key computation failed"))?;
                let public = match group {
                    // RFC 5903 7: x | y, without SEC1's 0x04 prefix.
                    DhGroup::Ecp256 | DhGroup::Ecp384 => public.as_ref()[1..].to_vec(),
                    _ => public.as_ref().to_vec(),
                };
                Ok(Self {
                    group,
                    public,
                    private: Private::Ecdh(private),
                })
            }
            None => {
                let mut bytes = Zeroizing::new([0u8; MODP_LEN]);
                let start = MODP_LEN - (MODP_EXPONENT_BITS as usize / 8);
                rng.fill_bytes(&mut bytes[start..]);
                // Full-length exponent: set its top bit.
                bytes[start] |= 0x80;
                let x = Zeroizing::new(U2048::from_be_slice(&bytes[..]));
                Self::modp_from_exponent(x)
            }
        }
    }

    fn modp_from_exponent(x: Zeroizing<U2048>) -> Result<Self, Error> {
        let params = modp_params();
        let g = MontyForm::new(&U2048::from_u8(2), params);
        let y = g.pow_bounded_exp(&*x, MODP_EXPONENT_BITS).retrieve();
        Ok(Self {
            group: DhGroup::Modp2048,
            public: y.to_be_bytes().to_vec(),
            private: Private::Modp(x),
        })
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// The Key Exchange Data of our KE payload, in the group's wire format.
    pub fn public_value(&self) -> &[u8] {
        &self.public
    }

    /// Computes g^ir from the peer's Key Exchange Data, after validating it: exact length
    /// for the group, ECP points on the curve (RFC 5903 / ring), Curve25519 results not
    /// all zero (RFC 8031 2.3), MODP values in `[2, p-2]` (RFC 7296 2.12's reuse caveats
    /// and NIST SP 800-56A 5.6.2.3.1). A bad value is `InvalidField` (INVALID_SYNTAX).
    pub fn agree(self, peer_public: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let want = public_value_len(self.group);
        if peer_public.len() != want {
            return Err(Error::InvalidField {
                field: "KE data",
                detail: format!(
                    "{} octets for group {}, want {want}",
                    peer_public.len(),
                    group_number(self.group)
                ),
            });
        }
        let bad = || Error::InvalidField {
            field: "KE data",
            detail: format!(
                "not a valid public value for group {}",
                group_number(self.group)
            ),
        };
        match self.private {
            Private::Ecdh(private) => {
                let alg = ring_alg(self.group).ok_or(Error::Crypto("group mismatch"))?;
                let mut sec1;
                let peer: &[u8] = match self.group {
                    DhGroup::Ecp256 | DhGroup::Ecp384 => {
                        sec1 = Vec::with_capacity(1 + peer_public.len());
                        sec1.push(0x04);
                        sec1.extend_from_slice(peer_public);
                        &sec1
                    }
                    _ => peer_public,
                };
                let peer = agreement::UnparsedPublicKey::new(alg, peer);
                agreement::agree_ephemeral(private, &peer, |s| Zeroizing::new(s.to_vec()))
                    .map_err(|_| bad())
            }
            Private::Modp(x) => {
                let y = U2048::from_be_slice(peer_public);
                let p_minus_1 = MODP2048_P.as_ref().wrapping_sub(&U2048::ONE);
                if y <= U2048::ONE || y >= p_minus_1 {
                    return Err(bad());
                }
                let params = modp_params();
                let s = MontyForm::new(&y, params)
                    .pow_bounded_exp(&*x, MODP_EXPONENT_BITS)
                    .retrieve();
                if s <= U2048::ONE {
                    return Err(bad());
                }
                let mut out = Zeroizing::new(vec![0u8; MODP_LEN]);
                out.copy_from_slice(&s.to_be_bytes());
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hex_literal::hex;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(7)
    }

    const ALL: [DhGroup; 4] = [
        DhGroup::Modp2048,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Curve25519,
    ];

    #[test]
    fn agreement_is_symmetric_for_every_group() {
        let mut rng = rng();
        for g in ALL {
            let a = KeyExchange::generate(g, &mut rng).unwrap();
            let b = KeyExchange::generate(g, &mut rng).unwrap();
            assert_eq!(a.public_value().len(), public_value_len(g), "{g:?}");
            assert_ne!(a.public_value(), b.public_value());
            let pa = a.public_value().to_vec();
            let pb = b.public_value().to_vec();
            let sa = a.agree(&pb).unwrap();
            let sb = b.agree(&pa).unwrap();
            assert_eq!(sa, sb, "{g:?}");
            assert_eq!(sa.len(), shared_secret_len(g));
        }
    }

    #[test]
    fn wrong_length_is_rejected() {
        let mut rng = rng();
        for g in ALL {
            let n = public_value_len(g);
            for len in [0, 1, n - 1, n + 1] {
                let a = KeyExchange::generate(g, &mut rng).unwrap();
                let err = a.agree(&vec![5u8; len]).unwrap_err();
                assert!(
                    matches!(
                        err,
                        Error::InvalidField {
                            field: "KE data",
                            ..
                        }
                    ),
                    "{g:?} {len}"
                );
            }
        }
    }

    /// MODP peer values 0, 1, p-1 (the small subgroup) and >= p are refused.
    #[test]
    fn modp_degenerate_values_are_rejected() {
        let mut rng = rng();
        let p = MODP2048_P.as_ref().to_be_bytes();
        let p_minus_1 = MODP2048_P.as_ref().wrapping_sub(&U2048::ONE).to_be_bytes();
        let mut one = [0u8; 256];
        one[255] = 1;
        for bad in [[0u8; 256], one, p_minus_1, p, [0xff; 256]] {
            let a = KeyExchange::generate(DhGroup::Modp2048, &mut rng).unwrap();
            assert!(a.agree(&bad).is_err());
        }
        // 2 and p-2 are fine.
        let mut two = [0u8; 256];
        two[255] = 2;
        let a = KeyExchange::generate(DhGroup::Modp2048, &mut rng).unwrap();
        assert!(a.agree(&two).is_ok());
    }

    /// Group 14 against an independent computation: Python's `pow(2, x, p)` and
    /// `pow(y, x, p)` for the fixed exponent and peer value below, run once when this test
    /// was written.
    #[test]
    fn modp_known_answer() {
        let mut xb = [0u8; 256];
        xb[256 - 64..].copy_from_slice(&[0x5a; 64]);
        xb[256 - 64] = 0xda;
        let x = Zeroizing::new(U2048::from_be_slice(&xb));
        let kx = KeyExchange::modp_from_exponent(x).unwrap();
        assert_eq!(kx.public_value(), &MODP_KAT_PUBLIC[..]);
        let mut peer = [0u8; 256];
        peer[0] = 0x12;
        peer[255] = 0x34;
        let s = kx.agree(&peer).unwrap();
        assert_eq!(&s[..], &MODP_KAT_SHARED[..]);
    }

    const MODP_KAT_PUBLIC: [u8; 256] = hex!(
        "63d7e4d4167c69835211b2464f92993ddb4609a84bc625cd65f5e9c8548bde39"
        "2d52571a98557b014c6013a07232d712b8214bafee0b1f919363e73c6ddd09ce"
        "74b42fd17afc0ee466b595a8d23f52c58820c78e8ff13448103597dc5cc040cb"
        "ffbefb7d06f336476a16b80e8e75141a4f0dad7ef65df9f48bd42e23cfe95f5f"
        "4247301f60a2d1ffcf2525f22fc1c399eba29367f1d46686365e8f957871fc61"
        "42c06b7815db187f78bcc0a24e71cbf62694f49d62c94c30537b738b11d6e70a"
        "3ea8e8622ccfdbf0a7310bdfd8ede2f68b8568ec88f87428321e14673f66c61d"
        "1adeda06822b9bb52e9a4deb6c6ed3dea8caef3d17ee9bbea86912bf6adc8ddc"
    );
    const MODP_KAT_SHARED: [u8; 256] = hex!(
        "117eb565b0f808167a2931745362aadfa2bf4965f0cbd741f98931e81348b3e2"
        "40192c4990787ad39d1783189bb3cc2042eabab2155d4b979ba43288836fa2c9"
        "90d4d3eaf28611da6531da44147779f8ed276378204b19e45e7c0adced680df9"
        "430c4c90adaffda7bb2423dc5ad1172f05821492307c854a420e65298c065b14"
        "f68200790790297b10475ccd3f0e1624509e2864b788f7526849453bffaea2bd"
        "5bb94c81ed1ec808ed0a54c5d504c4e1d7e4ee1994b4efd7501fa947dbe38554"
        "c3f90faabbfadea4c426145dc941967b8019a14f3c7b5efc2d27770593dde902"
        "b81c3929054dd129000907787debeba4025774133250ad2cc324beef462d932c"
    );

    #[test]
    fn ecp_public_is_x_y_without_prefix() {
        let mut rng = rng();
        let a = KeyExchange::generate(DhGroup::Ecp256, &mut rng).unwrap();
        assert_eq!(a.public_value().len(), 64);
        // A point with the SEC1 prefix included is the wrong length.
        let b = KeyExchange::generate(DhGroup::Ecp256, &mut rng).unwrap();
        let mut prefixed = vec![0x04];
        prefixed.extend_from_slice(b.public_value());
        assert!(a.agree(&prefixed).is_err());
    }

    #[test]
    fn ecp_point_not_on_curve_is_rejected() {
        let mut rng = rng();
        let a = KeyExchange::generate(DhGroup::Ecp256, &mut rng).unwrap();
        let b = KeyExchange::generate(DhGroup::Ecp256, &mut rng).unwrap();
        let mut pb = b.public_value().to_vec();
        pb[63] ^= 1;
        assert!(a.agree(&pb).is_err());
        // The point at infinity has no affine encoding; all zeros is not on either curve.
        for g in [DhGroup::Ecp256, DhGroup::Ecp384] {
            let a = KeyExchange::generate(g, &mut rng).unwrap();
            assert!(a.agree(&vec![0u8; public_value_len(g)]).is_err(), "{g:?}");
        }
    }

    /// RFC 5903 8.1 (256-bit random ECP group): the KE payload carries `gix | giy` and
    /// the shared secret is `girx`.
    #[test]
    #[allow(deprecated)]
    fn ecp256_rfc5903_vector() {
        let i = hex!("C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433");
        let fixed = ring::test::rand::FixedSliceRandom { bytes: &i };
        let a = KeyExchange::generate_with(DhGroup::Ecp256, &mut rng(), &fixed).unwrap();
        assert_eq!(
            a.public_value(),
            hex!(
                "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180"
                "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3"
            )
        );
        let gr = hex!(
            "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63"
            "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB"
        );
        assert_eq!(
            &a.agree(&gr).unwrap()[..],
            hex!("D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE")
        );
    }

    /// ECP-384 with private scalar 0x5a5a..5a and peer scalar 0x3c3c..3c; expected values
    /// computed once with Python's `cryptography` (OpenSSL), independent of ring.
    #[test]
    #[allow(deprecated)]
    fn ecp384_known_answer() {
        let i = [0x5au8; 48];
        let fixed = ring::test::rand::FixedSliceRandom { bytes: &i };
        let a = KeyExchange::generate_with(DhGroup::Ecp384, &mut rng(), &fixed).unwrap();
        assert_eq!(
            a.public_value(),
            hex!(
                "02076df6fd5aa5761159072fbe9a611df33f1911e5badbec56862dd4452aeb1d"
                "f05eecd07affa2aa1b2fd5a818fe125ab3bfb0e8c888bfa102c8cad1d44dab96"
                "68cac9d3ac1dcac4d15a68eefded7094a735c42d6d565a2c0ae3de299a69b260"
            )
        );
        let gr = hex!(
            "6846d4626b3450aaab8c53c044c2a947176a34ff190f56e80a670de892d37741"
            "fdcb1c4e1f2b55055efcc7221a9fee870bcfbba070a805cfcdc5e9b699d1d5f0"
            "5e6cabf8fddc0b3f46a6d7b7692b8d7b79daad44269c71d286802ee811be2d81"
        );
        assert_eq!(
            &a.agree(&gr).unwrap()[..],
            hex!(
                "23d9d88b6db29b6bf0a9c89de863bbf070a06fd78f2941be6cac5a5ebb06f544"
                "47412cfeb3ab0f0d13f8b033cc82f8ec"
            )
        );
    }

    /// Hostile KE data of the right length never panics.
    #[test]
    fn random_peer_values_never_panic() {
        use rand::Rng;
        let mut r = rng();
        for g in ALL {
            let n = if g == DhGroup::Modp2048 { 5 } else { 200 };
            for _ in 0..n {
                let mut v = vec![0u8; public_value_len(g)];
                r.fill(&mut v[..]);
                let _ = KeyExchange::generate(g, &mut r).unwrap().agree(&v);
            }
        }
    }

    #[test]
    fn key_exchange_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<KeyExchange>();
    }

    /// RFC 7748 6.1 key pair, and the low-order point that makes the result all-zero
    /// (RFC 8031 2.3 requires rejecting it).
    #[test]
    #[allow(deprecated)]
    fn x25519_rfc7748_vector() {
        let alice_priv = hex!("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let fixed = ring::test::rand::FixedSliceRandom { bytes: &alice_priv };
        let a = KeyExchange::generate_with(DhGroup::Curve25519, &mut rng(), &fixed).unwrap();
        assert_eq!(
            a.public_value(),
            hex!("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        let bob_pub = hex!("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        assert_eq!(
            &a.agree(&bob_pub).unwrap()[..],
            hex!("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
        );
        let b = KeyExchange::generate(DhGroup::Curve25519, &mut rng()).unwrap();
        assert!(b.agree(&[0u8; 32]).is_err());
    }
}
