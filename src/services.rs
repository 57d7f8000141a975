//! Wiring of the optional services around the IKE daemon, each enabled by its section:
//! `[dataplane]` (userspace ESP), `[service.ipsec-ddns]` (cluster), `[dns]` (authoritative
//! DNS). Gateway events flow IKE -> cluster (publish) and IKE -> DNS (local records);
//! cluster record changes flow -> DNS (records of the other members).
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{mpsc as std_mpsc, Arc};

use ike::{ChildSa, SocketKind, Spi};
use tokio::sync::{broadcast, mpsc};

use crate::config::Config;
use crate::dataplane::{Dataplane, DataplaneConfig, EspBackend, Handover};
use crate::driver::{ChildSaSink, Datagram, NattSend};
use crate::error::Error;
use crate::event::{GatewayEvent, TunnelId};
use crate::run::{self, DaemonHandle, StartOptions};

/// Everything `headend run` started.
pub struct Services {
    pub daemon: DaemonHandle,
    pub dataplane: Option<Arc<dyn EspBackend>>,
    /// Without a data plane: the refusals on the daemon's own NAT-T sockets.
    pub natt_refused: Option<Arc<crate::driver::NullDataplane>>,
    pub dns: Option<crate::dns::DnsService>,
    /// The ipsec-ddns member running now, whether the configuration file or a `commit`
    /// started it (`None` when not enabled, or after a `commit` left the cluster).
    cluster: std::sync::Mutex<Option<Member>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A running cluster member and the glue tasks that feed it and follow it.
struct Member {
    handle: cluster::ClusterHandle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Services {
    /// The ESP counters: the data plane's, or without one the refusals on the daemon's
    /// own NAT-T sockets (under the same drop reasons).
    pub fn esp_counters(&self) -> Option<crate::dataplane::Counters> {
        match (&self.dataplane, &self.natt_refused) {
            (Some(dp), _) => Some(dp.counters()),
            (None, Some(n)) => Some(n.counters()),
            (None, None) => None,
        }
    }

    /// The cluster member running now (started by `headend run` or by a `commit`).
    pub fn cluster(&self) -> Option<cluster::ClusterHandle> {
        self.member_slot().as_ref().map(|m| m.handle.clone())
    }

    fn member_slot(&self) -> std::sync::MutexGuard<'_, Option<Member>> {
        // A panic while holding this short lock leaves a valid Option: keep using it.
        self.cluster
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// SIGTERM path: Deletes to every peer and Down events first, then the rest. The
    /// cluster member (from the file or a `commit`) is stopped with its state on disk.
    pub async fn shutdown(self) {
        self.daemon.shutdown().await;
        // Let the glue tasks forward the Down events (bounded: the whole stop stays < 2 s).
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        for t in &self.tasks {
            t.abort();
        }
        let member = self
            .cluster
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(m) = member {
            for t in &m.tasks {
                t.abort();
            }
            let id = m.handle.id().to_string();
            match tokio::time::timeout(std::time::Duration::from_millis(300), m.handle.shutdown())
                .await
            {
                Ok(Ok(())) => tracing::info!(member = %id, "ipsec-ddns member stopped"),
                Ok(Err(e)) => {
                    tracing::warn!(member = %id, error = %e, "ipsec-ddns member stop failed")
                }
                Err(_) => tracing::warn!(member = %id, "ipsec-ddns member stop timed out"),
            }
        }
        if let Some(d) = self.dns {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(300), d.shutdown()).await;
        }
        drop(self.dataplane);
    }

