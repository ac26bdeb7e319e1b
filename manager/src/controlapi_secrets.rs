//! Control API for secrets and configs: create (data sealed before it enters raft), list,
//! inspect (secret data is never returned), remove (refused while a service uses it).

use proto::pb;
use proto::security::random_id;
use tonic::Status;

use crate::controlapi::ControlApi;
use crate::error::ApiError;
use crate::manager::{update_with_retry, ProposeError};
use crate::secrets::{self, FileKind};
use crate::store::{DataKey, FileObject, Kind, Object, Op, Txn, TxnError};

fn pb_object(kind: FileKind, o: &FileObject, data: Option<Vec<u8>>) -> pb::FileObject {
    pb::FileObject {
        id: o.id.clone(),
        version: o.version,
        name: o.name.clone(),
        labels: o
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        created_at_ms: o.created_at_ms,
        updated_at_ms: o.updated_at_ms,
        data: match kind {
            FileKind::Secret => Vec::new(),
            FileKind::Config => data.unwrap_or_default(),
        },
    }
}

fn store_kind(kind: FileKind) -> Kind {
    match kind {
        FileKind::Secret => Kind::Secret,
        FileKind::Config => Kind::Config,
    }
}

/// The message of the refusal to remove an object services still use (Docker's wording).
pub fn in_use_message(kind: FileKind, name: &str, users: &[String]) -> String {
    format!(
        "{} '{name}' is in use by the following service{}: {}",
        kind.noun(),
        if users.len() == 1 { "" } else { "s" },
        users.join(", ")
    )
}

