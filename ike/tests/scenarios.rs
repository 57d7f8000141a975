//! Scenario tests of the IKEv2 engine on the `Pair` harness (virtual clock, simulated
//! network). Each asserts what a user of the engine observes: events, SA tables,
//! counters.
#![allow(clippy::unwrap_used)]
mod util;

use std::sync::Arc;
use std::time::Duration;

use ike::{DeleteReason, Event};
use util::*;

const SUITES: [&str; 4] = [
    "aes256gcm16-prfsha256-x25519",
    "aes128-sha256-ecp256",
    "aes256-sha384-modp2048",
    "chacha20poly1305-prfsha512-x25519",
];

fn child_installed(n: &Node) -> Vec<ike::ChildSa> {
    n.events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaInstalled(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn establish_with_each_suite() {
    for (i, s) in SUITES.iter().enumerate() {
        let mut p = pair(&SUITES, 100 + i as u64);
        let id = p.connect(Arc::new(initiator_config(s, "router1.example", PSK)));
        p.drive();
        assert_eq!(
            p.initiator.established().len(),
            1,
            "{s}: initiator events {:?}",
            p.initiator.events
        );
        assert_eq!(p.responder.established().len(), 1, "{s}");
        // Both ends agree on the CHILD SA: SPIs crossed, keys equal per direction.
        let ci = child_installed(&p.initiator);
        let cr = child_installed(&p.responder);
        assert_eq!((ci.len(), cr.len()), (1, 1), "{s}");
        assert_eq!(ci[0].inbound.spi, cr[0].outbound.spi);
        assert_eq!(ci[0].outbound.spi, cr[0].inbound.spi);
        assert_eq!(*ci[0].outbound.encr_key, *cr[0].inbound.encr_key, "{s}");
        assert_eq!(*ci[0].inbound.integ_key, *cr[0].outbound.integ_key, "{s}");
        assert_ne!(*ci[0].inbound.encr_key, *ci[0].outbound.encr_key);
        // The virtual IP came from the pool and the initiator learned it.
        let Event::IkeSaEstablished {
            virtual_ips,
            ike_sa,
            remote_id,
            ..
        } = p.initiator.established()[0].clone()
        else {
            unreachable!()
        };
        assert_eq!(ike_sa, id);
        assert_eq!(remote_id, fqdn("headend.example"));
        assert_eq!(virtual_ips.len(), 1);
        assert!(
            virtual_ips[0].to_string().starts_with("100.64.0."),
            "{virtual_ips:?}"
        );
        // TS narrowed: our TSi is the virtual IP, TSr the configured inside network.
        assert_eq!(ci[0].local_ts, vec![ts_net_ip(virtual_ips[0])]);
        assert_eq!(
            ci[0].remote_ts,
            vec![ts_net([10, 200, 0, 0], [10, 200, 255, 255])]
        );
        let Event::IkeSaEstablished {
            remote_id,
            virtual_ips: rv,
            ..
        } = p.responder.established()[0].clone()
        else {
            unreachable!()
        };
        assert_eq!(remote_id, fqdn("router1.example"));
        assert_eq!(rv, virtual_ips);
        assert_eq!(p.responder.ep.half_open(), 0);
    }
}

fn ts_net_ip(a: std::net::IpAddr) -> ike::TrafficSelector {
    ike::TrafficSelector {
        start: a,
        end: a,
        protocol: 0,
        start_port: 0,
        end_port: 65535,
    }
}

#[test]
fn wrong_psk_fails_with_authentication_failed_and_leaves_nothing() {
    let mut p = pair(&SUITES[..1], 2);
    p.connect(Arc::new(initiator_config(
        SUITES[0],
        "router1.example",
        b"not the key",
    )));
    p.drive();
    assert!(p.initiator.established().is_empty());
    let f = p.initiator.negotiation_failures();
    assert!(
        f.iter().any(|r| r.contains("AUTHENTICATION_FAILED")),
        "{f:?}"
    );
    assert!(
        matches!(p.initiator.deleted()[..], [(_, DeleteReason::Failed(ref r))] if r.contains("AUTHENTICATION_FAILED"))
    );
    assert!(p.initiator.ep.ike_sas().is_empty());
    assert!(p.responder.ep.ike_sas().is_empty(), "responder kept state");
    assert_eq!(p.responder.ep.half_open(), 0);
    assert_eq!(p.responder.ep.pool().leased(), 0);
    assert!(p.responder.established().is_empty());
    assert_eq!(p.responder.ep.counters().failed, 1);
    // Operators see why: the responder counts its own refusal, the initiator the notify.
    assert_eq!(
        p.responder.ep.counters().failed_by.get("auth_failed"),
        Some(&1),
        "{:?}",
        p.responder.ep.counters().failed_by
    );
    assert_eq!(
        p.initiator
            .ep
            .counters()
            .failed_by
            .get("peer_authentication_failed"),
        Some(&1),
        "{:?}",
        p.initiator.ep.counters().failed_by
    );
}

fn established_pair(seed: u64) -> (Pair, ike::IkeSaId) {
    let mut p = pair(&SUITES, seed);
    let id = p.connect(Arc::new(initiator_config(
        SUITES[0],
        "router1.example",
        PSK,
    )));
    p.drive();
    assert_eq!(p.initiator.established().len(), 1);
    (p, id)
}

fn children(n: &Node) -> Vec<(ike::Spi, ike::Spi)> {
    n.ep.ike_sas()
        .iter()
        .flat_map(|s| s.child_sas.iter().map(|c| (c.inbound, c.outbound)))
        .collect()
}

fn rekeyed(n: &Node) -> Vec<(ike::Spi, ike::ChildSa)> {
    n.events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaRekeyed {
                old_inbound, new, ..
            } => Some((*old_inbound, new.clone())),
            _ => None,
        })
        .collect()
}

fn child_deleted(n: &Node) -> Vec<ike::Spi> {
    n.events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaDeleted { inbound, .. } => Some(*inbound),
            _ => None,
        })
        .collect()
}

/// After a rekey both ends hold exactly one CHILD SA, the same pair, with matching keys.
fn assert_one_matching_child(p: &Pair) {
    let ci = children(&p.initiator);
    let cr = children(&p.responder);
    assert_eq!(ci.len(), 1, "initiator children {ci:?}");
    assert_eq!(cr.len(), 1, "responder children {cr:?}");
    assert_eq!(ci[0], (cr[0].1, cr[0].0));
}

#[test]
fn child_rekey_from_initiator_and_from_responder() {
    let (mut p, _) = established_pair(3);
    let (old_in, _) = children(&p.initiator)[0];
    p.initiator.ep.rekey_child_sa(p.now, old_in).unwrap();
    p.drive();
    let ri = rekeyed(&p.initiator);
    let rr = rekeyed(&p.responder);
    assert_eq!(ri.len(), 1);
    assert_eq!(rr.len(), 1);
    assert_eq!(ri[0].0, old_in);
    assert_eq!(ri[0].1.inbound.spi, rr[0].1.outbound.spi);
    assert_eq!(*ri[0].1.outbound.encr_key, *rr[0].1.inbound.encr_key);
    assert_eq!(child_deleted(&p.initiator), vec![old_in]);
    assert_eq!(child_deleted(&p.responder).len(), 1);
    assert_one_matching_child(&p);
    // Now the responder rekeys (its own timer path through the public API).
    let (r_in, _) = children(&p.responder)[0];
    p.responder.ep.rekey_child_sa(p.now, r_in).unwrap();
    p.drive();
    assert_eq!(rekeyed(&p.responder).len(), 2);
    assert_eq!(rekeyed(&p.initiator).len(), 2);
    assert_one_matching_child(&p);
    assert!(
        p.responder.ep.rekey_child_sa(p.now, r_in).is_err(),
        "old SPI is gone"
    );
}

