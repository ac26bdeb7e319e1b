//! `shoal daemon`: one node. Holds the node's identity and state on disk, serves the local
//! control socket, runs the agent on every node and the manager on managers, and switches
//! between the two roles when the cluster asks (promotion, demotion).
//!
//! ```text
//!  unix socket ─▶ control service (local) ─┬─ swarm init/join/leave/unlock, info: NodeCalls here
//!                                         └─ cluster calls ─▶ the manager (forwarded to the leader)
//!  tcp :2377 (managers) ─▶ control service (remote, managers only), Raft, Ca, Dispatcher
//!  Agent ──events──▶ persist managers / new certificate ─▶ start or stop the Manager
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use manager::controlapi_server::NodeCalls;
use manager::keys::{Kek, KeyFile, UnlockKey};
use manager::manager::ExtraRoutes;
use manager::raft::RaftTuning;
use manager::{Manager, ManagerConfig};
use proto::pb;
use proto::pb::ca_client::CaClient;
use proto::security::{digest_pem, new_key_and_csr, JoinToken, Role};
use proto::transport::{client_config, tls_channel, Credentials, Identity};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use worker::agent::{Agent, AgentConfig, AgentEvent};

pub const DEFAULT_PORT: u16 = 2377;
pub use manager::bootstrap::DEFAULT_CERT_EXPIRY;

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub hostname: String,
    pub tuning: RaftTuning,
    /// Capacity this node offers (defaults: the machine's CPUs and memory).
    pub nano_cpus: u64,
    pub memory_bytes: u64,
    pub runtime: RuntimeChoice,
}

/// Which container runtime runs this node's tasks.
#[derive(Clone, Debug)]
pub enum RuntimeChoice {
    /// None chosen: tasks placed here are rejected with a message saying so.
    Unavailable,
    /// In-memory processes for tests, the simulation and benchmarks.
    Fake { start_delay: Duration },
    /// Real containers: an OCI runtime binary (`runc`, `crun` or a path) driven through its
    /// CLI, images from registries, the node-local bridge network.
    Oci {
        runtime: String,
        registry: worker::image::RegistryOptions,
    },
}

/// The runtime of a node and, for real containers, its image store and its networks.
type Built = (
    Arc<dyn worker::runtime::Runtime>,
    Option<Arc<worker::image::ImageStore>>,
    Option<Arc<agent_net::node::NodeNet>>,
);

impl RuntimeChoice {
    fn build(&self, data_dir: &Path) -> Result<Built, DaemonError> {
        Ok(match self {
            RuntimeChoice::Unavailable => (Arc::new(NoRuntime), None, None),
            RuntimeChoice::Fake { start_delay } => (
                Arc::new(worker::runtime::FakeRuntime::new(*start_delay)),
                None,
                None,
            ),
            RuntimeChoice::Oci { runtime, registry } => {
                let bad = |reason: String| DaemonError::Runtime(reason);
                if !runtime.contains('/') && which(runtime).is_none() {
                    return Err(bad(format!(
                        "OCI runtime {runtime:?} not found in PATH: install it (apt install {runtime}) or pass --oci-runtime PATH"
                    )));
                }
                let images = Arc::new(
                    worker::image::ImageStore::open(&data_dir.join("images"), registry.clone())
                        .map_err(|e| bad(e.to_string()))?,
                );
                let mut cfg = worker::oci::OciConfig::new(data_dir, images.clone());
                cfg.runtime = runtime.clone();
                cfg.netns_dir = Some(data_dir.join("net").join("ns"));
                let oci = worker::oci::OciRuntime::new(cfg).map_err(|e| bad(e.to_string()))?;
                // Names containers do not know are forwarded to this host's resolvers.
                let upstreams = agent_net::dns::system_resolvers(
                    &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                );
                let net = agent_net::node::NodeNet::new(&data_dir.join("net"), upstreams)
                    .map_err(|e| bad(e.to_string()))?;
                (
                    Arc::new(crate::node_runtime::NetworkedRuntime::new(
                        Arc::new(oci),
                        net.clone(),
                    )),
                    Some(images),
                    Some(net),
                )
            }
        })
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// The runtime of a node started without `--runtime`: every task is rejected, with the fix.
struct NoRuntime;

#[async_trait::async_trait]
impl worker::runtime::Runtime for NoRuntime {
    fn forget(&self, _: &str) {}
    async fn prepare(
        &self,
        task: &proto::spec::Assignment,
    ) -> Result<(), worker::runtime::RuntimeError> {
        Err(worker::runtime::RuntimeError::Failed {
            task_id: task.task_id.clone(),
            op: worker::runtime::RuntimeOp::Prepare,
            reason: "this node has no container runtime: start `shoal daemon` with --runtime"
                .into(),
        })
    }
    async fn start(&self, task_id: &str) -> Result<(), worker::runtime::RuntimeError> {
        Err(worker::runtime::RuntimeError::UnknownTask {
            task_id: task_id.into(),
            op: worker::runtime::RuntimeOp::Start,
        })
    }
    async fn wait(&self, task_id: &str) -> Result<i32, worker::runtime::RuntimeError> {
        Err(worker::runtime::RuntimeError::UnknownTask {
            task_id: task_id.into(),
            op: worker::runtime::RuntimeOp::Wait,
        })
    }
    async fn stop(
        &self,
        _task_id: &str,
        _grace: Duration,
    ) -> Result<(), worker::runtime::RuntimeError> {
        Ok(())
    }
    async fn remove(&self, _task_id: &str) -> Result<(), worker::runtime::RuntimeError> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node state in {path} is unreadable: {reason}")]
    State { path: PathBuf, reason: String },
    #[error(transparent)]
    Manager(Box<manager::manager::ManagerError>),
    #[error("serving the local socket: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("container runtime: {0}")]
    Runtime(String),
}

impl From<manager::manager::ManagerError> for DaemonError {
    fn from(e: manager::manager::ManagerError) -> Self {
        DaemonError::Manager(Box::new(e))
    }
}

/// What a node keeps on disk about its membership.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct NodeFile {
    node_id: String,
    raft_id: u64,
    cluster_id: String,
    listen_addr: SocketAddr,
    advertise_addr: String,
    managers: Vec<String>,
}

struct Inner {
    state: Option<NodeFile>,
    /// A manager with autolock whose key file waits for `swarm unlock`: nothing runs.
    locked: bool,
    /// The swarm refused this node's certificate (it was removed): it must leave and rejoin.
    removed: bool,
    manager: Option<Arc<Manager>>,
    agent: Option<CancellationToken>,
    executor: Option<Arc<worker::executor::Executor>>,
}

pub struct Node {
    cfg: DaemonConfig,
    runtime: Arc<dyn worker::runtime::Runtime>,
    images: Option<Arc<worker::image::ImageStore>>,
    net: Option<Arc<agent_net::node::NodeNet>>,
    creds: Arc<Credentials>,
    /// The cluster's key-encrypting key for the manager this node starts next (set by init,
    /// join, unlock, promotion); `None`: the manager reads its key file.
    kek: std::sync::Mutex<Option<Kek>>,
    inner: Mutex<Inner>,
    events_tx: mpsc::Sender<AgentEvent>,
    this: std::sync::Weak<Node>,
}

fn status_internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

impl Node {
    fn paths(&self) -> (PathBuf, PathBuf, PathBuf, PathBuf, PathBuf) {
        let d = &self.cfg.data_dir;
        (
            d.join("node.json"),
            d.join("certs/node.crt"),
            d.join("certs/node.key"),
            d.join("certs/ca.crt"),
            d.join("raft"),
        )
    }

