//! The leak detector can fail: a leak of each kind, planted in a bubble of
//! the test's own, is reported under that kind, and a clean bubble reports
//! nothing. Needs root; run by `cargo xtask test`.

use std::process::Command;

use hpk_testbed::leaks::{Kind, Scope, Snapshot};
use hpk_testbed::{Netns, Proc, report};

struct Rig {
    ns: Netns,
    dir: tempfile::TempDir,
    scope: Scope,
}

impl Rig {
    fn new() -> Self {
        let ns = Netns::new("leak");
        let dir = tempfile::Builder::new()
            .prefix("hl")
            .tempdir_in("/tmp")
            .unwrap();
        for sub in ["cni/hpktainer", "run/s", "run/containers"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let scope = Scope {
            netns: ns.name().to_owned(),
            leases: dir.path().join("cni/hpktainer"),
            socket_dirs: dir.path().join("run/s"),
            records: dir.path().join("run/containers"),
            marker: dir.path().to_path_buf(),
            persistent: vec!["hpk-bridge".into()],
        };
        Self { ns, dir, scope }
    }

    /// The kinds reported after `plant`, and whether `unplant` restores a clean diff.
    fn plant(&self, plant: impl FnOnce(&Self), unplant: impl FnOnce(&Self)) -> Vec<Kind> {
        let before = Snapshot::take(&self.scope);
        plant(self);
        let leaks = before.diff(&Snapshot::take(&self.scope));
        assert!(leaks.iter().all(|leak| leak.appeared), "{leaks:?}");
        unplant(self);
        hpk_testbed::leaks::assert_unchanged(&self.scope, &before, "after removing the plant");
        let mut kinds: Vec<Kind> = leaks.iter().map(|leak| leak.kind).collect();
        kinds.dedup();
        kinds
    }
}

fn sh(rig: &Rig, script: &str) {
    rig.ns.sh(script);
}

fn detected(kinds: &[Kind], planted: Kind) {
    assert!(
        kinds.contains(&planted),
        "{planted} not reported: {kinds:?}"
    );
    report::record_detail(
        report::kind::PLANTED_LEAKS_DETECTED,
        1,
        &planted.to_string(),
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_clean_bubble_reports_nothing() {
    let rig = Rig::new();
    let before = Snapshot::take(&rig.scope);
    assert!(before.of(Kind::Link).any(|link| link == "lo"), "{before:?}");
    // Activity that leaves nothing behind: a process that ends, a link that goes.
    sh(
        &rig,
        "ip link add tmp0 type bridge && ip link del tmp0; true",
    );
    assert!(before.diff(&Snapshot::take(&rig.scope)).is_empty());
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn each_kind_of_planted_leak_is_reported_under_its_kind() {
    let rig = Rig::new();

    let kinds = rig.plant(
        |r| sh(r, "ip link add leak0 type bridge"),
        |r| sh(r, "ip link del leak0"),
    );
    detected(&kinds, Kind::Link);
    assert_eq!(kinds, [Kind::Link], "a down bridge has nothing else");

    let kinds = rig.plant(
        |r| sh(r, "ip addr add 192.0.2.7/32 dev lo"),
        |r| sh(r, "ip addr del 192.0.2.7/32 dev lo"),
    );
    detected(&kinds, Kind::Address);

    let kinds = rig.plant(
        |r| sh(r, "ip route add 198.51.100.0/24 dev lo"),
        |r| sh(r, "ip route del 198.51.100.0/24 dev lo"),
    );
    detected(&kinds, Kind::Route);
    assert_eq!(kinds, [Kind::Route]);

    let lease = rig.scope.leases.join("10.244.7.9");
    let kinds = rig.plant(
        |_| std::fs::write(&lease, "leaked-id\ntap0").unwrap(),
        |_| std::fs::remove_file(&lease).unwrap(),
    );
    detected(&kinds, Kind::Lease);
    assert_eq!(kinds, [Kind::Lease]);

    let socket_dir = rig.scope.socket_dirs.join("0123abcd");
    let kinds = rig.plant(
        |_| std::fs::create_dir(&socket_dir).unwrap(),
        |_| std::fs::remove_dir(&socket_dir).unwrap(),
    );
    detected(&kinds, Kind::SocketDir);
    assert_eq!(kinds, [Kind::SocketDir]);

    let record = rig.scope.records.join("0123abcd.json");
    let kinds = rig.plant(
        |_| std::fs::write(&record, "{}").unwrap(),
        |_| std::fs::remove_file(&record).unwrap(),
    );
    detected(&kinds, Kind::StateRecord);
    assert_eq!(kinds, [Kind::StateRecord]);

    let rule = "-t nat -A POSTROUTING -s 203.0.113.0/24 -j MASQUERADE";
    let kinds = rig.plant(
        |r| sh(r, &format!("iptables -w {rule}")),
        |r| sh(r, &format!("iptables -w {}", rule.replace("-A", "-D"))),
    );
    detected(&kinds, Kind::IptablesRule);

    let kinds = rig.plant(
        |r| {
            sh(
                r,
                "nft add table inet hpkleak && nft add chain inet hpkleak c && \
                 nft add rule inet hpkleak c ip saddr 203.0.113.9 counter drop",
            )
        },
        |r| sh(r, "nft delete table inet hpkleak"),
    );
    detected(&kinds, Kind::NftRule);
    assert_eq!(kinds, [Kind::NftRule], "iptables does not list inet tables");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn processes_of_the_bubble_are_found_by_namespace_marker_and_ancestry() {
    let rig = Rig::new();
    let before = Snapshot::take(&rig.scope);

    // In the bubble's namespace.
    let mut in_ns = rig.ns.command("sleep");
    in_ns.arg("600");
    let in_ns = Proc::spawn("sleep in the bubble", in_ns);
    // Outside it, but carrying the bubble's directory in its environment,
    // with a child that carries nothing (found by ancestry).
    let mut marked = Command::new("sh");
    marked
        .args(["-c", "sleep 600 & wait"])
        .env("HPK_TEST_BUBBLE", rig.dir.path());
    let marked = Proc::spawn("marked shell", marked);
    // An unrelated process, which must not be reported.
    let mut other = Command::new("sleep");
    other.arg("601");
    let other = Proc::spawn("unrelated sleep", other);

    let expected = [in_ns.pid(), marked.pid()];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let found = loop {
        let leaks = before.diff(&Snapshot::take(&rig.scope));
        let found: Vec<String> = leaks.iter().map(|l| l.to_string()).collect();
        // The shell's child appears a moment after the shell.
        if found.len() >= 3 || std::time::Instant::now() >= deadline {
            assert!(leaks.iter().all(|l| l.kind == Kind::Process), "{leaks:?}");
            break found;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    for pid in expected {
        assert!(
            found.iter().any(|item| item.contains(&format!(": {pid}/"))),
            "{pid} not reported: {found:?}"
        );
    }
    assert!(
        found
            .iter()
            .any(|i| i.contains("sleep 600") && !i.contains("sh -c")),
        "{found:?}"
    );
    assert!(
        !found
            .iter()
            .any(|i| i.contains(&format!(": {}/", other.pid()))),
        "{found:?}"
    );
    assert_eq!(found.len(), 3, "{found:?}");
    report::record_detail(report::kind::PLANTED_LEAKS_DETECTED, 1, "process");

    drop((in_ns, marked, other));
    // The shell's orphaned child goes on: kill it by the pid the detector found.
    for item in &found {
        let pid = item.split(": ").nth(1).unwrap().split('/').next().unwrap();
        let pid: i32 = pid.parse().unwrap();
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
    hpk_testbed::leaks::assert_unchanged(&rig.scope, &before, "after killing the plants");
}
