//! The SA table the workers read: an immutable snapshot swapped atomically on every
//! change (arc-swap), so the per-packet lookup takes no lock. Inbound by SPI in a hash
//! map (RFC 4303 3.4.2); outbound by destination: host selectors (virtual IPs) in a hash
//! map, wider selectors in a short list searched longest-prefix-first. Each destination
//! holds an ordered list of outbound SAs (several CHILD SAs to one peer whose selectors
//! differ in protocol or ports, RFC 4301 4.4.1); a packet goes on the first whose
//! selectors it matches ([`Tables::select`]).
use std::cell::RefCell;
use std::collections::HashMap;

/// The table's maps are looked up once or twice per packet: a fast keyed hash (ahash)
/// instead of SipHash. Keys are SPIs and addresses of installed SAs only.
type Map<K, V> = HashMap<K, V, ahash::RandomState>;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use ike::esp::{EspDrop, Flow, FragmentTable, InboundSa, OutboundSa};
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

impl OutboundEntry {
    /// Same selectors on both sides: a newer SA with them supersedes this one (a peer
    /// that reconnected), where different ones stand beside it (a sibling CHILD SA).
    fn same_selectors(&self, other: &OutboundEntry) -> bool {
        self.local_ts == other.local_ts && self.remote_ts == other.remote_ts
    }
}

/// The outbound SAs to one destination in SPD order (RFC 4301 4.4.1): install order,
/// a rekeyed SA taking its predecessor's place. Almost always one.
pub type Outs = Vec<Arc<OutboundEntry>>;

/// One routable selector range.
#[derive(Debug, Clone)]
pub struct Range {
    pub start: IpAddr,
    pub end: IpAddr,
    pub outs: Outs,
}

/// A snapshot of every installed SA.
#[derive(Debug, Default, Clone)]
pub struct Tables {
    pub inbound: Map<u32, Arc<InboundEntry>>,
    pub hosts: Map<IpAddr, Outs>,
    /// Wider selectors, narrowest first.
    pub ranges: Vec<Range>,
    /// Remote outer address of every UDP-encapsulated child, for NAT keepalives.
    pub keepalive: Vec<(SocketAddr, SocketAddr)>,
    /// Rekeys we answered: old outbound SPI -> the new outbound SA that takes over its
    /// routes when the old pair is deleted (RFC 7296 2.8).
    pub pending: Map<u32, Arc<OutboundEntry>>,
    /// Deleted inbound SPIs still accepted until the instant given (packets the peer
    /// sent before it switched to the new SA are still in flight); housekeeping drops them.
    pub linger: Vec<(u32, std::time::Instant)>,
    /// The outbound SA of every CHILD SA whose inbound SA is in `inbound`, by that
    /// inbound SPI, whether it carries traffic or not (a rekeyed or redundant one).
    pub outbound: Map<u32, Arc<OutboundEntry>>,
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

/// Puts `out` into a destination's list: in place of the same SA or of one with the
/// same selectors (superseded), else last.
fn add_to(list: &mut Outs, out: &Arc<OutboundEntry>) {
    match list
        .iter_mut()
        .find(|e| e.sa.spi() == out.sa.spi() || e.same_selectors(out))
    {
        Some(e) => *e = out.clone(),
        None => list.push(out.clone()),
    }
}

impl Tables {
    /// Every outbound SA whose selectors cover `dst`, in lookup order: the host's
    /// list, then the ranges containing it, narrowest first.
    pub fn candidates(&self, dst: IpAddr) -> impl Iterator<Item = &Arc<OutboundEntry>> {
        self.hosts.get(&dst).into_iter().flatten().chain(
            self.ranges
                .iter()
                .filter(move |r| ip_le(&r.start, &dst) && ip_le(&dst, &r.end))
                .flat_map(|r| r.outs.iter()),
        )
    }

    /// The first outbound SA routed to `dst`: where a packet that every SA's selectors
    /// admit goes.
    pub fn route(&self, dst: &IpAddr) -> Option<&Arc<OutboundEntry>> {
        self.candidates(*dst).next()
    }

