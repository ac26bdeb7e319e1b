//! The cluster store: typed tables in memory, changed only by applying committed Raft entries.
//!
//! ```text
//!  controlapi / dispatcher / ca ──Txn──▶ raft (client_write) ──commit──▶ StateMachine::apply
//!                                                                        │
//!       view(|data| …) ◀── Arc<RwLock<StoreData>> ◀────────────────── Store::apply_txn
//!       watch()        ◀── broadcast<Event> ◀───────────────────────────┘
//! ```
//!
//! Every write is a [`Txn`]: a list of operations that all apply or none does. An update names
//! the version it read; if the object changed since, the whole transaction is refused with
//! [`TxnError::Conflict`] and the writer re-reads and retries (optimistic concurrency, as
//! swarmkit's store). An object's version is the Raft log index of the entry that last wrote
//! it, so versions are identical on every manager. `apply_txn` is deterministic: it reads no
//! clock and no randomness; timestamps come inside the transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use proto::security::{Role, RootCa};
use proto::spec::{
    NetworkSpec, PortConfig, PublishMode, ServiceSpec, TaskNetwork, TaskSpec, TaskState, TaskStatus,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

mod proposer;
pub use proposer::{DirectProposer, Proposal, ProposeError, Proposer, UpdateError};

/// Cluster-wide settings and secrets; exactly one exists once the swarm is initialised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub id: String,
    pub version: u64,
    pub created_at_ms: i64,
    pub root_ca: RootCa,
    pub worker_token: String,
    pub manager_token: String,
    pub heartbeat_period_ms: u64,
    pub cert_expiry_ms: u64,
    /// Ids of removed nodes: their certificates are refused until they expire.
    pub removed_nodes: BTreeSet<String>,
    /// Spread replicated tasks onto nodes that join (or come back) with fewer tasks.
    #[serde(default)]
    pub rebalance_on_join: bool,
    /// CIDRs overlay subnets are taken from when a network names none.
    #[serde(default = "default_addr_pool")]
    pub default_addr_pool: Vec<String>,
    /// Prefix length of the subnets taken from the pool.
    #[serde(default = "default_addr_pool_mask_len")]
    pub default_addr_pool_mask_len: u8,
    /// Autolock: the unlock key, sealed with the cluster's key-encrypting key
    /// ([`crate::keys`]); `None` when autolock is off.
    #[serde(default)]
    pub unlock_key: Option<String>,
    /// Bounds on what services may ask for (`swarm update --max-replicas/--max-tasks`).
    #[serde(default)]
    pub limits: ClusterLimits,
}

/// How many tasks the cluster will hold: a request above these is refused at the API, and the
/// orchestrator never creates tasks beyond them (a service stored before a limit was lowered
/// keeps what it has but gets no more).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLimits {
    /// Replicas of one service (replicated services and jobs' concurrency).
    pub max_replicas: u64,
    /// Tasks meant to run in the whole cluster (replicas, plus one per node for global
    /// services).
    pub max_tasks: u64,
}

impl Default for ClusterLimits {
    fn default() -> Self {
        ClusterLimits {
            max_replicas: 100_000,
            max_tasks: 1_000_000,
        }
    }
}

pub fn default_addr_pool() -> Vec<String> {
    vec!["10.0.0.0/8".to_string()]
}

pub fn default_addr_pool_mask_len() -> u8 {
    24
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    #[default]
    Active,
    Pause,
    Drain,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }
    pub fn parse(s: &str) -> Option<Availability> {
        match s {
            "active" => Some(Availability::Active),
            "pause" => Some(Availability::Pause),
            "drain" => Some(Availability::Drain),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    #[default]
    Unknown,
    Ready,
    Down,
    Disconnected,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Unknown => "unknown",
            NodeState::Ready => "ready",
            NodeState::Down => "down",
            NodeState::Disconnected => "disconnected",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeDescription {
    pub hostname: String,
    pub addr: String,
    pub platform: String,
    pub engine_version: String,
    /// Capacity for reservations: CPU in 1e-9 cores, memory in bytes.
    #[serde(default)]
    pub nano_cpus: u64,
    #[serde(default)]
    pub memory_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub version: u64,
    /// Raft member id, fixed at join; used when the node is (or becomes) a manager.
    pub raft_id: u64,
    /// The role written into the node's current certificate.
    pub role: Role,
    /// The role the operator asked for (promote/demote); the node follows by renewing.
    pub desired_role: Role,
    pub availability: Availability,
    pub labels: BTreeMap<String, String>,
    pub description: NodeDescription,
    pub state: NodeState,
    pub status_message: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub cert_not_after_ms: i64,
    /// The node's address on the ingress network (its routing-mesh sandbox), given by the
    /// leader once the ingress network exists; released with the node.
    #[serde(default)]
    pub ingress_addr: Option<Ipv4Addr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }
    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            UpdateState::RollbackStarted
                | UpdateState::RollbackPaused
                | UpdateState::RollbackCompleted
        )
    }
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub started_ms: i64,
    pub completed_ms: i64,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub version: u64,
    pub spec: ServiceSpec,
    /// Incremented by every spec change.
    pub spec_version: u64,
    /// The spec before the last update, for rollback.
    pub previous_spec: Option<ServiceSpec>,
    pub update_status: Option<UpdateStatus>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// What the allocator gave the service: VIPs and resolved published ports.
    #[serde(default)]
    pub endpoint: ServiceEndpoint,
}

/// A service's allocated endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoint {
    /// Virtual IP per network id (vip mode; `ingress` included when ports are published
    /// in ingress mode).
    #[serde(default)]
    pub vips: BTreeMap<String, Ipv4Addr>,
    /// The spec's published ports with every `published_port` set.
    #[serde(default)]
    pub ports: Vec<PortConfig>,
}

/// An overlay network with what the allocator fixed for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub version: u64,
    pub spec: NetworkSpec,
    pub vni: u32,
    /// CIDR, e.g. `10.0.1.0/24`.
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub version: u64,
    pub service_id: String,
    pub service_name: String,
    /// Replicated services: 1..=replicas. Global: 0 (the node identifies the task).
    pub slot: u64,
    /// Empty until scheduled (global tasks are created with their node).
    pub node_id: String,
    /// Shared by the tasks of a service that run the same spec ([`StoreData`] interns it):
    /// a large service holds its spec once, not once a task.
    pub spec: Arc<TaskSpec>,
    pub spec_version: u64,
    /// Manager-written: RUNNING, then SHUTDOWN or REMOVE; only moves forward.
    pub desired_state: TaskState,
    /// Observed: written by the scheduler up to ASSIGNED, by the worker after; only forward.
    pub status: TaskStatus,
    pub created_at_ms: i64,
    /// Restarts of this slot so far within the restart window (carried to the replacement).
    pub restart_count: u64,
    /// The task's addresses on its overlays, in interface order; fixed when it is created.
    #[serde(default)]
    pub networks: Vec<TaskNetwork>,
    /// A network of its service had no free address when it was created: it holds none,
    /// stays PENDING and unscheduled, and the orchestrator tries again each round.
    #[serde(default)]
    pub awaiting_addresses: bool,
}

/// A new task that runs its service's current task spec ([`Op::CreateTask`]): a [`Task`]
/// without its spec (nor version), which the store takes from the service when it applies
/// the operation. A log entry of such tasks holds the spec not once per task but nowhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewTask {
    pub id: String,
    pub service_id: String,
    pub service_name: String,
    pub slot: u64,
    pub node_id: String,
    pub spec_version: u64,
    pub desired_state: TaskState,
    pub status: TaskStatus,
    pub created_at_ms: i64,
    pub restart_count: u64,
    #[serde(default)]
    pub networks: Vec<TaskNetwork>,
    #[serde(default)]
    pub awaiting_addresses: bool,
}

impl From<Task> for NewTask {
    fn from(t: Task) -> NewTask {
        NewTask {
            id: t.id,
            service_id: t.service_id,
            service_name: t.service_name,
            slot: t.slot,
            node_id: t.node_id,
            spec_version: t.spec_version,
            desired_state: t.desired_state,
            status: t.status,
            created_at_ms: t.created_at_ms,
            restart_count: t.restart_count,
            networks: t.networks,
            awaiting_addresses: t.awaiting_addresses,
        }
    }
}

impl NewTask {
    /// The task, with `spec` (its service's) and version `version`.
    pub fn to_task(&self, spec: Arc<TaskSpec>, version: u64) -> Task {
        Task {
            id: self.id.clone(),
            version,
            service_id: self.service_id.clone(),
            service_name: self.service_name.clone(),
            slot: self.slot,
            node_id: self.node_id.clone(),
            spec,
            spec_version: self.spec_version,
            desired_state: self.desired_state,
            status: self.status.clone(),
            created_at_ms: self.created_at_ms,
            restart_count: self.restart_count,
            networks: self.networks.clone(),
            awaiting_addresses: self.awaiting_addresses,
        }
    }
}

impl Task {
    /// Meant to run: desired RUNNING, or READY (a stop-first update's new task, placed and
    /// prepared while the task it replaces stops).
    pub fn meant_to_run(&self) -> bool {
        matches!(self.desired_state, TaskState::Ready | TaskState::Running)
    }

    /// Occupies its node: placed, meant to run, not finished.
    pub fn occupies_node(&self) -> bool {
        !self.node_id.is_empty()
            && self.meant_to_run()
            && self.status.state > TaskState::Pending
            && !self.status.state.is_terminal()
    }
}

/// What the tasks occupying a node ([`Task::occupies_node`]) hold of it; derived.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeUsage {
    pub tasks: usize,
    pub reserved_nano_cpus: u64,
    pub reserved_memory: u64,
    /// Tasks per service id.
    pub by_service: BTreeMap<String, usize>,
}

impl NodeUsage {
    fn add(&mut self, t: &Task) {
        let r = &t.spec.resources;
        self.tasks += 1;
        self.reserved_nano_cpus = self.reserved_nano_cpus.saturating_add(r.reserve_nano_cpus);
        self.reserved_memory = self.reserved_memory.saturating_add(r.reserve_memory);
        *self.by_service.entry(t.service_id.clone()).or_default() += 1;
    }

    /// Undo [`NodeUsage::add`] of the same task. True once nothing is left.
    fn remove(&mut self, t: &Task) -> bool {
        let r = &t.spec.resources;
        self.tasks = self.tasks.saturating_sub(1);
        self.reserved_nano_cpus = self.reserved_nano_cpus.saturating_sub(r.reserve_nano_cpus);
        self.reserved_memory = self.reserved_memory.saturating_sub(r.reserve_memory);
        if let Some(n) = self.by_service.get_mut(&t.service_id) {
            *n -= 1;
            if *n == 0 {
                self.by_service.remove(&t.service_id);
            }
        }
        self.tasks == 0
    }
}

/// The key that seals secret and config data ([`crate::secrets`]); created with the first
/// secret or config. At most one exists. It is stored sealed with the cluster's
/// key-encrypting key, which lives outside the store ([`crate::keys`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKey {
    pub id: String,
    pub version: u64,
    /// Hex of 32 random bytes, sealed with the KEK (`kek1:…`) as stored.
    pub key: String,
}

/// A secret or a config: its data sealed with the cluster's data key (never in clear here).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileObject {
    pub id: String,
    pub version: u64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Hex of nonce ‖ ciphertext ‖ tag ([`crate::secrets::seal`]).
    pub sealed: String,
}

