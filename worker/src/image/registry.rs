//! Pulling over the OCI Distribution API with oci-client: manifests (index → linux/amd64),
//! the config, then the layers, each blob verified before it enters the store.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::store::{self, Document};
use super::{blocking, io_err, reference, Image, ImageError, ImageStore};

const ACCEPT: &[&str] = &[
    store::OCI_MANIFEST,
    store::OCI_INDEX,
    store::DOCKER_MANIFEST,
    store::DOCKER_LIST,
];

/// Pull `name` (normalised) into `store` and return the image.
pub(super) async fn pull(store: &ImageStore, name: &str) -> Result<Image, ImageError> {
    let r = reference::parse(name)?;
    let opts = store.options();
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(opts.insecure.clone()),
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(15)),
        ..Default::default()
    });
    let auth = opts
        .auth
        .iter()
        .find(|(host, _, _)| host == r.registry() || host == r.resolve_registry())
        .map(|(_, user, pass)| RegistryAuth::Basic(user.clone(), pass.clone()))
        .unwrap_or(RegistryAuth::Anonymous);
    let words = |e| registry_error(name, e);

    let (mut body, _) = client
        .pull_manifest_raw(&r, &auth, ACCEPT)
        .await
        .map_err(words)?;
    let mut digest = store::sha256_digest(&body);
    if let Some(want) = r.digest() {
        check_digest(want, &digest)?;
    }
    let manifest = match store::parse_document(&body)? {
        Document::Image(m) => m,
        Document::Index(index) => {
            let entry = store::pick_platform(&index)?;
            let want = entry.digest.clone();
            let (b, _) = client
                .pull_manifest_raw(&r.clone_with_digest(want.clone()), &auth, ACCEPT)
                .await
                .map_err(words)?;
            digest = store::sha256_digest(&b);
            check_digest(&want, &digest)?;
            body = b;
            match store::parse_document(&body)? {
                Document::Image(m) => m,
                Document::Index(_) => {
                    return Err(ImageError::Format(format!(
                        "{name}: nested image index is not supported"
                    )))
                }
            }
        }
    };

    let root = store.root().to_path_buf();
    for blob in std::iter::once(&manifest.config).chain(manifest.layers.iter()) {
        if store::has_blob(&root, &blob.digest) {
            continue;
        }
        fetch_blob(&client, &r, &root, &blob.digest).await?;
    }
    let name = name.to_string();
    blocking(move || {
        store::put_blob(&root, Some(&digest), &body)?;
        store::materialise(&root, &name, &digest)
    })
    .await
}

fn check_digest(want: &str, got: &str) -> Result<(), ImageError> {
    if want != got {
        return Err(ImageError::Format(format!(
            "manifest digest mismatch: asked for {want}, registry sent {got}"
        )));
    }
    Ok(())
}

async fn fetch_blob(
    client: &Client,
    r: &Reference,
    root: &std::path::Path,
    digest: &str,
) -> Result<(), ImageError> {
    let path = store::blob_path(root, digest)?;
    let tmp = store::temp_name(&path);
    let file = tokio::fs::File::create(&tmp)
        .await
        .map_err(io_err(format!("creating {}", tmp.display())))?;
    let pulled = client
        .pull_blob(r, digest, file)
        .await
        .map_err(|e| registry_error(&r.whole(), e));
    if let Err(e) = pulled {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    let root = root.to_path_buf();
    let digest = digest.to_string();
    blocking(move || store::adopt_blob(&root, &digest, &tmp)).await
}

/// The registry's own words, as Docker shows them: `manifest unknown`, `unauthorized: …`,
/// `… Connection refused`.
fn registry_error(name: &str, e: OciDistributionError) -> ImageError {
    let words = match &e {
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .map(|e| {
                let code = serde_json::to_value(&e.code)
                    .ok()
                    .and_then(|v| v.as_str().map(|s| s.to_ascii_lowercase().replace('_', " ")))
                    .unwrap_or_default();
                if e.message.is_empty() {
                    code
                } else {
                    e.message.clone()
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
        OciDistributionError::UnauthorizedError { .. } => {
            "unauthorized: authentication required".to_string()
        }
        OciDistributionError::ServerError { code, message, .. } => {
            format!("HTTP {code}: {}", message.trim())
        }
        other => chain(other),
    };
    ImageError::Registry(format!("pulling {name}: {words}"))
}

/// An error and its sources, joined as Go joins wrapped errors.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}
