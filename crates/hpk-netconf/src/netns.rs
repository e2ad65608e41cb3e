//! Running code inside another network namespace without moving the caller.
//!
//! `setns` changes only the calling thread, so each call here starts a fresh
//! OS thread, enters the namespace on it, runs the closure and lets the
//! thread end. A netlink socket opened on that thread stays bound to the
//! namespace; tokio workers never leave theirs.

use std::os::fd::{AsFd, BorrowedFd};
use std::{any::Any, fs::File, future::Future, io, path::Path, thread};

use nix::sched::{CloneFlags, setns};

use crate::{Error, Result};

/// Runs `f` on a fresh dedicated OS thread that has setns()'d into the
/// network namespace at `path` (e.g. /proc/PID/ns/net or /run/netns/NAME);
/// the caller's threads never move. Returns f's value; errors if open/setns
/// fails; a panic in f is propagated as [`Error::Panicked`].
///
/// Blocks the calling thread until `f` returns: from async code, call it
/// through `tokio::task::spawn_blocking`.
pub fn run_in<F, T>(path: &Path, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let namespace = File::open(path).map_err(|source| namespace_error(path, source))?;
    run_in_file(path, namespace.as_fd(), f)
}

/// Same as [`run_in`] for a namespace already open as `fd` (for example one
/// received over a UNIX socket); `label` names it in errors.
pub fn run_in_fd<F, T>(label: &Path, fd: BorrowedFd<'_>, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    run_in_file(label, fd, f)
}

/// Same as [`run_async_in`] for a namespace already open as `fd`.
pub fn run_async_in_fd<F, Fut, T>(label: &Path, fd: BorrowedFd<'_>, f: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
    T: Send,
{
    run_in_file(label, fd, move || block_on_fresh_runtime(f))?
}

fn run_in_file<F, T>(path: &Path, namespace: BorrowedFd<'_>, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let joined = thread::scope(|scope| {
        let worker = thread::Builder::new()
            .name("hpk-netns".into())
            .spawn_scoped(scope, move || -> Result<T> {
                setns(namespace, CloneFlags::CLONE_NEWNET)
                    .map_err(|errno| namespace_error(path, errno.into()))?;
                Ok(f())
            })
            .map_err(|source| Error::Io {
                op: format!("start a thread for network namespace {}", path.display()),
                source,
            })?;
        Ok(worker.join())
    })?;

    joined.map_err(|panic| Error::Panicked {
        path: path.to_path_buf(),
        message: panic_message(panic.as_ref()),
    })?
}

/// Same as [`run_in`], but runs the future `f` returns inside a new
/// current_thread tokio runtime (all drivers enabled) on that thread, so `f`
/// can use [`crate::Netlink::open`] bound to that namespace.
pub fn run_async_in<F, Fut, T>(path: &Path, f: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
    T: Send,
{
    run_in(path, move || block_on_fresh_runtime(f))?
}

fn block_on_fresh_runtime<F, Fut, T>(f: F) -> Result<T>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            op: "start a tokio runtime inside a network namespace".into(),
            source,
        })?;
    Ok(runtime.block_on(f()))
}

fn namespace_error(path: &Path, source: io::Error) -> Error {
    Error::Namespace {
        path: path.to_path_buf(),
        source,
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        return (*text).to_string();
    }
    panic
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_else(|| "non-text panic payload".into())
}
