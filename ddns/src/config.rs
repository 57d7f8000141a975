//! `[dns]` section of the daemon configuration.
//!
//! ```toml
//! [dns]
//! listen = ["192.0.2.10"]          # default ["0.0.0.0", "::"]
//! port = 53
//! domain = "vpn.example.com"       # or taken from [service.ipsec-ddns] domain
//! ttl = 5                          # positive answers (gateway IDs, pool)
//! negative_ttl = 5                 # SOA minimum and SOA TTL (RFC 2308)
//! ns_ttl = 3600
//! pool = "pool"                    # pool.<domain>; "" disables
//! udp_sockets = 2                  # SO_REUSEPORT sockets per address; 0 = one per CPU
//! [[dns.ns]]
//! name = "ns1"                     # relative to the domain, or absolute
//! addrs = ["192.0.2.10"]
//! [dns.soa]
//! rname = "hostmaster.vpn.example.com"
//! refresh = 3600
//! [[dns.tsig_key]]                 # RFC 8945 shared secret
//! name = "xfr-key"
//! algorithm = "hmac-sha256"        # or hmac-sha384, hmac-sha512
//! secret = "base64..."
//! [[dns.secondary]]                # may AXFR/IXFR with the key; gets NOTIFY
//! address = "192.0.2.53:53"
//! tsig_key = "xfr-key"
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// Configuration of the authoritative DNS server (`[dns]`).
///
/// Every member of a cluster must use the same `domain`, `ns`, `soa`, TTLs and `pool` so
/// that all members answer identically (what delegating admins check, issue 4).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Serve DNS at all.
    pub enable: bool,
    /// Addresses to listen on (UDP and TCP). On a multi-homed host list the addresses
    /// resolvers query explicitly: replies leave from the routing-chosen source address.
    pub listen: Vec<IpAddr>,
    /// Port for UDP and TCP (RFC 1035 section 4.2). 0 picks a free port (tests).
    pub port: u16,
    /// The zone, `<domain>` of `<gateway-id>.<domain>`. May instead come from the
    /// cluster configuration.
    pub domain: Option<String>,
    /// Name servers of the zone: one per member, with their addresses (glue).
    pub ns: Vec<NsConfig>,
    /// TTL of gateway-ID and pool answers, seconds. Short, so failover is seen quickly.
    pub ttl: u32,
    /// Negative-caching TTL (SOA MINIMUM and the SOA record TTL, RFC 2308 section 5).
    pub negative_ttl: u32,
    /// TTL of the NS records and their glue.
    pub ns_ttl: u32,
    /// SOA fields other than the serial (which is derived from the data).
    pub soa: SoaConfig,
    /// Name answering the addresses of the members that are up (seed 003 ch. 3,
    /// DNS load balancing). A single label is relative to the domain; empty disables.
    pub pool: String,
    /// At most this many pool addresses per answer (0 = all members that are up).
    pub pool_max_answers: usize,
    /// This member's addresses in the pool answer: where routers reach its IKE (outside).
    /// Empty: its specified (not wildcard) `ike.listen` addresses.
    pub pool_address: Vec<IpAddr>,
    /// Most tunnels this member takes, for the pool's weighting (load / capacity). Unset:
    /// the number of addresses in its `pool.v4` (else `pool.v6`).
    pub pool_capacity: Option<u32>,
    /// SO_REUSEPORT UDP sockets per listen address, one receive loop each (0 = one per CPU).
    pub udp_sockets: usize,
    /// Largest UDP response we send to an EDNS client (RFC 6891 section 6.2.5); 1232
    /// avoids IP fragmentation (DNS flag day 2020).
    pub edns_udp_size: u16,
    /// Idle timeout of a TCP connection, seconds (RFC 7766 section 6.2.3).
    pub tcp_timeout_secs: u64,
    /// TSIG keys (RFC 8945) for zone transfers and NOTIFY (`[[dns.tsig_key]]`).
    pub tsig_key: Vec<TsigKeyConfig>,
    /// Secondary servers (`[[dns.secondary]]`): each may transfer the zone (AXFR/IXFR
    /// over TCP, from its address, signed with its key) and is sent NOTIFY on change.
    pub secondary: Vec<SecondaryConfig>,
}

/// One TSIG key (`[[dns.tsig_key]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TsigKeyConfig {
    /// Key name, as the secondary knows it (a domain name, e.g. `xfr-key`).
    pub name: String,
    /// HMAC algorithm (RFC 8945 section 6): `hmac-sha256` (default), `hmac-sha384`,
    /// `hmac-sha512`.
    #[serde(default)]
    pub algorithm: TsigAlgorithmName,
    /// The shared secret, base64 (as `tsig-keygen` / `keymgr -t` print it).
    pub secret: TsigSecret,
}

/// TSIG algorithms we sign and verify with (RFC 8945 section 6).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TsigAlgorithmName {
    /// HMAC-SHA256 (mandatory to implement).
    #[default]
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    /// HMAC-SHA384.
    #[serde(rename = "hmac-sha384")]
    HmacSha384,
    /// HMAC-SHA512.
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
}

/// A TSIG secret, decoded from base64 while the configuration is read.
#[derive(Clone, PartialEq, Eq)]
pub struct TsigSecret(pub Vec<u8>);

impl std::fmt::Debug for TsigSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TsigSecret({} octets)", self.0.len())
    }
}

impl<'de> Deserialize<'de> for TsigSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bytes = data_encoding::BASE64
            .decode(s.trim().as_bytes())
            .map_err(|e| de::Error::custom(format!("invalid base64 secret: {e}")))?;
        if bytes.is_empty() {
            return Err(de::Error::custom("empty secret"));
        }
        Ok(TsigSecret(bytes))
    }
}

