//! The fast path on both ends of a connection: the client's veth offer and
//! the server's answer to it (see [`crate::fastpath`] for the policy and
//! [`crate::veth`] for the wiring itself).
//!
//! The client makes its veth offer on a connection of its own, before it
//! has any tap: the answer "veth wired" leaves it nothing to relay, and the
//! answer "relay" makes it close that connection, create its tap and go the
//! usual way (a second connection with an ordinary offer), so the relay's
//! negotiation never has to know about namespaces. A peer that does not
//! answer a veth offer is waited for longer than an ordinary hello, since
//! wiring takes the server a few milliseconds of netlink and, when many
//! containers start at once, may queue behind the others.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hpk_netconf::Netlink;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tracing::{info, warn};

use crate::bridge_guard::{BridgeGuard, PendingGuard};
use crate::codec::MAX_FRAME;
use crate::fastpath::{self, ANSWER_RELAY, ANSWER_VETH, Policy, Verdict};
use crate::hello::{Hello, Kind, native_flags};
use crate::negotiate::send_hello;
use crate::stats::{DataPath, Stats};
use crate::veth::{self, ContainerSide, DataPathMode, Wired};

/// How long a client waits for the answer to a veth offer.
pub const VETH_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What became of a client's veth offer.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The server wired the veth pair: `tap0` is up in this namespace.
    Wired,
    /// The server relays (or is a plain peer): make a tap and connect again.
    Relay,
    /// The server refused the connection, for this reason.
    Refused(String),
}

/// Client: offers this network namespace on `stream` and reads the answer.
pub async fn offer(
    mut stream: UnixStream,
    mode: DataPathMode,
    side: &ContainerSide,
) -> std::io::Result<Attempt> {
    let netns = File::open("/proc/thread-self/ns/net")?;
    let hello = Hello {
        kind: Kind::Offer,
        flags: native_flags(),
        vnet_header_len: 0,
        offloads: 0,
        max_frame: MAX_FRAME as u32,
        data_path: fastpath::offer_byte(mode),
        options: fastpath::request_options(side),
    };
    let frame = hello.encode(side.mac.octets());
    send_hello(&stream, &frame, Some(netns.as_raw_fd())).await?;
    let answer = match tokio::time::timeout(VETH_ANSWER_TIMEOUT, read_one_frame(&mut stream)).await
    {
        Ok(answer) => answer?,
        // A plain peer keeps quiet; so may one that wants frames first.
        Err(_) => return Ok(Attempt::Relay),
    };
    Ok(match Hello::decode(&answer) {
        Ok(answer) if answer.kind == Kind::Answer => {
            if let Some(reason) = fastpath::refusal(&answer.options) {
                Attempt::Refused(reason)
            } else if answer.data_path == ANSWER_VETH {
                Attempt::Wired
            } else {
                Attempt::Relay
            }
        }
        _ => Attempt::Relay,
    })
}

