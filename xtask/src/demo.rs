//! `cargo xtask demo`: the project's main job seen from a user's seat.
//!
//! Two hosts with a bubble each on the embedded overlay testbed; a container
//! started with `hpktainer run` in each (through the test stand-in for
//! apptainer, which cannot be installed here); A pings B across the
//! overlay, sends B bytes that are verified, both reach the outside; then
//! everything is torn down. Every line of the report is a check the
//! scenario made; a failed check ends the demo with a non-zero status.

use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};
use hpk_testbed::overlay::{OverlayOptions, SLIRP_MTU};
use hpk_testbed::scenario;

use crate::{interrupt, prereq};

/// What the demo needs on the machine.
const DEMO_TOOLS: &[prereq::Tool] = &[
    prereq::Tool {
        path: "/usr/sbin/ip",
        package: "iproute2",
    },
    prereq::Tool {
        path: "/usr/bin/ping",
        package: "iputils-ping",
    },
    prereq::Tool {
        path: "/usr/lib/cni/host-local",
        package: "containernetworking-plugins",
    },
    prereq::Tool {
        path: "/usr/bin/slirp4netns",
        package: "slirp4netns",
    },
    prereq::Tool {
        path: "/usr/bin/nsenter",
        package: "util-linux",
    },
    prereq::Tool {
        path: "/usr/sbin/iptables",
        package: "iptables",
    },
    prereq::Tool {
        path: "/usr/sbin/ethtool",
        package: "ethtool",
    },
    prereq::Tool {
        path: "/usr/bin/busybox",
        package: "busybox-static",
    },
];

/// Runs the demo.
pub fn run(args: &[String]) -> Result<()> {
    let install = !args.iter().any(|arg| arg == "--no-install");
    let slirp_mtu = if args.iter().any(|arg| arg == "--mtu-1500") {
        1500
    } else {
        SLIRP_MTU
    };
    if !prereq::privileged() {
        bail!("the demo makes network and user namespaces: run it as root (sudo cargo xtask demo)");
    }
    prereq::ensure(DEMO_TOOLS, install)?;
    let root = crate::workspace_root();
    prereq::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "-q",
        "--workspace",
        "--bins",
    ]))?;

    interrupt::install();
    println!("hpktainer demo — containers in two bubbles over a Flannel-style VXLAN overlay");
    println!("(apptainer is replaced by the test stand-in; everything else is real)\n");
    let started = Instant::now();
    let options = OverlayOptions {
        hosts: 2,
        slirp_mtu,
    };
    let mut say = |line: &str| println!("{line}");
    let outcome = scenario::cross_bubble(options, 16 << 20, &mut say);
    interrupt::check()?;
    let outcome = outcome?;

    let left = leftover_namespaces()?;
    if !left.is_empty() {
        bail!("namespaces left behind: {}", left.join(", "));
    }
    println!("\ntorn down: no namespace or process of this run is left");
    println!(
        "demo: OK — A {} and B {} talked over VXLAN (FLANNEL_MTU {}), {} bytes verified, \
         both reached the outside, in {:.1} s",
        outcome.address_a,
        outcome.address_b,
        outcome.flannel_mtu,
        outcome.transfer.len,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Namespaces named after this process that still exist.
fn leftover_namespaces() -> Result<Vec<String>> {
    let marker = format!("-{}-", std::process::id());
    let mut left = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("hpkt-") && name.contains(&marker) {
                left.push(name);
            }
        }
    }
    Ok(left)
}
