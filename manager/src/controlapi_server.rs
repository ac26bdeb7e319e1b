//! The control API as a node serves it, on its local socket and (managers) to other managers.
//!
//! ```text
//!  request ─▶ Forwarding ─┬─ node calls (swarm init/join/leave/unlock, info) ─▶ NodeCalls
//!                         └─ cluster calls: the node's manager, the caller's role ─┬─ leader: ControlApi
//!                                                                                └─ follower: raw to the leader
//! ```
//!
//! [`Forwarding`] is the one place where a follower hands a call to the leader, as swarmkit's
//! generated raft proxy does for its whole control API: it forwards the HTTP/2 request as it
//! came, over mutual TLS with this manager's certificate, and streams the leader's answer back
//! unread. Nothing is decoded on the way, so the leader's own limits (and the client's) are the
//! only ones that apply. [`ControlService`] then only runs calls on the leader (or the node's own
//! calls), with the [`ControlApi`] the layer put into the request's extensions.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use proto::pb;
use proto::pb::control_server::ControlServer;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use crate::controlapi::ControlApi;
use crate::controlapi_logs::LogStream;
use crate::controlapi_watch::WatchStream;
use crate::secrets::FileKind;
use crate::Manager;

/// The node's own calls, which no manager can answer for it, and the manager it runs.
#[tonic::async_trait]
pub trait NodeCalls: Send + Sync + 'static {
    async fn swarm_init(&self, r: pb::SwarmInitRequest) -> Result<pb::SwarmInitResponse, Status>;
    async fn swarm_join(&self, r: pb::SwarmJoinRequest) -> Result<pb::SwarmJoinResponse, Status>;
    async fn swarm_leave(&self, r: pb::SwarmLeaveRequest) -> Result<pb::Empty, Status>;
    async fn swarm_unlock(&self, r: pb::SwarmUnlockRequest) -> Result<pb::Empty, Status>;
    async fn info(&self, r: pb::Empty) -> Result<pb::InfoResponse, Status>;
    /// The manager this node runs, or why there is none (not in a swarm, a worker, locked).
    async fn manager(&self) -> Result<Arc<Manager>, Status>;
}

/// The node's calls: served here and never forwarded.
const NODE_CALLS: &[&str] = &[
    "SwarmInit",
    "SwarmJoin",
    "SwarmLeave",
    "SwarmUnlock",
    "Info",
];

/// Request header that counts how often a call has been forwarded: a manager whose view of the
/// leader is stale forwards to a manager that forwards again; a few hops settle an election,
/// more would be a loop.
pub const FORWARDED_HEADER: &str = "shoal-forwarded";
const MAX_HOPS: u32 = 3;

/// The control service for `node`: on its local socket (`local`: root on this machine, no
/// certificate) or to other managers over TLS (`!local`: managers only, checked per call).
pub fn server(node: Arc<dyn NodeCalls>, local: bool) -> Forwarding {
    let inner = ControlServer::new(ControlService {
        node: node.clone(),
        local,
    })
    .max_decoding_message_size(proto::limits::MAX_CONTROL_REQUEST_BYTES);
    Forwarding { inner, node, local }
}

/// The layer in front of the control service: finds the manager, checks the caller, and
/// serves the call here (leader) or forwards it to the leader (follower).
#[derive(Clone)]
pub struct Forwarding {
    inner: ControlServer<ControlService>,
    node: Arc<dyn NodeCalls>,
    local: bool,
}

impl NamedService for Forwarding {
    const NAME: &'static str = <ControlServer<ControlService> as NamedService>::NAME;
}

/// Where a call goes.
enum Route {
    Here(ControlApi),
    Leader(tonic::transport::Channel, u32),
}

impl Forwarding {
    async fn route(
        node: &dyn NodeCalls,
        local: bool,
        ext: &http::Extensions,
        hops: u32,
    ) -> Result<Route, Status> {
        let mgr = node.manager().await?;
        if !local {
            mgr.auth.control_of(ext)?;
        }
        if mgr.is_leader() {
            return Ok(Route::Here(ControlApi::new(mgr)));
        }
        if hops >= MAX_HOPS {
            return Err(mgr.not_leader());
        }
        Ok(Route::Leader(mgr.leader_channel()?, hops + 1))
    }
}

