//! Zone transfer and NOTIFY (issue 4, optional part) against real tools on 127.0.0.1:
//! Knot DNS (knotd) as a secondary of headend with a TSIG key transfers the 10 000-record
//! zone, follows changes through NOTIFY + IXFR differences, and `dig` checks who may transfer:
//! no key REFUSED, wrong key NOTAUTH (BADSIG/BADKEY), other source address REFUSED.
//! The daemon test runs `headend run` with the keys in its file and `headend peer` as the
//! router. Missing knotd or dig makes the tests FAIL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dns_support;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ddns::{DnsConfig, DnsServer, GatewayId, Outcome, TunnelKey, Zone, ZoneConfig};
use dns_support::{dig, DigResult};

const DOMAIN: &str = "vpn.example.com";
const KEY: &str = "xfr-key";
/// base64 of "headend-xfr-test-key-32-octets!!"
const SECRET: &str = "aGVhZGVuZC14ZnItdGVzdC1rZXktMzItb2N0ZXRzISE=";
/// Same length, other octets.
const WRONG: &str = "YS1kaWZmZXJlbnQtc2VjcmV0LW9mLTMyLW9jdGV0cyE=";
const RECORDS: u32 = 10_000;

fn need(tool: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin"] {
        let p = PathBuf::from(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("required tool `{tool}` is not installed (apt-get install knot dnsutils)");
}

/// A port free for both UDP and TCP on 127.0.0.1.
fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn stamp_now() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    ms << 16
}

/// The `[dns]` section as an operator writes it.
fn config(secondary: SocketAddr) -> DnsConfig {
    let mut cfg: DnsConfig = toml::from_str(&format!(
        r#"
        listen = ["127.0.0.1"]
        port = 0
        udp_sockets = 1
        [[ns]]
        name = "ns1"
        addrs = ["127.0.0.1"]
        [[tsig_key]]
        name = "{KEY}"
        algorithm = "hmac-sha256"
        secret = "{SECRET}"
        [[secondary]]
        address = "{secondary}"
        tsig_key = "{KEY}"
        "#
    ))
    .unwrap();
    cfg.enable = true;
    cfg
}

