//! The dispatcher: one session stream per node, held with the leader.
//!
//! A node registers (its description), then heartbeats every period; each heartbeat is
//! answered with the session state the node needs (heartbeat period, manager addresses, the
//! leader, its desired role). Liveness is tracked in memory on the leader and only
//! transitions are written to the store: a node is Ready when it registers and Down once it
//! has missed three periods. A new leader gives every node a full grace period before
//! judging it, so a failover does not mark the cluster down.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::pb;
use proto::security::Role;
use proto::spec::{
    Assignment, Backend, NetPeer, NetworkState, NodeNetState, ServiceNet, ServiceOnNetwork,
    StatusReport, TaskState, TaskStatus,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Caller;
use crate::manager::{now_ms, update_with_retry, Manager};
use crate::store::{
    Change, Holder, Kind, NodeDescription, NodeState, Object, Op, Store, StoreData, Task, Txn,
};

/// Missed heartbeat periods after which a node is Down.
pub const MISSED_PERIODS: u32 = 3;
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Added to the missed-heartbeat limit for every node when a leader takes office: the time
/// agents need to find it (their reconnect back-off is at most 1 s, and they may first try
/// managers that are not the leader).
pub const NEW_LEADER_GRACE: Duration = Duration::from_secs(3);

type SessionTx = mpsc::Sender<Result<pb::SessionMessage, Status>>;

/// Where the chunks of a log subscription go: (subscription id, chunk).
pub type LogSink = mpsc::Sender<(u64, pb::LogChunk)>;

/// Log chunks a subscriber may have queued before more are dropped (a slow client must not
/// hold up the session loop, which also carries heartbeats).
pub const LOG_QUEUE: usize = 4096;

pub struct Dispatcher {
    store: Store,
    /// The open session of each node: (serial, outbound stream).
    sessions: Mutex<HashMap<String, (u64, SessionTx)>>,
    next_serial: std::sync::atomic::AtomicU64,
    /// Log subscriptions: id → (node, sink).
    log_subs: Mutex<HashMap<u64, (String, LogSink)>>,
    last_seen: Mutex<HashMap<String, Instant>>,
    /// Status reports waiting to be written, newest per task.
    pending: Mutex<HashMap<String, TaskStatus>>,
    pending_notify: tokio::sync::Notify,
}

/// The tasks a node must know about: everything placed on it except tasks that have ended
/// and are not meant to run (those it may forget).
pub fn assignments_for(
    d: &crate::store::StoreData,
    node_id: &str,
    kek: &crate::keys::Kek,
) -> BTreeMap<String, Assignment> {
    let mut key = None;
    d.node_tasks(node_id)
        .filter_map(|t| Some((t.id.clone(), assignment_of(d, t, node_id, kek, &mut key)?)))
        .collect()
}

/// What node `node_id` is told about task `t`, if anything.
fn assignment_of(
    d: &StoreData,
    t: &Task,
    node_id: &str,
    kek: &crate::keys::Kek,
    key: &mut Option<Option<crate::store::DataKey>>,
) -> Option<Assignment> {
    if t.node_id != node_id
        || t.status.state < TaskState::Assigned
        || (t.status.state.is_terminal() && t.desired_state > TaskState::Running)
    {
        return None;
    }
    Some(Assignment {
        task_id: t.id.clone(),
        service_id: t.service_id.clone(),
        service_name: t.service_name.clone(),
        slot: t.slot,
        spec: proto::spec::TaskSpec::clone(&t.spec),
        desired_state: t.desired_state,
        node_hostname: d
            .nodes
            .get(node_id)
            .map(|n| n.description.hostname.clone())
            .unwrap_or_default(),
        secrets: resolve(d, crate::secrets::FileKind::Secret, &t.spec, kek, key),
        configs: resolve(d, crate::secrets::FileKind::Config, &t.spec, kek, key),
        networks: t.networks.clone(),
    })
}

/// The files of `kind` a task spec names; the data key is opened at most once per call of
/// [`assignments_for`] (`key`), and only when some task names a secret or config.
fn resolve(
    d: &StoreData,
    kind: crate::secrets::FileKind,
    spec: &proto::spec::TaskSpec,
    kek: &crate::keys::Kek,
    key: &mut Option<Option<crate::store::DataKey>>,
) -> Vec<proto::spec::FileData> {
    if kind.refs(spec).is_empty() {
        return Vec::new();
    }
    let key = key.get_or_insert_with(|| crate::secrets::data_key(d, kek));
    crate::secrets::resolve(d, kind, spec, key.as_ref())
}

/// What a session last sent a node, per task: a fingerprint of the assignment rather than
/// the assignment itself (a node with 50,000 tasks held ~100 MB of copies per session).
pub type Sent = BTreeMap<String, u64>;

/// A fingerprint of an assignment's content.
pub fn fingerprint(a: &Assignment) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(a).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// The fingerprints of a full set of assignments.
pub fn fingerprints(all: &BTreeMap<String, Assignment>) -> Sent {
    all.iter()
        .map(|(id, a)| (id.clone(), fingerprint(a)))
        .collect()
}

/// The message that turns what was sent into the full set `now` (after a missed event).
pub fn diff_full(sent: &mut Sent, now: BTreeMap<String, Assignment>) -> Option<pb::Assignments> {
    let removed: Vec<String> = sent
        .keys()
        .filter(|id| !now.contains_key(*id))
        .cloned()
        .collect();
    let mut upsert: Vec<Assignment> = Vec::new();
    let mut next = Sent::new();
    for (id, a) in now {
        let f = fingerprint(&a);
        if sent.get(&id) != Some(&f) {
            upsert.push(a);
        }
        next.insert(id, f);
    }
    *sent = next;
    if upsert.is_empty() && removed.is_empty() {
        return None;
    }
    Some(pb::Assignments {
        full: false,
        upsert_json: serde_json::to_string(&upsert).unwrap_or_default(),
        removed,
    })
}

/// The assignment changes of the tasks `ids` (those a committed event touched), applied to
/// `sent`: work proportional to the event, not to the node's tasks.
pub fn diff_touched<'a>(
    sent: &mut Sent,
    d: &StoreData,
    node_id: &str,
    kek: &crate::keys::Kek,
    ids: impl IntoIterator<Item = &'a str>,
) -> Option<pb::Assignments> {
    let mut key = None;
    let mut upsert: Vec<Assignment> = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    for id in ids {
        let now = d
            .tasks
            .get(id)
            .and_then(|t| assignment_of(d, t, node_id, kek, &mut key));
        match now {
            Some(a) => {
                let f = fingerprint(&a);
                if sent.insert(id.to_string(), f) != Some(f) {
                    upsert.push(a);
                }
            }
            None => {
                if sent.remove(id).is_some() {
                    removed.push(id.to_string());
                }
            }
        }
    }
    if upsert.is_empty() && removed.is_empty() {
        return None;
    }
    Some(pb::Assignments {
        full: false,
        upsert_json: serde_json::to_string(&upsert).unwrap_or_default(),
        removed,
    })
}

