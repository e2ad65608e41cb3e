//! Per-container state records under the run directory, and the lock that orders `run` and `gc`.
//!
//! # Theory of operation
//!
//! Every container hpktainer starts has one record, `RUN_DIR/containers/<id>.json`, naming all
//! it holds outside its own process: the address leased from host-local, the tap, the relay, the
//! socket directory. The record is what lets `gc` undo the work of an hpktainer that died.
//!
//! - **Whole or not at all.** A record is replaced, never edited: written to a temporary file in
//!   the same directory, flushed, renamed over the old one, and the directory flushed. rename(2)
//!   within one file system is atomic, so a reader or a crash sees the old record or the new
//!   one. A file that is still unreadable (a foreign writer, a disk error) is reported alone by
//!   [`StateDir::list`] and hides no other record.
//! - **Written before acting.** The record moves through [`Phase`]s and is written *before* each
//!   step that creates something outside the process: `Allocating` before host-local is asked
//!   for an address, `Allocated` (with the CNI result) before the tap and relay exist, `Running`
//!   once apptainer runs, `Releasing` before teardown. A crash at any point leaves a record that
//!   names everything that may exist, and every undo step tolerates what was never done: CNI DEL
//!   of an unknown container succeeds, the tap goes with its relay, directories are removed by
//!   path.
//! - **Alive means the same process.** A container is live while its owner lives. Pids are
//!   reused, so the owner is recorded as a [`ProcessRef`]: pid plus start time (clock ticks
//!   since boot). A zombie is dead.
//! - **One lock, held briefly.** `run` and `gc` take an exclusive flock(2) on `RUN_DIR/lock`
//!   around steps that must not interleave (gc judging a record while its owner is between two
//!   writes). The kernel drops a flock when its holder dies, so a crash never leaves it held.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// The record layout this hpktainer writes and reads.
pub const SCHEMA: u32 = 1;

const CONTAINERS: &str = "containers";
const LOCK: &str = "lock";
const MAX_ID_LEN: usize = 64;

/// What went wrong with the state directory; every message names the path.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The run directory or its `containers` directory could not be created.
    #[error("cannot create {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {}: {source}", path.display())]
    Lock { path: PathBuf, source: io::Error },
    /// No record for this id.
    #[error("no record for container {id} at {}", path.display())]
    NotFound { id: String, path: PathBuf },
    /// A record or the directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// A record could not be written durably.
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    /// A record file that does not hold a record.
    #[error(
        "{} is not a valid hpktainer record ({reason}); once no hpktainer uses it, remove it",
        path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
    /// A record from a newer hpktainer, whose layout this one does not know.
    #[error(
        "{} was written by a newer hpktainer (record schema {found}, this one reads up to \
         {SCHEMA}): manage that container with the newer hpktainer",
        path.display()
    )]
    NewerSchema { path: PathBuf, found: u64 },
    /// An id that cannot name a record file.
    #[error("invalid container id {id:?}: expected 1 to {MAX_ID_LEN} letters, digits, '-' or '_'")]
    InvalidId { id: String },
}

/// Where a container stands; each phase is written before the step it names begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// About to ask host-local for an address: one may have been leased.
    Allocating,
    /// Address leased (`ipam_result` holds it); tap, relay and apptainer may be starting.
    Allocated,
    /// apptainer runs the container.
    Running,
    /// Teardown has begun.
    Releasing,
}

/// How frames reach the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataPath {
    /// A tap on the bridge and hpk-net-daemon relaying over a UNIX socket.
    Relay,
    /// A veth pair on the bridge.
    Veth,
}

