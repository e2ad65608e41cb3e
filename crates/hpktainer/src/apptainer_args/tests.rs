//! Tests of the Apptainer option grammar and the rewrites.
use super::*;

/// Words of a command line written with single spaces (none of these words holds one).
fn w(line: &str) -> Vec<OsString> {
    line.split(' ')
        .filter(|w| !w.is_empty())
        .map(OsString::from)
        .collect()
}

fn env(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    list.iter().map(|(k, v)| (k.into(), v.into())).collect()
}

fn ok_words(args: Vec<OsString>) -> Invocation {
    let invocation = parse(&args, &[]).unwrap();
    assert_eq!(invocation.to_argv(&[]), args, "round trip");
    invocation
}

fn ok(line: &str) -> Invocation {
    ok_words(w(line))
}

fn err(line: &str) -> ArgsError {
    parse(&w(line), &[]).unwrap_err()
}

#[test]
fn splits_options_image_and_args() {
    let mut args = w("exec --bind a,b -B c --bind=d -Be -ec --env A=B img.sif cmd -x --net");
    args.extend(["a b".into(), "\"q\"".into(), "--".into()]);
    let inv = ok_words(args);
    assert_eq!(inv.action, Action::Exec);
    assert_eq!(inv.options, w("--bind a,b -B c --bind=d -Be -ec --env A=B"));
    assert_eq!(inv.image, "img.sif");
    assert_eq!(inv.args[..3], w("cmd -x --net"));
    assert_eq!(inv.args[3..], ["a b", "\"q\"", "--"]);
    assert!(inv.contain, "-ec holds -c");
    assert!(!inv.end_of_options);
    assert!(inv.needs_network());
}

#[test]
fn value_options_take_the_next_word_whatever_it_looks_like() {
    let inv = ok("run --bind --net -B -n img --network x");
    assert_eq!(inv.options, w("--bind --net -B -n"));
    assert_eq!(inv.image, "img");
    assert_eq!(inv.args, w("--network x"));
}

#[test]
fn shorthand_value_forms() {
    for form in ["-B=/a", "-B/a", "-B /a", "-eB /a", "-eB/a"] {
        let inv = ok(&format!("run {form} img"));
        assert_eq!(inv.image, "img", "{form}");
        assert_eq!(inv.options, w(form));
    }
}

#[test]
fn double_dash_ends_options() {
    let inv = ok("exec -e -- -odd-image cmd");
    assert!(inv.end_of_options);
    assert_eq!(inv.options, w("-e"));
    assert_eq!(inv.image, "-odd-image");
    assert_eq!(ok("exec - cmd").image, "-");
}

#[test]
fn round_trip_keeps_bytes() {
    let odd = OsString::from_vec(vec![b'/', 0xff, b'x', b' ', b'\n']);
    let mut args = w("run --bind");
    args.extend([
        odd.clone(),
        "--env=A= b".into(),
        "--".into(),
        odd.clone(),
        odd.clone(),
    ]);
    let inv = ok_words(args);
    assert_eq!(inv.image, odd);
    assert_eq!(inv.args, [odd]);
}

#[test]
fn extra_options_go_right_after_the_action() {
    let inv = ok("instance start -B /a img web x");
    let argv = inv.to_argv(&w("--net --network none"));
    assert_eq!(
        argv,
        w("instance start --net --network none -B /a img web x")
    );
}

#[test]
fn refuses_network_options() {
    let forms = [
        "-n",
        "--net",
        "--net=true",
        "--net=false",
        "--network bridge",
        "--network=bridge",
        "--network-args portmap=80:80/tcp",
        "--network-args=x",
        "--netns-path /proc/1/ns/net",
        "-en",
    ];
    let actions = ["run", "exec", "shell", "instance start", "instance run"];
    for (action, form) in actions.iter().flat_map(|a| forms.map(|f| (a, f))) {
        let error = err(&format!("{action} {form} img name-or-cmd"));
        assert!(
            matches!(error, ArgsError::NetworkOption { .. }),
            "{action} {form}: {error}"
        );
    }
    assert_eq!(
        err("run --network bridge img").to_string(),
        "option \"--network bridge\" is not allowed: hpktainer gives the container its own \
         network namespace and overlay address; remove it"
    );
    let message = err("run -en img").to_string();
    assert!(
        message.starts_with("option \"-n\" in \"-en\" is not allowed"),
        "{message}"
    );
}

