//! The per-queue worker loops. No allocation on the packet path: every buffer is made
//! once per worker and reused.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ike::esp::gro::{self, Coalescer, Part};
use ike::esp::outer::{self, Carrier, Outer};
use ike::esp::{NextHeader, MAX_HEADROOM, MAX_TAILROOM};
use tun_rs::{SyncDevice, VIRTIO_NET_HDR_LEN};

use super::sys::{self, Gather, RecvBatch, SendBatch, Writev, BATCH, GRO_BUF};
use super::table::{InboundEntry, OutboundEntry, Tables};
use super::{IkeDatagram, Shared, WorkerCounters, DROP_IKE_QUEUE_FULL, DROP_IO};

/// Inner packets per TUN read (a TSO super-packet splits into at most this many).
const TUN_BATCH: usize = tun_rs::IDEAL_BATCH_SIZE;
/// Room in front of an inner packet: virtio header slot, ESP header.
const HEADROOM: usize = VIRTIO_NET_HDR_LEN + MAX_HEADROOM;
/// Largest GSO send: 64 KiB of UDP payload, at most 64 segments (fewer than MAX_PARTS).
const GSO_MAX_BYTES: usize = 65000;
const GSO_MAX_SEGS: usize = 64;

/// The TUN's `gso_max_size` for a tunnel MTU: the largest TSO super-packet whose segments,
/// each sealed with the largest ESP overhead of any transform, fit in one UDP GSO send of
/// [`GSO_MAX_BYTES`]. The kernel's default (64 KiB) splits every super-packet over two
/// sends, and two receives at the other end. Segments are assumed to carry the largest
/// headers (IPv6 and 60 octets of TCP), so smaller headers only give fewer segments.
pub(super) fn tso_max_size(mtu: u16) -> u32 {
    const HEADERS: usize = 40 + 60;
    let mtu = (mtu as usize).max(1280);
    let segs = (GSO_MAX_BYTES / (mtu + MAX_HEADROOM + MAX_TAILROOM)).clamp(1, GSO_MAX_SEGS);
    (segs * (mtu - HEADERS) + HEADERS) as u32
}

/// Receive buffer of a NAT-T socket without UDP GRO: one ESP datagram of the outer path
/// (`[dataplane] outer_mtu`; jumbo frames reach 9000 and more), never below 4096 octets
/// (the 1500-octet common case, and a datagram the peer's kernel fragmented a little
/// beyond its path), never above the 65535 an IP datagram can hold.
pub(super) fn rx_buf_len(outer_mtu: u16) -> usize {
    (outer_mtu as usize).clamp(4096, GRO_BUF)
}

pub(super) struct Worker {
    pub shared: Arc<Shared>,
    pub tun: Arc<SyncDevice>,
    pub sock: Arc<UdpSocket>,
    /// An encrypt worker's NAT-T sockets by outer family (`natt::family`).
    pub natt: super::natt::FamilySockets,
    pub counters: Arc<WorkerCounters>,
    pub gso: bool,
    /// ICMP unreachable generator (encrypt workers; see `icmp.rs`).
    pub icmp: std::cell::RefCell<super::icmp::Unreachable>,
    /// Verdicts of initial fragments for the selector checks (RFC 4301 7.4).
    pub frags: std::cell::RefCell<ike::esp::FragmentTable>,
    /// Non-initial fragments waiting for their initial fragment (RFC 4301 7.4).
    pub early: std::cell::RefCell<ike::esp::EarlyFragments>,
    /// An encrypt worker's buffer for packets sealed one by one: the fragments of an
    /// inner packet it fragments, held fragments released (sized in `run_encrypt`).
    pub scratch: std::cell::RefCell<Vec<u8>>,
}