/// Reads one length-prefixed frame (an answer is small; a larger frame is
/// not an answer and is read only far enough to say so).
async fn read_one_frame(stream: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await?;
    let len = u32::from_be_bytes(prefix) as usize;
    let mut frame = vec![0u8; len.min(1024)];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

/// Server: what the fast path decided for one connection.
#[derive(Debug)]
pub enum Decision {
    /// Go on with the relay's negotiation (and the relay).
    Relay,
    /// The veth pair is wired: answer so and end the connection.
    Wired,
    /// Answer with this refusal and end the connection.
    Refused(String),
}

impl Decision {
    /// The answer's data path byte and options, for `Wired` and `Refused`.
    pub fn answer(&self) -> (u8, Vec<(u8, Vec<u8>)>) {
        match self {
            Self::Wired => (ANSWER_VETH, Vec::new()),
            Self::Refused(reason) => (ANSWER_RELAY, vec![fastpath::refused_option(reason)]),
            Self::Relay => (ANSWER_RELAY, Vec::new()),
        }
    }
}

/// Server: answers an offer the fast path wired or refused.
pub async fn answer(stream: &UnixStream, mac: [u8; 6], decision: &Decision) -> std::io::Result<()> {
    let (data_path, options) = decision.answer();
    let hello = Hello {
        kind: Kind::Answer,
        flags: native_flags(),
        vnet_header_len: 0,
        offloads: 0,
        max_frame: MAX_FRAME as u32,
        data_path,
        options,
    };
    send_hello(stream, &hello.encode(mac), None).await
}

/// The server's fast path: its policy, the port, the guard started at
/// launch, and the wired pair once there is one.
pub struct FastPath {
    policy: Policy,
    port: String,
    bridge: Option<String>,
    stats: Arc<Stats>,
    guard: Mutex<Option<PendingGuard>>,
    wired: tokio::sync::Mutex<Option<Wired>>,
}

impl FastPath {
    /// Starts installing the port's guard when `policy` can ever wire: call
    /// it first thing, so nft runs while the tap is made and the container
    /// starts, not after the container has asked.
    pub fn start_guard(policy: &Policy, port: &str) -> Option<PendingGuard> {
        match (policy.mode, policy.allow) {
            (DataPathMode::Relay, _) | (_, None) => None,
            (_, Some((mac, ip))) => Some(BridgeGuard::start_install(port, mac, ip)),
        }
    }

    /// The fast path of a server; `guard` is what [`FastPath::start_guard`]
    /// started for the same policy and port.
    pub fn new(
        policy: Policy,
        port: &str,
        bridge: Option<String>,
        stats: Arc<Stats>,
        guard: Option<PendingGuard>,
    ) -> Arc<Self> {
        Arc::new(Self {
            policy,
            port: port.to_owned(),
            bridge,
            stats,
            guard: Mutex::new(guard),
            wired: tokio::sync::Mutex::new(None),
        })
    }

    /// Decides on one offer, wiring the pair when the policy says so.
    pub async fn decide(&self, offer: &Hello, netns: Option<OwnedFd>) -> Decision {
        let mut wired = self.wired.lock().await;
        if wired.is_some() {
            return Decision::Refused(format!(
                "{} is wired as a veth pair already; nothing is relayed",
                self.port
            ));
        }
        let verdict = self
            .policy
            .judge(offer.data_path, &offer.options, netns.is_some());
        let side = match verdict {
            Verdict::Relay => return Decision::Relay,
            Verdict::Decline { reason, fatal } => return self.decline(reason, fatal),
            Verdict::Wire(side) => side,
        };
        let netns = netns.expect("judge wires only with a namespace");
        match self.wire(&netns, side).await {
            Ok(pair) => {
                info!(port = %self.port, address = %side.address, "veth pair wired");
                self.stats.set_data_path(DataPath::Veth);
                *wired = Some(pair);
                Decision::Wired
            }
            Err(err) => {
                let fatal = offer.data_path == fastpath::OFFER_VETH_ONLY
                    || self.policy.mode == DataPathMode::Veth;
                self.decline(format!("could not wire a veth pair: {err:#}"), fatal)
            }
        }
    }

    fn decline(&self, reason: String, fatal: bool) -> Decision {
        if fatal {
            warn!(%reason, "refusing the connection: the fast path is required");
            Decision::Refused(reason)
        } else {
            info!(%reason, "relaying instead of the fast path");
            Decision::Relay
        }
    }

    async fn wire(&self, netns: &OwnedFd, side: ContainerSide) -> anyhow::Result<Wired> {
        let netlink = Netlink::open()?;
        let pending = self.guard.lock().expect("never poisoned").take();
        let port = self.port.as_str();
        let prepared = match pending {
            Some(guard) => veth::prepare_guarded(&netlink, netns.as_fd(), side, guard).await?,
            None => veth::prepare(&netlink, port, netns.as_fd(), side).await?,
        };
        Ok(prepared
            .commit(&netlink, port, self.bridge.as_deref())
            .await?)
    }

    /// Work that waits until the container runs: deleting the relay's
    /// unused tap, which the pair's wiring only moved aside.
    pub async fn settle(&self) {
        if let Some(pair) = self.wired.lock().await.as_mut()
            && let Ok(netlink) = Netlink::open()
        {
            pair.delete_parked_tap(&netlink).await;
        }
    }

    /// Removes the pair and the guard (or the guard's pending installation).
    pub async fn teardown(&self) {
        if let Some(guard) = self.guard.lock().expect("never poisoned").take() {
            // Let nft finish, so the table it makes is the one removed.
            if let Ok(guard) = guard.wait() {
                guard.remove();
            }
        }
        if let Some(pair) = self.wired.lock().await.take() {
            match Netlink::open() {
                Ok(netlink) => pair.remove(&netlink).await,
                Err(err) => warn!(%err, "cannot remove the veth pair"),
            }
        }
    }
}
