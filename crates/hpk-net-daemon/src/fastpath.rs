//! The fast path in the hello: what a client asks for, and how the server
//! decides between wiring a veth pair and relaying.
//!
//! Theory of operation. A client that may use a veth pair says so in its
//! offer (data path 1, "veth wanted, relay acceptable", or 2, "veth only"),
//! attaches its network namespace by `SCM_RIGHTS`, and describes the
//! configuration it expects in hello options:
//!
//! | type | length | value |
//! | --- | --- | --- |
//! | 1 | 5 | IPv4 address, then prefix length |
//! | 2 | 4 | IPv4 default gateway |
//! | 3 | 6 | MAC address |
//! | 4 | 4 | MTU, big-endian |
//! | 5 | ≤ 255 | answer only: the server refuses this connection, UTF-8 reason |
//!
//! The server never takes the container's word for who it is: the address
//! and MAC must be the ones its `--allow-ip`/`--allow-mac` name (the ones
//! hpktainer leased), or the fast path is refused; a server without them
//! has no policy to enforce on a veth port and always relays. The MTU is
//! the server's own `--mtu` when it has one. When wiring fails for any
//! reason (the kernel refusing to move a link into a namespace we hold no
//! capability over, nft missing, a name taken), `auto` answers "relay" and
//! logs why; `veth` (on either side) answers with option 5 and closes.

use std::net::Ipv4Addr;

use hpk_netconf::{Ipv4Net, MacAddr};

use crate::veth::{ContainerSide, DataPathMode};

/// Option: address and prefix length.
pub const OPT_ADDRESS: u8 = 1;
/// Option: default gateway.
pub const OPT_GATEWAY: u8 = 2;
/// Option: MAC address.
pub const OPT_MAC: u8 = 3;
/// Option: MTU.
pub const OPT_MTU: u8 = 4;
/// Answer option: the connection is refused, and why.
pub const OPT_REFUSED: u8 = 5;

/// Offer data path byte: the relay only.
pub const OFFER_RELAY: u8 = 0;
/// Offer data path byte: veth wanted, relay acceptable.
pub const OFFER_VETH: u8 = 1;
/// Offer data path byte: veth or nothing.
pub const OFFER_VETH_ONLY: u8 = 2;
/// Answer data path byte: relay.
pub const ANSWER_RELAY: u8 = 0;
/// Answer data path byte: the veth pair is wired.
pub const ANSWER_VETH: u8 = 1;

/// The offer's data path byte for a client's `--data-path`.
pub fn offer_byte(mode: DataPathMode) -> u8 {
    match mode {
        DataPathMode::Relay => OFFER_RELAY,
        DataPathMode::Auto => OFFER_VETH,
        DataPathMode::Veth => OFFER_VETH_ONLY,
    }
}

/// The options describing the container's configuration.
pub fn request_options(side: &ContainerSide) -> Vec<(u8, Vec<u8>)> {
    let mut address = side.address.addr().octets().to_vec();
    address.push(side.address.prefix_len());
    vec![
        (OPT_ADDRESS, address),
        (OPT_GATEWAY, side.gateway.octets().to_vec()),
        (OPT_MAC, side.mac.octets().to_vec()),
        (OPT_MTU, side.mtu.to_be_bytes().to_vec()),
    ]
}

/// Reads the container's configuration back from offer options.
pub fn side_from_options(options: &[(u8, Vec<u8>)]) -> Result<ContainerSide, String> {
    let find = |kind: u8, len: usize, name: &str| -> Result<&[u8], String> {
        let value = options
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
            .ok_or_else(|| format!("the offer has no {name} option"))?;
        if value.len() != len {
            return Err(format!(
                "the {name} option holds {} bytes, not {len}",
                value.len()
            ));
        }
        Ok(value)
    };
    let address = find(OPT_ADDRESS, 5, "address")?;
    let ip = Ipv4Addr::new(address[0], address[1], address[2], address[3]);
    let address = Ipv4Net::new(ip, address[4]).map_err(|_| "the prefix length exceeds 32")?;
    let gateway = <[u8; 4]>::try_from(find(OPT_GATEWAY, 4, "gateway")?).expect("length checked");
    let mac = <[u8; 6]>::try_from(find(OPT_MAC, 6, "mac")?).expect("length checked");
    let mtu = <[u8; 4]>::try_from(find(OPT_MTU, 4, "mtu")?).expect("length checked");
    Ok(ContainerSide {
        address,
        gateway: Ipv4Addr::from(gateway),
        mac: MacAddr::from(mac),
        mtu: u32::from_be_bytes(mtu),
    })
}

/// The refusal option, its text cut to what an option holds.
pub fn refused_option(reason: &str) -> (u8, Vec<u8>) {
    let mut end = reason.len().min(255);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    (OPT_REFUSED, reason.as_bytes()[..end].to_vec())
}

/// The reason of a refusal, when an answer carries one.
pub fn refusal(options: &[(u8, Vec<u8>)]) -> Option<String> {
    options
        .iter()
        .find(|(kind, _)| *kind == OPT_REFUSED)
        .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
}

/// What the server's policy says about one offer, before any wiring.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Relay, nothing to explain (not asked, or `--data-path relay`).
    Relay,
    /// Try to wire this.
    Wire(ContainerSide),
    /// The fast path cannot be had; relay (`fatal` false) or refuse.
    Decline { reason: String, fatal: bool },
}

/// The server's policy for the fast path.
#[derive(Debug, Clone)]
pub struct Policy {
    pub mode: DataPathMode,
    /// The only MAC and address a container of this server may have.
    pub allow: Option<(MacAddr, Ipv4Addr)>,
    /// The bridge's MTU, which the container's end takes.
    pub mtu: Option<u32>,
}