#[test]
fn refuses_network_environment() {
    let line = w("run img");
    let refused = [
        ("NET", "1"),
        ("NET", "yes"),
        ("UNSHARE_NET", "true"),
        ("NETWORK", "bridge"),
        ("NETWORK_ARGS", "portmap=80:80/tcp"),
        ("NETNS_PATH", "/proc/1/ns/net"),
    ];
    for prefix in ["APPTAINER_", "SINGULARITY_"] {
        for (key, value) in refused {
            let name = format!("{prefix}{key}");
            let error = parse(&line, &env(&[(&name, value)])).unwrap_err();
            assert_eq!(error, ArgsError::NetworkEnv { name: name.clone() });
            let expected = format!("environment variable {name} is set");
            assert!(error.to_string().starts_with(&expected));
        }
    }
    let harmless = env(&[
        ("APPTAINER_NET", "false"),
        ("APPTAINER_NETWORK", "  "),
        ("APPTAINERENV_NETWORK", "bridge"),
        ("APPTAINER_BIND", "/a"),
    ]);
    assert!(parse(&line, &harmless).is_ok());
    let stop = w("instance stop web");
    assert!(parse(&stop, &env(&[("APPTAINER_NETWORK", "bridge")])).is_ok());
}

#[test]
fn detects_contain() {
    for option in [
        "-c",
        "-C",
        "--contain",
        "--containall",
        "--compat",
        "-ec",
        "-c=1",
    ] {
        assert!(ok(&format!("run {option} img")).contain, "{option}");
    }
    assert!(!ok("run img").contain);
    assert!(!ok("run --contain=false img").contain);

    let line = w("run img");
    for (name, value, expected) in [
        ("APPTAINER_CONTAIN", "1", true),
        ("SINGULARITY_CONTAINALL", "true", true),
        ("APPTAINER_COMPAT", "True", true),
        ("APPTAINER_CONTAIN", "yes", false),
        ("APPTAINER_CONTAIN", "0", false),
    ] {
        let inv = parse(&line, &env(&[(name, value)])).unwrap();
        assert_eq!(inv.contain, expected, "{name}={value}");
    }
    // The line wins over the environment, as in apptainer.
    let line = w("run --contain=false img");
    assert!(
        !parse(&line, &env(&[("APPTAINER_CONTAIN", "1")]))
            .unwrap()
            .contain
    );
}

#[test]
fn refuses_unknown_options() {
    assert_eq!(
        err("exec --bnid /a img cmd").to_string(),
        "unknown option \"--bnid\" for apptainer exec; see apptainer exec --help"
    );
    assert_eq!(
        err("exec -ex img cmd").to_string(),
        "unknown option \"-x\" in \"-ex\" for apptainer exec; see apptainer exec --help"
    );
    let error = err("exec --bnid=/a img");
    assert!(matches!(error, ArgsError::UnknownOption { option, .. } if option == "--bnid"));
    // Options that exist, but not for this action.
    for line in [
        "exec --shell /bin/sh img x",
        "run --boot img",
        "instance start --pid img n",
        "exec --runscript-timeout 1m img x",
        "instance stop --bind x",
    ] {
        assert!(
            matches!(err(line), ArgsError::UnknownOption { .. }),
            "{line}"
        );
    }
}

#[test]
fn boolean_values_follow_pflag() {
    assert!(matches!(
        err("run --contain=maybe img"),
        ArgsError::BadBool { .. }
    ));
    assert!(matches!(err("run -e=maybe img"), ArgsError::BadBool { .. }));
}

#[test]
fn missing_pieces() {
    assert_eq!(parse(&[], &[]).unwrap_err(), ArgsError::MissingAction);
    assert_eq!(
        err("run"),
        ArgsError::MissingImage {
            action: Action::Run
        }
    );
    assert_eq!(
        err("shell -e --"),
        ArgsError::MissingImage {
            action: Action::Shell
        }
    );
    assert_eq!(
        err("run --bind"),
        ArgsError::MissingValue {
            option: "--bind".into()
        }
    );
    assert_eq!(
        err("run -eB"),
        ArgsError::MissingValue {
            option: "-eB".into()
        }
    );
    assert_eq!(err("exec img"), ArgsError::MissingCommand);
    let action = Action::InstanceStart;
    assert_eq!(
        err("instance start img"),
        ArgsError::MissingInstanceName { action }
    );
    assert_eq!(
        err("run").to_string(),
        "missing IMAGE: apptainer run needs an image after its options"
    );
}

