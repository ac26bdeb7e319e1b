//! The side effects of a node's network controller behind one narrow trait.
//!
//! [`crate::node::NodeNet`] decides what the node's network should be (which networks, which
//! peers, which rules, in which order); a [`Dataplane`] makes it so. [`KernelDataplane`] is
//! the real one: network namespaces bound to files, the gateway bridge and the veths over
//! rtnetlink ([`LocalNet`]), the overlays' bridges, VXLAN devices, FDB and neighbour entries
//! ([`Overlay`]), nftables through `nft` ([`crate::nft`]) and the embedded DNS server's
//! sockets bound inside a task's namespace. [`fake::FakeDataplane`] keeps the same state in
//! memory and refuses what the kernel would refuse, so the controller is tested without root.
//! [`Observe`] reads the state back; one conformance suite (`agent-net/tests/dataplane.rs`)
//! runs on both.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use proto::spec::{NodeNetState, TaskNetwork};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo};

use crate::dns::DnsError;
use crate::local::{io, netlink, netlink_in, Attachment, LocalNet, NetError};
use crate::nft::{self, NftError};
use crate::overlay::{Overlay, PeerEntries};

pub mod fake;

/// The DNS server's sockets, bound to 127.0.0.11:53 inside a task's namespace.
pub type DnsSockets = (std::net::UdpSocket, std::net::TcpListener);

/// What the node's network controller does to the kernel. Every method is idempotent.
#[async_trait::async_trait]
pub trait Dataplane: Send + Sync + 'static {
    /// Where a task's namespace is bound (it may not exist).
    fn task_netns(&self, task_id: &str) -> PathBuf;
    /// Whether `netns` is a namespace that exists.
    fn netns_exists(&self, netns: &Path) -> bool;
    /// The task's namespace without an interface on the gateway bridge.
    async fn ensure_task_netns(&self, task_id: &str) -> Result<PathBuf, NetError>;
    /// The task's namespace with `ifname` on the gateway bridge (made unless it exists), an
    /// address leased for it, and the default route.
    async fn attach_gateway(&self, task_id: &str, ifname: &str) -> Result<Attachment, NetError>;
    /// The gateway address the task holds, if any.
    fn gateway_address(&self, task_id: &str) -> Option<Ipv4Addr>;
    /// Removes the task's namespace, its gateway veth and its lease.
    async fn detach_gateway(&self, task_id: &str) -> Result<(), NetError>;
    /// Connects the existing namespace `netns` to each of `nets` (`eth{i}` for the i-th).
    async fn attach_overlays(
        &self,
        task_id: &str,
        netns: &Path,
        nets: &[TaskNetwork],
    ) -> Result<(), NetError>;
    /// Removes the task's veths from every network.
    async fn detach_overlays(&self, task_id: &str) -> Result<(), NetError>;
    /// Makes the overlays match `state` (see [`Overlay::apply`]).
    async fn apply_overlays(
        &self,
        state: &NodeNetState,
        in_use: &BTreeSet<String>,
    ) -> Result<(), NetError>;
    /// Removes every overlay and the ingress sandbox.
    async fn teardown_overlays(&self) -> Result<(), NetError>;
    /// Runs an nft script in `netns` (None: the node's namespace).
    async fn apply_rules(&self, netns: Option<&Path>, script: &str) -> Result<(), NftError>;
    /// Removes an nft table ("<family> <name>") in `netns`; no error if it is absent.
    async fn remove_rules(&self, netns: Option<&Path>, table: &str) -> Result<(), NftError>;
    /// Binds the embedded DNS server's sockets inside the task's namespace.
    async fn dns_sockets(&self, task_id: &str, netns: &Path) -> Result<DnsSockets, DnsError>;
}

/// One interface as [`Observe::links`] shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkView {
    /// "veth", "bridge", "vxlan", "loopback", …
    pub kind: String,
    pub addrs: BTreeSet<(Ipv4Addr, u8)>,
    /// The bridge it is a port of.
    pub controller: Option<String>,
    pub up: bool,
}

/// Reads a dataplane's state back, for tests and diagnostics.
#[async_trait::async_trait]
pub trait Observe: Send + Sync {
    /// The interfaces in `netns` (None: the node's), by name.
    async fn links(&self, netns: Option<&Path>) -> Result<BTreeMap<String, LinkView>, NetError>;
    /// The namespace of the overlay network with `vni`.
    fn network_netns(&self, vni: u32) -> PathBuf;
    /// The network's VXLAN FDB and neighbour entries.
    async fn peers(&self, vni: u32) -> Result<PeerEntries, NetError>;
    /// The nft tables in `netns` (None: the node's).
    async fn tables(&self, netns: Option<&Path>) -> Result<BTreeSet<String>, NftError>;
}

/// The real dataplane: rtnetlink, namespaces bound under `<dir>/ns`, and `nft`.
pub struct KernelDataplane {
    local: LocalNet,
    overlay: Overlay,
    /// The node's namespace, open (the one `new` was called in).
    node_ns: fs::File,
    /// Where node rules go: None, the process's own namespace; else this namespace file.
    rules_ns: Option<PathBuf>,
}

