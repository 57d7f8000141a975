//! strongSwan's charon (kernel-libipsec: userspace ESP on its own TUN, always
//! UDP-encapsulated) as a peer router against `headend run` with the userspace ESP data
//! plane, each in a network namespace this test creates: the router pings and runs
//! iperf3 to an inside address behind the head-end, and the traffic is counted by the
//! head-end's data plane. Needs root, strongSwan, iproute2, ping and iperf3 (tests/run.sh
//! installs them); missing tools FAIL.
#![allow(clippy::unwrap_used)]
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::charon::{Charon, Conn};
use support::headend::{child_sas, ChildRow, Headend, HeadendConf};
use support::netns::{Direct, INSIDE_ADDR};
use support::{require_tool, TestCtx};

const PSK: &str = "esp-interop-psk-7c21";
const POOL: &str = "10.99.0.0/24";

#[test]
fn esp_strongswan_peer_pings_and_iperf3s_through_headend_run() {
    let ping = require_tool("ping", "iputils-ping");
    let iperf = require_tool("iperf3", "iperf3");
    let ctx = TestCtx::new("esp-strongswan");
    let net = Direct::new(&ctx);
    let he_addr = net.he_addr.to_string();
    let peer_addr = net.peer_addr.to_string();
    let mut hc = HeadendConf::responder(&he_addr, PSK, POOL);
    hc.local_id = "headend.test".into();
    hc.esp_proposals = vec!["aes256gcm16".into()];
    hc.extra = "[dataplane]\ntun_name = \"he0\"\nqueues = 1\n".into();
    let he = Headend::run(&ctx, Some(&net.he), "headend", &hc);

    let charon = Charon::start(&ctx, &net.peer, "peer");
    let mut conn = Conn::initiator("net", &peer_addr, &he_addr, "router-1.example");
    conn.remote_id = Some("headend.test".into());
    let sa = charon.connect_psk(&ctx, conn, PSK, Duration::from_secs(10));
    let vip = sa
        .local_vips
        .first()
        .cloned()
        .expect("charon got a virtual IP");
    assert_eq!(sa.children[0].encr_alg, "AES_GCM_16");
    assert_eq!(sa.children[0].encr_keysize, "256");

    // Ping from the router's virtual IP to the inside address, through both ESP stacks.
    let mut ok = false;
    for _ in 0..10 {
        let o = net.peer.exec(&[
            ping.to_str().unwrap(),
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            "-I",
            &vip,
            INSIDE_ADDR,
        ]);
        if o.ok() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        ok,
        "no ping from charon's VIP {vip} to {INSIDE_ADDR} through headend:\n{}",
        he.log_text()
    );

    // TCP both ways across the tunnel.
    let iperf = iperf.to_str().unwrap();
    let mut srv = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.he.name,
            iperf,
            "-s",
            "-1",
            "-B",
            INSIDE_ADDR,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = net.peer.exec_timeout(
        &[iperf, "-c", INSIDE_ADDR, "-B", &vip, "-t", "3", "-J"],
        Duration::from_secs(30),
    );
    let _ = srv.kill();
    let _ = srv.wait();
    assert!(
        out.ok(),
        "iperf3 through charon -> headend failed:\n{}",
        out.all()
    );
    let json = out.stdout;
    let at = json.find("\"sum_received\"").expect("iperf3 JSON");
    let rest = &json[at..];
    let k = rest.find("\"bits_per_second\"").unwrap() + "\"bits_per_second\"".len();
    let bps: f64 = rest[k..]
        .trim_start_matches(|c: char| c == ':' || c.is_whitespace())
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        .collect::<String>()
        .parse()
        .unwrap();
    assert!(bps > 1e6, "charon -> headend carried only {bps} bit/s");
    eprintln!(
        "charon (kernel-libipsec) -> headend run: {:.2} Gbit/s",
        bps / 1e9
    );
}

