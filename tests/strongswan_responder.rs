//! strongSwan's charon (a peer router, initiator) against `headend run` (responder), each
//! in its own network namespace (issue 2, "How it is checked"). Needs root and strongSwan;
//! run through tests/run.sh.
mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use support::charon::{Charon, Conn, IkeSaState, SwanctlConf};
use support::headend::{field, Headend, HeadendConf};
use support::netns::{Direct, Natted, INSIDE_NET};
use support::TestCtx;

const PSK: &str = "interop-psk-4f9a1c";
const POOL: &str = "10.99.0.0/24";
const PEER_ID: &str = "router-1.example";
const HE_ID: &str = "headend.test";

/// A running topology: fields drop in order (charon, head-end, namespaces).
struct Rig {
    charon: Charon,
    he: Headend,
    peer_addr: String,
    he_addr: String,
    net: Direct,
    ctx: TestCtx,
}

impl Rig {
    /// Direct link, `headend run` in one namespace (tweaked by `he_tweak`), charon in the
    /// other with one connection `net` (tweaked by `conn_tweak`) loaded.
    fn new(
        name: &str,
        he_tweak: impl FnOnce(&mut HeadendConf),
        conn_tweak: impl FnOnce(&mut Conn),
    ) -> Rig {
        let ctx = TestCtx::new(name);
        let net = Direct::new(&ctx);
        let he_addr = net.he_addr.to_string();
        let peer_addr = net.peer_addr.to_string();
        let mut hc = HeadendConf::responder(&he_addr, PSK, POOL);
        hc.local_id = HE_ID.into();
        he_tweak(&mut hc);
        let he = Headend::run(&ctx, Some(&net.he), "headend", &hc);
        let charon = Charon::start(&ctx, &net.peer, "peer");
        let mut conn = Conn::initiator("net", &peer_addr, &he_addr, PEER_ID);
        conn.remote_id = Some(HE_ID.into());
        conn_tweak(&mut conn);
        charon.load_psk(&ctx, conn, PSK);
        Rig {
            charon,
            he,
            peer_addr,
            he_addr,
            net,
            ctx,
        }
    }

    /// Initiates `net` and returns the established SA as charon reports it.
    fn up(&self) -> IkeSaState {
        self.charon.initiate_ok("net");
        self.charon.wait_established("net", Duration::from_secs(10))
    }
}

fn in_pool(ip: &str) -> bool {
    ip.parse::<Ipv4Addr>()
        .map(|a| a.octets()[..3] == [10, 99, 0])
        .unwrap_or(false)
}

/// Common checks on an SA charon established with the head-end.
fn assert_tunnel(sa: &IkeSaState, rig: &Rig) {
    assert_eq!(sa.state, "ESTABLISHED");
    assert_eq!(sa.remote_host, rig.he_addr);
    assert_eq!(sa.remote_id, HE_ID, "head-end identity as configured");
    assert_eq!(
        sa.local_vips.len(),
        1,
        "charon got exactly one virtual IP: {sa:?}"
    );
    assert!(
        in_pool(&sa.local_vips[0]),
        "virtual IP {:?} is not from {POOL}",
        sa.local_vips
    );
    let child = sa
        .children
        .iter()
        .find(|c| c.state == "INSTALLED")
        .expect("installed child");
    // Narrowed by the head-end: our side is the VIP, its side the inside network.
    assert_eq!(child.local_ts, vec![format!("{}/32", sa.local_vips[0])]);
    assert_eq!(child.remote_ts, vec![INSIDE_NET.to_string()]);
    assert_eq!(child.spi_in.len(), 8, "ESP SPI in: {child:?}");
    assert_eq!(child.spi_out.len(), 8, "ESP SPI out: {child:?}");
}

