//! Leader-only: gives each task that should run a node, as Swarm's scheduler does.
//!
//! ```text
//!   store.watch() ──20 ms quiet, ≤100 ms──┐
//!   every 1 s ────────────────────────────┴─▶ store.view(plan) ──Vec<Decision>──▶ propose
//!                                                                            (≤200 ops a txn)
//! ```
//!
//! A task needs scheduling while its desired state is RUNNING and it has not got past
//! PENDING. [`plan`] decides purely: the node filters of [`filter::PIPELINE`] pick the nodes
//! that can take it; among them the one with the fewest tasks of the service wins, then the
//! one with the fewest tasks overall, then the lowest id; `spread=node.labels.X` preferences
//! first balance the service across the label's values. A global task comes with its node and
//! is only checked against it. A task that fits nowhere stays PENDING with a message counting
//! the nodes turned away per reason, in the shape `docker service ps` shows:
//! `no suitable node (2 nodes not available for new tasks; 1 node lacks memory)`.
//!
//! [`run`] applies the decisions; it never writes past ASSIGNED (the worker takes it from
//! there) and re-plans from the store rather than retrying a refused write.

pub mod constraint;
pub mod filter;
mod plan;
#[cfg(test)]
mod tests;

use std::time::Duration;

use proto::spec::TaskState;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::store::{Change, Event, Kind, Object, Op, ProposeError, Store, StoreData, Txn};

pub use constraint::{Constraint, ConstraintError};
pub use plan::{needs_scheduling, plan};

/// After a change, wait this long for more before planning…
const QUIET: Duration = Duration::from_millis(5);
/// …but no longer than this in all.
const MAX_DELAY: Duration = Duration::from_millis(100);
/// Plan this often even without changes, in case a wake-up was missed.
const RESYNC: Duration = Duration::from_secs(1);
/// Keeps each Raft entry (and the time the store is locked applying it) small.
pub const MAX_OPS_PER_TXN: usize = 200;

pub const ASSIGNED_MESSAGE: &str = "scheduler assigned task to node";

/// What [`plan`] decided for one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Assign { task_id: String, node_id: String },
    Pending { task_id: String, message: String },
}

impl Decision {
    pub fn task_id(&self) -> &str {
        match self {
            Decision::Assign { task_id, .. } | Decision::Pending { task_id, .. } => task_id,
        }
    }
}

/// The node a decision assigns to ("" for a pending one).
fn decision_node(d: &Decision) -> &str {
    match d {
        Decision::Assign { node_id, .. } => node_id,
        Decision::Pending { .. } => "",
    }
}

/// The write that carries out a decision on the task as it is now, if it still applies: the
/// task may have been placed, stopped or removed since the plan read it.
pub fn decision_op(data: &StoreData, decision: &Decision, now_ms: i64) -> Option<Op> {
    let task = data.tasks.get(decision.task_id())?;
    if !needs_scheduling(task) {
        return None;
    }
    let mut status = task.status.clone();
    let mut node = None;
    match decision {
        Decision::Assign { node_id, .. } => {
            if !task.node_id.is_empty() && task.node_id != *node_id {
                return None;
            }
            node = (task.node_id != *node_id).then(|| node_id.clone());
            status.state = TaskState::Assigned;
            status.message = ASSIGNED_MESSAGE.to_string();
        }
        Decision::Pending { message, .. } => {
            if task.status.state == TaskState::Pending && task.status.message == *message {
                return None;
            }
            status.state = TaskState::Pending;
            status.message = message.clone();
        }
    }
    status.timestamp_ms = now_ms;
    // The status and the node only: the entry does not carry the whole task (and its spec).
    let (id, version) = (task.id.clone(), task.version);
    Some(match node {
        Some(node_id) => Op::Place {
            id,
            version,
            status,
            node_id,
        },
        None => Op::TaskStatus {
            id,
            version,
            status,
        },
    })
}

/// The scheduler: reads the store, writes through it, takes its time from the clock.
pub struct Scheduler {
    store: Store,
    clock: SharedClock,
}

impl Scheduler {
    pub fn new(store: Store, clock: SharedClock) -> Scheduler {
        Scheduler { store, clock }
    }