    /// The outbound SA an inner packet to `dst` goes on (RFC 4301 5.1 step 1): the first
    /// candidate whose selectors (protocol, ports, our side's addresses) match it, with
    /// stateful fragment checking per SA (RFC 4301 7.4, `frags`, the worker's table;
    /// `now` is asked for fragments only); an SA whose selectors narrow neither protocol
    /// nor ports matches on the destination alone. The packet is parsed at most once, and
    /// not at all when the first candidate is such an SA (the common case: one SA per
    /// destination). `NoRoute` when no SA covers the destination, `BadFragment` for a
    /// fragment no sender produces; else the reason the last candidate refused it
    /// (`NonInitialFragment` if any refused it only for its missing ports).
    pub fn select(
        &self,
        dst: &IpAddr,
        pkt: &[u8],
        frags: &RefCell<FragmentTable>,
        now: impl Fn() -> Instant,
    ) -> Result<&Arc<OutboundEntry>, EspDrop> {
        let mut flow: Option<Flow> = None;
        let mut why = EspDrop::NoRoute;
        for out in self.candidates(*dst) {
            if !out.narrow {
                return Ok(out);
            }
            if flow.is_none() {
                flow = Some(ike::esp::flow_of(pkt).ok_or(EspDrop::TsMismatch)?);
            }
            let Some(f) = flow.as_ref() else {
                return Err(EspDrop::TsMismatch);
            };
            let v = ike::esp::check_outbound_flow(f, &out.local_ts, &out.remote_ts);
            match frags.borrow_mut().check(f, out.sa.spi().0, v, &now) {
                Ok(()) => return Ok(out),
                Err(EspDrop::BadFragment) => return Err(EspDrop::BadFragment),
                Err(d) if why != EspDrop::NonInitialFragment => why = d,
                Err(_) => {}
            }
        }
        Err(why)
    }

    /// Routes the remote selectors to `out` as well: beside the SAs already there, or in
    /// place of one with the same selectors (a reconnected peer's new SA supersedes its
    /// old one).
    pub fn add_routes(&mut self, remote_ts: &[TrafficSelector], out: &Arc<OutboundEntry>) {
        for ts in remote_ts {
            add_to(self.list_for(ts), out);
        }
        self.ranges.sort_by_key(range_size);
        self.rebuild_keepalive();
    }

    /// Routes the remote selectors that reach neither `out` nor the SA of child `old` to
    /// `out` (a rekeyed SA whose selectors the old one did not have).
    fn add_missing_routes(
        &mut self,
        remote_ts: &[TrafficSelector],
        out: &Arc<OutboundEntry>,
        old: Spi,
    ) {
        for ts in remote_ts {
            let list = self.list_for(ts);
            if !list
                .iter()
                .any(|e| e.child == old || e.sa.spi() == out.sa.spi())
            {
                add_to(list, out);
            }
        }
        self.ranges.sort_by_key(range_size);
        self.rebuild_keepalive();
    }

    /// The list of SAs for exactly this selector's addresses (made empty when new).
    fn list_for(&mut self, ts: &TrafficSelector) -> &mut Outs {
        if ts.start == ts.end {
            return self.hosts.entry(ts.start).or_default();
        }
        let i = match self
            .ranges
            .iter()
            .position(|r| r.start == ts.start && r.end == ts.end)
        {
            Some(i) => i,
            None => {
                self.ranges.push(Range {
                    start: ts.start,
                    end: ts.end,
                    outs: Vec::new(),
                });
                self.ranges.len() - 1
            }
        };
        &mut self.ranges[i].outs
    }

    /// Removes the outbound SA `spi` from every destination (its siblings stay).
    pub fn remove_routes_of(&mut self, spi: Spi) {
        self.hosts.retain(|_, l| {
            l.retain(|e| e.sa.spi() != spi);
            !l.is_empty()
        });
        self.ranges.retain_mut(|r| {
            r.outs.retain(|e| e.sa.spi() != spi);
            !r.outs.is_empty()
        });
        self.rebuild_keepalive();
    }

    /// Puts `new` in the place of outbound SA `old` wherever `old` is routed (rekey
    /// hand-over: the new outbound SA carries the old one's traffic from now on); the
    /// other SAs to those destinations are untouched.
    pub fn replace_outbound(&mut self, old: Spi, new: &Arc<OutboundEntry>) {
        let swap = |l: &mut Outs| {
            let Some(i) = l.iter().position(|e| e.sa.spi() == old) else {
                return;
            };
            if l.iter().any(|e| e.sa.spi() == new.sa.spi()) {
                l.remove(i);
            } else {
                l[i] = new.clone();
            }
        };
        for l in self.hosts.values_mut() {
            swap(l);
        }
        for r in self.ranges.iter_mut() {
            swap(&mut r.outs);
        }
        self.rebuild_keepalive();
    }

    /// Every routed outbound SA (once per destination it is routed to).
    fn routed(&self) -> impl Iterator<Item = &Arc<OutboundEntry>> {
        self.hosts
            .values()
            .flatten()
            .chain(self.ranges.iter().flat_map(|r| r.outs.iter()))
    }

