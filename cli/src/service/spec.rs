//! Flags → spec: what `service create` sends and how `service update` edits the current spec.

use std::collections::{BTreeMap, HashSet};

use proto::api::NetworkView;
use proto::spec::{
    DnsConfig, EndpointMode, EndpointSpec, NetworkAttachmentConfig, Placement, PortConfig,
    PublishMode, Resources, RestartPolicy, ServiceMode, ServiceSpec, TaskSpec, UpdateConfig,
};

use super::apply::apply_flags;
use super::flags::{CreateArgs, ModeFlag, UpdateArgs};
use super::parse::{check_env, env_key, parse_label};
use super::ports::PortMatch;
use super::render::port_text;

/// Remove the variables named in `rm` (by key), then add or replace those in `add`.
pub fn edit_env(env: &mut Vec<String>, add: &[String], rm: &[String]) -> Result<(), String> {
    for e in add {
        check_env("--env-add", e)?;
    }
    let rm_keys: HashSet<&str> = rm.iter().map(|r| env_key(r)).collect();
    env.retain(|e| !rm_keys.contains(env_key(e)));
    for a in add {
        match env.iter_mut().find(|e| env_key(e) == env_key(a)) {
            Some(e) => *e = a.clone(),
            None => env.push(a.clone()),
        }
    }
    Ok(())
}

/// The variables of an `--env-file`, as Docker reads one: `KEY=VALUE` lines taken as they
/// are, a bare `KEY` with this process's value (left out when unset), blank lines and lines
/// starting with `#` skipped.
pub fn read_env_file(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--env-file {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = match line.split_once('=') {
            Some(_) => line.to_string(),
            None => match std::env::var(line.trim_end()) {
                Ok(v) => format!("{}={v}", line.trim_end()),
                Err(_) => continue,
            },
        };
        check_env("--env-file", &entry)
            .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        out.push(entry);
    }
    Ok(out)
}

fn norm(s: &str) -> String {
    s.split_whitespace().collect()
}

/// Append the entries in `add` not there yet, then remove those in `rm` (spaces ignored), as
/// Docker does for constraints.
pub fn edit_list(list: &mut Vec<String>, add: &[String], rm: &[String]) {
    for a in add {
        if !list.iter().any(|c| norm(c) == norm(a)) {
            list.push(a.clone());
        }
    }
    let rm: HashSet<String> = rm.iter().map(|r| norm(r)).collect();
    list.retain(|c| !rm.contains(&norm(c)));
}

/// `--host-rm` then `--host-add` on a spec's hosts lines (`IP NAME`): a removal `HOST:IP`
/// takes that line, `HOST` every line naming it; an addition already there is not doubled.
pub fn edit_hosts(hosts: &mut Vec<String>, add: &[String], rm: &[String]) {
    for r in rm {
        let (name, ip) = match r.split_once([':', '=']) {
            Some((n, ip)) => (n, Some(ip.trim_start_matches('[').trim_end_matches(']'))),
            None => (r.as_str(), None),
        };
        hosts.retain(|h| {
            let mut words = h.split_whitespace();
            let addr = words.next().unwrap_or_default();
            let named = words.any(|w| w == name);
            !(named && ip.is_none_or(|ip| ip == addr))
        });
    }
    for a in add {
        if !hosts.contains(a) {
            hosts.push(a.clone());
        }
    }
}

/// `--ulimit-rm NAME` then `--ulimit-add NAME=…` (one limit a name, the last one given).
pub fn edit_ulimits(
    ulimits: &mut Vec<proto::spec::Ulimit>,
    add: &[proto::spec::Ulimit],
    rm: &[String],
) {
    ulimits.retain(|u| !rm.iter().any(|r| r.trim().eq_ignore_ascii_case(&u.name)));
    for a in add {
        match ulimits.iter_mut().find(|u| u.name == a.name) {
            Some(u) => *u = a.clone(),
            None => ulimits.push(a.clone()),
        }
    }
}

/// Publishing rules that can be checked without the cluster: one service publishes a port
/// (and protocol) once, and DNS round robin has no VIP for the routing mesh to balance on.
pub fn check_endpoint(e: &EndpointSpec) -> Result<(), String> {
    let mut seen = HashSet::new();
    for p in &e.ports {
        if p.published_port != 0 && !seen.insert((p.published_port, p.protocol)) {
            return Err(format!(
                "port {}/{} is published more than once",
                p.published_port,
                p.protocol.as_str()
            ));
        }
        if e.mode == EndpointMode::Dnsrr && p.publish_mode == PublishMode::Ingress {
            return Err(format!(
                "port {} is published in ingress mode, which dnsrr cannot serve: publish it with mode=host or use --endpoint-mode vip",
                port_text(p)
            ));
        }
    }
    Ok(())
}

