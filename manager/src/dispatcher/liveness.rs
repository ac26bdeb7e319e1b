//! Liveness: heartbeats, and nodes marked Down after missed ones.
//!
//! Liveness is tracked in memory on the leader and only transitions are written to the
//! store: a node is Ready when it registers and Down once it has missed three periods. A new
//! leader gives every node a full grace period before judging it, so a failover does not
//! mark the cluster down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::security::Role;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DEFAULT_HEARTBEAT, MISSED_PERIODS, NEW_LEADER_GRACE};
use crate::clock::SharedClock;
use crate::store::{NodeDescription, NodeState, Object, Op, Store, Txn, UpdateError};

/// A node state write found no such node: it was removed from the swarm.
#[derive(Debug, thiserror::Error)]
#[error("node {0} has been removed from the swarm")]
pub struct NodeRemoved(pub String);

/// Why a node's state was not written.
pub type StateError = UpdateError<NodeRemoved>;

/// The nodes' heartbeats and the leader loop that judges them ([`Liveness::run`]). Expiry is
/// measured on tokio's monotonic time (paused in tests); the state written carries the
/// injected clock's time.
pub struct Liveness {
    store: Store,
    clock: SharedClock,
    /// When each node was last heard from.
    last_seen: Mutex<HashMap<String, Instant>>,
}

impl Liveness {
    pub fn new(store: Store, clock: SharedClock) -> Liveness {
        Liveness {
            store,
            clock,
            last_seen: Mutex::new(HashMap::new()),
        }
    }

    /// Record a heartbeat of `node`.
    pub fn seen(&self, node: &str) {
        self.last_seen
            .lock()
            .expect("liveness lock")
            .insert(node.to_string(), Instant::now());
    }

    /// The cluster's heartbeat period.
    pub fn period(&self) -> Duration {
        self.store
            .view(|d| d.cluster.as_ref().map(|c| c.heartbeat_period_ms))
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_HEARTBEAT)
    }

    /// Leader-only: marks nodes Down after missed heartbeats. A write that fails is tried
    /// again on the next tick (the node is still up in the store, and still expired).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        // Grace: everyone counts as seen a little after this leader starts. Agents learn of
        // a new leader only when their session fails, and may be backing off then: without
        // the extra time a short heartbeat period marks the whole cluster Down at failover.
        {
            let now = Instant::now() + NEW_LEADER_GRACE;
            let mut seen = self.last_seen.lock().expect("liveness lock");
            seen.clear();
            for id in self
                .store
                .view(|d| d.nodes.keys().cloned().collect::<Vec<_>>())
            {
                seen.insert(id, now);
            }
        }
        let mut period = self.period();
        loop {
            let now_period = self.period();
            let tick =
                (now_period / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            let now = Instant::now();
            let expired: Vec<String> = {
                let mut seen = self.last_seen.lock().expect("liveness lock");
                if now_period != period {
                    period_changed(&mut seen, period, now_period, now);
                    period = now_period;
                }
                self.store.view(|d| {
                    let up = d
                        .nodes
                        .values()
                        .filter(|n| n.state != NodeState::Down)
                        .map(|n| n.id.as_str());
                    expired_nodes(&mut seen, up, period, now)
                })
            };
            for id in expired {
                tracing::info!(node = %id, "heartbeat expired: node down");
                let res = self
                    .set_state(&id, NodeState::Down, "heartbeat failure", None, None)
                    .await;
                if let Err(e) = res {
                    tracing::debug!(node = %id, error = %e, "could not mark node down");
                }
            }
        }
    }

    /// A heartbeat of `node_id`: it is alive; a node marked Down comes back Ready.
    /// `UpdateError::Build` if the node was removed.
    pub async fn heartbeat(&self, node_id: &str) -> Result<(), StateError> {
        self.seen(node_id);
        let down = self
            .store
            .view(|d| d.nodes.get(node_id).map(|n| n.state != NodeState::Ready));
        match down {
            None => Err(UpdateError::Build(NodeRemoved(node_id.to_string()))),
            Some(true) => {
                self.set_state(node_id, NodeState::Ready, "", None, None)
                    .await
            }
            Some(false) => Ok(()),
        }
    }

    /// Writes a node's state (and, at registration, its description and the role it holds).
    pub async fn set_state(
        &self,
        id: &str,
        state: NodeState,
        message: &str,
        description: Option<&NodeDescription>,
        role: Option<Role>,
    ) -> Result<(), StateError> {
        let now = self.clock.now_ms();
        self.store
            .update_with_retry(|d| {
                let mut n = d
                    .nodes
                    .get(id)
                    .cloned()
                    .ok_or_else(|| NodeRemoved(id.to_string()))?;
                n.state = state;
                n.status_message = message.to_string();
                if let Some(desc) = description {
                    let mut desc = desc.clone();
                    desc.engine_version = env!("CARGO_PKG_VERSION").into();
                    n.description = desc;
                }
                if let Some(r) = role {
                    n.role = r;
                }
                n.updated_at_ms = now;
                Ok(Txn::new(vec![Op::Update(Object::Node(n))]))
            })
            .await
            .map(|_| ())
    }
}

