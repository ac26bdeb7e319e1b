//! A manager node's lifecycle: raft, the TCP gRPC server, and the leader-only loops.
//!
//! ```text
//!   Manager::start ── raft::start ── tcp server (Raft, Ca, Control, Dispatcher services)
//!        │
//!        └─ leadership watch ──gain──▶ spawn: membership, orchestrator, scheduler,
//!                             │            dispatcher liveness and status writer
//!                             ──lose──▶ cancel them
//! ```
//!
//! The leader loops see the store (reads, watch, writes through its proposer: this manager's
//! raft write queue) and the clock; the dispatcher's sessions also see a
//! [`crate::dispatcher::LeaderView`], which `Manager` implements.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use proto::transport::{client_config, serve_tls, tls_channel, Credentials};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;

use crate::auth::Authorizer;
use crate::dispatcher::Dispatcher;
use crate::error::ApiError;
use crate::raft::lease::{Liveness, Tracked};
use crate::raft::{self, NodeId, Raft, RaftTuning};
use crate::store::{Store, Txn, TxnOutcome, UpdateError};

pub use proto::transport::LEADER_METADATA;

use crate::clock::SharedClock;

#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub node_id: String,
    pub raft_id: NodeId,
    pub data_dir: PathBuf,
    pub listen_addr: SocketAddr,
    pub advertise_addr: String,
    pub tuning: RaftTuning,
    /// The cluster's key-encrypting key; `None`: the one in the data dir's key file, or a new
    /// one if there is none ([`crate::keys::load_or_create`]).
    pub kek: Option<crate::keys::Kek>,
    /// The time every decision of this manager is made at (the system clock; a simulation's
    /// virtual clock).
    pub clock: SharedClock,
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
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
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
    live: Arc<Liveness>,
    /// [`Manager::leadership`], republished whenever it changes (checked every few ms).
    leadership_tx: tokio::sync::watch::Sender<Leadership>,
    /// Until when this node stands aside after stepping down (see [`Manager::step_down`]).
    abdicated: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Writes waiting for the proposer (see `write_loop`).
    writes: tokio::sync::mpsc::UnboundedSender<PendingWrite>,
    /// The term this node acts as leader of, and a token cancelled when that ends; set and
    /// cleared only by the lease loop.
    leader_token: std::sync::Mutex<Option<(u64, CancellationToken)>>,
    /// Service watches this manager may serve at once (`WatchService`).
    pub watches: Arc<tokio::sync::Semaphore>,
    /// The cluster's key-encrypting key: opens the data key and the root CA key in the store.
    pub kek: crate::keys::Kek,
    cancel: CancellationToken,
    failed: CancellationToken,
    tasks: TaskTracker,
}

/// Who leads, as this manager can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// This node leads `term`, and a quorum acknowledged it within the lease.
    Leader { term: u64 },
    /// Another manager leads, as far as this one knows.
    Follower { leader: NodeId },
    /// No leader this manager can name: `reachable` of the `voters` managers (itself
    /// included) answered it lately.
    Unknown { reachable: usize, voters: usize },
}

/// A transaction waiting to be proposed, and where its outcome goes.
struct PendingWrite {
    txn: Txn,
    reply: tokio::sync::oneshot::Sender<Result<u64, ProposeError>>,
}

/// Transactions gathered into one raft entry at most, and their operations at most (a large
/// transaction goes alone).
const MAX_BATCH: usize = 128;
const MAX_BATCH_OPS: usize = 2_000;
/// Raft entries proposed and not yet committed at once.
const WRITES_IN_FLIGHT: usize = 4;

/// How long a manager that stepped down stands aside: long enough for another to be elected.
const ABDICATION: Duration = Duration::from_secs(10);

