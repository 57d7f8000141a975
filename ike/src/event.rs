//! What the engine tells its driver: datagrams to send and events.
use std::net::{IpAddr, SocketAddr};

use zeroize::Zeroizing;

use crate::config::{EncrAlg, IntegAlg};

/// Which of the driver's two UDP sockets a datagram arrived on or leaves from.
///
/// The NAT-T socket (4500 by default) carries IKE behind the four-byte non-ESP marker
/// (RFC 3948 2.2); the engine adds and strips the marker itself. The driver demultiplexes
/// ESP-in-UDP (non-zero first four bytes) and NAT keepalives (a single 0xFF) before
/// handing datagrams to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketKind {
    Ike,
    NatT,
}

/// A datagram for the driver to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    pub socket: SocketKind,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub payload: Vec<u8>,
}

/// IKE identities (RFC 7296 3.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    Ipv4(std::net::Ipv4Addr),
    Ipv6(std::net::Ipv6Addr),
    Fqdn(String),
    Rfc822(String),
    /// DER-encoded distinguished name.
    DerAsn1Dn(Vec<u8>),
    KeyId(Vec<u8>),
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Ipv4(a) => write!(f, "{a}"),
            Identity::Ipv6(a) => write!(f, "{a}"),
            Identity::Fqdn(s) | Identity::Rfc822(s) => f.write_str(s),
            Identity::DerAsn1Dn(d) => write!(f, "dn:{}", hex(d)),
            Identity::KeyId(k) => write!(f, "keyid:{}", hex(k)),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A traffic selector (RFC 7296 3.13.1): an address range, an IP protocol (0 = any) and
/// a port range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrafficSelector {
    pub start: IpAddr,
    pub end: IpAddr,
    pub protocol: u8,
    pub start_port: u16,
    pub end_port: u16,
}

/// strongSwan's notation: `10.9.0.0/24[tcp/5201]`; an address range that is no prefix
/// as `a..b`; `[proto]` alone for any port, `[proto/a-b]` for a range, `%opaque` for
/// OPAQUE (RFC 4301 4.4.1.1; ICMP type<<8|code in the port).
impl std::fmt::Display for TrafficSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, e, bits) = match (self.start, self.end) {
            (IpAddr::V4(s), IpAddr::V4(e)) => (u32::from(s) as u128, u32::from(e) as u128, 32),
            (IpAddr::V6(s), IpAddr::V6(e)) => (u128::from(s), u128::from(e), 128),
            _ => (1, 0, 0),
        };
        // A prefix: the range's size is a power of two and its start aligned to it.
        let size = e.wrapping_sub(s).wrapping_add(1);
        let prefix = if s > e {
            None
        } else if size == 0 {
            Some(0) // the whole IPv6 space
        } else if size.is_power_of_two() && s % size == 0 {
            Some(bits - size.trailing_zeros())
        } else {
            None
        };
        match prefix {
            Some(p) => write!(f, "{}/{p}", self.start)?,
            None => write!(f, "{}..{}", self.start, self.end)?,
        }
        let ports = match (self.start_port, self.end_port) {
            (0, 65535) => String::new(),
            (65535, 0) => "/%opaque".into(),
            (a, b) if a == b => format!("/{a}"),
            (a, b) => format!("/{a}-{b}"),
        };
        let proto = match self.protocol {
            0 if ports.is_empty() => return Ok(()),
            0 => "0".to_string(),
            1 => "icmp".into(),
            6 => "tcp".into(),
            17 => "udp".into(),
            58 => "ipv6-icmp".into(),
            132 => "sctp".into(),
            p => p.to_string(),
        };
        write!(f, "[{proto}{ports}]")
    }
}

/// An engine-local handle for an IKE SA (stable across nothing: a rekeyed IKE SA gets a
/// new one, announced by [`Event::IkeSaRekeyed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IkeSaId(pub u64);

/// An ESP Security Parameter Index (RFC 4303 2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spi(pub u32);

/// Keys and parameters for one direction of an ESP SA, derived per RFC 7296 2.17.
///
/// For AEAD ciphers `encr_key` carries the cipher key followed by the salt (4 bytes for
/// AES-GCM, RFC 4106 8.1; 4 bytes for ChaCha20-Poly1305, RFC 7634 2) and `integ` is `None`.
#[derive(Clone)]
pub struct EspKeys {
    pub spi: Spi,
    pub encr: EncrAlg,
    pub encr_key: Zeroizing<Vec<u8>>,
    pub integ: Option<IntegAlg>,
    pub integ_key: Zeroizing<Vec<u8>>,
    /// Extended sequence numbers negotiated (RFC 4303 2.2.1).
    pub esn: bool,
}

impl std::fmt::Debug for EspKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EspKeys")
            .field("spi", &format_args!("{:08x}", self.spi.0))
            .field("encr", &self.encr)
            .field("integ", &self.integ)
            .field("esn", &self.esn)
            .finish_non_exhaustive()
    }
}

