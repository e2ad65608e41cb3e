//! CNI versions: which we speak, and which one to use with a given plugin.

use serde::Deserialize;

/// The CNI versions this crate speaks, oldest first.
///
/// 0.1.0 and 0.2.0 are left out: their results have another shape (`ip4`,
/// `ip6`) and no plugin still in use speaks only those.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The version CHECK and `prevResult` on DEL appeared in.
pub(crate) const CHECK_SINCE: (u32, u32, u32) = (0, 4, 0);

/// What a plugin prints for `VERSION`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VersionInfo {
    pub supported_versions: Vec<String>,
}

/// The versions both sides speak, oldest first.
pub(crate) fn common(theirs: &[String]) -> Vec<String> {
    SUPPORTED_VERSIONS
        .iter()
        .filter(|ours| theirs.iter().any(|t| t == *ours))
        .map(|v| v.to_string())
        .collect()
}

/// True when `version` is `min` or newer; an unparsable version is not.
pub(crate) fn at_least(version: &str, min: (u32, u32, u32)) -> bool {
    parse(version).is_some_and(|v| v >= min)
}

fn parse(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let triple = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(triple)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn picks_the_newest_common_version() {
        let debian = strings(&["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]);
        assert_eq!(common(&debian).last().unwrap(), "1.0.0");

        let newer = strings(&["0.4.0", "1.0.0", "1.1.0", "1.2.0"]);
        assert_eq!(common(&newer).last().unwrap(), "1.1.0");

        let old = strings(&["0.1.0", "0.2.0", "0.3.0", "0.3.1"]);
        assert_eq!(common(&old), strings(&["0.3.0", "0.3.1"]));
    }

    #[test]
    fn nothing_in_common() {
        assert!(common(&strings(&["0.1.0", "0.2.0"])).is_empty());
        assert!(common(&[]).is_empty());
    }

    #[test]
    fn version_order() {
        assert!(at_least("0.4.0", CHECK_SINCE));
        assert!(at_least("1.0.0", CHECK_SINCE));
        assert!(at_least("0.10.0", CHECK_SINCE));
        assert!(!at_least("0.3.1", CHECK_SINCE));
        assert!(!at_least("1.0", CHECK_SINCE));
        assert!(!at_least("1.0.0.0", CHECK_SINCE));
        assert!(!at_least("x", CHECK_SINCE));
    }

    #[test]
    fn version_answer_parses() {
        let text = r#"{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}"#;
        let info: VersionInfo = serde_json::from_str(text).unwrap();
        assert_eq!(info.supported_versions, strings(&["0.4.0", "1.0.0"]));
    }
}
