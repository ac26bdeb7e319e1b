//! Unpacking one layer into its own directory, ready to be an overlayfs lower dir.
//!
//! The layer tar (gzip, zstd or plain, told apart by their magic bytes) is unpacked into a
//! temporary directory that is renamed into place at the end, so a crash never leaves a half
//! layer visible. OCI whiteouts become overlayfs ones: `.wh.NAME` is a 0/0 character device
//! `NAME`, `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory. Modes, owners,
//! mtimes, xattrs, symlinks and hard links are kept (the node runs as root).

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::store::temp_name;
use super::{io_err, ImageError};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// A reader that hashes what passes through it (the layer's diff id).
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The decompressed stream of a layer blob, whatever its compression.
pub(super) fn decompressed(file: std::fs::File) -> std::io::Result<Box<dyn Read>> {
    let mut r = BufReader::with_capacity(256 * 1024, file);
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

/// Unpack the layer blob at `blob` to `dest` (which must not exist). With `diff_id`, the
/// uncompressed tar must hash to it.
pub(super) fn unpack_layer(
    blob: &Path,
    dest: &Path,
    diff_id: Option<&str>,
) -> Result<(), ImageError> {
    let tmp = temp_name(dest);
    let result = unpack_into(blob, &tmp, diff_id).and_then(|()| {
        match std::fs::rename(&tmp, dest) {
            Ok(()) => Ok(()),
            // Another pull unpacked the same layer meanwhile: theirs is as good as ours.
            Err(_) if dest.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => Err(io_err(format!("renaming to {}", dest.display()))(e)),
        }
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn unpack_into(blob: &Path, dir: &Path, diff_id: Option<&str>) -> Result<(), ImageError> {
    let ctx = |what: &str| format!("unpacking layer {}: {what}", blob.display());
    let file = std::fs::File::open(blob).map_err(io_err(ctx("open")))?;
    std::fs::create_dir(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let reader = Hashing {
        inner: decompressed(file).map_err(io_err(ctx("decompress")))?,
        hasher: Sha256::new(),
    };
    let root = dir
        .canonicalize()
        .map_err(io_err(format!("resolving {}", dir.display())))?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(io_err(ctx("read tar")))? {
        let mut entry = entry.map_err(io_err(ctx("read tar entry")))?;
        let path = entry
            .path()
            .map_err(io_err(ctx("entry path")))?
            .into_owned();
        let Some(rel) = clean(&path) else {
            return Err(ImageError::Format(format!(
                "layer {}: entry {} leaves the layer",
                blob.display(),
                path.display()
            )));
        };
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let parent = inside(&root, rel.parent().unwrap_or(Path::new("")))?;
            if name == OPAQUE {
                set_opaque(&parent)?;
            } else {
                whiteout(&parent.join(hidden))?;
            }
            continue;
        }
        entry
            .unpack_in(&root)
            .map_err(io_err(ctx(&format!("entry {}", rel.display()))))?;
    }
    let mut reader = archive.into_inner();
    // The tar's end padding belongs to the diff id too.
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(io_err(ctx("read tail")))?;
    if let Some(expected) = diff_id {
        let actual = format!("sha256:{}", hex::encode(reader.hasher.finalize()));
        if actual != expected {
            return Err(ImageError::Format(format!(
                "layer {}: uncompressed digest {actual} is not the diff id {expected} (corrupt layer refused)",
                blob.display()
            )));
        }
    }
    Ok(())
}

/// The entry path relative to the layer root, or None if it climbs out.
fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// `root/rel` (created if missing), refused if symlinks lead it out of `root`.
fn inside(root: &Path, rel: &Path) -> Result<PathBuf, ImageError> {
    let p = root.join(rel);
    std::fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
    let real = p
        .canonicalize()
        .map_err(io_err(format!("resolving {}", p.display())))?;
    if !real.starts_with(root) {
        return Err(ImageError::Format(format!(
            "whiteout under {} leaves the layer",
            rel.display()
        )));
    }
    Ok(real)
}

fn whiteout(path: &Path) -> Result<(), ImageError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
    .map_err(io_err(format!("removing {}", path.display())))?;
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    )
    .map_err(|e| io_err(format!("whiteout {}", path.display()))(e.into()))
}

fn set_opaque(dir: &Path) -> Result<(), ImageError> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| ImageError::Format(format!("NUL in path {}", dir.display())))?;
    let name = c"trusted.overlay.opaque";
    // SAFETY: both strings are NUL-terminated and live across the call; the value is 1 byte.
    let rc = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if rc != 0 {
        return Err(io_err(format!("marking {} opaque", dir.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    /// A tar with the given entries: (path, kind) where kind is `d` (dir), `f:CONTENT`,
    /// `l:TARGET` (symlink), `h:TARGET` (hard link).
    pub fn tar_of(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(1000);
            h.set_gid(1001);
            h.set_mtime(1_700_000_000);
            let (k, arg) = kind.split_once(':').unwrap_or((kind, ""));
            match k {
                "d" => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o750);
                    h.set_size(0);
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
                "f" => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o640);
                    h.set_size(arg.len() as u64);
                    b.append_data(&mut h, path, arg.as_bytes()).unwrap();
                }
                "l" | "h" => {
                    h.set_entry_type(if k == "l" {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, arg).unwrap();
                }
                other => panic!("kind {other}"),
            }
        }
        b.into_inner().unwrap()
    }

    pub fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn unpack_bytes(
        bytes: &[u8],
        diff_id: Option<&str>,
    ) -> (tempfile::TempDir, Result<(), ImageError>) {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        std::fs::write(&blob, bytes).unwrap();
        let r = unpack_layer(&blob, &dir.path().join("layer"), diff_id);
        (dir, r)
    }

    #[test]
    fn whiteouts_and_opaque_dirs_become_overlayfs_ones() {
        let tar = tar_of(&[
            ("etc/", "d"),
            ("etc/.wh.motd", "f:"),
            ("var/", "d"),
            ("var/cache/", "d"),
            ("var/cache/.wh..wh..opq", "f:"),
            ("var/cache/kept", "f:new"),
            ("./gone/.wh.deep", "f:"),
        ]);
        let (dir, r) = unpack_bytes(&gzip(&tar), None);
        r.unwrap();
        let layer = dir.path().join("layer");
        let motd = std::fs::symlink_metadata(layer.join("etc/motd")).unwrap();
        assert!(motd.file_type().is_char_device());
        assert_eq!(motd.rdev(), 0);
        assert!(!layer.join("etc/.wh.motd").exists());
        assert!(layer
            .join("gone/deep")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_char_device());
        let mut buf = [0u8; 8];
        let p = CString::new(layer.join("var/cache").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated strings and a buffer of the given length.
        let n = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(n, 1, "opaque xattr: {}", std::io::Error::last_os_error());
        assert_eq!(buf[0], b'y');
        assert!(!layer.join("var/cache/.wh..wh..opq").exists());
        assert_eq!(std::fs::read(layer.join("var/cache/kept")).unwrap(), b"new");
    }

    #[test]
    fn gzip_zstd_and_plain_layers_keep_modes_owners_and_links() {
        let tar = tar_of(&[
            ("bin/", "d"),
            ("bin/tool", "f:#!"),
            ("bin/alias", "l:tool"),
            ("bin/hard", "h:bin/tool"),
        ]);
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        for bytes in [gzip(&tar), zst, tar.clone()] {
            let (dir, r) = unpack_bytes(&bytes, Some(&diff_id));
            r.unwrap();
            let layer = dir.path().join("layer");
            let m = std::fs::metadata(layer.join("bin/tool")).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, 0o640);
            assert_eq!((m.uid(), m.gid()), (1000, 1001));
            assert_eq!(m.nlink(), 2, "hard link kept");
            let d = std::fs::metadata(layer.join("bin")).unwrap();
            assert_eq!(d.permissions().mode() & 0o7777, 0o750);
            assert_eq!(
                std::fs::read_link(layer.join("bin/alias")).unwrap(),
                Path::new("tool")
            );
        }
    }

    #[test]
    fn wrong_diff_id_leaves_no_layer() {
        let tar = tar_of(&[("a", "f:x")]);
        let wrong = format!("sha256:{}", "0".repeat(64));
        let (dir, r) = unpack_bytes(&gzip(&tar), Some(&wrong));
        assert!(r.unwrap_err().to_string().contains("diff id"));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["blob".to_string()], "half layer left behind");
    }

    #[test]
    fn entries_climbing_out_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        // Header::set_path refuses "..", so write the name bytes directly.
        h.as_old_mut().name[..7].copy_from_slice(b"../evil");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let (dir, r) = unpack_bytes(&b.into_inner().unwrap(), None);
        assert!(r.is_err());
        assert!(!dir.path().join("evil").exists());
    }
}
