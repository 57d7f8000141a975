//! Transport and the daemon's handle (tokio).
//!
//! * TCP 9100 (`replication_port`): the replication stream. Every member keeps one outbound
//!   mutual-TLS link to every other member (full mesh) and sends on it the immediate pushes
//!   and the periodic digests/deltas of [`crate::node`]; it receives on the links the others
//!   opened to it. Both sides are pinned to the cluster CA and the server name is the member
//!   address, so only admitted members take part.
//! * TCP 4369 (`membership_port`): membership, join and discovery. A new member proves the
//!   secret by SPAKE2 bound to the TLS exporter ([`crate::join`]) and receives the cluster CA
//!   and the member list; wrong secrets are logged and rate-limited.
//!
//! Frames on both ports: 4-byte big-endian length, then a JSON document; at most
//! [`MAX_FRAME`] bytes, anything else closes the link.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{debug, info, warn};

use crate::config::{resolve, ClusterConfig};
use crate::join::{self, JoinMsg, Refusal};
use crate::node::{
    Event, MemberId, MemberInfo, MemberStatus, Message, Node, NodeConfig, Record, StoreOp,
    MAX_MEMBERS,
};
use crate::store::Store;
use crate::tls::{self, Credentials};
use crate::Error;

/// Largest frame accepted on either port.
pub const MAX_FRAME: usize = 8 << 20;
/// Failed join attempts from one address before it is refused for [`LOCKOUT`].
pub const MAX_FAILURES: u32 = 5;
/// How long an address is refused after too many failures.
pub const LOCKOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const LINK_QUEUE: usize = 8192;

/// What `commit` answers (seed 003 ch. 4, exact strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    Created,
    Joined,
}

impl std::fmt::Display for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Started::Created => "Creating new ipsec-ddns cluster",
            Started::Joined => "Joined existing ipsec-ddns cluster",
        })
    }
}

pub(crate) async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<usize, Error> {
    let body = serde_json::to_vec(msg)?;
    let n = encode_len(&body)?;
    w.write_all(&n).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(body.len() + 4)
}

fn encode_len(body: &[u8]) -> Result<[u8; 4], Error> {
    if body.len() > MAX_FRAME {
        return Err(Error::Malformed("frame too large"));
    }
    Ok(u32::try_from(body.len())
        .map_err(|_| Error::Malformed("frame too large"))?
        .to_be_bytes())
}

pub(crate) async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<T, Error> {
    read_frame_max(r, MAX_FRAME).await
}

/// Largest frame on the join port, where the peer is not authenticated yet.
pub const MAX_JOIN_FRAME: usize = 64 << 10;

pub(crate) async fn read_frame_max<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
) -> Result<T, Error> {
    let mut n = [0u8; 4];
    r.read_exact(&mut n).await?;
    let n = u32::from_be_bytes(n) as usize;
    if n > max {
        return Err(Error::Malformed("frame too large"));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|_| Error::Malformed("frame is not a cluster message"))
}

/// First frame on a replication link.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LinkHello {
    pub(crate) member: MemberId,
    domain: String,
}

type InfoUpdate = Box<dyn FnOnce(&mut MemberInfo) + Send>;

enum Cmd {
    Inbound(MemberId, Message),
    Publish {
        gateway_id: String,
        addresses: Vec<IpAddr>,
        up: bool,
        reply: oneshot::Sender<Result<Record, Error>>,
    },
    Members(oneshot::Sender<Vec<MemberStatus>>),
    SetInfo(MemberInfo, oneshot::Sender<Result<(), Error>>),
    UpdateInfo(InfoUpdate, oneshot::Sender<Result<(), Error>>),
    Own(oneshot::Sender<Vec<Record>>),
    View(oneshot::Sender<BTreeMap<String, Record>>),
    Admit {
        member: MemberId,
        reply: oneshot::Sender<Result<Vec<MemberId>, Refusal>>,
    },
    AddPeer(MemberId, oneshot::Sender<bool>),
    RemovePeer(MemberId, oneshot::Sender<()>),
    Leave(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// Counters of the replication transport.
#[derive(Debug, Default)]
pub struct Stats {
    /// Frame bytes written on replication links (TLS record overhead not included).
    pub bytes_sent: AtomicU64,
    /// Frames written on replication links.
    pub frames_sent: AtomicU64,
    /// Frames dropped because a link queue was full or down (repaired by digests).
    pub frames_dropped: AtomicU64,
}

/// The daemon's handle on the running cluster member.
#[derive(Clone)]
pub struct ClusterHandle {
    tx: mpsc::Sender<Cmd>,
    me: MemberId,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle")
            .field("me", &self.me)
            .finish()
    }
}

impl ClusterHandle {
    /// This member's ID (`self`).
    pub fn id(&self) -> &str {
        &self.me
    }

