//! A test bubble: the user + network + mount namespaces an Apptainer
//! `--fakeroot --network none` instance gives, made from inside a host
//! namespace, with slirp4netns attached the way the bubble launcher does.
//!
//! The user namespace belongs to root: the build machines ship
//! /dev/net/tun mode 0600, and slirp4netns opens it from inside the bubble,
//! so a bubble owned by an unprivileged user could not get its tap0 here.

use std::ffi::OsStr;
use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};
use hpk_netconf::Ipv4Net;

use super::{VXLAN_OVERHEAD, VXLAN_PORT, flannel, run_checked, slirp, spawn};
use crate::{Netns, Proc};

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// Where bubble directories live: /tmp itself, not `$TMPDIR`, to keep
/// socket paths short.
pub(super) const DIR_PARENT: &str = "/tmp";
/// Bubble directories are `<DIR_PREFIX><pid>-<n>`, like namespace names.
pub(super) const DIR_PREFIX: &str = "hpkt-ovb-";

/// What the holder runs once `unshare` made the namespaces: a fresh sysfs
/// (`ip netns exec` left the host's there, so /sys/class/net would show the
/// host's links), readiness, then a blocking read on the lifeline.
const HOLDER: &str = "mount -t sysfs sysfs /sys && echo 1 >&3 && exec 3>&- && read -r _ <&4";

/// One bubble; dropping it ends slirp4netns and the holder (so the
/// namespaces go) and removes its directory.
pub struct Bubble {
    slirp: Proc,
    holder: Proc,
    // Held, never written: its closing is what the processes wait for.
    _lifeline: OwnedFd,
    dir: BubbleDir,
    /// This node's flannel subnet, 10.244.K.0/24.
    pub subnet: Ipv4Net,
    host_ip: Ipv4Addr,
    tap_mtu: u32,
    vtep_mac: String,
}

impl Bubble {
    /// Makes the bubble inside `host`, attaches slirp4netns with tap0 at
    /// `slirp_mtu`, forwards UDP [`VXLAN_PORT`] to it, puts `host_ip`/32 on
    /// tap0 (as the bubble entrypoint does), and builds flannel.1 and
    /// flanneld's masquerade rules. Peers and subnet.env come later.
    pub(super) fn start(
        host: &Netns,
        host_ip: Ipv4Addr,
        subnet: Ipv4Net,
        slirp_mtu: u32,
    ) -> Result<Self> {
        let dir = BubbleDir::create()?;
        let (life_read, lifeline) = spawn::lifeline()?;
        let holder = spawn_holder(host, &life_read, &dir)?;
        let slirp = slirp::attach(
            host,
            holder.pid(),
            slirp_mtu,
            &dir.path.join("slirp.sock"),
            &life_read,
            &dir.path.join("slirp4netns.log"),
        )?;
        drop(life_read);
        slirp::add_hostfwd(&dir.path.join("slirp.sock"), "udp", VXLAN_PORT, VXLAN_PORT)?;

        let mut bubble = Self {
            slirp,
            holder,
            _lifeline: lifeline,
            dir,
            subnet,
            host_ip,
            tap_mtu: 0,
            vtep_mac: String::new(),
        };
        bubble.try_sh(&format!("ip addr add {host_ip}/32 dev tap0"))?;
        // flanneld derives its MTU from the interface, not from a setting.
        bubble.tap_mtu = flannel::link_mtu(&bubble, "tap0")?;
        bubble.vtep_mac = flannel::add_vtep(&bubble)?;
        flannel::add_masquerade(&bubble)?;
        Ok(bubble)
    }

