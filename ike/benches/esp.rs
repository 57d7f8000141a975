//! Per-packet ESP encapsulate/decapsulate cost by packet size (criterion).
//!
//! Measured in the benchmark thread's CPU time (CLOCK_THREAD_CPUTIME_ID via `cpu-time`),
//! not wall time, so that figures from a shared machine mean the cost of the work and
//! not the share of the CPU the thread got.
//! Run: CARGO_TARGET_DIR=/work/targets/esp cargo bench -p ike --bench esp
use std::time::Duration;

use cpu_time::ThreadTime;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ike::esp::{InboundSa, Lifetimes, NextHeader, OutboundSa, MAX_HEADROOM, MAX_TAILROOM};
use ike::{EncrAlg, EspKeys, IntegAlg, Spi};
use zeroize::Zeroizing;

fn suite(name: &str) -> EspKeys {
    let (encr, klen, integ, ilen) = match name {
        "aes256gcm" => (EncrAlg::AesGcm16(256), 36, None, 0),
        "aes128gcm" => (EncrAlg::AesGcm16(128), 20, None, 0),
        "chacha20poly1305" => (EncrAlg::ChaCha20Poly1305, 36, None, 0),
        _ => (EncrAlg::AesCbc(256), 32, Some(IntegAlg::HmacSha256_128), 32),
    };
    EspKeys {
        spi: Spi(0x1234_5678),
        encr,
        encr_key: Zeroizing::new((0..klen).map(|i| i as u8).collect()),
        integ,
        integ_key: Zeroizing::new((0..ilen).map(|i| (i * 3) as u8).collect()),
        esn: true,
    }
}

/// Thread CPU time as a criterion measurement (formatted like wall time).
struct CpuTime(WallTime);

impl Measurement for CpuTime {
    type Intermediate = ThreadTime;
    type Value = Duration;
    fn start(&self) -> ThreadTime {
        ThreadTime::now()
    }
    fn end(&self, i: ThreadTime) -> Duration {
        i.elapsed()
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self.0.formatter()
    }
}

fn bench(c: &mut Criterion<CpuTime>) {
    for name in [
        "aes256gcm",
        "aes128gcm",
        "chacha20poly1305",
        "aes256cbc-sha256",
    ] {
        let keys = suite(name);
        let out = OutboundSa::new(&keys, Lifetimes::default()).expect("keys");
        let mut g = c.benchmark_group(format!("esp/{name}"));
        for size in [64usize, 512, 1400, 8192] {
            g.throughput(Throughput::Bytes(size as u64));
            let mut buf = vec![0x45u8; MAX_HEADROOM + size + MAX_TAILROOM];
            g.bench_with_input(BenchmarkId::new("encapsulate", size), &size, |b, &size| {
                b.iter(|| {
                    out.encapsulate(&mut buf, MAX_HEADROOM, size, NextHeader::Ipv4)
                        .expect("encap")
                })
            });
            // Decapsulate: a fresh packet per iteration would measure encryption too, so
            // decrypt copies of one packet through an SA whose replay window is wide open
            // (one SA per batch of distinct sequence numbers).
            let pkts: Vec<Vec<u8>> = (0..4096)
                .map(|_| {
                    let mut b = vec![0x45u8; MAX_HEADROOM + size + MAX_TAILROOM];
                    let e = out
                        .encapsulate(&mut b, MAX_HEADROOM, size, NextHeader::Ipv4)
                        .expect("encap");
                    b[e.range].to_vec()
                })
                .collect();
            g.bench_with_input(BenchmarkId::new("decapsulate", size), &size, |b, _| {
                let mut inb = InboundSa::new(&keys, Lifetimes::default(), 8192).expect("keys");
                let mut i = 0;
                let mut scratch = vec![0u8; pkts[0].len()];
                b.iter(|| {
                    if i == pkts.len() {
                        inb = InboundSa::new(&keys, Lifetimes::default(), 8192).expect("keys");
                        i = 0;
                    }
                    scratch.copy_from_slice(&pkts[i]);
                    i += 1;
                    inb.decapsulate(&mut scratch).expect("decap").range.len()
                })
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime(WallTime));
    targets = bench
}
criterion_main!(benches);
