//! The container runtime as the executor sees it: five verbs per task, behind one trait, so the
//! task state machine never knows whether it drives real containers or pretend ones.
//!
//! ```text
//!   prepare ──▶ start ──▶ wait ─────────────▶ exit code
//!                  └────▶ stop (signal, then kill after grace) ─▶ wait ─▶ exit code
//!   remove: forget the task once it is terminal (idempotent)
//! ```
//!
//! [`FakeRuntime`] runs no processes at all: each task is a few words of memory, so a single
//! process can pretend to run thousands of them (lab tests, the simulation, the benchmark). Its
//! behaviour is steered per task through the task's environment (`SHOAL_FAKE_*`, see
//! [`FakeRuntime`]) so that a test can make one task slow, failing or short-lived without any
//! side channel into the worker.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use proto::spec::Assignment;
use tokio::sync::watch;
use tokio::time::Instant;

/// The runtime step that failed, for error context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeOp {
    Prepare,
    Start,
    Wait,
    Stop,
    Remove,
    Exec,
}

impl fmt::Display for RuntimeOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeOp::Prepare => "prepare",
            RuntimeOp::Start => "start",
            RuntimeOp::Wait => "wait",
            RuntimeOp::Stop => "stop",
            RuntimeOp::Remove => "remove",
            RuntimeOp::Exec => "exec",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The task was never prepared, or was removed already.
    #[error(
        "task {task_id}: {op}: the runtime does not know this task (never prepared, or removed)"
    )]
    UnknownTask { task_id: String, op: RuntimeOp },
    /// The runtime refused or could not do the step; `reason` says why in the runtime's words.
    #[error("task {task_id}: {op} failed: {reason}")]
    Failed {
        task_id: String,
        op: RuntimeOp,
        reason: String,
    },
    /// A file or process operation of the runtime failed.
    #[error("task {task_id}: {op}: {context}: {source}")]
    Io {
        task_id: String,
        op: RuntimeOp,
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// The error as `service ps` shows it in its ERROR column, next to the task's id already:
    /// the runtime's own words for a refused step (e.g. the registry's `manifest unknown`).
    pub fn user_message(&self) -> String {
        match self {
            RuntimeError::Failed { reason, .. } => reason.clone(),
            RuntimeError::Io {
                op,
                context,
                source,
                ..
            } => format!("{op}: {context}: {source}"),
            RuntimeError::UnknownTask { op, .. } => {
                format!("{op}: the runtime does not know this task")
            }
        }
    }
}

/// A container runtime, seen one task at a time.
///
/// Every method may be called concurrently for different tasks. The executor calls them in the
/// order `prepare`, `start`, `wait`/`stop`, `remove`, and may skip steps: a task shut down before
/// it started is never started, and `remove` comes last in every case.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Pull/unpack/create whatever the task needs; no process yet.
    ///
    /// The executor drops this future when the task is shut down while it is being prepared
    /// (an image pull can take minutes); whatever was left half done is cleaned up by `remove`.
    async fn prepare(&self, task: &Assignment) -> Result<(), RuntimeError>;
    /// Start the task's process.
    async fn start(&self, task_id: &str) -> Result<(), RuntimeError>;
    /// Wait until the process exits; returns its exit code. Must be cancel-safe to drop, and
    /// may be called again after the process exited (it then returns the same code at once).
    async fn wait(&self, task_id: &str) -> Result<i32, RuntimeError>;
    /// Send the stop signal, then kill after `grace`. A process that already exited, or a task
    /// that was prepared but never started, is left as it is.
    async fn stop(&self, task_id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Forget everything about the task (after it is terminal). Succeeds for a task the runtime
    /// does not know, so that it can be called whatever happened before.
    async fn remove(&self, task_id: &str) -> Result<(), RuntimeError>;
    /// The task's log file, if this runtime keeps one. One line per line the container wrote:
    /// `<RFC 3339 UTC timestamp with nanoseconds> <stdout|stderr> <text>`.
    fn log_path(&self, _task_id: &str) -> Option<std::path::PathBuf> {
        None
    }
    /// The managers removed the task from their history: drop what is kept of it after its
    /// removal (its log), now or when it is removed later. (No default: a runtime that wraps
    /// another must pass it on.)
    fn forget(&self, task_id: &str);
    /// The tasks this runtime still has from an earlier run of the daemon (live restore),
    /// ordered by task id. Called once, before the first assignments are applied.
    async fn restore(&self) -> Vec<Restored> {
        Vec::new()
    }
    /// Why the task's process ended, in plain words, when there is more to say than its exit
    /// code (`OOM killed: memory limit 64MiB exceeded (exit 137)`, `container unhealthy: …`).
    async fn exit_detail(&self, _task_id: &str) -> Option<String> {
        None
    }
    /// The full command line that runs `cmd` inside the task's container (the CLI runs it
    /// with inherited stdio).
    fn exec_argv(&self, task_id: &str, _cmd: &[String]) -> Result<Vec<String>, RuntimeError> {
        Err(RuntimeError::Failed {
            task_id: task_id.to_string(),
            op: RuntimeOp::Exec,
            reason: "exec is not supported by this runtime".into(),
        })
    }
}

