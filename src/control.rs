//! The operator CLI's control socket (issue 6) in the seed's vocabulary (seed 003 ch. 4):
//! `set|delete service ipsec-ddns ...`, `commit`, `show service ipsec-ddns`,
//! `show vpn ipsec sa`, `show dns records`, `show cluster`, `show cluster statistics`.
//!
//! A Unix stream socket, mode 0600, and only root or the daemon's own user may talk to it
//! (checked with SO_PEERCRED). One request per connection: the words separated by tabs on
//! one line; the answer is an exit status line ("0"/"1") followed by the text to print.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

use crate::error::Error;
use crate::services::Services;

/// Default control socket path (the unit file's RuntimeDirectory).
pub const DEFAULT_SOCKET: &str = "/run/headend/control.sock";
const SECTION: &str = "[service.ipsec-ddns]";
/// Longest request line accepted.
const MAX_REQUEST: u64 = 4096;

/// The keys `set service ipsec-ddns` takes (seed 003 Table 4-1).
const KEYS: &[&str] = &["self", "peer", "secret", "domain", "enable"];

/// State of the control server: the configuration file and the uncommitted candidate.
pub struct Control {
    config: Option<PathBuf>,
    candidate: Mutex<Option<toml::Table>>,
}

impl Control {
    /// `config`: the file `commit` saves to (`None`: built-in configuration, not saved).
    pub fn new(config: Option<PathBuf>) -> Self {
        Control {
            config,
            candidate: Mutex::new(None),
        }
    }
}

/// Binds the socket (replacing a stale one), mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A live socket belongs to another daemon: do not steal it.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(Error::Other(format!(
            "control socket {} is in use by another headend",
            path.display()
        )));
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

fn own_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Serves requests until the listener fails (run it in a `select!` next to the signal).
pub async fn serve(listener: UnixListener, ctl: &Control, s: &Services) {
    let me = own_uid();
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            return;
        };
        let allowed = conn
            .peer_cred()
            .map(|c| c.uid() == 0 || Some(c.uid()) == me)
            .unwrap_or(false);
        if !allowed {
            tracing::warn!("control socket: refused a connection from another user");
            continue;
        }
        // One at a time: requests are short and `commit` must not interleave.
        if let Err(e) = handle(conn, ctl, s).await {
            tracing::debug!(error = %e, "control request failed");
        }
    }
}

