//! The apptainer commands hpk-bubble runs: `instance run`, `instance list
//! --json`, `instance stop` and `shell instance://`.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde::Deserialize;
use tracing::debug;

use crate::plan::Plan;
use crate::{Error, Result, sys};

/// `instance list --json`, the part hpk-bubble reads.
#[derive(Deserialize)]
struct ListDoc {
    instances: Vec<Listed>,
}

#[derive(Deserialize)]
struct Listed {
    instance: String,
    pid: i32,
}

/// A command for `apptainer`; its stdout goes to our stderr, which keeps
/// hpk-bubble's stdout for results.
fn command(apptainer: &Path) -> Command {
    let mut command = Command::new(apptainer);
    command.stdin(Stdio::null()).stdout(std::io::stderr());
    // SAFETY: unblock_all_in_child only makes async-signal-safe calls.
    unsafe {
        command.pre_exec(sys::unblock_all_in_child);
    }
    command
}

fn output(mut command: Command, what: &str) -> Result<Output> {
    debug!(?command, "{what}");
    let output = command
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .map_err(|e| Error::io(format!("run {:?}", command.get_program()), e))?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        return Err(Error::Apptainer(format!(
            "{what} failed ({}): {}",
            output.status,
            said.trim()
        )));
    }
    Ok(output)
}

/// The `instance run` arguments for `plan`, with the resolv.conf bound.
pub fn run_args(plan: &Plan, resolv_conf: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = ["instance", "run", "--fakeroot"]
        .into_iter()
        .map(Into::into)
        .collect();
    // Nothing of the host's file tree: the bubble is the same on every node.
    args.extend(["--no-mount", "home,cwd,tmp,hostfs", "--writable-tmpfs"].map(Into::into));
    args.extend(["--net", "--network", "none"].map(Into::into));
    let mut bind = resolv_conf.as_os_str().to_owned();
    bind.push(":/etc/resolv.conf");
    args.extend(["--bind".into(), bind]);
    for extra in &plan.binds {
        args.extend(["--bind".into(), extra.into()]);
    }
    // One --env per variable: a value with a comma would split a joined list.
    for (key, value) in plan.environment() {
        args.extend(["--env".into(), format!("{key}={value}").into()]);
    }
    args.push(plan.image.clone());
    args.push(plan.instance().into());
    args.extend(plan.args.iter().cloned());
    args
}

/// Starts the bubble's instance; returns once apptainer says it runs.
pub fn instance_run(plan: &Plan, resolv_conf: &Path) -> Result<()> {
    let mut command = command(&plan.apptainer);
    command.args(run_args(plan, resolv_conf));
    output(command, "start the instance").map(drop)
}

/// The pid of instance `name`, from `instance list --json NAME`.
pub fn instance_pid(apptainer: &Path, name: &str) -> Result<i32> {
    let mut command = command(apptainer);
    command.args(["instance", "list", "--json", name]);
    let output = output(command, "list the instance")?;
    let doc: ListDoc = serde_json::from_slice(&output.stdout).map_err(|e| {
        Error::Apptainer(format!(
            "instance list --json answered something else ({e}): {}",
            String::from_utf8_lossy(&output.stdout).trim()
        ))
    })?;
    doc.instances
        .into_iter()
        .find(|listed| listed.instance == name)
        .map(|listed| listed.pid)
        .ok_or_else(|| Error::Apptainer(format!("instance {name} is not in instance list")))
}

/// Stops instance `name`.
pub fn instance_stop(apptainer: &Path, name: &str) -> Result<()> {
    let mut command = command(apptainer);
    command.args(["instance", "stop", name]);
    output(command, &format!("stop instance {name}")).map(drop)
}

/// Replaces this process with `apptainer shell instance://NAME`.
pub fn shell(apptainer: &Path, name: &str) -> Error {
    let err = Command::new(apptainer)
        .args(["shell", &format!("instance://{name}")])
        .exec();
    Error::io(format!("run {} shell", apptainer.display()), err)
}
