//! The executor's task table: what live restore needs to know about the tasks this node ran,
//! kept by the executor itself, apart from any runtime's own directories.
//!
//! One JSON file with a schema version, replaced whole (written to a temporary file, then
//! renamed), so a crash leaves the old table or the new one. A table written by a newer
//! version is refused with a message that says so rather than guessed at.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use proto::spec::{Assignment, TaskSpec, TaskState};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The schema this version writes and the newest it reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The table's file name in the worker's data dir.
pub const FILE: &str = "tasks.json";

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
        TaskRecord {
            task_id: a.task_id.clone(),
            container_id: a.task_id.clone(),
            service_id: a.service_id.clone(),
            slot: a.slot,
            state,
            exit_code,
            spec_fingerprint: fingerprint(&a.spec),
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

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    tasks: BTreeMap<String, TaskRecord>,
}

/// Only the version, read first, so a newer layout is refused before it is parsed.
#[derive(Deserialize)]
struct Version {
    version: u32,
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

/// The table: in memory, and in its file when it has one.
pub struct TaskTable {
    path: Option<PathBuf>,
    tasks: Mutex<BTreeMap<String, TaskRecord>>,
}

impl TaskTable {
    /// A table kept in memory only (tests, benchmarks, runtimes without restore).
    pub fn in_memory() -> TaskTable {
        TaskTable {
            path: None,
            tasks: Mutex::new(BTreeMap::new()),
        }
    }

    /// Opens the table at `path` (none there yet: an empty one).
    pub fn open(path: &Path) -> Result<TaskTable, TableError> {
        let tasks = match std::fs::read(path) {
            Ok(bytes) => parse(path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(TableError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(TaskTable {
            path: Some(path.to_path_buf()),
            tasks: Mutex::new(tasks),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TaskRecord>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, task_id: &str) -> Option<TaskRecord> {
        self.lock().get(task_id).cloned()
    }

    /// Every record, by task id.
    pub fn records(&self) -> BTreeMap<String, TaskRecord> {
        self.lock().clone()
    }

    /// Records `rec` (replacing the task's earlier one) and saves the table.
    pub fn upsert(&self, rec: TaskRecord) -> Result<(), TableError> {
        let mut tasks = self.lock();
        if tasks.get(&rec.task_id) == Some(&rec) {
            return Ok(());
        }
        tasks.insert(rec.task_id.clone(), rec);
        self.save(&tasks)
    }

    /// Forgets a task and saves the table (no error if it was not there).
    pub fn remove(&self, task_id: &str) -> Result<(), TableError> {
        let mut tasks = self.lock();
        if tasks.remove(task_id).is_none() {
            return Ok(());
        }
        self.save(&tasks)
    }

    /// Writes the table whole (under the lock, so saves never interleave).
    fn save(&self, tasks: &BTreeMap<String, TaskRecord>) -> Result<(), TableError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| TableError::Io {
            path: path.clone(),
            source,
        };
        let on_disk = OnDisk {
            version: SCHEMA_VERSION,
            tasks: tasks.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&on_disk).map_err(|e| TableError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, TaskRecord>, TableError> {
    let corrupt = |e: serde_json::Error| TableError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let Version { version } = serde_json::from_slice(bytes).map_err(corrupt)?;
    if version > SCHEMA_VERSION {
        return Err(TableError::FutureVersion {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let on_disk: OnDisk = serde_json::from_slice(bytes).map_err(corrupt)?;
    Ok(on_disk.tasks)
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

    #[test]
    fn a_table_written_now_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let table = TaskTable::open(&path).unwrap();
        assert!(table.records().is_empty());
        let running = TaskRecord::new(&assignment("t1"), TaskState::Running, None);
        let exited = TaskRecord::new(&assignment("t2"), TaskState::Failed, Some(3));
        table.upsert(running.clone()).unwrap();
        table.upsert(exited.clone()).unwrap();
        table
            .upsert(TaskRecord::new(&assignment("t3"), TaskState::Ready, None))
            .unwrap();
        table.remove("t3").unwrap();
        table.remove("never-there").unwrap();

        let again = TaskTable::open(&path).unwrap();
        assert_eq!(
            again.records(),
            [
                ("t1".to_string(), running.clone()),
                ("t2".to_string(), exited)
            ]
            .into()
        );
        assert_eq!(
            running.networks,
            [("front".to_string(), std::net::Ipv4Addr::new(10, 0, 1, 7))]
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("\"version\": {SCHEMA_VERSION}")),
            "{text}"
        );
    }

    #[test]
    fn a_table_from_a_newer_version_is_refused_in_plain_words() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        // A future layout this version cannot parse at all: the version alone decides.
        std::fs::write(
            &path,
            br#"{"version": 7, "tasks": ["a", "layout", "unknown"]}"#,
        )
        .unwrap();
        let e = TaskTable::open(&path).err().expect("refused");
        assert!(
            matches!(e, TableError::FutureVersion { found: 7, .. }),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("newer shoal") && msg.contains("version 7"),
            "{msg}"
        );
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        // Garbage is an error too, never a panic.
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            TaskTable::open(&path),
            Err(TableError::Corrupt { .. })
        ));
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
