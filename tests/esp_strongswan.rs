//! strongSwan's charon (kernel-libipsec: userspace ESP on its own TUN, always
//! UDP-encapsulated) as a peer router against `headend run` with the userspace ESP data
//! plane, each in a network namespace this test creates: the router pings and runs
//! iperf3 to an inside address behind the head-end, and the traffic is counted by the
//! head-end's data plane. Needs root, strongSwan, iproute2, ping and iperf3 (tests/run.sh
//! installs them); missing tools FAIL.
#![allow(clippy::unwrap_used)]
mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::charon::{Charon, Conn, IkeSaState};
use support::headend::{child_sas, ChildRow, Headend, HeadendConf};
use support::iperf::{iperf3_in, received_bytes};
use support::netns::{Direct, Netns, INSIDE_ADDR, INSIDE_NET};
use support::{require_tool, TestCtx};

const PSK: &str = "esp-interop-psk-7c21";
const POOL: &str = "10.99.0.0/24";

/// The head-end on `he_addr` with the userspace data plane (one queue) and AES-256-GCM
/// CHILD SAs.
fn dataplane_conf(he_addr: &str) -> HeadendConf {
    let mut hc = HeadendConf::responder(he_addr, PSK, POOL);
    hc.esp_proposals = vec!["aes256gcm16".into()];
    hc.extra = "[dataplane]\ntun_name = \"he0\"\nqueues = 1\n".into();
    hc
}

/// `headend run` with `hc` in `net.he` and a control socket: the daemon and the socket.
fn run_with_control(ctx: &TestCtx, net: &Direct, hc: &HeadendConf) -> (Headend, PathBuf) {
    let control = ctx.path("control.sock");
    let control_arg = control.display().to_string();
    let he = Headend::run_with(
        ctx,
        Some(&net.he),
        "headend",
        hc,
        &["--control", &control_arg],
    );
    (he, control)
}

/// charon in `ns`, and its connection `name` from `peer_addr` as `id` to the head-end
/// (`headend.test`) on `he_addr`.
fn charon_to(
    ctx: &TestCtx,
    ns: &Netns,
    name: &str,
    (peer_addr, he_addr): (&str, &str),
    id: &str,
) -> (Charon, Conn) {
    let charon = Charon::start(ctx, ns, "peer");
    let mut conn = Conn::initiator(name, peer_addr, he_addr, id);
    conn.remote_id = Some("headend.test".into());
    (charon, conn)
}

/// The virtual IP charon got on `sa`.
fn vip_of(sa: &IkeSaState) -> String {
    sa.local_vips
        .first()
        .cloned()
        .expect("charon got a virtual IP")
}

/// Pings (`count` each time) from `from` in `ns` to `to`, up to ten tries 300 ms apart
/// (the first packets may race the SAs' installation): whether one try got through.
fn ping_within_ten_tries(ns: &Netns, from: &str, to: &str, count: u32) -> bool {
    (0..10).any(|_| {
        ns.ping(Some(from), to, count, 2).ok() || {
            std::thread::sleep(Duration::from_millis(300));
            false
        }
    })
}

/// iperf3 between the router's `vip` and the inside address for `secs` seconds (`-R`:
/// from the inside), which must succeed (`what` and `context` say which run on failure):
/// the bytes received.
fn iperf3_ok(net: &Direct, vip: &str, secs: &str, reverse: bool, what: &str, context: &str) -> u64 {
    let mut args = vec!["-t", secs, "--connect-timeout", "5000"];
    if reverse {
        args.insert(2, "-R");
    }
    let (json, ok) = iperf3_in(&net.he, &net.peer, vip, &args, || {});
    assert!(ok, "iperf3 {what} failed:\n{json}\n{context}");
    received_bytes(&json) as u64
}

/// [`iperf3_ok`] for two seconds from the router, then two back: the bytes received
/// (up, down).
fn iperf3_up_and_down(net: &Direct, vip: &str, he: &Headend) -> (u64, u64) {
    let up = iperf3_ok(net, vip, "2", false, "router -> inside", &he.log_text());
    let down = iperf3_ok(net, vip, "2", true, "inside -> router", &he.log_text());
    (up, down)
}

