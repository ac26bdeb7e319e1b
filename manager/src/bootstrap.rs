//! A new cluster's first objects (`swarm init`): the cluster object with its root CA, join
//! tokens and settings, the ingress network, the first manager's node object and
//! certificate, and the key-encryption key that seals the CA key (wrapped with the unlock key
//! under autolock).
//!
//! [`first_objects`] makes them without side effects; the node saves the key file and its
//! identity, starts its manager and [`commit`]s them as the first raft entry.

use std::net::Ipv4Addr;
use std::time::Duration;

use proto::security::{new_key_and_csr, random_id, JoinToken, Role, RootCa};
use proto::transport::Identity;
use tonic::Status;

use crate::allocator::{self, ipam::Cidr};
use crate::error::ApiError;
use crate::keys::{Kek, KeyFile, UnlockKey};
use crate::limits::validate_settings;
use crate::manager::Manager;
use crate::store::{Cluster, Network, Node, NodeDescription, NodeState, Object, Op, Txn};

/// Certificates' lifetime when `swarm init` does not set one (Docker's 90 days).
pub const DEFAULT_CERT_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);

/// The cluster settings `swarm init` takes (0 / empty: the defaults).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub heartbeat_period_ms: u64,
    pub cert_expiry_ms: u64,
    pub default_addr_pool: Vec<String>,
    pub default_addr_pool_mask_len: u32,
    pub autolock: bool,
}

/// The first manager as the cluster will know it.
#[derive(Clone, Debug, Default)]
pub struct FirstNode {
    pub hostname: String,
    /// Address other nodes reach it at (IP:PORT).
    pub advertise_addr: String,
    /// Its own IPv4 addresses besides the advertised one (its interfaces'): the ingress
    /// network must hold none of them.
    pub local_addrs: Vec<Ipv4Addr>,
    pub nano_cpus: u64,
    pub memory_bytes: u64,
}

/// What `swarm init` creates.
pub struct FirstObjects {
    /// With the root CA's key sealed by `kek`.
    pub cluster: Cluster,
    pub ingress: Network,
    pub node: Node,
    /// The first manager's certificate and key.
    pub identity: Identity,
    pub kek: Kek,
    /// What the manager keeps on disk: the KEK, wrapped with the unlock key under autolock.
    pub key_file: KeyFile,
    pub unlock_key: Option<UnlockKey>,
}

impl FirstObjects {
    /// The cluster's first raft entry.
    pub fn txn(&self) -> Txn {
        Txn::new(vec![
            Op::Create(Object::Cluster(self.cluster.clone())),
            Op::Create(Object::Network(self.ingress.clone())),
            Op::Create(Object::Node(self.node.clone())),
        ])
    }
}

