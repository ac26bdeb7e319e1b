//! Rolling updates and rollbacks.
//!
//! A task is dirty when its spec differs from the service's. While an update is in progress,
//! dirty slots are replaced `parallelism` at a time (0: all at once), `delay` after the
//! previous batch is running; stop-first shuts the old task down as the new one is created
//! (placed and prepared, but started only once the old one has stopped), start-first keeps it
//! until the new one runs. A new task that fails — or does not reach
//! RUNNING within the task deadline, where Swarm would wait forever — counts as a failure;
//! past `max_failure_ratio` the failure action applies (pause, continue, or roll back to the
//! previous spec). The update completes when no slot is dirty and the last new task has run
//! for the monitor period.

use std::collections::BTreeMap;

use proto::spec::{FailureAction, ServiceMode, TaskState, UpdateOrder};

use super::restart::ms_i64;
use super::{is_runnable, Plan};
use crate::store::{Task, UpdateState};

fn key(t: &Task) -> String {
    if t.node_id.is_empty() || t.slot != 0 {
        format!("slot {}", t.slot)
    } else {
        format!("node {}", t.node_id)
    }
}

pub fn plan(p: &mut Plan<'_>, service_id: &str) {
    let Some(mut s) = p.service(service_id) else {
        return;
    };
    let Some(mut status) = s.update_status.clone() else {
        return;
    };
    if !status.state.in_progress() {
        return;
    }
    let rollback = status.state.is_rollback();
    let cfg = if rollback {
        s.spec.rollback.clone()
    } else {
        s.spec.update.clone()
    };
    let now = p.now_ms;
    let tasks = p.service_tasks_ref(service_id);
    let mut by_key: BTreeMap<String, Vec<&Task>> = BTreeMap::new();
    for t in &tasks {
        if is_runnable(t) {
            by_key.entry(key(t)).or_default().push(t);
        }
    }
    // A task is current when it runs the spec and sits on the routing mesh iff the service
    // publishes ingress ports (ports added or removed move tasks on or off it).
    let on_mesh = crate::allocator::uses_ingress(&s.spec.endpoint.ports)
        && p.data.ingress_network().is_some();
    let clean =
        |t: &Task| *t.spec == s.spec.task && t.networks.iter().any(|n| n.ingress) == on_mesh;
    let started = status.started_ms;

    // Failures among the tasks this update started.
    let mut failures: Vec<&Task> = Vec::new();
    for t in tasks
        .iter()
        .filter(|t| clean(t) && t.created_at_ms >= started)
    {
        let failed = matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
            && t.status.timestamp_ms.saturating_sub(t.created_at_ms)
                <= ms_i64(cfg.task_deadline_ms.saturating_add(cfg.monitor_ms)).saturating_add(1);
        let too_slow = cfg.task_deadline_ms > 0
            && t.desired_state <= TaskState::Running
            && t.status.state < TaskState::Running
            && now.saturating_sub(t.created_at_ms) > ms_i64(cfg.task_deadline_ms);
        if too_slow {
            // Give up on it; the orchestrator fills the slot again.
            p.set_desired(t, TaskState::Shutdown);
        }
        if failed || too_slow {
            failures.push(t);
        }
    }
    let total = match s.spec.mode {
        ServiceMode::Replicated { replicas } => replicas.max(1),
        _ => (by_key.len() as u64).max(1),
    };
    if let Some(first) = failures.first() {
        let ratio = failures.len() as f64 / total as f64;
        if ratio > cfg.max_failure_ratio {
            let why = format!(
                "update {} due to failure or early termination of task {}",
                match (cfg.failure_action, rollback) {
                    (FailureAction::Rollback, false) => "rolled back",
                    (FailureAction::Continue, _) => "continued",
                    _ => "paused",
                },
                first.id
            );
            match (cfg.failure_action, rollback) {
                (FailureAction::Continue, _) => {}
                (FailureAction::Rollback, false) => {
                    if let Some(prev) = s.previous_spec.take() {
                        s.previous_spec = Some(std::mem::replace(&mut s.spec, prev));
                        s.spec_version += 1;
                        status.state = UpdateState::RollbackStarted;
                        status.started_ms = now;
                        status.message = why;
                        s.update_status = Some(status);
                        s.updated_at_ms = now;
                        p.update_service(s);
                        return;
                    }
                    status.state = UpdateState::Paused;
                    status.message = why;
                    s.update_status = Some(status);
                    p.update_service(s);
                    return;
                }
                _ => {
                    status.state = if rollback {
                        UpdateState::RollbackPaused
                    } else {
                        UpdateState::Paused
                    };
                    status.message = why;
                    s.update_status = Some(status);
                    p.update_service(s);
                    return;
                }
            }
        }
    }

    // Start-first: retire old tasks whose replacement runs.
    for tasks in by_key.values() {
        let new_running = tasks
            .iter()
            .any(|t| clean(t) && t.status.state == TaskState::Running);
        if new_running {
            for t in tasks.iter().filter(|t| !clean(t)) {
                p.set_desired(t, TaskState::Shutdown);
            }
        }
    }

    let dirty: Vec<&String> = by_key
        .iter()
        .filter(|(_, ts)| ts.iter().any(|t| !clean(t)) && !ts.iter().any(|t| clean(t)))
        .map(|(k, _)| k)
        .collect();
    let in_flight = by_key
        .values()
        .filter(|ts| {
            ts.iter()
                .any(|t| clean(t) && t.status.state < TaskState::Running)
                || (ts.iter().any(|t| clean(t)) && ts.iter().any(|t| !clean(t)))
        })
        .count() as u64;
    let last_running = tasks
        .iter()
        .filter(|t| clean(t) && t.created_at_ms >= started && t.status.state == TaskState::Running)
        .map(|t| t.status.timestamp_ms)
        .max();

    if dirty.is_empty() {
        let monitor_end = last_running.map(|at| at.saturating_add(ms_i64(cfg.monitor_ms)));
        let monitored = monitor_end.is_none_or(|end| now >= end);
        if in_flight == 0 && !monitored {
            // Complete as the monitor period ends, not at the next tick.
            if let Some(end) = monitor_end {
                p.wake(service_id, end);
            }
        }
        if in_flight == 0 && monitored {
            status.state = if rollback {
                UpdateState::RollbackCompleted
            } else {
                UpdateState::Completed
            };
            status.completed_ms = now;
            status.message = if rollback {
                "rollback completed".into()
            } else {
                "update completed".into()
            };
            s.update_status = Some(status);
            p.update_service(s);
        }
        return;
    }
    if in_flight == 0 && cfg.delay_ms > 0 {
        if let Some(at) = last_running {
            if now < at.saturating_add(ms_i64(cfg.delay_ms)) {
                p.wake(service_id, at.saturating_add(ms_i64(cfg.delay_ms)));
                return;
            }
        }
    }
    let room = if cfg.parallelism == 0 {
        u64::MAX
    } else {
        cfg.parallelism.saturating_sub(in_flight)
    };
    for k in dirty.into_iter().take(room.min(usize::MAX as u64) as usize) {
        let olds = &by_key[k];
        let Some(old) = olds.first() else { continue };
        let (slot, node) = if old.slot == 0 && !old.node_id.is_empty() {
            (0, old.node_id.clone())
        } else {
            (old.slot, String::new())
        };
        let Some(mut new) = p.create_task(&s, slot, &node, 0) else {
            break;
        };
        if cfg.order == UpdateOrder::StopFirst {
            for t in olds {
                p.set_desired(t, TaskState::Shutdown);
            }
            // Placed and prepared (image pulled) at once, started by `promote` only once the
            // old task has stopped, as Swarm does.
            new.desired_state = TaskState::Ready;
            p.update_task(new);
        }
    }
}

