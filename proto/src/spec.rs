//! Service and task specifications: what users write (through the CLI) and what the managers
//! store and send to workers. Shared by every crate. On the wire they travel as protobuf
//! messages ([`crate::convert`] for the dispatcher session, [`crate::convert_api`] for the
//! control API).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceMode {
    Replicated {
        replicas: u64,
    },
    Global,
    ReplicatedJob {
        max_concurrent: u64,
        total_completions: u64,
    },
    GlobalJob,
}

impl ServiceMode {
    pub fn name(&self) -> &'static str {
        match self {
            ServiceMode::Replicated { .. } => "replicated",
            ServiceMode::Global => "global",
            ServiceMode::ReplicatedJob { .. } => "replicated job",
            ServiceMode::GlobalJob => "global job",
        }
    }
    pub fn is_job(&self) -> bool {
        matches!(
            self,
            ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob
        )
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    None,
    OnFailure,
    #[default]
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    pub delay_ms: u64,
    /// 0: unlimited.
    pub max_attempts: u64,
    /// 0: attempts are counted over the task's whole life.
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        // Swarm: any, 5 s, unlimited.
        RestartPolicy {
            condition: RestartCondition::Any,
            delay_ms: 5000,
            max_attempts: 0,
            window_ms: 0,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub reserve_nano_cpus: u64,
    pub reserve_memory: u64,
    pub limit_nano_cpus: u64,
    pub limit_memory: u64,
    pub limit_pids: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// `node.role==manager`, `node.labels.zone!=b`, `node.hostname==w1`, `node.id==…`.
    pub constraints: Vec<String>,
    /// `spread=node.labels.zone`.
    pub preferences: Vec<String>,
    /// 0: unlimited.
    pub max_replicas: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    #[default]
    StopFirst,
    StartFirst,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// 0: all at once.
    pub parallelism: u64,
    pub delay_ms: u64,
    pub failure_action: FailureAction,
    pub monitor_ms: u64,
    pub max_failure_ratio: f64,
    pub order: UpdateOrder,
    /// How long a new task may take to reach RUNNING before it counts as failed (Swarm waits
    /// forever). 0: no deadline.
    pub task_deadline_ms: u64,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        // Swarm: parallelism 1, delay 0, pause, monitor 5 s, ratio 0, stop-first.
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: 5000,
            max_failure_ratio: 0.0,
            order: UpdateOrder::StopFirst,
            task_deadline_ms: 60_000,
        }
    }
}

/// What a task runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub resources: Resources,
    pub restart: RestartPolicy,
    pub placement: Placement,
    pub stop_grace_period_ms: u64,
    pub stop_signal: String,
    /// Bumped by `service update --force` to replace tasks with an unchanged spec.
    pub force_update: u64,
    /// Container hostname; may hold Docker's templates (`{{.Service.Name}}`, `{{.Task.Slot}}`,
    /// `{{.Node.Hostname}}`, …: see the worker's `oci::spec::expand`), as may `env` values and
    /// volume names. Empty: the task id's first 12 characters, as Docker does.
    #[serde(default)]
    pub hostname: String,
    /// `user[:group]`, names or numbers; empty: the image's user.
    #[serde(default)]
    pub user: String,
    /// Empty: the image's working directory.
    #[serde(default)]
    pub workdir: String,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Secrets by name; the dispatcher sends their data once to each node that needs it.
    #[serde(default)]
    pub secrets: Vec<FileRef>,
    /// Configs by name, as secrets.
    #[serde(default)]
    pub configs: Vec<FileRef>,
    /// None: the image's HEALTHCHECK, if any.
    #[serde(default)]
    pub healthcheck: Option<HealthCheck>,
    /// Overlay networks the task joins, in order (`eth0`, `eth1`, … in the container).
    #[serde(default)]
    pub networks: Vec<NetworkAttachmentConfig>,
    /// `--dns`, `--dns-search`, `--dns-option`: the servers the container's embedded DNS
    /// forwards unknown names to (empty: the node's resolvers), and resolv.conf's other lines.
    #[serde(default)]
    pub dns: DnsConfig,
    /// `--host HOST:IP`: extra lines of the container's /etc/hosts, each `IP NAME` (as
    /// Docker's spec keeps them).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// `--read-only`: the container's root file system mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// `--cap-add`, `--cap-drop`: capabilities (`CAP_NET_ADMIN`, or `ALL`) on top of, or taken
    /// from, Docker's default set.
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// `--sysctl KEY=VALUE`: namespaced kernel parameters of the container.
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// `--ulimit NAME=SOFT[:HARD]`: resource limits of the container's processes.
    #[serde(default)]
    pub ulimits: Vec<Ulimit>,
    /// `--log-driver` and `--log-opt`: how the container's output is kept (absent:
    /// json-file, rotated at [`crate::limits::DEFAULT_LOG_MAX_SIZE`] ×
    /// [`crate::limits::DEFAULT_LOG_MAX_FILE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_driver: Option<LogDriver>,
    /// `--init`: an init process (tini, as Docker's docker-init) runs as PID 1, forwards
    /// signals and reaps zombies.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init: bool,
    /// `--container-label`: labels of the containers (the runtime config's annotations).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub container_labels: BTreeMap<String, String>,
}