    fn save_state(&self, st: &NodeFile) -> std::io::Result<()> {
        let (state, ..) = self.paths();
        write_atomic(&state, serde_json::to_vec_pretty(st)?.as_slice())
    }

    fn save_identity(&self, id: &Identity) -> std::io::Result<()> {
        let (_, crt, key, ca, _) = self.paths();
        std::fs::create_dir_all(crt.parent().expect("certs dir"))?;
        write_atomic(&key, id.key_pem.as_bytes())?;
        write_atomic(&crt, id.cert_pem.as_bytes())?;
        write_atomic(&ca, id.ca_pem.as_bytes())
    }

    /// Load the node's state after a restart; `None` if it is not in a swarm.
    fn load(&self) -> Result<Option<(NodeFile, Identity)>, DaemonError> {
        let (state, crt, key, ca, _) = self.paths();
        if !state.exists() {
            return Ok(None);
        }
        let bad = |reason: String| DaemonError::State {
            path: state.clone(),
            reason,
        };
        let st: NodeFile =
            serde_json::from_slice(&std::fs::read(&state).map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| bad(format!("{}: {e}", p.display())));
        let id = Identity::new(&read(&crt)?, &read(&key)?, &read(&ca)?)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Some((st, id)))
    }

    fn manager_config(&self, st: &NodeFile) -> ManagerConfig {
        ManagerConfig {
            node_id: st.node_id.clone(),
            raft_id: st.raft_id,
            data_dir: self.paths().4,
            listen_addr: st.listen_addr,
            advertise_addr: st.advertise_addr.clone(),
            tuning: self.cfg.tuning.clone(),
            kek: self.kek.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            clock: manager::clock::system(),
        }
    }

    async fn start_manager(&self, st: &NodeFile) -> Result<Arc<Manager>, DaemonError> {
        if let Some(net) = &self.net {
            // The routing mesh must never capture this manager's own port.
            net.reserve_port(proto::spec::PortProtocol::Tcp, st.listen_addr.port());
        }
        let weak = self.this.clone();
        let extra: ExtraRoutes = Box::new(move |_mgr| {
            let node = weak.upgrade().expect("node outlives its manager");
            tonic::service::Routes::new(manager::controlapi_server::server(node, false))
        });
        let mgr = Manager::start(self.manager_config(st), self.creds.clone(), extra).await?;
        // Fail fast: a manager whose raft died must not linger half-alive; the supervisor
        // restarts the node and raft recovers from disk.
        let failed = mgr.failed();
        tokio::spawn(async move {
            failed.cancelled().await;
            tracing::error!("raft failed: exiting so the node restarts from its data dir");
            std::process::exit(70);
        });
        Ok(mgr)
    }

    fn start_agent(&self, inner: &mut Inner, st: &NodeFile, period: Duration) {
        if let Some(c) = inner.agent.take() {
            c.cancel();
        }
        let cancel = CancellationToken::new();
        // One executor per swarm membership; its report channel goes to this agent.
        let (reports_tx, reports_rx) = mpsc::channel(4096);
        // The executor's task table lives beside the node's state, apart from the runtime's
        // directories, so a restarted daemon restores from what this one recorded.
        let table_path = self.cfg.data_dir.join(worker::executor::table::FILE);
        let table = worker::executor::table::TaskTable::open(&table_path).unwrap_or_else(|e| {
            tracing::error!(path = %table_path.display(), error = %e,
                "cannot read the task table: restoring from the runtime alone");
            worker::executor::table::TaskTable::in_memory()
        });
        let executor = Arc::new(worker::executor::Executor::with_table(
            self.runtime.clone(),
            reports_tx,
            table,
        ));
        inner.executor = Some(executor.clone());
        let agent = Agent::new(
            AgentConfig {
                hostname: self.cfg.hostname.clone(),
                platform: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
                managers: st.managers.clone(),
                initial_period: period,
                nano_cpus: self.cfg.nano_cpus,
                memory_bytes: self.cfg.memory_bytes,
            },
            self.creds.clone(),
            self.events_tx.clone(),
            executor,
            reports_rx,
        );
        let c = cancel.clone();
        let adopt = inner.executor.clone();
        tokio::spawn(async move {
            // Containers that outlived a daemon restart are adopted before the first
            // assignments arrive.
            if let Some(e) = adopt {
                e.restore().await;
            }
            agent.run(c).await
        });
        inner.agent = Some(cancel);
    }

