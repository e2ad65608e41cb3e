//! Removing what a killed run left: its processes end by themselves (the
//! lifeline), but named namespaces and bubble directories stay until someone
//! removes them.

use std::path::Path;
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::bubble::{DIR_PARENT, DIR_PREFIX};

/// Where `ip netns` keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Removes every testbed namespace (`hpkt-<tag>-<pid>-<n>`, made by
/// [`crate::Netns`]) and bubble directory (`/tmp/hpkt-ovb-<pid>-<n>`) whose
/// pid is no longer alive, and says what it removed. Live runs, this one
/// included, are left alone.
pub fn sweep_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for name in stale(NETNS_DIR, "hpkt-") {
        let deleted = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if deleted {
            removed.push(format!("namespace {name}"));
        }
    }
    for name in stale(DIR_PARENT, DIR_PREFIX) {
        let path = Path::new(DIR_PARENT).join(&name);
        if std::fs::remove_dir_all(&path).is_ok() {
            removed.push(format!("directory {}", path.display()));
        }
    }
    removed
}

/// Names in `dir` starting with `prefix` whose owner pid is dead.
fn stale(dir: &str, prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .filter(|name| owner(name).is_some_and(|pid| !alive(pid)))
        .collect()
}

/// The pid in `hpkt-<tag>-<pid>-<n>`.
fn owner(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("hpkt-")?;
    let mut words = rest.rsplitn(3, '-');
    let n = words.next()?;
    let pid = words.next()?;
    let tag = words.next()?;
    if tag.is_empty() || n.parse::<u32>().is_err() {
        return None;
    }
    pid.parse::<i32>().ok().filter(|&pid| pid > 0)
}

/// Whether a process with this pid exists (one we may not signal counts).
fn alive(pid: i32) -> bool {
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_the_pid_in_the_name() {
        assert_eq!(owner("hpkt-ovh-4242-7"), Some(4242));
        assert_eq!(owner("hpkt-ovb-17-0"), Some(17));
        // Tags may hold dashes; the pid is always second from the end.
        assert_eq!(owner("hpkt-a-b-99-3"), Some(99));
    }

    #[test]
    fn foreign_names_have_no_owner() {
        for name in [
            "hpkt-ovh-x-1",
            "hpkt-4242-1",
            "hpkt--4242-1",
            "other-ovh-1-2",
            "hpkt-ovh-0-1",
        ] {
            assert_eq!(owner(name), None, "{name}");
        }
    }
}
