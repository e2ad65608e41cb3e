//! The bench's report: throughput, round-trip and resource tables (plain,
//! and markdown for the README), the relay's counters, and one verdict line
//! per target.

use super::Bench;
use super::measure::median;
use super::rig::{Direction, Row, Throughput};

/// Throughput of the relay with offloads, as a share of veth's at the same
/// MTU, each way, at [`TARGET_MTU`].
const MIN_RATIO: f64 = 0.60;
/// Throughput of the relay with offloads over the plain relay's, each way,
/// at [`TARGET_MTU`].
const MIN_GAIN_OVER_PLAIN: f64 = 3.0;
/// The MTU the throughput targets are set at (flannel over a 1500 network).
const TARGET_MTU: u32 = 1450;
/// Round trip the relay may add to veth's, in microseconds.
const MAX_ADDED_RTT_US: f64 = 50.0;
/// Peak RSS allowed per daemon, in KiB (4 MiB).
const MAX_RSS_KIB: u64 = 4096;

/// Prints the whole report to stdout.
pub fn print(bench: &Bench, rows: &[Row], markdown: bool) {
    let tables = [
        throughput_table(bench, rows),
        rtt_table(bench, rows),
        resource_table(bench, rows),
    ];
    println!("{}", context_line());
    for table in &tables {
        println!("\n{}", table.plain());
    }
    println!(
        "\nveth has no daemon: its CPU work is the kernel's and is not attributable to a process."
    );
    for line in counter_lines(rows) {
        println!("{line}");
    }
    println!();
    for line in verdicts(rows) {
        println!("{line}");
    }
    if markdown {
        println!("\n<!-- markdown for the README -->\n{}", context_line());
        for table in &tables {
            println!("\n{}", table.markdown());
        }
    }
}

/// Where the figures come from, since they mean little without it.
fn context_line() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    format!(
        "relay (plain framing, offloads) vs veth, kernel {}, {cpus} CPUs (iperf3, relay and \
         kernel share them: expect noise)",
        kernel.trim()
    )
}

fn throughput_table(bench: &Bench, rows: &[Row]) -> Table {
    let mut table = Table::new(&[
        "setup",
        "MTU",
        "offload",
        "direction",
        "Gbit/s",
        "min–max",
        "vs veth",
        "retr",
        "duration",
        "repeats",
        "profile",
    ]);
    for row in rows {
        for run in &row.throughput {
            let ratio = ratio_to_veth(rows, row, run.direction);
            let (low, high) = spread_gbit(run);
            table.push(vec![
                row.setup.name.clone(),
                row.setup.mtu.to_string(),
                on_off(row.setup.offload),
                run.direction.label().to_owned(),
                format!("{:.2}", median_gbit(run)),
                format!("{low:.2}–{high:.2}"),
                ratio.map_or("—".to_owned(), |ratio| format!("{:.1}%", ratio * 100.0)),
                median_retransmits(run),
                format!("{} s", bench.duration),
                bench.repeats.to_string(),
                bench.profile.to_owned(),
            ]);
        }
    }
    table
}

fn rtt_table(bench: &Bench, rows: &[Row]) -> Table {
    let mut table = Table::new(&[
        "setup",
        "MTU",
        "offload",
        "RTT median µs",
        "RTT mean µs",
        "added µs",
        "pings",
        "profile",
    ]);
    for row in rows {
        let added = added_rtt_us(rows, row);
        table.push(vec![
            row.setup.name.clone(),
            row.setup.mtu.to_string(),
            on_off(row.setup.offload),
            format!("{:.1}", row.rtt.median_us),
            format!("{:.1}", row.rtt.mean_us),
            added.map_or("—".to_owned(), |added| format!("{added:+.1}")),
            format!("{}/{}", row.rtt.received, row.rtt.sent),
            bench.profile.to_owned(),
        ]);
    }
    table
}

fn resource_table(bench: &Bench, rows: &[Row]) -> Table {
    let mut table = Table::new(&[
        "setup",
        "MTU",
        "offload",
        "daemon",
        "CPU s c→b",
        "CPU s b→c",
        "CPU s/GiB c→b",
        "CPU s/GiB b→c",
        "peak RSS",
        "anon+file after",
        "duration",
        "repeats",
        "profile",
    ]);
    let window = |table: &mut Table, mut cells: Vec<String>| {
        cells.push(format!("{}×{} s", bench.repeats, bench.duration));
        cells.push(bench.repeats.to_string());
        cells.push(bench.profile.to_owned());
        table.push(cells);
    };
    for row in rows {
        let name = || {
            vec![
                row.setup.name.clone(),
                row.setup.mtu.to_string(),
                on_off(row.setup.offload),
            ]
        };
        let Some(relay) = &row.relay else {
            // veth: no daemon, so nothing to attribute.
            window(&mut table, [name(), vec!["—".to_owned(); 7]].concat());
            continue;
        };
        for (daemon, memory) in relay.daemons() {
            let cpu = |direction| cpu_seconds(row, direction, daemon);
            let per_gib = |direction| cpu_per_gib(row, direction, daemon);
            let cells = vec![
                daemon.to_owned(),
                cpu(Direction::ContainerToBubble),
                cpu(Direction::BubbleToContainer),
                per_gib(Direction::ContainerToBubble),
                per_gib(Direction::BubbleToContainer),
                mib(memory.peak_kib),
                format!("{}+{}", mib(memory.anon_kib), mib(memory.file_kib)),
            ];
            window(&mut table, [name(), cells].concat());
        }
    }
    table
}

