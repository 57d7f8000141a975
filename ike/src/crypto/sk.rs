//! The Encrypted payload transform (RFC 7296 3.14) for AES-CBC with HMAC-SHA2 integrity,
//! and for the AEAD ciphers AES-GCM-16 (RFC 5282) and ChaCha20-Poly1305 (RFC 7634).
//!
//! Layout of the SK body: `IV | ciphertext | ICV`, where the plaintext is
//! `inner payloads | padding | pad length (1 octet)`.
use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use rand::RngCore;
use ring::{aead, hmac};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::config::{EncrAlg, IntegAlg};
use crate::error::Error;

use super::{encr_key_len, integ_icv_len, integ_key_len};

const AES_BLOCK: usize = 16;
/// Explicit IV of the AEAD transforms (RFC 5282 3.1, RFC 7634 2).
const AEAD_IV_LEN: usize = 8;
/// AES-GCM-16 and Poly1305 tags are 16 octets.
const AEAD_TAG_LEN: usize = 16;
const AEAD_SALT_LEN: usize = 4;

enum CbcKey {
    Aes128(Zeroizing<[u8; 16]>),
    Aes192(Zeroizing<[u8; 24]>),
    Aes256(Zeroizing<[u8; 32]>),
}

enum Transform {
    Aead {
        key: Box<aead::LessSafeKey>,
        salt: [u8; AEAD_SALT_LEN],
        /// Next explicit IV; seeded from the caller's RNG on the first seal, then
        /// incremented, so an IV never repeats under one key (RFC 5282 3.1).
        next_iv: Option<u64>,
    },
    Cbc {
        key: CbcKey,
        integ: hmac::Key,
        icv_len: usize,
    },
}

/// One direction of an IKE SA's SK payload protection: SK_ei/SK_ai for messages the
/// initiator sends, SK_er/SK_ar for the responder's (RFC 7296 2.14).
pub struct SkCipher {
    encr: EncrAlg,
    integ: Option<IntegAlg>,
    t: Transform,
}

impl std::fmt::Debug for SkCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkCipher")
            .field("encr", &self.encr)
            .field("integ", &self.integ)
            .finish_non_exhaustive()
    }
}

fn bad_key(what: &'static str) -> Error {
    Error::Crypto(what)
}

impl SkCipher {
    /// `encr_key` is SK_e (for AEAD: key followed by the 4-octet salt, RFC 5282 7.1,
    /// RFC 7634 3); `integ_key` is SK_a (empty for AEAD). CBC requires an integrity
    /// algorithm and AEAD forbids one (RFC 7296 3.3.3, RFC 5282 8).
    pub fn new(
        encr: EncrAlg,
        integ: Option<IntegAlg>,
        encr_key: &[u8],
        integ_key: &[u8],
    ) -> Result<Self, Error> {
        if encr_key.len() != encr_key_len(encr) {
            return Err(bad_key("SK_e length does not match the cipher"));
        }
        let t = match encr {
            EncrAlg::AesGcm16(_) | EncrAlg::ChaCha20Poly1305 => {
                if integ.is_some() {
                    return Err(bad_key("AEAD cipher with an integrity algorithm"));
                }
                let alg = match encr {
                    EncrAlg::AesGcm16(128) => &aead::AES_128_GCM,
                    EncrAlg::AesGcm16(256) => &aead::AES_256_GCM,
                    EncrAlg::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
                    _ => return Err(bad_key("unsupported AES-GCM key length")),
                };
                let (k, salt) = encr_key.split_at(encr_key.len() - AEAD_SALT_LEN);
                let key = aead::UnboundKey::new(alg, k).map_err(|_| bad_key("bad AEAD key"))?;
                let mut s = [0u8; AEAD_SALT_LEN];
                s.copy_from_slice(salt);
                Transform::Aead {
                    key: Box::new(aead::LessSafeKey::new(key)),
                    salt: s,
                    next_iv: None,
                }
            }
            EncrAlg::AesCbc(bits) => {
                let integ_alg = integ.ok_or(bad_key("AES-CBC without an integrity algorithm"))?;
                if integ_key.len() != integ_key_len(integ_alg) {
                    return Err(bad_key(
                        "SK_a length does not match the integrity algorithm",
                    ));
                }
                let key = match bits {
                    128 => CbcKey::Aes128(Zeroizing::new(fixed(encr_key)?)),
                    192 => CbcKey::Aes192(Zeroizing::new(fixed(encr_key)?)),
                    256 => CbcKey::Aes256(Zeroizing::new(fixed(encr_key)?)),
                    _ => return Err(bad_key("unsupported AES-CBC key length")),
                };
                let halg = match integ_alg {
                    IntegAlg::HmacSha256_128 => hmac::HMAC_SHA256,
                    IntegAlg::HmacSha384_192 => hmac::HMAC_SHA384,
                    IntegAlg::HmacSha512_256 => hmac::HMAC_SHA512,
                };
                Transform::Cbc {
                    key,
                    integ: hmac::Key::new(halg, integ_key),
                    icv_len: integ_icv_len(integ_alg),
                }
            }
        };
        Ok(Self { encr, integ, t })
    }

