//! Gateway IDs: the DNS label a peer router is published under (seed 003, chapter 4,
//! "DDNS Description", step 2.ii).
//!
//! The seed's rules, applied in order to the peer identity (the certificate's CN value for
//! certificate peers, the serial number / IKE identity for PSK peers):
//!
//! 1. every character other than an ASCII letter, digit or hyphen becomes a hyphen;
//! 2. runs of two or more hyphens become one hyphen;
//! 3. leading and trailing hyphens are removed.
//!
//! Beyond the seed (decided here, deterministic, so every member derives the same ID):
//!
//! * **Empty result** (identity empty or made only of special characters): the ID is
//!   `gw-` followed by the first 8 lowercase hex digits of SHA-256 over the raw identity
//!   bytes. [`Treatment::Empty`] is returned so the caller logs a line naming the peer.
//! * **Longer than 63 octets** (one DNS label, RFC 1035 section 2.3.4): the sanitized ID
//!   is cut to its first 54 octets, trailing hyphens of that cut are removed, and `-` plus
//!   the same 8 hex digits of SHA-256 over the raw identity are appended (at most 63
//!   octets). Two long identities sharing a prefix thus still get different IDs.
//!   [`Treatment::Truncated`] is returned.
//! * **Case**: IDs compare case-insensitively (DNS names do, RFC 4343). A [`GatewayId`]
//!   keeps the original spelling for display and logs and a lowercase key for lookups,
//!   equality, ordering and hashing.
//!
//! Non-ASCII input: the identity is treated as bytes, so each byte of a multi-byte UTF-8
//! character (and any non-UTF-8 byte) becomes a hyphen; runs collapse, so the result is
//! the same as replacing the whole character.

use std::fmt;
use std::hash::{Hash, Hasher};

/// Longest DNS label, in octets (RFC 1035 section 2.3.4).
pub const MAX_LABEL: usize = 63;
/// Octets of the sanitized ID kept before the hash suffix when it is too long.
const TRUNCATED_PREFIX: usize = 54;
/// Prefix of the ID given to an identity that sanitizes to nothing.
const EMPTY_PREFIX: &str = "gw-";

/// What had to be done beyond the seed's three rules to obtain a valid label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// The seed's rules alone produced a valid label.
    AsIs,
    /// The rules produced an empty string; the ID is `gw-<hash8>`.
    Empty,
    /// The rules produced more than 63 octets; the ID is `<first 54>-<hash8>`.
    Truncated,
}

impl Treatment {
    /// True when the caller should log a line naming the peer identity.
    pub fn needs_log(self) -> bool {
        !matches!(self, Treatment::AsIs)
    }
}

/// A gateway ID: one DNS label, letters/digits/hyphens, 1..=63 octets, no leading or
/// trailing hyphen. Equality, hashing and ordering are case-insensitive.
#[derive(Clone)]
pub struct GatewayId {
    display: Box<str>,
    key: Box<str>,
}

impl GatewayId {
    /// Derive the gateway ID of a peer from its identity (seed 003 ch. 4 step 2.ii plus
    /// the documented treatments of empty and over-long results).
    ///
    /// ```
    /// use ddns::{GatewayId, Treatment};
    /// let (id, t) = GatewayId::from_identity("MG90/Site #12.north");
    /// assert_eq!(id.as_str(), "MG90-Site-12-north");
    /// assert_eq!(id.key(), "mg90-site-12-north");
    /// assert_eq!(t, Treatment::AsIs);
    /// ```
    pub fn from_identity(identity: impl AsRef<[u8]>) -> (GatewayId, Treatment) {
        let raw = identity.as_ref();
        let mut out = String::with_capacity(raw.len().min(256));
        let mut last_hyphen = true; // true at start: drops leading hyphens
        for &b in raw {
            if b.is_ascii_alphanumeric() {
                out.push(b as char);
                last_hyphen = false;
            } else if !last_hyphen {
                out.push('-');
                last_hyphen = true;
            }
        }
        while out.ends_with('-') {
            out.pop();
        }
        if out.is_empty() {
            let id = format!("{EMPTY_PREFIX}{}", hash8(raw));
            return (GatewayId::from_valid(id), Treatment::Empty);
        }
        if out.len() > MAX_LABEL {
            out.truncate(TRUNCATED_PREFIX); // ASCII only: always a char boundary
            while out.ends_with('-') {
                out.pop();
            }
            out.push('-');
            out.push_str(&hash8(raw));
            return (GatewayId::from_valid(out), Treatment::Truncated);
        }
        (GatewayId::from_valid(out), Treatment::AsIs)
    }

