//! A stand-alone member driven by a line protocol on stdin/stdout, for process tests and
//! benchmarks (`cargo run -p cluster --example member -- --self 127.0.0.1 ...`).
//!
//! Commands (one per line): `up <gateway> <ip>`, `down <gateway>`, `view`, `members`,
//! `stats`, `leave`, `quit`. Replies: `ok <gateway> <stamp>`, `rec <gateway> <ip> <owner>`
//! lines closed by `end`, `member <id> <up|down> <records>` lines closed by `end`,
//! `stats <bytes> <frames> <dropped>`. Events are printed as they happen:
//! `ev changed <gateway> <owner|-> <unix-ns>`, `ev up|down|left|synced <member> <unix-ns>`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::node::{Event, MemberState};
use crate::{Cluster, ClusterConfig, Error};

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Parse `--self A --peer B --peer C --secret S --domain D --data-dir P [--replication-port N]
/// [--membership-port N] [--dead-after-ms N] [--gossip-interval-ms N] [--no-bootstrap]`.
pub fn parse_args(args: &[String]) -> Result<ClusterConfig, Error> {
    let mut c = ClusterConfig::new("", &[], "", "", PathBuf::new());
    let mut it = args.iter();
    let bad = |k: &str| Error::InvalidConfig(format!("{k} needs a value"));
    while let Some(k) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| bad(k));
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|_| Error::InvalidConfig(format!("{k}: {v:?} is not a number")))
        };
        match k.as_str() {
            "--self" => c.self_addr = val()?,
            "--peer" => c.peer.push(val()?),
            "--secret" => c.secret = val()?,
            "--domain" => c.domain = val()?,
            "--data-dir" => c.data_dir = PathBuf::from(val()?),
            "--replication-port" => {
                c.replication_port =
                    u16::try_from(num(val()?)?).map_err(|_| Error::InvalidConfig("port".into()))?
            }
            "--membership-port" => {
                c.membership_port =
                    u16::try_from(num(val()?)?).map_err(|_| Error::InvalidConfig("port".into()))?
            }
            "--dead-after-ms" => c.dead_after_ms = num(val()?)?,
            "--gossip-interval-ms" => c.gossip_interval_ms = num(val()?)?,
            "--no-bootstrap" => c.bootstrap = false,
            other => return Err(Error::InvalidConfig(format!("unknown option {other}"))),
        }
    }
    Ok(c)
}

/// The whole member program: parse `args`, run the member on its own two-thread runtime
/// until `quit`/`leave` or end of stdin. Used by the example and the process tests.
pub fn run_member_blocking(args: &[String]) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async { run_member(parse_args(args)?).await })
}

/// Run one member until `quit`/`leave` or end of stdin.
pub async fn run_member(cfg: ClusterConfig) -> Result<(), Error> {
    let (h, mut events, started) = Cluster::start(cfg).await?;
    let mut out = tokio::io::stdout();
    out.write_all(format!("{started}\n").as_bytes()).await?;
    out.flush().await?;
    let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    // One writer for replies and events so lines never interleave.
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(l) = line_rx.recv().await {
            if out.write_all(l.as_bytes()).await.is_err() {
                break;
            }
            if line_rx.is_empty() && out.flush().await.is_err() {
                break;
            }
        }
        let _ = out.flush().await;
    });
    let ev_tx = line_tx.clone();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            let t = unix_ns();
            let l = match e {
                Event::RecordChanged { gateway_id, record } => format!(
                    "ev changed {gateway_id} {} {t}\n",
                    record.map_or("-".to_owned(), |r| r.owner)
                ),
                Event::MemberUp(m) => format!("ev up {m} {t}\n"),
                Event::MemberDown(m) => format!("ev down {m} {t}\n"),
                Event::MemberLeft(m) => format!("ev left {m} {t}\n"),
                Event::Synced(m) => format!("ev synced {m} {t}\n"),
                Event::Stamp(_) => continue,
            };
            if ev_tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let f: Vec<&str> = line.split_whitespace().collect();
        let reply = match f.as_slice() {
            ["up", g, ip] => match ip.parse::<IpAddr>() {
                Ok(ip) => match h.publish(g, vec![ip], true).await {
                    Ok(r) => format!("ok {g} {}\n", r.stamp),
                    Err(e) => format!("err {e}\n"),
                },
                Err(_) => format!("err bad address {ip}\n"),
            },
            ["down", g] => match h.publish(g, vec![], false).await {
                Ok(r) => format!("ok {g} {}\n", r.stamp),
                Err(e) => format!("err {e}\n"),
            },
            ["view"] => {
                let mut s = String::new();
                for (g, r) in h.view().await? {
                    let ip = r
                        .addresses
                        .first()
                        .map_or("-".to_owned(), |a| a.to_string());
                    s.push_str(&format!("rec {g} {ip} {}\n", r.owner));
                }
                s.push_str("end\n");
                s
            }
            ["members"] => {
                let mut s = String::new();
                for m in h.members().await? {
                    let st = if m.state == MemberState::Up {
                        "up"
                    } else {
                        "down"
                    };
                    s.push_str(&format!("member {} {st} {}\n", m.member, m.records));
                }
                s.push_str("end\n");
                s
            }
            ["stats"] => {
                let st = h.stats();
                format!(
                    "stats {} {} {}\n",
                    st.bytes_sent.load(Ordering::Relaxed),
                    st.frames_sent.load(Ordering::Relaxed),
                    st.frames_dropped.load(Ordering::Relaxed)
                )
            }
            ["leave"] => {
                h.leave().await?;
                break;
            }
            ["quit"] => break,
            _ => format!("err unknown command {line:?}\n"),
        };
        if line_tx.send(reply).is_err() {
            break;
        }
    }
    drop(line_tx);
    let _ = h.shutdown().await;
    let _ = writer.await;
    Ok(())
}
