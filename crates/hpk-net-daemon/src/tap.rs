//! The tap device: created through `/dev/net/tun`, read and written raw.
//!
//! tun-rs opens the device (with `IFF_VNET_HDR`); the relay then keeps only
//! the descriptor and does its own non-blocking reads and writes, so a frame
//! costs exactly one system call and no copy beyond the kernel's. The tap is
//! never made persistent: when the process that holds it ends, the kernel
//! removes it.
//!
//! Every frame on the descriptor carries a [`VNET_HDR_LEN`]-byte
//! `virtio_net_hdr` in front, in native byte order. Which offloads the kernel
//! may use towards us (`TUNSETOFFLOAD`: checksum left to the receiver, TCP
//! and UDP super-frames up to 64 KiB) is set per connection by
//! [`Tap::set_offloads`]: the agreed set with a peer that takes the header,
//! none with a plain peer. With none, every frame we read is complete and
//! checksummed and its header all zero, so the plain path drops the header
//! on read ([`read_frame_plain`]) and puts a zero one back on write
//! ([`Tap::write_frame_plain`]), in the same single system call.
//! tun-rs's own GSO helpers parse an IP header at byte 0, which fits TUN
//! devices, not taps; here the header is passed through untouched.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;
use tun_rs::{DeviceBuilder, Layer};

/// Bytes of `virtio_net_hdr` in front of every frame on the tap: the
/// original 10-byte layout (flags, gso type, header length, gso size,
/// checksum start and offset). The 12-byte variant only adds `num_buffers`,
/// which a tap never uses.
pub const VNET_HDR_LEN: usize = 10;

/// Offloads we ask for: checksums left to the receiver, TCP segmentation for
/// IPv4 and IPv6 (with ECN), and UDP segmentation where the kernel has it
/// (6.2 and later).
pub const WANTED_OFFLOADS: u32 = libc::TUN_F_CSUM
    | libc::TUN_F_TSO4
    | libc::TUN_F_TSO6
    | libc::TUN_F_TSO_ECN
    | libc::TUN_F_USO4
    | libc::TUN_F_USO6;

/// Smaller sets to fall back to, in order, when the kernel refuses more.
const OFFLOAD_FALLBACKS: [u32; 4] = [
    WANTED_OFFLOADS,
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN,
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6,
    libc::TUN_F_CSUM,
];

/// The all-zero header: no checksum to finish, not a super-frame.
const ZERO_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

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
    /// The offloads the kernel took when asked at creation.
    capable: u32,
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
            // IFF_VNET_HDR; tun-rs also turns offloads on, which
            // `reset_vnet` undoes until a peer has agreed to them.
            .offload(true)
            // Down until configured: a link that comes up with its random
            // MAC derives its IPv6 link-local from it and keeps that after
            // the MAC changes, which the source filter then rightly drops.
            .enable(false)
            .build_sync()?;
        // SAFETY: into_raw_fd hands over sole ownership of a valid descriptor.
        let owned = unsafe { OwnedFd::from_raw_fd(device.into_raw_fd()) };
        set_nonblocking(owned.as_fd())?;
        reset_vnet(owned.as_fd())?;
        let capable = probe_offloads(owned.as_fd())?;
        // SAFETY: an OwnedFd stays open and keeps its number until dropped,
        // and the AsyncFd owns it, so it cannot be closed underneath.
        let fd = unsafe { AsyncFd::register(owned) }.map_err(|err| err.into_parts().1)?;
        Ok(Self {
            fd,
            name: name.to_owned(),
            capable,
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

    /// The `TUN_F_*` offloads this kernel takes on this tap.
    pub fn capable_offloads(&self) -> u32 {
        self.capable
    }

    /// Puts `wanted` (cut to what the tap is capable of) in force, or turns
    /// every offload off with 0; returns the set now in force.
    pub fn set_offloads(&self, wanted: u32) -> io::Result<u32> {
        let offloads = wanted & self.capable;
        set_offload(self.fd.get_ref().as_fd(), offloads)?;
        Ok(offloads)
    }

    /// Writes one frame, its vnet header in front, without waiting. Refusals that only cost this frame
    /// (EIO when the link is down, EAGAIN or ENOBUFS when a queue is full,
    /// EINVAL for a frame the device rejects) are reported as `Dropped`.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<WriteOutcome> {
        self.write_with(|fd| nix::unistd::write(fd, frame))
    }

    /// Writes one bare Ethernet frame from a plain peer: a zero vnet
    /// header goes in front, in the same system call.
    pub fn write_frame_plain(&self, frame: &[u8]) -> io::Result<WriteOutcome> {
        let parts = [IoSlice::new(&ZERO_HDR), IoSlice::new(frame)];
        self.write_with(|fd| nix::sys::uio::writev(fd, &parts))
    }

    fn write_with(
        &self,
        mut write: impl FnMut(&OwnedFd) -> nix::Result<usize>,
    ) -> io::Result<WriteOutcome> {
        loop {
            match write(self.fd.get_ref()) {
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

/// Reads one frame, vnet header included, from a tap descriptor;
/// `WouldBlock` when none is queued.
pub fn read_frame(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::read(fd, buf) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Reads one frame for a plain peer: the vnet header lands in a scratch
/// array, the bare frame in `buf`; returns the frame's length.
///
/// With offloads off the header is all zero. A frame whose header asks for
/// a checksum or segmentation was queued while a previous connection had
/// offloads on; a plain peer could not use it, so it is skipped.
pub fn read_frame_plain(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    let mut header = [0u8; VNET_HDR_LEN];
    loop {
        let mut parts = [IoSliceMut::new(&mut header), IoSliceMut::new(&mut *buf)];
        match nix::sys::uio::readv(fd, &mut parts) {
            Err(Errno::EINTR) => continue,
            Ok(_) if needs_offload(&header) => continue,
            Ok(n) => return Ok(n.saturating_sub(VNET_HDR_LEN)),
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Whether a vnet header asks the receiver to finish a checksum
/// (`VIRTIO_NET_HDR_F_NEEDS_CSUM`) or to segment (`gso_type` not NONE).
fn needs_offload(header: &[u8; VNET_HDR_LEN]) -> bool {
    const NEEDS_CSUM: u8 = 1;
    header[0] & NEEDS_CSUM != 0 || header[1] != 0
}

/// Sets the header size we read and write, and turns offloads off until a
/// peer agrees to them.
fn reset_vnet(fd: BorrowedFd<'_>) -> io::Result<()> {
    let size = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
    // points at a live local for the duration of the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    set_offload(fd, 0)
}

/// Finds the largest offload set the kernel takes, then turns offloads
/// off again until a peer agrees. Older kernels refuse USO, some builds ECN.
fn probe_offloads(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut capable = 0;
    for candidate in OFFLOAD_FALLBACKS {
        if set_offload(fd, candidate).is_ok() {
            capable = candidate;
            break;
        }
    }
    set_offload(fd, 0)?;
    Ok(capable)
}

fn set_offload(fd: BorrowedFd<'_>, offloads: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is shared.
    if unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            offloads as libc::c_ulong,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
