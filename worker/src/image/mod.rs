//! Images on a node: pulled from OCI registries or loaded from tarballs, kept as
//! content-addressed blobs, with every layer unpacked once and shared by the containers that
//! stack it with overlayfs.
//!
//! This file fixes the interface the runtime and the daemon use; the implementation lives in
//! the submodules:
//!
//! ```text
//!   reference  Docker's reference normalisation (busybox → docker.io/library/busybox:latest)
//!   registry   pulls over the OCI Distribution API (oci-client)     ─┐
//!   archive    `image load`: OCI-layout and docker-archive tarballs  ─┤→ store → unpack
//!   store      <root>/blobs/sha256/<hex>, <root>/refs.json, manifests and configs
//!   unpack     <root>/layers/<diff id>/: one directory per layer, overlayfs whiteouts
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

mod archive;
mod reference;
mod registry;
mod store;
mod unpack;

pub use reference::normalise;

/// What a container needs from its image's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: String,
    /// The image's HEALTHCHECK, if any.
    pub healthcheck: Option<proto::spec::HealthCheck>,
}

/// An image ready to run: its layers unpacked, bottom layer first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The reference as the user wrote it, normalised (`registry/repo:tag`).
    pub reference: String,
    /// `sha256:…` of the image config (Docker's image id).
    pub id: String,
    pub config: ImageConfig,
    /// Unpacked layer directories, bottom first (overlayfs wants them top first).
    pub layers: Vec<PathBuf>,
}

/// One row of `shoal image ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    pub reference: String,
    pub id: String,
    pub size: u64,
    pub created: String,
}

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// `host:port` of registries spoken to over plain HTTP (as Docker's
    /// `--insecure-registry`).
    pub insecure: Vec<String>,
    /// Basic credentials per registry host (`host:port` → (user, password)).
    pub auth: Vec<(String, String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The registry's own words (e.g. `manifest unknown`), to be shown in `service ps`.
    #[error("{0}")]
    Registry(String),
    #[error("invalid reference format: {0}")]
    Reference(String),
    #[error("image {0} not found on this node")]
    NotFound(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Format(String),
}

/// The node's image store, under `<data dir>/images`.
pub struct ImageStore {
    root: PathBuf,
    options: RegistryOptions,
    /// One async lock per reference, so concurrent `ensure` calls pull an image once.
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ImageStore {
    pub fn open(root: &Path, options: RegistryOptions) -> Result<ImageStore, ImageError> {
        for dir in [
            root.to_path_buf(),
            root.join("blobs/sha256"),
            root.join("layers"),
        ] {
            std::fs::create_dir_all(&dir).map_err(|source| ImageError::Io {
                context: format!("creating {}", dir.display()),
                source,
            })?;
        }
        Ok(ImageStore {
            root: root.to_path_buf(),
            options,
            pulls: Mutex::new(HashMap::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    fn pull_lock(&self, reference: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        pulls.entry(reference.to_string()).or_default().clone()
    }

    /// The image, pulled first unless this node has it already (a reference by tag is
    /// pulled again only if the tag is unknown here; a digest reference never twice).
    pub async fn ensure(&self, reference: &str) -> Result<Image, ImageError> {
        let name = normalise(reference)?;
        let lock = self.pull_lock(&name);
        let _held = lock.lock().await;
        if let Some(image) = self.local(&name).await? {
            return Ok(image);
        }
        registry::pull(self, &name).await
    }

    /// Pull from the registry even if the node has the tag.
    pub async fn pull(&self, reference: &str) -> Result<Image, ImageError> {
        let name = normalise(reference)?;
        let lock = self.pull_lock(&name);
        let _held = lock.lock().await;
        registry::pull(self, &name).await
    }

    /// The image if this node has it (its layers are unpacked again from the blobs if a layer
    /// directory went missing).
    pub async fn get(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        let name = normalise(reference)?;
        self.local(&name).await
    }

    async fn local(&self, name: &str) -> Result<Option<Image>, ImageError> {
        let root = self.root.clone();
        let name = name.to_string();
        blocking(move || {
            let Some(manifest) = store::lookup_ref(&root, &name)? else {
                return Ok(None);
            };
            match store::materialise(&root, &name, &manifest) {
                Ok(image) => Ok(Some(image)),
                // A blob went missing: pull again.
                Err(ImageError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// `image load`: an OCI-layout or docker-archive tarball; returns the references loaded.
    pub fn load(&self, tarball: &Path) -> Result<Vec<String>, ImageError> {
        archive::load(&self.root, tarball)
    }

    pub fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        store::list(&self.root)
    }
}

/// Runs file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::Format(format!("image task failed: {e}")))?
}

/// An I/O error with what we were doing.
fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}
