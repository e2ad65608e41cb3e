//! Reads flannel's `subnet.env`: the overlay network, this bubble's subnet, the MTU and masquerading.
//!
//! flanneld writes the file once it has leased a subnet, one `KEY=VALUE` per line:
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.3.1/24
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=true
//! ```
//!
//! `FLANNEL_SUBNET` is written in host form (the gateway's address with the subnet's prefix).
//! Blank lines, `#` comments and surrounding quotes are tolerated, unknown keys are ignored.
//! Every error names the file and, where there is one, the line.

use std::collections::HashMap;
use std::fmt::Display;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};

/// Smallest MTU an IPv4 host must accept (RFC 791).
pub const MIN_MTU: u32 = 576;
/// Largest MTU a Linux tap device accepts.
pub const MAX_MTU: u32 = 65521;

/// A subnet must hold the network address, the gateway, a container and the broadcast address.
const MAX_PREFIX: u8 = 30;

const KEY_NETWORK: &str = "FLANNEL_NETWORK";
const KEY_SUBNET: &str = "FLANNEL_SUBNET";
const KEY_MTU: &str = "FLANNEL_MTU";
const KEY_IPMASQ: &str = "FLANNEL_IPMASQ";
const KEY_IPV6_NETWORK: &str = "FLANNEL_IPV6_NETWORK";
const KEY_IPV6_SUBNET: &str = "FLANNEL_IPV6_SUBNET";
const KNOWN_KEYS: [&str; 6] = [
    KEY_NETWORK,
    KEY_SUBNET,
    KEY_MTU,
    KEY_IPMASQ,
    KEY_IPV6_NETWORK,
    KEY_IPV6_SUBNET,
];

/// What went wrong reading `subnet.env`; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    /// The file does not exist.
    #[error(
        "{} does not exist: flanneld writes it once it has leased a subnet for this bubble; \
         check that flanneld runs, or point --subnet-env (or HPKTAINER_SUBNET_ENV) at the right file",
        path.display()
    )]
    NotFound { path: PathBuf },

    /// The file exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },

    /// The file holds no `KEY=VALUE` line at all.
    #[error("{} is empty: flanneld may still be writing it, or it is not flannel's subnet.env", path.display())]
    Empty { path: PathBuf },

    /// A line that is neither blank, a comment nor `KEY=VALUE`.
    #[error("{}:{line}: expected KEY=VALUE, found {text:?}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        text: String,
    },

    /// A key flannel writes once appears twice.
    #[error("{}:{line}: duplicate key {key} (first set on line {first})", path.display())]
    DuplicateKey {
        path: PathBuf,
        line: usize,
        key: &'static str,
        first: usize,
    },

    /// A required key is absent.
    #[error("missing key {key} in {}", path.display())]
    MissingKey { path: PathBuf, key: &'static str },

    /// A value that should be a CIDR is not one.
    #[error("{}:{line}: {key}={value:?} is not a CIDR such as 10.244.3.1/24: {reason}", path.display())]
    BadCidr {
        path: PathBuf,
        line: usize,
        key: &'static str,
        value: String,
        reason: String,
    },

    /// The subnet lies outside the network.
    #[error("{}:{line}: {key} {subnet} is not inside {network_key} {network}", path.display())]
    SubnetOutsideNetwork {
        path: PathBuf,
        line: usize,
        key: &'static str,
        subnet: String,
        network_key: &'static str,
        network: String,
    },

    /// The subnet has no address left for a container.
    #[error(
        "{}:{line}: {KEY_SUBNET} {subnet} leaves no address for a container: \
         the prefix must be /{MAX_PREFIX} or shorter",
        path.display()
    )]
    SubnetTooSmall {
        path: PathBuf,
        line: usize,
        subnet: Ipv4Net,
    },

    /// The subnet is not one a container can be addressed from.
    #[error(
        "{}:{line}: {KEY_SUBNET} {subnet} is {kind}, not a unicast subnet: containers and \
         their gateway need ordinary addresses; is this flannel's subnet.env?",
        path.display()
    )]
    UnusableSubnet {
        path: PathBuf,
        line: usize,
        subnet: Ipv4Net,
        kind: &'static str,
    },

    /// The MTU is not a number or out of range.
    #[error(
        "{}:{line}: {KEY_MTU}={value:?} must be a whole number from {MIN_MTU} to {MAX_MTU} \
         (the largest MTU a tap device takes)",
        path.display()
    )]
    BadMtu {
        path: PathBuf,
        line: usize,
        value: String,
    },

    /// `FLANNEL_IPMASQ` is neither `true` nor `false`.
    #[error("{}:{line}: {KEY_IPMASQ}={value:?} must be true or false", path.display())]
    BadIpmasq {
        path: PathBuf,
        line: usize,
        value: String,
    },
}

