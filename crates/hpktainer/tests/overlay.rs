//! Containers across bubbles: `hpktainer run` in two bubbles of the overlay
//! testbed (user-namespace bubbles, slirp4netns, a flannel-equivalent VXLAN
//! data plane), in both MTU variants. Needs root; run by `cargo xtask test`.

use hpk_testbed::overlay::{OverlayOptions, SLIRP_MTU};
use hpk_testbed::scenario;

fn cross_bubble(slirp_mtu: u32, len: u64) -> scenario::Outcome {
    let options = OverlayOptions {
        hosts: 2,
        slirp_mtu,
    };
    let mut log = |line: &str| eprintln!("{line}");
    scenario::cross_bubble(options, len, &mut log).unwrap_or_else(|err| panic!("{err:#}"))
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn containers_in_two_bubbles_talk_over_vxlan_at_the_bubble_mtu() {
    let outcome = cross_bubble(SLIRP_MTU, 1 << 20);
    assert_eq!(outcome.flannel_mtu, 65470);
    // Bubble and container share the bubble's user namespace (fakeroot):
    // the server may wire the container, so auto takes the fast path.
    assert_eq!(outcome.data_path_b, "veth", "{outcome:?}");
    assert!(outcome.address_a.starts_with("10.244.1."), "{outcome:?}");
    assert!(outcome.address_b.starts_with("10.244.2."), "{outcome:?}");
    assert!(
        outcome.route_a.starts_with("default via 10.244.1.1"),
        "{outcome:?}"
    );
    assert!(
        outcome.route_b.starts_with("default via 10.244.2.1"),
        "{outcome:?}"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn containers_in_two_bubbles_talk_over_vxlan_at_mtu_1450() {
    let outcome = cross_bubble(1500, 1 << 20);
    assert_eq!(outcome.flannel_mtu, 1450);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_large_transfer_between_bubbles_arrives_intact() {
    // The digest comparison happens inside the scenario; 64 MiB crosses
    // relay, bridge, VXLAN, slirp4netns and the LAN twice over.
    let outcome = cross_bubble(SLIRP_MTU, 64 << 20);
    assert_eq!(outcome.transfer.len, 64 << 20);
}