#[test]
fn esp_strongswan_peer_pings_and_iperf3s_through_headend_run() {
    let iperf = require_tool("iperf3", "iperf3");
    let ctx = TestCtx::new("esp-strongswan");
    let net = Direct::new(&ctx);
    let he_addr = net.he_addr.to_string();
    let peer_addr = net.peer_addr.to_string();
    let mut hc = dataplane_conf(&he_addr);
    hc.local_id = "headend.test".into();
    let he = Headend::run(&ctx, Some(&net.he), "headend", &hc);

    let (charon, conn) = charon_to(
        &ctx,
        &net.peer,
        "net",
        (&peer_addr, &he_addr),
        "router-1.example",
    );
    let sa = charon.connect_psk(&ctx, conn, PSK, Duration::from_secs(10));
    let vip = vip_of(&sa);
    assert_eq!(sa.children[0].encr_alg, "AES_GCM_16");
    assert_eq!(sa.children[0].encr_keysize, "256");

    // Ping from the router's virtual IP to the inside address, through both ESP stacks.
    assert!(
        ping_within_ten_tries(&net.peer, &vip, INSIDE_ADDR, 3),
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

    let mut hc = dataplane_conf(he_addr);
    hc.local_id = "headend.test".into();
    let he = Headend::run(&ctx, Some(&he_ns), "headend", &hc);

    let (charon, conn) = charon_to(
        &ctx,
        &pr_ns,
        "net",
        (peer_addr, he_addr),
        "router-6.example",
    );
    let sa = charon.connect_psk(&ctx, conn, PSK, Duration::from_secs(10));
    let vip = vip_of(&sa);

    assert!(
        ping_within_ten_tries(&pr_ns, &vip, INSIDE_ADDR, 3),
        "no ping from charon's VIP {vip} to {INSIDE_ADDR} over IPv6 outer:\n{}\n{}",
        he.log_text(),
        charon.log_text()
    );
    let back = he_ns.ping(Some(INSIDE_ADDR), &vip, 3, 2);
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
    let ctx = TestCtx::new("esp-strongswan-split");
    let net = Direct::new(&ctx);
    let he_addr = net.he_addr.to_string();
    let (he, control) = run_with_control(&ctx, &net, &dataplane_conf(&he_addr));

    let (charon, mut conn) = charon_to(
        &ctx,
        &net.peer,
        "tcp",
        (&net.peer_addr.to_string(), &he_addr),
        "router-split.example",
    );
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
    let vip = vip_of(&sa);

    // Pings both ways: the ICMP child (the TCP child would refuse them).
    let pings = |ns: &Netns, from: &str, to: &str| ns.ping(Some(from), to, 5, 2).ok();
    assert!(
        ping_within_ten_tries(&net.peer, &vip, INSIDE_ADDR, 5),
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
    let (up, down) = iperf3_up_and_down(&net, &vip, &he);
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
    let up2 = iperf3_ok(
        &net,
        &vip,
        "1",
        false,
        "after the TCP child's rekey",
        &format!("{rekeyed}\n{}", he.log_text()),
    );
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
    let ctx = TestCtx::new("esp-strongswan-narrowed");
    let net = Direct::new(&ctx);
    let he_addr = net.he_addr.to_string();
    let tcp_ts = format!("{INSIDE_NET}[tcp/5201]");
    let mut hc = dataplane_conf(&he_addr);
    hc.local_ts = vec![tcp_ts.clone()];
    let (he, control) = run_with_control(&ctx, &net, &hc);

    let (charon, conn) = charon_to(
        &ctx,
        &net.peer,
        "net",
        (&net.peer_addr.to_string(), &he_addr),
        "router-narrow.example",
    );
    assert_eq!(conn.remote_ts.as_deref(), Some(INSIDE_NET));
    let sa = charon.connect_psk(&ctx, conn, PSK, Duration::from_secs(10));
    let vip = vip_of(&sa);
    assert_eq!(sa.children.len(), 1, "{sa:#?}");
    assert_eq!(sa.children[0].remote_ts, vec![tcp_ts.clone()], "{sa:#?}");
    assert_eq!(
        sa.children[0].local_ts,
        vec![format!("{vip}/32")],
        "{sa:#?}"
    );

    let (up, down) = iperf3_up_and_down(&net, &vip, &he);
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
    let pings = |ns: &Netns, from: &str, to: &str| ns.ping(Some(from), to, 3, 1).ok();
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
