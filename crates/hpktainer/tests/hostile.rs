//! Hostile and broken input beyond `errors.rs`: each refused with a clear
//! message, its own exit status, and nothing left behind. Needs root; run
//! by `cargo xtask test`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{Bubble, stderr};
use hpk_testbed::report;
use hpktainer::error;

/// Runs `exec IMAGE true` with `adjust` applied; asserts the exit status,
/// that stderr holds every one of `needles`, and that nothing leaked.
fn refused(
    bubble: &Bubble,
    case: &str,
    adjust: impl FnOnce(&mut Command),
    status: u8,
    needles: &[&str],
) {
    let before = bubble.snapshot();
    let image = bubble.image.display().to_string();
    let mut command = bubble.hpktainer(&["exec", &image, "true"]);
    adjust(&mut command);
    let output = command.output().unwrap();
    let text = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(i32::from(status)),
        "{case}: {text}"
    );
    for needle in needles {
        assert!(
            text.contains(needle),
            "{case}: {needle:?} missing in {text}"
        );
    }
    bubble.assert_no_leaks(&before, case);
    report::record_detail(report::kind::HOSTILE_INPUTS, 1, case);
}

/// A subnet.env with `text`, refused as malformed, naming what is wrong.
fn bad_subnet_env(bubble: &Bubble, case: &str, text: &[u8], needles: &[&str]) {
    std::fs::write(bubble.path("subnet.env"), text).unwrap();
    refused(bubble, case, |_| {}, error::EXIT_BAD_SUBNET_ENV, needles);
}

