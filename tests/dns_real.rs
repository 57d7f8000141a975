//! The embedded DNS server of a real `headend run`, with a real strongSwan peer (charon,
//! kernel-libipsec) bringing a tunnel up and down (issue 4, "How it is checked"):
//!
//! - Unbound on an inside host, with a stub-zone for `<domain>` pointing at the head-end,
//!   resolves `<gateway-id>.<domain>` to the tunnel's virtual IP for a client on that host
//!   once charon has connected, and answers NXDOMAIN again within the TTL (+ a margin)
//!   after `swanctl --terminate --ike`.
//! - dig against the daemon for every answer type: SOA, NS with glue, A and AAAA of a
//!   dual-stack gateway (charon asks for both virtual IPs), NODATA (TXT of that gateway),
//!   NXDOMAIN with the SOA, REFUSED outside the zone, AA=1 and RA=0, EDNS(0) echoed only
//!   when asked, TC over UDP and the full answer over TCP.
//! - `dns.udp_sockets = 4`: the daemon holds four SO_REUSEPORT UDP sockets on the DNS port
//!   (`ss -uanp` in its namespace), and queries from many source ports (spread over the
//!   sockets by the kernel's 4-tuple hash) are all answered.
//!
//! Topology (namespaces made by the test):
//!
//! ```text
//!  peer (charon) 10.1.0.2 --- 10.1.0.1 he (headend run) 10.60.0.1 --- 10.60.0.100 inside
//!                                                                   (Unbound, dig client)
//! ```
//!
//! Needs root, strongSwan, Unbound, dig, ss; a missing tool FAILS.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod dns_support;
mod support;

use std::fmt::Write as _;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dns_support::{parse_dig, DigResult, Unbound};
use support::charon::{Charon, Conn};
use support::headend::{wait_down, wait_up, Headend, HeadendConf};
use support::netns::{veth, Direct};
use support::{require_tool, try_wait_for, TestCtx};

const PSK: &str = "dns-real-psk-93be";
const POOL: &str = "10.99.0.0/24";
const POOL6: &str = "fd00:99::/112";
const HE_ID: &str = "headend.test";
/// Not under `test.`: Unbound serves that special-use TLD itself (RFC 6761).
const DOMAIN: &str = "gw.corp.example";
/// A router's identity as its firmware sends it; sanitized to `mg90-site-4`.
const PEER_ID: &str = "mg90.site-4";
/// The head-end's DNS address, on its inside link.
const HE_DNS: &str = "10.60.0.1";
const INSIDE_HOST: &str = "10.60.0.100";
const TTL: u32 = 2;
const NEGATIVE_TTL: u32 = 2;

/// Fields drop in order: Unbound, charon, the daemon, then the namespaces.
struct Rig {
    ub: Option<Unbound>,
    charon: Charon,
    he: Headend,
    dns_inside: ManuallyDrop<dns_support::Netns>,
    inside: support::netns::Netns,
    net: Direct,
    _ctx: TestCtx,
    gw: String,
}

