//! Makes sure the system tools the tests, demo and benchmarks use are
//! there, installing what is missing with apt-get when run as root.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// A tool we need, and the Debian package that ships it.
pub struct Tool {
    pub path: &'static str,
    pub package: &'static str,
}

/// What `cargo xtask test` needs.
pub const TEST_TOOLS: &[Tool] = &[
    Tool {
        path: "/usr/sbin/ip",
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
    Tool {
        path: "/usr/lib/cni/host-local",
        package: "containernetworking-plugins",
    },
    Tool {
        path: "/usr/bin/slirp4netns",
        package: "slirp4netns",
    },
    Tool {
        path: "/usr/bin/unshare",
        package: "util-linux",
    },
    Tool {
        path: "/usr/sbin/iptables",
        package: "iptables",
    },
    Tool {
        path: "/usr/sbin/nft",
        package: "nftables",
    },
    Tool {
        path: "/usr/sbin/ethtool",
        package: "ethtool",
    },
    Tool {
        path: "/usr/bin/nstat",
        package: "iproute2",
    },
    Tool {
        path: "/usr/bin/busybox",
        package: "busybox-static",
    },
    Tool {
        path: "/usr/bin/shellcheck",
        package: "shellcheck",
    },
    Tool {
        path: "/usr/bin/man",
        package: "man-db",
    },
    // The plain-framing peer that is not our code, for the interop test.
    Tool {
        path: "/usr/bin/passt",
        package: "passt",
    },
];

/// Installs the packages of missing `tools` (root on Debian/Ubuntu), or
/// says exactly what to install.
pub fn ensure(tools: &[Tool], install: bool) -> Result<()> {
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|tool| !std::path::Path::new(tool.path).exists())
        .map(|tool| tool.package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let root = is_root();
    let apt = std::path::Path::new("/usr/bin/apt-get").exists();
    if !(install && root && apt) {
        bail!(
            "missing tools; install these packages first: {} (Debian/Ubuntu: apt-get install {})",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a command, failing with its name when it does not succeed.
pub fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("start {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

/// Whether this process may run the privileged tests.
pub fn privileged() -> bool {
    is_root() && std::path::Path::new("/dev/net/tun").exists()
}