#[test]
fn child_rekey_by_lifetime_timer() {
    let mut icfg = base_config(None);
    icfg.lifetimes.child_rekey = Duration::from_secs(600);
    icfg.lifetimes.rekey_jitter = Duration::from_secs(30);
    let r = Arc::new(base_config(Some(responder_config(&SUITES))));
    let mut p = Pair::new(Arc::new(icfg), r, 4);
    p.connect(Arc::new(initiator_config(
        SUITES[1],
        "router1.example",
        PSK,
    )));
    p.drive();
    assert!(rekeyed(&p.initiator).is_empty());
    p.advance(Duration::from_secs(569));
    assert!(
        rekeyed(&p.initiator).is_empty(),
        "rekeyed before lifetime minus jitter"
    );
    p.advance(Duration::from_secs(32));
    assert_eq!(rekeyed(&p.initiator).len(), 1);
    p.drive();
    assert_one_matching_child(&p);
}

#[test]
fn simultaneous_child_rekey_collision_leaves_one_child() {
    for seed in 10..16 {
        let (mut p, _) = established_pair(seed);
        let (i_in, i_out) = children(&p.initiator)[0];
        p.initiator.ep.rekey_child_sa(p.now, i_in).unwrap();
        p.responder.ep.rekey_child_sa(p.now, i_out).unwrap();
        p.drive();
        // Both exchanges completed, the redundant SA and the old one are gone (2.8.1).
        assert_eq!(rekeyed(&p.initiator).len(), 2, "seed {seed}");
        assert_eq!(rekeyed(&p.responder).len(), 2, "seed {seed}");
        assert_one_matching_child(&p);
        let survivor = children(&p.initiator)[0].0;
        assert_ne!(survivor, i_in);
        // The survivor works for a further rekey.
        p.initiator.ep.rekey_child_sa(p.now, survivor).unwrap();
        p.drive();
        assert_one_matching_child(&p);
    }
}

#[test]
fn ike_rekey_moves_children_and_deletes_old_sa() {
    let (mut p, id) = established_pair(5);
    let child_before = children(&p.initiator);
    p.initiator.ep.rekey_ike_sa(p.now, id).unwrap();
    p.drive();
    let new_i: Vec<_> = p
        .initiator
        .events
        .iter()
        .filter_map(|e| match e {
            Event::IkeSaRekeyed { old, new } => Some((*old, *new)),
            _ => None,
        })
        .collect();
    assert_eq!(new_i.len(), 1);
    assert_eq!(new_i[0].0, id);
    assert_eq!(p.initiator.deleted(), vec![(id, DeleteReason::Rekeyed)]);
    assert_eq!(p.responder.deleted().len(), 1);
    assert_eq!(p.responder.deleted()[0].1, DeleteReason::Rekeyed);
    let si = p.initiator.ep.ike_sas();
    let sr = p.responder.ep.ike_sas();
    assert_eq!((si.len(), sr.len()), (1, 1));
    assert_eq!(si[0].id, new_i[0].1);
    assert_eq!((si[0].spi_i, si[0].spi_r), (sr[0].spi_i, sr[0].spi_r));
    assert_eq!(
        children(&p.initiator),
        child_before,
        "CHILD SAs move unchanged"
    );
    assert!(child_deleted(&p.initiator).is_empty());
    // The responder's lease moved with the SA.
    let vip = sr[0].virtual_ips[0];
    assert_eq!(p.responder.ep.pool().owner(vip), Some(sr[0].id));
    // The new IKE SA carries further exchanges: a CHILD rekey and a delete.
    p.initiator
        .ep
        .rekey_child_sa(p.now, child_before[0].0)
        .unwrap();
    p.drive();
    assert_one_matching_child(&p);
    p.responder.ep.rekey_ike_sa(p.now, sr[0].id).unwrap();
    p.drive();
    assert_eq!(p.initiator.ep.ike_sas().len(), 1);
    assert_eq!(p.responder.ep.ike_sas().len(), 1);
    assert_one_matching_child(&p);
}

#[test]
fn ike_rekey_by_lifetime_timer() {
    let mut rcfg = base_config(Some(responder_config(&SUITES)));
    rcfg.lifetimes.ike_rekey = Duration::from_secs(300);
    let mut p = Pair::new(Arc::new(base_config(None)), Arc::new(rcfg), 6);
    p.connect(Arc::new(initiator_config(
        SUITES[2],
        "router1.example",
        PSK,
    )));
    p.drive();
    p.advance(Duration::from_secs(301));
    p.drive();
    assert_eq!(
        p.responder
            .count(|e| matches!(e, Event::IkeSaRekeyed { .. })),
        1
    );
    assert_eq!(
        p.initiator
            .count(|e| matches!(e, Event::IkeSaRekeyed { .. })),
        1
    );
    assert_eq!(p.initiator.ep.ike_sas().len(), 1);
    assert_one_matching_child(&p);
}

#[test]
fn dpd_declares_a_vanished_peer_dead() {
    let mut icfg = base_config(None);
    icfg.lifetimes.dpd_delay = Some(Duration::from_secs(10));
    let r = Arc::new(base_config(Some(responder_config(&SUITES))));
    let mut p = Pair::new(Arc::new(icfg), r, 7);
    p.horizon = Duration::from_secs(5);
    let id = p.connect(Arc::new(initiator_config(
        SUITES[0],
        "router1.example",
        PSK,
    )));
    p.drive();
    // While the peer answers, liveness checks keep the SA up.
    p.advance(Duration::from_secs(60));
    assert!(p.initiator.deleted().is_empty());
    assert!(p.initiator.ep.counters().sent >= 2 + 5);
    p.blackhole = Some(Side::Responder);
    // 10 s DPD delay, then 0.5+1+2+4+8 s of retransmissions.
    p.advance(Duration::from_secs(40));
    assert_eq!(p.initiator.deleted(), vec![(id, DeleteReason::Timeout)]);
    assert!(p.initiator.ep.ike_sas().is_empty());
    assert_eq!(child_deleted(&p.initiator).len(), 1);
}

#[test]
fn delete_from_initiator() {
    let (mut p, id) = established_pair(8);
    p.initiator.ep.delete_ike_sa(p.now, id).unwrap();
    p.drive();
    assert_eq!(p.initiator.deleted(), vec![(id, DeleteReason::LocalDelete)]);
    assert_eq!(p.responder.deleted().len(), 1);
    assert_eq!(p.responder.deleted()[0].1, DeleteReason::PeerDeleted);
    assert!(p.initiator.ep.ike_sas().is_empty());
    assert!(p.responder.ep.ike_sas().is_empty());
    assert_eq!(p.responder.ep.pool().leased(), 0, "lease released");
    assert_eq!(child_deleted(&p.responder).len(), 1);
}

