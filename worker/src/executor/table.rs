//! The executor's task table: what live restore needs to know about the tasks this node ran,
//! kept by the executor itself, apart from any runtime's own directories.
//!
//! On disk it is a snapshot and a journal beside it (`tasks.table`, `tasks.journal`), so that a
//! change costs one appended record however many tasks the table holds:
//!
//! ```text
//!   upsert/remove ─▶ memory ─▶ one line appended to the journal (one write, no fsync)
//!                               │ journal as long as the table (and ≥ COMPACT_MIN records)
//!                               ▼
//!   compaction: snapshot written whole to a temporary file, fsync, rename; a fresh journal
//!               of the next generation renamed over the old one
//! ```
//!
//! Compaction writes the table whole, but only after at least as many changes as the table has
//! records, so its cost spread over those changes is constant: bytes written stay linear in
//! the changes, and the journal never grows past about twice the table.
//!
//! Both files begin with a header line naming the kind and the schema version; every other line
//! is `<checksum> <json>`. Reading is forgiving where a crash can leave damage and strict where
//! only a newer shoal could have written the file:
//! - a journal's torn or damaged tail (a record without its newline, a bad checksum, zeros
//!   left by a crash) is dropped from there on; the records before it count;
//! - a snapshot without its closing record (half-written) is ignored, and the journal alone
//!   is read;
//! - a journal older than the snapshot (a crash between the two renames) is already in the
//!   snapshot and is skipped;
//! - a header of a newer schema version is refused with a message that says so.
//!
//! Every change is in the operating system once `upsert`/`remove` returns, so a daemon that
//! crashes loses nothing; [`TaskTable::sync`] (on the executor's shutdown) makes the journal
//! durable against a machine crash too. One table per path: a second writer on the same files
//! would interleave with the first; [`read`] looks at them without writing.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use proto::spec::{Assignment, TaskSpec, TaskState};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The schema this version writes and the newest it reads. Version 1 was one JSON file
/// (`tasks.json`) written whole; no release wrote it, so it is not read.
pub const SCHEMA_VERSION: u32 = 2;

/// The table's snapshot file name in the worker's data dir; the journal is beside it, with the
/// extension `journal`.
pub const FILE: &str = "tasks.table";

/// A journal shorter than this is never compacted (small tables are not rewritten often).
pub const COMPACT_MIN: u64 = 4096;

/// What the header line names itself, so a stray file is not read as a table.
const MAGIC: &str = "shoal-task-table";

/// The records, by task id.
pub type Tasks = BTreeMap<String, TaskRecord>;

/// One task as the executor last saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    /// The runtime's name for its container (the task id for the runtimes here).
    pub container_id: String,
    pub service_id: String,
    pub slot: u64,
    /// The last state the executor entered.
    pub state: TaskState,
    pub exit_code: Option<i32>,
    /// [`fingerprint`] of the spec it was started from.
    pub spec_fingerprint: String,
    /// The overlay networks it is attached to: (network id, its address there).
    pub networks: Vec<(String, std::net::Ipv4Addr)>,
}

impl TaskRecord {
    pub fn new(a: &Assignment, state: TaskState, exit_code: Option<i32>) -> TaskRecord {
        TaskRecord::with_fingerprint(a, state, exit_code, fingerprint(&a.spec))
    }

    /// [`TaskRecord::new`] with the spec's [`fingerprint`] computed already (once a task, not
    /// once a state).
    pub fn with_fingerprint(
        a: &Assignment,
        state: TaskState,
        exit_code: Option<i32>,
        spec_fingerprint: String,
    ) -> TaskRecord {
        TaskRecord {
            task_id: a.task_id.clone(),
            container_id: a.task_id.clone(),
            service_id: a.service_id.clone(),
            slot: a.slot,
            state,
            exit_code,
            spec_fingerprint,
            networks: a
                .networks
                .iter()
                .map(|n| (n.network_id.clone(), n.addr))
                .collect(),
        }
    }
}

/// A short stable digest of a task's spec (hex SHA-256 of its JSON form).
pub fn fingerprint(spec: &TaskSpec) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..16])
}

/// A file's first line.
#[derive(Serialize, Deserialize)]
struct Header {
    table: String,
    kind: Kind,
    version: u32,
    /// A snapshot is continued by the journal of the same generation; an older journal is
    /// already in it.
    generation: u64,
}

