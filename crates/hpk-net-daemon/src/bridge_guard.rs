//! The fast path's source filter: nftables bridge-family rules on a port.
//!
//! Theory of operation. On the relay path every frame from a container
//! passes [`crate::filter::SourceFilter`] in userspace. A veth port has no
//! userspace step, so the same policy is handed to the kernel: one table per
//! port, `bridge hpk_<port>`, whose prerouting chain sends every frame that
//! enters the bridge through that port to a chain that accepts only
//!
//! - frames whose Ethernet source is the container's MAC, and of those
//! - IPv4 from the container's address,
//! - Ethernet/IPv4 ARP whose sender MAC and IP are the container's (or IP
//!   0.0.0.0 in a request, an RFC 5227 probe),
//! - IPv6 from the MAC's link-local address or `::`,
//!
//! and drops the rest, VLAN tags and other ethertypes included. One table
//! per port makes removal one command that cannot touch another
//! container's rules, and lets `hpktainer gc` remove what a killed server
//! left by name alone.
//!
//! The rules match the port by name, so they can be installed before the
//! port exists under that name: the fast path installs them first and
//! attaches the port to the bridge only after, leaving no unfiltered window.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use hpk_netconf::MacAddr;
use tracing::{debug, warn};

use crate::filter::link_local;

/// Why the rules could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// `nft` could not be started.
    #[error("run nft (is the nftables package installed?): {0}")]
    Spawn(#[source] std::io::Error),
    /// `nft` ran and refused.
    #[error("nft refused the rules for {port}: {stderr}")]
    Refused {
        /// The bridge port the rules were for.
        port: String,
        /// What nft said.
        stderr: String,
    },
}

/// Installed rules for one bridge port; [`BridgeGuard::remove`] takes them out.
#[derive(Debug)]
pub struct BridgeGuard {
    port: String,
}

impl BridgeGuard {
    /// Installs the rules for `port`, replacing any left by a previous owner.
    pub fn install(port: &str, mac: MacAddr, ip: Ipv4Addr) -> Result<Self, GuardError> {
        Self::start_install(port, mac, ip).wait()
    }

    /// Starts installing the rules without waiting for nft, so a server can
    /// overlap it with the container's start; [`PendingGuard::wait`] ends it.
    pub fn start_install(port: &str, mac: MacAddr, ip: Ipv4Addr) -> PendingGuard {
        // `flush` after `add` replaces whatever a killed server left in a
        // table of this name, in one transaction with the new rules.
        let table = table_name(port);
        let script = format!(
            "add table bridge {table}\nflush table bridge {table}\n{}",
            ruleset(port, mac, ip)
        );
        PendingGuard {
            port: port.to_owned(),
            child: Some(spawn_nft(&script)),
        }
    }

    /// The table's name.
    pub fn table(&self) -> String {
        table_name(&self.port)
    }

    /// Removes the rules; logs rather than fails, as teardown goes on.
    pub fn remove(self) {
        if let Err(err) = remove_table(&self.port) {
            warn!(port = %self.port, %err, "could not remove the bridge guard");
        }
    }
}

/// Rules on their way in: nft is running. Dropped without
/// [`PendingGuard::wait`] (a server failing at start), it waits for nft and
/// removes what it installed, so no rules outlive their server.
#[derive(Debug)]
pub struct PendingGuard {
    port: String,
    child: Option<Result<std::process::Child, GuardError>>,
}

impl PendingGuard {
    /// Waits for nft; the rules are in place when this returns `Ok`.
    pub fn wait(mut self) -> Result<BridgeGuard, GuardError> {
        let child = self.child.take().expect("only wait and drop take it")?;
        finish_nft(&self.port, child)?;
        debug!(port = %self.port, "bridge guard installed");
        Ok(BridgeGuard {
            port: std::mem::take(&mut self.port),
        })
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Some(Ok(child)) = self.child.take()
            && finish_nft(&self.port, child).is_ok()
        {
            let _ = remove_table(&self.port);
        }
    }
}

/// The table holding `port`'s rules.
pub fn table_name(port: &str) -> String {
    format!("hpk_{port}")
}

/// Removes `port`'s table if there is one; `Ok(false)` when there was none.
pub fn remove_table(port: &str) -> Result<bool, GuardError> {
    match nft(port, &format!("delete table bridge {}\n", table_name(port))) {
        Ok(()) => Ok(true),
        Err(GuardError::Refused { stderr, .. }) if stderr.contains("No such file") => Ok(false),
        Err(err) => Err(err),
    }
}

/// Whether `nft` runs and this process may change rules in its namespace.
pub fn available() -> bool {
    Command::new("nft")
        .args(["list", "tables", "bridge"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The ruleset for one port, as `nft -f` reads it.
fn ruleset(port: &str, mac: MacAddr, ip: Ipv4Addr) -> String {
    let table = table_name(port);
    let ll = link_local(mac.octets());
    format!(
        "table bridge {table} {{
  chain from_port {{
    ether saddr != {mac} drop
    ether type ip ip saddr {ip} accept
    ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether {mac} arp saddr ip {ip} accept
    ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp operation request arp saddr ether {mac} arp saddr ip 0.0.0.0 accept
    ether type ip6 ip6 saddr {{ {ll}, :: }} accept
    drop
  }}
  chain prerouting {{
    type filter hook prerouting priority -200; policy accept;
    iifname \"{port}\" jump from_port
  }}
}}
"
    )
}

/// Runs `nft -f -` with `script` on stdin.
fn nft(port: &str, script: &str) -> Result<(), GuardError> {
    finish_nft(port, spawn_nft(script)?)
}

/// Starts `nft -f -` and hands it `script`; a few hundred bytes fit the
/// pipe, so writing never waits for nft to read.
fn spawn_nft(script: &str) -> Result<std::process::Child, GuardError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GuardError::Spawn)?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // A failed write shows as nft's own failure (a truncated script).
    let _ = stdin.write_all(script.as_bytes());
    Ok(child)
}

fn finish_nft(port: &str, child: std::process::Child) -> Result<(), GuardError> {
    let output = child.wait_with_output().map_err(GuardError::Spawn)?;
    if output.status.success() {
        return Ok(());
    }
    Err(GuardError::Refused {
        port: port.to_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_names_the_port_and_its_addresses() {
        let mac: MacAddr = "0a:58:0a:f4:03:02".parse().unwrap();
        let text = ruleset("hpkabc", mac, Ipv4Addr::new(10, 244, 3, 2));
        assert!(text.starts_with("table bridge hpk_hpkabc {"));
        assert!(text.contains("iifname \"hpkabc\" jump from_port"));
        assert!(text.contains("ether saddr != 0a:58:0a:f4:03:02 drop"));
        assert!(text.contains("ip saddr 10.244.3.2 accept"));
        assert!(text.contains("fe80::858:aff:fef4:302"));
        assert!(text.trim_end().ends_with('}'));
    }
}