/// Whether a task takes traffic: RUNNING, meant to run, on a ready node.
fn is_backend(d: &StoreData, t: &Task) -> bool {
    t.status.state == TaskState::Running
        && t.desired_state == TaskState::Running
        && d.nodes
            .get(&t.node_id)
            .is_some_and(|n| n.state == NodeState::Ready)
}

/// The IP part of an advertise address `IP:PORT` (or a bare IP).
fn node_ip(addr: &str) -> Option<Ipv4Addr> {
    addr.parse::<std::net::SocketAddr>()
        .ok()
        .and_then(|s| match s.ip() {
            std::net::IpAddr::V4(a) => Some(a),
            _ => None,
        })
        .or_else(|| addr.parse().ok())
}

/// What node `node_id` needs to program its overlays, load balancers and DNS: the networks
/// it has tasks on (and ingress), their endpoints on other nodes, and the services on those
/// networks or with published ports, with their backends.
pub fn node_net_state(d: &StoreData, node_id: &str) -> NodeNetState {
    let me = d.nodes.get(node_id);
    let mut st = NodeNetState {
        node_id: node_id.to_string(),
        node_ip: me.and_then(|n| node_ip(&n.description.addr)),
        ingress_addr: me.and_then(|n| n.ingress_addr),
        ..Default::default()
    };
    let ingress = d.ingress_network();
    let mut nets: BTreeSet<&str> = d
        .node_tasks(node_id)
        .filter(|t| !t.status.state.is_terminal())
        .flat_map(|t| t.networks.iter().map(|n| n.network_id.as_str()))
        .collect();
    if let Some(i) = ingress {
        nets.insert(i.id.as_str());
    }
    for net_id in &nets {
        let Some(n) = d.networks.get(*net_id) else {
            continue;
        };
        let mut peers: Vec<NetPeer> = Vec::new();
        for (addr, h) in d.addrs.get(*net_id).into_iter().flatten() {
            let holder_node = match h {
                Holder::Task(id) => match d.tasks.get(id) {
                    Some(t) => t.node_id.as_str(),
                    None => continue,
                },
                Holder::Node(id) => id.as_str(),
                Holder::Service(_) => continue,
            };
            if holder_node.is_empty() || holder_node == node_id {
                continue;
            }
            if let Some(ip) = d
                .nodes
                .get(holder_node)
                .and_then(|x| node_ip(&x.description.addr))
            {
                peers.push(NetPeer {
                    addr: *addr,
                    node_ip: ip,
                });
            }
        }
        peers.sort();
        st.networks.push(NetworkState {
            id: n.id.clone(),
            name: n.spec.name.clone(),
            vni: n.vni,
            subnet: n.subnet.clone(),
            gateway: Some(n.gateway),
            internal: n.spec.internal,
            ingress: n.spec.ingress,
            peers,
        });
    }
    for s in d.services.values() {
        let on_my_nets = s
            .spec
            .task
            .networks
            .iter()
            .any(|a| nets.contains(a.target.as_str()))
            || s.endpoint.vips.keys().any(|k| nets.contains(k.as_str()));
        if !on_my_nets && s.endpoint.ports.is_empty() {
            continue;
        }
        let networks = crate::allocator::service_networks(d, &s.spec)
            .into_iter()
            .map(|(n, aliases)| ServiceOnNetwork {
                network_id: n.id.clone(),
                vip: s.endpoint.vips.get(&n.id).copied(),
                aliases,
            })
            .collect();
        let backends = d
            .service_tasks(&s.id)
            .filter(|t| is_backend(d, t))
            .map(|t| Backend {
                task_id: t.id.clone(),
                node_id: t.node_id.clone(),
                addrs: t
                    .networks
                    .iter()
                    .map(|n| (n.network_id.clone(), n.addr))
                    .collect(),
            })
            .collect();
        st.services.push(ServiceNet {
            id: s.id.clone(),
            name: s.spec.name.clone(),
            mode: s.spec.endpoint.mode,
            ports: s.endpoint.ports.clone(),
            networks,
            backends,
        });
    }
    st
}

