//! Small kernel interfaces the stand-in needs that nix does not wrap: loopback up by ioctl,
//! user-namespace id maps, process start times, pidfds, and exec with a PATH search.

use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// Sets `IFF_UP` on `lo` in the current network namespace, the way apptainer's `none` network
/// does: an interface ioctl on a datagram socket, so the image needs no `ip` of its own.
pub fn loopback_up() -> Result<()> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("open a socket to bring lo up")?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(Errno::last()).context("read the flags of lo");
    }
    // SAFETY: the kernel just filled the flags member of the union.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(Errno::last()).context("set lo up");
    }
    Ok(())
}

/// Maps one uid and one gid into the user namespace this process just unshared
/// (`inside` ← `outside`), denying setgroups first as an unprivileged map requires.
pub fn write_id_maps(inside: (u32, u32), outside: (u32, u32)) -> Result<()> {
    fs::write(
        "/proc/self/uid_map",
        format!("{} {} 1\n", inside.0, outside.0),
    )
    .context("write uid_map")?;
    fs::write("/proc/self/setgroups", "deny").context("deny setgroups")?;
    fs::write(
        "/proc/self/gid_map",
        format!("{} {} 1\n", inside.1, outside.1),
    )
    .context("write gid_map")?;
    Ok(())
}

/// The start time (clock ticks after boot) of a live process; `None` once it has ended,
/// zombies included.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // fields[0] is the state (field 3 of proc_pid_stat(5)); start time is field 22.
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Device and inode of a namespace file: equal pairs mean the same namespace.
pub fn namespace_id(path: &Path) -> Result<(u64, u64)> {
    let meta = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok((meta.dev(), meta.ino()))
}

/// A process handle that cannot be confused with a later process of the same pid.
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// Opens `pid` if it is still the process that started at `start`.
    pub fn open(pid: i32, start: u64) -> Option<Pidfd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            return None;
        }
        // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
        let fd = Pidfd(unsafe { OwnedFd::from_raw_fd(raw as i32) });
        // Checked after opening: if the pid was reused before, the start time differs now.
        (start_time(pid) == Some(start)).then_some(fd)
    }

    /// Sends `signal`; Ok if the process had already ended.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let null = std::ptr::null::<libc::siginfo_t>();
        // SAFETY: pidfd_send_signal with our open pidfd, a signal number, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal as libc::c_int,
                null,
                0,
            )
        };
        match Errno::result(rc) {
            Ok(_) | Err(Errno::ESRCH) => Ok(()),
            Err(err) => Err(anyhow!("send {signal}: {err}")),
        }
    }

    /// Waits up to `timeout` for the process to end; whether it did.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(
                std::os::fd::AsFd::as_fd(&self.0),
                PollFlags::POLLIN,
            )];
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(0) if left.is_zero() => return false,
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => return true,
                Err(_) => return false,
            }
        }
    }
}

/// Replaces this process with `argv` in environment `env`. A bare command name is looked up
/// in `path` (the container's PATH), as a shell would. Returns only on failure.
pub fn exec(argv: &[CString], env: &[CString], path: &OsStr) -> anyhow::Error {
    let Some(program) = argv.first() else {
        return anyhow!("nothing to execute");
    };
    if program.as_bytes().contains(&b'/') {
        let err = nix::unistd::execve(program, argv, env).unwrap_err();
        return anyhow!("exec {}: {err}", program.to_string_lossy());
    }
    let mut last = Errno::ENOENT;
    for dir in path.as_bytes().split(|&b| b == b':') {
        let dir = if dir.is_empty() { &b"."[..] } else { dir };
        let mut candidate = dir.to_vec();
        candidate.push(b'/');
        candidate.extend_from_slice(program.as_bytes());
        let Ok(candidate) = CString::new(candidate) else {
            continue;
        };
        let err = nix::unistd::execve(&candidate, argv, env).unwrap_err();
        // Like execvp: keep looking past a missing file, remember a permission problem.
        if err != Errno::ENOENT && err != Errno::ENOTDIR {
            last = err;
        }
    }
    anyhow!("exec {}: {last} (searched PATH)", program.to_string_lossy())
}

/// Names this process (its `comm`, as `ps` shows it).
pub fn set_name(name: &CStr) {
    let _ = nix::sys::prctl::set_name(name);
}
