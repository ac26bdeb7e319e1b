//! The clap surface of `service create`, `update` and `ps`: the flags and their help.

use std::time::Duration;

use clap::Args;
use proto::spec::{
    EndpointMode, FailureAction, FileRef, Mount, NetworkAttachmentConfig, RestartCondition,
    UpdateOrder,
};

use crate::output::Format;
use crate::units::{parse_duration, parse_size};

use super::parse::{
    parse_config_ref, parse_cpu, parse_dns_option, parse_dns_search, parse_dns_server,
    parse_endpoint_mode, parse_mode, parse_mount, parse_network, parse_order, parse_ratio,
    parse_restart_condition, parse_rollback_failure_action, parse_secret_ref,
    parse_update_failure_action,
};
use super::ports::{parse_publish, parse_publish_rm, PortMatches, Published};

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
    #[arg(
        long = "replicas-max-per-node",
        alias = "max-replicas",
        value_name = "N"
    )]
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
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub restart_delay: Option<Duration>,
    /// Maximum number of restarts before giving up (default 0 = unlimited).
    #[arg(long, value_name = "N")]
    pub restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy (default: unbounded).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub restart_window: Option<Duration>,
    /// Maximum number of tasks updated simultaneously (0 to update all at once; default 1).
    #[arg(long, value_name = "N")]
    pub update_parallelism: Option<u64>,
    /// Delay between updates (default 0s).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub update_delay: Option<Duration>,
    /// Update order: stop-first or start-first (default stop-first).
    #[arg(long, value_parser = parse_order, value_name = "ORDER")]
    pub update_order: Option<UpdateOrder>,
    /// Action on update failure: pause, continue or rollback (default pause).
    #[arg(long, value_parser = parse_update_failure_action, value_name = "ACTION")]
    pub update_failure_action: Option<FailureAction>,
    /// Duration after each task update to monitor for failure (default 5s).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub update_monitor: Option<Duration>,
    /// Failure rate to tolerate during an update (default 0).
    #[arg(long, value_parser = parse_ratio, value_name = "F")]
    pub update_max_failure_ratio: Option<f64>,
    /// How long a new task may take to start before it counts as failed (default 1m; 0 = no
    /// deadline).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub update_task_deadline: Option<Duration>,
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once; default 1).
    #[arg(long, value_name = "N")]
    pub rollback_parallelism: Option<u64>,
    /// Delay between task rollbacks (default 0s).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub rollback_delay: Option<Duration>,
    /// Rollback order: stop-first or start-first (default stop-first).
    #[arg(long, value_parser = parse_order, value_name = "ORDER")]
    pub rollback_order: Option<UpdateOrder>,
    /// Action on rollback failure: pause or continue (default pause).
    #[arg(long, value_parser = parse_rollback_failure_action, value_name = "ACTION")]
    pub rollback_failure_action: Option<FailureAction>,
    /// Duration after each task rollback to monitor for failure (default 5s).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub rollback_monitor: Option<Duration>,
    /// Failure rate to tolerate during a rollback (default 0).
    #[arg(long, value_parser = parse_ratio, value_name = "F")]
    pub rollback_max_failure_ratio: Option<f64>,
    /// Like --update-task-deadline, for rollbacks.
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub rollback_task_deadline: Option<Duration>,
    /// Time to wait before force killing a container (default 10s).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
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
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub health_interval: Option<Duration>,
    /// Maximum time to allow one check to run (ms|s|m|h).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub health_timeout: Option<Duration>,
    /// Consecutive failures needed to report unhealthy.
    #[arg(long, value_name = "N")]
    pub health_retries: Option<u64>,
    /// Start period for the container to initialize before counting retries (ms|s|m|h).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub health_start_period: Option<Duration>,
    /// Time between running the check during the start period (e.g. 1s).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub health_start_interval: Option<Duration>,
    /// Disable any container-specified HEALTHCHECK.
    #[arg(long)]
    pub no_healthcheck: bool,
    /// Endpoint mode: vip (a virtual IP per network) or dnsrr (DNS round robin).
    #[arg(long, value_parser = parse_endpoint_mode, value_name = "MODE")]
    pub endpoint_mode: Option<EndpointMode>,
    /// Logging driver for the service's containers: json-file (default), local or none.
    #[arg(long, value_name = "DRIVER")]
    pub log_driver: Option<String>,
    /// Logging driver options: max-size=SIZE (default 50m), max-file=N (default 3).
    #[arg(long, value_name = "KEY=VALUE")]
    pub log_opt: Vec<String>,
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
    /// Read environment variables from a file: KEY=VALUE lines (a bare KEY takes this
    /// shell's value; blank and # lines skipped); --env wins over it.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<std::path::PathBuf>,
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
    /// Add a custom host-to-IP mapping to the containers' /etc/hosts (HOST:IP); repeatable.
    #[arg(long = "host", value_parser = proto::limits::host_entry, value_name = "HOST:IP")]
    pub hosts: Vec<String>,
    /// Mount the container's root filesystem as read only.
    #[arg(long)]
    pub read_only: bool,
    /// Use an init inside each service container to forward signals and reap processes.
    #[arg(long)]
    pub init: bool,
    /// Container labels (KEY=VALUE).
    #[arg(long = "container-label", value_name = "KEY=VALUE")]
    pub container_labels: Vec<String>,
    /// Add Linux capabilities (e.g. NET_ADMIN, or ALL).
    #[arg(long = "cap-add", value_parser = proto::limits::capability, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities (e.g. CHOWN, or ALL).
    #[arg(long = "cap-drop", value_parser = proto::limits::capability, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Namespaced kernel parameters (KEY=VALUE, e.g. net.core.somaxconn=1024).
    #[arg(long = "sysctl", value_parser = parse_sysctl, value_name = "KEY=VALUE")]
    pub sysctls: Vec<(String, String)>,
    /// Resource limits of the container's processes (NAME=SOFT[:HARD], e.g. nofile=1024:2048).
    #[arg(long = "ulimit", value_parser = proto::limits::ulimit, value_name = "ULIMIT")]
    pub ulimits: Vec<proto::spec::Ulimit>,
    #[command(flatten)]
    pub flags: SpecFlags,
    /// Exit immediately instead of waiting for the service to converge (`--detach=false`:
    /// wait).
    #[arg(short, long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    pub detach: bool,
    /// Suppress progress output.
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not query the registry to pin the image's digest (Docker's flag; shoal never does:
    /// each node resolves the tag when it pulls).
    #[arg(long)]
    pub no_resolve_image: bool,
    /// The image, e.g. registry.example:5000/web:v1.
    pub image: String,
    /// The command and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

