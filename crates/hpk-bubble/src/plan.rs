//! What a `start` will do, checked before anything is applied: the bubble's
//! slirp network, its role, addresses and port forwards.
//!
//! The slirp network follows slirp4netns' own layout: gateway at .2, DNS at
//! .3 and the bubble (the guest) at .100. By default bubble ID `n` gets
//! 10.0.(n+1).0/24, so IDs 0–254 fit; `--cidr` takes any IPv4 network of
//! prefix /8 to /24 given as its network address (the bubble's .100 must
//! fit, and a host address would hide a typo).

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::{Error, Result};

/// The VXLAN port flanneld uses unless told otherwise.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// Kubernetes' API server port, forwarded to the controller.
pub const KUBE_API_PORT: u16 = 6443;
/// etcd's client port, forwarded to the controller.
pub const ETCD_PORT: u16 = 2379;
/// The MTU slirp4netns gives tap0: its largest, for throughput.
pub const SLIRP_MTU: u32 = 65520;

/// What the bubble does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs etcd (and the API server): TCP 6443 and 2379 are forwarded to it.
    Controller,
    /// An ordinary node.
    Node,
}

impl Role {
    /// The name the entrypoint sees in `HPK_ROLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Node => "node",
        }
    }
}

/// The slirp4netns network of one bubble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlirpNet {
    /// The network, e.g. 10.0.2.0/24.
    pub cidr: Ipv4Net,
}

impl SlirpNet {
    /// The default network of bubble `id`: 10.0.(id+1).0/24.
    pub fn for_id(id: u32) -> Result<Self> {
        if id > 254 {
            return Err(Error::Invalid(format!(
                "bubble ID {id} has no default network: 10.0.{}.0/24 is not an address; \
                 use an ID from 0 to 254 or give --cidr",
                u64::from(id) + 1
            )));
        }
        let cidr = Ipv4Net::new(Ipv4Addr::new(10, 0, id as u8 + 1, 0), 24).expect("prefix 24");
        Ok(Self { cidr })
    }

    /// A network given with `--cidr`; see the module documentation for the rules.
    pub fn parse(text: &str) -> Result<Self> {
        let cidr: Ipv4Net = text.parse().map_err(|_| {
            Error::Invalid(format!(
                "--cidr {text}: expected an IPv4 network like 10.10.2.0/24"
            ))
        })?;
        if !(8..=24).contains(&cidr.prefix_len()) {
            return Err(Error::Invalid(format!(
                "--cidr {text}: the prefix must be /8 to /24 (the bubble sits at .100)"
            )));
        }
        if cidr.addr() != cidr.network() {
            return Err(Error::Invalid(format!(
                "--cidr {text}: give the network address, {}",
                cidr.trunc()
            )));
        }
        Ok(Self { cidr })
    }

    fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + n)
    }

    /// slirp's gateway, the host as the bubble sees it (.2).
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(2)
    }

    /// slirp's DNS forwarder (.3): the bubble's only nameserver.
    pub fn dns(&self) -> Ipv4Addr {
        self.nth(3)
    }

    /// The bubble's address on tap0 (.100).
    pub fn guest(&self) -> Ipv4Addr {
        self.nth(100)
    }
}

/// One port forward from the host to the bubble (same port on both sides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// `tcp` or `udp`, as slirp's API spells it.
    pub proto: &'static str,
    /// The port.
    pub port: u16,
}

/// What `start` was asked, before validation.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: u32,
    pub role: Role,
    pub etcd_ip: Option<Ipv4Addr>,
    pub host_ip: Option<Ipv4Addr>,
    pub image: OsString,
    pub cidr: Option<String>,
    pub vxlan_port: u16,
    /// Extra `--bind` specs for the instance.
    pub binds: Vec<String>,
    /// Arguments for the instance's runscript (the entrypoint).
    pub args: Vec<OsString>,
    pub apptainer: PathBuf,
    pub slirp4netns: PathBuf,
}

/// A validated `start`.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: u32,
    pub role: Role,
    pub net: SlirpNet,
    pub host_ip: Ipv4Addr,
    pub etcd_ip: Ipv4Addr,
    pub image: OsString,
    pub vxlan_port: u16,
    pub binds: Vec<String>,
    pub args: Vec<OsString>,
    pub apptainer: PathBuf,
    pub slirp4netns: PathBuf,
}

impl Plan {
    /// Checks `request`; `detect` finds the host's address (given the etcd
    /// address, if known) when `--host-ip` is absent.
    pub fn resolve(
        request: Request,
        detect: impl FnOnce(Option<Ipv4Addr>) -> Result<Ipv4Addr>,
    ) -> Result<Self> {
        let net = match &request.cidr {
            Some(text) => SlirpNet::parse(text)?,
            None => SlirpNet::for_id(request.id)?,
        };
        if request.vxlan_port == 0 {
            return Err(Error::Invalid("--vxlan-port 0 is not a port".into()));
        }
        if request.role == Role::Node && request.etcd_ip.is_none() {
            return Err(Error::Invalid(
                "a node bubble needs --etcd-ip (the controller's host address)".into(),
            ));
        }
        if request.image.is_empty() {
            return Err(Error::Invalid("--image is empty".into()));
        }

        let host_ip = match request.host_ip {
            Some(ip) => ip,
            None => detect(request.etcd_ip)?,
        };
        // The controller runs etcd itself, reachable at its host address.
        let etcd_ip = request.etcd_ip.unwrap_or(host_ip);
        Ok(Plan {
            id: request.id,
            role: request.role,
            net,
            host_ip,
            etcd_ip,
            image: request.image,
            vxlan_port: request.vxlan_port,
            binds: request.binds,
            args: request.args,
            apptainer: request.apptainer,
            slirp4netns: request.slirp4netns,
        })
    }

