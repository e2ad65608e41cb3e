//! The `hpk-net-daemon` command: argument parsing and dispatch only.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hpk_net_daemon::client::{self, ClientConfig};
use hpk_net_daemon::server::{self, ServerConfig};
use hpk_net_daemon::stats;
use hpk_netconf::{Ipv4Net, MacAddr};

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
    Server {
        /// Path of the relay socket (a `.ctl` twin beside it reports counters).
        #[arg(long)]
        socket: PathBuf,
        /// Name of the tap to create.
        #[arg(long)]
        tap: String,
        /// Bridge to attach the tap to.
        #[arg(long)]
        bridge: Option<String>,
        /// MTU of the tap (use the bridge's, i.e. FLANNEL_MTU).
        #[arg(long)]
        mtu: Option<u32>,
        /// Transmit queue length of the tap, in frames.
        #[arg(long, default_value_t = 1000)]
        txqueuelen: u32,
        /// Hand the sockets to this user (and group), e.g. `1000:1000`.
        #[arg(long, value_name = "UID[:GID]", value_parser = parse_owner)]
        socket_owner: Option<(u32, Option<u32>)>,
        /// Write one byte to this descriptor, and close it, once the socket accepts.
        #[arg(long, value_name = "FD")]
        ready_fd: Option<i32>,
    },
    /// Configure the container's tap and relay it to the server.
    Client {
        /// Path of the server's relay socket.
        #[arg(long, env = "HPK_SOCKET_PATH")]
        socket: PathBuf,
        /// Name of the tap to create in this network namespace.
        #[arg(long, default_value = "tap0")]
        tap: String,
        /// The container's address with its prefix, e.g. 10.244.3.2/24.
        #[arg(long, env = "HPK_IP")]
        address: Ipv4Net,
        /// The default gateway, e.g. 10.244.3.1.
        #[arg(long, env = "HPK_GATEWAY_IP")]
        gateway: Ipv4Addr,
        /// MTU of the tap.
        #[arg(long, env = "HPK_MTU")]
        mtu: Option<u32>,
        /// MAC address (default: 0a:58 followed by the IPv4 address).
        #[arg(long)]
        mac: Option<MacAddr>,
        /// How long to wait for the server at start, in milliseconds.
        #[arg(long, default_value_t = 5000, value_name = "MS")]
        connect_timeout_ms: u64,
        /// Command to run once the network is up; the client exits with its status.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<OsString>,
    },
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
        Mode::Server {
            socket,
            tap,
            bridge,
            mtu,
            txqueuelen,
            socket_owner,
            ready_fd,
        } => {
            let config = ServerConfig {
                socket,
                tap,
                bridge,
                mtu,
                txqueuelen,
                socket_owner,
                ready_fd,
            };
            server::run(config).await.map(|()| 0)
        }
        Mode::Client {
            socket,
            tap,
            address,
            gateway,
            mtu,
            mac,
            connect_timeout_ms,
            command,
        } => {
            let connect_timeout = Duration::from_millis(connect_timeout_ms);
            let config = ClientConfig {
                socket,
                tap,
                address,
                gateway,
                mtu,
                mac,
                connect_timeout,
                command,
            };
            client::run(config).await
        }
        Mode::Stats { socket } => {
            let snapshot = stats::query(&socket).await.with_context(|| {
                format!("ask the relay at {} for its counters", socket.display())
            })?;
            println!("{}", serde_json::to_string_pretty(&snapshot)?);
            Ok(0)
        }
    }
}

fn parse_owner(text: &str) -> Result<(u32, Option<u32>)> {
    let (uid, gid) = match text.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (text, None),
    };
    let Ok(uid) = uid.parse() else {
        bail!("{uid:?} is not a numeric uid");
    };
    let gid = match gid.map(str::parse).transpose() {
        Ok(gid) => gid,
        Err(_) => bail!("{text:?}: the gid is not numeric"),
    };
    Ok((uid, gid))
}
