//! Ethernet MAC addresses: parsing, printing, and the address-derived convention.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use crate::Error;

/// A 48-bit Ethernet MAC address, printed as `0a:58:0a:f4:03:02`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The MAC Kubernetes network plugins derive from a pod's IPv4 address:
    /// `0a:58` followed by the four address bytes (locally administered, unicast).
    pub fn from_ipv4(ip: Ipv4Addr) -> Self {
        let [a, b, c, d] = ip.octets();
        Self([0x0a, 0x58, a, b, c, d])
    }

    /// The six bytes, most significant first.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(octets: [u8; 6]) -> Self {
        Self(octets)
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    /// Accepts six colon-separated groups of one or two hex digits, any case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| Error::InvalidMac {
            input: text.to_string(),
            reason,
        };
        let mut octets = [0u8; 6];
        let mut groups = text.split(':');
        for octet in &mut octets {
            let group = groups
                .next()
                .ok_or_else(|| invalid("expected six colon-separated bytes"))?;
            *octet =
                parse_group(group).ok_or_else(|| invalid("each byte is one or two hex digits"))?;
        }
        if groups.next().is_some() {
            return Err(invalid("expected six colon-separated bytes"));
        }
        Ok(Self(octets))
    }
}

/// One byte of a MAC address; `from_str_radix` alone would accept a sign.
fn parse_group(group: &str) -> Option<u8> {
    let valid = (1..=2).contains(&group.len()) && group.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| u8::from_str_radix(group, 16).ok()).flatten()
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_ipv4_follows_the_kubernetes_convention() {
        let mac = MacAddr::from_ipv4(Ipv4Addr::new(10, 244, 3, 2));
        assert_eq!(mac.octets(), [0x0a, 0x58, 0x0a, 0xf4, 0x03, 0x02]);
        assert_eq!(mac.to_string(), "0a:58:0a:f4:03:02");
    }

    #[test]
    fn parses_any_case_and_short_groups() {
        let want = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x03, 0x02]);
        assert_eq!("0a:58:0a:f4:03:02".parse::<MacAddr>().unwrap(), want);
        assert_eq!("0A:58:0A:F4:03:02".parse::<MacAddr>().unwrap(), want);
        assert_eq!("a:58:a:f4:3:2".parse::<MacAddr>().unwrap(), want);
    }

    #[test]
    fn display_and_debug_are_lowercase_with_two_digits() {
        let mac = MacAddr([0xAB, 0, 1, 0xff, 0x10, 0x0c]);
        assert_eq!(mac.to_string(), "ab:00:01:ff:10:0c");
        assert_eq!(format!("{mac:?}"), "ab:00:01:ff:10:0c");
        assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
    }

    #[test]
    fn rejects_malformed_text_clearly() {
        for bad in [
            "",
            "0a:58:0a:f4:03",
            "0a:58:0a:f4:03:02:01",
            "0a:58:0a:f4:03:0g",
            "0a:58:0a:f4:03:",
            "0a:58:0a:f4:03:002",
            "0a:58:0a:f4:03:+2",
            "0a-58-0a-f4-03-02",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("invalid mac address"), "{bad}: {text}");
            assert!(matches!(err, Error::InvalidMac { .. }));
        }
    }
}
