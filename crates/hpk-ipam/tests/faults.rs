//! Failures: no plugin, and deliberately broken stand-in plugins (shell
//! scripts in a temporary directory) that print junk, fail, or hang.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{answers_version, config, fake_plugin, open_fake};
use hpk_ipam::{Error, HostLocal};
use tempfile::TempDir;

#[test]
fn missing_plugin_lists_the_dirs_searched() {
    let (a, b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let dirs = [a.path().to_path_buf(), b.path().to_path_buf()];
    let err = HostLocal::discover_in(&dirs).unwrap_err();

    assert!(matches!(&err, Error::NotFound { searched } if searched[..] == dirs[..]));
    let text = err.to_string();
    assert!(text.contains(&a.path().display().to_string()), "{text}");
    assert!(text.contains(&b.path().display().to_string()), "{text}");
    assert!(
        text.contains("install containernetworking-plugins or set CNI_PATH"),
        "{text}"
    );
}

#[test]
fn a_file_that_is_not_executable_is_skipped() {
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("host-local"), "not a program").unwrap();
    let err = HostLocal::discover_in(&[dir.path().to_path_buf()]).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[test]
fn cni_path_comes_before_the_system_dirs() {
    let dir = TempDir::new().unwrap();
    let path = fake_plugin(dir.path(), &answers_version("exit 0"));
    open_fake(&path).unwrap(); // waits out "text file busy"
    let plugin = HostLocal::discover(Some(dir.path().as_os_str())).unwrap();
    assert_eq!(plugin.path(), path);
}

#[test]
fn junk_on_version_is_a_protocol_error() {
    let dir = TempDir::new().unwrap();
    let path = fake_plugin(dir.path(), "echo 'this is not json'");
    let err = open_fake(&path).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Protocol {
                command: "VERSION",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("this is not json"), "{err}");
}

#[test]
fn junk_on_add_is_a_protocol_error() {
    let dir = TempDir::new().unwrap();
    let path = fake_plugin(dir.path(), &answers_version("echo '<html>oops</html>'"));
    let plugin = open_fake(&path).unwrap();
    let err = plugin
        .add(&config(&dir, "10.1.0.0/24"), "c1", "eth0")
        .unwrap_err();
    assert!(
        matches!(err, Error::Protocol { command: "ADD", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("<html>oops</html>"), "{err}");
}

#[test]
fn an_error_object_becomes_a_plugin_error() {
    let dir = TempDir::new().unwrap();
    let object = r#"{"cniVersion":"1.0.0","code":11,"msg":"try again later","details":"busy"}"#;
    let path = fake_plugin(
        dir.path(),
        &answers_version(&format!("echo '{object}'; exit 1")),
    );
    let plugin = open_fake(&path).unwrap();
    let err = plugin
        .add(&config(&dir, "10.1.0.0/24"), "c1", "eth0")
        .unwrap_err();

    match &err {
        Error::Plugin {
            command,
            code,
            msg,
            details,
        } => {
            assert_eq!((*command, *code), ("ADD", 11));
            assert_eq!(
                (msg.as_str(), details.as_str()),
                ("try again later", "busy")
            );
        }
        other => panic!("expected a plugin error, got {other}"),
    }
}

#[test]
fn a_silent_failure_shows_stderr() {
    let dir = TempDir::new().unwrap();
    let body = answers_version("echo 'panic: nil map' >&2; exit 2");
    let plugin = open_fake(&fake_plugin(dir.path(), &body)).unwrap();
    let err = plugin
        .del(&config(&dir, "10.1.0.0/24"), "c1", "eth0", None)
        .unwrap_err();
    assert!(
        matches!(err, Error::Protocol { command: "DEL", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("panic: nil map"), "{err}");
}

#[test]
fn a_plugin_speaking_only_old_versions_is_refused() {
    let dir = TempDir::new().unwrap();
    let body = r#"echo '{"cniVersion":"0.2.0","supportedVersions":["0.1.0","0.2.0"]}'"#;
    let err = open_fake(&fake_plugin(dir.path(), body)).unwrap_err();
    assert!(matches!(err, Error::NoCommonVersion { .. }), "{err}");
    assert!(err.to_string().contains("0.1.0, 0.2.0"), "{err}");
}

#[test]
fn a_plugin_without_version_is_refused() {
    let dir = TempDir::new().unwrap();
    let body = r#"echo '{"code":4,"msg":"unknown CNI_COMMAND: VERSION"}'; exit 1"#;
    let err = open_fake(&fake_plugin(dir.path(), body)).unwrap_err();
    assert!(matches!(err, Error::NoCommonVersion { .. }), "{err}");
}

#[test]
fn a_hanging_plugin_is_killed() {
    let dir = TempDir::new().unwrap();
    let pid_file = dir.path().join("pid");
    // exec keeps the pid, so the recorded pid is the process that hangs.
    let body = answers_version(&format!("echo $$ > {}\nexec sleep 30", pid_file.display()));
    let plugin = open_fake(&fake_plugin(dir.path(), &body)).unwrap();
    let plugin = plugin.with_timeout(Duration::from_millis(300));

    let started = Instant::now();
    let err = plugin
        .add(&config(&dir, "10.1.0.0/24"), "c1", "eth0")
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { command: "ADD", .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // Killed and reaped: not even a zombie is left in /proc.
    let pid = fs::read_to_string(&pid_file).unwrap();
    assert!(
        !Path::new("/proc").join(pid.trim()).exists(),
        "plugin {pid} still there"
    );
}

#[test]
fn the_plugin_sees_cni_variables_and_the_netconf() {
    let dir = TempDir::new().unwrap();
    let seen = dir.path().join("seen");
    let result = r#"{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"}]}"#;
    let body = answers_version(&format!(
        "env | grep ^CNI_ | sort > {seen}.env\ncat > {seen}.json\necho '{result}'",
        seen = seen.display()
    ));
    let path = fake_plugin(dir.path(), &body);
    let plugin = open_fake(&path).unwrap();
    let cfg = config(&dir, "10.1.0.0/24");
    plugin.add(&cfg, "c1", "eth0").unwrap();

    let env = fs::read_to_string(seen.with_extension("env")).unwrap();
    let plugin_dir = dir.path().display();
    assert!(env.contains("CNI_COMMAND=ADD\n"), "{env}");
    assert!(env.contains("CNI_CONTAINERID=c1\n"), "{env}");
    assert!(env.contains("CNI_IFNAME=eth0\n"), "{env}");
    assert!(env.contains("CNI_NETNS=/"), "{env}");
    assert!(env.contains(&format!("CNI_PATH={plugin_dir}\n")), "{env}");

    let netconf: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(seen.with_extension("json")).unwrap()).unwrap();
    assert_eq!(netconf["cniVersion"], "1.0.0");
    assert_eq!(netconf["ipam"]["ranges"][0][0]["subnet"], "10.1.0.0/24");
    assert_eq!(netconf["ipam"]["dataDir"], cfg.data_dir.to_str().unwrap());
}
