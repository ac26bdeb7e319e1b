//! Raft: openraft with a redb-backed log and snapshots in the data dir, and a gRPC transport.
//!
//! The state machine is the [`Store`](crate::store::Store): committed entries are applied to it
//! in log order, and snapshots are its tables serialised. On restart the last snapshot is
//! loaded and the committed tail of the log re-applied, so a manager killed with SIGKILL comes
//! back with every acknowledged write.

// openraft's storage traits fix the error type (`StorageError`, ~224 bytes); our helpers
// return the same type rather than box and unbox it at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod lease;
mod log_store;
mod network;
pub mod recover;
pub mod schema;
mod state_machine;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use log_store::LogStore;
pub use network::{serve_raft, Network};
pub use state_machine::StateMachine;

use openraft::{BasicNode, Config, SnapshotPolicy};

use crate::store::{Store, Txn, TxnOutcome};

openraft::declare_raft_types!(
    /// shoal's Raft types: entries carry store transactions.
    pub TypeConfig:
        D = Txn,
        R = TxnOutcome,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;

/// The raft log, vote and snapshot of a manager, in its raft directory.
pub const DB_FILE: &str = "raft.redb";

/// Timing of elections, heartbeats and leases. Tuned for a LAN: a dead leader is replaced in
/// well under a second. A follower grants no vote for `election_max` after the leader's last
/// message (openraft's leader lease); openraft's own timer then waits its election timeout
/// on top, checked only on its tick (1.5 × `rpc_timeout`): 1.1–1.7 s in all. The prompt
/// election ([`prompt_elections`]) starts one as soon as the other followers can vote, at
/// `election_max` plus a random 0–⅓ `election_min`; openraft's timer stays as the fallback.
///
/// openraft 0.9 uses one setting, `heartbeat_interval`, as the heartbeat period, as the
/// timeout of every AppendEntries and as its tick. The heartbeat period and the message
/// timeout are separate here: openraft's own heartbeat is off and the manager sends one every
/// `heartbeat`; openraft's setting is `rpc_timeout`, so an append that waits for a follower's
/// fsync under load is not abandoned (and resent, and abandoned again) after one heartbeat.
#[derive(Clone, Debug)]
pub struct RaftTuning {
    pub heartbeat: Duration,
    /// How long a raft message may take; also openraft's tick (× 1.5).
    pub rpc_timeout: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// How long a leader acts as leader after a quorum last acknowledged it (check-quorum).
    /// Below every manager's `election_max`, so it ends before anyone else can be elected.
    pub lease: Duration,
    pub snapshot_every: u64,
    /// Stand as soon as a silent leader's lease has run out ([`prompt_elections`]); off,
    /// only openraft's timer elects (the former behaviour, for benchmarks' baselines).
    pub prompt_election: bool,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat: Duration::from_millis(100),
            rpc_timeout: Duration::from_millis(250),
            election_min: Duration::from_millis(450),
            election_max: Duration::from_millis(650),
            lease: Duration::from_millis(450),
            snapshot_every: 5000,
            prompt_election: true,
        }
    }
}

impl RaftTuning {
    /// The default proportions around another election timeout (its lower bound).
    pub fn with_election(heartbeat: Duration, election_min: Duration) -> RaftTuning {
        RaftTuning {
            heartbeat,
            rpc_timeout: election_min * 5 / 9,
            election_min,
            election_max: election_min * 13 / 9,
            lease: election_min,
            ..Default::default()
        }
    }

