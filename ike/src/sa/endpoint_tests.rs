//! In-crate state-machine tests that need the engine's internals: requests the public
//! API cannot produce (a rekey of an unknown CHILD SA, an authenticated but malformed
//! request), protected with the real SA keys.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::*;

fn cfgs() -> (
    Arc<EndpointConfig>,
    Arc<EndpointConfig>,
    Arc<InitiatorConfig>,
) {
    let ike = IkeProposal {
        encr: vec![EncrAlg::AesGcm16(256)],
        prf: vec![PrfAlg::HmacSha256],
        integ: vec![],
        dh: vec![DhGroup::Curve25519],
    };
    let esp = EspProposal {
        encr: vec![EncrAlg::AesGcm16(256)],
        integ: vec![],
        dh: vec![],
        esn: false,
    };
    let psk = PskStore {
        by_identity: Default::default(),
        default: Some(b"k".to_vec()),
    };
    let any = crate::negotiate::ts_any(false);
    let base = |responder| EndpointConfig {
        local_natt_port: 4500,
        responder,
        lifetimes: Lifetimes {
            dpd_delay: None,
            ..Lifetimes::default()
        },
        retransmit: Retransmit::default(),
        limits: Limits::default(),
    };
    let r = ResponderConfig {
        local_id: Identity::Fqdn("gw".into()),
        auth: AuthConfig::Psk(psk.clone()),
        ike_proposals: vec![ike.clone()],
        esp_proposals: vec![esp.clone()],
        local_ts: vec![any.clone()],
        pool: PoolConfig {
            v4: Some("100.64.0.0/24".parse().unwrap()),
            v6: None,
            dns: vec![],
        },
    };
    let i = InitiatorConfig {
        local_id: Identity::Fqdn("r1".into()),
        remote_id: None,
        auth: AuthConfig::Psk(psk),
        ike_proposals: vec![ike],
        esp_proposals: vec![esp],
        request_vip4: true,
        request_vip6: false,
        local_ts: vec![],
        remote_ts: vec![any],
        initial_contact: false,
        remote_natt_port: 4500,
    };
    (Arc::new(base(None)), Arc::new(base(Some(r))), Arc::new(i))
}

/// Move datagrams between the two endpoints until both are quiet; returns the
/// responder's datagrams.
fn pump(i: &mut Endpoint, r: &mut Endpoint, now: Instant) -> Vec<Vec<u8>> {
    let mut from_r = Vec::new();
    loop {
        let mut moved = false;
        while let Some(t) = i.poll_transmit() {
            r.handle(now, t.socket, t.remote, t.local, &t.payload);
            moved = true;
        }
        while let Some(t) = r.poll_transmit() {
            from_r.push(t.payload.clone());
            i.handle(now, t.socket, t.remote, t.local, &t.payload);
            moved = true;
        }
        if !moved {
            return from_r;
        }
    }
}

fn established() -> (Endpoint, Endpoint, IkeSaId, Instant) {
    let (ic, rc, cfg) = cfgs();
    let now = Instant::now();
    let mut i = Endpoint::new(ic, [1; 32]);
    let mut r = Endpoint::new(rc, [2; 32]);
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 500);
    let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 500);
    let id = i.initiate(now, local, remote, cfg).unwrap();
    pump(&mut i, &mut r, now);
    assert_eq!(i.ike_sa(id).unwrap().state, IkeSaState::Established);
    (i, r, id, now)
}

