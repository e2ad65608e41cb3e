//! The overlay testbed for real (root): two bubbles reach each other over
//! flannel-style VXLAN through slirp4netns and the LAN, reach the outside
//! namespace, and leave no namespace, process or directory behind, neither
//! when dropped nor when their process is killed.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hpk_testbed::overlay::{Bubble, OUTSIDE_IP, Overlay, OverlayOptions, SLIRP_MTU, sweep_stale};
use hpk_testbed::process::PATIENCE;
use hpk_testbed::transfer::{self, Receiver};
use hpk_testbed::{Netns, Proc};
use nix::sys::signal::Signal;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, sockopt};
use nix::sys::time::TimeVal;

/// Set in the child process the kill test starts.
const CHILD_ENV: &str = "HPKT_OVERLAY_TEST_CHILD";
/// Set in the child process the half-way failure test starts.
const FAIL_ENV: &str = "HPKT_OVERLAY_TEST_FAIL";

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn bubbles_talk_over_vxlan_at_slirp_mtu_65520() {
    check_overlay(SLIRP_MTU, 2);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn three_bubbles_talk_over_vxlan_at_slirp_mtu_1500() {
    check_overlay(1500, 3);
}

fn check_overlay(slirp_mtu: u32, hosts: usize) {
    let options = OverlayOptions { hosts, slirp_mtu };
    let overlay = Overlay::new(options).unwrap_or_else(|err| panic!("{err:#}"));
    eprintln!("{overlay}");

    check_flannel_config(&overlay, slirp_mtu);
    check_vxlan(&overlay);
    check_outside(&overlay);

    let leftovers = Leftovers::of(&overlay);
    drop(overlay);
    leftovers.assert_gone();
}

/// flannel.1's MTU and the subnet.env each bubble got.
fn check_flannel_config(overlay: &Overlay, slirp_mtu: u32) {
    let flannel_mtu = slirp_mtu - 50;
    for (index, node) in overlay.nodes.iter().enumerate() {
        let k = index + 1;
        let bubble = &node.bubble;
        // Through the bubble's own sysfs, which must show its own links.
        let mtu = bubble.sh("cat /sys/class/net/flannel.1/mtu");
        assert_eq!(
            mtu.trim(),
            flannel_mtu.to_string(),
            "flannel.1 MTU of node {k}"
        );

        let env = std::fs::read_to_string(bubble.subnet_env_path()).expect("read subnet.env");
        let wanted = format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.{k}.1/24\n\
             FLANNEL_MTU={flannel_mtu}\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(env, wanted, "subnet.env of node {k}");
        assert!(bubble.run_dir().is_dir() && bubble.cni_data_dir().is_dir());
    }
}

/// Pings both ways between node 1's flannel.1 address and every other
/// node's, small and full-size with DF set, and sees flannel.1's counters
/// grow on every end.
fn check_vxlan(overlay: &Overlay) {
    let before: Vec<_> = (0..overlay.nodes.len())
        .map(|index| counters(overlay, index))
        .collect();
    let one = &overlay.nodes[0].bubble;

    for other in overlay.nodes[1..].iter().map(|node| &node.bubble) {
        ping(one, other.flannel_ip(), 56);
        ping(other, one.flannel_ip(), 56);
        // The largest packet flannel.1 takes: 28 bytes of IPv4 and ICMP headers.
        ping(one, other.flannel_ip(), one.flannel_mtu() - 28);
    }

    for (index, (rx, tx)) in before.into_iter().enumerate() {
        let (rx_now, tx_now) = counters(overlay, index);
        // Three echo requests and three replies per ping run, at least.
        assert!(rx_now >= rx + 9, "node {index}: rx {rx} -> {rx_now}");
        assert!(tx_now >= tx + 9, "node {index}: tx {tx} -> {tx_now}");
    }
}

fn counters(overlay: &Overlay, index: usize) -> (u64, u64) {
    overlay
        .flannel_counters(index)
        .unwrap_or_else(|err| panic!("{err:#}"))
}

/// Three pings of `size` bytes of payload, unfragmented, all answered.
fn ping(from: &Bubble, dest: Ipv4Addr, size: u32) {
    let status = from
        .command("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "2", "-q", "-M", "do"])
        .args(["-s", &size.to_string(), &dest.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("run ping");
    assert!(
        status.success(),
        "ping {dest} ({size} bytes) from {}",
        from.host_ip()
    );
}

/// A verified TCP transfer from bubble 1's flannel.1 address (so it takes
/// flanneld's masquerade rule, as a container's would) to the outside.
fn check_outside(overlay: &Overlay) {
    let dest = SocketAddrV4::new(OUTSIDE_IP, 5201);
    let receiver = Receiver::listen(&overlay.outside, SocketAddr::V4(dest));
    let node = &overlay.nodes[0];

    let mut stream = connect_from(&node.bubble, node.bubble.flannel_ip(), dest);
    let sent = transfer::send_over(&mut stream, 4 << 20, 7).expect("send to the outside");
    let (got, peer) = receiver.digest_and_peer().expect("receive outside");

    assert_eq!(got, sent, "bytes arrived changed");
    // slirp4netns speaks for the bubble from the host's own address.
    assert_eq!(peer.ip(), node.host_ip, "source seen outside");
}

/// A TCP connection from `source` inside the bubble, bounded in time.
fn connect_from(bubble: &Bubble, source: Ipv4Addr, dest: SocketAddrV4) -> TcpStream {
    let stream = bubble.run(|| -> std::io::Result<TcpStream> {
        let fd = socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        // Linux bounds a blocking connect by the send timeout.
        socket::setsockopt(&fd, sockopt::SendTimeout, &TimeVal::new(10, 0))?;
        let local = sockaddr_in(SocketAddrV4::new(source, 0));
        // SAFETY: a live socket, and a pointer and length describing a live
        // sockaddr_in.
        let bound = unsafe { libc::bind(fd.as_raw_fd(), local.as_ptr(), SOCKADDR_IN_LEN) };
        if bound < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sockaddr_in(dest);
        // SAFETY: as for bind above.
        let connected = unsafe { libc::connect(fd.as_raw_fd(), remote.as_ptr(), SOCKADDR_IN_LEN) };
        if connected < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(TcpStream::from(fd))
    });
    stream.unwrap_or_else(|err| panic!("connect {source} -> {dest}: {err}"))
}

const SOCKADDR_IN_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as _;

/// An IPv4 socket address as the kernel takes it (nix's own type needs a
/// feature this crate does not turn on).
struct SockaddrIn(libc::sockaddr_in);

impl SockaddrIn {
    fn as_ptr(&self) -> *const libc::sockaddr {
        (&raw const self.0).cast()
    }
}

fn sockaddr_in(addr: SocketAddrV4) -> SockaddrIn {
    SockaddrIn(libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    })
}

/// What a testbed made, recorded to check it is gone afterwards.
struct Leftovers {
    namespaces: Vec<String>,
    pids: Vec<i32>,
    dirs: Vec<PathBuf>,
}

impl Leftovers {
    fn of(overlay: &Overlay) -> Self {
        let mut namespaces = vec![
            overlay.lan.name().to_owned(),
            overlay.outside.name().to_owned(),
        ];
        let mut pids = Vec::new();
        let mut dirs = Vec::new();
        for node in &overlay.nodes {
            namespaces.push(node.host.name().to_owned());
            pids.extend([node.bubble.pid(), node.bubble.slirp_pid()]);
            dirs.push(node.bubble.dir().to_owned());
        }
        Self {
            namespaces,
            pids,
            dirs,
        }
    }

    /// Parses what [`Leftovers::line`] wrote.
    fn parse(line: &str) -> Self {
        let field = |key: &str| -> Vec<String> {
            let words = line.split_whitespace();
            let value = words
                .filter_map(|word| word.strip_prefix(key))
                .next()
                .unwrap_or_else(|| panic!("no {key} in {line:?}"));
            value.split(',').map(str::to_owned).collect()
        };
        Self {
            namespaces: field("ns="),
            pids: field("pids=")
                .iter()
                .map(|pid| pid.parse().unwrap())
                .collect(),
            dirs: field("dirs=").iter().map(PathBuf::from).collect(),
        }
    }

    /// One line for the kill test's child to print.
    fn line(&self) -> String {
        let pids: Vec<String> = self.pids.iter().map(i32::to_string).collect();
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        format!(
            "OVERLAY ns={} pids={} dirs={}",
            self.namespaces.join(","),
            pids.join(","),
            dirs.join(",")
        )
    }

    /// Waits (bounded: processes not our children end on their own time)
    /// until all of it is gone.
    fn assert_gone(&self) {
        let deadline = Instant::now() + PATIENCE;
        for &pid in &self.pids {
            while process_exists(pid) {
                assert!(Instant::now() < deadline, "process {pid} is still there");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for name in &self.namespaces {
            let path = Path::new("/run/netns").join(name);
            assert!(!path.exists(), "namespace {name} is still there");
        }
        for dir in &self.dirs {
            assert!(!dir.exists(), "{} is still there", dir.display());
        }
    }
}

/// Whether `pid` names a process that has not ended (a zombie has).
fn process_exists(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    !matches!(state, Some(Some('Z' | 'X')))
}

/// Runs this test binary again as a child that builds a testbed and waits;
/// kills it with SIGKILL; its processes must end by themselves and a sweep
/// must remove its namespaces and directories, but not a live run's.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn killed_testbed_leaves_nothing_after_a_sweep() {
    if std::env::var_os(CHILD_ENV).is_some() {
        hold_a_testbed_until_killed();
    }
    let mine = Netns::new("ovt");

    let mut child = Command::new(std::env::current_exe().expect("own path"));
    child
        .args(["--exact", "killed_testbed_leaves_nothing_after_a_sweep"])
        .args(["--include-ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1");
    // libtest prints "test NAME ... " without a newline before the line.
    let (child, line) = Proc::spawn_until("testbed child", child, |line| line.contains("OVERLAY "));
    let leftovers = Leftovers::parse(&line);
    child.stop(Signal::SIGKILL);

    let removed = sweep_stale();
    eprintln!("swept: {removed:?}");
    leftovers.assert_gone();
    assert!(
        mine.path().exists(),
        "the sweep removed a live run's namespace"
    );
}

/// The child's side of the kill test: never returns.
fn hold_a_testbed_until_killed() -> ! {
    let overlay = Overlay::new(OverlayOptions::default()).unwrap_or_else(|err| panic!("{err:#}"));
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", Leftovers::of(&overlay).line()).expect("tell the parent");
    stdout.flush().expect("flush");
    loop {
        std::thread::park();
    }
}

/// Runs this test binary again with an `ethtool` on PATH that works once
/// and then fails, so node 2 fails after node 1 is complete and node 2's
/// host, holder and slirp4netns exist; the child checks it holds nothing.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn failure_half_way_leaves_nothing() {
    if std::env::var_os(FAIL_ENV).is_some() {
        fail_half_way();
        return;
    }
    let fake = FakeTools::with_ethtool_failing_after_one_run();
    let path = format!(
        "{}:{}",
        fake.dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let status = Command::new(std::env::current_exe().expect("own path"))
        .args(["--exact", "failure_half_way_leaves_nothing"])
        .args(["--include-ignored", "--nocapture", "--test-threads=1"])
        .env(FAIL_ENV, "1")
        .env("PATH", path)
        .status()
        .expect("run the child");
    assert!(status.success(), "the child found leftovers (see above)");
}

/// The child's side: the build must fail at node 2 and leave nothing.
fn fail_half_way() {
    let Err(err) = Overlay::new(OverlayOptions::default()) else {
        panic!("the overlay came up although ethtool fails the second time");
    };
    let message = format!("{err:#}");
    eprintln!("failed as intended: {message}");
    assert!(
        message.contains("start node 2"),
        "failed elsewhere: {message}"
    );

    let me = std::process::id();
    let children = processes_with_parent(me);
    assert!(children.is_empty(), "processes left: {children:?}");
    let mine = format!("-{me}-");
    for dir in ["/run/netns", "/tmp"] {
        for entry in std::fs::read_dir(dir).expect("list").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let left = name.starts_with("hpkt-") && name.contains(&mine);
            assert!(!left, "{dir}/{name} left behind");
        }
    }
}

/// Pids of live (not zombie) processes whose parent is `parent`.
fn processes_with_parent(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("list /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the command name: state, then the parent's pid.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid = fields.next().and_then(|ppid| ppid.parse::<u32>().ok());
        if ppid == Some(parent) && state != "Z" {
            found.push(pid);
        }
    }
    found
}

/// A directory of stand-in tools for one test, removed when dropped.
struct FakeTools {
    dir: PathBuf,
}

impl FakeTools {
    /// An `ethtool` that runs the real one the first time and fails after.
    fn with_ethtool_failing_after_one_run() -> Self {
        let dir = PathBuf::from(format!("/tmp/hpkt-ovfake-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("make the fake tools directory");
        let fake = Self { dir };
        let real = find_program("ethtool");
        let script = format!(
            "#!/bin/sh\n[ -e {once} ] && {{ echo 'fake ethtool: failing on purpose' >&2; exit 1; }}\n\
             touch {once}\nexec {real} \"$@\"\n",
            once = fake.dir.join("once").display(),
            real = real.display(),
        );
        let path = fake.dir.join("ethtool");
        std::fs::write(&path, script).expect("write the fake ethtool");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("make it executable");
        fake
    }
}

impl Drop for FakeTools {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn find_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH"))
}
