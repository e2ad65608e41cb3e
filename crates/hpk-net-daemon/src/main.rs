//! The `hpk-net-daemon` command: argument parsing and dispatch only.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hpk_net_daemon::client::{self, ClientConfig};
use hpk_net_daemon::server::{self, ServerConfig};
use hpk_net_daemon::stats;

/// Relays Ethernet frames between a tap device and a UNIX socket.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    /// Log filter, e.g. `debug` or `hpk_net_daemon=trace` (default: RUST_LOG, else info).
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,

    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Own the host-side tap and serve one container at a time (newest wins).
    Server(ServerConfig),
    /// Configure the container's tap and relay it to the server.
    Client(ClientConfig),
    /// Print a running server's counters as JSON.
    Stats {
        /// Path of the server's relay socket.
        #[arg(long)]
        socket: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    hpk_net_daemon::init_logging(cli.log_level.as_deref());
    match run(cli.mode) {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(err) => {
            eprintln!("hpk-net-daemon: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(mode: Mode) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(dispatch(mode))
}

async fn dispatch(mode: Mode) -> Result<i32> {
    match mode {
        Mode::Server(config) => server::run(config).await.map(|()| 0),
        Mode::Client(config) => client::run(config).await,
        Mode::Stats { socket } => {
            let snapshot = stats::query(&socket).await.with_context(|| {
                format!("ask the relay at {} for its counters", socket.display())
            })?;
            println!("{}", serde_json::to_string_pretty(&snapshot)?);
            Ok(0)
        }
    }
}
