//! Feed arbitrary bytes to the DNS-over-TCP connection loop (two-octet length framing,
//! RFC 1035 4.2.2 / RFC 7766), zone transfers included. Seeds: `fuzz/seeds/tcp/`.
//! Invariants: `ddns::fuzz::tcp`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ddns::fuzz::tcp(data);
});
