//! One container process: what it runs and in which namespaces, decided in the stand-in before
//! the fork, then carried out in the forked child.
//!
//! The child reports a setup failure through a close-on-exec pipe: it writes the message and
//! exits 255; a successful exec closes the pipe empty. The stand-in thus tells its own failures
//! (status 255, message on stderr) from the container's exit status without sleeping or polling.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getgid, getuid};

use super::cli::{Action, Launch};
use super::rootfs::{Rootfs, resolve_in_root};
use super::signals::Forwarding;
use super::{environ, sys, warn};

/// Where apptainer keeps an image's scripts.
const SCRIPTS: &str = "/.singularity.d";

/// Everything the container process needs, ready before it exists.
pub struct Plan {
    setup: Setup,
    pwd: PathBuf,
    /// The program and its arguments; empty for an instance without a startscript.
    argv: Vec<CString>,
    env: Vec<CString>,
    path: OsString,
}

enum Setup {
    Fresh(Fresh),
    Join(Joined),
}

/// New namespaces for a new container.
struct Fresh {
    /// (inside, outside) uid and gid of a new user namespace.
    userns: Option<((u32, u32), (u32, u32))>,
    net: bool,
    hostname: Option<String>,
    rootfs: Rootfs,
}

/// A running instance's namespaces (those that differ from the stand-in's) and root.
struct Joined {
    namespaces: Vec<(OwnedFd, CloneFlags, &'static str)>,
    root: OwnedFd,
}

/// The namespaces an instance's command joins, user first: it grants the rights over the others.
const JOINED: [(&str, CloneFlags); 4] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("mnt", CloneFlags::CLONE_NEWNS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("uts", CloneFlags::CLONE_NEWUTS),
];

impl Plan {
    /// A new container from a directory image.
    pub fn fresh(launch: &Launch) -> Result<Plan> {
        let options = &launch.options;
        let image = Path::new(&launch.image);
        let rootfs = Rootfs::plan(image, options, options.net)?;
        let (uid, gid) = (getuid().as_raw(), getgid().as_raw());
        // Unprivileged, apptainer runs in a user namespace keeping the caller's ids.
        let userns = match (options.fakeroot, nix::unistd::geteuid().is_root()) {
            (true, _) => Some(((0, 0), (uid, gid))),
            (false, false) => Some(((uid, gid), (uid, gid))),
            (false, true) => None,
        };
        let argv = target(launch, rootfs.root())?;
        let fresh = Fresh {
            userns,
            net: options.net,
            hostname: options.hostname.clone(),
            rootfs,
        };
        let image = fresh.rootfs.root().to_owned();
        Plan::new(launch, Setup::Fresh(fresh), argv, &image)
    }

    /// A command joining the running instance whose process is `pid`, started at `start`.
    pub fn join(launch: &Launch, pid: i32, start: u64, image: &Path) -> Result<Plan> {
        let options = &launch.options;
        let ignored = [
            (options.net, "--net"),
            (!options.binds.is_empty(), "--bind"),
            (options.contain, "--contain"),
            (options.fakeroot, "--fakeroot"),
            (options.hostname.is_some(), "--hostname"),
        ];
        for (_, option) in ignored.iter().filter(|(given, _)| *given) {
            warn(format_args!("{option} is ignored when joining an instance"));
        }

        let joined = Joined::open(pid, start)?;
        let argv = target(launch, Path::new(&format!("/proc/{pid}/root")))?;
        Plan::new(launch, Setup::Join(joined), argv, image)
    }

    fn new(launch: &Launch, setup: Setup, argv: Vec<OsString>, image: &Path) -> Result<Plan> {
        let host: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        let env = environ::build(&launch.options, &host, image)?;
        let path = env.get(OsStr::new("PATH")).cloned().unwrap_or_default();
        Ok(Plan {
            setup,
            pwd: launch.options.pwd.clone().unwrap_or_else(|| "/".into()),
            argv: argv.into_iter().map(c_string).collect::<Result<_>>()?,
            env: env_strings(env)?,
            path,
        })
    }

