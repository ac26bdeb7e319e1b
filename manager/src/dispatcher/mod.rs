//! The dispatcher: one session stream per node, held with the leader.
//!
//! A node registers (its description), then heartbeats every period; each heartbeat is
//! answered with the session state the node needs (heartbeat period, manager addresses, the
//! leader, its desired role). On the same stream the node is sent its assignments (chained
//! increments after a full set, [`assignments`]), the secrets and configs its tasks name
//! (once per node), and its network state as per-network deltas ([`network`]); it sends back
//! status reports ([`status`]) and log chunks ([`logs`]). Liveness: [`liveness`].
//!
//! The dispatcher sees the store, a clock and, for what only the manager it runs in knows
//! (who leads, which managers there are), a [`LeaderView`]. Its two leader loops, the
//! heartbeat monitor ([`Liveness::run`]) and the status writer ([`StatusWriter::run`]), write
//! through the store.
//!
//! ```text
//!   session ──▶ register ─▶ full assignments + files + full network state
//!     store event ─▶ increment (base_version → version), network deltas
//!     node: Resync ─▶ full assignments      heartbeat ─▶ liveness
//!     node: statuses ─▶ status batching ─▶ store
//! ```

pub mod assignments;
mod feed;
pub mod liveness;
pub mod logs;
pub mod network;
mod session;
pub mod status;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use proto::pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

pub use assignments::{assignments_for, fingerprints, node_assignments, NodeAssignments, Sent};
pub use liveness::Liveness;
pub use network::{net_relevant, node_net_state, NetCache, NodeNet};
pub use session::{service, DispatcherService};
pub use status::StatusWriter;

use crate::clock::SharedClock;
use crate::store::{ProposeError, Store};

/// Missed heartbeat periods after which a node is Down.
pub const MISSED_PERIODS: u32 = 3;
/// The heartbeat period of a new swarm (`swarm init` without `--dispatcher-heartbeat`): a
/// node cut off is Down 3 s after its last heartbeat, and its tasks are replaced within about
/// 4 s (Swarm's 5 s makes that 10–17 s). An agent sends one every 0.8–1.0 period, so a healthy
/// node would have to miss two in a row, by 2 s, to be judged Down. The cost is one small
/// message a second per node on the leader.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
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

/// What the sessions sent, for benchmarks: messages and their encoded bytes.
#[derive(Debug, Default)]
pub struct SessionStats {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
}

impl SessionStats {
    fn count(&self, m: &pb::SessionMessage) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add(m.encoded_len() as u64, Ordering::Relaxed);
    }
}

/// What the dispatcher needs of the manager it runs in: leadership and the raft members.
pub trait LeaderView: Send + Sync {
    /// Cancelled when this manager's current term of leadership ends; `None` unless it acts
    /// as leader now.
    fn leader_token(&self) -> Option<CancellationToken>;
    /// The advertise address of the current leader, if one is known.
    fn leader_addr(&self) -> Option<String>;
    /// Addresses of every raft member.
    fn manager_addrs(&self) -> Vec<String>;
    /// The answer to a node whose write did not commit (a refusal by a manager that does not
    /// lead names the leader).
    fn write_refused(&self, e: ProposeError) -> Status;
}

/// As it is held (callers keep the manager in an `Arc`).
impl<T: LeaderView + ?Sized> LeaderView for Arc<T> {
    fn leader_token(&self) -> Option<CancellationToken> {
        (**self).leader_token()
    }
    fn leader_addr(&self) -> Option<String> {
        (**self).leader_addr()
    }
    fn manager_addrs(&self) -> Vec<String> {
        (**self).manager_addrs()
    }
    fn write_refused(&self, e: ProposeError) -> Status {
        (**self).write_refused(e)
    }
}

pub struct Dispatcher {
    store: Store,
    /// The open session of each node: (serial, outbound stream).
    sessions: Mutex<HashMap<String, (u64, SessionTx)>>,
    next_serial: AtomicU64,
    /// Log subscriptions: id → (node, sink).
    log_subs: Mutex<HashMap<u64, (String, LogSink)>>,
    /// Heartbeats, and the leader loop that marks nodes Down.
    pub liveness: Arc<Liveness>,
    /// Status reports, and the leader loop that writes them.
    pub statuses: Arc<StatusWriter>,
    /// Network and service states shared by the sessions.
    net_cache: Mutex<NetCache>,
    /// The store's events, to the sessions they concern.
    feeds: Arc<feed::Feeds>,
    pub stats: SessionStats,
}

impl Dispatcher {
    pub fn new(store: Store, clock: SharedClock) -> Dispatcher {
        Dispatcher {
            liveness: Arc::new(Liveness::new(store.clone(), clock)),
            statuses: Arc::new(StatusWriter::new(store.clone())),
            store,
            sessions: Mutex::new(HashMap::new()),
            next_serial: AtomicU64::new(1),
            log_subs: Mutex::new(HashMap::new()),
            net_cache: Mutex::new(NetCache::default()),
            feeds: Arc::default(),
            stats: SessionStats::default(),
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

    fn next_serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    fn register_session(&self, node: &str, serial: u64, tx: SessionTx) {
        self.sessions
            .lock()
            .expect("dispatcher lock")
            .insert(node.to_string(), (serial, tx));
    }

    fn end_session(&self, node: &str, serial: u64) {
        let mut s = self.sessions.lock().expect("dispatcher lock");
        if s.get(node).is_some_and(|(x, _)| *x == serial) {
            s.remove(node);
        }
        self.feeds.unsubscribe(node, serial);
    }

    /// Send `m` on a session (counted in [`SessionStats`]); false if the session is gone.
    async fn send(&self, tx: &SessionTx, m: pb::SessionMessage) -> bool {
        self.stats.count(&m);
        tx.send(Ok(m)).await.is_ok()
    }
}

#[cfg(test)]
mod tests;
