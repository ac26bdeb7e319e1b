//! Whether a service has converged after a change: one pure decision per poll.

use std::collections::BTreeMap;

use proto::api::{ServiceView, TaskView, UpdateStatusView};
use proto::spec::{ServiceMode, TaskState};

use super::render::short_id;

/// One line of progress: a slot of a replicated service, a node of a global one.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotLine {
    /// Stable identity: the slot number or the node id.
    pub key: String,
    /// What is shown: "2/5" or the short node id.
    pub label: String,
    pub state: TaskState,
    /// Why it is stuck or failed: the task's error, or a pending task's message.
    pub detail: String,
}

impl SlotLine {
    /// "2/5: running", "1/1: pending: no suitable node (1 node lacks memory)".
    pub fn text(&self) -> String {
        if self.detail.is_empty() {
            format!("{}: {}", self.label, self.state)
        } else {
            format!("{}: {}: {}", self.label, self.state, self.detail)
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Waiting,
    Converged,
    Failed(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub job: bool,
    /// Tasks up to date and running (jobs: completed).
    pub done: u64,
    pub total: u64,
    pub slots: Vec<SlotLine>,
    /// Something to say once (a rollback starting).
    pub note: Option<String>,
    pub verdict: Verdict,
}

impl Snapshot {
    pub fn overall_line(&self) -> String {
        if self.job {
            format!("job progress: {} out of {} complete", self.done, self.total)
        } else {
            format!(
                "overall progress: {} out of {} tasks",
                self.done, self.total
            )
        }
    }
}

fn in_progress(u: &UpdateStatusView) -> bool {
    u.state == "updating" || u.state == "rollback_started"
}

/// Decides, one poll at a time, whether a service has converged after a change we made.
#[derive(Clone, Debug)]
pub struct Watch {
    /// We asked for a rollback (a completed rollback is then success, not failure).
    rollback: bool,
    /// The update status the service had right after our change. A completed rollback equal to
    /// it predates our change (e.g. a scale after a rollback) and is no failure. A paused
    /// update is one however old (as Docker): the service would never converge.
    baseline: Option<UpdateStatusView>,
    rollback_noted: bool,
}

impl Watch {
    pub fn new(rollback: bool, baseline: Option<UpdateStatusView>) -> Self {
        Watch {
            rollback,
            baseline,
            rollback_noted: rollback,
        }
    }

    pub fn observe(&mut self, view: &ServiceView, tasks: &[TaskView]) -> Snapshot {
        let job = view.spec.mode.is_job();
        let global = matches!(view.spec.mode, ServiceMode::Global | ServiceMode::GlobalJob);
        // The newest task of each slot (node for global) that is meant to run.
        let mut newest: BTreeMap<(u64, String), &TaskView> = BTreeMap::new();
        for t in tasks {
            // READY: a stop-first update's new task, waiting for the old one to stop.
            if !job && !matches!(t.desired_state, TaskState::Ready | TaskState::Running) {
                continue;
            }
            if job && t.desired_state > TaskState::Complete && t.status.state != TaskState::Complete
            {
                continue;
            }
            let k = if global {
                (0, t.node_id.clone())
            } else {
                (t.slot, String::new())
            };
            match newest.get(&k) {
                Some(o) if o.created_at_ms > t.created_at_ms => {}
                _ => {
                    newest.insert(k, t);
                }
            }
        }
        let slots = newest
            .iter()
            .map(|((slot, node), t)| SlotLine {
                key: if global {
                    node.clone()
                } else {
                    slot.to_string()
                },
                label: if global {
                    short_id(node)
                } else {
                    format!("{slot}/{}", view.desired)
                },
                state: t.status.state,
                detail: if !t.status.err.is_empty() {
                    t.status.err.clone()
                } else if t.status.state == TaskState::Pending {
                    t.status.message.clone()
                } else {
                    String::new()
                },
            })
            .collect();

        let status = view.update_status.as_ref();
        let stale = status.is_some() && status == self.baseline.as_ref();
        let mut note = None;
        if let Some(u) = status {
            if u.state == "rollback_started" && !self.rollback_noted {
                self.rollback_noted = true;
                note = Some(format!("rollback: {}", u.message));
            }
        }
        let failure = status.and_then(|u| match u.state.as_str() {
            "paused" | "rollback_paused" => Some(format!("update paused: {}", u.message)),
            "rollback_completed" if !self.rollback && !stale => {
                Some(format!("update rolled back: {}", u.message))
            }
            _ => None,
        });

        let (done, converged) = if job {
            (view.completed, view.completed >= view.desired)
        } else {
            let current = tasks
                .iter()
                .filter(|t| {
                    t.desired_state == TaskState::Running
                        && t.status.state == TaskState::Running
                        && t.spec == view.spec.task
                })
                .count() as u64;
            let all_current = tasks
                .iter()
                .filter(|t| t.desired_state == TaskState::Running)
                .all(|t| t.status.state == TaskState::Running && t.spec == view.spec.task);
            let updating = view.update_status.as_ref().is_some_and(in_progress);
            (
                current.min(view.desired),
                view.running == view.desired && all_current && !updating,
            )
        };
        // An update rolled back is told once the rollback has converged: the manager marks
        // it completed when the last batch is started, not when every slot runs again.
        let rolled_back = status.is_some_and(|u| u.state == "rollback_completed");
        let verdict = match failure {
            Some(_) if rolled_back && !converged => Verdict::Waiting,
            Some(m) => Verdict::Failed(m),
            None if converged => Verdict::Converged,
            None => Verdict::Waiting,
        };
        Snapshot {
            job,
            done,
            total: view.desired,
            slots,
            note,
            verdict,
        }
    }
}