/// The object kinds the store holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Object {
    Cluster(Cluster),
    Node(Node),
    /// Boxed: a service is ~2 KB inline, and every object, change and operation was as
    /// large as the largest kind (each task status write moved 2 KB values about).
    Service(Box<Service>),
    Task(Task),
    Secret(FileObject),
    Config(FileObject),
    DataKey(DataKey),
    Network(Network),
}

impl Object {
    fn kind(&self) -> Kind {
        match self {
            Object::Cluster(_) => Kind::Cluster,
            Object::Node(_) => Kind::Node,
            Object::Service(_) => Kind::Service,
            Object::Task(_) => Kind::Task,
            Object::Secret(_) => Kind::Secret,
            Object::Config(_) => Kind::Config,
            Object::DataKey(_) => Kind::DataKey,
            Object::Network(_) => Kind::Network,
        }
    }
    fn id(&self) -> &str {
        match self {
            Object::Cluster(c) => &c.id,
            Object::Node(n) => &n.id,
            Object::Service(s) => &s.id,
            Object::Task(t) => &t.id,
            Object::Secret(f) | Object::Config(f) => &f.id,
            Object::DataKey(k) => &k.id,
            Object::Network(n) => &n.id,
        }
    }
    fn version(&self) -> u64 {
        match self {
            Object::Cluster(c) => c.version,
            Object::Node(n) => n.version,
            Object::Service(s) => s.version,
            Object::Task(t) => t.version,
            Object::Secret(f) | Object::Config(f) => f.version,
            Object::DataKey(k) => k.version,
            Object::Network(n) => n.version,
        }
    }
    fn set_version(&mut self, v: u64) {
        match self {
            Object::Cluster(c) => c.version = v,
            Object::Node(n) => n.version = v,
            Object::Service(s) => s.version = v,
            Object::Task(t) => t.version = v,
            Object::Secret(f) | Object::Config(f) => f.version = v,
            Object::DataKey(k) => k.version = v,
            Object::Network(n) => n.version = v,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Cluster,
    Node,
    Service,
    Task,
    Secret,
    Config,
    DataKey,
    Network,
}

impl Kind {
    /// The kind as messages name it.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Node => "node",
            Kind::Service => "service",
            Kind::Task => "task",
            Kind::Secret => "secret",
            Kind::Config => "config",
            Kind::DataKey => "data key",
            Kind::Network => "network",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Fails if an object of that kind and id exists.
    Create(Object),
    /// Fails unless the stored object's version equals the given object's version.
    Update(Object),
    /// Fails if the object does not exist.
    Delete { kind: Kind, id: String },
    /// A task's observed status, as [`Op::Update`] of the task with only its status changed
    /// (same checks): the log entry carries the status, not the whole task.
    TaskStatus {
        id: String,
        version: u64,
        status: TaskStatus,
    },
    /// The scheduler's placement of an unplaced task on `node_id`, with its status: as
    /// [`Op::TaskStatus`], and the node. (An operation of its own, not a field of
    /// `TaskStatus`: a manager of an older build refuses an entry with it instead of applying
    /// it without the node.)
    Place {
        id: String,
        version: u64,
        status: TaskStatus,
        node_id: String,
    },
    /// A new task running its service's current task spec: as [`Op::Create`] of the task,
    /// with the spec taken from the service, which must exist with the task's
    /// `spec_version`. (What the orchestrator writes: a 100,000-task service's creation
    /// carried its spec 100,000 times through raft and every manager's decoder.)
    CreateTask(NewTask),
}

/// Operations applied in this process, by kind (all stores together): what `bench cluster`
/// prints as writes per task.
pub mod op_stats {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::Op;

    static COUNTS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];
    /// The kinds counted, in the order of [`snapshot`]'s array.
    pub const KINDS: [&str; 7] = [
        "create",
        "update",
        "delete",
        "status",
        "place",
        "create-task",
        "running",
    ];

    pub(super) fn count(op: &Op) {
        let i = match op {
            Op::Create(_) => 0,
            Op::Update(_) => 1,
            Op::Delete { .. } => 2,
            Op::TaskStatus { status, .. } => {
                if status.state == proto::spec::TaskState::Running {
                    COUNTS[6].fetch_add(1, Ordering::Relaxed);
                }
                3
            }
            Op::Place { .. } => 4,
            Op::CreateTask(_) => 5,
        };
        COUNTS[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far, in the order of [`KINDS`].
    pub fn snapshot() -> [u64; 7] {
        std::array::from_fn(|i| COUNTS[i].load(Ordering::Relaxed))
    }
}

/// How to take back an operation of a transaction that fails further on.
enum Undo {
    /// Put the object back as it was (None: it did not exist).
    Object(Kind, String, Option<Object>),
    /// Give the task its former status and version back (and its former node, if it moved).
    TaskStatus(String, u64, TaskStatus, Option<String>),
}

/// One Raft entry's worth of changes: `ops`, all or nothing; or, when `batch` is not empty
/// (and `ops` is), several independent transactions that the proposer gathered into one
/// entry, so that concurrent writes share one append and one fsync on every manager.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Txn {
    pub ops: Vec<Op>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch: Vec<Txn>,
}

impl Txn {
    pub fn new(ops: Vec<Op>) -> Txn {
        Txn {
            ops,
            batch: Vec::new(),
        }
    }

    /// Several transactions in one entry; each is applied (or refused) on its own.
    pub fn batch(txns: Vec<Txn>) -> Txn {
        Txn {
            ops: Vec::new(),
            batch: txns,
        }
    }

    /// Operations in this transaction, batched ones included.
    pub fn op_count(&self) -> usize {
        self.ops.len() + self.batch.iter().map(Txn::op_count).sum::<usize>()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TxnError {
    #[error("{kind:?} {id} changed since it was read (version {expected}, now {actual}); retry")]
    Conflict {
        kind: Kind,
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("{kind:?} {id} already exists")]
    Exists { kind: Kind, id: String },
    #[error("{kind:?} {id} not found")]
    NotFound { kind: Kind, id: String },
    #[error("task {task} is placed already (on node {on:?}, {state}); retry")]
    Placed {
        task: String,
        on: String,
        state: TaskState,
    },
    #[error("task {task} cannot be assigned to node {node}: it is not ready and active")]
    NodeUnavailable { task: String, node: String },
    #[error("task {id}: {field} may not move backwards ({from} to {to})")]
    Backwards {
        id: String,
        field: String,
        from: TaskState,
        to: TaskState,
    },
    #[error("address {addr} of network {network} is already held by {holder}; retry")]
    AddressInUse {
        network: String,
        addr: Ipv4Addr,
        holder: String,
    },
    #[error(
        "network {id} clashes with network {other} (same name, VNI or overlapping subnet); retry"
    )]
    NetworkClash { id: String, other: String },
    #[error("port {port}/{protocol} is already published by service {service}")]
    PortInUse {
        port: u16,
        protocol: String,
        service: String,
    },
}

/// What applying an entry returned to its proposer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOutcome {
    Applied {
        index: u64,
    },
    Refused(TxnError),
    /// Entries that carry no transaction (blank, membership).
    Nothing,
    /// The outcome of each transaction of a batch, in order.
    Batch(Vec<TxnOutcome>),
}

// Nearly every change is a Put: boxing it would add an allocation per change.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Change {
    Put(Object),
    Deleted { kind: Kind, id: String },
}

/// A committed transaction, as watchers see it.
#[derive(Clone, Debug)]
pub struct Event {
    pub index: u64,
    pub changes: Arc<Vec<Change>>,
    /// What the changes touch, worked out once for every watcher.
    pub touched: Arc<Touched>,
}

/// An index of an event's changes: a thousand node sessions watching an event of 2,000
/// changes each look up their own node instead of each scanning every change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Per node: the positions in the event's changes of the tasks placed on that node,
    /// before the change or after it (a task deleted or moved away counts for its old node).
    tasks_by_node: BTreeMap<String, Vec<usize>>,
    /// The kinds of the objects put or deleted, one bit per [`Kind`].
    kinds: u16,
    /// A task put in the event is attached to networks.
    task_networks: bool,
    /// The store held networks once the event was applied.
    networks: bool,
}

impl Touched {
    /// Index `changes` (committed by `txn`); `old_nodes[i]` is the node the task of op `i`
    /// was placed on before the transaction, if any.
    fn add(&mut self, offset: usize, changes: &[Change], old_nodes: &[Option<String>]) {
        for (i, c) in changes.iter().enumerate() {
            let (kind, new_node) = match c {
                Change::Put(o) => (
                    o.kind(),
                    match o {
                        Object::Task(t) => {
                            self.task_networks |= !t.networks.is_empty();
                            Some(t.node_id.as_str())
                        }
                        _ => None,
                    },
                ),
                Change::Deleted { kind, .. } => (*kind, None),
            };
            self.kinds |= 1 << kind as u16;
            if kind != Kind::Task {
                continue;
            }
            let old = old_nodes.get(i).and_then(|n| n.as_deref());
            for node in [new_node, old.filter(|o| Some(*o) != new_node)]
                .into_iter()
                .flatten()
                .filter(|n| !n.is_empty())
            {
                self.tasks_by_node
                    .entry(node.to_string())
                    .or_default()
                    .push(offset + i);
            }
        }
    }

    /// The positions in the event's changes of the tasks placed on `node_id` before or
    /// after the change.
    pub fn node_tasks(&self, node_id: &str) -> &[usize] {
        self.tasks_by_node.get(node_id).map_or(&[], Vec::as_slice)
    }

    /// The nodes that tasks of the event are placed on, before or after the change.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.tasks_by_node.keys().map(String::as_str)
    }

    /// Whether an object of `kind` was put or deleted.
    pub fn has(&self, kind: Kind) -> bool {
        self.kinds & (1 << kind as u16) != 0
    }

    /// Whether a task put in the event is attached to networks.
    pub fn task_networks(&self) -> bool {
        self.task_networks
    }

    /// Whether the store held any network once the event was applied.
    pub fn networks(&self) -> bool {
        self.networks
    }
}

