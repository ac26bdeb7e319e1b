//! The objects the control API returns for services, tasks and networks. On the wire they are
//! protobuf messages ([`crate::convert_api`]); serde gives the JSON that `inspect` and
//! `--format json` print, so their field names are user-visible.

use serde::{Deserialize, Serialize};

use crate::spec::{
    NetworkSpec, PortConfig, ServiceSpec, TaskNetwork, TaskSpec, TaskState, TaskStatus,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateStatusView {
    /// updating | paused | completed | rollback_started | rollback_paused | rollback_completed
    pub state: String,
    pub started_ms: i64,
    pub completed_ms: i64,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub id: String,
    pub version: u64,
    pub spec: ServiceSpec,
    pub spec_version: u64,
    pub previous_spec: Option<ServiceSpec>,
    pub update_status: Option<UpdateStatusView>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Tasks observed RUNNING with desired state RUNNING.
    pub running: u64,
    /// Replicas wanted (replicated), eligible nodes (global), completions (jobs).
    pub desired: u64,
    /// Jobs: tasks that completed.
    pub completed: u64,
    /// VIPs and resolved published ports.
    #[serde(default)]
    pub endpoint: EndpointView,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub virtual_ips: Vec<VirtualIpView>,
    /// Published ports with the port the manager picked where the spec said 0.
    pub ports: Vec<PortConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualIpView {
    pub network_id: String,
    /// With the prefix length, as Docker shows it: `10.0.1.2/24`.
    pub addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    pub id: String,
    pub version: u64,
    pub spec: NetworkSpec,
    pub vni: u32,
    /// The subnet actually used (the spec's, or the one taken from the pool).
    pub subnet: String,
    pub gateway: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Names of the services attached to it.
    pub services: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    pub id: String,
    pub service_id: String,
    pub service_name: String,
    pub slot: u64,
    pub node_id: String,
    pub node_hostname: String,
    pub spec: TaskSpec,
    pub spec_version: u64,
    pub desired_state: TaskState,
    pub status: TaskStatus,
    pub created_at_ms: i64,
    #[serde(default)]
    pub networks: Vec<TaskNetwork>,
}