    /// Transport counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    async fn ask<T>(&self, f: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(f(tx)).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Publish a local tunnel up (`up = true`, with its virtual IPs) or down. Returns once
    /// the change is on disk (acknowledged) and queued to every member.
    pub async fn publish(
        &self,
        gateway_id: &str,
        addresses: Vec<IpAddr>,
        up: bool,
    ) -> Result<Record, Error> {
        let gateway_id = gateway_id.to_owned();
        self.ask(|reply| Cmd::Publish {
            gateway_id,
            addresses,
            up,
            reply,
        })
        .await?
    }

    /// `show cluster`: members, state, last seen, records each.
    pub async fn members(&self) -> Result<Vec<MemberStatus>, Error> {
        self.ask(Cmd::Members).await
    }

    /// Say what this member is (IKE addresses, capacity, counters), replacing all of it;
    /// shown to every member in [`MemberStatus::info`]. Two owners of different parts use
    /// [`ClusterHandle::set_member_counters`] and [`ClusterHandle::set_member_reach`]. Cheap to call every second: replicated only when it
    /// changed, a change of the counters alone at most every
    /// [`crate::node::INFO_COUNTERS_INTERVAL_MS`]. Fails on a value over the limits
    /// ([`MemberInfo::check`]).
    pub async fn set_member_info(&self, info: MemberInfo) -> Result<(), Error> {
        self.ask(|r| Cmd::SetInfo(info, r)).await?
    }

    /// Set only the `counters` of this member's info, keeping its IKE addresses and
    /// capacity (for the statistics owner; the pool owner uses
    /// [`ClusterHandle::set_member_reach`]). Same replication rules as
    /// [`ClusterHandle::set_member_info`].
    pub async fn set_member_counters(&self, counters: BTreeMap<String, u64>) -> Result<(), Error> {
        let f: InfoUpdate = Box::new(move |i| i.counters = counters);
        self.ask(|r| Cmd::UpdateInfo(f, r)).await?
    }

    /// Set only the IKE addresses and capacity of this member's info, keeping its counters.
    pub async fn set_member_reach(
        &self,
        ike_addrs: Vec<IpAddr>,
        capacity: u32,
    ) -> Result<(), Error> {
        let f: InfoUpdate = Box::new(move |i| {
            i.ike_addrs = ike_addrs;
            i.capacity = capacity;
        });
        self.ask(|r| Cmd::UpdateInfo(f, r)).await?
    }

    /// This member's own up records as stored (after a restart: what it published before,
    /// so the daemon can withdraw the tunnels it no longer has).
    pub async fn own_records(&self) -> Result<Vec<Record>, Error> {
        self.ask(Cmd::Own).await
    }

    /// Every record this member answers.
    pub async fn view(&self) -> Result<BTreeMap<String, Record>, Error> {
        self.ask(Cmd::View).await
    }

    /// `set service ipsec-ddns peer X` at run time. False: the cluster is full.
    pub async fn add_peer(&self, peer: &str) -> Result<bool, Error> {
        let p = peer.to_owned();
        self.ask(|r| Cmd::AddPeer(p, r)).await
    }

    /// `delete service ipsec-ddns peer X` at run time: forget it and its records.
    pub async fn remove_peer(&self, peer: &str) -> Result<(), Error> {
        let p = peer.to_owned();
        self.ask(|r| Cmd::RemovePeer(p, r)).await
    }

    /// `delete service ipsec-ddns enable`: tell every member we leave, then stop.
    pub async fn leave(&self) -> Result<(), Error> {
        self.ask(Cmd::Leave).await
    }

    /// Stop this member (its state stays on disk).
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.ask(Cmd::Shutdown).await
    }
}

struct RateLimiter {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl RateLimiter {
    fn limited(&self, ip: IpAddr) -> bool {
        let Ok(mut m) = self.failures.lock() else {
            return true;
        };
        match m.get(&ip) {
            Some((n, since)) if since.elapsed() < LOCKOUT => *n >= MAX_FAILURES,
            Some(_) => {
                m.remove(&ip);
                false
            }
            None => false,
        }
    }

