//! The zone `<domain>`: gateway-ID records, the pool name, SOA and NS, served from an
//! immutable [`Snapshot`] that writers replace atomically (arc-swap). A query never takes
//! a lock: it loads the current snapshot and reads it.
//!
//! Records are keyed by [`TunnelKey`] (owner member + tunnel). Several tunnels may carry
//! the same [`GatewayId`] (two routers whose identities sanitize alike, or one router
//! that moved to another member): the one with the largest stamp is answered; when it is
//! removed, the next newest still present is answered again (seed 003 ch. 4, step 2.ii).
//!
//! Stamps are hybrid-logical-clock values (top 48 bits unix ms, low 16 bits logical,
//! larger = newer), the same stamps the cluster replicates, so every member picks the
//! same winner whatever the arrival order.
//!
//! SOA serial (RFC 1035 section 3.3.13, compared per RFC 1982): derived from the data,
//! the newest stamp in centiseconds (wrapping u32), so members that hold the same data
//! agree. The newest stamp counts records, removals and [`Zone::note_stamp`] (the
//! cluster's newest stamp, which includes the withdrawal of a member that went down,
//! stamped alike on every member: `cluster::Event::Stamp`). If a change a resolver can
//! see would not advance it (two changes within 10 ms, or `remove_member` before its
//! stamp arrives), the serial is the previous one plus one, so it increases with every
//! visible change; the next stamp re-aligns members that took different steps. Before
//! the member is synced (SERVFAIL, nothing visible) only stamps move it. The pool
//! name is a load-balancing answer, not zone data: it never moves the serial, nor does
//! the synced flag.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record};

use crate::config::DnsConfig;
use crate::error::Error;
use crate::fast::{origin_wire, soa_tail, WireSet};
use crate::gateway_id::GatewayId;

/// Identifies one tunnel in the cluster: the member that terminates it and a tunnel
/// identifier unique on that member (e.g. the IKE SA initiator SPI in hex).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelKey {
    /// The member (head-end) owning the tunnel, as named in the cluster.
    pub member: String,
    /// Tunnel identifier, unique on `member`.
    pub tunnel: String,
}

impl TunnelKey {
    /// Build a key.
    pub fn new(member: impl Into<String>, tunnel: impl Into<String>) -> Self {
        TunnelKey {
            member: member.into(),
            tunnel: tunnel.into(),
        }
    }
}

/// A member as seen by DNS load balancing (seed 003 ch. 3): its outside address, whether
/// it is up, and how loaded it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolMember {
    /// Address peers connect to.
    pub addr: IpAddr,
    /// False when the member is down: it is then never handed out.
    pub up: bool,
    /// Current load (e.g. tunnels).
    pub load: u32,
    /// Capacity in the same unit (0 = unknown, treated as 1).
    pub capacity: u32,
}

/// One change to the zone, for [`Zone::apply`] (many changes, one published snapshot).
#[derive(Debug, Clone)]
pub enum Change {
    /// A tunnel is up (or its addresses changed).
    Upsert {
        /// Tunnel.
        key: TunnelKey,
        /// Its gateway ID.
        gateway_id: GatewayId,
        /// Tunnel virtual IPs (A / AAAA).
        addrs: Vec<IpAddr>,
        /// HLC stamp of the change.
        stamp: u64,
    },
    /// A tunnel went down.
    Remove {
        /// Tunnel.
        key: TunnelKey,
        /// HLC stamp of the change.
        stamp: u64,
    },
    /// A member was declared down: its tunnels stop being answered.
    RemoveMember(String),
}

/// Validated, resolved zone parameters (identical on every member).
#[derive(Debug, Clone)]
pub struct ZoneConfig {
    origin: Name,
    ttl: u32,
    negative_ttl: u32,
    ns_ttl: u32,
    ns: Vec<(Name, Vec<IpAddr>)>,
    mname: Name,
    rname: Name,
    refresh: i32,
    retry: i32,
    expire: i32,
    pool: Option<String>,
    pool_max_answers: usize,
}

fn parse_name(s: &str) -> Result<Name, Error> {
    let mut n = Name::from_ascii(s).map_err(|e| Error::InvalidName {
        name: s.to_owned(),
        reason: e.to_string(),
    })?;
    n.set_fqdn(true);
    Ok(n.to_lowercase())
}