/// Only the version, read first, so a newer layout is refused before it is parsed.
#[derive(Deserialize)]
struct Version {
    version: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Snapshot,
    Journal,
}

/// One line after the header.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Entry<'a> {
    Put(Cow<'a, TaskRecord>),
    Del(Cow<'a, str>),
    /// A snapshot's last line: without it the snapshot is incomplete.
    End {
        count: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(
        "task table {path}: written by a newer shoal (schema version {found}, this one reads up \
         to {SCHEMA_VERSION}); upgrade shoal, or remove the file to forget the tasks it lists"
    )]
    FutureVersion { path: PathBuf, found: u32 },
    #[error("task table {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("task table {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What reading the files found besides the records: the damage a crash can leave, which is
/// passed over rather than refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Why the snapshot was ignored (half-written, damaged), if it was.
    pub snapshot_ignored: Option<String>,
    /// Why the whole journal was ignored (its header torn, or older than the snapshot).
    pub journal_ignored: Option<String>,
    /// Journal records applied over the snapshot.
    pub journal_records: u64,
    /// Bytes at the journal's end that were dropped (a torn or damaged tail).
    pub journal_dropped_bytes: u64,
}

/// What the table has written, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Changes recorded (upserts and removes that changed something).
    pub changes: u64,
    /// Records appended to the journal, and their bytes.
    pub journal_records: u64,
    pub journal_bytes: u64,
    /// Snapshots written (compactions, including the one on open), and their bytes.
    pub snapshots: u64,
    pub snapshot_bytes: u64,
}

impl IoStats {
    /// Every byte the table wrote.
    pub fn bytes_written(&self) -> u64 {
        self.journal_bytes + self.snapshot_bytes
    }
}

/// The table: in memory, and in its files when it has them.
pub struct TaskTable {
    state: Mutex<State>,
    recovery: Recovery,
}

struct State {
    tasks: Tasks,
    disk: Option<Disk>,
    stats: IoStats,
}

struct Disk {
    snapshot: PathBuf,
    journal_path: PathBuf,
    journal: File,
    generation: u64,
    /// Records in the current journal.
    journal_records: u64,
    /// An append failed (the journal may end in a torn record): the next change compacts, so
    /// that nothing is appended after damage.
    broken: bool,
}

/// The journal beside a snapshot.
pub fn journal_path(snapshot: &Path) -> PathBuf {
    snapshot.with_extension("journal")
}

impl TaskTable {
    /// A table kept in memory only (tests, benchmarks, runtimes without restore).
    pub fn in_memory() -> TaskTable {
        TaskTable {
            state: Mutex::new(State {
                tasks: BTreeMap::new(),
                disk: None,
                stats: IoStats::default(),
            }),
            recovery: Recovery::default(),
        }
    }

