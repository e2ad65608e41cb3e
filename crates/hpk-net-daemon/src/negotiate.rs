//! Running the hello on a fresh connection: the client's offer, the
//! server's answer, and the fallback to plain framing (see [`crate::hello`]
//! for the protocol).
//!
//! Both sides read the peer's first frame into the connection's
//! [`FrameReader`] with `recvmsg`, with room for one `SCM_RIGHTS`
//! descriptor, so an offer can carry the container's network namespace.
//! A first frame that is not a hello stays in the reader, so the relay
//! delivers it like any other. The tap's offloads are set here, before the
//! relay reads a single frame under the new agreement.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::time::{Instant, timeout_at};
use tracing::debug;

use crate::codec::{FrameReader, LEN_PREFIX, MAX_FRAME, MAX_VNET_FRAME};
use crate::hello::{DATA_PATH_RELAY, HELLO_TIMEOUT, Hello, HelloError, Kind, native_flags};
use crate::tap::{Tap, VNET_HDR_LEN};

/// Whether a side offers (client) or accepts (server) the offload
/// extension; `off` forces plain framing, for benchmarks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Offload {
    #[default]
    On,
    Off,
}

impl Offload {
    pub fn is_on(self) -> bool {
        self == Self::On
    }
}

/// Sizes the socket's buffers for bursts of super-frames: the default
/// (about 208 KiB) holds three 64 KiB frames, so a burst from the tap would
/// stall on the socket long before the tap's queue is drained. The kernel
/// caps the request at `net.core.wmem_max`/`rmem_max` without complaint.
pub fn size_socket_buffers(stream: &UnixStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    const SOCKET_BUFFER: usize = 4 << 20;
    // Best effort: a smaller buffer costs throughput, never correctness.
    let _ = setsockopt(stream, sockopt::SndBuf, &SOCKET_BUFFER);
    let _ = setsockopt(stream, sockopt::RcvBuf, &SOCKET_BUFFER);
}

/// What one connection agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Whether every frame on the wire carries the vnet header.
    pub vnet_header: bool,
    /// `TUN_F_*` offloads in force on both taps.
    pub offloads: u32,
    /// Largest frame on the wire, vnet header included.
    pub max_frame: usize,
}

impl Framing {
    /// The baseline: bare Ethernet frames, no offloads.
    pub const PLAIN: Self = Self {
        vnet_header: false,
        offloads: 0,
        max_frame: MAX_FRAME,
    };

    /// Bytes in front of the Ethernet header of every frame on the wire.
    pub fn header_len(&self) -> usize {
        if self.vnet_header { VNET_HDR_LEN } else { 0 }
    }
}

/// An offer as the server received it.
#[derive(Debug)]
pub struct Offer {
    pub hello: Hello,
    /// A descriptor sent along (the container's network namespace, when it
    /// asks for a veth data path).
    pub netns: Option<OwnedFd>,
}

/// Client side: offers what `tap` can do (nothing with `offload` false),
/// waits for the answer and applies it to the tap. Against a plain peer,
/// returns plain framing with the peer's first frame left in `reader`.
pub async fn client(
    stream: &UnixStream,
    tap: &Tap,
    mac: [u8; 6],
    offload: bool,
    reader: &mut FrameReader,
) -> io::Result<Framing> {
    let (header, offloads) = if offload && tap.capable_offloads() != 0 {
        (VNET_HDR_LEN as u16, tap.capable_offloads())
    } else {
        (0, 0)
    };
    let offer = Hello {
        kind: Kind::Offer,
        flags: native_flags(),
        vnet_header_len: header,
        offloads,
        max_frame: MAX_VNET_FRAME as u32,
        data_path: DATA_PATH_RELAY,
        options: Vec::new(),
    };
    send_hello(stream, &offer.encode(mac), None).await?;

    let deadline = Instant::now() + HELLO_TIMEOUT;
    let answer = match read_first_frame(stream, reader, deadline).await? {
        FirstFrame::Frame(_) => take_hello(reader, Kind::Answer),
        FirstFrame::Silence => None,
    };
    let framing = match answer {
        Some(answer) if answer.vnet_header_len as usize == VNET_HDR_LEN => Framing {
            vnet_header: true,
            offloads: answer.offloads & offloads,
            max_frame: (answer.max_frame as usize).clamp(MAX_FRAME, MAX_VNET_FRAME),
        },
        Some(_) => Framing::PLAIN,
        None => {
            debug!("no answer to the offer: a plain peer");
            Framing::PLAIN
        }
    };
    apply(tap, framing, reader)
}

/// Server side: waits for the peer's first frame; an offer is answered
/// (plain framing only with `offload` false) and returned, anything else
/// (or silence) means a plain peer whose frame stays in `reader`.
pub async fn server(
    stream: &UnixStream,
    tap: &Tap,
    mac: [u8; 6],
    offload: bool,
    reader: &mut FrameReader,
) -> io::Result<(Framing, Option<Offer>)> {
    match read_offer(stream, reader).await? {
        Some(offer) => {
            let framing = answer_offer(stream, tap, mac, offload, reader, &offer.hello).await?;
            Ok((framing, Some(offer)))
        }
        None => plain(tap, reader).map(|framing| (framing, None)),
    }
}

