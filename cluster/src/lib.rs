//! The ipsec-ddns cluster: replication of gateway-ID records between members.
#![forbid(unsafe_code)]