    fn fail(&self, ip: IpAddr) {
        if let Ok(mut m) = self.failures.lock() {
            if m.len() > 10_000 {
                m.retain(|_, (_, t)| t.elapsed() < LOCKOUT);
            }
            let e = m.entry(ip).or_insert((0, Instant::now()));
            e.0 += 1;
            e.1 = Instant::now();
        }
    }
}

struct Shared {
    cfg: ClusterConfig,
    stopped: tokio::sync::watch::Sender<bool>,
    creds: RwLock<Option<Credentials>>,
    limiter: RateLimiter,
    join_slots: Semaphore,
    stats: Arc<Stats>,
}

/// Entry point of the cluster service.
pub struct Cluster;

impl Cluster {
    /// Start this member: create the cluster or join it through a configured peer, open
    /// both ports, and run replication. Returns the handle, the event stream and what
    /// `commit` should print.
    pub async fn start(
        cfg: ClusterConfig,
    ) -> Result<(ClusterHandle, mpsc::UnboundedReceiver<Event>, Started), Error> {
        cfg.validate()?;
        if !cfg.enable {
            return Err(Error::InvalidConfig("ipsec-ddns is not enabled".into()));
        }
        let join_addr = resolve(&cfg.self_addr, cfg.membership_port)?;
        let repl_addr = resolve(&cfg.self_addr, cfg.replication_port)?;
        let join_listener = TcpListener::bind(join_addr)
            .await
            .map_err(|source| Error::Bind {
                addr: join_addr,
                source,
            })?;
        let repl_listener = TcpListener::bind(repl_addr)
            .await
            .map_err(|source| Error::Bind {
                addr: repl_addr,
                source,
            })?;
        std::fs::create_dir_all(&cfg.data_dir)?;
        let store = Store::open(&cfg.data_dir)?;
        let stored = load_credentials(&store, &cfg)?;
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            stopped: tokio::sync::watch::channel(false).0,
            creds: RwLock::new(stored.clone()),
            limiter: RateLimiter {
                failures: Mutex::new(HashMap::new()),
            },
            join_slots: Semaphore::new(4),
            stats: Arc::new(Stats::default()),
        });
        let (tx, rx) = mpsc::channel::<Cmd>(4096);
        let join_task = tokio::spawn(join_acceptor(join_listener, shared.clone(), tx.clone()));

        let (started, learned_members) = match stored {
            Some(_) => (Started::Joined, Vec::new()),
            None => match bootstrap(&shared, &store).await {
                Ok(v) => v,
                Err(e) => {
                    join_task.abort();
                    return Err(e);
                }
            },
        };
        let creds = shared
            .creds
            .read()
            .map_err(|_| Error::Stopped)?
            .clone()
            .ok_or(Error::Stopped)?;
        let incarnation = store.next_incarnation()?;
        let snapshot = store.load()?;
        let mut peers = cfg.peer.clone();
        for m in learned_members {
            if m != cfg.self_addr && !peers.contains(&m) {
                peers.push(m);
            }
        }
        let start = Instant::now();
        let mut node = Node::new(
            cfg.self_addr.clone(),
            incarnation,
            snapshot,
            &peers,
            NodeConfig {
                dead_after_ms: cfg.dead_after_ms,
                gossip_interval_ms: cfg.gossip_interval_ms,
            },
            0,
        );
        node.stamp_start(wall_ms());
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let repl_server = tls::replication_server(&creds)?;
        let repl_client = tls::replication_client(&creds)?;
        let repl_task = tokio::spawn(repl_acceptor(
            repl_listener,
            repl_server,
            shared.clone(),
            tx.clone(),
        ));
        let disk = spawn_store_thread(store);
        let driver = Driver {
            disk,
            node,
            start,
            links: HashMap::new(),
            client: repl_client,
            shared: shared.clone(),
            events: ev_tx,
            join_task,
            repl_task,
        };
        tokio::spawn(driver.run(rx));
        info!(member = %cfg.self_addr, incarnation, "{started}");
        Ok((
            ClusterHandle {
                tx,
                me: cfg.self_addr.clone(),
                stats: shared.stats.clone(),
            },
            ev_rx,
            started,
        ))
    }
}

fn load_credentials(store: &Store, cfg: &ClusterConfig) -> Result<Option<Credentials>, Error> {
    let (Some(domain), Some(ca), Some(ca_key), Some(cert), Some(key)) = (
        store.get_blob("domain")?,
        store.get_blob("ca_cert")?,
        store.get_blob("ca_key")?,
        store.get_blob("cert")?,
        store.get_blob("key")?,
    ) else {
        return Ok(None);
    };
    let domain = String::from_utf8_lossy(&domain).into_owned();
    if domain != cfg.domain {
        return Err(Error::DomainMismatch {
            peer: format!("this member's stored cluster ({})", cfg.data_dir.display()),
            ours: cfg.domain.clone(),
            theirs: domain,
        });
    }
    Ok(Some(Credentials {
        ca_cert: ca.into(),
        ca_key_pem: String::from_utf8_lossy(&ca_key).into_owned(),
        cert: cert.into(),
        key,
    }))
}

fn save_credentials(store: &Store, domain: &str, c: &Credentials) -> Result<(), Error> {
    store.put_blob("ca_cert", c.ca_cert.as_ref())?;
    store.put_blob("ca_key", c.ca_key_pem.as_bytes())?;
    store.put_blob("cert", c.cert.as_ref())?;
    store.put_blob("key", &c.key)?;
    // Written last: its presence marks a complete membership.
    store.put_blob("domain", domain.as_bytes())?;
    Ok(())
}