/// `--log-driver json-file|local|none --log-opt max-size=10m,max-file=3`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogDriver {
    pub name: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// One `--ulimit`: `nofile=1024:2048` (a limit of -1 is unlimited).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Bind,
    #[default]
    Volume,
    Tmpfs,
}

/// `--mount type=bind|volume|tmpfs,source=,target=[,readonly]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: MountKind,
    /// Host path (bind), volume name (volume; empty: anonymous, removed with the task), unused
    /// for tmpfs.
    pub source: String,
    /// Absolute path in the container.
    pub target: String,
    pub readonly: bool,
    /// `volume-opt=K=V` of a volume mount: the local driver's `type`, `device` and `o` with
    /// which the node creates the volume at its first use (a tmpfs, a bind of `device`, or
    /// any file system the kernel mounts).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_options: BTreeMap<String, String>,
}

impl Mount {
    /// The local driver's options a volume mount may carry.
    pub const VOLUME_OPTIONS: [&'static str; 3] = ["type", "device", "o"];

    /// Why `volume_options` cannot make a volume (what the node would refuse, refused at
    /// the API): known keys, a `type` among them, `device` where the type needs one.
    pub fn volume_options_error(&self) -> Option<String> {
        let opts = &self.volume_options;
        if opts.is_empty() {
            return None;
        }
        if self.kind != MountKind::Volume {
            return Some("volume options apply to volume mounts only".into());
        }
        for (k, v) in opts {
            if !Self::VOLUME_OPTIONS.contains(&k.as_str()) {
                return Some(format!(
                    "unknown volume option {k:?}: the local driver takes type, device and o"
                ));
            }
            if v.len() > 4096 || v.contains(['\0', '\n']) {
                return Some(format!(
                    "invalid volume option {k}: at most 4096 bytes, one line"
                ));
            }
        }
        let Some(ty) = opts.get("type") else {
            return Some(
                "volume options need type= (tmpfs, none with o=bind, or a file system type)".into(),
            );
        };
        if ty.is_empty()
            || !ty
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Some(format!("invalid volume type {ty:?}"));
        }
        let device = opts.get("device").map(String::as_str).unwrap_or("");
        let o = opts.get("o").map(String::as_str).unwrap_or("");
        match ty.as_str() {
            "tmpfs" => None,
            "none" => {
                if !o.split(',').any(|x| x == "bind" || x == "rbind") {
                    Some("volume type none needs o=bind (a bind of device)".into())
                } else if !device.starts_with('/') {
                    Some(format!(
                        "volume device {device:?}: a bind needs an absolute host path"
                    ))
                } else {
                    None
                }
            }
            _ if device.is_empty() => Some(format!("volume type {ty} needs device=")),
            _ => None,
        }
    }
}

/// A secret or config used by a service: `--secret NAME[,target=PATH]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub name: String,
    /// File name under /run/secrets (secrets) or absolute path (configs); empty: the name
    /// (secrets: /run/secrets/NAME; configs: /NAME).
    pub target: String,
    /// The file's owner and mode (`uid=`, `gid=`, `mode=`); none: the container's user,
    /// 0400 for secrets and 0444 for configs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// Docker's healthcheck: `test` is `["CMD", arg…]`, `["CMD-SHELL", "cmd"]` or `["NONE"]`
