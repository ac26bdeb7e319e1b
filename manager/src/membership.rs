//! Leader-only: keeps the raft voter set equal to the nodes that hold a manager certificate
//! and are meant to stay managers.
//!
//! A promoted node first obtains its manager certificate and starts raft; this loop then adds
//! it as a learner, and makes it a voter once it has caught up. Adding the learner does not
//! wait for it: a node whose manager is not running (yet, or any more) must not hold up the
//! other changes. A demoted or removed manager is taken out of the voter set before it may
//! obtain a worker certificate. One membership change at a time, as raft requires.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers};
use proto::security::Role;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::raft::{NodeId, Raft};
use crate::store::Store;

/// How long the leader waits, once it is the only voter left to remove, before removing
/// itself. Demoting several managers commits one node at a time; a leader that removed itself
/// at the first of them would force an election per demoted manager, each one a moment
/// without a leader. Waiting lets it remove the others first and leave once.
const SELF_REMOVAL_DELAY: Duration = Duration::from_secs(1);

/// A change to a voter set waits this long at most: a change that cannot commit (its
/// quorum is gone) is retried on the next round rather than holding the loop.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What membership change to make next, if any. Pure, for testing.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Start replicating to a node (it does not vote yet).
    AddLearner {
        id: NodeId,
        addr: String,
    },
    /// A learner that has caught up becomes a voter.
    AddVoter {
        id: NodeId,
    },
    Remove {
        id: NodeId,
    },
    Nothing,
}

