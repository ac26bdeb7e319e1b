//! The Raft state machine: applies committed entries to the [`Store`] and keeps the latest
//! snapshot of it in redb.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{NodeId, TypeConfig};
use crate::store::{Store, StoreData, TxnOutcome};

pub(super) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
/// Before: one JSON document holding the meta and the data (the data as a JSON array of
/// numbers, 3.5 times its size). Read, never written.
const LEGACY_CURRENT: &str = "current";
/// The current snapshot's meta (JSON) and its data (the store's tables as serialised),
/// stored side by side so that the data is written as it is, without a copy.
const CURRENT_META: &str = "current-meta";
const CURRENT_DATA: &str = "current-data";

#[derive(Serialize, Deserialize)]
pub(super) struct StoredSnapshot {
    pub(super) meta: SnapshotMeta<NodeId, BasicNode>,
    /// The store's tables, serialised (the bytes sent to followers).
    pub(super) data: Vec<u8>,
}

fn sm_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::write_state_machine(openraft::AnyError::new(&e)),
    }
}

pub struct StateMachine {
    db: Arc<Database>,
    store: Store,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

impl StateMachine {
    /// Opens the state machine, loading the last snapshot into `store`.
    pub fn open(db: Arc<Database>, store: Store) -> Result<StateMachine, StorageError<NodeId>> {
        let txn = db.begin_write().map_err(sm_err)?;
        txn.open_table(SNAPSHOT).map_err(sm_err)?;
        txn.commit().map_err(sm_err)?;
        let mut sm = StateMachine {
            db,
            store,
            last_applied: None,
            membership: StoredMembership::default(),
        };
        if let Some(snap) = sm.read_snapshot()? {
            let data: StoreData = serde_json::from_slice(&snap.data).map_err(sm_err)?;
            sm.store.replace(data);
            sm.last_applied = snap.meta.last_log_id;
            sm.membership = snap.meta.last_membership.clone();
        }
        Ok(sm)
    }

    fn read_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError<NodeId>> {
        let txn = self.db.begin_read().map_err(sm_err)?;
        let table = txn.open_table(SNAPSHOT).map_err(sm_err)?;
        load_snapshot(&table).map_err(|e| sm_err(std::io::Error::other(e)))
    }
}

/// The current snapshot in `table`, in either layout.
pub(super) fn load_snapshot(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<StoredSnapshot>, String> {
    if let (Some(meta), Some(data)) = (
        table.get(CURRENT_META).map_err(|e| e.to_string())?,
        table.get(CURRENT_DATA).map_err(|e| e.to_string())?,
    ) {
        return Ok(Some(StoredSnapshot {
            meta: serde_json::from_slice(meta.value()).map_err(|e| e.to_string())?,
            data: data.value().to_vec(),
        }));
    }
    match table.get(LEGACY_CURRENT).map_err(|e| e.to_string())? {
        Some(v) => Ok(Some(
            serde_json::from_slice(v.value()).map_err(|e| e.to_string())?,
        )),
        None => Ok(None),
    }
}

/// Makes `meta` and `data` the current snapshot in `table`.
pub(super) fn store_snapshot(
    table: &mut redb::Table<&'static str, &'static [u8]>,
    meta: &SnapshotMeta<NodeId, BasicNode>,
    data: &[u8],
) -> Result<(), String> {
    let meta = serde_json::to_vec(meta).map_err(|e| e.to_string())?;
    table
        .insert(CURRENT_META, meta.as_slice())
        .map_err(|e| e.to_string())?;
    table
        .insert(CURRENT_DATA, data)
        .map_err(|e| e.to_string())?;
    table.remove(LEGACY_CURRENT).map_err(|e| e.to_string())?;
    Ok(())
}

fn write_snapshot(
    db: &Database,
    meta: &SnapshotMeta<NodeId, BasicNode>,
    data: &[u8],
) -> Result<(), StorageError<NodeId>> {
    let txn = db.begin_write().map_err(sm_err)?;
    {
        let mut table = txn.open_table(SNAPSHOT).map_err(sm_err)?;
        store_snapshot(&mut table, meta, data).map_err(|e| sm_err(std::io::Error::other(e)))?;
    }
    txn.commit().map_err(sm_err)?;
    Ok(())
}

pub struct SnapshotBuilder {
    db: Arc<Database>,
    /// The tables, serialised when the builder is made (no apply in between): a copy of
    /// the store would cost as much memory as the store itself.
    data: Result<Vec<u8>, serde_json::Error>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let data = std::mem::replace(&mut self.data, Ok(Vec::new())).map_err(sm_err)?;
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, rand::random::<u32>()),
            None => format!("empty-{}", rand::random::<u32>()),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        write_snapshot(&self.db, &meta, &data)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<TxnOutcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for e in entries {
            // An entry read back from the log is decoded here: one that does not decode (a
            // damaged log) stops the state machine before anything of it is applied.
            if let EntryPayload::Normal(txn) = &e.payload {
                txn.check().map_err(sm_err)?;
            }
            self.last_applied = Some(e.log_id);
            let r = match e.payload {
                EntryPayload::Blank => TxnOutcome::Nothing,
                EntryPayload::Normal(txn) => self.store.apply(e.log_id.index, &txn),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(e.log_id), m);
                    TxnOutcome::Nothing
                }
            };
            out.push(r);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            data: self.store.view_long(serde_json::to_vec),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let data: StoreData = serde_json::from_slice(&bytes).map_err(sm_err)?;
        write_snapshot(&self.db, meta, &bytes)?;
        self.store.replace(data);
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.read_snapshot()?.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::LogStore;
    use openraft::testing::{StoreBuilder, Suite};

