//! Fuzz target: the ESP receive path (RFC 4303 3.4) of every transform, 32-bit and ESN,
//! on arbitrary and on authentic-then-mutated packets, and the inbound selector check on
//! what decrypts. Input format and invariants: `ike::esp::fuzz::esp_inbound`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ike::esp::fuzz::esp_inbound(data);
});