#[test]
fn delete_from_responder() {
    let (mut p, id) = established_pair(9);
    let rid = p.responder.ep.ike_sas()[0].id;
    p.responder.ep.delete_ike_sa(p.now, rid).unwrap();
    p.drive();
    assert_eq!(
        p.responder.deleted(),
        vec![(rid, DeleteReason::LocalDelete)]
    );
    assert_eq!(p.initiator.deleted(), vec![(id, DeleteReason::PeerDeleted)]);
    assert!(p.initiator.ep.ike_sas().is_empty());
    assert!(p.responder.ep.ike_sas().is_empty());
    assert_eq!(p.responder.ep.pool().leased(), 0);
}

#[test]
fn invalid_ke_payload_round_trip() {
    // The responder only takes ECP-256; the initiator guesses Curve25519 first.
    let mut p = pair(&["aes128-sha256-ecp256"], 11);
    let mut cfg = initiator_config("aes128-sha256-ecp256", "router1.example", PSK);
    cfg.ike_proposals[0].dh = vec![ike::DhGroup::Curve25519, ike::DhGroup::Ecp256];
    p.connect(Arc::new(cfg));
    p.drive();
    assert_eq!(p.initiator.established().len(), 1);
    assert_eq!(p.responder.ep.counters().dropped("invalid_ke"), 1);
    assert_eq!(p.responder.ep.ike_sas().len(), 1);
    // An initiator that did not offer the group at all gets NO_PROPOSAL_CHOSEN.
    let mut p = pair(&["aes128-sha256-ecp256"], 12);
    let mut cfg = initiator_config("aes128-sha256-ecp256", "router1.example", PSK);
    cfg.ike_proposals[0].dh = vec![ike::DhGroup::Curve25519];
    p.connect(Arc::new(cfg));
    p.drive();
    assert!(p.initiator.established().is_empty());
    assert!(p.responder.ep.ike_sas().is_empty());
    assert!(p
        .initiator
        .negotiation_failures()
        .iter()
        .any(|r| r.contains("NO_PROPOSAL_CHOSEN")));
}

#[test]
fn responder_refuses_unknown_suite_with_no_proposal_chosen() {
    let mut p = pair(&["aes256gcm16-prfsha256-x25519"], 13);
    p.connect(Arc::new(initiator_config(
        "aes256-sha384-modp2048",
        "router1.example",
        PSK,
    )));
    p.drive();
    assert!(p.initiator.established().is_empty());
    assert!(
        p.initiator
            .negotiation_failures()
            .iter()
            .any(|r| r.contains("NO_PROPOSAL_CHOSEN")),
        "{:?}",
        p.initiator.events
    );
    assert!(p.responder.ep.ike_sas().is_empty());
}

#[test]
fn lost_packets_are_retransmitted() {
    let mut p = pair(&SUITES, 21);
    p.loss = 0.3;
    let cfg = Arc::new(initiator_config(SUITES[0], "router1.example", PSK));
    let mut ok = 0;
    for port in 0..10 {
        p.connect_from(20000 + port, cfg.clone());
    }
    p.drive();
    ok += p.initiator.established().len();
    assert!(p.lost > 0);
    assert!(p.initiator.ep.counters().retransmitted > 0);
    // With 4 retries at 30 % loss nearly all get through; each one that did is
    // established on both ends exactly once.
    assert!(ok >= 8, "only {ok} of 10 established");
    assert_eq!(p.responder.established().len(), ok);
    assert_eq!(p.responder.live_established(), ok);
}

#[test]
fn duplicated_datagrams_are_answered_from_the_cache() {
    let mut p = pair(&SUITES, 22);
    p.duplicate = 1.0;
    p.connect(Arc::new(initiator_config(
        SUITES[3],
        "router1.example",
        PSK,
    )));
    p.drive();
    assert_eq!(p.initiator.established().len(), 1);
    assert_eq!(p.responder.established().len(), 1);
    assert_eq!(p.responder.ep.ike_sas().len(), 1);
    // Every duplicated request was replayed from the cache, not processed again.
    assert!(
        p.responder.ep.counters().replayed >= 2,
        "{:?}",
        p.responder.ep.counters()
    );
    // Duplicated responses are dropped by the initiator (message ID already done).
    assert!(
        p.initiator.ep.counters().dropped("invalid_message_id")
            + p.initiator.ep.counters().dropped("unexpected")
            >= 1
    );
}

#[test]
fn replayed_old_requests_create_nothing() {
    let (mut p, _) = established_pair(23);
    let before = p.responder.ep.counters().clone();
    // Replay everything the initiator ever sent, from its real address.
    let sent: Vec<_> = p.initiator.sent.clone();
    for t in &sent {
        p.inject_to_responder(t.socket, t.local, &t.payload);
    }
    p.drive();
    assert_eq!(p.responder.ep.ike_sas().len(), 1);
    assert_eq!(p.responder.established().len(), 1);
    let after = p.responder.ep.counters();
    // The IKE_AUTH request is the last answered request: its replay gets the cached
    // response; the IKE_SA_INIT replay is refused (the SA with that SPIi moved on).
    assert!(after.replayed > before.replayed);
    assert_eq!(p.initiator.ep.ike_sas().len(), 1, "initiator still fine");
}

#[test]
fn fragmentation_with_a_small_mtu() {
    let mut rc = base_config(Some(responder_config(&SUITES)));
    rc.limits.fragment_mtu = 200;
    let mut ic = base_config(None);
    ic.limits.fragment_mtu = 200;
    let mut p = Pair::new(Arc::new(ic), Arc::new(rc), 24);
    p.connect(Arc::new(initiator_config(
        SUITES[2],
        "router1.example",
        PSK,
    )));
    p.drive();
    assert_eq!(p.initiator.established().len(), 1);
    assert_eq!(p.responder.established().len(), 1);
    const SKF: u8 = 53;
    for n in [&p.initiator, &p.responder] {
        let frags = n
            .sent
            .iter()
            .filter(|t| t.payload.get(16) == Some(&SKF))
            .count();
        assert!(frags >= 2, "expected IKE_AUTH to go out in fragments");
        for t in n.sent.iter().filter(|t| t.payload.get(18) != Some(&34)) {
            assert!(
                t.payload.len() <= 200,
                "{} octet datagram above the MTU",
                t.payload.len()
            );
        }
    }
    // And with loss, fragments are retransmitted and reassembled.
    let mut rc = base_config(Some(responder_config(&SUITES)));
    rc.limits.fragment_mtu = 200;
    let mut ic = base_config(None);
    ic.limits.fragment_mtu = 200;
    let mut p = Pair::new(Arc::new(ic), Arc::new(rc), 25);
    p.loss = 0.2;
    p.reorder = Duration::from_millis(30);
    for port in 0..5 {
        p.connect_from(
            21000 + port,
            Arc::new(initiator_config(
                SUITES[0],
                &format!("r{port}.example"),
                PSK,
            )),
        );
    }
    p.drive();
    assert!(
        p.initiator.established().len() >= 4,
        "{}",
        p.initiator.established().len()
    );
}

