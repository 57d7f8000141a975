//! The ESP ciphers: AES-GCM-16 (RFC 4106), ChaCha20-Poly1305 (RFC 7634), AES-CBC
//! (RFC 3602) with HMAC-SHA2 (RFC 4868). In-place seal and open of one ESP packet.
use std::ops::Range;

use aes::cipher::{
    block_padding::NoPadding, generic_array::GenericArray, BlockDecryptMut, BlockEncrypt,
    BlockEncryptMut, InnerIvInit, KeyInit,
};
use ring::{aead, hmac};
use subtle::ConstantTimeEq;

use super::{EspDrop, ESP_HEADER_LEN};
use crate::config::{EncrAlg, IntegAlg};
use crate::error::Error;
use crate::event::EspKeys;

/// AEAD ICV length (16 octets for both AES-GCM-16 and ChaCha20-Poly1305).
const AEAD_ICV_LEN: usize = 16;
/// AEAD explicit IV length (RFC 4106 3.1, RFC 7634 2).
const AEAD_IV_LEN: usize = 8;
const AES_BLOCK: usize = 16;

/// The AES key schedule of an AES-CBC SA.
#[allow(clippy::large_enum_variant)]
pub enum CbcCipher {
    Aes128(aes::Aes128),
    Aes256(aes::Aes256),
}

/// A keyed ESP transform for one direction of one SA.
///
/// One exists per SA direction and lives inline in it, so the size difference between
/// the variants costs nothing per packet.
#[allow(clippy::large_enum_variant)]
pub enum Transform {
    /// AES-GCM-16 or ChaCha20-Poly1305: nonce = salt || explicit IV.
    Aead {
        key: aead::LessSafeKey,
        salt: [u8; 4],
    },
    /// AES-CBC then HMAC-SHA2 truncated to `icv_len` (encrypt-then-MAC, RFC 4303 3.3.2).
    CbcHmac {
        cipher: Box<CbcCipher>,
        mac: hmac::Key,
        icv_len: usize,
    },
}

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transform::Aead { key, .. } => write!(f, "Aead({:?})", key.algorithm()),
            Transform::CbcHmac { icv_len, .. } => write!(f, "CbcHmac(icv {icv_len})"),
        }
    }
}

fn bad_key(what: &'static str) -> Error {
    Error::Crypto(what)
}