    /// A fresh redb file per test, as a manager opens it; the temp dir is the guard.
    struct RedbBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
            let dir = tempfile::tempdir().map_err(sm_err)?;
            let db = Arc::new(Database::create(dir.path().join("raft.redb")).map_err(sm_err)?);
            let log = LogStore::open(db.clone())?;
            let sm = StateMachine::open(db, Store::new())?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's storage conformance suite (log, vote, purge, truncate, apply, snapshots)
    /// against the redb log store and the state machine.
    #[test]
    fn openraft_storage_suite_passes_on_redb() {
        if let Err(e) = Suite::test_all(RedbBuilder) {
            panic!("openraft storage suite: {e}");
        }
    }

    fn meta(index: u64) -> SnapshotMeta<NodeId, BasicNode> {
        SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("s-{index}"),
        }
    }

    #[test]
    fn snapshots_in_the_old_layout_load_and_the_new_one_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("raft.redb")).unwrap();
        let old = StoredSnapshot {
            meta: meta(7),
            data: br#"{"tasks":{}}"#.to_vec(),
        };
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(SNAPSHOT).unwrap();
            let legacy = serde_json::to_vec(&old).unwrap();
            t.insert(LEGACY_CURRENT, legacy.as_slice()).unwrap();
        }
        txn.commit().unwrap();

        let read = |db: &Database| {
            let txn = db.begin_read().unwrap();
            let t = txn.open_table(SNAPSHOT).unwrap();
            load_snapshot(&t).unwrap().unwrap()
        };
        let got = read(&db);
        assert_eq!(got.meta, old.meta);
        assert_eq!(got.data, old.data);

        // 100 KB of data is stored as it is (not as a JSON array of numbers).
        let data = vec![b'x'; 100_000];
        write_snapshot(&db, &meta(9), &data).unwrap();
        let got = read(&db);
        assert_eq!(got.meta, meta(9));
        assert_eq!(got.data, data);
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(SNAPSHOT).unwrap();
        assert!(t.get(LEGACY_CURRENT).unwrap().is_none());
        assert_eq!(
            t.get(CURRENT_DATA).unwrap().unwrap().value().len(),
            data.len()
        );
    }
}
