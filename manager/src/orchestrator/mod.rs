//! Orchestration: make the tasks in the store match the services' specs.
//!
//! ```text
//!   store view ──▶ Plan (working copy) ──▶ replicated │ global │ jobs   (slots, restarts)
//!                                     ──▶ updater                        (rolling update)
//!                                     ──▶ reaper                         (history limit)
//!              ◀── ops, ≤ 200 per transaction ◀──┘
//! ```
//!
//! Every part is a pure function of the store view and the time, adding its decisions to one
//! [`Plan`], so that two parts deciding about the same task see each other's decision and the
//! transaction written is consistent. The loop that applies the plan runs on the leader only.

pub mod global;
pub mod reaper;
pub mod rebalance;
pub mod replicated;
pub mod restart;
pub mod updater;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use proto::security::random_id;
use proto::spec::{TaskSpec, TaskState, TaskStatus};
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::store::{
    Change, ClusterLimits, Kind, Node, NodeState, Object, Op, ProposeError, Service, Store,
    StoreData, Task, Txn, TxnError,
};

/// Most operations in one raft entry (swarmkit batches the same way).
pub const MAX_OPS_PER_TXN: usize = 200;

/// Most tasks one orchestration round creates in a small cluster: a large service is brought
/// up over several rounds, so a round's memory and transactions stay bounded whatever the
/// spec asks. Each round reads the whole service, so a fixed bound would read a new service
/// of N tasks N / bound times (1,000,000 tasks: 200 reads of up to 1,000,000); the budget
/// therefore grows with the tasks the store already holds ([`creates_per_round`]), and
/// bringing up N tasks reads O(N) tasks in all.
pub const MAX_CREATES_PER_ROUND: usize = 5000;

/// A round's budget of new tasks: [`MAX_CREATES_PER_ROUND`], or a quarter of the tasks the
/// store holds when that is more (a round then costs at most a quarter more memory than the
/// store already takes, and each round grows the service by a quarter).
pub fn creates_per_round(tasks_in_store: usize) -> usize {
    MAX_CREATES_PER_ROUND.max(tasks_in_store / 4)
}

/// Decisions of one orchestration round, over a working copy of the tasks it touched.
pub struct Plan<'a> {
    pub data: &'a StoreData,
    pub now_ms: i64,
    updated: BTreeMap<String, Task>,
    created: BTreeMap<String, Task>,
    deleted: BTreeSet<String>,
    services: BTreeMap<String, Service>,
    /// Addresses given to tasks created in this plan (not yet in the store).
    taken: BTreeSet<(String, Ipv4Addr)>,
    /// Tasks this round may still create ([`creates_per_round`]).
    creates_left: usize,
    /// Tasks the cluster may still gain before reaching its `max_tasks` limit; counted at
    /// the first new task (a round that creates none does not count the cluster's tasks).
    room_left: Option<u64>,
    pub limits: ClusterLimits,
    /// The spec given to the tasks created for each service, with its spec version.
    specs: BTreeMap<String, (u64, Arc<TaskSpec>)>,
    /// Services to plan again at a time, whatever happens meanwhile ([`Plan::wake`]).
    wakes: BTreeMap<String, i64>,
}

