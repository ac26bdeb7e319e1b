//! The Raft log and vote in redb: one write transaction, fsynced, per append.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{NodeId, TypeConfig};

pub(super) const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

pub(super) const VOTE: &str = "vote";
pub(super) const COMMITTED: &str = "committed";
pub(super) const LAST_PURGED: &str = "last_purged";

/// What the log stores of this process have written since it started (every manager in
/// the process counts here): for benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Entries appended.
    pub entries: u64,
    /// Their encoded bytes.
    pub bytes: u64,
    /// Durable (fsynced) commits of the raft database: appends, votes, truncations, purges.
    pub syncs: u64,
}

static ENTRIES: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static SYNCS: AtomicU64 = AtomicU64::new(0);

/// The counts so far (see [`LogStats`]).
pub fn log_stats() -> LogStats {
    LogStats {
        entries: ENTRIES.load(Ordering::Relaxed),
        bytes: BYTES.load(Ordering::Relaxed),
        syncs: SYNCS.load(Ordering::Relaxed),
    }
}

/// Commits `txn` durably, counting it.
fn commit(txn: redb::WriteTransaction) -> Result<(), redb::CommitError> {
    SYNCS.fetch_add(1, Ordering::Relaxed);
    txn.commit()
}

/// Cheap to clone: the log reader handed to replication tasks is a clone.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

pub(super) fn rerr<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::read_logs(openraft::AnyError::new(&e)),
    }
}

pub(super) fn werr<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::write_logs(openraft::AnyError::new(&e)),
    }
}

impl LogStore {
    pub fn open(db: Arc<Database>) -> Result<LogStore, StorageError<NodeId>> {
        let txn = db.begin_write().map_err(werr)?;
        txn.open_table(LOGS).map_err(werr)?;
        txn.open_table(META).map_err(werr)?;
        commit(txn).map_err(werr)?;
        Ok(LogStore { db })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        let txn = self.db.begin_read().map_err(rerr)?;
        let table = txn.open_table(META).map_err(rerr)?;
        let Some(v) = table.get(key).map_err(rerr)? else {
            return Ok(None);
        };
        let parsed = serde_json::from_slice(v.value()).map_err(rerr)?;
        Ok(Some(parsed))
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(value).map_err(werr)?;
        let txn = self.db.begin_write().map_err(werr)?;
        {
            let mut table = txn.open_table(META).map_err(werr)?;
            table.insert(key, bytes.as_slice()).map_err(werr)?;
        }
        commit(txn).map_err(werr)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let txn = self.db.begin_read().map_err(rerr)?;
        let table = txn.open_table(LOGS).map_err(rerr)?;
        let mut out = Vec::new();
        for item in table.range(range).map_err(rerr)? {
            let (_, v) = item.map_err(rerr)?;
            out.push(serde_json::from_slice(v.value()).map_err(rerr)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta(LAST_PURGED)?;
        let txn = self.db.begin_read().map_err(rerr)?;
        let table = txn.open_table(LOGS).map_err(rerr)?;
        let last = match table.last().map_err(rerr)? {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = serde_json::from_slice(v.value()).map_err(rerr)?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta(VOTE, vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(VOTE)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.put_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let txn = self.db.begin_write().map_err(werr)?;
        {
            let mut table = txn.open_table(LOGS).map_err(werr)?;
            for e in entries {
                let bytes = serde_json::to_vec(&e).map_err(werr)?;
                ENTRIES.fetch_add(1, Ordering::Relaxed);
                BYTES.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                table
                    .insert(e.log_id.index, bytes.as_slice())
                    .map_err(werr)?;
            }
        }
        // redb commits are durable (fsync) by default: the entries are on disk when this returns.
        let res = commit(txn);
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(werr(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let txn = self.db.begin_write().map_err(werr)?;
        {
            let mut table = txn.open_table(LOGS).map_err(werr)?;
            table
                .retain_in(log_id.index.., |_, _| false)
                .map_err(werr)?;
        }
        commit(txn).map_err(werr)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(werr)?;
        let txn = self.db.begin_write().map_err(werr)?;
        {
            let mut meta = txn.open_table(META).map_err(werr)?;
            meta.insert(LAST_PURGED, bytes.as_slice()).map_err(werr)?;
            let mut table = txn.open_table(LOGS).map_err(werr)?;
            table
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(werr)?;
        }
        commit(txn).map_err(werr)?;
        Ok(())
    }
}
