//! The fast path through hpktainer: `--data-path veth` wires the container
//! with a veth pair on hpk-bridge, `ps` says so, the container reaches the
//! gateway and a relayed neighbour, and nothing is left behind, not even
//! after a `kill -9` (then `gc` removes the port's guard). Needs root; run
//! by `cargo xtask test` (ignored by a plain `cargo test`).

mod common;

use common::{Bubble, GATEWAY, stderr, stdout};
use hpk_testbed::Proc;
use nix::sys::signal::Signal;

fn ps_json(bubble: &Bubble) -> serde_json::Value {
    let ps = bubble.hpktainer(&["ps", "--json"]).output().unwrap();
    assert!(ps.status.success(), "{}", stderr(&ps));
    serde_json::from_slice(&ps.stdout).unwrap()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_veth_container_is_wired_on_the_bridge_and_leaves_nothing() {
    let bubble = Bubble::with_data_path("veth");
    let before = bubble.snapshot();
    let image = bubble.image.display().to_string();
    let script = "ip -o -4 addr show tap0; ip -o link show tap0; ip route; \
                  ping -c 1 -W 2 10.244.7.1 && echo pinged; exec sleep 60";
    let words = ["exec", &image, "sh", "-c", script];
    let (container, _) =
        Proc::spawn_until("container", bubble.hpktainer(&words), |l| l == "pinged");

    let entries = ps_json(&bubble);
    let entry = &entries[0];
    assert_eq!(entry["data_path"], "veth", "{entries}");
    let table = stdout(&bubble.hpktainer(&["ps"]).output().unwrap());
    assert!(table.lines().nth(1).unwrap().contains(" veth "), "{table}");
    let port = entry["tap"].as_str().unwrap();
    let link = bubble.ns.sh(&format!("ip -d -o link show {port}"));
    assert!(
        link.contains("veth") && link.contains("master hpk-bridge"),
        "{link}"
    );
    assert!(link.contains("mtu 1450"), "{link}");
    let guards = bubble.ns.sh("nft list tables bridge");
    assert!(guards.contains(&format!("hpk_{port}")), "{guards}");
    let address = entry["address"].as_str().unwrap().trim_end_matches("/24");
    assert!(
        bubble.ns.ping(address, 2),
        "the bubble reaches the container"
    );

    container.stop(Signal::SIGTERM);
    assert_eq!(bubble.snapshot(), before, "nothing left behind");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_veth_container_and_a_relayed_one_reach_each_other() {
    let relayed = Bubble::with_data_path("relay");
    let image = relayed.image.display().to_string();
    let words = [
        "exec",
        &image,
        "sh",
        "-c",
        "echo addr=${HPK_IP%/*}; exec sleep 60",
    ];
    let (b, line) = Proc::spawn_until("relayed container", relayed.hpktainer(&words), |l| {
        l.starts_with("addr=")
    });
    let address_b = line.trim_start_matches("addr=").to_owned();

    // The same bubble, its next container on the fast path.
    let mut command = relayed.hpktainer(&[
        "exec",
        &image,
        "sh",
        "-c",
        &format!("ping -c 2 -W 2 {address_b} && ping -c 1 -W 2 {GATEWAY}"),
    ]);
    command.env("HPKTAINER_DATA_PATH", "veth");
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    assert!(
        stdout(&output).contains("2 packets received"),
        "{}",
        stdout(&output)
    );
    b.stop(Signal::SIGTERM);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn gc_removes_the_guard_a_killed_fast_path_left() {
    let bubble = Bubble::with_data_path("veth");
    let before = bubble.snapshot();
    let image = bubble.image.display().to_string();
    let words = ["exec", &image, "sh", "-c", "echo up; exec sleep 600"];
    let container = Proc::spawn_until_line("container", bubble.hpktainer(&words), "up");
    assert!(bubble.ns.sh("nft list tables bridge").contains("hpk_"));
    container.stop(Signal::SIGKILL);

    // Server and container die with hpktainer; the veth goes with the
    // container's namespace, the server's guard stays for gc.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !bubble.processes().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "processes outlived hpktainer"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        bubble.ns.sh("nft list tables bridge").contains("hpk_"),
        "a killed server cleans nothing"
    );
    let gc = bubble.hpktainer(&["gc"]).output().unwrap();
    assert!(gc.status.success(), "{}", stderr(&gc));
    assert_eq!(bubble.snapshot(), before, "nothing left after gc");
}
