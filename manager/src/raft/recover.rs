//! `swarm init --force-new-cluster`: rebuild a one-voter raft group from this manager's own
//! committed state, after the other managers (and so the quorum) are lost for good.
//!
//! openraft cannot force a membership change without a quorum, so the raft database is
//! rewritten offline, while the manager is stopped:
//!
//! ```text
//!   raft.redb ──read──▶ snapshot + committed log entries ──apply──▶ StoreData at index I
//!       │                                                              │
//!       └─rename─▶ raft.redb.before-force-new-cluster-<ms> (0600)      ▼
//!                  new raft.redb: snapshot at I, membership {this node}, vote term T+1
//! ```
//!
//! Entries this node holds but never knew committed are dropped (as etcd and swarmkit do):
//! nobody acknowledged them through this node's state. The log index continues from I, so
//! object versions keep growing; the first election of the new group runs at a term above
//! every term this node has seen.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use openraft::{
    BasicNode, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase};

use super::log_store::{LOGS, META};
use super::state_machine::{load_snapshot, store_snapshot, StoredSnapshot, SNAPSHOT};
use super::{NodeId, TypeConfig};
use crate::store::{Op, StoreData, Txn};

/// What the rebuilt raft group starts from.
#[derive(Debug)]
pub struct Recovered {
    /// The last committed entry that is now the new group's snapshot.
    pub last_log_id: LogId<NodeId>,
    /// The term the old database had reached (its vote).
    pub old_term: u64,
    /// How many objects `edit` changed.
    pub edited: usize,
    /// Where the old raft database was kept.
    pub backup: PathBuf,
    pub data: StoreData,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("no raft database at {0}: this node holds no manager state to recover from")]
    Missing(PathBuf),
    #[error("the raft database {0} is still open (is this node's manager still running?)")]
    InUse(PathBuf),
    #[error("the raft database {path} holds no committed state to recover from")]
    Empty { path: PathBuf },
    #[error("reading the raft database {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("writing the new raft database {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("adjusting the recovered state: {0}")]
    Edit(String),
    #[error("the committed entry {index} is missing from the raft log in {path}")]
    Gap { path: PathBuf, index: u64 },
}

/// The state this node's raft database holds as committed: the snapshot plus the committed
/// log entries after it, applied in order. Also the highest term the database has seen.
pub fn read_committed(
    db_path: &Path,
) -> Result<(StoreData, Option<LogId<NodeId>>, u64), RecoverError> {
    let bad = |e: &dyn std::fmt::Display| RecoverError::Read {
        path: db_path.to_path_buf(),
        reason: e.to_string(),
    };
    if !db_path.exists() {
        return Err(RecoverError::Missing(db_path.to_path_buf()));
    }
    let db = match Database::open(db_path) {
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(RecoverError::InUse(db_path.to_path_buf()))
        }
        r => r.map_err(|e| bad(&e))?,
    };
    super::schema::check(&db).map_err(|e| bad(&e))?;
    let txn = db.begin_read().map_err(|e| bad(&e))?;
    let meta = txn.open_table(META).map_err(|e| bad(&e))?;
    let meta_get = |key: &str| -> Result<Option<Vec<u8>>, RecoverError> {
        Ok(meta
            .get(key)
            .map_err(|e| bad(&e))?
            .map(|v| v.value().to_vec()))
    };
    let committed: Option<LogId<NodeId>> = match meta_get(super::log_store::COMMITTED)? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| bad(&e))?,
        None => None,
    };
    let vote: Option<Vote<NodeId>> = match meta_get(super::log_store::VOTE)? {
        Some(b) => Some(serde_json::from_slice(&b).map_err(|e| bad(&e))?),
        None => None,
    };
    let snapshot: Option<StoredSnapshot> = match txn.open_table(SNAPSHOT) {
        Ok(t) => load_snapshot(&t).map_err(|e| bad(&e))?,
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(bad(&e)),
    };
    let (mut data, mut last) = match snapshot {
        Some(s) => {
            let d: StoreData = serde_json::from_slice(&s.data).map_err(|e| bad(&e))?;
            (d, s.meta.last_log_id)
        }
        None => (StoreData::default(), None),
    };
    data.rebuild_indexes();
    let mut term = vote.map(|v| v.leader_id().term).unwrap_or(0);
    if let Some(l) = last {
        term = term.max(l.leader_id.term);
    }
    let from = last.map(|l| l.index + 1).unwrap_or(0);
    if let Some(c) = committed.filter(|c| c.index >= from) {
        let logs = txn.open_table(LOGS).map_err(|e| bad(&e))?;
        let mut want = from;
        for item in logs.range(from..=c.index).map_err(|e| bad(&e))? {
            let (k, v) = item.map_err(|e| bad(&e))?;
            let index = k.value();
            if index != want {
                return Err(RecoverError::Gap {
                    path: db_path.to_path_buf(),
                    index: want,
                });
            }
            let e: Entry<TypeConfig> = serde_json::from_slice(v.value()).map_err(|e| bad(&e))?;
            if let EntryPayload::Normal(t) = &e.payload {
                let t = t.txn().map_err(|e| bad(&e))?;
                // A refused transaction was refused on every node alike: it changes nothing.
                // Batched transactions (writes gathered into one entry) apply one by one.
                data.apply_entry(e.log_id.index, t);
            }
            term = term.max(e.log_id.leader_id.term);
            last = Some(e.log_id);
            want = index + 1;
        }
        if want <= c.index {
            return Err(RecoverError::Gap {
                path: db_path.to_path_buf(),
                index: want,
            });
        }
    }
    if last.is_none() {
        return Err(RecoverError::Empty {
            path: db_path.to_path_buf(),
        });
    }
    Ok((data, last, term))
}