/// `--sysctl KEY=VALUE`, checked as the manager checks it.
fn parse_sysctl(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid --sysctl {text:?}: expected KEY=VALUE"))?;
    proto::limits::check_sysctl(k.trim(), v.trim())?;
    Ok((k.trim().to_string(), v.trim().to_string()))
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
    /// Add a custom host-to-IP mapping (HOST:IP).
    #[arg(long = "host-add", value_parser = proto::limits::host_entry, value_name = "HOST:IP")]
    pub host_add: Vec<String>,
    /// Mount the container's root filesystem as read only (`--read-only=false`: writable).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub read_only: Option<bool>,
    /// Add or update a container label (KEY=VALUE).
    #[arg(long = "container-label-add", value_name = "KEY=VALUE")]
    pub container_label_add: Vec<String>,
    /// Remove a container label.
    #[arg(long = "container-label-rm", value_name = "KEY")]
    pub container_label_rm: Vec<String>,
    /// Use an init inside each service container (`--init=false`: none).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub init: Option<bool>,
    /// Add Linux capabilities (taken off the dropped ones).
    #[arg(long = "cap-add", value_parser = proto::limits::capability, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities (taken off the added ones).
    #[arg(long = "cap-drop", value_parser = proto::limits::capability, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Add or update a namespaced kernel parameter (KEY=VALUE).
    #[arg(long = "sysctl-add", value_parser = parse_sysctl, value_name = "KEY=VALUE")]
    pub sysctl_add: Vec<(String, String)>,
    /// Remove a kernel parameter (KEY).
    #[arg(long = "sysctl-rm", value_name = "KEY")]
    pub sysctl_rm: Vec<String>,
    /// Add or update a ulimit (NAME=SOFT[:HARD]).
    #[arg(long = "ulimit-add", value_parser = proto::limits::ulimit, value_name = "ULIMIT")]
    pub ulimit_add: Vec<proto::spec::Ulimit>,
    /// Remove a ulimit (NAME).
    #[arg(long = "ulimit-rm", value_name = "NAME")]
    pub ulimit_rm: Vec<String>,
    /// Remove a custom host-to-IP mapping: HOST:IP, or HOST for every address of it.
    #[arg(long = "host-rm", value_name = "HOST[:IP]")]
    pub host_rm: Vec<String>,
    #[command(flatten)]
    pub flags: SpecFlags,
    /// Force update even if no changes require it.
    #[arg(long)]
    pub force: bool,
    /// Rollback to previous specification.
    #[arg(long)]
    pub rollback: bool,
    /// Exit immediately instead of waiting for the service to converge (`--detach=false`:
    /// wait).
    #[arg(short, long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    pub detach: bool,
    /// Suppress progress output.
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not query the registry to pin the image's digest (Docker's flag; shoal never does:
    /// each node resolves the tag when it pulls).
    #[arg(long)]
    pub no_resolve_image: bool,
    /// The service: id, unique id prefix or name.
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
    /// Services: id, unique id prefix or name.
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
