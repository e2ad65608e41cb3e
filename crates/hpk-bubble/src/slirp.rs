//! slirp4netns attached to a bubble, and its API socket.
//!
//! slirp4netns signals readiness by writing `1` to `--ready-fd` and ends
//! when `--exit-fd` reports end-of-file. hpk-bubble holds the only write end
//! of that pipe, so slirp4netns ends with hpk-bubble, even after `kill -9`.
//! Each API request goes on its own connection: write, half-close, read the
//! whole answer.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::fcntl::OFlag;
use serde_json::{Value, json};
use tracing::{debug, warn};

use crate::plan::{Forward, SLIRP_MTU, SlirpNet};
use crate::sys::{self, Pidfd};
use crate::{Error, Result};

/// Where slirp4netns finds the readiness pipe.
const READY_FD: RawFd = 3;
/// Where slirp4netns finds the exit pipe.
const EXIT_FD: RawFd = 4;
/// How long slirp4netns may take to attach.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running slirp4netns, ended by [`Slirp::stop`].
pub struct Slirp {
    child: Child,
    exit: Option<OwnedFd>,
    api: PathBuf,
}

/// How to attach slirp4netns.
pub struct Attach<'a> {
    pub program: &'a Path,
    pub net: SlirpNet,
    /// The instance's pid, whose user and network namespaces slirp enters.
    pub pid: i32,
    pub api_socket: &'a Path,
    pub log: &'a Path,
}

impl Slirp {
    /// Starts slirp4netns and waits until tap0 is configured.
    pub fn attach(how: &Attach) -> Result<Slirp> {
        let pipe =
            |what| nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::io(what, e.into()));
        let (ready_read, ready_write) = pipe("make the ready pipe")?;
        let (exit_read, exit_write) = pipe("make the exit pipe")?;
        let log = File::create(how.log)
            .map_err(|e| Error::io(format!("create {}", how.log.display()), e))?;
        let log_err = log.try_clone().map_err(|e| Error::io("dup the log", e))?;