    pub fn encr(&self) -> EncrAlg {
        self.encr
    }

    pub fn integ(&self) -> Option<IntegAlg> {
        self.integ
    }

    fn iv_len(&self) -> usize {
        match self.t {
            Transform::Aead { .. } => AEAD_IV_LEN,
            Transform::Cbc { .. } => AES_BLOCK,
        }
    }

    fn icv_len(&self) -> usize {
        match self.t {
            Transform::Aead { .. } => AEAD_TAG_LEN,
            Transform::Cbc { icv_len, .. } => icv_len,
        }
    }

    /// Length of the encrypted part (padding and pad length included) for a plaintext.
    fn ciphertext_len(&self, plaintext_len: usize) -> usize {
        match self.t {
            // No padding needed (RFC 5282 3.2, RFC 7634 2); the pad length octet remains.
            Transform::Aead { .. } => plaintext_len + 1,
            Transform::Cbc { .. } => (plaintext_len + 1).div_ceil(AES_BLOCK) * AES_BLOCK,
        }
    }

    /// Length of the SK body (IV + ciphertext incl. padding and pad length + ICV) for a
    /// `plaintext_len`-octet inner payload chain. The caller writes the IKE header length
    /// and the SK payload length (4 + this) before [`SkCipher::seal`].
    pub fn sealed_len(&self, plaintext_len: usize) -> usize {
        self.iv_len() + self.ciphertext_len(plaintext_len) + self.icv_len()
    }

    /// The largest plaintext whose SK body fits in `body_space` octets (for splitting a
    /// message into RFC 7383 fragments); `None` if not even an empty chain fits.
    pub fn max_plaintext_len(&self, body_space: usize) -> Option<usize> {
        let overhead = self.iv_len() + self.icv_len();
        let ct_space = body_space.checked_sub(overhead)?;
        let ct = match self.t {
            Transform::Aead { .. } => ct_space,
            Transform::Cbc { .. } => ct_space - ct_space % AES_BLOCK,
        };
        ct.checked_sub(1)
    }

    /// Smallest valid SK body (an empty inner payload chain).
    pub fn min_sealed_len(&self) -> usize {
        self.sealed_len(0)
    }

    /// Appends the SK body for `plaintext` to `msg`.
    ///
    /// `msg` holds the message so far: IKE header (length field already final) through the
    /// SK (or SKF) generic payload header (and SKF fragment fields). AEAD: the AAD is all of
    /// `msg` (RFC 5282 5.1, RFC 7383 2.5); the 8-octet IV is a counter seeded from `rng`.
    /// CBC: a random IV from `rng`, and the ICV is the truncated HMAC over everything from
    /// the IKE header through the ciphertext (RFC 7296 3.14).
    pub fn seal(&mut self, msg: &mut Vec<u8>, plaintext: &[u8], rng: &mut impl RngCore) {
        let ct_len = self.ciphertext_len(plaintext.len());
        let pad_len = ct_len - plaintext.len() - 1;
        self.seal_padded(msg, plaintext, pad_len, pad_len as u8, rng);
    }

