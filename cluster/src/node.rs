//! Sans-IO scuttlebutt replication core (van Renesse et al., "Efficient Reconciliation and
//! Flow Control for Anti-Entropy Protocols", 2008; the model used by Cassandra and chitchat).
//!
//! Each member owns one partition of versioned entries (gateway ID -> record) and is its only
//! writer. A local change is pushed at once to every member (full mesh); a periodic digest
//! `(member, incarnation, heartbeat, max_version)` exchange repairs whatever a push missed.
//! A delta covers a contiguous version range `(from_version, to_version]` of one partition, so
//! a receiver never skips a version. Heartbeats in digests drive failure detection: a member
//! whose heartbeat has not grown for `dead_after` is down and its records are not answered.
//!
//! Newest wins per gateway ID across partitions by hybrid-logical-clock stamp
//! ([`crate::hlc`]), never by arrival order. No sockets, no clocks: `now_ms` (monotonic) and
//! `wall_ms` (unix, for the HLC) are inputs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;
use crate::Error;

/// A member's identity: its `self` address as configured (seed 003 Table 4-1).
pub type MemberId = String;

/// Most members in one cluster (issue 5: up to ten head-ends).
pub const MAX_MEMBERS: usize = 10;
/// Most entries carried by one delta; the rest follows in the next exchange.
pub const MAX_DELTA_ENTRIES: usize = 4096;
/// Longest gateway ID accepted (a DNS name is at most 253 octets).
pub const MAX_GATEWAY_ID_LEN: usize = 253;
/// Most addresses per record.
pub const MAX_ADDRESSES: usize = 8;
/// Longest member ID accepted.
pub const MAX_MEMBER_ID_LEN: usize = 255;
/// Most IKE addresses in one [`MemberInfo`].
pub const MAX_INFO_ADDRS: usize = 16;
/// Most counters in one [`MemberInfo`].
pub const MAX_INFO_COUNTERS: usize = 256;
/// Longest counter name in a [`MemberInfo`].
pub const MAX_COUNTER_NAME_LEN: usize = 128;
/// A [`MemberInfo`] change that touches only `counters` is replicated at most this often
/// (the latest value wins); a change of `ike_addrs` or `capacity` goes out at once.
pub const INFO_COUNTERS_INTERVAL_MS: u64 = 2000;

/// What a member says about itself, replicated with its partition (newest wins, kept on
/// disk like its records): where peers reach it and how much it takes (the pool name,
/// seed 003 ch. 3), plus free-form statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Where peer routers reach this member (its outside, IKE addresses).
    pub ike_addrs: Vec<IpAddr>,
    /// Most tunnels this member takes (0: unknown).
    pub capacity: u32,
    /// Free-form statistics (name -> value).
    pub counters: BTreeMap<String, u64>,
}

impl MemberInfo {
    /// Within the limits every member enforces on what it receives.
    pub fn check(&self) -> Result<(), Error> {
        if self.ike_addrs.len() > MAX_INFO_ADDRS {
            return Err(Error::Malformed("member info has too many IKE addresses"));
        }
        if self.counters.len() > MAX_INFO_COUNTERS {
            return Err(Error::Malformed("member info has too many counters"));
        }
        if self
            .counters
            .keys()
            .any(|k| k.is_empty() || k.len() > MAX_COUNTER_NAME_LEN)
        {
            return Err(Error::Malformed("member info counter name length"));
        }
        Ok(())
    }

    /// Same except for the counters.
    fn same_shape(&self, other: &MemberInfo) -> bool {
        self.ike_addrs == other.ike_addrs && self.capacity == other.capacity
    }
}

/// A member's [`MemberInfo`] with its version in the member's change sequence (info and
/// records share one sequence, so the digest exchange repairs both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoEntry {
    /// Position in the owner's change sequence.
    pub version: u64,
    /// The info.
    pub info: MemberInfo,
}

/// One published name: `<gateway_id>.<domain> -> addresses`, owned by the member that
/// terminates the tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Gateway ID derived from the peer identity (seed 003 ch. 4).
    pub gateway_id: String,
    /// Tunnel virtual IP(s).
    pub addresses: Vec<IpAddr>,
    /// Member terminating the tunnel.
    pub owner: MemberId,
    /// Hybrid logical clock stamp of the change.
    pub stamp: u64,
    /// `false` is a tombstone: the owner no longer has this tunnel.
    pub up: bool,
}

/// A record with its version inside the owner's partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the owner's change sequence.
    pub version: u64,
    /// The record.
    pub record: Record,
}

/// One member's partition as known locally.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Bumped by the owner at every start.
    pub incarnation: u64,
    /// Highest version received (all versions up to it are reflected).
    pub max_version: u64,
    /// Latest entry per gateway ID.
    pub entries: BTreeMap<String, Entry>,
    /// The member's latest info about itself.
    #[serde(default)]
    pub info: Option<InfoEntry>,
}

/// One line of a digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestEntry {
    pub member: MemberId,
    pub incarnation: u64,
    pub heartbeat: u64,
    /// Milliseconds since the sender saw this heartbeat grow (`u64::MAX`: never).
    pub silent_ms: u64,
    pub max_version: u64,
    /// HLC stamp of the member's newest heartbeat known to the sender (0: none).
    #[serde(default)]
    pub stamp: u64,
    /// On the sender's own line: its [`Event::Stamp`] value (0 elsewhere). Members take
    /// the largest, so one that restarted, or withdrew a member a little differently,
    /// converges on the same newest stamp (and DNS serial) as the others.
    #[serde(default)]
    pub zone_stamp: u64,
}

