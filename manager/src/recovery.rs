//! Quorum-loss recovery (`swarm init --force-new-cluster`), the manager's part.
//!
//! The node glue stops this node's manager, calls [`rebuild_raft`] and starts the manager
//! again. The raft database becomes a one-voter group holding the committed state (see
//! [`crate::raft::recover`]), adjusted by [`plan_retirement`] before it is written: the
//! managers left behind are no raft members any more, so their node objects become Down
//! workers. Done before the new group's first election, so its leader never sees them as
//! managers to add back. The membership reconciler leaves them out of raft; `node rm`
//! removes them; one that comes back with its old state is refused as a raft candidate,
//! handed a worker certificate, drops its manager state, and can be promoted again.
//! Services, tasks, networks, secrets, configs, the CA and the join tokens are kept as they
//! were, so workers reconnect with the certificates they hold.

use std::time::Duration;

use crate::manager::{Manager, ManagerConfig};
use crate::raft::recover::{self, RecoverError, Recovered};
use crate::store::{NodeState, Object, Op};
use proto::security::Role;

/// How long [`rebuild_raft`] waits for the stopped manager to release its raft database.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// How long the leader's quorum round in [`has_quorum`] may take.
const QUORUM_PROBE: Duration = Duration::from_secs(3);

/// Rewrite the raft database of the (stopped) manager `config` describes into a group whose
/// only voter is this node at `config.advertise_addr`, the only manager of the swarm.
pub async fn rebuild_raft(config: &ManagerConfig) -> Result<Recovered, RecoverError> {
    let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
    loop {
        let dir = config.data_dir.clone();
        let id = config.raft_id;
        let addr = config.advertise_addr.clone();
        let me = config.node_id.clone();
        let now = config.clock.now_ms();
        let res = tokio::task::spawn_blocking(move || {
            recover::force_new_cluster(&dir, id, &addr, |d| plan_retirement(d, &me, &addr, now))
        })
        .await
        .unwrap_or_else(|e| {
            Err(RecoverError::Write {
                path: config.data_dir.clone(),
                reason: e.to_string(),
            })
        });
        match res {
            Err(RecoverError::InUse(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => return r,
        }
    }
}

/// Whether this manager's raft group still has a quorum, so that forcing a new cluster
/// would split the swarm in two: the leader confirms it with a quorum round; a follower
/// counts as hearing a live leader if it names one under a granted vote twice, further apart
/// than a follower that lost its leader takes to campaign (and name none).
pub async fn has_quorum(mgr: &Manager) -> bool {
    if mgr.is_leader() {
        let confirmed = tokio::time::timeout(QUORUM_PROBE, mgr.raft.ensure_linearizable()).await;
        return matches!(confirmed, Ok(Ok(_)));
    }
    let led = |m: &Manager| {
        let metrics = m.raft.metrics();
        let metrics = metrics.borrow();
        metrics.current_leader.is_some()
            && metrics.current_leader != Some(m.config.raft_id)
            && metrics.vote.is_committed()
    };
    if !led(mgr) {
        return false;
    }
    // A follower of a dead leader campaigns once the lease and its election timeout have
    // passed, both checked on openraft's tick (1.5 × the message timeout).
    let t = &mgr.config.tuning;
    tokio::time::sleep(t.election_max * 3 + t.rpc_timeout * 2).await;
    led(mgr)
}

/// What the store should say about the nodes after a forced new cluster: this node is the
/// one manager (at its possibly new address), every other manager a Down worker. Pure.
pub fn plan_retirement(
    data: &crate::store::StoreData,
    me: &str,
    my_addr: &str,
    now: i64,
) -> Vec<Op> {
    let mut ops = Vec::new();
    for n in data.nodes.values() {
        if n.id == me {
            if n.description.addr != my_addr || n.role != Role::Manager {
                let mut n = n.clone();
                n.description.addr = my_addr.to_string();
                n.role = Role::Manager;
                n.desired_role = Role::Manager;
                n.updated_at_ms = now;
                ops.push(Op::Update(Object::Node(n)));
            }
        } else if n.role == Role::Manager || n.desired_role == Role::Manager {
            let mut n = n.clone();
            n.role = Role::Worker;
            n.desired_role = Role::Worker;
            n.state = NodeState::Down;
            n.status_message = format!(
                "no longer a manager: the swarm was recovered with --force-new-cluster on node {me}; remove this node (node rm) or restart it to rejoin as a worker"
            );
            n.updated_at_ms = now;
            ops.push(Op::Update(Object::Node(n)));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Node, NodeDescription, StoreData};

    fn node(id: &str, role: Role, addr: &str) -> Node {
        Node {
            ingress_addr: None,
            id: id.into(),
            version: 1,
            raft_id: 1,
            role,
            desired_role: role,
            availability: Default::default(),
            labels: Default::default(),
            description: NodeDescription {
                addr: addr.into(),
                ..Default::default()
            },
            state: NodeState::Ready,
            status_message: String::new(),
            created_at_ms: 0,
            updated_at_ms: 0,
            cert_not_after_ms: 0,
        }
    }

    #[test]
    fn other_managers_become_down_workers_and_this_node_takes_its_new_address() {
        let mut d = StoreData::default();
        for n in [
            node("me", Role::Manager, "10.0.0.1:2377"),
            node("m2", Role::Manager, "10.0.0.2:2377"),
            node("w1", Role::Worker, "10.0.0.4:2377"),
        ] {
            d.nodes.insert(n.id.clone(), n);
        }
        let mut demoting = node("m3", Role::Manager, "10.0.0.3:2377");
        demoting.desired_role = Role::Worker;
        d.nodes.insert("m3".into(), demoting);
        let ops = plan_retirement(&d, "me", "10.0.0.9:2377", 1);
        let mut by_id = std::collections::BTreeMap::new();
        for op in ops {
            let Op::Update(Object::Node(n)) = op else {
                panic!("unexpected {op:?}")
            };
            by_id.insert(n.id.clone(), n);
        }
        assert_eq!(
            by_id.keys().collect::<Vec<_>>(),
            ["m2", "m3", "me"],
            "workers are left alone"
        );
        for id in ["m2", "m3"] {
            let n = &by_id[id];
            assert_eq!((n.role, n.desired_role), (Role::Worker, Role::Worker));
            assert_eq!(n.state, NodeState::Down);
            assert!(n.status_message.contains("force-new-cluster"));
        }
        assert_eq!(by_id["me"].description.addr, "10.0.0.9:2377");
        // Nothing left to do once applied.
        for n in by_id.into_values() {
            d.nodes.insert(n.id.clone(), n);
        }
        assert!(plan_retirement(&d, "me", "10.0.0.9:2377", 1).is_empty());
    }
}
