//! Crash safety: hpktainer, its relay or its container killed with SIGKILL
//! at each kill point, then `hpktainer gc`: nothing leaked, a live container
//! beside it untouched, and a new container gets an address.
//!
//! Needs root and binaries built with the `kill-points` feature (`cargo
//! xtask test` builds them so). A binary without the feature never stops at
//! a point, and every test here then fails saying so.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Bubble, GATEWAY, stderr, stdout};
use hpk_net_daemon::killpoint;
use hpk_testbed::leaks::Snapshot;
use hpk_testbed::process::shell_status;
use hpk_testbed::transfer::Receiver;
use hpk_testbed::{Proc, report};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A bubble with one live container, and the snapshot taken with it running.
struct Scenario {
    bubble: Bubble,
    live: Proc,
    live_address: String,
    before: Snapshot,
}

/// What to do when the binaries have no kill points.
const BUILD_WITH_KILL_POINTS: &str = "the binaries were built without the kill-points feature; \
    build them with `cargo xtask test`, or `cargo build --workspace --bins --features \
    hpktainer/kill-points` and `cargo test -p hpktainer --features kill-points`";

impl Scenario {
    fn new() -> Self {
        // hpktainer is built by this cargo invocation with this crate's
        // features, so this is the binary's answer too.
        assert!(killpoint::compiled_in(), "{BUILD_WITH_KILL_POINTS}");
        // The mid-transfer kill point and the relay counters live in the relay.
        let bubble = Bubble::with_data_path("relay");
        let image = bubble.image.display().to_string();
        let script = "echo up; exec sleep 600";
        let words = ["exec", &image, "sh", "-c", script];
        let live = Proc::spawn_until_line("live container", bubble.hpktainer(&words), "up");
        let live_address = address_of(&bubble, live.pid()).expect("the live container's record");
        let before = bubble.snapshot();
        Self {
            bubble,
            live,
            live_address,
            before,
        }
    }

    /// `hpktainer ARGS` armed for `point`, its stderr kept in a file.
    fn armed(&self, point: &str, words: &[&str]) -> (Proc, PathBuf) {
        let log = self.bubble.path(&format!("{point}.stderr"));
        let mut command = self.bubble.hpktainer(words);
        command
            .env(killpoint::ENV, point)
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        (Proc::spawn(point, command), log)
    }

    /// `exec IMAGE sh -c SCRIPT` armed for `point`.
    fn armed_exec(&self, point: &str, script: &str, extra: &[String]) -> (Proc, PathBuf) {
        let image = self.bubble.image.display().to_string();
        let mut words: Vec<&str> = vec!["exec"];
        words.extend(extra.iter().map(String::as_str));
        words.extend([image.as_str(), "sh", "-c", script]);
        self.armed(point, &words)
    }

    /// gc releases `released` records; then nothing leaked, the live
    /// container is untouched, and a new container gets an address.
    fn finish(self, released: usize) {
        let bubble = &self.bubble;
        let gc = bubble.hpktainer(&["gc"]).output().unwrap();
        assert!(gc.status.success(), "{}", stderr(&gc));
        let report: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
        let freed = report["released"].as_array().unwrap().len();
        assert_eq!(freed, released, "gc report: {report}");
        assert_eq!(
            report["live"], 1,
            "the live container is seen live: {report}"
        );
        bubble.assert_no_leaks(&self.before, "after the kill and gc");

        let ip = self.live_address.split('/').next().unwrap();
        assert!(
            bubble.ns.ping(ip, 1),
            "the live container still answers at {ip}"
        );
        let fresh = bubble.exec(&[], &["sh", "-c", "ip -o -4 addr show tap0"]);
        assert!(fresh.status.success(), "{}", stderr(&fresh));
        assert!(
            stdout(&fresh).contains("inet 10.244.7."),
            "{}",
            stdout(&fresh)
        );
        assert!(
            !stdout(&fresh).contains(&self.live_address),
            "a fresh address"
        );
        bubble.assert_no_leaks(&self.before, "after a new container came and went");
        self.live.stop(Signal::SIGTERM);
    }
}