    fn rebuild_keepalive(&mut self) {
        let mut v: Vec<(SocketAddr, SocketAddr)> = self
            .routed()
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
    /// selectors are routed into it, beside the other SAs to those destinations (a
    /// sibling CHILD SA with other protocols or ports) or in place of one with the same
    /// selectors (a reconnected peer's old SA).
    pub fn install(&mut self, inb: Arc<InboundEntry>, out: Arc<OutboundEntry>) {
        self.add_routes(&out.remote_ts.clone(), &out);
        self.inbound.insert(inb.sa.spi().0, inb);
        self.outbound.insert(out.child.0, out);
    }

    /// A rekeyed CHILD SA (RFC 7296 2.8): the new inbound SA accepts at once; the new
    /// outbound SA takes the old one's place as `handover` says: only that SA's, never a
    /// sibling's to the same destination. Destinations of the new selectors the old SA
    /// did not reach get the new SA at once (not a redundant one).
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
        self.add_missing_routes(&out.remote_ts.clone(), &out, old_inbound);
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
    let mut sa = OutboundSa::new(&c.outbound, lifetimes)?;
    let ip = if c.remote.is_ipv4() { 20 } else { 40 };
    let outer = ip + if c.udp_encap { 8 } else { 0 };
    let budget = (outer_mtu as usize).saturating_sub(outer);
    sa.fit_padding(budget);
    let outbound = OutboundEntry {
        max_inner: sa.max_inner_len(budget),
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
    use ike::esp::Lifetimes;
    use ike::{EncrAlg, EspKeys};

    const TCP: u8 = 6;
    const UDP: u8 = 17;
    const ICMP: u8 = 1;
    const VIP: &str = "10.99.0.7";

    fn ts(start: &str, end: &str, protocol: u8, ports: (u16, u16)) -> TrafficSelector {
        TrafficSelector {
            start: start.parse().unwrap(),
            end: end.parse().unwrap(),
            protocol,
            start_port: ports.0,
            end_port: ports.1,
        }
    }

    const ANY: (u16, u16) = (0, 65535);

    /// AES-256-GCM keys for SPI `spi`.
    fn keys(spi: u32) -> EspKeys {
        EspKeys {
            spi: Spi(spi),
            encr: EncrAlg::AesGcm16(256),
            encr_key: vec![7u8; 36].into(),
            integ: None,
            integ_key: Vec::new().into(),
            esn: false,
        }
    }

    /// The CHILD SA pair `child` (its inbound SPI) / `spi` (outbound), carrying `local`
    /// (inside) -> `remote` (peer) selectors.
    fn pair(
        child: u32,
        spi: u32,
        local: Vec<TrafficSelector>,
        remote: Vec<TrafficSelector>,
    ) -> (Arc<InboundEntry>, Arc<OutboundEntry>) {
        let inb = Arc::new(InboundEntry {
            sa: InboundSa::new(&keys(child), Lifetimes::default(), 64).unwrap(),
            child: Spi(child),
            udp_encap: true,
            remote_ts: remote.clone(),
            local_ts: local.clone(),
        });
        (inb, sa(child, spi, local, remote))
    }

    /// The outbound SA of [`pair`].
    fn sa(
        child: u32,
        spi: u32,
        local: Vec<TrafficSelector>,
        remote: Vec<TrafficSelector>,
    ) -> Arc<OutboundEntry> {
        Arc::new(OutboundEntry {
            sa: OutboundSa::new(&keys(spi), Lifetimes::default()).unwrap(),
            child: Spi(child),
            local: "192.0.2.1:4500".parse().unwrap(),
            remote: "192.0.2.2:4500".parse().unwrap(),
            udp_encap: true,
            max_inner: 1400,
            narrow: ike::esp::selectors_narrow(&local) || ike::esp::selectors_narrow(&remote),
            local_ts: local,
            remote_ts: remote,
        })
    }

    /// An IPv4 packet `src` -> `dst` with `l4` after the 20-octet header (fragment
    /// offset `frag` in 8-octet units).
    fn pkt(protocol: u8, src: &str, dst: &str, l4: &[u8], frag: u16) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[8] = 64;
        p[9] = protocol;
        p[12..16].copy_from_slice(&src.parse::<std::net::Ipv4Addr>().unwrap().octets());
        p[16..20].copy_from_slice(&dst.parse::<std::net::Ipv4Addr>().unwrap().octets());
        p.extend_from_slice(l4);
        p
    }

    fn tcp(sport: u16, dport: u16) -> Vec<u8> {
        let mut l4 = vec![0u8; 20];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4
    }

    /// The outbound SPI a packet from the inside to the peer's VIP goes on.
    fn chosen(t: &Tables, p: &[u8]) -> Result<u32, EspDrop> {
        let dst = IpAddr::V4(std::net::Ipv4Addr::new(p[16], p[17], p[18], p[19]));
        select(t, &dst, p)
    }

    fn select(t: &Tables, dst: &IpAddr, p: &[u8]) -> Result<u32, EspDrop> {
        let frags = RefCell::new(FragmentTable::new(64, 1));
        t.select(dst, p, &frags, Instant::now).map(|o| o.sa.spi().0)
    }

    /// The two children of the integration test: TCP port 5201 and ICMP from the
    /// inside network to one peer's virtual IP.
    fn siblings() -> (Tables, Arc<OutboundEntry>, Arc<OutboundEntry>) {
        let peer = vec![ts(VIP, VIP, 0, ANY)];
        let (tcp_in, tcp_sa) = pair(
            0x100,
            0x1001,
            vec![ts("10.9.0.0", "10.9.0.255", TCP, (5201, 5201))],
            peer.clone(),
        );
        let (icmp_in, icmp_sa) = pair(
            0x200,
            0x2001,
            vec![ts("10.9.0.0", "10.9.0.255", ICMP, ANY)],
            peer.clone(),
        );
        let mut t = Tables::default();
        t.install(tcp_in, tcp_sa.clone());
        t.install(icmp_in, icmp_sa.clone());
        (t, tcp_sa, icmp_sa)
    }

    #[test]
    fn one_sa_per_destination_is_taken_without_looking_at_the_packet() {
        let peer = vec![ts(VIP, VIP, 0, ANY)];
        let mut t = Tables::default();
        t.add_routes(
            &peer,
            &sa(
                1,
                0xa,
                vec![ts("10.9.0.0", "10.9.0.255", 0, ANY)],
                peer.clone(),
            ),
        );
        // Not even a parsable packet: the destination alone decides (the fast path).
        assert_eq!(select(&t, &VIP.parse().unwrap(), &[]), Ok(0xa));
        assert_eq!(
            select(&t, &"10.99.0.8".parse().unwrap(), &[]),
            Err(EspDrop::NoRoute)
        );
    }

    #[test]
    fn sibling_child_sas_to_one_destination_each_get_their_own_traffic() {
        let (t, _, _) = siblings();
        let echo = [8u8, 0, 0, 0, 0, 1, 0, 1];
        // iperf3's replies leave the inside server from port 5201.
        assert_eq!(
            chosen(&t, &pkt(TCP, "10.9.0.1", VIP, &tcp(5201, 40000), 0)),
            Ok(0x1001)
        );
        assert_eq!(
            chosen(&t, &pkt(ICMP, "10.9.0.1", VIP, &echo, 0)),
            Ok(0x2001)
        );
        // Neither child carries TCP from another port, UDP, or a source outside.
        for p in [
            pkt(TCP, "10.9.0.1", VIP, &tcp(80, 40000), 0),
            pkt(UDP, "10.9.0.1", VIP, &tcp(5201, 40000), 0),
            pkt(ICMP, "10.8.0.1", VIP, &echo, 0),
        ] {
            assert_eq!(chosen(&t, &p), Err(EspDrop::TsMismatch));
        }
        // A non-initial TCP fragment: the TCP child would take it but for its ports.
        assert_eq!(
            chosen(&t, &pkt(TCP, "10.9.0.1", VIP, &[0u8; 8], 100)),
            Err(EspDrop::NonInitialFragment)
        );
        // Inside traffic towards another address still has no route at all.
        assert_eq!(
            chosen(&t, &pkt(ICMP, "10.9.0.1", "10.99.0.8", &echo, 0)),
            Err(EspDrop::NoRoute)
        );
    }

    #[test]
    fn overlapping_siblings_are_tried_in_install_order_and_wider_ranges_after() {
        let inside = ts("10.9.0.0", "10.9.0.255", 0, ANY);
        let peer_net = vec![ts("172.16.0.0", "172.16.255.255", 0, ANY)];
        let mut t = Tables::default();
        // A host route with TCP only, then the peer's whole network with anything.
        let host = vec![ts("172.16.0.9", "172.16.0.9", TCP, ANY)];
        t.add_routes(&host, &sa(1, 0x11, vec![inside.clone()], host.clone()));
        t.add_routes(
            &peer_net,
            &sa(2, 0x22, vec![inside.clone()], peer_net.clone()),
        );
        t.add_routes(
            &peer_net,
            &sa(
                3,
                0x33,
                vec![ts("10.9.0.0", "10.9.0.255", UDP, ANY)],
                peer_net.clone(),
            ),
        );
        let to9 = |proto: u8| pkt(proto, "10.9.0.1", "172.16.0.9", &tcp(1, 2), 0);
        assert_eq!(chosen(&t, &to9(TCP)), Ok(0x11), "the host route first");
        // UDP to the host: the host's SA refuses it, the network's first SA takes it
        // (installed before the UDP-only sibling, which it overlaps).
        assert_eq!(chosen(&t, &to9(UDP)), Ok(0x22));
        t.remove(Spi(2), Spi(0x22), Instant::now());
        assert_eq!(chosen(&t, &to9(UDP)), Ok(0x33));
        assert_eq!(chosen(&t, &to9(ICMP)), Err(EspDrop::TsMismatch));
    }

    #[test]
    fn an_sa_with_the_same_selectors_supersedes_the_old_one() {
        let (mut t, tcp_sa, _) = siblings();
        // The peer reconnected: a new IKE SA, the same TCP child again.
        let again = sa(
            0x300,
            0x3001,
            tcp_sa.local_ts.clone(),
            tcp_sa.remote_ts.clone(),
        );
        t.add_routes(&again.remote_ts.clone(), &again);
        let p = pkt(TCP, "10.9.0.1", VIP, &tcp(5201, 40000), 0);
        assert_eq!(chosen(&t, &p), Ok(0x3001));
        assert_eq!(t.hosts[&VIP.parse().unwrap()].len(), 2);
        // The old SA's delete later removes nothing that is still in use.
        t.remove(Spi(0x100), Spi(0x1001), Instant::now());
        assert_eq!(chosen(&t, &p), Ok(0x3001));
    }

    /// Rekeys the CHILD SA of `old` (same selectors) into the pair (inbound, outbound).
    fn rekey(t: &mut Tables, old: &OutboundEntry, new: (u32, u32), handover: Handover) {
        let (inb, out) = pair(new.0, new.1, old.local_ts.clone(), old.remote_ts.clone());
        t.rekeyed(old.child, inb, out, handover);
    }

    #[test]
    fn a_rekey_replaces_exactly_the_sa_it_rekeys() {
        let (mut t, tcp_sa, icmp_sa) = siblings();
        let tcp_p = pkt(TCP, "10.9.0.1", VIP, &tcp(5201, 40000), 0);
        let icmp_p = pkt(ICMP, "10.9.0.1", VIP, &[0u8, 0, 0, 0], 0);
        let vip: IpAddr = VIP.parse().unwrap();

        // We initiated the rekey of the ICMP child: its new SA carries ICMP at once, in
        // the old one's place; the TCP child is untouched.
        rekey(&mut t, &icmp_sa, (0x201, 0x2002), Handover::Now);
        assert_eq!(chosen(&t, &icmp_p), Ok(0x2002));
        assert_eq!(chosen(&t, &tcp_p), Ok(0x1001));
        let spis: Vec<u32> = t.hosts[&vip].iter().map(|o| o.sa.spi().0).collect();
        assert_eq!(spis, vec![0x1001, 0x2002], "order kept");
        t.remove(Spi(0x200), Spi(0x2001), Instant::now());
        assert_eq!(chosen(&t, &icmp_p), Ok(0x2002));
        assert_eq!(chosen(&t, &tcp_p), Ok(0x1001));

        // The peer rekeyed the TCP child (we answered): the old SA carries TCP until the
        // old pair is deleted, then the new one does; ICMP stays on its own SA.
        rekey(&mut t, &tcp_sa, (0x101, 0x1002), Handover::AtDelete);
        assert_eq!(chosen(&t, &tcp_p), Ok(0x1001));
        assert_eq!(
            t.outbound_of_child(Spi(0x101)).map(|o| o.sa.spi().0),
            Some(0x1002)
        );
        // Deleting the ICMP child does not hand the TCP destination over early.
        t.remove(Spi(0x201), Spi(0x2002), Instant::now());
        assert_eq!(chosen(&t, &tcp_p), Ok(0x1001));
        assert_eq!(chosen(&t, &icmp_p), Err(EspDrop::TsMismatch));
        t.remove(Spi(0x100), Spi(0x1001), Instant::now());
        assert_eq!(chosen(&t, &tcp_p), Ok(0x1002));
        assert!(t.pending.is_empty());
        t.remove(Spi(0x101), Spi(0x1002), Instant::now());
        assert!(t.hosts.is_empty() && t.keepalive.is_empty());
        assert_eq!(chosen(&t, &tcp_p), Err(EspDrop::NoRoute));
    }

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
