//! The transport in one process: members on distinct loopback addresses, real TLS and PAKE.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cluster::net::join_cluster;
use cluster::node::{Entry, Message, PartDelta};
use cluster::{
    Cluster, ClusterConfig, ClusterHandle, Error, Event, MemberInfo, MemberState, Record, Started,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

const REPL: u16 = 19100;
const JOIN: u16 = 14369;
const SECRET: &str = "mysecretpassword";

/// Everything logged by the members of this test binary.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter("cluster=info")
            .with_ansi(false)
            .with_writer(move || LogWriter(b.clone()))
            .init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);
impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged(needle: &str) -> bool {
    String::from_utf8_lossy(&logs().lock().expect("log lock")).contains(needle)
}

fn cfg(
    me: &str,
    peers: &[&str],
    secret: &str,
    domain: &str,
    dir: &tempfile::TempDir,
) -> ClusterConfig {
    let mut c = ClusterConfig::new(me, peers, secret, domain, dir.path().join(me));
    c.replication_port = REPL;
    c.membership_port = JOIN;
    c.dead_after_ms = 1000;
    c.gossip_interval_ms = 100;
    c
}

async fn start(
    c: ClusterConfig,
) -> (
    ClusterHandle,
    tokio::sync::mpsc::UnboundedReceiver<Event>,
    Started,
) {
    Cluster::start(c).await.expect("member starts")
}

async fn wait_for<F: Fn(&BTreeMap<String, Record>) -> bool>(h: &ClusterHandle, f: F, what: &str) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if f(&h.view().await.expect("view")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{}: timed out waiting for {what}", h.id());
}

