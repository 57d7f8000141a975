//! The userspace ESP data plane (RFC 4303 tunnel mode over a TUN device).
//!
//! # Shape
//! One TUN device (IFF_VNET_HDR offloads and multi-queue via tun-rs), one UDP socket per
//! worker and address family on the NAT-T port (SO_REUSEPORT, recvmmsg/sendmmsg, UDP
//! GSO/GRO where the kernel has them; [`natt`]), and a raw IP-protocol-50 socket per
//! address family for ESP without UDP encapsulation.
//! Per queue, one thread encrypts (TUN -> ESP -> the NAT-T socket of the peer's family)
//! and one per NAT-T socket decrypts (socket -> ESP -> TUN). Neither copies a packet in user space: TSO super-packets from the TUN are split
//! into per-segment buffers with room for the ESP header and trailer, sealed in place and
//! handed to one UDP GSO sendmsg as a gather list; received (GRO) datagrams are opened in
//! place and written to the TUN as gather lists, a flow's segments coalesced into one
//! super-packet ([`gro`]). SAs live in an [`arc_swap`] snapshot ([`table::Tables`]): lookups by SPI
//! and by destination are hash lookups with no lock; installs clone and swap the table.
//! The ESP transforms themselves are `ike::esp` (sans-IO), and so is the receive
//! demultiplexing ([`ike::esp::outer`]: GRO segments, keepalive / IKE / ESP by SPI, the
//! IPv4 header of the raw socket), which the workers only count and act on.
//!
//! # Seam with the daemon
//! - The daemon calls [`Dataplane::start`] once, then holds the handle as an
//!   [`EspBackend`] and, for each engine event:
//!   `Event::ChildSaInstalled(c)` -> [`DataplaneHandle::install`];
//!   `Event::ChildSaRekeyed { old_inbound, new, initiator, redundant }` ->
//!   [`DataplaneHandle::rekey`] with [`Handover::of`]`(initiator, redundant)`: when we
//!   initiated, the new outbound SA carries traffic at once; when we answered, the old
//!   outbound SA carries it until the initiator deletes the old pair; the redundant SA of
//!   a simultaneous rekey (RFC 7296 2.8.1, deleted by us at once) never carries it: the
//!   old SA does until the peer deletes it, then the peer's new SA (which we answered).
//!   The old inbound SA keeps accepting until
//!   `Event::ChildSaDeleted { inbound, outbound, .. }` -> [`DataplaneHandle::remove`]),
//!   and for `rekey_linger_ms` after that.
//! - The data plane OWNS the NAT-T sockets, one per address family (default
//!   `0.0.0.0:4500` and `[::]:4500`, the IPv6 one IPV6_V6ONLY). Datagrams on them
//!   starting with the four-byte non-ESP marker (RFC 3948 2.2) are IKE: they arrive on
//!   [`DataplaneHandle::take_ike_datagrams`] as [`IkeDatagram`]s, marker INCLUDED (the
//!   engine strips it, `SocketKind::NatT`), with the receiving socket's address as
//!   `local`. The daemon sends its NAT-T transmits with [`DataplaneHandle::send_natt`]
//!   (payload as the engine produced it, marker included), from the socket of the
//!   destination's family. NAT keepalives (one 0xFF octet, RFC 3948 2.3) are counted and
//!   dropped; ours go out of the socket of each peer's family.
//! - Soft lifetimes (bytes/packets, [`DataplaneConfig`]) and sequence-number exhaustion
//!   produce a [`RekeyRequest`] on [`DataplaneHandle::take_rekey_requests`]: its `child`
//!   is the CHILD SA's inbound SPI, to pass to the engine's rekey call.
//! - [`DataplaneHandle::counters`] gives packets, bytes and drops by reason for status.
//!
//! # Policy
//! After decapsulation the inner packet must match the SA's selectors (source in the
//! peer's `remote_ts`, destination in our `local_ts`, protocol and ports included,
//! RFC 4301 5.2), else it is dropped as `esp_ts_mismatch`. A non-initial fragment carries
//! no ports: for selectors with port ranges it passes only when the initial fragment of
//! its datagram (same source, destination, protocol, Identification and SA) passed
//! within the last 10 s (RFC 4301 7.4 stateful fragment checking; each worker keeps a
//! fixed table, [`ike::esp::FragmentTable`]: the kernel hashes every fragment of a
//! datagram to the same TUN queue, fragments carrying no ports to hash, and a peer's ESP
//! reaches one socket). A non-initial fragment that arrives before its initial fragment
//! (reordered on the way) is held, at most [`ike::esp::EARLY_FRAGMENT_SLOTS`] per worker
//! in memory allocated at start, for [`ike::esp::EARLY_FRAGMENT_LIFETIME`]: when the
//! initial fragment passes, the held ones are checked again and follow it (outbound, on
//! the SA the initial fragment chose); one whose initial fragment does not come in time,
//! or that newer ones push out of a full hold, is dropped as `esp_fragment_expired`
//! ([`ike::esp::EarlyFragments`]). One that cannot be held (longer than a slot) is dropped
//! as `esp_non_initial_fragment`; fragments no sender produces (zero-length, past 64 KiB,
//! overlapping the checked headers, chained Fragment headers) are `esp_bad_fragment`.
//! Outbound, a destination maps to an ordered list of SAs (several CHILD SAs of a peer
//! whose selectors share addresses but differ in protocol or ports, RFC 4301 4.4.1): the
//! packet goes on the first whose selectors match it, fragments checked per SA as inbound
//! (host selectors, then ranges narrowest first; install order within one), and an SA
//! that narrows neither protocol nor ports matches on the destination alone
//! ([`table::Tables::select`]); no match is `esp_ts_mismatch`. Rekeys and deletes act on
//! one SA of a list, never its siblings. Ports are TCP/UDP/SCTP/UDP-Lite ports, ICMP
//! type<<8|code for ICMP/ICMPv6
//! (RFC 4301 4.4.1.1); 0-65535 is ANY, 65535-0 OPAQUE ([`ike::esp::check_inner_selectors`]).
//!
//! Packets from the TUN device longer than `mtu` (the TUN device's MTU raised behind our
//! back, a kernel passing one), or longer than their SA can carry within `outer_mtu`
//! (its transform's overhead and outer header counted), are fragmented when they are
//! IPv4 without DF, the way a router would (RFC 4301 8.1, RFC 791 2.3: cut to the
//! smaller of the two sizes, [`ike::esp::Ipv4Fragments`], each fragment in an ESP packet
//! of its own, so no outer packet is fragmented); others are dropped as
//! `esp_oversized` and answered with ICMP fragmentation needed (DF set) / Packet Too Big
//! giving the size that fits (counted as
//! `icmp_too_big`, same limiter and source as the unreachables), also when they exceed
//! the workers' buffers. Packets the kernel would forward into the TUN device beyond its
//! MTU the kernel answers itself.
//!
//! Packets from the TUN device whose destination no SA covers are dropped and counted as
//! `esp_no_route`, and answered with an ICMP destination unreachable written back into
//! the TUN device (host unreachable / address unreachable; never for ICMP errors,
//! non-initial fragments, multicast or broadcast; rate-limited by
//! `icmp_unreachable_rate` / `icmp_unreachable_burst`; counted as `icmp_unreachable`;
//! see `icmp.rs`; their source is `icmp_source`, else the unreachable address). Kernel routes for the remote selectors are set with `ip route replace ... dev <tun>` (iproute2), never
//! for a catch-all /0 selector.
//!
//! # Limits
//! Plain ESP and UDP-encapsulated ESP both work over IPv4 and IPv6 outer addresses at
//! once (one raw socket and one set of NAT-T sockets per family). NAT-T has at most one
//! bound address per family (`natt_bind`): to serve several addresses of one family,
//! bind that family's wildcard (the kernel then picks the source address of what we send
//! by route, not by the address the peer used). A host without IPv6 runs NAT-T over IPv4
//! alone (one warning at start).
//! A kernel XFRM back end would sit beside this one behind [`EspBackend`] (the CHILD SA
//! half of the seam; how it maps to XFRM, and why NAT-T sockets are not part of it: see
//! [`backend`]). None is built: these kernels have no ESP.
pub mod backend;
mod icmp;
mod natt;
pub mod sys;
pub mod table;
mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use ike::esp::{EspDrop, Lifetimes, RekeyReason, DEFAULT_REPLAY_WINDOW};
use ike::{ChildSa, Spi};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::Error;
pub use backend::EspBackend;
pub use table::Handover;
use table::{InboundEntry, OutboundEntry, Tables};