/// Attach `add` to the task's networks (refusing one it is already on) after detaching those
/// named in `rm`; names, ids and id prefixes are compared through `nets`.
pub fn edit_networks(
    list: &mut Vec<NetworkAttachmentConfig>,
    add: &[NetworkAttachmentConfig],
    rm: &[String],
    nets: &[NetworkView],
) -> Result<(), String> {
    let canon = |s: &str| crate::network::canonical(nets, s);
    let rm: HashSet<String> = rm.iter().map(|r| canon(r)).collect();
    list.retain(|n| !rm.contains(&canon(&n.target)));
    for a in add {
        if list.iter().any(|n| canon(&n.target) == canon(&a.target)) {
            return Err(format!(
                "service is already attached to network {}",
                a.target
            ));
        }
        list.push(a.clone());
    }
    Ok(())
}

/// Remove the ports `rm` matches, then add those in `add`: one already there is kept, one
/// publishing the same port and protocol replaces the old.
pub fn edit_ports(ports: &mut Vec<PortConfig>, add: &[PortConfig], rm: &[PortMatch]) {
    ports.retain(|p| !rm.iter().any(|m| m.matches(p)));
    for a in add {
        if ports.contains(a) {
            continue;
        }
        if a.published_port != 0 {
            ports.retain(|p| !(p.published_port == a.published_port && p.protocol == a.protocol));
        }
        ports.push(a.clone());
    }
}

fn check_networks(list: &[NetworkAttachmentConfig]) -> Result<(), String> {
    let mut seen = HashSet::new();
    for n in list {
        if !seen.insert(n.target.as_str()) {
            return Err(format!("network {} is given more than once", n.target));
        }
    }
    Ok(())
}

/// Add or replace `add` (by key), after removing `rm`.
fn edit_keyed<T: Clone>(list: &mut Vec<T>, add: &[T], rm: &[String], key: impl Fn(&T) -> &str) {
    list.retain(|x| !rm.iter().any(|r| r == key(x)));
    for a in add {
        list.retain(|x| key(x) != key(a));
        list.push(a.clone());
    }
}

/// The spec `service create` sends: Swarm's defaults, then the flags.
pub fn build_spec(a: &CreateArgs, name: String) -> Result<ServiceSpec, String> {
    let mode = match a.mode.unwrap_or(ModeFlag::Replicated) {
        ModeFlag::Replicated => ServiceMode::Replicated { replicas: 1 },
        ModeFlag::Global => ServiceMode::Global,
        ModeFlag::ReplicatedJob => ServiceMode::ReplicatedJob {
            max_concurrent: 1,
            total_completions: 1,
        },
        ModeFlag::GlobalJob => ServiceMode::GlobalJob,
    };
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        let (k, v) = parse_label("--label", l)?;
        labels.insert(k, v);
    }
    let mut container_labels = BTreeMap::new();
    for l in &a.container_labels {
        let (k, v) = parse_label("--container-label", l)?;
        container_labels.insert(k, v);
    }
    for e in &a.env {
        check_env("--env", e)?;
    }
    let mut env = Vec::new();
    for f in &a.env_file {
        env.extend(read_env_file(f)?);
    }
    edit_env(&mut env, &a.env, &[])?;
    // As Docker: the words after the image replace the image's CMD; --entrypoint its
    // ENTRYPOINT.
    let command = Vec::new();
    let args = a.command.clone();
    let mut spec = ServiceSpec {
        name,
        labels,
        mode,
        task: TaskSpec {
            image: a.image.clone(),
            command,
            args,
            env,
            resources: Resources::default(),
            restart: RestartPolicy::default(),
            placement: Placement {
                constraints: a.constraints.clone(),
                preferences: a.placement_prefs.clone(),
                max_replicas: 0,
            },
            stop_grace_period_ms: 10_000,
            stop_signal: String::new(),
            force_update: 0,
            mounts: a.mounts.clone(),
            secrets: a.secrets.clone(),
            configs: a.configs.clone(),
            networks: a.networks.clone(),
            dns: DnsConfig {
                nameservers: dedup(&a.dns),
                search: dedup(&a.dns_search),
                options: dedup(&a.dns_option),
            },
            hosts: dedup(&a.hosts),
            read_only: a.read_only,
            init: a.init,
            container_labels,
            cap_add: dedup(&a.cap_add),
            cap_drop: dedup(&a.cap_drop),
            sysctls: a.sysctls.iter().cloned().collect(),
            ulimits: {
                let mut u = Vec::new();
                edit_ulimits(&mut u, &a.ulimits, &[]);
                u
            },
            ..Default::default()
        },
        update: UpdateConfig::default(),
        rollback: UpdateConfig::default(),
        endpoint: EndpointSpec::default(),
    };
    check_networks(&spec.task.networks)?;
    for p in a.publish.iter().flat_map(|p| p.0.iter()) {
        // Given twice: once. Two ports on one published port: refused by check_endpoint.
        if !spec.endpoint.ports.contains(p) {
            spec.endpoint.ports.push(p.clone());
        }
    }
    apply_flags(&mut spec, &a.flags)?;
    check_endpoint(&spec.endpoint)?;
    // Docker: a replicated job without --replicas completes as many tasks as run at once.
    if let ServiceMode::ReplicatedJob {
        max_concurrent,
        total_completions,
    } = &mut spec.mode
    {
        if a.flags.replicas.is_none() {
            *total_completions = *max_concurrent;
        }
    }
    Ok(spec)
}

