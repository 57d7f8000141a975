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
use support::headend::{Headend, HeadendConf};
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
