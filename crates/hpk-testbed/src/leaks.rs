//! A leak detector that can fail: a snapshot of everything hpktainer may
//! create in a bubble, taken before and compared after, each difference
//! reported by kind.
//!
//! What a [`Scope`] covers, and how each kind is read:
//!
//! | kind | read from |
//! | --- | --- |
//! | links, addresses, routes | `ip -n NETNS` (all tables, IPv4 and IPv6) |
//! | leases | host-local's files in its network directory |
//! | socket directories, state records | the run directory |
//! | NAT rules | `iptables -S` (nat, filter, mangle, raw) and `nft list ruleset` in the netns |
//! | processes | those in the bubble's network namespace, those whose command line or environment names the bubble's own directory, and their descendants |
//!
//! Processes are matched by namespace identity and by the bubble's unique
//! directory, never by a program name, so two bubbles of parallel tests
//! never see each other's processes. What exists by design between runs
//! (the bridge with its addresses and routes, hpktainer's masquerade rule)
//! is named in [`Scope::persistent`] and left out of every snapshot.
//!
//! Shortcoming, accepted for now: an nftables table or chain left empty is
//! not reported (only rules are), because iptables-nft creates its tables
//! on the first rule and keeps them by design; a leaked empty table holds no
//! traffic.

mod collect;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::report;

/// What a snapshot covers: one bubble's namespace, directories and processes.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The bubble's network namespace, as `ip netns` names it.
    pub netns: String,
    /// host-local's directory for the network (one file per lease).
    pub leases: PathBuf,
    /// The directory whose subdirectories are the containers' socket directories.
    pub socket_dirs: PathBuf,
    /// The directory holding the state records.
    pub records: PathBuf,
    /// A path unique to this bubble: a process whose command line or
    /// environment contains it belongs to the bubble.
    pub marker: PathBuf,
    /// Items containing any of these strings exist by design and are left out.
    pub persistent: Vec<String>,
}

/// The kinds of things a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Link,
    Address,
    Route,
    Lease,
    SocketDir,
    StateRecord,
    IptablesRule,
    NftRule,
    Process,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Kind::Link => "link",
            Kind::Address => "address",
            Kind::Route => "route",
            Kind::Lease => "host-local lease",
            Kind::SocketDir => "socket directory",
            Kind::StateRecord => "state record",
            Kind::IptablesRule => "iptables rule",
            Kind::NftRule => "nftables rule",
            Kind::Process => "process",
        };
        f.write_str(name)
    }
}

/// Everything of the scope that exists at one moment, as (kind, item) pairs.
///
/// A process is identified by pid and start time alone (`PID/START`): an
/// exec changes its name and command line, not what it is. What it was
/// running is kept beside, in `notes`, for the report, and is not compared.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub items: BTreeSet<(Kind, String)>,
    pub notes: BTreeMap<String, String>,
}

impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.items == other.items
    }
}

impl Eq for Snapshot {}

/// One difference between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    pub kind: Kind,
    pub item: String,
    /// True when the item is new (left behind); false when it vanished
    /// (something that should have stayed, such as a live container's relay).
    pub appeared: bool,
    /// What a process was running, when the item is one.
    pub note: Option<String>,
}

impl fmt::Display for Leak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let change = if self.appeared {
            "left behind"
        } else {
            "vanished"
        };
        write!(f, "{} {change}: {}", self.kind, self.item)?;
        match &self.note {
            Some(note) => write!(f, " {note}"),
            None => Ok(()),
        }
    }
}

impl Snapshot {
    /// Reads everything `scope` covers. Processes are read first, so the
    /// `ip`/`iptables` commands this runs in the namespace are not among them.
    pub fn take(scope: &Scope) -> Self {
        let mut items = BTreeSet::new();
        let mut notes = BTreeMap::new();
        for (id, note) in collect::processes(scope) {
            items.insert((Kind::Process, id.clone()));
            notes.insert(id, note);
        }
        let mut add = |kind: Kind, found: Vec<String>| {
            for item in found {
                if !scope.persistent.iter().any(|p| item.contains(p.as_str())) {
                    items.insert((kind, item));
                }
            }
        };
        add(Kind::Link, collect::links(&scope.netns));
        add(Kind::Address, collect::addresses(&scope.netns));
        add(Kind::Route, collect::routes(&scope.netns));
        add(Kind::Lease, collect::leases(&scope.leases));
        add(Kind::SocketDir, collect::entries(&scope.socket_dirs));
        add(Kind::StateRecord, collect::entries(&scope.records));
        add(Kind::IptablesRule, collect::iptables_rules(&scope.netns));
        add(Kind::NftRule, collect::nft_rules(&scope.netns));
        Snapshot { items, notes }
    }

    /// The differences from `self` (before) to `after`.
    pub fn diff(&self, after: &Snapshot) -> Vec<Leak> {
        let appeared = after.items.difference(&self.items).map(|i| (i, true));
        let vanished = self.items.difference(&after.items).map(|i| (i, false));
        appeared
            .chain(vanished)
            .map(|((kind, item), appeared)| Leak {
                kind: *kind,
                item: item.clone(),
                appeared,
                note: after.notes.get(item).or(self.notes.get(item)).cloned(),
            })
            .collect()
    }

    /// The items of one kind.
    pub fn of(&self, kind: Kind) -> impl Iterator<Item = &str> {
        self.items
            .iter()
            .filter(move |(k, _)| *k == kind)
            .map(|(_, item)| item.as_str())
    }
}

/// How long [`assert_unchanged`] lets the kernel and reapers settle: a
/// SIGKILLed relay's tap disappears, and its zombie is reaped, a moment
/// after the kill.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Panics, listing every difference by kind, unless a snapshot of `scope`
/// equals `before` within [`SETTLE`]. Records the check (and any leaks) for
/// the reliability summary.
pub fn assert_unchanged(scope: &Scope, before: &Snapshot, what: &str) {
    let deadline = Instant::now() + SETTLE;
    let leaks = loop {
        let leaks = before.diff(&Snapshot::take(scope));
        if leaks.is_empty() || Instant::now() >= deadline {
            break leaks;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    report::record(report::kind::LEAK_CHECKS, 1);
    if leaks.is_empty() {
        return;
    }
    report::record(report::kind::LEAKS_FOUND, leaks.len() as u64);
    let listing: Vec<String> = leaks.iter().map(|leak| format!("  {leak}")).collect();
    panic!(
        "{what}: {} leak(s) in bubble {}:\n{}",
        leaks.len(),
        scope.netns,
        listing.join("\n")
    );
}
