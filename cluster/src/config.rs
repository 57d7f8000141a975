//! `service ipsec-ddns` configuration in the seed's own words (seed 003, Table 4-1).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Default replication stream port.
pub const DEFAULT_REPLICATION_PORT: u16 = 9100;
/// Default membership / join / discovery port.
pub const DEFAULT_MEMBERSHIP_PORT: u16 = 4369;

fn default_replication_port() -> u16 {
    DEFAULT_REPLICATION_PORT
}
fn default_membership_port() -> u16 {
    DEFAULT_MEMBERSHIP_PORT
}
fn default_dead_after_ms() -> u64 {
    3000
}
fn default_gossip_interval_ms() -> u64 {
    250
}
fn default_true() -> bool {
    true
}

/// `service ipsec-ddns`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `self <address>`: this member's address (IPv4 typically, or FQDN), also its ID.
    #[serde(rename = "self")]
    pub self_addr: String,
    /// `peer <address>` (repeatable): the other members' `self` addresses.
    #[serde(default)]
    pub peer: Vec<String>,
    /// `secret <ddns_pass>`: at least 8 characters, the same on every member.
    pub secret: String,
    /// `domain <domain_name>`: the same on every member.
    pub domain: String,
    /// `enable`.
    #[serde(default)]
    pub enable: bool,
    /// Replication stream port (TCP, mutual TLS).
    #[serde(default = "default_replication_port")]
    pub replication_port: u16,
    /// Membership / join port (TCP, TLS + PAKE).
    #[serde(default = "default_membership_port")]
    pub membership_port: u16,
    /// A member silent this long is down and its records are not answered.
    #[serde(default = "default_dead_after_ms")]
    pub dead_after_ms: u64,
    /// Digest exchange / heartbeat period.
    #[serde(default = "default_gossip_interval_ms")]
    pub gossip_interval_ms: u64,
    /// Where this member keeps its state.
    pub data_dir: PathBuf,
    /// When no peer is reachable on a first start, create a new cluster (the seed's first
    /// member). `false`: fail with the unreachable peers named instead.
    #[serde(default = "default_true")]
    pub bootstrap: bool,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("self", &self.self_addr)
            .field("peer", &self.peer)
            .field("secret", &"<hidden>")
            .field("domain", &self.domain)
            .field("enable", &self.enable)
            .field("replication_port", &self.replication_port)
            .field("membership_port", &self.membership_port)
            .field("dead_after_ms", &self.dead_after_ms)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl ClusterConfig {
    /// A configuration with the defaults of everything optional.
    pub fn new(
        self_addr: &str,
        peer: &[&str],
        secret: &str,
        domain: &str,
        data_dir: PathBuf,
    ) -> Self {
        Self {
            self_addr: self_addr.to_owned(),
            peer: peer.iter().map(|p| (*p).to_owned()).collect(),
            secret: secret.to_owned(),
            domain: domain.to_owned(),
            enable: true,
            replication_port: DEFAULT_REPLICATION_PORT,
            membership_port: DEFAULT_MEMBERSHIP_PORT,
            dead_after_ms: default_dead_after_ms(),
            gossip_interval_ms: default_gossip_interval_ms(),
            data_dir,
            bootstrap: true,
        }
    }

    /// Check the values the seed constrains.
    pub fn validate(&self) -> Result<(), Error> {
        if self.secret.chars().count() < 8 {
            return Err(Error::SecretTooShort);
        }
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && (s.parse::<IpAddr>().is_ok()
                    || s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        };
        if !name_ok(&self.self_addr) {
            return Err(Error::InvalidConfig(format!(
                "self {:?} is not an address or host name",
                self.self_addr
            )));
        }
        for p in &self.peer {
            if !name_ok(p) {
                return Err(Error::InvalidConfig(format!(
                    "peer {p:?} is not an address or host name"
                )));
            }
            if *p == self.self_addr {
                return Err(Error::InvalidConfig(format!(
                    "peer {p} is this member's self"
                )));
            }
        }
        if self.peer.len() + 1 > crate::node::MAX_MEMBERS {
            return Err(Error::InvalidConfig(format!(
                "{} peers: a cluster has at most {} members",
                self.peer.len(),
                crate::node::MAX_MEMBERS
            )));
        }
        if self.domain.is_empty() || !name_ok(&self.domain) {
            return Err(Error::InvalidConfig(format!(
                "domain {:?} is not a domain name",
                self.domain
            )));
        }
        if self.replication_port == self.membership_port {
            return Err(Error::InvalidConfig(
                "replication and membership ports must differ".into(),
            ));
        }
        if self.dead_after_ms < 2 * self.gossip_interval_ms || self.gossip_interval_ms == 0 {
            return Err(Error::InvalidConfig(
                "dead_after_ms must be at least twice gossip_interval_ms".into(),
            ));
        }
        Ok(())
    }
}

/// Resolve `host` (address or FQDN) with `port`.
pub(crate) fn resolve(host: &str, port: u16) -> Result<SocketAddr, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::Unreachable {
            peer: host.to_owned(),
            reason: format!("cannot resolve: {e}"),
        })?
        .next()
        .ok_or_else(|| Error::Unreachable {
            peer: host.to_owned(),
            reason: "name has no address".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secret_and_unknown_keys_are_refused() {
        let mut c = ClusterConfig::new("10.1.65.1", &["10.1.65.2"], "short", "x.org", "d".into());
        assert!(matches!(c.validate(), Err(Error::SecretTooShort)));
        c.secret = "mysecretpassword".into();
        assert!(c.validate().is_ok());
        let bad = r#"{"self":"10.1.65.1","secret":"mysecretpassword","domain":"x.org","data_dir":"d","colour":1}"#;
        assert!(serde_json::from_str::<ClusterConfig>(bad).is_err());
        let good = r#"{"self":"10.1.65.1","peer":["10.1.65.2"],"secret":"mysecretpassword","domain":"x.org","enable":true,"data_dir":"d"}"#;
        let c: ClusterConfig = serde_json::from_str(good).expect("parses");
        assert_eq!(c.replication_port, 9100);
        assert_eq!(c.membership_port, 4369);
        assert_eq!(c.dead_after_ms, 3000);
        assert!(!format!("{c:?}").contains("mysecretpassword"));
    }
}
