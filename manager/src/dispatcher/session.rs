//! The session stream of one node: registration, then what the node is sent on store
//! changes and heartbeats, and what it sends back.

use std::pin::Pin;
use std::sync::Arc;

use proto::pb;
use proto::security::Role;
use proto::spec::StatusReport;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::liveness::StateError;
use super::{Dispatcher, LeaderView, NodeAssignments, NodeNet};
use crate::auth::{Authorizer, Caller};
use crate::keys::Kek;
use crate::store::{
    Change, Kind, NodeDescription, NodeState, Object, ProposeError, TxnError, UpdateError,
};

impl Dispatcher {
    pub(super) fn session_message(
        &self,
        leader: &dyn LeaderView,
        node_id: &str,
    ) -> pb::SessionMessage {
        let (desired_role, raft_id, cert_expiry_ms) = self.store.view(|d| {
            let (role, raft_id) = d
                .nodes
                .get(node_id)
                .map(|n| (n.desired_role, n.raft_id))
                .unwrap_or((Role::Worker, 0));
            (
                role,
                raft_id,
                d.cluster.as_ref().map(|c| c.cert_expiry_ms).unwrap_or(0),
            )
        });
        pb::SessionMessage {
            heartbeat_period_ms: self.liveness.period().as_millis() as u64,
            managers: leader.manager_addrs(),
            leader_addr: leader.leader_addr().unwrap_or_default(),
            desired_role: desired_role.as_str().into(),
            raft_id,
            cert_expiry_ms,
            assignments: None,
            log_request: None,
            network: None,
            forgotten: Vec::new(),
        }
    }

    /// The network update of a session, built with the shared cache.
    fn net_update(
        &self,
        net: &mut NodeNet,
        index: Option<u64>,
        node_id: &str,
    ) -> Option<pb::NetworkUpdate> {
        self.store.view(|d| {
            let mut cache = self.net_cache.lock().expect("dispatcher lock");
            net.update(d, &mut cache, index, node_id)
        })
    }
}

/// The status reports of a message; a report that cannot be read is left out (logged), the
/// others are kept.
fn reports(node_id: &str, s: pb::TaskStatuses) -> Vec<StatusReport> {
    s.reports
        .into_iter()
        .filter_map(|r| match StatusReport::try_from(r) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!(node = %node_id, error = %e, "status report skipped");
                None
            }
        })
        .collect()
}

/// A node state write that failed, as the answer to the node.
fn state_refused(leader: &dyn LeaderView, e: StateError) -> Status {
    match e {
        UpdateError::Build(removed) => Status::not_found(removed.to_string()),
        UpdateError::Propose(e) => leader.write_refused(e),
        UpdateError::Contended => Status::aborted(e.to_string()),
    }
}

/// The node is gone from the store: its session ends.
fn removed(e: &StateError) -> bool {
    matches!(
        e,
        UpdateError::Build(_)
            | UpdateError::Propose(ProposeError::Refused(TxnError::NotFound { .. }))
    )
}

/// Ends a session's registrations with the dispatcher when dropped.
struct EndSession(Arc<Dispatcher>, String, u64);

impl Drop for EndSession {
    fn drop(&mut self) {
        self.0.end_session(&self.1, self.2);
    }
}

pub struct DispatcherService {
    dispatcher: Arc<Dispatcher>,
    auth: Authorizer,
    kek: Kek,
    leader: Arc<dyn LeaderView>,
}

