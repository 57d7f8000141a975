//! Hostile input against `headend run` on 127.0.0.1 high ports (issue 2, "Bad input"):
//! truncated, oversized, wrong-length, unknown-critical-payload, wrong-SPI and replayed
//! messages. The daemon must stay up, answer as RFC 7296 says, and a good peer
//! (`headend peer`) must still connect afterwards. Raw messages are built with the ike
//! crate's codec. No root needed.
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use ike::message::{DecodeLimits, ExchangeType, Header, Message, Notify, NotifyType, Payload};
use ike::negotiate::ike_offer;
use ike::{DhGroup, EncrAlg, IkeProposal, PrfAlg};
use support::headend::{Headend, HeadendConf};
use support::TestCtx;

const PSK: &str = "bad-input-psk-9d1e";

/// A head-end on loopback high ports plus a client socket.
struct Target {
    he: Headend,
    ike: SocketAddr,
    natt: SocketAddr,
    sock: UdpSocket,
    rng: u64,
    ctx: TestCtx,
}

impl Target {
    fn start(name: &str, tweak: impl FnOnce(&mut HeadendConf)) -> Target {
        let ctx = TestCtx::new(name);
        let (port, natt_port) = support::free_udp_port_pair();
        let mut conf = HeadendConf::responder("127.0.0.1", PSK, "10.99.0.0/24");
        conf.port = port;
        conf.natt_port = natt_port;
        conf.local_ts = vec!["10.200.0.0/16".into()];
        tweak(&mut conf);
        let he = Headend::run(&ctx, None, "headend", &conf);
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind client socket");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seed = u64::from(std::process::id()) ^ now ^ (u64::from(port) << 32);
        Target {
            he,
            ike: SocketAddr::from(([127, 0, 0, 1], port)),
            natt: SocketAddr::from(([127, 0, 0, 1], natt_port)),
            sock,
            rng: seed | 1,
            ctx,
        }
    }

