//! Server mode: owns the host-side tap and serves one peer at a time.
//!
//! The server creates the tap, attaches it to the bridge, listens on the
//! relay socket and its control socket, and only then reports ready. A new
//! connection replaces the current one (newest wins), so a restarted
//! container side never waits for a dead peer. SIGTERM or SIGINT ends the
//! server: the sockets are unlinked and the tap goes with the process.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use hpk_netconf::{MacAddr, Netlink};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::codec::FrameReader;
use crate::fastpath::Policy;
use crate::filter::SourceFilter;
use crate::negotiate::{self, Offload};
use crate::negotiate::{Framing, Offer};
use crate::relay::{self, ConnectionEnd};
use crate::signals::StopSignals;
use crate::stats::{self, Stats};
use crate::tap::Tap;
use crate::veth::DataPathMode;
use crate::wiring::{self, Decision, FastPath};

/// Longest path a UNIX socket address holds (`sun_path` less its NUL).
pub const SUN_PATH_MAX: usize = 107;

/// Everything the server needs to know (also its command line).
#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// Path of the relay socket (a `.ctl` twin beside it reports counters).
    #[arg(long)]
    pub socket: PathBuf,
    /// Name of the tap to create.
    #[arg(long)]
    pub tap: String,
    /// Bridge to attach the tap to.
    #[arg(long)]
    pub bridge: Option<String>,
    /// MTU of the tap (use the bridge's, i.e. FLANNEL_MTU).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Transmit queue length of the tap, in frames.
    #[arg(long, default_value_t = 1000)]
    pub txqueuelen: u32,
    /// Hand the sockets to this user (and group), e.g. `1000:1000`.
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_owner)]
    pub socket_owner: Option<(u32, Option<u32>)>,
    /// Write one byte to this descriptor, and close it, once the socket accepts.
    #[arg(long, value_name = "FD")]
    pub ready_fd: Option<i32>,
    /// Forward to the tap only frames from this MAC (with `--allow-ip`).
    #[arg(long, value_name = "MAC", requires = "allow_ip")]
    pub allow_mac: Option<MacAddr>,
    /// Forward to the tap only IPv4 and ARP from this address, and IPv6 only
    /// from the MAC's link-local address (with `--allow-mac`).
    #[arg(long, value_name = "IPV4", requires = "allow_mac")]
    pub allow_ip: Option<Ipv4Addr>,
    /// Data path: `auto` wires a veth pair when the client offers its
    /// namespace and the kernel allows it, else relays; `veth` refuses
    /// clients it cannot wire; `relay` never wires.
    #[arg(long, value_enum, default_value_t = DataPathMode::Auto)]
    pub data_path: DataPathMode,
    /// Accept a client's offer of segmentation and checksum offloads
    /// (`off`: answer with plain framing).
    #[arg(long, value_enum, default_value_t = Offload::On)]
    pub offload: Offload,
}

impl ServerConfig {
    /// The source filter `--allow-mac` and `--allow-ip` ask for, if any.
    pub fn source_filter(&self) -> Option<SourceFilter> {
        let (mac, ip) = self.allow_mac.zip(self.allow_ip)?;
        Some(SourceFilter::new(mac.octets(), ip))
    }
}

/// Parses `UID[:GID]`, numeric only (a static binary has no user database).
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

/// The fast path's policy from the command line.
fn fast_policy(config: &ServerConfig) -> Policy {
    Policy {
        mode: config.data_path,
        allow: config.allow_mac.zip(config.allow_ip),
        mtu: config.mtu,
    }
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(config: ServerConfig) -> Result<()> {
    check_socket_path(&config.socket)?;
    // Take the descriptor first so it is closed on every early exit, which
    // a waiting parent sees as "failed before ready".
    // SAFETY: the caller passed this descriptor for us alone to write and close.
    let ready = config
        .ready_fd
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    clear_stale_socket(&config.socket).await?;
    let policy = fast_policy(&config);
    let guard = FastPath::start_guard(&policy, &config.tap);

    let tap = Tap::create(&config.tap).with_context(|| {
        format!(
            "create tap {} (is /dev/net/tun usable and the name free?)",
            config.tap
        )
    })?;
    let (mac, attach) = configure_tap(&config).await?;

    let mut listeners = Listeners::bind(&config)?;
    let stats = Stats::new();
    if let Some(control) = listeners.control.take() {
        tokio::spawn(stats::serve_control(control, stats.clone()));
    }
    if crate::killpoint::compiled_in() {
        tokio::spawn(crate::killpoint::watch_transfer(stats.clone()));
    }
    // Handlers first: whoever waits for ready may send SIGTERM right away.
    let stop = StopSignals::install()?;
    signal_ready(ready)?;
    info!(socket = %config.socket.display(), tap = %config.tap, "relay server ready");
    let filter = config.source_filter().map(Arc::new);
    if let (Some(mac), Some(ip)) = (config.allow_mac, config.allow_ip) {
        info!(%mac, %ip, "forwarding only frames from the container's own addresses");
    }

    let fast = FastPath::new(
        policy,
        &config.tap,
        config.bridge.clone(),
        stats.clone(),
        guard,
    );
    let peer = Peer {
        tap: Arc::new(tap),
        stats,
        filter,
        mac,
        offload: config.offload,
        fast: fast.clone(),
        attach: Arc::new(tokio::sync::Mutex::new(attach)),
    };
    let result = serve(&listeners.relay, peer, stop).await;
    fast.teardown().await;
    listeners.remove_files();
    result
}

/// Accepts connections until asked to stop; the newest peer always wins.
async fn serve(listener: &UnixListener, peer: Peer, stop: StopSignals) -> Result<()> {
    let StopSignals {
        mut terminate,
        mut interrupt,
    } = stop;
    let mut current: Option<JoinHandle<()>> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => { warn!(%err, "accept failed"); continue; }
                };
                if let Some(previous) = current.take() {
                    previous.abort();
                    let _ = previous.await;
                    info!("new peer replaces the current one");
                }
                peer.stats.connected();
                current = Some(tokio::spawn(peer.clone().serve(stream)));
            }
            _ = terminate.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = interrupt.recv() => { info!("SIGINT: shutting down"); break; }
        }
    }
    if let Some(peer) = current.take() {
        peer.abort();
        let _ = peer.await;
    }
    Ok(())
}

