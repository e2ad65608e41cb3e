//! The container's environment, built the way apptainer builds it, as far as tests can tell.
//!
//! The host environment passes through, except apptainer's own `APPTAINER_*`/`SINGULARITY_*`
//! settings and `PATH`, which becomes the container default; `--cleanenv` keeps only `TERM`.
//! Then, each overriding the one before: `SINGULARITYENV_X`, `APPTAINERENV_X`, `--env-file`,
//! `--env`. `HOME` is the caller's (or `--home`'s destination, or /root under `--fakeroot`).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::cli::Options;

/// The PATH apptainer gives a container that does not set its own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const SETTINGS: [&str; 4] = [
    "APPTAINER_",
    "APPTAINERENV_",
    "SINGULARITY_",
    "SINGULARITYENV_",
];

/// The environment for a container of `image`, from the caller's `host` environment.
pub fn build(
    options: &Options,
    host: &[(OsString, OsString)],
    image: &Path,
) -> Result<BTreeMap<OsString, OsString>> {
    let mut env = BTreeMap::new();
    for (name, value) in host {
        let keep = if options.cleanenv {
            name == "TERM"
        } else {
            !SETTINGS
                .iter()
                .any(|p| name.as_bytes().starts_with(p.as_bytes()))
                && name != "PATH"
        };
        if keep {
            env.insert(name.clone(), value.clone());
        }
    }
    env.insert("PATH".into(), DEFAULT_PATH.into());
    env.insert("HOME".into(), home(options, host));

    for prefix in ["SINGULARITYENV_", "APPTAINERENV_"] {
        for (name, value) in host {
            if let Some(key) = name.as_bytes().strip_prefix(prefix.as_bytes()) {
                if !key.is_empty() {
                    env.insert(OsString::from_vec(key.to_vec()), value.clone());
                }
            }
        }
    }
    for file in &options.env_files {
        for (key, value) in read_env_file(file)? {
            env.insert(key.into(), value.into());
        }
    }
    for (key, value) in &options.env {
        env.insert(key.into(), value.into());
    }

    if let Some(shell) = &options.shell {
        env.insert("SINGULARITY_SHELL".into(), shell.into());
    }
    env.insert("APPTAINER_CONTAINER".into(), image.into());
    let name = image.file_name().unwrap_or(OsStr::new("image"));
    env.insert("APPTAINER_NAME".into(), name.into());
    Ok(env)
}

fn home(options: &Options, host: &[(OsString, OsString)]) -> OsString {
    if let Some(spec) = &options.home {
        // `--home SRC[:DST]`: the container sees DST (the stand-in does not bind it).
        let spec = spec.as_os_str().as_bytes();
        let dst = spec.splitn(2, |&b| b == b':').last().unwrap_or(spec);
        return OsString::from_vec(dst.to_vec());
    }
    if options.fakeroot {
        return "/root".into();
    }
    let host_home = host.iter().find(|(name, _)| name == "HOME");
    host_home.map_or_else(|| "/".into(), |(_, value)| value.clone())
}

/// `KEY=VALUE` lines; blank lines, `#` comments and an `export ` prefix are allowed.
fn read_env_file(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read --env-file {}", path.display()))?;
    let mut pairs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            bail!("--env-file {}: {line:?} is not KEY=VALUE", path.display());
        };
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        pairs.push((key.trim().to_owned(), value.to_owned()));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Vec<(OsString, OsString)> {
        [
            ("PATH", "/host/bin"),
            ("HOME", "/home/u"),
            ("TERM", "xterm"),
            ("KEEP", "1"),
            ("APPTAINER_NET", "1"),
            ("SINGULARITYENV_FOO", "old"),
            ("APPTAINERENV_FOO", "bar"),
            ("APPTAINERENV_PATH", "/x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
    }

    fn get<'a>(env: &'a BTreeMap<OsString, OsString>, key: &str) -> Option<&'a str> {
        env.get(OsStr::new(key)).and_then(|v| v.to_str())
    }

    #[test]
    fn host_env_passes_with_overrides() {
        let mut options = Options::default();
        options.env.push(("FOO".into(), "cli".into()));
        let env = build(&options, &host(), Path::new("/imgs/bb")).unwrap();
        assert_eq!(get(&env, "KEEP"), Some("1"));
        assert_eq!(get(&env, "FOO"), Some("cli"));
        assert_eq!(get(&env, "PATH"), Some("/x"));
        assert_eq!(get(&env, "HOME"), Some("/home/u"));
        assert_eq!(get(&env, "APPTAINER_NET"), None);
        assert_eq!(get(&env, "APPTAINERENV_FOO"), None);
        assert_eq!(get(&env, "APPTAINER_NAME"), Some("bb"));
    }

    #[test]
    fn cleanenv_keeps_term_home_path() {
        let options = Options {
            cleanenv: true,
            fakeroot: true,
            ..Options::default()
        };
        let mut host = host();
        host.retain(|(k, _)| k != "APPTAINERENV_PATH");
        let env = build(&options, &host, Path::new("/bb")).unwrap();
        assert_eq!(get(&env, "KEEP"), None);
        assert_eq!(get(&env, "TERM"), Some("xterm"));
        assert_eq!(get(&env, "HOME"), Some("/root"));
        assert_eq!(get(&env, "PATH"), Some(DEFAULT_PATH));
        assert_eq!(get(&env, "FOO"), Some("bar"));
    }
}
