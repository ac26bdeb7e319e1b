//! The node-local bridge network.
//!
//! Per task: a persistent network namespace bound to a file under the data dir (so it
//! outlives a daemon restart and the container's runtime joins it by path), a veth pair with
//! `eth0` (`eth{N}` when the task is on N overlays) inside and the host end on the bridge, and an address taken from the node's subnet.
//! Addresses are leased as files (`<dir>/leases/<ip>` holding the task id), created with
//! `create_new`, so two tasks never share one and a restarted daemon knows what is taken.
//!
//! ```text
//!   node namespace                         task namespace (<dir>/ns/<task id>)
//!   shoal0 172.30.0.1/24 ── vs<task id> ═══ ethN 172.30.0.n/24, default via 172.30.0.1
//! ```
//!
//! Programmed over rtnetlink, with no helper binaries. A netlink socket belongs to the network
//! namespace of the thread that opened it, and namespaces are per thread, so each socket is
//! opened on a short-lived thread that first `setns`es into the wanted namespace; the
//! connection is then driven on the caller's tokio runtime. A task's namespace is made the
//! same way `ip netns add` makes one: a thread `unshare`s its network namespace and
//! bind-mounts it onto the file, which keeps it alive after the thread ends.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::TryStreamExt;
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkMessage};
use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request the kernel refused (or that could not be sent).
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no free address left in {0}")]
    Exhausted(String),
    /// An overlay network this node cannot build as asked (the reason says what to fix).
    #[error("overlay network {network}: {reason}")]
    Overlay { network: String, reason: String },
}

impl NetError {
    /// The kernel's errno, when the error carries one.
    pub(crate) fn errno(&self) -> Option<Errno> {
        match self {
            NetError::Netlink { source, .. } | NetError::Io { source, .. } => {
                source.raw_os_error().map(Errno::from_raw)
            }
            NetError::Exhausted(_) | NetError::Overlay { .. } => None,
        }
    }
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
    /// The node's network namespace: the one `new` was called in.
    node_ns: fs::File,
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let context = context.into();
    move |source| NetError::Io { context, source }
}

pub(crate) fn sys(context: impl Into<String>) -> impl FnOnce(Errno) -> NetError {
    let context = context.into();
    move |e| NetError::Io {
        context,
        source: e.into(),
    }
}

pub(crate) fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |e| NetError::Netlink {
        what,
        source: match e {
            rtnetlink::Error::NetlinkError(m) => m.to_io(),
            other => std::io::Error::other(other.to_string()),
        },
    }
}

/// Treats the kernel saying `errno` as success (e.g. EEXIST when adding what is there).
pub(crate) fn unless(errno: Errno, r: Result<(), NetError>) -> Result<(), NetError> {
    match r {
        Err(e) if e.errno() == Some(errno) => Ok(()),
        r => r,
    }
}

/// Short, stable interface name for a task (15 bytes at most).
pub(crate) fn host_ifname(task_id: &str) -> String {
    let short: String = task_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(11)
        .collect();
    format!("vs{short}")
}

/// Runs `f` on a thread of its own, so namespace changes it makes touch no other thread.
pub(crate) async fn on_thread<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("shoal-netns".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(io(format!("{what}: starting a thread")))?;
    rx.await.unwrap_or_else(|_| {
        Err(NetError::Io {
            context: what.to_string(),
            source: std::io::Error::other("the thread panicked"),
        })
    })
}

