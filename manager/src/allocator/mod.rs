//! The allocator: subnets, VNIs and gateways for networks, VIPs and published ports for
//! services, addresses for tasks and for nodes' ingress sandboxes.
//!
//! ```text
//!   CreateNetwork txn ──▶ new_network        (subnet from the pool, VNI, gateway)
//!   Create/UpdateService txn ──▶ allocate_endpoint (VIP per network, published ports)
//!   orchestrator create_task ──▶ task_networks    (one address per network, ingress first)
//!   orchestrator round ──▶ node_ingress_ops       (a sandbox address per node)
//! ```
//!
//! Everything here is a pure function of a store view; the store's `apply_txn` refuses a
//! transaction that would give one address to two holders, so a writer that decided on a
//! stale view retries instead of double-allocating.

pub mod ipam;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use proto::spec::{
    EndpointMode, NetworkSpec, PortConfig, PortProtocol, PublishMode, ServiceSpec, TaskNetwork,
};

use crate::store::{
    default_addr_pool, default_addr_pool_mask_len, ports_clash, Network, Object, Op,
    ServiceEndpoint, StoreData,
};
pub use ipam::Cidr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error(
        "invalid {field} {value:?}: expected an IPv4 CIDR such as 10.1.0.0/24 (no host bits set)"
    )]
    InvalidCidr { field: &'static str, value: String },
    #[error("--subnet {0} is too small: use a /29 or larger")]
    SubnetTooSmall(String),
    #[error("invalid --gateway {0:?}: expected an IPv4 address")]
    InvalidGateway(String),
    #[error("--gateway {gateway} is not a host address of --subnet {subnet}; pick one inside it")]
    GatewayOutside { gateway: String, subnet: String },
    #[error(
        "--subnet {subnet} overlaps network {network} ({other}); choose a subnet that does not"
    )]
    SubnetOverlap {
        subnet: String,
        network: String,
        other: String,
    },
    #[error(
        "--subnet {subnet} holds the address {addr} of node {node}; choose a subnet that no node's address is in"
    )]
    SubnetHoldsNode {
        subnet: String,
        node: String,
        addr: Ipv4Addr,
    },
    #[error(
        "default address pool mask length {mask} must be between {min} (the pool's prefix) and 29"
    )]
    InvalidMaskLen { mask: u32, min: u8 },
    #[error("no free /{mask} subnet is left in the default address pool ({pool}); pass --subnet")]
    PoolExhausted { mask: u8, pool: String },
    #[error("no VXLAN id is left for a new network; remove unused networks")]
    VniExhausted,
    #[error("network {0} has no free address left; remove tasks or services from it")]
    NoAddress(String),
    #[error("no port is free in the dynamic range 30000-32767 for {0}; publish an explicit port")]
    PortsExhausted(String),
    #[error(
        "port {port}/{protocol} cannot be published: the nodes use it for {purpose}; publish another port"
    )]
    PortReserved {
        port: u16,
        protocol: &'static str,
        purpose: String,
    },
    #[error("port {port}/{protocol} is already published by service {service}")]
    PortInUse {
        port: u16,
        protocol: &'static str,
        service: String,
    },
}

/// The pool and mask length for a new cluster: defaults filled in, then checked.
pub fn validate_pool(pool: &[String], mask_len: u32) -> Result<(Vec<String>, u8), AllocError> {
    let pool = if pool.is_empty() {
        default_addr_pool()
    } else {
        pool.to_vec()
    };
    let cidrs = parse_pool(&pool)?;
    let mask = if mask_len == 0 {
        default_addr_pool_mask_len() as u32
    } else {
        mask_len
    };
    let min = cidrs.iter().map(|c| c.prefix()).max().unwrap_or(0);
    if mask < min as u32 || mask > ipam::MAX_PREFIX as u32 {
        return Err(AllocError::InvalidMaskLen { mask, min });
    }
    Ok((pool, mask as u8))
}

fn parse_pool(pool: &[String]) -> Result<Vec<Cidr>, AllocError> {
    pool.iter()
        .map(|p| {
            p.parse().map_err(|_| AllocError::InvalidCidr {
                field: "--default-addr-pool",
                value: p.clone(),
            })
        })
        .collect()
}

