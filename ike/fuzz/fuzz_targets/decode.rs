//! Fuzz target: the IKEv2 message decoder (RFC 7296 3) and the inner-chain decoder used
//! after SK decryption (3.14), then proposal selection (2.7) and TS narrowing (2.9) on
//! whatever decoded. Invariants: `ike::fuzz::decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ike::fuzz::decode(data);
});