/// One container's state, as stored in `containers/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Layout version, [`SCHEMA`] when written by this hpktainer.
    pub schema: u32,
    /// The container id ([`new_id`]), also the file name.
    pub id: String,
    /// When the record was first written, in seconds since the Unix epoch.
    pub created: u64,
    /// Where the container stands.
    pub phase: Phase,
    /// The hpktainer process that owns the container.
    pub pid: i32,
    /// Its start time, field 22 of /proc/PID/stat.
    pub pid_start_time: u64,
    /// The container's address in CIDR form, once leased.
    #[serde(default)]
    pub address: Option<String>,
    /// The gateway in CIDR form, once leased.
    #[serde(default)]
    pub gateway: Option<String>,
    /// The container's MAC address, once its address is known.
    #[serde(default)]
    pub mac: Option<String>,
    /// The host-side tap (or veth) name.
    pub tap: String,
    /// The directory holding the relay socket, bound into the container.
    pub socket_dir: PathBuf,
    /// How frames reach the container.
    pub data_path: DataPath,
    /// The image as given to apptainer.
    pub image: String,
    /// The command line, lossily converted to text (for people and `list`).
    pub command: Vec<String>,
    /// The relay server process, once started.
    #[serde(default)]
    pub relay_pid: Option<i32>,
    /// Its start time.
    #[serde(default)]
    pub relay_start_time: Option<u64>,
    /// The result of CNI ADD, kept for DEL and CHECK.
    #[serde(default)]
    pub ipam_result: Option<serde_json::Value>,
    /// The container id given to CNI.
    pub cni_container_id: String,
    /// The Apptainer instance this network belongs to; such a record lives
    /// as long as its relay, not as long as the hpktainer that made it.
    #[serde(default)]
    pub instance: Option<String>,
    /// The process keeping the client running inside an instance.
    #[serde(default)]
    pub attach_pid: Option<i32>,
    /// Its start time.
    #[serde(default)]
    pub attach_start_time: Option<u64>,
}

impl Record {
    /// A record in phase `Allocating`, owned by `owner`, created now; the CNI container id is
    /// `id`. The remaining fields are empty for the caller to fill in before the first write.
    pub fn new(id: String, owner: ProcessRef, data_path: DataPath) -> Self {
        Record {
            schema: SCHEMA,
            cni_container_id: id.clone(),
            id,
            created: unix_now(),
            phase: Phase::Allocating,
            pid: owner.pid,
            pid_start_time: owner.start_time,
            address: None,
            gateway: None,
            mac: None,
            tap: String::new(),
            socket_dir: PathBuf::new(),
            data_path,
            image: String::new(),
            command: Vec::new(),
            relay_pid: None,
            relay_start_time: None,
            ipam_result: None,
            instance: None,
            attach_pid: None,
            attach_start_time: None,
        }
    }

    /// The owning hpktainer process.
    pub fn owner(&self) -> ProcessRef {
        ProcessRef {
            pid: self.pid,
            start_time: self.pid_start_time,
        }
    }

    /// The instance's client-attach process, when one was recorded.
    pub fn attach(&self) -> Option<ProcessRef> {
        Some(ProcessRef {
            pid: self.attach_pid?,
            start_time: self.attach_start_time?,
        })
    }

    /// Whether the container this record describes may still be running:
    /// its owner lives, or, for an instance (which outlives the hpktainer
    /// that started it), its relay lives.
    pub fn is_live(&self) -> bool {
        let relay_lives = || self.relay().is_some_and(|relay| relay.is_alive());
        self.owner().is_alive() || (self.instance.is_some() && relay_lives())
    }

    /// The relay server process, when one was recorded.
    pub fn relay(&self) -> Option<ProcessRef> {
        Some(ProcessRef {
            pid: self.relay_pid?,
            start_time: self.relay_start_time?,
        })
    }
}

/// One entry of [`StateDir::list`]: a record, or why the file named `id` could not be read.
#[derive(Debug)]
pub enum RecordOrError {
    /// A readable record (boxed: it is much larger than an error).
    Record(Box<Record>),
    /// An unreadable one; gc can still report or remove it by id.
    Error { id: String, error: StateError },
}

impl RecordOrError {
    /// The id the entry's file is named after.
    pub fn id(&self) -> &str {
        match self {
            RecordOrError::Record(record) => &record.id,
            RecordOrError::Error { id, .. } => id,
        }
    }
}

/// The state directory: `RUN_DIR/containers/` and `RUN_DIR/lock`.
#[derive(Debug, Clone)]
pub struct StateDir {
    run_dir: PathBuf,
    containers: PathBuf,
}

/// Holds the exclusive lock on `RUN_DIR/lock` until dropped.
#[derive(Debug)]
pub struct LockGuard {
    _lock: Flock<File>,
}