impl Transform {
    /// Keys the transform from negotiated keying material (RFC 7296 2.17).
    pub fn new(keys: &EspKeys) -> Result<Self, Error> {
        match keys.encr {
            EncrAlg::AesGcm16(_) | EncrAlg::ChaCha20Poly1305 => {
                let alg: &'static aead::Algorithm = match keys.encr {
                    EncrAlg::AesGcm16(128) => &aead::AES_128_GCM,
                    EncrAlg::AesGcm16(256) => &aead::AES_256_GCM,
                    EncrAlg::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
                    _ => return Err(bad_key("unsupported AES-GCM key length")),
                };
                let klen = alg.key_len();
                if keys.encr_key.len() != klen + 4 {
                    return Err(bad_key("ESP AEAD key must be cipher key plus 4-octet salt"));
                }
                let key = aead::UnboundKey::new(alg, &keys.encr_key[..klen])
                    .map_err(|_| bad_key("ESP AEAD key rejected"))?;
                let mut salt = [0u8; 4];
                salt.copy_from_slice(&keys.encr_key[klen..]);
                Ok(Transform::Aead {
                    key: aead::LessSafeKey::new(key),
                    salt,
                })
            }
            EncrAlg::AesCbc(bits) => {
                let cipher = match bits {
                    128 => CbcCipher::Aes128(
                        aes::Aes128::new_from_slice(&keys.encr_key)
                            .map_err(|_| bad_key("AES-128-CBC key must be 16 octets"))?,
                    ),
                    256 => CbcCipher::Aes256(
                        aes::Aes256::new_from_slice(&keys.encr_key)
                            .map_err(|_| bad_key("AES-256-CBC key must be 32 octets"))?,
                    ),
                    _ => return Err(bad_key("unsupported AES-CBC key length")),
                };
                let (alg, icv_len, key_len) = match keys.integ {
                    Some(IntegAlg::HmacSha256_128) => (hmac::HMAC_SHA256, 16, 32),
                    Some(IntegAlg::HmacSha384_192) => (hmac::HMAC_SHA384, 24, 48),
                    Some(IntegAlg::HmacSha512_256) => (hmac::HMAC_SHA512, 32, 64),
                    None => return Err(bad_key("AES-CBC needs an integrity algorithm")),
                };
                if keys.integ_key.len() != key_len {
                    return Err(bad_key("HMAC key length does not match RFC 4868"));
                }
                Ok(Transform::CbcHmac {
                    cipher: Box::new(cipher),
                    mac: hmac::Key::new(alg, &keys.integ_key),
                    icv_len,
                })
            }
        }
    }

    /// Length of the IV field on the wire.
    pub fn iv_len(&self) -> usize {
        match self {
            Transform::Aead { .. } => AEAD_IV_LEN,
            Transform::CbcHmac { .. } => AES_BLOCK,
        }
    }

    /// The ciphertext (payload + padding + pad length + next header) is a multiple of this.
    pub fn align(&self) -> usize {
        match self {
            Transform::Aead { .. } => 4,
            Transform::CbcHmac { .. } => AES_BLOCK,
        }
    }

    /// The alignment a sender pads the ciphertext to when the path MTU leaves room: the
    /// AES block for AES-GCM, so that the cipher and GHASH run on whole blocks only (ring
    /// then skips its partial-block tail, about a fifth of the per-packet cost at 1400
    /// octets). Padding beyond the 4-octet minimum is the sender's choice (RFC 4303 2.4);
    /// receivers accept any, so this changes nothing for the peer.
    pub fn block_align(&self) -> usize {
        match self {
            Transform::Aead { key, .. }
                if key.algorithm() == &aead::AES_128_GCM
                    || key.algorithm() == &aead::AES_256_GCM =>
            {
                AES_BLOCK
            }
            _ => self.align(),
        }
    }

    pub fn icv_len(&self) -> usize {
        match self {
            Transform::Aead { .. } => AEAD_ICV_LEN,
            Transform::CbcHmac { icv_len, .. } => *icv_len,
        }
    }

    /// Seals `pkt` = SPI | seq | IV space | plaintext (padded, with trailer) | ICV space
    /// in place. `seq` is the full sequence number; with ESN its high half enters the
    /// AAD (RFC 4106 5) or the ICV computation (RFC 4303 3.3.2.1) without being sent.
    pub(super) fn seal(&self, pkt: &mut [u8], seq: u64, esn: bool) -> Result<(), EspDrop> {
        let iv_end = ESP_HEADER_LEN + self.iv_len();
        let icv_len = self.icv_len();
        let ct_end = pkt.len().checked_sub(icv_len).ok_or(EspDrop::NoRoom)?;
        if ct_end < iv_end {
            return Err(EspDrop::NoRoom);
        }
        match self {
            Transform::Aead { key, salt } => {
                // The explicit IV is the 64-bit sequence number: unique per SA and key
                // (RFC 4106 3.1, RFC 7634 2 allow a counter).
                seal_aead(key, salt, pkt, seq.to_be_bytes(), seq, esn, ct_end)
            }
            Transform::CbcHmac {
                cipher,
                mac,
                icv_len,
            } => {
                // RFC 3602 3 wants an unpredictable IV; derive it by encrypting the
                // (unique) sequence number under the SA key, NIST SP 800-38A appendix C.
                let mut iv = GenericArray::from([0u8; 16]);
                iv[..8].copy_from_slice(&seq.to_be_bytes());
                iv[8..12].copy_from_slice(&pkt[..4]);
                iv[12..].copy_from_slice(b"ESP\x01");
                let ct = &mut pkt[iv_end..ct_end];
                match cipher.as_ref() {
                    CbcCipher::Aes128(c) => {
                        c.encrypt_block(&mut iv);
                        cbc::Encryptor::<aes::Aes128>::inner_iv_init(c.clone(), &iv)
                            .encrypt_padded_mut::<NoPadding>(ct, ct.len())
                            .map_err(|_| EspDrop::NoRoom)?;
                    }
                    CbcCipher::Aes256(c) => {
                        c.encrypt_block(&mut iv);
                        cbc::Encryptor::<aes::Aes256>::inner_iv_init(c.clone(), &iv)
                            .encrypt_padded_mut::<NoPadding>(ct, ct.len())
                            .map_err(|_| EspDrop::NoRoom)?;
                    }
                }
                pkt[ESP_HEADER_LEN..iv_end].copy_from_slice(&iv);
                let tag = icv(mac, &pkt[..ct_end], seq, esn);
                pkt[ct_end..ct_end + icv_len].copy_from_slice(&tag.as_ref()[..*icv_len]);
                Ok(())
            }
        }
    }

    /// [`seal`](Self::seal) with a chosen AEAD explicit IV instead of the sequence
    /// number, for the published known-answer vectors (draft-mcgrew-gcm-test-01,
    /// RFC 7634 Appendix A), whose IVs are arbitrary. Test-only: production IVs are
    /// always the sequence number.
    #[cfg(test)]
    pub(super) fn seal_with_iv(
        &self,
        pkt: &mut [u8],
        iv: [u8; AEAD_IV_LEN],
        seq: u64,
        esn: bool,
    ) -> Result<(), EspDrop> {
        let ct_end = pkt
            .len()
            .checked_sub(self.icv_len())
            .ok_or(EspDrop::NoRoom)?;
        match self {
            Transform::Aead { key, salt } if ct_end >= ESP_HEADER_LEN + AEAD_IV_LEN => {
                seal_aead(key, salt, pkt, iv, seq, esn, ct_end)
            }
            _ => Err(EspDrop::NoRoom),
        }
    }

    /// Verifies and decrypts `pkt` (SPI through ICV) in place; returns the range of the
    /// plaintext (payload, padding, pad length, next header) within `pkt`.
    pub(super) fn open(
        &self,
        pkt: &mut [u8],
        seq: u64,
        esn: bool,
    ) -> Result<Range<usize>, EspDrop> {
        let iv_end = ESP_HEADER_LEN + self.iv_len();
        let icv_len = self.icv_len();
        let align = self.align();
        let ct_end = pkt.len().checked_sub(icv_len).ok_or(EspDrop::Truncated)?;
        // At least pad length and next header, and a whole number of blocks.
        if ct_end < iv_end + 2 || !(ct_end - iv_end).is_multiple_of(align) {
            return Err(EspDrop::Truncated);
        }
        match self {
            Transform::Aead { key, salt } => {
                let mut iv = [0u8; AEAD_IV_LEN];
                iv.copy_from_slice(&pkt[ESP_HEADER_LEN..iv_end]);
                let (aad_buf, aad_len) = aad(pkt, seq, esn);
                let (head, tag) = pkt.split_at_mut(ct_end);
                let tag = aead::Tag::try_from(&tag[..]).map_err(|_| EspDrop::Truncated)?;
                key.open_in_place_separate_tag(
                    nonce(salt, &iv),
                    aead::Aad::from(&aad_buf[..aad_len]),
                    tag,
                    &mut head[iv_end..],
                    0..,
                )
                .map_err(|_| EspDrop::Integrity)?;
                Ok(iv_end..ct_end)
            }
            Transform::CbcHmac {
                cipher,
                mac,
                icv_len,
            } => {
                // Encrypt-then-MAC: verify before touching the ciphertext (RFC 4303 3.4.4).
                let tag = icv(mac, &pkt[..ct_end], seq, esn);
                let ok: bool = tag.as_ref()[..*icv_len].ct_eq(&pkt[ct_end..]).into();
                if !ok {
                    return Err(EspDrop::Integrity);
                }
                let mut iv = GenericArray::from([0u8; 16]);
                iv.copy_from_slice(&pkt[ESP_HEADER_LEN..iv_end]);
                let ct = &mut pkt[iv_end..ct_end];
                match cipher.as_ref() {
                    CbcCipher::Aes128(c) => {
                        cbc::Decryptor::<aes::Aes128>::inner_iv_init(c.clone(), &iv)
                            .decrypt_padded_mut::<NoPadding>(ct)
                            .map_err(|_| EspDrop::Truncated)?;
                    }
                    CbcCipher::Aes256(c) => {
                        cbc::Decryptor::<aes::Aes256>::inner_iv_init(c.clone(), &iv)
                            .decrypt_padded_mut::<NoPadding>(ct)
                            .map_err(|_| EspDrop::Truncated)?;
                    }
                }
                Ok(iv_end..ct_end)
            }
        }
    }
}

