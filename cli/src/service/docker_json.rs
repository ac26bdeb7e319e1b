//! `service inspect` in Docker's shape (`.Spec.TaskTemplate.ContainerSpec…`, `.Endpoint`,
//! `.UpdateStatus`), so that `jq '.[0].Spec.Name'` and Docker's scripts read it alike.
//! Durations are nanoseconds, as Docker's API gives them.

use proto::api::ServiceView;
use proto::spec::{FileRef, Mount, MountKind, ServiceMode, ServiceSpec, TaskSpec, UpdateConfig};
use serde_json::{json, Map, Value};

use super::render::{endpoint_json, fmt_ts, kebab, port_json};

fn ns(ms: u64) -> Value {
    json!(ms.saturating_mul(1_000_000))
}

/// Keys whose values are empty are left out, as Docker's `omitempty`.
fn object(entries: Vec<(&str, Value)>) -> Value {
    let mut m = Map::new();
    for (k, v) in entries {
        let empty = match &v {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            Value::Bool(b) => !b,
            Value::Number(n) => n.as_u64() == Some(0),
        };
        if !empty {
            m.insert(k.to_string(), v);
        }
    }
    Value::Object(m)
}

fn mount(m: &Mount) -> Value {
    let kind = match m.kind {
        MountKind::Bind => "bind",
        MountKind::Volume => "volume",
        MountKind::Tmpfs => "tmpfs",
    };
    let mut fields = vec![
        ("Type", json!(kind)),
        ("Source", json!(m.source)),
        ("Target", json!(m.target)),
        ("ReadOnly", json!(m.readonly)),
    ];
    if !m.volume_options.is_empty() {
        fields.push((
            "VolumeOptions",
            json!({"DriverConfig": {"Name": "local", "Options": m.volume_options}}),
        ));
    }
    object(fields)
}

fn file_ref(f: &FileRef, id_key: &str, name_key: &str) -> Value {
    let default_mode = if id_key == "SecretID" { 0o400 } else { 0o444 };
    json!({
        "File": {
            "Name": f.target,
            "UID": f.uid.unwrap_or(0).to_string(),
            "GID": f.gid.unwrap_or(0).to_string(),
            "Mode": f.mode.unwrap_or(default_mode),
        },
        id_key: f.name,
        name_key: f.name,
    })
}

fn update_config(u: &UpdateConfig) -> Value {
    json!({
        "Parallelism": u.parallelism,
        "Delay": ns(u.delay_ms),
        "FailureAction": kebab(&u.failure_action),
        "Monitor": ns(u.monitor_ms),
        "MaxFailureRatio": u.max_failure_ratio,
        "Order": kebab(&u.order),
    })
}

fn container_spec(t: &TaskSpec) -> Value {
    let health = t.healthcheck.as_ref().map(|h| {
        object(vec![
            ("Test", json!(h.test)),
            ("Interval", ns(h.interval_ms)),
            ("Timeout", ns(h.timeout_ms)),
            ("Retries", json!(h.retries)),
            ("StartPeriod", ns(h.start_period_ms)),
            ("StartInterval", ns(h.start_interval_ms)),
        ])
    });
    let dns = object(vec![
        ("Nameservers", json!(t.dns.nameservers)),
        ("Search", json!(t.dns.search)),
        ("Options", json!(t.dns.options)),
    ]);
    object(vec![
        ("Image", json!(t.image)),
        ("Labels", json!(t.container_labels)),
        ("Command", json!(t.command)),
        ("Args", json!(t.args)),
        ("Hostname", json!(t.hostname)),
        ("Env", json!(t.env)),
        ("Dir", json!(t.workdir)),
        ("User", json!(t.user)),
        ("Mounts", Value::Array(t.mounts.iter().map(mount).collect())),
        ("StopGracePeriod", ns(t.stop_grace_period_ms)),
        ("StopSignal", json!(t.stop_signal)),
        ("Healthcheck", health.unwrap_or(Value::Null)),
        ("Hosts", json!(t.hosts)),
        ("DNSConfig", dns),
        (
            "Secrets",
            Value::Array(
                t.secrets
                    .iter()
                    .map(|f| file_ref(f, "SecretID", "SecretName"))
                    .collect(),
            ),
        ),
        (
            "Configs",
            Value::Array(
                t.configs
                    .iter()
                    .map(|f| file_ref(f, "ConfigID", "ConfigName"))
                    .collect(),
            ),
        ),
        ("ReadOnly", json!(t.read_only)),
        ("Init", json!(t.init)),
        ("CapabilityAdd", json!(t.cap_add)),
        ("CapabilityDrop", json!(t.cap_drop)),
        ("Sysctls", json!(t.sysctls)),
        (
            "Ulimits",
            Value::Array(
                t.ulimits
                    .iter()
                    .map(|u| json!({"Name": u.name, "Soft": u.soft, "Hard": u.hard}))
                    .collect(),
            ),
        ),
        ("Isolation", json!("default")),
    ])
}

