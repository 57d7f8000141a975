//! `headend peer` to `headend run`, both with the userspace ESP data plane, in two network
//! namespaces this test creates: the router gets a virtual IP on its TUN device and pings
//! an inside address behind the head-end through the tunnel; after the head-end is stopped
//! the inside address is no longer reachable. Needs root and iproute2 (fails otherwise).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_headend");

fn sh(args: &[&str]) -> std::process::Output {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    o
}

fn must(args: &[&str]) {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Two namespaces joined by a veth pair; removed on drop.
struct Net {
    he: String,
    pr: String,
}

impl Net {
    fn new() -> Net {
        let id = std::process::id() % 100_000;
        let net = Net {
            he: format!("dt{id}h"),
            pr: format!("dt{id}p"),
        };
        for n in [&net.he, &net.pr] {
            let _ = sh(&["ip", "netns", "del", n]);
            must(&["ip", "netns", "add", n]);
            must(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        let (a, b) = (format!("dt{id}a"), format!("dt{id}b"));
        must(&[
            "ip", "link", "add", &a, "netns", &net.he, "type", "veth", "peer", "name", &b, "netns",
            &net.pr,
        ]);
        must(&[
            "ip",
            "-n",
            &net.he,
            "addr",
            "add",
            "10.240.0.1/24",
            "dev",
            &a,
        ]);
        must(&[
            "ip",
            "-n",
            &net.pr,
            "addr",
            "add",
            "10.240.0.2/24",
            "dev",
            &b,
        ]);
        must(&["ip", "-n", &net.he, "link", "set", &a, "up"]);
        must(&["ip", "-n", &net.pr, "link", "set", &b, "up"]);
        // The inside network behind the head-end.
        must(&[
            "ip",
            "-n",
            &net.he,
            "addr",
            "add",
            "10.241.0.1/16",
            "dev",
            "lo",
        ]);
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.he]);
        let _ = sh(&["ip", "netns", "del", &self.pr]);
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_in(ns: &str, args: &[&str], log: &std::path::Path) -> Proc {
    let err = std::fs::File::create(log).unwrap();
    Proc(
        Command::new("ip")
            .args(["netns", "exec", ns, BIN])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap(),
    )
}

fn ping(ns: &str, dst: &str) -> bool {
    sh(&["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", dst])
        .status
        .success()
}

#[test]
fn peer_pings_inside_network_through_headend_userspace_esp() {
    assert!(
        sh(&["id", "-u"]).stdout.starts_with(b"0"),
        "this test needs root (network namespaces, TUN devices); run it through tests/run.sh"
    );
    let dir = std::env::temp_dir().join(format!("headend-tunnel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let net = Net::new();
    let he_conf = dir.join("he.toml");
    std::fs::write(
        &he_conf,
        "[ike]\nlisten = [\"10.240.0.1\"]\nlocal_ts = [\"10.241.0.0/16\"]\n[psk]\ndefault = \"tunnel-psk\"\n[pool]\nv4 = \"10.242.0.0/24\"\n[dataplane]\ntun_name = \"he0\"\n",
    )
    .unwrap();
    let pr_conf = dir.join("pr.toml");
    std::fs::write(
        &pr_conf,
        "[ike]\ndpd_delay = \"1s\"\nretransmit_timeout = \"250ms\"\nretransmit_tries = 2\n[psk]\ndefault = \"tunnel-psk\"\n[peer]\nlocal_id = \"router-tunnel\"\nheadends = [\"10.240.0.1:500\"]\nremote_ts = [\"10.241.0.0/16\"]\nbind = \"10.240.0.2:0\"\nbackoff = \"5s\"\n[dataplane]\ntun_name = \"pr0\"\n",
    )
    .unwrap();
    let he_log = dir.join("he.log");
    let he_sock = dir.join("he.sock");
    let he = spawn_in(
        &net.he,
        &[
            "run",
            "--config",
            he_conf.to_str().unwrap(),
            "--control",
            he_sock.to_str().unwrap(),
        ],
        &he_log,
    );
    let end = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&he_log)
        .unwrap_or_default()
        .contains("headend responder listening")
    {
        assert!(
            Instant::now() < end,
            "head-end did not start:\n{}",
            std::fs::read_to_string(&he_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !ping(&net.pr, "10.241.0.1"),
        "inside network reachable without a tunnel"
    );

    let pr_log = dir.join("pr.log");
    let mut pr = spawn_in(
        &net.pr,
        &["peer", "--config", pr_conf.to_str().unwrap()],
        &pr_log,
    );
    let (tx, rx) = mpsc::channel();
    let out = pr.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let up = rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| {
            panic!(
                "peer not up:\n{}",
                std::fs::read_to_string(&pr_log).unwrap_or_default()
            )
        });
    assert!(
        up.starts_with("up router-tunnel via 10.240.0.1:500 vip 10.242.0."),
        "{up}"
    );
    let vip = up
        .split(" vip ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let addrs =
        String::from_utf8_lossy(&sh(&["ip", "-n", &net.pr, "addr", "show", "dev", "pr0"]).stdout)
            .to_string();
    assert!(
        addrs.contains(&format!("inet {vip}/32")),
        "VIP on the TUN device: {addrs}"
    );

    // Traffic flows through the tunnel (routes are installed asynchronously: retry briefly).
    let end = Instant::now() + Duration::from_secs(5);
    while !ping(&net.pr, "10.241.0.1") {
        assert!(
            Instant::now() < end,
            "no ping through the tunnel\nhead-end:\n{}\npeer:\n{}",
            std::fs::read_to_string(&he_log).unwrap_or_default(),
            std::fs::read_to_string(&pr_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..3 {
        assert!(
            ping(&net.pr, "10.241.0.1"),
            "ping lost through an established tunnel"
        );
    }

    // `show vpn ipsec sa` counts the tunnel's traffic: at least the 4 echo requests in
    // and the 4 replies out (84 octets each, inner), and more after one more ping.
    let usage = || -> ((u64, u64), (u64, u64)) {
        let o = sh(&[
            BIN,
            "show",
            "--socket",
            he_sock.to_str().unwrap(),
            "vpn",
            "ipsec",
            "sa",
        ]);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let row: Vec<&str> = out
            .lines()
            .find(|l| l.contains("router-tunnel"))
            .unwrap_or_else(|| panic!("{out}"))
            .split_whitespace()
            .collect();
        let pair = |c: &str| {
            let (a, b) = c.split_once('/').unwrap_or_else(|| panic!("{out}"));
            (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap())
        };
        assert_eq!(row[3], vip, "virtual IP column: {out}");
        (pair(row[6]), pair(row[7]))
    };
    let (bytes, packets) = usage();
    assert!(
        packets.0 >= 4 && packets.1 >= 4 && packets.0 < 1000 && packets.1 < 1000,
        "packets in/out {packets:?}"
    );
    assert!(
        bytes.0 >= 4 * 84 && bytes.1 >= 4 * 84 && bytes.0 < 1_000_000,
        "bytes in/out {bytes:?}"
    );
    assert!(ping(&net.pr, "10.241.0.1"));
    let (bytes2, packets2) = usage();
    assert!(
        packets2.0 > packets.0 && packets2.1 > packets.1,
        "{packets:?} -> {packets2:?}"
    );
    assert!(
        bytes2.0 >= bytes.0 + 84 && bytes2.1 >= bytes.1 + 84,
        "{bytes:?} -> {bytes2:?}"
    );

    // Stop the head-end: its Delete ends the tunnel, the route and the VIP go away.
    let mut he = he;
    must(&["kill", "-TERM", &he.0.id().to_string()]);
    let end = Instant::now() + Duration::from_secs(3);
    while he.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "head-end did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mv = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(mv.starts_with("move router-tunnel"), "{mv}");
    assert!(
        !ping(&net.pr, "10.241.0.1"),
        "inside network still reachable after the tunnel is gone"
    );
    drop(pr);
}
