//! Replicated services and replicated jobs: numbered slots, one running task per slot.

use std::collections::{BTreeMap, BTreeSet};

use proto::spec::{ServiceMode, TaskState};

use super::restart::{self, Restart};
use super::{death, is_runnable, Plan};
use crate::store::{Service, Task};

/// The tasks of each slot.
type Slots<'s, 'a> = BTreeMap<u64, &'s [&'a Task]>;

/// What a slot holds after deaths are handled.
enum SlotState {
    Runnable,
    /// A replacement is due now (created only if the slot is kept).
    RestartNow {
        restart_count: u64,
    },
    /// A restart is due later.
    RestartPending,
    /// Its last task ended and will not be restarted under the current spec.
    Finished,
    Empty,
}

pub fn plan(p: &mut Plan<'_>, service_id: &str) {
    let Some(s) = p.service(service_id) else {
        return;
    };
    let updating = s
        .update_status
        .as_ref()
        .is_some_and(|u| u.state.in_progress());
    // One vector of the service's tasks, in slot order, and a slice of it per slot (a
    // vector per slot cost a large service about 1 KB a slot each round).
    // Sorted as references: moving 100,000 tasks about was a fifth of a round.
    let owned = p.service_tasks_ref(service_id);
    let mut tasks: Vec<&Task> = owned.iter().map(|t| &**t).collect();
    tasks.sort_by_key(|t| t.slot);
    let slots: Slots<'_, '_> = tasks
        .chunk_by(|a, b| a.slot == b.slot)
        .map(|c| (c[0].slot, c))
        .collect();
    let mut states: BTreeMap<u64, SlotState> = BTreeMap::new();
    for (slot, tasks) in &slots {
        states.insert(*slot, settle_slot(p, &s, tasks, updating));
    }
    match s.spec.mode {
        ServiceMode::Replicated { replicas } => scale(p, &s, &slots, &states, replicas),
        ServiceMode::ReplicatedJob {
            max_concurrent,
            total_completions,
        } => job(p, &s, &slots, &states, max_concurrent, total_completions),
        _ => {}
    }
}

/// Handle the deaths in one slot and say what it holds now.
fn settle_slot(p: &mut Plan<'_>, s: &Service, tasks: &[&Task], updating: bool) -> SlotState {
    let mut runnable: Vec<&Task> = Vec::new();
    let mut latest_dead: Option<(&Task, super::Death)> = None;
    for t in tasks {
        if let Some(why) = death(t, p.data) {
            p.set_desired(t, TaskState::Shutdown);
            if latest_dead.is_none_or(|(d, _)| d.created_at_ms <= t.created_at_ms) {
                latest_dead = Some((t, why));
            }
        } else if is_runnable(t) {
            runnable.push(t);
        }
    }
    if !runnable.is_empty() {
        // Two runnable tasks in a slot outside an update (a start-first update interrupted,
        // a leader change mid-way): keep the newest.
        if runnable.len() > 1 && !updating {
            runnable.sort_by_key(|t| std::cmp::Reverse(t.created_at_ms));
            for t in &runnable[1..] {
                p.set_desired(t, TaskState::Shutdown);
            }
        }
        return SlotState::Runnable;
    }
    let Some((dead, why)) = latest_dead.or_else(|| {
        // Nothing died in this round: look at the newest task of the slot that ended earlier
        // (already shut down by an earlier round) to know whether a restart is pending.
        tasks
            .iter()
            .filter(|t| t.desired_state == TaskState::Shutdown && t.status.state.is_terminal())
            .max_by_key(|t| t.created_at_ms)
            .map(|t| {
                let why = if t.status.state == TaskState::Complete {
                    super::Death::Completed
                } else {
                    super::Death::Failed
                };
                (&**t, why)
            })
    }) else {
        return SlotState::Empty;
    };
    // Shut down by the orchestrator itself (scale down, update) rather than dead: not ours
    // to restart.
    if dead.desired_state > TaskState::Running
        && latest_dead.is_none()
        && dead.status.state == TaskState::Shutdown
    {
        return SlotState::Empty;
    }
    match restart::decide(&s.spec.task.restart, dead, why, p.now_ms) {
        Restart::Now { restart_count } => SlotState::RestartNow { restart_count },
        Restart::At(at) => {
            p.wake(&s.id, at);
            SlotState::RestartPending
        }
        Restart::Never if dead.spec_version == s.spec_version => SlotState::Finished,
        Restart::Never => SlotState::Empty,
    }
}

