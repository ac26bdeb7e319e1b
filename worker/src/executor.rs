//! The executor: runs the tasks the managers assign to this node, through a [`Runtime`].
//!
//! ```text
//!   apply(assignments) ─▶ per task: desired state (watch) ─▶ driver (one tokio task)
//!                                                              │ next_step(observed, desired)
//!                                                              ▼
//!   ACCEPTED ─▶ PREPARING ─prepare─▶ READY ─▶ STARTING ─start─▶ RUNNING ─wait─▶ COMPLETE/FAILED
//!       └───────────┴── desired SHUTDOWN ──┴───────┘── SHUTDOWN     └── stop ──▶ SHUTDOWN
//!   errors in prepare/start ─▶ REJECTED; unassigned and terminal ─▶ runtime.remove, forgotten
//! ```
//!
//! What to do next is decided by the pure [`next_step`]; the driver only carries the step out
//! and reports the state it entered. A driver takes one step at a time and re-reads the desired
//! state between steps, so a shutdown that arrives while a task is still being prepared stops it
//! before it ever starts. Drivers sleep on the runtime or on their desired-state channel, never
//! poll, so thousands of tasks cost thousands of small tokio tasks and nothing more.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::spec::{Assignment, StatusReport, TaskState, TaskStatus};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::runtime::{RestoredState, Runtime};
use table::{TaskRecord, TaskTable};

pub mod table;

/// Swarm's default stop grace period, used when the spec leaves it at 0.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// What a driver does next, given what it last observed and what is desired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Enter (and report) a state that needs no runtime work: ACCEPTED, PREPARING, STARTING.
    Enter(TaskState),
    /// PREPARING → READY through `runtime.prepare` (REJECTED on error).
    Prepare,
    /// STARTING → RUNNING through `runtime.start` (REJECTED on error).
    Start,
    /// RUNNING: wait for the process to exit (COMPLETE / FAILED) or for a shutdown request.
    Wait,
    /// RUNNING, shutdown wanted: `runtime.stop`, then SHUTDOWN with the exit code.
    Stop,
    /// Not running yet, shutdown wanted: SHUTDOWN without ever starting.
    Abandon,
    /// Nothing to do until the desired state changes.
    Idle,
    /// Terminal and no longer assigned: `runtime.remove` and forget the task.
    Remove,
}

/// The task state machine, one step at a time.
///
/// `observed` is the last state the driver entered (ASSIGNED before its first step), `desired`
/// the manager's desired state, `assigned` whether the task is still in this node's assignment
/// set (a task dropped from it is shut down and then forgotten). Desired states below RUNNING
/// (READY: prepare but do not start yet) hold the task there; COMPLETE (jobs) runs it like
/// RUNNING; SHUTDOWN and anything past it stop it.
pub fn next_step(observed: TaskState, desired: TaskState, assigned: bool) -> Step {
    use TaskState::*;
    if observed.is_terminal() {
        return if assigned { Step::Idle } else { Step::Remove };
    }
    if !assigned || desired >= Shutdown {
        return if observed == Running {
            Step::Stop
        } else {
            Step::Abandon
        };
    }
    // Every task is accepted, whatever it is asked to become; then it advances no further
    // than the desired state allows.
    let target = desired.clamp(Accepted, Running);
    match observed {
        Running => Step::Wait,
        s if s < Accepted => Step::Enter(Accepted),
        s if s >= target => Step::Idle,
        Accepted => Step::Enter(Preparing),
        Preparing => Step::Prepare,
        Ready => Step::Enter(Starting),
        _ => Step::Start,
    }
}

/// Runs the tasks assigned to this node.
///
/// Dropping it stops the drivers as [`Executor::shutdown`] does, without waiting for them.
pub struct Executor {
    inner: Arc<Inner>,
    _stop_drivers: DropGuard,
}

struct Inner {
    runtime: Arc<dyn Runtime>,
    reports: mpsc::Sender<StatusReport>,
    tasks: Mutex<HashMap<String, TaskHandle>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    spawner: tokio::runtime::Handle,
    /// Tasks the runtime restored, not adopted by a driver yet; `None` once the first full
    /// assignment set has been applied (leftovers are then stopped and removed).
    restored: Mutex<Option<HashMap<String, Adopt>>>,
    /// The facts live restore needs, kept by the executor (see [`table`]).
    table: TaskTable,
    /// Tasks being prepared or started now: removing finished containers waits for none
    /// (at most [`REMOVE_YIELDS_AT_MOST`]), so that in a rolling update the old batch's
    /// removal does not compete with the new batch's start for the CPU.
    starting: watch::Sender<usize>,
}

/// How long removing a finished container yields to containers being started.
const REMOVE_YIELDS_AT_MOST: Duration = Duration::from_secs(10);

/// Counts a task as starting while it lives.
struct StartInFlight(watch::Sender<usize>);

impl StartInFlight {
    fn new(count: &watch::Sender<usize>) -> StartInFlight {
        count.send_modify(|n| *n += 1);
        StartInFlight(count.clone())
    }
}

impl Drop for StartInFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A task that outlived the daemon: what the runtime found of it, and what the task table
/// recorded about it (none when the table does not list it, e.g. a table-less earlier run).
struct Adopt {
    found: RestoredState,
    record: Option<TaskRecord>,
}

struct TaskHandle {
    /// `service.slot` (`service.node` for global services), as `service ps` names the task.
    name: String,
    desired: watch::Sender<Desired>,
    /// Last status the driver entered; read by `statuses` after a reconnect.
    status: Arc<Mutex<Option<TaskStatus>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Desired {
    state: TaskState,
    assigned: bool,
}

impl Desired {
    fn stop_wanted(&self) -> bool {
        next_step(TaskState::Running, self.state, self.assigned) == Step::Stop
    }
}

impl Executor {
    /// Must be called inside a Tokio runtime: drivers are spawned on it, also when `apply` is
    /// later called from elsewhere.
    /// The runtime the tasks run on (for logs and exec).
    pub fn runtime(&self) -> Arc<dyn Runtime> {
        Arc::clone(&self.inner.runtime)
    }

    pub fn new(runtime: Arc<dyn Runtime>, reports: mpsc::Sender<StatusReport>) -> Executor {
        Executor::with_table(runtime, reports, TaskTable::in_memory())
    }

