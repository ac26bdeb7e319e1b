//! The key-encrypting key (KEK) and autolock.
//!
//! The secrets' data key and the root CA's private key live in the raft store sealed with the
//! cluster's KEK, so the raft log, snapshots and the redb file never hold either in the clear.
//! The KEK itself is kept outside the store, in a file of each manager's data dir:
//!
//! ```text
//!   raft store   DataKey.key               kek1:<sealed>   (purpose "data-key")
//!                Cluster.root_ca.key_pem   kek1:<sealed>   (purpose "root-ca-key")
//!                Cluster.unlock_key        kek1:<sealed>   (purpose "unlock-key"; autolock on)
//!   kek.json     autolock off: {"kek":"<hex>"}
//!   (0600)       autolock on:  {"sealed_kek":"<hex>"}  sealed with a key derived from the
//!                              unlock key SWMKEY-1-…, which is nowhere on disk in the clear
//! ```
//!
//! There is one KEK per cluster, made at `swarm init`. A manager that joins receives it in
//! the answer to its join (TLS pinned to the root CA, authorised by the manager token); a
//! worker promoted to manager fetches it with its new manager certificate (`Ca.Keys`). Every
//! manager keeps its file in step with the cluster's autolock setting ([`keep_file`]): once
//! autolock is on, a copy of a manager's disk reveals neither the data key nor the CA key, and
//! a restarted manager stays locked until `swarm unlock` gives it the unlock key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use proto::security::RootCa;

use crate::store::DataKey;

/// Prefix of a value sealed with the KEK (anything else is a legacy clear value).
pub const SEALED_PREFIX: &str = "kek1:";
/// Name of the key file in a manager's data dir.
pub const KEY_FILE: &str = "kek.json";
const UNLOCK_PREFIX: &str = "SWMKEY-1-";

const PURPOSE_DATA_KEY: &str = "data-key";
const PURPOSE_CA_KEY: &str = "root-ca-key";
const PURPOSE_UNLOCK_KEY: &str = "unlock-key";
const PURPOSE_KEY_FILE: &str = "kek-file";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no randomness available")]
    Random,
    #[error("a sealed {0} is malformed or was not sealed with this cluster's key")]
    Open(&'static str),
    #[error("invalid unlock key: expected SWMKEY-1- followed by 64 hex digits")]
    BadUnlockKey,
    #[error("invalid key: it does not unlock this node")]
    WrongUnlockKey,
    #[error("this node is locked (autolock): unlock it with `shoal swarm unlock` first")]
    Locked,
    #[error("key file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

fn random32() -> Result<[u8; 32], KeyError> {
    let mut k = [0u8; 32];
    SystemRandom::new()
        .fill(&mut k)
        .map_err(|_| KeyError::Random)?;
    Ok(k)
}

fn seal_with(key: LessSafeKey, purpose: &str, data: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| KeyError::Random)?;
    let mut buf = data.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(purpose.as_bytes()),
        &mut buf,
    )
    .map_err(|_| KeyError::Random)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

fn open_with(key: LessSafeKey, purpose: &'static str, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
    if sealed.len() < NONCE_LEN {
        return Err(KeyError::Open(purpose));
    }
    let (n, ct) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(n).map_err(|_| KeyError::Open(purpose))?;
    let mut buf = ct.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut buf)
        .map_err(|_| KeyError::Open(purpose))?;
    Ok(plain.to_vec())
}

