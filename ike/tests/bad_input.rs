//! Hostile and malformed input to a responder: what it answers (RFC 7296 2.5, 2.21) and
//! that it keeps no state for it.
#![allow(clippy::unwrap_used)]
mod util;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ike::message::{ExchangeType, Header, Message, Notify, NotifyType, Payload};
use ike::SocketKind;
use util::*;

const ATTACKER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 66, 0, 9)), 500);

/// Answers the responder sent to the initiator's address, decoded.
fn answers(p: &mut Pair) -> Vec<Message> {
    let out: Vec<Message> = p
        .responder
        .sent
        .iter()
        .map(|t| {
            let b = if t.socket == SocketKind::NatT {
                &t.payload[4..]
            } else {
                &t.payload[..]
            };
            Message::decode(b, &Default::default()).unwrap()
        })
        .collect();
    p.responder.sent.clear();
    out
}

fn notify_of(m: &Message) -> Option<NotifyType> {
    m.payloads.iter().find_map(|p| match p {
        Payload::Notify(n) => Some(n.kind),
        _ => None,
    })
}

/// A real IKE_SA_INIT request from an initiator endpoint.
fn real_init(p: &mut Pair) -> Vec<u8> {
    let mut q = pair(&["aes256gcm16-prfsha256-x25519"], 1000);
    q.blackhole = Some(Side::Initiator);
    q.connect(Arc::new(initiator_config(
        "aes256gcm16-prfsha256-x25519",
        "x.example",
        PSK,
    )));
    q.collect();
    let _ = p;
    q.initiator.sent[0].payload.clone()
}

#[test]
fn unknown_spi_request_gets_invalid_ike_spi_and_responses_get_nothing() {
    let mut p = pair(&["aes256gcm16-prfsha256-x25519"], 40);
    let mut h = Header::new(0x1111, 0x2222, ExchangeType::Informational, true, false, 5);
    h.next_payload = 46;
    let mut m = Message {
        header: h,
        payloads: vec![Payload::Sk {
            first_inner: 0,
            body: vec![0; 40],
        }],
    }
    .encode()
    .unwrap();
    p.inject_to_responder(SocketKind::Ike, ATTACKER, &m);
    let a = answers(&mut p);
    assert_eq!(a.len(), 1);
    assert_eq!(notify_of(&a[0]), Some(NotifyType::INVALID_IKE_SPI));
    assert!(a[0].header.response);
    assert_eq!(a[0].header.message_id, 5);
    assert_eq!((a[0].header.spi_i, a[0].header.spi_r), (0x1111, 0x2222));
    // A response with an unknown SPI is never answered.
    m[19] |= 0x20;
    p.inject_to_responder(SocketKind::Ike, ATTACKER, &m);
    assert!(answers(&mut p).is_empty());
    assert_eq!(p.responder.ep.counters().dropped("invalid_ike_spi"), 2);
    // Answers are rate limited: a flood gets at most 100 per second.
    m[19] &= !0x20;
    for _ in 0..500 {
        p.inject_to_responder(SocketKind::Ike, ATTACKER, &m);
    }
    assert!(answers(&mut p).len() <= 100);
    assert!(p.responder.ep.ike_sas().is_empty());
}

