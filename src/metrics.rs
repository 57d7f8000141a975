//! Prometheus metrics over HTTP (`headend run --metrics 127.0.0.1:9090`, issue 6), text
//! exposition format 0.0.4. The cluster-wide series come from what the cluster
//! replicates (member states, records per member), so any member shows the whole
//! cluster, lifting the seed's "statistics are not shared between units".
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

/// The whole exposition.
pub async fn render(s: &Services) -> String {
    let mut o = String::new();
    let tunnels = s.daemon.status().await;
    family(
        &mut o,
        "headend_tunnels_up",
        "gauge",
        "IKE SAs (tunnels) up on this member.",
    );
    let _ = writeln!(o, "headend_tunnels_up {}", tunnels.len());
    if let Some(c) = s.daemon.counters().await {
        family(
            &mut o,
            "headend_ike_sa_setups_total",
            "counter",
            "IKE SAs that completed IKE_AUTH.",
        );
        let _ = writeln!(o, "headend_ike_sa_setups_total {}", c.established);
        family(
            &mut o,
            "headend_ike_sa_failures_total",
            "counter",
            "IKE SA negotiations that failed.",
        );
        let _ = writeln!(o, "headend_ike_sa_failures_total {}", c.failed);
        family(
            &mut o,
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
            &mut o,
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
        family(
            &mut o,
            "headend_ike_retransmitted_total",
            "counter",
            "IKE requests retransmitted.",
        );
        let _ = writeln!(o, "headend_ike_retransmitted_total {}", c.retransmitted);
        family(
            &mut o,
            "headend_ike_cookies_sent_total",
            "counter",
            "COOKIE challenges sent.",
        );
        let _ = writeln!(o, "headend_ike_cookies_sent_total {}", c.cookies_sent);
    }
    if let Some(dp) = &s.dataplane {
        let c = dp.counters();
        family(
            &mut o,
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
            &mut o,
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
            &mut o,
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
        }
        if let Ok(view) = c.view().await {
            family(
                &mut o,
                "headend_cluster_tunnels_up",
                "gauge",
                "Tunnels up in the whole cluster (names answered).",
            );
            let _ = writeln!(
                o,
                "headend_cluster_tunnels_up {}",
                view.values().filter(|r| r.up).count()
            );
        }
    }
    o
}

/// Serves `GET /metrics` until the listener fails.
pub async fn serve(listener: TcpListener, s: &Services) {
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
            ("200 OK", render(s).await)
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
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
