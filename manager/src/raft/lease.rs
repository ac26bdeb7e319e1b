//! The leader's lease and the managers' reachability, as this node's own raft messages show
//! them.
//!
//! openraft 0.9 keeps a leader that can no longer reach a quorum in the leader state until it
//! hears of a higher term, and restores a restarted leader as leader of its old term. Neither
//! may act as leader: a node acts as leader only while a quorum of voters acknowledged, within
//! the lease, an AppendEntries it sent in its current term (check-quorum). The lease is
//! measured from the moment each acknowledged message was *sent*, and is shorter than the time
//! followers refuse to vote for anyone else after hearing from the leader (openraft's
//! `leader_lease`, the election timeout's maximum), so a new leader can only be elected after
//! the old one has stopped acting.
//!
//! ```text
//!   raft core ── Tracked<N> ── N (gRPC, or the simulation's network)
//!                   │ records: acked(peer, term, sent_at), reached(peer, at)
//!                   ▼
//!               Liveness ──▶ quorum_acked_at(voters, term)  ──▶ lease valid?
//!                        ──▶ reachable(voters)              ──▶ "no quorum: 1 of 3 …"
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use tokio::time::Instant;

use super::{NodeId, TypeConfig};

/// What this node's outgoing raft messages have shown of its peers.
#[derive(Default)]
pub struct Liveness {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Per peer: the newest (term, send time) of an AppendEntries it accepted.
    acked: HashMap<NodeId, (u64, Instant)>,
    /// Per peer: when it last answered anything at all.
    reached: HashMap<NodeId, Instant>,
}

impl Liveness {
    pub fn new() -> Arc<Liveness> {
        Arc::new(Liveness::default())
    }

    /// `peer` accepted an AppendEntries of `term` that was sent at `sent`.
    pub fn acked(&self, peer: NodeId, term: u64, sent: Instant) {
        let mut g = self.inner.lock().expect("liveness lock");
        let e = g.acked.entry(peer).or_insert((term, sent));
        if (term, sent) > *e {
            *e = (term, sent);
        }
    }

    /// `peer` answered a message at `at`.
    pub fn reached(&self, peer: NodeId, at: Instant) {
        let mut g = self.inner.lock().expect("liveness lock");
        let e = g.reached.entry(peer).or_insert(at);
        if at > *e {
            *e = at;
        }
    }

    /// The newest time at which a quorum of every voter set in `configs` (one, or two while a
    /// membership change is joint) had acknowledged this leader of `term`; `me` counts as
    /// acknowledging at `now`.
    pub fn quorum_acked_at(
        &self,
        me: NodeId,
        term: u64,
        configs: &[BTreeSet<NodeId>],
        now: Instant,
    ) -> Option<Instant> {
        let g = self.inner.lock().expect("liveness lock");
        let mut oldest: Option<Instant> = None;
        for voters in configs {
            if voters.is_empty() {
                continue;
            }
            let mut times: Vec<Instant> = voters
                .iter()
                .filter_map(|v| {
                    if *v == me {
                        return Some(now);
                    }
                    g.acked
                        .get(v)
                        .filter(|(t, _)| *t == term)
                        .map(|(_, at)| *at)
                })
                .collect();
            let need = voters.len() / 2 + 1;
            if times.len() < need {
                return None;
            }
            times.sort_unstable_by(|a, b| b.cmp(a));
            let t = times[need - 1];
            oldest = Some(oldest.map_or(t, |o| o.min(t)));
        }
        oldest
    }

    /// How many of `voters` (counting `me`) answered within `window` before `now`.
    pub fn reachable(
        &self,
        me: NodeId,
        voters: &BTreeSet<NodeId>,
        now: Instant,
        window: Duration,
    ) -> usize {
        let g = self.inner.lock().expect("liveness lock");
        voters
            .iter()
            .filter(|v| {
                **v == me
                    || g.reached
                        .get(v)
                        .is_some_and(|at| now.saturating_duration_since(*at) <= window)
            })
            .count()
    }
}

/// A raft network that records, in a [`Liveness`], what its messages show.
#[derive(Clone)]
pub struct Tracked<N> {
    inner: N,
    live: Arc<Liveness>,
}

impl<N> Tracked<N> {
    pub fn new(inner: N, live: Arc<Liveness>) -> Tracked<N> {
        Tracked { inner, live }
    }
}

