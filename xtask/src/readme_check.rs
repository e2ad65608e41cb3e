//! The README's promise, checked: every command in its `sh` code blocks is
//! exercised — run here as it is written, or mapped to the test that runs
//! it (which must exist by name), or run by CI — unless its trailing comment
//! says it needs Apptainer, Slurm, a Docker engine or a registry, which
//! cannot be had where this project is built. An unmarked command nothing
//! exercises fails `every_readme_command_is_exercised_or_marked`.
//!
//! A command is a logical line: backslash continuations joined, a
//! `for`/`while`/`if` up to its `done`/`fi` taken as one, comments at the
//! end split off. Commands are matched by their exact text, so editing one
//! in the README means editing its entry here too.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How a README command is exercised.
#[derive(Debug, Clone, Copy)]
enum Exercise {
    /// Run as written by `quick_readme_commands_run` (no privilege, seconds).
    Quick,
    /// Run as written, in README order, by `slow_readme_commands_run` (root:
    /// namespaces, release builds, a benchmark; minutes).
    Slow,
    /// Run by this test, named `FILE::FUNCTION` from the workspace root.
    Test(&'static str),
    /// Run by CI: `.ci/run` holds the command.
    Ci,
}

use Exercise::{Ci, Quick, Slow, Test};

const INSTALL_TEST: &str = "xtask/src/readme_check.rs::the_install_steps_install_into_a_prefix";

/// Every unmarked README command and what exercises it.
const COMMANDS: &[(&str, Exercise)] = &[
    ("cargo xtask demo", Slow),
    ("cargo xtask test", Ci),
    ("cargo xtask demo --mtu-1500", Slow),
    ("cargo xtask help", Quick),
    ("cargo xtask dist", Slow),
    ("cargo xtask dist --check", Slow),
    ("PREFIX=${PREFIX:-/usr/local}", Test(INSTALL_TEST)),
    (
        "(cd dist/x86_64 && sha256sum -c SHA256SUMS)",
        Test(INSTALL_TEST),
    ),
    (
        r#"install -D -m 0755 -t "$PREFIX/bin" dist/x86_64/hpktainer dist/x86_64/hpk-net-daemon dist/x86_64/hpk-bubble"#,
        Test(INSTALL_TEST),
    ),
    (
        r#"install -D -m 0644 -t "$PREFIX/share/man/man1" dist/man/*.1"#,
        Test(INSTALL_TEST),
    ),
    (
        r#"for cmd in hpktainer hpk-net-daemon hpk-bubble; do
install -D -m 0644 "dist/completions/$cmd.bash" "$PREFIX/share/bash-completion/completions/$cmd"
install -D -m 0644 "dist/completions/_$cmd" "$PREFIX/share/zsh/site-functions/_$cmd"
install -D -m 0644 "dist/completions/$cmd.fish" "$PREFIX/share/fish/vendor_completions.d/$cmd.fish"
done"#,
        Test(INSTALL_TEST),
    ),
    ("man hpktainer-run", Test(INSTALL_TEST)),
    ("hpktainer --help", Quick),
    ("hpk-net-daemon client --help", Quick),
    ("hpk-bubble start --help", Quick),
    ("cargo xtask images", Slow),
    (
        "skopeo inspect oci-archive:dist/images/hpktainer-base-0.1.0-amd64.oci.tar",
        Slow,
    ),
    ("hpk-bubble list", Quick),
    (
        "hpktainer ps",
        Test("crates/hpktainer/tests/lifecycle.rs::ps_shows_a_running_container_with_its_counters"),
    ),
    (
        "hpktainer gc",
        Test(
            "crates/hpktainer/tests/lifecycle.rs::a_killed_hpktainer_takes_its_container_down_and_gc_reclaims_the_rest",
        ),
    ),
    (
        "hpktainer gc --all",
        Test(
            "crates/hpktainer/tests/lifecycle.rs::gc_all_removes_the_bridge_and_the_nat_rule_once_no_container_is_left",
        ),
    ),
    ("cargo xtask bench relay", Slow),
];

/// What a trailing comment may say a command needs.
const NEEDS: &[&str] = &["Apptainer", "Slurm", "a Docker engine", "a registry"];

/// One command of the README.
#[derive(Debug)]
struct ReadmeCommand {
    text: String,
    comment: Option<String>,
    line: usize,
}

impl ReadmeCommand {
    /// Whether its comment says it needs something that cannot be had here.
    fn marked(&self) -> bool {
        let Some(comment) = &self.comment else {
            return false;
        };
        comment.match_indices("needs ").any(|(at, word)| {
            NEEDS
                .iter()
                .any(|need| comment[at + word.len()..].starts_with(need))
        })
    }
}

/// The commands of every ```sh block of `readme`.
fn commands(readme: &str) -> Vec<ReadmeCommand> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut pending: Option<(usize, String)> = None;
    let mut compound_depth = 0usize;
    let mut previous_continues = false;
    for (index, raw) in readme.lines().enumerate() {
        let line = raw.trim();
        if !in_block {
            in_block = line == "```sh";
            continue;
        }
        if line == "```" {
            in_block = false;
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (code, comment) = split_comment(line);
        let first = code.split_whitespace().next().unwrap_or_default();
        if matches!(first, "for" | "while" | "until" | "if") {
            compound_depth += 1;
        }
        if matches!(first, "done" | "fi") {
            compound_depth = compound_depth.saturating_sub(1);
        }
        let (continues, code) = match code.strip_suffix('\\') {
            Some(code) => (true, code.trim_end()),
            None => (false, code),
        };
        let entry = pending.get_or_insert_with(|| (index + 1, String::new()));
        // A continuation joins with a space, as sh reads it; the lines of a
        // loop stay lines.
        if !entry.1.is_empty() {
            entry.1.push(if previous_continues { ' ' } else { '\n' });
        }
        entry.1.push_str(code);
        previous_continues = continues;
        if !continues && compound_depth == 0 {
            let (line, text) = pending.take().expect("just filled");
            out.push(ReadmeCommand {
                text,
                comment: comment.map(str::to_owned),
                line,
            });
        }
    }
    out
}

/// Splits `line` at a ` #` that starts a comment outside quotes.
fn split_comment(line: &str) -> (&str, Option<&str>) {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for (at, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(open), _) if c == open => quote = None,
            (None, '#') if previous.is_whitespace() => {
                return (line[..at].trim_end(), Some(line[at + 1..].trim()));
            }
            _ => {}
        }
        previous = c;
    }
    (line.trim_end(), None)
}

