//! How a leak snapshot reads each kind from the kernel and the file system.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use super::Scope;

/// Link names (without the `@peer` suffix).
pub fn links(netns: &str) -> Vec<String> {
    ip(netns, &["-o", "link", "show"])
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or("").to_owned())
        .collect()
}

/// `DEV FAMILY ADDRESS` for every address.
pub fn addresses(netns: &str) -> Vec<String> {
    ip(netns, &["-o", "addr", "show"])
        .lines()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words.get(1..4).map(|w| w.join(" ")).unwrap_or_default()
        })
        .collect()
}

/// Every route of every table, both families, without the flags that
/// change with carrier state. IPv6 `local` routes are left out: they mirror
/// the link's addresses (which are compared) but appear only once duplicate
/// address detection ends, a second or so after the link comes up.
pub fn routes(netns: &str) -> Vec<String> {
    let mut found = Vec::new();
    for family in ["-4", "-6"] {
        for line in ip(netns, &[family, "route", "show", "table", "all"]).lines() {
            if family == "-6" && line.starts_with("local ") {
                continue;
            }
            let words: Vec<&str> = line
                .split_whitespace()
                .filter(|word| *word != "linkdown")
                .collect();
            found.push(format!("{family} {}", words.join(" ")));
        }
    }
    found
}

/// host-local's lease files, `ADDRESS (CONTAINER ID)`, without its lock
/// and last-reserved bookkeeping.
pub fn leases(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            if name == "lock" || name.starts_with("last_reserved_ip") {
                return None;
            }
            let owner = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let owner = owner.lines().next().unwrap_or("").to_owned();
            Some(format!("{name} ({owner})"))
        })
        .collect()
}

/// Every entry below `dir`, files and directories, by path.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        let Ok(listing) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in listing.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            found.push(path.display().to_string());
        }
    }
    found
}

/// `TABLE: RULE` for the rules and chains of iptables' common tables.
pub fn iptables_rules(netns: &str) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["nat", "filter", "mangle", "raw"] {
        let output = in_netns(netns, "iptables", &["-w", "-t", table, "-S"]);
        found.extend(output.lines().map(|line| format!("{table}: {line}")));
    }
    found
}

/// `FAMILY TABLE CHAIN: RULE` for every nftables rule, counters removed.
pub fn nft_rules(netns: &str) -> Vec<String> {
    let text = in_netns(netns, "nft", &["list", "ruleset"]);
    let mut found = Vec::new();
    let (mut table, mut chain) = (String::new(), String::new());
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("table ") {
            table = rest.trim_end_matches('{').trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("chain ") {
            chain = rest.trim_end_matches('{').trim().to_owned();
        } else if line.is_empty()
            || line == "}"
            || line.starts_with("type ")
            || line.starts_with("policy ")
            || line.starts_with('#')
        {
            continue;
        } else {
            found.push(format!("{table} {chain}: {}", without_counters(line)));
        }
    }
    found
}

/// `counter packets N bytes M` becomes `counter`.
fn without_counters(rule: &str) -> String {
    let words: Vec<&str> = rule.split_whitespace().collect();
    let mut kept = Vec::new();
    let mut skip = 0;
    for (at, word) in words.iter().enumerate() {
        if skip > 0 {
            skip -= 1;
            continue;
        }
        kept.push(*word);
        if *word == "counter" && words.get(at + 1) == Some(&"packets") {
            skip = 4;
        }
    }
    kept.join(" ")
}

/// One process as /proc shows it.
struct ProcInfo {
    ppid: i32,
    start: u64,
    comm: String,
    cmdline: String,
    net: Option<u64>,
    mentions_marker: bool,
}

/// `(PID/START, "COMM: CMDLINE")` for the scope's processes: those in its
/// network namespace or mentioning its marker, and their descendants.
pub fn processes(scope: &Scope) -> Vec<(String, String)> {
    let netns = Path::new("/run/netns").join(&scope.netns);
    let bubble_net = std::fs::metadata(&netns).ok().map(|meta| meta.ino());
    let marker = scope.marker.display().to_string();
    let me = std::process::id() as i32;
    let table: BTreeMap<i32, ProcInfo> = all_processes(&marker)
        .into_iter()
        .filter(|(pid, _)| *pid != me)
        .collect();

    let mut members: BTreeSet<i32> = table
        .iter()
        .filter(|(_, info)| info.mentions_marker || (info.net.is_some() && info.net == bubble_net))
        .map(|(pid, _)| *pid)
        .collect();
    // Descendants: a container in a namespace of its own, under a member.
    loop {
        let before = members.len();
        let children: Vec<i32> = table
            .iter()
            .filter(|(pid, info)| !members.contains(pid) && members.contains(&info.ppid))
            .map(|(pid, _)| *pid)
            .collect();
        members.extend(children);
        if members.len() == before {
            break;
        }
    }
    members
        .iter()
        .map(|pid| {
            let info = &table[pid];
            let mut cmdline = info.cmdline.clone();
            cmdline.truncate(160);
            (
                format!("{pid}/{}", info.start),
                format!("({}: {cmdline})", info.comm),
            )
        })
        .collect()
}

fn all_processes(marker: &str) -> Vec<(i32, ProcInfo)> {
    let Ok(listing) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    listing
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            Some((pid, read_process(&entry.path(), marker)?))
        })
        .collect()
}

fn read_process(dir: &Path, marker: &str) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // comm may hold spaces and parentheses: the fields after it follow the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    let text = |name: &str| {
        let bytes = std::fs::read(dir.join(name)).unwrap_or_default();
        String::from_utf8_lossy(&bytes).replace('\0', " ")
    };
    let cmdline = text("cmdline").trim_end().to_owned();
    let mentions_marker = cmdline.contains(marker) || text("environ").contains(marker);
    let net = std::fs::metadata(dir.join("ns/net")).ok().map(|m| m.ino());
    Some(ProcInfo {
        ppid,
        start,
        comm,
        cmdline,
        net,
        mentions_marker,
    })
}

/// `ip -n NETNS ARGS`; an empty string if the namespace is gone.
fn ip(netns: &str, args: &[&str]) -> String {
    let mut command = Command::new("ip");
    command.args(["-n", netns]).args(args);
    stdout_of(command)
}

/// `PROGRAM ARGS` inside the namespace; an empty string if the program is
/// missing (a machine without nft has no nft rules to leak).
fn in_netns(netns: &str, program: &str, args: &[&str]) -> String {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns, program]).args(args);
    stdout_of(command)
}

fn stdout_of(mut command: Command) -> String {
    match command.output() {
        Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_counters_are_left_out() {
        assert_eq!(
            without_counters("ip saddr 10.0.0.0/24 counter packets 12 bytes 3456 masquerade"),
            "ip saddr 10.0.0.0/24 counter masquerade"
        );
        assert_eq!(without_counters("counter"), "counter");
    }
}
