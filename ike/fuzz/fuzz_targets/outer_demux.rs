//! Fuzz target: the data plane's outer receive demultiplexing: GRO receives split into
//! datagrams, NAT keepalives, IKE behind the non-ESP marker and ESP by SPI told apart
//! (RFC 3948 2.1-2.3), the IPv4 header of raw sockets stripped by its IHL. Input format
//! and invariants: `ike::esp::fuzz::outer_demux`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ike::esp::fuzz::outer_demux(data);
});
