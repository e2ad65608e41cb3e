//! `hpktainer ps` and `hpktainer gc`: what runs, and reclaiming what died.

use std::io::Write;

use serde::Serialize;

use crate::error::Result;
use crate::lifecycle::{self, Context};
use crate::settings::SOCKET_NAME;
use crate::state::{RecordOrError, StateDir};
use crate::{bridge, nat};

/// One line of `hpktainer ps`.
#[derive(Debug, Serialize)]
pub struct PsEntry {
    pub id: String,
    pub phase: String,
    pub live: bool,
    pub address: Option<String>,
    pub mac: Option<String>,
    pub tap: String,
    pub data_path: String,
    pub pid: i32,
    pub instance: Option<String>,
    pub image: String,
    pub command: Vec<String>,
    /// The relay's counters; absent when it does not answer.
    pub counters: Option<hpk_net_daemon::stats::StatsSnapshot>,
}

/// Collects the entries of every readable record.
pub async fn ps_entries(state: &StateDir) -> Result<Vec<PsEntry>> {
    let mut entries = Vec::new();
    for entry in state.list()? {
        let RecordOrError::Record(record) = entry else {
            continue;
        };
        let socket = record.socket_dir.join(SOCKET_NAME);
        let counters = hpk_net_daemon::stats::query(&socket).await.ok();
        entries.push(PsEntry {
            id: record.id.clone(),
            phase: format!("{:?}", record.phase).to_lowercase(),
            live: record.is_live(),
            address: record.address.clone(),
            mac: record.mac.clone(),
            tap: record.tap.clone(),
            // The server decides at the container's hello: ask it first.
            data_path: match &counters {
                Some(counters) => counters.data_path.as_str().to_owned(),
                None => format!("{:?}", record.data_path).to_lowercase(),
            },
            pid: record.pid,
            instance: record.instance.clone(),
            image: record.image.clone(),
            command: record.command.clone(),
            counters,
        });
    }
    Ok(entries)
}

/// Prints the entries as a table (or JSON) on stdout.
pub fn print_ps(entries: &[PsEntry], json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, entries)?;
        return writeln!(out);
    }
    writeln!(
        out,
        "{:<12}  {:<18}  {:<17}  {:<15}  {:<5}  {:>7}  {:>12}  {:>12}  {:>7}  COMMAND",
        "ID", "ADDRESS", "MAC", "TAP", "PATH", "PID", "TX BYTES", "RX BYTES", "SPOOFED"
    )?;
    for entry in entries {
        let [tx, rx, spoofed] = entry
            .counters
            .map_or(["-".into(), "-".into(), "-".into()], |c| {
                [
                    c.tap_to_socket.bytes.to_string(),
                    c.socket_to_tap.bytes.to_string(),
                    c.spoofed.to_string(),
                ]
            });
        writeln!(
            out,
            "{:<12}  {:<18}  {:<17}  {:<15}  {:<5}  {:>7}  {:>12}  {:>12}  {:>7}  {}{}",
            entry.id,
            entry.address.as_deref().unwrap_or("-"),
            entry.mac.as_deref().unwrap_or("-"),
            entry.tap,
            entry.data_path,
            entry.pid,
            tx,
            rx,
            spoofed,
            entry.command.join(" "),
            if entry.live {
                ""
            } else {
                "  (dead: run hpktainer gc)"
            },
        )?;
    }
    Ok(())
}

/// What `gc` did, for its report.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub released: Vec<String>,
    pub live: usize,
    pub unreadable: Vec<String>,
    pub bridge_removed: bool,
    pub nat_rule_removed: bool,
}

/// Reclaims what dead containers left; with `all`, also the bridge and
/// hpktainer's NAT rule once no container is left.
pub async fn gc(ctx: &Context, all: bool) -> Result<GcReport> {
    let _lock = ctx.state.lock()?;
    let reclaimed = lifecycle::reclaim_dead(ctx).await;
    let mut report = GcReport {
        released: reclaimed.released,
        live: reclaimed.live,
        unreadable: reclaimed.unreadable,
        ..GcReport::default()
    };
    if all && report.live == 0 && report.unreadable.is_empty() {
        report.bridge_removed = bridge::remove(&ctx.netlink, &ctx.settings.bridge).await?;
        if !ctx.subnet.ipmasq {
            let subnet = ctx.subnet.subnet_network();
            report.nat_rule_removed = nat::remove_masquerade(subnet, ctx.subnet.network)?;
        }
    }
    Ok(report)
}