/// The cluster's key-encrypting key (32 random bytes). Its `Debug` shows no key material.
#[derive(Clone, PartialEq, Eq)]
pub struct Kek([u8; 32]);

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    pub fn generate() -> Result<Kek, KeyError> {
        Ok(Kek(random32()?))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<Kek, KeyError> {
        let raw = hex::decode(s.trim()).map_err(|_| KeyError::Open("key"))?;
        let k: [u8; 32] = raw.try_into().map_err(|_| KeyError::Open("key"))?;
        Ok(Kek(k))
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &self.0).expect("32-byte key"))
    }

    /// `kek1:<hex of nonce, ciphertext and tag>`; `purpose` is bound as associated data.
    fn seal(&self, purpose: &str, data: &[u8]) -> Result<String, KeyError> {
        Ok(format!(
            "{SEALED_PREFIX}{}",
            hex::encode(seal_with(self.aead(), purpose, data)?)
        ))
    }

    fn open(&self, purpose: &'static str, sealed: &str) -> Result<Vec<u8>, KeyError> {
        let body = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(KeyError::Open(purpose))?;
        let raw = hex::decode(body).map_err(|_| KeyError::Open(purpose))?;
        open_with(self.aead(), purpose, &raw)
    }

    /// The root CA as stored: its private key sealed.
    pub fn seal_root_ca(&self, ca: &RootCa) -> Result<RootCa, KeyError> {
        if ca.key_pem.starts_with(SEALED_PREFIX) {
            return Ok(ca.clone());
        }
        Ok(RootCa {
            cert_pem: ca.cert_pem.clone(),
            key_pem: self.seal(PURPOSE_CA_KEY, ca.key_pem.as_bytes())?,
        })
    }

    /// The root CA with its private key usable. A key stored in the clear (a cluster made
    /// before keys were sealed, or a test's) is returned as it is.
    pub fn open_root_ca(&self, ca: &RootCa) -> Result<RootCa, KeyError> {
        if !ca.key_pem.starts_with(SEALED_PREFIX) {
            return Ok(ca.clone());
        }
        let pem = self.open(PURPOSE_CA_KEY, &ca.key_pem)?;
        Ok(RootCa {
            cert_pem: ca.cert_pem.clone(),
            key_pem: String::from_utf8(pem).map_err(|_| KeyError::Open(PURPOSE_CA_KEY))?,
        })
    }

    /// The data key as stored: its key bytes sealed.
    pub fn seal_data_key(&self, key: &DataKey) -> Result<DataKey, KeyError> {
        if key.key.starts_with(SEALED_PREFIX) {
            return Ok(key.clone());
        }
        Ok(DataKey {
            key: self.seal(PURPOSE_DATA_KEY, key.key.as_bytes())?,
            ..key.clone()
        })
    }

    /// The data key usable by [`crate::secrets::seal`] and `open` (clear legacy keys pass).
    pub fn open_data_key(&self, key: &DataKey) -> Result<DataKey, KeyError> {
        if !key.key.starts_with(SEALED_PREFIX) {
            return Ok(key.clone());
        }
        let clear = self.open(PURPOSE_DATA_KEY, &key.key)?;
        Ok(DataKey {
            key: String::from_utf8(clear).map_err(|_| KeyError::Open(PURPOSE_DATA_KEY))?,
            ..key.clone()
        })
    }

    /// The unlock key as the cluster object stores it.
    pub fn seal_unlock_key(&self, key: &UnlockKey) -> Result<String, KeyError> {
        self.seal(PURPOSE_UNLOCK_KEY, &key.0)
    }

    pub fn open_unlock_key(&self, sealed: &str) -> Result<UnlockKey, KeyError> {
        let raw = self.open(PURPOSE_UNLOCK_KEY, sealed)?;
        let k: [u8; 32] = raw
            .try_into()
            .map_err(|_| KeyError::Open(PURPOSE_UNLOCK_KEY))?;
        Ok(UnlockKey(k))
    }
}

/// The key a user keeps to unlock a manager with autolock on: `SWMKEY-1-<64 hex digits>`.
#[derive(Clone, PartialEq, Eq)]
pub struct UnlockKey([u8; 32]);

impl fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnlockKey(..)")
    }
}

impl fmt::Display for UnlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{UNLOCK_PREFIX}{}", hex::encode(self.0))
    }
}

impl std::str::FromStr for UnlockKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s
            .trim()
            .strip_prefix(UNLOCK_PREFIX)
            .ok_or(KeyError::BadUnlockKey)?;
        let raw = hex::decode(body).map_err(|_| KeyError::BadUnlockKey)?;
        Ok(UnlockKey(
            raw.try_into().map_err(|_| KeyError::BadUnlockKey)?,
        ))
    }
}

impl UnlockKey {
    pub fn generate() -> Result<UnlockKey, KeyError> {
        Ok(UnlockKey(random32()?))
    }

    /// The AEAD key that wraps the KEK in the key file. The unlock key is 256 random bits, so
    /// a plain HKDF (no password stretching) is enough; it separates the two uses.
    fn wrapping_key(&self) -> LessSafeKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"shoal kek file v1").extract(&self.0);
        let okm = prk
            .expand(&[b"wrap"], &CHACHA20_POLY1305)
            .expect("one AEAD key is a valid HKDF length");
        LessSafeKey::new(UnboundKey::from(okm))
    }
}

/// What a manager's key file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyFile {
    /// Autolock off: the KEK itself.
    Clear(Kek),
    /// Autolock on: the KEK sealed under the unlock key.
    Locked { sealed: Vec<u8> },
}

#[derive(Serialize, Deserialize, Default)]
struct KeyFileJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kek: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_kek: Option<String>,
}

pub fn key_file_path(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE)
}

impl KeyFile {
    pub fn locked(kek: &Kek, unlock: &UnlockKey) -> Result<KeyFile, KeyError> {
        Ok(KeyFile::Locked {
            sealed: seal_with(unlock.wrapping_key(), PURPOSE_KEY_FILE, &kek.0)?,
        })
    }