impl<'a> Plan<'a> {
    pub fn new(data: &'a StoreData, now_ms: i64) -> Plan<'a> {
        let limits = data.cluster.as_ref().map(|c| c.limits).unwrap_or_default();
        Plan {
            data,
            now_ms,
            updated: BTreeMap::new(),
            created: BTreeMap::new(),
            deleted: BTreeSet::new(),
            services: BTreeMap::new(),
            taken: BTreeSet::new(),
            creates_left: creates_per_round(data.tasks.len()),
            room_left: None,
            limits,
            specs: BTreeMap::new(),
            wakes: BTreeMap::new(),
        }
    }

    /// Reserve room for one task that adds to the cluster's count (a new replica, a global
    /// task on a new node), within `max_tasks`. Replacements of ended tasks need none.
    pub fn room_for_new_task(&mut self) -> bool {
        if self.creates_left == 0 {
            return false;
        }
        let data = self.data;
        let max_tasks = self.limits.max_tasks;
        let room = self.room_left.get_or_insert_with(|| {
            let runnable = data.tasks.values().filter(|t| is_runnable(t)).count() as u64;
            max_tasks.saturating_sub(runnable)
        });
        if *room == 0 {
            return false;
        }
        *room -= 1;
        true
    }

    /// Plan `service_id` again at `at_ms` (a restart delay ends then).
    pub fn wake(&mut self, service_id: &str, at_ms: i64) {
        let e = self.wakes.entry(service_id.to_string()).or_insert(at_ms);
        *e = (*e).min(at_ms);
    }

    /// The tasks of a service as this plan leaves them (store + decisions so far).
    pub fn service_tasks(&self, service_id: &str) -> Vec<Task> {
        let mut out: Vec<Task> = self
            .data
            .service_tasks(service_id)
            .filter(|t| !self.deleted.contains(&t.id))
            .map(|t| self.updated.get(&t.id).unwrap_or(t).clone())
            .collect();
        out.extend(
            self.created
                .values()
                .filter(|t| t.service_id == service_id)
                .cloned(),
        );
        out
    }

    /// As [`Plan::service_tasks`], borrowing the tasks this plan has not changed: a round
    /// over a large service copies only what it decides about.
    pub fn service_tasks_ref(&self, service_id: &str) -> Vec<Cow<'a, Task>> {
        let data: &'a StoreData = self.data;
        let mut out: Vec<Cow<'a, Task>> = data
            .service_tasks(service_id)
            .filter(|t| !self.deleted.contains(&t.id))
            .map(|t| match self.updated.get(&t.id) {
                Some(u) => Cow::Owned(u.clone()),
                None => Cow::Borrowed(t),
            })
            .collect();
        out.extend(
            self.created
                .values()
                .filter(|t| t.service_id == service_id)
                .map(|t| Cow::Owned(t.clone())),
        );
        out
    }

    /// Whether a task of the service, as this plan leaves it, satisfies `f` (without copying
    /// the service's tasks, as [`Plan::service_tasks`] does).
    pub fn any_service_task(&self, service_id: &str, f: impl Fn(&Task) -> bool) -> bool {
        self.data
            .service_tasks(service_id)
            .filter(|t| !self.deleted.contains(&t.id))
            .map(|t| self.updated.get(&t.id).unwrap_or(t))
            .chain(self.created.values().filter(|t| t.service_id == service_id))
            .any(f)
    }

    pub fn service(&self, id: &str) -> Option<Service> {
        self.services
            .get(id)
            .or_else(|| self.data.services.get(id))
            .cloned()
    }

    pub fn update_service(&mut self, s: Service) {
        self.services.insert(s.id.clone(), s);
    }

    pub fn update_task(&mut self, t: Task) {
        if self.created.contains_key(&t.id) {
            self.created.insert(t.id.clone(), t);
        } else {
            self.updated.insert(t.id.clone(), t);
        }
    }

    /// Desired state only moves forward.
    pub fn set_desired(&mut self, t: &Task, desired: TaskState) {
        if t.desired_state < desired {
            let mut t = t.clone();
            t.desired_state = desired;
            self.update_task(t);
        }
    }

    pub fn delete_task(&mut self, id: &str) {
        if self.created.remove(id).is_none() {
            self.updated.remove(id);
            self.deleted.insert(id.to_string());
        }
    }

    /// One copy of a service's task spec for all the tasks this round creates.
    fn shared_spec(&mut self, service: &Service) -> Arc<TaskSpec> {
        match self.specs.get(&service.id) {
            Some((version, spec)) if *version == service.spec_version => spec.clone(),
            _ => {
                let spec = Arc::new(service.spec.task.clone());
                self.specs
                    .insert(service.id.clone(), (service.spec_version, spec.clone()));
                spec
            }
        }
    }

