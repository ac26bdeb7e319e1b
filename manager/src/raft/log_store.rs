//! The Raft log and vote in redb, written by one thread per database that commits every
//! write queued meanwhile in one transaction and one fsync (group commit): appends of
//! consecutive entries, the vote, truncations and purges, in the order they were asked for.
//!
//! An append returns at once; its entries are readable from memory until they are on disk,
//! and openraft is told they are durable (its callback) only once the transaction holding
//! them is committed: nothing is acknowledged before it is fsynced. Writes that must be on
//! disk before the call returns (the vote, truncation, purge) wait for their transaction.
//! No fsync ever runs on the async runtime's threads.

use std::collections::BTreeMap;
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

/// Writes queued for the writer thread, done in order.
enum Job {
    /// Encoded entries; `callback` once they are durable.
    Append {
        entries: Vec<(LogId<NodeId>, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    /// Delete the entries from `from` on.
    Truncate { from: u64, done: Done },
    /// Delete the entries up to `upto` and remember it.
    Purge { upto: LogId<NodeId>, done: Done },
    /// Set a key of the meta table; `done` once durable, if given.
    Meta {
        key: &'static str,
        bytes: Vec<u8>,
        done: Option<Done>,
    },
}

type Done = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Jobs committed together at most.
const MAX_GROUP: usize = 1024;

/// Entries appended and not yet known to be on disk, by index: a contiguous run of the
/// newest entries (appends are consecutive, and groups are committed in order).
type Pending = Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>>;

/// Cheap to clone: the log reader handed to replication tasks is a clone. The writer thread
/// ends when the last clone is dropped.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    pending: Pending,
    jobs: std::sync::mpsc::Sender<Job>,
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

/// The writer thread: takes the first queued job and every one queued behind it, writes
/// them in one transaction, commits it (one fsync), then answers each.
fn writer(db: Arc<Database>, pending: Pending, jobs: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let res = write_group(&db, &group).map_err(|e| e.to_string());
        if res.is_ok() {
            // On disk now: readers find them there. Only the entries written (a truncation
            // may have replaced one since).
            let mut p = pending.lock().expect("pending entries lock");
            for j in &group {
                if let Job::Append { entries, .. } = j {
                    for (id, _) in entries {
                        if p.get(&id.index).is_some_and(|e| e.log_id == *id) {
                            p.remove(&id.index);
                        }
                    }
                }
            }
        }
        for j in group {
            match j {
                Job::Append { callback, .. } => {
                    callback.log_io_completed(res.clone().map_err(std::io::Error::other))
                }
                Job::Truncate { done, .. } | Job::Purge { done, .. } => {
                    let _ = done.send(res.clone());
                }
                Job::Meta { done, .. } => {
                    if let Some(done) = done {
                        let _ = done.send(res.clone());
                    }
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct GroupError(String);

fn write_group(db: &Database, group: &[Job]) -> Result<(), GroupError> {
    let e = |e: &dyn std::fmt::Display| GroupError(e.to_string());
    let txn = db.begin_write().map_err(|x| e(&x))?;
    {
        let mut logs = txn.open_table(LOGS).map_err(|x| e(&x))?;
        let mut meta = txn.open_table(META).map_err(|x| e(&x))?;
        for j in group {
            match j {
                Job::Append { entries, .. } => {
                    for (id, bytes) in entries {
                        logs.insert(id.index, bytes.as_slice()).map_err(|x| e(&x))?;
                    }
                }
                Job::Truncate { from, .. } => {
                    logs.retain_in(*from.., |_, _| false).map_err(|x| e(&x))?;
                }
                Job::Purge { upto, .. } => {
                    let bytes = serde_json::to_vec(&Some(*upto)).map_err(|x| e(&x))?;
                    meta.insert(LAST_PURGED, bytes.as_slice())
                        .map_err(|x| e(&x))?;
                    logs.retain_in(..=upto.index, |_, _| false)
                        .map_err(|x| e(&x))?;
                }
                Job::Meta { key, bytes, .. } => {
                    meta.insert(*key, bytes.as_slice()).map_err(|x| e(&x))?;
                }
            }
        }
    }
    commit(txn).map_err(|x| e(&x))
}

impl LogStore {
    pub fn open(db: Arc<Database>) -> Result<LogStore, StorageError<NodeId>> {
        let txn = db.begin_write().map_err(werr)?;
        txn.open_table(LOGS).map_err(werr)?;
        txn.open_table(META).map_err(werr)?;
        commit(txn).map_err(werr)?;
        let pending: Pending = Arc::default();
        let (jobs, rx) = std::sync::mpsc::channel();
        let (d, p) = (db.clone(), pending.clone());
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer(d, p, rx))
            .map_err(werr)?;
        Ok(LogStore { db, pending, jobs })
    }

    /// Queues `job` and waits until it is on disk.
    async fn run(&self, job: impl FnOnce(Done) -> Job) -> Result<(), StorageError<NodeId>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(job(tx))
            .map_err(|_| werr(GroupError("the raft log writer has stopped".into())))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(werr(GroupError(msg))),
            Err(_) => Err(werr(GroupError("the raft log writer has stopped".into()))),
        }
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

    /// Sets `key` durably before returning.
    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(value).map_err(werr)?;
        self.run(|done| Job::Meta {
            key,
            bytes,
            done: Some(done),
        })
        .await
    }

    /// The first pending entry's index, and the pending entries in `range`.
    fn pending_in<RB: RangeBounds<u64>>(&self, range: RB) -> (Option<u64>, Vec<Entry<TypeConfig>>) {
        let p = self.pending.lock().expect("pending entries lock");
        let first = p.keys().next().copied();
        (first, p.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        // Pending entries first: one committed meanwhile is then found on disk, as the read
        // transaction below begins after the writer's commit that took it out of memory.
        let (first_pending, mut tail) = self.pending_in(range.clone());
        // The rest is on disk, below the first pending entry.
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        if let Some(i) = first_pending {
            end = end.min(i);
        }
        if start >= end {
            return Ok(tail);
        }
        let txn = self.db.begin_read().map_err(rerr)?;
        let table = txn.open_table(LOGS).map_err(rerr)?;
        let mut out = Vec::new();
        for item in table.range::<u64>(start..end).map_err(rerr)? {
            let (_, v) = item.map_err(rerr)?;
            out.push(serde_json::from_slice(v.value()).map_err(rerr)?);
        }
        out.append(&mut tail);
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta(LAST_PURGED)?;
        let last_pending = self
            .pending
            .lock()
            .expect("pending entries lock")
            .last_key_value()
            .map(|(_, e)| e.log_id);
        let last = match last_pending {
            Some(id) => Some(id),
            None => {
                let txn = self.db.begin_read().map_err(rerr)?;
                let table = txn.open_table(LOGS).map_err(rerr)?;
                let last = table.last().map_err(rerr)?;
                match last {
                    Some((_, v)) => {
                        let e: Entry<TypeConfig> =
                            serde_json::from_slice(v.value()).map_err(rerr)?;
                        Some(e.log_id)
                    }
                    None => last_purged,
                }
            }
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
        self.put_meta(VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(VOTE)
    }

    /// Queued, not waited for: the committed index is a hint for a restart (the entries up
    /// to it are re-applied at once); it goes to disk with the next group.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&committed).map_err(werr)?;
        self.jobs
            .send(Job::Meta {
                key: COMMITTED,
                bytes,
                done: None,
            })
            .map_err(|_| werr(GroupError("the raft log writer has stopped".into())))
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
        let mut encoded = Vec::new();
        {
            let mut p = self.pending.lock().expect("pending entries lock");
            for e in entries {
                let bytes = serde_json::to_vec(&e).map_err(werr)?;
                ENTRIES.fetch_add(1, Ordering::Relaxed);
                BYTES.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                encoded.push((e.log_id, bytes));
                p.insert(e.log_id.index, e);
            }
        }
        // Durable once the writer has committed the group holding them: then the callback.
        self.jobs
            .send(Job::Append {
                entries: encoded,
                callback,
            })
            .map_err(|_| werr(GroupError("the raft log writer has stopped".into())))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.pending
            .lock()
            .expect("pending entries lock")
            .retain(|i, _| *i < log_id.index);
        self.run(|done| Job::Truncate {
            from: log_id.index,
            done,
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.run(|done| Job::Purge { upto: log_id, done }).await
    }
}
