//! An in-memory [`Dataplane`]: namespaces, links, addresses, leases, FDB and neighbour
//! entries and nft tables kept in maps, with the kernel's refusals where the controller could
//! meet them (a veth end sent to a namespace that does not exist, a name taken or too long,
//! a VXLAN device without an underlay address, rules or DNS sockets in a missing namespace).
//! Deleting a veth end deletes its peer, and removing a namespace deletes what was in it, as
//! in the kernel. Its state outlives a controller (share it in an `Arc`), so a restarted
//! daemon meets what the last one left. Every change is logged, in order, for tests of
//! ordering.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use proto::spec::{NetPeer, NodeNetState, TaskNetwork};

use super::{Dataplane, DnsSockets, LinkView, Observe};
use crate::dns::DnsError;
use crate::local::{host_ifname, Attachment, NetError};
use crate::nft::{self, NftError};
use crate::overlay::{
    plan_networks, prefix_len, task_peer_ifname, vxlan_ifname, wanted_fdb, wanted_neigh,
    PeerEntries, BRIDGE, SANDBOX, SANDBOX_PEER, VXLAN_OVERHEAD,
};

/// The gateway bridge, its address and prefix, as [`crate::local::LocalNet`] makes them.
const GW_BRIDGE: &str = "shoal0";
const GW_ADDR: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const GW_PREFIX: u8 = 24;
/// The kernel's limit on an interface name, in bytes.
const IFNAMSIZ: usize = 15;

/// A namespace: None is the node's.
type NsKey = Option<PathBuf>;

#[derive(Clone, Debug, Default)]
struct FakeLink {
    view: LinkView,
    /// A veth's other end.
    peer: Option<(NsKey, String)>,
    /// A VXLAN device's VNI and local (underlay) address.
    vxlan: Option<(u32, Ipv4Addr)>,
    mtu: u32,
}

#[derive(Clone, Debug, Default)]
struct Ns {
    links: BTreeMap<String, FakeLink>,
    tables: BTreeSet<String>,
}

impl Ns {
    fn new() -> Ns {
        let lo = FakeLink {
            view: LinkView {
                kind: "loopback".into(),
                ..LinkView::default()
            },
            mtu: 65536,
            ..FakeLink::default()
        };
        Ns {
            links: [("lo".to_string(), lo)].into(),
            tables: BTreeSet::new(),
        }
    }
}

#[derive(Default)]
struct FakeState {
    namespaces: BTreeMap<NsKey, Ns>,
    /// Gateway address → task id.
    leases: BTreeMap<Ipv4Addr, String>,
    /// VNI → the network id its namespace was made for.
    records: BTreeMap<u32, String>,
    node_ip: Option<Ipv4Addr>,
    forwarding: bool,
    /// VNI → the entries on its VXLAN device.
    peers: BTreeMap<u32, PeerEntries>,
    log: Vec<String>,
}

pub struct FakeDataplane {
    dir: PathBuf,
    state: Mutex<FakeState>,
}

impl Default for FakeDataplane {
    fn default() -> Self {
        FakeDataplane::new()
    }
}

fn errno(what: impl Into<String>, e: Errno) -> NetError {
    NetError::Netlink {
        what: what.into(),
        source: e.into(),
    }
}

fn ns_name(ns: &NsKey) -> String {
    match ns {
        None => "node".into(),
        Some(p) => p
            .file_name()
            .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into()),
    }
}

impl FakeState {
    fn ns(&self, ns: &NsKey) -> Result<&Ns, NetError> {
        self.namespaces.get(ns).ok_or_else(|| missing_ns(ns))
    }

    fn ns_mut(&mut self, ns: &NsKey) -> Result<&mut Ns, NetError> {
        self.namespaces.get_mut(ns).ok_or_else(|| missing_ns(ns))
    }

    fn link_mut(&mut self, ns: &NsKey, name: &str) -> Result<&mut FakeLink, NetError> {
        self.ns_mut(ns)?
            .links
            .get_mut(name)
            .ok_or_else(|| errno(format!("looking up {name}"), Errno::ENODEV))
    }