    /// A new task of `service` for `slot` (replicated) or `node` (global); `None` once this
    /// round has created its budget ([`creates_per_round`]) tasks (the next round goes on).
    pub fn create_task(
        &mut self,
        service: &Service,
        slot: u64,
        node_id: &str,
        restart_count: u64,
    ) -> Option<Task> {
        if self.creates_left == 0 {
            return None;
        }
        self.creates_left -= 1;
        let id = random_id(25);
        let (networks, status) =
            match crate::allocator::task_networks(self.data, &service.spec, &id, &mut self.taken) {
                Ok(networks) => (networks, created_status(self.now_ms)),
                Err(e) => (Vec::new(), awaiting_status(&e, self.now_ms)),
            };
        let awaiting_addresses = status.state == TaskState::Pending;
        let t = Task {
            id,
            version: 0,
            service_id: service.id.clone(),
            service_name: service.spec.name.clone(),
            slot,
            node_id: node_id.to_string(),
            spec: self.shared_spec(service),
            spec_version: service.spec_version,
            desired_state: TaskState::Running,
            status,
            created_at_ms: self.now_ms,
            restart_count,
            networks,
            awaiting_addresses,
        };
        self.created.insert(t.id.clone(), t.clone());
        Some(t)
    }

    /// Tasks created while a network of theirs was full try again: once every network has an
    /// address for them they go to the scheduler (still PENDING: a state never goes back). A
    /// task the updater or a scale-down already ended is left alone.
    pub fn allocate_waiting(&mut self) {
        let data = self.data;
        let waiting: Vec<Task> = data
            .awaiting
            .iter()
            .filter_map(|id| data.tasks.get(id))
            .filter(|t| !self.deleted.contains(&t.id))
            .map(|t| self.updated.get(&t.id).unwrap_or(t))
            .filter(|t| t.awaiting_addresses && is_runnable(t))
            .cloned()
            .collect();
        for mut t in waiting {
            let Some(service) = self.service(&t.service_id) else {
                continue;
            };
            match crate::allocator::task_networks(self.data, &service.spec, &t.id, &mut self.taken)
            {
                Ok(networks) => {
                    t.networks = networks;
                    t.awaiting_addresses = false;
                    t.status.message = ALLOCATED_MESSAGE.into();
                    t.status.timestamp_ms = self.now_ms;
                    self.update_task(t);
                }
                Err(e) => {
                    let status = awaiting_status(&e, self.now_ms);
                    if t.status.message != status.message {
                        t.status = status;
                        self.update_task(t);
                    }
                }
            }
        }
    }

    pub fn node(&self, id: &str) -> Option<&'a Node> {
        self.data.nodes.get(id)
    }

    pub fn is_empty(&self) -> bool {
        self.updated.is_empty()
            && self.created.is_empty()
            && self.deleted.is_empty()
            && self.services.is_empty()
    }

    /// The plan as store operations (services first, then tasks).
    pub fn into_ops(self) -> Vec<Op> {
        let mut ops = Vec::new();
        for s in self.services.into_values() {
            ops.push(Op::Update(Object::Service(Box::new(s))));
        }
        // Every task a round creates runs its service's current spec (create_task): the
        // entry carries the task without it.
        for t in self.created.into_values() {
            ops.push(Op::CreateTask(t.into()));
        }
        for t in self.updated.into_values() {
            ops.push(Op::Update(Object::Task(t)));
        }
        for id in self.deleted {
            ops.push(Op::Delete {
                kind: Kind::Task,
                id,
            });
        }
        ops
    }
}

/// A task that waited for an address got its addresses (Swarm's words for the same step).
pub const ALLOCATED_MESSAGE: &str = "pending task scheduling";

fn created_status(now_ms: i64) -> TaskStatus {
    TaskStatus {
        state: TaskState::New,
        message: "created".into(),
        err: String::new(),
        exit_code: None,
        timestamp_ms: now_ms,
    }
}

/// PENDING with the allocator's reason, which `service ps` shows in its ERROR column.
fn awaiting_status(e: &crate::allocator::AllocError, now_ms: i64) -> TaskStatus {
    TaskStatus {
        state: TaskState::Pending,
        message: e.to_string(),
        err: String::new(),
        exit_code: None,
        timestamp_ms: now_ms,
    }
}

/// A task that is meant to run (desired RUNNING) and has not ended.
pub fn is_runnable(t: &Task) -> bool {
    t.desired_state <= TaskState::Running && !t.status.state.is_terminal()
}

