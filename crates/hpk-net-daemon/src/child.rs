//! The user's command under the client: started once the network is up,
//! sent the signals meant for it, and reaped.
//!
//! The client may be PID 1 of the container, so it reaps every child that
//! ends (orphans included), not only its own command. Signals that a
//! supervisor sends to the client alone (SIGTERM, SIGHUP, SIGUSR1/2) are
//! passed on. SIGINT is not: a terminal's Ctrl-C already reaches every
//! process of its foreground group, the command included, so passing it on
//! would deliver it twice; the client just keeps relaying until the command
//! ends.

use std::ffi::OsString;
use std::process::Command;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{Signal as SignalStream, SignalKind, signal};
use tracing::{debug, info};

/// Signals that are passed on to the command.
const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Signal streams, installed before the command starts so none is missed.
pub struct Supervisor {
    forwarded: Vec<(Signal, SignalStream)>,
    child_ended: SignalStream,
    interrupt: SignalStream,
    reap_orphans: bool,
}

impl Supervisor {
    /// Installs the handlers. Call before [`spawn`](Self::spawn).
    pub fn install() -> Result<Self> {
        let mut forwarded = Vec::new();
        for sig in FORWARDED {
            let stream = signal(SignalKind::from_raw(sig as i32))
                .with_context(|| format!("install {sig} handler"))?;
            forwarded.push((sig, stream));
        }
        Ok(Self {
            forwarded,
            child_ended: signal(SignalKind::child()).context("install SIGCHLD handler")?,
            interrupt: signal(SignalKind::interrupt()).context("install SIGINT handler")?,
            reap_orphans: true,
        })
    }

    /// Reaps only the command, leaving the caller's other children (a relay
    /// server, say) to the caller. For processes that are not PID 1.
    pub fn reap_command_only(mut self) -> Self {
        self.reap_orphans = false;
        self
    }

    /// Starts `command` and supervises it until it ends; returns its exit
    /// status the way a shell reports it (128+n when killed by signal n).
    ///
    /// The command dies with this process: when apptainer is killed, the
    /// kernel kills the client (its parent-death signal), and without the
    /// same signal here the user's command would live on as an orphan with
    /// no network, holding whatever the container held.
    pub async fn run(self, command: &[OsString]) -> Result<i32> {
        let (program, args) = command.split_first().context("empty command")?;
        let mut built = Command::new(program);
        built.args(args);
        die_with_parent(&mut built);
        self.run_command(built).await
    }

    /// Like [`run`](Self::run), for a command built by the caller (with its
    /// own environment or `pre_exec` steps).
    pub async fn run_command(self, command: Command) -> Result<i32> {
        self.run_command_then(command, |_| {}).await
    }

    /// Like [`run_command`](Self::run_command), calling `started` with the
    /// command's pid once it runs and before any signal is forwarded.
    pub async fn run_command_then(
        mut self,
        mut command: Command,
        started: impl FnOnce(Pid),
    ) -> Result<i32> {
        let child = command
            .spawn()
            .with_context(|| format!("start {}", command.get_program().to_string_lossy()))?;
        // The child is reaped by pid below, never through `Child::wait`.
        let pid = Pid::from_raw(child.id() as i32);
        info!(pid = pid.as_raw(), program = ?command.get_program(), "command started");
        started(pid);
        loop {
            if let Some(status) = reap(pid, self.reap_orphans)? {
                info!(status, "command ended");
                return Ok(status);
            }
            self.next_event(pid).await;
        }
    }

    /// Waits for a signal; forwards it if it is meant for the command.
    async fn next_event(&mut self, pid: Pid) {
        let forwarded = futures_select(&mut self.forwarded);
        tokio::select! {
            _ = self.child_ended.recv() => {}
            _ = self.interrupt.recv() => debug!("SIGINT: left to the terminal's delivery"),
            sig = forwarded => {
                debug!(%sig, "forwarding signal to the command");
                // The command may have ended a moment ago: ESRCH is harmless.
                let _ = kill(pid, sig);
            }
        }
    }
}

/// Makes the kernel SIGKILL the child started by `command` when this
/// process's calling thread ends (parent-death signal), and ends the child
/// at once if the parent is already gone. Call from the thread that lives
/// as long as the process (the runtime's only thread): the signal follows
/// the thread, not the process.
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as i32;
    // SAFETY: prctl, getppid and _exit are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Resolves with the first of `streams` that receives its signal.
async fn futures_select(streams: &mut [(Signal, SignalStream)]) -> Signal {
    std::future::poll_fn(|cx| {
        for (sig, stream) in streams.iter_mut() {
            if stream.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready(*sig);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Reaps ended children (every one, or only the command); returns the
/// command's status once it has ended.
fn reap(command: Pid, orphans_too: bool) -> Result<Option<i32>> {
    let target = if orphans_too { None } else { Some(command) };
    loop {
        let status = match waitpid(target, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(None),
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err).context("wait for children"),
            Ok(status) => status,
        };
        let code = match status {
            WaitStatus::Exited(pid, code) if pid == command => code,
            WaitStatus::Signaled(pid, sig, _) if pid == command => 128 + sig as i32,
            other => {
                debug!(?other, "reaped an orphan");
                continue;
            }
        };
        return Ok(Some(code));
    }
}
