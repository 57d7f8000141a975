//! The built `headend` binary (`headend run` / `headend peer`) with a generated TOML
//! config (format: src/config.rs, sample: examples/headend.toml).
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::netns::Netns;
use super::{try_wait_for, Proc, TestCtx};

/// Path of the headend binary cargo built for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_headend"))
}

/// A TOML string literal.
fn q(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn qlist(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| q(s)).collect();
    format!("[{}]", items.join(", "))
}

/// Settings for `headend run` (responder) and `headend peer` (initiator).
#[derive(Debug, Clone)]
pub struct HeadendConf {
    pub listen: Vec<String>,
    pub port: u16,
    pub natt_port: u16,
    pub local_id: String,
    /// IKE proposals (strongSwan syntax); empty keeps the daemon's defaults.
    pub proposals: Vec<String>,
    pub esp_proposals: Vec<String>,
    pub local_ts: Vec<String>,
    pub ike_lifetime: Option<String>,
    pub child_lifetime: Option<String>,
    pub rekey_jitter: Option<String>,
    pub dpd_delay: Option<String>,
    pub retransmit_timeout: Option<String>,
    pub retransmit_tries: Option<u32>,
    pub psk_default: Option<String>,
    pub psk_peers: Vec<(String, String)>,
    pub pool_v4: Option<String>,
    pub pool_dns: Vec<String>,
    pub log_level: String,
    pub peer: Option<PeerConf>,
    /// Extra `key = value` lines (raw TOML values) for the `[ike]` section.
    pub ike_extra: Vec<(String, String)>,
    /// Raw TOML appended at the end (extra sections).
    pub extra: String,
}

/// The `[peer]` section for `headend peer`.
#[derive(Debug, Clone)]
pub struct PeerConf {
    pub local_id: String,
    pub remote_id: Option<String>,
    pub psk: Option<String>,
    /// `ip:port` of each head-end, with its NAT-T port.
    pub headends: Vec<(String, u16)>,
    pub policy: Option<String>,
    pub bind: Option<String>,
    pub remote_ts: Vec<String>,
    /// `children`: (local_ts, remote_ts) of each CHILD SA (an empty side is left out).
    pub children: Vec<(Vec<String>, Vec<String>)>,
}

impl HeadendConf {
    /// A responder on `listen` ports 500/4500 with one default PSK and a v4 pool.
    pub fn responder(listen: &str, psk: &str, pool: &str) -> HeadendConf {
        HeadendConf {
            listen: vec![listen.into()],
            port: 500,
            natt_port: 4500,
            local_id: "headend.test".into(),
            proposals: vec![],
            esp_proposals: vec![],
            local_ts: vec![super::netns::INSIDE_NET.into()],
            ike_lifetime: None,
            child_lifetime: None,
            rekey_jitter: None,
            dpd_delay: None,
            retransmit_timeout: None,
            retransmit_tries: None,
            psk_default: Some(psk.into()),
            psk_peers: vec![],
            pool_v4: Some(pool.into()),
            pool_dns: vec![],
            log_level: "debug".into(),
            peer: None,
            ike_extra: vec![],
            extra: String::new(),
        }
    }

    /// A peer router (`headend peer`) connecting to `headends`.
    pub fn peer(local_id: &str, psk: &str, headends: &[(String, u16)]) -> HeadendConf {
        let mut c = HeadendConf::responder("0.0.0.0", psk, "10.98.0.0/24");
        c.pool_v4 = None;
        c.local_ts = vec![];
        c.peer = Some(PeerConf {
            local_id: local_id.into(),
            remote_id: None,
            psk: Some(psk.into()),
            headends: headends.to_vec(),
            policy: None,
            bind: None,
            remote_ts: vec![],
            children: vec![],
        });
        c
    }

