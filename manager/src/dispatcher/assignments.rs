//! What a node is told about its tasks: assignments, sent in full when a session starts (or
//! the node asks for a resync) and then as chained increments, and the data of the secrets
//! and configs those tasks name, each sent once per node.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use proto::convert::{FileKey, FileKind};
use proto::pb;
use proto::spec::{Assignment, TaskState};

use crate::keys::Kek;
use crate::store::{DataKey, StoreData, Task};

/// The tasks a node must know about: everything placed on it except tasks that have ended
/// and are not meant to run (those it may forget), with the data of their secrets and
/// configs filled in — what the node's executor ends up with.
pub fn assignments_for(d: &StoreData, node_id: &str, kek: &Kek) -> BTreeMap<String, Assignment> {
    let mut all = node_assignments(d, node_id);
    let files = open_files(d, kek, all.values().flat_map(file_keys));
    for a in all.values_mut() {
        proto::convert::fill_files(a, &files);
    }
    all
}

/// The assignments of a node without their files' data (as the wire carries them).
pub fn node_assignments(d: &StoreData, node_id: &str) -> BTreeMap<String, Assignment> {
    d.node_tasks(node_id)
        .filter_map(|t| Some((t.id.clone(), assignment_of(d, t, node_id)?)))
        .collect()
}

/// What node `node_id` is told about task `t`, if anything.
fn assignment_of(d: &StoreData, t: &Task, node_id: &str) -> Option<Assignment> {
    if t.node_id != node_id
        || t.status.state < TaskState::Assigned
        || (t.status.state.is_terminal() && t.desired_state > TaskState::Running)
    {
        return None;
    }
    Some(Assignment {
        task_id: t.id.clone(),
        service_id: t.service_id.clone(),
        service_name: t.service_name.clone(),
        slot: t.slot,
        spec: proto::spec::TaskSpec::clone(&t.spec),
        desired_state: t.desired_state,
        node_hostname: d
            .nodes
            .get(node_id)
            .map(|n| n.description.hostname.clone())
            .unwrap_or_default(),
        secrets: Vec::new(),
        configs: Vec::new(),
        networks: t.networks.clone(),
        node_id: node_id.to_string(),
        service_labels: d
            .services
            .get(&t.service_id)
            .map(|s| s.spec.labels.clone())
            .unwrap_or_default(),
    })
}

/// The secrets and configs an assignment names.
fn file_keys(a: &Assignment) -> impl Iterator<Item = FileKey> + '_ {
    let secrets = a
        .spec
        .secrets
        .iter()
        .map(|r| (FileKind::Secret, r.name.clone()));
    let configs = a
        .spec
        .configs
        .iter()
        .map(|r| (FileKind::Config, r.name.clone()));
    secrets.chain(configs)
}

/// The data of the files `keys`, opened with the cluster's data key (opened once, and only
/// if some file is asked for). A file that does not exist or cannot be opened is left out
/// (and logged without its data): the task then fails on the node for a missing file.
fn open_files(
    d: &StoreData,
    kek: &Kek,
    keys: impl IntoIterator<Item = FileKey>,
) -> BTreeMap<FileKey, Vec<u8>> {
    let mut data_key: Option<Option<DataKey>> = None;
    let mut out = BTreeMap::new();
    for key in keys {
        if out.contains_key(&key) {
            continue;
        }
        let kind = match key.0 {
            FileKind::Secret => crate::secrets::FileKind::Secret,
            FileKind::Config => crate::secrets::FileKind::Config,
        };
        let Some(o) = crate::secrets::by_name(d, kind, &key.1) else {
            continue;
        };
        let Some(dk) = data_key
            .get_or_insert_with(|| crate::secrets::data_key(d, kek))
            .as_ref()
        else {
            tracing::warn!("a task names a {} but no data key exists", kind.noun());
            continue;
        };
        match crate::secrets::open(dk, &o.id, &o.sealed) {
            Ok(data) => {
                out.insert(key, data);
            }
            Err(e) => tracing::warn!(name = %key.1, error = %e, "cannot open {}", kind.noun()),
        }
    }
    out
}

fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The size an assignments message is cut to ([`NodeAssignments::chunks`]); gRPC refuses
/// messages over 4 MiB by default.
pub const MESSAGE_BYTES: usize = 1 << 20;

/// What a session last sent a node, per task: a fingerprint of the assignment rather than
/// the assignment itself (a node with 50,000 tasks held ~100 MB of copies per session).
pub type Sent = BTreeMap<String, u64>;

/// A wire assignment and the fingerprint of its encoding.
fn encode(a: &Assignment) -> (pb::Assignment, u64) {
    let w = pb::Assignment::from(a);
    let f = hash(&w.encode_to_vec());
    (w, f)
}

/// The fingerprints of a full set of assignments.
pub fn fingerprints(all: &BTreeMap<String, Assignment>) -> Sent {
    all.iter()
        .map(|(id, a)| (id.clone(), encode(a).1))
        .collect()
}

/// One node's assignments as its session sent them: the version of the chain, a fingerprint
/// per task, and per file. Everything sent is recorded here, and only here, in the order of
/// the chain.
#[derive(Debug, Default)]
pub struct NodeAssignments {
    version: u64,
    sent: Sent,
    files: BTreeMap<FileKey, u64>,
}

impl NodeAssignments {
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn sent(&self) -> &Sent {
        &self.sent
    }

    /// Whether task `id` was sent.
    pub fn has(&self, id: &str) -> bool {
        self.sent.contains_key(id)
    }

