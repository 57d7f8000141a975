//! Feed arbitrary bytes to the DNS query handler, as received over UDP and over TCP.
//! Invariants: no panic; a response, when sent, is at least a header, echoes the ID,
//! has QR set, and over UDP fits 1232 octets.
//!
//! The handler has a TSIG key `k` and a secondary at 127.0.0.1, so signed transfer
//! requests (seeds in `fuzz/seeds/query/`: AXFR, IXFR, SOA and NOTIFY signed with the key
//! below) reach TSIG verification and the transfer code.
//!
//! `cargo +nightly fuzz run query fuzz/corpus/query fuzz/seeds/query` (from ddns/).
#![no_main]

use std::sync::OnceLock;

use ddns::{DnsConfig, DnsHandler, GatewayId, NsConfig, PoolMember, TunnelKey, Zone, ZoneConfig};
use libfuzzer_sys::fuzz_target;

fn handler() -> &'static (DnsHandler, std::sync::Arc<ddns::Shard>) {
    static H: OnceLock<(DnsHandler, std::sync::Arc<ddns::Shard>)> = OnceLock::new();
    H.get_or_init(|| {
        let cfg = DnsConfig {
            ns: vec![NsConfig {
                name: "ns1".into(),
                addrs: vec!["192.0.2.1".parse().unwrap()],
            }],
            tsig_key: vec![ddns::TsigKeyConfig {
                name: "k".into(),
                algorithm: ddns::TsigAlgorithmName::HmacSha256,
                secret: ddns::TsigSecret(b"fuzz-corpus-secret-32-octets!!!!".to_vec()),
            }],
            secondary: vec![ddns::SecondaryConfig {
                address: ddns::SecondaryAddr("127.0.0.1:53".parse().unwrap()),
                tsig_key: "k".into(),
                notify: false,
            }],
            ..DnsConfig::default()
        };
        let transfer = std::sync::Arc::new(ddns::Transfer::new(&cfg).unwrap());
        let zone = Zone::new(ZoneConfig::new(&cfg, "vpn.example.com").unwrap());
        zone.set_synced(true);
        for i in 0..50u8 {
            zone.upsert(
                TunnelKey::new("m", i.to_string()),
                GatewayId::from_identity(format!("gw-{i}")).0,
                (0..i).map(|j| std::net::IpAddr::from([10, 0, i, j])).collect(),
                u64::from(i) << 16,
            );
        }
        zone.set_pool(vec![PoolMember {
            addr: "192.0.2.9".parse().unwrap(),
            up: true,
            load: 1,
            capacity: 2,
        }]);
        let h = DnsHandler::new(zone, 1232).with_transfer(transfer);
        let shard = h.counters().shard();
        (h, shard)
    })
}

fuzz_target!(|data: &[u8]| {
    let (h, shard) = handler();
    let src = "127.0.0.1:5353".parse().unwrap();
    let mut out = Vec::new();
    for tcp in [false, true] {
        if h.handle_bytes(data, src, tcp, shard, &mut out) {
            assert!(out.len() >= 12);
            assert_eq!(out[..2], data[..2]);
            assert!(out[2] & 0x80 != 0);
            if !tcp {
                assert!(out.len() <= 1232);
            }
        }
    }
});
