//! Fuzz target: the IKEv2 message decoder (RFC 7296 3) and the inner-chain decoder used
//! after SK decryption (3.14). Whatever decodes must re-encode and decode to the same value
//! (the header length aside, since transforms with unknown attributes are dropped).
#![no_main]

use ike::message::{decode_payloads, encode_payloads, DecodeLimits, Header, Message};
use libfuzzer_sys::fuzz_target;

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
    }
    if let Some((&first, rest)) = data.split_first() {
        if let Ok(p) = decode_payloads(first, rest, &limits) {
            let (f, bytes) = encode_payloads(&p).expect("a decoded chain re-encodes");
            assert_eq!(decode_payloads(f, &bytes, &limits).as_ref(), Ok(&p));
        }
    }
});
