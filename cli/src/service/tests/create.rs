use super::*;

#[test]
fn container_flags_fill_the_task_spec() {
    let s = create_spec(&[
        "--hostname",
        "{{.Service.Name}}-{{.Task.Slot}}",
        "-u",
        "nobody:nogroup",
        "-w",
        "/srv",
        "--mount",
        "type=volume,source=data,target=/data",
        "--mount",
        "type=bind,src=/etc,dst=/host-etc,readonly",
        "--mount",
        "type=tmpfs,target=/scratch",
        "--secret",
        "db",
        "--secret",
        "source=api,target=key",
        "--config",
        "source=site,target=/etc/site.conf",
        "--health-cmd",
        "test -f /ok",
        "--health-interval",
        "2s",
        "--health-retries",
        "2",
        "--entrypoint",
        "/bin/sh -c",
        "busybox",
        "echo",
        "hi",
    ])
    .unwrap();
    let t = &s.task;
    assert_eq!(t.hostname, "{{.Service.Name}}-{{.Task.Slot}}");
    assert_eq!(
        (t.user.as_str(), t.workdir.as_str()),
        ("nobody:nogroup", "/srv")
    );
    assert_eq!(t.command, vec!["/bin/sh", "-c"]);
    assert_eq!(t.args, vec!["echo", "hi"]);
    assert_eq!(t.mounts.len(), 3);
    assert_eq!(t.mounts[0].kind, MountKind::Volume);
    assert_eq!(t.mounts[0].source, "data");
    assert!(t.mounts[1].readonly && t.mounts[1].kind == MountKind::Bind);
    assert_eq!(t.mounts[2].kind, MountKind::Tmpfs);
    assert_eq!(t.secrets[0].name, "db");
    assert_eq!(
        (t.secrets[1].name.as_str(), t.secrets[1].target.as_str()),
        ("api", "key")
    );
    assert_eq!(t.configs[0].target, "/etc/site.conf");
    let h = t.healthcheck.as_ref().unwrap();
    assert_eq!(h.test, vec!["CMD-SHELL", "test -f /ok"]);
    assert_eq!((h.interval_ms, h.retries), (2000, 2));
    let u = update(
        s.clone(),
        &[
            "--mount-rm",
            "/data",
            "--secret-rm",
            "db",
            "--no-healthcheck",
        ],
    )
    .unwrap();
    assert_eq!(u.task.mounts.len(), 2);
    assert_eq!(u.task.secrets.len(), 1);
    assert_eq!(u.task.healthcheck.unwrap().test, vec!["NONE"]);
}

#[test]
fn bad_container_flags_are_refused() {
    for (args, want) in [
        (vec!["--mount", "type=nfs,target=/x"], "invalid mount type"),
        (
            vec!["--mount", "type=bind,source=rel,target=/x"],
            "absolute host path",
        ),
        (vec!["--mount", "source=v"], "target is required"),
        (vec!["--mount", "target=relative"], "absolute path"),
        (vec!["--secret", "target=x"], "source is required"),
    ] {
        let mut v = vec!["create"];
        v.extend_from_slice(&args);
        v.push("busybox");
        let e = usage_error(&v);
        assert!(e.contains(want), "{args:?}: {e}");
    }
    let e = create_spec(&["-w", "rel", "busybox"]).unwrap_err();
    assert!(e.contains("absolute"), "{e}");
    let e = create_spec(&["--no-healthcheck", "--health-cmd", "x", "busybox"]).unwrap_err();
    assert!(e.contains("conflicts"), "{e}");
}

#[test]
fn create_defaults_are_swarms() {
    let s = create_spec(&["busybox"]).unwrap();
    assert_eq!(s.name, "gen");
    assert_eq!(s.mode, ServiceMode::Replicated { replicas: 1 });
    assert_eq!(s.task.image, "busybox");
    assert!(s.task.command.is_empty() && s.task.args.is_empty());
    assert_eq!(s.task.restart, RestartPolicy::default());
    assert_eq!(s.task.restart.condition, RestartCondition::Any);
    assert_eq!(s.task.restart.delay_ms, 5000);
    assert_eq!(s.task.restart.max_attempts, 0);
    for c in [&s.update, &s.rollback] {
        assert_eq!(c.parallelism, 1);
        assert_eq!(c.delay_ms, 0);
        assert_eq!(c.failure_action, FailureAction::Pause);
        assert_eq!(c.monitor_ms, 5000);
        assert_eq!(c.max_failure_ratio, 0.0);
        assert_eq!(c.order, UpdateOrder::StopFirst);
        assert_eq!(c.task_deadline_ms, 60_000);
    }
    assert_eq!(s.task.stop_grace_period_ms, 10_000);
    assert_eq!(s.task.resources, Resources::default());
}

