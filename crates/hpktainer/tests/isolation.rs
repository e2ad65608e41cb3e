//! A container cannot impersonate another or poison the bridge's ARP: the
//! relay forwards only frames from the container's own MAC and address, and
//! on the fast path the port's nftables rules do the same.
//! Needs root; run by `cargo xtask test` (ignored by a plain `cargo test`).

mod common;

use common::{Bubble, GATEWAY, stderr};
use hpk_testbed::Proc;
use nix::sys::signal::Signal;

/// Starts a container that prints `prefix` followed by what `script`
/// echoes last, and then sleeps; returns it and that line's rest.
fn start(bubble: &Bubble, what: &str, script: &str, prefix: &'static str) -> (Proc, String) {
    let image = bubble.image.display().to_string();
    let script = format!("{script}; exec sleep 60");
    let words = ["exec", &image, "sh", "-c", &script];
    let (proc, line) = Proc::spawn_until(what, bubble.hpktainer(&words), move |line| {
        line.starts_with(prefix)
    });
    (proc, line.trim_start_matches(prefix).to_owned())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_container_cannot_impersonate_another_or_poison_the_gateway() {
    impersonation_is_blocked("relay");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_fast_path_container_cannot_impersonate_another_or_poison_the_gateway() {
    impersonation_is_blocked("veth");
}

fn impersonation_is_blocked(path: &'static str) {
    let bubble = Bubble::with_data_path(path);
    let (victim, address_b) = start(&bubble, "container B", "echo addr=${HPK_IP%/*}", "addr=");

    // A takes B's address as a second one, pings the gateway from it, and
    // announces itself as the gateway; then checks its own address works.
    let script = format!(
        "ip addr add {address_b}/24 dev tap0 && \
         if ping -c 2 -W 1 -I {address_b} {GATEWAY} >/dev/null; then s=reached; else s=blocked; fi; \
         arping -U -c 2 -s {GATEWAY} -I tap0 {GATEWAY} >/dev/null 2>&1; \
         if ping -c 1 -W 2 {GATEWAY} >/dev/null; then o=ok; else o=failed; fi; \
         echo \"result ${{HPK_IP%/*}} $s $o\""
    );
    let (attacker, result) = start(&bubble, "container A", &script, "result ");
    let words: Vec<&str> = result.split(' ').collect();
    let [address_a, spoof, own] = words[..] else {
        panic!("unexpected result line {result:?}");
    };
    assert_eq!(spoof, "blocked", "A reached the gateway as B");
    assert_eq!(own, "ok", "A's own address still works");

    let ps = bubble.hpktainer(&["ps", "--json"]).output().unwrap();
    assert!(ps.status.success(), "{}", stderr(&ps));
    let entries: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    let entry = |address: &str| {
        entries
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"].as_str() == Some(&format!("{address}/24")))
            .unwrap_or_else(|| panic!("no ps entry for {address}: {entries}"))
            .clone()
    };
    for address in [address_a, &address_b] {
        assert_eq!(entry(address)["data_path"], path, "{entries}");
    }
    if path == "relay" {
        let spoofed = |address: &str| entry(address)["counters"]["spoofed"].as_u64().unwrap();
        assert!(spoofed(address_a) > 0, "A's relay counted its spoofs");
        assert_eq!(spoofed(&address_b), 0, "B sent nothing foreign");
    }

    // The bridge never learnt B's address, or the gateway's, at A's MAC.
    let neighbours = bubble.ns.sh("ip neigh show dev hpk-bridge");
    let mac_a = mac_of(address_a);
    for line in neighbours.lines() {
        assert!(
            !line.contains(&mac_a) || line.starts_with(&format!("{address_a} ")),
            "poisoned: {line}"
        );
    }
    assert!(bubble.ns.ping(&address_b, 2), "B is still B");

    attacker.stop(Signal::SIGTERM);
    victim.stop(Signal::SIGTERM);
}

/// hpktainer's MAC convention: 0a:58 and the IPv4 address.
fn mac_of(address: &str) -> String {
    let octets: Vec<u8> = address.split('.').map(|o| o.parse().unwrap()).collect();
    format!(
        "0a:58:{:02x}:{:02x}:{:02x}:{:02x}",
        octets[0], octets[1], octets[2], octets[3]
    )
}