/// First start of this member: join through a peer, or create the cluster when none is
/// reachable. A refusal (wrong secret, other domain, full) changes nothing.
async fn bootstrap(shared: &Arc<Shared>, store: &Store) -> Result<(Started, Vec<MemberId>), Error> {
    let cfg = &shared.cfg;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut unreachable = Vec::new();
        let mut not_yet = Vec::new();
        for peer in &cfg.peer {
            match join_via(cfg, peer).await {
                Ok((ca_cert, ca_key_pem, members)) => {
                    let creds = tls::issue_member(ca_cert.into(), &ca_key_pem, &cfg.self_addr)?;
                    save_credentials(store, &cfg.domain, &creds)?;
                    *shared.creds.write().map_err(|_| Error::Stopped)? = Some(creds);
                    return Ok((Started::Joined, members));
                }
                Err(JoinError::NotYet) => not_yet.push(peer.clone()),
                Err(JoinError::Unreachable(reason)) => {
                    unreachable.push(format!("{peer} ({reason})"));
                }
                Err(JoinError::Fatal(e)) => return Err(e),
            }
        }
        let lowest = not_yet.iter().all(|p| cfg.self_addr < *p);
        if not_yet.is_empty() || (lowest && Instant::now() + Duration::from_secs(8) > deadline) {
            if !cfg.bootstrap && not_yet.is_empty() && !cfg.peer.is_empty() {
                return Err(Error::Unreachable {
                    peer: cfg.peer.join(", "),
                    reason: unreachable.join("; "),
                });
            }
            if !not_yet.is_empty() && !lowest {
                return Err(Error::Unreachable {
                    peer: not_yet.join(", "),
                    reason: "peers are starting too and none has created the cluster".into(),
                });
            }
            let (ca, ca_key) = tls::new_ca()?;
            let creds = tls::issue_member(ca, &ca_key, &cfg.self_addr)?;
            save_credentials(store, &cfg.domain, &creds)?;
            *shared.creds.write().map_err(|_| Error::Stopped)? = Some(creds);
            return Ok((Started::Created, Vec::new()));
        }
        if Instant::now() > deadline {
            return Err(Error::Unreachable {
                peer: not_yet.join(", "),
                reason: "peers are starting too and none has created the cluster".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Run the join protocol against `peer` and return member credentials for `cfg.self_addr`
/// without starting anything (used by [`Cluster::start`]; also a probe for operators/tests).
pub async fn join_cluster(cfg: &ClusterConfig, peer: &str) -> Result<Credentials, Error> {
    match join_via(cfg, peer).await {
        Ok((ca, ca_key, _)) => tls::issue_member(ca.into(), &ca_key, &cfg.self_addr),
        Err(JoinError::NotYet) => Err(Error::Unreachable {
            peer: peer.to_owned(),
            reason: "peer has not created or joined a cluster yet".into(),
        }),
        Err(JoinError::Unreachable(reason)) => Err(Error::Unreachable {
            peer: peer.to_owned(),
            reason,
        }),
        Err(JoinError::Fatal(e)) => Err(e),
    }
}

enum JoinError {
    NotYet,
    Unreachable(String),
    Fatal(Error),
}

type Welcome = (Vec<u8>, String, Vec<MemberId>);

/// Joiner side of [`crate::join`].
async fn join_via(cfg: &ClusterConfig, peer: &str) -> Result<Welcome, JoinError> {
    let addr = resolve(peer, cfg.membership_port).map_err(JoinError::Fatal)?;
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(JoinError::Unreachable(e.to_string())),
        Err(_) => return Err(JoinError::Unreachable("timed out".into())),
    };
    let fatal = |e: Error| JoinError::Fatal(e);
    let client = tls::join_client().map_err(fatal)?;
    let name = tls::server_name("ipsec-ddns-join").map_err(fatal)?;
    let run = async {
        let mut s = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| JoinError::Unreachable(format!("TLS: {e}")))?;
        let exporter = s
            .get_ref()
            .1
            .export_keying_material([0u8; 32], join::EXPORTER_LABEL, None)
            .map_err(|e| fatal(e.into()))?;
        let (pake, hello) = join::joiner_start(&cfg.secret, &exporter);
        write_frame(&mut s, &JoinMsg::Hello { pake: hello })
            .await
            .map_err(fatal)?;
        let refused = |r: Refusal| match r {
            Refusal::WrongSecret => JoinError::Fatal(Error::WrongSecret {
                peer: peer.to_owned(),
            }),
            Refusal::DomainMismatch { theirs } => JoinError::Fatal(Error::DomainMismatch {
                peer: peer.to_owned(),
                ours: cfg.domain.clone(),
                theirs,
            }),
            Refusal::ClusterFull { max } => JoinError::Fatal(Error::ClusterFull {
                peer: peer.to_owned(),
                max,
            }),
            Refusal::RateLimited => JoinError::Fatal(Error::RateLimited {
                peer: peer.to_owned(),
            }),
            Refusal::NotYet => JoinError::NotYet,
        };
        let (their_pake, their_confirm) = match read_frame(&mut s).await.map_err(fatal)? {
            JoinMsg::Challenge { pake, confirm } => (pake, confirm),
            JoinMsg::Refused(r) => return Err(refused(r)),
            _ => {
                return Err(fatal(Error::Protocol {
                    peer: peer.to_owned(),
                    reason: "expected Challenge".into(),
                }))
            }
        };
        let key = join::finish(pake, &their_pake).map_err(fatal)?;
        if !join::verify(&key, false, &exporter, &their_confirm) {
            warn!(
                peer,
                "ipsec-ddns join refused: wrong secret (peer's key confirmation failed)"
            );
            return Err(fatal(Error::WrongSecret {
                peer: peer.to_owned(),
            }));
        }
        write_frame(
            &mut s,
            &JoinMsg::Confirm {
                confirm: join::confirm(&key, true, &exporter),
                member: cfg.self_addr.clone(),
                domain: cfg.domain.clone(),
            },
        )
        .await
        .map_err(fatal)?;
        match read_frame(&mut s).await.map_err(fatal)? {
            JoinMsg::Welcome {
                domain,
                ca_cert,
                ca_key_pem,
                members,
            } if domain == cfg.domain => Ok((ca_cert, ca_key_pem, members)),
            JoinMsg::Refused(r) => Err(refused(r)),
            _ => Err(fatal(Error::Protocol {
                peer: peer.to_owned(),
                reason: "expected Welcome".into(),
            })),
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, run).await {
        Ok(r) => r,
        Err(_) => Err(JoinError::Unreachable("join handshake timed out".into())),
    }
}

async fn join_acceptor(listener: TcpListener, shared: Arc<Shared>, tx: mpsc::Sender<Cmd>) {
    loop {
        let Ok((tcp, addr)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(_slot) = shared.join_slots.try_acquire() else {
                debug!(%addr, "join port busy, connection dropped");
                return;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, serve_join(tcp, addr, &shared, &tx)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(%addr, "ipsec-ddns join from {addr} failed: {e}"),
                Err(_) => {
                    shared.limiter.fail(addr.ip());
                    warn!(%addr, "ipsec-ddns join from {addr} timed out");
                }
            }
        });
    }
}

/// Member side of [`crate::join`].
async fn serve_join(
    tcp: TcpStream,
    addr: SocketAddr,
    shared: &Shared,
    tx: &mpsc::Sender<Cmd>,
) -> Result<(), Error> {
    let creds = shared.creds.read().map_err(|_| Error::Stopped)?.clone();
    let server = tls::join_server(creds.as_ref())?;
    let mut s = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await?;
    let exporter = s
        .get_ref()
        .1
        .export_keying_material([0u8; 32], join::EXPORTER_LABEL, None)?;
    let their_pake = match read_frame_max(&mut s, MAX_JOIN_FRAME).await? {
        JoinMsg::Hello { pake } => pake,
        _ => return Err(Error::Malformed("expected Hello")),
    };
    if shared.limiter.limited(addr.ip()) {
        warn!(%addr, "ipsec-ddns join from {addr} refused: rate-limited after failed attempts");
        write_frame(&mut s, &JoinMsg::Refused(Refusal::RateLimited)).await?;
        return Ok(());
    }
    let (pake, ours) = join::member_start(&shared.cfg.secret, &exporter);
    let key = match join::finish(pake, &their_pake) {
        Ok(k) => k,
        Err(e) => {
            shared.limiter.fail(addr.ip());
            return Err(e);
        }
    };
    write_frame(
        &mut s,
        &JoinMsg::Challenge {
            pake: ours,
            confirm: join::confirm(&key, false, &exporter),
        },
    )
    .await?;
    let msg = match read_frame_max(&mut s, MAX_JOIN_FRAME).await {
        Ok(m) => m,
        Err(e) => {
            // The joiner hung up after our confirmation: it found the secret wrong.
            shared.limiter.fail(addr.ip());
            warn!(%addr, "ipsec-ddns join from {addr} refused: wrong secret (joiner aborted)");
            return Err(e);
        }
    };
    let (confirm, member, domain) = match msg {
        JoinMsg::Confirm {
            confirm,
            member,
            domain,
        } => (confirm, member, domain),
        _ => return Err(Error::Malformed("expected Confirm")),
    };
    if !join::verify(&key, true, &exporter, &confirm) {
        shared.limiter.fail(addr.ip());
        warn!(%addr, "ipsec-ddns join from {addr} refused: wrong secret");
        write_frame(&mut s, &JoinMsg::Refused(Refusal::WrongSecret)).await?;
        return Ok(());
    }
    if domain != shared.cfg.domain {
        warn!(%addr, member, "ipsec-ddns join refused: domain {domain:?} differs from ours");
        write_frame(
            &mut s,
            &JoinMsg::Refused(Refusal::DomainMismatch {
                theirs: shared.cfg.domain.clone(),
            }),
        )
        .await?;
        return Ok(());
    }
    let Some(creds) = creds else {
        write_frame(&mut s, &JoinMsg::Refused(Refusal::NotYet)).await?;
        return Ok(());
    };
    if member.len() > crate::node::MAX_MEMBER_ID_LEN || tls::server_name(&member).is_err() {
        return Err(Error::Malformed("joiner member ID"));
    }
    let (rtx, rrx) = oneshot::channel();
    tx.send(Cmd::Admit {
        member: member.clone(),
        reply: rtx,
    })
    .await
    .map_err(|_| Error::Stopped)?;
    match rrx.await.map_err(|_| Error::Stopped)? {
        Ok(members) => {
            info!(%addr, member, "ipsec-ddns member joined");
            write_frame(
                &mut s,
                &JoinMsg::Welcome {
                    domain: shared.cfg.domain.clone(),
                    ca_cert: creds.ca_cert.to_vec(),
                    ca_key_pem: creds.ca_key_pem.clone(),
                    members,
                },
            )
            .await?;
        }
        Err(r) => {
            warn!(%addr, member, "ipsec-ddns join refused: {r:?}");
            write_frame(&mut s, &JoinMsg::Refused(r)).await?;
        }
    }
    s.shutdown().await.ok();
    Ok(())
}

async fn repl_acceptor(
    listener: TcpListener,
    server: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Cmd>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    loop {
        let Ok((tcp, addr)) = listener.accept().await else {
            continue;
        };
        tcp.set_nodelay(true).ok();
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stopped = shared.stopped.subscribe();
            tokio::select! {
                r = serve_link(acceptor, tcp, addr, &shared, &tx) => {
                    if let Err(e) = r {
                        warn!(%addr, "replication link from {addr} refused: {e}");
                    }
                }
                _ = stopped.wait_for(|s| *s) => {}
            }
        });
    }
}