impl Policy {
    /// Judges an offer's data path byte, options, and attached descriptor.
    pub fn judge(&self, asked: u8, options: &[(u8, Vec<u8>)], has_netns: bool) -> Verdict {
        let wants = matches!(asked, OFFER_VETH | OFFER_VETH_ONLY);
        let only = asked == OFFER_VETH_ONLY || self.mode == DataPathMode::Veth;
        let decline = |reason: String| Verdict::Decline {
            reason,
            fatal: only,
        };
        if self.mode == DataPathMode::Relay {
            return match asked {
                OFFER_VETH_ONLY => decline("this relay server runs with --data-path relay".into()),
                _ => Verdict::Relay,
            };
        }
        if !wants {
            return match self.mode {
                DataPathMode::Veth => decline("the client offered the relay only".into()),
                _ => Verdict::Relay,
            };
        }
        if !has_netns {
            return decline("the offer carries no network namespace".into());
        }
        let Some((mac, ip)) = self.allow else {
            return decline(
                "the server has no --allow-mac/--allow-ip to guard a veth port with".into(),
            );
        };
        let mut side = match side_from_options(options) {
            Ok(side) => side,
            Err(reason) => return decline(reason),
        };
        if side.mac != mac || side.address.addr() != ip {
            return decline(format!(
                "the container asks for {} with mac {}, but this port belongs to {ip} with mac {mac}",
                side.address.addr(),
                side.mac
            ));
        }
        if !side.address.contains(&side.gateway) {
            return decline(format!(
                "gateway {} is outside {}",
                side.gateway, side.address
            ));
        }
        if let Some(mtu) = self.mtu {
            side.mtu = mtu;
        }
        Verdict::Wire(side)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side() -> ContainerSide {
        ContainerSide {
            address: "10.244.3.2/24".parse().unwrap(),
            gateway: "10.244.3.1".parse().unwrap(),
            mac: MacAddr::from_ipv4("10.244.3.2".parse().unwrap()),
            mtu: 1450,
        }
    }

    fn policy(mode: DataPathMode) -> Policy {
        Policy {
            mode,
            allow: Some((side().mac, side().address.addr())),
            mtu: Some(1400),
        }
    }

    #[test]
    fn options_round_trip() {
        assert_eq!(side_from_options(&request_options(&side())), Ok(side()));
    }

    #[test]
    fn a_short_option_is_an_error_not_a_panic() {
        let mut options = request_options(&side());
        options[2].1.pop();
        let err = side_from_options(&options).unwrap_err();
        assert!(err.contains("mac option holds 5 bytes"), "{err}");
        assert!(side_from_options(&[]).is_err());
    }

    #[test]
    fn auto_wires_its_own_container_with_the_servers_mtu() {
        let verdict = policy(DataPathMode::Auto).judge(OFFER_VETH, &request_options(&side()), true);
        let mut expected = side();
        expected.mtu = 1400;
        assert_eq!(verdict, Verdict::Wire(expected));
    }

    #[test]
    fn another_containers_address_or_mac_is_declined() {
        let mut foreign = side();
        foreign.address = "10.244.3.9/24".parse().unwrap();
        let verdict =
            policy(DataPathMode::Auto).judge(OFFER_VETH, &request_options(&foreign), true);
        assert!(
            matches!(verdict, Verdict::Decline { fatal: false, .. }),
            "{verdict:?}"
        );
        let mut foreign = side();
        foreign.mac = MacAddr::from([2, 0, 0, 0, 0, 1]);
        let verdict =
            policy(DataPathMode::Veth).judge(OFFER_VETH, &request_options(&foreign), true);
        assert!(
            matches!(verdict, Verdict::Decline { fatal: true, .. }),
            "{verdict:?}"
        );
    }

    #[test]
    fn relay_mode_and_relay_offers_relay() {
        let options = request_options(&side());
        assert_eq!(
            policy(DataPathMode::Relay).judge(OFFER_VETH, &options, true),
            Verdict::Relay
        );
        assert_eq!(
            policy(DataPathMode::Auto).judge(OFFER_RELAY, &[], false),
            Verdict::Relay
        );
        let only = policy(DataPathMode::Relay).judge(OFFER_VETH_ONLY, &options, true);
        assert!(
            matches!(only, Verdict::Decline { fatal: true, .. }),
            "{only:?}"
        );
        let strict = policy(DataPathMode::Veth).judge(OFFER_RELAY, &[], false);
        assert!(
            matches!(strict, Verdict::Decline { fatal: true, .. }),
            "{strict:?}"
        );
    }

    #[test]
    fn no_namespace_or_no_allow_list_means_no_veth() {
        let options = request_options(&side());
        let verdict = policy(DataPathMode::Auto).judge(OFFER_VETH, &options, false);
        assert!(matches!(verdict, Verdict::Decline { fatal: false, .. }));
        let open = Policy {
            allow: None,
            ..policy(DataPathMode::Auto)
        };
        assert!(matches!(
            open.judge(OFFER_VETH, &options, true),
            Verdict::Decline { .. }
        ));
    }

    #[test]
    fn refusal_round_trips_and_is_cut_on_a_char_boundary() {
        let (kind, value) = refused_option(&"é".repeat(200));
        assert_eq!(kind, OPT_REFUSED);
        assert!(value.len() <= 255);
        let text = refusal(&[(kind, value)]).unwrap();
        assert!(text.chars().all(|c| c == 'é'));
    }
}
