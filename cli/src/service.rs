//! `shoal service …`: Docker's service verbs, flags and output shapes.
//!
//! The flag → spec conversion ([`build_spec`], [`update_spec`]), the list renderings
//! ([`ls_rows`], [`ps_rows`]) and the convergence logic ([`Watch`]) are pure functions; the
//! async functions at the bottom only talk to the daemon and print.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::{Args, Subcommand};
use proto::api::{NetworkView, ServiceView, TaskView, UpdateStatusView};
use proto::pb;
use proto::pb::control_client::ControlClient;
use proto::spec::{
    DnsConfig, EndpointMode, EndpointSpec, FailureAction, FileRef, HealthCheck, Mount, MountKind,
    NetworkAttachmentConfig, Placement, PortConfig, PortProtocol, PublishMode, Resources,
    RestartCondition, RestartPolicy, ServiceMode, ServiceSpec, TaskSpec, TaskState, UpdateConfig,
    UpdateOrder,
};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::commands::{retry, CliError};
use crate::output::{json_line, table, title, Format};

// ---------------------------------------------------------------- flags

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Create a new service.
    Create(Box<CreateArgs>),
    /// Fetch the logs of a service or task.
    Logs(crate::logs::LogsArgs),
    /// List services.
    #[command(alias = "list")]
    Ls {
        /// Format output: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
        /// Only display IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List the tasks of one or more services.
    Ps(Box<PsArgs>),
    /// Display detailed information on one or more services.
    Inspect {
        /// Print the information in a human friendly format.
        #[arg(long)]
        pretty: bool,
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
    },
    /// Scale one or multiple replicated services.
    Scale {
        /// Exit immediately instead of waiting for the service to converge.
        #[arg(short, long)]
        detach: bool,
        #[arg(required = true, value_name = "SERVICE=REPLICAS")]
        scales: Vec<String>,
    },
    /// Update a service.
    Update(Box<UpdateArgs>),
    /// Revert changes to a service's configuration.
    Rollback {
        /// Exit immediately instead of waiting for the service to converge.
        #[arg(short, long)]
        detach: bool,
        /// Suppress progress output.
        #[arg(short, long)]
        quiet: bool,
        service: String,
    },
    /// Remove one or more services.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
    },
}

/// The flags `create` and `update` share. Everything is optional so that `update` changes only
/// what was given; `create` fills in Swarm's defaults.
#[derive(Args, Debug, Default, Clone)]
pub struct SpecFlags {
    /// Number of tasks (replicated) or of completions (replicated-job).
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Number of job tasks to run at once (replicated-job; default 1).
    #[arg(long)]
    pub max_concurrent: Option<u64>,
    /// Maximum number of tasks per node (default 0 = unlimited).
    #[arg(long)]
    pub max_replicas: Option<u64>,
    /// Reserve CPUs, e.g. 0.5.
    #[arg(long, value_parser = parse_cpu, value_name = "CPUS")]
    pub reserve_cpu: Option<u64>,
    /// Reserve memory, e.g. 512M.
    #[arg(long, value_parser = parse_size, value_name = "BYTES")]
    pub reserve_memory: Option<u64>,
    /// Limit CPUs.
    #[arg(long, value_parser = parse_cpu, value_name = "CPUS")]
    pub limit_cpu: Option<u64>,
    /// Limit memory.
    #[arg(long, value_parser = parse_size, value_name = "BYTES")]
    pub limit_memory: Option<u64>,
    /// Limit the number of processes (0 = unlimited).
    #[arg(long, value_name = "N")]
    pub limit_pids: Option<u64>,
    /// Restart when condition is met: none, on-failure or any (default any).
    #[arg(long, value_parser = parse_restart_condition, value_name = "CONDITION")]
    pub restart_condition: Option<RestartCondition>,
    /// Delay between restart attempts (default 5s).
    #[arg(long, value_parser = parse_go_duration, value_name = "DUR")]
    pub restart_delay: Option<Duration>,
    /// Maximum number of restarts before giving up (default 0 = unlimited).
    #[arg(long, value_name = "N")]
    pub restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy (default: unbounded).
    #[arg(long, value_parser = parse_go_duration, value_name = "DUR")]
    pub restart_window: Option<Duration>,
    /// Maximum number of tasks updated simultaneously (0 to update all at once; default 1).
    #[arg(long, value_name = "N")]
    pub update_parallelism: Option<u64>,
    /// Delay between updates (default 0s).
    #[arg(long, value_parser = parse_go_duration, value_name = "DUR")]
    pub update_delay: Option<Duration>,
    /// Update order: stop-first or start-first (default stop-first).
    #[arg(long, value_parser = parse_order, value_name = "ORDER")]
    pub update_order: Option<UpdateOrder>,
    /// Action on update failure: pause, continue or rollback (default pause).
    #[arg(long, value_parser = parse_update_failure_action, value_name = "ACTION")]
    pub update_failure_action: Option<FailureAction>,
    /// Duration after each task update to monitor for failure (default 5s).
    #[arg(long, value_parser = parse_go_duration, value_name = "DUR")]
    pub update_monitor: Option<Duration>,
    /// Failure rate to tolerate during an update (default 0).
    #[arg(long, value_parser = parse_ratio, value_name = "F")]
    pub update_max_failure_ratio: Option<f64>,
    /// How long a new task may take to start before it counts as failed (default 1m; 0 = no
    /// deadline).
    #[arg(long, value_parser = parse_go_duration, value_name = "DUR")]
    pub update_task_deadline: Option<Duration>,
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once; default 1).
    #[arg(long, value_name = "N")]
    pub rollback_parallelism: Option<u64>,
    /// Delay between task rollbacks (default 0s).
    #[arg(long, value_parser = parse_go_duration, value_name = "DUR")]
    pub rollback_delay: Option<Duration>,
    /// Rollback order: stop-first or start-first (default stop-first).
    #[arg(long, value_parser = parse_order, value_name = "ORDER")]
    pub rollback_order: Option<UpdateOrder>,
    /// Action on rollback failure: pause or continue (default pause).
    #[arg(long, value_parser = parse_rollback_failure_action, value_name = "ACTION")]
    pub rollback_failure_action: Option<FailureAction>,
    /// Duration after each task rollback to monitor for failure (default 5s).
    #[arg(long, value_parser = parse_go_duration, value_name = "DUR")]
    pub rollback_monitor: Option<Duration>,
    /// Failure rate to tolerate during a rollback (default 0).
    #[arg(long, value_parser = parse_ratio, value_name = "F")]
    pub rollback_max_failure_ratio: Option<f64>,
    /// Like --update-task-deadline, for rollbacks.
    #[arg(long, value_parser = parse_go_duration, value_name = "DUR")]
    pub rollback_task_deadline: Option<Duration>,
    /// Time to wait before force killing a container (default 10s).
    #[arg(long, value_parser = parse_go_duration, value_name = "DUR")]
    pub stop_grace_period: Option<Duration>,
    /// Signal to stop the container.
    #[arg(long, value_name = "SIG")]
    pub stop_signal: Option<String>,
    /// Container hostname; templates {{.Service.Name}}, {{.Task.Slot}}, {{.Node.Hostname}}.
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>]).
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image.
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// Command to run to check health.
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h).
    #[arg(long, value_parser = parse_go_duration, value_name = "DUR")]
    pub health_interval: Option<Duration>,
    /// Maximum time to allow one check to run (ms|s|m|h).
    #[arg(long, value_parser = parse_go_duration, value_name = "DUR")]
    pub health_timeout: Option<Duration>,
    /// Consecutive failures needed to report unhealthy.
    #[arg(long, value_name = "N")]
    pub health_retries: Option<u64>,
    /// Start period for the container to initialize before counting retries (ms|s|m|h).
    #[arg(long, value_parser = parse_go_duration, value_name = "DUR")]
    pub health_start_period: Option<Duration>,
    /// Disable any container-specified HEALTHCHECK.
    #[arg(long)]
    pub no_healthcheck: bool,
    /// Endpoint mode: vip (a virtual IP per network) or dnsrr (DNS round robin).
    #[arg(long, value_parser = parse_endpoint_mode, value_name = "MODE")]
    pub endpoint_mode: Option<EndpointMode>,
}

#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// Service name (default: a generated one).
    #[arg(long)]
    pub name: Option<String>,
    /// Service mode: replicated, global, replicated-job or global-job.
    #[arg(long, value_parser = parse_mode, value_name = "MODE")]
    pub mode: Option<ModeFlag>,
    /// Set environment variables (KEY=VALUE).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Service labels (KEY=VALUE).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Placement constraints, e.g. node.role==manager.
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraints: Vec<String>,
    /// Placement preferences: spread=node.labels.KEY.
    #[arg(long = "placement-pref", value_name = "PREF")]
    pub placement_prefs: Vec<String>,
    /// Attach a filesystem mount: type=bind|volume|tmpfs,source=…,target=…[,readonly].
    #[arg(long = "mount", value_parser = parse_mount, value_name = "MOUNT")]
    pub mounts: Vec<Mount>,
    /// Give the service access to a secret: NAME or source=NAME,target=FILE.
    #[arg(long = "secret", value_parser = parse_secret_ref, value_name = "SECRET")]
    pub secrets: Vec<FileRef>,
    /// Give the service access to a config: NAME or source=NAME,target=PATH.
    #[arg(long = "config", value_parser = parse_config_ref, value_name = "CONFIG")]
    pub configs: Vec<FileRef>,
    /// Network attachment: NAME or name=NAME,alias=ALIAS[,alias=…].
    #[arg(long = "network", value_parser = parse_network, value_name = "NETWORK")]
    pub networks: Vec<NetworkAttachmentConfig>,
    /// Publish a port: [PUBLISHED:]TARGET[/PROTO] or
    /// [mode=ingress|host,]published=P,target=T[,protocol=tcp|udp].
    #[arg(short = 'p', long = "publish", value_parser = parse_publish, value_name = "PORT")]
    pub publish: Vec<Published>,
    /// Set custom DNS servers.
    #[arg(long = "dns", value_parser = parse_dns_server, value_name = "IP")]
    pub dns: Vec<String>,
    /// Set custom DNS search domains.
    #[arg(long = "dns-search", value_parser = parse_dns_search, value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// Set DNS options (resolv.conf `options`), e.g. ndots:2.
    #[arg(long = "dns-option", value_parser = parse_dns_option, value_name = "OPTION")]
    pub dns_option: Vec<String>,
    #[command(flatten)]
    pub flags: SpecFlags,
    /// Exit immediately instead of waiting for the service to converge.
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output.
    #[arg(short, long)]
    pub quiet: bool,
    pub image: String,
    /// The command and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct UpdateArgs {
    /// Service image tag.
    #[arg(long)]
    pub image: Option<String>,
    /// Service command args (replaces them; split at whitespace).
    #[arg(long)]
    pub args: Option<String>,
    /// Add or update an environment variable (KEY=VALUE).
    #[arg(long = "env-add", value_name = "KEY=VALUE")]
    pub env_add: Vec<String>,
    /// Remove an environment variable.
    #[arg(long = "env-rm", value_name = "KEY")]
    pub env_rm: Vec<String>,
    /// Add or update a service label (KEY=VALUE).
    #[arg(long = "label-add", value_name = "KEY=VALUE")]
    pub label_add: Vec<String>,
    /// Remove a label by its key.
    #[arg(long = "label-rm", value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// Add or update a placement constraint.
    #[arg(long = "constraint-add", value_name = "EXPR")]
    pub constraint_add: Vec<String>,
    /// Remove a constraint.
    #[arg(long = "constraint-rm", value_name = "EXPR")]
    pub constraint_rm: Vec<String>,
    /// Add a placement preference.
    #[arg(long = "placement-pref-add", value_name = "PREF")]
    pub placement_pref_add: Vec<String>,
    /// Remove a placement preference.
    #[arg(long = "placement-pref-rm", value_name = "PREF")]
    pub placement_pref_rm: Vec<String>,
    /// Add or update a mount on the service.
    #[arg(long = "mount-add", value_parser = parse_mount, value_name = "MOUNT")]
    pub mount_add: Vec<Mount>,
    /// Remove a mount by its target path.
    #[arg(long = "mount-rm", value_name = "TARGET")]
    pub mount_rm: Vec<String>,
    /// Add or update a secret on the service.
    #[arg(long = "secret-add", value_parser = parse_secret_ref, value_name = "SECRET")]
    pub secret_add: Vec<FileRef>,
    /// Remove a secret.
    #[arg(long = "secret-rm", value_name = "NAME")]
    pub secret_rm: Vec<String>,
    /// Add or update a config on the service.
    #[arg(long = "config-add", value_parser = parse_config_ref, value_name = "CONFIG")]
    pub config_add: Vec<FileRef>,
    /// Remove a config.
    #[arg(long = "config-rm", value_name = "NAME")]
    pub config_rm: Vec<String>,
    /// Add a network: NAME or name=NAME,alias=ALIAS[,alias=…].
    #[arg(long = "network-add", value_parser = parse_network, value_name = "NETWORK")]
    pub network_add: Vec<NetworkAttachmentConfig>,
    /// Remove a network by name or id.
    #[arg(long = "network-rm", value_name = "NETWORK")]
    pub network_rm: Vec<String>,
    /// Add or update a published port (the syntax of --publish).
    #[arg(long = "publish-add", value_parser = parse_publish, value_name = "PORT")]
    pub publish_add: Vec<Published>,
    /// Remove a published port: TARGET[/PROTO], PUBLISHED:TARGET[/PROTO] or
    /// published=P[,target=T][,protocol=…][,mode=…].
    #[arg(long = "publish-rm", value_parser = parse_publish_rm, value_name = "PORT")]
    pub publish_rm: Vec<PortMatches>,
    /// Add or update a custom DNS server.
    #[arg(long = "dns-add", value_parser = parse_dns_server, value_name = "IP")]
    pub dns_add: Vec<String>,
    /// Remove a custom DNS server.
    #[arg(long = "dns-rm", value_name = "IP")]
    pub dns_rm: Vec<String>,
    /// Add or update a custom DNS search domain.
    #[arg(long = "dns-search-add", value_parser = parse_dns_search, value_name = "DOMAIN")]
    pub dns_search_add: Vec<String>,
    /// Remove a DNS search domain.
    #[arg(long = "dns-search-rm", value_name = "DOMAIN")]
    pub dns_search_rm: Vec<String>,
    /// Add or update a DNS option.
    #[arg(long = "dns-option-add", value_parser = parse_dns_option, value_name = "OPTION")]
    pub dns_option_add: Vec<String>,
    /// Remove a DNS option.
    #[arg(long = "dns-option-rm", value_name = "OPTION")]
    pub dns_option_rm: Vec<String>,
    #[command(flatten)]
    pub flags: SpecFlags,
    /// Force update even if no changes require it.
    #[arg(long)]
    pub force: bool,
    /// Rollback to previous specification.
    #[arg(long)]
    pub rollback: bool,
    /// Exit immediately instead of waiting for the service to converge.
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output.
    #[arg(short, long)]
    pub quiet: bool,
    pub service: String,
}

