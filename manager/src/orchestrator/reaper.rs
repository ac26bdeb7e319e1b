//! The task reaper: keeps a bounded history of ended tasks per slot (Swarm's task history
//! limit, 5), removes the tasks of deleted services once they have stopped, and closes tasks
//! that were told to stop before any node had them.

use std::collections::BTreeMap;

use proto::spec::TaskState;

use super::Plan;
use crate::store::{NodeState, Task};

pub const TASK_HISTORY_LIMIT: usize = 5;

/// Reap the tasks of `services` (ids of services that exist or existed).
pub fn plan<'s>(p: &mut Plan<'_>, services: impl IntoIterator<Item = &'s String>) {
    let data = p.data;
    let mut history: BTreeMap<(String, u64, String), Vec<&Task>> = BTreeMap::new();
    let tasks = services
        .into_iter()
        .flat_map(|id| data.service_tasks(id))
        .collect::<Vec<_>>();
    for t in tasks {
        let service_gone = !data.services.contains_key(&t.service_id);
        let node_gone = t.node_id.is_empty()
            || data
                .nodes
                .get(&t.node_id)
                .is_none_or(|n| n.state == NodeState::Down);
        let never_ran = t.status.state <= TaskState::Pending;
        if t.desired_state > TaskState::Running && never_ran {
            // No worker has it: nobody else will ever report it stopped.
            let mut c = t.clone();
            c.status.state = TaskState::Shutdown;
            c.status.message = "shut down before it was assigned".into();
            c.status.timestamp_ms = p.now_ms;
            if service_gone {
                p.delete_task(&t.id);
            } else {
                p.update_task(c);
            }
            continue;
        }
        if service_gone {
            if t.status.state.is_terminal() || node_gone {
                p.delete_task(&t.id);
            } else {
                // `service rm` marks only a first batch of a large service's tasks.
                p.set_desired(t, TaskState::Remove);
            }
            continue;
        }
        if t.desired_state > TaskState::Running && t.status.state.is_terminal() {
            let node_key = if t.slot == 0 {
                t.node_id.clone()
            } else {
                String::new()
            };
            history
                .entry((t.service_id.clone(), t.slot, node_key))
                .or_default()
                .push(t);
        }
    }
    for mut ended in history.into_values() {
        if ended.len() > TASK_HISTORY_LIMIT {
            ended.sort_by_key(|t| std::cmp::Reverse(t.created_at_ms));
            for t in &ended[TASK_HISTORY_LIMIT..] {
                p.delete_task(&t.id);
            }
        }
    }
}
