//! Hand-built Ethernet frames for tests that talk to a relay as a raw peer.

/// An ARP who-has for `target` from `mac`/`ip`, padded to Ethernet's
/// 60-byte minimum.
pub fn arp_request(mac: [u8; 6], ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&mac);
    // EtherType ARP; Ethernet/IPv4, 6-byte and 4-byte addresses, request.
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target);
    frame.resize(60, 0);
    frame
}
