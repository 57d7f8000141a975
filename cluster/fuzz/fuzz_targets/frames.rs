//! Fuzz target: what a TCP connection to the join port (unauthenticated: frames, then
//! SPAKE2) or the replication port (link hello, then messages into the replication
//! core) may carry. Input format and invariants: `cluster::fuzz::frames`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cluster::fuzz::frames(data);
});
