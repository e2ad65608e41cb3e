//! The `hpk-net-daemon` command: argument parsing and dispatch only.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use hpk_net_daemon::cli::{Cli, Mode};
use hpk_net_daemon::{client, server, stats};

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
