//! Conversions between the domain types of the control API ([`crate::spec`], [`crate::api`],
//! [`Role`]) and their protobuf messages ([`crate::pb`]): service and network specs, the views
//! the CLI shows, and the node enums.
//!
//! The rules are [`crate::convert`]'s: domain to wire is `From`; wire to domain is `TryFrom`
//! with a [`ConvertError`] naming the field. An enum value this version does not know never
//! rejects a whole message: an update's failure action or order falls back to its default, an
//! endpoint mode to VIP, a node's role, availability, state or reachability to UNSPECIFIED
//! (shown empty, or "unknown"); port protocols, publish and mount kinds reject the spec or
//! view that holds them. A service mode this version does not know leaves the `oneof` empty,
//! which refuses the spec (a task count cannot be guessed).

use crate::api;
use crate::convert::{lenient, task_state, ConvertError, Result};
use crate::pb;
use crate::security::Role;
use crate::spec;

fn required<T>(field: &'static str, v: Option<T>) -> Result<T> {
    v.ok_or(ConvertError::Missing { field })
}

fn ports(v: Vec<pb::PortConfig>) -> Result<Vec<spec::PortConfig>> {
    v.into_iter().map(TryInto::try_into).collect()
}

// ------------------------------------------------------------------ service spec

impl From<&spec::ServiceMode> for pb::ServiceMode {
    fn from(m: &spec::ServiceMode) -> Self {
        use pb::service_mode::Mode;
        let mode = match *m {
            spec::ServiceMode::Replicated { replicas } => {
                Mode::Replicated(pb::ReplicatedMode { replicas })
            }
            spec::ServiceMode::Global => Mode::Global(pb::GlobalMode {}),
            spec::ServiceMode::ReplicatedJob {
                max_concurrent,
                total_completions,
            } => Mode::ReplicatedJob(pb::ReplicatedJobMode {
                max_concurrent,
                total_completions,
            }),
            spec::ServiceMode::GlobalJob => Mode::GlobalJob(pb::GlobalJobMode {}),
        };
        pb::ServiceMode { mode: Some(mode) }
    }
}

impl TryFrom<pb::ServiceMode> for spec::ServiceMode {
    type Error = ConvertError;
    fn try_from(m: pb::ServiceMode) -> Result<Self> {
        use pb::service_mode::Mode;
        Ok(match required("ServiceMode.mode", m.mode)? {
            Mode::Replicated(r) => spec::ServiceMode::Replicated {
                replicas: r.replicas,
            },
            Mode::Global(_) => spec::ServiceMode::Global,
            Mode::ReplicatedJob(j) => spec::ServiceMode::ReplicatedJob {
                max_concurrent: j.max_concurrent,
                total_completions: j.total_completions,
            },
            Mode::GlobalJob(_) => spec::ServiceMode::GlobalJob,
        })
    }
}

impl From<&spec::UpdateConfig> for pb::UpdateConfig {
    fn from(u: &spec::UpdateConfig) -> Self {
        pb::UpdateConfig {
            parallelism: u.parallelism,
            delay_ms: u.delay_ms,
            failure_action: match u.failure_action {
                spec::FailureAction::Pause => pb::FailureAction::Pause,
                spec::FailureAction::Continue => pb::FailureAction::Continue,
                spec::FailureAction::Rollback => pb::FailureAction::Rollback,
            } as i32,
            monitor_ms: u.monitor_ms,
            max_failure_ratio: u.max_failure_ratio,
            order: match u.order {
                spec::UpdateOrder::StopFirst => pb::UpdateOrder::StopFirst,
                spec::UpdateOrder::StartFirst => pb::UpdateOrder::StartFirst,
            } as i32,
            task_deadline_ms: u.task_deadline_ms,
        }
    }
}