    pub fn render(&self) -> String {
        let mut s = String::from("[ike]\n");
        let _ = writeln!(s, "listen = {}", qlist(&self.listen));
        let _ = writeln!(s, "port = {}\nnatt_port = {}", self.port, self.natt_port);
        let _ = writeln!(s, "local_id = {}", q(&self.local_id));
        if !self.proposals.is_empty() {
            let _ = writeln!(s, "proposals = {}", qlist(&self.proposals));
        }
        if !self.esp_proposals.is_empty() {
            let _ = writeln!(s, "esp_proposals = {}", qlist(&self.esp_proposals));
        }
        if !self.local_ts.is_empty() {
            let _ = writeln!(s, "local_ts = {}", qlist(&self.local_ts));
        }
        for (k, v) in [
            ("ike_lifetime", &self.ike_lifetime),
            ("child_lifetime", &self.child_lifetime),
            ("rekey_jitter", &self.rekey_jitter),
            ("dpd_delay", &self.dpd_delay),
            ("retransmit_timeout", &self.retransmit_timeout),
        ] {
            if let Some(v) = v {
                let _ = writeln!(s, "{k} = {}", q(v));
            }
        }
        if let Some(t) = self.retransmit_tries {
            let _ = writeln!(s, "retransmit_tries = {t}");
        }
        for (k, v) in &self.ike_extra {
            let _ = writeln!(s, "{k} = {v}");
        }
        s.push_str("\n[psk]\n");
        if let Some(d) = &self.psk_default {
            let _ = writeln!(s, "default = {}", q(d));
        }
        if !self.psk_peers.is_empty() {
            s.push_str("[psk.peers]\n");
            for (id, k) in &self.psk_peers {
                let _ = writeln!(s, "{} = {}", q(id), q(k));
            }
        }
        if self.pool_v4.is_some() || !self.pool_dns.is_empty() {
            s.push_str("\n[pool]\n");
            if let Some(v4) = &self.pool_v4 {
                let _ = writeln!(s, "v4 = {}", q(v4));
            }
            if !self.pool_dns.is_empty() {
                let _ = writeln!(s, "dns = {}", qlist(&self.pool_dns));
            }
        }
        let _ = writeln!(
            s,
            "\n[log]\nformat = \"text\"\nlevel = {}",
            q(&self.log_level)
        );
        if let Some(p) = &self.peer {
            s.push_str("\n[peer]\n");
            let _ = writeln!(s, "local_id = {}", q(&p.local_id));
            if let Some(r) = &p.remote_id {
                let _ = writeln!(s, "remote_id = {}", q(r));
            }
            if let Some(k) = &p.psk {
                let _ = writeln!(s, "psk = {}", q(k));
            }
            if let Some(pol) = &p.policy {
                let _ = writeln!(s, "policy = {}", q(pol));
            }
            if let Some(b) = &p.bind {
                let _ = writeln!(s, "bind = {}", q(b));
            }
            if !p.remote_ts.is_empty() {
                let _ = writeln!(s, "remote_ts = {}", qlist(&p.remote_ts));
            }
            if !p.children.is_empty() {
                let cs: Vec<String> = p
                    .children
                    .iter()
                    .map(|(l, r)| {
                        let mut kv = vec![];
                        if !l.is_empty() {
                            kv.push(format!("local_ts = {}", qlist(l)));
                        }
                        if !r.is_empty() {
                            kv.push(format!("remote_ts = {}", qlist(r)));
                        }
                        format!("{{ {} }}", kv.join(", "))
                    })
                    .collect();
                let _ = writeln!(s, "children = [{}]", cs.join(", "));
            }
            let hs: Vec<String> = p
                .headends
                .iter()
                .map(|(a, natt)| format!("{{ addr = {}, natt_port = {natt} }}", q(a)))
                .collect();
            let _ = writeln!(s, "headends = [{}]", hs.join(", "));
        }
        if !self.extra.is_empty() {
            s.push('\n');
            s.push_str(&self.extra);
            s.push('\n');
        }
        s
    }
}

/// `headend show --socket <control> <words>`: the operator CLI's answer (must succeed).
pub fn show(control: &std::path::Path, words: &[&str]) -> String {
    let out = std::process::Command::new(bin())
        .arg("show")
        .arg("--socket")
        .arg(control)
        .args(words)
        .output()
        .expect("headend show runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "headend show {} failed: {text}{}",
        words.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// One CHILD SA row of `headend show vpn ipsec sa detail`: gateway ID, SPIs in/out,
/// local TS, remote TS, state, bytes in/out, packets in/out.
#[derive(Debug, Clone)]
pub struct ChildRow {
    pub gateway_id: String,
    /// `<inbound>/<outbound>` SPIs, as shown.
    pub spis: String,
    pub spi_in: u32,
    pub spi_out: u32,
    /// The local selectors, comma-separated.
    pub local_ts: String,
    pub remote_ts: String,
    pub state: String,
    /// (in, out)
    pub bytes: (u64, u64),
    pub packets: (u64, u64),
}

impl ChildRow {
    /// The row whose (first) local selector ends with `ts`; `detail` is shown on failure.
    pub fn find(rows: &[ChildRow], ts: &str, detail: &str) -> ChildRow {
        rows.iter()
            .find(|r| r.local_ts.ends_with(ts))
            .cloned()
            .unwrap_or_else(|| panic!("no CHILD SA with local TS {ts}:\n{detail}"))
    }
}

/// `show vpn ipsec sa detail` on the control socket `control`: the text and its rows.
pub fn child_sas(control: &std::path::Path) -> (String, Vec<ChildRow>) {
    let detail = show(control, &["vpn", "ipsec", "sa", "detail"]);
    let pair = |s: &str| -> (u64, u64) {
        let (a, b) = s.split_once('/').unwrap_or_else(|| panic!("{detail}"));
        (
            a.parse().unwrap_or_else(|_| panic!("{detail}")),
            b.parse().unwrap_or_else(|_| panic!("{detail}")),
        )
    };
    let rows = detail
        .lines()
        .skip(1)
        .filter(|l| !l.ends_with("CHILD SA(s)"))
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(c.len(), 7, "{detail}");
            let (i, o) = c[1].split_once('/').unwrap_or_else(|| panic!("{detail}"));
            let spi = |s: &str| u32::from_str_radix(s, 16).unwrap_or_else(|_| panic!("{detail}"));
            ChildRow {
                gateway_id: c[0].to_string(),
                spis: c[1].to_string(),
                spi_in: spi(i),
                spi_out: spi(o),
                local_ts: c[2].to_string(),
                remote_ts: c[3].to_string(),
                state: c[4].to_string(),
                bytes: pair(c[5]),
                packets: pair(c[6]),
            }
        })
        .collect();
    (detail, rows)
}

