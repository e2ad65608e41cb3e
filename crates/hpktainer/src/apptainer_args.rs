//! Apptainer's command-line grammar for the actions hpktainer wraps, and the rewrite that starts
//! hpktainer's network client before the user's command.
//!
//! hpktainer is invoked as `hpktainer [own options] ACTION [apptainer options] IMAGE [ARGS…]`;
//! [`parse`] receives everything from ACTION on. Apptainer parses options with spf13/pflag with
//! interspersing turned off, so options end at the first word that is not one (or at `--`):
//! everything from IMAGE on belongs to the container, however much it looks like an option.
//! pflag rules mirrored here: `--opt=value` and `--opt value`; `-B value`, `-Bvalue` and
//! `-B=value`; boolean shorthands combine (`-ec`) and a value shorthand may end a group (`-eB a`);
//! a boolean takes a value only through `=` (`--net=false`); `-` alone is a positional word.
//!
//! The option table follows Apptainer 1.3 and 1.4 (`cmd/internal/cli/action_flags.go` and the
//! generated `apptainer <action> --help` pages), hidden options included, so that an unknown
//! option is refused instead of being taken for the image.
//!
//! Instances: `instance start` runs the image's startscript and `instance run` its runscript;
//! neither takes another command, so the client cannot run first inside them. The recommended
//! sequence is to start the instance with hpktainer's options (private network namespace, socket
//! bind, `HPK_*` variables) and then attach the client with `apptainer exec instance://NAME
//! CLIENT` ([`Invocation::instance_attach_argv`]), kept running beside the instance. The cost is
//! a short window at start in which the instance has only loopback: a startscript that needs the
//! network at once must retry. Replacing `/.singularity.d/actions/start` through a bind would
//! close the window but depends on Apptainer internals that change between releases.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// The script `apptainer run` starts inside the container.
pub const RUN_SCRIPT: &str = "/.singularity.d/actions/run";
/// The script `apptainer shell` starts inside the container.
pub const SHELL_SCRIPT: &str = "/.singularity.d/actions/shell";
/// The variable through which `apptainer shell --shell PATH` reaches [`SHELL_SCRIPT`].
pub const SHELL_VARIABLE: &str = "SINGULARITY_SHELL";

const EXPECTED_ACTIONS: &str = "run, exec, shell, instance start, instance run or instance stop";
const NETWORK_REASON: &str =
    "hpktainer gives the container its own network namespace and overlay address";

/// The Apptainer action hpktainer was asked to perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `apptainer run`: the runscript.
    Run,
    /// `apptainer exec`: a command.
    Exec,
    /// `apptainer shell`: an interactive shell.
    Shell,
    /// `apptainer instance start`: a named instance running the startscript.
    InstanceStart,
    /// `apptainer instance run`: a named instance running the runscript.
    InstanceRun,
    /// `apptainer instance stop`: stop named instances.
    InstanceStop,
}

impl Action {
    /// The words that name the action on the command line.
    pub fn words(self) -> &'static [&'static str] {
        match self {
            Action::Run => &["run"],
            Action::Exec => &["exec"],
            Action::Shell => &["shell"],
            Action::InstanceStart => &["instance", "start"],
            Action::InstanceRun => &["instance", "run"],
            Action::InstanceStop => &["instance", "stop"],
        }
    }

    /// Which option-table scope bit this action selects.
    fn scope(self) -> u8 {
        match self {
            Action::Run => RUN,
            Action::Exec => EXEC,
            Action::Shell => SHELL,
            Action::InstanceStart => START,
            Action::InstanceRun => IRUN,
            Action::InstanceStop => STOP,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.words().join(" "))
    }
}

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// Nothing after hpktainer's own options.
    #[error("missing action: expected {EXPECTED_ACTIONS}")]
    MissingAction,
    /// An action hpktainer does not wrap.
    #[error("unknown action {0:?}: expected {EXPECTED_ACTIONS}")]
    UnknownAction(String),
    /// An option apptainer does not know for this action (a typo must not become the image).
    #[error(
        "unknown option {option:?}{within} for apptainer {action}; see apptainer {action} --help"
    )]
    UnknownOption {
        action: Action,
        option: String,
        within: String,
    },
    /// A value option at the end of the line.
    #[error("option {option:?} needs a value")]
    MissingValue { option: String },
    /// A boolean option given a value that is not a boolean.
    #[error("option {option:?} takes true or false, not {value:?}")]
    BadBool { option: String, value: String },
    /// The user asked for a network of their own.
    #[error("option {option:?}{within} is not allowed: {NETWORK_REASON}; remove it")]
    NetworkOption { option: String, within: String },
    /// The environment asks apptainer for a network of its own.
    #[error("environment variable {name} is set: {NETWORK_REASON}; unset it")]
    NetworkEnv { name: String },
    /// No IMAGE after the options.
    #[error("missing IMAGE: apptainer {action} needs an image after its options")]
    MissingImage { action: Action },
    /// `exec` without a command.
    #[error("missing command: apptainer exec needs a command after IMAGE")]
    MissingCommand,
    /// `instance start|run` without a name.
    #[error("missing instance name: apptainer {action} needs a name after IMAGE")]
    MissingInstanceName { action: Action },
    /// `-h`/`--help`: the caller should show apptainer's own help.
    #[error("help requested: run apptainer {action} --help")]
    HelpRequested { action: Action },
    /// The rewrite that starts the client first does not apply to this invocation.
    #[error("cannot start the network client before the command of apptainer {action}: {reason}")]
    NotRewritable {
        action: Action,
        reason: &'static str,
    },
    /// An option `run` takes but the `exec` hpktainer runs instead does not.
    #[error(
        "option {option:?} only applies to apptainer run, and hpktainer starts the runscript through exec"
    )]
    RunOnlyOption { option: String },
}

