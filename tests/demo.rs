//! `headend demo` (README Quick start): three members, thirty routers, the busiest member
//! SIGKILLed; every router of it fails over and every survivor answers its new VIP.
#![allow(clippy::unwrap_used)]
use std::process::Command;
use std::time::{Duration, Instant};

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(key))
        .unwrap_or_else(|| panic!("no \"{key}\" line in the demo output:\n{out}"))
        .trim()
}

fn secs(s: &str) -> f64 {
    s.trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("not a duration: {s}"))
}

#[test]
fn demo_fails_over_every_router_of_the_killed_member_within_bounds() {
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_headend"))
        .arg("demo")
        .output()
        .unwrap();
    let took = t0.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {text}\n{err}");
    assert!(took < Duration::from_secs(120), "demo took {took:?}");
    assert!(text.contains("Creating new ipsec-ddns cluster"), "{text}");
    assert_eq!(
        text.matches("Joined existing ipsec-ddns cluster").count(),
        2,
        "{text}"
    );

    // "failed over:     10/10 routers of the killed member"
    let fo = field(&text, "failed over:");
    let (done, of) = fo
        .split_whitespace()
        .next()
        .and_then(|f| f.split_once('/'))
        .unwrap();
    let (done, of): (usize, usize) = (done.parse().unwrap(), of.parse().unwrap());
    assert_eq!(done, of, "{fo}");
    // Round-robin spreads 30 routers 10/10/10; the busiest has at least a third.
    assert!(of >= 10, "{fo}");
    assert_eq!(
        field(&text, "answered:").split_whitespace().next(),
        Some("30/30"),
        "{text}"
    );
    // One line per moved router, naming the old and new VIP.
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("answered by all 2 survivors after"))
            .count(),
        of,
        "{text}"
    );

    // The cluster-wide view from a survivor: all three members, the killed one down, and
    // the survivors' shared tunnel counts add up to every router.
    let view = text
        .split("The cluster-wide view from member")
        .nth(1)
        .unwrap_or_else(|| panic!("no cluster-wide view:\n{text}"));
    let row = |name: &str| -> Vec<&str> {
        view.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row:\n{view}"))
            .split_whitespace()
            .skip(1)
            .collect()
    };
    let (state, tunnels) = (row("state"), row("tunnels_up"));
    assert_eq!(state.len(), 3, "{view}");
    assert_eq!(state.iter().filter(|s| **s == "down").count(), 1, "{view}");
    let sum: u64 = state
        .iter()
        .zip(&tunnels)
        .filter(|(s, _)| **s == "up")
        .map(|(_, t)| t.parse::<u64>().unwrap())
        .sum();
    assert_eq!(sum, 30, "{view}");
    assert!(row("ike_sa_setups_total").len() == 3, "{view}");

    // "failover time (...): p50 2.92s p99 2.94s max 2.94s"
    let ft = field(&text, "failover time");
    let words: Vec<&str> = ft.split_whitespace().collect();
    let at = |k: &str| {
        let i = words.iter().position(|w| *w == k).unwrap();
        secs(words[i + 1])
    };
    let (p50, p99, max) = (at("p50"), at("p99"), at("max"));
    assert!(p50 <= p99 && p99 <= max, "{ft}");
    // DPD 1 s + two retransmissions (250 + 500 ms) + backoff: never below ~1 s, and a
    // sane failover stays well under the 2-minute budget.
    assert!(p50 > 0.5, "faster than dead-peer detection allows: {ft}");
    assert!(max < 20.0, "{ft}");
}