/// A task found by [`Runtime::restore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub task_id: String,
    /// The assignment it was prepared from (secret and config data left out).
    pub assignment: Assignment,
    pub state: RestoredState,
}

/// Where a restored task stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoredState {
    /// Prepared (or created) but never started.
    Created,
    /// Its process runs; `pid` is the container's init as the host sees it.
    Running { pid: i32 },
    /// Its process exited with this code (possibly while the daemon was down).
    Exited(i32),
}

/// Environment knobs of [`FakeRuntime`].
pub const FAKE_START_MS: &str = "SHOAL_FAKE_START_MS";
pub const FAKE_FAIL: &str = "SHOAL_FAKE_FAIL";
pub const FAKE_EXIT_AFTER_MS: &str = "SHOAL_FAKE_EXIT_AFTER_MS";
pub const FAKE_EXIT_CODE: &str = "SHOAL_FAKE_EXIT_CODE";
pub const FAKE_GRACEFUL: &str = "SHOAL_FAKE_GRACEFUL";

/// Exit code of a process killed by SIGKILL, as shells and Docker report it (128 + 9).
pub const KILLED_EXIT_CODE: i32 = 137;

/// A runtime without processes, for tests, the simulation and benchmarks.
///
/// Per task, driven by the task's env (`KEY=VALUE`, the last entry of a key wins):
/// - `SHOAL_FAKE_START_MS=N`: prepare and start together take N ms (half each); default: the
///   delay given to [`FakeRuntime::new`];
/// - `SHOAL_FAKE_FAIL=prepare|start`: that step fails (after its delay);
/// - `SHOAL_FAKE_EXIT_AFTER_MS=N`, `SHOAL_FAKE_EXIT_CODE=C` (default 0): the process exits by
///   itself N ms after start with code C; without it, it runs until stopped;
/// - `stop` ends the process at once with code 137, or 0 with `SHOAL_FAKE_GRACEFUL=1`.
///
/// A malformed knob makes `prepare` fail, so that a typo in a test shows up as a rejected task
/// instead of a silently different behaviour.
///
/// Every call is recorded as `"<op> <task id>"` (e.g. `"prepare t1"`) and can be read with
/// [`FakeRuntime::calls`].
pub struct FakeRuntime {
    default_start_delay: Duration,
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    tasks: HashMap<String, FakeTask>,
    calls: Vec<String>,
    /// What `restore` reports (see [`FakeRuntime::preload`]).
    restored: Vec<Restored>,
}

