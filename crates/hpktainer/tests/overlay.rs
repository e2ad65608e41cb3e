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

/// Super-frames from a container cross the VXLAN path (segmented where they
/// leave through flannel.1) and arrive with their checksums right: the
/// receiving container's TcpInCsumErrors, UdpInCsumErrors and IpInHdrErrors
/// (read inside it from /proc/net/snmp, what nstat reads) do not move, and
/// the sender's tap0 handed the relay frames larger than the MTU.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn super_frames_cross_vxlan_with_clean_checksums() {
    use hpk_testbed::overlay::Overlay;
    use hpk_testbed::{image, transfer};

    let overlay = Overlay::new(OverlayOptions {
        hosts: 2,
        slirp_mtu: 1500,
    })
    .unwrap_or_else(|err| panic!("{err:#}"));
    let scratch = tempfile::Builder::new()
        .prefix("hpkt-img")
        .tempdir_in("/tmp")
        .unwrap();
    let image = image::busybox_image(&scratch.path().join("img")).unwrap();
    let (bubble_a, bubble_b) = (&overlay.nodes[0].bubble, &overlay.nodes[1].bubble);

    let script_b = "cat /proc/net/snmp; echo \"addr=$HPK_IP\"; /probe recv 5011; \
                    echo after; cat /proc/net/snmp";
    let mut command_b = scenario::hpktainer_run(bubble_b, &image, script_b);
    command_b.stdout(std::process::Stdio::piped());
    let child_b = command_b.spawn().unwrap();
    let mut child_b = ChildGuard(Some(child_b));
    let stdout_b = child_b.0.as_mut().unwrap().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut text = String::new();
        for line in std::io::BufReader::new(stdout_b).lines() {
            let Ok(line) = line else { break };
            if let Some(address) = line.strip_prefix("addr=") {
                let _ = tx.send(address.split('/').next().unwrap_or_default().to_owned());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let ip_b = rx
        .recv_timeout(hpk_testbed::process::PATIENCE)
        .expect("container B never printed its address");

    let len: u64 = 32 << 20;
    let script_a = format!(
        "/probe send {ip_b}:5011 {len} 11 && cat /sys/class/net/tap0/statistics/tx_bytes \
         /sys/class/net/tap0/statistics/tx_packets"
    );
    let output_a = scenario::hpktainer_run(bubble_a, &image, &script_a)
        .output()
        .unwrap();
    let text_a = String::from_utf8_lossy(&output_a.stdout).into_owned();
    assert!(
        output_a.status.success(),
        "container A failed:\n{text_a}\n{}",
        String::from_utf8_lossy(&output_a.stderr)
    );
    let status_b = child_b.0.take().unwrap().wait().unwrap();
    let text_b = reader.join().unwrap();
    assert!(status_b.success(), "container B failed:\n{text_b}");

    let expected = transfer::expected(len, 11);
    assert!(
        text_b.contains(&format!("hash={:016x}", expected.hash)),
        "B did not receive the bytes A sent:\n{text_b}"
    );
    let (before, after) = text_b.split_once("after\n").expect("B's two snapshots");
    for (section, field) in [
        ("Tcp", "InCsumErrors"),
        ("Udp", "InCsumErrors"),
        ("Ip", "InHdrErrors"),
    ] {
        assert_eq!(
            snmp(before, section, field),
            snmp(after, section, field),
            "{section}{field} moved in the receiving container"
        );
    }
    let numbers: Vec<u64> = text_a
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let [tx_bytes, tx_packets] = numbers[numbers.len() - 2..] else {
        panic!("A printed no tap0 counters:\n{text_a}");
    };
    let average = tx_bytes / tx_packets.max(1);
    assert!(
        average > 1450,
        "A's tap0 sent {average}-byte frames on average: the offload path was not taken"
    );
}

/// One counter from a /proc/net/snmp text: the `section:` header line names
/// the fields, the next `section:` line holds their values.
fn snmp(text: &str, section: &str, field: &str) -> u64 {
    let prefix = format!("{section}:");
    let mut lines = text.lines().filter(|line| line.starts_with(&prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        panic!("no {section} lines in:\n{text}");
    };
    let index = names
        .split_whitespace()
        .position(|name| name == field)
        .unwrap_or_else(|| panic!("no {field} in {names}"));
    values
        .split_whitespace()
        .nth(index)
        .unwrap()
        .parse()
        .unwrap()
}

/// Kills (by pid) and reaps a container that a failed assertion left.
struct ChildGuard(Option<std::process::Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
