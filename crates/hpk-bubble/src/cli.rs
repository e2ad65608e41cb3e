//! hpk-bubble's command line, as a library so `cargo xtask dist` can write
//! man pages and shell completions from the same definition.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::Role;
use crate::plan::DEFAULT_VXLAN_PORT;

/// Starts and stops bubbles: rootless Apptainer instances given outside
/// connectivity by slirp4netns, with the port forwards flanneld and the
/// controller need.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter, e.g. `debug` (default: RUST_LOG, else info).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Where bubbles keep their files [default: $XDG_RUNTIME_DIR/hpk-bubble,
    /// else /tmp/hpk-bubble-UID].
    #[arg(long, global = true, env = "HPK_BUBBLE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// The apptainer binary.
    #[arg(
        long,
        global = true,
        env = "HPK_BUBBLE_APPTAINER",
        default_value = "apptainer"
    )]
    pub apptainer: PathBuf,

    #[command(subcommand)]
    pub command: Cmd,
}

/// `--role` on the command line.
#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Controller,
    Node,
}

/// The actions.
#[derive(Subcommand)]
pub enum Cmd {
    /// Start bubble ID and stay in the foreground; SIGINT or SIGTERM stops it.
    ///
    /// Prints `bubble ID ready: …` on stdout once the instance runs,
    /// slirp4netns is attached and every forward is in place.
    Start {
        /// The bubble's number: names the instance (hpk-bubble-ID) and, without
        /// --cidr, its network 10.0.(ID+1).0/24 (so 0 to 254).
        #[arg(default_value_t = 1)]
        id: u32,
        /// The controller runs etcd; TCP 6443 and 2379 are forwarded to it.
        #[arg(long, value_enum, default_value = "node")]
        role: RoleArg,
        /// The controller's host address (default on the controller: --host-ip).
        #[arg(long)]
        etcd_ip: Option<Ipv4Addr>,
        /// This host's address as other nodes reach it [default: the source
        /// address of the route towards --etcd-ip, else the default gateway].
        #[arg(long)]
        host_ip: Option<Ipv4Addr>,
        /// The bubble image.
        #[arg(long, env = "HPK_BUBBLE_IMAGE", default_value = "hpk-bubble.sif")]
        image: OsString,
        /// The slirp network instead of 10.0.(ID+1).0/24: an IPv4 network
        /// address with a prefix of /8 to /24 (DNS at .3, bubble at .100).
        #[arg(long)]
        cidr: Option<String>,
        /// flanneld's VXLAN port, forwarded over UDP.
        #[arg(long, default_value_t = DEFAULT_VXLAN_PORT)]
        vxlan_port: u16,
        /// More binds for the instance, SRC[:DST[:ro|rw]] (repeatable).
        #[arg(long)]
        bind: Vec<String>,
        /// The slirp4netns binary.
        #[arg(long, env = "HPK_BUBBLE_SLIRP4NETNS", default_value = "slirp4netns")]
        slirp4netns: PathBuf,
        /// Arguments for the image's runscript (e.g. the entrypoint).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Stop bubble ID (its foreground start, or what a dead one left).
    Stop {
        #[arg(default_value_t = 1)]
        id: u32,
    },
    /// List the bubbles in the state directory.
    List,
    /// Open a shell in bubble ID (apptainer shell instance://hpk-bubble-ID).
    Shell {
        #[arg(default_value_t = 1)]
        id: u32,
    },
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Controller => Role::Controller,
            RoleArg::Node => Role::Node,
        }
    }
}

/// The clap definition of `hpk-bubble`, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}
