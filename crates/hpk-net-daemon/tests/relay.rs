//! The relay end to end, between two namespaces the test makes: a bubble
//! with a bridge holding 10.99.0.1/24 and the server's tap, and a container
//! whose client holds 10.99.0.2/24 on tap0. Needs root; run by
//! `cargo xtask test` (ignored by a plain `cargo test`).

use hpk_testbed::frames::arp_request;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hpk_net_daemon::codec::{FrameReader, MAX_FRAME};
use hpk_net_daemon::stats::StatsSnapshot;
use hpk_testbed::relay;
use hpk_testbed::report::{self, kind};
use hpk_testbed::transfer::{self, Receiver};
use hpk_testbed::{Netns, Proc};
use nix::sys::signal::Signal;

const DAEMON: &str = env!("CARGO_BIN_EXE_hpk-net-daemon");
const GATEWAY: &str = "10.99.0.1";
const CONTAINER: &str = "10.99.0.2";

/// A bubble namespace with a bridge, a container namespace, and the relay
/// between them.
struct Rig {
    server: Option<Proc>,
    client: Option<Proc>,
    socket: PathBuf,
    container: Netns,
    bubble: Netns,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Self {
        let bubble = Netns::new("rb");
        // An explicit MAC, as hpktainer gives hpk-bridge: a bridge without one
        // takes its lowest port's, which changes when a relay restarts.
        bubble.ip("link add br0 address 0a:58:0a:63:00:01 type bridge");
        bubble.ip(&format!("addr add {GATEWAY}/24 dev br0"));
        bubble.ip("link set br0 up");
        let dir = tempfile::Builder::new()
            .prefix("hpkt")
            .tempdir_in("/tmp")
            .unwrap();
        let mut rig = Self {
            server: None,
            client: None,
            socket: dir.path().join("s"),
            container: Netns::new("rc"),
            bubble,
            _dir: dir,
        };
        rig.start_server();
        rig
    }

    /// A rig whose server forwards only frames from `mac` and `ip`.
    fn filtering(mac: &str, ip: &str) -> Self {
        let mut rig = Self::new();
        rig.server.take().unwrap().stop(Signal::SIGTERM);
        rig.start_server_with(&["--allow-mac", mac, "--allow-ip", ip]);
        rig
    }

    fn with_client() -> Self {
        let mut rig = Self::new();
        rig.start_client();
        rig
    }

    fn start_server(&mut self) {
        self.start_server_with(&[]);
    }

    fn start_server_with(&mut self, extra: &[&str]) {
        let mut command =
            relay::server_command(&self.bubble, Path::new(DAEMON), &self.socket, "hpkt0");
        command.args(extra);
        self.server = Some(Proc::spawn_ready("relay server", command));
    }

    /// `hpk-net-daemon client` in the container namespace with `address`.
    fn client_command(&self, address: &str) -> Command {
        let mut command = self.container.command(DAEMON);
        command.arg("client").arg("--socket").arg(&self.socket);
        command.args(["--address", address, "--gateway", GATEWAY, "--mtu", "1500"]);
        // These tests are of the relay: never offer the fast path.
        command.args(["--data-path", "relay"]);
        command
    }

    fn start_client(&mut self) {
        let mut command = self.client_command("10.99.0.2/24");
        command.args(["--", "sh", "-c", "echo up; exec sleep 600"]);
        self.client = Some(Proc::spawn_until_line("relay client", command, "up"));
    }

