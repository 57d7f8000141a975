//! Known-answer and consistency tests for key derivation, AUTH and NAT detection.
//!
//! SKEYSEED, prf+ and SKEYSEED(rekey) use the NIST CAVP SP 800-135 IKEv2 KDF sample
//! vectors for SHA-256 (Ni/Nr 64 bits, g^ir 256 bits, DKM 1056 bits). Where no published
//! vector exists (CHILD SA KEYMAT split, PSK AUTH, NAT-D), the expected values were computed
//! once, when these tests were written, with Python's `hmac`/`hashlib` modules straight
//! from the RFC 7296 formulas: an implementation independent of ring and of this crate.
use std::net::SocketAddr;

use hex_literal::hex;

use super::*;

const NI: [u8; 8] = hex!("3f302be1abcb28e1");
const NR: [u8; 8] = hex!("8c332ee006064c9b");
const GIR: [u8; 32] = hex!("0f4d257d7a58fc4545c7d7a88119eee5d5c9690c5b4c989171d3abbfd99d1d29");
const GIR_NEW: [u8; 32] = hex!("25f3b12d6f282739256e39bf54eda53b60ffcf379bb7bcc90c27b4c4c578616c");
const SPI_I: u64 = 0x40da_c39e_1e1a_8640;
const SPI_R: u64 = 0x8619_a1cf_9a6e_4c07;
const SKEYSEED: [u8; 32] = hex!("5f00d1bd2c58ec224b1e6b71fa0f19a1faa7a193952c444411b47c1a9d8ba6fe");
const DKM: [u8; 132] = hex!(
    "0b137d669b0947d7d026d593f0305ad401ff0c471357d695778a9c7f4b4869ec"
    "e98aca531188d16041b3bb936d2dbb3b4993a6e768a809160de45d0283f273a6"
    "cdf6854379e31be72b8d3d1fa990cf9c5b015ca9f918a7df6253c958114a09d4"
    "e1c19bdcd4db14b29d98db1a74ad405c588662c14a04d0d36aa4ab55e90f8986"
    "d12d4aad"
);
const SKEYSEED_REKEY: [u8; 32] =
    hex!("2d63f6debc92048b4fef3889c4c99ca67d6496e0fac14a2bca9a2d6566ff2398");

fn concat(k: &IkeKeys) -> Vec<u8> {
    [
        &k.sk_d, &k.sk_ai, &k.sk_ar, &k.sk_ei, &k.sk_er, &k.sk_pi, &k.sk_pr,
    ]
    .iter()
    .flat_map(|x| x.iter().copied())
    .collect()
}

fn suites() -> Vec<IkeSuite> {
    let mut v = Vec::new();
    for prf in [PrfAlg::HmacSha256, PrfAlg::HmacSha384, PrfAlg::HmacSha512] {
        for (encr, integ) in [
            (EncrAlg::AesGcm16(128), None),
            (EncrAlg::AesGcm16(256), None),
            (EncrAlg::ChaCha20Poly1305, None),
            (EncrAlg::AesCbc(128), Some(IntegAlg::HmacSha256_128)),
            (EncrAlg::AesCbc(256), Some(IntegAlg::HmacSha384_192)),
            (EncrAlg::AesCbc(256), Some(IntegAlg::HmacSha512_256)),
        ] {
            v.push(IkeSuite {
                encr,
                prf,
                integ,
                dh: DhGroup::Curve25519,
            });
        }
    }
    v
}

#[test]
fn nist_skeyseed() {
    assert_eq!(
        &skeyseed(PrfAlg::HmacSha256, &NI, &NR, &GIR)[..],
        &SKEYSEED[..]
    );
}

#[test]
fn nist_dkm_is_prf_plus_of_skeyseed() {
    let seed = [&NI[..], &NR, &SPI_I.to_be_bytes(), &SPI_R.to_be_bytes()].concat();
    assert_eq!(
        &Prf::new(PrfAlg::HmacSha256).plus(&SKEYSEED, &seed, 132)[..],
        &DKM[..]
    );
}

/// `ike_sa_keys` end to end against the NIST DKM: for every SHA-256 suite the seven keys,
/// in RFC 7296 2.14 order, are a prefix of (or extend) the published DKM.
#[test]
fn nist_ike_sa_keys_split_in_order() {
    for s in suites().into_iter().filter(|s| s.prf == PrfAlg::HmacSha256) {
        let k = ike_sa_keys(&s, &NI, &NR, &GIR, SPI_I, SPI_R);
        let all = concat(&k);
        let n = all.len().min(DKM.len());
        assert_eq!(&all[..n], &DKM[..n], "{s:?}");
        assert_eq!(k.sk_d.len(), 32);
        assert_eq!(k.sk_pi.len(), 32);
        assert_eq!(k.sk_pr.len(), 32);
        assert_eq!(k.sk_ei.len(), encr_key_len(s.encr));
        assert_eq!(k.sk_ai.len(), s.integ.map_or(0, integ_key_len));
        // SK_d is the first prf-length block of DKM.
        assert_eq!(&k.sk_d[..], &DKM[..32]);
    }
}

