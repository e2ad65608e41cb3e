//! Data integrity under load: a large transfer from one container through
//! its relay, checksummed end to end, while other containers load the same
//! bridge, and again while one of those containers' relays is SIGKILLed.
//! Real `hpktainer exec` containers through the stand-in apptainer.
//!
//! The size is `HPK_INTEGRITY_BYTES` (default 1 GiB). Needs root; run by
//! `cargo xtask test` (ignored by a plain `cargo test`).

mod common;

use std::io::ErrorKind;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Bubble, GATEWAY, stderr};
use hpk_net_daemon::stats::StatsSnapshot;
use hpk_testbed::Proc;
use hpk_testbed::report::{self, kind};
use hpk_testbed::transfer::{self, Receiver};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Bytes each load container sends per connection, again and again.
const LOAD_CHUNK: u64 = 8 << 20;

fn transfer_size() -> u64 {
    match std::env::var("HPK_INTEGRITY_BYTES") {
        Ok(text) => text
            .parse()
            .expect("HPK_INTEGRITY_BYTES is a number of bytes"),
        Err(_) => 1 << 30,
    }
}

/// A container started with `hpktainer exec`, and what `ps` knows of it.
struct Container {
    proc: Proc,
    id: String,
}

/// Starts a container running `script` (with /probe), after it printed
/// its address; finds its id in `hpktainer ps`.
fn start(bubble: &Bubble, what: &str, script: &str) -> Container {
    let mut words: Vec<String> = vec!["exec".into()];
    words.extend(bubble.probe_bind());
    let script = format!("echo addr=$HPK_IP; {script}");
    words.extend([
        bubble.image.display().to_string(),
        "sh".into(),
        "-c".into(),
        script,
    ]);
    let (proc, line) = Proc::spawn_until(what, bubble.hpktainer(&words), |line| {
        line.starts_with("addr=")
    });
    let address = line.trim_start_matches("addr=").to_owned();
    let ps = bubble.hpktainer(&["ps", "--json"]).output().unwrap();
    assert!(ps.status.success(), "{}", stderr(&ps));
    let entries: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    let id = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["address"].as_str() == Some(address.as_str()))
        .unwrap_or_else(|| panic!("{what} ({address}) is not in ps: {entries}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    Container { proc, id }
}

impl Container {
    fn socket(&self, bubble: &Bubble) -> PathBuf {
        bubble.path("run").join("s").join(&self.id).join("s")
    }

    fn stats(&self, bubble: &Bubble) -> StatsSnapshot {
        let daemon = hpk_testbed::bin_path("hpk-net-daemon");
        let output = std::process::Command::new(daemon)
            .arg("stats")
            .arg("--socket")
            .arg(self.socket(bubble))
            .output()
            .unwrap();
        assert!(output.status.success(), "stats: {}", stderr(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// The relay server's pid, from the container's state record.
    fn relay_pid(&self, bubble: &Bubble) -> i32 {
        let path = bubble
            .path("run")
            .join("containers")
            .join(format!("{}.json", self.id));
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        record["relay_pid"]
            .as_i64()
            .expect("a running container has a relay") as i32
    }
}

/// Takes the connections of one load container in the bubble, one after
/// another, and checks every whole one against the sequence it must be.
struct LoadReceiver {
    thread: JoinHandle<u64>,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<TcpStream>>>,
}

impl LoadReceiver {
    fn listen(bubble: &Bubble, port: u16, seed: u64) -> Self {
        let addr: std::net::SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
        let listener = bubble.ns.run(|| TcpListener::bind(addr)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let (stopping, active) = (stop.clone(), current.clone());
        let thread = std::thread::spawn(move || {
            let expected = transfer::expected(LOAD_CHUNK, seed);
            let mut verified = 0;
            while !stopping.load(Ordering::Relaxed) {
                let mut stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(err) => panic!("accept load connection: {err}"),
                };
                stream.set_nonblocking(false).unwrap();
                *active.lock().unwrap() = Some(stream.try_clone().unwrap());
                let got = transfer::receive_from(&mut stream);
                // A connection cut by the end of the test may be short;
                // any other must be whole and exact.
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                assert_eq!(got.unwrap(), expected, "load connection on port {port}");
                verified += LOAD_CHUNK;
            }
            verified
        });
        Self {
            thread,
            stop,
            current,
        }
    }

    /// Ends the receiver (cutting a connection in flight); returns the
    /// bytes of load it verified.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(stream) = self.current.lock().unwrap().take() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        self.thread
            .join()
            .expect("a load connection arrived corrupted")
    }
}

/// The script of a load container: send to the bubble, again and again.
///
/// The sender runs in the background so SIGTERM (which a shell only acts
/// on between commands) reaches the loop at once and takes the sender with
/// it: the stand-in, like apptainer without `--pid`, gives a container no
/// PID namespace, so a sender left behind would outlive the container,
/// stuck on a connection whose relay is gone.
fn load_script(port: u16, seed: u64) -> String {
    format!(
        "while :; do /probe send {GATEWAY}:{port} {LOAD_CHUNK} {seed} >/dev/null & p=$!; \
         trap 'kill $p; exit 143' TERM; wait $p || break; done; echo load ended; exec sleep 600"
    )
}

/// `/probe send` processes towards `port` of the bubble, on this machine.
fn senders_to(port: u16) -> Vec<(i32, String)> {
    let needle = format!("/probe send {GATEWAY}:{port} ");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let pid = entry.file_name().to_string_lossy().parse().ok();
        if let (Some(pid), true) = (pid, text.starts_with(&needle)) {
            found.push((pid, text));
        }
    }
    found
}

/// Sends `len` bytes from a container to the bubble while two others load
/// the bridge; with `kill_one`, SIGKILLs one loader's relay a quarter of
/// the way through. Returns the bytes verified.
fn transfer_under_load(kill_one: bool) -> u64 {
    // The relay counters this test reads exist only on the relay path.
    let bubble = Bubble::with_data_path("relay");
    let before = bubble.snapshot();
    let len = transfer_size();
    // Ports of their own, so the two tests' leftovers cannot be confused.
    let base: u16 = if kill_one { 5310 } else { 5300 };
    let loads: Vec<(Container, LoadReceiver)> = [(base + 1, 31u64), (base + 2, 32)]
        .into_iter()
        .map(|(port, seed)| {
            let receiver = LoadReceiver::listen(&bubble, port, seed);
            (
                start(&bubble, "load container", &load_script(port, seed)),
                receiver,
            )
        })
        .collect();

    let dest: std::net::SocketAddr = format!("0.0.0.0:{base}").parse().unwrap();
    let receiver = Receiver::listen(&bubble.ns, dest);
    let started = Instant::now();
    let main = start(
        &bubble,
        "main container",
        &format!("/probe send {GATEWAY}:{base} {len} 77; echo sent $?; exec sleep 600"),
    );
    let victim_relay = if kill_one {
        wait_until_carried(&bubble, &main, len / 4);
        let pid = loads[0].0.relay_pid(&bubble);
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        report::record_detail(kind::PROCESS_KILLED, 1, "relay under load");
        Some(pid)
    } else {
        None
    };

    let digest = receiver.digest().unwrap();
    let took = started.elapsed();
    assert_eq!(
        digest,
        transfer::expected(len, 77),
        "the main transfer arrived intact"
    );
    eprintln!(
        "{len} bytes verified in {took:.1?} ({:.0} Mbit/s) under load{}",
        len as f64 * 8.0 / took.as_secs_f64() / 1e6,
        if kill_one {
            ", one loader's relay killed"
        } else {
            ""
        }
    );
    let main_stats = main.stats(&bubble);
    assert_eq!(main_stats.protocol_errors, 0, "{main_stats:?}");
    assert_eq!(
        main_stats.connections, 1,
        "the main relay never lost its peer: {main_stats:?}"
    );

    let mut verified = len;
    for (index, (container, receiver)) in loads.into_iter().enumerate() {
        let killed = kill_one && index == 0;
        if !killed {
            let stats = container.stats(&bubble);
            assert_eq!(stats.protocol_errors, 0, "{stats:?}");
        }
        container.proc.stop(Signal::SIGTERM);
        let load = receiver.finish();
        assert!(killed || load > 0, "loader {index} verified nothing");
        verified += load;
    }
    if let Some(pid) = victim_relay {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the killed relay is gone"
        );
    }
    main.proc.stop(Signal::SIGTERM);
    // Leftovers are this test's own (its ports): killed by pid, then reported.
    let leftovers: Vec<(i32, String)> = (base..=base + 2).flat_map(senders_to).collect();
    for (pid, _) in &leftovers {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    assert!(
        leftovers.is_empty(),
        "senders outlived their containers: {leftovers:?}"
    );

    // The killed relay's leftovers go with its container's release.
    let gc = bubble.hpktainer(&["gc"]).output().unwrap();
    assert!(gc.status.success(), "{}", stderr(&gc));
    assert_eq!(bubble.snapshot(), before, "nothing left behind");
    verified
}

/// Waits until the main relay has carried `bytes` from its container.
fn wait_until_carried(bubble: &Bubble, main: &Container, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while main.stats(bubble).socket_to_tap.bytes < bytes {
        assert!(
            Instant::now() < deadline,
            "the main transfer made no progress"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_large_transfer_arrives_intact_while_other_containers_load_the_bridge() {
    let verified = transfer_under_load(false);
    report::record(kind::BYTES_VERIFIED, verified);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_large_transfer_arrives_intact_while_another_relay_is_killed() {
    let verified = transfer_under_load(true);
    report::record(kind::BYTES_VERIFIED, verified);
}