/// Establishes IKE + CHILD SA with one algorithm suite and checks what charon negotiated.
fn suite(name: &str, ike: &str, esp: &str, expect: [&str; 4], child_expect: [&str; 3]) {
    let rig = Rig::new(
        name,
        |_| {},
        |c| {
            c.proposals = ike.into();
            c.esp_proposals = esp.into();
        },
    );
    let sa = rig.up();
    assert_tunnel(&sa, &rig);
    let [encr, keysize, prf, dh] = expect;
    assert_eq!(sa.encr_alg, encr, "{sa:?}");
    assert_eq!(sa.encr_keysize, keysize);
    assert_eq!(sa.prf_alg, prf);
    assert_eq!(sa.dh_group, dh);
    let [cencr, ckeysize, cinteg] = child_expect;
    let child = &sa.children[0];
    assert_eq!(child.encr_alg, cencr, "{child:?}");
    assert_eq!(child.encr_keysize, ckeysize);
    assert_eq!(child.integ_alg, cinteg);
    // The head-end reports the tunnel with the gateway ID derived from the identity
    // (seed 003 ch. 4: dots become hyphens) and the VIP charon got.
    let line = support::headend::wait_up(&rig.he, "router-1-example", Duration::from_secs(5));
    assert_eq!(
        field(&line, "vip"),
        Some(format!("[{}]", sa.local_vips[0]).as_str()),
        "{line}"
    );
    assert_eq!(field(&line, "identity"), Some(PEER_ID), "{line}");
}

#[test]
fn suite_aes256gcm16_prfsha256_x25519() {
    suite(
        "suite_aes256gcm16",
        "aes256gcm16-prfsha256-x25519",
        "aes256gcm16",
        ["AES_GCM_16", "256", "PRF_HMAC_SHA2_256", "CURVE_25519"],
        ["AES_GCM_16", "256", ""],
    );
}

#[test]
fn suite_aes128_sha256_ecp256() {
    suite(
        "suite_aes128_sha256_ecp256",
        "aes128-sha256-ecp256",
        "aes128-sha256",
        ["AES_CBC", "128", "PRF_HMAC_SHA2_256", "ECP_256"],
        ["AES_CBC", "128", "HMAC_SHA2_256_128"],
    );
}

#[test]
fn suite_aes256_sha384_modp2048() {
    suite(
        "suite_aes256_sha384_modp2048",
        "aes256-sha384-modp2048",
        "aes256-sha384",
        ["AES_CBC", "256", "PRF_HMAC_SHA2_384", "MODP_2048"],
        ["AES_CBC", "256", "HMAC_SHA2_384_192"],
    );
}

#[test]
fn suite_chacha20poly1305_prfsha512_x25519() {
    suite(
        "suite_chacha20poly1305",
        "chacha20poly1305-prfsha512-x25519",
        "chacha20poly1305",
        ["CHACHA20_POLY1305", "", "PRF_HMAC_SHA2_512", "CURVE_25519"],
        ["CHACHA20_POLY1305", "", ""],
    );
}

/// Polls charon until an ESTABLISHED SA `net` satisfies `pred`.
fn wait_sa(rig: &Rig, what: &str, secs: u64, pred: impl Fn(&IkeSaState) -> bool) -> IkeSaState {
    support::wait_for(what, Duration::from_secs(secs), || {
        rig.charon
            .list_sas()
            .into_iter()
            .find(|s| s.state == "ESTABLISHED" && pred(s))
    })
}

fn installed_spi_in(sa: &IkeSaState) -> Vec<String> {
    sa.children
        .iter()
        .filter(|c| c.state == "INSTALLED")
        .map(|c| c.spi_in.clone())
        .collect()
}

#[test]
fn rekey_initiated_by_charon() {
    let mut rig = Rig::new(
        "rekey_by_charon",
        |_| {},
        |c| {
            c.rekey_time = Some("8s".into());
            c.child_rekey_time = Some("4s".into());
        },
    );
    let sa = rig.up();
    let first_child = installed_spi_in(&sa);
    let log0 = rig.charon.log_len();

    // CHILD SA rekey (RFC 7296 2.8): charon sends CREATE_CHILD_SA with REKEY_SA, the
    // head-end answers, a new CHILD SA with new SPIs replaces the old one.
    let after_child = wait_sa(&rig, "CHILD SA rekeyed by charon", 20, |s| {
        let now = installed_spi_in(s);
        !now.is_empty() && now.iter().all(|spi| !first_child.contains(spi))
    });
    assert_eq!(
        after_child.initiator_spi, sa.initiator_spi,
        "child rekey keeps the IKE SA"
    );
    let log = rig.charon.log_since(log0);
    assert!(
        log.contains("generating CREATE_CHILD_SA request"),
        "charon log:\n{log}"
    );
    assert!(
        log.contains("parsed CREATE_CHILD_SA response"),
        "charon log:\n{log}"
    );

    // IKE SA rekey: new IKE SPIs, the tunnel (VIP) stays, one IKE SA remains.
    let after_ike = wait_sa(&rig, "IKE SA rekeyed by charon", 25, |s| {
        s.initiator_spi != sa.initiator_spi && s.responder_spi != sa.responder_spi
    });
    assert_eq!(
        after_ike.local_vips, sa.local_vips,
        "VIP survives the IKE rekey"
    );
    assert!(after_ike.initiator, "charon initiated this rekey");
    assert!(
        !installed_spi_in(&after_ike).is_empty(),
        "CHILD SA moved to the new IKE SA"
    );
    support::wait_for("old IKE SA deleted", Duration::from_secs(10), || {
        (rig.charon.list_sas().len() == 1).then_some(())
    });
    rig.he_still_up();
}

