//! Per-call authorisation from the caller's certificate.
//!
//! The TLS layer has already checked that a presented certificate chains to the cluster's root
//! CA; here we check the role it names, that the node has not been removed, and — for
//! manager-only calls — that the store still holds the node as a manager: a demoted manager's
//! old certificate stays valid for its whole lifetime, but it buys nothing once the store
//! says the node is a worker.

use proto::security::{CertInfo, Role};
use proto::transport::PeerInfo;
use tonic::{Extensions, Request, Status};

use crate::store::Store;

#[derive(Clone)]
pub struct Authorizer {
    store: Store,
}

/// Who made a call.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Root on this machine, through the local socket.
    Local,
    Node(CertInfo),
}

impl Authorizer {
    pub fn new(store: Store) -> Authorizer {
        Authorizer { store }
    }

    /// Any node of this cluster that has not been removed.
    pub fn node<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        self.node_of(req.extensions())
    }

    /// [`Authorizer::node`] from a request's extensions (an HTTP-level layer has no
    /// decoded request).
    pub fn node_of(&self, ext: &Extensions) -> Result<Caller, Status> {
        let peer = ext
            .get::<PeerInfo>()
            .ok_or_else(|| Status::unauthenticated("no peer information on this connection"))?;
        if peer.local {
            return Ok(Caller::Local);
        }
        let cert = peer.cert.clone().ok_or_else(|| {
            Status::unauthenticated("a node certificate is required for this call")
        })?;
        let (cluster_ok, removed) = self.store.view(|d| match &d.cluster {
            Some(c) => (
                cert.cluster_id == c.id,
                c.removed_nodes.contains(&cert.node_id),
            ),
            None => (true, false),
        });
        if !cluster_ok {
            return Err(Status::permission_denied(
                "certificate belongs to another cluster",
            ));
        }
        if removed {
            return Err(Status::permission_denied(format!(
                "node {} has been removed from the swarm",
                cert.node_id
            )));
        }
        Ok(Caller::Node(cert))
    }

    /// A manager node (or the local socket), for raft traffic: the certificate names a
    /// manager and the store has not finished demoting the node (a node being demoted still
    /// takes part in raft until it is out of the group, then renews as a worker).
    pub fn manager<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let caller = self.node(req)?;
        if let Caller::Node(c) = &caller {
            if c.role != Role::Manager {
                return Err(worker_refused(&c.node_id));
            }
            let demoted = self.store.view(|d| {
                d.nodes
                    .get(&c.node_id)
                    .is_some_and(|n| n.role == Role::Worker && n.desired_role == Role::Worker)
            });
            if demoted {
                return Err(demoted_refused(&c.node_id));
            }
        }
        Ok(caller)
    }

    /// A manager node (or the local socket), for the control API and the cluster's keys:
    /// the certificate names a manager and the store holds the node as a manager now, both
    /// as its role and as its desired role (a demotion in progress already refuses).
    pub fn control<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        self.control_of(req.extensions())
    }

    /// [`Authorizer::control`] from a request's extensions.
    pub fn control_of(&self, ext: &Extensions) -> Result<Caller, Status> {
        let caller = self.node_of(ext)?;
        if let Caller::Node(c) = &caller {
            if c.role != Role::Manager {
                return Err(worker_refused(&c.node_id));
            }
            let roles = self
                .store
                .view(|d| d.nodes.get(&c.node_id).map(|n| (n.role, n.desired_role)));
            match roles {
                Some((Role::Manager, Role::Manager)) => {}
                Some(_) => return Err(demoted_refused(&c.node_id)),
                None => {
                    return Err(Status::permission_denied(format!(
                        "node {} is not part of the swarm",
                        c.node_id
                    )))
                }
            }
        }
        Ok(caller)
    }
}

fn worker_refused(node: &str) -> Status {
    Status::permission_denied(format!(
        "node {node} is a worker: this call is for managers only"
    ))
}

fn demoted_refused(node: &str) -> Status {
    Status::permission_denied(format!(
        "node {node} is no longer a manager (demoted): its manager certificate is not honoured"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Node, Object, Op, Txn};
    use proto::transport::PeerInfo;
    use std::time::SystemTime;

    fn req_as(node: &str, role: Role) -> Request<()> {
        let mut r = Request::new(());
        r.extensions_mut().insert(PeerInfo {
            remote_addr: None,
            local: false,
            cert: Some(CertInfo {
                node_id: node.into(),
                role,
                cluster_id: String::new(),
                not_before: SystemTime::UNIX_EPOCH,
                not_after: SystemTime::now() + std::time::Duration::from_secs(3600),
            }),
        });
        r
    }

    fn node(id: &str, role: Role, desired: Role) -> Node {
        Node {
            id: id.into(),
            version: 0,
            raft_id: 1,
            role,
            desired_role: desired,
            availability: Default::default(),
            labels: Default::default(),
            description: Default::default(),
            state: Default::default(),
            status_message: String::new(),
            created_at_ms: 0,
            updated_at_ms: 0,
            cert_not_after_ms: 0,
            ingress_addr: None,
        }
    }

    #[test]
    fn a_demoted_managers_certificate_gets_no_manager_answers() {
        let store = Store::new();
        store.apply(
            1,
            &Txn::new(vec![
                Op::Create(Object::Node(node("m", Role::Manager, Role::Manager))),
                Op::Create(Object::Node(node("d", Role::Manager, Role::Worker))),
                Op::Create(Object::Node(node("w", Role::Worker, Role::Worker))),
            ]),
        );
        let auth = Authorizer::new(store);
        assert!(auth.control(&req_as("m", Role::Manager)).is_ok());
        assert!(auth.manager(&req_as("m", Role::Manager)).is_ok());
        // Being demoted: out of the control API at once, still in raft until it is out.
        let e = auth.control(&req_as("d", Role::Manager)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message().contains("no longer a manager"),
            "{}",
            e.message()
        );
        assert!(auth.manager(&req_as("d", Role::Manager)).is_ok());
        // Demoted (renewed as a worker), holding on to its old manager certificate.
        let e = auth.control(&req_as("w", Role::Manager)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(auth.manager(&req_as("w", Role::Manager)).is_err());
        // Unknown to the store.
        assert!(auth.control(&req_as("x", Role::Manager)).is_err());
        assert!(auth.control(&req_as("w", Role::Worker)).is_err());
    }
}
