use std::path::PathBuf;

use proto::spec::{EndpointMode, MountKind, RestartCondition, ServiceMode, UpdateOrder};

use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const FULL: &str = r#"
version: "3.8"
x-common: &common
  stop_signal: SIGTERM
services:
  web:
    <<: *common
    image: registry.test:5000/web:${TAG:-v1}
    command: ["nginx", "-g", "daemon off;"]
    entrypoint: /docker-entrypoint.sh
    environment:
      MODE: prod
      EMPTY: ""
    ports:
      - "8080:80"
      - target: 443
        published: 8443
        protocol: tcp
        mode: ingress
    networks:
      front:
        aliases: [www]
      back:
    volumes:
      - data:/var/lib/web
      - /etc/hostname:/etc/host-name:ro
      - type: tmpfs
        target: /cache
      - scratch:/scratch
    secrets:
      - db_password
      - source: db_password
        target: /run/secrets/other
        uid: "103"
        gid: "104"
        mode: 0440
    configs:
      - source: site
        target: /etc/nginx/site.conf
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://localhost/"]
      interval: 5s
      timeout: 2s
      retries: 4
      start_period: 1s
    labels:
      team: web
    init: true
    hostname: "{{.Service.Name}}-{{.Task.Slot}}"
    user: "101"
    working_dir: /srv
    stop_grace_period: 20s
    cap_add: [NET_ADMIN]
    cap_drop: [MKNOD]
    read_only: true
    ulimits:
      nproc: 65535
      nofile:
        soft: 1024
        hard: 2048
    sysctls:
      net.core.somaxconn: 1024
    extra_hosts:
      - "db.local:10.0.0.5"
    dns: [10.0.0.2]
    dns_search: [example.test]
    deploy:
      mode: replicated
      replicas: 3
      endpoint_mode: vip
      labels:
        tier: front
      placement:
        constraints: [node.role==worker]
        preferences:
          - spread: node.labels.zone
        max_replicas_per_node: 2
      resources:
        limits: {cpus: "0.5", memory: 64M, pids: 100}
        reservations: {cpus: "0.25", memory: 32M}
      restart_policy:
        condition: on-failure
        delay: 2s
        max_attempts: 3
        window: 30s
      update_config:
        parallelism: 2
        delay: 1s
        failure_action: rollback
        monitor: 3s
        max_failure_ratio: 0.2
        order: start-first
      rollback_config:
        parallelism: 1
        order: stop-first
    depends_on:
      api:
        condition: service_healthy
  api:
    image: busybox
    command: httpd -f -p "8080"
    networks: [back]
  worker:
    image: busybox
    depends_on: [api]
networks:
  front:
    driver: overlay
    attachable: true
  back:
    internal: true
    labels: {purpose: backend}
  unused: {}
volumes:
  data: {}
  scratch:
    driver: local
    driver_opts: {type: tmpfs, device: tmpfs, o: "size=64m,uid=1000"}
secrets:
  db_password:
    file: ./db_password.txt
configs:
  site:
    file: site.conf
"#;

