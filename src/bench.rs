//! `headend bench ike`: a load generator. Opens N IKE SAs (IKE_SA_INIT + IKE_AUTH with a
//! CHILD SA, RFC 7296 1.2) against a responder with the initiator engine, at most C in
//! flight, and reports setups per second and the p50/p99 setup latency.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ike::endpoint::Endpoint;
use ike::{DeleteReason, Event, IkeSaId};

use crate::config::{parse_identity, Config, Secret};
use crate::driver::{self, NullDataplane, Sockets};
use crate::error::Error;
use crate::proposal;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub target: SocketAddr,
    pub natt_port: u16,
    pub n: usize,
    pub concurrency: usize,
    pub psk: String,
    pub proposal: String,
    pub esp_proposal: String,
    /// Identities are `<id_prefix><k>`.
    pub id_prefix: String,
    /// A setup not done after this long counts as failed.
    pub timeout: Duration,
    /// Local address to send from.
    pub bind: IpAddr,
    /// Number of local UDP source ports to spread the IKE SAs over.
    pub sockets: usize,
    /// Delete each IKE SA once established (keeps the responder's table small).
    pub delete: bool,
    /// Independent initiator endpoints (one task each) sharing `n` and `concurrency`, so
    /// the generator can use more than one core.
    pub workers: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            target: SocketAddr::from(([127, 0, 0, 1], 500)),
            natt_port: 4500,
            n: 1000,
            concurrency: 50,
            psk: "headend-demo-psk".into(),
            proposal: "aes256gcm16-prfsha256-x25519".into(),
            esp_proposal: "aes256gcm16".into(),
            id_prefix: "bench-".into(),
            timeout: Duration::from_secs(10),
            bind: IpAddr::from([0, 0, 0, 0]),
            sockets: 1,
            delete: false,
            workers: 1,
        }
    }
}

/// The result.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub ok: usize,
    pub failed: usize,
    pub elapsed: Duration,
    /// Sorted setup latencies of the successful setups.
    pub latencies: Vec<Duration>,
    /// Failure reasons and their counts.
    pub failures: HashMap<String, usize>,
}

impl BenchReport {
    pub fn setups_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.ok as f64 / s
        } else {
            0.0
        }
    }

    /// The q-quantile (0..=1) of the setup latency, nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        quantile(&self.latencies, q)
    }

    pub fn summary(&self, o: &BenchOptions) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut s = format!(
            "bench ike: target {} n {} concurrency {}: ok {} failed {} in {:.3} s: {:.1} setups/s, latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
            o.target,
            o.n,
            o.concurrency,
            self.ok,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.setups_per_sec(),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.latencies.last().copied().unwrap_or_default()),
        );
        let mut f: Vec<_> = self.failures.iter().collect();
        f.sort();
        for (why, n) in f {
            s.push_str(&format!("\n  failed {n}: {why}"));
        }
        s
    }
}

/// Nearest-rank quantile of sorted values.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs the benchmark: `workers` generators in parallel, results merged.
pub async fn run(o: &BenchOptions) -> Result<BenchReport, Error> {
    let w = o.workers.clamp(1, o.n.max(1));
    let mut tasks = Vec::with_capacity(w);
    for k in 0..w {
        let mut part = o.clone();
        part.n = o.n / w + usize::from(k < o.n % w);
        part.concurrency = (o.concurrency / w + usize::from(k < o.concurrency % w)).max(1);
        part.id_prefix = if w > 1 {
            format!("{}w{k}-", o.id_prefix)
        } else {
            o.id_prefix.clone()
        };
        tasks.push(tokio::spawn(async move { run_one(&part).await }));
    }
    let mut total = BenchReport {
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(o.n),
        failures: HashMap::new(),
    };
    for t in tasks {
        let r = t
            .await
            .map_err(|e| Error::Other(format!("bench worker: {e}")))??;
        total.ok += r.ok;
        total.failed += r.failed;
        total.elapsed = total.elapsed.max(r.elapsed);
        total.latencies.extend(r.latencies);
        for (k, v) in r.failures {
            *total.failures.entry(k).or_default() += v;
        }
    }
    total.latencies.sort();
    Ok(total)
}

