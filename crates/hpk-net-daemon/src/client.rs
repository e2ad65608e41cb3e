//! Client mode: inside the container, `tap0` and the relay's far end.
//!
//! The client configures `tap0` itself over netlink (address, MAC, MTU, link
//! up, default route), so an image needs no iproute2. It connects to the
//! server with a bounded wait (fail fast when no server is there), then,
//! once connected, reconnects without bound and with capped backoff, so a
//! restarted server finds its container again. With a command, the command
//! starts once the network is up and the relay lives exactly as long as it.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hpk_netconf::{IpNet, Ipv4Net, LinkInfo, MacAddr, Netlink};
use tokio::net::UnixStream;
use tokio::time::{Instant, sleep};
use tracing::{debug, info, warn};

use crate::child::Supervisor;
use crate::relay::{self, ConnectionEnd};
use crate::signals::StopSignals;
use crate::stats::Stats;
use crate::tap::Tap;
use crate::veth::DataPathMode;

/// First wait between connection attempts.
const BACKOFF_START: Duration = Duration::from_millis(5);
/// Longest wait between reconnection attempts.
const BACKOFF_CAP: Duration = Duration::from_millis(500);

/// Everything the client needs to know (also its command line).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientConfig {
    /// Path of the server's relay socket.
    #[arg(long, env = "HPK_SOCKET_PATH")]
    pub socket: PathBuf,
    /// Name of the tap to create in this network namespace.
    #[arg(long, default_value = "tap0")]
    pub tap: String,
    /// The container's address with its prefix, e.g. 10.244.3.2/24.
    #[arg(long, env = "HPK_IP")]
    pub address: Ipv4Net,
    /// The default gateway, e.g. 10.244.3.1.
    #[arg(long, env = "HPK_GATEWAY_IP")]
    pub gateway: Ipv4Addr,
    /// MTU of the tap.
    #[arg(long, env = "HPK_MTU")]
    pub mtu: Option<u32>,
    /// MAC address (default: 0a:58 followed by the IPv4 address).
    #[arg(long)]
    pub mac: Option<MacAddr>,
    /// How long to wait for the server at start, in milliseconds.
    #[arg(long = "connect-timeout-ms", value_name = "MS", default_value = "5000", value_parser = parse_millis)]
    pub connect_timeout: Duration,
    /// Data path to ask for: `auto` offers this network namespace so the
    /// server can wire a veth pair, and takes the relay when it cannot;
    /// `veth` fails without the pair; `relay` never offers.
    #[arg(long, value_enum, env = "HPK_DATA_PATH", default_value_t = DataPathMode::Auto)]
    pub data_path: DataPathMode,
    /// Command to run once the network is up; the client exits with its status.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

fn parse_millis(text: &str) -> Result<Duration> {
    Ok(Duration::from_millis(text.parse()?))
}

impl ClientConfig {
    /// The MAC to use: given, or derived from the address by convention.
    pub fn effective_mac(&self) -> MacAddr {
        self.mac
            .unwrap_or_else(|| MacAddr::from_ipv4(self.address.addr()))
    }
}

/// Runs the client; returns the exit status the process should end with.
pub async fn run(config: ClientConfig) -> Result<i32> {
    // Caught from the start, so a stop request during set-up is not lost.
    let stop = if config.command.is_empty() {
        Some(StopSignals::install()?)
    } else {
        None
    };
    let netlink = Netlink::open().context("open netlink socket")?;
    if let Some(existing) = netlink.link(&config.tap).await? {
        ensure_same_configuration(&netlink, &existing, &config).await?;
        info!(tap = %config.tap, "already configured by another client; not relaying twice");
        return exec_command(&config.command);
    }

    let tap = Tap::create(&config.tap)
        .with_context(|| format!("create {} (is /dev/net/tun available?)", config.tap))?;
    configure(&netlink, &config).await?;
    let stream = connect_bounded(&config.socket, config.connect_timeout).await?;
    info!(tap = %config.tap, address = %config.address, "network up");

    let stats = Stats::new();
    stats.connected();
    let relay = relay_forever(&tap, stream, &config.socket, &stats);
    if let Some(stop) = stop {
        return run_until_stopped(relay, stop).await;
    }
    let supervisor = Supervisor::install()?;
    tokio::select! {
        status = supervisor.run(&config.command) => status,
        _ = relay => unreachable!("the relay loop never returns"),
    }
}

