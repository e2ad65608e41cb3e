//! `apptainer-standin`: a TEST STAND-IN for Apptainer, used by hpktainer's tests on machines
//! where Apptainer cannot be installed. It is not Apptainer, is never shipped or installed, and
//! implements only what those tests exercise.
//!
//! It takes apptainer's command-line grammar (`[global options] ACTION [options] IMAGE [ARGS…]`)
//! for `run`, `exec`, `shell` and `instance start|run|list|stop`, with a small option table
//! (see `--help`), refusing everything else with status 255. A container is a forked child in
//! its own mount namespace (and network namespace with `--net`, user namespace with
//! `--fakeroot` or when unprivileged) rooted at a directory image. Every invocation can be
//! recorded for the test: see `HPK_STANDIN_LOG` in `--help`.
//!
//! Differences from Apptainer, on purpose: directory images only; `--network none` only; no
//! PID, IPC or cgroup namespaces; nothing of the host is bound by default (no $HOME, $PWD or
//! /tmp), so a test sees only what it binds; `--writable-tmpfs` writes to the image directory;
//! mount points missing from the image are created in it; `--home` only sets HOME; the
//! container's PATH is apptainer's default and `env/*.sh` is sourced only by the image's own
//! action scripts. Like apptainer's starter it forwards SIGTERM, SIGHUP, SIGUSR1/2, SIGINT and
//! SIGQUIT to the container (so a terminal's Ctrl-C arrives twice) and exits with the
//! container's status, 128+n for death by signal n; its own failures exit 255.
//!
//! It stays single-threaded: `unshare(CLONE_NEWUSER)` refuses a multi-threaded process, and a
//! forked child of a single-threaded process may run ordinary Rust code.

#[path = "../standin/mod.rs"]
mod standin;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use anyhow::Result;

use standin::cli::{self, Action, Command, Launch};
use standin::container::{self, Plan};
use standin::{instance, record};

const HELP: &str = "\
apptainer-standin: a TEST STAND-IN for Apptainer (hpktainer's tests only; not Apptainer)

Usage:
  apptainer-standin [-q|-s|-v|-d] run   [options] IMAGE [ARGS...]
  apptainer-standin [-q|-s|-v|-d] exec  [options] IMAGE COMMAND [ARGS...]
  apptainer-standin [-q|-s|-v|-d] shell [options] [-s SHELL] IMAGE
  apptainer-standin instance start|run [options] IMAGE NAME [ARGS...]
  apptainer-standin instance list [-j|--json | -l|--logs] [NAME]
  apptainer-standin instance stop [-s SIGNAL] [-t SECS] [-F] (NAME | -a)
  apptainer-standin version | --version | --help

IMAGE is a directory (a sandbox), or instance://NAME for run, exec and shell.

Options (apptainer's spelling; anything else is refused with status 255):
  -n, --net               own network namespace with only lo, up
      --network none      the only network the stand-in has
  -B, --bind SRC[:DST[:ro|rw]][,...]
      --env K=V[,...]     --env-file FILE
  -c, --contain           minimal /dev (null zero full random urandom tty)
  -C, --containall        --contain and --cleanenv (--compat likewise)
  -e, --cleanenv          start from an empty environment (TERM, HOME, PATH)
  -f, --fakeroot          user namespace, root inside mapped to the caller
  -w, --writable          --writable-tmpfs: the image stays writable
      --no-mount proc,sys,dev,tmp   --pwd DIR   --hostname NAME
      --no-home  -H, --home SRC[:DST] (sets HOME only)   --no-init

Environment:
  HPK_STANDIN_LOG         append {\"argv\": [args after the program], \"env\": {APPTAINER*_,
                          SINGULARITY*_ variables}} as one JSON line per invocation
  HPK_STANDIN_STATE_DIR   instance records and logs (default /run/apptainer-standin-UID)
  APPTAINERENV_X, SINGULARITYENV_X  set X in the container
";

fn version() -> String {
    format!(
        "apptainer-standin version {}: a test stand-in for Apptainer, not Apptainer",
        env!("CARGO_PKG_VERSION")
    )
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let code = run(&args).unwrap_or_else(|err| {
        eprintln!("apptainer-standin: error: {err:#}");
        if cli::is_usage(&err) {
            eprintln!("Run 'apptainer-standin --help' for usage.");
        }
        255
    });
    std::process::exit(code);
}

fn run(args: &[OsString]) -> Result<i32> {
    record::invocation(args)?;
    let (verbosity, command) = cli::parse(args)?;
    standin::set_verbosity(verbosity);
    match command {
        Command::Help => print!("{HELP}"),
        Command::Version => println!("{}", version()),
        Command::Launch(launch) => return launch_container(&launch),
        Command::List(list) => return instance::list(&list),
        Command::Stop(stop) => return instance::stop(&stop),
    }
    Ok(0)
}

fn launch_container(launch: &Launch) -> Result<i32> {
    let instance_action = matches!(launch.action, Action::InstanceStart | Action::InstanceRun);
    cli::check_image(&launch.image, !instance_action)?;
    if instance_action {
        return instance::start(launch);
    }
    let plan = match launch.image.as_bytes().strip_prefix(b"instance://") {
        Some(name) => {
            let found = instance::find(&String::from_utf8_lossy(name))?;
            Plan::join(launch, found.pid, found.start_time, &found.image)?
        }
        None => Plan::fresh(launch)?,
    };
    container::run_foreground(&plan)
}

#[cfg(test)]
mod tests {
    #[test]
    fn says_it_is_a_stand_in() {
        assert!(super::HELP.contains("TEST STAND-IN for Apptainer"));
        assert!(super::version().contains("stand-in for Apptainer, not Apptainer"));
    }
}