/// AEAD seal of SPI | seq | IV | plaintext | ICV space in place, with explicit IV `iv`
/// (RFC 4106 3, RFC 7634 2): nonce = salt | IV, AAD per [`aad`].
fn seal_aead(
    key: &aead::LessSafeKey,
    salt: &[u8; 4],
    pkt: &mut [u8],
    iv: [u8; AEAD_IV_LEN],
    seq: u64,
    esn: bool,
    ct_end: usize,
) -> Result<(), EspDrop> {
    let iv_end = ESP_HEADER_LEN + AEAD_IV_LEN;
    pkt[ESP_HEADER_LEN..iv_end].copy_from_slice(&iv);
    let (aad_buf, aad_len) = aad(pkt, seq, esn);
    let (head, rest) = pkt.split_at_mut(ct_end);
    let tag = key
        .seal_in_place_separate_tag(
            nonce(salt, &iv),
            aead::Aad::from(&aad_buf[..aad_len]),
            &mut head[iv_end..],
        )
        .map_err(|_| EspDrop::Oversized)?;
    rest[..AEAD_ICV_LEN].copy_from_slice(tag.as_ref());
    Ok(())
}

fn nonce(salt: &[u8; 4], iv: &[u8; 8]) -> aead::Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(iv);
    aead::Nonce::assume_unique_for_key(n)
}

/// AAD of RFC 4106 5 / RFC 7634 3: SPI | seq (32-bit), or SPI | seq high | seq low (ESN).
fn aad(pkt: &[u8], seq: u64, esn: bool) -> ([u8; 12], usize) {
    let mut a = [0u8; 12];
    a[..4].copy_from_slice(&pkt[..4]);
    if esn {
        a[4..8].copy_from_slice(&((seq >> 32) as u32).to_be_bytes());
        a[8..12].copy_from_slice(&(seq as u32).to_be_bytes());
        (a, 12)
    } else {
        a[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        (a, 8)
    }
}

/// ICV over SPI .. end of ciphertext, plus the implicit high sequence bits with ESN
/// (RFC 4303 3.3.2.1).
fn icv(mac: &hmac::Key, covered: &[u8], seq: u64, esn: bool) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(mac);
    ctx.update(covered);
    if esn {
        ctx.update(&((seq >> 32) as u32).to_be_bytes());
    }
    ctx.sign()
}
