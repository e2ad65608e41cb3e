//! Bad input and missing pieces: a clear message, a distinct exit status,
//! and nothing left behind. Needs root; run by `cargo xtask test`.

mod common;

use common::{Bubble, HPKTAINER, stderr};
use hpk_testbed::report;
use hpktainer::error;

/// Runs `exec IMAGE true` with `adjust` applied; returns status and stderr.
fn failing_run(bubble: &Bubble, adjust: impl FnOnce(&mut std::process::Command)) -> (i32, String) {
    let image = bubble.image.display().to_string();
    let mut command = bubble.hpktainer(&["exec", &image, "true"]);
    adjust(&mut command);
    let output = command.output().unwrap();
    (output.status.code().unwrap_or(-1), stderr(&output))
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn missing_subnet_env_is_named_with_what_to_do() {
    let bubble = Bubble::new();
    let before = bubble.snapshot();
    let (code, text) = failing_run(&bubble, |c| {
        c.env("HPKTAINER_SUBNET_ENV", "/nonexistent/subnet.env");
    });
    assert_eq!(code, i32::from(error::EXIT_NO_SUBNET_ENV), "{text}");
    assert!(text.contains("/nonexistent/subnet.env") && text.contains("HPKTAINER_SUBNET_ENV"));
    bubble.assert_no_leaks(&before, "after the refused run");
    report::record_detail(report::kind::HOSTILE_INPUTS, 1, "missing subnet.env");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn malformed_subnet_env_names_the_line() {
    let bubble = Bubble::new();
    std::fs::write(
        bubble.path("subnet.env"),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=banana\n",
    )
    .unwrap();
    let before = bubble.snapshot();
    let (code, text) = failing_run(&bubble, |_| {});
    assert_eq!(code, i32::from(error::EXIT_BAD_SUBNET_ENV), "{text}");
    assert!(text.contains("subnet.env:2"), "{text}");
    bubble.assert_no_leaks(&before, "after the refused run");
    report::record_detail(report::kind::HOSTILE_INPUTS, 1, "malformed subnet.env");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn missing_host_local_says_what_to_install() {
    let bubble = Bubble::new();
    let before = bubble.snapshot();
    // Hide every standard plugin directory in a private mount namespace.
    let image = bubble.image.display().to_string();
    let script = "for d in /opt/cni/bin /usr/libexec/cni /usr/lib/cni; do \
                  [ -d $d ] && mount -t tmpfs none $d; done; exec \"$@\"";
    let mut command = bubble.ns.command("unshare");
    command.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        HPKTAINER,
    ]);
    command.args(["exec", &image, "true"]);
    for (key, value) in bubble.hpktainer(&["x"]).get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    command.env_remove("CNI_PATH");
    let output = command.output().unwrap();
    let text = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(i32::from(error::EXIT_IPAM)),
        "{text}"
    );
    assert!(
        text.contains("containernetworking-plugins") || text.contains("CNI_PATH"),
        "{text}"
    );
    bubble.assert_no_leaks(&before, "after the refused run");
    report::record_detail(report::kind::HOSTILE_INPUTS, 1, "host-local missing");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn missing_apptainer_is_reported_as_not_found() {
    let bubble = Bubble::new();
    let before = bubble.snapshot();
    let (code, text) = failing_run(&bubble, |c| {
        c.env("HPKTAINER_APPTAINER", "/nonexistent/apptainer");
    });
    assert_eq!(code, i32::from(error::EXIT_NOT_FOUND), "{text}");
    assert!(text.contains("HPKTAINER_APPTAINER"), "{text}");
    bubble.assert_no_leaks(&before, "after the refused run");
    report::record_detail(report::kind::HOSTILE_INPUTS, 1, "apptainer missing");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_users_own_network_options_are_refused() {
    let bubble = Bubble::new();
    let before = bubble.snapshot();
    let image = bubble.image.display().to_string();
    for words in [
        vec!["exec", "--network", "bridge", &image, "true"],
        vec!["run", "--net", &image],
        vec!["exec", "--netns-path=/proc/1/ns/net", &image, "true"],
    ] {
        let output = bubble.hpktainer(&words).output().unwrap();
        let text = stderr(&output);
        assert_eq!(
            output.status.code(),
            Some(i32::from(error::EXIT_USAGE)),
            "{words:?}: {text}"
        );
        assert!(text.contains("not allowed"), "{text}");
    }
    let output = bubble
        .hpktainer(&["exec", &image, "true"])
        .env("APPTAINER_NETWORK", "bridge")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(i32::from(error::EXIT_USAGE)));
    bubble.assert_no_leaks(&before, "after the refused run");
    report::record_detail(report::kind::HOSTILE_INPUTS, 1, "user network options");
}
