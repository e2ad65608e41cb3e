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
use crate::codec::FrameReader;
use crate::negotiate::{self, Framing, Offload};
use crate::relay::{self, ConnectionEnd};
use crate::signals::StopSignals;
use crate::stats::Stats;
use crate::tap::Tap;
use crate::veth::{self, ContainerSide, DataPathMode};
use crate::wiring::{self, Attempt};

/// First wait between connection attempts.
const BACKOFF_START: Duration = Duration::from_millis(5);
/// Longest wait between reconnection attempts.
const BACKOFF_CAP: Duration = Duration::from_millis(500);
/// Transmit queue of tap0, in frames.
const TXQUEUELEN: u32 = 1000;

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
    /// Offer segmentation and checksum offloads to the server (`off`:
    /// plain framing only).
    #[arg(long, env = "HPK_OFFLOAD", value_enum, default_value_t = Offload::On)]
    pub offload: Offload,
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
    if offers_veth(&config) && fast_path(&config).await? {
        info!(tap = %config.tap, address = %config.address, "network up: the server wired a veth pair");
        return match stop {
            Some(stop) => run_until_stopped(std::future::pending(), stop).await,
            None => exec_command(&config.command),
        };
    }

    let tap = Tap::create(&config.tap)
        .with_context(|| format!("create {} (is /dev/net/tun available?)", config.tap))?;
    configure(&netlink, &config).await?;
    let stream = connect_bounded(&config.socket, config.connect_timeout).await?;
    let link = Link {
        tap: &tap,
        socket: &config.socket,
        mac: config.effective_mac().octets(),
        offload: config.offload,
    };
    let first = link
        .negotiate(stream)
        .await
        .context("agree on the framing with the relay server")?;
    info!(tap = %config.tap, address = %config.address, "network up");

    let stats = Stats::new();
    stats.connected();
    stats.negotiated(first.framing);
    let relay = link.relay_forever(first, &stats);
    if let Some(stop) = stop {
        return run_until_stopped(relay, stop).await;
    }
    let supervisor = Supervisor::install()?;
    tokio::select! {
        status = supervisor.run(&config.command) => status,
        _ = relay => unreachable!("the relay loop never returns"),
    }
}

/// Whether to offer the fast path: asked for, and under the name the
/// server gives the container's end.
fn offers_veth(config: &ClientConfig) -> bool {
    config.data_path != DataPathMode::Relay && config.tap == veth::CONTAINER_LINK
}

/// Offers this namespace on a connection of its own; `true` when the
/// server wired the veth pair, `false` when the relay is to be set up.
async fn fast_path(config: &ClientConfig) -> Result<bool> {
    let stream = connect_bounded(&config.socket, config.connect_timeout).await?;
    let side = ContainerSide {
        address: config.address,
        gateway: config.gateway,
        mac: config.effective_mac(),
        // The server puts its bridge's MTU in force when it has one.
        mtu: config.mtu.unwrap_or(1500),
    };
    let attempt = wiring::offer(stream, config.data_path, &side)
        .await
        .context("offer the fast path to the relay server")?;
    match attempt {
        Attempt::Wired => Ok(true),
        Attempt::Refused(reason) => bail!("the relay server refused the connection: {reason}"),
        Attempt::Relay if config.data_path == DataPathMode::Veth => bail!(
            "the relay server answered with the relay, and --data-path veth refuses it \
             (run the server with --data-path auto or veth, and --allow-mac/--allow-ip)"
        ),
        Attempt::Relay => {
            debug!("the relay server relays; making the tap");
            Ok(false)
        }
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
    // A tap's default queue (500 frames) overflows in bursts while the
    // relay is busy writing to the socket; the server's tap has the same.
    netlink
        .set_txqueuelen(link.index, TXQUEUELEN)
        .await
        .with_context(|| format!("set txqueuelen {TXQUEUELEN} on {name}"))?;
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

/// The client's side of the relay: its tap and how it reaches the server.
struct Link<'a> {
    tap: &'a Tap,
    socket: &'a Path,
    mac: [u8; 6],
    offload: Offload,
}

/// One connection with its agreement and its receive buffer.
struct Connection {
    stream: UnixStream,
    framing: Framing,
    reader: FrameReader,
}

impl Link<'_> {
    /// Runs the hello on a fresh stream and sets the tap's offloads to
    /// match, before any frame is relayed.
    async fn negotiate(&self, stream: UnixStream) -> std::io::Result<Connection> {
        negotiate::size_socket_buffers(&stream);
        let mut reader = relay::new_reader();
        let framing = negotiate::client(
            &stream,
            self.tap,
            self.mac,
            self.offload.is_on(),
            &mut reader,
        )
        .await?;
        info!(
            vnet_header = framing.vnet_header,
            offloads = format_args!("{:#x}", framing.offloads),
            "framing agreed with the relay server"
        );
        Ok(Connection {
            stream,
            framing,
            reader,
        })
    }

    /// Relays, and after every lost connection reconnects without bound,
    /// negotiating again each time.
    async fn relay_forever(&self, first: Connection, stats: &Arc<Stats>) {
        let mut connection = first;
        loop {
            let Connection {
                stream,
                framing,
                reader,
            } = &mut connection;
            match relay::run(self.tap, stream, stats, None, *framing, reader).await {
                ConnectionEnd::Protocol(err) => {
                    stats.protocol_error();
                    warn!(%err, "server broke the framing; reconnecting");
                }
                end => info!(%end, "connection to the relay server lost; reconnecting"),
            }
            connection = self.reconnect().await;
            stats.connected();
            stats.negotiated(connection.framing);
            info!("reconnected to the relay server");
        }
    }

    async fn reconnect(&self) -> Connection {
        let mut backoff = BACKOFF_START;
        loop {
            sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_CAP);
            let stream = match UnixStream::connect(self.socket).await {
                Ok(stream) => stream,
                Err(err) => {
                    debug!(%err, "relay server still away");
                    continue;
                }
            };
            match self.negotiate(stream).await {
                Ok(connection) => return connection,
                Err(err) => debug!(%err, "hello with the relay server failed"),
            }
        }
    }
}
