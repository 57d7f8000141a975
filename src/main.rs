//! headend: clustered IKEv2/IPsec VPN head-end. The CLI.
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use headend::config::{parse_duration, Config};
use headend::{bench, logging, peer, run, services};

#[derive(Parser)]
#[command(
    name = "headend",
    version,
    about = "Clustered IKEv2/IPsec VPN head-end"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate a configuration file; prints a one-line summary or the bad key and line.
    CheckConfig { file: PathBuf },
    /// Run the head-end (IKEv2 responder). Without --config: a demo responder on
    /// 127.0.0.1:50500/54500, PSK "headend-demo-psk", pool 10.99.0.0/16.
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Operator control socket (mode 0600).
        #[arg(long, default_value = headend::control::DEFAULT_SOCKET)]
        control: PathBuf,
        /// Run without the control socket.
        #[arg(long)]
        no_control: bool,
        /// Serve Prometheus metrics over HTTP here (e.g. 127.0.0.1:9090); overrides
        /// `[metrics] listen`.
        #[arg(long)]
        metrics: Option<SocketAddr>,
    },
    /// `set service ipsec-ddns self|peer|secret|domain|enable ...` (seed 003 ch. 4).
    Set(CtlArgs),
    /// `delete service ipsec-ddns ...`.
    Delete(CtlArgs),
    /// Validate and save the pending `set`/`delete` changes.
    Commit(CtlArgs),
    /// `show service ipsec-ddns`, `show vpn ipsec sa [detail]`, `show dns records`, `show cluster`,
    /// `show cluster statistics` (every member's figures).
    Show(CtlArgs),
    /// `rekey vpn ipsec sa GATEWAY-ID`: rekey that tunnel's CHILD SAs now
    /// (CREATE_CHILD_SA, RFC 7296 2.8), like `swanctl --rekey --child`.
    Rekey(CtlArgs),
    /// Run peer routers (IKEv2 initiators) with connect-one failover over the head-ends.
    Peer {
        #[arg(long)]
        config: PathBuf,
        /// Simulate N routers from one process (identities <id-prefix>1..N).
        #[arg(long)]
        count: Option<usize>,
        #[arg(long)]
        id_prefix: Option<String>,
        /// Stop after this long (e.g. 30s); default: until SIGTERM/SIGINT.
        #[arg(long, value_parser = duration_arg)]
        duration: Option<Duration>,
        /// Serve Prometheus metrics over HTTP here (e.g. 127.0.0.1:9091); overrides
        /// `[metrics] listen`.
        #[arg(long)]
        metrics: Option<SocketAddr>,
    },
    /// The newcomer's first command: a three-member cluster on loopback, thirty routers,
    /// the busiest member killed, failover followed in DNS; prints p50/p99/max.
    Demo {
        #[arg(long, default_value_t = 30)]
        routers: usize,
        /// Keep the scratch directory (configs, member logs).
        #[arg(long)]
        keep: bool,
    },
    /// Cluster sizing, seed 003 ch. 3: peers per member, minimum members, members to
    /// tolerate --protect failures.
    Plan {
        /// num_peers: routers in total.
        #[arg(long)]
        peers: u64,
        /// peer_thru_avg: average Mbit/s one router needs.
        #[arg(long)]
        peer_mbps: f64,
        /// ACM_thru_max: Mbit/s one member sustains (e.g. from BENCHMARKS.md).
        #[arg(
            long,
            required_unless_present = "measured",
            conflicts_with = "measured"
        )]
        member_mbps: Option<f64>,
        /// Measure this host's ESP (AES-256-GCM) encryption rate on one core instead.
        #[arg(long)]
        measured: bool,
        /// ACM_protect: members that may fail at the same time.
        #[arg(long, default_value_t = 1)]
        protect: u64,
    },
    /// Print the gateway ID (DNS label) a router with this identity gets (seed 003 ch. 4).
    GatewayId { identity: String },
    /// Load generators.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Open N IKE SAs against a responder and report setups/s and p50/p99 latency.
    Ike {
        #[arg(long)]
        target: SocketAddr,
        #[arg(short = 'n', default_value_t = 1000)]
        n: usize,
        #[arg(short = 'c', default_value_t = 50)]
        concurrency: usize,
        #[arg(long, default_value = "headend-demo-psk")]
        psk: String,
        /// The responder's NAT-T port (only used if NAT is detected).
        #[arg(long, default_value_t = 4500)]
        natt_port: u16,
        #[arg(long, default_value = "aes256gcm16-prfsha256-x25519")]
        proposal: String,
        #[arg(long, default_value = "aes256gcm16")]
        esp: String,
        #[arg(long, default_value = "bench-")]
        id_prefix: String,
        /// Per-setup timeout.
        #[arg(long, value_parser = duration_arg, default_value = "10s")]
        timeout: Duration,
        /// Local address to send from.
        #[arg(long, default_value = "0.0.0.0")]
        bind: IpAddr,
        /// Local UDP source ports to spread the IKE SAs over.
        #[arg(long, default_value_t = 1)]
        sockets: usize,
        /// Delete each IKE SA once it is established.
        #[arg(long)]
        delete: bool,
        /// Parallel generator endpoints (one task each).
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
}