/// The rows of [`child_sas`].
pub fn child_rows(control: &std::path::Path) -> Vec<ChildRow> {
    child_sas(control).1
}

/// A running `headend run` or `headend peer`.
pub struct Headend {
    pub proc: Proc,
    pub config: PathBuf,
}

impl Headend {
    /// Starts `headend run --config <generated>` inside `ns` (or in the test's own
    /// namespace when `None`) and waits until its IKE and NAT-T ports are bound.
    pub fn run(ctx: &TestCtx, ns: Option<&Netns>, name: &str, conf: &HeadendConf) -> Headend {
        Self::run_with(ctx, ns, name, conf, &[])
    }

    /// [`Headend::run`] with extra arguments (e.g. `--control PATH`).
    pub fn run_with(
        ctx: &TestCtx,
        ns: Option<&Netns>,
        name: &str,
        conf: &HeadendConf,
        args: &[&str],
    ) -> Headend {
        let mut h = Self::spawn(ctx, ns, name, "run", conf, args);
        let ports = [conf.port, conf.natt_port];
        let bound = try_wait_for(Duration::from_secs(20), || {
            if let Some(code) = h.proc.exited() {
                return Some(Err(code));
            }
            let pid = h.proc.pid()?;
            let udp = std::fs::read_to_string(format!("/proc/{pid}/net/udp")).ok()?;
            let udp6 = std::fs::read_to_string(format!("/proc/{pid}/net/udp6")).unwrap_or_default();
            let listening = bound_udp_ports(&udp, &udp6);
            ports
                .iter()
                .all(|p| listening.contains(p))
                .then_some(Ok(()))
        });
        if let Some(Err(code)) = bound {
            panic!(
                "headend {name} exited with {code} at startup (log {}):\n{}",
                h.proc.log.display(),
                h.proc.log_text()
            );
        }
        if bound.is_none() {
            panic!(
                "headend {name} did not bind UDP ports {ports:?} within 20 s (log {}):\n{}",
                h.proc.log.display(),
                h.proc.log_text()
            );
        }
        h
    }

    /// Starts `headend peer --config <generated> [args]` inside `ns`.
    pub fn peer(
        ctx: &TestCtx,
        ns: Option<&Netns>,
        name: &str,
        conf: &HeadendConf,
        args: &[&str],
    ) -> Headend {
        Self::spawn(ctx, ns, name, "peer", conf, args)
    }