    /// Resume after a restart.
    async fn resume(&self) -> Result<(), DaemonError> {
        let Some((st, id)) = self.load()? else {
            return Ok(());
        };
        tracing::info!(node = %st.node_id, role = %id.info.role, "resuming swarm membership");
        let role = id.info.role;
        self.creds.set(Some(id));
        let mut inner = self.inner.lock().await;
        if role == Role::Manager {
            match self.manager_kek(&st).await? {
                Some(kek) => {
                    self.set_kek(Some(kek));
                    inner.manager = Some(self.start_manager(&st).await?);
                }
                None => {
                    tracing::warn!("{LOCKED}");
                    inner.locked = true;
                    inner.state = Some(st);
                    return Ok(());
                }
            }
        }
        self.start_agent(&mut inner, &st, manager::dispatcher::DEFAULT_HEARTBEAT);
        inner.state = Some(st);
        Ok(())
    }

    /// React to what the agent reports.
    async fn on_event(&self, ev: AgentEvent) {
        let mut inner = self.inner.lock().await;
        let Some(st) = inner.state.clone() else {
            return;
        };
        match ev {
            AgentEvent::Managers(m) => {
                let mut st = st;
                st.managers = m;
                if let Err(e) = self.save_state(&st) {
                    tracing::warn!(error = %e, "cannot save node state");
                }
                inner.state = Some(st);
            }
            AgentEvent::Certificate { identity, role } => {
                if let Err(e) = self.save_identity(&identity) {
                    tracing::error!(error = %e, "cannot save the new certificate");
                }
                match (role, inner.manager.is_some()) {
                    (Role::Manager, false) => {
                        tracing::info!(
                            "promoted: fetching the cluster's key, starting the manager"
                        );
                        let fetched = self.fetch_kek(&st, Duration::from_secs(15)).await.and_then(
                            |(kek, unlock)| {
                                key_file(&kek, &unlock)
                                    .and_then(|f| f.save(&self.paths().4))
                                    .map_err(|e| e.to_string())?;
                                Ok(kek)
                            },
                        );
                        match fetched {
                            Ok(kek) => self.set_kek(Some(kek)),
                            Err(e) => {
                                tracing::error!(error = %e, "cannot start the manager");
                                return;
                            }
                        }
                        match self.start_manager(&st).await {
                            Ok(m) => inner.manager = Some(m),
                            Err(e) => tracing::error!(error = %e, "cannot start the manager"),
                        }
                    }
                    (Role::Worker, true) => {
                        tracing::info!("demoted: stopping the manager");
                        // Stopping takes seconds (raft, open sessions): meanwhile this node
                        // answers as a worker instead of holding every local call. Events
                        // are handled one at a time, so a promotion that follows waits for
                        // this to finish before it starts a manager on the same port and dir.
                        let m = inner.manager.take();
                        drop(inner);
                        if let Some(m) = m {
                            m.shutdown().await;
                        }
                        let _ = std::fs::remove_dir_all(self.paths().4);
                        self.set_kek(None);
                        tracing::info!("manager stopped");
                    }
                    _ => {}
                }
            }
            AgentEvent::Removed => {
                tracing::warn!("{REMOVED}");
                inner.removed = true;
            }
            AgentEvent::Network(state) => {
                if let Some(net) = &self.net {
                    net.set_state(*state);
                }
            }
        }
    }

