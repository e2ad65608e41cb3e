//! A container's network from allocation to release, and reclamation of
//! what dead containers left.
//!
//! Theory of operation. Every step that creates something is preceded by a
//! state record that says so: the record is written (phase `Allocating`)
//! before host-local is asked for an address, updated (`Allocated`) with the
//! lease, and updated again (`Running`) once the relay runs. Whatever point a
//! crash interrupts, the record names everything that may exist, and
//! [`release`] undoes each item whether or not it was ever made (host-local
//! DEL, stopping a relay, removing a directory are all idempotent).
//! Allocation and reclamation happen under the state lock, so `gc` never
//! frees an address a starting container is about to record, and the bridge
//! is created once however many containers start together.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use hpk_ipam::{HostLocal, IpamConfig};
use hpk_net_daemon::killpoint;
use hpk_net_daemon::veth::DataPathMode;
use hpk_netconf::{Ipv4Net, MacAddr, Netlink};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::relay_server::{self, RelaySpec};
use crate::settings::{CNI_IFNAME, NETWORK_NAME, SOCKET_NAME, Settings};
use crate::state::{self, DataPath, Phase, ProcessRef, Record, RecordOrError, StateDir};
use crate::subnet_env::SubnetEnv;
use crate::{bridge, nat};

/// Everything validated and opened before a container is set up.
pub struct Context {
    pub settings: Settings,
    pub subnet: SubnetEnv,
    pub ipam: HostLocal,
    pub state: StateDir,
    pub netlink: Netlink,
    pub daemon: PathBuf,
}

impl Context {
    /// Validates the environment (subnet.env, host-local, hpk-net-daemon,
    /// run dir, socket path length) before anything is created.
    pub fn open(settings: Settings) -> Result<Self> {
        let subnet = SubnetEnv::load(&settings.subnet_env)?;
        let ipam = HostLocal::discover(settings.cni_path.as_deref())?;
        let daemon = settings.net_daemon_path()?;
        check_socket_path(&settings)?;
        let state = StateDir::open(&settings.run_dir)?;
        let netlink = Netlink::open()?;
        Ok(Self {
            settings,
            subnet,
            ipam,
            state,
            netlink,
            daemon,
        })
    }

    /// The host-local configuration for this bubble's subnet.
    pub fn ipam_config(&self) -> IpamConfig {
        let data_dir = self.settings.cni_data_dir.clone();
        IpamConfig::new(NETWORK_NAME, self.subnet.subnet, data_dir)
    }
}

/// What a container is attached with.
pub struct Attachment<'a> {
    pub image: String,
    pub command: Vec<String>,
    pub instance: Option<String>,
    pub log_level: &'a str,
}

/// Allocates an address, makes sure the bridge and NAT are in place, and
/// starts the relay; returns the record in phase `Running`. On failure,
/// everything made so far is released again.
pub async fn attach(ctx: &Context, what: Attachment<'_>) -> Result<Record> {
    let id = state::new_id();
    let owner = ProcessRef::current().map_err(|err| Error::step("inspect this process", err))?;
    let mut record = Record::new(id.clone(), owner, DataPath::Relay);
    record.tap = format!("hpk{id}");
    record.socket_dir = ctx.settings.socket_dir(&id);
    record.image = what.image;
    record.command = what.command;
    record.instance = what.instance;

    let lock = ctx.state.lock()?;
    reclaim_dead(ctx).await;
    ctx.state.write(&record)?;
    killpoint::reached(killpoint::BEFORE_ALLOCATION);
    let allocated = allocate(ctx, &mut record).await;
    drop(lock);
    if allocated.is_ok() {
        killpoint::reached(killpoint::AFTER_ALLOCATION);
    }

    let started = match allocated {
        Ok(()) => start_relay(ctx, &mut record, what.log_level),
        Err(err) => Err(err),
    };
    if let Err(err) = started {
        release(ctx, &record).await;
        return Err(err);
    }
    killpoint::reached(killpoint::AFTER_RELAY_STARTED);
    Ok(record)
}

/// Bridge, forwarding, masquerading, then the address (under the lock).
async fn allocate(ctx: &Context, record: &mut Record) -> Result<()> {
    let gateway = ctx.subnet.gateway();
    let bridge = &ctx.settings.bridge;
    bridge::ensure(&ctx.netlink, bridge, gateway, ctx.subnet.mtu).await?;
    nat::enable_forwarding()?;
    if !ctx.subnet.ipmasq {
        nat::ensure_masquerade(ctx.subnet.subnet_network(), ctx.subnet.network)?;
    }

    let config = ctx.ipam_config();
    let result = ctx.ipam.add(&config, &record.cni_container_id, CNI_IFNAME);
    let lease = result.map_err(|err| exhausted_or(err, ctx.subnet.subnet_network()))?;
    let address = lease.ipv4().ok_or_else(|| {
        Error::step(
            "allocate an address",
            "host-local answered without an IPv4 address",
        )
    })?;
    record.address = Some(address.to_string());
    record.gateway = Some(gateway.to_string());
    record.mac = Some(MacAddr::from_ipv4(address.addr()).to_string());
    record.ipam_result = Some(serde_json::to_value(&lease).expect("lease serialises"));
    record.phase = Phase::Allocated;
    ctx.state.write(record)?;
    info!(id = %record.id, %address, "allocated address");
    Ok(())
}

