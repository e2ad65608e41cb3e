//! Runs a plugin once: CNI variables on the child only, the netconf on
//! stdin, stdout and stderr collected, the whole call bounded by a deadline.
//!
//! The child is owned by a guard that kills and reaps it unless it was
//! waited for, so no return path (timeout, error, panic) leaves it behind.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::{Error, Result};

/// Most bytes kept of each output stream; the rest is read and dropped, so a
/// runaway plugin neither blocks nor fills memory.
const OUTPUT_LIMIT: u64 = 1 << 20;

/// Longest pause between two looks at a child that closed its output.
const POLL_MAX: Duration = Duration::from_millis(50);

/// Every variable CNI defines; inherited ones are dropped so that only what
/// the call sets reaches the plugin.
const CNI_VARS: &[&str] = &[
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

/// One plugin call.
pub(crate) struct Invocation<'a> {
    pub command: &'static str,
    pub env: Vec<(&'static str, OsString)>,
    pub stdin: &'a [u8],
    pub timeout: Duration,
}

/// What the plugin left behind.
pub(crate) struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `path` for `call` and waits for it, at most `call.timeout`.
pub(crate) fn run(path: &Path, call: &Invocation) -> Result<Output> {
    let deadline = Instant::now() + call.timeout;
    let exec_error = |source| Error::Exec {
        path: path.to_path_buf(),
        source,
    };

    let mut child = Reaper::spawn(command(path, call)).map_err(exec_error)?;
    child.feed(call.stdin).map_err(exec_error)?;
    let outputs = child.start_readers().map_err(exec_error)?;

    let timed_out = || Error::Timeout {
        command: call.command,
        path: path.to_path_buf(),
        timeout: call.timeout,
    };
    let (stdout, stderr) = collect(&outputs, deadline).ok_or_else(timed_out)?;
    let status = child.wait_until(deadline).map_err(exec_error)?;
    let status = status.ok_or_else(timed_out)?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn command(path: &Path, call: &Invocation) -> Command {
    let mut cmd = Command::new(path);
    for var in CNI_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(call.env.iter().map(|(k, v)| (k, v)));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A child that is killed and reaped when dropped before it was waited for.
struct Reaper {
    child: Child,
    path: PathBuf,
    reaped: bool,
}

impl Reaper {
    fn spawn(mut cmd: Command) -> io::Result<Self> {
        let path = PathBuf::from(cmd.get_program());
        let child = cmd.spawn()?;
        debug!(pid = child.id(), path = %path.display(), "started plugin");
        Ok(Reaper {
            child,
            path,
            reaped: false,
        })
    }

    /// Writes the netconf and closes stdin. A netconf is a few hundred bytes,
    /// far below a pipe's buffer, so the write cannot block on a plugin
    /// that does not read.
    fn feed(&mut self, input: &[u8]) -> io::Result<()> {
        let Some(mut stdin) = self.child.stdin.take() else {
            return Ok(());
        };
        match stdin.write_all(input) {
            // A plugin may exit without reading; its answer tells why.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    }

    fn start_readers(&mut self) -> io::Result<Receiver<Chunk>> {
        let (tx, rx) = mpsc::channel();
        let stdout: Option<ChildStdout> = self.child.stdout.take();
        let stderr: Option<ChildStderr> = self.child.stderr.take();
        spawn_reader(Stream::Out, stdout, tx.clone())?;
        spawn_reader(Stream::Err, stderr, tx)?;
        Ok(rx)
    }

    /// Waits for the exit, polling since std has no timed wait; `None` when
    /// the deadline passed first.
    fn wait_until(&mut self, deadline: Instant) -> io::Result<Option<ExitStatus>> {
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.reaped = true;
                return Ok(Some(status));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            thread::sleep(pause.min(left));
            pause = (pause * 2).min(POLL_MAX);
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let pid = self.child.id();
        let _ = self.child.kill();
        let status = self.child.wait();
        debug!(pid, path = %self.path.display(), ?status, "killed plugin");
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

type Chunk = (Stream, Vec<u8>);

/// Reads one stream to its end on a thread of its own, so a plugin filling
/// stderr cannot stall while we read stdout.
///
/// A plugin that leaves a process of its own holding the pipe is reported as
/// timed out, and this thread lives until that process closes the pipe.
/// host-local starts no process, so this is left at that.
fn spawn_reader<R>(stream: Stream, pipe: Option<R>, tx: Sender<Chunk>) -> io::Result<()>
where
    R: Read + Send + 'static,
{
    let name = match stream {
        Stream::Out => "hpk-ipam-stdout",
        Stream::Err => "hpk-ipam-stderr",
    };
    thread::Builder::new().name(name.into()).spawn(move || {
        let bytes = pipe.map(read_capped).unwrap_or_default();
        let _ = tx.send((stream, bytes));
    })?;
    Ok(())
}

fn read_capped(mut pipe: impl Read) -> Vec<u8> {
    let mut kept = Vec::new();
    // A read error ends the stream; what was read so far is the answer.
    let _ = pipe.by_ref().take(OUTPUT_LIMIT).read_to_end(&mut kept);
    let _ = io::copy(&mut pipe, &mut io::sink());
    kept
}

/// Both streams once closed, or `None` when the deadline passed first.
fn collect(outputs: &Receiver<Chunk>, deadline: Instant) -> Option<(Vec<u8>, Vec<u8>)> {
    let (mut stdout, mut stderr) = (None, None);
    while stdout.is_none() || stderr.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match outputs.recv_timeout(left).ok()? {
            (Stream::Out, bytes) => stdout = Some(bytes),
            (Stream::Err, bytes) => stderr = Some(bytes),
        }
    }
    Some((stdout?, stderr?))
}
