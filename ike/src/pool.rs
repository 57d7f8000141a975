//! Virtual address pool for the configuration payload (RFC 7296 3.15, 3.15.4).
//!
//! Invariants a head-end relies on:
//! - a lease is never held by two live IKE SAs at once;
//! - an identity that reconnects gets its previous address back when it is free;
//! - leases are released when their IKE SA goes away.
//!
//! Allocation is O(1) amortised: addresses never handed out are taken from a cursor,
//! released addresses from a free list; the identity memory is a hash map.
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::PoolConfig;
use crate::error::Error;
use crate::event::{Identity, IkeSaId};

/// One address family range, as offsets from the network address.
#[derive(Debug)]
struct Range {
    base: u128,
    /// First and last usable offsets (inclusive).
    first: u128,
    last: u128,
    v6: bool,
    /// Next never-used offset.
    cursor: u128,
    /// The cursor ran past the end of a range reaching `u128::MAX` (an `::/0` pool).
    fresh_done: bool,
    /// Released addresses, reused in release order.
    free: VecDeque<u128>,
}

impl Range {
    fn v4(net: ipnet::Ipv4Net) -> Option<Self> {
        let base = u128::from(u32::from(net.network()));
        let size = 1u128 << (32 - u32::from(net.prefix_len()));
        // Skip the network and broadcast addresses where the prefix has room for them.
        let (first, last) = if size >= 4 {
            (1, size - 2)
        } else {
            (0, size - 1)
        };
        Some(Self {
            base,
            first,
            last,
            v6: false,
            cursor: first,
            fresh_done: false,
            free: VecDeque::new(),
        })
    }

    fn v6(net: ipnet::Ipv6Net) -> Option<Self> {
        let base = u128::from(net.network());
        let bits = 128 - u32::from(net.prefix_len());
        let last = if bits >= 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        };
        let first = if last >= 2 { 1 } else { 0 };
        Some(Self {
            base,
            first,
            last,
            v6: true,
            cursor: first,
            fresh_done: false,
            free: VecDeque::new(),
        })
    }

    fn addr(&self, off: u128) -> IpAddr {
        let v = self.base.wrapping_add(off);
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(v))
        } else {
            // Offsets are bounded by the prefix, so this fits in 32 bits.
            IpAddr::V4(Ipv4Addr::from(v as u32))
        }
    }

    fn offset(&self, a: IpAddr) -> Option<u128> {
        let v = match (a, self.v6) {
            (IpAddr::V4(a), false) => u128::from(u32::from(a)),
            (IpAddr::V6(a), true) => u128::from(a),
            _ => return None,
        };
        let off = v.checked_sub(self.base)?;
        (off >= self.first && off <= self.last).then_some(off)
    }
}

/// The address pool. One per responder endpoint.
#[derive(Debug)]
pub struct Pool {
    v4: Option<Range>,
    v6: Option<Range>,
    dns: Vec<IpAddr>,
    /// Address -> owning IKE SA.
    leases: HashMap<IpAddr, IkeSaId>,
    /// IKE SA -> its addresses.
    by_owner: HashMap<IkeSaId, Vec<IpAddr>>,
    /// Identity -> last addresses it held (v4, v6).
    remembered: HashMap<Identity, (Option<IpAddr>, Option<IpAddr>)>,
}

impl Pool {
    pub fn new(cfg: &PoolConfig) -> Self {
        Self {
            v4: cfg.v4.and_then(Range::v4),
            v6: cfg.v6.and_then(Range::v6),
            dns: cfg.dns.clone(),
            leases: HashMap::new(),
            by_owner: HashMap::new(),
            remembered: HashMap::new(),
        }
    }

    /// DNS servers to announce (INTERNAL_IP4_DNS / INTERNAL_IP6_DNS).
    pub fn dns(&self) -> &[IpAddr] {
        &self.dns
    }

    pub fn has_v4(&self) -> bool {
        self.v4.is_some()
    }

    pub fn has_v6(&self) -> bool {
        self.v6.is_some()
    }

    /// Number of addresses currently leased.
    pub fn leased(&self) -> usize {
        self.leases.len()
    }

    /// The IKE SA holding `addr`, if any.
    pub fn owner(&self, addr: IpAddr) -> Option<IkeSaId> {
        self.leases.get(&addr).copied()
    }

