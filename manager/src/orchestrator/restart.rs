//! Restart supervision: whether, and when, a dead task's slot gets a replacement.

use proto::spec::{RestartCondition, RestartPolicy};

use super::Death;
use crate::store::Task;

#[derive(Debug, PartialEq, Eq)]
pub enum Restart {
    /// Create the replacement now, with this restart count.
    Now {
        restart_count: u64,
    },
    /// Not before this time (ms since epoch).
    At(i64),
    Never,
}

/// Decide the restart of `dead` (which died for `why`) at `now_ms`. Pure.
pub fn decide(policy: &RestartPolicy, dead: &Task, why: Death, now_ms: i64) -> Restart {
    // A node going away is not the task's failure: replace at once and uncounted.
    if why == Death::NodeGone {
        return Restart::Now {
            restart_count: dead.restart_count,
        };
    }
    let wanted = match policy.condition {
        RestartCondition::None => false,
        RestartCondition::OnFailure => why == Death::Failed,
        RestartCondition::Any => true,
    };
    if !wanted {
        return Restart::Never;
    }
    // Attempts are counted within the window: a task that lived longer than the window
    // starts the count again.
    let lived = dead.status.timestamp_ms.saturating_sub(dead.created_at_ms);
    let count = if policy.window_ms > 0 && lived > ms_i64(policy.window_ms) {
        0
    } else {
        dead.restart_count
    };
    if policy.max_attempts > 0 && count >= policy.max_attempts {
        return Restart::Never;
    }
    // Saturating: a delay near the maximum means "not in this era", never an overflow.
    let at = dead
        .status
        .timestamp_ms
        .saturating_add(ms_i64(policy.delay_ms));
    if now_ms < at {
        return Restart::At(at);
    }
    Restart::Now {
        restart_count: count.saturating_add(1),
    }
}

/// A duration in ms from a spec as a signed offset, clamped rather than wrapped.
pub fn ms_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::spec::{TaskState, TaskStatus};

    fn dead(state: TaskState, created: i64, died: i64, restarts: u64) -> Task {
        Task {
            networks: Vec::new(),
            awaiting_addresses: false,
            id: "t".into(),
            version: 1,
            service_id: "s".into(),
            service_name: "s".into(),
            slot: 1,
            node_id: "n".into(),
            spec: Default::default(),
            spec_version: 1,
            desired_state: TaskState::Running,
            status: TaskStatus {
                state,
                timestamp_ms: died,
                ..Default::default()
            },
            created_at_ms: created,
            restart_count: restarts,
        }
    }

    fn policy(
        condition: RestartCondition,
        delay_ms: u64,
        max: u64,
        window_ms: u64,
    ) -> RestartPolicy {
        RestartPolicy {
            condition,
            delay_ms,
            max_attempts: max,
            window_ms,
        }
    }

    #[test]
    fn conditions() {
        let t = dead(TaskState::Complete, 0, 100, 0);
        assert_eq!(
            decide(
                &policy(RestartCondition::OnFailure, 0, 0, 0),
                &t,
                Death::Completed,
                100
            ),
            Restart::Never
        );
        assert_eq!(
            decide(
                &policy(RestartCondition::Any, 0, 0, 0),
                &t,
                Death::Completed,
                100
            ),
            Restart::Now { restart_count: 1 }
        );
        let f = dead(TaskState::Failed, 0, 100, 0);
        assert_eq!(
            decide(
                &policy(RestartCondition::None, 0, 0, 0),
                &f,
                Death::Failed,
                100
            ),
            Restart::Never
        );
        assert_eq!(
            decide(
                &policy(RestartCondition::OnFailure, 0, 0, 0),
                &f,
                Death::Failed,
                100
            ),
            Restart::Now { restart_count: 1 }
        );
    }

    #[test]
    fn delay_and_attempts_and_window() {
        let f = dead(TaskState::Failed, 0, 1000, 2);
        let p = policy(RestartCondition::Any, 5000, 3, 0);
        assert_eq!(decide(&p, &f, Death::Failed, 2000), Restart::At(6000));
        assert_eq!(
            decide(&p, &f, Death::Failed, 6000),
            Restart::Now { restart_count: 3 }
        );
        let f3 = dead(TaskState::Failed, 0, 1000, 3);
        assert_eq!(decide(&p, &f3, Death::Failed, 9000), Restart::Never);
        // Lived 10 s with a 5 s window: the count starts again.
        let long = dead(TaskState::Failed, 0, 10_000, 3);
        let pw = policy(RestartCondition::Any, 0, 3, 5000);
        assert_eq!(
            decide(&pw, &long, Death::Failed, 10_000),
            Restart::Now { restart_count: 1 }
        );
    }

    #[test]
    fn a_near_max_delay_waits_instead_of_overflowing() {
        let f = dead(TaskState::Failed, 0, 1_000, 0);
        for delay_ms in [i64::MAX as u64, u64::MAX - 1, u64::MAX] {
            let p = policy(RestartCondition::Any, delay_ms, 0, delay_ms);
            assert_eq!(
                decide(&p, &f, Death::Failed, 2_000),
                Restart::At(i64::MAX),
                "delay {delay_ms}"
            );
        }
    }

    #[test]
    fn node_loss_replaces_at_once_uncounted() {
        let t = dead(TaskState::Running, 0, 0, 1);
        let p = policy(RestartCondition::None, 5000, 1, 0);
        assert_eq!(
            decide(&p, &t, Death::NodeGone, 1),
            Restart::Now { restart_count: 1 }
        );
    }
}
