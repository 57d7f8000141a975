//! Listening sockets: UDP and TCP on every configured address (RFC 1035 section 4.2,
//! RFC 7766: TCP is mandatory, it is where truncated answers are retried).
//!
//! UDP: several SO_REUSEPORT sockets per address, one receive loop (an OS thread) per
//! socket; the kernel spreads queries across them. Each loop answers in place with
//! [`DnsHandler::handle_bytes`] and counts into its own counter shard.
//! TCP: [`crate::tcp`] (framing, idle timeout, connection limit) over the same
//! [`DnsHandler::handle_bytes`], so every rejection is counted like over UDP.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::DnsConfig;
use crate::error::Error;
use crate::handler::DnsHandler;
use crate::metrics::Counters;
use crate::zone::Zone;

/// How often a UDP loop wakes up to notice shutdown.
const POLL: Duration = Duration::from_millis(200);

/// A running authoritative server. Dropping it stops the UDP loops and the TCP server.
pub struct DnsServer {
    handler: DnsHandler,
    udp_addrs: Vec<SocketAddr>,
    tcp_addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    tcp: Vec<tokio::task::JoinHandle<()>>,
    notifier: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("udp", &self.udp_addrs)
            .field("tcp", &self.tcp_addrs)
            .finish()
    }
}

fn udp_socket(addr: SocketAddr) -> Result<Socket, Error> {
    let bind_err = |source| Error::Bind {
        addr,
        proto: "udp",
        source,
    };
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err)?;
    if addr.is_ipv6() {
        s.set_only_v6(true).map_err(bind_err)?;
    }
    s.set_reuse_port(true).map_err(bind_err)?;
    // Absorb bursts (a resolver farm after a failover); best effort.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into()).map_err(bind_err)?;
    s.set_read_timeout(Some(POLL)).map_err(bind_err)?;
    Ok(s)
}

fn tcp_listener(addr: SocketAddr) -> Result<std::net::TcpListener, Error> {
    let bind_err = |source| Error::Bind {
        addr,
        proto: "tcp",
        source,
    };
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(bind_err)?;
    if addr.is_ipv6() {
        s.set_only_v6(true).map_err(bind_err)?;
    }
    s.set_reuse_address(true).map_err(bind_err)?;
    s.bind(&addr.into()).map_err(bind_err)?;
    s.listen(1024).map_err(bind_err)?;
    s.set_nonblocking(true).map_err(bind_err)?;
    Ok(s.into())
}

/// Bind `n` UDP sockets and one TCP listener on `ip`, all on the same port (the first
/// UDP socket picks it when `port` is 0).
fn bind_address(
    ip: IpAddr,
    port: u16,
    n: usize,
) -> Result<(Vec<UdpSocket>, std::net::TcpListener), Error> {
    let first = udp_socket(SocketAddr::new(ip, port))?;
    let local = first
        .local_addr()?
        .as_socket()
        .ok_or_else(|| Error::Config("UDP socket has no IP address".into()))?;
    let mut udp = vec![UdpSocket::from(first)];
    for _ in 1..n {
        udp.push(UdpSocket::from(udp_socket(local)?));
    }
    let tcp = tcp_listener(local)?;
    Ok((udp, tcp))
}

impl DnsServer {
    /// Bind every configured address and start serving `zone`. Must be called inside a
    /// tokio runtime (TCP runs on it; UDP loops are their own threads).
    pub async fn start(cfg: &DnsConfig, zone: Zone) -> Result<DnsServer, Error> {
        if cfg.listen.is_empty() {
            return Err(Error::Config("dns.listen is empty".into()));
        }
        let xfr = Arc::new(crate::xfr::Transfer::new(cfg)?);
        let handler = DnsHandler::new(zone, cfg.edns_udp_size).with_transfer(Arc::clone(&xfr));
        let n = cfg.effective_udp_sockets();
        let mut bound = Vec::new();
        for ip in &cfg.listen {
            // Port 0 (tests): the UDP port chosen may be taken for TCP; retry a few times.
            let mut attempt = 0;
            loop {
                match bind_address(*ip, cfg.port, n) {
                    Ok(b) => break bound.push(b),
                    Err(Error::Bind { proto: "tcp", .. }) if cfg.port == 0 && attempt < 10 => {
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut tcp = Vec::new();
        let mut udp_addrs = Vec::new();
        let mut tcp_addrs = Vec::new();
        let mut threads = Vec::new();
        for (udp, listener) in bound {
            for (i, sock) in udp.into_iter().enumerate() {
                let addr = sock.local_addr()?;
                if i == 0 {
                    udp_addrs.push(addr);
                }
                let h = handler.clone();
                let stop = Arc::clone(&stop);
                let t = std::thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || udp_loop(sock, h, stop))?;
                threads.push(t);
            }
            tcp_addrs.push(listener.local_addr()?);
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tcp.push(crate::tcp::serve(
                listener,
                handler.clone(),
                Duration::from_secs(cfg.tcp_timeout_secs.max(1)),
            ));
        }
        tracing::info!(udp = ?udp_addrs, tcp = ?tcp_addrs, sockets_per_addr = n,
            zone = %handler.zone().origin(), "authoritative DNS server listening");
        let notifier = crate::xfr::spawn_notifier(xfr, handler.zone().clone(), &cfg.listen);
        Ok(DnsServer {
            handler,
            udp_addrs,
            tcp_addrs,
            stop,
            threads,
            tcp,
            notifier,
        })
    }

    /// UDP addresses served (one per listen address; each has several sockets).
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp_addrs
    }

    /// TCP addresses served.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp_addrs
    }

    /// Counters by outcome (answers, NXDOMAIN, FORMERR, drops, truncations...).
    pub fn counters(&self) -> &Arc<Counters> {
        self.handler.counters()
    }

    /// The zone served.
    pub fn zone(&self) -> &Zone {
        self.handler.zone()
    }

    /// Zone transfer and NOTIFY counters.
    pub fn transfer_stats(&self) -> &crate::xfr::XfrStats {
        self.handler.transfer().stats()
    }

    /// Stop serving: UDP loops end within 200 ms, TCP connections are closed.
    pub async fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.notifier {
            t.abort();
        }
        for t in self.tcp.drain(..) {
            t.abort();
            let _ = t.await;
        }
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tcp {
            t.abort();
        }
        for t in &self.notifier {
            t.abort();
        }
    }
}

