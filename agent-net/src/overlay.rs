//! The overlay networks' datapath on a node: VXLAN, a bridge per network, a veth per task.
//!
//! Each overlay network gets a persistent namespace (`<dir>/ns/ov-<vni>`) holding a bridge
//! `br0` and the network's VXLAN device. The VXLAN device is created from the node's namespace
//! (where the underlay is, so its UDP socket lives there) straight into the network's
//! namespace. Learning is off and ARP proxying on: every remote endpoint is programmed
//! statically from the state the dispatcher sends, as an FDB entry (its MAC → the underlay
//! address of its node) and a neighbour entry (its address → its MAC), so nothing floods.
//! MACs are derived from addresses ([`overlay_mac`]), so every node knows them without asking.
//!
//! ```text
//!   node namespace           network namespace (<dir>/ns/ov-<vni>)     task namespace
//!   underlay 192.168.0.5 ┄┄┄ vx-<vni> (UDP 4789, socket in the node's)
//!                            br0 ─┬─ vx-<vni>
//!                                 ├─ vt<task id> ═══════════════════════ eth{i} 10.0.1.n/24
//!   shoal_ing 10.255.0.n ═══════ shoal_ing_br          (ingress network only: the sandbox)
//! ```
//!
//! Every step is idempotent and checks what exists first, so a daemon that restarts adopts
//! the namespaces it left (they are bind mounts) and a setup cut short completes. Which
//! network a namespace belongs to is recorded in `<dir>/overlay/<vni>`, so a restarted daemon
//! knows what it may remove.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use proto::spec::{overlay_mac, NetPeer, NodeNetState, TaskNetwork};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoVeth, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan};

use crate::local::{
    add_address, delete_link, ensure_netns, get_link, io, link_index, netlink, netlink_in,
    on_thread, remove_netns, set_up, sys, unless, NetError,
};

/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// What VXLAN adds to a frame over IPv4: outer IP 20, UDP 8, VXLAN 8, inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The bridge inside each network's namespace.
pub const BRIDGE: &str = "br0";
/// The node's end of its ingress sandbox, in the node's namespace.
pub const SANDBOX: &str = "shoal_ing";
/// The sandbox's other end, on the ingress network's bridge.
pub const SANDBOX_PEER: &str = "shoal_ing_br";

/// The overlays of one node. Operations are serialised: attach, detach and apply all read
/// and change the same namespaces.
pub struct Overlay {
    dir: PathBuf,
    /// The node's network namespace: the one `new` was called in.
    node_ns: fs::File,
    /// The underlay address (VXLAN source) last applied, also kept in `<dir>/overlay/node_ip`
    /// so an attach after a restart can build a network before the first apply.
    node_ip: std::sync::Mutex<Option<Ipv4Addr>>,
    busy: tokio::sync::Mutex<()>,
}

/// A network as the datapath needs it, from a task's attachment or the node's state.
#[derive(Clone, Copy, Debug)]
struct Net<'a> {
    id: &'a str,
    name: &'a str,
    vni: u32,
}

/// A network's namespace, open, with its devices.
struct NetNs {
    file: fs::File,
    h: Handle,
    bridge: u32,
    vxlan: u32,
    mtu: u32,
}

/// An FDB entry on a VXLAN device: a remote MAC and the underlay address of its node.
type Fdb = ([u8; 6], Ipv4Addr);
/// A neighbour entry on a VXLAN device: address, MAC, and whether it is permanent.
type Neigh = (Ipv4Addr, [u8; 6], bool);

/// What a network's VXLAN device knows of its peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerEntries {
    /// MAC → the underlay address of the peer's node.
    pub fdb: BTreeSet<([u8; 6], Ipv4Addr)>,
    /// Overlay address → MAC.
    pub neighbours: BTreeSet<(Ipv4Addr, [u8; 6])>,
}

/// The VXLAN device of a network (at most 11 bytes: a VNI has 8 digits at most).
pub fn vxlan_ifname(vni: u32) -> String {
    format!("vx-{vni}")
}

/// The bridge end of a task's veth in a network's namespace (15 bytes at most).
pub fn task_peer_ifname(task_id: &str) -> String {
    let short: String = task_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(13)
        .collect();
    format!("vt{short}")
}

