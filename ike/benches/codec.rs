//! Cost of the wire codec and proposal selection per IKE_SA_INIT (criterion): decoding
//! strongSwan 5.9.8's real requests, encoding a response, and choosing a proposal from
//! strongSwan's default offer.
//! Run: CARGO_TARGET_DIR=/work/targets/wire cargo bench -p ike --bench codec
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ike::message::{DecodeLimits, Message, Payload};
use ike::negotiate::select_ike;
use ike::{DhGroup, EncrAlg, IkeProposal, PrfAlg};

/// Real requests (see ike/fuzz/seeds/decode).
const INIT_DEFAULT: &[u8] = include_bytes!("../fuzz/seeds/decode/sswan_default");
const INIT_GCM: &[u8] = include_bytes!("../fuzz/seeds/decode/sswan_gcm");

fn codec(c: &mut Criterion) {
    let limits = DecodeLimits::default();
    let mut g = c.benchmark_group("codec");
    for (name, bytes) in [
        ("decode/init_default_660B", INIT_DEFAULT),
        ("decode/init_gcm_232B", INIT_GCM),
    ] {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| Message::decode(std::hint::black_box(bytes), &limits).expect("decodes"))
        });
    }
    let m = Message::decode(INIT_GCM, &limits).expect("decodes");
    g.throughput(Throughput::Bytes(INIT_GCM.len() as u64));
    g.bench_function("encode/init_gcm_232B", |b| {
        b.iter(|| std::hint::black_box(&m).encode().expect("encodes"))
    });
    g.finish();

    let offer = match Message::decode(INIT_DEFAULT, &limits)
        .expect("decodes")
        .payloads
        .first()
    {
        Some(Payload::Sa(p)) => p.clone(),
        _ => panic!("first payload is not SA"),
    };
    let ours = vec![IkeProposal {
        encr: vec![EncrAlg::AesGcm16(256)],
        prf: vec![PrfAlg::HmacSha256],
        integ: vec![],
        dh: vec![DhGroup::Curve25519],
    }];
    c.bench_function("negotiate/select_ike_strongswan_default", |b| {
        b.iter(|| select_ike(std::hint::black_box(&offer), &ours, Some(31)).expect("chosen"))
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