#[test]
fn key_lengths_per_suite() {
    for s in suites() {
        let k = ike_sa_keys(&s, &NI, &NR, &GIR, SPI_I, SPI_R);
        let p = Prf::new(s.prf).output_len();
        let e = match s.encr {
            EncrAlg::AesGcm16(128) => 20,
            EncrAlg::AesGcm16(256) => 36,
            EncrAlg::ChaCha20Poly1305 => 36,
            EncrAlg::AesCbc(128) => 16,
            EncrAlg::AesCbc(256) => 32,
            other => panic!("{other:?}"),
        };
        let a = match s.integ {
            None => 0,
            Some(IntegAlg::HmacSha256_128) => 32,
            Some(IntegAlg::HmacSha384_192) => 48,
            Some(IntegAlg::HmacSha512_256) => 64,
        };
        for (key, want) in [
            (&k.sk_d, p),
            (&k.sk_ai, a),
            (&k.sk_ar, a),
            (&k.sk_ei, e),
            (&k.sk_er, e),
            (&k.sk_pi, p),
            (&k.sk_pr, p),
        ] {
            assert_eq!(key.len(), want, "{s:?}");
        }
        // Distinct keys (prf+ output does not repeat).
        assert_ne!(k.sk_ei, k.sk_er);
        assert_ne!(k.sk_pi, k.sk_pr);
    }
}

/// The inputs that must influence the keys do: each nonce, g^ir and each SPI.
#[test]
fn every_input_changes_the_keys() {
    let s = suites()[0];
    let base = concat(&ike_sa_keys(&s, &NI, &NR, &GIR, SPI_I, SPI_R));
    let mut ni2 = NI;
    ni2[0] ^= 1;
    let mut g2 = GIR;
    g2[31] ^= 1;
    assert_ne!(
        base,
        concat(&ike_sa_keys(&s, &ni2, &NR, &GIR, SPI_I, SPI_R))
    );
    assert_ne!(
        base,
        concat(&ike_sa_keys(&s, &NI, &ni2, &GIR, SPI_I, SPI_R))
    );
    assert_ne!(base, concat(&ike_sa_keys(&s, &NI, &NR, &g2, SPI_I, SPI_R)));
    assert_ne!(
        base,
        concat(&ike_sa_keys(&s, &NI, &NR, &GIR, SPI_I ^ 1, SPI_R))
    );
    assert_ne!(
        base,
        concat(&ike_sa_keys(&s, &NI, &NR, &GIR, SPI_I, SPI_R ^ 1))
    );
    // Swapping SPIs (a role confusion) changes them too.
    assert_ne!(base, concat(&ike_sa_keys(&s, &NI, &NR, &GIR, SPI_R, SPI_I)));
}

#[test]
fn nist_rekey_skeyseed() {
    // SK_d (old) is the first 32 octets of the NIST DKM.
    let k = rekeyed_ike_sa_keys(
        &IkeSuite {
            encr: EncrAlg::AesGcm16(256),
            prf: PrfAlg::HmacSha256,
            integ: None,
            dh: DhGroup::Ecp256,
        },
        PrfAlg::HmacSha256,
        &DKM[..32],
        &GIR_NEW,
        &NI,
        &NR,
        SPI_I,
        SPI_R,
    );
    let seed = [&NI[..], &NR, &SPI_I.to_be_bytes(), &SPI_R.to_be_bytes()].concat();
    let want = Prf::new(PrfAlg::HmacSha256).plus(&SKEYSEED_REKEY, &seed, 3 * 32 + 2 * 36);
    assert_eq!(concat(&k), &want[..]);
}

/// RFC 7296 2.18: SKEYSEED uses the OLD PRF, prf+ the NEW one.
#[test]
fn rekey_uses_old_prf_for_skeyseed_and_new_prf_for_prf_plus() {
    let new = IkeSuite {
        encr: EncrAlg::AesGcm16(256),
        prf: PrfAlg::HmacSha512,
        integ: None,
        dh: DhGroup::Curve25519,
    };
    let old_skd = [7u8; 32];
    let k = rekeyed_ike_sa_keys(&new, PrfAlg::HmacSha256, &old_skd, &GIR_NEW, &NI, &NR, 1, 2);
    let seed_key = Prf::new(PrfAlg::HmacSha256).compute(&old_skd, &[&GIR_NEW, &NI, &NR]);
    let spis = [&NI[..], &NR, &1u64.to_be_bytes(), &2u64.to_be_bytes()].concat();
    let want = Prf::new(PrfAlg::HmacSha512).plus(&seed_key, &spis, 3 * 64 + 2 * 36);
    assert_eq!(concat(&k), &want[..]);
    assert_eq!(k.sk_d.len(), 64);
}

