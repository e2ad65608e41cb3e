//! Source filtering: which frames from a container may reach the bridge.
//!
//! Theory of operation. A container owns exactly one MAC and one IPv4
//! address, both chosen by hpktainer; the server is told them and checks
//! every frame it reads from the socket before writing it to the tap. A
//! frame passes only when
//!
//! - its Ethernet source is the container's MAC, and
//! - it is IPv4 from the container's address, or
//! - it is ARP (Ethernet/IPv4) whose sender MAC is the container's MAC and
//!   whose sender IP is the container's address, or 0.0.0.0 in a request
//!   (an RFC 5227 probe, which no neighbour table learns from), or
//! - it is IPv6 from the container's link-local address (fe80:: plus the
//!   EUI-64 of its MAC, what the kernel's default `addr_gen_mode` makes) or
//!   from the unspecified address (duplicate address detection).
//!
//! Everything else is dropped: VLAN tags (a container has no business
//! tagging; a tag would let it reach VLANs the bridge may carry), and every
//! other ethertype (LLDP, MPLS, PPPoE, ...), since a container's tap0 only
//! ever needs the three above and an unknown protocol is one the bridge's
//! neighbours have not been hardened against.
//!
//! hpktainer assigns no IPv6 addresses yet, so link-local is all a container
//! may speak; when it does, the allowed IPv6 sources must grow with it.
//!
//! Checking costs a few byte comparisons at fixed offsets and allocates
//! nothing; the relay runs it once per frame.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
/// ARP for Ethernet and IPv4: 8-byte header, two MAC+IP pairs.
const ARP_LEN: usize = 28;
const IPV4_MIN_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;

/// The addresses one container may send from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceFilter {
    mac: [u8; 6],
    ipv4: [u8; 4],
    link_local: [u8; 16],
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spoof {
    /// Too short for the headers its ethertype promises.
    Truncated,
    /// Ethernet source is not the container's MAC.
    SourceMac,
    /// IPv4 source is not the container's address (or not IPv4 at all).
    Ipv4Source,
    /// ARP sender MAC or IP is not the container's, or not Ethernet/IPv4 ARP.
    ArpSender,
    /// IPv6 source is neither the container's link-local nor `::`.
    Ipv6Source,
    /// An 802.1Q or 802.1ad tag.
    VlanTag,
    /// An ethertype a container has no use for.
    EtherType(u16),
}

impl fmt::Display for Spoof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("truncated frame"),
            Self::SourceMac => f.write_str("foreign source MAC"),
            Self::Ipv4Source => f.write_str("foreign IPv4 source"),
            Self::ArpSender => f.write_str("foreign ARP sender"),
            Self::Ipv6Source => f.write_str("foreign IPv6 source"),
            Self::VlanTag => f.write_str("VLAN-tagged frame"),
            Self::EtherType(kind) => write!(f, "ethertype {kind:#06x}"),
        }
    }
}

impl SourceFilter {
    /// A filter letting through frames from `mac` and `ipv4` alone.
    pub fn new(mac: [u8; 6], ipv4: Ipv4Addr) -> Self {
        Self {
            mac,
            ipv4: ipv4.octets(),
            link_local: link_local(mac).octets(),
        }
    }

    /// Passes `frame`, or says why it must be dropped.
    pub fn check(&self, frame: &[u8]) -> Result<(), Spoof> {
        if frame.len() < ETH_HEADER {
            return Err(Spoof::Truncated);
        }
        if frame[6..12] != self.mac {
            return Err(Spoof::SourceMac);
        }
        let payload = &frame[ETH_HEADER..];
        match u16::from_be_bytes([frame[12], frame[13]]) {
            ETHERTYPE_IPV4 => self.check_ipv4(payload),
            ETHERTYPE_ARP => self.check_arp(payload),
            ETHERTYPE_IPV6 => self.check_ipv6(payload),
            ETHERTYPE_VLAN | ETHERTYPE_QINQ => Err(Spoof::VlanTag),
            other => Err(Spoof::EtherType(other)),
        }
    }

    fn check_ipv4(&self, packet: &[u8]) -> Result<(), Spoof> {
        if packet.len() < IPV4_MIN_HEADER {
            return Err(Spoof::Truncated);
        }
        if packet[0] >> 4 != 4 || packet[12..16] != self.ipv4 {
            return Err(Spoof::Ipv4Source);
        }
        Ok(())
    }

    fn check_arp(&self, arp: &[u8]) -> Result<(), Spoof> {
        if arp.len() < ARP_LEN {
            return Err(Spoof::Truncated);
        }
        // Hardware Ethernet (1), protocol IPv4, lengths 6 and 4.
        if arp[0..6] != [0, 1, 0x08, 0x00, 6, 4] || arp[8..14] != self.mac {
            return Err(Spoof::ArpSender);
        }
        let request = arp[6..8] == [0, 1];
        let sender_ip = &arp[14..18];
        if sender_ip == self.ipv4 || (request && sender_ip == [0; 4]) {
            Ok(())
        } else {
            Err(Spoof::ArpSender)
        }
    }

    fn check_ipv6(&self, packet: &[u8]) -> Result<(), Spoof> {
        if packet.len() < IPV6_HEADER {
            return Err(Spoof::Truncated);
        }
        let source = &packet[8..24];
        if packet[0] >> 4 != 6 || (source != self.link_local && source != [0; 16]) {
            return Err(Spoof::Ipv6Source);
        }
        Ok(())
    }
}

