//! Offloads through the relay, end to end: the hello between our client and
//! our server (and its fallback against passt, a plain-framing peer that is
//! not our code), renegotiation on reconnect, and checksums that stay right
//! where super-frames leave the bubble through the bridge or through NAT.
//! Needs root; run by `cargo xtask test` (ignored by a plain `cargo test`).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hpk_net_daemon::stats::StatsSnapshot;
use hpk_testbed::relay;
use hpk_testbed::transfer::{self, Receiver};
use hpk_testbed::{Netns, Proc};
use nix::sys::signal::Signal;

const DAEMON: &str = env!("CARGO_BIN_EXE_hpk-net-daemon");
const GATEWAY: &str = "10.98.0.1";
const CONTAINER: &str = "10.98.0.2/24";
/// A third host on the bridge, reached through a veth pair.
const NEIGHBOUR: &str = "10.98.0.3";
/// The outside world behind the bubble's NAT (a documentation range).
const OUTSIDE: &str = "203.0.113.2";
const MTU: u32 = 1500;
/// `TUN_F_TSO4`: what every offloading agreement must include here.
const TSO4: u64 = 0x02;
/// `TUN_F_USO4`: UDP segmentation, on kernels from 6.2.
const USO4: u64 = 0x20;

/// A bubble with a bridge and the relay server's tap, a container with the
/// client, a neighbour on the bridge and an outside behind NAT. Processes
/// drop before namespaces.
struct Rig {
    client: Option<Proc>,
    server: Option<Proc>,
    socket: PathBuf,
    container: Netns,
    neighbour: Netns,
    outside: Netns,
    bubble: Netns,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new(server_args: &[&str]) -> Self {
        let bubble = Netns::new("ob");
        bubble.ip(&format!(
            "link add br0 address 0a:58:0a:62:00:01 mtu {MTU} type bridge"
        ));
        bubble.ip(&format!("addr add {GATEWAY}/24 dev br0"));
        bubble.ip("link set br0 up");
        let dir = tempfile::Builder::new()
            .prefix("hpko")
            .tempdir_in("/tmp")
            .unwrap();
        let mut rig = Self {
            client: None,
            server: None,
            socket: dir.path().join("s"),
            container: Netns::new("oc"),
            neighbour: Netns::new("on"),
            outside: Netns::new("oo"),
            bubble,
            _dir: dir,
        };
        rig.wire_neighbour_and_outside();
        rig.start_server(server_args);
        rig
    }

    /// Both far ends hang off veth pairs whose bubble side computes every
    /// checksum and segment in software (tx and segmentation offloads off)
    /// and whose far side checks every checksum in software (rx off), so a
    /// wrong checksum start or offset from the relay shows in the far
    /// side's counters instead of being trusted away.
    fn wire_neighbour_and_outside(&self) {
        let (bubble, neighbour, outside) = (&self.bubble, &self.neighbour, &self.outside);
        bubble.ip(&format!(
            "link add vn0 mtu {MTU} type veth peer name eth0 netns {}",
            neighbour.name()
        ));
        bubble.ip("link set vn0 master br0 up");
        neighbour.ip(&format!("addr add {NEIGHBOUR}/24 dev eth0"));
        neighbour.ip("link set eth0 up");
        bubble.ip(&format!(
            "link add vo0 type veth peer name eth0 netns {}",
            outside.name()
        ));
        bubble.ip("addr add 203.0.113.1/24 dev vo0");
        bubble.ip("link set vo0 up");
        outside.ip(&format!("addr add {OUTSIDE}/24 dev eth0"));
        outside.ip("link set eth0 up");
        bubble.sh("sysctl -qw net.ipv4.ip_forward=1 && \
             iptables -t nat -A POSTROUTING -s 10.98.0.0/24 -o vo0 -j MASQUERADE && \
             ethtool -K vn0 tx off tso off gso off && ethtool -K vo0 tx off tso off gso off");
        neighbour.sh("ethtool -K eth0 rx off");
        outside.sh("ethtool -K eth0 rx off");
    }

