//! `cargo xtask test`: builds everything and runs every test;
//! `cargo xtask test --reliability` runs the reliability suite alone, in its
//! long form, and both end with the reliability summary.
//!
//! Privileged tests are `#[ignore]`d in the source, so a plain `cargo test`
//! on a machine without root reports them as ignored, never as passed. As
//! root with `/dev/net/tun` this task runs them with `--include-ignored`.
//!
//! Binaries are built with hpktainer's `kill-points` feature (the crash
//! tests stop them at named points); tests are built with the same feature,
//! so `cargo test` does not rebuild the binaries without it. Release and
//! dist builds never enable it.

use std::process::Command;

use anyhow::{Result, bail};

use crate::prereq;
use crate::reliability::{self, Expect};

/// The feature the test binaries are built with.
const FEATURES: [&str; 2] = ["--features", "hpktainer/kill-points"];

/// Runs the task.
pub fn run(args: &[String]) -> Result<()> {
    let (own, passthrough) = match args.iter().position(|arg| arg == "--") {
        Some(at) => (&args[..at], &args[at + 1..]),
        None => (args, &[][..]),
    };
    let install = !own.iter().any(|arg| arg == "--no-install");
    let suite_only = own.iter().any(|arg| arg == "--reliability");
    let privileged = prereq::privileged();
    if privileged {
        prereq::ensure(prereq::TEST_TOOLS, install)?;
    } else if suite_only {
        bail!("the reliability suite needs root and /dev/net/tun: run it as root");
    } else {
        eprintln!(
            "xtask: not root (or no /dev/net/tun): privileged tests will be reported as ignored"
        );
    }

    let root = crate::workspace_root();
    prereq::run(
        Command::new("cargo")
            .current_dir(&root)
            .args(["build", "--workspace", "--bins"])
            .args(FEATURES),
    )?;

    let report = reliability::fresh_report(&root)?;
    let mut test = Command::new("cargo");
    test.current_dir(&root)
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(FEATURES)
        .env(hpk_testbed::report::ENV, &report);
    if suite_only {
        for target in reliability::SUITE {
            test.args(["--test", target]);
        }
        test.env(hpk_testbed::report::FULL_ENV, "1");
    }
    test.arg("--");
    if privileged {
        test.arg("--include-ignored");
    }
    test.args(passthrough);
    let tests = prereq::run(&mut test);
    // Its iterations join the summary; a failure fails the task like a test.
    let fuzzed = crate::fuzz::bounded_into(&report, install, suite_only);

    if privileged {
        // Filters passed through may leave parts of the suite out.
        let expect = match passthrough.is_empty() {
            true => Expect::WholeSuite,
            false => Expect::Partial,
        };
        let judged = reliability::summarize(&report, expect);
        tests?;
        fuzzed?;
        judged?;
        eprintln!("xtask: all tests passed, privileged ones included");
        return Ok(());
    }
    tests?;
    fuzzed
}