/// The link-local address the kernel gives a link with `mac` (EUI-64:
/// universal/local bit flipped, ff:fe in the middle).
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let [a, b, c, d, e, f] = mac;
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([a ^ 0x02, b]),
        u16::from_be_bytes([c, 0xff]),
        u16::from_be_bytes([0xfe, d]),
        u16::from_be_bytes([e, f]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x0a, 0x58, 10, 99, 0, 2];
    const OTHER_MAC: [u8; 6] = [0x0a, 0x58, 10, 99, 0, 3];
    const IP: [u8; 4] = [10, 99, 0, 2];
    const GATEWAY: [u8; 4] = [10, 99, 0, 1];

    fn filter() -> SourceFilter {
        SourceFilter::new(MAC, Ipv4Addr::from(IP))
    }

    fn ethernet(source: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&source);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn ipv4(source: [u8; 4]) -> Vec<u8> {
        let mut packet = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 1, 0, 0];
        packet.extend_from_slice(&source);
        packet.extend_from_slice(&GATEWAY);
        ethernet(MAC, ETHERTYPE_IPV4, &packet)
    }

    fn arp(op: u16, frame_mac: [u8; 6], sender_mac: [u8; 6], sender_ip: [u8; 4]) -> Vec<u8> {
        let mut packet = vec![0, 1, 0x08, 0, 6, 4];
        packet.extend_from_slice(&op.to_be_bytes());
        packet.extend_from_slice(&sender_mac);
        packet.extend_from_slice(&sender_ip);
        packet.extend_from_slice(&[0; 6]);
        packet.extend_from_slice(&GATEWAY);
        ethernet(frame_mac, ETHERTYPE_ARP, &packet)
    }

    fn ipv6(source: Ipv6Addr) -> Vec<u8> {
        let mut packet = vec![0x60, 0, 0, 0, 0, 0, 58, 255];
        packet.extend_from_slice(&source.octets());
        packet.extend_from_slice(&"ff02::2".parse::<Ipv6Addr>().unwrap().octets());
        ethernet(MAC, ETHERTYPE_IPV6, &packet)
    }

    #[test]
    fn link_local_is_the_kernels_eui64() {
        let expected: Ipv6Addr = "fe80::858:aff:fe63:2".parse().unwrap();
        assert_eq!(link_local(MAC), expected);
    }

    #[test]
    fn ipv4_from_its_own_address_passes() {
        assert_eq!(filter().check(&ipv4(IP)), Ok(()));
    }

    #[test]
    fn ipv4_from_another_address_is_dropped() {
        assert_eq!(
            filter().check(&ipv4([10, 99, 0, 3])),
            Err(Spoof::Ipv4Source)
        );
    }

    #[test]
    fn a_foreign_source_mac_is_dropped() {
        let mut frame = ipv4(IP);
        frame[6..12].copy_from_slice(&OTHER_MAC);
        assert_eq!(filter().check(&frame), Err(Spoof::SourceMac));
    }

    #[test]
    fn arp_from_itself_passes_and_so_does_a_probe() {
        assert_eq!(filter().check(&arp(1, MAC, MAC, IP)), Ok(()));
        assert_eq!(filter().check(&arp(2, MAC, MAC, IP)), Ok(()));
        assert_eq!(filter().check(&arp(1, MAC, MAC, [0; 4])), Ok(()));
        assert_eq!(
            filter().check(&arp(2, MAC, MAC, [0; 4])),
            Err(Spoof::ArpSender)
        );
    }

    #[test]
    fn an_arp_reply_claiming_the_gateway_is_dropped() {
        let poison = arp(2, MAC, MAC, GATEWAY);
        assert_eq!(filter().check(&poison), Err(Spoof::ArpSender));
    }

    #[test]
    fn arp_with_a_forged_sender_mac_is_dropped() {
        let forged = arp(1, MAC, OTHER_MAC, IP);
        assert_eq!(filter().check(&forged), Err(Spoof::ArpSender));
    }

    #[test]
    fn ipv6_from_its_link_local_or_unspecified_passes() {
        assert_eq!(filter().check(&ipv6(link_local(MAC))), Ok(()));
        assert_eq!(filter().check(&ipv6(Ipv6Addr::UNSPECIFIED)), Ok(()));
    }

    #[test]
    fn ipv6_from_another_link_local_is_dropped() {
        let frame = ipv6(link_local(OTHER_MAC));
        assert_eq!(filter().check(&frame), Err(Spoof::Ipv6Source));
    }

    #[test]
    fn vlan_tags_and_unknown_ethertypes_are_dropped() {
        let tagged = ethernet(MAC, ETHERTYPE_VLAN, &[0, 5, 0x08, 0, 0x45]);
        assert_eq!(filter().check(&tagged), Err(Spoof::VlanTag));
        let lldp = ethernet(MAC, 0x88cc, &[0; 46]);
        assert_eq!(filter().check(&lldp), Err(Spoof::EtherType(0x88cc)));
    }

    #[test]
    fn truncated_frames_are_dropped() {
        assert_eq!(filter().check(&MAC), Err(Spoof::Truncated));
        let short = &ipv4(IP)[..ETH_HEADER + 10];
        assert_eq!(filter().check(short), Err(Spoof::Truncated));
        let short = &arp(1, MAC, MAC, IP)[..ETH_HEADER + 20];
        assert_eq!(filter().check(short), Err(Spoof::Truncated));
    }
}