/// The changes of one partition in the version range `(from_version, to_version]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartDelta {
    pub member: MemberId,
    pub incarnation: u64,
    pub heartbeat: u64,
    pub from_version: u64,
    pub to_version: u64,
    pub entries: Vec<Entry>,
    /// The owner's info when its version is in the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<InfoEntry>,
}

/// Replication messages between members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// What the sender knows; the receiver answers with a [`Message::Delta`] of what the
    /// sender lacks.
    Digest(Vec<DigestEntry>),
    /// Entries the receiver lacks (also used for the immediate push of a local change).
    Delta(Vec<PartDelta>),
    /// The sender leaves the cluster (`delete service ipsec-ddns enable`).
    Leave,
}

/// What the daemon is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The answer for a gateway ID changed (`None`: no longer answered).
    RecordChanged {
        gateway_id: String,
        record: Option<Record>,
    },
    /// A member is alive again (or for the first time).
    MemberUp(MemberId),
    /// A member was silent for `dead_after`; its records are no longer answered.
    MemberDown(MemberId),
    /// A member left the cluster.
    MemberLeft(MemberId),
    /// After this member came up we hold everything it knows.
    Synced(MemberId),
    /// The newest stamp of the data answered grew to this value: the largest HLC stamp
    /// of every record and tombstone held, of every withdrawal of a member that went
    /// down or left, and of this value as other members gossip it. A withdrawal's stamp is the member's last heartbeat stamp plus
    /// `dead_after`, which every member that saw the same heartbeats computes alike, so
    /// members holding the same data derive the same DNS serial from it. Sent after the
    /// [`Event::RecordChanged`] events of the same change.
    Stamp(u64),
}

/// A write the shell must make durable, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Insert or replace the entry of `member` for `entry.record.gateway_id`.
    Put { member: MemberId, entry: Entry },
    /// Update partition metadata.
    Meta {
        member: MemberId,
        incarnation: u64,
        max_version: u64,
    },
    /// Replace a whole partition (new incarnation of its owner).
    Replace {
        member: MemberId,
        partition: Partition,
    },
    /// Forget a member.
    Drop { member: MemberId },
    /// Replace the info of `member`.
    Info { member: MemberId, entry: InfoEntry },
}

/// Liveness of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    Up,
    Down,
}

/// Status line of `show cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub member: MemberId,
    pub state: MemberState,
    /// Milliseconds since the member's heartbeat last grew (`None`: never heard).
    pub last_seen_ms_ago: Option<u64>,
    pub incarnation: u64,
    /// Up records in its partition.
    pub records: usize,
    pub is_self: bool,
    /// What the member last said about itself (`None`: nothing yet).
    pub info: Option<MemberInfo>,
}

/// Timing knobs of the core.
#[derive(Debug, Clone, Copy)]
pub struct NodeConfig {
    /// Silence after which a member is down (issue 5: 3 s by default).
    pub dead_after_ms: u64,
    /// Period of digest exchange and heartbeat.
    pub gossip_interval_ms: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            dead_after_ms: 3000,
            gossip_interval_ms: 250,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Liveness {
    incarnation: u64,
    heartbeat: u64,
    last_seen: Option<u64>,
    up: bool,
    synced: bool,
    /// Stamp of its newest heartbeat known here.
    hb_stamp: u64,
}

/// State loaded from the store at start.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every partition known, including this member's own.
    pub partitions: BTreeMap<MemberId, Partition>,
}

/// The replication state machine of one member.
#[derive(Debug)]
pub struct Node {
    me: MemberId,
    cfg: NodeConfig,
    hlc: Hlc,
    heartbeat: u64,
    parts: BTreeMap<MemberId, Partition>,
    live: BTreeMap<MemberId, Liveness>,
    view: BTreeMap<String, Record>,
    next_gossip: u64,
    /// Per partition: (incarnation, max_version one round ago, two rounds ago).
    settled: BTreeMap<MemberId, (u64, u64, u64)>,
    /// (to, partition) -> (incarnation, to_version, when) of the last delta or push sent.
    sent: BTreeMap<(MemberId, MemberId), (u64, u64, u64)>,
    now: u64,
    out: VecDeque<(MemberId, Message)>,
    events: VecDeque<Event>,
    store_ops: Vec<StoreOp>,
    /// Own info set but not yet replicated (a counters-only change waiting its turn).
    pending_info: Option<MemberInfo>,
    /// When own info was last replicated.
    info_sent_at: Option<u64>,
    /// HLC stamp of this member's current heartbeat.
    hb_stamp: u64,
    /// See [`Event::Stamp`].
    zone_stamp: u64,
}