    /// Whether there is a program to run (an instance without a startscript has none).
    pub fn has_program(&self) -> bool {
        !self.argv.is_empty()
    }

    /// Enters the namespaces and the root, in the container process.
    pub fn enter(&self) -> Result<()> {
        match &self.setup {
            Setup::Fresh(fresh) => fresh.enter()?,
            Setup::Join(joined) => joined.enter()?,
        }
        nix::unistd::chdir(&self.pwd)
            .with_context(|| format!("enter the working directory {}", self.pwd.display()))
    }

    /// Replaces the process with the container's program; returns only on failure.
    pub fn exec(&self) -> anyhow::Error {
        sys::exec(&self.argv, &self.env, &self.path)
    }
}

impl Fresh {
    fn enter(&self) -> Result<()> {
        if let Some((inside, outside)) = self.userns {
            unshare(CloneFlags::CLONE_NEWUSER).context("unshare the user namespace")?;
            sys::write_id_maps(inside, outside)?;
        }
        let mut flags = CloneFlags::CLONE_NEWNS;
        if self.net {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        if self.hostname.is_some() {
            flags |= CloneFlags::CLONE_NEWUTS;
        }
        unshare(flags).context("unshare the mount and network namespaces")?;
        if let Some(name) = &self.hostname {
            nix::unistd::sethostname(name).context("set the hostname")?;
        }
        if self.net {
            sys::loopback_up()?;
        }
        self.rootfs.enter()
    }
}

impl Joined {
    /// Opens the namespaces of the instance process `pid` (started at `start`) that differ
    /// from ours, and its root.
    fn open(pid: i32, start: u64) -> Result<Joined> {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let open = |path: &Path| -> Result<OwnedFd> {
            let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
            Ok(file.into())
        };
        let mut namespaces = Vec::new();
        for (name, flag) in JOINED {
            let theirs = proc.join("ns").join(name);
            // Joining a namespace one is already in is refused (user) or pointless (others).
            let ours = Path::new("/proc/self/ns").join(name);
            if sys::namespace_id(&ours)? != sys::namespace_id(&theirs)? {
                namespaces.push((open(&theirs)?, flag, name));
            }
        }
        let root = open(&proc.join("root"))?;
        // Checked after opening: the namespaces are the instance's, not a reused pid's.
        if sys::start_time(pid) != Some(start) {
            bail!("the instance (pid {pid}) ended");
        }
        Ok(Joined { namespaces, root })
    }