/// One secondary server (`[[dns.secondary]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecondaryConfig {
    /// Where NOTIFY goes, `ip:port` or `ip` (port 53). Transfers are allowed from this IP.
    pub address: SecondaryAddr,
    /// Name of the `[[dns.tsig_key]]` its transfers and our NOTIFYs are signed with.
    pub tsig_key: String,
    /// Send NOTIFY on change (RFC 1996); false: transfers only.
    #[serde(default = "yes")]
    pub notify: bool,
}

fn yes() -> bool {
    true
}

/// `ip:port` or a bare `ip` (port 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecondaryAddr(pub SocketAddr);

impl<'de> Deserialize<'de> for SecondaryAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<SocketAddr>()
            .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            .map(SecondaryAddr)
            .map_err(|_| de::Error::custom(format!("invalid address \"{s}\" (want ip or ip:port)")))
    }
}

/// One name server of the zone.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NsConfig {
    /// Host name; a single label is relative to the domain.
    pub name: String,
    /// Its addresses: served as glue (and as A/AAAA when the name is inside the zone).
    #[serde(default)]
    pub addrs: Vec<IpAddr>,
}

/// SOA timers (RFC 1035 section 3.3.13). The same on every member.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoaConfig {
    /// Primary name server (MNAME); default: the first NS.
    pub mname: Option<String>,
    /// Responsible mailbox (RNAME) as a name; default `hostmaster.<domain>`.
    pub rname: Option<String>,
    /// REFRESH, seconds.
    pub refresh: u32,
    /// RETRY, seconds.
    pub retry: u32,
    /// EXPIRE, seconds.
    pub expire: u32,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            enable: true,
            listen: vec![
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            ],
            port: 53,
            domain: None,
            ns: Vec::new(),
            ttl: 5,
            negative_ttl: 5,
            ns_ttl: 3600,
            soa: SoaConfig::default(),
            pool: "pool".to_owned(),
            pool_max_answers: 0,
            pool_address: Vec::new(),
            pool_capacity: None,
            udp_sockets: 0,
            edns_udp_size: 1232,
            tcp_timeout_secs: 10,
            tsig_key: Vec::new(),
            secondary: Vec::new(),
        }
    }
}

impl Default for SoaConfig {
    fn default() -> Self {
        SoaConfig {
            mname: None,
            rname: None,
            refresh: 3600,
            retry: 600,
            expire: 86400,
        }
    }
}

impl DnsConfig {
    /// Number of UDP sockets per address actually used.
    pub fn effective_udp_sockets(&self) -> usize {
        if self.udp_sockets > 0 {
            self.udp_sockets.min(64)
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_short_ttls_on_port_53() {
        let c: DnsConfig = toml::from_str("").unwrap();
        assert_eq!(c, DnsConfig::default());
        assert_eq!(c.port, 53);
        assert_eq!((c.ttl, c.negative_ttl), (5, 5));
        assert_eq!(c.pool, "pool");
    }

    #[test]
    fn full_section_parses() {
        let c: DnsConfig = toml::from_str(
            r#"
            listen = ["127.0.0.1"]
            port = 5353
            domain = "vpn.example.com"
            ttl = 10
            udp_sockets = 3
            [[ns]]
            name = "ns1"
            addrs = ["192.0.2.1", "2001:db8::1"]
            [soa]
            rname = "admin.example.com"
            retry = 60
            "#,
        )
        .unwrap();
        assert_eq!(c.port, 5353);
        assert_eq!(c.ns[0].addrs.len(), 2);
        assert_eq!(c.soa.retry, 60);
        assert_eq!(c.soa.refresh, 3600);
        assert_eq!(c.effective_udp_sockets(), 3);
    }

    #[test]
    fn transfer_keys_parse_and_bad_values_are_rejected() {
        let c: DnsConfig = toml::from_str(
            r#"
            [[tsig_key]]
            name = "xfr-key"
            secret = "c2VjcmV0LXNlY3JldA=="
            [[tsig_key]]
            name = "k2"
            algorithm = "hmac-sha512"
            secret = "AAEC"
            [[secondary]]
            address = "192.0.2.53"
            tsig_key = "xfr-key"
            [[secondary]]
            address = "[2001:db8::53]:5353"
            tsig_key = "k2"
            notify = false
            "#,
        )
        .unwrap();
        assert_eq!(c.tsig_key[0].secret.0, b"secret-secret");
        assert_eq!(c.tsig_key[0].algorithm, TsigAlgorithmName::HmacSha256);
        assert_eq!(c.tsig_key[1].algorithm, TsigAlgorithmName::HmacSha512);
        assert_eq!(c.secondary[0].address.0, "192.0.2.53:53".parse().unwrap());
        assert!(c.secondary[0].notify);
        assert_eq!(c.secondary[1].address.0.port(), 5353);
        assert!(!c.secondary[1].notify);
        for bad in [
            "[[tsig_key]]\nname = \"k\"\nsecret = \"not base64!\"",
            "[[tsig_key]]\nname = \"k\"\nsecret = \"\"",
            "[[tsig_key]]\nname = \"k\"\nalgorithm = \"hmac-md5\"\nsecret = \"AAEC\"",
            "[[secondary]]\naddress = \"ns2.example\"\ntsig_key = \"k\"",
            "[[secondary]]\naddress = \"192.0.2.1\"",
        ] {
            assert!(toml::from_str::<DnsConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<DnsConfig>("prot = 53").is_err());
        assert!(toml::from_str::<DnsConfig>("[soa]\nserial = 1").is_err());
    }
}