    /// Parse a string that must already be a valid gateway ID (e.g. a DNS label read from
    /// a query or from a replicated record). Returns `None` if it is not one.
    pub fn parse(label: &str) -> Option<GatewayId> {
        let b = label.as_bytes();
        let valid = !b.is_empty()
            && b.len() <= MAX_LABEL
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b.first() != Some(&b'-')
            && b.last() != Some(&b'-')
            && !label.contains("--");
        valid.then(|| GatewayId::from_valid(label.to_owned()))
    }

    fn from_valid(display: String) -> GatewayId {
        let key = display.to_ascii_lowercase().into_boxed_str();
        GatewayId {
            display: display.into_boxed_str(),
            key,
        }
    }

    /// The ID as derived, original case (for display and logs).
    pub fn as_str(&self) -> &str {
        &self.display
    }

    /// The lowercase form used for lookups and comparisons.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `<gateway-id>.<domain>` (domain without trailing dot), original case.
    pub fn fqdn(&self, domain: &str) -> String {
        format!("{}.{}", self.display, domain.trim_end_matches('.'))
    }
}

/// Extract the CN value from a textual distinguished name such as
/// `C=US, O=Acme, CN=router-7` (the form strongSwan and x509-parser print). The last CN
/// wins if there are several (most specific RDN). Returns `None` when there is no CN.
pub fn cn_from_dn(dn: &str) -> Option<&str> {
    dn.split([',', '/'])
        .filter_map(|rdn| {
            let (k, v) = rdn.split_once('=')?;
            k.trim().eq_ignore_ascii_case("CN").then_some(v.trim())
        })
        .rfind(|v| !v.is_empty())
}

