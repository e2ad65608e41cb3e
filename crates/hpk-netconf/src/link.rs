//! Links: look them up, create bridges and veth pairs, change their state.

use std::os::fd::{AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use netlink_packet_route::link::{self as nl, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{LinkBridge, LinkGetRequest, LinkMessageBuilder, LinkUnspec, LinkVeth};
use tracing::debug;

use crate::{Error, MacAddr, Netlink, Result, error::netlink_errno};

/// What the kernel reports about one link, like a line of `ip -d link`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU in bytes.
    pub mtu: u32,
    /// Hardware address, when the link has a 6-byte one.
    pub mac: Option<MacAddr>,
    /// Whether the link is administratively up (IFF_UP).
    pub up: bool,
    /// Link type from IFLA_LINKINFO: "bridge", "tun", "veth", "vxlan"...
    pub kind: Option<String>,
    /// Index of the bridge (or other master) the link is attached to.
    pub master: Option<u32>,
    /// Transmit queue length.
    pub txqueuelen: u32,
}

impl LinkInfo {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut info = Self {
            index: msg.header.index,
            name: String::new(),
            mtu: 0,
            mac: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            kind: None,
            master: None,
            txqueuelen: 0,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => info.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
                LinkAttribute::Address(bytes) => info.mac = mac_of(bytes),
                LinkAttribute::Controller(master) => {
                    info.master = Some(*master).filter(|&m| m != 0)
                }
                LinkAttribute::TxQueueLen(len) => info.txqueuelen = *len,
                LinkAttribute::LinkInfo(infos) => info.kind = kind_of(infos),
                _ => {}
            }
        }
        info
    }
}

fn mac_of(bytes: &[u8]) -> Option<MacAddr> {
    <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
}

fn kind_of(infos: &[nl::LinkInfo]) -> Option<String> {
    infos.iter().find_map(|info| match info {
        nl::LinkInfo::Kind(kind) => Some(kind.to_string()),
        _ => None,
    })
}

impl Netlink {
    /// The link called `name`, or `None` when there is none.
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>> {
        let request = self.handle.link().get().match_name(name);
        self.get_link(request, || format!("get link {name}")).await
    }

