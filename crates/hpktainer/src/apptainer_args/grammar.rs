//! Apptainer's options per action, and the pflag-style scanner over them.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use super::{Action, ArgsError, parse_bool};

pub(super) const RUN: u8 = 1;
pub(super) const EXEC: u8 = 2;
pub(super) const SHELL: u8 = 4;
pub(super) const START: u8 = 8;
pub(super) const IRUN: u8 = 16;
pub(super) const STOP: u8 = 32;
pub(super) const ACTIONS: u8 = RUN | EXEC | SHELL;
pub(super) const INSTANCES: u8 = START | IRUN;
pub(super) const ALL: u8 = ACTIONS | INSTANCES;

/// One apptainer option: its names, whether it takes a value, and where it is accepted.
#[derive(Debug)]
pub(super) struct OptSpec {
    pub(super) long: &'static str,
    pub(super) short: Option<u8>,
    pub(super) takes_value: bool,
    pub(super) scope: u8,
    pub(super) network: bool,
}

pub(super) const fn value(long: &'static str, short: Option<u8>, scope: u8) -> OptSpec {
    OptSpec {
        long,
        short,
        takes_value: true,
        scope,
        network: false,
    }
}

pub(super) const fn flag(long: &'static str, short: Option<u8>, scope: u8) -> OptSpec {
    OptSpec {
        long,
        short,
        takes_value: false,
        scope,
        network: false,
    }
}

pub(super) const fn network(long: &'static str, short: Option<u8>, takes_value: bool) -> OptSpec {
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
pub(super) static OPTIONS: &[OptSpec] = &[
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

pub(super) fn find_long(name: &[u8], action: Action) -> Option<&'static OptSpec> {
    let scope = action.scope();
    OPTIONS
        .iter()
        .find(|o| o.scope & scope != 0 && o.long.as_bytes() == name)
}

pub(super) fn find_short(name: u8, action: Action) -> Option<&'static OptSpec> {
    let scope = action.scope();
    OPTIONS
        .iter()
        .find(|o| o.scope & scope != 0 && o.short == Some(name))
}

// ---------------------------------------------------------------------------------------------
// Scanning options the way pflag does.

/// One option as apptainer will see it.
#[derive(Debug)]
pub(super) struct Occurrence {
    pub(super) spec: &'static OptSpec,
    /// The value: the next word or text after `=` (or after a shorthand); for a flag, only an
    /// explicit `=value`.
    pub(super) value: Option<OsString>,
}

impl Occurrence {
    /// `--long` or `--long=value`: the same meaning in a form that stands alone.
    pub(super) fn canonical(&self) -> OsString {
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
pub(super) struct Group {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) occurrences: Vec<Occurrence>,
}

impl Group {
    pub(super) fn has(&self, long: &str) -> bool {
        self.occurrences.iter().any(|o| o.spec.long == long)
    }

    /// The words as the user wrote them, for messages.
    pub(super) fn display(&self, words: &[OsString]) -> String {
        let words = words[self.start..self.end]
            .iter()
            .map(|w| w.to_string_lossy());
        words.collect::<Vec<_>>().join(" ")
    }
}

/// The options part of an argument list.
#[derive(Debug)]
pub(super) struct Scan {
    pub(super) words: Vec<OsString>,
    pub(super) groups: Vec<Group>,
    /// Words taken by options, not counting a final `--`.
    pub(super) options_len: usize,
    /// Index of the first positional word.
    pub(super) end: usize,
    pub(super) end_of_options: bool,
}

impl Scan {
    pub(super) fn occurrences(&self) -> impl Iterator<Item = &Occurrence> {
        self.groups.iter().flat_map(|g| g.occurrences.iter())
    }
}

/// Reads options from the start of `words` until the first positional word or `--`.
pub(super) fn scan(words: &[OsString], action: Action) -> Result<Scan, ArgsError> {
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
pub(super) fn scan_long(
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
pub(super) fn scan_shorts(
    words: &[OsString],
    start: usize,
    action: Action,
) -> Result<Group, ArgsError> {
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
pub(super) fn next_value(words: &[OsString], start: usize) -> Result<OsString, ArgsError> {
    let option = words[start].to_string_lossy().into_owned();
    words
        .get(start + 1)
        .cloned()
        .ok_or(ArgsError::MissingValue { option })
}

/// A boolean given a value through `=` must be one pflag accepts.
pub(super) fn check_flag_value(occurrence: &Occurrence, word: &OsStr) -> Result<(), ArgsError> {
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

pub(super) fn unknown(action: Action, option: &OsStr, group: Option<&OsString>) -> ArgsError {
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
