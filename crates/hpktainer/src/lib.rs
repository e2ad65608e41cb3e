//! hpktainer: starts nested Apptainer containers with their own overlay
//! address inside a bubble.
//!
//! One run: read flannel's [`subnet_env`], make sure the bridge and NAT are
//! in place ([`bridge`], [`nat`]), lease an address from host-local
//! ([`lifecycle`]), start the relay that owns the container's tap
//! ([`relay_server`]), run apptainer with the client first ([`launch`],
//! [`apptainer_args`]), and release everything at the end. [`state`] keeps
//! a crash-safe record of each container for `ps` and `gc` ([`admin`]).

pub mod admin;
pub mod apptainer_args;
pub mod bridge;
pub mod cli;
pub mod error;
pub mod launch;
pub mod lifecycle;
pub mod nat;
pub mod relay_server;
pub mod settings;
pub mod state;
pub mod subnet_env;

pub use error::{Error, Result};
