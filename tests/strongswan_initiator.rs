//! `headend peer` (a peer router, initiator) against strongSwan's charon as the
//! responder, each in its own network namespace (issue 2: "The reverse too"). Needs root
//! and strongSwan; run through tests/run.sh.
mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use support::charon::{Charon, Conn, IkeSaState, SwanctlConf};
use support::headend::{field, lines_with, Headend, HeadendConf};
use support::netns::{Natted, Netns, Star, INSIDE_NET};
use support::TestCtx;

const PSK: &str = "interop-psk-77d2e0";
const POOL: &str = "10.99.0.0/24";
const PEER_ID: &str = "router-7.example";
const HE_ID: &str = "charon.test";

fn in_pool(ip: &str) -> bool {
    ip.parse::<Ipv4Addr>()
        .map(|a| a.octets()[..3] == [10, 99, 0])
        .unwrap_or(false)
}

/// A charon responder in `ns` at `addr` handing out addresses from [`POOL`].
fn charon_responder(
    ctx: &TestCtx,
    ns: &Netns,
    name: &str,
    addr: &str,
    psk: &str,
    tweak: impl FnOnce(&mut Conn),
) -> Charon {
    let c = Charon::start(ctx, ns, name);
    let mut conn = Conn::responder("rw", addr, HE_ID, Some("p4"));
    tweak(&mut conn);
    c.load(
        ctx,
        &SwanctlConf {
            conns: vec![conn],
            pools: vec![("p4".into(), POOL.into())],
            secrets: vec![(vec![], psk.into())],
        },
    );
    c
}

/// Peer config for `headend peer` towards the given head-end addresses.
fn peer_conf(headends: &[String]) -> HeadendConf {
    let hs: Vec<(String, u16)> = headends
        .iter()
        .map(|a| (format!("{a}:500"), 4500))
        .collect();
    let mut c = HeadendConf::peer(PEER_ID, PSK, &hs);
    if let Some(p) = c.peer.as_mut() {
        p.remote_ts = vec![INSIDE_NET.into()];
    }
    c
}

fn wait_rw(charon: &Charon, secs: u64, pred: impl Fn(&IkeSaState) -> bool) -> IkeSaState {
    support::wait_for(
        &format!("charon {}: established SA from headend peer", charon.name),
        Duration::from_secs(secs),
        || {
            charon.list_sas().into_iter().find(|s| {
                s.state == "ESTABLISHED"
                    && s.children.iter().any(|c| c.state == "INSTALLED")
                    && pred(s)
            })
        },
    )
}

/// Checks an SA charon (responder) holds for our peer router.
fn assert_peer_sa(sa: &IkeSaState, peer: &Headend) {
    assert!(!sa.initiator, "charon is the responder: {sa:?}");
    assert_eq!(sa.remote_id, PEER_ID);
    assert_eq!(sa.remote_vips.len(), 1, "one VIP handed out: {sa:?}");
    let vip = &sa.remote_vips[0];
    assert!(in_pool(vip), "VIP {vip} not from {POOL}");
    let child = sa
        .children
        .iter()
        .find(|c| c.state == "INSTALLED")
        .expect("installed child");
    assert_eq!(child.local_ts, vec![INSIDE_NET.to_string()]);
    assert_eq!(child.remote_ts, vec![format!("{vip}/32")]);
    // `headend peer` reports the tunnel up with the virtual IP charon handed out.
    let line = support::wait_for(
        "headend peer logs tunnel up",
        Duration::from_secs(5),
        || {
            let log = peer.log_text();
            lines_with(&log, "tunnel up", "router-7-example")
                .last()
                .map(|l| l.to_string())
        },
    );
    assert_eq!(
        field(&line, "vip"),
        Some(format!("[{vip}]").as_str()),
        "{line}"
    );
    assert_eq!(field(&line, "headend_id"), Some(HE_ID), "{line}");
}

/// The peer logged a move from head-end `from` to `to` whose reason starts with `why`.
fn assert_moved(peer: &Headend, from: &str, to: &str, why: &str) {
    let log = peer.log_text();
    let moved = log.lines().any(|l| {
        l.contains("moving to the next head-end")
            && field(l, "from") == Some(&format!("{from}:500"))
            && field(l, "to") == Some(&format!("{to}:500"))
            && l.contains(&format!("reason={why}"))
    });
    assert!(
        moved,
        "no move {from} -> {to} ({why}) in the peer log:\n{log}"
    );
}

/// The peer's latest "tunnel up" line.
fn sa_line(peer: &Headend) -> String {
    let log = peer.log_text();
    let lines = lines_with(&log, "tunnel up", "router-7-example");
    lines.last().map(|l| l.to_string()).unwrap_or_default()
}

