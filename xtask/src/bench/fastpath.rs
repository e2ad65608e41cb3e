//! `cargo xtask bench fastpath`: a container as hpktainer wired it, against
//! a veth pair made by hand at the same MTU.
//!
//! The container is started with `hpktainer --data-path veth run` (and, for
//! comparison, `--data-path relay`) in a bubble of its own; `hpktainer ps`
//! must report the path asked for, or the figures would be of the wrong
//! thing. iperf3 and ping then run inside the container's network namespace
//! (named with `ip netns attach`, since the busybox image has no iperf3)
//! against an iperf3 server on the bubble's bridge address. The baseline is
//! the relay bench's veth setup at the bubble's MTU.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hpk_net_daemon::veth::DataPathMode;
use hpk_testbed::{Netns, Proc};
use nix::sys::signal::Signal;

use super::Bench;
use super::hpk_bubble::{Binaries, GATEWAY, HpkBubble, MTU};
use super::measure::{self, Rtt, Sample};
use super::rig::{self, DataPath, Direction, Setup};
use crate::interrupt;

/// Pings per round-trip series, as in the relay bench.
const PINGS: u32 = 200;
/// The fast path's throughput as a share of veth's, each way.
const MIN_RATIO: f64 = 0.90;

/// One measured data path.
#[derive(Debug, Clone)]
pub struct Path {
    pub name: String,
    /// What `hpktainer ps` said (`—` for the hand-made baseline).
    pub reported: String,
    pub rtt: Rtt,
    pub throughput: Vec<(Direction, Vec<Sample>)>,
}

/// Measures the hand-made veth baseline and hpktainer's veth and relay paths.
pub fn measure(binaries: &Binaries, bench: &Bench) -> Result<Vec<Path>> {
    eprintln!("bench: fast path: veth made by hand at mtu {MTU}");
    let row = rig::measure(&Setup::new("veth", DataPath::Veth, MTU), bench)?;
    let mut paths = vec![Path {
        name: "veth by hand".into(),
        reported: "—".into(),
        rtt: row.rtt,
        throughput: row
            .throughput
            .into_iter()
            .map(|run| (run.direction, run.samples))
            .collect(),
    }];
    for mode in [DataPathMode::Veth, DataPathMode::Relay] {
        eprintln!("bench: fast path: hpktainer --data-path {}", mode.as_str());
        paths.push(measure_wired(binaries, bench, mode)?);
    }
    Ok(paths)
}

fn measure_wired(binaries: &Binaries, bench: &Bench, mode: DataPathMode) -> Result<Path> {
    let bubble = HpkBubble::new(binaries)?;
    let command = bubble.run(mode, "echo pid=$$; exec sleep 86400");
    let (container, line) = Proc::spawn_until("container", command, |l| l.starts_with("pid="));
    let pid: i32 = line["pid=".len()..]
        .parse()
        .context("the container's pid")?;
    let ns = Netns::attach("fc", pid);

    let ps = bubble.ps()?;
    let reported = ps.first().map(|(_, path)| path.clone()).unwrap_or_default();
    if reported != mode.as_str() {
        bail!(
            "asked for {}, hpktainer ps reports {reported:?}",
            mode.as_str()
        );
    }
    let mut iperf = bubble.ns.command("iperf3");
    iperf.args(["-s", "-B", GATEWAY, "-p", &measure::IPERF_PORT.to_string()]);
    iperf.stdout(std::process::Stdio::null());
    let _server = Proc::spawn("iperf3 server", iperf);
    measure::wait_listening(&bubble.ns, measure::IPERF_PORT)?;
    wait_reachable(&ns)?;

    let rtt = measure::ping(&ns, GATEWAY, PINGS)?;
    let mut throughput = Vec::new();
    for direction in Direction::ALL {
        let mut samples = Vec::new();
        for repeat in 1..=bench.repeats {
            eprintln!(
                "bench:   {} run {repeat}/{}",
                direction.label(),
                bench.repeats
            );
            let reverse = direction == Direction::BubbleToContainer;
            samples.push(measure::iperf3(&ns, GATEWAY, bench.duration, reverse)?);
        }
        throughput.push((direction, samples));
    }
    drop(ns);
    container.stop(Signal::SIGTERM);
    Ok(Path {
        name: format!("hpktainer {}", mode.as_str()),
        reported,
        rtt,
        throughput,
    })
}

fn wait_reachable(ns: &Netns) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        interrupt::check()?;
        if measure::reachable(ns, GATEWAY) {
            return Ok(());
        }
    }
    bail!("the container does not reach {GATEWAY} after 10 s")
}

fn median_gbit(samples: &[Sample]) -> f64 {
    let mut values: Vec<f64> = samples.iter().map(|s| s.bits_per_second / 1e9).collect();
    measure::median(&mut values)
}

/// Prints one line per path and direction, the round trips, and the verdict.
pub fn print(paths: &[Path]) {
    println!();
    println!("fast path: a container hpktainer wired, against veth by hand (MTU {MTU})");
    println!(
        "  {:<18} {:<8} {:<18} {:>8} {:>8} {:>11}",
        "path", "ps says", "direction", "Gbit/s", "vs veth", "RTT med µs"
    );
    let baseline = &paths[0];
    for path in paths {
        for (direction, samples) in &path.throughput {
            let ratio = ratio(baseline, path, *direction);
            println!(
                "  {:<18} {:<8} {:<18} {:>8.2} {:>7.1}% {:>11.1}",
                path.name,
                path.reported,
                direction.label(),
                median_gbit(samples),
                ratio * 100.0,
                path.rtt.median_us
            );
        }
    }
    let Some(fast) = paths.iter().find(|p| p.reported == "veth") else {
        println!(
            "  target fast path ≥ {:.0}% of veth: MISSED (no veth path)",
            MIN_RATIO * 100.0
        );
        return;
    };
    for direction in Direction::ALL {
        let ratio = ratio(baseline, fast, direction);
        let verdict = if ratio >= MIN_RATIO { "met" } else { "MISSED" };
        println!(
            "  target fast path {} ≥ {:.0}% of veth: {verdict} ({:.1}%)",
            direction.label(),
            MIN_RATIO * 100.0,
            ratio * 100.0
        );
    }
}

fn ratio(baseline: &Path, path: &Path, direction: Direction) -> f64 {
    let of = |p: &Path| {
        p.throughput
            .iter()
            .find(|(d, _)| *d == direction)
            .map_or(0.0, |(_, s)| median_gbit(s))
    };
    let base = of(baseline);
    if base > 0.0 { of(path) / base } else { 0.0 }
}
