//! `headend peer`: the peer-router side (IKEv2 initiator) with connect-one failover
//! across the head-ends of a cluster (seed 003 ch. 4).
//!
//! One [`Endpoint`] carries N simulated routers (`--count N --id-prefix X`), each its own
//! IKE SA. A router that is refused (AUTHENTICATION_FAILED, NO_PROPOSAL_CHOSEN, ...), gets
//! no answer (retransmissions exhausted, or not up within `connect_timeout`), or whose
//! tunnel dies (DPD timeout, Delete from the head-end) moves to the next head-end after
//! `backoff`: in list order (round-robin) or to a random other one (random).
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ike::endpoint::Endpoint;
use ike::{DeleteReason, Event, Identity, IkeSaId, InitiatorConfig};
use rand::Rng;
use tokio::sync::mpsc;

use crate::config::{parse_identity, ChildSelectors, Config, HeadendAddr, PeerSection, Policy};
use crate::driver::{self, ChildSaSink, NullDataplane, Sockets};
use crate::error::Error;
use crate::event::gateway_id_for;

/// Routers in IKE_SA_INIT/IKE_AUTH at the same time, at most (a burst of N routers
/// starting together is paced by this).
const MAX_CONNECTING: usize = 256;

/// What a router is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum RouterState {
    /// Waiting to (re)connect at the given time.
    Waiting,
    Connecting {
        sa: IkeSaId,
        headend: usize,
        since: Instant,
    },
    Up {
        sa: IkeSaId,
        headend: usize,
        vips: Vec<IpAddr>,
    },
}

/// Something a router did, for the caller (printed by the CLI, asserted by tests).
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent {
    Up {
        router: usize,
        identity: Identity,
        headend: SocketAddr,
        vips: Vec<IpAddr>,
    },
    Moving {
        router: usize,
        identity: Identity,
        from: SocketAddr,
        to: SocketAddr,
        reason: String,
    },
}

struct Router {
    identity: Identity,
    /// Head-end currently targeted (index into the list).
    headend: usize,
    state: RouterState,
    /// When to act next (connect while Waiting, give up while Connecting).
    deadline: Option<Instant>,
    cfgs: Vec<Arc<InitiatorConfig>>,
}

/// The routers and their connect-one policy; sans-IO apart from the endpoint calls.
pub struct Routers {
    headends: Vec<HeadendAddr>,
    policy: Policy,
    backoff: Duration,
    connect_timeout: Duration,
    local: SocketAddr,
    routers: Vec<Router>,
    by_sa: HashMap<IkeSaId, usize>,
    timers: BTreeSet<(Instant, usize)>,
    connecting: usize,
    /// Routers waiting for a connect slot.
    queued: std::collections::VecDeque<usize>,
    /// The CHILD SAs after IKE_AUTH's (`peer.children[1..]`), opened on every new IKE SA.
    more_children: Vec<ChildSelectors>,
    pub events: Vec<PeerEvent>,
}

impl Routers {
    /// `ids` are the routers' identities; `local` is our IKE socket address.
    pub fn new(
        cfg: &Config,
        peer: &PeerSection,
        ids: Vec<Identity>,
        local: SocketAddr,
        now: Instant,
    ) -> Self {
        let h = peer.headends.len().max(1);
        let mut rng = rand::thread_rng();
        let mut r = Routers {
            headends: peer.headends.clone(),
            policy: peer.policy,
            backoff: peer.backoff.0,
            connect_timeout: peer.connect_timeout.0,
            local,
            routers: vec![],
            by_sa: HashMap::new(),
            timers: BTreeSet::new(),
            connecting: 0,
            queued: Default::default(),
            more_children: peer.child_selectors().into_iter().skip(1).collect(),
            events: vec![],
        };
        for (i, id) in ids.into_iter().enumerate() {
            let cfgs = peer
                .headends
                .iter()
                .map(|he| Arc::new(cfg.initiator(peer, id.clone(), he.natt_port)))
                .collect();
            // Round-robin spreads a fleet over the list (router i starts at i mod H, so a
            // single router starts at the first); random starts anywhere.
            let headend = match peer.policy {
                Policy::RoundRobin => i % h,
                Policy::Random => rng.gen_range(0..h),
            };
            r.routers.push(Router {
                identity: id,
                headend,
                state: RouterState::Waiting,
                deadline: None,
                cfgs,
            });
            r.set_deadline(i, Some(now));
        }
        r
    }

