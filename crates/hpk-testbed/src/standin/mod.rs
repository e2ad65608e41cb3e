//! The stand-in apptainer's parts (see the binary's documentation for what it is and is not).

pub mod cli;
pub mod container;
pub mod environ;
pub mod holder;
pub mod instance;
pub mod pflag;
pub mod record;
pub mod rootfs;
pub mod signals;
pub mod sys;

use std::fmt;
use std::sync::atomic::{AtomicI8, Ordering};

static VERBOSITY: AtomicI8 = AtomicI8::new(0);

/// Sets how much goes to stderr: -1 quiet, 0 normal, 1 verbose, 2 debug.
pub fn set_verbosity(level: cli::Verbosity) {
    VERBOSITY.store(level, Ordering::Relaxed);
}

fn say(level: i8, tag: &str, args: fmt::Arguments) {
    if VERBOSITY.load(Ordering::Relaxed) >= level {
        eprintln!("{tag:<8} apptainer-standin: {args}");
    }
}

/// A step, shown with `-d`.
pub fn debug(args: fmt::Arguments) {
    say(2, "DEBUG", args);
}

/// Lifecycle news, as apptainer's INFO lines; silenced by `-q`.
pub fn info(args: fmt::Arguments) {
    say(0, "INFO:", args);
}

/// Something the user should know; silenced by `-q`.
pub fn warn(args: fmt::Arguments) {
    say(0, "WARNING:", args);
}
