//! The control API's cluster calls: validation, then a transaction through raft.
//!
//! Runs on the leader: a follower hands every call to the leader before it gets here
//! ([`crate::controlapi_server::Forwarding`]), so the CLI can talk to any manager. Reads are
//! linearizable; a call that finds this manager no longer leading ends as "not the leader".

use std::sync::Arc;

use proto::pb;
use proto::security::{JoinToken, Role};
use tonic::Status;

use crate::error::ApiError;
use crate::manager::{update_with_retry, Manager};
use crate::raft::NodeId;
use crate::store::{Availability, Kind, NodeState, Object, Op, StoreData, Txn};

pub use crate::limits::{validate_settings, MIN_CERT_EXPIRY, MIN_HEARTBEAT};

#[derive(Clone)]
pub struct ControlApi {
    pub mgr: Arc<Manager>,
}

fn pb_cluster(c: &crate::store::Cluster) -> pb::ClusterInfo {
    pb::ClusterInfo {
        id: c.id.clone(),
        heartbeat_period_ms: c.heartbeat_period_ms,
        cert_expiry_ms: c.cert_expiry_ms,
        root_ca_digest: c.root_ca.digest().unwrap_or_default(),
        created_at_ms: c.created_at_ms,
        version: c.version,
        rebalance_on_join: c.rebalance_on_join,
        autolock: c.unlock_key.is_some(),
        max_replicas: c.limits.max_replicas,
        max_tasks: c.limits.max_tasks,
    }
}

impl From<Availability> for pb::NodeAvailability {
    fn from(a: Availability) -> Self {
        match a {
            Availability::Active => pb::NodeAvailability::Active,
            Availability::Pause => pb::NodeAvailability::Pause,
            Availability::Drain => pb::NodeAvailability::Drain,
        }
    }
}

/// The availability a request asks for: UNSPECIFIED is `None` ("unchanged"); a value this
/// version does not know is refused with the field named.
fn requested_availability(v: i32) -> Result<Option<Availability>, ApiError> {
    match pb::NodeAvailability::try_from(v) {
        Ok(pb::NodeAvailability::Unspecified) => Ok(None),
        Ok(pb::NodeAvailability::Active) => Ok(Some(Availability::Active)),
        Ok(pb::NodeAvailability::Pause) => Ok(Some(Availability::Pause)),
        Ok(pb::NodeAvailability::Drain) => Ok(Some(Availability::Drain)),
        Err(_) => Err(ApiError::invalid(
            "UpdateNodeRequest.set_availability",
            format!("unknown value {v}: expected active, pause or drain"),
        )),
    }
}

impl From<NodeState> for pb::NodeState {
    fn from(s: NodeState) -> Self {
        match s {
            NodeState::Unknown => pb::NodeState::Unknown,
            NodeState::Ready => pb::NodeState::Ready,
            NodeState::Down => pb::NodeState::Down,
            NodeState::Disconnected => pb::NodeState::Disconnected,
        }
    }
}

/// A node in its wire form; `leader` is the raft id of the current leader.
pub fn pb_node(n: &crate::store::Node, leader: Option<NodeId>) -> pb::Node {
    let is_leader = n.role == Role::Manager && leader == Some(n.raft_id);
    let reachability = if n.role != Role::Manager {
        pb::ManagerReachability::None
    } else if is_leader {
        pb::ManagerReachability::Leader
    } else if n.state == NodeState::Ready {
        pb::ManagerReachability::Reachable
    } else {
        pb::ManagerReachability::Unreachable
    };
    pb::Node {
        id: n.id.clone(),
        version: n.version,
        cert_role: pb::NodeRole::from(n.role) as i32,
        spec_role: pb::NodeRole::from(n.desired_role) as i32,
        spec_availability: pb::NodeAvailability::from(n.availability) as i32,
        labels: n
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        description: Some(pb::NodeDescription {
            hostname: n.description.hostname.clone(),
            addr: n.description.addr.clone(),
            platform: n.description.platform.clone(),
            engine_version: n.description.engine_version.clone(),
            nano_cpus: n.description.nano_cpus,
            memory_bytes: n.description.memory_bytes,
        }),
        state: pb::NodeState::from(n.state) as i32,
        status_message: n.status_message.clone(),
        reachability: reachability as i32,
        raft_id: n.raft_id,
        created_at_ms: n.created_at_ms,
        updated_at_ms: n.updated_at_ms,
        cert_not_after_ms: n.cert_not_after_ms,
        leader: is_leader,
    }
}

