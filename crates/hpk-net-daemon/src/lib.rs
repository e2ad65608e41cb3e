//! hpk-net-daemon: relays Ethernet frames between a tap device and a UNIX
//! stream socket, as a server beside the bridge or as a client inside the
//! container.
//!
//! The wire format is a 4-byte big-endian length before every frame (see
//! [`codec`]). The server owns the host-side tap and serves one peer at a
//! time, newest wins ([`server`]); the client configures `tap0` inside the
//! container, keeps the connection up and can run the user's command
//! ([`client`]).

pub mod child;
pub mod client;
pub mod codec;
pub mod relay;
pub mod server;
pub mod stats;
pub mod tap;

/// Installs the stderr logger: `filter` if given, else `RUST_LOG`, else info.
pub fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(directives) => EnvFilter::new(directives),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
