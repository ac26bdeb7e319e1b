use super::*;

#[test]
fn ls_rendering() {
    let mut capped = view("api", ServiceMode::Replicated { replicas: 4 }, 2, 4);
    capped.spec.task.placement.max_replicas = 1;
    let mut job = view(
        "batch",
        ServiceMode::ReplicatedJob {
            max_concurrent: 2,
            total_completions: 5,
        },
        2,
        5,
    );
    job.completed = 3;
    let views = vec![
        view("web", ServiceMode::Replicated { replicas: 3 }, 3, 3),
        view("agent", ServiceMode::Global, 2, 2),
        capped,
        job,
    ];
    let rows = ls_rows(&views);
    let names: Vec<&str> = rows.iter().map(|(c, _)| c[1].as_str()).collect();
    assert_eq!(names, vec!["agent", "api", "batch", "web"]);
    assert_eq!(
        rows[0].0,
        vec!["agent0123456", "agent", "global", "2/2", "busybox", ""]
    );
    assert_eq!(rows[1].0[3], "2/4 (max 1 per node)");
    assert_eq!(rows[2].0[2], "replicated job");
    assert_eq!(rows[2].0[3], "2/5 (3/5 completed)");
    assert_eq!(rows[3].0[3], "3/3");
    let j: Value = serde_json::from_str(&rows[3].1).unwrap();
    let mut keys: Vec<&str> = j.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec!["ID", "Image", "Mode", "Name", "Ports", "Replicas"]
    );
    assert_eq!(j["ID"], "web012345678");
    assert_eq!(j["Mode"], "replicated");
    assert_eq!(j["Replicas"], "3/3");
    let t = table(&LS_HEADERS, &[rows[3].0.clone()]);
    assert!(t.starts_with("ID             NAME   MODE         REPLICAS   IMAGE     PORTS\n"));
}

// ------------------------------------------------------------ networking

