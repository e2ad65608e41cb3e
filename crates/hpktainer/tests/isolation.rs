//! A container cannot impersonate another or poison the bridge's ARP: the
//! relay forwards only frames from the container's own MAC and address, and
//! on the fast path the port's nftables rules do the same.
//! Needs root; run by `cargo xtask test` (ignored by a plain `cargo test`).

mod common;

use common::{Bubble, GATEWAY, stderr};
use hpk_testbed::Proc;
use nix::sys::signal::Signal;

/// Starts a container that prints `prefix` followed by what `script`
/// echoes last, and then sleeps; returns it and that line's rest.
fn start(bubble: &Bubble, what: &str, script: &str, prefix: &'static str) -> (Proc, String) {
    let image = bubble.image.display().to_string();
    let script = format!("{script}; exec sleep 60");
    let words = ["exec", &image, "sh", "-c", &script];
    let (proc, line) = Proc::spawn_until(what, bubble.hpktainer(&words), move |line| {
        line.starts_with(prefix)
    });
    (proc, line.trim_start_matches(prefix).to_owned())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_container_cannot_impersonate_another_or_poison_the_gateway() {
    impersonation_is_blocked("relay");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_fast_path_container_cannot_impersonate_another_or_poison_the_gateway() {
    impersonation_is_blocked("veth");
}

fn impersonation_is_blocked(path: &'static str) {
    let bubble = Bubble::with_data_path(path);
    let (victim, address_b) = start(&bubble, "container B", "echo addr=${HPK_IP%/*}", "addr=");

    // A takes B's address as a second one, pings the gateway from it, and
    // announces itself as the gateway; then checks its own address works.
    let script = format!(
        "ip addr add {address_b}/24 dev tap0 && \
         if ping -c 2 -W 1 -I {address_b} {GATEWAY} >/dev/null; then s=reached; else s=blocked; fi; \
         arping -U -c 2 -s {GATEWAY} -I tap0 {GATEWAY} >/dev/null 2>&1; \
         if ping -c 1 -W 2 {GATEWAY} >/dev/null; then o=ok; else o=failed; fi; \
         echo \"result ${{HPK_IP%/*}} $s $o\""
    );
    let (attacker, result) = start(&bubble, "container A", &script, "result ");
    let words: Vec<&str> = result.split(' ').collect();
    let [address_a, spoof, own] = words[..] else {
        panic!("unexpected result line {result:?}");
    };
    assert_eq!(spoof, "blocked", "A reached the gateway as B");
    assert_eq!(own, "ok", "A's own address still works");

    let ps = bubble.hpktainer(&["ps", "--json"]).output().unwrap();
    assert!(ps.status.success(), "{}", stderr(&ps));
    let entries: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    let entry = |address: &str| {
        entries
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"].as_str() == Some(&format!("{address}/24")))
            .unwrap_or_else(|| panic!("no ps entry for {address}: {entries}"))
            .clone()
    };
    for address in [address_a, &address_b] {
        assert_eq!(entry(address)["data_path"], path, "{entries}");
    }
    if path == "relay" {
        let spoofed = |address: &str| entry(address)["counters"]["spoofed"].as_u64().unwrap();
        assert!(spoofed(address_a) > 0, "A's relay counted its spoofs");
        assert_eq!(spoofed(&address_b), 0, "B sent nothing foreign");
    }

    // The bridge never learnt B's address, or the gateway's, at A's MAC.
    let neighbours = bubble.ns.sh("ip neigh show dev hpk-bridge");
    let mac_a = mac_of(address_a);
    for line in neighbours.lines() {
        assert!(
            !line.contains(&mac_a) || line.starts_with(&format!("{address_a} ")),
            "poisoned: {line}"
        );
    }
    assert!(bubble.ns.ping(&address_b, 2), "B is still B");

    attacker.stop(Signal::SIGTERM);
    victim.stop(Signal::SIGTERM);
}

/// hpktainer's MAC convention: 0a:58 and the IPv4 address.
fn mac_of(address: &str) -> String {
    let octets: Vec<u8> = address.split('.').map(|o| o.parse().unwrap()).collect();
    format!(
        "0a:58:{:02x}:{:02x}:{:02x}:{:02x}",
        octets[0], octets[1], octets[2], octets[3]
    )
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn another_user_cannot_reach_a_containers_socket() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let bubble = Bubble::new();
    let (container, _) = start(&bubble, "container", "echo up=1", "up=");
    let sockets = bubble.path("run").join("s");
    let dirs: Vec<_> = std::fs::read_dir(&sockets)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    let [dir] = dirs.as_slice() else {
        panic!(
            "expected one socket directory under {}: {dirs:?}",
            sockets.display()
        );
    };
    let me = nix::unistd::geteuid().as_raw();
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().mode() & 0o7777;
    assert_eq!(
        std::fs::metadata(dir).unwrap().uid(),
        me,
        "owned by the container's user"
    );
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    let relay = dir.join("s");
    let control = dir.join("s.ctl");
    for socket in [&relay, &control] {
        assert_eq!(mode(socket), 0o600, "{}", socket.display());
        assert!(std::fs::metadata(socket).unwrap().permissions().mode() & 0o170000 == 0o140000);
    }

    // Control: uid 65534 does connect where permissions let it, so the
    // refusals below are the socket directory's doing.
    let open = tempfile::Builder::new()
        .prefix("hko")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(open.path().join("s")).unwrap();
    std::fs::set_permissions(
        open.path().join("s"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let (ok, said) = connect_as(Some(65534), &open.path().join("s"));
    assert!(ok, "uid 65534 connects to an open socket: {said}");
    drop(listener);

    // The container's user reaches the control socket (the relay socket is
    // left alone: a connection there would displace the container).
    let (ok, said) = connect_as(None, &control);
    assert!(ok, "the owner connects: {said}");
    for socket in [&relay, &control] {
        let (ok, said) = connect_as(Some(65534), socket);
        assert!(!ok, "uid 65534 connected to {}", socket.display());
        assert!(said.contains("Permission denied"), "{said}");
    }
    assert!(
        bubble.ns.ping(&address_of(&bubble), 1),
        "the container is still reachable"
    );
    container.stop(Signal::SIGTERM);
}

/// Runs `hpk-probe connect SOCKET` as root or, with setpriv, as `uid`
/// (its own group, no supplementary groups); returns success and stderr.
fn connect_as(uid: Option<u32>, socket: &std::path::Path) -> (bool, String) {
    let probe = hpk_testbed::bin_path("hpk-probe");
    let mut command = match uid {
        Some(uid) => {
            let mut command = std::process::Command::new("setpriv");
            command
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg(&probe);
            command
        }
        None => std::process::Command::new(&probe),
    };
    let output = command.arg("connect").arg(socket).output().unwrap();
    (output.status.success(), stderr(&output))
}

/// The address of the bubble's one container, from `hpktainer ps`.
fn address_of(bubble: &Bubble) -> String {
    let ps = bubble.hpktainer(&["ps", "--json"]).output().unwrap();
    let entries: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    let address = entries[0]["address"].as_str().unwrap();
    address.split('/').next().unwrap().to_owned()
}
