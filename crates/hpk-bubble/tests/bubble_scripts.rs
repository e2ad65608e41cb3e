//! The bubble's shell: shellcheck on `bubble/`, and the entrypoint's logic
//! run for real inside a test namespace, with etcd, etcdctl and flanneld
//! stubbed (the only stubs: neither can be installed here). The flanneld
//! stub makes `flannel.1` as flanneld's VXLAN backend would.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use hpk_testbed::Netns;

fn bubble_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bubble")
}

#[test]
fn bubble_scripts_pass_shellcheck() {
    let dir = bubble_dir();
    let output = Command::new("shellcheck")
        .arg(dir.join("entrypoint.sh"))
        .arg(dir.join("hpk.slurm"))
        .output()
        .expect("run shellcheck (apt-get install shellcheck; cargo xtask test does)");
    assert!(
        output.status.success(),
        "shellcheck found problems:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

const LOGGING_STUB: &str = "#!/bin/sh\necho \"$(basename \"$0\") $*\" >>\"$STUB_LOG\"\n";

const FLANNELD_STUB: &str = "#!/bin/sh\n\
    echo \"flanneld $*\" >>\"$STUB_LOG\"\n\
    exec ip link add flannel.1 type vxlan id 1 dstport \"${VXLAN_PORT:-8472}\" dev tap0\n";

/// A namespace, the stubs, and a place for their log.
struct Bed {
    ns: Netns,
    tmp: tempfile::TempDir,
}

impl Bed {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let stubs = tmp.path().join("stubs");
        std::fs::create_dir(&stubs).unwrap();
        for (name, text) in [
            ("etcd", LOGGING_STUB),
            ("etcdctl", LOGGING_STUB),
            ("flanneld", FLANNELD_STUB),
        ] {
            let path = stubs.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Self {
            ns: Netns::new("ent"),
            tmp,
        }
    }

    fn stub_log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("stub.log")).unwrap_or_default()
    }

    /// The entrypoint in the namespace, reporting what it set up.
    fn entrypoint(&self, env: &[(&str, &str)]) -> Command {
        let report = "cat /proc/sys/net/ipv4/ip_forward; ip -4 -o addr show tap0; \
                      ethtool -k flannel.1 | grep '^tx-checksumming'";
        let path = format!(
            "{}:{}",
            self.tmp.path().join("stubs").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = self.ns.command("sh");
        command
            .arg(bubble_dir().join("entrypoint.sh"))
            .args(["sh", "-c", report])
            .env("PATH", path)
            .env("TMPDIR", self.tmp.path())
            .env("STUB_LOG", self.tmp.path().join("stub.log"))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }
}

fn text(output: &Output) -> (String, String) {
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    (out, err)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn controller_entrypoint_waits_for_tap0_then_sets_up_etcd_and_flannel() {
    let bed = Bed::new();
    let env = [
        ("HOST_IP", "192.0.2.10"),
        ("HPK_ROLE", "controller"),
        ("VXLAN_PORT", "4789"),
        ("HPK_WAIT", "20"),
    ];
    let mut child = bed.entrypoint(&env).spawn().unwrap();

    // Make tap0 only once the entrypoint says it waits: the event path.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("waiting for tap0") {
        assert_ne!(
            stderr.read_line(&mut said).unwrap(),
            0,
            "ended early: {said}"
        );
    }
    bed.ns.ip("tuntap add tap0 mode tap");
    stderr.read_to_string(&mut said).unwrap();
    let output = child.wait_with_output().unwrap();
    let (out, _) = text(&output);
    assert!(output.status.success(), "{said}");

    assert!(out.starts_with("1\n"), "forwarding is off: {out}");
    assert!(out.contains("inet 192.0.2.10/32"), "{out}");
    assert!(out.contains("tx-checksumming: off"), "{out}");
    let log = bed.stub_log();
    assert!(
        log.contains("--advertise-client-urls http://192.0.2.10:2379"),
        "{log}"
    );
    let config = r#"put /coreos.com/network/config {"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "Port": 4789}}"#;
    assert!(log.contains(config), "{log}");
    let flanneld = "flanneld --iface tap0 --public-ip 192.0.2.10 --ip-masq \
                    --etcd-endpoints http://127.0.0.1:2379";
    assert!(log.contains(flanneld), "{log}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn node_entrypoint_uses_the_controllers_etcd_and_starts_no_etcd() {
    let bed = Bed::new();
    bed.ns.ip("tuntap add tap0 mode tap");
    let env = [
        ("HOST_IP", "192.0.2.20"),
        ("ETCD_IP", "192.0.2.10"),
        ("HPK_ROLE", "node"),
        ("HPK_WAIT", "20"),
    ];
    let output = bed.entrypoint(&env).output().unwrap();
    let (out, err) = text(&output);
    assert!(output.status.success(), "{err}");
    assert!(out.contains("inet 192.0.2.20/32"), "{out}");
    assert!(out.contains("tx-checksumming: off"), "{out}");

    let log = bed.stub_log();
    assert!(!log.contains("etcd "), "a node started etcd: {log}");
    let flanneld = "flanneld --iface tap0 --public-ip 192.0.2.20 --ip-masq \
                    --etcd-endpoints http://192.0.2.10:2379";
    assert!(log.contains(flanneld), "{log}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn entrypoint_gives_up_on_a_missing_tap0_in_bounded_time() {
    let bed = Bed::new();
    let env = [
        ("HOST_IP", "192.0.2.20"),
        ("ETCD_IP", "192.0.2.10"),
        ("HPK_WAIT", "1"),
    ];
    let output = bed.entrypoint(&env).output().unwrap();
    let (_, err) = text(&output);
    assert!(!output.status.success());
    assert!(err.contains("tap0 did not appear within 1s"), "{err}");
    assert!(bed.stub_log().is_empty(), "went on without tap0");
}
