//! The fast path's wiring on its own, between namespaces the test makes: a
//! bubble with a bridge holding 10.98.0.1/24 and a container wired by
//! [`veth::prepare`] and [`veth::Prepared::commit`] as 10.98.0.2/24. Shows
//! the container reaches the gateway, cannot send from another address or
//! MAC or poison the gateway's ARP, and that removal leaves nothing. Needs
//! root; run by `cargo xtask test` (ignored by a plain `cargo test`).

use std::fs::File;
use std::os::fd::AsFd;

use hpk_net_daemon::bridge_guard;
use hpk_net_daemon::veth::{self, ContainerSide, Wired};
use hpk_netconf::{MacAddr, Netlink};
use hpk_testbed::Netns;

const GATEWAY: &str = "10.98.0.1";
const CONTAINER: &str = "10.98.0.2";
const OTHER: &str = "10.98.0.3";
const PORT: &str = "hpkvt0";

fn side() -> ContainerSide {
    ContainerSide {
        address: format!("{CONTAINER}/24").parse().unwrap(),
        gateway: GATEWAY.parse().unwrap(),
        mac: MacAddr::from_ipv4(CONTAINER.parse().unwrap()),
        mtu: 1450,
    }
}

fn bubble() -> Netns {
    let bubble = Netns::new("vb");
    bubble.ip("link add br0 address 0a:58:0a:62:00:01 mtu 1450 type bridge");
    bubble.ip(&format!("addr add {GATEWAY}/24 dev br0"));
    bubble.ip("link set br0 up");
    bubble
}

/// Runs `f` with a netlink socket inside `ns`, on a runtime of its own.
fn in_ns<T: Send>(ns: &Netns, f: impl AsyncFnOnce(Netlink) -> T + Send) -> T {
    ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async { f(Netlink::open().unwrap()).await })
    })
}

fn wire(bubble: &Netns, container: &Netns) -> Wired {
    let netns = File::open(container.path()).unwrap();
    in_ns(bubble, async |netlink| {
        let prepared = veth::prepare(&netlink, PORT, netns.as_fd(), side())
            .await
            .expect("prepare the veth pair");
        prepared
            .commit(&netlink, PORT, Some("br0"))
            .await
            .expect("put the veth on the bridge")
    })
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_wired_container_reaches_the_gateway_and_removal_leaves_nothing() {
    let (bubble, container) = (bubble(), Netns::new("vc"));
    let wired = wire(&bubble, &container);

    let inside = container.sh("ip -d -o link show tap0; ip -o addr show tap0; ip route");
    assert!(inside.contains("veth"), "{inside}");
    assert!(inside.contains("link/ether 0a:58:0a:62:00:02"), "{inside}");
    assert!(inside.contains("mtu 1450"), "{inside}");
    assert!(inside.contains(&format!("inet {CONTAINER}/24")), "{inside}");
    assert!(
        inside.contains(&format!("default via {GATEWAY}")),
        "{inside}"
    );
    let port = bubble.sh(&format!("ip -d -o link show {PORT}"));
    assert!(
        port.contains("master br0") && port.contains("veth"),
        "{port}"
    );
    assert!(
        container.ping(GATEWAY, 2),
        "the container reaches its gateway"
    );
    assert!(
        bubble.ping(CONTAINER, 2),
        "the gateway reaches the container"
    );

    in_ns(&bubble, async |netlink| wired.remove(&netlink).await);
    let links = bubble.sh("ip -o link show") + &container.sh("ip -o link show");
    assert!(!links.contains(PORT) && !links.contains("tap0"), "{links}");
    let tables = bubble.sh("nft list tables");
    assert!(
        !tables.contains(&bridge_guard::table_name(PORT)),
        "{tables}"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_wired_container_cannot_send_as_another_or_poison_the_gateway() {
    let (bubble, container) = (bubble(), Netns::new("vc"));
    let wired = wire(&bubble, &container);
    assert!(container.ping(GATEWAY, 1), "the honest path works first");

    // Another address on the same port: its packets never reach the bridge.
    container.ip(&format!("addr add {OTHER}/24 dev tap0"));
    let spoofed = container
        .command("ping")
        .args(["-c", "2", "-W", "1", "-q", "-I", OTHER, GATEWAY])
        .output()
        .unwrap();
    assert!(!spoofed.status.success(), "reached the gateway as {OTHER}");

    // Gratuitous ARP claiming the gateway's address, then another MAC.
    let _ = container
        .command("busybox")
        .args([
            "arping", "-U", "-c", "2", "-s", GATEWAY, "-I", "tap0", GATEWAY,
        ])
        .output();
    container.ip("link set tap0 address 0a:58:0a:62:00:63");
    let _ = container
        .command("ping")
        .args(["-c", "2", "-W", "1", "-q", GATEWAY])
        .output();
    let neighbours = bubble.sh("ip neigh show dev br0");
    assert!(
        !neighbours.contains(OTHER),
        "learnt the spoofed address: {neighbours}"
    );
    assert!(
        !neighbours.contains("0a:58:0a:62:00:63"),
        "learnt the foreign MAC: {neighbours}"
    );
    let fdb = bubble.sh(&format!("bridge fdb show br br0 brport {PORT}"));
    assert!(
        !fdb.contains("0a:58:0a:62:00:63"),
        "the bridge learnt the foreign MAC: {fdb}"
    );

    // Back to its own MAC, the container is itself again.
    container.ip("link set tap0 address 0a:58:0a:62:00:02");
    assert!(
        container.ping(GATEWAY, 2),
        "its own address and MAC still work"
    );
    let counters = bubble.sh(&format!("nft list table bridge {}", wired.table()));
    assert!(counters.contains("drop"), "{counters}");
    in_ns(&bubble, async |netlink| wired.remove(&netlink).await);
}
