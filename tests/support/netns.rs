//! Network namespaces made by the test itself: veth pairs, a masquerading NAT router,
//! `lo` addresses for inside networks. All traffic stays inside these namespaces.
use std::net::Ipv4Addr;
use std::time::Duration;

use super::TestCtx;
use super::{require_root, require_tool, run, run_ok, signal_pid, try_wait_for, Output, Proc};

/// A network namespace, deleted (with every process still inside it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `<ctx.tag>-<role>` with `lo` up.
    pub fn new(ctx: &TestCtx, role: &str) -> Netns {
        require_root();
        require_tool("ip", "iproute2");
        let name = format!("{}-{role}", ctx.tag);
        let _ = run(&["ip", "netns", "del", &name], Duration::from_secs(10));
        run_ok(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> args...`, must succeed.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        run_ok(&argv)
    }

    /// Runs a command inside the namespace (any exit status).
    pub fn exec(&self, argv: &[&str]) -> Output {
        self.exec_timeout(argv, Duration::from_secs(30))
    }

    pub fn exec_timeout(&self, argv: &[&str], timeout: Duration) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run(&full, timeout)
    }

    /// Runs a command inside the namespace; it must succeed.
    pub fn exec_ok(&self, argv: &[&str]) -> Output {
        let o = self.exec(argv);
        assert!(
            o.ok(),
            "in netns {}: {argv:?} failed ({}):\n{}",
            self.name,
            o.status,
            o.all()
        );
        o
    }

    /// `ping -c <count> -i 0.2 -W <wait> [-I <from>] <to>` inside the namespace (any exit
    /// status: `ok()` is whether replies came).
    pub fn ping(&self, from: Option<&str>, to: &str, count: u32, wait: u32) -> Output {
        let ping = require_tool("ping", "iputils-ping");
        let ping = ping.to_str().expect("ping path is UTF-8");
        let (count, wait) = (count.to_string(), wait.to_string());
        let mut argv = vec![ping, "-c", &count, "-i", "0.2", "-W", &wait];
        if let Some(from) = from {
            argv.extend(["-I", from]);
        }
        argv.push(to);
        self.exec(&argv)
    }

    /// Adds an address to `lo` (an inside network behind this host; no `dummy` links here).
    pub fn add_lo_addr(&self, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", "lo"]);
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec_ok(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Spawns a long-running process inside the namespace, output to `<ctx.dir>/<name>.log`.
    pub fn spawn(&self, ctx: &TestCtx, name: &str, argv: &[String], env: &[(&str, &str)]) -> Proc {
        let mut full: Vec<String> = vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ];
        full.extend_from_slice(argv);
        Proc::spawn(ctx, name, &full, env)
    }

    /// PIDs of processes living in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        let o = run(
            &["ip", "netns", "pids", &self.name],
            Duration::from_secs(10),
        );
        o.stdout
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Writes `/etc/netns/<ns>/<file>` (e.g. `resolv.conf`, `hosts`): `ip netns exec`
    /// bind-mounts it over `/etc/<file>` for every process it starts in the namespace, so
    /// each namespace can have its own resolver. Rewritten in place (same inode), so
    /// processes already running see the change. Removed with the namespace.
    pub fn etc_file(&self, file: &str, content: &str) {
        let dir = std::path::Path::new("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let path = dir.join(file);
        std::fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Installs a drop-everything rule for traffic to or from `addr` (cuts a link).
    pub fn nft(&self, script: &str) {
        require_tool("nft", "nftables");
        let o = self.exec(&["nft", script]);
        assert!(
            o.ok(),
            "nft {script:?} in {} failed: {}",
            self.name,
            o.all()
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes keep a namespace alive: end the ones the test left behind.
        for sig in ["TERM", "KILL"] {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in &pids {
                signal_pid(*p, sig);
            }
            let _ = try_wait_for(Duration::from_secs(2), || {
                self.pids().is_empty().then_some(())
            });
        }
        let _ = run(&["ip", "netns", "del", &self.name], Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(&self.name));
    }
}

/// Connects `a` and `b` with a veth pair (created directly inside the namespaces, so the
/// interface names never collide with other tests) and sets addresses and links up.
pub fn veth(a: &Netns, a_if: &str, a_cidr: &str, b: &Netns, b_if: &str, b_cidr: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    a.ip(&["addr", "add", a_cidr, "dev", a_if]);
    b.ip(&["addr", "add", b_cidr, "dev", b_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// Inside network behind the head-end (on its `lo`) and the address on it.
pub const INSIDE_NET: &str = "10.200.0.0/16";
pub const INSIDE_ADDR: &str = "10.200.0.1";

/// Peer router and head-end on one link: peer 10.1.0.2 <-> head-end 10.1.0.1, inside
/// network 10.200.0.0/16 on the head-end's `lo`.
pub struct Direct {
    pub peer: Netns,
    pub he: Netns,
    pub peer_addr: Ipv4Addr,
    pub he_addr: Ipv4Addr,
}

impl Direct {
    pub fn new(ctx: &TestCtx) -> Direct {
        let peer = Netns::new(ctx, "peer");
        let he = Netns::new(ctx, "he");
        veth(&peer, "eth0", "10.1.0.2/24", &he, "eth0", "10.1.0.1/24");
        he.add_lo_addr(&format!("{INSIDE_ADDR}/16"));
        Direct {
            peer,
            he,
            peer_addr: Ipv4Addr::new(10, 1, 0, 2),
            he_addr: Ipv4Addr::new(10, 1, 0, 1),
        }
    }
}

/// Peer router behind a masquerading NAT router:
/// peer 10.1.0.2 -> (10.1.0.1 nat 10.2.0.1) -> head-end 10.2.0.2.
pub struct Natted {
    pub peer: Netns,
    pub nat: Netns,
    pub he: Netns,
    pub peer_addr: Ipv4Addr,
    /// The address the head-end sees the peer as.
    pub nat_public: Ipv4Addr,
    pub he_addr: Ipv4Addr,
}

impl Natted {
    pub fn new(ctx: &TestCtx) -> Natted {
        require_tool("nft", "nftables");
        let peer = Netns::new(ctx, "peer");
        let nat = Netns::new(ctx, "nat");
        let he = Netns::new(ctx, "he");
        veth(&peer, "eth0", "10.1.0.2/24", &nat, "in0", "10.1.0.1/24");
        veth(&nat, "out0", "10.2.0.1/24", &he, "eth0", "10.2.0.2/24");
        peer.ip(&["route", "add", "default", "via", "10.1.0.1"]);
        nat.sysctl("net.ipv4.ip_forward", "1");
        nat.nft("add table ip nat");
        nat.nft("add chain ip nat post { type nat hook postrouting priority 100 ; }");
        nat.nft("add rule ip nat post oifname out0 masquerade random");
        he.add_lo_addr(&format!("{INSIDE_ADDR}/16"));
        Natted {
            peer,
            nat,
            he,
            peer_addr: Ipv4Addr::new(10, 1, 0, 2),
            nat_public: Ipv4Addr::new(10, 2, 0, 1),
            he_addr: Ipv4Addr::new(10, 2, 0, 2),
        }
    }
}

/// One peer router linked to `n` head-ends: peer `eth<i>` 10.1.<i>.2 <-> head-end `i`
/// 10.1.<i>.1, each head-end with the inside network on its `lo`.
pub struct Star {
    pub peer: Netns,
    pub hes: Vec<Netns>,
}

impl Star {
    pub fn new(ctx: &TestCtx, n: usize) -> Star {
        let peer = Netns::new(ctx, "peer");
        let mut hes = Vec::new();
        for i in 0..n {
            let he = Netns::new(ctx, &format!("he{i}"));
            veth(
                &peer,
                &format!("eth{i}"),
                &format!("10.1.{i}.2/24"),
                &he,
                "eth0",
                &format!("10.1.{i}.1/24"),
            );
            he.add_lo_addr(&format!("{INSIDE_ADDR}/16"));
            hes.push(he);
        }
        Star { peer, hes }
    }

    /// Address of head-end `i` on its link.
    pub fn he_addr(i: usize) -> String {
        format!("10.1.{i}.1")
    }

    /// The peer's address on the link to head-end `i`.
    pub fn peer_addr(i: usize) -> String {
        format!("10.1.{i}.2")
    }
}
