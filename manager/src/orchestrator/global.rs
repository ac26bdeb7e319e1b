//! Global services and global jobs: one task per eligible node.

use std::collections::BTreeMap;

use proto::spec::{ServiceMode, TaskState};

use super::restart::{self, Restart};
use super::{death, is_runnable, Plan};
use crate::store::{Availability, Node, NodeState, Task};

/// Whether a node may run new tasks of a service with these constraints.
pub fn eligible(node: &Node, constraints: &[String]) -> bool {
    node.state == NodeState::Ready
        && node.availability == Availability::Active
        && crate::scheduler::constraint::parse_all(constraints)
            .is_ok_and(|cs| cs.iter().all(|c| c.matches(node)))
}

pub fn plan(p: &mut Plan<'_>, service_id: &str) {
    let Some(s) = p.service(service_id) else {
        return;
    };
    let job = matches!(s.spec.mode, ServiceMode::GlobalJob);
    let mut by_node: BTreeMap<String, Vec<Task>> = BTreeMap::new();
    for t in p.service_tasks(service_id) {
        by_node.entry(t.node_id.clone()).or_default().push(t);
    }
    let nodes: Vec<&Node> = p.data.nodes.values().collect();
    for node in nodes {
        let tasks = by_node.remove(&node.id).unwrap_or_default();
        let ok = eligible(node, &s.spec.task.placement.constraints);
        let keep_running =
            ok || node.availability == Availability::Pause && node.state == NodeState::Ready;
        let mut has_runnable = false;
        let mut latest_dead = None;
        for t in &tasks {
            if let Some(why) = death(t, p.data) {
                p.set_desired(t, TaskState::Shutdown);
                if latest_dead
                    .as_ref()
                    .is_none_or(|(d, _): &(Task, _)| d.created_at_ms <= t.created_at_ms)
                {
                    latest_dead = Some((t.clone(), why));
                }
            } else if is_runnable(t) {
                if keep_running {
                    has_runnable = true;
                } else {
                    p.set_desired(t, TaskState::Shutdown);
                }
            }
        }
        if !ok || has_runnable {
            continue;
        }
        if job && tasks.iter().any(|t| t.status.state == TaskState::Complete) {
            continue;
        }
        let previous = latest_dead.or_else(|| {
            tasks
                .iter()
                .filter(|t| t.status.state.is_terminal() && t.status.state != TaskState::Shutdown)
                .max_by_key(|t| t.created_at_ms)
                .map(|t| {
                    let why = if t.status.state == TaskState::Complete {
                        super::Death::Completed
                    } else {
                        super::Death::Failed
                    };
                    (t.clone(), why)
                })
        });
        match previous {
            None => {
                if p.room_for_new_task() {
                    let _ = p.create_task(&s, 0, &node.id, 0);
                }
            }
            Some((dead, why)) => {
                match restart::decide(&s.spec.task.restart, &dead, why, p.now_ms) {
                    Restart::Now { restart_count } => {
                        let _ = p.create_task(&s, 0, &node.id, restart_count);
                    }
                    Restart::Never if dead.spec_version != s.spec_version => {
                        let _ = p.create_task(&s, 0, &node.id, 0);
                    }
                    Restart::At(at) => p.wake(&s.id, at),
                    Restart::Never => {}
                }
            }
        }
    }
    // Tasks on nodes that no longer exist.
    for tasks in by_node.values() {
        for t in tasks {
            if t.desired_state <= TaskState::Running {
                p.set_desired(t, TaskState::Shutdown);
            }
        }
    }
}
