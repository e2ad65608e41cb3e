//! The process that is an instance: it holds the instance's namespaces, runs the start (or run)
//! script as its child, and lives on after the script ends, as an apptainer instance does.
//!
//! It is the pid `instance list` reports and `exec instance://` joins. SIGTERM, SIGINT, SIGHUP
//! or SIGQUIT go on to the script's process group and end the holder once its children are
//! gone; SIGUSR1/2 are only passed on. As a child subreaper it also reaps whatever the script
//! leaves behind. A holder killed outright takes the script with it (parent-death signal).

use std::convert::Infallible;
use std::os::fd::OwnedFd;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use super::container::{self, Plan, Report};
use super::signals::{self, Forwarding};
use super::sys;

/// Starts the instance for `plan`, detached, its output in `out` and `err`; returns the
/// holder's pid once its namespaces and root are set up.
pub fn spawn(plan: &Plan, out: OwnedFd, err: OwnedFd) -> Result<Pid> {
    let (report, reported) = container::report_pipe()?;
    // SAFETY: the stand-in is single-threaded, so the child may allocate and run Rust code.
    match unsafe { fork() }.context("fork the instance")? {
        ForkResult::Child => {
            drop(report);
            container::child(reported, |report| {
                detach(out, err)?;
                plan.enter()?;
                hold(plan, report)
            })
        }
        ForkResult::Parent { child } => {
            drop(reported);
            if let Some(message) = container::read_report(report) {
                let _ = container::wait_status(child);
                return Err(anyhow::anyhow!(message));
            }
            Ok(child)
        }
    }
}

/// A session of its own (no terminal signals reach it) and output into the log files.
fn detach(out: OwnedFd, err: OwnedFd) -> Result<()> {
    nix::unistd::setsid().context("start a session")?;
    let null = std::fs::File::open("/dev/null").context("open /dev/null")?;
    nix::unistd::dup2_stdin(null).context("redirect stdin")?;
    nix::unistd::dup2_stdout(out).context("redirect stdout to the log")?;
    nix::unistd::dup2_stderr(err).context("redirect stderr to the log")?;
    signals::default_sigpipe();
    Ok(())
}

fn hold(plan: &Plan, report: &mut Report) -> Result<Infallible> {
    nix::sys::prctl::set_child_subreaper(true).context("become a child subreaper")?;
    sys::set_name(c"standin-instance");
    let forwarding = Forwarding::install(true)?;
    let script = match plan.has_program() {
        true => Some(spawn_script(plan, &forwarding, report)?),
        false => None,
    };
    if let Some(script) = script {
        forwarding.set_target(-script.as_raw());
    }
    report.done();

    loop {
        let children = reap(script);
        if signals::stop_requested() && !children {
            std::process::exit(0);
        }
        forwarding.suspend();
    }
}

/// Forks the script in a process group of its own, so a stop reaches all it started.
fn spawn_script(plan: &Plan, forwarding: &Forwarding, report: &mut Report) -> Result<Pid> {
    let holder = nix::unistd::getpid();
    // SAFETY: single-threaded, as above.
    match unsafe { fork() }.context("fork the script")? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            report.done();
            forwarding.restore_in_child();
            let err = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))
                .context("start a process group")
                .and_then(|()| container::die_with_parent(holder))
                .err()
                .unwrap_or_else(|| plan.exec());
            eprintln!("apptainer-standin: error: {err:#}");
            // SAFETY: _exit ends the forked child without running atexit handlers.
            unsafe { libc::_exit(255) }
        }
    }
}

/// Reaps every child that has ended; whether any remain. Notes the script's end in the log.
fn reap(script: Option<Pid>) -> bool {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            Ok(WaitStatus::Exited(pid, code)) if Some(pid) == script => {
                eprintln!("apptainer-standin: the instance script exited with status {code}");
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if Some(pid) == script => {
                eprintln!("apptainer-standin: the instance script was killed by {signal}");
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}
