//! hpk-bubble's errors: what failed, what it was doing, and where useful
//! what to do about it.

use std::io;

/// Everything the library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request does not make sense (bad ID, CIDR, missing option).
    #[error("{0}")]
    Invalid(String),

    /// A system call or file operation failed.
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },

    /// apptainer refused or answered something unexpected.
    #[error("apptainer: {0}")]
    Apptainer(String),

    /// slirp4netns failed to start or its API refused a request.
    #[error("slirp4netns: {0}")]
    Slirp(String),

    /// Netlink, while looking for the host's address.
    #[error("find the host address: {0}")]
    Netlink(#[from] hpk_netconf::Error),

    /// A bubble with this ID is already running.
    #[error(
        "bubble {id} is already running (hpk-bubble pid {pid}); stop it first: hpk-bubble stop {id}"
    )]
    Running { id: u32, pid: i32 },

    /// No bubble with this ID is known.
    #[error("no bubble {0} in the state directory; see hpk-bubble list")]
    Unknown(u32),

    /// Teardown kept going past failures; these are all of them.
    #[error("teardown incomplete: {}", .0.join("; "))]
    Teardown(Vec<String>),
}

impl Error {
    /// An [`Error::Io`] for `op`.
    pub fn io(op: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            op: op.into(),
            source,
        }
    }
}

/// The library's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
