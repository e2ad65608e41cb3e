//! The bounded fuzz run of `cargo xtask test`: the relay's frame decoder
//! under libFuzzer (`crates/hpk-net-daemon/fuzz`) for a fixed time.
//!
//! cargo-fuzz is installed with `cargo install` when missing (about 30 s
//! here); the first instrumented build takes two to three minutes, later
//! ones are incremental. No sanitizer is used: AddressSanitizer needs a
//! nightly compiler, and the decoder is safe Rust, where the fuzzer's job is
//! to find panics and broken invariants, which the target asserts.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::prereq;

/// The fuzz target the bounded run exercises.
const TARGET: &str = "frame_reader";
/// Default length of the bounded run; `HPK_FUZZ_SECONDS` overrides it.
const DEFAULT_SECONDS: u64 = 60;
/// Largest input libFuzzer builds: enough for several frames of the small
/// maxima the target picks, and for buffer compaction.
const MAX_LEN: usize = 16_384;

/// What one bounded run did.
pub struct Outcome {
    pub runs: u64,
    pub seconds: u64,
}

/// Runs the decoder's fuzz target for the configured time; `None` when
/// cargo-fuzz is missing and installing is not allowed (reported as skipped).
pub fn bounded(install: bool) -> Result<Option<Outcome>> {
    if !have_cargo_fuzz() {
        if !install {
            eprintln!("xtask: fuzz: SKIPPED (cargo-fuzz is missing and --no-install was given)");
            return Ok(None);
        }
        let started = Instant::now();
        eprintln!("xtask: fuzz: installing cargo-fuzz");
        prereq::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
        eprintln!(
            "xtask: fuzz: cargo-fuzz installed in {:.0?}",
            started.elapsed()
        );
    }
    let seconds = match std::env::var("HPK_FUZZ_SECONDS") {
        Ok(text) => text
            .parse()
            .with_context(|| format!("HPK_FUZZ_SECONDS={text:?} is not a number of seconds"))?,
        Err(_) => DEFAULT_SECONDS,
    };
    let runs = run_target(seconds)?;
    eprintln!("xtask: fuzz: {TARGET}: {runs} inputs in {seconds} s, no failure");
    Ok(Some(Outcome { runs, seconds }))
}

fn have_cargo_fuzz() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Builds and runs the target, echoing libFuzzer's status lines; returns
/// the number of inputs it ran.
fn run_target(seconds: u64) -> Result<u64> {
    let dir = crate::workspace_root().join("crates/hpk-net-daemon/fuzz");
    // A corpus kept between local runs; a fresh clone starts from nothing.
    let corpus = dir.join("corpus").join(TARGET);
    std::fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
    let mut command = Command::new("cargo");
    command
        .current_dir(&dir)
        .args(["fuzz", "run", "--sanitizer", "none", TARGET])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={MAX_LEN}"))
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn().context("start cargo fuzz")?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut runs = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.context("read cargo fuzz output")?;
        if let Some(n) = done_runs(&line) {
            runs = Some(n);
        }
        // libFuzzer's periodic lines are noise in CI's log; keep the rest.
        if !line.starts_with('#') {
            eprintln!("{line}");
        }
    }
    let status = child.wait().context("wait for cargo fuzz")?;
    if !status.success() {
        bail!(
            "the fuzz target {TARGET} failed ({status}) after {:.0?}; the input that broke it \
             is under crates/hpk-net-daemon/fuzz/artifacts/{TARGET}/ (replay it with \
             `cargo fuzz run --sanitizer none {TARGET} <file>` in that directory)",
            started.elapsed()
        );
    }
    runs.with_context(|| {
        let took = started.elapsed();
        format!("cargo fuzz ended after {took:.0?} without libFuzzer's \"Done N runs\" line")
    })
}

/// The N of libFuzzer's closing `Done N runs in S second(s)` line.
fn done_runs(line: &str) -> Option<u64> {
    line.strip_prefix("Done ")?.split(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closing_line_gives_the_run_count() {
        assert_eq!(
            done_runs("Done 3781164 runs in 21 second(s)"),
            Some(3_781_164)
        );
        assert_eq!(done_runs("#3781164\tDONE   cov: 108 ft: 428"), None);
        assert_eq!(done_runs("INFO: Done nothing"), None);
    }
}
