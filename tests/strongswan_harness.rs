//! Proves the real-peer harness with charon <-> charon, independent of headend: the
//! namespaces, veth links, NAT router, charon launcher and swanctl parsing behave as the
//! headend interop tests (strongswan_responder.rs, strongswan_initiator.rs) rely on.
//! Needs root and strongSwan (tests/run.sh installs it).
mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use support::charon::{Charon, Conn, SwanctlConf};
use support::netns::{Direct, Natted, INSIDE_NET};
use support::TestCtx;

const PSK: &str = "harness-psk-0123456789";
const POOL: &str = "10.99.0.0/24";

fn in_pool(ip: &str) -> bool {
    ip.parse::<Ipv4Addr>()
        .map(|a| a.octets()[..3] == [10, 99, 0])
        .unwrap_or(false)
}

fn responder_conf(local: &str, psk: &str) -> SwanctlConf {
    SwanctlConf {
        conns: vec![Conn::responder("rw", local, "he.test", Some("p4"))],
        pools: vec![("p4".into(), POOL.into())],
        secrets: vec![(vec![], psk.into())],
    }
}

fn initiator_conf(local: &str, remote: &str, psk: &str) -> SwanctlConf {
    let mut c = Conn::initiator("net", local, remote, "router-1.example");
    c.remote_id = Some("he.test".into());
    SwanctlConf {
        conns: vec![c],
        pools: vec![],
        secrets: vec![(vec![], psk.into())],
    }
}

#[test]
fn charon_to_charon_direct_gets_vip_and_child_sa() {
    let ctx = TestCtx::new("charon_to_charon_direct");
    let net = Direct::new(&ctx);
    let resp = Charon::start(&ctx, &net.he, "resp");
    let init = Charon::start(&ctx, &net.peer, "init");
    resp.load(&ctx, &responder_conf(&net.he_addr.to_string(), PSK));
    init.load(
        &ctx,
        &initiator_conf(&net.peer_addr.to_string(), &net.he_addr.to_string(), PSK),
    );

    init.initiate_ok("net");
    let sa = init.wait_established("net", Duration::from_secs(10));
    assert_eq!(sa.remote_host, net.he_addr.to_string());
    assert_eq!(sa.remote_id, "he.test");
    assert_eq!(sa.encr_alg, "AES_GCM_16");
    assert_eq!(sa.dh_group, "CURVE_25519");
    assert_eq!(sa.local_vips.len(), 1, "one VIP: {sa:?}");
    assert!(
        in_pool(&sa.local_vips[0]),
        "VIP {:?} not from {POOL}",
        sa.local_vips
    );
    let child = &sa.children[0];
    assert_eq!(child.remote_ts, vec![INSIDE_NET.to_string()]);
    assert_eq!(child.local_ts, vec![format!("{}/32", sa.local_vips[0])]);
    // kernel-libipsec always UDP-encapsulates, hence port 4500 without a NAT.
    assert!(child.encap, "libipsec ESP should be UDP-encapsulated");
    assert_eq!(sa.remote_port, "4500");

    // The responder sees the same SA (same SPIs) with the VIP as remote VIP.
    let rsa = resp.wait_established("rw", Duration::from_secs(5));
    assert_eq!(rsa.initiator_spi, sa.initiator_spi);
    assert_eq!(rsa.remote_vips, sa.local_vips);

    // Terminate from the initiator: both sides drop the SA.
    let t = init.terminate_ike("net");
    assert!(t.ok(), "terminate failed: {}", t.all());
    support::wait_for("responder SA gone", Duration::from_secs(10), || {
        resp.list_sas().is_empty().then_some(())
    });
}

