use super::*;

#[test]
fn cpus() {
    assert_eq!(parse_cpu("0.5").unwrap(), 500_000_000);
    assert_eq!(parse_cpu("2").unwrap(), 2_000_000_000);
    assert_eq!(parse_cpu("0.1").unwrap(), 100_000_000);
    assert_eq!(parse_cpu("0.001").unwrap(), 1_000_000);
    assert!(parse_cpu("-1").is_err());
    assert!(parse_cpu("half").is_err());
    assert!(parse_cpu("NaN").is_err());
    assert_eq!(fmt_cpus(500_000_000), "0.5");
    assert_eq!(fmt_cpus(2_000_000_000), "2");
}

#[test]
fn update_env_add_and_rm() {
    let s = update(base(), &["--env-add", "B=3", "--env-add", "C=4"]).unwrap();
    assert_eq!(s.task.env, vec!["A=1", "B=3", "C=4"]);
    let s = update(base(), &["--env-rm", "A"]).unwrap();
    assert_eq!(s.task.env, vec!["B=2"]);
    // Removal happens first, so removing and adding a key sets it.
    let s = update(base(), &["--env-rm", "A", "--env-add", "A=9"]).unwrap();
    assert_eq!(s.task.env, vec!["B=2", "A=9"]);
    assert!(update(base(), &["--env-add", "=1"])
        .unwrap_err()
        .contains("--env-add"));
}

#[test]
fn update_constraints_labels_image_force() {
    let s = update(
        base(),
        &[
            "--constraint-add",
            "node.labels.zone==a",
            "--constraint-add",
            "node.role==worker",
            "--constraint-rm",
            "node.role == worker",
        ],
    )
    .unwrap();
    assert_eq!(s.task.placement.constraints, vec!["node.labels.zone==a"]);
    let s = update(base(), &["--label-rm", "x", "--label-add", "y=2"]).unwrap();
    assert_eq!(s.labels.len(), 1);
    assert_eq!(s.labels["y"], "2");
    let s = update(base(), &["--image", "nginx", "--replicas", "4", "--force"]).unwrap();
    assert_eq!(s.task.image, "nginx");
    assert_eq!(s.mode, ServiceMode::Replicated { replicas: 4 });
    assert_eq!(s.task.force_update, 1);
    let s = update(s, &["--force"]).unwrap();
    assert_eq!(s.task.force_update, 2);
    // Unset flags leave the spec alone.
    let b = base();
    assert_eq!(update(b.clone(), &[]).unwrap(), b);
    let s = update(b.clone(), &["--update-delay", "2s", "--args", "sleep  5"]).unwrap();
    assert_eq!(s.update.delay_ms, 2000);
    assert_eq!(s.rollback, b.rollback);
    assert_eq!(s.task.args, vec!["sleep", "5"]);
    let mut g = b;
    g.mode = ServiceMode::Global;
    let e = update(g, &["--replicas", "2"]).unwrap_err();
    assert!(e.contains("--replicas"), "{e}");
}

#[test]
fn scale_parsing() {
    assert_eq!(parse_scale("web=3").unwrap(), ("web".into(), 3));
    assert!(parse_scale("web").is_err());
    assert!(parse_scale("web=x").is_err());
    assert!(parse_scale("=3").is_err());
    let mut s = base();
    s = scale_spec(s, 5).unwrap();
    assert_eq!(s.mode, ServiceMode::Replicated { replicas: 5 });
    s.mode = ServiceMode::Global;
    assert_eq!(
        scale_spec(s, 2).unwrap_err(),
        "scale can only be used with replicated or replicated-job mode"
    );
}

