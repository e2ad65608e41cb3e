//! The CNI protocol towards the `host-local` IPAM plugin, written on serde.
//!
//! # Theory of operation
//!
//! A CNI plugin is a program run once per operation. The operation and its
//! arguments travel in environment variables (`CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_PATH`), the network
//! configuration ("netconf") as JSON on stdin. The plugin prints a result
//! (ADD), nothing (DEL, CHECK) or a CNI error object
//! `{cniVersion, code, msg, details}` and exits non-zero on failure. The
//! variables are set on the child alone, never on this process, so calls
//! from several threads do not disturb each other.
//!
//! `host-local` usually runs on the `ipam` section of a main plugin's
//! netconf. Here it runs directly, on a netconf whose `ipam` section holds
//! one range (subnet, gateway, optional start and end) and the data
//! directory. host-local keeps one file per allocated address in
//! `<dataDir>/<network name>/`, holding the container id and interface
//! name, and a lock file that serialises concurrent callers: it needs write
//! access to that directory and no privilege.
//!
//! host-local never enters a network namespace, yet insists that
//! `CNI_NETNS` is set for ADD and CHECK, so a placeholder path goes there.
//! `CNI_PATH` is the plugin's own directory: it must be set and host-local
//! delegates to nobody.
//!
//! The version is chosen once: [`HostLocal::at`] runs `VERSION` and keeps
//! the newest version both sides speak ([`SUPPORTED_VERSIONS`]). Results
//! differ a little between versions (0.3.x and 0.4.0 tag each address with
//! `"version"`); [`AddResult`] reads both.
//!
//! DEL and CHECK find an allocation by container id *and* interface name, so
//! both must be those of the ADD. DEL of something never allocated
//! succeeds, so teardown can be repeated. From 0.4.0 on the ADD result goes
//! back as `prevResult`: [`AddResult`] keeps the plugin's JSON as it came,
//! and DEL and CHECK speak the version that result was written in. CHECK
//! exists only from 0.4.0 on.
//!
//! Every call is bounded by a timeout (30 s unless changed): a plugin that
//! hangs, say on a data directory lock held by a stuck peer, is killed and
//! reaped, and the caller gets [`Error::Timeout`].

mod config;
mod error;
mod exec;
mod plugin;
mod result;
mod validate;
mod version;

pub use config::IpamConfig;
pub use error::{Error, Result};
pub use plugin::{DEFAULT_DIRS, HostLocal};
pub use result::{AddResult, Dns, IpConfig, Route};
pub use validate::{validate_container_id, validate_ifname, validate_network_name};
pub use version::SUPPORTED_VERSIONS;