    /// `swarm init --force-new-cluster` on a manager of this swarm: rebuild a one-manager raft
    /// group from this node's committed state (see `manager::recovery`), keeping every object,
    /// the CA and the join tokens, so workers reconnect and other managers can join again.
    async fn force_new_cluster(
        &self,
        r: pb::SwarmInitRequest,
    ) -> Result<pb::SwarmInitResponse, Status> {
        // Held throughout: no other swarm change may run while the manager is replaced.
        let mut inner = self.inner.lock().await;
        let Some(st) = inner.state.clone() else {
            return Err(Status::failed_precondition(
                "This node is not part of a swarm: use \"shoal swarm init\" without --force-new-cluster",
            ));
        };
        if inner.manager.is_none() {
            return Err(Status::failed_precondition(
                "--force-new-cluster rebuilds a swarm from a manager's state, and this node is a worker: run it on a surviving manager",
            ));
        }
        if r.heartbeat_period_ms != 0 || r.cert_expiry_ms != 0 || !r.default_addr_pool.is_empty() {
            return Err(Status::invalid_argument(
                "--force-new-cluster keeps the swarm's settings: leave out --dispatcher-heartbeat, --cert-expiry and --default-addr-pool, and change settings afterwards with \"shoal swarm update\"",
            ));
        }
        let listen = if r.listen_addr.is_empty() {
            st.listen_addr
        } else {
            parse_listen(&r.listen_addr)?
        };
        let advertise = if r.advertise_addr.is_empty() {
            st.advertise_addr.clone()
        } else {
            resolve_advertise(&r.advertise_addr, listen)?
        };
        let new_st = NodeFile {
            listen_addr: listen,
            advertise_addr: advertise.clone(),
            managers: vec![advertise.clone()],
            ..st.clone()
        };
        if let Some(m) = &inner.manager {
            if manager::recovery::has_quorum(m).await {
                return Err(Status::failed_precondition(
                    "this swarm still has a quorum of managers: --force-new-cluster is for a swarm that lost it, and would split this one in two; to shrink it, demote or remove managers instead",
                ));
            }
        }
        tracing::warn!(node = %st.node_id, %advertise, "forcing a new cluster from this manager's state");
        if let Some(old) = inner.manager.take() {
            old.shutdown().await;
        }
        let rebuilt = manager::recovery::rebuild_raft(&self.manager_config(&new_st)).await;
        let rec = match rebuilt {
            Ok(rec) => rec,
            Err(e) => {
                // Nothing was changed on disk: the node goes on as it was.
                match self.start_manager(&st).await {
                    Ok(m) => inner.manager = Some(m),
                    Err(e) => tracing::error!(error = %e, "cannot restart the manager"),
                }
                return Err(Status::failed_precondition(format!(
                    "cannot force a new cluster: {e}"
                )));
            }
        };
        tracing::info!(
            index = rec.last_log_id.index,
            old_term = rec.old_term,
            nodes_updated = rec.edited,
            backup = %rec.backup.display(),
            "raft rebuilt with this node as its only manager"
        );
        self.save_state(&new_st).map_err(status_internal)?;
        inner.state = Some(new_st.clone());
        // The old server may still hold the port for a moment after its shutdown.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mgr = loop {
            match self.start_manager(&new_st).await {
                Ok(m) => break m,
                Err(DaemonError::Manager(e))
                    if matches!(*e, manager::manager::ManagerError::Listen { .. })
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(Status::internal(format!(
                        "the raft state was rebuilt (the old one is kept in {}), but the manager does not start: {e}",
                        rec.backup.display()
                    )))
                }
            }
        };
        inner.manager = Some(mgr.clone());
        let leading = mgr.wait_for_leader(Duration::from_secs(10)).await;
        if leading != Some(st.raft_id) || !mgr.is_leader() {
            return Err(Status::internal(
                "the new cluster elected no leader within 10s: see the daemon's log",
            ));
        }
        let cluster = mgr
            .store
            .view(|d| d.cluster.clone())
            .ok_or_else(|| Status::internal("the recovered state holds no cluster object"))?;
        tracing::info!(node = %st.node_id, "new cluster forced");
        let join = |t: &str| format!("shoal swarm join --token {t} {advertise}");
        Ok(pb::SwarmInitResponse {
            node_id: st.node_id.clone(),
            worker_join_command: join(&cluster.worker_token),
            manager_join_command: join(&cluster.manager_token),
            unlock_key: String::new(),
        })
    }
}

/// A manager's raft term and state, read from one metrics snapshot so that they agree.
fn raft_term_state(m: &Manager) -> (u64, String) {
    let metrics = m.raft.metrics();
    let metrics = metrics.borrow();
    (metrics.current_term, format!("{:?}", metrics.state))
}

/// The key file a manager that receives the KEK writes: locked at once when the cluster has
/// autolock on (`unlock_key` not empty), so the KEK never touches its disk in the clear.
fn key_file(kek: &Kek, unlock_key: &str) -> Result<KeyFile, manager::keys::KeyError> {
    if unlock_key.is_empty() {
        Ok(KeyFile::Clear(kek.clone()))
    } else {
        KeyFile::locked(kek, &unlock_key.parse()?)
    }
}

/// How long `swarm leave` waits for the node's tasks to stop and be removed.
const LEAVE_DRAIN: Duration = Duration::from_secs(30);

/// What a locked manager says (autolock).
const LOCKED: &str = "this node is locked: run `shoal swarm unlock`";
/// What a node the swarm removed says.
const REMOVED: &str =
    "this node was removed from the swarm; run `shoal swarm leave` and join again";

impl Node {
    fn set_kek(&self, kek: Option<Kek>) {
        *self.kek.lock().unwrap_or_else(|e| e.into_inner()) = kek;
    }

    /// The KEK for this manager after a restart: from its key file; `None` if the file is
    /// locked (autolock). A manager without a file (one promoted just before a crash) asks
    /// the other managers; the only manager of a swarm made before keys were sealed makes
    /// one (its store still holds the keys in the clear, which opening lets through).
    async fn manager_kek(&self, st: &NodeFile) -> Result<Option<Kek>, DaemonError> {
        let dir = self.paths().4;
        let bad = |e: manager::keys::KeyError| DaemonError::State {
            path: manager::keys::key_file_path(&dir),
            reason: e.to_string(),
        };
        match KeyFile::load(&dir).map_err(bad)? {
            Some(KeyFile::Clear(k)) => Ok(Some(k)),
            Some(KeyFile::Locked { .. }) => Ok(None),
            None => {
                let others = st.managers.iter().any(|m| *m != st.advertise_addr);
                let kek = match others {
                    true => match self.fetch_kek(st, Duration::from_secs(10)).await {
                        Ok((k, _)) => k,
                        Err(e) => {
                            tracing::warn!(error = %e, "no cluster key from the other managers: making one");
                            Kek::generate().map_err(bad)?
                        }
                    },
                    false => Kek::generate().map_err(bad)?,
                };
                KeyFile::Clear(kek.clone()).save(&dir).map_err(bad)?;
                Ok(Some(kek))
            }
        }
    }

