//! The CLI's client of the daemon's control API: one connection, one method per call, the
//! retry while the cluster has no leader built in, and the conversion of the wire messages to
//! the domain types the commands show ([`proto::convert_api`]).
//!
//! ```text
//!   command ──► Client::list_tasks(..) ──► retry (Unavailable: no leader yet) ──► daemon
//!                        ◄── Vec<TaskView> (converted here) ◄──────────────────────┘
//! ```

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use proto::api::{NetworkView, ServiceView, TaskView};
use proto::convert::ConvertError;
use proto::pb;
use proto::pb::control_client::ControlClient;
use proto::spec::{NetworkSpec, ServiceSpec, TaskState};
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use crate::commands::CliError;

/// Why a call failed: the daemon said no, or its answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}", .0.message())]
    Status(#[from] Status),
    #[error("malformed reply from the daemon: {0}")]
    Malformed(#[from] ConvertError),
    #[error("cannot show the reply: {0}")]
    Show(serde_json::Error),
}

impl ClientError {
    /// The daemon's status code, when it answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Status(s) => s.into(),
            other => CliError(format!("Error: {other}")),
        }
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// Which file objects: `shoal secret …` or `shoal config …`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Secret,
    Config,
}

/// Whether a call is repeated while the cluster has no leader. Calls that would do their work
/// twice if the first attempt got through (rotating a key, joining, initialising) are not.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    Once,
    WhileNoLeader,
}

/// The control API of the daemon at `--host`.
#[derive(Clone)]
pub struct Client {
    inner: ControlClient<Channel>,
}

/// A channel to the daemon's socket (`--host unix://PATH`).
pub async fn daemon_channel(host: &str) -> std::result::Result<Channel, CliError> {
    let path = host.strip_prefix("unix://").ok_or_else(|| {
        CliError(format!(
            "Error: invalid --host {host:?}: expected unix:///path/to/socket"
        ))
    })?;
    proto::transport::unix_channel(PathBuf::from(path))
        .await
        .map_err(|_| {
            CliError(format!(
                "Cannot connect to the shoal daemon at {host}. Is the shoal daemon running?"
            ))
        })
}

