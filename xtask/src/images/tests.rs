//! `cargo xtask images` checked by other tools than the ones that wrote its
//! output: GNU tar reads our tar, skopeo reads the OCI archive, and the
//! image's entrypoint, unpacked by skopeo and tar, brings `tap0` up in a
//! network namespace against a real relay server.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hpk_testbed::{Netns, Proc};
use nix::sys::signal::Signal;
use serde_json::Value;

use super::docker::Plan;
use super::oci::{self, BaseImage};
use super::tar::TarBuilder;
use super::*;

fn stdout_of(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: {}, {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn image(daemon: &[u8], mtime: u64) -> BaseImage<'_> {
    BaseImage {
        daemon,
        arch: "amd64",
        version: VERSION,
        mtime,
    }
}

#[test]
fn gnu_tar_reads_our_tar() {
    let mut tar = TarBuilder::new(1_700_000_000);
    tar.dir("usr/local/bin", 0o755).unwrap();
    tar.file("usr/local/bin/tool", 0o750, b"#!/bin/sh\necho hi\n")
        .unwrap();
    tar.file("empty", 0o644, b"").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.tar");
    fs::write(&path, tar.finish()).unwrap();

    let listing = stdout_of(
        Command::new("tar")
            .args(["--utc", "-tvf"])
            .arg(&path)
            .output()
            .unwrap(),
        "tar -tv",
    );
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3, "{listing}");
    assert!(lines[0].starts_with("drwxr-xr-x root/root") && lines[0].ends_with("usr/local/bin/"));
    assert!(
        lines[1].starts_with("-rwxr-x--- root/root") && lines[1].contains(" 18 2023-11-14 22:13")
    );
    assert!(lines[2].ends_with(" empty"), "{listing}");

    let content = stdout_of(
        Command::new("tar")
            .arg("-xOf")
            .arg(&path)
            .arg("usr/local/bin/tool")
            .output()
            .unwrap(),
        "tar -xO",
    );
    assert_eq!(content, "#!/bin/sh\necho hi\n");
}

#[test]
fn tar_refuses_names_it_cannot_hold() {
    let mut tar = TarBuilder::new(0);
    assert!(tar.file(&"x".repeat(100), 0o644, b"").is_err());
    assert!(tar.file("/abs", 0o644, b"").is_err());
}

#[test]
fn the_archive_is_deterministic() {
    let daemon = b"not really an executable".as_slice();
    let first = oci::base_archive(&image(daemon, 0)).unwrap();
    let second = oci::base_archive(&image(daemon, 0)).unwrap();
    assert!(
        first.bytes == second.bytes,
        "same input, different archives"
    );
    let later = oci::base_archive(&image(daemon, 86_400)).unwrap();
    assert!(
        later.bytes != first.bytes,
        "the mtime does not reach the archive"
    );
}

/// Unpacks the archive with GNU tar and follows index → manifest → config
/// and layer, checking every digest and size on the way.
#[test]
fn the_archive_is_an_oci_layout_whose_digests_hold() {
    let daemon = b"\x7fELF pretend".as_slice();
    let archive = oci::base_archive(&image(daemon, 0)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tar_path = dir.path().join("a.tar");
    fs::write(&tar_path, &archive.bytes).unwrap();
    let layout = dir.path().join("layout");
    fs::create_dir(&layout).unwrap();
    stdout_of(
        Command::new("tar")
            .arg("-xf")
            .arg(&tar_path)
            .arg("-C")
            .arg(&layout)
            .output()
            .unwrap(),
        "tar -x",
    );

    let read_json =
        |path: &Path| -> Value { serde_json::from_slice(&fs::read(path).unwrap()).unwrap() };
    let blob = |descriptor: &Value| -> Vec<u8> {
        let digest = descriptor["digest"].as_str().unwrap();
        let bytes = fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap();
        assert_eq!(oci::digest(&bytes), digest);
        assert_eq!(descriptor["size"].as_u64(), Some(bytes.len() as u64));
        bytes
    };
    assert_eq!(
        read_json(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = read_json(&layout.join("index.json"));
    let entry = &index["manifests"][0];
    assert_eq!(entry["platform"]["architecture"], "amd64");
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        VERSION
    );
    assert_eq!(entry["digest"], archive.manifest_digest.as_str());

    let manifest: Value = serde_json::from_slice(&blob(entry)).unwrap();
    let config: Value = serde_json::from_slice(&blob(&manifest["config"])).unwrap();
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(oci::ENTRYPOINT)
    );
    let layer_gz = blob(&manifest["layers"][0]);

    // gzip -d (not flate2) gives the layer tar, whose digest is the diff_id.
    let gz_path = dir.path().join("layer.tar.gz");
    fs::write(&gz_path, &layer_gz).unwrap();
    let layer_tar = Command::new("gzip")
        .arg("-dc")
        .arg(&gz_path)
        .output()
        .unwrap();
    assert!(layer_tar.status.success());
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        oci::digest(&layer_tar.stdout).as_str()
    );
    let layer_path = dir.path().join("layer.tar");
    fs::write(&layer_path, &layer_tar.stdout).unwrap();
    let content = Command::new("tar")
        .arg("-xOf")
        .arg(&layer_path)
        .arg(oci::DAEMON_PATH)
        .output()
        .unwrap();
    assert_eq!(content.stdout, daemon);
}

