//! Fuzz target: arbitrary datagrams into a responder `Endpoint` (RFC 7296 2.21: hostile
//! input is dropped or answered, never panics, never grows state without bound).
//! Input format and invariants: `ike::fuzz::responder`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ike::fuzz::responder(data, std::time::Instant::now());
});
