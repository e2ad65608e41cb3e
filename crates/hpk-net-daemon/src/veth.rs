//! The fast path: a veth pair on the bridge instead of tap + relay.
//!
//! Theory of operation. When the client hands the server its network
//! namespace (a descriptor over `SCM_RIGHTS`, see the hello in DESIGN.md),
//! and the server holds `CAP_NET_ADMIN` over that namespace (the usual
//! case in a fakeroot bubble, where bubble and container share a user
//! namespace), the server wires the container itself and no frame ever
//! crosses userspace. Wiring is two steps, because the server's tap holds
//! the port's name until the last moment:
//!
//! 1. [`prepare`]: make the pair with the host end under a temporary name
//!    and the peer made right inside the container's namespace as `tap0`
//!    (MTU on both ends, the container's MAC on the peer; made there rather
//!    than moved, since a move waits for an RCU grace period, which costs
//!    milliseconds in a busy VM), configure it there (address, link up,
//!    default route) from a dedicated thread, and install the
//!    [`BridgeGuard`] rules for the final port name. The kernel's refusal
//!    (EPERM: the namespace belongs to a user namespace we hold no
//!    capability in) shows here, before anything the relay needs has
//!    changed; every failure deletes the pair again.
//! 2. [`Prepared::commit`]: move the relay's tap out of the way (renamed
//!    while still down and off the bridge, which is cheap; deleted by the
//!    caller once the container runs, or deleted now if it was up), rename
//!    the host end to the tap's name (so hpktainer's naming and cleanup stay), attach it to the
//!    bridge and bring it up. Only now can a frame pass, and the guard is
//!    already in place. A failure past the tap's deletion leaves the server
//!    with neither path for this container: the connection is refused and
//!    says why, since re-creating a tap under a live relay's feet would be
//!    a second, rarer failure path nobody could test.
//!
//! Deleting the host end deletes both ends; so does the container's
//! namespace going away, so a dead container leaves no veth behind.

use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;
use std::path::Path;

use hpk_netconf::{IpNet, Ipv4Net, MacAddr, Netlink, netns};
use tracing::{debug, warn};

use crate::bridge_guard::{BridgeGuard, GuardError, PendingGuard};

/// Which data path a server (or hpktainer) may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DataPathMode {
    /// Always tap + relay.
    Relay,
    /// A veth pair or nothing: a container the server cannot wire fails.
    Veth,
    /// A veth pair when the kernel allows it and the guard can be installed,
    /// else the relay.
    #[default]
    Auto,
}

impl DataPathMode {
    /// The word on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::Veth => "veth",
            Self::Auto => "auto",
        }
    }
}

/// Name of the container's end inside its namespace.
pub const CONTAINER_LINK: &str = "tap0";

/// What the container's end is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerSide {
    /// Address and prefix, e.g. 10.244.3.2/24.
    pub address: Ipv4Net,
    /// Default gateway.
    pub gateway: Ipv4Addr,
    /// MAC address.
    pub mac: MacAddr,
    /// MTU of both ends.
    pub mtu: u32,
}