#[test]
fn generated_names_are_valid() {
    for _ in 0..20 {
        let n = generate_name();
        assert!(n.contains('_') && n.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
    }
}

#[test]
fn other_commands_parse() {
    assert!(matches!(
        parse(&["ls", "--format", "json", "-q"]),
        ServiceCmd::Ls(ListArgs {
            format: Format::Json,
            quiet: true,
            ..
        })
    ));
    match parse(&[
        "ps",
        "--no-trunc",
        "--filter",
        "desired-state=running",
        "-f",
        "desired-state=shutdown",
        "web",
        "db",
    ]) {
        ServiceCmd::Ps(a) => {
            assert!(a.no_trunc);
            assert_eq!(a.filter.len(), 2);
            assert_eq!(a.services, vec!["web", "db"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse(&["scale", "-d", "a=1", "b=2"]),
        ServiceCmd::Scale { detach: true, .. }
    ));
    assert!(matches!(
        parse(&["rollback", "-d", "web"]),
        ServiceCmd::Rollback { detach: true, .. }
    ));
    assert!(matches!(parse(&["rm", "a", "b"]), ServiceCmd::Rm { .. }));
    assert!(matches!(
        parse(&["inspect", "--pretty", "a"]),
        ServiceCmd::Inspect { pretty: true, .. }
    ));
    let e = usage_error(&["ps"]);
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn ps_filters() {
    let (s, n) = parse_ps_filters(&[
        "desired-state=running".into(),
        "desired-state=shutdown".into(),
        "node=w1".into(),
    ])
    .unwrap();
    assert_eq!(s, vec!["running", "shutdown"]);
    assert_eq!(n, "w1");
    assert!(parse_ps_filters(&["desired-state=sleeping".into()]).is_err());
    assert!(parse_ps_filters(&["colour=blue".into()]).is_err());
}

// ------------------------------------------------------------ rendering

/// Docker's `--host HOST:IP` (create) and `--host-add`/`--host-rm` (update): the spec keeps
/// `IP HOST` lines; `-H` stays the daemon socket before the command.
#[test]
fn extra_hosts() {
    let s = create_spec(&[
        "--host",
        "db:10.0.0.5",
        "--host",
        "v6:fe80::1",
        "--host",
        "db:10.0.0.5",
        "busybox",
    ])
    .unwrap();
    assert_eq!(s.task.hosts, ["10.0.0.5 db", "fe80::1 v6"]);
    let mut with = base();
    with.task.hosts = s.task.hosts.clone();
    let u = update(
        with.clone(),
        &["--host-rm", "db", "--host-add", "cache:10.0.0.9"],
    )
    .unwrap();
    assert_eq!(u.task.hosts, ["fe80::1 v6", "10.0.0.9 cache"]);
    let u = update(with, &["--host-rm", "db:10.0.0.6"]).unwrap();
    assert_eq!(u.task.hosts.len(), 2, "another address: kept");
    let e = usage_error(&["create", "--host", "db", "busybox"]);
    assert!(e.contains("expected HOST:IP"), "{e}");
    let e = usage_error(&["create", "--host", "db:nope", "busybox"]);
    assert!(e.contains("not an IP address"), "{e}");
    let cli = crate::commands::Cli::try_parse_from([
        "shoal",
        "-H",
        "unix:///tmp/s.sock",
        "service",
        "create",
        "--host",
        "db:10.0.0.5",
        "busybox",
    ])
    .unwrap();
    assert_eq!(cli.host, "unix:///tmp/s.sock");
}

/// `--read-only`, `--cap-add/--cap-drop`, `--sysctl`, `--ulimit` on create, and their update
/// forms (`--read-only=false`, `--sysctl-add/-rm`, `--ulimit-add/-rm`).
#[test]
fn read_only_capabilities_sysctls_and_ulimits() {
    let s = create_spec(&[
        "--read-only",
        "--cap-add",
        "net_admin",
        "--cap-drop",
        "CAP_CHOWN",
        "--sysctl",
        "net.core.somaxconn=1024",
        "--ulimit",
        "nofile=1024:2048",
        "--ulimit",
        "nofile=4096",
        "busybox",
    ])
    .unwrap();
    let t = &s.task;
    assert!(t.read_only);
    assert_eq!(
        (t.cap_add.as_slice(), t.cap_drop.as_slice()),
        (
            &["CAP_NET_ADMIN".to_string()][..],
            &["CAP_CHOWN".to_string()][..]
        )
    );
    assert_eq!(t.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(t.ulimits.len(), 1);
    assert_eq!((t.ulimits[0].soft, t.ulimits[0].hard), (4096, 4096));

    let mut with = base();
    with.task = t.clone();
    let u = update(
        with,
        &[
            "--read-only=false",
            "--cap-add",
            "chown",
            "--cap-drop",
            "net_admin",
            "--sysctl-rm",
            "net.core.somaxconn",
            "--sysctl-add",
            "kernel.shmmax=1000000",
            "--ulimit-rm",
            "nofile",
            "--ulimit-add",
            "nproc=100:200",
        ],
    )
    .unwrap();
    let t = &u.task;
    assert!(!t.read_only);
    assert_eq!(t.cap_add, ["CAP_CHOWN"]);
    assert_eq!(t.cap_drop, ["CAP_NET_ADMIN"]);
    assert_eq!(t.sysctls.len(), 1);
    assert_eq!(t.sysctls["kernel.shmmax"], "1000000");
    assert_eq!(t.ulimits.len(), 1);
    assert_eq!(t.ulimits[0].name, "nproc");

    for (args, want) in [
        (
            &["create", "--cap-add", "nope", "busybox"][..],
            "unknown capability",
        ),
        (
            &["create", "--sysctl", "vm.swappiness=1", "busybox"][..],
            "not allowed",
        ),
        (
            &["create", "--ulimit", "nofile=2:1", "busybox"][..],
            "above hard limit",
        ),
    ] {
        let e = usage_error(args);
        assert!(e.contains(want), "{args:?}: {e}");
    }
}

/// `--log-driver` and `--log-opt`, on create and update, checked before anything is sent.
#[test]
fn log_driver_and_options() {
    let s = create_spec(&[
        "--log-driver",
        "json-file",
        "--log-opt",
        "max-size=10m",
        "--log-opt",
        "max-file=2",
        "busybox",
    ])
    .unwrap();
    let d = s.task.log_driver.clone().unwrap();
    assert_eq!(d.name, "json-file");
    assert_eq!(d.options["max-size"], "10m");
    assert_eq!(d.options["max-file"], "2");
    assert_eq!(create_spec(&["busybox"]).unwrap().task.log_driver, None);
    // Options alone replace the options; a driver alone replaces everything.
    let u = update(s.clone(), &["--log-opt", "max-size=1m"]).unwrap();
    let d = u.task.log_driver.unwrap();
    assert_eq!((d.name.as_str(), d.options.len()), ("json-file", 1));
    let u = update(s, &["--log-driver", "none"]).unwrap();
    assert_eq!(u.task.log_driver.unwrap().name, "none");
    for (args, want) in [
        (
            &["--log-driver", "syslog", "busybox"][..],
            "--log-driver \"syslog\" is not supported",
        ),
        (
            &["--log-opt", "max-size=huge", "busybox"][..],
            "invalid max-size",
        ),
        (
            &["--log-opt", "tag=x", "busybox"][..],
            "--log-opt \"tag\" is not supported",
        ),
        (
            &["--log-opt", "max-size", "busybox"][..],
            "expected KEY=VALUE",
        ),
    ] {
        let e = create_spec(args).unwrap_err();
        assert!(e.contains(want), "{args:?}: {e}");
    }
}

/// `--init` and `--health-start-interval`, on create and update.
#[test]
fn init_and_health_start_interval() {
    let s = create_spec(&["--init", "--health-start-interval", "2s", "busybox"]).unwrap();
    assert!(s.task.init);
    assert_eq!(s.task.healthcheck.as_ref().unwrap().start_interval_ms, 2000);
    assert!(!create_spec(&["busybox"]).unwrap().task.init);
    let u = update(s, &["--init=false", "--health-start-interval", "500ms"]).unwrap();
    assert!(!u.task.init);
    assert_eq!(u.task.healthcheck.unwrap().start_interval_ms, 500);
}

/// `--container-label` on create; `--container-label-add/-rm` on update.
#[test]
fn container_labels() {
    let s = create_spec(&[
        "--container-label",
        "a=1",
        "--container-label",
        "b",
        "busybox",
    ])
    .unwrap();
    assert_eq!(s.task.container_labels.len(), 2);
    assert_eq!(s.task.container_labels["b"], "");
    let u = update(
        s,
        &["--container-label-rm", "a", "--container-label-add", "c=3"],
    )
    .unwrap();
    let keys: Vec<&str> = u.task.container_labels.keys().map(String::as_str).collect();
    assert_eq!(keys, ["b", "c"]);
}

/// `--mount …,volume-driver=local` (Docker's default) is taken, other drivers refused in
/// words; `volume-opt=K=V` (quoted when it holds commas) are the local driver's options.
#[test]
fn volume_driver_local_and_its_options() {
    use crate::service::parse::parse_mount;
    let m = parse_mount("type=volume,source=data,target=/d,volume-driver=local").unwrap();
    assert_eq!((m.source.as_str(), m.target.as_str()), ("data", "/d"));
    let e = parse_mount("type=volume,source=data,target=/d,volume-driver=nfs").unwrap_err();
    assert!(e.contains("volume driver \"nfs\" is not supported"), "{e}");
    let m = parse_mount(
        "type=volume,source=d,target=/d,volume-opt=type=tmpfs,volume-opt=device=tmpfs,\"volume-opt=o=size=1m,uid=1000\"",
    )
    .unwrap();
    assert_eq!(
        m.volume_options,
        [
            ("device", "tmpfs"),
            ("o", "size=1m,uid=1000"),
            ("type", "tmpfs")
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    );
    for (flag, want) in [
        (
            "type=bind,source=/s,target=/d,volume-opt=type=tmpfs",
            "cannot mix 'volume-opt' options with mount type 'bind'",
        ),
        (
            "type=volume,source=d,target=/d,volume-opt=tmpfs",
            "invalid volume-opt \"tmpfs\": use volume-opt=KEY=VALUE",
        ),
        (
            "type=volume,source=d,target=/d,volume-opt=size=1m",
            "unknown volume option \"size\": the local driver takes type, device and o",
        ),
        (
            "type=volume,source=d,target=/d,\"volume-opt=o=a",
            "a quote is not closed",
        ),
    ] {
        let e = parse_mount(flag).unwrap_err();
        assert!(e.contains(want), "{flag}: {e}");
    }
}
