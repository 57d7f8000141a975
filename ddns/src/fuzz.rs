//! Bodies of the DNS fuzz targets (`ddns/fuzz/`), shared with the seed tests so CI runs
//! exactly what the fuzzer runs. Not an API (hidden from the documentation).
//!
//! Both targets use one handler ([`handler`]): a zone with 50 tunnels and a pool, TSIG
//! key `k` (the seeds in `fuzz/seeds/query` are signed with it) and a secondary at
//! 127.0.0.1 allowed transfers with that key.
//! * [`query`]: one message through [`DnsHandler::handle_bytes`], as over UDP and TCP.
//! * [`tcp`]: a byte stream as one TCP connection delivers it (RFC 1035 4.2.2 two-octet
//!   length framing, RFC 7766), through the connection loop of [`crate::tcp`], zone
//!   transfers included (several responses per request).
//! * [`xfr`]: the same with every message signed with `k` now, so transfer requests
//!   reach the AXFR/IXFR code past TSIG.
//!
//! Invariants: nothing panics; every response is at least a header, has QR set, echoes
//! a request's ID, and fits 1232 octets over UDP; over TCP the output is whole frames,
//! each a parsable DNS message.
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::config::{
    DnsConfig, NsConfig, SecondaryAddr, SecondaryConfig, TsigAlgorithmName, TsigKeyConfig,
    TsigSecret,
};
use crate::{DnsHandler, GatewayId, PoolMember, Shard, Transfer, TunnelKey, Zone, ZoneConfig};

/// The TSIG secret of key `k` the seeds are signed with.
pub const SECRET: &[u8; 32] = b"fuzz-corpus-secret-32-octets!!!!";

fn src() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5353))
}

fn key_config() -> TsigKeyConfig {
    TsigKeyConfig {
        name: "k".into(),
        algorithm: TsigAlgorithmName::HmacSha256,
        secret: TsigSecret(SECRET.to_vec()),
    }
}

/// The handler of the targets and of the seed tests, made once.
pub fn handler() -> &'static (DnsHandler, Arc<Shard>) {
    static H: OnceLock<(DnsHandler, Arc<Shard>)> = OnceLock::new();
    H.get_or_init(|| {
        let cfg = DnsConfig {
            ns: vec![NsConfig {
                name: "ns1".into(),
                addrs: vec![[192, 0, 2, 1].into()],
            }],
            tsig_key: vec![key_config()],
            secondary: vec![SecondaryConfig {
                address: SecondaryAddr(SocketAddr::from(([127, 0, 0, 1], 53))),
                tsig_key: "k".into(),
                notify: false,
            }],
            ..DnsConfig::default()
        };
        let (transfer, zone_cfg) = match (
            Transfer::new(&cfg),
            ZoneConfig::new(&cfg, "vpn.example.com"),
        ) {
            (Ok(t), Ok(z)) => (Arc::new(t), z),
            _ => panic!("fuzz handler configuration refused"),
        };
        let zone = Zone::new(zone_cfg);
        zone.set_synced(true);
        for i in 0..50u8 {
            zone.upsert(
                TunnelKey::new("m", i.to_string()),
                GatewayId::from_identity(format!("gw-{i}")).0,
                (0..i)
                    .map(|j| std::net::IpAddr::from([10, 0, i, j]))
                    .collect(),
                u64::from(i) << 16,
            );
        }
        zone.set_pool(vec![PoolMember {
            addr: [192, 0, 2, 9].into(),
            up: true,
            load: 1,
            capacity: 2,
        }]);
        let h = DnsHandler::new(zone, 1232).with_transfer(transfer);
        let shard = h.counters().shard();
        (h, shard)
    })
}

/// One message, as over UDP and over TCP; returns how many times it was answered.
pub fn query(data: &[u8]) -> usize {
    let (h, shard) = handler();
    let mut out = Vec::new();
    let mut answered = 0;
    for tcp in [false, true] {
        if h.handle_bytes(data, src(), tcp, shard, &mut out) {
            answered += 1;
            assert!(out.len() >= 12);
            assert_eq!(out[..2], data[..2]);
            assert!(out[2] & 0x80 != 0);
            if !tcp {
                assert!(out.len() <= 1232);
            }
        }
    }
    answered
}

/// The length-prefixed frames at the start of `stream` (a cut last frame left out).
fn frames(mut stream: &[u8]) -> Vec<&[u8]> {
    let mut v = Vec::new();
    while let [a, b, rest @ ..] = stream {
        let n = usize::from(u16::from_be_bytes([*a, *b]));
        let Some(body) = rest.get(..n) else { break };
        v.push(body);
        stream = &rest[n..];
    }
    v
}

/// One TCP connection's bytes; returns how many responses were written.
pub fn tcp(data: &[u8]) -> usize {
    serve(data).len()
}

