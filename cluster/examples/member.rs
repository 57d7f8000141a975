//! One ipsec-ddns cluster member driven over stdin/stdout (see `cluster::tool`).
//!
//! `cargo run -p cluster --example member -- --self 127.0.0.1 --peer 127.0.0.2 \
//!     --secret mysecretpassword --domain vpn.example --data-dir /tmp/m1`

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("cluster=info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        let cfg = cluster::tool::parse_args(&args)?;
        cluster::tool::run_member(cfg).await
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            println!("error: {e}");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
