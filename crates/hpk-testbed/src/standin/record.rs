//! The invocation log: what tests read to see how apptainer was called.
//!
//! When `HPK_STANDIN_LOG` names a file, each invocation appends one JSON line before anything
//! else happens: `{"argv": [arguments after the program name], "env": {NAME: VALUE}}` with every
//! `APPTAINER_*`, `APPTAINERENV_*`, `SINGULARITY_*` and `SINGULARITYENV_*` variable. Bytes that
//! are not UTF-8 are replaced (U+FFFD).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;

use anyhow::{Context, Result};

/// Variables recorded, by prefix.
const PREFIXES: [&str; 4] = [
    "APPTAINER_",
    "APPTAINERENV_",
    "SINGULARITY_",
    "SINGULARITYENV_",
];

/// Appends this invocation to `$HPK_STANDIN_LOG`, if set.
pub fn invocation(args: &[OsString]) -> Result<()> {
    let Some(path) = std::env::var_os("HPK_STANDIN_LOG") else {
        return Ok(());
    };
    let argv: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let env: BTreeMap<String, String> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .filter(|(k, _)| PREFIXES.iter().any(|p| k.starts_with(p)))
        .collect();
    let mut line = serde_json::to_vec(&serde_json::json!({ "argv": argv, "env": env }))?;
    line.push(b'\n');
    // One write on an O_APPEND file: concurrent invocations never interleave their lines.
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(&line))
        .with_context(|| {
            format!(
                "record the invocation in HPK_STANDIN_LOG={}",
                std::path::Path::new(&path).display()
            )
        })
}