/// The record hpktainer `pid` owns, once it exists.
fn record_of(bubble: &Bubble, pid: i32) -> Option<serde_json::Value> {
    let dir = std::fs::read_dir(bubble.path("run/containers")).ok()?;
    dir.flatten()
        .filter_map(|entry| std::fs::read(entry.path()).ok())
        .filter_map(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .find(|record| record["pid"] == pid)
}

fn address_of(bubble: &Bubble, pid: i32) -> Option<String> {
    Some(record_of(bubble, pid)?["address"].as_str()?.to_owned())
}

/// The relay pid recorded for hpktainer `pid`.
fn relay_of(bubble: &Bubble, pid: i32) -> i32 {
    let record = record_of(bubble, pid).expect("a record");
    record["relay_pid"].as_i64().expect("a relay pid") as i32
}

/// hpktainer's children other than the relay: apptainer (the stand-in).
fn apptainer_of(bubble: &Bubble, pid: i32) -> i32 {
    let relay = relay_of(bubble, pid);
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    children
        .split_whitespace()
        .map(|child| child.parse::<i32>().unwrap())
        .find(|child| *child != relay)
        .expect("apptainer runs under hpktainer")
}

/// Waits until `pid` has stopped itself at `point` (its log says it
/// reached the point); fails loudly if it ends instead.
fn wait_stopped(pid: i32, point: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match process_state(pid) {
            Some('T') => break,
            None | Some('Z') | Some('X') => panic!(
                "pid {pid} ended without stopping at kill point {point}: \
                 {BUILD_WITH_KILL_POINTS}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} never reached {point}; if its log below names no kill point at all, \
             {BUILD_WITH_KILL_POINTS}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        text.contains(&format!("reached kill point {point}")),
        "{text}"
    );
    report::record_detail(report::kind::KILL_POINT_HIT, 1, point);
}

fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

fn sigkill(pid: i32, what: &str) {
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    report::record_detail(report::kind::PROCESS_KILLED, 1, what);
}

fn resume(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGCONT).unwrap();
}

/// Runs `scenario` once, or five times in the long form of the suite
/// (`cargo xtask test --reliability`), each time in a fresh bubble.
fn repeated(scenario: impl Fn()) {
    let rounds = if report::full() { 5 } else { 1 };
    for _ in 0..rounds {
        scenario();
    }
}

/// Kills hpktainer where it stopped: everything it held is left for gc.
fn hpktainer_killed_at(point: &str) {
    let scenario = Scenario::new();
    let (run, log) = scenario.armed_exec(point, "exec sleep 600", &[]);
    wait_stopped(run.pid(), point, &log);
    sigkill(run.pid(), "hpktainer");
    run.stop(Signal::SIGKILL);
    scenario.finish(1);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn hpktainer_killed_before_allocation() {
    repeated(|| {
        hpktainer_killed_at(killpoint::BEFORE_ALLOCATION);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn hpktainer_killed_after_allocation() {
    repeated(|| {
        hpktainer_killed_at(killpoint::AFTER_ALLOCATION);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn hpktainer_killed_after_the_relay_started() {
    repeated(|| {
        hpktainer_killed_at(killpoint::AFTER_RELAY_STARTED);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn hpktainer_killed_after_apptainer_started() {
    repeated(|| {
        hpktainer_killed_at(killpoint::AFTER_APPTAINER_STARTED);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn relay_killed_before_the_container_connects() {
    repeated(|| {
        let scenario = Scenario::new();
        let point = killpoint::AFTER_RELAY_STARTED;
        let (mut run, log) = scenario.armed_exec(point, "true", &[]);
        wait_stopped(run.pid(), point, &log);
        sigkill(relay_of(&scenario.bubble, run.pid()), "relay");
        resume(run.pid());

        // The client finds no server, so the container fails; hpktainer releases.
        let status = shell_status(run.wait());
        let text = std::fs::read_to_string(&log).unwrap();
        assert_ne!(status, 0, "{text}");
        assert!(text.contains("no relay server answered"), "{text}");
        scenario.finish(0);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn container_killed_after_apptainer_started() {
    repeated(|| {
        let scenario = Scenario::new();
        let point = killpoint::AFTER_APPTAINER_STARTED;
        let (mut run, log) = scenario.armed_exec(point, "exec sleep 600", &[]);
        wait_stopped(run.pid(), point, &log);
        sigkill(apptainer_of(&scenario.bubble, run.pid()), "container");
        resume(run.pid());

        assert_eq!(shell_status(run.wait()), 137, "the container's own status");
        scenario.finish(0);
    });
}

/// A container sending to the bubble, its relay stopped mid-transfer.
fn stopped_mid_transfer(scenario: &Scenario, port: u16) -> (Proc, PathBuf, i32, Receiver) {
    let addr = format!("0.0.0.0:{port}").parse().unwrap();
    let receiver = Receiver::listen(&scenario.bubble.ns, addr);
    let send = format!("/probe send {GATEWAY}:{port} {} 3", 64 << 20);
    let point = killpoint::MID_TRANSFER;
    let (run, log) = scenario.armed_exec(point, &send, &scenario.bubble.probe_bind());
    let deadline = Instant::now() + Duration::from_secs(20);
    let relay = loop {
        let record = record_of(&scenario.bubble, run.pid());
        if let Some(relay) = record.and_then(|r| r["relay_pid"].as_i64()) {
            break relay as i32;
        }
        assert!(Instant::now() < deadline, "no relay recorded");
        std::thread::sleep(Duration::from_millis(10));
    };
    wait_stopped(relay, point, &log);
    (run, log, relay, receiver)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn relay_killed_mid_transfer() {
    repeated(|| {
        let scenario = Scenario::new();
        let (run, _log, relay, _receiver) = stopped_mid_transfer(&scenario, 5101);
        sigkill(relay, "relay");
        // The container waits for a relay that never returns; ending it
        // through hpktainer releases everything.
        assert_eq!(shell_status(run.stop(Signal::SIGTERM)), 143);
        scenario.finish(0);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn hpktainer_killed_mid_transfer() {
    repeated(|| {
        let scenario = Scenario::new();
        let (run, _log, _relay, _receiver) = stopped_mid_transfer(&scenario, 5102);
        sigkill(run.pid(), "hpktainer");
        run.stop(Signal::SIGKILL);
        scenario.finish(1);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn gc_killed_while_releasing_a_dead_container() {
    repeated(|| {
        let scenario = Scenario::new();
        let image = scenario.bubble.image.display().to_string();
        let words = ["exec", &image, "sh", "-c", "echo up; exec sleep 600"];
        let dead = Proc::spawn_until_line("doomed", scenario.bubble.hpktainer(&words), "up");
        let dead_pid = dead.pid();
        dead.stop(Signal::SIGKILL);
        report::record_detail(report::kind::PROCESS_KILLED, 1, "hpktainer");
        assert!(record_of(&scenario.bubble, dead_pid).is_some());

        let point = killpoint::DURING_GC;
        let (gc, log) = scenario.armed(point, &["gc"]);
        wait_stopped(gc.pid(), point, &log);
        sigkill(gc.pid(), "gc");
        gc.stop(Signal::SIGKILL);
        let record = record_of(&scenario.bubble, dead_pid).expect("the half-released record");
        assert_eq!(record["phase"], "releasing", "{record}");
        scenario.finish(1);
    });
}
