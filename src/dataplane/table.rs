//! The SA table the workers read: an immutable snapshot swapped atomically on every
//! change (arc-swap), so the per-packet lookup takes no lock. Inbound by SPI in a hash
//! map (RFC 4303 3.4.2); outbound by destination: host selectors (virtual IPs) in a hash
//! map, wider selectors in a short list searched longest-prefix-first.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ike::esp::{InboundSa, OutboundSa};
use ike::{Spi, TrafficSelector};

/// An inbound SA and what the worker needs besides.
#[derive(Debug)]
pub struct InboundEntry {
    pub sa: InboundSa,
    /// The CHILD SA this belongs to, named by its inbound SPI (stable across the SA's
    /// life; what rekey requests carry).
    pub child: Spi,
    pub udp_encap: bool,
    /// The peer's selectors (allowed inner sources) and ours (allowed destinations).
    pub remote_ts: Vec<TrafficSelector>,
    pub local_ts: Vec<TrafficSelector>,
}

/// An outbound SA, with the outer addresses its packets use.
#[derive(Debug)]
pub struct OutboundEntry {
    pub sa: OutboundSa,
    pub child: Spi,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub udp_encap: bool,
    /// Our selectors (allowed inner sources) and the peer's (allowed destinations).
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// Some selector narrows protocol or ports: packets routed here by destination
    /// are checked against the whole selectors before encryption (RFC 4301 5.1).
    pub narrow: bool,
    /// The longest inner packet whose ESP packet on this SA, with its outer IP (and UDP)
    /// header, fits the outer path MTU.
    pub max_inner: usize,
}

/// One routable selector range.
#[derive(Debug, Clone)]
pub struct Range {
    pub start: IpAddr,
    pub end: IpAddr,
    pub out: Arc<OutboundEntry>,
}

/// A snapshot of every installed SA.
#[derive(Debug, Default, Clone)]
pub struct Tables {
    pub inbound: HashMap<u32, Arc<InboundEntry>>,
    pub hosts: HashMap<IpAddr, Arc<OutboundEntry>>,
    /// Wider selectors, narrowest first.
    pub ranges: Vec<Range>,
    /// Remote outer address of every UDP-encapsulated child, for NAT keepalives.
    pub keepalive: Vec<(SocketAddr, SocketAddr)>,
    /// Rekeys we answered: old outbound SPI -> the new outbound SA that takes over its
    /// routes when the old pair is deleted (RFC 7296 2.8).
    pub pending: HashMap<u32, Arc<OutboundEntry>>,
    /// Deleted inbound SPIs still accepted until the instant given (packets the peer
    /// sent before it switched to the new SA are still in flight); housekeeping drops them.
    pub linger: Vec<(u32, std::time::Instant)>,
    /// The outbound SA of every CHILD SA whose inbound SA is in `inbound`, by that
    /// inbound SPI, whether it carries traffic or not (a rekeyed or redundant one).
    pub outbound: HashMap<u32, Arc<OutboundEntry>>,
}

/// Which outbound SA carries traffic once a CHILD SA is rekeyed (RFC 7296 2.8, 2.8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// We initiated the rekey: the peer has the new inbound SA, send on the new SA now.
    Now,
    /// We answered the rekey: the initiator installs its new inbound SA only when our
    /// response arrives, so the old SA carries traffic until the old pair is deleted.
    AtDelete,
    /// The redundant SA of a simultaneous rekey (2.8.1), deleted by us at once: accept
    /// on it, never send on it (the peer's new SA takes over when the old pair goes).
    Never,
}

impl Handover {
    /// From `Event::ChildSaRekeyed`'s `initiator` and `redundant`.
    pub fn of(initiator: bool, redundant: bool) -> Self {
        match (initiator, redundant) {
            (_, true) => Handover::Never,
            (true, false) => Handover::Now,
            (false, false) => Handover::AtDelete,
        }
    }
}

fn ip_le(a: &IpAddr, b: &IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a <= b,
        (IpAddr::V6(a), IpAddr::V6(b)) => a <= b,
        _ => false,
    }
}

fn range_size(r: &Range) -> u128 {
    match (r.start, r.end) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(b).wrapping_sub(u32::from(a))) as u128,
        (IpAddr::V6(a), IpAddr::V6(b)) => u128::from(b).wrapping_sub(u128::from(a)),
        _ => u128::MAX,
    }
}

impl Tables {
    /// The outbound SA for a destination address.
    pub fn route(&self, dst: &IpAddr) -> Option<&Arc<OutboundEntry>> {
        if let Some(e) = self.hosts.get(dst) {
            return Some(e);
        }
        self.ranges
            .iter()
            .find(|r| ip_le(&r.start, dst) && ip_le(dst, &r.end))
            .map(|r| &r.out)
    }