/// A new cluster's objects, checked: settings in range, a valid address pool, and an ingress
/// subnet that holds none of the first node's addresses.
pub fn first_objects(
    settings: &Settings,
    first: &FirstNode,
    now_ms: i64,
) -> Result<FirstObjects, Status> {
    validate_settings(settings.heartbeat_period_ms, settings.cert_expiry_ms)?;
    let (pool, mask) = allocator::validate_pool(
        &settings.default_addr_pool,
        settings.default_addr_pool_mask_len,
    )
    .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    let ingress = ingress_network(&pool, mask, &node_addrs(first), now_ms)?;
    let internal =
        |what: &'static str| move |e: proto::security::SecurityError| ApiError::internal(what, e);
    let cluster_id = random_id(25);
    let node_id = random_id(25);
    let ca = RootCa::generate(&cluster_id).map_err(internal("making the root CA"))?;
    let digest = ca.digest().map_err(internal("making the root CA"))?;
    let kek = Kek::generate().map_err(ApiError::from)?;
    let unlock_key = if settings.autolock {
        Some(UnlockKey::generate().map_err(ApiError::from)?)
    } else {
        None
    };
    let mut cluster = Cluster {
        id: cluster_id,
        version: 0,
        created_at_ms: now_ms,
        root_ca: ca,
        worker_token: JoinToken::generate(&digest).to_string(),
        manager_token: JoinToken::generate(&digest).to_string(),
        heartbeat_period_ms: match settings.heartbeat_period_ms {
            0 => crate::dispatcher::DEFAULT_HEARTBEAT.as_millis() as u64,
            ms => ms,
        },
        cert_expiry_ms: match settings.cert_expiry_ms {
            0 => DEFAULT_CERT_EXPIRY.as_millis() as u64,
            ms => ms,
        },
        removed_nodes: Default::default(),
        rebalance_on_join: false,
        default_addr_pool: pool,
        default_addr_pool_mask_len: mask,
        unlock_key: unlock_key
            .as_ref()
            .map(|u| kek.seal_unlock_key(u))
            .transpose()
            .map_err(ApiError::from)?,
        limits: Default::default(),
    };
    let (key_pem, csr) = new_key_and_csr().map_err(internal("making the node key"))?;
    let (cert_pem, not_after) = crate::ca::issue(&cluster, &csr, &node_id, Role::Manager)?;
    let identity = Identity::new(&cert_pem, &key_pem, &cluster.root_ca.cert_pem)
        .map_err(|e| ApiError::internal("the node certificate", e))?;
    // From here on the CA key exists only sealed.
    cluster.root_ca = kek.seal_root_ca(&cluster.root_ca).map_err(ApiError::from)?;
    let key_file = match &unlock_key {
        Some(u) => KeyFile::locked(&kek, u).map_err(ApiError::from)?,
        None => KeyFile::Clear(kek.clone()),
    };
    let node = Node {
        id: node_id,
        version: 0,
        // Random, as every manager's: ids must not repeat when managers join later.
        raft_id: (rand::random::<u64>() >> 1).max(1),
        role: Role::Manager,
        desired_role: Role::Manager,
        availability: Default::default(),
        labels: Default::default(),
        description: NodeDescription {
            hostname: first.hostname.clone(),
            addr: first.advertise_addr.clone(),
            platform: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
            engine_version: env!("CARGO_PKG_VERSION").into(),
            nano_cpus: first.nano_cpus,
            memory_bytes: first.memory_bytes,
        },
        state: NodeState::Ready,
        status_message: String::new(),
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        cert_not_after_ms: not_after,
        // Given by the leader's allocator pass once the node exists.
        ingress_addr: None,
    };
    Ok(FirstObjects {
        cluster,
        ingress,
        node,
        identity,
        kek,
        key_file,
        unlock_key,
    })
}

/// The first node's IPv4 addresses: the advertised one and its interfaces'.
fn node_addrs(first: &FirstNode) -> Vec<Ipv4Addr> {
    let advertised = first
        .advertise_addr
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip())
        .or_else(|| first.advertise_addr.parse().ok());
    let mut out: Vec<Ipv4Addr> = match advertised {
        Some(std::net::IpAddr::V4(a)) => vec![a],
        _ => Vec::new(),
    };
    for a in &first.local_addrs {
        if !out.contains(a) {
            out.push(*a);
        }
    }
    out
}

/// The ingress network: the pool's first subnet that holds none of `avoid` (the node's own
/// addresses; an overlay holding one would route the node's own traffic into the overlay).
pub fn ingress_network(
    pool: &[String],
    mask_len: u8,
    avoid: &[Ipv4Addr],
    now_ms: i64,
) -> Result<Network, Status> {
    let pools: Vec<Cidr> = pool.iter().filter_map(|p| p.parse().ok()).collect();
    let taken: Vec<Cidr> = avoid.iter().filter_map(|a| Cidr::new(*a, 32)).collect();
    let Some(subnet) = allocator::ipam::next_subnet(&pools, mask_len, &taken) else {
        let free_of_nodes = allocator::ipam::next_subnet(&pools, mask_len, &[]).is_some();
        let addrs: Vec<String> = avoid
            .iter()
            .filter(|a| pools.iter().any(|p| p.contains(**a)))
            .map(Ipv4Addr::to_string)
            .collect();
        return Err(ApiError::invalid(
            "default_addr_pool",
            if free_of_nodes {
                format!(
                    "every /{mask_len} subnet of {} holds an address of this node ({}), and the ingress network must not; choose another pool",
                    pool.join(", "),
                    addrs.join(", ")
                )
            } else {
                format!("{} has no /{mask_len} subnet", pool.join(", "))
            },
        )
        .into());
    };
    let spec = proto::spec::NetworkSpec {
        name: "ingress".into(),
        driver: "overlay".into(),
        ingress: true,
        subnet: subnet.to_string(),
        ..Default::default()
    };
    allocator::new_network(
        &Default::default(),
        &spec,
        pool,
        mask_len,
        random_id(25),
        now_ms,
    )
    .map_err(|e| ApiError::InvalidArgument(e.to_string()).into())
}

