//! IKEv2 cryptography: PRFs and prf+ (RFC 7296 2.13), key exchange (2.7), IKE SA and
//! CHILD SA key derivation (2.14, 2.17, 2.18), PSK authentication (2.15), NAT detection
//! (2.23), cookies (2.6) and the Encrypted payload transform (3.14, RFC 5282, RFC 7634).
//!
//! Everything is sans-IO: randomness is passed in, except ring's ephemeral ECDH keys
//! (see [`KeyExchange`]).
use std::net::{IpAddr, SocketAddr};

use ring::digest;
use zeroize::Zeroizing;

use crate::config::{DhGroup, EncrAlg, IntegAlg, PrfAlg};
use crate::error::Error;

mod cookie;
mod dh;
mod prf;
mod sk;

pub use cookie::{CookieSecret, COOKIE_LEN};
pub use dh::{group_number, public_value_len, shared_secret_len, KeyExchange};
pub use prf::{Prf, PRF_PLUS_MAX_BLOCKS};
pub use sk::SkCipher;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

/// The transforms negotiated for an IKE SA (RFC 7296 3.3). `integ` is `None` for AEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IkeSuite {
    pub encr: EncrAlg,
    pub prf: PrfAlg,
    pub integ: Option<IntegAlg>,
    pub dh: DhGroup,
}

/// Octets of SK_e / ESP encryption key material for a cipher, including the 4-octet salt
/// of AES-GCM (RFC 4106 8.1, RFC 5282 7.1) and ChaCha20-Poly1305 (RFC 7634 3).
pub fn encr_key_len(encr: EncrAlg) -> usize {
    match encr {
        EncrAlg::AesCbc(bits) => usize::from(bits) / 8,
        EncrAlg::AesGcm16(bits) => usize::from(bits) / 8 + 4,
        EncrAlg::ChaCha20Poly1305 => 32 + 4,
    }
}

/// Octets of SK_a / ESP integrity key: the HMAC output length (RFC 4868 2.1.1).
pub fn integ_key_len(integ: IntegAlg) -> usize {
    match integ {
        IntegAlg::HmacSha256_128 => 32,
        IntegAlg::HmacSha384_192 => 48,
        IntegAlg::HmacSha512_256 => 64,
    }
}

/// Octets of the truncated ICV (RFC 4868 2.3).
pub fn integ_icv_len(integ: IntegAlg) -> usize {
    match integ {
        IntegAlg::HmacSha256_128 => 16,
        IntegAlg::HmacSha384_192 => 24,
        IntegAlg::HmacSha512_256 => 32,
    }
}

/// Whether the cipher is an AEAD (combined mode, no separate integrity transform).
pub fn is_aead(encr: EncrAlg) -> bool {
    !matches!(encr, EncrAlg::AesCbc(_))
}

/// The seven secrets of an IKE SA (RFC 7296 2.14).
pub struct IkeKeys {
    /// Derives CHILD SA keys and rekeyed IKE SA keys.
    pub sk_d: Zeroizing<Vec<u8>>,
    pub sk_ai: Zeroizing<Vec<u8>>,
    pub sk_ar: Zeroizing<Vec<u8>>,
    pub sk_ei: Zeroizing<Vec<u8>>,
    pub sk_er: Zeroizing<Vec<u8>>,
    /// Used in the initiator's / responder's AUTH payload (2.15).
    pub sk_pi: Zeroizing<Vec<u8>>,
    pub sk_pr: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for IkeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IkeKeys").finish_non_exhaustive()
    }
}

impl IkeKeys {
    /// The SK payload transforms for this IKE SA from one side's point of view:
    /// `(outbound, inbound)`. The initiator seals with SK_ei/SK_ai and opens with
    /// SK_er/SK_ar; the responder the other way round (RFC 7296 2.14).
    pub fn sk_ciphers(
        &self,
        suite: &IkeSuite,
        we_are_initiator: bool,
    ) -> Result<(SkCipher, SkCipher), Error> {
        let i = SkCipher::new(suite.encr, suite.integ, &self.sk_ei, &self.sk_ai)?;
        let r = SkCipher::new(suite.encr, suite.integ, &self.sk_er, &self.sk_ar)?;
        Ok(if we_are_initiator { (i, r) } else { (r, i) })
    }