#[test]
fn unknown_actions() {
    assert_eq!(err("build x"), ArgsError::UnknownAction("build".into()));
    assert_eq!(
        err("instance list"),
        ArgsError::UnknownAction("instance list".into())
    );
    assert_eq!(err("instance"), ArgsError::UnknownAction("instance".into()));
    assert_eq!(
        err("pull").to_string(),
        "unknown action \"pull\": expected run, exec, shell, instance start, instance run or \
         instance stop"
    );
}

#[test]
fn help_is_reported() {
    assert_eq!(
        err("exec --help"),
        ArgsError::HelpRequested {
            action: Action::Exec
        }
    );
    let action = Action::InstanceStop;
    assert_eq!(err("instance stop -h"), ArgsError::HelpRequested { action });
}

#[test]
fn instance_image_passes_through() {
    let inv = ok("exec -e instance://web cat /etc/hosts");
    assert_eq!(inv.existing_instance, Some("web".into()));
    assert!(!inv.needs_network());
    let error = inv.with_client_first(&[], &w("client --")).unwrap_err();
    assert!(matches!(error, ArgsError::NotRewritable { .. }));
}

#[test]
fn client_first_for_run() {
    let inv = ok("run -B /a -- img a -x");
    let argv = inv
        .with_client_first(&w("--net"), &w("/hpk client --"))
        .unwrap();
    let expected = format!("exec --net -B /a -- img /hpk client -- {RUN_SCRIPT} a -x");
    assert_eq!(argv, w(&expected));

    let inv = ok("run --runscript-timeout 5m img");
    let error = inv.with_client_first(&[], &[]).unwrap_err();
    let option = "--runscript-timeout 5m".into();
    assert_eq!(error, ArgsError::RunOnlyOption { option });
}

#[test]
fn client_first_for_exec() {
    let mut args = w("exec --env A=B img cmd");
    args.push("a b".into());
    let inv = ok_words(args);
    let argv = inv.with_client_first(&[], &w("/hpk --")).unwrap();
    let mut expected = w("exec --env A=B img /hpk -- cmd");
    expected.push("a b".into());
    assert_eq!(argv, expected);
}

#[test]
fn client_first_for_shell() {
    let client = w("/hpk --");
    let argv = ok("shell -e img ignored")
        .with_client_first(&[], &client)
        .unwrap();
    assert_eq!(argv, w(&format!("exec -e img /hpk -- {SHELL_SCRIPT}")));

    for form in [
        "--shell /bin/zsh",
        "--shell=/bin/zsh",
        "-s/bin/zsh",
        "-s /bin/zsh",
    ] {
        let inv = ok(&format!("shell -B /a {form} img"));
        assert_eq!(inv.shell, Some("/bin/zsh".into()));
        let argv = inv.with_client_first(&[], &client).unwrap();
        let expected = "exec -B /a --env SINGULARITY_SHELL=/bin/zsh img /hpk --";
        assert_eq!(argv, w(&format!("{expected} {SHELL_SCRIPT}")), "{form}");
    }

    // A combined group keeps its other flags.
    let argv = ok("shell -es /bin/zsh img")
        .with_client_first(&[], &client)
        .unwrap();
    let expected = "exec --cleanenv --env SINGULARITY_SHELL=/bin/zsh img /hpk --";
    assert_eq!(argv, w(&format!("{expected} {SHELL_SCRIPT}")));
}

#[test]
fn instances() {
    let inv = ok("instance run --boot -B /a img.sif web --port 80");
    assert_eq!(inv.image, "img.sif");
    assert_eq!(inv.instance_name, Some("web".into()));
    assert_eq!(inv.args, w("--port 80"));
    assert!(inv.needs_network());
    assert!(matches!(
        inv.with_client_first(&[], &[]),
        Err(ArgsError::NotRewritable { .. })
    ));

    let attach = inv.instance_attach_argv(&w("--env A=1"), &w("/hpk client"));
    assert_eq!(
        attach.unwrap(),
        w("exec --env A=1 instance://web /hpk client")
    );
    assert_eq!(ok("run img").instance_attach_argv(&[], &[]), None);
}

#[test]
fn instance_stop() {
    let inv = ok("instance stop -s TERM -t 5 web*");
    assert_eq!(inv.instance_name, Some("web*".into()));
    assert_eq!(inv.image, "");
    assert!(!inv.needs_network());
    assert_eq!(ok("instance stop --all -F").instance_name, None);
}