/// `[dataplane]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    /// TUN device name.
    pub tun_name: String,
    /// TUN MTU, the longest inner packet carried. ESP adds up to 37 octets (AEAD) or 73
    /// (AES-CBC + HMAC-SHA2), the outer header 20-48 (README: 1400 fits a 1500-octet
    /// path except for AES-CBC with HMAC-SHA2-384/512 over IPv6; `outer_mtu` keeps
    /// those SAs within the path).
    pub mtu: u16,
    /// Path MTU toward peers: an inner packet whose ESP packet would exceed it on its SA
    /// is answered as too big, giving the longest that fits (instead of the outer packet
    /// being fragmented or refused by UDP GSO); IPv4 without DF is fragmented before
    /// encapsulation instead (RFC 4301 8.1). Also the receive buffer of each ESP datagram
    /// without UDP GRO (at least 4096 octets).
    pub outer_mtu: u16,
    /// Anti-replay window in packets (RFC 4303 3.4.3).
    pub replay_window: u32,
    /// TUN queues, each with an encrypt and a decrypt thread; 0 = one per CPU.
    pub queues: usize,
    /// The NAT-T UDP sockets the data plane owns, at most one per address family (IKE on
    /// them goes to the daemon); a single address or a list in the configuration.
    #[serde(deserialize_with = "natt::deserialize_bind")]
    pub natt_bind: Vec<SocketAddr>,
    /// Also carry plain ESP (IP protocol 50) on a raw socket.
    pub raw_esp: bool,
    /// TUN offloads (IFF_VNET_HDR: TSO/GSO super-packets in, GRO-coalesced writes out).
    pub offload: bool,
    /// UDP GSO on send and GRO on receive where the kernel supports them.
    pub udp_gso: bool,
    /// Verify the TCP/UDP checksum of every decrypted packet before coalescing it into a
    /// TUN super-packet. Off by default: the ESP ICV already proves the packet is what the
    /// peer's ESP layer sealed (see `gro.rs`).
    pub verify_inner_checksums: bool,
    /// Soft lifetimes: a rekey request when crossed (0 = none).
    pub soft_lifetime_bytes: u64,
    pub soft_lifetime_packets: u64,
    /// Hard lifetimes: packets refused after these (0 = none).
    pub hard_lifetime_bytes: u64,
    pub hard_lifetime_packets: u64,
    /// NAT keepalive interval for UDP-encapsulated SAs (RFC 3948 4); 0 = off.
    pub nat_keepalive_secs: u64,
    /// Route the remote traffic selectors (peers' virtual IPs) to the TUN device.
    pub manage_routes: bool,
    /// ICMP destination unreachable for TUN packets no SA covers: at most this many per
    /// second (0 = none, drop silently) in bursts of `icmp_unreachable_burst`, like the
    /// kernel's `icmp_msgs_per_sec` / `icmp_msgs_burst`.
    pub icmp_unreachable_rate: u32,
    pub icmp_unreachable_burst: u32,
    /// Source address of the ICMP errors the data plane writes into the TUN device, the
    /// first of each family (RFC 1812 4.3.2.4); none: the offending packet's destination.
    /// Must not be an address of this host (the kernel drops such packets from the TUN).
    pub icmp_source: Vec<std::net::IpAddr>,
    /// How long a deleted inbound SA still accepts packets in flight, in milliseconds (a
    /// rekey responder answers the initiator's Delete a moment before its data plane
    /// switches to the new SA).
    pub rekey_linger_ms: u64,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            tun_name: "headend0".into(),
            mtu: 1400,
            outer_mtu: 1500,
            replay_window: DEFAULT_REPLAY_WINDOW,
            queues: 0,
            natt_bind: natt::default_bind(4500),
            raw_esp: true,
            offload: true,
            udp_gso: true,
            verify_inner_checksums: false,
            soft_lifetime_bytes: 0,
            soft_lifetime_packets: 0,
            hard_lifetime_bytes: 0,
            hard_lifetime_packets: 0,
            nat_keepalive_secs: 20,
            manage_routes: true,
            icmp_unreachable_rate: 1000,
            icmp_unreachable_burst: 50,
            icmp_source: Vec::new(),
            rekey_linger_ms: 2000,
        }
    }
}