    /// An executor that keeps its task table in `table` (a file in the worker's data dir, so
    /// that a restarted daemon's [`Executor::restore`] reads what the last one recorded).
    pub fn with_table(
        runtime: Arc<dyn Runtime>,
        reports: mpsc::Sender<StatusReport>,
        table: TaskTable,
    ) -> Executor {
        let cancel = CancellationToken::new();
        Executor {
            inner: Arc::new(Inner {
                runtime,
                reports,
                tasks: Mutex::new(HashMap::new()),
                tracker: TaskTracker::new(),
                cancel: cancel.clone(),
                spawner: tokio::runtime::Handle::current(),
                restored: Mutex::new(None),
                table,
                starting: watch::Sender::new(0),
            }),
            _stop_drivers: cancel.drop_guard(),
        }
    }

    /// Live restore: ask the runtime which tasks survived an earlier run of the daemon. Call it
    /// once, before the first `apply`. A restored task that is assigned again is adopted (a
    /// running one is waited for, one that exited meanwhile reports its exit) instead of being
    /// started again; restored tasks missing from the first full assignment set are stopped
    /// and removed. Returns how many tasks were restored.
    ///
    /// The task table says what this executor ran and how far each task got; the runtime says
    /// what still exists and whether its process runs. A task the table lists and the runtime
    /// no longer has is gone (its container was removed while the daemon was down) and is
    /// forgotten. A task that both know and that the table says had ended (stopped, failed,
    /// rejected) is adopted at that end, unless its process runs: it is neither started again
    /// nor reported RUNNING first. A task the runtime has and the table does not list (an
    /// earlier run without the table, a lost record) is adopted from the runtime's word alone.
    pub async fn restore(&self) -> usize {
        let restored = self.inner.runtime.restore().await;
        let count = restored.len();
        let mut recorded = self.inner.table.records();
        for task in &restored {
            match recorded.get(&task.task_id) {
                Some(rec) if rec.spec_fingerprint != table::fingerprint(&task.assignment.spec) => {
                    tracing::warn!(task = %task.task_id, "restored task: its spec differs from the task table's record")
                }
                Some(rec) => {
                    tracing::info!(task = %task.task_id, state = ?task.state, recorded = %rec.state, "restored task")
                }
                None => {
                    tracing::info!(task = %task.task_id, state = ?task.state, "restored task (not in the task table)")
                }
            }
        }
        let alive: HashSet<&str> = restored.iter().map(|r| r.task_id.as_str()).collect();
        for (task_id, rec) in &recorded {
            if !alive.contains(task_id.as_str()) {
                tracing::info!(task = %task_id, recorded = %rec.state, "task in the task table is gone from the runtime; forgotten");
                if let Err(e) = self.inner.table.remove(task_id) {
                    tracing::warn!(error = %e, "updating the task table");
                }
            }
        }
        let adopt = restored.into_iter().map(|r| {
            let record = recorded.remove(&r.task_id);
            let adopt = Adopt {
                found: r.state,
                record,
            };
            (r.task_id, adopt)
        });
        *lock(&self.inner.restored) = Some(adopt.collect());
        count
    }

    /// Apply an assignments message: `full` replaces the whole set (tasks not in it are
    /// stopped and removed), otherwise upsert/remove incrementally.
    ///
    /// An upsert of a known task only changes its desired state: a task's spec never changes
    /// (a new spec is a new task).
    pub fn apply(&self, full: bool, upsert: Vec<Assignment>, removed: Vec<String>) {
        if self.inner.cancel.is_cancelled() {
            tracing::warn!("executor shut down: ignoring assignments");
            return;
        }
        let mut tasks = self.inner.lock_tasks();
        let mut restored = lock(&self.inner.restored);
        let unassign = |handle: &TaskHandle| {
            handle.desired.send_if_modified(|d| {
                let was = d.assigned;
                d.assigned = false;
                was
            });
        };
        if full {
            let keep: HashSet<&str> = upsert.iter().map(|a| a.task_id.as_str()).collect();
            for (id, handle) in tasks.iter() {
                if !keep.contains(id.as_str()) {
                    unassign(handle);
                }
            }
        }
        for assignment in upsert {
            let desired = Desired {
                state: assignment.desired_state,
                assigned: true,
            };
            if let Some(handle) = tasks.get(&assignment.task_id) {
                handle.desired.send_if_modified(|d| {
                    let changed = *d != desired;
                    *d = desired;
                    changed
                });
                continue;
            }
            let adopt = restored
                .as_mut()
                .and_then(|r| r.remove(&assignment.task_id));
            let (desired_tx, desired_rx) = watch::channel(desired);
            let status = Arc::new(Mutex::new(None));
            let name = if assignment.slot > 0 {
                format!("{}.{}", assignment.service_name, assignment.slot)
            } else {
                assignment.service_name.clone()
            };
            tasks.insert(
                assignment.task_id.clone(),
                TaskHandle {
                    name,
                    desired: desired_tx,
                    status: status.clone(),
                },
            );
            let driver = Driver {
                inner: self.inner.clone(),
                spec_fingerprint: table::fingerprint(&assignment.spec),
                assignment,
                desired: desired_rx,
                observed: TaskState::Assigned,
                status,
                adopt,
            };
            self.inner
                .tracker
                .spawn_on(driver.run(), &self.inner.spawner);
        }
        for id in removed {
            if let Some(handle) = tasks.get(&id) {
                unassign(handle);
            }
        }
        if full {
            // Whatever was restored and is not assigned any more goes away.
            for (task_id, Adopt { found, .. }) in restored.take().unwrap_or_default() {
                let runtime = self.inner.runtime.clone();
                let cancel = self.inner.cancel.clone();
                let inner = self.inner.clone();
                let cleanup = async move {
                    if matches!(found, RestoredState::Running { .. }) {
                        if let Err(e) = runtime.stop(&task_id, DEFAULT_STOP_GRACE).await {
                            tracing::warn!(task = %task_id, error = %e, "stopping a restored task");
                        }
                        let _ = runtime.wait(&task_id).await;
                    }
                    if let Err(e) = runtime.remove(&task_id).await {
                        tracing::warn!(task = %task_id, error = %e, "removing a restored task");
                    }
                    if let Err(e) = inner.table.remove(&task_id) {
                        tracing::warn!(error = %e, "updating the task table");
                    }
                };
                self.inner.tracker.spawn_on(
                    async move {
                        tokio::select! {
                            biased;
                            _ = cancel.cancelled() => {}
                            _ = cleanup => {}
                        }
                    },
                    &self.inner.spawner,
                );
            }
        }
    }