    /// The link with index `index`, or `None` when there is none.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>> {
        let request = self.handle.link().get().match_index(index);
        self.get_link(request, || format!("get link #{index}"))
            .await
    }

    /// Every link of the namespace, like `ip link show`.
    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
        let messages: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink("list links", e))?;
        Ok(messages.iter().map(LinkInfo::from_message).collect())
    }

    async fn get_link(
        &self,
        request: LinkGetRequest,
        op: impl FnOnce() -> String,
    ) -> Result<Option<LinkInfo>> {
        let replies: std::result::Result<Vec<LinkMessage>, _> =
            request.execute().try_collect().await;
        match replies {
            Ok(messages) => Ok(messages.first().map(LinkInfo::from_message)),
            // A lookup of a missing link is answered with ENODEV.
            Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(Error::netlink(op(), e)),
        }
    }

    /// Sets the link administratively up, like `ip link set DEV up`.
    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.change(
            index,
            "set up".into(),
            LinkUnspec::new_with_index(index).up(),
        )
        .await
    }

    /// Sets the link administratively down, like `ip link set DEV down`.
    pub async fn set_down(&self, index: u32) -> Result<()> {
        let builder = LinkUnspec::new_with_index(index).down();
        self.change(index, "set down".into(), builder).await
    }

    /// Sets the MTU, like `ip link set DEV mtu MTU`.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let builder = LinkUnspec::new_with_index(index).mtu(mtu);
        self.change(index, format!("set mtu {mtu}"), builder).await
    }

    /// Sets the transmit queue length, like `ip link set DEV txqueuelen LEN`.
    pub async fn set_txqueuelen(&self, index: u32, len: u32) -> Result<()> {
        let builder = LinkUnspec::new_with_index(index).txqueuelen(len);
        self.change(index, format!("set txqueuelen {len}"), builder)
            .await
    }

    /// Sets the hardware address, like `ip link set DEV address MAC`.
    pub async fn set_mac(&self, index: u32, mac: MacAddr) -> Result<()> {
        let builder = LinkUnspec::new_with_index(index).address(mac.octets().to_vec());
        self.change(index, format!("set address {mac}"), builder)
            .await
    }

    /// Attaches the link to a bridge, like `ip link set DEV master BRIDGE`.
    pub async fn set_master(&self, index: u32, master: u32) -> Result<()> {
        let builder = LinkUnspec::new_with_index(index).controller(master);
        let Err(source) = self.send_change(index, "set master", builder).await else {
            return Ok(());
        };
        let (link, bridge) = (self.label(index).await, self.label(master).await);
        Err(Error::netlink(format!("attach {link} to {bridge}"), source))
    }

    /// Detaches the link from its bridge, like `ip link set DEV nomaster`.
    pub async fn set_nomaster(&self, index: u32) -> Result<()> {
        let builder = LinkUnspec::new_with_index(index).nocontroller();
        self.change(index, "set nomaster".into(), builder).await
    }

    /// Moves the link into the network namespace `netns_fd` refers to, like
    /// `ip link set DEV netns NS`. The link's index may change there.
    pub async fn set_netns_fd(&self, index: u32, netns_fd: BorrowedFd<'_>) -> Result<()> {
        let builder = LinkUnspec::new_with_index(index).setns_by_fd(netns_fd.as_raw_fd());
        self.change(index, "move to another network namespace".into(), builder)
            .await
    }

    /// Creates a bridge, down, like `ip link add NAME type bridge`, and
    /// returns its index. [`Error::AlreadyExists`] if the name is taken.
    pub async fn add_bridge(&self, name: &str) -> Result<u32> {
        // LinkBridge::new would also set it up; creation should not.
        let message = LinkMessageBuilder::<LinkBridge>::new(name).build();
        self.add_link(name, format!("link {name}"), message).await
    }

    /// Creates a veth pair, like `ip link add NAME type veth peer name PEER`,
    /// and returns the index of `name`. [`Error::AlreadyExists`] if either
    /// name is taken.
    pub async fn add_veth(&self, name: &str, peer: &str) -> Result<u32> {
        let message = LinkVeth::new(name, peer).build();
        self.add_link(name, format!("link {name} or {peer}"), message)
            .await
    }

    /// Moves the link into the network namespace `netns_fd` refers to and
    /// renames it there in the same request, like `ip link set DEV netns NS
    /// name NAME`, so the name is never taken in the wrong namespace.
    pub async fn set_netns_fd_named(
        &self,
        index: u32,
        netns_fd: BorrowedFd<'_>,
        name: &str,
    ) -> Result<()> {
        let builder = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns_fd.as_raw_fd())
            .name(name.to_owned());
        let what = format!("move to another network namespace as {name}");
        self.change(index, what, builder).await
    }

    /// Renames the link, like `ip link set DEV name NAME` (it must be down).
    pub async fn set_name(&self, index: u32, name: &str) -> Result<()> {
        let builder = LinkUnspec::new_with_index(index).name(name.to_owned());
        self.change(index, format!("rename to {name}"), builder)
            .await
    }

    /// Creates a veth pair whose both ends have `mtu` and whose peer has
    /// `peer_mac` and is made right inside `peer_netns` when given (no move,
    /// so no wait for the kernel's grace period; the kernel asks for
    /// CAP_NET_ADMIN there as a move would), and returns the index of
    /// `name`. [`Error::AlreadyExists`] if either name is taken.
    pub async fn add_veth_with(
        &self,
        name: &str,
        peer: &str,
        mtu: u32,
        peer_mac: MacAddr,
        peer_netns: Option<BorrowedFd<'_>>,
    ) -> Result<u32> {
        let mut peer_builder = LinkUnspec::new_with_name(peer)
            .mtu(mtu)
            .address(peer_mac.octets().to_vec());
        if let Some(netns) = peer_netns {
            peer_builder = peer_builder.setns_by_fd(netns.as_raw_fd());
        }
        let peer_message = peer_builder.build();
        let message = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(nl::InfoKind::Veth)
            .name(name.to_owned())
            .mtu(mtu)
            .set_info_data(nl::InfoData::Veth(nl::InfoVeth::Peer(peer_message)))
            .build();
        self.add_link(name, format!("link {name} or {peer}"), message)
            .await
    }

    /// Deletes the link, like `ip link del DEV`.
    pub async fn del_link(&self, index: u32) -> Result<()> {
        debug!(link = index, "delete link");
        let Err(source) = self.handle.link().del(index).execute().await else {
            return Ok(());
        };
        Err(Error::netlink(
            format!("delete {}", self.label(index).await),
            source,
        ))
    }

    async fn add_link(&self, name: &str, what: String, message: LinkMessage) -> Result<u32> {
        debug!(link = name, "add link");
        match self.handle.link().add(message).execute().await {
            Ok(()) => {}
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => {
                return Err(Error::AlreadyExists { what });
            }
            Err(e) => return Err(Error::netlink(format!("add {what}"), e)),
        }

        // The kernel's ACK carries no index: look the new link up.
        let link = self.link(name).await?.ok_or_else(|| Error::NotFound {
            what: format!("link {name} right after creating it"),
        })?;
        Ok(link.index)
    }

    /// Sends one change and names the link in the error, like "set mtu 1450 on tap0".
    async fn change(
        &self,
        index: u32,
        what: String,
        builder: LinkMessageBuilder<LinkUnspec>,
    ) -> Result<()> {
        let Err(source) = self.send_change(index, &what, builder).await else {
            return Ok(());
        };
        Err(Error::netlink(
            format!("{what} on {}", self.label(index).await),
            source,
        ))
    }

    async fn send_change(
        &self,
        index: u32,
        what: &str,
        builder: LinkMessageBuilder<LinkUnspec>,
    ) -> std::result::Result<(), rtnetlink::Error> {
        debug!(link = index, "{what}");
        self.handle.link().change(builder.build()).execute().await
    }

    /// The link's name for messages, or "link #INDEX" when it cannot be read.
    pub(crate) async fn label(&self, index: u32) -> String {
        match self.link_by_index(index).await {
            Ok(Some(link)) => link.name,
            _ => format!("link #{index}"),
        }
    }
}
