//! The pool name and the SOA serial with three real `headend run` members in a network
//! namespace (issue 4, seed 003 ch. 3 "DNS keeps giving out the failed server"):
//!
//! - `pool.<domain>` answers the members' OUTSIDE addresses (their IKE listen address, or
//!   `dns.pool_address`), never their cluster (inside) addresses;
//! - least loaded relative to capacity first (`dns.pool_capacity`, load = tunnels up,
//!   brought up by `headend peer` routers);
//! - after one member is killed it is gone from every survivor's answer within
//!   dead_after (3 s) + TTL (1 s);
//! - every member returns the same NS RRset, glue and SOA timers (mname, rname, refresh,
//!   retry, expire, minimum), the configured ones;
//! - once converged every survivor answers `dig SOA` with the same serial, newer than
//!   before the death;
//! - the member restarted is back in the pool and all three agree on the serial again.
//!
//! Needs root, iproute2 and dig; a missing tool FAILS.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod dns_support;
mod support;

use std::time::{Duration, Instant};

use support::headend::{dns_ns_entries, ipsec_ddns_section, start_cluster, Headend, HeadendConf};
use support::netns::Netns;
use support::{require_tool, try_wait_for, TestCtx};

const PSK: &str = "dns-pool-psk-7e21";
const SECRET: &str = "dns-pool-cluster-secret-40aa";
const DOMAIN: &str = "vpn.pool.example";
const MEMBERS: usize = 3;

/// Cluster and DNS address (inside).
fn member_self(i: usize) -> String {
    format!("10.70.0.{}", 11 + i)
}
/// IKE listen address (outside).
fn member_ike(i: usize) -> String {
    format!("10.80.0.{}", 11 + i)
}
/// What member `i` hands out in the pool: member 1 sets `dns.pool_address` (say, a
/// NAT in front of it), the others default to their IKE listen address.
fn member_pool_addr(i: usize) -> String {
    if i == 1 {
        "10.81.0.12".into()
    } else {
        member_ike(i)
    }
}
fn member_pool_v4(i: usize) -> String {
    format!("10.100.{i}.0/24")
}

fn member_conf(ctx: &TestCtx, i: usize) -> HeadendConf {
    let mut hc = HeadendConf::responder(&member_ike(i), PSK, &member_pool_v4(i));
    hc.local_id = format!("m{i}.{DOMAIN}");
    hc.log_level = "info".into();
    let peers: Vec<String> = (0..MEMBERS).filter(|&j| j != i).map(member_self).collect();
    let mut s = format!(
        "[dns]\nlisten = [\"{}\"]\nport = 53\nttl = 1\nnegative_ttl = 1\n",
        member_self(i)
    );
    match i {
        0 => s.push_str("pool_capacity = 10\n"),
        1 => s.push_str("pool_capacity = 100\npool_address = [\"10.81.0.12\"]\n"),
        _ => {} // capacity from its /24 pool: 254
    }
    s.push_str(&dns_ns_entries(
        &(0..MEMBERS).map(member_self).collect::<Vec<_>>(),
    ));
    s.push_str(&ipsec_ddns_section(
        &member_self(i),
        &peers,
        SECRET,
        DOMAIN,
        &ctx.path(&format!("m{i}-data")),
    ));
    hc.extra = s;
    hc
}

/// `dig` at member `i` from inside the namespace.
fn dig(ns: &Netns, i: usize, name: &str, rtype: &str) -> dns_support::DigResult {
    let at = format!("@{}", member_self(i));
    let o = ns.exec(&["dig", &at, "+time=1", "+tries=1", "+norecurse", name, rtype]);
    dns_support::parse_dig(&o.stdout)
}

fn pool_answer(ns: &Netns, i: usize) -> Vec<String> {
    let r = dig(ns, i, &format!("pool.{DOMAIN}"), "A");
    if r.status != "NOERROR" {
        return vec![format!("status {}", r.status)];
    }
    r.answer_data("A")
}

fn serial(ns: &Netns, i: usize) -> Option<u32> {
    let r = dig(ns, i, DOMAIN, "SOA");
    let soa = r.answer_data("SOA");
    soa.first()?.split_whitespace().nth(2)?.parse().ok()
}

/// What a delegating admin compares across the members (Zonemaster-style): the NS RRset
/// with TTLs, the glue of each name server, and the SOA without its serial (mname, rname,
/// refresh, retry, expire, minimum) with its TTL.
#[derive(Debug, PartialEq, Eq)]
struct ZoneFace {
    ns: Vec<String>,
    glue: Vec<String>,
    soa: Vec<String>,
}

