//! Cluster benchmark: N members (default 10) on loopback in one process, real TLS, real
//! sled stores. Publishes `--rate` changes per second spread over all members for `--secs`
//! seconds and measures, per change, the time from the publish call on its member until
//! every member reported it (`RecordChanged`); plus sustained changes/s and frame bytes on
//! the wire per change.
//!
//! `cargo run --release -p cluster --example bench -- --rate 1000 --secs 10`

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{Cluster, ClusterConfig, Event};

fn arg(args: &[String], k: &str, d: u64) -> u64 {
    args.iter()
        .position(|a| a == k)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rate = arg(&args, "--rate", 1000);
    let secs = arg(&args, "--secs", 10);
    let n = arg(&args, "--members", 10) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = tempfile::tempdir()?;
        let ids: Vec<String> = (1..=n).map(|i| format!("127.0.9.{i}")).collect();
        let mut handles = Vec::new();
        // gateway -> (issued, member index -> seen)
        type Seen = HashMap<String, (Option<Instant>, Vec<Option<Instant>>)>;
        let seen: Arc<Mutex<Seen>> = Arc::new(Mutex::new(HashMap::new()));
        for (i, id) in ids.iter().enumerate() {
            let peers: Vec<&str> = ids.iter().filter(|p| *p != id).map(|s| s.as_str()).collect();
            let mut c = ClusterConfig::new(id, &peers, "benchmark-secret", "vpn.example", dir.path().join(id));
            c.replication_port = 39100;
            c.membership_port = 34369;
            let (h, mut ev, _) = Cluster::start(c).await?;
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Some(e) = ev.recv().await {
                    if let Event::RecordChanged { gateway_id, record: Some(_) } = e {
                        let now = Instant::now();
                        let mut s = seen.lock().expect("lock");
                        let slot = s.entry(gateway_id).or_insert_with(|| (None, vec![None; n]));
                        slot.1[i].get_or_insert(now);
                    }
                }
            });
            handles.push(h);
        }
        // Let every link come up.
        let t = Instant::now();
        loop {
            let mut all = true;
            for h in &handles {
                let up = h.members().await?.iter().filter(|m| m.state == cluster::MemberState::Up).count();
                all &= up == n;
            }
            if all || t.elapsed() > Duration::from_secs(20) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let bytes0: u64 = handles.iter().map(|h| h.stats().bytes_sent.load(Ordering::Relaxed)).sum();
        let dropped0: u64 = handles.iter().map(|h| h.stats().frames_dropped.load(Ordering::Relaxed)).sum();
        let total = rate * secs;
        let start = Instant::now();
        let period = Duration::from_secs_f64(1.0 / rate as f64);
        let mut tasks = Vec::new();
        for k in 0..total {
            let due = start + period * (k as u32);
            tokio::time::sleep_until(due.into()).await;
            let h = handles[(k as usize) % n].clone();
            let seen = seen.clone();
            let g = format!("gw-{k}");
            tasks.push(tokio::spawn(async move {
                let issued = Instant::now();
                seen.lock().expect("lock").entry(g.clone()).or_insert_with(|| (None, vec![None; n])).0 = Some(issued);
                let ip = std::net::IpAddr::from([100, 64, (k >> 8) as u8, k as u8]);
                h.publish(&g, vec![ip], true).await
            }));
        }
        let issue_secs = start.elapsed().as_secs_f64();
        for t in tasks {
            t.await??;
        }
        // Wait until every change is visible everywhere (or 10 s).
        let t = Instant::now();
        loop {
            let done = seen.lock().expect("lock").values().filter(|(_, v)| v.iter().all(Option::is_some)).count();
            if done as u64 >= total || t.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let bytes1: u64 = handles.iter().map(|h| h.stats().bytes_sent.load(Ordering::Relaxed)).sum();
        let dropped: u64 = handles.iter().map(|h| h.stats().frames_dropped.load(Ordering::Relaxed)).sum::<u64>() - dropped0;
        let s = seen.lock().expect("lock").clone();
        let mut lat: Vec<f64> = Vec::new();
        let mut last_visible = start;
        let mut missing = 0;
        let mut worst: Vec<(f64, f64)> = Vec::new();
        for (issued, v) in s.values() {
            let Some(issued) = issued else { continue };
            if v.iter().any(Option::is_none) {
                missing += 1;
                continue;
            }
            let all = v.iter().flatten().max().copied().unwrap_or(*issued);
            last_visible = last_visible.max(all);
            let l = all.duration_since(*issued).as_secs_f64() * 1000.0;
            worst.push((l, issued.duration_since(start).as_secs_f64()));
            lat.push(l);
        }
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        worst.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
        let w: Vec<String> = worst.iter().step_by(worst.len().max(100) / 100).take(8).map(|(l, t)| format!("{l:.0}ms@{t:.2}s")).collect();
        println!("slowest (latency@issue time): {}", w.join(" "));
        let span = last_visible.duration_since(start).as_secs_f64();
        println!("members={n} offered_rate={rate}/s changes={total} issue_span={issue_secs:.2}s");
        println!(
            "visible_on_all: p50={:.1}ms p90={:.1}ms p99={:.1}ms max={:.1}ms missing={missing}",
            pct(&lat, 0.5),
            pct(&lat, 0.9),
            pct(&lat, 0.99),
            pct(&lat, 1.0)
        );
        println!("sustained={:.0} changes/s (all visible everywhere)", lat.len() as f64 / span);
        println!(
            "wire: {} frame bytes total, {:.0} bytes per change (all links, incl. digests; TLS adds ~22 B per record), dropped_frames={dropped}",
            bytes1 - bytes0,
            (bytes1 - bytes0) as f64 / total as f64
        );
        for h in handles {
            h.shutdown().await?;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
