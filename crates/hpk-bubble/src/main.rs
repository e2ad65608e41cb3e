//! The `hpk-bubble` command: argument parsing and dispatch only.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use hpk_bubble::plan::{DEFAULT_VXLAN_PORT, Request, instance_name};
use hpk_bubble::state::StateDir;
use hpk_bubble::{Plan, Role, apptainer, bubble, hostip};

/// Starts and stops bubbles: rootless Apptainer instances given outside
/// connectivity by slirp4netns, with the port forwards flanneld and the
/// controller need.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    /// Log filter, e.g. `debug` (default: RUST_LOG, else info).
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,

    /// Where bubbles keep their files [default: $XDG_RUNTIME_DIR/hpk-bubble,
    /// else /tmp/hpk-bubble-UID].
    #[arg(long, global = true, env = "HPK_BUBBLE_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// The apptainer binary.
    #[arg(
        long,
        global = true,
        env = "HPK_BUBBLE_APPTAINER",
        default_value = "apptainer"
    )]
    apptainer: PathBuf,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Controller,
    Node,
}

#[derive(Subcommand)]
enum Cmd {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    hpk_bubble::init_logging(cli.log_level.as_deref());
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hpk-bubble: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let state = StateDir::new(cli.state_dir);
    match cli.command {
        Cmd::Start {
            id,
            role,
            etcd_ip,
            host_ip,
            image,
            cidr,
            vxlan_port,
            bind,
            slirp4netns,
            args,
        } => {
            let request = Request {
                id,
                role: match role {
                    RoleArg::Controller => Role::Controller,
                    RoleArg::Node => Role::Node,
                },
                etcd_ip,
                host_ip,
                image,
                cidr,
                vxlan_port,
                binds: bind,
                args,
                apptainer: cli.apptainer,
                slirp4netns,
            };
            let plan = Plan::resolve(request, hostip::detect).context("check the request")?;
            bubble::start(&plan, &state).with_context(|| format!("bubble {id}"))
        }
        Cmd::Stop { id } => {
            bubble::stop(&state, id, &cli.apptainer).with_context(|| format!("stop bubble {id}"))
        }
        Cmd::List => {
            print!("{}", bubble::list(&state)?);
            Ok(())
        }
        Cmd::Shell { id } => Err(apptainer::shell(&cli.apptainer, &instance_name(id)).into()),
    }
}
