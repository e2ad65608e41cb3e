//! The `hpktainer` command: argument parsing and dispatch only.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hpktainer::error::{EXIT_SOFTWARE, Error};
use hpktainer::lifecycle::Context;
use hpktainer::settings::Settings;
use hpktainer::{admin, launch};

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
struct Cli {
    #[command(flatten)]
    knobs: Knobs,

    #[command(subcommand)]
    command: Commands,
}

#[derive(Args)]
struct Knobs {
    /// flanneld's subnet file.
    #[arg(
        long,
        env = "HPKTAINER_SUBNET_ENV",
        default_value = "/run/flannel/subnet.env"
    )]
    subnet_env: PathBuf,
    /// Runtime state and sockets (keep it short: socket paths must fit 107 bytes).
    #[arg(long, env = "HPKTAINER_RUN_DIR", default_value = "/run/hpktainer")]
    run_dir: PathBuf,
    /// host-local's data directory.
    #[arg(
        long,
        env = "HPKTAINER_CNI_DATA_DIR",
        default_value = "/var/lib/cni/networks"
    )]
    cni_data_dir: PathBuf,
    /// CNI plugin directories, searched before /opt/cni/bin, /usr/libexec/cni, /usr/lib/cni.
    #[arg(long, env = "CNI_PATH")]
    cni_path: Option<OsString>,
    /// The apptainer program.
    #[arg(long, env = "HPKTAINER_APPTAINER", default_value = "apptainer")]
    apptainer: OsString,
    /// The bridge the containers join.
    #[arg(long, env = "HPKTAINER_BRIDGE", default_value = "hpk-bridge")]
    bridge: String,
    /// hpk-net-daemon (default: beside hpktainer, else on PATH).
    #[arg(long, env = "HPKTAINER_NET_DAEMON")]
    net_daemon: Option<PathBuf>,
    /// Log filter, e.g. `info` or `hpktainer=debug` (default: RUST_LOG, else warn).
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
}

#[derive(Subcommand)]
enum Commands {
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
struct Passthrough {
    /// [APPTAINER OPTIONS] IMAGE [ARGS]
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    hpk_net_daemon::init_logging(Some(&log_filter(cli.knobs.log_level.as_deref())));
    let settings = settings(&cli.knobs);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&Error::step("start the async runtime", err)),
    };
    match runtime.block_on(dispatch(settings, cli.command)) {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(err) => fail(&err),
    }
}

async fn dispatch(settings: Settings, command: Commands) -> hpktainer::Result<i32> {
    let action = |word: &str, rest: Passthrough| {
        let mut args = vec![OsString::from(word)];
        args.extend(rest.args);
        args
    };
    match command {
        Commands::Run(rest) => launch::run_action(settings, &action("run", rest)).await,
        Commands::Exec(rest) => launch::run_action(settings, &action("exec", rest)).await,
        Commands::Shell(rest) => launch::run_action(settings, &action("shell", rest)).await,
        Commands::Instance(rest) => launch::run_action(settings, &action("instance", rest)).await,
        Commands::Ps { json } => {
            let state = hpktainer::state::StateDir::open(&settings.run_dir)?;
            let entries = admin::ps_entries(&state).await?;
            admin::print_ps(&entries, json).map_err(|err| Error::step("print", err))?;
            Ok(0)
        }
        Commands::Gc { all } => {
            let ctx = Context::open(settings)?;
            let report = admin::gc(&ctx, all).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("report serialises")
            );
            Ok(0)
        }
    }
}

fn settings(knobs: &Knobs) -> Settings {
    Settings {
        subnet_env: knobs.subnet_env.clone(),
        run_dir: knobs.run_dir.clone(),
        cni_data_dir: knobs.cni_data_dir.clone(),
        cni_path: knobs.cni_path.clone(),
        apptainer: knobs.apptainer.clone(),
        bridge: knobs.bridge.clone(),
        net_daemon: knobs.net_daemon.clone(),
        relay_log_level: log_filter(knobs.log_level.as_deref()),
    }
}

/// The log filter: the flag, else RUST_LOG, else warn (a wrapper around a
/// container should be quiet unless asked).
fn log_filter(flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "warn".into())
}

fn fail(err: &Error) -> ExitCode {
    eprintln!("hpktainer: error: {err}");
    let code = err.exit_code();
    ExitCode::from(if code == 0 { EXIT_SOFTWARE } else { code })
}