/// Datagrams received / sent per system call (recvmmsg / sendmmsg).
const BATCH: usize = 32;

/// Receive loop with recvmmsg/sendmmsg: up to [`BATCH`] queries per system call each
/// way (MSG_WAITFORONE: returns as soon as one is there). Falls back to one datagram
/// per call if the kernel refuses.
#[cfg(target_os = "linux")]
fn udp_loop(sock: UdpSocket, handler: DnsHandler, stop: Arc<AtomicBool>) {
    use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::AsRawFd;

    let fd = sock.as_raw_fd();
    let shard = handler.counters().shard();
    // one octet more than we accept, so an oversized datagram is seen as such
    let mut bufs: Vec<Vec<u8>> = vec![vec![0u8; crate::handler::MAX_QUERY + 1]; BATCH];
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1500)).collect();
    let mut rx_hdrs = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut tx_hdrs = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut got: Vec<(usize, Option<SocketAddr>)> = Vec::with_capacity(BATCH);
    let mut replies: Vec<(usize, SocketAddr)> = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Relaxed) {
        got.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            match recvmmsg(
                fd,
                &mut rx_hdrs,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(results) => {
                    for r in results {
                        let addr = r.address.and_then(|a: SockaddrStorage| {
                            if let Some(v4) = a.as_sockaddr_in() {
                                Some(SocketAddr::V4((*v4).into()))
                            } else {
                                a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
                            }
                        });
                        got.push((r.bytes, addr));
                    }
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(error) => {
                    tracing::debug!(%error, "DNS UDP recvmmsg error");
                    continue;
                }
            }
        }
        replies.clear();
        for (i, &(n, addr)) in got.iter().enumerate() {
            let Some(src) = addr else { continue };
            let query = bufs[i].get(..n).unwrap_or_default();
            if handler.handle_bytes(query, src, false, &shard, &mut outs[i]) {
                replies.push((i, src));
            }
        }
        if replies.is_empty() {
            continue;
        }
        let slices: Vec<[IoSlice<'_>; 1]> = replies
            .iter()
            .map(|&(i, _)| [IoSlice::new(&outs[i])])
            .collect();
        let addrs: Vec<Option<SockaddrStorage>> = replies
            .iter()
            .map(|&(_, a)| Some(SockaddrStorage::from(a)))
            .collect();
        if let Err(error) = sendmmsg(
            fd,
            &mut tx_hdrs,
            slices.iter(),
            &addrs,
            [],
            MsgFlags::empty(),
        ) {
            tracing::debug!(%error, "DNS UDP sendmmsg failed; sending one by one");
            for &(i, a) in &replies {
                let _ = sock.send_to(&outs[i], a);
            }
        }
    }
}

/// Portable receive loop: one datagram per system call.
#[cfg(not(target_os = "linux"))]
fn udp_loop(sock: UdpSocket, handler: DnsHandler, stop: Arc<AtomicBool>) {
    let shard = handler.counters().shard();
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(4096);
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, src)) => {
                let query = buf.get(..n).unwrap_or_default();
                if handler.handle_bytes(query, src, false, &shard, &mut out) {
                    if let Err(error) = sock.send_to(&out, src) {
                        tracing::debug!(%error, %src, "DNS UDP send failed");
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(error) => {
                // e.g. ICMP-induced errors: never let them end the loop
                tracing::debug!(%error, "DNS UDP receive error");
            }
        }
    }
}