/// Takes `id` out of the set under `key`, and the set out of `index` once it is empty.
fn unfile(index: &mut BTreeMap<String, BTreeSet<String>>, key: &str, id: &str) {
    if let Some(set) = index.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

/// The node each task op of `txn` finds its task placed on (before the transaction).
fn old_task_nodes(data: &StoreData, txn: &Txn) -> Vec<Option<String>> {
    txn.ops
        .iter()
        .map(|op| {
            // A created task had no node; a status keeps the task's node, and a placement
            // gives one to a task that had none (or the same): no node to look up.
            let id = match op {
                Op::Update(Object::Task(t)) => &t.id,
                Op::Delete {
                    kind: Kind::Task,
                    id,
                } => id,
                _ => return None,
            };
            data.tasks.get(id).map(|t| t.node_id.clone())
        })
        .collect()
}

/// The task table: a hash map with a fixed, fast hasher (deterministic, as applying the log
/// must be on every manager).
pub type TaskMap = std::collections::HashMap<String, Task, foldhash::fast::FixedState>;

/// Serializes the task table in id order.
fn sorted_tasks<S: serde::Serializer>(tasks: &TaskMap, s: S) -> Result<S::Ok, S::Error> {
    let sorted: BTreeMap<&String, &Task> = tasks.iter().collect();
    serde::Serialize::serialize(&sorted, s)
}

/// The tables. Cloneable so that snapshots and tests can hold a copy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreData {
    pub cluster: Option<Cluster>,
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<String, Service>,
    /// By id, hashed: the busiest table (each status write looks its task up on every
    /// manager; in a B-tree of 100,000 string keys that was ~40 string comparisons). Code
    /// that needs tasks in order goes through the ordered indexes below; snapshots list
    /// them in id order.
    #[serde(serialize_with = "sorted_tasks")]
    pub tasks: TaskMap,
    #[serde(default)]
    pub secrets: BTreeMap<String, FileObject>,
    #[serde(default)]
    pub configs: BTreeMap<String, FileObject>,
    #[serde(default)]
    pub data_key: Option<DataKey>,
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    /// Who holds each address, by network id; derived, rebuilt after loading a snapshot.
    #[serde(skip)]
    pub addrs: BTreeMap<String, BTreeMap<Ipv4Addr, Holder>>,
    /// Task ids by service id and by node id; derived, rebuilt after loading a snapshot.
    #[serde(skip)]
    pub tasks_by_service: BTreeMap<String, BTreeSet<String>>,
    #[serde(skip)]
    pub tasks_by_node: BTreeMap<String, BTreeSet<String>>,
    /// Ids of the tasks waiting for addresses (`awaiting_addresses`); derived.
    #[serde(skip)]
    pub awaiting: BTreeSet<String>,
    /// Ids of the tasks not placed yet (PENDING or before): what the scheduler looks at,
    /// without a scan of every task; derived.
    #[serde(skip)]
    pub unplaced: BTreeSet<String>,
    /// What the tasks occupying each node hold of it, by node id; derived.
    #[serde(skip)]
    pub usage: BTreeMap<String, NodeUsage>,
    /// The task specs in use, by service: a task put into the store takes the shared copy
    /// of its spec instead of keeping the one its transaction carried.
    #[serde(skip)]
    pub specs: SpecPool,
}

/// Recent task specs per service id, newest first, at most [`SpecPool::PER_SERVICE`] each
/// (older specs stay shared by their tasks; only new tasks look them up). Not part of the
/// store's state: two stores with the same tables are equal whatever their pools hold.
#[derive(Clone, Debug, Default)]
pub struct SpecPool {
    recent: BTreeMap<String, Vec<Arc<TaskSpec>>>,
    /// Each service's current task spec and the spec version it belongs to.
    current: BTreeMap<String, (u64, Arc<TaskSpec>)>,
}

impl PartialEq for SpecPool {
    fn eq(&self, _: &SpecPool) -> bool {
        true
    }
}

impl SpecPool {
    const PER_SERVICE: usize = 4;

    /// The shared copy of `spec` for `service_id`, remembered if it is new.
    pub fn intern(&mut self, service_id: &str, spec: &Arc<TaskSpec>) -> Arc<TaskSpec> {
        let recent = self.recent.entry(service_id.to_string()).or_default();
        if let Some(pos) = recent
            .iter()
            .position(|s| Arc::ptr_eq(s, spec) || **s == **spec)
        {
            let shared = recent.remove(pos);
            recent.insert(0, shared.clone());
            return shared;
        }
        recent.insert(0, spec.clone());
        recent.truncate(Self::PER_SERVICE);
        spec.clone()
    }

    /// The shared copy of service `s`'s current task spec (what its tasks of its spec
    /// version run), made once per spec version.
    pub fn current(&mut self, s: &Service) -> Arc<TaskSpec> {
        if let Some((version, spec)) = self.current.get(&s.id) {
            if *version == s.spec_version {
                return spec.clone();
            }
        }
        let spec = self.intern(&s.id, &Arc::new(s.spec.task.clone()));
        self.current
            .insert(s.id.clone(), (s.spec_version, spec.clone()));
        spec
    }

    pub fn forget(&mut self, service_id: &str) {
        self.recent.remove(service_id);
        self.current.remove(service_id);
    }
}

impl StoreData {
    fn get(&self, kind: Kind, id: &str) -> Option<u64> {
        match kind {
            Kind::Cluster => self
                .cluster
                .as_ref()
                .filter(|c| c.id == id)
                .map(|c| c.version),
            Kind::Node => self.nodes.get(id).map(|n| n.version),
            Kind::Service => self.services.get(id).map(|s| s.version),
            Kind::Task => self.tasks.get(id).map(|t| t.version),
            Kind::Secret => self.secrets.get(id).map(|f| f.version),
            Kind::Config => self.configs.get(id).map(|f| f.version),
            Kind::DataKey => self
                .data_key
                .as_ref()
                .filter(|k| k.id == id)
                .map(|k| k.version),
            Kind::Network => self.networks.get(id).map(|n| n.version),
        }
    }

    /// Tasks of a service.
    pub fn service_tasks<'a>(&'a self, service_id: &str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks_by_service
            .get(service_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
    }

    /// Tasks placed on a node.
    pub fn node_tasks<'a>(&'a self, node_id: &str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks_by_node
            .get(node_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
    }

    pub fn rebuild_indexes(&mut self) {
        self.tasks_by_service.clear();
        self.tasks_by_node.clear();
        self.addrs.clear();
        self.specs = SpecPool::default();
        self.awaiting.clear();
        self.unplaced.clear();
        self.usage.clear();
        for t in self.tasks.values_mut() {
            t.spec = self.specs.intern(&t.service_id, &t.spec);
        }
        let holders: Vec<(Holder, Vec<(String, Ipv4Addr)>)> = self
            .tasks
            .values()
            .map(|t| Object::Task(t.clone()))
            .chain(
                self.services
                    .values()
                    .map(|s| Object::Service(Box::new(s.clone()))),
            )
            .chain(self.nodes.values().map(|n| Object::Node(n.clone())))
            .filter_map(|o| Some((Holder::of(&o)?, self.holdings(&o))))
            .collect();
        for (h, held) in holders {
            for (net, a) in held {
                self.addrs.entry(net).or_default().insert(a, h.clone());
            }
        }
        let tasks = std::mem::take(&mut self.tasks);
        for t in tasks.values() {
            self.index_task(t);
        }
        self.tasks = tasks;
    }

    fn index_task(&mut self, t: &Task) {
        self.tasks_by_service
            .entry(t.service_id.clone())
            .or_default()
            .insert(t.id.clone());
        if !t.node_id.is_empty() {
            self.tasks_by_node
                .entry(t.node_id.clone())
                .or_default()
                .insert(t.id.clone());
        }
        if t.awaiting_addresses {
            self.awaiting.insert(t.id.clone());
        }
        if t.status.state <= TaskState::Pending {
            self.unplaced.insert(t.id.clone());
        }
        if t.occupies_node() {
            self.usage.entry(t.node_id.clone()).or_default().add(t);
        }
    }

    fn unindex_task(&mut self, t: &Task) {
        self.awaiting.remove(&t.id);
        self.unplaced.remove(&t.id);
        if t.occupies_node() {
            if let Some(u) = self.usage.get_mut(&t.node_id) {
                if u.remove(t) {
                    self.usage.remove(&t.node_id);
                }
            }
        }
        unfile(&mut self.tasks_by_service, &t.service_id, &t.id);
        unfile(&mut self.tasks_by_node, &t.node_id, &t.id);
    }

    /// The checks of a status delta ([`Op::TaskStatus`]), or of a placement with it
    /// ([`Op::Place`], `node_id` given).
    fn check_status(
        &self,
        id: &str,
        version: u64,
        status: &TaskStatus,
        node_id: Option<&str>,
    ) -> Result<(), TxnError> {
        let Some(old) = self.tasks.get(id) else {
            return Err(TxnError::NotFound {
                kind: Kind::Task,
                id: id.to_string(),
            });
        };
        if old.version != version {
            return Err(TxnError::Conflict {
                kind: Kind::Task,
                id: id.to_string(),
                expected: version,
                actual: old.version,
            });
        }
        if status.state < old.status.state {
            return Err(TxnError::Backwards {
                id: id.to_string(),
                field: "state".into(),
                from: old.status.state,
                to: status.state,
            });
        }
        // A task is placed once, and only by the scheduler, before it is assigned.
        let node = match node_id {
            Some(n)
                if !n.is_empty()
                    && old.status.state < TaskState::Assigned
                    && (old.node_id.is_empty() || old.node_id == n) =>
            {
                n
            }
            Some(_) => {
                return Err(TxnError::Placed {
                    task: id.to_string(),
                    on: old.node_id.to_string(),
                    state: old.status.state,
                })
            }
            None => old.node_id.as_str(),
        };
        // As check_assignable of the task with this status (the holdings of a task
        // do not depend on its status or its node).
        if status.state == TaskState::Assigned && old.status.state < TaskState::Assigned {
            let ready = self.nodes.get(node).is_some_and(|n| {
                n.state == NodeState::Ready && n.availability == Availability::Active
            });
            if !ready {
                return Err(TxnError::NodeUnavailable {
                    task: id.to_string(),
                    node: node.to_string(),
                });
            }
        }
        Ok(())
    }

    fn check(&self, op: &Op) -> Result<(), TxnError> {
        match op {
            Op::Create(o) => match self.get(o.kind(), o.id()) {
                Some(_) => Err(TxnError::Exists {
                    kind: o.kind(),
                    id: o.id().to_string(),
                }),
                None if (o.kind() == Kind::Cluster && self.cluster.is_some())
                    || (o.kind() == Kind::DataKey && self.data_key.is_some()) =>
                {
                    Err(TxnError::Exists {
                        kind: o.kind(),
                        id: o.id().to_string(),
                    })
                }
                None => self.check_holdings(o),
            },
            Op::Update(o) => match self.get(o.kind(), o.id()) {
                None => Err(TxnError::NotFound {
                    kind: o.kind(),
                    id: o.id().to_string(),
                }),
                Some(v) if v != o.version() => Err(TxnError::Conflict {
                    kind: o.kind(),
                    id: o.id().to_string(),
                    expected: o.version(),
                    actual: v,
                }),
                Some(_) => {
                    if let (Object::Task(new), Some(old)) = (o, self.tasks.get(o.id())) {
                        check_forward(old, new)?;
                        self.check_assignable(old, new)?;
                    }
                    self.check_holdings(o)
                }
            },
            Op::Delete { kind, id } => match self.get(*kind, id) {
                None => Err(TxnError::NotFound {
                    kind: *kind,
                    id: id.clone(),
                }),
                Some(_) => Ok(()),
            },
            Op::TaskStatus {
                id,
                version,
                status,
            } => self.check_status(id, *version, status, None),
            Op::Place {
                id,
                version,
                status,
                node_id,
            } => self.check_status(id, *version, status, Some(node_id.as_str())),
            Op::CreateTask(t) => {
                if self.tasks.contains_key(&t.id) {
                    return Err(TxnError::Exists {
                        kind: Kind::Task,
                        id: t.id.clone(),
                    });
                }
                match self.services.get(&t.service_id) {
                    None => Err(TxnError::NotFound {
                        kind: Kind::Service,
                        id: t.service_id.clone(),
                    }),
                    Some(s) if s.spec_version != t.spec_version => Err(TxnError::Conflict {
                        kind: Kind::Service,
                        id: s.id.clone(),
                        expected: t.spec_version,
                        actual: s.spec_version,
                    }),
                    Some(_) => self.check_addrs(
                        &Holder::Task(t.id.clone()),
                        self.on_networks(addrs_held(t.status.state, &t.networks)),
                    ),
                }
            }
        }
    }

