//! The content-addressed part of the store and the documents it keeps:
//!
//! ```text
//!   <root>/blobs/sha256/<hex>   manifests, configs, compressed layers (verified on the way in)
//!   <root>/refs.json            normalised reference → image manifest digest
//!   <root>/layers/<hex>/        unpacked layers (see `unpack`)
//! ```
//!
//! Every file appears whole or not at all: written to a temporary name, then renamed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{io_err, unpack, Image, ImageConfig, ImageError, ImageSummary};

pub(super) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(super) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(super) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(super) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(super) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Serialises read-modify-write of refs.json within the process.
static REFS: Mutex<()> = Mutex::new(());

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

/// An image manifest, OCI or Docker v2 schema 2 (same shape).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Manifest {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// An image index or Docker manifest list.
#[derive(Clone, Debug, Default, Deserialize)]
pub(super) struct Index {
    pub manifests: Vec<Descriptor>,
}

/// A manifest document: one image, or an index of them.
pub(super) enum Document {
    Image(Manifest),
    Index(Index),
}

pub(super) fn parse_document(bytes: &[u8]) -> Result<Document, ImageError> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ImageError::Format(format!("manifest is not JSON: {e}")))?;
    let bad = |e: serde_json::Error| ImageError::Format(format!("bad manifest: {e}"));
    if v.get("manifests").is_some() {
        Ok(Document::Index(serde_json::from_value(v).map_err(bad)?))
    } else if v.get("layers").is_some() {
        Ok(Document::Image(serde_json::from_value(v).map_err(bad)?))
    } else {
        Err(ImageError::Format(
            "unsupported manifest (neither an image manifest nor an index; schema 1?)".into(),
        ))
    }
}

/// The entry of an index this node runs: linux/amd64.
pub(super) fn pick_platform(index: &Index) -> Result<&Descriptor, ImageError> {
    let images: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| d.media_type != "application/vnd.in-toto+json")
        .collect();
    images
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .or_else(|| match images.as_slice() {
            [only] if only.platform.is_none() => Some(only),
            _ => None,
        })
        .copied()
        .ok_or_else(|| {
            ImageError::Registry("no matching manifest for linux/amd64 in the manifest list".into())
        })
}

/// The image config JSON, the parts we use.
#[derive(Clone, Debug, Default, Deserialize)]
pub(super) struct ConfigFile {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ContainerConfig {
    pub env: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
    pub healthcheck: Option<DockerHealthcheck>,
}

/// Docker's HEALTHCHECK in the image config; durations in nanoseconds.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DockerHealthcheck {
    pub test: Option<Vec<String>>,
    pub interval: Option<u64>,
    pub timeout: Option<u64>,
    pub retries: Option<u64>,
    pub start_period: Option<u64>,
    pub start_interval: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub(super) struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ConfigFile {
    pub fn parse(bytes: &[u8]) -> Result<ConfigFile, ImageError> {
        serde_json::from_slice(bytes)
            .map_err(|e| ImageError::Format(format!("bad image config: {e}")))
    }

    pub fn image_config(&self) -> ImageConfig {
        let c = self.config.clone().unwrap_or_default();
        let ms = |ns: Option<u64>| ns.unwrap_or(0) / 1_000_000;
        let healthcheck = c.healthcheck.and_then(|h| {
            let test = h.test.unwrap_or_default();
            (!test.is_empty()).then(|| proto::spec::HealthCheck {
                test,
                interval_ms: ms(h.interval),
                timeout_ms: ms(h.timeout),
                retries: h.retries.unwrap_or(0),
                start_period_ms: ms(h.start_period),
                start_interval_ms: ms(h.start_interval),
            })
        });
        ImageConfig {
            env: c.env.unwrap_or_default(),
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            stop_signal: c.stop_signal.unwrap_or_default(),
            healthcheck,
        }
    }
}

/// The hex part of a `sha256:<64 hex>` digest.
pub(super) fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    match digest.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            Ok(hex)
        }
        _ => Err(ImageError::Format(format!(
            "unsupported digest {digest:?} (expected sha256:<64 lower-case hex digits>)"
        ))),
    }
}

pub(super) fn blob_path(root: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    Ok(root.join("blobs/sha256").join(digest_hex(digest)?))
}

