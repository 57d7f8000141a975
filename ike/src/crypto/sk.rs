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
        msg.reserve(self.sealed_len(plaintext.len()));
        match &mut self.t {
            Transform::Aead { key, salt, next_iv } => {
                let iv = *next_iv.get_or_insert_with(|| rng.next_u64());
                *next_iv = Some(iv.wrapping_add(1));
                let aad_end = msg.len();
                msg.extend_from_slice(&iv.to_be_bytes());
                let ct_start = msg.len();
                msg.extend_from_slice(plaintext);
                msg.resize(msg.len() + pad_len, 0);
                msg.push(pad_len as u8);
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
                msg.push(pad_len as u8);
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