/// A parsed `ACTION [apptainer options] IMAGE [ARGS…]`, every word kept byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The action.
    pub action: Action,
    /// The user's apptainer options in order, without a `--` that ended them.
    pub options: Vec<OsString>,
    /// Whether the user ended the options with `--` before IMAGE.
    pub end_of_options: bool,
    /// IMAGE; empty for `instance stop`, which names an instance instead.
    pub image: OsString,
    /// `instance start|run`: the NAME after IMAGE; `instance stop`: the name (or pattern) given.
    pub instance_name: Option<OsString>,
    /// The words after IMAGE (after NAME for instances): command, runscript or startscript args.
    pub args: Vec<OsString>,
    /// `-c`/`--contain`, `-C`/`--containall` or `--compat`, on the line or in the environment:
    /// the container gets a minimal /dev, so hpktainer must bind /dev/net/tun itself.
    pub contain: bool,
    /// IMAGE is `instance://NAME`: the command joins a running instance, which already has its
    /// network, so hpktainer passes the invocation through.
    pub existing_instance: Option<OsString>,
    /// `shell -s PATH`/`--shell PATH`: the shell to start.
    pub shell: Option<OsString>,
}

/// Parses `args` (ACTION first) with the environment hpktainer will hand to apptainer.
pub fn parse(args: &[OsString], env: &[(OsString, OsString)]) -> Result<Invocation, ArgsError> {
    let (action, skip) = parse_action(args)?;
    let rest = &args[skip..];
    let scan = scan(rest, action)?;
    check_scan(&scan, action)?;
    if action != Action::InstanceStop {
        check_network_env(env)?;
    }

    let positionals = &rest[scan.end..];
    let mut invocation = split_positionals(action, positionals)?;
    invocation.options = rest[..scan.options_len].to_vec();
    invocation.end_of_options = scan.end_of_options;
    invocation.contain = contains_filesystems(&scan, env);
    invocation.shell = last_value(&scan, "shell");
    Ok(invocation)
}

impl Invocation {
    /// The apptainer argv (without the program) for this invocation as given, with
    /// `extra_options` right after the action. `to_argv(&[])` reproduces the parsed words.
    pub fn to_argv(&self, extra_options: &[OsString]) -> Vec<OsString> {
        let mut argv = action_words(self.action);
        argv.extend_from_slice(extra_options);
        argv.extend_from_slice(&self.options);
        if self.end_of_options {
            argv.push("--".into());
        }
        if self.action != Action::InstanceStop {
            argv.push(self.image.clone());
        }
        argv.extend(self.instance_name.iter().cloned());
        argv.extend_from_slice(&self.args);
        argv
    }

    /// Whether hpktainer must set up a network for this invocation: not when it joins an
    /// existing instance, nor for `instance stop`.
    pub fn needs_network(&self) -> bool {
        self.existing_instance.is_none() && self.action != Action::InstanceStop
    }

    /// The `exec` that runs `client` (a program and its arguments, ending in `--`) first and lets
    /// it start the user's command: `run` becomes [`RUN_SCRIPT`] ARGS, `shell` [`SHELL_SCRIPT`]
    /// (with `--shell PATH` passed as [`SHELL_VARIABLE`], as apptainer does), `exec` the command.
    /// `extra_options` go right after `exec`, before the user's options.
    pub fn with_client_first(
        &self,
        extra_options: &[OsString],
        client: &[OsString],
    ) -> Result<Vec<OsString>, ArgsError> {
        if self.existing_instance.is_some() {
            let reason = "the image is a running instance, which already has its network";
            return Err(ArgsError::NotRewritable {
                action: self.action,
                reason,
            });
        }
        let (options, tail) = match self.action {
            Action::Run => (self.run_options()?, prefixed(RUN_SCRIPT, &self.args)),
            Action::Exec => (self.options.clone(), self.args.clone()),
            // apptainer shell ignores words after IMAGE; so does the rewrite.
            Action::Shell => (self.shell_options()?, vec![SHELL_SCRIPT.into()]),
            _ => return Err(self.instance_not_rewritable()),
        };

        let mut argv = vec![OsString::from("exec")];
        argv.extend_from_slice(extra_options);
        argv.extend(options);
        if self.end_of_options {
            argv.push("--".into());
        }
        argv.push(self.image.clone());
        argv.extend_from_slice(client);
        argv.extend(tail);
        Ok(argv)
    }

    /// For `instance start|run`: `exec [exec_options] instance://NAME CLIENT…`, which runs the
    /// client inside the started instance (see the module notes). `None` for other actions.
    pub fn instance_attach_argv(
        &self,
        exec_options: &[OsString],
        client: &[OsString],
    ) -> Option<Vec<OsString>> {
        if !matches!(self.action, Action::InstanceStart | Action::InstanceRun) {
            return None;
        }
        let mut target = OsString::from("instance://");
        target.push(self.instance_name.as_ref()?);

        let mut argv = vec![OsString::from("exec")];
        argv.extend_from_slice(exec_options);
        argv.push(target);
        argv.extend_from_slice(client);
        Some(argv)
    }

    fn instance_not_rewritable(&self) -> ArgsError {
        let reason = match self.action {
            Action::InstanceStop => "instance stop starts no container",
            _ => "an instance runs its own script; attach the client with instance_attach_argv",
        };
        ArgsError::NotRewritable {
            action: self.action,
            reason,
        }
    }

