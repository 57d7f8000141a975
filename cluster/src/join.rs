//! Join protocol on the membership port (4369): SPAKE2 bound to the TLS 1.3 exporter.
//!
//! The TLS server certificate is not trusted yet when a host joins, so the session is
//! authenticated by SPAKE2 (Abdalla-Pointcheval; the `spake2` crate) run over it. Both PAKE
//! identities and both key-confirmation MACs contain the TLS exporter value (RFC 8446 §7.5),
//! so a man in the middle, who has two TLS sessions with two different exporters, fails the
//! confirmation. SPAKE2 gives an attacker one password guess per online attempt and nothing to
//! test guesses against offline; failed attempts are rate-limited by the server.
//!
//! ```text
//! joiner                                   member
//!   Hello { pake_a }              ->
//!                                 <-  Challenge { pake_b, confirm_member }
//!   (checks confirm_member: wrong secret stops here, nothing sent)
//!   Confirm { confirm_joiner, member, domain } ->
//!                                 <-  Welcome { domain, CA cert+key, members } | Refused
//! ```

use ring::hmac;
use serde::{Deserialize, Serialize};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use zeroize::Zeroizing;

use crate::Error;

/// Label of the TLS exporter used to bind the PAKE (RFC 5705 / RFC 8446 §7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-headend-ipsec-ddns-join";

/// Messages of the join protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JoinMsg {
    Hello {
        pake: Vec<u8>,
    },
    Challenge {
        pake: Vec<u8>,
        confirm: Vec<u8>,
    },
    Confirm {
        confirm: Vec<u8>,
        member: String,
        domain: String,
    },
    Welcome {
        domain: String,
        ca_cert: Vec<u8>,
        ca_key_pem: String,
        members: Vec<String>,
    },
    Refused(Refusal),
}

/// Why a member refused a joiner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    WrongSecret,
    DomainMismatch {
        theirs: String,
    },
    ClusterFull {
        max: usize,
    },
    RateLimited,
    /// The member has not created or joined a cluster yet (both starting at once).
    NotYet,
}

fn identity(role: &[u8], exporter: &[u8; 32]) -> Identity {
    let mut v = role.to_vec();
    v.extend_from_slice(exporter);
    Identity::new(&v)
}

const JOINER: &[u8] = b"headend ipsec-ddns joiner ";
const MEMBER: &[u8] = b"headend ipsec-ddns member ";

/// Joiner side: start SPAKE2 (side A).
pub fn joiner_start(secret: &str, exporter: &[u8; 32]) -> (Spake2<Ed25519Group>, Vec<u8>) {
    Spake2::<Ed25519Group>::start_a(
        &Password::new(secret.as_bytes()),
        &identity(JOINER, exporter),
        &identity(MEMBER, exporter),
    )
}

/// Member side: start SPAKE2 (side B).
pub fn member_start(secret: &str, exporter: &[u8; 32]) -> (Spake2<Ed25519Group>, Vec<u8>) {
    Spake2::<Ed25519Group>::start_b(
        &Password::new(secret.as_bytes()),
        &identity(JOINER, exporter),
        &identity(MEMBER, exporter),
    )
}

/// Finish SPAKE2 with the other side's message.
pub fn finish(state: Spake2<Ed25519Group>, theirs: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    state
        .finish(theirs)
        .map(Zeroizing::new)
        .map_err(|_| Error::Malformed("SPAKE2 message"))
}

fn mac_input(role: &[u8], exporter: &[u8; 32]) -> Vec<u8> {
    let mut v = b"confirm ".to_vec();
    v.extend_from_slice(role);
    v.extend_from_slice(exporter);
    v
}

/// Key confirmation: HMAC-SHA256(K, "confirm" || role || exporter).
pub fn confirm(key: &[u8], joiner: bool, exporter: &[u8; 32]) -> Vec<u8> {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let role = if joiner { JOINER } else { MEMBER };
    hmac::sign(&k, &mac_input(role, exporter)).as_ref().to_vec()
}

/// Constant-time check of the other side's confirmation.
pub fn verify(key: &[u8], joiner: bool, exporter: &[u8; 32], tag: &[u8]) -> bool {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let role = if joiner { JOINER } else { MEMBER };
    hmac::verify(&k, &mac_input(role, exporter), tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_secret_same_exporter_confirms() {
        let x = [7u8; 32];
        let (a, ma) = joiner_start("mysecretpassword", &x);
        let (b, mb) = member_start("mysecretpassword", &x);
        let ka = finish(a, &mb).expect("a");
        let kb = finish(b, &ma).expect("b");
        assert!(verify(&ka, false, &x, &confirm(&kb, false, &x)));
        assert!(verify(&kb, true, &x, &confirm(&ka, true, &x)));
    }

    #[test]
    fn wrong_secret_or_other_tls_session_fails_confirmation() {
        let x = [7u8; 32];
        let (a, ma) = joiner_start("mysecretpassword", &x);
        let (b, mb) = member_start("notthesecret", &x);
        let ka = finish(a, &mb).expect("a");
        let kb = finish(b, &ma).expect("b");
        assert!(!verify(&ka, false, &x, &confirm(&kb, false, &x)));
        // A relay between two TLS sessions (different exporters) fails too.
        let y = [8u8; 32];
        let (a, ma) = joiner_start("mysecretpassword", &x);
        let (b, mb) = member_start("mysecretpassword", &y);
        let ka = finish(a, &mb).expect("a");
        let kb = finish(b, &ma).expect("b");
        assert!(!verify(&ka, false, &x, &confirm(&kb, false, &y)));
    }
}
