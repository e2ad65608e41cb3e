//! Netlink operations hpktainer needs: links, bridges, addresses, routes, namespaces.
//!
//! Theory of operation: a [`Netlink`] wraps one rtnetlink socket. A netlink
//! socket stays bound to the network namespace that was current on the
//! opening thread, so the way to work inside another namespace is to open the
//! socket there: [`netns::run_async_in`] runs a closure on a fresh OS thread
//! that has entered the namespace, inside its own single-threaded tokio
//! runtime, and the caller's threads never move. Every operation names what
//! it did and on which link when it fails, and keeps the kernel's errno
//! reachable through [`Error::errno`].

mod address;
mod error;
mod link;
mod mac;
pub mod netns;
mod route;
mod socket;

pub use error::{Error, Result};
pub use ipnet::{IpNet, Ipv4Net};
pub use link::LinkInfo;
pub use mac::MacAddr;
pub use socket::Netlink;
