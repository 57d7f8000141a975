//! Known-answer vectors and behaviour tests for the ESP transforms.
//!
//! The vectors here were computed independently with pyca/cryptography (OpenSSL) by
//! `kat_gen.py` in this directory, not by this code: they cover what no published ESP
//! vector covers here (AES-CBC with HMAC-SHA2, ESN with our padding and sequence-number
//! IVs, end to end through `encapsulate`). The published vectors (draft-mcgrew-gcm-test-01
//! AES-GCM, RFC 7634 Appendix A ChaCha20-Poly1305) are in `kat_published.rs`.
#![allow(clippy::unwrap_used)]

use zeroize::Zeroizing;

use super::*;
use crate::config::{EncrAlg, IntegAlg};
use crate::error::Error;
use crate::event::{EspKeys, Spi};

const SPI: u32 = 0xc0ff_ee01;

fn k(n: usize, b: u8) -> Vec<u8> {
    (0..n).map(|i| b.wrapping_add(i as u8)).collect()
}

fn inner(n: usize, v6: bool) -> Vec<u8> {
    let mut v: Vec<u8> = (0..n).map(|i| ((i * 7 + 3) & 0xff) as u8).collect();
    v[0] = if v6 { 0x60 } else { 0x45 };
    v
}

fn keys(
    encr: EncrAlg,
    encr_key: Vec<u8>,
    integ: Option<IntegAlg>,
    integ_key: Vec<u8>,
    esn: bool,
) -> EspKeys {
    EspKeys {
        spi: Spi(SPI),
        encr,
        encr_key: Zeroizing::new(encr_key),
        integ,
        integ_key: Zeroizing::new(integ_key),
        esn,
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn gcm256() -> EspKeys {
    let mut key = k(32, 0x10);
    key.extend(k(4, 0xa0));
    keys(EncrAlg::AesGcm16(256), key, None, vec![], false)
}

fn all_suites() -> Vec<EspKeys> {
    let mut g128 = k(16, 0x20);
    g128.extend(k(4, 0xb0));
    let mut cc = k(32, 0x30);
    cc.extend(k(4, 0xc0));
    vec![
        gcm256(),
        keys(EncrAlg::AesGcm16(128), g128, None, vec![], true),
        keys(EncrAlg::ChaCha20Poly1305, cc, None, vec![], false),
        keys(
            EncrAlg::AesCbc(128),
            k(16, 0x40),
            Some(IntegAlg::HmacSha256_128),
            k(32, 0x50),
            false,
        ),
        keys(
            EncrAlg::AesCbc(256),
            k(32, 0x60),
            Some(IntegAlg::HmacSha512_256),
            k(64, 0x70),
            true,
        ),
    ]
}

/// Encapsulates `payload` with sequence number `seq`; returns the ESP packet.
fn encap(sa: &OutboundSa, payload: &[u8], seq: u64) -> Vec<u8> {
    sa.set_next_seq(seq);
    let mut buf = vec![0u8; MAX_HEADROOM + payload.len() + MAX_TAILROOM];
    buf[MAX_HEADROOM..MAX_HEADROOM + payload.len()].copy_from_slice(payload);
    let nh = NextHeader::for_inner_packet(payload).unwrap();
    let e = sa
        .encapsulate(&mut buf, MAX_HEADROOM, payload.len(), nh)
        .unwrap();
    assert_eq!(e.seq, seq);
    buf[e.range].to_vec()
}

fn decap(sa: &InboundSa, pkt: &[u8]) -> Result<Vec<u8>, Error> {
    let mut b = pkt.to_vec();
    let d = sa.decapsulate(&mut b)?;
    Ok(b[d.range].to_vec())
}

fn drop_reason(r: Result<Vec<u8>, Error>) -> EspDrop {
    match r {
        Err(Error::Esp(d)) => d,
        other => panic!("expected an ESP drop, got {other:?}"),
    }
}

#[test]
fn kat_vectors_encapsulate_and_decapsulate() {
    let suites = all_suites();
    // (suite, seq, inner length, v6, expected ESP packet)
    let cases = [
        (0, 1u64, 61, false, "c0ffee010000000100000000000000016033cd6b73c6edbcaea4358a12594b0abe94a955a8bad251b65f04446b638343f5ce334965dd1108fa28fcc4112ae5ab4d9ded998ebd8609f9066e6c53dca43bf33a4380527b12dfafa2893c0f034993"),
        (1, 0x1_0000_0005, 80, true, "c0ffee010000000500000001000000054183d0a686a25257d46a10fe0fc4788648c7548cafdf230d673ac59f75905434e16de32228e10dee422d622dfd7e37e66a4e7df5981e87b112ef6f8f41c69a6e9ccb8476e01c1969aef9ae9231442f2a4c23d58fe61da521b0fdadad54b791d3357c893863bb9305b3ce2fd82a8535d9"),
        (2, 7, 45, false, "c0ffee010000000700000000000000078b0d79fdf5c47fb448884b4ea43d1c46f5b71e539df5f46890156796a04812be564780c2b02b737a359e07c624cdbe2da23ff3df94cf475eb9b523d69401d723"),
        (3, 3, 50, false, "c0ffee010000000318193053fc05762c202b26a273c207c3bba683a2443af6339b12b44e9c021b58062a736e000c72c160914f9fda3277da9afd9c45a80dd2f1a66bd0cbff393d57a22ef35f70f33b34454e032d5c9bd58bd441da712d4f5d228dc2a090a8217456"),
        (4, 0x2_0000_0001, 33, false, "c0ffee0100000001e6525429f92bcbcfb86b2ae6c42a40965c0cd4d29b6120477941350a877887f35ba05d3ac3988252dbfbd5c2fcfa53757d5d1fef5bb6fb1a183cf9dff31948ccb3c518ba563f0c47f5f74fbd680c261e643d8d773ab363d1bb83708bd5e54339"),
    ];
    for (i, seq, n, v6, want) in cases {
        let ks = &suites[i];
        let payload = inner(n, v6);
        let out = OutboundSa::new(ks, Lifetimes::default()).unwrap();
        assert_eq!(
            encap(&out, &payload, seq),
            hex(want),
            "suite {i} encapsulation"
        );

        let inb = InboundSa::new(ks, Lifetimes::default(), DEFAULT_REPLAY_WINDOW).unwrap();
        if seq > u32::MAX as u64 {
            // The receiver must already be in the same 2^32 subspace.
            inb.window
                .lock()
                .unwrap()
                .update(seq & !0xffff_ffff)
                .unwrap();
        }
        assert_eq!(
            decap(&inb, &hex(want)).unwrap(),
            payload,
            "suite {i} decapsulation"
        );
        assert_eq!(inb.highest_seq(), seq);
    }
}

#[test]
fn round_trip_every_suite_and_size() {
    for ks in all_suites() {
        let out = OutboundSa::new(&ks, Lifetimes::default()).unwrap();
        let inb = InboundSa::new(&ks, Lifetimes::default(), 64).unwrap();
        for (seq, n) in (1u64..).zip([
            20usize, 21, 22, 23, 40, 64, 100, 576, 1280, 1400, 1500, 9000,
        ]) {
            let payload = inner(n, n % 2 == 0);
            let pkt = encap(&out, &payload, seq);
            assert_eq!(pkt.len(), out.header_len() + n + out.trailer_len(n));
            assert_eq!(decap(&inb, &pkt).unwrap(), payload, "{ks:?} size {n}");
        }
    }
}

#[test]
fn max_inner_len_is_the_longest_packet_that_fits_the_budget() {
    for ks in all_suites() {
        // IPv6 + UDP outer headers on a 1500-octet path, and a few odd budgets.
        for budget in [1452usize, 1472, 1480, 1000, 577, 100] {
            let mut out = OutboundSa::new(&ks, Lifetimes::default()).unwrap();
            out.fit_padding(budget);
            let n = out.max_inner_len(budget);
            let esp = |n: usize| out.header_len() + n + out.trailer_len(n);
            assert!(esp(n) <= budget, "{ks:?} {budget}: {n} -> {}", esp(n));
            assert!(esp(n + 1) > budget, "{ks:?} {budget}: {} fits too", n + 1);
            assert_eq!(
                encap(&out, &inner(n.max(20), false), 1).len(),
                esp(n.max(20))
            );
        }
        let out = OutboundSa::new(&ks, Lifetimes::default()).unwrap();
        assert_eq!(out.max_inner_len(10), 0);
    }
    // AES-CBC with HMAC-SHA2-512 over IPv6 + UDP on 1500: 1390 (README `mtu`).
    let cbc = all_suites()
        .into_iter()
        .find(|k| k.integ == Some(IntegAlg::HmacSha512_256))
        .unwrap();
    let out = OutboundSa::new(&cbc, Lifetimes::default()).unwrap();
    assert_eq!(out.max_inner_len(1500 - 48), 1390);
}

/// AES-GCM pads the ciphertext to whole AES blocks while the path leaves room (ring then
/// has no partial block to handle), and only to 4 octets for the longest packets the
/// budget admits, so the extra padding never costs path MTU. ChaCha20-Poly1305 keeps the
/// 4-octet minimum.
#[test]
fn aes_gcm_pads_to_whole_blocks_within_the_path_budget() {
    let budget = 1500 - 48; // IPv6 + UDP outer headers.
    for ks in all_suites().into_iter().filter(|k| k.integ.is_none()) {
        let gcm = matches!(ks.encr, EncrAlg::AesGcm16(_));
        let mut out = OutboundSa::new(&ks, Lifetimes::default()).unwrap();
        out.fit_padding(budget);
        let inb = InboundSa::new(&ks, Lifetimes::default(), 64).unwrap();
        let max = out.max_inner_len(budget);
        assert_eq!(max, 1418, "{ks:?}: the padding must not cost path MTU");
        for (seq, n) in (1u64..).zip([40usize, 61, 80, 1000, 1400, 1406, 1407, 1417, 1418]) {
            let payload = inner(n, false);
            let pkt = encap(&out, &payload, seq);
            assert!(pkt.len() <= budget, "{ks:?} {n}: {} octets", pkt.len());
            // SPI, sequence number and IV in front, a 16-octet ICV behind.
            let ct = pkt.len() - out.header_len() - 16;
            let want = if gcm && n <= 1406 { 16 } else { 4 };
            assert_eq!(
                ct,
                (n + 2).div_ceil(want) * want,
                "{ks:?} {n}: ciphertext padded to {want}"
            );
            assert_eq!(decap(&inb, &pkt).unwrap(), payload, "{ks:?} size {n}");
        }
    }
}

#[test]
fn tampering_anywhere_is_an_integrity_drop_and_does_not_move_the_window() {
    for ks in all_suites() {
        let out = OutboundSa::new(&ks, Lifetimes::default()).unwrap();
        let inb = InboundSa::new(&ks, Lifetimes::default(), 64).unwrap();
        let pkt = encap(&out, &inner(100, false), 5000);
        // Flip a bit in the sequence number's neighbourhood, IV, ciphertext and ICV.
        for pos in [7, 9, 30, pkt.len() - 1] {
            let mut bad = pkt.clone();
            bad[pos] ^= 0x10;
            let r = drop_reason(decap(&inb, &bad));
            assert!(r == EspDrop::Integrity, "{ks:?} pos {pos}: {r:?}");
        }
        assert_eq!(
            inb.highest_seq(),
            0,
            "forged packets must not slide the window"
        );
        // A genuine old packet is still accepted: the window did not jump to 5000.
        let good = encap(&out, &inner(60, false), 3);
        assert!(decap(&inb, &good).is_ok());
        assert!(decap(&inb, &pkt).is_ok());
    }
}

#[test]
fn replayed_packet_is_dropped_after_first_delivery() {
    let ks = gcm256();
    let out = OutboundSa::new(&ks, Lifetimes::default()).unwrap();
    let inb = InboundSa::new(&ks, Lifetimes::default(), DEFAULT_REPLAY_WINDOW).unwrap();
    let pkt = encap(&out, &inner(100, false), 42);
    assert!(decap(&inb, &pkt).is_ok());
    assert_eq!(drop_reason(decap(&inb, &pkt)), EspDrop::Replayed);
}

#[test]
fn short_and_misaligned_packets_are_truncated_drops() {
    for ks in all_suites() {
        let out = OutboundSa::new(&ks, Lifetimes::default()).unwrap();
        let inb = InboundSa::new(&ks, Lifetimes::default(), 64).unwrap();
        let pkt = encap(&out, &inner(100, false), 1);
        for cut in [0, 4, 8, 12, 16, inb.min_len() - 1] {
            assert_eq!(
                drop_reason(decap(&inb, &pkt[..cut])),
                EspDrop::Truncated,
                "{ks:?} len {cut}"
            );
        }
        // One octet shorter: the ciphertext is no longer aligned (or the ICV is wrong).
        let r = drop_reason(decap(&inb, &pkt[..pkt.len() - 1]));
        assert!(
            matches!(r, EspDrop::Truncated | EspDrop::Integrity),
            "{r:?}"
        );
    }
}

/// Seals a hand-made plaintext (payload | padding | pad length | next header) so the
/// trailer checks run on authentic packets.
fn seal_raw(ks: &EspKeys, plaintext: &[u8], seq: u32) -> Vec<u8> {
    let t = Transform::new(ks).unwrap();
    let hdr = ESP_HEADER_LEN + t.iv_len();
    let mut pkt = vec![0u8; hdr + plaintext.len() + t.icv_len()];
    pkt[..4].copy_from_slice(&SPI.to_be_bytes());
    pkt[4..8].copy_from_slice(&seq.to_be_bytes());
    pkt[hdr..hdr + plaintext.len()].copy_from_slice(plaintext);
    t.seal(&mut pkt, seq as u64, ks.esn).unwrap();
    pkt
}

#[test]
fn bad_padding_and_next_header_are_typed_drops() {
    let ks = gcm256();
    let inb = InboundSa::new(&ks, Lifetimes::default(), 64).unwrap();
    let mut p = inner(20, false);
    // Padding bytes must be 1, 2, ...
    p.extend([1, 3, 2, 4]);
    assert_eq!(
        drop_reason(decap(&inb, &seal_raw(&ks, &p, 1))),
        EspDrop::BadPadding
    );
    // Pad length beyond the payload.
    let p = [0x45, 0, 200, 4];
    assert_eq!(
        drop_reason(decap(&inb, &seal_raw(&ks, &p, 2))),
        EspDrop::BadPadding
    );
    // Next header must be 4 or 41 in tunnel mode.
    let mut p = inner(22, false);
    p.extend([0, 17]);
    assert_eq!(
        drop_reason(decap(&inb, &seal_raw(&ks, &p, 3))),
        EspDrop::BadNextHeader
    );
    // 59 marks a dummy packet (RFC 4303 2.6): discarded.
    let mut p = inner(22, false);
    p.extend([0, 59]);
    assert_eq!(
        drop_reason(decap(&inb, &seal_raw(&ks, &p, 4))),
        EspDrop::Dummy
    );
    // And a well-formed one passes.
    let mut p = inner(22, false);
    p.extend([0, 4]);
    assert_eq!(
        decap(&inb, &seal_raw(&ks, &p, 5)).unwrap(),
        inner(22, false)
    );
}

#[test]
fn sequence_number_overflow_refuses_and_signals_rekey() {
    let ks = gcm256();
    let out = OutboundSa::new(&ks, Lifetimes::default()).unwrap();
    let mut buf = vec![0u8; 200];
    out.set_next_seq(u32::MAX as u64 - (1 << 24));
    let e = out
        .encapsulate(&mut buf, MAX_HEADROOM, 40, NextHeader::Ipv4)
        .unwrap();
    assert_eq!(e.rekey, None);
    let e = out
        .encapsulate(&mut buf, MAX_HEADROOM, 40, NextHeader::Ipv4)
        .unwrap();
    assert_eq!(e.rekey, Some(RekeyReason::SequenceNumber));
    out.set_next_seq(u32::MAX as u64);
    let e = out
        .encapsulate(&mut buf, MAX_HEADROOM, 40, NextHeader::Ipv4)
        .unwrap();
    assert_eq!(e.seq, u32::MAX as u64);
    assert_eq!(e.rekey, None, "signalled once only");
    let r = out.encapsulate(&mut buf, MAX_HEADROOM, 40, NextHeader::Ipv4);
    assert_eq!(r, Err(Error::Esp(EspDrop::SeqOverflow)));
    // With ESN the same number is fine and carries on into the high half.
    let mut esn = ks.clone();
    esn.esn = true;
    let out = OutboundSa::new(&esn, Lifetimes::default()).unwrap();
    out.set_next_seq(u32::MAX as u64);
    out.encapsulate(&mut buf, MAX_HEADROOM, 40, NextHeader::Ipv4)
        .unwrap();
    let e = out
        .encapsulate(&mut buf, MAX_HEADROOM, 40, NextHeader::Ipv4)
        .unwrap();
    assert_eq!(e.seq, 1 << 32);
    out.set_next_seq(u64::MAX);
    assert!(out
        .encapsulate(&mut buf, MAX_HEADROOM, 40, NextHeader::Ipv4)
        .is_ok());
    let r = out.encapsulate(&mut buf, MAX_HEADROOM, 40, NextHeader::Ipv4);
    assert_eq!(r, Err(Error::Esp(EspDrop::SeqOverflow)));
}

#[test]
fn soft_lifetimes_signal_once_and_hard_lifetimes_refuse() {
    let ks = gcm256();
    let lt = Lifetimes {
        soft_bytes: 250,
        soft_packets: 0,
        hard_bytes: 400,
        hard_packets: 0,
    };
    let out = OutboundSa::new(&ks, lt).unwrap();
    let inb = InboundSa::new(
        &ks,
        Lifetimes {
            soft_packets: 3,
            ..Default::default()
        },
        64,
    )
    .unwrap();
    let mut buf = vec![0u8; 300];
    let mut signals = vec![];
    let mut refused = 0;
    for _ in 0..6 {
        buf[MAX_HEADROOM] = 0x45;
        match out.encapsulate(&mut buf, MAX_HEADROOM, 100, NextHeader::Ipv4) {
            Ok(e) => {
                signals.push(e.rekey);
                let mut pkt = buf[e.range].to_vec();
                let d = inb.decapsulate(&mut pkt).unwrap();
                if d.seq == 3 {
                    assert_eq!(d.rekey, Some(RekeyReason::Packets));
                } else {
                    assert_eq!(d.rekey, None);
                }
            }
            Err(e) => {
                assert_eq!(e, Error::Esp(EspDrop::LifetimeExpired));
                refused += 1;
            }
        }
    }
    assert_eq!(signals, vec![None, None, Some(RekeyReason::Bytes), None]);
    assert_eq!(refused, 2);
    assert_eq!(out.usage(), (400, 4));
}

#[test]
fn encapsulate_checks_headroom_and_tailroom() {
    let out = OutboundSa::new(&gcm256(), Lifetimes::default()).unwrap();
    let mut buf = vec![0u8; 100];
    let r = out.encapsulate(&mut buf, out.header_len() - 1, 20, NextHeader::Ipv4);
    assert_eq!(r, Err(Error::Esp(EspDrop::NoRoom)));
    let r = out.encapsulate(
        &mut buf,
        out.header_len(),
        100 - out.header_len() - 10,
        NextHeader::Ipv4,
    );
    assert_eq!(r, Err(Error::Esp(EspDrop::NoRoom)));
}

#[test]
fn bad_keys_are_rejected() {
    let mut ks = gcm256();
    ks.encr_key.truncate(32);
    assert!(matches!(
        OutboundSa::new(&ks, Lifetimes::default()),
        Err(Error::Crypto(_))
    ));
    let ks = keys(EncrAlg::AesCbc(128), k(16, 0), None, vec![], false);
    assert!(matches!(
        InboundSa::new(&ks, Lifetimes::default(), 64),
        Err(Error::Crypto(_))
    ));
    let ks = keys(
        EncrAlg::AesCbc(128),
        k(16, 0),
        Some(IntegAlg::HmacSha256_128),
        k(20, 0),
        false,
    );
    assert!(matches!(
        InboundSa::new(&ks, Lifetimes::default(), 64),
        Err(Error::Crypto(_))
    ));
}

// --- replay window (RFC 4303 3.4.3, Appendix A) ---

#[test]
fn window_edge() {
    let mut w = ReplayWindow::new(1024);
    w.update(2000).unwrap();
    assert_eq!(w.check(2000 - 1023), Ok(()));
    assert_eq!(w.check(2000 - 1024), Err(EspDrop::TooOld));
    w.update(977).unwrap();
    assert_eq!(w.update(977), Err(EspDrop::Replayed));
    w.update(2001).unwrap();
    assert_eq!(w.check(977), Err(EspDrop::TooOld));
    assert_eq!(w.check(0), Err(EspDrop::TooOld));
}

#[test]
fn far_ahead_jump_and_duplicates() {
    let mut w = ReplayWindow::new(1024);
    for s in 1..=100 {
        w.update(s).unwrap();
    }
    w.update(1_000_000).unwrap();
    assert_eq!(w.check(100), Err(EspDrop::TooOld));
    assert_eq!(w.check(1_000_000), Err(EspDrop::Replayed));
    // Nothing between was received, even where the ring slots alias old words.
    for s in (1_000_000 - 1023..1_000_000).step_by(7) {
        assert_eq!(w.check(s), Ok(()), "{s}");
    }
    w.update(999_500).unwrap();
    assert_eq!(w.update(999_500), Err(EspDrop::Replayed));
}

#[test]
fn sliding_by_exactly_the_ring_clears_stale_bits() {
    let mut w = ReplayWindow::new(64);
    for s in 1..=64 {
        w.update(s).unwrap();
    }
    // Move forward so that the ring wraps exactly once.
    let top = 64 + 64 * 4;
    w.update(top).unwrap();
    for s in top - 63..top {
        assert_eq!(w.check(s), Ok(()), "{s} is new");
    }
    assert_eq!(w.check(top - 64), Err(EspDrop::TooOld));
}

#[test]
fn reordered_packets_within_window_are_all_accepted_once() {
    let mut w = ReplayWindow::new(1024);
    let mut order: Vec<u64> = (1..=3000).collect();
    // Deterministic local shuffle (reordering up to 500 apart).
    for i in (0..order.len()).step_by(500) {
        let end = (i + 500).min(order.len());
        order[i..end].reverse();
    }
    for s in &order {
        assert_eq!(w.update(*s), Ok(()), "{s}");
    }
    for s in 2000..=3000 {
        assert!(w.check(s).is_err());
    }
}

#[test]
fn esn_inference_across_the_32_bit_wrap() {
    let mut w = ReplayWindow::new(1024);
    w.update(0xffff_fff0).unwrap();
    // Case A: low bits far below the window mean the next subspace.
    assert_eq!(w.infer_esn(5), Some(0x1_0000_0005));
    assert_eq!(w.infer_esn(0xffff_fff8), Some(0xffff_fff8));
    w.update(0x1_0000_0005).unwrap();
    // Case B: the window spans the wrap.
    assert_eq!(w.infer_esn(0xffff_fff8), Some(0xffff_fff8));
    assert_eq!(w.check(0xffff_fff8), Ok(()));
    assert_eq!(
        w.check(w.infer_esn(0xffff_fff0).unwrap()),
        Err(EspDrop::Replayed)
    );
    assert_eq!(w.infer_esn(6), Some(0x1_0000_0006));
    // Below the window in the old subspace: inferred as the old subspace, too old.
    let s = w.infer_esn(0xffff_0000).unwrap();
    assert_eq!(
        s, 0x1_ffff_0000,
        "far below the window counts as the next wrap (RFC 4303 A2.2)"
    );
    // Nothing precedes sequence number 0.
    let w = ReplayWindow::new(1024);
    assert_eq!(w.infer_esn(0xffff_ff00), None);
    assert_eq!(w.infer_esn(1), Some(1));
}

#[test]
fn esn_packets_decapsulate_across_the_wrap() {
    let mut g = k(16, 0x20);
    g.extend(k(4, 0xb0));
    let ks = keys(EncrAlg::AesGcm16(128), g, None, vec![], true);
    let out = OutboundSa::new(&ks, Lifetimes::default()).unwrap();
    let inb = InboundSa::new(&ks, Lifetimes::default(), 1024).unwrap();
    // The receiver has followed the sender up to just below the wrap.
    inb.window.lock().unwrap().update(0xffff_ff00).unwrap();
    let p = inner(64, false);
    for seq in [
        0xffff_fff0u64,
        0xffff_fffe,
        0x1_0000_0000,
        0x1_0000_0001,
        0xffff_ffff,
    ] {
        assert_eq!(decap(&inb, &encap(&out, &p, seq)).unwrap(), p, "{seq:x}");
    }
    assert_eq!(inb.highest_seq(), 0x1_0000_0001);
    assert_eq!(
        drop_reason(decap(&inb, &encap(&out, &p, 0xffff_fff0))),
        EspDrop::Replayed
    );
}

#[test]
fn inner_packets_outside_the_selectors_are_refused() {
    use crate::event::TrafficSelector;
    let ts = |a: &str, b: &str, proto: u8| TrafficSelector {
        start: a.parse().unwrap(),
        end: b.parse().unwrap(),
        protocol: proto,
        start_port: 0,
        end_port: 65535,
    };
    let peer = [ts("10.100.0.5", "10.100.0.5", 0)];
    let inside = [ts("10.200.0.0", "10.200.255.255", 0)];
    let mut p = inner(40, false);
    p[9] = 1; // ICMP
    p[12..16].copy_from_slice(&[10, 100, 0, 5]);
    p[16..20].copy_from_slice(&[10, 200, 3, 4]);
    assert_eq!(
        check_inner_selectors(&p, NextHeader::Ipv4, &peer, &inside),
        Ok(())
    );
    // Spoofed source (another peer's address).
    let mut q = p.clone();
    q[15] = 6;
    assert_eq!(
        check_inner_selectors(&q, NextHeader::Ipv4, &peer, &inside),
        Err(EspDrop::TsMismatch)
    );
    // Destination outside our selectors.
    let mut q = p.clone();
    q[16] = 192;
    assert_eq!(
        check_inner_selectors(&q, NextHeader::Ipv4, &peer, &inside),
        Err(EspDrop::TsMismatch)
    );
    // Protocol pinned by the selector.
    let tcp_only = [ts("10.100.0.5", "10.100.0.5", 6)];
    assert_eq!(
        check_inner_selectors(&p, NextHeader::Ipv4, &tcp_only, &inside),
        Err(EspDrop::TsMismatch)
    );
    // Version nibble contradicting Next Header, and a runt.
    assert_eq!(
        check_inner_selectors(&p, NextHeader::Ipv6, &peer, &inside),
        Err(EspDrop::TsMismatch)
    );
    assert_eq!(
        check_inner_selectors(&p[..19], NextHeader::Ipv4, &peer, &inside),
        Err(EspDrop::TsMismatch)
    );
    // IPv6 inside an IPv6 selector.
    let mut v6 = inner(60, true);
    v6[6] = 58;
    v6[8..24].copy_from_slice(
        &"2001:db8::5"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v6[24..40].copy_from_slice(
        &"2001:db8:1::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    let p6 = [ts("2001:db8::5", "2001:db8::5", 0)];
    let i6 = [ts("2001:db8:1::", "2001:db8:1::ffff", 0)];
    assert_eq!(
        check_inner_selectors(&v6, NextHeader::Ipv6, &p6, &i6),
        Ok(())
    );
    assert_eq!(
        check_inner_selectors(&v6, NextHeader::Ipv6, &peer, &inside),
        Err(EspDrop::TsMismatch)
    );
}

#[test]
fn random_garbage_never_panics_and_is_always_a_typed_drop() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x4303);
    for ks in all_suites() {
        let inb = InboundSa::new(&ks, Lifetimes::default(), 64).unwrap();
        let out = OutboundSa::new(&ks, Lifetimes::default()).unwrap();
        let good = encap(&out, &inner(200, false), 9);
        for i in 0..3000 {
            let mut pkt: Vec<u8> = if i % 2 == 0 {
                let n = rng.gen_range(0..300);
                (0..n).map(|_| rng.gen()).collect()
            } else {
                // A real packet with a few random octets changed or cut short.
                let mut p = good.clone();
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..p.len());
                    p[at] = rng.gen();
                }
                p.truncate(rng.gen_range(0..=p.len()));
                p
            };
            match inb.decapsulate(&mut pkt) {
                Err(Error::Esp(_)) => {}
                Ok(d) => panic!("{ks:?}: forged packet accepted: {d:?}"),
                Err(e) => panic!("{ks:?}: untyped error {e:?}"),
            }
        }
        // The genuine packet still passes afterwards: garbage did not move the window.
        assert!(decap(&inb, &good).is_ok());
    }
}