fn zone_face(ns: &Netns, i: usize) -> ZoneFace {
    let r = dig(ns, i, DOMAIN, "NS");
    assert_eq!(r.status, "NOERROR", "NS at m{i}: {}", r.raw);
    let mut nss: Vec<String> = r
        .answer
        .iter()
        .filter(|a| a.rtype == "NS")
        .map(|a| format!("{} {}", a.ttl, a.data))
        .collect();
    nss.sort();
    let mut glue: Vec<String> = r
        .additional
        .iter()
        .filter(|a| a.rtype == "A" || a.rtype == "AAAA")
        .map(|a| format!("{} {} {} {}", a.name, a.ttl, a.rtype, a.data))
        .collect();
    glue.sort();
    let r = dig(ns, i, DOMAIN, "SOA");
    assert_eq!(r.status, "NOERROR", "SOA at m{i}: {}", r.raw);
    assert_eq!(r.answer.len(), 1, "SOA at m{i}: {}", r.raw);
    let f: Vec<&str> = r.answer[0].data.split_whitespace().collect();
    assert_eq!(f.len(), 7, "SOA at m{i}: {}", r.raw);
    let mut soa = vec![r.answer[0].ttl.to_string(), f[0].into(), f[1].into()];
    soa.extend(f[3..].iter().map(|s| s.to_string()));
    ZoneFace { ns: nss, glue, soa }
}

/// `count` routers (`headend peer --count`) on their own address, connected to member `i`.
fn routers(ctx: &TestCtx, ns: &Netns, k: usize, i: usize, count: usize) -> Headend {
    let local = format!("10.95.0.{}", 1 + k);
    let mut pc = HeadendConf::peer("unused", PSK, &[(format!("{}:500", member_ike(i)), 4500)]);
    pc.listen = vec![local.clone()];
    pc.port = 5000 + 2 * k as u16;
    pc.natt_port = 5001 + 2 * k as u16;
    if let Some(p) = pc.peer.as_mut() {
        p.bind = Some(format!("{local}:0"));
        p.remote_ts = vec![support::netns::INSIDE_NET.into()];
    }
    let n = count.to_string();
    let prefix = format!("router-{k}-");
    Headend::peer(
        ctx,
        Some(ns),
        &format!("routers{k}"),
        &pc,
        &["--count", &n, "--id-prefix", &prefix],
    )
}

