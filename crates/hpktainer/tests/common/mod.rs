//! A test bubble for hpktainer's end-to-end tests: a network namespace with
//! its own subnet.env, run dir, CNI data dir, a busybox image and the
//! stand-in apptainer, plus the leak detector's scope for it.

#![allow(dead_code)] // each test file uses a different part of it

use std::path::PathBuf;
use std::process::{Command, Output};

use hpk_testbed::Netns;
use hpk_testbed::leaks::{self, Kind, Scope, Snapshot};

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

    /// What the leak detector covers in this bubble; the bridge and
    /// hpktainer's masquerade rule stay by design (gc --all removes them).
    pub fn scope(&self) -> Scope {
        Scope {
            netns: self.ns.name().to_owned(),
            leases: self.path("cni/hpktainer"),
            socket_dirs: self.path("run/s"),
            records: self.path("run/containers"),
            marker: self.dir.path().to_path_buf(),
            persistent: vec![
                "hpk-bridge".into(),
                "hpktainer: masquerade".into(),
                // The same rule as nft lists it (without the comment).
                "ip saddr 10.244.7.0/24 ip daddr != 10.244.0.0/16".into(),
            ],
        }
    }

    /// Everything hpktainer creates and must remove again.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::take(&self.scope())
    }

    /// Panics listing every leak unless the bubble is back to `before`
    /// (within the detector's settling time).
    pub fn assert_no_leaks(&self, before: &Snapshot, what: &str) {
        leaks::assert_unchanged(&self.scope(), before, what);
    }

    /// The bubble's processes (relays, stand-ins, containers) right now.
    pub fn processes(&self) -> Vec<String> {
        self.snapshot()
            .of(Kind::Process)
            .map(str::to_owned)
            .collect()
    }
}

/// stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
