//! The hot loop: frames between a tap and a connected stream socket.
//!
//! Theory of operation. Two pumps run side by side on one task, one per
//! direction, sharing nothing but the counters:
//!
//! - tap → socket reads frames from the tap into a [`FrameWriter`] until the
//!   tap would block or the batch is full, then writes the batch with one
//!   `write`, completing short writes before reading the tap again. While the
//!   socket is full the tap is not read, so back-pressure lands on the tap's
//!   queue, where the kernel drops as it would on a busy link.
//! - socket → tap reads as much as the socket holds into a [`FrameReader`]
//!   and writes every whole frame to the tap, one `write` per frame (a tap
//!   takes one frame per call). A frame the kernel refuses is counted as
//!   dropped; the relay never stops over one frame. With a
//!   [`SourceFilter`] (the server's, for a container's frames) a frame
//!   from a foreign source is dropped before it reaches the tap and counted
//!   as spoofed.
//!
//! The [`Framing`] agreed by the hello decides what a frame on the wire is.
//! With the vnet header, tap and wire carry the same bytes (header, then
//! Ethernet frame), so a super-frame crosses as one read, one share of a
//! socket write, and one tap write. With a plain peer, the tap's zero
//! header is dropped by the read itself and put back by the write (one
//! `readv` / `writev`), and a frame that would need an offload the peer
//! never agreed to is dropped rather than passed on ([`read_frame_plain`]).
//! The source filter always looks at the Ethernet frame behind the header.
//!
//! What is left between this and a veth pair: every byte is copied four
//! times (tap to client, client to socket, socket to server, server to tap)
//! where veth copies none, and both daemons share the two CPUs with the
//! sender and receiver. Offloads cut the system calls per byte about
//! fortyfold, not the copies; closing the rest needs a data path that skips
//! user space (the veth fast path negotiated through the same hello).
//!
//! A connection ends when the peer closes, the socket fails, or the peer
//! breaks the framing; the tap outlives it and the next connection resumes.
//! Nothing on this path logs above trace, and nothing allocates per frame:
//! the two buffers live as long as the connection.

use std::io;
use std::sync::Arc;

use tokio::net::UnixStream;
use tracing::{debug, trace};