/// Everything one peer's connection shares with the server.
#[derive(Clone)]
struct Peer {
    tap: Arc<Tap>,
    stats: Arc<Stats>,
    filter: Option<Arc<SourceFilter>>,
    /// The tap's MAC, the source of the server's answers.
    mac: [u8; 6],
    offload: Offload,
    /// Decides veth offers, and holds the veth pair once wired.
    fast: Arc<FastPath>,
    /// Still to do before the first peer is relayed.
    attach: Arc<tokio::sync::Mutex<Option<TapAttach>>>,
}

impl Peer {
    /// Runs the hello, then relays until the connection ends.
    async fn serve(self, stream: UnixStream) {
        debug!("peer connected");
        negotiate::size_socket_buffers(&stream);
        let mut reader = relay::new_reader();
        let framing = match self.hello(&stream, &mut reader).await {
            Ok(None) => return,
            Ok(Some((framing, offer))) => {
                info!(
                    offered = offer,
                    vnet_header = framing.vnet_header,
                    offloads = format_args!("{:#x}", framing.offloads),
                    "framing agreed with the peer"
                );
                framing
            }
            Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                self.stats.protocol_error();
                warn!(%err, "dropping peer that broke the framing; still serving");
                return;
            }
            Err(err) => {
                info!(%err, "peer left during the hello");
                return;
            }
        };
        self.stats.negotiated(framing);
        let filter = self.filter.as_deref();
        let end = relay::run(
            &self.tap,
            &stream,
            &self.stats,
            filter,
            framing,
            &mut reader,
        );
        match end.await {
            ConnectionEnd::PeerClosed => info!("peer disconnected"),
            ConnectionEnd::Protocol(err) => {
                self.stats.protocol_error();
                warn!(%err, "dropping peer that broke the framing; still serving");
            }
            ConnectionEnd::Io(err) => info!(%err, "peer connection failed"),
        }
    }
}

impl Peer {
    /// The hello: a plain peer or an offer for the relay gives the framing
    /// to relay with (and whether there was an offer); an offer the fast
    /// path wires or refuses is answered here and ends the connection.
    async fn hello(
        &self,
        stream: &UnixStream,
        reader: &mut FrameReader,
    ) -> std::io::Result<Option<(Framing, bool)>> {
        let Some(Offer { hello, netns }) = negotiate::read_offer(stream, reader).await? else {
            self.attach_tap().await?;
            return negotiate::plain(&self.tap, reader).map(|framing| Some((framing, false)));
        };
        match self.fast.decide(&hello, netns).await {
            Decision::Relay => {
                self.attach_tap().await?;
                let offload = self.offload.is_on();
                let answer =
                    negotiate::answer_offer(stream, &self.tap, self.mac, offload, reader, &hello);
                Ok(Some((answer.await?, true)))
            }
            decision => {
                wiring::answer(stream, self.mac, &decision).await?;
                self.fast.settle().await;
                Ok(None)
            }
        }
    }

    /// Puts the tap on the bridge and up, once, before it relays.
    async fn attach_tap(&self) -> std::io::Result<()> {
        let mut attach = self.attach.lock().await;
        if let Some(pending) = attach.as_ref() {
            let netlink = Netlink::open().map_err(std::io::Error::other)?;
            pending
                .apply(&netlink)
                .await
                .map_err(std::io::Error::other)?;
            *attach = None;
        }
        Ok(())
    }
}

