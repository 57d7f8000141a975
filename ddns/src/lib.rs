//! Gateway IDs and the embedded authoritative DNS server (seed 003, chapter 4).
#![forbid(unsafe_code)]
