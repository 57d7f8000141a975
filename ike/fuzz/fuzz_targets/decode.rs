//! Fuzz target: the IKEv2 message decoder (RFC 7296 3) and the inner-chain decoder used
//! after SK decryption (3.14), then proposal selection (2.7) and TS narrowing (2.9) on
//! whatever decoded. Whatever decodes must re-encode and decode to the same value (the
//! header length aside, since transforms with unknown attributes are dropped).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use ike::message::{decode_payloads, encode_payloads, DecodeLimits, Header, Message, Payload};
use ike::negotiate::{check_esp_reply, check_ike_reply, narrow, select_esp, select_ike, ts_any};
use ike::{DhGroup, EncrAlg, EspProposal, IkeProposal, IntegAlg, PrfAlg};
use libfuzzer_sys::fuzz_target;

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

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits::default();
    let _ = Header::decode(data);
    if let Ok((m, sk)) = Message::decode_locating_sk(data, &limits) {
        if let Some(off) = sk {
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
});
