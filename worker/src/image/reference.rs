//! Docker's reference normalisation: `busybox` → `docker.io/library/busybox:latest`,
//! `host:5000/web:v2` kept as written, `name@sha256:…` kept with its digest.

use super::ImageError;

/// The normalised form of `reference`, the key of the node's reference map.
pub fn normalise(reference: &str) -> Result<String, ImageError> {
    parse(reference).map(|r| r.whole())
}

pub(super) fn parse(reference: &str) -> Result<oci_client::Reference, ImageError> {
    let trimmed = reference.trim();
    if trimmed.is_empty() {
        return Err(ImageError::Reference("empty image reference".into()));
    }
    trimmed
        .parse::<oci_client::Reference>()
        .map_err(|e| ImageError::Reference(format!("{reference:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_names_get_registry_library_and_latest() {
        assert_eq!(
            normalise("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalise("nginx:1.27").unwrap(),
            "docker.io/library/nginx:1.27"
        );
        assert_eq!(
            normalise("someone/app").unwrap(),
            "docker.io/someone/app:latest"
        );
        assert_eq!(
            normalise("index.docker.io/library/busybox:1").unwrap(),
            "docker.io/library/busybox:1"
        );
    }

    #[test]
    fn registry_hosts_are_kept() {
        assert_eq!(normalise("host:5000/web:v2").unwrap(), "host:5000/web:v2");
        assert_eq!(
            normalise("127.0.0.1:5000/a/b").unwrap(),
            "127.0.0.1:5000/a/b:latest"
        );
        assert_eq!(normalise("localhost/web").unwrap(), "localhost/web:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalise(&format!("host:5000/web@{d}")).unwrap(),
            format!("host:5000/web@{d}")
        );
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in ["", "Upper/Case", "web:", "a@sha256:12"] {
            assert!(
                matches!(normalise(bad), Err(ImageError::Reference(_))),
                "{bad:?} accepted"
            );
        }
    }
}