/// Replace the raft database in `dir` by one whose only voter is `raft_id` (reached at
/// `addr`), holding this node's committed state as its first snapshot. The old database is
/// kept beside it, readable by root only.
///
/// `edit` adjusts the state to the new group before it is written (the other managers are no
/// members any more): its operations are applied as of the last committed index, so the new
/// group starts from them on every manager that ever joins it.
pub fn force_new_cluster(
    dir: &Path,
    raft_id: NodeId,
    addr: &str,
    edit: impl FnOnce(&StoreData) -> Vec<Op>,
) -> Result<Recovered, RecoverError> {
    let path = dir.join(super::DB_FILE);
    let (mut data, last, old_term) = read_committed(&path)?;
    let last = last.expect("read_committed returns a last log id");
    let ops = edit(&data);
    let edited = ops.len();
    if !ops.is_empty() {
        data.apply_txn(last.index, &Txn::new(ops))
            .map_err(|e| RecoverError::Edit(e.to_string()))?;
    }
    let backup = dir.join(format!(
        "{}.before-force-new-cluster-{}",
        super::DB_FILE,
        crate::clock::Clock::now_ms(&crate::clock::SystemClock)
    ));
    let werr = |p: &Path, e: &dyn std::fmt::Display| RecoverError::Write {
        path: p.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::rename(&path, &backup).map_err(|e| werr(&backup, &e))?;
    restrict(&backup).map_err(|e| werr(&backup, &e))?;
    let res = write_new(&path, raft_id, addr, &data, last, old_term);
    if let Err(e) = res {
        // Leave the node as it was: the old database back in place.
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::rename(&backup, &path);
        return Err(e);
    }
    Ok(Recovered {
        last_log_id: last,
        old_term,
        edited,
        backup,
        data,
    })
}

fn restrict(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
}

fn write_new(
    path: &Path,
    raft_id: NodeId,
    addr: &str,
    data: &StoreData,
    last: LogId<NodeId>,
    old_term: u64,
) -> Result<(), RecoverError> {
    let werr = |e: &dyn std::fmt::Display| RecoverError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let db = Database::create(path).map_err(|e| werr(&e))?;
    restrict(path).map_err(|e| werr(&e))?;
    let voters: BTreeSet<NodeId> = [raft_id].into();
    let nodes: BTreeMap<NodeId, BasicNode> = [(raft_id, BasicNode { addr: addr.into() })].into();
    let membership = Membership::new(vec![voters], nodes);
    let snap = StoredSnapshot {
        meta: SnapshotMeta {
            last_log_id: Some(last),
            last_membership: StoredMembership::new(Some(last), membership),
            snapshot_id: format!("force-new-cluster-{}-{}", last.index, rand::random::<u32>()),
        },
        data: serde_json::to_vec(data).map_err(|e| werr(&e))?,
    };
    // Not yet granted: the node elects itself at the next term, above every term it has seen.
    let vote = Vote::new(old_term + 1, raft_id);
    let vote_bytes = serde_json::to_vec(&vote).map_err(|e| werr(&e))?;
    let last_bytes = serde_json::to_vec(&Some(last)).map_err(|e| werr(&e))?;
    let txn = db.begin_write().map_err(|e| werr(&e))?;
    {
        let mut meta = txn.open_table(META).map_err(|e| werr(&e))?;
        meta.insert(super::log_store::VOTE, vote_bytes.as_slice())
            .map_err(|e| werr(&e))?;
        meta.insert(super::log_store::COMMITTED, last_bytes.as_slice())
            .map_err(|e| werr(&e))?;
        meta.insert(super::log_store::LAST_PURGED, last_bytes.as_slice())
            .map_err(|e| werr(&e))?;
        txn.open_table(LOGS).map_err(|e| werr(&e))?;
        let mut s = txn.open_table(SNAPSHOT).map_err(|e| werr(&e))?;
        store_snapshot(&mut s, &snap.meta, &snap.data).map_err(|e| werr(&e))?;
    }
    txn.commit().map_err(|e| werr(&e))?;
    super::schema::mark(&db).map_err(|e| werr(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::ChangeMembers;

    use super::*;
    use crate::raft::tests::node;
    use crate::raft::{start, Network, Raft, RaftTuning, Txn};
    use crate::store::{Object, Store, TxnOutcome};

    async fn open(dir: &Path, store: Store) -> Raft {
        let tuning = RaftTuning {
            snapshot_every: 7,
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

    async fn write(raft: &Raft, id: &str) -> Result<u64, String> {
        let txn = Txn::new(vec![Op::Create(Object::Node(node(id)))]);
        match tokio::time::timeout(Duration::from_secs(2), raft.client_write(txn.into())).await {
            Ok(Ok(r)) => match r.data {
                TxnOutcome::Applied { index } => Ok(index),
                other => Err(format!("{other:?}")),
            },
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer: no quorum".into()),
        }
    }

    /// A group that lost two of its three voters commits nothing; rebuilt from the survivor's
    /// disk it is a one-voter group again, with every committed write and none of the rest.
    #[tokio::test]
    async fn a_group_without_quorum_is_rebuilt_from_its_committed_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new();
        let raft = open(dir.path(), store.clone()).await;
        let addr = |a: &str| BasicNode { addr: a.into() };
        raft.initialize(BTreeMap::from([(1, addr("127.0.0.1:1"))]))
            .await
            .unwrap();
        wait_leader(&raft).await;
        for i in 0..20 {
            write(&raft, &format!("n{i}")).await.unwrap();
        }
        // Concurrent writes gathered into one entry, as the manager's write queue does: each
        // is kept (a recovery that replayed only plain entries lost them).
        let batch = Txn::batch(
            ["b1", "b2"]
                .iter()
                .map(|id| Txn::new(vec![Op::Create(Object::Node(node(id)))]))
                .collect(),
        );
        let r = raft.client_write(batch.into()).await.unwrap();
        assert!(matches!(r.data, TxnOutcome::Batch(_)), "{:?}", r.data);
        let last = r.log_id.index;
        // Two more voters that never answer: the joint configuration cannot commit, and
        // from then on nothing else can either.
        for id in [2, 3] {
            raft.add_learner(id, addr("127.0.0.1:2"), false)
                .await
                .unwrap();
        }
        let change = raft.change_membership(ChangeMembers::AddVoterIds([2, 3].into()), false);
        assert!(tokio::time::timeout(Duration::from_secs(1), change)
            .await
            .is_err());
        assert!(write(&raft, "lost").await.is_err());
        let before = store.clone_data();
        raft.shutdown().await.unwrap();
        drop(raft);

        // The state is adjusted to the new group as it is written.
        let edit = |d: &StoreData| {
            let mut n = d.nodes["n0"].clone();
            n.status_message = "edited".into();
            vec![Op::Update(Object::Node(n))]
        };
        let mut expected = before.clone();
        let rec = force_new_cluster(dir.path(), 1, "127.0.0.1:9", |d| edit(d)).unwrap();
        assert_eq!(rec.edited, 1);
        expected
            .apply_txn(rec.last_log_id.index, &Txn::new(edit(&before)))
            .unwrap();
        assert!(rec.last_log_id.index > last);
        assert_eq!(rec.data.nodes.len(), 22);
        assert!(rec.data.nodes.contains_key("b1") && rec.data.nodes.contains_key("b2"));
        let mode = std::fs::metadata(&rec.backup).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        let again = Store::new();
        let raft = open(dir.path(), again.clone()).await;
        wait_leader(&raft).await;
        let (voters, nodes) = crate::raft::membership(&raft);
        assert_eq!(voters, BTreeSet::from([1]));
        assert_eq!(nodes.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(nodes[&1].addr, "127.0.0.1:9");
        assert_eq!(again.clone_data(), expected);
        let n0 = again.view(|d| d.nodes["n0"].clone());
        assert_eq!(
            (n0.status_message.as_str(), n0.version),
            ("edited", rec.last_log_id.index)
        );
        assert!(again.view(|d| !d.nodes.contains_key("lost")));
        // Writes commit again, at indexes after the old ones (object versions keep growing).
        let index = write(&raft, "after").await.unwrap();
        assert!(index > rec.last_log_id.index);
        // A manager left behind that comes back with its old state cannot win this node's
        // vote, whatever its term.
        let vote = openraft::raft::VoteRequest::new(
            Vote::new(rec.old_term + 100, 2),
            Some(rec.last_log_id),
        );
        let refused = super::super::network::outside_candidate(&raft, &vote).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
        let member = openraft::raft::VoteRequest::new(Vote::new(rec.old_term + 100, 1), None);
        assert!(super::super::network::outside_candidate(&raft, &member).is_ok());
        wait_leader(&raft).await;
        write(&raft, "still-leader").await.unwrap();

        for i in 20..30 {
            write(&raft, &format!("n{i}")).await.unwrap();
        }
        raft.shutdown().await.unwrap();
        drop(raft);

        // And the rebuilt group survives a restart like any other.
        let third = Store::new();
        let raft = open(dir.path(), third.clone()).await;
        wait_leader(&raft).await;
        assert_eq!(third.view(|d| d.nodes.len()), 34);
        raft.shutdown().await.unwrap();
    }

    #[test]
    fn a_node_without_a_raft_database_has_nothing_to_recover() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            force_new_cluster(dir.path(), 1, "127.0.0.1:9", |_| Vec::new()),
            Err(RecoverError::Missing(_))
        ));
    }
}