/// The heartbeat period changed from `old` to `new`. Nodes learn a new period only with
/// their next heartbeat, which may come up to `old` from now: a shorter period applies to a
/// node after that grace (lowering it from 30 s to 1 s must not mark every node down at once).
pub(super) fn period_changed(
    seen: &mut HashMap<String, Instant>,
    old: Duration,
    new: Duration,
    now: Instant,
) {
    if new >= old {
        return;
    }
    let graced = now + old;
    for t in seen.values_mut() {
        if *t < graced {
            *t = graced;
        }
    }
}

/// Nodes among `up` whose last heartbeat is more than `MISSED_PERIODS` periods old; a node
/// not seen yet counts as seen now.
pub(super) fn expired_nodes<'a>(
    seen: &mut HashMap<String, Instant>,
    up: impl Iterator<Item = &'a str>,
    period: Duration,
    now: Instant,
) -> Vec<String> {
    let limit = period.saturating_mul(MISSED_PERIODS);
    up.filter(|id| {
        let t = *seen.entry(id.to_string()).or_insert(now);
        now.saturating_duration_since(t) > limit
    })
    .map(str::to_string)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    use crate::clock::TokioClock;
    use crate::dispatcher::tests::Refusing;
    use crate::store::{DirectProposer, Kind, ProposeError, TxnError};

    const EPOCH_MS: i64 = 1_700_000_000_000;

    /// How long a silent node stays up after the monitor starts: the new leader's grace,
    /// then the missed periods (no cluster object: the default period).
    fn limit() -> Duration {
        NEW_LEADER_GRACE + DEFAULT_HEARTBEAT * MISSED_PERIODS
    }

    /// A bare store (writes applied at once) holding one Ready node "n1", and the monitor
    /// running on it with tokio's (paused) clock.
    async fn monitored() -> (Store, Arc<Liveness>, CancellationToken) {
        let store = Store::new();
        DirectProposer::install(&store);
        let mut n = crate::store::tests::node("n1", "host1");
        n.state = NodeState::Ready;
        store
            .propose(Txn::new(vec![Op::Create(Object::Node(n))]))
            .await
            .expect("node created");
        let liveness = Arc::new(Liveness::new(store.clone(), TokioClock::shared(EPOCH_MS)));
        let cancel = CancellationToken::new();
        tokio::spawn(liveness.clone().run(cancel.clone()));
        // Let the monitor take its start (the grace counts from here).
        tokio::task::yield_now().await;
        (store, liveness, cancel)
    }

    fn state(store: &Store) -> (NodeState, i64) {
        store.view(|d| {
            let n = &d.nodes["n1"];
            (n.state, n.updated_at_ms)
        })
    }

    /// Polls (in virtual time) until "n1" is in `want`; the time it was seen so.
    async fn until_state(store: &Store, want: NodeState, deadline: Instant) -> Instant {
        loop {
            if state(store).0 == want {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "n1 not {want:?} by the deadline");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_node_is_down_after_the_grace_period_and_not_before() {
        let t0 = Instant::now();
        let (store, _liveness, cancel) = monitored().await;
        tokio::time::sleep_until(t0 + limit()).await;
        assert_eq!(
            state(&store),
            (NodeState::Ready, 0),
            "down before the limit"
        );
        // The monitor looks every quarter of the period (50–500 ms).
        let down = until_state(
            &store,
            NodeState::Down,
            t0 + limit() + Duration::from_secs(1),
        )
        .await;
        let (_, updated) = state(&store);
        let at = EPOCH_MS + i64::try_from((down - t0).as_millis()).expect("ms");
        assert!(
            updated > EPOCH_MS + limit().as_millis() as i64 && updated <= at,
            "written at the clock's time: {updated} (down seen at {at})"
        );
        assert_eq!(
            store.view(|d| d.nodes["n1"].status_message.clone()),
            "heartbeat failure"
        );
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_in_time_keep_a_node_ready() {
        let t0 = Instant::now();
        let (store, liveness, cancel) = monitored().await;
        // Heartbeats every period, for many limits: the node stays Ready, and nothing is
        // written (only transitions are).
        let mut tick = tokio::time::interval(DEFAULT_HEARTBEAT);
        while Instant::now() < t0 + limit() * 5 {
            tick.tick().await;
            liveness.heartbeat("n1").await.expect("heartbeat");
            assert_eq!(state(&store), (NodeState::Ready, 0));
        }
        // Silent from now: Down once the missed periods have passed, not earlier.
        let last = Instant::now();
        let missed = DEFAULT_HEARTBEAT * MISSED_PERIODS;
        tokio::time::sleep_until(last + missed).await;
        assert_eq!(state(&store).0, NodeState::Ready);
        until_state(
            &store,
            NodeState::Down,
            last + missed + Duration::from_secs(1),
        )
        .await;
        // Its next heartbeat brings it back.
        liveness.heartbeat("n1").await.expect("heartbeat");
        assert_eq!(state(&store).0, NodeState::Ready);
        // A removed node's heartbeat says so.
        assert!(matches!(
            liveness.heartbeat("gone").await,
            Err(UpdateError::Build(NodeRemoved(_)))
        ));
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_write_is_retried_not_lost() {
        let t0 = Instant::now();
        let (store, liveness, cancel) = monitored().await;
        // The mark-down write meets a concurrent change (retried at once), then raft does
        // not commit it twice (retried on the monitor's next looks).
        let conflict = ProposeError::Refused(TxnError::Conflict {
            kind: Kind::Node,
            id: "n1".into(),
            expected: 1,
            actual: 2,
        });
        let unavailable = || ProposeError::Raft("no quorum".into());
        let p = Refusing::install(&store, vec![conflict, unavailable(), unavailable()]);
        tokio::time::sleep_until(t0 + limit()).await;
        assert_eq!(p.proposed.load(Ordering::SeqCst), 0);
        until_state(
            &store,
            NodeState::Down,
            t0 + limit() + Duration::from_secs(3),
        )
        .await;
        assert_eq!(p.left(), 0);
        assert_eq!(
            p.proposed.load(Ordering::SeqCst),
            4,
            "3 refused, then written"
        );
        // Down, then a heartbeat whose Ready write is refused: the node is still Down, and
        // its next heartbeat writes Ready.
        let p = Refusing::install(&store, vec![unavailable()]);
        assert!(matches!(
            liveness.heartbeat("n1").await,
            Err(UpdateError::Propose(ProposeError::Raft(_)))
        ));
        assert_eq!(state(&store).0, NodeState::Down);
        liveness.heartbeat("n1").await.expect("second heartbeat");
        assert_eq!(state(&store).0, NodeState::Ready);
        assert_eq!(p.proposed.load(Ordering::SeqCst), 2);
        cancel.cancel();
    }

    /// Lowering the heartbeat period from 30 s to 1 s, with nodes that heartbeat on the old
    /// period: none is down until the old period (plus the new limit) has passed.
    #[test]
    fn a_lowered_heartbeat_period_applies_after_a_grace_of_the_old_one() {
        let t0 = Instant::now();
        let old = Duration::from_secs(30);
        let new = Duration::from_secs(1);
        let mut seen: HashMap<String, Instant> = HashMap::new();
        // Seen 20 s before the change, well within the old limit (90 s).
        seen.insert("a".into(), t0);
        seen.insert("b".into(), t0 + Duration::from_secs(15));
        let change = t0 + Duration::from_secs(20);
        let ids = ["a", "b"];
        assert!(expired_nodes(&mut seen, ids.into_iter(), old, change).is_empty());
        period_changed(&mut seen, old, new, change);
        for after in [0u64, 1, 10, 29, 32] {
            let now = change + Duration::from_secs(after);
            assert!(
                expired_nodes(&mut seen, ids.into_iter(), new, now).is_empty(),
                "{after}s after the change"
            );
        }
        // A node that heartbeats on the new period stays up; one that stopped is down once
        // the grace and the new limit have passed.
        seen.insert("b".into(), change + Duration::from_secs(33));
        let now = change + Duration::from_secs(34);
        assert_eq!(
            expired_nodes(&mut seen, ids.into_iter(), new, now),
            vec!["a"]
        );
        // Raising the period needs no grace: the limit only grows.
        let mut seen2: HashMap<String, Instant> = HashMap::new();
        seen2.insert("a".into(), t0);
        period_changed(&mut seen2, new, old, t0);
        assert_eq!(seen2["a"], t0);
    }
}
