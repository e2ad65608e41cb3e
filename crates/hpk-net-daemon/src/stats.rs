//! Relay counters, and the control socket that reports them while running.
//!
//! Counters are plain relaxed atomics bumped once per batch or frame; the
//! control socket (`<socket>.ctl`) answers every connection with one JSON
//! line and closes, so tests and `hpktainer ps` can read exact figures
//! without stopping the relay.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Counters for one direction of the relay.
#[derive(Debug, Default)]
pub struct DirectionCounters {
    bytes: AtomicU64,
    frames: AtomicU64,
    dropped: AtomicU64,
}

impl DirectionCounters {
    /// Counts `frames` frames totalling `bytes` bytes (frame bytes, not
    /// including the length prefixes).
    pub fn add(&self, frames: u64, bytes: u64) {
        self.frames.fetch_add(frames, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }

    /// Counts one frame that could not be delivered.
    pub fn drop_one(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }

    fn snapshot(&self) -> DirectionSnapshot {
        DirectionSnapshot {
            bytes: self.bytes.load(Relaxed),
            frames: self.frames.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
        }
    }
}

/// Every counter of one relay process.
#[derive(Debug, Default)]
pub struct Stats {
    /// Frames read from the tap and sent to the peer.
    pub tap_to_socket: DirectionCounters,
    /// Frames received from the peer and written to the tap.
    pub socket_to_tap: DirectionCounters,
    connections: AtomicU64,
    protocol_errors: AtomicU64,
    spoofed: AtomicU64,
    /// 1 while a veth pair carries the container's frames, else 0.
    veth: AtomicU8,
    /// The current connection's vnet header length (0: plain framing).
    vnet_header_len: AtomicU64,
    /// The current connection's `TUN_F_*` offloads.
    offloads: AtomicU64,
}

impl Stats {
    /// A fresh, shareable set of counters.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Counts an accepted (server) or established (client) connection.
    pub fn connected(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    /// Records what the current connection agreed on.
    pub fn negotiated(&self, framing: crate::negotiate::Framing) {
        self.vnet_header_len
            .store(framing.header_len() as u64, Relaxed);
        self.offloads.store(u64::from(framing.offloads), Relaxed);
    }

    /// Counts a connection ended because its peer broke the framing.
    pub fn protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Relaxed);
    }

    /// Counts a frame from the peer dropped by the source filter; returns
    /// the new total, so the caller can rate-limit what it logs.
    pub fn spoofed(&self) -> u64 {
        self.spoofed.fetch_add(1, Relaxed) + 1
    }

    /// Records which data path carries the container's frames now.
    pub fn set_data_path(&self, path: DataPath) {
        self.veth.store(u8::from(path == DataPath::Veth), Relaxed);
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            tap_to_socket: self.tap_to_socket.snapshot(),
            socket_to_tap: self.socket_to_tap.snapshot(),
            connections: self.connections.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            spoofed: self.spoofed.load(Relaxed),
            data_path: match self.veth.load(Relaxed) {
                0 => DataPath::Relay,
                _ => DataPath::Veth,
            },
            framing: FramingSnapshot {
                vnet_header_len: self.vnet_header_len.load(Relaxed),
                offloads: self.offloads.load(Relaxed),
            },
        }
    }
}

/// One direction's counters as reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionSnapshot {
    pub bytes: u64,
    pub frames: u64,
    pub dropped: u64,
}

/// What the control socket answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub tap_to_socket: DirectionSnapshot,
    pub socket_to_tap: DirectionSnapshot,
    pub connections: u64,
    pub protocol_errors: u64,
    /// Frames from the peer dropped by the source filter (counted apart
    /// from `socket_to_tap.dropped`, which the kernel refused).
    #[serde(default)]
    pub spoofed: u64,
    /// The data path in use (a relay that predates the fast path reports
    /// none, which reads as the relay).
    #[serde(default)]
    pub data_path: DataPath,
    /// What the current (or last) connection agreed on.
    #[serde(default)]
    pub framing: FramingSnapshot,
}

/// How a container's frames reach the bridge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataPath {
    /// Through the tap and this relay.
    #[default]
    Relay,
    /// Through a veth pair; the relay carries nothing.
    Veth,
}

impl DataPath {
    /// The word `ps` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::Veth => "veth",
        }
    }
}

/// The agreement of the current connection, as reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FramingSnapshot {
    /// Bytes of vnet header per frame; 0 means plain framing.
    pub vnet_header_len: u64,
    /// `TUN_F_*` offloads in force.
    pub offloads: u64,
}

/// The control socket's path for a relay socket path.
pub fn control_path(socket: &Path) -> PathBuf {
    let mut path = socket.as_os_str().to_owned();
    path.push(".ctl");
    PathBuf::from(path)
}

/// Answers each connection on `listener` with one JSON line of `stats`.
pub async fn serve_control(listener: UnixListener, stats: Arc<Stats>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let mut line = serde_json::to_vec(&stats.snapshot()).expect("counters serialise");
        line.push(b'\n');
        // A reader that vanished mid-answer costs nothing worth reporting.
        let _ = stream.write_all(&line).await;
    }
}

/// Reads the counters of the relay whose socket is `socket`.
pub async fn query(socket: &Path) -> io::Result<StatsSnapshot> {
    let mut stream = UnixStream::connect(control_path(socket)).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    serde_json::from_slice(&answer).map_err(io::Error::other)
}