fn readme() -> String {
    fs::read_to_string(crate::workspace_root().join("README.md")).expect("read README.md")
}

fn exercise_of(text: &str) -> Option<Exercise> {
    COMMANDS
        .iter()
        .find(|(command, _)| *command == text)
        .map(|(_, how)| *how)
}

/// Whether `FILE::FUNCTION` names a `#[test]` function in FILE.
fn test_exists(reference: &str) -> Result<(), String> {
    let (file, function) = reference
        .split_once("::")
        .ok_or_else(|| format!("{reference}: expected FILE::FUNCTION"))?;
    let source = fs::read_to_string(crate::workspace_root().join(file))
        .map_err(|err| format!("{reference}: read {file}: {err}"))?;
    let lines: Vec<&str> = source.lines().collect();
    let signature = format!("fn {function}(");
    let found = lines.iter().enumerate().any(|(at, line)| {
        line.trim_start().starts_with(&signature)
            && lines[at.saturating_sub(3)..at]
                .iter()
                .any(|before| before.trim() == "#[test]")
    });
    found
        .then_some(())
        .ok_or_else(|| format!("{reference}: no #[test] fn {function} in {file}"))
}

/// The README's commands with the debug binaries first on PATH, run from
/// the workspace root through `sh -c`.
fn shell(command: &str) -> Command {
    let mut shell = Command::new("sh");
    shell.args(["-e", "-c", command]);
    in_workspace(shell)
}