    /// The KEK this file holds, given the unlock key when it is locked.
    pub fn unlock(&self, key: Option<&UnlockKey>) -> Result<Kek, KeyError> {
        match (self, key) {
            (KeyFile::Clear(k), _) => Ok(k.clone()),
            (KeyFile::Locked { .. }, None) => Err(KeyError::WrongUnlockKey),
            (KeyFile::Locked { sealed }, Some(u)) => {
                let raw = open_with(u.wrapping_key(), PURPOSE_KEY_FILE, sealed)
                    .map_err(|_| KeyError::WrongUnlockKey)?;
                Ok(Kek(raw.try_into().map_err(|_| KeyError::WrongUnlockKey)?))
            }
        }
    }

    pub fn is_locked(&self) -> bool {
        matches!(self, KeyFile::Locked { .. })
    }

    /// The key file of `dir`, `None` if there is none.
    pub fn load(dir: &Path) -> Result<Option<KeyFile>, KeyError> {
        let path = key_file_path(dir);
        let bad = |reason: String| KeyError::File {
            path: path.clone(),
            reason,
        };
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(e.to_string())),
        };
        let j: KeyFileJson = serde_json::from_slice(&data).map_err(|e| bad(e.to_string()))?;
        match (j.kek, j.sealed_kek) {
            (Some(k), None) => Ok(Some(KeyFile::Clear(
                Kek::from_hex(&k).map_err(|e| bad(e.to_string()))?,
            ))),
            (None, Some(s)) => Ok(Some(KeyFile::Locked {
                sealed: hex::decode(s).map_err(|e| bad(e.to_string()))?,
            })),
            _ => Err(bad("expected exactly one of kek, sealed_kek".into())),
        }
    }

    /// Write it to `dir` atomically, mode 0600.
    pub fn save(&self, dir: &Path) -> Result<(), KeyError> {
        let path = key_file_path(dir);
        let j = match self {
            KeyFile::Clear(k) => KeyFileJson {
                kek: Some(k.to_hex()),
                sealed_kek: None,
            },
            KeyFile::Locked { sealed } => KeyFileJson {
                kek: None,
                sealed_kek: Some(hex::encode(sealed)),
            },
        };
        let data = serde_json::to_vec(&j).expect("key file json");
        write_private(&path, &data).map_err(|e| KeyError::File {
            path: path.clone(),
            reason: e.to_string(),
        })
    }
}

/// Write `data` to `path` through a temporary file: mode 0600, synced, renamed into place.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Create `dir` (and parents) and make `dir` itself 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Make `dir` 0700 and every file below it 0600, every directory 0700 (for directories
/// holding only the node's own state: never container root filesystems).
pub fn restrict_tree(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        if meta.permissions().mode() & 0o777 != 0o700 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        for e in std::fs::read_dir(dir)? {
            restrict_tree(&e?.path())?;
        }
    } else if meta.is_file() && meta.permissions().mode() & 0o777 != 0o600 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// The KEK of a manager started without one: its key file's, or a new one (written) if
/// it has none. A locked file is an error: the node must be unlocked first.
pub fn load_or_create(dir: &Path) -> Result<Kek, KeyError> {
    match KeyFile::load(dir)? {
        Some(f) if f.is_locked() => Err(KeyError::Locked),
        Some(f) => f.unlock(None),
        None => {
            let kek = Kek::generate()?;
            KeyFile::Clear(kek.clone()).save(dir)?;
            Ok(kek)
        }
    }
}

/// Bring the key file in `dir` in line with the cluster's autolock setting (`sealed_unlock`:
/// the cluster's sealed unlock key, `None` when autolock is off). Returns whether it wrote.
pub fn sync_file(dir: &Path, kek: &Kek, sealed_unlock: Option<&str>) -> Result<bool, KeyError> {
    let current = KeyFile::load(dir).ok().flatten();
    let want = match sealed_unlock {
        None => {
            if current == Some(KeyFile::Clear(kek.clone())) {
                return Ok(false);
            }
            KeyFile::Clear(kek.clone())
        }
        Some(sealed) => {
            let unlock = kek.open_unlock_key(sealed)?;
            if let Some(f @ KeyFile::Locked { .. }) = &current {
                if f.unlock(Some(&unlock)).as_ref() == Ok(kek) {
                    return Ok(false);
                }
            }
            KeyFile::locked(kek, &unlock)?
        }
    };
    want.save(dir)?;
    Ok(true)
}