/// The contents of flannel's `subnet.env`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The whole overlay (`FLANNEL_NETWORK`), for example 10.244.0.0/16.
    pub network: Ipv4Net,
    /// This bubble's subnet as written (`FLANNEL_SUBNET`), host form: 10.244.3.1/24.
    pub subnet: Ipv4Net,
    /// MTU for the bridge, the taps and the containers (`FLANNEL_MTU`).
    pub mtu: u32,
    /// Whether flanneld masquerades traffic leaving the overlay itself (`FLANNEL_IPMASQ`).
    pub ipmasq: bool,
    /// The IPv6 overlay, when flannel runs dual-stack.
    pub ipv6_network: Option<Ipv6Net>,
    /// This bubble's IPv6 subnet, when flannel runs dual-stack.
    pub ipv6_subnet: Option<Ipv6Net>,
}

/// One value with the line it came from.
struct Entry<'a> {
    line: usize,
    value: &'a str,
}

impl SubnetEnv {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, SubnetEnvError> {
        let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => SubnetEnvError::NotFound {
                path: path.to_owned(),
            },
            _ => SubnetEnvError::Read {
                path: path.to_owned(),
                source,
            },
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text`; `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, SubnetEnvError> {
        let entries = collect_entries(text, origin)?;
        let parser = Parser {
            path: origin,
            entries,
        };

        let (network, _) = parser.required_cidr::<Ipv4Net>(KEY_NETWORK)?;
        let (subnet, subnet_line) = parser.required_cidr::<Ipv4Net>(KEY_SUBNET)?;
        parser.check_inside(KEY_SUBNET, subnet_line, &subnet, KEY_NETWORK, &network)?;
        if let Some(kind) = not_unicast(&subnet) {
            let path = origin.to_owned();
            return Err(SubnetEnvError::UnusableSubnet {
                path,
                line: subnet_line,
                subnet,
                kind,
            });
        }
        if subnet.prefix_len() > MAX_PREFIX {
            let path = origin.to_owned();
            return Err(SubnetEnvError::SubnetTooSmall {
                path,
                line: subnet_line,
                subnet,
            });
        }

        let (ipv6_network, ipv6_subnet) = parser.ipv6()?;
        Ok(SubnetEnv {
            network,
            subnet,
            mtu: parser.mtu()?,
            ipmasq: parser.ipmasq()?,
            ipv6_network,
            ipv6_subnet,
        })
    }

    /// The subnet as a network: 10.244.3.1/24 gives 10.244.3.0/24.
    pub fn subnet_network(&self) -> Ipv4Net {
        self.subnet.trunc()
    }

    /// The bridge's address: the subnet's first host address with the subnet's prefix
    /// (10.244.3.0/24 gives 10.244.3.1/24).
    pub fn gateway(&self) -> Ipv4Net {
        let first = u32::from(self.subnet.network()) + 1;
        Ipv4Net::new(Ipv4Addr::from(first), self.subnet.prefix_len())
            .expect("the prefix comes from a valid Ipv4Net")
    }
}

/// Splits `text` into `KEY => (line, value)`, rejecting malformed lines and repeated known keys.
fn collect_entries<'a>(
    text: &'a str,
    path: &Path,
) -> Result<HashMap<&'a str, Entry<'a>>, SubnetEnvError> {
    let mut entries: HashMap<&str, Entry> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }

        let malformed = || SubnetEnvError::Malformed {
            path: path.to_owned(),
            line,
            text: raw.to_owned(),
        };
        let (key, value) = trimmed.split_once('=').ok_or_else(malformed)?;
        let key = key.trim_end();
        if !is_valid_key(key) {
            return Err(malformed());
        }

        let value = unquote(value.trim_start());
        if let Some(first) = entries.get(key) {
            if let Some(known) = KNOWN_KEYS.iter().find(|k| **k == key) {
                let (path, first) = (path.to_owned(), first.line);
                return Err(SubnetEnvError::DuplicateKey {
                    path,
                    line,
                    key: known,
                    first,
                });
            }
        }
        entries.insert(key, Entry { line, value });
    }

    if entries.is_empty() {
        return Err(SubnetEnvError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(entries)
}

/// Shell-variable names: letters, digits and underscores, not starting with a digit.
fn is_valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Strips one pair of matching surrounding quotes.
fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        let inner = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote));
        if let Some(inner) = inner {
            return inner;
        }
    }
    value
}

