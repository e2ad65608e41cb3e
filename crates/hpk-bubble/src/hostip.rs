//! Finds the host's own address, the one other nodes reach it at, the way
//! `ip route get` would, but over netlink and without sending any packet.

use std::net::Ipv4Addr;

use hpk_netconf::Netlink;

use crate::{Error, Result};

/// The source address the kernel would pick towards `towards` (the etcd
/// host, when known), else towards the default gateway.
pub fn detect(towards: Option<Ipv4Addr>) -> Result<Ipv4Addr> {
    // A private single-threaded runtime: netlink is async, the rest of
    // hpk-bubble is not, and no thread may outlive this call.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| Error::io("start a runtime for netlink", e))?;
    runtime.block_on(async {
        let netlink = Netlink::open()?;
        let target = match towards {
            Some(ip) => ip,
            None => match netlink.default_route_v4().await? {
                Some((gateway, _)) => gateway,
                None => {
                    return Err(Error::Invalid(
                        "no default route to find the host address by; pass --host-ip".into(),
                    ));
                }
            },
        };
        match netlink.route_get_v4(target).await? {
            Some((_, _, Some(source))) => Ok(source),
            _ => Err(Error::Invalid(format!(
                "no route with a source address towards {target}; pass --host-ip"
            ))),
        }
    })
}