fn exhausted_or(err: hpk_ipam::Error, subnet: Ipv4Net) -> Error {
    if err.is_exhausted() {
        Error::Exhausted {
            subnet,
            source: err,
        }
    } else {
        Error::Ipam(err)
    }
}

fn start_relay(ctx: &Context, record: &mut Record, log_level: &str) -> Result<()> {
    create_private_dir(&record.socket_dir)?;
    let socket = record.socket_dir.join(SOCKET_NAME);
    let allow = allowed_source(record)?;
    let spec = RelaySpec {
        daemon: &ctx.daemon,
        socket: &socket,
        tap: &record.tap,
        bridge: &ctx.settings.bridge,
        mtu: ctx.subnet.mtu,
        log_level,
        allow: Some(allow),
        data_path: ctx.settings.data_path,
        detached: record.instance.is_some(),
    };
    let relay = relay_server::start(&spec)?;
    record.relay_pid = Some(relay.pid);
    record.relay_start_time = Some(relay.start_time);
    record.phase = Phase::Running;
    ctx.state.write(record)?;
    Ok(())
}

/// The MAC and address allocation recorded: the relay forwards frames from
/// these alone, so a container cannot impersonate another.
fn allowed_source(record: &Record) -> Result<(&str, Ipv4Addr)> {
    let address = record
        .address
        .as_deref()
        .and_then(|a| a.parse::<Ipv4Net>().ok());
    match (record.mac.as_deref(), address) {
        (Some(mac), Some(address)) => Ok((mac, address.addr())),
        _ => Err(Error::step(
            "start the relay",
            "the record holds no MAC and address to filter on",
        )),
    }
}

/// Makes a container's socket directory: new, owned by this user (the
/// container's: apptainer runs it as the user who runs hpktainer), mode
/// 0700, inside a parent no other user can write. The relay's sockets are
/// 0600 as well, but only from just after `bind` (whose mode follows the
/// umask), so the directory is what keeps another user from connecting.
fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = dir.parent().expect("a socket directory has a parent");
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder
        .create(parent)
        .map_err(|err| Error::step(format!("create {}", parent.display()), err))?;
    check_private(parent, false)?;

    // Not recursive: the id is fresh, so an existing directory was planted.
    builder.recursive(false);
    builder.create(dir).map_err(|err| {
        let why = if err.kind() == std::io::ErrorKind::AlreadyExists {
            "it exists already, made by someone else; remove it".to_owned()
        } else {
            err.to_string()
        };
        Error::step(format!("create socket directory {}", dir.display()), why)
    })?;
    // The umask may have taken bits away; this user must keep all of them.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|err| Error::step(format!("make {} private", dir.display()), err))?;
    check_private(dir, true)?;
    Ok(())
}

