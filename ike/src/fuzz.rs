//! Bodies of the IKE fuzz targets `decode` and `responder` (`ike/fuzz/`), shared with the
//! seed tests below so CI runs exactly what the fuzzer runs. Not an API (hidden from the
//! documentation). The ESP targets are in [`crate::esp::fuzz`].
//!
//! [`decode`]: the IKEv2 message decoder (RFC 7296 3) and the inner-chain decoder used
//! after SK decryption (3.14), then proposal selection (2.7) and TS narrowing (2.9) on
//! whatever decoded. Whatever decodes must re-encode and decode to the same value (the
//! header length aside, since transforms with unknown attributes are dropped).
//!
//! [`responder`]: arbitrary datagrams into a responder [`Endpoint`] (RFC 7296 2.21:
//! hostile input is dropped or answered, never panics, never grows state without
//! bound). Input: records `[flags: u8][len: u16 BE][datagram: len]`; `flags` bit 0 picks
//! the socket (IKE / NAT-T), bits 1..3 the peer address, bits 4..7 how many seconds
//! pass before the datagram (timers run in between).
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::config::*;
use crate::endpoint::Endpoint;
use crate::message::{decode_payloads, encode_payloads, DecodeLimits, Header, Message, Payload};
use crate::negotiate::{check_esp_reply, check_ike_reply, narrow, select_esp, select_ike, ts_any};
use crate::{Identity, SocketKind};

fn negotiate(payloads: &[Payload]) {
    let ike = [IkeProposal {
        encr: vec![EncrAlg::AesGcm16(256), EncrAlg::AesCbc(128)],
        prf: vec![PrfAlg::HmacSha256],
        integ: vec![IntegAlg::HmacSha256_128],
        dh: vec![DhGroup::Curve25519, DhGroup::Ecp256],
    }];
    let esp = [EspProposal {
        encr: vec![EncrAlg::ChaCha20Poly1305, EncrAlg::AesCbc(256)],
        integ: vec![IntegAlg::HmacSha512_256],
        dh: vec![DhGroup::Ecp384],
        esn: true,
    }];
    let mut tsi = None;
    for p in payloads {
        match p {
            Payload::Sa(offer) => {
                if let Ok((_, chosen)) = select_ike(offer, &ike, Some(31)) {
                    // Our own choice must pass our own initiator check when numbered 1.
                    let mut c = chosen;
                    c.number = 1;
                    check_ike_reply(&[c], &ike).expect("own IKE choice accepted");
                }
                if let Ok((_, chosen, _)) = select_esp(offer, &esp, true, Some(20)) {
                    let mut c = chosen;
                    c.number = 1;
                    check_esp_reply(&[c], &esp, true).expect("own ESP choice accepted");
                }
                let _ = check_ike_reply(offer, &ike);
                let _ = check_esp_reply(offer, &esp, false);
            }
            Payload::TsI(ts) => tsi = Some(ts.clone()),
            Payload::TsR(tsr) => {
                let local = [ts_any(false), ts_any(true)];
                let vip = [IpAddr::V4(Ipv4Addr::new(10, 1, 0, 5))];
                let _ = narrow(tsi.as_deref().unwrap_or(&[]), tsr, &local, &vip);
            }
            _ => {}
        }
    }
}

/// One input through the decoders; returns whether a whole message decoded.
pub fn decode(data: &[u8]) -> bool {
    let limits = DecodeLimits::default();
    let _ = Header::decode(data);
    let decoded = Message::decode_locating_sk(data, &limits);
    if let Ok((m, sk)) = &decoded {
        if let Some(off) = *sk {
            assert!(off <= data.len());
        }
        let again = m.encode().expect("a decoded message re-encodes");
        let d = Message::decode(&again, &limits).expect("re-encoded message decodes");
        assert_eq!(d.payloads, m.payloads);
        assert_eq!(
            Header {
                length: d.header.length,
                ..m.header
            },
            d.header
        );
        negotiate(&m.payloads);
    }
    if let Some((&first, rest)) = data.split_first() {
        if let Ok(p) = decode_payloads(first, rest, &limits) {
            let (f, bytes) = encode_payloads(&p).expect("a decoded chain re-encodes");
            assert_eq!(decode_payloads(f, &bytes, &limits).as_ref(), Ok(&p));
            negotiate(&p);
        }
    }
    decoded.is_ok()
}

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
    let limits = Limits {
        half_open_max: 32,
        cookie_threshold: 16,
        half_open_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
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
                v4: Ipv4Net::new(Ipv4Addr::new(100, 64, 0, 0), 28).ok(),
                v6: None,
                dns: vec![],
            },
        }),
        lifetimes: Lifetimes::default(),
        retransmit: Retransmit::default(),
        limits,
    })
}

/// One input into a fresh responder whose clock starts at `start`; returns how many
/// datagrams it answered.
pub fn responder(data: &[u8], start: Instant) -> usize {
    let mut now = start;
    let mut answered = 0;
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
        while ep.poll_transmit().is_some() {
            answered += 1;
        }
        while ep.poll().is_some() {}
        assert!(ep.half_open() <= 32);
    }
    answered
}

/// The seeds of `target` (`fuzz/seeds/<target>`), by file name.
#[cfg(test)]
pub(crate) fn seeds(target: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut m = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if let (Some(name), Ok(b)) = (p.file_name(), std::fs::read(&p)) {
            m.insert(name.to_string_lossy().into_owned(), b);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decode seeds (real strongSwan IKE_SA_INIT requests) decode and pass the
    /// target's invariants (`smoke_fuzz_decoder` mutates them).
    #[test]
    fn decode_fuzz_target_on_seeds() {
        let seeds = seeds("decode");
        assert!(!seeds.is_empty());
        for (name, s) in &seeds {
            assert!(decode(s), "{name}");
        }
    }

    /// Each responder seed gets an answer (IKE_SA_INIT response or cookie), then every
    /// cut of it runs through the target.
    #[test]
    fn responder_fuzz_target_on_seeds_and_cuts() {
        let seeds = seeds("responder");
        assert!(!seeds.is_empty());
        let now = Instant::now();
        for (name, s) in &seeds {
            assert!(responder(s, now) > 0, "seed {name} unanswered");
            for cut in (0..s.len()).step_by(7) {
                responder(&s[..cut], now);
            }
        }
    }
}