    /// Addresses held by `owner`.
    pub fn addresses(&self, owner: IkeSaId) -> &[IpAddr] {
        self.by_owner.get(&owner).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Lease an address of the given family to `owner` for `identity` (RFC 7296 3.15.4).
    /// An owner asking twice for the same family gets the lease it already holds.
    /// Exhaustion is [`Error::InternalAddressFailure`].
    pub fn allocate(
        &mut self,
        owner: IkeSaId,
        identity: &Identity,
        v6: bool,
    ) -> Result<IpAddr, Error> {
        if let Some(held) = self.by_owner.get(&owner) {
            if let Some(a) = held.iter().find(|a| a.is_ipv6() == v6) {
                return Ok(*a);
            }
        }
        let remembered = self
            .remembered
            .get(identity)
            .and_then(|(a4, a6)| if v6 { *a6 } else { *a4 });
        let range = if v6 {
            self.v6.as_mut()
        } else {
            self.v4.as_mut()
        };
        let range = range.ok_or(Error::InternalAddressFailure)?;
        let addr = match remembered
            .filter(|a| !self.leases.contains_key(a) && range.offset(*a).is_some())
        {
            Some(a) => a,
            None => {
                // Fresh addresses first, so remembered ones stay free for their identity longest.
                let mut pick = None;
                while !range.fresh_done && range.cursor <= range.last {
                    let a = range.addr(range.cursor);
                    match range.cursor.checked_add(1) {
                        Some(c) => range.cursor = c,
                        None => range.fresh_done = true,
                    }
                    if !self.leases.contains_key(&a) {
                        pick = Some(a);
                        break;
                    }
                }
                if pick.is_none() {
                    while let Some(off) = range.free.pop_front() {
                        let a = range.addr(off);
                        if !self.leases.contains_key(&a) {
                            pick = Some(a);
                            break;
                        }
                    }
                }
                pick.ok_or(Error::InternalAddressFailure)?
            }
        };
        self.leases.insert(addr, owner);
        self.by_owner.entry(owner).or_default().push(addr);
        let mem = self.remembered.entry(identity.clone()).or_default();
        if v6 {
            mem.1 = Some(addr);
        } else {
            mem.0 = Some(addr);
        }
        Ok(addr)
    }

    /// Release every lease of `owner` (its IKE SA went away).
    pub fn release(&mut self, owner: IkeSaId) -> Vec<IpAddr> {
        let addrs = self.by_owner.remove(&owner).unwrap_or_default();
        for a in &addrs {
            if self.leases.get(a) == Some(&owner) {
                self.leases.remove(a);
                let range = if a.is_ipv6() {
                    self.v6.as_mut()
                } else {
                    self.v4.as_mut()
                };
                if let Some(r) = range {
                    if let Some(off) = r.offset(*a) {
                        r.free.push_back(off);
                    }
                }
            }
        }
        addrs
    }

    /// Move the leases of `from` to `to` (IKE SA rekey, RFC 7296 2.8: the CHILD SAs and
    /// their addresses move to the new IKE SA).
    pub fn transfer(&mut self, from: IkeSaId, to: IkeSaId) {
        if let Some(addrs) = self.by_owner.remove(&from) {
            for a in &addrs {
                self.leases.insert(*a, to);
            }
            self.by_owner.entry(to).or_default().extend(addrs);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        Identity::Fqdn(s.into())
    }

    fn pool(v4: &str) -> Pool {
        Pool::new(&PoolConfig {
            v4: Some(v4.parse().unwrap()),
            v6: Some("fd00::/126".parse().unwrap()),
            dns: vec![],
        })
    }

    #[test]
    fn never_leases_one_address_twice() {
        let mut p = pool("10.0.0.0/29"); // 6 usable
        let mut seen = std::collections::HashSet::new();
        for i in 0..6 {
            let a = p
                .allocate(IkeSaId(i), &id(&format!("r{i}")), false)
                .unwrap();
            assert!(seen.insert(a), "{a} handed out twice");
            assert_ne!(a, "10.0.0.0".parse::<IpAddr>().unwrap());
            assert_ne!(a, "10.0.0.7".parse::<IpAddr>().unwrap());
        }
        assert_eq!(
            p.allocate(IkeSaId(99), &id("x"), false),
            Err(Error::InternalAddressFailure)
        );
        // A release frees exactly one address, for the next comer.
        let freed = p.release(IkeSaId(3));
        assert_eq!(freed.len(), 1);
        let again = p.allocate(IkeSaId(100), &id("y"), false).unwrap();
        assert_eq!(again, freed[0]);
        assert_eq!(p.owner(again), Some(IkeSaId(100)));
        assert_eq!(
            p.allocate(IkeSaId(101), &id("z"), false),
            Err(Error::InternalAddressFailure)
        );
    }

    #[test]
    fn reconnecting_identity_gets_its_address_back() {
        let mut p = pool("10.0.0.0/24");
        let a = p.allocate(IkeSaId(1), &id("alice"), false).unwrap();
        let b = p.allocate(IkeSaId(2), &id("bob"), false).unwrap();
        p.release(IkeSaId(1));
        let _c = p.allocate(IkeSaId(3), &id("carol"), false).unwrap();
        let a2 = p.allocate(IkeSaId(4), &id("alice"), false).unwrap();
        assert_eq!(a, a2);
        // Not when someone else holds it: bob's address stays bob's.
        let mut p2 = pool("10.0.0.0/30"); // 2 usable
        let x = p2.allocate(IkeSaId(1), &id("alice"), false).unwrap();
        p2.release(IkeSaId(1));
        let y = p2.allocate(IkeSaId(2), &id("bob"), false).unwrap();
        assert_ne!(x, y, "fresh addresses are used before remembered ones");
        let z = p2.allocate(IkeSaId(3), &id("carol"), false).unwrap();
        assert_eq!(
            z, x,
            "remembered address is given away only when nothing else is left"
        );
        let w = p2.allocate(IkeSaId(4), &id("alice"), false);
        assert_eq!(w, Err(Error::InternalAddressFailure));
        assert_ne!(b, a);
    }

    #[test]
    fn same_owner_same_family_is_idempotent_and_v6_works() {
        let mut p = pool("10.0.0.0/24");
        let a = p.allocate(IkeSaId(1), &id("a"), false).unwrap();
        assert_eq!(p.allocate(IkeSaId(1), &id("a"), false).unwrap(), a);
        let v6 = p.allocate(IkeSaId(1), &id("a"), true).unwrap();
        assert!(v6.is_ipv6());
        assert_eq!(p.addresses(IkeSaId(1)).len(), 2);
        // fd00::/126: offsets 1..=3 usable
        for i in 2..4 {
            p.allocate(IkeSaId(i), &id(&format!("v{i}")), true).unwrap();
        }
        assert_eq!(
            p.allocate(IkeSaId(9), &id("v9"), true),
            Err(Error::InternalAddressFailure)
        );
        assert_eq!(p.release(IkeSaId(1)).len(), 2);
        assert_eq!(p.leased(), 2);
    }

    #[test]
    fn transfer_moves_leases_on_rekey() {
        let mut p = pool("10.0.0.0/24");
        let a = p.allocate(IkeSaId(1), &id("a"), false).unwrap();
        p.transfer(IkeSaId(1), IkeSaId(2));
        assert_eq!(p.owner(a), Some(IkeSaId(2)));
        assert!(p.release(IkeSaId(1)).is_empty());
        assert_eq!(p.owner(a), Some(IkeSaId(2)));
        assert_eq!(p.release(IkeSaId(2)), vec![a]);
        assert_eq!(p.owner(a), None);
    }

    #[test]
    fn tiny_and_huge_prefixes() {
        // /32: the one address; /31: both (no network/broadcast to skip).
        let mut p = Pool::new(&PoolConfig {
            v4: Some("10.9.9.9/32".parse().unwrap()),
            v6: Some("::/0".parse().unwrap()),
            dns: vec![],
        });
        assert_eq!(
            p.allocate(IkeSaId(1), &id("a"), false).unwrap(),
            "10.9.9.9".parse::<IpAddr>().unwrap()
        );
        assert!(p.allocate(IkeSaId(2), &id("b"), false).is_err());
        let a = p.allocate(IkeSaId(1), &id("a"), true).unwrap();
        let b = p.allocate(IkeSaId(2), &id("b"), true).unwrap();
        assert_ne!(a, b);
        let mut p = Pool::new(&PoolConfig {
            v4: Some("10.9.9.8/31".parse().unwrap()),
            v6: None,
            dns: vec![],
        });
        let x = p.allocate(IkeSaId(1), &id("a"), false).unwrap();
        let y = p.allocate(IkeSaId(2), &id("b"), false).unwrap();
        assert_ne!(x, y);
        assert!(p.allocate(IkeSaId(3), &id("c"), false).is_err());
    }

    #[test]
    fn no_family_configured_is_address_failure() {
        let mut p = Pool::new(&PoolConfig::default());
        assert_eq!(
            p.allocate(IkeSaId(1), &id("a"), false),
            Err(Error::InternalAddressFailure)
        );
    }
}
