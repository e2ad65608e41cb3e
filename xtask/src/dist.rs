//! `cargo xtask dist`: what a release ships, laid out in `dist/`.
//!
//! ```text
//! dist/x86_64/{hpktainer,hpk-net-daemon,hpk-bubble,SHA256SUMS}
//! dist/aarch64/…       when that Rust target and a cross linker are installed
//! dist/man/*.1         one page per command and per subcommand
//! dist/completions/    bash (NAME.bash), zsh (_NAME), fish (NAME.fish)
//! ```
//!
//! The executables are release builds, statically linked (see
//! .cargo/config.toml), so the relay client runs inside any image. Man pages
//! and completions come from the same clap definitions the binaries parse
//! with. `--check` then verifies what was written: every executable is static
//! (no interpreter, no needed libraries, read from its ELF headers), runs
//! `--version` when it is built for this machine, matches SHA256SUMS; every
//! man page renders with `man -l` without a warning; the bash completions
//! parse. A full release build (fat LTO) takes minutes, so `cargo xtask test`
//! does not run this; its unit tests below check the checks themselves.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use clap_complete::Shell;
use sha2::{Digest, Sha256};

use crate::prereq::{self, Tool};

const USAGE: &str = "\
usage: cargo xtask dist [--check] [--no-install]

  --check       verify dist/ after building it: static executables, --version,
                SHA256SUMS, man pages rendering with man -l, bash completions
  --no-install  with --check, fail instead of installing man-db with apt-get";

/// Gives a binary's clap definition.
type CommandFn = fn() -> clap::Command;

/// The executables a release ships, each with its clap definition.
const BINARIES: &[(&str, CommandFn)] = &[
    ("hpktainer", hpktainer::cli::command),
    ("hpk-net-daemon", hpk_net_daemon::cli::command),
    ("hpk-bubble", hpk_bubble::cli::command),
];

/// The names of the executables in each dist/ARCH directory.
pub(crate) fn binary_names() -> Vec<&'static str> {
    BINARIES.iter().map(|(name, _)| *name).collect()
}

/// What `--check` needs besides the build.
const CHECK_TOOLS: &[Tool] = &[Tool {
    path: "/usr/bin/man",
    package: "man-db",
}];

/// The shells completions are written for.
const SHELLS: &[Shell] = &[Shell::Bash, Shell::Zsh, Shell::Fish];

/// One architecture of the release.
struct Arch {
    /// Directory under dist/, and `std::env::consts::ARCH` of a host that runs it.
    name: &'static str,
    /// The Rust target triple.
    target: &'static str,
    /// The cross linker on PATH, when this is not the host's.
    linker: Option<&'static str>,
}

const X86_64: Arch = Arch {
    name: "x86_64",
    target: crate::TARGET,
    linker: None,
};

const AARCH64: Arch = Arch {
    name: "aarch64",
    target: "aarch64-unknown-linux-gnu",
    linker: Some("aarch64-linux-gnu-gcc"),
};

/// Runs the task.
pub fn run(args: &[String]) -> Result<()> {
    let mut check = false;
    let mut install = true;
    for arg in args {
        match arg.as_str() {
            "--check" => check = true,
            "--no-install" => install = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown option {other:?}\n\n{USAGE}"),
        }
    }
    if check {
        // Before the long build, so a missing tool fails fast.
        prereq::ensure(CHECK_TOOLS, install)?;
    }

    let started = Instant::now();
    let root = crate::workspace_root();
    let target_dir = crate::bench::target_dir(&root)?;
    let dist = root.join("dist");
    if dist.exists() {
        fs::remove_dir_all(&dist).with_context(|| format!("remove old {}", dist.display()))?;
    }

    build_arch(&root, &target_dir, &dist, &X86_64, None)?;
    match cross_linker(&AARCH64) {
        Ok(linker) => build_arch(&root, &target_dir, &dist, &AARCH64, Some(&linker))?,
        Err(why) => eprintln!("xtask: skipped aarch64: {why}"),
    }
    write_man_pages(&dist.join("man"))?;
    write_completions(&dist.join("completions"))?;
    eprintln!(
        "xtask: dist/ written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    if check {
        verify(&dist)?;
        eprintln!("xtask: dist/ checked");
    }
    Ok(())
}

/// The linker for a cross target, or why that target cannot be built here
/// (one line, saying how to add it).
fn cross_linker(arch: &Arch) -> std::result::Result<String, String> {
    let env = format!(
        "CARGO_TARGET_{}_LINKER",
        arch.target.to_uppercase().replace('-', "_")
    );
    let linker = std::env::var(&env).unwrap_or_else(|_| arch.linker.unwrap_or("cc").to_owned());
    let how = format!(
        "add it with `rustup target add {}` and `apt-get install gcc-aarch64-linux-gnu \
         libc6-dev-arm64-cross` (xtask links with {linker}; set {env} for another linker)",
        arch.target
    );
    if !target_installed(arch.target) {
        return Err(format!(
            "Rust target {} is not installed; {how}",
            arch.target
        ));
    }
    if !on_path(&linker) {
        return Err(format!("linker {linker} is not on PATH; {how}"));
    }
    Ok(linker)
}

