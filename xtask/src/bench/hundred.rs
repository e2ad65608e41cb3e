//! `cargo xtask bench hundred`: a hundred containers started at once in one
//! bubble, each with `hpktainer run`.
//!
//! All are spawned together (a barrier releases a hundred threads); each
//! prints `up ADDRESS` once its check of tap0 has passed and then sleeps.
//! Reported: the time until the last one was up, that every address is
//! distinct (and agrees with `hpktainer ps`), and the memory per container
//! (RSS and PSS of the relay server and, on the relay path, the client;
//! hpktainer's own supervising process apart), then all are stopped with
//! SIGTERM, which releases their addresses.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hpk_net_daemon::veth::DataPathMode;
use hpk_testbed::Proc;

use super::hpk_bubble::{self, Binaries, Footprint, HpkBubble};
use crate::interrupt;

/// The target: all up within this.
const TARGET: Duration = Duration::from_secs(30);
/// How long one container may take before the bench gives up on it.
const PATIENCE: Duration = Duration::from_secs(120);

/// What one run of a hundred measured.
#[derive(Debug, Clone)]
pub struct Hundred {
    pub mode: DataPathMode,
    pub count: usize,
    /// Spawn of the first to `up` of the last.
    pub all_up: Duration,
    /// SIGTERM to all until the last has released everything.
    pub all_stopped: Duration,
    /// Distinct addresses among those that came up.
    pub distinct: usize,
    /// Data paths `hpktainer ps` reported, with how many of each.
    pub paths: Vec<(String, usize)>,
    /// Per container, mean: relay server and client together.
    pub network: Footprint,
    /// Per container, mean: the hpktainer process itself.
    pub hpktainer: Footprint,
}

/// Starts `count` containers in `mode` at once and measures them.
pub fn measure(binaries: &Binaries, mode: DataPathMode, count: usize) -> Result<Hundred> {
    let bubble = HpkBubble::new(binaries)?;
    let script = "if ip -o -4 addr show dev tap0 | grep -q \"inet $HPK_IP\"; \
                  then echo \"up $HPK_IP\"; else echo down; fi; exec sleep 600";
    let barrier = Barrier::new(count);
    let started = Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|scope| {
        for i in 0..count {
            let (bubble, barrier, started) = (&bubble, &barrier, &started);
            scope.spawn(move || {
                let mut command = bubble.run(mode, script);
                command.stderr(Stdio::null());
                barrier.wait();
                let outcome = start_one(command, i);
                started.lock().expect("no panics hold it").push(outcome);
            });
        }
    });
    let started: Vec<_> = started.into_inner().expect("threads ended");
    interrupt::check()?;

    let mut up = Vec::new();
    let mut failures = Vec::new();
    for outcome in started {
        match outcome {
            Ok(container) => up.push(container),
            Err(err) => failures.push(format!("{err:#}")),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {count} containers did not come up; first: {}",
            failures.len(),
            failures[0]
        );
    }
    let all_up = up.iter().map(|c| c.up_at).max().unwrap_or(start) - start;
    let mut figures = summarise(&bubble, mode, &up, all_up)?;
    figures.all_stopped = stop_all(up)?;
    Ok(figures)
}

/// One started container: its guard, address, and when it said so.
struct Started {
    proc: Proc,
    address: String,
    up_at: Instant,
}

fn start_one(command: std::process::Command, i: usize) -> Result<Started> {
    let (tx, rx) = std::sync::mpsc::channel();
    let what = format!("container {i}");
    // Proc::spawn_until would panic after its own patience; a thread here
    // turns that into this container's error instead.
    let handle = std::thread::spawn(move || {
        let (proc, line) =
            Proc::spawn_until(&what, command, |l| l.starts_with("up ") || l == "down");
        let _ = tx.send(Instant::now());
        (proc, line)
    });
    let up_at = rx
        .recv_timeout(PATIENCE)
        .with_context(|| format!("container {i} printed nothing"))?;
    let (proc, line) = handle
        .join()
        .map_err(|_| anyhow::anyhow!("container {i} never printed its line"))?;
    let Some(address) = line.strip_prefix("up ") else {
        bail!("container {i} has no network: {line}");
    };
    Ok(Started {
        proc,
        address: address.to_owned(),
        up_at,
    })
}

