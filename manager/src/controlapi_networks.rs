//! Control API: overlay networks (`network create|ls|inspect|rm`).

use proto::api::NetworkView;
use proto::pb;
use proto::security::random_id;
use proto::spec::NetworkSpec;
use tonic::Status;

use crate::allocator;
use crate::controlapi::ControlApi;
use crate::error::ApiError;
use crate::manager::update_with_retry;
use crate::store::{Kind, Network, Object, Op, StoreData, Txn};

/// Largest spec accepted.
const MAX_SPEC_BYTES: usize = 64 * 1024;

/// The domain spec of a request's `spec`: absent or too large is refused with the field named.
fn parse_spec(spec: Option<pb::NetworkSpec>) -> Result<NetworkSpec, Status> {
    let spec = crate::controlapi_services::bounded_spec(
        "NetworkSpecRequest.spec",
        "network",
        spec,
        MAX_SPEC_BYTES,
    )?;
    Ok(spec.into())
}

/// What can be checked without the store: name and driver.
pub fn validate_spec(spec: &NetworkSpec) -> Result<(), Status> {
    let name = &spec.name;
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !name_ok {
        return Err(ApiError::InvalidArgument(format!(
            "invalid network name {name:?}: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )).into());
    }
    proto::limits::check_labels(
        "network label",
        spec.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .map_err(ApiError::InvalidArgument)?;
    if !(spec.driver.is_empty() || spec.driver == "overlay") {
        return Err(ApiError::invalid(
            "spec.driver",
            format!(
                "unsupported driver {:?}: only overlay networks are supported",
                spec.driver
            ),
        )
        .into());
    }
    Ok(())
}

/// A new network checked against the store: unique name, one ingress network, subnet and
/// gateway valid and free.
pub fn plan_create(
    d: &StoreData,
    spec: &NetworkSpec,
    id: String,
    now_ms: i64,
) -> Result<Network, Status> {
    validate_spec(spec)?;
    if d.networks.values().any(|n| n.spec.name == spec.name) {
        return Err(ApiError::AlreadyExists {
            kind: "network",
            name: spec.name.clone(),
            hint: "; choose another name",
        }
        .into());
    }
    if spec.ingress {
        if let Some(n) = d.ingress_network() {
            return Err(Status::already_exists(format!(
                "network {} is already the ingress network; remove it first",
                n.spec.name
            )));
        }
    }
    let (pool, mask) = d
        .cluster
        .as_ref()
        .map(|c| (c.default_addr_pool.clone(), c.default_addr_pool_mask_len))
        .unwrap_or_else(|| {
            (
                crate::store::default_addr_pool(),
                crate::store::default_addr_pool_mask_len(),
            )
        });
    Ok(allocator::new_network(d, spec, &pool, mask, id, now_ms)
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))?)
}

/// A network by id, name or unique id prefix.
pub fn find_network<'a>(d: &'a StoreData, key: &str) -> Result<&'a Network, Status> {
    crate::store::find_by_key(&d.networks, key, |n| &n.spec.name).map_err(|miss| match miss {
        crate::store::Miss::NotFound => ApiError::NotFound {
            kind: "network",
            name: key.into(),
        }
        .into(),
        crate::store::Miss::Ambiguous => ApiError::Ambiguous {
            kind: "network",
            name: key.into(),
            hint: ": use more of its id",
        }
        .into(),
    })
}

/// Names of the services attached to network `n` (sorted).
pub fn services_on(d: &StoreData, n: &Network) -> Vec<String> {
    let mut v: Vec<String> = d
        .services
        .values()
        .filter(|s| {
            s.spec.task.networks.iter().any(|a| a.target == n.id)
                || (n.spec.ingress && allocator::uses_ingress(&s.spec.endpoint.ports))
        })
        .map(|s| s.spec.name.clone())
        .collect();
    v.sort();
    v
}

pub fn network_view(d: &StoreData, n: &Network) -> NetworkView {
    NetworkView {
        id: n.id.clone(),
        version: n.version,
        spec: n.spec.clone(),
        vni: n.vni,
        subnet: n.subnet.clone(),
        gateway: n.gateway.to_string(),
        created_at_ms: n.created_at_ms,
        updated_at_ms: n.updated_at_ms,
        services: services_on(d, n),
    }
}

/// Why network `n` may not be removed, if it may not.
pub fn check_remove(d: &StoreData, n: &Network) -> Result<(), Status> {
    let users = services_on(d, n);
    if users.is_empty() {
        return Ok(());
    }
    Err(ApiError::FailedPrecondition(if n.spec.ingress {
        format!(
            "network {} is the routing mesh and services publish ports on it: {}; remove their published ports first",
            n.spec.name,
            users.join(", ")
        )
    } else {
        format!(
            "network {} is in use by services {}; remove them or take them off the network first",
            n.spec.name,
            users.join(", ")
        )
    })
    .into())
}

impl ControlApi {
    pub async fn create_network(
        &self,
        req: pb::NetworkSpecRequest,
    ) -> Result<pb::NetworkView, Status> {
        let spec = parse_spec(req.spec)?;
        validate_spec(&spec)?;
        let id = random_id(25);
        let now = self.mgr.now_ms();
        update_with_retry(&self.mgr, |d| {
            let n = plan_create(d, &spec, id.clone(), now)?;
            Ok(Txn::new(vec![Op::Create(Object::Network(n))]))
        })
        .await?;
        self.mgr.store.view(|d| {
            let n = d
                .networks
                .get(&id)
                .ok_or_else(|| ApiError::internal("reading the new network", "network vanished"))?;
            Ok(pb::NetworkView::from(&network_view(d, n)))
        })
    }

    pub async fn list_networks(&self) -> Result<pb::ListNetworksResponse, Status> {
        self.mgr.linearizable().await?;
        Ok(self.mgr.store.view(|d| pb::ListNetworksResponse {
            networks: d
                .networks
                .values()
                .map(|n| pb::NetworkView::from(&network_view(d, n)))
                .collect(),
        }))
    }

    pub async fn get_network(&self, req: pb::GetNetworkRequest) -> Result<pb::NetworkView, Status> {
        self.mgr.linearizable().await?;
        self.mgr.store.view(|d| {
            Ok(pb::NetworkView::from(&network_view(
                d,
                find_network(d, &req.id)?,
            )))
        })
    }

    pub async fn remove_network(&self, req: pb::GetNetworkRequest) -> Result<pb::Empty, Status> {
        update_with_retry(&self.mgr, |d| {
            let n = find_network(d, &req.id)?;
            check_remove(d, n)?;
            let mut ops = vec![Op::Delete {
                kind: Kind::Network,
                id: n.id.clone(),
            }];
            if n.spec.ingress {
                // The nodes' sandbox addresses go with it.
                for node in d.nodes.values().filter(|x| x.ingress_addr.is_some()) {
                    let mut node = node.clone();
                    node.ingress_addr = None;
                    ops.push(Op::Update(Object::Node(node)));
                }
            }
            Ok(Txn::new(ops))
        })
        .await?;
        Ok(pb::Empty {})
    }
}

#[cfg(test)]
mod tests;
