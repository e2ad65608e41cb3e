//! What to allocate from, and the network configuration host-local reads on
//! stdin.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::validate::validate_network_name;
use crate::{AddResult, Error, Result};

/// One IPv4 range host-local allocates from, and where it keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// CNI network name; host-local keeps its files in `data_dir/<name>/`.
    pub network_name: String,
    /// The subnet, as a network (`10.244.3.0/24`, never `10.244.3.1/24`).
    pub subnet: Ipv4Net,
    /// The gateway host-local reports and never hands out.
    pub gateway: Ipv4Addr,
    /// host-local's `dataDir`.
    pub data_dir: PathBuf,
    /// First address to hand out; host-local starts after the network
    /// address when absent.
    pub range_start: Option<Ipv4Addr>,
    /// Last address to hand out; host-local stops before the broadcast
    /// address when absent.
    pub range_end: Option<Ipv4Addr>,
}

impl IpamConfig {
    /// A range covering `subnet`, given in any host form (flannel writes
    /// `10.244.3.1/24`), with the first host address as gateway.
    pub fn new(
        network_name: impl Into<String>,
        subnet: Ipv4Net,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        let subnet = subnet.trunc();
        let gateway = subnet.hosts().next().unwrap_or(subnet.network());
        IpamConfig {
            network_name: network_name.into(),
            subnet,
            gateway,
            data_dir: data_dir.into(),
            range_start: None,
            range_end: None,
        }
    }

    /// Checks what host-local would reject or misread.
    pub fn validate(&self) -> Result<()> {
        validate_network_name(&self.network_name)?;

        let subnet = self.subnet.trunc();
        let outside = [Some(self.gateway), self.range_start, self.range_end]
            .into_iter()
            .flatten()
            .find(|addr| !subnet.contains(addr));
        if let Some(addr) = outside {
            return Err(invalid(
                "address",
                addr.to_string(),
                "pick one inside the subnet",
            ));
        }

        if self.data_dir.as_os_str().is_empty() || self.data_dir.to_str().is_none() {
            let shown = self.data_dir.display().to_string();
            return Err(invalid("data dir", shown, "give a non-empty UTF-8 path"));
        }
        Ok(())
    }

    /// The netconf for one call, as JSON bytes.
    pub(crate) fn netconf(&self, cni_version: &str, prev: Option<&AddResult>) -> Vec<u8> {
        let conf = NetConf {
            cni_version,
            name: &self.network_name,
            kind: PLUGIN,
            ipam: Ipam {
                kind: PLUGIN,
                ranges: [[Range {
                    subnet: self.subnet.trunc(),
                    gateway: self.gateway,
                    range_start: self.range_start,
                    range_end: self.range_end,
                }]],
                data_dir: &self.data_dir,
            },
            prev_result: prev,
        };
        // Serialising plain strings, addresses and a UTF-8 checked path
        // cannot fail.
        serde_json::to_vec(&conf).expect("netconf serialises")
    }
}

const PLUGIN: &str = "host-local";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NetConf<'a> {
    cni_version: &'a str,
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    ipam: Ipam<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_result: Option<&'a AddResult>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Ipam<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    ranges: [[Range; 1]; 1],
    data_dir: &'a Path,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Range {
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    #[serde(skip_serializing_if = "Option::is_none")]
    range_start: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    range_end: Option<Ipv4Addr>,
}

fn invalid(what: &'static str, value: String, reason: &'static str) -> Error {
    Error::InvalidArgument {
        what,
        value,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn config() -> IpamConfig {
        IpamConfig::new(
            "hpk",
            "10.244.3.1/24".parse().unwrap(),
            "/var/lib/cni/networks",
        )
    }

    fn netconf_value(cfg: &IpamConfig, prev: Option<&AddResult>) -> Value {
        serde_json::from_slice(&cfg.netconf("1.0.0", prev)).unwrap()
    }

    #[test]
    fn normalises_subnet_and_picks_gateway() {
        let cfg = config();
        assert_eq!(cfg.subnet, "10.244.3.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(cfg.gateway, Ipv4Addr::new(10, 244, 3, 1));

        let tiny = IpamConfig::new("n", "10.9.0.3/30".parse().unwrap(), "/d");
        assert_eq!(tiny.subnet.to_string(), "10.9.0.0/30");
        assert_eq!(tiny.gateway, Ipv4Addr::new(10, 9, 0, 1));
    }

    #[test]
    fn netconf_shape() {
        let expected = json!({
            "cniVersion": "1.0.0",
            "name": "hpk",
            "type": "host-local",
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]],
                "dataDir": "/var/lib/cni/networks"
            }
        });
        assert_eq!(netconf_value(&config(), None), expected);
    }

    #[test]
    fn netconf_with_range_and_prev_result() {
        let mut cfg = config();
        cfg.range_start = Some(Ipv4Addr::new(10, 244, 3, 10));
        cfg.range_end = Some(Ipv4Addr::new(10, 244, 3, 20));
        let prev_json = r#"{"cniVersion":"1.0.0","ips":[{"address":"10.244.3.10/24"}],"x":1}"#;
        let prev = AddResult::from_slice(prev_json.as_bytes()).unwrap();

        let conf = netconf_value(&cfg, Some(&prev));
        let range = &conf["ipam"]["ranges"][0][0];
        assert_eq!(range["rangeStart"], "10.244.3.10");
        assert_eq!(range["rangeEnd"], "10.244.3.20");
        let prev_raw: Value = serde_json::from_str(prev_json).unwrap();
        assert_eq!(conf["prevResult"], prev_raw);
    }

    #[test]
    fn netconf_normalises_a_hand_set_subnet() {
        let mut cfg = config();
        cfg.subnet = "10.244.3.9/24".parse().unwrap();
        let conf = netconf_value(&cfg, None);
        assert_eq!(conf["ipam"]["ranges"][0][0]["subnet"], "10.244.3.0/24");
    }

    #[test]
    fn validation() {
        assert!(config().validate().is_ok());

        let mut cfg = config();
        cfg.gateway = Ipv4Addr::new(10, 244, 4, 1);
        assert!(matches!(
            cfg.validate(),
            Err(Error::InvalidArgument {
                what: "address",
                ..
            })
        ));

        let mut cfg = config();
        cfg.range_end = Some(Ipv4Addr::new(10, 0, 0, 1));
        assert!(cfg.validate().is_err());

        let mut cfg = config();
        cfg.network_name = "../x".into();
        assert!(cfg.validate().is_err());

        let mut cfg = config();
        cfg.data_dir = PathBuf::new();
        assert!(matches!(
            cfg.validate(),
            Err(Error::InvalidArgument {
                what: "data dir",
                ..
            })
        ));
    }
}
