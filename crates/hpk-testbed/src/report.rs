//! Measured facts from the reliability tests, for `cargo xtask test --reliability`.
//!
//! A test that measures something the summary shows calls
//! [`record`]`(kind, value)` (or [`record_detail`] with a label such as the
//! kill point's name). When `HPK_RELIABILITY_REPORT` names a file, each call
//! appends one JSON line to it:
//!
//! ```text
//! {"kind":"kill_point_hit","value":1,"detail":"after-allocation","test":"crash::after_allocation","pid":4242}
//! ```
//!
//! and the xtask sums the values per kind with [`Summary::read`], so every
//! number in the summary is one a test measured. Without the variable (a
//! plain `cargo test`) nothing is written and the call costs nothing.
//!
//! Use the constants in [`kind`] so the producer and the summary agree on
//! names; a new kind needs no change here beyond a constant, since the
//! summary prints unknown kinds too. Record only after the measured thing is
//! verified (bytes after the checksum matched, drops after the counter was
//! read), so a failing test does not inflate the figures.
//!
//! Tests run in parallel threads and in several test processes, so each
//! fact is written by one `write` to a file opened with `O_APPEND`: the
//! kernel places such a write whole at the end of the file, and a line is
//! far below the size at which that could split.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The variable naming the file facts are appended to.
pub const ENV: &str = "HPK_RELIABILITY_REPORT";

/// The variable `cargo xtask test --reliability` sets to ask for the long
/// form of the suite; plain `cargo xtask test` (and CI) runs the bounded one.
pub const FULL_ENV: &str = "HPK_RELIABILITY_FULL";

/// Whether the long form was asked for: tests with an iteration count
/// (fuzzing, repeated transfers) use their large count when this holds and a
/// bounded one otherwise, and record the count they ran.
pub fn full() -> bool {
    std::env::var_os(FULL_ENV).is_some_and(|value| value == "1")
}

/// The kinds of facts the reliability summary knows by name.
pub mod kind {
    /// A kill point was reached and the process stopped there (detail: the point).
    pub const KILL_POINT_HIT: &str = "kill_point_hit";
    /// A process was killed with SIGKILL by a test (detail: which process).
    pub const PROCESS_KILLED: &str = "process_killed";
    /// `hpktainer run`s started at the same time, all of which succeeded.
    pub const CONCURRENT_RUNS: &str = "concurrent_runs";
    /// Inputs run through the frame decoder without a panic.
    pub const FUZZ_ITERATIONS: &str = "fuzz_iterations";
    /// Adversarial streams sent to a relay.
    pub const ADVERSARIAL_STREAMS: &str = "adversarial_streams";
    /// Spoofed frames a test sent towards the bridge.
    pub const SPOOF_ATTEMPTS: &str = "spoof_attempts";
    /// Spoofed frames the relay counted as dropped.
    pub const SPOOF_DROPS: &str = "spoof_drops";
    /// Bytes whose checksum matched end to end.
    pub const BYTES_VERIFIED: &str = "bytes_verified";
    /// Before/after snapshot comparisons made by the leak detector.
    pub const LEAK_CHECKS: &str = "leak_checks";
    /// Differences the leak detector found in a real (not planted) check.
    pub const LEAKS_FOUND: &str = "leaks_found";
    /// Planted leaks the detector's self-test saw reported.
    pub const PLANTED_LEAKS_DETECTED: &str = "planted_leaks_detected";
    /// Hostile or broken inputs refused with their own exit status.
    pub const HOSTILE_INPUTS: &str = "hostile_inputs";

    /// Every kind above, in the order the summary prints them.
    pub const ALL: &[&str] = &[
        KILL_POINT_HIT,
        PROCESS_KILLED,
        CONCURRENT_RUNS,
        HOSTILE_INPUTS,
        FUZZ_ITERATIONS,
        ADVERSARIAL_STREAMS,
        SPOOF_ATTEMPTS,
        SPOOF_DROPS,
        BYTES_VERIFIED,
        LEAK_CHECKS,
        PLANTED_LEAKS_DETECTED,
        LEAKS_FOUND,
    ];
}

/// One measured fact, as stored in the report file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    pub kind: String,
    pub value: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The recording thread's name: libtest names it after the test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
    #[serde(default)]
    pub pid: u32,
}

/// Records `value` of `kind` (see [`kind`]); does nothing unless
/// `HPK_RELIABILITY_REPORT` is set.
pub fn record(kind: &str, value: u64) {
    append(kind, value, None);
}

