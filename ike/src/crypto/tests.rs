//! Known-answer and round-trip tests for key derivation, AUTH, NAT-D and the SK payload.
