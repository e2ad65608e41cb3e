//! One setup measured end to end: its namespaces, its data path between
//! bubble and container (veth pair or relay), and the figures it yields.
//!
//! Every setup gets fresh namespaces, so one setup's leftovers (queues,
//! neighbour entries, a wedged daemon) cannot colour the next. The rig owns
//! everything it starts; dropping it kills its processes by pid and then
//! deletes its namespaces, on success, on error and after Ctrl-C alike.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hpk_testbed::{Netns, Proc};

use super::Bench;
use super::measure::{self, Memory, Rtt, Sample};
use crate::interrupt;

const GATEWAY: &str = "10.99.9.1";
const CONTAINER_CIDR: &str = "10.99.9.2/24";
/// An explicit bridge MAC, as hpktainer gives hpk-bridge: a bridge without
/// one takes its lowest port's, which changes when a relay restarts.
const BRIDGE_MAC: &str = "0a:58:0a:63:09:01";
/// The server's tap in the bubble, and the client's (its default name).
const SERVER_TAP: &str = "hpkb0";
const CLIENT_TAP: &str = "tap0";
/// Pings per round-trip series.
const PINGS: u32 = 200;

/// How bubble and container are joined.
#[derive(Debug, Clone)]
pub enum DataPath {
    /// A veth pair: one end on the bridge, the other in the container.
    Veth,
    /// The relay: server tap on the bridge, client tap in the container,
    /// each daemon started with its extra arguments.
    Relay {
        server_args: Vec<String>,
        client_args: Vec<String>,
    },
}

impl DataPath {
    /// The relay with its default flags.
    pub fn relay() -> Self {
        Self::Relay {
            server_args: Vec::new(),
            client_args: Vec::new(),
        }
    }

    /// The relay forced to plain framing on both sides (no offloads).
    pub fn relay_plain() -> Self {
        let off = vec!["--offload".to_owned(), "off".to_owned()];
        Self::Relay {
            server_args: off.clone(),
            client_args: off,
        }
    }
}

/// One thing to measure.
#[derive(Debug, Clone)]
pub struct Setup {
    pub name: String,
    pub path: DataPath,
    /// MTU of the bridge and of every interface on the path.
    pub mtu: u32,
    /// Whether segmentation and checksum offloads are on along the path
    /// (veth has them by default; the relay when it negotiates them).
    pub offload: bool,
}

impl Setup {
    pub fn new(name: &str, path: DataPath, mtu: u32) -> Self {
        let offload = match &path {
            DataPath::Veth => true,
            DataPath::Relay {
                server_args,
                client_args,
            } => !server_args
                .iter()
                .chain(client_args)
                .collect::<Vec<_>>()
                .windows(2)
                .any(|pair| pair[0] == "--offload" && pair[1] == "off"),
        };
        Self {
            name: name.to_owned(),
            path,
            mtu,
            offload,
        }
    }

    pub fn is_baseline(&self) -> bool {
        matches!(self.path, DataPath::Veth)
    }
}

/// Which way the bulk data flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ContainerToBubble,
    BubbleToContainer,
}

impl Direction {
    pub const ALL: [Self; 2] = [Self::ContainerToBubble, Self::BubbleToContainer];

    pub fn label(self) -> &'static str {
        match self {
            Self::ContainerToBubble => "container→bubble",
            Self::BubbleToContainer => "bubble→container",
        }
    }
}

/// CPU seconds each relay daemon spent during one direction's runs.
#[derive(Debug, Clone, Copy)]
pub struct DaemonCpu {
    pub server: f64,
    pub client: f64,
}

/// One direction's throughput runs.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub direction: Direction,
    pub samples: Vec<Sample>,
    /// `None` for veth: its work is the kernel's, not any process's.
    pub cpu: Option<DaemonCpu>,
}

/// What only the relay has: its daemons' memory after the load, the
/// server's own counters, and the kernel's drop counters on both taps.
#[derive(Debug, Clone)]
pub struct RelayFigures {
    pub server: Memory,
    pub client: Memory,
    /// The server's `stats` JSON.
    pub counters: serde_json::Value,
    /// (received, transmitted) frames dropped on the server's tap.
    pub server_tap_drops: (u64, u64),
    /// (received, transmitted) frames dropped on the container's tap0.
    pub client_tap_drops: (u64, u64),
}

