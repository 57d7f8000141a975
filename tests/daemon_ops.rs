//! What an operator and the supervisor rely on (issue 6): the daemon under a systemd
//! notify socket (READY=1 once it listens, WATCHDOG=1 pings, STOPPING=1 on SIGTERM) and
//! the sample unit verified by `systemd-analyze`; `headend plan` printing the seed's
//! chapter 3 figures; the columns of `show vpn ipsec sa` and `show cluster` with two
//! members; IKE failures by reason over HTTP.
#![allow(clippy::unwrap_used)]
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_headend");

fn port(tcp: bool) -> u16 {
    if tcp {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("headend-ops-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[path = "support/logproc.rs"]
mod logproc;
use logproc::{http_get, Proc};

fn cli(sock: &Path, words: &str) -> String {
    let mut w: Vec<&str> = words.split_whitespace().collect();
    let verb = w.remove(0);
    let o = Command::new(BIN)
        .arg(verb)
        .arg("--socket")
        .arg(sock)
        .args(&w)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "`{words}`: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into()
}

/// A responder configuration on 127.0.0.`m` with its own ports; `extra` is appended.
/// Returns (file, IKE port, NAT-T port, DNS port).
fn config(dir: &Path, m: u8, extra: &str) -> (PathBuf, u16, u16, u16) {
    let (ike, natt, dns) = (port(false), port(false), port(false));
    let conf = dir.join(format!("m{m}.toml"));
    std::fs::write(
        &conf,
        format!(
            "[ike]\nlisten = [\"127.0.0.{m}\"]\nport = {ike}\nnatt_port = {natt}\n\
             [psk]\ndefault = \"ops-test-psk\"\n[pool]\nv4 = \"10.96.{m}.0/24\"\n\
             [dns]\nlisten = [\"127.0.0.{m}\"]\nport = {dns}\ndomain = \"ops.test\"\n[[dns.ns]]\nname = \"ns{m}\"\naddrs = [\"127.0.0.{m}\"]\n{extra}"
        ),
    )
    .unwrap();
    (conf, ike, natt, dns)
}

/// A `headend peer` router with identity `id` and key `psk` towards 127.0.0.1.
fn router(dir: &Path, id: &str, psk: &str, ike: u16, natt: u16) -> Proc {
    let pc = dir.join(format!("{}.toml", id.replace(['/', '.'], "_")));
    std::fs::write(
        &pc,
        format!(
            "[psk]\ndefault = \"{psk}\"\n[peer]\nlocal_id = \"{id}\"\nheadends = [{{ addr = \"127.0.0.1:{ike}\", natt_port = {natt} }}]\nbind = \"127.0.0.1:0\"\nbackoff = \"200ms\"\n"
        ),
    )
    .unwrap();
    Proc::spawn(
        &["peer", "--config", pc.to_str().unwrap()],
        &[],
        pc.with_extension("log"),
    )
}

/// The daemon under a notify socket as systemd runs it (`Type=notify`, `WatchdogSec=`):
/// READY=1 when IKE, DNS, the control socket and /metrics are all bound, WATCHDOG=1 every
/// half of WATCHDOG_USEC from the engine loop, STOPPING=1 on SIGTERM, then exit 0.
#[test]
fn daemon_notifies_ready_pings_the_watchdog_and_says_stopping() {
    let dir = tmp("notify");
    let notify = dir.join("notify.sock");
    let server = UnixDatagram::bind(&notify).unwrap();
    server
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (conf, ike, _, dns) = config(&dir, 1, "");
    let ctl = dir.join("control.sock");
    let metrics = format!("127.0.0.1:{}", port(true));
    let mut he = Proc::run(
        &conf,
        &ctl,
        &metrics,
        &[
            ("NOTIFY_SOCKET", notify.to_str().unwrap()),
            ("WATCHDOG_USEC", "500000"),
        ],
        dir.join("run.log"),
    );
    // Every message, in order.
    let recv_until = |end: Instant, stop: &dyn Fn(&[String]) -> bool| {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while Instant::now() < end && !stop(&got) {
            if let Ok(n) = server.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        got
    };
    // The engine loop may ping the watchdog before readiness (systemd ignores that);
    // READY=1 comes once, and nothing else before it.
    let first = recv_until(Instant::now() + Duration::from_secs(20), &|g| {
        g.iter().any(|m| *m == "READY=1")
    });
    assert_eq!(
        first.last().map(|m| m.as_str()),
        Some("READY=1"),
        "READY=1:\n{first:?}\n{}",
        he.text()
    );
    assert!(
        first[..first.len() - 1].iter().all(|m| *m == "WATCHDOG=1"),
        "{first:?}"
    );
    // Ready means listening: the sockets are taken, the control socket and /metrics answer.
    for (what, p) in [("IKE", ike), ("DNS", dns)] {
        assert!(
            std::net::UdpSocket::bind(("127.0.0.1", p)).is_err(),
            "{what} port {p} not bound at READY=1"
        );
    }
    assert!(cli(&ctl, "show vpn ipsec sa").contains("0 tunnel(s)"));
    assert!(http_get(&metrics, "/metrics").starts_with("HTTP/1.1 200 OK"));

    // WATCHDOG_USEC=0.5 s: a ping about every 250 ms; at least two within 3 s.
    let start = Instant::now();
    let pings = recv_until(start + Duration::from_secs(3), &|g| {
        g.iter().filter(|m| *m == "WATCHDOG=1").count() >= 4
    });
    let n = pings.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(n >= 4, "{n} watchdog pings in 3 s: {pings:?}");
    assert!(
        pings.iter().all(|m| *m == "WATCHDOG=1"),
        "only pings while running: {pings:?}"
    );
    // The pings keep coming (not a burst at start): the last one is recent.
    let more = recv_until(Instant::now() + Duration::from_secs(2), &|g| {
        g.iter().any(|m| *m == "WATCHDOG=1")
    });
    assert!(
        more.iter().any(|m| *m == "WATCHDOG=1"),
        "pings stopped: {more:?}"
    );

    // SIGTERM: STOPPING=1, then a clean exit.
    let code = he.sigterm_and_wait();
    assert_eq!(code, Some(0), "{}", he.text());
    let rest = recv_until(Instant::now() + Duration::from_secs(1), &|g| {
        g.iter().any(|m| *m == "STOPPING=1")
    });
    assert!(
        rest.iter().any(|m| *m == "STOPPING=1"),
        "no STOPPING=1: {rest:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sample unit passes `systemd-analyze verify` (with ExecStart pointing at this
/// build) and is the notify + watchdog unit the daemon is written for.
#[test]
fn sample_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/headend.service"),
    )
    .unwrap();
    assert!(unit.contains("\nType=notify\n"), "{unit}");
    assert!(unit.contains("\nWatchdogSec="), "{unit}");
    assert!(unit.contains("/usr/local/bin/headend run "), "{unit}");
    let dir = tmp("unit");
    let copy = dir.join("headend.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/headend", BIN)).unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (package systemd) is needed by this test");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // Warnings (an unknown key, a bad value) do not change the exit status.
    assert!(
        !err.contains("headend.service"),
        "warnings about the unit: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `headend plan` prints ACM_peers = INT(ACM_thru_max / peer_thru_avg),
/// ACM_min = ceil(num_peers / ACM_peers), ACM_total = ACM_min + ACM_protect (seed 003
/// ch. 3), computed here from the formula for several input sets.
#[test]
fn plan_prints_the_seed_formula_figures() {
    let figure = |out: &str, prefix: &str| -> u64 {
        let l = out
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {out}"));
        l.rsplit(": ").next().unwrap().trim().parse().unwrap()
    };
    let plan = |args: &[String]| {
        let o = Command::new(BIN).arg("plan").args(args).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let check = |out: &str, peers: u64, peer: f64, member: f64, protect: u64| {
        let per = (member / peer).floor() as u64;
        let min = peers.div_ceil(per).max(1);
        let total = min + protect;
        assert_eq!(figure(out, "peers per member"), per, "{out}");
        assert_eq!(figure(out, "minimum members"), min, "{out}");
        assert_eq!(figure(out, "members in total"), total, "{out}");
        // Tolerating K failures: the load over the survivors.
        let after = peers.div_ceil(total - protect);
        assert!(
            out.contains(&format!(
                "after {protect} failure(s): about {after} per member"
            )),
            "{out}"
        );
        assert!(after <= per, "survivors carry the load: {out}");
    };
    for (peers, peer, member, protect) in [
        (800u64, 2.0f64, 898.0f64, 1u64),
        (1000, 5.0, 538.0, 0),
        (5000, 1.5, 2400.0, 3),
        (900, 1.0, 450.0, 2),
    ] {
        let (code, out, err) = plan(&[
            format!("--peers={peers}"),
            format!("--peer-mbps={peer}"),
            format!("--member-mbps={member}"),
            format!("--protect={protect}"),
        ]);
        assert_eq!(code, Some(0), "{err}");
        check(&out, peers, peer, member, protect);
    }
    // More than ten members: refused, naming the count.
    let (code, out, err) = plan(&[
        "--peers=1000".into(),
        "--peer-mbps=5".into(),
        "--member-mbps=538".into(),
        "--protect=1".into(),
    ]);
    assert_ne!(code, Some(0), "{out}");
    assert!(err.contains("11 members"), "{err}");
    // Measured: the figures follow the printed measured throughput.
    let (code, out, err) = plan(&[
        "--peers=10".into(),
        "--peer-mbps=1".into(),
        "--measured".into(),
        "--protect=2".into(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let m: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("measured member throughput"))
        .and_then(|l| l.rsplit(": ").next())
        .and_then(|l| l.strip_suffix(" Mbit/s"))
        .unwrap_or_else(|| panic!("{out}"))
        .parse()
        .unwrap();
    assert!(m >= 10.0, "{out}");
    check(&out, 10, 1.0, m, 2);
}

/// The columns operators read: `show vpn ipsec sa` (peer, identity, gateway ID, virtual
/// IP, member, a growing uptime, bytes and packets) and `show cluster` with two members
/// (state, last seen, records = the member's tunnels), and IKE failures by reason on
/// /metrics growing while a peer with the wrong PSK keeps trying.
#[test]
fn sa_and_cluster_columns_and_failures_by_reason() {
    let dir = tmp("cols");
    let (repl, memb) = (port(true), port(true));
    let metrics = format!("127.0.0.1:{}", port(true));
    let svc = |m: u8, peer: &str| {
        format!(
            "[service.ipsec-ddns]\nself = \"127.0.0.{m}\"\n{peer}secret = \"ops-cluster-secret\"\n\
             domain = \"ops.test\"\nenable = true\ndata_dir = \"{}\"\n\
             replication_port = {repl}\nmembership_port = {memb}\n",
            dir.join(format!("data{m}")).display()
        )
    };
    let start = |m: u8, extra: &str, args: &[&str]| {
        let (conf, ike, natt, _) = config(&dir, m, extra);
        let sock = dir.join(format!("m{m}.sock"));
        let mut a = vec![
            "run",
            "--config",
            conf.to_str().unwrap(),
            "--control",
            sock.to_str().unwrap(),
        ];
        a.extend_from_slice(args);
        let a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let p = Proc::spawn(&a, &[], dir.join(format!("m{m}.log")));
        let end = Instant::now() + Duration::from_secs(15);
        while !sock.exists() {
            assert!(Instant::now() < end, "no control socket:\n{}", p.text());
            std::thread::sleep(Duration::from_millis(50));
        }
        (p, sock, ike, natt)
    };
    let (m1, s1, ike, natt) = start(1, &svc(1, ""), &["--metrics", &metrics]);
    m1.wait_for("Creating new ipsec-ddns cluster");
    let (mut m2, s2, _, _) = start(2, &svc(2, "peer = [\"127.0.0.1\"]\n"), &[]);
    m2.wait_for("Joined existing ipsec-ddns cluster");

    // Two routers on member 1; the identity and its gateway ID differ.
    let ids = ["MG90/Site.7", "SN-8"];
    let _r: Vec<Proc> = ids
        .iter()
        .map(|id| {
            let r = router(&dir, id, "ops-test-psk", ike, natt);
            r.wait_for(&format!("up {id}"));
            r
        })
        .collect();
    let rows = |out: &str| -> Vec<Vec<String>> {
        out.lines()
            .skip(1)
            .filter(|l| !l.ends_with("tunnel(s)"))
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    };
    let secs = |up: &str| -> u64 {
        // 1h02m03s
        let (h, rest) = up.split_once('h').unwrap();
        let (m, rest) = rest.split_once('m').unwrap();
        let s = rest.strip_suffix('s').unwrap();
        h.parse::<u64>().unwrap() * 3600
            + m.parse::<u64>().unwrap() * 60
            + s.parse::<u64>().unwrap()
    };
    let sa1 = cli(&s1, "show vpn ipsec sa");
    let t0 = Instant::now();
    assert!(sa1.contains("2 tunnel(s)"), "{sa1}");
    let first = rows(&sa1);
    assert_eq!(first.len(), 2, "{sa1}");
    for id in ids {
        let gw = String::from_utf8(
            Command::new(BIN)
                .args(["gateway-id", "--", id])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim()
        .to_string();
        let r = first
            .iter()
            .find(|r| r[1] == id)
            .unwrap_or_else(|| panic!("identity column {id}: {sa1}"));
        assert_eq!(r.len(), 8, "{sa1}");
        assert!(r[0].starts_with("127.0.0.1:"), "peer address: {sa1}");
        assert_eq!(r[2], gw, "gateway ID column: {sa1}");
        let vip: std::net::Ipv4Addr = r[3].parse().unwrap();
        assert_eq!(
            vip.octets()[..3],
            [10, 96, 1],
            "virtual IP from member 1's pool: {sa1}"
        );
        assert_eq!(r[4], "127.0.0.1", "member column: {sa1}");
        assert!(secs(&r[5]) < 30, "uptime of a fresh tunnel: {sa1}");
        // No data plane here: the counters are in/out pairs, and nothing moved.
        assert_eq!(r[6], "0/0", "bytes in/out: {sa1}");
        assert_eq!(r[7], "0/0", "packets in/out: {sa1}");
    }
    let vips: std::collections::HashSet<&String> = first.iter().map(|r| &r[3]).collect();
    assert_eq!(vips.len(), 2, "two virtual IPs: {sa1}");

    // A router with the wrong PSK: failures counted by reason, growing while it retries.
    let failures = || -> Vec<(String, u64)> {
        let m = http_get(&metrics, "/metrics");
        m.lines()
            .filter_map(|l| l.strip_prefix("headend_ike_sa_failures_by_reason_total{reason=\""))
            .map(|l| {
                let (r, n) = l.split_once("\"} ").unwrap();
                (r.to_string(), n.parse().unwrap())
            })
            .collect()
    };
    assert!(failures().is_empty(), "no failures yet: {:?}", failures());
    let _rogue = router(&dir, "ROGUE-9", "not-the-psk", ike, natt);
    let wait_failures = |more_than: u64| -> Vec<(String, u64)> {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let f = failures();
            if f.iter().map(|x| x.1).sum::<u64>() > more_than {
                return f;
            }
            assert!(Instant::now() < end, "failures stay at {f:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let f1 = wait_failures(0);
    assert_eq!(f1.len(), 1, "one reason: {f1:?}");
    let (reason, n1) = f1[0].clone();
    // A wrong PSK fails our check of the peer's AUTH payload (RFC 7296 2.15).
    assert_eq!(reason, "auth_failed", "an authentication failure");
    let f2 = wait_failures(n1);
    assert_eq!(f2.len(), 1, "{f2:?}");
    assert_eq!(f2[0].0, reason);
    assert!(f2[0].1 > n1, "{f2:?}");
    let m = http_get(&metrics, "/metrics");
    let total: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("headend_ike_sa_failures_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(total >= f2[0].1, "the total counts them too: {m}");
    assert!(
        m.contains("\nheadend_tunnels_up 2\n"),
        "the rogue got none: {m}"
    );

    // Uptime grows between two calls (whole seconds).
    std::thread::sleep(Duration::from_millis(2200).saturating_sub(t0.elapsed()));
    let sa2 = cli(&s1, "show vpn ipsec sa");
    let elapsed = t0.elapsed().as_secs();
    for r in rows(&sa2) {
        let before = first.iter().find(|f| f[1] == r[1]).unwrap();
        let (a, b) = (secs(&before[5]), secs(&r[5]));
        assert!(
            b >= a + 2 && b <= a + elapsed + 1,
            "uptime {a} -> {b} after {elapsed} s: {sa1}{sa2}"
        );
    }

    // show cluster on either member: both up; member 1 holds the two records and
    // tunnels; the other member was heard from well within dead_after_ms (3 s).
    for (sock, me, other) in [
        (&s1, "127.0.0.1", "127.0.0.2"),
        (&s2, "127.0.0.2", "127.0.0.1"),
    ] {
        let end = Instant::now() + Duration::from_secs(10);
        let cl = loop {
            let cl = cli(sock, "show cluster");
            let rs = rows(&cl);
            // Records and Tunnels, the last two columns.
            let ok = |m: &str, n: &str| {
                rs.iter().any(|r| {
                    r[0] == m && r[1] == "up" && r[r.len() - 2] == n && r[r.len() - 1] == n
                })
            };
            if rs.len() == 2 && ok("127.0.0.1", "2") && ok("127.0.0.2", "0") {
                break cl;
            }
            assert!(Instant::now() < end, "on {me}:\n{cl}");
            std::thread::sleep(Duration::from_millis(200));
        };
        let rs = rows(&cl);
        let mine = rs.iter().find(|r| r[0] == me).unwrap();
        assert_eq!(mine[2], "self", "{cl}");
        let theirs = rs.iter().find(|r| r[0] == other).unwrap();
        // "0.4s ago": three columns before Records.
        assert_eq!(theirs.len(), 6, "{cl}");
        assert_eq!(theirs[3], "ago", "{cl}");
        let ago: f64 = theirs[2].strip_suffix('s').unwrap().parse().unwrap();
        assert!((0.0..3.0).contains(&ago), "last seen of an up member: {cl}");
    }

    // Member 2 stops: member 1 shows it down, its last seen past dead_after_ms (3 s) and
    // growing, no tunnels; member 1's own row is unchanged.
    assert_eq!(m2.sigterm_and_wait(), Some(0), "{}", m2.text());
    let end = Instant::now() + Duration::from_secs(15);
    let ago = |cl: &str| -> Option<f64> {
        let rs = rows(cl);
        let r = rs.iter().find(|r| r[0] == "127.0.0.2")?;
        if r[1] != "down" {
            return None;
        }
        assert_eq!(r[3], "ago", "{cl}");
        assert_eq!(
            r.last().map(String::as_str),
            Some("-"),
            "no tunnels when down: {cl}"
        );
        r[2].strip_suffix('s')?.parse().ok()
    };
    let (cl, a) = loop {
        let cl = cli(&s1, "show cluster");
        if let Some(a) = ago(&cl) {
            break (cl, a);
        }
        assert!(Instant::now() < end, "member 2 not down on member 1:\n{cl}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(a >= 3.0, "declared down after dead_after_ms: {cl}");
    let one = rows(&cl).into_iter().find(|r| r[0] == "127.0.0.1").unwrap();
    assert_eq!(one[1..], ["up", "self", "2", "2"], "{cl}");
    std::thread::sleep(Duration::from_millis(1200));
    let cl2 = cli(&s1, "show cluster");
    let b = ago(&cl2).unwrap_or_else(|| panic!("{cl2}"));
    assert!(b >= a + 1.0, "last seen grows: {cl}{cl2}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every key the README documents for `[peer]` is accepted by `check-config` (with
/// values other than the defaults), and the README lists every key of this file.
#[test]
fn readme_peer_keys_are_the_accepted_ones() {
    let peer = r#"[peer]
local_id = "SN-1"
remote_id = "headend.example"
psk = "peer-psk"
headends = ["192.0.2.1:500", { addr = "192.0.2.2:1500", natt_port = 14500 }]
policy = "random"
backoff = "250ms"
connect_timeout = "3s"
bind = "[::1]:0"
request_vip4 = false
request_vip6 = true
local_ts = ["10.1.0.0/16"]
remote_ts = ["10.0.0.0/8", "192.168.0.0/16"]
children = [{ remote_ts = ["10.0.0.0/8[tcp/443]"] }, { local_ts = ["10.1.0.0/16[icmp]"], remote_ts = ["10.0.0.0/8[icmp/8]"] }]
"#;
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("### `[peer]`")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("README has a [peer] section");
    let mut documented = Vec::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cell = row.split(" | ").next().unwrap();
        for k in cell.split('`').skip(1).step_by(2) {
            documented.push(k.to_string());
        }
    }
    let used: Vec<String> = peer
        .lines()
        .skip(1)
        .map(|l| l.split(" = ").next().unwrap().to_string())
        .collect();
    let mut a = documented.clone();
    let mut b = used.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "README [peer] keys vs the keys the config accepts");

    let dir = tmp("peerkeys");
    let f = dir.join("peer.toml");
    std::fs::write(&f, peer).unwrap();
    let o = Command::new(BIN)
        .arg("check-config")
        .arg(&f)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("peer SN-1 -> 2 head-ends (random)"), "{out}");
    std::fs::write(&f, format!("{peer}colour = \"red\"\n")).unwrap();
    let o = Command::new(BIN)
        .arg("check-config")
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(":15: unknown key 'peer.colour'"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The watchdog is another process's (WATCHDOG_PID names it, as systemd does for a
/// `NotifyAccess=all` child): READY=1, but no WATCHDOG=1 from this one.
#[test]
fn no_watchdog_pings_for_another_pid() {
    let dir = tmp("wdpid");
    let notify = dir.join("notify.sock");
    let server = UnixDatagram::bind(&notify).unwrap();
    server
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let (conf, _, _, _) = config(&dir, 1, "");
    let mut he = Proc::spawn(
        &["run", "--config", conf.to_str().unwrap(), "--no-control"],
        &[
            ("NOTIFY_SOCKET", notify.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
        dir.join("run.log"),
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let end = Instant::now() + Duration::from_secs(20);
    let mut ready_at = None;
    while Instant::now() < end {
        if let Ok(n) = server.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        match ready_at {
            None if got.iter().any(|m| m == "READY=1") => ready_at = Some(Instant::now()),
            // Ten ping intervals after READY=1.
            Some(t) if t.elapsed() > Duration::from_millis(1000) => break,
            _ => {}
        }
    }
    assert!(ready_at.is_some(), "no READY=1: {got:?}\n{}", he.text());
    assert_eq!(got, ["READY=1"], "{}", he.text());
    assert_eq!(he.sigterm_and_wait(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without `[dataplane]` the daemon owns its NAT-T socket and tells its datagrams apart as
/// the data plane does (RFC 3948 2.1-2.3): what it refuses there (runts shorter than an
/// ESP header, RFC 4303 2; ESP whose SPI has no SA, RFC 4303 3.4.2) is on /metrics under
/// the data plane's drop reasons; a NAT keepalive is no refusal.
#[test]
fn natt_refusals_without_a_data_plane_are_counted_by_reason() {
    let dir = tmp("natt");
    let metrics = format!("127.0.0.1:{}", port(true));
    let (conf, _, natt, _) = config(&dir, 1, "");
    let sock = dir.join("m1.sock");
    let p = Proc::run(&conf, &sock, &metrics, &[], dir.join("m1.log"));
    let end = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(&metrics).is_err() {
        assert!(Instant::now() < end, "no /metrics:\n{}", p.text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let drops = || -> (Option<u64>, Option<u64>) {
        let m = http_get(&metrics, "/metrics");
        let get = |reason: &str| {
            let prefix = format!("headend_esp_drops_total{{reason=\"{reason}\"}} ");
            m.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .map(|n| n.parse::<u64>().unwrap())
        };
        (get("esp_truncated"), get("esp_unknown_spi"))
    };
    assert_eq!(drops(), (Some(0), Some(0)), "nothing refused yet");

    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // Empty; three zeros (less than a non-ESP marker); two 0xFF (not a keepalive); seven
    // octets of no marker (less than an SPI and a sequence number).
    let runts: [&[u8]; 4] = [&[], &[0, 0, 0], &[0xff, 0xff], &[1, 2, 3, 4, 5, 6, 7]];
    for r in runts {
        c.send_to(r, ("127.0.0.1", natt)).unwrap();
    }
    c.send_to(&[0xff], ("127.0.0.1", natt)).unwrap();
    let mut esp = vec![0x10, 0, 0, 1, 0, 0, 0, 1];
    esp.extend([0x5a; 24]);
    c.send_to(&esp, ("127.0.0.1", natt)).unwrap();

    let end = Instant::now() + Duration::from_secs(10);
    let mut seen = drops();
    while seen != (Some(4), Some(1)) {
        assert!(
            Instant::now() < end,
            "truncated / unknown SPI drops stay at {seen:?}:\n{}",
            p.text()
        );
        std::thread::sleep(Duration::from_millis(100));
        seen = drops();
    }
    // The keepalive (sent before the ESP packet) was not counted as a refusal.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(drops(), (Some(4), Some(1)));
}
