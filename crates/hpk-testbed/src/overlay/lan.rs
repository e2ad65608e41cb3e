//! The LAN of the testbed: a router namespace with bridge `lan0`, the
//! outside namespace behind it, and one host namespace per node.

use std::net::Ipv4Addr;

use anyhow::Result;

use super::{LAN_GATEWAY, OUTSIDE_GATEWAY, OUTSIDE_IP, ns_sh};
use crate::Netns;

/// The router: bridge `lan0` with the LAN gateway address, forwarding on so
/// hosts reach the outside namespace.
pub(super) fn build_lan() -> Result<Netns> {
    let lan = Netns::new("ovlan");
    let script = format!(
        "ip link add lan0 type bridge
         ip addr add {LAN_GATEWAY}/24 dev lan0
         ip link set lan0 up
         echo 1 > /proc/sys/net/ipv4/ip_forward"
    );
    ns_sh(&lan, &script, "set up the LAN bridge")?;
    Ok(lan)
}

/// The outside world: a veth from the router, the outside end at
/// [`OUTSIDE_IP`] with its default route back through the router.
pub(super) fn build_outside(lan: &Netns) -> Result<Netns> {
    let outside = Netns::new("ovout");
    let wire = format!(
        "ip link add out0 type veth peer name eth0 netns {peer}
         ip addr add {OUTSIDE_GATEWAY}/24 dev out0
         ip link set out0 up",
        peer = outside.name()
    );
    ns_sh(lan, &wire, "wire the outside namespace to the router")?;

    let address = format!(
        "ip addr add {OUTSIDE_IP}/24 dev eth0
         ip link set eth0 up
         ip route add default via {OUTSIDE_GATEWAY}"
    );
    ns_sh(&outside, &address, "address the outside namespace")?;
    Ok(outside)
}

/// Host `k`: a veth whose LAN end joins `lan0` and whose host end is `eth0`
/// with `host_ip`/24 and a default route through the router.
pub(super) fn build_host(lan: &Netns, k: usize, host_ip: Ipv4Addr) -> Result<Netns> {
    let host = Netns::new("ovh");
    let wire = format!(
        "ip link add h{k} type veth peer name eth0 netns {peer}
         ip link set h{k} master lan0 up",
        peer = host.name()
    );
    ns_sh(lan, &wire, "plug the host into the LAN")?;

    let address = format!(
        "ip addr add {host_ip}/24 dev eth0
         ip link set eth0 up
         ip route add default via {LAN_GATEWAY}"
    );
    ns_sh(&host, &address, "address the host")?;
    Ok(host)
}
