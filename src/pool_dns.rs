//! The load-balancing pool name (`dns.pool`, `pool.<domain>` by default; seed 003,
//! chapter 3) fed from the cluster's member status: every member that is up, least
//! loaded first, never a member that is down.
//!
//! A member's pool address is its cluster address (`service ipsec-ddns self`, which is
//! also its member ID) when that is an IP address; a member named by an FQDN is left out
//! of the pool (no resolution here). A member's load is its number of up records (one per
//! connected gateway), capacity unknown (all members equal). Standalone (no cluster) the
//! pool is this head-end alone: its specified IKE listen addresses.
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cluster::{ClusterHandle, Event, MemberState, MemberStatus};
use ddns::{PoolMember, Zone};
use tokio::sync::mpsc;

/// How often the pool follows the members' loads between member changes.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The pool address of a member ID: an IP address, or the IP of `ip:port`.
fn member_addr(member: &str) -> Option<IpAddr> {
    member
        .parse::<IpAddr>()
        .ok()
        .or_else(|| member.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// The pool view of the cluster: one entry per member with an IP address, up when the
/// cluster sees it up, load = its up records.
pub fn from_members(members: &[MemberStatus]) -> Vec<PoolMember> {
    members
        .iter()
        .filter_map(|m| {
            Some(PoolMember {
                addr: member_addr(&m.member)?,
                up: m.state == MemberState::Up,
                load: u32::try_from(m.records).unwrap_or(u32::MAX),
                capacity: 0,
            })
        })
        .collect()
}

/// Standalone: this head-end alone, at each specified IKE listen address (a wildcard
/// listen address cannot be handed out and is left out).
pub fn standalone(listen: &[IpAddr]) -> Vec<PoolMember> {
    listen
        .iter()
        .filter(|a| !a.is_unspecified())
        .map(|&addr| PoolMember {
            addr,
            up: true,
            load: 0,
            capacity: 0,
        })
        .collect()
}

async fn refresh(zone: &Zone, h: &ClusterHandle) -> bool {
    match h.members().await {
        Ok(m) => {
            zone.set_pool(from_members(&m));
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "pool: cluster members unavailable");
            false
        }
    }
}

/// Sits between the cluster's events and their consumer: refreshes the zone's pool at
/// once on every member change and every [`REFRESH`] otherwise, and passes every event
/// on unchanged. Ends when the cluster's event stream ends.
pub fn follow_cluster(
    zone: Zone,
    h: ClusterHandle,
    mut ev: mpsc::UnboundedReceiver<Event>,
) -> mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                e = ev.recv() => {
                    let Some(e) = e else { break };
                    let member_change = matches!(
                        e,
                        Event::MemberUp(_) | Event::MemberDown(_) | Event::MemberLeft(_)
                    );
                    // The consumer may be gone (no DNS); the pool still follows.
                    let _ = tx.send(e);
                    if member_change {
                        refresh(&zone, &h).await;
                    }
                }
                _ = tick.tick() => {
                    refresh(&zone, &h).await;
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(member: &str, state: MemberState, records: usize) -> MemberStatus {
        MemberStatus {
            member: member.into(),
            state,
            last_seen_ms_ago: Some(0),
            incarnation: 1,
            records,
            is_self: false,
            info: None,
        }
    }

    #[test]
    fn members_become_pool_entries_with_state_and_load() {
        let p = from_members(&[
            st("192.0.2.1", MemberState::Up, 7),
            st("192.0.2.2", MemberState::Down, 0),
            st("[2001:db8::3]:4500", MemberState::Up, 2),
            st("he3.example.net", MemberState::Up, 0),
        ]);
        assert_eq!(p.len(), 3, "the FQDN member is left out: {p:?}");
        assert_eq!(p[0].addr, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert!(p[0].up);
        assert_eq!(p[0].load, 7);
        assert_eq!(p[1].addr, "192.0.2.2".parse::<IpAddr>().unwrap());
        assert!(!p[1].up, "a down member is marked down");
        assert_eq!(p[2].addr, "2001:db8::3".parse::<IpAddr>().unwrap());
        assert_eq!(p[2].load, 2);
    }

    #[test]
    fn standalone_pool_is_this_member_without_wildcards() {
        let l: Vec<IpAddr> = vec![
            "0.0.0.0".parse().unwrap(),
            "192.0.2.9".parse().unwrap(),
            "::".parse().unwrap(),
        ];
        let p = standalone(&l);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].addr, l[1]);
        assert!(p[0].up);
    }
}