#[test]
fn a_file_with_every_key_becomes_the_specs_service_create_would_make() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "compose.yml", FULL);
    let st = load(&[f], "shop").unwrap();
    // Dependencies first.
    let order: Vec<&str> = st.services.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(order, ["api", "web", "worker"]);
    let web = &st.services[1].spec;
    assert_eq!(web.name, "shop_web");
    assert_eq!(web.labels["com.docker.stack.namespace"], "shop");
    assert_eq!(web.labels["tier"], "front");
    assert_eq!(web.mode, ServiceMode::Replicated { replicas: 3 });
    let t = &web.task;
    assert_eq!(t.image, "registry.test:5000/web:v1");
    assert_eq!(t.args, ["nginx", "-g", "daemon off;"]);
    assert_eq!(t.command, ["/docker-entrypoint.sh"]);
    assert!(t.env.contains(&"MODE=prod".to_string()) && t.env.contains(&"EMPTY=".to_string()));
    assert_eq!(web.endpoint.ports.len(), 2);
    assert_eq!(web.endpoint.mode, EndpointMode::Vip);
    let nets: Vec<(&str, &[String])> = t
        .networks
        .iter()
        .map(|n| (n.target.as_str(), n.aliases.as_slice()))
        .collect();
    assert_eq!(
        nets,
        [
            ("shop_front", &["www".to_string()][..]),
            ("shop_back", &[][..])
        ]
    );
    assert_eq!(t.mounts.len(), 4);
    // driver_opts become the mount's volume options (o kept whole, commas and all).
    assert_eq!(t.mounts[3].source, "shop_scratch");
    assert_eq!(
        t.mounts[3].volume_options.get("o").map(String::as_str),
        Some("size=64m,uid=1000")
    );
    assert_eq!(t.mounts[3].volume_options.len(), 3);
    assert_eq!(
        (t.mounts[0].kind, t.mounts[0].source.as_str()),
        (MountKind::Volume, "shop_data")
    );
    assert_eq!(
        (t.mounts[1].kind, t.mounts[1].readonly),
        (MountKind::Bind, true)
    );
    assert_eq!(t.mounts[2].kind, MountKind::Tmpfs);
    assert_eq!(t.secrets.len(), 2);
    assert_eq!(t.secrets[0].name, "shop_db_password");
    assert_eq!(t.secrets[1].target, "/run/secrets/other");
    assert_eq!(
        (t.secrets[1].uid, t.secrets[1].gid, t.secrets[1].mode),
        (Some(103), Some(104), Some(0o440))
    );
    assert_eq!(t.secrets[0].mode, None);
    assert_eq!(t.configs[0].name, "shop_site");
    assert_eq!(t.configs[0].target, "/etc/nginx/site.conf");
    let hc = t.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test, ["CMD", "wget", "-q", "-O-", "http://localhost/"]);
    assert_eq!(
        (
            hc.interval_ms,
            hc.timeout_ms,
            hc.retries,
            hc.start_period_ms
        ),
        (5000, 2000, 4, 1000)
    );
    assert_eq!(t.hostname, "{{.Service.Name}}-{{.Task.Slot}}");
    assert_eq!((t.user.as_str(), t.workdir.as_str()), ("101", "/srv"));
    assert_eq!(
        (t.stop_grace_period_ms, t.stop_signal.as_str()),
        (20_000, "SIGTERM")
    );
    assert_eq!(
        (t.cap_add.as_slice(), t.cap_drop.as_slice()),
        (
            &["CAP_NET_ADMIN".to_string()][..],
            &["CAP_MKNOD".to_string()][..]
        )
    );
    assert!(t.read_only && t.init);
    assert_eq!(t.container_labels["team"], "web");
    assert_eq!(t.ulimits.len(), 2);
    assert_eq!(t.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(t.hosts, ["10.0.0.5 db.local"]);
    assert_eq!(t.dns.nameservers, ["10.0.0.2"]);
    assert_eq!(t.placement.constraints, ["node.role==worker"]);
    assert_eq!(t.placement.preferences, ["spread=node.labels.zone"]);
    assert_eq!(t.placement.max_replicas, 2);
    assert_eq!(t.resources.limit_nano_cpus, 500_000_000);
    assert_eq!(t.resources.limit_memory, 64 << 20);
    assert_eq!(t.resources.limit_pids, 100);
    assert_eq!(t.resources.reserve_memory, 32 << 20);
    assert_eq!(t.restart.condition, RestartCondition::OnFailure);
    assert_eq!(
        (
            t.restart.delay_ms,
            t.restart.max_attempts,
            t.restart.window_ms
        ),
        (2000, 3, 30_000)
    );
    assert_eq!(
        (web.update.parallelism, web.update.order),
        (2, UpdateOrder::StartFirst)
    );
    assert_eq!(web.update.monitor_ms, 3000);
    assert_eq!(web.rollback.parallelism, 1);
    assert_eq!(
        st.services[1].depends_on,
        [("api".to_string(), Condition::Healthy)]
    );
    // A string command is split as a shell would.
    assert_eq!(st.services[0].spec.task.args, ["httpd", "-f", "-p", "8080"]);
    // Without networks: the stack's default network.
    assert_eq!(st.services[2].spec.task.networks[0].target, "shop_default");
    // Only what the services use is created.
    let mut nets: Vec<&str> = st.networks.iter().map(|n| n.name.as_str()).collect();
    nets.sort();
    assert_eq!(nets, ["shop_back", "shop_default", "shop_front"]);
    let back = st.networks.iter().find(|n| n.key == "back").unwrap();
    assert!(back.internal && back.labels["purpose"] == "backend");
    assert_eq!(
        st.secrets[0].file.as_deref(),
        Some(dir.path().join("./db_password.txt").as_path())
    );
    assert_eq!(st.configs[0].name, "shop_site");
    assert!(st.warnings.is_empty(), "{:?}", st.warnings);
}