/// A single label is relative to the origin; anything else is absolute.
fn resolve_name(s: &str, origin: &Name) -> Result<Name, Error> {
    let t = s.trim_end_matches('.');
    if t.is_empty() {
        return Err(Error::Config(format!("empty name {s:?}")));
    }
    if t.contains('.') {
        parse_name(t)
    } else {
        let label = parse_name(t)?;
        label.append_domain(origin).map_err(|e| Error::InvalidName {
            name: s.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// The part of `name` before `origin`, lowercase, labels joined by '.'. None if not below.
fn relative(name: &Name, origin: &Name) -> Option<String> {
    let (total, base) = (name.iter().count(), origin.iter().count());
    if !origin.zone_of(name) || total <= base {
        return None;
    }
    let n = total - base;
    let labels: Vec<String> = name
        .iter()
        .take(n)
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    Some(labels.join("."))
}

impl ZoneConfig {
    /// Resolve and check the `[dns]` section for zone `domain`.
    pub fn new(cfg: &DnsConfig, domain: &str) -> Result<ZoneConfig, Error> {
        let origin = parse_name(domain.trim_end_matches('.'))?;
        if origin.is_root() {
            return Err(Error::Config("domain must not be the root".into()));
        }
        // Longest gateway name must fit: 63 + 1 + domain <= 255 (RFC 1035 section 2.3.4).
        if origin.len() + 64 > 255 {
            return Err(Error::Config(format!(
                "domain {domain:?} too long for 63-octet gateway IDs below it"
            )));
        }
        if cfg.ns.is_empty() {
            return Err(Error::Config(
                "at least one [[dns.ns]] (one per member, with addrs) is required".into(),
            ));
        }
        let mut ns = Vec::new();
        for n in &cfg.ns {
            let name = resolve_name(&n.name, &origin)?;
            if origin.zone_of(&name) && n.addrs.is_empty() {
                return Err(Error::Config(format!(
                    "name server {name} is inside the zone and needs addrs (glue)"
                )));
            }
            if name == origin {
                return Err(Error::Config("a name server cannot be the apex".into()));
            }
            ns.push((name, n.addrs.clone()));
        }
        let mname = match &cfg.soa.mname {
            Some(m) => resolve_name(m, &origin)?,
            None => ns[0].0.clone(),
        };
        let rname = match &cfg.soa.rname {
            Some(r) => resolve_name(r, &origin)?,
            None => resolve_name("hostmaster", &origin)?,
        };
        let pool = if cfg.pool.trim_end_matches('.').is_empty() {
            None
        } else {
            let p = resolve_name(&cfg.pool, &origin)?;
            let rel = relative(&p, &origin).ok_or_else(|| {
                Error::Config(format!("pool name {} is not inside {origin}", cfg.pool))
            })?;
            Some(rel)
        };
        let i32_of = |v: u32, what: &str| {
            i32::try_from(v).map_err(|_| Error::Config(format!("soa {what} too large")))
        };
        Ok(ZoneConfig {
            ttl: cfg.ttl,
            negative_ttl: cfg.negative_ttl,
            ns_ttl: cfg.ns_ttl,
            ns,
            mname,
            rname,
            refresh: i32_of(cfg.soa.refresh, "refresh")?,
            retry: i32_of(cfg.soa.retry, "retry")?,
            expire: i32_of(cfg.soa.expire, "expire")?,
            pool,
            pool_max_answers: cfg.pool_max_answers,
            origin,
        })
    }

    /// The zone apex, lowercase, fully qualified.
    pub fn origin(&self) -> &Name {
        &self.origin
    }
}

/// A/AAAA records of one owner name, ready to be written into responses.
#[derive(Debug, Default)]
pub(crate) struct NameRecords {
    pub(crate) a: Vec<Record>,
    pub(crate) aaaa: Vec<Record>,
    pub(crate) a_wire: WireSet,
    pub(crate) aaaa_wire: WireSet,
}

impl NameRecords {
    fn build(name: &Name, ttl: u32, addrs: impl IntoIterator<Item = IpAddr>) -> NameRecords {
        let mut r = NameRecords::default();
        for ip in addrs {
            match ip {
                IpAddr::V4(v4) => {
                    r.a.push(Record::from_rdata(name.clone(), ttl, RData::A(A(v4))))
                }
                IpAddr::V6(v6) => {
                    r.aaaa
                        .push(Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(v6))))
                }
            }
        }
        r.a_wire = WireSet::build(&r.a);
        r.aaaa_wire = WireSet::build(&r.aaaa);
        r
    }

    fn addrs(&self) -> Vec<IpAddr> {
        self.a
            .iter()
            .chain(self.aaaa.iter())
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()
    }
}

/// What a fixed (configured) name inside the zone is.
#[derive(Debug)]
pub(crate) enum Fixed {
    /// An in-zone name server host: its glue addresses are authoritative data.
    Host(NameRecords),
    /// The load-balancing pool name (records live in the snapshot).
    Pool,
    /// An empty non-terminal above a fixed name (RFC 8020): NODATA, never NXDOMAIN.
    EmptyNonTerminal,
}

/// Parts of the zone that only change with the configuration.
#[derive(Debug)]
pub(crate) struct Statics {
    pub(crate) origin: LowerName,
    pub(crate) origin_wire: Vec<u8>,
    pub(crate) origin_labels: u8,
    pub(crate) ns: Vec<Record>,
    pub(crate) glue: Vec<Record>,
    pub(crate) fixed: HashMap<String, Fixed>,
    pub(crate) any_multi_label_fixed: bool,
    cfg: ZoneConfig,
}

impl Statics {
    fn new(cfg: ZoneConfig) -> Statics {
        let origin = cfg.origin.clone();
        let ns = cfg
            .ns
            .iter()
            .map(|(n, _)| Record::from_rdata(origin.clone(), cfg.ns_ttl, RData::NS(NS(n.clone()))))
            .collect();
        let mut glue = Vec::new();
        let mut fixed = HashMap::new();
        for (n, addrs) in &cfg.ns {
            if !origin.zone_of(n) {
                continue; // out-of-zone name servers: no glue served (not our data)
            }
            let recs = NameRecords::build(n, cfg.ns_ttl, addrs.iter().copied());
            glue.extend(recs.a.iter().cloned());
            glue.extend(recs.aaaa.iter().cloned());
            if let Some(rel) = relative(n, &origin) {
                fixed.insert(rel, Fixed::Host(recs));
            }
        }
        if let Some(p) = &cfg.pool {
            fixed.insert(p.clone(), Fixed::Pool);
        }
        let mut ents = HashSet::new();
        for k in fixed.keys() {
            let mut rest = k.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                ents.insert(parent.to_owned());
                rest = parent;
            }
        }
        for e in ents {
            fixed.entry(e).or_insert(Fixed::EmptyNonTerminal);
        }
        let any_multi_label_fixed = fixed.keys().any(|k| k.contains('.'));
        Statics {
            origin_labels: u8::try_from(origin.iter().count()).unwrap_or(u8::MAX),
            origin_wire: origin_wire(&origin),
            origin: LowerName::new(&origin),
            ns,
            glue,
            fixed,
            any_multi_label_fixed,
            cfg,
        }
    }
}

/// An immutable view of the zone. Queries read one snapshot from start to end.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) statics: Arc<Statics>,
    pub(crate) soa: [Record; 1],
    pub(crate) soa_tail: Vec<u8>,
    pub(crate) names: imbl::HashMap<Arc<str>, Arc<NameRecords>>,
    pub(crate) pool: Arc<NameRecords>,
    pub(crate) synced: bool,
    serial: u32,
}

