//! A `headend` process whose output goes to a log file, for the tests that drive the
//! daemon from outside (`cli_control`, `daemon_ops`) without the namespace support:
//! killed on drop, waited on by what it logs. Included with `#[path]`.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Proc(pub Child, pub PathBuf);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Spawns the `headend` binary with `args` and extra `env`, stdout and stderr to
    /// `log`, with no systemd notify socket inherited from the test runner.
    pub fn spawn(args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Proc {
        let f = std::fs::File::create(&log).unwrap();
        let c = Command::new(env!("CARGO_BIN_EXE_headend"))
            .args(args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        Proc(c, log)
    }

    /// `headend run` on `conf` with its control socket at `control` and `/metrics` on
    /// `metrics`; otherwise as [`Proc::spawn`].
    pub fn run(
        conf: &Path,
        control: &Path,
        metrics: &str,
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Proc {
        Proc::spawn(
            &[
                "run",
                "--config",
                conf.to_str().unwrap(),
                "--control",
                control.to_str().unwrap(),
                "--metrics",
                metrics,
            ],
            env,
            log,
        )
    }

    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }

    /// Waits up to 20 s for `what` in the log.
    pub fn wait_for(&self, what: &str) {
        let end = Instant::now() + Duration::from_secs(20);
        while !self.text().contains(what) {
            assert!(Instant::now() < end, "no \"{what}\" in:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and returns the exit code (within 10 s).
    #[allow(dead_code)]
    pub fn sigterm_and_wait(&mut self) -> Option<i32> {
        let st = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                Instant::now() < end,
                "no exit after SIGTERM:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A plain HTTP/1.1 GET (the metrics endpoint); the whole response, headers included.
#[allow(dead_code)]
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}