/// Server side, first half: waits for the peer's first frame and returns
/// it as an offer, or `None` for a plain peer (its frame stays in
/// `reader`; call [`plain`]). The fast path decides between the halves.
pub async fn read_offer(
    stream: &UnixStream,
    reader: &mut FrameReader,
) -> io::Result<Option<Offer>> {
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let netns = match read_first_frame(stream, reader, deadline).await? {
        FirstFrame::Frame(netns) => netns,
        FirstFrame::Silence => {
            debug!("peer silent: a plain peer");
            return Ok(None);
        }
    };
    Ok(take_hello(reader, Kind::Offer).map(|hello| Offer { hello, netns }))
}

/// Server side for a plain peer: plain framing on the tap.
pub fn plain(tap: &Tap, reader: &mut FrameReader) -> io::Result<Framing> {
    apply(tap, Framing::PLAIN, reader)
}

/// Server side, second half: answers `hello` for the relay (plain framing
/// only with `offload` false) and applies the agreement to the tap.
pub async fn answer_offer(
    stream: &UnixStream,
    tap: &Tap,
    mac: [u8; 6],
    offload: bool,
    reader: &mut FrameReader,
    hello: &Hello,
) -> io::Result<Framing> {
    let (header, capable) = if offload {
        (VNET_HDR_LEN as u16, tap.capable_offloads())
    } else {
        (0, 0)
    };
    let mut answer = hello.answer(header, capable, MAX_VNET_FRAME as u32);
    let framing = if answer.vnet_header_len == 0 {
        Framing::PLAIN
    } else {
        Framing {
            vnet_header: true,
            offloads: answer.offloads,
            max_frame: (answer.max_frame as usize).clamp(MAX_FRAME, MAX_VNET_FRAME),
        }
    };
    let framing = apply(tap, framing, reader)?;
    answer.offloads = framing.offloads;
    send_hello(stream, &answer.encode(mac), None).await?;
    Ok(framing)
}

/// Sets the tap's offloads and the reader's limit for what was agreed.
fn apply(tap: &Tap, mut framing: Framing, reader: &mut FrameReader) -> io::Result<Framing> {
    framing.offloads = tap.set_offloads(framing.offloads)?;
    reader.set_max_frame(framing.max_frame);
    Ok(framing)
}

/// Removes the first frame from `reader` when it is a hello of `kind`.
fn take_hello(reader: &mut FrameReader, kind: Kind) -> Option<Hello> {
    let frame = reader.peek_frame()?;
    match Hello::decode(frame) {
        Ok(hello) if hello.kind == kind => {
            reader.skip_frame();
            Some(hello)
        }
        Ok(_) => None,
        Err(HelloError::NotHello) => None,
        Err(err) => {
            debug!(%err, "ignoring a hello this relay cannot use");
            None
        }
    }
}

enum FirstFrame {
    /// A whole frame is in the reader; a descriptor may have come with it.
    Frame(Option<OwnedFd>),
    /// Nothing whole arrived before the deadline.
    Silence,
}

/// Reads until the reader holds one whole frame or the deadline passes.
async fn read_first_frame(
    stream: &UnixStream,
    reader: &mut FrameReader,
    deadline: Instant,
) -> io::Result<FirstFrame> {
    let mut netns = None;
    loop {
        match reader.peek_frame_checked() {
            Ok(Some(_)) => return Ok(FirstFrame::Frame(netns)),
            Ok(None) => {}
            Err(err) => return Err(io::Error::new(io::ErrorKind::InvalidData, err)),
        }
        let read = stream.async_io(Interest::READABLE, || {
            recv_with_fd(stream.as_raw_fd(), reader.read_space())
        });
        let Ok(result) = timeout_at(deadline, read).await else {
            return Ok(FirstFrame::Silence);
        };
        let (n, fd) = result?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        reader.advance(n);
        if fd.is_some() {
            netns = fd;
        }
    }
}

/// One `recvmsg` with room for one `SCM_RIGHTS` descriptor.
fn recv_with_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut space = nix::cmsg_space!(RawFd);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut received = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for raw in fds {
                // SAFETY: the kernel just installed this descriptor for us;
                // nothing else owns it. Extra ones are closed on drop.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                received.get_or_insert(owned);
            }
        }
    }
    Ok((msg.bytes, received))
}

/// Sends one hello frame, length prefix in front, with `fd` attached.
///
/// The first `sendmsg` carries the descriptor; a short send (unlikely on an
/// empty socket buffer) is completed with plain writes.
pub async fn send_hello(stream: &UnixStream, frame: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(LEN_PREFIX + frame.len());
    bytes.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    bytes.extend_from_slice(frame);
    let fds: Vec<RawFd> = fd.into_iter().collect();
    let sent = stream
        .async_io(Interest::WRITABLE, || {
            let iov = [io::IoSlice::new(&bytes)];
            let rights = [ControlMessage::ScmRights(&fds)];
            let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
            sendmsg::<()>(
                stream.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(io::Error::from)
        })
        .await?;
    let mut rest = &bytes[sent..];
    while !rest.is_empty() {
        stream.writable().await?;
        match stream.try_write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}