    fn random(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                // xorshift64*: test-only randomness for SPIs, nonces and KE values.
                self.rng ^= self.rng >> 12;
                self.rng ^= self.rng << 25;
                self.rng ^= self.rng >> 27;
                (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }

    fn spi(&mut self) -> u64 {
        let b = self.random(8);
        u64::from_be_bytes(b.try_into().unwrap_or([1; 8])) | 1
    }

    /// A well-formed IKE_SA_INIT request (aes256gcm16-prfsha256-x25519) with `extra`
    /// payloads appended.
    fn sa_init(&mut self, spi_i: u64, extra: Vec<Payload>) -> Vec<u8> {
        let proposal = IkeProposal {
            encr: vec![EncrAlg::AesGcm16(256)],
            prf: vec![PrfAlg::HmacSha256],
            integ: vec![],
            dh: vec![DhGroup::Curve25519],
        };
        let mut payloads = vec![
            Payload::Sa(ike_offer(&[proposal], &[])),
            Payload::Ke {
                group: 31,
                data: self.random(32),
            },
            Payload::Nonce(self.random(32)),
        ];
        payloads.extend(extra);
        let msg = Message {
            header: Header::new(spi_i, 0, ExchangeType::IkeSaInit, true, false, 0),
            payloads,
        };
        msg.encode().expect("encode IKE_SA_INIT")
    }

    fn send(&self, to: SocketAddr, bytes: &[u8]) {
        self.sock.send_to(bytes, to).expect("send datagram");
    }

    /// Receives datagrams until one from the IKE port is a response for `spi_i`, or the
    /// timeout passes. Returns every datagram seen, in order.
    fn recv_until(&self, spi_i: u64, timeout: Duration) -> (Vec<Vec<u8>>, Option<Message>) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (seen, None);
            }
            self.sock.set_read_timeout(Some(left)).expect("set timeout");
            let Ok((n, _from)) = self.sock.recv_from(&mut buf) else {
                return (seen, None);
            };
            let d = buf[..n].to_vec();
            if let Ok(m) = Message::decode(&d, &DecodeLimits::default()) {
                if m.header.spi_i == spi_i && m.header.response {
                    return (seen, Some(m));
                }
            }
            seen.push(d);
        }
    }

    /// Sends `bad` to `to`, then a good IKE_SA_INIT as a probe, and returns whatever
    /// arrived before the probe's answer: the daemon handles one socket's datagrams in
    /// order, so anything it sent in reply to `bad` is in there. Panics if the probe gets
    /// no answer (the daemon is down or wedged).
    fn answers_to(&mut self, to: SocketAddr, bad: &[u8]) -> Vec<Vec<u8>> {
        self.send(to, bad);
        let spi = self.spi();
        let probe = self.sa_init(spi, vec![]);
        // Like a real initiator, retransmit the probe if it is lost (a burst of junk may
        // overflow the daemon's socket buffer; UDP drops are fine, a dead daemon is not).
        let mut seen = Vec::new();
        let mut resp = None;
        for _ in 0..4 {
            self.send(self.ike, &probe);
            let (s, r) = self.recv_until(spi, Duration::from_millis(1500));
            seen.extend(s);
            if r.is_some() {
                resp = r;
                break;
            }
        }
        let resp = resp.unwrap_or_else(|| {
            panic!(
                "no answer to a good IKE_SA_INIT after bad input; log {}",
                self.log_path()
            )
        });
        assert_has_sa_init_reply(&resp);
        self.he.assert_running();
        seen
    }

    fn log_path(&self) -> String {
        self.he.proc.log.display().to_string()
    }

    /// Ends a test: the daemon is still up and a good `headend peer` connects.
    fn good_peer_connects(mut self) {
        self.he.assert_running();
        let (p, n) = support::free_udp_port_pair();
        let mut pc = HeadendConf::peer(
            "good-router.example",
            PSK,
            &[(self.ike.to_string(), self.natt.port())],
        );
        pc.listen = vec!["127.0.0.1".into()];
        pc.port = p;
        pc.natt_port = n;
        if let Some(peer) = pc.peer.as_mut() {
            peer.bind = Some("127.0.0.1:0".into());
            peer.remote_ts = vec!["10.200.0.0/16".into()];
        }
        let mut peer = Headend::peer(&self.ctx, None, "good-peer", &pc, &[]);
        support::headend::wait_up(&self.he, "good-router-example", Duration::from_secs(15));
        support::wait_for(
            "good peer prints its 10.99.0.x VIP",
            Duration::from_secs(5),
            || peer.log_text().contains("10.99.0.").then_some(()),
        );
        peer.assert_running();
        self.he.assert_running();
    }
}

/// The probe's answer is a real IKE_SA_INIT response (SA, KE, Nonce), not an error.
fn assert_has_sa_init_reply(m: &Message) {
    assert_eq!(m.header.exchange, ExchangeType::IkeSaInit);
    assert_ne!(m.header.spi_r, 0, "responder SPI set");
    let has = |k: u8| m.payloads.iter().any(|p| p.kind() == k);
    use ike::message::payload_type::{KE, NONCE, SA};
    assert!(
        has(SA) && has(KE) && has(NONCE),
        "IKE_SA_INIT response payloads: {m:?}"
    );
}

/// Error notifies in a datagram the daemon sent, if it decodes as an IKE message.
fn error_notifies(d: &[u8]) -> Option<(Header, Vec<NotifyType>)> {
    let m = Message::decode(d, &DecodeLimits::default()).ok()?;
    let n = m
        .payloads
        .iter()
        .filter_map(|p| match p {
            Payload::Notify(Notify { kind, .. }) if kind.is_error() => Some(*kind),
            _ => None,
        })
        .collect();
    Some((m.header, n))
}

