//! Scenario tests of the IKEv2 engine on the `Pair` harness (virtual clock, simulated
//! network). Each asserts what a user of the engine observes: events, SA tables,
//! counters.
#![allow(clippy::unwrap_used)]
mod util;

use std::sync::Arc;

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
}
