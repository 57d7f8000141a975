//! `headend peer` to `headend run` over IPv6 outer addresses (issue 3): IKE and ESP
//! between fd00:e6::2 and fd00:e6::1 on a veth pair in namespaces this test creates, the
//! router's IPv4 virtual IP and the head-end's IPv4 inside network through the tunnel,
//! ping both ways. And dual-stack NAT-T: one head-end, an IPv4 and an IPv6 peer at once,
//! both UDP-encapsulated. Needs root, iproute2, ping and strongSwan (missing ones FAIL).
#![allow(clippy::unwrap_used)]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::charon::{Charon, Conn};
use support::netns::{veth, Netns};
use support::{require_tool, try_wait_for, Proc, TestCtx};

const HE: &str = "fd00:e6::1";
const PR: &str = "fd00:e6::2";
const INSIDE: &str = "10.241.0.1";

fn ping(ns: &Netns, args: &[&str]) -> bool {
    let mut argv = vec!["ping", "-c", "1", "-W", "1"];
    argv.extend_from_slice(args);
    ns.exec(&argv).ok()
}

#[test]
fn esp_peer_and_headend_over_ipv6_outer_addresses_ping_both_ways() {
    require_tool("ping", "iputils-ping");
    let ctx = TestCtx::new("esp-outer-v6");
    let he_ns = Netns::new(&ctx, "h");
    let pr_ns = Netns::new(&ctx, "p");
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
    he_ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{HE}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    pr_ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{PR}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    he_ns.ip(&["link", "set", "eth0", "up"]);
    pr_ns.ip(&["link", "set", "eth0", "up"]);
    he_ns.add_lo_addr(&format!("{INSIDE}/16"));

    let he_conf = ctx.write(
        "he.toml",
        &format!(
            "[ike]\nlisten = [\"{HE}\"]\nlocal_ts = [\"10.241.0.0/16\"]\n[psk]\ndefault = \"v6-psk-1234\"\n\
             [pool]\nv4 = \"10.242.0.0/24\"\n[dataplane]\ntun_name = \"he0\"\n"
        ),
    );
    let pr_conf = ctx.write(
        "pr.toml",
        &format!(
            "[ike]\ndpd_delay = \"1s\"\n[psk]\ndefault = \"v6-psk-1234\"\n[peer]\nlocal_id = \"router-v6\"\n\
             headends = [\"[{HE}]:500\"]\nremote_ts = [\"10.241.0.0/16\"]\nbind = \"[{PR}]:0\"\n\
             [dataplane]\ntun_name = \"pr0\"\n"
        ),
    );
    let bin = support::headend::bin().display().to_string();
    let env = [("RUST_LOG", "info"), ("NO_COLOR", "1")];
    let he_argv = [
        bin.clone(),
        "run".into(),
        "--config".into(),
        he_conf.display().to_string(),
    ];
    let he = he_ns.spawn(&ctx, "he", &he_argv, &env);
    try_wait_for(Duration::from_secs(15), || {
        he.log_text()
            .contains("headend responder listening")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("head-end did not start:\n{}", he.log_text()));
    assert!(
        !ping(&pr_ns, &[INSIDE]),
        "inside network reachable without a tunnel"
    );

    let pr_argv = [
        bin,
        "peer".into(),
        "--config".into(),
        pr_conf.display().to_string(),
    ];
    let pr = pr_ns.spawn(&ctx, "pr", &pr_argv, &env);
    let up = format!("up router-v6 via [{HE}]:500 vip ");
    let vip = try_wait_for(Duration::from_secs(15), || {
        let log = pr.log_text();
        let line = log.lines().find(|l| l.starts_with(&up))?;
        Some(line[up.len()..].split_whitespace().next()?.to_string())
    })
    .unwrap_or_else(|| {
        panic!(
            "peer not up over IPv6:\npeer:\n{}\nhead-end:\n{}",
            pr.log_text(),
            he.log_text()
        )
    });
    assert!(vip.starts_with("10.242.0."), "{vip}");

    // Router -> inside (routes are installed asynchronously: retry briefly), then the
    // head-end side -> the router's virtual IP.
    try_wait_for(Duration::from_secs(5), || {
        ping(&pr_ns, &[INSIDE]).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no ping through the IPv6-outer tunnel\npeer:\n{}\nhead-end:\n{}",
            pr.log_text(),
            he.log_text()
        )
    });
    for _ in 0..3 {
        assert!(ping(&pr_ns, &[INSIDE]), "router -> inside lost");
        assert!(
            ping(&he_ns, &["-I", INSIDE, &vip]),
            "inside -> router's virtual IP {vip} lost\nhead-end:\n{}",
            he.log_text()
        );
    }
}

