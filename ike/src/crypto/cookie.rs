//! Stateless cookies for IKE_SA_INIT (RFC 7296 2.6).
//!
//! `Cookie = <VersionIDofSecret> | HMAC-SHA256(secret, Ni | IPi | SPIi)`. The responder
//! keeps the current and the previous secret, so cookies handed out just before a
//! rotation still verify.
use std::net::IpAddr;

use rand::{CryptoRng, RngCore};
use ring::hmac;
use subtle::ConstantTimeEq;

/// Version ID (4 octets) + HMAC-SHA256 (32 octets); within the 1..64 octets allowed for
/// COOKIE notification data (RFC 7296 3.10.1).
pub const COOKIE_LEN: usize = 4 + 32;

struct Secret {
    version: u32,
    key: hmac::Key,
}

/// The responder's rotating cookie secret (RFC 7296 2.6).
pub struct CookieSecret {
    current: Secret,
    previous: Option<Secret>,
}

impl std::fmt::Debug for CookieSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieSecret")
            .field("version", &self.current.version)
            .finish_non_exhaustive()
    }
}

fn fresh(version: u32, rng: &mut (impl RngCore + CryptoRng)) -> Secret {
    let mut k = zeroize::Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut k[..]);
    Secret {
        version,
        key: hmac::Key::new(hmac::HMAC_SHA256, &k[..]),
    }
}

fn mac(s: &Secret, ni: &[u8], ip: IpAddr, spi_i: u64) -> [u8; COOKIE_LEN] {
    let mut ctx = hmac::Context::with_key(&s.key);
    ctx.update(ni);
    match ip {
        IpAddr::V4(a) => ctx.update(&a.octets()),
        IpAddr::V6(a) => ctx.update(&a.octets()),
    }
    ctx.update(&spi_i.to_be_bytes());
    let tag = ctx.sign();
    let mut out = [0u8; COOKIE_LEN];
    out[..4].copy_from_slice(&s.version.to_be_bytes());
    out[4..].copy_from_slice(tag.as_ref());
    out
}

impl CookieSecret {
    pub fn new(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let version = rng.next_u32();
        Self {
            current: fresh(version, rng),
            previous: None,
        }
    }

    /// Replaces the secret; the old one keeps verifying until the next rotation. The
    /// caller rotates periodically (RFC 7296 2.6 suggests frequently).
    pub fn rotate(&mut self, rng: &mut (impl RngCore + CryptoRng)) {
        let next = fresh(self.current.version.wrapping_add(1), rng);
        self.previous = Some(std::mem::replace(&mut self.current, next));
    }

    /// The cookie for an initiator's nonce, address and SPI.
    pub fn cookie(&self, ni: &[u8], ip: IpAddr, spi_i: u64) -> Vec<u8> {
        mac(&self.current, ni, ip, spi_i).to_vec()
    }

    /// Whether `cookie` was issued by the current or the previous secret for these
    /// inputs. Constant-time in the MAC comparison.
    pub fn verify(&self, cookie: &[u8], ni: &[u8], ip: IpAddr, spi_i: u64) -> bool {
        if cookie.len() != COOKIE_LEN {
            return false;
        }
        let version = u32::from_be_bytes([cookie[0], cookie[1], cookie[2], cookie[3]]);
        let secret = if version == self.current.version {
            &self.current
        } else {
            match &self.previous {
                Some(p) if p.version == version => p,
                _ => return false,
            }
        };
        mac(secret, ni, ip, spi_i).ct_eq(cookie).into()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn cookie_binds_nonce_address_and_spi() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let s = CookieSecret::new(&mut rng);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let c = s.cookie(b"nonce-i", ip, 42);
        assert_eq!(c.len(), COOKIE_LEN);
        assert!(s.verify(&c, b"nonce-i", ip, 42));
        assert!(!s.verify(&c, b"nonce-x", ip, 42));
        assert!(!s.verify(&c, b"nonce-i", "192.0.2.2".parse().unwrap(), 42));
        assert!(!s.verify(&c, b"nonce-i", ip, 43));
        for i in 0..c.len() {
            let mut t = c.clone();
            t[i] ^= 0x01;
            assert!(!s.verify(&t, b"nonce-i", ip, 42), "flipped octet {i}");
        }
        assert!(!s.verify(&c[..COOKIE_LEN - 1], b"nonce-i", ip, 42));
        assert!(!s.verify(&[], b"nonce-i", ip, 42));
    }

    #[test]
    fn previous_secret_verifies_until_second_rotation() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let mut s = CookieSecret::new(&mut rng);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let c0 = s.cookie(b"n", ip, 7);
        s.rotate(&mut rng);
        let c1 = s.cookie(b"n", ip, 7);
        assert_ne!(c0, c1);
        assert!(s.verify(&c0, b"n", ip, 7));
        assert!(s.verify(&c1, b"n", ip, 7));
        s.rotate(&mut rng);
        assert!(!s.verify(&c0, b"n", ip, 7));
        assert!(s.verify(&c1, b"n", ip, 7));
    }

    #[test]
    fn other_responder_secret_rejects() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let a = CookieSecret::new(&mut rng);
        let b = CookieSecret::new(&mut rng);
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        let mut c = a.cookie(b"n", ip, 1);
        // Even with b's version ID, a's MAC does not verify under b.
        c[..4].copy_from_slice(&b.cookie(b"n", ip, 1)[..4]);
        assert!(!b.verify(&c, b"n", ip, 1));
    }
}