    /// Ask the other managers for the cluster's KEK with this node's (manager) certificate,
    /// retrying until `within` has passed (a manager's store may not know of the
    /// promotion yet).
    async fn fetch_kek(&self, st: &NodeFile, within: Duration) -> Result<(Kek, String), String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = String::from("no other manager is known");
        loop {
            for addr in st.managers.iter().filter(|m| **m != st.advertise_addr) {
                let Some(id) = self.creds.get() else {
                    return Err("this node has no certificate".into());
                };
                let ch = client_config(&id.ca_pem, Some(&id))
                    .map_err(|e| e.to_string())
                    .and_then(|cfg| tls_channel(addr, cfg).map_err(|e| e.to_string()));
                let res = match ch {
                    Ok(ch) => CaClient::new(ch)
                        .keys(pb::Empty {})
                        .await
                        .map_err(|s| s.message().to_string())
                        .and_then(|r| {
                            let r = r.into_inner();
                            let kek = Kek::from_hex(&r.kek).map_err(|e| e.to_string())?;
                            Ok((kek, r.unlock_key))
                        }),
                    Err(e) => Err(e),
                };
                match res {
                    Ok(k) => return Ok(k),
                    Err(e) => last = format!("{addr}: {e}"),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("cannot get the cluster's key: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn already_in_swarm() -> Status {
    Status::failed_precondition(
        "This node is already part of a swarm. Use \"shoal swarm leave\" to leave this swarm and join another one.",
    )
}

fn with_default_port(s: &str) -> Option<String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.to_string());
    }
    s.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT).to_string())
}

fn parse_listen(s: &str) -> Result<SocketAddr, Status> {
    if s.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
    }
    with_default_port(s)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| {
            Status::invalid_argument(format!("invalid --listen-addr {s:?}: expected IP[:PORT]"))
        })
}