#[derive(Args, Debug, Clone)]
pub struct PsArgs {
    /// Do not truncate output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Filter output: desired-state=running|shutdown|accepted, node=NODE.
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Format output: table or json.
    #[arg(long, default_value = "table")]
    pub format: Format,
    /// Only display task IDs.
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeFlag {
    Replicated,
    Global,
    ReplicatedJob,
    GlobalJob,
}

// ---------------------------------------------------------------- value parsers

pub fn parse_mode(s: &str) -> Result<ModeFlag, String> {
    match s {
        "replicated" => Ok(ModeFlag::Replicated),
        "global" => Ok(ModeFlag::Global),
        "replicated-job" => Ok(ModeFlag::ReplicatedJob),
        "global-job" => Ok(ModeFlag::GlobalJob),
        _ => Err(format!(
            "invalid mode {s:?}: use replicated, global, replicated-job or global-job"
        )),
    }
}

pub fn parse_restart_condition(s: &str) -> Result<RestartCondition, String> {
    match s {
        "none" => Ok(RestartCondition::None),
        "on-failure" => Ok(RestartCondition::OnFailure),
        "any" => Ok(RestartCondition::Any),
        _ => Err(format!(
            "invalid restart condition {s:?}: use none, on-failure or any"
        )),
    }
}

pub fn parse_order(s: &str) -> Result<UpdateOrder, String> {
    match s {
        "stop-first" => Ok(UpdateOrder::StopFirst),
        "start-first" => Ok(UpdateOrder::StartFirst),
        _ => Err(format!(
            "invalid order {s:?}: use stop-first or start-first"
        )),
    }
}

pub fn parse_update_failure_action(s: &str) -> Result<FailureAction, String> {
    match s {
        "pause" => Ok(FailureAction::Pause),
        "continue" => Ok(FailureAction::Continue),
        "rollback" => Ok(FailureAction::Rollback),
        _ => Err(format!(
            "invalid failure action {s:?}: use pause, continue or rollback"
        )),
    }
}

pub fn parse_rollback_failure_action(s: &str) -> Result<FailureAction, String> {
    match s {
        "pause" => Ok(FailureAction::Pause),
        "continue" => Ok(FailureAction::Continue),
        _ => Err(format!(
            "invalid failure action {s:?}: use pause or continue"
        )),
    }
}

pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("invalid ratio {s:?}: use a number between 0 and 1")),
    }
}

/// CPUs as a decimal number ("0.5", "2") → nano-CPUs.
pub fn parse_cpu(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid CPU value {s:?}: use e.g. 0.5 or 2");
    let f: f64 = s.trim().parse().map_err(|_| bad())?;
    if !f.is_finite() || !(0.0..=1e9).contains(&f) {
        return Err(bad());
    }
    Ok((f * 1e9).round() as u64)
}

/// Sizes as Docker writes them: `1024` (bytes), `512k`, `512M`, `1.5g`, `1GB`, `2GiB`, `64 m`
/// (binary multiples, case-insensitive).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {s:?}: use e.g. 512M, 1G or a number of bytes");
    let mut t = s.trim().to_ascii_lowercase();
    if t.ends_with('b') {
        t.pop();
    }
    if t.ends_with('i') {
        t.pop();
    }
    let mult: u64 = match t.chars().last() {
        Some('k') => 1 << 10,
        Some('m') => 1 << 20,
        Some('g') => 1 << 30,
        Some('t') => 1 << 40,
        Some('p') => 1 << 50,
        _ => 1,
    };
    if mult != 1 {
        t.pop();
    }
    let num = t.strip_suffix(' ').unwrap_or(&t);
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let n: f64 = num.parse().map_err(|_| bad())?;
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Durations as Go writes them: `5s`, `500ms`, `1m30s`, `1.5h`, `0`.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: use e.g. 5s, 500ms, 1m30s");
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(bad());
    }
    let mut rest = t;
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." {
            return Err(bad());
        }
        let n: f64 = num.parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns: f64 = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total_ns += n * unit_ns;
    }
    if !total_ns.is_finite() || total_ns > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

// ---------------------------------------------------------------- flags → spec

