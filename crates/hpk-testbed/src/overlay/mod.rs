//! The overlay testbed: several hosts on a LAN, one rootless-style bubble per
//! host attached by slirp4netns, and a flannel-style VXLAN data plane joining
//! the bubbles. Tests and `cargo xtask demo` share it.
//!
//! Theory of operation:
//!
//! ```text
//!  outside ns ── 203.0.113.2                        (OUTSIDE_IP)
//!      │ veth
//!  lan ns ────── 203.0.113.1, lan0 bridge 192.0.2.1, forwarding on
//!      │ veth per host
//!  host ns K ─── eth0 192.0.2.(10+K), slirp4netns (UDP 8472 forwarded)
//!      │ tap0 (slirp, MTU 65520 or 1500)
//!  bubble K ──── user+net+mount ns: tap0 10.0.2.100 + 192.0.2.(10+K)/32,
//!                flannel.1 10.244.K.0/32 (VXLAN VNI 1, local = host IP),
//!                flanneld's masquerade rules, subnet.env in its directory
//! ```
//!
//! A VXLAN packet from bubble 1 to bubble 2 leaves flannel.1 with source
//! 192.0.2.11, goes out tap0 to slirp4netns, which sends it from a UDP socket
//! in host 1 to 192.0.2.12:8472; slirp4netns of host 2 forwards that port to
//! its bubble, where flannel.1 takes it. That is the path a real bubble's
//! flanneld traffic takes between Slurm nodes.
//!
//! Every object is owned by a guard before the next one is made, so a step
//! that fails half-way, a failed assertion or a drop removes everything. The
//! processes (the namespace holder and slirp4netns) block on a *lifeline*
//! pipe whose write end only this process holds: when it dies, even by
//! SIGKILL, they see end-of-file and exit. Namespace names embed this
//! process's pid, so [`sweep_stale`] can remove what a killed run left.

mod bubble;
mod flannel;
mod lan;
mod slirp;
mod spawn;
mod sweep;

use std::fmt;
use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use hpk_netconf::Ipv4Net;

use crate::Netns;

pub use bubble::Bubble;
pub use sweep::sweep_stale;

/// The LAN router's address (the `lan` namespace, on bridge `lan0`).
pub const LAN_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The address of the `outside` namespace, behind the LAN router.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The LAN router's address towards the outside namespace.
pub const OUTSIDE_GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// flannel's VXLAN UDP port (its Linux default), forwarded to each bubble.
pub const VXLAN_PORT: u16 = 8472;
/// Bytes VXLAN adds to a frame (outer IPv4, UDP, VXLAN and inner Ethernet).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The MTU slirp4netns gives a real bubble's tap0.
pub const SLIRP_MTU: u32 = 65_520;

/// The whole overlay, as flanneld's network config would say.
pub fn flannel_network() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).expect("valid prefix")
}

/// What to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayOptions {
    /// How many hosts, each with one bubble (1 to 244).
    pub hosts: usize,
    /// The MTU slirp4netns gives each bubble's tap0: [`SLIRP_MTU`] as in a
    /// real bubble, or 1500 for a node whose flannel interface has 1500.
    pub slirp_mtu: u32,
}

impl Default for OverlayOptions {
    fn default() -> Self {
        Self {
            hosts: 2,
            slirp_mtu: SLIRP_MTU,
        }
    }
}

impl OverlayOptions {
    /// The MTU flanneld would pick for flannel.1 and write as `FLANNEL_MTU`.
    pub fn flannel_mtu(&self) -> u32 {
        self.slirp_mtu - VXLAN_OVERHEAD
    }

    fn validate(&self) -> Result<()> {
        // Host K gets 192.0.2.(10+K) and subnet 10.244.K.0/24.
        ensure!(
            (1..=244).contains(&self.hosts),
            "an overlay testbed has 1 to 244 hosts, not {}",
            self.hosts
        );
        // slirp4netns accepts up to 65521; below 1280 IPv6 breaks on tap0.
        ensure!(
            (1280..=65_521).contains(&self.slirp_mtu),
            "slirp MTU {} is outside 1280..=65521",
            self.slirp_mtu
        );
        Ok(())
    }
}