pub struct TrackedClient<C> {
    inner: C,
    target: NodeId,
    live: Arc<Liveness>,
}

impl<N: RaftNetworkFactory<TypeConfig>> RaftNetworkFactory<TypeConfig> for Tracked<N> {
    type Network = TrackedClient<N::Network>;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        TrackedClient {
            inner: self.inner.new_client(target, node).await,
            target,
            live: self.live.clone(),
        }
    }
}

impl<C> TrackedClient<C> {
    /// An answer, even a refusal, shows the peer is reachable.
    fn answered<T, E>(&self, r: &Result<T, RPCError<NodeId, BasicNode, E>>)
    where
        E: std::error::Error,
    {
        if matches!(r, Ok(_) | Err(RPCError::RemoteError(_))) {
            self.live.reached(self.target, Instant::now());
        }
    }
}

impl<C: RaftNetwork<TypeConfig>> RaftNetwork<TypeConfig> for TrackedClient<C> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let term = rpc.vote.leader_id().get_term();
        let sent = Instant::now();
        let r = self.inner.append_entries(rpc, option).await;
        self.answered(&r);
        // Success and a log conflict both mean the peer took us as the leader of `term`.
        if matches!(
            r,
            Ok(AppendEntriesResponse::Success
                | AppendEntriesResponse::PartialSuccess(_)
                | AppendEntriesResponse::Conflict)
        ) {
            self.live.acked(self.target, term, sent);
        }
        r
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let r = self.inner.install_snapshot(rpc, option).await;
        self.answered(&r);
        r
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let r = self.inner.vote(rpc, option).await;
        self.answered(&r);
        r
    }

    fn backoff(&self) -> openraft::network::Backoff {
        self.inner.backoff()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn quorum_ack_is_the_quorum_th_newest_of_the_current_term() {
        let l = Liveness::default();
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(10);
        // Three voters: me plus one ack of this term is a quorum.
        assert_eq!(l.quorum_acked_at(1, 5, &[set(&[1, 2, 3])], now), None);
        l.acked(2, 5, t0 + Duration::from_secs(3));
        assert_eq!(
            l.quorum_acked_at(1, 5, &[set(&[1, 2, 3])], now),
            Some(t0 + Duration::from_secs(3))
        );
        // An ack of an older term does not count for this one.
        l.acked(3, 4, t0 + Duration::from_secs(9));
        assert_eq!(
            l.quorum_acked_at(1, 5, &[set(&[1, 2, 3])], now),
            Some(t0 + Duration::from_secs(3))
        );
        l.acked(3, 5, t0 + Duration::from_secs(8));
        assert_eq!(
            l.quorum_acked_at(1, 5, &[set(&[1, 2, 3])], now),
            Some(t0 + Duration::from_secs(8))
        );
        // Five voters need two acks besides me: the older of the two newest.
        assert_eq!(
            l.quorum_acked_at(1, 5, &[set(&[1, 2, 3, 4, 5])], now),
            Some(t0 + Duration::from_secs(3))
        );
        // Joint membership: both configurations must have a quorum; the older time wins.
        assert_eq!(
            l.quorum_acked_at(1, 5, &[set(&[1, 2, 3]), set(&[1, 4, 5])], now),
            None
        );
        l.acked(4, 5, t0 + Duration::from_secs(1));
        assert_eq!(
            l.quorum_acked_at(1, 5, &[set(&[1, 2, 3]), set(&[1, 4, 5])], now),
            Some(t0 + Duration::from_secs(1))
        );
        // A single voter is its own quorum.
        assert_eq!(l.quorum_acked_at(1, 9, &[set(&[1])], now), Some(now));
    }

    #[test]
    fn reachable_counts_recent_answers_and_me() {
        let l = Liveness::default();
        let t0 = Instant::now();
        l.reached(2, t0);
        l.reached(3, t0 + Duration::from_secs(5));
        let w = Duration::from_secs(2);
        assert_eq!(
            l.reachable(1, &set(&[1, 2, 3]), t0 + Duration::from_secs(6), w),
            2
        );
        assert_eq!(
            l.reachable(1, &set(&[1, 2, 3]), t0 + Duration::from_secs(1), w),
            3
        );
        assert_eq!(
            l.reachable(1, &set(&[1, 2, 3]), t0 + Duration::from_secs(9), w),
            1
        );
    }
}