struct FakeTask {
    knobs: Knobs,
    /// Waiters subscribe to it; dropping it (on remove) wakes them.
    process: watch::Sender<Process>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Process {
    Created,
    /// `exits_at`: when and with which code it ends by itself. Kept as a deadline instead of a
    /// timer task so that an idle fake task costs no tokio task at all; readers derive the
    /// exit from the clock (see [`Process::at`]).
    Running {
        exits_at: Option<(Instant, i32)>,
    },
    Exited(i32),
}

impl Process {
    /// What the process is at `now`, counting a self-exit whose time has come.
    fn at(self, now: Instant) -> Process {
        match self {
            Process::Running {
                exits_at: Some((at, code)),
            } if now >= at => Process::Exited(code),
            other => other,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum FailAt {
    #[default]
    Nowhere,
    Prepare,
    Start,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Knobs {
    start_delay: Option<Duration>,
    fail: FailAt,
    exit_after: Option<Duration>,
    exit_code: i32,
    graceful: bool,
}

impl Knobs {
    fn from_env(env: &[String]) -> Result<Knobs, String> {
        let mut knobs = Knobs::default();
        for entry in env {
            let Some((key, value)) = entry.split_once('=') else {
                continue;
            };
            let millis = || {
                value
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| {
                        format!("fake runtime: {key}={value} is not a number of milliseconds")
                    })
            };
            match key {
                FAKE_START_MS => knobs.start_delay = Some(millis()?),
                FAKE_EXIT_AFTER_MS => knobs.exit_after = Some(millis()?),
                FAKE_EXIT_CODE => {
                    knobs.exit_code = value
                        .parse()
                        .map_err(|_| format!("fake runtime: {key}={value} is not an exit code"))?
                }
                FAKE_FAIL => {
                    knobs.fail = match value {
                        "prepare" => FailAt::Prepare,
                        "start" => FailAt::Start,
                        _ => {
                            return Err(format!(
                                "fake runtime: {key}={value}: expected prepare or start"
                            ))
                        }
                    }
                }
                FAKE_GRACEFUL => knobs.graceful = value == "1",
                _ => {}
            }
        }
        Ok(knobs)
    }
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime::new(Duration::ZERO)
    }
}

impl FakeRuntime {
    /// `default_start_delay`: how long prepare + start take for a task without
    /// `SHOAL_FAKE_START_MS` (0 for benchmarks; some tens of ms make lab tests see each state).
    pub fn new(default_start_delay: Duration) -> FakeRuntime {
        FakeRuntime {
            default_start_delay,
            state: Mutex::new(FakeState::default()),
        }
    }

    /// Every call so far, in order, as `"<op> <task id>"`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Forget the recorded calls (long runs that only look at recent ones).
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// How many tasks the runtime holds (prepared and not removed): a leak check for tests.
    pub fn task_count(&self) -> usize {
        self.lock().tasks.len()
    }

    /// Pretend an earlier run of the daemon left these tasks: they are known at once and
    /// `restore` reports them (restart tests).
    pub fn preload(&self, restored: Vec<Restored>) {
        let mut state = self.lock();
        for task in &restored {
            let knobs = Knobs::from_env(&task.assignment.spec.env).unwrap_or_default();
            let process = match task.state {
                RestoredState::Created => Process::Created,
                RestoredState::Running { .. } => Process::Running { exits_at: None },
                RestoredState::Exited(code) => Process::Exited(code),
            };
            state.tasks.insert(
                task.task_id.clone(),
                FakeTask {
                    knobs,
                    process: watch::Sender::new(process),
                },
            );
        }
        state.restored = restored;
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // The state stays consistent across a panic (every update is a single assignment), so
        // a poisoned lock is still good to use.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start_delay(&self, knobs: &Knobs) -> Duration {
        knobs.start_delay.unwrap_or(self.default_start_delay)
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    /// Keeps nothing of removed tasks.
    fn forget(&self, _: &str) {}
    async fn prepare(&self, task: &Assignment) -> Result<(), RuntimeError> {
        let task_id = task.task_id.as_str();
        self.lock().calls.push(format!("prepare {task_id}"));
        let failed = |reason: String| RuntimeError::Failed {
            task_id: task_id.to_string(),
            op: RuntimeOp::Prepare,
            reason,
        };
        let knobs = Knobs::from_env(&task.spec.env).map_err(failed)?;
        // The task is registered only once its delay is over: a prepare dropped half way
        // leaves nothing behind, as the trait allows.
        tokio::time::sleep(self.start_delay(&knobs) / 2).await;
        if knobs.fail == FailAt::Prepare {
            return Err(failed("fake runtime: image pull failed".into()));
        }
        let mut state = self.lock();
        state
            .tasks
            .entry(task_id.to_string())
            .or_insert_with(|| FakeTask {
                knobs,
                process: watch::Sender::new(Process::Created),
            });
        Ok(())
    }

    async fn start(&self, task_id: &str) -> Result<(), RuntimeError> {
        let knobs = {
            let mut state = self.lock();
            state.calls.push(format!("start {task_id}"));
            match state.tasks.get(task_id) {
                Some(task) => task.knobs,
                None => return Err(unknown(task_id, RuntimeOp::Start)),
            }
        };
        let failed = |reason: &str| RuntimeError::Failed {
            task_id: task_id.to_string(),
            op: RuntimeOp::Start,
            reason: reason.to_string(),
        };
        let delay = self.start_delay(&knobs);
        tokio::time::sleep(delay - delay / 2).await;
        if knobs.fail == FailAt::Start {
            return Err(failed("fake runtime: start failed"));
        }
        let state = self.lock();
        let Some(task) = state.tasks.get(task_id) else {
            return Err(unknown(task_id, RuntimeOp::Start));
        };
        let exits_at = knobs
            .exit_after
            .map(|after| (Instant::now() + after, knobs.exit_code));
        let started = task.process.send_if_modified(|process| {
            if *process != Process::Created {
                return false;
            }
            *process = Process::Running { exits_at };
            true
        });
        if started {
            Ok(())
        } else {
            Err(failed("fake runtime: already started"))
        }
    }

    async fn wait(&self, task_id: &str) -> Result<i32, RuntimeError> {
        let mut process = {
            let mut state = self.lock();
            state.calls.push(format!("wait {task_id}"));
            match state.tasks.get(task_id) {
                Some(task) => task.process.subscribe(),
                None => return Err(unknown(task_id, RuntimeOp::Wait)),
            }
        };
        // Only reads: dropping this future at any await changes nothing.
        loop {
            let current = *process.borrow_and_update();
            let changed = match current.at(Instant::now()) {
                Process::Exited(code) => return Ok(code),
                Process::Running {
                    exits_at: Some((at, code)),
                } => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => return Ok(code),
                        changed = process.changed() => changed,
                    }
                }
                Process::Running { exits_at: None } | Process::Created => process.changed().await,
            };
            if changed.is_err() {
                return Err(RuntimeError::Failed {
                    task_id: task_id.to_string(),
                    op: RuntimeOp::Wait,
                    reason: "fake runtime: task removed while waiting for it".into(),
                });
            }
        }
    }

    async fn stop(&self, task_id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        state.calls.push(format!("stop {task_id}"));
        let Some(task) = state.tasks.get(task_id) else {
            return Err(unknown(task_id, RuntimeOp::Stop));
        };
        let code = if task.knobs.graceful {
            0
        } else {
            KILLED_EXIT_CODE
        };
        let now = Instant::now();
        task.process
            .send_if_modified(|process| match process.at(now) {
                // Pin a self-exit that already happened so the code cannot change later.
                Process::Exited(natural) => {
                    let changed = *process != Process::Exited(natural);
                    *process = Process::Exited(natural);
                    changed
                }
                Process::Running { .. } => {
                    *process = Process::Exited(code);
                    true
                }
                Process::Created => false,
            });
        Ok(())
    }

    async fn remove(&self, task_id: &str) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        state.calls.push(format!("remove {task_id}"));
        state.tasks.remove(task_id);
        Ok(())
    }

