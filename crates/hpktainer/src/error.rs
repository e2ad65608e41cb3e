//! Failures hpktainer reports, each with its own exit status.
//!
//! A container's own status passes through unchanged, so hpktainer's
//! failures use the BSD `sysexits` numbers, which containers rarely return,
//! and 127 for a missing apptainer as a shell would. The table is in the
//! README and in `hpktainer --help`.

use std::path::PathBuf;

use thiserror::Error;

use crate::apptainer_args::ArgsError;
use crate::state::StateError;
use crate::subnet_env::SubnetEnvError;

/// Exit status: the command line was wrong (clap uses the same).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: subnet.env is malformed or nonsensical.
pub const EXIT_BAD_SUBNET_ENV: u8 = 65;
/// Exit status: subnet.env does not exist.
pub const EXIT_NO_SUBNET_ENV: u8 = 66;
/// Exit status: the CNI plugin is missing or failed.
pub const EXIT_IPAM: u8 = 69;
/// Exit status: an unexpected internal failure.
pub const EXIT_SOFTWARE: u8 = 70;
/// Exit status: the kernel refused a network operation.
pub const EXIT_OS: u8 = 71;
/// Exit status: the subnet has no free address.
pub const EXIT_EXHAUSTED: u8 = 75;
/// Exit status: missing privilege (CAP_NET_ADMIN, /dev/net/tun).
pub const EXIT_NO_PERMISSION: u8 = 77;
/// Exit status: the environment is configured in a way hpktainer cannot
/// work with (a non-bridge holds the bridge name, a state record from a
/// newer hpktainer, a socket path too long).
pub const EXIT_CONFIG: u8 = 78;
/// Exit status: the apptainer (or hpk-net-daemon) program is missing.
pub const EXIT_NOT_FOUND: u8 = 127;

/// Everything that can stop hpktainer before or around the container.
#[derive(Debug, Error)]
pub enum Error {
    /// The user's apptainer arguments cannot be used.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// subnet.env is missing or wrong.
    #[error(transparent)]
    SubnetEnv(#[from] SubnetEnvError),
    /// host-local is missing, failed, or the subnet is full.
    #[error("address allocation failed: {0}")]
    Ipam(#[from] hpk_ipam::Error),
    /// The subnet has no free address.
    #[error("subnet {subnet} is full: no free address for another container ({source})")]
    Exhausted {
        subnet: ipnet::Ipv4Net,
        source: hpk_ipam::Error,
    },
    /// A netlink operation failed.
    #[error(transparent)]
    Netconf(#[from] hpk_netconf::Error),
    /// The state directory could not be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// A program hpktainer runs is not there.
    #[error("{program} not found{hint}")]
    ProgramNotFound { program: String, hint: String },
    /// The bridge name is held by a link that is not a bridge.
    #[error(
        "{name} exists but is a {kind} link, not a bridge; remove it or choose another name with --bridge"
    )]
    NotABridge { name: String, kind: String },
    /// A path does not fit the kernel's limits.
    #[error("{what} {path} is too long ({len} bytes, at most {max}); choose a shorter --run-dir")]
    PathTooLong {
        what: &'static str,
        path: PathBuf,
        len: usize,
        max: usize,
    },
    /// Some other step failed; `op` says which.
    #[error("{op}: {reason}")]
    Step { op: String, reason: String },
}

impl Error {
    /// The exit status this failure ends hpktainer with.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Args(_) => EXIT_USAGE,
            Error::SubnetEnv(SubnetEnvError::NotFound { .. }) => EXIT_NO_SUBNET_ENV,
            Error::SubnetEnv(_) => EXIT_BAD_SUBNET_ENV,
            Error::Ipam(_) => EXIT_IPAM,
            Error::Exhausted { .. } => EXIT_EXHAUSTED,
            Error::Netconf(err) if is_permission(err.errno()) => EXIT_NO_PERMISSION,
            Error::Netconf(_) => EXIT_OS,
            Error::State(StateError::NewerSchema { .. }) => EXIT_CONFIG,
            Error::State(_) => EXIT_OS,
            Error::ProgramNotFound { .. } => EXIT_NOT_FOUND,
            Error::NotABridge { .. } | Error::PathTooLong { .. } => EXIT_CONFIG,
            Error::Step { .. } => EXIT_SOFTWARE,
        }
    }

    /// A failed step, described by what was being done.
    pub fn step(op: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::Step {
            op: op.into(),
            reason: reason.to_string(),
        }
    }
}

fn is_permission(errno: Option<i32>) -> bool {
    matches!(errno, Some(libc::EPERM | libc::EACCES))
}

/// Result with hpktainer's error.
pub type Result<T> = std::result::Result<T, Error>;