#[test]
fn charon_to_charon_behind_nat_moves_to_4500() {
    let ctx = TestCtx::new("charon_to_charon_nat");
    let net = Natted::new(&ctx);
    let resp = Charon::start(&ctx, &net.he, "resp");
    let init = Charon::start(&ctx, &net.peer, "init");
    resp.load(&ctx, &responder_conf(&net.he_addr.to_string(), PSK));
    init.load(
        &ctx,
        &initiator_conf(&net.peer_addr.to_string(), &net.he_addr.to_string(), PSK),
    );

    init.initiate_ok("net");
    let sa = init.wait_established("net", Duration::from_secs(10));
    assert!(
        sa.nat_local,
        "initiator should detect that it is behind a NAT: {sa:?}"
    );
    assert_eq!(sa.remote_port, "4500");
    let rsa = resp.wait_established("rw", Duration::from_secs(5));
    assert_eq!(
        rsa.remote_host,
        net.nat_public.to_string(),
        "responder sees the NAT's address"
    );
    assert_ne!(
        rsa.remote_port, "4500",
        "masquerade (random) rewrites the source port"
    );
}

#[test]
fn charon_wrong_psk_reports_authentication_failed() {
    let ctx = TestCtx::new("charon_wrong_psk");
    let net = Direct::new(&ctx);
    let resp = Charon::start(&ctx, &net.he, "resp");
    let init = Charon::start(&ctx, &net.peer, "init");
    resp.load(&ctx, &responder_conf(&net.he_addr.to_string(), PSK));
    init.load(
        &ctx,
        &initiator_conf(
            &net.peer_addr.to_string(),
            &net.he_addr.to_string(),
            "not-the-psk",
        ),
    );
    let o = init.initiate("net");
    assert!(!o.ok(), "initiate with a wrong PSK must fail");
    assert!(
        o.all().contains("AUTHENTICATION_FAILED"),
        "swanctl output:\n{}",
        o.all()
    );
    assert!(init.list_sas().iter().all(|s| s.state != "ESTABLISHED"));
    support::wait_for("no SA on the responder", Duration::from_secs(10), || {
        resp.list_sas().is_empty().then_some(())
    });
}

/// The log lines and SA fields the headend tests rely on, observed with a charon peer
/// that rekeys, probes and deletes as the responder (the role headend plays).
#[test]
fn charon_log_markers_for_rekey_dpd_delete_by_the_responder() {
    let ctx = TestCtx::new("charon_markers");
    let net = Direct::new(&ctx);
    let resp = Charon::start(&ctx, &net.he, "resp");
    let init = Charon::start(&ctx, &net.peer, "init");
    let mut rc = responder_conf(&net.he_addr.to_string(), PSK);
    rc.conns[0].rekey_time = Some("6s".into());
    rc.conns[0].child_rekey_time = Some("3s".into());
    rc.conns[0].dpd_delay = Some("1s".into());
    resp.load(&ctx, &rc);
    init.load(
        &ctx,
        &initiator_conf(&net.peer_addr.to_string(), &net.he_addr.to_string(), PSK),
    );
    init.initiate_ok("net");
    let sa = init.wait_established("net", Duration::from_secs(10));
    assert!(sa.initiator);
    let log0 = init.log_len();

    init.wait_log_since(
        log0,
        "parsed INFORMATIONAL request",
        Duration::from_secs(10),
    );
    init.wait_log_since(
        log0,
        "generating INFORMATIONAL response",
        Duration::from_secs(5),
    );
    init.wait_log_since(
        log0,
        "parsed CREATE_CHILD_SA request",
        Duration::from_secs(10),
    );
    init.wait_log_since(
        log0,
        "generating CREATE_CHILD_SA response",
        Duration::from_secs(5),
    );
    // After the responder rekeyed the IKE SA, the initiator's new SA has initiator=no.
    let rekeyed = support::wait_for(
        "IKE SA rekeyed by responder",
        Duration::from_secs(15),
        || {
            init.list_sas()
                .into_iter()
                .find(|s| s.state == "ESTABLISHED" && s.initiator_spi != sa.initiator_spi)
        },
    );
    assert!(!rekeyed.initiator, "{rekeyed:?}");
    assert_eq!(rekeyed.local_vips, sa.local_vips);
    assert!(!init
        .log_since(log0)
        .contains("generating CREATE_CHILD_SA request"));

    let log1 = init.log_len();
    let t = resp.terminate_ike("rw");
    assert!(t.ok(), "{}", t.all());
    init.wait_log_since(log1, "received DELETE for IKE_SA", Duration::from_secs(5));
    support::wait_for("initiator SA gone", Duration::from_secs(5), || {
        init.list_sas().is_empty().then_some(())
    });
}
