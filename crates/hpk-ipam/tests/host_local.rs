//! ADD, DEL and CHECK against the real host-local plugin, in temporary data
//! directories (host-local only writes files there: no privilege needed).

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::thread;

use common::{config, lease_file, real_plugin};
use hpk_ipam::{Error, HostLocal, SUPPORTED_VERSIONS};
use tempfile::TempDir;

#[test]
fn version_is_the_newest_common_one() {
    let plugin = real_plugin();
    // Debian's 1.1.1 speaks up to 1.0.0.
    assert_eq!(plugin.cni_version(), "1.0.0");
    assert!(
        plugin
            .common_versions()
            .iter()
            .all(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
    );
    assert_eq!(plugin.path(), PathBuf::from(common::SYSTEM_PLUGIN));
}

#[test]
fn add_gives_an_address_in_the_subnet_other_than_the_gateway() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir, "10.244.3.1/24");
    let result = real_plugin().add(&cfg, "c1", "eth0").unwrap();

    let addr = result.ipv4().expect("an IPv4 address");
    assert_eq!(addr.prefix_len(), 24);
    assert!(cfg.subnet.contains(&addr.addr()));
    assert_ne!(addr.addr(), cfg.gateway);
    assert_eq!(result.ips[0].gateway, Some(IpAddr::V4(cfg.gateway)));
    assert!(lease_file(&cfg, addr.addr()).is_file());
}

#[test]
fn two_containers_get_distinct_addresses() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir, "10.244.4.0/24");
    let plugin = real_plugin();
    let a = plugin.add(&cfg, "c1", "eth0").unwrap().ipv4().unwrap();
    let b = plugin.add(&cfg, "c2", "eth0").unwrap().ipv4().unwrap();
    assert_ne!(a, b);
}

#[test]
fn concurrent_adds_get_distinct_addresses() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir, "10.244.5.0/24");
    let plugin = real_plugin();

    let addrs: HashSet<_> = thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let (plugin, cfg) = (&plugin, &cfg);
                s.spawn(move || plugin.add(cfg, &format!("c{i}"), "eth0").unwrap().ipv4())
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(addrs.len(), 8);
}

/// host-local refuses a second ADD for the same container id and interface
/// name; the same id on another interface gets a second address.
#[test]
fn same_container_twice_is_refused_on_the_same_interface() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir, "10.244.6.0/24");
    let plugin = real_plugin();
    let first = plugin.add(&cfg, "c1", "eth0").unwrap().ipv4().unwrap();

    let again = plugin.add(&cfg, "c1", "eth0").unwrap_err();
    assert!(
        matches!(again, Error::Plugin { command: "ADD", .. }),
        "{again}"
    );
    assert!(
        again.to_string().contains("duplicate allocation"),
        "{again}"
    );
    assert!(!again.is_exhausted());

    let other_if = plugin.add(&cfg, "c1", "eth1").unwrap().ipv4().unwrap();
    assert_ne!(first, other_if);
}

#[test]
fn del_releases_and_the_address_is_reused() {
    let dir = TempDir::new().unwrap();
    // A /30 has one address besides the gateway, so reuse is forced.
    let cfg = config(&dir, "10.9.0.0/30");
    let plugin = real_plugin();
    let first = plugin.add(&cfg, "c1", "eth0").unwrap();
    let addr = first.ipv4().unwrap().addr();
    assert!(lease_file(&cfg, addr).is_file());

    plugin.del(&cfg, "c1", "eth0", Some(&first)).unwrap();
    assert!(!lease_file(&cfg, addr).exists());

    let second = plugin.add(&cfg, "c2", "eth0").unwrap();
    assert_eq!(second.ipv4().unwrap().addr(), addr);
}

#[test]
fn del_without_previous_result_releases() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir, "10.244.7.0/24");
    let plugin = real_plugin();
    let addr = plugin
        .add(&cfg, "c1", "eth0")
        .unwrap()
        .ipv4()
        .unwrap()
        .addr();
    plugin.del(&cfg, "c1", "eth0", None).unwrap();
    assert!(!lease_file(&cfg, addr).exists());
}

#[test]
fn del_of_unknown_container_is_ok_and_repeatable() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir, "10.244.8.0/24");
    let plugin = real_plugin();
    plugin.del(&cfg, "never-added", "eth0", None).unwrap();

    let result = plugin.add(&cfg, "c1", "eth0").unwrap();
    plugin.del(&cfg, "c1", "eth0", Some(&result)).unwrap();
    plugin.del(&cfg, "c1", "eth0", Some(&result)).unwrap();
}

#[test]
fn del_needs_the_interface_name_of_the_add() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir, "10.244.9.0/24");
    let plugin = real_plugin();
    let addr = plugin
        .add(&cfg, "c1", "eth0")
        .unwrap()
        .ipv4()
        .unwrap()
        .addr();
    plugin.del(&cfg, "c1", "eth1", None).unwrap();
    assert!(lease_file(&cfg, addr).is_file());
}