/// Why a task that should run no longer can, if it cannot.
pub fn death(t: &Task, data: &StoreData) -> Option<Death> {
    if t.desired_state > TaskState::Running {
        return None;
    }
    if t.status.state.is_terminal() {
        return Some(match t.status.state {
            TaskState::Complete => Death::Completed,
            _ => Death::Failed,
        });
    }
    if !t.node_id.is_empty() && t.status.state >= TaskState::Assigned {
        match data.nodes.get(&t.node_id) {
            None => return Some(Death::NodeGone),
            Some(n) if n.state == NodeState::Down => return Some(Death::NodeGone),
            Some(n) if n.availability == crate::store::Availability::Drain => {
                return Some(Death::NodeGone)
            }
            // The constraint enforcer: the node no longer satisfies the task's constraints
            // (a label was removed, a manager demoted).
            Some(n)
                if !t.spec.placement.constraints.is_empty()
                    && !crate::scheduler::constraint::parse_all(&t.spec.placement.constraints)
                        .is_ok_and(|cs| cs.iter().all(|c| c.matches(n))) =>
            {
                return Some(Death::NodeGone)
            }
            _ => {}
        }
    }
    None
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Death {
    Completed,
    Failed,
    /// Its node is down, drained or removed: replace it elsewhere at once.
    NodeGone,
}

/// The services a round plans: those whose tasks, spec or nodes changed since the last round
/// (from the store's change stream), or all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    all: bool,
    services: BTreeSet<String>,
    /// Services whose tasks only made progress (a placement, a status short of an end):
    /// planned only when that can matter to them (a rolling update watches its tasks come
    /// up). Re-planning a service of 100,000 tasks on each of their status reports made
    /// the rounds quadratic in the service's size.
    progressed: BTreeSet<String>,
    /// Nodes that changed: the services with tasks on them, and every global service.
    nodes: BTreeSet<String>,
    /// Tasks were deleted: their addresses may go to tasks waiting for one.
    tasks_gone: bool,
}

