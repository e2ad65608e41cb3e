//! slirp4netns for a test bubble, started the way the bubble launcher
//! starts it, and its API socket.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::spawn::{LIFELINE_FD, READY_FD, spawn_ready};
use crate::{Netns, Proc};

/// Starts slirp4netns inside `host` (so its sockets, forwarded ports
/// included, live in the host namespace and never on the machine itself),
/// attached to the bubble whose holder is `holder_pid`, and waits for it.
pub(super) fn attach(
    host: &Netns,
    holder_pid: i32,
    mtu: u32,
    api_socket: &Path,
    lifeline: &OwnedFd,
    log: &Path,
) -> Result<Proc> {
    let mut command = host.command("slirp4netns");
    command
        .args(["--configure", "--mtu", &mtu.to_string()])
        .arg("--disable-host-loopback")
        .arg("--api-socket")
        .arg(api_socket)
        .args(["--ready-fd", &READY_FD.to_string()])
        .args(["--exit-fd", &LIFELINE_FD.to_string()])
        // The bubble's network namespace belongs to its user namespace:
        // enter that one first, as an unprivileged launcher has to.
        .arg("--userns-path")
        .arg(format!("/proc/{holder_pid}/ns/user"))
        .args([&holder_pid.to_string(), "tap0"]);
    spawn_ready("slirp4netns", command, lifeline, log)
}

/// Forwards `proto` port `host_port` of the host to `guest_port` of the
/// bubble; returns the forward's id.
pub(super) fn add_hostfwd(
    api_socket: &Path,
    proto: &str,
    host_port: u16,
    guest_port: u16,
) -> Result<u64> {
    let request = json!({
        "execute": "add_hostfwd",
        "arguments": {"proto": proto, "host_port": host_port, "guest_port": guest_port},
    });
    let reply = call(api_socket, &request)
        .with_context(|| format!("forward {proto} port {host_port} through slirp4netns"))?;
    reply["return"]["id"]
        .as_u64()
        .with_context(|| format!("slirp4netns answered {reply} to add_hostfwd"))
}

/// One request on its own connection, as the API expects: write, half-close,
/// read the whole answer; an `error` member becomes an error.
fn call(api_socket: &Path, request: &Value) -> Result<Value> {
    let mut stream = UnixStream::connect(api_socket)
        .with_context(|| format!("connect to {}", api_socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.to_string().as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)?;

    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .context("read the answer")?;
    let reply: Value = serde_json::from_str(&answer)
        .with_context(|| format!("slirp4netns answered {answer:?}, not JSON"))?;
    if let Some(error) = reply.get("error") {
        bail!("slirp4netns refused: {error}");
    }
    Ok(reply)
}