async fn handle(conn: UnixStream, ctl: &Control, s: &Services) -> Result<(), Error> {
    let (r, mut w) = conn.into_split();
    let mut line = String::new();
    BufReader::new(r.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let words: Vec<&str> = line.trim_end_matches('\n').split('\t').collect();
    let (ok, text) = match execute(&words, ctl, s).await {
        Ok(t) => (true, t),
        Err(e) => (false, format!("error: {e}\n")),
    };
    w.write_all(format!("{}\n{text}", u8::from(!ok)).as_bytes())
        .await?;
    w.shutdown().await?;
    Ok(())
}

/// The `[service.ipsec-ddns]` table of the configuration file (empty when absent).
fn file_section(path: Option<&Path>) -> Result<toml::Table, Error> {
    let Some(path) = path else {
        return Ok(toml::Table::new());
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let doc: toml::Table = text
        .parse()
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    Ok(doc
        .get("service")
        .and_then(|s| s.get("ipsec-ddns"))
        .and_then(|t| t.as_table())
        .cloned()
        .unwrap_or_default())
}

/// Applies `set`/`delete service ipsec-ddns <key> [value]` to a candidate table.
pub fn edit(t: &mut toml::Table, set: bool, words: &[&str]) -> Result<(), String> {
    let (key, value) = match words {
        [k] => (*k, None),
        [k, v] => (*k, Some(*v)),
        _ => {
            return Err(format!(
                "want: service ipsec-ddns <{}> [value]",
                KEYS.join("|")
            ))
        }
    };
    if !KEYS.contains(&key) {
        return Err(format!(
            "unknown ipsec-ddns setting \"{key}\" (one of {})",
            KEYS.join(", ")
        ));
    }
    match (set, key, value) {
        (true, "enable", None) => {
            t.insert("enable".into(), toml::Value::Boolean(true));
        }
        (true, "peer", Some(v)) => {
            let peers = t
                .entry("peer")
                .or_insert_with(|| toml::Value::Array(vec![]));
            if let toml::Value::Array(a) = peers {
                if !a.iter().any(|p| p.as_str() == Some(v)) {
                    a.push(toml::Value::String(v.into()));
                }
            }
        }
        (true, k, Some(v)) if k != "enable" => {
            t.insert(k.into(), toml::Value::String(v.into()));
        }
        (true, k, _) => {
            return Err(format!(
                "set service ipsec-ddns {k}: wrong number of values"
            ))
        }
        (false, "peer", Some(v)) => {
            if let Some(toml::Value::Array(a)) = t.get_mut("peer") {
                a.retain(|p| p.as_str() != Some(v));
            }
        }
        (false, k, None) => {
            t.remove(k);
        }
        (false, k, Some(_)) => return Err(format!("delete service ipsec-ddns {k} takes no value")),
    }
    Ok(())
}

/// Replaces the `[service.ipsec-ddns]` section of `text` with `t`, keeping every other
/// line (comments included) as it was.
pub fn replace_section(text: &str, t: &toml::Table) -> Result<String, Error> {
    let body = toml::to_string(t).map_err(|e| Error::Other(format!("encoding: {e}")))?;
    let mut out = String::new();
    let mut inside = false;
    let mut written = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            inside = trimmed == SECTION;
            if inside {
                out.push_str(SECTION);
                out.push('\n');
                out.push_str(&body);
                written = true;
                continue;
            }
        }
        if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !written && !t.is_empty() {
        if !out.ends_with("\n\n") && !out.is_empty() {
            out.push('\n');
        }
        let _ = write!(out, "{SECTION}\n{body}");
    }
    Ok(out)
}

/// Atomic save: write a temporary file next to it, fsync, rename over, fsync the directory.
pub fn save_atomically(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("headend.toml"),
        std::process::id()
    ));
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode()).ok();
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    if let Some(m) = mode {
        f.set_permissions(std::fs::Permissions::from_mode(m))?;
    }
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn fmt_age(since: SystemTime) -> String {
    let s = SystemTime::now()
        .duration_since(since)
        .map_or(0, |d| d.as_secs());
    format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
}

async fn execute(words: &[&str], ctl: &Control, s: &Services) -> Result<String, Error> {
    match words {
        ["set" | "delete", "service", "ipsec-ddns", rest @ ..] => {
            let set = words[0] == "set";
            let mut cand = ctl.candidate.lock().await;
            if cand.is_none() {
                *cand = Some(file_section(ctl.config.as_deref())?);
            }
            if let Some(t) = cand.as_mut() {
                edit(t, set, rest).map_err(Error::Config)?;
            }
            Ok(String::new())
        }
        ["commit"] => commit(ctl, s).await,
        ["show", "service", "ipsec-ddns"] => {
            let t = match ctl.candidate.lock().await.clone() {
                Some(t) => t,
                None => file_section(ctl.config.as_deref())?,
            };
            Ok(show_service(&t))
        }
        ["show", "vpn", "ipsec", "sa"] => Ok(show_sa(s).await),
        ["show", "vpn", "ipsec", "sa", "detail"] => Ok(show_sa_detail(s).await),
        ["rekey", "vpn", "ipsec", "sa", name] => match s.daemon.rekey_child_sas(name).await {
            0 => Err(Error::Config(format!(
                "no tunnel \"{name}\" with an installed CHILD SA"
            ))),
            n => Ok(format!("Rekeying {n} CHILD SA(s) of {name}\n")),
        },
        ["show", "dns", "records"] => show_records(s, s.cluster()).await,
        ["show", "cluster"] => show_cluster(s, s.cluster()).await,
        ["show", "cluster", "statistics"] => show_cluster_statistics(s, s.cluster()).await,
        _ => Err(Error::Config(format!(
            "unknown command \"{}\"",
            words.join(" ")
        ))),
    }
}

