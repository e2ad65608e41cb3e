//! The netlink socket every operation goes through.

use std::io;

use crate::{Error, Result};

/// A netlink socket bound to the network namespace current when it was
/// opened (the socket stays bound there even if the thread later moves).
///
/// Clones share the socket. Its connection task runs on the tokio runtime
/// that was current at [`Netlink::open`] and ends with that runtime.
#[derive(Clone, Debug)]
pub struct Netlink {
    pub(crate) handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    ///
    /// Must be called inside a tokio runtime with IO enabled (spawns the
    /// rtnetlink connection task on it).
    pub fn open() -> Result<Self> {
        // Checked first: spawning outside a runtime would panic.
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| Error::Io {
            op: "open netlink socket".into(),
            source: io::Error::other(format!("no tokio runtime: {e}")),
        })?;

        let (connection, handle, _) = rtnetlink::new_connection().map_err(|source| Error::Io {
            op: "open netlink socket".into(),
            source,
        })?;
        runtime.spawn(connection);
        Ok(Self { handle })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_outside_a_runtime_is_an_error_not_a_panic() {
        let err = Netlink::open().unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("open netlink socket: no tokio runtime")
        );
    }
}
