//! The result of ADD: a typed view for callers, the plugin's JSON for the
//! `prevResult` of later calls.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What host-local allocated, as it answered ADD.
///
/// The public fields are a parsed view. The plugin's JSON is kept as it came
/// and is what serialising writes, so a result stored by the caller and read
/// back goes to DEL and CHECK as `prevResult` unchanged, including fields this
/// crate does not model. Changing the public fields does not change it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "Value", into = "Value")]
pub struct AddResult {
    /// The CNI version the result is written in.
    pub cni_version: String,
    /// The allocated addresses, each with its prefix length.
    pub ips: Vec<IpConfig>,
    /// Routes the plugin asks for (host-local passes its `routes` through).
    pub routes: Vec<Route>,
    /// DNS settings (host-local fills them only from a `resolvConf` file).
    pub dns: Dns,
    raw: Value,
}

/// One allocated address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpConfig {
    /// The address with the subnet's prefix length, e.g. `10.244.3.2/24`.
    pub address: IpNet,
    /// The gateway of the range the address came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into the result's interfaces; host-local gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Route {
    /// Destination network.
    pub dst: IpNet,
    /// Next hop; the range's gateway when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings of a result.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dns {
    /// Name servers, as the plugin wrote them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// The fields of a result we read; everything else stays in `raw`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct View {
    cni_version: String,
    #[serde(default)]
    ips: Vec<IpConfig>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
}

impl AddResult {
    /// Parses a result as a plugin prints it (any version from 0.3.0 on:
    /// the `version` tag 0.3.x and 0.4.0 put on each address is ignored).
    pub fn from_slice(json: &[u8]) -> serde_json::Result<Self> {
        let raw: Value = serde_json::from_slice(json)?;
        Self::try_from(raw)
    }

    /// The first IPv4 address, with its prefix length.
    pub fn ipv4(&self) -> Option<Ipv4Net> {
        self.ips.iter().find_map(|ip| match ip.address {
            IpNet::V4(net) => Some(net),
            IpNet::V6(_) => None,
        })
    }

    /// The plugin's JSON, as it came.
    pub fn raw(&self) -> &Value {
        &self.raw
    }
}

impl TryFrom<Value> for AddResult {
    type Error = serde_json::Error;

    fn try_from(raw: Value) -> serde_json::Result<Self> {
        let view = View::deserialize(&raw)?;
        Ok(AddResult {
            cni_version: view.cni_version,
            ips: view.ips,
            routes: view.routes,
            dns: view.dns,
            raw,
        })
    }
}

impl From<AddResult> for Value {
    fn from(result: AddResult) -> Value {
        result.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V040: &str = r#"{
        "cniVersion": "0.4.0",
        "ips": [{"version": "4", "address": "10.9.0.2/30", "gateway": "10.9.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    }"#;

    const V100: &str = r#"{
        "cniVersion": "1.0.0",
        "ips": [
            {"address": "fd00::2/64", "gateway": "fd00::1"},
            {"address": "10.244.3.7/24", "gateway": "10.244.3.1"}
        ],
        "routes": [{"dst": "10.0.0.0/8", "gw": "10.244.3.1"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.local"]}
    }"#;

    #[test]
    fn parses_0_4_0() {
        let result = AddResult::from_slice(V040.as_bytes()).unwrap();
        assert_eq!(result.cni_version, "0.4.0");
        assert_eq!(result.ipv4(), Some("10.9.0.2/30".parse().unwrap()));
        assert_eq!(result.ips[0].gateway, Some("10.9.0.1".parse().unwrap()));
        assert_eq!(result.routes[0].dst, "0.0.0.0/0".parse::<IpNet>().unwrap());
        assert_eq!(result.routes[0].gw, None);
        assert_eq!(result.dns, Dns::default());
    }

    #[test]
    fn parses_1_0_0_and_skips_ipv6_for_ipv4() {
        let result = AddResult::from_slice(V100.as_bytes()).unwrap();
        assert_eq!(result.cni_version, "1.0.0");
        assert_eq!(result.ips.len(), 2);
        assert_eq!(result.ipv4(), Some("10.244.3.7/24".parse().unwrap()));
        assert_eq!(result.dns.nameservers, ["10.96.0.10"]);
        assert_eq!(result.dns.search, ["svc.local"]);
    }

    #[test]
    fn serialises_the_plugin_json_unchanged() {
        let raw: Value = serde_json::from_str(V040).unwrap();
        let result = AddResult::from_slice(V040.as_bytes()).unwrap();
        assert_eq!(serde_json::to_value(&result).unwrap(), raw);

        let text = serde_json::to_string(&result).unwrap();
        let back: AddResult = serde_json::from_str(&text).unwrap();
        assert_eq!(back, result);
        assert_eq!(back.raw(), &raw);
    }

    #[test]
    fn missing_lists_are_empty() {
        let result = AddResult::from_slice(br#"{"cniVersion":"1.0.0"}"#).unwrap();
        assert!(result.ips.is_empty() && result.routes.is_empty());
        assert_eq!(result.ipv4(), None);
    }

    #[test]
    fn rejects_what_is_not_a_result() {
        assert!(AddResult::from_slice(b"junk").is_err());
        assert!(AddResult::from_slice(br#"{"code":7,"msg":"x"}"#).is_err());
        let bad_address = br#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.300/24"}]}"#;
        assert!(AddResult::from_slice(bad_address).is_err());
    }
}