fn error_of(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "compose.yml", text);
    load(&[f], "s").unwrap_err()
}

#[test]
fn errors_name_file_line_column_and_key() {
    let e = error_of("services:\n  web:\n    image: x\n    deploy:\n      replicas: many\n");
    assert!(
        e.ends_with("compose.yml:5:17: services.web.deploy.replicas: expected an integer"),
        "{e}"
    );
    let e = error_of("services:\n  web:\n    image: x\n    ports:\n      - \"80:abc\"\n");
    assert!(e.contains("compose.yml:5:9: services.web.ports[0]:"), "{e}");
    let e = error_of("services:\n  web:\n    image: x\n    networks: [nowhere]\n");
    assert!(
        e.contains(
            "compose.yml:4:15: services.web.networks.nowhere: network \"nowhere\" is not defined"
        ),
        "{e}"
    );
    let e = error_of("services:\n  web:\n    image: x\n    secrets: [pw]\n");
    assert!(
        e.contains(":4:15: services.web.secrets[0]: secret \"pw\" is not defined"),
        "{e}"
    );
    let e = error_of("services:\n  web:\n    image: ${TAG:?give a tag}\n");
    assert!(
        e.contains(":3:12: services.web.image: required variable TAG"),
        "{e}"
    );
    let e = error_of("services:\n  web:\n    command: echo\n");
    assert!(e.contains(":3:5: services.web: image: is required"), "{e}");
    let e =
        error_of("services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [a]}\n");
    assert!(e.contains("a cycle among services"), "{e}");
    let e = error_of("services:\n  a: {image: x, depends_on: [zz]}\n");
    assert!(e.contains("service \"zz\" is not defined"), "{e}");
    let e = error_of("services: [1, 2\n");
    assert!(e.contains("compose.yml:"), "{e}");
    let e = error_of("- just\n- a list\n");
    assert!(e.contains("a compose file is a mapping"), "{e}");
    let e = error_of("services:\n  web:\n    image: x\n    healthcheck:\n      interval: soon\n");
    assert!(
        e.contains(":5:17: services.web.healthcheck.interval: invalid duration"),
        "{e}"
    );
}

#[test]
fn unknown_keys_are_warnings_and_compose_only_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "c.yml",
        "services:\n  web:\n    image: x\n    build: .\n    flavour: mint\n    deploy:\n      colour: red\nfrobs: 1\n",
    );
    let st = load(&[f], "s").unwrap();
    let w = st.warnings.join("\n");
    assert!(
        w.contains("c.yml:5:14: services.web.flavour: unsupported key"),
        "{w}"
    );
    assert!(
        w.contains("services.web.deploy.colour: unsupported key"),
        "{w}"
    );
    assert!(w.contains("c.yml:8:8: frobs: unsupported key"), "{w}");
    assert!(w.contains("services.web.build: not used by a stack"), "{w}");
}

#[test]
fn later_files_override_and_extend_earlier_ones_and_dotenv_fills_variables() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), ".env", "# comment\nTAG=v7\nexport PORT=9090\n");
    let a = write(
        dir.path(),
        "a.yml",
        "services:\n  web:\n    image: web:${TAG}\n    command: [a, b]\n    ports: [\"${PORT}:80\"]\n    environment: [A=1, B=2]\n",
    );
    let b = write(
        dir.path(),
        "b.yml",
        "services:\n  web:\n    command: [c]\n    ports: [\"9443:443\"]\n    environment: [A=1, C=3]\n    deploy: {replicas: 4}\n",
    );
    let st = load(&[a, b], "s").unwrap();
    let web = &st.services[0].spec;
    assert_eq!(web.task.image, "web:v7");
    assert_eq!(web.task.args, ["c"]);
    assert_eq!(web.endpoint.ports.len(), 2);
    assert_eq!(web.endpoint.ports[0].published_port, 9090);
    assert_eq!(web.task.env, ["A=1", "B=2", "C=3"]);
    assert_eq!(web.mode, ServiceMode::Replicated { replicas: 4 });
}

#[test]
fn stack_names_are_checked() {
    for bad in ["", "-x", "a b", "a/b", &"x".repeat(64)] {
        assert!(check_stack_name(bad).is_err(), "{bad}");
    }
    for good in ["shop", "my-app_1.2"] {
        assert!(check_stack_name(good).is_ok(), "{good}");
    }
}
