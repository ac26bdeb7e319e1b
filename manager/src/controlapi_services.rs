//! Control API for services and tasks: validation of specs, versioned updates that keep the
//! previous spec for rollback, and the read views the CLI shows.

use proto::api::{EndpointView, ServiceView, TaskView, UpdateStatusView, VirtualIpView};
use proto::pb;
use proto::security::random_id;
use proto::spec::{EndpointMode, Mount, MountKind, ServiceMode, ServiceSpec, TaskState};
use tonic::Status;

use crate::controlapi::ControlApi;
use crate::error::ApiError;
use crate::manager::update_with_retry;
use crate::store::Availability;
use crate::store::{
    Kind, NodeState, Object, Op, Service, StoreData, Txn, UpdateState, UpdateStatus,
};

/// Largest spec accepted (a spec is small; this bounds a malicious or mistaken request).
const MAX_SPEC_BYTES: usize = 256 * 1024;

/// A request's spec (`field`, a `what` spec): absent or larger than `max` bytes is refused
/// with the field named.
pub(crate) fn bounded_spec<W: prost::Message>(
    field: &'static str,
    what: &str,
    spec: Option<W>,
    max: usize,
) -> Result<W, ApiError> {
    let spec =
        spec.ok_or_else(|| ApiError::invalid(field, format!("a {what} spec is required")))?;
    let len = spec.encoded_len();
    if len > max {
        return Err(ApiError::invalid(
            field,
            format!("the {what} spec is {len} bytes; the limit is {max}"),
        ));
    }
    Ok(spec)
}

/// The domain spec of a request's `spec`: absent, too large or not convertible is refused
/// with the field named.
fn parse_spec(field: &'static str, spec: Option<pb::ServiceSpec>) -> Result<ServiceSpec, Status> {
    let spec = bounded_spec(field, "service", spec, MAX_SPEC_BYTES)?;
    Ok(ServiceSpec::try_from(spec).map_err(|e| ApiError::invalid(field, e.to_string()))?)
}