/// The prefix length of an IPv4 subnet written `a.b.c.d/len`.
pub fn prefix_len(network: &str, subnet: &str) -> Result<u8, NetError> {
    let bad = || NetError::Overlay {
        network: network.to_string(),
        reason: format!("subnet {subnet:?} is not an IPv4 subnet like 10.0.1.0/24"),
    };
    let (ip, len) = subnet.split_once('/').ok_or_else(bad)?;
    ip.parse::<Ipv4Addr>().map_err(|_| bad())?;
    match len.parse::<u8>() {
        Ok(len) if len <= 32 => Ok(len),
        _ => Err(bad()),
    }
}

/// What to add and what to remove to turn `observed` into `wanted`.
pub fn diff<T: Ord + Clone>(observed: &BTreeSet<T>, wanted: &BTreeSet<T>) -> (Vec<T>, Vec<T>) {
    let add = wanted.difference(observed).cloned().collect();
    let remove = observed.difference(wanted).cloned().collect();
    (add, remove)
}

/// One entry per peer address (the last listing wins).
fn peers_by_addr(peers: &[NetPeer]) -> BTreeMap<Ipv4Addr, Ipv4Addr> {
    peers.iter().map(|p| (p.addr, p.node_ip)).collect()
}

pub(crate) fn wanted_fdb(peers: &[NetPeer]) -> BTreeSet<Fdb> {
    peers_by_addr(peers)
        .into_iter()
        .map(|(addr, node)| (overlay_mac(addr), node))
        .collect()
}

pub(crate) fn wanted_neigh(peers: &[NetPeer]) -> BTreeSet<Neigh> {
    peers_by_addr(peers)
        .into_keys()
        .map(|addr| (addr, overlay_mac(addr), true))
        .collect()
}

/// Which networks the node should have, from its state, the networks its tasks use, and
/// the network namespaces that exist (VNI → recorded network id).
#[derive(Debug, PartialEq, Eq)]
pub struct NetworkPlan {
    /// Made unless they exist, then their peers programmed: ingress, and networks in use.
    pub ensure: Vec<u32>,
    /// Listed but used by no task here: peers programmed if they exist, not made.
    pub keep: Vec<u32>,
    /// Namespaces of networks neither listed nor in use.
    pub remove: Vec<u32>,
}

pub fn plan_networks(
    state: &NodeNetState,
    in_use: &BTreeSet<String>,
    existing: &BTreeMap<u32, Option<String>>,
) -> NetworkPlan {
    let mut ensure = Vec::new();
    let mut keep = Vec::new();
    for n in &state.networks {
        if n.ingress || in_use.contains(&n.id) {
            ensure.push(n.vni);
        } else if existing.contains_key(&n.vni) {
            keep.push(n.vni);
        }
    }
    let listed: BTreeSet<u32> = state.networks.iter().map(|n| n.vni).collect();
    let remove = existing
        .iter()
        .filter(|(vni, id)| {
            !listed.contains(vni) && !id.as_ref().is_some_and(|id| in_use.contains(id))
        })
        .map(|(vni, _)| *vni)
        .collect();
    NetworkPlan {
        ensure,
        keep,
        remove,
    }
}

fn missing(what: String) -> NetError {
    NetError::Netlink {
        what,
        source: Errno::ENODEV.into(),
    }
}

fn vxlan_local(link: &LinkMessage) -> Option<Ipv4Addr> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => v.iter().find_map(|x| match x {
                InfoVxlan::Local(ip) => Some(*ip),
                _ => None,
            }),
            _ => None,
        }),
        _ => None,
    })
}

fn mtu_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// The MTU of the node's interface that holds `ip`.
async fn underlay_mtu(node: &Handle, ip: Ipv4Addr) -> Result<u32, NetError> {
    let addrs: Vec<_> = node
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing the node's addresses"))?;
    let index = addrs
        .iter()
        .find(|a| {
            a.attributes.iter().any(|x| {
                matches!(x, AddressAttribute::Local(a) | AddressAttribute::Address(a)
                    if *a == IpAddr::V4(ip))
            })
        })
        .map(|a| a.header.index)
        .ok_or_else(|| NetError::Overlay {
            network: "(all)".into(),
            reason: format!(
                "no interface of this node holds the underlay address {ip}: advertise an \
                 address of this node"
            ),
        })?;
    let link = node
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .map_err(netlink(format!("looking up interface {index}")))?
        .ok_or_else(|| missing(format!("looking up interface {index}")))?;
    mtu_of(&link).ok_or_else(|| missing(format!("reading the MTU of interface {index}")))
}

