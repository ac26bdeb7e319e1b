//! Test images and a local registry.
//!
//! [`build_busybox_image`] writes an OCI image layout whose single gzip layer is the host's
//! static busybox with its applet links, `/etc/passwd` and `/etc/group`; [`Registry`] runs
//! Debian's `docker-registry` on a loopback (or lab namespace) address and stops it on drop;
//! [`push`] copies a layout image there with skopeo.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::backend::{self, Program};

/// Applets linked to `/bin/busybox` in the test images.
pub const APPLETS: &[&str] = &[
    "sh", "sleep", "cat", "echo", "hostname", "httpd", "nc", "ls", "id", "env", "mkdir", "true",
    "false", "test", "grep", "head", "dd", "touch", "rm", "chmod", "printf", "nslookup",
];

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The images a lab's registry holds (`shoal lab up --registry`): `web:v1` and `web:v2`
/// serve `<hostname> v1|v2` on port 80; `sleep:1` sleeps; `health:1` sleeps with a
/// HEALTHCHECK that passes while `/tmp/healthy` exists; `fast:1` serves `<hostname>\n` on
/// port 80 with [`Program::Http`]; `udpecho:1` answers datagrams on UDP port 9000 with
/// `<hostname> <datagram>` ([`Program::UdpEcho`]).
pub fn lab_images() -> Vec<(&'static str, TestImage)> {
    vec![
        ("web:v1", TestImage::web_version("v1")),
        ("web:v2", TestImage::web_version("v2")),
        ("sleep:1", TestImage::sleep()),
        ("health:1", TestImage::healthcheck()),
        ("fast:1", TestImage::fast_http()),
        ("udpecho:1", TestImage::udp_echo()),
    ]
}

/// A file added to a test image's layer (parent directories are created as needed).
#[derive(Clone, Debug)]
pub struct ExtraFile {
    /// Path in the image, e.g. `/bin/shoal-http`.
    pub path: String,
    pub mode: u32,
    pub content: FileContent,
}

/// What an [`ExtraFile`] holds.
#[derive(Clone, Debug)]
pub enum FileContent {
    Bytes(Vec<u8>),
    /// A benchmark backend, compiled (or taken from the cache) when the image is built.
    Program(Program),
}

impl ExtraFile {
    /// `program`'s static binary as `/bin/<name>`, mode 0755.
    pub fn program(program: Program) -> ExtraFile {
        ExtraFile {
            path: format!("/bin/{}", program.name()),
            mode: 0o755,
            content: FileContent::Program(program),
        }
    }

    fn bytes(&self) -> Result<Vec<u8>> {
        match &self.content {
            FileContent::Bytes(b) => Ok(b.clone()),
            FileContent::Program(p) => backend::binary(*p),
        }
    }
}