#[test]
fn rekey_initiated_by_headend() {
    let mut rig = Rig::new(
        "rekey_by_headend",
        |h| {
            h.ike_lifetime = Some("10s".into());
            h.child_lifetime = Some("5s".into());
            h.rekey_jitter = Some("1s".into());
        },
        |_| {},
    );
    let sa = rig.up();
    let first_child = installed_spi_in(&sa);
    let log0 = rig.charon.log_len();

    let after_child = wait_sa(&rig, "CHILD SA rekeyed by the head-end", 20, |s| {
        let now = installed_spi_in(s);
        !now.is_empty() && now.iter().all(|spi| !first_child.contains(spi))
    });
    assert_eq!(after_child.initiator_spi, sa.initiator_spi);
    let log = rig.charon.log_since(log0);
    assert!(
        log.contains("parsed CREATE_CHILD_SA request"),
        "charon log:\n{log}"
    );
    assert!(
        log.contains("generating CREATE_CHILD_SA response"),
        "charon log:\n{log}"
    );
    assert!(
        !log.contains("generating CREATE_CHILD_SA request"),
        "charon must not be the one rekeying (its lifetimes are hours):\n{log}"
    );

    // IKE rekey initiated by the head-end: charon's new IKE SA has it as initiator.
    let after_ike = wait_sa(&rig, "IKE SA rekeyed by the head-end", 25, |s| {
        s.initiator_spi != sa.initiator_spi
    });
    assert!(
        !after_ike.initiator,
        "the head-end initiated the IKE rekey: {after_ike:?}"
    );
    assert_eq!(after_ike.local_vips, sa.local_vips);
    support::wait_for("old IKE SA deleted", Duration::from_secs(10), || {
        (rig.charon.list_sas().len() == 1).then_some(())
    });
    rig.he_still_up();
}

#[test]
fn dpd_charon_probes_headend() {
    let rig = Rig::new(
        "dpd_charon_probes",
        |_| {},
        |c| {
            c.dpd_delay = Some("2s".into());
        },
    );
    let sa = rig.up();
    let log0 = rig.charon.log_len();
    // Empty INFORMATIONAL requests (liveness checks, RFC 7296 2.4) get answered.
    support::wait_for("two DPD round trips", Duration::from_secs(15), || {
        let log = rig.charon.log_since(log0);
        let answered = log.matches("parsed INFORMATIONAL response").count();
        (log.contains("generating INFORMATIONAL request") && answered >= 2).then_some(())
    });
    let now = rig.charon.wait_established("net", Duration::from_secs(1));
    assert_eq!(
        now.initiator_spi, sa.initiator_spi,
        "SA survives liveness checks"
    );
    assert!(
        !rig.charon.log_text().contains("giving up"),
        "no DPD retransmission timeout"
    );
}

#[test]
fn dpd_headend_probes_and_declares_dead_peer() {
    let mut rig = Rig::new(
        "dpd_headend",
        |h| {
            h.dpd_delay = Some("2s".into());
            h.retransmit_timeout = Some("500ms".into());
            h.retransmit_tries = Some(2);
        },
        |_| {},
    );
    rig.up();
    support::headend::wait_up(&rig.he, "router-1-example", Duration::from_secs(5));
    let log0 = rig.charon.log_len();
    // The head-end checks liveness; charon answers.
    rig.charon.wait_log_since(
        log0,
        "parsed INFORMATIONAL request",
        Duration::from_secs(10),
    );
    rig.charon.wait_log_since(
        log0,
        "generating INFORMATIONAL response",
        Duration::from_secs(5),
    );

    // Freeze charon: the head-end's checks go unanswered; after its retransmissions it
    // declares the peer dead and removes the tunnel.
    let he0 = rig.he.proc.log_len();
    rig.charon.pause(true);
    let reason =
        support::headend::wait_down(&rig.he, he0, "router-1-example", Duration::from_secs(20));
    assert_eq!(reason, "timeout", "dead peer detected by liveness checks");
    rig.charon.pause(false);
    rig.he_still_up();
}

