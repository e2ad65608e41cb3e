//! Starting the testbed's long-lived processes: each reports readiness on
//! descriptor 3 and blocks on the lifeline at descriptor 4, so the testbed
//! never sleeps to wait and its processes never outlive it.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::process::{PATIENCE, Proc};

/// Where a started process finds the write end of its readiness pipe.
pub(super) const READY_FD: RawFd = 3;
/// Where a started process finds the read end of the lifeline.
pub(super) const LIFELINE_FD: RawFd = 4;

/// A pipe whose write end only this process holds (close-on-exec, so no
/// child inherits it): the read end reports end-of-file once this process
/// is gone, however it ended.
pub(super) fn lifeline() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).context("make the lifeline pipe")
}

/// Starts `command` with the readiness pipe on [`READY_FD`], `lifeline` (a
/// read end) on [`LIFELINE_FD`], stdin empty, stdout and stderr to `log`,
/// and waits until it writes `1` to [`READY_FD`].
pub(super) fn spawn_ready(
    what: &str,
    mut command: Command,
    lifeline: &OwnedFd,
    log: &Path,
) -> Result<Proc> {
    let (ready_read, ready_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    let output = File::create(log).with_context(|| format!("create {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(output.try_clone().context("dup log")?)
        .stderr(output);

    let sources = [ready_write.as_raw_fd(), lifeline.as_raw_fd()];
    // SAFETY: the closure only calls fcntl and dup2, which are
    // async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(move || place_fds(sources));
    }
    let proc = Proc::spawn(what, command);
    // Only the child may hold the write end, so its death reads as EOF.
    drop(ready_write);

    wait_ready(&ready_read).with_context(|| {
        let said = std::fs::read_to_string(log).unwrap_or_default();
        format!("{what} did not get ready; it said: {}", said.trim())
    })?;
    Ok(proc)
}

/// Puts `sources` on [`READY_FD`] and [`LIFELINE_FD`], without a clear
/// close-on-exec flag anywhere else.
fn place_fds(sources: [RawFd; 2]) -> io::Result<()> {
    // Step aside first: a source may already sit on 3 or 4, and the first
    // dup2 would clobber it.
    let mut aside = [0; 2];
    for (slot, fd) in aside.iter_mut().zip(sources) {
        // SAFETY: fcntl on a descriptor number; an invalid one only errors.
        *slot = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        if *slot < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    for (target, fd) in [READY_FD, LIFELINE_FD].into_iter().zip(aside) {
        // SAFETY: dup2 on descriptor numbers; the target's flag is cleared,
        // so exec keeps it.
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits (bounded) for the byte `1` on `ready`.
fn wait_ready(ready: &OwnedFd) -> Result<()> {
    let timeout = PollTimeout::try_from(PATIENCE).context("patience as poll timeout")?;
    let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, timeout) {
            Ok(0) => bail!("no word after {PATIENCE:?}"),
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno).context("poll the readiness pipe"),
        }
    }

    let mut byte = [0u8];
    let mut file = File::from(ready.try_clone().context("dup readiness pipe")?);
    match file.read(&mut byte).context("read the readiness pipe")? {
        0 => bail!("it ended (or closed its readiness descriptor) first"),
        _ if byte[0] == b'1' => Ok(()),
        _ => bail!("it wrote {:?} instead of 1", byte[0] as char),
    }
}