/// Without a command, the client relays until SIGTERM or SIGINT.
async fn run_until_stopped(relay: impl Future<Output = ()>, stop: StopSignals) -> Result<i32> {
    let StopSignals {
        mut terminate,
        mut interrupt,
    } = stop;
    tokio::select! {
        _ = relay => unreachable!("the relay loop never returns"),
        _ = terminate.recv() => info!("SIGTERM: shutting down"),
        _ = interrupt.recv() => info!("SIGINT: shutting down"),
    }
    Ok(0)
}

/// Sets MAC, MTU and address on the new tap, brings it up, routes via the
/// gateway. The MAC goes first, while the link is still down.
async fn configure(netlink: &Netlink, config: &ClientConfig) -> Result<()> {
    let name = &config.tap;
    let link = netlink
        .link(name)
        .await?
        .with_context(|| format!("{name} vanished right after creation"))?;
    let mac = config.effective_mac();
    netlink
        .set_mac(link.index, mac)
        .await
        .with_context(|| format!("set mac {mac} on {name}"))?;
    if let Some(mtu) = config.mtu {
        netlink
            .set_mtu(link.index, mtu)
            .await
            .with_context(|| format!("set mtu {mtu} on {name}"))?;
    }
    netlink
        .add_address(link.index, IpNet::V4(config.address))
        .await
        .with_context(|| format!("add {} to {name}", config.address))?;
    netlink.set_up(link.index).await?;
    netlink
        .add_default_route(config.gateway, link.index)
        .await
        .with_context(|| format!("add default route via {}", config.gateway))?;
    Ok(())
}

/// Accepts an existing tap only when it already carries our configuration.
async fn ensure_same_configuration(
    netlink: &Netlink,
    link: &LinkInfo,
    config: &ClientConfig,
) -> Result<()> {
    let addresses = netlink.addresses(link.index).await?;
    let mac = config.effective_mac();
    if link.mac != Some(mac) || !addresses.contains(&IpNet::V4(config.address)) {
        bail!(
            "{} exists but is not configured as {} with mac {mac}; refusing to take it over",
            config.tap,
            config.address
        );
    }
    Ok(())
}

/// Replaces this process with the command, or exits 0 without one.
fn exec_command(command: &[OsString]) -> Result<i32> {
    let Some(program) = command.first() else {
        return Ok(0);
    };
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(program)
        .args(&command[1..])
        .exec();
    Err(err).with_context(|| format!("run {}", program.to_string_lossy()))
}

/// Connects, retrying while the server may still be starting.
async fn connect_bounded(socket: &Path, timeout: Duration) -> Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    let mut backoff = BACKOFF_START;
    loop {
        match UnixStream::connect(socket).await {
            Ok(stream) => return Ok(stream),
            Err(err) if Instant::now() + backoff < deadline => {
                debug!(%err, "relay server not there yet");
            }
            Err(err) => {
                return Err(err).with_context(|| {
                    format!(
                        "no relay server answered on {} within {timeout:?}; is the server running?",
                        socket.display()
                    )
                });
            }
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
}

/// Relays, and after every lost connection reconnects without bound.
async fn relay_forever(tap: &Tap, first: UnixStream, socket: &Path, stats: &Arc<Stats>) {
    let mut stream = first;
    loop {
        match relay::run(tap, &stream, stats, None).await {
            ConnectionEnd::Protocol(err) => {
                stats.protocol_error();
                warn!(%err, "server broke the framing; reconnecting");
            }
            end => info!(%end, "connection to the relay server lost; reconnecting"),
        }
        stream = reconnect(socket).await;
        stats.connected();
        info!("reconnected to the relay server");
    }
}

async fn reconnect(socket: &Path) -> UnixStream {
    let mut backoff = BACKOFF_START;
    loop {
        sleep(backoff).await;
        match UnixStream::connect(socket).await {
            Ok(stream) => return stream,
            Err(err) => debug!(%err, "relay server still away"),
        }
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
}