impl DataplaneConfig {
    fn lifetimes(&self) -> Lifetimes {
        Lifetimes {
            soft_bytes: self.soft_lifetime_bytes,
            soft_packets: self.soft_lifetime_packets,
            hard_bytes: self.hard_lifetime_bytes,
            hard_packets: self.hard_lifetime_packets,
        }
    }

    /// How long a deleted inbound SA still accepts packets in flight.
    pub fn rekey_linger(&self) -> Duration {
        Duration::from_millis(self.rekey_linger_ms)
    }
}

/// An IKE datagram that arrived on a NAT-T socket (non-ESP marker included).
#[derive(Debug, Clone)]
pub struct IkeDatagram {
    /// The socket's bound address (a wildcard one is resolved per peer by the daemon,
    /// `driver::resolve_local`, for NAT detection).
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub bytes: Vec<u8>,
}

/// A CHILD SA that should be rekeyed (RFC 7296 2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyRequest {
    /// The CHILD SA's inbound SPI.
    pub child: Spi,
    pub reason: RekeyReason,
}

/// Drop counter slots beyond the ESP reasons.
const DROP_IO: usize = EspDrop::ALL.len();
const DROP_IKE_QUEUE_FULL: usize = DROP_IO + 1;
const DROP_SLOTS: usize = DROP_IO + 2;