/// Whether the toolchain in use has the standard library for `target`.
fn target_installed(target: &str) -> bool {
    let Ok(output) = Command::new("rustc").args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Path::new(&sysroot)
        .join("lib/rustlib")
        .join(target)
        .join("lib")
        .is_dir()
}

fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Builds the release executables for `arch` and copies them, with their
/// sums, into dist/ARCH.
fn build_arch(
    root: &Path,
    target_dir: &Path,
    dist: &Path,
    arch: &Arch,
    linker: Option<&str>,
) -> Result<()> {
    let mut build = Command::new("cargo");
    build
        .current_dir(root)
        .args(["build", "--release", "--bins", "--target", arch.target]);
    for (name, _) in BINARIES {
        build.args(["-p", name]);
    }
    if let Some(linker) = linker {
        let env = format!(
            "CARGO_TARGET_{}_LINKER",
            arch.target.to_uppercase().replace('-', "_")
        );
        build.env(env, linker);
    }
    eprintln!("xtask: building {} release executables", arch.target);
    prereq::run(&mut build)?;

    let built = target_dir.join(arch.target).join("release");
    let out = dist.join(arch.name);
    fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    for (name, _) in BINARIES {
        fs::copy(built.join(name), out.join(name))
            .with_context(|| format!("copy {} to {}", built.join(name).display(), out.display()))?;
    }
    let names: Vec<&str> = BINARIES.iter().map(|(name, _)| *name).collect();
    write_sums(&out, &names)?;
    eprintln!("xtask: wrote dist/{}", arch.name);
    Ok(())
}

/// Writes `dir/SHA256SUMS` for `files` in `dir`, in the format `sha256sum -c` reads.
pub(crate) fn write_sums(dir: &Path, files: &[&str]) -> Result<()> {
    let mut sums = String::new();
    for file in files {
        sums.push_str(&format!("{}  {file}\n", sha256_hex(&dir.join(file))?));
    }
    fs::write(dir.join("SHA256SUMS"), sums).context("write SHA256SUMS")
}

