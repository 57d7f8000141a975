//! The I/O around the sans-IO engine: UDP sockets for IKE (500) and NAT-T (4500), the
//! receive tasks, the transmit path and the ESP demultiplexer (RFC 3948 2.2).
//!
//! One task owns the [`ike::Endpoint`] (see `run`, `peer`, `bench`); socket receive tasks
//! feed it through a bounded channel. A datagram on a NAT-T socket of our own (the data
//! plane owns none) is told apart by [`ike::esp::outer::classify_outer`], the data plane's
//! demultiplexer: a single 0xFF octet is a NAT keepalive (RFC 3948 2.3) and is dropped,
//! the non-ESP marker makes IKE (RFC 3948 2.2), ESP of an SPI the [`EspSink`] knows goes
//! to it (RFC 3948 2.1), and every other datagram is refused, logged once per reason and
//! counted under the data plane's ESP drop reasons (`esp_truncated`, `esp_unknown_spi`).
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ike::endpoint::Endpoint;
use ike::esp::outer::{classify_outer, Carrier, Outer, OuterDrop};
use ike::esp::EspDrop;
use ike::{ChildSa, SocketKind, Spi, Transmit};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::dataplane::Handover;
use crate::error::Error;

/// Largest UDP payload we read.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams handed to the engine per wake-up before transmits and events are drained.
pub const BATCH: usize = 64;

/// A received IKE datagram (NAT-T datagrams still carry the non-ESP marker: the engine
/// strips it).
#[derive(Debug)]
pub struct Datagram {
    pub kind: SocketKind,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub data: Vec<u8>,
}

/// Where ESP-in-UDP datagrams from the NAT-T socket go (the data plane), and what is
/// refused on it.
pub trait EspSink: Send + Sync + 'static {
    /// Whether an SA is installed for `spi`; ESP of any other SPI is refused
    /// (RFC 4303 3.4.2).
    fn knows(&self, spi: u32) -> bool;
    fn esp(&self, local: SocketAddr, remote: SocketAddr, packet: &[u8]);
    /// A datagram refused before decryption, to be counted as `why.esp_drop()`.
    fn refused(&self, remote: SocketAddr, why: OuterDrop);
}

/// The seam to the data plane for CHILD SA life cycle events (RFC 7296 2.17 keys in
/// [`ChildSa`]). Implemented by the data plane handle; [`NullDataplane`] when none runs.
pub trait ChildSaSink: Send + 'static {
    fn install(&mut self, sa: &ChildSa);
    /// `handover`: which outbound SA carries traffic (from `Event::ChildSaRekeyed`'s
    /// `initiator` and `redundant`, RFC 7296 2.8, 2.8.1).
    fn rekeyed(&mut self, old_inbound: Spi, new: &ChildSa, handover: Handover);
    fn remove(&mut self, inbound: Spi, outbound: Spi);
}

/// No data plane: CHILD SAs are only logged; no SA is installed, so every ESP packet is
/// refused for its SPI, counted with the other refusals under the data plane's drop
/// reasons ([`EspDrop`]).
#[derive(Debug, Default)]
pub struct NullDataplane {
    drops: [AtomicU64; EspDrop::ALL.len()],
}

impl NullDataplane {
    /// Datagrams refused for `d`.
    pub fn dropped(&self, d: EspDrop) -> u64 {
        self.drops[d.index()].load(Ordering::Relaxed)
    }

    /// The refusals as data plane counters (nothing else moves without a data plane).
    pub fn counters(&self) -> crate::dataplane::Counters {
        let mut c = crate::dataplane::Counters::default();
        for d in EspDrop::ALL {
            c.drops.insert(d.label(), self.dropped(d));
        }
        c
    }
}

impl EspSink for NullDataplane {
    fn knows(&self, _spi: u32) -> bool {
        false
    }

    fn esp(&self, _local: SocketAddr, remote: SocketAddr, _packet: &[u8]) {
        self.refused(remote, OuterDrop::UnknownSpi);
    }