/// headend serving `vpn.example.com` with router-one and `RECORDS` more gateways.
async fn headend(secondary: SocketAddr) -> DnsServer {
    let cfg = config(secondary);
    let zone = Zone::new(ZoneConfig::new(&cfg, DOMAIN).unwrap());
    zone.set_synced(true);
    let base = stamp_now();
    let mut changes = vec![ddns::Change::Upsert {
        key: TunnelKey::new("m1", "router-one"),
        gateway_id: GatewayId::from_identity("Router.One").0,
        addrs: vec!["10.1.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        stamp: base,
    }];
    for i in 0..RECORDS {
        changes.push(ddns::Change::Upsert {
            key: TunnelKey::new("m1", format!("t{i}")),
            gateway_id: GatewayId::from_identity(format!("gw-{i:05}")).0,
            addrs: vec![IpAddr::from([10, 2, (i >> 8) as u8, i as u8])],
            stamp: base + 1 + u64::from(i),
        });
    }
    zone.apply(changes);
    DnsServer::start(&cfg, zone).await.unwrap()
}

/// knotd on 127.0.0.1:`port`, secondary for the zone with headend (`primary`) as its
/// master, the TSIG key, and NOTIFY accepted from 127.0.0.1 with the key.
struct Knot {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Knot {
    fn start(port: u16, primary: SocketAddr, domain: &str) -> Knot {
        let knotd = need("knotd");
        let dir = std::env::temp_dir().join(format!("headend-knot-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let conf = format!(
            "server:\n\
             \x20   listen: 127.0.0.1@{port}\n\
             \x20   rundir: \"{dir}\"\n\
             \x20   user: root\n\
             \x20   udp-workers: 1\n\
             \x20   tcp-workers: 1\n\
             \x20   background-workers: 1\n\
             log:\n\
             \x20 - target: stderr\n\
             \x20   any: info\n\
             database:\n\
             \x20   storage: \"{dir}\"\n\
             key:\n\
             \x20 - id: {KEY}\n\
             \x20   algorithm: hmac-sha256\n\
             \x20   secret: {SECRET}\n\
             remote:\n\
             \x20 - id: headend\n\
             \x20   address: {pip}@{pport}\n\
             \x20   key: {KEY}\n\
             acl:\n\
             \x20 - id: notify-from-headend\n\
             \x20   address: {pip}\n\
             \x20   key: {KEY}\n\
             \x20   action: notify\n\
             template:\n\
             \x20 - id: default\n\
             \x20   storage: \"{dir}\"\n\
             zone:\n\
             \x20 - domain: {domain}\n\
             \x20   master: headend\n\
             \x20   acl: notify-from-headend\n\
             \x20   zonefile-sync: -1\n",
            dir = dir.display(),
            pip = primary.ip(),
            pport = primary.port(),
        );
        let conf_path = dir.join("knot.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(knotd)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("knot.log")).unwrap(),
            ))
            .spawn()
            .expect("start knotd");
        Knot {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("knot.log")).unwrap_or_default()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn dig_async(server: SocketAddr, args: &[&str]) -> DigResult {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        dig(server, &a)
    })
    .await
    .unwrap()
}

/// Ask `server` until `check` holds or `within` passes; returns the last answer.
async fn until(
    server: SocketAddr,
    args: &[&str],
    within: Duration,
    check: impl Fn(&DigResult) -> bool,
) -> (DigResult, Duration) {
    let t0 = Instant::now();
    loop {
        let r = dig_async(server, args).await;
        if check(&r) || t0.elapsed() > within {
            return (r, t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `dig AXFR` (always TCP) with optional extra arguments; dig's whole output.
async fn dig_axfr(server: SocketAddr, extra: &[&str]) -> String {
    let mut args: Vec<String> = vec![
        format!("@{}", server.ip()),
        "-p".into(),
        server.port().to_string(),
        "+time=3".into(),
        "+tries=1".into(),
        "+comments".into(), // prints the status of a failed transfer
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend([DOMAIN.to_string(), "AXFR".to_string()]);
    tokio::task::spawn_blocking(move || {
        let out = Command::new(need("dig")).args(&args).output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_secondary_transfers_the_zone_and_follows_changes_through_notify() {
    let knot_port = free_port();
    let server = headend(SocketAddr::from(([127, 0, 0, 1], knot_port))).await;
    let primary = server.tcp_addrs()[0];
    let knot = Knot::start(knot_port, primary, DOMAIN);

    // Knot bootstraps the zone with a transfer from headend (10 001 gateways: many
    // messages, each TSIG-signed, which Knot verifies).
    let (r, took) = until(
        knot.addr,
        &["router-one.vpn.example.com", "A"],
        Duration::from_secs(30),
        |r| r.status == "NOERROR" && !r.answer.is_empty(),
    )
    .await;
    assert_eq!(
        r.answer_data("A"),
        vec!["10.1.0.1"],
        "{}\n{}",
        r.raw,
        knot.log()
    );
    println!("initial transfer to Knot answered after {took:?}");
    let r = dig_async(knot.addr, &["gw-09999.vpn.example.com", "A"]).await;
    assert_eq!(
        r.answer_data("A"),
        vec!["10.2.39.15"],
        "last record transferred"
    );
    let r = dig_async(knot.addr, &["router-one.vpn.example.com", "AAAA"]).await;
    assert_eq!(r.answer_data("AAAA"), vec!["fd00::1"]);
    let r = dig_async(knot.addr, &["vpn.example.com", "SOA"]).await;
    let serial: u32 = r.answer[0]
        .data
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(serial, server.zone().serial(), "Knot has headend's serial");

    // The pool name follows member health, so Knot refers resolvers to the head-ends
    // for it instead of answering a copy that could hold a failed member.
    let r = dig_async(knot.addr, &["pool.vpn.example.com", "A"]).await;
    assert!(!r.has_flag("aa") && r.answer.is_empty(), "{}", r.raw);
    assert!(
        r.authority
            .iter()
            .any(|x| x.rtype == "NS" && x.data == "ns1.vpn.example.com."),
        "{}",
        r.raw
    );

    // A new tunnel: headend NOTIFYs Knot, Knot asks for the SOA and transfers again.
    let t0 = Instant::now();
    server.zone().upsert(
        TunnelKey::new("m1", "fresh"),
        GatewayId::from_identity("Fresh Router").0,
        vec!["10.9.9.9".parse().unwrap()],
        stamp_now(),
    );
    let (r, _) = until(
        knot.addr,
        &["fresh-router.vpn.example.com", "A"],
        Duration::from_secs(10),
        |r| !r.answer.is_empty(),
    )
    .await;
    assert_eq!(
        r.answer_data("A"),
        vec!["10.9.9.9"],
        "{}\n{}",
        r.raw,
        knot.log()
    );
    let took = t0.elapsed();
    println!("new record reached Knot after {took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");

    // A tunnel going down reaches Knot the same way.
    server
        .zone()
        .remove(&TunnelKey::new("m1", "router-one"), stamp_now());
    let (r, _) = until(
        knot.addr,
        &["router-one.vpn.example.com", "A"],
        Duration::from_secs(10),
        |r| r.status == "NXDOMAIN",
    )
    .await;
    assert_eq!(r.status, "NXDOMAIN", "{}\n{}", r.raw, knot.log());

    // Knot's copy is the zone: same serial, untouched names still there
    let r = dig_async(knot.addr, &["vpn.example.com", "SOA"]).await;
    let serial: u32 = r.answer[0]
        .data
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(serial, server.zone().serial());
    let r = dig_async(knot.addr, &["gw-00042.vpn.example.com", "A"]).await;
    assert_eq!(r.answer_data("A"), vec!["10.2.0.42"]);
    let r = dig_async(knot.addr, &["router-one.vpn.example.com", "AAAA"]).await;
    assert_eq!(r.status, "NXDOMAIN", "both addresses of router-one left");

    let st = server.transfer_stats().by_label();
    let get = |k: &str| st.iter().find(|(l, _)| *l == k).unwrap().1;
    // the bootstrap is a full transfer; the two changes travel as IXFR differences
    assert!(get("full") >= 1, "{st:?}");
    assert!(get("incremental") >= 2, "{st:?}");
    let log = knot.log();
    assert!(!log.contains("AXFR-style"), "{log}");
    assert!(log.contains("IXFR, incoming"), "{log}");
    let ixfr_lines: Vec<&str> = log.lines().filter(|l| l.contains("IXFR")).collect();
    assert!(
        ixfr_lines
            .iter()
            .all(|l| !l.contains("fail") && !l.contains("fallback")),
        "{log}"
    );
    assert!(get("notify_acked") >= 2, "{st:?}");
    assert_eq!(get("notauth"), 0, "{st:?}");
    assert!(server.counters().values().get(Outcome::Transfer) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_axfr_needs_the_key_and_a_secondary_address() {
    // The secondary is 127.0.0.1 (NOTIFYs to an unused port go unanswered: harmless).
    let server = headend(SocketAddr::from(([127, 0, 0, 1], free_port()))).await;
    let addr = server.tcp_addrs()[0];
    let key = format!("hmac-sha256:{KEY}:{SECRET}");

    // With the key, from the secondary's address: the whole zone, SOA first and last;
    // dig verifies the TSIG of every message.
    let out = dig_axfr(addr, &["-y", &key]).await;
    assert!(!out.contains("Transfer failed"), "{out}");
    assert!(!out.contains("failure") && !out.contains("BADSIG"), "{out}");
    assert!(
        out.contains("TSIG"),
        "signed: {}",
        &out[..out.len().min(1000)]
    );
    let rtype = |l: &str| l.split_whitespace().nth(3).unwrap_or("").to_owned();
    let all: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .collect();
    // dig prints the TSIG RR of every message it verified
    let signed_messages = all.iter().filter(|l| rtype(l) == "TSIG").count();
    let lines: Vec<&str> = all.into_iter().filter(|l| rtype(l) != "TSIG").collect();
    assert_eq!(rtype(lines[0]), "SOA", "{}", lines[0]);
    assert_eq!(rtype(lines[lines.len() - 1]), "SOA");
    let a = lines.iter().filter(|l| rtype(l) == "A").count();
    // RECORDS gateways + router-one + glue of ns1
    assert_eq!(a, RECORDS as usize + 2, "{}", &out[..out.len().min(2000)]);
    // the apex NS, and the pool name delegated to the same name server
    assert_eq!(lines.iter().filter(|l| rtype(l) == "NS").count(), 2);
    assert!(lines
        .iter()
        .any(|l| l.starts_with("pool.vpn.example.com.") && rtype(l) == "NS"));
    assert!(
        out.contains("XFR size:"),
        "{}",
        &out[out.len().saturating_sub(500)..]
    );
    // ";; XFR size: 10004 records (messages 51, bytes ...)"
    let messages: usize = out
        .lines()
        .find_map(|l| {
            l.split("(messages ")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(
        messages > 1,
        "a large zone takes several messages: {messages}"
    );
    assert_eq!(signed_messages, messages, "every message signed");

    // No key: REFUSED.
    let out = dig_axfr(addr, &[]).await;
    assert!(out.contains("Transfer failed"), "{out}");
    assert!(out.contains("status: REFUSED"), "{out}");

    // Right name, wrong secret: NOTAUTH with BADSIG.
    let out = dig_axfr(addr, &["-y", &format!("hmac-sha256:{KEY}:{WRONG}")]).await;
    assert!(out.contains("status: NOTAUTH"), "{out}");
    assert!(out.contains(" BADSIG "), "TSIG error BADSIG: {out}");
    // Unknown key name: NOTAUTH with BADKEY.
    let out = dig_axfr(addr, &["-y", &format!("hmac-sha256:other-key:{SECRET}")]).await;
    assert!(out.contains("status: NOTAUTH"), "{out}");
    assert!(out.contains(" BADKEY "), "TSIG error BADKEY: {out}");

    // Right key from an address that is not a secondary: REFUSED.
    let out = dig_axfr(addr, &["-b", "127.0.0.2", "-y", &key]).await;
    assert!(out.contains("status: REFUSED"), "{out}");

    // IXFR with the current serial: the single SOA (RFC 1995 section 4).
    let serial = server.zone().serial();
    let r = dig_async(
        addr,
        &["+tcp", "-y", &key, DOMAIN, &format!("IXFR={serial}")],
    )
    .await;
    let soas = r.raw.lines().filter(|l| l.contains("\tSOA\t")).count();
    assert_eq!(soas, 1, "{}", r.raw);

    let c = server.counters().values();
    assert!(c.get(Outcome::Refused) >= 2, "{:?}", c.by_label());
    assert!(c.get(Outcome::NotAuth) >= 2, "{:?}", c.by_label());
    assert!(c.get(Outcome::Transfer) >= 2, "{:?}", c.by_label());
}

// ---------------------------------------------------------------------------------------
// The daemon: `headend run` with the transfer keys in its configuration file, a tunnel
// from `headend peer`, and Knot as the secondary.

const BIN: &str = env!("CARGO_BIN_EXE_headend");

/// A child process whose stdout lines are collected; killed on drop.
struct Proc {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: PathBuf,
}

impl Proc {
    fn spawn(args: &[&str], log: PathBuf) -> Proc {
        use std::io::BufRead;
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, within: Duration, what: &str) {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if self.log_text().contains(what) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no {what:?} in the log:\n{}", self.log_text());
    }

    fn wait_line(&self, within: Duration, prefix: &str) -> String {
        let t0 = Instant::now();
        while let Some(left) = within.checked_sub(t0.elapsed()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no line {prefix:?}; log:\n{}", self.log_text());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Ask `server` until `check` holds or `within` passes.
fn until_sync(
    server: SocketAddr,
    args: &[&str],
    within: Duration,
    check: impl Fn(&DigResult) -> bool,
) -> DigResult {
    let t0 = Instant::now();
    loop {
        let r = dig(server, args);
        if check(&r) || t0.elapsed() > within {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn headend_run_publishes_a_new_tunnel_to_its_knot_secondary() {
    let dir = std::env::temp_dir().join(format!("headend-xfr-daemon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (ike, natt, dns_port, knot_port) =
        (free_udp_port(), free_udp_port(), free_port(), free_port());
    let conf = format!(
        r#"[ike]
listen = ["127.0.0.1"]
port = {ike}
natt_port = {natt}
local_id = "headend-xfr"
local_ts = ["10.1.0.0/16"]
[psk]
default = "xfr-test-psk"
[pool]
v4 = "10.77.9.0/24"
[dns]
listen = ["127.0.0.1"]
port = {dns_port}
domain = "vpn.test"
negative_ttl = 1
[[dns.ns]]
name = "ns1"
addrs = ["127.0.0.1"]
[[dns.tsig_key]]
name = "{KEY}"
secret = "{SECRET}"
[[dns.secondary]]
address = "127.0.0.1:{knot_port}"
tsig_key = "{KEY}"
"#
    );
    let conf_path = dir.join("headend.toml");
    std::fs::write(&conf_path, conf).unwrap();
    let he = Proc::spawn(
        &["run", "--config", conf_path.to_str().unwrap()],
        dir.join("headend.log"),
    );
    he.wait_log(
        Duration::from_secs(10),
        "authoritative DNS server listening",
    );
    let primary = SocketAddr::from(([127, 0, 0, 1], dns_port));
    let knot = Knot::start(knot_port, primary, "vpn.test");
    let r = until_sync(
        knot.addr,
        &["vpn.test", "SOA"],
        Duration::from_secs(15),
        |r| r.status == "NOERROR" && !r.answer.is_empty(),
    );
    assert_eq!(r.status, "NOERROR", "{}\n{}", r.raw, knot.log());

    // A router connects: its gateway name reaches Knot through NOTIFY and IXFR.
    let peer_conf = format!(
        r#"[ike]
retransmit_timeout = "250ms"
retransmit_tries = 2
[psk]
default = "xfr-test-psk"
[peer]
local_id = "SN/0100"
headends = [{{ addr = "127.0.0.1:{ike}", natt_port = {natt} }}]
connect_timeout = "3s"
bind = "127.0.0.1:0"
"#
    );
    let peer_path = dir.join("peer.toml");
    std::fs::write(&peer_path, peer_conf).unwrap();
    let mut peer = Proc::spawn(
        &["peer", "--config", peer_path.to_str().unwrap()],
        dir.join("peer.log"),
    );
    let up = peer.wait_line(Duration::from_secs(10), "up ");
    let vip = up
        .split(" vip ")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.split(',').next())
        .unwrap()
        .to_owned();
    let t0 = Instant::now();
    let r = until_sync(
        knot.addr,
        &["sn-0100.vpn.test", "A"],
        Duration::from_secs(10),
        |r| !r.answer.is_empty(),
    );
    assert_eq!(
        r.answer_data("A"),
        vec![vip.clone()],
        "{}\n{}",
        r.raw,
        knot.log()
    );
    println!("tunnel up -> answered by Knot after {:?}", t0.elapsed());

    // The router leaves: Knot stops answering it too.
    let _ = Command::new("kill")
        .args(["-TERM", &peer.child.id().to_string()])
        .status();
    let _ = peer.child.wait();
    let r = until_sync(
        knot.addr,
        &["sn-0100.vpn.test", "A"],
        Duration::from_secs(10),
        |r| r.status == "NXDOMAIN",
    );
    assert_eq!(r.status, "NXDOMAIN", "{}\n{}", r.raw, knot.log());
    let log = he.log_text();
    assert!(log.contains("NOTIFY acknowledged"), "{log}");
    assert!(log.contains("zone transfer (IXFR)"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
