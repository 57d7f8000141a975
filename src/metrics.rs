//! Prometheus metrics over HTTP (`[metrics] listen` or `headend run --metrics ADDR`,
//! issue 6), text exposition format 0.0.4. `headend peer` serves the IKE and ESP series
//! of its own routers with the same code ([`render_peer`], [`serve_with`]). The cluster-wide series come from what the
//! cluster replicates (member states, records per member, and every member's own
//! figures, which each member shares about every second), so any member shows the whole
//! cluster, lifting the seed's "statistics are not shared between units" (seed 000).
use std::collections::BTreeMap;
use std::fmt::Write as _;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::services::Services;

/// Longest request head read.
const MAX_REQUEST: usize = 4096;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, quote, newline).
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A figure every member shares with the cluster: its family (the local metric's name
/// without `headend_`), the label it is split by, and whether it is a gauge.
pub struct SharedFigure {
    pub name: &'static str,
    pub label: Option<&'static str>,
    pub gauge: bool,
    pub help: &'static str,
}

/// What each member shares (in `cluster::MemberInfo::counters`) and the cluster view
/// shows, as `headend_cluster_<name>{member="..."}`. Keys a member sends outside this
/// list are ignored, so a member of another version (or a broken one) adds nothing else.
pub const SHARED: &[SharedFigure] = &[
    SharedFigure {
        name: "tunnels_up",
        label: None,
        gauge: true,
        help: "Tunnels (IKE SAs) up on each member.",
    },
    SharedFigure {
        name: "ike_sa_setups_total",
        label: None,
        gauge: false,
        help: "IKE SAs that completed IKE_AUTH on each member.",
    },
    SharedFigure {
        name: "ike_sa_failures_total",
        label: None,
        gauge: false,
        help: "IKE SA negotiations that failed on each member.",
    },
    SharedFigure {
        name: "ike_sa_failures_by_reason_total",
        label: Some("reason"),
        gauge: false,
        help: "IKE SA negotiations that failed on each member, by reason.",
    },
    SharedFigure {
        name: "esp_packets_total",
        label: Some("direction"),
        gauge: false,
        help: "Inner packets through ESP on each member, by direction.",
    },
    SharedFigure {
        name: "esp_bytes_total",
        label: Some("direction"),
        gauge: false,
        help: "Inner bytes through ESP on each member, by direction.",
    },
    SharedFigure {
        name: "esp_drops_total",
        label: Some("reason"),
        gauge: false,
        help: "ESP packets dropped on each member, by reason.",
    },
    SharedFigure {
        name: "dns_queries_total",
        label: Some("rcode"),
        gauge: false,
        help: "DNS queries on each member, by response code or drop reason.",
    },
];

/// Most figures one member shares (the cluster bounds a member's counters too).
pub const MAX_SHARED: usize = 200;

/// The counter key of a figure: `name` or `name{label=value}`.
pub fn figure_key(name: &str, label: Option<(&str, &str)>) -> String {
    match label {
        Some((l, v)) => format!("{name}{{{l}={v}}}"),
        None => name.to_string(),
    }
}

/// A counter key received from a member, checked against [`SHARED`]: the figure and the
/// label value (`None`: the figure has no label; values are plain words of at most 64
/// characters). Anything else is `None`.
pub fn parse_figure_key(key: &str) -> Option<(&'static SharedFigure, Option<&str>)> {
    let (name, rest) = match key.split_once('{') {
        Some((n, r)) => (n, Some(r.strip_suffix('}')?)),
        None => (key, None),
    };
    let f = SHARED.iter().find(|f| f.name == name)?;
    match (f.label, rest) {
        (None, None) => Some((f, None)),
        (Some(l), Some(r)) => {
            let (rl, v) = r.split_once('=')?;
            // Our own label values are short words; anything else from a member (control
            // characters for the operator's terminal, quotes) is refused.
            let plain = v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
            (rl == l && !v.is_empty() && plain).then_some((f, Some(v)))
        }
        _ => None,
    }
}

/// This member's own figures, keyed as [`figure_key`] (what it shares with the cluster,
/// and what the cluster view shows for it).
pub async fn own_figures(s: &Services) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    let mut put = |name: &str, label: Option<(&str, &str)>, v: u64| {
        if m.len() < MAX_SHARED {
            m.insert(figure_key(name, label), v);
        }
    };
    put("tunnels_up", None, s.daemon.status().await.len() as u64);
    if let Some(c) = s.daemon.counters().await {
        put("ike_sa_setups_total", None, c.established);
        put("ike_sa_failures_total", None, c.failed);
        for (reason, n) in &c.failed_by {
            put(
                "ike_sa_failures_by_reason_total",
                Some(("reason", reason)),
                *n,
            );
        }
    }
    if let Some(c) = s.esp_counters() {
        put("esp_packets_total", Some(("direction", "tx")), c.tx_packets);
        put("esp_packets_total", Some(("direction", "rx")), c.rx_packets);
        put("esp_bytes_total", Some(("direction", "tx")), c.tx_bytes);
        put("esp_bytes_total", Some(("direction", "rx")), c.rx_bytes);
        for (reason, n) in &c.drops {
            put("esp_drops_total", Some(("reason", reason)), *n);
        }
    }
    if let Some(d) = &s.dns {
        for (rcode, n) in d.server.counters().values().by_label() {
            put("dns_queries_total", Some(("rcode", rcode)), n);
        }
    }
    m
}