    /// Stores `o`; the object it replaced, if any.
    fn put(&mut self, o: Object) -> Option<Object> {
        self.unindex_addrs(o.kind(), o.id());
        self.index_addrs(&o);
        match o {
            Object::Cluster(c) => self.cluster.replace(c).map(Object::Cluster),
            Object::Node(n) => self.nodes.insert(n.id.clone(), n).map(Object::Node),
            Object::Service(s) => self
                .services
                .insert(s.id.clone(), *s)
                .map(|old| Object::Service(Box::new(old))),
            Object::Task(mut t) => {
                let old = self.tasks.remove(&t.id);
                if let Some(old) = &old {
                    self.unindex_task(old);
                }
                t.spec = self.specs.intern(&t.service_id, &t.spec);
                self.index_task(&t);
                self.tasks.insert(t.id.clone(), t);
                old.map(Object::Task)
            }
            Object::Secret(f) => self.secrets.insert(f.id.clone(), f).map(Object::Secret),
            Object::Config(f) => self.configs.insert(f.id.clone(), f).map(Object::Config),
            Object::DataKey(k) => self.data_key.replace(k).map(Object::DataKey),
            Object::Network(n) => {
                let id = n.id.clone();
                let old = self.networks.insert(id.clone(), n);
                self.reindex_network(&id);
                old.map(Object::Network)
            }
        }
    }

    /// Removes an object; the object removed, if any.
    fn delete(&mut self, kind: Kind, id: &str) -> Option<Object> {
        self.unindex_addrs(kind, id);
        match kind {
            Kind::Cluster => self.cluster.take().map(Object::Cluster),
            Kind::Node => self.nodes.remove(id).map(Object::Node),
            Kind::Service => {
                let old = self.services.remove(id);
                self.specs.forget(id);
                old.map(|s| Object::Service(Box::new(s)))
            }
            Kind::Task => {
                let old = self.tasks.remove(id)?;
                self.unindex_task(&old);
                if !self.services.contains_key(&old.service_id)
                    && !self.tasks_by_service.contains_key(&old.service_id)
                {
                    self.specs.forget(&old.service_id);
                }
                Some(Object::Task(old))
            }
            Kind::Secret => self.secrets.remove(id).map(Object::Secret),
            Kind::Config => self.configs.remove(id).map(Object::Config),
            Kind::DataKey => self.data_key.take().map(Object::DataKey),
            Kind::Network => {
                let old = self.networks.remove(id);
                self.reindex_network(id);
                old.map(Object::Network)
            }
        }
    }

    /// Sets a task's status and version, and its node if `node` differs from it; the former
    /// version and status, and the former node if it moved.
    fn set_task_status(
        &mut self,
        id: &str,
        version: u64,
        status: TaskStatus,
        node: Option<&str>,
    ) -> Option<(u64, TaskStatus, Option<String>)> {
        // Only the indexes that depend on the state and the node move: the task keeps its
        // service (re-filing it in every set cost a quarter of applying a status).
        let t = self.tasks.get_mut(id)?;
        let was_unplaced = t.status.state <= TaskState::Pending;
        if t.occupies_node() {
            if let Some(u) = self.usage.get_mut(&t.node_id) {
                if u.remove(t) {
                    self.usage.remove(&t.node_id);
                }
            }
        }
        let old_version = std::mem::replace(&mut t.version, version);
        let old = std::mem::replace(&mut t.status, status);
        // Placed (or, undone, unplaced): moved between the nodes' sets.
        let old_node = match node {
            Some(n) if t.node_id != n => {
                let before = std::mem::replace(&mut t.node_id, n.to_string());
                unfile(&mut self.tasks_by_node, &before, &t.id);
                if !t.node_id.is_empty() {
                    self.tasks_by_node
                        .entry(t.node_id.clone())
                        .or_default()
                        .insert(t.id.clone());
                }
                Some(before)
            }
            _ => None,
        };
        let unplaced = t.status.state <= TaskState::Pending;
        if was_unplaced && !unplaced {
            self.unplaced.remove(&t.id);
        } else if unplaced && !was_unplaced {
            self.unplaced.insert(t.id.clone());
        }
        if t.occupies_node() {
            self.usage.entry(t.node_id.clone()).or_default().add(t);
        }
        Some((old_version, old, old_node))
    }

    /// Apply a transaction at log index `index`: all operations or none. Deterministic.
    ///
    /// Operations are checked and applied one after another (a transaction may create an
    /// object and then update it); if one fails, the objects touched so far are restored from
    /// an undo log. Cost is proportional to the transaction, not to the store.
    /// Apply a raft entry's transaction as the state machine does: a batch applies each of
    /// its transactions on its own (a refused one changes nothing). For replays of the log.
    pub fn apply_entry(&mut self, index: u64, txn: &Txn) {
        if txn.batch.is_empty() {
            let _ = self.apply_txn(index, txn);
        } else {
            for t in &txn.batch {
                let _ = self.apply_txn(index, t);
            }
        }
    }

    pub fn apply_txn(&mut self, index: u64, txn: &Txn) -> Result<Vec<Change>, TxnError> {
        // The objects an operation replaces are moved into the undo log, not copied.
        let mut undo: Vec<Undo> = Vec::with_capacity(txn.ops.len());
        let mut changes = Vec::with_capacity(txn.ops.len());
        for op in &txn.ops {
            if let Err(e) = self.check(op) {
                for u in undo.into_iter().rev() {
                    match u {
                        Undo::Object(_, _, Some(o)) => {
                            self.put(o);
                        }
                        Undo::Object(kind, id, None) => {
                            self.delete(kind, &id);
                        }
                        Undo::TaskStatus(id, version, status, node) => {
                            self.set_task_status(&id, version, status, node.as_deref());
                        }
                    }
                }
                return Err(e);
            }
            let (change, u) = self.apply_unchecked(index, op);
            undo.push(u);
            changes.push(change);
        }
        Ok(changes)
    }

    /// Applies a checked operation: the change, and how to take it back.
    fn apply_unchecked(&mut self, index: u64, op: &Op) -> (Change, Undo) {
        op_stats::count(op);
        match op {
            Op::Create(o) | Op::Update(o) => {
                let mut o = o.clone();
                o.set_version(index);
                let (kind, id) = (o.kind(), o.id().to_string());
                let before = self.put(o.clone());
                (Change::Put(o), Undo::Object(kind, id, before))
            }
            Op::Delete { kind, id } => {
                let before = self.delete(*kind, id);
                (
                    Change::Deleted {
                        kind: *kind,
                        id: id.clone(),
                    },
                    Undo::Object(*kind, id.clone(), before),
                )
            }
            Op::TaskStatus { id, status, .. } => self.apply_status(index, id, status, None),
            Op::Place {
                id,
                status,
                node_id,
                ..
            } => self.apply_status(index, id, status, Some(node_id.as_str())),
            Op::CreateTask(t) => {
                let service = self.services.get(&t.service_id).expect("checked");
                let task = t.to_task(self.specs.current(service), index);
                let before = self.put(Object::Task(task.clone()));
                (
                    Change::Put(Object::Task(task)),
                    Undo::Object(Kind::Task, t.id.clone(), before),
                )
            }
        }
    }

    /// Applies a checked status delta, or placement with it (`node_id` given).
    fn apply_status(
        &mut self,
        index: u64,
        id: &str,
        status: &TaskStatus,
        node_id: Option<&str>,
    ) -> (Change, Undo) {
        let (version, before, node_before) = self
            .set_task_status(id, index, status.clone(), node_id)
            .expect("checked: the task exists");
        let t = self.tasks.get(id).expect("just set").clone();
        (
            Change::Put(Object::Task(t)),
            Undo::TaskStatus(id.to_string(), version, before, node_before),
        )
    }

    /// Find a node by full id, unique id prefix, or hostname (as Docker's CLI resolves names).
    pub fn find_node(&self, key: &str) -> Result<&Node, FindError> {
        if let Some(n) = self.nodes.get(key) {
            return Ok(n);
        }
        let by_name: Vec<&Node> = self
            .nodes
            .values()
            .filter(|n| n.description.hostname == key)
            .collect();
        if by_name.len() == 1 {
            return Ok(by_name[0]);
        }
        if by_name.len() > 1 {
            return Err(FindError::Ambiguous(key.to_string()));
        }
        let by_prefix: Vec<&Node> = self
            .nodes
            .values()
            .filter(|n| !key.is_empty() && n.id.starts_with(key))
            .collect();
        match by_prefix.len() {
            1 => Ok(by_prefix[0]),
            0 => Err(FindError::NotFound(key.to_string())),
            _ => Err(FindError::Ambiguous(key.to_string())),
        }
    }
}

/// What holds an address on a network.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Holder {
    /// A task that has not ended (it may still have a container).
    Task(String),
    /// A service's virtual IP.
    Service(String),
    /// A node's ingress sandbox.
    Node(String),
}

impl Holder {
    fn of(o: &Object) -> Option<Holder> {
        match o {
            Object::Task(t) => Some(Holder::Task(t.id.clone())),
            Object::Service(s) => Some(Holder::Service(s.id.clone())),
            Object::Node(n) => Some(Holder::Node(n.id.clone())),
            _ => None,
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Task(id) => write!(f, "task {id}"),
            Holder::Service(id) => write!(f, "service {id}"),
            Holder::Node(id) => write!(f, "node {id}"),
        }
    }
}

/// Whether two published ports would answer on the same node: an ingress-mode port opens on
/// every node, so it clashes with any other publication of that port and protocol.
pub fn ports_clash(a: &PortConfig, b: &PortConfig) -> bool {
    a.published_port != 0
        && a.published_port == b.published_port
        && a.protocol == b.protocol
        && (a.publish_mode == PublishMode::Ingress || b.publish_mode == PublishMode::Ingress)
}

impl StoreData {
    /// The ingress network, if the cluster has one.
    pub fn ingress_network(&self) -> Option<&Network> {
        self.networks.values().find(|n| n.spec.ingress)
    }

    /// Who holds `addr` on network `net`.
    pub fn addr_holder(&self, net: &str, addr: Ipv4Addr) -> Option<&Holder> {
        self.addrs.get(net).and_then(|m| m.get(&addr))
    }

    /// The addresses of `held` on networks that exist.
    fn on_networks(&self, held: Vec<(String, Ipv4Addr)>) -> Vec<(String, Ipv4Addr)> {
        held.into_iter()
            .filter(|(n, _)| self.networks.contains_key(n))
            .collect()
    }

