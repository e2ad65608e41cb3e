//! Starting and stopping a container's relay server (hpk-net-daemon).
//!
//! The server owns the host-side tap, so stopping it removes the tap. For
//! `run` it dies with hpktainer (parent-death signal); for instances it is
//! detached into its own session and outlives hpktainer.

use std::io::Read;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::state::ProcessRef;

/// How long a relay may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a relay may take to stop after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the relay server is told.
pub struct RelaySpec<'a> {
    pub daemon: &'a Path,
    pub socket: &'a Path,
    pub tap: &'a str,
    pub bridge: &'a str,
    pub mtu: u32,
    pub log_level: &'a str,
    /// The container's MAC and address: the only sources the relay lets
    /// through to the bridge.
    pub allow: Option<(&'a str, Ipv4Addr)>,
    /// Which data path the server may wire.
    pub data_path: hpk_net_daemon::veth::DataPathMode,
    /// Outlive hpktainer (instances) instead of dying with it.
    pub detached: bool,
}

/// Starts the server and waits until its socket accepts.
pub fn start(spec: &RelaySpec<'_>) -> Result<ProcessRef> {
    let (ready_read, ready_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|err| Error::step("make the relay's ready pipe", err))?;
    let mut command = Command::new(spec.daemon);
    command
        .arg("server")
        .arg("--socket")
        .arg(spec.socket)
        .args([
            "--tap",
            spec.tap,
            "--bridge",
            spec.bridge,
            "--mtu",
            &spec.mtu.to_string(),
        ])
        .args(["--ready-fd", "3", "--log-level", spec.log_level])
        .args(["--data-path", spec.data_path.as_str()])
        .stdin(Stdio::null());
    if let Some((mac, ip)) = spec.allow {
        command.args(["--allow-mac", mac, "--allow-ip", &ip.to_string()]);
    }
    if spec.detached {
        // A detached relay must not hold hpktainer's output open: whoever
        // reads it would wait for the instance to end.
        let log = detached_log(spec.socket)?;
        command.stdout(Stdio::null()).stderr(log);
    }
    prepare_child(&mut command, ready_write.as_raw_fd(), spec.detached);
    let child = command
        .spawn()
        .map_err(|err| Error::step(format!("start {}", spec.daemon.display()), err))?;
    drop(ready_write);

    let pid = child.id() as i32;
    let process = ProcessRef::of(pid).map_err(|err| Error::step("inspect the relay", err))?;
    if let Err(err) = wait_ready(ready_read) {
        let _ = stop(&process, true);
        return Err(err);
    }
    debug!(pid, tap = spec.tap, "relay server ready");
    Ok(process)
}

/// The log file of a detached process, beside its socket.
pub fn detached_log(socket: &Path) -> Result<std::fs::File> {
    let path = socket.with_extension("log");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|err| Error::step(format!("open {}", path.display()), err))
}

/// Gives the child the ready descriptor as fd 3 and ties its life to ours
/// (or detaches it into a session of its own).
fn prepare_child(command: &mut Command, ready_fd: i32, detached: bool) {
    let parent = std::process::id() as i32;
    // SAFETY: only async-signal-safe calls (dup2, fcntl, prctl, getppid,
    // setsid) run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let moved = if ready_fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(ready_fd, 3)
            };
            if moved < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if detached {
                libc::setsid();
            } else {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
            }
            Ok(())
        });
    }
}

/// Waits for the server's ready byte; EOF means it failed (it said why on
/// stderr).
fn wait_ready(ready: OwnedFd) -> Result<()> {
    let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(READY_TIMEOUT.as_millis() as i32).expect("fits");
    let polled = poll(&mut fds, timeout).map_err(|err| Error::step("wait for the relay", err))?;
    if polled == 0 {
        return Err(Error::step(
            "start the relay",
            "it did not report ready within 10 s",
        ));
    }
    let mut byte = [0u8];
    let mut file = std::fs::File::from(ready);
    match file.read(&mut byte) {
        Ok(1) => Ok(()),
        _ => Err(Error::step(
            "start the relay",
            "it exited before it was ready (see above)",
        )),
    }
}

/// Stops a relay: SIGTERM, a bounded wait, then SIGKILL. `reap` when it is
/// our child. Stopping one that is already gone is success.
///
/// The wait is on a pidfd, which works for processes that are not our
/// children (a detached instance relay) and cannot be fooled by pid reuse
/// once opened; the start time is checked after opening it.
pub fn stop(process: &ProcessRef, reap: bool) -> Result<()> {
    let Some(pidfd) = pidfd_open(process.pid) else {
        return Ok(());
    };
    if !process.is_alive() {
        reap_quietly(process.pid, reap);
        return Ok(());
    }
    let pid = Pid::from_raw(process.pid);
    let _ = kill(pid, Signal::SIGTERM);
    if !wait_exit(&pidfd, STOP_TIMEOUT) {
        warn!(
            pid = process.pid,
            "relay ignored SIGTERM for 5 s; killing it"
        );
        let _ = kill(pid, Signal::SIGKILL);
        wait_exit(&pidfd, STOP_TIMEOUT);
    }
    reap_quietly(process.pid, reap);
    Ok(())
}

/// A pidfd for `pid`, `None` when the process is gone.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor to us alone.
    Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// Whether the process behind `pidfd` exited within `timeout`.
fn wait_exit(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(timeout.as_millis() as i32).expect("fits");
    matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
}

fn reap_quietly(pid: i32, reap: bool) {
    if reap {
        let flags = nix::sys::wait::WaitPidFlag::WNOHANG;
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), Some(flags));
    }
}
