//! Service and task specifications: what users write (through the CLI) and what the managers
//! store and send to workers. Shared by every crate, carried as JSON inside the gRPC messages.

use std::collections::BTreeMap;
use std::fmt;

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
    /// Container hostname; may hold the templates `{{.Service.Name}}`, `{{.Task.Slot}}`,
    /// `{{.Node.Hostname}}` (and `{{.Task.ID}}`, `{{.Service.ID}}`). Empty: the task id's
    /// first 12 characters, as Docker does.
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
    /// Secrets by name; the dispatcher sends their data with the assignment.
    #[serde(default)]
    pub secrets: Vec<FileRef>,
    /// Configs by name, as secrets.
    #[serde(default)]
    pub configs: Vec<FileRef>,
    /// None: the image's HEALTHCHECK, if any.
    #[serde(default)]
    pub healthcheck: Option<HealthCheck>,
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
}

/// A secret or config used by a service: `--secret NAME[,target=PATH]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub name: String,
    /// File name under /run/secrets (secrets) or absolute path (configs); empty: the name
    /// (secrets: /run/secrets/NAME; configs: /NAME).
    pub target: String,
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
}

/// The data of a secret or config, sent with the assignment to the node that runs the task,
/// and only there. Never written to a worker's disk (mounted from tmpfs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileData {
    pub name: String,
    /// Where it goes: for secrets the path is /run/secrets/`target`, unless absolute.
    pub target: String,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub mode: ServiceMode,
    pub task: TaskSpec,
    pub update: UpdateConfig,
    pub rollback: UpdateConfig,
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
    /// The data of the secrets and configs the spec names, filled in by the dispatcher.
    #[serde(default)]
    pub secrets: Vec<FileData>,
    #[serde(default)]
    pub configs: Vec<FileData>,
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
        };
        let j = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<ServiceSpec>(&j).unwrap(), spec);
    }
}