/// Send `payloads` as a request of `exchange` on the initiator's SA and return the
/// decrypted payloads of the responder's answer.
fn request(
    i: &mut Endpoint,
    r: &mut Endpoint,
    id: IkeSaId,
    now: Instant,
    exchange: ExchangeType,
    payloads: &[Payload],
) -> Vec<Payload> {
    let mut sa = i.sas.remove(&id).unwrap();
    i.send_request(now, &mut sa, exchange, payloads, PendingKind::Dpd)
        .unwrap();
    let keys_in = |sa: &IkeSa, data: &[u8]| {
        let (m, off) = Message::decode_locating_sk(data, &DecodeLimits::default()).unwrap();
        let Some(Payload::Sk { first_inner, .. }) = m.payloads.last() else {
            panic!("no SK")
        };
        let plain = sa
            .keys
            .as_ref()
            .unwrap()
            .inb
            .open(data, off.unwrap())
            .unwrap();
        decode_payloads(*first_inner, &plain, &DecodeLimits::default()).unwrap()
    };
    let pkts: Vec<Transmit> = std::iter::from_fn(|| i.poll_transmit()).collect();
    let mut answers = Vec::new();
    for t in pkts {
        r.handle(now, t.socket, t.remote, t.local, &t.payload);
        while let Some(a) = r.poll_transmit() {
            answers.push(a.payload);
        }
    }
    assert_eq!(answers.len(), 1, "one answer");
    let out = keys_in(&sa, &answers[0]);
    i.sas.insert(id, sa);
    out
}

fn notifies(p: &[Payload]) -> Vec<NotifyType> {
    p.iter()
        .filter_map(|x| match x {
            Payload::Notify(n) => Some(n.kind),
            _ => None,
        })
        .collect()
}

#[test]
fn rekey_of_an_unknown_child_sa_gets_child_sa_not_found() {
    let (mut i, mut r, id, now) = established();
    let spi = Spi(0x1234_5678);
    let offer = crate::negotiate::esp_offer(
        &[EspProposal {
            encr: vec![EncrAlg::AesGcm16(256)],
            integ: vec![],
            dh: vec![],
            esn: false,
        }],
        Spi(0x0bad_cafe),
        false,
    );
    let any = crate::negotiate::ts_any(false);
    let ans = request(
        &mut i,
        &mut r,
        id,
        now,
        ExchangeType::CreateChildSa,
        &[
            Payload::Notify(Notify {
                protocol: ProtocolId::Esp,
                spi: spi.0.to_be_bytes().to_vec(),
                kind: NotifyType::REKEY_SA,
                data: vec![],
            }),
            Payload::Sa(offer),
            Payload::Nonce(vec![7; 32]),
            Payload::TsI(vec![any.clone()]),
            Payload::TsR(vec![any]),
        ],
    );
    assert_eq!(notifies(&ans), vec![NotifyType::CHILD_SA_NOT_FOUND]);
    assert_eq!(
        r.counters().dropped("child_sa_not_found"),
        0,
        "answered, not a drop"
    );
    // The SA is still fine: a DPD goes through.
    assert!(request(
        &mut i,
        &mut r,
        id,
        now + Duration::from_secs(1),
        ExchangeType::Informational,
        &[]
    )
    .is_empty());
}

#[test]
fn authenticated_malformed_requests_are_answered_not_dropped() {
    let (mut i, mut r, id, now) = established();
    // An unknown critical payload inside SK.
    let ans = request(
        &mut i,
        &mut r,
        id,
        now,
        ExchangeType::Informational,
        &[Payload::Unknown {
            kind: 222,
            critical: true,
            body: vec![1],
        }],
    );
    assert_eq!(
        notifies(&ans),
        vec![NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD]
    );
    // A CREATE_CHILD_SA without SA payload.
    let ans = request(
        &mut i,
        &mut r,
        id,
        now,
        ExchangeType::CreateChildSa,
        &[Payload::Nonce(vec![1; 32])],
    );
    assert_eq!(notifies(&ans), vec![NotifyType::INVALID_SYNTAX]);
    // A new CHILD SA (no REKEY_SA) with selectors outside ours is TS_UNACCEPTABLE... ours
    // is 0.0.0.0/0 here, so ask for IPv6 only.
    let offer = crate::negotiate::esp_offer(
        &[EspProposal {
            encr: vec![EncrAlg::AesGcm16(256)],
            integ: vec![],
            dh: vec![],
            esn: false,
        }],
        Spi(0x0bad_cafe),
        false,
    );
    let v6 = crate::negotiate::ts_any(true);
    let ans = request(
        &mut i,
        &mut r,
        id,
        now,
        ExchangeType::CreateChildSa,
        &[
            Payload::Sa(offer),
            Payload::Nonce(vec![7; 32]),
            Payload::TsI(vec![v6.clone()]),
            Payload::TsR(vec![v6]),
        ],
    );
    assert_eq!(notifies(&ans), vec![NotifyType::TS_UNACCEPTABLE]);
    assert_eq!(r.ike_sas()[0].child_sas.len(), 1, "no CHILD SA was added");
}

