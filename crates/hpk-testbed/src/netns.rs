//! Named network namespaces owned by a test, removed when dropped.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace made with `ip netns add`, with loopback up.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes a fresh namespace; `tag` says what it is for (a few letters).
    pub fn new(tag: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("hpkt-{tag}-{}-{n}", std::process::id());
        run_ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip("link set lo up");
        ns
    }

    /// Names the network namespace process `pid` lives in (`ip netns
    /// attach`), so a container started by someone else can be measured
    /// from here; dropping it removes the name, not the namespace.
    pub fn attach(tag: &str, pid: i32) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("hpkt-{tag}-{}-{n}", std::process::id());
        run_ip(&["netns", "attach", &name, &pid.to_string()]);
        Self { name }
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, for `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `ip -n NAME <args>` (split on spaces); panics if it fails.
    pub fn ip(&self, args: &str) {
        let mut words = vec!["-n", &self.name];
        words.extend(args.split_whitespace());
        run_ip(&words);
    }

    /// Runs a shell command inside the namespace and returns its stdout;
    /// panics with its stderr if it fails.
    pub fn sh(&self, script: &str) -> String {
        let output = self
            .command("sh")
            .args(["-c", script])
            .output()
            .expect("run sh");
        assert!(
            output.status.success(),
            "in {}: `{script}` failed: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `f` on a thread inside the namespace (sockets it opens stay
    /// bound to the namespace).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        hpk_netconf::netns::run_in(&self.path(), f).expect("enter test namespace")
    }

    /// Whether `count` pings to `dest` from here are all answered.
    pub fn ping(&self, dest: &str, count: u32) -> bool {
        let status = self
            .command("ping")
            .args(["-c", &count.to_string(), "-i", "0.2", "-W", "2", "-q", dest])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run ping");
        status.success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run_ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}