    /// Current observed status of every task it knows (for re-sending after a reconnect),
    /// ordered by task id. Tasks whose driver has not taken its first step yet are left out:
    /// nothing has been observed about them.
    pub fn statuses(&self) -> Vec<StatusReport> {
        let tasks = self.inner.lock_tasks();
        let mut reports: Vec<StatusReport> = tasks
            .iter()
            .filter_map(|(id, handle)| {
                let status = lock(&handle.status).clone()?;
                Some(StatusReport {
                    task_id: id.clone(),
                    status,
                })
            })
            .collect();
        reports.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        reports
    }

    /// (task id, name) of every task it drives that is meant to run, for finding a task by
    /// the name `service ps` shows (`web.1`).
    pub fn running_names(&self) -> Vec<(String, String)> {
        let tasks = self.inner.lock_tasks();
        let mut out: Vec<(String, String)> = tasks
            .iter()
            .filter(|(_, h)| {
                let d = *h.desired.borrow();
                d.assigned && d.state <= TaskState::Running
            })
            .map(|(id, h)| (id.clone(), h.name.clone()))
            .collect();
        out.sort();
        out
    }

    /// Leaving the swarm: every task is unassigned, stopped (with its grace period) and
    /// removed, then the drivers shut down. Shutting down at once would leave the containers
    /// running (shutdown leaves processes as they are, for a restarted agent to adopt).
    /// Returns whether every task was gone within `timeout`.
    pub async fn leave(&self, timeout: Duration) -> bool {
        self.apply(true, Vec::new(), Vec::new());
        let drained = self.drain(timeout).await;
        self.shutdown().await;
        drained
    }

    /// Wait until every task is stopped, removed and forgotten (after an `apply` that
    /// unassigned them all), at most `timeout`. Returns whether none is left.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.inner.lock_tasks().is_empty() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop driving: every driver ends at its next await, leaving processes as they are (a
    /// restarted agent adopts them), and this returns once all have ended. The task table is
    /// synced to disk last (every change is already written to it).
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        if let Err(e) = self.inner.table.sync() {
            tracing::warn!(error = %e, "syncing the task table");
        }
    }
}

impl Inner {
    fn lock_tasks(&self) -> MutexGuard<'_, HashMap<String, TaskHandle>> {
        lock(&self.tasks)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single assignment, so the data stays consistent
    // even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether the driver goes on after a step.
enum Flow {
    Continue,
    /// The executor is shutting down, or the task is forgotten.
    Exit,
}

/// The per-task loop: read desired, decide, act, report.
struct Driver {
    inner: Arc<Inner>,
    assignment: Assignment,
    /// [`table::fingerprint`] of the assignment's spec, for its task table records.
    spec_fingerprint: String,
    desired: watch::Receiver<Desired>,
    observed: TaskState,
    status: Arc<Mutex<Option<TaskStatus>>>,
    /// Restored by the runtime: continue from there instead of preparing again.
    adopt: Option<Adopt>,
}

impl Driver {
    async fn run(mut self) {
        match self.adopt.take() {
            Some(Adopt {
                found: RestoredState::Created | RestoredState::Exited(_),
                record: Some(rec),
            }) if rec.state.is_terminal() => {
                // It had ended before the restart (the table says how) and its container is
                // still there: that end again (its report may have been lost with the daemon),
                // rather than starting it again or reporting RUNNING first.
                let message = "ended before the restart";
                if let Flow::Exit = self.enter(rec.state, message, None, rec.exit_code).await {
                    return;
                }
            }
            Some(Adopt {
                found: RestoredState::Running { .. } | RestoredState::Exited(_),
                ..
            }) => {
                // Running (or ran while the daemon was down): report RUNNING, then the wait
                // step finds the exit or waits for it.
                self.observed = TaskState::Starting;
                if let Flow::Exit = self
                    .enter(TaskState::Running, "adopted after restart", None, None)
                    .await
                {
                    return;
                }
            }
            Some(Adopt {
                found: RestoredState::Created,
                ..
            }) => self.observed = TaskState::Ready,
            None => {}
        }
        loop {
            let desired = *self.desired.borrow_and_update();
            let step = next_step(self.observed, desired.state, desired.assigned);
            tracing::trace!(task = %self.assignment.task_id, observed = %self.observed, ?step);
            let flow = match step {
                Step::Enter(state) => self.enter(state, message(state), None, None).await,
                Step::Prepare => self.prepare().await,
                Step::Start => self.start().await,
                Step::Wait => self.wait().await,
                Step::Stop => self.stop().await,
                Step::Abandon => {
                    self.enter(TaskState::Shutdown, "shutdown before start", None, None)
                        .await
                }
                Step::Idle => self.idle().await,
                Step::Remove => self.remove().await,
            };
            if let Flow::Exit = flow {
                return;
            }
        }
    }

    fn task_id(&self) -> &str {
        &self.assignment.task_id
    }

    async fn prepare(&mut self) -> Flow {
        let runtime = self.inner.runtime.clone();
        let cancel = self.inner.cancel.clone();
        let _starting = StartInFlight::new(&self.inner.starting);
        // An image pull can take long; a shutdown meanwhile abandons it (the next step is then
        // Abandon) instead of waiting for a task nobody wants any more.
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Flow::Exit,
            stop = self.desired.wait_for(Desired::stop_wanted) => {
                return if stop.is_ok() { Flow::Continue } else { Flow::Exit };
            }
            result = runtime.prepare(&self.assignment) => result,
        };
        self.advance_or_reject(result, TaskState::Ready, "preparing failed")
            .await
    }

    /// After a step before RUNNING: on success enter `next`, on failure REJECTED with the
    /// runtime's words.
    async fn advance_or_reject(
        &mut self,
        result: Result<(), crate::runtime::RuntimeError>,
        next: TaskState,
        failed: &str,
    ) -> Flow {
        match result {
            Ok(()) => self.enter(next, message(next), None, None).await,
            Err(e) => {
                self.enter(TaskState::Rejected, failed, Some(e.user_message()), None)
                    .await
            }
        }
    }

