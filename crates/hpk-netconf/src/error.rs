//! The crate's error type: what failed, on which link, and the kernel's errno.

use std::{io, path::PathBuf};

use nix::errno::Errno;

/// The result type of every fallible operation in this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong in a netlink or namespace operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A link the operation relies on does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. "link hpk-bridge".
        what: String,
    },

    /// The object to create exists already.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What was to be created, e.g. "link hpk-bridge".
        what: String,
    },

    /// The kernel (or the netlink connection) refused a request.
    #[error("{op}: {}", describe(source))]
    Netlink {
        /// The operation, e.g. "set mtu 1450 on tap0".
        op: String,
        /// What rtnetlink reported; [`Error::errno`] extracts the errno.
        source: rtnetlink::Error,
    },

    /// Opening or entering a network namespace failed.
    #[error("enter network namespace {}: {source}", path.display())]
    Namespace {
        /// The namespace file, e.g. /proc/PID/ns/net.
        path: PathBuf,
        /// Why open() or setns() failed.
        source: io::Error,
    },

    /// A system call other than a netlink request failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// Why it failed.
        source: io::Error,
    },

    /// The closure run inside a namespace panicked.
    #[error("work inside network namespace {} panicked: {message}", path.display())]
    Panicked {
        /// The namespace the closure ran in.
        path: PathBuf,
        /// The panic message, when it was a string.
        message: String,
    },

    /// A string is not a MAC address.
    #[error("invalid mac address {input:?}: {reason}")]
    InvalidMac {
        /// The rejected text.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Error {
    /// The errno behind this error, so callers can tell EPERM, EEXIST and
    /// ENODEV apart. [`Error::AlreadyExists`] reports EEXIST and
    /// [`Error::NotFound`] ENODEV, as the kernel would have.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink { source, .. } => netlink_errno(source),
            Self::Namespace { source, .. } | Self::Io { source, .. } => source.raw_os_error(),
            Self::AlreadyExists { .. } => Some(libc::EEXIST),
            Self::NotFound { .. } => Some(libc::ENODEV),
            Self::Panicked { .. } | Self::InvalidMac { .. } => None,
        }
    }

    /// Wraps a failed rtnetlink request with the operation it served.
    pub(crate) fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        Self::Netlink {
            op: op.into(),
            source,
        }
    }
}

/// The positive errno of a kernel NACK, if that is what the error is.
pub(crate) fn netlink_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) if msg.raw_code() != 0 => Some(msg.raw_code().abs()),
        _ => None,
    }
}

/// Readable text for an rtnetlink error: the errno's meaning and name.
fn describe(err: &rtnetlink::Error) -> String {
    match netlink_errno(err) {
        Some(code) => errno_text(code),
        None => lowercase_first(&err.to_string()),
    }
}

/// "operation not permitted (EPERM)", with a hint where one helps.
fn errno_text(code: i32) -> String {
    let errno = Errno::from_raw(code);
    let hint = match errno {
        // The usual cause in a bubble: the namespace belongs to another user namespace.
        Errno::EPERM | Errno::EACCES => {
            ": permission denied, CAP_NET_ADMIN over this network namespace is needed"
        }
        _ => "",
    };
    format!("{} ({errno:?}){hint}", lowercase_first(errno.desc()))
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroI32;

    use rtnetlink::packet_core::ErrorMessage;

    use super::*;

    fn nack(errno: i32) -> rtnetlink::Error {
        let mut msg = ErrorMessage::default();
        msg.code = NonZeroI32::new(-errno);
        rtnetlink::Error::NetlinkError(msg)
    }

    #[test]
    fn error_can_cross_threads_and_into_anyhow() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
    }

    #[test]
    fn eperm_reads_as_a_permission_problem() {
        let err = Error::netlink("set mtu 1450 on tap0", nack(libc::EPERM));
        assert_eq!(err.errno(), Some(libc::EPERM));
        let text = err.to_string();
        assert!(text.starts_with("set mtu 1450 on tap0: operation not permitted (EPERM)"));
        assert!(text.contains("permission denied"), "{text}");
    }

    #[test]
    fn errno_of_each_variant() {
        let exists = Error::netlink("add bridge br0", nack(libc::EEXIST));
        assert_eq!(exists.errno(), Some(libc::EEXIST));
        assert_eq!(exists.to_string(), "add bridge br0: file exists (EEXIST)");
        let io = Error::Io {
            op: "x".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(io.errno(), Some(libc::ENOENT));
        let failed = Error::netlink("get links", rtnetlink::Error::RequestFailed);
        assert_eq!(failed.errno(), None);
        assert_eq!(failed.to_string(), "get links: a netlink request failed");
    }
}
