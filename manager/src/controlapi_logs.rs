//! `service logs`: gathers the log lines of a service's tasks from the nodes that run them.
//!
//! ```text
//!   CLI ─ServiceLogs─▶ any manager ─forward─▶ leader ─LogRequest (session)─▶ node A, node B…
//!                                              ◀─LogChunk (session)────────┘
//! ```
//!
//! A node that is down, holds no session, or loses its session while answering is reported
//! with a warning message on the stream; the call never waits on it.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::time::Duration;

use proto::pb;
use proto::spec::TaskState;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

use crate::controlapi::ControlApi;
use crate::controlapi_services::find_service;
use crate::dispatcher::LOG_QUEUE;
use crate::error::ApiError;
use crate::store::{NodeState, StoreData, Task};

pub type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogMessage, Status>> + Send>>;

/// How often the leader checks that the nodes it waits on still hold their sessions.
const LIVENESS_CHECK: Duration = Duration::from_millis(250);

struct TaskInfo {
    slot: u64,
    service_name: String,
    node_id: String,
}

struct NodeInfo {
    hostname: String,
    down: bool,
    tasks: Vec<String>,
}

/// Tasks by id, and the nodes that hold them.
type Resolved = (HashMap<String, TaskInfo>, BTreeMap<String, NodeInfo>);

/// The tasks `target` names (a service by id, name or prefix; else a task by id or prefix),
/// grouped by node. Tasks never placed are left out.
fn resolve(d: &StoreData, target: &str) -> Result<Resolved, Status> {
    let tasks: Vec<&Task> = match find_service(d, target) {
        Ok(s) => d.service_tasks(&s.id).collect(),
        Err(e) if e.code() == tonic::Code::NotFound => {
            let by_prefix: Vec<&Task> = d
                .tasks
                .values()
                .filter(|t| !target.is_empty() && t.id.starts_with(target))
                .collect();
            match by_prefix.len() {
                0 => {
                    return Err(ApiError::NotFound {
                        kind: "service or task",
                        name: target.to_string(),
                    }
                    .into())
                }
                1 => by_prefix,
                _ => {
                    return Err(ApiError::Ambiguous {
                        kind: "task",
                        name: target.to_string(),
                        hint: ": use more of its id",
                    }
                    .into())
                }
            }
        }
        Err(e) => return Err(e),
    };
    let mut infos = HashMap::new();
    let mut nodes: BTreeMap<String, NodeInfo> = BTreeMap::new();
    for t in tasks {
        if t.node_id.is_empty() || t.status.state < TaskState::Assigned {
            continue;
        }
        let n = d.nodes.get(&t.node_id);
        nodes
            .entry(t.node_id.clone())
            .or_insert_with(|| NodeInfo {
                hostname: n
                    .map(|n| n.description.hostname.clone())
                    .unwrap_or_else(|| t.node_id.clone()),
                down: n.is_none_or(|n| n.state == NodeState::Down),
                tasks: Vec::new(),
            })
            .tasks
            .push(t.id.clone());
        infos.insert(
            t.id.clone(),
            TaskInfo {
                slot: t.slot,
                service_name: t.service_name.clone(),
                node_id: t.node_id.clone(),
            },
        );
    }
    Ok((infos, nodes))
}

fn warning(node_id: &str, hostname: &str, what: &str) -> pb::LogMessage {
    pb::LogMessage {
        node_id: node_id.into(),
        node_hostname: hostname.into(),
        warning: format!("node {hostname} {what}: the logs of its tasks are not available"),
        ..Default::default()
    }
}

