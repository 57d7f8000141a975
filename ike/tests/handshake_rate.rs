//! Engine-only handshake cost: many IKE SAs set up through the `Pair` harness (no sockets,
//! virtual clock), timing the responder's share of the CPU separately. Run in release:
//! `cargo test --release -p ike --test handshake_rate -- --ignored --nocapture`.
#![allow(clippy::unwrap_used)]
mod util;

use std::sync::Arc;
use std::time::{Duration, Instant};

use util::*;

#[test]
#[ignore = "measurement; run in release"]
fn responder_handshakes_per_second() {
    const N: u16 = 4000;
    let mut rc = base_config(Some(responder_config(&["aes256gcm16-prfsha256-x25519"])));
    rc.limits.cookie_threshold = usize::MAX;
    let mut p = Pair::new(Arc::new(base_config(None)), Arc::new(rc), 77);
    p.latency = Duration::from_micros(100);
    let cfgs: Vec<_> = (0..N)
        .map(|i| {
            Arc::new(initiator_config(
                "aes256gcm16-prfsha256-x25519",
                &format!("r{i}.example"),
                PSK,
            ))
        })
        .collect();
    let start = Instant::now();
    for (i, c) in cfgs.iter().enumerate() {
        p.connect_from(10_000 + i as u16, c.clone());
    }
    p.drive();
    let total = start.elapsed();
    assert_eq!(p.responder.established().len(), usize::from(N));
    // Responder share: replay the same number of handshakes' responder work alone is not
    // possible without the initiator, so time the responder's `handle` calls directly.
    let mut rc = base_config(Some(responder_config(&["aes256gcm16-prfsha256-x25519"])));
    rc.limits.cookie_threshold = usize::MAX;
    let mut q = Pair::new(Arc::new(base_config(None)), Arc::new(rc), 78);
    q.latency = Duration::from_micros(100);
    for (i, c) in cfgs.iter().enumerate() {
        q.connect_from(10_000 + i as u16, c.clone());
    }
    let resp = q.drive_timed(Side::Responder);
    assert_eq!(q.responder.established().len(), usize::from(N));
    eprintln!(
        "{N} IKE SAs (x25519, AES-GCM-256, PSK, CP): both ends {:.0} setups/s; responder alone {:.0} setups/s ({:?} CPU)",
        f64::from(N) / total.as_secs_f64(),
        f64::from(N) / resp.as_secs_f64(),
        resp
    );
}
