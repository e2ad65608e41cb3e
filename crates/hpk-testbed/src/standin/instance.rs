//! Named instances: `instance start|run|list|stop` and the records behind them.
//!
//! A record (`NAME.json`) and the instance's logs (`NAME.out`, `NAME.err`) live in the state
//! directory, `$HPK_STANDIN_STATE_DIR` or `/run/apptainer-standin-UID`. A record names the
//! holder's pid with its start time, so a reused pid is never taken for the instance; a record
//! whose process has ended is pruned when seen (its logs stay, for the post-mortem). `instance
//! stop` removes the record and the logs.

use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::cli::{Launch, List, Stop};
use super::container::Plan;
use super::sys::{self, Pidfd};
use super::{holder, info};

/// A running instance, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub pid: i32,
    pub start_time: u64,
    pub image: PathBuf,
    pub log_out: PathBuf,
    pub log_err: PathBuf,
}

/// `instance list --json`, in apptainer's shape and field order.
#[derive(Serialize)]
struct ListDoc<'a> {
    instances: Vec<Listed<'a>>,
}

/// One entry of [`ListDoc`].
#[derive(Serialize)]
struct Listed<'a> {
    instance: &'a str,
    pid: i32,
    img: String,
    ip: &'a str,
    #[serde(rename = "logErrPath")]
    log_err_path: String,
    #[serde(rename = "logOutPath")]
    log_out_path: String,
}

/// The state directory.
pub struct State {
    dir: PathBuf,
}

impl State {
    /// Opens (making it, mode 0700, if needed) the state directory.
    pub fn open() -> Result<State> {
        let dir = match std::env::var_os("HPK_STANDIN_STATE_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => format!("/run/apptainer-standin-{}", nix::unistd::getuid()).into(),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("make the state directory {}", dir.display()))?;
        Ok(State { dir })
    }

    fn path(&self, name: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{name}.{ext}"))
    }

    /// The live instance called `name`, pruning a dead record of that name.
    pub fn live(&self, name: &str) -> Result<Option<Record>> {
        let path = self.path(name, "json");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).context(format!("read {}", path.display())),
        };
        let record: Record =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        if sys::start_time(record.pid) == Some(record.start_time) {
            return Ok(Some(record));
        }
        let _ = fs::remove_file(&path);
        Ok(None)
    }

    /// Every live instance, by name.
    pub fn all_live(&self) -> Result<Vec<Record>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).context("read the state directory")? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "json") {
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                    names.push(stem.to_owned());
                }
            }
        }
        names.sort();
        let mut live = Vec::new();
        for name in names {
            live.extend(self.live(&name)?);
        }
        Ok(live)
    }

    /// Publishes `record`; refused if another start of the same name won the race.
    fn publish(&self, record: &Record) -> Result<()> {
        let path = self.path(&record.name, "json");
        let scratch = self.path(&record.name, &format!("json.{}", std::process::id()));
        let text = serde_json::to_vec(record)?;
        fs::write(&scratch, text).with_context(|| format!("write {}", scratch.display()))?;
        // A link, unlike a rename, fails when the name is taken.
        let linked = fs::hard_link(&scratch, &path);
        let _ = fs::remove_file(&scratch);
        linked.with_context(|| format!("instance {} already exists", record.name))
    }

    fn remove(&self, name: &str) {
        for ext in ["json", "out", "err"] {
            let _ = fs::remove_file(self.path(name, ext));
        }
    }

    fn open_log(&self, name: &str, ext: &str) -> Result<(PathBuf, OwnedFd)> {
        let path = self.path(name, ext);
        let file = fs::File::create(&path).with_context(|| format!("open {}", path.display()))?;
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        Ok((path, file.into()))
    }
}

/// `instance start|run`: starts the instance and returns once its namespaces exist.
pub fn start(launch: &Launch) -> Result<i32> {
    let name = launch.name.as_deref().context("an instance needs a name")?;
    let state = State::open()?;
    if let Some(existing) = state.live(name)? {
        bail!("instance {name} already exists (pid {})", existing.pid);
    }
    let plan = Plan::fresh(launch)?;
    let (log_out, out) = state.open_log(name, "out")?;
    let (log_err, err) = state.open_log(name, "err")?;

    let pid = holder::spawn(&plan, out, err)?.as_raw();
    let Some(start_time) = sys::start_time(pid) else {
        bail!(
            "instance {name} ended as soon as it started; see {}",
            log_err.display()
        );
    };
    let image = Path::new(&launch.image).canonicalize()?;
    let record = Record {
        name: name.to_owned(),
        pid,
        start_time,
        image,
        log_out,
        log_err,
    };
    if let Err(err) = state.publish(&record) {
        // Lost a race for the name: this instance must not linger unlisted.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        return Err(err);
    }
    info(format_args!("instance started successfully"));
    Ok(0)
}