    /// `seal` with explicit padding: `pad_len` zero octets, then the Pad Length octet
    /// `pad_len_octet` (equal to `pad_len` except in tests of malformed padding).
    fn seal_padded(
        &mut self,
        msg: &mut Vec<u8>,
        plaintext: &[u8],
        pad_len: usize,
        pad_len_octet: u8,
        rng: &mut impl RngCore,
    ) {
        msg.reserve(self.iv_len() + plaintext.len() + pad_len + 1 + self.icv_len());
        match &mut self.t {
            Transform::Aead { key, salt, next_iv } => {
                let iv = *next_iv.get_or_insert_with(|| rng.next_u64());
                *next_iv = Some(iv.wrapping_add(1));
                let aad_end = msg.len();
                msg.extend_from_slice(&iv.to_be_bytes());
                let ct_start = msg.len();
                msg.extend_from_slice(plaintext);
                msg.resize(msg.len() + pad_len, 0);
                msg.push(pad_len_octet);
                let (head, body) = msg.split_at_mut(ct_start);
                let nonce = aead_nonce(salt, iv);
                // ring only fails here for inputs beyond 2^36 octets, far past any UDP
                // datagram; a failure would leave `msg` unauthenticated, so it is treated
                // as a bug.
                let tag = match key.seal_in_place_separate_tag(
                    nonce,
                    aead::Aad::from(&head[..aad_end]),
                    body,
                ) {
                    Ok(tag) => tag,
                    Err(_) => unreachable!("AEAD seal of a datagram-sized buffer"),
                };
                msg.extend_from_slice(tag.as_ref());
            }
            Transform::Cbc {
                key,
                integ,
                icv_len,
            } => {
                let mut iv = [0u8; AES_BLOCK];
                rng.fill_bytes(&mut iv);
                msg.extend_from_slice(&iv);
                let ct_start = msg.len();
                msg.extend_from_slice(plaintext);
                // Padding content is arbitrary (RFC 7296 3.14); zeros.
                msg.resize(msg.len() + pad_len, 0);
                msg.push(pad_len_octet);
                cbc_encrypt(key, &iv, &mut msg[ct_start..]);
                let tag = hmac::sign(integ, msg);
                msg.extend_from_slice(&tag.as_ref()[..*icv_len]);
            }
        }
    }

    /// Verifies and decrypts the SK body of a received message.
    ///
    /// `msg` is the whole received message (or fragment), `body_start` the offset of the SK
    /// body (just after the SK generic payload header, or after the SKF fragment fields).
    /// The ICV is checked first, in constant time. Any failure before the message is
    /// authenticated (short body, misaligned CBC ciphertext, bad ICV or tag) is
    /// [`Error::IntegrityCheckFailed`]: RFC 7296 2.21.2 drops such messages without a
    /// reply. A bad pad length in an authenticated message is `InvalidField`.
    pub fn open(&self, msg: &[u8], body_start: usize) -> Result<Vec<u8>, Error> {
        let mut pt = self.decrypt(msg, body_start)?;
        let pad_len = match pt.last() {
            Some(&p) => p as usize,
            None => return Err(Error::IntegrityCheckFailed),
        };
        if pad_len + 1 > pt.len() {
            return Err(Error::InvalidField {
                field: "SK pad length",
                detail: format!("{pad_len} with {} octets of plaintext", pt.len()),
            });
        }
        pt.truncate(pt.len() - pad_len - 1);
        Ok(pt)
    }

    /// Authenticated decryption: the plaintext including padding and pad length.
    fn decrypt(&self, msg: &[u8], body_start: usize) -> Result<Vec<u8>, Error> {
        let body = msg.get(body_start..).ok_or(Error::IntegrityCheckFailed)?;
        if body.len() < self.min_sealed_len() {
            return Err(Error::IntegrityCheckFailed);
        }
        match &self.t {
            Transform::Aead { key, salt, .. } => {
                let (iv, rest) = body.split_at(AEAD_IV_LEN);
                let mut ivb = [0u8; AEAD_IV_LEN];
                ivb.copy_from_slice(iv);
                let nonce = aead_nonce(salt, u64::from_be_bytes(ivb));
                let mut buf = rest.to_vec();
                let aad = aead::Aad::from(&msg[..body_start]);
                let n = key
                    .open_in_place(nonce, aad, &mut buf)
                    .map_err(|_| Error::IntegrityCheckFailed)?
                    .len();
                buf.truncate(n);
                Ok(buf)
            }
            Transform::Cbc {
                key,
                integ,
                icv_len,
            } => {
                let ct_len = body.len() - AES_BLOCK - icv_len;
                if ct_len & (AES_BLOCK - 1) != 0 {
                    return Err(Error::IntegrityCheckFailed);
                }
                let icv_start = msg.len() - icv_len;
                let tag = hmac::sign(integ, &msg[..icv_start]);
                let ok: bool = tag.as_ref()[..*icv_len].ct_eq(&msg[icv_start..]).into();
                if !ok {
                    return Err(Error::IntegrityCheckFailed);
                }
                let mut iv = [0u8; AES_BLOCK];
                iv.copy_from_slice(&body[..AES_BLOCK]);
                let mut buf = body[AES_BLOCK..AES_BLOCK + ct_len].to_vec();
                cbc_decrypt(key, &iv, &mut buf);
                Ok(buf)
            }
        }
    }
}