/// Per-worker counters (one cache line group each, so workers never share a line).
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct WorkerCounters {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    ike_datagrams: AtomicU64,
    keepalives: AtomicU64,
    tx_sends: AtomicU64,
    rx_reads: AtomicU64,
    tun_reads: AtomicU64,
    tun_writes: AtomicU64,
    icmp_unreachable: AtomicU64,
    icmp_too_big: AtomicU64,
    drops: [AtomicU64; DROP_SLOTS],
}

impl WorkerCounters {
    fn count_drop(&self, slot: usize) {
        self.drops[slot].fetch_add(1, Ordering::Relaxed);
    }
    fn esp_drop(&self, d: EspDrop) {
        self.esp_drops(d, 1);
    }
    fn esp_drops(&self, d: EspDrop, n: u64) {
        self.drops[d.index()].fetch_add(n, Ordering::Relaxed);
    }
}

/// A snapshot of the data plane's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Inner packets encrypted and sent.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Inner packets decrypted and delivered.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub ike_datagrams: u64,
    pub keepalives: u64,
    /// Batching efficiency: UDP datagrams (GSO super-datagrams count once) sent,
    /// datagrams read (a GRO read counts once), TUN reads and TUN writes (a coalesced
    /// super-packet counts once).
    pub tx_sends: u64,
    pub rx_reads: u64,
    pub tun_reads: u64,
    pub tun_writes: u64,
    /// ICMP destination unreachable messages written back into the TUN device for
    /// packets no SA covers (each also counted as an `esp_no_route` drop).
    pub icmp_unreachable: u64,
    /// ICMP fragmentation needed / Packet Too Big written back into the TUN device for
    /// inner packets longer than `mtu` (each also counted as an `esp_oversized` drop).
    pub icmp_too_big: u64,
    /// Dropped packets by reason label (`esp_replayed`, `esp_integrity`, `io`, ...).
    pub drops: BTreeMap<&'static str, u64>,
    /// Installed inbound SAs.
    pub inbound_sas: usize,
}

impl Counters {
    /// Drops for one ESP reason.
    pub fn dropped(&self, d: EspDrop) -> u64 {
        self.drops.get(d.label()).copied().unwrap_or(0)
    }
}

enum Control {
    SyncRoutes(std_mpsc::Sender<Result<(), String>>),
}

pub(crate) struct Shared {
    cfg: DataplaneConfig,
    tables: ArcSwap<Tables>,
    writer: Mutex<()>,
    stop: AtomicBool,
    counters: Vec<Arc<WorkerCounters>>,
    rekey_tx: mpsc::UnboundedSender<RekeyRequest>,
    ike_tx: mpsc::Sender<IkeDatagram>,
    /// NAT-T sockets by outer address family ([`natt::family`]), for the daemon's
    /// transmits and keepalives; their bound addresses.
    natt: [Option<Arc<std::net::UdpSocket>>; 2],
    natt_locals: Vec<SocketAddr>,
    raw: Option<Arc<std::net::UdpSocket>>,
    raw6: Option<Arc<std::net::UdpSocket>>,
}

impl Shared {
    fn rekey(&self, child: Spi, reason: RekeyReason) {
        let _ = self.rekey_tx.send(RekeyRequest { child, reason });
    }

    /// The NAT-T socket for datagrams to `to` (the one of its address family).
    fn natt_sock_for(&self, to: &SocketAddr) -> Option<&Arc<std::net::UdpSocket>> {
        self.natt[natt::family(to)].as_ref()
    }

    fn send_natt(&self, remote: SocketAddr, bytes: &[u8]) -> Result<(), Error> {
        let sock = self.natt_sock_for(&remote).ok_or_else(|| {
            Error::Other(format!(
                "no NAT-T socket of the family of {remote} (natt_bind)"
            ))
        })?;
        sock.send_to(bytes, remote)?;
        Ok(())
    }
}

/// The running data plane.
pub struct DataplaneHandle {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    control: std_mpsc::Sender<Control>,
    ike_rx: Option<mpsc::Receiver<IkeDatagram>>,
    rekey_rx: Option<mpsc::UnboundedReceiver<RekeyRequest>>,
    tun_name: String,
}

/// Entry point.
pub struct Dataplane;

impl Dataplane {
    /// Creates the TUN device and sockets and starts the workers. Network resources are
    /// created in the calling thread's network namespace.
    pub fn start(cfg: DataplaneConfig) -> Result<DataplaneHandle, Error> {
        let queues = if cfg.queues == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            cfg.queues
        }
        .clamp(1, 64);