/// Records `value` of `kind` with a label (a kill point, a process name).
pub fn record_detail(kind: &str, value: u64, detail: &str) {
    append(kind, value, Some(detail));
}

fn append(kind: &str, value: u64, detail: Option<&str>) {
    if let Some(path) = std::env::var_os(ENV) {
        append_to(Path::new(&path), kind, value, detail);
    }
}

fn append_to(path: &Path, kind: &str, value: u64, detail: Option<&str>) {
    let fact = Fact {
        kind: kind.to_owned(),
        value,
        detail: detail.map(str::to_owned),
        test: std::thread::current().name().map(str::to_owned),
        pid: std::process::id(),
    };
    let mut line = serde_json::to_vec(&fact).expect("a fact serialises");
    line.push(b'\n');
    // A report that cannot be written would make the summary lie: fail the test.
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|err| panic!("open {} ({ENV}): {err}", path.display()));
    file.write_all(&line)
        .unwrap_or_else(|err| panic!("append to {} ({ENV}): {err}", path.display()));
}

/// The facts of one run, summed per kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Total value per kind.
    pub totals: BTreeMap<String, u64>,
    /// Total value per (kind, detail) for facts that carry a detail.
    pub details: BTreeMap<(String, String), u64>,
    /// How many facts were read.
    pub facts: usize,
}

impl Summary {
    /// Reads a report file; a missing file is an empty summary (no test recorded).
    pub fn read(path: &Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(err) => Err(err),
        }
    }

    /// Sums the JSON lines of `text`; a line that is not a fact is an error.
    pub fn parse(text: &str) -> std::io::Result<Self> {
        let mut summary = Self::default();
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let fact: Fact = serde_json::from_str(line).map_err(|err| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("report line {}: {err}", number + 1),
                )
            })?;
            summary.add(fact);
        }
        Ok(summary)
    }

    fn add(&mut self, fact: Fact) {
        *self.totals.entry(fact.kind.clone()).or_default() += fact.value;
        if let Some(detail) = fact.detail {
            *self.details.entry((fact.kind, detail)).or_default() += fact.value;
        }
        self.facts += 1;
    }

    /// The total of `kind` (0 when nothing recorded it).
    pub fn total(&self, kind: &str) -> u64 {
        self.totals.get(kind).copied().unwrap_or(0)
    }

    /// The details recorded for `kind`, with their totals.
    pub fn details_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a str, u64)> + 'a {
        self.details
            .iter()
            .filter(move |((k, _), _)| k == kind)
            .map(|((_, detail), value)| (detail.as_str(), *value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_sum_per_kind_and_detail() {
        let text = concat!(
            r#"{"kind":"kill_point_hit","value":1,"detail":"after-allocation","pid":1}"#,
            "\n",
            r#"{"kind":"kill_point_hit","value":1,"detail":"during-gc","pid":2}"#,
            "\n\n",
            r#"{"kind":"bytes_verified","value":1048576,"pid":2}"#,
            "\n",
            r#"{"kind":"kill_point_hit","value":1,"detail":"after-allocation","pid":3}"#,
            "\n",
        );
        let summary = Summary::parse(text).unwrap();
        assert_eq!(summary.facts, 4);
        assert_eq!(summary.total(kind::KILL_POINT_HIT), 3);
        assert_eq!(summary.total(kind::BYTES_VERIFIED), 1 << 20);
        assert_eq!(summary.total(kind::LEAKS_FOUND), 0);
        let points: Vec<_> = summary.details_of(kind::KILL_POINT_HIT).collect();
        assert_eq!(points, vec![("after-allocation", 2), ("during-gc", 1)]);
    }

    #[test]
    fn a_line_that_is_not_a_fact_is_an_error_naming_it() {
        let err = Summary::parse("{\"kind\":\"x\",\"value\":1}\nnot json\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn record_appends_lines_that_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("facts.jsonl");
        // The file is named directly: setting the variable here would race
        // with other tests of this binary reading the environment.
        append_to(&path, kind::LEAK_CHECKS, 1, None);
        append_to(&path, kind::PROCESS_KILLED, 2, Some("relay"));

        let summary = Summary::read(&path).unwrap();
        assert_eq!(summary.total(kind::LEAK_CHECKS), 1);
        assert_eq!(summary.total(kind::PROCESS_KILLED), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("record_appends_lines_that_read_back"),
            "{text}"
        );
        assert!(Summary::read(&dir.path().join("absent")).unwrap().facts == 0);
    }
}
