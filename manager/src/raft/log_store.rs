//! The Raft log and vote in redb: one write transaction, fsynced, per append.
//!
//! The newest entries are also kept decoded in memory ([`Recent`]): replication to each
//! follower and the state machine read them from there instead of decoding them from disk
//! once per reader.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// How many encoded bytes of the newest entries [`Recent`] keeps, per manager; it holds them
/// decoded too, which costs more than the bytes (bench cluster, 100k tasks, with entries of
/// ~780 bytes a task: 16 MiB peaked 150 MiB lower than 32 MiB and ran no slower).
const RECENT_BYTES: usize = 16 << 20;

/// The newest entries of the log, decoded: a contiguous run that ends at the last entry on
/// disk, or nothing. An entry joins it only once it is durable; truncation and purges remove
/// from it before they touch the disk, so what it holds is always what the disk holds.
#[derive(Default)]
struct Recent {
    /// Entries with their encoded size, in index order.
    entries: VecDeque<(Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl Recent {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Adds a durable entry. One that does not follow the last restarts the run.
    fn push(&mut self, entry: Entry<TypeConfig>, size: usize) {
        if self
            .last_index()
            .is_some_and(|last| entry.log_id.index != last + 1)
        {
            self.clear();
        }
        self.bytes += size;
        self.entries.push_back((entry, size));
        while self.bytes > RECENT_BYTES && self.entries.len() > 1 {
            if let Some((_, s)) = self.entries.pop_front() {
                self.bytes -= s;
            }
        }
    }

    /// Drops the entries from `index` on.
    fn truncate(&mut self, index: u64) {
        while self.last_index().is_some_and(|last| last >= index) {
            if let Some((_, s)) = self.entries.pop_back() {
                self.bytes -= s;
            }
        }
    }

    /// Drops the entries up to `index`.
    fn purge(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            if let Some((_, s)) = self.entries.pop_front() {
                self.bytes -= s;
            }
        }
    }

    /// The entries in `range`, when all of those that exist are here; `None` sends the reader
    /// to the disk.
    fn get<RB: RangeBounds<u64>>(&self, range: &RB) -> Option<Vec<Entry<TypeConfig>>> {
        let first = self.first_index()?;
        let last = self.last_index()?;
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.checked_add(1)?,
            Bound::Unbounded => return None,
        };
        // Past the last entry there is nothing, on disk either.
        let end = match range.end_bound() {
            Bound::Included(&e) => e.min(last),
            Bound::Excluded(&e) => e.checked_sub(1)?.min(last),
            Bound::Unbounded => last,
        };
        if start < first {
            return None;
        }
        if start > end {
            return Some(Vec::new());
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(end - first).ok()?;
        Some(
            self.entries
                .range(from..=to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

/// Cheap to clone: the log reader handed to replication tasks is a clone, and shares the
/// cache of recent entries.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    recent: Arc<Mutex<Recent>>,
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
        Ok(LogStore {
            db,
            recent: Arc::default(),
        })
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        // The cache holds no invariant a panicking holder could break halfway that the disk
        // does not restore: clear it and go on.
        self.recent.lock().unwrap_or_else(|poisoned| {
            let mut g = poisoned.into_inner();
            g.clear();
            g
        })
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
        if let Some(hit) = self.recent().get(&range) {
            return Ok(hit);
        }
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
        let mut written = Vec::new();
        {
            let mut table = txn.open_table(LOGS).map_err(werr)?;
            for e in entries {
                let bytes = serde_json::to_vec(&e).map_err(werr)?;
                ENTRIES.fetch_add(1, Ordering::Relaxed);
                BYTES.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                table
                    .insert(e.log_id.index, bytes.as_slice())
                    .map_err(werr)?;
                written.push((e, bytes.len()));
            }
        }
        // redb commits are durable (fsync) by default: the entries are on disk when this returns.
        let res = commit(txn);
        match res {
            Ok(()) => {
                {
                    let mut recent = self.recent();
                    for (e, size) in written {
                        recent.push(e, size);
                    }
                }
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
        self.recent().truncate(log_id.index);
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
        self.recent().purge(log_id.index);
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

#[cfg(test)]
mod recent_tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(v: Option<Vec<Entry<TypeConfig>>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn recent_entries_answer_only_ranges_they_hold_whole() {
        let mut r = Recent::default();
        assert_eq!(indexes(r.get(&(1..3))), None, "empty: read the disk");
        for i in 5..=9 {
            r.push(entry(i), 10);
        }
        assert_eq!(indexes(r.get(&(6..8))), Some(vec![6, 7]));
        assert_eq!(indexes(r.get(&(8..))), Some(vec![8, 9]));
        assert_eq!(
            indexes(r.get(&(9..=20))),
            Some(vec![9]),
            "nothing past the last"
        );
        assert_eq!(indexes(r.get(&(10..12))), Some(vec![]));
        assert_eq!(indexes(r.get(&(4..7))), None, "starts before the cache");
        assert_eq!(indexes(r.get(&(..7))), None);

        r.truncate(8);
        assert_eq!(indexes(r.get(&(5..))), Some(vec![5, 6, 7]));
        r.push(entry(8), 10);
        assert_eq!(indexes(r.get(&(7..))), Some(vec![7, 8]));
        r.purge(6);
        assert_eq!(indexes(r.get(&(6..))), None);
        assert_eq!(indexes(r.get(&(7..))), Some(vec![7, 8]));
        assert_eq!(r.bytes, 20);

        // A gap restarts the run.
        r.push(entry(20), 10);
        assert_eq!(indexes(r.get(&(7..))), None);
        assert_eq!(indexes(r.get(&(20..))), Some(vec![20]));
        assert_eq!(r.bytes, 10);
    }

    #[test]
    fn recent_entries_stay_within_their_byte_budget() {
        let mut r = Recent::default();
        let size = RECENT_BYTES / 4;
        for i in 1..=10 {
            r.push(entry(i), size);
        }
        assert!(r.bytes <= RECENT_BYTES, "{}", r.bytes);
        assert_eq!(r.last_index(), Some(10));
        assert_eq!(r.first_index(), Some(7));
        // One entry larger than the budget is still kept: it is the last.
        r.push(entry(11), RECENT_BYTES * 2);
        assert_eq!(r.entries.len(), 1);
    }
}