    async fn restore(&self) -> Vec<Restored> {
        let mut state = self.lock();
        state.calls.push("restore".into());
        std::mem::take(&mut state.restored)
    }
}

fn unknown(task_id: &str, op: RuntimeOp) -> RuntimeError {
    RuntimeError::UnknownTask {
        task_id: task_id.to_string(),
        op,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::spec::{TaskSpec, TaskState};

    fn task(id: &str, env: &[&str]) -> Assignment {
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
            desired_state: TaskState::Running,
        }
    }

    #[test]
    fn knobs_parse_and_last_entry_wins() {
        let env: Vec<String> = [
            "PATH=/bin",
            "SHOAL_FAKE_START_MS=5",
            "SHOAL_FAKE_START_MS=7",
            "SHOAL_FAKE_FAIL=start",
            "SHOAL_FAKE_EXIT_AFTER_MS=100",
            "SHOAL_FAKE_EXIT_CODE=-2",
            "SHOAL_FAKE_GRACEFUL=1",
            "NOEQUALS",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let knobs = Knobs::from_env(&env).unwrap();
        assert_eq!(
            knobs,
            Knobs {
                start_delay: Some(Duration::from_millis(7)),
                fail: FailAt::Start,
                exit_after: Some(Duration::from_millis(100)),
                exit_code: -2,
                graceful: true,
            }
        );
        let err = Knobs::from_env(&["SHOAL_FAKE_FAIL=pull".to_string()]).unwrap_err();
        assert!(err.contains("expected prepare or start"), "{err}");
        let err = Knobs::from_env(&["SHOAL_FAKE_START_MS=soon".to_string()]).unwrap_err();
        assert!(err.contains("SHOAL_FAKE_START_MS=soon"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn start_delay_is_split_over_prepare_and_start() {
        let rt = FakeRuntime::new(Duration::from_millis(50));
        let t0 = Instant::now();
        rt.prepare(&task("t1", &["SHOAL_FAKE_START_MS=100"]))
            .await
            .unwrap();
        rt.start("t1").await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        let t0 = Instant::now();
        rt.prepare(&task("t2", &[])).await.unwrap();
        rt.start("t2").await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_name_the_step() {
        let rt = FakeRuntime::default();
        let err = rt
            .prepare(&task("t1", &["SHOAL_FAKE_FAIL=prepare"]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("fake runtime: image pull failed"));
        assert!(err.to_string().contains("t1"));
        assert_eq!(rt.task_count(), 0);

        rt.prepare(&task("t2", &["SHOAL_FAKE_FAIL=start"]))
            .await
            .unwrap();
        let err = rt.start("t2").await.unwrap_err();
        assert!(err.to_string().contains("fake runtime: start failed"));

        let err = rt.start("nope").await.unwrap_err();
        assert!(matches!(err, RuntimeError::UnknownTask { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn exits_by_itself_after_the_configured_time() {
        let rt = FakeRuntime::default();
        rt.prepare(&task(
            "t1",
            &["SHOAL_FAKE_EXIT_AFTER_MS=300", "SHOAL_FAKE_EXIT_CODE=3"],
        ))
        .await
        .unwrap();
        rt.start("t1").await.unwrap();
        let t0 = Instant::now();
        assert_eq!(rt.wait("t1").await.unwrap(), 3);
        assert_eq!(t0.elapsed(), Duration::from_millis(300));
        // Exited stays exited: a late stop does not turn it into a kill.
        rt.stop("t1", Duration::from_secs(1)).await.unwrap();
        assert_eq!(rt.wait("t1").await.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_kills_or_ends_gracefully_and_wakes_waiters() {
        let rt = std::sync::Arc::new(FakeRuntime::default());
        rt.prepare(&task("t1", &[])).await.unwrap();
        rt.prepare(&task("t2", &["SHOAL_FAKE_GRACEFUL=1"]))
            .await
            .unwrap();
        rt.start("t1").await.unwrap();
        rt.start("t2").await.unwrap();
        let waiter = {
            let rt = rt.clone();
            tokio::spawn(async move { rt.wait("t1").await })
        };
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!waiter.is_finished(), "runs until stopped");
        rt.stop("t1", Duration::from_secs(10)).await.unwrap();
        rt.stop("t2", Duration::from_secs(10)).await.unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), KILLED_EXIT_CODE);
        assert_eq!(rt.wait("t2").await.unwrap(), 0);
        rt.remove("t1").await.unwrap();
        rt.remove("t1").await.unwrap();
        assert_eq!(
            rt.calls(),
            [
                "prepare t1",
                "prepare t2",
                "start t1",
                "start t2",
                "wait t1",
                "stop t1",
                "stop t2",
                "wait t2",
                "remove t1",
                "remove t1"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn remove_wakes_a_waiter_with_an_error() {
        let rt = std::sync::Arc::new(FakeRuntime::default());
        rt.prepare(&task("t1", &[])).await.unwrap();
        let waiter = {
            let rt = rt.clone();
            tokio::spawn(async move { rt.wait("t1").await })
        };
        tokio::task::yield_now().await;
        rt.remove("t1").await.unwrap();
        assert!(waiter.await.unwrap().is_err());
        assert_eq!(rt.task_count(), 0);
    }
}