#[test]
fn check_passes_after_add_and_fails_after_del() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir, "10.244.10.0/24");
    let plugin = real_plugin();
    let result = plugin.add(&cfg, "c1", "eth0").unwrap();
    plugin.check(&cfg, "c1", "eth0", &result).unwrap();

    plugin.del(&cfg, "c1", "eth0", Some(&result)).unwrap();
    let err = plugin.check(&cfg, "c1", "eth0", &result).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Plugin {
                command: "CHECK",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("c1"), "{err}");
}

#[test]
fn check_with_a_result_stored_as_json() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir, "10.244.11.0/24");
    let plugin = real_plugin();
    let result = plugin.add(&cfg, "c1", "eth0").unwrap();

    let stored = serde_json::to_string(&result).unwrap();
    let loaded: hpk_ipam::AddResult = serde_json::from_str(&stored).unwrap();
    plugin.check(&cfg, "c1", "eth0", &loaded).unwrap();
    plugin.del(&cfg, "c1", "eth0", Some(&loaded)).unwrap();
}

#[test]
fn a_full_range_is_reported_as_exhausted() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir, "10.9.1.0/30");
    let plugin = real_plugin();
    plugin.add(&cfg, "c1", "eth0").unwrap();

    let err = plugin.add(&cfg, "c2", "eth0").unwrap_err();
    assert!(err.is_exhausted(), "{err}");
    let text = err.to_string();
    assert!(text.contains("range set: 10.9.1.1-10.9.1.2"), "{text}");
}

#[test]
fn range_start_and_end_are_honoured() {
    let dir = TempDir::new().unwrap();
    let mut cfg = config(&dir, "10.244.12.0/24");
    cfg.range_start = Some("10.244.12.100".parse().unwrap());
    cfg.range_end = Some("10.244.12.101".parse().unwrap());
    let plugin = real_plugin();

    let a = plugin.add(&cfg, "c1", "eth0").unwrap().ipv4().unwrap();
    let b = plugin.add(&cfg, "c2", "eth0").unwrap().ipv4().unwrap();
    assert_eq!(a.to_string(), "10.244.12.100/24");
    assert_eq!(b.to_string(), "10.244.12.101/24");
    assert!(plugin.add(&cfg, "c3", "eth0").unwrap_err().is_exhausted());
}

#[test]
fn older_versions_work_and_check_needs_0_4_0() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir, "10.244.13.0/24");
    let v040 = real_plugin().with_cni_version("0.4.0").unwrap();
    let result = v040.add(&cfg, "c1", "eth0").unwrap();
    assert_eq!(result.cni_version, "0.4.0");
    assert_eq!(result.raw()["ips"][0]["version"], "4");
    v040.check(&cfg, "c1", "eth0", &result).unwrap();

    let v031 = real_plugin().with_cni_version("0.3.1").unwrap();
    let old = v031.add(&cfg, "c2", "eth0").unwrap();
    let err = v031.check(&cfg, "c2", "eth0", &old).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                command: "CHECK",
                ..
            }
        ),
        "{err}"
    );
    v031.del(&cfg, "c2", "eth0", Some(&old)).unwrap();
}

#[test]
fn a_result_is_checked_in_the_version_it_was_written_in() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir, "10.244.14.0/24");
    let result = real_plugin()
        .with_cni_version("0.4.0")
        .unwrap()
        .add(&cfg, "c1", "eth0")
        .unwrap();
    // The 1.0.0 client sends cniVersion 0.4.0 with this prevResult.
    real_plugin().check(&cfg, "c1", "eth0", &result).unwrap();
}

#[test]
fn a_version_not_spoken_is_refused() {
    let err = real_plugin().with_cni_version("1.1.0").unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                what: "CNI version",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn bad_arguments_are_refused_before_running_the_plugin() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir, "10.244.15.0/24");
    let plugin = real_plugin();
    for (id, ifname) in [
        ("a/b", "eth0"),
        ("-x", "eth0"),
        ("c1", "eth0/x"),
        ("c1", ""),
    ] {
        let err = plugin.add(&cfg, id, ifname).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    }
    assert!(!cfg.data_dir.exists(), "host-local must not have run");
}

#[test]
fn discover_in_finds_the_system_plugin() {
    let empty = TempDir::new().unwrap();
    let dirs = [empty.path().to_path_buf(), PathBuf::from("/usr/lib/cni")];
    let plugin = HostLocal::discover_in(&dirs).unwrap();
    assert_eq!(plugin.path(), PathBuf::from(common::SYSTEM_PLUGIN));
}

#[test]
fn discover_falls_back_to_system_dirs() {
    let empty = TempDir::new().unwrap();
    let plugin = HostLocal::discover(Some(empty.path().as_os_str())).unwrap();
    assert!(plugin.path().ends_with("host-local"));
    assert!(!plugin.path().starts_with(empty.path()));
}