#[test]
fn pretty_and_json_show_the_endpoint() {
    let mut v = view("web", ServiceMode::Replicated { replicas: 1 }, 1, 1);
    v.spec.endpoint.ports = vec![port(8080, 80)];
    v.endpoint.ports = vec![port(8080, 80)];
    v.endpoint.virtual_ips = vec![proto::api::VirtualIpView {
        network_id: "netfront0001".into(),
        addr: "10.0.1.2/24".into(),
    }];
    v.spec.task.networks = vec![
        NetworkAttachmentConfig {
            target: "netfront0001".into(),
            aliases: vec![],
        },
        NetworkAttachmentConfig {
            target: "unknownid".into(),
            aliases: vec![],
        },
    ];
    v.spec.task.dns.nameservers = vec!["10.0.0.2".into()];
    let p = pretty_service(&v, &[net("netfront0001", "front")]);
    for want in [
        "Networks:\tfront unknownid\n",
        "Endpoint Mode:\tvip\n",
        "Ports:\n PublishedPort = 8080\n  Protocol = tcp\n  TargetPort = 80\n  PublishMode = ingress\n",
        "DNS:\n Nameservers:\t10.0.0.2\n",
    ] {
        assert!(p.contains(want), "missing {want:?} in\n{p}");
    }
    let plain = pretty_service(&view("x", ServiceMode::Global, 0, 0), &[]);
    assert!(plain.contains("Endpoint Mode:\tvip") && !plain.contains("Ports:"));
    assert!(!plain.contains("Networks:") && !plain.contains("DNS:"));

    let j = crate::service::docker_json::service_json(&v);
    assert_eq!(j["ID"], v.id.as_str());
    assert_eq!(j["Spec"]["Name"], v.spec.name.as_str());
    assert_eq!(
        j["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        v.spec.task.image.as_str()
    );
    assert_eq!(j["Version"]["Index"], v.version);
    let e = &j["Endpoint"];
    assert_eq!(e["Spec"]["Mode"], "vip");
    let want_port = json!({"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"});
    assert_eq!(e["Spec"]["Ports"][0], want_port);
    assert_eq!(e["Ports"][0], want_port);
    assert_eq!(
        e["VirtualIPs"][0],
        json!({"NetworkID": "netfront0001", "Addr": "10.0.1.2/24"})
    );
    // Docker leaves out what is empty.
    let bare = view("x", ServiceMode::Global, 0, 0);
    let e = endpoint_json(&bare);
    assert_eq!(e, json!({"Spec": {"Mode": "vip"}}));
}

#[test]
fn ago() {
    assert_eq!(human_duration(500), "less than a second");
    assert_eq!(human_duration(-5), "less than a second");
    assert_eq!(human_duration(1000), "1 second");
    assert_eq!(human_duration(5_400), "5 seconds");
    assert_eq!(human_duration(59_999), "59 seconds");
    assert_eq!(human_duration(60_000), "about a minute");
    assert_eq!(human_duration(150_000), "2 minutes");
    assert_eq!(human_duration(3_600_000), "about an hour");
    assert_eq!(human_duration(3 * 3_600_000), "3 hours");
    assert_eq!(human_duration(3 * 86_400_000), "3 days");
    assert_eq!(human_duration(21 * 86_400_000), "3 weeks");
    assert_eq!(human_duration(90 * 86_400_000), "3 months");
    assert_eq!(human_duration(3 * 365 * 86_400_000), "3 years");
}

#[test]
fn ps_rendering_with_history() {
    let now = 1_000_000;
    let mut failed = task(
        "t1old",
        1,
        "n1",
        TaskState::Shutdown,
        TaskState::Failed,
        now - 3_000,
    );
    failed.status.err = "task: non-zero exit (1)".into();
    let mut pending = task(
        "t2",
        2,
        "",
        TaskState::Running,
        TaskState::Pending,
        now - 120_000,
    );
    pending.node_hostname.clear();
    pending.status.message = "no suitable node (insufficient resources on 2 nodes)".into();
    let tasks = vec![
        pending,
        failed,
        task(
            "t1new",
            1,
            "n2",
            TaskState::Running,
            TaskState::Running,
            now - 1_500,
        ),
        task(
            "t1older",
            1,
            "n1",
            TaskState::Shutdown,
            TaskState::Shutdown,
            now - 60_000,
        ),
    ];
    let rows = ps_rows(&tasks, now, false);
    let names: Vec<String> = rows.iter().map(|r| r.cells()[1].clone()).collect();
    assert_eq!(names, vec!["web.1", " \\_ web.1", " \\_ web.1", "web.2"]);
    assert_eq!(rows[0].id, "t1newabcdefg");
    assert_eq!(rows[0].node, "host-n2");
    assert_eq!(rows[0].desired, "Running");
    assert_eq!(rows[0].current, "Running 1 second ago");
    assert_eq!(rows[0].error, "");
    assert_eq!(rows[1].desired, "Shutdown");
    assert_eq!(rows[1].current, "Failed 3 seconds ago");
    assert_eq!(rows[1].error, "\"task: non-zero exit (1)\"");
    assert_eq!(rows[2].current, "Shutdown about a minute ago");
    assert_eq!(rows[3].current, "Pending 2 minutes ago");
    assert_eq!(rows[3].error, "\"no suitable node (insufficien…\"");
    assert_eq!(rows[3].node, "");
    let full = ps_rows(&tasks, now, true);
    assert_eq!(full[0].id, "t1newabcdefghijklmnopqrstuvw");
    assert_eq!(
        full[3].error,
        "\"no suitable node (insufficient resources on 2 nodes)\""
    );
    // JSON: exact keys, the name without the history marker.
    let j: Value = serde_json::from_str(&rows[1].json()).unwrap();
    let mut keys: Vec<&str> = j.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "CurrentState",
            "DesiredState",
            "Error",
            "ID",
            "Image",
            "Name",
            "Node"
        ]
    );
    assert_eq!(j["Name"], "web.1");
    assert_eq!(j["CurrentState"], "Failed 3 seconds ago");
    let t = table(
        &PS_HEADERS,
        &rows.iter().map(PsRow::cells).collect::<Vec<_>>(),
    );
    assert!(t.starts_with("ID "), "{t}");
    assert!(t.contains("DESIRED STATE"), "{t}");
}

