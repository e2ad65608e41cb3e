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
pub(super) fn parse_bool(value: &str) -> Option<bool> {
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

mod grammar;
#[cfg(test)]
mod tests;

use grammar::*;
