//! Deterministic simulation of the scuttlebutt core: 5-7 members, random partitions, loss,
//! reordering, skewed wall clocks, crashes and restarts from the persisted store, over many
//! seeds. After heal every member must answer the same records, newest-wins must hold, and
//! while a member is down nobody answers its records.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use cluster::node::{
    Event, MemberId, MemberInfo, Message, Node, NodeConfig, Partition, Record, Snapshot, StoreOp,
    INFO_COUNTERS_INTERVAL_MS,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const STEP_MS: u64 = 5;
const MAX_DELAY_MS: u64 = 60;
const GATEWAYS: usize = 15;

/// What a member has on disk in the simulation (acknowledged state).
#[derive(Default, Clone)]
struct Disk {
    incarnation: u64,
    parts: BTreeMap<MemberId, Partition>,
}

impl Disk {
    fn apply(&mut self, ops: Vec<StoreOp>) {
        for op in ops {
            match op {
                StoreOp::Put { member, entry } => {
                    self.parts
                        .entry(member)
                        .or_default()
                        .entries
                        .insert(entry.record.gateway_id.clone(), entry);
                }
                StoreOp::Meta {
                    member,
                    incarnation,
                    max_version,
                } => {
                    let p = self.parts.entry(member).or_default();
                    p.incarnation = incarnation;
                    p.max_version = max_version;
                }
                StoreOp::Replace { member, partition } => {
                    self.parts.insert(member, partition);
                }
                StoreOp::Drop { member } => {
                    self.parts.remove(&member);
                }
                StoreOp::Info { member, entry } => {
                    self.parts.entry(member).or_default().info = Some(entry);
                }
            }
        }
    }
}

struct Member {
    id: MemberId,
    node: Option<Node>,
    disk: Disk,
    skew_ms: i64,
    /// The view as rebuilt from RecordChanged events only (what the DNS server would hold).
    shadow: BTreeMap<String, Record>,
    crashed_at: Option<u64>,
    /// The info this member was last told to say about itself.
    info: Option<MemberInfo>,
    /// Changes of `ike_addrs`/`capacity` it was told (each may go out at once).
    info_shape_changes: u64,
    /// Deltas carrying its own info that it sent (per destination, counted once per change).
    info_sends: u64,
}

struct InFlight {
    at: u64,
    seq: u64,
    from: usize,
    to: usize,
    msg: Message,
}

struct Sim {
    seed: u64,
    rng: ChaCha8Rng,
    now: u64,
    members: Vec<Member>,
    net: Vec<InFlight>,
    seq: u64,
    group: Vec<u8>,
    loss: f64,
    cfg: NodeConfig,
}