/// Why the fast path could not be wired; the pair is gone again.
#[derive(Debug, thiserror::Error)]
pub enum VethError {
    /// A netlink step failed (EPERM when the namespace is not ours).
    #[error("{step}: {source}")]
    Netlink {
        /// What was being done.
        step: &'static str,
        /// What the kernel said.
        #[source]
        source: hpk_netconf::Error,
    },
    /// The isolation rules could not be installed.
    #[error("install the port's isolation rules: {0}")]
    Guard(#[from] GuardError),
}

impl VethError {
    fn netlink(step: &'static str) -> impl FnOnce(hpk_netconf::Error) -> Self {
        move |source| Self::Netlink { step, source }
    }
}

/// A pair made and configured, not yet on the bridge.
#[derive(Debug)]
pub struct Prepared {
    index: u32,
    guard: BridgeGuard,
}

/// The wired fast path: the host end on the bridge and its guard.
#[derive(Debug)]
pub struct Wired {
    index: u32,
    name: String,
    guard: BridgeGuard,
    /// The relay's tap, renamed aside, still to delete.
    parked_tap: Option<u32>,
}

/// Step 1: makes the pair, moves and configures the container's end, and
/// installs the guard for `port`. On failure nothing is left behind.
pub async fn prepare(
    netlink: &Netlink,
    port: &str,
    netns_fd: BorrowedFd<'_>,
    side: ContainerSide,
) -> Result<Prepared, VethError> {
    let guard = BridgeGuard::start_install(port, side.mac, side.address.addr());
    prepare_guarded(netlink, netns_fd, side, guard).await
}

/// [`prepare`] with the guard's installation already under way (a server
/// starts it before any container arrives, so nft's run costs no start-up
/// time); it must be for the same port, MAC and address.
pub async fn prepare_guarded(
    netlink: &Netlink,
    netns_fd: BorrowedFd<'_>,
    side: ContainerSide,
    guard: PendingGuard,
) -> Result<Prepared, VethError> {
    // A temporary name: `port` is still the tap's. The peer is made in the
    // container's namespace as tap0 directly.
    let host = format!("hpkv{:x}", std::process::id());
    let index = netlink
        .add_veth_with(&host, CONTAINER_LINK, side.mtu, side.mac, Some(netns_fd))
        .await
        .map_err(VethError::netlink(
            "create the veth pair into the container",
        ))?;

    let configured = configure_inside(netns_fd, side);
    let guarded = match configured {
        Ok(()) => guard.wait().map_err(VethError::from),
        Err(err) => {
            // Reap nft, and take out what it may have installed.
            if let Ok(guard) = guard.wait() {
                guard.remove();
            }
            Err(err)
        }
    };

    match guarded {
        Ok(guard) => Ok(Prepared { index, guard }),
        Err(err) => {
            // The peer goes with its host end, wherever it is by now.
            if let Err(cleanup) = netlink.del_link(index).await {
                warn!(%cleanup, "could not delete the half-made veth pair");
            }
            Err(err)
        }
    }
}

/// Configures `tap0` inside the container's namespace, on a thread of its
/// own so no runtime worker ever changes namespace.
fn configure_inside(netns_fd: BorrowedFd<'_>, side: ContainerSide) -> Result<(), VethError> {
    let label = Path::new("the container's network namespace");
    let outcome = netns::run_async_in_fd(label, netns_fd, || async move {
        let netlink = Netlink::open().map_err(VethError::netlink("open netlink inside"))?;
        let link = netlink
            .link(CONTAINER_LINK)
            .await
            .map_err(VethError::netlink("find tap0 inside"))?
            .ok_or_else(|| VethError::Netlink {
                step: "find tap0 inside",
                source: hpk_netconf::Error::NotFound {
                    what: CONTAINER_LINK.into(),
                },
            })?;
        netlink
            .add_address(link.index, IpNet::V4(side.address))
            .await
            .map_err(VethError::netlink("add the address to tap0"))?;
        netlink
            .set_up(link.index)
            .await
            .map_err(VethError::netlink("set tap0 up"))?;
        netlink
            .add_default_route(side.gateway, link.index)
            .await
            .map_err(VethError::netlink("add the default route"))
    });
    outcome.map_err(VethError::netlink("enter the container's namespace"))?
}

impl Prepared {
    /// Step 2: deletes the tap called `port` if there is one, names the
    /// host end `port`, attaches it to `bridge`, brings it up. On failure
    /// the pair and the guard are removed.
    pub async fn commit(
        self,
        netlink: &Netlink,
        port: &str,
        bridge: Option<&str>,
    ) -> Result<Wired, VethError> {
        let attached = async {
            let parked = retire_tap(netlink, port).await?;
            netlink
                .set_name(self.index, port)
                .await
                .map_err(VethError::netlink("name the host end"))?;
            if let Some(bridge) = bridge {
                let master = netlink
                    .link(bridge)
                    .await
                    .map_err(VethError::netlink("find the bridge"))?
                    .ok_or_else(|| VethError::Netlink {
                        step: "find the bridge",
                        source: hpk_netconf::Error::NotFound {
                            what: format!("bridge {bridge}"),
                        },
                    })?;
                netlink
                    .set_master(self.index, master.index)
                    .await
                    .map_err(VethError::netlink("attach the host end to the bridge"))?;
            }
            netlink
                .set_up(self.index)
                .await
                .map_err(VethError::netlink("set the host end up"))?;
            Ok(parked)
        }
        .await;
        match attached {
            Ok(parked) => {
                debug!(port, "veth wired");
                Ok(Wired {
                    index: self.index,
                    name: port.to_owned(),
                    guard: self.guard,
                    parked_tap: parked,
                })
            }
            Err(err) => {
                let _ = netlink.del_link(self.index).await;
                self.guard.remove();
                Err(err)
            }
        }
    }
}

/// Frees `port` of the relay's tap so the veth can take the name. A tap
/// that never came up is renamed (cheap) and returned for deletion later;
/// one that is up is deleted now, since a running link cannot be renamed.
/// The server's descriptor stays open but drives nothing.
async fn retire_tap(netlink: &Netlink, port: &str) -> Result<Option<u32>, VethError> {
    let tap = netlink
        .link(port)
        .await
        .map_err(VethError::netlink("look up the relay's tap"))?;
    match tap {
        Some(link) if link.kind.as_deref() == Some("tun") && !link.up => {
            let parked = format!("hpkt{:x}", std::process::id());
            netlink
                .set_name(link.index, &parked)
                .await
                .map_err(VethError::netlink("move the relay's tap aside"))?;
            Ok(Some(link.index))
        }
        Some(link) if link.kind.as_deref() == Some("tun") => netlink
            .del_link(link.index)
            .await
            .map(|()| None)
            .map_err(VethError::netlink("delete the relay's tap")),
        _ => Ok(None),
    }
}

impl Wired {
    /// The host end's name (the tap name the server was given).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the relay's tap that [`Prepared::commit`] moved aside; call
    /// once the container runs, as deleting a link waits for the kernel.
    pub async fn delete_parked_tap(&mut self, netlink: &Netlink) {
        if let Some(index) = self.parked_tap.take()
            && let Err(err) = netlink.del_link(index).await
        {
            warn!(%err, "could not delete the relay's unused tap");
        }
    }

    /// The guard's nftables table.
    pub fn table(&self) -> String {
        self.guard.table()
    }

    /// Deletes the pair and the guard; teardown goes on past failures.
    pub async fn remove(self, netlink: &Netlink) {
        match netlink.del_link(self.index).await {
            // Already gone with the container's namespace.
            Err(err) if err.errno() == Some(libc::ENODEV) => {}
            Err(err) => warn!(port = %self.name, %err, "could not delete the veth pair"),
            Ok(()) => {}
        }
        self.guard.remove();
    }
}