fn hash8(raw: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, raw);
    let mut s = String::with_capacity(8);
    for b in &d.as_ref()[..4] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl PartialEq for GatewayId {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for GatewayId {}
impl Hash for GatewayId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state)
    }
}
impl PartialOrd for GatewayId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for GatewayId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}
impl fmt::Display for GatewayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}
impl fmt::Debug for GatewayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GatewayId({:?})", &*self.display)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> (String, Treatment) {
        let (g, t) = GatewayId::from_identity(s);
        (g.as_str().to_owned(), t)
    }

    #[test]
    fn seed_rules_special_chars_become_single_hyphens_and_edges_trimmed() {
        // seed: '.', '/' etc. become '-', runs collapse, leading/trailing removed
        assert_eq!(id("router.example.com").0, "router-example-com");
        assert_eq!(id("site/north/mg90").0, "site-north-mg90");
        assert_eq!(id("a..//b").0, "a-b");
        assert_eq!(id("--edge--").0, "edge");
        assert_eq!(id("/.leading and trailing./").0, "leading-and-trailing");
        assert_eq!(id("N7H3-2C41-00AB").0, "N7H3-2C41-00AB");
        assert_eq!(id("a - b").0, "a-b");
        assert_eq!(id("plain").1, Treatment::AsIs);
    }

    #[test]
    fn similar_ids_collide_as_the_seed_warns() {
        let (a, _) = GatewayId::from_identity("mg90.site1");
        let (b, _) = GatewayId::from_identity("mg90/site1");
        let (c, _) = GatewayId::from_identity("MG90_SITE1");
        assert_eq!(a, b);
        assert_eq!(a, c, "case-insensitive comparison");
        assert_eq!(c.as_str(), "MG90-SITE1", "original case kept for display");
        assert_eq!(c.key(), "mg90-site1");
    }

    #[test]
    fn non_ascii_becomes_hyphen() {
        assert_eq!(id("zürich-gw").0, "z-rich-gw");
        assert_eq!(id("東京").1, Treatment::Empty);
        let (g, t) = GatewayId::from_identity([0xffu8, b'a', 0x00, b'b']);
        assert_eq!((g.as_str(), t), ("a-b", Treatment::AsIs));
    }

    #[test]
    fn empty_gets_hashed_gw_prefix_deterministically() {
        let (a, ta) = id("");
        let (b, tb) = id("./.");
        let (b2, _) = id("./.");
        assert_eq!(ta, Treatment::Empty);
        assert_eq!(tb, Treatment::Empty);
        assert!(ta.needs_log());
        assert!(a.starts_with("gw-") && a.len() == 11, "{a}");
        assert!(b.starts_with("gw-") && b.len() == 11, "{b}");
        assert_ne!(a, b, "hash of the full identity distinguishes them");
        assert_eq!(b, b2);
        // SHA-256("") starts e3b0c442
        assert_eq!(a, "gw-e3b0c442");
        assert!(GatewayId::parse(&a).is_some());
    }

    #[test]
    fn exactly_63_is_kept_64_is_truncated_with_hash() {
        let s63 = "a".repeat(63);
        assert_eq!(id(&s63), (s63.clone(), Treatment::AsIs));
        let s64 = "a".repeat(64);
        let (g, t) = id(&s64);
        assert_eq!(t, Treatment::Truncated);
        assert!(t.needs_log());
        assert!(g.len() <= MAX_LABEL);
        assert_eq!(&g[..55], &format!("{}-", "a".repeat(54)));
        let (g2, _) = id(&format!("{}b", "a".repeat(64)));
        assert_ne!(g, g2, "same prefix, different identity, different id");
        assert!(GatewayId::parse(&g).is_some());
    }

    #[test]
    fn truncation_does_not_leave_double_hyphen() {
        // char 54 is a hyphen in the sanitized form
        let s = format!("{}.{}", "x".repeat(53), "y".repeat(40));
        let (g, t) = id(&s);
        assert_eq!(t, Treatment::Truncated);
        assert!(!g.contains("--"), "{g}");
        assert!(GatewayId::parse(&g).is_some(), "{g}");
        assert_eq!(&g[..54], &format!("{}-", "x".repeat(53)));
    }

    #[test]
    fn long_special_input_counts_sanitized_length_not_raw() {
        let s = format!("{}abc{}", "/".repeat(100), ".".repeat(100));
        assert_eq!(id(&s), ("abc".to_owned(), Treatment::AsIs));
    }

    #[test]
    fn parse_accepts_only_valid_labels() {
        assert!(GatewayId::parse("Router-1").is_some());
        for bad in ["", "-a", "a-", "a--b", "a.b", "a b", &"a".repeat(64)] {
            assert!(GatewayId::parse(bad).is_none(), "{bad:?}");
        }
        assert_eq!(GatewayId::parse("ROUTER-1"), GatewayId::parse("router-1"));
    }

    #[test]
    fn cn_is_extracted_from_dn() {
        assert_eq!(
            cn_from_dn("C=US, O=Acme, CN=mg90.site-1"),
            Some("mg90.site-1")
        );
        assert_eq!(cn_from_dn("/C=US/O=Acme/CN=r7"), Some("r7"));
        assert_eq!(cn_from_dn("cn = r8 , O=x"), Some("r8"));
        assert_eq!(cn_from_dn("C=US, O=Acme"), None);
        let (g, _) = GatewayId::from_identity(cn_from_dn("O=Acme, CN=mg90.site-1").unwrap_or(""));
        assert_eq!(g.fqdn("vpn.example."), "mg90-site-1.vpn.example");
    }
}
