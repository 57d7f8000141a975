//! The sans-IO IKEv2 endpoint (RFC 7296): datagrams, time and randomness in; datagrams,
//! deadlines and events out, in the manner of quinn-proto.
//!
//! One [`Endpoint`] holds any number of IKE SAs in either role. IKE SAs are found by our
//! own SPI in a hash map (RFC 7296 2.6: the SPI is chosen so that lookup is cheap); a
//! responder's half-open SAs are also indexed by (peer address, SPIi) to recognise a
//! retransmitted IKE_SA_INIT. Timers live in a min-heap with lazy invalidation.
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use zeroize::Zeroizing;

use crate::config::{AuthConfig, EndpointConfig, EspProposal, InitiatorConfig};
use crate::crypto::{
    child_sa_keys, ike_sa_keys, nat_detection_hash, rekeyed_ike_sa_keys, signed_octets,
    CookieSecret, EspKeyMaterial, IkeSuite, KeyExchange,
};
use crate::error::Error;
use crate::event::{
    ChildSa, DeleteReason, EspKeys, Event, Identity, IkeSaId, SocketKind, Spi, TrafficSelector,
    Transmit,
};
use crate::message::{
    decode_payloads, encode_payloads, encode_sk_prefix, encode_skf_prefix, id_payload_body,
    CfgAttribute, CfgType, DecodeLimits, Delete, ExchangeType, Header, Message, Notify, NotifyType,
    Payload, ProtocolId, GENERIC_HEADER_LEN, HEADER_LEN, SKF_HEADER_LEN,
};
use crate::pool::Pool;
use crate::sa::neg::{self, EspSuite};
use crate::sa::{
    auth_certreq, auth_payloads, init_payloads, verify_auth, Cached, Child, ChildState, FirstChild,
    IkeSa, LocalReq, Pending, PendingKind, Reassembly, SaKeys, MAX_FRAGMENTS,
};
pub use crate::sa::{ChildSaInfo, IkeSaInfo, IkeSaState};

/// Length of our nonces (RFC 7296 2.10: at least half the PRF key size, at least 16).
const NONCE_LEN: usize = 32;
/// RFC 3948 2.2 non-ESP marker.
const NON_ESP_MARKER: [u8; 4] = [0; 4];
/// Unprotected INVALID_IKE_SPI notifications sent per second at most (2.21.4).
const INVALID_SPI_PER_SEC: u32 = 100;
/// Failed-authentication responses kept for replay at most.
const MAX_TOMBSTONES: usize = 4096;
/// How often the cookie secret rotates (RFC 7296 2.6).
const COOKIE_ROTATE: Duration = Duration::from_secs(120);

/// Message and SA counters. `dropped` is keyed by [`Error::label`].
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Datagrams handed to [`Endpoint::handle`].
    pub received: u64,
    /// Datagrams queued for sending.
    pub sent: u64,
    pub dropped: BTreeMap<&'static str, u64>,
    /// IKE SAs that completed IKE_AUTH.
    pub established: u64,
    /// IKE SA negotiations that failed (either role).
    pub failed: u64,
    /// The same failures by reason: an [`Error::label`], a peer's error notify
    /// (`peer_<notify>`), or `no_response`.
    pub failed_by: BTreeMap<&'static str, u64>,
    /// Our requests sent again after a timeout (2.1).
    pub retransmitted: u64,
    /// Cached responses replayed for retransmitted requests (2.1).
    pub replayed: u64,
    /// COOKIE challenges sent (2.6).
    pub cookies_sent: u64,
    /// Half-open SAs dropped after `limits.half_open_timeout`.
    pub half_open_expired: u64,
    /// CREATE_CHILD_SA requests answered with TEMPORARY_FAILURE (2.25).
    pub temporary_failures: u64,
    /// Simultaneous IKE SA rekeys resolved by the nonce rule of 2.8.1.
    pub ike_rekey_collisions: u64,
    /// Simultaneous CHILD SA rekeys (2.8.1) resolved when our exchange completed.
    pub child_rekey_collisions: u64,
}

impl Counters {
    fn count_failure(&mut self, reason: &'static str) {
        self.failed += 1;
        *self.failed_by.entry(reason).or_insert(0) += 1;
    }

    /// How many datagrams were dropped for `label`.
    pub fn dropped(&self, label: &str) -> u64 {
        self.dropped.get(label).copied().unwrap_or(0)
    }
}

/// An IKEv2 endpoint: any number of IKE SAs in either role.
pub struct Endpoint {
    config: Arc<EndpointConfig>,
    limits: DecodeLimits,
    rng: ChaCha20Rng,
    sas: HashMap<IkeSaId, IkeSa>,
    /// Our IKE SPI -> SA.
    by_spi: HashMap<u64, IkeSaId>,
    /// Responder: (peer address, SPIi) of half-open SAs, for IKE_SA_INIT retransmissions.
    init_index: HashMap<(SocketAddr, u64), IkeSaId>,
    /// Our inbound ESP SPI -> IKE SA.
    child_index: HashMap<Spi, IkeSaId>,
    /// Established IKE SAs per remote identity (INITIAL_CONTACT, 2.4).
    by_identity: HashMap<Identity, Vec<IkeSaId>>,
    timers: BinaryHeap<Reverse<(Instant, IkeSaId)>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    counters: Counters,
    pool: Pool,
    cookie: CookieSecret,
    cookie_rotate_at: Option<Instant>,
    half_open: usize,
    next_id: u64,
    invalid_spi_window: (Option<Instant>, u32),
    /// Last responses of SAs that failed IKE_AUTH, by our SPI, and their expiry order.
    tombstones: HashMap<u64, ([u8; 32], Vec<Vec<u8>>)>,
    tombstone_order: VecDeque<(Instant, u64)>,
    /// Wall-clock time from the driver, for certificate validity (issue 7).
    wall_clock: Option<SystemTime>,
}

/// What a response handler decided about the SA.
enum After {
    Keep,
    Remove(Option<DeleteReason>),
}