impl From<pb::UpdateConfig> for spec::UpdateConfig {
    fn from(u: pb::UpdateConfig) -> Self {
        let action = lenient(
            "UpdateConfig.failure_action",
            u.failure_action,
            pb::FailureAction::Pause,
        );
        let order = lenient("UpdateConfig.order", u.order, pb::UpdateOrder::StopFirst);
        spec::UpdateConfig {
            parallelism: u.parallelism,
            delay_ms: u.delay_ms,
            failure_action: match action {
                pb::FailureAction::Pause => spec::FailureAction::Pause,
                pb::FailureAction::Continue => spec::FailureAction::Continue,
                pb::FailureAction::Rollback => spec::FailureAction::Rollback,
            },
            monitor_ms: u.monitor_ms,
            max_failure_ratio: u.max_failure_ratio,
            order: match order {
                pb::UpdateOrder::StopFirst => spec::UpdateOrder::StopFirst,
                pb::UpdateOrder::StartFirst => spec::UpdateOrder::StartFirst,
            },
            task_deadline_ms: u.task_deadline_ms,
        }
    }
}

impl From<&spec::EndpointSpec> for pb::EndpointSpec {
    fn from(e: &spec::EndpointSpec) -> Self {
        pb::EndpointSpec {
            mode: pb::EndpointMode::from(e.mode) as i32,
            ports: e.ports.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::EndpointSpec> for spec::EndpointSpec {
    type Error = ConvertError;
    fn try_from(e: pb::EndpointSpec) -> Result<Self> {
        Ok(spec::EndpointSpec {
            mode: match lenient("EndpointSpec.mode", e.mode, pb::EndpointMode::Vip) {
                pb::EndpointMode::Vip => spec::EndpointMode::Vip,
                pb::EndpointMode::Dnsrr => spec::EndpointMode::Dnsrr,
            },
            ports: ports(e.ports)?,
        })
    }
}

impl From<&spec::ServiceSpec> for pb::ServiceSpec {
    fn from(s: &spec::ServiceSpec) -> Self {
        pb::ServiceSpec {
            name: s.name.clone(),
            labels: s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            mode: Some((&s.mode).into()),
            task: Some((&s.task).into()),
            update: Some((&s.update).into()),
            rollback: Some((&s.rollback).into()),
            endpoint: Some((&s.endpoint).into()),
        }
    }
}

/// Absent update and rollback configs are the defaults (Swarm's), an absent endpoint is VIP
/// without ports; the mode and the task are required.
impl TryFrom<pb::ServiceSpec> for spec::ServiceSpec {
    type Error = ConvertError;
    fn try_from(s: pb::ServiceSpec) -> Result<Self> {
        Ok(spec::ServiceSpec {
            mode: required("ServiceSpec.mode", s.mode)?.try_into()?,
            task: required("ServiceSpec.task", s.task)?.try_into()?,
            update: s.update.map(Into::into).unwrap_or_default(),
            rollback: s.rollback.map(Into::into).unwrap_or_default(),
            endpoint: s
                .endpoint
                .map(TryInto::try_into)
                .transpose()?
                .unwrap_or_default(),
            name: s.name,
            labels: s.labels.into_iter().collect(),
        })
    }
}

// ------------------------------------------------------------------ views

impl From<&api::UpdateStatusView> for pb::UpdateStatusView {
    fn from(u: &api::UpdateStatusView) -> Self {
        pb::UpdateStatusView {
            state: u.state.clone(),
            started_ms: u.started_ms,
            completed_ms: u.completed_ms,
            message: u.message.clone(),
        }
    }
}

impl From<pb::UpdateStatusView> for api::UpdateStatusView {
    fn from(u: pb::UpdateStatusView) -> Self {
        api::UpdateStatusView {
            state: u.state,
            started_ms: u.started_ms,
            completed_ms: u.completed_ms,
            message: u.message,
        }
    }
}

impl From<&api::EndpointView> for pb::EndpointView {
    fn from(e: &api::EndpointView) -> Self {
        pb::EndpointView {
            virtual_ips: e
                .virtual_ips
                .iter()
                .map(|v| pb::VirtualIpView {
                    network_id: v.network_id.clone(),
                    addr: v.addr.clone(),
                })
                .collect(),
            ports: e.ports.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::EndpointView> for api::EndpointView {
    type Error = ConvertError;
    fn try_from(e: pb::EndpointView) -> Result<Self> {
        Ok(api::EndpointView {
            virtual_ips: e
                .virtual_ips
                .into_iter()
                .map(|v| api::VirtualIpView {
                    network_id: v.network_id,
                    addr: v.addr,
                })
                .collect(),
            ports: ports(e.ports)?,
        })
    }
}

impl From<&api::ServiceView> for pb::ServiceView {
    fn from(v: &api::ServiceView) -> Self {
        pb::ServiceView {
            id: v.id.clone(),
            version: v.version,
            spec: Some((&v.spec).into()),
            spec_version: v.spec_version,
            previous_spec: v.previous_spec.as_ref().map(Into::into),
            update_status: v.update_status.as_ref().map(Into::into),
            created_at_ms: v.created_at_ms,
            updated_at_ms: v.updated_at_ms,
            running: v.running,
            desired: v.desired,
            completed: v.completed,
            endpoint: Some((&v.endpoint).into()),
        }
    }
}

impl TryFrom<pb::ServiceView> for api::ServiceView {
    type Error = ConvertError;
    fn try_from(v: pb::ServiceView) -> Result<Self> {
        Ok(api::ServiceView {
            spec: required("ServiceView.spec", v.spec)?.try_into()?,
            previous_spec: v.previous_spec.map(TryInto::try_into).transpose()?,
            endpoint: v
                .endpoint
                .map(TryInto::try_into)
                .transpose()?
                .unwrap_or_default(),
            update_status: v.update_status.map(Into::into),
            id: v.id,
            version: v.version,
            spec_version: v.spec_version,
            created_at_ms: v.created_at_ms,
            updated_at_ms: v.updated_at_ms,
            running: v.running,
            desired: v.desired,
            completed: v.completed,
        })
    }
}

impl From<&api::TaskView> for pb::TaskView {
    fn from(t: &api::TaskView) -> Self {
        pb::TaskView {
            id: t.id.clone(),
            service_id: t.service_id.clone(),
            service_name: t.service_name.clone(),
            slot: t.slot,
            node_id: t.node_id.clone(),
            node_hostname: t.node_hostname.clone(),
            spec: Some((&t.spec).into()),
            spec_version: t.spec_version,
            desired_state: pb::TaskState::from(t.desired_state) as i32,
            status: Some((&t.status).into()),
            created_at_ms: t.created_at_ms,
            networks: t.networks.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::TaskView> for api::TaskView {
    type Error = ConvertError;
    fn try_from(t: pb::TaskView) -> Result<Self> {
        Ok(api::TaskView {
            spec: required("TaskView.spec", t.spec)?.try_into()?,
            desired_state: task_state("TaskView.desired_state", t.desired_state),
            status: required("TaskView.status", t.status)?.try_into()?,
            networks: t
                .networks
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_>>()?,
            id: t.id,
            service_id: t.service_id,
            service_name: t.service_name,
            slot: t.slot,
            node_id: t.node_id,
            node_hostname: t.node_hostname,
            spec_version: t.spec_version,
            created_at_ms: t.created_at_ms,
        })
    }
}

// ------------------------------------------------------------------ networks

impl From<&spec::NetworkSpec> for pb::NetworkSpec {
    fn from(n: &spec::NetworkSpec) -> Self {
        pb::NetworkSpec {
            name: n.name.clone(),
            driver: n.driver.clone(),
            subnet: n.subnet.clone(),
            gateway: n.gateway.clone(),
            attachable: n.attachable,
            internal: n.internal,
            ingress: n.ingress,
            labels: n
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

impl From<pb::NetworkSpec> for spec::NetworkSpec {
    fn from(n: pb::NetworkSpec) -> Self {
        spec::NetworkSpec {
            name: n.name,
            driver: n.driver,
            subnet: n.subnet,
            gateway: n.gateway,
            attachable: n.attachable,
            internal: n.internal,
            ingress: n.ingress,
            labels: n.labels.into_iter().collect(),
        }
    }
}

impl From<&api::NetworkView> for pb::NetworkView {
    fn from(n: &api::NetworkView) -> Self {
        pb::NetworkView {
            id: n.id.clone(),
            version: n.version,
            spec: Some((&n.spec).into()),
            vni: n.vni,
            subnet: n.subnet.clone(),
            gateway: n.gateway.clone(),
            created_at_ms: n.created_at_ms,
            updated_at_ms: n.updated_at_ms,
            services: n.services.clone(),
        }
    }
}

impl TryFrom<pb::NetworkView> for api::NetworkView {
    type Error = ConvertError;
    fn try_from(n: pb::NetworkView) -> Result<Self> {
        Ok(api::NetworkView {
            spec: required("NetworkView.spec", n.spec)?.into(),
            id: n.id,
            version: n.version,
            vni: n.vni,
            subnet: n.subnet,
            gateway: n.gateway,
            created_at_ms: n.created_at_ms,
            updated_at_ms: n.updated_at_ms,
            services: n.services,
        })
    }
}

// ------------------------------------------------------------------ nodes

impl From<Role> for pb::NodeRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Manager => pb::NodeRole::Manager,
            Role::Worker => pb::NodeRole::Worker,
        }
    }
}

/// A role a request asks for: UNSPECIFIED is `None` ("unchanged"); a value this version does
/// not know is refused (it cannot be carried out), with the field named.
pub fn requested_role(field: &'static str, v: i32) -> Result<Option<Role>> {
    match pb::NodeRole::try_from(v) {
        Ok(pb::NodeRole::Unspecified) => Ok(None),
        Ok(pb::NodeRole::Manager) => Ok(Some(Role::Manager)),
        Ok(pb::NodeRole::Worker) => Ok(Some(Role::Worker)),
        Err(_) => Err(ConvertError::UnknownEnum { field, value: v }),
    }
}

/// The words the CLI shows for the node enums (Docker's, lower case). A value this version
/// does not know reads as UNSPECIFIED (prost's getters), which shows empty or "unknown".
impl pb::LocalNodeState {
    /// The word `info` shows (Docker's).
    pub fn label(self) -> &'static str {
        match self {
            pb::LocalNodeState::Inactive => "inactive",
            pb::LocalNodeState::Pending => "pending",
            pb::LocalNodeState::Active => "active",
            pb::LocalNodeState::Locked => "locked",
            pb::LocalNodeState::Error => "error",
        }
    }
}

impl pb::NodeRole {
    pub fn label(self) -> &'static str {
        match self {
            pb::NodeRole::Unspecified => "",
            pb::NodeRole::Worker => "worker",
            pb::NodeRole::Manager => "manager",
        }
    }
}

impl pb::NodeAvailability {
    pub fn label(self) -> &'static str {
        match self {
            pb::NodeAvailability::Unspecified => "",
            pb::NodeAvailability::Active => "active",
            pb::NodeAvailability::Pause => "pause",
            pb::NodeAvailability::Drain => "drain",
        }
    }
}

impl pb::NodeState {
    pub fn label(self) -> &'static str {
        match self {
            pb::NodeState::Unknown => "unknown",
            pb::NodeState::Ready => "ready",
            pb::NodeState::Down => "down",
            pb::NodeState::Disconnected => "disconnected",
        }
    }
}

impl pb::ManagerReachability {
    pub fn label(self) -> &'static str {
        match self {
            pb::ManagerReachability::None => "",
            pb::ManagerReachability::Leader => "leader",
            pb::ManagerReachability::Reachable => "reachable",
            pb::ManagerReachability::Unreachable => "unreachable",
        }
    }
}

#[cfg(test)]
mod tests;