/// Refuses a directory another user owns or may write (`strict`: may
/// enter or read, too), so nobody else can reach or swap a socket in it.
fn check_private(dir: &std::path::Path, strict: bool) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let op = || format!("check socket directory {}", dir.display());
    let meta = std::fs::symlink_metadata(dir).map_err(|err| Error::step(op(), err))?;
    let me = nix::unistd::geteuid().as_raw();
    let open_bits = if strict { 0o077 } else { 0o022 };
    if !meta.is_dir() || meta.uid() != me || meta.mode() & open_bits != 0 {
        return Err(Error::step(
            op(),
            format!(
                "it must be a directory of uid {me} that no other user can {}, but it is uid {} \
                 with mode {:o}; fix or remove it, or choose another --run-dir",
                if strict { "enter" } else { "write" },
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Releases everything `record` names, going on past failures; returns
/// what failed (also logged).
pub async fn release(ctx: &Context, record: &Record) -> Vec<Error> {
    release_marking(ctx, record, None).await
}

/// [`release`], reaching kill point `point` (if any) once the lease is deleted.
async fn release_marking(ctx: &Context, record: &Record, point: Option<&str>) -> Vec<Error> {
    let mut failures = Vec::new();
    let mut releasing = record.clone();
    releasing.phase = Phase::Releasing;
    if let Err(err) = ctx.state.write(&releasing) {
        failures.push(err.into());
    }
    for process in [record.attach(), record.relay()].into_iter().flatten() {
        if let Err(err) = relay_server::stop(&process, true) {
            failures.push(err);
        }
    }
    failures.extend(remove_fast_path_leftovers(ctx, record).await);
    let previous = record
        .ipam_result
        .as_ref()
        .and_then(|value| hpk_ipam::AddResult::from_slice(&serde_json::to_vec(value).ok()?).ok());
    let config = ctx.ipam_config();
    if let Err(err) = ctx.ipam.del(
        &config,
        &record.cni_container_id,
        CNI_IFNAME,
        previous.as_ref(),
    ) {
        failures.push(err.into());
    }
    if let Some(point) = point {
        killpoint::reached(point);
    }
    match std::fs::remove_dir_all(&record.socket_dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            failures.push(Error::step(
                format!("remove {}", record.socket_dir.display()),
                err,
            ));
        }
        _ => {}
    }
    if failures.is_empty()
        && let Err(err) = ctx.state.remove(&record.id)
    {
        failures.push(err.into());
    }
    for failure in &failures {
        warn!(id = %record.id, "release: {failure}");
    }
    failures
}

/// Removes what a fast-path server killed before its own teardown left: the
/// veth host end (it lives on while the container's namespace does) and the
/// port's bridge guard. A server that exited cleanly left neither.
async fn remove_fast_path_leftovers(ctx: &Context, record: &Record) -> Vec<Error> {
    let mut failures = Vec::new();
    let leftover = match ctx.netlink.link(&record.tap).await {
        Ok(link) => link.filter(|link| link.kind.as_deref() == Some("veth")),
        Err(err) => {
            failures.push(Error::step(format!("look for {}", record.tap), err));
            None
        }
    };
    if let Some(link) = &leftover
        && let Err(err) = ctx.netlink.del_link(link.index).await
    {
        failures.push(Error::step(format!("delete veth {}", record.tap), err));
    }
    // Relay-only runs never install a guard: spare them the nft process.
    if leftover.is_some() || ctx.settings.data_path != DataPathMode::Relay {
        match hpk_net_daemon::bridge_guard::remove_table(&record.tap) {
            Ok(true) => info!(id = %record.id, "removed a dead fast path's bridge guard"),
            Ok(false) => {}
            // Without nft no guard was ever installed: auto chose the relay.
            Err(hpk_net_daemon::bridge_guard::GuardError::Spawn(_)) => {}
            // Before a relay was recorded a guard exists only if hpktainer
            // died in the instant between the server's start and the record
            // (worth the attempt above); a refusal then, as without
            // CAP_NET_ADMIN, must not pin a record that holds nothing else.
            Err(err) if record.relay().is_none() => {
                warn!(id = %record.id, "could not remove a possible bridge guard: {err}");
            }
            Err(err) => failures.push(Error::step("remove the bridge guard", err)),
        }
    }
    failures
}

/// What one reclamation pass did.
#[derive(Debug, Default)]
pub struct Reclaimed {
    pub released: Vec<String>,
    pub live: usize,
    pub unreadable: Vec<String>,
}

/// Releases every record whose container is gone. Call under the lock.
pub async fn reclaim_dead(ctx: &Context) -> Reclaimed {
    let mut outcome = Reclaimed::default();
    let entries = match ctx.state.list() {
        Ok(entries) => entries,
        Err(err) => {
            warn!("cannot list state records: {err}");
            return outcome;
        }
    };
    for entry in entries {
        match entry {
            RecordOrError::Record(record) if record.is_live() => outcome.live += 1,
            RecordOrError::Record(record) => {
                info!(id = %record.id, "reclaiming what a dead container left");
                release_marking(ctx, &record, Some(killpoint::DURING_GC)).await;
                outcome.released.push(record.id.clone());
            }
            RecordOrError::Error { id, error } => {
                warn!(%id, "skipping unreadable state record: {error}");
                outcome.unreadable.push(id);
            }
        }
    }
    outcome
}

/// Refuses a run dir whose socket paths would not fit `sun_path`.
fn check_socket_path(settings: &Settings) -> Result<()> {
    let longest = settings
        .socket_dir("0123456789ab")
        .join(format!("{SOCKET_NAME}.ctl"));
    let len = longest.as_os_str().len();
    let max = hpk_net_daemon::server::SUN_PATH_MAX;
    if len > max {
        return Err(Error::PathTooLong {
            what: "socket path",
            path: longest,
            len,
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_socket_directory_is_new_and_private_to_its_user() {
        let run = tempfile::tempdir().unwrap();
        let dir = run.path().join("s").join("0123456789ab");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(dir.parent().unwrap()), 0o700);
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(std::fs::metadata(&dir).unwrap().uid(), me);
    }

    #[test]
    fn a_planted_socket_directory_is_refused() {
        let run = tempfile::tempdir().unwrap();
        let dir = run.path().join("s").join("0123456789ab");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = create_private_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("exists already"), "{err}");
        assert_eq!(mode(&dir), 0o777, "left as found");
    }

    #[test]
    fn a_parent_others_may_write_is_refused() {
        let run = tempfile::tempdir().unwrap();
        let parent = run.path().join("s");
        std::fs::create_dir(&parent).unwrap();
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = create_private_dir(&parent.join("0123456789ab"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no other user can write"), "{err}");
        assert!(!parent.join("0123456789ab").exists());
    }
}