    async fn start(&mut self) -> Flow {
        let runtime = self.inner.runtime.clone();
        let cancel = self.inner.cancel.clone();
        let _starting = StartInFlight::new(&self.inner.starting);
        // Not abandoned on shutdown: a half-started process could be left running unseen.
        // Once started, the next step stops it.
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Flow::Exit,
            result = runtime.start(self.task_id()) => result,
        };
        self.advance_or_reject(result, TaskState::Running, "starting failed")
            .await
    }

    async fn wait(&mut self) -> Flow {
        let runtime = self.inner.runtime.clone();
        let cancel = self.inner.cancel.clone();
        let task_id = self.assignment.task_id.clone();
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Flow::Exit,
            stop = self.desired.wait_for(Desired::stop_wanted) => {
                return if stop.is_ok() { Flow::Continue } else { Flow::Exit };
            }
            result = runtime.wait(&task_id) => result,
        };
        match result {
            Ok(0) => {
                self.enter(TaskState::Complete, "finished", None, Some(0))
                    .await
            }
            Ok(code) => {
                let err = match runtime.exit_detail(&task_id).await {
                    Some(detail) => detail,
                    None => format!("task: non-zero exit ({code})"),
                };
                self.enter(TaskState::Failed, "finished", Some(err), Some(code))
                    .await
            }
            Err(e) => {
                self.enter(
                    TaskState::Failed,
                    "lost track of the process",
                    Some(e.user_message()),
                    None,
                )
                .await
            }
        }
    }

    async fn stop(&mut self) -> Flow {
        let runtime = self.inner.runtime.clone();
        let cancel = self.inner.cancel.clone();
        let task_id = self.assignment.task_id.clone();
        let grace = match self.assignment.spec.stop_grace_period_ms {
            0 => DEFAULT_STOP_GRACE,
            ms => Duration::from_millis(ms),
        };
        let stopped = async {
            runtime.stop(&task_id, grace).await?;
            runtime.wait(&task_id).await
        };
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Flow::Exit,
            result = stopped => result,
        };
        match result {
            Ok(code) => {
                self.enter(TaskState::Shutdown, "shutdown", None, Some(code))
                    .await
            }
            // The process may still run; say so rather than claim a clean shutdown.
            Err(e) => {
                self.enter(
                    TaskState::Failed,
                    "stop failed",
                    Some(e.user_message()),
                    None,
                )
                .await
            }
        }
    }

    async fn idle(&mut self) -> Flow {
        let cancel = self.inner.cancel.clone();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Flow::Exit,
            changed = self.desired.changed() => {
                if changed.is_ok() { Flow::Continue } else { Flow::Exit }
            }
        }
    }

    async fn remove(&mut self) -> Flow {
        let runtime = self.inner.runtime.clone();
        let cancel = self.inner.cancel.clone();
        let task_id = self.assignment.task_id.clone();
        // Yield to containers being started (bounded): nobody waits for this removal.
        let mut starting = self.inner.starting.subscribe();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Flow::Exit,
            _ = tokio::time::timeout(REMOVE_YIELDS_AT_MOST, starting.wait_for(|n| *n == 0)) => {}
        }
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Flow::Exit,
            result = runtime.remove(&task_id) => result,
        };
        if let Err(e) = result {
            // Nothing to report to: the managers no longer track this task. Leftovers are the
            // runtime's to collect.
            tracing::warn!(task = %task_id, error = %e, "removing a finished task failed");
        }
        let mut tasks = self.inner.lock_tasks();
        // `apply` changes desired state under this lock, so this check cannot race with a
        // re-assignment: a task assigned again meanwhile stays known (terminal, Idle).
        if self.desired.borrow().assigned {
            return Flow::Continue;
        }
        tasks.remove(&task_id);
        if let Err(e) = self.inner.table.remove(&task_id) {
            tracing::warn!(error = %e, "updating the task table");
        }
        Flow::Exit
    }

    /// Enter `state` and report it. States only move forward; the decision function makes
    /// every step do so, and this guards it.
    async fn enter(
        &mut self,
        state: TaskState,
        message: &str,
        err: Option<String>,
        exit_code: Option<i32>,
    ) -> Flow {
        debug_assert!(
            state > self.observed,
            "task {}: {} -> {state} goes backwards",
            self.assignment.task_id,
            self.observed
        );
        if state <= self.observed {
            return Flow::Continue;
        }
        self.observed = state;
        let status = TaskStatus {
            state,
            message: message.to_string(),
            err: err.unwrap_or_default(),
            exit_code,
            timestamp_ms: now_ms(),
        };
        *lock(&self.status) = Some(status.clone());
        let record = TaskRecord::with_fingerprint(
            &self.assignment,
            state,
            exit_code,
            self.spec_fingerprint.clone(),
        );
        if let Err(e) = self.inner.table.upsert(record) {
            tracing::warn!(error = %e, "updating the task table");
        }
        let report = StatusReport {
            task_id: self.assignment.task_id.clone(),
            status,
        };
        // A full channel holds up only this task, and shutdown still gets through.
        tokio::select! {
            biased;
            _ = self.inner.cancel.cancelled() => Flow::Exit,
            sent = self.inner.reports.send(report) => {
                if sent.is_err() {
                    // The agent stopped listening; `statuses` still has the state for later.
                    tracing::debug!(task = %self.assignment.task_id, %state, "status report dropped");
                }
                Flow::Continue
            }
        }
    }
}

