//! The fast path through the hello, end to end: a server in a bubble
//! namespace with a bridge holding 10.97.0.1/24, a client in a container
//! namespace as 10.97.0.2/24. Where the server holds CAP_NET_ADMIN over the
//! container's namespace it wires a veth pair; where the kernel refuses
//! (the server runs in a user namespace of its own, so the container's
//! namespace is foreign to it), `auto` relays and `veth` fails, saying why.
//! Needs root; run by `cargo xtask test` (ignored by a plain `cargo test`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hpk_net_daemon::stats::{DataPath, StatsSnapshot};
use hpk_testbed::{Netns, Proc};
use nix::sys::signal::Signal;

const DAEMON: &str = env!("CARGO_BIN_EXE_hpk-net-daemon");
const GATEWAY: &str = "10.97.0.1";
const CONTAINER: &str = "10.97.0.2";
const MAC: &str = "0a:58:0a:61:00:02";
const PORT: &str = "hpkf0";
/// The container's first instruction: tap0's kind and address, then wait.
const SHOW: &str = "ip -d -o link show tap0; ip -o -4 addr show tap0; echo shown; exec sleep 600";

struct Rig {
    dir: tempfile::TempDir,
    container: Netns,
    bubble: Netns,
}

impl Rig {
    fn new() -> Self {
        let bubble = Netns::new("fb");
        bubble.ip("link add br0 address 0a:58:0a:61:00:01 type bridge");
        bubble.ip(&format!("addr add {GATEWAY}/24 dev br0"));
        bubble.ip("link set br0 up");
        let dir = tempfile::Builder::new()
            .prefix("hpkf")
            .tempdir_in("/tmp")
            .unwrap();
        Self {
            dir,
            container: Netns::new("fc"),
            bubble,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("s")
    }

    fn server_args(&self, mode: &str) -> Vec<String> {
        let socket = self.socket().display().to_string();
        [
            "server",
            "--socket",
            &socket,
            "--tap",
            PORT,
            "--mtu",
            "1500",
            "--ready-fd",
            "3",
            "--allow-mac",
            MAC,
            "--allow-ip",
            CONTAINER,
            "--data-path",
            mode,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// The server in the bubble, on the bridge.
    fn server(&self, mode: &str) -> Proc {
        let mut command = self.bubble.command(DAEMON);
        command
            .args(self.server_args(mode))
            .args(["--bridge", "br0"]);
        command.stderr(log_file(&self.dir.path().join("server.log")));
        Proc::spawn_ready("server", command)
    }

    /// The server in a user and network namespace it made itself: root
    /// there, but holding no capability over the container's namespace.
    fn foreign_server(&self, mode: &str) -> Proc {
        let mut command = Command::new("unshare");
        command.args(["--user", "--map-root-user", "--net", "--", DAEMON]);
        command.args(self.server_args(mode));
        command.stderr(log_file(&self.dir.path().join("server.log")));
        Proc::spawn_ready("server in its own user namespace", command)
    }

    fn client(&self, mode: &str, script: &str) -> Command {
        let mut command = self.container.command(DAEMON);
        command.arg("client").arg("--socket").arg(self.socket());
        command.args([
            "--address",
            &format!("{CONTAINER}/24"),
            "--gateway",
            GATEWAY,
        ]);
        command.args([
            "--mtu",
            "1500",
            "--data-path",
            mode,
            "--",
            "sh",
            "-c",
            script,
        ]);
        command
    }

    fn stats(&self) -> StatsSnapshot {
        let output = Command::new(DAEMON)
            .arg("stats")
            .arg("--socket")
            .arg(self.socket())
            .output()
            .unwrap();
        assert!(output.status.success(), "stats: {}", text(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

fn log_file(path: &Path) -> Stdio {
    std::fs::File::create(path).unwrap().into()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn guard_tables(ns: &Netns) -> String {
    ns.sh("nft list tables bridge")
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn auto_wires_a_veth_pair_and_the_server_removes_it_on_exit() {
    let rig = Rig::new();
    let server = rig.server("auto");
    let command = rig.client("auto", SHOW);
    let (client, line) = Proc::spawn_until("client", command, |l| {
        l.contains("tap0") && l.contains("link/")
    });
    assert!(line.contains("veth"), "tap0 is not a veth: {line}");
    assert!(line.contains(&format!("link/ether {MAC}")), "{line}");

    assert_eq!(rig.stats().data_path, DataPath::Veth);
    let port = rig.bubble.sh(&format!("ip -d -o link show {PORT}"));
    assert!(
        port.contains("veth") && port.contains("master br0"),
        "{port}"
    );
    assert!(guard_tables(&rig.bubble).contains(&format!("hpk_{PORT}")));
    assert!(
        rig.container.ping(GATEWAY, 2),
        "the container reaches the bridge"
    );
    assert!(
        rig.bubble.ping(CONTAINER, 2),
        "the bridge reaches the container"
    );

    // The client exec'd its command: no relay process is left inside.
    assert!(
        client_is_the_command(&client),
        "the client still runs beside the command"
    );

    server.stop(Signal::SIGTERM);
    let links = rig.bubble.sh("ip -o link show") + &rig.container.sh("ip -o link show");
    assert!(
        !links.contains(PORT) && !links.contains("tap0"),
        "left: {links}"
    );
    assert!(
        !guard_tables(&rig.bubble).contains("hpk_"),
        "guard left behind"
    );
    drop(client);
}

/// Whether the process the test started is now the container's shell (it
/// exec'd), not a supervising client.
fn client_is_the_command(client: &Proc) -> bool {
    // `ip netns exec` execs too, so the pid is the client's or its program's.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", client.pid())).unwrap_or_default();
    let cmdline = text(&cmdline);
    !cmdline.contains("hpk-net-daemon")
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn auto_falls_back_to_the_relay_when_the_kernel_refuses() {
    let rig = Rig::new();
    let _server = rig.foreign_server("auto");
    let command = rig.client("auto", SHOW);
    let (_client, line) = Proc::spawn_until("client", command, |l| {
        l.contains("tap0") && l.contains("link/")
    });
    assert!(
        line.contains(" tun ") || line.contains("tun "),
        "tap0 is not the relay's tap: {line}"
    );

    let stats = rig.stats();
    assert_eq!(stats.data_path, DataPath::Relay);
    assert_eq!(stats.connections, 2, "the veth offer, then the relay's own");
    let log = rig.server_log();
    assert!(log.contains("relaying instead of the fast path"), "{log}");
    assert!(
        log.contains("EPERM"),
        "the kernel's refusal is logged: {log}"
    );
    let links = rig.container.sh("ip -o link show");
    assert_eq!(
        links.matches("tap0").count(),
        1,
        "one tap0, no veth left: {links}"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn veth_only_fails_clearly_when_the_kernel_refuses() {
    // The server requires it...
    let rig = Rig::new();
    let server = rig.foreign_server("veth");
    let output = rig.client("auto", "echo ran").output().unwrap();
    assert!(!output.status.success(), "the client ran without a network");
    assert!(!text(&output.stdout).contains("ran"));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(
        stderr.contains("EPERM"),
        "the reason reaches the client: {stderr}"
    );
    drop(server);

    // ...or the client does.
    let rig = Rig::new();
    let _server = rig.foreign_server("auto");
    let output = rig.client("veth", "echo ran").output().unwrap();
    assert!(!output.status.success(), "the client ran without a network");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("refused") && stderr.contains("EPERM"),
        "{stderr}"
    );
    let links = rig.container.sh("ip -o link show");
    assert!(
        !links.contains("tap0"),
        "a refused client leaves no tap: {links}"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_client_claiming_another_address_gets_the_relay_not_a_veth() {
    let rig = Rig::new();
    let _server = rig.server("auto");
    let mut command = rig.container.command(DAEMON);
    command.arg("client").arg("--socket").arg(rig.socket());
    command.args([
        "--address",
        "10.97.0.3/24",
        "--gateway",
        GATEWAY,
        "--mtu",
        "1500",
    ]);
    command.args(["--", "sh", "-c", SHOW]);
    let (_client, line) = Proc::spawn_until("client", command, |l| {
        l.contains("tap0") && l.contains("link/")
    });
    assert!(
        !line.contains("veth"),
        "wired a veth for a foreign address: {line}"
    );
    assert_eq!(rig.stats().data_path, DataPath::Relay);
    assert!(rig.server_log().contains("this port belongs to 10.97.0.2"));
    // The relay's own filter then drops what it sends.
    assert!(
        !rig.container.ping(GATEWAY, 1),
        "a foreign address got through"
    );
}