impl ControlApi {
    pub async fn create_file_object(
        &self,
        kind: FileKind,
        req: pb::CreateFileObjectRequest,
    ) -> Result<pb::FileObject, Status> {
        secrets::validate_name(kind, &req.name).map_err(ApiError::InvalidArgument)?;
        secrets::validate_data(kind, &req.data).map_err(ApiError::InvalidArgument)?;
        proto::limits::check_labels(
            &format!("{} label", kind.noun()),
            req.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .map_err(ApiError::InvalidArgument)?;
        let id = random_id(25);
        let now = self.mgr.now_ms();
        let key = self.data_key().await?;
        let sealed =
            secrets::seal(&key, &id, &req.data).map_err(|e| ApiError::internal("sealing", e))?;
        update_with_retry(&self.mgr, |d| {
            if kind.table(d).values().any(|o| o.name == req.name) {
                return Err(ApiError::AlreadyExists {
                    kind: kind.noun(),
                    name: req.name.clone(),
                    hint: "",
                }
                .into());
            }
            let mut ops = Vec::new();
            let sealed = sealed.clone();
            let o = FileObject {
                id: id.clone(),
                version: 0,
                name: req.name.clone(),
                labels: req
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                created_at_ms: now,
                updated_at_ms: now,
                sealed,
            };
            ops.push(Op::Create(match kind {
                FileKind::Secret => Object::Secret(o),
                FileKind::Config => Object::Config(o),
            }));
            Ok(Txn::new(ops))
        })
        .await?;
        self.mgr.store.view(|d| {
            kind.table(d)
                .get(&id)
                .map(|o| pb_object(kind, o, None))
                .ok_or_else(|| {
                    ApiError::internal(
                        "reading the new object",
                        format!("{} vanished", kind.noun()),
                    )
                    .into()
                })
        })
    }

    /// The cluster's data key, opened. The first secret or config makes it, in a transaction
    /// of its own: concurrent first creates race to make it, and a loser (refused because the
    /// key exists) uses the winner's, which its node has applied by then.
    async fn data_key(&self) -> Result<DataKey, Status> {
        let internal = |e: crate::keys::KeyError| Status::from(ApiError::from(e));
        for _ in 0..5 {
            if let Some(k) = self.mgr.store.view(|d| d.data_key.clone()) {
                return self.mgr.kek.open_data_key(&k).map_err(internal);
            }
            let fresh = secrets::new_data_key()
                .map_err(|e| ApiError::internal("making the data key", e))?;
            let stored = self.mgr.kek.seal_data_key(&fresh).map_err(internal)?;
            match self
                .mgr
                .propose(Txn::new(vec![Op::Create(Object::DataKey(stored))]))
                .await
            {
                Ok(_) => return Ok(fresh),
                Err(ProposeError::Refused(TxnError::Exists { .. })) => continue,
                Err(e) => return Err(e.into_status(&self.mgr)),
            }
        }
        Err(ApiError::Busy("the cluster's data key is being created; retry".into()).into())
    }

    pub async fn list_file_objects(
        &self,
        kind: FileKind,
    ) -> Result<pb::ListFileObjectsResponse, Status> {
        self.mgr.linearizable().await?;
        Ok(self.mgr.store.view(|d| pb::ListFileObjectsResponse {
            objects: kind
                .table(d)
                .values()
                .map(|o| pb_object(kind, o, None))
                .collect(),
        }))
    }

    pub async fn get_file_object(
        &self,
        kind: FileKind,
        req: pb::GetFileObjectRequest,
    ) -> Result<pb::FileObject, Status> {
        self.mgr.linearizable().await?;
        self.mgr.store.view(|d| {
            let o = secrets::find(d, kind, &req.id).map_err(Status::not_found)?;
            let key = match kind {
                FileKind::Config => secrets::data_key(d, &self.mgr.kek),
                FileKind::Secret => None,
            };
            let data = match (kind, &key) {
                (FileKind::Config, Some(k)) => Some(
                    secrets::open(k, &o.id, &o.sealed)
                        .map_err(|e| ApiError::internal("opening the config", e))?,
                ),
                _ => None,
            };
            Ok(pb_object(kind, o, data))
        })
    }

    pub async fn remove_file_object(
        &self,
        kind: FileKind,
        req: pb::GetFileObjectRequest,
    ) -> Result<pb::Empty, Status> {
        update_with_retry(&self.mgr, |d| {
            let o = secrets::find(d, kind, &req.id).map_err(Status::not_found)?;
            let users = secrets::users(d, kind, &o.name);
            if !users.is_empty() {
                return Err(
                    ApiError::FailedPrecondition(in_use_message(kind, &o.name, &users)).into(),
                );
            }
            Ok(Txn::new(vec![Op::Delete {
                kind: store_kind(kind),
                id: o.id.clone(),
            }]))
        })
        .await?;
        Ok(pb::Empty {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Service, Store, StoreData};
    use proto::spec::{FileRef, ServiceMode, ServiceSpec, TaskSpec};

    fn spec_with_secret(name: &str, secret: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            labels: Default::default(),
            mode: ServiceMode::Replicated { replicas: 1 },
            task: TaskSpec {
                image: "busybox".into(),
                secrets: vec![FileRef {
                    name: secret.into(),
                    target: String::new(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            update: Default::default(),
            rollback: Default::default(),
            endpoint: Default::default(),
        }
    }

    /// What a create transaction does, applied straight to a store (no raft).
    fn create(store: &Store, index: u64, kind: FileKind, id: &str, name: &str, data: &[u8]) {
        let key = store
            .view(|d| d.data_key.clone())
            .unwrap_or_else(|| secrets::new_data_key().unwrap());
        let mut ops = Vec::new();
        if store.view(|d| d.data_key.is_none()) {
            ops.push(Op::Create(Object::DataKey(key.clone())));
        }
        let o = FileObject {
            id: id.into(),
            version: 0,
            name: name.into(),
            labels: Default::default(),
            created_at_ms: 0,
            updated_at_ms: 0,
            sealed: secrets::seal(&key, id, data).unwrap(),
        };
        ops.push(Op::Create(match kind {
            FileKind::Secret => Object::Secret(o),
            FileKind::Config => Object::Config(o),
        }));
        assert!(matches!(
            store.apply(index, &Txn::new(ops)),
            crate::store::TxnOutcome::Applied { .. }
        ));
    }

    #[test]
    fn data_is_never_in_clear_in_the_store() {
        let store = Store::new();
        let plain = b"correct-horse-battery-staple";
        create(&store, 1, FileKind::Secret, "s1", "db", plain);
        create(&store, 2, FileKind::Config, "c1", "conf", b"listen 80;");
        let d: StoreData = store.clone_data();
        // The bytes raft snapshots and the store hold: no trace of the data.
        let bytes = serde_json::to_vec(&d).unwrap();
        let hay = String::from_utf8_lossy(&bytes);
        assert!(!hay.contains("correct-horse"));
        assert!(!hay.contains(&hex::encode(plain)));
        assert!(!hay.contains("listen 80"));
        // The raft entry of a create as well.
        let entry = serde_json::to_string(&Txn::new(vec![Op::Create(Object::Secret(
            d.secrets["s1"].clone(),
        ))]))
        .unwrap();
        assert!(!entry.contains("correct-horse"));
        // But the dispatcher can open it.
        let spec = spec_with_secret("web", "db").task;
        let files = secrets::resolve(&d, FileKind::Secret, &spec, d.data_key.as_ref());
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].data, plain);
        assert_eq!(files[0].target, "db");
        let mut cspec = TaskSpec::default();
        cspec.configs.push(FileRef {
            name: "conf".into(),
            target: String::new(),
            ..Default::default()
        });
        let files = secrets::resolve(&d, FileKind::Config, &cspec, d.data_key.as_ref());
        assert_eq!(files[0].target, "/conf");
        assert_eq!(files[0].data, b"listen 80;");
    }

    #[test]
    fn the_stored_data_key_is_sealed_and_opens_only_with_the_kek() {
        let kek = crate::keys::Kek::generate().unwrap();
        let key = secrets::new_data_key().unwrap();
        let o = FileObject {
            id: "s1".into(),
            version: 0,
            name: "db".into(),
            labels: Default::default(),
            created_at_ms: 0,
            updated_at_ms: 0,
            sealed: secrets::seal(&key, "s1", b"hunter2").unwrap(),
        };
        let store = Store::new();
        store.apply(
            1,
            &Txn::new(vec![
                Op::Create(Object::DataKey(kek.seal_data_key(&key).unwrap())),
                Op::Create(Object::Secret(o)),
            ]),
        );
        let d = store.clone_data();
        let bytes = serde_json::to_string(&d).unwrap();
        assert!(!bytes.contains(&key.key), "data key in the clear");
        let spec = spec_with_secret("web", "db").task;
        let opened = secrets::data_key(&d, &kek);
        let files = secrets::resolve(&d, FileKind::Secret, &spec, opened.as_ref());
        assert_eq!(files[0].data, b"hunter2");
        let other = crate::keys::Kek::generate().unwrap();
        assert!(secrets::data_key(&d, &other).is_none());
        // What the dispatcher sends the node that runs a task naming it.
        let a = crate::dispatcher::assignments_for(&d, "n1", &kek);
        assert!(a.is_empty(), "no task placed yet");
    }

    #[test]
    fn refs_users_and_lookup() {
        let store = Store::new();
        create(&store, 1, FileKind::Secret, "abc1", "db", b"x");
        create(&store, 2, FileKind::Secret, "abd2", "api", b"y");
        let svc = Service {
            endpoint: Default::default(),
            id: "svc".into(),
            version: 0,
            spec: spec_with_secret("web", "db"),
            spec_version: 1,
            previous_spec: None,
            update_status: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let mut moved_on = svc.clone();
        moved_on.id = "svc2".into();
        moved_on.spec = spec_with_secret("api-svc", "other");
        moved_on.previous_spec = Some(spec_with_secret("api-svc", "api"));
        store.apply(
            3,
            &Txn::new(vec![
                Op::Create(Object::Service(Box::new(svc))),
                Op::Create(Object::Service(Box::new(moved_on))),
            ]),
        );
        store.view(|d| {
            assert_eq!(secrets::users(d, FileKind::Secret, "db"), vec!["web"]);
            // Only the previous spec names it: not in use.
            assert!(secrets::users(d, FileKind::Secret, "api").is_empty());
            assert_eq!(
                in_use_message(FileKind::Secret, "db", &["web".into()]),
                "secret 'db' is in use by the following service: web"
            );
            assert!(secrets::check_refs(d, &spec_with_secret("x", "db").task).is_ok());
            assert_eq!(
                secrets::check_refs(d, &spec_with_secret("x", "nope").task).unwrap_err(),
                "secret not found: nope"
            );
            assert_eq!(
                secrets::find(d, FileKind::Secret, "api").unwrap().id,
                "abd2"
            );
            assert_eq!(
                secrets::find(d, FileKind::Secret, "abc").unwrap().id,
                "abc1"
            );
            assert!(secrets::find(d, FileKind::Secret, "ab")
                .unwrap_err()
                .contains("ambiguous"));
            assert_eq!(
                secrets::find(d, FileKind::Config, "db").unwrap_err(),
                "config not found: db"
            );
        });
        // A second data key is refused: the first one seals everything.
        let out = store.apply(
            4,
            &Txn::new(vec![Op::Create(Object::DataKey(
                secrets::new_data_key().unwrap(),
            ))]),
        );
        assert!(matches!(out, crate::store::TxnOutcome::Refused(_)));
    }
}