/// CHILD SA KEYMAT (RFC 7296 2.17), AES-CBC-256 + HMAC-SHA-256-128, SK_d = NIST DKM[..32].
/// Expected: Python `hmac` prf+ (see module docs).
#[test]
fn child_sa_keymat_order_without_and_with_pfs() {
    let skd = &DKM[..32];
    let nopfs = hex!(
        "7d808e2b44635300e7025f1b640c431b13a9b3b891cd45a15261f4f3c4a7e39b"
        "3a3c8017ccc2b74610faf52ba3faf6d9e83c859b448217b24dadc82c9887460b"
        "7bd724236b9885914cc93b39d6c749e92f36b30c9eb6a9f59e396bc7c0ac4878"
        "512639cc612c5660ddb1a1fed360ac8b9b3f548f13482d0431b38eca293ef976"
    );
    let pfs = hex!(
        "67edd256e64542436173e3ca39ef1fdec3c8240b860df26f84caf5258578ff35"
        "df40ddc31ea210e0523988b7531c9dc3207e0e98e256214999c7712f73ff044a"
        "9cf6e3a5e421862b9ba140862f460ea5236527cf8346db9ac23feb6636e21fc7"
        "a18a94a2e9d4ad95356e278f46ac3fa53a75a058c87293cf38dd863e879f84d0"
    );
    for (g, want) in [(None, nopfs), (Some(&GIR_NEW[..]), pfs)] {
        let (i2r, r2i) = child_sa_keys(
            PrfAlg::HmacSha256,
            skd,
            g,
            &NI,
            &NR,
            EncrAlg::AesCbc(256),
            Some(IntegAlg::HmacSha256_128),
        );
        // initiator->responder encr | integ, then responder->initiator encr | integ.
        assert_eq!(&i2r.encr_key[..], &want[..32]);
        assert_eq!(&i2r.integ_key[..], &want[32..64]);
        assert_eq!(&r2i.encr_key[..], &want[64..96]);
        assert_eq!(&r2i.integ_key[..], &want[96..128]);
    }
}

#[test]
fn child_sa_aead_keys_carry_salt_and_no_integrity_key() {
    for (encr, len) in [
        (EncrAlg::AesGcm16(128), 20),
        (EncrAlg::AesGcm16(256), 36),
        (EncrAlg::ChaCha20Poly1305, 36),
    ] {
        let (i2r, r2i) = child_sa_keys(PrfAlg::HmacSha384, &[1; 48], None, &NI, &NR, encr, None);
        assert_eq!(i2r.encr_key.len(), len);
        assert_eq!(r2i.encr_key.len(), len);
        assert!(i2r.integ_key.is_empty() && r2i.integ_key.is_empty());
        let keymat = Prf::new(PrfAlg::HmacSha384).plus(&[1; 48], &[&NI[..], &NR].concat(), 2 * len);
        assert_eq!([&i2r.encr_key[..], &r2i.encr_key[..]].concat(), &keymat[..]);
    }
}

/// AUTH for a shared key (RFC 7296 2.15) with PRF HMAC-SHA-384; expected from Python.
#[test]
fn psk_auth_known_answer() {
    assert_eq!(
        psk_auth(
            PrfAlg::HmacSha384,
            b"correct horse battery staple",
            b"signed octets example"
        ),
        hex!(
            "2c9819203160afb879d08f9e942abafed699e5137b8719d0be92f41998791ebf"
            "c6026670d76f41e95b2c565c2dc573af"
        )
    );
    // A different key gives a different AUTH.
    assert_ne!(
        psk_auth(
            PrfAlg::HmacSha384,
            b"correct horse battery stapler",
            b"signed octets example"
        ),
        psk_auth(
            PrfAlg::HmacSha384,
            b"correct horse battery staple",
            b"signed octets example"
        ),
    );
}

#[test]
fn signed_octets_layout() {
    let real = [1u8; 40];
    let nonce = [2u8; 32];
    let skp = [3u8; 32];
    let mut id = vec![2, 0, 0, 0];
    id.extend_from_slice(b"peer.example.net");
    let so = signed_octets(PrfAlg::HmacSha256, &real, &nonce, &skp, &id);
    assert_eq!(&so[..40], &real);
    assert_eq!(&so[40..72], &nonce);
    assert_eq!(
        &so[72..],
        hex!("db19e72eef8c44f41ac36b8a465ab6a853a3ff0476b970d8702e77416f84dc5a")
    );
}

