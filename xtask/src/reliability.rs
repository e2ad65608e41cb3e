//! The reliability suite: which tests it is, where they record what they
//! measured, and the summary `cargo xtask test` prints from those records.
//!
//! The tests append facts through `hpk_testbed::report` to the file named by
//! `HPK_RELIABILITY_REPORT`, which this task sets; the summary only adds
//! them up, so every figure is one a test measured. `--reliability` runs the
//! suite alone, in its long form (`HPK_RELIABILITY_FULL=1`); plain
//! `cargo xtask test` runs it bounded among all the others.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use hpk_net_daemon::killpoint;
use hpk_testbed::report::{Summary, kind};

/// The test targets of the suite (target names are unique in the workspace).
pub const SUITE: &[&str] = &[
    "leaks",
    "crash",
    "concurrency",
    "hostile",
    "errors",
    "lifecycle",
    "adversarial",
    "isolation",
    "integrity",
    "relay",
];

/// Where this run's facts go (emptied at the start of a run).
pub fn fresh_report(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target").join("reliability");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join("facts.jsonl");
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("remove the old {}", path.display()));
        }
        _ => {}
    }
    Ok(path)
}

/// How strictly the summary judges the facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Every test ran: every kill point must have been hit, leaks checked.
    WholeSuite,
    /// Some tests may have been filtered out: only leaks found count.
    Partial,
}

/// Reads the facts, prints the summary, and fails on a leak (or, for the
/// whole suite, on a kill point never hit or no leak check at all).
pub fn summarize(path: &Path, expect: Expect) -> Result<()> {
    let summary = Summary::read(path).with_context(|| format!("read {}", path.display()))?;
    print!("{}", render(&summary, path));
    judge(&summary, expect)
}

fn render(summary: &Summary, path: &Path) -> String {
    let mut out = format!(
        "\nreliability summary ({} facts measured by the tests, in {})\n",
        summary.facts,
        path.display()
    );
    let mut kinds: Vec<&str> = kind::ALL.to_vec();
    kinds.extend(
        summary
            .totals
            .keys()
            .map(String::as_str)
            .filter(|k| !kind::ALL.contains(k)),
    );
    for name in kinds {
        let label = label(name);
        // No leak recorded after leak checks ran is a measured zero.
        let measured_zero = name == kind::LEAKS_FOUND && summary.total(kind::LEAK_CHECKS) > 0;
        if !summary.totals.contains_key(name) && !measured_zero {
            let _ = writeln!(out, "  {label:<24} not recorded");
            continue;
        }
        let details: Vec<String> = summary
            .details_of(name)
            .map(|(detail, value)| format!("{detail} {value}"))
            .collect();
        let _ = write!(out, "  {label:<24} {:>12}", summary.total(name));
        if !details.is_empty() {
            let _ = write!(out, "   ({})", details.join(", "));
        }
        out.push('\n');
    }
    out
}

/// The summary's words for a kind.
fn label(name: &str) -> String {
    let known = match name {
        kind::KILL_POINT_HIT => "kill points hit",
        kind::PROCESS_KILLED => "processes killed",
        kind::HOSTILE_INPUTS => "hostile inputs refused",
        other => return other.replace('_', " "),
    };
    known.to_owned()
}

fn judge(summary: &Summary, expect: Expect) -> Result<()> {
    let leaks = summary.total(kind::LEAKS_FOUND);
    if leaks > 0 {
        bail!("the leak detector found {leaks} leak(s): see the failing tests above");
    }
    if expect == Expect::Partial {
        return Ok(());
    }
    if summary.total(kind::LEAK_CHECKS) == 0 {
        bail!("no leak check was recorded: did the reliability tests run (as root)?");
    }
    let missed: Vec<&str> = killpoint::POINTS
        .iter()
        .copied()
        .filter(|point| {
            !summary
                .details_of(kind::KILL_POINT_HIT)
                .any(|(p, _)| p == *point)
        })
        .collect();
    if !missed.is_empty() {
        bail!("kill points never hit: {}", missed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(lines: &[(&str, u64, Option<&str>)]) -> Summary {
        let text: String = lines
            .iter()
            .map(|(kind, value, detail)| {
                let fact = hpk_testbed::report::Fact {
                    kind: kind.to_string(),
                    value: *value,
                    detail: detail.map(str::to_owned),
                    test: None,
                    pid: 1,
                };
                serde_json::to_string(&fact).unwrap() + "\n"
            })
            .collect();
        Summary::parse(&text).unwrap()
    }

    #[test]
    fn a_leak_fails_the_run_even_when_partial() {
        let summary = facts(&[(kind::LEAK_CHECKS, 3, None), (kind::LEAKS_FOUND, 2, None)]);
        let err = judge(&summary, Expect::Partial).unwrap_err();
        assert!(err.to_string().contains("2 leak(s)"), "{err}");
    }

    #[test]
    fn the_whole_suite_must_hit_every_kill_point() {
        let mut lines = vec![(kind::LEAK_CHECKS, 3, None)];
        lines.extend(
            killpoint::POINTS[1..]
                .iter()
                .map(|p| (kind::KILL_POINT_HIT, 1, Some(*p))),
        );
        let summary = facts(&lines);
        let err = judge(&summary, Expect::WholeSuite).unwrap_err();
        assert!(err.to_string().contains(killpoint::POINTS[0]), "{err}");
        judge(&summary, Expect::Partial).unwrap();

        lines.push((kind::KILL_POINT_HIT, 1, Some(killpoint::POINTS[0])));
        judge(&facts(&lines), Expect::WholeSuite).unwrap();
        assert!(
            judge(&facts(&[]), Expect::WholeSuite).is_err(),
            "nothing ran"
        );
    }

    #[test]
    fn the_summary_shows_totals_details_and_what_was_not_recorded() {
        let summary = facts(&[
            (kind::PROCESS_KILLED, 2, Some("relay")),
            (kind::PROCESS_KILLED, 1, Some("gc")),
            (kind::CONCURRENT_RUNS, 100, None),
            ("something_new", 7, None),
        ]);
        let text = render(&summary, Path::new("facts.jsonl"));
        assert!(text.contains("processes killed"), "{text}");
        assert!(text.contains("(gc 1, relay 2)"), "{text}");
        assert!(
            text.contains("concurrent runs") && text.contains("100"),
            "{text}"
        );
        assert!(
            text.contains("fuzz iterations") && text.contains("not recorded"),
            "{text}"
        );
        assert!(text.contains("something new"), "{text}");
        assert!(
            text.contains("leaks found") && text.contains("not recorded"),
            "{text}"
        );

        let checked = facts(&[(kind::LEAK_CHECKS, 4, None)]);
        let text = render(&checked, Path::new("facts.jsonl"));
        let line = text.lines().find(|l| l.contains("leaks found")).unwrap();
        assert!(line.trim_end().ends_with(" 0"), "a measured zero: {line}");
    }
}
