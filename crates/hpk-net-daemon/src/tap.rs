//! The tap device: created through `/dev/net/tun`, read and written raw.
//!
//! tun-rs opens the device; the relay then keeps only the descriptor and
//! does its own non-blocking reads and writes, so a frame costs exactly one
//! system call and no copy beyond the kernel's. The tap is never made
//! persistent: when the process that holds it ends, the kernel removes it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;
use tun_rs::{DeviceBuilder, Layer};

/// What became of one frame written to the tap.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The kernel took the frame.
    Sent,
    /// The kernel refused it for a passing reason (link down, queue full);
    /// the frame is lost and the relay goes on.
    Dropped(Errno),
}

/// A tap device opened by this process.
pub struct Tap {
    fd: AsyncFd<OwnedFd>,
    name: String,
}

impl Tap {
    /// Creates the tap `name` in the current network namespace.
    ///
    /// Fails when a link of that name exists already; the caller decides
    /// whether that is an error or a sign that another relay owns it.
    pub fn create(name: &str) -> io::Result<Self> {
        let device = DeviceBuilder::new()
            .name(name)
            .layer(Layer::L2)
            .packet_information(false)
            // Down until configured: a link that comes up with its random
            // MAC derives its IPv6 link-local from it and keeps that after
            // the MAC changes, which the source filter then rightly drops.
            .enable(false)
            .build_sync()?;
        // SAFETY: into_raw_fd hands over sole ownership of a valid descriptor.
        let owned = unsafe { OwnedFd::from_raw_fd(device.into_raw_fd()) };
        set_nonblocking(owned.as_fd())?;
        // SAFETY: an OwnedFd stays open and keeps its number until dropped,
        // and the AsyncFd owns it, so it cannot be closed underneath.
        let fd = unsafe { AsyncFd::register(owned) }.map_err(|err| err.into_parts().1)?;
        Ok(Self {
            fd,
            name: name.to_owned(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The registration with tokio's reactor, for readiness.
    pub fn async_fd(&self) -> &AsyncFd<OwnedFd> {
        &self.fd
    }

    /// Writes one frame without waiting. Refusals that only cost this frame
    /// (EIO when the link is down, EAGAIN or ENOBUFS when a queue is full,
    /// EINVAL for a frame the device rejects) are reported as `Dropped`.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<WriteOutcome> {
        loop {
            match nix::unistd::write(self.fd.get_ref(), frame) {
                Ok(_) => return Ok(WriteOutcome::Sent),
                Err(Errno::EINTR) => continue,
                Err(
                    errno @ (Errno::EIO
                    | Errno::EAGAIN
                    | Errno::ENOBUFS
                    | Errno::EINVAL
                    | Errno::EMSGSIZE
                    | Errno::ENOMEM),
                ) => return Ok(WriteOutcome::Dropped(errno)),
                Err(errno) => return Err(errno.into()),
            }
        }
    }
}

/// Reads one frame from a tap descriptor; `WouldBlock` when none is queued.
pub fn read_frame(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::read(fd, buf) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.get_ref().as_raw_fd()
    }
}