#[test]
fn delete_from_charon_then_reconnect_gets_same_vip() {
    let rig = Rig::new("delete_from_charon", |_| {}, |_| {});
    let sa = rig.up();
    support::headend::wait_up(&rig.he, "router-1-example", Duration::from_secs(5));
    let he0 = rig.he.proc.log_len();
    let log0 = rig.charon.log_len();
    let t = rig.charon.terminate_ike("net");
    assert!(t.ok(), "swanctl --terminate: {}", t.all());
    // charon sent a Delete and the head-end answered it (RFC 7296 1.4.1).
    let log = rig.charon.log_since(log0);
    assert!(
        log.contains("generating INFORMATIONAL request"),
        "charon log:\n{log}"
    );
    assert!(log.contains("IKE_SA deleted") || log.contains("parsed INFORMATIONAL response"));
    assert!(rig.charon.list_sas().is_empty());
    let reason =
        support::headend::wait_down(&rig.he, he0, "router-1-example", Duration::from_secs(5));
    assert_eq!(reason, "peer-deleted");

    // The same identity reconnects and gets its previous address back.
    let again = rig.up();
    assert_eq!(
        again.local_vips, sa.local_vips,
        "reconnecting identity keeps its VIP"
    );
    assert_ne!(again.initiator_spi, sa.initiator_spi);
}

#[test]
fn delete_from_headend_on_sigterm() {
    let mut rig = Rig::new("delete_from_headend", |_| {}, |_| {});
    rig.up();
    let log0 = rig.charon.log_len();
    // SIGTERM: the daemon deletes every IKE SA (sends Delete) and exits 0 within 2 s.
    rig.he.proc.signal("TERM");
    let code = support::wait_for("headend exit after SIGTERM", Duration::from_secs(3), || {
        rig.he.proc.exited()
    });
    assert_eq!(code, 0, "headend exit code after SIGTERM");
    rig.charon
        .wait_log_since(log0, "received DELETE for IKE_SA", Duration::from_secs(5));
    support::wait_for("charon dropped the SA", Duration::from_secs(5), || {
        rig.charon.list_sas().is_empty().then_some(())
    });
}

#[test]
fn wrong_psk_fails_with_authentication_failed_and_leaves_nothing() {
    // One-address pool and room for a single IKE SA: anything the failed attempt left
    // behind (a lease, an SA) would make the following good peer fail.
    let mut rig = Rig::new(
        "wrong_psk",
        |h| h.pool_v4 = Some("10.99.0.7/32".into()),
        |_| {},
    );
    let bad_ctx = &rig.ctx;
    let mut bad = Conn::initiator("bad", &rig.peer_addr, &rig.he_addr, "intruder.example");
    bad.remote_id = Some(HE_ID.into());
    let mut good = Conn::initiator("net", &rig.peer_addr, &rig.he_addr, PEER_ID);
    good.remote_id = Some(HE_ID.into());
    rig.charon.load(
        bad_ctx,
        &SwanctlConf {
            conns: vec![bad, good],
            pools: vec![],
            secrets: vec![
                (vec!["intruder.example".into()], "definitely-wrong".into()),
                (vec![PEER_ID.into()], PSK.into()),
            ],
        },
    );
    let o = rig.charon.initiate("bad");
    assert!(!o.ok(), "a wrong PSK must not establish:\n{}", o.all());
    assert!(
        o.all().contains("AUTHENTICATION_FAILED"),
        "swanctl output:\n{}",
        o.all()
    );
    assert!(rig
        .charon
        .list_sas()
        .iter()
        .all(|s| s.state != "ESTABLISHED"));
    assert!(
        !support::headend::saw_up(&rig.he, "intruder-example"),
        "head-end reported a tunnel for the failed peer:\n{}",
        rig.he.log_text()
    );

    // Nothing left: the good peer gets the pool's only address.
    let sa = rig.up();
    assert_eq!(sa.local_vips, vec!["10.99.0.7".to_string()]);
    rig.he_still_up();
    // The daemon's SA table holds only the good peer's IKE SA (its shutdown line counts
    // the SAs it deletes).
    rig.he.proc.signal("TERM");
    support::wait_for("headend exits", Duration::from_secs(3), || {
        rig.he.proc.exited()
    });
    assert_eq!(
        support::headend::sa_count_at_shutdown(&rig.he),
        Some(1),
        "SA table at shutdown:\n{}",
        rig.he.log_text()
    );
}