/// Both ends compute the same AUTH from the same transcript, and it verifies only with
/// the right key.
#[test]
fn psk_auth_both_sides_agree() {
    let s = suites()[3];
    let k = ike_sa_keys(&s, &NI, &NR, &GIR, SPI_I, SPI_R);
    let id = [1, 0, 0, 0, 192, 0, 2, 1];
    let msg1 = [9u8; 300];
    let mine = psk_auth(
        s.prf,
        b"k",
        &signed_octets(s.prf, &msg1, &NR, &k.sk_pi, &id),
    );
    let theirs = psk_auth(
        s.prf,
        b"k",
        &signed_octets(s.prf, &msg1, &NR, &k.sk_pi, &id),
    );
    assert!(auth_matches(&mine, &theirs));
    let wrong = psk_auth(
        s.prf,
        b"K",
        &signed_octets(s.prf, &msg1, &NR, &k.sk_pi, &id),
    );
    assert!(!auth_matches(&mine, &wrong));
    // SK_pr instead of SK_pi (a reflection) does not verify.
    let reflected = psk_auth(
        s.prf,
        b"k",
        &signed_octets(s.prf, &msg1, &NR, &k.sk_pr, &id),
    );
    assert!(!auth_matches(&mine, &reflected));
    assert!(!auth_matches(&mine, &mine[..mine.len() - 1]));
}

/// NAT_DETECTION_*_IP data (RFC 7296 2.23); expected from Python `hashlib.sha1`.
#[test]
fn nat_detection_known_answers() {
    let a: SocketAddr = "192.0.2.10:500".parse().unwrap();
    assert_eq!(
        nat_detection_hash(0x0102_0304_0506_0708, 0x1112_1314_1516_1718, a),
        hex!("441d377f1613130142837ac1d5ad099cada6ff2d")
    );
    let b: SocketAddr = "[2001:db8::5]:4500".parse().unwrap();
    assert_eq!(
        nat_detection_hash(0x0102_0304_0506_0708, 0, b),
        hex!("e99298556148914aac5c4287a8a3bb337b76b963")
    );
    // The port matters: a NAT that only rewrites the port is detected.
    let c: SocketAddr = "192.0.2.10:501".parse().unwrap();
    assert_ne!(nat_detection_hash(1, 2, a), nat_detection_hash(1, 2, c));
}

/// The initiator's outbound SK cipher is the responder's inbound one and vice versa.
#[test]
fn sk_ciphers_pair_up_across_roles() {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
    for s in suites() {
        let k = ike_sa_keys(&s, &NI, &NR, &GIR, SPI_I, SPI_R);
        let (mut i_out, i_in) = k.sk_ciphers(&s, true).unwrap();
        let (mut r_out, r_in) = k.sk_ciphers(&s, false).unwrap();
        let hdr = [0u8; 32];
        let mut m = hdr.to_vec();
        i_out.seal(&mut m, b"from initiator", &mut rng);
        assert_eq!(r_in.open(&m, 32).unwrap(), b"from initiator");
        assert!(
            i_in.open(&m, 32).is_err(),
            "{s:?}: initiator must not accept its own direction"
        );
        let mut m = hdr.to_vec();
        r_out.seal(&mut m, b"from responder", &mut rng);
        assert_eq!(i_in.open(&m, 32).unwrap(), b"from responder");
        assert!(r_in.open(&m, 32).is_err());
    }
}

/// Full IKE_SA_INIT key schedule between two `KeyExchange`s for every group: both ends
/// derive identical keys.
#[test]
fn both_ends_derive_the_same_keys_for_every_group() {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(6);
    for dh in [
        DhGroup::Modp2048,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Curve25519,
    ] {
        let s = IkeSuite { dh, ..suites()[0] };
        let i = KeyExchange::generate(dh, &mut rng).unwrap();
        let r = KeyExchange::generate(dh, &mut rng).unwrap();
        let (gi, gr) = (i.public_value().to_vec(), r.public_value().to_vec());
        let gir_i = i.agree(&gr).unwrap();
        let gir_r = r.agree(&gi).unwrap();
        let ki = ike_sa_keys(&s, &NI, &NR, &gir_i, SPI_I, SPI_R);
        let kr = ike_sa_keys(&s, &NI, &NR, &gir_r, SPI_I, SPI_R);
        assert_eq!(concat(&ki), concat(&kr), "{dh:?}");
    }
}
