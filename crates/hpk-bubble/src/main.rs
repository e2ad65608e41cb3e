//! The `hpk-bubble` command: argument parsing and dispatch only.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use hpk_bubble::cli::{Cli, Cmd};
use hpk_bubble::plan::{Request, instance_name};
use hpk_bubble::state::StateDir;
use hpk_bubble::{Plan, apptainer, bubble, hostip};

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
                role: role.into(),
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