fn suite(name: &str, ike: &str, esp: &str, expect: [&str; 3]) {
    let ctx = TestCtx::new(name);
    let net = Star::new(&ctx, 1);
    let he = Star::he_addr(0);
    let charon = charon_responder(&ctx, &net.hes[0], "resp", &he, PSK, |c| {
        c.proposals = ike.into();
        c.esp_proposals = esp.into();
    });
    let mut pc = peer_conf(std::slice::from_ref(&he));
    pc.proposals = vec![ike.into()];
    pc.esp_proposals = vec![esp.into()];
    let mut peer = Headend::peer(&ctx, Some(&net.peer), "peer", &pc, &[]);
    let sa = wait_rw(&charon, 15, |_| true);
    assert_peer_sa(&sa, &peer);
    let [encr, prf, dh] = expect;
    assert_eq!(sa.encr_alg, encr, "{sa:?}");
    assert_eq!(sa.prf_alg, prf);
    assert_eq!(sa.dh_group, dh);
    assert_eq!(sa.remote_host, Star::peer_addr(0));
    peer.assert_running();
}

#[test]
fn peer_suite_aes256gcm16_prfsha256_x25519() {
    suite(
        "peer_suite_aes256gcm16",
        "aes256gcm16-prfsha256-x25519",
        "aes256gcm16",
        ["AES_GCM_16", "PRF_HMAC_SHA2_256", "CURVE_25519"],
    );
}

#[test]
fn peer_suite_aes128_sha256_ecp256() {
    suite(
        "peer_suite_aes128_ecp256",
        "aes128-sha256-ecp256",
        "aes128-sha256",
        ["AES_CBC", "PRF_HMAC_SHA2_256", "ECP_256"],
    );
}

#[test]
fn peer_suite_aes256_sha384_modp2048() {
    suite(
        "peer_suite_modp2048",
        "aes256-sha384-modp2048",
        "aes256-sha384",
        ["AES_CBC", "PRF_HMAC_SHA2_384", "MODP_2048"],
    );
}

#[test]
fn peer_suite_chacha20poly1305_prfsha512_x25519() {
    suite(
        "peer_suite_chacha20",
        "chacha20poly1305-prfsha512-x25519",
        "chacha20poly1305",
        ["CHACHA20_POLY1305", "PRF_HMAC_SHA2_512", "CURVE_25519"],
    );
}

#[test]
fn peer_sigterm_deletes_ike_sa_at_charon() {
    let ctx = TestCtx::new("peer_sigterm");
    let net = Star::new(&ctx, 1);
    let he = Star::he_addr(0);
    let charon = charon_responder(&ctx, &net.hes[0], "resp", &he, PSK, |_| {});
    let mut peer = Headend::peer(&ctx, Some(&net.peer), "peer", &peer_conf(&[he]), &[]);
    wait_rw(&charon, 15, |_| true);
    let log0 = charon.log_len();
    peer.proc.signal("TERM");
    let code = support::wait_for("headend peer exits", Duration::from_secs(3), || {
        peer.proc.exited()
    });
    assert_eq!(code, 0);
    charon.wait_log_since(log0, "received DELETE for IKE_SA", Duration::from_secs(5));
    support::wait_for("charon SA gone", Duration::from_secs(5), || {
        charon.list_sas().is_empty().then_some(())
    });
}

#[test]
fn peer_fails_over_when_first_headend_refuses() {
    // Head-end 0 has another PSK (AUTHENTICATION_FAILED), head-end 1 the right one: the
    // connect-one policy (seed 003 ch. 4) moves on to head-end 1.
    let ctx = TestCtx::new("peer_failover_refused");
    let net = Star::new(&ctx, 2);
    let (he0, he1) = (Star::he_addr(0), Star::he_addr(1));
    let c0 = charon_responder(&ctx, &net.hes[0], "resp0", &he0, "some-other-psk", |_| {});
    let c1 = charon_responder(&ctx, &net.hes[1], "resp1", &he1, PSK, |_| {});
    let mut pc = peer_conf(&[he0, he1]);
    if let Some(p) = pc.peer.as_mut() {
        p.policy = Some("round-robin".into());
    }
    let mut peer = Headend::peer(&ctx, Some(&net.peer), "peer", &pc, &[]);
    let sa = wait_rw(&c1, 30, |_| true);
    assert_peer_sa(&sa, &peer);
    assert!(
        c0.log_text().contains("AUTHENTICATION_FAILED")
            || c0
                .log_text()
                .contains("authentication of 'router-7.example' with pre-shared key failed")
            || c0.log_text().contains("tried 1 shared key"),
        "head-end 0 should have refused the peer"
    );
    assert!(c0.list_sas().iter().all(|s| s.state != "ESTABLISHED"));
    let (he0, he1) = (Star::he_addr(0), Star::he_addr(1));
    assert_moved(&peer, &he0, &he1, "refused: AUTHENTICATION_FAILED");
    let up = sa_line(&peer);
    assert_eq!(
        field(&up, "headend"),
        Some(format!("{he1}:4500").as_str()),
        "{up}"
    );
    peer.assert_running();
}