const NET: &str = "FLANNEL_NETWORK=10.244.0.0/16\n";

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn broken_subnet_env_files_are_refused_by_line_and_key() {
    let bubble = Bubble::new();
    bad_subnet_env(&bubble, "empty subnet.env", b"", &["is empty"]);
    let truncated = format!("{NET}FLANNEL_SUBNET=10.244.7");
    bad_subnet_env(
        &bubble,
        "value cut short",
        truncated.as_bytes(),
        &["subnet.env:2"],
    );
    let truncated = format!("{NET}FLANNEL_SUB");
    bad_subnet_env(
        &bubble,
        "key cut short",
        truncated.as_bytes(),
        &["subnet.env:2"],
    );
    bad_subnet_env(
        &bubble,
        "binary subnet.env",
        b"FLANNEL_\xff\xfe\x00\x01",
        &["subnet.env"],
    );
    std::fs::remove_file(bubble.path("subnet.env")).unwrap();
    std::fs::create_dir(bubble.path("subnet.env")).unwrap();
    refused(
        &bubble,
        "subnet.env is a directory",
        |_| {},
        error::EXIT_BAD_SUBNET_ENV,
        &["subnet.env"],
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn nonsensical_subnets_gateways_and_mtus_are_refused() {
    let bubble = Bubble::new();
    let env =
        |subnet: &str, mtu: &str| format!("{NET}FLANNEL_SUBNET={subnet}\nFLANNEL_MTU={mtu}\n");
    let cases = [
        ("no room", env("10.244.7.1/31", "1450"), "leaves no address"),
        (
            "subnet outside the network",
            env("10.99.7.1/24", "1450"),
            "not inside",
        ),
        (
            "multicast gateway",
            env_in("224.0.0.0/4", "224.1.1.1/24"),
            "FLANNEL_SUBNET",
        ),
        (
            "loopback gateway",
            env_in("127.0.0.0/8", "127.0.7.1/24"),
            "FLANNEL_SUBNET",
        ),
        (
            "unspecified gateway",
            env_in("0.0.0.0/8", "0.0.7.1/24"),
            "FLANNEL_SUBNET",
        ),
        ("MTU zero", env("10.244.7.1/24", "0"), "FLANNEL_MTU"),
        (
            "MTU below the minimum",
            env("10.244.7.1/24", "67"),
            "FLANNEL_MTU",
        ),
        (
            "MTU above a tap's",
            env("10.244.7.1/24", "70000"),
            "FLANNEL_MTU",
        ),
        ("MTU negative", env("10.244.7.1/24", "-1"), "FLANNEL_MTU"),
        (
            "MTU not a number",
            env("10.244.7.1/24", "lots"),
            "FLANNEL_MTU",
        ),
    ];
    for (case, text, needle) in cases {
        bad_subnet_env(&bubble, case, text.as_bytes(), &[needle, "subnet.env:"]);
    }
}

fn env_in(network: &str, subnet: &str) -> String {
    format!("FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU=1450\n")
}

/// A stand-in `host-local` that prints `output` and exits with `status`,
/// in a directory of its own for CNI_PATH.
fn fake_host_local(bubble: &Bubble, name: &str, output: &str, status: i32) -> String {
    let dir = bubble.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    let plugin = dir.join("host-local");
    let script = format!("#!/bin/sh\ncat >/dev/null\nprintf '%s' '{output}'\nexit {status}\n");
    std::fs::write(&plugin, script).unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.display().to_string()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_failing_or_garbling_host_local_is_reported_as_such() {
    let bubble = Bubble::new();
    let error_json = r#"{"cniVersion":"1.0.0","code":11,"msg":"disk on fire"}"#;
    let failing = fake_host_local(&bubble, "cni-failing", error_json, 1);
    refused(
        &bubble,
        "host-local fails",
        |c| {
            c.env("CNI_PATH", &failing);
        },
        error::EXIT_IPAM,
        &["host-local", "disk on fire"],
    );
    let garbling = fake_host_local(&bubble, "cni-garbage", "}{ not json", 0);
    refused(
        &bubble,
        "host-local answers garbage",
        |c| {
            c.env("CNI_PATH", &garbling);
        },
        error::EXIT_IPAM,
        &["host-local"],
    );
    let silent = fake_host_local(&bubble, "cni-silent", "", 0);
    refused(
        &bubble,
        "host-local answers nothing",
        |c| {
            c.env("CNI_PATH", &silent);
        },
        error::EXIT_IPAM,
        &["host-local"],
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn without_cap_net_admin_the_run_says_so() {
    let bubble = Bubble::new();
    let image = bubble.image.display().to_string();
    let before = bubble.snapshot();
    // setpriv drops the capability from the bounding set, so the exec'd
    // hpktainer (still uid 0) has no CAP_NET_ADMIN.
    let mut command = bubble.ns.command("setpriv");
    command.args(["--bounding-set", "-net_admin", "--"]);
    command
        .arg(common::HPKTAINER)
        .args(["exec", &image, "true"]);
    for (key, value) in bubble.hpktainer(&["x"]).get_envs() {
        if let Some(value) = value {
            command.env(key, value);
        }
    }
    let output = command.output().unwrap();
    let text = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(i32::from(error::EXIT_NO_PERMISSION)),
        "{text}"
    );
    assert!(text.contains("CAP_NET_ADMIN"), "{text}");
    bubble.assert_no_leaks(&before, "without CAP_NET_ADMIN");
    report::record_detail(report::kind::HOSTILE_INPUTS, 1, "no CAP_NET_ADMIN");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_run_dir_too_long_for_socket_paths_is_refused() {
    let bubble = Bubble::new();
    let long = bubble.path(&"r".repeat(90));
    refused(
        &bubble,
        "socket path too long",
        |c| {
            c.env("HPKTAINER_RUN_DIR", &long);
        },
        error::EXIT_CONFIG,
        &["too long", "--run-dir"],
    );
    assert!(!long.exists(), "nothing created under the refused run dir");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_record_from_a_newer_hpktainer_is_left_alone_and_named() {
    let bubble = Bubble::new();
    assert!(bubble.exec(&[], &["true"]).status.success());
    let record = bubble.path("run/containers/future0001.json");
    let future = r#"{"schema":99,"id":"future0001","pid":1,"shape":"unknown to us"}"#;
    std::fs::write(&record, future).unwrap();

    // gc must neither remove nor misread it, and says why it skipped it.
    let before = bubble.snapshot();
    let gc = bubble.hpktainer(&["gc"]).output().unwrap();
    let text = stderr(&gc);
    assert!(gc.status.success(), "{text}");
    let report: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(
        report["unreadable"],
        serde_json::json!(["future0001"]),
        "{report}"
    );
    assert!(text.contains("newer hpktainer"), "{text}");
    assert_eq!(std::fs::read_to_string(&record).unwrap(), future);

    // gc --all keeps the bridge while a record it cannot judge exists.
    let gc = bubble.hpktainer(&["gc", "--all"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(report["bridge_removed"], false, "{report}");
    bubble.assert_no_leaks(&before, "a newer record");
    report::record_detail(report::kind::HOSTILE_INPUTS, 1, "newer record schema");
}