async fn wait_info(h: &ClusterHandle, member: &str, info: &MemberInfo) {
    let t = Instant::now();
    loop {
        let ms = h.members().await.expect("members");
        if ms
            .iter()
            .any(|m| m.member == member && m.info.as_ref() == Some(info))
        {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{ms:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_create_join_replicate_and_withdraw_a_dead_member() {
    logs();
    let dir = tempfile::tempdir().expect("tmp");
    let ids = ["127.0.1.1", "127.0.1.2", "127.0.1.3"];
    let peers = |me: &str| ids.iter().copied().filter(|p| *p != me).collect::<Vec<_>>();
    let (a, _ea, sa) = start(cfg(ids[0], &peers(ids[0]), SECRET, "vpn.example", &dir)).await;
    assert_eq!(sa.to_string(), "Creating new ipsec-ddns cluster");
    let (b, _eb, sb) = start(cfg(ids[1], &peers(ids[1]), SECRET, "vpn.example", &dir)).await;
    assert_eq!(sb.to_string(), "Joined existing ipsec-ddns cluster");
    let (c, mut ec, sc) = start(cfg(ids[2], &peers(ids[2]), SECRET, "vpn.example", &dir)).await;
    assert_eq!(sc, Started::Joined);

    a.publish("branch-1", vec![ip("100.64.0.1")], true)
        .await
        .expect("publish");
    c.publish("branch-3", vec![ip("100.64.2.1")], true)
        .await
        .expect("publish");
    for h in [&a, &b, &c] {
        wait_for(h, |v| v.len() == 2, "both records").await;
    }
    // The router moves from a to b: the newer connection wins on every member.
    b.publish("branch-1", vec![ip("100.64.1.7")], true)
        .await
        .expect("publish");
    for h in [&a, &b, &c] {
        wait_for(
            h,
            |v| v.get("branch-1").is_some_and(|r| r.owner == ids[1]),
            "move",
        )
        .await;
    }
    // a's late down for its old tunnel does not hide b's.
    a.publish("branch-1", vec![], false).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for h in [&a, &b, &c] {
        let v = h.view().await.expect("view");
        assert_eq!(
            v.get("branch-1").map(|r| r.addresses.clone()),
            Some(vec![ip("100.64.1.7")])
        );
    }
    let ms = a.members().await.expect("members");
    assert_eq!(ms.len(), 3);
    assert!(ms.iter().all(|m| m.state == MemberState::Up), "{ms:?}");

    // c says where routers reach it and what it takes: every member sees it.
    let info = MemberInfo {
        ike_addrs: vec![ip("192.0.2.3")],
        capacity: 500,
        counters: [("tunnels_up".to_string(), 1)].into_iter().collect(),
    };
    c.set_member_info(info.clone()).await.expect("info");
    for h in [&a, &b] {
        wait_info(h, ids[2], &info).await;
    }
    // The statistics owner sets the counters alone; the addresses and capacity stay.
    let mut info2 = info.clone();
    info2.counters.insert("tunnels_up".into(), 7);
    c.set_member_counters(info2.counters.clone())
        .await
        .expect("counters");
    wait_info(&a, ids[2], &info2).await;
    c.set_member_info(info.clone()).await.expect("info");
    wait_info(&a, ids[2], &info).await;

    // c stops answering: within dead_after its records are withdrawn by a and b.
    c.shutdown().await.expect("shutdown");
    for h in [&a, &b] {
        wait_for(
            h,
            |v| !v.contains_key("branch-3"),
            "withdrawal of c's record",
        )
        .await;
    }
    let st = a.members().await.expect("members");
    assert!(st
        .iter()
        .any(|m| m.member == ids[2] && m.state == MemberState::Down));
    // c comes back (same store): its record is answered again.
    while ec.try_recv().is_ok() {}
    let (c, _ec, sc) = start(cfg(ids[2], &peers(ids[2]), SECRET, "vpn.example", &dir)).await;
    assert_eq!(sc, Started::Joined);
    // After the restart c still holds what it published, for the daemon to reconcile.
    let own = c.own_records().await.expect("own");
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].gateway_id, "branch-3");
    // ... and what it said about itself.
    let me = c.members().await.expect("members");
    assert!(
        me.iter()
            .any(|m| m.is_self && m.info.as_ref() == Some(&info)),
        "{me:?}"
    );
    for h in [&a, &b, &c] {
        wait_for(h, |v| v.contains_key("branch-3") && v.len() == 2, "c back").await;
    }
    for h in [a, b, c] {
        h.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_other_domain_and_unreachable_are_refused_and_change_nothing() {
    logs();
    let dir = tempfile::tempdir().expect("tmp");
    let (a, _ea, _) = start(cfg("127.0.2.1", &[], SECRET, "vpn.example", &dir)).await;
    a.publish("branch-1", vec![ip("100.64.0.1")], true)
        .await
        .expect("publish");

    let e = Cluster::start(cfg(
        "127.0.2.2",
        &["127.0.2.1"],
        "not-the-secret",
        "vpn.example",
        &dir,
    ))
    .await
    .expect_err("wrong secret must be refused");
    assert!(
        matches!(e, Error::WrongSecret { ref peer } if peer == "127.0.2.1"),
        "{e}"
    );
    assert!(e.to_string().contains("wrong ipsec-ddns secret"));
    assert!(
        logged("refused: wrong secret"),
        "the member logs the refusal"
    );

    let e = Cluster::start(cfg(
        "127.0.2.3",
        &["127.0.2.1"],
        SECRET,
        "other.example",
        &dir,
    ))
    .await
    .expect_err("other domain must be refused");
    assert!(matches!(e, Error::DomainMismatch { .. }), "{e}");
    assert!(e.to_string().contains("vpn.example"), "{e}");

    let mut c = cfg("127.0.2.4", &["127.0.2.99"], SECRET, "vpn.example", &dir);
    c.bootstrap = false;
    let e = Cluster::start(c).await.expect_err("unreachable peer");
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("127.0.2.99"), "{e}");

    // Nothing changed: a still has one member and one record; the refused hosts can
    // start later with the right settings.
    let ms = a.members().await.expect("members");
    assert_eq!(ms.len(), 1, "{ms:?}");
    assert_eq!(a.view().await.expect("view").len(), 1);
    let (b, _eb, sb) = start(cfg(
        "127.0.2.2",
        &["127.0.2.1"],
        SECRET,
        "vpn.example",
        &dir,
    ))
    .await;
    assert_eq!(sb, Started::Joined);
    wait_for(
        &b,
        |v| v.contains_key("branch-1"),
        "replication to the late joiner",
    )
    .await;
    a.shutdown().await.expect("stop");
    b.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_rate_limited() {
    logs();
    let dir = tempfile::tempdir().expect("tmp");
    let (a, _ea, _) = start(cfg("127.0.3.1", &[], SECRET, "vpn.example", &dir)).await;
    for _ in 0..5 {
        let e = join_cluster(
            &cfg("127.0.3.2", &[], "guess-guess", "vpn.example", &dir),
            "127.0.3.1",
        )
        .await
        .expect_err("wrong");
        assert!(matches!(e, Error::WrongSecret { .. }), "{e}");
    }
    // Even the right secret is now refused from that address for a while.
    let e = join_cluster(
        &cfg("127.0.3.2", &[], SECRET, "vpn.example", &dir),
        "127.0.3.1",
    )
    .await
    .expect_err("rate limited");
    assert!(matches!(e, Error::RateLimited { .. }), "{e}");
    assert!(logged("rate-limited"));
    a.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eleventh_member_is_refused() {
    logs();
    let dir = tempfile::tempdir().expect("tmp");
    let ids: Vec<String> = (1..=11).map(|i| format!("127.0.4.{i}")).collect();
    let mut handles = Vec::new();
    for (i, id) in ids.iter().enumerate().take(10) {
        let peers: Vec<&str> = if i == 0 {
            vec![]
        } else {
            vec![ids[0].as_str()]
        };
        let (h, _e, _) = start(cfg(id, &peers, SECRET, "vpn.example", &dir)).await;
        handles.push(h);
    }
    let t = Instant::now();
    while handles[0].members().await.expect("m").len() < 10 && t.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = Cluster::start(cfg(
        &ids[10],
        &[ids[0].as_str()],
        SECRET,
        "vpn.example",
        &dir,
    ))
    .await
    .expect_err("eleventh");
    assert!(matches!(e, Error::ClusterFull { max: 10, .. }), "{e}");
    assert_eq!(handles[0].members().await.expect("m").len(), 10);
    for h in handles {
        h.shutdown().await.expect("stop");
    }
}

/// A TCP stream that flips one bit of the next write once armed.
struct Tamper {
    inner: TcpStream,
    armed: Arc<AtomicBool>,
}

impl AsyncRead for Tamper {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tamper {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.armed.swap(false, Ordering::SeqCst) {
            let mut v = buf.to_vec();
            let mid = v.len() / 2;
            v[mid] ^= 0x01;
            return Pin::new(&mut self.inner).poll_write(cx, &v);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn frame<W: AsyncWrite + Unpin, T: serde::Serialize>(w: &mut W, m: &T) {
    let body = serde_json::to_vec(m).expect("json");
    w.write_all(&(body.len() as u32).to_be_bytes())
        .await
        .expect("write");
    w.write_all(&body).await.expect("write");
    w.flush().await.expect("flush");
}

fn delta(member: &str, version: u64, g: &str) -> Message {
    Message::Delta(vec![PartDelta {
        member: member.into(),
        incarnation: 1,
        heartbeat: version,
        from_version: version - 1,
        to_version: version,
        info: None,
        entries: vec![Entry {
            version,
            record: Record {
                gateway_id: g.into(),
                addresses: vec![ip("100.64.9.9")],
                owner: member.into(),
                stamp: u64::MAX / 2,
                up: true,
            },
        }],
    }])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_frames_close_the_link_and_change_nothing() {
    logs();
    let dir = tempfile::tempdir().expect("tmp");
    let (a, _ea, _) = start(cfg("127.0.5.1", &[], SECRET, "vpn.example", &dir)).await;
    // A legitimate member (it proved the secret) speaking raw frames.
    let me = "127.0.5.2";
    let creds = join_cluster(&cfg(me, &[], SECRET, "vpn.example", &dir), "127.0.5.1")
        .await
        .expect("join");
    let client = cluster::tls::replication_client(&creds).expect("tls");
    let tcp = TcpStream::connect(("127.0.5.1", REPL))
        .await
        .expect("connect");
    let armed = Arc::new(AtomicBool::new(false));
    let stream = Tamper {
        inner: tcp,
        armed: armed.clone(),
    };
    let name = cluster::tls::server_name("127.0.5.1").expect("name");
    let mut s = tokio_rustls::TlsConnector::from(client)
        .connect(name, stream)
        .await
        .expect("mTLS");
    frame(
        &mut s,
        &serde_json::json!({"member": me, "domain": "vpn.example"}),
    )
    .await;
    frame(&mut s, &delta(me, 1, "honest")).await;
    wait_for(&a, |v| v.contains_key("honest"), "the honest frame").await;
    armed.store(true, Ordering::SeqCst);
    frame(&mut s, &delta(me, 2, "tampered")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = a.view().await.expect("view");
    assert!(!v.contains_key("tampered"), "a tampered frame was applied");
    assert!(v.contains_key("honest"));
    assert!(
        logged("replication link from 127.0.5.2"),
        "the broken link is logged"
    );

    // A host without a cluster certificate cannot even open the replication port.
    let (ca, ca_key) = cluster::tls::new_ca().expect("ca");
    let rogue = cluster::tls::issue_member(ca, &ca_key, "127.0.5.3").expect("rogue");
    let tcp = TcpStream::connect(("127.0.5.1", REPL))
        .await
        .expect("connect");
    let name = cluster::tls::server_name("127.0.5.1").expect("name");
    let r =
        tokio_rustls::TlsConnector::from(cluster::tls::replication_client(&rogue).expect("tls"))
            .connect(name, tcp)
            .await;
    assert!(r.is_err(), "a certificate from another CA must not pass");
    a.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_join_handshake_is_useless() {
    use tokio::io::AsyncReadExt;
    logs();
    let dir = tempfile::tempdir().expect("tmp");
    let (a, _ea, _) = start(cfg("127.0.6.1", &[], SECRET, "vpn.example", &dir)).await;
    // Record what a legitimate joiner sends, through a proxy on another loopback address.
    let proxy = tokio::net::TcpListener::bind(("127.0.6.50", JOIN))
        .await
        .expect("proxy");
    let recorded = Arc::new(Mutex::new(Vec::<u8>::new()));
    let rec = recorded.clone();
    let proxy_task = tokio::spawn(async move {
        let (mut c, _) = proxy.accept().await.expect("accept");
        let mut s = TcpStream::connect(("127.0.6.1", JOIN))
            .await
            .expect("upstream");
        let (mut cr, mut cw) = c.split();
        let (mut sr, mut sw) = s.split();
        let up = async {
            let mut buf = [0u8; 4096];
            loop {
                let n = cr.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                rec.lock().expect("rec").extend_from_slice(&buf[..n]);
                if sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            sw.shutdown().await.ok();
        };
        let down = tokio::io::copy(&mut sr, &mut cw);
        let _ = tokio::join!(up, down);
    });
    join_cluster(
        &cfg("127.0.6.2", &[], SECRET, "vpn.example", &dir),
        "127.0.6.50",
    )
    .await
    .expect("legitimate join through the proxy");
    proxy_task.await.expect("proxy");
    let members_before = a.members().await.expect("m").len();
    // Replay the captured bytes from another address: no Welcome comes back.
    let bytes = recorded.lock().expect("rec").clone();
    assert!(bytes.len() > 200, "captured the handshake");
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.6.77:0".parse().expect("addr"))
        .expect("bind");
    let mut s = sock
        .connect("127.0.6.1:14369".parse().expect("addr"))
        .await
        .expect("connect");
    s.write_all(&bytes).await.ok();
    let mut back = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut back)).await;
    let text = String::from_utf8_lossy(&back);
    assert!(!text.contains("BEGIN PRIVATE KEY") && !text.contains("Welcome"));
    assert_eq!(a.members().await.expect("m").len(), members_before);
    a.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_and_removed_without_restarting_the_others() {
    logs();
    let dir = tempfile::tempdir().expect("tmp");
    let (a, _ea, _) = start(cfg(
        "127.0.10.1",
        &["127.0.10.2"],
        SECRET,
        "vpn.example",
        &dir,
    ))
    .await;
    let (b, _eb, _) = start(cfg(
        "127.0.10.2",
        &["127.0.10.1"],
        SECRET,
        "vpn.example",
        &dir,
    ))
    .await;
    a.publish("branch-a", vec![ip("100.64.0.1")], true)
        .await
        .expect("publish");
    // A new member configured with only one peer: both running members learn it (the
    // seed's "add the new ACM as peer" becomes a no-op confirmation), nobody restarts.
    let (c, mut ec, sc) = start(cfg(
        "127.0.10.3",
        &["127.0.10.1"],
        SECRET,
        "vpn.example",
        &dir,
    ))
    .await;
    assert_eq!(sc, Started::Joined);
    c.publish("branch-c", vec![ip("100.64.2.1")], true)
        .await
        .expect("publish");
    for h in [&a, &b, &c] {
        wait_for(h, |v| v.len() == 2, "records of the new member everywhere").await;
    }
    assert!(
        b.add_peer("127.0.10.3").await.expect("add"),
        "idempotent add"
    );
    let t = Instant::now();
    while b
        .members()
        .await
        .expect("m")
        .iter()
        .filter(|m| m.state == MemberState::Up)
        .count()
        < 3
    {
        assert!(t.elapsed() < Duration::from_secs(5), "b never saw c up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `delete service ipsec-ddns enable` on c: the others forget it and its records.
    c.leave().await.expect("leave");
    for h in [&a, &b] {
        wait_for(
            h,
            |v| v.len() == 1 && v.contains_key("branch-a"),
            "c's records gone",
        )
        .await;
        let t = Instant::now();
        while h.members().await.expect("m").len() != 2 {
            assert!(t.elapsed() < Duration::from_secs(5), "c still a member");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // `delete service ipsec-ddns peer` on the others is then a plain removal.
    a.remove_peer("127.0.10.3").await.expect("remove");
    assert_eq!(a.members().await.expect("m").len(), 2);
    while ec.try_recv().is_ok() {}
    a.shutdown().await.expect("stop");
    b.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_from_strangers_change_nothing() {
    use tokio::io::AsyncReadExt;
    logs();
    let dir = tempfile::tempdir().expect("tmp");
    let (a, _ea, _) = start(cfg("127.0.11.1", &[], SECRET, "vpn.example", &dir)).await;
    a.publish("branch-1", vec![ip("100.64.0.1")], true)
        .await
        .expect("publish");
    // Plain garbage on both ports.
    for port in [REPL, JOIN] {
        let mut s = TcpStream::connect(("127.0.11.1", port))
            .await
            .expect("connect");
        s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5])
            .await
            .ok();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut buf)).await;
    }
    // A TLS session on the join port announcing a 4 GiB frame.
    let tcp = TcpStream::connect(("127.0.11.1", JOIN))
        .await
        .expect("connect");
    let name = cluster::tls::server_name("ipsec-ddns-join").expect("name");
    let mut s = tokio_rustls::TlsConnector::from(cluster::tls::join_client().expect("tls"))
        .connect(name, tcp)
        .await
        .expect("TLS to the join port");
    s.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
    s.flush().await.expect("flush");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut buf)).await;
    assert!(buf.is_empty(), "no answer to an oversized frame");
    // The member is unharmed and still admits a real joiner.
    assert_eq!(a.view().await.expect("view").len(), 1);
    assert_eq!(a.members().await.expect("m").len(), 1);
    let (b, _eb, sb) = start(cfg(
        "127.0.11.2",
        &["127.0.11.1"],
        SECRET,
        "vpn.example",
        &dir,
    ))
    .await;
    assert_eq!(sb, Started::Joined);
    wait_for(&b, |v| v.contains_key("branch-1"), "replication").await;
    a.shutdown().await.expect("stop");
    b.shutdown().await.expect("stop");
}