/// The candidate as a cluster configuration (`data_dir` is required by the cluster but
/// not a seed setting: defaulted), validated with the seed's rules.
fn cluster_config(t: &toml::Table) -> Result<cluster::ClusterConfig, Error> {
    let mut probe = t.clone();
    probe
        .entry("data_dir")
        .or_insert_with(|| toml::Value::String("/var/lib/headend/cluster".into()));
    let cc: cluster::ClusterConfig = toml::Value::Table(probe)
        .try_into()
        .map_err(|e| Error::Config(format!("service ipsec-ddns: {e}")))?;
    cc.validate()
        .map_err(|e| Error::Config(format!("service ipsec-ddns: {e}")))?;
    Ok(cc)
}

/// `commit`: validate the candidate, apply it to the running daemon, and only when that
/// succeeded save it atomically (seed 003 ch. 4). Enabling starts the member ("Creating
/// new ipsec-ddns cluster" / "Joined existing ipsec-ddns cluster"); a changed `peer` list
/// is applied live; `delete ... enable` leaves the cluster. A refusal (wrong secret,
/// other domain, unreachable peer, full cluster) changes neither the running state nor
/// the file. Other changed settings of a running member take effect at the next start.
async fn commit(ctl: &Control, s: &Services) -> Result<String, Error> {
    let mut cand = ctl.candidate.lock().await;
    let Some(t) = cand.clone() else {
        return Ok("No changes to commit\n".into());
    };
    let path = ctl.config.as_deref().ok_or_else(|| {
        Error::Config("running the built-in configuration: nothing to save to".into())
    })?;
    let new_cc = if t.is_empty() {
        None
    } else {
        Some(cluster_config(&t)?)
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let new = replace_section(&text, &t)?;
    crate::config::Config::parse(&path.display().to_string(), &new)?;

    let applied = file_section(Some(path))?;
    let old_peers: Vec<String> = applied
        .get("peer")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let cluster_err = |e: cluster::Error| Error::Other(format!("service ipsec-ddns: {e}"));
    let mut out = String::new();
    // The candidate lock, held until the end, serialises commits.
    match (s.cluster(), new_cc.filter(|c| c.enable)) {
        (None, Some(cc)) => {
            let started = s.start_cluster(cc).await.map_err(cluster_err)?;
            let _ = writeln!(out, "{started}");
        }
        (Some(_), None) => {
            s.leave_cluster().await.map_err(cluster_err)?;
            out.push_str("Left ipsec-ddns cluster\n");
        }
        (Some(h), Some(cc)) => {
            let added: Vec<&String> = cc.peer.iter().filter(|p| !old_peers.contains(p)).collect();
            let mut done: Vec<&String> = vec![];
            for p in &added {
                let res = match h.add_peer(p).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(cluster::Error::ClusterFull {
                        peer: (*p).clone(),
                        max: cluster::node::MAX_MEMBERS,
                    }),
                    Err(e) => Err(e),
                };
                if let Err(e) = res {
                    // Change nothing: undo the peers added by this commit.
                    for d in &done {
                        let _ = h.remove_peer(d).await;
                    }
                    return Err(cluster_err(e));
                }
                done.push(p);
            }
            for p in old_peers.iter().filter(|p| !cc.peer.contains(p)) {
                h.remove_peer(p).await.map_err(cluster_err)?;
            }
            if !added.is_empty() {
                let _ = writeln!(out, "{}", cluster::Started::Joined);
            }
            let mut rest = t.clone();
            let mut before = applied.clone();
            rest.remove("peer");
            before.remove("peer");
            if rest != before {
                out.push_str("Settings other than peer take effect at the next start\n");
            }
        }
        (None, None) => {}
    }
    save_atomically(path, &new)?;
    *cand = None;
    let _ = writeln!(out, "Saved to {}", path.display());
    Ok(out)
}

fn show_service(t: &toml::Table) -> String {
    let mut out = String::from("service {\n    ipsec-ddns {\n");
    let s = |k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    if let Some(d) = s("domain") {
        let _ = writeln!(out, "        domain {d}");
    }
    if t.get("enable").and_then(|v| v.as_bool()) == Some(true) {
        out.push_str("        enable\n");
    }
    if let Some(toml::Value::Array(a)) = t.get("peer") {
        for p in a.iter().filter_map(|p| p.as_str()) {
            let _ = writeln!(out, "        peer {p}");
        }
    }
    if s("secret").is_some() {
        out.push_str("        secret ****************\n");
    }
    if let Some(me) = s("self") {
        let _ = writeln!(out, "        self {me}");
    }
    out.push_str("    }\n}\n");
    out
}