    /// Splits `{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}` (RFC 7296 2.14).
    fn split(suite: &IkeSuite, keymat: &[u8]) -> Self {
        let prf_len = Prf::new(suite.prf).output_len();
        let a_len = suite.integ.map_or(0, integ_key_len);
        let e_len = encr_key_len(suite.encr);
        let mut at = 0;
        let mut take = |n: usize| {
            let k = Zeroizing::new(keymat[at..at + n].to_vec());
            at += n;
            k
        };
        IkeKeys {
            sk_d: take(prf_len),
            sk_ai: take(a_len),
            sk_ar: take(a_len),
            sk_ei: take(e_len),
            sk_er: take(e_len),
            sk_pi: take(prf_len),
            sk_pr: take(prf_len),
        }
    }
}

fn ike_keymat_len(suite: &IkeSuite) -> usize {
    3 * Prf::new(suite.prf).output_len()
        + 2 * suite.integ.map_or(0, integ_key_len)
        + 2 * encr_key_len(suite.encr)
}

fn spi_seed(ni: &[u8], nr: &[u8], spi_i: u64, spi_r: u64) -> Vec<u8> {
    let mut s = Vec::with_capacity(ni.len() + nr.len() + 16);
    s.extend_from_slice(ni);
    s.extend_from_slice(nr);
    s.extend_from_slice(&spi_i.to_be_bytes());
    s.extend_from_slice(&spi_r.to_be_bytes());
    s
}

/// SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 2.14). HMAC PRFs take the whole `Ni | Nr` as
/// the key.
pub fn skeyseed(prf: PrfAlg, ni: &[u8], nr: &[u8], g_ir: &[u8]) -> Zeroizing<Vec<u8>> {
    let key = [ni, nr].concat();
    Prf::new(prf).compute_secret(&key, &[g_ir])
}

/// IKE SA keys after IKE_SA_INIT (RFC 7296 2.14):
/// `{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)`.
pub fn ike_sa_keys(
    s: &IkeSuite,
    ni: &[u8],
    nr: &[u8],
    g_ir: &[u8],
    spi_i: u64,
    spi_r: u64,
) -> IkeKeys {
    let seed_key = skeyseed(s.prf, ni, nr, g_ir);
    let keymat = Prf::new(s.prf).plus(
        &seed_key,
        &spi_seed(ni, nr, spi_i, spi_r),
        ike_keymat_len(s),
    );
    IkeKeys::split(s, &keymat)
}

/// Keys of a new IKE SA made by CREATE_CHILD_SA rekeying (RFC 7296 2.18):
/// `SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)` with the old SA's PRF, then prf+ of
/// the new suite's PRF over `Ni | Nr | SPIi | SPIr` (the new SPIs).
#[allow(clippy::too_many_arguments)]
pub fn rekeyed_ike_sa_keys(
    s: &IkeSuite,
    old_prf: PrfAlg,
    old_sk_d: &[u8],
    g_ir: &[u8],
    ni: &[u8],
    nr: &[u8],
    spi_i: u64,
    spi_r: u64,
) -> IkeKeys {
    let seed_key = Prf::new(old_prf).compute_secret(old_sk_d, &[g_ir, ni, nr]);
    let keymat = Prf::new(s.prf).plus(
        &seed_key,
        &spi_seed(ni, nr, spi_i, spi_r),
        ike_keymat_len(s),
    );
    IkeKeys::split(s, &keymat)
}

/// Key material for one direction of an ESP SA: the encryption key (with the AEAD salt
/// appended) and the integrity key (empty for AEAD). Goes into [`crate::EspKeys`].
#[derive(Clone)]
pub struct EspKeyMaterial {
    pub encr_key: Zeroizing<Vec<u8>>,
    pub integ_key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for EspKeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EspKeyMaterial")
            .field("encr_key_len", &self.encr_key.len())
            .field("integ_key_len", &self.integ_key.len())
            .finish()
    }
}

