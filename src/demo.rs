//! `headend demo`: the newcomer's first command (issue 6).
//!
//! Starts a three-member ipsec-ddns cluster on loopback (`headend run` child processes on
//! 127.0.0.1, .2 and .3, high ports, no TUN, no root), brings up thirty simulated peer
//! routers (this crate's own initiator, connect-one over all three members, seed 003
//! ch. 4), shows a live table, then SIGKILLs the busiest member and follows every router
//! of it to a survivor until every surviving member's DNS answers its name with the new
//! virtual IP. Ends with the failover time per router (p50/p99/max).
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::error::Error;
use crate::peer::{self, PeerEvent, PeerOptions};

/// The zone every member serves in the demo.
pub const DEMO_DOMAIN: &str = "demo.headend.test";
const MEMBERS: u8 = 3;
const CLUSTER_SECRET: &str = "headend-demo-cluster-secret";
const PSK: &str = "headend-demo-psk";

/// What `headend demo` is asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Simulated peer routers.
    pub routers: usize,
    /// The `headend` executable to start the members with.
    pub exe: PathBuf,
    /// Scratch directory (configs, member logs, cluster state).
    pub dir: PathBuf,
    /// Give up on a phase after this long.
    pub phase_timeout: Duration,
}

/// The control socket of member `m` (1-based) in the scratch directory.
fn control_socket(dir: &Path, m: u8) -> PathBuf {
    dir.join(format!("member{m}.sock"))
}

/// `tunnels_up` summed over the members the table shows up.
fn tunnels_up_of_live_members(table: &str) -> Option<u64> {
    let row = |name: &str| -> Option<Vec<&str>> {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.split_whitespace().skip(1).collect())
    };
    let (state, tunnels) = (row("state")?, row("tunnels_up")?);
    Some(
        state
            .iter()
            .zip(&tunnels)
            .filter(|(s, _)| **s == "up")
            .filter_map(|(_, t)| t.parse::<u64>().ok())
            .sum(),
    )
}

/// `show cluster statistics` from a member's control socket, once the figures every live
/// member shares add up to the routers (they replicate every ~2 s; at most 10 s).
async fn cluster_view(sock: &Path, routers: usize) -> String {
    let words = ["show", "cluster", "statistics"].map(String::from);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let table = match crate::control::request(sock, &words).await {
            Ok((0, t)) => t,
            Ok((_, t)) => t,
            Err(e) => format!("  ({e})\n"),
        };
        if tunnels_up_of_live_members(&table) == Some(routers as u64) || Instant::now() > end {
            return table;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The result the demo prints last.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub routers: usize,
    /// The member killed (its `self` address).
    pub killed: IpAddr,
    /// Routers that were on the killed member.
    pub affected: usize,
    /// Of those, routers up on a survivor with their name answered by every survivor.
    pub failed_over: usize,
    /// Failover time of each router that failed over, sorted.
    pub times: Vec<Duration>,
    /// Names every survivor answers with the router's current virtual IP at the end.
    pub answered_at_end: usize,
}

impl Summary {
    /// The `q` quantile (nearest rank) of the failover times.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        quantile(&self.times, q)
    }

    /// Everything went right.
    pub fn ok(&self) -> bool {
        self.affected > 0
            && self.failed_over == self.affected
            && self.answered_at_end == self.routers
    }
}

/// Nearest-rank quantile of sorted samples.
pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s =
            |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.2}s", d.as_secs_f64()));
        writeln!(f, "Summary")?;
        writeln!(
            f,
            "  killed member:   {} (the busiest, SIGKILL)",
            self.killed
        )?;
        writeln!(
            f,
            "  failed over:     {}/{} routers of the killed member",
            self.failed_over, self.affected
        )?;
        writeln!(
            f,
            "  answered:        {}/{} router names by every surviving member",
            self.answered_at_end, self.routers
        )?;
        write!(
            f,
            "  failover time (kill -> new VIP answered by all survivors): p50 {} p99 {} max {}",
            s(self.quantile(0.50)),
            s(self.quantile(0.99)),
            s(self.times.last().copied())
        )
    }
}

/// One `headend run` child.
struct Member {
    ip: Ipv4Addr,
    child: Option<Child>,
    log: PathBuf,
}

