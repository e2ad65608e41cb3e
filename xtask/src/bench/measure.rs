//! The measuring instruments: iperf3 runs, ping round trips, and a
//! process's CPU time and peak RSS from `/proc`.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hpk_testbed::Netns;

use crate::interrupt;

/// Port of the iperf3 server inside the bubble.
pub const IPERF_PORT: u16 = 5201;

/// One iperf3 run, as the receiving side saw it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub bits_per_second: f64,
    /// Bytes the receiving side took in over the run.
    pub bytes: f64,
    pub retransmits: Option<u64>,
}

/// Runs the iperf3 client in `ns` against `server` for `seconds`;
/// `reverse` makes the server send (`-R`).
pub fn iperf3(ns: &Netns, server: &str, seconds: u32, reverse: bool) -> Result<Sample> {
    let mut command = ns.command("iperf3");
    command.args(["--json", "-c", server, "-p", &IPERF_PORT.to_string()]);
    command.args(["-t", &seconds.to_string(), "--connect-timeout", "3000"]);
    if reverse {
        command.arg("-R");
    }
    // A stalled path must not hang the bench: allow start-up and teardown slack.
    let limit = Duration::from_secs(u64::from(seconds) + 20);
    let output = run_bounded(command, limit)?;
    // iperf3 --json reports its failures inside the JSON, stderr stays empty.
    parse_iperf3(&output.stdout).with_context(|| {
        format!(
            "iperf3 client ended {}: {}",
            output.status,
            output.stderr.trim()
        )
    })
}

fn parse_iperf3(stdout: &str) -> Result<Sample> {
    let report: serde_json::Value = serde_json::from_str(stdout).context("parse iperf3 --json")?;
    if let Some(error) = report["error"].as_str() {
        bail!("iperf3: {error}");
    }
    let received = &report["end"]["sum_received"];
    let bits_per_second = received["bits_per_second"]
        .as_f64()
        .context("iperf3 report has no end.sum_received.bits_per_second")?;
    Ok(Sample {
        bits_per_second,
        bytes: received["bytes"].as_f64().unwrap_or_default(),
        retransmits: report["end"]["sum_sent"]["retransmits"].as_u64(),
    })
}

/// Round trips of one ping series, in microseconds.
#[derive(Debug, Clone)]
pub struct Rtt {
    pub median_us: f64,
    pub mean_us: f64,
    pub sent: u32,
    pub received: usize,
}

/// Sends `count` pings 2 ms apart (root may go below 200 ms) from `ns`.
pub fn ping(ns: &Netns, dest: &str, count: u32) -> Result<Rtt> {
    let mut command = ns.command("ping");
    command.args([
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        "0.002",
        "-W",
        "1",
        dest,
    ]);
    let output = run_checked(command, Duration::from_secs(30))?;
    let mut times: Vec<f64> = output.stdout.lines().filter_map(reply_time_us).collect();
    if times.is_empty() {
        bail!("no ping to {dest} was answered");
    }
    let mean_us = times.iter().sum::<f64>() / times.len() as f64;
    Ok(Rtt {
        median_us: median(&mut times),
        mean_us,
        sent: count,
        received: times.len(),
    })
}

/// The `time=0.052 ms` of one ping reply line, in microseconds.
fn reply_time_us(line: &str) -> Option<f64> {
    let rest = line.split("time=").nth(1)?;
    let millis: f64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(millis * 1000.0)
}

/// Whether one ping from `ns` to `dest` is answered within a second.
pub fn reachable(ns: &Netns, dest: &str) -> bool {
    ns.command("ping")
        .args(["-n", "-q", "-c", "1", "-W", "1", dest])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Waits until something in `ns` listens on TCP `port`.
pub fn wait_listening(ns: &Netns, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let filter = format!("sport = :{port}");
    while Instant::now() < deadline {
        interrupt::check()?;
        let listing = ns.command("ss").args(["-Hltn", &filter]).output()?;
        if !listing.stdout.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on port {port} after 10 s")
}

/// User plus system CPU seconds of process `pid` so far (all its threads).
pub fn cpu_seconds(pid: i32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses; fields after it don't.
    let after_name = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) of proc(5); `fields` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / per_second as f64)
}

/// A process's memory as `/proc/PID/status` reports it, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Peak resident set size (VmHWM) so far.
    pub peak_kib: u64,
    /// Resident anonymous memory now: heap, stacks, buffers.
    pub anon_kib: u64,
    /// Resident file-backed memory now: mostly the binary's own pages.
    pub file_kib: u64,
}

/// The memory figures of process `pid`.
pub fn memory(pid: i32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status.lines().find(|line| line.starts_with(name));
        let kib = line.and_then(|line| line.split_whitespace().nth(1));
        let kib = kib.with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(kib.parse()?)
    };
    Ok(Memory {
        peak_kib: field("VmHWM:")?,
        anon_kib: field("RssAnon:")?,
        file_kib: field("RssFile:")?,
    })
}

/// Frames the kernel dropped on interface `dev` in `ns`, (received,
/// transmitted). On a tap, transmit drops are frames its reader (the relay)
/// did not take in time.
pub fn link_drops(ns: &Netns, dev: &str) -> Result<(u64, u64)> {
    let mut command = Command::new("ip");
    command.args(["-n", ns.name(), "-s", "-j", "link", "show", "dev", dev]);
    let output = run_checked(command, Duration::from_secs(10))?;
    let links: serde_json::Value = serde_json::from_str(&output.stdout).context("parse ip -j")?;
    let stats = &links[0]["stats64"];
    let dropped = |way: &str| stats[way]["dropped"].as_u64();
    dropped("rx")
        .zip(dropped("tx"))
        .with_context(|| format!("no drop counters for {dev}"))
}

/// The middle value (mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// What a finished command left.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` like [`run_bounded`] and fails when it does not succeed.
pub fn run_checked(command: Command, limit: Duration) -> Result<Output> {
    let what = format!("{:?}", command.get_args().collect::<Vec<_>>());
    let output = run_bounded(command, limit)?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            output.stderr.trim()
        );
    }
    Ok(output)
}

/// Runs `command` to its end, killing it (by pid) when it outlives `limit`
/// or Ctrl-C is pressed.
pub fn run_bounded(mut command: Command, limit: Duration) -> Result<Output> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{:?}", command.get_args().collect::<Vec<_>>());
    let mut child = command.spawn().with_context(|| format!("start {what}"))?;
    // Drain both pipes on threads, so a chatty child never blocks on them.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        // Ctrl-C reaches the child too: its failure is then no news.
        if let Some(status) = child.try_wait()? {
            interrupt::check()?;
            break status;
        }
        if Instant::now() > deadline || interrupt::check().is_err() {
            let _ = child.kill();
            let _ = child.wait();
            interrupt::check()?;
            bail!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_times_are_read_in_microseconds() {
        let line = "64 bytes from 10.99.9.1: icmp_seq=3 ttl=64 time=0.052 ms";
        assert_eq!(reply_time_us(line), Some(52.0));
        assert_eq!(reply_time_us("--- 10.99.9.1 ping statistics ---"), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn iperf3_errors_are_reported() {
        let err = parse_iperf3(r#"{"start":{},"error":"unable to connect"}"#).unwrap_err();
        assert!(err.to_string().contains("unable to connect"));
    }
}
