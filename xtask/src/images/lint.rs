//! Checks on our Dockerfiles that need no Docker engine: every file they copy
//! from the build context exists (or is one `cargo xtask dist` writes), and
//! every version is pinned: base images by a version tag or digest, `ARG
//! *_VERSION`/`*_IMAGE` with a default, apt packages as `name=version`, git
//! clones of a release tag.
//!
//! This is not a Dockerfile linter (hadolint is not packaged in Debian): it
//! knows the instructions our files use (ARG, FROM, COPY, RUN) and the rules
//! above, so a file that builds wrong for other reasons passes it. `cargo
//! xtask images` runs it before a build, and the unit tests run it on both files.

use std::collections::BTreeMap;
use std::path::Path;

/// The architectures a Dockerfile is built for, by `TARGETARCH`, with the
/// dist/ directory that holds their executables.
pub const ARCHES: &[(&str, &str)] = &[("amd64", "x86_64"), ("arm64", "aarch64")];

/// Every problem found in `text`, read as a Dockerfile whose build context is
/// `context`; `dist_files` are the names `cargo xtask dist` writes per arch.
pub fn check(text: &str, context: &Path, dist_files: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut stages: Vec<String> = Vec::new();
    for (line_no, line) in instructions(text) {
        let mut words = line.split_whitespace();
        let keyword = words.next().unwrap_or_default().to_ascii_uppercase();
        let rest: Vec<&str> = words.collect();
        let mut problem = |what: String| problems.push(format!("line {line_no}: {what}"));
        match keyword.as_str() {
            "ARG" => check_arg(&rest, &mut args, &mut problem),
            "FROM" => check_from(&rest, &args, &mut stages, &mut problem),
            "COPY" | "ADD" => check_copy(&rest, context, dist_files, &mut problem),
            "RUN" => check_run(&rest, &mut problem),
            _ => {}
        }
    }
    problems
}

/// Logical instructions with their first line number: comments dropped,
/// backslash continuations joined.
fn instructions(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        let (continues, body) = match trimmed.strip_suffix('\\') {
            Some(body) => (true, body),
            None => (false, trimmed),
        };
        let entry = current.get_or_insert_with(|| (index + 1, String::new()));
        entry.1.push_str(body);
        entry.1.push(' ');
        if !continues {
            out.extend(current.take());
        }
    }
    out.extend(current);
    out
}

fn check_arg(rest: &[&str], args: &mut BTreeMap<String, String>, problem: &mut impl FnMut(String)) {
    let Some(spec) = rest.first() else {
        return problem("ARG without a name".into());
    };
    let (name, default) = match spec.split_once('=') {
        Some((name, value)) => (name, Some(value.trim_matches('"'))),
        None => (*spec, None),
    };
    let pinned_kind = name.ends_with("_VERSION") || name.ends_with("_IMAGE");
    match default {
        Some(value) => {
            args.insert(name.to_owned(), value.to_owned());
            if pinned_kind && !value.chars().any(|c| c.is_ascii_digit()) {
                problem(format!("ARG {name}={value} names no version"));
            }
        }
        // Redeclaring a global ARG inside a stage brings its default in.
        None if pinned_kind && !args.contains_key(name) => {
            problem(format!("ARG {name} has no default version"));
        }
        None => {}
    }
}

fn check_from(
    rest: &[&str],
    args: &BTreeMap<String, String>,
    stages: &mut Vec<String>,
    problem: &mut impl FnMut(String),
) {
    let words: Vec<&str> = rest
        .iter()
        .copied()
        .filter(|w| !w.starts_with("--"))
        .collect();
    let Some(image) = words.first() else {
        return problem("FROM without an image".into());
    };
    let mut resolved_all: Vec<String> = ARCHES
        .iter()
        .map(|(arch, _)| substitute(image, args, arch))
        .collect();
    resolved_all.dedup();
    for resolved in resolved_all {
        if resolved == "scratch" || stages.contains(&resolved) {
            continue;
        }
        if resolved.contains('$') {
            problem(format!(
                "FROM {image}: {resolved} refers to an undefined ARG"
            ));
        } else if !image_pinned(&resolved) {
            problem(format!(
                "FROM {resolved}: pin a version tag (not latest) or a digest"
            ));
        }
    }
    if let [_, as_word, name] = words.as_slice() {
        if as_word.eq_ignore_ascii_case("as") {
            stages.push((*name).to_owned());
        }
    }
}

/// `name:tag` with a tag holding a digit and not `latest`, or `name@sha256:…`.
fn image_pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) => tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
        None => false,
    }
}

/// `image` with `${NAME}`/`$NAME` replaced by the ARG defaults and TARGETARCH.
fn substitute(image: &str, args: &BTreeMap<String, String>, arch: &str) -> String {
    let mut out = image.to_owned();
    let mut values: Vec<(&str, &str)> =
        args.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    values.push(("TARGETARCH", arch));
    for (name, value) in values {
        out = out.replace(&format!("${{{name}}}"), value);
        out = out.replace(&format!("${name}"), value);
    }
    out
}

fn check_copy(
    rest: &[&str],
    context: &Path,
    dist_files: &[&str],
    problem: &mut impl FnMut(String),
) {
    if rest.iter().any(|word| word.starts_with("--from")) {
        return;
    }
    let paths: Vec<&str> = rest
        .iter()
        .copied()
        .filter(|w| !w.starts_with("--"))
        .collect();
    let Some((_, sources)) = paths.split_last() else {
        return problem("COPY needs a source and a destination".into());
    };
    for source in sources {
        if source.contains("://") {
            problem(format!(
                "{source}: downloads need a checksum; use RUN with a pinned tag"
            ));
        } else if let Some(dist) = source.strip_prefix("dist/") {
            if !is_dist_output(dist, dist_files) {
                problem(format!(
                    "{source} is not something `cargo xtask dist` writes"
                ));
            }
        } else if !context.join(source).exists() {
            problem(format!("{source} does not exist in the build context"));
        }
    }
}

/// Whether `path` (below dist/) is `ARCH/NAME` for a dist architecture and file.
fn is_dist_output(path: &str, dist_files: &[&str]) -> bool {
    let Some((arch, file)) = path.split_once('/') else {
        return false;
    };
    ARCHES.iter().any(|(_, dir)| *dir == arch) && dist_files.contains(&file)
}

fn check_run(rest: &[&str], problem: &mut impl FnMut(String)) {
    let script = rest.join(" ");
    let mut downloads = false;
    for command in script.split(['&', ';', '|']) {
        let words: Vec<&str> = command.split_whitespace().collect();
        downloads |= matches!(words.first(), Some(&("curl" | "wget")));
        if let Some(at) = words.windows(2).position(|w| w == ["apt-get", "install"]) {
            for package in words[at + 2..].iter().filter(|w| !w.starts_with('-')) {
                if !package.contains('=') {
                    problem(format!(
                        "apt package {package} has no pinned version (name=version)"
                    ));
                }
            }
        }
        if words.windows(2).any(|w| w == ["git", "clone"]) {
            let branch = words.windows(2).find(|w| w[0] == "--branch").map(|w| w[1]);
            if !branch.is_some_and(|tag| {
                tag.contains("VERSION") || tag.contains(|c: char| c.is_ascii_digit())
            }) {
                problem("git clone without --branch <release tag>".into());
            }
        }
    }
    if downloads && !script.contains("sha256sum -c") {
        problem("a download in RUN: verify it with a pinned checksum (sha256sum -c)".into());
    }
}