    /// The user's options, refusing those `run` takes and `exec` does not.
    fn run_options(&self) -> Result<Vec<OsString>, ArgsError> {
        let scan = scan(&self.options, self.action)?;
        let timeout = scan.groups.iter().find(|g| g.has("runscript-timeout"));
        if let Some(group) = timeout {
            let option = group.display(&self.options);
            return Err(ArgsError::RunOnlyOption { option });
        }
        Ok(self.options.clone())
    }

    /// The user's options without `-s`/`--shell`, which exec does not take, plus the variable
    /// that tells the shell script which shell to start.
    fn shell_options(&self) -> Result<Vec<OsString>, ArgsError> {
        let scan = scan(&self.options, self.action)?;
        let mut options = Vec::new();
        for group in &scan.groups {
            if !group.has("shell") {
                options.extend_from_slice(&self.options[group.start..group.end]);
                continue;
            }
            // A combined group such as `-es /bin/zsh` keeps its other flags, spelled out.
            let others = group.occurrences.iter().filter(|o| o.spec.long != "shell");
            options.extend(others.map(Occurrence::canonical));
        }
        if let Some(shell) = &self.shell {
            let mut assignment = OsString::from(format!("{SHELL_VARIABLE}="));
            assignment.push(shell);
            options.extend(["--env".into(), assignment]);
        }
        Ok(options)
    }
}

fn action_words(action: Action) -> Vec<OsString> {
    action.words().iter().map(OsString::from).collect()
}

fn prefixed(first: &str, rest: &[OsString]) -> Vec<OsString> {
    let mut words = vec![OsString::from(first)];
    words.extend_from_slice(rest);
    words
}

/// Reads the action words; returns the action and how many words it took.
fn parse_action(args: &[OsString]) -> Result<(Action, usize), ArgsError> {
    let first = args.first().ok_or(ArgsError::MissingAction)?;
    let lossy = |w: &OsString| w.to_string_lossy().into_owned();
    match first.as_bytes() {
        b"run" => Ok((Action::Run, 1)),
        b"exec" => Ok((Action::Exec, 1)),
        b"shell" => Ok((Action::Shell, 1)),
        b"instance" => match args.get(1).map(|w| w.as_bytes()) {
            Some(b"start") => Ok((Action::InstanceStart, 2)),
            Some(b"run") => Ok((Action::InstanceRun, 2)),
            Some(b"stop") => Ok((Action::InstanceStop, 2)),
            Some(_) => Err(ArgsError::UnknownAction(format!(
                "instance {}",
                lossy(&args[1])
            ))),
            None => Err(ArgsError::UnknownAction("instance".into())),
        },
        _ => Err(ArgsError::UnknownAction(lossy(first))),
    }
}

/// Assigns the words after the options to IMAGE, NAME and ARGS as the action expects.
fn split_positionals(action: Action, words: &[OsString]) -> Result<Invocation, ArgsError> {
    let mut invocation = Invocation {
        action,
        options: Vec::new(),
        end_of_options: false,
        image: OsString::new(),
        instance_name: None,
        args: Vec::new(),
        contain: false,
        existing_instance: None,
        shell: None,
    };
    if action == Action::InstanceStop {
        invocation.instance_name = words.first().cloned();
        invocation.args = words.get(1..).unwrap_or_default().to_vec();
        return Ok(invocation);
    }

    let (image, rest) = words
        .split_first()
        .ok_or(ArgsError::MissingImage { action })?;
    invocation.image = image.clone();
    invocation.args = rest.to_vec();
    match action {
        Action::Exec if rest.is_empty() => return Err(ArgsError::MissingCommand),
        Action::InstanceStart | Action::InstanceRun => {
            let (name, args) = rest
                .split_first()
                .ok_or(ArgsError::MissingInstanceName { action })?;
            invocation.instance_name = Some(name.clone());
            invocation.args = args.to_vec();
        }
        _ => invocation.existing_instance = instance_target(image),
    }
    Ok(invocation)
}

fn instance_target(image: &OsStr) -> Option<OsString> {
    let name = image.as_bytes().strip_prefix(b"instance://")?;
    Some(OsString::from_vec(name.to_vec()))
}

/// Stops at `--help` and refuses the user's own network options.
fn check_scan(scan: &Scan, action: Action) -> Result<(), ArgsError> {
    for group in &scan.groups {
        if group.has("help") {
            return Err(ArgsError::HelpRequested { action });
        }
        let Some(found) = group.occurrences.iter().find(|o| o.spec.network) else {
            continue;
        };
        let words = group.display(&scan.words);
        let (option, within) = match found.spec.short {
            // Name the letter inside a combined group such as `-en`.
            Some(letter) if group.occurrences.len() > 1 => {
                (format!("-{}", char::from(letter)), format!(" in {words:?}"))
            }
            _ => (words, String::new()),
        };
        return Err(ArgsError::NetworkOption { option, within });
    }
    Ok(())
}

/// The environment variables through which apptainer takes its network options.
fn check_network_env(env: &[(OsString, OsString)]) -> Result<(), ArgsError> {
    const BOOLEAN: [&str; 2] = ["NET", "UNSHARE_NET"];
    const VALUED: [&str; 3] = ["NETWORK", "NETWORK_ARGS", "NETNS_PATH"];
    for (name, value) in env {
        let Some(key) = apptainer_env_key(name) else {
            continue;
        };
        let value = value.to_string_lossy();
        let value = value.trim();
        // Apptainer ignores empty values, and a boolean that says false asks for nothing.
        let refused = (VALUED.contains(&key) && !value.is_empty())
            || (BOOLEAN.contains(&key) && !value.is_empty() && parse_bool(value) != Some(false));
        if refused {
            return Err(ArgsError::NetworkEnv {
                name: name.to_string_lossy().into_owned(),
            });
        }
    }
    Ok(())
}