/// A netlink connection in the network namespace `ns`, driven on the current runtime.
pub(crate) async fn netlink_in(ns: fs::File, what: &str) -> Result<Handle, NetError> {
    let rt = tokio::runtime::Handle::current();
    let ctx = what.to_string();
    let (conn, handle) = on_thread(what, move || {
        setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(sys(format!("{ctx}: entering the namespace")))?;
        // The socket registers with the caller's runtime; its namespace is this thread's.
        let _rt = rt.enter();
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(io(format!("{ctx}: opening netlink")))?;
        Ok((conn, handle))
    })
    .await?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The link called `name`, if there is one.
pub(crate) async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, NetError> {
    let found = h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(netlink(format!("looking up {name}")));
    match found {
        Ok(link) => Ok(link),
        Err(e) if e.errno() == Some(Errno::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    Ok(get_link(h, name).await?.map(|l| l.header.index))
}

pub(crate) async fn delete_link(h: &Handle, name: &str) -> Result<(), NetError> {
    if let Some(index) = link_index(h, name).await? {
        let r = h
            .link()
            .del(index)
            .execute()
            .await
            .map_err(netlink(format!("deleting {name}")));
        unless(Errno::ENODEV, r)?;
    }
    Ok(())
}

pub(crate) async fn set_up(h: &Handle, index: u32, name: &str) -> Result<(), NetError> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink(format!("bringing {name} up")))
}

pub(crate) async fn add_address(
    h: &Handle,
    index: u32,
    name: &str,
    ip: Ipv4Addr,
    prefix_len: u8,
) -> Result<(), NetError> {
    let r = h
        .address()
        .add(index, IpAddr::V4(ip), prefix_len)
        .execute()
        .await
        .map_err(netlink(format!("adding {ip}/{prefix_len} to {name}")));
    unless(Errno::EEXIST, r)
}

/// Binds a new network namespace onto the existing empty file `target`.
pub(crate) fn create_netns(target: &Path) -> Result<(), NetError> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(sys("creating a network namespace"))?;
    mount(
        Some("/proc/thread-self/ns/net"),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys(format!(
        "binding the network namespace to {}",
        target.display()
    )))
}

/// The directory of namespace files, made a private mount of its own as `ip netns` does
/// with /run/netns: the kernel refuses to bind a namespace onto a mount with shared
/// propagation, which / usually has on a systemd host. Serialised process-wide, since the
/// local network and the overlays share the directory and it must be bound once.
pub(crate) fn ensure_ns_dir(nsdir: &Path) -> Result<(), NetError> {
    // Directories made private by this process: each attach needs no mount call.
    static DONE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if done.iter().any(|d| d == nsdir) && is_mountpoint(nsdir) {
        return Ok(());
    }
    fs::create_dir_all(nsdir).map_err(io(format!("creating {}", nsdir.display())))?;
    if !is_mountpoint(nsdir) {
        mount(
            Some(nsdir),
            nsdir,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys(format!(
            "bind-mounting {} onto itself",
            nsdir.display()
        )))?;
    }
    mount(
        None::<&str>,
        nsdir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys(format!("making {} a private mount", nsdir.display())))?;
    done.push(nsdir.to_path_buf());
    Ok(())
}

/// Makes `path` a persistent network namespace unless it is one already (a file left
/// unbound by a setup cut short is bound now).
pub(crate) async fn ensure_netns(path: &Path) -> Result<(), NetError> {
    if let Some(dir) = path.parent() {
        ensure_ns_dir(dir)?;
    }
    if !is_mountpoint(path) {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io(format!("creating {}", path.display())))?;
        let target = path.to_path_buf();
        on_thread("creating a network namespace", move || {
            create_netns(&target)
        })
        .await?;
    }
    Ok(())
}

/// Unmounts and removes a namespace file (idempotent).
pub(crate) fn remove_netns(path: &Path) -> Result<(), NetError> {
    let unmount = if is_mountpoint(path) {
        umount2(path, MntFlags::MNT_DETACH).map_err(sys(format!("unmounting {}", path.display())))
    } else {
        Ok(())
    };
    let remove = match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io(format!("removing {}", path.display()))(e))
        }
        _ => Ok(()),
    };
    unmount.and(remove)
}