impl Snapshot {
    /// SOA serial of this snapshot.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Whether the member had synced with the cluster (else in-zone queries get SERVFAIL).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Addresses answered for a gateway ID (case-insensitive), if any.
    pub fn gateway(&self, id: &str) -> Option<Vec<IpAddr>> {
        self.names
            .get(id.to_ascii_lowercase().as_str())
            .map(|r| r.addrs())
    }

    /// Number of gateway IDs answered.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when no gateway ID is answered.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Addresses the pool name answers, in answer order.
    pub fn pool(&self) -> Vec<IpAddr> {
        self.pool.addrs()
    }

    /// The zone apex.
    pub fn origin(&self) -> &Name {
        &self.statics.cfg.origin
    }
}

#[derive(Debug, Clone)]
struct TunnelRecord {
    gateway_id: GatewayId,
    addrs: Vec<IpAddr>,
    stamp: u64,
}

/// Tombstones older than this (ms, by stamp) are forgotten once there are many.
const TOMBSTONE_KEEP_MS: u64 = 10 * 60 * 1000;
const TOMBSTONE_PRUNE_AT: usize = 16 * 1024;

#[derive(Debug, Default)]
struct Writer {
    records: HashMap<TunnelKey, TunnelRecord>,
    by_id: HashMap<Box<str>, Vec<TunnelKey>>,
    tombstones: HashMap<TunnelKey, u64>,
    names: imbl::HashMap<Arc<str>, Arc<NameRecords>>,
    newest_stamp: u64,
    /// Serial before truncation to 32 bits (centiseconds of the newest stamp, or more).
    serial: u64,
    synced: bool,
    pool: Arc<NameRecords>,
}

/// The zone: a writer API for the daemon and the cluster, and lock-free snapshots for
/// the query path. Cheap to clone (shared).
#[derive(Clone)]
pub struct Zone {
    inner: Arc<ZoneInner>,
}

struct ZoneInner {
    statics: Arc<Statics>,
    current: ArcSwap<Snapshot>,
    writer: Mutex<Writer>,
}

impl std::fmt::Debug for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zone")
            .field("origin", &self.inner.statics.cfg.origin)
            .field("serial", &self.serial())
            .finish()
    }
}