#[test]
fn nat_peer_moves_to_4500() {
    let ctx = TestCtx::new("nat_peer");
    let net = Natted::new(&ctx);
    let he_addr = net.he_addr.to_string();
    let mut hc = HeadendConf::responder(&he_addr, PSK, POOL);
    hc.local_id = HE_ID.into();
    let mut he = Headend::run(&ctx, Some(&net.he), "headend", &hc);
    let charon = Charon::start(&ctx, &net.peer, "peer");
    let mut conn = Conn::initiator("net", &net.peer_addr.to_string(), &he_addr, PEER_ID);
    conn.remote_id = Some(HE_ID.into());
    conn.dpd_delay = Some("2s".into());
    charon.load(
        &ctx,
        &SwanctlConf {
            conns: vec![conn],
            pools: vec![],
            secrets: vec![(vec![], PSK.into())],
        },
    );
    let out = charon.initiate_ok("net");
    let sa = charon.wait_established("net", Duration::from_secs(10));
    // The head-end's NAT_DETECTION_DESTINATION_IP told charon it is behind a NAT
    // (RFC 7296 2.23), and both moved to 4500 with the non-ESP marker (RFC 3948).
    assert!(
        sa.nat_local,
        "charon should learn from the head-end that it is NATed: {sa:?}"
    );
    assert_eq!(sa.remote_port, "4500");
    assert!(
        out.all().contains(&format!("to {he_addr}[4500]")),
        "IKE_AUTH should go to port 4500:\n{}",
        out.all()
    );
    assert!(in_pool(&sa.local_vips[0]));
    // The tunnel stays up across liveness checks through the NAT.
    let log0 = charon.log_len();
    charon.wait_log_since(
        log0,
        "parsed INFORMATIONAL response",
        Duration::from_secs(10),
    );
    let line = support::headend::wait_up(&he, "router-1-example", Duration::from_secs(5));
    let peer: std::net::SocketAddr = field(&line, "peer")
        .and_then(|p| p.parse().ok())
        .expect("peer=ip:port field");
    assert_eq!(
        peer.ip().to_string(),
        net.nat_public.to_string(),
        "head-end sees the NAT: {line}"
    );
    assert_eq!(field(&line, "udp_encap"), Some("true"), "{line}");
    he.assert_running();
}

impl Rig {
    /// The daemon must have survived whatever the test did.
    fn he_still_up(&mut self) {
        self.he.assert_running();
    }
}

#[test]
fn rebooted_peer_with_initial_contact_replaces_its_old_sa() {
    let mut rig = Rig::new("initial_contact", |_| {}, |_| {});
    let sa = rig.up();
    support::headend::wait_up(&rig.he, "router-1-example", Duration::from_secs(5));
    let he0 = rig.he.proc.log_len();

    // The router reboots: charon dies without a Delete, a new charon connects with the
    // same identity and INITIAL_CONTACT (RFC 7296 2.4).
    rig.charon.crash();
    let fresh = Charon::start(&rig.ctx, &rig.net.peer, "peer2");
    let mut conn = Conn::initiator("net", &rig.peer_addr, &rig.he_addr, PEER_ID);
    conn.remote_id = Some(HE_ID.into());
    fresh.load(
        &rig.ctx,
        &SwanctlConf {
            conns: vec![conn],
            pools: vec![],
            secrets: vec![(vec![], PSK.into())],
        },
    );
    let out = fresh.initiate_ok("net");
    assert!(
        out.all().contains("N(INIT_CONTACT)"),
        "charon sends INITIAL_CONTACT:\n{}",
        out.all()
    );
    let sa2 = fresh.wait_established("net", Duration::from_secs(10));
    assert_ne!(sa2.initiator_spi, sa.initiator_spi);

    // The head-end dropped the stale SA of that identity and the address came back.
    let reason =
        support::headend::wait_down(&rig.he, he0, "router-1-example", Duration::from_secs(5));
    assert_eq!(reason, "initial-contact");
    assert_eq!(
        sa2.local_vips, sa.local_vips,
        "the identity gets its address back"
    );
    drop(fresh);
    rig.he_still_up();
}
