//! Real processes on loopback: ten members agree on every record; a member killed with
//! SIGKILL is withdrawn, then restarted from its store and catches up; a wrong secret is
//! refused and logged by the member.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const REPL: &str = "29100";
const JOIN: &str = "24369";
const SECRET: &str = "mysecretpassword";

/// The member process: this test binary re-executed (`CLUSTER_MEMBER_ARGS`, one per line).
#[test]
#[ignore = "child process of the process tests"]
fn member_process() {
    let args: Vec<String> = std::env::var("CLUSTER_MEMBER_ARGS")
        .expect("run by the process tests")
        .lines()
        .map(str::to_owned)
        .collect();
    tracing_subscriber::fmt()
        .with_env_filter("cluster=info")
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if let Err(e) = cluster::tool::run_member_blocking(&args) {
        println!("error: {e}");
        std::process::exit(1);
    }
}

struct Member {
    id: String,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    log: PathBuf,
}

fn spawn(id: &str, peers: &[String], secret: &str, dir: &Path) -> Member {
    let mut args = vec![
        "--self".to_owned(),
        id.to_owned(),
        "--secret".into(),
        secret.into(),
        "--domain".into(),
        "vpn.example".into(),
        "--data-dir".into(),
        dir.join(id).display().to_string(),
        "--replication-port".into(),
        REPL.into(),
        "--membership-port".into(),
        JOIN.into(),
        "--dead-after-ms".into(),
        "1000".into(),
        "--gossip-interval-ms".into(),
        "100".into(),
    ];
    for p in peers.iter().filter(|p| *p != id) {
        args.push("--peer".into());
        args.push(p.clone());
    }
    let log = dir.join(format!("{id}.log"));
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "member_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CLUSTER_MEMBER_ARGS", args.join("\n"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn member");
    let stdout = child.stdout.take().expect("piped");
    let stdin = child.stdin.take().expect("piped");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    Member {
        id: id.to_owned(),
        child,
        stdin,
        lines: rx,
        log,
    }
}

impl Member {
    /// Next line (events skipped) satisfying `f`.
    fn expect(&self, f: impl Fn(&str) -> bool, what: &str) -> String {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    // libtest prints "test member_process ... " before the first line.
                    let l = l.strip_prefix("test member_process ... ").unwrap_or(&l);
                    if f(l) {
                        return l.to_owned();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("{}: no {what}; log:\n{}", self.id, self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("member stdin");
        self.stdin.flush().expect("member stdin");
    }

    fn view(&mut self) -> BTreeMap<String, (String, String)> {
        self.send("view");
        let mut v = BTreeMap::new();
        loop {
            let l = self.expect(|l| l.starts_with("rec ") || l == "end", "view");
            if l == "end" {
                return v;
            }
            let f: Vec<&str> = l.split_whitespace().collect();
            v.insert(f[1].to_owned(), (f[2].to_owned(), f[3].to_owned()));
        }
    }

    fn members(&mut self) -> Vec<(String, String)> {
        self.send("members");
        let mut v = Vec::new();
        loop {
            let l = self.expect(|l| l.starts_with("member ") || l == "end", "members");
            if l == "end" {
                return v;
            }
            let f: Vec<&str> = l.split_whitespace().collect();
            v.push((f[1].to_owned(), f[2].to_owned()));
        }
    }

    fn up(&mut self, g: &str, ip: &str) {
        self.send(&format!("up {g} {ip}"));
        self.expect(|l| l.starts_with(&format!("ok {g} ")), "publish ack");
    }

    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_all(ms: &mut [Member], skip: Option<usize>, want: &BTreeMap<String, (String, String)>) {
    let t = Instant::now();
    loop {
        let mut ok = true;
        for (i, m) in ms.iter_mut().enumerate() {
            if Some(i) == skip {
                continue;
            }
            if m.view() != *want {
                ok = false;
            }
        }
        if ok {
            return;
        }
        if t.elapsed() > Duration::from_secs(15) {
            for (i, m) in ms.iter_mut().enumerate() {
                if Some(i) != skip {
                    let v = m.view();
                    eprintln!("{}: {} records", m.id, v.len());
                }
            }
            panic!("members did not agree within 15 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ten_members_agree_and_a_sigkilled_member_catches_up_after_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let ids: Vec<String> = (1..=10).map(|i| format!("127.0.7.{i}")).collect();
    let mut ms: Vec<Member> = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let m = spawn(id, &ids, SECRET, dir.path());
        let first = m.expect(
            |l| l.contains("ipsec-ddns cluster") || l.starts_with("error"),
            "start",
        );
        let want = if i == 0 {
            "Creating new ipsec-ddns cluster"
        } else {
            "Joined existing ipsec-ddns cluster"
        };
        assert_eq!(first, want, "{id}");
        ms.push(m);
    }
    let mut want = BTreeMap::new();
    for (i, m) in ms.iter_mut().enumerate() {
        for j in 0..5 {
            let g = format!("m{}-r{j}", i + 1);
            let ip = format!("100.64.{}.{}", i + 1, j + 1);
            m.up(&g, &ip);
            want.insert(g, (ip, m.id.clone()));
        }
    }
    wait_all(&mut ms, None, &want);
    for m in ms.iter_mut() {
        let st = m.members();
        assert_eq!(st.len(), 10, "{}: {st:?}", m.id);
        assert!(st.iter().all(|(_, s)| s == "up"), "{}: {st:?}", m.id);
    }

    // SIGKILL member 4: the others withdraw its records within dead_after.
    ms[3].kill();
    let alive_want: BTreeMap<_, _> = want
        .iter()
        .filter(|(_, (_, o))| *o != ids[3])
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let t = Instant::now();
    wait_all(&mut ms, Some(3), &alive_want);
    assert!(t.elapsed() < Duration::from_secs(5));
    // Meanwhile one of its routers re-connects to member 5, and member 6 gets a new one.
    ms[4].up("m4-r0", "100.64.5.99");
    ms[5].up("late-1", "100.64.6.99");
    want.insert("m4-r0".into(), ("100.64.5.99".into(), ids[4].clone()));
    want.insert("late-1".into(), ("100.64.6.99".into(), ids[5].clone()));

    // Restart it from its store: it rejoins and everyone converges (its own surviving
    // records answered again, the moved router stays with member 5).
    ms[3] = spawn(&ids[3], &ids, SECRET, dir.path());
    let first = ms[3].expect(|l| l.contains("ipsec-ddns cluster"), "restart");
    assert_eq!(first, "Joined existing ipsec-ddns cluster");
    wait_all(&mut ms, None, &want);

    // A host with the wrong secret is refused and the member logs it; nothing changes.
    let bad = spawn(
        "127.0.7.11",
        &[ids[0].clone()],
        "wrong-password",
        dir.path(),
    );
    let l = bad.expect(|l| l.starts_with("error"), "refusal");
    assert!(l.contains("wrong ipsec-ddns secret"), "{l}");
    let t = Instant::now();
    while !ms[0].log_text().contains("refused: wrong secret") {
        assert!(t.elapsed() < Duration::from_secs(5), "refusal not logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ms[0].members().len(), 10);
    wait_all(&mut ms, None, &want);
    for m in ms.iter_mut() {
        m.send("quit");
    }
}
