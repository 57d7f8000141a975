//! strongSwan's charon as a real IKEv2 peer, one per network namespace.
//!
//! Facts from /work/shared/notes/real-peers.md: the kernel has no ESP, so charon runs
//! with `kernel-libipsec` (userspace ESP on TUN `ipsec0`, which always UDP-encapsulates,
//! so charon moves to port 4500 even without a NAT); `kdf` is required on 5.9.8; two
//! charons collide on /run, so each runs in its own mount namespace (tmpfs /run,
//! bind-mounted strongswan.conf) and is reached through its own vici socket.
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::netns::Netns;
use super::vici::{self, Section};
use super::{require_tool, try_wait_for, Output, Proc, TestCtx};

/// Plugins charon loads: the set from the notes plus `openssl` (ECP groups), `gmp`
/// (MODP) and `chapoly` (ChaCha20-Poly1305) for the interop suites.
pub const PLUGINS: &str = "random nonce aesni aes sha1 sha2 hmac kdf gcm chapoly curve25519 \
    openssl gmp x509 pem pkcs1 pubkey kernel-libipsec kernel-netlink socket-default vici attr \
    updown";

pub const CHARON: &str = "/usr/lib/ipsec/charon";

/// One `connections.<name>` entry of swanctl.conf (with a single child of the same name).
#[derive(Debug, Clone)]
pub struct Conn {
    pub name: String,
    pub local_addrs: Vec<String>,
    pub remote_addrs: Vec<String>,
    /// IKE proposal, e.g. "aes256gcm16-prfsha256-x25519".
    pub proposals: String,
    /// ESP proposal, e.g. "aes256gcm16".
    pub esp_proposals: String,
    pub local_id: String,
    pub remote_id: Option<String>,
    /// Virtual IP request, e.g. "0.0.0.0" (initiator).
    pub vips: Option<String>,
    /// Pool names to hand out (responder).
    pub pools: Option<String>,
    pub local_ts: Option<String>,
    pub remote_ts: Option<String>,
    /// IKE SA rekey interval, e.g. "6s".
    pub rekey_time: Option<String>,
    /// CHILD SA rekey interval.
    pub child_rekey_time: Option<String>,
    pub dpd_delay: Option<String>,
    pub dpd_action: Option<String>,
    pub start_action: Option<String>,
    /// Extra `key = value` lines for the connection.
    pub extra: Vec<(String, String)>,
    /// Extra `key = value` lines for the child.
    pub child_extra: Vec<(String, String)>,
    /// More children of the connection: (name, `key = value` lines), each with the
    /// connection's `esp_proposals` (e.g. two children splitting the traffic to one
    /// subnet by protocol).
    pub more_children: Vec<(String, Vec<(String, String)>)>,
}

impl Conn {
    /// An initiator connection asking for a virtual IP and the head-end's inside network.
    pub fn initiator(name: &str, local: &str, remote: &str, local_id: &str) -> Conn {
        Conn {
            name: name.into(),
            local_addrs: vec![local.into()],
            remote_addrs: vec![remote.into()],
            proposals: "aes256gcm16-prfsha256-x25519".into(),
            esp_proposals: "aes256gcm16".into(),
            local_id: local_id.into(),
            remote_id: None,
            vips: Some("0.0.0.0".into()),
            pools: None,
            local_ts: None,
            remote_ts: Some(super::netns::INSIDE_NET.into()),
            rekey_time: None,
            child_rekey_time: None,
            dpd_delay: None,
            dpd_action: None,
            start_action: None,
            extra: vec![],
            child_extra: vec![],
            more_children: vec![],
        }
    }

    /// A responder connection handing out addresses from `pool` and offering `local_ts`.
    pub fn responder(name: &str, local: &str, local_id: &str, pool: Option<&str>) -> Conn {
        Conn {
            name: name.into(),
            local_addrs: vec![local.into()],
            remote_addrs: vec![],
            proposals: "aes256gcm16-prfsha256-x25519".into(),
            esp_proposals: "aes256gcm16".into(),
            local_id: local_id.into(),
            remote_id: None,
            vips: None,
            pools: pool.map(Into::into),
            local_ts: Some(super::netns::INSIDE_NET.into()),
            remote_ts: None,
            rekey_time: None,
            child_rekey_time: None,
            dpd_delay: None,
            dpd_action: None,
            start_action: None,
            extra: vec![],
            child_extra: vec![],
            more_children: vec![],
        }
    }
}