impl Rig {
    /// `headend run` with `[dns]` = `dns_section` (on `HE_DNS`), charon with one connection
    /// `net` loaded (not initiated), the inside host linked to the head-end.
    fn new(
        name: &str,
        dns_section: &str,
        he_tweak: impl FnOnce(&mut HeadendConf),
        conn_tweak: impl FnOnce(&mut Conn),
    ) -> Rig {
        require_tool("dig", "dnsutils");
        let ctx = TestCtx::new(name);
        let net = Direct::new(&ctx);
        let inside = support::netns::Netns::new(&ctx, "in");
        veth(
            &net.he,
            "eth1",
            &format!("{HE_DNS}/24"),
            &inside,
            "eth0",
            &format!("{INSIDE_HOST}/24"),
        );
        let he_addr = net.he_addr.to_string();
        let mut hc = HeadendConf::responder(&he_addr, PSK, POOL);
        hc.local_id = HE_ID.into();
        hc.log_level = "info".into();
        hc.extra = dns_section.to_owned();
        he_tweak(&mut hc);
        let he = Headend::run(&ctx, Some(&net.he), "headend", &hc);
        ctx.track_log(&he.proc.log);
        let charon = Charon::start(&ctx, &net.peer, "router");
        let mut conn = Conn::initiator("net", &net.peer_addr.to_string(), &he_addr, PEER_ID);
        conn.remote_id = Some(HE_ID.into());
        conn_tweak(&mut conn);
        charon.load_psk(&ctx, conn, PSK);
        let dns_inside = ManuallyDrop::new(dns_support::Netns {
            name: inside.name.clone(),
        });
        let gw = ddns::GatewayId::from_identity(PEER_ID.as_bytes())
            .0
            .to_string();
        assert_eq!(gw, "mg90-site-4", "the seed's sanitizer");
        Rig {
            ub: None,
            charon,
            he,
            dns_inside,
            inside,
            net,
            _ctx: ctx,
            gw,
        }
    }

    fn name(&self) -> String {
        format!("{}.{DOMAIN}", self.gw)
    }

    /// dig at the daemon from the inside host, without recursion.
    fn dig(&self, args: &[&str]) -> DigResult {
        let at = format!("@{HE_DNS}");
        let mut argv = vec!["dig", at.as_str(), "+time=2", "+tries=1", "+norecurse"];
        argv.extend_from_slice(args);
        let o = self.inside.exec(&argv);
        parse_dig(&o.stdout)
    }

    /// Brings the tunnel up; returns charon's virtual IPs.
    fn up(&self) -> Vec<String> {
        self.charon.initiate_ok("net");
        let sa = self.charon.wait_established("net", Duration::from_secs(15));
        wait_up(&self.he, &self.gw, Duration::from_secs(10));
        assert!(!sa.local_vips.is_empty(), "no virtual IP: {sa:?}");
        sa.local_vips
    }
}