fn ms(d: Duration) -> u64 {
    // Clamped, not truncated: the manager's range check must see a huge value as huge.
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn parse_label(flag: &str, s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.trim().is_empty() {
        return Err(format!(
            "invalid argument {s:?} for \"{flag}\" flag: empty key"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

fn env_key(e: &str) -> &str {
    e.split_once('=').map(|(k, _)| k).unwrap_or(e)
}

fn check_env(flag: &str, e: &str) -> Result<(), String> {
    if env_key(e).trim().is_empty() {
        return Err(format!(
            "invalid argument {e:?} for \"{flag}\" flag: empty variable name"
        ));
    }
    Ok(())
}

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

struct CfgFlags {
    parallelism: Option<u64>,
    delay: Option<Duration>,
    order: Option<UpdateOrder>,
    failure_action: Option<FailureAction>,
    monitor: Option<Duration>,
    max_failure_ratio: Option<f64>,
    task_deadline: Option<Duration>,
}

fn apply_cfg(c: &mut UpdateConfig, f: CfgFlags) {
    if let Some(v) = f.parallelism {
        c.parallelism = v;
    }
    if let Some(v) = f.delay {
        c.delay_ms = ms(v);
    }
    if let Some(v) = f.order {
        c.order = v;
    }
    if let Some(v) = f.failure_action {
        c.failure_action = v;
    }
    if let Some(v) = f.monitor {
        c.monitor_ms = ms(v);
    }
    if let Some(v) = f.max_failure_ratio {
        c.max_failure_ratio = v;
    }
    if let Some(v) = f.task_deadline {
        c.task_deadline_ms = ms(v);
    }
}

/// Apply the flags `create` and `update` share to a spec.
pub fn apply_flags(spec: &mut ServiceSpec, f: &SpecFlags) -> Result<(), String> {
    if let Some(n) = f.replicas {
        match &mut spec.mode {
            ServiceMode::Replicated { replicas } => *replicas = n,
            ServiceMode::ReplicatedJob {
                total_completions, ..
            } => *total_completions = n,
            _ => {
                return Err(
                    "--replicas can only be used with replicated or replicated-job mode".into(),
                )
            }
        }
    }
    if let Some(n) = f.max_concurrent {
        match &mut spec.mode {
            ServiceMode::ReplicatedJob { max_concurrent, .. } => *max_concurrent = n,
            _ => return Err("--max-concurrent can only be used with replicated-job mode".into()),
        }
    }
    if let Some(n) = f.max_replicas {
        if matches!(spec.mode, ServiceMode::Global | ServiceMode::GlobalJob) && n > 0 {
            return Err(
                "--max-replicas can only be used with replicated or replicated-job mode".into(),
            );
        }
        spec.task.placement.max_replicas = n;
    }
    let r = &mut spec.task.resources;
    if let Some(v) = f.reserve_cpu {
        r.reserve_nano_cpus = v;
    }
    if let Some(v) = f.reserve_memory {
        r.reserve_memory = v;
    }
    if let Some(v) = f.limit_cpu {
        r.limit_nano_cpus = v;
    }
    if let Some(v) = f.limit_memory {
        r.limit_memory = v;
    }
    if let Some(v) = f.limit_pids {
        r.limit_pids = v;
    }
    let rp = &mut spec.task.restart;
    if let Some(v) = f.restart_condition {
        rp.condition = v;
    }
    if let Some(v) = f.restart_delay {
        rp.delay_ms = ms(v);
    }
    if let Some(v) = f.restart_max_attempts {
        rp.max_attempts = v;
    }
    if let Some(v) = f.restart_window {
        rp.window_ms = ms(v);
    }
    apply_cfg(
        &mut spec.update,
        CfgFlags {
            parallelism: f.update_parallelism,
            delay: f.update_delay,
            order: f.update_order,
            failure_action: f.update_failure_action,
            monitor: f.update_monitor,
            max_failure_ratio: f.update_max_failure_ratio,
            task_deadline: f.update_task_deadline,
        },
    );
    apply_cfg(
        &mut spec.rollback,
        CfgFlags {
            parallelism: f.rollback_parallelism,
            delay: f.rollback_delay,
            order: f.rollback_order,
            failure_action: f.rollback_failure_action,
            monitor: f.rollback_monitor,
            max_failure_ratio: f.rollback_max_failure_ratio,
            task_deadline: f.rollback_task_deadline,
        },
    );
    if let Some(v) = f.stop_grace_period {
        spec.task.stop_grace_period_ms = ms(v);
    }
    if let Some(v) = &f.stop_signal {
        spec.task.stop_signal = v.clone();
    }
    let t = &mut spec.task;
    if let Some(v) = &f.hostname {
        t.hostname = v.clone();
    }
    if let Some(v) = &f.user {
        t.user = v.clone();
    }
    if let Some(v) = &f.workdir {
        if !v.is_empty() && !v.starts_with('/') {
            return Err(format!(
                "invalid argument \"{v}\" for \"--workdir\" flag: the working directory must be an absolute path"
            ));
        }
        t.workdir = v.clone();
    }
    if let Some(v) = &f.entrypoint {
        t.command = v.split_whitespace().map(String::from).collect();
    }
    apply_health(t, f)?;
    if let Some(m) = f.endpoint_mode {
        spec.endpoint.mode = m;
    }
    Ok(())
}

/// The healthcheck flags: `--no-healthcheck` disables the image's; any other flag edits the
/// service's own check, starting from the image's test when only timings are given.
fn apply_health(t: &mut TaskSpec, f: &SpecFlags) -> Result<(), String> {
    let timing = f.health_interval.is_some()
        || f.health_timeout.is_some()
        || f.health_retries.is_some()
        || f.health_start_period.is_some();
    if f.no_healthcheck {
        if f.health_cmd.is_some() || timing {
            return Err("--no-healthcheck conflicts with --health-* options".into());
        }
        t.healthcheck = Some(HealthCheck {
            test: vec!["NONE".into()],
            ..Default::default()
        });
        return Ok(());
    }
    if f.health_cmd.is_none() && !timing {
        return Ok(());
    }
    let mut h = t.healthcheck.take().unwrap_or_default();
    if h.test.first().map(String::as_str) == Some("NONE") {
        h.test.clear();
    }
    if let Some(cmd) = &f.health_cmd {
        h.test = if cmd.trim().is_empty() {
            Vec::new()
        } else {
            vec!["CMD-SHELL".into(), cmd.clone()]
        };
    }
    if let Some(v) = f.health_interval {
        if !v.is_zero() && v < Duration::from_millis(1) {
            return Err("--health-interval must be at least 1ms".into());
        }
        h.interval_ms = ms(v);
    }
    if let Some(v) = f.health_timeout {
        h.timeout_ms = ms(v);
    }
    if let Some(v) = f.health_retries {
        h.retries = v;
    }
    if let Some(v) = f.health_start_period {
        h.start_period_ms = ms(v);
    }
    t.healthcheck = Some(h);
    Ok(())
}

/// `--mount type=bind|volume|tmpfs,source=…,target=…[,readonly]`, Docker's syntax.
pub fn parse_mount(s: &str) -> Result<Mount, String> {
    let mut m = Mount::default();
    let mut target = None;
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (part.to_ascii_lowercase(), None),
        };
        match (k.as_str(), v) {
            ("type", Some(v)) => {
                m.kind = match v {
                    "bind" => MountKind::Bind,
                    "volume" => MountKind::Volume,
                    "tmpfs" => MountKind::Tmpfs,
                    other => {
                        return Err(format!(
                            "invalid mount type \"{other}\": expected bind, volume or tmpfs"
                        ))
                    }
                }
            }
            ("source" | "src", Some(v)) => m.source = v.to_string(),
            ("target" | "dst" | "destination", Some(v)) => target = Some(v.to_string()),
            ("readonly" | "ro", None) => m.readonly = true,
            ("readonly" | "ro", Some(v)) => {
                m.readonly = match v {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(format!("invalid value for {k}: {v}")),
                }
            }
            _ => return Err(format!("unexpected key '{k}' in '{part}'")),
        }
    }
    m.target = target.ok_or_else(|| "target is required".to_string())?;
    if !m.target.starts_with('/') {
        return Err(format!(
            "invalid mount target \"{}\": must be an absolute path",
            m.target
        ));
    }
    match m.kind {
        MountKind::Bind if !m.source.starts_with('/') => Err(
            "invalid mount config for type \"bind\": source must be an absolute host path".into(),
        ),
        MountKind::Tmpfs if !m.source.is_empty() => {
            Err("invalid mount config for type \"tmpfs\": source must not be specified".into())
        }
        MountKind::Volume if m.source.contains('/') => Err(format!(
            "invalid volume name \"{}\": a volume name cannot contain '/'",
            m.source
        )),
        _ => Ok(m),
    }
}

pub fn parse_secret_ref(s: &str) -> Result<FileRef, String> {
    crate::secret::parse_file_ref("--secret", s)
}

pub fn parse_config_ref(s: &str) -> Result<FileRef, String> {
    crate::secret::parse_file_ref("--config", s)
}

// ---------------------------------------------------------------- networking flags

/// `--endpoint-mode vip|dnsrr`.
pub fn parse_endpoint_mode(s: &str) -> Result<EndpointMode, String> {
    match s {
        "vip" => Ok(EndpointMode::Vip),
        "dnsrr" => Ok(EndpointMode::Dnsrr),
        _ => Err(format!("invalid endpoint mode {s:?}: use vip or dnsrr")),
    }
}

/// `--network NAME` or `--network name=NAME,alias=A[,alias=B]`.
pub fn parse_network(s: &str) -> Result<NetworkAttachmentConfig, String> {
    let t = s.trim();
    let usage = "use NAME or name=NAME,alias=ALIAS";
    if t.is_empty() {
        return Err(format!("invalid network {s:?}: {usage}"));
    }
    if !t.contains('=') {
        if t.contains(',') {
            return Err(format!("invalid network {s:?}: {usage}"));
        }
        return Ok(NetworkAttachmentConfig {
            target: t.to_string(),
            aliases: Vec::new(),
        });
    }
    let mut n = NetworkAttachmentConfig::default();
    for field in t.split(',').map(str::trim) {
        let Some((k, v)) = field.split_once('=') else {
            return Err(format!(
                "invalid network {s:?}: field {field:?} is not KEY=VALUE; {usage}"
            ));
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "name" | "target" => n.target = v.to_string(),
            "alias" => {
                if v.is_empty() {
                    return Err(format!("invalid network {s:?}: empty alias"));
                }
                if !n.aliases.iter().any(|a| a == v) {
                    n.aliases.push(v.to_string());
                }
            }
            "driver-opt" => {
                return Err(format!(
                    "invalid network {s:?}: driver-opt is not supported"
                ))
            }
            other => {
                return Err(format!(
                    "invalid network {s:?}: unknown field {other:?}; {usage}"
                ))
            }
        }
    }
    if n.target.is_empty() {
        return Err(format!("invalid network {s:?}: name is required; {usage}"));
    }
    Ok(n)
}

/// One `--publish` value: one port, or several for a range (`8080-8081:80-81`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published(pub Vec<PortConfig>);

/// A port pattern of `--publish-rm`: the fields given must all match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortMatch {
    pub published: Option<u16>,
    pub target: Option<u16>,
    pub protocol: PortProtocol,
    pub mode: Option<PublishMode>,
}

impl PortMatch {
    pub fn matches(&self, p: &PortConfig) -> bool {
        // A spec's published 0 is "any": the manager picked the port; then the target decides.
        let published_ok = match self.published {
            None => true,
            Some(x) => x == p.published_port || (p.published_port == 0 && self.target.is_some()),
        };
        self.protocol == p.protocol
            && published_ok
            && self.target.is_none_or(|t| t == p.target_port)
            && self.mode.is_none_or(|m| m == p.publish_mode)
    }
}

/// One `--publish-rm` value (several patterns for a range).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMatches(pub Vec<PortMatch>);

/// `N` or `N-M` of the short syntax.
fn port_range(
    s: &str,
    what: &str,
    min: u16,
    bad: &dyn Fn(String) -> String,
) -> Result<(u16, u16), String> {
    let msg = || bad(format!("{what} port must be {min}-65535"));
    let num = |x: &str| -> Result<u16, String> {
        let x = x.trim();
        if x.is_empty() || !x.chars().all(|c| c.is_ascii_digit()) {
            return Err(msg());
        }
        match x.parse::<u32>() {
            Ok(n) if n >= u32::from(min) && n <= 65535 => Ok(n as u16),
            _ => Err(msg()),
        }
    };
    match s.split_once('-') {
        None => {
            let n = num(s)?;
            Ok((n, n))
        }
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if b < a {
                return Err(bad(format!("{what} port range {s} ends before it starts")));
            }
            Ok((a, b))
        }
    }
}

fn parse_protocol(p: &str, bad: &dyn Fn(String) -> String) -> Result<PortProtocol, String> {
    match p.trim().to_ascii_lowercase().as_str() {
        "tcp" | "" => Ok(PortProtocol::Tcp),
        "udp" => Ok(PortProtocol::Udp),
        "sctp" => Err(bad("protocol sctp is not supported: use tcp or udp".into())),
        other => Err(bad(format!("unknown protocol {other:?}: use tcp or udp"))),
    }
}

/// The ports a `--publish`/`--publish-rm` value names, fields left open where not given.
/// `need_target`: `--publish` (a target is required) rather than `--publish-rm` (published
/// alone will do).
fn parse_ports(s: &str, need_target: bool) -> Result<Vec<PortMatch>, String> {
    let t = s.trim();
    let bad = |why: String| format!("invalid publish {s:?}: {why}");
    if t.is_empty() {
        return Err(bad("empty value".into()));
    }
    if t.contains('=') {
        return parse_long_port(s, need_target).map(|m| vec![m]);
    }
    let (ports, proto) = match t.rsplit_once('/') {
        Some((ports, proto)) => (ports, parse_protocol(proto, &bad)?),
        None => (t, PortProtocol::Tcp),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (published, target) = match parts.as_slice() {
        [target] => (None, *target),
        [published, target] => (Some(*published), *target),
        [_, _, _] => {
            return Err(bad(
                "a host IP is not supported (the port is published on every node): use PUBLISHED:TARGET".into(),
            ))
        }
        _ => {
            return Err(bad(
                "use [PUBLISHED:]TARGET[/PROTOCOL] or published=P,target=T".into(),
            ))
        }
    };
    let (t0, t1) = port_range(target, "target", 1, &bad)?;
    let n = t1 - t0;
    let pubs = match published {
        None => None,
        Some(p) => {
            let (p0, p1) = port_range(p, "published", 0, &bad)?;
            if p1 - p0 != n {
                return Err(bad(format!(
                    "published range {p} and target range {target} differ in length"
                )));
            }
            Some(p0)
        }
    };
    Ok((0..=n)
        .map(|i| PortMatch {
            published: pubs.map(|p| p + i),
            target: Some(t0 + i),
            protocol: proto,
            mode: None,
        })
        .collect())
}

/// `[mode=ingress|host,]published=P,target=T[,protocol=tcp|udp]`.
fn parse_long_port(s: &str, need_target: bool) -> Result<PortMatch, String> {
    let bad = |why: String| format!("invalid publish {s:?}: {why}");
    let mut m = PortMatch::default();
    for field in s.trim().split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let Some((k, v)) = field.split_once('=') else {
            return Err(bad(format!("field {field:?} is not KEY=VALUE")));
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "mode" => {
                m.mode = Some(match v {
                    "ingress" => PublishMode::Ingress,
                    "host" => PublishMode::Host,
                    _ => return Err(bad(format!("mode {v:?}: use ingress or host"))),
                })
            }
            "target" => {
                m.target = Some(port_range(v, "target", 1, &bad).and_then(|(a, b)| {
                    if a == b {
                        Ok(a)
                    } else {
                        Err(bad("target must be a single port".into()))
                    }
                })?)
            }
            "published" => {
                m.published = Some(port_range(v, "published", 0, &bad).and_then(|(a, b)| {
                    if a == b {
                        Ok(a)
                    } else {
                        Err(bad("published must be a single port".into()))
                    }
                })?)
            }
            "protocol" => m.protocol = parse_protocol(v, &bad)?,
            other => {
                return Err(bad(format!(
                    "unknown field {other:?}: use mode, published, target and protocol"
                )))
            }
        }
    }
    if need_target && m.target.is_none() {
        return Err(bad("target is required (target=PORT)".into()));
    }
    if m.target.is_none() && m.published.is_none() {
        return Err(bad("give target=PORT or published=PORT".into()));
    }
    Ok(m)
}

/// `--publish` in Docker's two syntaxes: `8080:80`, `8080:80/udp`, `80` (the manager picks the
/// published port), `8080-8081:80-81`, or `[mode=ingress|host,]published=P,target=T[,protocol=…]`.
pub fn parse_publish(s: &str) -> Result<Published, String> {
    let ms = parse_ports(s, true)?;
    Ok(Published(
        ms.into_iter()
            .map(|m| PortConfig {
                protocol: m.protocol,
                target_port: m.target.unwrap_or_default(),
                published_port: m.published.unwrap_or(0),
                publish_mode: m.mode.unwrap_or_default(),
            })
            .collect(),
    ))
}

/// `--publish-rm`: `80` (by target port), `8080:80`, `80/udp`, or the long syntax with any of
/// its fields (`published=8080`).
pub fn parse_publish_rm(s: &str) -> Result<PortMatches, String> {
    parse_ports(s, false).map(PortMatches)
}

/// `--dns`: an IPv4 or IPv6 address.
pub fn parse_dns_server(s: &str) -> Result<String, String> {
    s.trim()
        .parse::<std::net::IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| format!("invalid DNS server {s:?}: use an IP address such as 10.0.0.2"))
}