#[test]
fn both_dockerfiles_pass_the_lint() {
    lint_dockerfiles(&crate::workspace_root()).unwrap();
}

#[test]
fn the_lint_finds_what_it_is_for() {
    let root = crate::workspace_root();
    let bad = "\
ARG BASE_IMAGE=debian:latest
ARG TOOL_VERSION
FROM ${BASE_IMAGE} AS base
FROM ubuntu
FROM base
COPY docker/no-such-file /x
COPY dist/x86_64/not-ours /y
COPY bubble/entrypoint.sh dist/aarch64/hpktainer /z
RUN apt-get update && apt-get install -y --no-install-recommends iproute2=6.1.0-3 \\
      curl
RUN git clone https://example.invalid/tool.git
RUN curl -fsSLO https://example.invalid/tool.tgz
";
    let problems = lint::check(bad, &root, &crate::dist::binary_names());
    let text = problems.join("\n");
    for expected in [
        "line 1: ARG BASE_IMAGE=debian:latest names no version",
        "line 2: ARG TOOL_VERSION has no default version",
        "line 3: FROM debian:latest: pin a version tag",
        "line 4: FROM ubuntu: pin a version tag",
        "line 6: docker/no-such-file does not exist",
        "line 7: dist/x86_64/not-ours is not something `cargo xtask dist` writes",
        "line 9: apt package curl has no pinned version",
        "line 11: git clone without --branch",
        "line 12: a download in RUN",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // FROM base (a stage), line 8's two good sources, iproute2=…: no problem.
    assert_eq!(problems.len(), 9, "{text}");
}

#[test]
fn buildx_gets_both_platforms_and_both_tags() {
    let root = Path::new("/src");
    let mut plan = Plan {
        registry: Some("myregistry.io/user/".into()),
        version: "1.2.3".into(),
        platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
        push: true,
    };
    let args = plan.buildx_args(root, "hpk-bubble").join(" ");
    assert_eq!(
        args,
        "buildx build --platform linux/amd64,linux/arm64 --file docker/hpk-bubble/Dockerfile \
         --build-arg VERSION=1.2.3 --tag myregistry.io/user/hpk-bubble:1.2.3 \
         --tag myregistry.io/user/hpk-bubble:latest --push ."
    );
    assert_eq!(plan.dist_dirs().unwrap(), ["x86_64", "aarch64"]);

    plan.push = false;
    plan.registry = None;
    let args = plan.buildx_args(root, "hpktainer-base").join(" ");
    assert!(
        args.contains(
            "--tag hpktainer-base:1.2.3 --tag hpktainer-base:latest \
             --output type=oci,dest=/src/dist/images/hpktainer-base-1.2.3.oci.tar ."
        ),
        "{args}"
    );
    plan.platforms = vec!["linux/riscv64".into()];
    assert!(plan.dist_dirs().is_err());
}

/// The archive, as skopeo sees it, unpacked by skopeo and tar, and its
/// entrypoint run the way Apptainer would (chrooted, in a network namespace
/// of its own, with the variables hpktainer passes) against a relay server
/// whose tap is on a bridge: tap0 must come up with its address, MAC and
/// default route, and answer across the relay.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_archive_runs_its_entrypoint_against_a_relay() {
    let daemon_path = hpk_testbed::bin_path("hpk-net-daemon");
    let daemon = fs::read(&daemon_path).unwrap();
    let archive = oci::base_archive(&image(&daemon, 0)).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("hpki")
        .tempdir_in("/tmp")
        .unwrap();
    let archive_path = dir.path().join("base.oci.tar");
    fs::write(&archive_path, &archive.bytes).unwrap();
    let reference = format!("oci-archive:{}", archive_path.display());

    let inspect: Value = serde_json::from_str(&stdout_of(
        Command::new("skopeo")
            .args(["inspect", &reference])
            .output()
            .unwrap(),
        "skopeo inspect",
    ))
    .unwrap();
    assert_eq!(inspect["Digest"], archive.manifest_digest.as_str());
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Os"], "linux");
    assert_eq!(inspect["Layers"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        inspect["Labels"]["org.opencontainers.image.version"],
        VERSION
    );
    let config: Value = serde_json::from_str(&stdout_of(
        Command::new("skopeo")
            .args(["inspect", "--config", &reference])
            .output()
            .unwrap(),
        "skopeo inspect --config",
    ))
    .unwrap();

    let rootfs = unpack_with_skopeo(&reference, dir.path());
    let entrypoint: Vec<String> =
        serde_json::from_value(config["config"]["Entrypoint"].clone()).unwrap();
    let env: Vec<String> = serde_json::from_value(config["config"]["Env"].clone()).unwrap();
    assert_eq!(entrypoint, oci::ENTRYPOINT);

    // The bubble: a bridge holding the gateway, and the relay server's tap on
    // it. Its socket sits where hpktainer binds the socket directory, /run/hpk.
    let bubble = Netns::new("ib");
    bubble.ip("link add br0 address 0a:58:0a:62:00:01 type bridge");
    bubble.ip("addr add 10.98.0.1/24 dev br0");
    bubble.ip("link set br0 up");
    fs::create_dir_all(rootfs.join("run/hpk")).unwrap();
    let socket = rootfs.join("run/hpk/s");
    let server = hpk_testbed::relay::server_command(&bubble, &daemon_path, &socket, "hpki0");
    let server = Proc::spawn_ready("relay server", server);

    let container = Netns::new("ic");
    let client = Proc::spawn(
        "image entrypoint",
        chrooted(&container, &rootfs, &entrypoint, &env),
    );
    let shown = wait_for(&container, "addr show dev tap0", "10.98.0.2/24");
    assert!(
        shown.contains("link/ether 0a:58:0a:62:00:02") && shown.contains(",UP,"),
        "{shown}"
    );
    wait_for(
        &container,
        "route show default",
        "default via 10.98.0.1 dev tap0",
    );
    assert!(
        container.ping("10.98.0.1", 3),
        "container -> gateway across the relay"
    );
    assert!(bubble.ping("10.98.0.2", 1), "gateway -> container");

    let status = client.stop(Signal::SIGTERM);
    assert!(
        status.success(),
        "the entrypoint ends cleanly on SIGTERM: {status}"
    );

    // With a command after `--`, as `apptainer run IMAGE -- CMD` passes it:
    // the network comes up again, then the command runs and its status and
    // output come through.
    let mut with_command = entrypoint.clone();
    with_command.extend(["--", "/usr/local/bin/hpk-net-daemon", "--version"].map(String::from));
    let out_path = dir.path().join("command.out");
    let mut command = chrooted(&container, &rootfs, &with_command, &env);
    command.stdout(fs::File::create(&out_path).unwrap());
    let status = Proc::spawn("image entrypoint with a command", command).wait();
    assert!(status.success(), "the command's status: {status}");
    let printed = fs::read_to_string(&out_path).unwrap();
    assert_eq!(printed.trim(), format!("hpk-net-daemon {VERSION}"));
    drop(server);
}

/// `skopeo copy` to a `dir:` layout, then GNU tar unpacks the one layer.
fn unpack_with_skopeo(reference: &str, work: &Path) -> std::path::PathBuf {
    let copy = work.join("copy");
    stdout_of(
        Command::new("skopeo")
            .args(["copy", "--quiet", reference])
            .arg(format!("dir:{}", copy.display()))
            .output()
            .unwrap(),
        "skopeo copy",
    );
    let manifest: Value =
        serde_json::from_slice(&fs::read(copy.join("manifest.json")).unwrap()).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let rootfs = work.join("rootfs");
    fs::create_dir(&rootfs).unwrap();
    stdout_of(
        Command::new("tar")
            .arg("-xzf")
            .arg(copy.join(&layer[7..]))
            .arg("-C")
            .arg(&rootfs)
            .output()
            .unwrap(),
        "tar -xz the layer",
    );
    assert!(rootfs.join(oci::DAEMON_PATH).is_file());
    rootfs
}

/// The entrypoint as Apptainer would start it: in `netns`, in a mount
/// namespace of its own with /dev and /proc inside `rootfs`, chrooted
/// there, with the image's environment and the `HPK_*` variables only.
fn chrooted(netns: &Netns, rootfs: &Path, entrypoint: &[String], env: &[String]) -> Command {
    for dir in ["dev", "proc"] {
        fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    let mut command = netns.command("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c"]);
    // chroot by its full path: the image's PATH below has no sbin.
    command.arg(
        r#"root=$1; shift
           mount --rbind /dev "$root/dev" && mount -t proc proc "$root/proc" &&
           exec /usr/sbin/chroot "$root" "$@""#,
    );
    command.arg("sh").arg(rootfs).args(entrypoint);
    command.env_clear();
    for pair in env {
        let (key, value) = pair.split_once('=').unwrap();
        command.env(key, value);
    }
    for (key, value) in [
        ("HPK_IP", "10.98.0.2/24"),
        ("HPK_GATEWAY_IP", "10.98.0.1"),
        ("HPK_SOCKET_PATH", "/run/hpk/s"),
        ("HPK_MTU", "1500"),
    ] {
        command.env(key, value);
    }
    command
}

/// Polls `ip -n NETNS ARGS` until its output holds `wanted` (10 s at most).
fn wait_for(netns: &Netns, args: &str, wanted: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = Command::new("ip")
            .args(["-n", netns.name()])
            .args(args.split_whitespace())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if text.contains(wanted) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "`ip {args}` never showed {wanted:?}: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
