//! `headend peer` to `headend run` over IPv6 outer addresses (issue 3): IKE and ESP
//! between fd00:e6::2 and fd00:e6::1 on a veth pair in namespaces this test creates, the
//! router's IPv4 virtual IP and the head-end's IPv4 inside network through the tunnel,
//! ping both ways. Needs root, iproute2 and ping (missing ones FAIL).
#![allow(clippy::unwrap_used)]
mod support;

use std::time::Duration;

use support::netns::Netns;
use support::{require_tool, try_wait_for, TestCtx};

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
