//! Instances, `ps`, `gc`, a killed hpktainer, a new flannel lease, a bridge
//! name held by something else. Needs root; run by `cargo xtask test`.

mod common;

use std::time::{Duration, Instant};

use common::{Bubble, stderr, stdout};
use hpk_testbed::Proc;
use hpktainer::error;
use nix::sys::signal::Signal;

/// Waits (bounded) until `done` holds; for effects of SIGKILL, which has
/// no completion signal to wait on.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ps_json(bubble: &Bubble) -> serde_json::Value {
    let output = bubble.hpktainer(&["ps", "--json"]).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn an_instance_keeps_its_network_until_it_is_stopped() {
    let bubble = Bubble::new();
    let before = bubble.snapshot();
    let image = bubble.image.display().to_string();
    let output = bubble
        .hpktainer(&["instance", "start", &image, "web"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));

    let entries = ps_json(&bubble);
    assert_eq!(entries[0]["instance"], "web", "{entries}");
    let address = entries[0]["address"].as_str().unwrap().to_owned();
    let ip = address.split('/').next().unwrap();
    eventually("the instance's tap0", || bubble.ns.ping(ip, 1));

    let inside = bubble
        .hpktainer(&["exec", "instance://web", "ip", "-o", "-4", "addr"])
        .output()
        .unwrap();
    assert!(
        stdout(&inside).contains(&address),
        "{}{}",
        stdout(&inside),
        stderr(&inside)
    );

    let stop = bubble
        .hpktainer(&["instance", "stop", "web"])
        .output()
        .unwrap();
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert_eq!(ps_json(&bubble), serde_json::json!([]));
    bubble.assert_no_leaks(&before, "everything released");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn ps_shows_a_running_container_with_its_counters() {
    // The relay's counters: on the fast path no process counts frames.
    let bubble = Bubble::with_data_path("relay");
    let image = bubble.image.display().to_string();
    let script = "ping -c 2 -W 2 10.244.7.1 >/dev/null; echo pinged; exec sleep 60";
    let words = ["exec", &image, "sh", "-c", script];
    let container = Proc::spawn_until_line("container", bubble.hpktainer(&words), "pinged");

    let table = stdout(&bubble.hpktainer(&["ps"]).output().unwrap());
    let row = table.lines().nth(1).expect("one container row");
    for expected in ["10.244.7.", "0a:58:0a:f4:07:", "hpk", "relay", "sleep 60"] {
        assert!(row.contains(expected), "{expected} missing in {table}");
    }
    let entries = ps_json(&bubble);
    assert!(
        entries[0]["counters"]["tap_to_socket"]["frames"]
            .as_u64()
            .unwrap()
            >= 2
    );
    assert_eq!(entries[0]["live"], true);
    container.stop(Signal::SIGTERM);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_killed_hpktainer_takes_its_container_down_and_gc_reclaims_the_rest() {
    let bubble = Bubble::new();
    let before = bubble.snapshot();
    let image = bubble.image.display().to_string();
    let words = ["exec", &image, "sh", "-c", "echo up; exec sleep 600"];
    let container = Proc::spawn_until_line("container", bubble.hpktainer(&words), "up");
    container.stop(Signal::SIGKILL);

    // The relay and the container die with hpktainer (parent-death signal);
    // the record, socket directory and lease stay for gc.
    eventually("relay and container gone", || bubble.processes().is_empty());
    assert_eq!(ps_json(&bubble)[0]["live"], false);
    let gc = bubble.hpktainer(&["gc"]).output().unwrap();
    assert!(gc.status.success(), "{}", stderr(&gc));
    let report: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(report["released"].as_array().unwrap().len(), 1, "{report}");
    bubble.assert_no_leaks(&before, "nothing left after gc");

    // A new container gets an address again.
    assert!(bubble.exec(&[], &["true"]).status.success());
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn gc_all_removes_the_bridge_and_the_nat_rule_once_no_container_is_left() {
    let bubble = Bubble::new();
    assert!(bubble.exec(&[], &["true"]).status.success());
    assert!(bubble.ns.sh("ip -o link").contains("hpk-bridge"));
    assert!(
        bubble
            .ns
            .sh("iptables -t nat -S POSTROUTING")
            .contains("hpktainer")
    );

    let gc = bubble.hpktainer(&["gc", "--all"]).output().unwrap();
    assert!(gc.status.success(), "{}", stderr(&gc));
    let report: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(report["bridge_removed"], true, "{report}");
    assert_eq!(report["nat_rule_removed"], true, "{report}");
    assert!(!bubble.ns.sh("ip -o link").contains("hpk-bridge"));
    assert!(
        !bubble
            .ns
            .sh("iptables -t nat -S POSTROUTING")
            .contains("hpktainer")
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_new_flannel_lease_replaces_the_stale_gateway() {
    let bubble = Bubble::new();
    assert!(bubble.exec(&[], &["true"]).status.success());
    let new_lease = common::SUBNET_ENV.replace("10.244.7.1/24", "10.244.9.1/24");
    std::fs::write(bubble.path("subnet.env"), new_lease).unwrap();

    let output = bubble.exec(&[], &["sh", "-c", "ip -o -4 addr show tap0"]);
    assert!(stdout(&output).contains("10.244.9."), "{}", stderr(&output));
    let bridge = bubble.ns.sh("ip -o -4 addr show hpk-bridge");
    assert!(
        bridge.contains("10.244.9.1/24") && !bridge.contains("10.244.7.1"),
        "{bridge}"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_non_bridge_holding_the_bridge_name_is_refused() {
    let bubble = Bubble::new();
    bubble
        .ns
        .ip("link add hpk-bridge type veth peer name hpkpeer");
    let before = bubble.snapshot();
    let output = bubble.exec(&[], &["true"]);
    assert_eq!(
        output.status.code(),
        Some(i32::from(error::EXIT_CONFIG)),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("not a bridge"),
        "{}",
        stderr(&output)
    );
    bubble.assert_no_leaks(&before, "nothing leaked: no lease, no relay, no record");
    hpk_testbed::report::record_detail(
        hpk_testbed::report::kind::HOSTILE_INPUTS,
        1,
        "non-bridge holds the bridge name",
    );
}