/// `--dns-search`: a domain name (or `.` for none).
pub fn parse_dns_search(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t == "." {
        return Ok(t.to_string());
    }
    let d = t.strip_suffix('.').unwrap_or(t);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if d.is_empty()
        || d.len() > 253
        || !d.split('.').all(label_ok)
        || !d.chars().any(|c| c.is_ascii_alphabetic())
    {
        return Err(format!(
            "invalid DNS search domain {s:?}: use a domain name such as example.com"
        ));
    }
    Ok(t.to_string())
}

/// `--dns-option`: a resolv.conf option such as `ndots:2` or `rotate`.
pub fn parse_dns_option(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() || t.contains(char::is_whitespace) {
        return Err(format!(
            "invalid DNS option {s:?}: use one resolv.conf option such as ndots:2"
        ));
    }
    Ok(t.to_string())
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
    for e in &a.env {
        check_env("--env", e)?;
    }
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
            env: a.env.clone(),
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
    apply_flags(&mut spec, &a.flags)?;
    check_endpoint(&spec.endpoint)?;
    if a.force {
        spec.task.force_update += 1;
    }
    Ok(spec)
}

/// `S=N` of `service scale`.
pub fn parse_scale(s: &str) -> Result<(String, u64), String> {
    match s.split_once('=') {
        Some((name, n)) if !name.is_empty() => n
            .parse::<u64>()
            .map(|n| (name.to_string(), n))
            .map_err(|_| format!("invalid replicas value {n:?} in {s:?}: use a number")),
        _ => Err(format!(
            "invalid scale specifier {s:?}: use SERVICE=REPLICAS"
        )),
    }
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

const ADJECTIVES: &[&str] = &[
    "amber", "brave", "calm", "clever", "cosy", "dapper", "eager", "fancy", "gentle", "happy",
    "jolly", "keen", "lively", "lucid", "merry", "nimble", "noble", "plucky", "proud", "quick",
    "quiet", "rapid", "serene", "shiny", "sleek", "steady", "sunny", "swift", "tidy", "vivid",
    "witty", "zesty",
];
const NOUNS: &[&str] = &[
    "anchovy",
    "barracuda",
    "bass",
    "bream",
    "carp",
    "cod",
    "dory",
    "eel",
    "flounder",
    "grouper",
    "haddock",
    "halibut",
    "herring",
    "mackerel",
    "marlin",
    "minnow",
    "mullet",
    "perch",
    "pike",
    "pollock",
    "salmon",
    "sardine",
    "shad",
    "smelt",
    "snapper",
    "sole",
    "sprat",
    "sturgeon",
    "tarpon",
    "trout",
    "tuna",
    "turbot",
];

/// A name like Docker's generated ones: `adjective_noun`.
pub fn generate_name() -> String {
    use rand::seq::SliceRandom;
    let mut rng = rand::thread_rng();
    format!(
        "{}_{}",
        ADJECTIVES.choose(&mut rng).unwrap_or(&"shy"),
        NOUNS.choose(&mut rng).unwrap_or(&"fish")
    )
}

// ---------------------------------------------------------------- rendering

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

fn port_json(p: &PortConfig) -> Value {
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

/// `service inspect` (JSON): the service as the daemon returned it, plus Docker's `Endpoint`.
pub fn inspect_service_json(mut raw: Value, v: &ServiceView) -> Value {
    if let Value::Object(m) = &mut raw {
        m.insert("Endpoint".into(), endpoint_json(v));
    }
    raw
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

/// Docker's humanized durations, lower case: "less than a second", "5 seconds",
/// "about a minute", "3 hours", "2 days" …
pub fn human_duration(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    if secs < 1 {
        return "less than a second".into();
    }
    if secs == 1 {
        return "1 second".into();
    }
    if secs < 60 {
        return format!("{secs} seconds");
    }
    let mins = secs / 60;
    if mins == 1 {
        return "about a minute".into();
    }
    if mins < 60 {
        return format!("{mins} minutes");
    }
    let hours = (ms as f64 / 3_600_000.0).round() as i64;
    if hours == 1 {
        "about an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", ms / 3_600_000 / 24 / 365)
    }
}

/// CURRENT STATE of `service ps`: "Running 5 seconds ago".
pub fn current_state(t: &TaskView, now_ms: i64) -> String {
    let at = if t.status.timestamp_ms > 0 {
        t.status.timestamp_ms
    } else {
        t.created_at_ms
    };
    format!(
        "{} {} ago",
        title(t.status.state.as_str()),
        human_duration(now_ms - at)
    )
}

const MAX_ERR_LEN: usize = 30;

/// ERROR of `service ps`: the task's error (or why a pending task waits), quoted, truncated.
pub fn task_error(t: &TaskView, no_trunc: bool) -> String {
    let mut e = t.status.err.clone();
    if e.is_empty() && t.status.state == TaskState::Pending {
        e = t.status.message.clone();
    }
    if e.is_empty() {
        return e;
    }
    if !no_trunc && e.chars().count() > MAX_ERR_LEN {
        e = e.chars().take(MAX_ERR_LEN - 1).collect::<String>() + "…";
    }
    format!("\"{e}\"")
}

/// `service.slot`, or `service.nodeid` for global tasks.
pub fn task_name(t: &TaskView) -> String {
    if t.slot != 0 {
        format!("{}.{}", t.service_name, t.slot)
    } else {
        format!("{}.{}", t.service_name, t.node_id)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PsRow {
    pub id: String,
    pub name: String,
    /// An older task of the same slot than the row above it.
    pub history: bool,
    pub image: String,
    pub node: String,
    pub desired: String,
    pub current: String,
    pub error: String,
}

pub const PS_HEADERS: [&str; 8] = [
    "ID",
    "NAME",
    "IMAGE",
    "NODE",
    "DESIRED STATE",
    "CURRENT STATE",
    "ERROR",
    "PORTS",
];

impl PsRow {
    pub fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            if self.history {
                format!(" \\_ {}", self.name)
            } else {
                self.name.clone()
            },
            self.image.clone(),
            self.node.clone(),
            self.desired.clone(),
            self.current.clone(),
            self.error.clone(),
            String::new(),
        ]
    }

    pub fn json(&self) -> String {
        json_line(vec![
            ("ID", json!(self.id)),
            ("Name", json!(self.name)),
            ("Image", json!(self.image)),
            ("Node", json!(self.node)),
            ("DesiredState", json!(self.desired)),
            ("CurrentState", json!(self.current)),
            ("Error", json!(self.error)),
        ])
    }
}

/// Tasks in Docker's order: by service, slot (or node for global tasks), newest first.
pub fn sort_tasks(tasks: &mut [TaskView]) {
    tasks.sort_by(|a, b| {
        let key = |t: &TaskView| {
            (
                t.service_name.clone(),
                t.service_id.clone(),
                t.slot,
                if t.slot == 0 {
                    t.node_id.clone()
                } else {
                    String::new()
                },
            )
        };
        key(a)
            .cmp(&key(b))
            .then(b.created_at_ms.cmp(&a.created_at_ms))
            .then(a.id.cmp(&b.id))
    });
}

/// `service ps` rows: newest task of each slot first, its predecessors marked as history.
pub fn ps_rows(tasks: &[TaskView], now_ms: i64, no_trunc: bool) -> Vec<PsRow> {
    let mut ts = tasks.to_vec();
    sort_tasks(&mut ts);
    let mut prev = String::new();
    ts.iter()
        .map(|t| {
            let name = task_name(t);
            let history = name == prev;
            prev = name.clone();
            PsRow {
                id: if no_trunc {
                    t.id.clone()
                } else {
                    short_id(&t.id)
                },
                name,
                history,
                image: t.spec.image.clone(),
                node: t.node_hostname.clone(),
                desired: title(t.desired_state.as_str()),
                current: current_state(t, now_ms),
                error: task_error(t, no_trunc),
            }
        })
        .collect()
}

/// `--filter` of `service ps`: the desired states and the node asked for.
pub fn parse_ps_filters(filters: &[String]) -> Result<(Vec<String>, String), String> {
    let mut states = Vec::new();
    let mut node = String::new();
    for f in filters {
        match f.split_once('=') {
            Some(("desired-state", v)) => match v {
                "running" | "shutdown" | "accepted" => {
                    if !states.iter().any(|s| s == v) {
                        states.push(v.to_string());
                    }
                }
                _ => {
                    return Err(format!(
                        "invalid filter 'desired-state={v}': use running, shutdown or accepted"
                    ))
                }
            },
            Some(("node", v)) if !v.is_empty() => node = v.to_string(),
            _ => return Err(format!("invalid filter '{f}'")),
        }
    }
    Ok((states, node))
}

/// Go's way of writing a duration: "0s", "500ms", "5s", "1m30s", "1h0m0s".
pub fn fmt_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let h = ms / 3_600_000;
    let m = (ms / 60_000) % 60;
    let s_ms = ms % 60_000;
    let secs = if s_ms.is_multiple_of(1000) {
        format!("{}s", s_ms / 1000)
    } else {
        let s = format!("{}.{:03}", s_ms / 1000, s_ms % 1000);
        format!("{}s", s.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

/// Docker's byte sizes: "512MiB", "1.5GiB", "100B".
pub fn fmt_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{}", units[i])
}

fn fmt_cpus(nano: u64) -> String {
    let s = format!("{:.9}", nano as f64 / 1e9);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn fmt_ts(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

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
    let _ = writeln!(
        o,
        " StopGracePeriod: {}",
        fmt_duration_ms(t.stop_grace_period_ms)
    );
    if !t.stop_signal.is_empty() {
        let _ = writeln!(o, " StopSignal:\t{}", t.stop_signal);
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

// ---------------------------------------------------------------- convergence

/// One line of progress: a slot of a replicated service, a node of a global one.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotLine {
    /// Stable identity: the slot number or the node id.
    pub key: String,
    /// What is shown: "2/5" or the short node id.
    pub label: String,
    pub state: TaskState,
    /// Why it is stuck or failed: the task's error, or a pending task's message.
    pub detail: String,
}

impl SlotLine {
    /// "2/5: running", "1/1: pending: no suitable node (1 node lacks memory)".
    pub fn text(&self) -> String {
        if self.detail.is_empty() {
            format!("{}: {}", self.label, self.state)
        } else {
            format!("{}: {}: {}", self.label, self.state, self.detail)
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Waiting,
    Converged,
    Failed(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub job: bool,
    /// Tasks up to date and running (jobs: completed).
    pub done: u64,
    pub total: u64,
    pub slots: Vec<SlotLine>,
    /// Something to say once (a rollback starting).
    pub note: Option<String>,
    pub verdict: Verdict,
}

impl Snapshot {
    pub fn overall_line(&self) -> String {
        if self.job {
            format!("job progress: {} out of {} complete", self.done, self.total)
        } else {
            format!(
                "overall progress: {} out of {} tasks",
                self.done, self.total
            )
        }
    }
}

fn in_progress(u: &UpdateStatusView) -> bool {
    u.state == "updating" || u.state == "rollback_started"
}

/// Decides, one poll at a time, whether a service has converged after a change we made.
#[derive(Clone, Debug)]
pub struct Watch {
    /// We asked for a rollback (a completed rollback is then success, not failure).
    rollback: bool,
    /// The update status the service had right after our change. A completed rollback equal to
    /// it predates our change (e.g. a scale after a rollback) and is no failure. A paused
    /// update is one however old (as Docker): the service would never converge.
    baseline: Option<UpdateStatusView>,
    rollback_noted: bool,
}

impl Watch {
    pub fn new(rollback: bool, baseline: Option<UpdateStatusView>) -> Self {
        Watch {
            rollback,
            baseline,
            rollback_noted: rollback,
        }
    }

    pub fn observe(&mut self, view: &ServiceView, tasks: &[TaskView]) -> Snapshot {
        let job = view.spec.mode.is_job();
        let global = matches!(view.spec.mode, ServiceMode::Global | ServiceMode::GlobalJob);
        // The newest task of each slot (node for global) that is meant to run.
        let mut newest: BTreeMap<(u64, String), &TaskView> = BTreeMap::new();
        for t in tasks {
            // READY: a stop-first update's new task, waiting for the old one to stop.
            if !job && !matches!(t.desired_state, TaskState::Ready | TaskState::Running) {
                continue;
            }
            if job && t.desired_state > TaskState::Complete && t.status.state != TaskState::Complete
            {
                continue;
            }
            let k = if global {
                (0, t.node_id.clone())
            } else {
                (t.slot, String::new())
            };
            match newest.get(&k) {
                Some(o) if o.created_at_ms > t.created_at_ms => {}
                _ => {
                    newest.insert(k, t);
                }
            }
        }
        let slots = newest
            .iter()
            .map(|((slot, node), t)| SlotLine {
                key: if global {
                    node.clone()
                } else {
                    slot.to_string()
                },
                label: if global {
                    short_id(node)
                } else {
                    format!("{slot}/{}", view.desired)
                },
                state: t.status.state,
                detail: if !t.status.err.is_empty() {
                    t.status.err.clone()
                } else if t.status.state == TaskState::Pending {
                    t.status.message.clone()
                } else {
                    String::new()
                },
            })
            .collect();

        let status = view.update_status.as_ref();
        let stale = status.is_some() && status == self.baseline.as_ref();
        let mut note = None;
        if let Some(u) = status {
            if u.state == "rollback_started" && !self.rollback_noted {
                self.rollback_noted = true;
                note = Some(format!("rollback: {}", u.message));
            }
        }
        let failure = status.and_then(|u| match u.state.as_str() {
            "paused" | "rollback_paused" => Some(format!("update paused: {}", u.message)),
            "rollback_completed" if !self.rollback && !stale => {
                Some(format!("update rolled back: {}", u.message))
            }
            _ => None,
        });

        let (done, converged) = if job {
            (view.completed, view.completed >= view.desired)
        } else {
            let current = tasks
                .iter()
                .filter(|t| {
                    t.desired_state == TaskState::Running
                        && t.status.state == TaskState::Running
                        && t.spec == view.spec.task
                })
                .count() as u64;
            let all_current = tasks
                .iter()
                .filter(|t| t.desired_state == TaskState::Running)
                .all(|t| t.status.state == TaskState::Running && t.spec == view.spec.task);
            let updating = view.update_status.as_ref().is_some_and(in_progress);
            (
                current.min(view.desired),
                view.running == view.desired && all_current && !updating,
            )
        };
        let verdict = match failure {
            Some(m) => Verdict::Failed(m),
            None if converged => Verdict::Converged,
            None => Verdict::Waiting,
        };
        Snapshot {
            job,
            done,
            total: view.desired,
            slots,
            note,
            verdict,
        }
    }
}

/// Shows progress while waiting.
pub trait Render {
    fn show(&mut self, s: &Snapshot);
    /// The wait ended: converged (`ok`) or failed.
    fn finish(&mut self, ok: bool);
}

/// Shows nothing (`--quiet`).
pub struct QuietRender;

impl Render for QuietRender {
    fn show(&mut self, _: &Snapshot) {}
    fn finish(&mut self, _: bool) {}
}

/// Plain lines, each printed only when something changed (not a terminal).
pub struct PlainRender<W: Write> {
    out: W,
    overall: Option<String>,
    slots: BTreeMap<String, String>,
}

impl<W: Write> PlainRender<W> {
    pub fn new(out: W) -> Self {
        PlainRender {
            out,
            overall: None,
            slots: BTreeMap::new(),
        }
    }
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Render for PlainRender<W> {
    fn show(&mut self, s: &Snapshot) {
        if let Some(n) = &s.note {
            let _ = writeln!(self.out, "{n}");
        }
        let overall = s.overall_line();
        if self.overall.as_ref() != Some(&overall) {
            let _ = writeln!(self.out, "{overall}");
            self.overall = Some(overall);
        }
        for l in &s.slots {
            let line = l.text();
            if self.slots.get(&l.key) != Some(&line) {
                let _ = writeln!(self.out, "{line}");
                self.slots.insert(l.key.clone(), line);
            }
        }
        let _ = self.out.flush();
    }
    fn finish(&mut self, ok: bool) {
        if ok {
            let _ = writeln!(self.out, "verify: Service converged");
        }
        let _ = self.out.flush();
    }
}

/// Above this many slots a terminal shows only the overall line (as Docker).
const MAX_BARS: usize = 20;

/// indicatif bars: one per slot and an overall line (stdout is a terminal).
pub struct BarsRender {
    multi: indicatif::MultiProgress,
    overall: indicatif::ProgressBar,
    bars: BTreeMap<String, indicatif::ProgressBar>,
}

impl Default for BarsRender {
    fn default() -> Self {
        Self::new()
    }
}

impl BarsRender {
    pub fn new() -> Self {
        use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let overall = multi.add(ProgressBar::new(0));
        if let Ok(st) = ProgressStyle::with_template("{msg}") {
            overall.set_style(st);
        }
        BarsRender {
            multi,
            overall,
            bars: BTreeMap::new(),
        }
    }

    fn bar_position(state: TaskState) -> u64 {
        match state {
            TaskState::Complete => TaskState::Running as u64,
            s if s <= TaskState::Running => s as u64,
            _ => 0,
        }
    }
}

impl Render for BarsRender {
    fn show(&mut self, s: &Snapshot) {
        use indicatif::{ProgressBar, ProgressStyle};
        if let Some(n) = &s.note {
            let _ = self.multi.println(n);
        }
        self.overall.set_message(s.overall_line());
        let shown: Vec<&SlotLine> = if s.slots.len() > MAX_BARS {
            Vec::new()
        } else {
            s.slots.iter().collect()
        };
        let keys: HashSet<&str> = shown.iter().map(|l| l.key.as_str()).collect();
        let gone: Vec<String> = self
            .bars
            .keys()
            .filter(|k| !keys.contains(k.as_str()))
            .cloned()
            .collect();
        for k in gone {
            if let Some(b) = self.bars.remove(&k) {
                b.finish_and_clear();
                self.multi.remove(&b);
            }
        }
        let width = shown.iter().map(|l| l.label.len()).max().unwrap_or(0);
        for l in shown {
            let bar = self.bars.entry(l.key.clone()).or_insert_with(|| {
                let b = self.multi.add(ProgressBar::new(TaskState::Running as u64));
                if let Ok(st) = ProgressStyle::with_template("{prefix} [{bar:40}] {wide_msg}") {
                    b.set_style(st.progress_chars("=> "));
                }
                b
            });
            bar.set_prefix(format!("{:>width$}: {:<10}", l.label, l.state.as_str()));
            bar.set_message(l.detail.clone());
            bar.set_position(Self::bar_position(l.state));
        }
    }
    fn finish(&mut self, ok: bool) {
        for b in self.bars.values() {
            if ok {
                b.finish();
            } else {
                b.abandon();
            }
        }
        if ok {
            self.overall.finish();
            // Below the finished bars, which stay on the screen.
            println!("verify: Service converged");
        } else {
            self.overall.abandon();
        }
    }
}

/// Poll with `fetch` until the watch says converged or failed. No deadline (as Docker);
/// Ctrl-C ends the process.
pub async fn watch_until<F, Fut>(
    mut fetch: F,
    mut watch: Watch,
    render: &mut dyn Render,
    every: Duration,
) -> Result<(), CliError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(ServiceView, Vec<TaskView>), CliError>>,
{
    loop {
        let (view, tasks) = match fetch().await {
            Ok(x) => x,
            Err(e) => {
                render.finish(false);
                return Err(e);
            }
        };
        let snap = watch.observe(&view, &tasks);
        render.show(&snap);
        match snap.verdict {
            Verdict::Converged => {
                render.finish(true);
                return Ok(());
            }
            Verdict::Failed(m) => {
                render.finish(false);
                return Err(CliError(format!("Error: {m}")));
            }
            Verdict::Waiting => tokio::time::sleep(every).await,
        }
    }
}

// ---------------------------------------------------------------- talking to the daemon

type Client = ControlClient<Channel>;

fn decode<T: serde::de::DeserializeOwned>(doc: pb::JsonDoc) -> Result<T, CliError> {
    serde_json::from_str(&doc.json)
        .map_err(|e| CliError(format!("Error: malformed reply from the daemon: {e}")))
}

async fn get_service_doc(c: &Client, id: &str) -> Result<pb::JsonDoc, Status> {
    retry(|| {
        let mut c = c.clone();
        let id = id.to_string();
        async move {
            c.get_service(pb::GetServiceRequest { id })
                .await
                .map(|r| r.into_inner())
        }
    })
    .await
}

async fn get_service(c: &Client, id: &str) -> Result<ServiceView, CliError> {
    decode(get_service_doc(c, id).await?)
}

async fn list_tasks(
    c: &Client,
    service: &str,
    node: &str,
    desired_state: &str,
) -> Result<Vec<TaskView>, CliError> {
    let req = pb::ListTasksRequest {
        service: service.to_string(),
        node: node.to_string(),
        desired_state: desired_state.to_string(),
    };
    let doc = retry(|| {
        let mut c = c.clone();
        let req = req.clone();
        async move { c.list_tasks(req).await.map(|r| r.into_inner()) }
    })
    .await?;
    decode(doc)
}

async fn update_service(
    c: &Client,
    req: pb::UpdateServiceRequest,
) -> Result<ServiceView, CliError> {
    let doc = retry(|| {
        let mut c = c.clone();
        let req = req.clone();
        async move { c.update_service(req).await.map(|r| r.into_inner()) }
    })
    .await?;
    decode(doc)
}

/// GetService, change its spec with `edit`, UpdateService with the version read; again if
/// someone else changed the service meanwhile.
async fn edit_service<E>(c: &Client, id: &str, edit: E) -> Result<ServiceView, CliError>
where
    E: Fn(ServiceSpec) -> Result<ServiceSpec, String>,
{
    let mut attempt = 0;
    loop {
        let view = get_service(c, id).await?;
        let spec = edit(view.spec.clone()).map_err(|e| CliError(format!("Error: {e}")))?;
        let spec_json = serde_json::to_string(&spec)
            .map_err(|e| CliError(format!("Error: cannot encode the spec: {e}")))?;
        let req = pb::UpdateServiceRequest {
            id: view.id.clone(),
            spec_json,
            rollback: false,
            version: view.version,
        };
        match update_service(c, req).await {
            Err(e) if attempt < 5 && e.0.contains("changed since it was read") => attempt += 1,
            r => return r,
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Wait for `service_id` to converge, showing progress as the terminal allows.
async fn wait(
    c: &Client,
    service_id: &str,
    rollback: bool,
    baseline: Option<UpdateStatusView>,
    quiet: bool,
) -> Result<(), CliError> {
    let mut render: Box<dyn Render> = if quiet {
        Box::new(QuietRender)
    } else if std::io::stdout().is_terminal() {
        Box::new(BarsRender::new())
    } else {
        Box::new(PlainRender::new(std::io::stdout()))
    };
    let fetch = || async {
        let view = get_service(c, service_id).await?;
        let desired = if view.spec.mode.is_job() {
            ""
        } else {
            "running"
        };
        let tasks = list_tasks(c, &view.id, "", desired).await?;
        Ok((view, tasks))
    };
    watch_until(
        fetch,
        Watch::new(rollback, baseline),
        render.as_mut(),
        Duration::from_millis(250),
    )
    .await
}

fn first_error(errs: Vec<CliError>) -> Result<(), CliError> {
    if errs.is_empty() {
        return Ok(());
    }
    let msgs: Vec<String> = errs.into_iter().map(|e| e.0).collect();
    Err(CliError(msgs.join("; ")))
}

pub async fn run(c: Client, cmd: ServiceCmd) -> Result<(), CliError> {
    match cmd {
        ServiceCmd::Create(a) => create(&c, *a).await,
        ServiceCmd::Logs(a) => crate::logs::run_logs(c, a).await,
        ServiceCmd::Ls { format, quiet } => {
            let doc = retry(|| {
                let mut c = c.clone();
                async move { c.list_services(pb::Empty {}).await.map(|r| r.into_inner()) }
            })
            .await?;
            let views: Vec<ServiceView> = decode(doc)?;
            let rows = ls_rows(&views);
            if quiet {
                for (cells, _) in &rows {
                    println!("{}", cells[0]);
                }
                return Ok(());
            }
            match format {
                Format::Json => {
                    for (_, j) in rows {
                        println!("{j}");
                    }
                }
                Format::Table => {
                    let cells: Vec<Vec<String>> = rows.into_iter().map(|(r, _)| r).collect();
                    print!("{}", table(&LS_HEADERS, &cells));
                }
            }
            Ok(())
        }
        ServiceCmd::Ps(a) => ps(&c, *a).await,
        ServiceCmd::Inspect { pretty, services } => {
            let mut docs = Vec::new();
            for s in &services {
                docs.push(get_service_doc(&c, s).await?);
            }
            if pretty {
                let views: Vec<ServiceView> =
                    docs.into_iter().map(decode).collect::<Result<_, _>>()?;
                // Network names are a nicety: without them (an older manager) show the ids.
                let nets = if views.iter().any(|v| !v.spec.task.networks.is_empty()) {
                    crate::network::list_networks(&c).await.unwrap_or_default()
                } else {
                    Vec::new()
                };
                let outs: Vec<String> = views.iter().map(|v| pretty_service(v, &nets)).collect();
                print!("{}", outs.join("\n\n"));
            } else {
                let mut arr = Vec::new();
                for d in docs {
                    let raw = decode::<Value>(d.clone())?;
                    let v: ServiceView = decode(d)?;
                    arr.push(inspect_service_json(raw, &v));
                }
                println!("{}", serde_json::to_string_pretty(&arr).unwrap_or_default());
            }
            Ok(())
        }
        ServiceCmd::Scale { detach, scales } => {
            let mut parsed = Vec::new();
            for s in &scales {
                parsed.push(parse_scale(s).map_err(|e| CliError(format!("Error: {e}")))?);
            }
            let mut errs = Vec::new();
            let mut done = Vec::new();
            for (name, n) in parsed {
                match edit_service(&c, &name, |spec| scale_spec(spec, n)).await {
                    Ok(v) => {
                        println!("{name} scaled to {n}");
                        done.push((v.id, v.update_status));
                    }
                    Err(e) => errs.push(e),
                }
            }
            if !detach {
                for (id, baseline) in done {
                    if let Err(e) = wait(&c, &id, false, baseline, false).await {
                        errs.push(e);
                    }
                }
            }
            first_error(errs)
        }
        ServiceCmd::Update(a) => {
            let v = if a.rollback {
                rollback(&c, &a.service).await?
            } else {
                let nets = if update_needs_networks(&a) {
                    crate::network::list_networks(&c).await?
                } else {
                    Vec::new()
                };
                edit_service(&c, &a.service, |spec| update_spec(spec, &a, &nets)).await?
            };
            println!("{}", a.service);
            if a.detach {
                return Ok(());
            }
            wait(&c, &v.id, a.rollback, v.update_status, a.quiet).await
        }
        ServiceCmd::Rollback {
            detach,
            quiet,
            service,
        } => {
            let v = rollback(&c, &service).await?;
            println!("{service}");
            if detach {
                return Ok(());
            }
            wait(&c, &v.id, true, v.update_status, quiet).await
        }
        ServiceCmd::Rm { services } => {
            let mut errs = Vec::new();
            for s in services {
                let r = retry(|| {
                    let mut c = c.clone();
                    let id = s.clone();
                    async move { c.remove_service(pb::GetServiceRequest { id }).await }
                })
                .await;
                match r {
                    Ok(_) => println!("{s}"),
                    Err(e) => errs.push(e.into()),
                }
            }
            first_error(errs)
        }
    }
}

async fn rollback(c: &Client, service: &str) -> Result<ServiceView, CliError> {
    update_service(
        c,
        pb::UpdateServiceRequest {
            id: service.to_string(),
            spec_json: String::new(),
            rollback: true,
            version: 0,
        },
    )
    .await
}

async fn create(c: &Client, a: CreateArgs) -> Result<(), CliError> {
    let generated = a.name.is_none();
    let mut attempt = 0;
    let view: ServiceView = loop {
        let name = a.name.clone().unwrap_or_else(generate_name);
        let spec = build_spec(&a, name).map_err(|e| CliError(format!("Error: {e}")))?;
        let spec_json = serde_json::to_string(&spec)
            .map_err(|e| CliError(format!("Error: cannot encode the spec: {e}")))?;
        let r = retry(|| {
            let mut c = c.clone();
            let spec_json = spec_json.clone();
            async move {
                c.create_service(pb::ServiceSpecRequest { spec_json })
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await;
        match r {
            Err(s) if generated && s.code() == Code::AlreadyExists && attempt < 10 => attempt += 1,
            Err(s) => return Err(s.into()),
            Ok(doc) => break decode(doc)?,
        }
    };
    println!("{}", view.id);
    if a.detach {
        return Ok(());
    }
    wait(c, &view.id, false, view.update_status, a.quiet).await
}

async fn ps(c: &Client, a: PsArgs) -> Result<(), CliError> {
    let (states, node) =
        parse_ps_filters(&a.filter).map_err(|e| CliError(format!("Error: {e}")))?;
    let states = if states.is_empty() {
        vec![String::new()]
    } else {
        states
    };
    let mut tasks: Vec<TaskView> = Vec::new();
    let mut seen = HashSet::new();
    for s in &a.services {
        // Resolve first so an unknown service is an error even when filters match nothing.
        let view = get_service(c, s).await?;
        for st in &states {
            for t in list_tasks(c, &view.id, &node, st).await? {
                if seen.insert(t.id.clone()) {
                    tasks.push(t);
                }
            }
        }
    }
    let rows = ps_rows(&tasks, now_ms(), a.no_trunc);
    if a.quiet {
        for r in &rows {
            println!("{}", r.id);
        }
        return Ok(());
    }
    match a.format {
        Format::Json => {
            for r in &rows {
                println!("{}", r.json());
            }
        }
        Format::Table => {
            let cells: Vec<Vec<String>> = rows.iter().map(PsRow::cells).collect();
            print!("{}", table(&PS_HEADERS, &cells));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{one_line_usage_error, Cli, Cmd};
    use clap::Parser;
    use proto::spec::TaskStatus;

    fn parse(args: &[&str]) -> ServiceCmd {
        let mut v = vec!["shoal", "service"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v).expect("parses").cmd {
            Cmd::Service(s) => s,
            other => panic!("not a service command: {other:?}"),
        }
    }

    fn usage_error(args: &[&str]) -> String {
        let mut v = vec!["shoal", "service"];
        v.extend_from_slice(args);
        let e = Cli::try_parse_from(v).expect_err("should not parse");
        one_line_usage_error(&e.render().to_string())
    }

    fn create_spec(args: &[&str]) -> Result<ServiceSpec, String> {
        let mut v = vec!["create"];
        v.extend_from_slice(args);
        match parse(&v) {
            ServiceCmd::Create(a) => build_spec(&a, a.name.clone().unwrap_or("gen".into())),
            _ => unreachable!(),
        }
    }

    fn update(spec: ServiceSpec, args: &[&str]) -> Result<ServiceSpec, String> {
        let mut v = vec!["update"];
        v.extend_from_slice(args);
        v.push("web");
        match parse(&v) {
            ServiceCmd::Update(a) => update_spec(spec, &a, &[]),
            _ => unreachable!(),
        }
    }

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

    #[test]
    fn durations_as_go() {
        let d = |s| parse_go_duration(s).unwrap();
        assert_eq!(d("5s"), Duration::from_secs(5));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("1m30s"), Duration::from_secs(90));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("2h45m"), Duration::from_secs(9900));
        assert_eq!(d("10us"), Duration::from_micros(10));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("0s"), Duration::ZERO);
        for bad in ["", "5", "soon", "5 s", "-5s", "s", "1m30", "5sec", "."] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(fmt_duration_ms(0), "0s");
        assert_eq!(fmt_duration_ms(500), "500ms");
        assert_eq!(fmt_duration_ms(5000), "5s");
        assert_eq!(fmt_duration_ms(1500), "1.5s");
        assert_eq!(fmt_duration_ms(90_000), "1m30s");
        assert_eq!(fmt_duration_ms(3_600_000), "1h0m0s");
    }

    #[test]
    fn sizes_as_docker() {
        let s = |v| parse_size(v).unwrap();
        assert_eq!(s("1024"), 1024);
        assert_eq!(s("100b"), 100);
        assert_eq!(s("512k"), 512 << 10);
        assert_eq!(s("512M"), 512 << 20);
        assert_eq!(s("512m"), 512 << 20);
        assert_eq!(s("512MB"), 512 << 20);
        assert_eq!(s("512MiB"), 512 << 20);
        assert_eq!(s("1G"), 1 << 30);
        assert_eq!(s("1.5g"), 3 << 29);
        assert_eq!(s("64 m"), 64 << 20);
        for bad in ["", "M", "lots", "1x", "-1M", "1..2"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(fmt_bytes(512 << 20), "512MiB");
        assert_eq!(fmt_bytes(3 << 29), "1.5GiB");
        assert_eq!(fmt_bytes(100), "100B");
    }

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

    fn base() -> ServiceSpec {
        create_spec(&[
            "--name",
            "web",
            "--env",
            "A=1",
            "--env",
            "B=2",
            "--label",
            "x=1",
            "--constraint",
            "node.role==worker",
            "busybox",
        ])
        .unwrap()
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
            ServiceCmd::Ls {
                format: Format::Json,
                quiet: true
            }
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

    fn view(name: &str, mode: ServiceMode, running: u64, desired: u64) -> ServiceView {
        let mut spec = base();
        spec.name = name.into();
        spec.mode = mode;
        ServiceView {
            id: format!("{name}0123456789abcdefghijklmn"),
            version: 3,
            spec,
            spec_version: 1,
            previous_spec: None,
            update_status: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            running,
            desired,
            completed: 0,
            endpoint: Default::default(),
        }
    }

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

    fn port(published: u16, target: u16) -> PortConfig {
        PortConfig {
            protocol: PortProtocol::Tcp,
            target_port: target,
            published_port: published,
            publish_mode: PublishMode::Ingress,
        }
    }

    fn ports(s: &str) -> Vec<PortConfig> {
        parse_publish(s).unwrap().0
    }

    #[test]
    fn publish_short_syntax() {
        assert_eq!(ports("8080:80"), vec![port(8080, 80)]);
        assert_eq!(ports("80"), vec![port(0, 80)], "the manager picks the port");
        let udp = ports("8080:80/udp");
        assert_eq!(udp[0].protocol, PortProtocol::Udp);
        assert_eq!((udp[0].published_port, udp[0].target_port), (8080, 80));
        assert_eq!(ports("53/UDP")[0].protocol, PortProtocol::Udp);
        assert_eq!(ports("8080:80/tcp"), vec![port(8080, 80)]);
        assert_eq!(
            ports("8080-8082:80-82"),
            vec![port(8080, 80), port(8081, 81), port(8082, 82)]
        );
        assert_eq!(ports("80-81"), vec![port(0, 80), port(0, 81)]);
    }

    #[test]
    fn publish_long_syntax() {
        assert_eq!(ports("published=8080,target=80"), vec![port(8080, 80)]);
        assert_eq!(ports("target=80"), vec![port(0, 80)]);
        let p = ports("mode=host,published=8080,target=80,protocol=udp");
        assert_eq!(
            p,
            vec![PortConfig {
                protocol: PortProtocol::Udp,
                target_port: 80,
                published_port: 8080,
                publish_mode: PublishMode::Host,
            }]
        );
        assert_eq!(
            ports("mode=ingress, target=80")[0].publish_mode,
            PublishMode::Ingress
        );
    }

    #[test]
    fn publish_errors_say_what_is_wrong() {
        for (s, want) in [
            (
                "8080:abc",
                "invalid publish \"8080:abc\": target port must be 1-65535",
            ),
            (
                "abc:80",
                "invalid publish \"abc:80\": published port must be 0-65535",
            ),
            ("0", "target port must be 1-65535"),
            ("70000", "target port must be 1-65535"),
            ("8080:", "target port must be 1-65535"),
            ("", "empty value"),
            ("1.2.3.4:8080:80", "a host IP is not supported"),
            ("a:b:c:d", "use [PUBLISHED:]TARGET"),
            ("80/sctp", "protocol sctp is not supported: use tcp or udp"),
            ("80/icmp", "unknown protocol \"icmp\""),
            ("8080-8081:80", "differ in length"),
            ("82-80", "ends before it starts"),
            ("published=8080", "target is required"),
            ("published=8080,target=x", "target port must be 1-65535"),
            ("target=80,mode=mesh", "mode \"mesh\": use ingress or host"),
            ("target=80,color=red", "unknown field \"color\""),
            ("target=80,udp", "is not KEY=VALUE"),
            ("target=80-81", "target must be a single port"),
        ] {
            let e = parse_publish(s).expect_err(s);
            assert!(e.contains(want), "{s:?}: {e}");
            assert!(!e.contains('\n'));
        }
        let e = usage_error(&["create", "-p", "8080:abc", "busybox"]);
        assert!(
            e.contains("invalid publish \"8080:abc\": target port must be 1-65535")
                && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn publish_rm_patterns() {
        let m = |s: &str| parse_publish_rm(s).unwrap().0;
        let p = port(8080, 80);
        assert!(m("80")[0].matches(&p));
        assert!(m("8080:80")[0].matches(&p));
        assert!(!m("8081:80")[0].matches(&p));
        assert!(!m("80/udp")[0].matches(&p));
        assert!(m("published=8080")[0].matches(&p));
        assert!(!m("published=8081")[0].matches(&p));
        assert!(m("published=8080,mode=ingress")[0].matches(&p));
        assert!(!m("published=8080,mode=host")[0].matches(&p));
        // A spec's published 0: the target decides.
        assert!(m("30001:80")[0].matches(&port(0, 80)));
        assert!(!m("published=30001")[0].matches(&port(0, 80)));
        let e = parse_publish_rm("mode=host").unwrap_err();
        assert!(e.contains("give target=PORT or published=PORT"), "{e}");
        assert_eq!(m("80-81").len(), 2);
    }

    #[test]
    fn network_flag() {
        assert_eq!(
            parse_network("front").unwrap(),
            NetworkAttachmentConfig {
                target: "front".into(),
                aliases: vec![],
            }
        );
        assert_eq!(
            parse_network("name=front,alias=web,alias=www,alias=web").unwrap(),
            NetworkAttachmentConfig {
                target: "front".into(),
                aliases: vec!["web".into(), "www".into()],
            }
        );
        for (s, want) in [
            ("", "use NAME or name=NAME,alias=ALIAS"),
            ("a,b", "use NAME or name=NAME,alias=ALIAS"),
            ("alias=x", "name is required"),
            ("name=x,alias=", "empty alias"),
            ("name=x,color=red", "unknown field \"color\""),
            ("name=x,driver-opt=a=b", "driver-opt is not supported"),
            ("name=x,alias", "is not KEY=VALUE"),
        ] {
            let e = parse_network(s).expect_err(s);
            assert!(e.starts_with("invalid network"), "{e}");
            assert!(e.contains(want), "{s:?}: {e}");
        }
    }

    #[test]
    fn dns_flags() {
        assert_eq!(parse_dns_server(" 10.0.0.2 ").unwrap(), "10.0.0.2");
        assert_eq!(parse_dns_server("fd00::1").unwrap(), "fd00::1");
        let e = parse_dns_server("dns.example").unwrap_err();
        assert!(
            e.contains("invalid DNS server \"dns.example\": use an IP address"),
            "{e}"
        );
        assert_eq!(parse_dns_search("example.com").unwrap(), "example.com");
        assert_eq!(
            parse_dns_search("corp.example.com.").unwrap(),
            "corp.example.com."
        );
        assert_eq!(parse_dns_search(".").unwrap(), ".");
        for bad in ["", "-bad.com", "a..b", "1.2.3.4", "x_y.com"] {
            let e = parse_dns_search(bad).expect_err(bad);
            assert!(e.contains("invalid DNS search domain"), "{e}");
        }
        assert_eq!(parse_dns_option("ndots:2").unwrap(), "ndots:2");
        assert!(parse_dns_option("ndots 2")
            .unwrap_err()
            .contains("invalid DNS option"));
        assert!(parse_endpoint_mode("dnsrr").is_ok());
        let e = usage_error(&["create", "--endpoint-mode", "rr", "busybox"]);
        assert!(
            e.contains("invalid endpoint mode \"rr\": use vip or dnsrr"),
            "{e}"
        );
        let e = usage_error(&["create", "--dns", "nope", "busybox"]);
        assert!(e.contains("invalid DNS server"), "{e}");
    }

    #[test]
    fn create_networking_flags_fill_the_spec() {
        let s = create_spec(&[
            "--network",
            "front",
            "--network",
            "name=back,alias=db",
            "-p",
            "8080:80",
            "--publish",
            "mode=host,published=9090,target=90,protocol=udp",
            "-p",
            "443",
            "--dns",
            "10.0.0.2",
            "--dns",
            "10.0.0.3",
            "--dns-search",
            "example.com",
            "--dns-option",
            "ndots:2",
            "--endpoint-mode",
            "vip",
            "--hostname",
            "{{.Service.Name}}-{{.Task.Slot}}",
            "busybox",
        ])
        .unwrap();
        let t = &s.task;
        let targets: Vec<&str> = t.networks.iter().map(|n| n.target.as_str()).collect();
        assert_eq!(targets, vec!["front", "back"]);
        assert_eq!(t.networks[1].aliases, vec!["db"]);
        assert_eq!(s.endpoint.mode, EndpointMode::Vip);
        assert_eq!(s.endpoint.ports.len(), 3);
        assert_eq!(s.endpoint.ports[0], port(8080, 80));
        assert_eq!(s.endpoint.ports[1].publish_mode, PublishMode::Host);
        assert_eq!(s.endpoint.ports[2], port(0, 443));
        assert_eq!(t.dns.nameservers, vec!["10.0.0.2", "10.0.0.3"]);
        assert_eq!(t.dns.search, vec!["example.com"]);
        assert_eq!(t.dns.options, vec!["ndots:2"]);
        assert_eq!(t.hostname, "{{.Service.Name}}-{{.Task.Slot}}");
        // No flags: no networks, ports or DNS; VIP mode.
        let s = create_spec(&["busybox"]).unwrap();
        assert!(s.task.networks.is_empty() && s.endpoint.ports.is_empty());
        assert_eq!(s.endpoint.mode, EndpointMode::Vip);
        assert_eq!(s.task.dns, DnsConfig::default());
        // dnsrr with a host-mode port is fine.
        let s = create_spec(&[
            "--endpoint-mode",
            "dnsrr",
            "-p",
            "mode=host,published=80,target=80",
            "busybox",
        ])
        .unwrap();
        assert_eq!(s.endpoint.mode, EndpointMode::Dnsrr);
    }

    #[test]
    fn create_networking_conflicts_are_refused() {
        for (args, want) in [
            (
                vec!["--endpoint-mode", "dnsrr", "-p", "8080:80", "busybox"],
                "port *:8080->80/tcp is published in ingress mode, which dnsrr cannot serve",
            ),
            (
                vec!["-p", "8080:80", "-p", "8080:81", "busybox"],
                "port 8080/tcp is published more than once",
            ),
            (
                vec!["--network", "a", "--network", "name=a,alias=x", "busybox"],
                "network a is given more than once",
            ),
        ] {
            let e = create_spec(&args).expect_err(&format!("{args:?}"));
            assert!(e.contains(want), "{args:?}: {e}");
        }
        // The same port on two protocols is two ports.
        assert!(create_spec(&["-p", "53:53", "-p", "53:53/udp", "busybox"]).is_ok());
    }

    fn net(id: &str, name: &str) -> NetworkView {
        NetworkView {
            id: id.into(),
            version: 1,
            spec: proto::spec::NetworkSpec {
                name: name.into(),
                driver: "overlay".into(),
                ..Default::default()
            },
            vni: 4097,
            subnet: "10.0.1.0/24".into(),
            gateway: "10.0.1.1".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
            services: vec![],
        }
    }

    #[test]
    fn update_networks_by_name_or_id() {
        let nets = vec![net("netfront0001", "front"), net("netback00002", "back")];
        let mut spec = base();
        // As the manager stores them: ids.
        spec.task.networks = vec![
            NetworkAttachmentConfig {
                target: "netfront0001".into(),
                aliases: vec![],
            },
            NetworkAttachmentConfig {
                target: "netback00002".into(),
                aliases: vec!["db".into()],
            },
        ];
        let upd = |spec: ServiceSpec, args: &[&str]| {
            let mut v = vec!["update"];
            v.extend_from_slice(args);
            v.push("web");
            match parse(&v) {
                ServiceCmd::Update(a) => {
                    assert!(update_needs_networks(&a));
                    update_spec(spec, &a, &nets)
                }
                _ => unreachable!(),
            }
        };
        let u = upd(spec.clone(), &["--network-rm", "front"]).unwrap();
        let targets: Vec<&str> = u.task.networks.iter().map(|n| n.target.as_str()).collect();
        assert_eq!(targets, vec!["netback00002"]);
        let u = upd(spec.clone(), &["--network-rm", "netback"]).unwrap();
        assert_eq!(u.task.networks.len(), 1);
        assert_eq!(u.task.networks[0].target, "netfront0001");
        let e = upd(spec.clone(), &["--network-add", "back"]).unwrap_err();
        assert_eq!(e, "service is already attached to network back");
        let u = upd(
            spec.clone(),
            &[
                "--network-rm",
                "back",
                "--network-add",
                "name=back,alias=store",
            ],
        )
        .unwrap();
        assert_eq!(u.task.networks[1].target, "back");
        assert_eq!(u.task.networks[1].aliases, vec!["store"]);
        let u = upd(spec.clone(), &["--network-add", "other"]).unwrap();
        assert_eq!(u.task.networks.len(), 3);
        // Removing a network the service is not on changes nothing (as Docker).
        let u = upd(spec.clone(), &["--network-rm", "nope"]).unwrap();
        assert_eq!(u.task.networks, spec.task.networks);
    }

    #[test]
    fn update_ports_dns_and_endpoint_mode() {
        let mut spec = base();
        spec.endpoint.ports = vec![port(8080, 80), port(0, 443)];
        let u = update(spec.clone(), &["--publish-add", "9090:90"]).unwrap();
        assert_eq!(
            u.endpoint.ports,
            vec![port(8080, 80), port(0, 443), port(9090, 90)]
        );
        // The same port again: kept once; the same published port: replaced.
        let u = update(spec.clone(), &["--publish-add", "8080:80"]).unwrap();
        assert_eq!(u.endpoint.ports, spec.endpoint.ports);
        let u = update(spec.clone(), &["--publish-add", "8080:81"]).unwrap();
        assert_eq!(u.endpoint.ports, vec![port(0, 443), port(8080, 81)]);
        let u = update(spec.clone(), &["--publish-rm", "80"]).unwrap();
        assert_eq!(u.endpoint.ports, vec![port(0, 443)]);
        let u = update(spec.clone(), &["--publish-rm", "published=8080"]).unwrap();
        assert_eq!(u.endpoint.ports, vec![port(0, 443)]);
        let u = update(
            spec.clone(),
            &["--publish-rm", "8080:80", "--publish-rm", "443"],
        )
        .unwrap();
        assert!(u.endpoint.ports.is_empty());
        let u = update(spec.clone(), &["--publish-rm", "80/udp"]).unwrap();
        assert_eq!(u.endpoint.ports, spec.endpoint.ports);
        // Docker's order: remove, then add.
        let u = update(
            spec.clone(),
            &["--publish-rm", "80", "--publish-add", "8080:8000"],
        )
        .unwrap();
        assert_eq!(u.endpoint.ports, vec![port(0, 443), port(8080, 8000)]);
        let e = update(spec.clone(), &["--endpoint-mode", "dnsrr"]).unwrap_err();
        assert!(e.contains("dnsrr cannot serve"), "{e}");
        let u = update(
            spec.clone(),
            &[
                "--endpoint-mode",
                "dnsrr",
                "--publish-rm",
                "80",
                "--publish-rm",
                "443",
            ],
        )
        .unwrap();
        assert_eq!(u.endpoint.mode, EndpointMode::Dnsrr);

        spec.task.dns = DnsConfig {
            nameservers: vec!["10.0.0.2".into()],
            search: vec!["a.example".into()],
            options: vec!["ndots:2".into()],
        };
        let u = update(
            spec.clone(),
            &[
                "--dns-add",
                "10.0.0.3",
                "--dns-add",
                "10.0.0.2",
                "--dns-rm",
                "10.0.0.9",
                "--dns-search-rm",
                "a.example",
                "--dns-search-add",
                "b.example",
                "--dns-option-add",
                "rotate",
                "--dns-option-rm",
                "ndots:2",
                "--hostname",
                "h1",
            ],
        )
        .unwrap();
        assert_eq!(u.task.dns.nameservers, vec!["10.0.0.2", "10.0.0.3"]);
        assert_eq!(u.task.dns.search, vec!["b.example"]);
        assert_eq!(u.task.dns.options, vec!["rotate"]);
        assert_eq!(u.task.hostname, "h1");
        let u = update(spec.clone(), &["--dns-rm", "10.0.0.2"]).unwrap();
        assert!(u.task.dns.nameservers.is_empty());
    }

    #[test]
    fn ports_text_as_docker() {
        assert_eq!(ports_text(&[]), "");
        assert_eq!(ports_text(&[port(8080, 80)]), "*:8080->80/tcp");
        let mut udp = port(53, 53);
        udp.protocol = PortProtocol::Udp;
        assert_eq!(
            ports_text(&[udp.clone(), port(9090, 90), port(8080, 80)]),
            "*:8080->80/tcp, *:9090->90/tcp, *:53->53/udp"
        );
        assert_eq!(
            ports_text(&[
                port(8081, 81),
                port(8080, 80),
                port(8082, 82),
                port(9000, 83)
            ]),
            "*:8080-8082->80-82/tcp, *:9000->83/tcp"
        );
        assert_eq!(ports_text(&[port(0, 80)]), "80/tcp");
        let mut host = port(8081, 81);
        host.publish_mode = PublishMode::Host;
        assert_eq!(
            ports_text(&[port(8080, 80), host]),
            "*:8080->80/tcp, *:8081->81/tcp"
        );
    }

    #[test]
    fn ls_ports_column_prefers_resolved_ports() {
        let mut v = view("web", ServiceMode::Replicated { replicas: 1 }, 1, 1);
        v.spec.endpoint.ports = vec![port(0, 80), port(8443, 443)];
        let rows = ls_rows(std::slice::from_ref(&v));
        assert_eq!(rows[0].0[5], "80/tcp, *:8443->443/tcp");
        v.endpoint.ports = vec![port(30000, 80), port(8443, 443)];
        let rows = ls_rows(&[v]);
        assert_eq!(rows[0].0[5], "*:8443->443/tcp, *:30000->80/tcp");
        let j: Value = serde_json::from_str(&rows[0].1).unwrap();
        assert_eq!(j["Ports"], "*:8443->443/tcp, *:30000->80/tcp");
    }

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

        let raw = serde_json::to_value(&v).unwrap();
        let j = inspect_service_json(raw, &v);
        assert_eq!(j["id"], v.id.as_str(), "the daemon's fields stay");
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

    fn task(
        id: &str,
        slot: u64,
        node: &str,
        desired: TaskState,
        state: TaskState,
        created: i64,
    ) -> TaskView {
        TaskView {
            id: format!("{id}abcdefghijklmnopqrstuvw"),
            service_id: "svc".into(),
            service_name: "web".into(),
            slot,
            node_id: node.into(),
            node_hostname: format!("host-{node}"),
            spec: base().task,
            spec_version: 1,
            desired_state: desired,
            status: TaskStatus {
                state,
                message: String::new(),
                err: String::new(),
                exit_code: None,
                timestamp_ms: created,
            },
            created_at_ms: created,
            networks: vec![],
        }
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

    fn running(slot: u64, spec: &TaskSpec) -> TaskView {
        let mut t = task(
            &format!("s{slot}"),
            slot,
            "n1",
            TaskState::Running,
            TaskState::Running,
            slot as i64,
        );
        t.spec = spec.clone();
        t
    }

    fn status(state: &str, started: i64) -> Option<UpdateStatusView> {
        Some(UpdateStatusView {
            state: state.into(),
            started_ms: started,
            completed_ms: 0,
            message: format!("{state} msg"),
        })
    }

    #[test]
    fn converges_when_all_tasks_run_the_current_spec() {
        let v = view("web", ServiceMode::Replicated { replicas: 2 }, 1, 2);
        let spec = v.spec.task.clone();
        let mut w = Watch::new(false, None);
        let mut pending = running(2, &spec);
        pending.status.state = TaskState::Pending;
        let s = w.observe(&v, &[running(1, &spec), pending]);
        assert_eq!(s.verdict, Verdict::Waiting);
        assert_eq!(s.overall_line(), "overall progress: 1 out of 2 tasks");
        assert_eq!(s.slots[1].label, "2/2");
        assert_eq!(s.slots[1].state, TaskState::Pending);
        let mut v2 = v.clone();
        v2.running = 2;
        let s = w.observe(&v2, &[running(1, &spec), running(2, &spec)]);
        assert_eq!(s.verdict, Verdict::Converged);
        // An old-spec task keeps it waiting, and so does an update in progress.
        let mut old = running(2, &spec);
        old.spec.image = "old".into();
        let s = w.observe(&v2, &[running(1, &spec), old]);
        assert_eq!(s.verdict, Verdict::Waiting);
        assert_eq!(s.done, 1);
        v2.update_status = status("updating", 5);
        let s = w.observe(&v2, &[running(1, &spec), running(2, &spec)]);
        assert_eq!(s.verdict, Verdict::Waiting);
        v2.update_status = status("completed", 5);
        let s = w.observe(&v2, &[running(1, &spec), running(2, &spec)]);
        assert_eq!(s.verdict, Verdict::Converged);
    }

    #[test]
    fn paused_and_rolled_back_updates_fail() {
        let mut v = view("web", ServiceMode::Replicated { replicas: 1 }, 1, 1);
        let spec = v.spec.task.clone();
        let mut w = Watch::new(false, status("updating", 5));
        v.update_status = status("paused", 5);
        match w.observe(&v, &[running(1, &spec)]).verdict {
            Verdict::Failed(m) => assert_eq!(m, "update paused: paused msg"),
            other => panic!("{other:?}"),
        }
        v.update_status = status("rollback_started", 5);
        let s = w.observe(&v, &[running(1, &spec)]);
        assert_eq!(s.note.as_deref(), Some("rollback: rollback_started msg"));
        assert_eq!(s.verdict, Verdict::Waiting);
        assert_eq!(w.observe(&v, &[running(1, &spec)]).note, None);
        v.update_status = status("rollback_completed", 5);
        match w.observe(&v, &[running(1, &spec)]).verdict {
            Verdict::Failed(m) => assert_eq!(m, "update rolled back: rollback_completed msg"),
            other => panic!("{other:?}"),
        }
        v.update_status = status("rollback_paused", 5);
        assert!(matches!(
            w.observe(&v, &[running(1, &spec)]).verdict,
            Verdict::Failed(m) if m.starts_with("update paused:")
        ));
        // A rollback we asked for converges when it completes.
        let mut w = Watch::new(true, status("rollback_started", 5));
        v.update_status = status("rollback_completed", 5);
        assert_eq!(
            w.observe(&v, &[running(1, &spec)]).verdict,
            Verdict::Converged
        );
    }

    #[test]
    fn a_stale_rollback_is_no_failure_but_a_stale_pause_is() {
        // Scaling a service that was rolled back earlier converges as usual…
        let mut v = view("web", ServiceMode::Replicated { replicas: 1 }, 1, 1);
        v.update_status = status("rollback_completed", 1);
        let spec = v.spec.task.clone();
        let mut w = Watch::new(false, v.update_status.clone());
        assert_eq!(
            w.observe(&v, &[running(1, &spec)]).verdict,
            Verdict::Converged
        );
        // …but a new automatic rollback (a different status) fails.
        v.update_status = status("rollback_completed", 2);
        assert!(matches!(
            w.observe(&v, &[running(1, &spec)]).verdict,
            Verdict::Failed(m) if m.starts_with("update rolled back:")
        ));
        // A paused update never converges: say so at once, as Docker does.
        v.update_status = status("paused", 1);
        let mut w = Watch::new(false, v.update_status.clone());
        assert!(matches!(
            w.observe(&v, &[running(1, &spec)]).verdict,
            Verdict::Failed(m) if m.starts_with("update paused:")
        ));
    }

    #[test]
    fn jobs_converge_when_completed() {
        let mut v = view(
            "batch",
            ServiceMode::ReplicatedJob {
                max_concurrent: 1,
                total_completions: 2,
            },
            1,
            2,
        );
        let spec = v.spec.task.clone();
        let mut done = running(1, &spec);
        done.status.state = TaskState::Complete;
        v.completed = 1;
        let mut w = Watch::new(false, None);
        let s = w.observe(&v, &[done.clone(), running(2, &spec)]);
        assert_eq!(s.verdict, Verdict::Waiting);
        assert_eq!(s.overall_line(), "job progress: 1 out of 2 complete");
        v.completed = 2;
        v.running = 0;
        let mut done2 = running(2, &spec);
        done2.status.state = TaskState::Complete;
        assert_eq!(w.observe(&v, &[done, done2]).verdict, Verdict::Converged);
    }

    #[test]
    fn stuck_and_failed_slots_say_why() {
        let v = view("web", ServiceMode::Replicated { replicas: 2 }, 0, 2);
        let spec = v.spec.task.clone();
        let mut p = running(1, &spec);
        p.status.state = TaskState::Pending;
        p.status.message = "no suitable node (1 node lacks memory)".into();
        let mut f = running(2, &spec);
        f.status.state = TaskState::Failed;
        f.status.err = "task: non-zero exit (1)".into();
        let s = Watch::new(false, None).observe(&v, &[p, f]);
        let lines: Vec<String> = s.slots.iter().map(SlotLine::text).collect();
        assert_eq!(
            lines,
            vec![
                "1/2: pending: no suitable node (1 node lacks memory)",
                "2/2: failed: task: non-zero exit (1)"
            ]
        );
    }

    #[test]
    fn plain_render_prints_only_changes() {
        let v = view("web", ServiceMode::Replicated { replicas: 2 }, 0, 2);
        let spec = v.spec.task.clone();
        let mut w = Watch::new(false, None);
        let mut r = PlainRender::new(Vec::new());
        let mut p = running(2, &spec);
        p.status.state = TaskState::Pending;
        let s = w.observe(&v, &[running(1, &spec), p.clone()]);
        r.show(&s);
        r.show(&s);
        let mut v2 = v.clone();
        v2.running = 2;
        let s = w.observe(&v2, &[running(1, &spec), running(2, &spec)]);
        r.show(&s);
        r.finish(true);
        let out = String::from_utf8(r.into_inner()).unwrap();
        assert_eq!(
            out,
            "overall progress: 1 out of 2 tasks\n1/2: running\n2/2: pending\n\
             overall progress: 2 out of 2 tasks\n2/2: running\nverify: Service converged\n"
        );
    }

    #[tokio::test]
    async fn watch_until_polls_until_converged_or_failed() {
        let v = view("web", ServiceMode::Replicated { replicas: 1 }, 0, 1);
        let spec = v.spec.task.clone();
        let mut v_ok = v.clone();
        v_ok.running = 1;
        let mut script = std::collections::VecDeque::from(vec![
            (v.clone(), vec![]),
            (v_ok.clone(), vec![running(1, &spec)]),
        ]);
        let mut r = PlainRender::new(Vec::new());
        let res = watch_until(
            || {
                let next = script.pop_front().expect("polled past convergence");
                async move { Ok(next) }
            },
            Watch::new(false, None),
            &mut r,
            Duration::from_millis(1),
        )
        .await;
        assert!(res.is_ok());
        assert!(String::from_utf8(r.into_inner())
            .unwrap()
            .ends_with("verify: Service converged\n"));

        let mut paused = v_ok;
        paused.update_status = status("paused", 9);
        let mut r = QuietRender;
        let res = watch_until(
            || {
                let p = paused.clone();
                async move { Ok((p, vec![])) }
            },
            Watch::new(false, status("updating", 9)),
            &mut r,
            Duration::from_millis(1),
        )
        .await;
        let e = res.unwrap_err().0;
        assert_eq!(e, "Error: update paused: paused msg");
    }
}
