//! Fuzz target: arbitrary datagrams into a responder `Endpoint` (RFC 7296 2.21: hostile
//! input is dropped or answered, never panics, never grows state without bound).
//!
//! Input layout: a sequence of records `[flags: u8][len: u16 BE][datagram: len]`.
//! `flags` bit 0 picks the socket (IKE / NAT-T), bits 1..3 the peer address, bits 4..7
//! how many seconds pass before the datagram (timers run in between).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ike::config::*;
use ike::endpoint::Endpoint;
use ike::{Identity, SocketKind};
use libfuzzer_sys::fuzz_target;

fn config() -> Arc<EndpointConfig> {
    let prop = IkeProposal {
        encr: vec![EncrAlg::AesGcm16(256), EncrAlg::AesCbc(128)],
        prf: vec![PrfAlg::HmacSha256],
        integ: vec![IntegAlg::HmacSha256_128],
        dh: vec![DhGroup::Curve25519],
    };
    let esp = EspProposal {
        encr: vec![EncrAlg::AesGcm16(256)],
        integ: vec![],
        dh: vec![],
        esn: false,
    };
    let mut limits = Limits::default();
    limits.half_open_max = 32;
    limits.cookie_threshold = 16;
    limits.half_open_timeout = Duration::from_secs(5);
    Arc::new(EndpointConfig {
        local_natt_port: 4500,
        responder: Some(ResponderConfig {
            local_id: Identity::Fqdn("headend.example".into()),
            auth: AuthConfig::Psk(PskStore {
                by_identity: Default::default(),
                default: Some(b"fuzz".to_vec()),
            }),
            ike_proposals: vec![prop],
            esp_proposals: vec![esp],
            local_ts: vec![],
            pool: PoolConfig {
                v4: Some("100.64.0.0/28".parse().unwrap()),
                v6: None,
                dns: vec![],
            },
        }),
        lifetimes: Lifetimes::default(),
        retransmit: Retransmit::default(),
        limits,
    })
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    let mut ep = Endpoint::new(config(), [7; 32]);
    let mut rest = data;
    while rest.len() >= 3 {
        let flags = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let dgram = &rest[3..3 + len];
        rest = &rest[3 + len..];
        now += Duration::from_secs(u64::from(flags >> 4));
        ep.handle_timeout(now);
        let socket = if flags & 1 == 0 {
            SocketKind::Ike
        } else {
            SocketKind::NatT
        };
        let port = if socket == SocketKind::Ike { 500 } else { 4500 };
        let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), port);
        let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, (flags >> 1) & 7)), 500);
        ep.handle(now, socket, local, remote, dgram);
        while ep.poll_transmit().is_some() {}
        while ep.poll().is_some() {}
        assert!(ep.half_open() <= 32);
    }
});
