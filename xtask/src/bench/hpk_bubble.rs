//! A bubble for the benches that go through `hpktainer` itself: a network
//! namespace with its own subnet.env, run dir, CNI data dir, a busybox image
//! and the stand-in apptainer (test support, announced as such), with the
//! release builds of hpktainer, hpk-net-daemon and the stand-in.
//!
//! The namespace belongs to root, like the test bubbles of hpktainer's own
//! tests: the container's namespace is then one the relay server may wire,
//! which is the fakeroot case the fast path is for.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hpk_net_daemon::veth::DataPathMode;
use hpk_testbed::Netns;

use super::measure;
use crate::prereq;

/// The subnet, as flanneld would write it: room for a hundred containers.
const SUBNET_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.42.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=false
";
/// The bridge's address.
pub const GATEWAY: &str = "10.244.42.1";
/// The MTU subnet.env gives every link of the bubble.
pub const MTU: u32 = 1450;

/// The release executables the benches run.
pub struct Binaries {
    pub hpktainer: PathBuf,
    pub standin: PathBuf,
}

/// Builds hpktainer, hpk-net-daemon and the stand-in apptainer in release
/// mode (hpktainer finds the daemon beside itself).
pub fn build() -> Result<Binaries> {
    let root = crate::workspace_root();
    eprintln!("bench: building hpktainer, hpk-net-daemon and the stand-in apptainer (release)");
    prereq::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--bins",
        "-p",
        "hpktainer",
        "-p",
        "hpk-net-daemon",
        "-p",
        "hpk-testbed",
    ]))?;
    let dir = super::target_dir(&root)?
        .join(crate::TARGET)
        .join(super::PROFILE);
    let binaries = Binaries {
        hpktainer: dir.join("hpktainer"),
        standin: dir.join("apptainer-standin"),
    };
    for path in [
        &binaries.hpktainer,
        &binaries.standin,
        &dir.join("hpk-net-daemon"),
    ] {
        if !path.is_file() {
            bail!("the build succeeded but {} is not there", path.display());
        }
    }
    Ok(binaries)
}

/// One bubble; fields drop in order, so `gc` runs before the namespace goes.
pub struct HpkBubble {
    pub ns: Netns,
    dir: Scratch,
    pub image: PathBuf,
    hpktainer: PathBuf,
    standin: PathBuf,
}

impl HpkBubble {
    /// A fresh bubble with its files and image.
    pub fn new(binaries: &Binaries) -> Result<Self> {
        let dir = Scratch::new()?;
        std::fs::write(dir.0.join("subnet.env"), SUBNET_ENV).context("write subnet.env")?;
        let image = hpk_testbed::image::busybox_image(&dir.0.join("img"))
            .context("build the busybox image")?;
        Ok(Self {
            ns: Netns::new("hb"),
            dir,
            image,
            hpktainer: binaries.hpktainer.clone(),
            standin: binaries.standin.clone(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    /// `hpktainer --data-path MODE ARGS` inside the bubble.
    pub fn hpktainer(&self, mode: DataPathMode, args: &[&str]) -> Command {
        let mut command = self.ns.command(&self.hpktainer);
        command
            .args(["--data-path", mode.as_str()])
            .args(args)
            .env("HPKTAINER_SUBNET_ENV", self.path("subnet.env"))
            .env("HPKTAINER_RUN_DIR", self.path("run"))
            .env("HPKTAINER_CNI_DATA_DIR", self.path("cni"))
            .env("HPKTAINER_APPTAINER", &self.standin)
            .env("HPK_STANDIN_STATE_DIR", self.path("standin"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }

    /// `hpktainer run IMAGE sh -c SCRIPT`.
    pub fn run(&self, mode: DataPathMode, script: &str) -> Command {
        let image = self.image.display().to_string();
        self.hpktainer(mode, &["run", &image, "sh", "-c", script])
    }

    /// The stand-in apptainer alone, as hpktainer would call it minus the
    /// network: the baseline of the start-up figures.
    pub fn standin_run(&self, script: &str) -> Command {
        let mut command = self.ns.command(&self.standin);
        command
            .args(["exec", "--net", "--network", "none"])
            .arg(&self.image)
            .args(["sh", "-c", script])
            .env("HPK_STANDIN_STATE_DIR", self.path("standin"))
            .stdin(Stdio::null());
        command
    }

    /// `hpktainer ps --json`: (address, data path) of every container.
    pub fn ps(&self) -> Result<Vec<(String, String)>> {
        let command = self.hpktainer(DataPathMode::Auto, &["ps", "--json"]);
        let output = measure::run_checked(command, Duration::from_secs(30))?;
        let entries: serde_json::Value =
            serde_json::from_str(&output.stdout).context("parse hpktainer ps --json")?;
        let entries = entries.as_array().context("ps --json is not a list")?;
        Ok(entries
            .iter()
            .map(|entry| {
                let text = |key: &str| entry[key].as_str().unwrap_or("-").to_owned();
                (text("address"), text("data_path"))
            })
            .collect())
    }

    /// `hpktainer gc`, so a bench that was interrupted leaves no lease.
    fn gc(&self) {
        let command = self.hpktainer(DataPathMode::Auto, &["gc"]);
        if let Err(err) = measure::run_checked(command, Duration::from_secs(60)) {
            eprintln!("bench: hpktainer gc failed: {err:#}");
        }
    }
}

impl Drop for HpkBubble {
    fn drop(&mut self) {
        self.gc();
    }
}

/// Reads `stdout` line by line until one `wanted` accepts; `None` at EOF.
pub fn first_line(
    stdout: impl std::io::Read,
    wanted: impl Fn(&str) -> bool,
) -> Option<(String, BufReader<impl std::io::Read>)> {
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) if wanted(line.trim_end()) => return Some((line.trim_end().to_owned(), reader)),
            Ok(_) => {}
        }
    }
}

/// A private directory under /tmp (short: socket paths), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/tmp/hpkh-{}-{n}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Memory of one process from `/proc/PID/smaps_rollup`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Footprint {
    pub rss_kib: u64,
    pub pss_kib: u64,
}

impl std::ops::AddAssign for Footprint {
    fn add_assign(&mut self, other: Self) {
        self.rss_kib += other.rss_kib;
        self.pss_kib += other.pss_kib;
    }
}

/// RSS and PSS of `pid`; zero for a process that is gone.
pub fn footprint(pid: i32) -> Footprint {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
        return Footprint::default();
    };
    let field = |name: &str| {
        text.lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    Footprint {
        rss_kib: field("Rss:"),
        pss_kib: field("Pss:"),
    }
}

/// Every descendant of `pid` with its command line (words joined by spaces).
pub fn descendants(pid: i32) -> Vec<(i32, String)> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(parent) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<i32>().ok())
        else {
            continue;
        };
        parents.push((child, parent));
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found
        .into_iter()
        .skip(1)
        .map(|pid| (pid, cmdline(pid)))
        .collect()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}