#[test]
fn nat_moves_to_the_natt_port() {
    let mut p = pair(&SUITES, 26);
    p.nat = true;
    let id = p.connect(Arc::new(initiator_config(
        SUITES[0],
        "router1.example",
        PSK,
    )));
    p.drive();
    assert_eq!(p.initiator.established().len(), 1);
    let si = p.initiator.ep.ike_sa(id).unwrap();
    assert!(si.udp_encap);
    assert_eq!(si.remote.port(), NATT_PORT);
    assert_eq!(si.local.port(), NATT_PORT);
    let sr = &p.responder.ep.ike_sas()[0];
    assert!(sr.udp_encap);
    assert_eq!(sr.remote.ip(), std::net::IpAddr::V4(NAT_IP));
    assert_ne!(
        sr.remote.port(),
        IKE_PORT,
        "responder follows the NAT mapping of port 4500"
    );
    let ci = child_installed(&p.initiator);
    assert!(ci[0].udp_encap);
    let cr = child_installed(&p.responder);
    assert!(cr[0].udp_encap);
    assert_eq!(cr[0].remote, sr.remote);
    // IKE_AUTH and later went over the NAT-T socket with the non-ESP marker.
    let natt: Vec<_> = p
        .initiator
        .sent
        .iter()
        .filter(|t| t.socket == ike::SocketKind::NatT)
        .collect();
    assert!(!natt.is_empty());
    assert!(natt.iter().all(|t| t.payload[..4] == [0, 0, 0, 0]));
    // Without NAT nothing moves.
    let (p2, id2) = established_pair(27);
    let s2 = p2.initiator.ep.ike_sa(id2).unwrap();
    assert!(!s2.udp_encap);
    assert_eq!(s2.remote.port(), IKE_PORT);
}

#[test]
fn responder_follows_a_nat_rebinding() {
    let mut p = pair(&SUITES, 28);
    p.nat = true;
    let id = p.connect(Arc::new(initiator_config(
        SUITES[0],
        "router1.example",
        PSK,
    )));
    p.drive();
    let old = p.responder.ep.ike_sas()[0].remote;
    // The NAT forgets its mapping: the next request arrives from a new port.
    p.reset_nat(50000);
    let (child_in, _) = children(&p.initiator)[0];
    p.initiator.ep.rekey_child_sa(p.now, child_in).unwrap();
    p.drive();
    let new = p.responder.ep.ike_sas()[0].remote;
    assert_ne!(old, new);
    assert_eq!(new.port(), 50000);
    assert!(p
        .responder
        .events
        .iter()
        .any(|e| matches!(e, Event::IkeSaAddressChanged { remote, .. } if *remote == new)));
    assert_one_matching_child(&p);
    let _ = id;
}

#[test]
fn initial_contact_replaces_the_old_sa_and_keeps_the_address() {
    let mut p = pair(&SUITES, 29);
    let mut cfg = initiator_config(SUITES[0], "router1.example", PSK);
    cfg.initial_contact = true;
    let cfg = Arc::new(cfg);
    p.connect_from(30001, cfg.clone());
    p.drive();
    let first = p.responder.ep.ike_sas()[0].clone();
    // The router reboots: a new IKE SA from a new port, old state lost on its side.
    p.connect_from(30002, cfg);
    p.drive();
    let live = p.responder.ep.ike_sas();
    assert_eq!(live.len(), 1, "old SA removed");
    assert_ne!(live[0].id, first.id);
    assert_eq!(
        p.responder.deleted(),
        vec![(first.id, DeleteReason::InitialContact)]
    );
    assert_eq!(
        live[0].virtual_ips, first.virtual_ips,
        "same identity gets its address back"
    );
    // Without INITIAL_CONTACT both stay and get distinct addresses.
    let mut p = pair(&SUITES, 30);
    let cfg = Arc::new(initiator_config(SUITES[0], "router1.example", PSK));
    p.connect_from(30001, cfg.clone());
    p.connect_from(30002, cfg);
    p.drive();
    let live = p.responder.ep.ike_sas();
    assert_eq!(live.len(), 2);
    assert_ne!(live[0].virtual_ips, live[1].virtual_ips);
}

#[test]
fn pool_is_exclusive_and_exhaustion_is_reported() {
    let mut rcfg = responder_config(&SUITES);
    rcfg.pool.v4 = Some("100.64.0.0/29".parse().unwrap()); // 6 addresses
    let mut p = Pair::new(
        Arc::new(base_config(None)),
        Arc::new(base_config(Some(rcfg))),
        31,
    );
    for i in 0..8u16 {
        p.connect_from(
            31000 + i,
            Arc::new(initiator_config(SUITES[0], &format!("r{i}.example"), PSK)),
        );
    }
    p.drive();
    let live = p.responder.ep.ike_sas();
    let mut vips: Vec<_> = live.iter().flat_map(|s| s.virtual_ips.clone()).collect();
    let n = vips.len();
    vips.sort();
    vips.dedup();
    assert_eq!(vips.len(), n, "an address was handed out twice");
    assert_eq!(n, 6);
    // The two that found the pool empty got INTERNAL_ADDRESS_FAILURE for their CHILD SA
    // and deleted their IKE SA.
    let failed = p
        .initiator
        .deleted()
        .into_iter()
        .filter(
            |(_, r)| matches!(r, DeleteReason::Failed(s) if s.contains("INTERNAL_ADDRESS_FAILURE")),
        )
        .count();
    assert_eq!(failed, 2, "{:?}", p.initiator.deleted());
    assert_eq!(p.responder.ep.pool().leased(), 6);
}

#[test]
fn cookie_under_load() {
    let mut rcfg = base_config(Some(responder_config(&SUITES)));
    rcfg.limits.cookie_threshold = 2;
    let mut p = Pair::new(Arc::new(base_config(None)), Arc::new(rcfg), 32);
    for i in 0..12u16 {
        p.connect_from(
            32000 + i,
            Arc::new(initiator_config(SUITES[0], &format!("r{i}.example"), PSK)),
        );
    }
    p.drive();
    assert!(p.responder.ep.counters().cookies_sent > 0);
    assert_eq!(p.initiator.established().len(), 12);
    assert_eq!(p.responder.ep.half_open(), 0);
}

#[test]
fn cookie_challenge_keeps_no_state() {
    let mut rcfg = base_config(Some(responder_config(&SUITES)));
    rcfg.limits.cookie_threshold = 0;
    let mut p = Pair::new(Arc::new(base_config(None)), Arc::new(rcfg), 33);
    // A spoofed flood that never returns the cookie.
    p.blackhole = Some(Side::Responder);
    for i in 0..50u16 {
        p.connect_from(
            33000 + i,
            Arc::new(initiator_config(SUITES[0], &format!("r{i}.example"), PSK)),
        );
    }
    p.advance(Duration::from_secs(1));
    // Every IKE_SA_INIT (first tries and retransmissions) got a cookie, nothing else.
    assert!(p.responder.ep.counters().cookies_sent >= 50);
    assert_eq!(
        p.responder.ep.counters().cookies_sent,
        p.responder.ep.counters().received
    );
    assert_eq!(p.responder.ep.half_open(), 0);
    assert!(p.responder.ep.ike_sas().is_empty());
}