/// Make `objects` the cluster's first state on `mgr`, the new cluster's only manager
/// (`raft_id`): elect it and commit them.
pub async fn commit(mgr: &Manager, objects: &FirstObjects) -> Result<(), Status> {
    let fail = |e: String| Status::internal(format!("swarm init failed: {e}"));
    mgr.initialize().await.map_err(|e| fail(e.to_string()))?;
    mgr.wait_for_leader(Duration::from_secs(10))
        .await
        .ok_or_else(|| fail("no leader elected".into()))?;
    mgr.propose(objects.txn())
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(advertise: &str, local: &[&str]) -> FirstNode {
        FirstNode {
            hostname: "m1".into(),
            advertise_addr: advertise.into(),
            local_addrs: local.iter().map(|a| a.parse().unwrap()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_ingress_network_holds_none_of_the_nodes_addresses() {
        let pool = |p: &str, mask| Settings {
            default_addr_pool: vec![p.into()],
            default_addr_pool_mask_len: mask,
            ..Default::default()
        };
        // The default pool's first /24 holds an interface address: the next one is taken.
        let o = first_objects(
            &Settings::default(),
            &first("192.168.1.5:2377", &["10.0.0.7", "192.168.1.5"]),
            0,
        )
        .unwrap();
        assert_eq!(o.ingress.subnet, "10.0.1.0/24");
        assert!(o.ingress.spec.ingress);
        assert_eq!(o.cluster.default_addr_pool, vec!["10.0.0.0/8".to_string()]);
        // The advertised address counts as well.
        let o = first_objects(
            &pool("172.20.0.0/16", 24),
            &first("172.20.0.9:2377", &[]),
            0,
        )
        .unwrap();
        assert_eq!(o.ingress.subnet, "172.20.1.0/24");
        // Nothing to avoid: the pool's first subnet.
        let o = first_objects(&Settings::default(), &first("192.168.1.5:2377", &[]), 0).unwrap();
        assert_eq!(o.ingress.subnet, "10.0.0.0/24");
        // A pool whose only subnet holds the node: refused, saying why and what to change.
        let e = first_objects(
            &pool("172.20.0.0/24", 24),
            &first("172.20.0.9:2377", &[]),
            0,
        )
        .err()
        .unwrap();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "default_addr_pool: every /24 subnet of 172.20.0.0/24 holds an address of this node (172.20.0.9), and the ingress network must not; choose another pool"
        );
    }

    #[test]
    fn the_first_objects_are_consistent() {
        let o = first_objects(
            &Settings {
                autolock: true,
                ..Default::default()
            },
            &first("192.168.1.5:2377", &[]),
            42,
        )
        .unwrap();
        assert_eq!(o.node.role, Role::Manager);
        assert_eq!(o.node.description.addr, "192.168.1.5:2377");
        assert_eq!(o.identity.info.node_id, o.node.id);
        assert_eq!(o.identity.info.cluster_id, o.cluster.id);
        assert!(o.cluster.unlock_key.is_some() && o.unlock_key.is_some());
        assert!(matches!(o.key_file, KeyFile::Locked { .. }));
        assert_eq!(
            o.cluster.heartbeat_period_ms,
            crate::dispatcher::DEFAULT_HEARTBEAT.as_millis() as u64
        );
        assert_eq!(o.txn().ops.len(), 3);
        // Settings out of range are refused before anything is made.
        let e = first_objects(
            &Settings {
                heartbeat_period_ms: 1,
                ..Default::default()
            },
            &first("192.168.1.5:2377", &[]),
            0,
        )
        .err()
        .unwrap();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
