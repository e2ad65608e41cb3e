//! The actions: wire a container's network, run apptainer, release.
//!
//! `run`, `exec` and `shell` become an `apptainer exec` that starts the
//! static relay client first, which configures `tap0` and then starts the
//! user's runscript, command or shell; hpktainer supervises apptainer and
//! releases everything when it ends, whatever way it ends. Instances cannot
//! be given another first command, so the client is attached beside a
//! started instance with `apptainer exec instance://NAME` (see
//! [`crate::apptainer_args`] for the reasoning).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use hpk_net_daemon::child::{Supervisor, die_with_parent};
use hpk_net_daemon::killpoint;
use tracing::{info, warn};

use crate::apptainer_args::{self, Action, Invocation};
use crate::error::{Error, Result};
use crate::lifecycle::{self, Attachment, Context};
use crate::settings::{CONTAINER_CLIENT, CONTAINER_SOCKET_DIR, SOCKET_NAME, Settings};
use crate::state::{ProcessRef, Record, RecordOrError};

/// Runs one apptainer action (`args` starts with the action's words);
/// returns the exit status hpktainer should end with.
pub async fn run_action(settings: Settings, args: &[OsString]) -> Result<i32> {
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let invocation = apptainer_args::parse(args, &env)?;
    let apptainer = settings.apptainer_path()?;
    if invocation.action == Action::InstanceStop {
        return stop_instance(settings, &invocation, &apptainer).await;
    }
    if !invocation.needs_network() {
        // instance://NAME joins a network that already exists.
        return supervise(&apptainer, &invocation.to_argv(&[]), &[]).await;
    }
    // Refuse what the rewrite cannot express before anything is created.
    if matches!(
        invocation.action,
        Action::Run | Action::Exec | Action::Shell
    ) {
        invocation.with_client_first(&[], &[])?;
    }

    let ctx = Context::open(settings)?;
    match invocation.action {
        Action::InstanceStart | Action::InstanceRun => {
            start_instance(&ctx, &invocation, &apptainer).await
        }
        _ => run_container(&ctx, &invocation, &apptainer).await,
    }
}

/// `run`, `exec`, `shell`: attach, run apptainer to its end, release.
async fn run_container(ctx: &Context, invocation: &Invocation, apptainer: &Path) -> Result<i32> {
    let record = lifecycle::attach(ctx, attachment(ctx, invocation, None)).await?;
    let argv = invocation.with_client_first(
        &apptainer_options(&record, ctx, invocation),
        &client_words(&record, ctx, true),
    );
    let status = match argv {
        Ok(argv) => supervise(apptainer, &argv, &container_env(&record, ctx)).await,
        Err(err) => Err(err.into()),
    };
    let failures = lifecycle::release(ctx, &record).await;
    if !failures.is_empty() {
        warn!(id = %record.id, "{} cleanup step(s) failed; `hpktainer gc` retries them", failures.len());
    }
    status
}

fn attachment<'a>(
    ctx: &'a Context,
    invocation: &Invocation,
    instance: Option<String>,
) -> Attachment<'a> {
    let mut command = vec![invocation.action.to_string()];
    command.extend(
        invocation
            .args
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned()),
    );
    Attachment {
        image: invocation.image.to_string_lossy().into_owned(),
        command,
        instance,
        log_level: &ctx.settings.relay_log_level,
    }
}

/// The options hpktainer adds: a private network namespace, the socket
/// directory, the client binary, and /dev/net/tun under --contain.
fn apptainer_options(record: &Record, ctx: &Context, invocation: &Invocation) -> Vec<OsString> {
    let mut options: Vec<OsString> = ["--net", "--network", "none", "--bind"]
        .map(OsString::from)
        .to_vec();
    let mut socket_bind = record.socket_dir.clone().into_os_string();
    socket_bind.push(format!(":{CONTAINER_SOCKET_DIR}"));
    options.push(socket_bind);
    options.push("--bind".into());
    let mut client_bind = ctx.daemon.clone().into_os_string();
    client_bind.push(format!(":{CONTAINER_CLIENT}:ro"));
    options.push(client_bind);
    if invocation.contain {
        options.extend(["--bind", "/dev/net/tun"].map(OsString::from));
    }
    options
}

/// The client's command line inside the container; with `then` it ends in
/// `--`, ready for the user's command.
fn client_words(record: &Record, ctx: &Context, then: bool) -> Vec<OsString> {
    let mut words: Vec<OsString> = vec![CONTAINER_CLIENT.into(), "client".into()];
    words.extend([
        "--socket".into(),
        format!("{CONTAINER_SOCKET_DIR}/{SOCKET_NAME}").into(),
    ]);
    words.extend([
        "--address".into(),
        record.address.clone().unwrap_or_default().into(),
    ]);
    words.extend([
        "--gateway".into(),
        ctx.subnet.gateway().addr().to_string().into(),
    ]);
    words.extend(["--mtu".into(), ctx.subnet.mtu.to_string().into()]);
    words.extend(["--data-path".into(), ctx.settings.data_path.as_str().into()]);
    words.extend([
        "--log-level".into(),
        ctx.settings.relay_log_level.clone().into(),
    ]);
    if then {
        words.push("--".into());
    }
    words
}