/// Issue 3: the same with IPv6 outer addresses. charon (kernel-libipsec, which always
/// UDP-encapsulates) reaches `headend run` on fd00:e7::1; its IPv4 virtual IP pings the
/// inside address through ESP in UDP over IPv6, and the head-end pings it back.
#[test]
fn esp_strongswan_peer_over_ipv6_outer_addresses_pings_both_ways() {
    use support::netns::Netns;
    let ping = require_tool("ping", "iputils-ping");
    let ping = ping.to_str().unwrap();
    let ctx = TestCtx::new("esp-strongswan-v6");
    let he_ns = Netns::new(&ctx, "h");
    let pr_ns = Netns::new(&ctx, "p");
    let (he_addr, peer_addr) = ("fd00:e7::1", "fd00:e7::2");
    he_ns.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &pr_ns.name,
    ]);
    he_ns.ip(&["-6", "addr", "add", "fd00:e7::1/64", "dev", "eth0", "nodad"]);
    pr_ns.ip(&["-6", "addr", "add", "fd00:e7::2/64", "dev", "eth0", "nodad"]);
    he_ns.ip(&["link", "set", "eth0", "up"]);
    pr_ns.ip(&["link", "set", "eth0", "up"]);
    he_ns.add_lo_addr(&format!("{INSIDE_ADDR}/16"));

    let mut hc = HeadendConf::responder(he_addr, PSK, POOL);
    hc.local_id = "headend.test".into();
    hc.esp_proposals = vec!["aes256gcm16".into()];
    hc.extra = "[dataplane]\ntun_name = \"he0\"\nqueues = 1\n".into();
    let he = Headend::run(&ctx, Some(&he_ns), "headend", &hc);

    let charon = Charon::start(&ctx, &pr_ns, "peer");
    let mut conn = Conn::initiator("net", peer_addr, he_addr, "router-6.example");
    conn.remote_id = Some("headend.test".into());
    let sa = charon.connect_psk(&ctx, conn, PSK, Duration::from_secs(10));
    let vip = sa
        .local_vips
        .first()
        .cloned()
        .expect("charon got a virtual IP");

    let mut ok = false;
    for _ in 0..10 {
        let o = pr_ns.exec(&[
            ping,
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            "-I",
            &vip,
            INSIDE_ADDR,
        ]);
        if o.ok() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        ok,
        "no ping from charon's VIP {vip} to {INSIDE_ADDR} over IPv6 outer:\n{}\n{}",
        he.log_text(),
        charon.log_text()
    );
    let back = he_ns.exec(&[
        ping,
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "2",
        "-I",
        INSIDE_ADDR,
        &vip,
    ]);
    assert!(
        back.ok(),
        "no ping from {INSIDE_ADDR} back to charon's VIP {vip}:\n{}",
        back.all()
    );
}

