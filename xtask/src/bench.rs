//! `cargo xtask bench [relay]`: the relay, with plain framing and with
//! offloads, against a veth pair on the same bridge, at MTU 1450 and at the
//! bubble's 65470, in one run. Without a sub-argument every benchmark runs.
//!
//! Each [`Setup`] (veth or relay, MTU, extra flags) gets fresh namespaces —
//! a bubble with a bridge and a container — and is measured on its own into
//! a [`Row`]: TCP throughput both ways with iperf3 (median of the repeats),
//! ping round trip, and for the relay its daemons' CPU seconds across the
//! load and their peak RSS (VmHWM) after it. The report sets each relay row
//! against the veth row of the same MTU and checks the targets. Results go
//! to stdout, progress to stderr.

mod fastpath;
mod hpk_bubble;
mod hundred;
mod measure;
mod report;
mod rig;
mod starts;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::interrupt;

use crate::prereq::{self, Tool};
use hpk_net_daemon::veth::DataPathMode;
use rig::{DataPath, Row, Setup};

const USAGE: &str = "\
usage: cargo xtask bench [relay|fastpath|starts|hundred|all] [--duration SECONDS] [--repeats N]
                         [--starts N] [--containers N] [--markdown] [--no-install]

  relay               the relay against veth (throughput, round trip, CPU, RSS)
  fastpath            a container hpktainer wired (veth and relay) against veth by hand
  starts              time hpktainer adds before the first instruction, both paths
  hundred             a hundred containers at once in one bubble, both paths
  all                 every one of them (the default)

  --duration SECONDS  length of each iperf3 run (default 5)
  --repeats N         iperf3 runs per setup and direction; the median is reported (default 3)
  --markdown          also print the tables as markdown, for the README
  --no-install        fail instead of installing missing tools with apt-get
  --starts N          starts per kind for `starts`; the median is reported (default 20)
  --containers N      containers for `hundred` (default 100)

Needs root and /dev/net/tun. All traffic stays between namespaces the bench creates.";

/// What the bench needs on the machine besides the daemon it builds.
const BENCH_TOOLS: &[Tool] = &[
    Tool {
        path: "/usr/sbin/ip",
        package: "iproute2",
    },
    Tool {
        path: "/usr/bin/ss",
        package: "iproute2",
    },
    Tool {
        path: "/usr/bin/ping",
        package: "iputils-ping",
    },
    Tool {
        path: "/usr/bin/iperf3",
        package: "iperf3",
    },
];

/// The build profile the daemons are measured in.
const PROFILE: &str = "release";

/// Settings shared by every setup of one run.
pub struct Bench {
    /// Seconds per iperf3 run.
    pub duration: u32,
    /// iperf3 runs per setup and direction.
    pub repeats: usize,
    /// Build profile of the daemon, printed with every line.
    pub profile: &'static str,
    /// The relay binary under test.
    pub daemon: PathBuf,
}

/// Command-line options of `bench relay`.
struct Options {
    duration: u32,
    repeats: usize,
    markdown: bool,
    install: bool,
    starts: usize,
    containers: usize,
}

/// Runs the task.
pub fn run(args: &[String]) -> Result<()> {
    let (which, rest) = match args.split_first() {
        Some((which, rest)) if !which.starts_with('-') => (which.as_str(), rest),
        _ => ("all", args),
    };
    if !["relay", "fastpath", "starts", "hundred", "all"].contains(&which) {
        bail!("unknown benchmark {which:?}\n\n{USAGE}");
    }
    let options = parse_options(rest)?;
    preflight(options.install)?;
    interrupt::install();

    let bench = Bench {
        duration: options.duration,
        repeats: options.repeats,
        profile: PROFILE,
        daemon: build_daemon()?,
    };
    if matches!(which, "relay" | "all") {
        let rows = measure_all(&bench, &setups())?;
        report::print(&bench, &rows, options.markdown);
    }
    if which != "relay" {
        run_hpktainer_benches(which, &bench, &options)?;
    }
    Ok(())
}