#[test]
fn create_flags_fill_the_spec() {
    let s = create_spec(&[
        "--name",
        "web",
        "--replicas",
        "3",
        "-e",
        "A=1",
        "--env",
        "B=2",
        "--label",
        "tier=front",
        "--constraint",
        "node.role==worker",
        "--placement-pref",
        "spread=node.labels.zone",
        "--reserve-cpu",
        "0.5",
        "--reserve-memory",
        "512M",
        "--limit-cpu",
        "2",
        "--limit-memory",
        "1G",
        "--limit-pids",
        "100",
        "--max-replicas",
        "2",
        "--restart-condition",
        "on-failure",
        "--restart-delay",
        "500ms",
        "--restart-max-attempts",
        "3",
        "--restart-window",
        "1m30s",
        "--update-parallelism",
        "2",
        "--update-delay",
        "10s",
        "--update-order",
        "start-first",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "1s",
        "--update-max-failure-ratio",
        "0.25",
        "--update-task-deadline",
        "0",
        "--rollback-parallelism",
        "0",
        "--rollback-failure-action",
        "continue",
        "--rollback-order",
        "start-first",
        "--stop-grace-period",
        "3s",
        "--stop-signal",
        "SIGINT",
        "-d",
        "busybox",
        "sh",
        "-c",
        "sleep 100",
    ])
    .unwrap();
    assert_eq!(s.name, "web");
    assert_eq!(s.mode, ServiceMode::Replicated { replicas: 3 });
    assert!(s.task.command.is_empty());
    assert_eq!(s.task.args, vec!["sh", "-c", "sleep 100"]);
    assert_eq!(s.task.env, vec!["A=1", "B=2"]);
    assert_eq!(s.labels.get("tier").map(String::as_str), Some("front"));
    assert_eq!(s.task.placement.constraints, vec!["node.role==worker"]);
    assert_eq!(
        s.task.placement.preferences,
        vec!["spread=node.labels.zone"]
    );
    assert_eq!(s.task.placement.max_replicas, 2);
    let r = &s.task.resources;
    assert_eq!(r.reserve_nano_cpus, 500_000_000);
    assert_eq!(r.reserve_memory, 512 << 20);
    assert_eq!(r.limit_nano_cpus, 2_000_000_000);
    assert_eq!(r.limit_memory, 1 << 30);
    assert_eq!(r.limit_pids, 100);
    assert_eq!(
        s.task.restart,
        RestartPolicy {
            condition: RestartCondition::OnFailure,
            delay_ms: 500,
            max_attempts: 3,
            window_ms: 90_000
        }
    );
    assert_eq!(s.update.parallelism, 2);
    assert_eq!(s.update.delay_ms, 10_000);
    assert_eq!(s.update.order, UpdateOrder::StartFirst);
    assert_eq!(s.update.failure_action, FailureAction::Rollback);
    assert_eq!(s.update.monitor_ms, 1000);
    assert_eq!(s.update.max_failure_ratio, 0.25);
    assert_eq!(s.update.task_deadline_ms, 0);
    assert_eq!(s.rollback.parallelism, 0);
    assert_eq!(s.rollback.failure_action, FailureAction::Continue);
    assert_eq!(s.rollback.order, UpdateOrder::StartFirst);
    assert_eq!(s.rollback.monitor_ms, 5000);
    assert_eq!(s.task.stop_grace_period_ms, 3000);
    assert_eq!(s.task.stop_signal, "SIGINT");
}

#[test]
fn modes() {
    let s = create_spec(&["--mode", "global", "busybox"]).unwrap();
    assert_eq!(s.mode, ServiceMode::Global);
    let e = create_spec(&["--mode", "global", "--replicas", "2", "busybox"]).unwrap_err();
    assert!(e.contains("--replicas"), "{e}");
    let s = create_spec(&[
        "--mode",
        "replicated-job",
        "--replicas",
        "5",
        "--max-concurrent",
        "2",
        "busybox",
    ])
    .unwrap();
    assert_eq!(
        s.mode,
        ServiceMode::ReplicatedJob {
            max_concurrent: 2,
            total_completions: 5
        }
    );
    let s = create_spec(&["--mode", "replicated-job", "busybox"]).unwrap();
    assert_eq!(
        s.mode,
        ServiceMode::ReplicatedJob {
            max_concurrent: 1,
            total_completions: 1
        }
    );
    let s = create_spec(&["--mode", "global-job", "busybox"]).unwrap();
    assert_eq!(s.mode, ServiceMode::GlobalJob);
    let e = create_spec(&["--max-concurrent", "2", "busybox"]).unwrap_err();
    assert!(e.contains("--max-concurrent"), "{e}");
    let e = create_spec(&["--mode", "global", "--max-replicas", "2", "busybox"]).unwrap_err();
    assert!(e.contains("--max-replicas"), "{e}");
}