    fn has_link(&self, ns: &NsKey, name: &str) -> bool {
        self.namespaces
            .get(ns)
            .is_some_and(|n| n.links.contains_key(name))
    }

    fn ensure_ns(&mut self, path: &Path) {
        let key = Some(path.to_path_buf());
        if let std::collections::btree_map::Entry::Vacant(e) = self.namespaces.entry(key) {
            e.insert(Ns::new());
            self.log
                .push(format!("netns+ {}", ns_name(&Some(path.into()))));
        }
    }

    fn add_link(&mut self, ns: &NsKey, name: &str, link: FakeLink) -> Result<(), NetError> {
        if name.len() > IFNAMSIZ {
            return Err(errno(format!("creating {name}"), Errno::EINVAL));
        }
        let n = self.ns_mut(ns)?;
        if n.links.contains_key(name) {
            return Err(errno(format!("creating {name}"), Errno::EEXIST));
        }
        n.links.insert(name.to_string(), link);
        self.log.push(format!("link+ {}/{name}", ns_name(ns)));
        Ok(())
    }

    /// A veth pair: `a` in `ns_a`, `b` in `ns_b`; both namespaces must exist.
    fn add_veth(
        &mut self,
        ns_a: &NsKey,
        a: &str,
        ns_b: &NsKey,
        b: &str,
        mtu: u32,
    ) -> Result<(), NetError> {
        let what = format!("creating the veth pair {a}/{b}");
        self.ns(ns_a)?;
        if !self.namespaces.contains_key(ns_b) {
            // The peer is sent to a namespace by fd: there is none to open.
            return Err(NetError::Io {
                context: format!("{what}: opening {}", ns_name(ns_b)),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        if self.has_link(ns_b, b) || b.len() > IFNAMSIZ {
            let e = if b.len() > IFNAMSIZ {
                Errno::EINVAL
            } else {
                Errno::EEXIST
            };
            return Err(errno(what, e));
        }
        let end = |peer: (NsKey, String)| FakeLink {
            view: LinkView {
                kind: "veth".into(),
                ..LinkView::default()
            },
            peer: Some(peer),
            mtu,
            ..FakeLink::default()
        };
        self.add_link(ns_a, a, end((ns_b.clone(), b.to_string())))?;
        self.add_link(ns_b, b, end((ns_a.clone(), a.to_string())))
    }

    /// Deletes a link if it exists, with what goes with it (a veth's peer, a VXLAN device's
    /// entries, the ports of a bridge leave it).
    fn delete_link(&mut self, ns: &NsKey, name: &str) {
        let Some(link) = self
            .namespaces
            .get_mut(ns)
            .and_then(|n| n.links.remove(name))
        else {
            return;
        };
        self.log.push(format!("link- {}/{name}", ns_name(ns)));
        if let Some(n) = self.namespaces.get_mut(ns) {
            for l in n.links.values_mut() {
                if l.view.controller.as_deref() == Some(name) {
                    l.view.controller = None;
                }
            }
        }
        if let Some((vni, _)) = link.vxlan {
            self.peers.remove(&vni);
        }
        if let Some((pns, pname)) = link.peer {
            self.delete_link(&pns, &pname);
        }
    }

    fn remove_ns(&mut self, path: &Path) {
        let key = Some(path.to_path_buf());
        let names: Vec<String> = match self.namespaces.get(&key) {
            Some(n) => n.links.keys().cloned().collect(),
            None => return,
        };
        for name in names {
            self.delete_link(&key, &name);
        }
        self.namespaces.remove(&key);
        self.log.push(format!("netns- {}", ns_name(&key)));
    }

    fn set_up(&mut self, ns: &NsKey, name: &str) -> Result<(), NetError> {
        self.link_mut(ns, name)?.view.up = true;
        Ok(())
    }

    /// Makes `port` a port of the bridge `bridge` in the same namespace, up.
    fn set_controller(&mut self, ns: &NsKey, port: &str, bridge: &str) -> Result<(), NetError> {
        let is_bridge = self
            .ns(ns)?
            .links
            .get(bridge)
            .is_some_and(|b| b.view.kind == "bridge");
        if !is_bridge {
            return Err(errno(format!("putting {port} on {bridge}"), Errno::ENODEV));
        }
        let l = self.link_mut(ns, port)?;
        l.view.controller = Some(bridge.to_string());
        l.view.up = true;
        Ok(())
    }

    fn ensure_bridge(&mut self, ns: &NsKey, name: &str, mtu: u32) -> Result<(), NetError> {
        if !self.has_link(ns, name) {
            let bridge = FakeLink {
                view: LinkView {
                    kind: "bridge".into(),
                    ..LinkView::default()
                },
                mtu,
                ..FakeLink::default()
            };
            self.add_link(ns, name, bridge)?;
        }
        self.link_mut(ns, name)?.mtu = mtu;
        self.set_up(ns, name)
    }

    fn lease(&mut self, task_id: &str) -> Result<Ipv4Addr, NetError> {
        if let Some((ip, _)) = self.leases.iter().find(|(_, t)| *t == task_id) {
            return Ok(*ip);
        }
        let base = u32::from(GW_ADDR) & !((1u32 << (32 - GW_PREFIX)) - 1);
        let size = 1u32 << (32 - GW_PREFIX);
        let ip = (2..size - 1)
            .map(|h| Ipv4Addr::from(base + h))
            .find(|ip| !self.leases.contains_key(ip))
            .ok_or_else(|| NetError::Exhausted(format!("{}/{GW_PREFIX}", Ipv4Addr::from(base))))?;
        self.leases.insert(ip, task_id.to_string());
        Ok(ip)
    }

    /// The MTU of the node's interface holding `ip`.
    fn underlay_mtu(&self, ip: Ipv4Addr) -> Result<u32, NetError> {
        self.ns(&None)?
            .links
            .values()
            .find(|l| l.view.addrs.iter().any(|(a, _)| *a == ip))
            .map(|l| l.mtu)
            .ok_or_else(|| NetError::Overlay {
                network: "(all)".into(),
                reason: format!(
                    "no interface of this node holds the underlay address {ip}: advertise an \
                     address of this node"
                ),
            })
    }
}

fn missing_ns(ns: &NsKey) -> NetError {
    NetError::Io {
        context: format!("opening {}", ns_name(ns)),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    }
}

impl FakeDataplane {
    /// A node with only its loopback interface.
    pub fn new() -> FakeDataplane {
        let st = FakeState {
            namespaces: [(None, Ns::new())].into(),
            ..FakeState::default()
        };
        FakeDataplane {
            dir: PathBuf::from("/fake/net"),
            state: Mutex::new(st),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An interface `name` of the node holding `ip` (the underlay), up, with `mtu`.
    pub fn add_underlay(&self, name: &str, ip: Ipv4Addr, prefix: u8, mtu: u32) {
        let mut st = self.lock();
        let link = FakeLink {
            view: LinkView {
                kind: "dummy".into(),
                addrs: [(ip, prefix)].into(),
                up: true,
                ..LinkView::default()
            },
            mtu,
            ..FakeLink::default()
        };
        st.namespaces
            .entry(None)
            .or_default()
            .links
            .insert(name.into(), link);
    }

    /// Every change made so far, in order ("netns+ NAME", "link+ NS/IF", "rules NS", …).
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    pub fn clear_log(&self) {
        self.lock().log.clear();
    }

    /// Whether IPv4 forwarding was turned on in the node's namespace.
    pub fn forwarding(&self) -> bool {
        self.lock().forwarding
    }

    /// The namespaces that exist, the node's aside.
    pub fn namespaces(&self) -> Vec<PathBuf> {
        self.lock().namespaces.keys().flatten().cloned().collect()
    }

    /// Task ids holding a gateway address.
    pub fn leases(&self) -> BTreeMap<Ipv4Addr, String> {
        self.lock().leases.clone()
    }

    fn ns_dir(&self) -> PathBuf {
        self.dir.join("ns")
    }

    fn network_ns(&self, vni: u32) -> NsKey {
        Some(self.ns_dir().join(format!("ov-{vni}")))
    }

    /// VNI → recorded network id, of the network namespaces that exist.
    fn existing(&self, st: &FakeState) -> BTreeMap<u32, Option<String>> {
        let dir = self.ns_dir();
        st.namespaces
            .keys()
            .flatten()
            .filter(|p| p.parent() == Some(dir.as_path()))
            .filter_map(|p| {
                let vni: u32 = p.file_name()?.to_str()?.strip_prefix("ov-")?.parse().ok()?;
                Some((vni, st.records.get(&vni).cloned()))
            })
            .collect()
    }

    fn ensure_network(
        &self,
        st: &mut FakeState,
        id: &str,
        name: &str,
        vni: u32,
    ) -> Result<(), NetError> {
        st.records.insert(vni, id.to_string());
        let ns = self.network_ns(vni);
        if let Some(p) = &ns {
            st.ensure_ns(p);
        }
        st.set_up(&ns, "lo")?;
        let vx = vxlan_ifname(vni);
        let existing = st.ns(&ns)?.links.get(&vx).cloned();
        let kept = match (&existing, st.node_ip) {
            (Some(l), Some(ip)) if l.vxlan.map(|v| v.1) == Some(ip) => existing.clone(),
            (Some(_), None) => existing.clone(),
            _ => None,
        };
        let mtu = match kept {
            Some(l) => l.mtu,
            None => {
                let ip = st.node_ip.ok_or_else(|| NetError::Overlay {
                    network: name.to_string(),
                    reason: "this node's underlay address is not known yet (it comes with the \
                             node's network state)"
                        .into(),
                })?;
                let mtu = st.underlay_mtu(ip)?.saturating_sub(VXLAN_OVERHEAD);
                st.delete_link(&ns, &vx);
                st.delete_link(&None, &vx);
                // The VNI's UDP socket is in the node's namespace: one device per VNI.
                let taken = st
                    .namespaces
                    .values()
                    .flat_map(|n| n.links.values())
                    .any(|l| l.vxlan.is_some_and(|(v, _)| v == vni));
                if taken {
                    return Err(errno(format!("creating {vx}"), Errno::EEXIST));
                }
                let link = FakeLink {
                    view: LinkView {
                        kind: "vxlan".into(),
                        ..LinkView::default()
                    },
                    vxlan: Some((vni, ip)),
                    mtu,
                    ..FakeLink::default()
                };
                st.add_link(&ns, &vx, link)?;
                st.log.push(format!("network+ {vni}"));
                mtu
            }
        };
        st.ensure_bridge(&ns, BRIDGE, mtu)?;
        st.set_controller(&ns, &vx, BRIDGE)
    }

    #[allow(clippy::too_many_arguments)]
    fn ensure_endpoint(
        &self,
        st: &mut FakeState,
        inside: &NsKey,
        ifname: &str,
        vni: u32,
        peer: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetError> {
        let net = self.network_ns(vni);
        let mtu = st.ns(&net)?.links.get(BRIDGE).map_or(1450, |b| b.mtu);
        let have_peer = st.has_link(&net, peer);
        if st.has_link(inside, ifname) && !have_peer {
            st.delete_link(inside, ifname);
        }
        if !st.has_link(inside, ifname) {
            st.delete_link(&net, peer);
            st.add_veth(inside, ifname, &net, peer, mtu)?;
        }
        let l = st.link_mut(inside, ifname)?;
        l.mtu = mtu;
        l.view.up = true;
        l.view.addrs = [(addr, prefix)].into();
        st.set_controller(&net, peer, BRIDGE)
    }

    fn remove_network(&self, st: &mut FakeState, vni: u32) {
        if let Some(p) = self.network_ns(vni) {
            st.remove_ns(&p);
        }
        st.delete_link(&None, &vxlan_ifname(vni));
        st.records.remove(&vni);
        st.log.push(format!("network- {vni}"));
    }

    fn sync_peers(&self, st: &mut FakeState, vni: u32, peers: &[NetPeer]) -> Result<(), NetError> {
        let ns = self.network_ns(vni);
        if !st.has_link(&ns, &vxlan_ifname(vni)) {
            return Err(errno(
                format!("programming {}", vxlan_ifname(vni)),
                Errno::ENODEV,
            ));
        }
        let entries = PeerEntries {
            fdb: wanted_fdb(peers),
            neighbours: wanted_neigh(peers)
                .into_iter()
                .map(|(ip, mac, _)| (ip, mac))
                .collect(),
        };
        if st.peers.get(&vni) != Some(&entries) {
            st.log.push(format!("peers {vni}"));
            st.peers.insert(vni, entries);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Dataplane for FakeDataplane {
    fn task_netns(&self, task_id: &str) -> PathBuf {
        self.ns_dir().join(task_id)
    }

    fn netns_exists(&self, netns: &Path) -> bool {
        self.lock()
            .namespaces
            .contains_key(&Some(netns.to_path_buf()))
    }

    async fn ensure_task_netns(&self, task_id: &str) -> Result<PathBuf, NetError> {
        let p = self.task_netns(task_id);
        self.lock().ensure_ns(&p);
        Ok(p)
    }

    async fn attach_gateway(&self, task_id: &str, ifname: &str) -> Result<Attachment, NetError> {
        let path = self.task_netns(task_id);
        let ns = Some(path.clone());
        let mut st = self.lock();
        st.ensure_bridge(&None, GW_BRIDGE, 1500)?;
        let bridge = st.link_mut(&None, GW_BRIDGE)?;
        bridge.view.addrs.insert((GW_ADDR, GW_PREFIX));
        let ip = st.lease(task_id)?;
        let host_if = host_ifname(task_id);
        st.ensure_ns(&path);
        if !st.has_link(&ns, ifname) {
            st.delete_link(&None, &host_if);
            st.add_veth(&ns, ifname, &None, &host_if, 1500)?;
        }
        let l = st.link_mut(&ns, ifname)?;
        l.view.addrs.insert((ip, GW_PREFIX));
        l.view.up = true;
        st.set_up(&ns, "lo")?;
        st.set_controller(&None, &host_if, GW_BRIDGE)?;
        Ok(Attachment { netns: path, ip })
    }

    fn gateway_address(&self, task_id: &str) -> Option<Ipv4Addr> {
        let st = self.lock();
        st.leases
            .iter()
            .find(|(_, t)| *t == task_id)
            .map(|(ip, _)| *ip)
    }

    async fn detach_gateway(&self, task_id: &str) -> Result<(), NetError> {
        let path = self.task_netns(task_id);
        let mut st = self.lock();
        st.delete_link(&None, &host_ifname(task_id));
        st.remove_ns(&path);
        st.leases.retain(|_, t| t != task_id);
        Ok(())
    }

    async fn attach_overlays(
        &self,
        task_id: &str,
        netns: &Path,
        nets: &[TaskNetwork],
    ) -> Result<(), NetError> {
        if nets.is_empty() {
            return Ok(());
        }
        let inside = Some(netns.to_path_buf());
        let mut st = self.lock();
        st.ns(&inside)?;
        st.set_up(&inside, "lo")?;
        let peer = task_peer_ifname(task_id);
        for (i, tn) in nets.iter().enumerate() {
            let prefix = prefix_len(&tn.network_name, &tn.subnet)?;
            self.ensure_network(&mut st, &tn.network_id, &tn.network_name, tn.vni)?;
            let ifname = format!("eth{i}");
            self.ensure_endpoint(&mut st, &inside, &ifname, tn.vni, &peer, tn.addr, prefix)?;
        }
        Ok(())
    }

    async fn detach_overlays(&self, task_id: &str) -> Result<(), NetError> {
        let peer = task_peer_ifname(task_id);
        let mut st = self.lock();
        for vni in self.existing(&st).into_keys() {
            st.delete_link(&self.network_ns(vni), &peer);
        }
        Ok(())
    }

    async fn apply_overlays(
        &self,
        state: &NodeNetState,
        in_use: &BTreeSet<String>,
    ) -> Result<(), NetError> {
        let mut st = self.lock();
        if let Some(ip) = state.node_ip {
            st.node_ip = Some(ip);
        }
        st.forwarding = true;
        let plan = plan_networks(state, in_use, &self.existing(&st));
        for vni in &plan.remove {
            self.remove_network(&mut st, *vni);
        }
        let mut first = Ok(());
        let mut ingress = None;
        for n in &state.networks {
            if !plan.ensure.contains(&n.vni) && !plan.keep.contains(&n.vni) {
                continue;
            }
            let r = self
                .ensure_network(&mut st, &n.id, &n.name, n.vni)
                .and_then(|()| self.sync_peers(&mut st, n.vni, &n.peers));
            match r {
                Ok(()) if n.ingress => ingress = Some(n),
                Ok(()) => {}
                Err(e) => first = first.and(Err(e)),
            }
        }
        let sandbox = match (state.ingress_addr, ingress) {
            (Some(addr), Some(n)) => prefix_len(&n.name, &n.subnet).and_then(|prefix| {
                self.ensure_endpoint(&mut st, &None, SANDBOX, n.vni, SANDBOX_PEER, addr, prefix)
            }),
            _ => {
                st.delete_link(&None, SANDBOX);
                Ok(())
            }
        };
        first.and(sandbox)
    }

    async fn teardown_overlays(&self) -> Result<(), NetError> {
        let mut st = self.lock();
        st.delete_link(&None, SANDBOX);
        for vni in self.existing(&st).into_keys() {
            self.remove_network(&mut st, vni);
        }
        st.node_ip = None;
        Ok(())
    }

    async fn apply_rules(&self, netns: Option<&Path>, script: &str) -> Result<(), NftError> {
        let key = netns.map(Path::to_path_buf);
        let mut st = self.lock();
        let Some(ns) = st.namespaces.get_mut(&key) else {
            return Err(NftError::Netns {
                path: key.unwrap_or_default(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        };
        // As nft runs it: one transaction, statement by statement.
        let mut tables = ns.tables.clone();
        for line in script.lines().map(str::trim) {
            if let Some(t) = line.strip_prefix("delete table ") {
                if !tables.remove(t) {
                    return Err(NftError::Failed {
                        netns: ns_name(&key),
                        stderr: format!("Error: No such file or directory: delete table {t}"),
                    });
                }
            } else if let Some(rest) = line.strip_prefix("table ") {
                let name = rest.split('{').next().unwrap_or(rest).trim();
                tables.insert(name.to_string());
            }
        }
        ns.tables = tables;
        st.log.push(format!("rules {}", ns_name(&key)));
        Ok(())
    }

    async fn remove_rules(&self, netns: Option<&Path>, table: &str) -> Result<(), NftError> {
        self.apply_rules(netns, &nft::render_remove(table)?).await
    }

    async fn dns_sockets(&self, task_id: &str, netns: &Path) -> Result<DnsSockets, DnsError> {
        let exists = self.netns_exists(netns);
        let io_err = |source| DnsError::Netns {
            task_id: task_id.to_string(),
            netns: netns.to_path_buf(),
            source,
        };
        if !exists {
            return Err(io_err(std::io::Error::from(std::io::ErrorKind::NotFound)));
        }
        // Real sockets on the loopback of the test's own namespace, any port.
        let udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err)?;
        let tcp = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err)?;
        udp.set_nonblocking(true).map_err(io_err)?;
        tcp.set_nonblocking(true).map_err(io_err)?;
        self.lock().log.push(format!("dns {task_id}"));
        Ok((udp, tcp))
    }
}

#[async_trait::async_trait]
impl Observe for FakeDataplane {
    async fn links(&self, netns: Option<&Path>) -> Result<BTreeMap<String, LinkView>, NetError> {
        let key = netns.map(Path::to_path_buf);
        let st = self.lock();
        Ok(st
            .ns(&key)?
            .links
            .iter()
            .map(|(n, l)| (n.clone(), l.view.clone()))
            .collect())
    }

    fn network_netns(&self, vni: u32) -> PathBuf {
        self.ns_dir().join(format!("ov-{vni}"))
    }

    async fn peers(&self, vni: u32) -> Result<PeerEntries, NetError> {
        Ok(self.lock().peers.get(&vni).cloned().unwrap_or_default())
    }

    async fn tables(&self, netns: Option<&Path>) -> Result<BTreeSet<String>, NftError> {
        let key = netns.map(Path::to_path_buf);
        match self.lock().namespaces.get(&key) {
            Some(ns) => Ok(ns.tables.clone()),
            None => Err(NftError::Netns {
                path: key.unwrap_or_default(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }),
        }
    }
}
