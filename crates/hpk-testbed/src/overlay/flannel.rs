//! The flannel data plane between test bubbles, built the way flanneld's
//! VXLAN backend builds it (flanneld itself cannot be installed here):
//! `flannel.1` with VNI 1 on UDP 8472, a /32 address per node, and for each
//! other node an onlink route, a permanent neighbour and an FDB entry;
//! flanneld's masquerade rules; and the `subnet.env` it writes.

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{Node, VXLAN_PORT, flannel_network};
use crate::overlay::Bubble;

/// flanneld's VXLAN device, and its VNI.
const DEVICE: &str = "flannel.1";
const VNI: u32 = 1;

/// Creates flannel.1 in the bubble and returns its MAC address.
pub(super) fn add_vtep(bubble: &Bubble) -> Result<String> {
    // local = the host's address, dev = tap0: what flanneld gets from
    // `--iface`/`--public-ip` in a bubble; learning off, since flanneld
    // writes every FDB entry itself.
    let script = format!(
        "ip link add {DEVICE} type vxlan id {VNI} dstport {VXLAN_PORT} local {local} dev tap0 \
             nolearning
         ip link set {DEVICE} mtu {mtu}
         ip addr add {address}/32 dev {DEVICE}
         ip link set {DEVICE} up
         ethtool -K {DEVICE} tx off >/dev/null
         echo 1 > /proc/sys/net/ipv4/ip_forward",
        local = bubble.host_ip(),
        mtu = bubble.flannel_mtu(),
        address = bubble.flannel_ip(),
    );
    // Checksum offload off, as flanneld does: VXLAN frames that cross NAT
    // (slirp4netns here) can otherwise carry checksums the far end drops.
    bubble.try_sh(&script).context("create flannel.1")?;

    let link = link_json(bubble, DEVICE, false)?;
    link["address"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no MAC address in {link}"))
}

/// flanneld's `--ip-masq` rules (nat table, its own chain): no NAT inside
/// the overlay, masquerade what leaves it, and what enters it from outside.
pub(super) fn add_masquerade(bubble: &Bubble) -> Result<()> {
    let network = flannel_network();
    let subnet = bubble.subnet;
    let rules = [
        format!("-s {network} -d {network} -j RETURN"),
        format!("-s {network} ! -d 224.0.0.0/4 -j MASQUERADE --random-fully"),
        format!("! -s {network} -d {subnet} -j RETURN"),
        format!("! -s {network} -d {network} -j MASQUERADE --random-fully"),
    ];
    let mut script = String::from(
        "iptables -t nat -N FLANNEL-POSTRTG
         iptables -t nat -A POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG\n",
    );
    for rule in rules {
        script.push_str(&format!(
            "iptables -t nat -A FLANNEL-POSTRTG {rule} -m comment --comment 'flanneld masq'\n"
        ));
    }
    bubble
        .try_sh(&script)
        .context("add flanneld's masquerade rules")?;
    Ok(())
}

/// For every node, the entries flanneld adds when it learns each other
/// node's lease: route, neighbour, FDB.
pub(super) fn add_peers(nodes: &[Node]) -> Result<()> {
    for node in nodes {
        let mut script = String::new();
        for peer in nodes.iter().filter(|peer| peer.host_ip != node.host_ip) {
            script.push_str(&peer_entries(&peer.bubble));
        }
        if !script.is_empty() {
            node.bubble
                .try_sh(&script)
                .context("add the other nodes to flannel.1")?;
        }
    }
    Ok(())
}

/// The three entries that make `peer`'s subnet reachable over flannel.1.
fn peer_entries(peer: &Bubble) -> String {
    let vtep = peer.flannel_ip();
    let mac = peer.vtep_mac();
    format!(
        "ip route replace {subnet} via {vtep} dev {DEVICE} onlink
         ip neigh replace {vtep} lladdr {mac} dev {DEVICE} nud permanent
         bridge fdb replace {mac} dev {DEVICE} dst {host} self permanent\n",
        subnet = peer.subnet,
        host = peer.host_ip(),
    )
}

/// Writes what flanneld writes once its lease and backend are up;
/// `FLANNEL_SUBNET` is a host address, as flanneld writes it.
pub(super) fn write_subnet_env(bubble: &Bubble) -> Result<()> {
    let gateway = bubble
        .subnet
        .hosts()
        .next()
        .context("subnet without host addresses")?;
    let text = format!(
        "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={gateway}/{prefix}\nFLANNEL_MTU={mtu}\n\
         FLANNEL_IPMASQ=true\n",
        network = flannel_network(),
        prefix = bubble.subnet.prefix_len(),
        mtu = bubble.flannel_mtu(),
    );
    let path = bubble.subnet_env_path();
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
}

/// flannel.1's (rx_packets, tx_packets).
pub(super) fn counters(bubble: &Bubble) -> Result<(u64, u64)> {
    let link = link_json(bubble, DEVICE, true)?;
    let count = |way: &str| {
        link["stats64"][way]["packets"]
            .as_u64()
            .with_context(|| format!("no {way} packet count in {link}"))
    };
    Ok((count("rx")?, count("tx")?))
}

/// A link's MTU inside the bubble.
pub(super) fn link_mtu(bubble: &Bubble, device: &str) -> Result<u32> {
    let link = link_json(bubble, device, false)?;
    let Some(mtu) = link["mtu"].as_u64() else {
        bail!("no MTU in {link}");
    };
    u32::try_from(mtu).context("MTU")
}

/// `ip -j [-s] link show dev DEVICE` inside the bubble, the one object.
fn link_json(bubble: &Bubble, device: &str, stats: bool) -> Result<Value> {
    let flags = if stats { "-j -s" } else { "-j" };
    let out = bubble.try_sh(&format!("ip {flags} link show dev {device}"))?;
    let mut links: Value =
        serde_json::from_str(&out).with_context(|| format!("ip said {out:?}, not JSON"))?;
    let link = links[0].take();
    if link.is_null() {
        bail!("ip listed no link {device}");
    }
    Ok(link)
}
