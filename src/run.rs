//! `headend run`: the head-end daemon (IKEv2 responder, RFC 7296).
//!
//! One task owns the [`Endpoint`]: it selects over received datagrams, the engine's timer
//! (`poll_timeout`), rekey requests from the data plane and a command channel; after each
//! input it drains `poll_transmit` and `poll`. Engine events update the SA table and
//! become [`GatewayEvent`]s on a broadcast channel (DNS and cluster consume them) and
//! data-plane operations.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ike::endpoint::Endpoint;
use ike::{ChildSa, DeleteReason, Event, Identity, IkeSaId, Spi};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::Config;
use crate::driver::{self, ChildSaSink, EspSink, NullDataplane, Sockets};
use crate::error::Error;
use crate::event::{gateway_id_for, GatewayEvent, TunnelId};

/// How long shutdown waits for the answers to our Deletes (the whole stop stays < 2 s).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(800);

/// One tunnel as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelStatus {
    pub tunnel: TunnelId,
    /// The current IKE SA (changes on IKE SA rekey).
    pub ike_sa: IkeSaId,
    pub identity: Identity,
    pub gateway_id: ddns::GatewayId,
    pub vips: Vec<IpAddr>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub udp_encap: bool,
    pub since: SystemTime,
    /// The CHILD SAs, in install order (a rekeyed one last).
    pub child_sas: Vec<ChildStatus>,
    /// IKE SPIs of the current IKE SA (initiator's, responder's), when known.
    pub spi_i: u64,
    pub spi_r: u64,
}

/// One CHILD SA of a tunnel as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildStatus {
    pub inbound: Spi,
    pub outbound: Spi,
    /// Our selectors and the peer's, as negotiated (RFC 7296 2.9).
    pub local_ts: Vec<ike::TrafficSelector>,
    pub remote_ts: Vec<ike::TrafficSelector>,
    pub state: ChildState,
    /// When it entered `state`.
    pub since: SystemTime,
}

/// Where a CHILD SA is in its life (RFC 7296 2.8, 2.8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildState {
    /// The pair that carries the tunnel.
    Installed,
    /// Replaced by a rekey; still installed until its Delete.
    Rekeyed,
    /// The redundant pair of a simultaneous rekey (2.8.1), deleted by us at once.
    Redundant,
    /// Deleted; the data plane still accepts packets in flight on its inbound SPI
    /// (`[dataplane] rekey_linger_ms`).
    Deleted,
}

impl ChildState {
    pub fn label(self) -> &'static str {
        match self {
            ChildState::Installed => "installed",
            ChildState::Rekeyed => "rekeyed",
            ChildState::Redundant => "redundant",
            ChildState::Deleted => "deleted",
        }
    }
}

