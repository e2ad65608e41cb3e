//! The container's filesystem: the image directory bound onto itself, the kernel filesystems
//! and the user's binds mounted inside it, then made the root with pivot_root.
//!
//! Everything happens in the child's private mount namespace, so the host sees none of it; only
//! the mount points the image lacks are created in the image directory itself (as apptainer's
//! underlay would, except that the stand-in writes them into the image).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::statvfs::{FsFlags, statvfs};

use super::cli::{Bind, Options};
use super::debug;

/// Host devices a `--contain` container gets in its own small /dev.
const MINIMAL_DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// How /sys is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sys {
    /// A fresh sysfs, so /sys/class/net shows the container's own network namespace.
    Fresh,
    Host,
    Skip,
}

/// How /dev is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dev {
    Host,
    /// A tmpfs with only [`MINIMAL_DEVICES`] (`--contain`).
    Minimal,
    Skip,
}

/// What to mount, decided (and checked) before the container process exists.
#[derive(Debug)]
pub struct Rootfs {
    root: PathBuf,
    proc: bool,
    sys: Sys,
    dev: Dev,
    tmp: bool,
    binds: Vec<Bind>,
    readonly: bool,
}

impl Rootfs {
    /// Checks the image and the bind sources; `new_net` says whether the container gets its
    /// own network namespace.
    pub fn plan(image: &Path, options: &Options, new_net: bool) -> Result<Rootfs> {
        let root = image
            .canonicalize()
            .with_context(|| format!("resolve image {}", image.display()))?;
        let skip = |what: &str| options.no_mount.iter().any(|m| m == what);
        let mut binds = Vec::new();
        for bind in &options.binds {
            let src = bind
                .src
                .canonicalize()
                .with_context(|| format!("bind source {} (it must exist)", bind.src.display()))?;
            binds.push(Bind {
                src,
                ..bind.clone()
            });
        }
        Ok(Rootfs {
            root,
            proc: !skip("proc"),
            sys: match (skip("sys"), new_net) {
                (true, _) => Sys::Skip,
                (false, true) => Sys::Fresh,
                (false, false) => Sys::Host,
            },
            dev: match (skip("dev"), options.contain) {
                (true, _) => Dev::Skip,
                (false, true) => Dev::Minimal,
                (false, false) => Dev::Host,
            },
            tmp: !skip("tmp"),
            binds,
            readonly: !options.writable,
        })
    }

    /// The image directory on the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Mounts everything and makes the image the root. Runs in the container process, in its
    /// new mount namespace (and new network namespace, if any).
    pub fn enter(&self) -> Result<()> {
        let root = &self.root;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .context("make / private in the new mount namespace")?;
        bind(root, root, "bind the image onto itself")?;

        if self.proc {
            bind(
                Path::new("/proc"),
                &mount_point(root, "/proc", true)?,
                "bind /proc",
            )?;
        }
        self.mount_sys()?;
        match self.dev {
            Dev::Host => bind(
                Path::new("/dev"),
                &mount_point(root, "/dev", true)?,
                "bind /dev",
            )?,
            Dev::Minimal => self.minimal_dev()?,
            Dev::Skip => {}
        }
        if self.tmp {
            let tmp = mount_point(root, "/tmp", true)?;
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            mount(Some("tmpfs"), &tmp, Some("tmpfs"), flags, Some("mode=1777"))
                .context("mount a tmpfs on /tmp")?;
        }
        for user_bind in &self.binds {
            self.bind_user(user_bind)?;
        }
        if self.readonly {
            remount_readonly(root).context("make the image read-only")?;
        }
        pivot(root)
    }

    fn mount_sys(&self) -> Result<()> {
        if self.sys == Sys::Skip {
            return Ok(());
        }
        let sys = mount_point(&self.root, "/sys", true)?;
        if self.sys == Sys::Fresh {
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            match mount(Some("sysfs"), &sys, Some("sysfs"), flags, None::<&str>) {
                Ok(()) => return Ok(()),
                // Refused in some user namespaces: the host's /sys still serves most needs.
                Err(err) => debug(format_args!("fresh sysfs refused ({err}), binding /sys")),
            }
        }
        bind(Path::new("/sys"), &sys, "bind /sys")
    }

    fn minimal_dev(&self) -> Result<()> {
        let dev = mount_point(&self.root, "/dev", true)?;
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
        mount(Some("tmpfs"), &dev, Some("tmpfs"), flags, Some("mode=755"))
            .context("mount a tmpfs on /dev")?;
        for name in MINIMAL_DEVICES {
            let host = Path::new("/dev").join(name);
            let inside = dev.join(name);
            fs::File::create(&inside).with_context(|| format!("create /dev/{name}"))?;
            bind(&host, &inside, &format!("bind /dev/{name}"))?;
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            std::os::unix::fs::symlink(target, dev.join(link))
                .with_context(|| format!("link /dev/{link}"))?;
        }
        Ok(())
    }