/// Reject what Swarm rejects, with the field named.
pub fn validate_spec(spec: &ServiceSpec) -> Result<(), Status> {
    let bad = |m: String| Err(ApiError::InvalidArgument(m).into());
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
        return bad(format!(
            "invalid service name {name:?}: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        ));
    }
    if spec.task.image.trim().is_empty() {
        return bad("an image is required".into());
    }
    proto::reference::parse_normalized(&spec.task.image)
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    proto::limits::check_service_spec(spec).map_err(ApiError::InvalidArgument)?;
    proto::limits::check_user(&spec.task.user).map_err(ApiError::InvalidArgument)?;
    if let ServiceMode::ReplicatedJob {
        max_concurrent,
        total_completions,
    } = spec.mode
    {
        if max_concurrent == 0 || total_completions == 0 {
            return Err(ApiError::invalid(
                "spec.mode.replicated-job",
                "max_concurrent and total_completions must be at least 1",
            )
            .into());
        }
    }
    for c in &spec.task.placement.constraints {
        crate::scheduler::constraint::Constraint::parse(c)
            .map_err(|e| ApiError::InvalidArgument(format!("invalid constraint {c:?}: {e}")))?;
    }
    for p in &spec.task.placement.preferences {
        if p.strip_prefix("spread=node.labels.")
            .is_none_or(str::is_empty)
        {
            return bad(format!(
                "invalid placement preference {p:?}: expected spread=node.labels.KEY"
            ));
        }
    }
    for (u, which) in [(&spec.update, "update"), (&spec.rollback, "rollback")] {
        if !(0.0..=1.0).contains(&u.max_failure_ratio) {
            return Err(ApiError::invalid(
                format!("spec.{which}.max_failure_ratio"),
                format!("{} must be between 0 and 1", u.max_failure_ratio),
            )
            .into());
        }
    }
    if !spec.task.stop_signal.is_empty()
        && !spec
            .task
            .stop_signal
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+')
    {
        return Err(ApiError::invalid(
            "spec.task.stop_signal",
            format!("invalid signal {:?}", spec.task.stop_signal),
        )
        .into());
    }
    crate::limits::validate_spec_durations(spec)?;
    validate_mounts(&spec.task.mounts)?;
    validate_endpoint(spec)
}

/// What a node would refuse of a mount, refused here: an API client that is not the CLI gets
/// a one-line error at create or update instead of tasks that are REJECTED on every node.
/// (Whether a bind source exists is the node's to say.)
pub fn validate_mounts(mounts: &[Mount]) -> Result<(), ApiError> {
    let mut targets = std::collections::BTreeSet::new();
    for (i, m) in mounts.iter().enumerate() {
        let field = |f: &str| format!("spec.task.mounts[{i}].{f}");
        let t = &m.target;
        if t.is_empty() {
            return Err(ApiError::invalid(field("target"), "a target is required"));
        }
        if !t.starts_with('/') || t.contains('\0') {
            return Err(ApiError::invalid(
                field("target"),
                format!("invalid mount target {t:?}: must be an absolute path"),
            ));
        }
        if t.split('/').any(|c| c == "..") {
            return Err(ApiError::invalid(
                field("target"),
                format!("invalid mount target {t:?}: must not contain '..'"),
            ));
        }
        let normal = format!(
            "/{}",
            t.split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect::<Vec<_>>()
                .join("/")
        );
        if normal == "/" {
            return Err(ApiError::invalid(
                field("target"),
                "invalid mount target \"/\": the container's root cannot be a mount",
            ));
        }
        if !targets.insert(normal) {
            return Err(ApiError::invalid(
                field("target"),
                format!("duplicate mount point {t:?}: mount each target once"),
            ));
        }
        let src = &m.source;
        match m.kind {
            MountKind::Bind if !src.starts_with('/') || src.contains('\0') => {
                return Err(ApiError::invalid(
                    field("source"),
                    format!("invalid mount config for type \"bind\": source {src:?} must be an absolute host path"),
                ))
            }
            MountKind::Volume if !src.is_empty() && !volume_name_ok(src) => {
                return Err(ApiError::invalid(
                    field("source"),
                    format!("invalid volume name {src:?}: use letters, digits, '_', '.' or '-', starting with a letter or digit"),
                ))
            }
            MountKind::Tmpfs if !src.is_empty() => {
                return Err(ApiError::invalid(
                    field("source"),
                    "invalid mount config for type \"tmpfs\": source must not be specified",
                ))
            }
            _ => {}
        }
        if let Some(e) = m.volume_options_error() {
            return Err(ApiError::invalid(field("volume_options"), e));
        }
    }
    Ok(())
}

/// Docker's volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn volume_name_ok(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Published ports and network attachments, as far as they can be checked without the store.
fn validate_endpoint(spec: &ServiceSpec) -> Result<(), Status> {
    for (i, p) in spec.endpoint.ports.iter().enumerate() {
        if p.target_port == 0 {
            return Err(ApiError::invalid(
                format!("spec.endpoint.ports[{i}].target_port"),
                "the target port must be between 1 and 65535",
            )
            .into());
        }
        if p.published_port != 0
            && spec.endpoint.ports[..i]
                .iter()
                .any(|q| q.published_port == p.published_port && q.protocol == p.protocol)
        {
            return Err(ApiError::invalid(
                format!("spec.endpoint.ports[{i}].published_port"),
                format!(
                    "port {}/{} is published twice; publish each port once",
                    p.published_port,
                    p.protocol.as_str()
                ),
            )
            .into());
        }
    }
    if spec.endpoint.mode == EndpointMode::Dnsrr
        && crate::allocator::uses_ingress(&spec.endpoint.ports)
    {
        return Err(ApiError::invalid(
            "spec.endpoint.mode",
            "dnsrr cannot publish ports in ingress mode; publish in host mode or use vip",
        )
        .into());
    }
    for (i, a) in spec.task.networks.iter().enumerate() {
        if a.target.trim().is_empty() {
            return Err(ApiError::invalid(
                format!("spec.task.networks[{i}].target"),
                "a network name is required",
            )
            .into());
        }
    }
    Ok(())
}

/// Resolve `--network` targets (name, id or id prefix) to network ids, as stored.
pub fn resolve_networks(d: &StoreData, spec: &mut ServiceSpec) -> Result<(), Status> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, a) in spec.task.networks.iter_mut().enumerate() {
        let n = crate::controlapi_networks::find_network(d, &a.target).map_err(|_| {
            ApiError::NotFound {
                kind: "network",
                name: a.target.clone(),
            }
        })?;
        if n.spec.ingress {
            return Err(ApiError::invalid(
                format!("spec.task.networks[{i}].target"),
                format!(
                    "network {} is the routing mesh and cannot be joined; publish a port instead",
                    a.target
                ),
            )
            .into());
        }
        if !seen.insert(n.id.clone()) {
            return Err(ApiError::invalid(
                format!("spec.task.networks[{i}].target"),
                format!("network {} is given more than once", a.target),
            )
            .into());
        }
        a.target = n.id.clone();
    }
    Ok(())
}