    /// Points the remote selectors at `out` (replacing whatever routed them before).
    pub fn add_routes(&mut self, remote_ts: &[TrafficSelector], out: &Arc<OutboundEntry>) {
        for ts in remote_ts {
            if ts.start == ts.end {
                self.hosts.insert(ts.start, out.clone());
            } else {
                self.ranges
                    .retain(|r| !(r.start == ts.start && r.end == ts.end));
                self.ranges.push(Range {
                    start: ts.start,
                    end: ts.end,
                    out: out.clone(),
                });
            }
        }
        self.ranges.sort_by_key(range_size);
        self.rebuild_keepalive();
    }

    /// Removes routes that still use the outbound SA `spi`.
    pub fn remove_routes_of(&mut self, spi: Spi) {
        self.hosts.retain(|_, e| e.sa.spi() != spi);
        self.ranges.retain(|r| r.out.sa.spi() != spi);
        self.rebuild_keepalive();
    }

    /// Replaces every route using outbound SA `old` with `new` (rekey hand-over: the new
    /// outbound SA carries traffic from the moment it is installed).
    pub fn replace_outbound(&mut self, old: Spi, new: &Arc<OutboundEntry>) {
        for e in self.hosts.values_mut() {
            if e.sa.spi() == old {
                *e = new.clone();
            }
        }
        for r in self.ranges.iter_mut() {
            if r.out.sa.spi() == old {
                r.out = new.clone();
            }
        }
        self.rebuild_keepalive();
    }

    fn rebuild_keepalive(&mut self) {
        let mut v: Vec<(SocketAddr, SocketAddr)> = self
            .hosts
            .values()
            .chain(self.ranges.iter().map(|r| &r.out))
            .filter(|e| e.udp_encap)
            .map(|e| (e.local, e.remote))
            .collect();
        v.sort();
        v.dedup();
        self.keepalive = v;
    }

    /// The outbound SA of a child, found by its inbound SPI.
    pub fn outbound_of_child(&self, child: Spi) -> Option<Arc<OutboundEntry>> {
        self.outbound.get(&child.0).cloned()
    }

    /// Installs a CHILD SA pair: its inbound SPI is accepted and its remote traffic
    /// selectors are routed into it.
    pub fn install(&mut self, inb: Arc<InboundEntry>, out: Arc<OutboundEntry>) {
        self.add_routes(&out.remote_ts.clone(), &out);
        self.inbound.insert(inb.sa.spi().0, inb);
        self.outbound.insert(out.child.0, out);
    }

    /// A rekeyed CHILD SA (RFC 7296 2.8): the new inbound SA accepts at once; the new
    /// outbound SA takes the old one's routes as `handover` says. Routes named by the
    /// new selectors that nothing carries go to the new SA at once (not a redundant one).
    pub fn rekeyed(
        &mut self,
        old_inbound: Spi,
        inb: Arc<InboundEntry>,
        out: Arc<OutboundEntry>,
        handover: Handover,
    ) {
        self.inbound.insert(inb.sa.spi().0, inb);
        self.outbound.insert(out.child.0, out.clone());
        if handover == Handover::Never {
            return;
        }
        let old = self.outbound_of_child(old_inbound);
        match old {
            Some(old) if handover == Handover::AtDelete => {
                self.pending.insert(old.sa.spi().0, out.clone());
            }
            Some(old) => self.replace_outbound(old.sa.spi(), &out),
            None => self.add_routes(&out.remote_ts.clone(), &out),
        }
        let missing: Vec<_> = out
            .remote_ts
            .iter()
            .filter(|ts| self.route(&ts.start).is_none())
            .cloned()
            .collect();
        self.add_routes(&missing, &out);
    }

    /// Deletes a CHILD SA pair (RFC 7296 1.4.1); a new outbound SA waiting for it (see
    /// [`Handover::AtDelete`]) takes over its routes. The inbound SA accepts packets
    /// already in flight until `until` ([`Tables::end_linger`]).
    pub fn remove(&mut self, inbound: Spi, outbound: Spi, until: std::time::Instant) {
        if self.inbound.contains_key(&inbound.0) {
            self.linger.push((inbound.0, until));
        } else {
            self.outbound.remove(&inbound.0);
        }
        if let Some(new) = self.pending.remove(&outbound.0) {
            self.replace_outbound(outbound, &new);
        }
        self.pending.retain(|_, e| e.sa.spi() != outbound);
        self.remove_routes_of(outbound);
    }

    /// Whether some deleted inbound SA's linger time is over at `now`.
    pub fn linger_over(&self, now: std::time::Instant) -> bool {
        self.linger.iter().any(|(_, d)| *d <= now)
    }