fn fixed<const N: usize>(k: &[u8]) -> Result<[u8; N], Error> {
    k.try_into().map_err(|_| Error::Crypto("key length"))
}

/// Nonce = salt | explicit IV (RFC 4106 4, RFC 7634 2).
fn aead_nonce(salt: &[u8; AEAD_SALT_LEN], iv: u64) -> aead::Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[..AEAD_SALT_LEN].copy_from_slice(salt);
    n[AEAD_SALT_LEN..].copy_from_slice(&iv.to_be_bytes());
    aead::Nonce::assume_unique_for_key(n)
}

/// CBC-encrypts `buf` (a whole number of blocks) in place.
fn cbc_encrypt(key: &CbcKey, iv: &[u8; AES_BLOCK], buf: &mut [u8]) {
    let len = buf.len();
    // NoPadding on a block-aligned buffer cannot fail; the Result only reports
    // misalignment, which `ciphertext_len` rules out.
    let r = match key {
        CbcKey::Aes128(k) => cbc::Encryptor::<aes::Aes128>::new(k.as_ref().into(), iv.into())
            .encrypt_padded_mut::<NoPadding>(buf, len)
            .map(|_| ()),
        CbcKey::Aes192(k) => cbc::Encryptor::<aes::Aes192>::new(k.as_ref().into(), iv.into())
            .encrypt_padded_mut::<NoPadding>(buf, len)
            .map(|_| ()),
        CbcKey::Aes256(k) => cbc::Encryptor::<aes::Aes256>::new(k.as_ref().into(), iv.into())
            .encrypt_padded_mut::<NoPadding>(buf, len)
            .map(|_| ()),
    };
    debug_assert!(r.is_ok());
}

