//! iperf3 through a tunnel: a one-shot server on the inside address, a client bound to
//! the peer's virtual IP, and the figures of its JSON report.
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::netns::{Netns, INSIDE_ADDR};
use super::require_tool;

/// iperf3 from `vip` in `client` to a one-shot server on the inside address in `server`;
/// `during` runs while the client runs.
pub fn iperf3_in(
    server: &Netns,
    client: &Netns,
    vip: &str,
    args: &[&str],
    during: impl FnOnce(),
) -> (String, bool) {
    let iperf = require_tool("iperf3", "iperf3");
    let iperf = iperf.to_str().expect("iperf3 path is UTF-8");
    let mut srv = Command::new("ip")
        .args(["netns", "exec", &server.name, iperf, "-s", "-1", "-B"])
        .arg(INSIDE_ADDR)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server starts");
    std::thread::sleep(Duration::from_millis(500));
    let cl = Command::new("ip")
        .args(["netns", "exec", &client.name, iperf, "-c", INSIDE_ADDR])
        .args(["-B", vip, "-J"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iperf3 client starts");
    during();
    // A tunnel that stops carrying the run leaves the client waiting for the server's
    // results for ever: give up (a failure) well after the run's own length.
    let secs = args
        .iter()
        .position(|a| *a == "-t")
        .and_then(|i| args.get(i + 1)?.parse::<u64>().ok())
        .unwrap_or(10);
    let pid = cl.id();
    let running = Arc::new(AtomicBool::new(true));
    let watch = running.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs + 30));
        if watch.load(Ordering::Relaxed) {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    });
    let out = cl.wait_with_output().expect("iperf3 client output");
    running.store(false, Ordering::Relaxed);
    let _ = srv.kill();
    let _ = srv.wait();
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        eprintln!(
            "iperf3 {args:?} failed:\n{json}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (json, out.status.success())
}

/// The number after the first `"key":` in `s`.
pub fn number_after(s: &str, key: &str) -> Option<f64> {
    let k = format!("\"{key}\":");
    let at = s.find(&k)?;
    let num: String = s[at + k.len()..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+')
        .collect();
    num.parse().ok()
}

/// Bytes the iperf3 receiver got (`sum_received.bytes`).
pub fn received_bytes(json: &str) -> f64 {
    let at = json
        .find("\"sum_received\"")
        .unwrap_or_else(|| panic!("iperf3 JSON without sum_received:\n{json}"));
    number_after(&json[at..], "bytes").expect("sum_received has bytes")
}
