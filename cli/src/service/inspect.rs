//! `service inspect`: the service as the daemon returned it (JSON) or, with `--pretty`, as
//! Docker describes it.

use proto::api::{NetworkView, ServiceView};
use proto::spec::{DnsConfig, Resources, ServiceMode};

use crate::client::Client;
use crate::commands::CliError;
use crate::output::title;
use crate::units::{fmt_bytes, fmt_duration_ms};

use super::render::{fmt_cpus, fmt_ts, kebab, service_ports};

/// `service inspect --pretty`; `nets` names the networks the spec holds by id.
pub fn pretty_service(v: &ServiceView, nets: &[NetworkView]) -> String {
    use std::fmt::Write as _;
    let s = &v.spec;
    let t = &s.task;
    let mut o = String::new();
    let _ = writeln!(o, "ID:\t\t{}", v.id);
    let _ = writeln!(o, "Name:\t\t{}", s.name);
    if !s.labels.is_empty() {
        let _ = writeln!(o, "Labels:");
        for (k, val) in &s.labels {
            let _ = writeln!(o, " {k}={val}");
        }
    }
    match &s.mode {
        ServiceMode::Replicated { replicas } => {
            let _ = writeln!(o, "Service Mode:\tReplicated\n Replicas:\t{replicas}");
        }
        ServiceMode::Global => {
            let _ = writeln!(o, "Service Mode:\tGlobal");
        }
        ServiceMode::ReplicatedJob {
            max_concurrent,
            total_completions,
        } => {
            let _ = writeln!(
                o,
                "Service Mode:\tReplicated job\n Max Concurrent:\t{max_concurrent}\n Total Completions:\t{total_completions}"
            );
        }
        ServiceMode::GlobalJob => {
            let _ = writeln!(o, "Service Mode:\tGlobal job");
        }
    }
    let _ = writeln!(
        o,
        "Tasks:\t\t{} running, {} desired{}",
        v.running,
        v.desired,
        if s.mode.is_job() {
            format!(", {} completed", v.completed)
        } else {
            String::new()
        }
    );
    let p = &t.placement;
    if !p.constraints.is_empty() || !p.preferences.is_empty() || p.max_replicas > 0 {
        let _ = writeln!(o, "Placement:");
        if !p.constraints.is_empty() {
            let _ = writeln!(o, " Constraints:\t[{}]", p.constraints.join(" "));
        }
        if !p.preferences.is_empty() {
            let _ = writeln!(o, " Preferences:");
            for pref in &p.preferences {
                let (k, val) = pref.split_once('=').unwrap_or(("spread", pref));
                let _ = writeln!(o, "  {}: {val}", title(k));
            }
        }
        if p.max_replicas > 0 {
            let _ = writeln!(o, " Max Replicas Per Node:\t{}", p.max_replicas);
        }
    }
    for (label, c, order) in [
        ("UpdateConfig", &s.update, "Update order"),
        ("RollbackConfig", &s.rollback, "Rollback order"),
    ] {
        let _ = writeln!(o, "{label}:\n Parallelism:\t{}", c.parallelism);
        if c.delay_ms > 0 {
            let _ = writeln!(o, " Delay:\t\t{}", fmt_duration_ms(c.delay_ms));
        }
        let _ = writeln!(o, " On failure:\t{}", kebab(&c.failure_action));
        let _ = writeln!(o, " Monitoring Period: {}", fmt_duration_ms(c.monitor_ms));
        let _ = writeln!(o, " Max failure ratio: {}", c.max_failure_ratio);
        let _ = writeln!(o, " {order}:    {}", kebab(&c.order));
        let _ = writeln!(
            o,
            " Task deadline:\t{}",
            if c.task_deadline_ms == 0 {
                "none".to_string()
            } else {
                fmt_duration_ms(c.task_deadline_ms)
            }
        );
    }
    let _ = writeln!(o, "ContainerSpec:\n Image:\t\t{}", t.image);
    if !t.command.is_empty() {
        let _ = writeln!(o, " Command:\t{}", t.command.join(" "));
    }
    if !t.args.is_empty() {
        let _ = writeln!(o, " Args:\t\t{}", t.args.join(" "));
    }
    if !t.env.is_empty() {
        let _ = writeln!(o, " Env:\t\t{}", t.env.join(" "));
    }
    if !t.workdir.is_empty() {
        let _ = writeln!(o, " Dir:\t\t{}", t.workdir);
    }
    if !t.user.is_empty() {
        let _ = writeln!(o, " User:\t\t{}", t.user);
    }
    if !t.hostname.is_empty() {
        let _ = writeln!(o, " Hostname:\t{}", t.hostname);
    }
    if t.init {
        let _ = writeln!(o, " Init:\t\ttrue");
    }
    if t.read_only {
        let _ = writeln!(o, " Read Only:\ttrue");
    }
    if !t.cap_add.is_empty() || !t.cap_drop.is_empty() {
        let _ = writeln!(o, " Capabilities:");
        if !t.cap_add.is_empty() {
            let _ = writeln!(o, "  Add: {}", t.cap_add.join(", "));
        }
        if !t.cap_drop.is_empty() {
            let _ = writeln!(o, "  Drop: {}", t.cap_drop.join(", "));
        }
    }
    if !t.container_labels.is_empty() {
        let _ = writeln!(o, " Labels:");
        for (k, val) in &t.container_labels {
            let _ = writeln!(o, "  {k}={val}");
        }
    }
    let _ = writeln!(
        o,
        " StopGracePeriod: {}",
        fmt_duration_ms(t.stop_grace_period_ms)
    );
    if !t.stop_signal.is_empty() {
        let _ = writeln!(o, " StopSignal:\t{}", t.stop_signal);
    }
    if let Some(h) = t.healthcheck.as_ref().filter(|h| !h.test.is_empty()) {
        let _ = writeln!(o, " Healthcheck:\t{}", h.test.join(" "));
    }
    if !t.mounts.is_empty() {
        let _ = writeln!(o, "Mounts:");
        for m in &t.mounts {
            let _ = writeln!(
                o,
                " Target:\t{}\n  Source:\t{}\n  ReadOnly:\t{}\n  Type:\t\t{}",
                m.target,
                m.source,
                m.readonly,
                kebab(&m.kind)
            );
        }
    }
    for (title_text, refs) in [("Configs", &t.configs), ("Secrets", &t.secrets)] {
        if refs.is_empty() {
            continue;
        }
        let _ = writeln!(o, "{title_text}:");
        for f in refs {
            let target = if f.target.is_empty() {
                &f.name
            } else {
                &f.target
            };
            let _ = writeln!(o, " Target:\t{target}\n  Source:\t{}", f.name);
        }
    }
    if let Some(d) = &t.log_driver {
        let _ = writeln!(o, "Log Driver:\n Name:\t\t{}", d.name);
        if !d.options.is_empty() {
            let _ = writeln!(o, " LogOpts:");
            for (k, val) in &d.options {
                let _ = writeln!(o, "  {k}:\t{val}");
            }
        }
    }
    let r = &t.resources;
    if *r != Resources::default() {
        let _ = writeln!(o, "Resources:");
        if r.reserve_nano_cpus > 0 || r.reserve_memory > 0 {
            let _ = writeln!(o, " Reservations:");
            if r.reserve_nano_cpus > 0 {
                let _ = writeln!(o, "  CPU:\t\t{}", fmt_cpus(r.reserve_nano_cpus));
            }
            if r.reserve_memory > 0 {
                let _ = writeln!(o, "  Memory:\t{}", fmt_bytes(r.reserve_memory));
            }
        }
        if r.limit_nano_cpus > 0 || r.limit_memory > 0 || r.limit_pids > 0 {
            let _ = writeln!(o, " Limits:");
            if r.limit_nano_cpus > 0 {
                let _ = writeln!(o, "  CPU:\t\t{}", fmt_cpus(r.limit_nano_cpus));
            }
            if r.limit_memory > 0 {
                let _ = writeln!(o, "  Memory:\t{}", fmt_bytes(r.limit_memory));
            }
            if r.limit_pids > 0 {
                let _ = writeln!(o, "  PIDs:\t\t{}", r.limit_pids);
            }
        }
    }
    if !t.networks.is_empty() {
        let names: Vec<String> = t
            .networks
            .iter()
            .map(|n| crate::network::display_name(nets, &n.target))
            .collect();
        let _ = writeln!(o, "Networks:\t{}", names.join(" "));
    }
    let _ = writeln!(o, "Endpoint Mode:\t{}", kebab(&s.endpoint.mode));
    let ports = service_ports(v);
    if !ports.is_empty() {
        let _ = writeln!(o, "Ports:");
        for p in ports {
            let _ = writeln!(
                o,
                " PublishedPort = {}\n  Protocol = {}\n  TargetPort = {}\n  PublishMode = {}",
                p.published_port,
                p.protocol.as_str(),
                p.target_port,
                kebab(&p.publish_mode)
            );
        }
    }
    let dns = &t.dns;
    if *dns != DnsConfig::default() {
        let _ = writeln!(o, "DNS:");
        if !dns.nameservers.is_empty() {
            let _ = writeln!(o, " Nameservers:\t{}", dns.nameservers.join(" "));
        }
        if !dns.search.is_empty() {
            let _ = writeln!(o, " Search:\t{}", dns.search.join(" "));
        }
        if !dns.options.is_empty() {
            let _ = writeln!(o, " Options:\t{}", dns.options.join(" "));
        }
    }
    let rp = &t.restart;
    let _ = writeln!(
        o,
        "RestartPolicy:\n Condition:\t{}\n Delay:\t\t{}\n MaxAttempts:\t{}",
        kebab(&rp.condition),
        fmt_duration_ms(rp.delay_ms),
        rp.max_attempts
    );
    if rp.window_ms > 0 {
        let _ = writeln!(o, " Window:\t{}", fmt_duration_ms(rp.window_ms));
    }
    if let Some(u) = &v.update_status {
        let _ = writeln!(o, "UpdateStatus:\n State:\t\t{}", u.state);
        if u.started_ms > 0 {
            let _ = writeln!(o, " Started:\t{}", fmt_ts(u.started_ms));
        }
        if u.completed_ms > 0 {
            let _ = writeln!(o, " Completed:\t{}", fmt_ts(u.completed_ms));
        }
        let _ = writeln!(o, " Message:\t{}", u.message);
    }
    o
}

/// `service inspect [--pretty] SERVICE…`.
pub(super) async fn inspect(
    c: &Client,
    pretty: bool,
    format: &str,
    services: &[String],
) -> Result<(), CliError> {
    if !matches!(format, "" | "json") {
        crate::template::Template::parse(format).map_err(|e| CliError(format!("Error: {e}")))?;
    }
    let mut found = Vec::new();
    for s in services {
        found.push(c.get_service(s).await?);
    }
    if pretty {
        // Network names are a nicety: without them (an older manager) show the ids.
        let nets = if found.iter().any(|v| !v.spec.task.networks.is_empty()) {
            c.list_networks().await.unwrap_or_default()
        } else {
            Vec::new()
        };
        let outs: Vec<String> = found.iter().map(|v| pretty_service(v, &nets)).collect();
        print!("{}", outs.join("\n\n"));
    } else {
        let arr: Vec<_> = found.iter().map(super::docker_json::service_json).collect();
        crate::output::print_inspect(arr, format).map_err(|e| CliError(format!("Error: {e}")))?;
    }
    Ok(())
}