impl Dirty {
    pub fn all() -> Dirty {
        Dirty {
            all: true,
            ..Dirty::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.all
            && !self.tasks_gone
            && self.services.is_empty()
            && self.nodes.is_empty()
            && self.progressed.is_empty()
    }

    /// Add what `other` marks.
    pub fn merge(&mut self, other: Dirty) {
        if self.all {
            return;
        }
        if other.all {
            *self = other;
            return;
        }
        self.services.extend(other.services);
        self.progressed.extend(other.progressed);
        self.nodes.extend(other.nodes);
        self.tasks_gone |= other.tasks_gone;
    }

    pub fn service(&mut self, id: &str) {
        if !self.all {
            self.services.insert(id.to_string());
        }
    }

    /// Note what a committed change makes worth planning again.
    pub fn note(&mut self, change: &Change) {
        if self.all {
            return;
        }
        match change {
            Change::Put(Object::Task(t)) if progress_only(t) => {
                if !self.services.contains(&t.service_id) {
                    self.progressed.insert(t.service_id.clone());
                }
            }
            Change::Put(Object::Task(t)) => self.service(&t.service_id),
            Change::Put(Object::Service(s)) => self.service(&s.id),
            Change::Deleted {
                kind: Kind::Service,
                id,
            } => self.service(id),
            Change::Put(Object::Node(n)) => {
                self.nodes.insert(n.id.clone());
            }
            Change::Deleted {
                kind: Kind::Node,
                id,
            } => {
                self.nodes.insert(id.clone());
            }
            // Only the orchestrator deletes tasks, and a deleted task frees its addresses
            // for tasks waiting for one ([`Plan::allocate_waiting`] runs every round).
            Change::Deleted {
                kind: Kind::Task, ..
            } => self.tasks_gone = true,
            // Cluster limits, networks, secrets, configs: rare, and they can concern any
            // service.
            _ => self.all = true,
        }
    }

    /// The service ids to plan, in order: services that exist and ids of deleted services
    /// whose tasks remain.
    fn resolve(&self, data: &StoreData) -> BTreeSet<String> {
        if self.all {
            return data
                .services
                .keys()
                .chain(data.tasks_by_service.keys())
                .cloned()
                .collect();
        }
        let mut ids = self.services.clone();
        let rebalancing = data.cluster.as_ref().is_some_and(|c| c.rebalance_on_join);
        ids.extend(
            self.progressed
                .iter()
                .filter(|id| match data.services.get(*id) {
                    // Rebalancing waits for every task to run; an update, for each batch.
                    Some(s) => {
                        rebalancing
                            || s.update_status
                                .as_ref()
                                .is_some_and(|u| u.state.in_progress())
                    }
                    // A removed service's tasks are reaped as they go.
                    None => true,
                })
                .cloned(),
        );
        if !self.nodes.is_empty() {
            for n in &self.nodes {
                ids.extend(data.node_tasks(n).map(|t| t.service_id.clone()));
            }
            ids.extend(
                data.services
                    .values()
                    .filter(|s| {
                        matches!(
                            s.spec.mode,
                            proto::spec::ServiceMode::Global | proto::spec::ServiceMode::GlobalJob
                        )
                    })
                    .map(|s| s.id.clone()),
            );
        }
        ids
    }
}

/// Whether a task change is only progress that a round of its service would not act on:
/// it has not ended and is still meant to run. (A task that ended, or that the
/// orchestrator told to stop, is a decision to take; a node going away is noted from the
/// node's own change.)
fn progress_only(t: &Task) -> bool {
    !t.status.state.is_terminal() && t.desired_state <= TaskState::Running
}

/// What a round decided: the operations to write, and when services want planning again
/// whatever happens (restart delays).
#[derive(Debug, Default)]
pub struct Round {
    pub ops: Vec<Op>,
    pub wakes: BTreeMap<String, i64>,
    /// The round stopped at its budget of new tasks ([`creates_per_round`]): these
    /// services want the next round at once (their new tasks are progress only).
    pub more: BTreeSet<String>,
}

/// One orchestration round over every service: every part, in order.
pub fn plan(data: &StoreData, now_ms: i64) -> Vec<Op> {
    plan_dirty(data, now_ms, &Dirty::all()).ops
}

/// One orchestration round over the `dirty` services.
pub fn plan_dirty(data: &StoreData, now_ms: i64, dirty: &Dirty) -> Round {
    let mut p = Plan::new(data, now_ms);
    p.allocate_waiting();
    let ids = dirty.resolve(data);
    for s in ids.iter().filter_map(|id| data.services.get(id)) {
        updater::promote(&mut p, &s.id);
        updater::plan(&mut p, &s.id);
        match s.spec.mode {
            proto::spec::ServiceMode::Replicated { .. }
            | proto::spec::ServiceMode::ReplicatedJob { .. } => {
                replicated::plan(&mut p, &s.id);
                rebalance::plan(&mut p, &s.id);
            }
            proto::spec::ServiceMode::Global | proto::spec::ServiceMode::GlobalJob => {
                global::plan(&mut p, &s.id)
            }
        }
    }
    reaper::plan(&mut p, &ids);
    // Nodes' ingress addresses go in the same transaction as new tasks' ones: not the same.
    let nodes = crate::allocator::node_ingress_ops(data, &mut p.taken);
    let wakes = std::mem::take(&mut p.wakes);
    let more = if p.creates_left == 0 {
        ids
    } else {
        BTreeSet::new()
    };
    let mut ops = p.into_ops();
    ops.extend(nodes);
    Round { ops, wakes, more }
}

/// How often the time-driven work is looked at: restart delays that end, rolling updates'
/// delays, monitor periods and deadlines.
const TICK: Duration = Duration::from_millis(500);
/// How long a change waits for the ones that follow it before planning (a burst lands in
/// one round). Each step of a rolling update waits for it twice (the old task stopped, the
/// new one running).
const ABSORB: Duration = Duration::from_millis(3);
/// Every service is planned again this often, whatever the change stream said (a safety net,
/// as a controller's periodic resync).
const RESYNC: Duration = Duration::from_secs(10);
/// ... or, when a full round takes long, this many times its length.
const RESYNC_SHARE: u32 = 50;
/// Waits after a refused write before planning again, doubling up to the last.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The orchestrator: reads the store, writes through it, takes its time from the clock.
pub struct Orchestrator {
    store: Store,
    clock: SharedClock,
}

impl Orchestrator {
    pub fn new(store: Store, clock: SharedClock) -> Orchestrator {
        Orchestrator { store, clock }
    }