    pub fn len(&self) -> usize {
        self.routers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routers.is_empty()
    }

    pub fn state(&self, router: usize) -> Option<&RouterState> {
        self.routers.get(router).map(|r| &r.state)
    }

    /// Routers that are up.
    pub fn up_count(&self) -> usize {
        self.routers
            .iter()
            .filter(|r| matches!(r.state, RouterState::Up { .. }))
            .count()
    }

    fn set_deadline(&mut self, i: usize, d: Option<Instant>) {
        let r = &mut self.routers[i];
        if let Some(old) = r.deadline.take() {
            self.timers.remove(&(old, i));
        }
        r.deadline = d;
        if let Some(d) = d {
            self.timers.insert((d, i));
        }
    }

    /// The next time [`Routers::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().next().map(|(t, _)| *t)
    }

    fn next_headend(&self, cur: usize) -> usize {
        let h = self.headends.len();
        if h <= 1 {
            return 0;
        }
        match self.policy {
            Policy::RoundRobin => (cur + 1) % h,
            Policy::Random => {
                let k = rand::thread_rng().gen_range(0..h - 1);
                if k >= cur {
                    k + 1
                } else {
                    k
                }
            }
        }
    }

    fn connect(&mut self, ep: &mut Endpoint, now: Instant, i: usize) {
        if self.connecting >= MAX_CONNECTING {
            self.set_deadline(i, None);
            self.queued.push_back(i);
            return;
        }
        let r = &self.routers[i];
        let he = r.headend;
        let remote = self.headends[he].addr;
        match ep.initiate(now, self.local, remote, r.cfgs[he].clone()) {
            Ok(sa) => {
                tracing::debug!(identity = %r.identity, headend = %remote, ike_sa = sa.0, "connecting");
                self.routers[i].state = RouterState::Connecting {
                    sa,
                    headend: he,
                    since: now,
                };
                self.by_sa.insert(sa, i);
                self.connecting += 1;
                self.set_deadline(i, Some(now + self.connect_timeout));
            }
            Err(e) => {
                let reason = format!("initiate failed: {e}");
                self.fail(now, i, reason);
            }
        }
    }

    /// Moves router `i` to the next head-end after the back-off.
    fn fail(&mut self, now: Instant, i: usize, reason: String) {
        let cur = self.routers[i].headend;
        if matches!(self.routers[i].state, RouterState::Connecting { .. }) {
            self.connecting = self.connecting.saturating_sub(1);
        }
        let next = self.next_headend(cur);
        let (from, to) = (self.headends[cur].addr, self.headends[next].addr);
        let identity = self.routers[i].identity.clone();
        tracing::info!(identity = %identity, from = %from, to = %to, %reason,
            backoff_ms = self.backoff.as_millis() as u64, "moving to the next head-end");
        self.events.push(PeerEvent::Moving {
            router: i,
            identity,
            from,
            to,
            reason,
        });
        self.routers[i].headend = next;
        self.routers[i].state = RouterState::Waiting;
        self.set_deadline(i, Some(now + self.backoff));
    }

    fn start_queued(&mut self, ep: &mut Endpoint, now: Instant) {
        while self.connecting < MAX_CONNECTING {
            let Some(i) = self.queued.pop_front() else {
                break;
            };
            if self.routers[i].state == RouterState::Waiting {
                self.connect(ep, now, i);
            }
        }
    }

    /// Timers: start waiting routers, give up on slow connects.
    pub fn handle_timeout(&mut self, ep: &mut Endpoint, now: Instant) {
        while let Some(&(t, i)) = self.timers.iter().next() {
            if t > now {
                break;
            }
            self.set_deadline(i, None);
            match self.routers[i].state.clone() {
                RouterState::Waiting => self.connect(ep, now, i),
                RouterState::Connecting { sa, .. } => {
                    self.by_sa.remove(&sa);
                    let _ = ep.delete_ike_sa(now, sa);
                    self.fail(now, i, "no answer".into());
                }
                RouterState::Up { .. } => {}
            }
        }
        self.start_queued(ep, now);
    }

    /// Asks for the CHILD SAs after IKE_AUTH's on router `i`'s new IKE SA, each with
    /// CREATE_CHILD_SA (RFC 7296 1.3.1; the engine runs them one after the other). A
    /// rekeyed IKE SA keeps its CHILD SAs (2.8), so only a new connection opens them.
    fn open_more_children(&mut self, ep: &mut Endpoint, now: Instant, i: usize, sa: IkeSaId) {
        let identity = &self.routers[i].identity;
        for (local_ts, remote_ts) in &self.more_children {
            let (l, r) = (
                crate::run::ts_list(local_ts),
                crate::run::ts_list(remote_ts),
            );
            match ep.create_child_sa(now, sa, local_ts.clone(), remote_ts.clone()) {
                Ok(()) => {
                    tracing::info!(identity = %identity, ike_sa = sa.0, local_ts = %l, remote_ts = %r, "opening CHILD SA")
                }
                Err(e) => {
                    tracing::warn!(identity = %identity, ike_sa = sa.0, local_ts = %l, remote_ts = %r, error = %e, "cannot open CHILD SA")
                }
            }
        }
    }

    /// Engine events.
    pub fn handle_event(&mut self, ep: &mut Endpoint, now: Instant, ev: &Event) {
        match ev {
            Event::IkeSaEstablished {
                ike_sa,
                remote,
                virtual_ips,
                remote_id,
                ..
            } => {
                let Some(&i) = self.by_sa.get(ike_sa) else {
                    return;
                };
                let headend = match self.routers[i].state {
                    RouterState::Connecting { headend, .. } => {
                        self.connecting = self.connecting.saturating_sub(1);
                        headend
                    }
                    _ => self.routers[i].headend,
                };
                self.set_deadline(i, None);
                let r = &mut self.routers[i];
                r.state = RouterState::Up {
                    sa: *ike_sa,
                    headend,
                    vips: virtual_ips.clone(),
                };
                let gw = gateway_id_for(&r.identity, None);
                tracing::info!(identity = %r.identity, gateway_id = %gw, headend = %remote,
                    headend_id = %remote_id, vip = ?virtual_ips, "tunnel up");
                self.events.push(PeerEvent::Up {
                    router: i,
                    identity: r.identity.clone(),
                    headend: *remote,
                    vips: virtual_ips.clone(),
                });
                self.open_more_children(ep, now, i, *ike_sa);
            }
            Event::IkeSaRekeyed { old, new } => {
                if let Some(i) = self.by_sa.remove(old) {
                    self.by_sa.insert(*new, i);
                    if let RouterState::Up { sa, .. } | RouterState::Connecting { sa, .. } =
                        &mut self.routers[i].state
                    {
                        *sa = *new;
                    }
                }
            }
            Event::IkeSaDeleted { ike_sa, reason } => {
                if *reason == DeleteReason::Rekeyed {
                    // Only the old SA of a rekey; IkeSaRekeyed moved the router.
                    if let Some(&i) = self.by_sa.get(ike_sa) {
                        if !matches!(&self.routers[i].state, RouterState::Up { sa, .. } | RouterState::Connecting { sa, .. } if sa == ike_sa)
                        {
                            self.by_sa.remove(ike_sa);
                        }
                    }
                    return;
                }
                let Some(i) = self.by_sa.remove(ike_sa) else {
                    return;
                };
                let why = match reason {
                    DeleteReason::PeerDeleted => "deleted by the head-end".to_string(),
                    DeleteReason::Timeout => "no answer (retransmission/DPD timeout)".into(),
                    DeleteReason::Failed(s) => format!("refused: {s}"),
                    DeleteReason::InitialContact => "replaced".into(),
                    DeleteReason::LocalDelete => "deleted locally".into(),
                    DeleteReason::Rekeyed => "rekeyed".into(),
                };
                self.set_deadline(i, None);
                self.fail(now, i, why);
            }
            Event::NegotiationFailed {
                remote,
                identity,
                reason,
            } => {
                tracing::info!(headend = %remote, identity = ?identity.as_ref().map(|i| i.to_string()),
                    %reason, "negotiation failed");
            }
            _ => {}
        }
        self.start_queued(ep, now);
    }
}

