//! `hpk-bubble start/stop` end to end: the stand-in apptainer, a real
//! slirp4netns, all inside a network namespace the test made, so no port
//! is bound on the machine itself. Privileged tests are run by
//! `cargo xtask test` (ignored by a plain `cargo test`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use hpk_bubble::slirp::list_hostfwd;
use hpk_bubble::state::{Record, StateDir};
use hpk_bubble::sys::Pidfd;
use hpk_testbed::{Netns, bin_path, image::busybox_image};
use nix::sys::signal::Signal;
use serde_json::Value;

/// A namespace with a documentation-address "LAN" and default route, an
/// image, and private state directories for hpk-bubble and the stand-in.
struct Fixture {
    ns: Netns,
    tmp: tempfile::TempDir,
    image: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let ns = Netns::new("bub");
        // A veth pair stands for the LAN card (no dummy module on every kernel).
        ns.ip("link add lan0 type veth peer name lan1");
        ns.ip("addr add 192.0.2.10/24 dev lan0");
        ns.ip("link set lan0 up");
        ns.ip("link set lan1 up");
        ns.ip("route add default via 192.0.2.1");
        let tmp = tempfile::tempdir().expect("tempdir");
        let image = busybox_image(&tmp.path().join("image")).expect("build the image");
        Self { ns, tmp, image }
    }

    fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    fn standin_state(&self) -> PathBuf {
        self.tmp.path().join("standin")
    }

    fn standin_log(&self) -> PathBuf {
        self.tmp.path().join("standin.log")
    }

    /// `hpk-bubble ARGS` inside the namespace, with the test's knobs.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = self.ns.command(bin_path("hpk-bubble"));
        command
            .args(args)
            .env("HPK_BUBBLE_STATE_DIR", self.state())
            .env("HPK_BUBBLE_APPTAINER", bin_path("apptainer-standin"))
            .env("HPK_BUBBLE_IMAGE", &self.image)
            .env("HPK_STANDIN_STATE_DIR", self.standin_state())
            .env("HPK_STANDIN_LOG", self.standin_log());
        command
    }

    /// Starts `hpk-bubble start ARGS` and waits for its ready line.
    fn start(&self, args: &[&str]) -> (Started, String) {
        let mut all = vec!["start"];
        all.extend(args);
        let child = self
            .command(&all)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run hpk-bubble start");
        let mut started = Started(Some(child));
        let stdout = started.0.as_mut().unwrap().stdout.take().unwrap();
        let mut line = String::new();
        // Blocks until the line or end-of-file (hpk-bubble died): no sleeps.
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(line.contains(" ready: "), "no ready line, got {line:?}");
        (started, line)
    }

    fn record(&self, id: u32) -> Record {
        StateDir::new(Some(self.state()))
            .read(id)
            .unwrap()
            .expect("a record")
    }

    fn instance_exec(&self, name: &str, script: &str) -> String {
        let output = Command::new(bin_path("apptainer-standin"))
            .args(["exec", &format!("instance://{name}"), "sh", "-c", script])
            .env("HPK_STANDIN_STATE_DIR", self.standin_state())
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The `instance run` invocation the stand-in recorded.
    fn instance_run_argv(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.standin_log()).unwrap();
        log.lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .map(|doc| serde_json::from_value::<Vec<String>>(doc["argv"].clone()).unwrap())
            .find(|argv| argv.starts_with(&["instance".into(), "run".into()]))
            .expect("an instance run")
    }

    /// Nothing of bubble `id` is left: files, instance, slirp4netns.
    fn assert_gone(&self, id: u32, record: &Record) {
        assert!(!self.state().join(id.to_string()).exists(), "state left");
        let standin_record = self.standin_state().join(format!("hpk-bubble-{id}.json"));
        assert!(!standin_record.exists(), "instance record left");
        for pid in [record.instance_pid, record.slirp_pid]
            .into_iter()
            .flatten()
        {
            assert!(ended(pid), "pid {pid} still runs");
        }
    }
}

/// Whether `pid` has ended. A pidfd turns readable at exit, so an ended
/// process that its parent (often init, for the instance) has not reaped
/// yet counts as ended; the short wait only covers a teardown still under way.
fn ended(pid: i32) -> bool {
    Pidfd::open(pid, None).is_none_or(|fd| fd.wait(Duration::from_secs(5)))
}

/// The foreground `start`; stopped with SIGTERM (SIGKILL if that fails) when
/// a test fails before stopping it, so its instance is not left behind.
struct Started(Option<Child>);

impl Started {
    fn pid(&self) -> i32 {
        self.0.as_ref().unwrap().id() as i32
    }

    fn wait(mut self) -> ExitStatus {
        let mut child = self.0.take().unwrap();
        let pidfd = Pidfd::open(child.id() as i32, None).unwrap();
        assert!(pidfd.wait(Duration::from_secs(60)), "start did not end");
        child.wait().unwrap()
    }
}

