//! hpk-net-daemon's command line, as a library so `cargo xtask dist` can
//! write man pages and shell completions from the same definition.

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use crate::client::ClientConfig;
use crate::server::ServerConfig;

/// Relays Ethernet frames between a tap device and a UNIX socket.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter, e.g. `debug` or `hpk_net_daemon=trace` (default: RUST_LOG, else info).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub mode: Mode,
}

/// What this process is: the bubble side, the container side, or a query.
#[derive(Subcommand)]
pub enum Mode {
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

/// The clap definition of `hpk-net-daemon`, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}