pub fn service(
    dispatcher: Arc<Dispatcher>,
    auth: Authorizer,
    kek: Kek,
    leader: Arc<dyn LeaderView>,
) -> pb::dispatcher_server::DispatcherServer<DispatcherService> {
    pb::dispatcher_server::DispatcherServer::new(DispatcherService {
        dispatcher,
        auth,
        kek,
        leader,
    })
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::SessionMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::dispatcher_server::Dispatcher for DispatcherService {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<SessionStream>, Status> {
        let leader = self.leader.clone();
        let dispatcher = self.dispatcher.clone();
        let kek = self.kek.clone();
        let store = dispatcher.store.clone();
        let Caller::Node(cert) = self.auth.node(&req)? else {
            return Err(Status::unauthenticated(
                "a session needs a node certificate",
            ));
        };
        // The session lives as long as this term of leadership: a leader whose lease lapses
        // for longer than a moment (cut off from the other managers) ends every session, so
        // that its nodes go to the manager that leads now instead of being marked down there.
        let Some(term) = leader.leader_token() else {
            return Err(leader.write_refused(ProposeError::NotLeader));
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
        let (registered_addr, recorded_role) = store
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
        dispatcher
            .liveness
            .set_state(&cert.node_id, NodeState::Ready, "", Some(&desc), role)
            .await
            .map_err(|e| state_refused(&*leader, e))?;
        dispatcher.liveness.seen(&cert.node_id);
        tracing::debug!(node = %cert.node_id, "session registered");

        let (tx, rx) = mpsc::channel(16);
        let node_id = cert.node_id.clone();
        // Subscribed before the full read below: no change after it is missed.
        let serial = dispatcher.next_serial();
        let mut events = dispatcher.feeds.subscribe(&node_id, serial, &store);
        // Ends the session's registrations however this call ends (the client may go away
        // before the session task starts).
        let end = EndSession(dispatcher.clone(), node_id.clone(), serial);
        let mut asg = NodeAssignments::default();
        let mut net = NodeNet::default();
        let mut first = dispatcher.session_message(&*leader, &node_id);
        let full = store.view(|d| asg.full(d, &node_id, &kek));
        let mut rest = asg.chunks(full).into_iter();
        first.assignments = rest.next();
        first.network = dispatcher.net_update(&mut net, None, &node_id);
        events.set_net_busy(net.busy());
        dispatcher.send(&tx, first).await;
        for part in rest {
            let mut m = dispatcher.session_message(&*leader, &node_id);
            m.assignments = Some(part);
            dispatcher.send(&tx, m).await;
        }
        dispatcher.register_session(&node_id, serial, tx.clone());
        tokio::spawn(async move {
            let _end = end;
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    ev = events.recv() => {
                        // The event's index says what concerns this node: a lookup, not a
                        // scan of every change by every session.
                        let (tasks, files, net_changed) = match &ev {
                            Ok(e) => {
                                let t = &e.touched;
                                let net_active = net.busy() || t.networks();
                                let net_kinds = t.has(Kind::Network)
                                    || t.has(Kind::Service)
                                    || t.has(Kind::Node)
                                    || t.task_networks()
                                    || (net_active && t.has(Kind::Task));
                                (
                                    !t.node_tasks(&node_id).is_empty(),
                                    t.has(Kind::Secret) || t.has(Kind::Config),
                                    net_kinds
                                        && e.changes.iter().any(|c| super::net_relevant(c, net_active)),
                                )
                            }
                            Err(RecvError::Lagged(_)) => (true, true, true),
                            Err(RecvError::Closed) => return,
                        };
                        if !(tasks || files || net_changed) {
                            continue;
                        }
                        let mut m = dispatcher.session_message(&*leader, &node_id);
                        let mut more = Vec::new();
                        if tasks || files {
                            let update = match &ev {
                                // Only the tasks the event touched on this node can have changed.
                                Ok(e) => store.view(|d| {
                                    let ids = e.touched.node_tasks(&node_id).iter().filter_map(|&i| {
                                        match e.changes.get(i)? {
                                            Change::Put(Object::Task(t)) => Some(t.id.as_str()),
                                            Change::Deleted { kind: Kind::Task, id } => Some(id.as_str()),
                                            _ => None,
                                        }
                                    });
                                    asg.touched(d, &node_id, &kek, ids, files)
                                }),
                                Err(_) => store.view(|d| asg.diff_full(d, &node_id, &kek)),
                            };
                            if let Some(update) = update {
                                let mut parts = asg.chunks(update).into_iter();
                                m.assignments = parts.next();
                                more.extend(parts);
                            }
                        }
                        // Tasks of this node gone from the store (the history limit, a
                        // removed service): the node drops their kept logs.
                        if let Ok(e) = &ev {
                            m.forgotten = e
                                .touched
                                .node_tasks(&node_id)
                                .iter()
                                .filter_map(|&i| match e.changes.get(i)? {
                                    Change::Deleted { kind: Kind::Task, id } => Some(id.clone()),
                                    _ => None,
                                })
                                .collect();
                        }
                        if net_changed {
                            let index = ev.as_ref().ok().map(|e| e.index);
                            m.network = dispatcher.net_update(&mut net, index, &node_id);
                            events.set_net_busy(net.busy());
                        }
                        if (m.assignments.is_some() || m.network.is_some() || !m.forgotten.is_empty())
                            && !dispatcher.send(&tx, m).await
                        {
                            return;
                        }
                        for part in more {
                            let mut m = dispatcher.session_message(&*leader, &node_id);
                            m.assignments = Some(part);
                            if !dispatcher.send(&tx, m).await {
                                return;
                            }
                        }
                        continue;
                    }
                    _ = tx.closed() => return,
                    _ = term.cancelled() => {
                        let _ = tx.send(Err(leader.write_refused(ProposeError::NotLeader))).await;
                        return;
                    }
                };
                match msg {
                    Ok(Some(pb::SessionRequest {
                        msg: Some(pb::session_request::Msg::Statuses(s)),
                    })) => {
                        dispatcher.liveness.seen(&node_id);
                        dispatcher.statuses.queue(&node_id, reports(&node_id, s));
                    }
                    Ok(Some(pb::SessionRequest {
                        msg: Some(pb::session_request::Msg::Resync(r)),
                    })) => {
                        tracing::debug!(
                            node = %node_id,
                            have = r.have_version,
                            sent = asg.version(),
                            "node asks for its full assignments"
                        );
                        let full = store.view(|d| asg.full(d, &node_id, &kek));
                        for part in asg.chunks(full) {
                            let mut m = dispatcher.session_message(&*leader, &node_id);
                            m.assignments = Some(part);
                            if !dispatcher.send(&tx, m).await {
                                return;
                            }
                        }
                    }
                    Ok(Some(pb::SessionRequest {
                        msg: Some(pb::session_request::Msg::Heartbeat(_)),
                    })) => {
                        // While the lease has lapsed (within the term) the node is seen and
                        // answered; a write this needs is refused and made by a later one.
                        if let Err(e) = dispatcher.liveness.heartbeat(&node_id).await {
                            if removed(&e) {
                                let _ = tx.send(Err(state_refused(&*leader, e))).await;
                                return;
                            }
                        }
                        let m = dispatcher.session_message(&*leader, &node_id);
                        if !dispatcher.send(&tx, m).await {
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