/// The member column is the member running now: `local` when no ipsec-ddns member runs
/// (never enabled, or left by a `commit`).
async fn show_sa(s: &Services) -> String {
    let member = s
        .cluster()
        .as_ref()
        .map_or_else(|| "local".to_string(), |c| c.id().to_string());
    let mut tunnels = s.daemon.status().await;
    tunnels.sort_by(|a, b| a.gateway_id.as_str().cmp(b.gateway_id.as_str()));
    let mut out = format!(
        "{:<22} {:<24} {:<20} {:<16} {:<12} {:>10} {:>12} {:>10}\n",
        "Peer",
        "Identity",
        "Gateway ID",
        "Virtual IP",
        "Member",
        "Uptime",
        "Bytes in/out",
        "Packets"
    );
    for t in &tunnels {
        let (mut pk, mut by) = ((0u64, 0u64), (0u64, 0u64));
        if let Some(dp) = &s.dataplane {
            for c in &t.child_sas {
                if let Some(((bi, pi), (bo, po))) = dp.usage(c.inbound) {
                    pk = (pk.0 + pi, pk.1 + po);
                    by = (by.0 + bi, by.1 + bo);
                }
            }
        }
        let vips: Vec<String> = t.vips.iter().map(|v| v.to_string()).collect();
        let _ = writeln!(
            out,
            "{:<22} {:<24} {:<20} {:<16} {:<12} {:>10} {:>12} {:>10}",
            t.remote.to_string(),
            t.identity.to_string(),
            t.gateway_id.as_str(),
            vips.join(","),
            member,
            fmt_age(t.since),
            format!("{}/{}", by.0, by.1),
            format!("{}/{}", pk.0, pk.1),
        );
    }
    let _ = writeln!(out, "{} tunnel(s)", tunnels.len());
    out
}

/// `show vpn ipsec sa detail`: one line per CHILD SA (several per tunnel when a peer
/// splits its traffic by protocol or port, RFC 4301 4.4.1), with its SPIs, its
/// selectors as negotiated (ours, then the peer's), its state and its own ESP figures.
/// The state is `installed`, or during a rekey hand-over (RFC 7296 2.8) `rekeyed`
/// (replaced, its Delete not yet done), `redundant` (the losing pair of a simultaneous
/// rekey, 2.8.1, deleted at once) and `deleted` (its inbound SPI still accepts packets in
/// flight for `[dataplane] rekey_linger_ms`), so old and new pairs show side by side.
async fn show_sa_detail(s: &Services) -> String {
    let mut tunnels = s.daemon.status().await;
    tunnels.sort_by(|a, b| a.gateway_id.as_str().cmp(b.gateway_id.as_str()));
    let mut out = format!(
        "{:<20} {:<17} {:<28} {:<28} {:<10} {:>14} {:>10}\n",
        "Gateway ID", "SPI in/out", "Local TS", "Remote TS", "State", "Bytes in/out", "Packets"
    );
    let mut n = 0;
    for t in &tunnels {
        for c in &t.child_sas {
            let ((bi, pi), (bo, po)) = s
                .dataplane
                .as_ref()
                .and_then(|dp| dp.usage(c.inbound))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<20} {:<17} {:<28} {:<28} {:<10} {:>14} {:>10}",
                t.gateway_id.as_str(),
                format!("{:08x}/{:08x}", c.inbound.0, c.outbound.0),
                crate::run::ts_list(&c.local_ts),
                crate::run::ts_list(&c.remote_ts),
                c.state.label(),
                format!("{bi}/{bo}"),
                format!("{pi}/{po}"),
            );
            n += 1;
        }
    }
    let _ = writeln!(out, "{n} CHILD SA(s)");
    out
}