#[test]
fn ps_global_names_use_the_node() {
    let now = 10_000;
    let tasks = vec![
        task("a", 0, "nodeB", TaskState::Running, TaskState::Running, 1),
        task("b", 0, "nodeA", TaskState::Running, TaskState::Running, 1),
        task("c", 0, "nodeA", TaskState::Shutdown, TaskState::Complete, 0),
    ];
    let rows = ps_rows(&tasks, now, false);
    let names: Vec<String> = rows.iter().map(|r| r.cells()[1].clone()).collect();
    assert_eq!(names, vec!["web.nodeA", " \\_ web.nodeA", "web.nodeB"]);
}

#[test]
fn pretty_summary() {
    let mut v = view("web", ServiceMode::Replicated { replicas: 3 }, 1, 3);
    v.spec.task.resources.reserve_nano_cpus = 500_000_000;
    v.spec.task.resources.reserve_memory = 512 << 20;
    v.spec.task.args = vec!["sleep".into(), "5".into()];
    v.update_status = Some(UpdateStatusView {
        state: "updating".into(),
        started_ms: 1,
        completed_ms: 0,
        message: "update in progress".into(),
    });
    let p = pretty_service(&v, &[]);
    for want in [
        "ID:\t\tweb0123456789abcdefghijklmn",
        "Name:\t\tweb",
        "Service Mode:\tReplicated",
        " Replicas:\t3",
        "Placement:",
        " Constraints:\t[node.role==worker]",
        "UpdateConfig:",
        " On failure:\tpause",
        " Update order:    stop-first",
        "RollbackConfig:",
        " Rollback order:    stop-first",
        " Image:\t\tbusybox",
        " Args:\t\tsleep 5",
        " Env:\t\tA=1 B=2",
        "  CPU:\t\t0.5",
        "  Memory:\t512MiB",
        "UpdateStatus:\n State:\t\tupdating",
    ] {
        assert!(p.contains(want), "missing {want:?} in\n{p}");
    }
}

// ------------------------------------------------------------ convergence

/// `--pretty` shows the container's settings as Docker's sections do: Dir, User, Init,
/// Capabilities, Mounts, Configs, Secrets, Log Driver.
#[test]
fn pretty_shows_every_container_section() {
    let mut v = view("web", ServiceMode::Replicated { replicas: 1 }, 1, 1);
    let t = &mut v.spec.task;
    t.workdir = "/srv".into();
    t.user = "101".into();
    t.init = true;
    t.cap_add = vec!["CAP_NET_ADMIN".into()];
    t.mounts = vec![proto::spec::Mount {
        kind: proto::spec::MountKind::Volume,
        source: "data".into(),
        target: "/data".into(),
        readonly: true,
        ..Default::default()
    }];
    t.secrets = vec![proto::spec::FileRef {
        name: "pw".into(),
        ..Default::default()
    }];
    t.log_driver = Some(proto::spec::LogDriver {
        name: "json-file".into(),
        options: [("max-size".to_string(), "10m".to_string())]
            .into_iter()
            .collect(),
    });
    let p = pretty_service(&v, &[]);
    for want in [
        " Dir:\t\t/srv\n",
        " User:\t\t101\n",
        " Init:\t\ttrue\n",
        "  Add: CAP_NET_ADMIN\n",
        "Mounts:\n Target:\t/data\n  Source:\tdata\n  ReadOnly:\ttrue\n  Type:\t\tvolume\n",
        "Secrets:\n Target:\tpw\n  Source:\tpw\n",
        "Log Driver:\n Name:\t\tjson-file\n LogOpts:\n  max-size:\t10m\n",
    ] {
        assert!(p.contains(want), "missing {want:?} in\n{p}");
    }
}