const WALL_BASE: i64 = 1_800_000_000_000;

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = rng.gen_range(5..=7);
        let cfg = NodeConfig {
            dead_after_ms: 3000,
            gossip_interval_ms: 250,
        };
        let ids: Vec<MemberId> = (0..n).map(|i| format!("10.1.65.{}", i + 1)).collect();
        let mut members = Vec::new();
        for id in &ids {
            let skew: i64 = rng.gen_range(-20_000..20_000);
            let peers: Vec<MemberId> = ids.iter().filter(|p| *p != id).cloned().collect();
            let mut disk = Disk {
                incarnation: 1,
                ..Disk::default()
            };
            let mut node = Node::new(id.clone(), 1, Snapshot::default(), &peers, cfg, 0);
            node.stamp_start((WALL_BASE + skew) as u64);
            disk.apply(node.take_store_ops());
            members.push(Member {
                id: id.clone(),
                node: Some(node),
                disk,
                skew_ms: skew,
                shadow: BTreeMap::new(),
                crashed_at: None,
                info: None,
                info_shape_changes: 0,
                info_sends: 0,
            });
        }
        Self {
            seed,
            rng,
            now: 0,
            group: vec![0; n],
            members,
            net: Vec::new(),
            seq: 0,
            loss: 0.0,
            cfg,
        }
    }

    fn wall(&self, i: usize) -> u64 {
        (WALL_BASE + self.now as i64 + self.members[i].skew_ms) as u64
    }

    fn peers_of(&self, i: usize) -> Vec<MemberId> {
        self.members
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, m)| m.id.clone())
            .collect()
    }

    /// Collect what member `i` produced: messages onto the network, store ops onto disk,
    /// events into the shadow view.
    fn drain(&mut self, i: usize) {
        let Some(node) = self.members[i].node.as_mut() else {
            return;
        };
        let ops = node.take_store_ops();
        let mut out = Vec::new();
        while let Some(t) = node.poll_transmit() {
            out.push(t);
        }
        let mut events = Vec::new();
        while let Some(e) = node.poll_event() {
            events.push(e);
        }
        self.members[i].disk.apply(ops);
        for e in events {
            if let Event::RecordChanged { gateway_id, record } = e {
                match record {
                    Some(r) => {
                        self.members[i].shadow.insert(gateway_id, r);
                    }
                    None => {
                        self.members[i].shadow.remove(&gateway_id);
                    }
                }
            }
        }
        let me = self.members[i].id.clone();
        let own_info_versions: BTreeSet<u64> = out
            .iter()
            .filter_map(|(_, msg)| match msg {
                Message::Delta(parts) => Some(parts),
                _ => None,
            })
            .flatten()
            .filter(|p| p.member == me && p.entries.is_empty())
            .filter_map(|p| p.info.as_ref().map(|i| i.version))
            .collect();
        self.members[i].info_sends += own_info_versions.len() as u64;
        for (to, msg) in out {
            let Some(j) = self.members.iter().position(|m| m.id == to) else {
                continue;
            };
            if self.group[i] != self.group[j] || self.rng.gen_bool(self.loss) {
                continue;
            }
            let at = self.now + self.rng.gen_range(1..=MAX_DELAY_MS);
            self.seq += 1;
            self.net.push(InFlight {
                at,
                seq: self.seq,
                from: i,
                to: j,
                msg,
            });
        }
    }

    fn step(&mut self) {
        self.now += STEP_MS;
        // Deliver due messages in (time, seq) order; different delays reorder them.
        let now = self.now;
        let (mut due, keep): (Vec<InFlight>, Vec<InFlight>) =
            self.net.drain(..).partition(|f| f.at <= now);
        self.net = keep;
        due.sort_by_key(|f| (f.at, f.seq));
        for f in due {
            if self.group[f.from] != self.group[f.to] {
                continue; // cut while in flight
            }
            let from = self.members[f.from].id.clone();
            let wall = self.wall(f.to);
            let now = self.now;
            if let Some(node) = self.members[f.to].node.as_mut() {
                node.handle(&from, f.msg, now, wall)
                    .expect("members only send well-formed messages");
                self.drain(f.to);
            }
        }
        for i in 0..self.members.len() {
            let now = self.now;
            let wall = self.wall(i);
            if let Some(node) = self.members[i].node.as_mut() {
                if node.next_deadline() <= now {
                    node.tick(now, wall);
                }
            }
            self.drain(i);
        }
    }

    fn publish(&mut self, i: usize) {
        let g = format!("router-{}", self.rng.gen_range(0..GATEWAYS));
        let up = self.rng.gen_bool(0.8);
        let addr: IpAddr = format!("100.64.{}.{}", i, self.rng.gen_range(1..250))
            .parse()
            .expect("valid literal");
        let wall = self.wall(i);
        let Some(node) = self.members[i].node.as_mut() else {
            return;
        };
        let before = node.lookup(&g).cloned();
        let rec = node
            .publish(&g, if up { vec![addr] } else { vec![] }, up, wall)
            .expect("valid record");
        // HLC: a connection made after this member saw another one is newer than it.
        if let Some(b) = before {
            assert!(
                rec.stamp > b.stamp,
                "HLC stamp did not grow past a seen record"
            );
            if up {
                assert_eq!(
                    node.lookup(&g),
                    Some(&rec),
                    "the newest local connection must win locally"
                );
            }
        }
        self.drain(i);
    }

    /// Member `i` states its info: counters change at every call, capacity sometimes.
    fn set_info(&mut self, i: usize) {
        let now = self.now;
        let mut info = self.members[i].info.clone().unwrap_or_else(|| MemberInfo {
            ike_addrs: vec![format!("192.0.2.{}", i + 1).parse().expect("literal")],
            capacity: 100,
            counters: BTreeMap::new(),
        });
        if self.rng.gen_bool(0.02) {
            info.capacity = self.rng.gen_range(0..1000);
            self.members[i].info_shape_changes += 1;
        }
        info.counters.insert("now_ms".into(), now);
        let n: u64 = self.rng.gen();
        info.counters.insert("random".into(), n);
        let Some(node) = self.members[i].node.as_mut() else {
            return;
        };
        node.set_info(info.clone(), now)
            .expect("info within limits");
        self.members[i].info = Some(info);
        self.drain(i);
    }

    /// Whether every member sees every other member's latest info.
    fn infos_converged(&self) -> bool {
        self.members.iter().all(|m| {
            let Some(node) = &m.node else { return false };
            node.members(self.now).iter().all(|s| {
                let Some(owner) = self.members.iter().find(|o| o.id == s.member) else {
                    return false;
                };
                s.info == owner.info
            })
        })
    }

    fn crash(&mut self, i: usize) {
        self.members[i].node = None;
        self.members[i].crashed_at = Some(self.now);
    }

    fn restart(&mut self, i: usize) {
        let peers = self.peers_of(i);
        let m = &mut self.members[i];
        m.disk.incarnation += 1;
        let snap = Snapshot {
            partitions: m.disk.parts.clone(),
        };
        let mut node = Node::new(
            m.id.clone(),
            m.disk.incarnation,
            snap,
            &peers,
            self.cfg,
            self.now,
        );
        node.stamp_start((WALL_BASE + self.now as i64 + m.skew_ms) as u64);
        m.shadow = node.view().clone();
        m.node = Some(node);
        m.crashed_at = None;
        self.drain(i);
    }

    /// Nobody alive answers a record owned by a member crashed long enough ago.
    fn check_down_members_not_answered(&self) {
        // dead_after, plus the transit of the last heartbeat and of relayed ages (each relay
        // hop can add up to one message delay that no member can measure without clocks).
        let margin = self.cfg.dead_after_ms + self.cfg.gossip_interval_ms + 4 * MAX_DELAY_MS;
        for dead in &self.members {
            let Some(t) = dead.crashed_at else { continue };
            if self.now < t + margin {
                continue;
            }
            for m in &self.members {
                let Some(node) = &m.node else { continue };
                for r in node.view().values() {
                    if r.owner == dead.id {
                        eprintln!("{:?}", node.members(self.now));
                    }
                    assert_ne!(
                        r.owner, dead.id,
                        "seed {}: {} answers {} of member {} down since {} ms (now {})",
                        self.seed, m.id, r.gateway_id, dead.id, t, self.now
                    );
                }
            }
        }
    }

    /// The answers every member must give once healed: per gateway ID the newest up record
    /// among what each owner acknowledged (its own partition on its disk).
    fn expected(&self) -> BTreeMap<String, Record> {
        let mut best: BTreeMap<String, Record> = BTreeMap::new();
        for m in &self.members {
            let Some(own) = m.disk.parts.get(&m.id) else {
                continue;
            };
            for e in own.entries.values().filter(|e| e.record.up) {
                let r = &e.record;
                let better = best
                    .get(&r.gateway_id)
                    .is_none_or(|b| (r.stamp, &r.owner) > (b.stamp, &b.owner));
                if better {
                    best.insert(r.gateway_id.clone(), r.clone());
                }
            }
        }
        best
    }
}

