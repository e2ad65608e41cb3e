//! Every hpk-netconf operation, for real, inside network namespaces the tests create.
//!
//! Privileged tests are ignored by default; `cargo xtask test` runs them as
//! root with `--include-ignored`. Each namespace lives only as long as the
//! file descriptor a [`TestNs`] holds, so the kernel removes it (and its
//! links) when the test ends, panics or is killed. Nothing here touches the
//! machine's own links.

use std::{
    fs::{self, File},
    future::Future,
    net::Ipv4Addr,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    process::Command,
    thread,
};

use hpk_netconf::{Error, IpNet, Ipv4Net, MacAddr, Netlink, netns};
use nix::sched::{CloneFlags, unshare};

/// A fresh network namespace, alive while this value is.
struct TestNs {
    file: File,
    path: PathBuf,
}

impl TestNs {
    fn new() -> Self {
        // unshare moves only this throwaway thread; the descriptor keeps the namespace.
        let file = thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare a network namespace (root needed)");
            File::open("/proc/thread-self/ns/net").expect("open the new network namespace")
        })
        .join()
        .expect("namespace thread");
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        Self { file, path }
    }

    /// Runs `f` with a netlink socket bound to this namespace.
    fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce(Netlink) -> Fut + Send,
        Fut: Future<Output = T>,
        T: Send,
    {
        netns::run_async_in(&self.path, || async {
            f(Netlink::open().expect("open netlink")).await
        })
        .expect("run in the test namespace")
    }

    /// Runs iproute2 inside the namespace: an independent view of the result.
    fn ip(&self, args: &[&str]) -> String {
        let output = netns::run_in(&self.path, || Command::new("ip").args(args).output())
            .expect("enter the test namespace")
            .expect("run ip");
        assert!(output.status.success(), "ip {args:?}: {output:?}");
        String::from_utf8(output.stdout).expect("ip prints text")
    }
}

/// A veth pair with both ends up, so routes over it are accepted.
async fn up_veth(nl: &Netlink, name: &str, peer: &str) -> u32 {
    let index = nl.add_veth(name, peer).await.unwrap();
    let peer = nl.link(peer).await.unwrap().expect("veth peer exists");
    nl.set_up(index).await.unwrap();
    nl.set_up(peer.index).await.unwrap();
    index
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn ns_inode(path: &str) -> u64 {
    fs::metadata(path).expect("stat a namespace").ino()
}

#[test]
#[ignore = "needs root and network namespaces: run with cargo xtask test"]
fn bridge_create_lookup_delete_and_already_exists() {
    let ns = TestNs::new();
    ns.run(|nl| async move {
        let index = nl.add_bridge("hpkt-br0").await.unwrap();
        let bridge = nl.link("hpkt-br0").await.unwrap().expect("bridge exists");
        assert_eq!(bridge.index, index);
        assert_eq!(bridge.kind.as_deref(), Some("bridge"));
        assert!(!bridge.up, "created down, like ip link add");
        assert!(bridge.mac.is_some());
        assert_eq!(nl.link_by_index(index).await.unwrap(), Some(bridge));

        let err = nl.add_bridge("hpkt-br0").await.unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
        assert_eq!(err.errno(), Some(libc::EEXIST));
        assert_eq!(err.to_string(), "link hpkt-br0 already exists");

        let names: Vec<String> = nl
            .links()
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert!(names.contains(&"lo".to_string()) && names.contains(&"hpkt-br0".to_string()));

        nl.del_link(index).await.unwrap();
        assert_eq!(nl.link("hpkt-br0").await.unwrap(), None);
        assert_eq!(nl.link_by_index(index).await.unwrap(), None);
    });
}

#[test]
#[ignore = "needs root and network namespaces: run with cargo xtask test"]
fn link_settings_and_bridge_ports() {
    let ns = TestNs::new();
    ns.run(|nl| async move {
        let bridge = nl.add_bridge("hpkt-br1").await.unwrap();
        let veth = nl.add_veth("hpkt-v1", "hpkt-v1p").await.unwrap();
        let peer = nl.link("hpkt-v1p").await.unwrap().expect("peer exists");
        assert_eq!(peer.kind.as_deref(), Some("veth"));

        nl.set_mtu(bridge, 1450).await.unwrap();
        nl.set_mtu(veth, 1450).await.unwrap();
        nl.set_txqueuelen(veth, 2000).await.unwrap();
        let mac = MacAddr::from_ipv4(Ipv4Addr::new(10, 244, 3, 2));
        nl.set_mac(veth, mac).await.unwrap();
        let link = nl.link_by_index(veth).await.unwrap().expect("veth exists");
        assert_eq!(
            (link.mtu, link.txqueuelen, link.mac),
            (1450, 2000, Some(mac))
        );
        assert_eq!(link.kind.as_deref(), Some("veth"));

        nl.set_up(veth).await.unwrap();
        assert!(nl.link_by_index(veth).await.unwrap().unwrap().up);
        nl.set_down(veth).await.unwrap();
        assert!(!nl.link_by_index(veth).await.unwrap().unwrap().up);

        nl.set_master(veth, bridge).await.unwrap();
        assert_eq!(
            nl.link_by_index(veth).await.unwrap().unwrap().master,
            Some(bridge)
        );
        assert_eq!(nl.link_by_index(bridge).await.unwrap().unwrap().mtu, 1450);
        nl.set_nomaster(veth).await.unwrap();
        assert_eq!(nl.link_by_index(veth).await.unwrap().unwrap().master, None);
    });
}

#[test]
#[ignore = "needs root and network namespaces: run with cargo xtask test"]
fn errors_name_the_operation_and_the_link() {
    let ns = TestNs::new();
    ns.run(|nl| async move {
        let veth = nl.add_veth("hpkt-e0", "hpkt-e0p").await.unwrap();

        let err = nl.set_mtu(veth, 70_000).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL));
        assert!(
            err.to_string().starts_with("set mtu 70000 on hpkt-e0: "),
            "{err}"
        );

        let err = nl.set_mtu(999_999, 1400).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENODEV));
        assert_eq!(
            err.to_string(),
            "set mtu 1400 on link #999999: no such device (ENODEV)"
        );

        let err = nl.set_master(veth, 999_999).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("attach hpkt-e0 to link #999999: "),
            "{err}"
        );

        let err = nl.add_veth("hpkt-e1", "hpkt-e0p").await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST));
        assert_eq!(err.to_string(), "link hpkt-e1 or hpkt-e0p already exists");
    });
}