/// The cluster-wide series: one family per [`SHARED`] figure, one line per member (and
/// label value) that shares it.
pub fn render_cluster_figures(out: &mut String, members: &[(String, BTreeMap<String, u64>)]) {
    for f in SHARED {
        let name = format!("headend_cluster_{}", f.name);
        family(
            out,
            &name,
            if f.gauge { "gauge" } else { "counter" },
            f.help,
        );
        for (member, figures) in members {
            for (k, v) in figures {
                match parse_figure_key(k) {
                    Some((g, None)) if g.name == f.name => {
                        let _ = writeln!(out, "{name}{{member=\"{}\"}} {v}", label(member));
                    }
                    Some((g, Some(lv))) if g.name == f.name => {
                        let _ = writeln!(
                            out,
                            "{name}{{member=\"{}\",{}=\"{}\"}} {v}",
                            label(member),
                            f.label.unwrap_or("label"),
                            label(lv)
                        );
                    }
                    _ => {}
                }
            }
        }
    }
}

/// One series without labels: its family header and its value.
fn scalar(o: &mut String, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
    family(o, name, kind, help);
    let _ = writeln!(o, "{name} {v}");
}

/// The IKE series: tunnels (IKE SAs) up and the engine's counters.
fn render_ike(o: &mut String, tunnels_up: usize, c: Option<&ike::endpoint::Counters>) {
    scalar(
        o,
        "headend_tunnels_up",
        "gauge",
        "IKE SAs (tunnels) up on this member.",
        tunnels_up,
    );
    let Some(c) = c else { return };
    scalar(
        o,
        "headend_ike_sa_setups_total",
        "counter",
        "IKE SAs that completed IKE_AUTH.",
        c.established,
    );
    scalar(
        o,
        "headend_ike_sa_failures_total",
        "counter",
        "IKE SA negotiations that failed.",
        c.failed,
    );
    family(
        o,
        "headend_ike_sa_failures_by_reason_total",
        "counter",
        "IKE SA negotiations that failed, by reason (our error label, peer_<notify>, no_response).",
    );
    for (reason, n) in &c.failed_by {
        let _ = writeln!(
            o,
            "headend_ike_sa_failures_by_reason_total{{reason=\"{}\"}} {n}",
            label(reason)
        );
    }
    family(
        o,
        "headend_ike_dropped_total",
        "counter",
        "IKE datagrams dropped, by reason.",
    );
    for (reason, n) in &c.dropped {
        let _ = writeln!(
            o,
            "headend_ike_dropped_total{{reason=\"{}\"}} {n}",
            label(reason)
        );
    }
    scalar(
        o,
        "headend_ike_retransmitted_total",
        "counter",
        "IKE requests retransmitted.",
        c.retransmitted,
    );
    scalar(
        o,
        "headend_ike_cookies_sent_total",
        "counter",
        "COOKIE challenges sent.",
        c.cookies_sent,
    );
    family(
        o,
        "headend_ike_rekey_collisions_total",
        "counter",
        "Simultaneous rekeys of one SA by both ends (RFC 7296 2.8.1), by SA kind.",
    );
    let _ = writeln!(
        o,
        "headend_ike_rekey_collisions_total{{sa=\"ike\"}} {}",
        c.ike_rekey_collisions
    );
    let _ = writeln!(
        o,
        "headend_ike_rekey_collisions_total{{sa=\"child\"}} {}",
        c.child_rekey_collisions
    );
}