        let mut command = Command::new(how.program);
        command
            .args(["--configure", "--mtu", &SLIRP_MTU.to_string()])
            .args(["--cidr", &how.net.cidr.to_string()])
            .arg("--disable-host-loopback")
            .arg("--api-socket")
            .arg(how.api_socket)
            .args(["--ready-fd", &READY_FD.to_string()])
            .args(["--exit-fd", &EXIT_FD.to_string()])
            // The instance's network namespace belongs to its user namespace:
            // enter that first, as an unprivileged launcher has to.
            .arg("--userns-path")
            .arg(format!("/proc/{}/ns/user", how.pid))
            .args([&how.pid.to_string(), "tap0"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let sources = [ready_write.as_raw_fd(), exit_read.as_raw_fd()];
        // SAFETY: the closure only makes async-signal-safe calls (sigprocmask, setpgid,
        // fcntl, dup2).
        unsafe {
            command.pre_exec(move || {
                sys::unblock_all_in_child()?;
                // A process group of its own: a terminal's Ctrl-C reaches
                // only hpk-bubble, which then tears down in order.
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                place_fds(sources)
            });
        }
        let child = command
            .spawn()
            .map_err(|e| Error::io(format!("run {}", how.program.display()), e))?;
        // Only slirp4netns may hold these ends: its death then reads as end-of-file.
        drop((ready_write, exit_read));

        let mut slirp = Slirp {
            child,
            exit: Some(exit_write),
            api: how.api_socket.to_owned(),
        };
        if let Err(err) = wait_ready(ready_read) {
            slirp.stop();
            let said = std::fs::read_to_string(how.log).unwrap_or_default();
            return Err(Error::Slirp(format!("{err}; it said: {}", said.trim())));
        }
        Ok(slirp)
    }

    /// slirp4netns' pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// A pidfd on slirp4netns, to notice its death.
    pub fn pidfd(&self) -> Option<Pidfd> {
        Pidfd::open(self.pid(), None)
    }

    /// Adds `forward` and returns its id.
    pub fn add_forward(&self, forward: Forward) -> Result<u64> {
        add_hostfwd(&self.api, forward.proto, forward.port, forward.port)
    }

    /// Ends slirp4netns: closes the exit pipe, then kills it if it lingers.
    /// Returns how it ended, for the teardown report.
    pub fn stop(&mut self) -> Option<String> {
        self.exit.take();
        let ended = self
            .pidfd()
            .is_none_or(|fd| fd.wait(Duration::from_secs(5)));
        if !ended {
            warn!(
                pid = self.pid(),
                "slirp4netns ignored its exit pipe; killing it"
            );
            let _ = self.child.kill();
        }
        match self.child.wait() {
            Ok(status) => {
                debug!(%status, "slirp4netns ended");
                None
            }
            Err(e) => Some(format!("wait for slirp4netns: {e}")),
        }
    }
}

/// Moves the two descriptors to [`READY_FD`] and [`EXIT_FD`], inheritable.
/// Via high numbers first, so neither source is overwritten by the other's move.
fn place_fds(sources: [RawFd; 2]) -> std::io::Result<()> {
    let mut high = [0; 2];
    for (slot, fd) in high.iter_mut().zip(sources) {
        // SAFETY: fcntl on a descriptor we own; async-signal-safe.
        *slot = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        if *slot < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for (fd, target) in high.into_iter().zip([READY_FD, EXIT_FD]) {
        // SAFETY: dup2 is async-signal-safe; the new descriptor has no close-on-exec.
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn wait_ready(ready: OwnedFd) -> std::result::Result<(), String> {
    if !sys::wait_readable(&ready, READY_TIMEOUT) {
        return Err(format!("not ready after {READY_TIMEOUT:?}"));
    }
    let mut byte = [0u8; 1];
    match File::from(ready).read(&mut byte) {
        Ok(1) if byte[0] == b'1' => Ok(()),
        Ok(0) => Err("ended before it was ready".into()),
        Ok(_) => Err(format!(
            "wrote {:?} to its ready pipe, not '1'",
            byte[0] as char
        )),
        Err(e) => Err(format!("read its ready pipe: {e}")),
    }
}

/// Forwards `proto` port `host_port` of the host to `guest_port` of the
/// bubble; returns the forward's id.
pub fn add_hostfwd(api: &Path, proto: &str, host_port: u16, guest_port: u16) -> Result<u64> {
    let request = json!({
        "execute": "add_hostfwd",
        "arguments": {"proto": proto, "host_port": host_port, "guest_port": guest_port},
    });
    let reply = call(api, &request)
        .map_err(|e| Error::Slirp(format!("forward {proto} port {host_port}: {e}")))?;
    reply["return"]["id"].as_u64().ok_or_else(|| {
        Error::Slirp(format!(
            "answered {reply} to add_hostfwd {proto} {host_port}"
        ))
    })
}

/// The forwards slirp4netns has: its `list_hostfwd` entries.
pub fn list_hostfwd(api: &Path) -> Result<Vec<Value>> {
    let reply = call(api, &json!({"execute": "list_hostfwd"}))
        .map_err(|e| Error::Slirp(format!("list forwards: {e}")))?;
    // slirp4netns answers this one without the `return` wrapper
    // (`{"entries": […]}`); accept both shapes.
    reply
        .get("return")
        .unwrap_or(&reply)
        .get("entries")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| Error::Slirp(format!("answered {reply} to list_hostfwd")))
}

/// One request; an `error` member in the answer becomes an error.
fn call(api: &Path, request: &Value) -> std::result::Result<Value, String> {
    let mut stream =
        UnixStream::connect(api).map_err(|e| format!("connect to {}: {e}", api.display()))?;
    let io = |e: std::io::Error| format!("talk to {}: {e}", api.display());
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    stream
        .write_all(request.to_string().as_bytes())
        .map_err(io)?;
    stream.shutdown(std::net::Shutdown::Write).map_err(io)?;

    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(io)?;
    let reply: Value =
        serde_json::from_str(&answer).map_err(|_| format!("answered {answer:?}, not JSON"))?;
    if let Some(error) = reply.get("error") {
        return Err(format!("refused: {error}"));
    }
    Ok(reply)
}
