//! The daemon's one TOML configuration file, for both `headend run` (responder) and
//! `headend peer` (initiator).
//!
//! Unknown keys are errors; every error names the file, the line and the key
//! (`error: x.toml:12: unknown key 'ike.lifetim'`). Sections:
//! `[ike]` (sockets, identity, proposals, inside networks, lifetimes, DPD, retransmission,
//! limits), `[psk]`, `[pool]`, `[log]`, `[peer]` (peer-router side), and the sections
//! other parts own: `[dns]`, `[service.ipsec-ddns]`, `[dataplane]`.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ike::{
    AuthConfig, EndpointConfig, EspProposal, Identity, IkeProposal, InitiatorConfig, Lifetimes,
    Limits, PoolConfig, PskStore, ResponderConfig, Retransmit, TrafficSelector,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::error::Error;
use crate::proposal;

/// The built-in configuration of `headend run` without `--config`: a responder on
/// 127.0.0.1 high ports with a demo PSK, so a newcomer can start it with one command.
pub const DEFAULT_CONFIG: &str = r#"
[ike]
listen = ["127.0.0.1"]
port = 50500
natt_port = 54500
local_id = "headend.demo"
local_ts = ["0.0.0.0/0"]

[psk]
default = "headend-demo-psk"

[pool]
v4 = "10.99.0.0/16"
"#;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub ike: IkeSection,
    #[serde(default)]
    pub psk: PskSection,
    #[serde(default)]
    pub pool: PoolSection,
    #[serde(default)]
    pub log: LogSection,
    /// Only read by `headend peer`.
    #[serde(default)]
    pub peer: Option<PeerSection>,
    /// The embedded DNS server (`ddns::DnsConfig`); started when present and enabled.
    #[serde(default)]
    pub dns: Option<ddns::DnsConfig>,
    /// `[service.ipsec-ddns]`: the cluster (seed 003 ch. 4 vocabulary).
    #[serde(default)]
    pub service: ServiceSection,
    /// The userspace ESP data plane; started when present (needs root for the TUN device).
    #[serde(default)]
    pub dataplane: Option<crate::dataplane::DataplaneConfig>,
    /// `[auth]`: certificate authentication instead of PSKs (issue 7).
    #[serde(default)]
    pub auth: Option<AuthSection>,
    /// `[metrics]`: Prometheus metrics over HTTP (`headend run --metrics` and `headend peer
    /// --metrics` override).
    #[serde(default)]
    pub metrics: Option<MetricsSection>,
    /// The `[auth]` files, loaded by [`Config::load`]; shared with the engine.
    #[serde(skip)]
    pub cert_auth: Option<Arc<ike::cert::CertAuth>>,
    /// The `[auth]` CRL files, resolved against the config file's directory.
    #[serde(skip)]
    pub crl_paths: Vec<std::path::PathBuf>,
}

/// `[auth]`: our certificate and key, the CAs peers must chain to, and CRLs (re-read by
/// `headend run` when they change). Paths are relative to the config file's directory;
/// files are PEM (several blocks allowed) or DER. With `[auth]` both sides authenticate
/// with certificates (RFC 7296 2.15, RFC 7427); `ike.local_id` / `peer.local_id` must
/// be a subjectAltName (FQDN, e-mail, IP) of `cert`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Our certificate, optionally followed by the intermediates to send with it.
    pub cert: String,
    /// Our private key: PKCS#8 (RSA, ECDSA P-256/P-384, Ed25519) or PKCS#1 RSA.
    pub key: String,
    /// Trusted CA certificates.
    #[serde(default)]
    pub cas: Vec<String>,
    /// Certificate revocation lists.
    #[serde(default)]
    pub crls: Vec<String>,
    /// How an RSA `key` signs (RFC 7427): `"pkcs1"` (PKCS#1 v1.5 SHA-256, default) or
    /// `"pss"` (RSASSA-PSS SHA-256). Verification accepts both either way.
    #[serde(default)]
    pub rsa_padding: RsaPaddingKey,
}

/// `auth.rsa_padding`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RsaPaddingKey {
    #[default]
    Pkcs1,
    Pss,
}

/// Re-reads the `[auth]` CRL files when their size or mtime changes and swaps the
/// engine's CRL set ([`ike::cert::CertAuth::set_crls`]).
#[derive(Debug)]
pub struct CrlWatcher {
    auth: Arc<ike::cert::CertAuth>,
    paths: Vec<std::path::PathBuf>,
    stamp: Vec<Option<(u64, std::time::SystemTime)>>,
}

impl CrlWatcher {
    fn stamps(&self) -> Vec<Option<(u64, std::time::SystemTime)>> {
        self.paths
            .iter()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.len(), m.modified().ok()?))
            })
            .collect()
    }

    /// Reloads the CRLs if a file changed; returns whether the set was replaced. A file
    /// that does not read or parse keeps the previous set (logged).
    pub fn poll(&mut self) -> bool {
        let now = self.stamps();
        if now == self.stamp {
            return false;
        }
        self.stamp = now;
        match read_crls(&self.paths).and_then(|c| {
            self.auth
                .set_crls(c)
                .map_err(|e| Error::Config(format!("auth.crls: {e}")))
        }) {
            Ok(()) => {
                tracing::info!(crls = self.auth.crl_count(), "CRLs reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "CRL reload failed; keeping the previous CRLs");
                false
            }
        }
    }
}

fn read_der_file(what: &str, path: &Path) -> Result<Vec<Vec<u8>>, Error> {
    let data = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    ike::cert::pem_or_der(&data)
        .map_err(|e| Error::Config(format!("{what}: {}: {e}", path.display())))
}

fn read_crls(paths: &[std::path::PathBuf]) -> Result<Vec<Vec<u8>>, Error> {
    let mut out = Vec::new();
    for p in paths {
        out.extend(read_der_file("auth.crls", p)?);
    }
    Ok(out)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    #[serde(default, rename = "ipsec-ddns")]
    pub ipsec_ddns: Option<cluster::ClusterConfig>,
}

/// `[ike]`: sockets, identity, proposals, traffic selectors, timers and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IkeSection {
    /// Local addresses to bind (IKE and NAT-T sockets on each).
    pub listen: Vec<IpAddr>,
    /// IKE port (RFC 7296 2: 500).
    pub port: u16,
    /// NAT-T port (RFC 3948: 4500).
    pub natt_port: u16,
    /// Our IKE identity (RFC 7296 3.5): an IP address, `user@domain` (RFC822),
    /// `fqdn:`/`email:`/`keyid:<hex>` prefixed, or any other string as an FQDN.
    pub local_id: IdentityStr,
    /// IKE SA proposals, most preferred first.
    pub proposals: Vec<IkeProposalStr>,
    /// CHILD SA (ESP) proposals, most preferred first.
    pub esp_proposals: Vec<EspProposalStr>,
    /// Inside networks offered as local traffic selectors (RFC 7296 2.9).
    pub local_ts: Vec<Selector>,
    pub ike_lifetime: DurationStr,
    pub child_lifetime: DurationStr,
    pub rekey_jitter: DurationStr,
    /// Liveness check after this long without inbound traffic; "0" disables DPD.
    pub dpd_delay: DurationStr,
    /// First retransmission timeout; doubled per try (RFC 7296 2.1).
    pub retransmit_timeout: DurationStr,
    pub retransmit_tries: u32,
    /// Half-open IKE SAs above which a COOKIE is required (RFC 7296 2.6).
    pub cookie_threshold: usize,
    pub half_open_max: usize,
    pub half_open_timeout: DurationStr,
    pub ike_sa_max: usize,
    pub max_message: usize,
    /// Fragment encrypted messages above this size (RFC 7383).
    pub fragment_mtu: usize,
}

