//! Where hpktainer finds things: every path and name from DESIGN.md's
//! knobs table, resolved once and validated before anything is created.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The network name under which host-local keeps hpktainer's leases.
pub const NETWORK_NAME: &str = "hpktainer";
/// The interface name given to CNI; DEL must repeat what ADD was given.
pub const CNI_IFNAME: &str = "tap0";
/// Where the container sees its socket directory.
pub const CONTAINER_SOCKET_DIR: &str = "/run/hpk";
/// Where the container sees the static relay client.
pub const CONTAINER_CLIENT: &str = "/run/hpk-net-daemon";
/// The socket's file name inside the socket directory (short: sun_path).
pub const SOCKET_NAME: &str = "s";

/// Paths and names one hpktainer invocation works with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// flanneld's subnet.env.
    pub subnet_env: PathBuf,
    /// Runtime state: records, the lock, socket directories.
    pub run_dir: PathBuf,
    /// host-local's data directory.
    pub cni_data_dir: PathBuf,
    /// `CNI_PATH`, searched before the standard plugin directories.
    pub cni_path: Option<OsString>,
    /// The apptainer program (a name on PATH, or a path).
    pub apptainer: OsString,
    /// The bridge the containers' taps join.
    pub bridge: String,
    /// hpk-net-daemon; by default the one beside this executable.
    pub net_daemon: Option<PathBuf>,
    /// Log filter handed to the relay processes.
    pub relay_log_level: String,
    /// The data path the relay server may choose.
    pub data_path: hpk_net_daemon::veth::DataPathMode,
}

impl Settings {
    /// The apptainer program, resolved through PATH.
    pub fn apptainer_path(&self) -> Result<PathBuf> {
        find_program(&self.apptainer).ok_or_else(|| Error::ProgramNotFound {
            program: self.apptainer.to_string_lossy().into_owned(),
            hint: "; install Apptainer or point HPKTAINER_APPTAINER (--apptainer) at it".into(),
        })
    }

    /// The relay binary: `--net-daemon`, else `hpk-net-daemon` beside this
    /// executable, else on PATH.
    pub fn net_daemon_path(&self) -> Result<PathBuf> {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("hpk-net-daemon")));
        let candidate = match &self.net_daemon {
            Some(path) => find_program(path.as_os_str()),
            None => beside
                .filter(|path| is_executable(path))
                .or_else(|| find_program("hpk-net-daemon".as_ref())),
        };
        candidate.ok_or_else(|| Error::ProgramNotFound {
            program: "hpk-net-daemon".into(),
            hint: "; install it beside hpktainer or set HPKTAINER_NET_DAEMON".into(),
        })
    }

    /// The directory holding one container's socket (short, for sun_path).
    pub fn socket_dir(&self, id: &str) -> PathBuf {
        self.run_dir.join("s").join(id)
    }
}

/// Resolves `program` like a shell: a path as is, a bare name through PATH.
pub fn find_program(program: &std::ffi::OsStr) -> Option<PathBuf> {
    let as_path = Path::new(program);
    if as_path.components().count() > 1 || program.to_string_lossy().contains('/') {
        return is_executable(as_path).then(|| as_path.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
