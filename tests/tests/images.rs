//! The image store against a real registry (Debian's docker-registry on loopback), fed by
//! skopeo from an OCI layout built here.

use std::time::Duration;

use anyhow::Result;
use harness::images::{self, Registry, TestImage};
use worker::image::{ImageError, ImageStore, RegistryOptions};

fn provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_an_insecure_registry_and_loads_tarballs() -> Result<()> {
    provider();
    let work = tempfile::tempdir()?;
    let layout = work.path().join("layout");
    images::build_busybox_image(&layout, "web:v1", TestImage::web())?;
    let addr = format!("127.0.0.1:{}", images::free_port()?);
    let registry = Registry::start(&addr, None, None)?;
    images::push(&layout, &addr, "web:v1")?;
    images::push(&layout, &addr, "web:v2")?;

    let store = ImageStore::open(
        &work.path().join("images"),
        RegistryOptions {
            insecure: vec![addr.clone()],
            auth: Vec::new(),
        },
    )?;
    // Concurrent ensures of one image pull it once and agree.
    let r1 = format!("{addr}/web:v1");
    let (a, b) = tokio::join!(store.ensure(&r1), store.ensure(&r1));
    let (a, b) = (a?, b?);
    assert_eq!(a, b);
    assert_eq!(a.reference, r1);
    assert_eq!(a.layers.len(), 1);
    let busybox = a.layers[0].join("bin/busybox");
    assert!(busybox.is_file(), "{} missing", busybox.display());
    assert_eq!(
        std::fs::read_link(a.layers[0].join("bin/httpd"))?,
        std::path::Path::new("busybox")
    );
    assert_eq!(a.config.cmd, TestImage::web().cmd);
    assert_eq!(a.config.env, vec!["PATH=/bin"]);

    let v2 = store.pull(&format!("{addr}/web:v2")).await?;
    assert_eq!(v2.id, a.id, "same config under both tags");
    assert_eq!(v2.layers, a.layers, "layer unpacked once");
    let list = store.list()?;
    assert_eq!(list.len(), 2, "{list:?}");

    // A tag the registry lacks: its own words reach the user.
    let err = store.ensure(&format!("{addr}/web:nope")).await.unwrap_err();
    assert!(matches!(err, ImageError::Registry(_)), "{err:?}");
    assert!(err.to_string().contains("manifest unknown"), "{err}");

    // Nothing listens there: the connection error says so.
    let dead = format!("127.0.0.1:{}", images::free_port()?);
    let store2 = ImageStore::open(
        &work.path().join("images2"),
        RegistryOptions {
            insecure: vec![dead.clone()],
            auth: Vec::new(),
        },
    )?;
    let err = store2.ensure(&format!("{dead}/web:v1")).await.unwrap_err();
    assert!(
        err.to_string()
            .to_lowercase()
            .contains("connection refused"),
        "{err}"
    );
    drop(registry);

    // Load an OCI-layout tarball with the healthcheck image; no registry involved.
    let hc_layout = work.path().join("hc");
    images::build_busybox_image(&hc_layout, "shoal-test/hc:v1", TestImage::healthcheck())?;
    let tarball = work.path().join("hc.tar");
    images::oci_archive(&hc_layout, &tarball)?;
    let loaded = store.load(&tarball)?;
    assert_eq!(loaded, vec!["docker.io/shoal-test/hc:v1"]);
    let hc = store.ensure("shoal-test/hc:v1").await?;
    let check = hc.config.healthcheck.expect("healthcheck in config");
    assert_eq!(check.test, vec!["CMD-SHELL", "test -e /tmp/healthy"]);
    assert_eq!(
        (check.interval_ms, check.timeout_ms, check.retries),
        (500, 1000, 2)
    );
    assert!(hc.layers[0].join("etc/passwd").is_file());
    assert_eq!(store.list()?.len(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_registry_needs_the_credentials() -> Result<()> {
    provider();
    if let Err(e) = images::htpasswd_line("u", "p") {
        eprintln!("skipping: {e}");
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let layout = work.path().join("layout");
    images::build_busybox_image(&layout, "sleep:v1", TestImage::sleep())?;
    let addr = format!("127.0.0.1:{}", images::free_port()?);
    let _registry = Registry::start(&addr, None, Some(("shoal", "s3cret")))?;
    images::push_as(&layout, &addr, "sleep:v1", Some(("shoal", "s3cret")))?;
    let reference = format!("{addr}/sleep:v1");

    let anonymous = ImageStore::open(
        &work.path().join("anon"),
        RegistryOptions {
            insecure: vec![addr.clone()],
            auth: Vec::new(),
        },
    )?;
    let err = anonymous.ensure(&reference).await.unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");

    let authed = ImageStore::open(
        &work.path().join("authed"),
        RegistryOptions {
            insecure: vec![addr.clone()],
            auth: vec![(addr.clone(), "shoal".into(), "s3cret".into())],
        },
    )?;
    let image = tokio::time::timeout(Duration::from_secs(60), authed.ensure(&reference)).await??;
    assert_eq!(image.config.cmd, vec!["sleep", "100000"]);
    Ok(())
}
