//! hpk-net-daemon: relays Ethernet frames between a tap device and a UNIX
//! stream socket, as a server beside the bridge or as a client inside the
//! container.
//!
//! The wire format is a 4-byte big-endian length before every frame (see
//! [`codec`]); a hello at every connection ([`hello`], [`negotiate`]) may
//! add a virtio-net header to each frame so 64 KiB super-frames and
//! unfinished checksums cross intact, while plain peers keep the baseline. The server owns the host-side tap and serves one peer at a
//! time, newest wins ([`server`]); the client configures `tap0` inside the
//! container, keeps the connection up and can run the user's command
//! ([`client`]).

pub mod bridge_guard;
pub mod child;
pub mod cli;
pub mod client;
pub mod codec;
pub mod fastpath;
pub mod filter;
pub mod hello;
pub mod killpoint;
pub mod negotiate;
pub mod relay;
pub mod server;
pub mod signals;
pub mod stats;
pub mod tap;
pub mod veth;
pub mod wiring;

/// Installs the stderr logger: `filter` if given, else `RUST_LOG`, else info.
///
/// Filters use `RUST_LOG`'s `target=level` syntax without span or regex
/// directives: tracing-subscriber's `Targets` rather than `EnvFilter`, which
/// would link a regex engine into a daemon that runs once per container.
pub fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let directives = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let targets = directives.parse::<Targets>().unwrap_or_else(|err| {
        eprintln!("ignoring log filter {directives:?} ({err}); logging at info");
        Targets::new().with_default(tracing::Level::INFO)
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::registry()
        .with(targets)
        .with(fmt)
        .init();
}
