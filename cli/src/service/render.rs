//! `service ls` and `service inspect`: table rows, JSON lines, ports as Docker writes them.

use std::time::Duration;

use proto::api::ServiceView;
use proto::spec::{PortConfig, PublishMode, ServiceMode};
use serde_json::{json, Value};

use crate::client::Client;
use crate::commands::CliError;
use crate::output::{json_line, print_rows, Format};

/// The first 12 characters of an id, as Docker shows them.
pub fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

/// REPLICAS of `service ls`.
pub fn replicas_text(v: &ServiceView) -> String {
    let base = format!("{}/{}", v.running, v.desired);
    match &v.spec.mode {
        ServiceMode::ReplicatedJob {
            total_completions, ..
        } => format!("{base} ({}/{} completed)", v.completed, total_completions),
        ServiceMode::GlobalJob => format!("{base} ({}/{} completed)", v.completed, v.desired),
        _ if v.spec.task.placement.max_replicas > 0 => format!(
            "{base} (max {} per node)",
            v.spec.task.placement.max_replicas
        ),
        _ => base,
    }
}

pub const LS_HEADERS: [&str; 6] = ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"];

/// A service's published ports: as the manager resolved them, or the spec's before that.
pub fn service_ports(v: &ServiceView) -> &[PortConfig] {
    if v.endpoint.ports.is_empty() {
        &v.spec.endpoint.ports
    } else {
        &v.endpoint.ports
    }
}

/// One port as Docker writes it: `*:8080->80/tcp` (`80/tcp` while the published port is
/// unknown).
pub fn port_text(p: &PortConfig) -> String {
    if p.published_port == 0 {
        format!("{}/{}", p.target_port, p.protocol.as_str())
    } else {
        format!(
            "*:{}->{}/{}",
            p.published_port,
            p.target_port,
            p.protocol.as_str()
        )
    }
}

/// PORTS of `service ls`: every published port, by protocol and port, consecutive ones merged
/// into ranges as Docker does (`*:8080-8081->80-81/tcp`), comma-separated.
pub fn ports_text(ports: &[PortConfig]) -> String {
    let mut ps: Vec<&PortConfig> = ports.iter().collect();
    ps.sort_by_key(|p| {
        (
            p.protocol,
            p.publish_mode == PublishMode::Host,
            p.published_port,
            p.target_port,
        )
    });
    // (first, last) of each run of consecutive published and target ports.
    let mut runs: Vec<(&PortConfig, &PortConfig)> = Vec::new();
    for p in ps {
        if let Some((first, last)) = runs.last_mut() {
            let next = |a: u16, b: u16| u32::from(a) + 1 == u32::from(b);
            if first.published_port != 0
                && p.protocol == last.protocol
                && p.publish_mode == last.publish_mode
                && next(last.published_port, p.published_port)
                && next(last.target_port, p.target_port)
            {
                *last = p;
                continue;
            }
        }
        runs.push((p, p));
    }
    runs.iter()
        .map(|(a, b)| {
            if a == b {
                port_text(a)
            } else {
                format!(
                    "*:{}-{}->{}-{}/{}",
                    a.published_port,
                    b.published_port,
                    a.target_port,
                    b.target_port,
                    a.protocol.as_str()
                )
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn port_json(p: &PortConfig) -> Value {
    json!({
        "Protocol": p.protocol.as_str(),
        "TargetPort": p.target_port,
        "PublishedPort": p.published_port,
        "PublishMode": kebab(&p.publish_mode),
    })
}

/// `Endpoint` of `service inspect`, shaped like Docker's: the spec (mode, ports as asked), the
/// resolved ports and a virtual IP per network.
pub fn endpoint_json(v: &ServiceView) -> Value {
    let mut spec = serde_json::Map::new();
    spec.insert("Mode".into(), json!(kebab(&v.spec.endpoint.mode)));
    if !v.spec.endpoint.ports.is_empty() {
        let ports: Vec<Value> = v.spec.endpoint.ports.iter().map(port_json).collect();
        spec.insert("Ports".into(), Value::Array(ports));
    }
    let mut e = serde_json::Map::new();
    e.insert("Spec".into(), Value::Object(spec));
    if !v.endpoint.ports.is_empty() {
        let ports: Vec<Value> = v.endpoint.ports.iter().map(port_json).collect();
        e.insert("Ports".into(), Value::Array(ports));
    }
    if !v.endpoint.virtual_ips.is_empty() {
        let vips: Vec<Value> = v
            .endpoint
            .virtual_ips
            .iter()
            .map(|vip| json!({"NetworkID": vip.network_id, "Addr": vip.addr}))
            .collect();
        e.insert("VirtualIPs".into(), Value::Array(vips));
    }
    Value::Object(e)
}

/// `service ls` rows (table cells and JSON line each), sorted by name.
pub fn ls_rows(views: &[ServiceView]) -> Vec<(Vec<String>, String)> {
    let mut vs: Vec<&ServiceView> = views.iter().collect();
    vs.sort_by(|a, b| a.spec.name.cmp(&b.spec.name).then(a.id.cmp(&b.id)));
    vs.into_iter()
        .map(|v| {
            let cells = vec![
                short_id(&v.id),
                v.spec.name.clone(),
                v.spec.mode.name().to_string(),
                replicas_text(v),
                v.spec.task.image.clone(),
                ports_text(service_ports(v)),
            ];
            let j = json_line(vec![
                ("ID", json!(cells[0])),
                ("Name", json!(cells[1])),
                ("Mode", json!(cells[2])),
                ("Replicas", json!(cells[3])),
                ("Image", json!(cells[4])),
                ("Ports", json!(cells[5])),
            ]);
            (cells, j)
        })
        .collect()
}

pub(super) fn fmt_cpus(nano: u64) -> String {
    let s = format!("{:.9}", nano as f64 / 1e9);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

pub(crate) fn fmt_ts(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(crate) fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// `service ls`.
pub(super) async fn ls(c: &Client, a: crate::output::ListArgs) -> Result<(), CliError> {
    let f = crate::filter::Filters::parse(&a.filter, &LS_FILTERS)?;
    let views: Vec<ServiceView> = c
        .list_services()
        .await?
        .into_iter()
        .filter(|v| service_matches(&f, v))
        .collect();
    print_ls(&views, a.format, a.quiet);
    Ok(())
}

/// The filters `service ls` takes.
pub const LS_FILTERS: [&str; 4] = ["id", "name", "label", "mode"];

/// Whether service `v` passes `service ls`'s filters.
pub fn service_matches(f: &crate::filter::Filters, v: &ServiceView) -> bool {
    f.id(&v.id)
        && f.name(&v.spec.name)
        && f.labels("label", &v.spec.labels)
        // As `--mode` names it: "replicated job" is `replicated-job`.
        && f.any("mode", |m| v.spec.mode.name().replace(' ', "-") == m)
}

/// `service ls`'s output for `views` (also `stack services`).
pub fn print_ls(views: &[ServiceView], format: Format, quiet: bool) {
    let rows = ls_rows(views);
    if quiet {
        for (cells, _) in &rows {
            println!("{}", cells[0]);
        }
        return;
    }
    print_rows(&LS_HEADERS, rows, format);
}
