//! The stand-in's command line: apptainer's actions over a small option table, each option
//! taking a value or not exactly as apptainer's does (the grammar is in [`super::pflag`]).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use nix::sys::signal::Signal;

pub use super::pflag::is_usage;
use super::pflag::{Found, Spec, flag, scan, usage, value};

/// How much the stand-in says on stderr: -1 quiet, 0 normal, 1 verbose, 2 debug.
pub type Verbosity = i8;

/// What was asked for.
#[derive(Debug)]
pub enum Command {
    Help,
    Version,
    Launch(Box<Launch>),
    List(List),
    Stop(Stop),
}

/// The actions that start a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Run,
    Exec,
    Shell,
    InstanceStart,
    InstanceRun,
}

/// `run|exec|shell|instance start|instance run [options] IMAGE [NAME] [ARGS…]`.
#[derive(Debug)]
pub struct Launch {
    pub action: Action,
    pub options: Options,
    pub image: OsString,
    /// The instance name, for `instance start|run`.
    pub name: Option<String>,
    /// exec: the command and its arguments; otherwise the script's arguments.
    pub args: Vec<OsString>,
}

/// The container options the stand-in supports.
#[derive(Debug, Default)]
pub struct Options {
    pub net: bool,
    pub binds: Vec<Bind>,
    pub env: Vec<(String, String)>,
    pub env_files: Vec<PathBuf>,
    pub contain: bool,
    pub cleanenv: bool,
    pub fakeroot: bool,
    pub no_mount: Vec<String>,
    pub writable: bool,
    pub pwd: Option<PathBuf>,
    pub home: Option<PathBuf>,
    pub hostname: Option<String>,
    pub shell: Option<String>,
}

/// One `--bind SRC[:DST[:ro|rw]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub readonly: bool,
}

/// `instance list [--json|--logs] [NAME]`.
#[derive(Debug)]
pub struct List {
    pub json: bool,
    pub logs: bool,
    pub name: Option<String>,
}

/// `instance stop [--all] [--force] [--signal SIG] [--timeout SECS] [NAME]`.
#[derive(Debug)]
pub struct Stop {
    pub all: bool,
    pub signal: Signal,
    pub timeout: Duration,
    pub name: Option<String>,
}

/// What an option means; the tables below spell each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Id {
    Quiet,
    Silent,
    Debug,
    Verbose,
    Help,
    Version,
    Net,
    Network,
    Bind,
    Env,
    EnvFile,
    Contain,
    ContainAll,
    CleanEnv,
    FakeRoot,
    NoMount,
    WritableTmpfs,
    Writable,
    Pwd,
    /// Accepted and without effect: the stand-in never binds a home directory.
    NoHome,
    Home,
    Hostname,
    Shell,
    /// Accepted and without effect: the stand-in runs no init (no PID namespace).
    NoInit,
    /// Known to apptainer, refused here with the reason.
    Unsupported(&'static str),
    Json,
    Logs,
    All,
    Force,
    Signal,
    Timeout,
}

const NO_CNI: &str = "the stand-in has no CNI networks, only --network none";

const GLOBAL: &[Spec<Id>] = &[
    flag("quiet", Some('q'), Id::Quiet),
    flag("silent", Some('s'), Id::Silent),
    flag("debug", Some('d'), Id::Debug),
    flag("verbose", Some('v'), Id::Verbose),
    flag("help", Some('h'), Id::Help),
    flag("version", None, Id::Version),
];

const LAUNCH: &[Spec<Id>] = &[
    flag("help", Some('h'), Id::Help),
    flag("net", Some('n'), Id::Net),
    value("network", None, Id::Network),
    value("network-args", None, Id::Unsupported(NO_CNI)),
    value("netns-path", None, Id::Unsupported(NO_CNI)),
    value("dns", None, Id::Unsupported(NO_CNI)),
    value("bind", Some('B'), Id::Bind),
    value("env", None, Id::Env),
    value("env-file", None, Id::EnvFile),
    flag("contain", Some('c'), Id::Contain),
    flag("containall", Some('C'), Id::ContainAll),
    flag("compat", None, Id::ContainAll),
    flag("cleanenv", Some('e'), Id::CleanEnv),
    flag("fakeroot", Some('f'), Id::FakeRoot),
    value("no-mount", None, Id::NoMount),
    flag("writable-tmpfs", None, Id::WritableTmpfs),
    flag("writable", Some('w'), Id::Writable),
    value("pwd", None, Id::Pwd),
    flag("no-home", None, Id::NoHome),
    value("home", Some('H'), Id::Home),
    value("hostname", None, Id::Hostname),
    flag("no-init", None, Id::NoInit),
];