/// One host of the LAN and the bubble that runs on it.
pub struct Node {
    /// The bubble (declared first: it is torn down before its host).
    pub bubble: Bubble,
    /// The host's network namespace.
    pub host: Netns,
    /// The host's LAN address, 192.0.2.(10+K).
    pub host_ip: Ipv4Addr,
}

/// The whole testbed; dropping it removes everything it made.
pub struct Overlay {
    /// The nodes, node K (subnet 10.244.K.0/24) at index K−1.
    pub nodes: Vec<Node>,
    /// The outside world, at [`OUTSIDE_IP`].
    pub outside: Netns,
    /// The LAN router and bridge.
    pub lan: Netns,
    options: OverlayOptions,
}

impl Overlay {
    /// Sweeps what killed runs left, then builds the testbed.
    pub fn new(options: OverlayOptions) -> Result<Self> {
        sweep_stale();
        options.validate()?;
        require_tools()?;

        let lan = lan::build_lan()?;
        let outside = lan::build_outside(&lan)?;
        let mut nodes = Vec::with_capacity(options.hosts);
        for k in 1..=options.hosts {
            let node = start_node(&lan, k, &options).with_context(|| format!("start node {k}"))?;
            nodes.push(node);
        }

        // Like flanneld on each node once it has seen the others' leases.
        flannel::add_peers(&nodes)?;
        for node in &nodes {
            node.bubble.write_subnet_env()?;
        }
        Ok(Self {
            nodes,
            outside,
            lan,
            options,
        })
    }

    /// What this testbed was built with.
    pub fn options(&self) -> OverlayOptions {
        self.options
    }

    /// flannel.1's (rx_packets, tx_packets) in the bubble of `nodes[node]`.
    pub fn flannel_counters(&self, node: usize) -> Result<(u64, u64)> {
        let Some(found) = self.nodes.get(node) else {
            bail!(
                "no node at index {node}: the testbed has {}",
                self.nodes.len()
            );
        };
        found.bubble.flannel_counters()
    }
}

/// A host namespace wired to the LAN, then its bubble.
fn start_node(lan: &Netns, k: usize, options: &OverlayOptions) -> Result<Node> {
    let index = u8::try_from(k).context("node number")?;
    let host_ip = Ipv4Addr::new(192, 0, 2, 10 + index);
    let subnet = Ipv4Net::new(Ipv4Addr::new(10, 244, index, 0), 24).context("node subnet")?;

    let host = lan::build_host(lan, k, host_ip)?;
    let bubble = Bubble::start(&host, host_ip, subnet, options.slirp_mtu)?;
    Ok(Node {
        bubble,
        host,
        host_ip,
    })
}

/// Checks up front for every program the testbed runs, so a missing one is
/// named instead of failing half-way.
fn require_tools() -> Result<()> {
    let tools = [
        "ip",
        "bridge",
        "unshare",
        "nsenter",
        "slirp4netns",
        "ethtool",
        "iptables",
        "sh",
    ];
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = tools
        .into_iter()
        .filter(|tool| !std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        .collect();
    ensure!(
        missing.is_empty(),
        "the overlay testbed needs {} on PATH (Debian: iproute2, util-linux, slirp4netns, \
         ethtool, iptables)",
        missing.join(", ")
    );
    Ok(())
}

/// Runs `command`, returning its stdout; an error carries `what` and stderr.
fn run_checked(command: &mut Command, what: &str) -> Result<String> {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("{what}: start {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "{what}: {} ({})",
            String::from_utf8_lossy(&output.stderr).trim(),
            output.status
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a `set -e` shell script inside `ns`.
fn ns_sh(ns: &Netns, script: &str, what: &str) -> Result<String> {
    run_checked(ns.command("sh").args(["-ec", script]), what)
        .with_context(|| format!("in namespace {}", ns.name()))
}

impl fmt::Display for Overlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "lan      {} (lan0 {LAN_GATEWAY}/24, {OUTSIDE_GATEWAY}/24 towards outside)",
            self.lan.name()
        )?;
        writeln!(f, "outside  {} ({OUTSIDE_IP}/24)", self.outside.name())?;
        for node in &self.nodes {
            writeln!(
                f,
                "host     {} (eth0 {}/24)",
                node.host.name(),
                node.host_ip
            )?;
            write!(f, "{}", node.bubble)?;
        }
        Ok(())
    }
}