#[test]
fn bad_values_name_the_flag_in_one_line() {
    for (flag, val) in [
        ("--update-delay", "soon"),
        ("--restart-delay", "5"),
        ("--reserve-memory", "lots"),
        ("--reserve-cpu", "half"),
        ("--limit-cpu", "x1"),
        ("--mode", "sometimes"),
        ("--restart-condition", "always"),
        ("--update-order", "random"),
        ("--update-failure-action", "panic"),
        ("--rollback-failure-action", "rollback"),
        ("--update-max-failure-ratio", "2"),
        ("--replicas", "many"),
        ("--stop-grace-period", "1x"),
    ] {
        let e = usage_error(&["create", flag, val, "busybox"]);
        assert!(!e.contains('\n') && e.contains(flag), "{flag}: {e}");
        let e = usage_error(&["create", &format!("{flag}={val}"), "busybox"]);
        assert!(!e.contains('\n') && e.contains(flag), "{flag}: {e}");
    }
    let e = usage_error(&["create", "--limit-cpu=-1", "busybox"]);
    assert!(e.contains("--limit-cpu"), "{e}");
    let e = usage_error(&["create", "--limit-memory=-1M", "busybox"]);
    assert!(e.contains("--limit-memory"), "{e}");
    let e = create_spec(&["--env", "=x", "busybox"]).unwrap_err();
    assert!(e.contains("--env"), "{e}");
    let e = create_spec(&["--label", "=x", "busybox"]).unwrap_err();
    assert!(e.contains("--label"), "{e}");
}

/// `--env-file` as Docker reads it, `--env` winning; `--replicas-max-per-node` (Docker's
/// name, `--max-replicas` kept); `--detach` alone, `=true` or `=false`.
#[test]
fn env_files_max_per_node_and_detach_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.env");
    std::fs::write(
        &file,
        "# comment\nA=1\n\nB=two words\nPATH\nSHOAL_TEST_SURELY_UNSET\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let s = create_spec(&["--env-file", f, "-e", "A=2", "busybox"]).unwrap();
    let path = std::env::var("PATH").unwrap();
    assert_eq!(
        s.task.env,
        [
            "A=2".to_string(),
            "B=two words".into(),
            format!("PATH={path}")
        ]
    );
    std::fs::write(&file, "=nokey\n").unwrap();
    let e = create_spec(&["--env-file", f, "busybox"]).unwrap_err();
    assert!(
        e.contains("app.env:1:") && e.contains("empty variable name"),
        "{e}"
    );
    let e = create_spec(&["--env-file", "/nonexistent/x.env", "busybox"]).unwrap_err();
    assert!(e.starts_with("--env-file /nonexistent/x.env:"), "{e}");

    for flag in ["--replicas-max-per-node", "--max-replicas"] {
        let s = create_spec(&[flag, "2", "busybox"]).unwrap();
        assert_eq!(s.task.placement.max_replicas, 2, "{flag}");
    }

    let detach = |args: &[&str]| {
        let mut v = vec!["create"];
        v.extend_from_slice(args);
        v.push("busybox");
        match parse(&v) {
            ServiceCmd::Create(a) => a.detach,
            _ => unreachable!(),
        }
    };
    assert!(!detach(&[]));
    assert!(detach(&["-d"]));
    assert!(detach(&["--detach"]));
    assert!(detach(&["--detach=true"]));
    assert!(!detach(&["--detach=false"]));
    match parse(&["scale", "-d", "web=3"]) {
        ServiceCmd::Scale { detach, scales } => assert!(detach && scales == ["web=3"]),
        _ => unreachable!(),
    }
}

/// Docker's `--no-resolve-image` is taken on create and update and leaves the image as
/// written (shoal never pins digests).
#[test]
fn no_resolve_image_is_taken() {
    match parse(&["create", "--no-resolve-image", "web:v1"]) {
        ServiceCmd::Create(a) => {
            assert!(a.no_resolve_image);
            let spec = build_spec(&a, "web".into()).unwrap();
            assert_eq!(spec.task.image, "web:v1");
        }
        _ => unreachable!(),
    }
    match parse(&["update", "--no-resolve-image", "--image", "web:v2", "web"]) {
        ServiceCmd::Update(a) => assert!(a.no_resolve_image),
        _ => unreachable!(),
    }
}