impl Started {
    /// SIGKILL: no teardown at all.
    fn kill(mut self) {
        let mut child = self.0.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let stopped = Pidfd::open(child.id() as i32, None).is_none_or(|fd| {
                fd.signal(Signal::SIGTERM).is_ok() && fd.wait(Duration::from_secs(30))
            });
            if !stopped {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

fn forwards(api: &Path) -> Vec<(String, u64, String)> {
    let mut found: Vec<_> = list_hostfwd(api)
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["proto"].as_str().unwrap().to_owned(),
                entry["host_port"].as_u64().unwrap(),
                entry["guest_addr"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    found.sort();
    found
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn controller_starts_with_forwards_and_stops_on_stop() {
    let fx = Fixture::new();
    let (started, line) = fx.start(&["1", "--role", "controller"]);
    assert!(line.starts_with("bubble 1 ready: "), "{line}");
    let dir = fx.state().join("1");

    let guest = "10.0.2.100".to_string();
    let expected = vec![
        ("tcp".into(), 2379, guest.clone()),
        ("tcp".into(), 6443, guest.clone()),
        ("udp".into(), 8472, guest.clone()),
    ];
    assert_eq!(forwards(&dir.join("slirp.sock")), expected);

    let resolv = std::fs::read_to_string(dir.join("resolv.conf")).unwrap();
    assert!(resolv.ends_with("nameserver 10.0.2.3\n"), "{resolv}");
    let inside = fx.instance_exec(
        "hpk-bubble-1",
        "cat /etc/resolv.conf; ip -4 -o addr show tap0",
    );
    assert!(inside.contains("nameserver 10.0.2.3"), "{inside}");
    assert!(inside.contains("inet 10.0.2.100/24"), "{inside}");

    // The host address came from the route to the default gateway.
    let argv = fx.instance_run_argv();
    for option in [
        "--fakeroot",
        "--writable-tmpfs",
        "--net",
        "home,cwd,tmp,hostfs",
    ] {
        assert!(
            argv.iter().any(|a| a == option),
            "{option} missing: {argv:?}"
        );
    }
    for env in [
        "HOST_IP=192.0.2.10",
        "ETCD_IP=192.0.2.10",
        "HPK_ROLE=controller",
    ] {
        assert!(argv.iter().any(|a| a == env), "{env} missing: {argv:?}");
    }

    let record = fx.record(1);
    let list = fx.command(&["list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.contains("1\tcontroller\trunning\t10.0.2.0/24"),
        "{listed}"
    );

    let stop = fx.command(&["stop", "1"]).status().unwrap();
    assert!(stop.success());
    assert!(started.wait().success());
    fx.assert_gone(1, &record);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn node_with_its_own_cidr_and_port_cleans_up_on_sigterm() {
    let fx = Fixture::new();
    let args = [
        "7",
        "--etcd-ip",
        "192.0.2.1",
        "--cidr",
        "10.77.0.0/16",
        "--vxlan-port",
        "4789",
    ];
    let (started, _) = fx.start(&args);
    let dir = fx.state().join("7");

    let expected = vec![("udp".to_string(), 4789, "10.77.0.100".to_string())];
    assert_eq!(forwards(&dir.join("slirp.sock")), expected);
    let resolv = std::fs::read_to_string(dir.join("resolv.conf")).unwrap();
    assert!(resolv.ends_with("nameserver 10.77.0.3\n"), "{resolv}");
    let argv = fx.instance_run_argv();
    for env in [
        "HOST_IP=192.0.2.10",
        "ETCD_IP=192.0.2.1",
        "HPK_ROLE=node",
        "VXLAN_PORT=4789",
    ] {
        assert!(argv.iter().any(|a| a == env), "{env} missing: {argv:?}");
    }

    let record = fx.record(7);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(started.pid()), Signal::SIGTERM).unwrap();
    assert!(started.wait().success());
    fx.assert_gone(7, &record);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_failing_slirp4netns_rolls_the_instance_back() {
    let fx = Fixture::new();
    let output = fx
        .command(&[
            "start",
            "2",
            "--host-ip",
            "192.0.2.10",
            "--etcd-ip",
            "192.0.2.1",
        ])
        .args(["--slirp4netns", "/bin/false"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("slirp4netns: ended before it was ready"),
        "{said}"
    );
    assert!(!fx.state().join("2").exists(), "state left");
    let standin = std::fs::read_dir(fx.standin_state()).unwrap().count();
    assert_eq!(standin, 0, "the instance was not stopped");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn stop_clears_what_a_killed_start_left() {
    let fx = Fixture::new();
    let (started, _) = fx.start(&["3", "--etcd-ip", "192.0.2.1"]);
    let record = fx.record(3);
    // No teardown; slirp4netns ends through its exit pipe.
    started.kill();

    let slirp = record.slirp_pid.unwrap();
    assert!(ended(slirp), "slirp4netns outlived start");
    let list = fx.command(&["list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("\tstale\t"));

    assert!(fx.command(&["stop", "3"]).status().unwrap().success());
    fx.assert_gone(3, &record);
}

#[test]
fn ids_without_a_network_are_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let output = Command::new(bin_path("hpk-bubble"))
        .args([
            "start",
            "255",
            "--host-ip",
            "192.0.2.10",
            "--role",
            "controller",
        ])
        .env("HPK_BUBBLE_STATE_DIR", tmp.path().join("state"))
        .env("HPK_BUBBLE_APPTAINER", "/nonexistent/apptainer")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("10.0.256.0/24 is not an address"), "{said}");
    assert!(!tmp.path().join("state").exists());
}