#[test]
fn unsupported_critical_payload_and_major_version() {
    let mut p = pair(&["aes256gcm16-prfsha256-x25519"], 41);
    let init = real_init(&mut p);
    let mut m = Message::decode(&init, &Default::default()).unwrap();
    m.payloads.push(Payload::Unknown {
        kind: 200,
        critical: true,
        body: vec![1, 2, 3],
    });
    let bytes = m.encode().unwrap();
    p.inject_to_responder(SocketKind::Ike, ATTACKER, &bytes);
    let a = answers(&mut p);
    assert_eq!(a.len(), 1);
    assert_eq!(
        notify_of(&a[0]),
        Some(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD)
    );
    let Payload::Notify(Notify { data, .. }) = &a[0].payloads[0] else {
        panic!()
    };
    assert_eq!(data, &vec![200]);
    // A non-critical unknown payload is ignored: the handshake proceeds.
    m.payloads.pop();
    m.payloads.push(Payload::Unknown {
        kind: 200,
        critical: false,
        body: vec![1, 2, 3],
    });
    p.inject_to_responder(SocketKind::Ike, ATTACKER, &m.encode().unwrap());
    let a = answers(&mut p);
    assert_eq!(a.len(), 1);
    assert!(a[0]
        .payloads
        .iter()
        .any(|x| matches!(x, Payload::Ke { .. })));
    assert_eq!(p.responder.ep.half_open(), 1);
    // Major version 3: INVALID_MAJOR_VERSION in a version 2 header.
    let mut v3 = init.clone();
    v3[17] = 0x30;
    v3[0] ^= 0xff; // another SPIi
    p.inject_to_responder(SocketKind::Ike, ATTACKER, &v3);
    let a = answers(&mut p);
    assert_eq!(a.len(), 1);
    assert_eq!(notify_of(&a[0]), Some(NotifyType::INVALID_MAJOR_VERSION));
    assert_eq!(a[0].header.major_version, 2);
    assert_eq!(p.responder.ep.half_open(), 1);
}

#[test]
fn truncated_and_wrong_length_datagrams_are_dropped_silently() {
    let mut p = pair(&["aes256gcm16-prfsha256-x25519"], 42);
    let init = real_init(&mut p);
    for cut in [0, 1, 27, 28, 29, init.len() / 2, init.len() - 1] {
        p.inject_to_responder(SocketKind::Ike, ATTACKER, &init[..cut]);
    }
    let mut longer = init.clone();
    longer.extend_from_slice(&[0; 7]);
    p.inject_to_responder(SocketKind::Ike, ATTACKER, &longer);
    // On the NAT-T port without the non-ESP marker it is ESP, not ours.
    p.inject_to_responder(SocketKind::NatT, ATTACKER, &init);
    assert!(answers(&mut p).is_empty());
    assert!(p.responder.ep.ike_sas().is_empty());
    let c = p.responder.ep.counters();
    let dropped: u64 = c.dropped.values().sum();
    assert_eq!(dropped, 9, "{c:?}");
    // Oversized: beyond limits.max_message.
    let huge = vec![0u8; 70_000];
    p.inject_to_responder(SocketKind::Ike, ATTACKER, &huge);
    assert_eq!(p.responder.ep.counters().dropped("oversized"), 1);
    // And the real thing still works afterwards, from the marker-carrying NAT-T port too.
    let mut natt = vec![0, 0, 0, 0];
    natt.extend_from_slice(&init);
    p.inject_to_responder(SocketKind::NatT, ATTACKER, &natt);
    let a = answers(&mut p);
    assert_eq!(a.len(), 1);
    assert_eq!(p.responder.ep.half_open(), 1);
}

#[test]
fn retransmissions_back_off_exponentially_then_give_up() {
    let mut p = pair(&["aes256gcm16-prfsha256-x25519"], 43);
    p.blackhole = Some(Side::Responder);
    let id = p.connect(Arc::new(initiator_config(
        "aes256gcm16-prfsha256-x25519",
        "x.example",
        PSK,
    )));
    let mut times = Vec::new();
    let mut seen = 0;
    for _ in 0..400 {
        p.advance(Duration::from_millis(100));
        if p.initiator.sent.len() > seen {
            seen = p.initiator.sent.len();
            times.push((p.now - p.start).as_millis() / 100);
        }
    }
    // First at 0 (collected in the first step), then +0.5, +1, +2, +4 s (tries = 4).
    assert_eq!(times, vec![1, 5, 15, 35, 75], "send times in 100 ms units");
    assert_eq!(
        p.initiator.deleted(),
        vec![(id, ike::DeleteReason::Timeout)]
    );
    assert!(p
        .initiator
        .negotiation_failures()
        .iter()
        .any(|r| r.contains("no response")));
    // Identical bytes each time (a retransmission, not a new request).
    assert!(p
        .initiator
        .sent
        .windows(2)
        .all(|w| w[0].payload == w[1].payload));
}