    fn bind_user(&self, user_bind: &Bind) -> Result<()> {
        let is_dir = user_bind.src.is_dir();
        let what = format!(
            "bind {} to {}",
            user_bind.src.display(),
            user_bind.dst.display()
        );
        let dst = mount_point(&self.root, &user_bind.dst, is_dir).context(what.clone())?;
        bind(&user_bind.src, &dst, &what)?;
        if user_bind.readonly {
            remount_readonly(&dst).context(what)?;
        }
        Ok(())
    }
}

/// `path` inside `root` on the host, created (a directory, or an empty file when `!dir`) if
/// missing. Symbolic links in the image resolve inside the image, never onto the host.
fn mount_point(root: &Path, path: impl AsRef<Path>, dir: bool) -> Result<PathBuf> {
    let path = path.as_ref();
    let host = resolve_in_root(root, path)?;
    let made = if dir {
        fs::create_dir_all(&host)
    } else if host.exists() {
        Ok(())
    } else {
        let parent = host.parent().unwrap_or(root);
        fs::create_dir_all(parent).and_then(|()| {
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&host)
                .map(drop)
        })
    };
    made.with_context(|| format!("create mount point {} in the image", path.display()))?;
    Ok(host)
}

/// Resolves `path` as the container will see it, following the image's symbolic links
/// inside `root`; a missing tail is kept as written.
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, path);
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        match fs::read_link(root.join(&candidate)) {
            Ok(target) => {
                links += 1;
                if links > 40 {
                    bail!(
                        "too many symbolic links under {} in the image",
                        path.display()
                    );
                }
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                push_components(&mut pending, &target);
            }
            Err(err) if err.kind() == io::ErrorKind::InvalidInput => resolved = candidate,
            Err(err) if err.kind() == io::ErrorKind::NotFound => resolved = candidate,
            Err(err) => return Err(err).context(format!("resolve {}", path.display())),
        }
    }
    Ok(root.join(resolved))
}

/// Pushes `path`'s components so that popping yields them in order.
fn push_components(pending: &mut Vec<OsString>, path: &Path) {
    let parts = path.components().filter_map(|c| match c {
        Component::Normal(name) => Some(name.to_owned()),
        Component::ParentDir => Some("..".into()),
        _ => None,
    });
    let parts: Vec<OsString> = parts.collect();
    pending.extend(parts.into_iter().rev());
}

fn bind(src: &Path, dst: &Path, what: &str) -> Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(src), dst, None::<&str>, flags, None::<&str>).with_context(|| what.to_owned())
}

/// Remounts the bind at `target` read-only, keeping the flags the kernel locks in a user
/// namespace (nosuid, nodev, noexec, atime), or the remount would be refused.
fn remount_readonly(target: &Path) -> Result<()> {
    let current = statvfs(target).context("statvfs")?.flags();
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    for (have, keep) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if current.contains(have) {
            flags |= keep;
        }
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>).context("remount read-only")
}

/// Makes `root` the root directory: pivot_root where the host's root allows it (so the host
/// tree is gone from the container), chroot where it cannot be pivoted (an initramfs).
fn pivot(root: &Path) -> Result<()> {
    nix::unistd::chdir(root).context("enter the image")?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            // The old root now sits on top of the new one: detach it.
            umount2(".", MntFlags::MNT_DETACH).context("detach the host root")?;
        }
        Err(Errno::EINVAL) => {
            debug(format_args!("pivot_root refused, using chroot"));
            nix::unistd::chroot(".").context("chroot into the image")?;
        }
        Err(err) => return Err(err).context("pivot_root into the image"),
    }
    nix::unistd::chdir("/").context("enter the new root")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_image() {
        let root = std::env::temp_dir().join(format!("standin-resolve-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("../../etc", root.join("usr/lib/up")).unwrap();
        std::os::unix::fs::symlink("/", root.join("escape")).unwrap();

        let got = |p: &str| resolve_in_root(&root, Path::new(p)).unwrap();
        assert_eq!(got("/lib/x/y"), root.join("usr/lib/x/y"));
        assert_eq!(got("/lib/up/passwd"), root.join("etc/passwd"));
        assert_eq!(got("/escape/../../etc"), root.join("etc"));
        assert_eq!(got("/new"), root.join("new"));
        fs::remove_dir_all(&root).unwrap();
    }
}
