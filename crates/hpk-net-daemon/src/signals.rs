//! SIGTERM and SIGINT for the relay's server and command-less client,
//! caught from the moment they are installed: a process that reports ready
//! may be told to stop right away, before it reaches its main loop.

use anyhow::{Context, Result};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The two stop signals, installed together.
pub struct StopSignals {
    pub terminate: Signal,
    pub interrupt: Signal,
}

impl StopSignals {
    /// Installs both handlers (the default action would end the process
    /// without its clean-up).
    pub fn install() -> Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("install SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt()).context("install SIGINT handler")?,
        })
    }
}