/// A new network for `spec`: its subnet (the spec's, checked against every other network,
/// or the next free one of the pool), VNI and gateway. `pool`/`mask_len`: the cluster's.
pub fn new_network(
    d: &StoreData,
    spec: &NetworkSpec,
    pool: &[String],
    mask_len: u8,
    id: String,
    now_ms: i64,
) -> Result<Network, AllocError> {
    let used: Vec<(Cidr, &Network)> = d
        .networks
        .values()
        .filter_map(|n| Some((n.subnet.parse().ok()?, n)))
        .collect();
    // The nodes' own addresses: an overlay holding one would route the node's underlay
    // traffic into the overlay.
    let node_addrs: Vec<(Ipv4Addr, &str)> = d
        .nodes
        .values()
        .filter_map(|n| {
            let ip = match n.description.addr.parse::<std::net::SocketAddr>() {
                Ok(a) => a.ip(),
                Err(_) => n.description.addr.parse().ok()?,
            };
            match ip {
                std::net::IpAddr::V4(v4) => Some((v4, n.description.hostname.as_str())),
                std::net::IpAddr::V6(_) => None,
            }
        })
        .collect();
    let subnet: Cidr = if spec.subnet.is_empty() {
        let pools = parse_pool(pool)?;
        let taken: Vec<Cidr> = used
            .iter()
            .map(|(c, _)| *c)
            .chain(node_addrs.iter().filter_map(|(a, _)| Cidr::new(*a, 32)))
            .collect();
        ipam::next_subnet(&pools, mask_len, &taken).ok_or_else(|| AllocError::PoolExhausted {
            mask: mask_len,
            pool: pool.join(", "),
        })?
    } else {
        let c: Cidr = spec.subnet.parse().map_err(|_| AllocError::InvalidCidr {
            field: "--subnet",
            value: spec.subnet.clone(),
        })?;
        if c.prefix() > ipam::MAX_PREFIX {
            return Err(AllocError::SubnetTooSmall(spec.subnet.clone()));
        }
        if let Some((o, n)) = used.iter().find(|(o, _)| o.overlaps(&c)) {
            return Err(AllocError::SubnetOverlap {
                subnet: c.to_string(),
                network: n.spec.name.clone(),
                other: o.to_string(),
            });
        }
        if let Some((a, node)) = node_addrs.iter().find(|(a, _)| c.contains(*a)) {
            return Err(AllocError::SubnetHoldsNode {
                subnet: c.to_string(),
                node: node.to_string(),
                addr: *a,
            });
        }
        c
    };
    let gateway = if spec.gateway.is_empty() {
        subnet.first_host()
    } else {
        let g: Ipv4Addr = spec
            .gateway
            .parse()
            .map_err(|_| AllocError::InvalidGateway(spec.gateway.clone()))?;
        if !subnet.is_host(g) {
            return Err(AllocError::GatewayOutside {
                gateway: spec.gateway.clone(),
                subnet: subnet.to_string(),
            });
        }
        g
    };
    let vnis: BTreeSet<u32> = d.networks.values().map(|n| n.vni).collect();
    let vni = ipam::next_vni(&vnis).ok_or(AllocError::VniExhausted)?;
    let mut spec = spec.clone();
    if spec.driver.is_empty() {
        spec.driver = "overlay".into();
    }
    Ok(Network {
        id,
        version: 0,
        spec,
        vni,
        subnet: subnet.to_string(),
        gateway,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    })
}

/// The `ingress` network of a new cluster, from its pool (see [`validate_pool`]).
pub fn ingress_network(
    pool: &[String],
    mask_len: u8,
    id: String,
    now_ms: i64,
) -> Result<Network, AllocError> {
    let spec = NetworkSpec {
        name: "ingress".into(),
        driver: "overlay".into(),
        ingress: true,
        ..Default::default()
    };
    new_network(&StoreData::default(), &spec, pool, mask_len, id, now_ms)
}