impl Member {
    fn alive(&self) -> bool {
        self.child.is_some()
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Kills the members on any exit path.
struct Members(Vec<Member>);

impl Drop for Members {
    fn drop(&mut self) {
        for m in &mut self.0 {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    ike: u16,
    natt: u16,
    dns: u16,
    repl: u16,
    memb: u16,
}

fn member_ip(m: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, m)
}

/// A port free for UDP (and TCP when asked) on all the members' addresses.
fn free_port(tcp: bool, taken: &mut Vec<u16>) -> Result<u16, Error> {
    for _ in 0..200 {
        let p = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if taken.contains(&p) {
            continue;
        }
        let ok = (1..=MEMBERS).all(|m| {
            let a = SocketAddr::new(IpAddr::V4(member_ip(m)), p);
            std::net::UdpSocket::bind(a).is_ok() && (!tcp || std::net::TcpListener::bind(a).is_ok())
        });
        if ok {
            taken.push(p);
            return Ok(p);
        }
    }
    Err(Error::Other(
        "demo: no free port on 127.0.0.1-3 (is 127.0.0.0/8 routed to lo?)".into(),
    ))
}

fn member_config(m: u8, p: Ports, dir: &Path) -> String {
    let peers: Vec<String> = (1..=MEMBERS)
        .filter(|k| *k != m)
        .map(|k| format!("\"{}\"", member_ip(k)))
        .collect();
    let mut ns = String::new();
    for k in 1..=MEMBERS {
        let _ = write!(
            ns,
            "[[dns.ns]]\nname = \"ns{k}\"\naddrs = [\"{}\"]\n",
            member_ip(k)
        );
    }
    format!(
        r#"# headend demo member {m}
[ike]
listen = ["{ip}"]
port = {ike}
natt_port = {natt}
local_id = "member{m}.{DEMO_DOMAIN}"
local_ts = ["10.1.0.0/16"]
[psk]
default = "{PSK}"
[pool]
v4 = "10.99.{m}.0/24"
[log]
level = "info"
[dns]
listen = ["{ip}"]
port = {dns}
ttl = 1
negative_ttl = 1
udp_sockets = 1
{ns}[service.ipsec-ddns]
self = "{ip}"
peer = [{peers}]
secret = "{CLUSTER_SECRET}"
domain = "{DEMO_DOMAIN}"
enable = true
data_dir = "{data}"
replication_port = {repl}
membership_port = {memb}
dead_after_ms = 1500
"#,
        ip = member_ip(m),
        ike = p.ike,
        natt = p.natt,
        dns = p.dns,
        repl = p.repl,
        memb = p.memb,
        peers = peers.join(", "),
        data = dir.join(format!("state{m}")).display(),
    )
}

/// The routers' configuration: connect-one over all members, a fast DPD so a dead
/// member is noticed within about two seconds.
pub fn routers_config(p_ike: u16, p_natt: u16) -> String {
    let hs: Vec<String> = (1..=MEMBERS)
        .map(|m| {
            format!(
                "{{ addr = \"{}:{p_ike}\", natt_port = {p_natt} }}",
                member_ip(m)
            )
        })
        .collect();
    format!(
        r#"[ike]
proposals = ["aes256gcm16-prfsha256-x25519"]
esp_proposals = ["aes256gcm16"]
dpd_delay = "1s"
retransmit_timeout = "250ms"
retransmit_tries = 2
[peer]
local_id = "router-1"
psk = "{PSK}"
headends = [{}]
policy = "round-robin"
backoff = "200ms"
connect_timeout = "3s"
bind = "127.0.0.1:0"
request_vip4 = true
remote_ts = ["10.1.0.0/16"]
[log]
level = "warn"
"#,
        hs.join(", ")
    )
}

/// An A query for `name`; returns (rcode, addresses) or `None` on timeout or garbage.
async fn dns_a(sock: &UdpSocket, server: SocketAddr, name: &str) -> Option<(u8, Vec<Ipv4Addr>)> {
    let id: u16 = rand::random();
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(u8::try_from(label.len()).ok()?);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send_to(&q, server).await.ok()?;
    let mut buf = [0u8; 1500];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(400);
    loop {
        let (n, from) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        let r = buf.get(..n)?;
        if from != server || r.get(..2)? != id.to_be_bytes() {
            continue;
        }
        return parse_a(r, q.len());
    }
}

/// Walks the answer section of a reply (question echoed, `qlen` octets up to answers).
fn parse_a(r: &[u8], qlen: usize) -> Option<(u8, Vec<Ipv4Addr>)> {
    let rcode = r.get(3)? & 0x0f;
    let ancount = u16::from_be_bytes([*r.get(6)?, *r.get(7)?]);
    let mut i = qlen;
    let mut out = vec![];
    for _ in 0..ancount {
        if r.get(i)? & 0xc0 == 0xc0 {
            i += 2;
        } else {
            while *r.get(i)? != 0 {
                i += usize::from(*r.get(i)?) + 1;
            }
            i += 1;
        }
        let typ = u16::from_be_bytes([*r.get(i)?, *r.get(i + 1)?]);
        let rdlen = usize::from(u16::from_be_bytes([*r.get(i + 8)?, *r.get(i + 9)?]));
        i += 10;
        if typ == 1 && rdlen == 4 {
            let a = r.get(i..i + 4)?;
            out.push(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
        }
        i += rdlen;
    }
    Some((rcode, out))
}

/// A router as the demo sees it (from the initiator's events).
#[derive(Debug, Clone, Default)]
struct RouterView {
    name: String,
    /// Member index (0-based) it is up on, its VIP, and when it came up.
    up: Option<(usize, Ipv4Addr, Instant)>,
}

async fn wait_log(m: &Member, what: &str, timeout: Duration) -> Result<(), Error> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if m.log_text().contains(what) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Other(format!(
        "demo: member {} did not log \"{what}\" within {timeout:?}; its log is {}",
        m.ip,
        m.log.display()
    )))
}

fn drain(rx: &mut mpsc::UnboundedReceiver<PeerEvent>, view: &mut [RouterView], members: &[Member]) {
    while let Ok(e) = rx.try_recv() {
        match e {
            PeerEvent::Up {
                router,
                headend,
                vips,
                ..
            } => {
                let m = members
                    .iter()
                    .position(|m| IpAddr::V4(m.ip) == headend.ip());
                let v4 = vips.iter().find_map(|v| match v {
                    IpAddr::V4(a) => Some(*a),
                    IpAddr::V6(_) => None,
                });
                if let (Some(r), Some(m), Some(v)) = (view.get_mut(router), m, v4) {
                    r.up = Some((m, v, Instant::now()));
                }
            }
            PeerEvent::Moving { router, .. } => {
                if let Some(r) = view.get_mut(router) {
                    r.up = None;
                }
            }
        }
    }
}

/// Per member: how many routers' names it answers with their current VIP.
async fn answered(
    sock: &UdpSocket,
    members: &[Member],
    dns_port: u16,
    view: &[RouterView],
) -> Vec<Option<usize>> {
    let mut out = vec![];
    for m in members {
        if !m.alive() {
            out.push(None);
            continue;
        }
        let server = SocketAddr::new(IpAddr::V4(m.ip), dns_port);
        let mut n = 0;
        for r in view {
            let Some((_, vip, _)) = r.up else { continue };
            if dns_a(sock, server, &r.name).await == Some((0, vec![vip])) {
                n += 1;
            }
        }
        out.push(Some(n));
    }
    out
}

fn table(
    t0: Instant,
    members: &[Member],
    view: &[RouterView],
    answered: &[Option<usize>],
) -> String {
    let mut s = format!(
        "[{:6.1}s] {:<12} {:<7} {:>7} {:>15}\n",
        t0.elapsed().as_secs_f64(),
        "member",
        "state",
        "tunnels",
        "names answered"
    );
    for (i, m) in members.iter().enumerate() {
        let tunnels = view
            .iter()
            .filter(|r| r.up.is_some_and(|(k, _, _)| k == i))
            .count();
        let (state, ans) = match answered.get(i).copied().flatten() {
            Some(a) if m.alive() => ("up", format!("{a}/{}", view.len())),
            _ => ("KILLED", "-".to_string()),
        };
        let tunnels = if m.alive() {
            tunnels.to_string()
        } else {
            "-".into()
        };
        let _ = writeln!(
            s,
            "          {:<12} {:<7} {:>7} {:>15}",
            m.ip.to_string(),
            state,
            tunnels,
            ans
        );
    }
    s
}

/// Runs the demo, printing as it goes; returns the summary (also printed).
pub async fn run(opts: &DemoOptions) -> Result<Summary, Error> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&opts.dir)?;
    let mut taken = vec![];
    let p = Ports {
        ike: free_port(false, &mut taken)?,
        natt: free_port(false, &mut taken)?,
        dns: free_port(true, &mut taken)?,
        repl: free_port(true, &mut taken)?,
        memb: free_port(true, &mut taken)?,
    };
    println!(
        "headend demo: {MEMBERS} members on 127.0.0.1-{MEMBERS} (IKE port {}, DNS port {}), {} routers, zone {DEMO_DOMAIN}",
        p.ike, p.dns, opts.routers
    );
    println!(
        "  scratch dir (configs, member logs): {}",
        opts.dir.display()
    );

