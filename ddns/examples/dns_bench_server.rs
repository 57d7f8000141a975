//! Benchmark server: the ddns authoritative server alone (no daemon), loaded with N
//! gateway records, plus the same zone as a zone file and a dnsperf query file so NSD
//! and Knot can serve identical data.
//!
//! ```text
//! cargo run --release -p ddns --example dns_bench_server -- \
//!     --listen 127.0.0.1 --port 5300 --records 10000 --sockets 1 \
//!     --zone-file /tmp/bench.zone --query-file /tmp/bench.queries
//! ```
//! Runs until killed (or `--seconds N`). Prints `listening <addr>` when ready.
//! `--xfr-secret <base64>`: TSIG key `bench-key` (hmac-sha256) and `--listen` as a
//! secondary, so `dig -y hmac-sha256:bench-key:<base64> AXFR` transfers the zone
//! (`ddns/benches/axfr_compare.sh`).

use std::net::IpAddr;
use std::time::Duration;

use ddns::{DnsConfig, DnsServer, GatewayId, NsConfig, TunnelKey, Zone, ZoneConfig};

const DOMAIN: &str = "bench.example";

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn record_ip(i: u32) -> IpAddr {
    IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let listen: IpAddr = arg(&args, "--listen", IpAddr::from([127, 0, 0, 1]));
    let port: u16 = arg(&args, "--port", 5300);
    let records: u32 = arg(&args, "--records", 10_000);
    let sockets: usize = arg(&args, "--sockets", 1);
    let seconds: u64 = arg(&args, "--seconds", 0);
    let zone_file: String = arg(&args, "--zone-file", String::new());
    let query_file: String = arg(&args, "--query-file", String::new());
    let xfr_secret: String = arg(&args, "--xfr-secret", String::new());

    let cfg = DnsConfig {
        listen: vec![listen],
        port,
        domain: Some(DOMAIN.into()),
        ns: vec![NsConfig {
            name: "ns1".into(),
            addrs: vec![listen],
        }],
        udp_sockets: sockets,
        ..DnsConfig::default()
    };
    let mut cfg = cfg;
    if !xfr_secret.is_empty() {
        cfg.tsig_key.push(ddns::TsigKeyConfig {
            name: "bench-key".into(),
            algorithm: ddns::TsigAlgorithmName::HmacSha256,
            secret: ddns::TsigSecret(data_encoding::BASE64.decode(xfr_secret.as_bytes())?),
        });
        cfg.secondary.push(ddns::SecondaryConfig {
            address: ddns::SecondaryAddr((listen, 53).into()),
            tsig_key: "bench-key".into(),
            notify: false,
        });
    }
    let zone = Zone::new(ZoneConfig::new(&cfg, DOMAIN)?);
    let base_stamp: u64 = 1_790_000_000_000 << 16;
    zone.apply((0..records).map(|i| ddns::Change::Upsert {
        key: TunnelKey::new("bench", i.to_string()),
        gateway_id: GatewayId::from_identity(format!("gw-{i:05}")).0,
        addrs: vec![record_ip(i)],
        stamp: base_stamp + u64::from(i),
    }));
    zone.set_synced(true);

    if !zone_file.is_empty() {
        let mut z = String::new();
        z.push_str(&format!("$ORIGIN {DOMAIN}.\n$TTL 5\n"));
        z.push_str(&format!(
            "@ 5 IN SOA ns1.{DOMAIN}. hostmaster.{DOMAIN}. {} 3600 600 86400 5\n",
            zone.serial()
        ));
        z.push_str(&format!(
            "@ 3600 IN NS ns1.{DOMAIN}.\nns1 3600 IN A {listen}\n"
        ));
        for i in 0..records {
            z.push_str(&format!("gw-{i:05} 5 IN A {}\n", record_ip(i)));
        }
        std::fs::write(&zone_file, z)?;
    }
    if !query_file.is_empty() {
        let mut q = String::new();
        for i in 0..records {
            q.push_str(&format!("gw-{i:05}.{DOMAIN} A\n"));
        }
        std::fs::write(&query_file, q)?;
    }

    let server = DnsServer::start(&cfg, zone).await?;
    println!("listening {}", server.udp_addrs()[0]);
    if seconds > 0 {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
    } else {
        std::future::pending::<()>().await;
    }
    let c = server.counters().values();
    eprintln!("counters: {:?} udp={} tcp={}", c.by_label(), c.udp, c.tcp);
    server.shutdown().await;
    Ok(())
}