fn summarise(
    bubble: &HpkBubble,
    mode: DataPathMode,
    up: &[Started],
    all_up: Duration,
) -> Result<Hundred> {
    let distinct: BTreeSet<&str> = up.iter().map(|c| c.address.as_str()).collect();
    let ps = bubble.ps()?;
    let listed: BTreeSet<&str> = ps.iter().map(|(address, _)| address.as_str()).collect();
    if listed != distinct {
        bail!("hpktainer ps lists other addresses than the containers printed");
    }
    let mut paths: Vec<(String, usize)> = Vec::new();
    for (_, path) in &ps {
        match paths.iter_mut().find(|(p, _)| p == path) {
            Some((_, n)) => *n += 1,
            None => paths.push((path.clone(), 1)),
        }
    }

    let (mut network, mut own) = (Footprint::default(), Footprint::default());
    for container in up {
        own += hpk_bubble::footprint(container.proc.pid());
        for (pid, cmdline) in hpk_bubble::descendants(container.proc.pid()) {
            if is_daemon(&cmdline) {
                network += hpk_bubble::footprint(pid);
            }
        }
    }
    let per = |total: Footprint| Footprint {
        rss_kib: total.rss_kib / up.len() as u64,
        pss_kib: total.pss_kib / up.len() as u64,
    };
    Ok(Hundred {
        mode,
        count: up.len(),
        all_up,
        all_stopped: Duration::ZERO,
        distinct: distinct.len(),
        paths,
        network: per(network),
        hpktainer: per(own),
    })
}

/// hpk-net-daemon's server or client (the client runs from its bind mount).
fn is_daemon(cmdline: &str) -> bool {
    let mut words = cmdline.split(' ');
    let program = words.next().unwrap_or_default();
    program.ends_with("hpk-net-daemon") && matches!(words.next(), Some("server" | "client"))
}

/// SIGTERM to every hpktainer at once, then wait (up to [`PATIENCE`]) for
/// all: they release their addresses on the way out, and a hundred
/// releases queue on the state lock and the kernel's link deletions.
fn stop_all(mut up: Vec<Started>) -> Result<Duration> {
    let start = Instant::now();
    for container in &up {
        // The guard has not reaped it yet, so the pid is still this child's.
        let pid = nix::unistd::Pid::from_raw(container.proc.pid());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    while !up.is_empty() {
        interrupt::check()?;
        if start.elapsed() > PATIENCE {
            bail!(
                "{} containers still running {} s after SIGTERM",
                up.len(),
                PATIENCE.as_secs()
            );
        }
        up.retain_mut(|container| container.proc.is_running());
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed())
}

/// Prints the figures with the target.
pub fn print(runs: &[Hundred]) {
    println!();
    println!("a hundred containers at once in one bubble (hpktainer run, stand-in apptainer)");
    println!(
        "  {:<8} {:>5} {:>10} {:>10} {:>9} {:<16} {:>14} {:>14} {:>16}",
        "mode",
        "up",
        "all up s",
        "stopped s",
        "distinct",
        "paths (ps)",
        "relay RSS KiB",
        "relay PSS KiB",
        "hpktainer PSS KiB"
    );
    for run in runs {
        let paths: Vec<String> = run.paths.iter().map(|(p, n)| format!("{n} {p}")).collect();
        println!(
            "  {:<8} {:>5} {:>10.2} {:>10.2} {:>9} {:<16} {:>14} {:>14} {:>16}",
            run.mode.as_str(),
            run.count,
            run.all_up.as_secs_f64(),
            run.all_stopped.as_secs_f64(),
            run.distinct,
            paths.join(", "),
            run.network.rss_kib,
            run.network.pss_kib,
            run.hpktainer.pss_kib,
        );
        let verdict = if run.all_up < TARGET && run.distinct == run.count {
            "met"
        } else {
            "MISSED"
        };
        println!(
            "  target {}: all {} up within {} s with distinct addresses: {verdict}",
            run.mode.as_str(),
            run.count,
            TARGET.as_secs()
        );
    }
}