/// Sets `index` up with `mtu`, optionally on a bridge.
async fn set_link(
    h: &Handle,
    index: u32,
    name: &str,
    mtu: u32,
    controller: Option<u32>,
) -> Result<(), NetError> {
    let mut m = LinkUnspec::new_with_index(index).mtu(mtu).up();
    if let Some(c) = controller {
        m = m.controller(c);
    }
    h.link()
        .set(m.build())
        .execute()
        .await
        .map_err(netlink(format!("setting up {name}")))
}

/// Removes the IPv4 addresses of `index` other than `keep`.
async fn remove_other_addresses(
    h: &Handle,
    index: u32,
    name: &str,
    keep: Ipv4Addr,
) -> Result<(), NetError> {
    let addrs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink(format!("listing the addresses of {name}")))?;
    for a in addrs {
        let stale = a
            .attributes
            .iter()
            .any(|x| matches!(x, AddressAttribute::Address(IpAddr::V4(ip)) if *ip != keep));
        if stale {
            let r = h
                .address()
                .del(a)
                .execute()
                .await
                .map_err(netlink(format!("removing an old address of {name}")));
            unless(Errno::EADDRNOTAVAIL, r)?;
        }
    }
    Ok(())
}

/// A veth with `ifname` (address, MAC from the address, MTU, up) in the namespace of
/// `inside`, its other end `peer` up on the network's bridge.
async fn ensure_endpoint(
    inside: &Handle,
    ifname: &str,
    net: &NetNs,
    peer: &str,
    addr: Ipv4Addr,
    prefix: u8,
) -> Result<(), NetError> {
    let mac = overlay_mac(addr).to_vec();
    let have_peer = link_index(&net.h, peer).await?.is_some();
    let mut index = link_index(inside, ifname).await?;
    if let (Some(i), false) = (index, have_peer) {
        // Its other end is not on this network (an earlier namespace of it): made again.
        let r = inside
            .link()
            .del(i)
            .execute()
            .await
            .map_err(netlink(format!("deleting {ifname}")));
        unless(Errno::ENODEV, r)?;
        index = None;
    }
    let index = match index {
        Some(i) => i,
        None => {
            // A bridge end without its pair is left from a setup cut short.
            delete_link(&net.h, peer).await?;
            let peer_msg = LinkUnspec::new_with_name(peer)
                .mtu(net.mtu)
                .setns_by_fd(net.file.as_raw_fd())
                .build();
            inside
                .link()
                .add(
                    LinkVeth::new(ifname, peer)
                        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
                        .mtu(net.mtu)
                        .address(mac.clone())
                        .build(),
                )
                .execute()
                .await
                .map_err(netlink(format!("creating the veth pair {ifname}/{peer}")))?;
            link_index(inside, ifname)
                .await?
                .ok_or_else(|| missing(format!("looking up {ifname} after creating it")))?
        }
    };
    inside
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .address(mac)
                .mtu(net.mtu)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(netlink(format!("setting up {ifname}")))?;
    remove_other_addresses(inside, index, ifname, addr).await?;
    add_address(inside, index, ifname, addr, prefix).await?;
    let peer_index = link_index(&net.h, peer)
        .await?
        .ok_or_else(|| missing(format!("looking up {peer}, the bridge end of {ifname}")))?;
    set_link(&net.h, peer_index, peer, net.mtu, Some(net.bridge)).await
}

fn lladdr(m: &NeighbourMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => l.as_slice().try_into().ok(),
        _ => None,
    })
}