/// The benches that go through hpktainer itself (issue 7).
fn run_hpktainer_benches(which: &str, bench: &Bench, options: &Options) -> Result<()> {
    let binaries = hpk_bubble::build()?;
    if matches!(which, "fastpath" | "all") {
        fastpath::print(&fastpath::measure(&binaries, bench)?);
    }
    if matches!(which, "starts" | "all") {
        eprintln!("bench: start-up, {} runs of each kind", options.starts);
        starts::print(&starts::measure(&binaries, options.starts)?);
    }
    if matches!(which, "hundred" | "all") {
        let mut runs = Vec::new();
        for mode in [DataPathMode::Relay, DataPathMode::Veth] {
            eprintln!(
                "bench: {} containers at once, {}",
                options.containers,
                mode.as_str()
            );
            runs.push(hundred::measure(&binaries, mode, options.containers)?);
        }
        hundred::print(&runs);
    }
    Ok(())
}

/// The setups of one run: at flannel's MTU on a 1500-byte network and at
/// the bubble's, veth, the relay with plain framing, and the relay with
/// offloads. Each relay row is compared with the veth row of the same MTU.
fn setups() -> Vec<Setup> {
    [1450, 65470]
        .into_iter()
        .flat_map(|mtu| {
            [
                Setup::new("veth", DataPath::Veth, mtu),
                Setup::new("relay plain", DataPath::relay_plain(), mtu),
                Setup::new("relay offload", DataPath::relay(), mtu),
            ]
        })
        .collect()
}

fn measure_all(bench: &Bench, setups: &[Setup]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for setup in setups {
        eprintln!("bench: measuring {} at mtu {}", setup.name, setup.mtu);
        let row = rig::measure(setup, bench)
            .with_context(|| format!("measure {} at mtu {}", setup.name, setup.mtu))?;
        rows.push(row);
    }
    Ok(rows)
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        duration: 5,
        repeats: 3,
        markdown: false,
        install: true,
        starts: 20,
        containers: 100,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--duration" => options.duration = parse_value(arg, args.next())?,
            "--repeats" => options.repeats = parse_value(arg, args.next())?,
            "--starts" => options.starts = parse_value(arg, args.next())?,
            "--containers" => options.containers = parse_value(arg, args.next())?,
            "--markdown" => options.markdown = true,
            "--no-install" => options.install = false,
            "--help" | "-h" => bail!("{USAGE}"),
            other => bail!("unknown option {other:?}\n\n{USAGE}"),
        }
    }
    if options.duration == 0 || options.repeats == 0 || options.starts == 0 {
        bail!("--duration, --repeats and --starts must be at least 1");
    }
    Ok(options)
}

fn parse_value<T: std::str::FromStr>(flag: &str, value: Option<&String>) -> Result<T> {
    let value = value.with_context(|| format!("{flag} needs a value"))?;
    value
        .parse()
        .ok()
        .with_context(|| format!("{flag}: {value:?} is not a positive whole number"))
}

/// Fails early, with what to do, where the bench could not run at all.
fn preflight(install: bool) -> Result<()> {
    if !prereq::privileged() {
        bail!("the bench creates namespaces, bridges and taps: run it as root with /dev/net/tun");
    }
    prereq::ensure(BENCH_TOOLS, install)
}

/// Builds the daemon in release mode and returns its path. The target
/// directory comes from cargo itself, so CARGO_TARGET_DIR and
/// configuration files are honoured.
fn build_daemon() -> Result<PathBuf> {
    let root = crate::workspace_root();
    eprintln!("bench: building hpk-net-daemon ({PROFILE})");
    prereq::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--bins",
        "-p",
        "hpk-net-daemon",
    ]))?;
    let daemon = target_dir(&root)?
        .join(crate::TARGET)
        .join(PROFILE)
        .join("hpk-net-daemon");
    if !daemon.is_file() {
        bail!("the build succeeded but {} is not there", daemon.display());
    }
    Ok(daemon)
}

pub(crate) fn target_dir(root: &std::path::Path) -> Result<PathBuf> {
    let output = Command::new("cargo")
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("run cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parse cargo metadata")?;
    let dir = metadata["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}