/// The address other nodes reach this one at: given, or the listen address, or the machine's
/// only non-loopback IPv4 address.
fn resolve_advertise(s: &str, listen: SocketAddr) -> Result<String, Status> {
    if !s.is_empty() {
        let a: SocketAddr = with_default_port(s)
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "invalid --advertise-addr {s:?}: expected IP[:PORT]"
                ))
            })?;
        if a.ip().is_unspecified() {
            return Err(Status::invalid_argument(
                "--advertise-addr must be a specific address, not 0.0.0.0",
            ));
        }
        let port = if s.parse::<SocketAddr>().is_ok() {
            a.port()
        } else {
            listen.port()
        };
        return Ok(SocketAddr::new(a.ip(), port).to_string());
    }
    if !listen.ip().is_unspecified() {
        return Ok(listen.to_string());
    }
    let addrs = local_ipv4_addrs();
    match addrs.as_slice() {
        [one] => Ok(SocketAddr::new(IpAddr::V4(*one), listen.port()).to_string()),
        [] => Err(Status::invalid_argument("could not find an address to advertise: use --advertise-addr")),
        many => Err(Status::invalid_argument(format!(
            "could not choose an IP address to advertise since this system has multiple addresses ({}): use --advertise-addr",
            many.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The open-file limit the daemon asks for (Docker's unit asks for no limit at all).
const DAEMON_OPEN_FILES: u64 = 1 << 20;

fn local_ipv4_addrs() -> Vec<std::net::Ipv4Addr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a linked list we only read and then free with freeifaddrs.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut cur = ifap;
        while !cur.is_null() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() && (*ifa.ifa_addr).sa_family as i32 == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && !out.contains(&ip) {
                    out.push(ip);
                }
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        manager::keys::create_private_dir(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The node's own control calls; the control service itself (and forwarding to the leader)
/// is the manager's ([`manager::controlapi_server`]).
#[tonic::async_trait]
impl NodeCalls for Node {
    async fn manager(&self) -> Result<Arc<Manager>, Status> {
        let inner = self.inner.lock().await;
        if inner.locked {
            return Err(Status::failed_precondition(LOCKED));
        }
        match (&inner.state, &inner.manager) {
            (_, Some(m)) => Ok(m.clone()),
            (None, _) => Err(Status::failed_precondition(
                "This node is not a swarm manager. Use \"shoal swarm init\" or \"shoal swarm join\" to connect this node to a swarm and try again.",
            )),
            (Some(_), None) => Err(Status::failed_precondition(
                "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.",
            )),
        }
    }

    async fn swarm_init(&self, r: pb::SwarmInitRequest) -> Result<pb::SwarmInitResponse, Status> {
        let mut inner = self.inner.lock().await;
        if inner.state.is_some() {
            if r.force_new_cluster {
                drop(inner);
                return self.force_new_cluster(r).await;
            }
            return Err(already_in_swarm());
        }
        let listen = parse_listen(&r.listen_addr)?;
        let advertise = resolve_advertise(&r.advertise_addr, listen)?;
        let first = manager::bootstrap::first_objects(
            &manager::bootstrap::Settings {
                heartbeat_period_ms: r.heartbeat_period_ms,
                cert_expiry_ms: r.cert_expiry_ms,
                default_addr_pool: r.default_addr_pool.clone(),
                default_addr_pool_mask_len: r.default_addr_pool_mask_len,
                autolock: r.autolock,
            },
            &manager::bootstrap::FirstNode {
                hostname: self.cfg.hostname.clone(),
                advertise_addr: advertise.clone(),
                local_addrs: local_ipv4_addrs(),
                nano_cpus: self.cfg.nano_cpus,
                memory_bytes: self.cfg.memory_bytes,
            },
            manager::clock::Clock::now_ms(&manager::clock::SystemClock),
        )?;
        let (node_id, cluster_id) = (first.node.id.clone(), first.cluster.id.clone());
        first
            .key_file
            .save(&self.paths().4)
            .map_err(status_internal)?;
        self.set_kek(Some(first.kek.clone()));
        let st = NodeFile {
            node_id: node_id.clone(),
            raft_id: first.node.raft_id,
            cluster_id: cluster_id.clone(),
            listen_addr: listen,
            advertise_addr: advertise.clone(),
            managers: vec![advertise.clone()],
        };
        self.creds.set(Some(first.identity.clone()));
        let mgr = match self.start_manager(&st).await {
            Ok(m) => m,
            Err(e) => {
                self.creds.set(None);
                return Err(Status::failed_precondition(e.to_string()));
            }
        };
        if let Err(e) = manager::bootstrap::commit(&mgr, &first).await {
            mgr.shutdown().await;
            self.creds.set(None);
            let _ = std::fs::remove_dir_all(self.paths().4);
            return Err(e);
        }
        self.save_identity(&first.identity)
            .map_err(status_internal)?;
        self.save_state(&st).map_err(status_internal)?;
        inner.manager = Some(mgr);
        self.start_agent(
            &mut inner,
            &st,
            Duration::from_millis(first.cluster.heartbeat_period_ms),
        );
        inner.state = Some(st);
        tracing::info!(node = %node_id, cluster = %cluster_id, "swarm initialised");
        let join = |t: &str| format!("shoal swarm join --token {t} {advertise}");
        Ok(pb::SwarmInitResponse {
            node_id,
            worker_join_command: join(&first.cluster.worker_token),
            manager_join_command: join(&first.cluster.manager_token),
            unlock_key: first.unlock_key.map(|u| u.to_string()).unwrap_or_default(),
        })
    }

    async fn swarm_join(&self, r: pb::SwarmJoinRequest) -> Result<pb::SwarmJoinResponse, Status> {
        let mut inner = self.inner.lock().await;
        if inner.state.is_some() {
            return Err(already_in_swarm());
        }
        let token: JoinToken = r
            .token
            .parse()
            .map_err(|e: proto::security::SecurityError| Status::invalid_argument(e.to_string()))?;
        let remote = with_default_port(&r.remote_addr).ok_or_else(|| {
            Status::invalid_argument(format!(
                "invalid remote address {:?}: expected IP[:PORT]",
                r.remote_addr
            ))
        })?;
        let listen = parse_listen(&r.listen_addr)?;
        let advertise = resolve_advertise(&r.advertise_addr, listen)?;
        // Pin the CA: trust the manager only if it presents the CA the token names.
        let ca_pem = proto::transport::fetch_presented_ca(&remote)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let digest = digest_pem(&ca_pem).map_err(status_internal)?;
        if digest != token.ca_digest {
            return Err(Status::permission_denied(format!(
                "the manager at {remote} presents a root CA (sha256 {digest}) that does not match the join token's fingerprint"
            )));
        }
        let (key_pem, csr_pem) = new_key_and_csr().map_err(status_internal)?;
        let cfg = client_config(&ca_pem, None).map_err(status_internal)?;
        let ch = tls_channel(&remote, cfg).map_err(status_internal)?;
        let resp = CaClient::new(ch)
            .join(pb::JoinRequest {
                token: r.token.clone(),
                csr_pem,
                hostname: self.cfg.hostname.clone(),
                advertise_addr: advertise.clone(),
                platform: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
            })
            .await?
            .into_inner();
        let identity =
            Identity::new(&resp.cert_pem, &key_pem, &resp.ca_pem).map_err(status_internal)?;
        let mut managers = resp.managers.clone();
        if managers.is_empty() {
            managers.push(remote.clone());
        }
        let st = NodeFile {
            node_id: resp.node_id.clone(),
            raft_id: resp.raft_id,
            cluster_id: resp.cluster_id.clone(),
            listen_addr: listen,
            advertise_addr: advertise,
            managers,
        };
        self.save_identity(&identity).map_err(status_internal)?;
        self.save_state(&st).map_err(status_internal)?;
        let role = identity.info.role;
        self.creds.set(Some(identity));
        if role == Role::Manager {
            let kek = Kek::from_hex(&resp.kek).map_err(|e| {
                Status::internal(format!(
                    "the manager's answer to the join carries no usable cluster key: {e}"
                ))
            })?;
            key_file(&kek, &resp.unlock_key)
                .and_then(|f| f.save(&self.paths().4))
                .map_err(status_internal)?;
            self.set_kek(Some(kek));
            let mgr = self
                .start_manager(&st)
                .await
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            inner.manager = Some(mgr.clone());
            self.start_agent(&mut inner, &st, manager::dispatcher::DEFAULT_HEARTBEAT);
            inner.state = Some(st.clone());
            drop(inner);
            // Return once this manager is a voter, so that joins one after another are safe.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let mut rx = mgr.raft.metrics();
            loop {
                let voter = rx
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == st.raft_id);
                if voter {
                    break;
                }
                if tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .is_err()
                {
                    tracing::warn!("joined, but not yet a raft voter");
                    break;
                }
            }
        } else {
            self.start_agent(&mut inner, &st, manager::dispatcher::DEFAULT_HEARTBEAT);
            inner.state = Some(st);
        }
        Ok(pb::SwarmJoinResponse {
            node_id: resp.node_id,
            node_role: pb::NodeRole::from(role) as i32,
        })
    }

    async fn swarm_leave(&self, r: pb::SwarmLeaveRequest) -> Result<pb::Empty, Status> {
        let mut inner = self.inner.lock().await;
        if inner.state.is_none() {
            return Err(Status::failed_precondition(
                "This node is not part of a swarm",
            ));
        }
        let holds_manager = inner.manager.is_some() || inner.locked;
        if holds_manager && !r.force {
            return Err(Status::failed_precondition(
                "You are attempting to leave the swarm on a node that is participating as a manager. Removing this node leaves the remaining managers with fewer members to keep quorum; demote it first (shoal node demote), or use --force to ignore this message.",
            ));
        }
        if let Some(c) = inner.agent.take() {
            c.cancel();
        }
        if let Some(e) = inner.executor.take() {
            // Leaving the swarm ends its tasks here, as Docker does: stopped (each with its
            // grace period) and removed before the drivers are shut down, which would
            // otherwise leave them running.
            if !e.leave(LEAVE_DRAIN).await {
                tracing::warn!("leaving the swarm: some tasks did not stop within {LEAVE_DRAIN:?}");
            }
        }
        if let Some(m) = inner.manager.take() {
            m.shutdown().await;
        }
        if let Some(net) = &self.net {
            if let Err(e) = net.teardown().await {
                tracing::warn!(error = %e, "removing the overlay networks");
            }
        }
        self.creds.set(None);
        self.set_kek(None);
        inner.state = None;
        inner.locked = false;
        inner.removed = false;
        let (state, crt, ..) = self.paths();
        let _ = std::fs::remove_file(state);
        let _ = std::fs::remove_dir_all(crt.parent().expect("certs dir"));
        let _ = std::fs::remove_dir_all(self.paths().4);
        tracing::info!("left the swarm");
        Ok(pb::Empty {})
    }

    async fn info(&self, _r: pb::Empty) -> Result<pb::InfoResponse, Status> {
        let inner = self.inner.lock().await;
        let Some(st) = &inner.state else {
            return Ok(pb::InfoResponse {
                local_state: pb::LocalNodeState::Inactive as i32,
                ..Default::default()
            });
        };
        let id = self.creds.get();
        let (local_state, error) = if inner.locked {
            (pb::LocalNodeState::Locked, LOCKED)
        } else if inner.removed {
            (pb::LocalNodeState::Error, REMOVED)
        } else {
            (pb::LocalNodeState::Active, "")
        };
        let (is_leader, leader_addr, managers, raft_status) = match &inner.manager {
            Some(m) => (
                m.is_leader(),
                m.leader_addr().unwrap_or_default(),
                m.manager_addrs(),
                m.raft_status(),
            ),
            None => (false, String::new(), st.managers.clone(), String::new()),
        };
        let (raft_term, raft_state) = inner
            .manager
            .as_deref()
            .map(raft_term_state)
            .unwrap_or_default();
        Ok(pb::InfoResponse {
            local_state: local_state as i32,
            error: error.into(),
            node_id: st.node_id.clone(),
            node_role: id
                .as_ref()
                .map(|i| pb::NodeRole::from(i.info.role))
                .unwrap_or(pb::NodeRole::Unspecified) as i32,
            cluster_id: st.cluster_id.clone(),
            node_addr: st.advertise_addr.clone(),
            managers,
            is_leader,
            leader_addr,
            raft_status,
            raft_term,
            raft_state,
            cert_not_after_ms: id
                .map(|i| {
                    i.info
                        .not_after
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0)
                })
                .unwrap_or(0),
        })
    }

    /// `swarm unlock`: open the key file with the unlock key, then start what a restart
    /// would have started.
    async fn swarm_unlock(&self, r: pb::SwarmUnlockRequest) -> Result<pb::Empty, Status> {
        let mut inner = self.inner.lock().await;
        let Some(st) = inner.state.clone() else {
            return Err(Status::failed_precondition(
                "This node is not part of a swarm",
            ));
        };
        if !inner.locked {
            return Err(Status::failed_precondition("swarm is not locked"));
        }
        let key: UnlockKey = r
            .unlock_key
            .parse()
            .map_err(|e: manager::keys::KeyError| Status::invalid_argument(e.to_string()))?;
        let file = KeyFile::load(&self.paths().4)
            .map_err(status_internal)?
            .ok_or_else(|| Status::internal("the key file is gone"))?;
        let kek = file
            .unlock(Some(&key))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.set_kek(Some(kek));
        let mgr = self
            .start_manager(&st)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        inner.manager = Some(mgr);
        self.start_agent(&mut inner, &st, manager::dispatcher::DEFAULT_HEARTBEAT);
        inner.locked = false;
        tracing::info!("unlocked: manager started");
        Ok(pb::Empty {})
    }
}

/// Run the node until `shutdown` fires.
pub async fn run(cfg: DaemonConfig, shutdown: CancellationToken) -> Result<(), DaemonError> {
    // A manager holds a connection for every node: the default soft limit (1,024 files) ends
    // a swarm of a thousand nodes.
    match crate::limits::raise_open_files(DAEMON_OPEN_FILES) {
        Ok(n) => tracing::debug!(limit = n, "open files"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    restrict_data_dir(&cfg.data_dir).map_err(|e| DaemonError::DataDir {
        path: cfg.data_dir.clone(),
        source: e,
    })?;
    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DaemonError::Socket {
            path: cfg.socket.clone(),
            source: e,
        })?;
    }
    let (runtime, images, net) = cfg.runtime.build(&cfg.data_dir)?;
    if let Some(net) = &net {
        tokio::spawn(net.clone().run(shutdown.child_token()));
    }
    let (events_tx, mut events_rx) = mpsc::channel(16);
    let node = Arc::new_cyclic(|this| Node {
        cfg: cfg.clone(),
        runtime,
        images,
        net,
        creds: Credentials::new(None),
        kek: std::sync::Mutex::new(None),
        inner: Mutex::new(Inner {
            state: None,
            locked: false,
            removed: false,
            manager: None,
            agent: None,
            executor: None,
        }),
        events_tx,
        this: this.clone(),
    });
    node.resume().await?;
    let n = node.clone();
    tokio::spawn(async move {
        while let Some(ev) = events_rx.recv().await {
            n.on_event(ev).await;
        }
    });

    let _ = std::fs::remove_file(&cfg.socket);
    let listener =
        tokio::net::UnixListener::bind(&cfg.socket).map_err(|e| DaemonError::Socket {
            path: cfg.socket.clone(),
            source: e,
        })?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o600));
    }
    tracing::info!(socket = %cfg.socket.display(), "listening");
    let svc = manager::controlapi_server::server(node.clone(), true);
    let local =
        pb::node_local_server::NodeLocalServer::new(NodeLocalService { node: node.clone() })
            .max_decoding_message_size(proto::limits::MAX_CONTROL_REQUEST_BYTES);
    tonic::transport::Server::builder()
        .add_service(svc)
        .add_service(local)
        .serve_with_incoming_shutdown(proto::transport::serve_unix(listener), shutdown.cancelled())
        .await?;
    // Orderly stop: agent first (its executor leaves the tasks running for the next start
    // to adopt, and syncs its task table), then the manager (raft flushes on shutdown).
    let mut inner = node.inner.lock().await;
    if let Some(c) = inner.agent.take() {
        c.cancel();
    }
    if let Some(e) = inner.executor.take() {
        e.shutdown().await;
    }
    if let Some(m) = inner.manager.take() {
        m.shutdown().await;
    }
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}

/// The data dir is the node's alone: the dir 0700, and the node's own state files 0600 —
/// also those an older version left readable (node.json, certificates and keys, the raft
/// database and key file, the tasks' records). Image layers and container root filesystems
/// keep their modes: the dir's own mode already shuts everyone else out of them.
fn restrict_data_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    manager::keys::create_private_dir(dir)?;
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_file() && m.permissions().mode() & 0o777 != 0o600 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    manager::keys::restrict_tree(&dir.join("certs"))?;
    manager::keys::restrict_tree(&dir.join("raft"))?;
    if let Ok(tasks) = std::fs::read_dir(dir.join("tasks")) {
        for t in tasks.flatten() {
            manager::keys::restrict_tree(&t.path().join("task.json"))?;
        }
    }
    Ok(())
}