/// Polls Unbound from the inside host until `pred` holds or `limit` passes.
fn wait_resolver(
    rig: &Rig,
    limit: Duration,
    what: &str,
    pred: impl Fn(&DigResult) -> bool,
) -> Duration {
    let ub = rig.ub.as_ref().unwrap();
    let t0 = Instant::now();
    loop {
        let r = ub.resolve(&rig.dns_inside, &rig.name(), "A");
        if pred(&r) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "{what}: not within {limit:?}; last answer through Unbound:\n{}\ndaemon directly:\n{}\n\
             unbound log:\n{}",
            r.raw,
            rig.dig(&[&rig.name(), "A"]).raw,
            ub.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn unbound_stub_zone_resolves_a_strongswan_peer_while_connected_and_nxdomain_after_terminate() {
    require_tool("unbound", "unbound");
    let dns = format!(
        "[dns]\nlisten = [\"{HE_DNS}\"]\nport = 53\ndomain = \"{DOMAIN}\"\nttl = {TTL}\n\
         negative_ttl = {NEGATIVE_TTL}\nudp_sockets = 1\n\
         [[dns.ns]]\nname = \"ns1\"\naddrs = [\"{HE_DNS}\"]\n"
    );
    let mut rig = Rig::new("dns-real-ub", &dns, |_| {}, |_| {});
    rig.ub = Some(Unbound::start(
        &rig.dns_inside,
        format!("{INSIDE_HOST}:53").parse().unwrap(),
        DOMAIN,
        &[format!("{HE_DNS}:53").parse::<SocketAddr>().unwrap()],
    ));

    // No tunnel yet: NXDOMAIN through the resolver (now negatively cached).
    let r = rig
        .ub
        .as_ref()
        .unwrap()
        .resolve(&rig.dns_inside, &rig.name(), "A");
    assert_eq!(r.status, "NXDOMAIN", "before the tunnel:\n{}", r.raw);

    // charon connects: the inside client resolves the name to charon's virtual IP once
    // the cached NXDOMAIN has expired (negative TTL, + margin).
    let vips = rig.up();
    assert_eq!(vips.len(), 1, "{vips:?}");
    let vip = vips[0].clone();
    assert!(vip.starts_with("10.99.0."), "VIP {vip} not from {POOL}");
    let took = wait_resolver(
        &rig,
        Duration::from_secs(u64::from(NEGATIVE_TTL) + 3),
        "resolvable after connect",
        |r| r.status == "NOERROR" && r.answer_data("A") == vec![vip.clone()],
    );
    eprintln!("resolvable through Unbound {took:?} after charon connected");
    // The answer reached Unbound from the head-end: a TTL no larger than configured.
    let r = rig
        .ub
        .as_ref()
        .unwrap()
        .resolve(&rig.dns_inside, &rig.name(), "A");
    assert!(r.answer.iter().all(|a| a.ttl <= TTL), "{}", r.raw);

    // charon disconnects (Delete): the daemon stops answering at once, and the resolver
    // answers NXDOMAIN once its cached positive answer (TTL) has run out, + margin.
    let from = rig.he.proc.log_len();
    let o = rig.charon.terminate_ike("net");
    assert!(o.ok(), "swanctl --terminate: {}", o.all());
    let terminated = Instant::now();
    let reason = wait_down(&rig.he, from, &rig.gw, Duration::from_secs(10));
    assert_eq!(reason, "peer-deleted");
    let direct = try_wait_for(Duration::from_secs(1), || {
        let r = rig.dig(&[&rig.name(), "A"]);
        (r.status == "NXDOMAIN").then_some(())
    });
    assert!(
        direct.is_some(),
        "the daemon still answers the name after the tunnel went down:\n{}",
        rig.dig(&[&rig.name(), "A"]).raw
    );
    wait_resolver(
        &rig,
        Duration::from_secs(u64::from(TTL) + 3),
        "NXDOMAIN after terminate",
        |r| r.status == "NXDOMAIN",
    );
    eprintln!(
        "NXDOMAIN through Unbound {:?} after swanctl --terminate",
        terminated.elapsed()
    );
}

/// Forty name servers: the NS answer (with glue) does not fit 512 octets (no EDNS) nor
/// 1232 (EDNS), so it is truncated over UDP and complete over TCP.
const NS_COUNT: usize = 40;
fn ns_addr(j: usize) -> String {
    if j == 0 {
        HE_DNS.into()
    } else {
        format!("10.61.{}.{}", j / 200, 1 + j % 200)
    }
}

#[test]
fn dig_against_the_daemon_with_a_strongswan_tunnel_every_answer_type_and_reuseport_sockets() {
    require_tool("ss", "iproute2");
    let mut dns = format!(
        "[dns]\nlisten = [\"{HE_DNS}\"]\nport = 53\ndomain = \"{DOMAIN}\"\nttl = {TTL}\n\
         negative_ttl = {NEGATIVE_TTL}\nns_ttl = 600\nudp_sockets = 4\n\
         [dns.soa]\nrefresh = 1200\nretry = 300\nexpire = 604800\n"
    );
    for j in 0..NS_COUNT {
        let _ = write!(
            dns,
            "[[dns.ns]]\nname = \"ns{}\"\naddrs = [\"{}\"]\n",
            j + 1,
            ns_addr(j)
        );
    }
    // A dual-stack router: charon asks for an IPv4 and an IPv6 virtual IP.
    let rig = Rig::new(
        "dns-real-dig",
        &dns,
        |hc| {
            hc.pool_v4 = None;
            hc.extra = format!("[pool]\nv4 = \"{POOL}\"\nv6 = \"{POOL6}\"\n\n{}", hc.extra);
        },
        |c| c.vips = Some("0.0.0.0, ::".into()),
    );
    let vips = rig.up();
    let vip = vips
        .iter()
        .find(|v| v.starts_with("10.99.0."))
        .unwrap_or_else(|| panic!("no IPv4 VIP from {POOL}: {vips:?}"))
        .clone();
    let vip6 = vips
        .iter()
        .find(|v| v.starts_with("fd00:99::"))
        .unwrap_or_else(|| panic!("no IPv6 VIP from {POOL6}: {vips:?}"))
        .clone();
    let name = rig.name();
    let apex = format!("{DOMAIN}.");

    // A of the gateway: the VIP, authoritative, no recursion offered, configured TTL.
    let r = try_wait_for(Duration::from_secs(2), || {
        let r = rig.dig(&[&name, "A"]);
        (r.status == "NOERROR" && !r.answer.is_empty()).then_some(r)
    })
    .unwrap_or_else(|| panic!("{name} not answered:\n{}", rig.dig(&[&name, "A"]).raw));
    assert_eq!(r.answer_data("A"), vec![vip.clone()], "{}", r.raw);
    assert_eq!(r.answer[0].ttl, TTL, "{}", r.raw);
    assert!(
        r.has_flag("aa") && !r.has_flag("ra"),
        "AA=1 RA=0: {}",
        r.raw
    );
    // Names match case-insensitively (RFC 4343).
    let r = rig.dig(&[&name.to_uppercase(), "A"]);
    assert_eq!(r.answer_data("A"), vec![vip.clone()], "{}", r.raw);

    // SOA: mname = first NS, rname hostmaster, the configured timers, minimum = negative TTL.
    let r = rig.dig(&[DOMAIN, "SOA"]);
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    assert!(r.has_flag("aa") && !r.has_flag("ra"), "{}", r.raw);
    let soa = r.answer_data("SOA");
    assert_eq!(soa.len(), 1, "{}", r.raw);
    let f: Vec<&str> = soa[0].split_whitespace().collect();
    assert_eq!(f[0], format!("ns1.{apex}"));
    assert_eq!(f[1], format!("hostmaster.{apex}"));
    let serial: u32 = f[2].parse().unwrap();
    assert_ne!(serial, 0);
    assert_eq!(
        &f[3..],
        ["1200", "300", "604800", &NEGATIVE_TTL.to_string()]
    );

    // NS with glue, over TCP (the whole set does not fit UDP): every name server, each
    // with its address in the additional section.
    let r = rig.dig(&["+tcp", DOMAIN, "NS"]);
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    assert!(!r.has_flag("tc"), "{}", r.raw);
    let mut got_ns = r.answer_data("NS");
    got_ns.sort();
    let mut want_ns: Vec<String> = (1..=NS_COUNT).map(|j| format!("ns{j}.{apex}")).collect();
    want_ns.sort();
    assert_eq!(got_ns, want_ns, "{}", r.raw);
    assert!(r.answer.iter().all(|a| a.ttl == 600), "ns_ttl: {}", r.raw);
    for j in 0..NS_COUNT {
        let glue: Vec<&str> = r
            .additional
            .iter()
            .filter(|a| a.rtype == "A" && a.name == format!("ns{}.{apex}", j + 1))
            .map(|a| a.data.as_str())
            .collect();
        assert_eq!(
            glue,
            vec![ns_addr(j).as_str()],
            "glue of ns{}: {}",
            j + 1,
            r.raw
        );
    }
    // The same over UDP: TC set (dig told not to retry), and plain dig falls back to TCP.
    for edns in ["+noedns", "+edns=0"] {
        let r = rig.dig(&["+notcp", "+ignore", edns, DOMAIN, "NS"]);
        assert_eq!(r.status, "NOERROR", "{}", r.raw);
        assert!(
            r.has_flag("tc"),
            "{edns}: no TC on a too-large answer: {}",
            r.raw
        );
    }
    let r = rig.dig(&[DOMAIN, "NS"]);
    assert_eq!(
        r.answer_data("NS").len(),
        NS_COUNT,
        "TCP fallback: {}",
        r.raw
    );

    // AAAA of the gateway: its IPv6 virtual IP.
    let r = rig.dig(&[&name, "AAAA"]);
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    assert_eq!(r.answer_data("AAAA"), vec![vip6.clone()], "{}", r.raw);
    assert!(r.has_flag("aa") && !r.has_flag("ra"), "{}", r.raw);

    // NODATA: the gateway exists but has no such type: NOERROR, no answer, the SOA in
    // the authority section.
    let r = rig.dig(&[&name, "TXT"]);
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    assert!(r.answer.is_empty(), "{}", r.raw);
    assert_eq!(r.authority.len(), 1, "{}", r.raw);
    assert_eq!(r.authority[0].rtype, "SOA", "{}", r.raw);
    assert!(r.has_flag("aa"), "{}", r.raw);

    // NXDOMAIN with the SOA, TTL = negative TTL (RFC 2308).
    let r = rig.dig(&[&format!("no-such-router.{DOMAIN}"), "A"]);
    assert_eq!(r.status, "NXDOMAIN", "{}", r.raw);
    assert!(r.answer.is_empty(), "{}", r.raw);
    assert_eq!(r.authority.len(), 1, "{}", r.raw);
    assert_eq!(r.authority[0].rtype, "SOA", "{}", r.raw);
    assert_eq!(r.authority[0].ttl, NEGATIVE_TTL, "{}", r.raw);
    assert!(r.has_flag("aa") && !r.has_flag("ra"), "{}", r.raw);

    // Outside the zone: REFUSED, never recursion (even when asked for).
    for q in ["example.org", "corp.example"] {
        let r = rig.dig(&["+recurse", q, "A"]);
        assert_eq!(r.status, "REFUSED", "{q}: {}", r.raw);
        assert!(!r.has_flag("ra"), "{}", r.raw);
    }

    // EDNS(0): an OPT record in the answer when the query had one, none otherwise.
    let r = rig.dig(&["+edns=0", &name, "A"]);
    assert!(r.edns, "no OPT in the answer to an EDNS query: {}", r.raw);
    let r = rig.dig(&["+noedns", &name, "A"]);
    assert!(!r.edns, "OPT in the answer to a plain query: {}", r.raw);
    assert_eq!(r.answer_data("A"), vec![vip.clone()], "{}", r.raw);

    // Four SO_REUSEPORT UDP sockets on HE_DNS:53, all the daemon's.
    let pid = rig.he.proc.pid().expect("daemon pid");
    let ss = rig.net.he.exec(&["ss", "-uanp"]).stdout;
    let socks: Vec<&str> = ss
        .lines()
        .filter(|l| l.contains(&format!("{HE_DNS}:53 ")))
        .collect();
    assert_eq!(socks.len(), 4, "want 4 UDP sockets on {HE_DNS}:53:\n{ss}");
    assert!(
        socks.iter().all(|l| l.contains(&format!("pid={pid},"))),
        "not all owned by headend (pid {pid}):\n{ss}"
    );
    // Queries from 48 source ports (the kernel spreads them over the four sockets by
    // 4-tuple hash; a socket without a receive loop would leave about a quarter of
    // them unanswered) are all answered, and no socket has datagrams left unread.
    let mut unanswered = vec![];
    for i in 0..48 {
        let r = rig.dig(&["+tries=1", "+time=1", &name, "A"]);
        if r.answer_data("A") != vec![vip.clone()] {
            unanswered.push((i, r.raw));
        }
    }
    assert!(unanswered.is_empty(), "unanswered: {unanswered:?}");
    let ss = rig.net.he.exec(&["ss", "-uanp"]).stdout;
    for l in ss.lines().filter(|l| l.contains(&format!("{HE_DNS}:53 "))) {
        let recv_q: u32 = l
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(u32::MAX);
        assert_eq!(recv_q, 0, "a socket has unread datagrams: {l}");
    }
}