impl StateDir {
    /// Opens the state under `run_dir`, creating missing directories with mode 0700.
    pub fn open(run_dir: &Path) -> Result<Self, StateError> {
        let containers = run_dir.join(CONTAINERS);
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&containers)
            .map_err(|source| StateError::CreateDir {
                path: containers.clone(),
                source,
            })?;
        Ok(StateDir {
            run_dir: run_dir.to_owned(),
            containers,
        })
    }

    /// The run directory this state lives in.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Waits for the exclusive lock shared by every hpktainer process on this run directory.
    /// Taking it twice in one process deadlocks: flock(2) locks per open file.
    pub fn lock(&self) -> Result<LockGuard, StateError> {
        self.take_lock(FlockArg::LockExclusive)?
            .ok_or_else(|| unreachable_would_block(&self.lock_path()))
    }

    /// Takes the lock if it is free; `None` if another holder has it.
    pub fn try_lock(&self) -> Result<Option<LockGuard>, StateError> {
        self.take_lock(FlockArg::LockExclusiveNonblock)
    }

    fn take_lock(&self, how: FlockArg) -> Result<Option<LockGuard>, StateError> {
        let path = self.lock_path();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| StateError::Lock {
                path: path.clone(),
                source,
            })?;
        loop {
            match Flock::lock(file, how) {
                Ok(lock) => return Ok(Some(LockGuard { _lock: lock })),
                Err((again, Errno::EINTR)) => file = again,
                Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, errno)) => {
                    return Err(StateError::Lock {
                        path,
                        source: errno.into(),
                    });
                }
            }
        }
    }

    fn lock_path(&self) -> PathBuf {
        self.run_dir.join(LOCK)
    }

    /// Replaces the record for `record.id` atomically and durably.
    pub fn write(&self, record: &Record) -> Result<(), StateError> {
        let path = self.record_path(&record.id)?;
        let write_error = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        let mut text = serde_json::to_vec_pretty(record).map_err(|e| write_error(e.into()))?;
        text.push(b'\n');

        // A name per process, so two writers never share a temporary file; each id has one
        // owner, so one process never writes the same record from two threads.
        let temp = self
            .containers
            .join(format!(".{}.{}.tmp", record.id, std::process::id()));
        let result = write_synced(&temp, &text)
            .and_then(|()| fs::rename(&temp, &path))
            .and_then(|()| sync_dir(&self.containers));
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result.map_err(write_error)
    }

    /// Reads the record of container `id`.
    pub fn read(&self, id: &str) -> Result<Record, StateError> {
        let path = self.record_path(id)?;
        let bytes = fs::read(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => StateError::NotFound {
                id: id.to_owned(),
                path: path.clone(),
            },
            _ => StateError::Read {
                path: path.clone(),
                source,
            },
        })?;
        decode(&path, id, &bytes)
    }

    /// Removes the record of container `id`; a missing record is not an error.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let path = self.record_path(id)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StateError::Write { path, source }),
        }
        sync_dir(&self.containers).map_err(|source| StateError::Write { path, source })
    }

    /// Every record, sorted by id; a record that cannot be read is listed as an error.
    pub fn list(&self) -> Result<Vec<RecordOrError>, StateError> {
        let read_error = |source| StateError::Read {
            path: self.containers.clone(),
            source,
        };
        let mut entries = Vec::new();
        for entry in fs::read_dir(&self.containers).map_err(read_error)? {
            let name = entry.map_err(read_error)?.file_name();
            let Some(id) = name.to_str().and_then(record_id) else {
                continue;
            };
            match self.read(id) {
                Ok(record) => entries.push(RecordOrError::Record(Box::new(record))),
                // Removed since the directory was read.
                Err(StateError::NotFound { .. }) => {}
                Err(error) => entries.push(RecordOrError::Error {
                    id: id.to_owned(),
                    error,
                }),
            }
        }
        entries.sort_by(|a, b| a.id().cmp(b.id()));
        Ok(entries)
    }

    fn record_path(&self, id: &str) -> Result<PathBuf, StateError> {
        if !is_valid_id(id) {
            return Err(StateError::InvalidId { id: id.to_owned() });
        }
        Ok(self.containers.join(format!("{id}.json")))
    }
}

fn unreachable_would_block(path: &Path) -> StateError {
    let source = io::Error::new(
        io::ErrorKind::WouldBlock,
        "a blocking flock returned EWOULDBLOCK",
    );
    StateError::Lock {
        path: path.to_owned(),
        source,
    }
}