/// A spec as Docker's `ServiceSpec`.
pub fn spec_json(s: &ServiceSpec) -> Value {
    let t = &s.task;
    let mode = match &s.mode {
        ServiceMode::Replicated { replicas } => json!({"Replicated": {"Replicas": replicas}}),
        ServiceMode::Global => json!({"Global": {}}),
        ServiceMode::ReplicatedJob {
            max_concurrent,
            total_completions,
        } => {
            json!({"ReplicatedJob": {"MaxConcurrent": max_concurrent, "TotalCompletions": total_completions}})
        }
        ServiceMode::GlobalJob => json!({"GlobalJob": {}}),
    };
    let prefs: Vec<Value> = t
        .placement
        .preferences
        .iter()
        .map(|p| {
            let (_, label) = p.split_once('=').unwrap_or(("spread", p));
            json!({"Spread": {"SpreadDescriptor": label}})
        })
        .collect();
    let r = &t.resources;
    let task_template = object(vec![
        ("ContainerSpec", container_spec(t)),
        (
            "Resources",
            object(vec![
                (
                    "Limits",
                    object(vec![
                        ("NanoCPUs", json!(r.limit_nano_cpus)),
                        ("MemoryBytes", json!(r.limit_memory)),
                        ("Pids", json!(r.limit_pids)),
                    ]),
                ),
                (
                    "Reservations",
                    object(vec![
                        ("NanoCPUs", json!(r.reserve_nano_cpus)),
                        ("MemoryBytes", json!(r.reserve_memory)),
                    ]),
                ),
            ]),
        ),
        (
            "RestartPolicy",
            json!({
                "Condition": kebab(&t.restart.condition),
                "Delay": ns(t.restart.delay_ms),
                "MaxAttempts": t.restart.max_attempts,
                "Window": ns(t.restart.window_ms),
            }),
        ),
        (
            "Placement",
            object(vec![
                ("Constraints", json!(t.placement.constraints)),
                ("Preferences", Value::Array(prefs)),
                ("MaxReplicas", json!(t.placement.max_replicas)),
            ]),
        ),
        (
            "Networks",
            Value::Array(
                t.networks
                    .iter()
                    .map(|n| {
                        object(vec![
                            ("Target", json!(n.target)),
                            ("Aliases", json!(n.aliases)),
                        ])
                    })
                    .collect(),
            ),
        ),
        (
            "LogDriver",
            t.log_driver
                .as_ref()
                .map(|d| json!({"Name": d.name, "Options": d.options}))
                .unwrap_or(Value::Null),
        ),
        ("ForceUpdate", json!(t.force_update)),
        ("Runtime", json!("container")),
    ]);
    let mut endpoint = Map::new();
    endpoint.insert("Mode".into(), json!(kebab(&s.endpoint.mode)));
    if !s.endpoint.ports.is_empty() {
        endpoint.insert(
            "Ports".into(),
            Value::Array(s.endpoint.ports.iter().map(port_json).collect()),
        );
    }
    object(vec![
        ("Name", json!(s.name)),
        ("Labels", json!(s.labels)),
        ("TaskTemplate", task_template),
        ("Mode", mode),
        ("UpdateConfig", update_config(&s.update)),
        ("RollbackConfig", update_config(&s.rollback)),
        ("EndpointSpec", Value::Object(endpoint)),
    ])
}

/// One service as Docker's `service inspect` prints it.
pub fn service_json(v: &ServiceView) -> Value {
    let mut m = Map::new();
    m.insert("ID".into(), json!(v.id));
    m.insert("Version".into(), json!({"Index": v.version}));
    m.insert("CreatedAt".into(), json!(fmt_ts(v.created_at_ms)));
    m.insert("UpdatedAt".into(), json!(fmt_ts(v.updated_at_ms)));
    m.insert("Spec".into(), spec_json(&v.spec));
    if let Some(p) = &v.previous_spec {
        m.insert("PreviousSpec".into(), spec_json(p));
    }
    m.insert("Endpoint".into(), endpoint_json(v));
    if let Some(u) = &v.update_status {
        let mut s = Map::new();
        s.insert("State".into(), json!(u.state));
        if u.started_ms > 0 {
            s.insert("StartedAt".into(), json!(fmt_ts(u.started_ms)));
        }
        if u.completed_ms > 0 {
            s.insert("CompletedAt".into(), json!(fmt_ts(u.completed_ms)));
        }
        s.insert("Message".into(), json!(u.message));
        m.insert("UpdateStatus".into(), Value::Object(s));
    }
    m.insert(
        "ServiceStatus".into(),
        json!({"RunningTasks": v.running, "DesiredTasks": v.desired, "CompletedTasks": v.completed}),
    );
    Value::Object(m)
}