    fn refused(&self, remote: SocketAddr, why: OuterDrop) {
        let d = why.esp_drop();
        if self.drops[d.index()].fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::info!(%remote, reason = d.label(), error = %why, "NAT-T datagram refused (no data plane runs); counting further ones silently");
        }
    }
}

impl EspSink for Arc<NullDataplane> {
    fn knows(&self, spi: u32) -> bool {
        (**self).knows(spi)
    }

    fn esp(&self, local: SocketAddr, remote: SocketAddr, packet: &[u8]) {
        (**self).esp(local, remote, packet)
    }

    fn refused(&self, remote: SocketAddr, why: OuterDrop) {
        (**self).refused(remote, why)
    }
}

impl ChildSaSink for NullDataplane {
    fn install(&mut self, _sa: &ChildSa) {}
    fn rekeyed(&mut self, _old_inbound: Spi, _new: &ChildSa, _handover: Handover) {}
    fn remove(&mut self, _inbound: Spi, _outbound: Spi) {}
}

/// Sends NAT-T datagrams through a socket someone else owns (the data plane).
pub type NattSend = Arc<dyn Fn(SocketAddr, &[u8]) -> std::io::Result<()> + Send + Sync>;

/// The bound sockets and the receive channel.
pub struct Sockets {
    by_local: HashMap<(SocketKind, SocketAddr), Arc<UdpSocket>>,
    natt_external: Option<NattSend>,
    tx: mpsc::Sender<Datagram>,
    pub rx: mpsc::Receiver<Datagram>,
    /// Local addresses of the IKE sockets, in `listen` order.
    pub ike_addrs: Vec<SocketAddr>,
    pub natt_addrs: Vec<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Sockets {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds a UDP socket; an IPv6 one is IPV6_V6ONLY, so `0.0.0.0` and `::` side by side in
/// `listen` each serve their own family (and datagrams keep their own family's addresses,
/// which NAT detection hashes, RFC 7296 2.23).
async fn bind(addr: SocketAddr) -> Result<Arc<UdpSocket>, Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| Error::Bind { addr, source };
    let s =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    if addr.is_ipv6() {
        s.set_only_v6(true).map_err(err)?;
    }
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    let s = UdpSocket::from_std(s.into()).map_err(err)?;
    Ok(Arc::new(s))
}

/// The error a socket or bind call gives on a host with IPv6 disabled.
fn no_ipv6(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

impl Sockets {
    /// Binds an IKE socket and (unless `natt_port` is `None`) a NAT-T socket on each
    /// address (port 0 = any free port) and starts their receive tasks. ESP goes to `esp`.
    pub async fn bind(
        listen: &[IpAddr],
        ike_port: u16,
        natt_port: Option<u16>,
        esp: Arc<dyn EspSink>,
    ) -> Result<Sockets, Error> {
        let (tx, rx) = mpsc::channel(4096);
        let mut s = Sockets {
            by_local: HashMap::new(),
            natt_external: None,
            tx: tx.clone(),
            rx,
            ike_addrs: vec![],
            natt_addrs: vec![],
            tasks: vec![],
        };
        for ip in listen {
            let ike = match bind(SocketAddr::new(*ip, ike_port)).await {
                Ok(s) => s,
                // A host without IPv6 still serves IPv4 when `::` is listed (the default).
                Err(Error::Bind { source, .. })
                    if ip.is_ipv6()
                        && ip.is_unspecified()
                        && listen.len() > 1
                        && no_ipv6(&source) =>
                {
                    tracing::warn!("IPv6 unavailable ({source}): IKE serves IPv4 only");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let la = ike.local_addr()?;
            s.ike_addrs.push(la);
            s.by_local.insert((SocketKind::Ike, la), ike.clone());
            s.tasks.push(tokio::spawn(recv_loop(
                ike,
                SocketKind::Ike,
                la,
                tx.clone(),
                esp.clone(),
            )));
            if let Some(natt_port) = natt_port {
                let natt = bind(SocketAddr::new(*ip, natt_port)).await?;
                let ln = natt.local_addr()?;
                s.natt_addrs.push(ln);
                s.by_local.insert((SocketKind::NatT, ln), natt.clone());
                s.tasks.push(tokio::spawn(recv_loop(
                    natt,
                    SocketKind::NatT,
                    ln,
                    tx.clone(),
                    esp.clone(),
                )));
            }
        }
        Ok(s)
    }

    /// Uses NAT-T sockets owned elsewhere (the data plane, one per family): IKE datagrams
    /// from them arrive on `incoming` (non-ESP marker included), transmits go through
    /// `send`.
    pub fn attach_natt(
        &mut self,
        locals: &[SocketAddr],
        mut incoming: mpsc::Receiver<Datagram>,
        send: NattSend,
    ) {
        self.natt_addrs.extend_from_slice(locals);
        self.natt_external = Some(send);
        let tx = self.tx.clone();
        self.tasks.push(tokio::spawn(async move {
            while let Some(d) = incoming.recv().await {
                if tx.send(d).await.is_err() {
                    return;
                }
            }
        }));
    }

    fn socket_for(&self, t: &Transmit) -> Option<&Arc<UdpSocket>> {
        if let Some(s) = self.by_local.get(&(t.socket, t.local)) {
            return Some(s);
        }
        // Same kind and port on any address (e.g. the engine echoed an unspecified address),
        // preferring the same address family.
        self.by_local
            .iter()
            .filter(|((k, a), _)| *k == t.socket && a.port() == t.local.port())
            .min_by_key(|((_, a), _)| a.is_ipv4() != t.remote.is_ipv4())
            .map(|(_, s)| s)
            .or_else(|| {
                self.by_local
                    .iter()
                    .filter(|((k, a), _)| *k == t.socket && a.is_ipv4() == t.remote.is_ipv4())
                    .map(|(_, s)| s)
                    .next()
            })
    }

    /// Sends one datagram from the engine; failures are logged, never fatal.
    pub async fn send(&self, t: &Transmit) {
        if t.socket == SocketKind::NatT {
            if let Some(send) = &self.natt_external {
                if let Err(e) = send(t.remote, &t.payload) {
                    tracing::debug!(remote = %t.remote, error = %e, "NAT-T send failed");
                }
                return;
            }
        }
        let Some(sock) = self.socket_for(t) else {
            tracing::warn!(local = %t.local, remote = %t.remote, "no socket for transmit; dropped");
            return;
        };
        match sock.try_send_to(&t.payload, t.remote) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Err(e) = sock.send_to(&t.payload, t.remote).await {
                    tracing::debug!(remote = %t.remote, error = %e, "send failed");
                }
            }
            Err(e) => tracing::debug!(remote = %t.remote, error = %e, "send failed"),
        }
    }

    /// Sends everything the engine has queued.
    pub async fn flush(&self, ep: &mut Endpoint) {
        while let Some(t) = ep.poll_transmit() {
            self.send(&t).await;
        }
    }
}

async fn recv_loop(
    sock: Arc<UdpSocket>,
    kind: SocketKind,
    local: SocketAddr,
    tx: mpsc::Sender<Datagram>,
    esp: Arc<dyn EspSink>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut route_cache: HashMap<IpAddr, IpAddr> = HashMap::new();
    loop {
        let (n, remote) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors surface here on Linux (ECONNREFUSED); keep going.
                tracing::trace!(%local, error = %e, "recv error");
                continue;
            }
        };
        let d = &buf[..n];
        if kind == SocketKind::NatT {
            match classify_outer(Carrier::Udp, d, |spi| esp.knows(spi).then_some(())) {
                Ok(Outer::Keepalive) => continue,
                Ok(Outer::Esp { .. }) => {
                    esp.esp(local, remote, d);
                    continue;
                }
                Ok(Outer::Ike(_)) => {}
                Err(why) => {
                    esp.refused(remote, why);
                    continue;
                }
            }
        }
        let dg = Datagram {
            kind,
            local: resolve_local(&mut route_cache, local, remote),
            remote,
            data: d.to_vec(),
        };
        match tx.try_send(dg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(%remote, "IKE receive queue full; datagram dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// The local address a datagram from `remote` reached, for a socket bound to `local`.
/// A wildcard bind does not say which address the peer sent to; NAT detection (RFC 7296
/// 2.23) hashes it, so use the address the kernel routes back from (of `remote`'s
/// family: every socket is single-family).
pub fn resolve_local(
    cache: &mut HashMap<IpAddr, IpAddr>,
    local: SocketAddr,
    remote: SocketAddr,
) -> SocketAddr {
    if local.ip().is_unspecified() {
        SocketAddr::new(
            route_source(cache, remote.ip()).unwrap_or(local.ip()),
            local.port(),
        )
    } else {
        local
    }
}

/// The source address the kernel would use towards `remote` (a connected UDP socket sends
/// nothing), cached per remote address (bounded).
fn route_source(cache: &mut HashMap<IpAddr, IpAddr>, remote: IpAddr) -> Option<IpAddr> {
    if let Some(a) = cache.get(&remote) {
        return Some(*a);
    }
    let any: SocketAddr = if remote.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(SocketAddr::new(remote, 9)).ok()?;
    let ip = s.local_addr().ok()?.ip();
    if cache.len() >= 65_536 {
        cache.clear();
    }
    cache.insert(remote, ip);
    Some(ip)
}

/// Feeds one datagram and then up to `BATCH - 1` more already queued ones to the engine.
pub fn feed(ep: &mut Endpoint, first: Datagram, rx: &mut mpsc::Receiver<Datagram>) {
    let now = Instant::now();
    ep.handle(now, first.kind, first.local, first.remote, &first.data);
    for _ in 1..BATCH {
        match rx.try_recv() {
            Ok(d) => ep.handle(now, d.kind, d.local, d.remote, &d.data),
            Err(_) => break,
        }
    }
}

/// Sleeps until `deadline` (forever when `None`).
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// A fresh 32-byte seed for an endpoint's RNG, from the OS.
pub fn seed() -> [u8; 32] {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_local_address_is_resolved_per_peer() {
        let mut c = HashMap::new();
        let lo = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(route_source(&mut c, lo), Some(lo));
        assert_eq!(route_source(&mut c, IpAddr::from([127, 0, 0, 9])), Some(lo));
        assert_eq!(c.len(), 2);
    }

    #[tokio::test]
    async fn wildcard_socket_reports_the_real_local_address() {
        let null = Arc::new(NullDataplane::default());
        let mut s = Sockets::bind(&[IpAddr::from([0, 0, 0, 0])], 0, Some(0), null.clone())
            .await
            .unwrap();
        let port = s.ike_addrs[0].port();
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        c.send_to(b"hello", ("127.0.0.1", port)).unwrap();
        let d = s.rx.recv().await.unwrap();
        assert_eq!(d.local, SocketAddr::from(([127, 0, 0, 1], port)));
        assert_eq!(d.remote, c.local_addr().unwrap());
        assert_eq!(d.data, b"hello");
        // ESP on the NAT-T socket goes to the sink (which knows no SPI: refused),
        // keepalives are dropped, IKE passes; runts (an empty datagram, three zeros,
        // five octets: shorter than an ESP header, RFC 4303 2) are refused and counted.
        let natt = s.natt_addrs[0].port();
        for d in [
            &[0, 0, 0, 1, 0, 0, 0, 1][..],
            &[0xff],
            &[],
            &[0, 0, 0],
            &[1, 2, 3, 4, 5],
            &[0, 0, 0, 0, 9],
        ] {
            c.send_to(d, ("127.0.0.1", natt)).unwrap();
        }
        let d = s.rx.recv().await.unwrap();
        assert_eq!((d.kind, d.data), (SocketKind::NatT, vec![0, 0, 0, 0, 9]));
        assert_eq!(null.dropped(EspDrop::UnknownSpi), 1);
        assert_eq!(null.dropped(EspDrop::Truncated), 3);
        assert_eq!(null.counters().drops.get("esp_truncated"), Some(&3));
    }
}
