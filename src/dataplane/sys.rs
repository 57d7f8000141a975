//! The data plane's one platform module: the Linux system calls std does not wrap
//! (recvmmsg/sendmmsg, UDP GSO/GRO, raw ESP sockets, SO_REUSEPORT, poll, setns).
//! Every `unsafe` block of the daemon lives here, each with its safety argument.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Maximum datagrams per recvmmsg/sendmmsg call.
pub const BATCH: usize = 64;
/// Largest UDP payload a GRO read can return.
pub const GRO_BUF: usize = 65535;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn to_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in/in6; we write
    // a fully initialised value of the right type at its start.
    unsafe {
        match addr {
            SocketAddr::V4(a) => {
                let sin = out as *mut _ as *mut libc::sockaddr_in;
                *sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                let sin6 = out as *mut _ as *mut libc::sockaddr_in6;
                *sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

fn from_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int with its size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &v as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as _,
        )
    })
    .map(|_| ())
}

/// A UDP socket bound with SO_REUSEPORT (one per worker, the kernel spreads flows), with
/// large buffers and a receive timeout so workers notice shutdown.
pub fn udp_socket(bind: SocketAddr, reuseport: bool, timeout_ms: u64) -> io::Result<UdpSocket> {
    let domain = if bind.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = cvt(unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh socket nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if bind.is_ipv6() {
        // IPv6 only: `[::]:4500` beside `0.0.0.0:4500` (one socket per family).
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    if reuseport {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 8 << 20);
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 8 << 20);
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20);
    // SAFETY: zeroed sockaddr_storage is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = to_sockaddr(&bind, &mut ss);
    // SAFETY: ss holds a valid sockaddr of length len.
    cvt(unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) })?;
    let sock = UdpSocket::from(owned);
    sock.set_read_timeout(Some(std::time::Duration::from_millis(timeout_ms)))?;
    Ok(sock)
}

/// Asks the kernel to coalesce received datagrams of one flow (UDP_GRO, Linux 5.0).
pub fn enable_udp_gro(sock: &UdpSocket) -> bool {
    setsockopt_int(sock.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1).is_ok()
}

/// Whether UDP_SEGMENT (GSO) works on this socket.
pub fn probe_udp_gso(sock: &UdpSocket) -> bool {
    setsockopt_int(sock.as_raw_fd(), libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok()
}

/// A raw socket for IP protocol 50 (RFC 4303 without UDP encapsulation), IPv4 or IPv6.
/// Received IPv4 datagrams start with the IP header; IPv6 ones with the ESP header
/// (RFC 3542 3: raw IPv6 sockets never pass the IPv6 header up).
pub fn raw_esp_socket(v6: bool, timeout_ms: u64) -> io::Result<UdpSocket> {
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ESP,
        )
    })?;
    // SAFETY: fresh fd.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 8 << 20);
    // A raw socket speaks datagrams like UDP for recv_from/send_to purposes.
    let sock = UdpSocket::from(owned);
    sock.set_read_timeout(Some(std::time::Duration::from_millis(timeout_ms)))?;
    Ok(sock)
}

/// Waits until `fd` is readable or `timeout_ms` passes. Returns whether it is readable.
pub fn poll_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(n > 0)
}

/// Reusable gather list for writev(2), e.g. one TUN write made of a virtio header and
/// packets left where they were decrypted.
pub struct Writev {
    iovs: Vec<libc::iovec>,
}

// SAFETY: the pointers in iovs are rebuilt before every use and never read otherwise.
unsafe impl Send for Writev {}

impl Writev {
    /// A gather list of at most `max_parts` parts (more are cut off).
    pub fn new(max_parts: usize) -> Self {
        Writev {
            iovs: Vec::with_capacity(max_parts.clamp(1, 1024)),
        }
    }

