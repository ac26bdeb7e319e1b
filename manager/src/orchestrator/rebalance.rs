//! Rebalancing (cluster setting `rebalance_on_join`): when an eligible node runs at least two
//! fewer tasks of a replicated service than another — a node joined, came back, or was
//! undrained — move tasks from the fullest nodes, `update.parallelism` at a time, one batch
//! after the previous has settled. Swarm never does this (moby#24103).
//!
//! A moved task is replaced in its slot stop-first, unplaced; the scheduler puts the
//! replacement on the node with the fewest tasks of the service. Services with resource
//! reservations are left alone: the scheduler might not be able to use the emptier node, and
//! moving tasks back and forth would be worse than an uneven spread.

use std::collections::BTreeMap;

use proto::spec::{ServiceMode, TaskState};

use super::global::eligible;
use super::{is_runnable, Plan};

pub fn plan(p: &mut Plan<'_>, service_id: &str) {
    if !p.data.cluster.as_ref().is_some_and(|c| c.rebalance_on_join) {
        return;
    }
    let Some(s) = p.service(service_id) else {
        return;
    };
    if !matches!(s.spec.mode, ServiceMode::Replicated { .. })
        || s.update_status
            .as_ref()
            .is_some_and(|u| u.state.in_progress())
        || s.spec.task.resources.reserve_memory > 0
        || s.spec.task.resources.reserve_nano_cpus > 0
    {
        return;
    }
    let tasks = p.service_tasks_ref(service_id);
    let runnable: Vec<&crate::store::Task> = tasks
        .iter()
        .map(|t| &**t)
        .filter(|t| is_runnable(t))
        .collect();
    // Wait until the previous moves (and anything else) have settled.
    if runnable
        .iter()
        .any(|t| t.node_id.is_empty() || t.status.state < TaskState::Running)
    {
        return;
    }
    let mut counts: BTreeMap<&str, Vec<&&crate::store::Task>> = BTreeMap::new();
    for n in p.data.nodes.values() {
        if eligible(n, &s.spec.task.placement.constraints) {
            counts.entry(n.id.as_str()).or_default();
        }
    }
    for t in &runnable {
        if let Some(v) = counts.get_mut(t.node_id.as_str()) {
            v.push(t);
        }
    }
    let min = counts.values().map(Vec::len).min().unwrap_or(0);
    let max = counts.values().map(Vec::len).max().unwrap_or(0);
    if max < min + 2 {
        return;
    }
    let batch = match s.spec.update.parallelism {
        0 => usize::MAX,
        n => n as usize,
    }
    .min((max - min) / 2);
    // Take from the fullest nodes, one task per node per pass, newest slot last.
    let mut by_load: Vec<(&str, Vec<&&crate::store::Task>)> = counts.into_iter().collect();
    by_load.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    let mut moved = Vec::new();
    'outer: for round in 0.. {
        let mut any = false;
        for (_, ts) in &by_load {
            if ts.len() > min + 1 + round {
                if let Some(t) = ts.iter().max_by_key(|t| t.slot) {
                    if !moved.iter().any(|m: &&&crate::store::Task| m.id == t.id) {
                        moved.push(*t);
                        any = true;
                        if moved.len() >= batch {
                            break 'outer;
                        }
                    }
                }
            }
        }
        if !any {
            break;
        }
    }
    for t in moved {
        if p.create_task(&s, t.slot, "", t.restart_count).is_none() {
            break;
        }
        p.set_desired(t, TaskState::Shutdown);
    }
}