async fn serve_link(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
    shared: &Shared,
    tx: &mpsc::Sender<Cmd>,
) -> Result<(), Error> {
    let mut s = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| Error::Malformed("TLS handshake timed out"))??;
    let hello: LinkHello = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut s))
        .await
        .map_err(|_| Error::Malformed("link hello timed out"))??;
    let cert = s
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or(Error::Malformed("no client certificate"))?;
    if !tls::cert_names_member(&cert, &hello.member) || hello.member == shared.cfg.self_addr {
        return Err(Error::Protocol {
            peer: hello.member,
            reason: "certificate does not name this member".into(),
        });
    }
    if hello.domain != shared.cfg.domain {
        return Err(Error::DomainMismatch {
            peer: hello.member,
            ours: shared.cfg.domain.clone(),
            theirs: hello.domain,
        });
    }
    debug!(member = hello.member, "replication link up");
    loop {
        let msg: Message = match read_frame(&mut s).await {
            Ok(m) => m,
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                debug!(member = hello.member, %addr, "replication link closed by peer");
                return Ok(());
            }
            Err(e) => {
                warn!(member = hello.member, %addr, "replication link from {} closed: {e}", hello.member);
                return Ok(());
            }
        };
        tx.send(Cmd::Inbound(hello.member.clone(), msg))
            .await
            .map_err(|_| Error::Stopped)?;
    }
}

