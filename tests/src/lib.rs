//! Test harness: labs that always tear down, polling with deadlines, and calls made from
//! inside a lab host's network namespace.
//!
//! Every lab gets a prefix unique to the test process (nextest runs each test in its own
//! process), so parallel tests and leftovers of a crashed run never collide.

pub use deploy::images;
pub use deploy::in_netns;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
pub use deploy::{Lab, LabConfig};
use serde_json::Value;

/// The `shoal` binary under test: `SHOAL_BIN`, or the one cargo built next to this test.
pub fn shoal_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SHOAL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/shoal
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("shoal"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bin shoal` before the tests (the README's test command does)",
        bin.display()
    );
    bin
}

/// The report a `shoal … --format json` run printed: its last line that is JSON.
pub fn json_report(stdout: &str) -> Option<Value> {
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

/// Runs `shoal bench ARGS… --format json --prefix PREFIX` to its end and returns its report.
/// The run removes its lab itself; when it fails, the lab is removed here as well.
pub fn bench_report(prefix: &str, args: &[&str]) -> Result<Value> {
    let bin = shoal_bin();
    let out = std::process::Command::new(&bin)
        .arg("bench")
        .args(args)
        .args(["--format", "json", "--prefix", prefix])
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("run shoal bench {}", args.join(" ")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        let _ = std::process::Command::new(&bin)
            .args(["lab", "down", "--prefix", prefix])
            .status();
        bail!("shoal bench {} exited {}", args.join(" "), out.status);
    }
    json_report(&stdout).with_context(|| format!("no JSON report; stdout: {stdout}"))
}

/// A lab prefix unique to this test process: `zt`, `tag` (2 chars) and the pid in base 36.
/// `deploy/test.sh` removes leftover `zt*` labs of a run whose tests were killed.
pub fn unique_prefix(tag: &str) -> String {
    let tag = format!("zt{tag}");
    let mut n = std::process::id();
    let mut s = String::new();
    while n > 0 {
        s.insert(0, std::char::from_digit(n % 36, 36).expect("digit"));
        n /= 36;
    }
    format!("{tag}{s}").chars().take(8).collect()
}

/// A running lab that is torn down when dropped, also when the test panics.
pub struct LabGuard {
    pub lab: Lab,
}

impl LabGuard {
    pub fn up(tag: &str, managers: usize, workers: usize, heartbeat: Duration) -> Result<LabGuard> {
        Self::up_with(
            tag,
            managers,
            workers,
            heartbeat,
            &["--runtime".into(), "fake".into()],
            false,
        )
    }

    /// A lab whose daemons run with `daemon_args` (e.g. a real runtime), with the lab
    /// registry ([`deploy::LAB_REGISTRY`]) if `registry`.
    pub fn up_with(
        tag: &str,
        managers: usize,
        workers: usize,
        heartbeat: Duration,
        daemon_args: &[String],
        registry: bool,
    ) -> Result<LabGuard> {
        let prefix = unique_prefix(tag);
        let mut cfg = LabConfig::new(&prefix, managers, workers, shoal_bin());
        cfg.heartbeat_ms = Some(heartbeat.as_millis() as u64);
        cfg.ready_timeout = Duration::from_secs(90);
        cfg.daemon_args = daemon_args.to_vec();
        cfg.registry = registry;
        let lab = Lab::up(&cfg).with_context(|| format!("lab {prefix} up"))?;
        Ok(LabGuard { lab })
    }

    /// `shoal <args>` on `host`; Ok(stdout) or Err(stderr).
    pub fn shoal(&self, host: &str, args: &[&str]) -> Result<String> {
        self.lab.shoal(host, args).map_err(|e| anyhow!("{e}"))
    }

    /// `node ls --format json` as seen from `host`, keyed by hostname.
    pub fn nodes(&self, host: &str) -> Result<Vec<Value>> {
        let out = self.shoal(host, &["node", "ls", "--format", "json"])?;
        out.lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad JSON line {l:?}")))
            .collect()
    }

    /// The node ls entry for `hostname`, as seen from `from`.
    pub fn node(&self, from: &str, hostname: &str) -> Result<Value> {
        self.nodes(from)?
            .into_iter()
            .find(|n| n["Hostname"] == hostname)
            .ok_or_else(|| anyhow!("no node {hostname} in node ls"))
    }

    /// Hostname of the current leader, as seen from `from`.
    pub fn leader(&self, from: &str) -> Result<String> {
        let nodes = self.nodes(from)?;
        let leaders: Vec<&Value> = nodes
            .iter()
            .filter(|n| n["ManagerStatus"] == "Leader")
            .collect();
        match leaders.as_slice() {
            [one] => Ok(one["Hostname"].as_str().unwrap_or_default().to_string()),
            _ => bail!("expected exactly one leader, got {}", leaders.len()),
        }
    }

    /// A lab host's underlay IP address.
    pub fn addr(&self, host: &str) -> Result<String> {
        Ok(self.lab.host(host)?.addr.to_string())
    }

    /// The current join token for `role` (worker or manager), as seen from `from`.
    pub fn join_token(&self, from: &str, role: &str) -> Result<String> {
        Ok(self
            .shoal(from, &["swarm", "join-token", "-q", role])?
            .trim()
            .to_string())
    }

    pub fn host_data_dir(&self, host: &str) -> Result<PathBuf> {
        Ok(self
            .lab
            .host(host)
            .map_err(|e| anyhow!("{e}"))?
            .data_dir
            .clone())
    }

    pub fn netns(&self, host: &str) -> Result<String> {
        Ok(self
            .lab
            .host(host)
            .map_err(|e| anyhow!("{e}"))?
            .netns
            .clone())
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        // Keep the daemons' logs for a post-mortem (target/lab-logs/<prefix>/<host>.log).
        let keep = shoal_bin()
            .parent()
            .map(|d| d.join("../lab-logs").join(&self.lab.prefix));
        if let Some(dir) = keep {
            if std::fs::create_dir_all(&dir).is_ok() {
                for h in &self.lab.hosts {
                    let _ = std::fs::copy(&h.log, dir.join(format!("{}.log", h.name)));
                }
            }
        }
        if let Err(e) = Lab::down(&self.lab.prefix) {
            eprintln!("lab {} teardown failed: {e}", self.lab.prefix);
        }
    }
}

/// Poll `f` until it returns Ok, or fail with its last error after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                bail!("{what}: not reached within {timeout:?}; last: {e:#}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The identity files a node keeps in its data dir.
pub fn node_identity(data_dir: &std::path::Path) -> Result<proto::transport::Identity> {
    let read = |f: &str| {
        std::fs::read_to_string(data_dir.join("certs").join(f)).with_context(|| f.to_string())
    };
    proto::transport::Identity::new(&read("node.crt")?, &read("node.key")?, &read("ca.crt")?)
        .map_err(|e| anyhow!("{e}"))
}

/// The status code a gRPC call made with `identity` to the manager at `addr` (from inside
/// `ns`) ends with: `Ok` or the error code. Calls a control read and a raft vote.
pub fn call_as(
    ns: &str,
    addr: &str,
    identity: proto::transport::Identity,
) -> Result<(tonic::Code, tonic::Code)> {
    let addr = addr.to_string();
    in_netns(ns, move || {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let cfg = proto::transport::client_config(&identity.ca_pem, Some(&identity))?;
            let ch = proto::transport::tls_channel(&addr, cfg)?;
            let code = |r: std::result::Result<(), tonic::Status>| match r {
                Ok(()) => tonic::Code::Ok,
                Err(s) => s.code(),
            };
            let control = proto::pb::control_client::ControlClient::new(ch.clone())
                .list_nodes(proto::pb::Empty {})
                .await
                .map(|_| ());
            let raft = proto::pb::raft_client::RaftClient::new(ch)
                .vote(proto::pb::RaftPayload {
                    data: b"{}".to_vec(),
                })
                .await
                .map(|_| ());
            Ok::<_, anyhow::Error>((code(control), code(raft)))
        })
    })?
}

/// One `shoal daemon` in this machine's own namespace (fake runtime), with its data dir,
/// socket and log file in a temporary directory; killed, by its pid, when dropped. For tests
/// of the binary as a process, and of a one-node swarm on loopback, without a lab.
pub struct SoloDaemon {
    child: std::process::Child,
    pub dir: tempfile::TempDir,
}

impl SoloDaemon {
    /// Started with `extra` daemon flags; returns once its socket answers.
    pub fn start(extra: &[&str]) -> Result<SoloDaemon> {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir()?;
        let log = std::fs::File::create(dir.path().join("daemon.log"))?;
        let child = Command::new(shoal_bin())
            .arg("daemon")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--socket")
            .arg(dir.path().join("shoal.sock"))
            .args(["--runtime", "fake"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting shoal daemon")?;
        let d = SoloDaemon { child, dir };
        eventually(
            "the daemon's socket answers",
            Duration::from_secs(30),
            || {
                let out = d.cli().arg("info").output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok(())
            },
        )?;
        Ok(d)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("shoal.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    /// `shoal -H unix://<its socket>`, arguments to add.
    pub fn cli(&self) -> std::process::Command {
        let mut c = std::process::Command::new(shoal_bin());
        c.arg("-H")
            .arg(format!("unix://{}", self.socket().display()));
        c
    }

    /// `shoal <args>`: Ok(stdout) or Err(stderr).
    pub fn shoal(&self, args: &[&str]) -> Result<String> {
        let out = self.cli().args(args).output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim())
        }
    }
}

impl Drop for SoloDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_short_and_valid() {
        let p = unique_prefix("ab");
        assert!(p.len() <= 8 && p.starts_with("ztab"));
        assert!(p
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    }
}
