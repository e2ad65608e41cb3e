//! `hpk-bridge`: the bridge holding the gateway, made once and kept right.
//!
//! Called under the state lock, so concurrent runs never race to create it.
//! Idempotent: an existing bridge is checked and corrected (MAC, MTU,
//! gateway, link up), and a gateway left by an earlier flannel lease is
//! replaced by the current one.

use hpk_netconf::{IpNet, Ipv4Net, MacAddr, Netlink};
use tracing::{debug, info};

use crate::error::{Error, Result};

/// Makes sure `name` is an up bridge with `gateway` (and no other IPv4
/// address), MTU `mtu`, and a MAC derived from the gateway; returns its index.
///
/// The explicit MAC matters: a bridge without one takes its lowest port's,
/// which changes whenever a container comes or goes and strands the
/// containers' ARP entries for the gateway.
pub async fn ensure(netlink: &Netlink, name: &str, gateway: Ipv4Net, mtu: u32) -> Result<u32> {
    let link = match netlink.link(name).await? {
        Some(link) => link,
        None => create(netlink, name).await?,
    };
    if link.kind.as_deref() != Some("bridge") {
        let kind = link.kind.unwrap_or_else(|| "plain".into());
        return Err(Error::NotABridge {
            name: name.into(),
            kind,
        });
    }

    let mac = MacAddr::from_ipv4(gateway.addr());
    if link.mac != Some(mac) {
        netlink.set_mac(link.index, mac).await?;
    }
    if link.mtu != mtu {
        debug!(bridge = name, mtu, "setting bridge mtu");
        netlink.set_mtu(link.index, mtu).await?;
    }
    replace_stale_gateways(netlink, link.index, gateway).await?;
    netlink.add_address(link.index, IpNet::V4(gateway)).await?;
    if !link.up {
        netlink.set_up(link.index).await?;
    }
    Ok(link.index)
}

async fn create(netlink: &Netlink, name: &str) -> Result<hpk_netconf::LinkInfo> {
    match netlink.add_bridge(name).await {
        Ok(_) => info!(bridge = name, "created bridge"),
        // Someone without our lock (an older hpktainer, a person) was faster.
        Err(hpk_netconf::Error::AlreadyExists { .. }) => {}
        Err(err) => return Err(err.into()),
    }
    netlink
        .link(name)
        .await?
        .ok_or_else(|| Error::step(format!("create bridge {name}"), "it vanished right away"))
}

/// Removes IPv4 addresses other than `gateway`: what an earlier lease left.
async fn replace_stale_gateways(netlink: &Netlink, index: u32, gateway: Ipv4Net) -> Result<()> {
    for address in netlink.addresses(index).await? {
        if let IpNet::V4(v4) = address
            && v4 != gateway
        {
            info!(stale = %v4, current = %gateway, "replacing the gateway of an earlier lease");
            netlink.del_address(index, address).await?;
        }
    }
    Ok(())
}

/// Deletes the bridge if it exists (for `gc --all`).
pub async fn remove(netlink: &Netlink, name: &str) -> Result<bool> {
    match netlink.link(name).await? {
        Some(link) if link.kind.as_deref() == Some("bridge") => {
            netlink.del_link(link.index).await?;
            info!(bridge = name, "removed bridge");
            Ok(true)
        }
        _ => Ok(false),
    }
}