/// Issue 3, RFC 4301 4.4.1 / 5.1: a router with two CHILD SAs to the same inside subnet,
/// one for TCP port 5201 (iperf3) and one for ICMP (charon: two children of one
/// connection, the second negotiated with CREATE_CHILD_SA, RFC 7296 1.3.1). Both are
/// installed, iperf3 (both directions) and pings (both directions) get through, and
/// `show vpn ipsec sa detail` shows the TCP bytes on the TCP child's SA and the pings on
/// the ICMP child's.
#[test]
fn esp_strongswan_two_children_to_one_subnet_each_carry_their_own_protocol() {
    use support::iperf::{iperf3_in, received_bytes};
    use support::netns::INSIDE_NET;
    let ping = require_tool("ping", "iputils-ping");
    let ping = ping.to_str().unwrap();
    let ctx = TestCtx::new("esp-strongswan-split");
    let net = Direct::new(&ctx);
    let he_addr = net.he_addr.to_string();
    let mut hc = HeadendConf::responder(&he_addr, PSK, POOL);
    hc.esp_proposals = vec!["aes256gcm16".into()];
    hc.extra = "[dataplane]\ntun_name = \"he0\"\nqueues = 1\n".into();
    let control = ctx.path("control.sock");
    let control_arg = control.display().to_string();
    let he = Headend::run_with(
        &ctx,
        Some(&net.he),
        "headend",
        &hc,
        &["--control", &control_arg],
    );

    let charon = Charon::start(&ctx, &net.peer, "peer");
    let mut conn = Conn::initiator(
        "tcp",
        &net.peer_addr.to_string(),
        &he_addr,
        "router-split.example",
    );
    conn.remote_id = Some("headend.test".into());
    conn.remote_ts = Some(format!("{INSIDE_NET}[tcp/5201]"));
    conn.more_children = vec![(
        "icmp".into(),
        vec![("remote_ts".into(), format!("{INSIDE_NET}[icmp]"))],
    )];
    charon.connect_psk(&ctx, conn, PSK, Duration::from_secs(10));
    // The IKE SA is up: this one is a CREATE_CHILD_SA on it.
    charon.initiate_ok("icmp");
    let both = || {
        charon.list_sas().into_iter().find(|s| {
            s.name == "tcp" && s.children.iter().filter(|c| c.state == "INSTALLED").count() == 2
        })
    };
    let sa = support::try_wait_for(Duration::from_secs(10), both).unwrap_or_else(|| {
        panic!(
            "charon: not both children installed: {:#?}\n{}",
            charon.list_sas(),
            he.log_text()
        )
    });
    let vip = sa
        .local_vips
        .first()
        .cloned()
        .expect("charon got a virtual IP");

    // Pings both ways: the ICMP child (the TCP child would refuse them).
    let pings = |ns: &support::netns::Netns, from: &str, to: &str| {
        ns.exec(&[ping, "-c", "5", "-i", "0.2", "-W", "2", "-I", from, to])
            .ok()
    };
    let ok = (0..10).any(|_| {
        pings(&net.peer, &vip, INSIDE_ADDR) || {
            std::thread::sleep(Duration::from_millis(300));
            false
        }
    });
    assert!(
        ok,
        "no ping from {vip} to {INSIDE_ADDR} on the ICMP child:\n{}",
        he.log_text()
    );
    assert!(
        pings(&net.he, INSIDE_ADDR, &vip),
        "no ping from {INSIDE_ADDR} back to {vip} on the ICMP child:\n{}",
        he.log_text()
    );

    // iperf3 (TCP port 5201) up and down: the TCP child, which the ICMP child (the
    // newer SA to the same virtual IP) must not shadow.
    let (up_json, up_ok) = iperf3_in(
        &net.he,
        &net.peer,
        &vip,
        &["-t", "2", "--connect-timeout", "5000"],
        || {},
    );
    assert!(
        up_ok,
        "iperf3 router -> inside failed:\n{up_json}\n{}",
        he.log_text()
    );
    let (down_json, down_ok) = iperf3_in(
        &net.he,
        &net.peer,
        &vip,
        &["-t", "2", "-R", "--connect-timeout", "5000"],
        || {},
    );
    assert!(
        down_ok,
        "iperf3 inside -> router failed:\n{down_json}\n{}",
        he.log_text()
    );
    let (up, down) = (
        received_bytes(&up_json) as u64,
        received_bytes(&down_json) as u64,
    );
    assert!(
        up > 1_000_000 && down > 1_000_000,
        "iperf3 carried {up}/{down} bytes"
    );

    let tcp_ts = format!("{INSIDE_NET}[tcp/5201]");
    let icmp_ts = format!("{INSIDE_NET}[icmp]");
    let (detail, rows) = child_sas(&control);
    assert_eq!(rows.len(), 2, "{detail}");
    // The log names each CHILD SA's selectors as negotiated.
    let log = he.log_text();
    let installed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CHILD SA installed") && l.contains("headend::run"))
        .filter_map(|l| support::headend::field(l, "local_ts"))
        .collect();
    assert_eq!(installed, vec![tcp_ts.as_str(), icmp_ts.as_str()], "{log}");
    let tcp = ChildRow::find(&rows, &tcp_ts, &detail);
    let icmp = ChildRow::find(&rows, &icmp_ts, &detail);
    // Inner IP bytes: at least the TCP payload each way, on the TCP child's SA.
    assert!(
        tcp.bytes.0 >= up && tcp.bytes.1 >= down,
        "TCP child {:?}, iperf3 {up}/{down}:\n{detail}",
        tcp.bytes
    );
    // The ten echo requests and ten replies each way (84 octets), and nothing of the
    // iperf3 run, on the ICMP child's SA.
    assert!(
        icmp.packets.0 >= 10 && icmp.packets.1 >= 10,
        "ICMP child packets {:?}:\n{detail}",
        icmp.packets
    );
    assert!(
        icmp.bytes.0 < 100_000 && icmp.bytes.1 < 100_000,
        "ICMP child bytes {:?}:\n{detail}",
        icmp.bytes
    );
    assert!(
        tcp.packets.0 > 10 * icmp.packets.0 && tcp.packets.1 > 10 * icmp.packets.1,
        "{detail}"
    );

    // charon rekeys the TCP child (CREATE_CHILD_SA with REKEY_SA, RFC 7296 2.8; the
    // head-end answers, so the old SA carries TCP until charon deletes it): the new SA
    // takes exactly the TCP child's place, the ICMP child keeps its SA, and both still
    // carry their own traffic.
    let r = charon.rekey("child", "tcp");
    assert!(r.ok(), "swanctl --rekey --child tcp: {}", r.all());
    let rekeyed = support::try_wait_for(Duration::from_secs(10), || {
        let (d, rows) = child_sas(&control);
        let new_tcp = rows.iter().find(|r| r.local_ts.ends_with(&tcp_ts))?;
        (rows.len() == 2 && new_tcp.spis != tcp.spis).then_some(d)
    });
    let rekeyed = rekeyed.unwrap_or_else(|| {
        panic!(
            "the TCP child was not rekeyed on the head-end:\n{}\n{}",
            child_sas(&control).0,
            he.log_text()
        )
    });
    let (up2_json, up2_ok) = iperf3_in(
        &net.he,
        &net.peer,
        &vip,
        &["-t", "1", "--connect-timeout", "5000"],
        || {},
    );
    assert!(
        up2_ok,
        "iperf3 after the TCP child's rekey failed:\n{up2_json}\n{rekeyed}\n{}",
        he.log_text()
    );
    let up2 = received_bytes(&up2_json) as u64;
    assert!(
        pings(&net.peer, &vip, INSIDE_ADDR),
        "no ping on the ICMP child after the TCP child's rekey:\n{rekeyed}"
    );
    let (detail, rows) = child_sas(&control);
    assert_eq!(rows.len(), 2, "{detail}");
    let tcp2 = ChildRow::find(&rows, &tcp_ts, &detail);
    let icmp2 = ChildRow::find(&rows, &icmp_ts, &detail);
    assert_eq!(
        icmp2.spis, icmp.spis,
        "the ICMP child's SA stays:\n{detail}"
    );
    assert!(
        tcp2.bytes.0 >= up2,
        "the new TCP SA carried {:?}, iperf3 {up2}:\n{detail}",
        tcp2.bytes
    );
    assert!(
        icmp2.packets.0 >= icmp.packets.0 + 5 && icmp2.bytes.0 < 100_000,
        "ICMP child {:?} -> {:?}:\n{detail}",
        icmp.packets,
        icmp2.packets
    );
}