/// RFC 7296 2.21: a malformed request is dropped, or answered with INVALID_SYNTAX (or
/// another error notify) — never with anything that sets up state.
fn assert_only_error_answers(answers: &[Vec<u8>], what: &str) {
    for a in answers {
        let (h, notes) = error_notifies(a)
            .unwrap_or_else(|| panic!("{what}: daemon sent an undecodable datagram {a:02x?}"));
        assert!(h.response, "{what}: daemon sent a request in reply: {h:?}");
        assert!(
            !notes.is_empty(),
            "{what}: a reply must carry an error notify: {h:?}"
        );
    }
}

#[test]
fn truncated_messages_are_dropped_and_daemon_stays_up() {
    let mut t = Target::start("bad_truncated", |_| {});
    let spi = t.spi();
    let good = t.sa_init(spi, vec![]);
    let cuts = [
        0usize,
        1,
        4,
        16,
        27,
        28,
        29,
        31,
        40,
        good.len() / 2,
        good.len() - 1,
    ];
    for cut in cuts {
        let answers = t.answers_to(t.ike, &good[..cut]);
        assert_only_error_answers(&answers, &format!("truncated at {cut}"));
    }
    // The same on the NAT-T port, behind the non-ESP marker (RFC 3948 2.2).
    for cut in [0usize, 3, 10, 28, good.len() - 1] {
        let mut d = vec![0u8; 4];
        d.extend_from_slice(&good[..cut]);
        let answers = t.answers_to(t.natt, &d);
        assert_only_error_answers(&answers, &format!("NAT-T truncated at {cut}"));
    }
    t.good_peer_connects();
}

#[test]
fn oversized_messages_are_dropped() {
    // max_message below the datagram size: the daemon must refuse without answering.
    let mut t = Target::start("bad_oversized", |c| {
        c.ike_extra.push(("max_message".into(), "3000".into()));
    });
    let spi = t.spi();
    let big = t.random(9000);
    let msg = t.sa_init(spi, vec![Payload::VendorId(big)]);
    assert!(msg.len() > 9000);
    let answers = t.answers_to(t.ike, &msg);
    assert!(
        answers.iter().all(|a| error_notifies(a)
            .map(|(h, _)| h.spi_i != spi)
            .unwrap_or(true)),
        "no IKE_SA_INIT reply to an oversized request"
    );
    // The largest UDP datagram, well-formed header, junk payload.
    let spi2 = t.spi();
    let mut huge = t.sa_init(spi2, vec![Payload::VendorId(vec![0x41; 65_000])]);
    huge.truncate(65_507);
    let answers = t.answers_to(t.ike, &huge);
    assert_only_error_answers(&answers, "65507-byte datagram");
    t.good_peer_connects();
}