async fn show_records(
    s: &Services,
    cluster: Option<cluster::ClusterHandle>,
) -> Result<String, Error> {
    let domain = s
        .dns
        .as_ref()
        .map(|d| d.zone.origin().to_string())
        .unwrap_or_default();
    let mut out = format!("{:<40} {:<16} {}\n", "Name", "Address", "Member");
    let mut n = 0;
    if let Some(c) = &cluster {
        let view = c
            .view()
            .await
            .map_err(|e| Error::Other(format!("cluster: {e}")))?;
        for r in view.values().filter(|r| r.up) {
            for a in &r.addresses {
                let _ = writeln!(
                    out,
                    "{:<40} {:<16} {}",
                    format!("{}.{domain}", r.gateway_id),
                    a,
                    r.owner
                );
                n += 1;
            }
        }
    } else {
        for t in s.daemon.status().await {
            for a in &t.vips {
                let _ = writeln!(
                    out,
                    "{:<40} {:<16} local",
                    format!("{}.{domain}", t.gateway_id.as_str()),
                    a
                );
                n += 1;
            }
        }
    }
    let _ = writeln!(out, "{n} record(s)");
    Ok(out)
}

/// Every member with its figures: ours fresh, the others' as they last shared them
/// (empty when a member shared nothing yet).
async fn members_with_figures(
    s: &Services,
    c: &cluster::ClusterHandle,
) -> Result<Vec<(cluster::MemberStatus, BTreeMap<String, u64>)>, Error> {
    let members = c
        .members()
        .await
        .map_err(|e| Error::Other(format!("cluster: {e}")))?;
    let mut out = Vec::with_capacity(members.len());
    for m in members {
        let f = if m.is_self {
            crate::metrics::own_figures(s).await
        } else {
            m.info
                .as_ref()
                .map(|i| i.counters.clone())
                .unwrap_or_default()
        };
        out.push((m, f));
    }
    Ok(out)
}

/// `show cluster`: members, state, last seen, records and tunnels each.
async fn show_cluster(
    s: &Services,
    cluster: Option<cluster::ClusterHandle>,
) -> Result<String, Error> {
    let Some(c) = &cluster else {
        return Err(Error::Config("service ipsec-ddns is not enabled".into()));
    };
    let mut out = format!(
        "{:<24} {:<6} {:>12} {:>8} {:>8}\n",
        "Member", "State", "Last seen", "Records", "Tunnels"
    );
    for (m, f) in members_with_figures(s, c).await? {
        let seen = match (m.is_self, m.last_seen_ms_ago) {
            (true, _) => "self".to_string(),
            (false, Some(ms)) => format!("{:.1}s ago", ms as f64 / 1000.0),
            (false, None) => "never".to_string(),
        };
        // A member that is down has no tunnels here, whatever it said last.
        let tunnels = f
            .get("tunnels_up")
            .filter(|_| m.state == cluster::MemberState::Up)
            .map_or_else(|| "-".to_string(), u64::to_string);
        let _ = writeln!(
            out,
            "{:<24} {:<6} {:>12} {:>8} {:>8}",
            m.member,
            format!("{:?}", m.state).to_lowercase(),
            seen,
            m.records,
            tunnels
        );
    }
    Ok(out)
}

