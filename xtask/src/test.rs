//! `cargo xtask test`: builds everything and runs every test.
//!
//! Privileged tests are `#[ignore]`d in the source, so a plain `cargo test`
//! on a machine without root reports them as ignored, never as passed. As
//! root with `/dev/net/tun` this task runs them with `--include-ignored`.

use std::process::Command;

use anyhow::Result;

use crate::prereq;

/// Runs the task.
pub fn run(args: &[String]) -> Result<()> {
    let install = !args.iter().any(|arg| arg == "--no-install");
    let passthrough: Vec<&String> = match args.iter().position(|arg| arg == "--") {
        Some(at) => args[at + 1..].iter().collect(),
        None => Vec::new(),
    };
    let privileged = prereq::privileged();
    if privileged {
        prereq::ensure(prereq::TEST_TOOLS, install)?;
    } else {
        eprintln!(
            "xtask: not root (or no /dev/net/tun): privileged tests will be reported as ignored"
        );
    }

    let root = crate::workspace_root();
    prereq::run(
        Command::new("cargo")
            .current_dir(&root)
            .args(["build", "--workspace", "--bins"]),
    )?;

    let mut test = Command::new("cargo");
    test.current_dir(&root)
        .args(["test", "--workspace", "--no-fail-fast", "--"]);
    if privileged {
        test.arg("--include-ignored");
    }
    test.args(passthrough);
    prereq::run(&mut test)?;

    for fuzzed in crate::fuzz::bounded(install)?.unwrap_or_default() {
        use hpk_testbed::report::{kind, record_detail};
        let what = format!("{}, {} s", fuzzed.target, fuzzed.seconds);
        record_detail(kind::FUZZ_ITERATIONS, fuzzed.runs, &what);
    }
    if privileged {
        eprintln!("xtask: all tests passed, privileged ones included");
    }
    Ok(())
}
