//! Shared helpers for the DNS integration tests: run `dig` and parse what it prints, and
//! launch Unbound as a real resolver in a network namespace the test creates, with a
//! stub-zone for the gateway domain pointing at head-end servers.
//!
//! Missing tools make the tests FAIL (panic), never skip: install `dnsutils` and
//! `unbound` (Debian).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One resource record line of dig's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rr {
    pub name: String,
    pub ttl: u32,
    pub rtype: String,
    pub data: String,
}

/// What dig reported.
#[derive(Debug, Clone, Default)]
pub struct DigResult {
    pub status: String,
    pub flags: Vec<String>,
    pub answer: Vec<Rr>,
    pub authority: Vec<Rr>,
    pub additional: Vec<Rr>,
    pub edns: bool,
    pub raw: String,
}

impl DigResult {
    pub fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }
    pub fn answer_data(&self, rtype: &str) -> Vec<String> {
        self.answer
            .iter()
            .filter(|r| r.rtype == rtype)
            .map(|r| r.data.clone())
            .collect()
    }
}

fn need(tool: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let p = PathBuf::from(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("required tool `{tool}` is not installed (apt-get install dnsutils unbound iproute2)");
}

/// Parse dig's default output.
pub fn parse_dig(out: &str) -> DigResult {
    let mut r = DigResult {
        raw: out.to_owned(),
        ..DigResult::default()
    };
    let mut section = "";
    for line in out.lines() {
        let l = line.trim();
        if let Some(i) = l.find("status: ") {
            r.status = l[i + 8..].split(',').next().unwrap_or("").trim().to_owned();
        }
        if let Some(i) = l.find(";; flags: ") {
            let f = &l[i + 10..];
            let f = f.split(';').next().unwrap_or("");
            r.flags = f.split_whitespace().map(str::to_owned).collect();
        }
        if l.starts_with("; EDNS:") {
            r.edns = true;
        }
        if l.starts_with(";; ANSWER SECTION") {
            section = "answer";
            continue;
        }
        if l.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
            continue;
        }
        if l.starts_with(";; ADDITIONAL SECTION") {
            section = "additional";
            continue;
        }
        if l.is_empty() || l.starts_with(';') {
            if l.is_empty() {
                section = "";
            }
            continue;
        }
        let parts: Vec<&str> = l.split_whitespace().collect();
        if parts.len() < 5 || section.is_empty() {
            continue;
        }
        let rr = Rr {
            name: parts[0].to_owned(),
            ttl: parts[1].parse().unwrap_or(0),
            rtype: parts[3].to_owned(),
            data: parts[4..].join(" "),
        };
        match section {
            "answer" => r.answer.push(rr),
            "authority" => r.authority.push(rr),
            _ => r.additional.push(rr),
        }
    }
    r
}

/// `dig @server -p port <args>` with short timeouts; panics if dig is missing.
pub fn dig(server: SocketAddr, args: &[&str]) -> DigResult {
    let out = Command::new(need("dig"))
        .arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+time=2", "+tries=2"])
        .args(args)
        .output()
        .expect("run dig");
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_dig(&s)
}

/// Run a command, panicking with its output if it fails.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {cmd}: {e}");
    });
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace created by the test, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        need("ip");
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh("ip", &["netns", "add", name]);
        sh("ip", &["-n", name, "link", "set", "lo", "up"]);
        Netns {
            name: name.to_owned(),
        }
    }

    /// `ip netns exec <ns> <cmd> <args>`.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, cmd]).args(args);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair between the host (root namespace) and `ns`: host side `host_ip/prefix`,
/// namespace side `ns_ip/prefix`. Removed with the namespace.
pub fn veth(ns: &Netns, host_if: &str, host_ip: &str, ns_ip: &str, prefix: u8) {
    let peer = format!("{host_if}p");
    let _ = Command::new("ip").args(["link", "del", host_if]).output();
    sh(
        "ip",
        &[
            "link", "add", host_if, "type", "veth", "peer", "name", &peer,
        ],
    );
    sh("ip", &["link", "set", &peer, "netns", &ns.name]);
    sh(
        "ip",
        &[
            "addr",
            "add",
            &format!("{host_ip}/{prefix}"),
            "dev",
            host_if,
        ],
    );
    sh("ip", &["link", "set", host_if, "up"]);
    sh(
        "ip",
        &[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{ns_ip}/{prefix}"),
            "dev",
            &peer,
        ],
    );
    sh("ip", &["-n", &ns.name, "link", "set", &peer, "up"]);
}

