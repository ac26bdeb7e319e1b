//! A manager node's lifecycle: raft, the TCP gRPC server, and the leader-only loops.
//!
//! ```text
//!   Manager::start ── raft::start ── tcp server (Raft, Ca, Control, Dispatcher services)
//!        │
//!        └─ leadership watch ──gain──▶ spawn: membership reconciler, dispatcher monitor
//!                             ──lose──▶ cancel them
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use proto::pb;
use proto::transport::{client_config, serve_tls, tls_channel, Credentials};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;

use crate::auth::Authorizer;
use crate::dispatcher::Dispatcher;
use crate::raft::{self, NodeId, Raft, RaftTuning};
use crate::store::{Store, Txn, TxnError, TxnOutcome};

pub use proto::transport::LEADER_METADATA;

#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub node_id: String,
    pub raft_id: NodeId,
    pub data_dir: PathBuf,
    pub listen_addr: SocketAddr,
    pub advertise_addr: String,
    pub tuning: RaftTuning,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Raft(#[from] raft::RaftSetupError),
    #[error("raft initialisation failed: {0}")]
    Init(String),
}

/// The services the TCP server needs besides raft; built by the node glue, which also
/// implements the control API's node-local calls.
pub type ExtraRoutes = Box<dyn FnOnce(Arc<Manager>) -> tonic::service::Routes + Send>;

pub struct Manager {
    pub config: ManagerConfig,
    pub raft: Raft,
    pub store: Store,
    pub creds: Arc<Credentials>,
    pub auth: Authorizer,
    pub dispatcher: Arc<Dispatcher>,
    cancel: CancellationToken,
    failed: CancellationToken,
    tasks: TaskTracker,
}

thread_local! {
    /// Set by [`use_virtual_clock`]: (tokio instant, ms since epoch) at the anchor.
    static VIRTUAL_CLOCK: std::cell::Cell<Option<(tokio::time::Instant, i64)>> = const { std::cell::Cell::new(None) };
}