use crate::codec::{DEFAULT_BUFFER, DecodeError, FrameReader, FrameWriter};
use crate::filter::SourceFilter;
use crate::negotiate::Framing;
use crate::stats::Stats;
use crate::tap::{Tap, WriteOutcome, read_frame, read_frame_plain};

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionEnd {
    /// The peer closed its end.
    #[error("peer closed the connection")]
    PeerClosed,
    /// The peer broke the framing.
    #[error(transparent)]
    Protocol(#[from] DecodeError),
    /// The socket or the tap failed.
    #[error("relay i/o failed: {0}")]
    Io(#[from] io::Error),
}

/// A receive buffer for one connection, big enough for either framing.
pub fn new_reader() -> FrameReader {
    FrameReader::new(DEFAULT_BUFFER, crate::codec::MAX_FRAME)
}

/// Relays frames between `tap` and `stream` in the agreed `framing` until
/// the connection ends. `reader` may already hold frames (the peer's first,
/// when it was not a hello). Frames from the stream pass `filter` first,
/// when there is one.
pub async fn run(
    tap: &Tap,
    stream: &UnixStream,
    stats: &Arc<Stats>,
    filter: Option<&SourceFilter>,
    framing: Framing,
    reader: &mut FrameReader,
) -> ConnectionEnd {
    let mut writer = FrameWriter::new(DEFAULT_BUFFER, framing.max_frame);
    let inbound = Inbound {
        tap,
        stats,
        filter,
        header: framing.header_len(),
    };
    tokio::select! {
        end = tap_to_socket(tap, stream, &mut writer, stats, framing) => end,
        end = socket_to_tap(stream, &inbound, reader) => end,
    }
}

/// Where frames from the socket go, and what they must pass on the way.
struct Inbound<'a> {
    tap: &'a Tap,
    stats: &'a Stats,
    filter: Option<&'a SourceFilter>,
    /// Bytes of vnet header in front of each frame on the wire (0 or 10).
    header: usize,
}

async fn tap_to_socket(
    tap: &Tap,
    stream: &UnixStream,
    writer: &mut FrameWriter,
    stats: &Stats,
    framing: Framing,
) -> ConnectionEnd {
    // The plain read strips the header; the other keeps it for the peer.
    let (read, header): (ReadFn, u64) = if framing.vnet_header {
        (read_frame, framing.header_len() as u64)
    } else {
        (read_frame_plain, 0)
    };
    loop {
        if let Err(err) = fill_from_tap(tap, writer, stats, read, header).await {
            return err.into();
        }
        if let Err(err) = flush(stream, writer).await {
            return err.into();
        }
    }
}

/// How frames are read from the tap: with or without their vnet header.
type ReadFn = fn(&std::os::fd::OwnedFd, &mut [u8]) -> io::Result<usize>;

/// Waits for at least one frame, then takes every frame the tap holds
/// without waiting, up to a full batch. `header` is subtracted from each
/// frame for the byte counters, which count Ethernet bytes.
async fn fill_from_tap(
    tap: &Tap,
    writer: &mut FrameWriter,
    stats: &Stats,
    read: ReadFn,
    header: u64,
) -> io::Result<()> {
    let (mut frames, mut bytes) = (0u64, 0u64);
    while frames == 0 {
        let mut guard = tap.async_fd().readable().await?;
        while let Some(space) = writer.frame_space() {
            match guard.try_io(|fd| read(fd.get_ref(), space)) {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => {
                    writer.commit(n);
                    frames += 1;
                    bytes += (n as u64).saturating_sub(header);
                }
                Ok(Err(err)) => return Err(err),
                // Drained: readiness is cleared, so the next wait really waits.
                Err(_would_block) => break,
            }
        }
    }
    trace!(frames, bytes, "tap batch");
    stats.tap_to_socket.add(frames, bytes);
    Ok(())
}

/// Writes everything pending, waiting on the socket as needed.
async fn flush(stream: &UnixStream, writer: &mut FrameWriter) -> io::Result<()> {
    while !writer.is_empty() {
        match stream.try_write(writer.pending()) {
            Ok(n) => writer.consume(n),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

async fn socket_to_tap(
    stream: &UnixStream,
    inbound: &Inbound<'_>,
    reader: &mut FrameReader,
) -> ConnectionEnd {
    loop {
        // First what is buffered already (a first frame the hello left).
        if let Err(end) = deliver_to_tap(reader, inbound) {
            return end;
        }
        // A socket that always has data never makes this pump wait, and
        // try_read costs no cooperative budget: spend some per batch, so the
        // control socket and other tasks on this thread still get turns.
        tokio::task::consume_budget().await;
        loop {
            match stream.try_read(reader.read_space()) {
                Ok(0) => return ConnectionEnd::PeerClosed,
                Ok(n) => reader.advance(n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(err) = stream.readable().await {
                        return err.into();
                    }
                    continue;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return err.into(),
            }
            break;
        }
    }
}

/// Writes every whole frame the reader holds to the tap, less those the
/// filter refuses.
fn deliver_to_tap(reader: &mut FrameReader, inbound: &Inbound<'_>) -> Result<(), ConnectionEnd> {
    let Inbound {
        tap,
        stats,
        filter,
        header,
    } = inbound;
    let (mut frames, mut bytes) = (0u64, 0u64);
    while let Some(frame) = reader.next_frame()? {
        let ethernet = frame.get(*header..).unwrap_or_default();
        if let Some(Err(spoof)) = filter.map(|filter| filter.check(ethernet)) {
            let total = stats.spoofed();
            trace!(%spoof, len = frame.len(), "dropped spoofed frame");
            // Logarithmic rate limit: 1st, 2nd, 4th, 8th… without a clock.
            if total.is_power_of_two() {
                debug!(%spoof, total, "dropping frames from a foreign source");
            }
            continue;
        }
        let outcome = if *header == 0 {
            tap.write_frame_plain(frame)?
        } else {
            tap.write_frame(frame)?
        };
        match outcome {
            WriteOutcome::Sent => {
                frames += 1;
                bytes += ethernet.len() as u64;
            }
            WriteOutcome::Dropped(errno) => {
                trace!(%errno, len = frame.len(), "tap refused frame");
                stats.socket_to_tap.drop_one();
            }
        }
    }
    stats.socket_to_tap.add(frames, bytes);
    Ok(())
}