/// `ip addr add|del <vip>/32 (or /128) dev <tun>`: the router's own traffic leaves from its
/// virtual IP (RFC 7296 3.15.1) through the data plane.
fn ip_addr(op: &str, vip: IpAddr, tun: &str) {
    let prefix = if vip.is_ipv4() { 32 } else { 128 };
    let r = std::process::Command::new("ip")
        .args(["addr", op, &format!("{vip}/{prefix}"), "dev", tun])
        .output();
    match r {
        Ok(o) if o.status.success() => {
            tracing::info!(%vip, tun, op, "virtual IP on the TUN device")
        }
        Ok(o) => {
            tracing::warn!(%vip, tun, op, err = %String::from_utf8_lossy(&o.stderr).trim(), "ip addr failed")
        }
        Err(e) => tracing::warn!(%vip, tun, op, error = %e, "cannot run ip (iproute2)"),
    }
}

fn vip_addresses(tun: &str, e: &PeerEvent, assigned: &mut HashMap<usize, Vec<IpAddr>>) {
    match e {
        PeerEvent::Up { router, vips, .. } => {
            for old in assigned.remove(router).unwrap_or_default() {
                ip_addr("del", old, tun);
            }
            for v in vips {
                ip_addr("add", *v, tun);
            }
            assigned.insert(*router, vips.clone());
        }
        PeerEvent::Moving { router, .. } => {
            for old in assigned.remove(router).unwrap_or_default() {
                ip_addr("del", old, tun);
            }
        }
    }
}