/// Unbound running as a recursive resolver inside a namespace, with a stub-zone for
/// `domain` pointing at the given head-end servers. Killed on drop.
pub struct Unbound {
    child: Child,
    pub listen: SocketAddr,
    dir: PathBuf,
}

impl Unbound {
    /// Start Unbound in `ns` listening on `listen` (an address inside `ns`), with
    /// `stub-zone: domain` -> `servers` (`addr@port`). The root is stubbed to the same
    /// servers too (they answer REFUSED), so Unbound never tries real root servers.
    pub fn start(ns: &Netns, listen: SocketAddr, domain: &str, servers: &[SocketAddr]) -> Unbound {
        let unbound = need("unbound");
        let dir = std::env::temp_dir().join(format!(
            "headend-unbound-{}-{}",
            std::process::id(),
            ns.name
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut stubs = String::new();
        for s in servers {
            stubs.push_str(&format!("    stub-addr: {}@{}\n", s.ip(), s.port()));
        }
        let conf = format!(
            "server:\n\
             \x20   interface: {ip}@{port}\n\
             \x20   port: {port}\n\
             \x20   access-control: 0.0.0.0/0 allow\n\
             \x20   access-control: ::/0 allow\n\
             \x20   username: \"\"\n\
             \x20   chroot: \"\"\n\
             \x20   directory: \"{dir}\"\n\
             \x20   pidfile: \"{dir}/unbound.pid\"\n\
             \x20   use-syslog: no\n\
             \x20   logfile: \"\"\n\
             \x20   verbosity: 1\n\
             \x20   do-daemonize: no\n\
             \x20   num-threads: 1\n\
             \x20   do-not-query-localhost: no\n\
             \x20   module-config: \"iterator\"\n\
             \x20   domain-insecure: \"{domain}\"\n\
             \x20   qname-minimisation: no\n\
             \x20   harden-referral-path: no\n\
             \x20   prefetch: no\n\
             \x20   serve-expired: no\n\
             \x20   root-hints: \"\"\n\
             \x20   local-zone: \"{domain}\" nodefault\n\
             stub-zone:\n\
             \x20   name: \"{domain}\"\n\
             {stubs}\
             stub-zone:\n\
             \x20   name: \".\"\n\
             {stubs}\
             remote-control:\n\
             \x20   control-enable: no\n",
            ip = listen.ip(),
            port = listen.port(),
            dir = dir.display(),
        );
        let conf_path = dir.join("unbound.conf");
        std::fs::write(&conf_path, conf).unwrap();
        if let Ok(o) = Command::new(need("unbound-checkconf"))
            .arg(&conf_path)
            .output()
        {
            assert!(
                o.status.success(),
                "unbound-checkconf: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let child = ns
            .exec(
                unbound.to_str().unwrap(),
                &["-d", "-c", conf_path.to_str().unwrap()],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("unbound.log")).unwrap(),
            ))
            .spawn()
            .expect("start unbound");
        let u = Unbound { child, listen, dir };
        u.wait_ready(ns);
        u
    }

    fn wait_ready(&self, ns: &Netns) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let out = ns
                .exec(
                    "dig",
                    &[
                        &format!("@{}", self.listen.ip()),
                        "-p",
                        &self.listen.port().to_string(),
                        "+time=1",
                        "+tries=1",
                        "id.server",
                        "CH",
                        "TXT",
                    ],
                )
                .output();
            if let Ok(o) = out {
                if String::from_utf8_lossy(&o.stdout).contains("status:") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("unbound did not start; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("unbound.log")).unwrap_or_default()
    }

    /// Resolve `name`/`rtype` through this Unbound, from a client inside `ns`.
    pub fn resolve(&self, ns: &Netns, name: &str, rtype: &str) -> DigResult {
        let out = ns
            .exec(
                "dig",
                &[
                    &format!("@{}", self.listen.ip()),
                    "-p",
                    &self.listen.port().to_string(),
                    "+time=2",
                    "+tries=1",
                    name,
                    rtype,
                ],
            )
            .output()
            .expect("dig in namespace");
        parse_dig(&String::from_utf8_lossy(&out.stdout))
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Parse an address out of dig's A/AAAA data.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
