//! hpktainer's command line, as a library so `cargo xtask dist` can write
//! man pages and shell completions from the same definition.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use hpk_net_daemon::veth::DataPathMode;

use crate::settings::Settings;

const EXIT_CODES: &str = "\
Exit status: the container's own status (128+n when killed by signal n), or
  2 usage error (including the user's own network options), 65 malformed
  subnet.env, 66 no subnet.env, 69 host-local missing or failing, 70 internal
  error, 71 a network operation failed, 75 subnet full, 77 no permission
  (CAP_NET_ADMIN, /dev/net/tun), 78 configuration conflict, 127 apptainer or
  hpk-net-daemon not found.";

/// Runs Apptainer containers with their own address on the bubble's Flannel subnet.
///
/// hpktainer's own options come before the action; everything after the
/// action belongs to apptainer: hpktainer [OPTIONS] run [APPTAINER OPTIONS] IMAGE [ARGS]
#[derive(Parser)]
#[command(version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub knobs: Knobs,

    #[command(subcommand)]
    pub command: Commands,
}

/// hpktainer's own options: every path and program it uses.
#[derive(Args)]
pub struct Knobs {
    /// flanneld's subnet file.
    #[arg(
        long,
        env = "HPKTAINER_SUBNET_ENV",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_env: PathBuf,
    /// Runtime state and sockets (keep it short: socket paths must fit 107 bytes).
    #[arg(long, env = "HPKTAINER_RUN_DIR", default_value = "/run/hpktainer")]
    pub run_dir: PathBuf,
    /// host-local's data directory.
    #[arg(
        long,
        env = "HPKTAINER_CNI_DATA_DIR",
        default_value = "/var/lib/cni/networks"
    )]
    pub cni_data_dir: PathBuf,
    /// CNI plugin directories, searched before /opt/cni/bin, /usr/libexec/cni, /usr/lib/cni.
    #[arg(long, env = "CNI_PATH")]
    pub cni_path: Option<OsString>,
    /// The apptainer program.
    #[arg(long, env = "HPKTAINER_APPTAINER", default_value = "apptainer")]
    pub apptainer: OsString,
    /// The bridge the containers join.
    #[arg(long, env = "HPKTAINER_BRIDGE", default_value = "hpk-bridge")]
    pub bridge: String,
    /// hpk-net-daemon (default: beside hpktainer, else on PATH).
    #[arg(long, env = "HPKTAINER_NET_DAEMON")]
    pub net_daemon: Option<PathBuf>,
    /// Data path: veth pair on the bridge (`veth`), tap + userspace relay
    /// (`relay`), or veth where the kernel allows it, else relay (`auto`).
    #[arg(
        long,
        env = "HPKTAINER_DATA_PATH",
        value_enum,
        default_value_t = DataPathMode::Auto
    )]
    pub data_path: DataPathMode,
    /// Log filter, e.g. `info` or `hpktainer=debug` (default: RUST_LOG, else warn).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// The actions.
#[derive(Subcommand)]
pub enum Commands {
    /// apptainer run, with the container's own overlay address.
    Run(Passthrough),
    /// apptainer exec, with the container's own overlay address.
    Exec(Passthrough),
    /// apptainer shell, with the container's own overlay address.
    Shell(Passthrough),
    /// apptainer instance start|run|stop, with the instance's own overlay address.
    Instance(Passthrough),
    /// List the containers hpktainer wired, with their addresses and counters.
    Ps {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Reclaim what dead containers left (addresses, taps, sockets, records).
    Gc {
        /// Also remove the bridge and hpktainer's NAT rule once no container is left.
        #[arg(long)]
        all: bool,
    },
}

/// Everything after the action, handed to apptainer as it is.
#[derive(Args)]
pub struct Passthrough {
    /// [APPTAINER OPTIONS] IMAGE [ARGS]
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<OsString>,
}

impl Knobs {
    /// The settings these options describe.
    pub fn settings(&self) -> Settings {
        Settings {
            subnet_env: self.subnet_env.clone(),
            run_dir: self.run_dir.clone(),
            cni_data_dir: self.cni_data_dir.clone(),
            cni_path: self.cni_path.clone(),
            apptainer: self.apptainer.clone(),
            bridge: self.bridge.clone(),
            net_daemon: self.net_daemon.clone(),
            relay_log_level: log_filter(self.log_level.as_deref()),
            data_path: self.data_path,
        }
    }
}

/// The log filter: the flag, else RUST_LOG, else warn (a wrapper around a
/// container should be quiet unless asked).
pub fn log_filter(flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "warn".into())
}

/// The clap definition of `hpktainer`, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}