#[test]
fn wrong_length_fields_are_rejected() {
    let mut t = Target::start("bad_wrong_length", |_| {});
    let spi = t.spi();
    let good = t.sa_init(spi, vec![]);
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    // Header length larger / smaller than the datagram (RFC 7296 3.1).
    for delta in [1i64, 100, -1, -10] {
        let mut d = good.clone();
        let len = (d.len() as i64 + delta) as u32;
        d[24..28].copy_from_slice(&len.to_be_bytes());
        cases.push((format!("header length {delta:+}"), d));
    }
    let mut d = good.clone();
    d[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
    cases.push(("header length 0xffffffff".into(), d));
    // First payload (SA) length: beyond the message, zero, below the generic header.
    for sa_len in [0xffffu16, 0, 3, 4] {
        let mut d = good.clone();
        d[30..32].copy_from_slice(&sa_len.to_be_bytes());
        cases.push((format!("SA payload length {sa_len}"), d));
    }
    // Trailing garbage after the last payload, covered by the header length.
    let mut d = good.clone();
    d.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let len = d.len() as u32;
    d[24..28].copy_from_slice(&len.to_be_bytes());
    cases.push(("trailing bytes".into(), d));
    // Unknown major version (RFC 7296 2.5: INVALID_MAJOR_VERSION or drop).
    let mut d = good.clone();
    d[17] = 0x30;
    cases.push(("major version 3".into(), d));
    for (what, bytes) in cases {
        let answers = t.answers_to(t.ike, &bytes);
        assert_only_error_answers(&answers, &what);
    }
    t.good_peer_connects();
}

#[test]
fn unknown_critical_payload_gets_unsupported_critical_payload() {
    let mut t = Target::start("bad_critical", |_| {});
    // RFC 7296 2.5: a request with an unrecognized critical payload is rejected and the
    // response carries UNSUPPORTED_CRITICAL_PAYLOAD with the payload type as data.
    let spi = t.spi();
    let msg = t.sa_init(
        spi,
        vec![Payload::Unknown {
            kind: 201,
            critical: true,
            body: vec![7; 12],
        }],
    );
    t.send(t.ike, &msg);
    let (_, resp) = t.recv_until(spi, Duration::from_secs(5));
    let resp = resp.unwrap_or_else(|| {
        panic!(
            "no UNSUPPORTED_CRITICAL_PAYLOAD answer; log {}",
            t.log_path()
        )
    });
    let n = resp
        .notify(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD)
        .unwrap_or_else(|| panic!("response lacks UNSUPPORTED_CRITICAL_PAYLOAD: {resp:?}"));
    assert_eq!(n.data, vec![201], "notify data names the payload type");
    assert!(
        !resp
            .payloads
            .iter()
            .any(|p| matches!(p, Payload::Sa(_) | Payload::Ke { .. })),
        "the request is rejected, not answered with an SA: {resp:?}"
    );
    // The same payload without the critical bit is skipped (RFC 7296 3.2).
    let spi = t.spi();
    let msg = t.sa_init(
        spi,
        vec![Payload::Unknown {
            kind: 201,
            critical: false,
            body: vec![7; 12],
        }],
    );
    t.send(t.ike, &msg);
    let (_, resp) = t.recv_until(spi, Duration::from_secs(5));
    assert_has_sa_init_reply(&resp.expect("answer to a non-critical unknown payload"));
    t.he.assert_running();
    t.good_peer_connects();
}

#[test]
fn unknown_spi_gets_invalid_ike_spi_or_nothing() {
    let mut t = Target::start("bad_wrong_spi", |_| {});
    // RFC 7296 2.21.4: a request outside any known IKE SA may be answered, unprotected,
    // with INVALID_IKE_SPI, the same SPIs and message ID; a response must not be answered.
    for (exchange, response, mid) in [
        (ExchangeType::IkeAuth, false, 1u32),
        (ExchangeType::Informational, false, 7),
        (ExchangeType::CreateChildSa, false, 3),
        (ExchangeType::Informational, true, 2),
        (ExchangeType::IkeSaInit, true, 0),
    ] {
        let (spi_i, spi_r) = (t.spi(), t.spi());
        let body = t.random(80);
        let msg = Message {
            header: Header::new(spi_i, spi_r, exchange, true, response, mid),
            payloads: vec![Payload::Sk {
                first_inner: 35,
                body,
            }],
        };
        let bytes = msg.encode().expect("encode");
        let answers = t.answers_to(t.ike, &bytes);
        for a in &answers {
            let (h, notes) = error_notifies(a).expect("decodable answer");
            assert!(
                !response,
                "{exchange:?} response with unknown SPI must not be answered"
            );
            assert_eq!(
                (h.spi_i, h.spi_r, h.message_id),
                (spi_i, spi_r, mid),
                "copied SPIs/MID"
            );
            assert!(h.response);
            assert_eq!(notes, vec![NotifyType::INVALID_IKE_SPI], "{exchange:?}");
        }
    }
    // ESP-in-UDP with an unknown SPI on the NAT-T port: dropped (RFC 4303 3.4.2).
    let mut esp = vec![0x12, 0x34, 0x56, 0x78, 0, 0, 0, 1];
    esp.extend(t.random(64));
    let answers = t.answers_to(t.natt, &esp);
    assert!(
        answers.is_empty(),
        "no answer to ESP with an unknown SPI: {answers:02x?}"
    );
    // A NAT keepalive (RFC 3948 2.3) is ignored.
    let answers = t.answers_to(t.natt, &[0xff]);
    assert!(answers.is_empty());
    t.good_peer_connects();
}

#[test]
fn replayed_request_gets_the_cached_response() {
    let mut t = Target::start("bad_replay", |_| {});
    // RFC 7296 2.1: a retransmitted request is answered with the same response, not
    // processed again (no new responder SPI, no new KE).
    let spi = t.spi();
    let msg = t.sa_init(spi, vec![]);
    t.send(t.ike, &msg);
    let (_, first) = t.recv_until(spi, Duration::from_secs(5));
    let first = first.expect("first answer");
    let mut replies = vec![first.encode().expect("re-encode")];
    for _ in 0..3 {
        t.send(t.ike, &msg);
        let (_, again) = t.recv_until(spi, Duration::from_secs(5));
        let again = again.expect("answer to the replay");
        assert_eq!(again.header.spi_r, first.header.spi_r, "same responder SPI");
        replies.push(again.encode().expect("re-encode"));
    }
    assert!(
        replies.windows(2).all(|w| w[0] == w[1]),
        "identical cached response"
    );
    t.he.assert_running();
    t.good_peer_connects();
}

#[test]
fn random_garbage_never_kills_the_daemon() {
    let mut t = Target::start("bad_garbage", |_| {});
    let spi = t.spi();
    let good = t.sa_init(spi, vec![]);
    for i in 0..300usize {
        // Mutations of a real message: flip bytes, then plain random datagrams.
        let d = if i % 2 == 0 {
            let mut d = good.clone();
            for _ in 0..(1 + i % 7) {
                let r = t.random(3);
                let pos = (usize::from(r[0]) << 8 | usize::from(r[1])) % d.len();
                d[pos] ^= r[2] | 1;
            }
            d
        } else {
            let len = 1 + usize::from(t.random(1)[0]) * 3;
            t.random(len)
        };
        let to = if i % 3 == 0 { t.natt } else { t.ike };
        t.send(to, &d);
    }
    // Still answering; then a good peer connects.
    let _ = t.answers_to(t.ike, &[]);
    t.good_peer_connects();
}

/// A real initiator (the ike crate's Endpoint) over a plain UDP socket, recording every
/// datagram, so an encrypted request can be replayed byte for byte.
mod replay {
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use ike::endpoint::Endpoint;
    use ike::message::{ExchangeType, Header};
    use ike::{
        AuthConfig, DhGroup, EncrAlg, EndpointConfig, EspProposal, Event, Identity, IkeProposal,
        InitiatorConfig, Lifetimes, Limits, PrfAlg, PskStore, Retransmit, SocketKind,
    };

    /// Establishes one IKE SA as `id`; returns (IKE_AUTH request, IKE_AUTH response).
    pub fn establish(
        sock: &UdpSocket,
        target: SocketAddr,
        natt: u16,
        id: &str,
        psk: &str,
    ) -> (Vec<u8>, Vec<u8>) {
        let local = sock.local_addr().expect("local addr");
        let cfg = Arc::new(EndpointConfig {
            local_natt_port: local.port(),
            responder: None,
            lifetimes: Lifetimes {
                dpd_delay: None,
                ..Lifetimes::default()
            },
            retransmit: Retransmit::default(),
            limits: Limits::default(),
        });
        let ic = Arc::new(InitiatorConfig {
            local_id: Identity::Fqdn(id.into()),
            remote_id: None,
            auth: AuthConfig::Psk(PskStore {
                by_identity: Default::default(),
                default: Some(psk.as_bytes().to_vec()),
            }),
            ike_proposals: vec![IkeProposal {
                encr: vec![EncrAlg::AesGcm16(256)],
                prf: vec![PrfAlg::HmacSha256],
                integ: vec![],
                dh: vec![DhGroup::Curve25519],
            }],
            esp_proposals: vec![EspProposal {
                encr: vec![EncrAlg::AesGcm16(256)],
                integ: vec![],
                dh: vec![],
                esn: false,
            }],
            request_vip4: true,
            request_vip6: false,
            local_ts: vec![],
            remote_ts: vec![],
            initial_contact: true,
            remote_natt_port: natt,
        });
        let mut ep = Endpoint::new(cfg, [7u8; 32]);
        ep.initiate(Instant::now(), local, target, ic)
            .expect("initiate");
        let (mut auth_req, mut auth_resp) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 65536];
        loop {
            while let Some(t) = ep.poll_transmit() {
                assert_eq!(
                    t.socket,
                    SocketKind::Ike,
                    "no NAT on loopback: stays on the IKE port"
                );
                if let Ok(h) = Header::decode(&t.payload) {
                    if h.exchange == ExchangeType::IkeAuth && !h.response {
                        auth_req = Some(t.payload.clone());
                    }
                }
                sock.send_to(&t.payload, t.remote).expect("send");
            }
            while let Some(ev) = ep.poll() {
                match ev {
                    Event::IkeSaEstablished { .. } => {
                        return (
                            auth_req.expect("IKE_AUTH request sent"),
                            auth_resp.expect("IKE_AUTH response received"),
                        );
                    }
                    Event::NegotiationFailed { reason, .. } => {
                        panic!("negotiation failed: {reason}")
                    }
                    _ => {}
                }
            }
            let now = Instant::now();
            assert!(now < deadline, "IKE SA not established within 10 s");
            let wait = ep
                .poll_timeout()
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(Duration::from_millis(200))
                .clamp(Duration::from_millis(1), Duration::from_millis(200));
            sock.set_read_timeout(Some(wait)).expect("timeout");
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let d = &buf[..n];
                    if let Ok(h) = Header::decode(d) {
                        if h.exchange == ExchangeType::IkeAuth && h.response {
                            auth_resp = Some(d.to_vec());
                        }
                    }
                    ep.handle(Instant::now(), SocketKind::Ike, local, from, d);
                }
                Err(_) => ep.handle_timeout(Instant::now()),
            }
        }
    }
}