    fn start_server(&mut self, extra: &[&str]) {
        let mut command =
            relay::server_command(&self.bubble, Path::new(DAEMON), &self.socket, "hpko0");
        command.args(extra);
        self.server = Some(Proc::spawn_ready("relay server", command));
    }

    fn restart_server(&mut self, extra: &[&str]) {
        self.server.take().unwrap().stop(Signal::SIGTERM);
        self.start_server(extra);
    }

    fn start_client(&mut self, extra: &[&str]) {
        self.client = Some(start_client(&self.container, &self.socket, extra));
    }

    fn stats(&self) -> StatsSnapshot {
        stats(&self.socket)
    }

    /// Waits until the server reports a connection with `vnet_header_len`.
    fn wait_for_framing(&self, vnet_header_len: u64) -> StatsSnapshot {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = self.stats();
            if stats.connections > 0 && stats.framing.vnet_header_len == vnet_header_len {
                return stats;
            }
            assert!(Instant::now() < deadline, "framing never became {stats:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Stops the client with SIGTERM, which it passes to its command, so the
/// command's `sleep` does not outlive the test (a SIGKILL would orphan it).
impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            client.stop(Signal::SIGTERM);
        }
    }
}

fn start_client(container: &Netns, socket: &std::path::Path, extra: &[&str]) -> Proc {
    let mut command = container.command(DAEMON);
    command.arg("client").arg("--socket").arg(socket);
    command.args([
        "--address",
        CONTAINER,
        "--gateway",
        GATEWAY,
        "--mtu",
        "1500",
    ]);
    command.args(extra);
    command.args(["--", "sh", "-c", "echo up; exec sleep 600"]);
    Proc::spawn_until_line("relay client", command, "up")
}