// --- selector ports (RFC 4301 4.4.1.1, 7) ---

pub(in crate::esp) mod ports {
    use super::*;
    use crate::event::TrafficSelector;

    pub(in crate::esp) fn ts(a: &str, b: &str, proto: u8, p0: u16, p1: u16) -> TrafficSelector {
        TrafficSelector {
            start: a.parse().unwrap(),
            end: b.parse().unwrap(),
            protocol: proto,
            start_port: p0,
            end_port: p1,
        }
    }

    /// An IPv4 packet 10.100.0.5 -> 10.200.3.4 with a next layer header of `l4`.
    fn v4(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        let len = (20 + l4.len()) as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 100, 0, 5]);
        p[16..20].copy_from_slice(&[10, 200, 3, 4]);
        p.extend_from_slice(l4);
        p
    }

    fn l4(sport: u16, dport: u16) -> Vec<u8> {
        let mut v = sport.to_be_bytes().to_vec();
        v.extend_from_slice(&dport.to_be_bytes());
        v.extend_from_slice(&[0u8; 16]);
        v
    }

    /// IPv6 2001:db8::5 -> 2001:db8:1::1, optional extension headers before `l4`.
    pub(in crate::esp) fn v6(ext: &[(u8, Vec<u8>)], proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[7] = 64;
        p[8..24].copy_from_slice(
            &"2001:db8::5"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        p[24..40].copy_from_slice(
            &"2001:db8:1::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        // Chain: fixed header's Next Header = first ext type, each ext's first octet = next.
        let mut types: Vec<u8> = ext.iter().map(|(t, _)| *t).collect();
        types.push(proto);
        p[6] = types[0];
        for (i, (_, body)) in ext.iter().enumerate() {
            let mut b = body.clone();
            b[0] = types[i + 1];
            p.extend_from_slice(&b);
        }
        p.extend_from_slice(l4);
        let plen = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        p
    }

    #[test]
    fn tcp_udp_sctp_udplite_ports_in_and_out_of_range() {
        // The peer may send from ports 1024-65535 to our port 443 only.
        for proto in [6u8, 17, 132, 136] {
            let peer = [ts("10.100.0.5", "10.100.0.5", proto, 1024, 65535)];
            let inside = [ts("10.200.0.0", "10.200.255.255", proto, 443, 443)];
            let ok = v4(proto, &l4(40000, 443));
            assert_eq!(
                check_inner_selectors(&ok, NextHeader::Ipv4, &peer, &inside),
                Ok(()),
                "{proto}"
            );
            for (s, d) in [(40000, 444), (40000, 442), (1023, 443), (0, 443)] {
                let bad = v4(proto, &l4(s, d));
                assert_eq!(
                    check_inner_selectors(&bad, NextHeader::Ipv4, &peer, &inside),
                    Err(EspDrop::TsMismatch),
                    "proto {proto} {s}->{d}"
                );
            }
            // Range edges are inclusive.
            let edge = v4(proto, &l4(1024, 443));
            assert_eq!(
                check_inner_selectors(&edge, NextHeader::Ipv4, &peer, &inside),
                Ok(())
            );
            // Outbound: our source port in local_ts, destination port in remote_ts.
            let mut out_ok = v4(proto, &l4(443, 40000));
            out_ok[12..16].copy_from_slice(&[10, 200, 3, 4]);
            out_ok[16..20].copy_from_slice(&[10, 100, 0, 5]);
            assert_eq!(check_outbound_selectors(&out_ok, &inside, &peer), Ok(()));
            let mut out_bad = out_ok.clone();
            out_bad[20..22].copy_from_slice(&8443u16.to_be_bytes());
            assert_eq!(
                check_outbound_selectors(&out_bad, &inside, &peer),
                Err(EspDrop::TsMismatch)
            );
        }
    }

    #[test]
    fn a_port_range_for_another_protocol_does_not_admit_the_packet() {
        let peer = [ts("10.100.0.5", "10.100.0.5", 6, 0, 65535)];
        let inside = [ts("10.200.0.0", "10.200.255.255", 0, 0, 65535)];
        // UDP to any port, but the peer's selector is TCP only.
        let p = v4(17, &l4(5000, 53));
        assert_eq!(
            check_inner_selectors(&p, NextHeader::Ipv4, &peer, &inside),
            Err(EspDrop::TsMismatch)
        );
        // One of two selectors is enough, when address, protocol and port all match it.
        let peer2 = [
            ts("10.100.0.5", "10.100.0.5", 6, 0, 65535),
            ts("10.100.0.0", "10.100.0.255", 17, 5000, 5000),
        ];
        assert_eq!(
            check_inner_selectors(&p, NextHeader::Ipv4, &peer2, &inside),
            Ok(())
        );
        let p = v4(17, &l4(5001, 53));
        assert_eq!(
            check_inner_selectors(&p, NextHeader::Ipv4, &peer2, &inside),
            Err(EspDrop::TsMismatch)
        );
    }

    #[test]
    fn icmp_type_and_code_sit_in_the_port_fields() {
        // Echo request only (type 8, code 0 -> 0x0800), RFC 4301 4.4.1.1.
        let peer = [ts("10.100.0.5", "10.100.0.5", 1, 0x0800, 0x0800)];
        let inside = [ts("10.200.0.0", "10.200.255.255", 1, 0, 65535)];
        let echo = v4(1, &[8, 0, 0, 0, 0, 1, 0, 1]);
        assert_eq!(
            check_inner_selectors(&echo, NextHeader::Ipv4, &peer, &inside),
            Ok(())
        );
        let reply = v4(1, &[0, 0, 0, 0, 0, 1, 0, 1]);
        assert_eq!(
            check_inner_selectors(&reply, NextHeader::Ipv4, &peer, &inside),
            Err(EspDrop::TsMismatch)
        );
        let unreach = v4(1, &[3, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            check_inner_selectors(&unreach, NextHeader::Ipv4, &peer, &inside),
            Err(EspDrop::TsMismatch)
        );
        // All of type 3 (0x0300-0x03ff).
        let t3 = [ts("10.100.0.5", "10.100.0.5", 1, 0x0300, 0x03ff)];
        assert_eq!(
            check_inner_selectors(&unreach, NextHeader::Ipv4, &t3, &inside),
            Ok(())
        );
        // ICMPv6 echo request (128) behind a Destination Options header.
        let p6 = [ts("2001:db8::5", "2001:db8::5", 58, 0x8000, 0x80ff)];
        let i6 = [ts("2001:db8:1::", "2001:db8:1::ffff", 0, 0, 65535)];
        let echo6 = v6(&[(60, vec![0u8; 8])], 58, &[128, 0, 0, 0, 0, 1, 0, 1]);
        assert_eq!(
            check_inner_selectors(&echo6, NextHeader::Ipv6, &p6, &i6),
            Ok(())
        );
        let reply6 = v6(&[(60, vec![0u8; 8])], 58, &[129, 0, 0, 0, 0, 1, 0, 1]);
        assert_eq!(
            check_inner_selectors(&reply6, NextHeader::Ipv6, &p6, &i6),
            Err(EspDrop::TsMismatch)
        );
    }

    #[test]
    fn opaque_any_and_non_initial_fragments() {
        let inside = [ts("10.200.0.0", "10.200.255.255", 0, 0, 65535)];
        let web = [ts("10.100.0.5", "10.100.0.5", 6, 80, 80)];
        let any = [ts("10.100.0.5", "10.100.0.5", 6, 0, 65535)];
        let opaque = [ts("10.100.0.5", "10.100.0.5", 6, 65535, 0)];
        let first = v4(6, &l4(80, 40000));
        // A non-initial fragment: offset 185 (x8 octets), no TCP header in it.
        let mut frag = v4(6, &[0xaa; 24]);
        frag[6..8].copy_from_slice(&185u16.to_be_bytes());
        assert_eq!(
            check_inner_selectors(&first, NextHeader::Ipv4, &web, &inside),
            Ok(())
        );
        assert_eq!(
            check_inner_selectors(&frag, NextHeader::Ipv4, &web, &inside),
            Err(EspDrop::NonInitialFragment)
        );
        // ANY matches everything, OPAQUE only what has no ports to show.
        assert_eq!(
            check_inner_selectors(&frag, NextHeader::Ipv4, &any, &inside),
            Ok(())
        );
        assert_eq!(
            check_inner_selectors(&first, NextHeader::Ipv4, &any, &inside),
            Ok(())
        );
        assert_eq!(
            check_inner_selectors(&frag, NextHeader::Ipv4, &opaque, &inside),
            Ok(())
        );
        assert_eq!(
            check_inner_selectors(&first, NextHeader::Ipv4, &opaque, &inside),
            Err(EspDrop::TsMismatch)
        );
        // A first fragment (MF set, offset 0) carries its ports and is checked by them.
        let mut mf = first.clone();
        mf[6] = 0x20;
        assert_eq!(
            check_inner_selectors(&mf, NextHeader::Ipv4, &web, &inside),
            Ok(())
        );
        // A non-initial fragment from the wrong address is a plain mismatch.
        let mut spoof = frag.clone();
        spoof[15] = 9;
        assert_eq!(
            check_inner_selectors(&spoof, NextHeader::Ipv4, &web, &inside),
            Err(EspDrop::TsMismatch)
        );
        // IPv6: the Fragment header's offset decides, and the protocol is the one after it.
        let p6 = [ts("2001:db8::5", "2001:db8::5", 17, 53, 53)];
        let i6 = [ts("2001:db8:1::", "2001:db8:1::ffff", 0, 0, 65535)];
        let mut fh = vec![0u8; 8];
        fh[2..4].copy_from_slice(&(100u16 << 3).to_be_bytes());
        let frag6 = v6(&[(44, fh)], 17, &[0xbb; 16]);
        assert_eq!(
            check_inner_selectors(&frag6, NextHeader::Ipv6, &p6, &i6),
            Err(EspDrop::NonInitialFragment)
        );
        let mut fh0 = vec![0u8; 8];
        fh0[3] = 1; // offset 0, M flag
        let first6 = v6(&[(44, fh0)], 17, &l4(53, 33000));
        assert_eq!(
            check_inner_selectors(&first6, NextHeader::Ipv6, &p6, &i6),
            Ok(())
        );
        let wrong6 = v6(&[], 17, &l4(54, 33000));
        assert_eq!(
            check_inner_selectors(&wrong6, NextHeader::Ipv6, &p6, &i6),
            Err(EspDrop::TsMismatch)
        );
    }

    #[test]
    fn truncated_headers_never_panic() {
        let peer = [ts("10.100.0.5", "10.100.0.5", 6, 80, 80)];
        let inside = [ts("10.200.0.0", "10.200.255.255", 0, 0, 65535)];
        let p = v4(6, &l4(80, 1));
        for n in 0..p.len() {
            let _ = check_inner_selectors(&p[..n], NextHeader::Ipv4, &peer, &inside);
            let _ = check_outbound_selectors(&p[..n], &inside, &peer);
        }
        // A TCP header cut before the ports cannot match a port selector.
        assert_eq!(
            check_inner_selectors(&p[..22], NextHeader::Ipv4, &peer, &inside),
            Err(EspDrop::TsMismatch)
        );
        // Hop-by-Hop (8 octets) then Routing (Hdr Ext Len 1: 16 octets).
        let mut rh = vec![0u8; 16];
        rh[1] = 1;
        let q = v6(&[(0, vec![0u8; 8]), (43, rh)], 6, &l4(80, 1));
        let p6 = [ts("2001:db8::5", "2001:db8::5", 6, 80, 80)];
        let i6 = [ts("2001:db8:1::", "2001:db8:1::ffff", 0, 0, 65535)];
        assert_eq!(
            check_inner_selectors(&q, NextHeader::Ipv6, &p6, &i6),
            Ok(())
        );
        for n in 0..q.len() {
            let _ = check_inner_selectors(&q[..n], NextHeader::Ipv6, &p6, &i6);
        }
    }
}

// --- IPv4 fragments (RFC 791 2.3), for the fragment table and the hold ---

pub(in crate::esp) mod fragments {
    use super::ports::ts;
    use crate::event::TrafficSelector;

    /// The peer 10.100.0.5 may send UDP to the inside port 53 only.
    pub(in crate::esp) fn sel4() -> ([TrafficSelector; 1], [TrafficSelector; 1]) {
        (
            [ts("10.100.0.5", "10.100.0.5", 17, 0, 65535)],
            [ts("10.200.0.0", "10.200.255.255", 17, 53, 53)],
        )
    }

    /// IPv4 10.100.0.5 -> 10.200.3.4, UDP, Identification `id`, fragment offset `offset`
    /// in octets, More Fragments if `more`, then `data`.
    pub(in crate::esp) fn v4(id: u16, offset: u16, more: bool, data: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        let fo = (offset / 8) | if more { 0x2000 } else { 0 };
        p[6..8].copy_from_slice(&fo.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 100, 0, 5]);
        p[16..20].copy_from_slice(&[10, 200, 3, 4]);
        p.extend_from_slice(data);
        p
    }
}

#[test]
fn every_drop_reason_indexes_its_place_in_all() {
    for (i, d) in EspDrop::ALL.iter().enumerate() {
        assert_eq!(d.index(), i, "{d:?}");
    }
}