/// A CHILD SA pair as installed: what the data plane needs.
#[derive(Debug, Clone)]
pub struct ChildSa {
    pub ike_sa: IkeSaId,
    /// Keys for packets we receive (our SPI).
    pub inbound: EspKeys,
    /// Keys for packets we send (the peer's SPI).
    pub outbound: EspKeys,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// Outer addresses; ESP is UDP-encapsulated (RFC 3948) when `udp_encap`.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub udp_encap: bool,
}

/// Why an IKE SA went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteReason {
    /// The peer sent a Delete payload.
    PeerDeleted,
    /// We deleted it (operator or driver request).
    LocalDelete,
    /// Retransmissions or DPD got no answer.
    Timeout,
    /// Replaced by a rekeyed IKE SA (RFC 7296 2.8).
    Rekeyed,
    /// The same identity connected again with INITIAL_CONTACT (RFC 7296 2.4).
    InitialContact,
    /// Negotiation or authentication failed; carries a short reason.
    Failed(String),
}

/// Events for the driver, in the order they happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// IKE_AUTH completed: the peer is authenticated.
    IkeSaEstablished {
        ike_sa: IkeSaId,
        local: SocketAddr,
        remote: SocketAddr,
        local_id: Identity,
        remote_id: Identity,
        /// CN of the peer's certificate subject, for certificate peers (seed 003 ch. 4
        /// derives the gateway ID from it); `None` for PSK peers.
        remote_cert_cn: Option<String>,
        /// Virtual addresses assigned to the peer (responder) or to us (initiator).
        virtual_ips: Vec<IpAddr>,
        udp_encap: bool,
    },
    /// An IKE SA was rekeyed; the CHILD SAs moved to `new`.
    IkeSaRekeyed {
        old: IkeSaId,
        new: IkeSaId,
    },
    /// An IKE SA and all its CHILD SAs are gone; its virtual IPs were released.
    IkeSaDeleted {
        ike_sa: IkeSaId,
        reason: DeleteReason,
    },
    /// The peer's outer address or the encapsulation changed (NAT mapping moved).
    IkeSaAddressChanged {
        ike_sa: IkeSaId,
        remote: SocketAddr,
        udp_encap: bool,
    },
    ChildSaInstalled(ChildSa),
    /// A rekeyed CHILD SA: install `new`, keep accepting on the old inbound SPI until the
    /// matching `ChildSaDeleted` (RFC 7296 2.8).
    ChildSaRekeyed {
        old_inbound: Spi,
        new: ChildSa,
        /// We sent the CREATE_CHILD_SA request. The initiator installs its new inbound SA
        /// only when the response arrives (RFC 7296 2.8), so the responder (`false`) should
        /// keep sending on the old outbound SA until the initiator deletes the old pair.
        initiator: bool,
        /// `new` is the redundant SA of a simultaneous rekey (RFC 7296 2.8.1: our
        /// exchange had the lowest nonce) and we delete it at once: accept on its inbound
        /// SPI until then, never send on it. The old SA carries traffic until the peer
        /// deletes it; then the peer's new SA (announced with `initiator: false`) does.
        redundant: bool,
    },
    ChildSaDeleted {
        ike_sa: IkeSaId,
        inbound: Spi,
        outbound: Spi,
    },
    /// An exchange with a peer failed before an SA existed (for counters and logs).
    NegotiationFailed {
        remote: SocketAddr,
        identity: Option<Identity>,
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::TrafficSelector;

    fn ts(s: &str, e: &str, protocol: u8, ports: (u16, u16)) -> String {
        TrafficSelector {
            start: s.parse().unwrap(),
            end: e.parse().unwrap(),
            protocol,
            start_port: ports.0,
            end_port: ports.1,
        }
        .to_string()
    }

    #[test]
    fn selectors_print_in_strongswan_notation() {
        assert_eq!(
            ts("10.9.0.0", "10.9.0.255", 6, (5201, 5201)),
            "10.9.0.0/24[tcp/5201]"
        );
        assert_eq!(ts("10.99.0.7", "10.99.0.7", 0, (0, 65535)), "10.99.0.7/32");
        assert_eq!(
            ts("0.0.0.0", "255.255.255.255", 1, (0, 65535)),
            "0.0.0.0/0[icmp]"
        );
        assert_eq!(
            ts("10.0.0.1", "10.0.0.6", 17, (1000, 2000)),
            "10.0.0.1..10.0.0.6[udp/1000-2000]"
        );
        assert_eq!(
            ts(
                "::",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                0,
                (0, 65535)
            ),
            "::/0"
        );
        assert_eq!(
            ts("fd00::", "fd00::ff", 58, (65535, 0)),
            "fd00::/120[ipv6-icmp/%opaque]"
        );
        assert_eq!(ts("10.0.0.0", "10.0.0.3", 0, (53, 53)), "10.0.0.0/30[0/53]");
    }
}