impl Default for IkeSection {
    fn default() -> Self {
        let l = Lifetimes::default();
        let r = Retransmit::default();
        let m = Limits::default();
        Self {
            // Both families, like strongSwan; a host without IPv6 skips `::` (driver.rs).
            listen: vec![
                IpAddr::from([0, 0, 0, 0]),
                IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED),
            ],
            port: 500,
            natt_port: 4500,
            local_id: IdentityStr(Identity::Fqdn("headend".into())),
            proposals: vec![
                IkeProposalStr::new("aes256gcm16-prfsha256-x25519"),
                IkeProposalStr::new("chacha20poly1305-prfsha512-x25519"),
                IkeProposalStr::new("aes128-sha256-ecp256"),
                IkeProposalStr::new("aes256-sha384-modp2048"),
            ],
            esp_proposals: vec![
                EspProposalStr::new("aes256gcm16"),
                EspProposalStr::new("aes128gcm16"),
                EspProposalStr::new("chacha20poly1305"),
                EspProposalStr::new("aes128-sha256"),
                EspProposalStr::new("aes256-sha384"),
            ],
            local_ts: vec![],
            ike_lifetime: DurationStr(l.ike_rekey),
            child_lifetime: DurationStr(l.child_rekey),
            rekey_jitter: DurationStr(l.rekey_jitter),
            dpd_delay: DurationStr(l.dpd_delay.unwrap_or_default()),
            retransmit_timeout: DurationStr(r.initial),
            retransmit_tries: r.tries,
            cookie_threshold: m.cookie_threshold,
            half_open_max: m.half_open_max,
            half_open_timeout: DurationStr(m.half_open_timeout),
            ike_sa_max: m.ike_sa_max,
            max_message: m.max_message,
            fragment_mtu: m.fragment_mtu,
        }
    }
}

/// `[psk]`: pre-shared keys (RFC 7296 2.15).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PskSection {
    /// Key for any identity without its own.
    pub default: Option<Secret>,
    /// Per identity: `"router-1" = "secret"`.
    #[serde(default)]
    pub peers: HashMap<String, Secret>,
    /// A file of `identity secret` lines (`*` as identity sets the default; `#` comments),
    /// relative to the config file's directory.
    pub psk_file: Option<String>,
}

/// A secret string; never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `[pool]`: virtual addresses (RFC 7296 3.15.1).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    pub v4: Option<Cidr4>,
    pub v6: Option<Cidr6>,
    /// DNS servers handed out as INTERNAL_IP4_DNS / INTERNAL_IP6_DNS.
    #[serde(default)]
    pub dns: Vec<IpAddr>,
}

/// `[metrics]`: where `headend run` or `headend peer` serves Prometheus metrics
/// (`GET /metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address and port of the HTTP listener, e.g. `127.0.0.1:9400`.
    pub listen: SocketAddr,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `headend=debug,ike=info` ...
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Connect-one policy (seed 003 ch. 4): which head-end a peer router tries first and next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    #[default]
    RoundRobin,
    Random,
}

/// One head-end a peer may connect to: `"192.0.2.1:500"` or
/// `{ addr = "192.0.2.1:500", natt_port = 4500 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadendAddr {
    pub addr: SocketAddr,
    pub natt_port: u16,
}

impl<'de> Deserialize<'de> for HeadendAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            T {
                addr: String,
                natt_port: Option<u16>,
            },
        }
        let (addr, natt) = match Raw::deserialize(d)
            .map_err(|_| de::Error::custom("expected \"ip:port\" or { addr, natt_port }"))?
        {
            Raw::S(s) => (s, None),
            Raw::T { addr, natt_port } => (addr, natt_port),
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| de::Error::custom(format!("invalid address \"{addr}\" (want ip:port)")))?;
        Ok(HeadendAddr {
            addr,
            natt_port: natt.unwrap_or(4500),
        })
    }
}

/// `[peer]`: the peer-router side (`headend peer`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// Our identity (the router's serial number, say); `--id-prefix` overrides it.
    pub local_id: IdentityStr,
    /// Expected head-end identity; absent accepts any authenticated one.
    pub remote_id: Option<IdentityStr>,
    /// PSK; falls back to `[psk]` (our identity, then default).
    pub psk: Option<Secret>,
    /// The head-ends of the cluster, in order.
    pub headends: Vec<HeadendAddr>,
    #[serde(default)]
    pub policy: Policy,
    /// Pause before trying the next head-end.
    #[serde(default = "default_backoff")]
    pub backoff: DurationStr,
    /// Give up on a head-end that has not completed IKE_AUTH after this long.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: DurationStr,
    /// Local address to bind (port 0 = any free port).
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
    #[serde(default = "yes")]
    pub request_vip4: bool,
    #[serde(default)]
    pub request_vip6: bool,
    /// Traffic selectors for our side; default 0.0.0.0/0 (narrowed to the VIP).
    #[serde(default)]
    pub local_ts: Vec<Selector>,
    /// Networks behind the head-end; default 0.0.0.0/0.
    #[serde(default)]
    pub remote_ts: Vec<Selector>,
    /// The CHILD SAs to open, in order: the first in IKE_AUTH, the others with
    /// CREATE_CHILD_SA once the IKE SA is up (RFC 7296 1.3.1). Absent: one, with
    /// `local_ts` / `remote_ts`.
    #[serde(default)]
    pub children: Vec<ChildSection>,
}

/// One CHILD SA of a peer router (`[[peer.children]]`, or `children = [{ ... }]`): its
/// traffic selectors; a side left out is `peer.local_ts` / `peer.remote_ts`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildSection {
    #[serde(default)]
    pub local_ts: Vec<Selector>,
    #[serde(default)]
    pub remote_ts: Vec<Selector>,
}

/// The selectors a router asks for in one CHILD SA: (ours, the head-end's), i.e. (TSi, TSr).
pub type ChildSelectors = (Vec<TrafficSelector>, Vec<TrafficSelector>);

impl PeerSection {
    /// The CHILD SAs to ask for, in order (the first is IKE_AUTH's): `children`, each
    /// side it leaves out from `local_ts` / `remote_ts`, those 0.0.0.0/0 when absent too.
    pub fn child_selectors(&self) -> Vec<ChildSelectors> {
        let any4 = || TrafficSelector {
            start: IpAddr::from([0, 0, 0, 0]),
            end: IpAddr::from([255, 255, 255, 255]),
            protocol: 0,
            start_port: 0,
            end_port: 65535,
        };
        let ts = |v: &[Selector], dflt: &[Selector]| -> Vec<TrafficSelector> {
            let v = if v.is_empty() { dflt } else { v };
            if v.is_empty() {
                vec![any4()]
            } else {
                v.iter().map(|t| t.0.clone()).collect()
            }
        };
        let one = [ChildSection::default()];
        let children = if self.children.is_empty() {
            &one[..]
        } else {
            &self.children[..]
        };
        children
            .iter()
            .map(|c| {
                (
                    ts(&c.local_ts, &self.local_ts),
                    ts(&c.remote_ts, &self.remote_ts),
                )
            })
            .collect()
    }
}

fn default_backoff() -> DurationStr {
    DurationStr(Duration::from_secs(1))
}
fn default_connect_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(10))
}
fn default_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}
fn yes() -> bool {
    true
}

// ---------------------------------------------------------------------------------------
// Value types that validate while deserializing, so errors carry the value's line.

macro_rules! from_str_value {
    ($ty:ident, $inner:ty, $what:literal, $parse:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                let parse: fn(&str) -> Result<$inner, String> = $parse;
                parse(&s).map($ty).map_err(|e| {
                    de::Error::custom(format!(concat!("invalid ", $what, " \"{}\"{}"), s, e))
                })
            }
        }
    };
}

/// An IPv4 prefix, `10.99.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr4(pub Ipv4Net);
from_str_value!(Cidr4, Ipv4Net, "CIDR", |s| s
    .parse::<Ipv4Net>()
    .map_err(|_| String::new()));

/// An IPv6 prefix, `fd00::/112`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr6(pub Ipv6Net);
from_str_value!(Cidr6, Ipv6Net, "CIDR", |s| s
    .parse::<Ipv6Net>()
    .map_err(|_| String::new()));