fn dedup(v: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for x in v {
        if !out.contains(x) {
            out.push(x.clone());
        }
    }
    out
}

/// Whether an update names networks, so that `nets` must be fetched for [`update_spec`].
pub fn update_needs_networks(a: &UpdateArgs) -> bool {
    !a.network_add.is_empty() || !a.network_rm.is_empty()
}

/// The spec `service update` sends: the current one with the flags applied. `nets` (the swarm's
/// networks) resolves the names of `--network-add/rm` to the ids the stored spec holds.
pub fn update_spec(
    mut spec: ServiceSpec,
    a: &UpdateArgs,
    nets: &[NetworkView],
) -> Result<ServiceSpec, String> {
    if let Some(img) = &a.image {
        if img.trim().is_empty() {
            return Err("invalid argument \"\" for \"--image\" flag: empty image".into());
        }
        spec.task.image = img.clone();
    }
    if let Some(args) = &a.args {
        spec.task.args = args.split_whitespace().map(String::from).collect();
    }
    edit_env(&mut spec.task.env, &a.env_add, &a.env_rm)?;
    edit_keyed(&mut spec.task.mounts, &a.mount_add, &a.mount_rm, |m| {
        m.target.as_str()
    });
    edit_keyed(&mut spec.task.secrets, &a.secret_add, &a.secret_rm, |r| {
        r.name.as_str()
    });
    edit_keyed(&mut spec.task.configs, &a.config_add, &a.config_rm, |r| {
        r.name.as_str()
    });
    for k in &a.label_rm {
        spec.labels.remove(env_key(k));
    }
    for k in &a.container_label_rm {
        spec.task.container_labels.remove(env_key(k));
    }
    for l in &a.container_label_add {
        let (k, v) = parse_label("--container-label-add", l)?;
        spec.task.container_labels.insert(k, v);
    }
    for l in &a.label_add {
        let (k, v) = parse_label("--label-add", l)?;
        spec.labels.insert(k, v);
    }
    edit_list(
        &mut spec.task.placement.constraints,
        &a.constraint_add,
        &a.constraint_rm,
    );
    edit_list(
        &mut spec.task.placement.preferences,
        &a.placement_pref_add,
        &a.placement_pref_rm,
    );
    edit_networks(&mut spec.task.networks, &a.network_add, &a.network_rm, nets)?;
    edit_ports(
        &mut spec.endpoint.ports,
        &a.publish_add
            .iter()
            .flat_map(|p| p.0.clone())
            .collect::<Vec<_>>(),
        &a.publish_rm
            .iter()
            .flat_map(|p| p.0.clone())
            .collect::<Vec<_>>(),
    );
    let dns = &mut spec.task.dns;
    edit_list(&mut dns.nameservers, &a.dns_add, &a.dns_rm);
    edit_list(&mut dns.search, &a.dns_search_add, &a.dns_search_rm);
    edit_list(&mut dns.options, &a.dns_option_add, &a.dns_option_rm);
    edit_hosts(&mut spec.task.hosts, &a.host_add, &a.host_rm);
    let t = &mut spec.task;
    if let Some(init) = a.init {
        t.init = init;
    }
    if let Some(ro) = a.read_only {
        t.read_only = ro;
    }
    // As Docker: an added capability is no longer dropped, a dropped one no longer added.
    t.cap_drop.retain(|c| !a.cap_add.contains(c));
    t.cap_add.retain(|c| !a.cap_drop.contains(c));
    edit_list(&mut t.cap_add, &a.cap_add, &[]);
    edit_list(&mut t.cap_drop, &a.cap_drop, &[]);
    for k in &a.sysctl_rm {
        t.sysctls.remove(k.trim());
    }
    t.sysctls.extend(a.sysctl_add.iter().cloned());
    edit_ulimits(&mut t.ulimits, &a.ulimit_add, &a.ulimit_rm);
    apply_flags(&mut spec, &a.flags)?;
    check_endpoint(&spec.endpoint)?;
    if a.force {
        spec.task.force_update += 1;
    }
    Ok(spec)
}

/// The spec with its replicas (or job completions) set, or the error Docker gives.
pub fn scale_spec(mut spec: ServiceSpec, n: u64) -> Result<ServiceSpec, String> {
    match &mut spec.mode {
        ServiceMode::Replicated { replicas } => *replicas = n,
        ServiceMode::ReplicatedJob {
            total_completions, ..
        } => *total_completions = n,
        _ => return Err("scale can only be used with replicated or replicated-job mode".into()),
    }
    Ok(spec)
}