fn destination(m: &NeighbourMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
            <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

async fn neighbours(
    h: &Handle,
    family: AddressFamily,
    what: &str,
) -> Result<Vec<NeighbourMessage>, NetError> {
    h.neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
        .map_err(netlink(format!("listing {what}")))
}

/// The VXLAN device's own FDB entries (not the bridge's entries about it).
async fn observed_fdb(h: &Handle, vxlan: u32) -> Result<BTreeSet<Fdb>, NetError> {
    Ok(
        neighbours(h, AddressFamily::Bridge, "the VXLAN forwarding entries")
            .await?
            .iter()
            .filter(|m| m.header.ifindex == vxlan && m.header.flags.contains(NeighbourFlags::Own))
            .filter_map(|m| Some((lladdr(m)?, destination(m)?)))
            .collect(),
    )
}

async fn observed_neigh(h: &Handle, vxlan: u32) -> Result<BTreeSet<Neigh>, NetError> {
    Ok(
        neighbours(h, AddressFamily::Inet, "the VXLAN neighbour entries")
            .await?
            .iter()
            .filter(|m| m.header.ifindex == vxlan)
            .filter_map(|m| {
                let ip = destination(m)?;
                let permanent = m.header.state == NeighbourState::Permanent;
                Some((ip, lladdr(m).unwrap_or_default(), permanent))
            })
            .collect(),
    )
}

fn fdb_message(vxlan: u32, (mac, dst): Fdb) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = vxlan;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.attributes = vec![
        NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
        NeighbourAttribute::Destination(NeighbourAddress::Other(dst.octets().to_vec())),
    ];
    m
}

fn neigh_message(vxlan: u32, ip: Ipv4Addr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = vxlan;
    m.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(ip))];
    m
}