/// Options of `headend peer`.
#[derive(Debug, Clone, Default)]
pub struct PeerOptions {
    /// Simulate this many routers (default 1: the configured identity).
    pub count: Option<usize>,
    /// Identities `<prefix><n>` for n = 1..=count.
    pub id_prefix: Option<String>,
    /// Stop after this long (for tests and demos); `None` runs until a signal.
    pub duration: Option<Duration>,
    /// Serve Prometheus metrics here (overrides `[metrics] listen`).
    pub metrics: Option<SocketAddr>,
}

/// A request from the metrics endpoint for a snapshot of the engine's figures.
type FiguresRequest = tokio::sync::oneshot::Sender<(usize, ike::endpoint::Counters)>;

/// Serves `/metrics` on `listener` (`crate::metrics`, the series of `headend run`):
/// the routers' tunnels up and the engine's counters come from the engine loop through
/// `figures`, the ESP counters from the data plane.
fn serve_metrics(
    listener: tokio::net::TcpListener,
    figures: mpsc::Sender<FiguresRequest>,
    dp: Option<Arc<dyn crate::dataplane::EspBackend>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        crate::metrics::serve_with(listener, || {
            let (figures, dp) = (figures.clone(), dp.clone());
            async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if figures.send(tx).await.is_err() {
                    return String::new();
                }
                let Ok((up, ike)) = rx.await else {
                    return String::new();
                };
                let esp = dp.as_ref().map(|d| d.counters());
                crate::metrics::render_peer(up, &ike, esp.as_ref())
            }
        })
        .await
    })
}

/// The identities of the routers to simulate.
pub fn router_ids(peer: &PeerSection, opts: &PeerOptions) -> Result<Vec<Identity>, Error> {
    match (opts.count, &opts.id_prefix) {
        (None, None) => Ok(vec![peer.local_id.0.clone()]),
        (count, prefix) => {
            let n = count.unwrap_or(1);
            let prefix = prefix
                .clone()
                .unwrap_or_else(|| peer.local_id.0.to_string());
            (1..=n)
                .map(|k| parse_identity(&format!("{prefix}{k}")).map_err(Error::Config))
                .collect()
        }
    }
}

