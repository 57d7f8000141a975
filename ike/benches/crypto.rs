//! Cost of the IKE SA setup crypto (key exchange per group, key derivation, PSK AUTH) and
//! of the SK payload transform per message (criterion).
//! Run: CARGO_TARGET_DIR=/work/targets/crypto cargo bench -p ike --bench crypto
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ike::crypto::{ike_sa_keys, psk_auth, signed_octets, IkeSuite, KeyExchange, SkCipher};
use ike::{DhGroup, EncrAlg, IntegAlg, PrfAlg};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn key_exchange(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut g = c.benchmark_group("ke");
    g.sample_size(20);
    for group in [
        DhGroup::Curve25519,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Modp2048,
    ] {
        let peer = KeyExchange::generate(group, &mut rng).expect("generate");
        let peer_public = peer.public_value().to_vec();
        g.bench_function(
            BenchmarkId::new("generate+agree", format!("{group:?}")),
            |b| {
                b.iter(|| {
                    let k = KeyExchange::generate(group, &mut rng).expect("generate");
                    k.agree(&peer_public).expect("agree")
                })
            },
        );
    }
    g.finish();
}

fn derivation(c: &mut Criterion) {
    let suite = IkeSuite {
        encr: EncrAlg::AesGcm16(256),
        prf: PrfAlg::HmacSha256,
        integ: None,
        dh: DhGroup::Curve25519,
    };
    c.bench_function("ike_sa_keys/aes256gcm-prfsha256", |b| {
        b.iter(|| ike_sa_keys(&suite, &[1; 32], &[2; 32], &[3; 32], 1, 2))
    });
    let msg1 = vec![7u8; 400];
    c.bench_function("psk_auth/prfsha256", |b| {
        b.iter(|| {
            let so = signed_octets(
                PrfAlg::HmacSha256,
                &msg1,
                &[2; 32],
                &[4; 32],
                b"\x02\0\0\0peer",
            );
            psk_auth(PrfAlg::HmacSha256, b"a shared key", &so)
        })
    });
}

fn sk_payload(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    for (name, encr, integ, ek, ak) in [
        ("aes256gcm", EncrAlg::AesGcm16(256), None, 36, 0),
        ("chacha20poly1305", EncrAlg::ChaCha20Poly1305, None, 36, 0),
        (
            "aes256cbc-sha256",
            EncrAlg::AesCbc(256),
            Some(IntegAlg::HmacSha256_128),
            32,
            32,
        ),
    ] {
        let mut tx = SkCipher::new(encr, integ, &vec![1; ek], &vec![2; ak]).expect("keys");
        let rx = SkCipher::new(encr, integ, &vec![1; ek], &vec![2; ak]).expect("keys");
        let mut g = c.benchmark_group(format!("sk/{name}"));
        for size in [300usize, 1200] {
            g.throughput(Throughput::Bytes(size as u64));
            let pt = vec![0x5au8; size];
            g.bench_with_input(BenchmarkId::new("seal", size), &size, |b, _| {
                b.iter(|| {
                    let mut m = vec![0u8; 32];
                    tx.seal(&mut m, &pt, &mut rng);
                    m
                })
            });
            let mut m = vec![0u8; 32];
            tx.seal(&mut m, &pt, &mut rng);
            g.bench_with_input(BenchmarkId::new("open", size), &size, |b, _| {
                b.iter(|| rx.open(&m, 32).expect("open"))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, key_exchange, derivation, sk_payload);
criterion_main!(benches);