/// Node-local calls (unix socket only): this node's images and containers.
pub struct NodeLocalService {
    node: Arc<Node>,
}

impl NodeLocalService {
    fn images(&self) -> Result<Arc<worker::image::ImageStore>, Status> {
        self.node.images.clone().ok_or_else(|| {
            Status::failed_precondition(
                "this node runs no real containers (started with --runtime fake or none)",
            )
        })
    }
}

#[tonic::async_trait]
impl pb::node_local_server::NodeLocal for NodeLocalService {
    async fn image_load(
        &self,
        req: Request<pb::ImageLoadRequest>,
    ) -> Result<Response<pb::ImageLoadResponse>, Status> {
        let images = self.images()?;
        let path = PathBuf::from(req.into_inner().path);
        let references = tokio::task::spawn_blocking(move || images.load(&path))
            .await
            .map_err(status_internal)?
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::ImageLoadResponse { references }))
    }

    async fn image_list(
        &self,
        _req: Request<pb::Empty>,
    ) -> Result<Response<pb::ImageListResponse>, Status> {
        let images = self.images()?;
        let list = tokio::task::spawn_blocking(move || images.list())
            .await
            .map_err(status_internal)?
            .map_err(status_internal)?;
        Ok(Response::new(pb::ImageListResponse {
            images: list.iter().map(crate::image::summary_to_wire).collect(),
        }))
    }

    async fn local_state(
        &self,
        req: Request<pb::LocalStateRequest>,
    ) -> Result<Response<pb::LocalStateResponse>, Status> {
        let want_configs = req.into_inner().configs;
        let (manager, executor) = {
            let inner = self.node.inner.lock().await;
            (inner.manager.clone(), inner.executor.clone())
        };
        let mut reply = pb::LocalStateResponse::default();
        if let Some(m) = &manager {
            let (term, state) = raft_term_state(m);
            let applied = m.raft.metrics().borrow().last_applied.map(|l| l.index);
            reply.manager = true;
            reply.raft_term = term;
            reply.raft_state = state;
            reply.is_leader = m.is_leader();
            reply.last_applied = applied.unwrap_or(0);
            if want_configs {
                reply.configs = m
                    .store
                    .view(|d| d.configs.values().map(|c| c.name.clone()).collect());
            }
        }
        // The tasks this node's executor has seen RUNNING and still means to run.
        reply.running = executor
            .map(|e| {
                let running: std::collections::HashSet<String> = e
                    .statuses()
                    .into_iter()
                    .filter(|r| r.status.state == proto::spec::TaskState::Running)
                    .map(|r| r.task_id)
                    .collect();
                e.running_names()
                    .into_iter()
                    .filter(|(id, _)| running.contains(id))
                    .map(|(id, name)| pb::LocalTask { id, name })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(reply))
    }

    async fn exec_argv(
        &self,
        req: Request<pb::ExecArgvRequest>,
    ) -> Result<Response<pb::ExecArgvResponse>, Status> {
        let req = req.into_inner();
        if req.cmd.is_empty() {
            return Err(Status::invalid_argument(
                "no command given to run in the task",
            ));
        }
        let executor = self.node.inner.lock().await.executor.clone();
        let known: Vec<String> = executor
            .as_ref()
            .map(|e| e.statuses().into_iter().map(|r| r.task_id).collect())
            .unwrap_or_default();
        // A task's name as `service ps` shows it (`web.1`), or `web.1.<id prefix>`, names
        // the task of that slot this node runs; otherwise an id prefix.
        let names = executor.map(|e| e.running_names()).unwrap_or_default();
        let by_name: Vec<&String> = names
            .iter()
            .filter(|(id, name)| {
                req.task == *name
                    || req
                        .task
                        .strip_prefix(name.as_str())
                        .and_then(|rest| rest.strip_prefix('.'))
                        .is_some_and(|p| !p.is_empty() && id.starts_with(p))
            })
            .map(|(id, _)| id)
            .collect();
        let matches: Vec<&String> = if by_name.is_empty() {
            known
                .iter()
                .filter(|id| id.starts_with(&req.task))
                .collect()
        } else {
            by_name
        };
        let id = match matches.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(Status::not_found(format!(
                    "no task {} runs on this node: run exec on the node that `service ps` names",
                    req.task
                )))
            }
            _ => {
                return Err(Status::invalid_argument(format!(
                    "task id prefix {} is ambiguous",
                    req.task
                )))
            }
        };
        let argv = self
            .node
            .runtime
            .exec_argv(&id, &req.cmd)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(pb::ExecArgvResponse { argv }))
    }
}