/// Selectors in strongSwan's notation, comma-separated (one log field, no spaces).
pub fn ts_list(ts: &[ike::TrafficSelector]) -> String {
    ts.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The SA table: tunnels by [`TunnelId`], with the IKE SA -> tunnel mapping kept across
/// IKE SA rekeys (RFC 7296 2.8) so that a rekey is not an up/down.
#[derive(Debug, Default)]
pub struct SaTable {
    tunnels: HashMap<TunnelId, TunnelStatus>,
    by_sa: HashMap<IkeSaId, TunnelId>,
    /// How long a deleted CHILD SA stays listed (the data plane's linger; zero without).
    linger: Duration,
}

fn reason_label(r: &DeleteReason) -> String {
    match r {
        DeleteReason::PeerDeleted => "peer-deleted".into(),
        DeleteReason::LocalDelete => "local-delete".into(),
        DeleteReason::Timeout => "timeout".into(),
        DeleteReason::Rekeyed => "rekeyed".into(),
        DeleteReason::InitialContact => "initial-contact".into(),
        DeleteReason::Failed(s) => format!("failed: {s}"),
    }
}

impl SaTable {
    /// A table that lists deleted CHILD SAs for `linger` (the data plane's
    /// `rekey_linger_ms`: they still accept packets in flight).
    pub fn with_linger(linger: Duration) -> Self {
        SaTable {
            linger,
            ..Default::default()
        }
    }

    /// Forgets deleted CHILD SAs whose linger is over at `now`.
    pub fn prune(&mut self, now: SystemTime) {
        let linger = self.linger;
        for st in self.tunnels.values_mut() {
            st.child_sas.retain(|c| {
                c.state != ChildState::Deleted
                    || now.duration_since(c.since).unwrap_or_default() < linger
            });
        }
    }

    pub fn len(&self) -> usize {
        self.tunnels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tunnels.is_empty()
    }

    pub fn tunnels(&self) -> impl Iterator<Item = &TunnelStatus> {
        self.tunnels.values()
    }

    pub fn by_ike_sa(&self, id: IkeSaId) -> Option<&TunnelStatus> {
        self.by_sa.get(&id).and_then(|t| self.tunnels.get(t))
    }

    /// Applies an engine event; returns the gateway event it causes, if any.
    pub fn apply(&mut self, ev: &Event, at: SystemTime) -> Option<GatewayEvent> {
        self.apply_with_spis(ev, at, (0, 0))
    }

    /// [`SaTable::apply`] with the IKE SPIs of the SA the event is about (for the log and
    /// the status; the events themselves do not carry them).
    pub fn apply_with_spis(
        &mut self,
        ev: &Event,
        at: SystemTime,
        spis: (u64, u64),
    ) -> Option<GatewayEvent> {
        let (spi_i, spi_r) = spis;
        match ev {
            Event::IkeSaEstablished {
                ike_sa,
                local,
                remote,
                remote_id,
                remote_cert_cn,
                virtual_ips,
                udp_encap,
                ..
            } => {
                let tunnel = TunnelId(ike_sa.0);
                let gateway_id = gateway_id_for(remote_id, remote_cert_cn.as_deref());
                tracing::info!(
                    peer = %remote, identity = %remote_id, gateway_id = %gateway_id,
                    vip = ?virtual_ips, ike_sa = ike_sa.0, udp_encap = *udp_encap,
                    spi_i = %format_args!("{spi_i:016x}"), spi_r = %format_args!("{spi_r:016x}"),
                    "IKE SA established"
                );
                let st = TunnelStatus {
                    tunnel,
                    ike_sa: *ike_sa,
                    identity: remote_id.clone(),
                    gateway_id: gateway_id.clone(),
                    vips: virtual_ips.clone(),
                    local: *local,
                    remote: *remote,
                    udp_encap: *udp_encap,
                    since: at,
                    child_sas: vec![],
                    spi_i,
                    spi_r,
                };
                self.tunnels.insert(tunnel, st);
                self.by_sa.insert(*ike_sa, tunnel);
                Some(GatewayEvent::Up {
                    tunnel,
                    gateway_id,
                    identity: remote_id.clone(),
                    vips: virtual_ips.clone(),
                    remote: *remote,
                    at,
                })
            }
            Event::IkeSaRekeyed { old, new } => {
                if let Some(t) = self.by_sa.remove(old) {
                    self.by_sa.insert(*new, t);
                    if let Some(st) = self.tunnels.get_mut(&t) {
                        st.ike_sa = *new;
                        if spis != (0, 0) {
                            (st.spi_i, st.spi_r) = spis;
                        }
                        tracing::info!(peer = %st.remote, identity = %st.identity,
                            gateway_id = %st.gateway_id, old = old.0, new = new.0, "IKE SA rekeyed");
                    }
                }
                None
            }
            Event::IkeSaDeleted { ike_sa, reason } => {
                let t = self.by_sa.remove(ike_sa)?;
                if *reason == DeleteReason::Rekeyed {
                    // The tunnel lives on in the new IKE SA (IkeSaRekeyed moved it); if the
                    // engine reported the delete first, keep the tunnel until then.
                    if self.by_sa.values().any(|x| *x == t) {
                        return None;
                    }
                    self.by_sa.insert(*ike_sa, t);
                    return None;
                }
                let st = self.tunnels.remove(&t)?;
                let reason = reason_label(reason);
                tracing::info!(peer = %st.remote, identity = %st.identity,
                    gateway_id = %st.gateway_id, vip = ?st.vips, ike_sa = ike_sa.0, %reason,
                    "IKE SA deleted");
                Some(GatewayEvent::Down {
                    tunnel: t,
                    gateway_id: st.gateway_id,
                    identity: st.identity,
                    vips: st.vips,
                    remote: st.remote,
                    reason,
                    at,
                })
            }
            Event::IkeSaAddressChanged {
                ike_sa,
                remote,
                udp_encap,
            } => {
                if let Some(st) = self.by_sa.get(ike_sa).and_then(|t| self.tunnels.get_mut(t)) {
                    tracing::info!(old = %st.remote, peer = %remote, identity = %st.identity,
                        udp_encap = *udp_encap, "peer address changed");
                    st.remote = *remote;
                    st.udp_encap = *udp_encap;
                }
                None
            }
            Event::ChildSaInstalled(c) => {
                self.child_added(c, None, at);
                None
            }
            Event::ChildSaRekeyed {
                old_inbound,
                new,
                redundant,
                ..
            } => {
                self.child_added(new, Some((*old_inbound, *redundant)), at);
                None
            }
            Event::ChildSaDeleted {
                ike_sa,
                inbound,
                outbound,
            } => {
                if let Some(st) = self.by_sa.get(ike_sa).and_then(|t| self.tunnels.get_mut(t)) {
                    for c in st.child_sas.iter_mut().filter(|c| c.inbound == *inbound) {
                        (c.state, c.since) = (ChildState::Deleted, at);
                    }
                    tracing::debug!(identity = %st.identity, spi_in = %format_args!("{:08x}", inbound.0),
                        spi_out = %format_args!("{:08x}", outbound.0), "CHILD SA deleted");
                }
                self.prune(at);
                None
            }
            Event::NegotiationFailed {
                remote,
                identity,
                reason,
            } => {
                // Fields as on the up/down lines; empty when the peer never said who it is.
                let (identity, gateway_id) = match identity {
                    Some(i) => {
                        let s = i.to_string();
                        let g = ddns::GatewayId::from_identity(s.as_bytes()).0;
                        (s, g.as_str().to_string())
                    }
                    None => (String::new(), String::new()),
                };
                tracing::info!(peer = %remote, %identity, %gateway_id, %reason, "negotiation failed");
                None
            }
        }
    }

    /// `replaces`: the rekeyed pair's inbound SPI, and whether `c` is the redundant pair
    /// of a simultaneous rekey.
    fn child_added(&mut self, c: &ChildSa, replaces: Option<(Spi, bool)>, at: SystemTime) {
        let Some(st) = self
            .by_sa
            .get(&c.ike_sa)
            .and_then(|t| self.tunnels.get_mut(t))
        else {
            return;
        };
        let mut state = ChildState::Installed;
        if let Some((old, redundant)) = replaces {
            // The old pair stays until its ChildSaDeleted (RFC 7296 2.8).
            for o in st.child_sas.iter_mut() {
                if o.inbound == old && o.state == ChildState::Installed {
                    (o.state, o.since) = (ChildState::Rekeyed, at);
                }
            }
            if redundant {
                state = ChildState::Redundant;
            }
            tracing::info!(identity = %st.identity, gateway_id = %st.gateway_id,
                old_spi_in = %format_args!("{:08x}", old.0),
                spi_in = %format_args!("{:08x}", c.inbound.spi.0),
                spi_out = %format_args!("{:08x}", c.outbound.spi.0), "CHILD SA rekeyed");
        } else {
            tracing::info!(identity = %st.identity, gateway_id = %st.gateway_id,
                spi_in = %format_args!("{:08x}", c.inbound.spi.0),
                spi_out = %format_args!("{:08x}", c.outbound.spi.0), encr = ?c.inbound.encr,
                udp_encap = c.udp_encap, local_ts = %ts_list(&c.local_ts),
                remote_ts = %ts_list(&c.remote_ts), "CHILD SA installed");
        }
        st.child_sas.push(ChildStatus {
            inbound: c.inbound.spi,
            outbound: c.outbound.spi,
            local_ts: c.local_ts.clone(),
            remote_ts: c.remote_ts.clone(),
            state,
            since: at,
        });
    }

    /// Down events for every tunnel (daemon stop); empties the table.
    pub fn drain_down(&mut self, reason: &str, at: SystemTime) -> Vec<GatewayEvent> {
        self.by_sa.clear();
        self.tunnels
            .drain()
            .map(|(t, st)| GatewayEvent::Down {
                tunnel: t,
                gateway_id: st.gateway_id,
                identity: st.identity,
                vips: st.vips,
                remote: st.remote,
                reason: reason.into(),
                at,
            })
            .collect()
    }
}

/// Passes CHILD SA events to the data plane.
pub fn to_dataplane(dp: &mut dyn ChildSaSink, ev: &Event) {
    match ev {
        Event::ChildSaInstalled(c) => dp.install(c),
        Event::ChildSaRekeyed {
            old_inbound,
            new,
            initiator,
            redundant,
        } => dp.rekeyed(
            *old_inbound,
            new,
            crate::dataplane::Handover::of(*initiator, *redundant),
        ),
        Event::ChildSaDeleted {
            inbound, outbound, ..
        } => dp.remove(*inbound, *outbound),
        _ => {}
    }
}

/// Commands to the engine task.
pub enum Command {
    Status(oneshot::Sender<Vec<TunnelStatus>>),
    Counters(oneshot::Sender<ike::endpoint::Counters>),
    /// Rekey the installed CHILD SAs of the tunnels with this gateway ID or identity;
    /// answers how many rekeys were started.
    RekeyChildSas(String, oneshot::Sender<usize>),
    /// Delete every IKE SA (sending Deletes), publish Down events, then stop.
    Shutdown(oneshot::Sender<()>),
}

/// A running daemon.
pub struct DaemonHandle {
    cmd: mpsc::Sender<Command>,
    events: broadcast::Sender<GatewayEvent>,
    /// Bound IKE and NAT-T addresses.
    pub ike_addrs: Vec<SocketAddr>,
    pub natt_addrs: Vec<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl DaemonHandle {
    /// A receiver of gateway events (ddns and cluster subscribe here).
    pub fn subscribe(&self) -> broadcast::Receiver<GatewayEvent> {
        self.events.subscribe()
    }

    /// The broadcast sender itself (for glue that wants to spawn its own receivers later).
    pub fn events(&self) -> broadcast::Sender<GatewayEvent> {
        self.events.clone()
    }

    /// The SA table.
    pub async fn status(&self) -> Vec<TunnelStatus> {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Status(tx)).await.is_err() {
            return vec![];
        }
        rx.await.unwrap_or_default()
    }

    /// The engine's counters.
    pub async fn counters(&self) -> Option<ike::endpoint::Counters> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(Command::Counters(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Starts a CREATE_CHILD_SA rekey (RFC 7296 2.8) of every installed CHILD SA of the
    /// tunnels whose gateway ID or identity is `name`; returns how many were started.
    pub async fn rekey_child_sas(&self, name: &str) -> usize {
        let (tx, rx) = oneshot::channel();
        if self
            .cmd
            .send(Command::RekeyChildSas(name.to_string(), tx))
            .await
            .is_err()
        {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Deletes all IKE SAs (RFC 7296 1.4.1), waits briefly for the answers, stops.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }
}

/// Options the caller may add to a start.
pub struct StartOptions {
    pub dataplane: Box<dyn ChildSaSink>,
    pub esp: Arc<dyn EspSink>,
    /// Rekey requests from the data plane (CHILD SA inbound SPI).
    pub rekey: Option<mpsc::UnboundedReceiver<Spi>>,
    /// When the data plane owns the NAT-T sockets: their addresses, IKE datagrams from
    /// them, and how to send on them.
    pub natt: Option<(
        Vec<SocketAddr>,
        mpsc::Receiver<driver::Datagram>,
        driver::NattSend,
    )>,
}

impl Default for StartOptions {
    fn default() -> Self {
        let null = Arc::new(NullDataplane::default());
        Self {
            dataplane: Box::new(NullDataplane::default()),
            esp: null,
            rekey: None,
            natt: None,
        }
    }
}

/// How often the `[auth]` CRL files are checked for changes.
const CRL_POLL: Duration = Duration::from_secs(5);

/// Binds the sockets and starts the engine task.
pub async fn start(cfg: &Config, opts: StartOptions) -> Result<DaemonHandle, Error> {
    let ep_cfg = cfg.responder_endpoint();
    let natt_port = if opts.natt.is_some() {
        None
    } else {
        Some(cfg.ike.natt_port)
    };
    let mut sockets = Sockets::bind(&cfg.ike.listen, cfg.ike.port, natt_port, opts.esp).await?;
    if let Some((locals, rx, send)) = opts.natt {
        sockets.attach_natt(&locals, rx, send);
    }
    let ike_addrs = sockets.ike_addrs.clone();
    let natt_addrs = sockets.natt_addrs.clone();
    let ep = Endpoint::new(ep_cfg, driver::seed());
    if let Some(mut w) = cfg.crl_watcher() {
        // `[auth]` CRL files are re-read when they change (issue 7).
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CRL_POLL).await;
                w.poll();
            }
        });
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, _) = broadcast::channel(4096);
    let task = tokio::spawn(engine_task(
        ep,
        sockets,
        cmd_rx,
        ev_tx.clone(),
        opts.dataplane,
        opts.rekey,
        // Deleted CHILD SAs are listed while the data plane still accepts on them.
        cfg.dataplane
            .as_ref()
            .map(|d| d.rekey_linger())
            .unwrap_or_default(),
    ));
    tracing::info!(ike = ?ike_addrs, natt = ?natt_addrs, "headend responder listening");
    Ok(DaemonHandle {
        cmd: cmd_tx,
        events: ev_tx,
        ike_addrs,
        natt_addrs,
        task,
    })
}