/// Runs the peer routers until a signal (or `opts.duration`); `out` receives each
/// [`PeerEvent`] as it happens.
pub async fn run(
    cfg: &Config,
    opts: PeerOptions,
    out: mpsc::UnboundedSender<PeerEvent>,
) -> Result<(), Error> {
    let peer = cfg.validate_peer("config")?.clone();
    let ids = router_ids(&peer, &opts)?;
    let esp = Arc::new(NullDataplane::default());
    let bind_ip = peer.bind.ip();
    // With [dataplane] the data plane owns the NAT-T socket and carries the CHILD SAs.
    let dp = match &cfg.dataplane {
        // NAT-T on both families by default (`natt_bind`), whichever `[peer] bind` is.
        Some(d) => Some(crate::services::start_dataplane(d.clone())?),
        None => None,
    };
    let natt = if dp.is_some() { None } else { Some(0) };
    let mut sockets = Sockets::bind(&[bind_ip], peer.bind.port(), natt, esp).await?;
    let mut sink: Box<dyn ChildSaSink> = Box::new(NullDataplane::default());
    let mut rekey = None;
    let mut _dp_handle = None;
    // The TUN device the routers' virtual IPs go on (with a data plane only).
    let mut tun = None;
    if let Some(parts) = dp {
        let (locals, rx, send) = parts.natt;
        sockets.attach_natt(&locals, rx, send);
        sink = parts.sink;
        rekey = parts.rekey;
        tun = Some(parts.tun);
        _dp_handle = Some((parts.handle, parts.tasks));
    }
    let local = sockets.ike_addrs[0];
    let natt_port = sockets.natt_addrs[0].port();
    // `/metrics`: the same series as `headend run` (issue 6), for the routers here.
    let (figures_tx, mut figures_rx) = mpsc::channel::<FiguresRequest>(16);
    let mut metrics_task = None;
    if let Some(addr) = opts.metrics.or(cfg.metrics.as_ref().map(|m| m.listen)) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        tracing::info!(listen = %addr, "metrics served at /metrics");
        let dp = _dp_handle.as_ref().map(|(h, _)| h.clone());
        metrics_task = Some(serve_metrics(listener, figures_tx, dp));
    } else {
        drop(figures_tx);
    }
    let mut ep = Endpoint::new(cfg.initiator_endpoint(natt_port), driver::seed());
    let now = Instant::now();
    let mut routers = Routers::new(cfg, &peer, ids, local, now);
    tracing::info!(routers = routers.len(), local = %local, headends = ?peer.headends.iter().map(|h| h.addr).collect::<Vec<_>>(),
        policy = ?peer.policy, "peer routers starting");
    let stop_at = opts.duration.map(|d| now + d);
    // Virtual IPs put on the TUN device, per router (with a data plane only).
    let mut assigned: HashMap<usize, Vec<IpAddr>> = HashMap::new();
    let signal = crate::run::wait_for_signal();
    tokio::pin!(signal);
    loop {
        let deadline = [ep.poll_timeout(), routers.poll_timeout(), stop_at]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            _ = &mut signal => break,
            d = sockets.rx.recv() => match d {
                Some(d) => {
                    // Certificate validity is checked against the wall clock (issue 7).
                    ep.set_wall_clock(std::time::SystemTime::now());
                    driver::feed(&mut ep, d, &mut sockets.rx)
                }
                None => break,
            },
            _ = driver::sleep_until(deadline) => {
                let now = Instant::now();
                if stop_at.is_some_and(|s| now >= s) {
                    break;
                }
                ep.handle_timeout(now);
                routers.handle_timeout(&mut ep, now);
            }
            Some(spi) = crate::run::recv_opt(&mut rekey) => {
                if let Err(e) = ep.rekey_child_sa(Instant::now(), spi) {
                    tracing::debug!(spi = %format_args!("{:08x}", spi.0), error = %e, "CHILD SA rekey request refused");
                }
            }
            Some(tx) = figures_rx.recv() => {
                let _ = tx.send((routers.up_count(), ep.counters().clone()));
                continue;
            }
        }
        sockets.flush(&mut ep).await;
        while let Some(ev) = ep.poll() {
            crate::run::to_dataplane(sink.as_mut(), &ev);
            routers.handle_event(&mut ep, Instant::now(), &ev);
        }
        for e in routers.events.drain(..) {
            if let Some(tun) = &tun {
                vip_addresses(tun, &e, &mut assigned);
            }
            let _ = out.send(e);
        }
        sockets.flush(&mut ep).await;
    }
    if let Some(tun) = &tun {
        for vips in assigned.values() {
            for v in vips {
                ip_addr("del", *v, tun);
            }
        }
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    // Leave cleanly: Delete our IKE SAs so the head-ends release the addresses.
    let now = Instant::now();
    for i in ep.ike_sas() {
        let _ = ep.delete_ike_sa(now, i.id);
    }
    sockets.flush(&mut ep).await;
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until && !ep.ike_sas().is_empty() {
        let deadline = ep.poll_timeout().map_or(until, |d| d.min(until));
        tokio::select! {
            d = sockets.rx.recv() => match d {
                Some(d) => driver::feed(&mut ep, d, &mut sockets.rx),
                None => break,
            },
            _ = driver::sleep_until(Some(deadline)) => ep.handle_timeout(Instant::now()),
        }
        sockets.flush(&mut ep).await;
        while let Some(ev) = ep.poll() {
            crate::run::to_dataplane(sink.as_mut(), &ev);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(policy: &str, n: usize) -> (Config, PeerSection) {
        let hs: Vec<String> = (0..n)
            .map(|k| format!("\"127.0.0.1:{}\"", 40000 + k))
            .collect();
        let c = Config::parse(
            "t",
            &format!(
                "[peer]\nlocal_id = \"r\"\npsk = \"k\"\npolicy = \"{policy}\"\nbackoff = \"100ms\"\nconnect_timeout = \"2s\"\nheadends = [{}]\n",
                hs.join(",")
            ),
        )
        .unwrap();
        let p = c.peer.clone().unwrap();
        (c, p)
    }

    #[test]
    fn round_robin_walks_the_list_and_wraps() {
        let (c, p) = cfg("round-robin", 3);
        let r = Routers::new(
            &c,
            &p,
            vec![Identity::Fqdn("a".into())],
            "127.0.0.1:1".parse().unwrap(),
            Instant::now(),
        );
        assert_eq!(
            r.routers[0].headend, 0,
            "a single router starts at the first head-end"
        );
        assert_eq!(r.next_headend(0), 1);
        assert_eq!(r.next_headend(1), 2);
        assert_eq!(r.next_headend(2), 0);
    }

    #[test]
    fn round_robin_spreads_a_fleet() {
        let (c, p) = cfg("round-robin", 3);
        let ids = (0..6).map(|k| Identity::Fqdn(format!("r{k}"))).collect();
        let r = Routers::new(&c, &p, ids, "127.0.0.1:1".parse().unwrap(), Instant::now());
        let starts: Vec<usize> = r.routers.iter().map(|x| x.headend).collect();
        assert_eq!(starts, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn random_never_picks_the_failed_headend_again() {
        let (c, p) = cfg("random", 4);
        let r = Routers::new(
            &c,
            &p,
            vec![Identity::Fqdn("a".into())],
            "127.0.0.1:1".parse().unwrap(),
            Instant::now(),
        );
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            let n = r.next_headend(2);
            assert_ne!(n, 2);
            seen[n] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0 && seen[3] > 0, "{seen:?}");
    }

    #[test]
    fn ids_from_prefix_and_count() {
        let (_, p) = cfg("random", 1);
        let ids = router_ids(
            &p,
            &PeerOptions {
                count: Some(3),
                id_prefix: Some("SN-".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            ids,
            vec![
                Identity::Fqdn("SN-1".into()),
                Identity::Fqdn("SN-2".into()),
                Identity::Fqdn("SN-3".into())
            ]
        );
        let ids = router_ids(&p, &PeerOptions::default()).unwrap();
        assert_eq!(ids, vec![Identity::Fqdn("r".into())]);
    }

    #[test]
    fn failure_event_moves_router_after_backoff() {
        // Drive the state machine with a fake IKE SA id: connect fails immediately against
        // the placeholder engine or succeeds against the real one; either way we inject the
        // failure event and check the move.
        let (c, p) = cfg("round-robin", 2);
        let now = Instant::now();
        let mut r = Routers::new(
            &c,
            &p,
            vec![Identity::Fqdn("a".into())],
            "127.0.0.1:1".parse().unwrap(),
            now,
        );
        r.routers[0].state = RouterState::Connecting {
            sa: IkeSaId(77),
            headend: 0,
            since: now,
        };
        r.by_sa.insert(IkeSaId(77), 0);
        r.connecting = 1;
        let mut ep = Endpoint::new(c.initiator_endpoint(0), [7; 32]);
        r.handle_event(
            &mut ep,
            now,
            &Event::IkeSaDeleted {
                ike_sa: IkeSaId(77),
                reason: DeleteReason::Failed("AUTHENTICATION_FAILED".into()),
            },
        );
        assert_eq!(r.routers[0].headend, 1);
        assert_eq!(r.routers[0].state, RouterState::Waiting);
        assert_eq!(r.connecting, 0);
        let t = r.poll_timeout().unwrap();
        assert!(t >= now + Duration::from_millis(100), "waits the back-off");
        match &r.events[..] {
            [PeerEvent::Moving {
                from, to, reason, ..
            }] => {
                assert_eq!(from.port(), 40000);
                assert_eq!(to.port(), 40001);
                assert!(reason.contains("AUTHENTICATION_FAILED"));
            }
            other => panic!("{other:?}"),
        }
    }
}
