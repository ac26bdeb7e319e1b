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

pub use log_store::{log_stats, LogStats, LogStore};
pub use network::{serve_raft, Network};
pub use state_machine::StateMachine;

use openraft::{BasicNode, Config, SnapshotPolicy};

use crate::store::{Store, Txn, TxnOutcome};

openraft::declare_raft_types!(
    /// shoal's Raft types: entries carry store transactions.
    pub TypeConfig:
        D = SharedTxn,
        R = TxnOutcome,
);

/// A raft entry's transaction, shared: the log's cache of recent entries, replication to
/// every follower and the state machine read one copy, where each used to decode the entry
/// again from disk. On disk and on the wire it is the [`Txn`] itself, as JSON, made once an
/// entry and kept with it: the leader writes the same text to its log and to each follower,
/// and a follower writes the text it received. Read back from the log, an entry is decoded
/// only when its transaction is read (applied), not to be sent on to a follower.
#[derive(Clone, Debug)]
pub struct SharedTxn(Arc<Encoded>);

/// At least one of the two is set; the other is made from it when first needed.
#[derive(Debug)]
struct Encoded {
    txn: std::sync::OnceLock<Txn>,
    json: std::sync::OnceLock<Box<serde_json::value::RawValue>>,
}

impl SharedTxn {
    /// The transaction's JSON form, made at the first call.
    fn json(&self) -> Result<&serde_json::value::RawValue, serde_json::Error> {
        if let Some(j) = self.0.json.get() {
            return Ok(j);
        }
        let j = serde_json::value::to_raw_value(self.txn()?)?;
        Ok(self.0.json.get_or_init(|| j))
    }

    /// The transaction, decoded at the first call; an error if its JSON does not decode (an
    /// entry from a follower's network is checked on arrival, see [`SharedTxn::check`]).
    pub fn txn(&self) -> Result<&Txn, serde_json::Error> {
        if let Some(t) = self.0.txn.get() {
            return Ok(t);
        }
        let json = self
            .0
            .json
            .get()
            .expect("an entry has its transaction or its JSON");
        let t = serde_json::from_str(json.get())?;
        Ok(self.0.txn.get_or_init(|| t))
    }

    /// Decodes the transaction now: entries that arrive from another manager are refused
    /// there if they do not decode, not when they are applied.
    pub fn check(&self) -> Result<(), serde_json::Error> {
        self.txn().map(|_| ())
    }
}

impl PartialEq for SharedTxn {
    fn eq(&self, other: &SharedTxn) -> bool {
        **self == **other
    }
}

impl serde::Serialize for SharedTxn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.json().map_err(serde::ser::Error::custom)?.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for SharedTxn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SharedTxn, D::Error> {
        let json = Box::<serde_json::value::RawValue>::deserialize(d)?;
        Ok(SharedTxn(Arc::new(Encoded {
            txn: std::sync::OnceLock::new(),
            json: std::sync::OnceLock::from(json),
        })))
    }
}

impl From<Txn> for SharedTxn {
    fn from(txn: Txn) -> SharedTxn {
        SharedTxn(Arc::new(Encoded {
            txn: std::sync::OnceLock::from(txn),
            json: std::sync::OnceLock::new(),
        }))
    }
}

impl std::ops::Deref for SharedTxn {
    type Target = Txn;
    /// Panics if the entry's JSON does not decode: entries are checked when they arrive from
    /// another manager, and the log holds only entries that were.
    fn deref(&self) -> &Txn {
        self.txn()
            .expect("a raft entry's transaction decodes (checked when it arrived)")
    }
}

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;

/// The raft log, vote and snapshot of a manager, in its raft directory.
pub const DB_FILE: &str = "raft.redb";

/// Timing of elections, heartbeats and leases. Tuned for a LAN: a dead leader is replaced in
/// well under a second. A follower grants no vote for `election_max` after the leader's last
/// message (openraft's leader lease); openraft's own timer then waits its election timeout
/// on top, checked only on its tick (1.5 × `rpc_timeout`): 1.1–1.7 s in all. The prompt
/// election ([`prompt_elections`]) starts one as soon as the other followers can vote, a
/// little after `election_max`, the followers in turn; openraft's timer stays as the fallback.
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
/// has run out, plus its turn. Turns go by raft id among the voters other than the silent
/// leader, a third of `election_min` apart, so that two followers do not stand at once and
/// split the vote (a random part would have to be wider than a vote's round trip under load
/// to do as well); the next in turn stands only if the first has not won by then.
#[derive(Debug, Default)]
struct Prompt {
    /// The last leader contact the current silence is measured from.
    contact: Option<tokio::time::Instant>,
    fired: bool,
}

impl Prompt {
    /// Whether to stand now. `contact`: when this node last heard from the leader it follows
    /// (None: it follows none, or is leader or candidate itself); `turn`: this node's place
    /// among the voters other than that leader.
    fn due(
        &mut self,
        contact: Option<tokio::time::Instant>,
        turn: u32,
        now: tokio::time::Instant,
        tuning: &RaftTuning,
    ) -> bool {
        if contact != self.contact {
            self.contact = contact;
            self.fired = false;
        }
        let Some(contact) = contact else {
            return false;
        };
        let wait = prompt_wait(tuning, turn);
        if self.fired || now.saturating_duration_since(contact) <= wait {
            return false;
        }
        self.fired = true;
        true
    }
}

/// How long a follower whose turn is `turn` lets its leader be silent: `election_max`, a
/// margin for the others to have heard the leader's last message a little later (a vote
/// asked before their lease ends is refused, and the candidate's higher term then splits the
/// vote with the next in turn), and a third of `election_min` per turn before it.
fn prompt_wait(tuning: &RaftTuning, turn: u32) -> Duration {
    tuning.election_max + tuning.election_min / 9 + (tuning.election_min / 3).saturating_mul(turn)
}