/// A CREATE_CHILD_SA request for a CHILD SA: a rekey of `rekey` or, with `None`, a new one.
fn child_request(rekey: Option<Spi>) -> Vec<Payload> {
    let offer = crate::negotiate::esp_offer(
        &[EspProposal {
            encr: vec![EncrAlg::AesGcm16(256)],
            integ: vec![],
            dh: vec![],
            esn: false,
        }],
        Spi(0x0bad_cafe),
        false,
    );
    let any = crate::negotiate::ts_any(false);
    let mut p = Vec::new();
    if let Some(spi) = rekey {
        p.push(Payload::Notify(Notify {
            protocol: ProtocolId::Esp,
            spi: spi.0.to_be_bytes().to_vec(),
            kind: NotifyType::REKEY_SA,
            data: vec![],
        }));
    }
    p.extend([
        Payload::Sa(offer),
        Payload::Nonce(vec![7; 32]),
        Payload::TsI(vec![any.clone()]),
        Payload::TsR(vec![any]),
    ]);
    p
}

/// RFC 7296 2.25: while the responder's own IKE SA rekey is in flight, a CHILD SA rekey
/// or a new CHILD SA is refused with TEMPORARY_FAILURE (to be retried on the new IKE SA),
/// and a rekey of a CHILD SA that does not exist gets CHILD_SA_NOT_FOUND.
#[test]
fn child_requests_during_our_ike_rekey_get_temporary_failure() {
    let (mut i, mut r, id, now) = established();
    let child = i.ike_sa(id).unwrap().child_sas[0].inbound;
    let rid = r.ike_sas()[0].id;
    r.rekey_ike_sa(now, rid).unwrap();
    // The responder's CREATE_CHILD_SA request is still on its way.
    assert_eq!(std::iter::from_fn(|| r.poll_transmit()).count(), 1);
    while r.poll().is_some() {}
    let cases = [
        (Some(child), NotifyType::TEMPORARY_FAILURE),
        (None, NotifyType::TEMPORARY_FAILURE),
        (Some(Spi(0x1234_5678)), NotifyType::CHILD_SA_NOT_FOUND),
    ];
    for (k, (rekey, want)) in cases.into_iter().enumerate() {
        let ans = request(
            &mut i,
            &mut r,
            id,
            now,
            ExchangeType::CreateChildSa,
            &child_request(rekey),
        );
        assert_eq!(notifies(&ans), vec![want], "case {k}");
    }
    assert_eq!(r.counters().temporary_failures, 2);
    // Nothing was installed or rekeyed by the refused requests.
    let evs: Vec<Event> = std::iter::from_fn(|| r.poll()).collect();
    assert!(
        !evs.iter()
            .any(|e| matches!(e, Event::ChildSaInstalled(_) | Event::ChildSaRekeyed { .. })),
        "{evs:?}"
    );
    assert_eq!(r.ike_sa(rid).unwrap().child_sas.len(), 1);
}

