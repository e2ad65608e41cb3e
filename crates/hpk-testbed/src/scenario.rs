//! The cross-bubble scenario: containers started by `hpktainer run` in two
//! bubbles talking over the overlay, and both reaching the outside. One
//! function, shared by the end-to-end test (which asserts on its result)
//! and `cargo xtask demo` (which prints its steps).
//!
//! Every check is made here and fails the scenario with a message saying
//! what was expected, so the demo cannot show success on a broken run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail, ensure};

use crate::overlay::{Bubble, OUTSIDE_IP, Overlay, OverlayOptions};
use crate::transfer::{self, Digest, Receiver};
use crate::{Proc, bin_path};

/// Port container B listens on.
const PORT_B: u16 = 5005;
/// Ports the outside listens on, one per container.
const PORT_OUT_A: u16 = 5006;
const PORT_OUT_B: u16 = 5007;

/// What the scenario observed.
#[derive(Debug)]
pub struct Outcome {
    pub flannel_mtu: u32,
    pub address_a: String,
    pub address_b: String,
    pub route_a: String,
    pub route_b: String,
    /// B's data path as `hpktainer ps` reports it (veth or relay).
    pub data_path_b: String,
    pub transfer: Digest,
    pub flannel_tx_delta: u64,
    pub flannel_rx_delta_b: u64,
    pub outside_saw: Vec<String>,
}

/// Runs the scenario on a fresh two-host overlay; `say` receives one line
/// per step as it happens.
pub fn cross_bubble(
    options: OverlayOptions,
    len: u64,
    say: &mut dyn FnMut(&str),
) -> Result<Outcome> {
    say(&format!(
        "bringing up {} hosts with a bubble each (slirp MTU {})",
        options.hosts, options.slirp_mtu
    ));
    let overlay = Overlay::new(options).context("bring up the overlay testbed")?;
    for (i, node) in overlay.nodes.iter().enumerate() {
        let bubble = &node.bubble;
        say(&format!(
            "  host {} at {}: bubble pid {}, flannel subnet {}, FLANNEL_MTU {}",
            i + 1,
            node.host_ip,
            bubble.pid(),
            bubble.subnet,
            bubble.flannel_mtu()
        ));
    }
    let scratch = tempfile::Builder::new()
        .prefix("hpkt-img")
        .tempdir_in("/tmp")?;
    let image = crate::image::busybox_image(&scratch.path().join("img"))?;
    run_containers(&overlay, &image, len, say)
}

