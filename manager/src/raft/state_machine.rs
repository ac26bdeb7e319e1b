//! The Raft state machine: applies committed entries to the [`Store`] and keeps the latest
//! snapshot of it in redb.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{NodeId, TypeConfig};
use crate::store::{Store, StoreData, TxnOutcome};

pub(super) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
pub(super) const CURRENT: &str = "current";

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
        match table.get(CURRENT).map_err(sm_err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(sm_err)?)),
            None => Ok(None),
        }
    }
}

fn write_snapshot(db: &Database, snap: &StoredSnapshot) -> Result<(), StorageError<NodeId>> {
    let bytes = serde_json::to_vec(snap).map_err(sm_err)?;
    let txn = db.begin_write().map_err(sm_err)?;
    {
        let mut table = txn.open_table(SNAPSHOT).map_err(sm_err)?;
        table.insert(CURRENT, bytes.as_slice()).map_err(sm_err)?;
    }
    txn.commit().map_err(sm_err)?;
    Ok(())
}

pub struct SnapshotBuilder {
    db: Arc<Database>,
    data: StoreData,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let data = serde_json::to_vec(&self.data).map_err(sm_err)?;
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, rand::random::<u32>()),
            None => format!("empty-{}", rand::random::<u32>()),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        write_snapshot(&self.db, &stored)?;
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
            data: self.store.clone_data(),
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
        write_snapshot(
            &self.db,
            &StoredSnapshot {
                meta: meta.clone(),
                data: bytes,
            },
        )?;
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
}
