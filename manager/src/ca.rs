//! The certificate authority service: joining with a token, renewing a certificate.
//!
//! Only the leader issues certificates, because issuing one writes the node to the store.
//! A follower forwards Join to the leader; Renew is refused with the leader's address (the
//! caller's identity is its TLS certificate, which cannot be forwarded).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use proto::pb;
use proto::pb::ca_client::CaClient;
use proto::security::{random_id, CertInfo, JoinToken, NodeCertRequest, Role};
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::manager::{update_with_retry, Manager};
use crate::store::{Cluster, Node, NodeDescription, NodeState, Object, Op, Txn};

pub struct CaService {
    mgr: Arc<Manager>,
}

pub fn service(mgr: Arc<Manager>) -> pb::ca_server::CaServer<CaService> {
    pb::ca_server::CaServer::new(CaService { mgr })
}

/// Sign a certificate for `node_id`; returns it with its expiry in ms since the epoch.
pub fn issue(
    cluster: &Cluster,
    csr_pem: &str,
    node_id: &str,
    role: Role,
) -> Result<(String, i64), Status> {
    let pem = cluster
        .root_ca
        .issue(&NodeCertRequest {
            csr_pem,
            node_id,
            role,
            cluster_id: &cluster.id,
            validity: Duration::from_millis(cluster.cert_expiry_ms),
        })
        .map_err(|e| Status::invalid_argument(format!("cannot sign the request: {e}")))?;
    let info = CertInfo::from_pem(&pem).map_err(|e| Status::internal(e.to_string()))?;
    let not_after = info
        .not_after
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Ok((pem, not_after))
}

/// The cluster object with the root CA's private key opened (it is stored sealed with the
/// key-encrypting key, [`crate::keys`]).
fn cluster(mgr: &Manager) -> Result<Cluster, Status> {
    let mut c = mgr
        .store
        .view(|d| d.cluster.clone())
        .ok_or_else(|| Status::failed_precondition("the swarm is not initialised yet"))?;
    c.root_ca = mgr
        .kek
        .open_root_ca(&c.root_ca)
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(c)
}

