//! The Docker path of `cargo xtask images`: both Dockerfiles built with
//! `docker buildx` for every platform at once, tagged `VERSION` and `latest`.
//!
//! Needs a Docker engine that answers `docker info` and a buildx builder
//! that can build for foreign platforms (`docker buildx create --use`, with
//! QEMU binfmt handlers for arm64 on an amd64 host). Neither is available
//! where this project is developed, so only the command line built here is
//! tested (see the unit tests), never a real build.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Result, bail};

use super::lint::ARCHES;
use crate::prereq;

/// The images the Dockerfiles under docker/ build.
pub const IMAGES: &[&str] = &["hpktainer-base", "hpk-bubble"];

/// Whether a Docker engine answers. `docker --version` only shows the CLI is
/// installed; `docker info` talks to the daemon.
pub fn engine_works() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// What to build and where it goes.
pub struct Plan {
    /// `REGISTRY` (e.g. `myregistry.io/user`), prefixed to every tag.
    pub registry: Option<String>,
    pub version: String,
    /// `linux/amd64`, `linux/arm64`.
    pub platforms: Vec<String>,
    /// Push to the registry; otherwise write a multi-platform OCI archive.
    pub push: bool,
}

impl Plan {
    /// The tags of `image`: its version and `latest`.
    pub fn tags(&self, image: &str) -> Vec<String> {
        let name = match &self.registry {
            Some(registry) => format!("{}/{image}", registry.trim_end_matches('/')),
            None => image.to_owned(),
        };
        vec![format!("{name}:{}", self.version), format!("{name}:latest")]
    }

    /// The archive a build without `--push` writes.
    pub fn archive(&self, root: &Path, image: &str) -> PathBuf {
        root.join("dist/images")
            .join(format!("{image}-{}.oci.tar", self.version))
    }

    /// `docker buildx build …` for `image`, run from the workspace root.
    pub fn buildx_args(&self, root: &Path, image: &str) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "buildx".into(),
            "build".into(),
            "--platform".into(),
            self.platforms.join(","),
            "--file".into(),
            format!("docker/{image}/Dockerfile"),
            "--build-arg".into(),
            format!("VERSION={}", self.version),
        ];
        for tag in self.tags(image) {
            args.extend(["--tag".into(), tag]);
        }
        if self.push {
            args.push("--push".into());
        } else {
            let dest = self.archive(root, image);
            args.extend([
                "--output".into(),
                format!("type=oci,dest={}", dest.display()),
            ]);
        }
        args.push(".".into());
        args
    }

    /// The dist/ directories the platforms need (`x86_64`, `aarch64`).
    pub fn dist_dirs(&self) -> Result<Vec<&'static str>> {
        self.platforms
            .iter()
            .map(|platform| {
                let arch = platform.strip_prefix("linux/").unwrap_or(platform);
                match ARCHES.iter().find(|(name, _)| *name == arch) {
                    Some((_, dir)) => Ok(*dir),
                    None => {
                        bail!("platform {platform}: only linux/amd64 and linux/arm64 are built")
                    }
                }
            })
            .collect()
    }
}

/// Builds every image with buildx; the executables come from dist/.
pub fn build(root: &Path, plan: &Plan) -> Result<()> {
    let dirs = plan.dist_dirs()?;
    if dirs.iter().any(|dir| !root.join("dist").join(dir).is_dir()) {
        eprintln!("xtask: dist/ lacks an architecture; running cargo xtask dist first");
        crate::dist::run(&[])?;
    }
    for dir in &dirs {
        if !root.join("dist").join(dir).is_dir() {
            bail!(
                "dist/{dir} is missing after cargo xtask dist (see its \"skipped\" line); \
                 install that target or pass --platform with the platforms you have"
            );
        }
    }
    if !plan.push {
        std::fs::create_dir_all(root.join("dist/images"))?;
    }
    for image in IMAGES {
        eprintln!(
            "xtask: docker buildx build {image} for {}",
            plan.platforms.join(",")
        );
        prereq::run(
            Command::new("docker")
                .current_dir(root)
                .args(plan.buildx_args(root, image)),
        )?;
        match plan.push {
            true => eprintln!("xtask: pushed {}", plan.tags(image).join(", ")),
            false => eprintln!("xtask: wrote {}", plan.archive(root, image).display()),
        }
    }
    Ok(())
}
