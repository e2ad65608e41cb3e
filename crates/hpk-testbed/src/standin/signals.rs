//! Signal forwarding, without threads: a handler that passes each forwarded signal on with
//! `kill` (async-signal-safe) to one target, set once the target exists.
//!
//! The forwarded signals stay blocked from before the fork until the target is known, so none
//! is lost or delivered to a stand-in that cannot pass it on yet; the forked child puts the
//! caller's dispositions and mask back before it execs.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use anyhow::{Context, Result};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction};

/// What the stand-in passes on to the container, as apptainer's starter does.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGINT,
    Signal::SIGQUIT,
];

/// The pid (or, negative, the process group) forwarded signals go to; 0: nobody yet.
static TARGET: AtomicI32 = AtomicI32::new(0);
/// Whether a signal that stops an instance (see [`STOPPING`]) arrived.
static STOP: AtomicBool = AtomicBool::new(false);

/// The forwarded signals that also end an instance once its script has gone.
const STOPPING: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

extern "C" fn forward(signal: libc::c_int) {
    if STOPPING.contains(&signal) {
        STOP.store(true, Ordering::SeqCst);
    }
    let target = TARGET.load(Ordering::SeqCst);
    if target != 0 {
        // SAFETY: kill is async-signal-safe; a target that is gone yields ESRCH, ignored.
        unsafe { libc::kill(target, signal) };
    }
}

extern "C" fn wake(_: libc::c_int) {}

/// Forwarding installed in this process; remembers what it replaced.
pub struct Forwarding {
    old_mask: SigSet,
    old_actions: Vec<(Signal, SigAction)>,
}

impl Forwarding {
    /// Blocks the forwarded signals and installs the forwarding handler (and, with
    /// `wake_on_child`, a handler that only interrupts waits on SIGCHLD, also blocked).
    pub fn install(wake_on_child: bool) -> Result<Forwarding> {
        let mut set = SigSet::empty();
        FORWARDED.iter().for_each(|&s| set.add(s));
        if wake_on_child {
            set.add(Signal::SIGCHLD);
        }
        let old_mask = set
            .thread_swap_mask(SigmaskHow::SIG_BLOCK)
            .context("block signals")?;

        let mut old_actions = Vec::new();
        for signal in set.iter() {
            let handler = match signal {
                Signal::SIGCHLD => SigHandler::Handler(wake),
                _ => SigHandler::Handler(forward),
            };
            // No SA_RESTART: a wait in progress returns EINTR, and the caller looks again.
            let action = SigAction::new(handler, SaFlags::empty(), SigSet::empty());
            // SAFETY: both handlers only touch atomics and call kill.
            let old = unsafe { sigaction(signal, &action) }.context("install signal handler")?;
            old_actions.push((signal, old));
        }
        Ok(Forwarding {
            old_mask,
            old_actions,
        })
    }

    /// Sends forwarded signals to `target` (a pid; negative: a process group) from now on.
    pub fn set_target(&self, target: i32) {
        TARGET.store(target, Ordering::SeqCst);
    }

    /// Lets the forwarded signals in again (anything pending is delivered now).
    pub fn unblock(&self) -> Result<()> {
        self.old_mask.thread_set_mask().context("unblock signals")
    }

    /// Waits until a handled signal arrives, with the forwarded signals (and SIGCHLD) let in
    /// only while waiting, so none slips between a check and the wait.
    pub fn suspend(&self) {
        let mut mask = self.old_mask;
        for (signal, _) in &self.old_actions {
            mask.remove(*signal);
        }
        let _ = mask.suspend();
    }

    /// In a forked child, before exec: the caller's dispositions and mask, and SIGPIPE at its
    /// default (the Rust runtime ignores it, and an ignored signal stays ignored across exec).
    pub fn restore_in_child(&self) {
        for (signal, old) in &self.old_actions {
            // SAFETY: restoring the dispositions this process had before install.
            let _ = unsafe { sigaction(*signal, old) };
        }
        default_sigpipe();
        let _ = self.old_mask.thread_set_mask();
    }
}

/// Whether this process received SIGTERM, SIGINT, SIGHUP or SIGQUIT since it installed
/// forwarding.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Puts SIGPIPE back to its default disposition (see [`Forwarding::restore_in_child`]).
pub fn default_sigpipe() {
    let action = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installing the default disposition runs no code of ours in a handler.
    let _ = unsafe { sigaction(Signal::SIGPIPE, &action) };
}