/// The JSON of a node's net state, and whether it holds anything (networks or services).
fn net_json(d: &StoreData, node_id: &str) -> (String, bool) {
    let st = node_net_state(d, node_id);
    let busy = !st.networks.is_empty() || !st.services.is_empty();
    (serde_json::to_string(&st).unwrap_or_default(), busy)
}

/// Whether a committed change may alter some node's [`NodeNetState`]. `net_active`: the
/// cluster has networks or the node was last sent a non-empty state.
fn net_relevant(change: &Change, net_active: bool) -> bool {
    match change {
        Change::Put(Object::Network(_))
        | Change::Deleted {
            kind: Kind::Network,
            ..
        } => true,
        Change::Put(Object::Service(s)) => {
            !s.endpoint.vips.is_empty()
                || !s.endpoint.ports.is_empty()
                || !s.spec.task.networks.is_empty()
                || net_active
        }
        Change::Deleted {
            kind: Kind::Service,
            ..
        } => net_active,
        Change::Put(Object::Node(_))
        | Change::Deleted {
            kind: Kind::Node, ..
        } => net_active,
        Change::Put(Object::Task(t)) => {
            !t.networks.is_empty() || (net_active && t.status.state == TaskState::Running)
        }
        Change::Deleted {
            kind: Kind::Task, ..
        } => net_active,
        _ => false,
    }
}

/// The message that turns `sent` into `now` (None: nothing changed).
pub fn diff_assignments(
    sent: &BTreeMap<String, Assignment>,
    now: &BTreeMap<String, Assignment>,
) -> Option<pb::Assignments> {
    let upsert: Vec<&Assignment> = now
        .iter()
        .filter(|(id, a)| sent.get(*id) != Some(a))
        .map(|(_, a)| a)
        .collect();
    let removed: Vec<String> = sent
        .keys()
        .filter(|id| !now.contains_key(*id))
        .cloned()
        .collect();
    if upsert.is_empty() && removed.is_empty() {
        return None;
    }
    Some(pb::Assignments {
        full: false,
        upsert_json: serde_json::to_string(&upsert).unwrap_or_default(),
        removed,
    })
}

impl Dispatcher {
    pub fn new(store: Store) -> Dispatcher {
        Dispatcher {
            store,
            sessions: Mutex::new(HashMap::new()),
            next_serial: std::sync::atomic::AtomicU64::new(1),
            log_subs: Mutex::new(HashMap::new()),
            last_seen: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            pending_notify: tokio::sync::Notify::new(),
        }
    }

    /// The serial of the session `node` holds with this manager, if any.
    pub fn session_serial(&self, node: &str) -> Option<u64> {
        self.sessions
            .lock()
            .expect("dispatcher lock")
            .get(node)
            .map(|(s, _)| *s)
    }

    fn register_session(&self, node: &str, tx: SessionTx) -> u64 {
        let serial = self
            .next_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sessions
            .lock()
            .expect("dispatcher lock")
            .insert(node.to_string(), (serial, tx));
        serial
    }

    fn end_session(&self, node: &str, serial: u64) {
        let mut s = self.sessions.lock().expect("dispatcher lock");
        if s.get(node).is_some_and(|(x, _)| *x == serial) {
            s.remove(node);
        }
    }

    /// Open a log subscription on `node`: its chunks go to `sink`. Returns the subscription
    /// id and the serial of the session the request went to, or None if the node holds no
    /// session with this manager.
    pub async fn subscribe_logs(
        &self,
        mgr: &Manager,
        node: &str,
        mut req: pb::LogRequest,
        sink: LogSink,
    ) -> Option<(u64, u64)> {
        let (serial, tx) = self
            .sessions
            .lock()
            .expect("dispatcher lock")
            .get(node)
            .cloned()?;
        let id = self
            .next_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        req.subscription = id;
        req.cancel = false;
        self.log_subs
            .lock()
            .expect("dispatcher lock")
            .insert(id, (node.to_string(), sink));
        let mut m = self.session_message(mgr, node);
        m.log_request = Some(req);
        if tx.send(Ok(m)).await.is_err() {
            self.log_subs.lock().expect("dispatcher lock").remove(&id);
            return None;
        }
        Some((id, serial))
    }

