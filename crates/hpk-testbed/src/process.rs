//! Processes started by a test: readiness without sleeps, and a guard that
//! kills by pid and reaps, so nothing outlives a failed assertion.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a test waits for a process to become ready or to end.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A child process killed (SIGKILL, by pid) and reaped when dropped.
pub struct Proc {
    child: Option<Child>,
    what: String,
}

impl Proc {
    /// Spawns `command` as is.
    pub fn spawn(what: &str, mut command: Command) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("start {what}: {err}"));
        Self {
            child: Some(child),
            what: what.to_owned(),
        }
    }

    /// Spawns `command` with a pipe's write end as descriptor 3, to be given
    /// as `--ready-fd 3`, and waits until the process writes to it.
    pub fn spawn_ready(what: &str, mut command: Command) -> Self {
        // Close-on-exec, so processes other tests start meanwhile don't
        // inherit the write end and hide this child's early death.
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let raw = write_end.as_raw_fd();
        // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let ok = if raw == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0) >= 0
                } else {
                    libc::dup2(raw, 3) >= 0
                };
                if !ok {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut proc = Self::spawn(what, command);
        drop(write_end);
        let got = read_with_timeout(read_end, PATIENCE);
        assert_eq!(got, Some(b'1'), "{what} did not report ready");
        let _ = proc.try_status();
        proc
    }

    /// Spawns `command` with stdout piped and waits for a line equal to
    /// `line`; the rest of stdout is drained in the background.
    pub fn spawn_until_line(what: &str, command: Command, line: &str) -> Self {
        let wanted = line.to_owned();
        Self::spawn_until(what, command, move |got| got == wanted).0
    }

    /// Spawns `command` with stdout piped and waits for the first line that
    /// `wanted` accepts, returning it; the rest of stdout is drained.
    pub fn spawn_until(
        what: &str,
        mut command: Command,
        wanted: impl Fn(&str) -> bool + Send + 'static,
    ) -> (Self, String) {
        command.stdout(Stdio::piped());
        let mut proc = Self::spawn(what, command);
        let stdout = proc.child.as_mut().unwrap().stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && wanted(&line) {
                    let _ = tx.send(line);
                    sent = true;
                }
            }
        });
        let line = rx
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("{what} never printed the line the test waits for"));
        (proc, line)
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().expect("try_wait")
    }

    /// Sends `signal` and waits (bounded) for the process to end.
    pub fn stop(mut self, signal: Signal) -> ExitStatus {
        let _ = kill(Pid::from_raw(self.pid()), signal);
        self.wait()
    }

    /// Waits (bounded) for the process to end by itself.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.try_status() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not end in time",
                self.what
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// The exit status as a shell reports it (128+n when killed by signal n).
pub fn shell_status(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Reads one byte within `timeout`; `None` on EOF or timeout.
fn read_with_timeout(fd: OwnedFd, timeout: Duration) -> Option<u8> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut file = std::fs::File::from(fd);
        let mut byte = [0u8];
        let got = file
            .read(&mut byte)
            .ok()
            .filter(|&n| n == 1)
            .map(|_| byte[0]);
        let _ = tx.send(got);
    });
    rx.recv_timeout(timeout).ok().flatten()
}