/// Dual-stack NAT-T (issue 3): ONE `headend run` with the default NAT-T sockets (no
/// `natt_bind`: `0.0.0.0:4500` and `[::]:4500`) and IKE on `0.0.0.0` and `::` serves two
/// UDP-encapsulated peers at once: `headend peer` over an IPv4 outer address (its
/// wildcard `bind` puts 0.0.0.0 in its NAT_DETECTION_SOURCE_IP, so the head-end sees a
/// NAT and encapsulates) and strongSwan's charon over an IPv6 one (`encap = yes`, and
/// kernel-libipsec always encapsulates). Both routers ping the inside address, the inside
/// host pings both virtual IPs back, and `show vpn ipsec sa` shows both peers on port
/// 4500 of their own family with packets both ways. charon also checks the head-end's
/// NAT_DETECTION_SOURCE_IP over IPv6 (a wildcard listen address resolved per peer): no
/// NAT seen in front of the head-end.
#[test]
fn natt_dual_stack_ipv4_and_ipv6_peers_on_one_headend() {
    let ctx = TestCtx::new("natt-dual-stack");
    let (he_ns, p6) = v6_link(&ctx);
    let p4 = Netns::new(&ctx, "p4");
    veth(&he_ns, "eth4", "10.1.0.1/24", &p4, "eth0", "10.1.0.2/24");
    let (he, control, bin, env) = dual_stack_headend(&ctx, &he_ns);

    // The IPv4 router: `headend peer` with the default (wildcard) bind.
    let pr_conf = ctx.write(
        "pr.toml",
        &format!(
            "[psk]\ndefault = \"{PSK}\"\n[peer]\nlocal_id = \"router-v4\"\n\
             headends = [\"10.1.0.1:500\"]\nremote_ts = [\"10.241.0.0/16\"]\n\
             [dataplane]\ntun_name = \"pr0\"\n"
        ),
    );
    let pr = p4.spawn(
        &ctx,
        "pr",
        &[
            bin.clone(),
            "peer".into(),
            "--config".into(),
            pr_conf.display().to_string(),
        ],
        &env,
    );
    // The IPv6 router: charon.
    let charon = Charon::start(&ctx, &p6, "p6");
    let mut conn = Conn::initiator("net", PR6, HE6, "router-swan6.example");
    conn.remote_id = Some("headend.test".into());
    conn.remote_ts = Some("10.241.0.0/16".into());
    conn.extra.push(("encap".into(), "yes".into()));
    let sa6 = charon.connect_psk(&ctx, conn, PSK, Duration::from_secs(15));
    let vip6 = sa6.local_vips.first().cloned().expect("charon got a VIP");
    assert!(
        sa6.remote_port == "4500" && sa6.children.iter().any(|c| c.encap),
        "charon's SA is not UDP-encapsulated on 4500: {sa6:?}"
    );
    assert!(
        !sa6.nat_remote,
        "charon saw a NAT in front of the head-end: its NAT_DETECTION_SOURCE_IP did not \
         hash [{HE6}]:500\n{}",
        he.log_text()
    );
    // The router moved to NAT-T (4500) after IKE_SA_INIT.
    let up = "up router-v4 via 10.1.0.1:4500 vip ";
    let vip4 = try_wait_for(Duration::from_secs(20), || {
        let log = pr.log_text();
        let line = log.lines().find(|l| l.starts_with(up))?;
        Some(line[up.len()..].split_whitespace().next()?.to_string())
    })
    .unwrap_or_else(|| panic!("IPv4 peer not up:\n{}", pr.log_text()));
    assert_ne!(vip4, vip6);

    // Both ways through both tunnels (routes are installed asynchronously: retry first).
    let router_pings = |ns: &Netns, vip: &str| ping(ns, &["-I", vip, INSIDE]);
    try_wait_for(Duration::from_secs(10), || {
        (router_pings(&p4, &vip4) && router_pings(&p6, &vip6)).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no ping through both tunnels\nhead-end:\n{}\npeer:\n{}",
            he.log_text(),
            pr.log_text()
        )
    });
    for _ in 0..3 {
        assert!(router_pings(&p4, &vip4), "IPv4 router -> inside lost");
        assert!(router_pings(&p6, &vip6), "IPv6 router -> inside lost");
        for vip in [&vip4, &vip6] {
            assert!(
                ping(&he_ns, &["-I", INSIDE, vip]),
                "inside -> virtual IP {vip} lost\nhead-end:\n{}",
                he.log_text()
            );
        }
    }

    // The head-end encapsulated both CHILD SAs ...
    let log = he.log_text();
    let installed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CHILD SA installed"))
        .collect();
    assert!(
        installed.len() >= 2
            && installed
                .iter()
                .all(|l| support::headend::field(l, "udp_encap") == Some("true")),
        "{installed:#?}"
    );
    // ... and shows both peers on port 4500 of their family, with packets both ways.
    let o = Command::new(&bin)
        .args(["show", "--socket"])
        .arg(&control)
        .args(["vpn", "ipsec", "sa"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "show vpn ipsec sa: {text}");
    for (id, peer) in [
        ("router-v4", "10.1.0.2:4500".to_string()),
        ("router-swan6.example", format!("[{PR6}]:4500")),
    ] {
        let row: Vec<&str> = text
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("no row for {id}:\n{text}"))
            .split_whitespace()
            .collect();
        assert_eq!(row[0], peer, "{text}");
        let (pin, pout) = row[7].split_once('/').unwrap();
        let (pin, pout): (u64, u64) = (pin.parse().unwrap(), pout.parse().unwrap());
        assert!(pin >= 6 && pout >= 6, "{id}: packets {pin}/{pout}\n{text}");
    }
}