    /// `m` cut into messages of about [`MESSAGE_BYTES`] each, chained: the first keeps `m`'s
    /// base (and `full`), each next one applies to the version the previous one results in.
    /// A node with thousands of tasks would otherwise get a full set larger than a gRPC
    /// message may be, and could never resynchronise. Files and removals go first.
    pub fn chunks(&mut self, m: pb::Assignments) -> Vec<pb::Assignments> {
        if m.encoded_len() <= MESSAGE_BYTES {
            return vec![m];
        }
        let mut out: Vec<pb::Assignments> = Vec::new();
        let mut part = pb::Assignments {
            full: m.full,
            removed: m.removed,
            upsert: Vec::new(),
            base_version: m.base_version,
            version: m.version,
            files: m.files,
            removed_files: m.removed_files,
            more: false,
        };
        let mut size = part.encoded_len();
        for a in m.upsert {
            let len = a.encoded_len() + 8;
            let holds_something = !part.upsert.is_empty()
                || !part.files.is_empty()
                || !part.removed.is_empty()
                || !part.removed_files.is_empty();
            if size + len > MESSAGE_BYTES && holds_something {
                let base = part.version;
                out.push(std::mem::replace(
                    &mut part,
                    pb::Assignments {
                        full: false,
                        base_version: base,
                        version: base + 1,
                        ..Default::default()
                    },
                ));
                size = part.encoded_len();
            }
            size += len;
            part.upsert.push(a);
        }
        out.push(part);
        let last = out.len() - 1;
        for p in &mut out[..last] {
            p.more = true;
        }
        self.version = out[last].version;
        out
    }

    /// The full set: replaces whatever the node holds (a new session, or a resync).
    pub fn full(&mut self, d: &StoreData, node_id: &str, kek: &Kek) -> pb::Assignments {
        let all = node_assignments(d, node_id);
        self.sent.clear();
        let mut upsert = Vec::with_capacity(all.len());
        for (id, a) in &all {
            let (w, f) = encode(a);
            self.sent.insert(id.clone(), f);
            upsert.push(w);
        }
        self.files.clear();
        let files = self.file_changes(d, kek, &all).0;
        self.version += 1;
        pb::Assignments {
            full: true,
            removed: Vec::new(),
            upsert,
            base_version: 0,
            version: self.version,
            files,
            removed_files: Vec::new(),
            more: false,
        }
    }

    /// The increment that brings the node to the full set (after missed store events).
    pub fn diff_full(
        &mut self,
        d: &StoreData,
        node_id: &str,
        kek: &Kek,
    ) -> Option<pb::Assignments> {
        let ids: BTreeSet<String> = self
            .sent
            .keys()
            .cloned()
            .chain(d.node_tasks(node_id).map(|t| t.id.clone()))
            .collect();
        self.touched(d, node_id, kek, ids.iter().map(String::as_str), true)
    }

    /// The increment for the tasks `ids` (those a committed event touched): work
    /// proportional to the event, not to the node's tasks. `files_changed`: a secret or
    /// config changed, so the files are compared even without a task change.
    pub fn touched<'a>(
        &mut self,
        d: &StoreData,
        node_id: &str,
        kek: &Kek,
        ids: impl IntoIterator<Item = &'a str>,
        files_changed: bool,
    ) -> Option<pb::Assignments> {
        let mut upsert = Vec::new();
        let mut removed = Vec::new();
        let mut names_files = false;
        for id in ids {
            let now = d.tasks.get(id).and_then(|t| assignment_of(d, t, node_id));
            match now {
                Some(a) => {
                    let (w, f) = encode(&a);
                    if self.sent.insert(id.to_string(), f) != Some(f) {
                        names_files |= file_keys(&a).next().is_some();
                        upsert.push(w);
                    }
                }
                None => {
                    if self.sent.remove(id).is_some() {
                        removed.push(id.to_string());
                    }
                }
            }
        }
        // The files only need a look when a task that names some came or went.
        let (files, removed_files) =
            if names_files || files_changed || (!removed.is_empty() && !self.files.is_empty()) {
                let all = node_assignments(d, node_id);
                self.file_changes(d, kek, &all)
            } else {
                (Vec::new(), Vec::new())
            };
        if upsert.is_empty() && removed.is_empty() && files.is_empty() && removed_files.is_empty() {
            return None;
        }
        let base_version = self.version;
        self.version += 1;
        Some(pb::Assignments {
            full: false,
            removed,
            upsert,
            base_version,
            version: self.version,
            files,
            removed_files,
            more: false,
        })
    }

    /// The files the node needs for `all` and does not hold (or holds with other data), and
    /// those it holds and no longer needs; recorded as sent.
    fn file_changes(
        &mut self,
        d: &StoreData,
        kek: &Kek,
        all: &BTreeMap<String, Assignment>,
    ) -> (Vec<pb::FileData>, Vec<pb::FileKey>) {
        let needed = open_files(d, kek, all.values().flat_map(file_keys));
        let removed: Vec<pb::FileKey> = self
            .files
            .keys()
            .filter(|k| !needed.contains_key(*k))
            .map(Into::into)
            .collect();
        self.files.retain(|k, _| needed.contains_key(k));
        let mut files = Vec::new();
        for (key, data) in needed {
            let f = hash(&data);
            if self.files.insert(key.clone(), f) != Some(f) {
                files.push(pb::FileData {
                    key: Some((&key).into()),
                    data,
                });
            }
        }
        (files, removed)
    }
}