    /// Runs while this manager leads; returns when cancelled or when leadership is lost.
    pub async fn run(self, cancel: CancellationToken) {
        let mut events = self.store.watch();
        // Tasks may have waited through an election: plan at once.
        let mut next_pass = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = sleep_until(next_pass) => {}
                r = events.recv() => match r {
                    Ok(event) if !worth_planning(&event) => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        if !settle(&mut events, &cancel).await {
                            return;
                        }
                    }
                    Err(RecvError::Closed) => return,
                },
            }
            next_pass = Instant::now() + RESYNC;
            match self.schedule_once().await {
                Ok(Pass::Done) => {}
                // Something changed under the plan: plan again soon, from the new state.
                Ok(Pass::Stale) => next_pass = Instant::now() + MAX_DELAY,
                Err(ProposeError::NotLeader) => {
                    tracing::debug!("scheduler stopping: no longer the leader");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "scheduler could not write its decisions"),
            }
        }
    }

    async fn schedule_once(&self) -> Result<Pass, ProposeError> {
        let mut decisions = self.store.view_long(plan);
        // A node's tasks together: each entry then touches few nodes, and each node gets its
        // tasks of the round in one assignments message (and reports on them together),
        // where a spread over a thousand nodes made a message per task.
        decisions.sort_by(|a, b| decision_node(a).cmp(decision_node(b)));
        let now = self.clock.now_ms();
        // A few chunks in flight at once (queued in order) rather than one commit each.
        let chunks: Vec<(Vec<Op>, Vec<&Decision>)> = self.store.view(|data| {
            decisions
                .chunks(MAX_OPS_PER_TXN)
                .map(|chunk| {
                    chunk
                        .iter()
                        .filter_map(|d| decision_op(data, d, now).map(|op| (op, d)))
                        .unzip()
                })
                .filter(|(ops, _): &(Vec<Op>, Vec<&Decision>)| !ops.is_empty())
                .collect()
        });
        let (txns, done): (Vec<Txn>, Vec<Vec<&Decision>>) = chunks
            .into_iter()
            .map(|(ops, done)| (Txn::new(ops), done))
            .unzip();
        let results = self.store.propose_each(txns).await;
        let mut pass = Pass::Done;
        for (result, done) in results.into_iter().zip(done) {
            match result {
                Ok(_) => {
                    for decision in done {
                        match decision {
                            Decision::Assign { task_id, node_id } => {
                                tracing::debug!(task = %task_id, node = %node_id, "task assigned")
                            }
                            Decision::Pending { task_id, message } => {
                                tracing::debug!(task = %task_id, %message, "task pending")
                            }
                        }
                    }
                }
                Err(ProposeError::Refused(e)) => {
                    tracing::debug!(error = %e, "scheduler decisions refused; re-planning");
                    pass = Pass::Stale;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(pass)
    }
}

/// Changes that can let a waiting task be placed or bring a new one. Status reports of placed
/// tasks (most of the traffic) cannot, and neither can our own writes, so they do not wake
/// the loop; the periodic pass covers anything this misses.
fn worth_planning(event: &Event) -> bool {
    event.changes.iter().any(|change| match change {
        Change::Put(Object::Task(t)) => {
            t.status.state == TaskState::New
                || t.status.state.is_terminal()
                || t.desired_state != TaskState::Running
        }
        Change::Put(Object::Node(_)) => true,
        Change::Deleted { kind, .. } => matches!(kind, Kind::Node | Kind::Task),
        Change::Put(
            Object::Cluster(_)
            | Object::Service(_)
            | Object::Secret(_)
            | Object::Config(_)
            | Object::DataKey(_)
            | Object::Network(_),
        ) => false,
    })
}

/// Let a burst of changes finish. False if the loop should stop.
async fn settle(events: &mut broadcast::Receiver<Event>, cancel: &CancellationToken) -> bool {
    let deadline = Instant::now() + MAX_DELAY;
    loop {
        let quiet_until = (Instant::now() + QUIET).min(deadline);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return false,
            _ = sleep_until(quiet_until) => return true,
            r = events.recv() => if let Err(RecvError::Closed) = r { return false },
        }
        if Instant::now() >= deadline {
            return true;
        }
    }
}

enum Pass {
    Done,
    Stale,
}