    /// Opens the table whose snapshot is `path` (none there yet: an empty one), and compacts it
    /// at once: what was read becomes the snapshot, the journal starts empty, and any damaged
    /// tail is gone before anything is appended.
    pub fn open(path: &Path) -> Result<TaskTable, TableError> {
        let loaded = load(path)?;
        for (what, why) in [
            ("snapshot", &loaded.recovery.snapshot_ignored),
            ("journal", &loaded.recovery.journal_ignored),
        ] {
            if let Some(why) = why {
                tracing::warn!(path = %path.display(), "task table: {what} ignored: {why}");
            }
        }
        if loaded.recovery.journal_dropped_bytes > 0 {
            tracing::warn!(path = %path.display(), bytes = loaded.recovery.journal_dropped_bytes,
                "task table: the journal's damaged tail was dropped");
        }
        let mut stats = IoStats::default();
        let generation = loaded.generation + 1;
        let journal = compact(path, &loaded.tasks, generation, &mut stats)?;
        Ok(TaskTable {
            state: Mutex::new(State {
                tasks: loaded.tasks,
                disk: Some(Disk {
                    snapshot: path.to_path_buf(),
                    journal_path: journal_path(path),
                    journal,
                    generation,
                    journal_records: 0,
                    broken: false,
                }),
                stats,
            }),
            recovery: loaded.recovery,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, task_id: &str) -> Option<TaskRecord> {
        self.lock().tasks.get(task_id).cloned()
    }

    /// Every record, by task id.
    pub fn records(&self) -> Tasks {
        self.lock().tasks.clone()
    }

    pub fn len(&self) -> usize {
        self.lock().tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What opening the files found (damage passed over).
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// What the table has written since it was opened.
    pub fn io_stats(&self) -> IoStats {
        self.lock().stats
    }

    /// Records `rec` (replacing the task's earlier one) and appends it to the journal.
    pub fn upsert(&self, rec: TaskRecord) -> Result<(), TableError> {
        let mut st = self.lock();
        if st.tasks.get(&rec.task_id) == Some(&rec) {
            return Ok(());
        }
        let result = st.record(&Entry::Put(Cow::Borrowed(&rec)));
        st.tasks.insert(rec.task_id.clone(), rec);
        result?;
        st.compact_if_due()
    }

    /// Forgets a task (no error if it was not there) and appends that to the journal.
    pub fn remove(&self, task_id: &str) -> Result<(), TableError> {
        let mut st = self.lock();
        if st.tasks.remove(task_id).is_none() {
            return Ok(());
        }
        st.record(&Entry::Del(Cow::Borrowed(task_id)))?;
        st.compact_if_due()
    }

    /// Makes what was appended durable (fsync of the journal): on a clean shutdown.
    pub fn sync(&self) -> Result<(), TableError> {
        let st = self.lock();
        let Some(disk) = &st.disk else {
            return Ok(());
        };
        disk.journal.sync_data().map_err(|source| TableError::Io {
            path: disk.journal_path.clone(),
            source,
        })
    }
}

impl State {
    /// Appends one entry (one write). The caller changes memory whatever the outcome: memory
    /// is what the executor goes by, the files only outlive it.
    fn record(&mut self, entry: &Entry) -> Result<(), TableError> {
        self.stats.changes += 1;
        let Some(disk) = &mut self.disk else {
            return Ok(());
        };
        if disk.broken {
            // The next compaction rewrites everything, this change included.
            return Ok(());
        }
        let line = encode(entry, &disk.journal_path)?;
        match disk.journal.write_all(&line) {
            Ok(()) => {
                disk.journal_records += 1;
                self.stats.journal_records += 1;
                self.stats.journal_bytes += line.len() as u64;
                Ok(())
            }
            Err(source) => {
                disk.broken = true;
                Err(TableError::Io {
                    path: disk.journal_path.clone(),
                    source,
                })
            }
        }
    }

    /// Compacts once the journal holds as many records as the table (and at least
    /// [`COMPACT_MIN`]), or after a failed append.
    fn compact_if_due(&mut self) -> Result<(), TableError> {
        let Some(disk) = &mut self.disk else {
            return Ok(());
        };
        let due = disk.journal_records >= COMPACT_MIN.max(self.tasks.len() as u64);
        if !(due || disk.broken) {
            return Ok(());
        }
        let generation = disk.generation + 1;
        let journal = compact(&disk.snapshot, &self.tasks, generation, &mut self.stats)?;
        disk.journal = journal;
        disk.generation = generation;
        disk.journal_records = 0;
        disk.broken = false;
        Ok(())
    }
}

/// `<checksum> <json>\n`: the checksum ([`checksum`] of the JSON, in hex) finds a record a
/// crash damaged though it still ends in a newline.
fn encode(entry: &Entry, path: &Path) -> Result<Vec<u8>, TableError> {
    let json = serde_json::to_vec(entry).map_err(|e| TableError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut line = Vec::with_capacity(json.len() + 10);
    line.extend_from_slice(format!("{:08x}", checksum(&json)).as_bytes());
    line.push(b' ');
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

/// The entry in one line (without its newline), if it is whole.
fn decode(line: &[u8]) -> Option<Entry<'static>> {
    if line.len() < 10 || line[8] != b' ' {
        return None;
    }
    let (sum, json) = (&line[..8], &line[9..]);
    if format!("{:08x}", checksum(json)).as_bytes() != sum {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// 32-bit FNV-1a: it detects damage (torn writes, zeros, flipped bytes), which is all a
/// record's checksum is for, and costs a multiply per byte.
fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h: u32, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn header_line(kind: Kind, generation: u64) -> Vec<u8> {
    let header = Header {
        table: MAGIC.into(),
        kind,
        version: SCHEMA_VERSION,
        generation,
    };
    let mut line = serde_json::to_vec(&header).expect("a header serialises");
    line.push(b'\n');
    line
}

/// The lines of a file: whole ones (ending in a newline) and the torn rest.
fn split(bytes: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut lines = Vec::new();
    let mut rest = bytes;
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        lines.push(&rest[..i]);
        rest = &rest[i + 1..];
    }
    (lines, rest)
}

/// Reads a header line: `Ok(Err(why))` when it is not one (torn, garbage: a crash's
/// leftovers, passed over), an error only for a version this shoal does not read.
fn parse_header(
    path: &Path,
    line: &[u8],
    kind: Kind,
) -> Result<Result<Header, String>, TableError> {
    let Ok(Version { version }) = serde_json::from_slice::<Version>(line) else {
        return Ok(Err("no readable header (half-written?)".into()));
    };
    if version > SCHEMA_VERSION {
        return Err(TableError::FutureVersion {
            path: path.to_path_buf(),
            found: version,
        });
    }
    if version < SCHEMA_VERSION {
        return Err(TableError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "schema version {version} is not read by this shoal (it writes {SCHEMA_VERSION}); \
                 remove the file to forget the tasks it lists"
            ),
        });
    }
    match serde_json::from_slice::<Header>(line) {
        Ok(h) if h.table == MAGIC && h.kind == kind => Ok(Ok(h)),
        Ok(h) => Ok(Err(format!(
            "header names {:?} {:?}, not a task table {kind:?}",
            h.table, h.kind
        ))),
        Err(e) => Ok(Err(format!("unreadable header: {e}"))),
    }
}

struct Loaded {
    tasks: Tasks,
    generation: u64,
    /// The journal read was newer than the snapshot read: a compaction happened in between
    /// (only a reader beside an open table sees this).
    raced: bool,
    recovery: Recovery,
}

fn read_file(path: &Path) -> Result<Option<Vec<u8>>, TableError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TableError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The snapshot's records and generation, or why it is ignored.
fn load_snapshot(path: &Path, bytes: &[u8]) -> Result<Result<(Tasks, u64), String>, TableError> {
    let (lines, torn) = split(bytes);
    let Some((first, records)) = lines.split_first() else {
        return Ok(Err("empty (half-written?)".into()));
    };
    let header = match parse_header(path, first, Kind::Snapshot)? {
        Ok(h) => h,
        Err(why) => return Ok(Err(why)),
    };
    let mut tasks = BTreeMap::new();
    for (i, line) in records.iter().enumerate() {
        match decode(line) {
            Some(Entry::Put(rec)) => {
                tasks.insert(rec.task_id.clone(), rec.into_owned());
            }
            Some(Entry::End { count }) if count == tasks.len() as u64 => {
                if i + 1 != records.len() || !torn.is_empty() {
                    return Ok(Err("data after its end".into()));
                }
                return Ok(Ok((tasks, header.generation)));
            }
            Some(Entry::End { count }) => {
                return Ok(Err(format!(
                    "ends after {} records, says {count}",
                    tasks.len()
                )))
            }
            Some(Entry::Del(_)) => return Ok(Err(format!("record {}: a removal", i + 1))),
            None => return Ok(Err(format!("record {} damaged", i + 1))),
        }
    }
    Ok(Err(format!(
        "no end after {} records (half-written?)",
        tasks.len()
    )))
}

/// Reads the snapshot and the journal (no writing): the table as it would be opened.
fn load(path: &Path) -> Result<Loaded, TableError> {
    let mut recovery = Recovery::default();
    let (mut tasks, snapshot_gen) = match read_file(path)? {
        None => (BTreeMap::new(), None),
        Some(bytes) => match load_snapshot(path, &bytes)? {
            Ok((tasks, generation)) => (tasks, Some(generation)),
            Err(why) => {
                recovery.snapshot_ignored = Some(why);
                (BTreeMap::new(), None)
            }
        },
    };
    let mut generation = snapshot_gen.unwrap_or(0);
    let mut raced = false;
    let journal = journal_path(path);
    if let Some(bytes) = read_file(&journal)? {
        let (lines, torn) = split(&bytes);
        match lines.split_first() {
            // Empty, or its header torn: nothing was appended after it.
            None => {
                if !torn.is_empty() {
                    recovery.journal_ignored = Some("its header is torn".into());
                }
            }
            Some((first, records)) => match parse_header(&journal, first, Kind::Journal)? {
                Err(why) => recovery.journal_ignored = Some(why),
                Ok(h) if snapshot_gen.is_some_and(|g| h.generation < g) => {
                    recovery.journal_ignored = Some(format!(
                        "generation {} is older than the snapshot's ({generation}): already in it",
                        h.generation
                    ));
                }
                Ok(h) => {
                    raced = snapshot_gen.is_some_and(|g| h.generation > g);
                    generation = generation.max(h.generation);
                    let mut applied = 0usize;
                    for line in records {
                        match decode(line) {
                            Some(Entry::Put(rec)) => {
                                tasks.insert(rec.task_id.clone(), rec.into_owned());
                            }
                            Some(Entry::Del(id)) => {
                                tasks.remove(id.as_ref());
                            }
                            Some(Entry::End { .. }) | None => break,
                        }
                        applied += 1;
                    }
                    recovery.journal_records = applied as u64;
                    let kept: usize = records[..applied].iter().map(|l| l.len() + 1).sum();
                    recovery.journal_dropped_bytes = (bytes.len() - first.len() - 1 - kept) as u64;
                }
            },
        }
    }
    Ok(Loaded {
        tasks,
        generation,
        raced,
        recovery,
    })
}

/// The records the table at `path` holds, read without writing anything (a table may be open
/// on these files meanwhile), and what damage was passed over.
pub fn read(path: &Path) -> Result<(Tasks, Recovery), TableError> {
    let mut loaded = load(path)?;
    // The table compacted between the snapshot and the journal: read the new pair.
    for _ in 0..10 {
        if !loaded.raced {
            break;
        }
        loaded = load(path)?;
    }
    Ok((loaded.tasks, loaded.recovery))
}

/// Writes `tasks` as the snapshot of `generation` (temporary file, fsync, rename), then puts an
/// empty journal of that generation in place the same way; returns it open for appending.
/// A crash between the two renames leaves the old journal beside the new snapshot: its older
/// generation tells the reader to skip it.
fn compact(
    path: &Path,
    tasks: &Tasks,
    generation: u64,
    stats: &mut IoStats,
) -> Result<File, TableError> {
    let mut bytes = header_line(Kind::Snapshot, generation);
    for rec in tasks.values() {
        bytes.extend(encode(&Entry::Put(Cow::Borrowed(rec)), path)?);
    }
    bytes.extend(encode(
        &Entry::End {
            count: tasks.len() as u64,
        },
        path,
    )?);
    replace(path, &bytes)?;
    stats.snapshots += 1;
    stats.snapshot_bytes += bytes.len() as u64;

    let journal = journal_path(path);
    let header = header_line(Kind::Journal, generation);
    replace(&journal, &header)?;
    stats.journal_bytes += header.len() as u64;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .map_err(|source| TableError::Io {
            path: journal,
            source,
        })
}

/// Replaces `path` with `bytes` atomically and durably: a temporary file, fsync, rename, fsync
/// of the directory. The file is the node's alone (mode 0600), like the rest of its state.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), TableError> {
    let io = |source| TableError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A leftover from a crash would keep its own mode.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;
    use proto::spec::TaskNetwork;

    fn assignment(id: &str) -> Assignment {
        Assignment {
            task_id: id.into(),
            service_id: "svc".into(),
            service_name: "web".into(),
            slot: 2,
            spec: TaskSpec {
                image: "busybox".into(),
                ..Default::default()
            },
            desired_state: TaskState::Running,
            node_hostname: "n1".into(),
            node_id: String::new(),
            service_labels: Default::default(),
            secrets: vec![],
            configs: vec![],
            networks: vec![TaskNetwork {
                network_id: "front".into(),
                network_name: "front".into(),
                vni: 4097,
                subnet: "10.0.1.0/24".into(),
                gateway: std::net::Ipv4Addr::new(10, 0, 1, 1),
                addr: std::net::Ipv4Addr::new(10, 0, 1, 7),
                internal: false,
                ingress: false,
                aliases: vec![],
            }],
        }
    }

    fn rec(id: &str, state: TaskState) -> TaskRecord {
        TaskRecord::new(&assignment(id), state, None)
    }

    fn records(path: &Path) -> BTreeMap<String, TaskRecord> {
        read(path).unwrap().0
    }

    /// A table on `path` with t1 RUNNING, t2 FAILED (3), t3 gone: its snapshot is empty (the
    /// one `open` wrote) and its journal holds five records.
    fn small_table(path: &Path) -> BTreeMap<String, TaskRecord> {
        let table = TaskTable::open(path).unwrap();
        let exited = TaskRecord::new(&assignment("t2"), TaskState::Failed, Some(3));
        table.upsert(rec("t1", TaskState::Preparing)).unwrap();
        table.upsert(rec("t1", TaskState::Running)).unwrap();
        table.upsert(exited).unwrap();
        table.upsert(rec("t3", TaskState::Ready)).unwrap();
        table.remove("t3").unwrap();
        table.remove("never-there").unwrap();
        assert_eq!(table.io_stats().journal_records, 5);
        table.records()
    }

    #[test]
    fn a_table_written_now_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        assert!(TaskTable::open(&path).unwrap().is_empty());
        let written = small_table(&path);
        assert_eq!(written.keys().collect::<Vec<_>>(), ["t1", "t2"]);
        assert_eq!(written["t1"].state, TaskState::Running);
        assert_eq!(written["t2"].exit_code, Some(3));
        assert_eq!(
            written["t1"].networks,
            [("front".to_string(), std::net::Ipv4Addr::new(10, 0, 1, 7))]
        );
        // Read from the journal, without writing...
        let (read_back, recovery) = read(&path).unwrap();
        assert_eq!(read_back, written);
        assert_eq!(recovery.journal_records, 5);
        assert_eq!(
            recovery,
            Recovery {
                journal_records: 5,
                ..Default::default()
            }
        );
        // ...and opened again: compacted into the snapshot, the journal empty.
        let again = TaskTable::open(&path).unwrap();
        assert_eq!(again.records(), written);
        assert_eq!(read(&path).unwrap().1.journal_records, 0);
        let snapshot = std::fs::read_to_string(&path).unwrap();
        let first = snapshot.lines().next().unwrap();
        for file in [path.clone(), journal_path(&path)] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
        assert!(
            first.contains(&format!("\"version\":{SCHEMA_VERSION}")) && first.contains(MAGIC),
            "{first}"
        );
    }

    #[test]
    fn a_table_from_a_newer_version_is_refused_in_plain_words() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        // A future layout this version cannot parse at all: the version alone decides, in
        // the snapshot and in the journal.
        for file in [path.clone(), journal_path(&path)] {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(journal_path(&path));
            std::fs::write(
                &file,
                b"{\"version\": 7, \"tasks\": [\"a\", \"layout\"]}\nxyz\n",
            )
            .unwrap();
            let e = TaskTable::open(&file.with_extension("table"))
                .err()
                .expect("refused");
            assert!(
                matches!(e, TableError::FutureVersion { found: 7, .. }),
                "{e:?}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("newer shoal") && msg.contains("version 7"),
                "{msg}"
            );
            assert!(msg.contains(&file.display().to_string()), "{msg}");
            // Left as it was, for the newer shoal.
            assert!(std::fs::read(&file)
                .unwrap()
                .starts_with(b"{\"version\": 7"));
        }
    }