impl RelayFigures {
    /// Each daemon with its memory, in report order.
    pub fn daemons(&self) -> [(&'static str, Memory); 2] {
        [("server", self.server), ("client", self.client)]
    }
}

/// Everything measured for one setup.
#[derive(Debug, Clone)]
pub struct Row {
    pub setup: Setup,
    pub rtt: Rtt,
    pub throughput: Vec<Throughput>,
    /// `None` for veth, which has no daemon.
    pub relay: Option<RelayFigures>,
}

/// Measures `setup`: round trip first (idle path), then the load, then the
/// daemons' peak memory.
pub fn measure(setup: &Setup, bench: &Bench) -> Result<Row> {
    let rig = Rig::build(setup, bench)?;
    rig.wait_reachable()?;

    let rtt = measure::ping(&rig.container, GATEWAY, PINGS)?;
    let mut throughput = Vec::new();
    for direction in Direction::ALL {
        throughput.push(rig.throughput(direction, bench)?);
    }

    let relay = rig.relay_figures(bench)?;
    Ok(Row {
        setup: setup.clone(),
        rtt,
        throughput,
        relay,
    })
}

/// A bubble and a container joined by one data path, with an iperf3
/// server in the bubble. Fields drop in order: processes before namespaces.
struct Rig {
    iperf: Option<Proc>,
    relay: Option<Relay>,
    container: Netns,
    bubble: Netns,
}

impl Rig {
    fn build(setup: &Setup, bench: &Bench) -> Result<Self> {
        let mut rig = Self {
            iperf: None,
            relay: None,
            container: Netns::new("bc"),
            bubble: bubble_with_bridge(setup.mtu),
        };
        match &setup.path {
            DataPath::Veth => rig.join_with_veth(setup.mtu),
            DataPath::Relay {
                server_args,
                client_args,
            } => {
                let relay = Relay::start(&rig, setup.mtu, server_args, client_args, bench)?;
                rig.relay = Some(relay);
            }
        }
        rig.start_iperf_server()?;
        Ok(rig)
    }

    fn join_with_veth(&self, mtu: u32) {
        self.bubble.ip(&format!(
            "link add vb0 mtu {mtu} type veth peer name eth0 mtu {mtu}"
        ));
        self.bubble
            .ip(&format!("link set eth0 netns {}", self.container.name()));
        self.bubble.ip("link set vb0 master br0 up");
        self.container
            .ip(&format!("addr add {CONTAINER_CIDR} dev eth0"));
        self.container.ip("link set eth0 up");
        self.container
            .ip(&format!("route add default via {GATEWAY} dev eth0"));
    }

    /// One iperf3 server for every run of this setup, guarded by pid.
    fn start_iperf_server(&mut self) -> Result<()> {
        let mut command = self.bubble.command("iperf3");
        command.args(["-s", "-B", GATEWAY, "-p", &measure::IPERF_PORT.to_string()]);
        command.stdout(Stdio::null());
        self.iperf = Some(Proc::spawn("iperf3 server", command));
        measure::wait_listening(&self.bubble, measure::IPERF_PORT)
    }

    /// Waits for the first answered ping, which also settles ARP and the
    /// bridge's forwarding state before anything is timed.
    fn wait_reachable(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            interrupt::check()?;
            if measure::reachable(&self.container, GATEWAY) {
                return Ok(());
            }
        }
        bail!("the container does not reach {GATEWAY} after 10 s")
    }

    /// The relay's figures after the load; `None` for veth.
    fn relay_figures(&self, bench: &Bench) -> Result<Option<RelayFigures>> {
        let Some(relay) = &self.relay else {
            return Ok(None);
        };
        Ok(Some(RelayFigures {
            server: measure::memory(relay.server.pid()).context("relay server memory")?,
            client: measure::memory(relay.client.pid()).context("relay client memory")?,
            counters: relay.counters(&bench.daemon)?,
            server_tap_drops: measure::link_drops(&self.bubble, SERVER_TAP)?,
            client_tap_drops: measure::link_drops(&self.container, CLIENT_TAP)?,
        }))
    }