fn scale(
    p: &mut Plan<'_>,
    s: &Service,
    slots: &Slots<'_, '_>,
    states: &BTreeMap<u64, SlotState>,
    replicas: u64,
) {
    let occupied: Vec<u64> = states
        .iter()
        .filter(|(_, st)| !matches!(st, SlotState::Empty))
        .map(|(slot, _)| *slot)
        .collect();
    let n = occupied.len() as u64;
    let mut dropped: BTreeSet<u64> = BTreeSet::new();
    if n > replicas {
        // Drop restarts and finished slots first, then running slots on the nodes with the
        // most tasks of the service, highest slot first.
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for tasks in slots.values() {
            for t in tasks.iter().filter(|t| is_runnable(t)) {
                *per_node.entry(t.node_id.clone()).or_default() += 1;
            }
        }
        let mut order: Vec<(u8, usize, u64)> = occupied
            .iter()
            .map(|slot| {
                let runnable = matches!(states.get(slot), Some(SlotState::Runnable));
                let node_load = slots[slot]
                    .iter()
                    .filter(|t| is_runnable(t))
                    .map(|t| per_node.get(&t.node_id).copied().unwrap_or(0))
                    .max()
                    .unwrap_or(0);
                (u8::from(runnable), node_load, *slot)
            })
            .collect();
        order.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
        for (_, _, slot) in order.into_iter().take((n - replicas) as usize) {
            dropped.insert(slot);
            for t in slots[&slot]
                .iter()
                .filter(|t| t.desired_state <= TaskState::Running)
            {
                p.set_desired(t, TaskState::Shutdown);
            }
        }
    }
    for (slot, st) in states {
        if let SlotState::RestartNow { restart_count } = st {
            if !dropped.contains(slot) && p.create_task(s, *slot, "", *restart_count).is_none() {
                break;
            }
        }
    }
    // New slots stop at the cluster's per-service limit (a service stored before the limit
    // was lowered keeps its slots) and at the round's and cluster's budgets.
    let wanted = replicas.min(p.limits.max_replicas.max(n));
    if n < wanted {
        let taken: BTreeSet<u64> = occupied.iter().copied().collect();
        let free = (1..).filter(|i| !taken.contains(i));
        for slot in free.take(usize::try_from(wanted - n).unwrap_or(usize::MAX)) {
            if !p.room_for_new_task() || p.create_task(s, slot, "", 0).is_none() {
                break;
            }
        }
    }
}

fn job(
    p: &mut Plan<'_>,
    s: &Service,
    slots: &Slots<'_, '_>,
    states: &BTreeMap<u64, SlotState>,
    max_concurrent: u64,
    total: u64,
) {
    let done = |slot: &u64| {
        slots
            .get(slot)
            .is_some_and(|ts| ts.iter().any(|t| t.status.state == TaskState::Complete))
    };
    let active = states
        .values()
        .filter(|st| matches!(st, SlotState::Runnable))
        .count() as u64;
    let mut room = max_concurrent.saturating_sub(active);
    for slot in 1..=total {
        if room == 0 {
            break;
        }
        if done(&slot) {
            continue;
        }
        let (restart_count, new_slot) = match states.get(&slot) {
            None | Some(SlotState::Empty) => (0, true),
            Some(SlotState::RestartNow { restart_count }) => (*restart_count, false),
            Some(_) => continue,
        };
        if new_slot && !p.room_for_new_task() {
            break;
        }
        if p.create_task(s, slot, "", restart_count).is_none() {
            break;
        }
        room -= 1;
    }
}