    /// The addresses `o` holds on existing networks: (network id, address). (Addresses on a
    /// removed network hold nothing: the index stays a function of the tables alone.)
    fn holdings(&self, o: &Object) -> Vec<(String, Ipv4Addr)> {
        match o {
            Object::Task(t) => self.on_networks(task_holdings(t)),
            Object::Service(s) => s
                .endpoint
                .vips
                .iter()
                .filter(|(n, _)| self.networks.contains_key(*n))
                .map(|(n, a)| (n.clone(), *a))
                .collect(),
            Object::Node(n) => match (n.ingress_addr, self.ingress_network()) {
                (Some(a), Some(net)) => vec![(net.id.clone(), a)],
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    fn index_addrs(&mut self, o: &Object) {
        let held = self.holdings(o);
        if held.is_empty() {
            return;
        }
        let Some(h) = Holder::of(o) else { return };
        for (net, a) in held {
            self.addrs.entry(net).or_default().insert(a, h.clone());
        }
    }

    /// Recompute who holds what on network `id` (after it was created, changed or removed).
    fn reindex_network(&mut self, id: &str) {
        self.addrs.remove(id);
        let Some(net) = self.networks.get(id) else {
            return;
        };
        let mut m: BTreeMap<Ipv4Addr, Holder> = BTreeMap::new();
        for t in self
            .tasks
            .values()
            .filter(|t| !t.status.state.is_terminal())
        {
            for tn in t.networks.iter().filter(|tn| tn.network_id == id) {
                m.insert(tn.addr, Holder::Task(t.id.clone()));
            }
        }
        for s in self.services.values() {
            if let Some(a) = s.endpoint.vips.get(id) {
                m.insert(*a, Holder::Service(s.id.clone()));
            }
        }
        if net.spec.ingress && self.ingress_network().is_some_and(|i| i.id == id) {
            for n in self.nodes.values() {
                if let Some(a) = n.ingress_addr {
                    m.insert(a, Holder::Node(n.id.clone()));
                }
            }
        }
        if !m.is_empty() {
            self.addrs.insert(id.to_string(), m);
        }
    }

    /// Forget the addresses the stored object `kind`/`id` holds.
    fn unindex_addrs(&mut self, kind: Kind, id: &str) {
        let (held, h) = match kind {
            Kind::Task => match self.tasks.get(id) {
                // Entries of removed networks are already gone: no filtering needed.
                Some(t) if !t.networks.is_empty() => (task_holdings(t), Holder::Task(id.into())),
                _ => return,
            },
            Kind::Service => match self.services.get(id) {
                Some(s) if !s.endpoint.vips.is_empty() => (
                    self.holdings(&Object::Service(Box::new(s.clone()))),
                    Holder::Service(id.into()),
                ),
                _ => return,
            },
            Kind::Node => match self.nodes.get(id) {
                Some(n) if n.ingress_addr.is_some() => (
                    self.holdings(&Object::Node(n.clone())),
                    Holder::Node(id.into()),
                ),
                _ => return,
            },
            _ => return,
        };
        for (net, a) in held {
            if let Some(m) = self.addrs.get_mut(&net) {
                if m.get(&a) == Some(&h) {
                    m.remove(&a);
                }
            }
        }
    }

    /// No address of a network goes to two holders, nor is a network's gateway; no
    /// published port clashes with another service's.
    /// The addresses `held` are free for `h`: neither a gateway nor held by another.
    fn check_addrs(&self, h: &Holder, held: Vec<(String, Ipv4Addr)>) -> Result<(), TxnError> {
        for (net, a) in held {
            if self.networks.get(&net).is_some_and(|n| n.gateway == a) {
                return Err(TxnError::AddressInUse {
                    network: net,
                    addr: a,
                    holder: "the gateway".into(),
                });
            }
            match self.addr_holder(&net, a) {
                Some(other) if other != h => {
                    return Err(TxnError::AddressInUse {
                        network: net,
                        addr: a,
                        holder: other.to_string(),
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_holdings(&self, o: &Object) -> Result<(), TxnError> {
        let held = self.holdings(o);
        if !held.is_empty() {
            let h = Holder::of(o).expect("only tasks, services and nodes hold addresses");
            self.check_addrs(&h, held)?;
        }
        if let Object::Network(n) = o {
            let mine = n.subnet.parse::<crate::allocator::Cidr>().ok();
            for x in self.networks.values().filter(|x| x.id != n.id) {
                let overlap = match (mine, x.subnet.parse::<crate::allocator::Cidr>().ok()) {
                    (Some(a), Some(b)) => a.overlaps(&b),
                    _ => false,
                };
                if overlap || x.vni == n.vni || x.spec.name == n.spec.name {
                    return Err(TxnError::NetworkClash {
                        id: n.id.clone(),
                        other: x.id.clone(),
                    });
                }
            }
        }
        if let Object::Service(s) = o {
            for p in &s.endpoint.ports {
                if let Some(other) = self
                    .services
                    .values()
                    .find(|x| x.id != s.id && x.endpoint.ports.iter().any(|q| ports_clash(p, q)))
                {
                    return Err(TxnError::PortInUse {
                        port: p.published_port,
                        protocol: p.protocol.as_str().into(),
                        service: other.spec.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

fn task_holdings(t: &Task) -> Vec<(String, Ipv4Addr)> {
    addrs_held(t.status.state, &t.networks)
}

/// The addresses a task in `state` with `networks` holds: none once it has ended.
fn addrs_held(state: TaskState, networks: &[TaskNetwork]) -> Vec<(String, Ipv4Addr)> {
    if state.is_terminal() {
        return Vec::new();
    }
    networks
        .iter()
        .map(|n| (n.network_id.clone(), n.addr))
        .collect()
}

impl StoreData {
    /// No task is newly assigned to a node that is not ready and active: checked when the
    /// assignment commits, since the scheduler decided on an earlier view (a drain may have
    /// committed in between).
    fn check_assignable(&self, old: &Task, new: &Task) -> Result<(), TxnError> {
        if new.status.state != TaskState::Assigned || old.status.state >= TaskState::Assigned {
            return Ok(());
        }
        let ok = self
            .nodes
            .get(&new.node_id)
            .is_some_and(|n| n.state == NodeState::Ready && n.availability == Availability::Active);
        if ok {
            Ok(())
        } else {
            Err(TxnError::NodeUnavailable {
                task: new.id.clone(),
                node: new.node_id.clone(),
            })
        }
    }
}

/// Task state and desired state only ever move forward.
fn check_forward(old: &Task, new: &Task) -> Result<(), TxnError> {
    if new.status.state < old.status.state {
        return Err(TxnError::Backwards {
            id: new.id.clone(),
            field: "state".into(),
            from: old.status.state,
            to: new.status.state,
        });
    }
    if new.desired_state < old.desired_state {
        return Err(TxnError::Backwards {
            id: new.id.clone(),
            field: "desired state".into(),
            from: old.desired_state,
            to: new.desired_state,
        });
    }
    Ok(())
}

/// Why [`find_by_key`] found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    NotFound,
    Ambiguous,
}

/// An object of a table keyed by id, found as Docker resolves names: full id, exact name,
/// then a unique id prefix.
pub fn find_by_key<'a, T>(
    table: &'a BTreeMap<String, T>,
    key: &str,
    name: impl Fn(&T) -> &str,
) -> Result<&'a T, Miss> {
    if let Some(o) = table.get(key) {
        return Ok(o);
    }
    if let Some(o) = table.values().find(|o| name(o) == key) {
        return Ok(o);
    }
    let mut by_prefix = table
        .iter()
        .filter(|(id, _)| !key.is_empty() && id.starts_with(key))
        .map(|(_, o)| o);
    match (by_prefix.next(), by_prefix.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => Err(Miss::NotFound),
        (Some(_), Some(_)) => Err(Miss::Ambiguous),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindError {
    #[error("node {0} not found")]
    NotFound(String),
    #[error("node {0} is ambiguous: it matches more than one node")]
    Ambiguous(String),
}

/// A handle to the in-memory tables and their change stream.
/// Committed transactions buffered for watchers.
pub const EVENT_BUFFER: usize = 32;

/// A watcher that cannot fall behind: the store folds every committed change into its
/// state as it applies it, and wakes it. What the state keeps bounds its memory (a set of
/// ids, not the changes), where a broadcast watcher that is slow loses changes and must
/// re-read the whole store.
pub struct Folded<S> {
    shared: Arc<FoldShared<S>>,
}

struct FoldShared<S> {
    state: std::sync::Mutex<S>,
    notify: tokio::sync::Notify,
    fold: fn(&mut S, &Change),
}

trait Fold: Send + Sync {
    fn fold(&self, changes: &[Change]);
}

impl<S: Send> Fold for FoldShared<S> {
    fn fold(&self, changes: &[Change]) {
        {
            let mut s = self.state.lock().expect("fold lock");
            for c in changes {
                (self.fold)(&mut s, c);
            }
        }
        self.notify.notify_one();
    }
}

impl<S: Default> Folded<S> {
    /// Returns once changes were folded in since the last [`Folded::take`] (at once if
    /// some already were).
    pub async fn changed(&self) {
        self.shared.notify.notified().await
    }

    /// The state folded so far; it starts again from empty.
    pub fn take(&self) -> S {
        std::mem::take(&mut *self.shared.state.lock().expect("fold lock"))
    }
}

#[derive(Clone)]
pub struct Store {
    data: Arc<RwLock<StoreData>>,
    events: broadcast::Sender<Event>,
    /// Folded watchers ([`Store::watch_folded`]), dropped with their handles.
    folds: Arc<std::sync::Mutex<Vec<std::sync::Weak<dyn Fold>>>>,
    /// Where writes go ([`Store::propose`]); none until the manager sets it.
    proposer: Arc<RwLock<Option<Arc<dyn Proposer>>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Store {
        // The channel keeps its last `capacity` events alive even once every watcher has
        // read them: at up to 200 objects (~4 KB each) an event, 4096 held hundreds of MB
        // during a large scale-up. Watchers that fall behind get `Lagged` and re-read the
        // store.
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Store {
            data: Arc::new(RwLock::new(StoreData::default())),
            events,
            folds: Default::default(),
            proposer: Arc::new(RwLock::new(None)),
        }
    }

    /// Changes committed from now on, folded by `fold` into a state of the watcher's own
    /// ([`Folded`]).
    pub fn watch_folded<S: Default + Send + 'static>(
        &self,
        fold: fn(&mut S, &Change),
    ) -> Folded<S> {
        let shared = Arc::new(FoldShared {
            state: std::sync::Mutex::new(S::default()),
            notify: tokio::sync::Notify::new(),
            fold,
        });
        let weak: std::sync::Weak<dyn Fold> = Arc::downgrade(&(shared.clone() as Arc<dyn Fold>));
        self.folds.lock().expect("folds lock").push(weak);
        Folded { shared }
    }

    /// Folds committed `changes` into every live folded watcher.
    fn fold(&self, changes: &[Change]) {
        let mut folds = self.folds.lock().expect("folds lock");
        folds.retain(|f| match f.upgrade() {
            Some(f) => {
                f.fold(changes);
                true
            }
            None => false,
        });
    }

    /// Writes go through `p` from now on.
    pub fn set_proposer(&self, p: Arc<dyn Proposer>) {
        *self.proposer.write().expect("proposer lock") = Some(p);
    }

    /// Commits `txn` (all of it or none) and returns the log index it was applied at.
    pub async fn propose(&self, txn: Txn) -> Result<u64, ProposeError> {
        let p = self.proposer.read().expect("proposer lock").clone();
        match p {
            Some(p) => p.propose(self, txn).await,
            None => Err(ProposeError::NotLeader),
        }
    }

    /// Read under a consistent snapshot of all tables.
    pub fn view<R>(&self, f: impl FnOnce(&StoreData) -> R) -> R {
        f(&self.data.read().expect("store lock"))
    }

    /// As [`Store::view`], for work that takes long over a large store (a planning round):
    /// on a multi-threaded runtime the thread is handed over for the duration, so that
    /// sessions and heartbeats on the same runtime keep being served meanwhile.
    pub fn view_long<R>(&self, f: impl FnOnce(&StoreData) -> R) -> R {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| self.view(f)),
            _ => self.view(f),
        }
    }

    /// Changes committed from now on.
    pub fn watch(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub(crate) fn apply(&self, index: u64, txn: &Txn) -> TxnOutcome {
        let mut touched = Touched::default();
        if txn.batch.is_empty() {
            let res = {
                let mut data = self.data.write().expect("store lock");
                let old = old_task_nodes(&data, txn);
                data.apply_txn(index, txn).inspect(|c| {
                    touched.add(0, c, &old);
                    touched.networks = !data.networks.is_empty();
                })
            };
            return match res {
                Ok(changes) => {
                    self.fold(&changes);
                    let _ = self.events.send(Event {
                        index,
                        changes: Arc::new(changes),
                        touched: Arc::new(touched),
                    });
                    TxnOutcome::Applied { index }
                }
                Err(e) => TxnOutcome::Refused(e),
            };
        }
        // A batch: each transaction on its own, in order; one event with every change.
        let mut all = Vec::new();
        let mut outcomes = Vec::with_capacity(txn.batch.len());
        {
            let mut data = self.data.write().expect("store lock");
            for t in &txn.batch {
                let old = old_task_nodes(&data, t);
                match data.apply_txn(index, t) {
                    Ok(changes) => {
                        touched.add(all.len(), &changes, &old);
                        all.extend(changes);
                        outcomes.push(TxnOutcome::Applied { index });
                    }
                    Err(e) => outcomes.push(TxnOutcome::Refused(e)),
                }
            }
            touched.networks = !data.networks.is_empty();
        }
        if !all.is_empty() {
            self.fold(&all);
            let _ = self.events.send(Event {
                index,
                changes: Arc::new(all),
                touched: Arc::new(touched),
            });
        }
        TxnOutcome::Batch(outcomes)
    }

    pub(crate) fn replace(&self, mut data: StoreData) {
        data.rebuild_indexes();
        *self.data.write().expect("store lock") = data;
    }

    #[cfg(test)]
    pub(crate) fn clone_data(&self) -> StoreData {
        self.data.read().expect("store lock").clone()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A folded watcher misses nothing however many transactions commit before it reads
    /// (a broadcast one would have lagged past [`EVENT_BUFFER`]); what it holds is only
    /// what its fold keeps; dropped, it is no longer fed.
    #[tokio::test]
    async fn a_folded_watcher_misses_nothing_and_stays_bounded() {
        let store = Store::new();
        fn ids(s: &mut BTreeSet<String>, c: &Change) {
            if let Change::Put(Object::Node(n)) = c {
                s.insert(n.id.clone());
            }
        }
        let folded = store.watch_folded::<BTreeSet<String>>(ids);
        let n = EVENT_BUFFER * 4;
        for i in 0..n {
            let mut a = node(&format!("n{}", i % 10), "h");
            a.version = 0;
            let op = if i < 10 {
                Op::Create(Object::Node(a))
            } else {
                let mut cur = store.view(|d| d.nodes[&a.id].clone());
                cur.labels.insert("i".into(), i.to_string());
                Op::Update(Object::Node(cur))
            };
            assert!(matches!(
                store.apply(i as u64 + 1, &Txn::new(vec![op])),
                TxnOutcome::Applied { .. }
            ));
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), folded.changed())
            .await
            .expect("woken");
        assert_eq!(folded.take().len(), 10);
        assert!(folded.take().is_empty());
        drop(folded);
        store.apply(
            n as u64 + 1,
            &Txn::new(vec![Op::Create(Object::Node(node("x", "h")))]),
        );
        assert!(store.folds.lock().unwrap().is_empty());
    }

    /// A batch applies each transaction on its own: a refused one changes nothing and does
    /// not stop the others; the later of two writes of the same version conflicts.
    #[test]
    fn batched_transactions_apply_independently() {
        let store = Store::new();
        let mut watch = store.watch();
        let out = store.apply(
            3,
            &Txn::batch(vec![
                Txn::new(vec![Op::Create(Object::Node(node("a", "h1")))]),
                Txn::new(vec![
                    Op::Create(Object::Node(node("b", "h2"))),
                    Op::Create(Object::Node(node("a", "h1"))),
                ]),
                Txn::new(vec![Op::Create(Object::Node(node("c", "h3")))]),
            ]),
        );
        let TxnOutcome::Batch(o) = out else {
            panic!("a batch outcome: {out:?}")
        };
        assert_eq!(o[0], TxnOutcome::Applied { index: 3 });
        assert!(matches!(o[1], TxnOutcome::Refused(TxnError::Exists { .. })));
        assert_eq!(o[2], TxnOutcome::Applied { index: 3 });
        assert_eq!(
            store.view(|d| d.nodes.keys().cloned().collect::<Vec<_>>()),
            vec!["a".to_string(), "c".to_string()]
        );
        let ev = watch.try_recv().expect("one event for the batch");
        assert_eq!(ev.index, 3);
        assert_eq!(ev.changes.len(), 2);
        assert!(watch.try_recv().is_err());
        // Two updates read at the same version: the second conflicts.
        let a = store.view(|d| d.nodes["a"].clone());
        let mut a1 = a.clone();
        a1.labels.insert("x".into(), "1".into());
        let mut a2 = a;
        a2.labels.insert("y".into(), "2".into());
        let TxnOutcome::Batch(o) = store.apply(
            4,
            &Txn::batch(vec![
                Txn::new(vec![Op::Update(Object::Node(a1))]),
                Txn::new(vec![Op::Update(Object::Node(a2))]),
            ]),
        ) else {
            panic!("a batch outcome")
        };
        assert_eq!(o[0], TxnOutcome::Applied { index: 4 });
        assert!(matches!(
            o[1],
            TxnOutcome::Refused(TxnError::Conflict { .. })
        ));
        // The entry format of a single transaction is unchanged on disk.
        let one = Txn::new(vec![]);
        assert_eq!(serde_json::to_string(&one).unwrap(), r#"{"ops":[]}"#);
    }

    pub fn node(id: &str, host: &str) -> Node {
        Node {
            ingress_addr: None,
            id: id.into(),
            version: 0,
            raft_id: 1,
            role: Role::Worker,
            desired_role: Role::Worker,
            availability: Availability::Active,
            labels: BTreeMap::new(),
            description: NodeDescription {
                hostname: host.into(),
                ..Default::default()
            },
            state: NodeState::Unknown,
            status_message: String::new(),
            created_at_ms: 0,
            updated_at_ms: 0,
            cert_not_after_ms: 0,
        }
    }

    /// A task of service `svc` placed on `node`, without networks.
    pub fn bare_task(id: &str, node: &str) -> Task {
        Task {
            id: id.into(),
            version: 0,
            service_id: "svc".into(),
            service_name: "svc".into(),
            slot: 1,
            node_id: node.into(),
            spec: Arc::default(),
            spec_version: 1,
            desired_state: TaskState::Running,
            status: TaskStatus::default(),
            created_at_ms: 0,
            restart_count: 0,
            networks: Vec::new(),
            awaiting_addresses: false,
        }
    }

    fn status(state: TaskState) -> TaskStatus {
        TaskStatus {
            state,
            ..Default::default()
        }
    }

    /// A task created from its service carries no spec in the entry: it gets the service's
    /// current one (one shared copy), only while the service has the task's spec version,
    /// and is taken back with the rest of a refused transaction.
    #[test]
    fn a_task_created_from_its_service_takes_the_service_spec() {
        let mut d = StoreData::default();
        let mut svc = crate::allocator::tests::service("svc", &[], vec![]);
        svc.spec.task.image = "a-long-image-name:with-a-tag".into();
        svc.spec.task.env = (0..20).map(|i| format!("VARIABLE_{i}=value {i}")).collect();
        d.apply_txn(
            2,
            &Txn::new(vec![Op::Create(Object::Service(Box::new(svc.clone())))]),
        )
        .unwrap();
        let new = |id: &str, spec_version| {
            let mut t = bare_task(id, "");
            t.spec_version = spec_version;
            Op::CreateTask(t.into())
        };
        let changes = d
            .apply_txn(3, &Txn::new(vec![new("t1", 1), new("t2", 1)]))
            .unwrap();
        let Change::Put(Object::Task(put)) = &changes[0] else {
            panic!("{changes:?}")
        };
        assert_eq!((put.version, &put.spec.image), (3, &svc.spec.task.image));
        assert_eq!(d.tasks["t1"], *put);
        assert!(Arc::ptr_eq(&d.tasks["t1"].spec, &d.tasks["t2"].spec));
        assert!(d.unplaced.contains("t2"));
        // An id in use, a service gone or of another spec version: refused, and what the
        // transaction did before is taken back.
        let before = d.clone();
        for (bad, want) in [
            (new("t1", 1), "already exists"),
            (new("t9", 2), "changed since"),
        ] {
            let e = d
                .apply_txn(4, &Txn::new(vec![new("t3", 1), bad]))
                .unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            assert_eq!(d, before);
        }
        let mut orphan = bare_task("t4", "");
        orphan.service_id = "gone".into();
        let e = d
            .apply_txn(4, &Txn::new(vec![Op::CreateTask(orphan.into())]))
            .unwrap_err();
        assert!(
            matches!(
                e,
                TxnError::NotFound {
                    kind: Kind::Service,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(d, before);
        // The entry is a fraction of the whole task's.
        let compact = serde_json::to_string(&new("t5", 1)).unwrap().len();
        let whole = serde_json::to_string(&Op::Create(Object::Task(d.tasks["t1"].clone())))
            .unwrap()
            .len();
        assert!(compact * 2 < whole, "{compact} vs {whole}");
    }

    /// A status write is an update of the task's status alone: same version check, forward
    /// only, indexes kept, taken back with the rest of a refused transaction; its log entry
    /// is a fraction of the whole task's.
    #[test]
    fn a_status_write_updates_the_status_alone() {
        let mut d = StoreData::default();
        let mut n = node("n1", "h1");
        n.state = NodeState::Ready;
        let mut t = bare_task("t1", "n1");
        t.spec = Arc::new(TaskSpec {
            image: "a-long-image-name:with-a-tag".into(),
            ..Default::default()
        });
        d.apply_txn(
            2,
            &Txn::new(vec![
                Op::Create(Object::Node(n)),
                Op::Create(Object::Task(t.clone())),
            ]),
        )
        .unwrap();
        assert!(d.unplaced.contains("t1"));
        let op = |version, state| Op::TaskStatus {
            id: "t1".into(),
            version,
            status: status(state),
        };
        let changes = d
            .apply_txn(3, &Txn::new(vec![op(2, TaskState::Assigned)]))
            .unwrap();
        let Change::Put(Object::Task(put)) = &changes[0] else {
            panic!("{changes:?}")
        };
        assert_eq!((put.version, put.status.state), (3, TaskState::Assigned));
        assert_eq!(d.tasks["t1"], *put);
        assert_eq!(d.tasks["t1"].spec.image, t.spec.image, "the rest is kept");
        assert!(!d.unplaced.contains("t1"), "re-indexed");
        // A stale version, a move backwards, a task that does not exist: refused.
        for (bad, want) in [
            (op(2, TaskState::Running), "changed since"),
            (op(3, TaskState::Pending), "backwards"),
        ] {
            let e = d.apply_txn(4, &Txn::new(vec![bad])).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
        let missing = Op::TaskStatus {
            id: "nope".into(),
            version: 1,
            status: status(TaskState::Running),
        };
        // Refused further on in a transaction: the status written before is taken back.
        let before = d.clone();
        let e = d
            .apply_txn(5, &Txn::new(vec![op(3, TaskState::Running), missing]))
            .unwrap_err();
        assert!(matches!(e, TxnError::NotFound { .. }), "{e}");
        assert_eq!(d, before);
        assert_eq!(d.tasks["t1"].status.state, TaskState::Assigned);
        // The entry is small next to the whole task's.
        let delta = serde_json::to_string(&op(3, TaskState::Running))
            .unwrap()
            .len();
        let whole = serde_json::to_string(&Op::Update(Object::Task(d.tasks["t1"].clone())))
            .unwrap()
            .len();
        assert!(delta * 3 < whole, "{delta} vs {whole}");
    }

    /// A refused transaction leaves the store as it was, whatever its operations did first.
    #[test]
    fn a_refused_transaction_takes_back_puts_and_deletes() {
        let mut d = StoreData::default();
        d.apply_txn(
            2,
            &Txn::new(vec![
                Op::Create(Object::Task(bare_task("t1", "n1"))),
                Op::Create(Object::Task(bare_task("t2", ""))),
            ]),
        )
        .unwrap();
        let before = d.clone();
        let mut moved = d.tasks["t2"].clone();
        moved.node_id = "n2".into();
        let e = d
            .apply_txn(
                3,
                &Txn::new(vec![
                    Op::Delete {
                        kind: Kind::Task,
                        id: "t1".into(),
                    },
                    Op::Update(Object::Task(moved)),
                    Op::Create(Object::Task(bare_task("t3", "n1"))),
                    Op::Create(Object::Task(bare_task("t2", "n1"))),
                ]),
            )
            .unwrap_err();
        assert!(matches!(e, TxnError::Exists { .. }), "{e}");
        assert_eq!(d, before);
    }

    #[test]
    fn create_update_delete_with_versions() {
        let store = Store::new();
        let mut rx = store.watch();
        let out = store.apply(
            5,
            &Txn::new(vec![Op::Create(Object::Node(node("a", "h1")))]),
        );
        assert_eq!(out, TxnOutcome::Applied { index: 5 });
        let a = store.view(|d| d.nodes["a"].clone());
        assert_eq!(a.version, 5);
        let ev = rx.try_recv().unwrap();
        assert_eq!(ev.index, 5);

        // A stale update is refused and changes nothing.
        let mut stale = a.clone();
        stale.version = 4;
        stale.availability = Availability::Drain;
        let out = store.apply(6, &Txn::new(vec![Op::Update(Object::Node(stale))]));
        assert!(matches!(
            out,
            TxnOutcome::Refused(TxnError::Conflict { .. })
        ));
        assert_eq!(
            store.view(|d| d.nodes["a"].availability),
            Availability::Active
        );

        let mut fresh = a.clone();
        fresh.availability = Availability::Drain;
        let out = store.apply(7, &Txn::new(vec![Op::Update(Object::Node(fresh))]));
        assert_eq!(out, TxnOutcome::Applied { index: 7 });
        assert_eq!(store.view(|d| d.nodes["a"].version), 7);

        let out = store.apply(
            8,
            &Txn::new(vec![Op::Delete {
                kind: Kind::Node,
                id: "a".into(),
            }]),
        );
        assert_eq!(out, TxnOutcome::Applied { index: 8 });
        assert!(store.view(|d| d.nodes.is_empty()));
    }

    #[test]
    fn transaction_is_all_or_nothing() {
        let store = Store::new();
        store.apply(
            1,
            &Txn::new(vec![Op::Create(Object::Node(node("a", "h1")))]),
        );
        let out = store.apply(
            2,
            &Txn::new(vec![
                Op::Create(Object::Node(node("b", "h2"))),
                Op::Create(Object::Node(node("a", "dup"))),
            ]),
        );
        assert!(matches!(out, TxnOutcome::Refused(TxnError::Exists { .. })));
        assert!(store.view(|d| !d.nodes.contains_key("b")));
        // Create then update the same object inside one transaction.
        let mut c = node("c", "h3");
        let out = store.apply(
            3,
            &Txn::new(vec![Op::Create(Object::Node(c.clone())), {
                c.version = 3;
                c.availability = Availability::Pause;
                Op::Update(Object::Node(c))
            }]),
        );
        assert_eq!(out, TxnOutcome::Applied { index: 3 });
        assert_eq!(
            store.view(|d| d.nodes["c"].availability),
            Availability::Pause
        );
    }

    #[test]
    fn find_node_by_id_prefix_and_hostname() {
        let store = Store::new();
        store.apply(
            1,
            &Txn::new(vec![
                Op::Create(Object::Node(node("abc123", "alpha"))),
                Op::Create(Object::Node(node("abd456", "beta"))),
            ]),
        );
        store.view(|d| {
            assert_eq!(d.find_node("abc123").unwrap().id, "abc123");
            assert_eq!(d.find_node("abd").unwrap().id, "abd456");
            assert_eq!(d.find_node("beta").unwrap().id, "abd456");
            assert!(matches!(d.find_node("ab"), Err(FindError::Ambiguous(_))));
            assert!(matches!(d.find_node("zzz"), Err(FindError::NotFound(_))));
        });
    }

    fn ready_node(id: &str) -> Node {
        let mut n = node(id, id);
        n.state = NodeState::Ready;
        n
    }

    fn plain_task(id: &str, service: &str, node: &str, state: TaskState) -> Task {
        let mut t = task_on(id, node, "net", Ipv4Addr::new(10, 0, 1, 2));
        t.networks.clear();
        t.service_id = service.into();
        t.status.state = state;
        t
    }

    /// The derived indexes kept up to date write by write are those a rebuild from the
    /// tables gives: what the scheduler reads instead of scanning every task.
    #[test]
    fn incremental_indexes_match_a_rebuild() {
        let store = Store::new();
        let mut ops = vec![
            Op::Create(Object::Node(ready_node("n1"))),
            Op::Create(Object::Node(ready_node("n2"))),
        ];
        for i in 0..6 {
            let mut t = plain_task(&format!("t{i}"), ["a", "b"][i % 2], "", TaskState::New);
            Arc::make_mut(&mut t.spec).resources.reserve_memory = 100;
            ops.push(Op::Create(Object::Task(t)));
        }
        store.apply(1, &Txn::new(ops));
        let check = |why: &str| {
            store.view(|d| {
                let mut rebuilt = d.clone();
                rebuilt.rebuild_indexes();
                assert_eq!(d.unplaced, rebuilt.unplaced, "{why}");
                assert_eq!(d.usage, rebuilt.usage, "{why}");
                assert_eq!(d.tasks_by_node, rebuilt.tasks_by_node, "{why}");
            })
        };
        check("created");
        assert_eq!(store.view(|d| d.unplaced.len()), 6);
        // Placed: t0..t3 on n1 and n2; then t0 runs, t1 fails, t2 is told to stop.
        let mut index = 2;
        let mut step = |store: &Store, f: &dyn Fn(&mut Task), ids: &[&str]| {
            let ops = store.view(|d| {
                ids.iter()
                    .map(|id| {
                        let mut t = d.tasks[*id].clone();
                        f(&mut t);
                        Op::Update(Object::Task(t))
                    })
                    .collect()
            });
            assert!(matches!(
                store.apply(index, &Txn::new(ops)),
                TxnOutcome::Applied { .. }
            ));
            index += 1;
        };
        step(
            &store,
            &|t| {
                t.node_id = if t.id.as_str() < "t2" { "n1" } else { "n2" }.into();
                t.status.state = TaskState::Assigned;
            },
            &["t0", "t1", "t2", "t3"],
        );
        check("assigned");
        store.view(|d| {
            assert_eq!(d.unplaced.len(), 2);
            let n1 = &d.usage["n1"];
            assert_eq!((n1.tasks, n1.reserved_memory), (2, 200));
            assert_eq!(
                n1.by_service,
                BTreeMap::from([("a".into(), 1), ("b".into(), 1)])
            );
        });
        step(&store, &|t| t.status.state = TaskState::Running, &["t0"]);
        step(&store, &|t| t.status.state = TaskState::Failed, &["t1"]);
        step(&store, &|t| t.desired_state = TaskState::Shutdown, &["t2"]);
        check("ran, failed, stopped");
        store.view(|d| {
            assert_eq!(d.usage["n1"].tasks, 1);
            assert_eq!(d.usage["n2"].tasks, 1);
        });
        // Status deltas move the same indexes: t4 placed on n1 by the scheduler's delta (a
        // placement taken back with its refused transaction leaves no trace), then running
        // and complete by status alone.
        let place = |node: &str| Op::Place {
            id: "t4".into(),
            version: store.view(|d| d.tasks["t4"].version),
            status: status(TaskState::Assigned),
            node_id: node.into(),
        };
        let before = store.view(|d| d.clone());
        let refused = Txn::new(vec![
            place("n1"),
            Op::Delete {
                kind: Kind::Task,
                id: "nope".into(),
            },
        ]);
        assert!(matches!(
            store.apply(index, &refused),
            TxnOutcome::Refused(TxnError::NotFound { .. })
        ));
        index += 1;
        assert!(
            store.view(|d| *d == before),
            "the placement was not taken back"
        );
        check("placement taken back");
        assert!(matches!(
            store.apply(index, &Txn::new(vec![place("n1")])),
            TxnOutcome::Applied { .. }
        ));
        index += 1;
        check("t4 placed by its status delta");
        assert_eq!(store.view(|d| d.tasks["t4"].node_id.clone()), "n1");
        // Placed once: not again, elsewhere or on the same node.
        for node in ["n2", "n1"] {
            assert!(matches!(
                store.apply(index, &Txn::new(vec![place(node)])),
                TxnOutcome::Refused(TxnError::Placed { .. })
            ));
            index += 1;
        }
        for state in [TaskState::Running, TaskState::Complete] {
            let version = store.view(|d| d.tasks["t4"].version);
            let txn = Txn::new(vec![Op::TaskStatus {
                id: "t4".into(),
                version,
                status: status(state),
            }]);
            assert!(matches!(
                store.apply(index, &txn),
                TxnOutcome::Applied { .. }
            ));
            index += 1;
            check(&format!("t4 {state:?} by status"));
            assert_eq!(
                store.view(|d| d.usage["n1"].tasks),
                1 + usize::from(state == TaskState::Running)
            );
        }
        store.apply(
            index,
            &Txn::new(vec![Op::Delete {
                kind: Kind::Task,
                id: "t3".into(),
            }]),
        );
        check("deleted");
        assert!(store.view(|d| !d.usage.contains_key("n2")));
    }

    /// An event says which nodes' tasks it touched (before or after the change) and the
    /// kinds it holds, so that a node's session looks itself up instead of scanning.
    #[test]
    fn an_event_indexes_the_nodes_its_tasks_are_on() {
        let store = Store::new();
        let mut rx = store.watch();
        store.apply(
            1,
            &Txn::new(vec![
                Op::Create(Object::Task(plain_task("t1", "s", "", TaskState::New))),
                Op::Create(Object::Task(plain_task(
                    "t2",
                    "s",
                    "n1",
                    TaskState::Assigned,
                ))),
                Op::Create(Object::Node(ready_node("n1"))),
                Op::Create(Object::Node(ready_node("n2"))),
            ]),
        );
        let ev = rx.try_recv().expect("event");
        assert_eq!(ev.touched.node_tasks("n1"), &[1]);
        assert!(ev.touched.node_tasks("").is_empty());
        assert!(ev.touched.has(Kind::Task) && ev.touched.has(Kind::Node));
        assert!(!ev.touched.has(Kind::Secret) && !ev.touched.task_networks());
        // In a batch, positions count across its transactions; a deleted task counts for the
        // node it was on.
        let t1 = store.view(|d| {
            let mut t = d.tasks["t1"].clone();
            t.node_id = "n2".into();
            t.status.state = TaskState::Assigned;
            t
        });
        store.apply(
            2,
            &Txn::batch(vec![
                Txn::new(vec![Op::Update(Object::Task(t1))]),
                Txn::new(vec![Op::Delete {
                    kind: Kind::Task,
                    id: "t2".into(),
                }]),
            ]),
        );
        let ev = rx.try_recv().expect("event");
        assert_eq!(ev.touched.node_tasks("n2"), &[0]);
        assert_eq!(ev.touched.node_tasks("n1"), &[1]);
        assert!(!ev.touched.has(Kind::Node));
    }

    fn task_on(id: &str, node: &str, net: &str, addr: Ipv4Addr) -> Task {
        Task {
            id: id.into(),
            version: 0,
            service_id: "svc".into(),
            service_name: "svc".into(),
            slot: 1,
            node_id: node.into(),
            spec: Arc::default(),
            spec_version: 1,
            desired_state: TaskState::Running,
            status: TaskStatus::default(),
            created_at_ms: 0,
            restart_count: 0,
            networks: vec![TaskNetwork {
                network_id: net.into(),
                network_name: net.into(),
                vni: 4097,
                subnet: "10.0.1.0/24".into(),
                gateway: Ipv4Addr::new(10, 0, 1, 1),
                addr,
                internal: false,
                ingress: false,
                aliases: vec![],
            }],
            awaiting_addresses: false,
        }
    }

    #[test]
    fn an_address_has_one_holder() {
        let mut d = StoreData::default();
        let net = Network {
            id: "n".into(),
            version: 0,
            spec: NetworkSpec::default(),
            vni: 4097,
            subnet: "10.0.1.0/24".into(),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        d.apply_txn(1, &Txn::new(vec![Op::Create(Object::Network(net))]))
            .unwrap();
        let a = Ipv4Addr::new(10, 0, 1, 7);
        d.apply_txn(
            2,
            &Txn::new(vec![Op::Create(Object::Task(task_on("t1", "", "n", a)))]),
        )
        .unwrap();
        // A stale writer giving the same address to another task is refused.
        let e = d
            .apply_txn(
                3,
                &Txn::new(vec![Op::Create(Object::Task(task_on("t2", "", "n", a)))]),
            )
            .unwrap_err();
        assert!(matches!(e, TxnError::AddressInUse { .. }), "{e}");
        // So is the gateway.
        let gw = task_on("t3", "", "n", Ipv4Addr::new(10, 0, 1, 1));
        assert!(d
            .apply_txn(3, &Txn::new(vec![Op::Create(Object::Task(gw))]))
            .is_err());
        // Nor may a service take it as its VIP.
        let mut vips = BTreeMap::new();
        vips.insert("n".to_string(), a);
        let svc = Service {
            id: "s".into(),
            version: 0,
            spec: ServiceSpec {
                name: "s".into(),
                labels: Default::default(),
                mode: proto::spec::ServiceMode::Global,
                task: TaskSpec::default(),
                update: Default::default(),
                rollback: Default::default(),
                endpoint: Default::default(),
            },
            spec_version: 1,
            previous_spec: None,
            update_status: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            endpoint: ServiceEndpoint {
                vips,
                ports: vec![],
            },
        };
        assert!(d
            .apply_txn(
                3,
                &Txn::new(vec![Op::Create(Object::Service(Box::new(svc.clone())))])
            )
            .is_err());
        // Once the task has ended the address is free again.
        let mut t1 = d.tasks["t1"].clone();
        t1.status.state = TaskState::Shutdown;
        d.apply_txn(4, &Txn::new(vec![Op::Update(Object::Task(t1))]))
            .unwrap();
        assert_eq!(d.addr_holder("n", a), None);
        d.apply_txn(
            5,
            &Txn::new(vec![Op::Create(Object::Service(Box::new(svc)))]),
        )
        .unwrap();
        assert_eq!(d.addr_holder("n", a), Some(&Holder::Service("s".into())));
        // A refused transaction leaves the index as it was (undo goes through put/delete).
        let e = d.apply_txn(
            6,
            &Txn::new(vec![
                Op::Delete {
                    kind: Kind::Service,
                    id: "s".into(),
                },
                Op::Create(Object::Task(task_on("t4", "", "n", a))),
                Op::Create(Object::Node(node("x", "h"))),
                Op::Create(Object::Node(node("x", "h"))),
            ]),
        );
        assert!(e.is_err());
        assert_eq!(d.addr_holder("n", a), Some(&Holder::Service("s".into())));
        // A refused removal of the network keeps its holders indexed.
        let e = d.apply_txn(
            7,
            &Txn::new(vec![
                Op::Delete {
                    kind: Kind::Network,
                    id: "n".into(),
                },
                Op::Create(Object::Node(node("x", "h"))),
                Op::Create(Object::Node(node("x", "h"))),
            ]),
        );
        assert!(e.is_err());
        assert_eq!(d.addr_holder("n", a), Some(&Holder::Service("s".into())));
        // Indexes come back after a snapshot.
        let mut copy: StoreData =
            serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        copy.rebuild_indexes();
        assert_eq!(copy.addrs, d.addrs);
    }

    #[test]
    fn networks_never_overlap_even_from_stale_writers() {
        let net = |id: &str, name: &str, vni: u32, subnet: &str| Network {
            id: id.into(),
            version: 0,
            spec: NetworkSpec {
                name: name.into(),
                ..Default::default()
            },
            vni,
            subnet: subnet.into(),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let mut d = StoreData::default();
        let create = |n: Network| Txn::new(vec![Op::Create(Object::Network(n))]);
        d.apply_txn(1, &create(net("a", "a", 4097, "10.0.1.0/24")))
            .unwrap();
        for bad in [
            net("b", "b", 4098, "10.0.1.0/25"),
            net("b", "b", 4097, "10.0.2.0/24"),
            net("b", "a", 4098, "10.0.2.0/24"),
        ] {
            let e = d.apply_txn(2, &create(bad)).unwrap_err();
            assert!(matches!(e, TxnError::NetworkClash { .. }), "{e}");
        }
        d.apply_txn(2, &create(net("b", "b", 4098, "10.0.2.0/24")))
            .unwrap();
    }

    #[test]
    fn old_snapshots_load() {
        // A store written before networks existed: no networks table, no new fields.
        let mut d = StoreData::default();
        d.apply_txn(1, &Txn::new(vec![Op::Create(Object::Node(node("a", "h")))]))
            .unwrap();
        let mut v = serde_json::to_value(&d).unwrap();
        v.as_object_mut().unwrap().remove("networks");
        v["nodes"]["a"]
            .as_object_mut()
            .unwrap()
            .remove("ingress_addr");
        let back: StoreData = serde_json::from_value(v).unwrap();
        assert!(back.networks.is_empty());
        assert_eq!(back.nodes["a"].ingress_addr, None);
        let c: Cluster = serde_json::from_str(
            r#"{"id":"c","version":1,"created_at_ms":0,"root_ca":{"cert_pem":"","key_pem":""},
                "worker_token":"","manager_token":"","heartbeat_period_ms":1,
                "cert_expiry_ms":1,"removed_nodes":[]}"#,
        )
        .unwrap();
        assert_eq!(c.default_addr_pool, vec!["10.0.0.0/8".to_string()]);
        assert_eq!(c.default_addr_pool_mask_len, 24);
    }

    #[test]
    fn tasks_of_a_service_share_one_copy_of_their_spec() {
        // Each task arrives with its own copy (as deserialised from the raft log); the
        // store keeps one per spec, also after a snapshot is loaded.
        let spec = |image: &str| {
            Arc::new(TaskSpec {
                image: image.into(),
                env: vec!["A=1".into()],
                ..Default::default()
            })
        };
        let mut d = StoreData::default();
        let put = |d: &mut StoreData, id: &str, image: &str| {
            let mut t = task_on(id, "n", "net", Ipv4Addr::new(10, 0, 1, 2));
            t.networks.clear();
            t.spec = spec(image);
            d.apply_txn(1, &Txn::new(vec![Op::Create(Object::Task(t))]))
                .unwrap();
        };
        put(&mut d, "t1", "web:v1");
        put(&mut d, "t2", "web:v1");
        put(&mut d, "t3", "web:v2");
        assert!(Arc::ptr_eq(&d.tasks["t1"].spec, &d.tasks["t2"].spec));
        assert!(!Arc::ptr_eq(&d.tasks["t1"].spec, &d.tasks["t3"].spec));
        assert_eq!(d.tasks["t3"].spec.image, "web:v2");

        // An update of a task (its status, from the worker) keeps sharing.
        let mut t2 = d.tasks["t2"].clone();
        t2.spec = spec("web:v1");
        t2.status.state = TaskState::Running;
        d.apply_txn(2, &Txn::new(vec![Op::Update(Object::Task(t2))]))
            .unwrap();
        assert!(Arc::ptr_eq(&d.tasks["t1"].spec, &d.tasks["t2"].spec));

        let mut back: StoreData =
            serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert!(!Arc::ptr_eq(&back.tasks["t1"].spec, &back.tasks["t2"].spec));
        back.rebuild_indexes();
        assert!(Arc::ptr_eq(&back.tasks["t1"].spec, &back.tasks["t2"].spec));
        assert_eq!(back, d);
    }
}
#[cfg(test)]
mod schema_tests {
    use super::*;

    /// A log entry as schema 1 (before shared specs and versioned databases) wrote it.
    const V1_ENTRY: &str = r#"{"ops":[{"Create":{"Task":{"id":"t1","version":0,"service_id":"svc","service_name":"web","slot":1,"node_id":"n1","spec":{"image":"busybox:latest","command":["sleep","1d"],"args":[],"env":[],"resources":{"reserve_nano_cpus":0,"reserve_memory":0,"limit_nano_cpus":0,"limit_memory":0,"limit_pids":0},"restart":{"condition":"any","delay_ms":5000,"max_attempts":0,"window_ms":0},"placement":{"constraints":[],"preferences":[],"max_replicas":0},"stop_grace_period_ms":0,"stop_signal":"","force_update":0,"hostname":"","user":"","workdir":"","mounts":[],"secrets":[],"configs":[],"healthcheck":null,"networks":[],"dns":{"nameservers":[],"search":[],"options":[]}},"spec_version":1,"desired_state":"running","status":{"state":"new","message":"","err":"","exit_code":null,"timestamp_ms":0},"created_at_ms":1,"restart_count":0,"networks":[],"awaiting_addresses":false}}}]}"#;

    #[test]
    fn log_entries_of_the_previous_schema_apply() {
        let txn: Txn = serde_json::from_str(V1_ENTRY).unwrap();
        let mut d = StoreData::default();
        d.apply_txn(3, &txn).unwrap();
        let t = &d.tasks["t1"];
        assert_eq!(t.spec.image, "busybox:latest");
        assert_eq!(t.spec.command, vec!["sleep".to_string(), "1d".to_string()]);
        assert_eq!(t.version, 3);
        // Written back, it reads the same (the format of entries is unchanged).
        let again: Txn = serde_json::from_str(&serde_json::to_string(&txn).unwrap()).unwrap();
        assert_eq!(again, txn);
    }
}