fn cluster_of(d: &StoreData) -> Result<crate::store::Cluster, Status> {
    d.cluster
        .clone()
        .ok_or_else(|| ApiError::NotInitialised.into())
}

impl ControlApi {
    pub fn new(mgr: Arc<Manager>) -> ControlApi {
        ControlApi { mgr }
    }

    pub async fn get_cluster(&self) -> Result<pb::ClusterInfo, Status> {
        self.mgr.linearizable().await?;
        self.mgr
            .store
            .view(|d| cluster_of(d).map(|c| pb_cluster(&c)))
    }

    pub async fn update_cluster(
        &self,
        req: pb::UpdateClusterRequest,
    ) -> Result<pb::ClusterInfo, Status> {
        validate_settings(req.heartbeat_period_ms, req.cert_expiry_ms)?;
        ControlApi::validate_autolock(req.autolock)?;
        let fresh_unlock_key = self.new_sealed_unlock_key()?;
        update_with_retry(&self.mgr, |d| {
            let mut c = cluster_of(d)?;
            ControlApi::apply_autolock(&mut c, req.autolock, &fresh_unlock_key);
            if req.heartbeat_period_ms != 0 {
                c.heartbeat_period_ms = req.heartbeat_period_ms;
            }
            if req.cert_expiry_ms != 0 {
                c.cert_expiry_ms = req.cert_expiry_ms;
            }
            c.limits = crate::limits::updated_limits(c.limits, req.max_replicas, req.max_tasks)?;
            match req.rebalance_on_join {
                1 => c.rebalance_on_join = true,
                2 => c.rebalance_on_join = false,
                _ => {}
            }
            Ok(Txn::new(vec![Op::Update(Object::Cluster(c))]))
        })
        .await?;
        self.mgr
            .store
            .view(|d| cluster_of(d).map(|c| pb_cluster(&c)))
    }

    pub async fn get_join_tokens(
        &self,
        req: pb::GetJoinTokensRequest,
    ) -> Result<pb::JoinTokens, Status> {
        if req.rotate_worker || req.rotate_manager {
            update_with_retry(&self.mgr, |d| {
                let mut c = cluster_of(d)?;
                let digest = c
                    .root_ca
                    .digest()
                    .map_err(|e| ApiError::internal("reading the root CA", e))?;
                if req.rotate_worker {
                    c.worker_token = JoinToken::generate(&digest).to_string();
                }
                if req.rotate_manager {
                    c.manager_token = JoinToken::generate(&digest).to_string();
                }
                Ok(Txn::new(vec![Op::Update(Object::Cluster(c))]))
            })
            .await?;
        } else {
            self.mgr.linearizable().await?;
        }
        self.mgr.store.view(|d| {
            let c = cluster_of(d)?;
            Ok(pb::JoinTokens {
                worker: c.worker_token,
                manager: c.manager_token,
            })
        })
    }

    pub async fn list_nodes(&self) -> Result<pb::ListNodesResponse, Status> {
        self.mgr.linearizable().await?;
        let leader = self.mgr.leader_id();
        Ok(self.mgr.store.view(|d| pb::ListNodesResponse {
            nodes: d.nodes.values().map(|n| pb_node(n, leader)).collect(),
        }))
    }

    pub async fn get_node(&self, req: pb::GetNodeRequest) -> Result<pb::Node, Status> {
        self.mgr.linearizable().await?;
        let leader = self.mgr.leader_id();
        self.mgr.store.view(|d| {
            d.find_node(&req.id)
                .map(|n| pb_node(n, leader))
                .map_err(|e| ApiError::from(e).into())
        })
    }