fn message(state: TaskState) -> &'static str {
    match state {
        TaskState::Accepted => "accepted",
        TaskState::Preparing => "preparing",
        TaskState::Ready => "prepared",
        TaskState::Starting => "starting",
        TaskState::Running => "started",
        other => other.as_str(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{FakeRuntime, KILLED_EXIT_CODE};
    use proto::spec::TaskSpec;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use TaskState::*;

    fn assignment(id: &str, env: &[&str], desired: TaskState) -> Assignment {
        Assignment {
            node_hostname: String::new(),
            node_id: String::new(),
            service_labels: Default::default(),
            secrets: Vec::new(),
            configs: Vec::new(),
            networks: vec![],
            task_id: id.into(),
            service_id: "s1".into(),
            service_name: "web".into(),
            slot: 1,
            spec: TaskSpec {
                image: "busybox".into(),
                env: env.iter().map(|e| e.to_string()).collect(),
                ..Default::default()
            },
            desired_state: desired,
        }
    }

    struct Harness {
        runtime: Arc<FakeRuntime>,
        executor: Executor,
        reports: mpsc::Receiver<StatusReport>,
    }

    fn harness() -> Harness {
        let runtime = Arc::new(FakeRuntime::new(Duration::from_millis(50)));
        let (tx, reports) = mpsc::channel(16);
        let executor = Executor::new(runtime.clone(), tx);
        Harness {
            runtime,
            executor,
            reports,
        }
    }

    impl Harness {
        /// The next report; the paused clock makes a missing one a quick failure.
        async fn next(&mut self) -> StatusReport {
            tokio::time::timeout(Duration::from_secs(3600), self.reports.recv())
                .await
                .expect("a status report")
                .expect("channel open")
        }

        async fn states_until(&mut self, task_id: &str, last: TaskState) -> Vec<TaskState> {
            let mut states = vec![];
            loop {
                let report = self.next().await;
                assert_eq!(report.task_id, task_id);
                states.push(report.status.state);
                if report.status.state >= last {
                    return states;
                }
            }
        }

        /// Let every driver run until it sleeps for good.
        async fn settle(&self) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }

    #[test]
    fn next_step_walks_forward_one_step_at_a_time() {
        assert_eq!(next_step(Assigned, Running, true), Step::Enter(Accepted));
        assert_eq!(next_step(Accepted, Running, true), Step::Enter(Preparing));
        assert_eq!(next_step(Preparing, Running, true), Step::Prepare);
        assert_eq!(next_step(Ready, Running, true), Step::Enter(Starting));
        assert_eq!(next_step(Starting, Running, true), Step::Start);
        assert_eq!(next_step(Running, Running, true), Step::Wait);
        // Jobs: desired COMPLETE runs the task to its end like RUNNING.
        assert_eq!(next_step(Ready, Complete, true), Step::Enter(Starting));
        assert_eq!(next_step(Running, Complete, true), Step::Wait);
    }

    #[test]
    fn next_step_holds_at_a_desired_state_below_running() {
        assert_eq!(next_step(Preparing, Ready, true), Step::Prepare);
        assert_eq!(next_step(Ready, Ready, true), Step::Idle);
        // Accepting does not wait for the desired state.
        assert_eq!(next_step(Assigned, Assigned, true), Step::Enter(Accepted));
        assert_eq!(next_step(Accepted, Assigned, true), Step::Idle);
        // A desired state that went backwards does not move a running task.
        assert_eq!(next_step(Running, Ready, true), Step::Wait);
    }

    #[test]
    fn next_step_stops_on_shutdown_or_unassignment() {
        for desired in [Shutdown, Remove, Failed] {
            assert_eq!(next_step(Assigned, desired, true), Step::Abandon);
            assert_eq!(next_step(Preparing, desired, true), Step::Abandon);
            assert_eq!(next_step(Starting, desired, true), Step::Abandon);
            assert_eq!(next_step(Running, desired, true), Step::Stop);
        }
        assert_eq!(next_step(Ready, Running, false), Step::Abandon);
        assert_eq!(next_step(Running, Running, false), Step::Stop);
    }

    #[test]
    fn next_step_ends_terminal_tasks_once_unassigned() {
        for observed in [Complete, Shutdown, Failed, Rejected] {
            assert_eq!(next_step(observed, Running, true), Step::Idle);
            assert_eq!(next_step(observed, Shutdown, true), Step::Idle);
            assert_eq!(next_step(observed, Running, false), Step::Remove);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn happy_path_reports_each_state_in_order() {
        let mut h = harness();
        h.executor
            .apply(false, vec![assignment("t1", &[], Running)], vec![]);
        let states = h.states_until("t1", Running).await;
        assert_eq!(states, [Accepted, Preparing, Ready, Starting, Running]);
        h.settle().await;
        assert!(h.reports.try_recv().is_err(), "nothing after RUNNING");
        assert_eq!(h.runtime.calls(), ["prepare t1", "start t1", "wait t1"]);
        let statuses = h.executor.statuses();
        assert_eq!(statuses.len(), 1);
        assert_eq!(statuses[0].status.state, Running);
        assert!(statuses[0].status.timestamp_ms > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn exit_code_decides_complete_or_failed() {
        let mut h = harness();
        h.executor.apply(
            false,
            vec![assignment(
                "t1",
                &["SHOAL_FAKE_EXIT_AFTER_MS=100", "SHOAL_FAKE_EXIT_CODE=3"],
                Running,
            )],
            vec![],
        );
        h.states_until("t1", Running).await;
        let failed = h.next().await;
        assert_eq!(failed.status.state, Failed);
        assert_eq!(failed.status.exit_code, Some(3));
        assert_eq!(failed.status.err, "task: non-zero exit (3)");

        h.executor.apply(
            false,
            vec![assignment("t2", &["SHOAL_FAKE_EXIT_AFTER_MS=100"], Running)],
            vec![],
        );
        h.states_until("t2", Running).await;
        let complete = h.next().await;
        assert_eq!(complete.status.state, Complete);
        assert_eq!(complete.status.exit_code, Some(0));
        assert_eq!(complete.status.err, "");
    }

    #[tokio::test(start_paused = true)]
    async fn prepare_failure_rejects_the_task() {
        let mut h = harness();
        h.executor.apply(
            false,
            vec![assignment("t1", &["SHOAL_FAKE_FAIL=prepare"], Running)],
            vec![],
        );
        let states = h.states_until("t1", Rejected).await;
        assert_eq!(states, [Accepted, Preparing, Rejected]);
        let status = &h.executor.statuses()[0].status;
        assert!(
            status.err.contains("fake runtime: image pull failed"),
            "{}",
            status.err
        );
        h.settle().await;
        assert!(!h.runtime.calls().iter().any(|c| c.starts_with("start")));
    }

    #[tokio::test(start_paused = true)]
    async fn start_failure_rejects_the_task() {
        let mut h = harness();
        h.executor.apply(
            false,
            vec![assignment("t1", &["SHOAL_FAKE_FAIL=start"], Running)],
            vec![],
        );
        let states = h.states_until("t1", Rejected).await;
        assert_eq!(states, [Accepted, Preparing, Ready, Starting, Rejected]);
        let status = &h.executor.statuses()[0].status;
        assert!(status.err.contains("fake runtime: start failed"));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_while_running_stops_then_unassign_removes() {
        let mut h = harness();
        let mut t1 = assignment("t1", &[], Running);
        t1.spec.stop_grace_period_ms = 2_000;
        h.executor.apply(false, vec![t1.clone()], vec![]);
        h.states_until("t1", Running).await;

        t1.desired_state = Shutdown;
        h.executor.apply(false, vec![t1], vec![]);
        let shutdown = h.next().await;
        assert_eq!(shutdown.status.state, Shutdown);
        assert_eq!(shutdown.status.exit_code, Some(KILLED_EXIT_CODE));
        h.settle().await;
        let calls = h.runtime.calls();
        assert!(calls.contains(&"stop t1".to_string()), "{calls:?}");
        assert!(!calls.contains(&"remove t1".to_string()), "{calls:?}");
        assert_eq!(h.executor.statuses().len(), 1, "kept until unassigned");

        h.executor.apply(false, vec![], vec!["t1".into()]);
        h.settle().await;
        assert_eq!(h.runtime.calls().last().unwrap(), "remove t1");
        assert!(h.executor.statuses().is_empty());
        assert_eq!(h.runtime.task_count(), 0);
        assert!(
            h.reports.try_recv().is_err(),
            "a terminal state is reported once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn removal_yields_to_a_task_being_started() {
        let mut h = harness();
        h.executor
            .apply(false, vec![assignment("t1", &[], Running)], vec![]);
        h.states_until("t1", Running).await;

        // t1 leaves while t2 takes 2 s to prepare and start: t1's container is stopped at
        // once but removed only once t2 has started.
        let t2 = assignment("t2", &["SHOAL_FAKE_START_MS=2000"], Running);
        h.executor.apply(false, vec![t2], vec!["t1".into()]);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let calls = h.runtime.calls();
        assert!(calls.contains(&"stop t1".to_string()), "{calls:?}");
        assert!(!calls.contains(&"remove t1".to_string()), "{calls:?}");

        h.settle().await;
        let calls = h.runtime.calls();
        let at = |c: &str| calls.iter().position(|x| x == c);
        assert!(at("remove t1").is_some(), "{calls:?}");
        assert!(at("remove t1") > at("start t2"), "{calls:?}");
        assert_eq!(h.runtime.task_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn leave_stops_and_removes_every_task_before_shutting_down() {
        let mut h = harness();
        let mut t1 = assignment("t1", &[], Running);
        t1.spec.stop_grace_period_ms = 2_000;
        let t2 = assignment("t2", &[], Running);
        h.executor.apply(false, vec![t1, t2], vec![]);
        let mut running = 0;
        while running < 2 {
            if h.next().await.status.state == Running {
                running += 1;
            }
        }
        assert_eq!(h.runtime.task_count(), 2);

        assert!(h.executor.leave(Duration::from_secs(30)).await);
        assert_eq!(h.runtime.task_count(), 0, "{:?}", h.runtime.calls());
        let calls = h.runtime.calls();
        for c in ["stop t1", "remove t1", "stop t2", "remove t2"] {
            assert!(calls.contains(&c.to_string()), "{c}: {calls:?}");
        }
        assert!(h.executor.statuses().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_leaves_tasks_running() {
        let mut h = harness();
        h.executor
            .apply(false, vec![assignment("t1", &[], Running)], vec![]);
        h.states_until("t1", Running).await;
        h.executor.apply(true, Vec::new(), Vec::new());
        h.executor.shutdown().await;
        h.settle().await;
        assert_eq!(h.runtime.task_count(), 1, "{:?}", h.runtime.calls());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_before_running_never_starts() {
        let mut h = harness();
        // Slow prepare, so that the shutdown arrives in the middle of it.
        let mut t1 = assignment("t1", &["SHOAL_FAKE_START_MS=10000"], Running);
        h.executor.apply(false, vec![t1.clone()], vec![]);
        assert_eq!(h.states_until("t1", Preparing).await, [Accepted, Preparing]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        t1.desired_state = Shutdown;
        h.executor.apply(false, vec![t1], vec![]);
        let report = h.next().await;
        assert_eq!(report.status.state, Shutdown);
        assert_eq!(report.status.exit_code, None);

        // Already SHUTDOWN in its first assignment: only the SHUTDOWN report.
        h.executor
            .apply(false, vec![assignment("t2", &[], Shutdown)], vec![]);
        assert_eq!(h.states_until("t2", Shutdown).await, [Shutdown]);
        h.settle().await;
        let calls = h.runtime.calls();
        assert!(!calls.iter().any(|c| c.starts_with("start")), "{calls:?}");
        assert!(!calls.iter().any(|c| c.ends_with("t2")), "{calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn upsert_of_a_known_task_only_changes_desired_state() {
        let mut h = harness();
        h.executor
            .apply(false, vec![assignment("t1", &[], Ready)], vec![]);
        assert_eq!(
            h.states_until("t1", Ready).await,
            [Accepted, Preparing, Ready]
        );
        h.settle().await;
        assert!(h.reports.try_recv().is_err(), "held at READY");
        // A different spec in the upsert is ignored: the task keeps its first one.
        h.executor.apply(
            false,
            vec![assignment("t1", &["SHOAL_FAKE_FAIL=start"], Running)],
            vec![],
        );
        assert_eq!(h.states_until("t1", Running).await, [Starting, Running]);
    }

    #[tokio::test(start_paused = true)]
    async fn full_set_replaces_the_assignments() {
        let mut h = harness();
        h.executor.apply(
            true,
            vec![
                assignment("t1", &[], Running),
                assignment("t2", &[], Running),
            ],
            vec![],
        );
        h.settle().await;
        let mut running = 0;
        while let Ok(report) = h.reports.try_recv() {
            running += usize::from(report.status.state == Running);
        }
        assert_eq!(running, 2);

        h.executor
            .apply(true, vec![assignment("t1", &[], Running)], vec![]);
        let report = h.next().await;
        assert_eq!(
            (report.task_id.as_str(), report.status.state),
            ("t2", Shutdown)
        );
        h.settle().await;
        let calls = h.runtime.calls();
        assert!(calls.contains(&"stop t2".to_string()), "{calls:?}");
        assert!(calls.contains(&"remove t2".to_string()), "{calls:?}");
        assert!(!calls.contains(&"stop t1".to_string()), "{calls:?}");
        let statuses = h.executor.statuses();
        assert_eq!(statuses.len(), 1);
        assert_eq!(statuses[0].task_id, "t1");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_leaves_processes_running() {
        let mut h = harness();
        h.executor
            .apply(false, vec![assignment("t1", &[], Running)], vec![]);
        h.states_until("t1", Running).await;
        h.executor.shutdown().await;
        h.executor.apply(
            false,
            vec![assignment("t1", &[], Shutdown)],
            vec!["t1".into()],
        );
        h.settle().await;
        let calls = h.runtime.calls();
        assert!(!calls.iter().any(|c| c.starts_with("stop")), "{calls:?}");
        assert_eq!(h.runtime.task_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_table_follows_the_tasks_and_restore_forgets_the_gone() {
        use crate::runtime::{Restored, RestoredState};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(table::FILE);
        let runtime = Arc::new(FakeRuntime::new(Duration::from_millis(50)));
        let (tx, reports) = mpsc::channel(16);
        let executor = Executor::with_table(runtime.clone(), tx, TaskTable::open(&path).unwrap());
        let mut h = Harness {
            runtime,
            executor,
            reports,
        };
        let t1 = assignment("t1", &[], Running);
        h.executor.apply(true, vec![t1.clone()], vec![]);
        h.states_until("t1", Running).await;
        // Read while the executor writes: the table's own reader, which writes nothing.
        let rec = table::read(&path)
            .unwrap()
            .0
            .remove("t1")
            .expect("recorded");
        assert_eq!(rec.state, Running);
        assert_eq!(rec.spec_fingerprint, table::fingerprint(&t1.spec));
        // Unassigned: stopped, removed, and gone from the table.
        h.executor.apply(true, vec![], vec![]);
        h.states_until("t1", Shutdown).await;
        h.settle().await;
        assert!(table::read(&path).unwrap().0.is_empty());
        h.executor.shutdown().await;

        // A restart: the table lists t2 and t9; the runtime still has t2 only.
        let table = TaskTable::open(&path).unwrap();
        for id in ["t2", "t9"] {
            let rec = TaskRecord::new(&assignment(id, &[], Running), Running, None);
            table.upsert(rec).unwrap();
        }
        drop(table);
        let runtime = Arc::new(FakeRuntime::new(Duration::from_millis(50)));
        runtime.preload(vec![Restored {
            task_id: "t2".into(),
            assignment: assignment("t2", &[], Running),
            state: RestoredState::Running { pid: 7 },
        }]);
        let (tx, _reports) = mpsc::channel(16);
        let executor = Executor::with_table(runtime, tx, TaskTable::open(&path).unwrap());
        assert_eq!(executor.restore().await, 1);
        let left = table::read(&path).unwrap().0;
        assert_eq!(left.keys().collect::<Vec<_>>(), ["t2"]);
    }

    /// After a restart the table says how far each task got, the runtime what is left of it:
    /// a task that had ended is adopted at its end, not started again nor reported RUNNING.
    #[tokio::test(start_paused = true)]
    async fn restored_tasks_resume_where_the_table_says() {
        use crate::runtime::{Restored, RestoredState};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(table::FILE);
        let table = TaskTable::open(&path).unwrap();
        for (id, state, code) in [
            // Stopped by this executor (its container still there, exited by the signal).
            ("t1", Shutdown, Some(137)),
            // Created, then its start failed.
            ("t2", Rejected, None),
            // Running when the daemon went down, exited meanwhile.
            ("t3", Running, None),
            // Said FAILED (stop failed), but its process runs: the runtime knows better.
            ("t4", Failed, None),
        ] {
            let rec = TaskRecord::new(&assignment(id, &[], Running), state, code);
            table.upsert(rec).unwrap();
        }
        drop(table);
        let runtime = Arc::new(FakeRuntime::new(Duration::from_millis(50)));
        let restored = |id: &str, state| Restored {
            task_id: id.into(),
            assignment: assignment(id, &[], Running),
            state,
        };
        runtime.preload(vec![
            restored("t1", RestoredState::Exited(137)),
            restored("t2", RestoredState::Created),
            restored("t3", RestoredState::Exited(1)),
            restored("t4", RestoredState::Running { pid: 9 }),
        ]);
        let (tx, reports) = mpsc::channel(16);
        let executor = Executor::with_table(runtime.clone(), tx, TaskTable::open(&path).unwrap());
        let mut h = Harness {
            runtime,
            executor,
            reports,
        };
        assert_eq!(h.executor.restore().await, 4);
        let ids = ["t1", "t2", "t3", "t4"];
        let all = ids.iter().map(|id| assignment(id, &[], Running)).collect();
        h.executor.apply(true, all, vec![]);
        h.settle().await;
        let mut by_task: HashMap<String, Vec<TaskStatus>> = HashMap::new();
        while let Ok(report) = h.reports.try_recv() {
            by_task
                .entry(report.task_id)
                .or_default()
                .push(report.status);
        }
        let states = |id: &str| -> Vec<TaskState> { by_task[id].iter().map(|s| s.state).collect() };
        assert_eq!(states("t1"), [Shutdown]);
        assert_eq!(by_task["t1"][0].exit_code, Some(137));
        assert_eq!(by_task["t1"][0].message, "ended before the restart");
        assert_eq!(states("t2"), [Rejected]);
        assert_eq!(states("t3"), [Running, Failed]);
        assert_eq!(states("t4"), [Running]);
        let calls = h.runtime.calls();
        for id in ids {
            for never in ["prepare", "start"] {
                let call = format!("{never} {id}");
                assert!(!calls.contains(&call), "{call}: {calls:?}");
            }
        }
        // The ended ones, unassigned, are removed and forgotten, in the table too.
        h.executor.apply(true, vec![], vec![]);
        h.settle().await;
        let left = table::read(&path).unwrap().0;
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(h.runtime.task_count(), 0, "{calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn restored_tasks_are_adopted_or_removed() {
        use crate::runtime::{Restored, RestoredState};
        let mut h = harness();
        let restored = |id: &str, state| Restored {
            task_id: id.into(),
            assignment: assignment(id, &[], Running),
            state,
        };
        h.runtime.preload(vec![
            restored("t1", RestoredState::Running { pid: 42 }),
            restored("t2", RestoredState::Exited(3)),
            restored("t3", RestoredState::Running { pid: 43 }),
            restored("t4", RestoredState::Created),
        ]);
        assert_eq!(h.executor.restore().await, 4);
        h.executor.apply(
            true,
            vec![
                assignment("t1", &[], Running),
                assignment("t2", &[], Running),
                assignment("t4", &[], Running),
            ],
            vec![],
        );
        h.settle().await;
        let mut by_task: HashMap<String, Vec<TaskStatus>> = HashMap::new();
        while let Ok(report) = h.reports.try_recv() {
            by_task
                .entry(report.task_id)
                .or_default()
                .push(report.status);
        }
        let states = |id: &str| -> Vec<TaskState> { by_task[id].iter().map(|s| s.state).collect() };
        assert_eq!(states("t1"), [Running]);
        assert_eq!(by_task["t1"][0].message, "adopted after restart");
        assert_eq!(states("t2"), [Running, Failed]);
        assert_eq!(by_task["t2"][1].exit_code, Some(3));
        assert_eq!(states("t4"), [Starting, Running]);
        assert!(!by_task.contains_key("t3"), "not assigned: never reported");
        let calls = h.runtime.calls();
        for never in [
            "prepare t1",
            "start t1",
            "prepare t2",
            "start t2",
            "prepare t4",
        ] {
            assert!(!calls.contains(&never.to_string()), "{never}: {calls:?}");
        }
        for done in ["start t4", "stop t3", "remove t3"] {
            assert!(calls.contains(&done.to_string()), "{done}: {calls:?}");
        }
        assert_eq!(h.runtime.task_count(), 3);
    }

    /// Many tasks, random misbehaviour and random desired-state flips: every task's reports
    /// move strictly forward, and every task ends terminal, removed and forgotten.
    #[tokio::test(start_paused = true)]
    async fn states_never_go_backwards_under_random_flips() {
        const TASKS: usize = 1_000;
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        let runtime = Arc::new(FakeRuntime::new(Duration::from_millis(20)));
        let (tx, mut rx) = mpsc::channel(64);
        // On disk, and read while it changes: thousands of changes, so it compacts too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(table::FILE);
        let table = TaskTable::open(&path).unwrap();
        let executor = Executor::with_table(runtime.clone(), tx, table);
        let collector = tokio::spawn(async move {
            let mut reports = vec![];
            while let Some(report) = rx.recv().await {
                reports.push(report);
            }
            reports
        });

        let mut assignments: Vec<Assignment> = (0..TASKS)
            .map(|i| {
                let mut env = vec![format!("SHOAL_FAKE_START_MS={}", rng.gen_range(0..200))];
                match rng.gen_range(0..10) {
                    0 => env.push("SHOAL_FAKE_FAIL=prepare".into()),
                    1 => env.push("SHOAL_FAKE_FAIL=start".into()),
                    2..=4 => {
                        env.push(format!(
                            "SHOAL_FAKE_EXIT_AFTER_MS={}",
                            rng.gen_range(0..500)
                        ));
                        env.push(format!("SHOAL_FAKE_EXIT_CODE={}", rng.gen_range(0..3)));
                    }
                    _ => {}
                }
                if rng.gen_bool(0.3) {
                    env.push("SHOAL_FAKE_GRACEFUL=1".into());
                }
                let env: Vec<&str> = env.iter().map(String::as_str).collect();
                assignment(&format!("t{i}"), &env, Running)
            })
            .collect();
        // Removed tasks never come back: Swarm never reassigns a task id.
        let mut gone = vec![false; TASKS];
        let desired_choices = [Ready, Running, Running, Complete, Shutdown, Remove];

        executor.apply(true, assignments[..TASKS / 2].to_vec(), vec![]);
        for round in 0..40 {
            let mut upsert = vec![];
            let mut removed = vec![];
            for _ in 0..100 {
                let i = rng.gen_range(0..TASKS);
                if gone[i] {
                    continue;
                }
                if rng.gen_bool(0.1) {
                    gone[i] = true;
                    removed.push(assignments[i].task_id.clone());
                } else {
                    assignments[i].desired_state =
                        desired_choices[rng.gen_range(0..desired_choices.len())];
                    upsert.push(assignments[i].clone());
                }
            }
            if round % 10 == 9 {
                // A reconnect: the full set of what is still assigned, a few dropped silently.
                for g in gone.iter_mut() {
                    if !*g && rng.gen_bool(0.05) {
                        *g = true;
                    }
                }
                let full: Vec<Assignment> = (0..TASKS)
                    .filter(|&i| !gone[i])
                    .map(|i| assignments[i].clone())
                    .collect();
                executor.apply(true, full, vec![]);
            } else {
                executor.apply(false, upsert, removed);
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..100))).await;
            if round % 10 == 5 {
                let (recorded, recovery) = table::read(&path).unwrap();
                assert_eq!(recovery.journal_dropped_bytes, 0, "seed {seed}");
                assert!(recorded.len() <= TASKS, "seed {seed}");
            }
        }
        let mid = executor.inner.table.io_stats();
        println!("seed {seed}: task table {mid:?}");
        // Fewer tasks than COMPACT_MIN: one compaction per COMPACT_MIN records, after the
        // one on open (the runs here write about 5,000).
        assert_eq!(
            mid.snapshots,
            1 + mid.journal_records / table::COMPACT_MIN,
            "seed {seed}: {mid:?}"
        );
        executor.apply(true, vec![], vec![]);
        tokio::time::sleep(Duration::from_secs(3600)).await;

        assert!(executor.statuses().is_empty(), "seed {seed}: all forgotten");
        assert_eq!(runtime.task_count(), 0, "seed {seed}: all removed");
        let (recorded, _) = table::read(&path).unwrap();
        assert!(
            recorded.is_empty(),
            "seed {seed}: the table forgot them all"
        );
        executor.shutdown().await;
        drop(executor);
        let reports = collector.await.unwrap();

        let mut by_task: HashMap<String, Vec<TaskState>> = HashMap::new();
        for report in reports {
            by_task
                .entry(report.task_id)
                .or_default()
                .push(report.status.state);
        }
        for (task_id, states) in &by_task {
            assert!(
                states.windows(2).all(|w| w[0] < w[1]),
                "seed {seed}: {task_id} went {states:?}"
            );
            assert!(
                states.last().unwrap().is_terminal(),
                "seed {seed}: {task_id} ended {states:?}"
            );
        }
        assert!(by_task.len() > TASKS / 2, "seed {seed}: most tasks ran");
        // The run is only worth something if it went through every kind of ending.
        for ending in [Complete, Failed, Rejected, Shutdown] {
            assert!(
                by_task.values().any(|s| s.contains(&ending)),
                "seed {seed}: no task ended {ending}"
            );
        }
    }
}