/// A whole swanctl.conf: connections, address pools and PSK secrets.
#[derive(Debug, Clone, Default)]
pub struct SwanctlConf {
    pub conns: Vec<Conn>,
    /// (name, addrs CIDR)
    pub pools: Vec<(String, String)>,
    /// (identities the key is for; empty = any, secret)
    pub secrets: Vec<(Vec<String>, String)>,
}

impl SwanctlConf {
    /// Renders swanctl.conf syntax (one `key = value` per line inside braces).
    pub fn render(&self) -> String {
        let mut s = String::from("connections {\n");
        for c in &self.conns {
            let _ = writeln!(s, "  {} {{\n    version = 2", c.name);
            if !c.local_addrs.is_empty() {
                let _ = writeln!(s, "    local_addrs = {}", c.local_addrs.join(", "));
            }
            if !c.remote_addrs.is_empty() {
                let _ = writeln!(s, "    remote_addrs = {}", c.remote_addrs.join(", "));
            }
            let _ = writeln!(s, "    proposals = {}", c.proposals);
            let opt = |s: &mut String, k: &str, v: &Option<String>| {
                if let Some(v) = v {
                    let _ = writeln!(s, "    {k} = {v}");
                }
            };
            opt(&mut s, "vips", &c.vips);
            opt(&mut s, "pools", &c.pools);
            opt(&mut s, "rekey_time", &c.rekey_time);
            if c.rekey_time.is_some() {
                // Keep the hard lifetime well away from a short rekey time (charon's
                // default over_time is 10% of rekey_time, which races the rekey).
                s.push_str("    over_time = 60s\n    rand_time = 1s\n");
            }
            opt(&mut s, "dpd_delay", &c.dpd_delay);
            for (k, v) in &c.extra {
                let _ = writeln!(s, "    {k} = {v}");
            }
            let _ = writeln!(
                s,
                "    local {{\n      auth = psk\n      id = {}\n    }}",
                c.local_id
            );
            s.push_str("    remote {\n      auth = psk\n");
            if let Some(r) = &c.remote_id {
                let _ = writeln!(s, "      id = {r}");
            }
            s.push_str("    }\n");
            let _ = writeln!(s, "    children {{\n      {} {{", c.name);
            let _ = writeln!(s, "        esp_proposals = {}", c.esp_proposals);
            let copt = |s: &mut String, k: &str, v: &Option<String>| {
                if let Some(v) = v {
                    let _ = writeln!(s, "        {k} = {v}");
                }
            };
            copt(&mut s, "local_ts", &c.local_ts);
            copt(&mut s, "remote_ts", &c.remote_ts);
            copt(&mut s, "rekey_time", &c.child_rekey_time);
            if c.child_rekey_time.is_some() {
                s.push_str("        life_time = 60s\n        rand_time = 1s\n");
            }
            copt(&mut s, "dpd_action", &c.dpd_action);
            copt(&mut s, "start_action", &c.start_action);
            for (k, v) in &c.child_extra {
                let _ = writeln!(s, "        {k} = {v}");
            }
            s.push_str("      }\n");
            for (name, kvs) in &c.more_children {
                let _ = writeln!(s, "      {name} {{");
                let _ = writeln!(s, "        esp_proposals = {}", c.esp_proposals);
                for (k, v) in kvs {
                    let _ = writeln!(s, "        {k} = {v}");
                }
                s.push_str("      }\n");
            }
            s.push_str("    }\n  }\n");
        }
        s.push_str("}\npools {\n");
        for (name, addrs) in &self.pools {
            let _ = writeln!(s, "  {name} {{\n    addrs = {addrs}\n  }}");
        }
        s.push_str("}\nsecrets {\n");
        for (i, (ids, secret)) in self.secrets.iter().enumerate() {
            let _ = writeln!(s, "  ike-{i} {{");
            for (j, id) in ids.iter().enumerate() {
                let _ = writeln!(s, "    id-{j} = {id}");
            }
            let _ = writeln!(s, "    secret = \"{secret}\"\n  }}");
        }
        s.push_str("}\n");
        s
    }
}