/// RFC 1982 serial number comparison: is `a` greater than `b`?
#[cfg(test)]
fn serial_gt(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < (1 << 31)
}

impl Zone {
    /// A new, empty zone. It starts not synced (SERVFAIL) unless `synced` is set: a
    /// member that has not yet caught up with the cluster must not deny names exist.
    pub fn new(cfg: ZoneConfig) -> Zone {
        let statics = Arc::new(Statics::new(cfg));
        let w = Writer::default();
        let snap = build_snapshot(&statics, &w);
        Zone {
            inner: Arc::new(ZoneInner {
                statics,
                current: ArcSwap::from_pointee(snap),
                writer: Mutex::new(w),
            }),
        }
    }

    /// The current snapshot (what queries see now).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.current.load_full()
    }

    /// Load the snapshot without touching its reference count (query fast path).
    pub(crate) fn guard(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.inner.current.load()
    }

    /// Current SOA serial.
    pub fn serial(&self) -> u32 {
        self.inner.current.load().serial
    }

    /// The zone apex.
    pub fn origin(&self) -> &Name {
        &self.inner.statics.cfg.origin
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding the writer lock leaves consistent-enough state (every
        // mutation is applied before publish); keep serving rather than poisoning.
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `visible`: records a resolver can see changed (the serial must increase).
    fn publish(&self, w: &mut Writer, visible: bool) {
        // In u64 centiseconds, so no RFC 1982 ambiguity between far-apart values.
        // Before it is synced nobody sees the zone (SERVFAIL): catching up moves the
        // serial only through the stamps, so a restarted member lands on the serial of
        // the others instead of theirs plus one per record it received.
        let bump = visible && w.synced;
        w.serial = ((w.newest_stamp >> 16) / 10).max(w.serial + u64::from(bump));
        let snap = build_snapshot(&self.inner.statics, w);
        self.inner.current.store(Arc::new(snap));
    }

    /// A tunnel is up: `<gateway_id>.<domain>` answers `addrs` unless a newer tunnel
    /// carries the same ID. Ignored if `key` already has a newer stamp or was removed
    /// with a newer stamp. Published before this returns.
    pub fn upsert(&self, key: TunnelKey, gateway_id: GatewayId, addrs: Vec<IpAddr>, stamp: u64) {
        self.apply([Change::Upsert {
            key,
            gateway_id,
            addrs,
            stamp,
        }]);
    }

    /// A tunnel went down (stops being answered when this returns). Ignored if the
    /// record present is newer than `stamp`.
    pub fn remove(&self, key: &TunnelKey, stamp: u64) {
        self.apply([Change::Remove {
            key: key.clone(),
            stamp,
        }]);
    }

    /// A member was declared down: none of its tunnels are answered any more.
    pub fn remove_member(&self, member: &str) {
        self.apply([Change::RemoveMember(member.to_owned())]);
    }

    /// Apply many changes and publish one snapshot (e.g. a cluster sync).
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) {
        let mut w = self.writer();
        let mut touched: HashSet<Box<str>> = HashSet::new();
        for c in changes {
            match c {
                Change::Upsert {
                    key,
                    gateway_id,
                    addrs,
                    stamp,
                } => w.upsert(key, gateway_id, addrs, stamp, &mut touched),
                Change::Remove { key, stamp } => w.remove(&key, stamp, &mut touched),
                Change::RemoveMember(m) => w.remove_member(&m, &mut touched),
            }
        }
        let statics = Arc::clone(&self.inner.statics);
        let visible = !touched.is_empty();
        for id in touched {
            w.refresh_name(&statics, &id);
        }
        self.publish(&mut w, visible);
    }

    /// The newest stamp of the data (the cluster's, `cluster::Event::Stamp`) grew: the
    /// serial follows it. Nothing a resolver sees changes otherwise.
    pub fn note_stamp(&self, stamp: u64) {
        let mut w = self.writer();
        if stamp > w.newest_stamp {
            w.newest_stamp = stamp;
            let serial = w.serial;
            if (stamp >> 16) / 10 > serial {
                self.publish(&mut w, false);
            }
        }
    }

    /// Mark the member synced with the cluster (answers) or not (SERVFAIL in the zone).
    pub fn set_synced(&self, synced: bool) {
        let mut w = self.writer();
        if w.synced != synced {
            w.synced = synced;
            self.publish(&mut w, false);
        }
    }

    /// Replace the view of the members for the pool name: members that are up, least
    /// loaded (by load / capacity) first; a down member is never answered.
    pub fn set_pool(&self, members: Vec<PoolMember>) {
        let statics = &self.inner.statics;
        let mut up: Vec<&PoolMember> = members.iter().filter(|m| m.up).collect();
        // load/capacity compared exactly: a.load * b.cap vs b.load * a.cap
        up.sort_by(|a, b| {
            let (ac, bc) = (u64::from(a.capacity.max(1)), u64::from(b.capacity.max(1)));
            (u64::from(a.load) * bc)
                .cmp(&(u64::from(b.load) * ac))
                .then_with(|| a.addr.cmp(&b.addr))
        });
        up.dedup_by(|a, b| a.addr == b.addr);
        if statics.cfg.pool_max_answers > 0 {
            up.truncate(statics.cfg.pool_max_answers);
        }
        let recs = match &statics.cfg.pool {
            Some(rel) => match resolve_name(rel, &statics.cfg.origin) {
                Ok(name) => NameRecords::build(&name, statics.cfg.ttl, up.iter().map(|m| m.addr)),
                Err(_) => NameRecords::default(),
            },
            None => NameRecords::default(),
        };
        let mut w = self.writer();
        if w.pool.a == recs.a && w.pool.aaaa == recs.aaaa {
            return;
        }
        w.pool = Arc::new(recs);
        self.publish(&mut w, false);
    }
}