    /// A command that runs `program` inside the bubble's user, network and
    /// mount namespaces, as root of the bubble (like `apptainer exec`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .args(["-t", &self.pid().to_string(), "-U", "-n", "-m"])
            // unshare -r denied setgroups, so keep the caller's groups.
            .args(["--preserve-credentials", "--"])
            .arg(program);
        command
    }

    /// Runs a `set -e` shell script in the bubble and returns its stdout.
    pub fn try_sh(&self, script: &str) -> Result<String> {
        // A long script would drown the message; callers say what it does.
        let what = if script.contains('\n') {
            "script".to_owned()
        } else {
            format!("`{script}`")
        };
        run_checked(self.command("sh").args(["-ec", script]), &what)
            .with_context(|| format!("in the bubble of {}", self.host_ip))
    }

    /// Like [`Bubble::try_sh`], panicking on failure (for tests).
    pub fn sh(&self, script: &str) -> String {
        self.try_sh(script).unwrap_or_else(|err| panic!("{err:#}"))
    }

    /// Runs `f` on a thread inside the bubble's network namespace; sockets
    /// it opens stay there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        hpk_netconf::netns::run_in(&self.net_ns_path(), f).expect("enter the bubble")
    }

    /// The bubble's network namespace file.
    pub fn net_ns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid()))
    }

    /// The pid of the process holding the namespaces.
    pub fn pid(&self) -> i32 {
        self.holder.pid()
    }

    /// The pid of this bubble's slirp4netns.
    pub fn slirp_pid(&self) -> i32 {
        self.slirp.pid()
    }

    /// The host's LAN address, also on tap0 and flannel.1's `local`.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// tap0's MTU as slirp4netns set it.
    pub fn tap_mtu(&self) -> u32 {
        self.tap_mtu
    }

    /// flannel.1's MTU, `FLANNEL_MTU`.
    pub fn flannel_mtu(&self) -> u32 {
        self.tap_mtu - VXLAN_OVERHEAD
    }

    /// flannel.1's address, the subnet's network address (10.244.K.0).
    pub fn flannel_ip(&self) -> Ipv4Addr {
        self.subnet.network()
    }

    /// flannel.1's MAC address (the VTEP MAC flanneld publishes).
    pub fn vtep_mac(&self) -> &str {
        &self.vtep_mac
    }

    /// flannel.1's (rx_packets, tx_packets).
    pub fn flannel_counters(&self) -> Result<(u64, u64)> {
        flannel::counters(self)
    }

    /// The bubble's directory (short, under /tmp).
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// The `subnet.env` flanneld would write.
    pub fn subnet_env_path(&self) -> PathBuf {
        self.dir.path.join("subnet.env")
    }

    /// A runtime directory for hpktainer (`HPKTAINER_RUN_DIR`).
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path.join("run")
    }

    /// A host-local data directory (`HPKTAINER_CNI_DATA_DIR`).
    pub fn cni_data_dir(&self) -> PathBuf {
        self.dir.path.join("cni")
    }

    /// The variables that point hpktainer at this bubble's files instead of
    /// the system defaults.
    pub fn hpktainer_env(&self) -> [(&'static str, PathBuf); 3] {
        [
            ("HPKTAINER_SUBNET_ENV", self.subnet_env_path()),
            ("HPKTAINER_RUN_DIR", self.run_dir()),
            ("HPKTAINER_CNI_DATA_DIR", self.cni_data_dir()),
        ]
    }

    /// slirp4netns's API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.dir.path.join("slirp.sock")
    }

    /// What slirp4netns printed.
    pub fn slirp_log(&self) -> PathBuf {
        self.dir.path.join("slirp4netns.log")
    }

    pub(super) fn write_subnet_env(&self) -> Result<()> {
        flannel::write_subnet_env(self)
    }
}

/// `unshare` from inside `host`, so the bubble's namespaces hang below it.
fn spawn_holder(host: &Netns, lifeline: &OwnedFd, dir: &BubbleDir) -> Result<Proc> {
    let mut command = host.command("unshare");
    command
        .args(["--user", "--map-root-user", "--net", "--mount"])
        .args(["--propagation", "private", "sh", "-c", HOLDER]);
    spawn::spawn_ready(
        "bubble holder",
        command,
        lifeline,
        &dir.path.join("holder.log"),
    )
}

impl fmt::Display for Bubble {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  bubble pid {} (slirp4netns pid {}), tap0 mtu {}, dir {}",
            self.pid(),
            self.slirp_pid(),
            self.tap_mtu,
            self.dir.path.display()
        )?;
        writeln!(
            f,
            "  flannel.1 {}/32 mac {} mtu {}, subnet {}, vxlan local {}",
            self.flannel_ip(),
            self.vtep_mac,
            self.flannel_mtu(),
            self.subnet,
            self.host_ip
        )
    }
}

/// The bubble's directory, `/tmp/hpkt-ovb-<pid>-<n>` (short, because UNIX
/// socket paths must stay under 107 bytes), removed when dropped.
struct BubbleDir {
    path: PathBuf,
}

impl BubbleDir {
    fn create() -> Result<Self> {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(DIR_PARENT).join(format!("{DIR_PREFIX}{}-{n}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        let dir = Self { path };
        for sub in ["run", "cni"] {
            let path = dir.path.join(sub);
            std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        }
        Ok(dir)
    }
}

impl Drop for BubbleDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