/// `sh -c COMMAND` as the first process of a new PID namespace: whatever the
/// command leaves running is killed by the kernel when that shell ends, so
/// no process of the check outlives it (the bench has left a relay client's
/// `sleep` behind before).
fn shell_in_pid_namespace(command: &str) -> Command {
    let mut unshare = Command::new("unshare");
    unshare.args([
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "sh",
        "-e",
        "-c",
        command,
    ]);
    in_workspace(unshare)
}

fn in_workspace(mut command: Command) -> Command {
    let bin_dir = hpk_testbed::bin_path("hpktainer")
        .parent()
        .expect("a directory")
        .to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin_dir];
    dirs.extend(std::env::split_paths(&path));
    command
        .current_dir(crate::workspace_root())
        .env("PATH", std::env::join_paths(dirs).expect("PATH"));
    command
}

/// Runs `shell` and returns its stdout, failing with both streams. They go
/// to files, not pipes: a process the command leaves behind (the bench's
/// relay client has left its `sleep` running) would hold a pipe open and
/// stall this check until it exits.
fn run_checked(command: &str, mut shell: Command) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    shell
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap());
    let status = shell
        .status()
        .unwrap_or_else(|err| panic!("start `{command}`: {err}"));
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.success(),
        "README command `{command}`: {status}\nstdout: {stdout}\nstderr: {}",
        fs::read_to_string(&err_path).unwrap_or_default()
    );
    stdout
}

fn commands_exercised(how: fn(Exercise) -> bool) -> Vec<String> {
    commands(&readme())
        .into_iter()
        .filter(|command| exercise_of(&command.text).is_some_and(how))
        .map(|command| command.text)
        .collect()
}

#[test]
fn every_readme_command_is_exercised_or_marked() {
    let found = commands(&readme());
    assert!(
        found.len() > 20,
        "only {} commands found: is the parser broken?",
        found.len()
    );
    let ci = fs::read_to_string(crate::workspace_root().join(".ci/run")).unwrap();

    let mut problems = Vec::new();
    for command in &found {
        let at = format!("README.md:{}: `{}`", command.line, command.text);
        match exercise_of(&command.text) {
            Some(_) if command.marked() => {
                problems.push(format!("{at} is both marked and exercised: drop one"));
            }
            None if !command.marked() => problems.push(format!(
                "{at} is neither exercised nor marked `# needs Apptainer|Slurm|a Docker engine|a registry`"
            )),
            Some(Test(reference)) => problems.extend(test_exists(reference).err()),
            Some(Ci) if !ci.lines().any(|line| line.trim() == command.text) => {
                problems.push(format!("{at}: .ci/run does not run it"));
            }
            _ => {}
        }
    }
    for (listed, _) in COMMANDS {
        if !found.iter().any(|command| command.text == *listed) {
            problems.push(format!("`{listed}` is listed here but not in README.md"));
        }
    }
    assert!(
        problems.is_empty(),
        "README check:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_parser_joins_what_sh_would_and_reads_marks() {
    let text = "```sh\n\
        a --x \\\n  --y   # needs Apptainer\n\
        # a comment line\n\
        for i in 1 2; do\n  echo \"$i # not a comment\"\ndone\n\
        b '#' # needs a registry\n\
        c # needs nothing\n\
        ```\n\
        ```\nnot sh\n```\n";
    let found = commands(text);
    let texts: Vec<&str> = found.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "a --x --y",
            "for i in 1 2; do\necho \"$i # not a comment\"\ndone",
            "b '#'",
            "c"
        ]
    );
    let marks: Vec<bool> = found.iter().map(ReadmeCommand::marked).collect();
    assert_eq!(marks, [true, false, true, false]);
    assert!(test_exists("xtask/src/readme_check.rs::no_such_test").is_err());
    assert!(test_exists(INSTALL_TEST).is_ok());
}