#[derive(clap::Args)]
struct CtlArgs {
    /// The daemon's control socket.
    #[arg(long, default_value = headend::control::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    words: Vec<String>,
}

fn control(verb: &str, a: CtlArgs) -> ExitCode {
    let mut words = vec![verb.to_string()];
    words.extend(a.words);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    match rt.block_on(headend::control::request(&a.socket, &words)) {
        Ok((code, text)) => {
            if code == 0 {
                print!("{text}");
            } else {
                eprint!("{text}");
            }
            ExitCode::from(code)
        }
        Err(e) => fail(e),
    }
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| format!("invalid duration \"{s}\" (e.g. 500ms, 30s, 10m)"))
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

fn load(path: &Path) -> Result<Config, headend::Error> {
    Config::load(path)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { file } => {
            let name = file.display().to_string();
            let cfg = match load(&file) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let checked = if cfg.peer.is_some() {
                cfg.validate_peer(&name).map(|_| ())
            } else {
                cfg.validate_responder(&name)
            };
            match checked {
                Ok(()) => {
                    println!("{}: {}", name, cfg.summary());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Cmd::Demo { routers, keep } => {
            let exe = match std::env::current_exe() {
                Ok(e) => e,
                Err(e) => return fail(e),
            };
            let dir = std::env::temp_dir().join(format!("headend-demo-{}", std::process::id()));
            logging::init(&headend::config::LogSection {
                level: "error".into(),
                ..Default::default()
            });
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => return fail(e),
            };
            let opts = headend::demo::DemoOptions {
                routers,
                exe,
                dir: dir.clone(),
                phase_timeout: Duration::from_secs(45),
            };
            let r = rt.block_on(headend::demo::run(&opts));
            if !keep && matches!(&r, Ok(s) if s.ok()) {
                let _ = std::fs::remove_dir_all(&dir);
            }
            match r {
                Ok(s) if s.ok() => ExitCode::SUCCESS,
                Ok(_) => ExitCode::from(1),
                Err(e) => fail(e),
            }
        }
        Cmd::Plan {
            peers,
            peer_mbps,
            member_mbps,
            measured,
            protect,
        } => {
            let member_mbps = match (member_mbps, measured) {
                (Some(m), _) => m,
                (None, _) => {
                    let m = headend::plan::measure_member_mbps(Duration::from_secs(1)).floor();
                    println!("measured member throughput (ESP AES-256-GCM, 1400-byte packets, one core): {m:.0} Mbit/s");
                    m
                }
            };
            let input = headend::plan::PlanInput {
                peers,
                peer_mbps,
                member_mbps,
                protect,
            };
            match input.plan() {
                Ok(p) => {
                    println!("{}", p.report(&input));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Cmd::GatewayId { identity } => {
            let (id, treatment) = ddns::GatewayId::from_identity(identity.as_bytes());
            println!("{id}");
            if treatment.needs_log() {
                eprintln!("note: {treatment:?}: the identity does not sanitize to a plain label");
            }
            ExitCode::SUCCESS
        }
        Cmd::Set(a) => control("set", a),
        Cmd::Delete(a) => control("delete", a),
        Cmd::Commit(a) => control("commit", a),
        Cmd::Show(a) => control("show", a),
        Cmd::Rekey(a) => control("rekey", a),
        Cmd::Run {
            config,
            control,
            no_control,
            metrics,
        } => {
            let cfg = match &config {
                Some(p) => match load(p) {
                    Ok(c) => c,
                    Err(e) => return fail(e),
                },
                None => Config::builtin(),
            };
            let name = config
                .as_ref()
                .map_or("<built-in>".to_string(), |p| p.display().to_string());
            if let Err(e) = cfg.validate_responder(&name) {
                return fail(e);
            }
            logging::init(&cfg.log);
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => return fail(e),
            };
            rt.block_on(async {
                let s = match services::start(&cfg).await {
                    Ok(s) => s,
                    Err(e) => return fail(e),
                };
                if config.is_none() {
                    eprintln!(
                        "headend: demo responder on {:?} (NAT-T {:?}), PSK \"headend-demo-psk\", pool 10.99.0.0/16",
                        s.daemon.ike_addrs, s.daemon.natt_addrs
                    );
                }
                let ctl = headend::control::Control::new(config.clone());
                let listener = if no_control {
                    None
                } else {
                    match headend::control::bind(&control) {
                        Ok(l) => Some(l),
                        Err(e) => {
                            tracing::warn!(socket = %control.display(), error = %e, "control socket not available");
                            None
                        }
                    }
                };
                let metrics_addr = metrics.or(cfg.metrics.as_ref().map(|m| m.listen));
                let metrics_listener = match metrics_addr {
                    Some(a) => match tokio::net::TcpListener::bind(a).await {
                        Ok(l) => {
                            tracing::info!(listen = %a, "metrics served at /metrics");
                            Some(l)
                        }
                        Err(e) => return fail(format!("metrics: cannot listen on {a}: {e}")),
                    },
                    None => None,
                };
                // READY=1 once everything a client or the supervisor reaches is bound: IKE,
                // DNS and the cluster (services::start), the control socket and /metrics.
                let notifier = headend::notify::Notifier::from_env();
                if let Some(n) = &notifier {
                    n.ready();
                }
                let bound = listener.is_some();
                let ctl_task = async {
                    match listener {
                        Some(l) => headend::control::serve(l, &ctl, &s).await,
                        None => std::future::pending().await,
                    }
                };
                let metrics_task = async {
                    match metrics_listener {
                        Some(l) => headend::metrics::serve(l, &s).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = run::wait_for_signal() => {}
                    _ = ctl_task => {}
                    _ = metrics_task => {}
                    // This member's figures to the cluster (the cluster-wide view).
                    _ = headend::metrics::share(&s) => {}
                }
                if bound {
                    let _ = std::fs::remove_file(&control);
                }
                if let Some(n) = &notifier {
                    n.stopping();
                }
                tracing::info!("signal received; deleting IKE SAs");
                s.shutdown().await;
                ExitCode::SUCCESS
            })
        }
        Cmd::Peer {
            config,
            count,
            id_prefix,
            duration,
            metrics,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            if let Err(e) = cfg.validate_peer(&config.display().to_string()) {
                return fail(e);
            }
            logging::init(&cfg.log);
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => return fail(e),
            };
            rt.block_on(async {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let printer = tokio::spawn(async move {
                    use std::io::Write;
                    while let Some(e) = rx.recv().await {
                        let line = match e {
                            peer::PeerEvent::Up {
                                identity,
                                headend,
                                vips,
                                ..
                            } => {
                                let v: Vec<String> = vips.iter().map(|v| v.to_string()).collect();
                                let gw = headend::event::gateway_id_for(&identity, None);
                                format!(
                                    "up {identity} via {headend} vip {} gateway-id {gw}",
                                    v.join(",")
                                )
                            }
                            peer::PeerEvent::Moving {
                                identity,
                                from,
                                to,
                                reason,
                                ..
                            } => {
                                format!("move {identity} from {from} to {to}: {reason}")
                            }
                        };
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                    }
                });
                let opts = peer::PeerOptions {
                    count,
                    id_prefix,
                    duration,
                    metrics,
                };
                let r = peer::run(&cfg, opts, tx).await;
                let _ = printer.await;
                match r {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(e),
                }
            })
        }
        Cmd::Bench {
            what:
                BenchCmd::Ike {
                    target,
                    n,
                    concurrency,
                    psk,
                    natt_port,
                    proposal,
                    esp,
                    id_prefix,
                    timeout,
                    bind,
                    sockets,
                    delete,
                    workers,
                },
        } => {
            logging::init(&headend::config::LogSection {
                level: "warn".into(),
                ..Default::default()
            });
            let o = bench::BenchOptions {
                target,
                natt_port,
                n,
                concurrency,
                psk,
                proposal,
                esp_proposal: esp,
                id_prefix,
                timeout,
                bind,
                sockets,
                delete,
                workers,
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => return fail(e),
            };
            match rt.block_on(bench::run(&o)) {
                Ok(r) => {
                    println!("{}", r.summary(&o));
                    if r.ok == 0 {
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => fail(e),
            }
        }
    }
}