/// `<id>.json` gives `id`; temporary files (leading dot) and other names give nothing.
fn record_id(name: &str) -> Option<&str> {
    name.strip_suffix(".json").filter(|id| is_valid_id(id))
}

fn is_valid_id(id: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    (1..=MAX_ID_LEN).contains(&id.len()) && id.chars().all(allowed)
}

/// Parses a record, checking the schema before the layout so that a newer record says so.
fn decode(path: &Path, id: &str, bytes: &[u8]) -> Result<Record, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;

    let schema = value.get("schema").and_then(serde_json::Value::as_u64);
    match schema {
        None | Some(0) => return Err(corrupt("no schema number".into())),
        Some(found) if found > u64::from(SCHEMA) => {
            return Err(StateError::NewerSchema {
                path: path.to_owned(),
                found,
            });
        }
        Some(_) => {}
    }

    let record: Record = serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
    if record.id != id {
        return Err(corrupt(format!("it names container {:?}", record.id)));
    }
    Ok(record)
}

/// Writes and flushes `path`. The name belongs to this process alone, so a file left there by a
/// crashed process that had the same pid is simply overwritten.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh container id: 12 random lowercase hex digits. Valid as a CNI container id, and short
/// enough to fit in an interface name with a 3-letter prefix (15 bytes at most).
pub fn new_id() -> String {
    let mut bytes = [0u8; 6];
    fill_random(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fill_random(buf: &mut [u8]) {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
    let filled = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if usize::try_from(filled) == Ok(buf.len()) {
        return;
    }
    // getrandom(2) exists since Linux 3.17; without it, std's per-process random hash keys
    // over the pid and the time still give ids that differ between processes and calls.
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let hash = hasher.finish().to_le_bytes();
    for (byte, value) in buf.iter_mut().zip(hash) {
        *byte = value;
    }
}

/// A process named so that a reused pid is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    /// The process id.
    pub pid: i32,
    /// Its start time: field 22 of /proc/PID/stat, clock ticks since boot.
    pub start_time: u64,
}

impl ProcessRef {
    /// Names the running process `pid`.
    pub fn of(pid: i32) -> io::Result<Self> {
        if pid <= 0 {
            let message = format!("invalid pid {pid}");
            return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
        }
        let stat = read_stat(pid)?;
        Ok(ProcessRef {
            pid,
            start_time: stat.start_time,
        })
    }

    /// Names the calling process.
    pub fn current() -> io::Result<Self> {
        Self::of(std::process::id() as i32)
    }

    /// Whether this very process still runs: the pid exists, has the recorded start time and
    /// is not a zombie. A process hidden from us (another pid namespace, `hidepid`) reads as dead.
    pub fn is_alive(&self) -> bool {
        match read_stat(self.pid) {
            Ok(stat) => {
                stat.start_time == self.start_time && !matches!(stat.state, 'Z' | 'X' | 'x')
            }
            Err(_) => false,
        }
    }
}

impl fmt::Display for ProcessRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} (started at tick {})", self.pid, self.start_time)
    }
}

/// The fields of /proc/PID/stat we use.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    state: char,
    start_time: u64,
}

fn read_stat(pid: i32) -> io::Result<Stat> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path)?;
    parse_stat(&text).ok_or_else(|| {
        let message = format!("cannot parse {path}: {text:?}");
        io::Error::new(io::ErrorKind::InvalidData, message)
    })
}