    fn enter(&self) -> Result<()> {
        for (fd, flag, name) in &self.namespaces {
            setns(fd, *flag).with_context(|| format!("join the instance's {name} namespace"))?;
        }
        // The instance's own root, however it got there (pivot_root or chroot).
        nix::unistd::fchdir(&self.root).context("enter the instance's root")?;
        nix::unistd::chroot(".").context("chroot into the instance's root")?;
        Ok(())
    }
}

/// The program for `launch`, found in the image at `root` (on the host) the way apptainer's
/// action scripts are: run, exec and shell go through `/.singularity.d/actions/*` when present.
fn target(launch: &Launch, root: &Path) -> Result<Vec<OsString>> {
    let exists = |script: &str| -> Result<bool> {
        let path = format!("{SCRIPTS}/{script}");
        Ok(resolve_in_root(root, Path::new(&path))?.exists())
    };
    let script = |name: &str| OsString::from(format!("{SCRIPTS}/{name}"));
    let mut argv = match launch.action {
        Action::Run | Action::InstanceRun if exists("actions/run")? => vec![script("actions/run")],
        Action::Run | Action::InstanceRun if exists("runscript")? => vec![script("runscript")],
        Action::Run | Action::InstanceRun => bail!("the image has no runscript"),
        Action::Exec if exists("actions/exec")? => vec![script("actions/exec")],
        Action::Exec => vec![],
        Action::Shell if exists("actions/shell")? => vec![script("actions/shell")],
        Action::Shell => vec!["/bin/sh".into()],
        Action::InstanceStart if exists("startscript")? => vec![script("startscript")],
        // No startscript: the instance just holds its namespaces.
        Action::InstanceStart => return Ok(vec![]),
    };
    argv.extend(launch.args.iter().cloned());
    Ok(argv)
}

fn c_string(word: OsString) -> Result<CString> {
    CString::new(word.into_vec()).map_err(|_| anyhow!("an argument holds a NUL byte"))
}

fn env_strings(env: BTreeMap<OsString, OsString>) -> Result<Vec<CString>> {
    env.into_iter()
        .map(|(key, value)| {
            let mut pair = key.into_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            c_string(OsString::from_vec(pair))
        })
        .collect()
}

/// Runs `plan` as a child of the stand-in, passes the stand-in's signals on to it, and returns
/// its status as a shell reports it (128+n when killed by signal n).
pub fn run_foreground(plan: &Plan) -> Result<i32> {
    let forwarding = Forwarding::install(false)?;
    let (report, reported) = report_pipe()?;
    let parent = nix::unistd::getpid();

    // SAFETY: the stand-in is single-threaded, so the child may allocate and run Rust code.
    match unsafe { fork() }.context("fork the container process")? {
        ForkResult::Child => {
            drop(report);
            child(reported, |_| {
                forwarding.restore_in_child();
                die_with_parent(parent)?;
                plan.enter()?;
                Err(plan.exec())
            })
        }
        ForkResult::Parent { child } => {
            drop(reported);
            forwarding.set_target(child.as_raw());
            forwarding.unblock()?;
            let failure = read_report(report);
            let status = wait_status(child)?;
            match failure {
                Some(message) => Err(anyhow!(message)),
                None => Ok(status),
            }
        }
    }
}

/// A fresh close-on-exec pipe: (read end, write end).
pub fn report_pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).context("make the report pipe")
}

/// The write end of the report pipe, in the child.
pub struct Report(Option<File>);

impl Report {
    /// Closes the pipe: setup succeeded. Later failures go to stderr.
    pub fn done(&mut self) {
        self.0 = None;
    }
}

/// The body of a forked child: runs `body`, which only returns on failure; the failure goes
/// to the report pipe (or stderr, once the report is done) and the child exits 255.
pub fn child(reported: OwnedFd, body: impl FnOnce(&mut Report) -> Result<Infallible>) -> ! {
    let mut report = Report(Some(File::from(reported)));
    let Err(err) = body(&mut report);
    let message = format!("{err:#}");
    match &mut report.0 {
        Some(pipe) => drop(pipe.write_all(message.as_bytes())),
        None => eprintln!("apptainer-standin: error: {message}"),
    }
    // SAFETY: _exit ends the forked child without running the parent's atexit handlers.
    unsafe { libc::_exit(255) }
}

/// Reads the report pipe to its end: `None` if the child closed it without a word.
pub fn read_report(report: OwnedFd) -> Option<String> {
    let mut pipe = File::from(report);
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            // A forwarded signal interrupted the read.
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    (!text.is_empty()).then(|| String::from_utf8_lossy(&text).into_owned())
}

/// Waits for `child` through interruptions; its status as a shell reports it.
pub fn wait_status(child: Pid) -> Result<i32> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(err).context("wait for the container process"),
        }
    }
}

/// Makes the kernel kill this (forked) process when the stand-in dies, even by SIGKILL.
pub fn die_with_parent(parent: Pid) -> Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .context("set the parent-death signal")?;
    // The parent may have died before the line above took effect.
    if nix::unistd::getppid() != parent {
        bail!("the stand-in ended while the container started");
    }
    Ok(())
}
