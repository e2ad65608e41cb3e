//! `hpktainer run/exec` end to end in a test bubble, through the stand-in
//! apptainer, with the real host-local, relay and kernel. Needs root; run
//! by `cargo xtask test` (ignored by a plain `cargo test`).

mod common;

use std::net::SocketAddr;

use common::{Bubble, GATEWAY, stderr, stdout};
use hpk_testbed::Proc;
use hpk_testbed::process::shell_status;
use hpk_testbed::transfer::{self, Receiver};
use nix::sys::signal::Signal;

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_container_has_its_address_route_mtu_and_mac_and_reaches_the_gateway() {
    let bubble = Bubble::new();
    let before = bubble.snapshot();
    let script =
        "ip -o -4 addr show tap0; ip -o link show tap0; ip route; ping -c 1 -W 2 10.244.7.1";
    let output = bubble.exec(&[], &["sh", "-c", script]);
    let text = stdout(&output);
    assert!(output.status.success(), "{}\n{}", text, stderr(&output));

    let address = text
        .split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .expect("tap0 has an IPv4 address");
    assert!(
        address.starts_with("10.244.7.") && address.ends_with("/24"),
        "{address}"
    );
    assert_ne!(address, "10.244.7.1/24", "never the gateway");
    let last: u8 = address
        .trim_end_matches("/24")
        .rsplit('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(text.contains("mtu 1450"), "flannel MTU: {text}");
    assert!(
        text.contains(&format!("link/ether 0a:58:0a:f4:07:{last:02x}")),
        "MAC: {text}"
    );
    assert!(
        text.contains(&format!("default via {GATEWAY} dev tap0")),
        "route: {text}"
    );
    assert!(text.contains("1 packets received"), "ping: {text}");
    bubble.assert_no_leaks(&before, "nothing left behind");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tcp_from_the_container_arrives_intact_and_crosses_the_relay() {
    let bubble = Bubble::with_data_path("relay");
    let before = bubble.snapshot();
    // The bridge (the gateway address) only exists once a container runs,
    // so the receiver listens on every address of the bubble.
    let receiver = Receiver::listen(&bubble.ns, "0.0.0.0:5001".parse().unwrap());
    let len: u64 = 8 << 20;
    let send = format!("/probe send {GATEWAY}:5001 {len} 7 && echo sent && exec sleep 60");
    let mut words: Vec<String> = vec!["exec".into()];
    words.extend(bubble.probe_bind());
    words.extend([
        bubble.image.display().to_string(),
        "sh".into(),
        "-c".into(),
        send,
    ]);
    let (container, _) =
        Proc::spawn_until("container", bubble.hpktainer(&words), |line| line == "sent");

    assert_eq!(receiver.digest().unwrap(), transfer::expected(len, 7));
    hpk_testbed::report::record(hpk_testbed::report::kind::BYTES_VERIFIED, len);
    let ps = bubble.hpktainer(&["ps", "--json"]).output().unwrap();
    let entries: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    let counted = entries[0]["counters"]["socket_to_tap"]["bytes"]
        .as_u64()
        .unwrap();
    assert!(counted >= len, "the relay carried {counted} bytes of {len}");

    let status = container.stop(Signal::SIGTERM);
    assert_eq!(shell_status(status), 143, "SIGTERM reached the container");
    bubble.assert_no_leaks(&before, "nothing left behind");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn two_containers_in_one_bubble_reach_each_other() {
    let bubble = Bubble::new();
    let mut words: Vec<String> = vec!["exec".into()];
    words.extend(bubble.probe_bind());
    let serve = "echo addr=$HPK_IP; exec /probe recv 5002";
    words.extend([
        bubble.image.display().to_string(),
        "sh".into(),
        "-c".into(),
        serve.into(),
    ]);
    let (mut server, line) = Proc::spawn_until("container A", bubble.hpktainer(&words), |l| {
        l.starts_with("addr=")
    });
    let address_a = line
        .trim_start_matches("addr=")
        .split('/')
        .next()
        .unwrap()
        .to_owned();

    let send = format!("ping -c 1 -W 2 {address_a} && /probe send {address_a}:5002 1048576 3");
    let mut options: Vec<&str> = Vec::new();
    let bind = bubble.probe_bind();
    options.extend(bind.iter().map(String::as_str));
    let output = bubble.exec(&options, &["sh", "-c", &send]);
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let expected = transfer::expected(1 << 20, 3);
    assert!(stdout(&output).contains(&format!("hash={:016x}", expected.hash)));
    assert!(server.wait().success(), "container A received and exited");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_container_reaches_the_outside_through_nat() {
    let bubble = Bubble::new();
    let outside = hpk_testbed::Netns::new("out");
    let (here, there) = (format!("vo{}", std::process::id() % 100_000), "eth0");
    bubble.ns.ip(&format!(
        "link add {here} type veth peer name {there} netns {}",
        outside.name()
    ));
    bubble.ns.ip(&format!("addr add 203.0.113.1/24 dev {here}"));
    bubble.ns.ip(&format!("link set {here} up"));
    outside.ip("addr add 203.0.113.2/24 dev eth0");
    outside.ip("link set eth0 up");

    let receiver = Receiver::listen(&outside, "203.0.113.2:5003".parse().unwrap());
    let mut options: Vec<String> = bubble.probe_bind();
    options.push(bubble.image.display().to_string());
    let mut words = vec!["exec".to_string()];
    words.extend(options);
    words.extend(["/probe", "send", "203.0.113.2:5003", "65536", "5"].map(String::from));
    let output = bubble.hpktainer(&words).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));

    let (digest, peer) = receiver.digest_and_peer().unwrap();
    assert_eq!(digest, transfer::expected(65536, 5));
    let bubble_side: SocketAddr = format!("203.0.113.1:{}", peer.port()).parse().unwrap();
    assert_eq!(
        peer, bubble_side,
        "the outside sees the bubble's address, not 10.244.7.x"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn exit_statuses_pass_through() {
    let bubble = Bubble::new();
    let before = bubble.snapshot();
    assert_eq!(bubble.exec(&[], &["true"]).status.code(), Some(0));
    assert_eq!(
        bubble.exec(&[], &["sh", "-c", "exit 3"]).status.code(),
        Some(3)
    );
    let script = "kill -TERM $$; sleep 5";
    assert_eq!(
        bubble.exec(&[], &["sh", "-c", script]).status.code(),
        Some(143)
    );
    bubble.assert_no_leaks(&before, "nothing left behind");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn awkward_arguments_reach_apptainer_unchanged() {
    let bubble = Bubble::new();
    let args = ["sh", "-c", "exit 0", "a b", "'quoted'", "--", "-x", "--net"];
    let output = bubble.exec(&["--env", "A=B"], &args);
    assert!(output.status.success(), "{}", stderr(&output));

    let log = std::fs::read_to_string(bubble.path("standin.log")).unwrap();
    let record: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    let argv: Vec<String> = serde_json::from_value(record["argv"].clone()).unwrap();
    let image = bubble.image.display().to_string();
    let at = argv
        .iter()
        .position(|word| *word == image)
        .expect("image in argv");
    assert!(
        argv[..at].windows(2).any(|w| w == ["--env", "A=B"]),
        "user option kept: {argv:?}"
    );
    assert!(
        argv[..at].contains(&"--net".to_string()),
        "hpktainer's own network: {argv:?}"
    );
    let tail = &argv[argv.len() - args.len()..];
    assert_eq!(tail, args, "the user's command, word for word, at the end");
}
