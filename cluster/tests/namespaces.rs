//! Three members in their own network namespaces on a bridge; links cut with nftables drop
//! rules and restored. Needs root, `ip` and `nft` (Debian iproute2, nftables): without them
//! this test fails, it does not skip.
//!
//! 1. Cut a<->c only: c's changes still reach a through b (scuttlebutt relays partitions),
//!    and a keeps answering c's records (c's heartbeat arrives through b).
//! 2. Isolate c: both sides keep serving and accepting changes; each withdraws the other's
//!    records; a router moves from a to c during the partition.
//! 3. Heal: everything converges with no operator action; the move wins everywhere.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

#[test]
#[ignore = "child process of the namespace test"]
fn ns_member_process() {
    let args: Vec<String> = std::env::var("CLUSTER_MEMBER_ARGS")
        .expect("run by the namespace test")
        .lines()
        .map(str::to_owned)
        .collect();
    tracing_subscriber::fmt()
        .with_env_filter("cluster=info")
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if let Err(e) = cluster::tool::run_member_blocking(&args) {
        println!("error: {e}");
        std::process::exit(1);
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{} is required for this test: {e}", args[0]));
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Net {
    names: Vec<String>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn build_net(tag: &str) -> (Net, Vec<String>, Vec<String>) {
    let hub = format!("{tag}hub");
    let members: Vec<String> = (1..=3).map(|i| format!("{tag}m{i}")).collect();
    let mut net = Net {
        names: vec![hub.clone()],
    };
    sh(&["ip", "netns", "add", &hub]);
    sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
    let mut addrs = Vec::new();
    for (i, m) in members.iter().enumerate() {
        sh(&["ip", "netns", "add", m]);
        net.names.push(m.clone());
        let a = format!("v{i}a");
        let b = format!("v{i}b");
        sh(&[
            "ip", "-n", m, "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &hub,
        ]);
        sh(&["ip", "-n", &hub, "link", "set", &b, "master", "br0", "up"]);
        let addr = format!("10.231.0.{}", i + 1);
        sh(&[
            "ip",
            "-n",
            m,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &a,
        ]);
        sh(&["ip", "-n", m, "link", "set", &a, "up"]);
        sh(&["ip", "-n", m, "link", "set", "lo", "up"]);
        addrs.push(addr);
    }
    (net, members, addrs)
}

/// Drop everything between this namespace and `others`.
fn cut(ns: &str, others: &[&str]) {
    sh(&[
        "ip", "netns", "exec", ns, "nft", "add", "table", "inet", "cut",
    ]);
    for (chain, hook, dir) in [("in", "input", "saddr"), ("out", "output", "daddr")] {
        let spec = format!("{{ type filter hook {hook} priority 0; }}");
        sh(&[
            "ip", "netns", "exec", ns, "nft", "add", "chain", "inet", "cut", chain, &spec,
        ]);
        for o in others {
            sh(&[
                "ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "cut", chain, "ip", dir,
                o, "drop",
            ]);
        }
    }
}

fn heal(ns: &str) {
    sh(&[
        "ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "cut",
    ]);
}

struct Member {
    id: String,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Member {
    fn spawn(ns: &str, id: &str, peers: &[String], dir: &std::path::Path) -> Self {
        let mut args = vec![
            "--self".to_owned(),
            id.to_owned(),
            "--secret".into(),
            "mysecretpassword".into(),
            "--domain".into(),
            "vpn.example".into(),
            "--data-dir".into(),
            dir.join(id).display().to_string(),
            "--dead-after-ms".into(),
            "1500".into(),
            "--gossip-interval-ms".into(),
            "150".into(),
        ];
        for p in peers.iter().filter(|p| *p != id) {
            args.push("--peer".into());
            args.push(p.clone());
        }
        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(exe)
            .args(["--ignored", "--exact", "ns_member_process", "--nocapture"])
            .env("CLUSTER_MEMBER_ARGS", args.join("\n"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ip netns exec");
        let stdout = child.stdout.take().expect("piped");
        let stdin = child.stdin.take().expect("piped");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Self {
            id: id.to_owned(),
            child,
            stdin,
            lines: rx,
        }
    }

    fn expect(&self, f: impl Fn(&str) -> bool, what: &str) -> String {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let l = l.strip_prefix("test ns_member_process ... ").unwrap_or(&l);
                    if f(l) {
                        return l.to_owned();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("{}: no {what}", self.id);
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("stdin");
        self.stdin.flush().expect("stdin");
    }

    fn up(&mut self, g: &str, ip: &str) {
        self.send(&format!("up {g} {ip}"));
        self.expect(|l| l.starts_with(&format!("ok {g} ")), "ack");
    }

    fn view(&mut self) -> BTreeMap<String, String> {
        self.send("view");
        let mut v = BTreeMap::new();
        loop {
            let l = self.expect(|l| l.starts_with("rec ") || l == "end", "view");
            if l == "end" {
                return v;
            }
            let f: Vec<&str> = l.split_whitespace().collect();
            v.insert(f[1].to_owned(), f[3].to_owned());
        }
    }

    fn wait_view(&mut self, want: &BTreeMap<String, String>, what: &str) {
        let t = Instant::now();
        loop {
            let v = self.view();
            if v == *want {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "{}: {what}: have {v:?} want {want:?}",
                self.id
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn three_members_in_namespaces_survive_cut_links_and_converge_after_heal() {
    let tag = format!("cl{}", std::process::id() % 100_000);
    let (_net, ns, ids) = build_net(&tag);
    let dir = tempfile::tempdir().expect("tmp");
    let mut ms: Vec<Member> = Vec::new();
    for i in 0..3 {
        let m = Member::spawn(&ns[i], &ids[i], &ids, dir.path());
        let l = m.expect(
            |l| l.contains("ipsec-ddns cluster") || l.starts_with("error"),
            "start",
        );
        assert!(l.contains("ipsec-ddns cluster"), "{l}");
        ms.push(m);
    }
    let (a, b, c) = (ids[0].as_str(), ids[1].as_str(), ids[2].as_str());
    ms[0].up("r-a", "100.64.0.1");
    ms[2].up("r-c", "100.64.2.1");
    let all = map(&[("r-a", a), ("r-c", c)]);
    for m in ms.iter_mut() {
        m.wait_view(&all, "initial replication");
    }

    // 1. Cut a<->c only.
    cut(&ns[0], &[c]);
    cut(&ns[2], &[a]);
    ms[2].up("r-c2", "100.64.2.2");
    let want = map(&[("r-a", a), ("r-c", c), ("r-c2", c)]);
    ms[0].wait_view(&want, "relay through b while a<->c is cut");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        ms[0].view(),
        want,
        "a must keep answering c (alive through b)"
    );
    heal(&ns[0]);
    heal(&ns[2]);

    // 2. Isolate c.
    cut(&ns[2], &[a, b]);
    cut(&ns[0], &[c]);
    cut(&ns[1], &[c]);
    ms[0].wait_view(&map(&[("r-a", a)]), "a withdraws c's records");
    ms[2].wait_view(&map(&[("r-c", c), ("r-c2", c)]), "c withdraws a's records");
    // Both sides keep accepting tunnels; router r-a moves to c during the partition.
    ms[1].up("r-b", "100.64.1.1");
    ms[2].up("r-a", "100.64.2.9");
    ms[1].wait_view(&map(&[("r-a", a), ("r-b", b)]), "majority side serving");
    ms[2].wait_view(
        &map(&[("r-a", c), ("r-c", c), ("r-c2", c)]),
        "minority side serving",
    );

    // 3. Heal: converge with no operator action.
    for n in &ns {
        heal(n);
    }
    let fin = map(&[("r-a", c), ("r-b", b), ("r-c", c), ("r-c2", c)]);
    for m in ms.iter_mut() {
        m.wait_view(&fin, "convergence after heal");
    }
    for m in ms.iter_mut() {
        m.send("quit");
    }
}