#[test]
fn many_half_open_sas_are_bounded_and_expire() {
    let mut rcfg = base_config(Some(responder_config(&SUITES)));
    rcfg.limits.cookie_threshold = usize::MAX;
    rcfg.limits.half_open_max = 40;
    rcfg.limits.half_open_timeout = Duration::from_secs(10);
    let mut p = Pair::new(Arc::new(base_config(None)), Arc::new(rcfg), 34);
    // Initiators that never send IKE_AUTH: their IKE_SA_INIT responses are lost.
    p.blackhole = Some(Side::Responder);
    for i in 0..100u16 {
        p.connect_from(
            34000 + i,
            Arc::new(initiator_config(SUITES[0], &format!("r{i}.example"), PSK)),
        );
    }
    p.advance(Duration::from_millis(100));
    assert_eq!(p.responder.ep.half_open(), 40);
    assert_eq!(p.responder.ep.ike_sas().len(), 40);
    assert!(p.responder.ep.counters().dropped("limit") >= 60);
    p.advance(Duration::from_secs(60));
    assert_eq!(p.responder.ep.half_open(), 0);
    assert!(p.responder.ep.ike_sas().is_empty());
    assert!(p.responder.ep.counters().half_open_expired >= 40);
    // The initiators gave up: Timeout for each.
    assert_eq!(p.initiator.deleted().len(), 100);
    // And a good peer still gets in afterwards.
    p.blackhole = None;
    p.connect_from(
        35000,
        Arc::new(initiator_config(SUITES[0], "good.example", PSK)),
    );
    p.drive();
    assert_eq!(p.initiator.established().len(), 1);
}

#[test]
fn ipv6_virtual_address_and_pfs_rekey() {
    let mut rcfg = responder_config(&SUITES);
    rcfg.esp_proposals[0].dh = vec![ike::DhGroup::Curve25519];
    rcfg.local_ts.push(ike::TrafficSelector {
        start: "fd00:200::".parse().unwrap(),
        end: "fd00:200::ffff".parse().unwrap(),
        protocol: 0,
        start_port: 0,
        end_port: 65535,
    });
    let mut p = Pair::new(
        Arc::new(base_config(None)),
        Arc::new(base_config(Some(rcfg))),
        50,
    );
    let mut cfg = initiator_config(SUITES[0], "router6.example", PSK);
    cfg.request_vip6 = true;
    cfg.esp_proposals[0].dh = vec![ike::DhGroup::Curve25519];
    cfg.remote_ts.push(ike::TrafficSelector {
        start: "fd00:200::".parse().unwrap(),
        end: "fd00:200::ffff".parse().unwrap(),
        protocol: 0,
        start_port: 0,
        end_port: 65535,
    });
    p.connect(Arc::new(cfg));
    p.drive();
    let Event::IkeSaEstablished { virtual_ips, .. } = p.initiator.established()[0].clone() else {
        unreachable!()
    };
    assert_eq!(virtual_ips.len(), 2, "{virtual_ips:?}");
    assert!(virtual_ips.iter().any(|a| a.is_ipv4()));
    let v6 = virtual_ips.iter().find(|a| a.is_ipv6()).unwrap();
    assert!(v6.to_string().starts_with("fd00:64::"), "{v6}");
    let ci = child_installed(&p.initiator);
    assert_eq!(
        ci[0].local_ts.len(),
        2,
        "TSi narrowed to both virtual addresses"
    );
    assert_eq!(ci[0].remote_ts.len(), 2);
    // A CHILD rekey with PFS: new keys differ from a non-PFS derivation and match across.
    let (inb, _) = children(&p.initiator)[0];
    p.initiator.ep.rekey_child_sa(p.now, inb).unwrap();
    p.drive();
    let ri = rekeyed(&p.initiator);
    let rr = rekeyed(&p.responder);
    assert_eq!((ri.len(), rr.len()), (1, 1));
    assert_eq!(*ri[0].1.outbound.encr_key, *rr[0].1.inbound.encr_key);
    assert_one_matching_child(&p);
    // The KE payload travelled: the rekey request was bigger than a no-PFS one would be
    // (32-octet Curve25519 public value).
    let create_child: Vec<_> = p
        .initiator
        .sent
        .iter()
        .filter(|t| t.payload.get(18) == Some(&36))
        .collect();
    assert_eq!(create_child.len(), 1);
    assert!(
        create_child[0].payload.len() > 300,
        "{}",
        create_child[0].payload.len()
    );
}

#[test]
fn responder_without_pool_refuses_a_cfg_request() {
    let mut rcfg = responder_config(&SUITES);
    rcfg.pool = Default::default();
    let mut p = Pair::new(
        Arc::new(base_config(None)),
        Arc::new(base_config(Some(rcfg))),
        51,
    );
    p.connect(Arc::new(initiator_config(
        SUITES[0],
        "router1.example",
        PSK,
    )));
    p.drive();
    assert!(p.initiator.deleted().iter().any(
        |(_, r)| matches!(r, DeleteReason::Failed(s) if s.contains("INTERNAL_ADDRESS_FAILURE"))
    ));
    assert!(p.initiator.ep.ike_sas().is_empty());
    assert!(
        p.responder.ep.ike_sas().is_empty(),
        "the initiator deleted the useless IKE SA"
    );
    // Without a CFG request (site-to-site), no pool is needed.
    let mut rcfg = responder_config(&SUITES);
    rcfg.pool = Default::default();
    let mut p = Pair::new(
        Arc::new(base_config(None)),
        Arc::new(base_config(Some(rcfg))),
        52,
    );
    let mut cfg = initiator_config(SUITES[0], "site.example", PSK);
    cfg.request_vip4 = false;
    cfg.local_ts = vec![ts_net([192, 168, 7, 0], [192, 168, 7, 255])];
    p.connect(Arc::new(cfg));
    p.drive();
    assert_eq!(p.initiator.established().len(), 1);
    let ci = child_installed(&p.initiator);
    assert_eq!(
        ci[0].local_ts,
        vec![ts_net([192, 168, 7, 0], [192, 168, 7, 255])]
    );
}

#[test]
fn per_identity_psk_overrides_the_default() {
    let mut rcfg = responder_config(&SUITES);
    rcfg.auth = ike::AuthConfig::Psk(psk_store(Some(PSK), &[("special.example", b"special key")]));
    let r = Arc::new(base_config(Some(rcfg)));
    // The special identity must use its own key ...
    let mut p = Pair::new(Arc::new(base_config(None)), r.clone(), 53);
    p.connect(Arc::new(initiator_config(
        SUITES[0],
        "special.example",
        b"special key",
    )));
    p.drive();
    assert_eq!(p.responder.established().len(), 1);
    // ... and the default no longer works for it.
    let mut p = Pair::new(Arc::new(base_config(None)), r, 54);
    p.connect(Arc::new(initiator_config(
        SUITES[0],
        "special.example",
        PSK,
    )));
    p.drive();
    assert!(p.responder.established().is_empty());
    assert!(p
        .initiator
        .negotiation_failures()
        .iter()
        .any(|f| f.contains("AUTHENTICATION_FAILED")));
}