    /// The instance's name: `hpk-bubble-ID`.
    pub fn instance(&self) -> String {
        instance_name(self.id)
    }

    /// The forwards this bubble needs: VXLAN always, etcd and the API server
    /// on the controller.
    pub fn forwards(&self) -> Vec<Forward> {
        let mut forwards = vec![Forward {
            proto: "udp",
            port: self.vxlan_port,
        }];
        if self.role == Role::Controller {
            for port in [KUBE_API_PORT, ETCD_PORT] {
                forwards.push(Forward { proto: "tcp", port });
            }
        }
        forwards
    }

    /// The bubble's resolv.conf: slirp's DNS forwarder only.
    pub fn resolv_conf(&self) -> String {
        format!(
            "# Written by hpk-bubble for bubble {}: slirp4netns' DNS forwarder.\nnameserver {}\n",
            self.id,
            self.net.dns()
        )
    }

    /// The variables the entrypoint reads.
    pub fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HOST_IP", self.host_ip.to_string()),
            ("ETCD_IP", self.etcd_ip.to_string()),
            ("HPK_ROLE", self.role.as_str().into()),
            ("HPK_BUBBLE_ID", self.id.to_string()),
            ("VXLAN_PORT", self.vxlan_port.to_string()),
        ]
    }
}

/// The instance name of bubble `id`.
pub fn instance_name(id: u32) -> String {
    format!("hpk-bubble-{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u32, role: Role) -> Request {
        Request {
            id,
            role,
            etcd_ip: None,
            host_ip: Some(Ipv4Addr::new(192, 0, 2, 10)),
            image: "bubble.sif".into(),
            cidr: None,
            vxlan_port: DEFAULT_VXLAN_PORT,
            binds: vec![],
            args: vec![],
            apptainer: "apptainer".into(),
            slirp4netns: "slirp4netns".into(),
        }
    }

    fn no_detect(_: Option<Ipv4Addr>) -> Result<Ipv4Addr> {
        panic!("detection not expected")
    }

    #[test]
    fn default_network_follows_the_id() {
        let net = SlirpNet::for_id(1).unwrap();
        assert_eq!(net.cidr.to_string(), "10.0.2.0/24");
        assert_eq!(net.dns(), Ipv4Addr::new(10, 0, 2, 3));
        assert_eq!(net.guest(), Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(net.gateway(), Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(
            SlirpNet::for_id(254).unwrap().cidr.to_string(),
            "10.0.255.0/24"
        );
    }

    #[test]
    fn ids_without_a_network_are_refused_clearly() {
        let err = SlirpNet::for_id(255).unwrap_err().to_string();
        assert!(err.contains("10.0.256.0/24 is not an address"), "{err}");
        assert!(err.contains("--cidr"), "{err}");
    }

    #[test]
    fn cidr_rules() {
        let net = SlirpNet::parse("172.30.0.0/16").unwrap();
        assert_eq!(net.guest(), Ipv4Addr::new(172, 30, 0, 100));
        assert_eq!(net.dns(), Ipv4Addr::new(172, 30, 0, 3));
        for (bad, says) in [
            ("10.0.2.0/25", "/8 to /24"),
            ("10.0.0.0/7", "/8 to /24"),
            ("10.0.2.5/24", "network address, 10.0.2.0/24"),
            ("10.0.2.0", "expected an IPv4 network"),
            ("fd00::/64", "expected an IPv4 network"),
        ] {
            let err = SlirpNet::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn a_large_id_works_with_its_own_cidr() {
        let mut req = request(300, Role::Node);
        req.etcd_ip = Some(Ipv4Addr::new(192, 0, 2, 1));
        req.cidr = Some("10.99.0.0/24".into());
        let plan = Plan::resolve(req, no_detect).unwrap();
        assert_eq!(plan.instance(), "hpk-bubble-300");
        assert_eq!(plan.net.guest(), Ipv4Addr::new(10, 99, 0, 100));
    }

    #[test]
    fn controller_forwards_and_environment() {
        let plan = Plan::resolve(request(1, Role::Controller), no_detect).unwrap();
        let forwards: Vec<_> = plan.forwards().iter().map(|f| (f.proto, f.port)).collect();
        assert_eq!(forwards, [("udp", 8472), ("tcp", 6443), ("tcp", 2379)]);
        // The controller's etcd is on its own host address.
        assert!(
            plan.environment()
                .contains(&("ETCD_IP", "192.0.2.10".into()))
        );
        assert!(
            plan.environment()
                .contains(&("HPK_ROLE", "controller".into()))
        );
        assert_eq!(
            plan.resolv_conf().lines().last(),
            Some("nameserver 10.0.2.3")
        );
    }

    #[test]
    fn node_needs_etcd_and_forwards_only_vxlan() {
        let err = Plan::resolve(request(2, Role::Node), no_detect).unwrap_err();
        assert!(err.to_string().contains("--etcd-ip"), "{err}");

        let mut req = request(2, Role::Node);
        req.etcd_ip = Some(Ipv4Addr::new(192, 0, 2, 1));
        req.vxlan_port = 4789;
        req.host_ip = None;
        let plan = Plan::resolve(req, |etcd| {
            assert_eq!(etcd, Some(Ipv4Addr::new(192, 0, 2, 1)));
            Ok(Ipv4Addr::new(192, 0, 2, 20))
        })
        .unwrap();
        assert_eq!(plan.host_ip, Ipv4Addr::new(192, 0, 2, 20));
        let forwards: Vec<_> = plan.forwards().iter().map(|f| (f.proto, f.port)).collect();
        assert_eq!(forwards, [("udp", 4789)]);
    }
}