const SHELL_ONLY: &[Spec<Id>] = &[value("shell", Some('s'), Id::Shell)];

const LIST: &[Spec<Id>] = &[
    flag("help", Some('h'), Id::Help),
    flag("json", Some('j'), Id::Json),
    flag("logs", Some('l'), Id::Logs),
];

const STOP: &[Spec<Id>] = &[
    flag("help", Some('h'), Id::Help),
    flag("all", Some('a'), Id::All),
    flag("force", Some('F'), Id::Force),
    value("signal", Some('s'), Id::Signal),
    value("timeout", Some('t'), Id::Timeout),
];

/// Parses everything after the program name.
pub fn parse(args: &[OsString]) -> Result<(Verbosity, Command)> {
    let (found, at) = scan(args, &[GLOBAL])?;
    let mut verbosity = 0;
    for option in &found {
        let on = option.value == "true";
        match option.id {
            Id::Help if on => return Ok((verbosity, Command::Help)),
            Id::Version if on => return Ok((verbosity, Command::Version)),
            Id::Quiet | Id::Silent if on => verbosity = -1,
            Id::Verbose if on => verbosity = verbosity.max(1),
            Id::Debug if on => verbosity = 2,
            _ => {}
        }
    }
    let command = parse_command(&args[at..])?;
    Ok((verbosity, command))
}

fn parse_command(words: &[OsString]) -> Result<Command> {
    let word = |i: usize| words.get(i).map(|w| w.as_bytes());
    let (action, rest) = match (word(0), word(1)) {
        (None, _) => return usage("missing command: run, exec, shell, instance or version"),
        (Some(b"version"), _) => return Ok(Command::Version),
        (Some(b"help"), _) => return Ok(Command::Help),
        (Some(b"run"), _) => (Action::Run, &words[1..]),
        (Some(b"exec"), _) => (Action::Exec, &words[1..]),
        (Some(b"shell"), _) => (Action::Shell, &words[1..]),
        (Some(b"instance"), Some(b"start")) => (Action::InstanceStart, &words[2..]),
        (Some(b"instance"), Some(b"run")) => (Action::InstanceRun, &words[2..]),
        (Some(b"instance"), Some(b"list")) => return parse_list(&words[2..]),
        (Some(b"instance"), Some(b"stop")) => return parse_stop(&words[2..]),
        (Some(b"instance"), _) => return usage("instance needs start, run, list or stop"),
        (Some(_), _) => {
            let name = words[0].to_string_lossy();
            return usage(format!(
                "unknown command {name:?}: the stand-in knows run, exec, shell, instance, version"
            ));
        }
    };
    parse_launch(action, rest)
}

fn parse_launch(action: Action, words: &[OsString]) -> Result<Command> {
    let tables: &[&[Spec<Id>]] = match action {
        Action::Shell => &[LAUNCH, SHELL_ONLY],
        _ => &[LAUNCH],
    };
    let (found, at) = scan(words, tables)?;
    let mut options = Options::default();
    for option in found {
        if option.id == Id::Help && option.value == "true" {
            return Ok(Command::Help);
        }
        apply(&mut options, option)?;
    }

    let mut positional = words[at..].iter();
    let Some(image) = positional.next().cloned() else {
        return usage("missing IMAGE after the options");
    };
    let name = match action {
        Action::InstanceStart | Action::InstanceRun => match positional.next() {
            Some(name) => Some(instance_name(name)?),
            None => return usage("missing instance NAME after IMAGE"),
        },
        _ => None,
    };
    let args: Vec<OsString> = positional.cloned().collect();
    if action == Action::Exec && args.is_empty() {
        return usage("missing COMMAND: exec needs a command after IMAGE");
    }
    Ok(Command::Launch(Box::new(Launch {
        action,
        options,
        image,
        name,
        args,
    })))
}