/// The time every manager decision is made at, in ms since the epoch: the system clock, or,
/// after [`use_virtual_clock`] on this thread, tokio's (possibly paused) clock, so that a
/// simulation's restart delays and update deadlines follow its virtual time.
pub fn now_ms() -> i64 {
    if let Some((at, ms)) = VIRTUAL_CLOCK.with(|c| c.get()) {
        return ms + tokio::time::Instant::now().duration_since(at).as_millis() as i64;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Make [`now_ms`] on this thread follow tokio's clock from `epoch_ms` on (`None`: the system
/// clock again). For single-threaded simulations.
pub fn use_virtual_clock(epoch_ms: Option<i64>) {
    VIRTUAL_CLOCK.with(|c| c.set(epoch_ms.map(|ms| (tokio::time::Instant::now(), ms))));
}

impl Manager {
    /// Opens raft from the data dir, binds the manager port and starts serving.
    pub async fn start(
        config: ManagerConfig,
        creds: Arc<Credentials>,
        extra: ExtraRoutes,
    ) -> Result<Arc<Manager>, ManagerError> {
        let network = raft::Network::new(creds.clone());
        Manager::start_with(config, creds, network, Some(extra)).await
    }

    /// As [`Manager::start`], over any raft network; without `extra` no TCP server is started
    /// (the simulation drives managers in one process through an in-memory network).
    pub async fn start_with<N: openraft::RaftNetworkFactory<raft::TypeConfig>>(
        config: ManagerConfig,
        creds: Arc<Credentials>,
        network: N,
        extra: Option<ExtraRoutes>,
    ) -> Result<Arc<Manager>, ManagerError> {
        let store = Store::new();
        std::fs::create_dir_all(&config.data_dir).ok();
        let raft = raft::start(
            config.raft_id,
            &config.data_dir,
            store.clone(),
            network,
            &config.tuning,
        )
        .await?;
        let auth = Authorizer::new(store.clone());
        let cancel = CancellationToken::new();
        let mgr = Arc::new(Manager {
            dispatcher: Arc::new(Dispatcher::new(store.clone())),
            config,
            raft: raft.clone(),
            store,
            creds: creds.clone(),
            auth: auth.clone(),
            cancel: cancel.clone(),
            failed: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        if let Some(extra) = extra {
            let listener = TcpListener::bind(mgr.config.listen_addr)
                .await
                .map_err(|e| ManagerError::Listen {
                    addr: mgr.config.listen_addr,
                    source: e,
                })?;
            let mut routes = extra(mgr.clone());
            routes = routes
                .add_service(raft::serve_raft(raft.clone(), auth.clone()))
                .add_service(crate::ca::service(mgr.clone()))
                .add_service(crate::dispatcher::service(mgr.clone()));
            let incoming = serve_tls(listener, creds);
            let c = cancel.clone();
            mgr.tasks.spawn(async move {
                let res = tonic::transport::Server::builder()
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(incoming, c.cancelled())
                    .await;
                if let Err(e) = res {
                    tracing::error!(error = %e, "manager gRPC server stopped");
                }
            });
        }
        let m = mgr.clone();
        mgr.tasks.spawn(async move { m.leadership_loop().await });
        Ok(mgr)
    }

    /// Bootstrap a new single-manager cluster.
    pub async fn initialize(&self) -> Result<(), ManagerError> {
        let mut members = BTreeMap::new();
        members.insert(
            self.config.raft_id,
            BasicNode {
                addr: self.config.advertise_addr.clone(),
            },
        );
        self.initialize_members(members).await
    }

    /// Bootstrap with a given membership (the simulation starts with all its managers).
    pub async fn initialize_members(
        &self,
        members: BTreeMap<NodeId, BasicNode>,
    ) -> Result<(), ManagerError> {
        self.raft
            .initialize(members)
            .await
            .map_err(|e| ManagerError::Init(e.to_string()))?;
        Ok(())
    }

    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.raft.shutdown()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
    }

    /// The current leader's raft id. A node that was removed from the group keeps naming
    /// itself in `current_leader` (nobody tells it otherwise), so our own id counts only
    /// while raft is actually in the leader state.
    /// Fires if raft stops with a fatal error: the node cannot go on as a manager.
    pub fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    pub fn leader_id(&self) -> Option<NodeId> {
        let m = self.raft.metrics();
        let m = m.borrow();
        match m.current_leader {
            Some(l) if l == self.config.raft_id && !m.state.is_leader() => None,
            other => other,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader_id() == Some(self.config.raft_id)
    }

    /// The advertise address of the current leader, if one is known.
    pub fn leader_addr(&self) -> Option<String> {
        let leader = self.leader_id()?;
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// Addresses of every raft member (voters and learners).
    pub fn manager_addrs(&self) -> Vec<String> {
        let (_, nodes) = raft::membership(&self.raft);
        nodes.values().map(|n| n.addr.clone()).collect()
    }

    /// Wait until some leader is known (after start or failover).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = rx.borrow().current_leader {
                return Some(l);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// A refusal telling the caller where the leader is.
    pub fn not_leader(&self) -> Status {
        let mut s = Status::unavailable(match self.leader_addr() {
            Some(a) => format!("this manager is not the leader; the leader is {a}"),
            None => "no leader is elected yet; retry shortly".to_string(),
        });
        if let Some(addr) = self.leader_addr() {
            if let Ok(v) = addr.parse() {
                s.metadata_mut().insert(LEADER_METADATA, v);
            }
        }
        s
    }

    /// A channel to the current leader, authenticated as this manager.
    pub fn leader_channel(&self) -> Result<tonic::transport::Channel, Status> {
        let addr = self.leader_addr().ok_or_else(|| self.not_leader())?;
        let id = self
            .creds
            .get()
            .ok_or_else(|| Status::unavailable("this node has no certificate"))?;
        let cfg =
            client_config(&id.ca_pem, Some(&id)).map_err(|e| Status::internal(e.to_string()))?;
        tls_channel(&addr, cfg).map_err(|e| Status::internal(e.to_string()))
    }

    /// Propose a transaction; Ok(index) once committed and applied.
    ///
    /// openraft answers a pending write only once its entry is applied or truncated on this
    /// node. A leader that removed itself from the group sees neither (nobody replicates to
    /// it any more), so the wait also ends once this node is neither the leader nor a member:
    /// the write's outcome is then unknown, as with any lost leadership.
    pub async fn propose(&self, txn: Txn) -> Result<u64, ProposeError> {
        let me = self.config.raft_id;
        let mut metrics = self.raft.metrics();
        let removed = async move {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    let member = m.membership_config.membership().get_node(&me).is_some();
                    if !m.state.is_leader() && !member {
                        return;
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        };
        let res = tokio::select! {
            biased;
            r = self.raft.client_write(txn) => r,
            () = removed => return Err(ProposeError::NotLeader),
        };
        match res {
            Ok(resp) => match resp.data {
                TxnOutcome::Applied { index } => Ok(index),
                TxnOutcome::Refused(e) => Err(ProposeError::Refused(e)),
                TxnOutcome::Nothing => Ok(resp.log_id.index),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(ProposeError::NotLeader)
            }
            Err(e) => Err(ProposeError::Raft(e.to_string())),
        }
    }

    /// Confirm leadership with a quorum before serving a read.
    pub async fn linearizable(&self) -> Result<(), Status> {
        self.raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(|_| self.not_leader())
    }

    async fn leadership_loop(self: Arc<Self>) {
        let mut rx = self.raft.metrics();
        let mut leader_cancel: Option<CancellationToken> = None;
        loop {
            if let Err(fatal) = &rx.borrow().running_state {
                // `Stopped` is our own shutdown; anything else is a crash of the raft core.
                if !self.cancel.is_cancelled() && !matches!(fatal, openraft::error::Fatal::Stopped)
                {
                    tracing::error!(error = %fatal, "raft stopped");
                    self.failed.cancel();
                }
                break;
            }
            let leading = rx.borrow().current_leader == Some(self.config.raft_id)
                && rx.borrow().state.is_leader();
            match (leading, &leader_cancel) {
                (true, None) => {
                    tracing::info!(node = %self.config.node_id, "became leader");
                    let token = self.cancel.child_token();
                    // Each loop is restarted if it panics or ends early; `give_up` fires when
                    // one keeps failing (the node should then stop leading).
                    let give_up = CancellationToken::new();
                    use crate::supervise::spawn as sup;
                    let tasks = &self.tasks;
                    let m = self.clone();
                    sup(tasks, "membership", &token, &give_up, move |t| {
                        crate::membership::run(m.clone(), t)
                    });
                    let m = self.clone();
                    sup(tasks, "dispatcher monitor", &token, &give_up, move |t| {
                        m.dispatcher.clone().monitor(m.clone(), t)
                    });
                    let m = self.clone();
                    sup(tasks, "orchestrator", &token, &give_up, move |t| {
                        crate::orchestrator::run(m.clone(), t)
                    });
                    let m = self.clone();
                    sup(tasks, "scheduler", &token, &give_up, move |t| {
                        crate::scheduler::run(m.clone(), t)
                    });
                    let m = self.clone();
                    sup(tasks, "dispatcher statuses", &token, &give_up, move |t| {
                        m.dispatcher.clone().write_statuses(m.clone(), t)
                    });
                    let t = token.clone();
                    self.tasks.spawn(async move {
                        tokio::select! {
                            _ = t.cancelled() => {}
                            // TODO(leadership): step down here once the leader lease exists.
                            _ = give_up.cancelled() => tracing::error!(
                                "leader loops keep failing; this node should no longer lead"
                            ),
                        }
                    });
                    leader_cancel = Some(token);
                }
                (false, Some(t)) => {
                    tracing::info!(node = %self.config.node_id, "lost leadership");
                    t.cancel();
                    leader_cancel = None;
                }
                _ => {}
            }
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                r = rx.changed() => if r.is_err() { break },
            }
        }
        if let Some(t) = leader_cancel {
            t.cancel();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("this manager is not the leader")]
    NotLeader,
    #[error("{0}")]
    Refused(TxnError),
    #[error("raft: {0}")]
    Raft(String),
}

impl ProposeError {
    pub fn into_status(self, mgr: &Manager) -> Status {
        match self {
            ProposeError::NotLeader => mgr.not_leader(),
            ProposeError::Refused(
                e @ (TxnError::Conflict { .. }
                | TxnError::AddressInUse { .. }
                | TxnError::NetworkClash { .. }),
            ) => Status::aborted(e.to_string()),
            ProposeError::Refused(e @ TxnError::PortInUse { .. }) => {
                Status::failed_precondition(e.to_string())
            }
            ProposeError::Refused(e @ TxnError::NotFound { .. }) => {
                Status::not_found(e.to_string())
            }
            ProposeError::Refused(e @ TxnError::Exists { .. }) => {
                Status::already_exists(e.to_string())
            }
            ProposeError::Refused(
                e @ (TxnError::Backwards { .. } | TxnError::NodeUnavailable { .. }),
            ) => Status::failed_precondition(e.to_string()),
            ProposeError::Raft(e) => Status::unavailable(e),
        }
    }
}

/// Read-modify-write with retries on version conflicts.
pub async fn update_with_retry<F>(mgr: &Manager, mut build: F) -> Result<u64, Status>
where
    F: FnMut(&crate::store::StoreData) -> Result<Txn, Status>,
{
    for _ in 0..10 {
        let txn = mgr.store.view(&mut build)?;
        match mgr.propose(txn).await {
            Ok(i) => return Ok(i),
            Err(ProposeError::Refused(
                TxnError::Conflict { .. }
                | TxnError::AddressInUse { .. }
                | TxnError::NetworkClash { .. },
            )) => continue,
            Err(e) => return Err(e.into_status(mgr)),
        }
    }
    Err(Status::aborted("too many concurrent updates; retry"))
}

/// Convert to the wire form.
pub fn pb_node(n: &crate::store::Node, leader: Option<NodeId>) -> pb::Node {
    use crate::store::NodeState;
    use proto::security::Role;
    let is_leader = n.role == Role::Manager && leader == Some(n.raft_id);
    let manager_status = if n.role != Role::Manager {
        ""
    } else if is_leader {
        "leader"
    } else if n.state == NodeState::Ready {
        "reachable"
    } else {
        "unreachable"
    };
    pb::Node {
        id: n.id.clone(),
        version: n.version,
        role: n.role.as_str().into(),
        desired_role: n.desired_role.as_str().into(),
        availability: n.availability.as_str().into(),
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
        status: n.state.as_str().into(),
        status_message: n.status_message.clone(),
        manager_status: manager_status.into(),
        raft_id: n.raft_id,
        created_at_ms: n.created_at_ms,
        updated_at_ms: n.updated_at_ms,
        cert_not_after_ms: n.cert_not_after_ms,
        leader: is_leader,
    }
}