/// RFC 7296 2.9 with a port-narrowed `[ike] local_ts`: the head-end offers only TCP port
/// 5201 to the inside network. charon asks for the whole network and gets the narrowed
/// selector (`swanctl --list-sas`); iperf3 (TCP 5201) flows both ways on it, pings in
/// either direction do not (not even into the head-end's SA: its packet counters stay).
#[test]
fn esp_strongswan_peer_gets_a_port_narrowed_local_ts_and_only_that_traffic_flows() {
    use support::iperf::{iperf3_in, received_bytes};
    use support::netns::INSIDE_NET;
    let ping = require_tool("ping", "iputils-ping");
    let ping = ping.to_str().unwrap();
    let ctx = TestCtx::new("esp-strongswan-narrowed");
    let net = Direct::new(&ctx);
    let he_addr = net.he_addr.to_string();
    let tcp_ts = format!("{INSIDE_NET}[tcp/5201]");
    let mut hc = HeadendConf::responder(&he_addr, PSK, POOL);
    hc.local_ts = vec![tcp_ts.clone()];
    hc.esp_proposals = vec!["aes256gcm16".into()];
    hc.extra = "[dataplane]\ntun_name = \"he0\"\nqueues = 1\n".into();
    let control = ctx.path("control.sock");
    let control_arg = control.display().to_string();
    let he = Headend::run_with(
        &ctx,
        Some(&net.he),
        "headend",
        &hc,
        &["--control", &control_arg],
    );

    let charon = Charon::start(&ctx, &net.peer, "peer");
    let mut conn = Conn::initiator(
        "net",
        &net.peer_addr.to_string(),
        &he_addr,
        "router-narrow.example",
    );
    conn.remote_id = Some("headend.test".into());
    assert_eq!(conn.remote_ts.as_deref(), Some(INSIDE_NET));
    let sa = charon.connect_psk(&ctx, conn, PSK, Duration::from_secs(10));
    let vip = sa
        .local_vips
        .first()
        .cloned()
        .expect("charon got a virtual IP");
    assert_eq!(sa.children.len(), 1, "{sa:#?}");
    assert_eq!(sa.children[0].remote_ts, vec![tcp_ts.clone()], "{sa:#?}");
    assert_eq!(
        sa.children[0].local_ts,
        vec![format!("{vip}/32")],
        "{sa:#?}"
    );

    let (up_json, up_ok) = iperf3_in(
        &net.he,
        &net.peer,
        &vip,
        &["-t", "2", "--connect-timeout", "5000"],
        || {},
    );
    assert!(
        up_ok,
        "iperf3 router -> inside failed:\n{up_json}\n{}",
        he.log_text()
    );
    let (down_json, down_ok) = iperf3_in(
        &net.he,
        &net.peer,
        &vip,
        &["-t", "2", "-R", "--connect-timeout", "5000"],
        || {},
    );
    assert!(down_ok, "iperf3 inside -> router failed:\n{down_json}");
    let (up, down) = (
        received_bytes(&up_json) as u64,
        received_bytes(&down_json) as u64,
    );
    // Stragglers of the last TCP connection settle before the counters are read.
    std::thread::sleep(Duration::from_secs(1));
    let (detail, rows) = child_sas(&control);
    assert_eq!(rows.len(), 1, "{detail}");
    let row = ChildRow::find(&rows, &tcp_ts, &detail);
    assert!(
        row.bytes.0 >= up && row.bytes.1 >= down,
        "CHILD SA bytes {:?}, iperf3 {up}/{down}:\n{detail}",
        row.bytes
    );

    // ICMP is outside the selectors: no ping gets through, and none enters the SA.
    let pings = |ns: &support::netns::Netns, from: &str, to: &str| {
        ns.exec(&[ping, "-c", "3", "-i", "0.2", "-W", "1", "-I", from, to])
            .ok()
    };
    assert!(
        !pings(&net.peer, &vip, INSIDE_ADDR),
        "ICMP router -> inside crossed a TCP 5201 CHILD SA"
    );
    assert!(
        !pings(&net.he, INSIDE_ADDR, &vip),
        "ICMP inside -> router crossed a TCP 5201 CHILD SA"
    );
    let (detail, rows) = child_sas(&control);
    let after = ChildRow::find(&rows, &tcp_ts, &detail);
    assert_eq!(after.spis, row.spis, "{detail}");
    assert_eq!(
        after.packets, row.packets,
        "pings entered the SA:\n{detail}"
    );
}