        let tun = tun_rs::DeviceBuilder::new()
            .name(&cfg.tun_name)
            .mtu(cfg.mtu)
            .offload(cfg.offload)
            .multi_queue(queues > 1)
            .enable(false)
            .build_sync()
            .map_err(|e| Error::Other(format!("cannot create TUN {}: {e}", cfg.tun_name)))?;
        let tun_name = tun.name().unwrap_or_else(|_| cfg.tun_name.clone());
        no_link_local(&tun_name);
        tun.enabled(true)?;
        if cfg.offload && cfg.udp_gso {
            // A TSO super-packet from the TUN whose sealed segments fit one UDP GSO send.
            let size = worker::tso_max_size(cfg.mtu);
            if let Err(e) = ip_link_set(&tun_name, "gso_max_size", &size.to_string()) {
                tracing::warn!(
                    "cannot cap the TUN's TSO size (one GSO send per super-packet): {e}"
                );
            }
        }
        let mut tuns = vec![tun];
        for _ in 1..queues {
            let q = tuns[0].try_clone()?;
            tuns.push(q);
        }
        for t in &tuns {
            t.set_nonblocking(true)?;
        }

        // NAT-T: `queues` SO_REUSEPORT sockets per address family, socks[q][family].
        let socks = natt::bind_sockets(&cfg.natt_bind, queues)?;
        let natt_locals = natt::locals(&socks[0]);
        let all_socks = || socks.iter().flatten().flatten();
        // Plain ESP, one raw socket per family (an IPv6 raw socket delivers the ESP
        // header first, an IPv4 one the IP header first).
        let raw_socket = |v6: bool| {
            if !cfg.raw_esp {
                return None;
            }
            match sys::raw_esp_socket(v6, 200) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    let fam = if v6 { "IPv6" } else { "IPv4" };
                    tracing::warn!(
                        "{fam} raw ESP socket unavailable, UDP-encapsulated ESP only: {e}"
                    );
                    None
                }
            }
        };
        let raw = raw_socket(false);
        let raw6 = raw_socket(true);
        let gso = cfg.udp_gso && all_socks().all(|s| sys::probe_udp_gso(s));
        let mut gro = false;
        if cfg.udp_gso {
            for s in all_socks() {
                gro = sys::enable_udp_gro(s);
            }
        }
        tracing::info!(tun = %tun_name, queues, gso, gro, offload = cfg.offload, natt = ?natt_locals, "ESP data plane starting");

        let (rekey_tx, rekey_rx) = mpsc::unbounded_channel();
        let (ike_tx, ike_rx) = mpsc::channel(4096);
        // Per queue: encrypt, decrypt (first family); then raw, raw6, housekeeping; then
        // per queue the decrypt worker of the second family.
        let counters: Vec<Arc<WorkerCounters>> = (0..queues * 3 + 3)
            .map(|_| Arc::new(WorkerCounters::default()))
            .collect();
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            tables: ArcSwap::from_pointee(Tables::default()),
            writer: Mutex::new(()),
            stop: AtomicBool::new(false),
            counters,
            rekey_tx,
            ike_tx,
            natt: socks[0].clone(),
            natt_locals,
            raw: raw.clone(),
            raw6: raw6.clone(),
        });

        let tuns: Vec<Arc<tun_rs::SyncDevice>> = tuns.into_iter().map(Arc::new).collect();
        let mut threads = Vec::new();
        for q in 0..queues {
            let w = worker::Worker {
                shared: shared.clone(),
                tun: tuns[q].clone(),
                sock: natt::any(&socks[q])?,
                natt: socks[q].clone(),
                counters: shared.counters[q * 2].clone(),
                gso,
                icmp: icmp_worker(&cfg, queues),
                frags: fragment_table(),
                early: early_fragments(&cfg),
                scratch: Default::default(),
            };
            threads.push(spawn(format!("esp-tx{q}"), move || w.run_encrypt())?);
            // One decrypt worker per NAT-T socket (each family).
            for (i, sock) in socks[q].iter().flatten().enumerate() {
                let w = worker::Worker {
                    shared: shared.clone(),
                    tun: tuns[q].clone(),
                    sock: sock.clone(),
                    natt: [None, None],
                    counters: shared.counters[if i == 0 {
                        q * 2 + 1
                    } else {
                        queues * 2 + 3 + q
                    }]
                    .clone(),
                    gso,
                    icmp: icmp_worker(&cfg, 0),
                    frags: fragment_table(),
                    early: early_fragments(&cfg),
                    scratch: Default::default(),
                };
                let name = if i == 0 {
                    format!("esp-rx{q}")
                } else {
                    format!("esp-rx{q}-{i}")
                };
                threads.push(spawn(name, move || w.run_decrypt())?);
            }
        }
        for (i, raw) in [raw, raw6].into_iter().enumerate() {
            let Some(raw) = raw else { continue };
            let w = worker::Worker {
                shared: shared.clone(),
                tun: tuns[0].clone(),
                sock: raw,
                natt: [None, None],
                counters: shared.counters[queues * 2 + i].clone(),
                gso: false,
                icmp: icmp_worker(&cfg, 0),
                frags: fragment_table(),
                early: early_fragments(&cfg),
                scratch: Default::default(),
            };
            let v6 = i == 1;
            let name = if v6 { "esp-raw6" } else { "esp-raw" };
            threads.push(spawn(name.into(), move || w.run_raw_decrypt(v6))?);
        }
        // Housekeeping: kernel routes and NAT keepalives, from a thread in this namespace.
        let (control, control_rx) = std_mpsc::channel();
        let hk = Housekeeping {
            shared: shared.clone(),
            tun_name: tun_name.clone(),
            installed: BTreeSet::new(),
            counters: shared.counters[queues * 2 + 2].clone(),
        };
        threads.push(spawn("esp-hk".into(), move || hk.run(control_rx))?);

        Ok(DataplaneHandle {
            shared,
            threads,
            control,
            ike_rx: Some(ike_rx),
            rekey_rx: Some(rekey_rx),
            tun_name,
        })
    }
}