#[test]
fn pfs_rekey_follows_invalid_ke_payload() {
    let mut rcfg = responder_config(&SUITES);
    for e in &mut rcfg.esp_proposals {
        e.dh = vec![ike::DhGroup::Ecp256];
    }
    let mut p = Pair::new(
        Arc::new(base_config(None)),
        Arc::new(base_config(Some(rcfg))),
        55,
    );
    let mut cfg = initiator_config(SUITES[0], "router1.example", PSK);
    cfg.esp_proposals[0].dh = vec![ike::DhGroup::Curve25519, ike::DhGroup::Ecp256];
    p.connect(Arc::new(cfg));
    p.drive();
    let (inb, _) = children(&p.initiator)[0];
    p.initiator.ep.rekey_child_sa(p.now, inb).unwrap();
    p.drive();
    assert_eq!(
        p.responder.ep.counters().dropped("invalid_ke"),
        0,
        "answered, not dropped"
    );
    assert_eq!(
        rekeyed(&p.initiator).len(),
        1,
        "rekeyed on the second try with ECP-256"
    );
    assert_one_matching_child(&p);
    let create_child = p
        .initiator
        .sent
        .iter()
        .filter(|t| t.payload.get(18) == Some(&36))
        .count();
    assert_eq!(create_child, 2);
}

fn ike_rekeyed(n: &Node) -> Vec<(ike::IkeSaId, ike::IkeSaId)> {
    n.events
        .iter()
        .filter_map(|e| match e {
            Event::IkeSaRekeyed { old, new } => Some((*old, *new)),
            _ => None,
        })
        .collect()
}

/// Both ends hold exactly one IKE SA, the same one (same SPIs, complementary roles), and
/// the one CHILD SA on it has matching SPIs and keys. Returns (initiator, responder) ids.
fn assert_one_shared_ike_sa(p: &Pair, ctx: &str) -> (ike::IkeSaId, ike::IkeSaId) {
    let si = p.initiator.ep.ike_sas();
    let sr = p.responder.ep.ike_sas();
    assert_eq!(
        (si.len(), sr.len()),
        (1, 1),
        "{ctx}: IKE SAs {si:?} / {sr:?}"
    );
    assert_eq!(
        (si[0].spi_i, si[0].spi_r),
        (sr[0].spi_i, sr[0].spi_r),
        "{ctx}"
    );
    assert_ne!(si[0].initiator, sr[0].initiator, "{ctx}: roles");
    assert_eq!(si[0].state, ike::endpoint::IkeSaState::Established, "{ctx}");
    assert_eq!(sr[0].state, ike::endpoint::IkeSaState::Established, "{ctx}");
    assert_one_matching_child(p);
    // Keys of the live CHILD SA agree in both directions.
    let live = |n: &Node, inbound: ike::Spi| {
        n.events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::ChildSaInstalled(c) | Event::ChildSaRekeyed { new: c, .. }
                    if c.inbound.spi == inbound =>
                {
                    Some(c.clone())
                }
                _ => None,
            })
            .unwrap()
    };
    let ci = live(&p.initiator, si[0].child_sas[0].inbound);
    let cr = live(&p.responder, sr[0].child_sas[0].inbound);
    assert_eq!(*ci.outbound.encr_key, *cr.inbound.encr_key, "{ctx}");
    assert_eq!(*ci.inbound.encr_key, *cr.outbound.encr_key, "{ctx}");
    assert_eq!(*ci.outbound.integ_key, *cr.inbound.integ_key, "{ctx}");
    (si[0].id, sr[0].id)
}

/// RFC 7296 2.8.1: both ends rekey the IKE SA at the same time. Both exchanges complete
/// (nobody answers TEMPORARY_FAILURE), the SA with the lowest nonce is deleted by its
/// initiator, the survivor inherits the CHILD SA unchanged and the old SA goes once.
#[test]
fn simultaneous_ike_rekey_converges_on_one_sa() {
    let mut survivors = [0u32; 2];
    for seed in 60..100 {
        let ctx = format!("seed {seed}");
        let (mut p, id) = established_pair(seed);
        let rid = p.responder.ep.ike_sas()[0].id;
        let child_before = children(&p.initiator);
        let child_r_before = children(&p.responder);
        p.initiator.ep.rekey_ike_sa(p.now, id).unwrap();
        // The responder starts 0-8 ms later: still before the initiator's request
        // arrives (10 ms latency), so both requests cross.
        p.advance(Duration::from_millis(seed % 3 * 4));
        p.responder.ep.rekey_ike_sa(p.now, rid).unwrap();
        p.drive();
        let (ni, nr) = assert_one_shared_ike_sa(&p, &ctx);
        assert_ne!(ni, id, "{ctx}");
        assert_eq!(
            children(&p.initiator),
            child_before,
            "{ctx}: CHILD SA moved"
        );
        assert_eq!(children(&p.responder), child_r_before, "{ctx}");
        assert!(child_deleted(&p.initiator).is_empty(), "{ctx}");
        assert!(child_deleted(&p.responder).is_empty(), "{ctx}");
        for (n, old, new) in [(&p.initiator, id, ni), (&p.responder, rid, nr)] {
            assert_eq!(ike_rekeyed(n), vec![(old, new)], "{ctx}: one IkeSaRekeyed");
            assert_eq!(n.deleted(), vec![(old, DeleteReason::Rekeyed)], "{ctx}");
            assert_eq!(n.ep.counters().ike_rekey_collisions, 1, "{ctx}");
            assert_eq!(n.ep.counters().temporary_failures, 0, "{ctx}");
        }
        // The lease moved to the survivor.
        let sr = p.responder.ep.ike_sa(nr).unwrap();
        assert_eq!(p.responder.ep.pool().owner(sr.virtual_ips[0]), Some(nr));
        survivors[usize::from(p.initiator.ep.ike_sa(ni).unwrap().initiator)] += 1;
        // The survivor carries further exchanges.
        p.responder
            .ep
            .rekey_child_sa(p.now, child_r_before[0].0)
            .unwrap();
        p.drive();
        assert_one_matching_child(&p);
        p.initiator.ep.rekey_ike_sa(p.now, ni).unwrap();
        p.drive();
        assert_one_shared_ike_sa(&p, &ctx);
    }
    // Which SA survives follows the nonces, not a fixed side.
    assert!(
        survivors[0] > 0 && survivors[1] > 0,
        "survivors by side {survivors:?}"
    );
}