impl Endpoint {
    /// A new endpoint. `seed` seeds the engine's ChaCha20 RNG; each IKE SA gets its own
    /// RNG derived from it.
    pub fn new(config: Arc<EndpointConfig>, seed: [u8; 32]) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let cookie = CookieSecret::new(&mut rng);
        let pool = Pool::new(
            config
                .responder
                .as_ref()
                .map(|r| &r.pool)
                .unwrap_or(&Default::default()),
        );
        let limits = DecodeLimits {
            max_message: config.limits.max_message,
            ..DecodeLimits::default()
        };
        Self {
            config,
            limits,
            rng,
            sas: HashMap::new(),
            by_spi: HashMap::new(),
            init_index: HashMap::new(),
            child_index: HashMap::new(),
            by_identity: HashMap::new(),
            timers: BinaryHeap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            pool,
            cookie,
            cookie_rotate_at: None,
            half_open: 0,
            next_id: 1,
            invalid_spi_window: (None, 0),
            tombstones: HashMap::new(),
            tombstone_order: VecDeque::new(),
            wall_clock: None,
        }
    }

    /// The current wall-clock time, against which certificate validity is checked
    /// (RFC 5280 6.1.3). The driver calls this before feeding datagrams; the engine reads
    /// no clock of its own. Certificate peers are refused until it has been set.
    pub fn set_wall_clock(&mut self, now: SystemTime) {
        self.wall_clock = Some(now);
    }

    /// Feed one received datagram. `local` is the address it was received on (the
    /// driver must pass the real local address, not a wildcard, for NAT detection).
    pub fn handle(
        &mut self,
        now: Instant,
        socket: SocketKind,
        local: SocketAddr,
        remote: SocketAddr,
        datagram: &[u8],
    ) {
        self.counters.received += 1;
        if let Err(e) = self.handle_datagram(now, socket, local, remote, datagram) {
            self.count_drop(remote, &e);
        }
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let sa = self.timers.peek().map(|Reverse((t, _))| *t);
        match (sa, self.cookie_rotate_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Run every timer due at `now`: retransmissions (2.1), half-open expiry, DPD (2.4),
    /// rekeying (2.8), cookie secret rotation (2.6).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.cookie_rotate_at.is_some_and(|t| t <= now) {
            self.cookie.rotate(&mut self.rng);
            self.cookie_rotate_at = if self.half_open > 0 {
                Some(now + COOKIE_ROTATE)
            } else {
                None
            };
        }
        while let Some(Reverse((t, id))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(mut sa) = self.sas.remove(&id) else {
                continue;
            };
            if sa.deadline != Some(t) {
                self.sas.insert(id, sa);
                continue;
            }
            sa.deadline = None;
            let after = self.sa_timeout(now, &mut sa);
            self.finish(now, sa, after);
        }
    }

    /// Next event.
    pub fn poll(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Start an IKE SA as initiator (RFC 7296 1.2): sends IKE_SA_INIT.
    pub fn initiate(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        cfg: Arc<InitiatorConfig>,
    ) -> Result<IkeSaId, Error> {
        let group = cfg
            .ike_proposals
            .iter()
            .flat_map(|p| p.dh.first())
            .next()
            .copied()
            .ok_or(Error::NoProposalChosen)?;
        let id = self.alloc_id();
        let mut rng = self.derive_rng();
        let spi_i = self.new_ike_spi();
        let ke = KeyExchange::generate(group, &mut rng)?;
        let ni = random_nonce(&mut rng);
        let mut sa = new_sa(id, true, spi_i, 0, SocketKind::Ike, local, remote, rng, now);
        sa.icfg = Some(cfg.clone());
        sa.ni = ni;
        sa.ke = Some(ke);
        sa.local_id = Some(cfg.local_id.clone());
        sa.state = IkeSaState::InitSent;
        self.by_spi.insert(spi_i, id);
        self.send_init_request(now, &mut sa)?;
        self.finish(now, sa, After::Keep);
        Ok(id)
    }

    /// Delete an IKE SA and its CHILD SAs (RFC 7296 1.4.1): sends a Delete; the SA goes
    /// away when the peer answers or the request times out.
    pub fn delete_ike_sa(&mut self, now: Instant, id: IkeSaId) -> Result<(), Error> {
        let mut sa = self.sas.remove(&id).ok_or(Error::NoSuchSa)?;
        if sa.keys.is_none() || !matches!(sa.state, IkeSaState::Established | IkeSaState::AuthSent)
        {
            // Nothing to protect a Delete with: drop locally.
            self.finish(now, sa, After::Remove(Some(DeleteReason::LocalDelete)));
            return Ok(());
        }
        sa.delete_reason = Some(DeleteReason::LocalDelete);
        sa.queue.retain(|r| *r != LocalReq::DeleteIke);
        sa.queue.push_front(LocalReq::DeleteIke);
        self.kick(now, &mut sa);
        self.finish(now, sa, After::Keep);
        Ok(())
    }

    /// Rekey the CHILD SA whose inbound SPI is `inbound` (RFC 7296 2.8), e.g. when the
    /// data plane reaches a byte or packet soft limit.
    pub fn rekey_child_sa(&mut self, now: Instant, inbound: Spi) -> Result<(), Error> {
        self.queue_child_request(now, inbound, LocalReq::RekeyChild(inbound), |sa| {
            sa.child_by_inbound(inbound)
                .is_some_and(|c| c.state == ChildState::Installed)
        })
    }

    /// Delete one CHILD SA (RFC 7296 1.4.1), e.g. at an ESP hard lifetime; the IKE SA
    /// stays. `ChildSaDeleted` follows when the peer has answered.
    pub fn delete_child_sa(&mut self, now: Instant, inbound: Spi) -> Result<(), Error> {
        self.queue_child_request(now, inbound, LocalReq::DeleteChild(vec![inbound]), |sa| {
            sa.children.iter().any(|c| c.sa.inbound.spi == inbound)
        })
    }

    /// Queue a local request on the IKE SA owning CHILD SA `inbound` when `applies` holds
    /// (once: an identical request already queued is not repeated), then start it if the
    /// exchange window is free.
    fn queue_child_request(
        &mut self,
        now: Instant,
        inbound: Spi,
        req: LocalReq,
        applies: impl FnOnce(&mut IkeSa) -> bool,
    ) -> Result<(), Error> {
        let id = *self.child_index.get(&inbound).ok_or(Error::NoSuchSa)?;
        let mut sa = self.sas.remove(&id).ok_or(Error::NoSuchSa)?;
        let ok = applies(&mut sa);
        if ok && !sa.queue.contains(&req) {
            sa.queue.push_back(req);
            self.kick(now, &mut sa);
        }
        self.finish(now, sa, After::Keep);
        if ok {
            Ok(())
        } else {
            Err(Error::NoSuchSa)
        }
    }

    /// Open another CHILD SA on the established IKE SA `id` (RFC 7296 1.3.1), e.g. one
    /// for other protocols or ports to the same networks (RFC 4301 4.4.1): `local_ts`
    /// and `remote_ts` are the selectors we ask for (TSi, TSr). `ChildSaInstalled`
    /// follows with the selectors the responder narrowed them to; a refusal is logged
    /// and changes nothing.
    pub fn create_child_sa(
        &mut self,
        now: Instant,
        id: IkeSaId,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
    ) -> Result<(), Error> {
        self.queue_on_established(now, id, LocalReq::CreateChild(local_ts, remote_ts))
    }

    /// Rekey an IKE SA now (RFC 7296 2.18).
    pub fn rekey_ike_sa(&mut self, now: Instant, id: IkeSaId) -> Result<(), Error> {
        self.queue_on_established(now, id, LocalReq::RekeyIke)
    }

    /// Queue a local request on the established IKE SA `id` (once: an identical request
    /// already queued is not repeated), then start it if the exchange window is free.
    fn queue_on_established(
        &mut self,
        now: Instant,
        id: IkeSaId,
        req: LocalReq,
    ) -> Result<(), Error> {
        let mut sa = self.sas.remove(&id).ok_or(Error::NoSuchSa)?;
        let ok = sa.state == IkeSaState::Established;
        if ok && !sa.queue.contains(&req) {
            sa.queue.push_back(req);
            self.kick(now, &mut sa);
        }
        self.finish(now, sa, After::Keep);
        if ok {
            Ok(())
        } else {
            Err(Error::NoSuchSa)
        }
    }

    /// The data plane received authenticated ESP on CHILD SA `inbound`: the peer is alive,
    /// so no liveness check is needed (RFC 7296 2.4). Cheap (one hash lookup); call it at
    /// most every few seconds per SA, not per packet.
    pub fn esp_activity(&mut self, now: Instant, inbound: Spi) {
        if let Some(sa) = self
            .child_index
            .get(&inbound)
            .and_then(|id| self.sas.get_mut(id))
        {
            sa.last_inbound = sa.last_inbound.max(now);
        }
    }

    /// The data plane received ESP for an SPI it does not know from `remote`: tell the
    /// peer with an INVALID_SPI notification over an IKE SA we share with it (RFC 7296
    /// 2.21.4). Rate limited; without an established IKE SA to that address nothing is
    /// sent (the packet was unauthenticated).
    pub fn report_invalid_spi(
        &mut self,
        now: Instant,
        remote: IpAddr,
        spi: Spi,
    ) -> Result<(), Error> {
        if !self.invalid_spi_budget(now) {
            return Err(Error::Limit("INVALID_SPI notifications"));
        }
        let id = self
            .sas
            .values()
            .find(|s| s.state == IkeSaState::Established && s.remote.ip() == remote)
            .map(|s| s.id)
            .ok_or(Error::NoSuchSa)?;
        let mut sa = self.sas.remove(&id).ok_or(Error::NoSuchSa)?;
        sa.queue.push_back(LocalReq::InvalidSpi(spi));
        self.kick(now, &mut sa);
        self.finish(now, sa, After::Keep);
        Ok(())
    }

    /// Status of every IKE SA.
    pub fn ike_sas(&self) -> Vec<IkeSaInfo> {
        let mut v: Vec<IkeSaInfo> = self.sas.values().filter(|s| !s.hidden).map(info).collect();
        v.sort_by_key(|i| i.id);
        v
    }

    /// Status of one IKE SA.
    pub fn ike_sa(&self, id: IkeSaId) -> Option<IkeSaInfo> {
        self.sas.get(&id).filter(|s| !s.hidden).map(info)
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Half-open IKE SAs (responder), for monitoring.
    pub fn half_open(&self) -> usize {
        self.half_open
    }

    /// Addresses leased from the pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    // -----------------------------------------------------------------------------------
    // Plumbing
    // -----------------------------------------------------------------------------------

    fn alloc_id(&mut self) -> IkeSaId {
        let id = IkeSaId(self.next_id);
        self.next_id += 1;
        id
    }

    fn derive_rng(&mut self) -> ChaCha20Rng {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        ChaCha20Rng::from_seed(seed)
    }

    /// A fresh, non-zero IKE SPI not in use here (RFC 7296 2.6).
    fn new_ike_spi(&mut self) -> u64 {
        loop {
            let spi = self.rng.next_u64();
            if spi != 0 && !self.by_spi.contains_key(&spi) {
                return spi;
            }
        }
    }

    /// A fresh inbound ESP SPI (RFC 4303 2.1: 1..=255 are reserved).
    fn new_esp_spi(&mut self) -> Spi {
        loop {
            let spi = Spi(self.rng.next_u32());
            if spi.0 > 255 && !self.child_index.contains_key(&spi) {
                return spi;
            }
        }
    }

    /// Rate limit for unprotected INVALID_IKE_SPI answers (they go to unauthenticated
    /// addresses): at most `INVALID_SPI_PER_SEC` per second.
    fn invalid_spi_budget(&mut self, now: Instant) -> bool {
        let (start, n) = &mut self.invalid_spi_window;
        if start.is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1)) {
            *start = Some(now);
            *n = 0;
        }
        *n += 1;
        *n <= INVALID_SPI_PER_SEC
    }

    /// Keep the last response of an SA that failed authentication for a while, so a
    /// retransmitted IKE_AUTH still gets AUTHENTICATION_FAILED (2.1) though the SA is gone.
    fn tombstone(&mut self, now: Instant, sa: &IkeSa) {
        let Some(c) = sa.cached.as_ref() else { return };
        let until = now + self.rekey_linger();
        let spi = sa.our_spi();
        self.tombstones
            .insert(spi, (c.request_hash, c.packets.clone()));
        self.tombstone_order.push_back((until, spi));
        while self.tombstone_order.len() > MAX_TOMBSTONES {
            if let Some((_, old)) = self.tombstone_order.pop_front() {
                self.tombstones.remove(&old);
            }
        }
    }

    fn replay_tombstone(
        &mut self,
        now: Instant,
        spi: u64,
        socket: SocketKind,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) -> bool {
        while let Some(&(t, old)) = self.tombstone_order.front() {
            if t > now {
                break;
            }
            self.tombstone_order.pop_front();
            self.tombstones.remove(&old);
        }
        let Some((hash, packets)) = self.tombstones.get(&spi) else {
            return false;
        };
        if *hash != sha256(data) {
            return false;
        }
        let packets = packets.clone();
        self.counters.replayed += 1;
        for p in &packets {
            self.transmit(socket, local, remote, p);
        }
        true
    }

    /// RFC 7296 2.5: an IKE_SA_INIT request of a higher major version gets
    /// INVALID_MAJOR_VERSION in a version 2 header (rate limited).
    fn answer_major_version(
        &mut self,
        now: Instant,
        socket: SocketKind,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        let (Some(spi_i), Some(&exchange), Some(&flags), Some(mid)) =
            (data.get(0..8), data.get(18), data.get(19), data.get(20..24))
        else {
            return;
        };
        let is_init_request = exchange == 34 && flags & 0x20 == 0;
        if !is_init_request || self.config.responder.is_none() || !self.invalid_spi_budget(now) {
            return;
        }
        let spi_i = u64::from_be_bytes(spi_i.try_into().unwrap_or([0; 8]));
        let mid = u32::from_be_bytes(mid.try_into().unwrap_or([0; 4]));
        let hdr = Header::new(spi_i, 0, ExchangeType::IkeSaInit, false, false, mid);
        self.send_unprotected_notify(
            socket,
            local,
            remote,
            &hdr,
            NotifyType::INVALID_MAJOR_VERSION,
            vec![],
        );
    }

    fn count_drop(&mut self, remote: SocketAddr, e: &Error) {
        *self.counters.dropped.entry(e.label()).or_insert(0) += 1;
        tracing::debug!(%remote, error = %e, label = e.label(), "IKE message rejected");
    }

    fn transmit(&mut self, socket: SocketKind, local: SocketAddr, remote: SocketAddr, msg: &[u8]) {
        let payload = match socket {
            SocketKind::Ike => msg.to_vec(),
            SocketKind::NatT => {
                let mut p = Vec::with_capacity(msg.len() + 4);
                p.extend_from_slice(&NON_ESP_MARKER);
                p.extend_from_slice(msg);
                p
            }
        };
        self.counters.sent += 1;
        self.transmits.push_back(Transmit {
            socket,
            local,
            remote,
            payload,
        });
    }

    fn emit(&mut self, e: Event) {
        self.events.push_back(e);
    }

    /// Put an SA back after handling, or tear it down; then re-arm its timer.
    fn finish(&mut self, now: Instant, mut sa: IkeSa, after: After) {
        match after {
            After::Keep => {
                self.leave_half_open_if_done(&mut sa);
                self.rearm(now, &mut sa);
                self.sas.insert(sa.id, sa);
            }
            After::Remove(reason) => self.destroy(sa, reason),
        }
    }

    fn leave_half_open_if_done(&mut self, sa: &mut IkeSa) {
        if sa.half_open && sa.state != IkeSaState::InitDone {
            sa.half_open = false;
            self.half_open = self.half_open.saturating_sub(1);
        }
    }

    /// Remove an SA and everything that points at it.
    fn destroy(&mut self, mut sa: IkeSa, reason: Option<DeleteReason>) {
        // A redundant SA of a rekey collision was never announced (2.8.1).
        let reason = reason.filter(|_| !sa.hidden);
        sa.state = IkeSaState::Deleting;
        self.leave_half_open_if_done(&mut sa);
        self.by_spi.remove(&sa.our_spi());
        if let Some(k) = sa.init_key.take() {
            self.init_index.remove(&k);
        }
        // SPIs reserved for exchanges that never completed.
        if let Some(fc) = sa.first_child.take() {
            self.child_index.remove(&fc.our_spi);
        }
        match sa.pending.take().map(|p| p.kind) {
            Some(
                PendingKind::RekeyChild { our_spi, .. } | PendingKind::CreateChild { our_spi, .. },
            ) if self.child_index.get(&our_spi) == Some(&sa.id) => {
                self.child_index.remove(&our_spi);
            }
            Some(PendingKind::RekeyIke { new_spi, .. })
                if self.by_spi.get(&new_spi) == Some(&sa.id) =>
            {
                self.by_spi.remove(&new_spi);
            }
            _ => {}
        }
        for c in sa.children.drain(..) {
            self.child_index.remove(&c.sa.inbound.spi);
            if reason.is_some() {
                self.events.push_back(Event::ChildSaDeleted {
                    ike_sa: sa.id,
                    inbound: c.sa.inbound.spi,
                    outbound: c.sa.outbound.spi,
                });
            }
        }
        if let Some(rid) = &sa.remote_id {
            if let Some(v) = self.by_identity.get_mut(rid) {
                v.retain(|x| *x != sa.id);
                if v.is_empty() {
                    self.by_identity.remove(rid);
                }
            }
        }
        self.pool.release(sa.id);
        // Nothing may keep pointing at a destroyed SA (checked in debug builds, small tables).
        debug_assert!(self.sas.len() > 10_000 || !self.by_spi.values().any(|v| *v == sa.id));
        debug_assert!(self.sas.len() > 10_000 || !self.child_index.values().any(|v| *v == sa.id));
        debug_assert!(self.sas.len() > 10_000 || !self.init_index.values().any(|v| *v == sa.id));
        if let Some(reason) = reason {
            tracing::info!(ike_sa = sa.id.0, remote = %sa.remote, ?reason, "IKE SA deleted");
            self.events.push_back(Event::IkeSaDeleted {
                ike_sa: sa.id,
                reason,
            });
        }
    }

    /// Recompute the SA's next deadline and register it (lazy heap).
    fn rearm(&mut self, now: Instant, sa: &mut IkeSa) {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        consider(sa.pending.as_ref().map(|p| p.next_at));
        consider(sa.expire_at);
        if sa.state == IkeSaState::Established && sa.pending.is_none() {
            {
                if let Some(d) = self.config.lifetimes.dpd_delay {
                    consider(Some(sa.last_inbound + d));
                }
                consider(sa.ike_rekey_at);
                for c in &sa.children {
                    if c.state == ChildState::Installed {
                        consider(c.rekey_at);
                    }
                }
            }
        }
        // Only an earlier deadline needs a new heap entry: a later one is picked up when
        // the registered entry fires (a spurious wake-up re-arms). Keeps the heap at about
        // one entry per SA however often `last_inbound` moves.
        let next = next.map(|t| t.max(now));
        if let Some(t) = next {
            if sa.deadline.is_none_or(|d| t < d) {
                sa.deadline = Some(t);
                self.timers.push(Reverse((t, sa.id)));
            }
        }
    }

    fn sa_timeout(&mut self, now: Instant, sa: &mut IkeSa) -> After {
        if sa.expire_at.is_some_and(|t| t <= now) {
            if sa.state == IkeSaState::InitDone {
                self.counters.half_open_expired += 1;
                return After::Remove(None);
            }
            return After::Remove(Some(DeleteReason::Rekeyed));
        }
        if let Some(p) = sa.pending.as_mut() {
            if p.next_at <= now {
                if p.tries >= self.config.retransmit.tries {
                    let established = sa.established_at.is_some();
                    if !established {
                        self.counters.count_failure("no_response");
                        self.emit(Event::NegotiationFailed {
                            remote: sa.remote,
                            identity: sa.remote_id.clone(),
                            reason: "no response".into(),
                        });
                    }
                    let reason = match p.kind {
                        _ if sa.state == IkeSaState::Rekeyed => DeleteReason::Rekeyed,
                        PendingKind::DeleteIke => sa
                            .delete_reason
                            .clone()
                            .unwrap_or(DeleteReason::LocalDelete),
                        _ => DeleteReason::Timeout,
                    };
                    return After::Remove(Some(reason));
                }
                p.tries += 1;
                let backoff = self
                    .config
                    .retransmit
                    .initial
                    .saturating_mul(1u32 << p.tries.min(16));
                p.next_at = now + backoff;
                let packets = p.packets.clone();
                self.counters.retransmitted += 1;
                tracing::debug!(ike_sa = sa.id.0, remote = %sa.remote, tries = p.tries, "retransmitting request");
                for pkt in &packets {
                    self.transmit(sa.socket, sa.local, sa.remote, pkt);
                }
            }
            return After::Keep;
        }
        if sa.state != IkeSaState::Established {
            return After::Keep;
        }
        if sa.ike_rekey_at.is_some_and(|t| t <= now) {
            sa.ike_rekey_at = None;
            if !sa.queue.contains(&LocalReq::RekeyIke) {
                sa.queue.push_back(LocalReq::RekeyIke);
            }
        }
        let due: Vec<Spi> = sa
            .children
            .iter_mut()
            .filter(|c| c.state == ChildState::Installed && c.rekey_at.is_some_and(|t| t <= now))
            .map(|c| {
                c.rekey_at = None;
                c.sa.inbound.spi
            })
            .collect();
        for spi in due {
            if !sa.queue.contains(&LocalReq::RekeyChild(spi)) {
                sa.queue.push_back(LocalReq::RekeyChild(spi));
            }
        }
        if let Some(d) = self.config.lifetimes.dpd_delay {
            if sa.last_inbound + d <= now && sa.queue.is_empty() {
                sa.queue.push_back(LocalReq::Dpd);
            }
        }
        self.kick(now, sa);
        After::Keep
    }

    // -----------------------------------------------------------------------------------
    // Sending
    // -----------------------------------------------------------------------------------

    /// Protect an inner payload chain into one message or, when the peer supports RFC 7383
    /// and the message exceeds `limits.fragment_mtu`, into SKF fragments.
    fn seal(
        &self,
        sa: &mut IkeSa,
        exchange: ExchangeType,
        response: bool,
        msg_id: u32,
        payloads: &[Payload],
    ) -> Result<Vec<Vec<u8>>, Error> {
        let keys = sa
            .keys
            .as_mut()
            .ok_or(Error::UnexpectedMessage("protected message before keys"))?;
        let (first, inner) = encode_payloads(payloads)?;
        let header = Header::new(sa.spi_i, sa.spi_r, exchange, sa.initiator, response, msg_id);
        let body_len = keys.out.sealed_len(inner.len());
        let marker = if sa.socket == SocketKind::NatT { 4 } else { 0 };
        let mtu = self.config.limits.fragment_mtu.saturating_sub(marker);
        if !sa.peer_frag || HEADER_LEN + GENERIC_HEADER_LEN + body_len <= mtu {
            let mut msg = encode_sk_prefix(&header, &[], first, body_len)?;
            keys.out.seal(&mut msg, &inner, &mut sa.rng);
            return Ok(vec![msg]);
        }
        // RFC 7383 2.5: split the plaintext so every fragment fits.
        let avail = mtu.saturating_sub(HEADER_LEN + SKF_HEADER_LEN);
        let mut chunk = avail;
        while chunk > 0 && keys.out.sealed_len(chunk) > avail {
            chunk -= 1;
        }
        if chunk == 0 {
            return Err(Error::Limit("fragment_mtu too small"));
        }
        let total = inner.len().div_ceil(chunk);
        let total = u16::try_from(total)
            .ok()
            .filter(|t| *t <= MAX_FRAGMENTS)
            .ok_or(Error::TooMany("fragments"))?;
        let mut out = Vec::with_capacity(usize::from(total));
        for (i, part) in inner.chunks(chunk).enumerate() {
            let number = (i + 1) as u16;
            let fi = if number == 1 { first } else { 0 };
            let mut msg =
                encode_skf_prefix(&header, fi, number, total, keys.out.sealed_len(part.len()))?;
            keys.out.seal(&mut msg, part, &mut sa.rng);
            out.push(msg);
        }
        Ok(out)
    }

    /// Send a request on the SA's window (size 1).
    fn send_request(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        exchange: ExchangeType,
        payloads: &[Payload],
        kind: PendingKind,
    ) -> Result<(), Error> {
        let msg_id = sa.next_msg_id;
        let packets = self.seal(sa, exchange, false, msg_id, payloads)?;
        sa.next_msg_id = sa.next_msg_id.wrapping_add(1);
        for p in &packets {
            self.transmit(sa.socket, sa.local, sa.remote, p);
        }
        sa.pending = Some(Pending {
            msg_id,
            packets,
            tries: 0,
            next_at: now + self.config.retransmit.initial,
            kind,
        });
        Ok(())
    }

    /// Send a protected response and cache it for retransmitted requests.
    #[allow(clippy::too_many_arguments)]
    fn send_response(
        &mut self,
        sa: &mut IkeSa,
        to: (SocketKind, SocketAddr, SocketAddr),
        exchange: ExchangeType,
        msg_id: u32,
        request_hash: [u8; 32],
        payloads: &[Payload],
    ) -> Result<(), Error> {
        let packets = self.seal(sa, exchange, true, msg_id, payloads)?;
        for p in &packets {
            self.transmit(to.0, to.1, to.2, p);
        }
        sa.cached = Some(Cached {
            msg_id,
            request_hash,
            packets,
        });
        Ok(())
    }

    /// An unprotected response with one notify, for IKE_SA_INIT errors and INVALID_IKE_SPI
    /// (RFC 7296 1.6, 2.6, 2.21.4). No state is kept.
    #[allow(clippy::too_many_arguments)]
    fn send_unprotected_notify(
        &mut self,
        socket: SocketKind,
        local: SocketAddr,
        remote: SocketAddr,
        req: &Header,
        kind: NotifyType,
        data: Vec<u8>,
    ) {
        let header = Header::new(
            req.spi_i,
            req.spi_r,
            req.exchange,
            false,
            true,
            req.message_id,
        );
        let msg = Message {
            header,
            payloads: vec![Payload::Notify(Notify {
                protocol: ProtocolId::Other(0),
                spi: vec![],
                kind,
                data,
            })],
        };
        if let Ok(bytes) = msg.encode() {
            self.transmit(socket, local, remote, &bytes);
        }
    }

    /// Start the next queued request if the window is free.
    fn kick(&mut self, now: Instant, sa: &mut IkeSa) {
        while sa.pending.is_none() {
            if !matches!(sa.state, IkeSaState::Established | IkeSaState::Rekeyed) {
                return;
            }
            let Some(req) = sa.queue.pop_front() else {
                return;
            };
            if sa.state == IkeSaState::Rekeyed && req != LocalReq::DeleteIke {
                continue;
            }
            let r = match req {
                LocalReq::InvalidSpi(spi) => {
                    let n = Payload::Notify(Notify {
                        protocol: ProtocolId::Esp,
                        spi: spi.0.to_be_bytes().to_vec(),
                        kind: NotifyType::INVALID_SPI,
                        data: spi.0.to_be_bytes().to_vec(),
                    });
                    self.send_request(now, sa, ExchangeType::Informational, &[n], PendingKind::Dpd)
                }
                LocalReq::Dpd => {
                    self.send_request(now, sa, ExchangeType::Informational, &[], PendingKind::Dpd)
                }
                LocalReq::DeleteIke => {
                    let d = Payload::Delete(Delete {
                        protocol: ProtocolId::Ike,
                        spis: vec![],
                    });
                    if sa.state != IkeSaState::Rekeyed {
                        sa.state = IkeSaState::Deleting;
                    }
                    self.send_request(
                        now,
                        sa,
                        ExchangeType::Informational,
                        &[d],
                        PendingKind::DeleteIke,
                    )
                }
                LocalReq::DeleteChild(spis) => {
                    let spis: Vec<Spi> = spis
                        .into_iter()
                        .filter(|s| sa.children.iter().any(|c| c.sa.inbound.spi == *s))
                        .collect();
                    if spis.is_empty() {
                        continue;
                    }
                    for s in &spis {
                        if let Some(c) = sa.child_by_inbound(*s) {
                            if c.state != ChildState::Rekeyed {
                                c.state = ChildState::Deleting;
                            }
                        }
                    }
                    let d = Payload::Delete(Delete {
                        protocol: ProtocolId::Esp,
                        spis: spis.clone(),
                    });
                    self.send_request(
                        now,
                        sa,
                        ExchangeType::Informational,
                        &[d],
                        PendingKind::DeleteChild(spis),
                    )
                }
                LocalReq::RekeyChild(old) => self.start_child_rekey(now, sa, old),
                LocalReq::CreateChild(local_ts, remote_ts) => {
                    self.start_create_child(now, sa, local_ts, remote_ts)
                }
                LocalReq::RekeyIke => self.start_ike_rekey(now, sa),
            };
            if let Err(e) = r {
                tracing::debug!(ike_sa = sa.id.0, error = %e, "could not start request");
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Receiving
    // -----------------------------------------------------------------------------------

    fn handle_datagram(
        &mut self,
        now: Instant,
        socket: SocketKind,
        local: SocketAddr,
        remote: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), Error> {
        let data = match socket {
            SocketKind::Ike => datagram,
            SocketKind::NatT => match datagram {
                [0, 0, 0, 0, rest @ ..] => rest,
                _ => {
                    return Err(Error::InvalidField {
                        field: "non-ESP marker",
                        detail: "missing (ESP or keepalive)".into(),
                    })
                }
            },
        };
        if data.len() > self.config.limits.max_message {
            return Err(Error::Oversized(data.len()));
        }
        let hdr = match Header::decode(data) {
            Ok(h) => h,
            Err(e @ Error::InvalidMajorVersion(_)) => {
                self.answer_major_version(now, socket, local, remote, data);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if hdr.length as usize != data.len() {
            return Err(Error::BadLength {
                field: "header length",
                detail: format!("{} vs datagram {}", hdr.length, data.len()),
            });
        }
        if hdr.exchange == ExchangeType::IkeSaInit && !hdr.response {
            if hdr.spi_r != 0 || hdr.message_id != 0 || !hdr.initiator {
                return Err(Error::InvalidField {
                    field: "IKE_SA_INIT header",
                    detail: "SPIr, message ID or I flag".into(),
                });
            }
            return self.on_init_request(now, socket, local, remote, data, &hdr);
        }
        let our_spi = if hdr.initiator { hdr.spi_r } else { hdr.spi_i };
        let Some(&id) = self.by_spi.get(&our_spi) else {
            if self.replay_tombstone(now, our_spi, socket, local, remote, data) {
                return Ok(());
            }
            // RFC 7296 2.21.4: a request for an unknown SA may get an unprotected
            // INVALID_IKE_SPI; never answer responses.
            if !hdr.response
                && hdr.exchange != ExchangeType::IkeSaInit
                && our_spi != 0
                && self.invalid_spi_budget(now)
            {
                self.send_unprotected_notify(
                    socket,
                    local,
                    remote,
                    &hdr,
                    NotifyType::INVALID_IKE_SPI,
                    vec![],
                );
            }
            return Err(Error::InvalidIkeSpi);
        };
        let Some(mut sa) = self.sas.remove(&id) else {
            return Err(Error::NoSuchSa);
        };
        let r = self.on_sa_message(now, &mut sa, socket, local, remote, data, &hdr);
        let after = match r {
            Ok(a) => a,
            Err(e) => {
                self.count_drop(remote, &e);
                After::Keep
            }
        };
        self.finish(now, sa, after);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn on_sa_message(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        socket: SocketKind,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        hdr: &Header,
    ) -> Result<After, Error> {
        // The I flag names the sender's role in this IKE SA (3.1).
        if hdr.initiator == sa.initiator {
            return Err(Error::InvalidField {
                field: "I flag",
                detail: "matches our own role".into(),
            });
        }
        let their_spi = if sa.initiator { hdr.spi_r } else { hdr.spi_i };
        let known_their = if sa.initiator { sa.spi_r } else { sa.spi_i };
        if hdr.response {
            let Some(p) = sa.pending.as_ref() else {
                return Err(Error::UnexpectedMessage("response without a request"));
            };
            if hdr.message_id != p.msg_id {
                return Err(Error::InvalidMessageId {
                    got: hdr.message_id,
                    expected: p.msg_id,
                });
            }
            if hdr.exchange == ExchangeType::IkeSaInit {
                if !matches!(p.kind, PendingKind::IkeSaInit) {
                    return Err(Error::UnexpectedMessage("IKE_SA_INIT response"));
                }
                return self.on_init_response(now, sa, data, hdr);
            }
            if their_spi != known_their {
                return Err(Error::InvalidIkeSpi);
            }
            let Some(payloads) = self.open(sa, data, hdr)? else {
                return Ok(After::Keep);
            };
            if sa.reassembly.as_ref().is_some_and(|r| r.response) {
                sa.reassembly = None;
            }
            // Authenticated but malformed inside: nothing sensible to do with it (2.21.2).
            let payloads = payloads?;
            sa.last_inbound = now;
            self.follow_peer(sa, socket, local, remote);
            let pending = sa
                .pending
                .take()
                .ok_or(Error::UnexpectedMessage("response"))?;
            let after = self.on_response(now, sa, hdr, pending, payloads)?;
            if matches!(after, After::Keep) {
                self.kick(now, sa);
            }
            return Ok(after);
        }
        // A request from the peer.
        if their_spi != known_their {
            return Err(Error::InvalidIkeSpi);
        }
        if hdr.message_id == sa.peer_msg_id.wrapping_sub(1)
            && sa
                .cached
                .as_ref()
                .is_some_and(|c| c.msg_id == hdr.message_id)
        {
            // A retransmitted request: replay the response if it is the same message
            // (for fragments: fragment 1, RFC 7383 2.6.1).
            let h = sha256(data);
            let cached = sa
                .cached
                .as_ref()
                .map(|c| (c.request_hash, c.packets.clone()));
            if let Some((rh, packets)) = cached {
                if rh == h {
                    self.counters.replayed += 1;
                    for p in &packets {
                        self.transmit(socket, local, remote, p);
                    }
                    return Ok(After::Keep);
                }
            }
            return Err(Error::InvalidMessageId {
                got: hdr.message_id,
                expected: sa.peer_msg_id,
            });
        }
        if hdr.message_id != sa.peer_msg_id {
            return Err(Error::InvalidMessageId {
                got: hdr.message_id,
                expected: sa.peer_msg_id,
            });
        }
        let Some(payloads) = self.open(sa, data, hdr)? else {
            return Ok(After::Keep);
        };
        // Fragmented requests are recognised by fragment 1 (RFC 7383 2.6.1).
        let request_hash = sa
            .reassembly
            .take_if(|r| !r.response && r.msg_id == hdr.message_id)
            .and_then(|r| r.first_hash)
            .unwrap_or_else(|| sha256(data));
        sa.peer_msg_id = sa.peer_msg_id.wrapping_add(1);
        sa.last_inbound = now;
        self.follow_peer(sa, socket, local, remote);
        let to = (socket, local, remote);
        let payloads = match payloads {
            Ok(p) => p,
            Err(e) => {
                // Authenticated but malformed: answer INVALID_SYNTAX (or
                // UNSUPPORTED_CRITICAL_PAYLOAD) in a protected response (2.21.2, 2.5).
                self.count_drop(remote, &e);
                let kind = NotifyType::try_from(&e).unwrap_or(NotifyType::INVALID_SYNTAX);
                let data = match e {
                    Error::UnsupportedCriticalPayload(t) => vec![t],
                    _ => vec![],
                };
                self.send_response(
                    sa,
                    to,
                    hdr.exchange,
                    hdr.message_id,
                    request_hash,
                    &[notify(kind, data)],
                )?;
                if sa.state == IkeSaState::InitDone {
                    self.negotiation_failed(remote, None, &e);
                    return Ok(After::Remove(None));
                }
                return Ok(After::Keep);
            }
        };
        let r = match hdr.exchange {
            ExchangeType::IkeAuth => self.on_auth_request(now, sa, to, hdr, request_hash, payloads),
            ExchangeType::CreateChildSa => {
                self.on_create_child_request(now, sa, to, hdr, request_hash, payloads)
            }
            ExchangeType::Informational => {
                self.on_informational_request(now, sa, to, hdr, request_hash, payloads)
            }
            _ => Err(Error::UnexpectedMessage("exchange type")),
        };
        let after = r?;
        if matches!(after, After::Keep) {
            self.kick(now, sa);
        }
        Ok(after)
    }

    /// Responder side of 2.23: follow the peer's address after an authenticated message.
    fn follow_peer(
        &mut self,
        sa: &mut IkeSa,
        socket: SocketKind,
        local: SocketAddr,
        remote: SocketAddr,
    ) {
        if sa.initiator || (sa.socket == socket && sa.remote == remote && sa.local == local) {
            return;
        }
        let encap = sa.udp_encap || socket == SocketKind::NatT;
        sa.socket = socket;
        sa.local = local;
        sa.remote = remote;
        sa.udp_encap = encap;
        for c in &mut sa.children {
            c.sa.remote = remote;
            c.sa.local = local;
            c.sa.udp_encap = encap;
        }
        if sa.state == IkeSaState::Established {
            tracing::info!(ike_sa = sa.id.0, %remote, udp_encap = encap, "peer address changed");
            self.emit(Event::IkeSaAddressChanged {
                ike_sa: sa.id,
                remote,
                udp_encap: encap,
            });
        }
    }

    /// Decrypt an SK message or collect an SKF fragment (RFC 7383 2.6). `None` while
    /// fragments are missing.
    fn open(
        &mut self,
        sa: &mut IkeSa,
        data: &[u8],
        hdr: &Header,
    ) -> Result<Option<Result<Vec<Payload>, Error>>, Error> {
        let (msg, body_start) = Message::decode_locating_sk(data, &self.limits)?;
        let body_start = body_start.ok_or(Error::MissingPayload("SK"))?;
        let keys = sa
            .keys
            .as_ref()
            .ok_or(Error::UnexpectedMessage("protected message before keys"))?;
        match msg.payloads.last() {
            Some(Payload::Sk { first_inner, .. }) => {
                let plain = keys.inb.open(data, body_start)?;
                Ok(Some(decode_payloads(*first_inner, &plain, &self.limits)))
            }
            Some(Payload::Skf {
                first_inner,
                number,
                total,
                ..
            }) => {
                let (first_inner, number, total) = (*first_inner, *number, *total);
                if number == 0 || number > total || total > MAX_FRAGMENTS {
                    return Err(Error::InvalidField {
                        field: "fragment number",
                        detail: format!("{number} of {total}"),
                    });
                }
                let plain = keys.inb.open(data, body_start)?;
                let reuse = sa
                    .reassembly
                    .as_ref()
                    .is_some_and(|r| r.msg_id == hdr.message_id && r.response == hdr.response);
                if !reuse {
                    let mut r = Reassembly::new(hdr.message_id, total)?;
                    r.response = hdr.response;
                    sa.reassembly = Some(r);
                }
                let max = self.config.limits.max_message;
                let r = sa.reassembly.as_mut().ok_or(Error::NoSuchSa)?;
                match r.add(number, total, first_inner, plain, max, sha256(data)) {
                    Ok(Some(whole)) => {
                        let first = r.first_inner;
                        Ok(Some(decode_payloads(first, &whole, &self.limits)))
                    }
                    Ok(None) => Ok(None),
                    Err(e) => {
                        sa.reassembly = None;
                        Err(e)
                    }
                }
            }
            _ => Err(Error::MissingPayload("SK")),
        }
    }

    // -----------------------------------------------------------------------------------
    // IKE_SA_INIT (RFC 7296 1.2, 2.6, 2.7, 2.10, 2.23)
    // -----------------------------------------------------------------------------------

    fn send_init_request(&mut self, now: Instant, sa: &mut IkeSa) -> Result<(), Error> {
        let cfg = sa.icfg.clone().ok_or(Error::NoSuchSa)?;
        let ke = sa.ke.as_ref().ok_or(Error::Crypto("no key exchange"))?;
        let mut payloads = Vec::with_capacity(8);
        if let Some(c) = &sa.cookie {
            payloads.push(notify(NotifyType::COOKIE, c.clone()));
        }
        payloads.push(Payload::Sa(neg::ike_offer(&cfg.ike_proposals)));
        payloads.push(Payload::Ke {
            group: crate::crypto::group_number(ke.group()),
            data: ke.public_value().to_vec(),
        });
        payloads.push(Payload::Nonce(sa.ni.clone()));
        payloads.push(notify(
            NotifyType::NAT_DETECTION_SOURCE_IP,
            nat_detection_hash(sa.spi_i, 0, sa.local).to_vec(),
        ));
        payloads.push(notify(
            NotifyType::NAT_DETECTION_DESTINATION_IP,
            nat_detection_hash(sa.spi_i, 0, sa.remote).to_vec(),
        ));
        payloads.push(notify(NotifyType::IKEV2_FRAGMENTATION_SUPPORTED, vec![]));
        payloads.extend(init_payloads(&cfg.auth, false));
        let msg = Message {
            header: Header::new(sa.spi_i, 0, ExchangeType::IkeSaInit, true, false, 0),
            payloads,
        };
        let bytes = msg.encode()?;
        self.transmit(sa.socket, sa.local, sa.remote, &bytes);
        sa.init_req = bytes.clone();
        sa.next_msg_id = 1;
        sa.pending = Some(Pending {
            msg_id: 0,
            packets: vec![bytes],
            tries: 0,
            next_at: now + self.config.retransmit.initial,
            kind: PendingKind::IkeSaInit,
        });
        Ok(())
    }

    fn on_init_request(
        &mut self,
        now: Instant,
        socket: SocketKind,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        hdr: &Header,
    ) -> Result<(), Error> {
        let config = self.config.clone();
        let Some(rcfg) = config.responder.as_ref() else {
            return Err(Error::UnexpectedMessage(
                "IKE_SA_INIT request on an initiator-only endpoint",
            ));
        };
        if let Some(&id) = self.init_index.get(&(remote, hdr.spi_i)) {
            // Retransmitted IKE_SA_INIT (2.1): replay the response if it is the same message.
            let h = sha256(data);
            let replay = self
                .sas
                .get(&id)
                .and_then(|sa| sa.cached.as_ref())
                .filter(|c| c.msg_id == 0 && c.request_hash == h)
                .map(|c| c.packets.clone());
            return match replay {
                Some(packets) => {
                    self.counters.replayed += 1;
                    for p in &packets {
                        self.transmit(socket, local, remote, p);
                    }
                    Ok(())
                }
                None => Err(Error::UnexpectedMessage(
                    "second IKE_SA_INIT for a half-open SA",
                )),
            };
        }
        if self.half_open >= self.config.limits.half_open_max {
            return Err(Error::Limit("half-open IKE SAs"));
        }
        if self.sas.len() >= self.config.limits.ike_sa_max {
            return Err(Error::Limit("IKE SAs"));
        }
        let msg = match Message::decode(data, &self.limits) {
            Ok(m) => m,
            Err(e) => {
                // 2.5 / 2.21.1: answer unprotected, rate limited (the source is unverified).
                if self.invalid_spi_budget(now) {
                    let kind = NotifyType::try_from(&e).unwrap_or(NotifyType::INVALID_SYNTAX);
                    let d = match e {
                        Error::UnsupportedCriticalPayload(t) => vec![t],
                        _ => vec![],
                    };
                    self.send_unprotected_notify(socket, local, remote, hdr, kind, d);
                }
                return Err(e);
            }
        };
        let mut sa_p = None;
        let mut ke_p = None;
        let mut ni = None;
        let mut cookie = None;
        let mut nat_src = Vec::new();
        let mut nat_dst = None;
        let mut frag = false;
        for p in &msg.payloads {
            match p {
                Payload::Sa(v) => sa_p = Some(v),
                Payload::Ke { group, data } => ke_p = Some((*group, data)),
                Payload::Nonce(n) => ni = Some(n),
                Payload::Notify(n) => match n.kind {
                    NotifyType::COOKIE => cookie = Some(&n.data),
                    NotifyType::NAT_DETECTION_SOURCE_IP => nat_src.push(&n.data),
                    NotifyType::NAT_DETECTION_DESTINATION_IP => nat_dst = Some(&n.data),
                    NotifyType::IKEV2_FRAGMENTATION_SUPPORTED => frag = true,
                    _ => {}
                },
                _ => {}
            }
        }
        let ni = ni.ok_or(Error::MissingPayload("Ni"))?;
        let offered = sa_p.ok_or(Error::MissingPayload("SA"))?;
        let (ke_group, ke_data) = ke_p.ok_or(Error::MissingPayload("KE"))?;
        // 2.6: require a cookie once too many SAs are half-open. Stateless.
        if self.half_open >= self.config.limits.cookie_threshold {
            let ok = cookie.is_some_and(|c| self.cookie.verify(c, ni, remote.ip(), hdr.spi_i));
            if !ok {
                if self.cookie_rotate_at.is_none() {
                    self.cookie_rotate_at = Some(now + COOKIE_ROTATE);
                }
                let c = self.cookie.cookie(ni, remote.ip(), hdr.spi_i);
                self.counters.cookies_sent += 1;
                self.send_unprotected_notify(socket, local, remote, hdr, NotifyType::COOKIE, c);
                return Ok(());
            }
        }
        let (suite, chosen) = match neg::select_ike(offered, &rcfg.ike_proposals, Some(ke_group)) {
            Ok(x) => x,
            Err(e) => {
                self.send_unprotected_notify(
                    socket,
                    local,
                    remote,
                    hdr,
                    NotifyType::NO_PROPOSAL_CHOSEN,
                    vec![],
                );
                self.negotiation_failed(remote, None, &e);
                return Err(e);
            }
        };
        let want = crate::crypto::group_number(suite.dh);
        if ke_group != want {
            // 2.7: tell the initiator which group we want.
            self.send_unprotected_notify(
                socket,
                local,
                remote,
                hdr,
                NotifyType::INVALID_KE_PAYLOAD,
                want.to_be_bytes().to_vec(),
            );
            return Err(Error::InvalidKePayload {
                got: ke_group,
                want,
            });
        }
        let id = self.alloc_id();
        let mut rng = self.derive_rng();
        let spi_r = self.new_ike_spi();
        let ke = KeyExchange::generate(suite.dh, &mut rng)?;
        let our_public = ke.public_value().to_vec();
        let g_ir = ke.agree(ke_data)?;
        let nr = random_nonce(&mut rng);
        let keys = SaKeys::from_ike_keys(
            ike_sa_keys(&suite, ni, &nr, &g_ir, hdr.spi_i, spi_r),
            &suite,
            false,
        )?;
        // NAT detection (2.23), hashes of the request use SPIr = 0.
        let peer_natted = !nat_src.is_empty()
            && !nat_src
                .iter()
                .any(|h| h[..] == nat_detection_hash(hdr.spi_i, 0, remote)[..]);
        let we_natted =
            nat_dst.is_some_and(|h| h[..] != nat_detection_hash(hdr.spi_i, 0, local)[..]);
        let mut payloads = vec![
            Payload::Sa(vec![chosen]),
            Payload::Ke {
                group: want,
                data: our_public,
            },
            Payload::Nonce(nr.clone()),
        ];
        if !nat_src.is_empty() || nat_dst.is_some() {
            payloads.push(notify(
                NotifyType::NAT_DETECTION_SOURCE_IP,
                nat_detection_hash(hdr.spi_i, spi_r, local).to_vec(),
            ));
            payloads.push(notify(
                NotifyType::NAT_DETECTION_DESTINATION_IP,
                nat_detection_hash(hdr.spi_i, spi_r, remote).to_vec(),
            ));
        }
        if frag {
            payloads.push(notify(NotifyType::IKEV2_FRAGMENTATION_SUPPORTED, vec![]));
        }
        if let Some(r) = &self.config.responder {
            payloads.extend(init_payloads(&r.auth, true));
        }
        let resp = Message {
            header: Header::new(hdr.spi_i, spi_r, ExchangeType::IkeSaInit, false, true, 0),
            payloads,
        }
        .encode()?;
        let mut sa = new_sa(id, false, hdr.spi_i, spi_r, socket, local, remote, rng, now);
        sa.suite = Some(suite);
        sa.ni = ni.clone();
        sa.nr = nr;
        sa.init_req = data.to_vec();
        sa.init_resp = resp.clone();
        sa.keys = Some(keys);
        sa.peer_frag = frag;
        sa.udp_encap = peer_natted || we_natted || socket == SocketKind::NatT;
        sa.state = IkeSaState::InitDone;
        sa.peer_msg_id = 1;
        sa.half_open = true;
        sa.expire_at = Some(now + self.config.limits.half_open_timeout);
        sa.init_key = Some((remote, hdr.spi_i));
        sa.cached = Some(Cached {
            msg_id: 0,
            request_hash: sha256(data),
            packets: vec![resp.clone()],
        });
        self.half_open += 1;
        self.init_index.insert((remote, hdr.spi_i), id);
        self.by_spi.insert(spi_r, id);
        self.transmit(socket, local, remote, &resp);
        self.finish(now, sa, After::Keep);
        Ok(())
    }

    fn on_init_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        data: &[u8],
        hdr: &Header,
    ) -> Result<After, Error> {
        let cfg = sa.icfg.clone().ok_or(Error::NoSuchSa)?;
        let msg = Message::decode(data, &self.limits)?;
        // Error and challenge responses carry SPIr = 0 (2.6, 2.7, 1.6).
        if let Some(n) = msg.notify(NotifyType::COOKIE) {
            if sa.cookie.is_some() && sa.cookie.as_deref() == Some(&n.data[..]) {
                return Err(Error::UnexpectedMessage("same COOKIE twice"));
            }
            if n.data.is_empty() || n.data.len() > 64 {
                return Err(Error::InvalidField {
                    field: "COOKIE",
                    detail: format!("{} octets", n.data.len()),
                });
            }
            sa.cookie = Some(n.data.clone());
            sa.pending = None;
            self.send_init_request(now, sa)?;
            return Ok(After::Keep);
        }
        if let Some(n) = msg.notify(NotifyType::INVALID_KE_PAYLOAD) {
            let want = n
                .data
                .get(..2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or(Error::Truncated {
                    needed: 2,
                    have: n.data.len(),
                })?;
            let Some(group) = neg::offered_group(&cfg.ike_proposals, want) else {
                let e = Error::InvalidKePayload {
                    got: sa
                        .ke
                        .as_ref()
                        .map_or(0, |k| crate::crypto::group_number(k.group())),
                    want,
                };
                self.negotiation_failed(sa.remote, None, &e);
                return Ok(After::Remove(Some(DeleteReason::Failed(
                    "INVALID_KE_PAYLOAD".into(),
                ))));
            };
            if sa.ke.as_ref().is_some_and(|k| k.group() == group) {
                return Err(Error::UnexpectedMessage(
                    "INVALID_KE_PAYLOAD for the group we sent",
                ));
            }
            sa.ke = Some(KeyExchange::generate(group, &mut sa.rng)?);
            sa.pending = None;
            self.send_init_request(now, sa)?;
            return Ok(After::Keep);
        }
        if let Some(n) = msg.payloads.iter().find_map(|p| match p {
            Payload::Notify(n) if n.kind.is_error() => Some(n),
            _ => None,
        }) {
            let reason = notify_name(n.kind);
            self.counters.count_failure(peer_notify_label(n.kind));
            self.emit(Event::NegotiationFailed {
                remote: sa.remote,
                identity: None,
                reason: reason.clone(),
            });
            return Ok(After::Remove(Some(DeleteReason::Failed(reason))));
        }
        if hdr.spi_r == 0 {
            return Err(Error::InvalidIkeSpi);
        }
        let mut sa_p = None;
        let mut ke_p = None;
        let mut nr = None;
        let mut nat_src = Vec::new();
        let mut nat_dst = None;
        let mut frag = false;
        for p in &msg.payloads {
            match p {
                Payload::Sa(v) => sa_p = Some(v),
                Payload::Ke { group, data } => ke_p = Some((*group, data)),
                Payload::Nonce(n) => nr = Some(n),
                Payload::Notify(n) => match n.kind {
                    NotifyType::NAT_DETECTION_SOURCE_IP => nat_src.push(&n.data),
                    NotifyType::NAT_DETECTION_DESTINATION_IP => nat_dst = Some(&n.data),
                    NotifyType::IKEV2_FRAGMENTATION_SUPPORTED => frag = true,
                    _ => {}
                },
                _ => {}
            }
        }
        let nr = nr.ok_or(Error::MissingPayload("Nr"))?.clone();
        let suite =
            neg::check_ike_reply(sa_p.ok_or(Error::MissingPayload("SA"))?, &cfg.ike_proposals)?;
        let (group, ke_data) = ke_p.ok_or(Error::MissingPayload("KE"))?;
        let ke = sa
            .ke
            .take()
            .ok_or(Error::UnexpectedMessage("IKE_SA_INIT response twice"))?;
        if group != crate::crypto::group_number(ke.group()) || suite.dh != ke.group() {
            sa.ke = Some(ke);
            return Err(Error::InvalidKePayload {
                got: group,
                want: 0,
            });
        }
        let g_ir = ke.agree(ke_data)?;
        sa.spi_r = hdr.spi_r;
        let keys = ike_sa_keys(&suite, &sa.ni, &nr, &g_ir, sa.spi_i, sa.spi_r);
        sa.keys = Some(SaKeys::from_ike_keys(keys, &suite, true)?);
        sa.suite = Some(suite);
        sa.nr = nr;
        sa.init_resp = data.to_vec();
        sa.peer_frag = frag;
        sa.pending = None;
        sa.peer_msg_id = 0;
        // NAT detection with the SPIs of the response (2.23).
        let peer_natted = !nat_src.is_empty()
            && !nat_src
                .iter()
                .any(|h| h[..] == nat_detection_hash(sa.spi_i, sa.spi_r, sa.remote)[..]);
        let we_natted =
            nat_dst.is_some_and(|h| h[..] != nat_detection_hash(sa.spi_i, sa.spi_r, sa.local)[..]);
        if (peer_natted || we_natted) && sa.socket == SocketKind::Ike {
            // Move to the NAT-T ports (2.23, RFC 3948).
            sa.socket = SocketKind::NatT;
            sa.local = SocketAddr::new(sa.local.ip(), self.config.local_natt_port);
            sa.remote = SocketAddr::new(sa.remote.ip(), cfg.remote_natt_port);
            sa.udp_encap = true;
        }
        // IKE_AUTH (1.2, 2.15).
        let our_spi = self.new_esp_spi();
        let local_id = cfg.local_id.clone();
        let keys = sa.keys.as_ref().ok_or(Error::NoSuchSa)?;
        let octets = signed_octets(
            suite.prf,
            &sa.init_req,
            &sa.nr,
            &keys.sk_pi,
            &id_payload_body(&local_id),
        );
        let auth = auth_payloads(&cfg.auth, cfg.remote_id.as_ref(), suite.prf, &octets)?;
        let mut payloads = vec![Payload::IdI(local_id)];
        payloads.extend(auth_certreq(&cfg.auth));
        if cfg.initial_contact {
            payloads.push(notify(NotifyType::INITIAL_CONTACT, vec![]));
        }
        if let Some(r) = &cfg.remote_id {
            payloads.push(Payload::IdR(r.clone()));
        }
        payloads.extend(auth);
        if cfg.request_vip4 || cfg.request_vip6 {
            let mut attributes = Vec::new();
            if cfg.request_vip4 {
                attributes.push(CfgAttribute {
                    kind: CfgAttribute::INTERNAL_IP4_ADDRESS,
                    value: vec![],
                });
                attributes.push(CfgAttribute {
                    kind: CfgAttribute::INTERNAL_IP4_DNS,
                    value: vec![],
                });
            }
            if cfg.request_vip6 {
                attributes.push(CfgAttribute {
                    kind: CfgAttribute::INTERNAL_IP6_ADDRESS,
                    value: vec![],
                });
                attributes.push(CfgAttribute {
                    kind: CfgAttribute::INTERNAL_IP6_DNS,
                    value: vec![],
                });
            }
            payloads.push(Payload::Cfg {
                kind: CfgType::Request,
                attributes,
            });
        }
        payloads.push(Payload::Sa(neg::esp_offer(
            &cfg.esp_proposals,
            our_spi,
            None,
        )));
        payloads.push(Payload::TsI(initiator_tsi(&cfg)));
        payloads.push(Payload::TsR(initiator_tsr(&cfg)));
        sa.first_child = Some(FirstChild {
            our_spi,
            proposals: cfg.esp_proposals.clone(),
        });
        self.child_index.insert(our_spi, sa.id);
        sa.state = IkeSaState::AuthSent;
        self.send_request(
            now,
            sa,
            ExchangeType::IkeAuth,
            &payloads,
            PendingKind::IkeAuth,
        )?;
        Ok(After::Keep)
    }

    fn negotiation_failed(&mut self, remote: SocketAddr, identity: Option<Identity>, e: &Error) {
        self.counters.count_failure(e.label());
        // Unauthenticated failures can be driven by anyone: keep them off the info level.
        match &identity {
            Some(id) => {
                tracing::info!(%remote, identity = %id, error = %e, "IKE negotiation failed")
            }
            None => tracing::debug!(%remote, error = %e, "IKE negotiation failed"),
        }
        self.emit(Event::NegotiationFailed {
            remote,
            identity,
            reason: e.to_string(),
        });
    }

    // -----------------------------------------------------------------------------------
    // IKE_AUTH (RFC 7296 1.2, 2.15, 3.15)
    // -----------------------------------------------------------------------------------

    fn on_auth_request(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        to: (SocketKind, SocketAddr, SocketAddr),
        hdr: &Header,
        request_hash: [u8; 32],
        payloads: Vec<Payload>,
    ) -> Result<After, Error> {
        if sa.state != IkeSaState::InitDone || sa.initiator {
            return Err(Error::UnexpectedMessage("IKE_AUTH request"));
        }
        let config = self.config.clone();
        let rcfg = config
            .responder
            .as_ref()
            .ok_or(Error::UnexpectedMessage("IKE_AUTH"))?;
        let suite = sa.suite.ok_or(Error::NoSuchSa)?;
        let mut idi = None;
        let mut auth = None;
        let mut esp = None;
        let mut tsi = None;
        let mut tsr = None;
        let mut cfg_req = None;
        let mut initial_contact = false;
        for p in &payloads {
            match p {
                Payload::IdI(i) => idi = Some(i.clone()),
                Payload::Auth { method, data } => auth = Some((*method, data)),
                Payload::Sa(v) => esp = Some(v),
                Payload::TsI(v) => tsi = Some(v),
                Payload::TsR(v) => tsr = Some(v),
                Payload::Cfg {
                    kind: CfgType::Request,
                    attributes,
                } => cfg_req = Some(attributes),
                Payload::Notify(n) if n.kind == NotifyType::INITIAL_CONTACT => {
                    initial_contact = true
                }
                _ => {}
            }
        }
        let fail = |this: &mut Self,
                    sa: &mut IkeSa,
                    e: Error,
                    id: Option<Identity>|
         -> Result<After, Error> {
            // 2.21.2: answer AUTHENTICATION_FAILED, keep no state.
            let _ = this.send_response(
                sa,
                to,
                ExchangeType::IkeAuth,
                hdr.message_id,
                request_hash,
                &[notify(NotifyType::AUTHENTICATION_FAILED, vec![])],
            );
            this.negotiation_failed(to.2, id, &e);
            this.tombstone(now, sa);
            Ok(After::Remove(None))
        };
        let (Some(idi), Some((method, auth_data))) = (idi, auth) else {
            return fail(self, sa, Error::MissingPayload("IDi/AUTH"), None);
        };
        let keys = sa.keys.as_ref().ok_or(Error::NoSuchSa)?;
        let octets = signed_octets(
            suite.prf,
            &sa.init_req,
            &sa.nr,
            &keys.sk_pi,
            &id_payload_body(&idi),
        );
        match verify_auth(
            &rcfg.auth,
            &idi,
            suite.prf,
            &octets,
            method,
            auth_data,
            &payloads,
            self.wall_clock,
        ) {
            Ok(cn) => sa.remote_cert_cn = cn,
            Err(e) => return fail(self, sa, e, Some(idi)),
        }
        // Authenticated.
        sa.remote_id = Some(idi.clone());
        sa.local_id = Some(rcfg.local_id.clone());
        if initial_contact {
            // 2.4: the peer lost its state; drop the SAs it had with us. Before the pool
            // allocation below, so this SA may take over the same address.
            let old: Vec<IkeSaId> = self.by_identity.get(&idi).cloned().unwrap_or_default();
            for o in old {
                if let Some(osa) = self.sas.remove(&o) {
                    self.destroy(osa, Some(DeleteReason::InitialContact));
                }
            }
        }
        let local_id = rcfg.local_id.clone();
        let octets_r = signed_octets(
            suite.prf,
            &sa.init_resp,
            &sa.ni,
            &keys.sk_pr,
            &id_payload_body(&local_id),
        );
        let auth_r = auth_payloads(&rcfg.auth, Some(&idi), suite.prf, &octets_r)?;
        let mut resp = vec![Payload::IdR(local_id)];
        resp.extend(auth_r);
        sa.state = IkeSaState::Established;
        sa.established_at = Some(now);
        sa.expire_at = None;
        self.by_identity.entry(idi.clone()).or_default().push(sa.id);
        // The first CHILD SA; its failure does not fail the IKE SA (2.21.2).
        match self.responder_child(now, sa, cfg_req, esp, tsi, tsr, rcfg, true, None, None) {
            Ok((child_payloads, child)) => {
                resp.extend(child_payloads);
                self.established(sa);
                if let Some(c) = child {
                    self.install_child(sa, c, None);
                }
            }
            Err(e) => {
                let kind = NotifyType::try_from(&e).unwrap_or(NotifyType::NO_PROPOSAL_CHOSEN);
                tracing::info!(remote = %to.2, error = %e, "first CHILD SA refused");
                resp.push(notify(kind, vec![]));
                self.established(sa);
            }
        }
        self.send_response(
            sa,
            to,
            ExchangeType::IkeAuth,
            hdr.message_id,
            request_hash,
            &resp,
        )?;
        Ok(After::Keep)
    }

    fn established(&mut self, sa: &mut IkeSa) {
        self.counters.established += 1;
        // RealMessage1/2 were only needed for AUTH (2.15).
        sa.init_req = Vec::new();
        sa.init_resp = Vec::new();
        let now = sa.established_at.unwrap_or(sa.created);
        sa.ike_rekey_at = Some(now + self.jittered(sa, self.config.lifetimes.ike_rekey));
        tracing::info!(ike_sa = sa.id.0, remote = %sa.remote, remote_id = ?sa.remote_id, spi_i = format_args!("{:016x}", sa.spi_i), spi_r = format_args!("{:016x}", sa.spi_r), "IKE SA established");
        self.emit(Event::IkeSaEstablished {
            ike_sa: sa.id,
            local: sa.local,
            remote: sa.remote,
            local_id: sa.local_id.clone().unwrap_or(Identity::KeyId(vec![])),
            remote_id: sa.remote_id.clone().unwrap_or(Identity::KeyId(vec![])),
            remote_cert_cn: sa.remote_cert_cn.clone(),
            virtual_ips: sa.vips.clone(),
            udp_encap: sa.udp_encap,
        });
    }

    fn jittered(&self, sa: &mut IkeSa, d: Duration) -> Duration {
        let j = self.config.lifetimes.rekey_jitter.min(d / 2);
        if j.is_zero() {
            return d;
        }
        let frac: f64 = sa.rng.gen_range(0.0..1.0);
        d - j.mul_f64(frac)
    }

    /// Responder side of a CHILD SA negotiation (IKE_AUTH or CREATE_CHILD_SA): CP,
    /// proposal, TS narrowing (2.9), keys (2.17). Returns the response payloads.
    #[allow(clippy::too_many_arguments)]
    fn responder_child(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        cfg_req: Option<&Vec<CfgAttribute>>,
        esp: Option<&Vec<crate::message::Proposal>>,
        tsi: Option<&Vec<TrafficSelector>>,
        tsr: Option<&Vec<TrafficSelector>>,
        rcfg: &crate::config::ResponderConfig,
        first: bool,
        nonces: Option<(&[u8], &[u8])>,
        g_ir: Option<&[u8]>,
    ) -> Result<(Vec<Payload>, Option<Child>), Error> {
        let mut out = Vec::new();
        if let Some(attrs) = cfg_req {
            let want4 = attrs
                .iter()
                .any(|a| a.kind == CfgAttribute::INTERNAL_IP4_ADDRESS);
            let want6 = attrs
                .iter()
                .any(|a| a.kind == CfgAttribute::INTERNAL_IP6_ADDRESS);
            let rid = sa.remote_id.clone().ok_or(Error::NoSuchSa)?;
            let mut reply = Vec::new();
            let mut any = false;
            if want4 && self.pool.has_v4() {
                if let Ok(IpAddr::V4(a)) = self.pool.allocate(sa.id, &rid, false) {
                    reply.push(CfgAttribute {
                        kind: CfgAttribute::INTERNAL_IP4_ADDRESS,
                        value: a.octets().to_vec(),
                    });
                    any = true;
                }
            }
            if want6 && self.pool.has_v6() {
                if let Ok(IpAddr::V6(a)) = self.pool.allocate(sa.id, &rid, true) {
                    let mut v = a.octets().to_vec();
                    v.push(128);
                    reply.push(CfgAttribute {
                        kind: CfgAttribute::INTERNAL_IP6_ADDRESS,
                        value: v,
                    });
                    any = true;
                }
            }
            if (want4 || want6) && !any {
                return Err(Error::InternalAddressFailure);
            }
            for d in self.pool.dns() {
                match d {
                    IpAddr::V4(a) if want4 => reply.push(CfgAttribute {
                        kind: CfgAttribute::INTERNAL_IP4_DNS,
                        value: a.octets().to_vec(),
                    }),
                    IpAddr::V6(a) if want6 => reply.push(CfgAttribute {
                        kind: CfgAttribute::INTERNAL_IP6_DNS,
                        value: a.octets().to_vec(),
                    }),
                    _ => {}
                }
            }
            sa.vips = self.pool.addresses(sa.id).to_vec();
            out.push(Payload::Cfg {
                kind: CfgType::Reply,
                attributes: reply,
            });
        }
        let (Some(esp), Some(tsi), Some(tsr)) = (esp, tsi, tsr) else {
            if first {
                // IKE_AUTH without a CHILD SA (RFC 6023 style): fine, nothing to install.
                return Ok((out, None));
            }
            return Err(Error::MissingPayload("SA/TSi/TSr"));
        };
        let (esp_suite, mut chosen, peer_spi) =
            neg::select_esp(esp, &rcfg.esp_proposals, !first, None)?;
        let (ts_i, ts_r) = neg::narrow(tsi, tsr, &rcfg.local_ts, &sa.vips)?;
        let our_spi = self.new_esp_spi();
        chosen.spi = our_spi.0.to_be_bytes().to_vec();
        let keys = sa.keys.as_ref().ok_or(Error::NoSuchSa)?;
        let (ni, nr) = nonces.unwrap_or((&sa.ni, &sa.nr));
        let (i2r, r2i) = child_sa_keys(
            keys.prf,
            &keys.sk_d,
            g_ir,
            ni,
            nr,
            esp_suite.encr,
            esp_suite.integ,
        );
        let child = self.make_child(
            sa,
            now,
            esp_suite,
            our_spi,
            peer_spi,
            i2r,
            r2i,
            false,
            ts_r.clone(),
            ts_i.clone(),
        );
        out.push(Payload::Sa(vec![chosen]));
        out.push(Payload::TsI(ts_i));
        out.push(Payload::TsR(ts_r));
        Ok((out, Some(child)))
    }

    /// Build a CHILD SA. `we_initiated` says whether we initiated the exchange that
    /// created it (i2r keys are then outbound, 2.17).
    #[allow(clippy::too_many_arguments)]
    fn make_child(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        s: EspSuite,
        our_spi: Spi,
        peer_spi: Spi,
        i2r: EspKeyMaterial,
        r2i: EspKeyMaterial,
        we_initiated: bool,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
    ) -> Child {
        let (inb, outb) = if we_initiated { (r2i, i2r) } else { (i2r, r2i) };
        let keys = |spi: Spi, m: EspKeyMaterial| EspKeys {
            spi,
            encr: s.encr,
            encr_key: m.encr_key,
            integ: s.integ,
            integ_key: m.integ_key,
            esn: s.esn,
        };
        let rekey = self.jittered(sa, self.config.lifetimes.child_rekey);
        Child {
            sa: ChildSa {
                ike_sa: sa.id,
                inbound: keys(our_spi, inb),
                outbound: keys(peer_spi, outb),
                local_ts,
                remote_ts,
                local: sa.local,
                remote: sa.remote,
                udp_encap: sa.udp_encap,
            },
            state: ChildState::Installed,
            pfs_group: s.dh,
            established_at: now,
            rekey_at: Some(now + rekey),
            peer_rekey: None,
        }
    }

    /// Install a CHILD SA and announce it (as new, or as the rekey of `old`).
    /// `old`: the rekeyed pair's inbound SPI, whether we initiated the rekey, and whether
    /// the new SA is the redundant one of a simultaneous rekey (2.8.1).
    fn install_child(&mut self, sa: &mut IkeSa, child: Child, old: Option<(Spi, bool, bool)>) {
        self.child_index.insert(child.sa.inbound.spi, sa.id);
        tracing::debug!(
            ike_sa = sa.id.0,
            inbound = format_args!("{:08x}", child.sa.inbound.spi.0),
            outbound = format_args!("{:08x}", child.sa.outbound.spi.0),
            "CHILD SA installed"
        );
        let ev = match old {
            None => Event::ChildSaInstalled(child.sa.clone()),
            Some((old_inbound, initiator, redundant)) => Event::ChildSaRekeyed {
                old_inbound,
                new: child.sa.clone(),
                initiator,
                redundant,
            },
        };
        sa.children.push(child);
        self.emit(ev);
    }

    fn remove_child(&mut self, sa: &mut IkeSa, inbound: Spi) {
        if let Some(pos) = sa.children.iter().position(|c| c.sa.inbound.spi == inbound) {
            let c = sa.children.remove(pos);
            self.child_index.remove(&inbound);
            self.emit(Event::ChildSaDeleted {
                ike_sa: sa.id,
                inbound,
                outbound: c.sa.outbound.spi,
            });
        }
    }

    fn on_auth_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        payloads: Vec<Payload>,
    ) -> Result<After, Error> {
        let cfg = sa.icfg.clone().ok_or(Error::NoSuchSa)?;
        let suite = sa.suite.ok_or(Error::NoSuchSa)?;
        let first_child = sa.first_child.take();
        if let Some(fc) = &first_child {
            self.child_index.remove(&fc.our_spi);
        }
        let mut idr = None;
        let mut auth = None;
        let mut esp = None;
        let mut tsi = None;
        let mut tsr = None;
        let mut cfg_reply = None;
        let mut errors = Vec::new();
        for p in &payloads {
            match p {
                Payload::IdR(i) => idr = Some(i.clone()),
                Payload::Auth { method, data } => auth = Some((*method, data)),
                Payload::Sa(v) => esp = Some(v),
                Payload::TsI(v) => tsi = Some(v),
                Payload::TsR(v) => tsr = Some(v),
                Payload::Cfg {
                    kind: CfgType::Reply,
                    attributes,
                } => cfg_reply = Some(attributes),
                Payload::Notify(n) if n.kind.is_error() => errors.push(n.kind),
                _ => {}
            }
        }
        let (Some(idr), Some((method, auth_data))) = (idr, auth) else {
            let reason = errors
                .first()
                .map(|k| notify_name(*k))
                .unwrap_or_else(|| "missing IDr/AUTH".into());
            self.counters.count_failure(
                errors
                    .first()
                    .map_or("missing_payload", |k| peer_notify_label(*k)),
            );
            tracing::info!(remote = %sa.remote, %reason, "IKE_AUTH failed");
            self.emit(Event::NegotiationFailed {
                remote: sa.remote,
                identity: cfg.remote_id.clone(),
                reason: reason.clone(),
            });
            return Ok(After::Remove(Some(DeleteReason::Failed(reason))));
        };
        let keys = sa.keys.as_ref().ok_or(Error::NoSuchSa)?;
        let octets = signed_octets(
            suite.prf,
            &sa.init_resp,
            &sa.ni,
            &keys.sk_pr,
            &id_payload_body(&idr),
        );
        let verified = match &cfg.remote_id {
            Some(want) if *want != idr => Err(Error::AuthenticationFailed(format!(
                "responder identity {idr} is not {want}"
            ))),
            _ => verify_auth(
                &cfg.auth,
                &idr,
                suite.prf,
                &octets,
                method,
                auth_data,
                &payloads,
                self.wall_clock,
            ),
        };
        if let Ok(cn) = &verified {
            sa.remote_cert_cn.clone_from(cn);
        }
        if let Err(e) = verified {
            self.negotiation_failed(sa.remote, Some(idr), &e);
            // 2.21.2: we could tell the responder in an INFORMATIONAL; the SA is simply dropped.
            return Ok(After::Remove(Some(DeleteReason::Failed(
                "AUTHENTICATION_FAILED".into(),
            ))));
        }
        sa.remote_id = Some(idr);
        sa.state = IkeSaState::Established;
        sa.established_at = Some(now);
        if let Some(attrs) = cfg_reply {
            sa.vips = attrs
                .iter()
                .filter_map(crate::message::cfg_address)
                .collect();
        }
        self.established(sa);
        let child = (|| -> Result<Child, Error> {
            if let Some(k) = errors.first() {
                return Err(Error::InvalidField {
                    field: "IKE_AUTH child",
                    detail: notify_name(*k),
                });
            }
            let fc = first_child.ok_or(Error::NoSuchSa)?;
            let (s, peer_spi) = neg::check_esp_reply(
                esp.ok_or(Error::MissingPayload("SA"))?,
                &fc.proposals,
                false,
            )?;
            let keys = sa.keys.as_ref().ok_or(Error::NoSuchSa)?;
            let (i2r, r2i) =
                child_sa_keys(keys.prf, &keys.sk_d, None, &sa.ni, &sa.nr, s.encr, s.integ);
            let ts_i = tsi.ok_or(Error::MissingPayload("TSi"))?.clone();
            let ts_r = tsr.ok_or(Error::MissingPayload("TSr"))?.clone();
            // The responder may only narrow what we asked (2.9).
            if !neg::ts_within(&ts_i, &initiator_tsi(&cfg))
                || !neg::ts_within(&ts_r, &initiator_tsr(&cfg))
            {
                return Err(Error::TsUnacceptable);
            }
            Ok(self.make_child(sa, now, s, fc.our_spi, peer_spi, i2r, r2i, true, ts_i, ts_r))
        })();
        match child {
            Ok(c) => self.install_child(sa, c, None),
            Err(e) => {
                // An IKE SA without its CHILD SA is of no use to a peer router: delete it.
                tracing::info!(ike_sa = sa.id.0, error = %e, "first CHILD SA failed");
                sa.delete_reason = Some(DeleteReason::Failed(e.to_string()));
                sa.queue.push_front(LocalReq::DeleteIke);
            }
        }
        Ok(After::Keep)
    }

    // -----------------------------------------------------------------------------------
    // CREATE_CHILD_SA (RFC 7296 1.3, 2.8, 2.8.1, 2.18)
    // -----------------------------------------------------------------------------------

    fn start_child_rekey(&mut self, now: Instant, sa: &mut IkeSa, old: Spi) -> Result<(), Error> {
        let Some(c) = sa.child_by_inbound(old) else {
            return Ok(());
        };
        if c.state != ChildState::Installed {
            return Ok(());
        }
        c.state = ChildState::Rekeying;
        c.peer_rekey = None;
        let (local_ts, remote_ts, pfs) =
            (c.sa.local_ts.clone(), c.sa.remote_ts.clone(), c.pfs_group);
        let rekey_sa = Payload::Notify(Notify {
            protocol: ProtocolId::Esp,
            spi: old.0.to_be_bytes().to_vec(),
            kind: NotifyType::REKEY_SA,
            data: vec![],
        });
        let (payloads, our_spi, ni, ke) =
            self.child_offer(sa, Some(rekey_sa), pfs, local_ts, remote_ts)?;
        self.send_request(
            now,
            sa,
            ExchangeType::CreateChildSa,
            &payloads,
            PendingKind::RekeyChild {
                old,
                our_spi,
                ni,
                ke,
                peer: None,
            },
        )
    }

    /// A CREATE_CHILD_SA request's payloads for a new CHILD SA (2.17, 1.3.1): [`notify`]
    /// (REKEY_SA for a rekey), SA with a fresh inbound SPI (reserved in the child
    /// index), Ni, KEi when a group applies (`group`, else our first configured one:
    /// PFS), TSi, TSr (from our point of view as the exchange initiator, 2.9).
    #[allow(clippy::type_complexity)]
    fn child_offer(
        &mut self,
        sa: &mut IkeSa,
        notify: Option<Payload>,
        group: Option<crate::config::DhGroup>,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
    ) -> Result<(Vec<Payload>, Spi, Vec<u8>, Option<KeyExchange>), Error> {
        let proposals = self.esp_proposals(sa);
        let our_spi = self.new_esp_spi();
        self.child_index.insert(our_spi, sa.id);
        let ni = random_nonce(&mut sa.rng);
        let group = group.or_else(|| proposals.iter().flat_map(|p| p.dh.first()).next().copied());
        let ke = match group {
            Some(g) => Some(KeyExchange::generate(g, &mut sa.rng)?),
            None => None,
        };
        let mut payloads: Vec<Payload> = notify.into_iter().collect();
        payloads.push(Payload::Sa(neg::esp_offer(&proposals, our_spi, group)));
        payloads.push(Payload::Nonce(ni.clone()));
        if let Some(k) = &ke {
            payloads.push(Payload::Ke {
                group: crate::crypto::group_number(k.group()),
                data: k.public_value().to_vec(),
            });
        }
        payloads.push(Payload::TsI(local_ts));
        payloads.push(Payload::TsR(remote_ts));
        Ok((payloads, our_spi, ni, ke))
    }

    /// CREATE_CHILD_SA for another CHILD SA on this IKE SA (1.3.1).
    fn start_create_child(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
    ) -> Result<(), Error> {
        let asked = (local_ts.clone(), remote_ts.clone());
        let (payloads, our_spi, ni, ke) = self.child_offer(sa, None, None, local_ts, remote_ts)?;
        self.send_request(
            now,
            sa,
            ExchangeType::CreateChildSa,
            &payloads,
            PendingKind::CreateChild {
                our_spi,
                ni,
                ke,
                asked,
            },
        )
    }

    fn esp_proposals(&self, sa: &IkeSa) -> Vec<EspProposal> {
        match (&sa.icfg, &self.config.responder) {
            (Some(c), _) => c.esp_proposals.clone(),
            (None, Some(r)) => r.esp_proposals.clone(),
            (None, None) => Vec::new(),
        }
    }

    fn start_ike_rekey(&mut self, now: Instant, sa: &mut IkeSa) -> Result<(), Error> {
        let proposals = match (&sa.icfg, &self.config.responder) {
            (Some(c), _) => c.ike_proposals.clone(),
            (None, Some(r)) => r.ike_proposals.clone(),
            (None, None) => return Ok(()),
        };
        // Prefer the group in use.
        let group = sa.suite.map(|s| s.dh).ok_or(Error::NoSuchSa)?;
        let new_spi = self.new_ike_spi();
        self.by_spi.insert(new_spi, sa.id);
        let ni = random_nonce(&mut sa.rng);
        let ke = KeyExchange::generate(group, &mut sa.rng)?;
        let offer = neg::ike_offer_preferring(&proposals, new_spi, group);
        let payloads = vec![
            Payload::Sa(offer),
            Payload::Nonce(ni.clone()),
            Payload::Ke {
                group: crate::crypto::group_number(group),
                data: ke.public_value().to_vec(),
            },
        ];
        self.send_request(
            now,
            sa,
            ExchangeType::CreateChildSa,
            &payloads,
            PendingKind::RekeyIke {
                new_spi,
                ni,
                ke: Some(ke),
            },
        )
    }

    fn on_create_child_request(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        to: (SocketKind, SocketAddr, SocketAddr),
        hdr: &Header,
        request_hash: [u8; 32],
        payloads: Vec<Payload>,
    ) -> Result<After, Error> {
        if let Some(kind) = self.collision_answer(sa, &payloads) {
            if kind == NotifyType::TEMPORARY_FAILURE {
                self.counters.temporary_failures += 1;
            }
            self.send_response(
                sa,
                to,
                ExchangeType::CreateChildSa,
                hdr.message_id,
                request_hash,
                &[notify(kind, vec![])],
            )?;
            return Ok(After::Keep);
        }
        let r = self.create_child_response(now, sa, &payloads);
        let resp = match r {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(ike_sa = sa.id.0, error = %e, "CREATE_CHILD_SA refused");
                let kind = NotifyType::try_from(&e).unwrap_or(NotifyType::NO_PROPOSAL_CHOSEN);
                if kind == NotifyType::TEMPORARY_FAILURE {
                    self.counters.temporary_failures += 1;
                }
                let data = match e {
                    Error::InvalidKePayload { want, .. } => want.to_be_bytes().to_vec(),
                    _ => vec![],
                };
                vec![notify(kind, data)]
            }
        };
        self.send_response(
            sa,
            to,
            ExchangeType::CreateChildSa,
            hdr.message_id,
            request_hash,
            &resp,
        )?;
        Ok(After::Keep)
    }

    /// RFC 7296 2.25: a CREATE_CHILD_SA request that collides with a rekey or close of
    /// the IKE SA. `None`: answer it as usual. A request to rekey the IKE SA while we
    /// rekey it ourselves is answered as usual (2.8.1); anything else while the IKE SA is
    /// being rekeyed or closed gets TEMPORARY_FAILURE, and a CHILD SA rekey naming an SA
    /// that exists neither here nor on the successor gets CHILD_SA_NOT_FOUND.
    fn collision_answer(&self, sa: &IkeSa, payloads: &[Payload]) -> Option<NotifyType> {
        let ike_rekey_in_flight = sa.peer_ike_rekey.is_some()
            || matches!(
                sa.pending.as_ref().map(|p| &p.kind),
                Some(PendingKind::RekeyIke { .. })
            );
        let is_ike_rekey = payloads.iter().any(|p| match p {
            Payload::Sa(v) => v.iter().any(|p| p.protocol == ProtocolId::Ike),
            _ => false,
        });
        if sa.state == IkeSaState::Established
            && !sa.hidden
            && (is_ike_rekey || !ike_rekey_in_flight)
        {
            return None;
        }
        let rekey_spi = payloads.iter().find_map(|p| match p {
            Payload::Notify(n) if n.kind == NotifyType::REKEY_SA => n
                .spi
                .get(..4)
                .map(|b| Spi(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
            _ => None,
        });
        if let Some(spi) = rekey_spi {
            let known = |s: &IkeSa| {
                s.children
                    .iter()
                    .any(|c| c.sa.outbound.spi == spi || c.sa.inbound.spi == spi)
            };
            let on_successor = sa
                .successor
                .and_then(|id| self.sas.get(&id))
                .is_some_and(known);
            if !known(sa) && !on_successor {
                return Some(NotifyType::CHILD_SA_NOT_FOUND);
            }
        }
        Some(NotifyType::TEMPORARY_FAILURE)
    }

    fn create_child_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        payloads: &[Payload],
    ) -> Result<Vec<Payload>, Error> {
        let mut sa_p = None;
        let mut ni = None;
        let mut ke_p = None;
        let mut tsi = None;
        let mut tsr = None;
        let mut rekey = None;
        for p in payloads {
            match p {
                Payload::Sa(v) => sa_p = Some(v),
                Payload::Nonce(n) => ni = Some(n),
                Payload::Ke { group, data } => ke_p = Some((*group, data)),
                Payload::TsI(v) => tsi = Some(v),
                Payload::TsR(v) => tsr = Some(v),
                Payload::Notify(n) if n.kind == NotifyType::REKEY_SA => rekey = Some(n),
                _ => {}
            }
        }
        let offered = sa_p.ok_or(Error::MissingPayload("SA"))?;
        let ni = ni.ok_or(Error::MissingPayload("Ni"))?.clone();
        let nr = random_nonce(&mut sa.rng);
        if offered.iter().any(|p| p.protocol == ProtocolId::Ike) {
            return self.respond_ike_rekey(now, sa, offered, ni, nr, ke_p);
        }
        let rcfg_esp = self.esp_proposals(sa);
        // Child SA: new or rekey.
        let old_idx = match rekey {
            Some(n) => {
                let spi = n
                    .spi
                    .get(..4)
                    .map(|b| Spi(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
                    .ok_or(Error::InvalidField {
                        field: "REKEY_SA SPI",
                        detail: "not 4 octets".into(),
                    })?;
                let idx = sa
                    .child_index_by_outbound(spi)
                    .or_else(|| sa.children.iter().position(|c| c.sa.inbound.spi == spi))
                    .ok_or(Error::ChildSaNotFound(spi.0))?;
                if !matches!(
                    sa.children[idx].state,
                    ChildState::Installed | ChildState::Rekeying
                ) {
                    return Err(Error::TemporaryFailure("CHILD SA is being deleted"));
                }
                Some(idx)
            }
            None => None,
        };
        let (s, mut chosen, peer_spi) =
            neg::select_esp(offered, &rcfg_esp, true, ke_p.map(|(g, _)| g))?;
        let mut g_ir = None;
        let mut ke_out = None;
        if let Some(g) = s.dh {
            let want = crate::crypto::group_number(g);
            let (got, data) = ke_p.ok_or(Error::InvalidKePayload { got: 0, want })?;
            if got != want {
                return Err(Error::InvalidKePayload { got, want });
            }
            let ke = KeyExchange::generate(g, &mut sa.rng)?;
            ke_out = Some(Payload::Ke {
                group: want,
                data: ke.public_value().to_vec(),
            });
            g_ir = Some(ke.agree(data)?);
        }
        let (ts_i, ts_r) = match old_idx {
            // A rekey keeps the selectors (2.8).
            Some(i) => (
                sa.children[i].sa.remote_ts.clone(),
                sa.children[i].sa.local_ts.clone(),
            ),
            None => {
                let local_ts = self
                    .config
                    .responder
                    .as_ref()
                    .map(|r| r.local_ts.clone())
                    .unwrap_or_default();
                let (tsi, tsr) = (
                    tsi.ok_or(Error::MissingPayload("TSi"))?,
                    tsr.ok_or(Error::MissingPayload("TSr"))?,
                );
                neg::narrow(tsi, tsr, &local_ts, &sa.vips)?
            }
        };
        let our_spi = self.new_esp_spi();
        chosen.spi = our_spi.0.to_be_bytes().to_vec();
        let keys = sa.keys.as_ref().ok_or(Error::NoSuchSa)?;
        let (i2r, r2i) = child_sa_keys(
            keys.prf,
            &keys.sk_d,
            g_ir.as_ref().map(|g| g.as_slice()),
            &ni,
            &nr,
            s.encr,
            s.integ,
        );
        let child = self.make_child(
            sa,
            now,
            s,
            our_spi,
            peer_spi,
            i2r,
            r2i,
            false,
            ts_r.clone(),
            ts_i.clone(),
        );
        let old = old_idx.map(|i| {
            let c = &mut sa.children[i];
            if c.state == ChildState::Rekeying {
                // Simultaneous rekey (2.8.1): remember the peer's exchange.
                c.peer_rekey = Some((our_spi, ni.clone(), nr.clone()));
            } else {
                c.state = ChildState::Rekeyed;
            }
            c.sa.inbound.spi
        });
        self.install_child(sa, child, old.map(|o| (o, false, false)));
        let mut out = vec![Payload::Sa(vec![chosen]), Payload::Nonce(nr)];
        if let Some(k) = ke_out {
            out.push(k);
        }
        out.push(Payload::TsI(ts_i));
        out.push(Payload::TsR(ts_r));
        Ok(out)
    }

    fn respond_ike_rekey(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        offered: &[crate::message::Proposal],
        ni: Vec<u8>,
        nr: Vec<u8>,
        ke_p: Option<(u16, &Vec<u8>)>,
    ) -> Result<Vec<Payload>, Error> {
        let proposals = match (&sa.icfg, &self.config.responder) {
            (Some(c), _) => c.ike_proposals.clone(),
            (None, Some(r)) => r.ike_proposals.clone(),
            (None, None) => return Err(Error::NoProposalChosen),
        };
        // Simultaneous IKE rekey (2.8.1, 2.25.2): answer as usual; which new SA survives
        // is decided when our own exchange completes.
        let collision = matches!(
            sa.pending.as_ref().map(|p| &p.kind),
            Some(PendingKind::RekeyIke { .. })
        );
        if collision && sa.peer_ike_rekey.is_some() {
            return Err(Error::TemporaryFailure("IKE SA rekey in progress"));
        }
        let (suite, mut chosen) = neg::select_ike(offered, &proposals, ke_p.map(|(g, _)| g))?;
        let peer_spi = chosen
            .spi
            .get(..8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
            .filter(|s| *s != 0)
            .ok_or(Error::InvalidField {
                field: "IKE rekey SPI",
                detail: "not 8 octets".into(),
            })?;
        let want = crate::crypto::group_number(suite.dh);
        let (got, data) = ke_p.ok_or(Error::InvalidKePayload { got: 0, want })?;
        if got != want {
            return Err(Error::InvalidKePayload { got, want });
        }
        let ke = KeyExchange::generate(suite.dh, &mut sa.rng)?;
        let our_pub = ke.public_value().to_vec();
        let g_ir = ke.agree(data)?;
        let new_spi = self.new_ike_spi();
        chosen.spi = new_spi.to_be_bytes().to_vec();
        let old = sa.keys.as_ref().ok_or(Error::NoSuchSa)?;
        // The peer initiated this rekey: it is the new SA's original initiator (2.18).
        let keys = rekeyed_ike_sa_keys(
            &suite, old.prf, &old.sk_d, &g_ir, &ni, &nr, peer_spi, new_spi,
        );
        let new_keys = SaKeys::from_ike_keys(keys, &suite, false)?;
        let id = self.rekeyed_sa(
            now, sa, false, peer_spi, new_spi, suite, new_keys, &ni, &nr, !collision,
        );
        if collision {
            self.counters.ike_rekey_collisions += 1;
            tracing::debug!(ike_sa = sa.id.0, "simultaneous IKE SA rekey");
            sa.peer_ike_rekey = Some((id, ni, nr.clone()));
        } else {
            sa.state = IkeSaState::Rekeyed;
            sa.queue.clear();
            // The peer, initiator of the rekey, deletes this SA (2.18).
            sa.expire_at = Some(now + self.rekey_linger());
        }
        Ok(vec![
            Payload::Sa(vec![chosen]),
            Payload::Nonce(nr),
            Payload::Ke {
                group: want,
                data: our_pub,
            },
        ])
    }

    fn rekey_linger(&self) -> Duration {
        let r = &self.config.retransmit;
        r.initial.saturating_mul(1u32 << (r.tries.min(16) + 1))
    }

    /// Create the IKE SA that replaces `old` (2.18). With `adopt`, CHILD SAs, leases and
    /// identities move over and the rekey is announced; without, the new SA stays hidden
    /// until [`Endpoint::adopt_hidden`] picks it as the survivor of a collision (2.8.1)
    /// or it is deleted as the redundant one. Returns its id.
    #[allow(clippy::too_many_arguments)]
    fn rekeyed_sa(
        &mut self,
        now: Instant,
        old: &mut IkeSa,
        we_initiated: bool,
        spi_i: u64,
        spi_r: u64,
        suite: IkeSuite,
        keys: SaKeys,
        ni: &[u8],
        nr: &[u8],
        adopt: bool,
    ) -> IkeSaId {
        let id = self.alloc_id();
        let rng = self.derive_rng();
        let mut sa = new_sa(
            id,
            we_initiated,
            spi_i,
            spi_r,
            old.socket,
            old.local,
            old.remote,
            rng,
            now,
        );
        sa.udp_encap = old.udp_encap;
        sa.icfg = old.icfg.clone();
        sa.suite = Some(suite);
        sa.keys = Some(keys);
        sa.ni = ni.to_vec();
        sa.nr = nr.to_vec();
        sa.local_id = old.local_id.clone();
        sa.remote_id = old.remote_id.clone();
        sa.remote_cert_cn = old.remote_cert_cn.clone();
        sa.peer_frag = old.peer_frag;
        sa.state = IkeSaState::Established;
        sa.established_at = Some(now);
        sa.next_msg_id = 0;
        sa.peer_msg_id = 0;
        self.by_spi.insert(sa.our_spi(), id);
        if adopt {
            self.adopt(now, old, &mut sa);
        } else {
            // Backstop: the peer deletes it if it is the redundant one and the Delete
            // may be lost.
            sa.hidden = true;
            sa.expire_at = Some(now + self.rekey_linger());
        }
        self.finish(now, sa, After::Keep);
        id
    }

    /// Make `sa` the successor of `old`: CHILD SAs, leases and the identity move over and
    /// `IkeSaRekeyed` is announced (2.8). CHILD SA rekeys that were in flight on `old`
    /// are retried on `sa` shortly (2.25: the peer refuses them while the IKE SA is being
    /// rekeyed).
    fn adopt(&mut self, now: Instant, old: &mut IkeSa, sa: &mut IkeSa) {
        let id = sa.id;
        sa.hidden = false;
        sa.expire_at = None;
        sa.vips = std::mem::take(&mut old.vips);
        self.pool.transfer(old.id, id);
        let retry = now + self.config.retransmit.initial;
        for mut c in old.children.drain(..) {
            c.sa.ike_sa = id;
            if c.state == ChildState::Rekeying {
                c.state = ChildState::Installed;
                c.peer_rekey = None;
                c.rekey_at = Some(retry);
            }
            self.child_index.insert(c.sa.inbound.spi, id);
            sa.children.push(c);
        }
        if let Some(rid) = &sa.remote_id {
            let v = self.by_identity.entry(rid.clone()).or_default();
            v.retain(|x| *x != old.id);
            v.push(id);
        }
        sa.ike_rekey_at = Some(now + self.jittered(sa, self.config.lifetimes.ike_rekey));
        old.successor = Some(id);
        tracing::info!(old = old.id.0, new = id.0, remote = %sa.remote, "IKE SA rekeyed");
        self.emit(Event::IkeSaRekeyed {
            old: old.id,
            new: id,
        });
    }

    /// Adopt the hidden SA `id` as the successor of `old` (2.8.1).
    fn adopt_hidden(&mut self, now: Instant, old: &mut IkeSa, id: IkeSaId) {
        if let Some(mut sa) = self.sas.remove(&id) {
            self.adopt(now, old, &mut sa);
            self.finish(now, sa, After::Keep);
        }
        old.state = IkeSaState::Rekeyed;
        old.queue.clear();
    }

    /// Queue a Delete of the IKE SA `id` and start it if its window is free.
    fn delete_other(&mut self, now: Instant, id: IkeSaId) {
        if let Some(mut sa) = self.sas.remove(&id) {
            if !sa.queue.contains(&LocalReq::DeleteIke) {
                sa.queue.push_back(LocalReq::DeleteIke);
            }
            self.kick(now, &mut sa);
            self.finish(now, sa, After::Keep);
        }
    }

    // -----------------------------------------------------------------------------------
    // INFORMATIONAL (RFC 7296 1.4, 2.4)
    // -----------------------------------------------------------------------------------

    fn on_informational_request(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        to: (SocketKind, SocketAddr, SocketAddr),
        hdr: &Header,
        request_hash: [u8; 32],
        payloads: Vec<Payload>,
    ) -> Result<After, Error> {
        let mut resp = Vec::new();
        let mut delete_ike = false;
        let mut ours = Vec::new();
        for p in &payloads {
            if let Payload::Delete(d) = p {
                match d.protocol {
                    ProtocolId::Ike => delete_ike = true,
                    ProtocolId::Esp => {
                        for spi in &d.spis {
                            // The peer names its inbound SPIs: our outbound (1.4.1).
                            if let Some(i) = sa.child_index_by_outbound(*spi) {
                                let c = &mut sa.children[i];
                                let inbound = c.sa.inbound.spi;
                                // 2.8.1: the peer's rekey of this SA, which we answered
                                // while ours was in flight, won: remember it for our
                                // answer, whose SA is then the redundant one.
                                if let (
                                    Some(p),
                                    Some(Pending {
                                        kind: PendingKind::RekeyChild { old, peer, .. },
                                        ..
                                    }),
                                ) = (c.peer_rekey.take(), sa.pending.as_mut())
                                {
                                    if *old == inbound {
                                        *peer = Some(p);
                                    }
                                }
                                let c = &sa.children[i];
                                // Answer with our side unless we are deleting it ourselves.
                                if c.state != ChildState::Deleting {
                                    ours.push(inbound);
                                }
                                self.remove_child(sa, inbound);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if delete_ike {
            // 2.25.2: the peer closes the old SA while our rekey of it is in flight; it
            // only does so once its own rekey, which we answered, survived (2.8.1).
            if let Some((theirs, _, _)) = sa.peer_ike_rekey.take() {
                self.adopt_hidden(now, sa, theirs);
            }
            self.send_response(
                sa,
                to,
                ExchangeType::Informational,
                hdr.message_id,
                request_hash,
                &[],
            )?;
            let reason = if sa.state == IkeSaState::Rekeyed {
                DeleteReason::Rekeyed
            } else {
                DeleteReason::PeerDeleted
            };
            return Ok(After::Remove(Some(reason)));
        }
        if !ours.is_empty() {
            resp.push(Payload::Delete(Delete {
                protocol: ProtocolId::Esp,
                spis: ours,
            }));
        }
        self.send_response(
            sa,
            to,
            ExchangeType::Informational,
            hdr.message_id,
            request_hash,
            &resp,
        )?;
        Ok(After::Keep)
    }

    // -----------------------------------------------------------------------------------
    // Responses to our requests
    // -----------------------------------------------------------------------------------

    fn on_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        _hdr: &Header,
        pending: Pending,
        payloads: Vec<Payload>,
    ) -> Result<After, Error> {
        match pending.kind {
            PendingKind::IkeSaInit => {
                Err(Error::UnexpectedMessage("protected IKE_SA_INIT response"))
            }
            PendingKind::IkeAuth => self.on_auth_response(now, sa, payloads),
            PendingKind::Dpd => Ok(After::Keep),
            PendingKind::DeleteIke => {
                let reason = if sa.state == IkeSaState::Rekeyed {
                    DeleteReason::Rekeyed
                } else {
                    sa.delete_reason
                        .clone()
                        .unwrap_or(DeleteReason::LocalDelete)
                };
                Ok(After::Remove(Some(reason)))
            }
            PendingKind::DeleteChild(spis) => {
                for s in spis {
                    self.remove_child(sa, s);
                }
                Ok(After::Keep)
            }
            PendingKind::RekeyChild {
                old,
                our_spi,
                ni,
                ke,
                peer,
            } => {
                let r =
                    self.on_child_rekey_response(now, sa, old, our_spi, ni, ke, peer, &payloads);
                if r.is_ok() {
                    self.hand_over_late_children(now, sa, old);
                }
                if let Err(e) = r {
                    self.child_index.remove(&our_spi);
                    if let Some(c) = sa.child_by_inbound(old) {
                        if c.state == ChildState::Rekeying && c.peer_rekey.take().is_some() {
                            // 2.8.1: our rekey failed but the peer's, which we answered,
                            // completed: the old SA is replaced and the peer deletes it.
                            c.state = ChildState::Rekeyed;
                        } else if c.state == ChildState::Rekeying {
                            c.state = ChildState::Installed;
                            c.rekey_at = Some(now + self.config.retransmit.initial);
                        }
                    }
                    tracing::debug!(ike_sa = sa.id.0, error = %e, "CHILD SA rekey failed");
                }
                Ok(After::Keep)
            }
            PendingKind::CreateChild {
                our_spi,
                ni,
                ke,
                asked,
            } => {
                let r = self.on_create_child_response(now, sa, our_spi, ni, ke, asked, &payloads);
                if let Err(e) = r {
                    self.child_index.remove(&our_spi);
                    tracing::info!(ike_sa = sa.id.0, error = %e, "new CHILD SA refused");
                }
                Ok(After::Keep)
            }
            PendingKind::RekeyIke { new_spi, ni, ke } => {
                match self.on_ike_rekey_response(now, sa, new_spi, ni, ke, &payloads) {
                    Ok(()) => {}
                    Err(e) if sa.peer_ike_rekey.is_some() => {
                        // Our rekey failed but the peer's completed (2.8.1): its SA
                        // survives and the peer, its initiator, deletes the old one.
                        self.by_spi.remove(&new_spi);
                        tracing::debug!(ike_sa = sa.id.0, error = %e, "IKE SA rekey failed, peer's rekey survives");
                        if let Some((theirs, _, _)) = sa.peer_ike_rekey.take() {
                            self.adopt_hidden(now, sa, theirs);
                            sa.expire_at = Some(now + self.rekey_linger());
                        }
                    }
                    Err(e) => {
                        self.by_spi.remove(&new_spi);
                        let spread: u32 = sa.rng.gen_range(2..10);
                        sa.ike_rekey_at =
                            Some(now + self.config.retransmit.initial.saturating_mul(spread));
                        tracing::debug!(ike_sa = sa.id.0, error = %e, "IKE SA rekey failed");
                    }
                }
                Ok(After::Keep)
            }
        }
    }

    /// A CHILD SA rekey that completed on an IKE SA already replaced by a rekey (its
    /// response raced the IKE rekey): the new CHILD SA and the Delete of the old one
    /// belong to the successor (1.4: CHILD SAs are handled on the successor IKE SA).
    fn hand_over_late_children(&mut self, now: Instant, sa: &mut IkeSa, old: Spi) {
        let Some(succ) = sa.successor else { return };
        if sa.children.is_empty() {
            return;
        }
        let Some(mut next) = self.sas.remove(&succ) else {
            return;
        };
        for mut c in sa.children.drain(..) {
            c.sa.ike_sa = succ;
            self.child_index.insert(c.sa.inbound.spi, succ);
            next.children.push(c);
        }
        if let Some(c) = next.child_by_inbound(old) {
            c.state = ChildState::Rekeyed;
        }
        sa.queue.retain(|r| {
            let move_it = matches!(r, LocalReq::DeleteChild(_));
            if move_it {
                next.queue.push_back(r.clone());
            }
            !move_it
        });
        self.kick(now, &mut next);
        self.finish(now, next, After::Keep);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_child_rekey_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        old: Spi,
        our_spi: Spi,
        ni: Vec<u8>,
        ke: Option<KeyExchange>,
        peer: Option<(Spi, Vec<u8>, Vec<u8>)>,
        payloads: &[Payload],
    ) -> Result<(), Error> {
        let proposals = self.esp_proposals(sa);
        for p in payloads {
            match p {
                Payload::Notify(n) if n.kind == NotifyType::INVALID_KE_PAYLOAD => {
                    // 1.3 / 2.7: retry with the group the responder asked for, if ours.
                    let want = n.data.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
                    let group = want.and_then(|w| {
                        proposals
                            .iter()
                            .flat_map(|p| p.dh.iter())
                            .copied()
                            .find(|g| crate::crypto::group_number(*g) == w)
                    });
                    if let (Some(g), Some(c)) = (group, sa.child_by_inbound(old)) {
                        c.pfs_group = Some(g);
                    }
                    return Err(Error::InvalidKePayload {
                        got: 0,
                        want: want.unwrap_or(0),
                    });
                }
                _ => {}
            }
        }
        refused_child(payloads)?;
        let (child, nr) = self.child_from_reply(now, sa, our_spi, &ni, ke, payloads)?;
        let peer_rekey = sa
            .child_by_inbound(old)
            .and_then(|c| {
                c.state = ChildState::Rekeyed;
                c.peer_rekey.take()
            })
            .or(peer);
        // 2.8.1: the exchange with the lowest nonce created the redundant SA; its
        // initiator deletes it. The other side deletes the old SA.
        let redundant = peer_rekey.as_ref().is_some_and(|(_, pni, pnr)| {
            ni.as_slice().min(nr.as_slice()) < pni.as_slice().min(pnr.as_slice())
        });
        if let Some((theirs, _, _)) = &peer_rekey {
            self.counters.child_rekey_collisions += 1;
            // Both new SAs by our inbound SPI: ours, or the one the peer's exchange made.
            let loser = if redundant { our_spi } else { *theirs };
            tracing::info!(
                ike_sa = sa.id.0,
                old = format_args!("{:08x}", old.0),
                redundant = format_args!("{:08x}", loser.0),
                "simultaneous CHILD SA rekey"
            );
        }
        self.install_child(sa, child, Some((old, true, redundant)));
        let delete = if redundant { our_spi } else { old };
        sa.queue.push_back(LocalReq::DeleteChild(vec![delete]));
        Ok(())
    }

    /// The CHILD SA a CREATE_CHILD_SA response gives us (2.17): the chosen proposal (one
    /// of ours, our inbound SPI `our_spi`), Nr, KEr when we sent KEi, TSi/TSr; keys
    /// from SK_d. Also returns Nr.
    fn child_from_reply(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        our_spi: Spi,
        ni: &[u8],
        ke: Option<KeyExchange>,
        payloads: &[Payload],
    ) -> Result<(Child, Vec<u8>), Error> {
        let pfs = ke.is_some();
        let proposals = self.esp_proposals(sa);
        let (mut sa_p, mut nr, mut ke_p, mut tsi, mut tsr) = (None, None, None, None, None);
        for p in payloads {
            match p {
                Payload::Sa(v) => sa_p = Some(v),
                Payload::Nonce(n) => nr = Some(n),
                Payload::Ke { data, .. } => ke_p = Some(data),
                Payload::TsI(v) => tsi = Some(v),
                Payload::TsR(v) => tsr = Some(v),
                _ => {}
            }
        }
        let (s, peer_spi) =
            neg::check_esp_reply(sa_p.ok_or(Error::MissingPayload("SA"))?, &proposals, pfs)?;
        let nr = nr.ok_or(Error::MissingPayload("Nr"))?.clone();
        let g_ir = match (ke, ke_p) {
            (Some(k), Some(data)) => Some(k.agree(data)?),
            (None, None) => None,
            _ => return Err(Error::MissingPayload("KE")),
        };
        let keys = sa.keys.as_ref().ok_or(Error::NoSuchSa)?;
        let (i2r, r2i) = child_sa_keys(
            keys.prf,
            &keys.sk_d,
            g_ir.as_ref().map(|g| g.as_slice()),
            ni,
            &nr,
            s.encr,
            s.integ,
        );
        let ts_i = tsi.ok_or(Error::MissingPayload("TSi"))?.clone();
        let ts_r = tsr.ok_or(Error::MissingPayload("TSr"))?.clone();
        let child = self.make_child(sa, now, s, our_spi, peer_spi, i2r, r2i, true, ts_i, ts_r);
        Ok((child, nr))
    }

    /// Our CREATE_CHILD_SA for another CHILD SA answered (1.3.1): installed when the
    /// responder's selectors lie within what we asked (2.9); else the peer's half is
    /// deleted again and nothing is installed.
    #[allow(clippy::too_many_arguments)]
    fn on_create_child_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        our_spi: Spi,
        ni: Vec<u8>,
        ke: Option<KeyExchange>,
        asked: (Vec<TrafficSelector>, Vec<TrafficSelector>),
        payloads: &[Payload],
    ) -> Result<(), Error> {
        refused_child(payloads)?;
        let (child, _) = self.child_from_reply(now, sa, our_spi, &ni, ke, payloads)?;
        if !neg::ts_within(&child.sa.local_ts, &asked.0)
            || !neg::ts_within(&child.sa.remote_ts, &asked.1)
        {
            sa.queue.push_back(LocalReq::DeleteChild(vec![our_spi]));
            return Err(Error::TsUnacceptable);
        }
        self.install_child(sa, child, None);
        Ok(())
    }

    fn on_ike_rekey_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        new_spi: u64,
        ni: Vec<u8>,
        ke: Option<KeyExchange>,
        payloads: &[Payload],
    ) -> Result<(), Error> {
        let mut sa_p = None;
        let mut nr = None;
        let mut ke_p = None;
        for p in payloads {
            match p {
                Payload::Sa(v) => sa_p = Some(v),
                Payload::Nonce(n) => nr = Some(n),
                Payload::Ke { data, .. } => ke_p = Some(data),
                Payload::Notify(n) if n.kind.is_error() => {
                    return Err(Error::InvalidField {
                        field: "IKE rekey",
                        detail: notify_name(n.kind),
                    })
                }
                _ => {}
            }
        }
        let proposals = match (&sa.icfg, &self.config.responder) {
            (Some(c), _) => c.ike_proposals.clone(),
            (None, Some(r)) => r.ike_proposals.clone(),
            (None, None) => return Err(Error::NoProposalChosen),
        };
        let reply = sa_p.ok_or(Error::MissingPayload("SA"))?;
        let suite = neg::check_ike_reply(reply, &proposals)?;
        let peer_spi = reply
            .first()
            .and_then(|p| p.spi.get(..8))
            .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
            .filter(|s| *s != 0)
            .ok_or(Error::InvalidField {
                field: "IKE rekey SPI",
                detail: "not 8 octets".into(),
            })?;
        let nr = nr.ok_or(Error::MissingPayload("Nr"))?.clone();
        let ke = ke.ok_or(Error::NoSuchSa)?;
        if ke.group() != suite.dh {
            return Err(Error::InvalidKePayload {
                got: 0,
                want: crate::crypto::group_number(suite.dh),
            });
        }
        let g_ir = ke.agree(ke_p.ok_or(Error::MissingPayload("KE"))?)?;
        let old = sa.keys.as_ref().ok_or(Error::NoSuchSa)?;
        let keys = rekeyed_ike_sa_keys(
            &suite, old.prf, &old.sk_d, &g_ir, &ni, &nr, new_spi, peer_spi,
        );
        let new_keys = SaKeys::from_ike_keys(keys, &suite, true)?;
        // The new SA is found by its own SPI from now on.
        self.by_spi.remove(&new_spi);
        let Some((theirs, pni, pnr)) = sa.peer_ike_rekey.take() else {
            self.rekeyed_sa(
                now, sa, true, new_spi, peer_spi, suite, new_keys, &ni, &nr, true,
            );
            // 2.18: the initiator of the rekey deletes the old IKE SA.
            sa.state = IkeSaState::Rekeyed;
            sa.queue.clear();
            sa.queue.push_back(LocalReq::DeleteIke);
            return Ok(());
        };
        // 2.8.1: both exchanges completed. The SA created with the lowest of the four
        // nonces is redundant and is deleted by the side that initiated it; the
        // initiator of the surviving SA deletes the old one.
        let ours = self.rekeyed_sa(
            now, sa, true, new_spi, peer_spi, suite, new_keys, &ni, &nr, false,
        );
        let ours_min = ni.as_slice().min(nr.as_slice());
        let theirs_min = pni.as_slice().min(pnr.as_slice());
        if ours_min < theirs_min {
            self.adopt_hidden(now, sa, theirs);
            self.delete_other(now, ours);
            sa.expire_at = Some(now + self.rekey_linger());
        } else {
            self.adopt_hidden(now, sa, ours);
            sa.queue.push_back(LocalReq::DeleteIke);
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn new_sa(
    id: IkeSaId,
    initiator: bool,
    spi_i: u64,
    spi_r: u64,
    socket: SocketKind,
    local: SocketAddr,
    remote: SocketAddr,
    rng: ChaCha20Rng,
    now: Instant,
) -> IkeSa {
    IkeSa {
        id,
        state: IkeSaState::InitSent,
        initiator,
        spi_i,
        spi_r,
        socket,
        local,
        remote,
        udp_encap: socket == SocketKind::NatT,
        rng,
        icfg: None,
        suite: None,
        ke: None,
        ni: Vec::new(),
        nr: Vec::new(),
        init_req: Vec::new(),
        init_resp: Vec::new(),
        cookie: None,
        keys: None,
        local_id: None,
        remote_id: None,
        remote_cert_cn: None,
        peer_frag: false,
        next_msg_id: 0,
        pending: None,
        queue: VecDeque::new(),
        peer_msg_id: 0,
        cached: None,
        reassembly: None,
        children: Vec::new(),
        first_child: None,
        vips: Vec::new(),
        created: now,
        established_at: None,
        last_inbound: now,
        ike_rekey_at: None,
        expire_at: None,
        deadline: None,
        half_open: false,
        init_key: None,
        delete_reason: None,
        peer_ike_rekey: None,
        hidden: false,
        successor: None,
    }
}

fn info(sa: &IkeSa) -> IkeSaInfo {
    IkeSaInfo {
        id: sa.id,
        state: sa.state,
        initiator: sa.initiator,
        local: sa.local,
        remote: sa.remote,
        udp_encap: sa.udp_encap,
        local_id: sa.local_id.clone(),
        remote_id: sa.remote_id.clone(),
        spi_i: sa.spi_i,
        spi_r: sa.spi_r,
        virtual_ips: sa.vips.clone(),
        child_sas: sa
            .children
            .iter()
            .map(|c| ChildSaInfo {
                inbound: c.sa.inbound.spi,
                outbound: c.sa.outbound.spi,
                local_ts: c.sa.local_ts.clone(),
                remote_ts: c.sa.remote_ts.clone(),
                established_at: c.established_at,
            })
            .collect(),
        established_at: sa.established_at,
    }
}

fn notify(kind: NotifyType, data: Vec<u8>) -> Payload {
    Payload::Notify(Notify {
        protocol: ProtocolId::Other(0),
        spi: vec![],
        kind,
        data,
    })
}

/// An error notify in a CREATE_CHILD_SA response (NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE,
/// ...): the CHILD SA was refused (2.21.4).
fn refused_child(payloads: &[Payload]) -> Result<(), Error> {
    match payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.kind.is_error() => Some(n.kind),
        _ => None,
    }) {
        Some(kind) => Err(Error::InvalidField {
            field: "CREATE_CHILD_SA",
            detail: notify_name(kind),
        }),
        None => Ok(()),
    }
}

fn notify_name(k: NotifyType) -> String {
    match k {
        NotifyType::AUTHENTICATION_FAILED => "AUTHENTICATION_FAILED".into(),
        NotifyType::NO_PROPOSAL_CHOSEN => "NO_PROPOSAL_CHOSEN".into(),
        NotifyType::INVALID_KE_PAYLOAD => "INVALID_KE_PAYLOAD".into(),
        NotifyType::TS_UNACCEPTABLE => "TS_UNACCEPTABLE".into(),
        NotifyType::INTERNAL_ADDRESS_FAILURE => "INTERNAL_ADDRESS_FAILURE".into(),
        NotifyType::FAILED_CP_REQUIRED => "FAILED_CP_REQUIRED".into(),
        NotifyType::INVALID_SYNTAX => "INVALID_SYNTAX".into(),
        NotifyType::TEMPORARY_FAILURE => "TEMPORARY_FAILURE".into(),
        NotifyType::CHILD_SA_NOT_FOUND => "CHILD_SA_NOT_FOUND".into(),
        NotifyType(n) => format!("notify {n}"),
    }
}

fn random_nonce(rng: &mut impl RngCore) -> Vec<u8> {
    let mut n = vec![0u8; NONCE_LEN];
    rng.fill_bytes(&mut n);
    n
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// TSr for IKE_AUTH: the configured remote selectors, or "any" (the responder narrows).
fn initiator_tsr(cfg: &InitiatorConfig) -> Vec<TrafficSelector> {
    if cfg.remote_ts.is_empty() {
        vec![crate::negotiate::ts_any(false)]
    } else {
        cfg.remote_ts.clone()
    }
}

/// TSi for IKE_AUTH: with a CFG request, ask for "any" so the responder narrows it to the
/// virtual IP (2.9, 3.15.4); otherwise the configured local selectors.
fn initiator_tsi(cfg: &InitiatorConfig) -> Vec<TrafficSelector> {
    if !cfg.local_ts.is_empty() {
        return cfg.local_ts.clone();
    }
    let mut v = Vec::new();
    if cfg.request_vip4 || !cfg.request_vip6 {
        v.push(TrafficSelector {
            start: IpAddr::from([0, 0, 0, 0]),
            end: IpAddr::from([255, 255, 255, 255]),
            protocol: 0,
            start_port: 0,
            end_port: 65535,
        });
    }
    if cfg.request_vip6 {
        v.push(TrafficSelector {
            start: IpAddr::from([0u16; 8]),
            end: IpAddr::from([0xffffu16; 8]),
            protocol: 0,
            start_port: 0,
            end_port: 65535,
        });
    }
    v
}

#[allow(dead_code)]
fn _assert_auth_config_exhaustive(a: &AuthConfig) {
    match a {
        AuthConfig::Psk(_) | AuthConfig::Cert(_) => {}
    }
}

#[allow(dead_code)]
type _SecretBytes = Zeroizing<Vec<u8>>;

#[cfg(test)]
#[path = "sa/endpoint_tests.rs"]
mod tests;

/// A stable metrics label for an error notify the peer answered with (RFC 7296 3.10.1).
fn peer_notify_label(kind: NotifyType) -> &'static str {
    match kind {
        NotifyType::NO_PROPOSAL_CHOSEN => "peer_no_proposal_chosen",
        NotifyType::INVALID_KE_PAYLOAD => "peer_invalid_ke_payload",
        NotifyType::AUTHENTICATION_FAILED => "peer_authentication_failed",
        NotifyType::INTERNAL_ADDRESS_FAILURE => "peer_internal_address_failure",
        NotifyType::FAILED_CP_REQUIRED => "peer_failed_cp_required",
        NotifyType::TS_UNACCEPTABLE => "peer_ts_unacceptable",
        NotifyType::INVALID_SYNTAX => "peer_invalid_syntax",
        NotifyType::TEMPORARY_FAILURE => "peer_temporary_failure",
        NotifyType::NO_ADDITIONAL_SAS => "peer_no_additional_sas",
        _ => "peer_error_notify",
    }
}
