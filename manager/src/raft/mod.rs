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
/// about a second and a half, inside the 2 s failover goal (a follower waits `election_max`
/// after the leader's last message — the lease during which it grants no vote — plus its own
/// election timeout).
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
    Ok(Raft::new(raft_id, Arc::new(config), network, log, sm).await?)
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