/// What goes into a test image's config.
#[derive(Clone, Debug, Default)]
pub struct TestImage {
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    /// Added to `PATH=/bin`.
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    pub stop_signal: String,
    /// HEALTHCHECK: (test, interval, timeout, retries, start period); durations in ms.
    pub healthcheck: Option<(Vec<String>, u64, u64, u64, u64)>,
    /// Files added to the busybox layer.
    pub extra_files: Vec<ExtraFile>,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl TestImage {
    /// Serves its hostname on port 80: `GET /` answers the container's hostname.
    pub fn web() -> TestImage {
        TestImage {
            cmd: strings(&[
                "sh",
                "-c",
                "hostname > /www/index.html; exec httpd -f -p 80 -h /www",
            ]),
            ..Default::default()
        }
    }

    /// Serves `<hostname> <version>` on port 80, logs `serving` once it starts and ends at once
    /// on SIGTERM.
    pub fn web_version(version: &str) -> TestImage {
        TestImage {
            env: vec![format!("VERSION={version}")],
            cmd: strings(&[
                "sh",
                "-c",
                // httpd as pid 1 would ignore SIGTERM; the shell ends on it at once instead.
                // /cgi-bin/ip answers the client's address as the container sees it.
                "echo \"$(hostname) $VERSION\" > /www/index.html; mkdir -p /www/cgi-bin; printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip; chmod 755 /www/cgi-bin/ip; echo serving; httpd -f -p 80 -h /www & trap 'exit 0' TERM; wait",
            ]),
            ..Default::default()
        }
    }

    /// [`Program::Http`] on port 80, one worker process per CPU.
    pub fn fast_http() -> TestImage {
        TestImage {
            cmd: vec![format!("/bin/{}", Program::Http.name()), "80".into()],
            extra_files: vec![ExtraFile::program(Program::Http)],
            ..Default::default()
        }
    }

    /// [`Program::UdpEcho`] on UDP port 9000.
    pub fn udp_echo() -> TestImage {
        TestImage {
            cmd: vec![format!("/bin/{}", Program::UdpEcho.name()), "9000".into()],
            extra_files: vec![ExtraFile::program(Program::UdpEcho)],
            ..Default::default()
        }
    }

    /// Sleeps (almost) forever.
    pub fn sleep() -> TestImage {
        TestImage {
            cmd: strings(&["sleep", "100000"]),
            ..Default::default()
        }
    }

    /// Sleeps, healthy once `/tmp/healthy` exists (checked every 500 ms, 1 s timeout,
    /// 2 retries).
    pub fn healthcheck() -> TestImage {
        TestImage {
            cmd: strings(&["sleep", "100000"]),
            healthcheck: Some((
                strings(&["CMD-SHELL", "test -e /tmp/healthy"]),
                500,
                1000,
                2,
                0,
            )),
            ..Default::default()
        }
    }
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// The uncompressed layer: busybox, its applets, passwd/group, /tmp, /www, and `extra`.
fn busybox_layer(extra: &[ExtraFile]) -> Result<Vec<u8>> {
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;
    let mut b = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin/", 0o755),
        ("etc/", 0o755),
        ("tmp/", 0o1777),
        ("www/", 0o755),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, dir, &[][..])?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", &busybox[..])?;
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    let files: [(&str, &str); 2] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ];
    for (path, text) in files {
        let mut h = header(tar::EntryType::Regular, 0o644, text.len() as u64);
        b.append_data(&mut h, path, text.as_bytes())?;
    }
    let mut dirs: std::collections::BTreeSet<String> = ["bin", "etc", "tmp", "www"]
        .into_iter()
        .map(String::from)
        .collect();
    for file in extra {
        let rel = file.path.trim_start_matches('/');
        if rel.is_empty() || rel.ends_with('/') || rel.split('/').any(|c| c == "..") {
            bail!(
                "extra file path {:?}: give a file path like /bin/name",
                file.path
            );
        }
        let parts: Vec<&str> = rel.split('/').collect();
        for i in 1..parts.len() {
            let dir = parts[..i].join("/");
            if dirs.insert(dir.clone()) {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                b.append_data(&mut h, format!("{dir}/"), &[][..])?;
            }
        }
        let bytes = file
            .bytes()
            .with_context(|| format!("extra file {}", file.path))?;
        let mut h = header(tar::EntryType::Regular, file.mode, bytes.len() as u64);
        b.append_data(&mut h, rel, &bytes[..])?;
    }
    Ok(b.into_inner()?)
}

fn write_blob(dir: &Path, bytes: &[u8]) -> Result<String> {
    let digest = sha256(bytes);
    let path = dir.join("blobs/sha256").join(&digest[7..]);
    std::fs::create_dir_all(path.parent().expect("parent"))?;
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(digest)
}

/// Write (or add to) an OCI image layout at `dir`: one image named `name_tag` (the
/// `org.opencontainers.image.ref.name` annotation, replacing an entry of the same name).
pub fn build_busybox_image(dir: &Path, name_tag: &str, spec: TestImage) -> Result<()> {
    let layer = busybox_layer(&spec.extra_files)?;
    let diff_id = sha256(&layer);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer)?;
    let layer_gz = gz.finish()?;

    let mut env = vec!["PATH=/bin".to_string()];
    env.extend(spec.env.iter().cloned());
    let mut config = json!({
        "Env": env,
        "Cmd": spec.cmd,
        "WorkingDir": spec.workdir,
        "User": spec.user,
    });
    if !spec.entrypoint.is_empty() {
        config["Entrypoint"] = json!(spec.entrypoint);
    }
    if !spec.stop_signal.is_empty() {
        config["StopSignal"] = json!(spec.stop_signal);
    }
    if let Some((test, interval, timeout, retries, start)) = &spec.healthcheck {
        let ns = |ms: &u64| ms * 1_000_000;
        config["Healthcheck"] = json!({
            "Test": test, "Interval": ns(interval), "Timeout": ns(timeout),
            "Retries": retries, "StartPeriod": ns(start),
        });
    }
    let config = json!({
        "created": "2025-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    .to_string();

    std::fs::create_dir_all(dir)?;
    let layer_digest = write_blob(dir, &layer_gz)?;
    let config_digest = write_blob(dir, config.as_bytes())?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer_gz.len()}],
    })
    .to_string();
    let manifest_digest = write_blob(dir, manifest.as_bytes())?;

    let index_path = dir.join("index.json");
    let mut entries: Vec<Value> = match std::fs::read(&index_path) {
        Ok(b) => serde_json::from_slice::<Value>(&b)?["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    entries.retain(|e| e["annotations"][REF_NAME] != name_tag);
    entries.push(json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest.len(),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {REF_NAME: name_tag},
    }));
    std::fs::write(
        &index_path,
        json!({"schemaVersion": 2, "manifests": entries}).to_string(),
    )?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}