fn alloc_status(e: crate::allocator::AllocError) -> Status {
    use crate::allocator::AllocError;
    match e {
        AllocError::PortInUse { .. } => Status::already_exists(e.to_string()),
        AllocError::PortReserved { .. } => ApiError::InvalidArgument(e.to_string()).into(),
        _ => ApiError::FailedPrecondition(e.to_string()).into(),
    }
}

/// The service `s` with spec `spec` stored: network targets resolved, endpoint allocated.
pub(crate) fn with_spec(
    d: &StoreData,
    s: &mut Service,
    mut spec: ServiceSpec,
) -> Result<(), Status> {
    // Published ports are answered on every node through the ingress network: without it
    // (`network rm ingress`) they would be published nowhere. Docker's words.
    if crate::allocator::uses_ingress(&spec.endpoint.ports) && d.ingress_network().is_none() {
        return Err(ApiError::FailedPrecondition(
            "service needs ingress network, but no ingress network is present".into(),
        )
        .into());
    }
    resolve_networks(d, &mut spec)?;
    s.endpoint =
        crate::allocator::allocate_endpoint(d, &s.id, &spec, &s.endpoint).map_err(alloc_status)?;
    s.spec = spec;
    Ok(())
}

pub(crate) fn find_service<'a>(d: &'a StoreData, key: &str) -> Result<&'a Service, Status> {
    crate::store::find_by_key(&d.services, key, |s| &s.spec.name).map_err(|miss| match miss {
        crate::store::Miss::NotFound => ApiError::NotFound {
            kind: "service",
            name: key.into(),
        }
        .into(),
        crate::store::Miss::Ambiguous => ApiError::Ambiguous {
            kind: "service",
            name: key.into(),
            hint: "",
        }
        .into(),
    })
}

/// Nodes a global service runs on: ready, active, and (roughly) its constraints; the
/// scheduler has the last word.
fn eligible_nodes(d: &StoreData) -> u64 {
    d.nodes
        .values()
        .filter(|n| n.state == NodeState::Ready && n.availability == Availability::Active)
        .count() as u64
}

pub fn service_view(d: &StoreData, s: &Service) -> ServiceView {
    let tasks: Vec<_> = d.service_tasks(&s.id).collect();
    let running = tasks
        .iter()
        .filter(|t| t.desired_state == TaskState::Running && t.status.state == TaskState::Running)
        .count() as u64;
    let completed = tasks
        .iter()
        .filter(|t| t.status.state == TaskState::Complete)
        .count() as u64;
    let desired = match s.spec.mode {
        ServiceMode::Replicated { replicas } => replicas,
        ServiceMode::Global => tasks
            .iter()
            .filter(|t| t.desired_state == TaskState::Running)
            .count()
            .max(eligible_nodes(d).min(1) as usize) as u64,
        ServiceMode::ReplicatedJob {
            total_completions, ..
        } => total_completions,
        ServiceMode::GlobalJob => eligible_nodes(d),
    };
    ServiceView {
        id: s.id.clone(),
        version: s.version,
        spec: s.spec.clone(),
        spec_version: s.spec_version,
        previous_spec: s.previous_spec.clone(),
        update_status: s.update_status.as_ref().map(|u| UpdateStatusView {
            state: u.state.as_str().into(),
            started_ms: u.started_ms,
            completed_ms: u.completed_ms,
            message: u.message.clone(),
        }),
        created_at_ms: s.created_at_ms,
        updated_at_ms: s.updated_at_ms,
        running,
        desired,
        completed,
        endpoint: EndpointView {
            virtual_ips: s
                .endpoint
                .vips
                .iter()
                .map(|(net, a)| VirtualIpView {
                    network_id: net.clone(),
                    addr: match d.networks.get(net).and_then(|n| n.subnet.split_once('/')) {
                        Some((_, len)) => format!("{a}/{len}"),
                        None => a.to_string(),
                    },
                })
                .collect(),
            ports: s.endpoint.ports.clone(),
        },
    }
}

