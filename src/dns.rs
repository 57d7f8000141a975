//! Glue between the daemon and the embedded authoritative DNS server (`ddns`): parse
//! `[dns]`, start the server, and turn [`GatewayEvent`]s into zone changes so a tunnel
//! is answered as `<gateway-id>.<domain>` as soon as it is up (seed 003 ch. 4, step iii)
//! and stops being answered as soon as it is down.
//!
//! The cluster feeds replicated records into the same [`ddns::Zone`] (`Zone::apply`,
//! `remove_member`, `set_synced`, `set_pool`); this module only handles the local
//! member's own tunnels.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ddns::{DnsConfig, DnsServer, TunnelKey, Zone, ZoneConfig};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::event::GatewayEvent;

/// A running DNS service.
#[derive(Debug)]
pub struct DnsService {
    /// The zone: hand it to the cluster glue to apply replicated records.
    pub zone: Zone,
    /// The listeners (addresses, counters).
    pub server: DnsServer,
    /// This member's pool addresses and capacity (set by the daemon from `[dns]`,
    /// `[ike]` and `[pool]`).
    pub reach: crate::pool_dns::Reach,
    events: JoinHandle<()>,
}

impl DnsService {
    /// Stop consuming events and stop serving.
    pub async fn shutdown(self) {
        self.events.abort();
        self.server.shutdown().await;
    }
}

/// Parse the daemon's `[dns]` table (unknown keys rejected).
pub fn parse_config(table: &toml::Table) -> Result<DnsConfig, String> {
    toml::Value::Table(table.clone())
        .try_into::<DnsConfig>()
        .map_err(|e| format!("[dns]: {e}"))
}

/// Start the DNS server for `domain` (from `[dns] domain`, else the cluster's domain)
/// and follow `events`. `member` names this head-end in tunnel keys (its cluster
/// `self` address). `standalone`: no cluster, so the zone is complete at once; in a
/// cluster it stays SERVFAIL until the cluster glue calls `zone.set_synced(true)`.
pub async fn spawn(
    cfg: &DnsConfig,
    domain: &str,
    member: &str,
    standalone: bool,
    events: broadcast::Receiver<GatewayEvent>,
) -> Result<DnsService, ddns::Error> {
    let domain = cfg.domain.as_deref().unwrap_or(domain);
    let zone = Zone::new(ZoneConfig::new(cfg, domain)?);
    if standalone {
        // The empty zone's serial is the start time (as a stamp), not 0: secondaries
        // compare serials per RFC 1982, and a jump from 0 to a time-derived serial can
        // exceed 2^31 and read as a decrease, after which they never transfer again.
        zone.note_stamp(stamp(SystemTime::now(), &mut 0));
        zone.set_synced(true);
    }
    let server = DnsServer::start(cfg, zone.clone()).await?;
    let events = tokio::spawn(follow(zone.clone(), member.to_owned(), events));
    Ok(DnsService {
        zone,
        server,
        reach: crate::pool_dns::Reach::default(),
        events,
    })
}

/// Stamp in the cluster's format: top 48 bits unix ms, low 16 logical; strictly
/// increasing per member even if the wall clock steps back.
fn stamp(at: SystemTime, last: &mut u64) -> u64 {
    let ms = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64;
    let s = ((ms & ((1 << 48) - 1)) << 16).max(*last + 1);
    *last = s;
    s
}

async fn follow(zone: Zone, member: String, mut events: broadcast::Receiver<GatewayEvent>) {
    let mut last = 0u64;
    loop {
        match events.recv().await {
            Ok(GatewayEvent::Up {
                tunnel,
                gateway_id,
                vips,
                at,
                ..
            }) => {
                let key = TunnelKey::new(member.clone(), tunnel.to_string());
                tracing::info!(%gateway_id, ?vips, "DNS: gateway answered");
                zone.upsert(key, gateway_id, vips, stamp(at, &mut last));
            }
            Ok(GatewayEvent::Down {
                tunnel,
                gateway_id,
                at,
                ..
            }) => {
                let key = TunnelKey::new(member.clone(), tunnel.to_string());
                tracing::info!(%gateway_id, "DNS: gateway no longer answered");
                zone.remove(&key, stamp(at, &mut last));
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::error!(
                    missed = n,
                    "DNS: gateway events lost (channel lagged); names may be stale \
                     until those tunnels change again"
                );
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_increase_even_when_the_clock_steps_back() {
        let mut last = 0;
        let t = UNIX_EPOCH + Duration::from_millis(1_000_000);
        let a = stamp(t, &mut last);
        let b = stamp(t - Duration::from_secs(10), &mut last);
        assert!(b > a);
        assert_eq!(a >> 16, 1_000_000);
    }

    #[test]
    fn dns_table_parses_and_rejects_unknown_keys() {
        let t: toml::Table = toml::from_str("port = 5353\nttl = 3").unwrap();
        let c = parse_config(&t).unwrap();
        assert_eq!((c.port, c.ttl), (5353, 3));
        let t: toml::Table = toml::from_str("prot = 5353").unwrap();
        assert!(parse_config(&t).is_err());
    }
}