#[test]
#[ignore = "needs root and network namespaces: run with cargo xtask test"]
fn addresses_add_and_delete_idempotently() {
    let ns = TestNs::new();
    ns.run(|nl| async move {
        let veth = nl.add_veth("hpkt-a0", "hpkt-a0p").await.unwrap();
        let (v4, v6) = (net("10.244.3.1/24"), net("2001:db8::1/64"));

        for addr in [v4, v4, v6, v6] {
            nl.add_address(veth, addr).await.unwrap();
        }
        let addresses = nl.addresses(veth).await.unwrap();
        assert_eq!(
            addresses.iter().filter(|a| **a == v4).count(),
            1,
            "{addresses:?}"
        );
        assert_eq!(
            addresses.iter().filter(|a| **a == v6).count(),
            1,
            "{addresses:?}"
        );

        nl.del_address(veth, v4).await.unwrap();
        nl.del_address(veth, v4).await.unwrap();
        nl.del_address(veth, v6).await.unwrap();
        let addresses = nl.addresses(veth).await.unwrap();
        assert!(
            !addresses.contains(&v4) && !addresses.contains(&v6),
            "{addresses:?}"
        );
    });
    assert!(
        !ns.ip(&["addr", "show", "dev", "hpkt-a0"])
            .contains("10.244.3.1")
    );
}

#[test]
#[ignore = "needs root and network namespaces: run with cargo xtask test"]
fn default_route_is_replaced_not_duplicated() {
    let ns = TestNs::new();
    let gateway = Ipv4Addr::new(192, 0, 2, 254);
    let veth = ns.run(|nl| async move {
        let veth = up_veth(&nl, "hpkt-d0", "hpkt-d0p").await;
        nl.add_address(veth, net("192.0.2.1/24")).await.unwrap();
        assert_eq!(nl.default_route_v4().await.unwrap(), None);

        nl.add_default_route(gateway, veth).await.unwrap();
        nl.add_default_route(gateway, veth).await.unwrap();
        assert_eq!(nl.default_route_v4().await.unwrap(), Some((gateway, veth)));

        nl.add_default_route(Ipv4Addr::new(192, 0, 2, 253), veth)
            .await
            .unwrap();
        veth
    });

    let routes = ns.ip(&["-4", "route", "show", "default"]);
    assert_eq!(
        routes.trim(),
        "default via 192.0.2.253 dev hpkt-d0 proto static"
    );
    let got = ns.run(|nl| async move { nl.default_route_v4().await.unwrap() });
    assert_eq!(got, Some((Ipv4Addr::new(192, 0, 2, 253), veth)));
}

