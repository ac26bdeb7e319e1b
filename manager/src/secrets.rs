//! Secrets and configs: sealing their data, the rules for names and sizes, and resolving the
//! references a task spec makes to them.
//!
//! Data is sealed with ChaCha20-Poly1305 under the cluster's data key ([`DataKey`]) before it
//! goes into a transaction, so the raft log, snapshots and the in-memory store only ever hold
//! ciphertext. The data key itself is stored sealed with the key-encrypting key, which is kept
//! outside the store ([`crate::keys`]); [`data_key`] opens it. The object id is the associated data: a sealed blob cannot be moved to another
//! object unnoticed. Only the dispatcher opens it, for the assignments of the node that runs a
//! task naming it.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use proto::spec::{FileData, FileRef, TaskSpec};

use crate::store::{DataKey, FileObject, StoreData};

/// Swarm's limit on a secret's or config's data.
pub const MAX_DATA_BYTES: usize = 500 * 1024;
/// Longest name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Which of the two tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Secret,
    Config,
}

impl FileKind {
    pub fn noun(self) -> &'static str {
        match self {
            FileKind::Secret => "secret",
            FileKind::Config => "config",
        }
    }

    pub fn table(self, d: &StoreData) -> &std::collections::BTreeMap<String, FileObject> {
        match self {
            FileKind::Secret => &d.secrets,
            FileKind::Config => &d.configs,
        }
    }

    /// The references a task spec makes to this kind.
    pub fn refs(self, spec: &TaskSpec) -> &[FileRef] {
        match self {
            FileKind::Secret => &spec.secrets,
            FileKind::Config => &spec.configs,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the cluster data key is malformed")]
    BadKey,
    #[error("no randomness available")]
    Random,
    #[error("sealed data is malformed or was not sealed with this key")]
    Open,
}

/// A fresh data key object (32 random bytes).
pub fn new_data_key() -> Result<DataKey, SealError> {
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| SealError::Random)?;
    Ok(DataKey {
        id: "data-key".into(),
        version: 0,
        key: hex::encode(key),
    })
}

fn aead_key(key: &DataKey) -> Result<LessSafeKey, SealError> {
    let raw = hex::decode(&key.key).map_err(|_| SealError::BadKey)?;
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &raw).map_err(|_| SealError::BadKey)?;
    Ok(LessSafeKey::new(unbound))
}

/// Seal `data` for object `id`: hex of a random nonce followed by ciphertext and tag.
pub fn seal(key: &DataKey, id: &str, data: &[u8]) -> Result<String, SealError> {
    let k = aead_key(key)?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| SealError::Random)?;
    let mut buf = data.to_vec();
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(id.as_bytes()),
        &mut buf,
    )
    .map_err(|_| SealError::BadKey)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(hex::encode(out))
}

/// The data sealed by [`seal`] for object `id`.
pub fn open(key: &DataKey, id: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
    let k = aead_key(key)?;
    let raw = hex::decode(sealed).map_err(|_| SealError::Open)?;
    if raw.len() < NONCE_LEN {
        return Err(SealError::Open);
    }
    let (n, ct) = raw.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(n).map_err(|_| SealError::Open)?;
    let mut buf = ct.to_vec();
    let plain = k
        .open_in_place(nonce, Aad::from(id.as_bytes()), &mut buf)
        .map_err(|_| SealError::Open)?;
    Ok(plain.to_vec())
}

/// Docker's rule for secret and config names.
pub fn validate_name(kind: FileKind, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {} name {name:?}: use 1-{MAX_NAME_LEN} letters, digits, '_', '.' or '-', starting with a letter or digit",
            kind.noun()
        ))
    }
}

pub fn validate_data(kind: FileKind, data: &[u8]) -> Result<(), String> {
    if data.is_empty() && kind == FileKind::Secret {
        return Err("secret data is empty".into());
    }
    if data.len() > MAX_DATA_BYTES {
        return Err(format!(
            "{} data is {} bytes; the limit is {MAX_DATA_BYTES} bytes (500 KiB)",
            kind.noun(),
            data.len()
        ));
    }
    Ok(())
}

/// Find by full id, exact name, or unique id prefix (as Docker resolves them).
pub fn find<'a>(d: &'a StoreData, kind: FileKind, key: &str) -> Result<&'a FileObject, String> {
    crate::store::find_by_key(kind.table(d), key, |o| &o.name).map_err(|miss| match miss {
        crate::store::Miss::NotFound => format!("{} not found: {key}", kind.noun()),
        crate::store::Miss::Ambiguous => format!(
            "{} {key} is ambiguous: it matches more than one {}",
            kind.noun(),
            kind.noun()
        ),
    })
}

pub(crate) fn by_name<'a>(d: &'a StoreData, kind: FileKind, name: &str) -> Option<&'a FileObject> {
    kind.table(d).values().find(|o| o.name == name)
}