/// Sets MTU, queue length and bridge on the tap and brings it up; returns
/// its MAC.
async fn configure_tap(config: &ServerConfig) -> Result<([u8; 6], Option<TapAttach>)> {
    let netlink = Netlink::open().context("open netlink socket")?;
    let link = netlink
        .link(&config.tap)
        .await?
        .with_context(|| format!("tap {} vanished right after creation", config.tap))?;
    if let Some(mtu) = config.mtu {
        netlink
            .set_mtu(link.index, mtu)
            .await
            .with_context(|| format!("set mtu {mtu} on {}", config.tap))?;
    }
    netlink
        .set_txqueuelen(link.index, config.txqueuelen)
        .await?;
    let master = match &config.bridge {
        Some(bridge) => Some(
            netlink
                .link(bridge)
                .await?
                .with_context(|| format!("bridge {bridge} does not exist"))?
                .index,
        ),
        None => None,
    };
    let attach = TapAttach {
        tap: link.index,
        master,
    };
    let mac = link.mac.map(|mac| mac.octets()).unwrap_or_default();
    // A server that may wire a veth pair leaves its tap down and off the
    // bridge until a peer is relayed: the veth then takes the tap's name
    // by a cheap rename of the unused tap instead of its deletion, which
    // waits for the kernel's grace period on the container's start path.
    // Only a server that can ever wire defers: the relay tests' plain peer
    // whose first frame is an ARP request got no answer when the tap came
    // up just before that frame was written (cause not found yet; a
    // container's ARP is retried, a test's single frame is not), so a
    // server that can only relay keeps attaching at start as it always did.
    let may_wire = config.data_path != DataPathMode::Relay && config.source_filter().is_some();
    if !may_wire {
        attach.apply(&netlink).await?;
        return Ok((mac, None));
    }
    Ok((mac, Some(attach)))
}

/// Putting the tap on the bridge and up.
struct TapAttach {
    tap: u32,
    master: Option<u32>,
}

impl TapAttach {
    async fn apply(&self, netlink: &Netlink) -> Result<()> {
        if let Some(master) = self.master {
            netlink
                .set_master(self.tap, master)
                .await
                .context("attach the tap to the bridge")?;
        }
        netlink.set_up(self.tap).await?;
        Ok(())
    }
}

/// The relay socket and its control socket, unlinked again on shutdown.
struct Listeners {
    relay: UnixListener,
    control: Option<UnixListener>,
    paths: [PathBuf; 2],
}

impl Listeners {
    fn bind(config: &ServerConfig) -> Result<Self> {
        let control_path = stats::control_path(&config.socket);
        let relay = bind_private(&config.socket, config.socket_owner)?;
        let control = match bind_private(&control_path, config.socket_owner) {
            Ok(listener) => listener,
            Err(err) => {
                let _ = fs::remove_file(&config.socket);
                return Err(err);
            }
        };
        Ok(Self {
            relay: UnixListener::from_std(relay)?,
            control: Some(UnixListener::from_std(control)?),
            paths: [config.socket.clone(), control_path],
        })
    }

    fn remove_files(&self) {
        for path in &self.paths {
            if let Err(err) = fs::remove_file(path) {
                warn!(path = %path.display(), %err, "could not remove socket file");
            }
        }
    }
}

/// Binds a listening socket readable and writable by its owner alone.
fn bind_private(
    path: &Path,
    owner: Option<(u32, Option<u32>)>,
) -> Result<std::os::unix::net::UnixListener> {
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("listen on {}", path.display()))?;
    listener.set_nonblocking(true)?;
    let cleanup = |err: anyhow::Error| {
        let _ = fs::remove_file(path);
        err
    };
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("make {} private", path.display()))
        .map_err(cleanup)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), gid)
            .with_context(|| format!("hand {} to uid {uid}", path.display()))
            .map_err(cleanup)?;
    }
    Ok(listener)
}

/// Refuses paths the kernel would truncate, before anything is created.
pub fn check_socket_path(path: &Path) -> Result<()> {
    let control = stats::control_path(path);
    let len = control.as_os_str().len();
    if len > SUN_PATH_MAX {
        bail!(
            "socket path {} is too long: with its .ctl twin it needs {len} bytes, a UNIX \
             socket holds {SUN_PATH_MAX}; choose a shorter directory",
            path.display()
        );
    }
    Ok(())
}

/// Removes a socket file left by a dead server; refuses to steal a live one.
///
/// Liveness is asked of the control socket: a connection to the relay socket
/// itself would displace the live server's peer (newest wins).
async fn clear_stale_socket(path: &Path) -> Result<()> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    if UnixStream::connect(stats::control_path(path)).await.is_ok() {
        bail!("another relay is serving {} already", path.display());
    }
    debug!(path = %path.display(), "removing stale socket");
    fs::remove_file(path).with_context(|| format!("remove stale socket {}", path.display()))?;
    let _ = fs::remove_file(stats::control_path(path));
    Ok(())
}

fn signal_ready(ready: Option<OwnedFd>) -> Result<()> {
    if let Some(fd) = ready {
        let mut file = fs::File::from(fd);
        file.write_all(b"1").context("write to --ready-fd")?;
    }
    Ok(())
}