#[test]
fn quick_readme_commands_run() {
    let quick = commands_exercised(|how| matches!(how, Quick));
    assert!(!quick.is_empty());
    for command in quick {
        let stdout = run_checked(&command, shell(&command));
        assert!(!stdout.trim().is_empty(), "`{command}` printed nothing");
    }
}

/// The README's install block, as written, into a PREFIX in a temporary
/// directory, from a dist/ laid out as `cargo xtask dist` lays it (its own
/// functions, with the debug executables, so no release build is needed).
#[test]
fn the_install_steps_install_into_a_prefix() {
    let readme = readme();
    let block = readme
        .split("```sh\n")
        .skip(1)
        .map(|rest| rest.split("\n```").next().unwrap())
        .find(|block| block.contains("sha256sum -c SHA256SUMS"))
        .expect("the install block");
    let work = tempfile::tempdir().unwrap();
    let dist = work.path().join("dist");
    fake_dist(&dist);
    let prefix = work.path().join("prefix");

    let mut sh = Command::new("sh");
    sh.args(["-e", "-c", block])
        .current_dir(work.path())
        .env("PREFIX", &prefix)
        .env("MANPATH", prefix.join("share/man"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80");
    let stdout = run_checked("the install block", sh);
    assert!(stdout.contains("hpktainer: OK"), "sha256sum -c: {stdout}");
    assert!(
        stdout.contains("hpktainer-run"),
        "man hpktainer-run rendered: {stdout}"
    );

    let installed = prefix.join("bin/hpktainer");
    let version = run_checked("installed hpktainer --version", {
        let mut command = Command::new(&installed);
        command.arg("--version");
        command
    });
    assert_eq!(
        version.trim(),
        format!("hpktainer {}", env!("CARGO_PKG_VERSION"))
    );
    for file in [
        "bin/hpk-net-daemon",
        "bin/hpk-bubble",
        "share/man/man1/hpk-net-daemon-client.1",
        "share/bash-completion/completions/hpk-bubble",
        "share/zsh/site-functions/_hpktainer",
        "share/fish/vendor_completions.d/hpk-net-daemon.fish",
    ] {
        assert!(prefix.join(file).is_file(), "{file} not installed");
    }
}

/// dist/x86_64 with the debug executables and their sums, dist/man, dist/completions.
fn fake_dist(dist: &Path) {
    let arch = dist.join("x86_64");
    fs::create_dir_all(&arch).unwrap();
    let names = crate::dist::binary_names();
    for name in &names {
        let built: PathBuf = hpk_testbed::bin_path(name);
        fs::copy(&built, arch.join(name)).unwrap();
    }
    crate::dist::write_sums(&arch, &names).unwrap();
    crate::dist::write_man_pages(&dist.join("man")).unwrap();
    crate::dist::write_completions(&dist.join("completions")).unwrap();
}

/// The README's slow commands, as written and in its order: the demo (both
/// MTUs), dist with its check, the images with skopeo reading the archive,
/// and the benchmark. Minutes: release builds and a benchmark of a few
/// minutes. Each runs in a PID namespace of its own (see
/// `shell_in_pid_namespace`).
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn slow_readme_commands_run() {
    let slow = commands_exercised(|how| matches!(how, Slow));
    assert!(slow.len() >= 7, "{slow:?}");
    for command in slow {
        eprintln!("readme check: running `{command}`");
        let stdout = run_checked(&command, shell_in_pid_namespace(&command));
        if command.starts_with("cargo xtask demo") {
            assert!(stdout.contains("demo: OK"), "{stdout}");
        }
        if command.starts_with("skopeo inspect") {
            assert!(stdout.contains("\"Architecture\": \"amd64\""), "{stdout}");
        }
    }
}