impl ControlApi {
    pub async fn create_service(
        &self,
        req: pb::ServiceSpecRequest,
    ) -> Result<pb::ServiceView, Status> {
        let spec = parse_spec("ServiceSpecRequest.spec", req.spec)?;
        validate_spec(&spec)?;
        let id = random_id(25);
        let now = self.mgr.now_ms();
        let service = Service {
            id: id.clone(),
            version: 0,
            spec: spec.clone(),
            spec_version: 1,
            previous_spec: None,
            update_status: None,
            created_at_ms: now,
            updated_at_ms: now,
            endpoint: Default::default(),
        };
        let name = spec.name.clone();
        update_with_retry(&self.mgr, |d| {
            crate::secrets::check_refs(d, &spec.task).map_err(ApiError::InvalidArgument)?;
            if d.services.values().any(|s| s.spec.name == name) {
                return Err(ApiError::AlreadyExists {
                    kind: "service",
                    name: name.clone(),
                    hint: "",
                }
                .into());
            }
            crate::limits::check_task_limits(d, &spec, None)?;
            let mut service = service.clone();
            with_spec(d, &mut service, spec.clone())?;
            Ok(Txn::new(vec![Op::Create(Object::Service(Box::new(
                service,
            )))]))
        })
        .await?;
        self.mgr.store.view(|d| {
            let s = d
                .services
                .get(&id)
                .ok_or_else(|| ApiError::internal("reading the new service", "service vanished"))?;
            Ok(pb::ServiceView::from(&service_view(d, s)))
        })
    }

    pub async fn update_service(
        &self,
        req: pb::UpdateServiceRequest,
    ) -> Result<pb::ServiceView, Status> {
        let new_spec = if req.rollback {
            None
        } else {
            Some(parse_spec("UpdateServiceRequest.spec", req.spec)?)
        };
        if let Some(s) = &new_spec {
            validate_spec(s)?;
        }
        let mut id = String::new();
        update_with_retry(&self.mgr, |d| {
            let mut s = find_service(d, &req.id)?.clone();
            id = s.id.clone();
            if req.version != 0 && req.version != s.version {
                return Err(ApiError::Conflict(format!(
                    "service {} changed since it was read (version {} now {}); retry",
                    s.spec.name, req.version, s.version
                ))
                .into());
            }
            let now = self.mgr.now_ms();
            let (spec, state) = match &new_spec {
                None => {
                    let prev = s.previous_spec.clone().ok_or_else(|| {
                        ApiError::FailedPrecondition(format!(
                            "service {} has no previous spec to roll back to",
                            s.spec.name
                        ))
                    })?;
                    // A secret or config the previous spec names may have been removed
                    // since (only the current spec keeps them in use).
                    crate::secrets::check_refs(d, &prev.task).map_err(|e| {
                        ApiError::FailedPrecondition(format!("cannot roll back: {e}"))
                    })?;
                    (prev, UpdateState::RollbackStarted)
                }
                Some(n) => {
                    crate::secrets::check_refs(d, &n.task).map_err(ApiError::InvalidArgument)?;
                    if n.name != s.spec.name
                        && d.services
                            .values()
                            .any(|o| o.spec.name == n.name && o.id != s.id)
                    {
                        return Err(ApiError::AlreadyExists {
                            kind: "service",
                            name: n.name.clone(),
                            hint: "",
                        }
                        .into());
                    }
                    if std::mem::discriminant(&n.mode) != std::mem::discriminant(&s.spec.mode) {
                        return Err(ApiError::InvalidArgument(
                            "the service mode cannot be changed".into(),
                        )
                        .into());
                    }
                    (n.clone(), UpdateState::Updating)
                }
            };
            crate::limits::check_task_limits(d, &spec, Some(&s.id))?;
            let old = s.spec.clone();
            with_spec(d, &mut s, spec)?;
            let on_mesh = |sp: &ServiceSpec| crate::allocator::uses_ingress(&sp.endpoint.ports);
            let task_changed = s.spec.task != old.task || on_mesh(&s.spec) != on_mesh(&old);
            s.previous_spec = Some(old);
            s.spec_version += 1;
            s.updated_at_ms = now;
            if task_changed || req.rollback {
                s.update_status = Some(UpdateStatus {
                    state,
                    started_ms: now,
                    completed_ms: 0,
                    message: if req.rollback {
                        "manually requested rollback".into()
                    } else {
                        "update in progress".into()
                    },
                });
            }
            Ok(Txn::new(vec![Op::Update(Object::Service(Box::new(s)))]))
        })
        .await?;
        self.mgr.store.view(|d| {
            let s = d
                .services
                .get(&id)
                .ok_or_else(|| Status::not_found("service removed meanwhile"))?;
            Ok(pb::ServiceView::from(&service_view(d, s)))
        })
    }

