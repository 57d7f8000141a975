//! sled is beta by its own README: prove that a member killed with SIGKILL while writing
//! reopens its store and has every change it acknowledged (issue 5).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::node::{Entry, Node, NodeConfig, Partition, Record, StoreOp};
use cluster::store::Store;
use rand::{Rng, SeedableRng};

const ME: &str = "10.1.65.1";

/// Writer run in a child process by the crash test: publishes changes as fast as it can and
/// prints `ack <gateway> <version>` only after the change is applied and flushed.
#[test]
#[ignore = "child process of store_survives_sigkill_under_write_load"]
fn crash_child_writer() {
    let dir = std::env::var("CLUSTER_CRASH_DIR").expect("run by the crash test");
    let store = Store::open(std::path::Path::new(&dir)).expect("open");
    let inc = store.next_incarnation().expect("incarnation");
    let snap = store.load().expect("load");
    let mut node = Node::new(ME.into(), inc, snap, &[], NodeConfig::default(), 0);
    store.apply(&node.take_store_ops()).expect("apply");
    store.flush().expect("flush");
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut rng = rand::thread_rng();
    let wall = 1_800_000_000_000u64;
    for i in 0u64.. {
        let g = format!("router-{}", rng.gen_range(0..300));
        let up = rng.gen_bool(0.8);
        let addr: IpAddr = format!("100.64.{}.{}", (i / 250) % 250, i % 250 + 1)
            .parse()
            .expect("literal");
        let rec = node.publish(&g, vec![addr], up, wall + i).expect("publish");
        store.apply(&node.take_store_ops()).expect("apply");
        store.flush().expect("flush");
        let v = node.partition(ME).expect("own").max_version;
        writeln!(out, "ack {g} {v} {} {}", rec.stamp, up).expect("stdout");
        out.flush().expect("stdout");
    }
}

#[test]
fn store_survives_sigkill_under_write_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    // gateway -> (version, stamp, up) of the last acknowledged change
    let mut acked: BTreeMap<String, (u64, u64, bool)> = BTreeMap::new();
    let mut max_acked = 0u64;
    let mut total = 0usize;
    let rounds = 25;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["--ignored", "--exact", "crash_child_writer", "--nocapture"])
            .env("CLUSTER_CRASH_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let run_for = Duration::from_millis(rng.gen_range(100..600));
        let started = Instant::now();
        let mut acks_this_round = 0;
        // Wait for the first ack, then let it write under load for a random while.
        while started.elapsed() < run_for + Duration::from_secs(20) {
            if acks_this_round > 0 && started.elapsed() >= run_for {
                break;
            }
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(20)) {
                record_ack(&line, &mut acked, &mut max_acked);
                acks_this_round += 1;
            }
        }
        child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
        child.wait().expect("reap");
        reader.join().expect("reader");
        // Acks already in the pipe were printed before the kill: they count too.
        while let Ok(line) = rx.try_recv() {
            record_ack(&line, &mut acked, &mut max_acked);
            acks_this_round += 1;
        }
        assert!(
            acks_this_round > 0,
            "round {round}: the writer acknowledged nothing"
        );
        total += acks_this_round;

        let store = Store::open(dir.path()).expect("store reopens after SIGKILL");
        let snap = store.load().expect("store loads after SIGKILL");
        let own = snap.partitions.get(ME).cloned().unwrap_or_default();
        assert!(
            own.max_version >= max_acked,
            "round {round}: max_version {} < acknowledged {max_acked}",
            own.max_version
        );
        for (g, (v, stamp, up)) in &acked {
            let e = own
                .entries
                .get(g)
                .unwrap_or_else(|| panic!("round {round}: acknowledged {g} v{v} lost"));
            assert!(
                e.version >= *v,
                "round {round}: {g} has v{} < acknowledged v{v}",
                e.version
            );
            if e.version == *v {
                assert_eq!((e.record.stamp, e.record.up), (*stamp, *up));
            }
        }
        drop(store);
    }
    eprintln!("{rounds} SIGKILLs, {total} acknowledged writes, none lost");
    assert!(total > rounds, "too few writes to mean anything: {total}");
}

fn record_ack(line: &str, acked: &mut BTreeMap<String, (u64, u64, bool)>, max: &mut u64) {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 5 || f[0] != "ack" {
        return;
    }
    let v: u64 = f[2].parse().expect("version");
    let stamp: u64 = f[3].parse().expect("stamp");
    let up = f[4] == "true";
    *max = (*max).max(v);
    let slot = acked.entry(f[1].to_owned()).or_insert((0, 0, false));
    if v > slot.0 {
        *slot = (v, stamp, up);
    }
}

#[test]
fn replace_and_drop_are_persisted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    assert!(store.is_fresh().expect("fresh"));
    let rec = |g: &str, v: u64| Entry {
        version: v,
        record: Record {
            gateway_id: g.into(),
            addresses: vec!["100.64.0.1".parse().expect("literal")],
            owner: "b".into(),
            stamp: v,
            up: true,
        },
    };
    store
        .apply(&[
            StoreOp::Put {
                member: "b".into(),
                entry: rec("x", 1),
            },
            StoreOp::Put {
                member: "b".into(),
                entry: rec("y", 2),
            },
            StoreOp::Meta {
                member: "b".into(),
                incarnation: 1,
                max_version: 2,
            },
        ])
        .expect("apply");
    let mut p = Partition {
        incarnation: 2,
        max_version: 1,
        ..Partition::default()
    };
    p.entries.insert("z".into(), rec("z", 1));
    store
        .apply(&[StoreOp::Replace {
            member: "b".into(),
            partition: p.clone(),
        }])
        .expect("replace");
    store.flush().expect("flush");
    assert_eq!(store.load().expect("load").partitions.get("b"), Some(&p));
    // A member's info is kept like its records, replaced with its partition, dropped with it.
    let info = cluster::node::InfoEntry {
        version: 2,
        info: cluster::MemberInfo {
            ike_addrs: vec!["192.0.2.7".parse().expect("literal")],
            capacity: 50,
            counters: [("tunnels_up".to_string(), 3)].into_iter().collect(),
        },
    };
    store
        .apply(&[StoreOp::Info {
            member: "b".into(),
            entry: info.clone(),
        }])
        .expect("info");
    let loaded = store.load().expect("load");
    assert_eq!(loaded.partitions["b"].info, Some(info));
    assert_eq!(loaded.partitions["b"].entries, p.entries);
    store
        .apply(&[StoreOp::Replace {
            member: "b".into(),
            partition: p.clone(),
        }])
        .expect("replace");
    assert_eq!(store.load().expect("load").partitions["b"].info, None);
    store
        .apply(&[StoreOp::Drop { member: "b".into() }])
        .expect("drop");
    assert!(!store.load().expect("load").partitions.contains_key("b"));
    assert_eq!(store.next_incarnation().expect("inc"), 1);
    assert_eq!(store.next_incarnation().expect("inc"), 2);
    assert!(!store.is_fresh().expect("not fresh"));
}
