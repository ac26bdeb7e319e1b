//! The objects the control API returns for services and tasks (JSON inside gRPC messages).

use serde::{Deserialize, Serialize};

use crate::spec::{ServiceSpec, TaskSpec, TaskState, TaskStatus};

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
}
