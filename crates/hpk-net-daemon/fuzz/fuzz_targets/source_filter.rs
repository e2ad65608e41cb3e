//! Fuzz target: arbitrary frames through the relay's `SourceFilter`.
//!
//! Input: one mode byte, the container's MAC (6) and IPv4 address (4),
//! then the frame. The mode's bits write the container's addresses into
//! the fields the filter checks (see `steer`), so frames that should pass
//! are common and near misses are one mutation away. The filter must never panic and must agree with the policy, which
//! is written out again here from the module's documentation: a frame
//! passes exactly when it is long enough and from the container's MAC, and
//! is IPv4 from its address, Ethernet/IPv4 ARP whose sender is the
//! container (or 0.0.0.0 in a request), or IPv6 from its link-local or the
//! unspecified address.

#![no_main]

use std::net::Ipv4Addr;

use hpk_net_daemon::filter::{SourceFilter, link_local};
use libfuzzer_sys::fuzz_target;

fn allowed(frame: &[u8], mac: [u8; 6], ip: [u8; 4]) -> bool {
    if frame.len() < 14 || frame[6..12] != mac {
        return false;
    }
    let body = &frame[14..];
    match [frame[12], frame[13]] {
        [0x08, 0x00] => body.len() >= 20 && body[0] >> 4 == 4 && body[12..16] == ip,
        [0x08, 0x06] => {
            body.len() >= 28
                && body[..6] == [0, 1, 8, 0, 6, 4]
                && body[8..14] == mac
                && (body[14..18] == ip || (body[6..8] == [0, 1] && body[14..18] == [0; 4]))
        }
        [0x86, 0xdd] => {
            body.len() >= 40
                && body[0] >> 4 == 6
                && (body[8..24] == link_local(mac).octets() || body[8..24] == [0; 16])
        }
        _ => false,
    }
}

/// Writes the container's addresses into `frame` as `mode` asks: bit 0
/// the Ethernet source, bit 1 the ARP sender MAC or the IPv6 source (its
/// link-local), bit 2 the IPv4 source or ARP sender IP, bit 3 the fixed
/// header fields (ARP's types and lengths, the IP version).
fn steer(frame: &mut [u8], mode: u8, mac: [u8; 6], ip: [u8; 4]) {
    if mode & 1 != 0 && frame.len() >= 12 {
        frame[6..12].copy_from_slice(&mac);
    }
    if frame.len() < 14 {
        return;
    }
    let link_local = link_local(mac).octets();
    let ethertype = [frame[12], frame[13]];
    let mut put = |on: bool, at: usize, value: &[u8]| {
        if on && frame.len() >= at + value.len() {
            frame[at..at + value.len()].copy_from_slice(value);
        }
    };
    let [sender, source, fixed] = [mode & 2 != 0, mode & 4 != 0, mode & 8 != 0];
    match ethertype {
        [0x08, 0x00] => {
            put(source, 26, &ip);
            put(fixed, 14, &[0x45]);
        }
        [0x08, 0x06] => {
            put(sender, 22, &mac);
            put(source, 28, &ip);
            put(fixed, 14, &[0, 1, 8, 0, 6, 4]);
        }
        [0x86, 0xdd] => {
            put(sender, 22, &link_local);
            put(fixed, 14, &[0x60]);
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[mode, m0, m1, m2, m3, m4, m5, a, b, c, d], frame)) = data.split_first_chunk::<11>()
    else {
        return;
    };
    let (mac, ip) = ([m0, m1, m2, m3, m4, m5], [a, b, c, d]);
    let mut frame = frame.to_vec();
    steer(&mut frame, mode, mac, ip);
    let filter = SourceFilter::new(mac, Ipv4Addr::from(ip));
    let verdict = filter.check(&frame);
    assert_eq!(
        verdict.is_ok(),
        allowed(&frame, mac, ip),
        "filter said {verdict:?} for {frame:02x?}"
    );
});
