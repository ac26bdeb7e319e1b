//! The node-local bridge network.
//!
//! Per task: a persistent network namespace bound to a file under the data dir (so it
//! outlives a daemon restart and the container's runtime joins it by path), a veth pair with
//! `eth0` inside and the host end on the bridge, and an address taken from the node's subnet.
//! Addresses are leased as files (`<dir>/leases/<ip>` holding the task id), created with
//! `create_new`, so two tasks never share one and a restarted daemon knows what is taken.
//!
//! Programmed with iproute2's `ip` and util-linux's `unshare`/`nsenter` for now; the overlay
//! work moves this onto rtnetlink.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{what}: {detail}")]
    Command { what: String, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no free address left in {0}")]
    Exhausted(String),
}

/// A task's place on the local network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The namespace file the container joins.
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
}

pub struct LocalNet {
    dir: PathBuf,
    bridge: String,
    gateway: Ipv4Addr,
    prefix_len: u8,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let context = context.into();
    move |source| NetError::Io { context, source }
}

fn run(what: &str, cmd: &mut Command) -> Result<String, NetError> {
    let out = cmd.output().map_err(|e| NetError::Command {
        what: what.to_string(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::Command {
            what: what.to_string(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Short, stable interface name for a task (15 bytes at most).
fn host_ifname(task_id: &str) -> String {
    let short: String = task_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(11)
        .collect();
    format!("vs{short}")
}

impl LocalNet {
    /// `dir`: where namespaces and leases live (e.g. `<data dir>/net`).
    pub fn new(dir: &Path) -> LocalNet {
        LocalNet {
            dir: dir.to_path_buf(),
            bridge: "shoal0".into(),
            gateway: Ipv4Addr::new(172, 30, 0, 1),
            prefix_len: 24,
        }
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Create the bridge with the gateway address unless it exists.
    pub fn ensure_bridge(&self) -> Result<(), NetError> {
        let exists = Command::new("ip")
            .args(["link", "show", &self.bridge])
            .output()
            .is_ok_and(|o| o.status.success());
        if !exists {
            run(
                "creating the bridge",
                Command::new("ip").args(["link", "add", &self.bridge, "type", "bridge"]),
            )?;
            run(
                "addressing the bridge",
                Command::new("ip").args([
                    "addr",
                    "add",
                    &format!("{}/{}", self.gateway, self.prefix_len),
                    "dev",
                    &self.bridge,
                ]),
            )?;
        }
        run(
            "bringing the bridge up",
            Command::new("ip").args(["link", "set", &self.bridge, "up"]),
        )?;
        Ok(())
    }

    fn ns_path(&self, task_id: &str) -> PathBuf {
        self.dir.join("ns").join(task_id)
    }

    fn lease(&self, task_id: &str) -> Result<Ipv4Addr, NetError> {
        let leases = self.dir.join("leases");
        fs::create_dir_all(&leases).map_err(io(format!("creating {}", leases.display())))?;
        // A lease this task holds already (restart during setup) is reused.
        for e in fs::read_dir(&leases)
            .map_err(io("reading leases"))?
            .flatten()
        {
            if fs::read_to_string(e.path()).is_ok_and(|t| t == task_id) {
                if let Ok(ip) = e.file_name().to_string_lossy().parse() {
                    return Ok(ip);
                }
            }
        }
        let base = u32::from(self.gateway) & !((1u32 << (32 - self.prefix_len)) - 1);
        let size = 1u32 << (32 - self.prefix_len);
        for host in 2..size - 1 {
            let ip = Ipv4Addr::from(base + host);
            let path = leases.join(ip.to_string());
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(task_id.as_bytes())
                        .map_err(io(format!("writing {}", path.display())))?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(format!("creating {}", path.display()))(e)),
            }
        }
        Err(NetError::Exhausted(format!(
            "{}/{}",
            Ipv4Addr::from(base),
            self.prefix_len
        )))
    }

    /// The directory of namespace files, made a private mount of its own as `ip netns` does
    /// with /run/netns: the kernel refuses to bind a namespace onto a mount with shared
    /// propagation, which / usually has on a systemd host.
    fn ensure_ns_dir(&self) -> Result<(), NetError> {
        let nsdir = self.dir.join("ns");
        fs::create_dir_all(&nsdir).map_err(io(format!("creating {}", nsdir.display())))?;
        if !is_mountpoint(&nsdir) {
            run(
                "binding the namespace directory",
                Command::new("mount").arg("--bind").arg(&nsdir).arg(&nsdir),
            )?;
        }
        run(
            "making the namespace directory private",
            Command::new("mount").arg("--make-private").arg(&nsdir),
        )?;
        Ok(())
    }

    /// The task's namespace with `eth0` addressed on the bridge (idempotent).
    pub fn attach(&self, task_id: &str) -> Result<Attachment, NetError> {
        self.ensure_bridge()?;
        let ns = self.ns_path(task_id);
        let ip = self.lease(task_id)?;
        let host_if = host_ifname(task_id);
        self.ensure_ns_dir()?;
        if !is_mountpoint(&ns) {
            fs::File::create(&ns).map_err(io(format!("creating {}", ns.display())))?;
            run(
                "creating the task's network namespace",
                Command::new("unshare")
                    .arg(format!("--net={}", ns.display()))
                    .arg("true"),
            )?;
        }
        let ns_arg = format!("--net={}", ns.display());
        let in_ns = |what: &str, args: &[&str]| {
            run(
                what,
                Command::new("nsenter").arg(&ns_arg).arg("ip").args(args),
            )
        };
        let has_eth0 = Command::new("nsenter")
            .arg(&ns_arg)
            .args(["ip", "link", "show", "eth0"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !has_eth0 {
            // Made inside the namespace, the peer sent to ours (named by our pid).
            let me = std::process::id().to_string();
            in_ns(
                "creating the veth pair",
                &[
                    "link", "add", "eth0", "type", "veth", "peer", "name", &host_if, "netns", &me,
                ],
            )?;
            in_ns(
                "addressing eth0",
                &[
                    "addr",
                    "add",
                    &format!("{ip}/{}", self.prefix_len),
                    "dev",
                    "eth0",
                ],
            )?;
            in_ns("bringing eth0 up", &["link", "set", "eth0", "up"])?;
            in_ns("bringing lo up", &["link", "set", "lo", "up"])?;
            in_ns(
                "adding the default route",
                &["route", "add", "default", "via", &self.gateway.to_string()],
            )?;
        }
        run(
            "attaching the veth to the bridge",
            Command::new("ip").args(["link", "set", &host_if, "master", &self.bridge, "up"]),
        )?;
        Ok(Attachment { netns: ns, ip })
    }

    /// Remove the task's namespace, veth and lease (idempotent).
    pub fn detach(&self, task_id: &str) -> Result<(), NetError> {
        let ns = self.ns_path(task_id);
        let _ = Command::new("ip")
            .args(["link", "del", &host_ifname(task_id)])
            .output();
        if is_mountpoint(&ns) {
            nix_umount(&ns)?;
        }
        let _ = fs::remove_file(&ns);
        if let Ok(entries) = fs::read_dir(self.dir.join("leases")) {
            for e in entries.flatten() {
                if fs::read_to_string(e.path()).is_ok_and(|t| t == task_id) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// The address a task holds, if any.
    pub fn address_of(&self, task_id: &str) -> Option<Ipv4Addr> {
        fs::read_dir(self.dir.join("leases"))
            .ok()?
            .flatten()
            .find(|e| fs::read_to_string(e.path()).is_ok_and(|t| t == task_id))
            .and_then(|e| e.file_name().to_string_lossy().parse().ok())
    }
}

fn is_mountpoint(p: &Path) -> bool {
    let Ok(canon) = p.canonicalize() else {
        return false;
    };
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(m) == canon)
}

fn nix_umount(p: &Path) -> Result<(), NetError> {
    run(
        "unmounting the network namespace",
        Command::new("umount").arg("-l").arg(p),
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        let n = host_ifname("abcdefghijklmnopqrstuvwxyz");
        assert!(n.len() <= 15, "{n}");
        assert_eq!(n, "vsabcdefghijk");
    }

    #[test]
    fn leases_are_unique_and_reused_by_their_task() {
        let d = tempfile::tempdir().unwrap();
        let net = LocalNet::new(d.path());
        let a = net.lease("t1").unwrap();
        let b = net.lease("t2").unwrap();
        assert_ne!(a, b);
        assert_eq!(net.lease("t1").unwrap(), a);
        assert_eq!(a, Ipv4Addr::new(172, 30, 0, 2));
        assert_eq!(net.address_of("t2"), Some(b));
    }
}
