//! The network state nodes need for their overlays, load balancers and DNS, sent as
//! per-network and per-service deltas.
//!
//! A network's state (its endpoints, with the node that holds each) and a service's (ports,
//! VIPs, backends) are the same for every node that needs them, so the leader builds each
//! once per committed change ([`NetCache`]) and every session compares fingerprints: a change
//! costs work for the nodes subscribed to what changed, not a re-serialisation of every
//! node's whole state. A node subscribes to the networks its tasks use and ingress, and to
//! the services on those networks and every service with published ports.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use prost::Message;
use proto::pb;
use proto::spec::{EndpointMode, NodeNetState, TaskState};

use crate::store::{Change, Holder, Kind, NodeState, Object, Service, StoreData, Task};

/// Whether a task takes traffic: RUNNING, meant to run, on a ready node.
fn is_backend(d: &StoreData, t: &Task) -> bool {
    t.status.state == TaskState::Running
        && t.desired_state == TaskState::Running
        && d.nodes
            .get(&t.node_id)
            .is_some_and(|n| n.state == NodeState::Ready)
}

/// The IP part of an advertise address `IP:PORT` (or a bare IP).
fn node_ip(addr: &str) -> Option<Ipv4Addr> {
    addr.parse::<std::net::SocketAddr>()
        .ok()
        .and_then(|s| match s.ip() {
            std::net::IpAddr::V4(a) => Some(a),
            _ => None,
        })
        .or_else(|| addr.parse().ok())
}

fn hash(m: &impl Message) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.encode_to_vec().hash(&mut h);
    h.finish()
}

/// A network's state as every node that needs it gets it: all its endpoints on nodes with a
/// known address (each node leaves out its own).
fn network_state(d: &StoreData, net_id: &str) -> Option<pb::NetworkState> {
    let n = d.networks.get(net_id)?;
    let mut peers: Vec<(Ipv4Addr, Ipv4Addr, &str)> = Vec::new();
    for (addr, h) in d.addrs.get(net_id).into_iter().flatten() {
        let holder_node = match h {
            Holder::Task(id) => match d.tasks.get(id) {
                Some(t) => t.node_id.as_str(),
                None => continue,
            },
            Holder::Node(id) => id.as_str(),
            Holder::Service(_) => continue,
        };
        if holder_node.is_empty() {
            continue;
        }
        if let Some(ip) = d
            .nodes
            .get(holder_node)
            .and_then(|x| node_ip(&x.description.addr))
        {
            peers.push((*addr, ip, holder_node));
        }
    }
    peers.sort();
    Some(pb::NetworkState {
        id: n.id.clone(),
        name: n.spec.name.clone(),
        vni: n.vni,
        subnet: n.subnet.clone(),
        gateway: n.gateway.to_string(),
        internal: n.spec.internal,
        ingress: n.spec.ingress,
        peers: peers
            .into_iter()
            .map(|(addr, ip, node)| pb::NetPeer {
                addr: addr.to_string(),
                node_ip: ip.to_string(),
                node_id: node.to_string(),
            })
            .collect(),
    })
}