/// `HPK_*` for the container, passed the Apptainer way (APPTAINERENV_*).
fn container_env(record: &Record, ctx: &Context) -> Vec<(String, String)> {
    let address = record.address.clone().unwrap_or_default();
    vec![
        ("APPTAINERENV_HPK_IP".into(), address),
        (
            "APPTAINERENV_HPK_GATEWAY_IP".into(),
            ctx.subnet.gateway().addr().to_string(),
        ),
        (
            "APPTAINERENV_HPK_SOCKET_PATH".into(),
            format!("{CONTAINER_SOCKET_DIR}/{SOCKET_NAME}"),
        ),
        ("APPTAINERENV_HPK_MTU".into(), ctx.subnet.mtu.to_string()),
    ]
}

/// Runs apptainer, forwarding SIGTERM, SIGHUP and SIGUSR1/2 (not SIGINT: the
/// terminal already delivers Ctrl-C to apptainer), and returns its status.
/// apptainer gets SIGKILL if hpktainer dies, so a `kill -9` of hpktainer
/// takes the container down with it.
async fn supervise(apptainer: &Path, argv: &[OsString], env: &[(String, String)]) -> Result<i32> {
    let mut command = Command::new(apptainer);
    command.args(argv).envs(env.iter().map(|(k, v)| (k, v)));
    die_with_parent(&mut command);
    info!(apptainer = %apptainer.display(), ?argv, "starting apptainer");
    let supervisor =
        Supervisor::install().map_err(|err| Error::step("install signal handlers", err))?;
    supervisor
        .reap_command_only()
        .run_command_then(command, |_| {
            killpoint::reached(killpoint::AFTER_APPTAINER_STARTED)
        })
        .await
        .map_err(|err| Error::step("run apptainer", format!("{err:#}")))
}

/// `instance start|run`: attach a network, start the instance with it, then
/// keep the client running inside it, detached from hpktainer.
async fn start_instance(ctx: &Context, invocation: &Invocation, apptainer: &Path) -> Result<i32> {
    let name = invocation
        .instance_name
        .clone()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let mut record =
        lifecycle::attach(ctx, attachment(ctx, invocation, Some(name.clone()))).await?;
    let outcome = async {
        let argv = invocation.to_argv(&apptainer_options(&record, ctx, invocation));
        let status = supervise(apptainer, &argv, &container_env(&record, ctx)).await?;
        if status != 0 {
            return Ok(status);
        }
        let attach = invocation
            .instance_attach_argv(&[], &client_words(&record, ctx, false))
            .ok_or_else(|| Error::step("attach the network client", "not an instance action"))?;
        let log = crate::relay_server::detached_log(&record.socket_dir.join("client"))?;
        let process = spawn_detached(apptainer, &attach, log)?;
        record.attach_pid = Some(process.pid);
        record.attach_start_time = Some(process.start_time);
        ctx.state.write(&record)?;
        info!(instance = %name, address = ?record.address, "instance started with its network");
        Ok(0)
    }
    .await;
    if !matches!(outcome, Ok(0)) {
        lifecycle::release(ctx, &record).await;
    }
    outcome
}

fn spawn_detached(apptainer: &Path, argv: &[OsString], log: std::fs::File) -> Result<ProcessRef> {
    let mut command = Command::new(apptainer);
    command
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|err| Error::step("attach the network client", err))?;
    ProcessRef::of(child.id() as i32).map_err(|err| Error::step("inspect the client", err))
}

/// `instance stop`: pass through, then release what the instances held.
async fn stop_instance(
    settings: Settings,
    invocation: &Invocation,
    apptainer: &Path,
) -> Result<i32> {
    let status = supervise(apptainer, &invocation.to_argv(&[]), &[]).await?;
    let ctx = Context::open(settings)?;
    let _lock = ctx.state.lock()?;
    let names: Vec<String> = invocation
        .instance_name
        .iter()
        .chain(&invocation.args)
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    let all = invocation.options.iter().any(|o| o == "--all" || o == "-a");
    for entry in ctx.state.list()? {
        let RecordOrError::Record(record) = entry else {
            continue;
        };
        let Some(instance) = &record.instance else {
            continue;
        };
        if all || names.contains(instance) {
            lifecycle::release(&ctx, &record).await;
        }
    }
    Ok(status)
}
