//! `HostLocal`: finding the plugin, learning its version, and the ADD, DEL
//! and CHECK calls.

use std::env;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, info};

use crate::error::ErrorObject;
use crate::exec::{self, Invocation, Output};
use crate::version::{self, CHECK_SINCE, VersionInfo};
use crate::{AddResult, Error, IpamConfig, Result, validate};

/// Directories searched after `CNI_PATH`, in order.
pub const DEFAULT_DIRS: &[&str] = &["/opt/cni/bin", "/usr/libexec/cni", "/usr/lib/cni"];

/// The plugin's file name.
const PLUGIN: &str = "host-local";

/// host-local requires `CNI_NETNS` but never opens it. The path does not
/// exist, so a plugin that did try to enter it would fail loudly instead of
/// acting on some other namespace.
const NETNS_PLACEHOLDER: &str = "/nonexistent/hpk-ipam/no-netns";

/// A `host-local` binary and the CNI version used with it.
#[derive(Debug, Clone)]
pub struct HostLocal {
    path: PathBuf,
    cni_version: String,
    common_versions: Vec<String>,
    timeout: Duration,
}

impl HostLocal {
    /// How long a call may take before the plugin is killed.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// Finds the plugin in each directory of `cni_path` (a `CNI_PATH`-style
    /// colon list; `None` when unset), then in [`DEFAULT_DIRS`], and runs
    /// VERSION on the first found.
    pub fn discover(cni_path: Option<&OsStr>) -> Result<Self> {
        Self::discover_in(&Self::search_dirs(cni_path))
    }