/// Whether a service's ports put it on the routing mesh.
pub fn uses_ingress(ports: &[PortConfig]) -> bool {
    ports.iter().any(|p| p.publish_mode == PublishMode::Ingress)
}

/// The networks a service's tasks join, in interface order: ingress first when the service
/// publishes ports in ingress mode, then the spec's (targets as stored: network ids), with
/// the aliases of each. Networks that do not exist are left out.
pub fn service_networks<'a>(
    d: &'a StoreData,
    spec: &ServiceSpec,
) -> Vec<(&'a Network, Vec<String>)> {
    let mut out = Vec::new();
    if uses_ingress(&spec.endpoint.ports) {
        if let Some(n) = d.ingress_network() {
            out.push((n, Vec::new()));
        }
    }
    for a in &spec.task.networks {
        if let Some(n) = d.networks.get(&a.target) {
            if !out.iter().any(|(o, _): &(&Network, _)| o.id == n.id) {
                out.push((n, a.aliases.clone()));
            }
        }
    }
    out
}

/// A free address on network `n` for the holder `seed` (an id), not in `extra`.
pub fn pick_addr(
    d: &StoreData,
    n: &Network,
    seed: &str,
    extra: &BTreeSet<(String, Ipv4Addr)>,
) -> Result<Ipv4Addr, AllocError> {
    let subnet: Cidr = n.subnet.parse().map_err(|_| AllocError::InvalidCidr {
        field: "subnet",
        value: n.subnet.clone(),
    })?;
    ipam::pick_addr(&subnet, n.gateway, ipam::seed_of(seed), |a| {
        d.addr_holder(&n.id, a).is_some() || extra.contains(&(n.id.clone(), a))
    })
    .ok_or_else(|| AllocError::NoAddress(n.spec.name.clone()))
}

/// The endpoint of service `id` with spec `spec`: VIPs kept from `old` for the networks it
/// stays on, new ones for networks it joins (vip mode only), and published ports resolved
/// (a port the spec leaves at 0 keeps the one picked before, else the lowest free one).
/// The ports the nodes use themselves, and what for: [`proto::spec::NODE_PORTS`] and the
/// port of every manager's address (a manager may listen elsewhere than on 2377).
pub fn node_ports(d: &StoreData) -> BTreeMap<(u16, PortProtocol), String> {
    let mut ports: BTreeMap<(u16, PortProtocol), String> = proto::spec::NODE_PORTS
        .iter()
        .map(|(proto, port, what)| ((*port, *proto), what.to_string()))
        .collect();
    for n in d.nodes.values().filter(|n| {
        n.role == proto::security::Role::Manager || n.desired_role == proto::security::Role::Manager
    }) {
        if let Ok(a) = n.description.addr.parse::<std::net::SocketAddr>() {
            ports
                .entry((a.port(), PortProtocol::Tcp))
                .or_insert_with(|| {
                    format!("the control port of manager {}", n.description.hostname)
                });
        }
    }
    ports
}