#[test]
fn peer_fails_over_when_headend_dies() {
    // Up on head-end 0; head-end 0 freezes; DPD declares it dead and the peer moves to
    // head-end 1.
    let ctx = TestCtx::new("peer_failover_dpd");
    let net = Star::new(&ctx, 2);
    let (he0, he1) = (Star::he_addr(0), Star::he_addr(1));
    let c0 = charon_responder(&ctx, &net.hes[0], "resp0", &he0, PSK, |_| {});
    let c1 = charon_responder(&ctx, &net.hes[1], "resp1", &he1, PSK, |_| {});
    let mut pc = peer_conf(&[he0, he1]);
    pc.dpd_delay = Some("1s".into());
    pc.retransmit_timeout = Some("300ms".into());
    pc.retransmit_tries = Some(2);
    if let Some(p) = pc.peer.as_mut() {
        p.policy = Some("round-robin".into());
    }
    let mut peer = Headend::peer(&ctx, Some(&net.peer), "peer", &pc, &[]);
    wait_rw(&c0, 15, |_| true);
    assert!(
        c1.list_sas().is_empty(),
        "connect-one: only one head-end at a time"
    );
    c0.pause(true);
    let sa = wait_rw(&c1, 30, |_| true);
    assert_peer_sa(&sa, &peer);
    assert_moved(&peer, &Star::he_addr(0), &Star::he_addr(1), "no answer");
    c0.pause(false);
    peer.assert_running();
}

#[test]
fn peer_behind_nat_moves_to_4500() {
    let ctx = TestCtx::new("peer_nat");
    let net = Natted::new(&ctx);
    let he = net.he_addr.to_string();
    let charon = charon_responder(&ctx, &net.he, "resp", &he, PSK, |_| {});
    let mut peer = Headend::peer(&ctx, Some(&net.peer), "peer", &peer_conf(&[he]), &[]);
    let sa = wait_rw(&charon, 15, |_| true);
    assert_peer_sa(&sa, &peer);
    // charon sees the NAT's public address; the peer moved to 4500 after IKE_SA_INIT
    // (RFC 7296 2.23), so charon's side of the SA is its port 4500.
    assert_eq!(sa.remote_host, net.nat_public.to_string());
    assert!(
        sa.nat_remote,
        "charon should detect the peer behind the NAT: {sa:?}"
    );
    assert_eq!(sa.local_port, "4500", "{sa:?}");
    assert!(sa.children.iter().any(|c| c.encap), "ESP in UDP behind NAT");
    peer.assert_running();
}

fn installed_spi_in(sa: &IkeSaState) -> Vec<String> {
    sa.children
        .iter()
        .filter(|c| c.state == "INSTALLED")
        .map(|c| c.spi_in.clone())
        .collect()
}

#[test]
fn peer_rekey_initiated_by_charon() {
    let ctx = TestCtx::new("peer_rekey_by_charon");
    let net = Star::new(&ctx, 1);
    let he = Star::he_addr(0);
    let charon = charon_responder(&ctx, &net.hes[0], "resp", &he, PSK, |c| {
        c.rekey_time = Some("8s".into());
        c.child_rekey_time = Some("4s".into());
    });
    let mut peer = Headend::peer(&ctx, Some(&net.peer), "peer", &peer_conf(&[he]), &[]);
    let sa = wait_rw(&charon, 15, |_| true);
    let first = installed_spi_in(&sa);
    wait_rw(&charon, 20, |s| {
        let now = installed_spi_in(s);
        s.initiator_spi == sa.initiator_spi && now.iter().all(|x| !first.contains(x))
    });
    let after = wait_rw(&charon, 25, |s| s.initiator_spi != sa.initiator_spi);
    assert!(after.initiator, "charon initiated the IKE rekey");
    assert_eq!(
        after.remote_vips, sa.remote_vips,
        "VIP survives the IKE rekey"
    );
    support::wait_for("old IKE SA deleted", Duration::from_secs(10), || {
        (charon.list_sas().len() == 1).then_some(())
    });
    peer.assert_running();
}

#[test]
fn peer_rekey_initiated_by_headend_peer() {
    let ctx = TestCtx::new("peer_rekey_by_peer");
    let net = Star::new(&ctx, 1);
    let he = Star::he_addr(0);
    let charon = charon_responder(&ctx, &net.hes[0], "resp", &he, PSK, |_| {});
    let mut pc = peer_conf(&[he]);
    pc.ike_lifetime = Some("10s".into());
    pc.child_lifetime = Some("5s".into());
    pc.rekey_jitter = Some("1s".into());
    let mut peer = Headend::peer(&ctx, Some(&net.peer), "peer", &pc, &[]);
    let sa = wait_rw(&charon, 15, |_| true);
    let log0 = charon.log_len();
    let first = installed_spi_in(&sa);
    wait_rw(&charon, 20, |s| {
        let now = installed_spi_in(s);
        s.initiator_spi == sa.initiator_spi && now.iter().all(|x| !first.contains(x))
    });
    assert!(charon
        .log_since(log0)
        .contains("parsed CREATE_CHILD_SA request"));
    let after = wait_rw(&charon, 25, |s| s.initiator_spi != sa.initiator_spi);
    assert!(
        !after.initiator,
        "the headend peer initiated the IKE rekey: {after:?}"
    );
    assert_eq!(after.remote_vips, sa.remote_vips);
    support::wait_for("old IKE SA deleted", Duration::from_secs(10), || {
        (charon.list_sas().len() == 1).then_some(())
    });
    peer.assert_running();
}