/// Same collision with reordering and loss: the requests may not cross cleanly (a
/// response can overtake the peer's request), yet both ends converge on one IKE SA.
#[test]
fn simultaneous_ike_rekey_under_reordering_and_loss_converges() {
    // Runs where only one end saw the peer's request before its own response.
    let mut one_sided = 0;
    for seed in 100..130 {
        let ctx = format!("seed {seed}");
        let (mut p, id) = established_pair(seed);
        let rid = p.responder.ep.ike_sas()[0].id;
        let child_before = children(&p.initiator);
        p.reorder = Duration::from_millis(40);
        p.loss = if seed % 2 == 0 { 0.2 } else { 0.0 };
        p.initiator.ep.rekey_ike_sa(p.now, id).unwrap();
        p.advance(Duration::from_millis(seed % 4 * 3));
        p.responder.ep.rekey_ike_sa(p.now, rid).unwrap();
        p.drive();
        p.loss = 0.0;
        let (ci, cr) = (
            p.initiator.ep.counters().ike_rekey_collisions,
            p.responder.ep.counters().ike_rekey_collisions,
        );
        if ci != cr {
            one_sided += 1;
        }
        p.advance(Duration::from_secs(60));
        p.drive();
        let (ni, nr) = assert_one_shared_ike_sa(&p, &ctx);
        assert_eq!(children(&p.initiator), child_before, "{ctx}");
        let ri = ike_rekeyed(&p.initiator);
        let rr = ike_rekeyed(&p.responder);
        assert_eq!(ri.len(), 1, "{ctx}: {ri:?}");
        assert_eq!(rr.len(), 1, "{ctx}: {rr:?}");
        assert_eq!(ri[0], (id, ni), "{ctx}");
        assert_eq!(rr[0], (rid, nr), "{ctx}");
        assert_eq!(
            p.initiator.deleted(),
            vec![(id, DeleteReason::Rekeyed)],
            "{ctx}"
        );
        assert_eq!(
            p.responder.deleted(),
            vec![(rid, DeleteReason::Rekeyed)],
            "{ctx}"
        );
    }
    assert!(one_sided > 0, "the overtaking case was never exercised");
}

/// RFC 7296 2.25: one end rekeys a CHILD SA while the other rekeys the IKE SA. The IKE
/// rekey side refuses the CHILD rekey with TEMPORARY_FAILURE; the CHILD rekey is not
/// lost but retried on the new IKE SA.
#[test]
fn child_rekey_overlapping_an_ike_rekey_is_retried_on_the_new_sa() {
    for seed in 130..146 {
        let child_side_is_initiator = seed % 2 == 0;
        let ctx = format!("seed {seed} child rekey from initiator: {child_side_is_initiator}");
        let (mut p, id) = established_pair(seed);
        let rid = p.responder.ep.ike_sas()[0].id;
        let (i_in, i_out) = children(&p.initiator)[0];
        if child_side_is_initiator {
            p.initiator.ep.rekey_child_sa(p.now, i_in).unwrap();
            p.responder.ep.rekey_ike_sa(p.now, rid).unwrap();
        } else {
            p.responder.ep.rekey_child_sa(p.now, i_out).unwrap();
            p.initiator.ep.rekey_ike_sa(p.now, id).unwrap();
        }
        p.drive();
        let (ni, nr) = assert_one_shared_ike_sa(&p, &ctx);
        assert_eq!(ike_rekeyed(&p.initiator), vec![(id, ni)], "{ctx}");
        assert_eq!(ike_rekeyed(&p.responder), vec![(rid, nr)], "{ctx}");
        let (child_node, ike_node, new_ike) = if child_side_is_initiator {
            (&p.initiator, &p.responder, ni)
        } else {
            (&p.responder, &p.initiator, nr)
        };
        // The IKE rekey side refused the colliding CHILD rekey once ...
        assert_eq!(ike_node.ep.counters().temporary_failures, 1, "{ctx}");
        assert_eq!(child_node.ep.counters().temporary_failures, 0, "{ctx}");
        // ... and the retry went through on the new IKE SA.
        let r = rekeyed(child_node);
        assert_eq!(r.len(), 1, "{ctx}");
        assert_eq!(r[0].1.ike_sa, new_ike, "{ctx}: rekeyed on the new IKE SA");
        assert_eq!(rekeyed(ike_node).len(), 1, "{ctx}");
        let (now_in, _) = children(&p.initiator)[0];
        assert_ne!(now_in, i_in, "{ctx}: the CHILD SA was rekeyed");
        assert_eq!(child_deleted(&p.initiator), vec![i_in], "{ctx}");
        assert_eq!(child_deleted(&p.responder), vec![i_out], "{ctx}");
        assert_eq!(
            p.initiator.deleted(),
            vec![(id, DeleteReason::Rekeyed)],
            "{ctx}"
        );
    }
}

#[test]
fn invalid_spi_is_reported_over_the_ike_sa() {
    let (mut p, _) = established_pair(70);
    let (i_sent, r_sent) = (p.initiator.sent.len(), p.responder.sent.len());
    p.responder
        .ep
        .report_invalid_spi(p.now, p.initiator.ip, ike::Spi(0xdead_beef))
        .unwrap();
    p.drive();
    // One INFORMATIONAL exchange (type 37): request from the responder, answer back.
    let req = &p.responder.sent[r_sent..];
    assert_eq!(req.len(), 1);
    assert_eq!(req[0].payload[18], 37);
    assert_eq!(p.initiator.sent.len(), i_sent + 1);
    assert!(p.initiator.deleted().is_empty() && p.responder.deleted().is_empty());
    // Unknown peers get nothing.
    let stranger = "192.0.2.1".parse().unwrap();
    assert_eq!(
        p.responder
            .ep
            .report_invalid_spi(p.now, stranger, ike::Spi(1)),
        Err(ike::Error::NoSuchSa)
    );
}

#[test]
fn lost_authentication_failed_is_replayed_without_keeping_the_sa() {
    let mut p = pair(&SUITES[..1], 71);
    // Lose the responder's first IKE_AUTH answer (exchange 35, a response).
    let mut dropped = false;
    p.drop_filter = Some(Box::new(move |side, t| {
        let hit = side == Side::Responder && !dropped && t.payload.get(18) == Some(&35);
        dropped |= hit;
        hit
    }));
    p.connect(Arc::new(initiator_config(
        SUITES[0],
        "router1.example",
        b"wrong key",
    )));
    p.drive();
    assert_eq!(p.lost, 1);
    assert!(
        p.initiator
            .negotiation_failures()
            .iter()
            .any(|r| r.contains("AUTHENTICATION_FAILED")),
        "{:?}",
        p.initiator.events
    );
    assert!(p.responder.ep.ike_sas().is_empty());
    assert_eq!(p.responder.ep.counters().replayed, 1);
    assert_eq!(p.responder.ep.counters().failed, 1);
}

#[test]
fn esp_activity_postpones_liveness_checks() {
    let mut icfg = base_config(None);
    icfg.lifetimes.dpd_delay = Some(Duration::from_secs(10));
    let mut p = Pair::new(
        Arc::new(icfg),
        Arc::new(base_config(Some(responder_config(&SUITES)))),
        72,
    );
    p.horizon = Duration::from_secs(1);
    p.connect(Arc::new(initiator_config(
        SUITES[0],
        "router1.example",
        PSK,
    )));
    p.drive();
    let (inb, _) = children(&p.initiator)[0];
    let sent = p.initiator.sent.len();
    for _ in 0..10 {
        p.advance(Duration::from_secs(5));
        p.initiator.ep.esp_activity(p.now, inb);
    }
    assert_eq!(p.initiator.sent.len(), sent, "no DPD while ESP flows");
    p.advance(Duration::from_secs(11));
    assert_eq!(p.initiator.sent.len(), sent + 1, "one DPD once ESP stops");
}