/// The cluster's unlock key in the clear ("" with autolock off), for a new manager to write
/// its key file locked from the start.
fn unlock_key(mgr: &Manager, cluster: &Cluster) -> Result<String, Status> {
    cluster
        .unlock_key
        .as_deref()
        .map(|sealed| mgr.kek.open_unlock_key(sealed).map(|k| k.to_string()))
        .transpose()
        .map(Option::unwrap_or_default)
        .map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl pb::ca_server::Ca for CaService {
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let mgr = &self.mgr;
        if !mgr.is_leader() {
            let mut c = CaClient::new(mgr.leader_channel()?);
            return c.join(req.into_inner()).await;
        }
        let r = req.into_inner();
        let _parsed: JoinToken = r
            .token
            .parse()
            .map_err(|e: proto::security::SecurityError| Status::invalid_argument(e.to_string()))?;
        let cluster = cluster(mgr)?;
        let role = if r.token == cluster.manager_token {
            Role::Manager
        } else if r.token == cluster.worker_token {
            Role::Worker
        } else {
            return Err(Status::permission_denied(
                "invalid join token: it matches neither the current worker nor manager token of this swarm (it may have been rotated)",
            ));
        };
        if r.hostname.is_empty() || r.hostname.len() > 253 {
            return Err(Status::invalid_argument(
                "hostname must be 1 to 253 characters",
            ));
        }
        let addr: SocketAddr = r.advertise_addr.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "advertise address {:?} is not IP:PORT",
                r.advertise_addr
            ))
        })?;
        if addr.ip().is_unspecified() {
            return Err(Status::invalid_argument(
                "advertise address must be a specific IP, not 0.0.0.0",
            ));
        }
        let unlock_key = match role {
            Role::Manager => unlock_key(mgr, &cluster)?,
            Role::Worker => String::new(),
        };
        let node_id = random_id(25);
        let (cert_pem, not_after) = issue(&cluster, &r.csr_pem, &node_id, role)?;
        let raft_id = loop {
            let id = rand::random::<u64>() >> 1;
            if id != 0
                && !mgr
                    .store
                    .view(|d| d.nodes.values().any(|n| n.raft_id == id))
            {
                break id;
            }
        };
        let now = mgr.now_ms();
        let node = Node {
            id: node_id.clone(),
            version: 0,
            raft_id,
            role,
            desired_role: role,
            availability: Default::default(),
            labels: Default::default(),
            description: NodeDescription {
                hostname: r.hostname.clone(),
                addr: addr.to_string(),
                platform: r.platform.clone(),
                engine_version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            },
            state: NodeState::Unknown,
            status_message: String::new(),
            created_at_ms: now,
            updated_at_ms: now,
            cert_not_after_ms: not_after,
            ingress_addr: None,
        };
        mgr.propose(Txn::new(vec![Op::Create(Object::Node(node))]))
            .await
            .map_err(|e| e.into_status(mgr))?;
        tracing::info!(node = %node_id, hostname = %r.hostname, %role, "node joined");
        Ok(Response::new(pb::JoinResponse {
            node_id,
            role: role.as_str().into(),
            cert_pem,
            ca_pem: cluster.root_ca.cert_pem.clone(),
            managers: mgr.manager_addrs(),
            raft_id,
            cluster_id: cluster.id,
            // A manager needs the key-encrypting key to open the store's keys; the manager
            // token is what entitles the joiner to it, and the channel is TLS pinned to the CA.
            kek: if role == Role::Manager {
                mgr.kek.to_hex()
            } else {
                String::new()
            },
            unlock_key,
        }))
    }

    async fn keys(&self, req: Request<pb::Empty>) -> Result<Response<pb::KeysResponse>, Status> {
        let Caller::Node(cert) = self.mgr.auth.control(&req)? else {
            return Err(Status::unauthenticated(
                "the cluster's keys need a manager certificate",
            ));
        };
        tracing::info!(node = %cert.node_id, "key-encrypting key handed to a promoted manager");
        let cluster = cluster(&self.mgr)?;
        Ok(Response::new(pb::KeysResponse {
            kek: self.mgr.kek.to_hex(),
            unlock_key: unlock_key(&self.mgr, &cluster)?,
        }))
    }

    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::CertificateResponse>, Status> {
        let mgr = &self.mgr;
        let Caller::Node(cert) = mgr.auth.node(&req)? else {
            return Err(Status::unauthenticated(
                "renewal needs the node's certificate",
            ));
        };
        if !mgr.is_leader() {
            return Err(mgr.not_leader());
        }
        let csr = req.into_inner().csr_pem;
        let node = mgr
            .store
            .view(|d| d.nodes.get(&cert.node_id).cloned())
            .ok_or_else(|| {
                Status::not_found(format!("node {} is not in the swarm", cert.node_id))
            })?;
        let role = node.desired_role;
        if role == Role::Worker {
            let (_, members) = crate::raft::membership(&mgr.raft);
            if members.contains_key(&node.raft_id) {
                return Err(Status::unavailable(
                    "this node is still a raft member; it is being removed, retry shortly",
                ));
            }
        }
        let cluster = cluster(mgr)?;
        let (cert_pem, not_after) = issue(&cluster, &csr, &node.id, role)?;
        let id = node.id.clone();
        update_with_retry(mgr, |d| {
            let mut n = d
                .nodes
                .get(&id)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("node {id} is not in the swarm")))?;
            // The write is version-checked: if the desired role changed since it was read
            // (a promotion racing a demotion), the certificate just signed is for a role
            // nobody wants any more. Refuse it; the node asks again on its next heartbeat.
            if n.desired_role != role {
                return Err(Status::unavailable(format!(
                    "the desired role of this node changed to {} meanwhile; retry shortly",
                    n.desired_role
                )));
            }
            n.role = role;
            n.cert_not_after_ms = not_after;
            n.updated_at_ms = mgr.now_ms();
            Ok(Txn::new(vec![Op::Update(Object::Node(n))]))
        })
        .await?;
        tracing::info!(node = %id, %role, "certificate issued");
        Ok(Response::new(pb::CertificateResponse {
            cert_pem,
            role: role.as_str().into(),
            raft_id: node.raft_id,
        }))
    }
}