/// Tar an OCI layout directory into `out` (what `skopeo copy … oci-archive:` writes).
pub fn oci_archive(dir: &Path, out: &Path) -> Result<()> {
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut b = tar::Builder::new(file);
    b.append_dir_all(".", dir)?;
    b.into_inner()?.sync_all()?;
    Ok(())
}

/// The names in a layout's index.json.
fn layout_names(dir: &Path) -> Result<Vec<String>> {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    Ok(index["manifests"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["annotations"][REF_NAME].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// `skopeo copy` the layout image named `repo_tag` (or the layout's only image) to
/// `registry_addr/repo_tag` over plain HTTP.
pub fn push(oci_dir: &Path, registry_addr: &str, repo_tag: &str) -> Result<()> {
    push_as(oci_dir, registry_addr, repo_tag, None)
}

/// [`push`] with basic credentials.
pub fn push_as(
    oci_dir: &Path,
    registry_addr: &str,
    repo_tag: &str,
    creds: Option<(&str, &str)>,
) -> Result<()> {
    push_from(None, oci_dir, registry_addr, repo_tag, creds)
}

/// As [`push_as`], with skopeo run inside network namespace `netns` (a registry on a lab
/// address is reachable only from there).
pub fn push_from(
    netns: Option<&str>,
    oci_dir: &Path,
    registry_addr: &str,
    repo_tag: &str,
    creds: Option<(&str, &str)>,
) -> Result<()> {
    let names = layout_names(oci_dir)?;
    let src = if names.iter().any(|n| n == repo_tag) {
        format!("oci:{}:{repo_tag}", oci_dir.display())
    } else if names.len() == 1 {
        format!("oci:{}", oci_dir.display())
    } else {
        bail!(
            "{} has no image {repo_tag} (has {names:?})",
            oci_dir.display()
        );
    };
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = crate::netns_command(ns);
            c.arg("skopeo");
            c
        }
        None => Command::new("skopeo"),
    };
    cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
    if let Some((user, pass)) = creds {
        cmd.arg(format!("--dest-creds={user}:{pass}"));
    }
    let out = cmd
        .arg(&src)
        .arg(format!("docker://{registry_addr}/{repo_tag}"))
        .output()
        .context("running skopeo")?;
    if !out.status.success() {
        bail!(
            "skopeo copy {src} → {registry_addr}/{repo_tag}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A bcrypt htpasswd line (Debian's registry accepts only bcrypt), made with the system's
/// crypt(3) through python3.
pub fn htpasswd_line(user: &str, password: &str) -> Result<String> {
    let out = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
            password,
        ])
        .output()
        .context("python3 for bcrypt")?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !hash.starts_with("$2") {
        bail!(
            "no bcrypt available: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(format!("{user}:{hash}"))
}

/// Write a `docker-registry` configuration for `addr` with its storage in `dir/data` (and an
/// htpasswd file for `auth`); returns the configuration's path.
pub fn registry_config(dir: &Path, addr: &str, auth: Option<(&str, &str)>) -> Result<PathBuf> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let mut config = format!(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
        data.display()
    );
    if let Some((user, password)) = auth {
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, htpasswd_line(user, password)? + "\n")?;
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
            htpasswd.display()
        ));
    }
    let config_path = dir.join("config.yml");
    std::fs::write(&config_path, config)?;
    Ok(config_path)
}