fn sha256_hex(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let digest = Sha256::digest(&bytes);
    Ok(digest.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// One man page per command and per (visible) subcommand: `NAME.1`, `NAME-SUB.1`.
pub(crate) fn write_man_pages(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    for (name, command) in BINARIES {
        clap_mangen::generate_to(command(), dir)
            .with_context(|| format!("write the man pages of {name}"))?;
    }
    Ok(())
}

pub(crate) fn write_completions(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    for (name, command) in BINARIES {
        for shell in SHELLS {
            clap_complete::generate_to(*shell, &mut command(), *name, dir)
                .with_context(|| format!("write the {shell} completions of {name}"))?;
        }
    }
    Ok(())
}

/// Checks everything `dist` wrote.
fn verify(dist: &Path) -> Result<()> {
    for arch in [&X86_64, &AARCH64] {
        let dir = dist.join(arch.name);
        if arch.name != X86_64.name && !dir.exists() {
            continue;
        }
        let runs_here = arch.name == std::env::consts::ARCH;
        verify_arch(&dir, runs_here)?;
        let ran = if runs_here {
            "--version ok"
        } else {
            "not run on this host"
        };
        eprintln!("xtask: dist/{}: static, SHA256SUMS ok, {ran}", arch.name);
    }
    let pages = verify_man_pages(&dist.join("man"))?;
    eprintln!("xtask: dist/man: {pages} pages render with man -l");
    verify_completions(&dist.join("completions"))?;
    eprintln!("xtask: dist/completions: bash, zsh, fish present; bash parses");
    Ok(())
}

fn verify_arch(dir: &Path, runs_here: bool) -> Result<()> {
    verify_sums(dir)?;
    for (name, _) in BINARIES {
        let path = dir.join(name);
        let image = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        if let Some(why) = not_static(&image).with_context(|| format!("{}", path.display()))? {
            bail!("{} is not statically linked: {why}", path.display());
        }
        if runs_here {
            let output = Command::new(&path)
                .arg("--version")
                .output()
                .with_context(|| format!("run {} --version", path.display()))?;
            check_version(name, &output)?;
        }
    }
    Ok(())
}

/// Checks that every file SHA256SUMS lists matches it, and that it lists every binary.
fn verify_sums(dir: &Path) -> Result<()> {
    let sums = fs::read_to_string(dir.join("SHA256SUMS"))
        .with_context(|| format!("read {}/SHA256SUMS", dir.display()))?;
    let mut listed = Vec::new();
    for line in sums.lines() {
        let (sum, file) = line
            .split_once("  ")
            .with_context(|| format!("malformed SHA256SUMS line {line:?}"))?;
        let actual = sha256_hex(&dir.join(file))?;
        ensure!(
            actual == sum,
            "{}/{file}: SHA-256 {actual}, SHA256SUMS says {sum}",
            dir.display()
        );
        listed.push(file);
    }
    for (name, _) in BINARIES {
        ensure!(
            listed.contains(name),
            "{}/SHA256SUMS lacks {name}",
            dir.display()
        );
    }
    Ok(())
}

/// `NAME VERSION` on stdout and success, as clap's `--version` prints it.
fn check_version(name: &str, output: &Output) -> Result<()> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let expected = format!("{name} {}", env!("CARGO_PKG_VERSION"));
    ensure!(
        output.status.success() && stdout.trim() == expected,
        "{name} --version: {}, printed {:?} (expected {expected:?}), stderr {:?}",
        output.status,
        stdout.trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

// ELF64 little endian, the layout of both targets.
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NEEDED: u64 = 1;

/// Why an ELF executable is not static (it names an interpreter or needs a
/// shared library), or `None` when it is static (static-pie included).
pub(crate) fn not_static(image: &[u8]) -> Result<Option<&'static str>> {
    ensure!(image.starts_with(b"\x7fELF"), "not an ELF file");
    ensure!(
        image.get(4..6) == Some(&[2, 1]),
        "not a 64-bit little-endian ELF file"
    );
    let phoff = read_u64(image, 0x20)? as usize;
    let phentsize = read_u16(image, 0x36)? as usize;
    let phnum = read_u16(image, 0x38)? as usize;

    let mut needs_library = false;
    for index in 0..phnum {
        let header = phoff + index * phentsize;
        match read_u32(image, header)? {
            PT_INTERP => return Ok(Some("it names an interpreter (PT_INTERP)")),
            PT_DYNAMIC => {
                let offset = read_u64(image, header + 8)? as usize;
                let size = read_u64(image, header + 32)? as usize;
                needs_library |= dynamic_needs_library(image, offset, size)?;
            }
            _ => {}
        }
    }
    Ok(needs_library.then_some("it needs shared libraries (DT_NEEDED)"))
}

/// Whether the dynamic section at `offset` has a DT_NEEDED entry.
fn dynamic_needs_library(image: &[u8], offset: usize, size: usize) -> Result<bool> {
    for entry in (offset..offset + size).step_by(16) {
        match read_u64(image, entry)? {
            0 => break,
            DT_NEEDED => return Ok(true),
            _ => {}
        }
    }
    Ok(false)
}

fn read_bytes<const N: usize>(image: &[u8], at: usize) -> Result<[u8; N]> {
    image
        .get(at..at + N)
        .and_then(|bytes| bytes.try_into().ok())
        .context("ELF header points past the end of the file")
}

fn read_u16(image: &[u8], at: usize) -> Result<u16> {
    read_bytes(image, at).map(u16::from_le_bytes)
}

fn read_u32(image: &[u8], at: usize) -> Result<u32> {
    read_bytes(image, at).map(u32::from_le_bytes)
}

fn read_u64(image: &[u8], at: usize) -> Result<u64> {
    read_bytes(image, at).map(u64::from_le_bytes)
}

/// The man page file names `write_man_pages` must produce.
fn expected_man_pages() -> Vec<String> {
    let mut pages = Vec::new();
    for (name, command) in BINARIES {
        pages.push(format!("{name}.1"));
        for sub in command().get_subcommands().filter(|sub| !sub.is_hide_set()) {
            pages.push(format!("{name}-{}.1", sub.get_name()));
        }
    }
    pages
}

/// Renders every expected page with `man -l`; returns how many rendered.
fn verify_man_pages(dir: &Path) -> Result<usize> {
    let pages = expected_man_pages();
    for page in &pages {
        render_man_page(&dir.join(page))?;
    }
    Ok(pages.len())
}

/// Renders a page as a reader would; a troff warning counts as a failure.
fn render_man_page(page: &Path) -> Result<()> {
    let output = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .env_remove("MAN_KEEP_FORMATTING")
        .output()
        .context("run man (package man-db)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success() && stderr.trim().is_empty() && stdout.contains("NAME"),
        "man -l {}: {}, stderr {:?}, {} bytes rendered",
        page.display(),
        output.status,
        stderr.trim(),
        stdout.len()
    );
    Ok(())
}

fn completion_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (name, _) in BINARIES {
        files.push(format!("{name}.bash").into());
        files.push(format!("_{name}").into());
        files.push(format!("{name}.fish").into());
    }
    files
}

/// Every completion file is there and not empty; bash's also parse.
fn verify_completions(dir: &Path) -> Result<()> {
    for file in completion_files() {
        let path = dir.join(&file);
        let len = fs::metadata(&path)
            .with_context(|| format!("{} is missing", path.display()))?
            .len();
        ensure!(len > 0, "{} is empty", path.display());
        if path.extension().is_some_and(|ext| ext == "bash") {
            let output = Command::new("bash")
                .arg("-n")
                .arg(&path)
                .output()
                .context("run bash -n")?;
            ensure!(
                output.status.success(),
                "bash -n {}: {}, {}",
                path.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