impl ControlApi {
    pub async fn service_logs(&self, req: pb::ServiceLogsRequest) -> Result<LogStream, Status> {
        self.mgr.linearizable().await?;
        let (mut infos, mut nodes) = self.mgr.store.view(|d| resolve(d, &req.target))?;
        let mgr = self.mgr.clone();
        let (out, rx) = mpsc::channel::<Result<pb::LogMessage, Status>>(256);
        tokio::spawn(async move {
            let dispatcher = mgr.dispatcher.clone();
            let (sink, mut chunks) = mpsc::channel(LOG_QUEUE);
            // Subscription id → (node id, session serial).
            let mut pending: HashMap<u64, (String, u64)> = HashMap::new();
            for (node_id, n) in &nodes {
                if n.down {
                    let _ = out.send(Ok(warning(node_id, &n.hostname, "is down"))).await;
                    continue;
                }
                let request = pb::LogRequest {
                    subscription: 0,
                    task_ids: n.tasks.clone(),
                    follow: req.follow,
                    tail: req.tail,
                    cancel: false,
                };
                match dispatcher
                    .subscribe_logs(&mgr, node_id, request, sink.clone())
                    .await
                {
                    Some((id, serial)) => {
                        pending.insert(id, (node_id.clone(), serial));
                    }
                    None => {
                        let w = warning(node_id, &n.hostname, "is not connected");
                        let _ = out.send(Ok(w)).await;
                    }
                }
            }
            // Following, tasks that start later (a scale-up, an update) are followed too:
            // the sink stays open for them.
            let sink = req.follow.then_some(sink);
            let mut tick = tokio::time::interval(LIVENESS_CHECK);
            while !pending.is_empty() || sink.is_some() {
                tokio::select! {
                    _ = out.closed() => break,
                    c = chunks.recv() => {
                        let Some((id, chunk)) = c else { break };
                        let Some((node_id, _)) = pending.get(&id).cloned() else { continue };
                        let hostname = nodes.get(&node_id).map(|n| n.hostname.clone()).unwrap_or_default();
                        for e in chunk.entries {
                            let Some(t) = infos.get(&e.task_id).filter(|t| t.node_id == node_id) else {
                                continue;
                            };
                            let m = pb::LogMessage {
                                task_id: e.task_id,
                                node_id: node_id.clone(),
                                slot: t.slot,
                                stream: e.stream,
                                timestamp: e.timestamp,
                                line: e.line,
                                service_name: t.service_name.clone(),
                                node_hostname: hostname.clone(),
                                warning: String::new(),
                            };
                            if out.send(Ok(m)).await.is_err() {
                                break;
                            }
                        }
                        if !chunk.error.is_empty() {
                            let m = pb::LogMessage {
                                node_id: node_id.clone(),
                                node_hostname: hostname.clone(),
                                warning: format!("node {hostname}: {}", chunk.error),
                                ..Default::default()
                            };
                            let _ = out.send(Ok(m)).await;
                        }
                        if chunk.done {
                            pending.remove(&id);
                            dispatcher.unsubscribe_logs(&mgr, id, false).await;
                        }
                    }
                    _ = tick.tick() => {
                        if let Some(sink) = &sink {
                            let Ok((now, now_nodes)) = mgr.store.view(|d| resolve(d, &req.target)) else {
                                // The service is gone: nothing more will start.
                                break;
                            };
                            for (node_id, n) in now_nodes {
                                let fresh: Vec<String> =
                                    n.tasks.iter().filter(|t| !infos.contains_key(*t)).cloned().collect();
                                if fresh.is_empty() || n.down {
                                    continue;
                                }
                                let request = pb::LogRequest {
                                    subscription: 0,
                                    task_ids: fresh.clone(),
                                    follow: true,
                                    tail: req.tail,
                                    cancel: false,
                                };
                                if let Some((id, serial)) =
                                    dispatcher.subscribe_logs(&mgr, &node_id, request, sink.clone()).await
                                {
                                    pending.insert(id, (node_id.clone(), serial));
                                    for t in fresh {
                                        if let Some(info) = now.get(&t) {
                                            infos.insert(t, TaskInfo {
                                                slot: info.slot,
                                                service_name: info.service_name.clone(),
                                                node_id: info.node_id.clone(),
                                            });
                                        }
                                    }
                                    nodes.entry(node_id).or_insert(n);
                                }
                            }
                        }
                        let lost: Vec<u64> = pending
                            .iter()
                            .filter(|(_, (node, serial))| {
                                dispatcher.session_serial(node) != Some(*serial)
                                    || mgr.store.view(|d| {
                                        d.nodes.get(node).is_none_or(|n| n.state == NodeState::Down)
                                    })
                            })
                            .map(|(id, _)| *id)
                            .collect();
                        for id in lost {
                            if let Some((node_id, _)) = pending.remove(&id) {
                                dispatcher.unsubscribe_logs(&mgr, id, false).await;
                                let hostname = nodes.get(&node_id).map(|n| n.hostname.clone()).unwrap_or_default();
                                let _ = out.send(Ok(warning(&node_id, &hostname, "went away"))).await;
                            }
                        }
                    }
                }
            }
            // The client went away (or everything is done): stop what is still running.
            for id in pending.into_keys() {
                dispatcher.unsubscribe_logs(&mgr, id, true).await;
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