fn run_containers(
    overlay: &Overlay,
    image: &Path,
    len: u64,
    say: &mut dyn FnMut(&str),
) -> Result<Outcome> {
    let [node_a, node_b] = [&overlay.nodes[0], &overlay.nodes[1]];
    let outside_a = Receiver::listen(&overlay.outside, (OUTSIDE_IP, PORT_OUT_A).into());
    let outside_b = Receiver::listen(&overlay.outside, (OUTSIDE_IP, PORT_OUT_B).into());

    say("starting container B with `hpktainer run` in bubble 2 (stand-in apptainer, test only)");
    let script_b = format!(
        "echo \"addr=$HPK_IP $(ip route | grep ^default)\"; /probe recv {PORT_B} && \
         /probe send {OUTSIDE_IP}:{PORT_OUT_B} 65536 13"
    );
    let command_b = hpktainer_run(&node_b.bubble, image, &script_b);
    let (mut container_b, line) =
        Proc::spawn_until("container B", command_b, |l| l.starts_with("addr="));
    let (address_b, route_b) = line
        .trim_start_matches("addr=")
        .split_once(' ')
        .map(|(address, route)| (address.to_owned(), route.trim().to_owned()))
        .with_context(|| format!("container B printed {line:?}"))?;
    ensure!(
        route_b.starts_with("default via"),
        "container B has no default route: {line}"
    );
    let ip_b = address_b.split('/').next().unwrap_or_default().to_owned();
    let data_path_b = data_path(&node_b.bubble)?;
    say(&format!(
        "  container B: tap0 {address_b}, {route_b}, data path {data_path_b}"
    ));

    let (_, tx_before) = node_a.bubble.flannel_counters()?;
    let (rx_before_b, _) = node_b.bubble.flannel_counters()?;
    say("starting container A in bubble 1: ping B, send bytes to B, reach the outside");
    let script_a = format!(
        "echo addr=$HPK_IP; ip route; ping -c 3 -W 2 {ip_b} && \
         /probe send {ip_b}:{PORT_B} {len} 11 && /probe send {OUTSIDE_IP}:{PORT_OUT_A} 65536 12"
    );
    let output_a = hpktainer_run(&node_a.bubble, image, &script_a).output()?;
    let text_a = checked("container A", &output_a)?;
    ensure!(
        container_b.wait().success(),
        "container B did not finish cleanly"
    );
    let (_, tx_after) = node_a.bubble.flannel_counters()?;
    let (rx_after_b, _) = node_b.bubble.flannel_counters()?;

    let expected = transfer::expected(len, 11);
    let address_a = field_after(&text_a, "addr=")?;
    let route_a = default_route(&text_a)?;
    say(&format!("  container A: tap0 {address_a}, {route_a}"));
    ensure!(
        text_a.contains(&format!("len={len} hash={:016x}", expected.hash)),
        "container A's sender did not report the expected digest:\n{text_a}"
    );
    ensure!(
        text_a.contains(" 0% packet loss"),
        "A's pings to B were not all answered:\n{text_a}"
    );
    say(&format!(
        "  A pinged B and sent {len} bytes; digest {:016x} verified at B",
        expected.hash
    ));

    let mut outside_saw = Vec::new();
    for (name, receiver, seed) in [("A", outside_a, 12), ("B", outside_b, 13)] {
        let (digest, peer) = receiver.digest_and_peer()?;
        ensure!(
            digest == transfer::expected(65536, seed),
            "outside got corrupted bytes from {name}"
        );
        outside_saw.push(format!("{name} arrived from {}", peer.ip()));
    }
    say(&format!(
        "  the outside ({OUTSIDE_IP}) heard from both: {}",
        outside_saw.join(", ")
    ));

    let flannel_tx_delta = tx_after.saturating_sub(tx_before);
    let flannel_rx_delta_b = rx_after_b.saturating_sub(rx_before_b);
    ensure!(
        flannel_tx_delta >= 3 && flannel_rx_delta_b >= 3,
        "flannel.1 counters did not move (tx A +{flannel_tx_delta}, rx B +{flannel_rx_delta_b}): \
         the traffic did not cross VXLAN"
    );
    say(&format!(
        "  flannel.1: bubble 1 sent {flannel_tx_delta} packets, bubble 2 received {flannel_rx_delta_b}"
    ));

    Ok(Outcome {
        flannel_mtu: node_a.bubble.flannel_mtu(),
        address_a,
        route_a,
        address_b,
        route_b,
        data_path_b,
        transfer: expected,
        flannel_tx_delta,
        flannel_rx_delta_b,
        outside_saw,
    })
}

/// `hpktainer run --bind probe IMAGE sh -c SCRIPT` inside `bubble` (the
/// image's runscript runs its arguments); hpk-probe is at `/probe`.
pub fn hpktainer_run(bubble: &Bubble, image: &Path, script: &str) -> Command {
    let mut command = bubble.command(bin_path("hpktainer"));
    command.envs(bubble.hpktainer_env());
    command.env("HPKTAINER_APPTAINER", bin_path("apptainer-standin"));
    command.env("HPKTAINER_NET_DAEMON", bin_path("hpk-net-daemon"));
    command.env("HPK_STANDIN_STATE_DIR", bubble.dir().join("standin"));
    let probe: PathBuf = bin_path("hpk-probe");
    command.args(["run", "--bind", &format!("{}:/probe", probe.display())]);
    command.arg(image).args(["sh", "-c", script]);
    command
}

/// The data path of the one container `hpktainer ps` lists in `bubble`.
fn data_path(bubble: &Bubble) -> Result<String> {
    let mut command = bubble.command(bin_path("hpktainer"));
    command.envs(bubble.hpktainer_env()).args(["ps", "--json"]);
    let text = checked("hpktainer ps", &command.output()?)?;
    let entries: serde_json::Value = serde_json::from_str(&text).context("parse ps --json")?;
    entries[0]["data_path"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no data path in {text}"))
}

fn checked(what: &str, output: &Output) -> Result<String> {
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{text}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(text)
}

fn field_after(text: &str, prefix: &str) -> Result<String> {
    text.lines()
        .find_map(|line| line.strip_prefix(prefix))
        .map(str::to_owned)
        .with_context(|| format!("no {prefix} line in:\n{text}"))
}

fn default_route(text: &str) -> Result<String> {
    text.lines()
        .find(|line| line.starts_with("default via"))
        .map(|line| line.trim().to_owned())
        .with_context(|| format!("no default route in:\n{text}"))
}