/// Outbound link to one member: connect, send queued frames, reconnect on failure.
async fn link_task(
    peer: MemberId,
    mut rx: mpsc::Receiver<Arc<Vec<u8>>>,
    wake: Arc<tokio::sync::Notify>,
    client: Arc<rustls::ClientConfig>,
    shared: Arc<Shared>,
) {
    let connector = tokio_rustls::TlsConnector::from(client);
    let mut backoff = Duration::from_millis(100);
    let mut logged = false;
    loop {
        let connected = async {
            let addr = resolve(&peer, shared.cfg.replication_port)?;
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| Error::Unreachable {
                    peer: peer.clone(),
                    reason: "connect timed out".into(),
                })??;
            tcp.set_nodelay(true).ok();
            let name = tls::server_name(&peer)?;
            let mut s = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| Error::Malformed("TLS handshake timed out"))??;
            write_frame(
                &mut s,
                &LinkHello {
                    member: shared.cfg.self_addr.clone(),
                    domain: shared.cfg.domain.clone(),
                },
            )
            .await?;
            Ok::<_, Error>(s)
        }
        .await;
        let mut s = match connected {
            Ok(s) => {
                backoff = Duration::from_millis(100);
                logged = false;
                debug!(peer, "replication link connected");
                s
            }
            Err(e) => {
                if !logged {
                    debug!(peer, "replication link down: {e}");
                    logged = true;
                }
                // Drop what queued up meanwhile: digests repair it.
                loop {
                    match rx.try_recv() {
                        Ok(_) => {
                            shared.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    }
                }
                // Retry at once when the member is heard from (it just started listening).
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = wake.notified() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Send until the link breaks or the member is forgotten.
        loop {
            let Some(frame) = rx.recv().await else {
                s.shutdown().await.ok();
                return;
            };
            let mut batch = vec![frame];
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(f) => batch.push(f),
                    Err(_) => break,
                }
            }
            let mut res = Ok(());
            for f in &batch {
                res = s.write_all(f).await;
                if res.is_err() {
                    break;
                }
                shared
                    .stats
                    .bytes_sent
                    .fetch_add(f.len() as u64, Ordering::Relaxed);
                shared.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
            }
            if res.is_ok() {
                res = s.flush().await;
            }
            if let Err(e) = res {
                debug!(peer, "replication link broke: {e}");
                break;
            }
        }
    }
}

