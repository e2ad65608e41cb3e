//! A bubble's lifecycle: `start` (apply in order, roll back in reverse),
//! the foreground wait, and `stop`/`list` for the other commands.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::{info, warn};

use crate::plan::Plan;
use crate::slirp::{Attach, Slirp};
use crate::state::{Record, StateDir};
use crate::sys::{self, Pidfd};
use crate::{Error, Result, apptainer};

/// How long `stop` waits for a foreground `start` to tear down.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// What has been applied so far, undone in reverse by [`Up::teardown`].
struct Up<'a> {
    plan: &'a Plan,
    state: &'a StateDir,
    instance: bool,
    slirp: Option<Slirp>,
}

impl Up<'_> {
    /// Undoes every step, in reverse, past failures; returns them all.
    fn teardown(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        if let Some(mut slirp) = self.slirp.take() {
            failures.extend(slirp.stop());
        }
        if std::mem::take(&mut self.instance) {
            if let Err(e) = apptainer::instance_stop(&self.plan.apptainer, &self.plan.instance()) {
                failures.push(e.to_string());
            }
        }
        if let Err(e) = self.state.remove(self.plan.id) {
            failures.push(e.to_string());
        }
        failures
    }
}

/// Starts bubble `plan.id`, prints `bubble ID ready: …` on stdout once
/// every forward is in place, and stays in the foreground until SIGINT,
/// SIGTERM or SIGHUP (a clean stop, `Ok`) or until the instance or
/// slirp4netns ends (an error). Everything is torn down either way.
pub fn start(plan: &Plan, state: &StateDir) -> Result<()> {
    // Blocked before anything exists, so a signal during setup is seen by
    // the wait below (and rolls everything back) instead of killing us.
    sys::block_stop_signals()?;
    let signals = SignalFd::with_flags(&sys::stop_set(), SfdFlags::SFD_CLOEXEC)
        .map_err(|e| Error::io("make a signalfd", e.into()))?;
    let dir = claim(plan, state)?;

    let mut up = Up {
        plan,
        state,
        instance: false,
        slirp: None,
    };
    let outcome = bring_up(&mut up, &dir).and_then(|()| wait(&up, &signals));
    let failures = up.teardown();
    match (outcome, failures.is_empty()) {
        (Ok(()), true) => {
            info!(id = plan.id, "bubble stopped and cleaned up");
            Ok(())
        }
        (Ok(()), false) => Err(Error::Teardown(failures)),
        (Err(e), true) => Err(e),
        (Err(e), false) => {
            // The cause comes first; what could not be undone is logged here only.
            warn!(
                "after that failure, the teardown failed too: {}",
                failures.join("; ")
            );
            Err(e)
        }
    }
}

/// Claims the bubble's directory, clearing what a dead `start` left.
fn claim(plan: &Plan, state: &StateDir) -> Result<PathBuf> {
    if let Some(dir) = state.claim(plan.id)? {
        return Ok(dir);
    }
    if let Some(record) = state.read(plan.id)? {
        if record.alive() {
            return Err(Error::Running {
                id: plan.id,
                pid: record.pid,
            });
        }
    }
    info!(
        id = plan.id,
        "clearing what an earlier hpk-bubble left behind"
    );
    clear_stale(state, plan.id, &plan.apptainer)?;
    state
        .claim(plan.id)?
        .ok_or_else(|| Error::Invalid(format!("another hpk-bubble start {} won the race", plan.id)))
}

fn bring_up(up: &mut Up, dir: &Path) -> Result<()> {
    let plan = up.plan;
    let mut record = Record {
        id: plan.id,
        role: plan.role,
        cidr: plan.net.cidr.to_string(),
        host_ip: plan.host_ip,
        etcd_ip: plan.etcd_ip,
        instance: plan.instance(),
        pid: std::process::id() as i32,
        start_time: sys::start_time(std::process::id() as i32).unwrap_or_default(),
        instance_pid: None,
        slirp_pid: None,
        ready: false,
    };
    up.state.write(&record)?;
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, plan.resolv_conf())
        .map_err(|e| Error::io(format!("write {}", resolv.display()), e))?;

    info!(instance = %plan.instance(), image = ?plan.image, "starting the instance");
    apptainer::instance_run(plan, &resolv)?;
    up.instance = true;
    let pid = apptainer::instance_pid(&plan.apptainer, &plan.instance())?;
    record.instance_pid = Some(pid);
    up.state.write(&record)?;

    info!(pid, cidr = %plan.net.cidr, "attaching slirp4netns");
    let slirp = up.slirp.insert(Slirp::attach(&Attach {
        program: &plan.slirp4netns,
        net: plan.net,
        pid,
        api_socket: &dir.join("slirp.sock"),
        log: &dir.join("slirp4netns.log"),
    })?);
    record.slirp_pid = Some(slirp.pid());
    for forward in plan.forwards() {
        let id = slirp.add_forward(forward)?;
        info!(proto = forward.proto, port = forward.port, id, "forwarded");
    }
    record.ready = true;
    up.state.write(&record)?;
    announce(plan, pid)
}