/// A traffic selector (RFC 7296 3.13.1) written as strongSwan writes one: a prefix or a
/// bare address (a /32 or /128), optionally followed by `[proto]` or `[proto/port]`:
/// `10.1.0.0/16`, `10.1.0.0/16[tcp/443]`, `10.1.0.0/16[udp/1024-65535]`,
/// `10.1.0.0/16[icmp]`, `10.1.0.0/16[icmp/8]` (ICMP type 8, any code: the port fields
/// carry type<<8|code, RFC 4301 4.4.1.1), `fd00::/64[ipv6-icmp/128]`,
/// `10.1.0.0/16[tcp/%opaque]`. A protocol is a name (`tcp`, `udp`, `icmp`, `ipv6-icmp`
/// or `icmpv6`, `sctp`, `udplite`) or a number 1-255; a port a number, a range `a-b`,
/// `%any` or `%opaque`. For ICMP and ICMPv6 a number up to 255 is a type (any code);
/// larger ones are type<<8|code as [`TrafficSelector`]'s `Display` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(pub TrafficSelector);
from_str_value!(Selector, TrafficSelector, "traffic selector", |s| {
    parse_selector(s).map_err(|e| format!(": {e}"))
});

/// Parses a [`Selector`].
pub fn parse_selector(s: &str) -> Result<TrafficSelector, String> {
    let (net, sel) = match s.split_once('[') {
        Some((net, rest)) => {
            let inner = rest
                .strip_suffix(']')
                .ok_or("want \"]\" at the end of \"[proto/port]\"")?;
            (net, Some(inner))
        }
        None => (s, None),
    };
    let net = net.trim();
    let net = net
        .parse::<IpNet>()
        .or_else(|_| net.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("\"{net}\" is no CIDR or address"))?;
    let mut ts = TrafficSelector {
        start: net.network(),
        end: net.broadcast(),
        protocol: 0,
        start_port: 0,
        end_port: 65535,
    };
    let Some(sel) = sel else {
        return Ok(ts);
    };
    let (proto, port) = match sel.split_once('/') {
        Some((p, port)) => (p.trim(), Some(port.trim())),
        None => (sel.trim(), None),
    };
    ts.protocol = match proto.to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "ipv6-icmp" | "icmpv6" => 58,
        "sctp" => 132,
        "udplite" => 136,
        "" => return Err("empty protocol (e.g. [tcp/443], [icmp])".into()),
        p => match p.parse::<u8>() {
            Ok(0) => return Err("protocol 0 is any protocol: leave out the brackets".into()),
            Ok(n) => n,
            Err(_) => return Err(format!("unknown protocol '{proto}'")),
        },
    };
    let icmp = matches!(ts.protocol, 1 | 58);
    let (a, b) = match port {
        None | Some("%any") | Some("any") => return Ok(ts),
        Some("%opaque") | Some("opaque") => {
            (ts.start_port, ts.end_port) = (65535, 0);
            return Ok(ts);
        }
        Some(p) => match p.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (p, p),
        },
    };
    let num = |v: &str| {
        v.parse::<u16>()
            .map_err(|_| format!("invalid port '{v}' (want 0-65535, a-b, %any or %opaque)"))
    };
    let (mut a, mut b) = (num(a)?, num(b)?);
    if icmp {
        // strongSwan: a value that fits a type is a type, any code.
        if a <= 255 {
            a <<= 8;
        }
        if b <= 255 {
            b = b << 8 | 0xff;
        }
    }
    if a > b {
        return Err(format!("port range {a}-{b} is reversed"));
    }
    (ts.start_port, ts.end_port) = (a, b);
    Ok(ts)
}

/// An IKE identity written as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityStr(pub Identity);
from_str_value!(IdentityStr, Identity, "identity", |s| parse_identity(s)
    .map_err(|e| format!(": {e}")));

/// Parses an identity: an IP literal, `fqdn:x`, `email:x`, `keyid:<hex>`, `user@domain`
/// (RFC822), else an FQDN-type identity (which is what serial-number identities are).
pub fn parse_identity(s: &str) -> Result<Identity, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if let Some(r) = s.strip_prefix("fqdn:") {
        return Ok(Identity::Fqdn(r.into()));
    }
    if let Some(r) = s.strip_prefix("email:") {
        return Ok(Identity::Rfc822(r.into()));
    }
    if let Some(r) = s.strip_prefix("keyid:") {
        if r.len() % 2 != 0 || r.is_empty() {
            return Err("keyid wants an even number of hex digits".into());
        }
        let bytes = (0..r.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(r.get(i..i + 2).unwrap_or("x"), 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| "keyid wants hex digits".to_string())?;
        return Ok(Identity::KeyId(bytes));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(match ip {
            IpAddr::V4(a) => Identity::Ipv4(a),
            IpAddr::V6(a) => Identity::Ipv6(a),
        });
    }
    if s.contains('@') {
        return Ok(Identity::Rfc822(s.into()));
    }
    Ok(Identity::Fqdn(s.into()))
}

/// An IKE proposal string (see [`crate::proposal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeProposalStr(pub IkeProposal);
from_str_value!(IkeProposalStr, IkeProposal, "proposal", |s| {
    proposal::parse_ike(s).map_err(|e| format!(": {e}"))
});
impl IkeProposalStr {
    fn new(s: &str) -> Self {
        // Built-in strings; covered by a unit test.
        Self(proposal::parse_ike(s).unwrap_or(IkeProposal {
            encr: vec![],
            prf: vec![],
            integ: vec![],
            dh: vec![],
        }))
    }
}

/// An ESP proposal string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspProposalStr(pub EspProposal);
from_str_value!(EspProposalStr, EspProposal, "proposal", |s| {
    proposal::parse_esp(s).map_err(|e| format!(": {e}"))
});
impl EspProposalStr {
    fn new(s: &str) -> Self {
        Self(proposal::parse_esp(s).unwrap_or(EspProposal {
            encr: vec![],
            integ: vec![],
            dh: vec![],
            esn: false,
        }))
    }
}

/// A duration: `500ms`, `30s`, `10m`, `4h`, `1d`, or an integer number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DurationStr(pub Duration);

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d).map_err(|_| de::Error::custom("expected a duration"))? {
            Raw::N(n) => Ok(DurationStr(Duration::from_secs(n))),
            Raw::S(s) => parse_duration(&s).map(DurationStr).ok_or_else(|| {
                de::Error::custom(format!(
                    "invalid duration \"{s}\" (e.g. 500ms, 30s, 10m, 4h)"
                ))
            }),
        }
    }
}

/// Parses `500ms`, `30s`, `10m`, `4h`, `1d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => n,
        "" | "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