/// An encrypt worker's share of the ICMP error budget (`queues` = 0: a worker that
/// never sends any).
fn icmp_worker(cfg: &DataplaneConfig, queues: usize) -> std::cell::RefCell<icmp::Unreachable> {
    let (rate, burst) = match queues {
        0 => (0, 1),
        q => (
            (cfg.icmp_unreachable_rate as u64).div_ceil(q as u64),
            (cfg.icmp_unreachable_burst as u64).div_ceil(q as u64),
        ),
    };
    let sources = icmp::Sources::from_list(&cfg.icmp_source);
    std::cell::RefCell::new(icmp::Unreachable::new(rate, burst, sources))
}

/// A worker's table of initial-fragment verdicts (RFC 4301 7.4), its hash keyed with
/// a random seed so that colliding fragment keys cannot be chosen from outside.
fn fragment_table() -> std::cell::RefCell<ike::esp::FragmentTable> {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new().hash_one(0u64);
    std::cell::RefCell::new(ike::esp::FragmentTable::new(ike::esp::FRAGMENT_SLOTS, seed))
}

/// A worker's hold for non-initial fragments that arrive before their initial fragment
/// (RFC 4301 7.4): [`ike::esp::EARLY_FRAGMENT_SLOTS`] slots of the longest inner packet,
/// for [`ike::esp::EARLY_FRAGMENT_LIFETIME`].
fn early_fragments(cfg: &DataplaneConfig) -> std::cell::RefCell<ike::esp::EarlyFragments> {
    std::cell::RefCell::new(ike::esp::EarlyFragments::new(
        ike::esp::EARLY_FRAGMENT_SLOTS,
        worker::early_slot_len(cfg),
    ))
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, Error> {
    Ok(std::thread::Builder::new().name(name).spawn(f)?)
}

impl DataplaneHandle {
    /// The TUN device's name.
    pub fn tun_name(&self) -> &str {
        &self.tun_name
    }

    /// The NAT-T sockets' bound addresses (IPv4 first).
    pub fn natt_locals(&self) -> &[SocketAddr] {
        &self.shared.natt_locals
    }

    /// IKE datagrams received on the NAT-T sockets (once; `None` afterwards).
    pub fn take_ike_datagrams(&mut self) -> Option<mpsc::Receiver<IkeDatagram>> {
        self.ike_rx.take()
    }

    /// Rekey requests from lifetimes and sequence numbers (once; `None` afterwards).
    pub fn take_rekey_requests(&mut self) -> Option<mpsc::UnboundedReceiver<RekeyRequest>> {
        self.rekey_rx.take()
    }

    /// Sends a datagram from the NAT-T socket of `remote`'s address family (the daemon's
    /// IKE transmits).
    pub fn send_natt(&self, remote: SocketAddr, bytes: &[u8]) -> Result<(), Error> {
        self.shared.send_natt(remote, bytes)
    }

    /// [`send_natt`](Self::send_natt) apart from the handle, which the daemon then holds
    /// as an [`EspBackend`] (NAT-T sockets are not part of that seam, see [`backend`]).
    pub fn natt_sender(
        &self,
    ) -> impl Fn(SocketAddr, &[u8]) -> Result<(), Error> + Send + Sync + 'static {
        let shared = self.shared.clone();
        move |remote, bytes| shared.send_natt(remote, bytes)
    }

    fn entries(&self, c: &ChildSa) -> Result<(Arc<InboundEntry>, Arc<OutboundEntry>), Error> {
        let cfg = &self.shared.cfg;
        Ok(table::entries(
            c,
            cfg.lifetimes(),
            cfg.replay_window,
            cfg.outer_mtu,
        )?)
    }

    fn update(&self, f: impl FnOnce(&mut Tables)) -> Result<(), Error> {
        {
            let _w = self
                .shared
                .writer
                .lock()
                .map_err(|_| Error::Other("SA table writer poisoned".into()))?;
            let mut t = Tables::clone(&self.shared.tables.load());
            f(&mut t);
            self.shared.tables.store(Arc::new(t));
        }
        self.sync_routes()
    }

    fn sync_routes(&self) -> Result<(), Error> {
        if !self.shared.cfg.manage_routes {
            return Ok(());
        }
        let (tx, rx) = std_mpsc::channel();
        self.control
            .send(Control::SyncRoutes(tx))
            .map_err(|_| Error::Other("data plane housekeeping stopped".into()))?;
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Other(e)),
            Err(_) => Err(Error::Other("route update timed out".into())),
        }
    }

    /// Installs a CHILD SA pair: its inbound SPI is accepted and its remote traffic
    /// selectors are routed into it.
    pub fn install(&self, c: &ChildSa) -> Result<(), Error> {
        let (inb, out) = self.entries(c)?;
        self.update(|t| t.install(inb, out))
    }

    /// A rekeyed CHILD SA (RFC 7296 2.8): the new outbound SA takes over every route of
    /// the old one at once; the old inbound SA keeps accepting until [`remove`](Self::remove).
    pub fn rekeyed(&self, old_inbound: Spi, new: &ChildSa) -> Result<(), Error> {
        self.rekey(old_inbound, new, Handover::Now)
    }

    /// A CHILD SA rekey we answered (RFC 7296 2.8): the new inbound SA accepts at once,
    /// but the old outbound SA keeps carrying traffic until the initiator deletes the old
    /// pair ([`remove`](Self::remove)): the initiator installs its new inbound SA only
    /// when our response arrives, and packets on the new SA before that would be dropped
    /// there for an unknown SPI.
    pub fn rekeyed_deferred(&self, old_inbound: Spi, new: &ChildSa) -> Result<(), Error> {
        self.rekey(old_inbound, new, Handover::AtDelete)
    }

    /// A rekeyed CHILD SA, the hand-over of traffic as `handover` says ([`Handover`]:
    /// now, when the old pair is deleted, or never for the redundant SA of a
    /// simultaneous rekey, RFC 7296 2.8.1).
    pub fn rekey(&self, old_inbound: Spi, new: &ChildSa, handover: Handover) -> Result<(), Error> {
        let (inb, out) = self.entries(new)?;
        self.update(|t| t.rekeyed(old_inbound, inb, out, handover))
    }

    /// Deletes a CHILD SA pair (RFC 7296 1.4.1); a new outbound SA waiting for it (see
    /// [`rekeyed_deferred`](Self::rekeyed_deferred)) takes over its routes. The inbound SA
    /// accepts packets already in flight for `rekey_linger_ms` more.
    pub fn remove(&self, inbound: Spi, outbound: Spi) -> Result<(), Error> {
        let until = std::time::Instant::now() + self.shared.cfg.rekey_linger();
        self.update(|t| t.remove(inbound, outbound, until))
    }

    /// Usage of an installed CHILD SA, by its inbound SPI: (inbound bytes, packets),
    /// (outbound bytes, packets).
    pub fn usage(&self, child: Spi) -> Option<((u64, u64), (u64, u64))> {
        let t = self.shared.tables.load();
        let inb = t.inbound.get(&child.0)?;
        let out = t.outbound_of_child(child)?;
        Some((inb.sa.usage(), out.sa.usage()))
    }

    pub fn counters(&self) -> Counters {
        let mut c = Counters {
            inbound_sas: self.shared.tables.load().inbound.len(),
            ..Default::default()
        };
        let mut drops = [0u64; DROP_SLOTS];
        for w in &self.shared.counters {
            c.tx_packets += w.tx_packets.load(Ordering::Relaxed);
            c.tx_bytes += w.tx_bytes.load(Ordering::Relaxed);
            c.rx_packets += w.rx_packets.load(Ordering::Relaxed);
            c.rx_bytes += w.rx_bytes.load(Ordering::Relaxed);
            c.ike_datagrams += w.ike_datagrams.load(Ordering::Relaxed);
            c.keepalives += w.keepalives.load(Ordering::Relaxed);
            c.tx_sends += w.tx_sends.load(Ordering::Relaxed);
            c.rx_reads += w.rx_reads.load(Ordering::Relaxed);
            c.tun_reads += w.tun_reads.load(Ordering::Relaxed);
            c.tun_writes += w.tun_writes.load(Ordering::Relaxed);
            c.icmp_unreachable += w.icmp_unreachable.load(Ordering::Relaxed);
            c.icmp_too_big += w.icmp_too_big.load(Ordering::Relaxed);
            for (i, d) in w.drops.iter().enumerate() {
                drops[i] += d.load(Ordering::Relaxed);
            }
        }
        for (i, d) in EspDrop::ALL.iter().enumerate() {
            c.drops.insert(d.label(), drops[i]);
        }
        c.drops.insert("io", drops[DROP_IO]);
        c.drops.insert("ike_queue_full", drops[DROP_IKE_QUEUE_FULL]);
        c
    }

    /// Stops the workers and removes the TUN device.
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for DataplaneHandle {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

struct Housekeeping {
    shared: Arc<Shared>,
    tun_name: String,
    installed: BTreeSet<ipnet::IpNet>,
    counters: Arc<WorkerCounters>,
}

impl Housekeeping {
    fn run(mut self, rx: std_mpsc::Receiver<Control>) {
        let ka = self.shared.cfg.nat_keepalive_secs;
        let mut last_ka = std::time::Instant::now();
        while !self.shared.stop.load(Ordering::Relaxed) {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Control::SyncRoutes(done)) => {
                    let r = self.sync_routes();
                    let _ = done.send(r);
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
            self.end_linger();
            if ka > 0 && last_ka.elapsed() >= Duration::from_secs(ka) {
                last_ka = std::time::Instant::now();
                let t = self.shared.tables.load();
                for (_, remote) in &t.keepalive {
                    // RFC 3948 2.3: a single octet 0xFF, from the socket of its family.
                    let sent = self
                        .shared
                        .natt_sock_for(remote)
                        .map(|s| s.send_to(&[0xff], remote));
                    if !matches!(sent, Some(Ok(_))) {
                        self.counters.count_drop(DROP_IO);
                    }
                }
            }
        }
    }

    /// Removes the deleted inbound SAs whose linger time is over.
    fn end_linger(&self) {
        let now = std::time::Instant::now();
        if !self.shared.tables.load().linger_over(now) {
            return;
        }
        let Ok(_w) = self.shared.writer.lock() else {
            return;
        };
        let mut t = Tables::clone(&self.shared.tables.load());
        t.end_linger(now);
        self.shared.tables.store(Arc::new(t));
    }

    /// Makes the kernel routes to the TUN device match the remote selectors installed.
    fn sync_routes(&mut self) -> Result<(), String> {
        let t = self.shared.tables.load();
        let mut want = BTreeSet::new();
        for ip in t.hosts.keys() {
            want.extend(table::range_to_cidrs(*ip, *ip));
        }
        for r in &t.ranges {
            want.extend(table::range_to_cidrs(r.start, r.end));
        }
        // A selector covering everything (0.0.0.0/0, ::/0) would also swallow the outer
        // ESP packets to the peer: the SA still carries it, but the default route stays.
        want.retain(|n: &ipnet::IpNet| {
            if n.prefix_len() == 0 {
                tracing::warn!(net = %n, "not routing a catch-all selector into the TUN device");
            }
            n.prefix_len() > 0
        });
        let mut err = Ok(());
        for net in want.difference(&self.installed) {
            if let Err(e) = ip_route("replace", net, &self.tun_name) {
                err = Err(e);
            }
        }
        for net in self.installed.difference(&want) {
            let _ = ip_route("del", net, &self.tun_name);
        }
        self.installed = want;
        err
    }
}

/// Keeps the kernel from giving the TUN device an IPv6 link-local address when it comes
/// up (`addr_gen_mode` 1, none): with one, it sends Router Solicitations (RFC 4861 6.3.7)
/// to ff02::2 into the device, by default for ever (`router_solicitations` -1, backing off
/// from 4 s to an hour), and the data plane, with no SA for them, dropped each as
/// `esp_no_route`. Routes into the device and the packets on them need no address of it.
/// A host or device without IPv6 has no such file: nothing to do.
fn no_link_local(dev: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{dev}/addr_gen_mode");
    match std::fs::write(&path, "1") {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(
            "cannot keep an IPv6 link-local address off {dev} ({path}: {e}): the kernel's \
             Router Solicitations into it are dropped as esp_no_route"
        ),
    }
}

fn ip_link_set(dev: &str, key: &str, value: &str) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(["link", "set", "dev", dev, key, value])
        .output()
        .map_err(|e| format!("ip link set dev {dev} {key} {value}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip link set dev {dev} {key} {value}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip_route(op: &str, net: &ipnet::IpNet, dev: &str) -> Result<(), String> {
    let fam = if matches!(net, ipnet::IpNet::V4(_)) {
        "-4"
    } else {
        "-6"
    };
    let out = std::process::Command::new("ip")
        .args([fam, "route", op, &net.to_string(), "dev", dev])
        .output()
        .map_err(|e| format!("ip route {op} {net}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip route {op} {net} dev {dev}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