impl KernelDataplane {
    /// `dir`: `<data dir>/net`. The node's namespace is the calling thread's, which is the
    /// process's.
    pub fn new(dir: &Path) -> Result<KernelDataplane, NetError> {
        Ok(KernelDataplane {
            local: LocalNet::new(dir)?,
            overlay: Overlay::new(dir)?,
            node_ns: fs::File::open("/proc/thread-self/ns/net")
                .map_err(io("opening this node's network namespace"))?,
            rules_ns: None,
        })
    }

    /// A dataplane whose node namespace is the calling thread's, when that is not the
    /// process's (tests: a namespace of their own); `node_ns` names that namespace for `nft`.
    pub fn in_namespace(dir: &Path, node_ns: &Path) -> Result<KernelDataplane, NetError> {
        Ok(KernelDataplane {
            rules_ns: Some(node_ns.to_path_buf()),
            ..KernelDataplane::new(dir)?
        })
    }

    fn rules_ns<'a>(&'a self, netns: Option<&'a Path>) -> Option<&'a Path> {
        netns.or(self.rules_ns.as_deref())
    }
}

#[async_trait::async_trait]
impl Dataplane for KernelDataplane {
    fn task_netns(&self, task_id: &str) -> PathBuf {
        self.local.task_netns(task_id)
    }

    fn netns_exists(&self, netns: &Path) -> bool {
        netns.exists()
    }

    async fn ensure_task_netns(&self, task_id: &str) -> Result<PathBuf, NetError> {
        self.local.ensure_task_netns(task_id).await
    }

    async fn attach_gateway(&self, task_id: &str, ifname: &str) -> Result<Attachment, NetError> {
        self.local.attach(task_id, ifname).await
    }

    fn gateway_address(&self, task_id: &str) -> Option<Ipv4Addr> {
        self.local.address_of(task_id)
    }

    async fn detach_gateway(&self, task_id: &str) -> Result<(), NetError> {
        self.local.detach(task_id).await
    }

    async fn attach_overlays(
        &self,
        task_id: &str,
        netns: &Path,
        nets: &[TaskNetwork],
    ) -> Result<(), NetError> {
        self.overlay.attach(task_id, netns, nets).await
    }

    async fn detach_overlays(&self, task_id: &str) -> Result<(), NetError> {
        self.overlay.detach(task_id).await
    }

    async fn apply_overlays(
        &self,
        state: &NodeNetState,
        in_use: &BTreeSet<String>,
    ) -> Result<(), NetError> {
        self.overlay.apply(state, in_use).await
    }

    async fn teardown_overlays(&self) -> Result<(), NetError> {
        self.overlay.teardown().await
    }

    async fn apply_rules(&self, netns: Option<&Path>, script: &str) -> Result<(), NftError> {
        nft::apply(self.rules_ns(netns), script).await
    }

    async fn remove_rules(&self, netns: Option<&Path>, table: &str) -> Result<(), NftError> {
        nft::remove(self.rules_ns(netns), table).await
    }

    async fn dns_sockets(&self, task_id: &str, netns: &Path) -> Result<DnsSockets, DnsError> {
        crate::dns::bind_in(task_id, netns).await
    }
}

#[async_trait::async_trait]
impl Observe for KernelDataplane {
    async fn links(&self, netns: Option<&Path>) -> Result<BTreeMap<String, LinkView>, NetError> {
        let file = match netns {
            Some(p) => fs::File::open(p).map_err(io(format!("opening {}", p.display())))?,
            None => self
                .node_ns
                .try_clone()
                .map_err(io("duplicating the node's namespace handle"))?,
        };
        let h = netlink_in(file, "listing interfaces").await?;
        let links: Vec<_> = h
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(netlink("listing interfaces"))?;
        let addrs: Vec<_> = h
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(netlink("listing addresses"))?;
        let names: BTreeMap<u32, String> = links
            .iter()
            .filter_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some((l.header.index, n.clone())),
                    _ => None,
                })
            })
            .collect();
        let mut out = BTreeMap::new();
        for l in &links {
            let Some(name) = names.get(&l.header.index) else {
                continue;
            };
            let mut view = LinkView {
                up: l.header.flags.contains(LinkFlags::Up),
                kind: if name == "lo" {
                    "loopback".into()
                } else {
                    String::new()
                },
                ..LinkView::default()
            };
            for a in &l.attributes {
                match a {
                    LinkAttribute::Controller(i) => view.controller = names.get(i).cloned(),
                    LinkAttribute::LinkInfo(infos) => {
                        for i in infos {
                            if let LinkInfo::Kind(k) = i {
                                view.kind = k.to_string();
                            }
                        }
                    }
                    _ => {}
                }
            }
            for m in addrs.iter().filter(|m| m.header.index == l.header.index) {
                for a in &m.attributes {
                    if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                        view.addrs.insert((*ip, m.header.prefix_len));
                    }
                }
            }
            out.insert(name.clone(), view);
        }
        Ok(out)
    }

    fn network_netns(&self, vni: u32) -> PathBuf {
        self.overlay.netns_path(vni)
    }

    async fn peers(&self, vni: u32) -> Result<PeerEntries, NetError> {
        self.overlay.observed_peers(vni).await
    }

    async fn tables(&self, netns: Option<&Path>) -> Result<BTreeSet<String>, NftError> {
        nft::list_tables(self.rules_ns(netns)).await
    }
}