fn run(seed: u64) {
    let mut sim = Sim::new(seed);
    let n = sim.members.len();
    let chaos_until = 25_000;
    while sim.now < chaos_until {
        sim.step();
        let r: f64 = sim.rng.gen();
        if r < 0.08 {
            let i = sim.rng.gen_range(0..n);
            sim.publish(i);
        } else if r < 0.081 {
            let alive = sim.members.iter().filter(|m| m.node.is_some()).count();
            let i = sim.rng.gen_range(0..n);
            if sim.members[i].node.is_some() && alive > n - 2 {
                sim.crash(i);
            }
        } else if r < 0.083 {
            let i = sim.rng.gen_range(0..n);
            if sim.members[i].node.is_none() {
                sim.restart(i);
            }
        } else if r < 0.0845 {
            for g in sim.group.iter_mut() {
                *g = sim.rng.gen_range(0..3);
            }
        } else if r < 0.0855 {
            sim.group.iter_mut().for_each(|g| *g = 0);
        } else if r < 0.0865 {
            sim.loss = [0.0, 0.05, 0.2, 0.5][sim.rng.gen_range(0..4)];
        }
        if sim.now.is_multiple_of(50) {
            sim.check_down_members_not_answered();
        }
        if sim.now.is_multiple_of(250) {
            for i in 0..n {
                sim.set_info(i);
            }
        }
    }
    // Counters-only changes are coalesced: about one replication per interval, whatever
    // the call rate (restarts may send the stored info once more).
    for m in &sim.members {
        let bound = chaos_until / INFO_COUNTERS_INTERVAL_MS + m.info_shape_changes + 10;
        assert!(
            m.info_sends <= bound,
            "seed {seed}: {} replicated its info {} times (bound {bound})",
            m.id,
            m.info_sends
        );
    }
    // Heal: everyone back, no loss, one network; publish nothing more.
    sim.group.iter_mut().for_each(|g| *g = 0);
    sim.loss = 0.0;
    for i in 0..n {
        if sim.members[i].node.is_none() {
            sim.restart(i);
        }
    }
    for i in 0..n {
        sim.set_info(i);
    }
    let healed_at = sim.now;
    let expected = sim.expected();
    let mut converged_at = None;
    while sim.now < healed_at + 15_000 {
        sim.step();
        if !sim.now.is_multiple_of(50) {
            continue;
        }
        let all_equal = sim.members.iter().all(|m| {
            m.node
                .as_ref()
                .is_some_and(|node| *node.view() == expected && m.shadow == expected)
        }) && sim.infos_converged();
        if all_equal && converged_at.is_none() {
            converged_at = Some(sim.now);
        }
        if !all_equal {
            converged_at = None;
        }
    }
    let Some(at) = converged_at else {
        for m in &sim.members {
            let v = m
                .node
                .as_ref()
                .map(|n| n.view().clone())
                .unwrap_or_default();
            eprintln!(
                "{}: {} records vs expected {}",
                m.id,
                v.len(),
                expected.len()
            );
            for (k, r) in &expected {
                if v.get(k) != Some(r) {
                    eprintln!("  {k}: has {:?} want {:?}", v.get(k), r);
                }
            }
        }
        panic!("seed {seed}: members did not converge after heal");
    };
    assert!(
        at - healed_at <= 6_000,
        "seed {seed}: convergence took {} ms",
        at - healed_at
    );
    // Every member holds the same newest stamp (the DNS serial's source), restarted ones
    // included.
    let stamps: BTreeSet<u64> = sim
        .members
        .iter()
        .map(|m| m.node.as_ref().expect("restarted").zone_stamp())
        .collect();
    assert_eq!(
        stamps.len(),
        1,
        "seed {seed}: newest stamps differ: {stamps:?}"
    );
    // Every member is up in everyone's eyes, and every up record the owners hold is answered.
    for m in &sim.members {
        let node = m.node.as_ref().expect("restarted");
        let ups: BTreeSet<_> = node
            .members(sim.now)
            .into_iter()
            .filter(|s| s.state == cluster::node::MemberState::Up)
            .map(|s| s.member)
            .collect();
        assert_eq!(ups.len(), n, "seed {seed}: {} sees {:?} up", m.id, ups);
    }
}

