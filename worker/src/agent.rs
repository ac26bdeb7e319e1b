//! The agent's session loop.
//!
//! ```text
//!   loop: pick a manager (the leader if known) ─▶ Dispatcher.Session
//!           send Register, then Heartbeat every period
//!           on each SessionMessage: period, managers, leader, desired role
//!             role differs from certificate, or certificate past half-life ─▶ Ca.Renew
//!         on error: follow the leader hint, back off (100 ms … 2 s), try the next manager
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proto::pb;
use proto::pb::ca_client::CaClient;
use proto::pb::dispatcher_client::DispatcherClient;
use proto::security::{new_key_and_csr, Role};
use proto::transport::{client_config, tls_channel, Credentials, Identity};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

use proto::transport::LEADER_METADATA;

/// How long a manager address is still tried after the managers stopped listing it. The list
/// a manager sends reflects raft membership at that moment; during a run of promotions and
/// demotions it can briefly leave out a manager that becomes the leader a moment later, and
/// an agent that had forgotten it could find no leader at all.
const FORGET_AFTER: Duration = Duration::from_secs(600);

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
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Transport(#[from] proto::transport::TransportError),
    #[error("no session message within {0:?}")]
    Silent(Duration),
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
    reports: mpsc::Receiver<proto::spec::StatusReport>,
    creds: Arc<Credentials>,
    events: mpsc::Sender<AgentEvent>,
    /// Manager addresses and when a manager last listed them.
    managers: BTreeMap<String, tokio::time::Instant>,
    leader_hint: Option<String>,
    next: usize,
    period_ms: Arc<AtomicU64>,
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
            period_ms: Arc::new(AtomicU64::new(config.initial_period.as_millis() as u64)),
            config,
            creds,
            events,
            leader_hint: None,
            next: 0,
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
            let started = tokio::time::Instant::now();
            let res = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.session(&addr) => r,
            };
            match res {
                Ok(()) => {}
                Err(SessionError::Status(s)) if s.code() == Code::NotFound => {
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
                    tracing::debug!(%addr, code = ?s.code(), error = %s.message(), "session ended");
                }
                Err(e) => tracing::debug!(%addr, error = %e, "session ended"),
            }
            if started.elapsed() > Duration::from_secs(5) {
                backoff = Duration::from_millis(100);
            }
            // A hint to the leader is worth following at once.
            let wait = if self.leader_hint.is_some() {
                Duration::from_millis(20)
            } else {
                backoff
            };
            backoff = (backoff * 2).min(Duration::from_secs(2));
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

    async fn session(&mut self, addr: &str) -> Result<(), SessionError> {
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
            if let Ok(json) = serde_json::to_string(&known) {
                tx.send(pb::SessionRequest {
                    msg: Some(pb::session_request::Msg::Statuses(pb::TaskStatuses {
                        reports_json: json,
                    })),
                })
                .await
                .ok();
            }
        }
        let statuses_tx = tx.clone();
        let period = self.period_ms.clone();
        // Aborted when this future is dropped too (agent cancelled mid-session): a heartbeat
        // task outliving its agent would keep a departed node looking alive.
        let _heartbeats = AbortOnDrop(tokio::spawn(async move {
            loop {
                let p = Duration::from_millis(period.load(Ordering::Relaxed));
                // Early rather than late: jitter within the last fifth of the period.
                let jitter = rand::random::<f64>() * 0.2;
                tokio::time::sleep(p.mul_f64(0.8 + jitter)).await;
                let hb = pb::SessionRequest {
                    msg: Some(pb::session_request::Msg::Heartbeat(pb::Heartbeat {})),
                };
                if tx.send(hb).await.is_err() {
                    return;
                }
            }
        }));
        self.session_inner(channel, rx, statuses_tx).await
    }

    async fn session_inner(
        &mut self,
        channel: Channel,
        rx: mpsc::Receiver<pb::SessionRequest>,
        statuses: mpsc::Sender<pb::SessionRequest>,
    ) -> Result<(), SessionError> {
        let mut client = DispatcherClient::new(channel.clone());
        let mut inbound = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        // Log subscriptions of this session; all stop when it ends.
        let logs_cancel = CancellationToken::new();
        let _stop_logs = logs_cancel.clone().drop_guard();
        let mut log_subs: std::collections::HashMap<u64, CancellationToken> = Default::default();
        loop {
            let p = Duration::from_millis(self.period_ms.load(Ordering::Relaxed));
            let limit = p * 3 + Duration::from_secs(1);
            let msg = tokio::select! {
                m = tokio::time::timeout(limit, inbound.message()) => match m {
                    Err(_) => return Err(SessionError::Silent(limit)),
                    Ok(m) => m?,
                },
                Some(first) = self.reports.recv() => {
                    // Send what is queued as one message.
                    let mut batch = vec![first];
                    while batch.len() < 1000 {
                        match self.reports.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    if let Ok(json) = serde_json::to_string(&batch) {
                        let m = pb::SessionRequest {
                            msg: Some(pb::session_request::Msg::Statuses(pb::TaskStatuses { reports_json: json })),
                        };
                        if statuses.send(m).await.is_err() {
                            return Ok(());
                        }
                    }
                    continue;
                }
            };
            let Some(msg) = msg else { return Ok(()) };
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
            if let Some(a) = &msg.assignments {
                match serde_json::from_str::<Vec<proto::spec::Assignment>>(&a.upsert_json) {
                    Ok(upsert) => self.executor.apply(a.full, upsert, a.removed.clone()),
                    Err(e) => tracing::warn!(error = %e, "malformed assignments"),
                }
            }
            self.on_message(&msg).await;
            self.maybe_renew(&channel, &msg).await?;
        }
    }

    async fn on_message(&mut self, msg: &pb::SessionMessage) {
        if msg.heartbeat_period_ms > 0 {
            self.period_ms
                .store(msg.heartbeat_period_ms, Ordering::Relaxed);
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
        let resp = CaClient::new(channel.clone())
            .renew(pb::RenewRequest { csr_pem })
            .await;
        let resp = match resp {
            Ok(r) => r.into_inner(),
            // Demotion waits for raft removal: try again on the next heartbeat.
            Err(s) if s.code() == Code::Unavailable => return Ok(()),
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
