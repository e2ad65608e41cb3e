//! The bounded fuzz run of `cargo xtask test`: the relay's frame decoder
//! and source filter under libFuzzer (`crates/hpk-net-daemon/fuzz`), each
//! for a fixed time.
//!
//! cargo-fuzz is installed with `cargo install` when missing (about 30 s
//! here); the first instrumented build takes two to three minutes, later
//! ones are incremental. No sanitizer is used: AddressSanitizer needs a
//! nightly compiler, and the decoder is safe Rust, where the fuzzer's job is
//! to find panics and broken invariants, which the target asserts.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use hpk_testbed::report::{Fact, kind};

use crate::prereq;

/// The fuzz targets the bounded run exercises, with the largest input
/// libFuzzer may build for each: for the decoder, enough for several
/// frames of the small maxima it picks and for buffer compaction; for the
/// filter, one jumbo frame.
const TARGETS: &[(&str, usize)] = &[("frame_reader", 16_384), ("source_filter", 9_018)];
/// Default length of each target's run; `HPK_FUZZ_SECONDS` overrides it.
const DEFAULT_SECONDS: u64 = 30;
/// The same in the reliability suite's long form.
const LONG_SECONDS: u64 = 300;

/// What one target's bounded run did.
pub struct Outcome {
    pub target: &'static str,
    pub runs: u64,
    pub seconds: u64,
}

/// `cargo xtask fuzz [SECONDS]`: every target for SECONDS (default
/// `HPK_FUZZ_SECONDS`, else 30) each, for long runs by hand.
pub fn run(args: &[String]) -> Result<()> {
    let seconds = match args.first() {
        Some(text) => text
            .parse()
            .with_context(|| format!("{text:?} is not a number of seconds"))?,
        None => seconds(DEFAULT_SECONDS)?,
    };
    bounded(true, seconds)?;
    Ok(())
}

/// The bounded run of `cargo xtask test` (the long one with
/// `--reliability`), its iterations appended to the reliability report.
pub fn bounded_into(report: &Path, install: bool, long: bool) -> Result<()> {
    let seconds = seconds(if long { LONG_SECONDS } else { DEFAULT_SECONDS })?;
    for outcome in bounded(install, seconds)?.unwrap_or_default() {
        let fact = Fact {
            kind: kind::FUZZ_ITERATIONS.into(),
            value: outcome.runs,
            detail: Some(format!("{} {} s", outcome.target, outcome.seconds)),
            test: Some("xtask fuzz".into()),
            pid: std::process::id(),
        };
        let mut line = serde_json::to_vec(&fact).expect("a fact serialises");
        line.push(b'\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(report)
            .and_then(|mut file| file.write_all(&line))
            .with_context(|| format!("append to {}", report.display()))?;
    }
    Ok(())
}

/// `HPK_FUZZ_SECONDS`, else `default`.
fn seconds(default: u64) -> Result<u64> {
    match std::env::var("HPK_FUZZ_SECONDS") {
        Ok(text) => text
            .parse()
            .with_context(|| format!("HPK_FUZZ_SECONDS={text:?} is not a number of seconds")),
        Err(_) => Ok(default),
    }
}

/// Runs each fuzz target for the configured time; `None` when cargo-fuzz
/// is missing and installing is not allowed (reported as skipped).
fn bounded(install: bool, seconds: u64) -> Result<Option<Vec<Outcome>>> {
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
    let mut outcomes = Vec::new();
    for &(target, max_len) in TARGETS {
        let runs = run_target(target, max_len, seconds)?;
        eprintln!("xtask: fuzz: {target}: {runs} inputs in {seconds} s, no failure");
        outcomes.push(Outcome {
            target,
            runs,
            seconds,
        });
    }
    Ok(Some(outcomes))
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
fn run_target(target: &str, max_len: usize, seconds: u64) -> Result<u64> {
    let dir = crate::workspace_root().join("crates/hpk-net-daemon/fuzz");
    // A corpus kept between local runs; a fresh clone starts from nothing.
    let corpus = dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
    let mut command = Command::new("cargo");
    command
        .current_dir(&dir)
        .args(["fuzz", "run", "--sanitizer", "none", target])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={max_len}"))
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
            "the fuzz target {target} failed ({status}) after {:.0?}; the input that broke it \
             is under crates/hpk-net-daemon/fuzz/artifacts/{target}/ (replay it with \
             `cargo fuzz run --sanitizer none {target} <file>` in that directory)",
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
