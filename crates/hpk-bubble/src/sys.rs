//! The few system calls hpk-bubble needs beyond std: process identity
//! (pid plus start time, since pids are reused), pidfds to wait on
//! processes that are not our children, and the signal mask.

use std::fs;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

use crate::{Error, Result};

/// The signals that end a foreground `start`.
pub const STOP_SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// The start time of `pid` in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), or `None` if it does not exist.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `start`.
pub fn alive(pid: i32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// A pidfd: a handle on one process that a reused pid cannot fool.
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// Opens `pid` if it is still the process that started at `start`.
    pub fn open(pid: i32, start: Option<u64>) -> Option<Pidfd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the kernel just returned this descriptor, owned by nobody else.
        let pidfd = Pidfd(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        // Checked after opening: the pidfd now pins this very process.
        match start {
            Some(start) if start_time(pid) != Some(start) => None,
            _ => Some(pidfd),
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal with a valid pidfd, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal as i32,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        match rc {
            0 => Ok(()),
            _ => Err(Error::io(
                format!("send {signal}"),
                std::io::Error::last_os_error(),
            )),
        }
    }

    /// Waits up to `timeout` for the process to end; true if it did.
    pub fn wait(&self, timeout: Duration) -> bool {
        wait_readable(self, timeout)
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Waits up to `timeout` for `fd` to become readable (or hang up).
pub fn wait_readable(fd: &impl AsFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms =
            PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) if left.is_zero() => return false,
            Ok(0) => continue,
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// The set of [`STOP_SIGNALS`].
pub fn stop_set() -> SigSet {
    let mut set = SigSet::empty();
    for signal in STOP_SIGNALS {
        set.add(signal);
    }
    set
}

/// Blocks the stop signals on the calling thread, so they wait, pending,
/// until the foreground loop reads them from a signalfd; a signal during
/// setup then rolls back instead of killing hpk-bubble half-way.
pub fn block_stop_signals() -> Result<()> {
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&stop_set()), None)
        .map_err(|e| Error::io("block SIGINT, SIGTERM and SIGHUP", e.into()))
}

/// For `pre_exec`: children must not inherit the blocked signals (apptainer
/// and slirp4netns expect SIGTERM to work). Only async-signal-safe calls.
pub fn unblock_all_in_child() -> std::io::Result<()> {
    // SAFETY: sigemptyset and sigprocmask are async-signal-safe and get valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