    /// Leader-only loop: plan the services the committed changes concern (debounced), those
    /// whose timers are due and those in a rolling update every [`TICK`], and all of them
    /// every [`RESYNC`]; after a refused write, back off and plan again.
    pub async fn run(self, cancel: CancellationToken) {
        // Folded rather than broadcast: a round over a large store outlasts any buffer of
        // events, and a watcher that lost some would have to plan everything again (which
        // took longer still, so that it lost more: every round was a full one).
        let changes = self.store.watch_folded(Dirty::note);
        let mut dirty = Dirty::all();
        let mut timers: BTreeMap<String, i64> = BTreeMap::new();
        let mut backoff = BACKOFF_MIN;
        let mut last_resync = tokio::time::Instant::now();
        let mut resync_every = RESYNC;
        let mut next_tick = tokio::time::Instant::now() + TICK;
        loop {
            if last_resync.elapsed() >= resync_every {
                dirty = Dirty::all();
                last_resync = tokio::time::Instant::now();
            }
            if !dirty.is_empty() {
                let now = self.clock.now_ms();
                let started = tokio::time::Instant::now();
                let round = self.store.view_long(|d| plan_dirty(d, now, &dirty));
                if dirty.all {
                    // The safety net costs at most a fiftieth of the time, however large the
                    // store: a full round over a million tasks takes about a second.
                    resync_every = RESYNC.max(started.elapsed().saturating_mul(RESYNC_SHARE));
                }
                for (id, at) in round.wakes {
                    let e = timers.entry(id).or_insert(at);
                    *e = (*e).min(at);
                }
                match self.write(&round.ops, &cancel).await {
                    Written::All => {
                        dirty = Dirty::default();
                        for id in &round.more {
                            dirty.service(id);
                        }
                        backoff = BACKOFF_MIN;
                    }
                    Written::Refused => {
                        // Someone wrote meanwhile: plan the same services again from the new
                        // state, after a pause that grows while writes keep being refused.
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                    Written::Stop => return,
                }
            }
            // A timer due before the tick (a monitor period's end) is served on time.
            let wake_at = timers.values().min().map(|at| {
                let ms = at.saturating_sub(self.clock.now_ms()).max(0);
                tokio::time::Instant::now() + Duration::from_millis(ms as u64)
            });
            let sleep_to = wake_at.map_or(next_tick, |w| w.min(next_tick));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = changes.changed() => {
                    // A burst lands before planning.
                    tokio::time::sleep(ABSORB).await;
                    dirty.merge(changes.take());
                }
                _ = tokio::time::sleep_until(sleep_to) => {
                    let now = self.clock.now_ms();
                    timers.retain(|id, at| {
                        if *at <= now {
                            dirty.service(id);
                            false
                        } else {
                            true
                        }
                    });
                    if sleep_to < next_tick {
                        continue;
                    }
                    next_tick = tokio::time::Instant::now() + TICK;
                    self.store.view(|d| {
                        for s in d.services.values() {
                            if s.update_status.as_ref().is_some_and(|u| u.state.in_progress()) {
                                dirty.service(&s.id);
                            }
                        }
                    });
                }
            }
        }
    }

    /// Write a round's operations, [`MAX_OPS_PER_TXN`] at a time, a few transactions in
    /// flight together ([`Store::propose_each`]) rather than one commit each in turn.
    async fn write(&self, ops: &[Op], cancel: &CancellationToken) -> Written {
        if cancel.is_cancelled() {
            return Written::Stop;
        }
        let results = self
            .store
            .propose_each(
                ops.chunks(MAX_OPS_PER_TXN)
                    .map(|c| Txn::new(c.to_vec()))
                    .collect::<Vec<_>>(),
            )
            .await;
        let mut written = Written::All;
        for r in results {
            match r {
                Ok(_) => {}
                Err(ProposeError::NotLeader) => return Written::Stop,
                Err(
                    e @ ProposeError::Refused(
                        TxnError::Conflict { .. }
                        | TxnError::NotFound { .. }
                        | TxnError::AddressInUse { .. },
                    ),
                ) => {
                    tracing::debug!(error = %e, "orchestrator write refused");
                    written = Written::Refused;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "orchestrator write failed");
                    written = Written::Refused;
                }
            }
        }
        if cancel.is_cancelled() {
            return Written::Stop;
        }
        written
    }
}

enum Written {
    All,
    Refused,
    Stop,
}

#[cfg(test)]
mod tests;
