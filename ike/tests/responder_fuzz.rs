//! Deterministic "smoke fuzz" of the responder (the stable-toolchain companion of
//! `ike/fuzz/fuzz_targets/responder.rs`): ~100k mutated and random datagrams, built from
//! a real conversation, go to a responder. Nothing may panic, state stays bounded, and a
//! good peer still connects afterwards.
#![allow(clippy::unwrap_used)]
mod util;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ike::SocketKind;
use util::*;

fn mutate(rng: &mut TestRng, base: &[u8]) -> Vec<u8> {
    let mut m = base.to_vec();
    match rng.next_u64() % 8 {
        0 => {
            // Flip a few bits.
            for _ in 0..1 + rng.next_u64() % 4 {
                if !m.is_empty() {
                    let i = (rng.next_u64() as usize) % m.len();
                    m[i] ^= 1 << (rng.next_u64() % 8);
                }
            }
        }
        1 => {
            // Truncate anywhere.
            let n = (rng.next_u64() as usize) % (m.len() + 1);
            m.truncate(n);
        }
        2 => {
            // Overwrite a length-ish field with an extreme value.
            if m.len() > 4 {
                let i = (rng.next_u64() as usize) % (m.len() - 1);
                let v: u16 = [0, 1, 3, 4, 0xffff, 0x8000][(rng.next_u64() % 6) as usize];
                m[i..i + 2].copy_from_slice(&v.to_be_bytes());
            }
        }
        3 => {
            // Insert random bytes.
            let i = (rng.next_u64() as usize) % (m.len() + 1);
            let n = 1 + rng.next_u64() % 16;
            for _ in 0..n {
                m.insert(i, rng.next_u64() as u8);
            }
        }
        4 => {
            // Change next-payload / exchange / flags / message ID bytes of the header.
            if m.len() >= 28 {
                let i = [16usize, 17, 18, 19, 20, 23, 27][(rng.next_u64() % 7) as usize];
                m[i] = rng.next_u64() as u8;
            }
        }
        5 => {
            // Random SPIs (unknown SA paths).
            if m.len() >= 16 {
                let i = if rng.next_u64() & 1 == 0 { 0 } else { 8 };
                m[i..i + 8].copy_from_slice(&rng.next_u64().to_be_bytes());
            }
        }
        6 => {
            // Pure garbage with a plausible header.
            let n = 28 + (rng.next_u64() as usize) % 300;
            m = (0..n).map(|_| rng.next_u64() as u8).collect();
            m[17] = 0x20;
            let len = (n as u32).to_be_bytes();
            m[24..28].copy_from_slice(&len);
        }
        _ => {
            // Splice two messages.
            let cut = (rng.next_u64() as usize) % (m.len() + 1);
            m.truncate(cut);
            m.extend((0..rng.next_u64() % 64).map(|_| rng.next_u64() as u8));
        }
    }
    m
}

#[test]
fn responder_survives_100k_hostile_datagrams() {
    // A real conversation to mutate: every datagram an initiator sends for a handshake,
    // a CHILD rekey, a DPD and a delete, plus the responder's own messages.
    let (corpus, mut p) = {
        let mut p = pair(
            &["aes256gcm16-prfsha256-x25519", "aes128-sha256-ecp256"],
            99,
        );
        let id = p.connect(Arc::new(initiator_config(
            "aes128-sha256-ecp256",
            "fuzz.example",
            PSK,
        )));
        p.drive();
        let (inb, _) = (p.initiator.ep.ike_sas()[0].child_sas[0].inbound, ());
        p.initiator.ep.rekey_child_sa(p.now, inb).unwrap();
        p.drive();
        let mut corpus: Vec<Vec<u8>> = p.initiator.sent.iter().map(|t| t.payload.clone()).collect();
        corpus.extend(p.responder.sent.iter().map(|t| t.payload.clone()));
        p.initiator.ep.delete_ike_sa(p.now, id).unwrap();
        p.drive();
        (corpus, p)
    };
    assert!(corpus.len() >= 6);
    // The responder under attack: a fresh pair, with one live tunnel so the SPI paths
    // of an established SA are reachable.
    let mut rc = base_config(Some(responder_config(&[
        "aes256gcm16-prfsha256-x25519",
        "aes128-sha256-ecp256",
    ])));
    rc.limits.half_open_max = 64;
    rc.limits.cookie_threshold = 32;
    rc.limits.half_open_timeout = Duration::from_secs(2);
    let mut t = Pair::new(Arc::new(base_config(None)), Arc::new(rc), 5);
    t.connect(Arc::new(initiator_config(
        "aes256gcm16-prfsha256-x25519",
        "live.example",
        PSK,
    )));
    t.drive();
    let live = t.responder.ep.ike_sas()[0].clone();
    let mut corpus = corpus;
    // Datagrams aimed at the live SA: the corpus with its SPIs swapped in.
    let extra: Vec<Vec<u8>> = corpus
        .iter()
        .filter(|m| m.len() >= 28)
        .map(|m| {
            let mut m = m.clone();
            m[..8].copy_from_slice(&live.spi_i.to_be_bytes());
            m[8..16].copy_from_slice(&live.spi_r.to_be_bytes());
            m
        })
        .collect();
    corpus.extend(extra);
    let mut rng = TestRng::new(0x5eed);
    let mut injected = 0u64;
    for i in 0..100_000u32 {
        let base = &corpus[(rng.next_u64() as usize) % corpus.len()];
        let m = mutate(&mut rng, base);
        let natt = rng.next_u64() & 3 == 0;
        let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 66, (i % 7) as u8, 1)), 500);
        let (socket, payload) = if natt {
            let mut v = vec![0, 0, 0, 0];
            v.extend_from_slice(&m);
            (SocketKind::NatT, v)
        } else {
            (SocketKind::Ike, m)
        };
        t.inject_to_responder(socket, remote, &payload);
        injected += 1;
        assert!(t.responder.ep.half_open() <= 64);
        if i % 2_000 == 0 {
            // Let timers run: half-open SAs expire, cookie secret rotates.
            t.advance(Duration::from_secs(3));
        }
        // Drain the network so the responder's answers do not pile up.
        if i % 500 == 0 {
            t.initiator.sent.clear();
            t.responder.sent.clear();
        }
    }
    t.advance(Duration::from_secs(5));
    let c = t.responder.ep.counters().clone();
    assert!(c.received >= injected);
    let dropped: u64 = c.dropped.values().sum();
    assert!(
        dropped > 90_000,
        "most hostile datagrams are dropped: {c:?}"
    );
    assert_eq!(t.responder.ep.half_open(), 0);
    // The live tunnel is untouched and a new peer still gets in.
    assert!(t.responder.ep.ike_sa(live.id).is_some());
    t.connect_from(
        600,
        Arc::new(initiator_config(
            "aes256gcm16-prfsha256-x25519",
            "after.example",
            PSK,
        )),
    );
    t.drive();
    assert_eq!(t.initiator.established().len(), 2);
    let _ = &mut p;
}
