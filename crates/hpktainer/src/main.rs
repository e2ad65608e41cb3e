//! The `hpktainer` command: argument parsing and dispatch only.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use hpktainer::cli::{Cli, Commands, Passthrough, log_filter};
use hpktainer::error::{EXIT_SOFTWARE, Error};
use hpktainer::lifecycle::Context;
use hpktainer::settings::Settings;
use hpktainer::{admin, launch};

fn main() -> ExitCode {
    let cli = Cli::parse();
    hpk_net_daemon::init_logging(Some(&log_filter(cli.knobs.log_level.as_deref())));
    let settings = cli.knobs.settings();
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

fn fail(err: &Error) -> ExitCode {
    eprintln!("hpktainer: error: {err}");
    let code = err.exit_code();
    ExitCode::from(if code == 0 { EXIT_SOFTWARE } else { code })
}