/// The ESP data plane's series.
fn render_esp(o: &mut String, c: &crate::dataplane::Counters) {
    family(
        o,
        "headend_esp_packets_total",
        "counter",
        "Inner packets through ESP, by direction.",
    );
    let _ = writeln!(
        o,
        "headend_esp_packets_total{{direction=\"tx\"}} {}",
        c.tx_packets
    );
    let _ = writeln!(
        o,
        "headend_esp_packets_total{{direction=\"rx\"}} {}",
        c.rx_packets
    );
    family(
        o,
        "headend_esp_bytes_total",
        "counter",
        "Inner bytes through ESP, by direction.",
    );
    let _ = writeln!(
        o,
        "headend_esp_bytes_total{{direction=\"tx\"}} {}",
        c.tx_bytes
    );
    let _ = writeln!(
        o,
        "headend_esp_bytes_total{{direction=\"rx\"}} {}",
        c.rx_bytes
    );
    family(
        o,
        "headend_esp_drops_total",
        "counter",
        "ESP packets dropped, by reason.",
    );
    for (reason, n) in &c.drops {
        let _ = writeln!(
            o,
            "headend_esp_drops_total{{reason=\"{}\"}} {n}",
            label(reason)
        );
    }
    family(
        o,
        "headend_esp_icmp_unreachable_total",
        "counter",
        "ICMP destination unreachable sent back into the TUN device for packets no SA covers.",
    );
    let _ = writeln!(
        o,
        "headend_esp_icmp_unreachable_total {}",
        c.icmp_unreachable
    );
    family(
        o,
        "headend_esp_icmp_too_big_total",
        "counter",
        "ICMP fragmentation needed / Packet Too Big sent back into the TUN device for inner packets longer than the tunnel MTU.",
    );
    let _ = writeln!(o, "headend_esp_icmp_too_big_total {}", c.icmp_too_big);
}

/// What `headend peer` serves: its routers' tunnels up, its engine's IKE counters and
/// its data plane's ESP counters (the same series as `headend run`).
pub fn render_peer(
    tunnels_up: usize,
    ike: &ike::endpoint::Counters,
    esp: Option<&crate::dataplane::Counters>,
) -> String {
    let mut o = String::new();
    render_ike(&mut o, tunnels_up, Some(ike));
    if let Some(c) = esp {
        render_esp(&mut o, c);
    }
    o
}

/// The whole exposition.
pub async fn render(s: &Services) -> String {
    let mut o = String::new();
    let tunnels = s.daemon.status().await;
    render_ike(&mut o, tunnels.len(), s.daemon.counters().await.as_ref());
    if let Some(c) = s.esp_counters() {
        render_esp(&mut o, &c);
    }
    if let Some(d) = &s.dns {
        let v = d.server.counters().values();
        family(
            &mut o,
            "headend_dns_queries_total",
            "counter",
            "DNS queries, by response code or drop reason.",
        );
        for (rcode, n) in v.by_label() {
            let _ = writeln!(o, "headend_dns_queries_total{{rcode=\"{rcode}\"}} {n}");
        }
        if !d.server.transfer_stats().is_idle() {
            family(
                &mut o,
                "headend_dns_xfr_total",
                "counter",
                "Zone transfers and NOTIFYs to secondaries, by result.",
            );
            for (result, n) in d.server.transfer_stats().by_label() {
                let _ = writeln!(o, "headend_dns_xfr_total{{result=\"{result}\"}} {n}");
            }
        }
    }
    if let Some(c) = &s.cluster() {
        let st = c.stats();
        use std::sync::atomic::Ordering::Relaxed;
        family(
            &mut o,
            "headend_replication_frames_dropped_total",
            "counter",
            "Replication frames dropped (repaired by digests).",
        );
        let _ = writeln!(
            o,
            "headend_replication_frames_dropped_total {}",
            st.frames_dropped.load(Relaxed)
        );
        family(
            &mut o,
            "headend_replication_bytes_sent_total",
            "counter",
            "Replication frame bytes sent.",
        );
        let _ = writeln!(
            o,
            "headend_replication_bytes_sent_total {}",
            st.bytes_sent.load(Relaxed)
        );
        if let Ok(members) = c.members().await {
            family(
                &mut o,
                "headend_cluster_member_up",
                "gauge",
                "1 when the member is up (cluster-wide, any member shows all).",
            );
            for m in &members {
                let up = u8::from(matches!(m.state, cluster::MemberState::Up));
                let _ = writeln!(
                    o,
                    "headend_cluster_member_up{{member=\"{}\"}} {up}",
                    label(&m.member)
                );
            }
            family(
                &mut o,
                "headend_cluster_member_records",
                "gauge",
                "Names (tunnels) each member publishes, as replicated here.",
            );
            for m in &members {
                let _ = writeln!(
                    o,
                    "headend_cluster_member_records{{member=\"{}\"}} {}",
                    label(&m.member),
                    m.records
                );
            }
            family(
                &mut o,
                "headend_replication_lag_seconds",
                "gauge",
                "Time since this member last heard each other member's heartbeat.",
            );
            for m in members.iter().filter(|m| !m.is_self) {
                if let Some(ms) = m.last_seen_ms_ago {
                    let _ = writeln!(
                        o,
                        "headend_replication_lag_seconds{{member=\"{}\"}} {:.3}",
                        label(&m.member),
                        ms as f64 / 1000.0
                    );
                }
            }
            // Every member's own figures, as it shared them (ours: fresh). A member that
            // is down has none: its last figures are no longer true.
            let mut figures = Vec::with_capacity(members.len());
            for m in members
                .iter()
                .filter(|m| m.state == cluster::MemberState::Up)
            {
                let f = if m.is_self {
                    own_figures(s).await
                } else {
                    m.info
                        .as_ref()
                        .map(|i| i.counters.clone())
                        .unwrap_or_default()
                };
                figures.push((m.member.clone(), f));
            }
            render_cluster_figures(&mut o, &figures);
        }
        if let Ok(view) = c.view().await {
            family(
                &mut o,
                "headend_cluster_names_up",
                "gauge",
                "Names (tunnels) answered for the whole cluster.",
            );
            let _ = writeln!(
                o,
                "headend_cluster_names_up {}",
                view.values().filter(|r| r.up).count()
            );
        }
    }
    o
}