fn dst_of(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => {
            let b: [u8; 4] = pkt[16..20].try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 if pkt.len() >= 40 => {
            let b: [u8; 16] = pkt[24..40].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Consecutive UDP-encapsulated packets of `pending[first..=last]` sent as one GSO
/// super-datagram.
struct GsoGroup {
    first: usize,
    last: usize,
    to: SocketAddr,
    seg: usize,
    count: usize,
    bytes: usize,
    closed: bool,
}

/// One encrypted packet waiting to be sent.
struct Pending {
    buf: usize,
    start: usize,
    end: usize,
    to: SocketAddr,
    udp: bool,
}

impl Worker {
    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    /// TUN -> ESP -> socket.
    pub fn run_encrypt(self) {
        let mtu = self.shared.cfg.mtu as usize;
        let seg_len = HEADROOM + mtu.max(1280) + MAX_TAILROOM + 64;
        // Fragments are at most `mtu` long, released ones at most a hold slot.
        *self.scratch.borrow_mut() =
            vec![0u8; HEADROOM + early_slot_len(&self.shared.cfg) + MAX_TAILROOM];
        let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + 65535];
        let mut bufs: Vec<Vec<u8>> = (0..TUN_BATCH).map(|_| vec![0u8; seg_len]).collect();
        let mut sizes = vec![0usize; TUN_BATCH];
        let mut pending: Vec<Pending> = Vec::with_capacity(TUN_BATCH);
        // One UDP datagram per inner packet at most: every group fits one sendmmsg.
        let mut batch = SendBatch::new(TUN_BATCH);
        let mut groups: Vec<GsoGroup> = Vec::with_capacity(TUN_BATCH);
        let fd = self.tun.as_raw_fd();
        // The TUN fd is non-blocking: read until it runs dry, poll only then.
        let mut dry = true;
        while !self.stopped() {
            self.expire_early();
            if dry {
                match sys::poll_readable(fd, 200) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(_) => {
                        self.counters.count_drop(DROP_IO);
                        continue;
                    }
                }
            }
            let n = match self
                .tun
                .recv_multiple(&mut original, &mut bufs, &mut sizes, HEADROOM)
            {
                Ok(n) => {
                    // A lone small packet (a TCP ACK, a ping) rarely has a successor
                    // queued: poll before the next read instead of paying a failed read.
                    dry = n <= 1;
                    n
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    dry = true;
                    continue;
                }
                Err(_) => {
                    self.read_failed(&original);
                    dry = true;
                    continue;
                }
            };
            self.counters.tun_reads.fetch_add(1, Ordering::Relaxed);
            let tables = self.shared.tables.load();
            pending.clear();
            for i in 0..n {
                self.encrypt_one(&tables, &mut bufs[i], i, sizes[i], &mut pending);
            }
            self.flush(&pending, &bufs, &mut batch, &mut groups);
        }
    }

    fn encrypt_one(
        &self,
        tables: &Tables,
        buf: &mut [u8],
        idx: usize,
        len: usize,
        pending: &mut Vec<Pending>,
    ) {
        let pkt = &buf[HEADROOM..HEADROOM + len];
        if len > self.shared.cfg.mtu as usize {
            self.oversized(tables, pkt);
            return;
        }
        let (Some(dst), Some(nh)) = (dst_of(pkt), NextHeader::for_inner_packet(pkt)) else {
            self.counters.esp_drop(ike::esp::EspDrop::NoRoute);
            return;
        };
        let out: &Arc<OutboundEntry> = match tables.select(&dst, pkt, &self.frags, Instant::now) {
            Ok(out) => out,
            Err(ike::esp::EspDrop::NonInitialFragment) => {
                // Its initial fragment has not passed yet: wait for it (the SA is chosen
                // then; no SA uses SPI 0).
                self.hold_early(pkt, 0);
                return;
            }
            Err(d) => {
                self.counters.esp_drop(d);
                if d == ike::esp::EspDrop::NoRoute {
                    self.no_route(pkt);
                }
                return;
            }
        };
        // An initial fragment whose later fragments came first: they follow it at once
        // (also when it is cut again itself).
        let early = self.early.borrow().waiting(pkt, 0);
        // Longer than the SA carries within the outer path MTU: IPv4 without DF is
        // fragmented, anything else is answered as too big.
        if len > out.max_inner {
            self.fragment_onto(out, pkt, out.max_inner);
            if let Some(d) = early {
                self.release_outbound(tables, &dst, d);
            }
            return;
        }
        let Some(esp) = self.seal(out, buf, len, nh) else {
            return;
        };
        if let Some(d) = early {
            self.send_one(out, &buf[esp]);
            self.release_outbound(tables, &dst, d);
            return;
        }
        pending.push(Pending {
            buf: idx,
            start: esp.start,
            end: esp.end,
            to: out.remote,
            udp: out.udp_encap,
        });
    }

    /// Seals the inner packet at `buf[HEADROOM..HEADROOM + len]` (next header `nh`) on
    /// `out` in place and counts it sent; returns where the ESP packet is in `buf`. A
    /// packet that crossed a soft lifetime asks for a rekey of the CHILD SA (RFC 7296
    /// 2.8); one refused is counted by reason, a sequence number overflow also asking for
    /// that rekey (RFC 4303 3.3.3: no cycling).
    #[inline]
    fn seal(
        &self,
        out: &OutboundEntry,
        buf: &mut [u8],
        len: usize,
        nh: NextHeader,
    ) -> Option<Range<usize>> {
        match out.sa.encapsulate(buf, HEADROOM, len, nh) {
            Ok(e) => {
                if let Some(reason) = e.rekey {
                    self.shared.rekey(out.child, reason);
                }
                self.counters.tx_packets.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .tx_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
                Some(e.range)
            }
            Err(ike::Error::Esp(d)) => {
                if d == ike::esp::EspDrop::SeqOverflow {
                    self.shared
                        .rekey(out.child, ike::esp::RekeyReason::SequenceNumber);
                }
                self.counters.esp_drop(d);
                None
            }
            Err(_) => {
                self.counters.count_drop(DROP_IO);
                None
            }
        }
    }

    /// Drops and counts the held fragments whose time is up (nothing to do, and no clock
    /// read, while none is held).
    fn expire_early(&self) {
        let mut early = self.early.borrow_mut();
        if !early.is_empty() {
            let n = early.expire(Instant::now());
            self.count_expired(n);
        }
    }

    fn count_expired(&self, n: usize) {
        self.counters
            .esp_drops(ike::esp::EspDrop::FragmentExpired, n as u64);
    }

    /// Holds `pkt`, a non-initial fragment refused for want of its initial fragment on
    /// `sa`, until that one passes; refused as before when it cannot be held.
    #[cold]
    fn hold_early(&self, pkt: &[u8], sa: u32) {
        let held = self.early.borrow_mut().hold(pkt, sa, Instant::now());
        match held {
            Ok(dropped) => self.count_expired(dropped),
            Err(d) => self.counters.esp_drop(d),
        }
    }

    /// Sends the held fragments of `datagram` on the SA their initial fragment (to `dst`)
    /// took: each is checked again and sealed one by one. One longer than that SA carries
    /// within the outer path MTU is treated like such a fragment read from the TUN device:
    /// cut again when DF is clear (RFC 791 2.3, RFC 4301 8.1), else answered as too big.
    #[cold]
    fn release_outbound(&self, tables: &Tables, dst: &IpAddr, datagram: ike::esp::Datagram) {
        let mut early = self.early.borrow_mut();
        let mut scratch = self.scratch.borrow_mut();
        early.release(datagram, |frag| {
            let out = match tables.select(dst, frag, &self.frags, Instant::now) {
                Ok(out) => out,
                Err(d) => {
                    self.counters.esp_drop(d);
                    return;
                }
            };
            if frag.len() > out.max_inner {
                self.fragment_into(out, frag, out.max_inner, &mut scratch);
                return;
            }
            let Some(room) = scratch.get_mut(HEADROOM..HEADROOM + frag.len()) else {
                self.counters.esp_drop(ike::esp::EspDrop::Oversized);
                return;
            };
            room.copy_from_slice(frag);
            self.seal_and_send(out, &mut scratch, frag.len());
        });
    }

    /// An inner packet longer than the tunnel MTU (the TUN device's raised behind our
    /// back): IPv4 without DF is fragmented onto its SA, anything else answered as too big.
    #[cold]
    fn oversized(&self, tables: &Tables, pkt: &[u8]) {
        let mtu = self.shared.cfg.mtu as usize;
        if !super::icmp::may_fragment(pkt) {
            self.too_big(pkt, mtu);
            return;
        }
        let Some(dst) = dst_of(pkt) else {
            self.counters.esp_drop(ike::esp::EspDrop::NoRoute);
            return;
        };
        match tables.select(&dst, pkt, &self.frags, Instant::now) {
            Ok(out) => {
                let early = self.early.borrow().waiting(pkt, 0);
                self.fragment_onto(out, pkt, mtu.min(out.max_inner));
                if let Some(d) = early {
                    self.release_outbound(tables, &dst, d);
                }
            }
            Err(d) => {
                self.counters.esp_drop(d);
                if d == ike::esp::EspDrop::NoRoute {
                    self.no_route(pkt);
                }
            }
        }
    }

    /// `pkt`, longer than `mtu`, on `out`: IPv4 without DF is cut into fragments of at most
    /// `mtu` octets (RFC 4301 8.1, RFC 791 2.3), each sealed in an ESP packet of its own,
    /// so no outer packet is fragmented; anything else is answered as too big.
    #[cold]
    fn fragment_onto(&self, out: &OutboundEntry, pkt: &[u8], mtu: usize) {
        self.fragment_into(out, pkt, mtu, &mut self.scratch.borrow_mut());
    }

    /// [`fragment_onto`](Self::fragment_onto), each fragment written to `scratch` (at
    /// `HEADROOM`) in turn; `pkt` must not be in `scratch`.
    fn fragment_into(&self, out: &OutboundEntry, pkt: &[u8], mtu: usize, scratch: &mut [u8]) {
        if !super::icmp::may_fragment(pkt) {
            self.too_big(pkt, mtu);
            return;
        }
        let mut frags = match ike::esp::Ipv4Fragments::new(pkt, mtu) {
            Ok(f) => f,
            Err(d) => {
                self.counters.esp_drop(d);
                return;
            }
        };
        while let Some(len) = scratch
            .get_mut(HEADROOM..)
            .and_then(|room| frags.next_into(room))
        {
            self.seal_and_send(out, scratch, len);
        }
    }

    /// Seals the inner packet at `buf[HEADROOM..HEADROOM + len]` on `out` and sends it at
    /// once (not batched).
    fn seal_and_send(&self, out: &OutboundEntry, buf: &mut [u8], len: usize) {
        let Some(nh) = buf
            .get(HEADROOM..HEADROOM + len)
            .and_then(NextHeader::for_inner_packet)
        else {
            self.counters.esp_drop(ike::esp::EspDrop::NoRoute);
            return;
        };
        if let Some(esp) = self.seal(out, buf, len, nh) {
            self.send_one(out, &buf[esp]);
        }
    }

    /// One ESP packet to `out`'s peer: on this queue's NAT-T socket of its family, or the
    /// raw socket.
    fn send_one(&self, out: &OutboundEntry, esp: &[u8]) {
        let sent = if out.udp_encap {
            self.natt[super::natt::family(&out.remote)]
                .as_ref()
                .map(|s| s.send_to(esp, out.remote))
        } else {
            let raw = match out.remote {
                SocketAddr::V4(_) => &self.shared.raw,
                SocketAddr::V6(_) => &self.shared.raw6,
            };
            raw.as_ref()
                .map(|r| r.send_to(esp, SocketAddr::new(out.remote.ip(), 0)))
        };
        if matches!(sent, Some(Ok(_))) {
            self.counters.tx_sends.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.count_drop(DROP_IO);
        }
    }

    /// ICMP destination unreachable back into the TUN device (rate-limited, `icmp.rs`).
    #[cold]
    fn no_route(&self, pkt: &[u8]) {
        if self.icmp_error(pkt, super::icmp::Kind::Unreachable) {
            self.counters
                .icmp_unreachable
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An inner packet longer than the tunnel carries (`mtu`): dropped, counted, answered
    /// with fragmentation needed (DF) / Packet Too Big (rate-limited, `icmp.rs`).
    #[cold]
    fn too_big(&self, pkt: &[u8], mtu: usize) {
        self.counters.esp_drop(ike::esp::EspDrop::Oversized);
        let mtu = mtu.min(u16::MAX as usize) as u16;
        if self.icmp_error(pkt, super::icmp::Kind::TooBig(mtu)) {
            self.counters.icmp_too_big.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes the ICMP error `kind` for `pkt` into the TUN device; whether it was sent.
    fn icmp_error(&self, pkt: &[u8], kind: super::icmp::Kind) -> bool {
        self.icmp
            .try_borrow_mut()
            .is_ok_and(|mut icmp| icmp.answer(pkt, kind, &self.tun) == super::icmp::Outcome::Sent)
    }

    /// A failed TUN read. tun-rs refuses a packet longer than our buffers after reading
    /// it whole into `original` (virtio header first): that one is oversized (fragmented
    /// or answered as too big), not an I/O error.
    #[cold]
    fn read_failed(&self, original: &[u8]) {
        match original.get(VIRTIO_NET_HDR_LEN..) {
            Some(pkt) if self.tun.tcp_gso() => match super::icmp::oversized(pkt, original[1]) {
                Some(len) if len > self.shared.cfg.mtu as usize => {
                    self.oversized(&self.shared.tables.load(), &pkt[..len])
                }
                _ => self.counters.count_drop(DROP_IO),
            },
            _ => self.counters.count_drop(DROP_IO),
        }
    }

    /// Sends the batch: UDP datagrams coalesced into GSO super-datagrams per destination
    /// where possible (the kernel gathers the encrypted packets straight from the TUN
    /// buffers, no copy here), else one sendmmsg; plain ESP one by one on the raw socket.
    fn flush(
        &self,
        pending: &[Pending],
        bufs: &[Vec<u8>],
        batch: &mut SendBatch,
        groups: &mut Vec<GsoGroup>,
    ) {
        groups.clear();
        for (i, p) in pending.iter().enumerate().filter(|(_, p)| p.udp) {
            let len = p.end - p.start;
            // Consecutive packets to one destination of one size join a group (the last
            // of a group may be shorter, as UDP_SEGMENT requires).
            if let Some(g) = groups.last_mut() {
                if self.gso
                    && !g.closed
                    && g.to == p.to
                    && len <= g.seg
                    && g.count < GSO_MAX_SEGS
                    && g.bytes + len <= GSO_MAX_BYTES
                {
                    g.last = i;
                    g.count += 1;
                    g.bytes += len;
                    g.closed = len < g.seg;
                    continue;
                }
            }
            groups.push(GsoGroup {
                first: i,
                last: i,
                to: p.to,
                seg: len,
                count: 1,
                bytes: len,
                closed: false,
            });
        }
        // One sendmmsg per outer family, on this queue's NAT-T socket of that family.
        for (fam, sock) in self.natt.iter().enumerate() {
            let of_fam = |g: &&GsoGroup| super::natt::family(&g.to) == fam;
            if !groups.iter().any(|g| of_fam(&g)) {
                continue;
            }
            let Some(sock) = sock else {
                self.counters.count_drop(DROP_IO);
                continue;
            };
            let dgrams = groups.iter().filter(of_fam).map(|g| Gather {
                parts: pending[g.first..=g.last]
                    .iter()
                    .filter(|p| p.udp)
                    .map(|p| &bufs[p.buf][p.start..p.end]),
                to: g.to,
                segment: if g.count > 1 { g.seg as u16 } else { 0 },
            });
            match batch.send_gather(sock, dgrams) {
                Ok((sent, offered)) => {
                    self.counters
                        .tx_sends
                        .fetch_add(sent as u64, Ordering::Relaxed);
                    if sent != offered {
                        self.counters.count_drop(DROP_IO);
                    }
                }
                Err(_) => self.counters.count_drop(DROP_IO),
            }
        }
        for p in pending.iter().filter(|p| !p.udp) {
            let raw = match p.to {
                SocketAddr::V4(_) => &self.shared.raw,
                SocketAddr::V6(_) => &self.shared.raw6,
            };
            let to = SocketAddr::new(p.to.ip(), 0);
            let sent = raw
                .as_ref()
                .map(|r| r.send_to(&bufs[p.buf][p.start..p.end], to));
            if !matches!(sent, Some(Ok(_))) {
                self.counters.count_drop(DROP_IO);
            }
        }
    }

    /// Socket -> ESP -> TUN (UDP-encapsulated ESP, IKE and keepalives demultiplexed).
    /// Packets are decrypted in place in the receive buffers and written to the TUN
    /// device from there, coalesced per flow ([`Coalescer`]).
    pub fn run_decrypt(self) {
        let mut rb = RecvBatch::new(
            if self.gso { 8 } else { BATCH },
            if self.gso {
                GRO_BUF
            } else {
                rx_buf_len(self.shared.cfg.outer_mtu)
            },
        );
        let mut out = TunOut::new(&self.tun, self.shared.cfg.verify_inner_checksums);
        // IKE datagrams carry this socket's address (its family's, see natt.rs).
        let Ok(local) = self.sock.local_addr() else {
            return;
        };
        while !self.stopped() {
            self.expire_early();
            let n = match rb.recv(&self.sock) {
                Ok(n) => n,
                Err(_) => {
                    self.counters.count_drop(DROP_IO);
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    continue;
                }
            };
            if n == 0 {
                continue;
            }
            self.counters
                .rx_reads
                .fetch_add(n as u64, Ordering::Relaxed);
            let tables = self.shared.tables.load();
            for i in 0..n {
                let len = rb.lens[i];
                let Some(from) = rb.addrs[i] else { continue };
                if rb.truncated[i] {
                    // Longer than the receive buffer (a jumbo datagram without GRO).
                    self.counters.esp_drop(ike::esp::EspDrop::Oversized);
                    continue;
                }
                for r in outer::segments(len, rb.segs[i]) {
                    let start = r.start;
                    let chunk = &mut rb.bufs[i][r];
                    let esp = match outer::classify_outer(Carrier::Udp, chunk, |spi| {
                        tables.inbound.get(&spi)
                    }) {
                        Ok(Outer::Esp { sa, .. }) => sa,
                        Ok(Outer::Keepalive) => {
                            self.counters.keepalives.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Ok(Outer::Ike(ike)) => {
                            self.forward_ike(local, from, ike);
                            continue;
                        }
                        Err(d) => {
                            self.counters.esp_drop(d.esp_drop());
                            continue;
                        }
                    };
                    if let Some(inner) = self.decrypt_one(esp, chunk) {
                        if out.gro.full() {
                            out.flush(&mut rb.bufs, &self.counters);
                        }
                        let range = start + inner.start..start + inner.end;
                        out.gro.push(&rb.bufs, Part { buf: i, range });
                    }
                }
            }
            out.flush(&mut rb.bufs, &self.counters);
        }
    }

    fn forward_ike(&self, local: SocketAddr, remote: SocketAddr, bytes: &[u8]) {
        self.counters.ike_datagrams.fetch_add(1, Ordering::Relaxed);
        let d = IkeDatagram {
            local,
            remote,
            bytes: bytes.to_vec(),
        };
        if self.shared.ike_tx.try_send(d).is_err() {
            self.counters.count_drop(DROP_IKE_QUEUE_FULL);
        }
    }

    /// Decrypts `pkt` (ESP for the SA `entry`, [`outer::classify_outer`]) in place;
    /// returns where the inner packet is within it.
    fn decrypt_one(&self, entry: &InboundEntry, pkt: &mut [u8]) -> Option<Range<usize>> {
        match entry.sa.decapsulate(pkt) {
            Ok(d) => {
                if let Some(reason) = d.rekey {
                    self.shared.rekey(entry.child, reason);
                }
                let inner = &pkt[d.range.clone()];
                match self.frags.borrow_mut().check_inbound(
                    inner,
                    d.next_header,
                    &entry.remote_ts,
                    &entry.local_ts,
                    entry.child.0,
                    Instant::now,
                ) {
                    Ok(()) => {}
                    Err(ike::esp::EspDrop::NonInitialFragment) => {
                        self.hold_early(inner, entry.child.0);
                        return None;
                    }
                    Err(drop) => {
                        self.counters.esp_drop(drop);
                        return None;
                    }
                }
                self.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .rx_bytes
                    .fetch_add(inner.len() as u64, Ordering::Relaxed);
                let early = self.early.borrow().waiting(inner, entry.child.0);
                if let Some(datagram) = early {
                    self.release_inbound(entry, d.next_header, datagram);
                }
                Some(d.range)
            }
            Err(ike::Error::Esp(d)) => {
                self.counters.esp_drop(d);
                None
            }
            Err(_) => {
                self.counters.count_drop(DROP_IO);
                None
            }
        }
    }

    /// Writes the held fragments of `datagram` into the TUN device, each checked again
    /// now that its initial fragment passed on `entry`.
    #[cold]
    fn release_inbound(
        &self,
        entry: &super::table::InboundEntry,
        nh: NextHeader,
        datagram: ike::esp::Datagram,
    ) {
        let vnet = [0u8; VIRTIO_NET_HDR_LEN];
        let hdr = if self.tun.tcp_gso() { &vnet[..] } else { &[] };
        self.early.borrow_mut().release(datagram, |frag| {
            let verdict = self.frags.borrow_mut().check_inbound(
                frag,
                nh,
                &entry.remote_ts,
                &entry.local_ts,
                entry.child.0,
                Instant::now,
            );
            if let Err(d) = verdict {
                self.counters.esp_drop(d);
                return;
            }
            let parts = [std::io::IoSlice::new(hdr), std::io::IoSlice::new(frag)];
            if self.tun.send_vectored(&parts).is_err() {
                self.counters.count_drop(DROP_IO);
                return;
            }
            self.counters.tun_writes.fetch_add(1, Ordering::Relaxed);
            self.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
            self.counters
                .rx_bytes
                .fetch_add(frag.len() as u64, Ordering::Relaxed);
        });
    }

    /// Plain ESP (IP protocol 50) from a raw socket: IPv4 header first, or (`v6`) the ESP
    /// header right away.
    pub fn run_raw_decrypt(self, v6: bool) {
        let mut bufs = [vec![0u8; 65536]];
        let mut out = TunOut::new(&self.tun, self.shared.cfg.verify_inner_checksums);
        while !self.stopped() {
            self.expire_early();
            let n = match self.sock.recv_from(&mut bufs[0]) {
                Ok((n, _)) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => {
                    self.counters.count_drop(DROP_IO);
                    continue;
                }
            };
            let carrier = if v6 { Carrier::RawV6 } else { Carrier::RawV4 };
            let tables = self.shared.tables.load();
            let (start, esp) =
                match outer::classify_outer(carrier, &bufs[0][..n], |spi| tables.inbound.get(&spi))
                {
                    Ok(Outer::Esp { start, sa, .. }) => (start, sa),
                    // Never: IKE and keepalives are told apart on `Carrier::Udp` only.
                    Ok(Outer::Ike(_) | Outer::Keepalive) => continue,
                    Err(d) => {
                        self.counters.esp_drop(d.esp_drop());
                        continue;
                    }
                };
            if let Some(inner) = self.decrypt_one(esp, &mut bufs[0][start..n]) {
                let range = start + inner.start..start + inner.end;
                out.gro.push(&bufs, Part { buf: 0, range });
                out.flush(&mut bufs, &self.counters);
            }
        }
    }
}

/// The longest fragment a worker holds for its initial fragment: an inner packet of the
/// tunnel (`mtu`) or of the outer path (`outer_mtu`), whichever is longer.
pub(super) fn early_slot_len(cfg: &super::DataplaneConfig) -> usize {
    cfg.mtu.max(cfg.outer_mtu) as usize
}

/// Decrypted inner packets waiting for their (coalesced) TUN writes.
struct TunOut {
    gro: Coalescer,
    writev: Writev,
    fd: RawFd,
}

impl TunOut {
    fn new(tun: &SyncDevice, verify: bool) -> Self {
        TunOut {
            gro: Coalescer::new(tun.tcp_gso(), tun.udp_gso(), verify),
            writev: Writev::new(gro::MAX_SEGS + 2),
            fd: tun.as_raw_fd(),
        }
    }

    fn flush(&mut self, bufs: &mut [Vec<u8>], counters: &WorkerCounters) {
        if self.gro.is_empty() {
            return;
        }
        let (writev, fd) = (&mut self.writev, self.fd);
        let mut writes = 0u64;
        let failed = self.gro.flush(bufs, |parts| {
            writes += 1;
            writev.write(fd, parts).is_ok()
        });
        counters.tun_writes.fetch_add(writes, Ordering::Relaxed);
        for _ in 0..failed {
            counters.count_drop(DROP_IO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_tso_super_packet_is_one_gso_send_for_any_headers() {
        for mtu in (1280u16..=9000).step_by(7) {
            let n = tso_max_size(mtu) as usize;
            let mtu = mtu as usize;
            // IPv4 + bare TCP (most payload per segment) to IPv6 + 60 octets of TCP.
            for hdrs in 40..=100 {
                let segs = (n - hdrs).div_ceil(mtu - hdrs);
                assert!(segs <= GSO_MAX_SEGS, "mtu {mtu}: {segs} segments");
                assert!(
                    segs * (mtu + MAX_HEADROOM + MAX_TAILROOM) <= GSO_MAX_BYTES,
                    "mtu {mtu}, headers {hdrs}: {segs} sealed segments exceed one send"
                );
            }
        }
        assert_eq!(tso_max_size(1400), 57300);
    }
}