/// How long after its last answer a manager still counts as reachable.
const REACHABLE_WINDOW: Duration = Duration::from_secs(2);
/// How often the lease and the leadership are re-evaluated.
const LEASE_CHECK: Duration = Duration::from_millis(20);
/// The longest a proposal waits for its commit while this node keeps its lease.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(30);

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
        let live = Liveness::new();
        // The raft database and the key file are the node's alone.
        crate::keys::create_private_dir(&config.data_dir).map_err(|e| ManagerError::DataDir {
            path: config.data_dir.clone(),
            source: e,
        })?;
        let kek = match &config.kek {
            Some(k) => k.clone(),
            None => crate::keys::load_or_create(&config.data_dir)?,
        };
        let raft = raft::start(
            config.raft_id,
            &config.data_dir,
            store.clone(),
            Tracked::new(network, live.clone()),
            &config.tuning,
        )
        .await?;
        if let Err(e) = crate::keys::restrict_tree(&config.data_dir) {
            tracing::warn!(error = %e, "cannot restrict the modes of the raft files");
        }
        let auth = Authorizer::new(store.clone());
        let cancel = CancellationToken::new();
        let (leadership_tx, _) = tokio::sync::watch::channel(Leadership::Unknown {
            reachable: 1,
            voters: 1,
        });
        let (writes, writes_rx) = tokio::sync::mpsc::unbounded_channel();
        let mgr = Arc::new(Manager {
            abdicated: std::sync::Mutex::new(None),
            writes,
            dispatcher: Arc::new(Dispatcher::new(store.clone(), config.clock.clone())),
            kek,
            config,
            raft: raft.clone(),
            store,
            creds: creds.clone(),
            auth: auth.clone(),
            live,
            leadership_tx,
            leader_token: std::sync::Mutex::new(None),
            watches: Arc::new(tokio::sync::Semaphore::new(
                crate::limits::MAX_SERVICE_WATCHES,
            )),
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
                .add_service(crate::dispatcher::service(
                    mgr.dispatcher.clone(),
                    auth.clone(),
                    mgr.kek.clone(),
                    mgr.clone(),
                ));
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
        mgr.store
            .set_proposer(Arc::new(LeaderWriter(Arc::downgrade(&mgr))));
        let m = mgr.clone();
        mgr.tasks.spawn(async move { m.lease_loop().await });
        let m = mgr.clone();
        mgr.tasks
            .spawn(async move { m.write_loop(writes_rx).await });
        let m = mgr.clone();
        mgr.tasks.spawn(async move { m.leadership_loop().await });
        let m = mgr.clone();
        let c = cancel.clone();
        mgr.tasks
            .spawn(async move { crate::keys::keep_file(m, c).await });
        Ok(mgr)
    }

    /// The time of this manager's decisions ([`ManagerConfig::clock`]).
    pub fn now_ms(&self) -> i64 {
        self.config.clock.now_ms()
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

    /// Fires if raft stops with a fatal error: the node cannot go on as a manager.
    pub fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    /// Who leads, evaluated now: this node only while a quorum acknowledged it within the
    /// lease (a leader cut off from the other managers stops acting as one within
    /// `tuning.lease`, and one restarted in its old term acts only once a quorum answers it);
    /// another manager while raft follows it.
    pub fn leadership(&self) -> Leadership {
        let me = self.config.raft_id;
        let now = tokio::time::Instant::now();
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        if m.state.is_leader()
            && m.current_leader == Some(me)
            && !self.abdicating()
            && membership.voter_ids().any(|v| v == me)
        {
            let configs = membership.get_joint_config().clone();
            let acked = self.live.quorum_acked_at(me, m.current_term, &configs, now);
            if acked.is_some_and(|at| now.saturating_duration_since(at) < self.config.tuning.lease)
            {
                return Leadership::Leader {
                    term: m.current_term,
                };
            }
        } else if let Some(l) = m.current_leader.filter(|l| *l != me) {
            return Leadership::Follower { leader: l };
        }
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        Leadership::Unknown {
            reachable: self
                .live
                .reachable(me, &voters, now, REACHABLE_WINDOW)
                .max(1),
            voters: voters.len().max(1),
        }
    }

    /// One line for `shoal info`: "leader", "follower", or why there is no leader.
    pub fn raft_status(&self) -> String {
        match self.leadership() {
            Leadership::Leader { .. } if self.is_leader() => "leader".into(),
            Leadership::Follower { .. } => "follower".into(),
            Leadership::Unknown { reachable, voters } if reachable < voters / 2 + 1 => {
                no_quorum(reachable, voters)
            }
            _ => "election in progress".into(),
        }
    }

    /// Changes of [`Manager::leadership`].
    pub fn watch_leadership(&self) -> tokio::sync::watch::Receiver<Leadership> {
        self.leadership_tx.subscribe()
    }

    /// The current leader's raft id.
    pub fn leader_id(&self) -> Option<NodeId> {
        match self.leadership() {
            Leadership::Leader { .. } if self.is_leader() => Some(self.config.raft_id),
            Leadership::Follower { leader } => Some(leader),
            _ => None,
        }
    }

    /// This node acts as leader: it leads with a valid lease, and its leader loops run.
    pub fn is_leader(&self) -> bool {
        self.leader_token().is_some()
    }

    /// Cancelled when this node's current term of leadership ends; `None` unless this node
    /// acts as leader now. Leader-only work (a dispatcher session, a leader loop, a write)
    /// ends with it.
    pub fn leader_token(&self) -> Option<CancellationToken> {
        let Leadership::Leader { term } = self.leadership() else {
            return None;
        };
        self.leader_token
            .lock()
            .expect("leader token lock")
            .as_ref()
            .filter(|(t, tok)| *t == term && !tok.is_cancelled())
            .map(|(_, tok)| tok.clone())
    }

    /// The advertise address of the current leader, if one is known.
    pub fn leader_addr(&self) -> Option<String> {
        self.addr_of(self.leader_id()?)
    }

    /// Addresses of every raft member (voters and learners).
    pub fn manager_addrs(&self) -> Vec<String> {
        let (_, nodes) = raft::membership(&self.raft);
        nodes.values().map(|n| n.addr.clone()).collect()
    }

    /// Wait until some leader is known (after start or failover); when it is this node,
    /// until its leader loops run and it accepts writes.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            match self.leadership() {
                Leadership::Leader { .. } if self.is_leader() => return Some(self.config.raft_id),
                Leadership::Follower { leader } => return Some(leader),
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tick.tick().await;
        }
    }

    /// A refusal telling the caller where the leader is, or that there is none.
    pub fn not_leader(&self) -> Status {
        let leadership = self.leadership();
        let addr = match leadership {
            Leadership::Follower { leader } => self.addr_of(leader),
            _ => None,
        };
        let mut s = Status::from(match (&leadership, &addr) {
            (_, Some(a)) => ApiError::NotLeader { addr: a.clone() },
            (Leadership::Unknown { reachable, voters }, _) if *reachable < voters / 2 + 1 => {
                ApiError::NoQuorum(format!(
                    "{}; the swarm accepts no change until a majority of its managers is back (if they are lost for good: `shoal swarm init --force-new-cluster` on this manager)",
                    no_quorum(*reachable, *voters)
                ))
            }
            _ => ApiError::NoLeaderYet,
        });
        if let Some(addr) = addr {
            if let Ok(v) = addr.parse() {
                s.metadata_mut().insert(LEADER_METADATA, v);
            }
        }
        s
    }

    fn addr_of(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
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
    /// Refused at once unless this node leads with a valid lease. openraft answers a pending
    /// write only once its entry is applied or truncated on this node, which a leader cut off
    /// from the quorum would wait for until the partition heals: the wait also ends when this
    /// node stops leading (its lease lapses, it is deposed or removed from the group). The
    /// write's outcome is then unknown, as with any lost leadership.
    pub async fn propose(&self, txn: Txn) -> Result<u64, ProposeError> {
        let Some(term) = self.leader_token() else {
            return Err(ProposeError::NotLeader);
        };
        let (reply, outcome) = tokio::sync::oneshot::channel();
        if self.writes.send(PendingWrite { txn, reply }).is_err() {
            return Err(ProposeError::NotLeader);
        }
        tokio::select! {
            biased;
            r = outcome => r.unwrap_or(Err(ProposeError::NotLeader)),
            () = term.cancelled() => Err(ProposeError::NotLeader),
            () = tokio::time::sleep(PROPOSE_TIMEOUT) => Err(ProposeError::Raft(format!(
                "the write was not committed within {PROPOSE_TIMEOUT:?}; its outcome is unknown"
            ))),
        }
    }

    /// The proposer: gathers the writes waiting while earlier ones are in flight into one
    /// raft entry (a batch), so that concurrent writers share one append and one fsync on
    /// every manager instead of queueing for one each.
    async fn write_loop(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<PendingWrite>,
    ) {
        let permits = Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT));
        loop {
            let first = tokio::select! {
                _ = self.cancel.cancelled() => return,
                w = rx.recv() => match w { Some(w) => w, None => return },
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let mut ops = first.txn.op_count();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH && ops < MAX_BATCH_OPS {
                match rx.try_recv() {
                    Ok(w) => {
                        ops += w.txn.op_count();
                        batch.push(w);
                    }
                    Err(_) => break,
                }
            }
            let raft = self.raft.clone();
            self.tasks.spawn(async move {
                let _permit = permit;
                submit(&raft, batch).await;
            });
        }
    }

    /// Confirm leadership with a quorum before serving a read; fails within a few seconds
    /// without one.
    pub async fn linearizable(&self) -> Result<(), Status> {
        let Some(term) = self.leader_token() else {
            return Err(self.not_leader());
        };
        let deadline = self.config.tuning.election_max * 4;
        tokio::select! {
            biased;
            r = tokio::time::timeout(deadline, self.raft.ensure_linearizable()) => match r {
                Ok(Ok(_)) => Ok(()),
                _ => Err(self.not_leader()),
            },
            () = term.cancelled() => Err(self.not_leader()),
        }
    }

    /// Re-evaluates the lease and the leadership every few ms and publishes changes; sends
    /// the heartbeats while raft is leader (openraft's own are off, see [`RaftTuning`]); and
    /// notices a raft core that stopped.
    async fn lease_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(LEASE_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_heartbeat = tokio::time::Instant::now();
        // Since when the lease has lapsed while raft kept leading (see below).
        let mut lapsed_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let (raft_leader, raft_term, fatal) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                (
                    m.state.is_leader() && m.current_leader == Some(self.config.raft_id),
                    m.current_term,
                    m.running_state.clone().err(),
                )
            };
            if let Some(fatal) = fatal {
                // `Stopped` is our own shutdown; anything else is a crash of the raft core.
                if !self.cancel.is_cancelled() && !matches!(fatal, openraft::error::Fatal::Stopped)
                {
                    tracing::error!(error = %fatal, "raft stopped");
                    self.failed.cancel();
                }
                if let Some((_, tok)) = self.leader_token.lock().expect("leader token lock").take()
                {
                    tok.cancel();
                }
                self.leadership_tx.send_if_modified(|l| {
                    let was = matches!(l, Leadership::Leader { .. });
                    *l = Leadership::Unknown {
                        reachable: 1,
                        voters: 1,
                    };
                    was
                });
                return;
            }
            let now = tokio::time::Instant::now();
            if raft_leader && now >= next_heartbeat && !self.abdicating() {
                next_heartbeat = now + self.config.tuning.heartbeat;
                let _ = self.raft.trigger().heartbeat().await;
            }
            let current = self.leadership();
            {
                // Begin or end a term of acting as leader before anyone hears of it.
                let mut g = self.leader_token.lock().expect("leader token lock");
                match current {
                    Leadership::Leader { term } => {
                        if let Some(since) = lapsed_since.take() {
                            tracing::info!(
                                node = %self.config.node_id,
                                term,
                                after = ?now.saturating_duration_since(since),
                                "lease regained; leader work resumes"
                            );
                        }
                        if g.as_ref().map(|(t, _)| *t) != Some(term) {
                            if let Some((_, tok)) = g.take() {
                                tok.cancel();
                            }
                            *g = Some((term, self.cancel.child_token()));
                        }
                    }
                    _ => {
                        // A lapse while raft still leads the same term pauses the leader's
                        // work (no writes, no reads: see `leader_token`) without ending it, so
                        // that a leader slowed down for a moment keeps its nodes' sessions;
                        // the term ends once raft moves on or the lapse outlasts the grace.
                        let grace = self.config.tuning.election_max.saturating_mul(2);
                        let same_term = g.as_ref().is_some_and(|(t, _)| {
                            raft_leader && *t == raft_term && !self.abdicating()
                        });
                        let since = same_term.then(|| {
                            *lapsed_since.get_or_insert_with(|| {
                                tracing::info!(node = %self.config.node_id, term = raft_term, "lease lapsed; leader work paused");
                                now
                            })
                        });
                        if since.is_none_or(|s| now.saturating_duration_since(s) >= grace) {
                            lapsed_since = None;
                            if let Some((_, tok)) = g.take() {
                                tok.cancel();
                            }
                        }
                    }
                }
            }
            self.leadership_tx.send_if_modified(|l| {
                if *l != current {
                    *l = current;
                    true
                } else {
                    false
                }
            });
        }
    }

    /// Starts the leader-only loops when this node gains leadership (with its lease); they
    /// end, as every dispatcher session does, with that term's token (see `lease_loop`).
    async fn leadership_loop(self: Arc<Self>) {
        let mut rx = self.watch_leadership();
        let mut running: Option<(u64, CancellationToken)> = None;
        loop {
            rx.borrow_and_update();
            if let Some((t, _)) = running.as_ref().filter(|(_, tok)| tok.is_cancelled()) {
                tracing::info!(node = %self.config.node_id, term = t, now = ?self.leadership(), "stepped down");
                running = None;
            }
            if running.is_none() {
                let acting = self
                    .leader_token
                    .lock()
                    .expect("leader token lock")
                    .clone()
                    .filter(|(_, tok)| !tok.is_cancelled());
                if let Some((term, token)) = acting {
                    tracing::info!(node = %self.config.node_id, term, "became leader");
                    self.start_leader_loops(&token);
                    running = Some((term, token));
                }
            }
            let ended = running.as_ref().map(|(_, t)| t.clone()).unwrap_or_default();
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                r = rx.changed() => if r.is_err() { break },
                _ = ended.cancelled(), if running.is_some() => {}
            }
        }
    }

    /// The leader-only loops, each supervised: restarted if it panics or fails; when one
    /// keeps failing, this node steps down rather than lead without it. One that ends on a
    /// write refused while the lease has lapsed runs again when the lease is back.
    fn start_leader_loops(self: &Arc<Self>, token: &CancellationToken) {
        let give_up = CancellationToken::new();
        let m = self.clone();
        let loops = crate::supervise::Supervisor {
            tracker: self.tasks.clone(),
            cancel: token.clone(),
            give_up: give_up.clone(),
            ready: move |t| m.until_acting(t),
        };
        let m = self.clone();
        loops.spawn("membership", move |t| {
            crate::membership::Membership::new(m.store.clone(), m.raft.clone(), m.config.raft_id)
                .run(t)
        });
        let liveness = self.dispatcher.liveness.clone();
        loops.spawn("dispatcher monitor", move |t| liveness.clone().run(t));
        let m = self.clone();
        loops.spawn("orchestrator", move |t| {
            crate::orchestrator::Orchestrator::new(m.store.clone(), m.config.clock.clone()).run(t)
        });
        let m = self.clone();
        loops.spawn("scheduler", move |t| {
            crate::scheduler::Scheduler::new(m.store.clone(), m.config.clock.clone()).run(t)
        });
        let statuses = self.dispatcher.statuses.clone();
        loops.spawn("dispatcher statuses", move |t| statuses.clone().run(t));
        let t = token.clone();
        let m = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = t.cancelled() => {}
                _ = give_up.cancelled() => m.step_down("a leader loop keeps failing"),
            }
        });
    }

    /// Completes once this node acts as leader, or `term` ends (at once unless the lease has
    /// lapsed: a leader loop that ended on a refused write waits for the lease to come back).
    fn until_acting(
        self: &Arc<Self>,
        term: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let m = self.clone();
        async move {
            let mut rx = m.watch_leadership();
            while !term.is_cancelled() && m.leader_token().is_none() {
                tokio::select! {
                    _ = term.cancelled() => break,
                    r = rx.changed() => if r.is_err() { break },
                }
            }
        }
    }

    /// Stop leading: act as leader no more, send no heartbeats (the followers' leases run
    /// out and they elect another manager) and stand for no election, for a while.
    pub fn step_down(&self, why: &str) {
        tracing::error!(node = %self.config.node_id, reason = why, "stepping down");
        *self.abdicated.lock().expect("abdication lock") =
            Some(tokio::time::Instant::now() + ABDICATION);
        self.raft.runtime_config().elect(false);
        if let Some((_, tok)) = self.leader_token.lock().expect("leader token lock").take() {
            tok.cancel();
        }
    }

    /// Whether this node has stepped down lately (see [`Manager::step_down`]); ends the
    /// abdication once its time is up.
    fn abdicating(&self) -> bool {
        let mut g = self.abdicated.lock().expect("abdication lock");
        match *g {
            Some(until) if tokio::time::Instant::now() < until => true,
            Some(_) => {
                *g = None;
                self.raft.runtime_config().elect(true);
                false
            }
            None => false,
        }
    }
}