/// This node's turn to stand when `leader` is silent: its place by id among the other voters.
fn turn(me: NodeId, leader: Option<NodeId>, voters: impl Iterator<Item = NodeId>) -> u32 {
    voters.filter(|v| Some(*v) != leader && *v < me).count() as u32
}

/// Starts an election when the leader has gone silent, without waiting for openraft's timer
/// (see [`RaftTuning`]). Safe at any time — an election never breaks raft's guarantees — and
/// no earlier than openraft's own lease lets the other followers vote, so a leader that is
/// merely slow keeps its followers (and its own lease, shorter still, has ended before).
/// Ends with the raft.
async fn prompt_elections(raft: Raft, tuning: RaftTuning) {
    let mut prompt = Prompt::default();
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
            let voter = membership.voter_ids().any(|v| v == m.id);
            (m.state == openraft::ServerState::Follower
                && m.current_leader.is_some()
                && voter
                && membership.voter_ids().count() > 1)
                .then(|| turn(m.id, m.current_leader, membership.voter_ids()))
        };
        let contact = match following {
            Some(_) => match raft
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
            },
            None => None,
        };
        let now = tokio::time::Instant::now();
        if prompt.due(contact, following.unwrap_or(0), now, &tuning) {
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

    /// An entry's payload is the transaction's JSON, on disk and on the wire, made once: the
    /// text a follower received is the text it writes, byte for byte.
    #[test]
    fn an_entry_is_encoded_once_and_as_its_transaction() {
        let txn = Txn::new(vec![
            Op::Create(Object::Node(node("n1"))),
            Op::Delete {
                kind: crate::store::Kind::Node,
                id: "n0 \"quoted\"".into(),
            },
        ]);
        let plain = serde_json::to_string(&txn).unwrap();
        let shared = SharedTxn::from(txn.clone());
        assert!(shared.0.json.get().is_none());
        let entry = openraft::Entry::<TypeConfig> {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 7),
            payload: openraft::EntryPayload::Normal(shared.clone()),
        };
        let bytes = serde_json::to_string(&entry).unwrap();
        assert!(bytes.contains(&plain), "{bytes}");
        assert_eq!(shared.0.json.get().map(|j| j.get()), Some(plain.as_str()));
        let back: openraft::Entry<TypeConfig> = serde_json::from_str(&bytes).unwrap();
        let openraft::EntryPayload::Normal(got) = &back.payload else {
            panic!("not a normal entry");
        };
        // Sent on as it came, without being decoded; decoded when read.
        assert_eq!(serde_json::to_string(&back).unwrap(), bytes);
        assert!(got.0.txn.get().is_none());
        assert_eq!(**got, txn);
        assert_eq!(got.0.json.get().map(|j| j.get()), Some(plain.as_str()));
        // Malformed: not JSON at all is refused at once; a transaction that does not decode
        // fails its check (made where entries arrive from another manager).
        assert!(serde_json::from_str::<SharedTxn>(r#"{"ops":["#).is_err());
        let bad: SharedTxn = serde_json::from_str(r#"{"ops":[{"Nope":1}]}"#).unwrap();
        assert!(bad.check().is_err());
    }

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

    /// A follower stands once per silence of its leader: after `election_max` and its turn,
    /// not before, not again while the silence lasts, and anew after the next contact.
    #[test]
    fn a_silent_leader_prompts_one_election_per_silence_in_turn() {
        let t = RaftTuning::default();
        let t0 = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        let mut p = Prompt::default();
        let (first, second) = (prompt_wait(&t, 0), prompt_wait(&t, 1));
        assert!(first > t.election_max, "after the other followers' lease");
        assert!(second >= first + t.election_min / 3);
        // No leader followed: nothing.
        assert!(!p.due(None, 0, t0 + ms(5000), &t));
        // First in turn, heard at t0: quiet until its wait, due just after, then not again.
        assert!(!p.due(Some(t0), 0, t0 + ms(10), &t));
        assert!(!p.due(Some(t0), 0, t0 + first, &t));
        assert!(p.due(Some(t0), 0, t0 + first + ms(1), &t));
        assert!(!p.due(Some(t0), 0, t0 + first + ms(500), &t));
        // A new contact starts a new silence; the second in turn waits longer.
        let t1 = t0 + ms(2000);
        assert!(!p.due(Some(t1), 1, t1 + second, &t));
        assert!(p.due(Some(t1), 1, t1 + second + ms(1), &t));
        // Candidate or leader in between (no contact), then following again: a new silence.
        assert!(!p.due(None, 0, t1 + ms(3000), &t));
        assert!(p.due(Some(t1), 0, t1 + ms(3000), &t));
    }

    #[test]
    fn turns_go_by_id_among_the_voters_but_the_silent_leader() {
        let voters = [7u64, 3, 9, 5, 1];
        let turns: Vec<u32> = [1u64, 3, 5, 9]
            .iter()
            .map(|me| turn(*me, Some(7), voters.iter().copied()))
            .collect();
        assert_eq!(turns, vec![0, 1, 2, 3]);
        assert_eq!(turn(9, None, voters.iter().copied()), 4);
        assert_eq!(turn(1, Some(1), voters.iter().copied()), 0);
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
                    .client_write(
                        Txn::new(vec![Op::Create(Object::Node(node(&format!("n{i}"))))]).into(),
                    )
                    .await
                    .unwrap();
                assert!(matches!(out.data, TxnOutcome::Applied { .. }));
            }
            // A refused transaction is acknowledged as refused and changes nothing.
            let out = raft
                .client_write(Txn::new(vec![Op::Create(Object::Node(node("n0")))]).into())
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
