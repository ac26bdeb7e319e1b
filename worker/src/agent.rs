//! The agent's session loop.
//!
//! ```text
//!   loop: pick a manager (the leader if known) ─▶ Dispatcher.Session
//!           send Register, then Heartbeat every period
//!           on each SessionMessage: period, managers, leader, desired role
//!             assignments: full, or an increment on top of the version held ─▶ executor
//!               (an increment that does not follow ─▶ Resync: the manager sends them all)
//!             network update ─▶ NetAssembler ─▶ AgentEvent::Network
//!             role differs from certificate, or certificate past half-life ─▶ Ca.Renew
//!         on error: follow the leader hint, back off (100 ms … 1 s), try the next manager
//! ```
//!
//! Sessions established and lost are logged at info level, failed attempts at debug.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proto::convert::{fill_files, FileKey, NetAssembler};
use proto::pb;
use proto::pb::ca_client::CaClient;
use proto::pb::dispatcher_client::DispatcherClient;
use proto::security::{new_key_and_csr, Role};
use proto::spec::{Assignment, StatusReport};
use proto::transport::{client_config, tls_channel, Credentials, Identity};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

use proto::transport::LEADER_METADATA;

/// How long a manager address is still tried after the managers stopped listing it. The list
/// a manager sends reflects raft membership at that moment; during a run of promotions and
/// demotions it can briefly leave out a manager that becomes the leader a moment later, and
/// an agent that had forgotten it could find no leader at all.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Longest wait between two session attempts. A new leader counts every node as alive for
/// a few seconds only; an agent must find it well within that.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A certificate renewal that has no answer by then is given up and the session restarted
/// (the manager that took it may have been deposed mid-call and never answer).
const RENEW_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub hostname: String,
    pub platform: String,
    pub managers: Vec<String>,
    /// Heartbeat period to use until the manager says otherwise.
    pub initial_period: Duration,
    /// Capacity offered for reservations.
    pub nano_cpus: u64,
    pub memory_bytes: u64,
}