pub fn allocate_endpoint(
    d: &StoreData,
    id: &str,
    spec: &ServiceSpec,
    old: &ServiceEndpoint,
) -> Result<ServiceEndpoint, AllocError> {
    let reserved = node_ports(d);
    if let Some((p, purpose)) = spec.endpoint.ports.iter().find_map(|p| {
        reserved
            .get(&(p.published_port, p.protocol))
            .map(|what| (p, what))
    }) {
        return Err(AllocError::PortReserved {
            port: p.published_port,
            protocol: p.protocol.as_str(),
            purpose: purpose.clone(),
        });
    }
    let others: Vec<(&str, &PortConfig)> = d
        .services
        .values()
        .filter(|s| s.id != id)
        .flat_map(|s| s.endpoint.ports.iter().map(|p| (s.spec.name.as_str(), p)))
        .collect();
    let mut taken: BTreeSet<(u16, PortProtocol)> = others
        .iter()
        .map(|(_, p)| (p.published_port, p.protocol))
        .chain(reserved.keys().copied())
        .collect();
    taken.extend(
        spec.endpoint
            .ports
            .iter()
            .filter(|p| p.published_port != 0)
            .map(|p| (p.published_port, p.protocol)),
    );
    let mut ports: Vec<PortConfig> = Vec::new();
    for p in &spec.endpoint.ports {
        let mut r = p.clone();
        if r.published_port == 0 {
            let kept = old
                .ports
                .iter()
                .find(|o| {
                    o.target_port == p.target_port
                        && o.protocol == p.protocol
                        && o.publish_mode == p.publish_mode
                        && !ports.iter().any(|x| x.published_port == o.published_port)
                        && !reserved.contains_key(&(o.published_port, o.protocol))
                        && !others.iter().any(|(_, q)| ports_clash(o, q))
                })
                .map(|o| o.published_port);
            r.published_port = match kept {
                Some(k) => k,
                None => ipam::pick_port(p.protocol, &taken).ok_or_else(|| {
                    AllocError::PortsExhausted(format!(
                        "target port {}/{}",
                        p.target_port,
                        p.protocol.as_str()
                    ))
                })?,
            };
            taken.insert((r.published_port, r.protocol));
        }
        if let Some((name, _)) = others.iter().find(|(_, q)| ports_clash(&r, q)) {
            return Err(AllocError::PortInUse {
                port: r.published_port,
                protocol: r.protocol.as_str(),
                service: name.to_string(),
            });
        }
        ports.push(r);
    }
    let mut vips = BTreeMap::new();
    if spec.endpoint.mode == EndpointMode::Vip {
        let mut fresh = BTreeSet::new();
        let mut ep = spec.clone();
        ep.endpoint.ports = ports.clone();
        for (n, _) in service_networks(d, &ep) {
            let a = match old.vips.get(&n.id) {
                Some(a) => *a,
                None => {
                    let a = pick_addr(d, n, id, &fresh)?;
                    fresh.insert((n.id.clone(), a));
                    a
                }
            };
            vips.insert(n.id.clone(), a);
        }
    }
    Ok(ServiceEndpoint { vips, ports })
}

/// A new task's place on each network of its service, all or none; `taken` holds addresses
/// given out earlier in the same plan (and receives these). A network without a free address
/// fails the whole: the task then waits, PENDING, until an address frees up (as Swarm's
/// allocator holds a task it cannot allocate) rather than running cut off from a network.
pub fn task_networks(
    d: &StoreData,
    spec: &ServiceSpec,
    task_id: &str,
    taken: &mut BTreeSet<(String, Ipv4Addr)>,
) -> Result<Vec<TaskNetwork>, AllocError> {
    if spec.task.networks.is_empty() && spec.endpoint.ports.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut mine = BTreeSet::new();
    for (n, aliases) in service_networks(d, spec) {
        let a = pick_addr(d, n, task_id, taken)?;
        mine.insert((n.id.clone(), a));
        out.push(TaskNetwork {
            network_id: n.id.clone(),
            network_name: n.spec.name.clone(),
            vni: n.vni,
            subnet: n.subnet.clone(),
            gateway: n.gateway,
            addr: a,
            internal: n.spec.internal,
            ingress: n.spec.ingress,
            aliases,
        });
    }
    taken.extend(mine);
    Ok(out)
}

/// Give every node without one an address on the ingress network (none if it does not
/// exist yet); `taken` holds addresses given out earlier in the same transaction (new
/// tasks' ones) and receives these.
pub fn node_ingress_ops(d: &StoreData, taken: &mut BTreeSet<(String, Ipv4Addr)>) -> Vec<Op> {
    let Some(ing) = d.ingress_network() else {
        return Vec::new();
    };
    let mut ops = Vec::new();
    for n in d.nodes.values().filter(|n| n.ingress_addr.is_none()) {
        match pick_addr(d, ing, &n.id, taken) {
            Ok(a) => {
                taken.insert((ing.id.clone(), a));
                let mut n = n.clone();
                n.ingress_addr = Some(a);
                ops.push(Op::Update(Object::Node(n)));
            }
            Err(e) => tracing::warn!(node = %n.id, error = %e, "no ingress address for node"),
        }
    }
    ops
}

#[cfg(test)]
pub(crate) mod tests;
