//! Checks the arguments host-local would reject, so the caller gets a clear
//! message before any process runs.

use crate::{Error, Result};

/// Longest interface name Linux accepts (`IFNAMSIZ` minus the NUL).
const IFNAME_MAX: usize = 15;

const ID_RULE: &str = "use letters, digits, '_', '.' and '-', starting with a letter or digit";

/// Checks a container id the way CNI does: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn validate_container_id(id: &str) -> Result<()> {
    check_identifier("container id", id)
}

/// Checks a network name; CNI gives it the same rule as a container id, and
/// host-local uses it as a directory name under its data directory.
pub fn validate_network_name(name: &str) -> Result<()> {
    check_identifier("network name", name)
}

/// Checks an interface name: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or
/// whitespace.
pub fn validate_ifname(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("give a non-empty interface name")
    } else if name.len() > IFNAME_MAX {
        Some("use at most 15 bytes")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are not interface names")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("leave out '/', ':' and whitespace")
    } else {
        None
    };
    reason.map_or(Ok(()), |reason| {
        Err(invalid("interface name", name, reason))
    })
}

fn check_identifier(what: &'static str, value: &str) -> Result<()> {
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(invalid(what, value, ID_RULE))
    }
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> Error {
    Error::InvalidArgument {
        what,
        value: value.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        for good in ["a", "A_b.c-d", "0123abc", &"x".repeat(300)] {
            assert!(validate_container_id(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", ".a", "_a", "a b", "a/b", "a:b", "é", "a\n"] {
            let err = validate_container_id(bad).unwrap_err();
            assert!(matches!(
                err,
                Error::InvalidArgument {
                    what: "container id",
                    ..
                }
            ));
        }
    }

    #[test]
    fn container_id_message() {
        let err = validate_container_id("a/b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid container id \"a/b\": use letters, digits, '_', '.' and '-', \
             starting with a letter or digit"
        );
    }

    #[test]
    fn interface_names() {
        for good in ["eth0", "tap0", "a", "abcdefghijklmno", "a.b-c_d"] {
            assert!(validate_ifname(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "abcdefghijklmnop",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
        ] {
            let err = validate_ifname(bad).unwrap_err();
            assert!(matches!(
                err,
                Error::InvalidArgument {
                    what: "interface name",
                    ..
                }
            ));
        }
    }

    #[test]
    fn interface_name_length_counts_bytes() {
        // 8 two-byte characters: 16 bytes, one over the kernel's limit.
        assert!(validate_ifname(&"é".repeat(8)).is_err());
        assert!(validate_ifname(&"é".repeat(7)).is_ok());
    }

    #[test]
    fn network_names() {
        assert!(validate_network_name("hpk").is_ok());
        for bad in ["", "..", "a/b", "../etc"] {
            assert!(validate_network_name(bad).is_err(), "{bad}");
        }
    }
}