// ---------------------------------------------------------------------------------------
// Loading and error reporting.

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// When the error is about element `k` of an array (path ends in `[k]`) and `start` is
/// where the array begins, the offset of that element (so the line is the element's).
fn element_offset(text: &str, start: usize, path: &str) -> Option<usize> {
    let k: usize = path.strip_suffix(']')?.rsplit_once('[')?.1.parse().ok()?;
    let b = text.as_bytes();
    if b.get(start) != Some(&b'[') {
        return None;
    }
    let (mut i, mut depth, mut index) = (start + 1, 1usize, 0usize);
    let mut at_element_start = true;
    while i < b.len() {
        let c = b[i];
        if at_element_start && !c.is_ascii_whitespace() && c != b'#' && depth == 1 {
            if c == b']' {
                return None;
            }
            if index == k {
                return Some(i);
            }
            at_element_start = false;
        }
        match c {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' | b'\'' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    if c == b'"' && b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    return None;
                }
            }
            b',' if depth == 1 => {
                index += 1;
                at_element_start = true;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Line of `key` (`secondary[1].tsig_key`) in the `[[<section>.secondary]]` table it
/// belongs to: the n-th header of that array of tables, then the key's line below it.
fn array_key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let (table, rest) = key.split_once('[')?;
    let (index, field) = rest.split_once("].")?;
    let index: usize = index.parse().ok()?;
    let header = format!("[[{section}.{table}]]");
    let mut seen = 0usize;
    let mut inside = false;
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.starts_with('[') {
            if l.replace(' ', "") == header {
                inside = seen == index;
                seen += 1;
                if inside && field.is_empty() {
                    return Some(i + 1);
                }
            } else {
                inside = false;
            }
            continue;
        }
        if inside {
            if let Some((k, _)) = l.split_once('=') {
                if k.trim() == field {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

/// Rewrites toml/serde messages into "unknown key 'a.b'" / "a.b: <problem>".
fn describe(path: &str, msg: &str) -> String {
    let msg = msg.trim();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let key = rest.split('`').next().unwrap_or(rest);
        let full = if path.is_empty() || path == "." {
            key.to_string()
        } else if path == key || path.ends_with(&format!(".{key}")) {
            path.to_string()
        } else {
            format!("{path}.{key}")
        };
        return format!("unknown key '{full}'");
    }
    if path.is_empty() || path == "." {
        msg.to_string()
    } else {
        format!("{path}: {msg}")
    }
}

impl Config {
    /// Parses TOML text; `name` is used in error messages (usually the file path).
    pub fn parse(name: &str, text: &str) -> Result<Config, Error> {
        let de = toml::Deserializer::new(text);
        match serde_path_to_error::deserialize::<_, Config>(de) {
            Ok(c) => {
                // [dns] keys that refer to each other (secondary -> tsig_key)
                if let Some(d) = c.dns.as_ref().filter(|d| d.enable) {
                    if let Err(ddns::Error::ConfigKey { key, reason }) = ddns::Transfer::new(d) {
                        let at = match array_key_line(text, "dns", &key) {
                            Some(l) => format!("{name}:{l}"),
                            None => name.to_string(),
                        };
                        return Err(Error::Config(format!("{at}: dns.{key}: {reason}")));
                    }
                }
                Ok(c)
            }
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let msg = describe(&path, inner.message());
                Err(Error::Config(match inner.span() {
                    Some(span) => {
                        let at = element_offset(text, span.start, &path).unwrap_or(span.start);
                        format!("{name}:{}: {msg}", line_of(text, at))
                    }
                    None => format!("{name}: {msg}"),
                }))
            }
        }
    }

    /// Reads and parses a file, then loads `psk_file` relative to it.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Config::parse(&path.display().to_string(), &text)?;
        if let Some(f) = cfg.psk.psk_file.clone() {
            let p = path.parent().unwrap_or(Path::new(".")).join(&f);
            cfg.load_psk_file(&p)?;
        }
        cfg.load_auth_files(path.parent().unwrap_or(Path::new(".")))?;
        Ok(cfg)
    }

    /// Loads the `[auth]` certificate, key, CAs and CRLs (paths relative to `dir`).
    pub fn load_auth_files(&mut self, dir: &Path) -> Result<(), Error> {
        let Some(a) = self.auth.clone() else {
            return Ok(());
        };
        let bad = |k: &str, e: ike::Error| Error::Config(format!("auth.{k}: {e}"));
        let mut cas = Vec::new();
        for f in &a.cas {
            cas.extend(read_der_file("auth.cas", &dir.join(f))?);
        }
        let chain = read_der_file("auth.cert", &dir.join(&a.cert))?;
        let key = read_der_file("auth.key", &dir.join(&a.key))?;
        let key = key
            .first()
            .ok_or_else(|| Error::Config("auth.key: empty".into()))?;
        let auth = ike::cert::CertAuth::new(cas)
            .map_err(|e| bad("cas", e))?
            .with_own(chain, key)
            .map_err(|e| bad("cert/key", e))?
            .with_rsa_padding(match a.rsa_padding {
                RsaPaddingKey::Pkcs1 => ike::cert::RsaPadding::Pkcs1,
                RsaPaddingKey::Pss => ike::cert::RsaPadding::Pss,
            });
        let paths: Vec<_> = a.crls.iter().map(|f| dir.join(f)).collect();
        auth.set_crls(read_crls(&paths)?)
            .map_err(|e| bad("crls", e))?;
        self.cert_auth = Some(Arc::new(auth));
        self.crl_paths = paths;
        Ok(())
    }

    /// A watcher that swaps the CRL set when the `[auth]` CRL files change.
    pub fn crl_watcher(&self) -> Option<CrlWatcher> {
        let mut w = CrlWatcher {
            auth: self.cert_auth.clone()?,
            paths: self.crl_paths.clone(),
            stamp: Vec::new(),
        };
        w.stamp = w.stamps();
        Some(w)
    }

    /// The engine's authentication: `[auth]` certificates when loaded, else `psk`.
    fn auth_config(&self, psk: impl FnOnce() -> PskStore) -> AuthConfig {
        match &self.cert_auth {
            Some(c) => AuthConfig::Cert(c.clone()),
            None => AuthConfig::Psk(psk()),
        }
    }

    /// The built-in default ([`DEFAULT_CONFIG`]).
    pub fn builtin() -> Config {
        // The constant is covered by a unit test; fall back to the type defaults anyway.
        Config::parse("<built-in>", DEFAULT_CONFIG).unwrap_or_default()
    }

    fn load_psk_file(&mut self, path: &Path) -> Result<(), Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut it = line.splitn(2, char::is_whitespace);
            let (Some(id), Some(secret)) = (it.next(), it.next()) else {
                return Err(Error::Config(format!(
                    "{}:{}: psk_file: want \"identity secret\"",
                    path.display(),
                    i + 1
                )));
            };
            let secret = Secret(secret.trim().to_string());
            if id == "*" {
                self.psk.default = Some(secret);
            } else {
                self.psk.peers.insert(id.to_string(), secret);
            }
        }
        Ok(())
    }

    /// Checks what deserialization cannot (cross-key rules) for `headend run`.
    pub fn validate_responder(&self, name: &str) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(format!("{name}: {m}")));
        if self.ike.listen.is_empty() {
            return bad("ike.listen: at least one address is needed");
        }
        if self.ike.proposals.is_empty() || self.ike.esp_proposals.is_empty() {
            return bad("ike.proposals / ike.esp_proposals: must not be empty");
        }
        if self.ike.port == self.ike.natt_port {
            return bad("ike.natt_port: must differ from ike.port");
        }
        if self.psk.default.is_none() && self.psk.peers.is_empty() && self.cert_auth.is_none() {
            return bad(
                "psk: no pre-shared key configured (set psk.default, psk.peers or psk.psk_file)",
            );
        }
        for id in self.psk.peers.keys() {
            if let Err(e) = parse_identity(id) {
                return bad(&format!("psk.peers: invalid identity \"{id}\": {e}"));
            }
        }
        if self.ike.retransmit_tries == 0 {
            return bad("ike.retransmit_tries: must be at least 1");
        }
        let cluster = self.service.ipsec_ddns.as_ref().filter(|c| c.enable);
        if let Some(c) = cluster {
            if let Err(e) = c.validate() {
                return bad(&format!("service.ipsec-ddns: {e}"));
            }
        }
        if let Some(d) = self.dns.as_ref().filter(|d| d.enable) {
            let Some(domain) = d
                .domain
                .clone()
                .or_else(|| cluster.map(|c| c.domain.clone()))
            else {
                return bad("dns.domain: needed (or service.ipsec-ddns domain)");
            };
            if let Err(e) = ddns::ZoneConfig::new(d, &domain) {
                return bad(&format!("dns: {e}"));
            }
        }
        Ok(())
    }

    /// Checks the `[peer]` section for `headend peer`.
    pub fn validate_peer(&self, name: &str) -> Result<&PeerSection, Error> {
        let Some(p) = &self.peer else {
            return Err(Error::Config(format!("{name}: missing [peer] section")));
        };
        if p.headends.is_empty() {
            return Err(Error::Config(format!(
                "{name}: peer.headends: at least one head-end is needed"
            )));
        }
        if p.psk.is_none() && self.psk.default.is_none() && self.psk.peers.is_empty() {
            return Err(Error::Config(format!(
                "{name}: peer.psk: no pre-shared key configured"
            )));
        }
        Ok(p)
    }

    /// A one-line summary for `check-config`.
    pub fn summary(&self) -> String {
        if let Some(p) = &self.peer {
            let policy = match p.policy {
                Policy::RoundRobin => "round-robin",
                Policy::Random => "random",
            };
            return format!(
                "ok: peer {} -> {} head-ends ({policy}), {} IKE + {} ESP proposals",
                p.local_id.0,
                p.headends.len(),
                self.ike.proposals.len(),
                self.ike.esp_proposals.len(),
            );
        }
        let listen: Vec<String> = self.ike.listen.iter().map(|a| a.to_string()).collect();
        let mut s =
            format!(
            "ok: listen {} ike/{} natt/{}, id {}, {} IKE + {} ESP proposals, {} PSK identities{}",
            listen.join(","),
            self.ike.port,
            self.ike.natt_port,
            self.ike.local_id.0,
            self.ike.proposals.len(),
            self.ike.esp_proposals.len(),
            self.psk.peers.len(),
            if self.psk.default.is_some() { " + default" } else { "" },
        );
        if let Some(v4) = &self.pool.v4 {
            s.push_str(&format!(", pool {}", v4.0));
        }
        if let Some(v6) = &self.pool.v6 {
            s.push_str(&format!(", pool {}", v6.0));
        }
        if let Some(m) = &self.metrics {
            s.push_str(&format!(", metrics http://{}/metrics", m.listen));
        }
        s
    }

    pub fn lifetimes(&self) -> Lifetimes {
        let i = &self.ike;
        Lifetimes {
            ike_rekey: i.ike_lifetime.0,
            child_rekey: i.child_lifetime.0,
            rekey_jitter: i.rekey_jitter.0,
            dpd_delay: (!i.dpd_delay.0.is_zero()).then_some(i.dpd_delay.0),
        }
    }

    fn engine_common(
        &self,
        local_natt_port: u16,
        responder: Option<ResponderConfig>,
    ) -> EndpointConfig {
        let i = &self.ike;
        EndpointConfig {
            local_natt_port,
            responder,
            lifetimes: self.lifetimes(),
            retransmit: Retransmit {
                initial: i.retransmit_timeout.0,
                tries: i.retransmit_tries,
            },
            limits: Limits {
                cookie_threshold: i.cookie_threshold,
                half_open_max: i.half_open_max,
                half_open_timeout: i.half_open_timeout.0,
                ike_sa_max: i.ike_sa_max,
                max_message: i.max_message,
                fragment_mtu: i.fragment_mtu,
            },
        }
    }

    /// The PSK store of `[psk]`.
    pub fn psk_store(&self) -> PskStore {
        let mut s = PskStore {
            by_identity: HashMap::new(),
            default: self.psk.default.as_ref().map(|k| k.0.as_bytes().to_vec()),
        };
        for (id, key) in &self.psk.peers {
            if let Ok(id) = parse_identity(id) {
                s.by_identity.insert(id, key.0.as_bytes().to_vec());
            }
        }
        s
    }

    /// The engine configuration of the head-end (responder).
    pub fn responder_endpoint(&self) -> Arc<EndpointConfig> {
        let i = &self.ike;
        let r = ResponderConfig {
            local_id: i.local_id.0.clone(),
            auth: self.auth_config(|| self.psk_store()),
            ike_proposals: i.proposals.iter().map(|p| p.0.clone()).collect(),
            esp_proposals: i.esp_proposals.iter().map(|p| p.0.clone()).collect(),
            local_ts: i.local_ts.iter().map(|t| t.0.clone()).collect(),
            pool: PoolConfig {
                v4: self.pool.v4.map(|c| c.0),
                v6: self.pool.v6.map(|c| c.0),
                dns: self.pool.dns.clone(),
            },
        };
        Arc::new(self.engine_common(i.natt_port, Some(r)))
    }

    /// The engine configuration of an initiator-only endpoint (peer routers, bench).
    pub fn initiator_endpoint(&self, local_natt_port: u16) -> Arc<EndpointConfig> {
        Arc::new(self.engine_common(local_natt_port, None))
    }

    /// The connection configuration of one simulated router with identity `id` towards a
    /// head-end whose NAT-T port is `remote_natt_port`.
    pub fn initiator(
        &self,
        peer: &PeerSection,
        id: Identity,
        remote_natt_port: u16,
    ) -> InitiatorConfig {
        let key = peer
            .psk
            .as_ref()
            .map(|k| k.0.clone())
            .or_else(|| {
                self.psk
                    .peers
                    .iter()
                    .find(|(i, _)| parse_identity(i).ok().as_ref() == Some(&id))
                    .map(|(_, k)| k.0.clone())
            })
            .or_else(|| self.psk.default.as_ref().map(|k| k.0.clone()))
            .unwrap_or_default();
        // The first CHILD SA comes up in IKE_AUTH; `peer::Routers` opens the others.
        let (local_ts, remote_ts) = peer
            .child_selectors()
            .into_iter()
            .next()
            .unwrap_or_default();
        InitiatorConfig {
            local_id: id,
            remote_id: peer.remote_id.as_ref().map(|i| i.0.clone()),
            auth: self.auth_config(|| PskStore {
                by_identity: HashMap::new(),
                default: Some(key.into_bytes()),
            }),
            ike_proposals: self.ike.proposals.iter().map(|p| p.0.clone()).collect(),
            esp_proposals: self.ike.esp_proposals.iter().map(|p| p.0.clone()).collect(),
            request_vip4: peer.request_vip4,
            request_vip6: peer.request_vip6,
            local_ts,
            remote_ts,
            initial_contact: true,
            remote_natt_port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Config::parse("x.toml", text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn builtin_default_is_a_working_responder() {
        let c = Config::parse("<built-in>", DEFAULT_CONFIG).unwrap();
        c.validate_responder("<built-in>").unwrap();
        assert_eq!(c.ike.listen, vec![IpAddr::from([127, 0, 0, 1])]);
        assert!(c.ike.port > 1024 && c.ike.natt_port > 1024);
        assert_eq!(c.psk.default.as_ref().unwrap().0, "headend-demo-psk");
        assert_eq!(
            c.pool.v4.unwrap().0,
            "10.99.0.0/16".parse::<Ipv4Net>().unwrap()
        );
        let e = c.responder_endpoint();
        let r = e.responder.as_ref().unwrap();
        assert_eq!(r.ike_proposals.len(), 4, "default proposals all parse");
        assert!(r.ike_proposals.iter().all(|p| !p.encr.is_empty()));
        assert!(r.esp_proposals.iter().all(|p| !p.encr.is_empty()));
        assert_eq!(e.local_natt_port, c.ike.natt_port);
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let text = "[ike]\nport = 500\n\n[ike.x]\n";
        let _ = text;
        let e = err("# c\n[ike]\nport = 500\nlifetim = \"1h\"\n");
        assert_eq!(e, "x.toml:4: unknown key 'ike.lifetim'");
        let e = err("[pool]\nv4 = \"10.0.0.0/8\"\n\n\n\n\nfoo = 1\n");
        assert_eq!(e, "x.toml:7: unknown key 'pool.foo'");
        let e = err("\n[bogus]\na = 1\n");
        assert!(e.starts_with("x.toml:2: unknown key 'bogus'"), "{e}");
    }

    #[test]
    fn bad_values_name_key_line_and_value() {
        let e = err("[ike]\nport = 500\n\n\n\n[pool]\nv4 = \"10.0.0/8\"\n");
        assert_eq!(e, "x.toml:7: pool.v4: invalid CIDR \"10.0.0/8\"");
        let e = err(
            "[ike]\nproposals = [\"aes256gcm16-prfsha256-x25519\",\n \"aes257-sha256-x25519\"]\n",
        );
        assert_eq!(e, "x.toml:3: ike.proposals[1]: invalid proposal \"aes257-sha256-x25519\": unknown algorithm 'aes257'");
        let e = err("[ike]\n\ndpd_delay = \"5 parsecs\"\n");
        assert!(
            e.starts_with("x.toml:3: ike.dpd_delay: invalid duration"),
            "{e}"
        );
        let e = err("[ike]\nport = 70000\n");
        assert!(e.starts_with("x.toml:2: ike.port: "), "{e}");
        let e = err("[log]\nformat = \"xml\"\n");
        assert!(e.starts_with("x.toml:2: log.format: "), "{e}");
        let e = err("[peer]\nlocal_id = \"r1\"\nheadends = [\"127.0.0.1\"]\n");
        assert!(
            e.starts_with("x.toml:3: peer.headends[0]: invalid address"),
            "{e}"
        );
    }

    #[test]
    fn array_element_errors_point_at_the_element_line() {
        let e = err("[ike]\nesp_proposals = [\n  \"aes256gcm16\", # a, comment [x]\n  \"aes128-sha256\",\n  \"bogus\",\n]\n");
        assert!(
            e.starts_with("x.toml:5: ike.esp_proposals[2]: invalid proposal \"bogus\""),
            "{e}"
        );
        let e =
            err("[peer]\nlocal_id = \"r\"\nheadends = [{ addr = \"127.0.0.1:1\" },\n\"nope\"]\n");
        assert!(
            e.starts_with("x.toml:4: peer.headends[1]: invalid address"),
            "{e}"
        );
        assert_eq!(element_offset("a = [1, 2]", 4, "a[5]"), None);
        assert_eq!(element_offset("a = 1", 4, "a[0]"), None);
    }

    #[test]
    fn full_config_maps_to_engine_config() {
        let c = Config::parse(
            "t",
            r#"
[ike]
listen = ["127.0.0.1", "::1"]
port = 40500
natt_port = 44500
local_id = "vpn.example.net"
proposals = ["aes128-sha256-ecp256"]
esp_proposals = ["aes128-sha256-esn"]
local_ts = ["10.1.0.0/16", "192.168.7.1"]
ike_lifetime = "1h"
child_lifetime = "20m"
rekey_jitter = "10s"
dpd_delay = "0"
retransmit_timeout = "200ms"
retransmit_tries = 3
cookie_threshold = 7
fragment_mtu = 1000
[psk]
default = "d"
peers = { "router-1" = "k1", "10.0.0.9" = "k2" }
[pool]
v4 = "10.99.0.0/24"
v6 = "fd99::/120"
dns = ["10.1.0.53"]
[log]
format = "json"
level = "debug"
"#,
        )
        .unwrap();
        c.validate_responder("t").unwrap();
        let e = c.responder_endpoint();
        assert_eq!(e.local_natt_port, 44500);
        assert_eq!(e.lifetimes.ike_rekey, Duration::from_secs(3600));
        assert_eq!(e.lifetimes.child_rekey, Duration::from_secs(1200));
        assert_eq!(e.lifetimes.dpd_delay, None, "0 disables DPD");
        assert_eq!(e.retransmit.initial, Duration::from_millis(200));
        assert_eq!(e.retransmit.tries, 3);
        assert_eq!(e.limits.cookie_threshold, 7);
        assert_eq!(e.limits.fragment_mtu, 1000);
        let r = e.responder.as_ref().unwrap();
        assert_eq!(r.local_id, Identity::Fqdn("vpn.example.net".into()));
        assert!(r.esp_proposals[0].esn);
        assert_eq!(r.local_ts[0].start, IpAddr::from([10, 1, 0, 0]));
        assert_eq!(r.local_ts[0].end, IpAddr::from([10, 1, 255, 255]));
        assert_eq!(r.local_ts[1].start, r.local_ts[1].end);
        assert_eq!(r.pool.dns, vec![IpAddr::from([10, 1, 0, 53])]);
        let AuthConfig::Psk(s) = &r.auth else {
            panic!("PSK auth expected")
        };
        assert_eq!(s.default.as_deref(), Some(&b"d"[..]));
        assert_eq!(
            s.by_identity
                .get(&Identity::Fqdn("router-1".into()))
                .map(|v| &v[..]),
            Some(&b"k1"[..])
        );
        assert_eq!(
            s.by_identity
                .get(&Identity::Ipv4([10, 0, 0, 9].into()))
                .map(|v| &v[..]),
            Some(&b"k2"[..])
        );
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn responder_validation() {
        let c = Config::parse("t", "[ike]\nport = 1\n").unwrap();
        let e = c.validate_responder("t").unwrap_err().to_string();
        assert!(e.contains("psk:"), "{e}");
        let c = Config::parse(
            "t",
            "[ike]\nport = 4\nnatt_port = 4\n[psk]\ndefault = \"x\"\n",
        )
        .unwrap();
        assert!(c
            .validate_responder("t")
            .unwrap_err()
            .to_string()
            .contains("ike.natt_port"));
    }

    #[test]
    fn identities() {
        assert_eq!(
            parse_identity("10.1.2.3").unwrap(),
            Identity::Ipv4([10, 1, 2, 3].into())
        );
        assert_eq!(
            parse_identity("a@b.c").unwrap(),
            Identity::Rfc822("a@b.c".into())
        );
        assert_eq!(
            parse_identity("SN-12345").unwrap(),
            Identity::Fqdn("SN-12345".into())
        );
        assert_eq!(
            parse_identity("fqdn:a@b").unwrap(),
            Identity::Fqdn("a@b".into())
        );
        assert_eq!(
            parse_identity("keyid:0aff").unwrap(),
            Identity::KeyId(vec![0x0a, 0xff])
        );
        assert!(parse_identity("keyid:0g").is_err());
        assert!(parse_identity("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("4h"), Some(Duration::from_secs(4 * 3600)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1y"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("99999999999999999999d"), None);
    }

    fn sel(net: &str, protocol: u8, ports: (u16, u16)) -> TrafficSelector {
        let net: IpNet = net.parse().unwrap();
        TrafficSelector {
            start: net.network(),
            end: net.broadcast(),
            protocol,
            start_port: ports.0,
            end_port: ports.1,
        }
    }

    /// Selectors in strongSwan's notation (issue 3): protocol names and numbers, single
    /// ports, ranges, ICMP types, `%any`, `%opaque`; what `Display` prints parses back.
    #[test]
    fn selectors_parse_strongswan_notation() {
        let any = (0, 65535);
        for (text, want) in [
            ("10.1.0.0/16", sel("10.1.0.0/16", 0, any)),
            ("10.1.2.3", sel("10.1.2.3/32", 0, any)),
            ("fd00::/64", sel("fd00::/64", 0, any)),
            ("10.1.0.0/16[tcp/443]", sel("10.1.0.0/16", 6, (443, 443))),
            ("10.1.0.0/16[TCP/443]", sel("10.1.0.0/16", 6, (443, 443))),
            (
                "10.1.0.0/16[udp/1024-65535]",
                sel("10.1.0.0/16", 17, (1024, 65535)),
            ),
            ("10.1.0.0/16[udp]", sel("10.1.0.0/16", 17, any)),
            ("10.1.0.0/16[udp/%any]", sel("10.1.0.0/16", 17, any)),
            (
                "10.1.0.0/16[sctp/%opaque]",
                sel("10.1.0.0/16", 132, (65535, 0)),
            ),
            ("10.1.0.0/16[icmp]", sel("10.1.0.0/16", 1, any)),
            (
                "10.1.0.0/16[icmp/8]",
                sel("10.1.0.0/16", 1, (0x0800, 0x08ff)),
            ),
            ("10.1.0.0/16[icmp/0-8]", sel("10.1.0.0/16", 1, (0, 0x08ff))),
            (
                "10.1.0.0/16[icmp/2048]",
                sel("10.1.0.0/16", 1, (2048, 2048)),
            ),
            (
                "fd00::/64[ipv6-icmp/128]",
                sel("fd00::/64", 58, (0x8000, 0x80ff)),
            ),
            ("fd00::/64[icmpv6]", sel("fd00::/64", 58, any)),
            ("10.1.0.0/16[47]", sel("10.1.0.0/16", 47, any)),
        ] {
            let got = parse_selector(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got, want, "{text}");
            assert_eq!(parse_selector(&got.to_string()), Ok(got.clone()), "{got}");
        }
        for (text, why) in [
            ("10.1.0.0/33", "no CIDR or address"),
            ("10.1.0.0/16[tcp/443", "want \"]\""),
            ("10.1.0.0/16[]", "empty protocol"),
            ("10.1.0.0/16[tpc/443]", "unknown protocol 'tpc'"),
            ("10.1.0.0/16[0/80]", "protocol 0 is any"),
            ("10.1.0.0/16[tcp/https]", "invalid port 'https'"),
            ("10.1.0.0/16[tcp/70000]", "invalid port '70000'"),
            ("10.1.0.0/16[tcp/443-80]", "port range 443-80 is reversed"),
            ("10.1.0.0/16[tcp/443]x", "want \"]\""),
        ] {
            let e = parse_selector(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    /// A bad selector in any of the keys that take one names the key, the element and
    /// its line; good ones reach the engine's configurations.
    #[test]
    fn selector_keys_report_their_line_and_reach_the_engine() {
        let e = err("[ike]\nlocal_ts = [\"10.1.0.0/16\",\n  \"10.2.0.0/16[tcp/x]\"]\n");
        assert_eq!(
            e,
            "x.toml:3: ike.local_ts[1]: invalid traffic selector \"10.2.0.0/16[tcp/x]\": \
             invalid port 'x' (want 0-65535, a-b, %any or %opaque)"
        );
        let peer = "[peer]\nlocal_id = \"r\"\npsk = \"k\"\nheadends = [\"127.0.0.1:500\"]\n";
        let e = err(&format!("{peer}remote_ts = [\"10.1.0.0/16[tcp/443\"]\n"));
        assert!(
            e.starts_with("x.toml:5: peer.remote_ts[0]: invalid traffic selector"),
            "{e}"
        );
        let e = err(&format!(
            "{peer}[[peer.children]]\nremote_ts = [\"10.1.0.0/16[tcp/443]\"]\n\
             [[peer.children]]\nlocal_ts = [\"0.0.0.0/0\"]\nremote_ts = [\"10.1.0.0/16[imcp]\"]\n"
        ));
        assert_eq!(
            e,
            "x.toml:9: peer.children[1].remote_ts[0]: invalid traffic selector \
             \"10.1.0.0/16[imcp]\": unknown protocol 'imcp'"
        );
        let e = err(&format!(
            "{peer}children = [{{ remote_ts = [\"10.1.0.0/16\"] }},\n  {{ remote = [] }}]\n"
        ));
        assert_eq!(e, "x.toml:6: unknown key 'peer.children[1].remote'");

        let c = Config::parse(
            "t",
            "[ike]\nlocal_ts = [\"10.1.0.0/16[tcp/443]\", \"10.9.0.1\"]\n[psk]\ndefault = \"k\"\n",
        )
        .unwrap();
        let e = c.responder_endpoint();
        assert_eq!(
            e.responder.as_ref().unwrap().local_ts,
            vec![
                sel("10.1.0.0/16", 6, (443, 443)),
                sel("10.9.0.1/32", 0, (0, 65535))
            ]
        );
    }

    /// `peer.children`: the first CHILD SA goes into IKE_AUTH, the others are kept for
    /// CREATE_CHILD_SA; a side a child leaves out is `peer.local_ts` / `peer.remote_ts`.
    #[test]
    fn peer_children_in_order_with_defaults() {
        let any = (0, 65535);
        let c = Config::parse(
            "t",
            r#"
[peer]
local_id = "r"
psk = "k"
headends = ["127.0.0.1:500"]
local_ts = ["10.8.0.0/24"]
remote_ts = ["10.200.0.0/16"]
[[peer.children]]
remote_ts = ["10.200.0.0/16[tcp/5201]"]
[[peer.children]]
local_ts = ["0.0.0.0/0[icmp]"]
remote_ts = ["10.200.0.0/16[icmp]"]
[[peer.children]]
"#,
        )
        .unwrap();
        let p = c.validate_peer("t").unwrap();
        let ch = p.child_selectors();
        assert_eq!(
            ch,
            vec![
                (
                    vec![sel("10.8.0.0/24", 0, any)],
                    vec![sel("10.200.0.0/16", 6, (5201, 5201))]
                ),
                (
                    vec![sel("0.0.0.0/0", 1, any)],
                    vec![sel("10.200.0.0/16", 1, any)]
                ),
                (
                    vec![sel("10.8.0.0/24", 0, any)],
                    vec![sel("10.200.0.0/16", 0, any)]
                ),
            ]
        );
        let i = c.initiator(p, p.local_id.0.clone(), 4500);
        assert_eq!((i.local_ts.clone(), i.remote_ts.clone()), ch[0]);
        // No children, no selectors: one CHILD SA for 0.0.0.0/0 both ways.
        let c = Config::parse(
            "t",
            "[peer]\nlocal_id = \"r\"\npsk = \"k\"\nheadends = [\"127.0.0.1:500\"]\n",
        )
        .unwrap();
        let all = vec![sel("0.0.0.0/0", 0, any)];
        assert_eq!(c.peer.unwrap().child_selectors(), vec![(all.clone(), all)]);
    }

    #[test]
    fn peer_section_and_initiator_config() {
        let c = Config::parse(
            "t",
            r#"
[psk]
default = "fallback"
[peer]
local_id = "router-7"
headends = ["127.0.0.1:40500", { addr = "127.0.0.1:41500", natt_port = 41501 }]
policy = "random"
backoff = "250ms"
"#,
        )
        .unwrap();
        let p = c.validate_peer("t").unwrap();
        assert_eq!(p.headends[0].natt_port, 4500);
        assert_eq!(p.headends[1].natt_port, 41501);
        assert_eq!(p.policy, Policy::Random);
        assert_eq!(p.backoff.0, Duration::from_millis(250));
        let i = c.initiator(p, p.local_id.0.clone(), 41501);
        assert_eq!(i.local_id, Identity::Fqdn("router-7".into()));
        assert_eq!(i.remote_natt_port, 41501);
        assert!(i.request_vip4);
        let AuthConfig::Psk(s) = &i.auth else {
            panic!("PSK auth expected")
        };
        assert_eq!(s.default.as_deref(), Some(&b"fallback"[..]));
        assert_eq!(i.remote_ts[0].end, IpAddr::from([255, 255, 255, 255]));
    }

    #[test]
    fn psk_file_is_read_relative_to_the_config() {
        let dir = std::env::temp_dir().join(format!("headend-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("keys"),
            "# comment\nrouter-1 s3cret with spaces\n* dflt\n",
        )
        .unwrap();
        std::fs::write(dir.join("h.toml"), "[psk]\npsk_file = \"keys\"\n").unwrap();
        let c = Config::load(&dir.join("h.toml")).unwrap();
        assert_eq!(c.psk.peers["router-1"].0, "s3cret with spaces");
        assert_eq!(c.psk.default.as_ref().unwrap().0, "dflt");
        std::fs::write(dir.join("keys"), "lonely\n").unwrap();
        let e = Config::load(&dir.join("h.toml")).unwrap_err().to_string();
        assert!(
            e.ends_with("keys:1: psk_file: want \"identity secret\""),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn auth_section_loads_pem_files_and_reloads_changed_crls() {
        use rcgen::{
            CertificateParams, CertificateRevocationListParams, IsCa, KeyIdMethod, KeyPair,
            RevokedCertParams, SerialNumber,
        };
        let dir = std::env::temp_dir().join(format!("headend-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_p = CertificateParams::new(vec![]).unwrap();
        ca_p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_p.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["vpn.example.net".into()]).unwrap();
        p.serial_number = Some(SerialNumber::from(5u64));
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        let crl = |serials: &[u64]| {
            CertificateRevocationListParams {
                this_update: rcgen::date_time_ymd(2026, 1, 1),
                next_update: rcgen::date_time_ymd(2027, 1, 1),
                crl_number: SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: serials
                    .iter()
                    .map(|s| RevokedCertParams {
                        serial_number: SerialNumber::from(*s),
                        revocation_time: rcgen::date_time_ymd(2026, 1, 1),
                        reason_code: None,
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(&ca, &ca_key)
            .unwrap()
            .pem()
            .unwrap()
        };
        std::fs::write(dir.join("he.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("he.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("ca.crl"), crl(&[])).unwrap();
        let toml = "[ike]\nlocal_id = \"vpn.example.net\"\n[auth]\ncert = \"he.pem\"\n\
                    key = \"he.key\"\ncas = [\"ca.pem\"]\ncrls = [\"ca.crl\"]\n";
        std::fs::write(dir.join("h.toml"), toml).unwrap();
        let c = Config::load(&dir.join("h.toml")).unwrap();
        // Certificates replace the PSK requirement, and the engine gets them.
        c.validate_responder("h.toml").unwrap();
        let e = c.responder_endpoint();
        let r = e.responder.as_ref().unwrap();
        assert!(matches!(r.auth, AuthConfig::Cert(_)));
        let auth = c.cert_auth.clone().unwrap();
        assert_eq!(auth.crl_count(), 1);
        assert!(
            format!("{auth:?}").contains("rsa_padding: Pkcs1"),
            "{auth:?}"
        );
        // `rsa_padding = "pss"` reaches the engine; an unknown scheme is refused.
        for (v, ok) in [
            ("pss", Some("Pss")),
            ("pkcs1", Some("Pkcs1")),
            ("pss256", None),
        ] {
            std::fs::write(dir.join("p.toml"), format!("{toml}rsa_padding = \"{v}\"\n")).unwrap();
            match (Config::load(&dir.join("p.toml")), ok) {
                (Ok(p), Some(want)) => {
                    let a = p.cert_auth.unwrap();
                    assert!(format!("{a:?}").contains(&format!("rsa_padding: {want}")));
                }
                (Err(e), None) => assert!(e.to_string().contains("rsa_padding"), "{e}"),
                (r, _) => panic!("rsa_padding = {v}: {r:?}"),
            }
        }
        // A changed CRL file is picked up; an unchanged one is not re-read.
        let mut w = c.crl_watcher().unwrap();
        assert!(!w.poll());
        std::fs::write(dir.join("ca.crl"), crl(&[5, 6])).unwrap();
        assert!(w.poll());
        assert!(!w.poll());
        // A broken CRL file keeps the previous set.
        std::fs::write(
            dir.join("ca.crl"),
            "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        )
        .unwrap();
        assert!(!w.poll());
        assert_eq!(auth.crl_count(), 1);
        // A key that is not the certificate's is refused at load, naming the keys.
        std::fs::write(
            dir.join("he.key"),
            KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        let e = Config::load(&dir.join("h.toml")).unwrap_err().to_string();
        assert!(e.contains("auth.cert/key"), "{e}");
        std::fs::remove_file(dir.join("he.key")).unwrap();
        assert!(Config::load(&dir.join("h.toml")).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn other_owners_sections_are_accepted() {
        let c = Config::parse(
            "t",
            "[dns]\nport = 5353\ndomain = \"vpn.example\"\n[service.ipsec-ddns]\nself = \"10.0.0.1\"\nsecret = \"12345678\"\ndomain = \"vpn.example\"\ndata_dir = \"/tmp/x\"\n[dataplane]\nmtu = 1400\n",
        )
        .unwrap();
        assert_eq!(c.dns.as_ref().unwrap().port, 5353);
        assert_eq!(c.service.ipsec_ddns.as_ref().unwrap().self_addr, "10.0.0.1");
        assert_eq!(c.dataplane.as_ref().unwrap().mtu, 1400);
        let e = err("[service.ipsec-dns]\nself = 1\n");
        assert!(e.contains("unknown key 'service.ipsec-dns'"), "{e}");
        // Their keys are checked with lines too.
        let e = err("[dns]\n\nprot = 5353\n");
        assert!(e.starts_with("x.toml:3: unknown key 'dns.prot'"), "{e}");
        // zone transfer keys: bad values and dangling references name their line
        let e = err("[dns]\n[[dns.tsig_key]]\nname = \"k\"\nsecret = \"%%%\"\n");
        assert!(
            e.starts_with("x.toml:4: dns.tsig_key[0].secret: invalid base64"),
            "{e}"
        );
        let e = err("[dns]\n[[dns.tsig_key]]\nname = \"k\"\nsecret = \"AAEC\"\n\
             [[dns.secondary]]\naddress = \"192.0.2.53\"\ntsig_key = \"k\"\n\
             [[dns.secondary]]\naddress = \"192.0.2.54:5353\"\ntsig_key = \"nokey\"\n");
        assert_eq!(
            e,
            "x.toml:10: dns.secondary[1].tsig_key: no [[dns.tsig_key]] named \"nokey\""
        );
        let e = err("[dns]\n[[dns.secondary]]\naddress = \"ns.example\"\ntsig_key = \"k\"\n");
        assert!(
            e.starts_with("x.toml:3: dns.secondary[0].address: invalid address"),
            "{e}"
        );
        let e = err("[dataplane]\nmtu = \"big\"\n");
        assert!(e.starts_with("x.toml:2: dataplane.mtu: "), "{e}");
        let e = err("[dataplane]\nmtu = 1400\nicmp_source = [\"10.99.0.254\", \"nope\"]\n");
        assert!(e.starts_with("x.toml:3: dataplane.icmp_source"), "{e}");
        let c = Config::parse(
            "t",
            "[dataplane]\nicmp_source = [\"fd00::fe\"]\nouter_mtu = 9000\n",
        );
        let d = c.unwrap().dataplane.unwrap();
        assert_eq!((d.icmp_source.len(), d.outer_mtu), (1, 9000));
        // natt_bind: one address or one per family (issue 3, dual-stack NAT-T).
        let natt = |v: &str| {
            let c = Config::parse("t", &format!("[dataplane]\nnatt_bind = {v}\n")).unwrap();
            let d = c.dataplane.unwrap().natt_bind;
            d.iter().map(|a| a.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(natt("\"127.0.0.2:4600\""), ["127.0.0.2:4600"]);
        assert_eq!(
            natt("[\"0.0.0.0:4500\", \"[fd00::1]:4500\"]"),
            ["0.0.0.0:4500", "[fd00::1]:4500"]
        );
        let e = err("[dataplane]\nmtu = 1400\nnatt_bind = [\"10.0.0.1:4500\", \"0.0.0.0:4500\"]\n");
        assert_eq!(
            e,
            "x.toml:3: dataplane.natt_bind: at most one IPv4 address (10.0.0.1:4500 and 0.0.0.0:4500 given)"
        );
        let e = err("[dataplane]\nnatt_bind = [\"::4500\"]\n");
        assert!(
            e.starts_with("x.toml:2: dataplane.natt_bind: \"::4500\" is not \"ip:port\""),
            "{e}"
        );
        let e = err("[dataplane]\nnatt_bind = []\n");
        assert!(
            e.starts_with("x.toml:2: dataplane.natt_bind: at least one"),
            "{e}"
        );
        let absent = Config::parse("t", "").unwrap();
        assert!(
            absent.dns.is_none()
                && absent.dataplane.is_none()
                && absent.service.ipsec_ddns.is_none()
        );
    }
}