fn mac_str(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Makes the VXLAN device's FDB and neighbour entries exactly `peers`.
async fn sync_peers(net: &NetNs, peers: &[NetPeer]) -> Result<(), NetError> {
    let h = &net.h;
    let (add, remove) = diff(&observed_fdb(h, net.vxlan).await?, &wanted_fdb(peers));
    for e in remove {
        let r = h
            .neighbours()
            .del(fdb_message(net.vxlan, e))
            .execute()
            .await
            .map_err(netlink(format!(
                "removing the forwarding entry {} → {}",
                mac_str(&e.0),
                e.1
            )));
        unless(Errno::ENOENT, r)?;
    }
    for e in add {
        let mut req = h.neighbours().add_bridge(net.vxlan, &e.0).replace();
        *req.message_mut() = fdb_message(net.vxlan, e);
        req.execute().await.map_err(netlink(format!(
            "adding the forwarding entry {} → {}",
            mac_str(&e.0),
            e.1
        )))?;
    }

    let (add, remove) = diff(&observed_neigh(h, net.vxlan).await?, &wanted_neigh(peers));
    for (ip, _, _) in remove {
        let r = h
            .neighbours()
            .del(neigh_message(net.vxlan, ip))
            .execute()
            .await
            .map_err(netlink(format!("removing the neighbour entry {ip}")));
        unless(Errno::ENOENT, r)?;
    }
    for (ip, mac, _) in add {
        h.neighbours()
            .add(net.vxlan, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(netlink(format!(
                "adding the neighbour entry {ip} → {}",
                mac_str(&mac)
            )))?;
    }
    Ok(())
}

impl Overlay {
    /// `dir`: the node's network directory (`<data dir>/net`, shared with
    /// [`crate::local::LocalNet`]). The node's namespace is the calling thread's.
    pub fn new(dir: &Path) -> Result<Overlay, NetError> {
        let node_ns = fs::File::open("/proc/thread-self/ns/net")
            .map_err(io("opening this node's network namespace"))?;
        let node_ip = fs::read_to_string(dir.join("overlay").join("node_ip"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Ok(Overlay {
            dir: dir.to_path_buf(),
            node_ns,
            node_ip: std::sync::Mutex::new(node_ip),
            busy: tokio::sync::Mutex::new(()),
        })
    }

    /// The namespace file of the network with `vni`.
    pub fn netns_path(&self, vni: u32) -> PathBuf {
        self.dir.join("ns").join(format!("ov-{vni}"))
    }

    fn records(&self) -> PathBuf {
        self.dir.join("overlay")
    }

    fn node_ip(&self) -> Option<Ipv4Addr> {
        *self.node_ip.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_node_ip(&self, ip: Ipv4Addr) -> Result<(), NetError> {
        *self.node_ip.lock().unwrap_or_else(|e| e.into_inner()) = Some(ip);
        let records = self.records();
        fs::create_dir_all(&records).map_err(io(format!("creating {}", records.display())))?;
        let path = records.join("node_ip");
        if fs::read_to_string(&path).ok().as_deref() != Some(ip.to_string().as_str()) {
            fs::write(&path, ip.to_string()).map_err(io(format!("writing {}", path.display())))?;
        }
        Ok(())
    }

    async fn node_netlink(&self) -> Result<Handle, NetError> {
        let ns = self
            .node_ns
            .try_clone()
            .map_err(io("duplicating the node's namespace handle"))?;
        netlink_in(ns, "talking to the node's network namespace").await
    }

    /// The network namespaces that exist, with the network id each was made for.
    fn existing(&self) -> BTreeMap<u32, Option<String>> {
        let Ok(entries) = fs::read_dir(self.dir.join("ns")) else {
            return BTreeMap::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let vni: u32 = name.to_str()?.strip_prefix("ov-")?.parse().ok()?;
                let id = fs::read_to_string(self.records().join(vni.to_string())).ok();
                Some((vni, id))
            })
            .collect()
    }

    /// The network's namespace with `br0` and its VXLAN device, made where missing.
    async fn ensure_network(&self, node: &Handle, net: Net<'_>) -> Result<NetNs, NetError> {
        let records = self.records();
        fs::create_dir_all(&records).map_err(io(format!("creating {}", records.display())))?;
        let record = records.join(net.vni.to_string());
        if fs::read_to_string(&record).ok().as_deref() != Some(net.id) {
            fs::write(&record, net.id).map_err(io(format!("writing {}", record.display())))?;
        }
        let path = self.netns_path(net.vni);
        ensure_netns(&path).await?;
        let file = fs::File::open(&path).map_err(io(format!("opening {}", path.display())))?;
        let h = netlink_in(
            file.try_clone()
                .map_err(io("duplicating the network's namespace handle"))?,
            &format!("talking to the namespace of network {}", net.name),
        )
        .await?;
        if let Some(lo) = link_index(&h, "lo").await? {
            set_up(&h, lo, "lo").await?;
        }

        let vx_name = vxlan_ifname(net.vni);
        let node_ip = self.node_ip();
        let existing = get_link(&h, &vx_name).await?;
        let kept = match (&existing, node_ip) {
            (Some(l), Some(ip)) if vxlan_local(l) == Some(ip) => existing.as_ref(),
            // The underlay address is unknown yet: what exists is the best there is.
            (Some(_), None) => existing.as_ref(),
            _ => None,
        };
        let (vxlan, mtu) = match kept {
            Some(l) => (l.header.index, mtu_of(l).unwrap_or(1450)),
            None => {
                let ip = node_ip.ok_or_else(|| NetError::Overlay {
                    network: net.name.to_string(),
                    reason: "this node's underlay address is not known yet (it comes with the \
                             node's network state)"
                        .into(),
                })?;
                let mtu = underlay_mtu(node, ip).await?.saturating_sub(VXLAN_OVERHEAD);
                if let Some(old) = &existing {
                    // Made for another underlay address.
                    let r = h
                        .link()
                        .del(old.header.index)
                        .execute()
                        .await
                        .map_err(netlink(format!("deleting {vx_name}")));
                    unless(Errno::ENODEV, r)?;
                }
                delete_link(node, &vx_name).await?;
                node.link()
                    .add(
                        LinkVxlan::new(&vx_name, net.vni)
                            .local(ip)
                            .port(VXLAN_PORT)
                            .learning(false)
                            .proxy(true)
                            .mtu(mtu)
                            .setns_by_fd(file.as_raw_fd())
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(netlink(format!(
                        "creating {vx_name} (VNI {}, local {ip}) for network {}",
                        net.vni, net.name
                    )))?;
                let index = link_index(&h, &vx_name)
                    .await?
                    .ok_or_else(|| missing(format!("looking up {vx_name} after creating it")))?;
                (index, mtu)
            }
        };

        let bridge = match link_index(&h, BRIDGE).await? {
            Some(i) => i,
            None => {
                let r = h
                    .link()
                    .add(LinkBridge::new(BRIDGE).mtu(mtu).build())
                    .execute()
                    .await
                    .map_err(netlink(format!(
                        "creating {BRIDGE} for network {}",
                        net.name
                    )));
                unless(Errno::EEXIST, r)?;
                link_index(&h, BRIDGE)
                    .await?
                    .ok_or_else(|| missing(format!("looking up {BRIDGE} after creating it")))?
            }
        };
        set_link(&h, bridge, BRIDGE, mtu, None).await?;
        set_link(&h, vxlan, &vx_name, mtu, Some(bridge)).await?;
        Ok(NetNs {
            file,
            h,
            bridge,
            vxlan,
            mtu,
        })
    }

    /// Deletes a network's devices, then its namespace and record (idempotent).
    async fn remove_network(&self, node: &Handle, vni: u32) -> Result<(), NetError> {
        let path = self.netns_path(vni);
        let links = if crate::local::is_mountpoint(&path) {
            // Deleted now rather than when the namespace goes: the VXLAN device holds its VNI
            // in the node's namespace, and task ends vanish with their pairs.
            let file = fs::File::open(&path).map_err(io(format!("opening {}", path.display())))?;
            let h = netlink_in(file, "talking to a network's namespace").await?;
            let all: Vec<LinkMessage> = h
                .link()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(netlink("listing a network's interfaces"))?;
            let mut first = Ok(());
            for l in all.iter().filter(|l| {
                !l.attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::IfName(n) if n == "lo"))
            }) {
                let r = h
                    .link()
                    .del(l.header.index)
                    .execute()
                    .await
                    .map_err(netlink(format!(
                        "deleting interface {} of VNI {vni}",
                        l.header.index
                    )));
                first = first.and(unless(Errno::ENODEV, r));
            }
            first
        } else {
            Ok(())
        };
        let stray = delete_link(node, &vxlan_ifname(vni)).await;
        let ns = remove_netns(&path);
        let record = self.records().join(vni.to_string());
        let record = match fs::remove_file(&record) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io(format!("removing {}", record.display()))(e))
            }
            _ => Ok(()),
        };
        links.and(stray).and(ns).and(record)
    }

    /// Connects the task's namespace to each of `nets`: `eth{i}` for the i-th, with the
    /// task's address and MAC, its other end on the network's bridge. Networks are made
    /// where missing. Idempotent.
    pub async fn attach(
        &self,
        task_id: &str,
        task_ns: &Path,
        nets: &[TaskNetwork],
    ) -> Result<(), NetError> {
        if nets.is_empty() {
            return Ok(());
        }
        let _busy = self.busy.lock().await;
        let node = self.node_netlink().await?;
        let file = fs::File::open(task_ns).map_err(io(format!("opening {}", task_ns.display())))?;
        let task = netlink_in(file, "talking to the task's network namespace").await?;
        if let Some(lo) = link_index(&task, "lo").await? {
            set_up(&task, lo, "lo").await?;
        }
        let peer = task_peer_ifname(task_id);
        for (i, tn) in nets.iter().enumerate() {
            let prefix = prefix_len(&tn.network_name, &tn.subnet)?;
            let net = self
                .ensure_network(
                    &node,
                    Net {
                        id: &tn.network_id,
                        name: &tn.network_name,
                        vni: tn.vni,
                    },
                )
                .await?;
            ensure_endpoint(&task, &format!("eth{i}"), &net, &peer, tn.addr, prefix).await?;
        }
        Ok(())
    }

    /// Removes the task's veths from every network (idempotent; its namespace is the local
    /// network's to remove). Every network is tried; the first failure is returned.
    pub async fn detach(&self, task_id: &str) -> Result<(), NetError> {
        let _busy = self.busy.lock().await;
        let peer = task_peer_ifname(task_id);
        let mut first = Ok(());
        for vni in self.existing().into_keys() {
            let path = self.netns_path(vni);
            if !crate::local::is_mountpoint(&path) {
                continue;
            }
            let r = async {
                let file =
                    fs::File::open(&path).map_err(io(format!("opening {}", path.display())))?;
                let h = netlink_in(file, "talking to a network's namespace").await?;
                delete_link(&h, &peer).await
            }
            .await;
            first = first.and(r);
        }
        first
    }

    /// Reconciles the node's overlays with `state`: the networks it lists that are ingress
    /// or used by a local task (`in_use`: network ids) exist, each VXLAN device's FDB and
    /// neighbour entries are exactly the network's peers, networks neither listed nor in use
    /// are removed, the ingress sandbox matches `state.ingress_addr`, and the node forwards
    /// IPv4. Every network is tried; the first failure is returned.
    pub async fn apply(
        &self,
        state: &NodeNetState,
        in_use: &BTreeSet<String>,
    ) -> Result<(), NetError> {
        let _busy = self.busy.lock().await;
        if let Some(ip) = state.node_ip {
            self.set_node_ip(ip)?;
        }
        let mut first = self.enable_forwarding().await;
        let node = self.node_netlink().await?;
        let plan = plan_networks(state, in_use, &self.existing());
        for vni in &plan.remove {
            first = first.and(self.remove_network(&node, *vni).await);
        }
        let mut ingress = None;
        for n in &state.networks {
            if !plan.ensure.contains(&n.vni) && !plan.keep.contains(&n.vni) {
                continue;
            }
            let r = async {
                let net = self
                    .ensure_network(
                        &node,
                        Net {
                            id: &n.id,
                            name: &n.name,
                            vni: n.vni,
                        },
                    )
                    .await?;
                sync_peers(&net, &n.peers).await?;
                Ok::<_, NetError>(net)
            }
            .await;
            match r {
                Ok(net) if n.ingress => ingress = Some((n, net)),
                Ok(_) => {}
                Err(e) => first = first.and(Err(e)),
            }
        }
        let sandbox = match (state.ingress_addr, ingress) {
            (Some(addr), Some((n, net))) => match prefix_len(&n.name, &n.subnet) {
                Ok(prefix) => {
                    ensure_endpoint(&node, SANDBOX, &net, SANDBOX_PEER, addr, prefix).await
                }
                Err(e) => Err(e),
            },
            _ => delete_link(&node, SANDBOX).await,
        };
        first.and(sandbox)
    }

    /// `net.ipv4.ip_forward=1` in the node's namespace (the routing mesh forwards through it).
    async fn enable_forwarding(&self) -> Result<(), NetError> {
        let ns = self
            .node_ns
            .try_clone()
            .map_err(io("duplicating the node's namespace handle"))?;
        on_thread("enabling IPv4 forwarding", move || {
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(sys("entering the node's network namespace"))?;
            let path = "/proc/sys/net/ipv4/ip_forward";
            if fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
                return Ok(());
            }
            fs::write(path, "1").map_err(io(format!("writing 1 to {path}")))
        })
        .await
    }

    /// The FDB and neighbour entries of the network's VXLAN device (empty when the network
    /// does not exist here), as MAC → underlay address and address → MAC.
    pub async fn observed_peers(&self, vni: u32) -> Result<PeerEntries, NetError> {
        let path = self.netns_path(vni);
        if !crate::local::is_mountpoint(&path) {
            return Ok(PeerEntries::default());
        }
        let file = fs::File::open(&path).map_err(io(format!("opening {}", path.display())))?;
        let h = netlink_in(file, "talking to a network's namespace").await?;
        let Some(vxlan) = link_index(&h, &vxlan_ifname(vni)).await? else {
            return Ok(PeerEntries::default());
        };
        Ok(PeerEntries {
            fdb: observed_fdb(&h, vxlan).await?,
            neighbours: observed_neigh(&h, vxlan)
                .await?
                .into_iter()
                .map(|(ip, mac, _)| (ip, mac))
                .collect(),
        })
    }

    /// Removes every overlay network and the sandbox (the node leaves the swarm). Every step
    /// is tried; the first failure is returned.
    pub async fn teardown(&self) -> Result<(), NetError> {
        let _busy = self.busy.lock().await;
        let node = self.node_netlink().await?;
        let mut first = delete_link(&node, SANDBOX).await;
        for vni in self.existing().into_keys() {
            first = first.and(self.remove_network(&node, vni).await);
        }
        let _ = fs::remove_file(self.records().join("node_ip"));
        *self.node_ip.lock().unwrap_or_else(|e| e.into_inner()) = None;
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto::spec::NetworkState;

    fn net(id: &str, vni: u32, ingress: bool) -> NetworkState {
        NetworkState {
            id: id.into(),
            name: id.into(),
            vni,
            subnet: "10.0.0.0/24".into(),
            ingress,
            ..Default::default()
        }
    }

    #[test]
    fn names_fit_the_kernel_limit() {
        assert_eq!(vxlan_ifname(16_777_215), "vx-16777215");
        let n = task_peer_ifname("abcdefghijklmnopqrstuvwxyz");
        assert_eq!(n, "vtabcdefghijklm");
        assert!(n.len() <= 15);
    }

    #[test]
    fn subnets_give_their_prefix_or_a_clear_error() {
        assert_eq!(prefix_len("n", "10.0.1.0/24").unwrap(), 24);
        assert_eq!(prefix_len("n", "10.255.0.0/16").unwrap(), 16);
        for bad in ["10.0.1.0", "10.0.1.0/33", "x/24", ""] {
            let e = prefix_len("front", bad).unwrap_err().to_string();
            assert!(e.contains("front") && e.contains("10.0.1.0/24"), "{e}");
        }
    }

    #[test]
    fn networks_are_made_for_ingress_and_use_and_removed_when_neither_listed_nor_used() {
        let state = NodeNetState {
            networks: vec![
                net("ing", 4096, true),
                net("a", 10, false),
                net("b", 11, false),
            ],
            ..Default::default()
        };
        let in_use: BTreeSet<String> = ["a".to_string(), "c".to_string()].into();
        let existing: BTreeMap<u32, Option<String>> = [
            (11, Some("b".into())),
            (12, Some("c".into())),
            (13, Some("d".into())),
            (14, None),
        ]
        .into();
        let plan = plan_networks(&state, &in_use, &existing);
        assert_eq!(
            plan,
            NetworkPlan {
                ensure: vec![4096, 10],
                keep: vec![11],
                remove: vec![13, 14],
            }
        );
    }

    #[test]
    fn peers_become_one_entry_per_address() {
        let peers = vec![
            NetPeer {
                addr: Ipv4Addr::new(10, 0, 0, 3),
                node_ip: Ipv4Addr::new(192, 168, 0, 2),
            },
            NetPeer {
                addr: Ipv4Addr::new(10, 0, 0, 3),
                node_ip: Ipv4Addr::new(192, 168, 0, 4),
            },
        ];
        let mac = [0x02, 0x42, 10, 0, 0, 3];
        assert_eq!(
            wanted_fdb(&peers),
            [(mac, Ipv4Addr::new(192, 168, 0, 4))].into()
        );
        assert_eq!(
            wanted_neigh(&peers),
            [(Ipv4Addr::new(10, 0, 0, 3), mac, true)].into()
        );
    }

    #[test]
    fn fdb_messages_carry_the_mac_and_underlay_address() {
        let m = fdb_message(7, ([2, 0x42, 10, 0, 0, 3], Ipv4Addr::new(192, 168, 1, 2)));
        assert_eq!(lladdr(&m), Some([2, 0x42, 10, 0, 0, 3]));
        assert_eq!(destination(&m), Some(Ipv4Addr::new(192, 168, 1, 2)));
        assert!(m.header.flags.contains(NeighbourFlags::Own));
        assert_eq!(mac_str(&[2, 0x42, 10, 0, 0, 3]), "02:42:0a:00:00:03");
    }

    proptest! {
        #[test]
        fn diff_turns_observed_into_wanted(
            observed in proptest::collection::btree_set(0u8..20, 0..10),
            wanted in proptest::collection::btree_set(0u8..20, 0..10),
        ) {
            let (add, remove) = diff(&observed, &wanted);
            let mut result = observed.clone();
            for r in &remove {
                prop_assert!(result.remove(r));
            }
            for a in &add {
                prop_assert!(result.insert(*a));
            }
            prop_assert_eq!(result, wanted);
        }
    }
}