/// CHILD SA keys (RFC 7296 2.17): `KEYMAT = prf+(SK_d, Ni | Nr)`, or
/// `prf+(SK_d, g^ir (new) | Ni | Nr)` with PFS. Returns `(initiator->responder,
/// responder->initiator)`; each takes its encryption key first, then its integrity key.
pub fn child_sa_keys(
    prf: PrfAlg,
    sk_d: &[u8],
    g_ir: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    encr: EncrAlg,
    integ: Option<IntegAlg>,
) -> (EspKeyMaterial, EspKeyMaterial) {
    let e_len = encr_key_len(encr);
    let a_len = integ.map_or(0, integ_key_len);
    let mut seed = Zeroizing::new(Vec::with_capacity(
        g_ir.map_or(0, <[u8]>::len) + ni.len() + nr.len(),
    ));
    if let Some(g) = g_ir {
        seed.extend_from_slice(g);
    }
    seed.extend_from_slice(ni);
    seed.extend_from_slice(nr);
    let keymat = Prf::new(prf).plus(sk_d, &seed, 2 * (e_len + a_len));
    let part = |from: usize, n: usize| Zeroizing::new(keymat[from..from + n].to_vec());
    let i2r = EspKeyMaterial {
        encr_key: part(0, e_len),
        integ_key: part(e_len, a_len),
    };
    let r2i = EspKeyMaterial {
        encr_key: part(e_len + a_len, e_len),
        integ_key: part(2 * e_len + a_len, a_len),
    };
    (i2r, r2i)
}

/// The key pad of shared-key authentication (RFC 7296 2.15).
pub const KEY_PAD: &[u8] = b"Key Pad for IKEv2";

/// `AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)` (RFC 7296 2.15).
pub fn psk_auth(prf: PrfAlg, psk: &[u8], signed_octets: &[u8]) -> Vec<u8> {
    let p = Prf::new(prf);
    let k = p.compute_secret(psk, &[KEY_PAD]);
    p.compute(&k, &[signed_octets])
}

/// Compares a received AUTH value with the expected one in constant time.
pub fn auth_matches(expected: &[u8], received: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    expected.len() == received.len() && bool::from(expected.ct_eq(received))
}

/// `<SignedOctets> = RealMessage | NonceData(other side) | prf(SK_p, RestOfIDPayload)`
/// (RFC 7296 2.15). `real_message` is our (or, when verifying, the peer's) whole
/// IKE_SA_INIT message as sent; `nonce_other` the other side's Nonce Data; `sk_p` is
/// SK_pi for the initiator's AUTH and SK_pr for the responder's; `id_payload_body` the
/// ID payload after its generic header (ID Type, RESERVED, Identification Data).
pub fn signed_octets(
    prf: PrfAlg,
    real_message: &[u8],
    nonce_other: &[u8],
    sk_p: &[u8],
    id_payload_body: &[u8],
) -> Vec<u8> {
    let maced_id = Prf::new(prf).compute(sk_p, &[id_payload_body]);
    let mut out = Vec::with_capacity(real_message.len() + nonce_other.len() + maced_id.len());
    out.extend_from_slice(real_message);
    out.extend_from_slice(nonce_other);
    out.extend_from_slice(&maced_id);
    out
}

/// NAT_DETECTION_SOURCE_IP / _DESTINATION_IP data: `SHA-1(SPIi | SPIr | IP | Port)`
/// (RFC 7296 2.23). In IKE_SA_INIT requests SPIr is zero.
pub fn nat_detection_hash(spi_i: u64, spi_r: u64, addr: SocketAddr) -> [u8; 20] {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&spi_i.to_be_bytes());
    ctx.update(&spi_r.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(a) => ctx.update(&a.octets()),
        IpAddr::V6(a) => ctx.update(&a.octets()),
    }
    ctx.update(&addr.port().to_be_bytes());
    let mut out = [0u8; 20];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}