/// `APPTAINER_X` or `SINGULARITY_X` gives `X`.
fn apptainer_env_key(name: &OsStr) -> Option<&str> {
    let name = name.to_str()?;
    name.strip_prefix("APPTAINER_")
        .or_else(|| name.strip_prefix("SINGULARITY_"))
}

/// Go's strconv.ParseBool, which pflag and apptainer's environment handling use.
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Whether any of `--contain`, `--containall`, `--compat` is in effect. As in apptainer, an
/// option on the line wins over its environment variable. Taking "yes" when unsure is safe:
/// the extra bind of /dev/net/tun costs nothing.
fn contains_filesystems(scan: &Scan, env: &[(OsString, OsString)]) -> bool {
    const OPTIONS: [(&str, &str); 3] = [
        ("contain", "CONTAIN"),
        ("containall", "CONTAINALL"),
        ("compat", "COMPAT"),
    ];
    OPTIONS
        .iter()
        .any(|(long, key)| match last_bool(scan, long) {
            Some(set) => set,
            None => env_says_true(env, key),
        })
}

fn env_says_true(env: &[(OsString, OsString)], key: &str) -> bool {
    env.iter().any(|(name, value)| {
        apptainer_env_key(name) == Some(key)
            && parse_bool(value.to_string_lossy().trim()) == Some(true)
    })
}

fn last_bool(scan: &Scan, long: &str) -> Option<bool> {
    let last = scan.occurrences().filter(|o| o.spec.long == long).last()?;
    match &last.value {
        None => Some(true),
        Some(value) => parse_bool(&value.to_string_lossy()),
    }
}

fn last_value(scan: &Scan, long: &str) -> Option<OsString> {
    let last = scan.occurrences().filter(|o| o.spec.long == long).last()?;
    last.value.clone()
}

// ---------------------------------------------------------------------------------------------
// The option table.

const RUN: u8 = 1;
const EXEC: u8 = 2;
const SHELL: u8 = 4;
const START: u8 = 8;
const IRUN: u8 = 16;
const STOP: u8 = 32;
const ACTIONS: u8 = RUN | EXEC | SHELL;
const INSTANCES: u8 = START | IRUN;
const ALL: u8 = ACTIONS | INSTANCES;

/// One apptainer option: its names, whether it takes a value, and where it is accepted.
#[derive(Debug)]
struct OptSpec {
    long: &'static str,
    short: Option<u8>,
    takes_value: bool,
    scope: u8,
    network: bool,
}

const fn value(long: &'static str, short: Option<u8>, scope: u8) -> OptSpec {
    OptSpec {
        long,
        short,
        takes_value: true,
        scope,
        network: false,
    }
}

const fn flag(long: &'static str, short: Option<u8>, scope: u8) -> OptSpec {
    OptSpec {
        long,
        short,
        takes_value: false,
        scope,
        network: false,
    }
}

const fn network(long: &'static str, short: Option<u8>, takes_value: bool) -> OptSpec {
    OptSpec {
        long,
        short,
        takes_value,
        scope: ALL,
        network: true,
    }
}