async fn tick(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

pub(crate) async fn recv_opt<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

struct Loop {
    ep: Endpoint,
    sockets: Sockets,
    table: SaTable,
    events: broadcast::Sender<GatewayEvent>,
    dp: Box<dyn ChildSaSink>,
}

impl Loop {
    async fn after_input(&mut self) {
        self.sockets.flush(&mut self.ep).await;
        while let Some(ev) = self.ep.poll() {
            to_dataplane(self.dp.as_mut(), &ev);
            let about = match &ev {
                Event::IkeSaEstablished { ike_sa, .. } => Some(*ike_sa),
                Event::IkeSaRekeyed { new, .. } => Some(*new),
                _ => None,
            };
            let spis = about
                .and_then(|id| self.ep.ike_sa(id))
                .map_or((0, 0), |i| (i.spi_i, i.spi_r));
            if let Some(g) = self.table.apply_with_spis(&ev, SystemTime::now(), spis) {
                let _ = self.events.send(g);
            }
        }
        self.sockets.flush(&mut self.ep).await;
    }
}

async fn engine_task(
    ep: Endpoint,
    sockets: Sockets,
    mut cmd_rx: mpsc::Receiver<Command>,
    events: broadcast::Sender<GatewayEvent>,
    dp: Box<dyn ChildSaSink>,
    mut rekey: Option<mpsc::UnboundedReceiver<Spi>>,
    linger: Duration,
) {
    let mut l = Loop {
        ep,
        sockets,
        table: SaTable::with_linger(linger),
        events,
        dp,
    };
    // systemd watchdog pings come from this loop: a hung engine stops them.
    let notifier = crate::notify::Notifier::from_env();
    let mut wd = notifier
        .as_ref()
        .and_then(|n| n.watchdog)
        .map(tokio::time::interval);
    let done = loop {
        let deadline = l.ep.poll_timeout();
        tokio::select! {
            _ = tick(&mut wd) => {
                if let Some(n) = &notifier {
                    n.watchdog();
                }
                continue;
            }
            cmd = cmd_rx.recv() => match cmd {
                Some(Command::Status(tx)) => {
                    l.table.prune(SystemTime::now());
                    let _ = tx.send(l.table.tunnels().cloned().collect());
                    continue;
                }
                Some(Command::Counters(tx)) => { let _ = tx.send(l.ep.counters().clone()); continue; }
                Some(Command::RekeyChildSas(name, tx)) => {
                    let now = Instant::now();
                    let spis: Vec<Spi> = l
                        .table
                        .tunnels()
                        .filter(|t| t.gateway_id.as_str() == name || t.identity.to_string() == name)
                        .flat_map(|t| t.child_sas.iter())
                        .filter(|c| c.state == ChildState::Installed)
                        .map(|c| c.inbound)
                        .collect();
                    let started = spis
                        .into_iter()
                        .filter(|spi| l.ep.rekey_child_sa(now, *spi).is_ok())
                        .count();
                    let _ = tx.send(started);
                }
                Some(Command::Shutdown(tx)) => break Some(tx),
                None => break None,
            },
            d = l.sockets.rx.recv() => match d {
                Some(d) => {
                    // Certificate validity is checked against the wall clock (issue 7).
                    l.ep.set_wall_clock(SystemTime::now());
                    driver::feed(&mut l.ep, d, &mut l.sockets.rx)
                }
                None => break None,
            },
            _ = driver::sleep_until(deadline) => l.ep.handle_timeout(Instant::now()),
            Some(spi) = recv_opt(&mut rekey) => {
                if let Err(e) = l.ep.rekey_child_sa(Instant::now(), spi) {
                    tracing::debug!(spi = %format_args!("{:08x}", spi.0), error = %e, "CHILD SA rekey request refused");
                }
            }
        }
        l.after_input().await;
    };
    // Shutdown: Delete every IKE SA, publish Down for every tunnel, give the peers a
    // moment to answer (our retransmissions keep running), then stop.
    let now = Instant::now();
    let ids: Vec<IkeSaId> = l.ep.ike_sas().iter().map(|i| i.id).collect();
    for id in &ids {
        let _ = l.ep.delete_ike_sa(now, *id);
    }
    l.after_input().await;
    for g in l.table.drain_down("shutdown", SystemTime::now()) {
        let _ = l.events.send(g);
    }
    tracing::info!(ike_sas = ids.len(), "shutting down: Deletes sent");
    let until = Instant::now() + SHUTDOWN_GRACE;
    while Instant::now() < until && !l.ep.ike_sas().is_empty() {
        let deadline = l.ep.poll_timeout().map_or(until, |d| d.min(until));
        tokio::select! {
            d = l.sockets.rx.recv() => match d {
                Some(d) => driver::feed(&mut l.ep, d, &mut l.sockets.rx),
                None => break,
            },
            _ = driver::sleep_until(Some(deadline)) => l.ep.handle_timeout(Instant::now()),
        }
        l.after_input().await;
    }
    if let Some(tx) = done {
        let _ = tx.send(());
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn est(id: u64, who: &str, vip: [u8; 4]) -> Event {
        Event::IkeSaEstablished {
            ike_sa: IkeSaId(id),
            local: "127.0.0.1:500".parse().unwrap(),
            remote: "127.0.0.2:500".parse().unwrap(),
            local_id: Identity::Fqdn("hub".into()),
            remote_id: Identity::Fqdn(who.into()),
            remote_cert_cn: None,
            virtual_ips: vec![IpAddr::V4(Ipv4Addr::from(vip))],
            udp_encap: false,
        }
    }

    fn child(ike_sa: u64, spi_in: u32, spi_out: u32) -> ChildSa {
        let keys = |spi| ike::EspKeys {
            spi: Spi(spi),
            encr: ike::EncrAlg::AesGcm16(256),
            encr_key: zeroize::Zeroizing::new(vec![7; 36]),
            integ: None,
            integ_key: zeroize::Zeroizing::new(vec![]),
            esn: false,
        };
        ChildSa {
            ike_sa: IkeSaId(ike_sa),
            inbound: keys(spi_in),
            outbound: keys(spi_out),
            local_ts: vec![],
            remote_ts: vec![],
            local: "127.0.0.1:500".parse().unwrap(),
            remote: "127.0.0.2:500".parse().unwrap(),
            udp_encap: false,
        }
    }

    fn child_rows(t: &SaTable) -> Vec<(u32, u32, &'static str)> {
        t.tunnels()
            .flat_map(|s| s.child_sas.iter())
            .map(|c| (c.inbound.0, c.outbound.0, c.state.label()))
            .collect()
    }

    /// During a rekey hand-over the status lists the old pair beside the new one
    /// (`rekeyed` until its Delete, then `deleted` for the data plane's linger), and a
    /// redundant pair of a simultaneous rekey as such; afterwards only the survivor.
    #[test]
    fn child_sa_rows_follow_the_rekey_hand_over() {
        let t0 = SystemTime::UNIX_EPOCH;
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut t = SaTable::with_linger(Duration::from_secs(2));
        t.apply(&est(1, "r1", [10, 99, 0, 1]), t0);
        t.apply(&Event::ChildSaInstalled(child(1, 0x100, 0x200)), t0);
        assert_eq!(child_rows(&t), vec![(0x100, 0x200, "installed")]);
        let rekey = |old, c, initiator, redundant| Event::ChildSaRekeyed {
            old_inbound: Spi(old),
            new: c,
            initiator,
            redundant,
        };
        // Both ends rekey at once: we answer the peer's, ours turns out redundant.
        t.apply(&rekey(0x100, child(1, 0x101, 0x201), false, false), at(10));
        t.apply(&rekey(0x100, child(1, 0x102, 0x202), true, true), at(20));
        assert_eq!(
            child_rows(&t),
            vec![
                (0x100, 0x200, "rekeyed"),
                (0x101, 0x201, "installed"),
                (0x102, 0x202, "redundant")
            ]
        );
        let deleted = |i, o| Event::ChildSaDeleted {
            ike_sa: IkeSaId(1),
            inbound: Spi(i),
            outbound: Spi(o),
        };
        t.apply(&deleted(0x102, 0x202), at(30));
        t.apply(&deleted(0x100, 0x200), at(1000));
        assert_eq!(
            child_rows(&t),
            vec![
                (0x100, 0x200, "deleted"),
                (0x101, 0x201, "installed"),
                (0x102, 0x202, "deleted")
            ]
        );
        t.prune(at(2029));
        assert_eq!(child_rows(&t).len(), 3, "both still within the linger");
        t.prune(at(2030));
        assert_eq!(
            child_rows(&t),
            vec![(0x100, 0x200, "deleted"), (0x101, 0x201, "installed")]
        );
        t.prune(at(3000));
        assert_eq!(child_rows(&t), vec![(0x101, 0x201, "installed")]);
        // Without a data plane nothing lingers: a deleted pair goes at once.
        let mut t = SaTable::default();
        t.apply(&est(1, "r1", [10, 99, 0, 1]), t0);
        t.apply(&Event::ChildSaInstalled(child(1, 0x100, 0x200)), t0);
        t.apply(&rekey(0x100, child(1, 0x101, 0x201), true, false), t0);
        t.apply(&deleted(0x100, 0x200), t0);
        assert_eq!(child_rows(&t), vec![(0x101, 0x201, "installed")]);
    }

    #[test]
    fn up_carries_sanitized_gateway_id_and_vip() {
        let mut t = SaTable::default();
        let g = t
            .apply(
                &est(1, "MG90/Site #12", [10, 99, 0, 1]),
                SystemTime::UNIX_EPOCH,
            )
            .unwrap();
        match g {
            GatewayEvent::Up {
                gateway_id,
                vips,
                tunnel,
                ..
            } => {
                assert_eq!(gateway_id.as_str(), "MG90-Site-12");
                assert_eq!(vips, vec![IpAddr::from([10, 99, 0, 1])]);
                assert_eq!(tunnel, TunnelId(1));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn cert_cn_wins_over_identity() {
        let mut t = SaTable::default();
        let mut e = est(1, "dn-ignored", [10, 99, 0, 1]);
        if let Event::IkeSaEstablished { remote_cert_cn, .. } = &mut e {
            *remote_cert_cn = Some("router.cn".into());
        }
        let g = t.apply(&e, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(g.gateway_id().as_str(), "router-cn");
    }

    #[test]
    fn ike_rekey_is_not_a_down_and_later_delete_is() {
        let mut t = SaTable::default();
        t.apply(&est(1, "r1", [10, 99, 0, 1]), SystemTime::UNIX_EPOCH);
        assert!(t
            .apply(
                &Event::IkeSaRekeyed {
                    old: IkeSaId(1),
                    new: IkeSaId(2)
                },
                SystemTime::UNIX_EPOCH
            )
            .is_none());
        let del_old = Event::IkeSaDeleted {
            ike_sa: IkeSaId(1),
            reason: DeleteReason::Rekeyed,
        };
        assert!(t.apply(&del_old, SystemTime::UNIX_EPOCH).is_none());
        assert_eq!(t.len(), 1);
        assert_eq!(t.by_ike_sa(IkeSaId(2)).unwrap().ike_sa, IkeSaId(2));
        let del = Event::IkeSaDeleted {
            ike_sa: IkeSaId(2),
            reason: DeleteReason::Timeout,
        };
        match t.apply(&del, SystemTime::UNIX_EPOCH).unwrap() {
            GatewayEvent::Down {
                tunnel,
                reason,
                gateway_id,
                ..
            } => {
                assert_eq!(tunnel, TunnelId(1), "tunnel id survives the rekey");
                assert_eq!(reason, "timeout");
                assert_eq!(gateway_id.as_str(), "r1");
            }
            other => panic!("{other:?}"),
        }
        assert!(t.is_empty());
    }

    #[test]
    fn reconnect_with_initial_contact_gives_up_then_down_of_old_tunnel() {
        let mut t = SaTable::default();
        t.apply(&est(1, "r1", [10, 99, 0, 1]), SystemTime::UNIX_EPOCH);
        let up = t
            .apply(&est(2, "r1", [10, 99, 0, 1]), SystemTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(up.tunnel(), TunnelId(2));
        let down = t
            .apply(
                &Event::IkeSaDeleted {
                    ike_sa: IkeSaId(1),
                    reason: DeleteReason::InitialContact,
                },
                SystemTime::UNIX_EPOCH,
            )
            .unwrap();
        assert_eq!(
            down.tunnel(),
            TunnelId(1),
            "consumers key by tunnel, so the new record stays"
        );
        assert!(!down.is_up());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn unknown_deletes_and_failures_publish_nothing() {
        let mut t = SaTable::default();
        assert!(t
            .apply(
                &Event::IkeSaDeleted {
                    ike_sa: IkeSaId(9),
                    reason: DeleteReason::Failed("x".into())
                },
                SystemTime::UNIX_EPOCH
            )
            .is_none());
        let f = Event::NegotiationFailed {
            remote: "127.0.0.1:1".parse().unwrap(),
            identity: None,
            reason: "AUTH".into(),
        };
        assert!(t.apply(&f, SystemTime::UNIX_EPOCH).is_none());
    }

    #[test]
    fn shutdown_downs_everything() {
        let mut t = SaTable::default();
        t.apply(&est(1, "a", [10, 99, 0, 1]), SystemTime::UNIX_EPOCH);
        t.apply(&est(2, "b", [10, 99, 0, 2]), SystemTime::UNIX_EPOCH);
        let mut ids: Vec<_> = t
            .drain_down("shutdown", SystemTime::UNIX_EPOCH)
            .iter()
            .map(|g| g.gateway_id().to_string())
            .collect();
        ids.sort();
        assert_eq!(ids, vec!["a", "b"]);
        assert!(t.is_empty());
    }

    /// What the daemon calls on an ESP back end (`dataplane::backend`), in order.
    #[derive(Debug, PartialEq)]
    enum Call {
        Install(u32, u32),
        Rekey(u32, u32, u32, crate::dataplane::Handover),
        Remove(u32, u32),
    }

    /// A back end that records the calls and refuses to install the SPI `refuse`.
    struct Recorder {
        calls: std::sync::Mutex<std::sync::mpsc::Sender<Call>>,
        rekey: Option<mpsc::UnboundedReceiver<crate::dataplane::RekeyRequest>>,
        refuse: Spi,
    }

    impl Recorder {
        fn record(&self, c: Call) {
            let _ = self.calls.lock().unwrap().send(c);
        }
    }

    impl crate::dataplane::EspBackend for Recorder {
        fn install(&self, sa: &ChildSa) -> Result<(), Error> {
            self.record(Call::Install(sa.inbound.spi.0, sa.outbound.spi.0));
            if sa.inbound.spi == self.refuse {
                return Err(Error::Other("refused".into()));
            }
            Ok(())
        }
        fn rekey(
            &self,
            old_inbound: Spi,
            new: &ChildSa,
            handover: crate::dataplane::Handover,
        ) -> Result<(), Error> {
            let (i, o) = (new.inbound.spi.0, new.outbound.spi.0);
            self.record(Call::Rekey(old_inbound.0, i, o, handover));
            Ok(())
        }
        fn remove(&self, inbound: Spi, outbound: Spi) -> Result<(), Error> {
            self.record(Call::Remove(inbound.0, outbound.0));
            Ok(())
        }
        fn usage(&self, _child: Spi) -> Option<((u64, u64), (u64, u64))> {
            None
        }
        fn counters(&self) -> crate::dataplane::Counters {
            crate::dataplane::Counters::default()
        }
        fn take_rekey_requests(
            &mut self,
        ) -> Option<mpsc::UnboundedReceiver<crate::dataplane::RekeyRequest>> {
            self.rekey.take()
        }
    }

    /// The back-end seam's contract, which a kernel XFRM back end would have to pass too:
    /// the engine's CHILD SA events, through the glue `headend run` and `headend peer` use
    /// (`to_dataplane` into `services::attach_backend`'s sink), reach the back end in
    /// their order: install; rekey with the new pair carrying traffic at once when we
    /// initiated, at the old pair's delete when we answered, never for the redundant SA
    /// of a simultaneous rekey; delete. A refused install does not stop the ones after
    /// it, events of no CHILD SA reach nothing, and the back end's rekey requests reach
    /// the engine as the CHILD SA's inbound SPI.
    #[tokio::test]
    async fn the_daemon_drives_the_data_plane_through_the_backend_seam() {
        use crate::dataplane::{Handover, RekeyRequest};
        let (calls_tx, calls) = std::sync::mpsc::channel();
        let (rekey_tx, rekey_rx) = mpsc::unbounded_channel();
        let fake = Recorder {
            calls: std::sync::Mutex::new(calls_tx),
            rekey: Some(rekey_rx),
            refuse: Spi(0x666),
        };
        let mut parts = crate::services::attach_backend(Box::new(fake)).unwrap();
        let rekey = |old, c, initiator, redundant| Event::ChildSaRekeyed {
            old_inbound: Spi(old),
            new: c,
            initiator,
            redundant,
        };
        let deleted = |i, o| Event::ChildSaDeleted {
            ike_sa: IkeSaId(1),
            inbound: Spi(i),
            outbound: Spi(o),
        };
        let events = [
            est(1, "r1", [10, 99, 0, 1]),
            Event::ChildSaInstalled(child(1, 0x666, 0x777)),
            Event::ChildSaInstalled(child(1, 0x100, 0x200)),
            rekey(0x100, child(1, 0x101, 0x201), true, false),
            rekey(0x101, child(1, 0x102, 0x202), false, false),
            rekey(0x101, child(1, 0x103, 0x203), true, true),
            deleted(0x103, 0x203),
            deleted(0x100, 0x200),
            deleted(0x101, 0x201),
        ];
        for ev in &events {
            to_dataplane(parts.sink.as_mut(), ev);
        }
        let want = vec![
            Call::Install(0x666, 0x777),
            Call::Install(0x100, 0x200),
            Call::Rekey(0x100, 0x101, 0x201, Handover::Now),
            Call::Rekey(0x101, 0x102, 0x202, Handover::AtDelete),
            Call::Rekey(0x101, 0x103, 0x203, Handover::Never),
            Call::Remove(0x103, 0x203),
            Call::Remove(0x100, 0x200),
            Call::Remove(0x101, 0x201),
        ];
        let wait = Duration::from_secs(10);
        let got: Vec<Call> = (0..want.len())
            .map_while(|_| calls.recv_timeout(wait).ok())
            .collect();
        assert_eq!(got, want);

        rekey_tx
            .send(RekeyRequest {
                child: Spi(0x102),
                reason: ike::esp::RekeyReason::Bytes,
            })
            .unwrap();
        let mut to_engine = parts.rekey.take().expect("the back end's rekey requests");
        let asked = tokio::time::timeout(wait, to_engine.recv()).await;
        assert_eq!(asked.ok().flatten(), Some(Spi(0x102)));

        // Nothing else was called: once the daemon lets go, the back end is dropped.
        drop(parts);
        assert_eq!(
            calls.recv_timeout(wait).err(),
            Some(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