    #[test]
    fn the_previous_layout_is_refused_or_passed_over_never_misread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        // Version 1: one JSON document, pretty-printed (its first line is `{`). No release
        // wrote it, and under its own name (tasks.json); at this path it is not a table.
        let v1 = br#"{
  "version": 1,
  "tasks": {}
}"#;
        std::fs::write(&path, v1).unwrap();
        let (tasks, recovery) = read(&path).unwrap();
        assert!(tasks.is_empty());
        assert!(recovery.snapshot_ignored.is_some(), "{recovery:?}");
        // The same document on one line reads as a header of version 1: refused plainly.
        std::fs::write(&path, b"{\"version\": 1, \"tasks\": {}}\n").unwrap();
        let e = TaskTable::open(&path).err().expect("refused");
        assert!(e.to_string().contains("schema version 1"), "{e}");
    }

    #[test]
    fn a_torn_or_damaged_journal_tail_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        small_table(&path);
        let journal = std::fs::read(journal_path(&path)).unwrap();
        // Replaying every prefix of the journal: never an error, and the records are those
        // of the whole lines in it.
        let (lines, _) = split(&journal);
        for cut in 0..journal.len() {
            std::fs::write(journal_path(&path), &journal[..cut]).unwrap();
            let (tasks, recovery) = read(&path).unwrap();
            let whole = split(&journal[..cut]).0.len().saturating_sub(1) as u64;
            assert_eq!(recovery.journal_records, whole, "cut at {cut}");
            let expect = match whole {
                0 => vec![],
                1 => vec![("t1", TaskState::Preparing)],
                2 => vec![("t1", TaskState::Running)],
                3 => vec![("t1", TaskState::Running), ("t2", TaskState::Failed)],
                4 => vec![
                    ("t1", TaskState::Running),
                    ("t2", TaskState::Failed),
                    ("t3", TaskState::Ready),
                ],
                _ => vec![("t1", TaskState::Running), ("t2", TaskState::Failed)],
            };
            let got: Vec<(&str, TaskState)> = tasks
                .values()
                .map(|r| (r.task_id.as_str(), r.state))
                .collect();
            assert_eq!(got, expect, "cut at {cut}");
        }
        // A record damaged in the middle (its line whole, its bytes not): the journal ends
        // there. Zeros, as a crash can leave at a file's end, likewise.
        let mut damaged = journal.clone();
        // Header, two records, then a byte inside the third record.
        let kept = lines[0].len() + lines[1].len() + lines[2].len() + 3;
        damaged[kept + 20] ^= 0x20;
        std::fs::write(journal_path(&path), &damaged).unwrap();
        let (tasks, recovery) = read(&path).unwrap();
        assert_eq!(recovery.journal_records, 2);
        assert_eq!(
            recovery.journal_dropped_bytes,
            (journal.len() - kept) as u64
        );
        assert_eq!(tasks.keys().collect::<Vec<_>>(), ["t1"]);
        let mut zeros = journal.clone();
        zeros.extend([0u8; 4096]);
        std::fs::write(journal_path(&path), &zeros).unwrap();
        let (tasks, recovery) = read(&path).unwrap();
        assert_eq!(recovery.journal_records, 5);
        assert_eq!(recovery.journal_dropped_bytes, 4096);
        assert_eq!(tasks.len(), 2);

        // Opened: the damage is gone before anything is appended, so a change made now is
        // read back after the next restart.
        std::fs::write(journal_path(&path), &damaged).unwrap();
        let table = TaskTable::open(&path).unwrap();
        assert_eq!(
            table.recovery().journal_dropped_bytes,
            (journal.len() - kept) as u64
        );
        table.upsert(rec("t4", TaskState::Running)).unwrap();
        drop(table);
        let (tasks, recovery) = read(&path).unwrap();
        assert_eq!(recovery.journal_dropped_bytes, 0);
        assert_eq!(tasks.keys().collect::<Vec<_>>(), ["t1", "t4"]);
    }

    #[test]
    fn a_half_written_snapshot_is_ignored_and_the_journal_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        small_table(&path);
        // Compacted: the snapshot holds t1 and t2.
        let written = TaskTable::open(&path).unwrap().records();
        // A journal of the snapshot's generation with one more task.
        let table = TaskTable::open(&path).unwrap();
        table.upsert(rec("t5", TaskState::Running)).unwrap();
        drop(table);
        let snapshot2 = std::fs::read(&path).unwrap();
        for cut in 0..snapshot2.len() {
            std::fs::write(&path, &snapshot2[..cut]).unwrap();
            let (tasks, recovery) = read(&path).unwrap();
            assert!(
                recovery.snapshot_ignored.is_some(),
                "cut at {cut}: {recovery:?}"
            );
            assert_eq!(tasks.keys().collect::<Vec<_>>(), ["t5"], "cut at {cut}");
        }
        std::fs::write(&path, &snapshot2).unwrap();
        let (tasks, recovery) = read(&path).unwrap();
        assert_eq!(
            recovery,
            Recovery {
                journal_records: 1,
                ..Default::default()
            }
        );
        let mut expect = written;
        expect.insert("t5".into(), rec("t5", TaskState::Running));
        assert_eq!(tasks, expect);
        // The temporary file a compaction left behind is never read.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(PathBuf::from(tmp), &snapshot2[..snapshot2.len() / 2]).unwrap();
        assert_eq!(TaskTable::open(&path).unwrap().records(), expect);
    }

    #[test]
    fn a_journal_older_than_the_snapshot_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let table = TaskTable::open(&path).unwrap();
        table.upsert(rec("t1", TaskState::Running)).unwrap();
        table.upsert(rec("t9", TaskState::Running)).unwrap();
        let old_journal = std::fs::read(journal_path(&path)).unwrap();
        table.remove("t9").unwrap();
        drop(table);
        // Compacted into a snapshot without t9; then, as if the daemon had crashed between
        // the snapshot's rename and the journal's, the old journal (which added t9 and did
        // not yet remove it) beside it.
        TaskTable::open(&path).unwrap();
        std::fs::write(journal_path(&path), &old_journal).unwrap();
        let (tasks, recovery) = read(&path).unwrap();
        assert_eq!(tasks.keys().collect::<Vec<_>>(), ["t1"]);
        assert!(
            recovery
                .journal_ignored
                .as_deref()
                .is_some_and(|w| w.contains("older")),
            "{recovery:?}"
        );
    }

    /// The table's whole point: a change costs one record, however many tasks there are.
    /// 100,000 changes over 25,000 tasks write bytes linear in the changes (the whole-file
    /// table wrote the whole table each time: quadratic), and the journal stays bounded.
    #[test]
    fn a_hundred_thousand_changes_cost_io_linear_in_the_changes() {
        const TASKS: usize = 25_000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let table = TaskTable::open(&path).unwrap();
        let opened = table.io_stats();
        let template = rec("t", TaskState::Preparing);
        let make = |i: usize, state, exit_code| TaskRecord {
            task_id: format!("task-{i:06}"),
            container_id: format!("task-{i:06}"),
            state,
            exit_code,
            ..template.clone()
        };
        // The largest record line these changes write.
        let largest = Entry::Put(Cow::Owned(make(
            TASKS,
            TaskState::Preparing,
            Some(i32::MIN),
        )));
        let max_record = encode(&largest, &path).unwrap().len() as u64;
        for state in [TaskState::Preparing, TaskState::Running, TaskState::Failed] {
            for i in 0..TASKS {
                let exit = (state == TaskState::Failed).then_some(1);
                table.upsert(make(i, state, exit)).unwrap();
            }
        }
        for i in 0..TASKS - 5_000 {
            table
                .remove(&make(i, TaskState::Shutdown, None).task_id)
                .unwrap();
        }
        for i in TASKS - 5_000..TASKS {
            table.upsert(make(i, TaskState::Shutdown, Some(0))).unwrap();
        }
        let stats = table.io_stats();
        let changes = stats.changes - opened.changes;
        assert_eq!(changes, 100_000);
        assert_eq!(stats.journal_records, 100_000);
        // Each compaction follows at least max(COMPACT_MIN, table size) records, so
        // snapshots add no more than the journal did (plus their header and end lines).
        let snapshots = stats.snapshots - opened.snapshots;
        assert!(snapshots >= 2, "{stats:?}: compacted");
        assert!(snapshots <= changes / COMPACT_MIN + 1, "{stats:?}");
        let bytes = stats.bytes_written() - opened.bytes_written();
        let bound = changes * max_record * 2 + (snapshots + 1) * 256;
        println!(
            "{stats:?}: {bytes} bytes for {changes} changes (bound {bound}, record ≤ {max_record})"
        );
        assert!(
            bytes < bound,
            "{bytes} bytes written, bound {bound}: {stats:?}"
        );
        // A whole-file table would have written about changes × live tasks × record size.
        assert!(bytes < changes * max_record * 3);
        // The journal on disk stays about as large as the table, never as all the changes.
        let journal = std::fs::metadata(journal_path(&path)).unwrap().len();
        assert!(
            journal <= (COMPACT_MIN.max(TASKS as u64) + 1) * max_record,
            "journal {journal} bytes"
        );
        // And it all reads back.
        let expect = table.records();
        assert_eq!(expect.len(), 5_000);
        assert!(expect.values().all(|r| r.state == TaskState::Shutdown));
        drop(table);
        assert_eq!(records(&path), expect);
        assert_eq!(TaskTable::open(&path).unwrap().records(), expect);
    }

    #[test]
    fn reading_while_a_table_is_open_disturbs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let table = TaskTable::open(&path).unwrap();
        for i in 0..3 {
            table
                .upsert(rec(&format!("t{i}"), TaskState::Running))
                .unwrap();
            assert_eq!(records(&path), table.records());
        }
        table.sync().unwrap();
        table.remove("t1").unwrap();
        assert_eq!(records(&path), table.records());
        assert_eq!(records(&path).len(), 2);
    }

    #[test]
    fn the_fingerprint_follows_the_spec() {
        let a = assignment("t1");
        let mut b = assignment("t1");
        assert_eq!(fingerprint(&a.spec), fingerprint(&b.spec));
        b.spec.image = "busybox:2".into();
        assert_ne!(fingerprint(&a.spec), fingerprint(&b.spec));
    }
}