#[test]
fn replayed_ike_auth_gets_the_cached_response_and_no_second_sa() {
    let t = Target::start("bad_replay_auth", |_| {});
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (req, resp) = replay::establish(&sock, t.ike, t.natt.port(), "replay-router.example", PSK);
    support::headend::wait_up(&t.he, "replay-router-example", Duration::from_secs(5));
    // RFC 7296 2.1: the retransmitted (here: replayed) IKE_AUTH request is answered with
    // the cached response, byte for byte, and processed no second time.
    for _ in 0..3 {
        sock.send_to(&req, t.ike).expect("replay");
        sock.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut buf = vec![0u8; 65536];
        let (n, _) = sock
            .recv_from(&mut buf)
            .expect("answer to the replayed IKE_AUTH");
        assert_eq!(&buf[..n], &resp[..], "cached IKE_AUTH response replayed");
    }
    // A tampered copy (one ciphertext bit flipped) fails its ICV and is dropped silently
    // (RFC 7296 2.21.2), without disturbing the SA.
    let mut bad = req.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    sock.send_to(&bad, t.ike).expect("send tampered");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = vec![0u8; 65536];
    if let Ok((n, _)) = sock.recv_from(&mut buf) {
        assert_eq!(
            &buf[..n],
            &resp[..],
            "only the cached response may come back"
        );
    }
    let log = t.he.log_text();
    let ups = support::headend::lines_with(&log, "IKE SA established", "replay-router-example");
    assert_eq!(ups.len(), 1, "one tunnel, not one per replay:\n{log}");
    t.good_peer_connects();
}