/// A running charon in its own mount namespace inside `ns`.
pub struct Charon {
    pub name: String,
    pub ns: String,
    /// vici socket path (outside the temp dir to stay under the 108-byte limit).
    pub vici: PathBuf,
    /// charon's own file log (IKE level 2).
    pub log: PathBuf,
    conf_path: PathBuf,
    proc: Proc,
}

impl Charon {
    /// Starts charon in `ns` and waits until its vici socket answers.
    pub fn start(ctx: &TestCtx, ns: &Netns, name: &str) -> Charon {
        Self::start_with(ctx, ns, name, "")
    }

    /// Like [`Charon::start`], with extra lines inside the `charon { }` section.
    pub fn start_with(ctx: &TestCtx, ns: &Netns, name: &str, extra: &str) -> Charon {
        Self::launch(
            ctx,
            ns,
            name,
            extra,
            "default = 1\n      ike = 2\n      cfg = 2",
        )
    }

    /// For benchmarks: errors only in the file log (like `headend run` at level warn).
    pub fn start_quiet(ctx: &TestCtx, ns: &Netns, name: &str, extra: &str) -> Charon {
        Self::launch(ctx, ns, name, extra, "default = -1")
    }

    fn launch(ctx: &TestCtx, ns: &Netns, name: &str, extra: &str, levels: &str) -> Charon {
        require_tool(CHARON, "strongswan-charon");
        require_tool("swanctl", "strongswan-swanctl");
        require_tool("unshare", "util-linux");
        for plugin in [
            "kernel-libipsec",
            "kdf",
            "chapoly",
            "openssl",
            "gmp",
            "vici",
        ] {
            let so = format!("/usr/lib/ipsec/plugins/libstrongswan-{plugin}.so");
            require_tool(&so, "libcharon-extra-plugins libstrongswan-extra-plugins");
        }
        let vici = PathBuf::from(format!("/tmp/{}-{name}.vici", ctx.tag));
        let _ = std::fs::remove_file(&vici);
        let log = ctx.path(&format!("{name}-charon.log"));
        let conf = format!(
            "charon {{\n  load = {PLUGINS}\n  install_virtual_ip = yes\n  retransmit_tries = 3\n  \
             retransmit_timeout = 1.0\n  retransmit_base = 1.4\n  {extra}\n  plugins {{\n    \
             vici {{\n      socket = unix://{}\n    }}\n  }}\n  filelog {{\n    main {{\n      \
             path = {}\n      time_format = %H:%M:%S\n      flush_line = yes\n      {levels}\n    \
             }}\n  }}\n}}\n",
            vici.display(),
            log.display()
        );
        let conf_path = ctx.write(&format!("{name}-strongswan.conf"), &conf);
        ctx.track_log(&log);
        let script = format!(
            "mount -t tmpfs none /run && mount --bind {} /etc/strongswan.conf && exec {CHARON}",
            conf_path.display()
        );
        let argv: Vec<String> = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let proc = ns.spawn(ctx, &format!("{name}-charon-stdout"), &argv, &[]);
        let c = Charon {
            name: name.into(),
            ns: ns.name.clone(),
            vici,
            log,
            conf_path,
            proc,
        };
        let up = try_wait_for(Duration::from_secs(15), || {
            (c.vici.exists() && c.swanctl(&["--stats"]).ok()).then_some(())
        });
        assert!(
            up.is_some(),
            "charon {name} did not open its vici socket; see {}",
            c.log.display()
        );
        c
    }

    /// Runs `swanctl <args> --uri <our vici>` inside the namespace.
    pub fn swanctl(&self, args: &[&str]) -> Output {
        self.swanctl_timeout(args, Duration::from_secs(60))
    }

