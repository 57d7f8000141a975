//! The load-balancing pool name (`dns.pool`, `pool.<domain>` by default; seed 003,
//! chapter 3) fed from the cluster's member status: every member that is up, least
//! loaded relative to its capacity first, never a member that is down.
//!
//! Each member publishes its [`Reach`] in its cluster `MemberInfo`: its pool addresses
//! (outside, where routers reach its IKE: `dns.pool_address`, else its specified
//! `ike.listen` addresses) and its capacity (`dns.pool_capacity`, else the size of its
//! address pool). A member's load is its number of up records (one per connected
//! gateway). A member with no free capacity (load >= capacity) is still answered, after
//! every member with room: a full cluster still hands out live members, never an empty
//! answer. A member that has not published its info yet (an older build) is answered at
//! its cluster address when that is an IP address. Standalone (no cluster) the pool is
//! this head-end alone, at its reach addresses.
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

/// Where routers reach this member and how many tunnels it takes: what it publishes for
/// the pool name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// Pool addresses (outside).
    pub addrs: Vec<IpAddr>,
    /// Most tunnels (0: unknown).
    pub capacity: u32,
}

impl Reach {
    /// `pool_address` if set, else the specified (not wildcard) IKE listen addresses;
    /// `pool_capacity` if set, else the number of addresses in `pool_v4` (else `pool_v6`).
    pub fn new(
        pool_address: &[IpAddr],
        ike_listen: &[IpAddr],
        pool_capacity: Option<u32>,
        pool_v4_prefix: Option<u8>,
        pool_v6_prefix: Option<u8>,
    ) -> Reach {
        let addrs = if pool_address.is_empty() {
            ike_listen
                .iter()
                .copied()
                .filter(|a| !a.is_unspecified())
                .collect()
        } else {
            pool_address.to_vec()
        };
        let hosts = |bits: u32, prefix: u8| -> u32 {
            let free = bits.saturating_sub(u32::from(prefix));
            if free >= 32 {
                u32::MAX
            } else {
                // The network and broadcast addresses are not leased.
                ((1u64 << free).saturating_sub(2).max(1)) as u32
            }
        };
        let capacity = pool_capacity.unwrap_or_else(|| match (pool_v4_prefix, pool_v6_prefix) {
            (Some(p), _) => hosts(32, p),
            (None, Some(p)) => hosts(128, p),
            (None, None) => 0,
        });
        Reach { addrs, capacity }
    }
}

/// The pool view of the cluster: one entry per pool address of each member, up when the
/// cluster sees it up, load = its up records, capacity as it published.
pub fn from_members(members: &[MemberStatus]) -> Vec<PoolMember> {
    let mut out = Vec::new();
    for m in members {
        let (addrs, capacity) = match &m.info {
            Some(i) if !i.ike_addrs.is_empty() => (i.ike_addrs.clone(), i.capacity),
            _ => (member_addr(&m.member).into_iter().collect(), 0),
        };
        for addr in addrs {
            out.push(PoolMember {
                addr,
                up: m.state == MemberState::Up,
                load: u32::try_from(m.records).unwrap_or(u32::MAX),
                capacity,
            });
        }
    }
    out
}

/// Standalone: this head-end alone, at its reach addresses.
pub fn standalone(reach: &Reach) -> Vec<PoolMember> {
    reach
        .addrs
        .iter()
        .map(|&addr| PoolMember {
            addr,
            up: true,
            load: 0,
            capacity: reach.capacity,
        })
        .collect()
}

async fn refresh(zone: &Zone, h: &ClusterHandle, reach: &Reach) -> bool {
    // Cheap when unchanged: the cluster replicates it only when it changes.
    if let Err(e) = h
        .set_member_reach(reach.addrs.clone(), reach.capacity)
        .await
    {
        tracing::warn!(error = %e, "pool: cannot publish this member's pool addresses");
    }
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

/// Sits between the cluster's events and their consumer: publishes this member's
/// [`Reach`], refreshes the zone's pool at once on every member change and every
/// [`REFRESH`] otherwise, and passes every event on unchanged. Ends when the cluster's
/// event stream ends.
pub fn follow_cluster(
    zone: Zone,
    h: ClusterHandle,
    reach: Reach,
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
                        refresh(&zone, &h, &reach).await;
                    }
                }
                _ = tick.tick() => {
                    refresh(&zone, &h, &reach).await;
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_info(mut s: MemberStatus, addrs: &[&str], capacity: u32) -> MemberStatus {
        s.info = Some(cluster::MemberInfo {
            ike_addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            capacity,
            counters: Default::default(),
        });
        s
    }

    #[test]
    fn published_outside_addresses_and_capacity_replace_the_member_id() {
        let p = from_members(&[
            with_info(st("10.60.0.1", MemberState::Up, 3), &["198.51.100.1"], 10),
            with_info(
                st("10.60.0.2", MemberState::Down, 0),
                &["198.51.100.2", "2001:db8::2"],
                0,
            ),
            st("10.60.0.3", MemberState::Up, 1),
        ]);
        let addrs: Vec<String> = p.iter().map(|m| m.addr.to_string()).collect();
        assert_eq!(
            addrs,
            ["198.51.100.1", "198.51.100.2", "2001:db8::2", "10.60.0.3"]
        );
        assert_eq!((p[0].load, p[0].capacity, p[0].up), (3, 10, true));
        assert!(!p[1].up && !p[2].up);
        assert_eq!(p[3].capacity, 0, "no info yet: capacity unknown");
    }

    #[test]
    fn reach_defaults_to_specified_listen_addresses_and_pool_size() {
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let out: IpAddr = "198.51.100.7".parse().unwrap();
        let r = Reach::new(&[], &[any, out], None, Some(24), None);
        assert_eq!(r.addrs, vec![out]);
        assert_eq!(r.capacity, 254);
        let set: IpAddr = "203.0.113.1".parse().unwrap();
        let r = Reach::new(&[set], &[out], Some(40), Some(24), None);
        assert_eq!((r.addrs, r.capacity), (vec![set], 40));
        assert_eq!(
            Reach::new(&[], &[], None, None, Some(64)).capacity,
            u32::MAX
        );
        assert_eq!(Reach::new(&[], &[], None, None, None).capacity, 0);
    }

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
        let p = standalone(&Reach::new(&[], &l, None, None, None));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].addr, l[1]);
        assert!(p[0].up);
    }
}
