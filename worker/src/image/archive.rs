//! `image load`: OCI image layout tarballs (`index.json`, `blobs/`, references from the
//! `org.opencontainers.image.ref.name` annotation, as skopeo's `oci-archive:` writes them) and
//! docker-archive tarballs (`manifest.json` with `RepoTags`, `Config`, `Layers`, as
//! `docker save` writes them; the manifest is made up here, since that format has none).

use std::path::{Path, PathBuf};

use super::store::{self, Descriptor, Document, Manifest};
use super::{io_err, normalise, unpack, ImageError};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

pub(super) fn load(root: &Path, tarball: &Path) -> Result<Vec<String>, ImageError> {
    let work = tempfile::Builder::new()
        .prefix(".load-")
        .tempdir_in(root)
        .map_err(io_err(format!("creating a work dir in {}", root.display())))?;
    let file =
        std::fs::File::open(tarball).map_err(io_err(format!("opening {}", tarball.display())))?;
    let reader =
        unpack::decompressed(file).map_err(io_err(format!("reading {}", tarball.display())))?;
    tar::Archive::new(reader).unpack(work.path()).map_err(|e| {
        ImageError::Format(format!(
            "{}: not a valid tar archive: {e}",
            tarball.display()
        ))
    })?;
    let dir = work.path();
    if dir.join("index.json").is_file() {
        oci_layout(root, dir)
    } else if dir.join("manifest.json").is_file() {
        docker_archive(root, dir)
    } else {
        Err(ImageError::Format(format!(
            "{}: neither an OCI image layout (index.json) nor a docker archive (manifest.json)",
            tarball.display()
        )))
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ImageError> {
    let bytes = std::fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::Format(format!("{}: {e}", path.display())))
}

/// `rel` under `dir`, refused if it climbs out.
fn member(dir: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let mut out = dir.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            std::path::Component::Normal(p) => out.push(p),
            std::path::Component::CurDir => {}
            _ => {
                return Err(ImageError::Format(format!(
                    "archive path {rel:?} leaves the archive"
                )))
            }
        }
    }
    Ok(out)
}

/// Copy a blob of the layout into the store, verifying its digest.
fn import(root: &Path, layout: &Path, digest: &str) -> Result<(), ImageError> {
    if store::has_blob(root, digest) {
        return Ok(());
    }
    let src = layout.join("blobs/sha256").join(store::digest_hex(digest)?);
    let mut f = std::fs::File::open(&src)
        .map_err(|_| ImageError::Format(format!("archive lacks blob {digest}")))?;
    store::put_blob_from(root, Some(digest), &mut f)?;
    Ok(())
}