/// IKE_SA_INIT straight to the NAT-T port over IPv6 (RFC 7296 2.23 lets an initiator
/// start on 4500): the head-end's wildcard `[::]:4500` socket (the data plane's) reports
/// the address charon reached, so the head-end's NAT_DETECTION_SOURCE_IP hashes it and
/// charon sees no NAT in front of the head-end; ping both ways through the tunnel.
#[test]
fn natt_ipv6_ike_sa_init_on_port_4500_hashes_the_address_reached() {
    let ctx = TestCtx::new("natt-v6-4500");
    let (he_ns, p6) = v6_link(&ctx);
    let (he, _control, _bin, _env) = dual_stack_headend(&ctx, &he_ns);
    let charon = Charon::start(&ctx, &p6, "p6");
    let mut conn = Conn::initiator("net", PR6, HE6, "router-swan6.example");
    conn.remote_id = Some("headend.test".into());
    conn.remote_ts = Some("10.241.0.0/16".into());
    // From and to 4500: with the non-ESP marker (RFC 3948 2.2).
    conn.extra.push(("local_port".into(), "4500".into()));
    conn.extra.push(("remote_port".into(), "4500".into()));
    let sa = charon.connect_psk(&ctx, conn, PSK, Duration::from_secs(15));
    assert_eq!(sa.remote_port, "4500", "{sa:?}");
    assert!(
        !sa.nat_remote,
        "charon saw a NAT in front of the head-end: its NAT_DETECTION_SOURCE_IP on 4500 \
         did not hash [{HE6}]:4500\n{}",
        he.log_text()
    );
    let vip = sa.local_vips.first().cloned().expect("charon got a VIP");
    try_wait_for(Duration::from_secs(10), || {
        ping(&p6, &["-I", &vip, INSIDE]).then_some(())
    })
    .unwrap_or_else(|| panic!("no ping through the tunnel:\n{}", he.log_text()));
    assert!(ping(&he_ns, &["-I", INSIDE, &vip]), "inside -> {vip} lost");
}

const HE6: &str = "fd00:e7::1";
const PR6: &str = "fd00:e7::2";
const PSK: &str = "dual-stack-psk-1234";

/// The head-end's namespace (inside network on `lo`) and an IPv6 router's, linked by a
/// veth pair [`HE6`] - [`PR6`].
fn v6_link(ctx: &TestCtx) -> (Netns, Netns) {
    require_tool("ping", "iputils-ping");
    let he_ns = Netns::new(ctx, "h");
    let p6 = Netns::new(ctx, "p6");
    he_ns.ip(&[
        "link", "add", "eth6", "type", "veth", "peer", "name", "eth0", "netns", &p6.name,
    ]);
    for (ns, dev, addr) in [(&he_ns, "eth6", HE6), (&p6, "eth0", PR6)] {
        let cidr = format!("{addr}/64");
        ns.ip(&["-6", "addr", "add", &cidr, "dev", dev, "nodad"]);
        ns.ip(&["link", "set", dev, "up"]);
    }
    he_ns.add_lo_addr(&format!("{INSIDE}/16"));
    (he_ns, p6)
}

/// `headend run` in `ns` with IKE on `0.0.0.0` and `::` and the default NAT-T sockets (no
/// `natt_bind`), its own control socket; returns it, the control socket, the binary and
/// the environment for more `headend` processes.
fn dual_stack_headend(
    ctx: &TestCtx,
    ns: &Netns,
) -> (Proc, PathBuf, String, [(&'static str, &'static str); 2]) {
    let he_conf = ctx.write(
        "he.toml",
        &format!(
            // No `listen`: the default serves IKE on both families.
            "[ike]\nlocal_id = \"headend.test\"\n\
             local_ts = [\"10.241.0.0/16\"]\n[psk]\ndefault = \"{PSK}\"\n\
             [pool]\nv4 = \"10.242.0.0/24\"\n[dataplane]\ntun_name = \"he0\"\n"
        ),
    );
    let control = ctx.path("control.sock");
    let bin = support::headend::bin().display().to_string();
    let env = [("RUST_LOG", "info"), ("NO_COLOR", "1")];
    let he = ns.spawn(
        ctx,
        "he",
        &[
            bin.clone(),
            "run".into(),
            "--config".into(),
            he_conf.display().to_string(),
            "--control".into(),
            control.display().to_string(),
        ],
        &env,
    );
    he.wait_log("headend responder listening", Duration::from_secs(20));
    (he, control, bin, env)
}