/// CBC-decrypts `buf` (a whole number of blocks, checked by the caller) in place.
fn cbc_decrypt(key: &CbcKey, iv: &[u8; AES_BLOCK], buf: &mut [u8]) {
    let r = match key {
        CbcKey::Aes128(k) => cbc::Decryptor::<aes::Aes128>::new(k.as_ref().into(), iv.into())
            .decrypt_padded_mut::<NoPadding>(buf)
            .map(|_| ()),
        CbcKey::Aes192(k) => cbc::Decryptor::<aes::Aes192>::new(k.as_ref().into(), iv.into())
            .decrypt_padded_mut::<NoPadding>(buf)
            .map(|_| ()),
        CbcKey::Aes256(k) => cbc::Decryptor::<aes::Aes256>::new(k.as_ref().into(), iv.into())
            .decrypt_padded_mut::<NoPadding>(buf)
            .map(|_| ()),
    };
    debug_assert!(r.is_ok());
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hex_literal::hex;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// Every SK transform the engine can negotiate.
    pub(crate) fn all_suites() -> Vec<(EncrAlg, Option<IntegAlg>)> {
        let mut v = vec![
            (EncrAlg::AesGcm16(128), None),
            (EncrAlg::AesGcm16(256), None),
            (EncrAlg::ChaCha20Poly1305, None),
        ];
        for bits in [128, 192, 256] {
            for i in [
                IntegAlg::HmacSha256_128,
                IntegAlg::HmacSha384_192,
                IntegAlg::HmacSha512_256,
            ] {
                v.push((EncrAlg::AesCbc(bits), Some(i)));
            }
        }
        v
    }

    fn cipher(encr: EncrAlg, integ: Option<IntegAlg>, seed: u8) -> SkCipher {
        let ek: Vec<u8> = (0..encr_key_len(encr)).map(|i| seed ^ i as u8).collect();
        let ak: Vec<u8> = (0..integ.map_or(0, integ_key_len))
            .map(|i| seed.wrapping_add(i as u8))
            .collect();
        SkCipher::new(encr, integ, &ek, &ak).unwrap()
    }

    /// A plausible IKE header + SK generic payload header whose length fields cover the
    /// sealed body, as the engine writes them before sealing.
    fn header(c: &SkCipher, plaintext_len: usize) -> Vec<u8> {
        let body = c.sealed_len(plaintext_len);
        let total = 28 + 4 + body;
        let mut m = Vec::new();
        m.extend_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
        m.extend_from_slice(&0x99aa_bbcc_ddee_ff00u64.to_be_bytes());
        m.extend_from_slice(&[46, 0x20, 35, 0x08]);
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&(total as u32).to_be_bytes());
        m.extend_from_slice(&[41, 0]);
        m.extend_from_slice(&((4 + body) as u16).to_be_bytes());
        m
    }

    fn sealed(c: &mut SkCipher, plaintext: &[u8], rng: &mut ChaCha20Rng) -> Vec<u8> {
        let mut m = header(c, plaintext.len());
        c.seal(&mut m, plaintext, rng);
        m
    }

    #[test]
    fn seal_open_round_trip_every_suite_and_length() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        for (encr, integ) in all_suites() {
            let mut tx = cipher(encr, integ, 3);
            let rx = cipher(encr, integ, 3);
            for len in [0, 1, 14, 15, 16, 17, 31, 32, 33, 100, 1500] {
                let pt: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                let m = sealed(&mut tx, &pt, &mut rng);
                assert_eq!(m.len(), 32 + tx.sealed_len(len), "{encr:?} {integ:?} {len}");
                // The length field written before sealing matches the result.
                assert_eq!(
                    u32::from_be_bytes([m[24], m[25], m[26], m[27]]) as usize,
                    m.len()
                );
                if len >= 16 {
                    assert!(!m.windows(16).any(|w| w == &pt[..16]), "plaintext visible");
                }
                assert_eq!(rx.open(&m, 32).unwrap(), pt, "{encr:?} {integ:?} {len}");
            }
        }
    }

    #[test]
    fn cbc_ciphertext_is_block_aligned_and_icv_truncated() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        for (integ, icv) in [
            (IntegAlg::HmacSha256_128, 16),
            (IntegAlg::HmacSha384_192, 24),
            (IntegAlg::HmacSha512_256, 32),
        ] {
            let mut c = cipher(EncrAlg::AesCbc(128), Some(integ), 1);
            for len in 0..40 {
                let body = c.sealed_len(len);
                assert_eq!((body - 16 - icv) % 16, 0);
                assert!(body - 16 - icv > len);
                assert!(body - 16 - icv <= len + 16);
                let m = sealed(&mut c, &vec![9; len], &mut rng);
                assert_eq!(m.len(), 32 + body);
            }
        }
    }

    /// Flipping any single bit anywhere in a sealed message (header/AAD, IV, ciphertext,
    /// ICV) makes `open` fail, for every suite.
    #[test]
    fn every_flipped_bit_fails() {
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        for (encr, integ) in all_suites() {
            let mut tx = cipher(encr, integ, 5);
            let rx = cipher(encr, integ, 5);
            let m = sealed(
                &mut tx,
                b"inner payloads: IDi, AUTH, SA, TSi, TSr",
                &mut rng,
            );
            assert!(rx.open(&m, 32).is_ok());
            let mut t = m.clone();
            for byte in 0..m.len() {
                for bit in 0..8 {
                    t[byte] ^= 1 << bit;
                    assert_eq!(
                        rx.open(&t, 32),
                        Err(Error::IntegrityCheckFailed),
                        "{encr:?} {integ:?} byte {byte} bit {bit}"
                    );
                    t[byte] ^= 1 << bit;
                }
            }
        }
    }

    #[test]
    fn truncated_or_extended_messages_fail() {
        let mut rng = ChaCha20Rng::seed_from_u64(14);
        for (encr, integ) in all_suites() {
            let mut tx = cipher(encr, integ, 6);
            let rx = cipher(encr, integ, 6);
            let m = sealed(&mut tx, b"0123456789abcdef0123", &mut rng);
            for cut in 0..m.len() {
                assert!(rx.open(&m[..cut], 32).is_err(), "{encr:?} cut {cut}");
            }
            let mut longer = m.clone();
            longer.push(0);
            assert!(rx.open(&longer, 32).is_err());
            // A body offset past the end is an error, not a panic.
            assert!(rx.open(&m, m.len() + 1).is_err());
            assert!(rx.open(&m, usize::MAX).is_err());
        }
    }

    #[test]
    fn wrong_key_fails() {
        let mut rng = ChaCha20Rng::seed_from_u64(15);
        for (encr, integ) in all_suites() {
            let mut tx = cipher(encr, integ, 7);
            let m = sealed(&mut tx, b"hello", &mut rng);
            assert_eq!(
                cipher(encr, integ, 8).open(&m, 32),
                Err(Error::IntegrityCheckFailed)
            );
        }
    }

    /// AEAD IVs come from a counter: never repeated under one key (RFC 5282 3.1).
    #[test]
    fn aead_ivs_do_not_repeat() {
        let mut rng = ChaCha20Rng::seed_from_u64(16);
        let mut c = cipher(EncrAlg::AesGcm16(128), None, 1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let m = sealed(&mut c, b"x", &mut rng);
            assert!(seen.insert(m[32..40].to_vec()));
        }
        // A second cipher seeded differently starts elsewhere.
        let mut d = cipher(EncrAlg::AesGcm16(128), None, 1);
        let m = sealed(&mut d, b"x", &mut ChaCha20Rng::seed_from_u64(99));
        assert!(!seen.contains(&m[32..40]));
    }

    #[test]
    fn cbc_ivs_are_random() {
        let mut rng = ChaCha20Rng::seed_from_u64(17);
        let mut c = cipher(EncrAlg::AesCbc(256), Some(IntegAlg::HmacSha256_128), 1);
        let a = sealed(&mut c, b"same", &mut rng);
        let b = sealed(&mut c, b"same", &mut rng);
        assert_ne!(a[32..48], b[32..48]);
        assert_ne!(a[48..], b[48..]);
    }

    #[test]
    fn bad_pad_length_in_authentic_message_is_invalid_syntax() {
        let mut rng = ChaCha20Rng::seed_from_u64(18);
        for (encr, integ) in [
            (EncrAlg::AesGcm16(256), None),
            (EncrAlg::ChaCha20Poly1305, None),
            (EncrAlg::AesCbc(128), Some(IntegAlg::HmacSha256_128)),
        ] {
            let mut tx = cipher(encr, integ, 2);
            let rx = cipher(encr, integ, 2);
            // 14 octets + 1 padding + Pad Length claiming 200.
            let mut m = header(&tx, 14);
            tx.seal_padded(&mut m, &[1; 14], 1, 200, &mut rng);
            let err = rx.open(&m, 32).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidField {
                        field: "SK pad length",
                        ..
                    }
                ),
                "{encr:?}"
            );
            // Pad Length counting every other octet exactly is fine (empty payload chain).
            let mut m = header(&tx, 14);
            tx.seal_padded(&mut m, &[1; 14], 1, 15, &mut rng);
            assert_eq!(rx.open(&m, 32).unwrap(), Vec::<u8>::new());
        }
    }

    #[test]
    fn new_rejects_inconsistent_parameters() {
        let gcm = EncrAlg::AesGcm16(128);
        assert!(SkCipher::new(gcm, Some(IntegAlg::HmacSha256_128), &[0; 20], &[0; 32]).is_err());
        assert!(
            SkCipher::new(gcm, None, &[0; 16], &[]).is_err(),
            "salt missing"
        );
        assert!(SkCipher::new(EncrAlg::AesGcm16(192), None, &[0; 28], &[]).is_err());
        let cbc = EncrAlg::AesCbc(128);
        assert!(SkCipher::new(cbc, None, &[0; 16], &[]).is_err());
        assert!(SkCipher::new(cbc, Some(IntegAlg::HmacSha256_128), &[0; 16], &[0; 16]).is_err());
        assert!(SkCipher::new(
            EncrAlg::AesCbc(512),
            Some(IntegAlg::HmacSha256_128),
            &[0; 64],
            &[0; 32]
        )
        .is_err());
        assert!(SkCipher::new(EncrAlg::ChaCha20Poly1305, None, &[0; 32], &[]).is_err());
        assert!(SkCipher::new(EncrAlg::ChaCha20Poly1305, None, &[0; 36], &[]).is_ok());
    }

    /// Builds `aad | iv | ct | tag` and decrypts it through the SK path.
    fn aead_kat(
        encr: EncrAlg,
        key_and_salt: &[u8],
        aad: &[u8],
        iv: &[u8],
        ct: &[u8],
        tag: &[u8],
        pt: &[u8],
    ) {
        let c = SkCipher::new(encr, None, key_and_salt, &[]).unwrap();
        let m = [aad, iv, ct, tag].concat();
        assert_eq!(c.decrypt(&m, aad.len()).unwrap(), pt, "{encr:?}");
        // And sealing with the same IV reproduces the ciphertext and tag.
        let mut s = SkCipher::new(encr, None, key_and_salt, &[]).unwrap();
        let mut out = aad.to_vec();
        let mut ivb = [0u8; 8];
        ivb.copy_from_slice(iv);
        if let Transform::Aead { next_iv, .. } = &mut s.t {
            *next_iv = Some(u64::from_be_bytes(ivb));
        }
        let (body, pad) = pt.split_at(pt.len() - 1);
        s.seal_padded(
            &mut out,
            body,
            0,
            pad[0],
            &mut ChaCha20Rng::seed_from_u64(0),
        );
        assert_eq!(out, m);
    }

    const GCM_PT: [u8; 60] = hex!(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
    );
    const GCM_AAD: [u8; 20] = hex!("feedfacedeadbeeffeedfacedeadbeefabaddad2");

    /// McGrew & Viega, "The Galois/Counter Mode of Operation", test case 4 (AES-128):
    /// the 12-octet IV `cafebabe facedbaddecaf888` is salt | explicit IV (RFC 4106 4).
    #[test]
    fn aes128_gcm_mcgrew_viega_case4() {
        aead_kat(
            EncrAlg::AesGcm16(128),
            &hex!("feffe9928665731c6d6a8f9467308308 cafebabe"),
            &GCM_AAD,
            &hex!("facedbaddecaf888"),
            &hex!(
                "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
                "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091"
            ),
            &hex!("5bc94fbc3221a5db94fae95ae7121a47"),
            &GCM_PT,
        );
    }

    /// McGrew & Viega test case 16 (AES-256).
    #[test]
    fn aes256_gcm_mcgrew_viega_case16() {
        aead_kat(
            EncrAlg::AesGcm16(256),
            &hex!("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308 cafebabe"),
            &GCM_AAD,
            &hex!("facedbaddecaf888"),
            &hex!(
                "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
                "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
            ),
            &hex!("76fc6ece0f4e1768cddf8853bb2d551b"),
            &GCM_PT,
        );
    }

    /// RFC 7539 2.8.2: nonce `07000000 | 4041424344454647` is salt | IV (RFC 7634 2).
    #[test]
    fn chacha20_poly1305_rfc7539_2_8_2() {
        let key = hex!("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f 07000000");
        aead_kat(
            EncrAlg::ChaCha20Poly1305,
            &key,
            &hex!("50515253c0c1c2c3c4c5c6c7"),
            &hex!("4041424344454647"),
            &hex!(
                "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
                "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
                "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
                "3ff4def08e4b7a9de576d26586cec64b6116"
            ),
            &hex!("1ae10b594f09e26a7e902ecbd0600691"),
            b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.",
        );
    }

    /// RFC 3602 4 cases 1 and 2 (AES-128-CBC) and NIST SP 800-38A F.2.5 (AES-256-CBC).
    #[test]
    fn aes_cbc_known_answers() {
        type Case = (CbcKey, [u8; 16], Vec<u8>, Vec<u8>);
        let cases: [Case; 3] = [
            (
                CbcKey::Aes128(Zeroizing::new(hex!("06a9214036b8a15b512e03d534120006"))),
                hex!("3dafba429d9eb430b422da802c9fac41"),
                b"Single block msg".to_vec(),
                hex!("e353779c1079aeb82708942dbe77181a").to_vec(),
            ),
            (
                CbcKey::Aes128(Zeroizing::new(hex!("c286696d887c9aa0611bbb3e2025a45a"))),
                hex!("562e17996d093d28ddb3ba695a2e6f58"),
                (0u8..32).collect(),
                hex!("d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1").to_vec(),
            ),
            (
                CbcKey::Aes256(Zeroizing::new(hex!(
                    "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"
                ))),
                hex!("000102030405060708090a0b0c0d0e0f"),
                hex!("6bc1bee22e409f96e93d7e117393172a").to_vec(),
                hex!("f58c4c04d6e5f1ba779eabfb5f7bfbd6").to_vec(),
            ),
        ];
        for (key, iv, pt, ct) in cases {
            let mut buf = pt.clone();
            cbc_encrypt(&key, &iv, &mut buf);
            assert_eq!(buf, ct);
            cbc_decrypt(&key, &iv, &mut buf);
            assert_eq!(buf, pt);
        }
    }

    /// CBC message layout against an independent reconstruction: the ICV is the
    /// truncated HMAC of everything before it, and the body decrypts (RFC 3602 key 1)
    /// to plaintext | zero padding | pad length.
    #[test]
    fn cbc_layout_matches_rfc7296_3_14() {
        let ek = hex!("06a9214036b8a15b512e03d534120006");
        let ak = [0x42u8; 32];
        let mut c = SkCipher::new(
            EncrAlg::AesCbc(128),
            Some(IntegAlg::HmacSha256_128),
            &ek,
            &ak,
        )
        .unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(19);
        let pt = b"twenty octets here!!";
        let m = sealed(&mut c, pt, &mut rng);
        let icv_at = m.len() - 16;
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &ak), &m[..icv_at]);
        assert_eq!(&m[icv_at..], &tag.as_ref()[..16]);
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&m[32..48]);
        let mut body = m[48..icv_at].to_vec();
        assert_eq!(body.len(), 32);
        cbc_decrypt(&CbcKey::Aes128(Zeroizing::new(ek)), &iv, &mut body);
        assert_eq!(&body[..20], pt);
        assert_eq!(&body[20..31], &[0u8; 11]);
        assert_eq!(body[31], 11);
    }

    #[test]
    fn max_plaintext_len_is_the_largest_that_fits() {
        for (encr, integ) in all_suites() {
            let c = cipher(encr, integ, 1);
            for space in 0..200 {
                match c.max_plaintext_len(space) {
                    None => assert!(c.sealed_len(0) > space, "{encr:?} {space}"),
                    Some(n) => {
                        assert!(c.sealed_len(n) <= space, "{encr:?} {space}");
                        assert!(c.sealed_len(n + 1) > space, "{encr:?} {space}");
                    }
                }
            }
        }
    }

    /// Hostile input: random messages and body offsets never panic and never open.
    #[test]
    fn random_input_never_panics_or_opens() {
        use rand::Rng;
        let mut rng = ChaCha20Rng::seed_from_u64(21);
        for (encr, integ) in all_suites() {
            let rx = cipher(encr, integ, 9);
            for _ in 0..300 {
                let len = rng.gen_range(0..200);
                let mut m = vec![0u8; len];
                rng.fill_bytes(&mut m);
                let start = rng.gen_range(0..len + 3);
                assert!(rx.open(&m, start).is_err());
            }
        }
    }

    #[test]
    fn ciphers_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<SkCipher>();
    }

    /// Opening a maximum-size message is linear: 64 KiB opens in well under the time a
    /// quadratic implementation would need.
    #[test]
    fn large_messages_open_quickly() {
        let mut rng = ChaCha20Rng::seed_from_u64(20);
        for (encr, integ) in all_suites() {
            let mut tx = cipher(encr, integ, 4);
            let rx = cipher(encr, integ, 4);
            let pt = vec![0x5au8; 65_000];
            let m = sealed(&mut tx, &pt, &mut rng);
            let t = std::time::Instant::now();
            for _ in 0..10 {
                assert_eq!(rx.open(&m, 32).unwrap().len(), pt.len());
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(5),
                "{encr:?}: {:?}",
                t.elapsed()
            );
        }
    }
}