#[test]
fn fragmented_response_is_replayed_once_per_retransmitted_request() {
    let mut rc = base_config(Some(responder_config(&SUITES)));
    rc.limits.fragment_mtu = 200;
    let mut ic = base_config(None);
    ic.limits.fragment_mtu = 200;
    let mut p = Pair::new(Arc::new(ic), Arc::new(rc), 73);
    // Lose every fragment of the responder's first IKE_AUTH answer.
    let mut first_msg: Option<Vec<u8>> = None;
    p.drop_filter = Some(Box::new(move |side, t| {
        if side != Side::Responder || t.payload.get(18) != Some(&35) {
            return false;
        }
        // SPIs + message ID identify the message; all its fragments share them.
        let key = [&t.payload[..16], &t.payload[20..24]].concat();
        match &first_msg {
            None => {
                first_msg = Some(key);
                true
            }
            Some(k) => *k == key,
        }
    }));
    p.connect(Arc::new(initiator_config(
        SUITES[2],
        "router1.example",
        PSK,
    )));
    // Keep dropping only during the first answer: lift the filter after 300 ms.
    p.advance(Duration::from_millis(300));
    p.drop_filter = None;
    p.drive();
    assert!(
        p.lost >= 2,
        "the whole fragmented answer was lost ({})",
        p.lost
    );
    assert_eq!(p.initiator.established().len(), 1);
    assert_eq!(p.responder.established().len(), 1);
    // The initiator resent all its fragments; only fragment 1 triggered the replay of
    // the whole fragmented answer (RFC 7383 2.6.1), once.
    assert_eq!(p.responder.ep.counters().replayed, 1);
    assert!(p.responder.ep.counters().dropped("invalid_message_id") >= 1);
}

#[test]
fn delete_one_child_sa_keeps_the_ike_sa() {
    let (mut p, id) = established_pair(74);
    let (inb, out) = children(&p.initiator)[0];
    p.initiator.ep.delete_child_sa(p.now, inb).unwrap();
    p.drive();
    assert_eq!(child_deleted(&p.initiator), vec![inb]);
    assert_eq!(child_deleted(&p.responder), vec![out]);
    assert!(children(&p.initiator).is_empty() && children(&p.responder).is_empty());
    assert!(p.initiator.deleted().is_empty());
    assert_eq!(
        p.initiator.ep.ike_sa(id).unwrap().state,
        ike::endpoint::IkeSaState::Established
    );
    assert_eq!(
        p.initiator.ep.delete_child_sa(p.now, inb),
        Err(ike::Error::NoSuchSa)
    );
}

#[test]
fn cookie_then_invalid_ke_then_established() {
    let mut rcfg = base_config(Some(responder_config(&["aes128-sha256-ecp256"])));
    rcfg.limits.cookie_threshold = 0;
    let mut p = Pair::new(Arc::new(base_config(None)), Arc::new(rcfg), 75);
    let mut cfg = initiator_config("aes128-sha256-ecp256", "router1.example", PSK);
    cfg.ike_proposals[0].dh = vec![ike::DhGroup::Curve25519, ike::DhGroup::Ecp256];
    p.connect(Arc::new(cfg));
    p.drive();
    assert_eq!(p.initiator.established().len(), 1);
    assert_eq!(p.responder.ep.counters().cookies_sent, 1);
    assert_eq!(p.responder.ep.counters().dropped("invalid_ke"), 1);
    // Three IKE_SA_INIT requests: plain, with the cookie, with the cookie and ECP-256.
    let inits: Vec<_> = p
        .initiator
        .sent
        .iter()
        .filter(|t| t.payload[18] == 34)
        .collect();
    assert_eq!(inits.len(), 3);
}

/// RFC 7296 1.3.1 and RFC 4301 4.4.1: beside the CHILD SA of IKE_AUTH, the initiator opens
/// two more with CREATE_CHILD_SA, to the same inside network but one for TCP port 5201
/// and one for ICMP; the responder narrows each (the virtual IP on the initiator's side)
/// and both ends install all three with the same selectors. Selectors outside the
/// responder's networks are refused (TS_UNACCEPTABLE): nothing installed, the IKE SA
/// and its CHILD SAs stay.
#[test]
fn more_child_sas_with_narrower_selectors_on_one_ike_sa() {
    let (mut p, id) = established_pair(91);
    let vip = match p.initiator.established()[0] {
        Event::IkeSaEstablished { virtual_ips, .. } => virtual_ips[0],
        _ => unreachable!(),
    };
    let sel = |a: [u8; 4], b: [u8; 4], protocol: u8, ports: (u16, u16)| ike::TrafficSelector {
        start: std::net::Ipv4Addr::from(a).into(),
        end: std::net::Ipv4Addr::from(b).into(),
        protocol,
        start_port: ports.0,
        end_port: ports.1,
    };
    let any_v4 = |protocol: u8| sel([0; 4], [255; 4], protocol, (0, 65535));
    let inside = |protocol: u8, ports: (u16, u16)| {
        sel([10, 200, 0, 0], [10, 200, 255, 255], protocol, ports)
    };
    for (protocol, ports) in [(6, (5201, 5201)), (1, (0, 65535))] {
        p.initiator
            .ep
            .create_child_sa(
                p.now,
                id,
                vec![any_v4(protocol)],
                vec![inside(protocol, ports)],
            )
            .unwrap();
        p.drive();
    }
    let (ci, cr) = (child_installed(&p.initiator), child_installed(&p.responder));
    assert_eq!((ci.len(), cr.len()), (3, 3), "{ci:?}\n{cr:?}");
    for (k, (protocol, ports)) in [(6u8, (5201u16, 5201u16)), (1, (0, 65535))]
        .into_iter()
        .enumerate()
    {
        let (i, r) = (&ci[k + 1], &cr[k + 1]);
        let host = ike::TrafficSelector {
            start: vip,
            end: vip,
            protocol,
            start_port: 0,
            end_port: 65535,
        };
        assert_eq!(i.local_ts, vec![host.clone()], "narrowed to the virtual IP");
        assert_eq!(i.remote_ts, vec![inside(protocol, ports)]);
        assert_eq!(
            (r.local_ts.clone(), r.remote_ts.clone()),
            (i.remote_ts.clone(), i.local_ts.clone())
        );
        assert_eq!(
            (i.inbound.spi, i.outbound.spi),
            (r.outbound.spi, r.inbound.spi)
        );
        assert_eq!(i.inbound.encr_key, r.outbound.encr_key);
    }
    assert_eq!(children(&p.initiator).len(), 3);

    // Outside the responder's networks: refused, nothing changes.
    let other = sel([192, 168, 0, 0], [192, 168, 0, 255], 6, (80, 80));
    p.initiator
        .ep
        .create_child_sa(p.now, id, vec![any_v4(6)], vec![other])
        .unwrap();
    p.drive();
    assert_eq!(child_installed(&p.initiator).len(), 3);
    assert_eq!(child_installed(&p.responder).len(), 3);
    assert_eq!(
        (children(&p.initiator).len(), children(&p.responder).len()),
        (3, 3)
    );
    assert!(p.initiator.deleted().is_empty() && p.responder.deleted().is_empty());
}
