//! hpk-bubble: starts a *bubble* — a rootless Apptainer instance
//! (`--fakeroot --net --network none`) given outside connectivity by
//! slirp4netns — keeps it in the foreground and tears it down again.
//!
//! Theory of operation. `start` validates everything first ([`plan`]), then
//! applies in order, remembering each step so a failure or a signal undoes
//! them in reverse ([`bubble`]): the state directory with the bubble's
//! resolv.conf and record ([`state`]), the instance ([`apptainer`]),
//! slirp4netns attached to the instance's namespaces, then the port forwards
//! through slirp's API socket ([`slirp`]). slirp4netns is tied to hpk-bubble
//! by `--exit-fd`, so it ends with hpk-bubble however hpk-bubble ends; the
//! instance has no such tie, which is why `stop` and a later `start` clear
//! what a killed hpk-bubble left behind.

pub mod apptainer;
pub mod bubble;
pub mod cli;
pub mod error;
pub mod hostip;
pub mod plan;
pub mod slirp;
pub mod state;
pub mod sys;

pub use error::{Error, Result};
pub use plan::{Plan, Role, SlirpNet};

/// Sets up logging to stderr, the same way as every hpktainer binary.
pub use hpk_net_daemon::init_logging;