    /// One writev(2) of the parts, in order. Returns the octets written.
    pub fn write(
        &mut self,
        fd: RawFd,
        parts: &mut dyn Iterator<Item = &[u8]>,
    ) -> io::Result<usize> {
        self.iovs.clear();
        let cap = self.iovs.capacity();
        for p in parts.take(cap) {
            self.iovs.push(libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            });
        }
        loop {
            // SAFETY: every iovec points at a slice the iterator lent, alive during the call.
            let r = unsafe { libc::writev(fd, self.iovs.as_ptr(), self.iovs.len() as _) };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Moves the calling thread into the network namespace at `path` (e.g.
/// `/run/netns/NAME`). Sockets and TUN devices the thread opens afterwards belong there.
pub fn enter_netns(path: &str) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: setns on a namespace fd we hold open; affects only this thread.
    cvt(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }).map(|_| ())
}

/// Reusable recvmmsg state: one buffer per datagram, source addresses, and a control
/// buffer per datagram for the UDP_GRO segment size.
pub struct RecvBatch {
    pub bufs: Vec<Vec<u8>>,
    pub lens: Vec<usize>,
    pub addrs: Vec<Option<SocketAddr>>,
    /// GRO segment size per datagram (0 = a single datagram).
    pub segs: Vec<usize>,
    /// The datagram was longer than its buffer (MSG_TRUNC): what is in it is cut short.
    pub truncated: Vec<bool>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    ctrl: Vec<[u64; 8]>,
}

// SAFETY: the raw pointers inside iovs/hdrs only ever point into this struct's own
// vectors and are rebuilt before every use.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new(n: usize, buf_size: usize) -> Self {
        RecvBatch {
            bufs: (0..n).map(|_| vec![0u8; buf_size]).collect(),
            lens: vec![0; n],
            addrs: vec![None; n],
            segs: vec![0; n],
            truncated: vec![false; n],
            // SAFETY: zeroed C structs are valid values.
            names: (0..n).map(|_| unsafe { zeroed() }).collect(),
            iovs: (0..n)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: zeroed C structs are valid values.
            hdrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            ctrl: vec![[0u64; 8]; n],
        }
    }

    /// One recvmmsg call: blocks up to the socket's read timeout for the first datagram,
    /// then takes whatever else is queued. Returns the number received (0 on timeout).
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let n = self.bufs.len();
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr() as *mut libc::c_void,
                iov_len: self.bufs[i].len(),
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.names[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as _;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.ctrl[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = size_of::<[u64; 8]>() as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by self, sized as declared.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as _,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let got = r as usize;
        for i in 0..got {
            self.lens[i] = self.hdrs[i].msg_len as usize;
            self.addrs[i] = from_sockaddr(&self.names[i]);
            self.segs[i] = gro_segment(&self.hdrs[i].msg_hdr);
            self.truncated[i] = self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(got)
    }
}

/// The UDP_GRO segment size from a received message's control data, if any.
fn gro_segment(h: &libc::msghdr) -> usize {
    // SAFETY: CMSG_* walk the control buffer the kernel filled, bounded by
    // msg_controllen; we only read a c_int from a cmsg the kernel labelled UDP_GRO.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                return v.max(0) as usize;
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    0
}

/// Reusable sendmmsg state.
pub struct SendBatch {
    names: Vec<libc::sockaddr_storage>,
    /// Where each datagram's parts start in `iovs`, and how many there are.
    spans: Vec<(usize, usize)>,
    /// Gather lists of all datagrams of one call, back to back; never grows past its
    /// capacity, so the kernel never sees a moved pointer.
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    ctrl: Vec<[u64; 4]>,
}

// SAFETY: as for RecvBatch, the pointers are rebuilt before every use.
unsafe impl Send for SendBatch {}

/// One datagram to send: bytes, destination, and a GSO segment size (0 = none).
pub struct Datagram<'a> {
    pub bytes: &'a [u8],
    pub to: SocketAddr,
    pub segment: u16,
}

/// One datagram given as parts that the kernel gathers (no copy into one buffer here):
/// with a GSO segment size, each part is typically one segment.
pub struct Gather<I> {
    pub parts: I,
    pub to: SocketAddr,
    pub segment: u16,
}