fn apply(options: &mut Options, found: Found<Id>) -> Result<()> {
    let on = found.value == "true";
    let text = found.value;
    match found.id {
        Id::Net => options.net = on,
        Id::Network => network(&text)?,
        Id::Unsupported(reason) => {
            return usage(format!("{} is not supported: {reason}", found.spelled));
        }
        Id::Bind => {
            for spec in text.split(',').filter(|s| !s.is_empty()) {
                options.binds.push(bind(spec)?);
            }
        }
        Id::Env => options.env.extend(env_pairs(&text)?),
        Id::EnvFile => options.env_files.push(text.into()),
        Id::Contain => options.contain |= on,
        Id::ContainAll => {
            options.contain |= on;
            options.cleanenv |= on;
        }
        Id::CleanEnv => options.cleanenv = on,
        Id::FakeRoot => options.fakeroot = on,
        Id::NoMount => options.no_mount.extend(text.split(',').map(str::to_owned)),
        Id::WritableTmpfs | Id::Writable => options.writable |= on,
        Id::Pwd => options.pwd = Some(text.into()),
        Id::Home => options.home = Some(text.into()),
        Id::Hostname => options.hostname = Some(text),
        Id::Shell => options.shell = Some(text),
        _ => {}
    }
    Ok(())
}

/// `--network` names the networks to join; the stand-in has only `none`. Like apptainer, the
/// option only matters together with `--net`.
fn network(names: &str) -> Result<()> {
    for name in names.split(',') {
        if name != "none" {
            return usage(format!("--network {name}: {NO_CNI}"));
        }
    }
    Ok(())
}

fn bind(spec: &str) -> Result<Bind> {
    let mut parts = spec.split(':');
    let src = PathBuf::from(parts.next().unwrap_or_default());
    let dst = parts
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| src.clone());
    let readonly = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => return usage(format!("--bind {spec}: unknown bind option {other:?}")),
    };
    if parts.next().is_some() || src.as_os_str().is_empty() {
        return usage(format!("--bind {spec}: expected SRC[:DST[:ro|rw]]"));
    }
    if !dst.is_absolute() {
        return usage(format!(
            "--bind {spec}: the destination must be an absolute path"
        ));
    }
    Ok(Bind { src, dst, readonly })
}

/// pflag's string-to-string rule, which apptainer's `--env` uses: one `=` means one pair
/// (commas and all); more split on commas.
fn env_pairs(text: &str) -> Result<Vec<(String, String)>> {
    let pieces: Vec<&str> = if text.matches('=').count() > 1 {
        text.split(',').collect()
    } else {
        vec![text]
    };
    pieces
        .into_iter()
        .map(|piece| match piece.trim_matches('"').split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => usage(format!("--env {text}: expected KEY=VALUE")),
        })
        .collect()
}

