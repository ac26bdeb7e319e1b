//! Images on a node: pulled from OCI registries or loaded from tarballs, kept as
//! content-addressed blobs, with every layer unpacked once and shared by the containers that
//! stack it with overlayfs.
//!
//! This file fixes the interface the runtime and the daemon use; the implementation lives in
//! the submodules.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
}

impl ImageStore {
    pub fn open(root: &Path, options: RegistryOptions) -> Result<ImageStore, ImageError> {
        std::fs::create_dir_all(root).map_err(|source| ImageError::Io {
            context: format!("creating {}", root.display()),
            source,
        })?;
        Ok(ImageStore {
            root: root.to_path_buf(),
            options,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// The image, pulled first unless this node has it already (a reference by tag is
    /// pulled again only if the tag is unknown here; a digest reference never twice).
    pub async fn ensure(&self, reference: &str) -> Result<Image, ImageError> {
        Err(ImageError::NotFound(reference.to_string()))
    }

    /// Pull from the registry even if the node has the tag.
    pub async fn pull(&self, reference: &str) -> Result<Image, ImageError> {
        Err(ImageError::NotFound(reference.to_string()))
    }

    /// `image load`: an OCI-layout or docker-archive tarball; returns the references loaded.
    pub fn load(&self, tarball: &Path) -> Result<Vec<String>, ImageError> {
        Err(ImageError::Format(format!(
            "{}: not supported yet",
            tarball.display()
        )))
    }

    pub fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        Ok(Vec::new())
    }
}