/// Queue of an outbound link and the bell that cuts its reconnect backoff short.
type Link = (mpsc::Sender<Arc<Vec<u8>>>, Arc<tokio::sync::Notify>);

struct Driver {
    node: Node,
    start: Instant,
    links: HashMap<MemberId, Link>,
    client: Arc<rustls::ClientConfig>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
    join_task: tokio::task::JoinHandle<()>,
    repl_task: tokio::task::JoinHandle<()>,
    disk: std::sync::mpsc::Sender<StoreWork>,
}

type Ack = (
    oneshot::Sender<Result<Record, Error>>,
    Result<Record, Error>,
);

enum StoreWork {
    /// Apply `ops` in order; when `acks` is not empty, fsync before answering them.
    Write(Vec<StoreOp>, Vec<Ack>),
    /// Everything queued before is durable when this answers.
    Barrier(oneshot::Sender<()>),
}

/// The store lives on its own thread so the replication driver never waits for the disk.
/// Group commit: every batch queued while an fsync runs is covered by the next single fsync.
fn spawn_store_thread(store: Store) -> std::sync::mpsc::Sender<StoreWork> {
    let (tx, rx) = std::sync::mpsc::channel::<StoreWork>();
    std::thread::spawn(move || {
        while let Ok(first) = rx.recv() {
            let mut work = vec![first];
            while let Ok(more) = rx.try_recv() {
                work.push(more);
            }
            let mut applied: Vec<(Option<String>, Vec<Ack>)> = Vec::new();
            let mut barriers = Vec::new();
            let mut need_flush = false;
            for w in work {
                match w {
                    StoreWork::Write(ops, acks) => {
                        let err = store.apply(&ops).err().map(|e| e.to_string());
                        if let Some(e) = &err {
                            warn!("cluster store: {e}");
                        }
                        need_flush |= !acks.is_empty();
                        applied.push((err, acks));
                    }
                    StoreWork::Barrier(b) => {
                        need_flush = true;
                        barriers.push(b);
                    }
                }
            }
            let flushed = if need_flush {
                store.flush().err().map(|e| e.to_string())
            } else {
                None
            };
            for (err, acks) in applied {
                let err = err.or_else(|| flushed.clone());
                for (reply, r) in acks {
                    let r = match (&err, r) {
                        (Some(e), Ok(_)) => {
                            Err(Error::InvalidConfig(format!("not persisted: {e}")))
                        }
                        (_, r) => r,
                    };
                    let _ = reply.send(r);
                }
            }
            for b in barriers {
                let _ = b.send(());
            }
        }
    });
    tx
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Driver {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        if let Err(e) = self.flush(Vec::new()) {
            warn!("cluster store: {e}");
        }
        loop {
            let deadline = self.start + Duration::from_millis(self.node.next_deadline());
            let first = tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => Some(c),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => None,
            };
            let now = self.now_ms();
            self.node.tick(now, wall_ms());
            let mut acks = Vec::new();
            let mut stop = None;
            if let Some(c) = first {
                let mut c = Some(c);
                let mut n = 0;
                while let Some(cmd) = c.take() {
                    if let Some(s) = self.handle(cmd, &mut acks) {
                        stop = Some(s);
                        break;
                    }
                    n += 1;
                    if n >= 512 {
                        break;
                    }
                    c = rx.try_recv().ok();
                }
            }
            if let Err(e) = self.flush(acks) {
                warn!("cluster store: {e}");
            }
            if let Some((leaving, reply)) = stop {
                if leaving {
                    // Give the Leave frames a moment to go out.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let (btx, brx) = oneshot::channel();
                if self.disk.send(StoreWork::Barrier(btx)).is_ok() {
                    let _ = brx.await;
                }
                self.join_task.abort();
                self.repl_task.abort();
                self.shared.stopped.send_replace(true);
                self.links.clear();
                let _ = reply.send(());
                return;
            }
        }
    }

    /// Returns `Some` to stop.
    #[allow(clippy::type_complexity)]
    fn handle(
        &mut self,
        cmd: Cmd,
        acks: &mut Vec<(
            oneshot::Sender<Result<Record, Error>>,
            Result<Record, Error>,
        )>,
    ) -> Option<(bool, oneshot::Sender<()>)> {
        let now = self.now_ms();
        match cmd {
            Cmd::Inbound(from, msg) => {
                if let Err(e) = self.node.handle(&from, msg, now, wall_ms()) {
                    warn!(member = from, "replication message refused: {e}");
                }
            }
            Cmd::Publish {
                gateway_id,
                addresses,
                up,
                reply,
            } => {
                let r = self.node.publish(&gateway_id, addresses, up, wall_ms());
                acks.push((reply, r));
            }
            Cmd::Members(r) => {
                let _ = r.send(self.node.members(now));
            }
            Cmd::SetInfo(info, r) => {
                let _ = r.send(self.node.set_info(info, now));
            }
            Cmd::UpdateInfo(f, r) => {
                let _ = r.send(self.node.update_info(f, now));
            }
            Cmd::Own(r) => {
                let me = self.node.id().clone();
                let own = self.node.partition(&me).map_or_else(Vec::new, |p| {
                    p.entries
                        .values()
                        .filter(|e| e.record.up)
                        .map(|e| e.record.clone())
                        .collect()
                });
                let _ = r.send(own);
            }
            Cmd::View(r) => {
                let _ = r.send(self.node.view().clone());
            }
            Cmd::Admit { member, reply } => {
                let r = if self.node.add_member(&member) {
                    Ok(self.node.member_ids())
                } else {
                    Err(Refusal::ClusterFull { max: MAX_MEMBERS })
                };
                let _ = reply.send(r);
            }
            Cmd::AddPeer(p, r) => {
                let _ = r.send(self.node.add_member(&p));
            }
            Cmd::RemovePeer(p, r) => {
                self.node.remove_member(&p);
                let _ = r.send(());
            }
            Cmd::Leave(r) => {
                self.node.leave();
                return Some((true, r));
            }
            Cmd::Shutdown(r) => return Some((false, r)),
        }
        None
    }

    #[allow(clippy::type_complexity)]
    fn flush(
        &mut self,
        acks: Vec<(
            oneshot::Sender<Result<Record, Error>>,
            Result<Record, Error>,
        )>,
    ) -> Result<(), Error> {
        self.sync_links();
        // A push goes to every member as the same message: encode it once.
        let mut last: Option<(Message, Arc<Vec<u8>>)> = None;
        while let Some((to, msg)) = self.node.poll_transmit() {
            let Some((link, _)) = self.links.get(&to) else {
                continue;
            };
            let frame = match &last {
                Some((m, f)) if *m == msg => f.clone(),
                _ => {
                    let Ok(body) = serde_json::to_vec(&msg) else {
                        continue;
                    };
                    let Ok(n) = encode_len(&body) else {
                        continue;
                    };
                    let mut f = Vec::with_capacity(body.len() + 4);
                    f.extend_from_slice(&n);
                    f.extend_from_slice(&body);
                    let f = Arc::new(f);
                    last = Some((msg, f.clone()));
                    f
                }
            };
            if link.try_send(frame).is_err() {
                self.shared
                    .stats
                    .frames_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        // Pushes went out first: a change lost by a crash before its fsync was never
        // acknowledged, and the restarted member's new incarnation replaces its partition.
        let ops = self.node.take_store_ops();
        if (!ops.is_empty() || !acks.is_empty())
            && self.disk.send(StoreWork::Write(ops, acks)).is_err()
        {
            return Err(Error::Stopped);
        }
        while let Some(e) = self.node.poll_event() {
            match &e {
                Event::MemberUp(m) => {
                    info!(member = m, "ipsec-ddns member up");
                    if let Some((_, wake)) = self.links.get(m) {
                        wake.notify_one();
                    }
                }
                Event::MemberDown(m) => {
                    warn!(
                        member = m,
                        "ipsec-ddns member down: its records are withdrawn"
                    )
                }
                Event::MemberLeft(m) => info!(member = m, "ipsec-ddns member left"),
                _ => {}
            }
            let _ = self.events.send(e);
        }
        Ok(())
    }

    fn sync_links(&mut self) {
        let members = self.node.member_ids();
        self.links.retain(|m, _| members.contains(m));
        for m in members {
            if m == *self.node.id() || self.links.contains_key(&m) {
                continue;
            }
            let (tx, rx) = mpsc::channel(LINK_QUEUE);
            let wake = Arc::new(tokio::sync::Notify::new());
            tokio::spawn(link_task(
                m.clone(),
                rx,
                wake.clone(),
                self.client.clone(),
                self.shared.clone(),
            ));
            self.links.insert(m, (tx, wake));
        }
    }
}