/// Run `f`, again while the cluster has no leader (an election takes about a second) when
/// `retry` allows; a manager that cannot reach a quorum is believed after a few seconds.
async fn with_retry<T, F, Fut>(retry: Retry, mut f: F) -> std::result::Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, Status>>,
{
    let start = tokio::time::Instant::now();
    loop {
        match f().await {
            Err(s) if retry == Retry::WhileNoLeader && s.code() == Code::Unavailable => {
                let patience = if s.message().starts_with("no quorum") {
                    Duration::from_secs(3)
                } else {
                    Duration::from_secs(10)
                };
                if start.elapsed() >= patience {
                    return Err(s);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return r,
        }
    }
}

/// Each item of a list reply as a domain value.
fn convert_all<W, D>(items: Vec<W>) -> Result<Vec<D>>
where
    D: TryFrom<W, Error = ConvertError>,
{
    items
        .into_iter()
        .map(|w| D::try_from(w).map_err(ClientError::from))
        .collect()
}

/// The task state a `--filter desired-state=` value names (the CLI has checked it).
fn state_named(name: &str) -> Option<TaskState> {
    use TaskState::*;
    [
        New, Pending, Assigned, Accepted, Preparing, Ready, Starting, Running, Complete, Shutdown,
        Failed, Rejected, Remove, Orphaned,
    ]
    .into_iter()
    .find(|s| s.as_str() == name)
}

impl Client {
    pub async fn connect(host: &str) -> std::result::Result<Client, CliError> {
        let ch = daemon_channel(host).await?;
        Ok(Client {
            inner: ControlClient::new(ch).max_decoding_message_size(64 << 20),
        })
    }

    /// One call, repeated as `retry` says.
    async fn call<T, F, Fut>(&self, retry: Retry, f: F) -> Result<T>
    where
        F: Fn(ControlClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<Response<T>, Status>>,
    {
        let r = with_retry(retry, || f(self.inner.clone())).await?;
        Ok(r.into_inner())
    }

    // ------------------------------------------------------------ swarm

    pub async fn swarm_init(&self, req: pb::SwarmInitRequest) -> Result<pb::SwarmInitResponse> {
        self.call(Retry::Once, |mut c| {
            let req = req.clone();
            async move { c.swarm_init(req).await }
        })
        .await
    }

    pub async fn swarm_join(&self, req: pb::SwarmJoinRequest) -> Result<pb::SwarmJoinResponse> {
        self.call(Retry::Once, |mut c| {
            let req = req.clone();
            async move { c.swarm_join(req).await }
        })
        .await
    }

    pub async fn swarm_leave(&self, force: bool) -> Result<()> {
        self.call(Retry::Once, |mut c| async move {
            c.swarm_leave(pb::SwarmLeaveRequest { force }).await
        })
        .await
        .map(|_| ())
    }

    pub async fn swarm_unlock(&self, unlock_key: String) -> Result<()> {
        self.call(Retry::Once, |mut c| {
            let unlock_key = unlock_key.clone();
            async move { c.swarm_unlock(pb::SwarmUnlockRequest { unlock_key }).await }
        })
        .await
        .map(|_| ())
    }

    /// This node's view of the swarm; answered locally, so never retried.
    pub async fn info(&self) -> Result<pb::InfoResponse> {
        self.call(
            Retry::Once,
            |mut c| async move { c.info(pb::Empty {}).await },
        )
        .await
    }

    /// The cluster's settings; not retried (`info` must answer without a leader).
    pub async fn get_cluster(&self) -> Result<pb::ClusterInfo> {
        self.call(Retry::Once, |mut c| async move {
            c.get_cluster(pb::Empty {}).await
        })
        .await
    }

    pub async fn update_cluster(&self, req: pb::UpdateClusterRequest) -> Result<pb::ClusterInfo> {
        self.call(Retry::WhileNoLeader, |mut c| async move {
            c.update_cluster(req).await
        })
        .await
    }

    pub async fn get_join_tokens(&self, req: pb::GetJoinTokensRequest) -> Result<pb::JoinTokens> {
        self.call(Retry::WhileNoLeader, |mut c| async move {
            c.get_join_tokens(req).await
        })
        .await
    }

    /// The unlock key; a rotation is sent once (a repeated one would rotate twice).
    pub async fn get_unlock_key(&self, rotate: bool) -> Result<pb::UnlockKeyResponse> {
        let retry = if rotate {
            Retry::Once
        } else {
            Retry::WhileNoLeader
        };
        self.call(retry, |mut c| async move {
            c.get_unlock_key(pb::GetUnlockKeyRequest { rotate }).await
        })
        .await
    }

    // ------------------------------------------------------------ nodes

    pub async fn list_nodes(&self) -> Result<Vec<pb::Node>> {
        self.call(Retry::WhileNoLeader, |mut c| async move {
            c.list_nodes(pb::Empty {}).await
        })
        .await
        .map(|r| r.nodes)
    }

    pub async fn get_node(&self, id: &str) -> Result<pb::Node> {
        self.call(Retry::WhileNoLeader, |mut c| {
            let id = id.to_string();
            async move { c.get_node(pb::GetNodeRequest { id }).await }
        })
        .await
    }

    pub async fn update_node(&self, req: pb::UpdateNodeRequest) -> Result<pb::Node> {
        self.call(Retry::WhileNoLeader, |mut c| {
            let req = req.clone();
            async move { c.update_node(req).await }
        })
        .await
    }

    pub async fn remove_node(&self, id: &str, force: bool) -> Result<()> {
        self.call(Retry::WhileNoLeader, |mut c| {
            let id = id.to_string();
            async move { c.remove_node(pb::RemoveNodeRequest { id, force }).await }
        })
        .await
        .map(|_| ())
    }

    // ------------------------------------------------------------ services and tasks

    pub async fn create_service(&self, spec: &ServiceSpec) -> Result<ServiceView> {
        let spec = pb::ServiceSpec::from(spec);
        let view = self
            .call(Retry::WhileNoLeader, |mut c| {
                let spec = Some(spec.clone());
                async move { c.create_service(pb::ServiceSpecRequest { spec }).await }
            })
            .await?;
        Ok(view.try_into()?)
    }

    /// Replace the spec of the service at `version` (`None`: roll it back to its previous
    /// spec).
    pub async fn update_service(
        &self,
        id: &str,
        version: u64,
        spec: Option<&ServiceSpec>,
    ) -> Result<ServiceView> {
        let req = pb::UpdateServiceRequest {
            id: id.to_string(),
            spec: spec.map(Into::into),
            rollback: spec.is_none(),
            version,
        };
        let view = self
            .call(Retry::WhileNoLeader, |mut c| {
                let req = req.clone();
                async move { c.update_service(req).await }
            })
            .await?;
        Ok(view.try_into()?)
    }

    pub async fn remove_service(&self, id: &str) -> Result<()> {
        self.call(Retry::WhileNoLeader, |mut c| {
            let id = id.to_string();
            async move { c.remove_service(pb::GetServiceRequest { id }).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn get_service(&self, id: &str) -> Result<ServiceView> {
        let view = self
            .call(Retry::WhileNoLeader, |mut c| {
                let id = id.to_string();
                async move { c.get_service(pb::GetServiceRequest { id }).await }
            })
            .await?;
        Ok(view.try_into()?)
    }

    pub async fn list_services(&self) -> Result<Vec<ServiceView>> {
        let r = self
            .call(Retry::WhileNoLeader, |mut c| async move {
                c.list_services(pb::Empty {}).await
            })
            .await?;
        convert_all(r.services)
    }

    /// The tasks of `service`, of one node and desired state (a state's name) when not
    /// empty.
    pub async fn list_tasks(
        &self,
        service: &str,
        node: &str,
        desired_state: &str,
    ) -> Result<Vec<TaskView>> {
        let desired = match desired_state {
            "" => None,
            name => Some(state_named(name).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "invalid desired-state filter {name:?}: use running, shutdown or accepted"
                ))
            })?),
        };
        let req = pb::ListTasksRequest {
            service: service.to_string(),
            node: node.to_string(),
            desired: desired.map(|s| pb::TaskState::from(s) as i32),
        };
        let r = self
            .call(Retry::WhileNoLeader, |mut c| {
                let req = req.clone();
                async move { c.list_tasks(req).await }
            })
            .await?;
        convert_all(r.tasks)
    }

    pub async fn service_logs(
        &self,
        req: pb::ServiceLogsRequest,
    ) -> Result<tonic::Streaming<pb::LogMessage>> {
        self.call(Retry::WhileNoLeader, |mut c| {
            let req = req.clone();
            async move { c.service_logs(req).await }
        })
        .await
    }

    /// Wake-ups while waiting for service `id` to converge: a message whenever a committed
    /// change touches it (see the `WatchService` call). Not retried: a caller that cannot
    /// watch polls instead.
    pub async fn watch_service(&self, id: &str) -> Result<tonic::Streaming<pb::ServiceChanged>> {
        self.call(Retry::Once, |mut c| {
            let id = id.to_string();
            async move { c.watch_service(pb::GetServiceRequest { id }).await }
        })
        .await
    }

    // ------------------------------------------------------------ networks

    pub async fn create_network(&self, spec: &NetworkSpec) -> Result<NetworkView> {
        let spec = pb::NetworkSpec::from(spec);
        let view = self
            .call(Retry::WhileNoLeader, |mut c| {
                let spec = Some(spec.clone());
                async move { c.create_network(pb::NetworkSpecRequest { spec }).await }
            })
            .await?;
        Ok(view.try_into()?)
    }

    pub async fn list_networks(&self) -> Result<Vec<NetworkView>> {
        let r = self
            .call(Retry::WhileNoLeader, |mut c| async move {
                c.list_networks(pb::Empty {}).await
            })
            .await?;
        convert_all(r.networks)
    }

    pub async fn get_network(&self, id: &str) -> Result<NetworkView> {
        let view = self
            .call(Retry::WhileNoLeader, |mut c| {
                let id = id.to_string();
                async move { c.get_network(pb::GetNetworkRequest { id }).await }
            })
            .await?;
        Ok(view.try_into()?)
    }

    pub async fn remove_network(&self, id: &str) -> Result<()> {
        self.call(Retry::WhileNoLeader, |mut c| {
            let id = id.to_string();
            async move { c.remove_network(pb::GetNetworkRequest { id }).await }
        })
        .await
        .map(|_| ())
    }

    // ------------------------------------------------------------ secrets and configs

    pub async fn create_file_object(
        &self,
        kind: FileKind,
        req: pb::CreateFileObjectRequest,
    ) -> Result<pb::FileObject> {
        self.call(Retry::WhileNoLeader, |mut c| {
            let req = req.clone();
            async move {
                match kind {
                    FileKind::Secret => c.create_secret(req).await,
                    FileKind::Config => c.create_config(req).await,
                }
            }
        })
        .await
    }

    pub async fn list_file_objects(&self, kind: FileKind) -> Result<Vec<pb::FileObject>> {
        self.call(Retry::WhileNoLeader, |mut c| async move {
            match kind {
                FileKind::Secret => c.list_secrets(pb::Empty {}).await,
                FileKind::Config => c.list_configs(pb::Empty {}).await,
            }
        })
        .await
        .map(|r| r.objects)
    }

    pub async fn get_file_object(&self, kind: FileKind, id: &str) -> Result<pb::FileObject> {
        self.call(Retry::WhileNoLeader, |mut c| {
            let req = pb::GetFileObjectRequest { id: id.into() };
            async move {
                match kind {
                    FileKind::Secret => c.get_secret(req).await,
                    FileKind::Config => c.get_config(req).await,
                }
            }
        })
        .await
    }

    pub async fn remove_file_object(&self, kind: FileKind, id: &str) -> Result<()> {
        self.call(Retry::WhileNoLeader, |mut c| {
            let req = pb::GetFileObjectRequest { id: id.into() };
            async move {
                match kind {
                    FileKind::Secret => c.remove_secret(req).await,
                    FileKind::Config => c.remove_config(req).await,
                }
            }
        })
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Calls `with_retry` with a call that fails with `fail` `failures` times (or for ever),
    /// then succeeds; returns the result, the attempts and the (paused) time spent.
    async fn run(
        retry: Retry,
        fail: Status,
        failures: Option<u32>,
    ) -> (std::result::Result<u32, Status>, u32, Duration) {
        let attempts = Cell::new(0);
        let start = tokio::time::Instant::now();
        let r = with_retry(retry, || {
            attempts.set(attempts.get() + 1);
            let n = attempts.get();
            let fail = fail.clone();
            async move {
                match failures {
                    Some(k) if n > k => Ok(n),
                    _ => Err(fail),
                }
            }
        })
        .await;
        (r, attempts.get(), start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn no_leader_is_waited_for() {
        let (r, attempts, _) = run(
            Retry::WhileNoLeader,
            Status::unavailable("no leader"),
            Some(3),
        )
        .await;
        assert_eq!(r.ok(), Some(4));
        assert_eq!(attempts, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn no_quorum_is_believed_after_three_seconds_anything_else_after_ten() {
        let (r, _, spent) = run(
            Retry::WhileNoLeader,
            Status::unavailable("no quorum: 1 of 3 managers reachable"),
            None,
        )
        .await;
        let s = r.expect_err("gives up");
        assert!(s.message().starts_with("no quorum"), "{s:?}");
        assert!(
            spent >= Duration::from_secs(3) && spent < Duration::from_secs(4),
            "{spent:?}"
        );
        let (r, _, spent) = run(Retry::WhileNoLeader, Status::unavailable("election"), None).await;
        assert_eq!(r.expect_err("gives up").message(), "election");
        assert!(
            spent >= Duration::from_secs(10) && spent < Duration::from_secs(11),
            "{spent:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_and_single_shot_calls_are_not_repeated() {
        let (r, attempts, _) = run(
            Retry::WhileNoLeader,
            Status::not_found("service web not found"),
            Some(3),
        )
        .await;
        assert_eq!(r.expect_err("fails").code(), Code::NotFound);
        assert_eq!(attempts, 1);
        let (r, attempts, _) = run(Retry::Once, Status::unavailable("no leader"), Some(3)).await;
        assert_eq!(r.expect_err("fails").code(), Code::Unavailable);
        assert_eq!(attempts, 1);
    }

    #[test]
    fn errors_read_as_before() {
        let e: CliError = ClientError::Status(Status::not_found("no such service: web")).into();
        assert_eq!(e.0, "Error response from daemon: no such service: web");
        let bad = ConvertError::Missing {
            field: "ServiceView.spec",
        };
        let e: CliError = ClientError::Malformed(bad).into();
        assert_eq!(
            e.0,
            "Error: malformed reply from the daemon: ServiceView.spec: missing"
        );
    }

    #[test]
    fn desired_state_filters_name_task_states() {
        for s in ["running", "shutdown", "accepted"] {
            assert_eq!(state_named(s).map(TaskState::as_str), Some(s));
        }
        assert_eq!(state_named("sleeping"), None);
    }
}
