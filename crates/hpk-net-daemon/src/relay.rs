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
//! A connection ends when the peer closes, the socket fails, or the peer
//! breaks the framing; the tap outlives it and the next connection resumes.
//! Nothing on this path logs above trace.

use std::io;
use std::sync::Arc;

use tokio::net::UnixStream;
use tracing::{debug, trace};

use crate::codec::{DEFAULT_BUFFER, DecodeError, FrameReader, FrameWriter, MAX_FRAME};
use crate::filter::SourceFilter;
use crate::stats::Stats;
use crate::tap::{Tap, WriteOutcome, read_frame};

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

/// Relays frames between `tap` and `stream` until the connection ends;
/// frames from the stream pass `filter` first, when there is one.
pub async fn run(
    tap: &Tap,
    stream: &UnixStream,
    stats: &Arc<Stats>,
    filter: Option<&SourceFilter>,
) -> ConnectionEnd {
    let mut writer = FrameWriter::new(DEFAULT_BUFFER, MAX_FRAME);
    let mut reader = FrameReader::new(DEFAULT_BUFFER, MAX_FRAME);
    let inbound = Inbound { tap, stats, filter };
    tokio::select! {
        end = tap_to_socket(tap, stream, &mut writer, stats) => end,
        end = socket_to_tap(stream, &inbound, &mut reader) => end,
    }
}

/// Where frames from the socket go, and what they must pass on the way.
struct Inbound<'a> {
    tap: &'a Tap,
    stats: &'a Stats,
    filter: Option<&'a SourceFilter>,
}

async fn tap_to_socket(
    tap: &Tap,
    stream: &UnixStream,
    writer: &mut FrameWriter,
    stats: &Stats,
) -> ConnectionEnd {
    loop {
        if let Err(err) = fill_from_tap(tap, writer, stats).await {
            return err.into();
        }
        if let Err(err) = flush(stream, writer).await {
            return err.into();
        }
    }
}

/// Waits for at least one frame, then takes every frame the tap holds
/// without waiting, up to a full batch.
async fn fill_from_tap(tap: &Tap, writer: &mut FrameWriter, stats: &Stats) -> io::Result<()> {
    let (mut frames, mut bytes) = (0u64, 0u64);
    while frames == 0 {
        let mut guard = tap.async_fd().readable().await?;
        while let Some(space) = writer.frame_space() {
            match guard.try_io(|fd| read_frame(fd.get_ref(), space)) {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => {
                    writer.commit(n);
                    frames += 1;
                    bytes += n as u64;
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
        if let Err(end) = deliver_to_tap(reader, inbound) {
            return end;
        }
    }
}

/// Writes every whole frame the reader holds to the tap, less those the
/// filter refuses.
fn deliver_to_tap(reader: &mut FrameReader, inbound: &Inbound<'_>) -> Result<(), ConnectionEnd> {
    let Inbound { tap, stats, filter } = inbound;
    let (mut frames, mut bytes) = (0u64, 0u64);
    while let Some(frame) = reader.next_frame()? {
        if let Some(Err(spoof)) = filter.map(|filter| filter.check(frame)) {
            let total = stats.spoofed();
            trace!(%spoof, len = frame.len(), "dropped spoofed frame");
            // Logarithmic rate limit: 1st, 2nd, 4th, 8th… without a clock.
            if total.is_power_of_two() {
                debug!(%spoof, total, "dropping frames from a foreign source");
            }
            continue;
        }
        match tap.write_frame(frame)? {
            WriteOutcome::Sent => {
                frames += 1;
                bytes += frame.len() as u64;
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