/// Every manager: keep its key file in step with the cluster's autolock setting and unlock
/// key (rotations included) for as long as it runs.
pub async fn keep_file(mgr: Arc<crate::Manager>, cancel: CancellationToken) {
    let mut events = mgr.store.watch();
    let dir = mgr.config.data_dir.clone();
    let mut last: Option<Option<String>> = None;
    loop {
        let want = mgr
            .store
            .view(|d| d.cluster.as_ref().map(|c| c.unlock_key.clone()));
        if let Some(want) = want {
            if last.as_ref() != Some(&want) {
                match sync_file(&dir, &mgr.kek, want.as_deref()) {
                    Ok(wrote) => {
                        if wrote {
                            tracing::info!(locked = want.is_some(), "key file updated");
                        }
                        last = Some(want);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot update the key file"),
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            ev = events.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = ev {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_kek_and_purpose() {
        let kek = Kek::generate().unwrap();
        let other = Kek::generate().unwrap();
        let ca = RootCa::generate("c").unwrap();
        let sealed = kek.seal_root_ca(&ca).unwrap();
        assert!(sealed.key_pem.starts_with(SEALED_PREFIX));
        assert!(!sealed.key_pem.contains("PRIVATE KEY"));
        assert_eq!(sealed.cert_pem, ca.cert_pem);
        assert_eq!(kek.open_root_ca(&sealed).unwrap(), ca);
        assert!(other.open_root_ca(&sealed).is_err());
        // Sealing twice is a no-op; clear legacy values pass through opening.
        assert_eq!(kek.seal_root_ca(&sealed).unwrap(), sealed);
        assert_eq!(kek.open_root_ca(&ca).unwrap(), ca);

        let dk = crate::secrets::new_data_key().unwrap();
        let sdk = kek.seal_data_key(&dk).unwrap();
        assert!(!sdk.key.contains(&dk.key));
        assert_eq!(kek.open_data_key(&sdk).unwrap(), dk);
        assert!(other.open_data_key(&sdk).is_err());
        // A sealed value of one purpose does not open as another.
        let as_ca = RootCa {
            cert_pem: String::new(),
            key_pem: sdk.key.clone(),
        };
        assert!(kek.open_root_ca(&as_ca).is_err());
    }

    #[test]
    fn unlock_keys_round_trip_and_lock_the_file() {
        let kek = Kek::generate().unwrap();
        let u = UnlockKey::generate().unwrap();
        let text = u.to_string();
        assert!(text.starts_with("SWMKEY-1-") && text.len() == 9 + 64);
        assert_eq!(text.parse::<UnlockKey>().unwrap(), u);
        assert!("SWMKEY-1-zz".parse::<UnlockKey>().is_err());
        assert!(!format!("{u:?}{kek:?}").contains(&hex::encode(u.0)));
        assert_eq!(
            kek.open_unlock_key(&kek.seal_unlock_key(&u).unwrap())
                .unwrap(),
            u
        );

        let dir = tempfile::tempdir().unwrap();
        let sealed_unlock = kek.seal_unlock_key(&u).unwrap();
        // Off → clear file; on → locked; the same setting again writes nothing.
        assert!(sync_file(dir.path(), &kek, None).unwrap());
        assert!(!sync_file(dir.path(), &kek, None).unwrap());
        assert_eq!(
            KeyFile::load(dir.path()).unwrap(),
            Some(KeyFile::Clear(kek.clone()))
        );
        assert!(sync_file(dir.path(), &kek, Some(&sealed_unlock)).unwrap());
        assert!(!sync_file(dir.path(), &kek, Some(&sealed_unlock)).unwrap());
        let raw = std::fs::read_to_string(key_file_path(dir.path())).unwrap();
        assert!(!raw.contains(&kek.to_hex()), "KEK in the clear: {raw}");
        let f = KeyFile::load(dir.path()).unwrap().unwrap();
        assert!(f.is_locked());
        assert_eq!(f.unlock(None), Err(KeyError::WrongUnlockKey));
        let wrong = UnlockKey::generate().unwrap();
        assert_eq!(f.unlock(Some(&wrong)), Err(KeyError::WrongUnlockKey));
        assert_eq!(f.unlock(Some(&u)).unwrap(), kek);
        assert_eq!(load_or_create(dir.path()), Err(KeyError::Locked));
        // A rotated unlock key rewraps the file.
        let u2 = UnlockKey::generate().unwrap();
        let s2 = kek.seal_unlock_key(&u2).unwrap();
        assert!(sync_file(dir.path(), &kek, Some(&s2)).unwrap());
        let f = KeyFile::load(dir.path()).unwrap().unwrap();
        assert!(f.unlock(Some(&u)).is_err());
        assert_eq!(f.unlock(Some(&u2)).unwrap(), kek);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_file_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