    /// Forgets the deleted CHILD SAs whose linger time is over at `now`.
    pub fn end_linger(&mut self, now: std::time::Instant) {
        let over: Vec<u32> = self
            .linger
            .iter()
            .filter(|(_, d)| *d <= now)
            .map(|(s, _)| *s)
            .collect();
        for s in &over {
            self.inbound.remove(s);
            self.outbound.remove(s);
        }
        self.linger.retain(|(_, d)| *d > now);
    }

    /// Whether the deleted inbound SA `spi` still accepts in-flight packets.
    pub fn lingering(&self, spi: Spi) -> bool {
        self.linger.iter().any(|(s, _)| *s == spi.0)
    }
}

/// The table entries of a CHILD SA pair (keys from `Event::ChildSaInstalled` /
/// `ChildSaRekeyed`), named by its inbound SPI; `outer_mtu` is the path MTU toward the
/// peer.
pub fn entries(
    c: &ike::ChildSa,
    lifetimes: ike::esp::Lifetimes,
    replay_window: u32,
    outer_mtu: u16,
) -> Result<(Arc<InboundEntry>, Arc<OutboundEntry>), ike::Error> {
    let child = c.inbound.spi;
    let inbound = InboundEntry {
        sa: InboundSa::new(&c.inbound, lifetimes, replay_window)?,
        child,
        udp_encap: c.udp_encap,
        remote_ts: c.remote_ts.clone(),
        local_ts: c.local_ts.clone(),
    };
    let sa = OutboundSa::new(&c.outbound, lifetimes)?;
    let ip = if c.remote.is_ipv4() { 20 } else { 40 };
    let outer = ip + if c.udp_encap { 8 } else { 0 };
    let outbound = OutboundEntry {
        max_inner: sa.max_inner_len((outer_mtu as usize).saturating_sub(outer)),
        sa,
        child,
        local: c.local,
        remote: c.remote,
        udp_encap: c.udp_encap,
        local_ts: c.local_ts.clone(),
        remote_ts: c.remote_ts.clone(),
        narrow: ike::esp::selectors_narrow(&c.local_ts) || ike::esp::selectors_narrow(&c.remote_ts),
    };
    Ok((Arc::new(inbound), Arc::new(outbound)))
}

/// Splits an address range into CIDR prefixes (for kernel routes).
pub fn range_to_cidrs(start: IpAddr, end: IpAddr) -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    match (start, end) {
        (IpAddr::V4(s), IpAddr::V4(e)) => {
            let (mut s, e) = (u32::from(s) as u64, u32::from(e) as u64);
            while s <= e && out.len() < 64 {
                let mut len = 32u8;
                while len > 0 {
                    let size = 1u64 << (32 - (len - 1));
                    if s % size != 0 || s + size - 1 > e {
                        break;
                    }
                    len -= 1;
                }
                if let Ok(n) = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(s as u32), len) {
                    out.push(ipnet::IpNet::V4(n));
                }
                s += 1u64 << (32 - len);
            }
        }
        (IpAddr::V6(s), IpAddr::V6(e)) => {
            let (mut s, e) = (u128::from(s), u128::from(e));
            while s <= e && out.len() < 64 {
                let mut len = 128u8;
                while len > 0 {
                    let bits = 128 - (len as u32 - 1);
                    if bits >= 128 {
                        if s == 0 && e == u128::MAX {
                            len -= 1;
                        }
                        break;
                    }
                    let size = 1u128 << bits;
                    if s % size != 0 || s.checked_add(size - 1).is_none_or(|x| x > e) {
                        break;
                    }
                    len -= 1;
                }
                if let Ok(n) = ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(s), len) {
                    out.push(ipnet::IpNet::V6(n));
                }
                let step = if len == 0 {
                    break;
                } else {
                    1u128 << (128 - len as u32)
                };
                match s.checked_add(step) {
                    Some(n) => s = n,
                    None => break,
                }
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ranges_split_into_cidrs() {
        let v: Vec<String> =
            range_to_cidrs("10.0.0.0".parse().unwrap(), "10.0.255.255".parse().unwrap())
                .iter()
                .map(|n| n.to_string())
                .collect();
        assert_eq!(v, vec!["10.0.0.0/16"]);
        let v: Vec<String> =
            range_to_cidrs("10.0.0.1".parse().unwrap(), "10.0.0.6".parse().unwrap())
                .iter()
                .map(|n| n.to_string())
                .collect();
        assert_eq!(
            v,
            vec!["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        let v = range_to_cidrs(
            "0.0.0.0".parse().unwrap(),
            "255.255.255.255".parse().unwrap(),
        );
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].to_string(), "0.0.0.0/0");
    }
}
