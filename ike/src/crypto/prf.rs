//! The IKEv2 pseudo-random functions and prf+ (RFC 7296 2.13).
use ring::hmac;
use zeroize::Zeroizing;

use crate::config::PrfAlg;

/// A negotiated PRF (RFC 7296 2.13; HMAC-SHA2 per RFC 4868).
///
/// HMAC accepts keys of any length, so SKEYSEED's `Ni | Nr` key is used whole (2.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prf {
    alg: PrfAlg,
}

/// prf+ stops at T255 (RFC 7296 2.13: the counter is one octet).
pub const PRF_PLUS_MAX_BLOCKS: usize = 255;

impl Prf {
    pub fn new(alg: PrfAlg) -> Self {
        Self { alg }
    }

    pub fn alg(&self) -> PrfAlg {
        self.alg
    }

    fn hmac_alg(&self) -> hmac::Algorithm {
        match self.alg {
            PrfAlg::HmacSha256 => hmac::HMAC_SHA256,
            PrfAlg::HmacSha384 => hmac::HMAC_SHA384,
            PrfAlg::HmacSha512 => hmac::HMAC_SHA512,
        }
    }

    /// Output length in octets; also the preferred key length (RFC 4868 2.1.2).
    pub fn output_len(&self) -> usize {
        match self.alg {
            PrfAlg::HmacSha256 => 32,
            PrfAlg::HmacSha384 => 48,
            PrfAlg::HmacSha512 => 64,
        }
    }

    /// `prf(key, data[0] | data[1] | ...)`.
    pub fn compute(&self, key: &[u8], data: &[&[u8]]) -> Vec<u8> {
        let key = hmac::Key::new(self.hmac_alg(), key);
        let mut ctx = hmac::Context::with_key(&key);
        for d in data {
            ctx.update(d);
        }
        ctx.sign().as_ref().to_vec()
    }

    /// Like [`Prf::compute`], for outputs that are key material.
    pub fn compute_secret(&self, key: &[u8], data: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.compute(key, data))
    }

    /// prf+ (RFC 7296 2.13): `T1 | T2 | ...` truncated to `len` octets, where
    /// `T1 = prf(K, S | 0x01)` and `Tn = prf(K, Tn-1 | S | n)`.
    ///
    /// # Panics
    /// If `len` exceeds `255 * output_len()`; every IKEv2 caller asks for far less (the
    /// lengths come from the negotiated suite, never from the peer).
    pub fn plus(&self, key: &[u8], seed: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
        assert!(
            len <= PRF_PLUS_MAX_BLOCKS * self.output_len(),
            "prf+ asked for {len} octets, beyond T255"
        );
        let key = hmac::Key::new(self.hmac_alg(), key);
        let mut out = Zeroizing::new(Vec::with_capacity(len + self.output_len()));
        let mut counter: u8 = 1;
        let mut prev_start = 0;
        while out.len() < len {
            let mut ctx = hmac::Context::with_key(&key);
            if counter > 1 {
                ctx.update(&out[prev_start..]);
            }
            ctx.update(seed);
            ctx.update(&[counter]);
            prev_start = out.len();
            out.extend_from_slice(ctx.sign().as_ref());
            counter = counter.wrapping_add(1);
        }
        out.truncate(len);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hex_literal::hex;

    /// RFC 4231 test case 1.
    #[test]
    fn rfc4231_case1() {
        let key = [0x0bu8; 20];
        let data: &[&[u8]] = &[b"Hi There"];
        assert_eq!(
            Prf::new(PrfAlg::HmacSha256).compute(&key, data),
            hex!("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        );
        assert_eq!(
            Prf::new(PrfAlg::HmacSha384).compute(&key, data),
            hex!(
                "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c"
                "faea9ea9076ede7f4af152e8b2fa9cb6"
            )
        );
        assert_eq!(
            Prf::new(PrfAlg::HmacSha512).compute(&key, data),
            hex!(
                "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
                "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"
            )
        );
    }

    /// RFC 4231 test case 2 ("Jefe"), data split over several slices: the PRF must
    /// hash the concatenation.
    #[test]
    fn rfc4231_case2_split_input() {
        let data: &[&[u8]] = &[b"what do ya want ", b"", b"for nothing?"];
        assert_eq!(
            Prf::new(PrfAlg::HmacSha256).compute(b"Jefe", data),
            hex!("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
        assert_eq!(
            Prf::new(PrfAlg::HmacSha384).compute(b"Jefe", data),
            hex!(
                "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
                "8e2240ca5e69e2c78b3239ecfab21649"
            )
        );
        assert_eq!(
            Prf::new(PrfAlg::HmacSha512).compute(b"Jefe", data),
            hex!(
                "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
                "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
            )
        );
    }

    /// RFC 4231 test case 6: a key longer than the block size is hashed first.
    #[test]
    fn rfc4231_case6_long_key() {
        let key = [0xaau8; 131];
        let data: &[&[u8]] = &[b"Test Using Larger Than Block-Size Key - Hash Key First"];
        assert_eq!(
            Prf::new(PrfAlg::HmacSha256).compute(&key, data),
            hex!("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        );
    }

    /// prf+ is T1 | T2 | ... with the chaining of RFC 7296 2.13, checked against a
    /// composition of single PRF calls.
    #[test]
    fn prf_plus_chains_blocks() {
        for alg in [PrfAlg::HmacSha256, PrfAlg::HmacSha384, PrfAlg::HmacSha512] {
            let prf = Prf::new(alg);
            let key = b"some key";
            let seed = b"the seed";
            let t1 = prf.compute(key, &[seed, &[1]]);
            let t2 = prf.compute(key, &[&t1, seed, &[2]]);
            let t3 = prf.compute(key, &[&t2, seed, &[3]]);
            let want = [t1, t2, t3].concat();
            let got = prf.plus(key, seed, 3 * prf.output_len() - 5);
            assert_eq!(got[..], want[..3 * prf.output_len() - 5]);
            // Shorter outputs are prefixes.
            assert_eq!(prf.plus(key, seed, 7)[..], want[..7]);
        }
    }

    #[test]
    fn prf_plus_reaches_t255() {
        let prf = Prf::new(PrfAlg::HmacSha256);
        let out = prf.plus(b"k", b"s", 255 * 32);
        assert_eq!(out.len(), 255 * 32);
    }

    #[test]
    #[should_panic(expected = "beyond T255")]
    fn prf_plus_refuses_t256() {
        let _ = Prf::new(PrfAlg::HmacSha256).plus(b"k", b"s", 255 * 32 + 1);
    }
}