fn oci_layout(root: &Path, layout: &Path) -> Result<Vec<String>, ImageError> {
    let index: store::Index = read_json(&layout.join("index.json"))?;
    let mut loaded = Vec::new();
    for entry in &index.manifests {
        let notes = entry.annotations.clone().unwrap_or_default();
        let Some(name) = notes.get(CONTAINERD_NAME).or(notes.get(REF_NAME)) else {
            continue;
        };
        let reference = normalise(name)?;
        import(root, layout, &entry.digest)?;
        let mut digest = entry.digest.clone();
        if let Document::Index(inner) = store::parse_document(&store::read_blob(root, &digest)?)? {
            digest = store::pick_platform(&inner)?.digest.clone();
            import(root, layout, &digest)?;
        }
        let Document::Image(manifest) = store::parse_document(&store::read_blob(root, &digest)?)?
        else {
            return Err(ImageError::Format(format!(
                "{name}: nested image index is not supported"
            )));
        };
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            import(root, layout, &blob.digest)?;
        }
        store::materialise(root, &reference, &digest)?;
        loaded.push(reference);
    }
    if loaded.is_empty() {
        return Err(ImageError::Format(format!(
            "index.json names no image (no {REF_NAME} annotation)"
        )));
    }
    Ok(loaded)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn docker_archive(root: &Path, dir: &Path) -> Result<Vec<String>, ImageError> {
    let saved: Vec<SavedImage> = read_json(&dir.join("manifest.json"))?;
    let mut loaded = Vec::new();
    for image in saved {
        let put = |rel: &str| -> Result<(String, u64, PathBuf), ImageError> {
            let path = member(dir, rel)?;
            let mut f = std::fs::File::open(&path)
                .map_err(io_err(format!("reading {rel} in the archive")))?;
            let (digest, size) = store::put_blob_from(root, None, &mut f)?;
            Ok((digest, size, path))
        };
        let (config, config_size, _) = put(&image.config)?;
        let mut layers = Vec::new();
        for rel in &image.layers {
            let (digest, size, path) = put(rel)?;
            layers.push(Descriptor {
                media_type: layer_media_type(&path)?.to_string(),
                digest,
                size,
                ..Default::default()
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(store::OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: store::OCI_CONFIG.into(),
                digest: config.clone(),
                size: config_size,
                ..Default::default()
            },
            layers,
        };
        let body = serde_json::to_vec(&manifest).map_err(|e| ImageError::Format(e.to_string()))?;
        let digest = store::put_blob(root, None, &body)?;
        let tags = image.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            // An untagged image is known by its id only, as `docker load` reports it.
            store::materialise(root, &config, &digest)?;
            loaded.push(config);
        }
        for tag in tags {
            let reference = normalise(&tag)?;
            store::materialise(root, &reference, &digest)?;
            loaded.push(reference);
        }
    }
    Ok(loaded)
}

fn layer_media_type(path: &Path) -> Result<&'static str, ImageError> {
    use std::io::Read;
    let mut head = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(io_err(format!("reading {}", path.display())))?;
    let n = f
        .read(&mut head)
        .map_err(io_err(format!("reading {}", path.display())))?;
    Ok(match &head[..n] {
        [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
        [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
        _ => "application/vnd.oci.image.layer.v1.tar",
    })
}

#[cfg(test)]
mod tests {
    use super::super::unpack::tests::{gzip, tar_of};
    use super::super::{ImageStore, RegistryOptions};
    use super::*;

    fn digest(b: &[u8]) -> String {
        store::sha256_digest(b)
    }

    fn tarball(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, path, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn config_json(diff_ids: &[String]) -> Vec<u8> {
        serde_json::json!({
            "created": "2025-01-02T03:04:05Z",
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["sleep", "1"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        })
        .to_string()
        .into_bytes()
    }

    /// An OCI layout with one gzip and one zstd layer, referenced as `name`.
    fn oci_layout_tar(name: &str, corrupt: bool) -> (Vec<u8>, String) {
        let l1 = tar_of(&[
            ("bin/", "d"),
            ("bin/sh", "f:shell"),
            ("etc/", "d"),
            ("etc/motd", "f:hi"),
        ]);
        let l2 = tar_of(&[("etc/", "d"), ("etc/.wh.motd", "f:"), ("app", "f:v2")]);
        let (b1, b2) = (gzip(&l1), zstd::encode_all(&l2[..], 3).unwrap());
        let config = config_json(&[digest(&l1), digest(&l2)]);
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": store::OCI_MANIFEST,
            "config": {"mediaType": store::OCI_CONFIG, "digest": digest(&config), "size": config.len()},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(&b1), "size": b1.len()},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": digest(&b2), "size": b2.len()},
            ],
        })
        .to_string()
        .into_bytes();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": store::OCI_MANIFEST, "digest": digest(&manifest),
                "size": manifest.len(), "annotations": {REF_NAME: name}}],
        })
        .to_string()
        .into_bytes();
        let blob = |b: &[u8]| format!("blobs/sha256/{}", &digest(b)[7..]);
        let mut stored_b2 = b2.clone();
        if corrupt {
            let last = stored_b2.len() - 1;
            stored_b2[last] ^= 0xff;
        }
        let files = vec![
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            ("index.json", index),
            (&*blob(&manifest).leak(), manifest.clone()),
            (&*blob(&config).leak(), config.clone()),
            (&*blob(&b1).leak(), b1.clone()),
            (&*blob(&b2).leak(), stored_b2),
        ];
        (tarball(&files), digest(&config))
    }

    fn store() -> (tempfile::TempDir, ImageStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = ImageStore::open(&dir.path().join("images"), RegistryOptions::default()).unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn oci_layout_tarball_loads_with_both_compressions() {
        let (dir, s) = store();
        let (tar, id) = oci_layout_tar("shoal-test/app:v1", false);
        let path = dir.path().join("app.tar");
        std::fs::write(&path, tar).unwrap();
        assert_eq!(s.load(&path).unwrap(), vec!["docker.io/shoal-test/app:v1"]);
        let image = s.ensure("shoal-test/app:v1").await.unwrap();
        assert_eq!(image.id, id);
        assert_eq!(image.config.cmd, vec!["sleep", "1"]);
        assert_eq!(image.layers.len(), 2);
        assert_eq!(
            std::fs::read(image.layers[0].join("bin/sh")).unwrap(),
            b"shell"
        );
        assert_eq!(std::fs::read(image.layers[1].join("app")).unwrap(), b"v2");
        use std::os::unix::fs::FileTypeExt;
        let wh = std::fs::symlink_metadata(image.layers[1].join("etc/motd")).unwrap();
        assert!(wh.file_type().is_char_device());
        let list = s.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, id);
        assert_eq!(list[0].created, "2025-01-02T03:04:05Z");
        assert!(list[0].size > 0);
        // No work dirs or temporaries are left behind.
        let junk: Vec<_> = std::fs::read_dir(s.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(junk.is_empty(), "{junk:?}");
    }

    #[test]
    fn corrupt_blob_in_a_tarball_is_refused() {
        let (dir, s) = store();
        let (tar, _) = oci_layout_tar("app:v1", true);
        let path = dir.path().join("bad.tar");
        std::fs::write(&path, tar).unwrap();
        let err = s.load(&path).unwrap_err().to_string();
        assert!(err.contains("digest mismatch"), "{err}");
        assert!(s.list().unwrap().is_empty());
    }

    #[tokio::test]
    async fn docker_archive_loads_plain_tar_layers() {
        let (dir, s) = store();
        let l1 = tar_of(&[("hello", "f:world")]);
        let config = config_json(&[digest(&l1)]);
        let manifest = serde_json::json!([{
            "Config": "abc.json",
            "RepoTags": ["busybox:latest", "127.0.0.1:5000/bb:1"],
            "Layers": ["layer1/layer.tar"],
        }])
        .to_string()
        .into_bytes();
        let tar = tarball(&[
            ("manifest.json", manifest),
            ("abc.json", config.clone()),
            ("layer1/layer.tar", l1),
        ]);
        let path = dir.path().join("saved.tar");
        std::fs::write(&path, tar).unwrap();
        assert_eq!(
            s.load(&path).unwrap(),
            vec!["docker.io/library/busybox:latest", "127.0.0.1:5000/bb:1"]
        );
        let image = s.ensure("busybox").await.unwrap();
        assert_eq!(image.id, digest(&config));
        assert_eq!(
            std::fs::read(image.layers[0].join("hello")).unwrap(),
            b"world"
        );
        let other = s.get("127.0.0.1:5000/bb:1").await.unwrap().unwrap();
        assert_eq!(other.layers, image.layers, "one unpacked layer shared");
    }

    #[test]
    fn archive_paths_climbing_out_are_refused() {
        let (dir, s) = store();
        let manifest =
            br#"[{"Config":"../../etc/passwd","RepoTags":["x:1"],"Layers":[]}]"#.to_vec();
        let path = dir.path().join("evil.tar");
        std::fs::write(&path, tarball(&[("manifest.json", manifest)])).unwrap();
        assert!(s
            .load(&path)
            .unwrap_err()
            .to_string()
            .contains("leaves the archive"));
    }
}