    // The cluster: member 1 creates it, the others join through it.
    let mut members = Members(vec![]);
    for m in 1..=MEMBERS {
        let conf = opts.dir.join(format!("member{m}.toml"));
        std::fs::write(&conf, member_config(m, p, &opts.dir))?;
        let log = opts.dir.join(format!("member{m}.log"));
        let f = std::fs::File::create(&log)?;
        let child = Command::new(&opts.exe)
            .arg("run")
            .arg("--config")
            .arg(&conf)
            .arg("--control")
            .arg(control_socket(&opts.dir, m))
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .map_err(|e| Error::Other(format!("demo: cannot start {}: {e}", opts.exe.display())))?;
        members.0.push(Member {
            ip: member_ip(m),
            child: Some(child),
            log,
        });
        if m == 1 {
            let first = &members.0[0];
            wait_log(
                first,
                "authoritative DNS server listening",
                opts.phase_timeout,
            )
            .await?;
        }
    }
    for m in &members.0 {
        wait_log(m, "authoritative DNS server listening", opts.phase_timeout).await?;
    }
    for m in &members.0 {
        let text = m.log_text();
        let said = [
            "Creating new ipsec-ddns cluster",
            "Joined existing ipsec-ddns cluster",
        ]
        .into_iter()
        .find(|s| text.contains(s))
        .unwrap_or("(no cluster message)");
        println!("  member {}: {said}", m.ip);
    }

