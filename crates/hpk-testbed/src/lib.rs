//! Support for hpktainer's privileged tests and its demo: network
//! namespaces the test owns, processes that die with their guard,
//! verified TCP transfers, the leak detector ([`leaks`]) and the measured
//! facts behind the reliability summary ([`report`]). Never shipped.
//!
//! Everything made here is made by the test itself, named uniquely
//! (`hpkt-<tag>-<pid>-<n>`), and removed by its guard, so tests run side by
//! side and a failed assertion leaves nothing behind. Traffic only flows
//! between namespaces made here.

pub mod frames;
pub mod image;
pub mod leaks;
pub mod netns;
pub mod overlay;
pub mod process;
pub mod relay;
pub mod report;
pub mod scenario;
pub mod transfer;

pub use netns::Netns;
pub use process::Proc;

/// Whether this run may create namespaces, bridges and taps: root, and a
/// usable `/dev/net/tun`. Privileged tests are `#[ignore]`d and run by
/// `cargo xtask test` with `--include-ignored` only when this holds.
pub fn privileged() -> bool {
    nix::unistd::geteuid().is_root() && std::path::Path::new("/dev/net/tun").exists()
}

/// The workspace binary `name`, built alongside the running test or xtask executable: tests
/// run from `<target>/<triple>/<profile>/deps/`, binaries sit one level up; xtask runs from
/// the profile directory itself. Panics if the binary has not been built.
pub fn bin_path(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("locate the running executable");
    let mut dir = exe
        .parent()
        .expect("executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first: cargo build --workspace --bins (cargo xtask test does)",
        path.display()
    );
    path
}
