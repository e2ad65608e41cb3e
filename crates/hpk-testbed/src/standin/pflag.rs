//! Apptainer's option grammar, as spf13/pflag parses it with interspersing off: options end at
//! the first word that is not one (the image) or at `--`; `--opt=value` and `--opt value`;
//! `-B value`, `-Bvalue` and `-B=value`; boolean shorthands combine (`-ec`) and a value
//! shorthand may end a group (`-eB a`); a boolean takes a value only through `=`
//! (`--net=false`). An option outside the table is refused rather than mistaken for the image.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;

use anyhow::Result;

/// A command line the stand-in refuses; it exits 255, as apptainer does on a usage error.
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

pub fn usage<T>(message: impl Into<String>) -> Result<T> {
    Err(Usage(message.into()).into())
}

/// One option: its names, whether it takes a value, and what it means to the caller.
pub struct Spec<I> {
    long: &'static str,
    short: Option<char>,
    takes_value: bool,
    id: I,
}

/// An option without a value (a boolean).
pub const fn flag<I>(long: &'static str, short: Option<char>, id: I) -> Spec<I> {
    Spec {
        long,
        short,
        takes_value: false,
        id,
    }
}

/// An option with a value.
pub const fn value<I>(long: &'static str, short: Option<char>, id: I) -> Spec<I> {
    Spec {
        long,
        short,
        takes_value: true,
        id,
    }
}

/// An option as found: which, how it was spelled, and its value (flags: "true"/"false").
pub struct Found<I> {
    pub id: I,
    pub spelled: String,
    pub value: String,
}

/// Reads options off the front of `words`; returns them and the index of the first word
/// after them (after a `--` that ended them).
pub fn scan<I: Copy>(words: &[OsString], tables: &[&[Spec<I>]]) -> Result<(Vec<Found<I>>, usize)> {
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(word) = words.get(i) {
        let bytes = word.as_bytes();
        if bytes == b"--" {
            return Ok((found, i + 1));
        }
        if bytes.len() < 2 || bytes[0] != b'-' {
            break;
        }
        let Some(word) = word.to_str() else {
            return usage(format!("option {word:?} is not valid UTF-8"));
        };
        let next = words.get(i + 1);
        let used_next = match word.strip_prefix("--") {
            Some(long) => scan_long(long, next, tables, &mut found)?,
            None => scan_short(&word[1..], next, tables, &mut found)?,
        };
        i += if used_next { 2 } else { 1 };
    }
    Ok((found, i))
}

fn scan_long<I: Copy>(
    word: &str,
    next: Option<&OsString>,
    tables: &[&[Spec<I>]],
    found: &mut Vec<Found<I>>,
) -> Result<bool> {
    let (name, inline) = match word.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (word, None),
    };
    let Some(spec) = lookup(tables, |s| s.long == name) else {
        return usage(format!("unknown flag: --{name}"));
    };
    let spelled = format!("--{name}");
    let (value, used_next) = take_value(spec, &spelled, inline, next)?;
    found.push(Found {
        id: spec.id,
        spelled,
        value,
    });
    Ok(used_next)
}

fn scan_short<I: Copy>(
    group: &str,
    next: Option<&OsString>,
    tables: &[&[Spec<I>]],
    found: &mut Vec<Found<I>>,
) -> Result<bool> {
    for (at, letter) in group.char_indices() {
        let Some(spec) = lookup(tables, |s| s.short == Some(letter)) else {
            return usage(format!("unknown shorthand flag: {letter:?} in -{group}"));
        };
        let rest = &group[at + letter.len_utf8()..];
        let inline = match rest.strip_prefix('=') {
            Some(value) => Some(value),
            None if spec.takes_value && !rest.is_empty() => Some(rest),
            None => None,
        };
        let spelled = format!("-{letter}");
        let (value, used_next) = take_value(spec, &spelled, inline, next)?;
        found.push(Found {
            id: spec.id,
            spelled,
            value,
        });
        if inline.is_some() || spec.takes_value {
            return Ok(used_next);
        }
    }
    Ok(false)
}

/// The option's value: inline, the next word (value options), or "true" (flags).
fn take_value<I>(
    spec: &Spec<I>,
    spelled: &str,
    inline: Option<&str>,
    next: Option<&OsString>,
) -> Result<(String, bool)> {
    if !spec.takes_value {
        return match inline.map(go_bool) {
            None => Ok(("true".into(), false)),
            Some(Some(on)) => Ok((on.to_string(), false)),
            Some(None) => usage(format!("{spelled} takes true or false")),
        };
    }
    if let Some(value) = inline {
        return Ok((value.to_owned(), false));
    }
    match next.map(|word| word.to_str()) {
        Some(Some(value)) => Ok((value.to_owned(), true)),
        Some(None) => usage(format!("the value of {spelled} is not valid UTF-8")),
        None => usage(format!("flag needs an argument: {spelled}")),
    }
}

fn lookup<'a, I>(
    tables: &[&'a [Spec<I>]],
    matches: impl Fn(&Spec<I>) -> bool,
) -> Option<&'a Spec<I>> {
    tables
        .iter()
        .flat_map(|table| table.iter())
        .find(|s| matches(s))
}

/// Go's strconv.ParseBool, which pflag uses for `--flag=value`.
pub fn go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Whether `err` is a usage error (as opposed to a failure while running).
pub fn is_usage(err: &anyhow::Error) -> bool {
    err.downcast_ref::<Usage>().is_some()
}