    pub fn swanctl_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        let uri = format!("unix://{}", self.vici.display());
        let mut argv = vec!["ip", "netns", "exec", &self.ns, "swanctl"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--uri", &uri]);
        super::run(&argv, timeout)
    }

    /// Writes and loads a swanctl.conf (connections, pools, secrets); must succeed.
    pub fn load(&self, ctx: &TestCtx, conf: &SwanctlConf) {
        let p = ctx.write(&format!("{}-swanctl.conf", self.name), &conf.render());
        let file = p.display().to_string();
        let o = self.swanctl(&["--load-all", "--noprompt", "--file", &file]);
        assert!(
            o.ok() && !o.stdout.contains("failed"),
            "swanctl --load-all for {} failed:\n{}",
            self.name,
            o.all()
        );
    }

    /// Loads `conn` alone with `psk` for any identity, initiates its child (of the same
    /// name) and waits until it is established.
    pub fn connect_psk(
        &self,
        ctx: &TestCtx,
        conn: Conn,
        psk: &str,
        timeout: Duration,
    ) -> IkeSaState {
        let name = conn.name.clone();
        self.load_psk(ctx, conn, psk);
        self.initiate_ok(&name);
        self.wait_established(&name, timeout)
    }

    /// Loads `conn` alone, with `psk` for any identity and no pools.
    pub fn load_psk(&self, ctx: &TestCtx, conn: Conn, psk: &str) {
        self.load(
            ctx,
            &SwanctlConf {
                conns: vec![conn],
                pools: vec![],
                secrets: vec![(vec![], psk.into())],
            },
        );
    }

    /// `swanctl --initiate --child <child>`; returns the streamed log output.
    pub fn initiate(&self, child: &str) -> Output {
        self.swanctl_timeout(
            &["--initiate", "--child", child, "--timeout", "20"],
            Duration::from_secs(30),
        )
    }

    /// Initiates and asserts success.
    pub fn initiate_ok(&self, child: &str) -> Output {
        let o = self.initiate(child);
        assert!(
            o.ok() && o.stdout.contains("initiate completed successfully"),
            "{}: swanctl --initiate --child {child} failed ({}):\n{}",
            self.name,
            o.status,
            o.all()
        );
        o
    }

    /// `swanctl --terminate --ike <name>`.
    pub fn terminate_ike(&self, ike: &str) -> Output {
        self.swanctl_timeout(
            &["--terminate", "--ike", ike, "--timeout", "10"],
            Duration::from_secs(20),
        )
    }

    /// `swanctl --rekey --ike <name>` (or `--child`).
    pub fn rekey(&self, kind: &str, name: &str) -> Output {
        self.swanctl(&["--rekey", &format!("--{kind}"), name])
    }

