//! Helpers shared by the integration tests: the real plugin, configs in
//! temporary data directories, and deliberately broken stand-in plugins.

#![allow(dead_code)] // each test binary uses a different part

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use hpk_ipam::{Error, HostLocal, IpamConfig};
use tempfile::TempDir;

/// Where Debian's containernetworking-plugins puts host-local.
pub const SYSTEM_PLUGIN: &str = "/usr/lib/cni/host-local";

/// The real host-local; the tests fail, not pass, without it.
pub fn real_plugin() -> HostLocal {
    HostLocal::at(PathBuf::from(SYSTEM_PLUGIN))
        .expect("these tests need /usr/lib/cni/host-local: install containernetworking-plugins")
}

/// A config for `subnet` with its data directory in `dir`.
pub fn config(dir: &TempDir, subnet: &str) -> IpamConfig {
    IpamConfig::new("hpk-test", subnet.parse().unwrap(), dir.path().join("data"))
}

/// The file host-local keeps for an allocated address.
pub fn lease_file(cfg: &IpamConfig, addr: impl ToString) -> PathBuf {
    cfg.data_dir.join(&cfg.network_name).join(addr.to_string())
}

/// Writes an executable shell script named host-local into `dir`: a
/// deliberately broken plugin for fault injection.
pub fn fake_plugin(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("host-local");
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A script body that answers VERSION like a CNI 1.0 plugin and runs
/// `other` for every other command.
pub fn answers_version(other: &str) -> String {
    format!(
        "if [ \"$CNI_COMMAND\" = VERSION ]; then\n\
         echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\"]}}'\n\
         exit 0\nfi\n{other}"
    )
}

/// `HostLocal::at`, retried while the script is "text file busy": another
/// test thread may fork while our write descriptor is still open.
pub fn open_fake(path: &Path) -> Result<HostLocal, Error> {
    for _ in 0..100 {
        match HostLocal::at(path.to_path_buf()) {
            Err(Error::Exec { source, .. }) if source.raw_os_error() == Some(26) => {
                thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
    HostLocal::at(path.to_path_buf())
}