    fn spawn(
        ctx: &TestCtx,
        ns: Option<&Netns>,
        name: &str,
        cmd: &str,
        conf: &HeadendConf,
        args: &[&str],
    ) -> Headend {
        let bin = bin();
        assert!(bin.exists(), "headend binary missing at {}", bin.display());
        let config = ctx.write(&format!("{name}.toml"), &conf.render());
        let mut argv: Vec<String> = vec![
            bin.display().to_string(),
            cmd.into(),
            "--config".into(),
            config.display().to_string(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        let env = [("RUST_BACKTRACE", "1"), ("NO_COLOR", "1")];
        let proc = match ns {
            Some(ns) => ns.spawn(ctx, name, &argv, &env),
            None => Proc::spawn(ctx, name, &argv, &env),
        };
        Headend { proc, config }
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// Panics if the process exited (crashed) — the daemon must stay up.
    pub fn assert_running(&mut self) {
        if let Some(code) = self.proc.exited() {
            panic!(
                "headend {} exited with {code}; log {}:\n{}",
                self.proc.name,
                self.proc.log.display(),
                self.proc.log_text()
            );
        }
    }
}

/// UDP ports in state "listening" (bound, any address) from /proc/net/udp{,6} text.
pub fn bound_udp_ports(udp: &str, udp6: &str) -> Vec<u16> {
    udp.lines()
        .chain(udp6.lines())
        .skip(1)
        .filter_map(|l| {
            let local = l.split_whitespace().nth(1)?;
            let port = local.rsplit(':').next()?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// Value of `key=value` in a tracing text log line (up to the next space).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    Some(rest.split(' ').next().unwrap_or(rest))
}

/// Daemon log lines with `message` whose `gateway_id` field is exactly `gateway_id`.
/// `headend run` logs "IKE SA established ... gateway_id=X vip=[..]" and
/// "IKE SA deleted ... gateway_id=X ... reason=R" (one per tunnel up/down event);
/// `headend peer` logs "tunnel up" with the same field.
pub fn lines_with<'a>(log: &'a str, message: &str, gateway_id: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains(message) && field(l, "gateway_id") == Some(gateway_id))
        .collect()
}

/// True once `headend run` logged the tunnel for `gateway_id` as established.
pub fn saw_up(he: &Headend, gateway_id: &str) -> bool {
    !lines_with(&he.proc.log_text(), "IKE SA established", gateway_id).is_empty()
}

/// Waits until `headend run` logs the tunnel for `gateway_id` as established; returns
/// the log line.
pub fn wait_up(he: &Headend, gateway_id: &str, timeout: Duration) -> String {
    let line = try_wait_for(timeout, || {
        lines_with(&he.proc.log_text(), "IKE SA established", gateway_id)
            .first()
            .map(|l| l.to_string())
    });
    line.unwrap_or_else(|| {
        panic!(
            "headend did not log 'IKE SA established' for gateway_id={gateway_id} within \
             {timeout:?}; log {}",
            he.proc.log.display()
        )
    })
}

/// Waits until `headend run` logs (after byte `from`) the IKE SA of `gateway_id` as
/// deleted; returns the `reason` field ("peer-deleted", "timeout", ...).
pub fn wait_down(he: &Headend, from: u64, gateway_id: &str, timeout: Duration) -> String {
    let reason = try_wait_for(timeout, || {
        let log = he.proc.log_since(from);
        let lines = lines_with(&log, "IKE SA deleted", gateway_id);
        lines
            .first()
            .map(|l| field(l, "reason").unwrap_or("").to_string())
    });
    reason.unwrap_or_else(|| {
        panic!(
            "headend did not log 'IKE SA deleted' for gateway_id={gateway_id} within \
             {timeout:?}; log {}",
            he.proc.log.display()
        )
    })
}

/// The number of IKE SAs `headend run` held when it shut down (its "shutting down:
/// Deletes sent ike_sas=N" line), once it has exited.
pub fn sa_count_at_shutdown(he: &Headend) -> Option<usize> {
    he.proc
        .log_text()
        .lines()
        .find(|l| l.contains("shutting down"))
        .and_then(|l| field(l, "ike_sas"))
        .and_then(|v| v.parse().ok())
}

/// `[[dns.ns]]` entries `ns1`, `ns2`, ...: one name server per cluster member, served with
/// the glue address `addrs[i]` (the `[dns]` section must precede them).
pub fn dns_ns_entries(addrs: &[String]) -> String {
    addrs
        .iter()
        .enumerate()
        .map(|(j, a)| format!("[[dns.ns]]\nname = \"ns{}\"\naddrs = [{}]\n", j + 1, q(a)))
        .collect()
}

/// The `[service.ipsec-ddns]` section of one cluster member (seed 003 ch. 4): its `self`
/// address, the other members' `peer` addresses, the shared secret and domain, its state in
/// `data_dir`.
pub fn ipsec_ddns_section(
    self_addr: &str,
    peers: &[String],
    secret: &str,
    domain: &str,
    data_dir: &std::path::Path,
) -> String {
    format!(
        "\n[service.ipsec-ddns]\nself = {}\npeer = {}\nsecret = {}\ndomain = {}\n\
         enable = true\ndata_dir = {}\n",
        q(self_addr),
        qlist(peers),
        q(secret),
        q(domain),
        q(&data_dir.display().to_string())
    )
}

/// Starts an ipsec-ddns cluster member by member: `start(0)` must log that it created the
/// cluster, every later member that it joined and synced (the seed's lines), each within
/// `timeout`, before the next starts.
pub fn start_cluster(
    members: usize,
    timeout: Duration,
    mut start: impl FnMut(usize) -> Headend,
) -> Vec<Option<Headend>> {
    (0..members)
        .map(|i| {
            let he = start(i);
            if i == 0 {
                he.proc.wait_log("Creating new ipsec-ddns cluster", timeout);
            } else {
                he.proc
                    .wait_log("Joined existing ipsec-ddns cluster", timeout);
                he.proc.wait_log("synced with the cluster", timeout);
            }
            Some(he)
        })
        .collect()
}