/// What the agent tells the node it runs in.
#[derive(Clone, Debug)]
pub enum AgentEvent {
    /// The set of manager addresses changed (persist it for restarts).
    Managers(Vec<String>),
    /// A new certificate was issued (renewal, promotion or demotion); `creds` already has it.
    Certificate { identity: Identity, role: Role },
    /// The managers no longer know this node.
    Removed,
    /// What the node's overlay datapath, DNS and load balancers must hold now.
    Network(Box<proto::spec::NodeNetState>),
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Transport(#[from] proto::transport::TransportError),
    #[error("no session message within {0:?}")]
    Silent(Duration),
    #[error("no answer to the certificate renewal within {0:?}")]
    RenewTimeout(Duration),
    #[error("no certificate")]
    NoIdentity,
    #[error("certificate: {0}")]
    Security(#[from] proto::security::SecurityError),
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct Agent {
    config: AgentConfig,
    executor: Arc<crate::executor::Executor>,
    reports: mpsc::Receiver<StatusReport>,
    creds: Arc<Credentials>,
    events: mpsc::Sender<AgentEvent>,
    /// Manager addresses and when a manager last listed them.
    managers: BTreeMap<String, tokio::time::Instant>,
    leader_hint: Option<String>,
    next: usize,
    /// The heartbeat period; the heartbeat task follows changes at once.
    period: watch::Sender<Duration>,
    /// Where the assignments of this session stand.
    chain: Chain,
}

/// How long a status report waits for the ones that follow it, to go in one message.
const STATUS_GATHER: Duration = Duration::from_millis(5);

fn statuses_message(reports: &[StatusReport]) -> pb::SessionRequest {
    pb::SessionRequest {
        msg: Some(pb::session_request::Msg::Statuses(pb::TaskStatuses {
            reports: reports.iter().map(Into::into).collect(),
        })),
    }
}

/// What to do with an assignments message.
#[derive(Debug, PartialEq)]
enum Step {
    /// Hand these to the executor (`full`: they replace everything).
    Apply {
        full: bool,
        upsert: Vec<Assignment>,
        removed: Vec<String>,
    },
    /// The increment does not follow on the version held (one was missed): ask for the full
    /// set, saying what is held.
    Resync(u64),
    /// A full set was asked for: ignore increments until it comes.
    Wait,
}

/// The assignments chain as the node holds it: the version it applied last, and the data of
/// the secrets and configs its tasks name (sent once per node, kept in memory only).
#[derive(Debug, Default)]
struct Chain {
    /// None: nothing yet, or a resync was asked for.
    version: Option<u64>,
    asked: bool,
    files: BTreeMap<FileKey, Vec<u8>>,
    /// The parts received so far of a change sent in several (`more`): applied together
    /// with the last one.
    pending: Option<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    full: bool,
    upsert: Vec<Assignment>,
    removed: Vec<String>,
}

impl Chain {
    fn step(&mut self, a: pb::Assignments) -> Step {
        if a.full {
            self.files.clear();
            self.asked = false;
            self.pending = None;
        } else if self.version != Some(a.base_version) {
            self.pending = None;
            let have = self.version.take().unwrap_or(0);
            if self.asked {
                return Step::Wait;
            }
            tracing::info!(
                have,
                base = a.base_version,
                "assignments increment does not follow on the version held: asking for all"
            );
            self.asked = true;
            return Step::Resync(have);
        }
        self.version = Some(a.version);
        for f in a.files {
            match f.key.map(FileKey::try_from) {
                Some(Ok(k)) => {
                    self.files.insert(k, f.data);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "secret or config skipped"),
                None => tracing::warn!("secret or config without a key skipped"),
            }
        }
        let upsert = a
            .upsert
            .into_iter()
            .filter_map(|w| {
                let id = w.task_id.clone();
                match Assignment::try_from(w) {
                    Ok(mut a) => {
                        fill_files(&mut a, &self.files);
                        Some(a)
                    }
                    Err(e) => {
                        tracing::warn!(task = %id, error = %e, "assignment skipped");
                        None
                    }
                }
            })
            .collect();
        for k in a.removed_files {
            if let Ok(k) = FileKey::try_from(k) {
                self.files.remove(&k);
            }
        }
        let mut removed = a.removed;
        if a.more || self.pending.is_some() {
            let p = self.pending.get_or_insert_with(|| Pending {
                full: a.full,
                ..Pending::default()
            });
            p.upsert.extend(upsert);
            p.removed.append(&mut removed);
            if a.more {
                return Step::Wait;
            }
            let p = self.pending.take().unwrap_or_default();
            return Step::Apply {
                full: p.full,
                upsert: p.upsert,
                removed: p.removed,
            };
        }
        Step::Apply {
            full: a.full,
            upsert,
            removed,
        }
    }
}

impl Agent {
    /// `executor` runs the tasks; `reports` is the receiving end of the channel it reports on.
    pub fn new(
        config: AgentConfig,
        creds: Arc<Credentials>,
        events: mpsc::Sender<AgentEvent>,
        executor: Arc<crate::executor::Executor>,
        reports: mpsc::Receiver<proto::spec::StatusReport>,
    ) -> Agent {
        Agent {
            executor,
            reports,
            managers: config
                .managers
                .iter()
                .map(|m| (m.clone(), tokio::time::Instant::now()))
                .collect(),
            period: watch::Sender::new(config.initial_period),
            config,
            creds,
            events,
            leader_hint: None,
            next: 0,
            chain: Chain::default(),
        }
    }

    fn pick(&mut self) -> Option<String> {
        if let Some(l) = self.leader_hint.take() {
            return Some(l);
        }
        if self.managers.is_empty() {
            return None;
        }
        self.next = (self.next + 1) % self.managers.len();
        self.managers.keys().nth(self.next).cloned()
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        // Attempts that failed in a row since the last session: the next manager is tried at
        // once until every known one has failed, and only then after the backoff. A node that
        // a partition cut off from the leader finds it again as soon as the partition heals,
        // rather than a backoff later (meanwhile its old tasks may run beside their
        // replacements).
        let mut failed_in_row = 0usize;
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let Some(addr) = self.pick() else {
                tracing::warn!("no manager address known");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            };
            let mut established = None;
            let res = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.session(&addr, &mut established) => r,
            };
            let ended = match &res {
                Ok(()) => "the manager closed the session".to_string(),
                Err(e) => e.to_string(),
            };
            match established {
                Some(since) => {
                    let after = humantime::format_duration(Duration::from_millis(
                        since.elapsed().as_millis() as u64,
                    ));
                    tracing::info!(%addr, %after, error = %ended, "session lost")
                }
                None => tracing::debug!(%addr, error = %ended, "session attempt failed"),
            }
            match res {
                Ok(()) => {}
                // Not found: the node is gone from the store; permission denied: its
                // certificate is refused (the node was removed, or it belongs to another
                // cluster). Neither heals by retrying: the node must leave and join again.
                Err(SessionError::Status(s))
                    if matches!(s.code(), Code::NotFound | Code::PermissionDenied) =>
                {
                    tracing::warn!(error = %s.message(), "the swarm no longer knows this node");
                    let _ = self.events.send(AgentEvent::Removed).await;
                    return;
                }
                Err(SessionError::Status(s)) => {
                    if let Some(l) = s.metadata().get(LEADER_METADATA) {
                        if let Ok(l) = l.to_str() {
                            self.leader_hint = Some(l.to_string());
                        }
                    }
                }
                Err(_) => {}
            }
            if established.is_some() {
                backoff = Duration::from_millis(100);
                failed_in_row = 0;
            } else {
                failed_in_row += 1;
            }
            // A hint to the leader is worth following at once, and so is a manager not tried
            // since the last session.
            let untried = !failed_in_row.is_multiple_of(self.managers.len().max(1));
            let wait = if self.leader_hint.is_some() || untried {
                Duration::from_millis(20)
            } else {
                let b = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                b
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, SessionError> {
        let id = self.creds.get().ok_or(SessionError::NoIdentity)?;
        let cfg = client_config(&id.ca_pem, Some(&id))?;
        Ok(tls_channel(addr, cfg)?)
    }

    /// One session with the manager at `addr`; `established` is set when the manager has
    /// answered (the first session message).
    async fn session(
        &mut self,
        addr: &str,
        established: &mut Option<tokio::time::Instant>,
    ) -> Result<(), SessionError> {
        let channel = self.channel(addr)?;
        let (tx, rx) = mpsc::channel(4);
        tx.send(pb::SessionRequest {
            msg: Some(pb::session_request::Msg::Register(pb::Register {
                description: Some(pb::NodeDescription {
                    hostname: self.config.hostname.clone(),
                    addr: String::new(),
                    platform: self.config.platform.clone(),
                    engine_version: env!("CARGO_PKG_VERSION").into(),
                    nano_cpus: self.config.nano_cpus,
                    memory_bytes: self.config.memory_bytes,
                }),
            })),
        })
        .await
        .ok();
        // After a reconnect the (possibly new) leader hears every task's state again.
        let known = self.executor.statuses();
        if !known.is_empty() {
            tx.send(statuses_message(&known)).await.ok();
        }
        let statuses_tx = tx.clone();
        let mut period = self.period.subscribe();
        // Aborted when this future is dropped too (agent cancelled mid-session): a heartbeat
        // task outliving its agent would keep a departed node looking alive.
        let _heartbeats = AbortOnDrop(tokio::spawn(async move {
            let mut last = tokio::time::Instant::now();
            loop {
                let p = *period.borrow_and_update();
                // Early rather than late: jitter within the last fifth of the period.
                let jitter = rand::random::<f64>() * 0.2;
                tokio::select! {
                    _ = tokio::time::sleep_until(last + p.mul_f64(0.8 + jitter)) => {}
                    // The manager's period replaces the initial one (5 s until the first
                    // session message): wait by the new one at once, or the first heartbeat
                    // comes too late for a short period and the session is judged dead.
                    r = period.changed() => {
                        if r.is_err() {
                            return;
                        }
                        continue;
                    }
                }
                last = tokio::time::Instant::now();
                let hb = pb::SessionRequest {
                    msg: Some(pb::session_request::Msg::Heartbeat(pb::Heartbeat {})),
                };
                if tx.send(hb).await.is_err() {
                    return;
                }
            }
        }));
        self.session_inner(addr, channel, rx, statuses_tx, established)
            .await
    }

    async fn session_inner(
        &mut self,
        addr: &str,
        channel: Channel,
        rx: mpsc::Receiver<pb::SessionRequest>,
        statuses: mpsc::Sender<pb::SessionRequest>,
        established: &mut Option<tokio::time::Instant>,
    ) -> Result<(), SessionError> {
        // Assignments come in messages of about 1 MiB; files (secrets, configs) go whole.
        let mut client = DispatcherClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        let mut inbound = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        // Log subscriptions of this session; all stop when it ends.
        let logs_cancel = CancellationToken::new();
        let _stop_logs = logs_cancel.clone().drop_guard();
        let mut log_subs: std::collections::HashMap<u64, CancellationToken> = Default::default();
        // The session's first message holds the full sets.
        let mut net = NetAssembler::default();
        self.chain = Chain::default();
        loop {
            let p = *self.period.borrow();
            let limit = p * 3 + Duration::from_secs(1);
            let msg = tokio::select! {
                m = tokio::time::timeout(limit, inbound.message()) => match m {
                    Err(_) => return Err(SessionError::Silent(limit)),
                    Ok(m) => m?,
                },
                Some(first) = self.reports.recv() => {
                    // Send what is queued, and what follows within a moment, as one message:
                    // tasks started together report together.
                    let mut batch = vec![first];
                    let until = tokio::time::Instant::now() + STATUS_GATHER;
                    while batch.len() < 1000 {
                        match tokio::time::timeout_at(until, self.reports.recv()).await {
                            Ok(Some(r)) => batch.push(r),
                            _ => break,
                        }
                    }
                    if statuses.send(statuses_message(&batch)).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
            };
            let Some(mut msg) = msg else { return Ok(()) };
            if established.is_none() {
                *established = Some(tokio::time::Instant::now());
                tracing::info!(
                    %addr,
                    period = ?Duration::from_millis(msg.heartbeat_period_ms),
                    desired_role = %msg.desired_role,
                    "session established"
                );
            }
            if let Some(req) = &msg.log_request {
                log_subs.retain(|_, t| !t.is_cancelled());
                if req.cancel {
                    if let Some(t) = log_subs.remove(&req.subscription) {
                        t.cancel();
                    }
                } else {
                    let token = logs_cancel.child_token();
                    log_subs.insert(req.subscription, token.clone());
                    let runtime = self.executor.runtime();
                    let out = statuses.clone();
                    let req = req.clone();
                    tokio::spawn(async move {
                        crate::logs::serve(runtime, req, out, token.clone()).await;
                        token.cancel();
                    });
                }
            }
            if !msg.forgotten.is_empty() {
                let runtime = self.executor.runtime();
                for id in std::mem::take(&mut msg.forgotten) {
                    runtime.forget(&id);
                }
            }
            if let Some(a) = msg.assignments.take() {
                match self.chain.step(a) {
                    Step::Apply {
                        full,
                        upsert,
                        removed,
                    } => self.executor.apply(full, upsert, removed),
                    Step::Resync(have) => {
                        let m = pb::SessionRequest {
                            msg: Some(pb::session_request::Msg::Resync(pb::Resync {
                                have_version: have,
                            })),
                        };
                        if statuses.send(m).await.is_err() {
                            return Ok(());
                        }
                    }
                    Step::Wait => {}
                }
            }
            if let Some(u) = msg.network.take() {
                let net = net.apply(u);
                let _ = self.events.send(AgentEvent::Network(Box::new(net))).await;
            }
            self.on_message(&msg).await;
            self.maybe_renew(&channel, &msg).await?;
        }
    }

    async fn on_message(&mut self, msg: &pb::SessionMessage) {
        if msg.heartbeat_period_ms > 0 {
            let p = Duration::from_millis(msg.heartbeat_period_ms);
            self.period.send_if_modified(|old| {
                let changed = *old != p;
                *old = p;
                changed
            });
        }
        if msg.managers.is_empty() {
            return;
        }
        let now = tokio::time::Instant::now();
        let before: Vec<String> = self.managers.keys().cloned().collect();
        for m in &msg.managers {
            self.managers.insert(m.clone(), now);
        }
        self.managers
            .retain(|_, seen| now.duration_since(*seen) < FORGET_AFTER);
        let after: Vec<String> = self.managers.keys().cloned().collect();
        if after != before {
            let _ = self.events.send(AgentEvent::Managers(after)).await;
        }
    }

    async fn maybe_renew(
        &mut self,
        channel: &Channel,
        msg: &pb::SessionMessage,
    ) -> Result<(), SessionError> {
        let id = self.creds.get().ok_or(SessionError::NoIdentity)?;
        let desired: Role = msg.desired_role.parse().unwrap_or(id.info.role);
        let now = SystemTime::now();
        let expiring = id.info.needs_renewal(now);
        // A certificate that outlives a tightened validity policy is replaced at once.
        let policy = Duration::from_millis(msg.cert_expiry_ms);
        let left = id.info.not_after.duration_since(now).unwrap_or_default();
        let expiring = expiring
            || (!policy.is_zero() && left > policy + policy / 10 + Duration::from_secs(60));
        if desired == id.info.role && !expiring {
            return Ok(());
        }
        let (key_pem, csr_pem) = new_key_and_csr()?;
        tracing::debug!(holds = %id.info.role, %desired, expiring, "asking for a new certificate");
        let resp = tokio::time::timeout(
            RENEW_TIMEOUT,
            CaClient::new(channel.clone()).renew(pb::RenewRequest { csr_pem }),
        )
        .await
        .map_err(|_| SessionError::RenewTimeout(RENEW_TIMEOUT))?;
        let resp = match resp {
            Ok(r) => r.into_inner(),
            // Demotion waits for raft removal, a changed desired role is asked again: try
            // again on the next heartbeat.
            Err(s) if s.code() == Code::Unavailable => {
                tracing::debug!(error = %s.message(), "certificate not issued yet");
                return Ok(());
            }
            Err(s) => return Err(s.into()),
        };
        let identity = Identity::new(&resp.cert_pem, &key_pem, &id.ca_pem)?;
        let role = identity.info.role;
        tracing::info!(%role, "new certificate");
        self.creds.set(Some(identity.clone()));
        let _ = self
            .events
            .send(AgentEvent::Certificate { identity, role })
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::spec::{FileRef, TaskSpec, TaskState};

    fn wire(id: &str) -> pb::Assignment {
        pb::Assignment::from(&Assignment {
            task_id: id.into(),
            service_id: "s".into(),
            service_name: "web".into(),
            slot: 1,
            spec: TaskSpec {
                image: "busybox".into(),
                secrets: vec![FileRef {
                    name: "db".into(),
                    target: String::new(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            desired_state: TaskState::Running,
            node_hostname: "h".into(),
            secrets: Vec::new(),
            configs: Vec::new(),
            networks: Vec::new(),
            node_id: String::new(),
            service_labels: Default::default(),
        })
    }

    fn inc(base: u64, ids: &[&str]) -> pb::Assignments {
        pb::Assignments {
            base_version: base,
            version: base + 1,
            upsert: ids.iter().map(|id| wire(id)).collect(),
            ..Default::default()
        }
    }

    fn ids(step: &Step) -> Vec<&str> {
        match step {
            Step::Apply { upsert, .. } => upsert.iter().map(|a| a.task_id.as_str()).collect(),
            _ => Vec::new(),
        }
    }

    /// Increments apply only on top of the version held; one that does not (an increment was
    /// missed) asks for the full set once, later ones wait for it, and the full set applies.
    #[test]
    fn a_missed_increment_asks_for_a_resync_once() {
        let mut c = Chain::default();
        let full = pb::Assignments {
            full: true,
            version: 1,
            upsert: vec![wire("t1")],
            files: vec![pb::FileData {
                key: Some((&(proto::convert::FileKind::Secret, "db".to_string())).into()),
                data: b"pw".to_vec(),
            }],
            ..Default::default()
        };
        let s = c.step(full.clone());
        assert_eq!(ids(&s), vec!["t1"]);
        // The secret's data comes from the node's files, once.
        let Step::Apply {
            upsert, full: f, ..
        } = s
        else {
            panic!("not applied")
        };
        assert!(f);
        assert_eq!(upsert[0].secrets[0].data, b"pw");
        assert_eq!(ids(&c.step(inc(1, &["t2"]))), vec!["t2"]);
        // 2 → 3 is lost.
        assert_eq!(c.step(inc(3, &["t4"])), Step::Resync(2));
        assert_eq!(c.step(inc(4, &["t5"])), Step::Wait);
        let full = pb::Assignments {
            full: true,
            version: 6,
            upsert: ["t1", "t2", "t3", "t4", "t5"]
                .iter()
                .map(|id| wire(id))
                .collect(),
            files: full.files,
            ..Default::default()
        };
        assert_eq!(ids(&c.step(full)).len(), 5);
        assert_eq!(ids(&c.step(inc(6, &["t6"]))), vec!["t6"]);
        assert_eq!(c.version, Some(7));
    }

    /// A full set cut in parts is applied whole, once its last part has come: its first part
    /// alone would stop the tasks of the others.
    #[test]
    fn a_full_set_in_parts_is_applied_once_complete() {
        let mut c = Chain::default();
        let first = pb::Assignments {
            full: true,
            version: 1,
            upsert: vec![wire("t1"), wire("t2")],
            more: true,
            ..Default::default()
        };
        assert_eq!(c.step(first), Step::Wait);
        let mut second = inc(1, &["t3"]);
        second.more = true;
        assert_eq!(c.step(second), Step::Wait);
        let last = c.step(inc(2, &["t4"]));
        assert_eq!(ids(&last), vec!["t1", "t2", "t3", "t4"]);
        assert!(matches!(last, Step::Apply { full: true, .. }));
        assert_eq!(ids(&c.step(inc(3, &["t5"]))), vec!["t5"]);
        // A part that does not follow drops what was gathered and asks for everything.
        let mut part = pb::Assignments {
            full: true,
            version: 9,
            upsert: vec![wire("t1")],
            more: true,
            ..Default::default()
        };
        assert_eq!(c.step(part.clone()), Step::Wait);
        part = inc(11, &["t2"]);
        assert_eq!(c.step(part), Step::Resync(9));
        assert!(c.pending.is_none());
    }

    /// An assignment with a field this version cannot read is skipped; the rest of the
    /// increment applies and the chain moves on.
    #[test]
    fn an_unreadable_assignment_is_skipped_not_the_increment() {
        let mut c = Chain::default();
        c.step(pb::Assignments {
            full: true,
            version: 1,
            ..Default::default()
        });
        let mut bad = wire("bad");
        bad.spec.as_mut().unwrap().mounts.push(pb::Mount {
            kind: 42,
            ..Default::default()
        });
        let mut m = inc(1, &["t1"]);
        m.upsert.push(bad);
        assert_eq!(ids(&c.step(m)), vec!["t1"]);
        assert_eq!(c.version, Some(2));
    }
}