    // The routers: one initiator endpoint, connect-one over all members.
    let rcfg = Config::parse("<demo routers>", &routers_config(p.ike, p.natt))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let popts = PeerOptions {
        count: Some(opts.routers),
        id_prefix: Some("router-".into()),
        duration: None,
        metrics: None,
    };
    let ids = peer::router_ids(rcfg.validate_peer("<demo routers>")?, &popts)?;
    let mut view: Vec<RouterView> = ids
        .iter()
        .map(|id| RouterView {
            name: format!(
                "{}.{DEMO_DOMAIN}",
                crate::event::gateway_id_for(id, None).as_str()
            ),
            up: None,
        })
        .collect();
    let peers = tokio::spawn(async move { peer::run(&rcfg, popts, tx).await });
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    println!("\nRouters connecting (connect-one, round-robin over the members):");
    let end = Instant::now() + opts.phase_timeout;
    let mut last = String::new();
    loop {
        drain(&mut rx, &mut view, &members.0);
        let ans = answered(&sock, &members.0, p.dns, &view).await;
        let all_up = view.iter().all(|r| r.up.is_some());
        let done = all_up && ans.iter().all(|a| *a == Some(view.len()));
        let t = table(t0, &members.0, &view, &ans);
        // Print when something changed (the first line carries the clock).
        let body: String = t.lines().skip(1).collect();
        if body != last || done {
            print!("{t}");
            last = body;
        }
        if done {
            break;
        }
        if Instant::now() > end || peers.is_finished() {
            peers.abort();
            return Err(Error::Other(format!(
                "demo: routers did not all come up and get answered within {:?}; member logs in {}",
                opts.phase_timeout,
                opts.dir.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Kill the busiest member.
    let load: Vec<usize> = (0..members.0.len())
        .map(|i| {
            view.iter()
                .filter(|r| r.up.is_some_and(|(k, _, _)| k == i))
                .count()
        })
        .collect();
    let busiest = (0..load.len())
        .max_by_key(|i| (load[*i], usize::MAX - *i))
        .unwrap_or(0);
    let killed = IpAddr::V4(members.0[busiest].ip);
    let affected: Vec<usize> = (0..view.len())
        .filter(|r| view[*r].up.is_some_and(|(k, _, _)| k == busiest))
        .collect();
    let old_vip: HashMap<usize, Ipv4Addr> = affected
        .iter()
        .filter_map(|r| view[*r].up.map(|(_, v, _)| (*r, v)))
        .collect();
    println!(
        "\nKilling the busiest member {killed} ({} tunnels) with SIGKILL: no Deletes, no goodbye.",
        load[busiest]
    );
    let kill_at = Instant::now();
    if let Some(mut c) = members.0[busiest].child.take() {
        c.kill()?;
        let _ = c.wait();
    }
    let survivors: Vec<SocketAddr> = members
        .0
        .iter()
        .filter(|m| m.alive())
        .map(|m| SocketAddr::new(IpAddr::V4(m.ip), p.dns))
        .collect();
    let mut times: HashMap<usize, Duration> = HashMap::new();
    let end = Instant::now() + opts.phase_timeout;
    let mut next_table = Instant::now() + Duration::from_secs(1);
    while times.len() < affected.len() && Instant::now() < end {
        drain(&mut rx, &mut view, &members.0);
        for r in &affected {
            if times.contains_key(r) {
                continue;
            }
            let Some((m, vip, since)) = view[*r].up else {
                continue;
            };
            if m == busiest || since < kill_at {
                continue;
            }
            let mut all = true;
            for s in &survivors {
                if dns_a(&sock, *s, &view[*r].name).await != Some((0, vec![vip])) {
                    all = false;
                    break;
                }
            }
            if all {
                let t = kill_at.elapsed();
                times.insert(*r, t);
                println!(
                    "  {:<28} {} -> {}   {} -> {}   answered by all {} survivors after {:.2}s",
                    view[*r].name,
                    killed,
                    members.0[m].ip,
                    old_vip.get(r).map_or("-".into(), |v| v.to_string()),
                    vip,
                    survivors.len(),
                    t.as_secs_f64()
                );
            }
        }
        if Instant::now() >= next_table {
            let ans = answered(&sock, &members.0, p.dns, &view).await;
            print!("{}", table(t0, &members.0, &view, &ans));
            next_table = Instant::now() + Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drain(&mut rx, &mut view, &members.0);
    let ans = answered(&sock, &members.0, p.dns, &view).await;
    print!("{}", table(t0, &members.0, &view, &ans));
    // Every router (moved or not) answered by every survivor with its current VIP.
    let mut answered_at_end = 0;
    for r in &view {
        let Some((m, vip, _)) = r.up else { continue };
        if m == busiest {
            continue;
        }
        let mut all = true;
        for s in &survivors {
            all &= dns_a(&sock, *s, &r.name).await == Some((0, vec![vip]));
        }
        answered_at_end += usize::from(all);
    }
    peers.abort();
    // The cluster-wide view, from one survivor: every member's figures.
    if let Some((i, m)) = members.0.iter().enumerate().find(|(_, m)| m.alive()) {
        let sock = control_socket(&opts.dir, i as u8 + 1);
        println!(
            "\nThe cluster-wide view from member {} (`headend show cluster statistics`):",
            m.ip
        );
        print!("{}", cluster_view(&sock, opts.routers).await);
    }
    drop(members);
    let mut times: Vec<Duration> = times.into_values().collect();
    times.sort();
    let summary = Summary {
        routers: view.len(),
        killed,
        affected: affected.len(),
        failed_over: times.len(),
        times,
        answered_at_end,
    };
    println!("\n{summary}");
    println!("  total demo time: {:.1}s", t0.elapsed().as_secs_f64());
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let t: Vec<Duration> = (1..=10).map(Duration::from_secs).collect();
        assert_eq!(quantile(&t, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(quantile(&t, 0.99), Some(Duration::from_secs(10)));
        assert_eq!(quantile(&t, 0.0), Some(Duration::from_secs(1)));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn generated_configs_parse() {
        let p = Ports {
            ike: 40000,
            natt: 40001,
            dns: 40002,
            repl: 40003,
            memb: 40004,
        };
        for m in 1..=MEMBERS {
            let c = Config::parse("m", &member_config(m, p, Path::new("/tmp/x"))).unwrap();
            c.validate_responder("m").unwrap();
            let cc = c.service.ipsec_ddns.as_ref().unwrap();
            assert_eq!(cc.peer.len(), 2);
            assert!(!cc.peer.contains(&cc.self_addr));
        }
        let r = Config::parse("r", &routers_config(40000, 40001)).unwrap();
        assert_eq!(r.validate_peer("r").unwrap().headends.len(), 3);
    }

    #[test]
    fn parse_a_never_panics_on_truncation() {
        // A reply with one A answer 10.99.1.5, then every truncation of it.
        let mut r = vec![0x12, 0x34, 0x84, 0x00, 0, 1, 0, 1, 0, 0, 0, 0];
        let q = [1, b'a', 0, 0, 1, 0, 1];
        r.extend_from_slice(&q);
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 10, 99, 1, 5]);
        assert_eq!(
            parse_a(&r, 12 + q.len()),
            Some((0, vec![Ipv4Addr::new(10, 99, 1, 5)]))
        );
        for n in 0..r.len() {
            let _ = parse_a(&r[..n], 12 + q.len());
        }
    }
}
