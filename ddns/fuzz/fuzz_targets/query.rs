//! Feed arbitrary bytes to the DNS query handler, as received over UDP and over TCP.
//! Handler, seeds (`fuzz/seeds/query/`: TSIG-signed AXFR, IXFR, SOA and NOTIFY) and
//! invariants: `ddns::fuzz::query`.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz query fuzz/corpus/query fuzz/seeds/query`
//! (from ddns/).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ddns::fuzz::query(data);
});
