//! Real-peer test harness shared by the integration tests in `tests/`.
//!
//! Use it from a test file with `mod support;`. It provides:
//! - [`TestCtx`]: a per-test temp dir (logs, configs) and unique names; logs are kept and
//!   their tails printed when the test panics, removed when it passes.
//! - [`netns`]: network namespaces, veth pairs, a NAT router namespace (nftables
//!   masquerade), `lo` addresses, running commands and spawning processes inside them.
//! - [`charon`]: strongSwan's charon in its own mount namespace inside a network namespace,
//!   swanctl.conf generation and `swanctl` helpers (initiate, terminate, list-sas parsing).
//! - [`headend`]: the built `headend` binary with a generated TOML config.
//! - [`iperf`]: iperf3 from a peer's virtual IP to the inside address, its JSON figures.
//!
//! Missing privileges or tools make a test FAIL with a clear message (never skip).
#![allow(dead_code)]

pub mod charon;
pub mod headend;
pub mod iperf;
pub mod netns;
pub mod vici;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Panics unless the process runs as root (namespaces, veth, mounts need it).
pub fn require_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("?");
    assert!(
        euid == "0",
        "this test needs root (network namespaces, veth pairs, mount namespaces); \
         run the suite with `sudo tests/run.sh` (effective uid is {euid})"
    );
}

/// Full path of an executable found in PATH (or an absolute path that exists).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    if name.starts_with('/') {
        let p = PathBuf::from(name);
        return p.exists().then_some(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// Panics with the Debian package to install when a tool is missing.
pub fn require_tool(name: &str, package: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!(
            "required tool `{name}` not found: install the Debian package `{package}` \
             (tests/run.sh installs everything the suite needs)"
        )
    })
}

/// Polls `cond` until it returns `Some` or `timeout` passes; panics naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    match try_wait_for(timeout, &mut cond) {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `cond` until it returns `Some` or `timeout` passes.
pub fn try_wait_for<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut step = Duration::from_millis(20);
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(step.min(deadline.saturating_duration_since(Instant::now())));
        step = (step * 2).min(Duration::from_millis(200));
    }
}

/// Per-test context: unique name prefix and a temp dir for configs and logs.
pub struct TestCtx {
    pub name: String,
    pub dir: PathBuf,
    /// Short unique prefix for namespace names: `het<pid><seq>`.
    pub tag: String,
    logs: std::sync::Mutex<Vec<PathBuf>>,
}

impl TestCtx {
    /// `name` is the test's name; it prefixes the temp dir.
    pub fn new(name: &str) -> Self {
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let base = std::env::var_os("HEADEND_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("headend-tests"));
        let dir = base.join(format!("{name}-{pid}-{seq}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create per-test temp dir");
        // Namespace names: "het-" + pid + "-" + seq, so tests/run.sh can reap the
        // namespaces of dead test processes.
        let tag = format!("het-{pid}-{seq}");
        Self {
            name: name.to_string(),
            dir,
            tag,
            logs: Default::default(),
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Registers a log file whose tail is printed if the test fails.
    pub fn track_log(&self, p: &Path) {
        if let Ok(mut l) = self.logs.lock() {
            l.push(p.to_path_buf());
        }
    }

    pub fn write(&self, file: &str, content: &str) -> PathBuf {
        let p = self.path(file);
        fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Drop for TestCtx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== test {} failed; files kept in {}",
                self.name,
                self.dir.display()
            );
            if let Ok(logs) = self.logs.lock() {
                for l in logs.iter() {
                    let text = fs::read_to_string(l).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    let from = lines.len().saturating_sub(60);
                    eprintln!("---- tail of {} ----", l.display());
                    for line in &lines[from..] {
                        eprintln!("{line}");
                    }
                }
            }
        } else if std::env::var_os("HEADEND_KEEP_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Output of a finished command.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.status == 0
    }
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs a command to completion (with a timeout) and captures its output.
pub fn run(argv: &[&str], timeout: Duration) -> Output {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = match try_wait_for(timeout, || child.try_wait().ok().flatten()) {
        Some(s) => s.code().unwrap_or(-1),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command {argv:?} did not finish within {timeout:?}");
        }
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Runs a command that must succeed.
pub fn run_ok(argv: &[&str]) -> Output {
    let o = run(argv, Duration::from_secs(30));
    assert!(
        o.ok(),
        "command {argv:?} failed ({}):\n{}",
        o.status,
        o.all()
    );
    o
}

/// A spawned long-running process with its output in a log file. Killed on drop.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Spawns `argv` with stdout and stderr appended to `log`.
    pub fn spawn(ctx: &TestCtx, name: &str, argv: &[String], env: &[(&str, &str)]) -> Proc {
        let log = ctx.path(&format!("{name}.log"));
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let f2 = f.try_clone().expect("clone log fd");
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} {argv:?}: {e}"));
        ctx.track_log(&log);
        Proc {
            name: name.to_string(),
            log,
            child: Some(child),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log text from byte offset `from` (see [`Proc::log_len`]).
    pub fn log_since(&self, from: u64) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            if f.seek(SeekFrom::Start(from)).is_ok() {
                let _ = f.read_to_string(&mut s);
            }
        }
        s
    }

    pub fn log_len(&self) -> u64 {
        fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// Waits until the log contains `needle`; panics with the log tail on timeout.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        self.wait_log_since(0, needle, timeout)
    }

    pub fn wait_log_since(&self, from: u64, needle: &str, timeout: Duration) {
        if try_wait_for(timeout, || {
            self.log_since(from).contains(needle).then_some(())
        })
        .is_none()
        {
            panic!(
                "{}: log did not show {needle:?} within {timeout:?}; log {}",
                self.name,
                self.log.display()
            );
        }
    }

    /// `Some(exit code)` once the process has exited.
    pub fn exited(&mut self) -> Option<i32> {
        let c = self.child.as_mut()?;
        c.try_wait().ok().flatten().map(|s| s.code().unwrap_or(-1))
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// Sends a signal by name ("TERM", "STOP", "CONT", "KILL").
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            signal_pid(pid, sig);
        }
    }

    /// SIGTERM, then waits up to `timeout` for exit; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        self.signal("TERM");
        let code = try_wait_for(timeout, || self.exited());
        if code.is_none() {
            self.kill();
        }
        code
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if c.try_wait().ok().flatten().is_none() {
                // Ask nicely first so daemons clean up, then force.
                self.signal("TERM");
                let stopped = try_wait_for(Duration::from_secs(2), || {
                    self.child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten())
                });
                if stopped.is_none() {
                    self.kill();
                }
            }
        }
        self.child = None;
    }
}

/// Sends signal `sig` ("TERM", "KILL", ...) to `pid`, ignoring errors (safe in Drop).
pub fn signal_pid(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A currently free UDP port on 127.0.0.1 (for daemons on loopback high ports).
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind ephemeral UDP");
    s.local_addr().expect("local addr").port()
}

/// Two free UDP ports that are distinct.
pub fn free_udp_port_pair() -> (u16, u16) {
    let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind ephemeral UDP");
    let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind ephemeral UDP");
    (
        a.local_addr().expect("local addr").port(),
        b.local_addr().expect("local addr").port(),
    )
}
