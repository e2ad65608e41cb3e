//! Forwarding and masquerading for traffic that leaves the overlay.
//!
//! flanneld masquerades when started with `--ip-masq` (subnet.env then says
//! `FLANNEL_IPMASQ=true`); otherwise hpktainer adds one rule of its own,
//! checked before it is added so it exists exactly once however many
//! containers start, and removed by `gc --all`.

use std::process::Command;

use hpk_netconf::Ipv4Net;
use tracing::{debug, info};

use crate::error::{Error, Result};
use crate::settings::find_program;

const FORWARDING: &str = "/proc/sys/net/ipv4/ip_forward";

/// Turns on IPv4 forwarding in this network namespace.
pub fn enable_forwarding() -> Result<()> {
    let current = std::fs::read_to_string(FORWARDING)
        .map_err(|err| Error::step(format!("read {FORWARDING}"), err))?;
    if current.trim() == "1" {
        return Ok(());
    }
    std::fs::write(FORWARDING, "1").map_err(|err| {
        Error::step(
            "turn on IPv4 forwarding",
            format!("{err}; is this the bubble's namespace?"),
        )
    })?;
    info!("turned on IPv4 forwarding");
    Ok(())
}

/// The masquerade rule for traffic from `subnet` leaving `network`.
fn rule(subnet: Ipv4Net, network: Ipv4Net) -> Vec<String> {
    let comment = format!("hpktainer: masquerade {subnet}");
    [
        "POSTROUTING",
        "-s",
        &subnet.to_string(),
        "!",
        "-d",
        &network.to_string(),
        "-m",
        "comment",
        "--comment",
        &comment,
        "-j",
        "MASQUERADE",
    ]
    .iter()
    .map(|word| word.to_string())
    .collect()
}

/// Adds hpktainer's masquerade rule unless it is there already.
pub fn ensure_masquerade(subnet: Ipv4Net, network: Ipv4Net) -> Result<()> {
    let rule = rule(subnet.trunc(), network.trunc());
    if iptables("-C", &rule)? {
        debug!("masquerade rule present");
        return Ok(());
    }
    if !iptables("-A", &rule)? {
        return Err(Error::step(
            "add the masquerade rule",
            "iptables refused it",
        ));
    }
    info!(%subnet, "added masquerade rule");
    Ok(())
}

/// Removes hpktainer's masquerade rule if present; true when one was removed.
pub fn remove_masquerade(subnet: Ipv4Net, network: Ipv4Net) -> Result<bool> {
    let rule = rule(subnet.trunc(), network.trunc());
    if !iptables("-C", &rule)? {
        return Ok(false);
    }
    iptables("-D", &rule)
}

/// Runs `iptables -w -t nat <verb> <rule>`; Ok(false) when it exits non-zero.
fn iptables(verb: &str, rule: &[String]) -> Result<bool> {
    let program = find_program("iptables".as_ref()).ok_or_else(|| Error::ProgramNotFound {
        program: "iptables".into(),
        hint: "; install iptables, or start flanneld with --ip-masq".into(),
    })?;
    let output = Command::new(program)
        .args(["-w", "-t", "nat", verb])
        .args(rule)
        .output()
        .map_err(|err| Error::step("run iptables", err))?;
    if !output.status.success() && verb != "-C" {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(Error::step(format!("iptables {verb}"), stderr.trim()));
    }
    Ok(output.status.success())
}
