//! The stand-in apptainer, run for real against a busybox sandbox: what it records, what it
//! refuses, and the containers and instances it makes. Tests that make namespaces need root
//! and are ignored otherwise (`cargo xtask test` runs them).

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hpk_testbed::image::busybox_image;
use hpk_testbed::process::{PATIENCE, shell_status};
use hpk_testbed::{Proc, bin_path};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

const STANDIN: &str = env!("CARGO_BIN_EXE_apptainer-standin");

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A directory of the test's own (image, state, log, bind sources), removed when dropped.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("hpkt-standin-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }

    fn image(&self) -> PathBuf {
        busybox_image(&self.dir.join("image")).expect("build the busybox image")
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("invocations.jsonl")
    }

    /// The stand-in with this scratch's state directory and invocation log.
    fn standin(&self, args: &[&str]) -> Command {
        let mut command = Command::new(STANDIN);
        command
            .args(args)
            .env("HPK_STANDIN_STATE_DIR", self.state())
            .env("HPK_STANDIN_LOG", self.log());
        command
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Instances a failed test left running (the stop is bounded by its own timeouts).
        if self.state().exists() {
            let _ = Command::new(STANDIN)
                .args(["-q", "instance", "stop", "--all", "--timeout", "2"])
                .env("HPK_STANDIN_STATE_DIR", self.state())
                .status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `command` to its end (bounded) and collects its output.
fn run(command: Command) -> Ran {
    run_with_input(command, "")
}

/// Runs `command` with `input` on its stdin.
fn run_with_input(mut command: Command, input: &str) -> Ran {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start the stand-in");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let mut err_text = String::new();
    let _ = stderr.read_to_string(&mut err_text);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the stand-in did not end; stderr: {err_text}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ran {
        code: shell_status(status),
        stdout: out.join().unwrap(),
        stderr: err_text,
    }
}

/// Runs and expects status 0; returns stdout.
fn ok(command: Command) -> String {
    let ran = run(command);
    assert_eq!(ran.code, 0, "stderr: {}", ran.stderr);
    ran.stdout
}

fn image_arg(image: &Path) -> &str {
    image.to_str().unwrap()
}

/// The namespace a link such as /proc/self/ns/net names, as `readlink` prints it.
fn namespace(path: &str) -> String {
    fs::read_link(path).unwrap().to_string_lossy().into_owned()
}

/// Makes this test process the reaper of orphans, so a test can see a container's end.
fn adopt_orphans() {
    nix::sys::prctl::set_child_subreaper(true).expect("become a child subreaper");
}

/// Reaps `pid` if it is (or became) our child, and asserts it is gone from the process table.
fn assert_gone(pid: i32) -> Option<WaitStatus> {
    let deadline = Instant::now() + PATIENCE;
    let mut status = None;
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(done) => status = Some(done),
            Err(Errno::ECHILD) => {}
            Err(err) => panic!("waitpid {pid}: {err}"),
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return status;
        }
        assert!(Instant::now() < deadline, "process {pid} is still there");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn records_argv_and_apptainer_environment() {
    let scratch = Scratch::new("log");
    let missing = scratch.dir.join("missing");
    let mut command = scratch.standin(&["-q", "exec", "--net", "--network", "none"]);
    command
        .args(["--env", "A=1", missing.to_str().unwrap(), "/bin/true"])
        .env("APPTAINERENV_FOO", "bar")
        .env("SINGULARITYENV_OLD", "yes")
        .env("APPTAINER_CACHEDIR", "/c")
        .env("HPKT_UNRELATED", "no");
    let ran = run(command);
    assert_eq!(ran.code, 255, "the image does not exist");

    let log = fs::read_to_string(scratch.log()).unwrap();
    let line: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    let argv: Vec<&str> = line["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let expected = ["-q", "exec", "--net", "--network", "none", "--env", "A=1"];
    assert_eq!(argv[..7], expected);
    assert_eq!(argv[8], "/bin/true");
    assert_eq!(line["env"]["APPTAINERENV_FOO"], "bar");
    assert_eq!(line["env"]["SINGULARITYENV_OLD"], "yes");
    assert_eq!(line["env"]["APPTAINER_CACHEDIR"], "/c");
    assert!(line["env"].get("HPKT_UNRELATED").is_none());
}

#[test]
fn refuses_unknown_options_and_file_images() {
    let scratch = Scratch::new("refuse");
    let image = scratch.dir.join("image.sif");
    fs::write(&image, "not a sandbox").unwrap();
    let image = image.to_str().unwrap();

    for (args, says) in [
        (
            vec!["exec", "--bogus", image, "true"],
            "unknown flag: --bogus",
        ),
        (vec!["exec", "-Z", image, "true"], "unknown shorthand flag"),
        (
            vec!["run", "--network", "bridge", image],
            "only --network none",
        ),
        (
            vec!["run", "--network-args", "portmap=80:80/tcp", image],
            "not supported",
        ),
        (vec!["exec", image, "true"], "only directory images"),
        (vec!["exec", "--bind"], "needs an argument"),
        (vec!["build", "x", "y"], "unknown command"),
    ] {
        let ran = run(scratch.standin(&args));
        assert_eq!(ran.code, 255, "{args:?}");
        assert!(ran.stderr.contains(says), "{args:?}: {}", ran.stderr);
    }
}

#[test]
fn says_it_is_a_stand_in() {
    let scratch = Scratch::new("help");
    assert!(ok(scratch.standin(&["--help"])).contains("STAND-IN for Apptainer"));
    assert!(ok(scratch.standin(&["--version"])).contains("not Apptainer"));
    assert!(ok(scratch.standin(&["version"])).contains("stand-in"));
}

#[test]
fn bin_path_finds_the_stand_in() {
    assert_eq!(bin_path("apptainer-standin"), PathBuf::from(STANDIN));
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn exit_status_comes_through() {
    let scratch = Scratch::new("status");
    let image = scratch.image();
    let exec = run(scratch.standin(&["exec", image_arg(&image), "/bin/sh", "-c", "exit 3"]));
    assert_eq!(exec.code, 3, "{}", exec.stderr);
    let runs = run(scratch.standin(&["run", image_arg(&image), "sh", "-c", "exit 4"]));
    assert_eq!(runs.code, 4, "{}", runs.stderr);
    let missing = run(scratch.standin(&["exec", image_arg(&image), "no-such-command"]));
    assert_eq!(
        missing.code, 127,
        "actions/exec is a shell: {}",
        missing.stderr
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn sigterm_reaches_the_container() {
    let scratch = Scratch::new("term");
    let image = scratch.image();
    let out = scratch.dir.join("out");
    fs::create_dir(&out).unwrap();
    let bind = format!("{}:/out", out.display());
    let script = "echo $$ > /out/pid; echo ready; exec sleep 1000";
    let command = scratch.standin(&["exec", "-B", &bind, image_arg(&image), "sh", "-c", script]);
    let standin = Proc::spawn_until_line("stand-in", command, "ready");
    let inner: i32 = fs::read_to_string(out.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let status = standin.stop(Signal::SIGTERM);
    assert_eq!(
        shell_status(status),
        143,
        "the container died of the forwarded SIGTERM"
    );
    assert_gone(inner);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn container_dies_with_a_killed_stand_in() {
    adopt_orphans();
    let scratch = Scratch::new("kill");
    let image = scratch.image();
    let out = scratch.dir.join("out");
    fs::create_dir(&out).unwrap();
    let bind = format!("{}:/out", out.display());
    let script = "echo $$ > /out/pid; echo ready; exec sleep 1000";
    let command = scratch.standin(&["exec", "-B", &bind, image_arg(&image), "sh", "-c", script]);
    let standin = Proc::spawn_until_line("stand-in", command, "ready");
    let inner: i32 = fs::read_to_string(out.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    standin.stop(Signal::SIGKILL);
    let status = assert_gone(inner);
    assert!(
        matches!(status, Some(WaitStatus::Signaled(_, Signal::SIGKILL, _))),
        "parent-death signal: {status:?}"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn private_network_has_only_loopback_up() {
    let scratch = Scratch::new("net");
    let image = scratch.image();
    let script = "ls /sys/class/net; ip -o link; ping -c 1 -W 2 127.0.0.1 >/dev/null && echo pong; \
                  readlink /proc/self/ns/net";
    let args = [
        "exec",
        "--net",
        "--network",
        "none",
        image_arg(&image),
        "sh",
        "-c",
        script,
    ];
    let out = ok(scratch.standin(&args));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "lo", "/sys/class/net: {out}");
    assert!(
        lines[1].contains(": lo:") && lines[1].contains("UP"),
        "{out}"
    );
    assert_eq!(lines[2], "pong", "{out}");
    assert_ne!(lines[3], namespace("/proc/self/ns/net"));
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn without_net_the_callers_network_is_shared() {
    let scratch = Scratch::new("hostnet");
    let image = scratch.image();
    let args = ["exec", image_arg(&image), "readlink", "/proc/self/ns/net"];
    assert_eq!(
        ok(scratch.standin(&args)).trim(),
        namespace("/proc/self/ns/net")
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn binds_files_and_directories() {
    let scratch = Scratch::new("bind");
    let image = scratch.image();
    let data = scratch.dir.join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("in-dir"), "from the directory\n").unwrap();
    let file = scratch.dir.join("single");
    fs::write(&file, "from the file\n").unwrap();

    let binds = format!(
        "{}:/mnt/deep/data,{}:/etc/single.conf:ro",
        data.display(),
        file.display()
    );
    let script = "cat /mnt/deep/data/in-dir /etc/single.conf; echo written > /mnt/deep/data/new; \
                  (echo x > /etc/single.conf) 2>/dev/null || echo read-only";
    let args = [
        "exec",
        "--bind",
        &binds,
        image_arg(&image),
        "sh",
        "-c",
        script,
    ];
    let out = ok(scratch.standin(&args));
    assert_eq!(out, "from the directory\nfrom the file\nread-only\n");
    assert_eq!(fs::read_to_string(data.join("new")).unwrap(), "written\n");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn contain_gives_a_minimal_dev() {
    let scratch = Scratch::new("contain");
    let image = scratch.image();
    let image = image_arg(&image);
    let tun = |extra: &[&str]| {
        let mut args = vec!["exec", "--contain"];
        args.extend_from_slice(extra);
        args.extend([
            image,
            "sh",
            "-c",
            "test -c /dev/net/tun && echo tun; ls /dev",
        ]);
        ok(scratch.standin(&args))
    };
    let bare = tun(&[]);
    assert!(!bare.contains("tun"), "{bare}");
    let names: BTreeSet<&str> = bare.split_whitespace().collect();
    for device in ["null", "zero", "full", "random", "urandom", "tty"] {
        assert!(names.contains(device), "{device} in {bare}");
    }
    assert!(!names.contains("sda") && !names.contains("kmsg"), "{bare}");
    assert!(tun(&["--bind", "/dev/net/tun"]).starts_with("tun\n"));
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn environment_reaches_the_container() {
    let scratch = Scratch::new("env");
    let image = scratch.image();
    let mut command =
        scratch.standin(&["exec", "--env", "BAZ=qux,ONE=1", image_arg(&image), "env"]);
    command
        .env("APPTAINERENV_FOO", "bar")
        .env("HPKT_HOSTVAR", "host");
    let env = ok(command);
    for line in ["FOO=bar", "BAZ=qux", "ONE=1", "HPKT_HOSTVAR=host"] {
        assert!(env.lines().any(|l| l == line), "{line} in {env}");
    }
    assert!(!env.contains("APPTAINERENV_"), "{env}");

    let mut command = scratch.standin(&["exec", "-e", "--env", "A=b", image_arg(&image), "env"]);
    command
        .env("APPTAINERENV_FOO", "bar")
        .env("HPKT_HOSTVAR", "host");
    let clean = ok(command);
    assert!(
        clean.contains("FOO=bar") && clean.contains("A=b"),
        "{clean}"
    );
    assert!(!clean.contains("HPKT_HOSTVAR"), "--cleanenv: {clean}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn shell_and_env_file() {
    let scratch = Scratch::new("shell");
    let image = scratch.image();
    let env_file = scratch.dir.join("env");
    fs::write(&env_file, "# comment\nexport FROM_FILE=\"yes\"\n").unwrap();
    let args = [
        "shell",
        "--shell",
        "/bin/sh",
        "--env-file",
        env_file.to_str().unwrap(),
    ];
    let mut command = scratch.standin(&args);
    command.arg(image_arg(&image));
    let script = "echo $SINGULARITY_SHELL $FROM_FILE; exit 5\n";
    let ran = run_with_input(command, script);
    assert_eq!(ran.code, 5, "{}", ran.stderr);
    assert_eq!(ran.stdout, "/bin/sh yes\n");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn fakeroot_runs_in_a_user_namespace() {
    let scratch = Scratch::new("fakeroot");
    let image = scratch.image();
    let script = "id -u; readlink /proc/self/ns/user; ls /sys/class/net";
    let args = [
        "exec",
        "--fakeroot",
        "--net",
        image_arg(&image),
        "sh",
        "-c",
        script,
    ];
    let out = ok(scratch.standin(&args));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0");
    assert_ne!(lines[1], namespace("/proc/self/ns/user"));
    assert_eq!(
        lines[2..],
        ["lo"],
        "fresh sysfs inside the user namespace: {out}"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn unprivileged_caller_gets_a_user_namespace() {
    let scratch = Scratch::new("nobody");
    let image = scratch.image();
    let script = "id -u; ls /sys/class/net; test -e /dev/net/tun && echo tun";
    let args = [
        "exec",
        "--net",
        "--network",
        "none",
        "--contain",
        "--bind",
        "/dev/net/tun",
    ];
    let mut command = Command::new(STANDIN);
    command
        .args(args)
        .args([image_arg(&image), "sh", "-c", script]);
    command.uid(65534).gid(65534).env("HOME", "/");
    let out = ok(command);
    assert_eq!(out, "65534\nlo\ntun\n");
}

/// `instance list --json`, parsed: (name, pid) of each instance.
fn instances(scratch: &Scratch) -> Vec<(String, i32)> {
    let out = ok(scratch.standin(&["instance", "list", "--json"]));
    let doc: serde_json::Value = serde_json::from_str(&out).expect("list --json is JSON");
    let entries = doc["instances"].as_array().expect("an instances array");
    entries
        .iter()
        .map(|i| {
            for key in ["img", "ip", "logErrPath", "logOutPath"] {
                assert!(i[key].is_string(), "{key} in {i}");
            }
            (
                i["instance"].as_str().unwrap().to_owned(),
                i["pid"].as_i64().unwrap() as i32,
            )
        })
        .collect()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn instance_start_exec_list_stop() {
    adopt_orphans();
    let scratch = Scratch::new("instance");
    let image = scratch.image();
    let start = [
        "instance",
        "start",
        "--fakeroot",
        "--net",
        "--network",
        "none",
    ];
    let mut command = scratch.standin(&start);
    command.args([image_arg(&image), "bubble", "sleep", "1000"]);
    ok(command);

    let listed = instances(&scratch);
    assert_eq!(listed.len(), 1);
    let (name, pid) = listed[0].clone();
    assert_eq!(name, "bubble");
    let text = ok(scratch.standin(&["instance", "list"]));
    assert!(
        text.starts_with("INSTANCE NAME") && text.contains("bubble"),
        "{text}"
    );
    let script = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let script: i32 = script
        .trim()
        .parse()
        .expect("the holder runs the startscript");

    let joined = ok(scratch.standin(&[
        "exec",
        "instance://bubble",
        "sh",
        "-c",
        "readlink /proc/self/ns/net; id -u; ls /sys/class/net",
    ]));
    let instance_net = namespace(&format!("/proc/{pid}/ns/net"));
    assert_eq!(joined, format!("{instance_net}\n0\nlo\n"));
    assert_ne!(instance_net, namespace("/proc/self/ns/net"));

    let again = run(scratch.standin(&["instance", "start", image_arg(&image), "bubble"]));
    assert_eq!(again.code, 255);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);

    ok(scratch.standin(&["instance", "stop", "bubble"]));
    assert!(instances(&scratch).is_empty());
    assert_gone(pid);
    assert_gone(script);
    let left: Vec<_> = fs::read_dir(scratch.state()).unwrap().collect();
    assert!(left.is_empty(), "state left behind: {left:?}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn instance_outlives_its_script_and_dead_ones_are_pruned() {
    adopt_orphans();
    let scratch = Scratch::new("prune");
    let image = scratch.image();
    // The runscript exits at once; the instance stays, as apptainer's does.
    let mut command = scratch.standin(&["instance", "run", image_arg(&image), "one", "true"]);
    command.arg("ignored-by-true");
    ok(command);
    ok(scratch.standin(&["instance", "start", image_arg(&image), "two"]));
    let listed = instances(&scratch);
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["one", "two"]);

    let run_in = ok(scratch.standin(&["run", "instance://one", "echo", "in one"]));
    assert_eq!(run_in, "in one\n");

    // An instance killed behind the stand-in's back disappears from the list.
    let two = listed[1].1;
    nix::sys::signal::kill(Pid::from_raw(two), Signal::SIGKILL).unwrap();
    assert_gone(two);
    assert_eq!(instances(&scratch).len(), 1);
    let gone = run(scratch.standin(&["exec", "instance://two", "true"]));
    assert_eq!(gone.code, 255, "{}", gone.stderr);

    ok(scratch.standin(&["instance", "stop", "--all"]));
    assert_gone(listed[0].1);
    assert!(instances(&scratch).is_empty());
}