impl Node {
    /// Start a member with a new `incarnation` (strictly larger than any before: the shell
    /// persists it) from what its store holds. `members` are the configured peers.
    pub fn new(
        me: MemberId,
        incarnation: u64,
        mut snapshot: Snapshot,
        members: &[MemberId],
        cfg: NodeConfig,
        now_ms: u64,
    ) -> Self {
        let mut own = snapshot.partitions.remove(&me).unwrap_or_default();
        own.incarnation = incarnation;
        for e in own.entries.values_mut() {
            e.record.owner = me.clone();
        }
        let floor = snapshot
            .partitions
            .values()
            .chain(std::iter::once(&own))
            .flat_map(|p| p.entries.values().map(|e| e.record.stamp))
            .max()
            .unwrap_or(0);
        let mut node = Self {
            me: me.clone(),
            cfg,
            hlc: Hlc::with_floor(floor),
            heartbeat: 0,
            parts: BTreeMap::new(),
            live: BTreeMap::new(),
            view: BTreeMap::new(),
            next_gossip: now_ms,
            settled: BTreeMap::new(),
            sent: BTreeMap::new(),
            now: now_ms,
            out: VecDeque::new(),
            events: VecDeque::new(),
            store_ops: Vec::new(),
            pending_info: None,
            info_sent_at: None,
            hb_stamp: 0,
            zone_stamp: 0,
        };
        node.store_ops.push(StoreOp::Meta {
            member: me.clone(),
            incarnation,
            max_version: own.max_version,
        });
        node.parts.insert(me.clone(), own);
        for (m, p) in snapshot.partitions {
            if node.parts.len() >= MAX_MEMBERS {
                break;
            }
            node.live.insert(m.clone(), Liveness::default());
            node.parts.insert(m, p);
        }
        for m in members {
            node.add_member(m);
        }
        let keys: BTreeSet<String> = node
            .parts
            .values()
            .flat_map(|p| p.entries.keys().cloned())
            .collect();
        for k in keys {
            node.recompute(&k, false);
        }
        node.raise_stamp(floor);
        node
    }

    /// Raise the newest stamp to this start (unix ms): a new cluster's DNS serial starts at
    /// the time, not 0, so its first change is a small RFC 1982 step for secondaries (0 ->
    /// a time-derived serial reads as a decrease). Members take the largest, so they still
    /// agree.
    pub fn stamp_start(&mut self, wall_ms: u64) {
        let s = self.hlc.now(wall_ms);
        self.raise_stamp(s);
    }

    /// See [`Event::Stamp`]: the newest stamp of the data answered.
    pub fn zone_stamp(&self) -> u64 {
        self.zone_stamp
    }

    fn raise_stamp(&mut self, stamp: u64) {
        if stamp > self.zone_stamp {
            self.zone_stamp = stamp;
            self.events.push_back(Event::Stamp(stamp));
        }
    }

    /// The stamp of withdrawing member `m`'s records: its last heartbeat stamp (or its
    /// newest record, when no heartbeat stamp is known) plus `dead_after`.
    fn withdrawal_stamp(&self, m: &str) -> u64 {
        let hb = self.live.get(m).map_or(0, |l| l.hb_stamp);
        let rec = self
            .parts
            .get(m)
            .and_then(|p| p.entries.values().map(|e| e.record.stamp).max())
            .unwrap_or(0);
        hb.max(rec)
            .saturating_add(self.cfg.dead_after_ms << crate::hlc::LOGICAL_BITS)
    }

    /// Member `m`'s records are withdrawn (down or left): later local stamps are newer
    /// than the withdrawal.
    fn withdrawn(&mut self, stamp: u64) {
        self.hlc.observe(stamp, 0);
        self.raise_stamp(stamp);
    }

    /// This member's ID.
    pub fn id(&self) -> &MemberId {
        &self.me
    }

