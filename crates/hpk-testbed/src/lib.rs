//! Support for hpktainer's privileged tests and its demo: network
//! namespaces the test owns, processes that die with their guard, and
//! verified TCP transfers. Never shipped.
//!
//! Everything made here is made by the test itself, named uniquely
//! (`hpkt-<tag>-<pid>-<n>`), and removed by its guard, so tests run side by
//! side and a failed assertion leaves nothing behind. Traffic only flows
//! between namespaces made here.

pub mod netns;
pub mod process;
pub mod transfer;

pub use netns::Netns;
pub use process::Proc;

/// Whether this run may create namespaces, bridges and taps: root, and a
/// usable `/dev/net/tun`. Privileged tests are `#[ignore]`d and run by
/// `cargo xtask test` with `--include-ignored` only when this holds.
pub fn privileged() -> bool {
    nix::unistd::geteuid().is_root() && std::path::Path::new("/dev/net/tun").exists()
}