    pub async fn update_node(&self, req: pb::UpdateNodeRequest) -> Result<pb::Node, Status> {
        let availability = requested_availability(req.set_availability)?;
        let role = proto::convert_api::requested_role("UpdateNodeRequest.set_role", req.set_role)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let mut adds = Vec::new();
        for l in &req.label_add {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            if k.is_empty() {
                return Err(ApiError::InvalidArgument(format!(
                    "invalid label {l:?}: expected key=value"
                ))
                .into());
            }
            adds.push((k.to_string(), v.to_string()));
        }
        proto::limits::check_labels(
            "node label",
            adds.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .map_err(ApiError::InvalidArgument)?;
        let mut id = String::new();
        update_with_retry(&self.mgr, |d| {
            let mut n = d.find_node(&req.id).map_err(ApiError::from)?.clone();
            id = n.id.clone();
            if let Some(a) = availability {
                n.availability = a;
            }
            if let Some(r) = role {
                if r == Role::Worker && n.desired_role == Role::Manager {
                    let managers = d
                        .nodes
                        .values()
                        .filter(|m| m.desired_role == Role::Manager)
                        .count();
                    if managers <= 1 {
                        return Err(ApiError::FailedPrecondition(format!(
                            "node {} is the last manager of the swarm and cannot be demoted",
                            n.id
                        ))
                        .into());
                    }
                }
                n.desired_role = r;
            }
            for k in &req.label_rm {
                if n.labels.remove(k).is_none() {
                    return Err(ApiError::InvalidArgument(format!(
                        "label {k:?} does not exist on node {}",
                        n.id
                    ))
                    .into());
                }
            }
            for (k, v) in &adds {
                n.labels.insert(k.clone(), v.clone());
            }
            proto::limits::check_labels(
                "node label",
                n.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .map_err(ApiError::InvalidArgument)?;
            n.updated_at_ms = self.mgr.now_ms();
            Ok(Txn::new(vec![Op::Update(Object::Node(n))]))
        })
        .await?;
        let leader = self.mgr.leader_id();
        self.mgr.store.view(|d| {
            d.nodes.get(&id).map(|n| pb_node(n, leader)).ok_or_else(|| {
                ApiError::NotFound {
                    kind: "node",
                    name: id.clone(),
                }
                .into()
            })
        })
    }

    pub async fn remove_node(&self, req: pb::RemoveNodeRequest) -> Result<pb::Empty, Status> {
        update_with_retry(&self.mgr, |d| {
            let n = d
                .find_node(&req.id)
                .map_err(ApiError::from)?;
            if n.role == Role::Manager || n.desired_role == Role::Manager {
                return Err(ApiError::FailedPrecondition(format!(
                    "node {} is a cluster manager and a member of the raft cluster; demote it to worker before removal",
                    n.id
                )).into());
            }
            if n.state != NodeState::Down && !req.force {
                return Err(ApiError::FailedPrecondition(format!(
                    "node {} is not down and can't be removed; stop it first or use --force",
                    n.id
                )).into());
            }
            let mut c = cluster_of(d)?;
            c.removed_nodes.insert(n.id.clone());
            Ok(Txn::new(vec![
                Op::Delete {
                    kind: Kind::Node,
                    id: n.id.clone(),
                },
                Op::Update(Object::Cluster(c)),
            ]))
        })
        .await?;
        Ok(pb::Empty {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// What a node's availability is on the wire is what an update asking for it sets.
        #[test]
        fn availabilities_round_trip(a in prop::sample::select(vec![
            Availability::Active,
            Availability::Pause,
            Availability::Drain,
        ])) {
            let v = pb::NodeAvailability::from(a) as i32;
            prop_assert_eq!(requested_availability(v).ok(), Some(Some(a)));
            prop_assert_eq!(pb::NodeAvailability::from(a).label(), a.as_str());
        }

        #[test]
        fn node_states_read_as_before(s in prop::sample::select(vec![
            NodeState::Unknown,
            NodeState::Ready,
            NodeState::Down,
            NodeState::Disconnected,
        ])) {
            let wire = pb::NodeState::try_from(pb::NodeState::from(s) as i32);
            prop_assert_eq!(wire.map(|w| w.label()), Ok(s.as_str()));
        }
    }

    #[test]
    fn an_unknown_availability_is_refused_naming_the_field() {
        assert!(matches!(requested_availability(0), Ok(None)));
        let e = Status::from(requested_availability(9).unwrap_err());
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "UpdateNodeRequest.set_availability: unknown value 9: expected active, pause or drain"
        );
    }
}
