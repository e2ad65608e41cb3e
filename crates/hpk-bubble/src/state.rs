//! The state directory: one subdirectory per bubble (`ID/`) holding its
//! resolv.conf, slirp4netns' API socket and log, and `bubble.json`, the
//! record `stop` and `list` read. Making `ID/` is the lock: only one `start`
//! of an ID can succeed.

use std::fs;
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::Role;
use crate::{Error, Result, sys};

/// What is known about one bubble.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: u32,
    pub role: Role,
    pub cidr: String,
    pub host_ip: Ipv4Addr,
    pub etcd_ip: Ipv4Addr,
    pub instance: String,
    /// The foreground `hpk-bubble start`, with its start time.
    pub pid: i32,
    pub start_time: u64,
    pub instance_pid: Option<i32>,
    pub slirp_pid: Option<i32>,
    /// Set once every forward is in place.
    pub ready: bool,
}

impl Record {
    /// Whether the `hpk-bubble start` that wrote this still runs.
    pub fn alive(&self) -> bool {
        sys::alive(self.pid, self.start_time)
    }
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// `dir`, else `$XDG_RUNTIME_DIR/hpk-bubble`, else `/tmp/hpk-bubble-UID`.
    pub fn new(dir: Option<PathBuf>) -> Self {
        let root = dir.unwrap_or_else(|| match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(runtime) => PathBuf::from(runtime).join("hpk-bubble"),
            None => format!("/tmp/hpk-bubble-{}", nix::unistd::getuid()).into(),
        });
        Self { root }
    }

    /// The directory of bubble `id`.
    pub fn dir(&self, id: u32) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// Makes `ID/`, failing if it exists: the lock on the ID.
    pub fn claim(&self, id: u32) -> Result<Option<PathBuf>> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| Error::io(format!("make {}", self.root.display()), e))?;
        let dir = self.dir(id);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(Some(dir)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(Error::io(format!("make {}", dir.display()), e)),
        }
    }

    /// Writes `record` atomically (a reader never sees half of it).
    pub fn write(&self, record: &Record) -> Result<()> {
        let path = self.dir(record.id).join("bubble.json");
        let scratch = path.with_extension("json.new");
        let text = serde_json::to_vec_pretty(record).expect("a record serialises");
        fs::write(&scratch, text)
            .and_then(|()| fs::rename(&scratch, &path))
            .map_err(|e| Error::io(format!("write {}", path.display()), e))
    }

    /// The record of bubble `id`, if there is one.
    pub fn read(&self, id: u32) -> Result<Option<Record>> {
        let path = self.dir(id).join("bubble.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::Invalid(format!("{} is damaged ({e}); remove it", path.display()))
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        }
    }

    /// Every bubble with a record, by ID.
    pub fn all(&self) -> Result<Vec<Record>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(Error::io(format!("read {}", self.root.display()), e)),
        };
        let mut ids: Vec<u32> = entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        ids.sort_unstable();
        let mut records = Vec::new();
        for id in ids {
            records.extend(self.read(id)?);
        }
        Ok(records)
    }

    /// Removes `ID/` and everything in it.
    pub fn remove(&self, id: u32) -> Result<()> {
        remove_dir(&self.dir(id))
    }
}

fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(Error::io(format!("remove {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_is_exclusive_and_records_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(Some(tmp.path().join("state")));
        assert!(state.claim(3).unwrap().is_some());
        assert!(
            state.claim(3).unwrap().is_none(),
            "a second claim must fail"
        );

        let record = Record {
            id: 3,
            role: Role::Node,
            cidr: "10.0.4.0/24".into(),
            host_ip: Ipv4Addr::new(192, 0, 2, 1),
            etcd_ip: Ipv4Addr::new(192, 0, 2, 2),
            instance: "hpk-bubble-3".into(),
            pid: std::process::id() as i32,
            start_time: sys::start_time(std::process::id() as i32).unwrap(),
            instance_pid: None,
            slirp_pid: None,
            ready: false,
        };
        state.write(&record).unwrap();
        let read = state.all().unwrap();
        assert_eq!(read.len(), 1);
        assert!(read[0].alive());
        assert_eq!(read[0].role, Role::Node);

        state.remove(3).unwrap();
        assert!(state.all().unwrap().is_empty());
    }
}