    /// Current IKE SAs as charon reports them.
    pub fn list_sas(&self) -> Vec<IkeSaState> {
        let o = self.swanctl(&["--list-sas", "--raw"]);
        vici::parse_raw(&o.stdout)
            .into_iter()
            .filter(|m| m.name == "list-sa event")
            .flat_map(|m| {
                m.body
                    .sections()
                    .map(|(n, s)| IkeSaState::from_vici(n, s))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Waits for an ESTABLISHED IKE SA `conn` with at least one INSTALLED child.
    pub fn wait_established(&self, conn: &str, timeout: Duration) -> IkeSaState {
        super::wait_for(
            &format!("charon {}: IKE SA {conn} established", self.name),
            timeout,
            || {
                self.list_sas().into_iter().find(|s| {
                    s.name == conn
                        && s.state == "ESTABLISHED"
                        && s.children.iter().any(|c| c.state == "INSTALLED")
                })
            },
        )
    }

    /// charon's file log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    pub fn log_since(&self, from: u64) -> String {
        let t = self.log_text();
        t.get(from as usize..).unwrap_or("").to_string()
    }

    /// Waits until charon's log (from byte `from`) contains `needle`.
    pub fn wait_log_since(&self, from: u64, needle: &str, timeout: Duration) {
        let found = try_wait_for(timeout, || {
            self.log_since(from).contains(needle).then_some(())
        });
        assert!(
            found.is_some(),
            "charon {}: log did not show {needle:?} within {timeout:?}; see {}",
            self.name,
            self.log.display()
        );
    }

    /// Freezes charon (no answers, no DPD) or thaws it.
    pub fn pause(&self, stop: bool) {
        self.proc.signal(if stop { "STOP" } else { "CONT" });
    }

    /// SIGKILL: the peer vanishes without sending Deletes (a router reboot).
    pub fn crash(&mut self) {
        self.proc.kill();
    }

    pub fn conf_path(&self) -> &PathBuf {
        &self.conf_path
    }
}

impl Drop for Charon {
    fn drop(&mut self) {
        // Thaw first in case the test stopped it, so SIGTERM is handled.
        self.proc.signal("CONT");
        self.proc.terminate(Duration::from_secs(3));
        let _ = std::fs::remove_file(&self.vici);
    }
}

/// An IKE SA as `swanctl --list-sas --raw` reports it.
#[derive(Debug, Clone, Default)]
pub struct IkeSaState {
    pub name: String,
    pub uniqueid: String,
    pub state: String,
    pub local_host: String,
    pub local_port: String,
    pub remote_host: String,
    pub remote_port: String,
    pub local_id: String,
    pub remote_id: String,
    pub initiator: bool,
    pub initiator_spi: String,
    pub responder_spi: String,
    /// Our address is behind a NAT (the peer's NAT_DETECTION_DESTINATION_IP differed).
    pub nat_local: bool,
    pub nat_remote: bool,
    pub encr_alg: String,
    pub encr_keysize: String,
    pub integ_alg: String,
    pub prf_alg: String,
    pub dh_group: String,
    pub local_vips: Vec<String>,
    pub remote_vips: Vec<String>,
    pub children: Vec<ChildSaState>,
}

/// A CHILD SA as charon reports it.
#[derive(Debug, Clone, Default)]
pub struct ChildSaState {
    pub name: String,
    pub uniqueid: String,
    pub state: String,
    pub encap: bool,
    pub spi_in: String,
    pub spi_out: String,
    pub encr_alg: String,
    pub encr_keysize: String,
    pub integ_alg: String,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
}

impl IkeSaState {
    fn from_vici(name: &str, s: &Section) -> IkeSaState {
        let g = |k: &str| s.get(k).unwrap_or("").to_string();
        let children = s
            .section("child-sas")
            .map(|cs| {
                cs.sections()
                    .map(|(_, c)| {
                        let g = |k: &str| c.get(k).unwrap_or("").to_string();
                        ChildSaState {
                            name: g("name"),
                            uniqueid: g("uniqueid"),
                            state: g("state"),
                            encap: c.get("encap") == Some("yes"),
                            spi_in: g("spi-in"),
                            spi_out: g("spi-out"),
                            encr_alg: g("encr-alg"),
                            encr_keysize: g("encr-keysize"),
                            integ_alg: g("integ-alg"),
                            local_ts: c.list("local-ts"),
                            remote_ts: c.list("remote-ts"),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        IkeSaState {
            name: name.to_string(),
            uniqueid: g("uniqueid"),
            state: g("state"),
            local_host: g("local-host"),
            local_port: g("local-port"),
            remote_host: g("remote-host"),
            remote_port: g("remote-port"),
            local_id: g("local-id"),
            remote_id: g("remote-id"),
            initiator: s.get("initiator") == Some("yes"),
            initiator_spi: g("initiator-spi"),
            responder_spi: g("responder-spi"),
            nat_local: s.get("nat-local") == Some("yes"),
            nat_remote: s.get("nat-remote") == Some("yes"),
            encr_alg: g("encr-alg"),
            encr_keysize: g("encr-keysize"),
            integ_alg: g("integ-alg"),
            prf_alg: g("prf-alg"),
            dh_group: g("dh-group"),
            local_vips: s.list("local-vips"),
            remote_vips: s.list("remote-vips"),
            children,
        }
    }
}
