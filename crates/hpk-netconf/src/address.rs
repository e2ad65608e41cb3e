//! Addresses on links: list, add and delete them, idempotently.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::AddressMessageBuilder;
use tracing::debug;

use crate::{Error, Netlink, Result, error::netlink_errno};

impl Netlink {
    /// The addresses on the link, with their prefix lengths, like
    /// `ip addr show dev DEV`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        let request = self.handle.address().get().set_link_index_filter(index);
        let replies: std::result::Result<Vec<AddressMessage>, _> =
            request.execute().try_collect().await;
        match replies {
            Ok(messages) => Ok(messages.iter().filter_map(address_of).collect()),
            Err(e) => Err(Error::netlink(
                format!("list addresses of {}", self.label(index).await),
                e,
            )),
        }
    }

    /// Adds the address, like `ip addr add ADDR/LEN dev DEV`; an address
    /// already there with the same prefix length is success.
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<()> {
        debug!(link = index, %addr, "add address");
        let request = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len());
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(Error::netlink(
                format!("add address {addr} on {}", self.label(index).await),
                e,
            )),
        }
    }

    /// Deletes the address, like `ip addr del ADDR/LEN dev DEV`; an address
    /// that is not there is success.
    pub async fn del_address(&self, index: u32, addr: IpNet) -> Result<()> {
        debug!(link = index, %addr, "delete address");
        let message = address_message(index, addr);
        match self.handle.address().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) if netlink_errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
            Err(e) => Err(Error::netlink(
                format!("delete address {addr} from {}", self.label(index).await),
                e,
            )),
        }
    }
}

fn address_message(index: u32, addr: IpNet) -> AddressMessage {
    match addr.addr() {
        IpAddr::V4(ip) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(ip, addr.prefix_len())
            .build(),
        IpAddr::V6(ip) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(index)
            .address(ip, addr.prefix_len())
            .build(),
    }
}

/// The link's own address: IFA_LOCAL where present (on point-to-point links
/// IFA_ADDRESS is the peer), IFA_ADDRESS otherwise (IPv6).
fn address_of(msg: &AddressMessage) -> Option<IpNet> {
    let find = |local: bool| {
        msg.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Local(ip) if local => Some(*ip),
            AddressAttribute::Address(ip) if !local => Some(*ip),
            _ => None,
        })
    };
    let ip = find(true).or_else(|| find(false))?;
    IpNet::new(ip, msg.header.prefix_len).ok()
}