/// Apptainer 1.3/1.4 options of run, exec, shell, instance start/run/stop. Value options are
/// pflag's string, stringSlice, stringArray, stringToString and int; flags are bools.
static OPTIONS: &[OptSpec] = &[
    // Values, all of run/exec/shell/instance start/instance run.
    value("add-caps", None, ALL),
    value("app", None, ALL),
    value("apply-cgroups", None, ALL),
    value("authfile", None, ALL),
    value("bind", Some(b'B'), ALL),
    value("blkio-weight", None, ALL),
    value("blkio-weight-device", None, ALL),
    value("cpu-shares", None, ALL),
    value("cpus", None, ALL),
    value("cpuset-cpus", None, ALL),
    value("cpuset-mems", None, ALL),
    value("dns", None, ALL),
    value("docker-host", None, ALL),
    value("drop-caps", None, ALL),
    value("env", None, ALL),
    value("env-file", None, ALL),
    value("fusemount", None, ALL),
    value("home", Some(b'H'), ALL),
    value("hostname", None, ALL),
    value("memory", None, ALL),
    value("memory-reservation", None, ALL),
    value("memory-swap", None, ALL),
    value("mount", None, ALL),
    value("no-mount", None, ALL),
    value("overlay", Some(b'o'), ALL),
    value("pem-path", None, ALL),
    value("pids-limit", None, ALL),
    value("scratch", Some(b'S'), ALL),
    value("security", None, ALL),
    value("workdir", Some(b'W'), ALL),
    // Hidden values.
    value("containlibs", None, ALL),
    value("tmpdir", None, ALL),
    value("docker-username", None, ALL),
    value("docker-password", None, ALL),
    // Flags, all of run/exec/shell/instance start/instance run.
    flag("allow-setuid", None, ALL),
    flag("cleanenv", Some(b'e'), ALL),
    flag("compat", None, ALL),
    flag("contain", Some(b'c'), ALL),
    flag("containall", Some(b'C'), ALL),
    flag("disable-cache", None, ALL),
    flag("docker-login", None, ALL),
    flag("fakeroot", Some(b'f'), ALL),
    flag("ipc", Some(b'i'), ALL),
    flag("keep-privs", None, ALL),
    flag("no-eval", None, ALL),
    flag("no-home", None, ALL),
    flag("no-https", None, ALL),
    flag("no-init", None, ALL),
    flag("no-privs", None, ALL),
    flag("no-umask", None, ALL),
    flag("nv", None, ALL),
    flag("nvccli", None, ALL),
    flag("oom-kill-disable", None, ALL),
    flag("passphrase", None, ALL),
    flag("rocm", None, ALL),
    flag("unsquash", None, ALL),
    flag("userns", Some(b'u'), ALL),
    flag("uts", None, ALL),
    flag("writable", Some(b'w'), ALL),
    flag("writable-tmpfs", None, ALL),
    // Hidden flags.
    flag("no-nv", None, ALL),
    flag("no-rocm", None, ALL),
    flag("nohttps", None, ALL),
    flag("ignore-subuid", None, ALL),
    flag("ignore-fakeroot-command", None, ALL),
    flag("ignore-userns", None, ALL),
    flag("underlay", None, ALL),
    // run/exec/shell only.
    value("cwd", None, ACTIONS),
    value("pwd", None, ACTIONS),
    flag("pid", Some(b'p'), ACTIONS),
    flag("no-pid", None, ACTIONS),
    flag("sharens", None, ACTIONS),
    value("shell", Some(b's'), SHELL),
    value("runscript-timeout", None, RUN | IRUN),
    // instance start/run only.
    flag("boot", None, INSTANCES),
    value("pid-file", None, INSTANCES),
    value("dmtcp-launch", None, INSTANCES),
    value("dmtcp-restart", None, INSTANCES),
    // instance stop.
    flag("all", Some(b'a'), STOP),
    flag("force", Some(b'F'), STOP),
    value("signal", Some(b's'), STOP),
    value("timeout", Some(b't'), STOP),
    value("user", Some(b'u'), STOP),
    // Everywhere.
    flag("help", Some(b'h'), ALL | STOP),
    // The network options hpktainer refuses: it sets them itself.
    network("net", Some(b'n'), false),
    network("network", None, true),
    network("network-args", None, true),
    network("netns-path", None, true),
];

fn find_long(name: &[u8], action: Action) -> Option<&'static OptSpec> {
    let scope = action.scope();
    OPTIONS
        .iter()
        .find(|o| o.scope & scope != 0 && o.long.as_bytes() == name)
}

fn find_short(name: u8, action: Action) -> Option<&'static OptSpec> {
    let scope = action.scope();
    OPTIONS
        .iter()
        .find(|o| o.scope & scope != 0 && o.short == Some(name))
}

// ---------------------------------------------------------------------------------------------
// Scanning options the way pflag does.

/// One option as apptainer will see it.
#[derive(Debug)]
struct Occurrence {
    spec: &'static OptSpec,
    /// The value: the next word or text after `=` (or after a shorthand); for a flag, only an
    /// explicit `=value`.
    value: Option<OsString>,
}

impl Occurrence {
    /// `--long` or `--long=value`: the same meaning in a form that stands alone.
    fn canonical(&self) -> OsString {
        let mut word = OsString::from(format!("--{}", self.spec.long));
        if let Some(value) = &self.value {
            word.push("=");
            word.push(value);
        }
        word
    }
}

/// The words one option (or one group of combined shorthands) took, and what they meant.
#[derive(Debug)]
struct Group {
    start: usize,
    end: usize,
    occurrences: Vec<Occurrence>,
}

impl Group {
    fn has(&self, long: &str) -> bool {
        self.occurrences.iter().any(|o| o.spec.long == long)
    }

    /// The words as the user wrote them, for messages.
    fn display(&self, words: &[OsString]) -> String {
        let words = words[self.start..self.end]
            .iter()
            .map(|w| w.to_string_lossy());
        words.collect::<Vec<_>>().join(" ")
    }
}

/// The options part of an argument list.
#[derive(Debug)]
struct Scan {
    words: Vec<OsString>,
    groups: Vec<Group>,
    /// Words taken by options, not counting a final `--`.
    options_len: usize,
    /// Index of the first positional word.
    end: usize,
    end_of_options: bool,
}

impl Scan {
    fn occurrences(&self) -> impl Iterator<Item = &Occurrence> {
        self.groups.iter().flat_map(|g| g.occurrences.iter())
    }
}

/// Reads options from the start of `words` until the first positional word or `--`.
fn scan(words: &[OsString], action: Action) -> Result<Scan, ArgsError> {
    let mut groups = Vec::new();
    let mut index = 0;
    let mut end_of_options = false;
    while let Some(word) = words.get(index) {
        let bytes = word.as_bytes();
        let group = if bytes == b"--" {
            end_of_options = true;
            break;
        } else if let Some(long) = bytes.strip_prefix(b"--") {
            scan_long(words, index, long, action)?
        } else if bytes.len() > 1 && bytes[0] == b'-' {
            scan_shorts(words, index, action)?
        } else {
            break;
        };
        index = group.end;
        groups.push(group);
    }

    let end = index + usize::from(end_of_options);
    Ok(Scan {
        words: words.to_vec(),
        groups,
        options_len: index,
        end,
        end_of_options,
    })
}