/// `show cluster statistics`: every member's figures side by side (tunnels up, IKE
/// setups and failures, ESP packets, bytes and drops, DNS queries by response code),
/// whichever member is asked. `-`: the member has not shared that figure. A member that
/// is down shows the figures it shared last, except `tunnels_up` (`-`).
async fn show_cluster_statistics(
    s: &Services,
    cluster: Option<cluster::ClusterHandle>,
) -> Result<String, Error> {
    let Some(c) = &cluster else {
        return Err(Error::Config("service ipsec-ddns is not enabled".into()));
    };
    let members = members_with_figures(s, c).await?;
    // Rows in the order of the shared figures, label values sorted; only keys every
    // member would accept (see `metrics::parse_figure_key`).
    let mut rows: Vec<String> = vec![];
    for f in crate::metrics::SHARED {
        let mut keys: std::collections::BTreeSet<&String> = std::collections::BTreeSet::new();
        for (_, figs) in &members {
            keys.extend(figs.keys().filter(|k| {
                crate::metrics::parse_figure_key(k).is_some_and(|(g, _)| g.name == f.name)
            }));
        }
        rows.extend(keys.into_iter().cloned());
    }
    let w = rows.iter().map(String::len).max().unwrap_or(0).max(9);
    let cols: Vec<usize> = members
        .iter()
        .map(|(m, _)| m.member.len().max(10))
        .collect();
    let mut out = format!("{:<w$}", "Statistic");
    for ((m, _), cw) in members.iter().zip(&cols) {
        let _ = write!(out, "  {:>cw$}", m.member);
    }
    out.push('\n');
    let _ = write!(out, "{:<w$}", "state");
    for ((m, _), cw) in members.iter().zip(&cols) {
        let _ = write!(out, "  {:>cw$}", format!("{:?}", m.state).to_lowercase());
    }
    out.push('\n');
    for k in &rows {
        let _ = write!(out, "{k:<w$}");
        for ((m, figs), cw) in members.iter().zip(&cols) {
            let gone = m.state != cluster::MemberState::Up && k == "tunnels_up";
            let v = figs
                .get(k)
                .filter(|_| !gone)
                .map_or_else(|| "-".to_string(), u64::to_string);
            let _ = write!(out, "  {v:>cw$}");
        }
        out.push('\n');
    }
    Ok(out)
}

/// The CLI side: sends `words`, returns (exit status, text).
pub async fn request(socket: &Path, words: &[String]) -> Result<(u8, String), Error> {
    let mut conn = UnixStream::connect(socket).await.map_err(|e| {
        Error::Other(format!(
            "cannot reach the daemon's control socket {}: {e} (is `headend run` running, and are you root?)",
            socket.display()
        ))
    })?;
    conn.write_all(format!("{}\n", words.join("\t")).as_bytes())
        .await?;
    let mut text = String::new();
    conn.read_to_string(&mut text).await?;
    let (status, rest) = text.split_once('\n').unwrap_or(("1", "error: no answer\n"));
    Ok((if status == "0" { 0 } else { 1 }, rest.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_delete_edit_the_candidate_in_seed_words() {
        let mut t = toml::Table::new();
        edit(&mut t, true, &["self", "10.0.0.1"]).unwrap();
        edit(&mut t, true, &["peer", "10.0.0.2"]).unwrap();
        edit(&mut t, true, &["peer", "10.0.0.3"]).unwrap();
        edit(&mut t, true, &["peer", "10.0.0.3"]).unwrap();
        edit(&mut t, true, &["enable"]).unwrap();
        assert_eq!(t["peer"].as_array().unwrap().len(), 2);
        edit(&mut t, false, &["peer", "10.0.0.2"]).unwrap();
        assert_eq!(t["peer"].as_array().unwrap()[0].as_str(), Some("10.0.0.3"));
        edit(&mut t, false, &["enable"]).unwrap();
        assert!(!t.contains_key("enable"));
        assert!(edit(&mut t, true, &["colour", "red"]).is_err());
        assert!(edit(&mut t, true, &["secret"]).is_err());
    }

    #[test]
    fn replace_section_keeps_the_rest_of_the_file() {
        let text = "# top comment\n[ike]\nport = 500 # inline\n[service.ipsec-ddns]\nself = \"a\"\n# old\n[log]\nlevel = \"info\"\n";
        let mut t = toml::Table::new();
        t.insert("self".into(), toml::Value::String("10.0.0.1".into()));
        let out = replace_section(text, &t).unwrap();
        assert!(
            out.starts_with("# top comment\n[ike]\nport = 500 # inline\n"),
            "{out}"
        );
        assert!(
            out.contains("[service.ipsec-ddns]\nself = \"10.0.0.1\"\n[log]\nlevel = \"info\"\n"),
            "{out}"
        );
        assert!(!out.contains("# old"));
        // Absent section: appended.
        let out = replace_section("[ike]\nport = 500\n", &t).unwrap();
        assert!(
            out.ends_with("[service.ipsec-ddns]\nself = \"10.0.0.1\"\n"),
            "{out}"
        );
    }

    #[test]
    fn save_is_atomic_and_keeps_the_mode() {
        let dir = std::env::temp_dir().join(format!("headend-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("h.toml");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        save_atomically(&p, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new\n");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