#[test]
fn pool_answers_outside_addresses_by_free_capacity_and_survivors_agree_on_the_serial() {
    require_tool("dig", "bind9-dnsutils");
    let ctx = TestCtx::new("dns-pool");
    let ns = Netns::new(&ctx, "pool");
    for i in 0..MEMBERS {
        ns.add_lo_addr(&format!("{}/32", member_self(i)));
        ns.add_lo_addr(&format!("{}/32", member_ike(i)));
    }
    for k in 0..2 {
        ns.add_lo_addr(&format!("10.95.0.{}/32", 1 + k));
    }

    let mut hes = start_cluster(MEMBERS, Duration::from_secs(20), |i| {
        let he = Headend::run(&ctx, Some(&ns), &format!("m{i}"), &member_conf(&ctx, i));
        ctx.track_log(&he.proc.log);
        he
    });

    // A new cluster's serial starts at the time, not 0, so the first change is a small
    // RFC 1982 step a secondary accepts.
    let initial = try_wait_for(Duration::from_secs(10), || serial(&ns, 0)).expect("SOA at m0");
    assert_ne!(initial, 0, "a new cluster's serial must not start at 0");

    // Every member returns the same NS set with glue and the same SOA timers (the serial
    // is checked below, once converged), and they are the configured ones.
    let faces: Vec<ZoneFace> = (0..MEMBERS).map(|i| zone_face(&ns, i)).collect();
    for (i, f) in faces.iter().enumerate() {
        assert_eq!(*f, faces[0], "m{i} differs from m0");
    }
    let want_ns: Vec<String> = (1..=MEMBERS)
        .map(|j| format!("3600 ns{j}.{DOMAIN}."))
        .collect();
    assert_eq!(faces[0].ns, want_ns, "the NS RRset (ns_ttl 3600)");
    let want_glue: Vec<String> = (0..MEMBERS)
        .map(|j| format!("ns{}.{DOMAIN}. 3600 A {}", j + 1, member_self(j)))
        .collect();
    assert_eq!(faces[0].glue, want_glue, "glue: each member's DNS address");
    let want_soa: Vec<String> = [
        "1".to_string(),
        format!("ns1.{DOMAIN}."),
        format!("hostmaster.{DOMAIN}."),
        "3600".into(),
        "600".into(),
        "86400".into(),
        "1".into(),
    ]
    .to_vec();
    assert_eq!(
        faces[0].soa, want_soa,
        "SOA: TTL, mname, rname, timers, minimum"
    );

    // Load: one router on m0 (capacity 10: 10 % used), two on m1 (capacity 100: 2 %),
    // none on m2 (254). Least loaded relative to capacity first: m2, m1, m0. (By raw
    // tunnel count it would be m2, m0, m1.)
    let r0 = routers(&ctx, &ns, 0, 0, 1);
    let r1 = routers(&ctx, &ns, 1, 1, 2);
    ctx.track_log(&r0.proc.log);
    ctx.track_log(&r1.proc.log);
    let want: Vec<String> = [2, 1, 0].iter().map(|&i| member_pool_addr(i)).collect();
    let got = try_wait_for(Duration::from_secs(30), || {
        let all: Vec<Vec<String>> = (0..MEMBERS).map(|i| pool_answer(&ns, i)).collect();
        all.iter().all(|a| *a == want).then_some(())
    });
    assert!(
        got.is_some(),
        "pool answers {:?}, want {want:?} (outside addresses, by free capacity)\nm0 log:\n{}",
        (0..MEMBERS)
            .map(|i| pool_answer(&ns, i))
            .collect::<Vec<_>>(),
        hes[0].as_ref().unwrap().log_text()
    );
    for i in 0..MEMBERS {
        let a = pool_answer(&ns, i);
        assert!(
            !a.contains(&member_self(i)),
            "the pool must not hand out cluster (inside) addresses: {a:?}"
        );
    }
    let before = (0..MEMBERS)
        .filter_map(|i| serial(&ns, i))
        .max()
        .expect("SOA answered");

    assert!(
        before != initial && before.wrapping_sub(initial) < (1 << 31),
        "the first changes must be a forward RFC 1982 step: {initial} -> {before}"
    );

    // Kill m2 (the least loaded, first in the answer): gone from the survivors' pool
    // within dead_after (3 s) + TTL (1 s), plus gossip and scheduling slack.
    let killed_at = Instant::now();
    hes[2].as_mut().unwrap().proc.kill();
    let dead = member_pool_addr(2);
    let gone = try_wait_for(Duration::from_secs(15), || {
        (0..2)
            .all(|i| {
                let a = pool_answer(&ns, i);
                !a.contains(&dead) && !a.is_empty() && !a[0].starts_with("status")
            })
            .then_some(())
    });
    let took = killed_at.elapsed();
    assert!(gone.is_some(), "the dead member is still handed out");
    assert!(
        took < Duration::from_secs(3 + 1 + 3),
        "the dead member left the pool only after {took:?}"
    );
    let survivors: Vec<String> = [1, 0].iter().map(|&i| member_pool_addr(i)).collect();
    assert_eq!(pool_answer(&ns, 0), survivors);
    assert_eq!(pool_answer(&ns, 1), survivors);

    // Serial: the survivors converge on one value, newer than before the death, and it
    // stays put (nothing changes any more; the pool refresh does not move it).
    let agreed = try_wait_for(Duration::from_secs(10), || {
        let s0 = serial(&ns, 0)?;
        let s1 = serial(&ns, 1)?;
        (s0 == s1 && s0 != before).then_some(s0)
    });
    let Some(agreed) = agreed else {
        panic!(
            "survivors disagree on the SOA serial: m0 {:?}, m1 {:?} (before {before})",
            serial(&ns, 0),
            serial(&ns, 1)
        );
    };
    assert!(
        agreed.wrapping_sub(before) < (1 << 31),
        "serial went backwards: {before} -> {agreed} (RFC 1982)"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(serial(&ns, 0), Some(agreed));
    assert_eq!(serial(&ns, 1), Some(agreed));

    // m2 comes back (same store): first in the pool again (least loaded), and all three
    // members, the restarted one included, converge on one serial.
    let he = Headend::run(&ctx, Some(&ns), "m2-again", &member_conf(&ctx, 2));
    ctx.track_log(&he.proc.log);
    hes[2] = Some(he);
    let back = try_wait_for(Duration::from_secs(30), || {
        let pools_ok = (0..MEMBERS).all(|i| pool_answer(&ns, i) == want);
        let serials: Vec<Option<u32>> = (0..MEMBERS).map(|i| serial(&ns, i)).collect();
        let same = serials[0].is_some() && serials.iter().all(|s| *s == serials[0]);
        (pools_ok && same).then_some(serials[0])
    });
    let Some(Some(after_return)) = back else {
        panic!(
            "after m2's return: pools {:?}, serials {:?}, want pool {want:?}",
            (0..MEMBERS)
                .map(|i| pool_answer(&ns, i))
                .collect::<Vec<_>>(),
            (0..MEMBERS).map(|i| serial(&ns, i)).collect::<Vec<_>>()
        );
    };
    assert!(
        after_return.wrapping_sub(agreed) < (1 << 31),
        "serial went backwards after the return: {agreed} -> {after_return}"
    );

    drop(r0);
    drop(r1);
    for he in hes.iter_mut().flatten() {
        he.proc.kill();
    }
}
