//! Conversions between the domain types ([`crate::spec`]) and their protobuf messages
//! ([`crate::pb`]) for what the dispatcher session carries; [`crate::convert_api`] does the
//! same for the control API and the node-local API.
//!
//! Domain to wire is `From` (it cannot fail); wire to domain is `TryFrom` with a
//! [`ConvertError`] naming the field, since the wire comes from another process. Enum values
//! this version does not know never reject a whole message: a task state falls back to the
//! nearest known state below it (the numbering leaves gaps for that), a restart condition or
//! endpoint mode to its default, and the rest ([`MountKind`](crate::spec::MountKind), port
//! protocol and mode, file kind) reject only the item that holds them, which the caller skips.
//!
//! Secret and config data is not part of an assignment on the wire: tasks carry references
//! ([`crate::spec::FileRef`]) and the node receives each file once ([`pb::FileData`]);
//! [`fill_files`] puts the data back into an assignment for the executor.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::pb;
use crate::spec;

/// Why a message from the wire cannot become a domain value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("{field}: missing")]
    Missing { field: &'static str },
    #[error("{field}: {value:?} is not an IPv4 address")]
    BadAddr { field: &'static str, value: String },
    #[error("{field}: unknown value {value}")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error("{field}: {value} is out of range")]
    OutOfRange { field: &'static str, value: u64 },
}

pub(crate) type Result<T> = std::result::Result<T, ConvertError>;

fn addr(field: &'static str, s: &str) -> Result<Ipv4Addr> {
    s.parse().map_err(|_| ConvertError::BadAddr {
        field,
        value: s.chars().take(64).collect(),
    })
}

fn opt_addr(field: &'static str, s: &str) -> Result<Option<Ipv4Addr>> {
    if s.is_empty() {
        Ok(None)
    } else {
        addr(field, s).map(Some)
    }
}

fn opt_addr_str(a: Option<Ipv4Addr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_default()
}

fn port(field: &'static str, v: u32) -> Result<u16> {
    u16::try_from(v).map_err(|_| ConvertError::OutOfRange {
        field,
        value: v.into(),
    })
}

pub(crate) fn strict<T: TryFrom<i32>>(field: &'static str, v: i32) -> Result<T> {
    T::try_from(v).map_err(|_| ConvertError::UnknownEnum { field, value: v })
}

pub(crate) fn lenient<T: TryFrom<i32>>(field: &'static str, v: i32, fallback: T) -> T {
    T::try_from(v).unwrap_or_else(|_| {
        tracing::debug!(field, value = v, "unknown enum value: using the default");
        fallback
    })
}

// ------------------------------------------------------------------ task state

impl From<spec::TaskState> for pb::TaskState {
    fn from(s: spec::TaskState) -> Self {
        use spec::TaskState as S;
        match s {
            S::New => pb::TaskState::New,
            S::Pending => pb::TaskState::Pending,
            S::Assigned => pb::TaskState::Assigned,
            S::Accepted => pb::TaskState::Accepted,
            S::Preparing => pb::TaskState::Preparing,
            S::Ready => pb::TaskState::Ready,
            S::Starting => pb::TaskState::Starting,
            S::Running => pb::TaskState::Running,
            S::Complete => pb::TaskState::Complete,
            S::Shutdown => pb::TaskState::Shutdown,
            S::Failed => pb::TaskState::Failed,
            S::Rejected => pb::TaskState::Rejected,
            S::Remove => pb::TaskState::Remove,
            S::Orphaned => pb::TaskState::Orphaned,
        }
    }
}

impl From<pb::TaskState> for spec::TaskState {
    fn from(s: pb::TaskState) -> Self {
        use spec::TaskState as S;
        match s {
            pb::TaskState::New => S::New,
            pb::TaskState::Pending => S::Pending,
            pb::TaskState::Assigned => S::Assigned,
            pb::TaskState::Accepted => S::Accepted,
            pb::TaskState::Preparing => S::Preparing,
            pb::TaskState::Ready => S::Ready,
            pb::TaskState::Starting => S::Starting,
            pb::TaskState::Running => S::Running,
            pb::TaskState::Complete => S::Complete,
            pb::TaskState::Shutdown => S::Shutdown,
            pb::TaskState::Failed => S::Failed,
            pb::TaskState::Rejected => S::Rejected,
            pb::TaskState::Remove => S::Remove,
            pb::TaskState::Orphaned => S::Orphaned,
        }
    }
}

const ALL_STATES: [pb::TaskState; 14] = [
    pb::TaskState::New,
    pb::TaskState::Pending,
    pb::TaskState::Assigned,
    pb::TaskState::Accepted,
    pb::TaskState::Preparing,
    pb::TaskState::Ready,
    pb::TaskState::Starting,
    pb::TaskState::Running,
    pb::TaskState::Complete,
    pb::TaskState::Shutdown,
    pb::TaskState::Failed,
    pb::TaskState::Rejected,
    pb::TaskState::Remove,
    pb::TaskState::Orphaned,
];

/// The task state a wire value means: a value this version does not know (a state added
/// later, numbered between its neighbours) is the nearest known state below it.
pub fn task_state(field: &'static str, v: i32) -> spec::TaskState {
    if let Ok(s) = pb::TaskState::try_from(v) {
        return s.into();
    }
    let below = ALL_STATES
        .iter()
        .rev()
        .find(|s| (**s as i32) <= v)
        .copied()
        .unwrap_or(pb::TaskState::New);
    tracing::debug!(
        field,
        value = v,
        as_state = ?below,
        "unknown task state: taking the nearest known state below it"
    );
    below.into()
}

// ------------------------------------------------------------------ status

impl From<&spec::TaskStatus> for pb::TaskStatus {
    fn from(s: &spec::TaskStatus) -> Self {
        pb::TaskStatus {
            state: pb::TaskState::from(s.state) as i32,
            message: s.message.clone(),
            err: s.err.clone(),
            exit_code: s.exit_code,
            timestamp_ms: s.timestamp_ms,
        }
    }
}

impl TryFrom<pb::TaskStatus> for spec::TaskStatus {
    type Error = ConvertError;
    fn try_from(s: pb::TaskStatus) -> Result<Self> {
        Ok(spec::TaskStatus {
            state: task_state("TaskStatus.state", s.state),
            message: s.message,
            err: s.err,
            exit_code: s.exit_code,
            timestamp_ms: s.timestamp_ms,
        })
    }
}

impl From<&spec::StatusReport> for pb::StatusReport {
    fn from(r: &spec::StatusReport) -> Self {
        pb::StatusReport {
            task_id: r.task_id.clone(),
            status: Some((&r.status).into()),
        }
    }
}

impl TryFrom<pb::StatusReport> for spec::StatusReport {
    type Error = ConvertError;
    fn try_from(r: pb::StatusReport) -> Result<Self> {
        Ok(spec::StatusReport {
            task_id: r.task_id,
            status: r
                .status
                .ok_or(ConvertError::Missing {
                    field: "StatusReport.status",
                })?
                .try_into()?,
        })
    }
}

// ------------------------------------------------------------------ task spec

impl From<spec::RestartCondition> for pb::RestartCondition {
    fn from(c: spec::RestartCondition) -> Self {
        match c {
            spec::RestartCondition::Any => pb::RestartCondition::Any,
            spec::RestartCondition::None => pb::RestartCondition::None,
            spec::RestartCondition::OnFailure => pb::RestartCondition::OnFailure,
        }
    }
}

impl From<pb::RestartCondition> for spec::RestartCondition {
    fn from(c: pb::RestartCondition) -> Self {
        match c {
            pb::RestartCondition::Any => spec::RestartCondition::Any,
            pb::RestartCondition::None => spec::RestartCondition::None,
            pb::RestartCondition::OnFailure => spec::RestartCondition::OnFailure,
        }
    }
}

impl From<spec::MountKind> for pb::MountKind {
    fn from(k: spec::MountKind) -> Self {
        match k {
            spec::MountKind::Volume => pb::MountKind::Volume,
            spec::MountKind::Bind => pb::MountKind::Bind,
            spec::MountKind::Tmpfs => pb::MountKind::Tmpfs,
        }
    }
}

impl From<pb::MountKind> for spec::MountKind {
    fn from(k: pb::MountKind) -> Self {
        match k {
            pb::MountKind::Volume => spec::MountKind::Volume,
            pb::MountKind::Bind => spec::MountKind::Bind,
            pb::MountKind::Tmpfs => spec::MountKind::Tmpfs,
        }
    }
}

impl From<&spec::FileRef> for pb::FileReference {
    fn from(r: &spec::FileRef) -> Self {
        pb::FileReference {
            name: r.name.clone(),
            target: r.target.clone(),
            uid: r.uid,
            gid: r.gid,
            mode: r.mode,
        }
    }
}

impl From<pb::FileReference> for spec::FileRef {
    fn from(r: pb::FileReference) -> Self {
        spec::FileRef {
            name: r.name,
            target: r.target,
            uid: r.uid,
            gid: r.gid,
            mode: r.mode,
        }
    }
}

impl From<&spec::TaskSpec> for pb::TaskSpec {
    fn from(s: &spec::TaskSpec) -> Self {
        let r = &s.resources;
        pb::TaskSpec {
            image: s.image.clone(),
            command: s.command.clone(),
            args: s.args.clone(),
            env: s.env.clone(),
            resources: Some(pb::Resources {
                reserve_nano_cpus: r.reserve_nano_cpus,
                reserve_memory: r.reserve_memory,
                limit_nano_cpus: r.limit_nano_cpus,
                limit_memory: r.limit_memory,
                limit_pids: r.limit_pids,
            }),
            restart: Some(pb::RestartPolicy {
                condition: pb::RestartCondition::from(s.restart.condition) as i32,
                delay_ms: s.restart.delay_ms,
                max_attempts: s.restart.max_attempts,
                window_ms: s.restart.window_ms,
            }),
            placement: Some(pb::Placement {
                constraints: s.placement.constraints.clone(),
                preferences: s.placement.preferences.clone(),
                max_replicas: s.placement.max_replicas,
            }),
            stop_grace_period_ms: s.stop_grace_period_ms,
            stop_signal: s.stop_signal.clone(),
            force_update: s.force_update,
            hostname: s.hostname.clone(),
            user: s.user.clone(),
            workdir: s.workdir.clone(),
            mounts: s
                .mounts
                .iter()
                .map(|m| pb::Mount {
                    kind: pb::MountKind::from(m.kind) as i32,
                    source: m.source.clone(),
                    target: m.target.clone(),
                    readonly: m.readonly,
                    volume_options: m.volume_options.clone().into_iter().collect(),
                })
                .collect(),
            secrets: s.secrets.iter().map(Into::into).collect(),
            configs: s.configs.iter().map(Into::into).collect(),
            healthcheck: s.healthcheck.as_ref().map(|h| pb::HealthCheck {
                test: h.test.clone(),
                interval_ms: h.interval_ms,
                timeout_ms: h.timeout_ms,
                retries: h.retries,
                start_period_ms: h.start_period_ms,
                start_interval_ms: h.start_interval_ms,
            }),
            networks: s
                .networks
                .iter()
                .map(|n| pb::NetworkAttachmentConfig {
                    target: n.target.clone(),
                    aliases: n.aliases.clone(),
                })
                .collect(),
            dns: Some(pb::DnsConfig {
                nameservers: s.dns.nameservers.clone(),
                search: s.dns.search.clone(),
                options: s.dns.options.clone(),
            }),
            hosts: s.hosts.clone(),
            read_only: s.read_only,
            cap_add: s.cap_add.clone(),
            cap_drop: s.cap_drop.clone(),
            sysctls: s.sysctls.clone().into_iter().collect(),
            ulimits: s
                .ulimits
                .iter()
                .map(|u| pb::Ulimit {
                    name: u.name.clone(),
                    soft: u.soft,
                    hard: u.hard,
                })
                .collect(),
            log_driver: s.log_driver.as_ref().map(|d| pb::LogDriver {
                name: d.name.clone(),
                options: d.options.clone().into_iter().collect(),
            }),
            init: s.init,
            container_labels: s.container_labels.clone().into_iter().collect(),
        }
    }
}

impl TryFrom<pb::TaskSpec> for spec::TaskSpec {
    type Error = ConvertError;
    fn try_from(s: pb::TaskSpec) -> Result<Self> {
        let r = s.resources.unwrap_or_default();
        let restart = s.restart.ok_or(ConvertError::Missing {
            field: "TaskSpec.restart",
        })?;
        let placement = s.placement.unwrap_or_default();
        let dns = s.dns.unwrap_or_default();
        let mounts = s
            .mounts
            .into_iter()
            .map(|m| {
                Ok(spec::Mount {
                    kind: strict::<pb::MountKind>("Mount.kind", m.kind)?.into(),
                    source: m.source,
                    target: m.target,
                    readonly: m.readonly,
                    volume_options: m.volume_options.into_iter().collect(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(spec::TaskSpec {
            image: s.image,
            command: s.command,
            args: s.args,
            env: s.env,
            resources: spec::Resources {
                reserve_nano_cpus: r.reserve_nano_cpus,
                reserve_memory: r.reserve_memory,
                limit_nano_cpus: r.limit_nano_cpus,
                limit_memory: r.limit_memory,
                limit_pids: r.limit_pids,
            },
            restart: spec::RestartPolicy {
                condition: lenient(
                    "RestartPolicy.condition",
                    restart.condition,
                    pb::RestartCondition::Any,
                )
                .into(),
                delay_ms: restart.delay_ms,
                max_attempts: restart.max_attempts,
                window_ms: restart.window_ms,
            },
            placement: spec::Placement {
                constraints: placement.constraints,
                preferences: placement.preferences,
                max_replicas: placement.max_replicas,
            },
            stop_grace_period_ms: s.stop_grace_period_ms,
            stop_signal: s.stop_signal,
            force_update: s.force_update,
            hostname: s.hostname,
            user: s.user,
            workdir: s.workdir,
            mounts,
            secrets: s.secrets.into_iter().map(Into::into).collect(),
            configs: s.configs.into_iter().map(Into::into).collect(),
            healthcheck: s.healthcheck.map(|h| spec::HealthCheck {
                test: h.test,
                interval_ms: h.interval_ms,
                timeout_ms: h.timeout_ms,
                retries: h.retries,
                start_period_ms: h.start_period_ms,
                start_interval_ms: h.start_interval_ms,
            }),
            networks: s
                .networks
                .into_iter()
                .map(|n| spec::NetworkAttachmentConfig {
                    target: n.target,
                    aliases: n.aliases,
                })
                .collect(),
            dns: spec::DnsConfig {
                nameservers: dns.nameservers,
                search: dns.search,
                options: dns.options,
            },
            hosts: s.hosts,
            read_only: s.read_only,
            cap_add: s.cap_add,
            cap_drop: s.cap_drop,
            sysctls: s.sysctls.into_iter().collect(),
            ulimits: s
                .ulimits
                .into_iter()
                .map(|u| spec::Ulimit {
                    name: u.name,
                    soft: u.soft,
                    hard: u.hard,
                })
                .collect(),
            log_driver: s.log_driver.map(|d| spec::LogDriver {
                name: d.name,
                options: d.options.into_iter().collect(),
            }),
            init: s.init,
            container_labels: s.container_labels.into_iter().collect(),
        })
    }
}

impl From<&spec::TaskNetwork> for pb::TaskNetwork {
    fn from(n: &spec::TaskNetwork) -> Self {
        pb::TaskNetwork {
            network_id: n.network_id.clone(),
            network_name: n.network_name.clone(),
            vni: n.vni,
            subnet: n.subnet.clone(),
            gateway: n.gateway.to_string(),
            addr: n.addr.to_string(),
            internal: n.internal,
            ingress: n.ingress,
            aliases: n.aliases.clone(),
        }
    }
}

impl TryFrom<pb::TaskNetwork> for spec::TaskNetwork {
    type Error = ConvertError;
    fn try_from(n: pb::TaskNetwork) -> Result<Self> {
        Ok(spec::TaskNetwork {
            gateway: addr("TaskNetwork.gateway", &n.gateway)?,
            addr: addr("TaskNetwork.addr", &n.addr)?,
            network_id: n.network_id,
            network_name: n.network_name,
            vni: n.vni,
            subnet: n.subnet,
            internal: n.internal,
            ingress: n.ingress,
            aliases: n.aliases,
        })
    }
}

// ------------------------------------------------------------------ assignments

/// On the wire an assignment carries references to its secrets and configs, not their data
/// (`secrets`/`configs` of the domain value are not sent; see [`fill_files`]).
impl From<&spec::Assignment> for pb::Assignment {
    fn from(a: &spec::Assignment) -> Self {
        pb::Assignment {
            task_id: a.task_id.clone(),
            service_id: a.service_id.clone(),
            service_name: a.service_name.clone(),
            slot: a.slot,
            spec: Some((&a.spec).into()),
            desired_state: pb::TaskState::from(a.desired_state) as i32,
            node_hostname: a.node_hostname.clone(),
            networks: a.networks.iter().map(Into::into).collect(),
            node_id: a.node_id.clone(),
            service_labels: a.service_labels.clone().into_iter().collect(),
        }
    }
}

/// The assignment without its files' data (`secrets` and `configs` empty).
impl TryFrom<pb::Assignment> for spec::Assignment {
    type Error = ConvertError;
    fn try_from(a: pb::Assignment) -> Result<Self> {
        Ok(spec::Assignment {
            spec: a
                .spec
                .ok_or(ConvertError::Missing {
                    field: "Assignment.spec",
                })?
                .try_into()?,
            desired_state: task_state("Assignment.desired_state", a.desired_state),
            networks: a
                .networks
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_>>()?,
            task_id: a.task_id,
            service_id: a.service_id,
            service_name: a.service_name,
            slot: a.slot,
            node_hostname: a.node_hostname,
            secrets: Vec::new(),
            configs: Vec::new(),
            node_id: a.node_id,
            service_labels: a.service_labels.into_iter().collect(),
        })
    }
}

/// Which table a file comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileKind {
    Secret,
    Config,
}

/// A secret or config as a node holds it: by kind and name.
pub type FileKey = (FileKind, String);

impl From<&FileKey> for pb::FileKey {
    fn from((kind, name): &FileKey) -> Self {
        pb::FileKey {
            kind: match kind {
                FileKind::Secret => pb::FileKind::Secret,
                FileKind::Config => pb::FileKind::Config,
            } as i32,
            name: name.clone(),
        }
    }
}

impl TryFrom<pb::FileKey> for FileKey {
    type Error = ConvertError;
    fn try_from(k: pb::FileKey) -> Result<Self> {
        let kind = match strict::<pb::FileKind>("FileKey.kind", k.kind)? {
            pb::FileKind::Secret => FileKind::Secret,
            pb::FileKind::Config => FileKind::Config,
        };
        Ok((kind, k.name))
    }
}

/// Put the data of the files an assignment's spec names into it, with their targets
/// defaulted (secrets: the name, under /run/secrets; configs: `/NAME`). A name the node holds
/// no data for is left out: the task then fails for a missing file.
pub fn fill_files(a: &mut spec::Assignment, files: &BTreeMap<FileKey, Vec<u8>>) {
    let fill = |kind: FileKind, refs: &[spec::FileRef]| -> Vec<spec::FileData> {
        refs.iter()
            .filter_map(|r| {
                let data = files.get(&(kind, r.name.clone()))?;
                Some(spec::FileData {
                    name: r.name.clone(),
                    target: match (kind, r.target.is_empty()) {
                        (_, false) => r.target.clone(),
                        (FileKind::Secret, true) => r.name.clone(),
                        (FileKind::Config, true) => format!("/{}", r.name),
                    },
                    data: data.clone(),
                    uid: r.uid,
                    gid: r.gid,
                    mode: r.mode,
                })
            })
            .collect()
    };
    a.secrets = fill(FileKind::Secret, &a.spec.secrets);
    a.configs = fill(FileKind::Config, &a.spec.configs);
}

// ------------------------------------------------------------------ network state

impl From<spec::EndpointMode> for pb::EndpointMode {
    fn from(m: spec::EndpointMode) -> Self {
        match m {
            spec::EndpointMode::Vip => pb::EndpointMode::Vip,
            spec::EndpointMode::Dnsrr => pb::EndpointMode::Dnsrr,
        }
    }
}

impl From<&spec::PortConfig> for pb::PortConfig {
    fn from(p: &spec::PortConfig) -> Self {
        pb::PortConfig {
            protocol: match p.protocol {
                spec::PortProtocol::Tcp => pb::PortProtocol::Tcp,
                spec::PortProtocol::Udp => pb::PortProtocol::Udp,
            } as i32,
            target_port: p.target_port.into(),
            published_port: p.published_port.into(),
            publish_mode: match p.publish_mode {
                spec::PublishMode::Ingress => pb::PublishMode::Ingress,
                spec::PublishMode::Host => pb::PublishMode::Host,
            } as i32,
        }
    }
}

impl TryFrom<pb::PortConfig> for spec::PortConfig {
    type Error = ConvertError;
    fn try_from(p: pb::PortConfig) -> Result<Self> {
        Ok(spec::PortConfig {
            protocol: match strict::<pb::PortProtocol>("PortConfig.protocol", p.protocol)? {
                pb::PortProtocol::Tcp => spec::PortProtocol::Tcp,
                pb::PortProtocol::Udp => spec::PortProtocol::Udp,
            },
            target_port: port("PortConfig.target_port", p.target_port)?,
            published_port: port("PortConfig.published_port", p.published_port)?,
            publish_mode: match strict::<pb::PublishMode>(
                "PortConfig.publish_mode",
                p.publish_mode,
            )? {
                pb::PublishMode::Ingress => spec::PublishMode::Ingress,
                pb::PublishMode::Host => spec::PublishMode::Host,
            },
        })
    }
}

/// A peer without the node that holds it (domain peers do not name it): `node_id` empty.
impl From<&spec::NetPeer> for pb::NetPeer {
    fn from(p: &spec::NetPeer) -> Self {
        pb::NetPeer {
            addr: p.addr.to_string(),
            node_ip: p.node_ip.to_string(),
            node_id: String::new(),
        }
    }
}

impl TryFrom<pb::NetPeer> for spec::NetPeer {
    type Error = ConvertError;
    fn try_from(p: pb::NetPeer) -> Result<Self> {
        Ok(spec::NetPeer {
            addr: addr("NetPeer.addr", &p.addr)?,
            node_ip: addr("NetPeer.node_ip", &p.node_ip)?,
        })
    }
}

impl From<&spec::NetworkState> for pb::NetworkState {
    fn from(n: &spec::NetworkState) -> Self {
        pb::NetworkState {
            id: n.id.clone(),
            name: n.name.clone(),
            vni: n.vni,
            subnet: n.subnet.clone(),
            gateway: opt_addr_str(n.gateway),
            internal: n.internal,
            ingress: n.ingress,
            peers: n.peers.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::NetworkState> for spec::NetworkState {
    type Error = ConvertError;
    /// Every peer; [`NetAssembler`] leaves out the node's own.
    fn try_from(n: pb::NetworkState) -> Result<Self> {
        Ok(spec::NetworkState {
            gateway: opt_addr("NetworkState.gateway", &n.gateway)?,
            peers: n
                .peers
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_>>()?,
            id: n.id,
            name: n.name,
            vni: n.vni,
            subnet: n.subnet,
            internal: n.internal,
            ingress: n.ingress,
        })
    }
}

fn backend(b: pb::Backend) -> Result<spec::Backend> {
    Ok(spec::Backend {
        addrs: b
            .addrs
            .into_iter()
            .map(|a| Ok((a.network_id, addr("BackendAddr.addr", &a.addr)?)))
            .collect::<Result<_>>()?,
        task_id: b.task_id,
        node_id: b.node_id,
    })
}

impl From<&spec::ServiceNet> for pb::ServiceNet {
    fn from(s: &spec::ServiceNet) -> Self {
        pb::ServiceNet {
            id: s.id.clone(),
            name: s.name.clone(),
            mode: pb::EndpointMode::from(s.mode) as i32,
            ports: s.ports.iter().map(Into::into).collect(),
            networks: s
                .networks
                .iter()
                .map(|n| pb::ServiceOnNetwork {
                    network_id: n.network_id.clone(),
                    vip: opt_addr_str(n.vip),
                    aliases: n.aliases.clone(),
                })
                .collect(),
            backends: s
                .backends
                .iter()
                .map(|b| pb::Backend {
                    task_id: b.task_id.clone(),
                    node_id: b.node_id.clone(),
                    addrs: b
                        .addrs
                        .iter()
                        .map(|(n, a)| pb::BackendAddr {
                            network_id: n.clone(),
                            addr: a.to_string(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::ServiceNet> for spec::ServiceNet {
    type Error = ConvertError;
    fn try_from(s: pb::ServiceNet) -> Result<Self> {
        Ok(spec::ServiceNet {
            mode: match lenient("ServiceNet.mode", s.mode, pb::EndpointMode::Vip) {
                pb::EndpointMode::Vip => spec::EndpointMode::Vip,
                pb::EndpointMode::Dnsrr => spec::EndpointMode::Dnsrr,
            },
            ports: s
                .ports
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_>>()?,
            networks: s
                .networks
                .into_iter()
                .map(|n| {
                    Ok(spec::ServiceOnNetwork {
                        vip: opt_addr("ServiceOnNetwork.vip", &n.vip)?,
                        network_id: n.network_id,
                        aliases: n.aliases,
                    })
                })
                .collect::<Result<_>>()?,
            backends: s.backends.into_iter().map(backend).collect::<Result<_>>()?,
            id: s.id,
            name: s.name,
        })
    }
}

/// A node's whole network state as one `full` update (tests, and a peer that has no
/// per-network cache).
impl From<&spec::NodeNetState> for pb::NetworkUpdate {
    fn from(s: &spec::NodeNetState) -> Self {
        pb::NetworkUpdate {
            full: true,
            node_id: s.node_id.clone(),
            node_ip: opt_addr_str(s.node_ip),
            ingress_addr: opt_addr_str(s.ingress_addr),
            networks: s.networks.iter().map(Into::into).collect(),
            removed_networks: Vec::new(),
            services: s.services.iter().map(Into::into).collect(),
            removed_services: Vec::new(),
            peer_changes: Vec::new(),
            backend_changes: Vec::new(),
        }
    }
}

/// The node's network state, put together from the updates of a session: the networks and
/// services by id (the order the dispatcher lists them in), the node's own endpoints left
/// out of the peers. An item that cannot be converted is skipped (and logged); the rest of
/// the update applies.
#[derive(Clone, Debug, Default)]
pub struct NetAssembler {
    node_id: String,
    node_ip: Option<Ipv4Addr>,
    ingress_addr: Option<Ipv4Addr>,
    networks: BTreeMap<String, spec::NetworkState>,
    services: BTreeMap<String, spec::ServiceNet>,
}

impl NetAssembler {
    /// Apply an update; returns the state the node must hold now.
    pub fn apply(&mut self, u: pb::NetworkUpdate) -> spec::NodeNetState {
        if u.full {
            self.networks.clear();
            self.services.clear();
        }
        self.node_id = u.node_id;
        self.node_ip = opt_addr("NetworkUpdate.node_ip", &u.node_ip).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "network update: node address ignored");
            None
        });
        self.ingress_addr =
            opt_addr("NetworkUpdate.ingress_addr", &u.ingress_addr).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "network update: ingress address ignored");
                None
            });
        for id in u.removed_networks {
            self.networks.remove(&id);
        }
        for id in u.removed_services {
            self.services.remove(&id);
        }
        for mut n in u.networks {
            let id = n.id.clone();
            n.peers
                .retain(|p| p.node_id.is_empty() || p.node_id != self.node_id);
            match spec::NetworkState::try_from(n) {
                Ok(n) => {
                    self.networks.insert(id, n);
                }
                Err(e) => {
                    tracing::warn!(network = %id, error = %e, "network update: network skipped");
                    self.networks.remove(&id);
                }
            }
        }
        for s in u.services {
            let id = s.id.clone();
            match spec::ServiceNet::try_from(s) {
                Ok(s) => {
                    self.services.insert(id, s);
                }
                Err(e) => {
                    tracing::warn!(service = %id, error = %e, "network update: service skipped");
                    self.services.remove(&id);
                }
            }
        }
        for c in u.peer_changes {
            self.peer_changes(c);
        }
        for c in u.backend_changes {
            self.backend_changes(c);
        }
        self.state()
    }

    /// Peers in address order, as the dispatcher lists them.
    fn peer_changes(&mut self, c: pb::PeerChanges) {
        let Some(n) = self.networks.get_mut(&c.network_id) else {
            tracing::warn!(network = %c.network_id, "peer changes of a network not held: skipped");
            return;
        };
        let peer = |p: pb::NetPeer| match spec::NetPeer::try_from(p) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(network = %c.network_id, error = %e, "peer skipped");
                None
            }
        };
        for p in c.removed.into_iter().filter_map(peer) {
            if let Ok(i) = n.peers.binary_search(&p) {
                n.peers.remove(i);
            }
        }
        let own = |p: &pb::NetPeer| !p.node_id.is_empty() && p.node_id == self.node_id;
        for p in c.added.into_iter().filter(|p| !own(p)).filter_map(peer) {
            if let Err(i) = n.peers.binary_search(&p) {
                n.peers.insert(i, p);
            }
        }
    }

    /// Backends in task id order, as the dispatcher lists them.
    fn backend_changes(&mut self, c: pb::BackendChanges) {
        let Some(s) = self.services.get_mut(&c.service_id) else {
            tracing::warn!(service = %c.service_id, "backend changes of a service not held: skipped");
            return;
        };
        for id in &c.removed {
            if let Ok(i) = s.backends.binary_search_by(|b| b.task_id.cmp(id)) {
                s.backends.remove(i);
            }
        }
        for b in c.upsert {
            let b = match backend(b) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(service = %c.service_id, error = %e, "backend skipped");
                    continue;
                }
            };
            match s.backends.binary_search_by(|x| x.task_id.cmp(&b.task_id)) {
                Ok(i) => s.backends[i] = b,
                Err(i) => s.backends.insert(i, b),
            }
        }
    }

    pub fn state(&self) -> spec::NodeNetState {
        spec::NodeNetState {
            node_id: self.node_id.clone(),
            node_ip: self.node_ip,
            ingress_addr: self.ingress_addr,
            networks: self.networks.values().cloned().collect(),
            services: self.services.values().cloned().collect(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