    pub async fn remove_service(&self, req: pb::GetServiceRequest) -> Result<pb::Empty, Status> {
        update_with_retry(&self.mgr, |d| {
            let s = find_service(d, &req.id)?;
            let mut ops = vec![Op::Delete {
                kind: Kind::Service,
                id: s.id.clone(),
            }];
            // The first tasks go with the service; the orchestrator's reaper tells the rest
            // (a large service's would make one huge raft entry).
            let first = crate::orchestrator::MAX_OPS_PER_TXN - 1;
            for t in d
                .service_tasks(&s.id)
                .filter(|t| t.desired_state < TaskState::Remove)
                .take(first)
            {
                let mut t = t.clone();
                t.desired_state = TaskState::Remove;
                ops.push(Op::Update(Object::Task(t)));
            }
            Ok(Txn::new(ops))
        })
        .await?;
        Ok(pb::Empty {})
    }

    pub async fn get_service(&self, req: pb::GetServiceRequest) -> Result<pb::ServiceView, Status> {
        self.mgr.linearizable().await?;
        self.mgr.store.view(|d| {
            Ok(pb::ServiceView::from(&service_view(
                d,
                find_service(d, &req.id)?,
            )))
        })
    }

    pub async fn list_services(&self) -> Result<pb::ListServicesResponse, Status> {
        self.mgr.linearizable().await?;
        Ok(self.mgr.store.view(|d| pb::ListServicesResponse {
            services: d
                .services
                .values()
                .map(|s| pb::ServiceView::from(&service_view(d, s)))
                .collect(),
        }))
    }