    /// `commit` enabling ipsec-ddns in a running daemon (seed 003 ch. 4): start the member
    /// with the same glue as at daemon start (our gateway events published, the other
    /// members' records into the zone). A refusal returns before anything is wired.
    pub async fn start_cluster(
        &self,
        cc: cluster::ClusterConfig,
    ) -> Result<cluster::Started, cluster::Error> {
        let (h, mut ev, started) = cluster::Cluster::start(cc).await?;
        tracing::info!("{started}");
        let mut tasks = vec![];
        // Subscribe first, then take the tunnels already up: nothing is missed, and a
        // repeated Up is idempotent.
        let rx = self.daemon.subscribe();
        let up: Vec<GatewayEvent> = self
            .daemon
            .status()
            .await
            .into_iter()
            .map(|t| GatewayEvent::Up {
                tunnel: t.tunnel,
                gateway_id: t.gateway_id,
                identity: t.identity,
                vips: t.vips,
                remote: t.remote,
                at: t.since,
            })
            .collect();
        tasks.push(tokio::spawn(publish_to_cluster(h.clone(), up, rx)));
        match &self.dns {
            Some(d) => {
                if started == cluster::Started::Created {
                    d.zone.set_synced(true);
                }
                let ev =
                    crate::pool_dns::follow_cluster(d.zone.clone(), h.clone(), d.reach.clone(), ev);
                tasks.push(tokio::spawn(cluster_to_zone(
                    d.zone.clone(),
                    h.id().to_string(),
                    ev,
                )));
            }
            None => {
                tasks.push(tokio::spawn(
                    async move { while ev.recv().await.is_some() {} },
                ));
            }
        }
        let old = self.member_slot().replace(Member { handle: h, tasks });
        if let Some(old) = old {
            // Not reached through `commit` (it starts a member only when none runs).
            for t in &old.tasks {
                t.abort();
            }
            let _ = old.handle.shutdown().await;
        }
        Ok(started)
    }