/// (disables the image's healthcheck). Durations 0 take Docker's defaults (30 s interval,
/// 30 s timeout, 3 retries, 0 start period).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub test: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u64,
    pub start_period_ms: u64,
    /// How often to probe during the start period (`--health-start-interval`); 0: the
    /// interval.
    #[serde(default)]
    pub start_interval_ms: u64,
}

/// `--network NAME[,alias=A]`: a network the task joins and extra DNS names for the service
/// on it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachmentConfig {
    /// Network name, id or unique id prefix as the user wrote it; the manager stores the id.
    pub target: String,
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// One virtual IP per network, balanced in the kernel over the healthy tasks.
    #[default]
    Vip,
    /// The service name resolves to the addresses of its healthy tasks.
    Dnsrr,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
}

impl PortProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// The routing mesh: the port answers on every node.
    #[default]
    Ingress,
    /// The port is opened only on the nodes that run a task, to that task.
    Host,
}

/// `--publish [mode=ingress|host,]published=P,target=T[,protocol=tcp|udp]` or `-p P:T[/udp]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortConfig {
    #[serde(default)]
    pub protocol: PortProtocol,
    pub target_port: u16,
    /// 0 in a spec: the manager picks one (30000–32767, as Swarm); always set in a service's
    /// endpoint.
    #[serde(default)]
    pub published_port: u16,
    #[serde(default)]
    pub publish_mode: PublishMode,
}

/// The default port of the managers' gRPC listener (Swarm's).
pub const MANAGER_PORT: u16 = 2377;
/// The VXLAN port of the overlay networks.
pub const VXLAN_PORT: u16 = 4789;

/// Ports a node uses itself, whatever else it is configured with, and what for: no service
/// may publish them, and the routing mesh never captures them (a published 2377 would take
/// every manager's control traffic).
pub const NODE_PORTS: [(PortProtocol, u16, &str); 2] = [
    (
        PortProtocol::Tcp,
        MANAGER_PORT,
        "the managers' control port",
    ),
    (
        PortProtocol::Udp,
        VXLAN_PORT,
        "overlay network traffic (VXLAN)",
    ),
];

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    #[serde(default)]
    pub mode: EndpointMode,
    #[serde(default)]
    pub ports: Vec<PortConfig>,
}

/// `network create`: what the user asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    /// Only "overlay".
    pub driver: String,
    /// CIDR; empty: the next free one from the cluster's default address pool.
    #[serde(default)]
    pub subnet: String,
    /// Empty: the subnet's first address.
    #[serde(default)]
    pub gateway: String,
    /// Standalone containers may join (kept for compatibility; shoal runs services only).
    #[serde(default)]
    pub attachable: bool,
    /// No egress: tasks on only internal networks get no gateway interface.
    #[serde(default)]
    pub internal: bool,
    /// The routing mesh's network (one per cluster, made at `swarm init`).
    #[serde(default)]
    pub ingress: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A task's place on one overlay network, as the allocator fixed it and the node needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskNetwork {
    pub network_id: String,
    pub network_name: String,
    pub vni: u32,
    /// The network's subnet, e.g. `10.0.1.0/24`.
    pub subnet: String,
    pub gateway: Ipv4Addr,
    /// The task's address on it (prefix length: the subnet's).
    pub addr: Ipv4Addr,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub ingress: bool,
    /// The service's aliases on this network.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// The MAC address of an endpoint on an overlay, derived from its address as Docker does
