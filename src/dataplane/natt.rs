//! The NAT-T sockets (RFC 3948 UDP-encapsulated ESP and IKE on port 4500), one set per
//! outer address family so IPv4 and IPv6 peers are served at the same time.
//!
//! `[dataplane] natt_bind` names at most one address per family; the IPv6 socket is
//! IPV6_V6ONLY (set in [`sys::udp_socket`]), so `0.0.0.0:4500` and `[::]:4500` do not clash
//! and every datagram arrives with an address of its own family. The encrypt path and
//! the daemon's transmits pick the socket of the destination's family ([`family`]).
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

use super::sys;
use crate::Error;

/// The sockets of one queue, indexed by [`family`].
pub(crate) type FamilySockets = [Option<Arc<UdpSocket>>; 2];

/// Index of an address's family in a [`FamilySockets`]: 0 IPv4, 1 IPv6.
pub(crate) fn family(a: &SocketAddr) -> usize {
    usize::from(a.is_ipv6())
}

/// `0.0.0.0:<port>` and `[::]:<port>`: both families on every address.
pub fn default_bind(port: u16) -> Vec<SocketAddr> {
    vec![
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
    ]
}

/// At least one address, at most one per family.
pub fn check_bind(addrs: &[SocketAddr]) -> Result<(), String> {
    if addrs.is_empty() {
        return Err("at least one address is needed".into());
    }
    for fam in 0..2 {
        let of: Vec<_> = addrs.iter().filter(|a| family(a) == fam).collect();
        if of.len() > 1 {
            let name = if fam == 0 { "IPv4" } else { "IPv6" };
            return Err(format!(
                "at most one {name} address ({} and {} given)",
                of[0], of[1]
            ));
        }
    }
    Ok(())
}

/// `natt_bind = "ip:port"` or `natt_bind = ["ip:port", "[ip6]:port"]`.
pub(crate) fn deserialize_bind<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let raw = Raw::deserialize(d).map_err(|_| {
        serde::de::Error::custom("expected \"ip:port\" or a list of them (one per family)")
    })?;
    let list = match raw {
        Raw::One(s) => vec![s],
        Raw::Many(v) => v,
    };
    let addrs = list
        .iter()
        .map(|s| {
            s.parse::<SocketAddr>().map_err(|_| {
                serde::de::Error::custom(format!(
                    "\"{s}\" is not \"ip:port\" (IPv6 as \"[::]:4500\")"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_bind(&addrs).map_err(serde::de::Error::custom)?;
    Ok(addrs)
}

/// Binds `queues` SO_REUSEPORT sockets on each address of `bind`: `result[q][family]`.
/// An IPv6 address on a host without IPv6 (the socket family is not supported) is left
/// out with one warning when another family binds.
pub(crate) fn bind_sockets(
    bind: &[SocketAddr],
    queues: usize,
) -> Result<Vec<FamilySockets>, Error> {
    bind_with(bind, queues, |a| sys::udp_socket(a, true, 200))
}

fn bind_with(
    bind: &[SocketAddr],
    queues: usize,
    mut udp_socket: impl FnMut(SocketAddr) -> std::io::Result<UdpSocket>,
) -> Result<Vec<FamilySockets>, Error> {
    check_bind(bind).map_err(|e| Error::Other(format!("dataplane.natt_bind: {e}")))?;
    let mut socks: Vec<FamilySockets> = vec![[None, None]; queues];
    for addr in bind {
        for (q, slot) in socks.iter_mut().enumerate() {
            match udp_socket(*addr) {
                Ok(s) => slot[family(addr)] = Some(Arc::new(s)),
                Err(e)
                    if q == 0
                        && addr.is_ipv6()
                        && e.raw_os_error() == Some(libc::EAFNOSUPPORT)
                        && bind.len() > 1 =>
                {
                    tracing::warn!(natt = %addr, error = %e,
                        "no IPv6 on this host: UDP-encapsulated ESP and NAT-T over IPv4 only");
                    break;
                }
                Err(source) => {
                    return Err(Error::Bind {
                        addr: *addr,
                        source,
                    })
                }
            }
        }
    }
    if socks[0].iter().all(Option::is_none) {
        return Err(Error::Other(
            "dataplane.natt_bind: nothing could be bound".into(),
        ));
    }
    Ok(socks)
}

/// One of a queue's sockets (the first family bound).
pub(crate) fn any(socks: &FamilySockets) -> Result<Arc<UdpSocket>, Error> {
    socks
        .iter()
        .flatten()
        .next()
        .cloned()
        .ok_or_else(|| Error::Other("dataplane.natt_bind: no NAT-T socket".into()))
}

/// The bound addresses of one queue's sockets, IPv4 first.
pub(crate) fn locals(socks: &FamilySockets) -> Vec<SocketAddr> {
    socks
        .iter()
        .flatten()
        .filter_map(|s| s.local_addr().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_per_family() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(check_bind(&default_bind(4500)).is_ok());
        assert!(check_bind(&[a("[::1]:4500")]).is_ok());
        assert!(check_bind(&[]).is_err());
        let e = check_bind(&[a("10.0.0.1:4500"), a("[::]:4500"), a("0.0.0.0:4500")]);
        assert_eq!(
            e.unwrap_err(),
            "at most one IPv4 address (10.0.0.1:4500 and 0.0.0.0:4500 given)"
        );
        assert_eq!([family(&a("1.2.3.4:1")), family(&a("[::1]:1"))], [0, 1]);
    }

    #[test]
    fn a_host_without_ipv6_runs_natt_over_ipv4_alone() {
        let no_v6 = |a: SocketAddr| {
            if a.is_ipv6() {
                Err(std::io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
            } else {
                UdpSocket::bind("127.0.0.1:0")
            }
        };
        let socks = bind_with(&default_bind(4500), 3, no_v6).unwrap();
        assert!(socks.iter().all(|s| s[0].is_some() && s[1].is_none()));
        // Asked for IPv6 alone, or IPv6 failing otherwise: an error naming the address.
        let v6 = vec![SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 4500)];
        assert!(bind_with(&v6, 1, no_v6).is_err());
        let busy = |a: SocketAddr| {
            if a.is_ipv6() {
                Err(std::io::Error::from_raw_os_error(libc::EADDRINUSE))
            } else {
                UdpSocket::bind("127.0.0.1:0")
            }
        };
        let e = bind_with(&default_bind(4500), 1, busy).unwrap_err();
        assert!(e.to_string().contains("[::]:4500"), "{e}");
    }

    #[test]
    fn both_families_bind_on_one_port() {
        // Wildcards of both families on one (free) port: IPV6_V6ONLY keeps them apart.
        let probe = sys::udp_socket("127.0.0.1:0".parse().unwrap(), false, 10).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let socks = bind_sockets(&default_bind(port), 2).unwrap();
        assert_eq!(socks.len(), 2);
        let l = locals(&socks[1]);
        assert_eq!(l, default_bind(port));
        // A datagram to the IPv4 loopback arrives on the IPv4 socket as IPv4.
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.send_to(b"x", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 8];
        let got = socks
            .iter()
            .filter_map(|s| s[0].as_ref()?.recv_from(&mut buf).ok())
            .next()
            .unwrap();
        assert_eq!(got.1, c.local_addr().unwrap());
    }
}