#[test]
fn converges_after_partitions_loss_crashes_and_restarts_over_200_seeds() {
    for seed in 0..200 {
        run(seed);
    }
}

/// Issue 4: after a member dies, every survivor withdraws its records with the same
/// stamp (its last heartbeat + dead_after), whatever the delays, loss, clock skew and
/// moment each survivor noticed, so the DNS serial derived from it agrees; and the stamp
/// is newer than everything answered before the death, so the serial increases.
#[test]
fn survivors_agree_on_the_withdrawal_stamp_of_a_dead_member_over_50_seeds() {
    for seed in 0..50u64 {
        let mut sim = Sim::new(1000 + seed);
        sim.loss = [0.0, 0.05, 0.2][(seed % 3) as usize];
        let n = sim.members.len();
        while sim.now < 4_000 {
            sim.step();
            if sim.rng.gen_bool(0.05) {
                let i = sim.rng.gen_range(0..n);
                sim.publish(i);
            }
        }
        // Quiet: let the publishes settle everywhere.
        sim.loss = 0.0;
        while sim.now < 8_000 {
            sim.step();
        }
        let dead = sim.rng.gen_range(0..n);
        let before: Vec<u64> = sim
            .members
            .iter()
            .map(|m| m.node.as_ref().expect("up").zone_stamp())
            .collect();
        assert!(
            before.windows(2).all(|w| w[0] == w[1]),
            "seed {seed}: converged members hold the same newest stamp: {before:?}"
        );
        sim.crash(dead);
        sim.loss = 0.1;
        while sim.now < 8_000 + 3_000 + 2_000 {
            sim.step();
        }
        sim.loss = 0.0;
        while sim.now < 16_000 {
            sim.step();
        }
        let after: Vec<u64> = sim
            .members
            .iter()
            .filter_map(|m| m.node.as_ref().map(|n| n.zone_stamp()))
            .collect();
        assert_eq!(after.len(), n - 1);
        assert!(
            after.windows(2).all(|w| w[0] == w[1]),
            "seed {seed}: survivors disagree on the newest stamp after {} died: {after:?}",
            sim.members[dead].id
        );
        assert!(
            after[0] > before[0],
            "seed {seed}: the withdrawal did not move the stamp"
        );
    }
}