fn on_off(offload: bool) -> String {
    if offload { "on" } else { "off" }.to_owned()
}

/// CPU seconds of one daemon during one direction's runs, or "—" for veth.
fn cpu_seconds(row: &Row, direction: Direction, daemon: &str) -> String {
    daemon_cpu(row, direction, daemon).map_or("—".to_owned(), |(s, _)| format!("{s:.2}"))
}

/// CPU seconds of one daemon per GiB the runs moved, or "—" for veth.
fn cpu_per_gib(row: &Row, direction: Direction, daemon: &str) -> String {
    match daemon_cpu(row, direction, daemon) {
        Some((seconds, bytes)) if bytes > 0.0 => {
            format!("{:.3}", seconds / (bytes / f64::from(1u32 << 30)))
        }
        _ => "—".to_owned(),
    }
}

/// (CPU seconds, bytes moved) of one daemon during one direction's runs.
fn daemon_cpu(row: &Row, direction: Direction, daemon: &str) -> Option<(f64, f64)> {
    let run = row
        .throughput
        .iter()
        .find(|run| run.direction == direction)?;
    let cpu = run.cpu?;
    let seconds = if daemon == "server" {
        cpu.server
    } else {
        cpu.client
    };
    Some((seconds, run.samples.iter().map(|s| s.bytes).sum()))
}

/// The relay's own view of the load (frames passed and dropped), and the
/// kernel's: frames dropped on each tap.
fn counter_lines(rows: &[Row]) -> Vec<String> {
    let mut lines = Vec::new();
    for row in rows {
        let Some(relay) = &row.relay else {
            continue;
        };
        let counters = &relay.counters;
        let way = |name: &str| {
            let way = &counters[name];
            format!("{} frames, {} dropped", way["frames"], way["dropped"])
        };
        let name = format!("{} mtu {}", row.setup.name, row.setup.mtu);
        lines.push(format!(
            "{name} server counters: tap→socket {}; socket→tap {}; connections {}, protocol errors {}",
            way("tap_to_socket"),
            way("socket_to_tap"),
            counters["connections"],
            counters["protocol_errors"],
        ));
        let (server, client) = (relay.server_tap_drops, relay.client_tap_drops);
        lines.push(format!(
            "{name} kernel drops (rx/tx): server tap {}/{}, container tap {}/{}",
            server.0, server.1, client.0, client.1
        ));
    }
    lines
}

/// One line per target and relay setup: met, or missed by how much.
fn verdicts(rows: &[Row]) -> Vec<String> {
    let mut lines = Vec::new();
    for row in rows.iter().filter(|row| !row.setup.is_baseline()) {
        let name = format!("{} mtu {}", row.setup.name, row.setup.mtu);
        let throughput_target = row.setup.offload && row.setup.mtu == TARGET_MTU;
        for run in row.throughput.iter().filter(|_| throughput_target) {
            let label = run.direction.label();
            lines.push(format!(
                "target {name}: ≥ 60% of veth {label}: {}",
                veth_verdict(rows, row, run.direction)
            ));
            lines.push(format!(
                "target {name}: ≥ 3× plain relay {label}: {}",
                plain_verdict(rows, row, run.direction)
            ));
        }
        lines.push(format!(
            "target {name}: added RTT < 50 µs: {}",
            rtt_verdict(rows, row)
        ));
        for (daemon, memory) in row.relay.iter().flat_map(|relay| relay.daemons()) {
            lines.push(format!(
                "target {name}: {daemon} peak RSS < 4 MiB: {}",
                rss_verdict(memory.peak_kib)
            ));
        }
    }
    lines
}

fn veth_verdict(rows: &[Row], row: &Row, direction: Direction) -> String {
    match ratio_to_veth(rows, row, direction) {
        Some(ratio) if ratio >= MIN_RATIO => format!("met ({:.1}%)", ratio * 100.0),
        Some(ratio) => format!(
            "missed by {:.1} points ({:.1}%)",
            (MIN_RATIO - ratio) * 100.0,
            ratio * 100.0
        ),
        None => "no veth baseline at this MTU".to_owned(),
    }
}