impl Writer {
    fn upsert(
        &mut self,
        key: TunnelKey,
        gateway_id: GatewayId,
        addrs: Vec<IpAddr>,
        stamp: u64,
        touched: &mut HashSet<Box<str>>,
    ) {
        if self.tombstones.get(&key).is_some_and(|&t| t >= stamp) {
            return;
        }
        if let Some(old) = self.records.get(&key) {
            if old.stamp > stamp {
                return;
            }
            let old_id: Box<str> = old.gateway_id.key().into();
            if old_id.as_ref() != gateway_id.key() {
                self.unindex(&key, &old_id);
                touched.insert(old_id);
            }
        }
        self.tombstones.remove(&key);
        self.newest_stamp = self.newest_stamp.max(stamp);
        let id: Box<str> = gateway_id.key().into();
        let keys = self.by_id.entry(id.clone()).or_default();
        if !keys.contains(&key) {
            keys.push(key.clone());
        }
        touched.insert(id);
        self.records.insert(
            key,
            TunnelRecord {
                gateway_id,
                addrs,
                stamp,
            },
        );
    }

    fn remove(&mut self, key: &TunnelKey, stamp: u64, touched: &mut HashSet<Box<str>>) {
        if let Some(old) = self.records.get(key) {
            if old.stamp > stamp {
                return;
            }
            let id: Box<str> = old.gateway_id.key().into();
            self.records.remove(key);
            self.unindex(key, &id);
            touched.insert(id);
        }
        self.newest_stamp = self.newest_stamp.max(stamp);
        let t = self.tombstones.entry(key.clone()).or_insert(stamp);
        *t = (*t).max(stamp);
        if self.tombstones.len() > TOMBSTONE_PRUNE_AT {
            let horizon = self.newest_stamp.saturating_sub(TOMBSTONE_KEEP_MS << 16);
            self.tombstones.retain(|_, s| *s >= horizon);
        }
    }

    fn remove_member(&mut self, member: &str, touched: &mut HashSet<Box<str>>) {
        let gone: Vec<TunnelKey> = self
            .records
            .keys()
            .filter(|k| k.member == member)
            .cloned()
            .collect();
        for key in gone {
            if let Some(old) = self.records.remove(&key) {
                let id: Box<str> = old.gateway_id.key().into();
                self.unindex(&key, &id);
                touched.insert(id);
            }
        }
    }

    fn unindex(&mut self, key: &TunnelKey, id: &str) {
        if let Some(keys) = self.by_id.get_mut(id) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_id.remove(id);
            }
        }
    }

    /// Recompute what `<id>.<domain>` answers: the newest tunnel carrying the ID.
    fn refresh_name(&mut self, statics: &Statics, id: &str) {
        let winner = self.by_id.get(id).and_then(|keys| {
            keys.iter()
                .filter_map(|k| self.records.get(k).map(|r| (r.stamp, k, r)))
                .max_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)))
                .map(|(_, _, r)| r)
        });
        match winner {
            Some(r) => {
                let name = match Name::from_ascii(r.gateway_id.key())
                    .and_then(|l| l.append_domain(&statics.cfg.origin))
                {
                    Ok(n) => n,
                    Err(_) => return, // cannot happen: IDs are valid labels, origin checked
                };
                let recs = NameRecords::build(&name, statics.cfg.ttl, r.addrs.iter().copied());
                self.names.insert(Arc::from(id), Arc::new(recs));
            }
            None => {
                self.names.remove(id);
            }
        }
    }
}