/// Names of the services whose current spec refers to `name`. (As in Docker, a previous
/// spec does not keep it in use: `service update --secret-rm X` frees X at once; a manual
/// rollback to a spec naming a removed one is refused.)
pub fn users(d: &StoreData, kind: FileKind, name: &str) -> Vec<String> {
    d.services
        .values()
        .filter(|s| kind.refs(&s.spec.task).iter().any(|r| r.name == name))
        .map(|s| s.spec.name.clone())
        .collect()
}

/// Every secret and config a task spec names exists; Err names the first missing one
/// (`secret not found: NAME`).
pub fn check_refs(d: &StoreData, spec: &TaskSpec) -> Result<(), String> {
    for kind in [FileKind::Secret, FileKind::Config] {
        for r in kind.refs(spec) {
            if by_name(d, kind, &r.name).is_none() {
                return Err(format!("{} not found: {}", kind.noun(), r.name));
            }
            if kind == FileKind::Secret
                && (r.target.contains("..")
                    || (r.target.contains('/') && !r.target.starts_with('/')))
            {
                return Err(format!(
                    "invalid secret target {:?}: use a file name or an absolute path",
                    r.target
                ));
            }
            if kind == FileKind::Config && !r.target.is_empty() && !r.target.starts_with('/') {
                return Err(format!(
                    "invalid config target {:?}: use an absolute path",
                    r.target
                ));
            }
        }
    }
    Ok(())
}

/// The store's data key, opened with the KEK; `None` if there is none yet (or it cannot be
/// opened, which is logged).
pub fn data_key(d: &StoreData, kek: &crate::keys::Kek) -> Option<DataKey> {
    let stored = d.data_key.as_ref()?;
    match kek.open_data_key(stored) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::error!(error = %e, "cannot open the data key");
            None
        }
    }
}

/// The data of the secrets (or configs) a task spec names, opened for its node with the
/// (opened) data `key`; targets
/// defaulted (secrets: the name, under /run/secrets; configs: `/NAME`). A reference that
/// cannot be resolved is left out (and logged without its data): the task then fails on the
/// worker for a missing file rather than the whole node's assignments failing.
pub fn resolve(
    d: &StoreData,
    kind: FileKind,
    spec: &TaskSpec,
    key: Option<&DataKey>,
) -> Vec<FileData> {
    let refs = kind.refs(spec);
    if refs.is_empty() {
        return Vec::new();
    }
    let Some(key) = key else {
        tracing::warn!("a task names a {} but no data key exists", kind.noun());
        return Vec::new();
    };
    refs.iter()
        .filter_map(|r| {
            let o = by_name(d, kind, &r.name)?;
            match open(key, &o.id, &o.sealed) {
                Ok(data) => Some(FileData {
                    name: r.name.clone(),
                    target: match (kind, r.target.is_empty()) {
                        (_, false) => r.target.clone(),
                        (FileKind::Secret, true) => r.name.clone(),
                        (FileKind::Config, true) => format!("/{}", r.name),
                    },
                    data,
                    uid: r.uid,
                    gid: r.gid,
                    mode: r.mode,
                }),
                Err(e) => {
                    tracing::warn!(name = %r.name, error = %e, "cannot open {}", kind.noun());
                    None
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let key = new_data_key().unwrap();
        let sealed = seal(&key, "id1", b"hunter2").unwrap();
        assert!(!sealed.contains(&hex::encode(b"hunter2")));
        assert_eq!(open(&key, "id1", &sealed).unwrap(), b"hunter2");
        // Bound to the object id and to the key.
        assert_eq!(open(&key, "id2", &sealed), Err(SealError::Open));
        let other = new_data_key().unwrap();
        assert_eq!(open(&other, "id1", &sealed), Err(SealError::Open));
        // Two seals of the same data differ (random nonce).
        assert_ne!(sealed, seal(&key, "id1", b"hunter2").unwrap());
        // Tampering is detected.
        let mut bad = sealed.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            open(&key, "id1", &String::from_utf8(bad).unwrap()),
            Err(SealError::Open)
        );
        assert_eq!(open(&key, "id1", "00"), Err(SealError::Open));
    }

    #[test]
    fn names_and_sizes() {
        for ok in ["a", "db-password", "x.y_z", &"a".repeat(64)] {
            assert!(validate_name(FileKind::Secret, ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", &"a".repeat(65)] {
            let e = validate_name(FileKind::Secret, bad).unwrap_err();
            assert!(e.starts_with("invalid secret name"), "{e}");
        }
        assert!(validate_data(FileKind::Secret, &vec![0; MAX_DATA_BYTES]).is_ok());
        let e = validate_data(FileKind::Config, &vec![0; MAX_DATA_BYTES + 1]).unwrap_err();
        assert!(e.contains("limit is 512000 bytes"), "{e}");
        assert!(validate_data(FileKind::Secret, b"").is_err());
        assert!(validate_data(FileKind::Config, b"").is_ok());
    }
}
