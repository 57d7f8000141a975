//! The `Pair` harness (two IKE endpoints on a virtual clock with a simulated network),
//! shared with the ike crate's scenario tests. Other test files use it with
//! `#[path = "util.rs"] mod util;`.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

#[path = "../ike/tests/util/mod.rs"]
mod pair;
pub use pair::*;

#[cfg(test)]
mod smoke {
    use super::*;
    use std::sync::Arc;

    /// The harness carries a full IKEv2 handshake end to end: both sides report the SA,
    /// the peer gets a pool address.
    #[test]
    fn pair_establishes_a_tunnel() {
        let mut p = pair(&["aes256gcm16-prfsha256-x25519"], 7);
        p.connect(Arc::new(initiator_config(
            "aes256gcm16-prfsha256-x25519",
            "router1.example",
            PSK,
        )));
        p.drive();
        assert_eq!(p.initiator.established().len(), 1);
        assert_eq!(p.responder.established().len(), 1);
        let info = p.responder.ep.ike_sas();
        assert_eq!(info.len(), 1);
        assert!(info[0]
            .virtual_ips
            .iter()
            .all(|a| p.responder.ep.pool().owner(*a) == Some(info[0].id)));
    }
}