/// One generator: one endpoint, `n` setups, at most `concurrency` in flight.
async fn run_one(o: &BenchOptions) -> Result<BenchReport, Error> {
    let ike =
        proposal::parse_ike(&o.proposal).map_err(|e| Error::Config(format!("--proposal: {e}")))?;
    let esp =
        proposal::parse_esp(&o.esp_proposal).map_err(|e| Error::Config(format!("--esp: {e}")))?;
    let mut cfg = Config::default();
    cfg.ike.proposals = vec![crate::config::IkeProposalStr(ike)];
    cfg.ike.esp_proposals = vec![crate::config::EspProposalStr(esp)];
    cfg.ike.dpd_delay = crate::config::DurationStr(Duration::ZERO);
    cfg.ike.retransmit_timeout = crate::config::DurationStr(Duration::from_secs(1));
    cfg.ike.retransmit_tries = 3;
    let peer = crate::config::PeerSection {
        local_id: crate::config::IdentityStr(ike::Identity::Fqdn("bench".into())),
        remote_id: None,
        psk: Some(Secret(o.psk.clone())),
        headends: vec![],
        policy: Default::default(),
        backoff: Default::default(),
        connect_timeout: Default::default(),
        bind: SocketAddr::new(o.bind, 0),
        request_vip4: true,
        request_vip6: false,
        local_ts: vec![],
        remote_ts: vec![],
        children: vec![],
    };
    let binds = vec![o.bind; o.sockets.max(1)];
    let esp_sink = Arc::new(NullDataplane::default());
    let mut sockets = Sockets::bind(&binds, 0, Some(0), esp_sink).await?;
    let locals = sockets.ike_addrs.clone();
    let mut ep = Endpoint::new(
        cfg.initiator_endpoint(sockets.natt_addrs[0].port()),
        driver::seed(),
    );

    let mut in_flight: HashMap<IkeSaId, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(o.n);
    let mut failures: HashMap<String, usize> = HashMap::new();
    let (mut started, mut finished) = (0usize, 0usize);
    let t0 = Instant::now();
    let mut last_done = t0;
    let mut next_sweep = t0 + Duration::from_millis(100);
    while finished < o.n {
        let now = Instant::now();
        while in_flight.len() < o.concurrency.max(1) && started < o.n {
            let id = parse_identity(&format!("{}{}", o.id_prefix, started + 1))
                .map_err(Error::Config)?;
            let mut ic = cfg.initiator(&peer, id, o.natt_port);
            ic.initial_contact = false;
            let local = locals[started % locals.len()];
            started += 1;
            match ep.initiate(now, local, o.target, Arc::new(ic)) {
                Ok(sa) => {
                    in_flight.insert(sa, now);
                }
                Err(e) => {
                    *failures.entry(format!("initiate: {e}")).or_default() += 1;
                    finished += 1;
                }
            }
        }
        sockets.flush(&mut ep).await;
        if finished >= o.n {
            break;
        }
        let deadline = [ep.poll_timeout(), Some(next_sweep)]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            d = sockets.rx.recv() => match d {
                Some(d) => driver::feed(&mut ep, d, &mut sockets.rx),
                None => break,
            },
            _ = driver::sleep_until(deadline) => ep.handle_timeout(Instant::now()),
        }
        let now = Instant::now();
        while let Some(ev) = ep.poll() {
            match ev {
                Event::IkeSaEstablished { ike_sa, .. } => {
                    if let Some(t) = in_flight.remove(&ike_sa) {
                        latencies.push(now - t);
                        finished += 1;
                        last_done = now;
                        if o.delete {
                            let _ = ep.delete_ike_sa(now, ike_sa);
                        }
                    }
                }
                Event::IkeSaDeleted { ike_sa, reason }
                    if reason != DeleteReason::Rekeyed && in_flight.remove(&ike_sa).is_some() =>
                {
                    *failures.entry(format!("{reason:?}")).or_default() += 1;
                    finished += 1;
                }
                _ => {}
            }
        }
        if now >= next_sweep {
            next_sweep = now + Duration::from_millis(100);
            let expired: Vec<IkeSaId> = in_flight
                .iter()
                .filter(|(_, t)| now - **t > o.timeout)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                in_flight.remove(&id);
                let _ = ep.delete_ike_sa(now, id);
                *failures.entry("timeout".into()).or_default() += 1;
                finished += 1;
            }
        }
    }
    sockets.flush(&mut ep).await;
    latencies.sort();
    let failed = failures.values().sum();
    Ok(BenchReport {
        ok: latencies.len(),
        failed,
        elapsed: last_done - t0,
        latencies,
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&v, 0.0), Duration::from_millis(1));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
        let one = [Duration::from_millis(7)];
        assert_eq!(quantile(&one, 0.99), Duration::from_millis(7));
    }

    #[test]
    fn rate_is_successes_over_elapsed() {
        let r = BenchReport {
            ok: 500,
            failed: 0,
            elapsed: Duration::from_millis(250),
            latencies: vec![],
            failures: HashMap::new(),
        };
        assert!((r.setups_per_sec() - 2000.0).abs() < 1e-9);
    }
}