fn instance_name(word: &OsString) -> Result<String> {
    let name = word.to_string_lossy();
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        return usage(format!(
            "instance name {name:?}: use letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(name.into_owned())
}

fn parse_list(words: &[OsString]) -> Result<Command> {
    let (found, at) = scan(words, &[LIST])?;
    let mut list = List {
        json: false,
        logs: false,
        name: None,
    };
    for option in found {
        let on = option.value == "true";
        match option.id {
            Id::Help if on => return Ok(Command::Help),
            Id::Json => list.json = on,
            Id::Logs => list.logs = on,
            _ => {}
        }
    }
    if list.json && list.logs {
        return usage("instance list: --json and --logs exclude each other");
    }
    list.name = optional_name(&words[at..])?;
    Ok(Command::List(list))
}

fn parse_stop(words: &[OsString]) -> Result<Command> {
    let (found, at) = scan(words, &[STOP])?;
    let mut stop = Stop {
        all: false,
        signal: Signal::SIGTERM,
        timeout: Duration::from_secs(10),
        name: None,
    };
    for option in found {
        let on = option.value == "true";
        match option.id {
            Id::Help if on => return Ok(Command::Help),
            Id::All => stop.all = on,
            Id::Force if on => stop.signal = Signal::SIGKILL,
            Id::Signal => stop.signal = signal(&option.value)?,
            Id::Timeout => match option.value.parse::<u64>() {
                Ok(secs) => stop.timeout = Duration::from_secs(secs),
                Err(_) => return usage(format!("--timeout {}: not seconds", option.value)),
            },
            _ => {}
        }
    }
    stop.name = optional_name(&words[at..])?;
    if stop.name.is_some() == stop.all {
        return usage("instance stop needs exactly one of NAME or --all");
    }
    Ok(Command::Stop(stop))
}

fn optional_name(words: &[OsString]) -> Result<Option<String>> {
    match words {
        [] => Ok(None),
        [name] => instance_name(name).map(Some),
        _ => usage("expected at most one instance NAME"),
    }
}

/// `TERM`, `SIGTERM`, `sigterm` or `15`.
pub fn signal(text: &str) -> Result<Signal> {
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number).or_else(|_| usage(format!("unknown signal {text}")));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse()
        .or_else(|_| usage(format!("unknown signal {text}")))
}

/// Refuses anything but a directory image, or `instance://NAME` where `allow_instance`.
pub fn check_image(image: &OsString, allow_instance: bool) -> Result<()> {
    if image.as_bytes().starts_with(b"instance://") {
        if allow_instance {
            return Ok(());
        }
        return usage("an instance cannot start from instance://: give a directory image");
    }
    if !std::path::Path::new(image).is_dir() {
        bail!(
            "image {}: the stand-in runs only directory images (Apptainer sandboxes), \
             not SIF files or registry URIs",
            image.to_string_lossy()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    fn launch(line: &str) -> Launch {
        match parse(&words(line)).expect("parses").1 {
            Command::Launch(launch) => *launch,
            other => panic!("not a launch: {other:?}"),
        }
    }

    fn refused(line: &str) -> String {
        let err = parse(&words(line)).expect_err("refused");
        assert!(is_usage(&err), "{err:#}");
        err.to_string()
    }

    #[test]
    fn options_end_at_the_image() {
        let l = launch("-q exec --net --network none -B /a:/b:ro,/c img /bin/sh -c --net");
        assert_eq!(l.action, Action::Exec);
        assert!(l.options.net);
        assert_eq!(l.image, "img");
        assert_eq!(l.args, words("/bin/sh -c --net"));
        let dsts: Vec<_> = l.options.binds.iter().map(|b| b.dst.clone()).collect();
        assert_eq!(dsts, [PathBuf::from("/b"), PathBuf::from("/c")]);
        assert!(l.options.binds[0].readonly);
    }

    #[test]
    fn pflag_spellings() {
        let l = launch("run -ecB/x:/y --env=A=1 --env B=2,C=3 --env D=a,b --net=false -- -img");
        assert!(l.options.cleanenv && l.options.contain && !l.options.net);
        assert_eq!(l.options.binds[0].src, PathBuf::from("/x"));
        let env: Vec<String> = l
            .options
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(env, ["A=1", "B=2", "C=3", "D=a,b"]);
        assert_eq!(l.image, "-img");
    }

    #[test]
    fn instance_words() {
        let l = launch("instance start --fakeroot img bubble a b");
        assert_eq!(l.action, Action::InstanceStart);
        assert_eq!(l.name.as_deref(), Some("bubble"));
        assert_eq!(l.args, words("a b"));
        let Command::Stop(stop) = parse(&words("instance stop -s KILL x")).unwrap().1 else {
            panic!("not stop");
        };
        assert_eq!(stop.signal, Signal::SIGKILL);
        assert_eq!(signal("usr1").unwrap(), Signal::SIGUSR1);
        assert_eq!(signal("15").unwrap(), Signal::SIGTERM);
    }

    #[test]
    fn refusals() {
        assert!(refused("exec --bogus img true").contains("--bogus"));
        assert!(refused("exec -Z img true").contains("'Z'"));
        assert!(refused("exec --network bridge img true").contains("none"));
        assert!(refused("exec --network-args x img true").contains("not supported"));
        assert!(refused("exec --bind").contains("needs an argument"));
        assert!(refused("exec img").contains("COMMAND"));
        assert!(refused("run --shell /bin/sh img").contains("--shell"));
        assert!(refused("instance start img ../x").contains("instance name"));
        assert!(refused("instance stop").contains("NAME or --all"));
        assert!(refused("build x y").contains("unknown command"));
    }
}