    fn stats(&self) -> StatsSnapshot {
        let output = Command::new(DAEMON)
            .arg("stats")
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "stats: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    fn server_running(&mut self) -> bool {
        self.server.as_mut().unwrap().is_running()
    }
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn ping_crosses_the_relay_both_ways() {
    let rig = Rig::with_client();
    assert!(rig.container.ping(GATEWAY, 3), "container -> bubble");
    assert!(rig.bubble.ping(CONTAINER, 3), "bubble -> container");
    let stats = rig.stats();
    assert!(
        stats.tap_to_socket.frames >= 3 && stats.socket_to_tap.frames >= 3,
        "{stats:?}"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn sixty_four_mib_arrive_intact_and_the_counters_agree() {
    let rig = Rig::with_client();
    let len = 64 << 20;
    let receiver = Receiver::listen(&rig.container, addr(CONTAINER, 5001));
    let sent = transfer::send(&rig.bubble, addr(CONTAINER, 5001), len, 42).unwrap();
    assert_eq!(receiver.digest().unwrap(), sent);

    // Bubble -> container frames leave the server's tap: payload plus
    // Ethernet/IP/TCP headers, a few percent at MTU 1500.
    let stats = rig.stats();
    let bytes = stats.tap_to_socket.bytes;
    assert!(
        bytes >= len && bytes < len + len / 10,
        "relay counted {bytes} for {len}"
    );
    assert_eq!(stats.protocol_errors, 0);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_new_client_takes_over_without_a_server_restart() {
    let mut rig = Rig::with_client();
    assert!(rig.container.ping(GATEWAY, 1));
    let status = rig.client.take().unwrap().stop(Signal::SIGTERM);
    assert_eq!(
        hpk_testbed::process::shell_status(status),
        143,
        "status of sh killed by TERM"
    );

    rig.start_client();
    assert!(rig.container.ping(GATEWAY, 2));
    assert_eq!(rig.stats().connections, 2);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_client_reconnects_after_a_server_restart() {
    let mut rig = Rig::with_client();
    assert!(rig.container.ping(GATEWAY, 1));
    rig.server.take().unwrap().stop(Signal::SIGTERM);
    assert!(!rig.socket.exists(), "socket removed on SIGTERM");
    assert!(
        !rig.container.ping(GATEWAY, 1),
        "no path while the server is away"
    );

    rig.start_server();
    assert!(rig.container.ping(GATEWAY, 3), "client reconnected");
    assert!(rig.client.as_mut().unwrap().is_running());
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_container_tap_going_down_mid_transfer_does_not_kill_the_relay() {
    let mut rig = Rig::with_client();
    let receiver = Receiver::listen(&rig.container, addr(CONTAINER, 5002));
    // The sleeps only place the outage inside the transfer; the assertions
    // do not depend on their length.
    let sender = std::thread::scope(|scope| {
        let sending =
            scope.spawn(|| transfer::send(&rig.bubble, addr(CONTAINER, 5002), 32 << 20, 9));
        std::thread::sleep(Duration::from_millis(150));
        rig.container.ip("link set tap0 down");
        std::thread::sleep(Duration::from_millis(300));
        rig.container.ip("link set tap0 up");
        sending.join().unwrap()
    });
    assert_eq!(receiver.digest().unwrap(), sender.unwrap());
    assert!(rig.server_running());
    assert!(rig.client.as_mut().unwrap().is_running());
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn an_oversized_length_ends_only_that_connection() {
    let mut rig = Rig::with_client();
    let mut rogue = UnixStream::connect(&rig.socket).unwrap();
    rogue
        .write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
        .unwrap();
    rogue
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    rogue
        .read_to_end(&mut rest)
        .expect("server closes the rogue connection");

    assert!(rig.server_running());
    assert_eq!(rig.stats().protocol_errors, 1);
    // The displaced client reconnects on its own and traffic flows again.
    assert!(rig.container.ping(GATEWAY, 3));
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_frame_dribbled_one_byte_at_a_time_is_answered() {
    let rig = Rig::new();
    let mut peer = UnixStream::connect(&rig.socket).unwrap();
    let request = arp_request([0x0a, 0x58, 10, 99, 0, 77], [10, 99, 0, 77], [10, 99, 0, 1]);
    let mut wire = (request.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&request);
    for byte in &wire {
        peer.write_all(std::slice::from_ref(byte)).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }

    let reply = read_frames_until(&mut peer, |frame| is_arp_reply_from(frame, [10, 99, 0, 1]));
    assert!(reply, "the bridge answered the dribbled ARP request");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn spoofed_frames_never_reach_the_bridge() {
    let mac = [0x0a, 0x58, 10, 99, 0, 2];
    let rig = Rig::filtering("0a:58:0a:63:00:02", CONTAINER);
    let mut peer = UnixStream::connect(&rig.socket).unwrap();

    // (a) Poisoning: from the container's own MAC, a reply claiming the
    // gateway's address for a forged sender MAC, (b) IPv4 from a
    // neighbour's address, (c) an honest who-has.
    let forged = [0x0a, 0x58, 0xde, 0xad, 0xbe, 0xef];
    let mut poison = arp_request(forged, [10, 99, 0, 1], [10, 99, 0, 1]);
    poison[6..12].copy_from_slice(&mac);
    poison[21] = 2;
    let spoofed_ip = udp_from(mac, [10, 99, 0, 3], [10, 99, 0, 1]);
    let honest = arp_request(mac, [10, 99, 0, 2], [10, 99, 0, 1]);
    for frame in [&poison, &spoofed_ip] {
        peer.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
        peer.write_all(frame).unwrap();
    }

    // Like any ARP client, ask again until answered: under a loaded
    // parallel run the kernel's per-CPU backlog may drop a frame.
    let deadline = std::time::Instant::now() + hpk_testbed::process::PATIENCE;
    let mut answered = false;
    peer.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    while !answered && std::time::Instant::now() < deadline {
        peer.write_all(&(honest.len() as u32).to_be_bytes())
            .unwrap();
        peer.write_all(&honest).unwrap();
        answered = read_frames_until(&mut peer, |frame| is_arp_reply_from(frame, [10, 99, 0, 1]));
    }
    assert!(answered, "the honest ARP request was answered");
    let stats = rig.stats();
    assert_eq!(stats.spoofed, 2, "{stats:?}");
    report::record(kind::SPOOF_ATTEMPTS, 2);
    report::record(kind::SPOOF_DROPS, stats.spoofed);
    assert!(stats.socket_to_tap.frames >= 1, "{stats:?}");
    let neighbours = rig.bubble.sh("ip neigh show dev br0");
    assert!(
        !neighbours.contains("de:ad:be:ef"),
        "poisoned: {neighbours}"
    );
    assert!(
        !neighbours.contains("10.99.0.3 "),
        "learnt a spoofed source: {neighbours}"
    );
    assert!(
        neighbours.contains("10.99.0.2 "),
        "learnt the honest one: {neighbours}"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_filtering_server_still_carries_the_containers_own_traffic() {
    let mut rig = Rig::filtering("0a:58:0a:63:00:02", CONTAINER);
    rig.start_client();
    assert!(rig.container.ping(GATEWAY, 3), "container -> bubble");
    assert!(rig.bubble.ping(CONTAINER, 3), "bubble -> container");
    // The container's own IPv6 (link-local, DAD from ::) passes too.
    assert_eq!(rig.stats().spoofed, 0);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn sockets_are_private_and_removed_on_shutdown() {
    let mut rig = Rig::new();
    for path in [rig.socket.clone(), control_path(&rig.socket)] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    let status = rig.server.take().unwrap().stop(Signal::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert!(!rig.socket.exists() && !control_path(&rig.socket).exists());
    assert!(
        !rig.bubble.sh("ip -o link").contains("hpkt0"),
        "tap gone with the server"
    );
}

fn control_path(socket: &Path) -> PathBuf {
    hpk_net_daemon::stats::control_path(socket)
}

/// A minimal UDP datagram from `mac`/`source` to `dest`, port 9 (discard).
fn udp_from(mac: [u8; 6], source: [u8; 4], dest: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0x0a, 0x58, 10, 99, 0, 1];
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&source);
    ip.extend_from_slice(&dest);
    let sum: u32 = ip
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    let checksum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&[0x30, 0x39, 0, 9, 0, 12, 0, 0, b'h', b'p', b'k', b'!']);
    frame.resize(60, 0);
    frame
}

fn is_arp_reply_from(frame: &[u8], ip: [u8; 4]) -> bool {
    frame.len() >= 42
        && frame[12..14] == [0x08, 0x06]
        && frame[20..22] == [0, 2]
        && frame[28..32] == ip
}

/// Decodes frames from `stream` until `wanted` matches one, or until a read
/// times out (the stream's own timeout, else the testbed's patience).
fn read_frames_until(stream: &mut UnixStream, wanted: impl Fn(&[u8]) -> bool) -> bool {
    if stream.read_timeout().unwrap().is_none() {
        stream
            .set_read_timeout(Some(hpk_testbed::process::PATIENCE))
            .unwrap();
    }
    let mut reader = FrameReader::new(0, MAX_FRAME);
    loop {
        let n = match stream.read(reader.read_space()) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        reader.advance(n);
        while let Some(frame) = reader.next_frame().unwrap() {
            if wanted(frame) {
                return true;
            }
        }
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_second_client_reuses_a_configured_tap_instead_of_fighting() {
    let mut rig = Rig::with_client();
    let mut second = rig.container.command(DAEMON);
    second.arg("client").arg("--socket").arg(&rig.socket);
    second.args([
        "--address",
        "10.99.0.2/24",
        "--gateway",
        GATEWAY,
        "--mtu",
        "1500",
    ]);
    let output = second
        .args(["--", "sh", "-c", "echo second; exit 4"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(4),
        "the command ran and its status came back"
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "second\n");

    assert!(
        rig.client.as_mut().unwrap().is_running(),
        "the first client is untouched"
    );
    assert!(rig.container.ping(GATEWAY, 1));
    assert_eq!(
        rig.stats().connections,
        1,
        "no second connection displaced the first"
    );

    let mut clash = rig.client_command("10.99.0.9/24");
    let output = clash.args(["--", "true"]).output().unwrap();
    assert!(
        !output.status.success(),
        "a differently configured tap0 is not taken over"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("refusing to take it over"));
}