    /// The tuning's own consistency (openraft checks the rest).
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat.is_zero() || self.heartbeat >= self.election_min {
            return Err(format!(
                "the raft heartbeat ({:?}) must be shorter than the election timeout ({:?})",
                self.heartbeat, self.election_min
            ));
        }
        if self.lease.is_zero() || self.lease >= self.election_max {
            return Err(format!(
                "the leader lease ({:?}) must be shorter than the election timeout's maximum ({:?})",
                self.lease, self.election_max
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RaftSetupError {
    #[error("opening the raft database {path}: {source}")]
    Open {
        path: String,
        source: redb::DatabaseError,
    },
    #[error("raft storage: {0}")]
    Storage(Box<openraft::StorageError<NodeId>>),
    #[error("raft configuration: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("raft tuning: {0}")]
    Tuning(String),
    #[error("raft: {0}")]
    Fatal(Box<openraft::error::Fatal<NodeId>>),
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
}

impl From<openraft::StorageError<NodeId>> for RaftSetupError {
    fn from(e: openraft::StorageError<NodeId>) -> Self {
        RaftSetupError::Storage(Box::new(e))
    }
}

impl From<openraft::error::Fatal<NodeId>> for RaftSetupError {
    fn from(e: openraft::error::Fatal<NodeId>) -> Self {
        RaftSetupError::Fatal(Box::new(e))
    }
}

/// Page cache of the raft database.
const RAFT_DB_CACHE: usize = 32 * 1024 * 1024;

/// redb caches up to 1 GiB by default: the manager's memory must not grow with the log.
fn open_db(path: &Path) -> Result<redb::Database, redb::DatabaseError> {
    redb::Builder::new()
        .set_cache_size(RAFT_DB_CACHE)
        .create(path)
}

/// Open the node's raft database and start the raft node (uninitialised if new).
pub async fn start<N: openraft::RaftNetworkFactory<TypeConfig>>(
    raft_id: NodeId,
    data_dir: &Path,
    store: Store,
    network: N,
    tuning: &RaftTuning,
) -> Result<Raft, RaftSetupError> {
    let path = data_dir.join(DB_FILE);
    // A raft of this node that was just shut down (demotion, restart in-process) releases the
    // database only when its last worker task has ended: wait for it, boundedly.
    let mut tries = 0;
    let db = loop {
        match open_db(&path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => {
                break r.map_err(|e| RaftSetupError::Open {
                    path: path.display().to_string(),
                    source: e,
                })?
            }
        }
    };
    schema::check(&db)?;
    let db = Arc::new(db);
    let log = LogStore::open(db.clone())?;
    let sm = StateMachine::open(db.clone(), store)?;
    schema::mark(&db)?;
    tuning.validate().map_err(RaftSetupError::Tuning)?;
    let config = Config {
        cluster_name: "shoal".into(),
        heartbeat_interval: tuning.rpc_timeout.as_millis() as u64,
        enable_heartbeat: false,
        election_timeout_min: tuning.election_min.as_millis() as u64,
        election_timeout_max: tuning.election_max.as_millis() as u64,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_every),
        max_in_snapshot_log_to_keep: 500,
        ..Default::default()
    }
    .validate()?;
    let raft = Raft::new(raft_id, Arc::new(config), network, log, sm).await?;
    if tuning.prompt_election {
        tokio::spawn(prompt_elections(raft.clone(), tuning.clone()));
    }
    Ok(raft)
}

/// How often a follower looks whether its leader has gone silent.
const PROMPT_CHECK: Duration = Duration::from_millis(20);

/// When a follower whose leader went silent starts an election: once per silence, as soon
/// as every other follower's lease on that leader (`election_max` since its last message)
/// has run out, plus a random part so that two followers rarely stand at once.
#[derive(Debug)]
struct Prompt {
    /// The last leader contact this silence is measured from, and its random part.
    episode: Option<(tokio::time::Instant, Duration)>,
    fired: bool,
}

impl Prompt {
    fn new() -> Prompt {
        Prompt {
            episode: None,
            fired: false,
        }
    }

    /// Whether to stand now. `contact`: when this node last heard from the leader it follows
    /// (None: it follows none, or is leader or candidate itself); `jitter` draws the random
    /// part of a new silence.
    fn due(
        &mut self,
        contact: Option<tokio::time::Instant>,
        now: tokio::time::Instant,
        tuning: &RaftTuning,
        jitter: impl FnOnce() -> Duration,
    ) -> bool {
        let Some(contact) = contact else {
            self.episode = None;
            return false;
        };
        let wait = match self.episode {
            Some((c, j)) if c == contact => j,
            _ => {
                let j = jitter().min(tuning.election_min / 3);
                self.episode = Some((contact, j));
                self.fired = false;
                j
            }
        };
        if self.fired || now.saturating_duration_since(contact) <= tuning.election_max + wait {
            return false;
        }
        self.fired = true;
        true
    }
}

/// Starts an election when the leader has gone silent, without waiting for openraft's timer
/// (see [`RaftTuning`]). Safe at any time — an election never breaks raft's guarantees — and
/// no earlier than openraft's own lease lets the other followers vote, so a leader that is
/// merely slow keeps its followers (and its own lease, shorter still, has ended before).
/// Ends with the raft.
async fn prompt_elections(raft: Raft, tuning: RaftTuning) {
    let mut prompt = Prompt::new();
    let mut tick = tokio::time::interval(PROMPT_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let following = {
            let m = raft.metrics();
            let m = m.borrow();
            if m.running_state.is_err() {
                return;
            }
            let membership = m.membership_config.membership();
            m.state == openraft::ServerState::Follower
                && m.current_leader.is_some()
                && membership.voter_ids().count() > 1
                && membership.voter_ids().any(|v| v == m.id)
        };
        let contact = if following {
            match raft
                .with_raft_state(|s| {
                    s.vote_ref()
                        .is_committed()
                        .then(|| s.vote_last_modified())
                        .flatten()
                })
                .await
            {
                Ok(c) => c,
                Err(_) => return,
            }
        } else {
            None
        };
        let now = tokio::time::Instant::now();
        let due = prompt.due(contact, now, &tuning, || {
            tuning.election_min.mul_f64(rand::random::<f64>() / 3.0)
        });
        if due {
            tracing::info!(
                silent = ?contact.map(|c| now.saturating_duration_since(c)),
                "the leader is silent: starting an election"
            );
            if raft.trigger().elect().await.is_err() {
                return;
            }
        }
    }
}

/// Voters and learners of the current membership, with their addresses.
pub fn membership(raft: &Raft) -> (BTreeSet<NodeId>, BTreeMap<NodeId, BasicNode>) {
    let m = raft.metrics().borrow().membership_config.clone();
    let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
    let nodes: BTreeMap<NodeId, BasicNode> = m
        .membership()
        .nodes()
        .map(|(id, n)| (*id, n.clone()))
        .collect();
    (voters, nodes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::{Node, NodeDescription, NodeState, Object, Op, TxnOutcome};
    use proto::security::Role;

    /// A manager node object for raft tests.
    pub(crate) fn node(id: &str) -> Node {
        Node {
            ingress_addr: None,
            id: id.into(),
            version: 0,
            raft_id: 1,
            role: Role::Manager,
            desired_role: Role::Manager,
            availability: Default::default(),
            labels: Default::default(),
            description: NodeDescription::default(),
            state: NodeState::Ready,
            status_message: String::new(),
            created_at_ms: 0,
            updated_at_ms: 0,
            cert_not_after_ms: 0,
        }
    }

    /// A follower stands once per silence of its leader: after `election_max` and its random
    /// part, not before, not again while the silence lasts, and anew after the next contact.
    #[test]
    fn a_silent_leader_prompts_one_election_per_silence() {
        let t = RaftTuning::default();
        let t0 = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        let mut p = Prompt::new();
        let j = ms(100);
        // No leader followed: nothing.
        assert!(!p.due(None, t0 + ms(5000), &t, || j));
        // Heard at t0: quiet until election_max + jitter, due just after, then not again.
        let due = t.election_max + j;
        assert!(!p.due(Some(t0), t0 + ms(10), &t, || j));
        assert!(!p.due(Some(t0), t0 + due, &t, || unreachable!("drawn once")));
        assert!(p.due(Some(t0), t0 + due + ms(1), &t, || unreachable!()));
        assert!(!p.due(Some(t0), t0 + due + ms(500), &t, || unreachable!()));
        // A new contact starts a new silence with a new random part, capped at ⅓ election_min.
        let t1 = t0 + ms(2000);
        assert!(!p.due(Some(t1), t1 + t.election_max + ms(140), &t, || ms(10_000)));
        assert!(p.due(Some(t1), t1 + t.election_max + ms(151), &t, || unreachable!()));
        // Candidate or leader in between (no contact), then following again: a new silence.
        assert!(!p.due(None, t1 + ms(3000), &t, || j));
        assert!(p.due(Some(t1), t1 + ms(3000), &t, || ms(0)));
        // The prompt never comes before the lease the other followers hold on the leader.
        let mut p = Prompt::new();
        assert!(!p.due(Some(t0), t0 + t.election_max, &t, || ms(0)));
        assert!(p.due(Some(t0), t0 + t.election_max + ms(1), &t, || ms(0)));
    }

    async fn open(dir: &Path, store: Store, snapshot_every: u64) -> Raft {
        let tuning = RaftTuning {
            snapshot_every,
            ..Default::default()
        };
        let network = Network::new(proto::transport::Credentials::new(None));
        start(1, dir, store, network, &tuning).await.unwrap()
    }

    async fn wait_leader(raft: &Raft) {
        raft.wait(Some(Duration::from_secs(10)))
            .state(openraft::ServerState::Leader, "leader")
            .await
            .unwrap();
    }

    /// Writes survive a restart, through log replay and through a snapshot.
    #[tokio::test]
    async fn committed_writes_survive_restart_from_log_and_snapshot() {
        for snapshot_every in [1_000_000, 5] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::new();
            let raft = open(dir.path(), store.clone(), snapshot_every).await;
            let mut members = BTreeMap::new();
            members.insert(
                1,
                BasicNode {
                    addr: "127.0.0.1:1".into(),
                },
            );
            raft.initialize(members).await.unwrap();
            wait_leader(&raft).await;
            for i in 0..20 {
                let out = raft
                    .client_write(Txn::new(vec![Op::Create(Object::Node(node(&format!(
                        "n{i}"
                    ))))]))
                    .await
                    .unwrap();
                assert!(matches!(out.data, TxnOutcome::Applied { .. }));
            }
            // A refused transaction is acknowledged as refused and changes nothing.
            let out = raft
                .client_write(Txn::new(vec![Op::Create(Object::Node(node("n0")))]))
                .await
                .unwrap();
            assert!(matches!(out.data, TxnOutcome::Refused(_)));
            let before = store.clone_data();
            raft.shutdown().await.unwrap();
            drop(raft);

            let again = Store::new();
            let raft = open(dir.path(), again.clone(), snapshot_every).await;
            wait_leader(&raft).await;
            assert_eq!(
                again.clone_data(),
                before,
                "snapshot_every={snapshot_every}"
            );
            assert_eq!(again.view(|d| d.nodes.len()), 20);
            raft.shutdown().await.unwrap();
        }
    }
}