    /// This member's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.parts.get(&self.me).map_or(0, |p| p.incarnation)
    }

    /// Track a member (configured `peer`, or an authenticated joiner). Returns false when
    /// the cluster is full.
    pub fn add_member(&mut self, m: &str) -> bool {
        if m == self.me || self.parts.contains_key(m) {
            return true;
        }
        if self.parts.len() >= MAX_MEMBERS {
            return false;
        }
        self.parts.insert(m.to_owned(), Partition::default());
        self.live.insert(m.to_owned(), Liveness::default());
        true
    }

    /// Stop tracking a member and forget its records (`delete service ipsec-ddns peer`).
    pub fn remove_member(&mut self, m: &str) {
        if m == self.me {
            return;
        }
        if let Some(p) = self.parts.remove(m) {
            self.live.remove(m);
            self.store_ops.push(StoreOp::Drop {
                member: m.to_owned(),
            });
            for k in p.entries.keys() {
                self.recompute(k, true);
            }
        }
    }

    /// Members tracked, this one included.
    pub fn member_ids(&self) -> Vec<MemberId> {
        self.parts.keys().cloned().collect()
    }

    /// Whether `m` is tracked.
    pub fn is_member(&self, m: &str) -> bool {
        self.parts.contains_key(m)
    }

    /// Publish a change of a tunnel this member terminates; pushed at once to every member.
    /// Returns the stored record.
    pub fn publish(
        &mut self,
        gateway_id: &str,
        addresses: Vec<IpAddr>,
        up: bool,
        wall_ms: u64,
    ) -> Result<Record, Error> {
        if gateway_id.is_empty() || gateway_id.len() > MAX_GATEWAY_ID_LEN {
            return Err(Error::Malformed("gateway ID length"));
        }
        if addresses.len() > MAX_ADDRESSES {
            return Err(Error::Malformed("too many addresses"));
        }
        let stamp = self.hlc.now(wall_ms);
        let me = self.me.clone();
        let own = self.parts.entry(me.clone()).or_default();
        let from_version = own.max_version;
        own.max_version += 1;
        let record = Record {
            gateway_id: gateway_id.to_owned(),
            addresses,
            owner: me.clone(),
            stamp,
            up,
        };
        let entry = Entry {
            version: own.max_version,
            record: record.clone(),
        };
        own.entries.insert(gateway_id.to_owned(), entry.clone());
        let part = PartDelta {
            member: me.clone(),
            incarnation: own.incarnation,
            heartbeat: self.heartbeat,
            from_version,
            to_version: own.max_version,
            entries: vec![entry.clone()],
            info: None,
        };
        self.store_ops.push(StoreOp::Put {
            member: me.clone(),
            entry,
        });
        self.push_own_delta(part);
        self.recompute(gateway_id, true);
        self.raise_stamp(stamp);
        Ok(record)
    }

    /// Set what this member says about itself. A change of `ike_addrs` or `capacity` is
    /// pushed to every member at once; a change of the counters alone at most every
    /// [`INFO_COUNTERS_INTERVAL_MS`] (the latest value then), so calling this every second
    /// does not flood the links. Nothing is sent when nothing changed.
    pub fn set_info(&mut self, info: MemberInfo, now_ms: u64) -> Result<(), Error> {
        info.check()?;
        self.now = self.now.max(now_ms);
        let published = self
            .parts
            .get(&self.me)
            .and_then(|p| p.info.as_ref())
            .map(|e| &e.info);
        match published {
            Some(p) if *p == info => {
                self.pending_info = None;
            }
            Some(p) if p.same_shape(&info) && !self.info_due(now_ms) => {
                self.pending_info = Some(info);
            }
            _ => {
                self.pending_info = None;
                self.publish_info(info, now_ms);
            }
        }
        Ok(())
    }

    /// This member's info as last set (replicated or waiting its turn).
    pub fn own_info(&self) -> Option<&MemberInfo> {
        self.pending_info.as_ref().or_else(|| {
            self.parts
                .get(&self.me)
                .and_then(|p| p.info.as_ref())
                .map(|e| &e.info)
        })
    }

    /// Change part of this member's info (the rest as last set), then as [`Node::set_info`].
    pub fn update_info(
        &mut self,
        f: impl FnOnce(&mut MemberInfo),
        now_ms: u64,
    ) -> Result<(), Error> {
        let mut info = self.own_info().cloned().unwrap_or_default();
        f(&mut info);
        self.set_info(info, now_ms)
    }

    fn info_due(&self, now_ms: u64) -> bool {
        self.info_sent_at
            .is_none_or(|t| now_ms >= t + INFO_COUNTERS_INTERVAL_MS)
    }

    fn publish_info(&mut self, info: MemberInfo, now_ms: u64) {
        let me = self.me.clone();
        let own = self.parts.entry(me.clone()).or_default();
        let from_version = own.max_version;
        own.max_version += 1;
        let entry = InfoEntry {
            version: own.max_version,
            info,
        };
        own.info = Some(entry.clone());
        let part = PartDelta {
            member: me.clone(),
            incarnation: own.incarnation,
            heartbeat: self.heartbeat,
            from_version,
            to_version: own.max_version,
            entries: Vec::new(),
            info: Some(entry.clone()),
        };
        self.store_ops.push(StoreOp::Info {
            member: me.clone(),
            entry,
        });
        self.info_sent_at = Some(now_ms);
        self.push_own_delta(part);
    }

    /// A new version of this member's own partition (a record or its info, already in
    /// `parts` and its store op queued): persist the partition's version, then push the
    /// delta to every live member and remember it as sent.
    fn push_own_delta(&mut self, part: PartDelta) {
        self.store_ops.push(StoreOp::Meta {
            member: part.member.clone(),
            incarnation: part.incarnation,
            max_version: part.to_version,
        });
        for m in self.live.keys() {
            self.sent.insert(
                (m.clone(), self.me.clone()),
                (part.incarnation, part.to_version, self.now),
            );
            self.out
                .push_back((m.clone(), Message::Delta(vec![part.clone()])));
        }
    }

    /// Announce that this member leaves the cluster.
    pub fn leave(&mut self) {
        for m in self.live.keys() {
            self.out.push_back((m.clone(), Message::Leave));
        }
    }

    /// A message from member `from` (already authenticated by the transport).
    pub fn handle(
        &mut self,
        from: &str,
        msg: Message,
        now_ms: u64,
        wall_ms: u64,
    ) -> Result<(), Error> {
        self.now = self.now.max(now_ms);
        if from == self.me {
            return Err(Error::Malformed("message claims to come from self"));
        }
        if !self.parts.contains_key(from) && !self.add_member(from) {
            return Err(Error::ClusterFull {
                peer: from.to_owned(),
                max: MAX_MEMBERS,
            });
        }
        match msg {
            Message::Digest(d) => self.on_digest(from, d, now_ms),
            Message::Delta(parts) => self.on_delta(from, parts, now_ms, wall_ms),
            Message::Leave => {
                let stamp = self.withdrawal_stamp(from);
                self.remove_member(from);
                self.events.push_back(Event::MemberLeft(from.to_owned()));
                self.withdrawn(stamp);
                Ok(())
            }
        }
    }

    /// Liveness evidence about `m`: its heartbeat `(incarnation, heartbeat)`, from `m` itself
    /// (`hearsay_age: None`) or relayed with the relayer's age of it, so a stale heartbeat
    /// relayed late never revives a dead member.
    fn saw(
        &mut self,
        m: &str,
        incarnation: u64,
        heartbeat: u64,
        hearsay_age: Option<u64>,
        now_ms: u64,
    ) {
        let direct = hearsay_age.is_none();
        let age_ms = hearsay_age.unwrap_or(0);
        let dead_after = self.cfg.dead_after_ms;
        let Some(l) = self.live.get_mut(m) else {
            return;
        };
        let newer = (incarnation, heartbeat) > (l.incarnation, l.heartbeat);
        if newer {
            l.incarnation = incarnation;
            l.heartbeat = heartbeat;
        }
        // Hearsay counts only when it brings a newer heartbeat: two members repeating an
        // old one to each other must not keep a dead member alive.
        if !(newer || direct) || age_ms > dead_after {
            return;
        }
        let seen_at = now_ms.saturating_sub(age_ms);
        l.last_seen = Some(l.last_seen.map_or(seen_at, |t| t.max(seen_at)));
        if !l.up && now_ms.saturating_sub(seen_at) <= dead_after {
            l.up = true;
            l.synced = false;
            self.events.push_back(Event::MemberUp(m.to_owned()));
            let keys: Vec<String> = self
                .parts
                .get(m)
                .map(|p| p.entries.keys().cloned().collect())
                .unwrap_or_default();
            for k in keys {
                self.recompute(&k, true);
            }
        }
    }

    /// A heartbeat stamp of `m`, first-hand or relayed. While `m` is down a newer one
    /// moves its withdrawal stamp, so members converge on the same one.
    fn saw_stamp(&mut self, m: &str, stamp: u64) {
        let Some(l) = self.live.get_mut(m) else {
            return;
        };
        if stamp <= l.hb_stamp {
            return;
        }
        l.hb_stamp = stamp;
        if !l.up && l.last_seen.is_some() {
            let w = self.withdrawal_stamp(m);
            self.withdrawn(w);
        }
    }

    fn on_digest(&mut self, from: &str, d: Vec<DigestEntry>, now_ms: u64) -> Result<(), Error> {
        if d.len() > MAX_MEMBERS * 4 {
            return Err(Error::Malformed("digest too long"));
        }
        let mut they_know: BTreeMap<&str, &DigestEntry> = BTreeMap::new();
        for e in &d {
            if e.member.len() > MAX_MEMBER_ID_LEN {
                return Err(Error::Malformed("member ID too long"));
            }
            they_know.insert(e.member.as_str(), e);
        }
        let mut we_lack = false;
        for e in &d {
            if e.member == self.me {
                continue;
            }
            let age = (e.member != from).then_some(e.silent_ms);
            self.saw(&e.member, e.incarnation, e.heartbeat, age, now_ms);
            self.saw_stamp(&e.member, e.stamp);
            if e.member == from && e.zone_stamp > self.zone_stamp {
                self.hlc.observe(e.zone_stamp, 0);
                self.raise_stamp(e.zone_stamp);
            }
            if let Some(p) = self.parts.get(&e.member) {
                if (e.incarnation, e.max_version) > (p.incarnation, p.max_version) {
                    we_lack = true;
                }
            }
        }
        // What `from` lacks.
        let mut parts = Vec::new();
        let mut sent = Vec::new();
        let mut budget = MAX_DELTA_ENTRIES;
        for (m, p) in &self.parts {
            if m == from || budget == 0 {
                // `from` is the only writer of its own partition.
                continue;
            }
            let heartbeat = if *m == self.me {
                self.heartbeat
            } else {
                self.live.get(m).map_or(0, |l| l.heartbeat)
            };
            let (from_version, full) = match they_know.get(m.as_str()) {
                Some(k) if k.incarnation == p.incarnation => {
                    // Versions newer than one gossip round are most likely still in flight
                    // as a push: only repair what has been missing for longer.
                    let settled = self
                        .settled
                        .get(m)
                        .filter(|s| s.0 == p.incarnation)
                        .map_or(p.max_version, |s| s.2);
                    if k.max_version >= p.max_version || k.max_version >= settled {
                        continue;
                    }
                    (k.max_version, false)
                }
                Some(k) if k.incarnation > p.incarnation => continue,
                _ => (0, true),
            };
            if p.incarnation == 0 && p.max_version == 0 {
                continue; // we know nothing of it either
            }
            // Flow control: what we sent `from` recently is still on its way; sending it
            // again would only add load (and under overload, collapse).
            if let Some(&(inc, v, at)) = self.sent.get(&(from.to_owned(), m.clone())) {
                let fresh = now_ms.saturating_sub(at) < 4 * self.cfg.gossip_interval_ms;
                if fresh && inc == p.incarnation && v > from_version && !full {
                    continue;
                }
            }
            let mut entries: Vec<Entry> = p
                .entries
                .values()
                .filter(|e| e.version > from_version)
                .cloned()
                .collect();
            entries.sort_by_key(|e| e.version);
            let mut to_version = p.max_version;
            if entries.len() > budget {
                if full {
                    // A replacement must be whole; wait for budget next round.
                    continue;
                }
                entries.truncate(budget);
                to_version = entries.last().map_or(from_version, |e| e.version);
            }
            budget -= entries.len();
            let info = p
                .info
                .as_ref()
                .filter(|i| i.version > from_version && i.version <= to_version)
                .cloned();
            sent.push((m.clone(), p.incarnation, to_version));
            parts.push(PartDelta {
                member: m.clone(),
                incarnation: p.incarnation,
                heartbeat,
                from_version,
                to_version,
                entries,
                info,
            });
        }
        for (m, inc, v) in sent {
            self.sent.insert((from.to_owned(), m), (inc, v, now_ms));
        }
        if !parts.is_empty() {
            self.out.push_back((from.to_owned(), Message::Delta(parts)));
        }
        let synced = self.live.get(from).is_some_and(|l| l.synced);
        if we_lack && !synced {
            let digest = self.digest();
            self.out
                .push_back((from.to_owned(), Message::Digest(digest)));
        } else if let Some(l) = self.live.get_mut(from) {
            if l.up && !l.synced && !we_lack {
                l.synced = true;
                self.events.push_back(Event::Synced(from.to_owned()));
            }
        }
        Ok(())
    }

    fn on_delta(
        &mut self,
        from: &str,
        parts: Vec<PartDelta>,
        now_ms: u64,
        wall_ms: u64,
    ) -> Result<(), Error> {
        if parts.len() > MAX_MEMBERS * 4 {
            return Err(Error::Malformed("delta has too many partitions"));
        }
        for pd in &parts {
            if pd.entries.len() > MAX_DELTA_ENTRIES {
                return Err(Error::Malformed("delta has too many entries"));
            }
            if pd.from_version > pd.to_version {
                return Err(Error::Malformed("delta version range inverted"));
            }
            for e in &pd.entries {
                let r = &e.record;
                if r.gateway_id.is_empty()
                    || r.gateway_id.len() > MAX_GATEWAY_ID_LEN
                    || r.addresses.len() > MAX_ADDRESSES
                    || r.owner != pd.member
                    || e.version <= pd.from_version
                    || e.version > pd.to_version
                {
                    return Err(Error::Malformed("delta entry outside its partition"));
                }
            }
            if let Some(i) = &pd.info {
                if i.version <= pd.from_version || i.version > pd.to_version {
                    return Err(Error::Malformed("delta member info outside its partition"));
                }
                i.info.check()?;
            }
        }
        for pd in parts {
            if pd.member == self.me {
                continue; // only we write our partition
            }
            if pd.member == from {
                self.saw(from, pd.incarnation, pd.heartbeat, None, now_ms);
            }
            let Some(p) = self.parts.get_mut(&pd.member) else {
                continue;
            };
            let mut touched: BTreeSet<String> = BTreeSet::new();
            let mut newest = 0;
            if pd.incarnation > p.incarnation {
                if pd.from_version != 0 {
                    continue; // need the whole partition of the new incarnation
                }
                touched.extend(p.entries.keys().cloned());
                p.entries.clear();
                p.incarnation = pd.incarnation;
                p.max_version = pd.to_version;
                p.info = pd.info;
                for e in pd.entries {
                    self.hlc.observe(e.record.stamp, wall_ms);
                    newest = newest.max(e.record.stamp);
                    touched.insert(e.record.gateway_id.clone());
                    p.entries.insert(e.record.gateway_id.clone(), e);
                }
                self.store_ops.push(StoreOp::Replace {
                    member: pd.member.clone(),
                    partition: p.clone(),
                });
            } else if pd.incarnation == p.incarnation
                && pd.from_version <= p.max_version
                && pd.to_version > p.max_version
            {
                let known = p.max_version;
                for e in pd.entries {
                    if e.version <= known {
                        continue;
                    }
                    self.hlc.observe(e.record.stamp, wall_ms);
                    newest = newest.max(e.record.stamp);
                    touched.insert(e.record.gateway_id.clone());
                    self.store_ops.push(StoreOp::Put {
                        member: pd.member.clone(),
                        entry: e.clone(),
                    });
                    p.entries.insert(e.record.gateway_id.clone(), e);
                }
                if let Some(i) = pd.info.filter(|i| i.version > known) {
                    self.store_ops.push(StoreOp::Info {
                        member: pd.member.clone(),
                        entry: i.clone(),
                    });
                    p.info = Some(i);
                }
                p.max_version = pd.to_version;
                self.store_ops.push(StoreOp::Meta {
                    member: pd.member.clone(),
                    incarnation: p.incarnation,
                    max_version: p.max_version,
                });
            } else {
                continue;
            }
            for k in touched {
                self.recompute(&k, true);
            }
            self.raise_stamp(newest);
        }
        Ok(())
    }

    fn digest(&self) -> Vec<DigestEntry> {
        self.parts
            .iter()
            .map(|(m, p)| DigestEntry {
                member: m.clone(),
                incarnation: p.incarnation,
                heartbeat: if *m == self.me {
                    self.heartbeat
                } else {
                    self.live.get(m).map_or(0, |l| l.heartbeat)
                },
                silent_ms: if *m == self.me {
                    0
                } else {
                    self.live
                        .get(m)
                        .and_then(|l| l.last_seen)
                        .map_or(u64::MAX, |t| self.now.saturating_sub(t))
                },
                max_version: p.max_version,
                stamp: if *m == self.me {
                    self.hb_stamp
                } else {
                    self.live.get(m).map_or(0, |l| l.hb_stamp)
                },
                zone_stamp: if *m == self.me { self.zone_stamp } else { 0 },
            })
            .collect()
    }

    fn alive(&self, m: &str) -> bool {
        m == self.me || self.live.get(m).is_some_and(|l| l.up)
    }

    /// Newest up record for `key` among live members, by (stamp, owner).
    fn winner(&self, key: &str) -> Option<Record> {
        self.parts
            .iter()
            .filter(|(m, _)| self.alive(m))
            .filter_map(|(_, p)| p.entries.get(key))
            .filter(|e| e.record.up)
            .max_by(|a, b| {
                (a.record.stamp, &a.record.owner).cmp(&(b.record.stamp, &b.record.owner))
            })
            .map(|e| e.record.clone())
    }

    fn recompute(&mut self, key: &str, emit: bool) {
        let new = self.winner(key);
        let old = self.view.get(key);
        if old == new.as_ref() {
            return;
        }
        match &new {
            Some(r) => {
                self.view.insert(key.to_owned(), r.clone());
            }
            None => {
                self.view.remove(key);
            }
        }
        if emit {
            self.events.push_back(Event::RecordChanged {
                gateway_id: key.to_owned(),
                record: new,
            });
        }
    }

    /// Heartbeat, digest exchange and failure detection; call at [`Node::next_deadline`].
    /// `wall_ms` (unix) stamps the heartbeat.
    pub fn tick(&mut self, now_ms: u64, wall_ms: u64) {
        self.now = self.now.max(now_ms);
        if self.pending_info.is_some() && self.info_due(now_ms) {
            if let Some(info) = self.pending_info.take() {
                self.publish_info(info, now_ms);
            }
        }
        if now_ms >= self.next_gossip {
            self.heartbeat += 1;
            self.hb_stamp = self.hlc.now(wall_ms);
            for (m, p) in &self.parts {
                let s = self
                    .settled
                    .entry(m.clone())
                    .or_insert((p.incarnation, 0, 0));
                *s = if s.0 == p.incarnation {
                    (p.incarnation, p.max_version, s.1)
                } else {
                    (p.incarnation, p.max_version, 0)
                };
            }
            self.settled.retain(|m, _| self.parts.contains_key(m));
            self.sent
                .retain(|(to, m), _| self.parts.contains_key(to) && self.parts.contains_key(m));
            let digest = self.digest();
            for m in self.live.keys() {
                self.out
                    .push_back((m.clone(), Message::Digest(digest.clone())));
            }
            self.next_gossip = now_ms + self.cfg.gossip_interval_ms;
        }
        let mut went_down = Vec::new();
        for (m, l) in self.live.iter_mut() {
            if l.up
                && l.last_seen
                    .is_none_or(|t| now_ms.saturating_sub(t) > self.cfg.dead_after_ms)
            {
                l.up = false;
                l.synced = false;
                went_down.push(m.clone());
            }
        }
        for m in went_down {
            self.events.push_back(Event::MemberDown(m.clone()));
            let keys: Vec<String> = self
                .parts
                .get(&m)
                .map(|p| p.entries.keys().cloned().collect())
                .unwrap_or_default();
            for k in keys {
                self.recompute(&k, true);
            }
            let w = self.withdrawal_stamp(&m);
            self.withdrawn(w);
        }
    }

    /// When [`Node::tick`] must next run.
    pub fn next_deadline(&self) -> u64 {
        let mut d = self.next_gossip;
        if self.pending_info.is_some() {
            if let Some(t) = self.info_sent_at {
                d = d.min(t + INFO_COUNTERS_INTERVAL_MS);
            }
        }
        for l in self.live.values() {
            if l.up {
                if let Some(t) = l.last_seen {
                    d = d.min(t + self.cfg.dead_after_ms + 1);
                }
            }
        }
        d
    }

    /// Next message to send.
    pub fn poll_transmit(&mut self) -> Option<(MemberId, Message)> {
        self.out.pop_front()
    }

    /// Next event for the daemon.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Writes to make durable (in order) before acknowledging.
    pub fn take_store_ops(&mut self) -> Vec<StoreOp> {
        std::mem::take(&mut self.store_ops)
    }

    /// The answer for one gateway ID.
    pub fn lookup(&self, gateway_id: &str) -> Option<&Record> {
        self.view.get(gateway_id)
    }

    /// Every answered record.
    pub fn view(&self) -> &BTreeMap<String, Record> {
        &self.view
    }

    /// A partition as known here.
    pub fn partition(&self, m: &str) -> Option<&Partition> {
        self.parts.get(m)
    }

    /// `show cluster`.
    pub fn members(&self, now_ms: u64) -> Vec<MemberStatus> {
        self.parts
            .iter()
            .map(|(m, p)| {
                let is_self = *m == self.me;
                let l = self.live.get(m);
                MemberStatus {
                    member: m.clone(),
                    state: if self.alive(m) {
                        MemberState::Up
                    } else {
                        MemberState::Down
                    },
                    last_seen_ms_ago: if is_self {
                        Some(0)
                    } else {
                        l.and_then(|l| l.last_seen)
                            .map(|t| now_ms.saturating_sub(t))
                    },
                    incarnation: p.incarnation,
                    records: p.entries.values().filter(|e| e.record.up).count(),
                    is_self,
                    info: if is_self {
                        self.own_info().cloned()
                    } else {
                        p.info.as_ref().map(|e| e.info.clone())
                    },
                }
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pump(nodes: &mut [Node], now: u64) {
        loop {
            let mut moved = false;
            for i in 0..nodes.len() {
                while let Some((to, msg)) = nodes[i].poll_transmit() {
                    moved = true;
                    let from = nodes[i].id().clone();
                    if let Some(j) = nodes.iter().position(|n| *n.id() == to) {
                        nodes[j].handle(&from, msg, now, now).unwrap();
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }

    fn three() -> Vec<Node> {
        let ids = ["a", "b", "c"];
        ids.iter()
            .map(|me| {
                let peers: Vec<String> = ids
                    .iter()
                    .filter(|p| *p != me)
                    .map(|p| p.to_string())
                    .collect();
                Node::new(
                    me.to_string(),
                    1,
                    Snapshot::default(),
                    &peers,
                    NodeConfig::default(),
                    0,
                )
            })
            .collect()
    }

    #[test]
    fn a_pushed_change_is_answered_everywhere() {
        let mut n = three();
        for x in n.iter_mut() {
            x.tick(0, 0);
        }
        pump(&mut n, 0);
        n[0].publish("r1", vec![ip("10.0.0.1")], true, 1000)
            .unwrap();
        pump(&mut n, 1);
        for x in &n {
            assert_eq!(x.lookup("r1").map(|r| r.owner.as_str()), Some("a"));
        }
    }

    #[test]
    fn the_newest_connection_wins_whatever_the_arrival_order() {
        let mut n = three();
        for x in n.iter_mut() {
            x.tick(0, 0);
        }
        pump(&mut n, 0);
        n[0].publish("r1", vec![ip("10.0.0.1")], true, 5000)
            .unwrap();
        pump(&mut n, 1);
        // b's wall clock is far behind, yet it has seen a's record: its stamp is newer.
        n[1].publish("r1", vec![ip("10.0.0.2")], true, 10).unwrap();
        pump(&mut n, 2);
        for x in &n {
            assert_eq!(x.lookup("r1").map(|r| r.owner.as_str()), Some("b"));
        }
        // a's late tombstone for its old tunnel does not hide b's.
        n[0].publish("r1", vec![], false, 5001).unwrap();
        pump(&mut n, 3);
        for x in &n {
            assert_eq!(x.lookup("r1").map(|r| r.owner.as_str()), Some("b"));
        }
    }

    #[test]
    fn a_silent_member_goes_down_and_its_records_are_not_answered() {
        let mut n = three();
        for x in n.iter_mut() {
            x.tick(0, 0);
        }
        pump(&mut n, 0);
        n[2].publish("r9", vec![ip("10.0.0.9")], true, 1).unwrap();
        pump(&mut n, 0);
        assert!(n[0].lookup("r9").is_some());
        // c goes silent; a and b keep gossiping.
        let mut t = 0;
        while t < 3500 {
            t += 250;
            for x in n.iter_mut().take(2) {
                x.tick(t, t);
            }
            for x in n.iter_mut().take(2) {
                while let Some((to, m)) = x.poll_transmit() {
                    if to == "c" {
                        continue;
                    }
                    let _ = (to, m);
                }
            }
        }
        // Only a's own view matters here; b heard nothing either.
        assert!(n[0].lookup("r9").is_none());
        let mut saw_down = false;
        while let Some(e) = n[0].poll_event() {
            saw_down |= e == Event::MemberDown("c".into());
        }
        assert!(saw_down);
    }

    fn info(cap: u32, n: u64) -> MemberInfo {
        MemberInfo {
            ike_addrs: vec![ip("192.0.2.1")],
            capacity: cap,
            counters: [("tunnels_up".to_string(), n)].into_iter().collect(),
        }
    }

    fn info_of(n: &Node, m: &str) -> Option<MemberInfo> {
        n.members(0)
            .into_iter()
            .find(|s| s.member == m)
            .and_then(|s| s.info)
    }

    #[test]
    fn member_info_replicates_and_counters_are_coalesced() {
        let mut n = three();
        for x in n.iter_mut() {
            x.tick(0, 0);
        }
        pump(&mut n, 0);
        n[0].set_info(info(10, 1), 0).unwrap();
        pump(&mut n, 0);
        assert_eq!(info_of(&n[1], "a"), Some(info(10, 1)));
        // Counters only, 100 ms later: held back, the latest value wins.
        n[0].set_info(info(10, 2), 100).unwrap();
        n[0].set_info(info(10, 3), 200).unwrap();
        pump(&mut n, 200);
        assert_eq!(info_of(&n[1], "a"), Some(info(10, 1)));
        assert_eq!(
            info_of(&n[0], "a"),
            Some(info(10, 3)),
            "shown locally at once"
        );
        // Capacity changed: out at once.
        n[0].set_info(info(20, 4), 300).unwrap();
        pump(&mut n, 300);
        assert_eq!(info_of(&n[2], "a"), Some(info(20, 4)));
        n[0].set_info(info(20, 5), 400).unwrap();
        assert!(n[0].next_deadline() <= 300 + INFO_COUNTERS_INTERVAL_MS);
        n[0].tick(300 + INFO_COUNTERS_INTERVAL_MS, 0);
        pump(&mut n, 300 + INFO_COUNTERS_INTERVAL_MS);
        assert_eq!(info_of(&n[1], "a"), Some(info(20, 5)));
        // The same info again sends nothing.
        n[0].set_info(info(20, 5), 10_000).unwrap();
        assert!(n[0].poll_transmit().is_none());
        // Partial updates keep the rest.
        n[0].update_info(|i| i.capacity = 30, 10_000).unwrap();
        assert_eq!(info_of(&n[0], "a"), Some(info(30, 5)));
        n[0].update_info(
            |i| i.counters = [("tunnels_up".to_string(), 6)].into_iter().collect(),
            10_001,
        )
        .unwrap();
        assert_eq!(info_of(&n[0], "a"), Some(info(30, 6)));
        // Over the limits: refused.
        let mut big = info(1, 1);
        big.ike_addrs = vec![ip("192.0.2.9"); MAX_INFO_ADDRS + 1];
        assert!(n[0].set_info(big, 10_000).is_err());
    }

    #[test]
    fn hostile_deltas_are_rejected() {
        let mut n = three();
        let bad = PartDelta {
            member: "b".into(),
            incarnation: 1,
            heartbeat: 1,
            from_version: 0,
            to_version: 1,
            info: None,
            entries: vec![Entry {
                version: 1,
                record: Record {
                    gateway_id: "x".into(),
                    addresses: vec![],
                    owner: "c".into(), // b cannot speak for c's partition entry
                    stamp: 1,
                    up: true,
                },
            }],
        };
        assert!(n[0].handle("b", Message::Delta(vec![bad]), 0, 0).is_err());
        assert!(n[0].lookup("x").is_none());
    }
}
