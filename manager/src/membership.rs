//! Leader-only: keeps the raft voter set equal to the nodes that hold a manager certificate
//! and are meant to stay managers.
//!
//! A promoted node first obtains its manager certificate and starts raft; this loop then adds
//! it as a learner (waiting until it has caught up) and makes it a voter. A demoted or removed
//! manager is taken out of the voter set before it may obtain a worker certificate. One
//! membership change at a time, as raft requires.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers};
use proto::security::Role;
use tokio_util::sync::CancellationToken;

use crate::manager::Manager;
use crate::raft::NodeId;

/// What membership change to make next, if any. Pure, for testing.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    AddVoter { id: NodeId, addr: String },
    Remove { id: NodeId },
    Nothing,
}

/// `me` (the leader) is removed last: once it is out, it steps down and must not make
/// further changes.
pub fn plan(
    me: NodeId,
    desired: &[(NodeId, String)],
    voters: &BTreeSet<NodeId>,
    members: &BTreeSet<NodeId>,
) -> Step {
    for (id, addr) in desired {
        if !voters.contains(id) {
            return Step::AddVoter {
                id: *id,
                addr: addr.clone(),
            };
        }
    }
    let want: BTreeSet<NodeId> = desired.iter().map(|(id, _)| *id).collect();
    // Never remove the last voter.
    let removable = |id: &NodeId| !want.contains(id) && (voters.len() > 1 || !voters.contains(id));
    if let Some(id) = members.iter().find(|id| **id != me && removable(id)) {
        return Step::Remove { id: *id };
    }
    if members.contains(&me) && removable(&me) {
        return Step::Remove { id: me };
    }
    Step::Nothing
}

pub async fn run(mgr: Arc<Manager>, cancel: CancellationToken) {
    let mut events = mgr.store.watch();
    loop {
        match reconcile_once(&mgr).await {
            Ok(Done::RemovedSelf) => {
                tracing::info!("removed this manager from raft: stepping down");
                return;
            }
            Ok(Done::Continue) => {}
            Err(e) => tracing::debug!(error = %e, "membership change not done yet"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = events.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

enum Done {
    Continue,
    RemovedSelf,
}

async fn reconcile_once(mgr: &Manager) -> Result<Done, String> {
    let me = mgr.config.raft_id;
    let desired: Vec<(NodeId, String)> = mgr.store.view(|d| {
        d.nodes
            .values()
            .filter(|n| n.role == Role::Manager && n.desired_role == Role::Manager)
            .map(|n| (n.raft_id, n.description.addr.clone()))
            .collect()
    });
    let (voters, nodes) = crate::raft::membership(&mgr.raft);
    let members: BTreeSet<NodeId> = nodes.keys().copied().collect();
    // A leader that is no longer a voter is on its way out: changes are the next leader's.
    if !voters.contains(&me) || !mgr.is_leader() {
        return Ok(Done::Continue);
    }
    match plan(me, &desired, &voters, &members) {
        Step::Nothing => Ok(Done::Continue),
        Step::AddVoter { id, addr } => {
            tracing::info!(raft_id = id, %addr, "adding manager to raft");
            if !members.contains(&id) {
                let add = mgr.raft.add_learner(id, BasicNode { addr }, true);
                tokio::time::timeout(Duration::from_secs(15), add)
                    .await
                    .map_err(|_| "learner did not catch up in time".to_string())?
                    .map_err(|e| e.to_string())?;
            }
            mgr.raft
                .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Done::Continue)
        }
        Step::Remove { id } => {
            tracing::info!(raft_id = id, "removing manager from raft");
            // One change only: with retain=false, removing a voter also drops it as a node.
            // When the removed voter is this leader, it steps down once the change commits and
            // the next leader carries on; a second change here would run on a deposed leader.
            let change = if voters.contains(&id) {
                ChangeMembers::RemoveVoters([id].into())
            } else {
                ChangeMembers::RemoveNodes([id].into())
            };
            mgr.raft
                .change_membership(change, false)
                .await
                .map_err(|e| e.to_string())?;
            Ok(if id == me {
                Done::RemovedSelf
            } else {
                Done::Continue
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_missing_voters_first_then_removes_extras() {
        let voters: BTreeSet<u64> = [1, 2].into();
        let desired = vec![(1, "a".into()), (3, "c".into())];
        assert_eq!(
            plan(1, &desired, &voters, &voters),
            Step::AddVoter {
                id: 3,
                addr: "c".into()
            }
        );
        let voters: BTreeSet<u64> = [1, 2, 3].into();
        assert_eq!(plan(1, &desired, &voters, &voters), Step::Remove { id: 2 });
        let voters: BTreeSet<u64> = [1, 3].into();
        assert_eq!(plan(1, &desired, &voters, &voters), Step::Nothing);
    }

    #[test]
    fn removes_the_leader_itself_last() {
        let voters: BTreeSet<u64> = [1, 2, 3].into();
        let desired = vec![(3, "c".into())];
        assert_eq!(plan(1, &desired, &voters, &voters), Step::Remove { id: 2 });
        let voters: BTreeSet<u64> = [1, 3].into();
        assert_eq!(plan(1, &desired, &voters, &voters), Step::Remove { id: 1 });
    }

    #[test]
    fn never_removes_the_last_voter_but_drops_stray_learners() {
        let voters: BTreeSet<u64> = [1].into();
        assert_eq!(plan(1, &[], &voters, &voters), Step::Nothing);
        let members: BTreeSet<u64> = [1, 9].into();
        assert_eq!(
            plan(1, &[(1, "a".into())], &voters, &members),
            Step::Remove { id: 9 }
        );
    }
}
