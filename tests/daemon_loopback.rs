//! `headend run` and `headend peer` as processes on 127.0.0.1 high ports: the peer gets a
//! virtual IP from the head-end's pool, the head-end logs the gateway ID, SIGTERM stops the
//! head-end within 2 s after deleting the IKE SAs, and with two head-ends a peer fails
//! over to the second when the first is killed.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_headend");

/// A scratch directory per test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("headend-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Two free UDP ports on 127.0.0.1 (IKE, NAT-T).
fn free_ports() -> (u16, u16) {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

struct Proc {
    child: Child,
    log: PathBuf,
    lines: Option<mpsc::Receiver<String>>,
}

impl Proc {
    fn spawn(args: &[&str], log: PathBuf) -> Proc {
        let err = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            log,
            lines: Some(rx),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a stdout line satisfying `f`.
    fn wait_line(&self, timeout: Duration, f: impl Fn(&str) -> bool) -> String {
        let rx = self.lines.as_ref().unwrap();
        let end = Instant::now() + timeout;
        let mut seen = vec![];
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(l) if f(&l) => return l,
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        panic!(
            "no matching line within {timeout:?}; stdout so far: {seen:#?}\nstderr ({}):\n{}",
            self.log.display(),
            self.log_text()
        );
    }

    fn wait_log(&self, timeout: Duration, f: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log_text().lines().find(|l| f(l)) {
                return l.to_string();
            }
            if Instant::now() > end {
                panic!(
                    "no matching log line within {timeout:?} in {}:\n{}",
                    self.log.display(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig} failed");
    }

    /// Waits for exit; returns the exit code (None if killed by a signal).
    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > end {
                panic!(
                    "process did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `headend run` with `conf` in `<dir>/<name>.toml` (log `<dir>/<name>.log`), returned
/// once its log says `ready` (e.g. "headend responder listening").
fn run_headend(dir: &Path, name: &str, conf: &str, ready: &str) -> Proc {
    let c = write(dir, &format!("{name}.toml"), conf);
    let p = Proc::spawn(
        &["run", "--config", c.to_str().unwrap()],
        dir.join(format!("{name}.log")),
    );
    p.wait_log(Duration::from_secs(10), |l| l.contains(ready));
    p
}

const LISTENING: &str = "headend responder listening";

fn headend_conf(ike: u16, natt: u16, pool: &str) -> String {
    format!(
        r#"[ike]
listen = ["127.0.0.1"]
port = {ike}
natt_port = {natt}
local_id = "headend-{ike}"
local_ts = ["10.1.0.0/16"]
dpd_delay = "30s"
[psk]
default = "loopback-test-psk"
[pool]
v4 = "{pool}"
[log]
level = "info"
"#
    )
}

fn peer_conf(headends: &[(u16, u16)], id: &str) -> String {
    let hs: Vec<String> = headends
        .iter()
        .map(|(i, n)| format!("{{ addr = \"127.0.0.1:{i}\", natt_port = {n} }}"))
        .collect();
    format!(
        r#"[ike]
dpd_delay = "1s"
retransmit_timeout = "250ms"
retransmit_tries = 2
[psk]
default = "loopback-test-psk"
[peer]
local_id = "{id}"
headends = [{}]
policy = "round-robin"
backoff = "200ms"
connect_timeout = "3s"
bind = "127.0.0.1:0"
"#,
        hs.join(", ")
    )
}

/// Parses "up <id> via <addr> vip <a,b> gateway-id <gw>".
fn vip_of(line: &str) -> Ipv4Addr {
    let v = line
        .split(" vip ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    v.split(',').next().unwrap().parse().unwrap()
}

fn in_net(a: Ipv4Addr, net: Ipv4Addr, len: u32) -> bool {
    let mask = u32::MAX << (32 - len);
    u32::from(a) & mask == u32::from(net) & mask
}

#[test]
fn peer_gets_vip_from_pool_and_headend_reports_gateway_id() {
    let dir = scratch("single");
    let (ike, natt) = free_ports();
    let he = run_headend(
        &dir,
        "headend",
        &headend_conf(ike, natt, "10.77.0.0/24"),
        LISTENING,
    );

    // An identity that needs sanitizing: the gateway ID is "MG90-Site-12".
    let pc = write(
        &dir,
        "peer.toml",
        &peer_conf(&[(ike, natt)], "MG90/Site #12"),
    );
    let peer = Proc::spawn(
        &["peer", "--config", pc.to_str().unwrap()],
        dir.join("peer.log"),
    );
    let up = peer.wait_line(Duration::from_secs(10), |l| l.starts_with("up "));
    let vip = vip_of(&up);
    assert!(
        in_net(vip, Ipv4Addr::new(10, 77, 0, 0), 24),
        "vip {vip} not from the pool: {up}"
    );
    assert!(up.contains(&format!("via 127.0.0.1:{ike}")), "{up}");
    assert!(up.ends_with("gateway-id MG90-Site-12"), "{up}");

    // The head-end logs the tunnel with identity, gateway ID and VIP as fields.
    let l = he.wait_log(Duration::from_secs(5), |l| {
        l.contains("IKE SA established") && l.contains("gateway_id=MG90-Site-12")
    });
    assert!(l.contains(&vip.to_string()), "{l}");
    assert!(l.contains("identity=MG90/Site #12"), "{l}");
    he.wait_log(Duration::from_secs(5), |l| {
        l.contains("CHILD SA installed") && l.contains("spi_in=")
    });

    // SIGTERM: Deletes go out, the daemon exits 0 within 2 s, the peer hears the Delete.
    let mut he = he;
    let t = Instant::now();
    he.signal("-TERM");
    assert_eq!(
        he.wait_exit(Duration::from_secs(3)),
        Some(0),
        "exit code; log:\n{}",
        he.log_text()
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        t.elapsed()
    );
    let mv = peer.wait_line(Duration::from_secs(5), |l| l.starts_with("move "));
    assert!(mv.contains("deleted by the head-end"), "{mv}");
}

#[test]
fn peer_fails_over_to_second_headend_when_first_is_killed() {
    let dir = scratch("failover");
    let (ike_a, natt_a) = free_ports();
    let (ike_b, natt_b) = free_ports();
    let a = run_headend(
        &dir,
        "a",
        &headend_conf(ike_a, natt_a, "10.77.1.0/24"),
        LISTENING,
    );
    let b = run_headend(
        &dir,
        "b",
        &headend_conf(ike_b, natt_b, "10.77.2.0/24"),
        LISTENING,
    );

    let pc = write(
        &dir,
        "peer.toml",
        &peer_conf(&[(ike_a, natt_a), (ike_b, natt_b)], "SN-0042"),
    );
    let peer = Proc::spawn(
        &["peer", "--config", pc.to_str().unwrap()],
        dir.join("peer.log"),
    );
    let up = peer.wait_line(Duration::from_secs(10), |l| l.starts_with("up "));
    assert!(
        up.contains(&format!("via 127.0.0.1:{ike_a}")),
        "round-robin starts at the first: {up}"
    );
    assert!(in_net(vip_of(&up), Ipv4Addr::new(10, 77, 1, 0), 24), "{up}");
    a.wait_log(Duration::from_secs(5), |l| {
        l.contains("IKE SA established") && l.contains("gateway_id=SN-0042")
    });

    // Kill the first head-end outright: no Delete, so DPD must notice.
    let t = Instant::now();
    a.signal("-KILL");
    let mv = peer.wait_line(Duration::from_secs(15), |l| l.starts_with("move "));
    assert!(
        mv.contains(&format!("from 127.0.0.1:{ike_a} to 127.0.0.1:{ike_b}")),
        "{mv}"
    );
    let up2 = peer.wait_line(Duration::from_secs(15), |l| l.starts_with("up "));
    assert!(up2.contains(&format!("via 127.0.0.1:{ike_b}")), "{up2}");
    assert!(
        in_net(vip_of(&up2), Ipv4Addr::new(10, 77, 2, 0), 24),
        "VIP from the second pool: {up2}"
    );
    b.wait_log(Duration::from_secs(5), |l| {
        l.contains("IKE SA established") && l.contains("gateway_id=SN-0042")
    });
    eprintln!("failover took {:?}", t.elapsed());
    drop(a);
}

#[test]
fn refused_peer_moves_on_to_the_next_headend() {
    // The first head-end has a different PSK: AUTHENTICATION_FAILED, then the second.
    let dir = scratch("refused");
    let (ike_a, natt_a) = free_ports();
    let (ike_b, natt_b) = free_ports();
    let a = run_headend(
        &dir,
        "a",
        &headend_conf(ike_a, natt_a, "10.77.3.0/24").replace("loopback-test-psk", "another-psk"),
        LISTENING,
    );
    let _b = run_headend(
        &dir,
        "b",
        &headend_conf(ike_b, natt_b, "10.77.4.0/24"),
        LISTENING,
    );
    let pc = write(
        &dir,
        "peer.toml",
        &peer_conf(&[(ike_a, natt_a), (ike_b, natt_b)], "SN-0043"),
    );
    let peer = Proc::spawn(
        &["peer", "--config", pc.to_str().unwrap()],
        dir.join("peer.log"),
    );
    let mv = peer.wait_line(Duration::from_secs(10), |l| l.starts_with("move "));
    assert!(
        mv.contains(&format!("from 127.0.0.1:{ike_a} to 127.0.0.1:{ike_b}")),
        "{mv}"
    );
    let up = peer.wait_line(Duration::from_secs(10), |l| l.starts_with("up "));
    assert!(up.contains(&format!("via 127.0.0.1:{ike_b}")), "{up}");
    assert!(
        !a.log_text().contains("IKE SA established"),
        "nothing established on the refusing head-end"
    );
}

#[test]
fn simulated_fleet_gets_distinct_vips() {
    let dir = scratch("fleet");
    let (ike, natt) = free_ports();
    let _he = run_headend(
        &dir,
        "headend",
        &headend_conf(ike, natt, "10.77.5.0/24"),
        LISTENING,
    );
    let pc = write(&dir, "peer.toml", &peer_conf(&[(ike, natt)], "unused"));
    let peer = Proc::spawn(
        &[
            "peer",
            "--config",
            pc.to_str().unwrap(),
            "--count",
            "20",
            "--id-prefix",
            "rtr-",
        ],
        dir.join("peer.log"),
    );
    let mut vips = std::collections::BTreeSet::new();
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let l = peer.wait_line(Duration::from_secs(20), |l| l.starts_with("up "));
        vips.insert(vip_of(&l));
        ids.insert(l.split_whitespace().nth(1).unwrap().to_string());
    }
    assert_eq!(vips.len(), 20, "every router has its own address: {vips:?}");
    assert_eq!(ids.len(), 20);
    assert!(ids.contains("rtr-1") && ids.contains("rtr-20"));
    assert!(vips
        .iter()
        .all(|v| in_net(*v, Ipv4Addr::new(10, 77, 5, 0), 24)));
}

/// A DNS A query for `name` (RFC 1035 4.1), sent over UDP; returns (rcode, A addresses).
fn dns_a(server: std::net::SocketAddr, name: &str) -> (u8, Vec<Ipv4Addr>) {
    let mut q = vec![0x12, 0x34, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(&q, server).unwrap();
    let mut buf = [0u8; 1500];
    let n = s.recv(&mut buf).unwrap();
    let r = &buf[..n];
    assert_eq!(&r[..2], &[0x12, 0x34], "reply id");
    let rcode = r[3] & 0x0f;
    let ancount = u16::from_be_bytes([r[6], r[7]]);
    // Skip the question (echoed as sent), then walk the answers.
    let mut i = q.len();
    let mut out = vec![];
    for _ in 0..ancount {
        // Name: a pointer (2 octets) or labels.
        if r[i] & 0xc0 == 0xc0 {
            i += 2;
        } else {
            while r[i] != 0 {
                i += r[i] as usize + 1;
            }
            i += 1;
        }
        let typ = u16::from_be_bytes([r[i], r[i + 1]]);
        let rdlen = u16::from_be_bytes([r[i + 8], r[i + 9]]) as usize;
        i += 10;
        if typ == 1 && rdlen == 4 {
            out.push(Ipv4Addr::new(r[i], r[i + 1], r[i + 2], r[i + 3]));
        }
        i += rdlen;
    }
    (rcode, out)
}

/// Polls until the rcode is `want` (or 3 s pass); returns the last answer.
fn dns_eventually(server: std::net::SocketAddr, name: &str, want: u8) -> (u8, Vec<Ipv4Addr>) {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let r = dns_a(server, name);
        if r.0 == want || Instant::now() > end {
            return r;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn gateway_name_is_answered_by_the_embedded_dns_while_the_tunnel_is_up() {
    let dir = scratch("dns");
    let (ike, natt) = free_ports();
    let (dns_port, _) = free_ports();
    let conf = format!(
        "{}\n[dns]\nlisten = [\"127.0.0.1\"]\nport = {dns_port}\ndomain = \"vpn.test\"\nnegative_ttl = 1\n[[dns.ns]]\nname = \"ns1\"\naddrs = [\"127.0.0.1\"]\n",
        headend_conf(ike, natt, "10.77.6.0/24")
    );
    let he = run_headend(&dir, "headend", &conf, "authoritative DNS server listening");
    let server: std::net::SocketAddr = format!("127.0.0.1:{dns_port}").parse().unwrap();
    assert_eq!(
        dns_a(server, "SN-0099.vpn.test").0,
        3,
        "NXDOMAIN before the tunnel is up"
    );

    let pc = write(&dir, "peer.toml", &peer_conf(&[(ike, natt)], "SN/0099"));
    let mut peer = Proc::spawn(
        &["peer", "--config", pc.to_str().unwrap()],
        dir.join("peer.log"),
    );
    let up = peer.wait_line(Duration::from_secs(10), |l| l.starts_with("up "));
    let vip = vip_of(&up);
    // Case-insensitive name of the sanitized identity answers the tunnel's VIP.
    // (The zone is updated from the gateway event right after the head-end's IKE_AUTH
    // answer; allow for a loaded machine.)
    assert_eq!(
        dns_eventually(server, "sn-0099.VPN.test", 0),
        (0, vec![vip])
    );

    // The router leaves (SIGTERM: it deletes its IKE SA): the name goes at once.
    peer.signal("-TERM");
    assert_eq!(peer.wait_exit(Duration::from_secs(5)), Some(0));
    he.wait_log(Duration::from_secs(5), |l| {
        l.contains("IKE SA deleted") && l.contains("gateway_id=SN-0099")
    });
    assert_eq!(
        dns_eventually(server, "SN-0099.vpn.test", 3),
        (3, vec![]),
        "NXDOMAIN after the tunnel is gone"
    );
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Member `m` (1 or 2) of a two-member loopback cluster: IKE on 127.0.0.m, DNS, cluster.
fn cluster_member_conf(
    m: u8,
    (ike, natt): (u16, u16),
    dns_port: u16,
    (repl, memb): (u16, u16),
    dir: &Path,
) -> String {
    let other = 3 - m;
    format!(
        r#"[ike]
listen = ["127.0.0.{m}"]
port = {ike}
natt_port = {natt}
[psk]
default = "loopback-test-psk"
[pool]
v4 = "10.77.{}.0/24"
[dns]
listen = ["127.0.0.{m}"]
port = {dns_port}
negative_ttl = 1
[[dns.ns]]
name = "ns1"
addrs = ["127.0.0.1"]
[[dns.ns]]
name = "ns2"
addrs = ["127.0.0.2"]
[service.ipsec-ddns]
self = "127.0.0.{m}"
peer = ["127.0.0.{other}"]
secret = "loopback-cluster-secret"
domain = "vpn.test"
enable = true
data_dir = "{}"
replication_port = {repl}
membership_port = {memb}
"#,
        10 + m,
        dir.join(format!("data{m}")).display()
    )
}

#[test]
fn two_member_cluster_answers_a_router_on_both_members() {
    let dir = scratch("cluster");
    let (repl, memb, dns_port) = (free_tcp_port(), free_tcp_port(), free_ports().0);
    let mut he = vec![];
    let mut ike_ports = vec![];
    for m in 1..=2u8 {
        let (ike, natt) = free_ports();
        ike_ports.push((ike, natt));
        let conf = cluster_member_conf(m, (ike, natt), dns_port, (repl, memb), &dir);
        let c = write(&dir, &format!("m{m}.toml"), &conf);
        let p = Proc::spawn(
            &["run", "--config", c.to_str().unwrap()],
            dir.join(format!("m{m}.log")),
        );
        p.wait_log(Duration::from_secs(15), |l| {
            l.contains("authoritative DNS server listening")
        });
        he.push(p);
    }
    assert!(
        he[0].log_text().contains("Creating new ipsec-ddns cluster"),
        "{}",
        he[0].log_text()
    );
    he[1].wait_log(Duration::from_secs(10), |l| {
        l.contains("Joined existing ipsec-ddns cluster")
    });
    he[1].wait_log(Duration::from_secs(10), |l| {
        l.contains("synced with the cluster")
    });

    // The router connects to member 1 only; member 2 answers its name too.
    let (ike, natt) = ike_ports[0];
    let pc = write(&dir, "peer.toml", &peer_conf(&[(ike, natt)], "SN-7"));
    let mut peer = Proc::spawn(
        &["peer", "--config", pc.to_str().unwrap()],
        dir.join("peer.log"),
    );
    let up = peer.wait_line(Duration::from_secs(10), |l| l.starts_with("up "));
    let vip = vip_of(&up);
    assert!(in_net(vip, Ipv4Addr::new(10, 77, 11, 0), 24), "{up}");
    let on = |m: u8| -> std::net::SocketAddr { format!("127.0.0.{m}:{dns_port}").parse().unwrap() };
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let a = dns_a(on(1), "sn-7.vpn.test");
        let b = dns_a(on(2), "sn-7.vpn.test");
        if a == (0, vec![vip]) && b == (0, vec![vip]) {
            break;
        }
        assert!(Instant::now() < end, "member answers: 1 {a:?}, 2 {b:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // It leaves: both members stop answering.
    peer.signal("-TERM");
    assert_eq!(peer.wait_exit(Duration::from_secs(5)), Some(0));
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let (a, b) = (
            dns_a(on(1), "sn-7.vpn.test").0,
            dns_a(on(2), "sn-7.vpn.test").0,
        );
        if a == 3 && b == 3 {
            break;
        }
        assert!(Instant::now() < end, "rcodes after leave: {a} {b}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// DNS load balancing (seed 003 ch. 3): `pool.<domain>` answers every member that is up,
/// from either member, and stops handing out a member once it is dead.
#[test]
fn pool_name_answers_up_members_and_drops_a_killed_one() {
    let dir = scratch("pool");
    let (repl, memb, dns_port) = (free_tcp_port(), free_tcp_port(), free_ports().0);
    let dead_after_ms = 1500u64;
    let mut he = vec![];
    for m in 1..=2u8 {
        let (ike, natt) = free_ports();
        let other = 3 - m;
        let conf = format!(
            r#"[ike]
listen = ["127.0.0.{m}"]
port = {ike}
natt_port = {natt}
[psk]
default = "loopback-test-psk"
[pool]
v4 = "10.78.{}.0/24"
[dns]
listen = ["127.0.0.{m}"]
port = {dns_port}
negative_ttl = 1
[[dns.ns]]
name = "ns1"
addrs = ["127.0.0.1"]
[[dns.ns]]
name = "ns2"
addrs = ["127.0.0.2"]
[service.ipsec-ddns]
self = "127.0.0.{m}"
peer = ["127.0.0.{other}"]
secret = "loopback-cluster-secret"
domain = "vpn.test"
enable = true
data_dir = "{}"
replication_port = {repl}
membership_port = {memb}
dead_after_ms = {dead_after_ms}
gossip_interval_ms = 200
"#,
            10 + m,
            dir.join(format!("data{m}")).display()
        );
        let c = write(&dir, &format!("m{m}.toml"), &conf);
        let p = Proc::spawn(
            &["run", "--config", c.to_str().unwrap()],
            dir.join(format!("m{m}.log")),
        );
        p.wait_log(Duration::from_secs(15), |l| {
            l.contains("authoritative DNS server listening")
        });
        he.push(p);
    }
    he[1].wait_log(Duration::from_secs(10), |l| {
        l.contains("synced with the cluster")
    });
    let on = |m: u8| -> std::net::SocketAddr { format!("127.0.0.{m}:{dns_port}").parse().unwrap() };
    let both = vec![Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)];
    let sorted = |(rc, mut v): (u8, Vec<Ipv4Addr>)| {
        v.sort();
        (rc, v)
    };
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let a = sorted(dns_a(on(1), "pool.vpn.test"));
        let b = sorted(dns_a(on(2), "pool.vpn.test"));
        if a == (0, both.clone()) && b == (0, both.clone()) {
            break;
        }
        assert!(Instant::now() < end, "pool answers: 1 {a:?}, 2 {b:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Member 1 dies without a word: the survivor stops handing it out.
    he[0].signal("-KILL");
    let killed = Instant::now();
    let end = killed + Duration::from_millis(dead_after_ms) + Duration::from_secs(3);
    loop {
        let b = sorted(dns_a(on(2), "pool.vpn.test"));
        if b.1 == vec![Ipv4Addr::new(127, 0, 0, 2)] {
            break;
        }
        assert!(
            Instant::now() < end,
            "survivor's pool answer after the kill: {b:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A member killed with its tunnels up and restarted without them withdraws the records its
/// store still holds: no member keeps answering a router that is no longer connected.
#[test]
fn restarted_member_withdraws_tunnels_it_no_longer_has() {
    let dir = scratch("restart");
    let (repl, memb, dns_port) = (free_tcp_port(), free_tcp_port(), free_ports().0);
    let ports = [free_ports(), free_ports()];
    let start = |m: u8, log: &str| {
        let conf = cluster_member_conf(m, ports[m as usize - 1], dns_port, (repl, memb), &dir);
        let c = write(&dir, &format!("m{m}.toml"), &conf);
        let p = Proc::spawn(&["run", "--config", c.to_str().unwrap()], dir.join(log));
        p.wait_log(Duration::from_secs(15), |l| {
            l.contains("authoritative DNS server listening")
        });
        p
    };
    let mut m1 = start(1, "m1.log");
    let m2 = start(2, "m2.log");
    m2.wait_log(Duration::from_secs(10), |l| {
        l.contains("synced with the cluster")
    });

    let pc = write(&dir, "peer.toml", &peer_conf(&[ports[0]], "SN-8"));
    let mut peer = Proc::spawn(
        &["peer", "--config", pc.to_str().unwrap()],
        dir.join("peer.log"),
    );
    let up = peer.wait_line(Duration::from_secs(10), |l| l.starts_with("up "));
    let vip = vip_of(&up);
    let on = |m: u8| -> std::net::SocketAddr { format!("127.0.0.{m}:{dns_port}").parse().unwrap() };
    assert_eq!(dns_eventually(on(2), "sn-8.vpn.test", 0), (0, vec![vip]));

    // The router and member 1 vanish without a word; member 1 comes back at once.
    peer.signal("-KILL");
    let _ = peer.wait_exit(Duration::from_secs(5));
    m1.signal("-KILL");
    let _ = m1.wait_exit(Duration::from_secs(5));
    let m1b = start(1, "m1b.log");
    m1b.wait_log(Duration::from_secs(15), |l| {
        l.contains("Joined existing ipsec-ddns cluster")
    });
    // Neither member answers the stale tunnel, and it stays that way.
    assert_eq!(dns_eventually(on(2), "sn-8.vpn.test", 3).0, 3);
    assert_eq!(dns_eventually(on(1), "sn-8.vpn.test", 3).0, 3);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(dns_a(on(2), "sn-8.vpn.test").0, 3, "{}", m1b.log_text());
    assert_eq!(dns_a(on(1), "sn-8.vpn.test").0, 3);
}
