//! Fuzz target: the data plane's inner-packet parsers: Next Header from the version,
//! the selector checks (RFC 4301 5.1, 5.2), the ICMP destination unreachable builder and
//! the receive coalescer. Input format and invariants: `ike::esp::fuzz::inner_packet`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ike::esp::fuzz::inner_packet(data, std::time::Instant::now());
});
