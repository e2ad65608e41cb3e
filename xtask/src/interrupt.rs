//! Ctrl-C (and SIGTERM) during a bench or the demo: remembered, so the run
//! unwinds through its guards (processes killed by pid, namespaces deleted)
//! instead of dying with everything left in place.
//!
//! The children share the terminal's process group, so they get the SIGINT
//! too and end; the bench notices at its next check and stops.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Replaces the default SIGINT and SIGTERM actions (end the process at once).
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, on_interrupt as *const () as libc::sighandler_t);
        }
    }
}

/// Fails once Ctrl-C has been pressed.
pub fn check() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}
