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
    match cluster::tool::run_member_blocking(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            println!("error: {e}");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