fn stats(socket: &std::path::Path) -> StatsSnapshot {
    let output = Command::new(DAEMON)
        .arg("stats")
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap();
    assert!(output.status.success(), "stats failed");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Waits until tap0's TSO is `on` (the client applies an agreement a
/// moment after the server has recorded it).
fn wait_for_tso(container: &Netns, on: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tso_on(container) != on {
        assert!(Instant::now() < deadline, "tap0's TSO never became {on}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ethtool -k tap0` in the container: whether TSO is on.
fn tso_on(container: &Netns) -> bool {
    let features = container.sh("ethtool -k tap0");
    features
        .lines()
        .any(|line| line.trim() == "tcp-segmentation-offload: on")
}

/// The receive-side error counters the issue names, read with nstat in `ns`
/// (absolute values; `-s` leaves nstat's history alone).
fn csum_errors(ns: &Netns) -> [u64; 3] {
    let text = ns.sh("nstat -saz TcpInCsumErrors UdpInCsumErrors IpInHdrErrors");
    let value = |name: &str| {
        text.lines()
            .find_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some(name)).then(|| words.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("nstat printed no {name}:\n{text}"))
    };
    [
        value("TcpInCsumErrors"),
        value("UdpInCsumErrors"),
        value("IpInHdrErrors"),
    ]
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// Sends `len` bytes over TCP from the container to `dest` in `receiver`
/// and checks they arrive intact with the receiver's error counters still.
fn tcp_with_clean_checksums(rig: &Rig, receiver: &Netns, dest: SocketAddr, len: u64) {
    let before = csum_errors(receiver);
    let listening = Receiver::listen(receiver, dest);
    let sent = transfer::send(&rig.container, dest, len, 21).unwrap();
    assert_eq!(
        listening.digest().unwrap(),
        sent,
        "bytes changed on the way"
    );
    assert_eq!(
        csum_errors(receiver),
        before,
        "TcpInCsumErrors, UdpInCsumErrors, IpInHdrErrors moved"
    );
}

/// Frames above the MTU crossed the relay since `before`: proof that the
/// offload path, not the kernel's segmentation before the tap, carried them.
fn assert_super_frames_crossed(before: &StatsSnapshot, after: &StatsSnapshot) {
    let average = average_inbound_frame(before, after);
    assert!(
        average > u64::from(MTU),
        "average frame {average} bytes: the offload path was not taken"
    );
}

/// Average Ethernet frame the server wrote to its tap since `before`.
fn average_inbound_frame(before: &StatsSnapshot, after: &StatsSnapshot) -> u64 {
    let bytes = after.socket_to_tap.bytes - before.socket_to_tap.bytes;
    let frames = after.socket_to_tap.frames - before.socket_to_tap.frames;
    bytes / frames.max(1)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn our_client_and_server_agree_offloads() {
    let mut rig = Rig::new(&[]);
    rig.start_client(&[]);
    let stats = rig.wait_for_framing(10);
    assert_ne!(stats.framing.offloads & TSO4, 0, "{stats:?}");
    assert!(tso_on(&rig.container), "tap0 should segment nothing itself");
    assert!(rig.container.ping(GATEWAY, 2));
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn offload_off_on_the_server_agrees_plain() {
    let mut rig = Rig::new(&["--offload", "off"]);
    rig.start_client(&[]);
    let stats = rig.wait_for_framing(0);
    assert_eq!(stats.framing.offloads, 0);
    assert!(
        !tso_on(&rig.container),
        "a plain agreement must turn TSO off"
    );
    assert!(rig.container.ping(GATEWAY, 2));
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn offload_off_on_the_client_agrees_plain() {
    let mut rig = Rig::new(&[]);
    rig.start_client(&["--offload", "off"]);
    let stats = rig.wait_for_framing(0);
    assert_eq!(stats.framing.offloads, 0);
    assert!(!tso_on(&rig.container));
    tcp_with_clean_checksums(&rig, &rig.neighbour, addr(NEIGHBOUR, 7101), 8 << 20);
    let after = rig.stats();
    assert!(
        average_inbound_frame(&stats, &after) <= u64::from(MTU) + 14,
        "a plain peer sent a super-frame: {after:?}"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_reconnect_negotiates_again_and_reapplies_the_taps_offloads() {
    let mut rig = Rig::new(&[]);
    rig.start_client(&[]);
    rig.wait_for_framing(10);
    assert!(tso_on(&rig.container));

    // A server that refuses offloads: the client must turn TSO off before
    // any super-frame reaches it.
    rig.restart_server(&["--offload", "off"]);
    wait_for_tso(&rig.container, false);
    let before = rig.wait_for_framing(0);
    tcp_with_clean_checksums(&rig, &rig.bubble, addr(GATEWAY, 7102), 16 << 20);
    let after = rig.stats();
    assert_eq!(after.protocol_errors, 0, "{after:?}");
    assert!(
        average_inbound_frame(&before, &after) <= u64::from(MTU) + 14,
        "super-frames reached a server that refused them: {after:?}"
    );

    // And back: offloads come back with the next agreeing server.
    rig.restart_server(&[]);
    rig.wait_for_framing(10);
    wait_for_tso(&rig.container, true);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tcp_leaving_through_the_bridge_keeps_its_checksums() {
    let mut rig = Rig::new(&[]);
    rig.start_client(&[]);
    let before = rig.wait_for_framing(10);
    tcp_with_clean_checksums(&rig, &rig.neighbour, addr(NEIGHBOUR, 7103), 64 << 20);
    assert_super_frames_crossed(&before, &rig.stats());
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tcp_leaving_through_nat_keeps_its_checksums() {
    let mut rig = Rig::new(&[]);
    rig.start_client(&[]);
    let before = rig.wait_for_framing(10);
    tcp_with_clean_checksums(&rig, &rig.outside, addr(OUTSIDE, 7104), 64 << 20);
    assert_super_frames_crossed(&before, &rig.stats());
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn udp_with_checksum_and_segmentation_offload_arrives_clean() {
    let mut rig = Rig::new(&[]);
    rig.start_client(&[]);
    let before_stats = rig.wait_for_framing(10);
    let before = csum_errors(&rig.outside);
    let dest = addr(OUTSIDE, 7105);
    let socket = rig.outside.run(|| UdpSocket::bind(dest)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();

    // 1200-byte datagrams, 32 to a send with UDP_SEGMENT: the container's
    // stack hands tap0 one super-frame per send when USO is agreed, else
    // checksum-offloaded datagrams one by one.
    const SEGMENT: usize = 1200;
    let sender = rig.container.run(|| UdpSocket::bind("0.0.0.0:0")).unwrap();
    let gso = SEGMENT as libc::c_int;
    // SAFETY: setsockopt reads one int from a live local.
    unsafe {
        libc::setsockopt(
            sender.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&gso as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // Every segment carries the same bytes, so each datagram can be checked
    // on its own whatever was lost before it.
    let segment: Vec<u8> = (0..SEGMENT).map(|i| (i % 251) as u8).collect();
    let payload = segment.repeat(32);
    let mut received = 0usize;
    let mut buf = [0u8; 2048];
    for _ in 0..50 {
        sender.send_to(&payload, dest).unwrap();
        while let Ok(n) = socket.recv(&mut buf) {
            assert_eq!(n, SEGMENT, "datagrams arrive as the segments sent");
            assert!(buf[..n] == segment[..], "payload changed");
            received += 1;
            if received % 32 == 0 {
                break;
            }
        }
    }
    assert!(received > 0, "no datagram arrived");
    assert_eq!(csum_errors(&rig.outside), before, "checksum counters moved");
    let after = rig.stats();
    assert!(
        after.socket_to_tap.frames > before_stats.socket_to_tap.frames,
        "nothing crossed the relay"
    );
    if after.framing.offloads & USO4 != 0 {
        let average = average_inbound_frame(&before_stats, &after);
        assert!(
            average > u64::from(MTU),
            "USO agreed, yet the average frame was {average} bytes"
        );
    }
}

/// passt speaks the plain framing (as QEMU's stream netdev does) and knows
/// nothing of our hello: the client must see no answer, fall back to plain
/// framing with offloads off, and carry traffic through it.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn passt_a_plain_peer_that_is_not_ours_carries_a_transfer() {
    let host = Netns::new("op");
    host.ip("link set lo up");
    // passt takes its addresses and outbound interface from the default route.
    host.ip("link add d0 type veth peer name d1");
    host.ip("addr add 198.51.100.1/24 dev d0");
    host.ip("link set d0 up");
    host.ip("link set d1 up");
    host.ip("route add default via 198.51.100.254 dev d0");
    let dir = tempfile::Builder::new()
        .prefix("hpkp")
        .tempdir_in("/tmp")
        .unwrap();
    let socket = dir.path().join("p");
    let mut command = host.command("passt");
    command.args(["--foreground", "--stderr", "--ipv4-only", "--runas", "0:0"]);
    command.args(["-a", "198.51.100.2", "-n", "24", "-g", "198.51.100.254"]);
    command.arg("--socket").arg(&socket);
    let _passt = Proc::spawn("passt", command);
    wait_for_socket(&socket);

    // passt maps the gateway address to its own host's loopback.
    let listening = Receiver::listen(&host, addr("127.0.0.1", 7106));
    let container = Netns::new("opc");
    let mut client = container.command(DAEMON);
    client.arg("client").arg("--socket").arg(&socket);
    client.args([
        "--address",
        "198.51.100.2/24",
        "--gateway",
        "198.51.100.254",
    ]);
    client.args(["--mtu", "1500", "--", "sh", "-c", "echo up; exec sleep 600"]);
    let _client = Proc::spawn_until_line("relay client", client, "up");
    assert!(!tso_on(&container), "no answer must mean offloads off");

    let sent = transfer::send(&container, addr("198.51.100.254", 7106), 4 << 20, 31).unwrap();
    assert_eq!(
        listening.digest().unwrap(),
        sent,
        "bytes changed through passt"
    );
}

fn wait_for_socket(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "passt never made its socket");
        std::thread::sleep(Duration::from_millis(20));
    }
}