/// The readiness line on stdout, which scripts and tests wait for.
fn announce(plan: &Plan, pid: i32) -> Result<()> {
    let ports: Vec<String> = plan
        .forwards()
        .iter()
        .map(|f| format!("{}/{}", f.proto, f.port))
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "bubble {} ready: instance {} pid {} network {} bubble {} dns {} host {} etcd {} forwards {}",
        plan.id,
        plan.instance(),
        pid,
        plan.net.cidr,
        plan.net.guest(),
        plan.net.dns(),
        plan.host_ip,
        plan.etcd_ip,
        ports.join(",")
    )
    .and_then(|()| out.flush())
    .map_err(|e| Error::io("write the ready line", e))
}

/// Waits for a stop signal (Ok) or the end of the instance or slirp4netns.
fn wait(up: &Up, signals: &SignalFd) -> Result<()> {
    let instance_pid = up.state.read(up.plan.id)?.and_then(|r| r.instance_pid);
    let instance = instance_pid.and_then(|pid| Pidfd::open(pid, None));
    let slirp = up.slirp.as_ref().and_then(Slirp::pidfd);
    let (Some(instance), Some(slirp)) = (instance, slirp) else {
        return Err(Error::Invalid(
            "the instance or slirp4netns ended during start".into(),
        ));
    };
    loop {
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(instance.as_fd(), PollFlags::POLLIN),
            PollFd::new(slirp.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::io("wait", e.into())),
            Ok(_) => {}
        }
        let ready = |i: usize| fds[i].any().unwrap_or(false);
        if ready(0) {
            let signal = signals
                .read_signal()
                .ok()
                .flatten()
                .and_then(|info| Signal::try_from(info.ssi_signo as i32).ok());
            info!(?signal, "stopping the bubble");
            return Ok(());
        }
        if ready(1) {
            return Err(Error::Apptainer(format!(
                "instance {} ended",
                up.plan.instance()
            )));
        }
        if ready(2) {
            return Err(Error::Slirp("slirp4netns ended; see its log".into()));
        }
    }
}

/// Clears bubble `id` whose `start` is gone: stops its instance if still
/// listed (slirp4netns ended with `start`, through its exit pipe) and
/// removes its directory.
fn clear_stale(state: &StateDir, id: u32, apptainer: &Path) -> Result<()> {
    let name = crate::plan::instance_name(id);
    match apptainer::instance_pid(apptainer, &name) {
        Ok(pid) => {
            info!(instance = %name, pid, "stopping the instance left behind");
            apptainer::instance_stop(apptainer, &name)?;
        }
        Err(e) => info!(instance = %name, "no instance to stop ({e})"),
    }
    state.remove(id)
}

/// Stops bubble `id`: asks its foreground `start` to tear down (SIGTERM)
/// and waits for it, or clears what a dead one left behind.
pub fn stop(state: &StateDir, id: u32, apptainer: &Path) -> Result<()> {
    let record = state.read(id)?;
    let live = record
        .as_ref()
        .and_then(|r| Pidfd::open(r.pid, Some(r.start_time)));
    match (record, live) {
        (None, _) if !state.dir(id).exists() => Err(Error::Unknown(id)),
        (Some(record), Some(start)) => {
            info!(id, pid = record.pid, "asking hpk-bubble start to stop");
            start.signal(Signal::SIGTERM)?;
            if !start.wait(STOP_TIMEOUT) {
                return Err(Error::Invalid(format!(
                    "hpk-bubble start (pid {}) did not stop within {STOP_TIMEOUT:?}",
                    record.pid
                )));
            }
            // It cleans up after itself; only a failed teardown leaves the directory.
            match state.dir(id).exists() {
                true => clear_stale(state, id, apptainer),
                false => Ok(()),
            }
        }
        _ => {
            info!(id, "hpk-bubble start is gone; clearing what it left");
            clear_stale(state, id, apptainer)
        }
    }
}

/// `list`: one line per bubble in the state directory.
pub fn list(state: &StateDir) -> Result<String> {
    let mut text = String::from("ID\tROLE\tSTATE\tNETWORK\tHOST IP\tETCD IP\tINSTANCE\tPID\n");
    for r in state.all()? {
        let status = match (r.alive(), r.ready) {
            (true, true) => "running",
            (true, false) => "starting",
            (false, _) => "stale",
        };
        let pid = r
            .instance_pid
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        text.push_str(&format!(
            "{}\t{}\t{status}\t{}\t{}\t{}\t{}\t{pid}\n",
            r.id,
            r.role.as_str(),
            r.cidr,
            r.host_ip,
            r.etcd_ip,
            r.instance
        ));
    }
    Ok(text)
}
