//! Local multi-host test clusters ("labs") for shoal.
//!
//! A lab runs several shoal daemons on one Linux machine, each in its own
//! network namespace wired to a private bridge, so that a whole swarm
//! (managers, workers, overlay traffic, failures) can be exercised without
//! real machines. `shoal lab up/down/exec` and the integration test harness
//! are built on this crate. It needs root and iproute2, and works by shelling
//! out to `ip` and to the `shoal` binary itself.

pub mod backend;
pub mod images;
mod lab;

pub use lab::{netns_command, Lab, LabHost};

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Directory under which every lab keeps its state (`<LAB_ROOT>/<prefix>/`).
pub const LAB_ROOT: &str = "/run/shoal-lab";

/// Everything that can go wrong while building, driving or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("invalid lab prefix {prefix:?}: must be 1-8 characters of [a-z0-9]")]
    InvalidPrefix { prefix: String },
    #[error("invalid number of {what}: {count} (allowed {min}..={max})")]
    InvalidCount {
        what: &'static str,
        count: usize,
        min: usize,
        max: usize,
    },
    #[error("shoal binary {} does not exist", path.display())]
    MissingBinary { path: PathBuf },
    #[error("could not run `{cmd}`: {source}")]
    Spawn { cmd: String, source: io::Error },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    CommandFailed {
        cmd: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("lab state {}: {source}", path.display())]
    State {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("lab registry: {0}")]
    Registry(String),
    #[error("lab {prefix:?} has no host {host:?}")]
    UnknownHost { prefix: String, host: String },
    #[error("lab {prefix:?} has no address left for another host")]
    AddressesExhausted { prefix: String },
    #[error(
        "daemon on {host} exited ({status}) before serving its socket; last log line: {last_log}"
    )]
    DaemonExited {
        host: String,
        status: ExitStatus,
        last_log: String,
    },
    #[error("daemon on {host} did not accept connections on {} within {timeout:?}; see {}", socket.display(), log.display())]
    DaemonNotReady {
        host: String,
        socket: PathBuf,
        log: PathBuf,
        timeout: Duration,
    },
    #[error("daemon on {host} is already running (pid {pid})")]
    DaemonRunning { host: String, pid: u32 },
    #[error("pid {pid} ({what}) still exists {timeout:?} after SIGKILL")]
    KillTimeout {
        pid: u32,
        what: String,
        timeout: Duration,
    },
    #[error("cluster not ready within {timeout:?}: {ready}/{expected} nodes Ready; last `node ls`: {last}")]
    ClusterNotReady {
        expected: usize,
        ready: usize,
        timeout: Duration,
        last: String,
    },
    #[error("cannot partition {host}: {reason}")]
    Partition { host: String, reason: String },
    #[error("no command given to run on {host}")]
    EmptyCommand { host: String },
}

/// Shape of a lab to bring up.
#[derive(Clone, Debug)]
pub struct LabConfig {
    pub prefix: String,
    /// 1..=7
    pub managers: usize,
    /// 0..=50
    pub workers: usize,
    pub shoal_bin: PathBuf,
    /// Passed to `swarm init --dispatcher-heartbeat`; tests shorten it so
    /// node failures are noticed quickly.
    pub heartbeat_ms: Option<u64>,
    /// How long to wait for every node to report Ready after joining.
    pub ready_timeout: Duration,
    /// Extra arguments for every `shoal daemon` (e.g. `--runtime fake`).
    pub daemon_args: Vec<String>,
    /// Run a `docker-registry` on the lab's underlay ([`LAB_REGISTRY`]) holding the images of
    /// [`images::LAB_IMAGES`], and let every daemon pull from it over plain HTTP.
    pub registry: bool,
}

/// Where a lab's registry listens: an address of the lab's underlay bridge, reachable from
/// every host of the lab and from nowhere else.
pub const LAB_REGISTRY: &str = "192.168.77.2:5000";

impl LabConfig {
    pub fn new(prefix: &str, managers: usize, workers: usize, shoal_bin: PathBuf) -> Self {
        LabConfig {
            prefix: prefix.to_string(),
            managers,
            workers,
            shoal_bin,
            heartbeat_ms: None,
            ready_timeout: Duration::from_secs(60),
            daemon_args: Vec::new(),
            registry: false,
        }
    }

    pub fn validate(&self) -> Result<(), LabError> {
        validate_prefix(&self.prefix)?;
        check_count("managers", self.managers, 1, 7)?;
        check_count("workers", self.workers, 0, 50)?;
        if !self.shoal_bin.is_file() {
            return Err(LabError::MissingBinary {
                path: self.shoal_bin.clone(),
            });
        }
        Ok(())
    }
}

fn check_count(what: &'static str, count: usize, min: usize, max: usize) -> Result<(), LabError> {
    if (min..=max).contains(&count) {
        Ok(())
    } else {
        Err(LabError::InvalidCount {
            what,
            count,
            min,
            max,
        })
    }
}

/// The prefix ends up in namespace and interface names and in a path that
/// `down` matches against process command lines, so keep it short and plain.
pub fn validate_prefix(prefix: &str) -> Result<(), LabError> {
    let ok = (1..=8).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(LabError::InvalidPrefix {
            prefix: prefix.to_string(),
        })
    }
}

/// State directory of the lab with this prefix.
pub fn lab_dir(prefix: &str) -> PathBuf {
    PathBuf::from(LAB_ROOT).join(prefix)
}

/// Run `f` on a thread that has entered network namespace `ns` (namespaces are per thread),
/// e.g. to open a connection to an address that exists only inside a lab.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    use anyhow::{anyhow, Context};
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
    std::thread::spawn(move || {
        // SAFETY: setns on a namespace fd we hold open; it affects only this new thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(anyhow!("setns: {}", std::io::Error::last_os_error()));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow!("netns thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_validation() {
        for good in ["a", "lab1", "12345678", "t0"] {
            assert!(validate_prefix(good).is_ok(), "{good}");
        }
        for bad in ["", "123456789", "Lab", "a-b", "a/b", "a b", "é"] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_counts() {
        let bin = std::env::current_exe().unwrap();
        let mut cfg = LabConfig::new("t", 3, 2, bin);
        assert!(cfg.validate().is_ok());
        cfg.managers = 0;
        assert!(matches!(
            cfg.validate(),
            Err(LabError::InvalidCount {
                what: "managers",
                ..
            })
        ));
        cfg.managers = 7;
        cfg.workers = 51;
        assert!(matches!(
            cfg.validate(),
            Err(LabError::InvalidCount {
                what: "workers",
                ..
            })
        ));
        cfg.workers = 0;
        cfg.shoal_bin = PathBuf::from("/nonexistent/shoal");
        assert!(matches!(
            cfg.validate(),
            Err(LabError::MissingBinary { .. })
        ));
    }
}