impl LocalNet {
    /// `dir`: where namespaces and leases live (e.g. `<data dir>/net`). The bridge and the
    /// host ends of the veths go into the calling thread's network namespace.
    pub fn new(dir: &Path) -> Result<LocalNet, NetError> {
        let node_ns = fs::File::open("/proc/thread-self/ns/net")
            .map_err(io("opening this node's network namespace"))?;
        Ok(LocalNet {
            dir: dir.to_path_buf(),
            bridge: "shoal0".into(),
            gateway: Ipv4Addr::new(172, 30, 0, 1),
            prefix_len: 24,
            node_ns,
        })
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The task's namespace without an interface on the bridge (a task on internal networks
    /// only: no way out).
    pub async fn ensure_task_netns(&self, task_id: &str) -> Result<PathBuf, NetError> {
        let ns = self.ns_path(task_id);
        ensure_netns(&ns).await?;
        Ok(ns)
    }

    /// Where the task's namespace is bound (it may not exist).
    pub fn task_netns(&self, task_id: &str) -> PathBuf {
        self.ns_path(task_id)
    }

    async fn node_netlink(&self) -> Result<Handle, NetError> {
        let ns = self
            .node_ns
            .try_clone()
            .map_err(io("duplicating the node's namespace handle"))?;
        netlink_in(ns, "talking to the node's network namespace").await
    }

    /// Create the bridge with the gateway address unless it exists, and bring it up.
    pub async fn ensure_bridge(&self) -> Result<(), NetError> {
        let node = self.node_netlink().await?;
        self.bridge_index(&node).await.map(|_| ())
    }

    async fn bridge_index(&self, node: &Handle) -> Result<u32, NetError> {
        let name = &self.bridge;
        let index = match link_index(node, name).await? {
            Some(index) => index,
            None => {
                let r = node
                    .link()
                    .add(LinkBridge::new(name).build())
                    .execute()
                    .await
                    .map_err(netlink(format!("creating the bridge {name}")));
                // Another attach may have made it meanwhile.
                unless(Errno::EEXIST, r)?;
                link_index(node, name)
                    .await?
                    .ok_or_else(|| NetError::Netlink {
                        what: format!("looking up the bridge {name}"),
                        source: Errno::ENODEV.into(),
                    })?
            }
        };
        add_address(node, index, name, self.gateway, self.prefix_len).await?;
        set_up(node, index, name).await?;
        Ok(index)
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

    /// The task's namespace with `ifname` addressed on the bridge and holding the default
    /// route (idempotent: each step is skipped when done already, so a setup cut short by a
    /// restart completes). `ifname` is `eth0`, or `eth{N}` after a task's N overlay interfaces.
    pub async fn attach(&self, task_id: &str, ifname: &str) -> Result<Attachment, NetError> {
        let node = self.node_netlink().await?;
        let bridge = self.bridge_index(&node).await?;
        let ns = self.ns_path(task_id);
        let ip = self.lease(task_id)?;
        let host_if = host_ifname(task_id);
        ensure_netns(&ns).await?;
        let ns_file = fs::File::open(&ns).map_err(io(format!("opening {}", ns.display())))?;
        let task = netlink_in(ns_file, "talking to the task's network namespace").await?;

        let eth0 = match link_index(&task, ifname).await? {
            Some(index) => index,
            None => {
                // A host end without its peer is left from an earlier namespace.
                delete_link(&node, &host_if).await?;
                // Made inside the task's namespace, the peer sent to the node's by fd.
                let peer = LinkUnspec::new_with_name(&host_if)
                    .setns_by_fd(self.node_ns.as_raw_fd())
                    .build();
                task.link()
                    .add(
                        LinkVeth::new(ifname, &host_if)
                            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(netlink(format!(
                        "creating the veth pair {ifname}/{host_if}"
                    )))?;
                link_index(&task, ifname)
                    .await?
                    .ok_or_else(|| NetError::Netlink {
                        what: format!("looking up {ifname} after creating it"),
                        source: Errno::ENODEV.into(),
                    })?
            }
        };
        // The MAC follows the address (as on the overlays): a lease handed to a new task keeps
        // the node's neighbour entry for it valid, so the first packets to the new task are
        // not sent to the old one's MAC.
        task.link()
            .set(
                LinkUnspec::new_with_index(eth0)
                    .address(proto::spec::overlay_mac(ip).to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(format!("setting the MAC address of {ifname}")))?;
        add_address(&task, eth0, ifname, ip, self.prefix_len).await?;
        set_up(&task, eth0, ifname).await?;
        if let Some(lo) = link_index(&task, "lo").await? {
            set_up(&task, lo, "lo").await?;
        }
        // `proto boot`, as `ip route add` records it.
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(self.gateway)
            .output_interface(eth0)
            .protocol(RouteProtocol::Boot)
            .build();
        task.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(netlink(format!(
                "adding the default route via {}",
                self.gateway
            )))?;

        let host = link_index(&node, &host_if)
            .await?
            .ok_or_else(|| NetError::Netlink {
                what: format!("looking up {host_if}, the veth's host end"),
                source: Errno::ENODEV.into(),
            })?;
        node.link()
            .set(
                LinkUnspec::new_with_index(host)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(format!(
                "attaching {host_if} to the bridge {}",
                self.bridge
            )))?;
        Ok(Attachment { netns: ns, ip })
    }

    /// Remove the task's namespace, veth and lease (idempotent). Every step is tried; the
    /// first failure is returned.
    pub async fn detach(&self, task_id: &str) -> Result<(), NetError> {
        let ns = self.ns_path(task_id);
        let veth = match self.node_netlink().await {
            Ok(node) => delete_link(&node, &host_ifname(task_id)).await,
            Err(e) => Err(e),
        };
        let namespace = remove_netns(&ns);
        if let Ok(entries) = fs::read_dir(self.dir.join("leases")) {
            for e in entries.flatten() {
                if fs::read_to_string(e.path()).is_ok_and(|t| t == task_id) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        veth.and(namespace)
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

/// Whether `p` is the root of a mount, from `statx` (one system call; reading
/// /proc/self/mountinfo costs time in proportion to the node's mounts, hundreds with many
/// containers); the mount table where the kernel does not say.
pub(crate) fn is_mountpoint(p: &Path) -> bool {
    if let Some(root) = statx_mount_root(p) {
        return root;
    }
    let Ok(canon) = p.canonicalize() else {
        return false;
    };
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(m) == canon)
}

/// `Some(is a mount root)`, or None if `statx` cannot tell (absent path: `Some(false)`).
fn statx_mount_root(p: &Path) -> Option<bool> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    // SAFETY: statx is plain data; all zeroes is a valid value.
    let mut stx: nix::libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx fills the struct it is given; the path is NUL-terminated.
    let r = unsafe { nix::libc::statx(nix::libc::AT_FDCWD, path.as_ptr(), 0, 0, &mut stx) };
    if r != 0 {
        let missing = std::io::Error::last_os_error().raw_os_error() == Some(nix::libc::ENOENT);
        return missing.then_some(false);
    }
    let attr = nix::libc::STATX_ATTR_MOUNT_ROOT as u64;
    (stx.stx_attributes_mask & attr != 0).then_some(stx.stx_attributes & attr != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_roots_are_told_apart() {
        assert!(is_mountpoint(Path::new("/")));
        assert!(is_mountpoint(Path::new("/proc")));
        let d = tempfile::tempdir().unwrap();
        assert!(!is_mountpoint(d.path()));
        assert!(!is_mountpoint(&d.path().join("absent")));
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        let n = host_ifname("abcdefghijklmnopqrstuvwxyz");
        assert!(n.len() <= 15, "{n}");
        assert_eq!(n, "vsabcdefghijk");
    }

    #[test]
    fn leases_are_unique_and_reused_by_their_task() {
        let d = tempfile::tempdir().unwrap();
        let net = LocalNet::new(d.path()).unwrap();
        let a = net.lease("t1").unwrap();
        let b = net.lease("t2").unwrap();
        assert_ne!(a, b);
        assert_eq!(net.lease("t1").unwrap(), a);
        assert_eq!(a, Ipv4Addr::new(172, 30, 0, 2));
        assert_eq!(net.address_of("t2"), Some(b));
    }
}