/// Start (desired READY → RUNNING) the tasks a stop-first update created, once no other task
/// of their slot (node, for global services) is still alive: ended, never placed, or on a node
/// that is down or gone. Past the old task's stop grace period and `STOP_MARGIN_MS` more,
/// the new task starts anyway, so a stop that is never confirmed cannot stall the service.
pub fn promote(p: &mut Plan<'_>, service_id: &str) {
    const STOP_MARGIN_MS: i64 = 30_000;
    const DEFAULT_GRACE_MS: u64 = 10_000;
    let waiting = |t: &Task| t.desired_state == TaskState::Ready && !t.status.state.is_terminal();
    if !p.any_service_task(service_id, waiting) {
        return;
    }
    let tasks = p.service_tasks_ref(service_id);
    let alive = |t: &Task| {
        !t.status.state.is_terminal()
            && t.status.state >= TaskState::Assigned
            && p.node(&t.node_id)
                .is_some_and(|n| n.state != crate::store::NodeState::Down)
    };
    let mut start = Vec::new();
    for t in tasks.iter().filter(|t| waiting(t)) {
        let waiting_on_old = tasks.iter().any(|o| {
            let grace = match o.spec.stop_grace_period_ms {
                0 => DEFAULT_GRACE_MS,
                ms => ms,
            };
            let give_up = t
                .created_at_ms
                .saturating_add(ms_i64(grace))
                .saturating_add(STOP_MARGIN_MS);
            o.id != t.id
                && key(o) == key(t)
                && o.desired_state > TaskState::Running
                && alive(o)
                && p.now_ms < give_up
        });
        if !waiting_on_old {
            start.push(t.clone());
        }
    }
    for t in start {
        p.set_desired(&t, TaskState::Running);
    }
}