impl tonic::codegen::Service<http::Request<Body>> for Forwarding {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(<Self as NamedService>::NAME))
            .and_then(|p| p.strip_prefix('/'));
        let mut inner = self.inner.clone();
        // The node's calls, and paths outside the control service (it answers
        // "unimplemented").
        if method.is_none_or(|m| NODE_CALLS.contains(&m)) {
            return Box::pin(async move { inner.call(req).await });
        }
        let node = self.node.clone();
        let local = self.local;
        let hops = req
            .headers()
            .get(FORWARDED_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let route = Forwarding::route(node.as_ref(), local, &parts.extensions, hops).await;
            let mut req = http::Request::from_parts(parts, body);
            match route {
                Ok(Route::Here(api)) => {
                    req.extensions_mut().insert(api);
                    inner.call(req).await
                }
                Ok(Route::Leader(channel, hops)) => {
                    req.headers_mut()
                        .insert(FORWARDED_HEADER, http::HeaderValue::from(hops));
                    use tower::ServiceExt;
                    match channel.oneshot(req).await {
                        Ok(resp) => Ok(resp),
                        // As a client call that fails to reach the leader would end.
                        Err(e) => Ok(Status::from_error(Box::new(e)).into_http()),
                    }
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The control service behind [`Forwarding`]: node calls go to the node, cluster calls run on
/// this manager, which leads.
#[derive(Clone)]
pub struct ControlService {
    node: Arc<dyn NodeCalls>,
    local: bool,
}

impl ControlService {
    fn local_only<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let peer = req.extensions().get::<proto::transport::PeerInfo>();
        if self.local && peer.is_some_and(|p| p.local) {
            Ok(())
        } else {
            Err(Status::permission_denied(
                "this call is only served on the node's local socket",
            ))
        }
    }
}

/// The API [`Forwarding`] chose for this call.
fn api_of<T>(req: &Request<T>) -> Result<ControlApi, Status> {
    req.extensions()
        .get::<ControlApi>()
        .cloned()
        .ok_or_else(|| Status::internal("control call not routed through the forwarding layer"))
}

/// The `Control` trait from two tables: the node's calls (local socket only) and the cluster
/// calls, each with the [`ControlApi`] method that answers it.
macro_rules! control_service {
    (
        node { $($nname:ident($nreq:ty) -> $nresp:ty;)* }
        cluster { $($name:ident($req:ty) -> $resp:ty: |$api:ident, $r:ident| $call:expr;)* }
    ) => {
        #[tonic::async_trait]
        impl pb::control_server::Control for ControlService {
            type ServiceLogsStream = LogStream;
            type WatchServiceStream = WatchStream;
            $(
                async fn $nname(&self, req: Request<$nreq>) -> Result<Response<$nresp>, Status> {
                    self.local_only(&req)?;
                    self.node.$nname(req.into_inner()).await.map(Response::new)
                }
            )*
            $(
                async fn $name(&self, req: Request<$req>) -> Result<Response<$resp>, Status> {
                    let $api = api_of(&req)?;
                    let $r = req.into_inner();
                    $call.await.map(Response::new)
                }
            )*
        }
    };
}

control_service! {
    node {
        swarm_init(pb::SwarmInitRequest) -> pb::SwarmInitResponse;
        swarm_join(pb::SwarmJoinRequest) -> pb::SwarmJoinResponse;
        swarm_leave(pb::SwarmLeaveRequest) -> pb::Empty;
        swarm_unlock(pb::SwarmUnlockRequest) -> pb::Empty;
        info(pb::Empty) -> pb::InfoResponse;
    }
    cluster {
        get_unlock_key(pb::GetUnlockKeyRequest) -> pb::UnlockKeyResponse: |api, r| api.get_unlock_key(r);
        get_cluster(pb::Empty) -> pb::ClusterInfo: |api, _r| api.get_cluster();
        update_cluster(pb::UpdateClusterRequest) -> pb::ClusterInfo: |api, r| api.update_cluster(r);
        get_join_tokens(pb::GetJoinTokensRequest) -> pb::JoinTokens: |api, r| api.get_join_tokens(r);
        list_nodes(pb::Empty) -> pb::ListNodesResponse: |api, _r| api.list_nodes();
        get_node(pb::GetNodeRequest) -> pb::Node: |api, r| api.get_node(r);
        update_node(pb::UpdateNodeRequest) -> pb::Node: |api, r| api.update_node(r);
        remove_node(pb::RemoveNodeRequest) -> pb::Empty: |api, r| api.remove_node(r);
        create_service(pb::ServiceSpecRequest) -> pb::ServiceView: |api, r| api.create_service(r);
        update_service(pb::UpdateServiceRequest) -> pb::ServiceView: |api, r| api.update_service(r);
        remove_service(pb::GetServiceRequest) -> pb::Empty: |api, r| api.remove_service(r);
        get_service(pb::GetServiceRequest) -> pb::ServiceView: |api, r| api.get_service(r);
        list_services(pb::Empty) -> pb::ListServicesResponse: |api, _r| api.list_services();
        list_tasks(pb::ListTasksRequest) -> pb::ListTasksResponse: |api, r| api.list_tasks(r);
        create_network(pb::NetworkSpecRequest) -> pb::NetworkView: |api, r| api.create_network(r);
        list_networks(pb::Empty) -> pb::ListNetworksResponse: |api, _r| api.list_networks();
        get_network(pb::GetNetworkRequest) -> pb::NetworkView: |api, r| api.get_network(r);
        remove_network(pb::GetNetworkRequest) -> pb::Empty: |api, r| api.remove_network(r);
        create_secret(pb::CreateFileObjectRequest) -> pb::FileObject: |api, r| api.create_file_object(FileKind::Secret, r);
        list_secrets(pb::Empty) -> pb::ListFileObjectsResponse: |api, _r| api.list_file_objects(FileKind::Secret);
        get_secret(pb::GetFileObjectRequest) -> pb::FileObject: |api, r| api.get_file_object(FileKind::Secret, r);
        remove_secret(pb::GetFileObjectRequest) -> pb::Empty: |api, r| api.remove_file_object(FileKind::Secret, r);
        create_config(pb::CreateFileObjectRequest) -> pb::FileObject: |api, r| api.create_file_object(FileKind::Config, r);
        list_configs(pb::Empty) -> pb::ListFileObjectsResponse: |api, _r| api.list_file_objects(FileKind::Config);
        get_config(pb::GetFileObjectRequest) -> pb::FileObject: |api, r| api.get_file_object(FileKind::Config, r);
        remove_config(pb::GetFileObjectRequest) -> pb::Empty: |api, r| api.remove_file_object(FileKind::Config, r);
        service_logs(pb::ServiceLogsRequest) -> LogStream: |api, r| api.service_logs(r);
        watch_service(pb::GetServiceRequest) -> WatchStream: |api, r| api.watch_service(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::Service;

    /// A node that is in no swarm: it answers `info` and has no manager.
    struct Outside;

    #[tonic::async_trait]
    impl NodeCalls for Outside {
        async fn swarm_init(
            &self,
            _: pb::SwarmInitRequest,
        ) -> Result<pb::SwarmInitResponse, Status> {
            Err(Status::unimplemented("init"))
        }
        async fn swarm_join(
            &self,
            _: pb::SwarmJoinRequest,
        ) -> Result<pb::SwarmJoinResponse, Status> {
            Err(Status::unimplemented("join"))
        }
        async fn swarm_leave(&self, _: pb::SwarmLeaveRequest) -> Result<pb::Empty, Status> {
            Err(Status::unimplemented("leave"))
        }
        async fn swarm_unlock(&self, _: pb::SwarmUnlockRequest) -> Result<pb::Empty, Status> {
            Err(Status::unimplemented("unlock"))
        }
        async fn info(&self, _: pb::Empty) -> Result<pb::InfoResponse, Status> {
            Ok(pb::InfoResponse {
                local_state: pb::LocalNodeState::Inactive as i32,
                ..Default::default()
            })
        }
        async fn manager(&self) -> Result<Arc<Manager>, Status> {
            Err(Status::failed_precondition(
                "This node is not a swarm manager.",
            ))
        }
    }

    /// `method` with an empty request message (`pb::Empty` and the like), from a caller on
    /// the local socket (`local`) or a peer over TLS; how it ends.
    async fn call(svc: &mut Forwarding, method: &str, local: bool) -> Status {
        use tonic::codegen::Body as _;
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!("/{}/{method}", Forwarding::NAME))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            // One gRPC frame: not compressed, 0 bytes long.
            .body(Body::new(String::from("\0\0\0\0\0")))
            .expect("a request");
        req.extensions_mut().insert(proto::transport::PeerInfo {
            remote_addr: None,
            cert: None,
            local,
        });
        let resp = svc.call(req).await.expect("infallible");
        if let Some(s) = Status::from_header_map(resp.headers()) {
            return s;
        }
        let mut body = resp.into_body();
        loop {
            let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx))
                .await
                .expect("trailers before the end")
                .expect("a frame");
            if let Ok(trailers) = frame.into_trailers() {
                return Status::from_header_map(&trailers).expect("a status in the trailers");
            }
        }
    }

    #[tokio::test]
    async fn node_calls_stay_on_the_node_and_cluster_calls_need_its_manager() {
        let mut local = server(Arc::new(Outside), true);
        let mut remote = server(Arc::new(Outside), false);
        // The node's own call, answered without a manager.
        let s = call(&mut local, "Info", true).await;
        assert_eq!(s.code(), tonic::Code::Ok, "{s:?}");
        // ... and only on its local socket.
        let s = call(&mut remote, "Info", false).await;
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            s.message(),
            "this call is only served on the node's local socket"
        );
        // A cluster call on a node without a manager: the node's reason, on either side.
        for (svc, local) in [(&mut local, true), (&mut remote, false)] {
            let s = call(svc, "ListNodes", local).await;
            assert_eq!(s.code(), tonic::Code::FailedPrecondition);
            assert_eq!(s.message(), "This node is not a swarm manager.");
        }
    }
}