    /// Runs iperf3 `repeats` times one way, with the daemons' CPU time taken
    /// around exactly those runs.
    fn throughput(&self, direction: Direction, bench: &Bench) -> Result<Throughput> {
        let before = self.relay.as_ref().map(Relay::cpu_seconds).transpose()?;
        let mut samples = Vec::new();
        for repeat in 1..=bench.repeats {
            eprintln!(
                "bench:   {} run {repeat}/{}",
                direction.label(),
                bench.repeats
            );
            let reverse = direction == Direction::BubbleToContainer;
            let sample = measure::iperf3(&self.container, GATEWAY, bench.duration, reverse)?;
            samples.push(sample);
        }
        let after = self.relay.as_ref().map(Relay::cpu_seconds).transpose()?;

        let cpu = before.zip(after).map(|(before, after)| DaemonCpu {
            server: after.server - before.server,
            client: after.client - before.client,
        });
        Ok(Throughput {
            direction,
            samples,
            cpu,
        })
    }
}

/// The bubble: a bridge with an explicit MAC and MTU holding the gateway.
fn bubble_with_bridge(mtu: u32) -> Netns {
    let bubble = Netns::new("bb");
    bubble.ip(&format!(
        "link add br0 address {BRIDGE_MAC} mtu {mtu} type bridge"
    ));
    bubble.ip(&format!("addr add {GATEWAY}/24 dev br0"));
    bubble.ip("link set br0 up");
    bubble
}

/// The relay's two daemons and the directory holding their socket.
/// The client is declared first so it ends first: killed after its server,
/// it would log a lost connection and start reconnecting.
struct Relay {
    client: Proc,
    server: Proc,
    socket: PathBuf,
    _dir: ScratchDir,
}

impl Relay {
    fn start(
        rig: &Rig,
        mtu: u32,
        server_args: &[String],
        client_args: &[String],
        bench: &Bench,
    ) -> Result<Self> {
        let dir = ScratchDir::new()?;
        let socket = dir.0.join("s");
        let mut command = rig.bubble.command(&bench.daemon);
        command.arg("server").arg("--socket").arg(&socket);
        command.args([
            "--tap",
            SERVER_TAP,
            "--bridge",
            "br0",
            "--mtu",
            &mtu.to_string(),
        ]);
        command.args(["--ready-fd", "3"]).args(server_args);
        let server = Proc::spawn_ready("relay server", command);

        let mut command = rig.container.command(&bench.daemon);
        command.arg("client").arg("--socket").arg(&socket);
        command.args(["--tap", CLIENT_TAP, "--address", CONTAINER_CIDR]);
        command.args(["--gateway", GATEWAY]);
        command.args(["--mtu", &mtu.to_string()]).args(client_args);
        // The command tells us the network is up; the relay lives as long as it.
        command.args(["--", "sh", "-c", "echo up; exec sleep 86400"]);
        let client = Proc::spawn_until_line("relay client", command, "up");
        Ok(Self {
            client,
            server,
            socket,
            _dir: dir,
        })
    }

    fn cpu_seconds(&self) -> Result<DaemonCpu> {
        Ok(DaemonCpu {
            server: measure::cpu_seconds(self.server.pid()).context("relay server cpu")?,
            client: measure::cpu_seconds(self.client.pid()).context("relay client cpu")?,
        })
    }

    /// The server's counters, which also proves it survived the load.
    fn counters(&self, daemon: &std::path::Path) -> Result<serde_json::Value> {
        let mut command = Command::new(daemon);
        command.arg("stats").arg("--socket").arg(&self.socket);
        let output = measure::run_checked(command, Duration::from_secs(10))
            .context("ask the relay server for its counters")?;
        serde_json::from_str(&output.stdout).context("parse the relay's counters")
    }
}

/// A short private directory under /tmp for the relay socket (`sun_path`
/// holds 107 bytes), removed with whatever a killed server left in it.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/tmp/hpkb-{}-{n}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