fn build_snapshot(statics: &Arc<Statics>, w: &Writer) -> Snapshot {
    let cfg = &statics.cfg;
    let soa = SOA::new(
        cfg.mname.clone(),
        cfg.rname.clone(),
        w.serial as u32,
        cfg.refresh,
        cfg.retry,
        cfg.expire,
        cfg.negative_ttl,
    );

    Snapshot {
        statics: Arc::clone(statics),
        soa: [Record::from_rdata(
            cfg.origin.clone(),
            cfg.negative_ttl,
            RData::SOA(soa),
        )],
        soa_tail: soa_tail(
            &cfg.mname,
            &cfg.rname,
            [
                w.serial as u32,
                cfg.refresh as u32,
                cfg.retry as u32,
                cfg.expire as u32,
                cfg.negative_ttl,
            ],
            cfg.negative_ttl,
        ),
        names: w.names.clone(),
        pool: Arc::clone(&w.pool),
        synced: w.synced,
        serial: w.serial as u32, // wraps: RFC 1982 serial arithmetic
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NsConfig;

    pub(crate) fn test_config() -> DnsConfig {
        DnsConfig {
            domain: Some("vpn.example.com".into()),
            ns: vec![
                NsConfig {
                    name: "ns1".into(),
                    addrs: vec!["192.0.2.1".parse().unwrap()],
                },
                NsConfig {
                    name: "ns2.vpn.example.com.".into(),
                    addrs: vec!["192.0.2.2".parse().unwrap(), "2001:db8::2".parse().unwrap()],
                },
            ],
            ..DnsConfig::default()
        }
    }

    fn zone() -> Zone {
        let z = Zone::new(ZoneConfig::new(&test_config(), "vpn.example.com").unwrap());
        z.set_synced(true);
        z
    }

    fn gid(s: &str) -> GatewayId {
        GatewayId::from_identity(s).0
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    const MS: u64 = 1 << 16;

    #[test]
    fn upsert_then_remove() {
        let z = zone();
        let k = TunnelKey::new("m1", "t1");
        z.upsert(k.clone(), gid("Router.1"), vec![ip("10.0.0.1")], 1000 * MS);
        assert_eq!(z.snapshot().gateway("router-1"), Some(vec![ip("10.0.0.1")]));
        assert_eq!(z.snapshot().gateway("ROUTER-1"), Some(vec![ip("10.0.0.1")]));
        z.remove(&k, 1001 * MS);
        assert_eq!(z.snapshot().gateway("router-1"), None);
    }

    #[test]
    fn newest_of_colliding_ids_is_answered_and_the_other_comes_back() {
        let z = zone();
        let a = TunnelKey::new("m1", "a");
        let b = TunnelKey::new("m2", "b");
        z.upsert(a.clone(), gid("mg90.site1"), vec![ip("10.0.0.1")], 100 * MS);
        z.upsert(b.clone(), gid("mg90/site1"), vec![ip("10.0.0.2")], 200 * MS);
        assert_eq!(
            z.snapshot().gateway("mg90-site1"),
            Some(vec![ip("10.0.0.2")])
        );
        z.remove(&b, 300 * MS);
        assert_eq!(
            z.snapshot().gateway("mg90-site1"),
            Some(vec![ip("10.0.0.1")])
        );
        // arrival order does not matter: an older upsert does not win
        let z2 = zone();
        z2.upsert(b.clone(), gid("mg90/site1"), vec![ip("10.0.0.2")], 200 * MS);
        z2.upsert(a, gid("mg90.site1"), vec![ip("10.0.0.1")], 100 * MS);
        assert_eq!(
            z2.snapshot().gateway("mg90-site1"),
            Some(vec![ip("10.0.0.2")])
        );
    }

    #[test]
    fn stale_remove_and_stale_upsert_are_ignored() {
        let z = zone();
        let k = TunnelKey::new("m1", "t");
        z.upsert(k.clone(), gid("r"), vec![ip("10.0.0.1")], 500 * MS);
        z.remove(&k, 400 * MS); // older than the record
        assert!(z.snapshot().gateway("r").is_some());
        z.remove(&k, 600 * MS);
        z.upsert(k.clone(), gid("r"), vec![ip("10.0.0.1")], 550 * MS); // reordered, stale
        assert!(z.snapshot().gateway("r").is_none());
        z.upsert(k, gid("r"), vec![ip("10.0.0.9")], 700 * MS);
        assert_eq!(z.snapshot().gateway("r"), Some(vec![ip("10.0.0.9")]));
    }

    #[test]
    fn tunnel_changing_gateway_id_frees_the_old_name() {
        let z = zone();
        let k = TunnelKey::new("m1", "t");
        z.upsert(k.clone(), gid("old"), vec![ip("10.0.0.1")], MS);
        z.upsert(k, gid("new"), vec![ip("10.0.0.1")], 2 * MS);
        assert!(z.snapshot().gateway("old").is_none());
        assert!(z.snapshot().gateway("new").is_some());
    }

    #[test]
    fn remove_member_drops_only_its_tunnels_and_uncovers_others() {
        let z = zone();
        z.upsert(
            TunnelKey::new("m1", "a"),
            gid("x"),
            vec![ip("10.0.0.1")],
            MS,
        );
        z.upsert(
            TunnelKey::new("m2", "b"),
            gid("x"),
            vec![ip("10.0.0.2")],
            2 * MS,
        );
        z.upsert(
            TunnelKey::new("m2", "c"),
            gid("y"),
            vec![ip("10.0.0.3")],
            3 * MS,
        );
        z.remove_member("m2");
        let s = z.snapshot();
        assert_eq!(s.gateway("x"), Some(vec![ip("10.0.0.1")]));
        assert_eq!(s.gateway("y"), None);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn serial_is_derived_from_data_and_always_increases() {
        let a = zone();
        let b = zone();
        let t0: u64 = 1_790_000_000_000; // ms
        let changes = |z: &Zone| {
            z.upsert(
                TunnelKey::new("m", "1"),
                gid("a"),
                vec![ip("10.0.0.1")],
                t0 << 16,
            );
            z.upsert(
                TunnelKey::new("m", "2"),
                gid("b"),
                vec![ip("10.0.0.2")],
                (t0 + 500) << 16,
            );
        };
        changes(&a);
        // b receives the same data in one batch, in the other order
        b.apply([
            Change::Upsert {
                key: TunnelKey::new("m", "2"),
                gateway_id: gid("b"),
                addrs: vec![ip("10.0.0.2")],
                stamp: (t0 + 500) << 16,
            },
            Change::Upsert {
                key: TunnelKey::new("m", "1"),
                gateway_id: gid("a"),
                addrs: vec![ip("10.0.0.1")],
                stamp: t0 << 16,
            },
        ]);
        assert_eq!(a.serial(), b.serial(), "converged members agree");
        assert_eq!(a.serial(), ((t0 + 500) / 10) as u32);
        let before = a.serial();
        a.remove_member("m");
        assert!(serial_gt(a.serial(), before));
        let before = a.serial();
        // same centisecond: still increases
        a.upsert(
            TunnelKey::new("m", "3"),
            gid("c"),
            vec![ip("10.0.0.3")],
            ((t0 + 500) << 16) + 1,
        );
        assert!(serial_gt(a.serial(), before));
    }

    #[test]
    fn members_fed_the_same_events_in_different_orders_agree_on_the_serial() {
        // What every survivor gets when member "x" dies: its records' removal (at its own
        // moment) and the cluster's withdrawal stamp (x's last heartbeat + dead_after),
        // before or after other members' changes, one by one or in one batch.
        let t0: u64 = 1_790_000_000_000;
        let base = |z: &Zone| {
            z.apply([
                Change::Upsert {
                    key: TunnelKey::new("x", "1"),
                    gateway_id: gid("r1"),
                    addrs: vec![ip("10.0.0.1")],
                    stamp: t0 << 16,
                },
                Change::Upsert {
                    key: TunnelKey::new("y", "2"),
                    gateway_id: gid("r2"),
                    addrs: vec![ip("10.0.0.2")],
                    stamp: (t0 + 40) << 16,
                },
            ]);
            z.note_stamp((t0 + 40) << 16);
        };
        let withdrawal = (t0 + 1_000 + 3_000) << 16;
        let a = zone();
        let b = zone();
        let c = zone();
        for z in [&a, &b, &c] {
            base(z);
        }
        let agreed = a.serial();
        assert_eq!(b.serial(), agreed);
        // a: removal, then the stamp
        a.remove_member("x");
        assert!(
            serial_gt(a.serial(), agreed),
            "the removal is visible at once"
        );
        a.remove(&TunnelKey::new("x", "1"), t0 << 16);
        a.note_stamp(withdrawal);
        // b: the stamp first (relayed heartbeat), later the removal
        b.note_stamp(withdrawal - (500 << 16));
        b.note_stamp(withdrawal);
        b.remove_member("x");
        // c: the removal without the per-record events, then the stamp
        c.remove_member("x");
        c.note_stamp(withdrawal);
        assert_eq!(a.serial(), ((t0 + 4_000) / 10) as u32);
        assert_eq!(c.serial(), a.serial());
        // b bumped once for its late removal; the next change re-aligns everybody.
        for z in [&a, &b, &c] {
            z.upsert(
                TunnelKey::new("y", "3"),
                gid("r3"),
                vec![ip("10.0.0.3")],
                (t0 + 9_000) << 16,
            );
            z.note_stamp((t0 + 9_000) << 16);
        }
        assert_eq!(a.serial(), b.serial());
        assert_eq!(b.serial(), c.serial());
        // The pool and the synced flag are not zone data: the serial stays.
        let s = a.serial();
        a.set_pool(vec![PoolMember {
            addr: ip("198.51.100.1"),
            up: true,
            load: 0,
            capacity: 0,
        }]);
        a.set_synced(false);
        a.set_synced(true);
        assert_eq!(a.serial(), s);
    }

    #[test]
    fn a_member_catching_up_lands_on_the_serial_of_the_others() {
        let t0: u64 = 1_790_000_000_000;
        let up = |z: &Zone, n: u64| {
            z.upsert(
                TunnelKey::new("m", n.to_string()),
                gid(&format!("r{n}")),
                vec![ip("10.0.0.1")],
                (t0 + n) << 16, // all within one centisecond
            );
        };
        let old = zone();
        old.note_stamp(t0 << 16);
        for n in 0..5 {
            up(&old, n);
        }
        // A restarted member: the cluster's stamp first, then every record, then synced.
        let fresh = Zone::new(ZoneConfig::new(&test_config(), "vpn.example.com").unwrap());
        fresh.note_stamp(t0 << 16);
        for n in 0..5 {
            up(&fresh, n);
        }
        fresh.set_synced(true);
        assert_eq!(fresh.serial(), (t0 / 10) as u32);
        // The old member bumped once per record in that centisecond; the next change
        // (a later stamp) re-aligns both.
        for z in [&old, &fresh] {
            up(z, 2_000);
        }
        assert_eq!(fresh.serial(), old.serial());
    }

    #[test]
    fn serial_comparison_wraps() {
        assert!(serial_gt(1, u32::MAX));
        assert!(!serial_gt(u32::MAX, 1));
        assert!(serial_gt(5, 4));
    }

    #[test]
    fn pool_orders_least_loaded_first_and_never_hands_out_a_down_member() {
        let z = zone();
        z.set_pool(vec![
            PoolMember {
                addr: ip("198.51.100.1"),
                up: true,
                load: 80,
                capacity: 100,
            },
            PoolMember {
                addr: ip("198.51.100.2"),
                up: false,
                load: 0,
                capacity: 100,
            },
            PoolMember {
                addr: ip("198.51.100.3"),
                up: true,
                load: 10,
                capacity: 100,
            },
            PoolMember {
                addr: ip("2001:db8::3"),
                up: true,
                load: 5,
                capacity: 10,
            },
        ]);
        let p = z.snapshot().pool();
        assert_eq!(
            p,
            vec![ip("198.51.100.3"), ip("198.51.100.1"), ip("2001:db8::3")]
        );
        assert!(!p.contains(&ip("198.51.100.2")));
    }

    #[test]
    fn a_full_member_is_answered_after_every_member_with_room_never_dropped() {
        let z = zone();
        let m = |a: &str, load: u32, capacity: u32| PoolMember {
            addr: ip(a),
            up: true,
            load,
            capacity,
        };
        // 198.51.100.1 is full (10/10), .2 over capacity, .3 nearly full (99/100).
        z.set_pool(vec![
            m("198.51.100.1", 10, 10),
            m("198.51.100.2", 12, 10),
            m("198.51.100.3", 99, 100),
        ]);
        assert_eq!(
            z.snapshot().pool(),
            vec![ip("198.51.100.3"), ip("198.51.100.1"), ip("198.51.100.2")]
        );
        // Everybody full: still answered, least over first.
        z.set_pool(vec![m("198.51.100.1", 10, 10), m("198.51.100.2", 12, 10)]);
        assert_eq!(
            z.snapshot().pool(),
            vec![ip("198.51.100.1"), ip("198.51.100.2")]
        );
    }

    #[test]
    fn config_errors_are_reported() {
        let mut c = test_config();
        c.ns.clear();
        assert!(matches!(
            ZoneConfig::new(&c, "vpn.example.com"),
            Err(Error::Config(_))
        ));
        let mut c = test_config();
        c.ns[0].addrs.clear();
        assert!(
            ZoneConfig::new(&c, "vpn.example.com").is_err(),
            "in-zone NS without glue"
        );
        let c = test_config();
        assert!(ZoneConfig::new(&c, "bad..name").is_err());
        assert!(ZoneConfig::new(&c, &format!("{}.com", "a".repeat(200))).is_err());
        let mut c = test_config();
        c.pool = "pool.elsewhere.org".into();
        assert!(ZoneConfig::new(&c, "vpn.example.com").is_err());
    }
}