    /// Close a subscription; with `tell_node`, the node stops following.
    pub async fn unsubscribe_logs(&self, mgr: &Manager, id: u64, tell_node: bool) {
        let Some((node, _)) = self.log_subs.lock().expect("dispatcher lock").remove(&id) else {
            return;
        };
        if !tell_node {
            return;
        }
        let tx = self
            .sessions
            .lock()
            .expect("dispatcher lock")
            .get(&node)
            .map(|(_, tx)| tx.clone());
        if let Some(tx) = tx {
            let mut m = self.session_message(mgr, &node);
            m.log_request = Some(pb::LogRequest {
                subscription: id,
                cancel: true,
                ..Default::default()
            });
            let _ = tx.try_send(Ok(m));
        }
    }

    /// A chunk from `node`: to its subscriber, if the subscription is that node's.
    fn deliver_logs(&self, node: &str, chunk: pb::LogChunk) {
        let subs = self.log_subs.lock().expect("dispatcher lock");
        match subs.get(&chunk.subscription) {
            Some((n, sink)) if n == node => {
                if sink.try_send((chunk.subscription, chunk)).is_err() {
                    tracing::debug!(%node, "log subscriber is slow or gone: chunk dropped");
                }
            }
            _ => tracing::debug!(%node, "log chunk for an unknown subscription"),
        }
    }

    /// Record a heartbeat of `node`.
    pub fn seen(&self, node: &str) {
        self.last_seen
            .lock()
            .expect("dispatcher lock")
            .insert(node.to_string(), Instant::now());
    }

    fn period(&self) -> Duration {
        self.store
            .view(|d| d.cluster.as_ref().map(|c| c.heartbeat_period_ms))
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_HEARTBEAT)
    }

    /// Leader-only: marks nodes Down after missed heartbeats.
    pub async fn monitor(self: Arc<Self>, mgr: Arc<Manager>, cancel: CancellationToken) {
        // Grace: everyone counts as seen a little after this leader starts. Agents learn of
        // a new leader only when their session fails, and may be backing off then: without
        // the extra time a short heartbeat period marks the whole cluster Down at failover.
        {
            let now = Instant::now() + NEW_LEADER_GRACE;
            let mut seen = self.last_seen.lock().expect("dispatcher lock");
            seen.clear();
            for id in self
                .store
                .view(|d| d.nodes.keys().cloned().collect::<Vec<_>>())
            {
                seen.insert(id, now);
            }
        }
        let mut period = self.period();
        loop {
            let now_period = self.period();
            let tick =
                (now_period / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            let now = Instant::now();
            let expired: Vec<String> = {
                let mut seen = self.last_seen.lock().expect("dispatcher lock");
                if now_period != period {
                    period_changed(&mut seen, period, now_period, now);
                    period = now_period;
                }
                self.store.view(|d| {
                    let up = d
                        .nodes
                        .values()
                        .filter(|n| n.state != NodeState::Down)
                        .map(|n| n.id.as_str());
                    expired_nodes(&mut seen, up, period, now)
                })
            };
            for id in expired {
                tracing::info!(node = %id, "heartbeat expired: node down");
                let res =
                    set_state(&mgr, &id, NodeState::Down, "heartbeat failure", None, None).await;
                if let Err(e) = res {
                    tracing::debug!(node = %id, error = %e, "could not mark node down");
                }
            }
        }
    }

    /// A heartbeat of `node_id`: it is alive; a node marked Down comes back Ready.
    /// Err(NotFound) if the node was removed.
    pub async fn heartbeat(&self, mgr: &Manager, node_id: &str) -> Result<(), Status> {
        self.seen(node_id);
        let down = self
            .store
            .view(|d| d.nodes.get(node_id).map(|n| n.state != NodeState::Ready));
        match down {
            None => Err(Status::not_found(format!(
                "node {node_id} has been removed from the swarm"
            ))),
            Some(true) => set_state(mgr, node_id, NodeState::Ready, "", None, None).await,
            Some(false) => Ok(()),
        }
    }

    /// Queue a node's reports; only tasks placed on that node are accepted.
    pub fn queue_reports(&self, node_id: &str, reports: Vec<StatusReport>) {
        let accepted: Vec<StatusReport> = self.store.view(|d| {
            reports
                .into_iter()
                .filter(|r| {
                    d.tasks
                        .get(&r.task_id)
                        .is_some_and(|t| t.node_id == node_id)
                })
                .collect()
        });
        if accepted.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().expect("dispatcher lock");
        for r in accepted {
            let newer = pending
                .get(&r.task_id)
                .is_none_or(|s| s.state <= r.status.state);
            if newer {
                pending.insert(r.task_id, r.status);
            }
        }
        drop(pending);
        self.pending_notify.notify_one();
    }

    /// Leader-only: writes queued status reports in batches (forward moves only).
    pub async fn write_statuses(self: Arc<Self>, mgr: Arc<Manager>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.pending_notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            // Gather what arrives within a few milliseconds into one write.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let batch: Vec<(String, TaskStatus)> = {
                let mut p = self.pending.lock().expect("dispatcher lock");
                p.drain().collect()
            };
            if batch.is_empty() {
                continue;
            }
            for chunk in batch.chunks(crate::orchestrator::MAX_OPS_PER_TXN) {
                let ops: Vec<Op> = self.store.view(|d| {
                    chunk
                        .iter()
                        .filter_map(|(id, st)| {
                            let t = d.tasks.get(id)?;
                            if st.state < t.status.state
                                || (st.state == t.status.state && st == &t.status)
                            {
                                return None;
                            }
                            let mut t = t.clone();
                            t.status = st.clone();
                            Some(Op::Update(Object::Task(t)))
                        })
                        .collect()
                });
                if ops.is_empty() {
                    continue;
                }
                match mgr.propose(Txn::new(ops)).await {
                    Ok(_) => {}
                    Err(crate::manager::ProposeError::NotLeader) => return,
                    Err(e) => {
                        // A task changed meanwhile: put the reports back for the next round.
                        tracing::debug!(error = %e, "status batch refused; retrying");
                        let mut p = self.pending.lock().expect("dispatcher lock");
                        for (id, st) in chunk {
                            let newer = p.get(id).is_none_or(|s| s.state <= st.state);
                            if newer {
                                p.insert(id.clone(), st.clone());
                            }
                        }
                        drop(p);
                        self.pending_notify.notify_one();
                    }
                }
            }
        }
    }

    fn session_message(&self, mgr: &Manager, node_id: &str) -> pb::SessionMessage {
        let (desired_role, raft_id) = self.store.view(|d| {
            d.nodes
                .get(node_id)
                .map(|n| (n.desired_role, n.raft_id))
                .unwrap_or((Role::Worker, 0))
        });
        pb::SessionMessage {
            heartbeat_period_ms: self.period().as_millis() as u64,
            managers: mgr.manager_addrs(),
            leader_addr: mgr.leader_addr().unwrap_or_default(),
            desired_role: desired_role.as_str().into(),
            raft_id,
            cert_expiry_ms: self
                .store
                .view(|d| d.cluster.as_ref().map(|c| c.cert_expiry_ms))
                .unwrap_or(0),
            assignments: None,
            log_request: None,
            net_json: String::new(),
        }
    }
}