/// The live instance `name`, for `exec|run|shell instance://NAME`.
pub fn find(name: &str) -> Result<Record> {
    State::open()?
        .live(name)?
        .ok_or_else(|| anyhow!("no instance found with name {name}"))
}

/// `instance list`: prints the live instances in apptainer's formats.
pub fn list(list: &List) -> Result<i32> {
    let state = State::open()?;
    let mut records = state.all_live()?;
    if let Some(name) = &list.name {
        records.retain(|r| &r.name == name);
    }
    let mut stdout = std::io::stdout().lock();
    if list.json {
        stdout.write_all(&list_json(&records)?)?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = if list.logs {
        let mut rows = vec![row(&["INSTANCE NAME", "PID", "LOGS"])];
        for r in &records {
            let pid = r.pid.to_string();
            rows.push(row(&[&r.name, &pid, &r.log_err.to_string_lossy()]));
            rows.push(row(&["", "", &r.log_out.to_string_lossy()]));
        }
        rows
    } else {
        let mut rows = vec![row(&["INSTANCE NAME", "PID", "IP", "IMAGE"])];
        for r in &records {
            let pid = r.pid.to_string();
            rows.push(row(&[&r.name, &pid, "", &r.image.to_string_lossy()]));
        }
        rows
    };
    stdout.write_all(table(&rows).as_bytes())?;
    Ok(0)
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// `{"instances":[…]}`, tab-indented as apptainer's encoder writes it.
fn list_json(records: &[Record]) -> Result<Vec<u8>> {
    let instances: Vec<Listed> = records
        .iter()
        .map(|r| Listed {
            instance: &r.name,
            pid: r.pid,
            img: r.image.to_string_lossy().into_owned(),
            ip: "",
            log_err_path: r.log_err.to_string_lossy().into_owned(),
            log_out_path: r.log_out.to_string_lossy().into_owned(),
        })
        .collect();
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    ListDoc { instances }.serialize(&mut serializer)?;
    out.push(b'\n');
    Ok(out)
}

/// Columns padded to the widest cell plus four, like Go's tabwriter as apptainer sets it up.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for r in rows {
        let last = r.len().saturating_sub(1);
        for (c, cell) in r.iter().enumerate() {
            match c == last {
                true => text.push_str(cell),
                false => text.push_str(&format!("{cell:<width$}", width = widths[c] + 4)),
            }
        }
        text.push('\n');
    }
    text
}

/// `instance stop`: signals each instance, waits (bounded), kills what is left, removes the
/// records. Keeps going past a failure and reports them all.
pub fn stop(stop: &Stop) -> Result<i32> {
    let state = State::open()?;
    let records = match &stop.name {
        Some(name) => state.live(name)?.into_iter().collect(),
        None => state.all_live()?,
    };
    if records.is_empty() {
        match &stop.name {
            // A record of a dead instance was just pruned: clear its logs too.
            Some(name) => {
                state.remove(name);
                bail!("no instance found with name {name}");
            }
            None => return Ok(0),
        }
    }
    let mut failures = Vec::new();
    for record in &records {
        if let Err(err) = stop_one(record, stop.signal, stop.timeout) {
            failures.push(format!("{}: {err:#}", record.name));
        }
        state.remove(&record.name);
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(0)
}

fn stop_one(record: &Record, signal: Signal, timeout: Duration) -> Result<()> {
    let Record {
        name, pid, image, ..
    } = record;
    info(format_args!(
        "Stopping {name} instance of {} (PID={pid})",
        image.display()
    ));
    let Some(process) = Pidfd::open(*pid, record.start_time) else {
        return Ok(());
    };
    process.signal(signal)?;
    if process.wait(timeout) {
        return Ok(());
    }
    info(format_args!(
        "Killing {name} instance (PID={pid}) (Timeout)"
    ));
    process.signal(Signal::SIGKILL)?;
    match process.wait(Duration::from_secs(5)) {
        true => Ok(()),
        false => bail!("pid {pid} did not end, even after SIGKILL"),
    }
}
