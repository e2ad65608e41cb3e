//! `cargo xtask bench starts`: the time hpktainer adds before the user's
//! first instruction, with the network up.
//!
//! The instruction is a check of `tap0`'s address that prints `up` (or
//! `down`): timing it rather than `true` makes the network part of what is
//! measured, since `true` could finish before the network is there. Each
//! sample is the time from spawning the command to that line on its stdout;
//! the baseline is the same command under the stand-in apptainer alone
//! (where it prints `down`, having no network, at the same cost). Runs of
//! the three kinds are interleaved, so a busy moment of the machine colours
//! all three alike; one warm-up round is not counted.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hpk_net_daemon::veth::DataPathMode;

use super::hpk_bubble::{self, Binaries, HpkBubble};
use super::measure;
use crate::interrupt;

/// The user's first instruction: is tap0 configured with our address?
const CHECK: &str = "if ip -o -4 addr show dev tap0 2>/dev/null | grep -q \"inet ${HPK_IP:-none}\"; \
     then echo up; else echo down; fi";

/// Target overheads, in milliseconds.
const RELAY_TARGET_MS: f64 = 50.0;
const VETH_TARGET_MS: f64 = 20.0;

/// What one kind of start measured.
#[derive(Debug, Clone)]
pub struct Kind {
    pub name: &'static str,
    /// Spawn to the check's line, in milliseconds, per run.
    pub to_first_line_ms: Vec<f64>,
    /// Spawn to exit (release included), in milliseconds, per run.
    pub to_exit_ms: Vec<f64>,
}

/// The three kinds, baseline first.
#[derive(Debug, Clone)]
pub struct Starts {
    pub kinds: [Kind; 3],
    /// The path `hpktainer ps` reported for a container of each mode.
    pub confirmed: [(DataPathMode, String); 2],
}

/// Measures `runs` starts of each kind.
pub fn measure(binaries: &Binaries, runs: usize) -> Result<Starts> {
    let bubble = HpkBubble::new(binaries)?;
    let confirmed = [
        (
            DataPathMode::Relay,
            confirm_path(&bubble, DataPathMode::Relay)?,
        ),
        (
            DataPathMode::Veth,
            confirm_path(&bubble, DataPathMode::Veth)?,
        ),
    ];
    let mut kinds = [
        empty("apptainer stand-in alone"),
        empty("hpktainer, relay"),
        empty("hpktainer, veth"),
    ];
    for round in 0..=runs {
        interrupt::check()?;
        let samples = [
            timed(bubble.standin_run(CHECK), "down")?,
            timed(bubble.run(DataPathMode::Relay, CHECK), "up")?,
            timed(bubble.run(DataPathMode::Veth, CHECK), "up")?,
        ];
        if round == 0 {
            continue; // warm-up: page cache, first bridge, NAT rule
        }
        for (kind, (first, exit)) in kinds.iter_mut().zip(samples) {
            kind.to_first_line_ms.push(first);
            kind.to_exit_ms.push(exit);
        }
    }
    Ok(Starts { kinds, confirmed })
}

fn empty(name: &'static str) -> Kind {
    Kind {
        name,
        to_first_line_ms: Vec::new(),
        to_exit_ms: Vec::new(),
    }
}

/// Starts a long-lived container in `mode` and asks `hpktainer ps` which
/// path it got, so the figures below are known to be of that path.
fn confirm_path(bubble: &HpkBubble, mode: DataPathMode) -> Result<String> {
    let mut command = bubble.run(mode, &format!("{CHECK}; exec sleep 60"));
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = command.spawn().context("start hpktainer")?;
    let stdout = child.stdout.take().expect("piped");
    let line = hpk_bubble::first_line(stdout, |_| true).map(|(line, _)| line);
    let paths = bubble.ps();
    let _ = terminate(child.id() as i32);
    let _ = child.wait();
    if line.as_deref() != Some("up") {
        bail!(
            "a {} container did not see its network: {line:?}",
            mode.as_str()
        );
    }
    let paths = paths?;
    let path = paths
        .first()
        .map(|(_, path)| path.clone())
        .context("hpktainer ps listed no container")?;
    Ok(path)
}

fn terminate(pid: i32) -> nix::Result<()> {
    // Not reaped yet, so the pid is still our child's.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
}

/// Runs `command`; returns milliseconds to a line equal to `expected` and
/// to exit. Any other line, or a failed exit where `up` was expected, fails.
fn timed(mut command: Command, expected: &str) -> Result<(f64, f64)> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = command.spawn().context("start the container")?;
    let stdout = child.stdout.take().expect("piped");
    let line = hpk_bubble::first_line(stdout, |_| true).map(|(line, _)| line);
    let first = start.elapsed();
    let output = child.wait_with_output().context("wait for the container")?;
    let exit = start.elapsed();
    if line.as_deref() != Some(expected) {
        bail!(
            "expected {expected:?} from the check, got {line:?} ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    if expected == "up" && !output.status.success() {
        bail!(
            "hpktainer failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok((ms(first), ms(exit)))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Prints medians and the overheads against the baseline, with targets.
pub fn print(starts: &Starts) {
    let median = |values: &[f64]| measure::median(&mut values.to_vec());
    let [baseline, relay, veth] = &starts.kinds;
    let base = median(&baseline.to_first_line_ms);
    println!();
    println!(
        "start-up: spawn to the user's first instruction with tap0 up (median of {})",
        baseline.to_first_line_ms.len()
    );
    for (mode, path) in &starts.confirmed {
        println!(
            "  hpktainer ps: a --data-path {} container runs on {path}",
            mode.as_str()
        );
    }
    println!(
        "  {:<26} {:>12} {:>12} {:>14}",
        "", "to check ms", "overhead ms", "to exit ms"
    );
    for kind in &starts.kinds {
        let first = median(&kind.to_first_line_ms);
        println!(
            "  {:<26} {:>12.1} {:>12.1} {:>14.1}",
            kind.name,
            first,
            first - base,
            median(&kind.to_exit_ms)
        );
    }
    for (kind, target) in [(relay, RELAY_TARGET_MS), (veth, VETH_TARGET_MS)] {
        let overhead = median(&kind.to_first_line_ms) - base;
        let verdict = if overhead < target { "met" } else { "MISSED" };
        println!(
            "  target {}: overhead < {target} ms: {verdict} ({overhead:.1} ms)",
            kind.name
        );
    }
}