/// (`02:42` and the four bytes of the address), so every node knows it without asking.
pub fn overlay_mac(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// What one node needs to program its overlay datapath, DNS and load balancers; the node puts
/// it together from the per-network and per-service updates of its session
/// ([`crate::convert::NetAssembler`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNetState {
    pub node_id: String,
    /// The node's underlay address (from its advertise address): the VXLAN source.
    pub node_ip: Option<Ipv4Addr>,
    /// The node's own address on the ingress network (its routing-mesh sandbox).
    pub ingress_addr: Option<Ipv4Addr>,
    /// The overlays this node has tasks on, and always `ingress`.
    pub networks: Vec<NetworkState>,
    /// Services on those networks, and every service with published ports.
    pub services: Vec<ServiceNet>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkState {
    pub id: String,
    pub name: String,
    pub vni: u32,
    pub subnet: String,
    pub gateway: Option<Ipv4Addr>,
    pub internal: bool,
    pub ingress: bool,
    /// Endpoints on other nodes: tasks, and (on ingress) the other nodes' sandboxes. MAC:
    /// [`overlay_mac`] of the address.
    pub peers: Vec<NetPeer>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetPeer {
    pub addr: Ipv4Addr,
    /// The underlay address of the node that holds it.
    pub node_ip: Ipv4Addr,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNet {
    pub id: String,
    pub name: String,
    pub mode: EndpointMode,
    /// Resolved: every published port is set.
    pub ports: Vec<PortConfig>,
    /// The service on each of its networks: VIP (vip mode) and aliases.
    pub networks: Vec<ServiceOnNetwork>,
    /// Tasks that may take traffic: RUNNING (and healthy), desired RUNNING, on a ready node.
    /// A task leaves this list as soon as it is asked to stop.
    pub backends: Vec<Backend>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOnNetwork {
    pub network_id: String,
    pub vip: Option<Ipv4Addr>,
    pub aliases: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub task_id: String,
    pub node_id: String,
    /// The task's address on each of its networks: (network id, address).
    pub addrs: Vec<(String, Ipv4Addr)>,
}

/// The data of a secret or config, sent once to each node that runs a task naming it, and
/// only there; the node puts it into those tasks' assignments. Never written to a worker's
/// disk (mounted from tmpfs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileData {
    pub name: String,
    /// Where it goes: for secrets the path is /run/secrets/`target`, unless absolute.
    pub target: String,
    pub data: Vec<u8>,
    /// As [`FileRef`]'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub mode: ServiceMode,
    pub task: TaskSpec,
    pub update: UpdateConfig,
    pub rollback: UpdateConfig,
    /// How the service is reached: VIP or DNS round robin, and its published ports.
    #[serde(default)]
    pub endpoint: EndpointSpec,
}

/// Task states, in the only order they may be passed through (Swarm's).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    #[default]
    New,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Ready,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    Remove,
    Orphaned,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }
    /// Past RUNNING: the task will not run (again).
    pub fn is_terminal(self) -> bool {
        self > TaskState::Running
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    pub message: String,
    pub err: String,
    pub exit_code: Option<i32>,
    pub timestamp_ms: i64,
}

/// What the manager sends a worker for each task assigned to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub task_id: String,
    pub service_id: String,
    pub service_name: String,
    pub slot: u64,
    pub spec: TaskSpec,
    pub desired_state: TaskState,
    /// The hostname of the node the task is assigned to (for `{{.Node.Hostname}}`).
    #[serde(default)]
    pub node_hostname: String,
    /// The data of the secrets and configs the spec names, filled in on the node
    /// ([`crate::convert::fill_files`]); not part of the wire assignment.
    #[serde(default)]
    pub secrets: Vec<FileData>,
    #[serde(default)]
    pub configs: Vec<FileData>,
    /// The task's overlay networks, in the order of its interfaces.
    #[serde(default)]
    pub networks: Vec<TaskNetwork>,
    /// The node the task is assigned to (for `{{.Node.ID}}`).
    #[serde(default)]
    pub node_id: String,
    /// Its service's labels (for `{{.Service.Labels}}`).
    #[serde(default)]
    pub service_labels: BTreeMap<String, String>,
}

/// What a worker reports about one task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub task_id: String,
    pub status: TaskStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_ordered_as_swarm() {
        assert!(TaskState::New < TaskState::Pending);
        assert!(TaskState::Running < TaskState::Complete);
        assert!(!TaskState::Running.is_terminal() && TaskState::Shutdown.is_terminal());
        let s = serde_json::to_string(&TaskState::Running).unwrap();
        assert_eq!(s, "\"running\"");
    }

    #[test]
    fn spec_round_trips_through_json() {
        let spec = ServiceSpec {
            name: "web".into(),
            labels: Default::default(),
            mode: ServiceMode::Replicated { replicas: 3 },
            task: TaskSpec {
                image: "busybox".into(),
                ..Default::default()
            },
            update: UpdateConfig::default(),
            rollback: UpdateConfig::default(),
            endpoint: EndpointSpec::default(),
        };
        let j = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<ServiceSpec>(&j).unwrap(), spec);
    }
}