/// `me` (the leader) is removed last: once it is out, it steps down and must not make
/// further changes. `caught_up`: learners whose log has reached the membership that added
/// them; a learner that has not stays a learner (and blocks nothing else).
pub fn plan(
    me: NodeId,
    desired: &[(NodeId, String)],
    voters: &BTreeSet<NodeId>,
    members: &BTreeSet<NodeId>,
    caught_up: &BTreeSet<NodeId>,
) -> Step {
    for (id, addr) in desired {
        if voters.contains(id) {
            continue;
        }
        if !members.contains(id) {
            return Step::AddLearner {
                id: *id,
                addr: addr.clone(),
            };
        }
        if caught_up.contains(id) {
            return Step::AddVoter { id: *id };
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

/// Keeps the raft group's members in line with the store's managers; leader only.
pub struct Membership {
    store: Store,
    raft: Raft,
    me: NodeId,
}

impl Membership {
    pub fn new(store: Store, raft: Raft, me: NodeId) -> Membership {
        Membership { store, raft, me }
    }

    /// Runs until `cancel` (the end of this manager's term as leader) or until it has removed
    /// this manager from the group.
    pub async fn run(self, cancel: CancellationToken) {
        let mut events = self.store.watch();
        let mut self_removal: Option<Instant> = None;
        loop {
            match self.reconcile_once(&mut self_removal, &cancel).await {
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
                // Also polls replication progress (a learner catching up) and the delay above.
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    async fn reconcile_once(
        &self,
        self_removal: &mut Option<Instant>,
        leading: &CancellationToken,
    ) -> Result<Done, String> {
        let me = self.me;
        let desired: Vec<(NodeId, String)> = self.store.view(|d| {
            d.nodes
                .values()
                .filter(|n| n.role == Role::Manager && n.desired_role == Role::Manager)
                .map(|n| (n.raft_id, n.description.addr.clone()))
                .collect()
        });
        let (voters, nodes) = crate::raft::membership(&self.raft);
        let members: BTreeSet<NodeId> = nodes.keys().copied().collect();
        // A leader that is no longer a voter is on its way out: changes are the next leader's.
        if !voters.contains(&me) || leading.is_cancelled() {
            return Ok(Done::Continue);
        }
        let caught_up = caught_up(&self.raft);
        let step = plan(me, &desired, &voters, &members, &caught_up);
        if step != (Step::Remove { id: me }) {
            *self_removal = None;
        }
        match step {
            Step::Nothing => Ok(Done::Continue),
            Step::AddLearner { id, addr } => {
                tracing::info!(raft_id = id, %addr, "adding manager to raft as a learner");
                let add = self.raft.add_learner(id, BasicNode { addr }, false);
                tokio::time::timeout(CHANGE_TIMEOUT, add)
                    .await
                    .map_err(|_| "adding a learner did not commit in time".to_string())?
                    .map_err(|e| e.to_string())?;
                Ok(Done::Continue)
            }
            Step::AddVoter { id } => {
                tracing::info!(raft_id = id, "learner caught up: making it a voter");
                change(&self.raft, ChangeMembers::AddVoterIds([id].into())).await?;
                Ok(Done::Continue)
            }
            Step::Remove { id } => {
                if id == me {
                    let since = *self_removal.get_or_insert_with(Instant::now);
                    if since.elapsed() < SELF_REMOVAL_DELAY {
                        return Ok(Done::Continue);
                    }
                }
                tracing::info!(raft_id = id, "removing manager from raft");
                // One change only: with retain=false, removing a voter also drops it as a
                // node. When the removed voter is this leader, it steps down once the change
                // commits and the next leader carries on; a second change here would run on a
                // deposed leader.
                let c = if voters.contains(&id) {
                    ChangeMembers::RemoveVoters([id].into())
                } else {
                    ChangeMembers::RemoveNodes([id].into())
                };
                change(&self.raft, c).await?;
                Ok(if id == me {
                    Done::RemovedSelf
                } else {
                    Done::Continue
                })
            }
        }
    }
}

enum Done {
    Continue,
    RemovedSelf,
}

async fn change(raft: &Raft, c: ChangeMembers<NodeId, BasicNode>) -> Result<(), String> {
    tokio::time::timeout(CHANGE_TIMEOUT, raft.change_membership(c, false))
        .await
        .map_err(|_| "membership change did not commit in time".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Learners whose replicated log has reached the latest membership (the one that added
/// them, or later): they can vote without slowing commits down.
fn caught_up(raft: &Raft) -> BTreeSet<NodeId> {
    let m = raft.metrics().borrow().clone();
    let Some(config) = m.membership_config.log_id().as_ref().map(|l| l.index) else {
        return BTreeSet::new();
    };
    m.replication
        .iter()
        .flatten()
        .filter(|(_, matched)| matched.as_ref().is_some_and(|l| l.index >= config))
        .map(|(id, _)| *id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> BTreeSet<u64> {
        BTreeSet::new()
    }

    #[test]
    fn adds_a_learner_then_a_voter_once_caught_up_then_removes_extras() {
        let voters: BTreeSet<u64> = [1, 2].into();
        let desired = vec![(1, "a".into()), (3, "c".into())];
        assert_eq!(
            plan(1, &desired, &voters, &voters, &none()),
            Step::AddLearner {
                id: 3,
                addr: "c".into()
            }
        );
        // A learner that has not caught up waits, and does not hold up removals.
        let members: BTreeSet<u64> = [1, 2, 3].into();
        assert_eq!(
            plan(1, &desired, &voters, &members, &none()),
            Step::Remove { id: 2 }
        );
        assert_eq!(
            plan(1, &desired, &voters, &members, &[3].into()),
            Step::AddVoter { id: 3 }
        );
        let voters: BTreeSet<u64> = [1, 2, 3].into();
        assert_eq!(
            plan(1, &desired, &voters, &voters, &none()),
            Step::Remove { id: 2 }
        );
        let voters: BTreeSet<u64> = [1, 3].into();
        assert_eq!(plan(1, &desired, &voters, &voters, &none()), Step::Nothing);
    }

    #[test]
    fn a_lagging_learner_alone_means_nothing_to_do() {
        let voters: BTreeSet<u64> = [1].into();
        let members: BTreeSet<u64> = [1, 2].into();
        let desired = vec![(1, "a".into()), (2, "b".into())];
        assert_eq!(plan(1, &desired, &voters, &members, &none()), Step::Nothing);
    }

    #[test]
    fn removes_the_leader_itself_last() {
        let voters: BTreeSet<u64> = [1, 2, 3].into();
        let desired = vec![(3, "c".into())];
        assert_eq!(
            plan(1, &desired, &voters, &voters, &none()),
            Step::Remove { id: 2 }
        );
        let voters: BTreeSet<u64> = [1, 3].into();
        assert_eq!(
            plan(1, &desired, &voters, &voters, &none()),
            Step::Remove { id: 1 }
        );
    }

    #[test]
    fn never_removes_the_last_voter_but_drops_stray_learners() {
        let voters: BTreeSet<u64> = [1].into();
        assert_eq!(plan(1, &[], &voters, &voters, &none()), Step::Nothing);
        let members: BTreeSet<u64> = [1, 9].into();
        assert_eq!(
            plan(1, &[(1, "a".into())], &voters, &members, &none()),
            Step::Remove { id: 9 }
        );
    }
}
