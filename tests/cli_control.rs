//! The operator CLI over the control socket (issue 6), in the seed's words: show cluster,
//! show vpn ipsec sa, show dns records, show service ipsec-ddns, set/delete/commit with
//! a refused commit (short secret) and a saved one that survives a restart.
#![allow(clippy::unwrap_used)]
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_headend")
}

fn udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[path = "support/logproc.rs"]
mod logproc;
use logproc::{http_get, Proc};

/// Runs `headend <words> --socket <sock>`: (exit code, stdout, stderr).
fn cli(sock: &Path, words: &str) -> (i32, String, String) {
    let mut w: Vec<&str> = words.split_whitespace().collect();
    let verb = w.remove(0);
    let o = Command::new(bin())
        .arg(verb)
        .arg("--socket")
        .arg(sock)
        .args(&w)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

fn ok(sock: &Path, words: &str) -> String {
    let (code, out, err) = cli(sock, words);
    assert_eq!(code, 0, "`{words}` failed: {out}{err}");
    out
}

#[test]
fn operator_cli_shows_state_and_commits_settings_that_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("headend-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (ike, natt, dns, repl, memb) = (udp_port(), udp_port(), udp_port(), tcp_port(), tcp_port());
    let conf = dir.join("headend.toml");
    std::fs::write(
        &conf,
        format!(
            r#"# operator's own comment: must survive commit
[ike]
listen = ["127.0.0.1"]
port = {ike}
natt_port = {natt}
[psk]
default = "cli-test-psk"
[pool]
v4 = "10.98.0.0/24"
[dns]
listen = ["127.0.0.1"]
port = {dns}
[[dns.ns]]
name = "ns1"
addrs = ["127.0.0.1"]
[service.ipsec-ddns]
self = "127.0.0.1"
secret = "cli-cluster-secret"
domain = "cli.test"
enable = true
data_dir = "{}"
replication_port = {repl}
membership_port = {memb}
[log]
level = "info" # trailing comment kept too
# Not an address of this host: `--metrics` must override it or the daemon cannot start.
[metrics]
listen = "192.0.2.1:9400"
"#,
            dir.join("state").display()
        ),
    )
    .unwrap();
    let sock = dir.join("control.sock");
    let metrics = format!("127.0.0.1:{}", tcp_port());
    let run = |name: &str| {
        let p = Proc::run(&conf, &sock, &metrics, &[], dir.join(name));
        p.wait_for("authoritative DNS server listening");
        let end = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < end, "no control socket:\n{}", p.text());
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    };
    let he = run("run1.log");
    assert!(he.text().contains("Creating new ipsec-ddns cluster"));
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket is owner-only");

    // show cluster: this member, up, itself.
    let out = ok(&sock, "show cluster");
    let me = out.lines().find(|l| l.starts_with("127.0.0.1")).unwrap();
    assert!(me.contains("up") && me.contains("self"), "{out}");

    // A router comes up: show vpn ipsec sa and show dns records list it.
    let pc = dir.join("peer.toml");
    std::fs::write(
        &pc,
        format!(
            "[ike]\ndpd_delay = \"1s\"\n[psk]\ndefault = \"cli-test-psk\"\n[peer]\nlocal_id = \"SN-42\"\nheadends = [{{ addr = \"127.0.0.1:{ike}\", natt_port = {natt} }}]\nbind = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let peer = Proc::spawn(
        &["peer", "--config", pc.to_str().unwrap()],
        &[],
        dir.join("peer.log"),
    );
    peer.wait_for("up SN-42");
    let sa = ok(&sock, "show vpn ipsec sa");
    let row = sa
        .lines()
        .find(|l| l.contains("SN-42"))
        .unwrap_or_else(|| panic!("{sa}"));
    assert!(row.starts_with("127.0.0.1:"), "peer address first: {row}");
    assert!(row.contains("10.98.0."), "virtual IP: {row}");
    assert!(
        row.matches("127.0.0.1").count() >= 2,
        "member column: {row}"
    );
    assert!(sa.contains("1 tunnel(s)"), "{sa}");
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let rec = ok(&sock, "show dns records");
        if rec.contains("SN-42.cli.test") && rec.contains("10.98.0.") {
            break;
        }
        assert!(Instant::now() < end, "{rec}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Prometheus metrics: the tunnel, the cluster view, DNS queries by rcode.
    let m = http_get(&metrics, "/metrics");
    assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
    assert!(m.contains("\nheadend_tunnels_up 1\n"), "{m}");
    assert!(m.contains("\nheadend_ike_sa_setups_total 1\n"), "{m}");
    assert!(
        m.contains("headend_cluster_member_up{member=\"127.0.0.1\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("headend_cluster_member_records{member=\"127.0.0.1\"} 1"),
        "{m}"
    );
    assert!(m.contains("\nheadend_cluster_names_up 1\n"), "{m}");
    assert!(
        m.contains("\nheadend_cluster_tunnels_up{member=\"127.0.0.1\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("headend_cluster_dns_queries_total{member=\"127.0.0.1\",rcode=\"nxdomain\"}"),
        "{m}"
    );
    assert!(
        m.contains("headend_dns_queries_total{rcode=\"nxdomain\"}"),
        "{m}"
    );
    assert!(http_get(&metrics, "/other").starts_with("HTTP/1.1 404"));

    // A short secret is refused with the seed's rule, nothing saved.
    let before = std::fs::read_to_string(&conf).unwrap();
    ok(&sock, "set service ipsec-ddns secret short");
    let (code, _, err) = cli(&sock, "commit");
    assert_eq!(code, 1);
    assert!(err.contains("at least 8 characters"), "{err}");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), before);

    // Unknown settings and commands are errors naming them.
    let (code, _, err) = cli(&sock, "set service ipsec-ddns colour red");
    assert_eq!(code, 1);
    assert!(err.contains("colour"), "{err}");
    let (code, _, _) = cli(&sock, "show nonsense");
    assert_eq!(code, 1);

    // A good change is saved, the rest of the file kept.
    ok(&sock, "set service ipsec-ddns secret a-much-longer-secret");
    ok(&sock, "set service ipsec-ddns peer 127.0.0.9");
    let out = ok(&sock, "commit");
    assert!(out.contains("Saved"), "{out}");
    let after = std::fs::read_to_string(&conf).unwrap();
    assert!(
        after.starts_with("# operator's own comment: must survive commit\n[ike]\n"),
        "{after}"
    );
    assert!(
        after.contains("level = \"info\" # trailing comment kept too"),
        "{after}"
    );
    assert!(after.contains("a-much-longer-secret"), "{after}");
    let shown = ok(&sock, "show service ipsec-ddns");
    assert!(shown.contains("peer 127.0.0.9"), "{shown}");
    assert!(
        shown.contains("domain cli.test") && shown.contains("enable"),
        "{shown}"
    );
    assert!(
        !shown.contains("a-much-longer-secret"),
        "secret hidden: {shown}"
    );

    // delete, commit, then a restart reads the saved file.
    ok(&sock, "delete service ipsec-ddns peer 127.0.0.9");
    ok(&sock, "set service ipsec-ddns peer 127.0.0.8");
    ok(&sock, "commit");
    drop(peer);
    drop(he);
    let _ = std::fs::remove_file(&sock);
    let _he = run("run2.log");
    let shown = ok(&sock, "show service ipsec-ddns");
    assert!(
        shown.contains("peer 127.0.0.8") && !shown.contains("127.0.0.9"),
        "{shown}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_without_a_daemon_says_so() {
    let (code, _, err) = cli(Path::new("/nonexistent/headend.sock"), "show cluster");
    assert_ne!(code, 0);
    assert!(err.contains("control socket"), "{err}");
}

/// A daemon on 127.0.0.`m` whose `[service.ipsec-ddns]` is configured but not enabled,
/// serving DNS on 127.0.0.`m`:`dns` and metrics on 127.0.0.`m`:`metrics`; returns
/// (process, its socket, its configuration file, its IKE and NAT-T ports).
fn member(
    dir: &Path,
    m: u8,
    secret: &str,
    extra: &str,
    (repl, memb, metrics, dns): (u16, u16, u16, u16),
) -> (Proc, PathBuf, PathBuf, (u16, u16)) {
    let (ike, natt) = (udp_port(), udp_port());
    let conf = dir.join(format!("m{m}.toml"));
    std::fs::write(
        &conf,
        format!(
            r#"[ike]
listen = ["127.0.0.{m}"]
port = {ike}
natt_port = {natt}
[psk]
default = "cli-test-psk"
[pool]
v4 = "10.97.{m}.0/24"
[dns]
listen = ["127.0.0.{m}"]
port = {dns}
domain = "commit.test"
[[dns.ns]]
name = "ns{m}"
addrs = ["127.0.0.{m}"]
[service.ipsec-ddns]
self = "127.0.0.{m}"
secret = "{secret}"
domain = "commit.test"
data_dir = "{}"
replication_port = {repl}
membership_port = {memb}
{extra}
[metrics]
listen = "127.0.0.{m}:{metrics}"
"#,
            dir.join(format!("data{m}")).display()
        ),
    )
    .unwrap();
    let sock = dir.join(format!("m{m}.sock"));
    let p = Proc::spawn(
        &[
            "run",
            "--config",
            conf.to_str().unwrap(),
            "--control",
            sock.to_str().unwrap(),
        ],
        &[],
        dir.join(format!("m{m}.log")),
    );
    let end = Instant::now() + Duration::from_secs(15);
    while !sock.exists() {
        assert!(Instant::now() < end, "no control socket:\n{}", p.text());
        std::thread::sleep(Duration::from_millis(50));
    }
    (p, sock, conf, (ike, natt))
}

#[test]
fn commit_starts_joins_and_refuses_the_cluster_in_a_running_daemon() {
    let dir = std::env::temp_dir().join(format!("headend-commit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ports = (tcp_port(), tcp_port(), tcp_port(), udp_port());
    let metrics = |m: u8| format!("127.0.0.{m}:{}", ports.2);
    let secret = "commit-cluster-secret";

    // First member: enabling it in the running daemon creates the cluster.
    let (_m1, s1, c1, (ike, natt)) = member(&dir, 1, secret, "", ports);
    let (code, _, err) = cli(&s1, "show cluster");
    assert_eq!(code, 1, "not enabled yet");
    assert!(err.contains("not enabled"), "{err}");
    // A router already up before the cluster is enabled gets published by the commit.
    let pc = dir.join("peer.toml");
    std::fs::write(
        &pc,
        format!(
            "[psk]\ndefault = \"cli-test-psk\"\n[peer]\nlocal_id = \"SN-77\"\nheadends = [{{ addr = \"127.0.0.1:{ike}\", natt_port = {natt} }}]\nbind = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let router = Proc::spawn(
        &["peer", "--config", pc.to_str().unwrap()],
        &[],
        dir.join("peer.log"),
    );
    router.wait_for("up SN-77");
    ok(&s1, "set service ipsec-ddns enable");
    let out = ok(&s1, "commit");
    assert!(out.contains("Creating new ipsec-ddns cluster"), "{out}");
    assert!(std::fs::read_to_string(&c1)
        .unwrap()
        .contains("enable = true"));
    let shown = ok(&s1, "show cluster");
    assert!(shown.contains("127.0.0.1"), "{shown}");

    // Second member joins through the first.
    let (mut m2, s2, c2, _) = member(&dir, 2, secret, "", ports);
    ok(&s2, "set service ipsec-ddns peer 127.0.0.1");
    ok(&s2, "set service ipsec-ddns enable");
    let out = ok(&s2, "commit");
    assert!(out.contains("Joined existing ipsec-ddns cluster"), "{out}");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let shown = ok(&s2, "show cluster");
        let one = shown.lines().find(|l| l.starts_with("127.0.0.1 "));
        if one.is_some_and(|l| l.contains("up")) {
            break;
        }
        assert!(
            Instant::now() < end,
            "member 1 not up on member 2:\n{shown}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The router's record, published by member 1's commit, is replicated to member 2.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let rec = ok(&s2, "show dns records");
        if rec
            .lines()
            .any(|l| l.contains("SN-77") && l.contains("10.97.1."))
        {
            break;
        }
        assert!(Instant::now() < end, "no SN-77 on member 2:\n{rec}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The cluster-wide view: figures produced on member 1 (its router's tunnel and
    // setup, a failed negotiation) are shown by member 2's CLI and metrics.
    let rogue_conf = dir.join("rogue.toml");
    std::fs::write(
        &rogue_conf,
        format!(
            "[psk]\ndefault = \"not-the-psk\"\n[peer]\nlocal_id = \"ROGUE-1\"\nheadends = [{{ addr = \"127.0.0.1:{ike}\", natt_port = {natt} }}]\nbind = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let rogue = Proc::spawn(
        &["peer", "--config", rogue_conf.to_str().unwrap()],
        &[],
        dir.join("rogue.log"),
    );
    // A name member 1 does not know: NXDOMAIN, counted on member 1.
    assert_eq!(
        dns_rcode(&format!("127.0.0.1:{}", ports.3), "nobody.commit.test"),
        3,
        "NXDOMAIN from member 1"
    );
    let figure = |table: &str, row: &str, col: usize| -> Option<String> {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(row))
            .and_then(|l| l.split_whitespace().nth(col).map(str::to_owned))
    };
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let st = ok(&s2, "show cluster statistics");
        let head: Vec<&str> = st.lines().next().unwrap().split_whitespace().collect();
        let c1 = head.iter().position(|h| *h == "127.0.0.1").unwrap();
        let failed = figure(&st, "ike_sa_failures_total", c1).and_then(|v| v.parse::<u64>().ok());
        let nx = figure(&st, "dns_queries_total{rcode=nxdomain}", c1)
            .and_then(|v| v.parse::<u64>().ok());
        if figure(&st, "tunnels_up", c1).as_deref() == Some("1")
            && nx.is_some_and(|n| n >= 1)
            && figure(&st, "ike_sa_setups_total", c1).as_deref() == Some("1")
            && failed.is_some_and(|n| n >= 1)
        {
            // Member 2 terminates nothing itself.
            let c2 = head.iter().position(|h| *h == "127.0.0.2").unwrap();
            assert_eq!(figure(&st, "tunnels_up", c2).as_deref(), Some("0"), "{st}");
            assert_eq!(figure(&st, "state", c1).as_deref(), Some("up"), "{st}");
            break;
        }
        assert!(
            Instant::now() < end,
            "member 1's figures not on member 2:\n{st}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(rogue);
    let shown = ok(&s2, "show cluster");
    let row1 = shown.lines().find(|l| l.starts_with("127.0.0.1 ")).unwrap();
    assert_eq!(
        row1.split_whitespace().last(),
        Some("1"),
        "tunnels column: {shown}"
    );
    let m = http_get(&metrics(2), "/metrics");
    assert!(
        m.contains("\nheadend_cluster_tunnels_up{member=\"127.0.0.1\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("\nheadend_cluster_ike_sa_setups_total{member=\"127.0.0.1\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("\nheadend_cluster_tunnels_up{member=\"127.0.0.2\"} 0\n"),
        "{m}"
    );
    let nx: u64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "headend_cluster_dns_queries_total{member=\"127.0.0.1\",rcode=\"nxdomain\"} ",
            )
        })
        .unwrap_or_else(|| panic!("{m}"))
        .parse()
        .unwrap();
    assert!(nx >= 1, "{m}");

    // Third member with a wrong secret: refused, nothing saved, nothing running.
    let (_m3, s3, c3, _) = member(&dir, 3, "a-wrong-secret", "", ports);
    let before = std::fs::read_to_string(&c3).unwrap();
    ok(&s3, "set service ipsec-ddns peer 127.0.0.1");
    ok(&s3, "set service ipsec-ddns enable");
    let (code, out, err) = cli(&s3, "commit");
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("wrong ipsec-ddns secret"), "{err}");
    assert!(!out.contains("Creating new"), "{out}");
    assert_eq!(std::fs::read_to_string(&c3).unwrap(), before);
    let (code, _, err) = cli(&s3, "show cluster");
    assert_eq!(code, 1, "no member runs after a refusal: {err}");

    // Fourth member: its only peer is unreachable and it must not create a cluster.
    let (_m4, s4, c4, _) = member(&dir, 4, secret, "bootstrap = false\n", ports);
    let before = std::fs::read_to_string(&c4).unwrap();
    ok(&s4, "set service ipsec-ddns peer 127.0.0.9");
    ok(&s4, "set service ipsec-ddns enable");
    let (code, out, err) = cli(&s4, "commit");
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("127.0.0.9") && err.contains("unreachable"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&c4).unwrap(), before);

    // The member started by the commit is the one every view shows: the member column
    // of `show vpn ipsec sa`, and the cluster series of its metrics (both members).
    let member_col = |sock: &Path| {
        let sa = ok(sock, "show vpn ipsec sa");
        let row = sa
            .lines()
            .find(|l| l.contains("SN-77"))
            .unwrap_or_else(|| panic!("{sa}"));
        row.split_whitespace().nth(4).unwrap().to_string()
    };
    assert_eq!(member_col(&s1), "127.0.0.1");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let m = http_get(&metrics(1), "/metrics");
        if m.contains("headend_cluster_member_up{member=\"127.0.0.1\"} 1")
            && m.contains("headend_cluster_member_up{member=\"127.0.0.2\"} 1")
            && m.contains("headend_replication_lag_seconds{member=\"127.0.0.2\"}")
            && m.contains("headend_cluster_member_records{member=\"127.0.0.1\"} 1")
        {
            break;
        }
        assert!(
            Instant::now() < end,
            "commit-started member not in metrics:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The first member leaves: stopped, saved, and its views follow (its tunnel is
    // local now, no cluster series).
    ok(&s1, "delete service ipsec-ddns enable");
    let out = ok(&s1, "commit");
    assert!(out.contains("Left ipsec-ddns cluster"), "{out}");
    let (code, _, _) = cli(&s1, "show cluster");
    assert_eq!(code, 1, "no member runs after leaving");
    assert!(!std::fs::read_to_string(&c1).unwrap().contains("enable"));
    assert_eq!(member_col(&s1), "local", "member column after leaving");
    let m = http_get(&metrics(1), "/metrics");
    assert!(m.contains("\nheadend_tunnels_up 1\n"), "{m}");
    assert!(!m.contains("headend_cluster_member_up"), "{m}");

    // SIGTERM stops the member a commit started (state on disk), and the daemon exits 0.
    let pid = m2.0.id().to_string();
    let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(st.success());
    let end = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(st) = m2.0.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            Instant::now() < end,
            "no exit after SIGTERM:\n{}",
            m2.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0), "{}", m2.text());
    let log = m2.text();
    assert!(
        log.contains("ipsec-ddns member stopped") && log.contains("127.0.0.2"),
        "{log}"
    );
    assert!(std::fs::read_to_string(&c2)
        .unwrap()
        .contains("enable = true"));
    drop(router);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The label `headend gateway-id` prints for an identity.
fn gateway_id(identity: &str) -> String {
    let o = Command::new(bin())
        .args(["gateway-id", "--", identity])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `[log] format = "json"`: one JSON object per line, and the tunnel up, down and failure
/// lines carry the peer, the identity and the gateway ID as fields of their own.
#[test]
fn json_logs_carry_peer_identity_and_gateway_id_on_tunnel_lines() {
    let dir = std::env::temp_dir().join(format!("headend-jsonlog-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (ike, natt) = (udp_port(), udp_port());
    let conf = dir.join("headend.toml");
    std::fs::write(
        &conf,
        format!(
            "[ike]\nlisten = [\"127.0.0.1\"]\nport = {ike}\nnatt_port = {natt}\n[psk]\ndefault = \"json-log-psk\"\n[pool]\nv4 = \"10.96.0.0/24\"\n[log]\nformat = \"json\"\nlevel = \"info\"\n"
        ),
    )
    .unwrap();
    let he = Proc::spawn(
        &["run", "--config", conf.to_str().unwrap(), "--no-control"],
        &[],
        dir.join("he.log"),
    );
    he.wait_for("headend responder listening");
    let peer = |id: &str, psk: &str| {
        let pc = dir.join(format!("{id}.toml"));
        std::fs::write(
            &pc,
            format!(
                "[psk]\ndefault = \"{psk}\"\n[peer]\nlocal_id = \"{id}\"\nheadends = [{{ addr = \"127.0.0.1:{ike}\", natt_port = {natt} }}]\nbind = \"127.0.0.1:0\"\n"
            ),
        )
        .unwrap();
        Proc::spawn(
            &["peer", "--config", pc.to_str().unwrap()],
            &[],
            dir.join(format!("{id}.log")),
        )
    };
    let good = peer("branch.router-7", "json-log-psk");
    good.wait_for("up branch.router-7");
    let bad = peer("rogue.router", "not-the-psk");

    // Every line is a JSON object; find the tunnel lines by message.
    let find = |msg: &str, id: &str| -> Option<serde_json::Value> {
        he.text()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
            })
            .find(|v| v["message"] == msg && v["identity"] == id)
    };
    let wait = |msg: &str, id: &str| {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = find(msg, id) {
                return v;
            }
            assert!(
                Instant::now() < end,
                "no \"{msg}\" for {id}:\n{}",
                he.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let up = wait("IKE SA established", "branch.router-7");
    assert_eq!(
        up["gateway_id"],
        gateway_id("branch.router-7").as_str(),
        "{up}"
    );
    assert!(
        up["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{up}"
    );
    assert_eq!(up["level"], "INFO", "{up}");

    let failed = wait("negotiation failed", "rogue.router");
    assert_eq!(
        failed["gateway_id"],
        gateway_id("rogue.router").as_str(),
        "{failed}"
    );
    assert!(
        failed["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{failed}"
    );
    assert!(failed["reason"].is_string(), "{failed}");
    drop(bad);

    // The router leaves (SIGTERM: it deletes its IKE SA): the down line.
    let st = Command::new("kill")
        .args(["-TERM", &good.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let down = wait("IKE SA deleted", "branch.router-7");
    assert_eq!(down["gateway_id"], up["gateway_id"], "{down}");
    assert_eq!(down["peer"], up["peer"], "{down}");
    drop(he);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends one A query over UDP and returns the response code of the answer.
fn dns_rcode(server: &str, name: &str) -> u8 {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(&q, server).unwrap();
    let mut buf = [0u8; 1500];
    let n = s.recv(&mut buf).unwrap();
    assert!(n >= 12 && buf[..2] == [0x12, 0x34], "not our answer");
    buf[3] & 0x0f
}
