//! A test bubble for hpktainer's end-to-end tests: a network namespace with
//! its own subnet.env, run dir, CNI data dir, a busybox image and the
//! stand-in apptainer, plus a snapshot of everything hpktainer may leave.

#![allow(dead_code)] // each test file uses a different part of it

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hpk_testbed::Netns;

pub const HPKTAINER: &str = env!("CARGO_BIN_EXE_hpktainer");

/// The subnet every test bubble leases from, as flanneld would write it.
pub const SUBNET_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.7.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=false
";
pub const GATEWAY: &str = "10.244.7.1";

/// One bubble: namespace, files, image.
pub struct Bubble {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    /// `HPKTAINER_DATA_PATH` of every hpktainer command: auto unless a test
    /// is about one path.
    pub data_path: &'static str,
}

impl Bubble {
    pub fn new() -> Self {
        let ns = Netns::new("bub");
        let dir = tempfile::Builder::new()
            .prefix("hk")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::write(dir.path().join("subnet.env"), SUBNET_ENV).unwrap();
        let image = hpk_testbed::image::busybox_image(&dir.path().join("img")).unwrap();
        Self {
            ns,
            dir,
            image,
            data_path: "auto",
        }
    }

    /// A bubble whose containers use the data path `mode`.
    pub fn with_data_path(mode: &'static str) -> Self {
        Self {
            data_path: mode,
            ..Self::new()
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `hpktainer ARGS` inside the bubble, with every knob pointing into it.
    pub fn hpktainer<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut command = self.ns.command(HPKTAINER);
        command
            .args(args)
            .env("HPKTAINER_SUBNET_ENV", self.path("subnet.env"))
            .env("HPKTAINER_RUN_DIR", self.path("run"))
            .env("HPKTAINER_CNI_DATA_DIR", self.path("cni"))
            .env(
                "HPKTAINER_APPTAINER",
                hpk_testbed::bin_path("apptainer-standin"),
            )
            .env("HPK_STANDIN_LOG", self.path("standin.log"))
            .env("HPK_STANDIN_STATE_DIR", self.path("standin"))
            .env("HPKTAINER_DATA_PATH", self.data_path)
            .env_remove("RUST_LOG");
        command
    }

    /// `--bind` words that put hpk-probe into the container as /probe.
    pub fn probe_bind(&self) -> Vec<String> {
        let probe = hpk_testbed::bin_path("hpk-probe");
        vec!["--bind".into(), format!("{}:/probe", probe.display())]
    }

    /// Runs `hpktainer exec IMAGE ARGS…` to its end.
    pub fn exec(&self, options: &[&str], args: &[&str]) -> Output {
        let mut words: Vec<String> = vec!["exec".into()];
        words.extend(options.iter().map(|s| s.to_string()));
        words.push(self.image.display().to_string());
        words.extend(args.iter().map(|s| s.to_string()));
        self.hpktainer(&words).output().unwrap()
    }

    /// Everything hpktainer creates and must remove again.
    pub fn snapshot(&self) -> Snapshot {
        let mut links: BTreeSet<String> = BTreeSet::new();
        for line in self.ns.sh("ip -o link show").lines() {
            let name = line.split(':').nth(1).unwrap_or("").trim();
            // The bridge stays by design (gc --all removes it).
            if name != "hpk-bridge" {
                links.insert(name.split('@').next().unwrap().to_owned());
            }
        }
        Snapshot {
            links,
            leases: leases(&self.path("cni/hpktainer")),
            files: files_under(&self.path("run")),
            processes: processes_mentioning(self.dir.path()),
            guards: self
                .ns
                .sh("nft list tables bridge")
                .lines()
                .map(str::to_owned)
                .collect(),
        }
    }
}

/// What the leak check compares.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub links: BTreeSet<String>,
    pub leases: BTreeSet<String>,
    pub files: BTreeSet<String>,
    pub processes: BTreeSet<String>,
    /// nftables bridge tables: the fast path's port guards.
    pub guards: BTreeSet<String>,
}

/// host-local's lease files (its lock and last-reserved bookkeeping aside).
fn leases(dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name != "lock" && !name.starts_with("last_reserved_ip"))
        .collect()
}

/// Files (not directories) below `dir`, except the lock file.
fn files_under(dir: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n != "lock") {
                found.insert(path.display().to_string());
            }
        }
    }
    found
}

/// Processes whose command line mentions `dir` (relays, stand-ins).
fn processes_mentioning(dir: &Path) -> BTreeSet<String> {
    let needle = dir.display().to_string();
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(&needle) {
            found.insert(format!("{} {text}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