/// Typed access to the collected entries, building errors that name the file.
struct Parser<'a> {
    path: &'a Path,
    entries: HashMap<&'a str, Entry<'a>>,
}

impl Parser<'_> {
    fn required(&self, key: &'static str) -> Result<&Entry<'_>, SubnetEnvError> {
        self.entries
            .get(key)
            .ok_or_else(|| SubnetEnvError::MissingKey {
                path: self.path.to_owned(),
                key,
            })
    }

    fn required_cidr<T>(&self, key: &'static str) -> Result<(T, usize), SubnetEnvError>
    where
        T: FromStr,
        T::Err: Display,
    {
        let entry = self.required(key)?;
        let parsed = entry
            .value
            .parse::<T>()
            .map_err(|e| SubnetEnvError::BadCidr {
                path: self.path.to_owned(),
                line: entry.line,
                key,
                value: entry.value.to_owned(),
                reason: e.to_string(),
            })?;
        Ok((parsed, entry.line))
    }

    fn check_inside<N: Contains + Display>(
        &self,
        key: &'static str,
        line: usize,
        subnet: &N,
        network_key: &'static str,
        network: &N,
    ) -> Result<(), SubnetEnvError> {
        if network.holds(subnet) {
            return Ok(());
        }
        Err(SubnetEnvError::SubnetOutsideNetwork {
            path: self.path.to_owned(),
            line,
            key,
            subnet: subnet.to_string(),
            network_key,
            network: network.to_string(),
        })
    }

    fn mtu(&self) -> Result<u32, SubnetEnvError> {
        let entry = self.required(KEY_MTU)?;
        match entry.value.parse::<u32>() {
            Ok(mtu) if (MIN_MTU..=MAX_MTU).contains(&mtu) => Ok(mtu),
            _ => Err(SubnetEnvError::BadMtu {
                path: self.path.to_owned(),
                line: entry.line,
                value: entry.value.to_owned(),
            }),
        }
    }

    /// flanneld always writes `FLANNEL_IPMASQ`; when absent, flannel is taken not to masquerade.
    fn ipmasq(&self) -> Result<bool, SubnetEnvError> {
        let Some(entry) = self.entries.get(KEY_IPMASQ) else {
            return Ok(false);
        };
        match entry.value {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(SubnetEnvError::BadIpmasq {
                path: self.path.to_owned(),
                line: entry.line,
                value: other.to_owned(),
            }),
        }
    }

    /// Both IPv6 keys or neither.
    fn ipv6(&self) -> Result<(Option<Ipv6Net>, Option<Ipv6Net>), SubnetEnvError> {
        let has_network = self.entries.contains_key(KEY_IPV6_NETWORK);
        let has_subnet = self.entries.contains_key(KEY_IPV6_SUBNET);
        if !has_network && !has_subnet {
            return Ok((None, None));
        }

        let (network, _) = self.required_cidr::<Ipv6Net>(KEY_IPV6_NETWORK)?;
        let (subnet, line) = self.required_cidr::<Ipv6Net>(KEY_IPV6_SUBNET)?;
        self.check_inside(KEY_IPV6_SUBNET, line, &subnet, KEY_IPV6_NETWORK, &network)?;
        Ok((Some(network), Some(subnet)))
    }
}

/// "Is this subnet inside that network", for both address families.
trait Contains {
    fn holds(&self, other: &Self) -> bool;
}

impl Contains for Ipv4Net {
    fn holds(&self, other: &Self) -> bool {
        self.contains(&other.trunc())
    }
}

impl Contains for Ipv6Net {
    fn holds(&self, other: &Self) -> bool {
        self.contains(&other.trunc())
    }
}

/// What kind of non-unicast range `subnet` touches, if any: the kernel
/// refuses such a gateway address on the bridge, or routes it nowhere.
fn not_unicast(subnet: &Ipv4Net) -> Option<&'static str> {
    let (first, last) = (subnet.network(), subnet.broadcast());
    let any = |test: fn(&Ipv4Addr) -> bool| test(&first) || test(&last);
    if any(Ipv4Addr::is_multicast) {
        Some("multicast")
    } else if any(Ipv4Addr::is_loopback) {
        Some("loopback")
    } else if first.octets()[0] == 0 {
        Some("in 0.0.0.0/8 (this host)")
    } else if last.octets()[0] >= 240 {
        Some("reserved (240.0.0.0/4 or broadcast)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.3.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=true
";

    fn parse(text: &str) -> Result<SubnetEnv, SubnetEnvError> {
        SubnetEnv::parse(text, Path::new("/run/flannel/subnet.env"))
    }

    fn message(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn parses_what_flanneld_writes() {
        let env = parse(GOOD).unwrap();
        assert_eq!(env.network, net("10.244.0.0/16"));
        assert_eq!(env.subnet, net("10.244.3.1/24"));
        assert_eq!(env.mtu, 1450);
        assert!(env.ipmasq);
        assert_eq!(env.ipv6_network, None);
        assert_eq!(env.gateway(), net("10.244.3.1/24"));
        assert_eq!(env.subnet_network(), net("10.244.3.0/24"));
    }

    #[test]
    fn gateway_from_network_form() {
        let env = parse(&GOOD.replace("10.244.3.1/24", "10.244.3.0/24")).unwrap();
        assert_eq!(env.gateway(), net("10.244.3.1/24"));
        assert_eq!(env.subnet_network(), net("10.244.3.0/24"));
    }

    #[test]
    fn tolerates_comments_blanks_quotes_spaces_and_unknown_keys() {
        let text = "# written by flanneld\n\n  FLANNEL_NETWORK = \"10.244.0.0/16\"\n\
                    FLANNEL_SUBNET='10.244.3.1/24'\nFLANNEL_MTU=65470\nFLANNEL_IPMASQ=false\n\
                    FLANNEL_FUTURE=x\nFLANNEL_FUTURE=y\n";
        let env = parse(text).unwrap();
        assert_eq!(env.mtu, 65470);
        assert!(!env.ipmasq);
        assert_eq!(env.network, net("10.244.0.0/16"));
    }

    #[test]
    fn ipmasq_absent_means_false() {
        let env = parse(&GOOD.replace("FLANNEL_IPMASQ=true\n", "")).unwrap();
        assert!(!env.ipmasq);
    }

    #[test]
    fn dual_stack() {
        let text = format!(
            "{GOOD}FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n"
        );
        let env = parse(&text).unwrap();
        assert_eq!(env.ipv6_network, Some("fd00:10:244::/56".parse().unwrap()));
        assert_eq!(
            env.ipv6_subnet,
            Some("fd00:10:244:3::1/64".parse().unwrap())
        );
    }

    #[test]
    fn ipv6_subnet_without_network() {
        let text = format!("{GOOD}FLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n");
        assert_eq!(
            message(&text),
            "missing key FLANNEL_IPV6_NETWORK in /run/flannel/subnet.env"
        );
    }

    #[test]
    fn ipv6_subnet_outside_network() {
        let text = format!(
            "{GOOD}FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:99::1/64\n"
        );
        assert!(message(&text).contains(":6: FLANNEL_IPV6_SUBNET fd00:99::1/64 is not inside"));
    }

    #[test]
    fn missing_file_says_who_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        let err = SubnetEnv::load(&path).unwrap_err();
        assert!(matches!(err, SubnetEnvError::NotFound { .. }));
        let text = err.to_string();
        assert!(text.starts_with(&format!("{} does not exist", path.display())));
        assert!(text.contains("flanneld") && text.contains("HPKTAINER_SUBNET_ENV"));
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        std::fs::write(&path, GOOD).unwrap();
        assert_eq!(SubnetEnv::load(&path).unwrap().mtu, 1450);
    }

    #[test]
    fn empty_file() {
        assert_eq!(
            message(""),
            "/run/flannel/subnet.env is empty: flanneld may still be writing it, \
             or it is not flannel's subnet.env"
        );
        assert!(matches!(
            parse("\n# only a comment\n"),
            Err(SubnetEnvError::Empty { .. })
        ));
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let text = GOOD.replace("FLANNEL_MTU=1450", "FLANNEL_MTU 1450");
        assert_eq!(
            message(&text),
            "/run/flannel/subnet.env:3: expected KEY=VALUE, found \"FLANNEL_MTU 1450\""
        );
        assert!(message("=10.0.0.0/8\n").contains(":1: expected KEY=VALUE"));
        assert!(message("1FLANNEL=x\n").contains(":1: expected KEY=VALUE"));
    }

    #[test]
    fn missing_key() {
        let text = GOOD.replace("FLANNEL_SUBNET=10.244.3.1/24\n", "");
        assert_eq!(
            message(&text),
            "missing key FLANNEL_SUBNET in /run/flannel/subnet.env"
        );
        let text = GOOD.replace("FLANNEL_MTU=1450\n", "");
        assert_eq!(
            message(&text),
            "missing key FLANNEL_MTU in /run/flannel/subnet.env"
        );
    }

    #[test]
    fn bad_cidr() {
        let text = GOOD.replace("10.244.3.1/24", "10.244.3.1");
        let text = message(&text);
        assert!(
            text.starts_with(
                "/run/flannel/subnet.env:2: FLANNEL_SUBNET=\"10.244.3.1\" is not a CIDR"
            )
        );
        let text = GOOD.replace("10.244.0.0/16", "10.244.0.0/33");
        assert!(message(&text).contains(":1: FLANNEL_NETWORK=\"10.244.0.0/33\" is not a CIDR"));
    }

    #[test]
    fn subnet_outside_network() {
        let text = GOOD.replace("10.244.3.1/24", "10.245.3.1/24");
        assert_eq!(
            message(&text),
            "/run/flannel/subnet.env:2: FLANNEL_SUBNET 10.245.3.1/24 is not inside \
             FLANNEL_NETWORK 10.244.0.0/16"
        );
        // A subnet larger than the network is not inside it either.
        let text = GOOD.replace("10.244.3.1/24", "10.244.3.1/15");
        assert!(matches!(
            parse(&text),
            Err(SubnetEnvError::SubnetOutsideNetwork { .. })
        ));
    }

    #[test]
    fn subnets_that_are_not_unicast() {
        for (network, subnet, kind) in [
            ("224.0.0.0/4", "224.1.1.1/24", "multicast"),
            ("127.0.0.0/8", "127.0.7.1/24", "loopback"),
            ("0.0.0.0/8", "0.0.7.1/24", "this host"),
            ("240.0.0.0/4", "250.0.7.1/24", "reserved"),
        ] {
            let text = GOOD
                .replace("10.244.0.0/16", network)
                .replace("10.244.3.1/24", subnet);
            let err = message(&text);
            assert!(
                err.contains(kind) && err.contains(":2: FLANNEL_SUBNET"),
                "{err}"
            );
        }
    }

    #[test]
    fn subnet_without_room() {
        let text = GOOD.replace("10.244.3.1/24", "10.244.3.1/31");
        assert_eq!(
            message(&text),
            "/run/flannel/subnet.env:2: FLANNEL_SUBNET 10.244.3.1/31 leaves no address for a \
             container: the prefix must be /30 or shorter"
        );
        let env = parse(&GOOD.replace("10.244.3.1/24", "10.244.3.1/30")).unwrap();
        assert_eq!(env.gateway(), net("10.244.3.1/30"));
    }

    #[test]
    fn mtu_range() {
        for bad in ["575", "65522", "0", "-1", "1450.0", "big", ""] {
            let text = GOOD.replace("FLANNEL_MTU=1450", &format!("FLANNEL_MTU={bad}"));
            let text = message(&text);
            assert!(text.contains(":3: FLANNEL_MTU="), "{text}");
            assert!(text.contains("from 576 to 65521"), "{text}");
        }
        for good in ["576", "65521", "65470"] {
            let text = GOOD.replace("FLANNEL_MTU=1450", &format!("FLANNEL_MTU={good}"));
            assert_eq!(parse(&text).unwrap().mtu, good.parse::<u32>().unwrap());
        }
    }

    #[test]
    fn duplicate_key() {
        let text = format!("{GOOD}FLANNEL_MTU=1400\n");
        assert_eq!(
            message(&text),
            "/run/flannel/subnet.env:5: duplicate key FLANNEL_MTU (first set on line 3)"
        );
    }

    #[test]
    fn ipmasq_must_be_boolean() {
        let text = GOOD.replace("FLANNEL_IPMASQ=true", "FLANNEL_IPMASQ=yes");
        assert_eq!(
            message(&text),
            "/run/flannel/subnet.env:4: FLANNEL_IPMASQ=\"yes\" must be true or false"
        );
    }
}
