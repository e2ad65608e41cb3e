//! Errors of the host-local client, and the CNI error object a plugin prints.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Result of every fallible call in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong between us and `host-local`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No executable `host-local` in any directory searched.
    #[error(
        "host-local CNI plugin not found in {}: install containernetworking-plugins or set CNI_PATH",
        join_paths(searched)
    )]
    NotFound {
        /// The directories looked in, in order.
        searched: Vec<PathBuf>,
    },

    /// The plugin answered with a CNI error object.
    #[error(
        "host-local {command} failed: {msg}{} (CNI error code {code})",
        details_suffix(details)
    )]
    Plugin {
        /// The CNI command that failed (`ADD`, `DEL`, `CHECK`, `VERSION`).
        command: &'static str,
        /// The CNI error code (1-99 are defined by the spec, 999 is generic).
        code: u32,
        /// The plugin's message.
        msg: String,
        /// The plugin's details, empty when it gave none.
        details: String,
    },

    /// The plugin could not be started or fed its configuration.
    #[error("cannot run {}: {source}", path.display())]
    Exec {
        /// The plugin binary.
        path: PathBuf,
        /// Why starting it failed.
        source: io::Error,
    },

    /// The plugin broke the protocol: garbage on stdout, a non-zero exit
    /// without an error object, death by a signal.
    #[error("host-local {command} broke the CNI protocol: {reason}")]
    Protocol {
        /// The CNI command that was running.
        command: &'static str,
        /// What was wrong, with an excerpt of what the plugin printed.
        reason: String,
    },

    /// The plugin did not finish in time; it has been killed and reaped.
    #[error(
        "host-local {command} did not finish within {timeout:?} and was killed: \
         check {} and whether another process holds its data directory lock",
        path.display()
    )]
    Timeout {
        /// The CNI command that was running.
        command: &'static str,
        /// The plugin binary.
        path: PathBuf,
        /// The limit that was exceeded.
        timeout: Duration,
    },

    /// The plugin speaks no CNI version we speak.
    #[error(
        "{} speaks CNI {}, none of which hpk-ipam speaks ({}): \
         install containernetworking-plugins 0.8 or newer",
        path.display(),
        supported.join(", "),
        crate::SUPPORTED_VERSIONS.join(", ")
    )]
    NoCommonVersion {
        /// The plugin binary.
        path: PathBuf,
        /// The versions the plugin says it speaks.
        supported: Vec<String>,
    },

    /// The command does not exist in the CNI version in use.
    #[error(
        "host-local {command} needs CNI 0.4.0 or newer but {version} is in use: \
         upgrade containernetworking-plugins"
    )]
    Unsupported {
        /// The CNI command asked for.
        command: &'static str,
        /// The CNI version in use.
        version: String,
    },

    /// An argument that host-local would reject, caught before calling it.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        /// Which argument (`container id`, `interface name`, ...).
        what: &'static str,
        /// The value given.
        value: String,
        /// The rule it breaks, phrased as what to do.
        reason: &'static str,
    },
}

impl Error {
    /// True when host-local found no free address in the range, so the
    /// caller can say which subnet is full.
    pub fn is_exhausted(&self) -> bool {
        matches!(self, Error::Plugin { msg, .. } if msg.contains("no IP addresses available"))
    }
}

/// The error object a CNI plugin prints on stdout when it fails.
#[derive(Debug, Deserialize, PartialEq)]
pub(crate) struct ErrorObject {
    pub code: u32,
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl ErrorObject {
    /// Parses `stdout` as an error object; `None` when it is not one.
    pub fn parse(stdout: &[u8]) -> Option<Self> {
        serde_json::from_slice(stdout).ok()
    }

    /// Turns the object into the error the caller sees.
    pub fn into_error(self, command: &'static str) -> Error {
        Error::Plugin {
            command,
            code: self.code,
            msg: self.msg,
            details: self.details,
        }
    }
}

fn join_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({details})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_with_details() {
        let text = br#"{"code":4,"msg":"invalid characters in containerID","details":"a/b"}"#;
        let err = ErrorObject::parse(text).unwrap().into_error("ADD");
        assert!(matches!(err, Error::Plugin { code: 4, .. }));
        assert_eq!(
            err.to_string(),
            "host-local ADD failed: invalid characters in containerID (a/b) (CNI error code 4)"
        );
    }

    #[test]
    fn error_object_with_version_and_without_details() {
        let text = br#"{"cniVersion":"1.0.0","code":999,"msg":"boom"}"#;
        let obj = ErrorObject::parse(text).unwrap();
        assert_eq!(
            obj,
            ErrorObject {
                code: 999,
                msg: "boom".into(),
                details: String::new()
            }
        );
    }

    #[test]
    fn results_and_junk_are_not_error_objects() {
        let result = br#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}"#;
        assert_eq!(ErrorObject::parse(result), None);
        assert_eq!(ErrorObject::parse(b"junk"), None);
        assert_eq!(ErrorObject::parse(b""), None);
    }

    #[test]
    fn exhaustion_is_recognised() {
        let msg = "failed to allocate for range 0: no IP addresses available in range set: \
                   10.9.0.1-10.9.0.2";
        let err = ErrorObject {
            code: 999,
            msg: msg.into(),
            details: String::new(),
        }
        .into_error("ADD");
        assert!(err.is_exhausted());
        assert!(err.to_string().contains("10.9.0.1-10.9.0.2"));

        let other = Error::Protocol {
            command: "ADD",
            reason: "no IP addresses available".into(),
        };
        assert!(!other.is_exhausted());
    }

    #[test]
    fn not_found_names_dirs_and_remedy() {
        let err = Error::NotFound {
            searched: vec!["/a".into(), "/opt/cni/bin".into()],
        };
        let text = err.to_string();
        assert!(text.contains("/a, /opt/cni/bin"), "{text}");
        assert!(text.contains("install containernetworking-plugins or set CNI_PATH"));
    }
}