/// The heartbeat period changed from `old` to `new`. Nodes learn a new period only with
/// their next heartbeat, which may come up to `old` from now: a shorter period applies to a
/// node after that grace (lowering it from 30 s to 1 s must not mark every node down at once).
fn period_changed(seen: &mut HashMap<String, Instant>, old: Duration, new: Duration, now: Instant) {
    if new >= old {
        return;
    }
    let graced = now + old;
    for t in seen.values_mut() {
        if *t < graced {
            *t = graced;
        }
    }
}

/// Nodes among `up` whose last heartbeat is more than `MISSED_PERIODS` periods old; a node
/// not seen yet counts as seen now.
fn expired_nodes<'a>(
    seen: &mut HashMap<String, Instant>,
    up: impl Iterator<Item = &'a str>,
    period: Duration,
    now: Instant,
) -> Vec<String> {
    let limit = period.saturating_mul(MISSED_PERIODS);
    up.filter(|id| {
        let t = *seen.entry(id.to_string()).or_insert(now);
        now.saturating_duration_since(t) > limit
    })
    .map(str::to_string)
    .collect()
}

async fn set_state(
    mgr: &Manager,
    id: &str,
    state: NodeState,
    message: &str,
    description: Option<&NodeDescription>,
    role: Option<Role>,
) -> Result<(), Status> {
    update_with_retry(mgr, |d| {
        let mut n = d
            .nodes
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("node {id} is not part of the swarm")))?;
        n.state = state;
        n.status_message = message.to_string();
        if let Some(desc) = description {
            let mut desc = desc.clone();
            desc.engine_version = env!("CARGO_PKG_VERSION").into();
            n.description = desc;
        }
        if let Some(r) = role {
            n.role = r;
        }
        n.updated_at_ms = now_ms();
        Ok(Txn::new(vec![Op::Update(Object::Node(n))]))
    })
    .await
    .map(|_| ())
}

pub struct DispatcherService {
    mgr: Arc<Manager>,
}