fn plain_verdict(rows: &[Row], row: &Row, direction: Direction) -> String {
    let plain = rows.iter().find(|other| {
        !other.setup.is_baseline() && !other.setup.offload && other.setup.mtu == row.setup.mtu
    });
    let runs = plain.and_then(|plain| {
        let find = |row: &Row| {
            row.throughput
                .iter()
                .find(|run| run.direction == direction)
                .map(median_gbit)
        };
        Some((find(row)?, find(plain)?))
    });
    match runs {
        Some((offload, plain)) if offload >= MIN_GAIN_OVER_PLAIN * plain => {
            format!("met ({:.1}×)", offload / plain)
        }
        Some((offload, plain)) => format!(
            "missed by {:.1}× ({:.1}×)",
            MIN_GAIN_OVER_PLAIN - offload / plain,
            offload / plain
        ),
        None => "no plain relay row at this MTU".to_owned(),
    }
}

fn rtt_verdict(rows: &[Row], row: &Row) -> String {
    match added_rtt_us(rows, row) {
        Some(added) if added < MAX_ADDED_RTT_US => format!("met ({added:+.1} µs)"),
        Some(added) => format!(
            "missed by {:.1} µs ({added:+.1} µs)",
            added - MAX_ADDED_RTT_US
        ),
        None => "no veth baseline at this MTU".to_owned(),
    }
}

fn rss_verdict(kib: u64) -> String {
    if kib < MAX_RSS_KIB {
        format!("met ({})", mib(kib))
    } else {
        format!("missed by {} ({})", mib(kib - MAX_RSS_KIB), mib(kib))
    }
}

/// The veth row this row is compared with: same MTU.
fn baseline<'a>(rows: &'a [Row], row: &Row) -> Option<&'a Row> {
    rows.iter()
        .find(|other| other.setup.is_baseline() && other.setup.mtu == row.setup.mtu)
}

fn ratio_to_veth(rows: &[Row], row: &Row, direction: Direction) -> Option<f64> {
    let veth = baseline(rows, row)?;
    let veth_run = veth
        .throughput
        .iter()
        .find(|run| run.direction == direction)?;
    let run = row
        .throughput
        .iter()
        .find(|run| run.direction == direction)?;
    Some(median_gbit(run) / median_gbit(veth_run))
}

fn added_rtt_us(rows: &[Row], row: &Row) -> Option<f64> {
    Some(row.rtt.median_us - baseline(rows, row)?.rtt.median_us)
}

fn median_gbit(run: &Throughput) -> f64 {
    let mut gbits: Vec<f64> = run
        .samples
        .iter()
        .map(|s| s.bits_per_second / 1e9)
        .collect();
    median(&mut gbits)
}

fn spread_gbit(run: &Throughput) -> (f64, f64) {
    let gbits = run.samples.iter().map(|s| s.bits_per_second / 1e9);
    let low = gbits.clone().fold(f64::INFINITY, f64::min);
    (low, gbits.fold(0.0, f64::max))
}

fn median_retransmits(run: &Throughput) -> String {
    let mut counts: Vec<f64> = run
        .samples
        .iter()
        .filter_map(|s| s.retransmits)
        .map(|n| n as f64)
        .collect();
    if counts.is_empty() {
        return "—".to_owned();
    }
    format!("{:.0}", median(&mut counts))
}

fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

/// Rows of cells, printable aligned or as markdown.
struct Table {
    header: Vec<String>,
    lines: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|&cell| cell.to_owned()).collect(),
            lines: Vec::new(),
        }
    }

    fn push(&mut self, line: Vec<String>) {
        self.lines.push(line);
    }

    /// Columns padded to their widest cell (in characters: µ and → are one).
    fn plain(&self) -> String {
        let all = || std::iter::once(&self.header).chain(&self.lines);
        let widths: Vec<usize> = (0..self.header.len())
            .map(|col| {
                all()
                    .map(|line| line[col].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let render = |line: &Vec<String>| {
            let cells = line
                .iter()
                .zip(&widths)
                .map(|(cell, &width)| format!("{cell:width$}"));
            cells.collect::<Vec<_>>().join("  ").trim_end().to_owned()
        };
        all().map(render).collect::<Vec<_>>().join("\n")
    }

    fn markdown(&self) -> String {
        let render = |line: &Vec<String>| format!("| {} |", line.join(" | "));
        let rule = format!("|{}", " --- |".repeat(self.header.len()));
        let body = self.lines.iter().map(render);
        std::iter::once(render(&self.header))
            .chain([rule])
            .chain(body)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_verdicts_say_by_how_much() {
        assert_eq!(rss_verdict(2048), "met (2.00 MiB)");
        assert_eq!(rss_verdict(5120), "missed by 1.00 MiB (5.00 MiB)");
    }

    #[test]
    fn tables_align_on_characters_not_bytes() {
        let mut table = Table::new(&["a", "b"]);
        table.push(vec!["µµ".to_owned(), "x".to_owned()]);
        assert_eq!(table.plain(), "a   b\nµµ  x");
        assert_eq!(table.markdown(), "| a | b |\n| --- | --- |\n| µµ | x |");
    }
}
