//! `Pair`: two IKE endpoints (initiator, responder) on a virtual clock and a simulated
//! network with latency, seeded loss, reordering, duplication and an optional NAT in
//! front of the initiator. Used by the ike crate's scenario tests and, through
//! `tests/util.rs`, by the headend package's tests.

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ike::config::*;
use ike::endpoint::Endpoint;
use ike::{Event, Identity, IkeSaId, SocketKind, TrafficSelector, Transmit};

pub const IKE_PORT: u16 = 500;
pub const NATT_PORT: u16 = 4500;
pub const INITIATOR_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
pub const RESPONDER_IP: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
/// The NAT's public address, when NAT is on.
pub const NAT_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
pub const PSK: &[u8] = b"correct horse battery staple";

/// A small deterministic PRNG (xorshift64*), so the harness needs no extra crates.
#[derive(Debug, Clone)]
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn seed32(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        for c in s.chunks_mut(8) {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        s
    }
}

/// One side of the pair.
pub struct Node {
    pub ep: Endpoint,
    pub ip: IpAddr,
    /// Every event polled so far, in order.
    pub events: Vec<Event>,
    /// Every datagram this node sent (after the harness saw it), for replay tests.
    pub sent: Vec<Transmit>,
}

impl Node {
    pub fn new(config: Arc<EndpointConfig>, ip: Ipv4Addr, seed: [u8; 32]) -> Self {
        Self {
            ep: Endpoint::new(config, seed),
            ip: IpAddr::V4(ip),
            events: Vec::new(),
            sent: Vec::new(),
        }
    }
    pub fn ike_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, IKE_PORT)
    }
    pub fn established(&self) -> Vec<&Event> {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::IkeSaEstablished { .. }))
            .collect()
    }
    pub fn count(&self, f: impl Fn(&Event) -> bool) -> usize {
        self.events.iter().filter(|e| f(e)).count()
    }
    pub fn deleted(&self) -> Vec<(IkeSaId, ike::DeleteReason)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::IkeSaDeleted { ike_sa, reason } => Some((*ike_sa, reason.clone())),
                _ => None,
            })
            .collect()
    }
    pub fn negotiation_failures(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::NegotiationFailed { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }
    /// Number of established IKE SAs the endpoint reports.
    pub fn live_established(&self) -> usize {
        self.ep
            .ike_sas()
            .iter()
            .filter(|s| s.state == ike::endpoint::IkeSaState::Established)
            .count()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Initiator,
    Responder,
}

struct InFlight {
    to: Side,
    socket: SocketKind,
    local: SocketAddr,
    remote: SocketAddr,
    payload: Vec<u8>,
}

/// Decides, per datagram and sender, whether the network loses it.
pub type DropFilter = Box<dyn FnMut(Side, &Transmit) -> bool>;

/// Two endpoints and the network between them.
pub struct Pair {
    pub start: Instant,
    pub now: Instant,
    pub initiator: Node,
    pub responder: Node,
    /// One-way delay.
    pub latency: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Random extra delay up to this, so datagrams can overtake each other.
    pub reorder: Duration,
    /// Put a NAT (source rewriting to `NAT_IP`, port mapping per source) in front of the
    /// initiator.
    pub nat: bool,
    /// Drop datagrams from this side (a peer that vanished).
    pub blackhole: Option<Side>,
    /// Datagrams delivered / lost, for assertions.
    pub delivered: u64,
    pub lost: u64,
    /// Datagrams to addresses outside the pair (answers to injected traffic).
    pub unroutable: u64,
    /// How far ahead `drive` looks for timers when the network is quiet.
    pub horizon: Duration,
    /// Longest virtual time one `drive` call runs.
    pub max_drive: Duration,
    /// Drop the datagrams for which this returns true (targeted loss).
    pub drop_filter: Option<DropFilter>,
    timed: Option<(Side, Duration)>,
    rng: TestRng,
    seq: u64,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    flights: HashMap<u64, InFlight>,
    nat_map: HashMap<SocketAddr, u16>,
    nat_base: u16,
    nat_rev: HashMap<u16, SocketAddr>,
}

impl Pair {
    pub fn new(icfg: Arc<EndpointConfig>, rcfg: Arc<EndpointConfig>, seed: u64) -> Self {
        let mut rng = TestRng::new(seed);
        let start = Instant::now();
        Self {
            start,
            now: start,
            initiator: Node::new(icfg, INITIATOR_IP, rng.seed32()),
            responder: Node::new(rcfg, RESPONDER_IP, rng.seed32()),
            latency: Duration::from_millis(10),
            loss: 0.0,
            duplicate: 0.0,
            reorder: Duration::ZERO,
            nat: false,
            blackhole: None,
            delivered: 0,
            lost: 0,
            unroutable: 0,
            horizon: Duration::from_secs(20),
            max_drive: Duration::from_secs(120),
            timed: None,
            drop_filter: None,
            rng,
            seq: 0,
            queue: BinaryHeap::new(),
            flights: HashMap::new(),
            nat_map: HashMap::new(),
            nat_base: 40000,
            nat_rev: HashMap::new(),
        }
    }

    pub fn node(&mut self, side: Side) -> &mut Node {
        match side {
            Side::Initiator => &mut self.initiator,
            Side::Responder => &mut self.responder,
        }
    }

    /// Start an IKE SA from the initiator to the responder's IKE port.
    pub fn connect(&mut self, cfg: Arc<InitiatorConfig>) -> IkeSaId {
        let local = self.initiator.ike_addr();
        let remote = self.responder.ike_addr();
        self.initiator
            .ep
            .initiate(self.now, local, remote, cfg)
            .expect("initiate")
    }

    /// Same, from a given initiator source port (many tunnels from one node).
    pub fn connect_from(&mut self, port: u16, cfg: Arc<InitiatorConfig>) -> IkeSaId {
        let local = SocketAddr::new(self.initiator.ip, port);
        let remote = self.responder.ike_addr();
        self.initiator
            .ep
            .initiate(self.now, local, remote, cfg)
            .expect("initiate")
    }

    /// Move every queued transmit into the network and every event into `events`.
    pub fn collect(&mut self) {
        for side in [Side::Initiator, Side::Responder] {
            loop {
                let node = self.node(side);
                let Some(t) = node.ep.poll_transmit() else {
                    break;
                };
                node.sent.push(t.clone());
                self.send(side, t);
            }
            let node = self.node(side);
            while let Some(e) = node.ep.poll() {
                node.events.push(e);
            }
        }
    }

    /// Put one datagram from `from` on the wire (loss, duplication, NAT applied).
    pub fn send(&mut self, from: Side, t: Transmit) {
        if let Some(f) = self.drop_filter.as_mut() {
            if f(from, &t) {
                self.lost += 1;
                return;
            }
        }
        if self.blackhole == Some(from) {
            self.lost += 1;
            return;
        }
        if self.loss > 0.0 && self.rng.unit() < self.loss {
            self.lost += 1;
            return;
        }
        let copies = if self.duplicate > 0.0 && self.rng.unit() < self.duplicate {
            2
        } else {
            1
        };
        let (to, src, dst) = match from {
            Side::Initiator => {
                let src = if self.nat {
                    self.nat_out(t.local)
                } else {
                    t.local
                };
                (Side::Responder, src, t.remote)
            }
            Side::Responder => {
                let known = t.remote.ip() == self.initiator.ip
                    || (self.nat && t.remote.ip() == IpAddr::V4(NAT_IP));
                if !known {
                    // An answer to an injected datagram: nobody to deliver it to.
                    self.unroutable += 1;
                    return;
                }
                let dst = if self.nat && t.remote.ip() == IpAddr::V4(NAT_IP) {
                    match self.nat_rev.get(&t.remote.port()) {
                        Some(a) => *a,
                        None => {
                            self.lost += 1;
                            return;
                        }
                    }
                } else {
                    t.remote
                };
                (Side::Initiator, t.local, dst)
            }
        };
        let socket = if dst.port() == NATT_PORT {
            SocketKind::NatT
        } else {
            SocketKind::Ike
        };
        // A datagram to the NAT-T port without the marker would be ESP; IKE on port 500
        // never carries one. The engine must have picked the right socket.
        assert_eq!(
            socket, t.socket,
            "datagram to {dst} left from the wrong socket"
        );
        for _ in 0..copies {
            let mut delay = self.latency;
            if !self.reorder.is_zero() {
                delay += self.reorder.mul_f64(self.rng.unit());
            }
            self.seq += 1;
            self.queue.push(Reverse((self.now + delay, self.seq)));
            self.flights.insert(
                self.seq,
                InFlight {
                    to,
                    socket,
                    local: dst,
                    remote: src,
                    payload: t.payload.clone(),
                },
            );
        }
    }

    /// Forget every NAT mapping; new ones start at `first_port` (a NAT rebinding).
    pub fn reset_nat(&mut self, first_port: u16) {
        self.nat_map.clear();
        self.nat_rev.clear();
        self.nat_base = first_port;
    }

    fn nat_out(&mut self, inside: SocketAddr) -> SocketAddr {
        let next = self.nat_base + self.nat_map.len() as u16;
        let port = *self.nat_map.entry(inside).or_insert(next);
        self.nat_rev.insert(port, inside);
        SocketAddr::new(IpAddr::V4(NAT_IP), port)
    }

    /// Inject a raw datagram to the responder as if sent from `remote`.
    pub fn inject_to_responder(&mut self, socket: SocketKind, remote: SocketAddr, payload: &[u8]) {
        let local = SocketAddr::new(
            self.responder.ip,
            if socket == SocketKind::NatT {
                NATT_PORT
            } else {
                IKE_PORT
            },
        );
        self.responder
            .ep
            .handle(self.now, socket, local, remote, payload);
        self.collect();
    }

    fn next_timer(&self) -> Option<Instant> {
        match (
            self.initiator.ep.poll_timeout(),
            self.responder.ep.poll_timeout(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One step: deliver the next datagram or fire the next timer, whichever is first,
    /// but nothing later than `limit`. Returns false when nothing is due before `limit`.
    pub fn step(&mut self, limit: Instant) -> bool {
        self.collect();
        let next_pkt = self.queue.peek().map(|Reverse((t, _))| *t);
        let next_timer = self.next_timer();
        let pkt_first = match (next_pkt, next_timer) {
            (Some(p), Some(t)) => p <= t,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return false,
        };
        if pkt_first {
            let Some(Reverse((t, seq))) = self.queue.peek().copied() else {
                return false;
            };
            if t > limit {
                return false;
            }
            self.queue.pop();
            self.now = self.now.max(t);
            if let Some(f) = self.flights.remove(&seq) {
                self.delivered += 1;
                let now = self.now;
                let timed = self.timed.filter(|(s, _)| *s == f.to).is_some();
                let t0 = std::time::Instant::now();
                let node = self.node(f.to);
                node.ep.handle(now, f.socket, f.local, f.remote, &f.payload);
                if timed {
                    if let Some((_, d)) = self.timed.as_mut() {
                        *d += t0.elapsed();
                    }
                }
            }
        } else {
            let Some(t) = next_timer else { return false };
            if t > limit {
                return false;
            }
            self.now = self.now.max(t);
            let now = self.now;
            self.initiator.ep.handle_timeout(now);
            self.responder.ep.handle_timeout(now);
        }
        self.collect();
        true
    }

    /// Run until the network is empty and no timer is due within `horizon`, or until
    /// `max_drive` of virtual time has passed (periodic timers such as DPD never go quiet).
    pub fn drive(&mut self) {
        let end = self.now + self.max_drive;
        for _ in 0..10_000_000 {
            self.collect();
            let limit = (self.now + self.horizon).min(end);
            if self.queue.is_empty() && self.next_timer().is_none_or(|t| t > limit) {
                return;
            }
            if !self.step(end) {
                return;
            }
        }
        panic!("Pair::drive did not settle");
    }

    /// Like [`Pair::drive`], returning the wall-clock time spent inside `side`'s
    /// `handle` calls (for cost measurements).
    pub fn drive_timed(&mut self, side: Side) -> Duration {
        self.timed = Some((side, Duration::ZERO));
        self.drive();
        self.timed.take().map_or(Duration::ZERO, |(_, d)| d)
    }

    /// Run everything due within `d` and leave the clock at `now + d`.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..10_000_000 {
            if !self.step(end) {
                break;
            }
        }
        self.now = self.now.max(end);
        self.collect();
    }
}

// ---------------------------------------------------------------------------------------
// Configuration helpers
// ---------------------------------------------------------------------------------------

/// The four suites of issue 2.
pub fn suite(name: &str) -> (IkeProposal, EspProposal) {
    let (encr, prf, integ, dh) = match name {
        "aes256gcm16-prfsha256-x25519" => (
            EncrAlg::AesGcm16(256),
            PrfAlg::HmacSha256,
            vec![],
            DhGroup::Curve25519,
        ),
        "aes128-sha256-ecp256" => (
            EncrAlg::AesCbc(128),
            PrfAlg::HmacSha256,
            vec![IntegAlg::HmacSha256_128],
            DhGroup::Ecp256,
        ),
        "aes256-sha384-modp2048" => (
            EncrAlg::AesCbc(256),
            PrfAlg::HmacSha384,
            vec![IntegAlg::HmacSha384_192],
            DhGroup::Modp2048,
        ),
        "chacha20poly1305-prfsha512-x25519" => (
            EncrAlg::ChaCha20Poly1305,
            PrfAlg::HmacSha512,
            vec![],
            DhGroup::Curve25519,
        ),
        other => panic!("unknown suite {other}"),
    };
    (
        IkeProposal {
            encr: vec![encr],
            prf: vec![prf],
            integ: integ.clone(),
            dh: vec![dh],
        },
        EspProposal {
            encr: vec![encr],
            integ,
            dh: vec![],
            esn: false,
        },
    )
}

pub fn fqdn(s: &str) -> Identity {
    Identity::Fqdn(s.into())
}

pub fn ts_any4() -> TrafficSelector {
    TrafficSelector {
        start: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        end: IpAddr::V4(Ipv4Addr::BROADCAST),
        protocol: 0,
        start_port: 0,
        end_port: 65535,
    }
}

pub fn ts_net(start: [u8; 4], end: [u8; 4]) -> TrafficSelector {
    TrafficSelector {
        start: IpAddr::from(start),
        end: IpAddr::from(end),
        protocol: 0,
        start_port: 0,
        end_port: 65535,
    }
}

pub fn psk_store(default: Option<&[u8]>, ids: &[(&str, &[u8])]) -> PskStore {
    PskStore {
        by_identity: ids.iter().map(|(i, k)| (fqdn(i), k.to_vec())).collect(),
        default: default.map(<[u8]>::to_vec),
    }
}

/// A quiet endpoint config: no DPD, long lifetimes, fast retransmits.
pub fn base_config(responder: Option<ResponderConfig>) -> EndpointConfig {
    EndpointConfig {
        local_natt_port: NATT_PORT,
        responder,
        lifetimes: Lifetimes {
            ike_rekey: Duration::from_secs(24 * 3600),
            child_rekey: Duration::from_secs(12 * 3600),
            rekey_jitter: Duration::from_secs(60),
            dpd_delay: None,
        },
        retransmit: Retransmit {
            initial: Duration::from_millis(500),
            tries: 4,
        },
        limits: Limits::default(),
    }
}

pub fn responder_config(suites: &[&str]) -> ResponderConfig {
    let (ike, esp): (Vec<_>, Vec<_>) = suites.iter().map(|s| suite(s)).unzip();
    ResponderConfig {
        local_id: fqdn("headend.example"),
        auth: AuthConfig::Psk(psk_store(Some(PSK), &[])),
        ike_proposals: ike,
        esp_proposals: esp,
        local_ts: vec![ts_net([10, 200, 0, 0], [10, 200, 255, 255])],
        pool: PoolConfig {
            v4: Some("100.64.0.0/24".parse().expect("pool")),
            v6: Some("fd00:64::/120".parse().expect("pool")),
            dns: vec!["10.200.0.53".parse().expect("dns")],
        },
    }
}

pub fn initiator_config(suite_name: &str, id: &str, psk: &[u8]) -> InitiatorConfig {
    let (ike, esp) = suite(suite_name);
    InitiatorConfig {
        local_id: fqdn(id),
        remote_id: Some(fqdn("headend.example")),
        auth: AuthConfig::Psk(psk_store(Some(psk), &[])),
        ike_proposals: vec![ike],
        esp_proposals: vec![esp],
        request_vip4: true,
        request_vip6: false,
        local_ts: vec![],
        remote_ts: vec![ts_net([10, 200, 0, 0], [10, 200, 255, 255])],
        initial_contact: false,
        remote_natt_port: NATT_PORT,
    }
}

/// A pair with one responder suite list and default settings.
pub fn pair(suites: &[&str], seed: u64) -> Pair {
    let r = Arc::new(base_config(Some(responder_config(suites))));
    let i = Arc::new(base_config(None));
    Pair::new(i, r, seed)
}