pub(super) fn has_blob(root: &Path, digest: &str) -> bool {
    blob_path(root, digest).is_ok_and(|p| p.is_file())
}

pub(super) fn read_blob(root: &Path, digest: &str) -> Result<Vec<u8>, ImageError> {
    let path = blob_path(root, digest)?;
    match std::fs::read(&path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ImageError::NotFound(format!("blob {digest}")))
        }
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

pub(super) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A name next to `path` for writing it before the rename.
pub(super) fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".tmp-{name}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

fn digest_mismatch(expected: &str, actual: &str) -> ImageError {
    ImageError::Format(format!(
        "digest mismatch: expected {expected}, content is {actual} (corrupt or tampered blob refused)"
    ))
}

/// Store `bytes`; with `expected`, refuse them unless they hash to it. Returns the digest.
pub(super) fn put_blob(
    root: &Path,
    expected: Option<&str>,
    bytes: &[u8],
) -> Result<String, ImageError> {
    put_blob_from(root, expected, &mut &bytes[..]).map(|(d, _)| d)
}

/// Store what `src` yields, hashing it on the way; returns (digest, size).
pub(super) fn put_blob_from(
    root: &Path,
    expected: Option<&str>,
    src: &mut dyn Read,
) -> Result<(String, u64), ImageError> {
    if let Some(e) = expected {
        digest_hex(e)?;
    }
    let dir = root.join("blobs/sha256");
    let tmp = temp_name(&dir.join("incoming"));
    let result = (|| {
        let mut file =
            std::fs::File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = src.read(&mut buf).map_err(io_err("reading blob"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(io_err(format!("writing {}", tmp.display())))?;
            size += n as u64;
        }
        file.sync_all().map_err(io_err("syncing blob"))?;
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        if let Some(e) = expected {
            if e != digest {
                return Err(digest_mismatch(e, &digest));
            }
        }
        let path = blob_path(root, &digest)?;
        std::fs::rename(&tmp, &path).map_err(io_err(format!("renaming to {}", path.display())))?;
        Ok((digest, size))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Move a downloaded file into the store after checking its digest.
pub(super) fn adopt_blob(root: &Path, expected: &str, file: &Path) -> Result<(), ImageError> {
    let mut f = std::fs::File::open(file).map_err(io_err(format!("opening {}", file.display())))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(io_err(format!("reading {}", file.display())))?;
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    if digest != expected {
        let _ = std::fs::remove_file(file);
        return Err(digest_mismatch(expected, &digest));
    }
    let path = blob_path(root, expected)?;
    std::fs::rename(file, &path).map_err(io_err(format!("renaming to {}", path.display())))
}

fn refs_path(root: &Path) -> PathBuf {
    root.join("refs.json")
}

pub(super) fn read_refs(root: &Path) -> Result<BTreeMap<String, String>, ImageError> {
    let path = refs_path(root);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| ImageError::Format(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

pub(super) fn lookup_ref(root: &Path, reference: &str) -> Result<Option<String>, ImageError> {
    Ok(read_refs(root)?.remove(reference))
}

/// Point `reference` at the image manifest `manifest`.
pub(super) fn set_ref(root: &Path, reference: &str, manifest: &str) -> Result<(), ImageError> {
    let _guard = REFS.lock().unwrap_or_else(|e| e.into_inner());
    let mut refs = read_refs(root)?;
    refs.insert(reference.to_string(), manifest.to_string());
    let path = refs_path(root);
    let tmp = temp_name(&path);
    let body = serde_json::to_vec_pretty(&refs).map_err(|e| ImageError::Format(e.to_string()))?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(format!("writing {}", path.display()))(e)
    })
}

/// The directory a layer is unpacked to: keyed by its diff id (the digest of the
/// uncompressed tar) when the config lists one per layer, else by the blob digest.
fn layer_keys(manifest: &Manifest, config: &ConfigFile) -> Vec<(String, Option<String>)> {
    let diff_ids = config
        .rootfs
        .as_ref()
        .map(|r| r.diff_ids.clone())
        .unwrap_or_default();
    let by_diff =
        diff_ids.len() == manifest.layers.len() && diff_ids.iter().all(|d| digest_hex(d).is_ok());
    manifest
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if by_diff {
                (diff_ids[i].clone(), Some(diff_ids[i].clone()))
            } else {
                (l.digest.clone(), None)
            }
        })
        .collect()
}

/// The image whose manifest blob is `manifest_digest`: layers unpacked (from the blobs,
/// when missing), reference recorded. Fails with `NotFound` if a blob is missing.
pub(super) fn materialise(
    root: &Path,
    reference: &str,
    manifest_digest: &str,
) -> Result<Image, ImageError> {
    let manifest = match parse_document(&read_blob(root, manifest_digest)?)? {
        Document::Image(m) => m,
        Document::Index(_) => {
            return Err(ImageError::Format(format!(
                "{manifest_digest} is an index, not an image manifest"
            )))
        }
    };
    let config = ConfigFile::parse(&read_blob(root, &manifest.config.digest)?)?;
    let mut layers = Vec::new();
    for (blob, (key, diff_id)) in manifest.layers.iter().zip(layer_keys(&manifest, &config)) {
        let dir = root.join("layers").join(digest_hex(&key)?);
        if !dir.is_dir() {
            let src = blob_path(root, &blob.digest)?;
            if !src.is_file() {
                return Err(ImageError::NotFound(format!("layer blob {}", blob.digest)));
            }
            unpack::unpack_layer(&src, &dir, diff_id.as_deref())?;
        }
        layers.push(dir);
    }
    if read_refs(root)?.get(reference).map(String::as_str) != Some(manifest_digest) {
        set_ref(root, reference, manifest_digest)?;
    }
    Ok(Image {
        reference: reference.to_string(),
        id: manifest.config.digest.clone(),
        config: config.image_config(),
        layers,
    })
}

pub(super) fn list(root: &Path) -> Result<Vec<ImageSummary>, ImageError> {
    let mut out = Vec::new();
    for (reference, manifest_digest) in read_refs(root)? {
        let Ok(Document::Image(manifest)) =
            read_blob(root, &manifest_digest).and_then(|b| parse_document(&b))
        else {
            continue;
        };
        let created = read_blob(root, &manifest.config.digest)
            .and_then(|b| ConfigFile::parse(&b))
            .map(|c| c.created.unwrap_or_default())
            .unwrap_or_default();
        out.push(ImageSummary {
            reference,
            id: manifest.config.digest.clone(),
            size: manifest.layers.iter().map(|l| l.size).sum(),
            created,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_blobs_are_refused_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        let good = sha256_digest(b"hello");
        assert_eq!(put_blob(dir.path(), Some(&good), b"hello").unwrap(), good);
        assert!(has_blob(dir.path(), &good));
        let other = sha256_digest(b"other");
        let err = put_blob(dir.path(), Some(&other), b"tampered").unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert!(!has_blob(dir.path(), &other));
        let left: Vec<_> = std::fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "temporary files left: {left:?}");
    }

    #[test]
    fn healthcheck_nanoseconds_become_milliseconds() {
        let cfg = ConfigFile::parse(
            br#"{"created":"2024-01-01T00:00:00Z","config":{"Env":["A=1"],"Cmd":["sh"],"Entrypoint":null,
            "WorkingDir":"/w","User":"65534","StopSignal":"SIGINT",
            "Healthcheck":{"Test":["CMD-SHELL","true"],"Interval":2000000000,"Timeout":1000000000,
            "Retries":3,"StartPeriod":500000000}}}"#,
        )
        .unwrap();
        let c = cfg.image_config();
        assert_eq!(c.env, vec!["A=1"]);
        assert_eq!(c.cmd, vec!["sh"]);
        assert!(c.entrypoint.is_empty());
        assert_eq!((c.working_dir.as_str(), c.user.as_str()), ("/w", "65534"));
        assert_eq!(c.stop_signal, "SIGINT");
        assert_eq!(
            c.healthcheck,
            Some(proto::spec::HealthCheck {
                test: vec!["CMD-SHELL".into(), "true".into()],
                interval_ms: 2000,
                timeout_ms: 1000,
                retries: 3,
                start_period_ms: 500,
                start_interval_ms: 0,
            })
        );
    }

    #[test]
    fn index_picks_linux_amd64() {
        let doc = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"x","digest":"sha256:aa","size":1,"platform":{"os":"linux","architecture":"arm64"}},
            {"mediaType":"x","digest":"sha256:bb","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}"#;
        let Document::Index(i) = parse_document(doc).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(pick_platform(&i).unwrap().digest, "sha256:bb");
    }
}