/// Proposes `batch` as one entry and answers each writer.
async fn submit(raft: &Raft, mut batch: Vec<PendingWrite>) {
    fn one(out: TxnOutcome, index: u64) -> Result<u64, ProposeError> {
        match out {
            TxnOutcome::Applied { index } => Ok(index),
            TxnOutcome::Refused(e) => Err(ProposeError::Refused(e)),
            TxnOutcome::Nothing | TxnOutcome::Batch(_) => Ok(index),
        }
    }
    let err = |e: RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>| match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ProposeError::NotLeader,
        e => ProposeError::Raft(e.to_string()),
    };
    if batch.len() == 1 {
        let w = batch.pop().expect("one write");
        let r = raft.client_write(w.txn.into()).await;
        let _ = w.reply.send(
            r.map_err(err)
                .and_then(|resp| one(resp.data, resp.log_id.index)),
        );
        return;
    }
    let (txns, replies): (Vec<Txn>, Vec<_>) = batch.into_iter().map(|w| (w.txn, w.reply)).unzip();
    match raft.client_write(Txn::batch(txns).into()).await {
        Ok(resp) => {
            let index = resp.log_id.index;
            let outs = match resp.data {
                TxnOutcome::Batch(outs) => outs,
                other => vec![other; replies.len()],
            };
            for (reply, out) in replies.into_iter().zip(outs) {
                let _ = reply.send(one(out, index));
            }
        }
        Err(e) => {
            let e = err(e);
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// The refusal of a manager that cannot reach a quorum.
pub fn no_quorum(reachable: usize, voters: usize) -> String {
    format!("no quorum: {reachable} of {voters} managers reachable")
}

pub use crate::store::ProposeError;

/// The store's proposer on a manager: its raft write queue, which takes writes only while
/// the manager leads.
struct LeaderWriter(std::sync::Weak<Manager>);

impl crate::store::Proposer for LeaderWriter {
    fn propose<'a>(&'a self, _store: &'a Store, txn: Txn) -> crate::store::Proposal<'a> {
        Box::pin(async move {
            match self.0.upgrade() {
                Some(m) => m.propose(txn).await,
                None => Err(ProposeError::NotLeader),
            }
        })
    }
}

impl crate::dispatcher::LeaderView for Manager {
    fn leader_token(&self) -> Option<CancellationToken> {
        Manager::leader_token(self)
    }
    fn leader_addr(&self) -> Option<String> {
        Manager::leader_addr(self)
    }
    fn manager_addrs(&self) -> Vec<String> {
        Manager::manager_addrs(self)
    }
    fn write_refused(&self, e: ProposeError) -> Status {
        e.into_status(self)
    }
}

impl ProposeError {
    /// The refusal as the answer to a client: where the leader is, or the store's reason.
    pub fn into_status(self, mgr: &Manager) -> Status {
        match self {
            ProposeError::NotLeader => mgr.not_leader(),
            ProposeError::Refused(e) => ApiError::from(e).into(),
            ProposeError::Raft(e) => ApiError::Unavailable(e).into(),
        }
    }
}

/// Read-modify-write with retries on version conflicts ([`Store::update_with_retry`]), its
/// refusal as the answer to a client.
pub async fn update_with_retry<F>(mgr: &Manager, build: F) -> Result<u64, Status>
where
    F: FnMut(&crate::store::StoreData) -> Result<Txn, Status>,
{
    mgr.store
        .update_with_retry(build)
        .await
        .map_err(|e| update_status(mgr, e))
}

/// A read-modify-write's refusal as the answer to a client.
fn update_status(mgr: &Manager, e: UpdateError<Status>) -> Status {
    match e {
        UpdateError::Build(s) => s,
        UpdateError::Propose(e) => e.into_status(mgr),
        UpdateError::Contended => ApiError::Conflict(e.to_string()).into(),
    }
}
