//! Fuzz target: the data plane's inner-packet parsers: Next Header from the version,
//! the selector checks (RFC 4301 5.1, 5.2) with the fragment table and the hold for early
//! fragments (RFC 4301 7.4), the IPv4 fragmenter (RFC 4301 8.1), the ICMP destination
//! unreachable builder and the receive coalescer. Input format and invariants: `ike::esp::fuzz::inner_packet`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ike::esp::fuzz::inner_packet(data, std::time::Instant::now());
});
