//! IKE setup rate: `headend bench ike` against `headend run` and against strongSwan's
//! charon as responder, same generator, PSK, x25519, AES-GCM, same namespaces, same run
//! (issue 2, "Load"; results in BENCHMARKS.md, "IKE setups").
//!
//! A benchmark, not a check: ignored by default. Run it with the release binary:
//!
//! ```text
//! sudo CARGO_TARGET_DIR=target cargo test --release -p headend --test strongswan_bench \
//!     -- --ignored --nocapture
//! ```
//!
//! Knobs: HEADEND_BENCH_N (IKE SAs per run, default 2000), HEADEND_BENCH_C (concurrency,
//! default 64), HEADEND_BENCH_REPS (runs per responder, default 3; medians reported).
mod support;

use std::time::Duration;

use support::charon::{Charon, Conn, SwanctlConf};
use support::headend::{Headend, HeadendConf};
use support::netns::{Direct, Netns};
use support::TestCtx;

const PSK: &str = "bench-psk-5b0c7e21";
const POOL: &str = "10.100.0.0/16";

fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One `headend bench ike` result line.
#[derive(Debug, Clone, Copy)]
struct Run {
    ok: usize,
    failed: usize,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Parses "... ok K failed F in T s: R setups/s, latency p50 A ms p99 B ms max M ms".
fn parse(out: &str) -> Option<Run> {
    let line = out.lines().find(|l| l.starts_with("bench ike:"))?;
    let toks: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == ',')
        .collect();
    let after = |key: &str| -> Option<f64> {
        let i = toks.iter().position(|t| *t == key)?;
        toks.get(i + 1)?.parse().ok()
    };
    let before = |key: &str| -> Option<f64> {
        let i = toks.iter().position(|t| *t == key)?;
        toks.get(i.checked_sub(1)?)?.parse().ok()
    };
    Some(Run {
        ok: after("ok")? as usize,
        failed: after("failed")? as usize,
        rate: before("setups/s")?,
        p50_ms: after("p50")?,
        p99_ms: after("p99")?,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs the generator in the peer namespace against 10.1.0.1:500.
fn generate(peer: &Netns, n: usize, c: usize) -> (Run, String) {
    let bin = support::headend::bin().display().to_string();
    let (ns, cs) = (n.to_string(), c.to_string());
    let argv = [
        bin.as_str(),
        "bench",
        "ike",
        "--target",
        "10.1.0.1:500",
        "-n",
        &ns,
        "-c",
        &cs,
        "--psk",
        PSK,
        "--proposal",
        "aes256gcm16-prfsha256-x25519",
        "--esp",
        "aes256gcm16",
        "--bind",
        "10.1.0.2",
        "--timeout",
        "20s",
    ];
    let o = peer.exec_timeout(&argv, Duration::from_secs(600));
    let text = o.all();
    assert!(o.ok(), "bench failed ({}):\n{text}", o.status);
    let run = parse(&text).unwrap_or_else(|| panic!("unparsable bench output:\n{text}"));
    (run, text)
}

#[test]
#[ignore = "benchmark; run with --release -- --ignored --nocapture (BENCHMARKS.md)"]
fn bench_ike_setups_headend_vs_charon() {
    let n = env_num("HEADEND_BENCH_N", 2000);
    let c = env_num("HEADEND_BENCH_C", 64);
    let reps = env_num("HEADEND_BENCH_REPS", 3).max(1);
    let ctx = TestCtx::new("bench_ike");
    let net = Direct::new(&ctx);

    let mut he_runs = Vec::new();
    let mut ch_runs = Vec::new();
    for rep in 0..reps {
        // headend run, fresh per repetition.
        let mut hc = HeadendConf::responder("10.1.0.1", PSK, POOL);
        hc.log_level = "warn".into();
        hc.proposals = vec!["aes256gcm16-prfsha256-x25519".into()];
        hc.esp_proposals = vec!["aes256gcm16".into()];
        let he = Headend::run(&ctx, Some(&net.he), &format!("headend-{rep}"), &hc);
        let (r, text) = generate(&net.peer, n, c);
        eprintln!("headend rep {rep}: {text}");
        he_runs.push(r);
        drop(he);

        // charon, fresh per repetition, tuned for many SAs: hashed IKE SA table, no
        // cookie/half-open limits (the generator sends from one address), errors-only log.
        let charon = Charon::start_quiet(
            &ctx,
            &net.he,
            &format!("charon-{rep}"),
            "ikesa_table_size = 65536\n  ikesa_table_segments = 64\n  \
             cookie_threshold = 1000000\n  block_threshold = 1000000\n  \
             init_limit_half_open = 0\n  threads = 16",
        );
        let mut conn = Conn::responder("rw", "10.1.0.1", "headend.test", Some("p"));
        conn.local_ts = Some("0.0.0.0/0".into());
        charon.load(
            &ctx,
            &SwanctlConf {
                conns: vec![conn],
                pools: vec![("p".into(), POOL.into())],
                secrets: vec![(vec![], PSK.into())],
            },
        );
        let (r, text) = generate(&net.peer, n, c);
        eprintln!("charon rep {rep}: {text}");
        ch_runs.push(r);
        drop(charon);
    }

    let summarize = |runs: &[Run]| {
        (
            median(runs.iter().map(|r| r.rate).collect()),
            median(runs.iter().map(|r| r.p50_ms).collect()),
            median(runs.iter().map(|r| r.p99_ms).collect()),
        )
    };
    let (hr, h50, h99) = summarize(&he_runs);
    let (cr, c50, c99) = summarize(&ch_runs);
    let table = format!(
        "| responder | setups/s (median of {reps}) | p50 ms | p99 ms | runs (setups/s) |\n\
         |---|---|---|---|---|\n\
         | headend run | {hr:.0} | {h50:.2} | {h99:.2} | {} |\n\
         | charon 5.9.8 | {cr:.0} | {c50:.2} | {c99:.2} | {} |\n\
         \nratio headend/charon: {:.2}x (N={n}, concurrency={c})\n",
        he_runs
            .iter()
            .map(|r| format!("{:.0}", r.rate))
            .collect::<Vec<_>>()
            .join(", "),
        ch_runs
            .iter()
            .map(|r| format!("{:.0}", r.rate))
            .collect::<Vec<_>>()
            .join(", "),
        hr / cr
    );
    println!("\n{table}");
    // Every setup must have completed on both responders, or the rates mean nothing.
    for (who, runs) in [("headend", &he_runs), ("charon", &ch_runs)] {
        for r in runs.iter() {
            assert_eq!(r.failed, 0, "{who}: failed setups in {r:?}");
            assert_eq!(r.ok, n, "{who}: {r:?}");
        }
    }
}

#[test]
fn bench_output_parser() {
    let out = "bench ike: target 10.1.0.1:500 n 2000 concurrency 64: ok 1999 failed 1 in 1.234 s: \
               1620.7 setups/s, latency p50 12.50 ms p99 40.10 ms max 55.00 ms\n  failed 1: x";
    let r = parse(out).expect("parses");
    assert_eq!((r.ok, r.failed), (1999, 1));
    assert!((r.rate - 1620.7).abs() < 1e-9);
    assert!((r.p50_ms - 12.5).abs() < 1e-9 && (r.p99_ms - 40.1).abs() < 1e-9);
    assert!(parse("no result here").is_none());
}