/// `--name`, `--name=value` or `--name value`.
fn scan_long(
    words: &[OsString],
    start: usize,
    long: &[u8],
    action: Action,
) -> Result<Group, ArgsError> {
    let (name, inline) = match long.iter().position(|&b| b == b'=') {
        Some(at) => (&long[..at], Some(&long[at + 1..])),
        None => (long, None),
    };
    let spec = find_long(name, action).ok_or_else(|| unknown(action, &words[start], None))?;

    let mut end = start + 1;
    let value = match (inline, spec.takes_value) {
        (Some(inline), _) => Some(OsString::from_vec(inline.to_vec())),
        (None, true) => {
            end += 1;
            Some(next_value(words, start)?)
        }
        (None, false) => None,
    };
    let occurrence = Occurrence { spec, value };
    check_flag_value(&occurrence, &words[start])?;
    Ok(Group {
        start,
        end,
        occurrences: vec![occurrence],
    })
}

/// `-abc`, `-Bvalue`, `-B=value`, `-B value`, `-n=false`.
fn scan_shorts(words: &[OsString], start: usize, action: Action) -> Result<Group, ArgsError> {
    let word = words[start].as_bytes();
    let mut occurrences = Vec::new();
    let mut end = start + 1;
    let mut at = 1;
    while at < word.len() {
        let letter = word[at];
        let spec = find_short(letter, action).ok_or_else(|| {
            unknown(
                action,
                &OsString::from_vec(vec![b'-', letter]),
                Some(&words[start]),
            )
        })?;
        let rest = &word[at + 1..];

        // pflag: `-X=value` when `=` follows the letter and something follows the `=`;
        // a value option otherwise takes the rest of the word, or the next word.
        let explicit = (rest.len() > 1 && rest[0] == b'=').then(|| &rest[1..]);
        let value = match (explicit, spec.takes_value) {
            (Some(text), _) => Some(text),
            (None, true) if !rest.is_empty() => Some(rest),
            (None, true) => {
                end += 1;
                occurrences.push(Occurrence {
                    spec,
                    value: Some(next_value(words, start)?),
                });
                break;
            }
            (None, false) => None,
        };
        let occurrence = Occurrence {
            spec,
            value: value.map(|v| OsString::from_vec(v.to_vec())),
        };
        check_flag_value(&occurrence, &words[start])?;
        let consumed_rest = occurrence.value.is_some();
        occurrences.push(occurrence);
        if consumed_rest {
            break;
        }
        at += 1;
    }
    Ok(Group {
        start,
        end,
        occurrences,
    })
}

/// The word after `start`, which a value option takes whatever it looks like.
fn next_value(words: &[OsString], start: usize) -> Result<OsString, ArgsError> {
    let option = words[start].to_string_lossy().into_owned();
    words
        .get(start + 1)
        .cloned()
        .ok_or(ArgsError::MissingValue { option })
}

/// A boolean given a value through `=` must be one pflag accepts.
fn check_flag_value(occurrence: &Occurrence, word: &OsStr) -> Result<(), ArgsError> {
    let Some(value) = occurrence
        .value
        .as_ref()
        .filter(|_| !occurrence.spec.takes_value)
    else {
        return Ok(());
    };
    if parse_bool(&value.to_string_lossy()).is_some() {
        return Ok(());
    }
    Err(ArgsError::BadBool {
        option: word.to_string_lossy().into_owned(),
        value: value.to_string_lossy().into_owned(),
    })
}