/// Most parts one datagram may have (well under the kernel's UIO_MAXIOV of 1024).
pub const MAX_PARTS: usize = 128;

impl SendBatch {
    pub fn new(n: usize) -> Self {
        SendBatch {
            // SAFETY: zeroed C structs are valid values.
            names: (0..n).map(|_| unsafe { zeroed() }).collect(),
            spans: vec![(0, 0); n],
            iovs: Vec::with_capacity(n * MAX_PARTS),
            // SAFETY: zeroed C structs are valid values.
            hdrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            ctrl: vec![[0u64; 4]; n],
        }
    }

    /// Sends the datagrams (at most the batch capacity; the rest are not sent) with
    /// sendmmsg, retrying after a partial send. Returns (sent, offered).
    pub fn send<'a>(
        &mut self,
        sock: &UdpSocket,
        dgrams: impl IntoIterator<Item = Datagram<'a>>,
    ) -> io::Result<(usize, usize)> {
        self.send_gather(
            sock,
            dgrams.into_iter().map(|d| Gather {
                parts: std::iter::once(d.bytes),
                to: d.to,
                segment: d.segment,
            }),
        )
    }

    /// [`send`](Self::send) for datagrams made of parts (at most [`MAX_PARTS`] each; a
    /// datagram with more is cut there).
    pub fn send_gather<'a, I: Iterator<Item = &'a [u8]>>(
        &mut self,
        sock: &UdpSocket,
        dgrams: impl IntoIterator<Item = Gather<I>>,
    ) -> io::Result<(usize, usize)> {
        let mut n = 0;
        self.iovs.clear();
        for d in dgrams.into_iter().take(self.hdrs.len()) {
            let i = n;
            n += 1;
            let first = self.iovs.len();
            for part in d.parts.take(MAX_PARTS) {
                self.iovs.push(libc::iovec {
                    iov_base: part.as_ptr() as *mut libc::c_void,
                    iov_len: part.len(),
                });
            }
            self.spans[i] = (first, self.iovs.len() - first);
            let len = to_sockaddr(&d.to, &mut self.names[i]);
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.names[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = len;
            h.msg_flags = 0;
            if d.segment > 0 {
                // SAFETY: ctrl[i] is 32 bytes, enough for one cmsg carrying a u16.
                unsafe {
                    h.msg_control = self.ctrl[i].as_mut_ptr() as *mut libc::c_void;
                    h.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, d.segment);
                }
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
        }
        // Every part is in place: iovs no longer moves, point the headers into it.
        for i in 0..n {
            let (first, count) = self.spans[i];
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_iov = self.iovs[first..].as_mut_ptr();
            h.msg_iovlen = count as _;
        }
        let mut done = 0;
        while done < n {
            // SAFETY: headers done..n point at live buffers (the parts borrow 'a, which
            // outlives this call) and at self's names/iovs/ctrl.
            let r = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.hdrs[done..].as_mut_ptr(),
                    (n - done) as _,
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if done == 0 {
                    return Err(e);
                }
                break;
            }
            if r == 0 {
                break;
            }
            done += r as usize;
        }
        Ok((done, n))
    }
}

#[cfg(test)]
mod recv_tests {
    use super::*;

    /// A datagram longer than its receive buffer is flagged, not handed on as if whole
    /// (it would otherwise fail the ICV and be counted as an integrity failure).
    #[test]
    fn a_datagram_longer_than_its_buffer_is_flagged_truncated() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        tx.send_to(&[7u8; 5000], to).expect("send");
        tx.send_to(&[8u8; 100], to).expect("send");
        let mut b = RecvBatch::new(4, 4096);
        let mut got = Vec::new();
        while got.len() < 2 {
            let n = b.recv(&rx).expect("recv");
            assert!(n > 0, "timed out");
            got.extend((0..n).map(|i| (b.lens[i], b.truncated[i])));
        }
        assert_eq!(got, vec![(4096, true), (100, false)]);
    }
}