/// A service's state: its ports, its place on each network, its backends.
fn service_state(d: &StoreData, s: &Service) -> pb::ServiceNet {
    pb::ServiceNet {
        id: s.id.clone(),
        name: s.spec.name.clone(),
        mode: match s.spec.endpoint.mode {
            EndpointMode::Vip => pb::EndpointMode::Vip,
            EndpointMode::Dnsrr => pb::EndpointMode::Dnsrr,
        } as i32,
        ports: s.endpoint.ports.iter().map(Into::into).collect(),
        networks: crate::allocator::service_networks(d, &s.spec)
            .into_iter()
            .map(|(n, aliases)| pb::ServiceOnNetwork {
                network_id: n.id.clone(),
                vip: s
                    .endpoint
                    .vips
                    .get(&n.id)
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                aliases,
            })
            .collect(),
        backends: d
            .service_tasks(&s.id)
            .filter(|t| is_backend(d, t))
            .map(|t| pb::Backend {
                task_id: t.id.clone(),
                node_id: t.node_id.clone(),
                addrs: t
                    .networks
                    .iter()
                    .map(|n| pb::BackendAddr {
                        network_id: n.network_id.clone(),
                        addr: n.addr.to_string(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The networks node `node_id` needs: those its running-or-starting tasks are on, and
/// ingress.
fn node_networks<'a>(d: &'a StoreData, node_id: &str) -> BTreeSet<&'a str> {
    let mut nets: BTreeSet<&str> = d
        .node_tasks(node_id)
        .filter(|t| !t.status.state.is_terminal())
        .flat_map(|t| t.networks.iter().map(|n| n.network_id.as_str()))
        .collect();
    if let Some(i) = d.ingress_network() {
        nets.insert(i.id.as_str());
    }
    nets
}

/// Whether a node on `nets` needs service `s`.
fn wants_service(s: &Service, nets: &BTreeSet<&str>) -> bool {
    !s.endpoint.ports.is_empty()
        || s.spec
            .task
            .networks
            .iter()
            .any(|a| nets.contains(a.target.as_str()))
        || s.endpoint.vips.keys().any(|k| nets.contains(k.as_str()))
}

/// A network's or service's state as built at one committed change, with its fingerprint,
/// and the change from the state built before it when only that part changed (the endpoints
/// of a network, the backends of a service).
pub struct Entry<M, D> {
    computed_at: u64,
    msg: M,
    fp: u64,
    /// (fingerprint of the previous state, the change from it).
    delta: Option<(u64, D)>,
}

type NetEntry = Arc<Entry<pb::NetworkState, pb::PeerChanges>>;
type SvcEntry = Arc<Entry<pb::ServiceNet, pb::BackendChanges>>;

fn peer_changes(old: &pb::NetworkState, new: &pb::NetworkState) -> Option<pb::PeerChanges> {
    let head = |n: &pb::NetworkState| pb::NetworkState {
        peers: Vec::new(),
        ..n.clone()
    };
    if head(old) != head(new) {
        return None;
    }
    let key = |p: &pb::NetPeer| (p.addr.clone(), p.node_ip.clone(), p.node_id.clone());
    let before: std::collections::HashSet<_> = old.peers.iter().map(key).collect();
    let after: std::collections::HashSet<_> = new.peers.iter().map(key).collect();
    Some(pb::PeerChanges {
        network_id: new.id.clone(),
        added: new
            .peers
            .iter()
            .filter(|p| !before.contains(&key(p)))
            .cloned()
            .collect(),
        removed: old
            .peers
            .iter()
            .filter(|p| !after.contains(&key(p)))
            .cloned()
            .collect(),
    })
}

fn backend_changes(old: &pb::ServiceNet, new: &pb::ServiceNet) -> Option<pb::BackendChanges> {
    let head = |s: &pb::ServiceNet| pb::ServiceNet {
        backends: Vec::new(),
        ..s.clone()
    };
    if head(old) != head(new) {
        return None;
    }
    let before: HashMap<&str, &pb::Backend> = old
        .backends
        .iter()
        .map(|b| (b.task_id.as_str(), b))
        .collect();
    let after: BTreeSet<&str> = new.backends.iter().map(|b| b.task_id.as_str()).collect();
    Some(pb::BackendChanges {
        service_id: new.id.clone(),
        upsert: new
            .backends
            .iter()
            .filter(|b| before.get(b.task_id.as_str()) != Some(b))
            .cloned()
            .collect(),
        removed: old
            .backends
            .iter()
            .filter(|b| !after.contains(b.task_id.as_str()))
            .map(|b| b.task_id.clone())
            .collect(),
    })
}

/// The entry for `msg` built at `index`, following `old` (None if it did not change).
/// An unchanged state keeps the change that led to it (sessions still behind need it).
fn next_entry<M: Message, D: Clone>(
    old: Option<&Arc<Entry<M, D>>>,
    index: u64,
    msg: M,
    delta: impl FnOnce(&M, &M) -> Option<D>,
) -> Arc<Entry<M, D>> {
    let fp = hash(&msg);
    match old {
        Some(o) if o.fp == fp => Arc::new(Entry {
            computed_at: index,
            msg,
            fp,
            delta: o.delta.clone(),
        }),
        Some(o) => {
            let d = delta(&o.msg, &msg).map(|d| (o.fp, d));
            Arc::new(Entry {
                computed_at: index,
                msg,
                fp,
                delta: d,
            })
        }
        None => Arc::new(Entry {
            computed_at: index,
            msg,
            fp,
            delta: None,
        }),
    }
}

/// Network and service states built at most once per committed change, shared by every
/// session, each with the change from the state before it. An entry built at `index` is
/// valid for a session that handles the event of `index` or an earlier one (the store is
/// only ever newer); the first session at a later event builds it again.
#[derive(Default)]
pub struct NetCache {
    networks: HashMap<String, NetEntry>,
    services: HashMap<String, SvcEntry>,
}

impl NetCache {
    fn network(&mut self, d: &StoreData, index: Option<u64>, id: &str) -> Option<NetEntry> {
        let Some(index) = index else {
            return network_state(d, id).map(|m| next_entry(None, 0, m, peer_changes));
        };
        match self.networks.get(id) {
            Some(e) if e.computed_at >= index => return Some(e.clone()),
            _ => {}
        }
        let Some(msg) = network_state(d, id) else {
            self.networks.remove(id);
            return None;
        };
        let e = next_entry(self.networks.get(id), index, msg, peer_changes);
        self.networks.insert(id.to_string(), e.clone());
        Some(e)
    }

    fn service(&mut self, d: &StoreData, index: Option<u64>, s: &Service) -> SvcEntry {
        let Some(index) = index else {
            return next_entry(None, 0, service_state(d, s), backend_changes);
        };
        match self.services.get(&s.id) {
            Some(e) if e.computed_at >= index => return e.clone(),
            _ => {}
        }
        let e = next_entry(
            self.services.get(&s.id),
            index,
            service_state(d, s),
            backend_changes,
        );
        self.services.insert(s.id.clone(), e.clone());
        e
    }

    /// Forget services and networks that no longer exist.
    fn prune(&mut self, d: &StoreData) {
        self.networks.retain(|id, _| d.networks.contains_key(id));
        self.services.retain(|id, _| d.services.contains_key(id));
    }
}

/// What a session last sent its node: the fingerprint of each network's and service's state.
#[derive(Debug, Default)]
pub struct NodeNet {
    started: bool,
    node_ip: String,
    ingress_addr: String,
    networks: HashMap<String, u64>,
    services: HashMap<String, u64>,
}

impl NodeNet {
    /// Whether the node was sent any network or service.
    pub fn busy(&self) -> bool {
        !self.networks.is_empty() || !self.services.is_empty()
    }

    /// The update that brings node `node_id` to the state of `d` (the first one of a session
    /// is `full`), or None if nothing it needs changed. `index`: the committed change being
    /// handled (None: unknown, build without the cache).
    pub fn update(
        &mut self,
        d: &StoreData,
        cache: &mut NetCache,
        index: Option<u64>,
        node_id: &str,
    ) -> Option<pb::NetworkUpdate> {
        let full = !self.started;
        self.started = true;
        let me = d.nodes.get(node_id);
        let node_ip = me
            .and_then(|n| node_ip(&n.description.addr))
            .map(|a| a.to_string())
            .unwrap_or_default();
        let ingress_addr = me
            .and_then(|n| n.ingress_addr)
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut u = pb::NetworkUpdate {
            full,
            node_id: node_id.to_string(),
            ..Default::default()
        };
        let mut changed = full || node_ip != self.node_ip || ingress_addr != self.ingress_addr;
        u.node_ip = node_ip.clone();
        u.ingress_addr = ingress_addr.clone();
        self.node_ip = node_ip;
        self.ingress_addr = ingress_addr;
        if index.is_some_and(|i| i % 64 == 0) {
            cache.prune(d);
        }

        let nets = node_networks(d, node_id);
        let mut seen_nets = HashMap::with_capacity(nets.len());
        for id in &nets {
            let Some(e) = cache.network(d, index, id) else {
                continue;
            };
            match (self.networks.get(*id), &e.delta) {
                (Some(held), _) if *held == e.fp => {}
                (Some(held), Some((from, delta))) if *held == *from => {
                    u.peer_changes.push(delta.clone())
                }
                _ => u.networks.push(e.msg.clone()),
            }
            seen_nets.insert(id.to_string(), e.fp);
        }
        u.removed_networks = self
            .networks
            .keys()
            .filter(|id| !seen_nets.contains_key(*id))
            .cloned()
            .collect();
        self.networks = seen_nets;

        let mut seen_svcs = HashMap::new();
        for s in d.services.values().filter(|s| wants_service(s, &nets)) {
            let e = cache.service(d, index, s);
            match (self.services.get(&s.id), &e.delta) {
                (Some(held), _) if *held == e.fp => {}
                (Some(held), Some((from, delta))) if *held == *from => {
                    u.backend_changes.push(delta.clone())
                }
                _ => u.services.push(e.msg.clone()),
            }
            seen_svcs.insert(s.id.clone(), e.fp);
        }
        u.removed_services = self
            .services
            .keys()
            .filter(|id| !seen_svcs.contains_key(*id))
            .cloned()
            .collect();
        self.services = seen_svcs;

        changed |= !u.networks.is_empty()
            || !u.removed_networks.is_empty()
            || !u.services.is_empty()
            || !u.removed_services.is_empty()
            || !u.peer_changes.is_empty()
            || !u.backend_changes.is_empty();
        if full {
            u.removed_networks.clear();
            u.removed_services.clear();
        }
        changed.then_some(u)
    }
}

/// What node `node_id` needs to program its overlays, load balancers and DNS, as it puts it
/// together from the updates it is sent.
pub fn node_net_state(d: &StoreData, node_id: &str) -> NodeNetState {
    let u = NodeNet::default()
        .update(d, &mut NetCache::default(), None, node_id)
        .unwrap_or_default();
    proto::convert::NetAssembler::default().apply(u)
}

/// Whether a committed change may alter some node's network state. `net_active`: the
/// cluster has networks or the node was sent some state.
pub fn net_relevant(change: &Change, net_active: bool) -> bool {
    match change {
        Change::Put(Object::Network(_))
        | Change::Deleted {
            kind: Kind::Network,
            ..
        } => true,
        Change::Put(Object::Service(s)) => {
            !s.endpoint.vips.is_empty()
                || !s.endpoint.ports.is_empty()
                || !s.spec.task.networks.is_empty()
                || net_active
        }
        Change::Deleted {
            kind: Kind::Service,
            ..
        } => net_active,
        Change::Put(Object::Node(_))
        | Change::Deleted {
            kind: Kind::Node, ..
        } => net_active,
        Change::Put(Object::Task(t)) => {
            !t.networks.is_empty() || (net_active && t.status.state == TaskState::Running)
        }
        Change::Deleted {
            kind: Kind::Task, ..
        } => net_active,
        _ => false,
    }
}