/// How often a member shares its own figures with the cluster (the cluster sends a
/// change of counters alone at most every 2 s).
pub const SHARE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs for ever: every [`SHARE_EVERY`], this member's own figures into the counters of
/// its `MemberInfo` (replicated, so every member shows them; the IKE addresses and
/// capacity of the info belong to the pool and are left alone). Nothing while no
/// cluster member runs.
pub async fn share(s: &Services) {
    let mut tick = tokio::time::interval(SHARE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(h) = s.cluster() else {
            continue;
        };
        if let Err(e) = h.set_member_counters(own_figures(s).await).await {
            tracing::debug!(error = %e, "cluster: sharing this member's figures failed");
        }
    }
}

/// Serves `GET /metrics` until the listener fails.
pub async fn serve(listener: TcpListener, s: &Services) {
    serve_with(listener, || render(s)).await
}

/// Serves `GET /metrics` with what `render` gives, until the listener fails.
pub async fn serve_with<F, Fut>(listener: TcpListener, render: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        let mut buf = vec![0u8; MAX_REQUEST];
        let mut n = 0;
        // Read the request head (bounded, with a timeout: one slow client must not
        // stall the others for long).
        let read = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while n < buf.len() {
                match conn.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        })
        .await;
        if read.is_err() {
            continue;
        }
        let head = String::from_utf8_lossy(&buf[..n]);
        let path = head.split_whitespace().nth(1).unwrap_or("");
        let (status, body) = if head.starts_with("GET ") && (path == "/metrics" || path == "/") {
            ("200 OK", render().await)
        } else {
            ("404 Not Found", "not found\n".to_string())
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(resp.as_bytes()).await;
        let _ = conn.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure_keys_round_trip_and_foreign_keys_are_refused() {
        let k = figure_key("esp_packets_total", Some(("direction", "tx")));
        let (f, v) = parse_figure_key(&k).unwrap();
        assert_eq!((f.name, v), ("esp_packets_total", Some("tx")));
        assert_eq!(parse_figure_key("tunnels_up").unwrap().1, None);
        for bad in [
            "nonsense_total",
            "tunnels_up{member=x}",
            "esp_packets_total",
            "esp_packets_total{reason=tx}",
            "esp_packets_total{direction=}",
            "esp_packets_total{direction=tx",
            "esp_drops_total{reason=a\u{1b}[2J}",
            "esp_drops_total{reason=a\"b}",
        ] {
            assert!(parse_figure_key(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn cluster_figures_carry_the_member_label_and_drop_foreign_keys() {
        let mut a = BTreeMap::new();
        a.insert("tunnels_up".to_string(), 3);
        a.insert("dns_queries_total{rcode=nxdomain}".to_string(), 7);
        a.insert("made_up_total".to_string(), 1);
        let mut b = BTreeMap::new();
        b.insert("esp_drops_total{reason=esp_replayed}".to_string(), 2);
        b.insert("esp_drops_total{reason=a\"b}".to_string(), 9);
        let mut o = String::new();
        render_cluster_figures(&mut o, &[("10.0.0.1".into(), a), ("10.0.0.2".into(), b)]);
        assert!(
            o.contains("\nheadend_cluster_tunnels_up{member=\"10.0.0.1\"} 3\n"),
            "{o}"
        );
        assert!(
            o.contains(
                "headend_cluster_dns_queries_total{member=\"10.0.0.1\",rcode=\"nxdomain\"} 7\n"
            ),
            "{o}"
        );
        assert!(
            o.contains(
                "headend_cluster_esp_drops_total{member=\"10.0.0.2\",reason=\"esp_replayed\"} 2\n"
            ),
            "{o}"
        );
        assert!(!o.contains("made_up") && !o.contains(" 9\n"), "{o}");
        assert!(o.contains("# TYPE headend_cluster_tunnels_up gauge"), "{o}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