    /// The directories [`HostLocal::discover`] searches, in order, without
    /// empty entries or repeats.
    pub fn search_dirs(cni_path: Option<&OsStr>) -> Vec<PathBuf> {
        let given = cni_path.map(env::split_paths).into_iter().flatten();
        let defaults = DEFAULT_DIRS.iter().map(PathBuf::from);
        let mut dirs: Vec<PathBuf> = Vec::new();
        for dir in given.chain(defaults) {
            if !dir.as_os_str().is_empty() && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }

    /// Takes the first executable `host-local` in `dirs`, with no fallback,
    /// and runs VERSION on it.
    pub fn discover_in(dirs: &[PathBuf]) -> Result<Self> {
        let found = dirs
            .iter()
            .map(|d| d.join(PLUGIN))
            .find(|p| is_executable(p));
        match found {
            Some(path) => Self::at(path),
            None => Err(Error::NotFound {
                searched: dirs.to_vec(),
            }),
        }
    }

    /// Uses the binary at `path` and runs VERSION on it to pick the newest
    /// CNI version both sides speak.
    pub fn at(path: PathBuf) -> Result<Self> {
        let mut plugin = HostLocal {
            path,
            cni_version: String::new(),
            common_versions: Vec::new(),
            timeout: Self::DEFAULT_TIMEOUT,
        };
        plugin.common_versions = plugin.query_versions()?;
        plugin.cni_version = plugin.common_versions.last().cloned().unwrap_or_default();
        info!(path = %plugin.path.display(), cni_version = %plugin.cni_version, "using host-local");
        Ok(plugin)
    }

    /// Bounds every later call by `timeout` instead of [`Self::DEFAULT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Pins the CNI version, which must be one both sides speak.
    pub fn with_cni_version(mut self, version: &str) -> Result<Self> {
        if !self.common_versions.iter().any(|v| v == version) {
            return Err(Error::InvalidArgument {
                what: "CNI version",
                value: version.to_string(),
                reason: "pick one of the versions both hpk-ipam and the plugin speak",
            });
        }
        self.cni_version = version.to_string();
        Ok(self)
    }

    /// The plugin binary.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The CNI version used for ADD (and for DEL and CHECK without a
    /// previous result).
    pub fn cni_version(&self) -> &str {
        &self.cni_version
    }

    /// The versions both sides speak, oldest first.
    pub fn common_versions(&self) -> &[String] {
        &self.common_versions
    }

    /// Allocates an address for `container_id` on `ifname`.
    pub fn add(&self, cfg: &IpamConfig, container_id: &str, ifname: &str) -> Result<AddResult> {
        check_args(cfg, container_id, ifname)?;
        let stdin = cfg.netconf(&self.cni_version, None);
        let stdout = self.call("ADD", Some((container_id, ifname)), &stdin)?;

        let result = AddResult::from_slice(&stdout).map_err(|e| Error::Protocol {
            command: "ADD",
            reason: format!(
                "stdout is not a CNI result ({e}); stdout: {}",
                excerpt(&stdout)
            ),
        })?;
        debug!(container_id, ifname, ips = ?result.ips, "host-local ADD");
        Ok(result)
    }

    /// Releases what `container_id` holds on `ifname`. Releasing nothing
    /// succeeds, so teardown can be repeated.
    pub fn del(
        &self,
        cfg: &IpamConfig,
        container_id: &str,
        ifname: &str,
        prev: Option<&AddResult>,
    ) -> Result<()> {
        check_args(cfg, container_id, ifname)?;
        let stdin = self.netconf_with_prev(cfg, prev);
        let stdout = self.call("DEL", Some((container_id, ifname)), &stdin)?;
        log_unexpected_output("DEL", &stdout);
        debug!(container_id, ifname, "host-local DEL");
        Ok(())
    }

    /// Asks host-local whether `container_id` still holds its address on
    /// `ifname`. Needs CNI 0.4.0 or newer.
    pub fn check(
        &self,
        cfg: &IpamConfig,
        container_id: &str,
        ifname: &str,
        prev: &AddResult,
    ) -> Result<()> {
        let version = self.version_for(Some(prev));
        if !version::at_least(version, CHECK_SINCE) {
            return Err(Error::Unsupported {
                command: "CHECK",
                version: version.to_string(),
            });
        }
        check_args(cfg, container_id, ifname)?;

        let stdin = self.netconf_with_prev(cfg, Some(prev));
        let stdout = self.call("CHECK", Some((container_id, ifname)), &stdin)?;
        log_unexpected_output("CHECK", &stdout);
        Ok(())
    }

    /// The version for a call that refers to `prev`: the one `prev` was
    /// written in when the plugin still speaks it, so `prevResult` and
    /// `cniVersion` agree; ours otherwise.
    fn version_for<'a>(&'a self, prev: Option<&'a AddResult>) -> &'a str {
        match prev {
            Some(p) if self.common_versions.contains(&p.cni_version) => &p.cni_version,
            _ => &self.cni_version,
        }
    }

    /// The netconf for DEL and CHECK: `prevResult` goes along from 0.4.0 on,
    /// and only in the version it was written in.
    fn netconf_with_prev(&self, cfg: &IpamConfig, prev: Option<&AddResult>) -> Vec<u8> {
        let version = self.version_for(prev);
        let prev = prev.filter(|p| p.cni_version == version);
        let prev = prev.filter(|_| version::at_least(version, CHECK_SINCE));
        cfg.netconf(version, prev)
    }

    fn query_versions(&self) -> Result<Vec<String>> {
        let stdin = format!(r#"{{"cniVersion":"{}"}}"#, newest_ours());
        let stdout = match self.call("VERSION", None, stdin.as_bytes()) {
            // Plugins older than CNI 0.3 know no VERSION and speak only 0.1.0.
            Err(Error::Plugin { msg, .. }) if msg.contains("unknown CNI_COMMAND") => {
                return Err(self.no_common_version(vec!["0.1.0".into()]));
            }
            other => other?,
        };

        let info: VersionInfo = serde_json::from_slice(&stdout).map_err(|e| Error::Protocol {
            command: "VERSION",
            reason: format!(
                "stdout is not a version answer ({e}); stdout: {}",
                excerpt(&stdout)
            ),
        })?;
        let common = version::common(&info.supported_versions);
        if common.is_empty() {
            return Err(self.no_common_version(info.supported_versions));
        }
        Ok(common)
    }

    fn no_common_version(&self, supported: Vec<String>) -> Error {
        Error::NoCommonVersion {
            path: self.path.clone(),
            supported,
        }
    }

    /// Runs one command and returns stdout when the plugin succeeded.
    fn call(
        &self,
        command: &'static str,
        target: Option<(&str, &str)>,
        stdin: &[u8],
    ) -> Result<Vec<u8>> {
        let invocation = Invocation {
            command,
            env: self.env(command, target),
            stdin,
            timeout: self.timeout,
        };
        debug!(command, path = %self.path.display(), "running host-local");
        let output = exec::run(&self.path, &invocation)?;
        interpret(command, output)
    }

    /// The CNI variables of one call; `target` is the container id and
    /// interface name, absent for VERSION.
    fn env(
        &self,
        command: &'static str,
        target: Option<(&str, &str)>,
    ) -> Vec<(&'static str, OsString)> {
        let plugin_dir = self.path.parent().unwrap_or(Path::new("."));
        let mut env = vec![
            ("CNI_COMMAND", OsString::from(command)),
            ("CNI_PATH", plugin_dir.as_os_str().to_owned()),
        ];
        if let Some((container_id, ifname)) = target {
            env.push(("CNI_CONTAINERID", container_id.into()));
            env.push(("CNI_IFNAME", ifname.into()));
            env.push(("CNI_NETNS", NETNS_PLACEHOLDER.into()));
        }
        env
    }
}

/// Turns the plugin's exit and output into stdout or an error.
fn interpret(command: &'static str, output: Output) -> Result<Vec<u8>> {
    // A CNI error object counts as failure even after a zero exit.
    if let Some(object) = ErrorObject::parse(&output.stdout) {
        return Err(object.into_error(command));
    }
    if output.status.success() {
        return Ok(output.stdout);
    }
    Err(Error::Protocol {
        command,
        reason: format!(
            "{} without a CNI error object; stdout: {}; stderr: {}",
            output.status,
            excerpt(&output.stdout),
            excerpt(&output.stderr)
        ),
    })
}

fn check_args(cfg: &IpamConfig, container_id: &str, ifname: &str) -> Result<()> {
    validate::validate_container_id(container_id)?;
    validate::validate_ifname(ifname)?;
    cfg.validate()
}

fn newest_ours() -> &'static str {
    version::SUPPORTED_VERSIONS
        .last()
        .copied()
        .unwrap_or("1.0.0")
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn log_unexpected_output(command: &str, stdout: &[u8]) {
    if !stdout.iter().all(u8::is_ascii_whitespace) {
        debug!(command, stdout = %excerpt(stdout), "plugin printed output where CNI expects none");
    }
}

/// A short, printable excerpt of what a plugin wrote.
fn excerpt(bytes: &[u8]) -> String {
    const MAX_CHARS: usize = 200;
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return "(empty)".to_string();
    }
    let mut shown: String = text.chars().take(MAX_CHARS).collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        shown.push('…');
    }
    format!("{shown:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn output(code: i32, stdout: &str, stderr: &str) -> Output {
        Output {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn search_order_and_dedup() {
        let dirs = HostLocal::search_dirs(Some(OsStr::new("/a::/usr/lib/cni:/b")));
        let expected = [
            "/a",
            "/usr/lib/cni",
            "/b",
            "/opt/cni/bin",
            "/usr/libexec/cni",
        ];
        assert_eq!(dirs, expected.map(PathBuf::from));
        let unset = HostLocal::search_dirs(None);
        assert_eq!(
            unset,
            DEFAULT_DIRS.iter().map(PathBuf::from).collect::<Vec<_>>()
        );
    }

    #[test]
    fn interpret_success_error_object_and_garbage() {
        assert_eq!(interpret("DEL", output(0, "", "")).unwrap(), b"");

        let failed = interpret("ADD", output(1, r#"{"code":11,"msg":"try later"}"#, ""));
        assert!(matches!(failed, Err(Error::Plugin { code: 11, .. })));

        let silent = interpret("ADD", output(2, "", "panic: oops")).unwrap_err();
        let text = silent.to_string();
        assert!(matches!(silent, Error::Protocol { .. }));
        assert!(
            text.contains("exit status: 2") && text.contains("panic: oops"),
            "{text}"
        );
    }

    #[test]
    fn excerpt_is_short_and_quoted() {
        assert_eq!(excerpt(b"  \n"), "(empty)");
        assert_eq!(excerpt(b"junk\n"), "\"junk\"");
        let long = excerpt("x".repeat(500).as_bytes());
        assert!(long.chars().count() < 210 && long.contains('…'));
    }
}