/// `docker-registry serve CONFIG` (in `netns` if given), output appended to `log`.
pub fn registry_command(netns: Option<&str>, config: &Path, log: &Path) -> Result<Command> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = crate::netns_command(ns);
            c.arg("/usr/bin/docker-registry");
            c
        }
        None => Command::new("/usr/bin/docker-registry"),
    };
    cmd.arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    Ok(cmd)
}

/// Poll `GET /v2/` on `addr` (from inside `netns` if given) until the registry answers, it
/// exits, or 20 s pass.
pub fn wait_registry(addr: &str, netns: Option<&str>, child: &mut Child, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probe = {
            let addr = addr.to_string();
            match netns {
                Some(ns) => crate::in_netns(ns, move || http_get(&addr, "/v2/")).and_then(|r| r),
                None => http_get(&addr, "/v2/"),
            }
        };
        match probe {
            Ok((code, _)) if code == 200 || code == 401 => return Ok(()),
            other => {
                let log = || std::fs::read_to_string(log).unwrap_or_default();
                if let Ok(Some(status)) = child.try_wait() {
                    bail!("docker-registry exited ({status}): {}", log());
                }
                if Instant::now() >= deadline {
                    bail!(
                        "docker-registry on {addr} not answering /v2/ after 20 s (last: {other:?}): {}",
                        log()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A `docker-registry serve` process with its storage in a temporary directory; killed (by
/// pid) when dropped.
pub struct Registry {
    pub addr: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Start on `addr` (`127.0.0.1:PORT`), inside network namespace `netns` if given, with
    /// basic auth for `auth` = (user, password) if given; returns once `GET /v2/` answers.
    pub fn start(addr: &str, netns: Option<&str>, auth: Option<(&str, &str)>) -> Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-registry-")
            .tempdir()?;
        let config_path = registry_config(dir.path(), addr, auth)?;
        let log_path = dir.path().join("registry.log");
        let child = registry_command(netns, &config_path, &log_path)?
            .spawn()
            .context("starting /usr/bin/docker-registry")?;
        let mut registry = Registry {
            addr: addr.to_string(),
            child,
            dir,
        };
        wait_registry(addr, netns, &mut registry.child, &log_path)?;
        Ok(registry)
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // `nsenter` execs the registry, so this pid is the registry itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free right now.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `GET path` over HTTP/1.1 with a fresh connection: (status, body).
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let sock: std::net::SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_layout_has_the_image_and_its_names() {
        let dir = tempfile::tempdir().unwrap();
        build_busybox_image(dir.path(), "web:v1", TestImage::web()).unwrap();
        build_busybox_image(dir.path(), "hc:v1", TestImage::healthcheck()).unwrap();
        build_busybox_image(dir.path(), "web:v1", TestImage::web()).unwrap();
        assert_eq!(layout_names(dir.path()).unwrap(), vec!["hc:v1", "web:v1"]);
        let blobs = std::fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count();
        // One shared layer, two configs, two manifests.
        assert_eq!(blobs, 5);
    }

    #[test]
    fn extra_files_land_in_the_layer_with_their_directories() {
        let extra = vec![
            ExtraFile {
                path: "/opt/x/data.txt".into(),
                mode: 0o600,
                content: FileContent::Bytes(b"hi".to_vec()),
            },
            ExtraFile::program(Program::UdpEcho),
        ];
        let layer = busybox_layer(&extra).unwrap();
        let mut archive = tar::Archive::new(&layer[..]);
        let mut seen = std::collections::BTreeMap::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mode = e.header().mode().unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            assert!(seen.insert(path, (mode, data.len())).is_none(), "duplicate");
        }
        assert!(seen.contains_key("opt/"));
        assert!(seen.contains_key("opt/x/"));
        assert_eq!(seen["opt/x/data.txt"], (0o600, 2));
        let (mode, len) = seen["bin/shoal-udpecho"];
        assert_eq!(mode, 0o755);
        assert!(len > 10_000, "a static binary, got {len} bytes");
        let bad = ExtraFile {
            path: "/../etc/x".into(),
            mode: 0o644,
            content: FileContent::Bytes(vec![]),
        };
        assert!(busybox_layer(&[bad]).is_err());
    }
}