#[test]
fn the_newest_connection_wins_after_a_partition_heals() {
    // A router connects to m0, then (after m1 has seen that) moves to m1 while m0 is cut off
    // and m0's clock runs 20 s ahead of m1's: the move still wins everywhere after heal.
    let mut sim = Sim::new(7);
    sim.members[0].skew_ms = 20_000;
    sim.members[1].skew_ms = -20_000;
    for _ in 0..100 {
        sim.step();
    }
    let g = "branch-17";
    let wall0 = sim.wall(0);
    let a: IpAddr = "100.64.0.1".parse().expect("literal");
    let b: IpAddr = "100.64.1.1".parse().expect("literal");
    sim.members[0]
        .node
        .as_mut()
        .expect("up")
        .publish(g, vec![a], true, wall0)
        .expect("publish");
    sim.drain(0);
    for _ in 0..100 {
        sim.step();
    }
    assert_eq!(
        sim.members[1]
            .node
            .as_ref()
            .expect("up")
            .lookup(g)
            .map(|r| r.addresses.clone()),
        Some(vec![a])
    );
    // Cut m0 off, then the router re-connects to m1.
    sim.group[0] = 1;
    let wall1 = sim.wall(1);
    sim.members[1]
        .node
        .as_mut()
        .expect("up")
        .publish(g, vec![b], true, wall1)
        .expect("publish");
    sim.drain(1);
    for _ in 0..400 {
        sim.step();
    }
    sim.group[0] = 0;
    for _ in 0..1000 {
        sim.step();
    }
    for m in &sim.members {
        let r = m.node.as_ref().expect("up").lookup(g).cloned();
        assert_eq!(r.map(|r| r.addresses), Some(vec![b]), "at {}", m.id);
    }
}
