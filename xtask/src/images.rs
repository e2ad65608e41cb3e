//! `cargo xtask images`: the container images, with Docker or without.
//!
//! With a Docker engine (one that answers `docker info`) both Dockerfiles
//! under docker/ are built with buildx for linux/amd64 and linux/arm64 and
//! tagged `VERSION` and `latest` under `$REGISTRY`; `--push` pushes them,
//! otherwise each becomes a multi-platform OCI archive in dist/images/.
//! Without one, `hpktainer-base` for this host's architecture is written as
//! an OCI image archive by our own code (`oci`), from the static release
//! `hpk-net-daemon` — the one in dist/ when `cargo xtask dist` has run, else
//! a fresh release build of that one binary. Apptainer runs that archive as
//! it is (`apptainer run oci-archive:PATH`). Both paths first check the
//! Dockerfiles (`lint`).

mod docker;
mod lint;
mod oci;
mod tar;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::prereq;

const USAGE: &str = "\
usage: [REGISTRY=myregistry.io/user] cargo xtask images [--push] [--platform LIST] [--archive]

  --push           push the images to REGISTRY (needs a Docker engine)
  --platform LIST  what buildx builds (default linux/amd64,linux/arm64)
  --archive        write the host's hpktainer-base OCI archive without Docker,
                   even when a Docker engine answers";

const DEFAULT_PLATFORMS: &str = "linux/amd64,linux/arm64";

/// Runs the task.
pub fn run(args: &[String]) -> Result<()> {
    let mut push = false;
    let mut archive_only = false;
    let mut platforms = DEFAULT_PLATFORMS.to_owned();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--push" => push = true,
            "--archive" => archive_only = true,
            "--platform" => platforms = args.next().context("--platform needs a list")?.clone(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown option {other:?}\n\n{USAGE}"),
        }
    }

    let root = crate::workspace_root();
    lint_dockerfiles(&root)?;
    if !archive_only && docker::engine_works() {
        let plan = docker::Plan {
            registry: std::env::var("REGISTRY").ok().filter(|r| !r.is_empty()),
            version: VERSION.to_owned(),
            platforms: platforms.split(',').map(str::to_owned).collect(),
            push,
        };
        ensure!(
            !push || plan.registry.is_some(),
            "--push needs REGISTRY, e.g. REGISTRY=myregistry.io/user"
        );
        return docker::build(&root, &plan);
    }
    if push {
        bail!("--push needs a Docker engine, and `docker info` finds none");
    }
    if !archive_only {
        eprintln!(
            "xtask: no Docker engine answers `docker info`: writing hpktainer-base for this \
             host only, as an OCI archive, without Docker"
        );
    }
    let path = write_host_archive(&root)?;
    eprintln!(
        "xtask: run it with: apptainer run oci-archive:{} -- COMMAND",
        path.display()
    );
    println!("{}", path.display());
    Ok(())
}

/// The release version: the image's tag.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Checks both Dockerfiles, failing with every problem found.
fn lint_dockerfiles(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    for image in docker::IMAGES {
        let path = root.join("docker").join(image).join("Dockerfile");
        let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        for problem in lint::check(&text, root, &crate::dist::binary_names()) {
            problems.push(format!("docker/{image}/Dockerfile {problem}"));
        }
    }
    ensure!(
        problems.is_empty(),
        "Dockerfile problems:\n  {}",
        problems.join("\n  ")
    );
    Ok(())
}

/// This host's OCI architecture name and its Rust target.
fn host_arch() -> Result<(&'static str, &'static str)> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(("amd64", crate::TARGET)),
        "aarch64" => Ok(("arm64", "aarch64-unknown-linux-gnu")),
        other => bail!("no image for {other}: only x86_64 and aarch64 hosts are supported"),
    }
}

/// Writes dist/images/hpktainer-base-VERSION-ARCH.oci.tar and returns its path.
fn write_host_archive(root: &Path) -> Result<PathBuf> {
    let (arch, target) = host_arch()?;
    let daemon_path = release_daemon(root, target)?;
    let daemon =
        fs::read(&daemon_path).with_context(|| format!("read {}", daemon_path.display()))?;
    if let Some(why) = crate::dist::not_static(&daemon)? {
        bail!(
            "{} is not static ({why}); the image has no libc for it",
            daemon_path.display()
        );
    }

    let archive = oci::base_archive(&oci::BaseImage {
        daemon: &daemon,
        arch,
        version: VERSION,
        mtime: source_date_epoch()?,
    })?;
    let out = root
        .join("dist/images")
        .join(format!("hpktainer-base-{VERSION}-{arch}.oci.tar"));
    fs::create_dir_all(out.parent().expect("a file in dist/images"))?;
    fs::write(&out, &archive.bytes).with_context(|| format!("write {}", out.display()))?;
    eprintln!(
        "xtask: wrote {} ({} bytes, manifest {}) from {}",
        out.display(),
        archive.bytes.len(),
        archive.manifest_digest,
        daemon_path.display()
    );
    Ok(out)
}

/// The static release `hpk-net-daemon`: dist/'s when there, else built now.
fn release_daemon(root: &Path, target: &str) -> Result<PathBuf> {
    let dir = if target == crate::TARGET {
        "x86_64"
    } else {
        "aarch64"
    };
    let in_dist = root.join("dist").join(dir).join("hpk-net-daemon");
    if in_dist.is_file() {
        return Ok(in_dist);
    }
    eprintln!("xtask: no dist/{dir}/hpk-net-daemon: building it (release)");
    prereq::run(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "--package",
        "hpk-net-daemon",
        "--bin",
        "hpk-net-daemon",
        "--target",
        target,
    ]))?;
    Ok(crate::bench::target_dir(root)?
        .join(target)
        .join("release/hpk-net-daemon"))
}

/// Timestamps in the archive: `SOURCE_DATE_EPOCH` when set (the
/// reproducible-builds convention), else the epoch itself.
fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={text:?} is not a number of seconds")),
        Err(_) => Ok(0),
    }
}

#[cfg(test)]
mod tests;
