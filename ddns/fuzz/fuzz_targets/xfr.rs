//! Feed arbitrary DNS-over-TCP messages, each signed by the harness with the secondary's
//! TSIG key at the current time, so zone transfer requests (AXFR, IXFR) get past TSIG
//! into the transfer code and its signed multi-message answers. Seeds: `fuzz/seeds/xfr/`.
//! Invariants: `ddns::fuzz::xfr`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ddns::fuzz::xfr(data);
});