/// RFC 7296 2.25: a request arriving on an IKE SA that was already replaced by a rekey
/// (its Delete not yet through): TEMPORARY_FAILURE for a CHILD SA that moved to the new
/// IKE SA, CHILD_SA_NOT_FOUND for one that exists nowhere.
#[test]
fn child_requests_on_a_rekeyed_ike_sa_are_refused() {
    let (mut i, mut r, id, now) = established();
    let child = i.ike_sa(id).unwrap().child_sas[0].inbound;
    let rid = r.ike_sas()[0].id;
    i.rekey_ike_sa(now, id).unwrap();
    // Deliver the rekey request and its response, but hold back the Delete of the old SA.
    let req: Vec<Transmit> = std::iter::from_fn(|| i.poll_transmit()).collect();
    for t in req {
        r.handle(now, t.socket, t.remote, t.local, &t.payload);
    }
    let resp: Vec<Transmit> = std::iter::from_fn(|| r.poll_transmit()).collect();
    for t in resp {
        i.handle(now, t.socket, t.remote, t.local, &t.payload);
    }
    assert_eq!(
        std::iter::from_fn(|| i.poll_transmit()).count(),
        1,
        "Delete"
    );
    assert_eq!(r.sas[&rid].state, IkeSaState::Rekeyed);
    assert_eq!(i.sas[&id].state, IkeSaState::Rekeyed);
    // Reuse the held-back Delete's message ID.
    i.sas.get_mut(&id).unwrap().next_msg_id -= 1;
    let ans = request(
        &mut i,
        &mut r,
        id,
        now,
        ExchangeType::CreateChildSa,
        &child_request(Some(child)),
    );
    assert_eq!(notifies(&ans), vec![NotifyType::TEMPORARY_FAILURE]);
    let ans = request(
        &mut i,
        &mut r,
        id,
        now,
        ExchangeType::CreateChildSa,
        &child_request(Some(Spi(0x1234_5678))),
    );
    assert_eq!(notifies(&ans), vec![NotifyType::CHILD_SA_NOT_FOUND]);
    // The CHILD SA lives on, on the successor.
    let succ = r.sas[&rid].successor.unwrap();
    assert_eq!(r.ike_sa(succ).unwrap().child_sas.len(), 1);
}

/// The answer to our CHILD SA rekey arrives after the peer's IKE SA rekey request (the
/// peer answered it first, then started the IKE rekey; the network reordered): the new
/// CHILD SA and the Delete of the old one follow the CHILD SAs to the new IKE SA, so both
/// ends end with one matching CHILD SA on one IKE SA.
#[test]
fn child_rekey_answer_overtaken_by_an_ike_rekey_lands_on_the_new_sa() {
    let (mut i, mut r, id, now) = established();
    let (old_in, old_out) = {
        let c = &i.ike_sa(id).unwrap().child_sas[0];
        (c.inbound, c.outbound)
    };
    let rid = r.ike_sas()[0].id;
    i.rekey_child_sa(now, old_in).unwrap();
    for t in std::iter::from_fn(|| i.poll_transmit()).collect::<Vec<_>>() {
        r.handle(now, t.socket, t.remote, t.local, &t.payload);
    }
    let child_resp: Vec<Transmit> = std::iter::from_fn(|| r.poll_transmit()).collect();
    assert_eq!(child_resp.len(), 1);
    r.rekey_ike_sa(now, rid).unwrap();
    let ike_req: Vec<Transmit> = std::iter::from_fn(|| r.poll_transmit()).collect();
    assert_eq!(ike_req.len(), 1);
    for t in ike_req.iter().chain(child_resp.iter()) {
        i.handle(now, t.socket, t.remote, t.local, &t.payload);
    }
    pump(&mut i, &mut r, now);
    let si = i.ike_sas();
    let sr = r.ike_sas();
    assert_eq!((si.len(), sr.len()), (1, 1), "{si:?} {sr:?}");
    assert_ne!(si[0].id, id);
    assert_eq!((si[0].spi_i, si[0].spi_r), (sr[0].spi_i, sr[0].spi_r));
    assert_eq!(si[0].child_sas.len(), 1, "{:?}", si[0].child_sas);
    assert_eq!(sr[0].child_sas.len(), 1, "{:?}", sr[0].child_sas);
    let (ci, cr) = (&si[0].child_sas[0], &sr[0].child_sas[0]);
    assert_eq!((ci.inbound, ci.outbound), (cr.outbound, cr.inbound));
    assert_ne!(ci.inbound, old_in, "rekeyed");
    assert_ne!(ci.outbound, old_out, "rekeyed");
    assert!(i.child_index.get(&ci.inbound) == Some(&si[0].id));
    assert!(!i.child_index.contains_key(&old_in));
}