    /// `delete service ipsec-ddns enable` + `commit`: tell the members we leave, stop the
    /// glue, and answer only this head-end's own tunnels from now on (the other members'
    /// records leave the zone, the pool is this head-end alone). Without a member: no-op.
    pub async fn leave_cluster(&self) -> Result<(), cluster::Error> {
        let Some(h) = self.cluster() else {
            return Ok(());
        };
        let others: Vec<String> = h
            .members()
            .await
            .map(|ms| {
                ms.into_iter()
                    .filter(|m| !m.is_self)
                    .map(|m| m.member)
                    .collect()
            })
            .unwrap_or_default();
        h.leave().await?;
        let member = self.member_slot().take();
        if let Some(m) = member {
            for t in &m.tasks {
                t.abort();
            }
        }
        if let Some(d) = &self.dns {
            for m in &others {
                d.zone.remove_member(m);
            }
            d.zone.set_pool(crate::pool_dns::standalone(&d.reach));
        }
        tracing::info!(member = %h.id(), "left the ipsec-ddns cluster");
        Ok(())
    }
}

enum DpOp {
    Install(ChildSa),
    /// Old inbound SPI, the new pair, which outbound SA carries traffic.
    Rekeyed(Spi, ChildSa, Handover),
    Remove(Spi, Spi),
}

/// CHILD SA operations on a thread of their own: the data plane may block on route
/// updates, the engine task must not.
struct DpSink {
    tx: std_mpsc::Sender<DpOp>,
}

impl ChildSaSink for DpSink {
    fn install(&mut self, sa: &ChildSa) {
        let _ = self.tx.send(DpOp::Install(sa.clone()));
    }
    fn rekeyed(&mut self, old_inbound: Spi, new: &ChildSa, handover: Handover) {
        let _ = self
            .tx
            .send(DpOp::Rekeyed(old_inbound, new.clone(), handover));
    }
    fn remove(&mut self, inbound: Spi, outbound: Spi) {
        let _ = self.tx.send(DpOp::Remove(inbound, outbound));
    }
}

fn dp_worker(h: Arc<dyn EspBackend>, rx: std_mpsc::Receiver<DpOp>) {
    while let Ok(op) = rx.recv() {
        let (what, spi, r) = match &op {
            DpOp::Install(c) => ("install", c.inbound.spi, h.install(c)),
            // The rekey initiator switches to the new outbound SA at once, the responder
            // when the initiator deletes the old pair (it has the new inbound SA by then).
            DpOp::Rekeyed(old, c, handover) => ("rekey", *old, h.rekey(*old, c, *handover)),
            DpOp::Remove(i, o) => ("remove", *i, h.remove(*i, *o)),
        };
        if let Err(e) = r {
            tracing::warn!(op = what, spi = %format_args!("{:08x}", spi.0), error = %e, "data plane refused a CHILD SA operation");
        }
    }
}

/// The data plane's config with NAT-T sockets of both families on `ike.natt_port`, each
/// on the first `[ike] listen` address of its family (a wildcard when there is none),
/// unless `[dataplane] natt_bind` says otherwise.
fn dataplane_config(cfg: &Config, dp: &DataplaneConfig) -> DataplaneConfig {
    let mut dp = dp.clone();
    if dp.natt_bind == DataplaneConfig::default().natt_bind {
        for a in &mut dp.natt_bind {
            let ip = cfg.ike.listen.iter().find(|l| l.is_ipv6() == a.is_ipv6());
            *a = SocketAddr::new(ip.copied().unwrap_or(a.ip()), cfg.ike.natt_port);
        }
    }
    dp
}

/// A started data plane, cut into the pieces the IKE drivers take.
pub struct DataplaneParts {
    pub handle: Arc<dyn EspBackend>,
    /// The TUN device's name.
    pub tun: String,
    /// The NAT-T sockets' addresses, the IKE datagrams received on them, and how to send
    /// on them (from the socket of the destination's family).
    pub natt: (Vec<SocketAddr>, mpsc::Receiver<Datagram>, NattSend),
    /// CHILD SA events go here (applied on a thread of their own).
    pub sink: Box<dyn ChildSaSink>,
    /// CHILD SAs (inbound SPI) the data plane wants rekeyed (lifetimes, sequence numbers).
    pub rekey: Option<mpsc::UnboundedReceiver<Spi>>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// An ESP back end wired to the daemon: the CHILD SA half of [`DataplaneParts`].
pub struct BackendParts {
    pub handle: Arc<dyn EspBackend>,
    pub sink: Box<dyn ChildSaSink>,
    pub rekey: Option<mpsc::UnboundedReceiver<Spi>>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Wires any [`EspBackend`] to the daemon (the seam, `dataplane::backend`): CHILD SA
/// events through the returned sink reach it in order on a thread of its own (it may
/// block on route or netlink updates, the engine task must not; a refused operation is
/// logged and the next one still applied), its rekey requests become the engine's
/// CHILD SA rekeys (inbound SPI).
pub fn attach_backend(mut backend: Box<dyn EspBackend>) -> Result<BackendParts, Error> {
    let mut tasks = vec![];
    let rekey_rx = backend.take_rekey_requests();
    let h: Arc<dyn EspBackend> = Arc::from(backend);
    let mut rekey = None;
    if let Some(mut rr) = rekey_rx {
        let (stx, srx) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(async move {
            while let Some(r) = rr.recv().await {
                tracing::debug!(spi = %format_args!("{:08x}", r.child.0), reason = ?r.reason, "data plane asks for a CHILD SA rekey");
                if stx.send(r.child).is_err() {
                    return;
                }
            }
        }));
        rekey = Some(srx);
    }
    let (otx, orx) = std_mpsc::channel();
    let hw = h.clone();
    std::thread::Builder::new()
        .name("dataplane-ops".into())
        .spawn(move || dp_worker(hw, orx))?;
    Ok(BackendParts {
        handle: h,
        sink: Box::new(DpSink { tx: otx }),
        rekey,
        tasks,
    })
}

/// Starts the userspace data plane (TUN device: needs CAP_NET_ADMIN) and the glue tasks.
pub fn start_dataplane(dp: DataplaneConfig) -> Result<DataplaneParts, Error> {
    let mut tasks = vec![];
    let mut h = Dataplane::start(dp)?;
    let locals = h.natt_locals().to_vec();
    let mut ike_rx = h
        .take_ike_datagrams()
        .ok_or_else(|| Error::Other("data plane IKE channel already taken".into()))?;
    let tun = h.tun_name().to_string();
    tracing::info!(tun, natt = ?locals, "data plane started");
    let (tx, rx) = mpsc::channel::<Datagram>(4096);
    tasks.push(tokio::spawn(async move {
        let mut route_cache = HashMap::new();
        while let Some(d) = ike_rx.recv().await {
            let d = Datagram {
                kind: SocketKind::NatT,
                // A wildcard NAT-T socket: the address the peer reached, as for 500.
                local: crate::driver::resolve_local(&mut route_cache, d.local, d.remote),
                remote: d.remote,
                data: d.bytes,
            };
            if tx.send(d).await.is_err() {
                return;
            }
        }
    }));
    let natt_send = h.natt_sender();
    let send: NattSend = Arc::new(move |remote, bytes| {
        natt_send(remote, bytes).map_err(|e| std::io::Error::other(e.to_string()))
    });
    // Only the NAT-T sockets above are the userspace data plane's own; the rest is the
    // back-end seam.
    let b = attach_backend(Box::new(h))?;
    tasks.extend(b.tasks);
    Ok(DataplaneParts {
        handle: b.handle,
        tun,
        natt: (locals, rx, send),
        sink: b.sink,
        rekey: b.rekey,
        tasks,
    })
}

/// Starts everything the configuration asks for.
pub async fn start(cfg: &Config) -> Result<Services, Error> {
    let mut tasks = vec![];
    let mut opts = StartOptions::default();
    let mut cfg = cfg.clone();
    let mut dataplane = None;
    let mut natt_refused = None;
    if let Some(dp) = &cfg.dataplane {
        let dp = dataplane_config(&cfg, dp);
        // The engine must send NAT-T from the data plane's socket port.
        cfg.ike.natt_port = dp.natt_bind.first().map_or(cfg.ike.natt_port, |a| a.port());
        let parts = start_dataplane(dp)?;
        opts.natt = Some(parts.natt);
        opts.rekey = parts.rekey;
        opts.dataplane = parts.sink;
        tasks.extend(parts.tasks);
        dataplane = Some(parts.handle);
    } else {
        let null = Arc::new(crate::driver::NullDataplane::default());
        opts.esp = null.clone();
        natt_refused = Some(null);
    }
    let daemon = run::start(&cfg, opts).await?;

    // Cluster: publish our tunnels, learn everybody else's.
    let mut cluster_events = None;
    let mut cluster_handle = None;
    let mut created = false;
    let mut member_tasks = vec![];
    if let Some(cc) = cfg.service.ipsec_ddns.as_ref().filter(|c| c.enable) {
        let (h, ev, started) = cluster::Cluster::start(cc.clone())
            .await
            .map_err(|e| Error::Other(format!("service ipsec-ddns: {e}")))?;
        tracing::info!("{started}");
        eprintln!("{started}");
        created = started == cluster::Started::Created;
        member_tasks.push(tokio::spawn(publish_to_cluster(
            h.clone(),
            vec![],
            daemon.subscribe(),
        )));
        cluster_events = Some(ev);
        cluster_handle = Some(h);
    }

    // DNS: standalone (zone complete at once) or fed by the cluster.
    let mut dns = None;
    if let Some(dc) = cfg.dns.as_ref().filter(|d| d.enable) {
        let cc = cfg.service.ipsec_ddns.as_ref().filter(|c| c.enable);
        let domain = dc
            .domain
            .clone()
            .or_else(|| cc.map(|c| c.domain.clone()))
            .ok_or_else(|| {
                Error::Config("dns.domain: needed (or service.ipsec-ddns.domain)".into())
            })?;
        let member = cc.map_or_else(|| "local".to_string(), |c| c.self_addr.clone());
        let mut svc = crate::dns::spawn(dc, &domain, &member, cc.is_none(), daemon.subscribe())
            .await
            .map_err(|e| Error::Other(format!("dns: {e}")))?;
        svc.reach = crate::pool_dns::Reach::new(
            &dc.pool_address,
            &cfg.ike.listen,
            dc.pool_capacity,
            cfg.pool.v4.as_ref().map(|c| c.0.prefix_len()),
            cfg.pool.v6.as_ref().map(|c| c.0.prefix_len()),
        );
        if let Some(ev) = cluster_events.take() {
            if created {
                svc.zone.set_synced(true);
            }
            let ev = match &cluster_handle {
                Some(h) => crate::pool_dns::follow_cluster(
                    svc.zone.clone(),
                    h.clone(),
                    svc.reach.clone(),
                    ev,
                ),
                None => ev,
            };
            member_tasks.push(tokio::spawn(cluster_to_zone(svc.zone.clone(), member, ev)));
        } else {
            svc.zone.set_pool(crate::pool_dns::standalone(&svc.reach));
        }
        dns = Some(svc);
    }
    if let Some(mut ev) = cluster_events {
        // No DNS here: still drain the cluster's events.
        member_tasks.push(tokio::spawn(
            async move { while ev.recv().await.is_some() {} },
        ));
    }
    Ok(Services {
        daemon,
        dataplane,
        natt_refused,
        dns,
        cluster: std::sync::Mutex::new(cluster_handle.map(|handle| Member {
            handle,
            tasks: member_tasks,
        })),
        tasks,
    })
}

/// Local tunnels per gateway ID, so that a reconnect (new Up, then the old tunnel's Down)
/// keeps the record up: the newest live tunnel's addresses are published.
#[derive(Debug, Default)]
pub struct LocalGateways {
    live: HashMap<String, BTreeMap<TunnelId, Vec<IpAddr>>>,
}

impl LocalGateways {
    /// Returns what to publish for the gateway: `(gateway_id, addresses, up)`.
    pub fn apply(&mut self, ev: &GatewayEvent) -> (String, Vec<IpAddr>, bool) {
        let gw = ev.gateway_id().key().to_string();
        match ev {
            GatewayEvent::Up { tunnel, vips, .. } => {
                self.live
                    .entry(gw.clone())
                    .or_default()
                    .insert(*tunnel, vips.clone());
            }
            GatewayEvent::Down { tunnel, .. } => {
                if let Some(m) = self.live.get_mut(&gw) {
                    m.remove(tunnel);
                    if m.is_empty() {
                        self.live.remove(&gw);
                    }
                }
            }
        }
        let display = ev.gateway_id().as_str().to_string();
        match self.live.get(&gw).and_then(|m| m.iter().next_back()) {
            Some((_, vips)) => (display, vips.clone(), true),
            None => (display, vec![], false),
        }
    }
}

/// `initial`: tunnels already up when the cluster started at run time (`commit`).
async fn publish_to_cluster(
    h: cluster::ClusterHandle,
    initial: Vec<GatewayEvent>,
    mut rx: broadcast::Receiver<GatewayEvent>,
) {
    let mut local = LocalGateways::default();
    let mut up_now = std::collections::HashSet::new();
    for ev in &initial {
        let (gw, addrs, up) = local.apply(ev);
        if up {
            up_now.insert(gw.to_ascii_lowercase());
        } else {
            up_now.remove(&gw.to_ascii_lowercase());
        }
        if let Err(e) = h.publish(&gw, addrs, up).await {
            tracing::warn!(gateway_id = %gw, error = %e, "cluster publish failed");
        }
    }
    // After a crash and restart the store still lists the tunnels this member had; they
    // are gone (the SA table starts empty), so withdraw every own record not up now, or
    // the cluster would keep answering routers that are no longer connected.
    match h.own_records().await {
        Ok(records) => {
            for r in records.into_iter().filter(|r| r.up) {
                if up_now.contains(&r.gateway_id.to_ascii_lowercase()) {
                    continue;
                }
                tracing::info!(gateway_id = %r.gateway_id, "withdrawing a tunnel from before the restart");
                if let Err(e) = h.publish(&r.gateway_id, vec![], false).await {
                    tracing::warn!(gateway_id = %r.gateway_id, error = %e, "cluster withdraw failed");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cluster: cannot read own records to reconcile"),
    }
    loop {
        match rx.recv().await {
            Ok(ev) => {
                let (gw, addrs, up) = local.apply(&ev);
                if let Err(e) = h.publish(&gw, addrs, up).await {
                    tracing::warn!(gateway_id = %gw, error = %e, "cluster publish failed");
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::error!(missed = n, "cluster: gateway events lost (channel lagged)");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Records of the other members into the zone (ours come straight from the gateway
/// events, see `dns.rs`).
async fn cluster_to_zone(
    zone: ddns::Zone,
    me: String,
    mut ev: mpsc::UnboundedReceiver<cluster::Event>,
) {
    // gateway key -> (owner, stamp) currently in the zone for it (from the cluster).
    let mut remote: HashMap<String, (String, u64)> = HashMap::new();
    while let Some(e) = ev.recv().await {
        match e {
            cluster::Event::RecordChanged { gateway_id, record } => {
                let key = gateway_id.to_ascii_lowercase();
                if let Some((owner, stamp)) = remote.remove(&key) {
                    zone.remove(
                        &ddns::TunnelKey::new(owner, format!("cluster:{key}")),
                        stamp,
                    );
                }
                let Some(r) = record.filter(|r| r.up && r.owner != me) else {
                    continue;
                };
                let Some(id) = ddns::GatewayId::parse(&r.gateway_id) else {
                    tracing::warn!(gateway_id = %r.gateway_id, owner = %r.owner, "cluster record with an invalid gateway ID ignored");
                    continue;
                };
                zone.upsert(
                    ddns::TunnelKey::new(r.owner.clone(), format!("cluster:{key}")),
                    id,
                    r.addresses,
                    r.stamp,
                );
                remote.insert(key, (r.owner, r.stamp));
            }
            cluster::Event::MemberDown(m) | cluster::Event::MemberLeft(m) => {
                tracing::info!(member = %m, "cluster member down: its records are no longer answered");
                zone.remove_member(&m);
                remote.retain(|_, (o, _)| *o != m);
            }
            cluster::Event::Synced(m) => {
                tracing::info!(member = %m, "synced with the cluster");
                zone.set_synced(true);
            }
            cluster::Event::MemberUp(m) => tracing::info!(member = %m, "cluster member up"),
            // The serial follows the cluster's newest stamp (records, tombstones and the
            // withdrawal of a dead member), the same on every member holding the same data.
            cluster::Event::Stamp(s) => zone.note_stamp(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn ev(up: bool, tunnel: u64, gw: &str, vip: [u8; 4]) -> GatewayEvent {
        let (gateway_id, _) = ddns::GatewayId::from_identity(gw);
        let identity = ike::Identity::Fqdn(gw.into());
        let remote: SocketAddr = "127.0.0.1:500".parse().unwrap();
        let vips = vec![IpAddr::from(vip)];
        if up {
            GatewayEvent::Up {
                tunnel: TunnelId(tunnel),
                gateway_id,
                identity,
                vips,
                remote,
                at: SystemTime::UNIX_EPOCH,
            }
        } else {
            GatewayEvent::Down {
                tunnel: TunnelId(tunnel),
                gateway_id,
                identity,
                vips,
                remote,
                reason: "x".into(),
                at: SystemTime::UNIX_EPOCH,
            }
        }
    }

    #[test]
    fn reconnect_keeps_the_gateway_published() {
        let mut l = LocalGateways::default();
        assert_eq!(
            l.apply(&ev(true, 1, "R1", [10, 0, 0, 1])),
            ("R1".into(), vec![IpAddr::from([10, 0, 0, 1])], true)
        );
        // New tunnel of the same router, then the old one goes (INITIAL_CONTACT).
        assert!(l.apply(&ev(true, 2, "R1", [10, 0, 0, 2])).2);
        let (_, addrs, up) = l.apply(&ev(false, 1, "R1", [10, 0, 0, 1]));
        assert!(up, "still up through tunnel 2");
        assert_eq!(addrs, vec![IpAddr::from([10, 0, 0, 2])]);
        let (_, addrs, up) = l.apply(&ev(false, 2, "r1", [10, 0, 0, 2]));
        assert!(!up && addrs.is_empty(), "case-insensitive: same gateway");
    }

    #[test]
    fn dataplane_natt_follows_ike_section_unless_set() {
        let mut c = Config::parse(
            "t",
            "[ike]\nlisten = [\"127.0.0.1\"]\nnatt_port = 44500\n[dataplane]\n",
        )
        .unwrap();
        let addrs =
            |v: &[&str]| -> Vec<SocketAddr> { v.iter().map(|a| a.parse().unwrap()).collect() };
        // Both families: the IPv4 listen address, the IPv6 wildcard.
        let dp = dataplane_config(&c, c.dataplane.as_ref().unwrap());
        assert_eq!(dp.natt_bind, addrs(&["127.0.0.1:44500", "[::]:44500"]));
        c.ike.listen = vec!["0.0.0.0".parse().unwrap(), "fd00::1".parse().unwrap()];
        let dp = dataplane_config(&c, c.dataplane.as_ref().unwrap());
        assert_eq!(dp.natt_bind, addrs(&["0.0.0.0:44500", "[fd00::1]:44500"]));
        c.dataplane.as_mut().unwrap().natt_bind = addrs(&["127.0.0.2:4600"]);
        let dp = dataplane_config(&c, c.dataplane.as_ref().unwrap());
        assert_eq!(dp.natt_bind, addrs(&["127.0.0.2:4600"]));
    }
}