    pub async fn list_tasks(
        &self,
        req: pb::ListTasksRequest,
    ) -> Result<pb::ListTasksResponse, Status> {
        self.mgr.linearizable().await?;
        let desired = match req.desired {
            None => None,
            Some(v) => match pb::TaskState::try_from(v) {
                Ok(s) => Some(TaskState::from(s)),
                Err(_) => {
                    return Err(ApiError::invalid(
                        "ListTasksRequest.desired",
                        format!("unknown task state {v}"),
                    )
                    .into())
                }
            },
        };
        self.mgr.store.view(|d| {
            let service = match req.service.as_str() {
                "" => None,
                key => Some(find_service(d, key)?.id.clone()),
            };
            let node = match req.node.as_str() {
                "" => None,
                key => Some(d.find_node(key).map_err(ApiError::from)?.id.clone()),
            };
            let tasks: Box<dyn Iterator<Item = &crate::store::Task>> = match &service {
                Some(sid) => Box::new(d.service_tasks(sid)),
                None => Box::new(d.tasks.values()),
            };
            let mut out: Vec<TaskView> = tasks
                .filter(|t| node.as_ref().is_none_or(|n| &t.node_id == n))
                .filter(|t| desired.is_none_or(|s| t.desired_state == s))
                .map(|t| TaskView {
                    id: t.id.clone(),
                    service_id: t.service_id.clone(),
                    service_name: t.service_name.clone(),
                    slot: t.slot,
                    node_id: t.node_id.clone(),
                    node_hostname: d
                        .nodes
                        .get(&t.node_id)
                        .map(|n| n.description.hostname.clone())
                        .unwrap_or_default(),
                    spec: proto::spec::TaskSpec::clone(&t.spec),
                    spec_version: t.spec_version,
                    desired_state: t.desired_state,
                    status: t.status.clone(),
                    created_at_ms: t.created_at_ms,
                    networks: t.networks.clone(),
                })
                .collect();
            out.sort_by(|a, b| {
                (
                    &a.service_name,
                    a.slot,
                    &a.node_hostname,
                    std::cmp::Reverse(a.created_at_ms),
                )
                    .cmp(&(
                        &b.service_name,
                        b.slot,
                        &b.node_hostname,
                        std::cmp::Reverse(b.created_at_ms),
                    ))
            });
            Ok(pb::ListTasksResponse {
                tasks: out.iter().map(Into::into).collect(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::spec::{TaskSpec, UpdateConfig};

    fn spec(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            labels: Default::default(),
            mode: ServiceMode::Replicated { replicas: 1 },
            task: TaskSpec {
                image: "busybox".into(),
                ..Default::default()
            },
            update: UpdateConfig::default(),
            rollback: UpdateConfig::default(),
            endpoint: Default::default(),
        }
    }

    #[test]
    fn images_are_checked_as_docker_checks_them() {
        let with_image = |image: &str| {
            let mut s = spec("web");
            s.task.image = image.into();
            validate_spec(&s).map_err(|e| e.message().to_string())
        };
        assert!(with_image("busybox:1.36").is_ok());
        assert!(with_image("127.0.0.1:5000/team/app@sha256:".to_string().as_str()).is_err());
        assert_eq!(
            with_image("busy box").unwrap_err(),
            "invalid reference format"
        );
        assert_eq!(
            with_image("Busybox").unwrap_err(),
            "invalid reference format: repository name (library/Busybox) must be lowercase"
        );
        assert_eq!(
            with_image(&"a".repeat(256)).unwrap_err(),
            "invalid reference format: repository name must not be more than 255 characters"
        );
    }

    #[test]
    fn mounts_are_checked_before_any_task_exists() {
        let with = |mounts: Vec<Mount>| {
            let mut s = spec("web");
            s.task.mounts = mounts;
            validate_spec(&s).map_err(|e| e.message().to_string())
        };
        let m = |kind, source: &str, target: &str| Mount {
            kind,
            source: source.into(),
            target: target.into(),
            readonly: false,
            volume_options: Default::default(),
        };
        let opts = |kind, pairs: &[(&str, &str)]| Mount {
            volume_options: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..m(kind, "v", "/v")
        };
        assert!(with(vec![opts(
            MountKind::Volume,
            &[("type", "tmpfs"), ("o", "size=1m")]
        )])
        .is_ok());
        assert!(with(vec![opts(
            MountKind::Volume,
            &[("type", "none"), ("o", "bind"), ("device", "/srv")]
        )])
        .is_ok());
        for (pairs, kind, want) in [
            (
                &[("type", "tmpfs"), ("size", "1m")][..],
                MountKind::Volume,
                "unknown volume option \"size\": the local driver takes type, device and o",
            ),
            (
                &[("o", "size=1m")][..],
                MountKind::Volume,
                "volume options need type= (tmpfs, none with o=bind, or a file system type)",
            ),
            (
                &[("type", "none"), ("device", "/srv")][..],
                MountKind::Volume,
                "volume type none needs o=bind (a bind of device)",
            ),
            (
                &[("type", "none"), ("o", "bind"), ("device", "srv")][..],
                MountKind::Volume,
                "volume device \"srv\": a bind needs an absolute host path",
            ),
            (
                &[("type", "nfs")][..],
                MountKind::Volume,
                "volume type nfs needs device=",
            ),
            (
                &[("type", "tm pfs")][..],
                MountKind::Volume,
                "invalid volume type \"tm pfs\"",
            ),
            (
                &[("type", "tmpfs")][..],
                MountKind::Tmpfs,
                "volume options apply to volume mounts only",
            ),
        ] {
            let mut mount = opts(kind, pairs);
            if kind == MountKind::Tmpfs {
                mount.source.clear();
            }
            assert_eq!(
                with(vec![mount]).unwrap_err(),
                format!("spec.task.mounts[0].volume_options: {want}")
            );
        }
        assert!(with(vec![
            m(MountKind::Bind, "/srv", "/data"),
            m(MountKind::Volume, "db-1.x", "/var/lib/db"),
            m(MountKind::Volume, "", "/cache"),
            m(MountKind::Tmpfs, "", "/tmp"),
        ])
        .is_ok());
        for (mounts, want) in [
            (
                vec![m(MountKind::Bind, "/srv", "data")],
                "spec.task.mounts[0].target: invalid mount target \"data\": must be an absolute path",
            ),
            (
                vec![m(MountKind::Tmpfs, "", "")],
                "spec.task.mounts[0].target: a target is required",
            ),
            (
                vec![m(MountKind::Tmpfs, "", "/a/../b")],
                "spec.task.mounts[0].target: invalid mount target \"/a/../b\": must not contain '..'",
            ),
            (
                vec![m(MountKind::Tmpfs, "", "//")],
                "spec.task.mounts[0].target: invalid mount target \"/\": the container's root cannot be a mount",
            ),
            (
                vec![m(MountKind::Tmpfs, "", "/x"), m(MountKind::Volume, "", "/x/")],
                "spec.task.mounts[1].target: duplicate mount point \"/x/\": mount each target once",
            ),
            (
                vec![m(MountKind::Bind, "srv", "/data")],
                "spec.task.mounts[0].source: invalid mount config for type \"bind\": source \"srv\" must be an absolute host path",
            ),
            (
                vec![m(MountKind::Volume, "../etc", "/data")],
                "spec.task.mounts[0].source: invalid volume name \"../etc\": use letters, digits, '_', '.' or '-', starting with a letter or digit",
            ),
            (
                vec![m(MountKind::Volume, ".hidden", "/data")],
                "spec.task.mounts[0].source: invalid volume name \".hidden\": use letters, digits, '_', '.' or '-', starting with a letter or digit",
            ),
            (
                vec![m(MountKind::Tmpfs, "/x", "/data")],
                "spec.task.mounts[0].source: invalid mount config for type \"tmpfs\": source must not be specified",
            ),
        ] {
            assert_eq!(with(mounts).unwrap_err(), want);
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(validate_spec(&spec("web")).is_ok());
        let e = validate_spec(&spec("-bad")).unwrap_err();
        assert!(e.message().contains("invalid service name"));
        let mut s = spec("web");
        s.task.image.clear();
        assert!(validate_spec(&s).unwrap_err().message().contains("image"));
        let mut s = spec("web");
        s.task.placement.constraints = vec!["node.colour==blue".into()];
        assert!(validate_spec(&s)
            .unwrap_err()
            .message()
            .contains("invalid constraint"));
        s.task.placement.constraints =
            vec!["node.labels.zone != a".into(), "node.role==manager".into()];
        assert!(validate_spec(&s).is_ok());
        s.task.placement.preferences = vec!["spread=zone".into()];
        assert!(validate_spec(&s)
            .unwrap_err()
            .message()
            .contains("placement preference"));
        let mut s = spec("web");
        s.task.user = "root:root:root".into();
        assert!(validate_spec(&s)
            .unwrap_err()
            .message()
            .starts_with("invalid --user \"root:root:root\""));
        s.task.user = "1000:1000".into();
        assert!(validate_spec(&s).is_ok());
        s.task.env = vec!["X=1".into(); proto::limits::MAX_ENV_ENTRIES + 1];
        assert!(validate_spec(&s).unwrap_err().message().contains("--env"));
        let mut big = pb::ServiceSpec::from(&spec("web"));
        big.name = "x".repeat(MAX_SPEC_BYTES + 1);
        assert!(parse_spec("ServiceSpecRequest.spec", Some(big))
            .unwrap_err()
            .message()
            .starts_with("ServiceSpecRequest.spec: the service spec is"));
        let e = parse_spec("ServiceSpecRequest.spec", None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "ServiceSpecRequest.spec: a service spec is required"
        );
        let mut no_task = pb::ServiceSpec::from(&spec("web"));
        no_task.task = None;
        let e = parse_spec("UpdateServiceRequest.spec", Some(no_task)).unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (
                tonic::Code::InvalidArgument,
                "UpdateServiceRequest.spec: ServiceSpec.task: missing"
            )
        );
    }
}