#[test]
#[ignore = "needs root and network namespaces: run with cargo xtask test"]
fn onlink_routes_and_route_get() {
    let ns = TestNs::new();
    let node = Ipv4Addr::new(10, 244, 3, 0);
    let peer_node = Ipv4Addr::new(10, 244, 5, 0);
    ns.run(|nl| async move {
        // Laid out like flannel.1: a /32 per node, onlink routes to the others.
        let link = up_veth(&nl, "hpkt-f0", "hpkt-f0p").await;
        nl.add_address(link, net("10.244.3.0/32")).await.unwrap();
        let subnet: Ipv4Net = "10.244.5.0/24".parse().unwrap();

        let err = nl
            .add_route_v4(subnet, Some(peer_node), link, false)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("replace route 10.244.5.0/24 via 10.244.5.0 dev hpkt-f0: "),
            "{text}"
        );
        nl.add_route_v4(subnet, Some(peer_node), link, true)
            .await
            .unwrap();
        nl.add_route_v4(subnet, Some(peer_node), link, true)
            .await
            .unwrap();
        let got = nl.route_get_v4(Ipv4Addr::new(10, 244, 5, 7)).await.unwrap();
        assert_eq!(got, Some((Some(peer_node), link, Some(node))));

        // Host bits are dropped; no gateway means a link-scope route.
        let direct: Ipv4Net = "198.51.100.77/24".parse().unwrap();
        nl.add_route_v4(direct, None, link, false).await.unwrap();
        let got = nl
            .route_get_v4(Ipv4Addr::new(198, 51, 100, 9))
            .await
            .unwrap();
        assert_eq!(got, Some((None, link, Some(node))));

        assert_eq!(
            nl.route_get_v4(Ipv4Addr::new(203, 0, 113, 1))
                .await
                .unwrap(),
            None
        );
    });

    let routes = ns.ip(&["-4", "route", "show"]);
    assert!(
        routes.contains("10.244.5.0/24 via 10.244.5.0 dev hpkt-f0 proto static onlink"),
        "{routes}"
    );
    assert!(
        routes.contains("198.51.100.0/24 dev hpkt-f0 proto static scope link"),
        "{routes}"
    );
}

#[test]
#[ignore = "needs root and network namespaces: run with cargo xtask test"]
fn veth_end_moves_into_another_namespace() {
    let (here, there) = (TestNs::new(), TestNs::new());
    let target = there.file.as_fd();
    here.run(|nl| async move {
        nl.add_veth("hpkt-m0", "hpkt-m0p").await.unwrap();
        let peer = nl.link("hpkt-m0p").await.unwrap().expect("peer exists");
        nl.set_netns_fd(peer.index, target).await.unwrap();
        assert_eq!(nl.link("hpkt-m0p").await.unwrap(), None);
        assert!(nl.link("hpkt-m0").await.unwrap().is_some());
    });

    let moved = there.run(|nl| async move { nl.link("hpkt-m0p").await.unwrap() });
    assert_eq!(moved.expect("moved peer").kind.as_deref(), Some("veth"));
}

#[test]
#[ignore = "needs root and network namespaces: run with cargo xtask test"]
fn run_in_moves_only_its_own_thread_and_reports_panics() {
    let ns = TestNs::new();
    let before = ns_inode("/proc/thread-self/ns/net");

    let inside = netns::run_in(&ns.path, || ns_inode("/proc/thread-self/ns/net")).unwrap();
    assert_eq!(inside, ns_inode(ns.path.to_str().unwrap()));
    assert_ne!(inside, before);
    assert_eq!(ns_inode("/proc/thread-self/ns/net"), before);

    let err = netns::run_in(&ns.path, || panic!("boom in namespace")).unwrap_err();
    assert!(matches!(&err, Error::Panicked { message, .. } if message == "boom in namespace"));
    assert!(
        err.to_string().contains("panicked: boom in namespace"),
        "{err}"
    );
}

#[test]
fn run_in_a_missing_namespace_is_an_error() {
    let path = Path::new("/nonexistent/hpkt-netns");
    let err = netns::run_in(path, || ()).unwrap_err();
    assert!(
        matches!(&err, Error::Namespace { path: p, .. } if p == path),
        "{err:?}"
    );
    assert_eq!(err.errno(), Some(libc::ENOENT));
    assert!(
        err.to_string()
            .starts_with("enter network namespace /nonexistent/hpkt-netns: ")
    );
}

#[test]
fn run_in_a_file_that_is_no_namespace_is_an_error() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let err = netns::run_async_in(&path, || async {}).unwrap_err();
    assert!(matches!(err, Error::Namespace { .. }), "{err:?}");
    assert_eq!(err.errno(), Some(libc::EINVAL));
}
