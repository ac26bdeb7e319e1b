//! Per-call authorisation from the caller's certificate.
//!
//! The TLS layer has already checked that a presented certificate chains to the cluster's root
//! CA; here we check the role it names and that the node has not been removed.

use proto::security::{CertInfo, Role};
use proto::transport::PeerInfo;
use tonic::{Request, Status};

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
        let peer = req
            .extensions()
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

    /// A manager node (or the local socket).
    pub fn manager<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let caller = self.node(req)?;
        match &caller {
            Caller::Node(c) if c.role != Role::Manager => Err(Status::permission_denied(format!(
                "node {} is a worker: this call is for managers only",
                c.node_id
            ))),
            _ => Ok(caller),
        }
    }
}