/// Parses `pid (comm) state ppid … starttime …`. comm may hold spaces and parentheses, so the
/// fields are counted from the last `)`: state is field 3, starttime field 22.
fn parse_stat(text: &str) -> Option<Stat> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some(Stat { state, start_time })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};
    use std::thread::sleep;
    use std::time::{Duration, Instant};

    const CHILD_DIR: &str = "HPKTAINER_TEST_LOCK_DIR";
    const CHILD_MODE: &str = "HPKTAINER_TEST_LOCK_MODE";

    fn sample(id: &str) -> Record {
        let mut record = Record::new(id.into(), ProcessRef::current().unwrap(), DataPath::Relay);
        record.tap = format!("hpk{id}");
        record.socket_dir = PathBuf::from(format!("/run/hpktainer/sockets/{id}"));
        record.image = "docker://alpine".into();
        record.command = vec!["sh".into(), "-c".into(), "echo 'a b'".into()];
        record
    }

    fn state() -> (tempfile::TempDir, StateDir) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("run")).unwrap();
        (dir, state)
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn open_creates_private_directories() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, state) = state();
        let mode = fs::metadata(state.run_dir().join(CONTAINERS))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }

    #[test]
    fn write_read_round_trip() {
        let (_dir, state) = state();
        let mut record = sample("0123456789ab");
        state.write(&record).unwrap();
        assert_eq!(state.read("0123456789ab").unwrap(), record);

        record.phase = Phase::Allocated;
        record.address = Some("10.244.3.7/24".into());
        record.gateway = Some("10.244.3.1/24".into());
        record.mac = Some("0a:58:0a:f4:03:07".into());
        record.relay_pid = Some(4242);
        record.relay_start_time = Some(99);
        record.ipam_result = Some(serde_json::json!({"cniVersion": "1.0.0", "ips": []}));
        state.write(&record).unwrap();
        assert_eq!(state.read("0123456789ab").unwrap(), record);
        assert_eq!(
            record.relay(),
            Some(ProcessRef {
                pid: 4242,
                start_time: 99
            })
        );

        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(state.run_dir().join(CONTAINERS))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["0123456789ab.json"]);
    }

    #[test]
    fn stored_layout_is_plain_json() {
        let (_dir, state) = state();
        state.write(&sample("abc")).unwrap();
        let text = fs::read_to_string(state.run_dir().join("containers/abc.json")).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["schema"], 1);
        assert_eq!(value["phase"], "allocating");
        assert_eq!(value["data_path"], "relay");
        assert_eq!(value["address"], serde_json::Value::Null);
    }

    #[test]
    fn read_missing_and_invalid_ids() {
        let (_dir, state) = state();
        assert!(matches!(
            state.read("abc"),
            Err(StateError::NotFound { .. })
        ));
        for bad in ["", "../etc/passwd", "a.b", ".hidden", &"x".repeat(65)] {
            assert!(
                matches!(state.read(bad), Err(StateError::InvalidId { .. })),
                "{bad:?}"
            );
        }
        let mut record = sample("ok");
        record.id = "no/slash".into();
        assert!(matches!(
            state.write(&record),
            Err(StateError::InvalidId { .. })
        ));
    }

    #[test]
    fn remove_is_idempotent() {
        let (_dir, state) = state();
        state.write(&sample("abc")).unwrap();
        state.remove("abc").unwrap();
        state.remove("abc").unwrap();
        assert!(matches!(
            state.read("abc"),
            Err(StateError::NotFound { .. })
        ));
    }

    #[test]
    fn list_survives_corrupt_records() {
        let (_dir, state) = state();
        let containers = state.run_dir().join(CONTAINERS);
        state.write(&sample("bbb")).unwrap();
        state.write(&sample("ddd")).unwrap();
        let full = fs::read(containers.join("bbb.json")).unwrap();
        fs::write(containers.join("aaa.json"), &full[..full.len() / 2]).unwrap();
        fs::write(containers.join("ccc.json"), b"").unwrap();
        fs::write(containers.join("eee.json"), &full).unwrap(); // names container "bbb"
        fs::write(containers.join(".fff.123.tmp"), b"half").unwrap();
        fs::write(containers.join("notes.txt"), b"x").unwrap();

        let listed = state.list().unwrap();
        let ids: Vec<_> = listed.iter().map(RecordOrError::id).collect();
        assert_eq!(ids, ["aaa", "bbb", "ccc", "ddd", "eee"]);
        let readable = |entry: &RecordOrError| matches!(entry, RecordOrError::Record(_));
        let flags: Vec<_> = listed.iter().map(readable).collect();
        assert_eq!(flags, [false, true, false, true, false]);

        let RecordOrError::Error { error, .. } = &listed[0] else {
            unreachable!()
        };
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "{} is not a valid hpktainer record",
                containers.join("aaa.json").display()
            )),
            "{message}"
        );
        assert!(
            message.ends_with("once no hpktainer uses it, remove it"),
            "{message}"
        );
    }

    #[test]
    fn newer_schema_is_an_error_that_says_so() {
        let (_dir, state) = state();
        let path = state.run_dir().join("containers/abc.json");
        let record = serde_json::json!({"schema": 2, "id": "abc", "layout": "unknown to us"});
        fs::write(&path, record.to_string()).unwrap();

        let error = state.read("abc").unwrap_err();
        assert!(matches!(error, StateError::NewerSchema { found: 2, .. }));
        assert_eq!(
            error.to_string(),
            format!(
                "{} was written by a newer hpktainer (record schema 2, this one reads up to 1): \
                 manage that container with the newer hpktainer",
                path.display()
            )
        );
        assert!(matches!(
            &state.list().unwrap()[0],
            RecordOrError::Error {
                error: StateError::NewerSchema { .. },
                ..
            }
        ));
    }

    #[test]
    fn new_ids_are_short_hex_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.len(), 12);
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
            assert!(is_valid_id(id));
        }
    }

    /// Runs in a child process, started by the lock tests below with the test binary itself.
    #[test]
    #[ignore = "helper run in a child process by the lock tests"]
    fn lock_child() {
        let Some(dir) = std::env::var_os(CHILD_DIR) else {
            return;
        };
        let dir = PathBuf::from(dir);
        let state = StateDir::open(&dir).unwrap();
        fs::write(dir.join("child-waiting"), b"").unwrap();
        let _guard = state.lock().unwrap();
        fs::write(dir.join("child-locked"), b"").unwrap();
        if std::env::var_os(CHILD_MODE).is_some_and(|m| m == "hold") {
            sleep(Duration::from_secs(60));
        }
    }

    fn spawn_lock_child(dir: &Path, mode: &str) -> Child {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "state::tests::lock_child",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir)
            .env(CHILD_MODE, mode)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    #[test]
    fn lock_excludes_another_process_until_released() {
        let (_dir, state) = state();
        let guard = state.lock().unwrap();
        let mut child = spawn_lock_child(state.run_dir(), "exit");

        let run_dir = state.run_dir().to_owned();
        wait_for("the child to reach lock()", || {
            run_dir.join("child-waiting").exists()
        });
        sleep(Duration::from_millis(300));
        assert!(
            !run_dir.join("child-locked").exists(),
            "the child took a held lock"
        );
        assert!(child.try_wait().unwrap().is_none());

        drop(guard);
        wait_for("the child to exit", || child.try_wait().unwrap().is_some());
        assert!(child.wait().unwrap().success());
        assert!(run_dir.join("child-locked").exists());
    }

    #[test]
    fn lock_is_released_when_its_holder_dies() {
        let (_dir, state) = state();
        let mut child = spawn_lock_child(state.run_dir(), "hold");
        let run_dir = state.run_dir().to_owned();
        wait_for("the child to take the lock", || {
            run_dir.join("child-locked").exists()
        });
        assert!(
            state.try_lock().unwrap().is_none(),
            "the lock is held by the child"
        );

        child.kill().unwrap();
        child.wait().unwrap();
        assert!(state.try_lock().unwrap().is_some());
    }

    #[test]
    fn lock_can_be_taken_again_after_drop() {
        let (_dir, state) = state();
        drop(state.lock().unwrap());
        let _again = state.lock().unwrap();
    }

    #[test]
    fn parses_stat_with_awkward_comm() {
        let mut fields: Vec<String> = (4..=52).map(|n| n.to_string()).collect();
        fields[22 - 4] = "123456".into();
        let text = format!("77 (a) (b) c) ) S {}\n", fields.join(" "));
        assert_eq!(
            parse_stat(&text),
            Some(Stat {
                state: 'S',
                start_time: 123456
            })
        );
        assert_eq!(parse_stat("77 (no close S 1 2"), None);
        assert_eq!(parse_stat("77 (short) S 1 2 3"), None);
    }

    #[test]
    fn current_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessRef::current().unwrap();
        assert!(me.is_alive());
        let impostor = ProcessRef {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!impostor.is_alive());
        assert!(ProcessRef::of(0).is_err());
    }

    #[test]
    fn live_then_reaped_child() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let process = ProcessRef::of(child.id() as i32).unwrap();
        assert!(process.is_alive());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!process.is_alive());
    }

    #[test]
    fn zombie_is_dead() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let process = ProcessRef::of(pid).unwrap();
        wait_for("the child to become a zombie", || {
            read_stat(pid).is_ok_and(|stat| stat.state == 'Z')
        });
        assert_eq!(read_stat(pid).unwrap().start_time, process.start_time);
        assert!(!process.is_alive());
        child.wait().unwrap();
        assert!(!process.is_alive());
    }
}