fn unknown(action: Action, option: &OsStr, group: Option<&OsString>) -> ArgsError {
    let option = option.to_string_lossy();
    let option = option.split('=').next().unwrap_or_default().to_owned();
    let within = group
        .map(|g| format!(" in {:?}", g.to_string_lossy()))
        .unwrap_or_default();
    ArgsError::UnknownOption {
        action,
        option,
        within,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words of a command line written with single spaces (none of these words holds one).
    fn w(line: &str) -> Vec<OsString> {
        line.split(' ')
            .filter(|w| !w.is_empty())
            .map(OsString::from)
            .collect()
    }

    fn env(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    fn ok_words(args: Vec<OsString>) -> Invocation {
        let invocation = parse(&args, &[]).unwrap();
        assert_eq!(invocation.to_argv(&[]), args, "round trip");
        invocation
    }

    fn ok(line: &str) -> Invocation {
        ok_words(w(line))
    }

    fn err(line: &str) -> ArgsError {
        parse(&w(line), &[]).unwrap_err()
    }

    #[test]
    fn splits_options_image_and_args() {
        let mut args = w("exec --bind a,b -B c --bind=d -Be -ec --env A=B img.sif cmd -x --net");
        args.extend(["a b".into(), "\"q\"".into(), "--".into()]);
        let inv = ok_words(args);
        assert_eq!(inv.action, Action::Exec);
        assert_eq!(inv.options, w("--bind a,b -B c --bind=d -Be -ec --env A=B"));
        assert_eq!(inv.image, "img.sif");
        assert_eq!(inv.args[..3], w("cmd -x --net"));
        assert_eq!(inv.args[3..], ["a b", "\"q\"", "--"]);
        assert!(inv.contain, "-ec holds -c");
        assert!(!inv.end_of_options);
        assert!(inv.needs_network());
    }

    #[test]
    fn value_options_take_the_next_word_whatever_it_looks_like() {
        let inv = ok("run --bind --net -B -n img --network x");
        assert_eq!(inv.options, w("--bind --net -B -n"));
        assert_eq!(inv.image, "img");
        assert_eq!(inv.args, w("--network x"));
    }

    #[test]
    fn shorthand_value_forms() {
        for form in ["-B=/a", "-B/a", "-B /a", "-eB /a", "-eB/a"] {
            let inv = ok(&format!("run {form} img"));
            assert_eq!(inv.image, "img", "{form}");
            assert_eq!(inv.options, w(form));
        }
    }

    #[test]
    fn double_dash_ends_options() {
        let inv = ok("exec -e -- -odd-image cmd");
        assert!(inv.end_of_options);
        assert_eq!(inv.options, w("-e"));
        assert_eq!(inv.image, "-odd-image");
        assert_eq!(ok("exec - cmd").image, "-");
    }

    #[test]
    fn round_trip_keeps_bytes() {
        let odd = OsString::from_vec(vec![b'/', 0xff, b'x', b' ', b'\n']);
        let mut args = w("run --bind");
        args.extend([
            odd.clone(),
            "--env=A= b".into(),
            "--".into(),
            odd.clone(),
            odd.clone(),
        ]);
        let inv = ok_words(args);
        assert_eq!(inv.image, odd);
        assert_eq!(inv.args, [odd]);
    }

    #[test]
    fn extra_options_go_right_after_the_action() {
        let inv = ok("instance start -B /a img web x");
        let argv = inv.to_argv(&w("--net --network none"));
        assert_eq!(
            argv,
            w("instance start --net --network none -B /a img web x")
        );
    }

    #[test]
    fn refuses_network_options() {
        let forms = [
            "-n",
            "--net",
            "--net=true",
            "--net=false",
            "--network bridge",
            "--network=bridge",
            "--network-args portmap=80:80/tcp",
            "--network-args=x",
            "--netns-path /proc/1/ns/net",
            "-en",
        ];
        let actions = ["run", "exec", "shell", "instance start", "instance run"];
        for (action, form) in actions.iter().flat_map(|a| forms.map(|f| (a, f))) {
            let error = err(&format!("{action} {form} img name-or-cmd"));
            assert!(
                matches!(error, ArgsError::NetworkOption { .. }),
                "{action} {form}: {error}"
            );
        }
        assert_eq!(
            err("run --network bridge img").to_string(),
            "option \"--network bridge\" is not allowed: hpktainer gives the container its own \
             network namespace and overlay address; remove it"
        );
        let message = err("run -en img").to_string();
        assert!(
            message.starts_with("option \"-n\" in \"-en\" is not allowed"),
            "{message}"
        );
    }

    #[test]
    fn refuses_network_environment() {
        let line = w("run img");
        let refused = [
            ("NET", "1"),
            ("NET", "yes"),
            ("UNSHARE_NET", "true"),
            ("NETWORK", "bridge"),
            ("NETWORK_ARGS", "portmap=80:80/tcp"),
            ("NETNS_PATH", "/proc/1/ns/net"),
        ];
        for prefix in ["APPTAINER_", "SINGULARITY_"] {
            for (key, value) in refused {
                let name = format!("{prefix}{key}");
                let error = parse(&line, &env(&[(&name, value)])).unwrap_err();
                assert_eq!(error, ArgsError::NetworkEnv { name: name.clone() });
                let expected = format!("environment variable {name} is set");
                assert!(error.to_string().starts_with(&expected));
            }
        }
        let harmless = env(&[
            ("APPTAINER_NET", "false"),
            ("APPTAINER_NETWORK", "  "),
            ("APPTAINERENV_NETWORK", "bridge"),
            ("APPTAINER_BIND", "/a"),
        ]);
        assert!(parse(&line, &harmless).is_ok());
        let stop = w("instance stop web");
        assert!(parse(&stop, &env(&[("APPTAINER_NETWORK", "bridge")])).is_ok());
    }

    #[test]
    fn detects_contain() {
        for option in [
            "-c",
            "-C",
            "--contain",
            "--containall",
            "--compat",
            "-ec",
            "-c=1",
        ] {
            assert!(ok(&format!("run {option} img")).contain, "{option}");
        }
        assert!(!ok("run img").contain);
        assert!(!ok("run --contain=false img").contain);

        let line = w("run img");
        for (name, value, expected) in [
            ("APPTAINER_CONTAIN", "1", true),
            ("SINGULARITY_CONTAINALL", "true", true),
            ("APPTAINER_COMPAT", "True", true),
            ("APPTAINER_CONTAIN", "yes", false),
            ("APPTAINER_CONTAIN", "0", false),
        ] {
            let inv = parse(&line, &env(&[(name, value)])).unwrap();
            assert_eq!(inv.contain, expected, "{name}={value}");
        }
        // The line wins over the environment, as in apptainer.
        let line = w("run --contain=false img");
        assert!(
            !parse(&line, &env(&[("APPTAINER_CONTAIN", "1")]))
                .unwrap()
                .contain
        );
    }

    #[test]
    fn refuses_unknown_options() {
        assert_eq!(
            err("exec --bnid /a img cmd").to_string(),
            "unknown option \"--bnid\" for apptainer exec; see apptainer exec --help"
        );
        assert_eq!(
            err("exec -ex img cmd").to_string(),
            "unknown option \"-x\" in \"-ex\" for apptainer exec; see apptainer exec --help"
        );
        let error = err("exec --bnid=/a img");
        assert!(matches!(error, ArgsError::UnknownOption { option, .. } if option == "--bnid"));
        // Options that exist, but not for this action.
        for line in [
            "exec --shell /bin/sh img x",
            "run --boot img",
            "instance start --pid img n",
            "exec --runscript-timeout 1m img x",
            "instance stop --bind x",
        ] {
            assert!(
                matches!(err(line), ArgsError::UnknownOption { .. }),
                "{line}"
            );
        }
    }

    #[test]
    fn boolean_values_follow_pflag() {
        assert!(matches!(
            err("run --contain=maybe img"),
            ArgsError::BadBool { .. }
        ));
        assert!(matches!(err("run -e=maybe img"), ArgsError::BadBool { .. }));
    }

    #[test]
    fn missing_pieces() {
        assert_eq!(parse(&[], &[]).unwrap_err(), ArgsError::MissingAction);
        assert_eq!(
            err("run"),
            ArgsError::MissingImage {
                action: Action::Run
            }
        );
        assert_eq!(
            err("shell -e --"),
            ArgsError::MissingImage {
                action: Action::Shell
            }
        );
        assert_eq!(
            err("run --bind"),
            ArgsError::MissingValue {
                option: "--bind".into()
            }
        );
        assert_eq!(
            err("run -eB"),
            ArgsError::MissingValue {
                option: "-eB".into()
            }
        );
        assert_eq!(err("exec img"), ArgsError::MissingCommand);
        let action = Action::InstanceStart;
        assert_eq!(
            err("instance start img"),
            ArgsError::MissingInstanceName { action }
        );
        assert_eq!(
            err("run").to_string(),
            "missing IMAGE: apptainer run needs an image after its options"
        );
    }

    #[test]
    fn unknown_actions() {
        assert_eq!(err("build x"), ArgsError::UnknownAction("build".into()));
        assert_eq!(
            err("instance list"),
            ArgsError::UnknownAction("instance list".into())
        );
        assert_eq!(err("instance"), ArgsError::UnknownAction("instance".into()));
        assert_eq!(
            err("pull").to_string(),
            "unknown action \"pull\": expected run, exec, shell, instance start, instance run or \
             instance stop"
        );
    }

    #[test]
    fn help_is_reported() {
        assert_eq!(
            err("exec --help"),
            ArgsError::HelpRequested {
                action: Action::Exec
            }
        );
        let action = Action::InstanceStop;
        assert_eq!(err("instance stop -h"), ArgsError::HelpRequested { action });
    }

    #[test]
    fn instance_image_passes_through() {
        let inv = ok("exec -e instance://web cat /etc/hosts");
        assert_eq!(inv.existing_instance, Some("web".into()));
        assert!(!inv.needs_network());
        let error = inv.with_client_first(&[], &w("client --")).unwrap_err();
        assert!(matches!(error, ArgsError::NotRewritable { .. }));
    }

    #[test]
    fn client_first_for_run() {
        let inv = ok("run -B /a -- img a -x");
        let argv = inv
            .with_client_first(&w("--net"), &w("/hpk client --"))
            .unwrap();
        let expected = format!("exec --net -B /a -- img /hpk client -- {RUN_SCRIPT} a -x");
        assert_eq!(argv, w(&expected));

        let inv = ok("run --runscript-timeout 5m img");
        let error = inv.with_client_first(&[], &[]).unwrap_err();
        let option = "--runscript-timeout 5m".into();
        assert_eq!(error, ArgsError::RunOnlyOption { option });
    }

    #[test]
    fn client_first_for_exec() {
        let mut args = w("exec --env A=B img cmd");
        args.push("a b".into());
        let inv = ok_words(args);
        let argv = inv.with_client_first(&[], &w("/hpk --")).unwrap();
        let mut expected = w("exec --env A=B img /hpk -- cmd");
        expected.push("a b".into());
        assert_eq!(argv, expected);
    }

    #[test]
    fn client_first_for_shell() {
        let client = w("/hpk --");
        let argv = ok("shell -e img ignored")
            .with_client_first(&[], &client)
            .unwrap();
        assert_eq!(argv, w(&format!("exec -e img /hpk -- {SHELL_SCRIPT}")));

        for form in [
            "--shell /bin/zsh",
            "--shell=/bin/zsh",
            "-s/bin/zsh",
            "-s /bin/zsh",
        ] {
            let inv = ok(&format!("shell -B /a {form} img"));
            assert_eq!(inv.shell, Some("/bin/zsh".into()));
            let argv = inv.with_client_first(&[], &client).unwrap();
            let expected = "exec -B /a --env SINGULARITY_SHELL=/bin/zsh img /hpk --";
            assert_eq!(argv, w(&format!("{expected} {SHELL_SCRIPT}")), "{form}");
        }

        // A combined group keeps its other flags.
        let argv = ok("shell -es /bin/zsh img")
            .with_client_first(&[], &client)
            .unwrap();
        let expected = "exec --cleanenv --env SINGULARITY_SHELL=/bin/zsh img /hpk --";
        assert_eq!(argv, w(&format!("{expected} {SHELL_SCRIPT}")));
    }

    #[test]
    fn instances() {
        let inv = ok("instance run --boot -B /a img.sif web --port 80");
        assert_eq!(inv.image, "img.sif");
        assert_eq!(inv.instance_name, Some("web".into()));
        assert_eq!(inv.args, w("--port 80"));
        assert!(inv.needs_network());
        assert!(matches!(
            inv.with_client_first(&[], &[]),
            Err(ArgsError::NotRewritable { .. })
        ));

        let attach = inv.instance_attach_argv(&w("--env A=1"), &w("/hpk client"));
        assert_eq!(
            attach.unwrap(),
            w("exec --env A=1 instance://web /hpk client")
        );
        assert_eq!(ok("run img").instance_attach_argv(&[], &[]), None);
    }

    #[test]
    fn instance_stop() {
        let inv = ok("instance stop -s TERM -t 5 web*");
        assert_eq!(inv.instance_name, Some("web*".into()));
        assert_eq!(inv.image, "");
        assert!(!inv.needs_network());
        assert_eq!(ok("instance stop --all -F").instance_name, None);
    }
}