pub fn service(mgr: Arc<Manager>) -> pb::dispatcher_server::DispatcherServer<DispatcherService> {
    pb::dispatcher_server::DispatcherServer::new(DispatcherService { mgr })
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::SessionMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::dispatcher_server::Dispatcher for DispatcherService {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<SessionStream>, Status> {
        let mgr = self.mgr.clone();
        let Caller::Node(cert) = mgr.auth.node(&req)? else {
            return Err(Status::unauthenticated(
                "a session needs a node certificate",
            ));
        };
        // The session lives as long as this term of leadership: a leader whose lease lapses
        // (cut off from the other managers) ends every session, so that its nodes go to the
        // manager that leads now instead of being marked down there.
        let Some(term) = mgr.leader_token() else {
            return Err(mgr.not_leader());
        };
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("session closed before registering"))?;
        let Some(pb::session_request::Msg::Register(reg)) = first.msg else {
            return Err(Status::invalid_argument(
                "the first session message must be Register",
            ));
        };
        let d = reg.description.unwrap_or_default();
        let (registered_addr, recorded_role) = mgr
            .store
            .view(|s| {
                s.nodes
                    .get(&cert.node_id)
                    .map(|n| (n.description.addr.clone(), n.role))
            })
            .ok_or_else(|| {
                Status::not_found(format!(
                    "node {} is not part of the swarm (was it removed?)",
                    cert.node_id
                ))
            })?;
        let desc = NodeDescription {
            hostname: d.hostname,
            // The address is fixed at join: raft and peers rely on it.
            addr: registered_addr,
            platform: d.platform,
            engine_version: d.engine_version,
            nano_cpus: d.nano_cpus,
            memory_bytes: d.memory_bytes,
        };
        // The certificate the node presents is the role it holds. The store can say otherwise
        // when a renewal was committed but its answer never reached the node (the leader
        // that issued it was deposed mid-call): correct the record, or membership would
        // never take a node that still runs a manager back into raft (nor tell it to renew).
        let role = (recorded_role != cert.role).then_some(cert.role);
        if let Some(r) = role {
            tracing::info!(node = %cert.node_id, recorded = %recorded_role, holds = %r, "node holds another role than recorded");
        }
        set_state(&mgr, &cert.node_id, NodeState::Ready, "", Some(&desc), role).await?;
        let dispatcher = mgr.dispatcher.clone();
        dispatcher.seen(&cert.node_id);
        tracing::debug!(node = %cert.node_id, "session registered");

        let (tx, rx) = mpsc::channel(16);
        let node_id = cert.node_id.clone();
        let mut events = mgr.store.watch();
        let all = mgr.store.view(|d| assignments_for(d, &node_id, &mgr.kek));
        let mut sent = fingerprints(&all);
        let (mut net_sent, mut net_busy) = mgr.store.view(|d| net_json(d, &node_id));
        let mut first = dispatcher.session_message(&mgr, &node_id);
        first.net_json = net_sent.clone();
        first.assignments = Some(pb::Assignments {
            full: true,
            upsert_json: serde_json::to_string(&all.values().collect::<Vec<_>>())
                .unwrap_or_default(),
            removed: Vec::new(),
        });
        drop(all);
        let _ = tx.send(Ok(first)).await;
        let serial = dispatcher.register_session(&node_id, tx.clone());
        tokio::spawn(async move {
            struct EndSession(Arc<Dispatcher>, String, u64);
            impl Drop for EndSession {
                fn drop(&mut self) {
                    self.0.end_session(&self.1, self.2);
                }
            }
            let _end = EndSession(dispatcher.clone(), node_id.clone(), serial);
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    ev = events.recv() => {
                        let net_active = net_busy || mgr.store.view(|d| !d.networks.is_empty());
                        let (relevant, net_changed) = match &ev {
                            Ok(e) => (
                                e.changes.iter().any(|c| match c {
                                    Change::Put(Object::Task(t)) => t.node_id == node_id || sent.contains_key(&t.id),
                                    Change::Deleted { kind: Kind::Task, id } => sent.contains_key(id),
                                    _ => false,
                                }),
                                e.changes.iter().any(|c| net_relevant(c, net_active)),
                            ),
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => (true, true),
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        };
                        let mut m = dispatcher.session_message(&mgr, &node_id);
                        let mut any = false;
                        if relevant {
                            let diff = match &ev {
                                // Only the tasks the event touched can have changed.
                                Ok(e) => mgr.store.view(|d| {
                                    let ids = e.changes.iter().filter_map(|c| match c {
                                        Change::Put(Object::Task(t)) => Some(t.id.as_str()),
                                        Change::Deleted { kind: Kind::Task, id } => Some(id.as_str()),
                                        _ => None,
                                    });
                                    diff_touched(&mut sent, d, &node_id, &mgr.kek, ids)
                                }),
                                Err(_) => {
                                    let now = mgr.store.view(|d| assignments_for(d, &node_id, &mgr.kek));
                                    diff_full(&mut sent, now)
                                }
                            };
                            if let Some(a) = diff {
                                m.assignments = Some(a);
                                any = true;
                            }
                        }
                        if net_changed {
                            let (now, busy) = mgr.store.view(|d| net_json(d, &node_id));
                            net_busy = busy;
                            if now != net_sent {
                                m.net_json = now.clone();
                                net_sent = now;
                                any = true;
                            }
                        }
                        if any && tx.send(Ok(m)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    _ = tx.closed() => return,
                    _ = term.cancelled() => {
                        let _ = tx.send(Err(mgr.not_leader())).await;
                        return;
                    }
                };
                match msg {
                    Ok(Some(pb::SessionRequest {
                        msg: Some(pb::session_request::Msg::Statuses(s)),
                    })) => match serde_json::from_str::<Vec<StatusReport>>(&s.reports_json) {
                        Ok(reports) => {
                            dispatcher.seen(&node_id);
                            dispatcher.queue_reports(&node_id, reports);
                        }
                        Err(e) => {
                            let _ = tx
                                .send(Err(Status::invalid_argument(format!(
                                    "malformed status reports: {e}"
                                ))))
                                .await;
                            return;
                        }
                    },
                    Ok(Some(pb::SessionRequest {
                        msg: Some(pb::session_request::Msg::Heartbeat(_)),
                    })) => {
                        if !mgr.is_leader() {
                            let _ = tx.send(Err(mgr.not_leader())).await;
                            return;
                        }
                        if let Err(e) = dispatcher.heartbeat(&mgr, &node_id).await {
                            if e.code() == tonic::Code::NotFound {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                        if tx
                            .send(Ok(dispatcher.session_message(&mgr, &node_id)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(Some(pb::SessionRequest {
                        msg: Some(pb::session_request::Msg::Logs(chunk)),
                    })) => dispatcher.deliver_logs(&node_id, chunk),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lowering the heartbeat period from 30 s to 1 s, with nodes that heartbeat on the old
    /// period: none is down until the old period (plus the new limit) has passed.
    #[test]
    fn a_lowered_heartbeat_period_applies_after_a_grace_of_the_old_one() {
        let t0 = Instant::now();
        let old = Duration::from_secs(30);
        let new = Duration::from_secs(1);
        let mut seen: HashMap<String, Instant> = HashMap::new();
        // Seen 20 s before the change, well within the old limit (90 s).
        seen.insert("a".into(), t0);
        seen.insert("b".into(), t0 + Duration::from_secs(15));
        let change = t0 + Duration::from_secs(20);
        let ids = ["a", "b"];
        assert!(expired_nodes(&mut seen, ids.into_iter(), old, change).is_empty());
        period_changed(&mut seen, old, new, change);
        for after in [0u64, 1, 10, 29, 32] {
            let now = change + Duration::from_secs(after);
            assert!(
                expired_nodes(&mut seen, ids.into_iter(), new, now).is_empty(),
                "{after}s after the change"
            );
        }
        // A node that heartbeats on the new period stays up; one that stopped is down once
        // the grace and the new limit have passed.
        seen.insert("b".into(), change + Duration::from_secs(33));
        let now = change + Duration::from_secs(34);
        assert_eq!(
            expired_nodes(&mut seen, ids.into_iter(), new, now),
            vec!["a"]
        );
        // Raising the period needs no grace: the limit only grows.
        let mut seen2: HashMap<String, Instant> = HashMap::new();
        seen2.insert("a".into(), t0);
        period_changed(&mut seen2, new, old, t0);
        assert_eq!(seen2["a"], t0);
    }
    use crate::allocator::tests::{data_with_networks, port, service};
    use crate::allocator::{allocate_endpoint, node_ingress_ops, task_networks};
    use crate::store::tests::node;

    fn task(
        d: &StoreData,
        id: &str,
        svc: &crate::store::Service,
        node: &str,
        state: TaskState,
    ) -> Task {
        let mut taken = BTreeSet::new();
        Task {
            id: id.into(),
            version: 0,
            service_id: svc.id.clone(),
            service_name: svc.spec.name.clone(),
            slot: 1,
            node_id: node.into(),
            spec: Arc::new(svc.spec.task.clone()),
            spec_version: 1,
            desired_state: TaskState::Running,
            status: TaskStatus {
                state,
                ..Default::default()
            },
            created_at_ms: 0,
            restart_count: 0,
            networks: task_networks(d, &svc.spec, id, &mut taken).unwrap(),
            awaiting_addresses: false,
        }
    }

    #[test]
    fn net_state_lists_peers_services_and_backends() {
        let mut d = data_with_networks();
        let mut ops = Vec::new();
        for (i, (id, state)) in [
            ("n1", NodeState::Ready),
            ("n2", NodeState::Ready),
            ("n3", NodeState::Down),
        ]
        .into_iter()
        .enumerate()
        {
            let mut n = node(id, id);
            n.state = state;
            n.description.addr = format!("192.168.1.{}:4242", i + 1);
            ops.push(Op::Create(Object::Node(n)));
        }
        d.apply_txn(3, &Txn::new(ops)).unwrap();
        d.apply_txn(4, &Txn::new(node_ingress_ops(&d, &mut BTreeSet::new())))
            .unwrap();
        let mut web = service("web", &["net1"], vec![port(8080, 80)]);
        web.endpoint = allocate_endpoint(&d, "web", &web.spec, &Default::default()).unwrap();
        let other = service("other", &[], vec![]);
        d.apply_txn(
            5,
            &Txn::new(vec![
                Op::Create(Object::Service(web.clone())),
                Op::Create(Object::Service(other)),
            ]),
        )
        .unwrap();
        // One at a time, so each sees the addresses of the ones before.
        for (i, (id, n, st)) in [
            ("t1", "n1", TaskState::Running),
            ("t2", "n2", TaskState::Running),
            ("t3", "n3", TaskState::Running),
            ("t4", "n2", TaskState::Failed),
            ("t5", "n2", TaskState::Starting),
        ]
        .into_iter()
        .enumerate()
        {
            let t = task(&d, id, &web, n, st);
            d.apply_txn(6 + i as u64, &Txn::new(vec![Op::Create(Object::Task(t))]))
                .unwrap();
        }
        let st = node_net_state(&d, "n1");
        assert_eq!(st.node_ip, Some(Ipv4Addr::new(192, 168, 1, 1)));
        assert_eq!(st.ingress_addr, d.nodes["n1"].ingress_addr);
        let ids: Vec<&str> = st.networks.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, vec!["ing", "net1"]);
        let addr_of = |t: &str, net: &str| {
            d.tasks[t]
                .networks
                .iter()
                .find(|n| n.network_id == net)
                .unwrap()
                .addr
        };
        let n2 = Ipv4Addr::new(192, 168, 1, 2);
        let n3 = Ipv4Addr::new(192, 168, 1, 3);
        let mut want = vec![
            NetPeer {
                addr: addr_of("t2", "net1"),
                node_ip: n2,
            },
            NetPeer {
                addr: addr_of("t3", "net1"),
                node_ip: n3,
            },
            NetPeer {
                addr: addr_of("t5", "net1"),
                node_ip: n2,
            },
        ];
        want.sort();
        assert_eq!(st.networks[1].peers, want);
        // On ingress: the other nodes' tasks and sandboxes, never our own.
        let ing = &st.networks[0].peers;
        assert_eq!(ing.len(), 5);
        assert!(ing.contains(&NetPeer {
            addr: d.nodes["n2"].ingress_addr.unwrap(),
            node_ip: n2
        }));
        assert!(!ing
            .iter()
            .any(|p| p.addr == d.nodes["n1"].ingress_addr.unwrap()));
        assert!(!ing.iter().any(|p| p.addr == addr_of("t1", "ing")));
        // Services: web only; backends: running tasks on ready nodes.
        assert_eq!(st.services.len(), 1);
        let s = &st.services[0];
        assert_eq!(s.name, "web");
        assert_eq!(s.ports[0].published_port, 8080);
        assert_eq!(s.networks.len(), 2);
        assert_eq!(s.networks[0].vip, web.endpoint.vips.get("ing").copied());
        assert_eq!(s.networks[1].aliases, vec!["web-alias".to_string()]);
        let b: Vec<&str> = s.backends.iter().map(|b| b.task_id.as_str()).collect();
        assert_eq!(b, vec!["t1", "t2"]);
        assert_eq!(s.backends[0].addrs.len(), 2);
        // A node with no tasks still gets ingress and the published services.
        let mut lone = node("n4", "n4");
        lone.description.addr = "192.168.1.4:4242".into();
        d.apply_txn(20, &Txn::new(vec![Op::Create(Object::Node(lone))]))
            .unwrap();
        let st = node_net_state(&d, "n4");
        assert_eq!(st.networks.len(), 1);
        assert!(st.networks[0].ingress);
        assert_eq!(st.services.len(), 1);
    }

    #[test]
    fn assignments_carry_task_networks() {
        let mut d = data_with_networks();
        d.apply_txn(
            3,
            &Txn::new(vec![Op::Create(Object::Node(node("n1", "h")))]),
        )
        .unwrap();
        let web = service("web", &["net1"], vec![]);
        let t = task(&d, "t1", &web, "n1", TaskState::Assigned);
        d.apply_txn(4, &Txn::new(vec![Op::Create(Object::Task(t.clone()))]))
            .unwrap();
        let a = assignments_for(&d, "n1", &crate::keys::Kek::generate().unwrap());
        assert_eq!(a["t1"].networks, t.networks);
        assert_eq!(a["t1"].networks.len(), 1);
    }

    #[test]
    fn touched_tasks_diff_as_the_full_recomputation_does() {
        let mut d = data_with_networks();
        for n in ["n1", "n2"] {
            d.apply_txn(3, &Txn::new(vec![Op::Create(Object::Node(node(n, n)))]))
                .unwrap();
        }
        let web = service("web", &["net1"], vec![]);
        let mut index = 10;
        let mut put = |d: &mut StoreData, t: Task| {
            index += 1;
            let op = if d.tasks.contains_key(&t.id) {
                let mut t = t;
                t.version = d.tasks[&t.id].version;
                Op::Update(Object::Task(t))
            } else {
                Op::Create(Object::Task(t))
            };
            d.apply_txn(index, &Txn::new(vec![op])).unwrap();
        };
        for (id, node, state) in [
            ("t1", "n1", TaskState::Assigned),
            ("t2", "n1", TaskState::Running),
            ("t3", "n2", TaskState::Assigned),
        ] {
            let t = task(&d, id, &web, node, state);
            put(&mut d, t);
        }
        let kek = crate::keys::Kek::generate().unwrap();
        let mut sent = Sent::new();
        let first = diff_touched(&mut sent, &d, "n1", &kek, ["t1", "t2", "t3"]).unwrap();
        assert_eq!(sent, fingerprints(&assignments_for(&d, "n1", &kek)));
        assert_eq!(first.removed, Vec::<String>::new());
        // t1 told to stop, t2 ended and no longer wanted: one upsert, one removal.
        let mut t1s = d.tasks["t1"].clone();
        t1s.desired_state = TaskState::Shutdown;
        put(&mut d, t1s);
        let mut t2s = d.tasks["t2"].clone();
        t2s.desired_state = TaskState::Shutdown;
        t2s.status.state = TaskState::Shutdown;
        put(&mut d, t2s);
        let mut before = sent.clone();
        let full = diff_full(&mut before, assignments_for(&d, "n1", &kek)).unwrap();
        let inc = diff_touched(&mut sent, &d, "n1", &kek, ["t1", "t2", "t3"]).unwrap();
        assert_eq!(sent, fingerprints(&assignments_for(&d, "n1", &kek)));
        assert_eq!(sent, before);
        assert_eq!(inc.removed, full.removed);
        assert_eq!(inc.upsert_json, full.upsert_json);
        assert!(diff_touched(&mut sent, &d, "n1", &kek, ["t1", "t3"]).is_none());
    }
}