/// Like [`tcp`], but every message is first signed with key `k` at the current time
/// (RFC 8945), as the configured secondary would: requests get past TSIG to the zone
/// transfer code (AXFR, IXFR with the client's SOA serial, RFC 1995) and its signed
/// multi-message answers. Returns how many answer records the responses carried.
pub fn xfr(data: &[u8]) -> usize {
    let key = match crate::tsig::TsigKey::new(&key_config()) {
        Ok(k) => k,
        Err(e) => panic!("fuzz key: {e}"),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut stream = Vec::new();
    for msg in frames(data) {
        let mut signed = msg.to_vec();
        if let Some((rr, _)) = crate::tsig::sign(&key, msg, None, false, now, None, Vec::new()) {
            let mut with = signed.clone();
            if crate::tsig::append(&mut with, &rr).is_some() && with.len() <= usize::from(u16::MAX)
            {
                signed = with;
            }
        }
        stream.extend_from_slice(&(signed.len() as u16).to_be_bytes());
        stream.extend_from_slice(&signed);
    }
    serve(&stream).iter().map(|m| m.answers.len()).sum()
}

/// Runs one connection; checks and parses what it wrote.
fn serve(data: &[u8]) -> Vec<hickory_proto::op::Message> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("tokio runtime: {e}"),
        }
    });
    let (h, shard) = handler();
    let idle = Duration::from_secs(5);
    let served = rt.block_on(crate::tcp::serve_stream(
        data,
        Vec::new(),
        src(),
        h,
        shard,
        idle,
    ));
    let Some(out) = served else {
        panic!("a response still being written after the connection ended")
    };
    let ids: BTreeSet<&[u8]> = frames(data).iter().filter_map(|m| m.get(..2)).collect();
    let responses = frames(&out);
    assert_eq!(
        responses.iter().map(|r| r.len() + 2).sum::<usize>(),
        out.len(),
        "whole frames only"
    );
    responses
        .iter()
        .map(|r| {
            assert!(r.len() >= 12 && r[2] & 0x80 != 0, "a response: {r:02x?}");
            assert!(ids.contains(&r[..2]), "echoes a request's ID");
            match hickory_proto::op::Message::from_vec(r) {
                Ok(m) => m,
                Err(e) => panic!("{e}: response {r:02x?}"),
            }
        })
        .collect()
}

/// Deterministic mutations of `seeds` (byte changes, bit flips, cuts, compression
/// pointers), a short stand-in for the fuzzer in every `cargo test`.
#[cfg(test)]
pub(crate) fn mutations(seeds: &[Vec<u8>], rounds: u32, mut f: impl FnMut(usize, &[u8])) {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    };
    for i in 0..rounds as usize {
        let mut msg = seeds[(next() % seeds.len() as u64) as usize].clone();
        for _ in 0..1 + next() % 6 {
            if msg.is_empty() {
                break;
            }
            let pos = (next() % msg.len() as u64) as usize;
            match next() % 5 {
                0 => msg[pos] = next() as u8,
                1 => msg[pos] ^= 1 << (next() % 8),
                2 => msg.truncate(pos),
                3 => msg.insert(pos, 0xc0),
                _ => msg[pos] = 0xff,
            }
        }
        f(i, &msg);
    }
}

/// The seeds of `target` (`fuzz/seeds/<target>`), by file name.
#[cfg(test)]
pub(crate) fn seeds(target: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut m = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if let (Some(name), Ok(b)) = (p.file_name(), std::fs::read(&p)) {
            m.insert(name.to_string_lossy().into_owned(), b);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message of the TCP seeds is answered: plain queries pipelined, TSIG-signed
    /// transfers through the transfer path, unsigned ones refused; then mutations.
    #[test]
    fn tcp_fuzz_target_on_seeds_and_mutations() {
        let seeds = seeds("tcp");
        assert!(seeds.len() >= 4);
        for (name, s) in &seeds {
            assert_eq!(tcp(s), frames(s).len(), "{name}");
        }
        let seeds: Vec<Vec<u8>> = seeds.into_values().collect();
        mutations(&seeds, 5_000, |_, m| {
            tcp(m);
        });
    }

    /// Signed by the harness, the transfer seeds are served: the AXFR is the whole zone
    /// (50 tunnels, 1225 addresses), the IXFR from an old serial too (no journal that far
    /// back); then mutations.
    #[test]
    fn xfr_fuzz_target_on_seeds_and_mutations() {
        let seeds = seeds("xfr");
        assert!(xfr(&seeds["axfr"]) > 1225);
        assert!(xfr(&seeds["ixfr-old-serial"]) > 1225);
        for s in seeds.values() {
            xfr(s);
        }
        let seeds: Vec<Vec<u8>> = seeds.into_values().collect();
        mutations(&seeds, 2_000, |_, m| {
            xfr(m);
        });
    }
}
