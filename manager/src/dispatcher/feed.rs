//! Store events to the sessions they concern. One pump reads the store's events and hands
//! each to the sessions whose node it touches (the event's [`Touched`] index), or to every
//! session when it is about files or networks: with ten thousand sessions, a node
//! registering no longer wakes the other 9,999.
//!
//! A session that falls behind (its queue full) or a pump that fell behind the store is told
//! it lagged, and reads its full state again, as with a lagging broadcast receiver.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;

use crate::store::{Event, Kind, Store, Touched};

/// Events a session may have queued before it counts as lagging.
const FEED_QUEUE: usize = 64;

enum Item {
    Event(Event),
    Lagged,
}

/// What a session and the pump share.
#[derive(Default)]
struct FeedState {
    /// Events were dropped: the session must read its full state again.
    lagged: AtomicBool,
    /// The session has network state to keep up to date (see [`super::NodeNet::busy`]).
    net_busy: AtomicBool,
}

struct Feed {
    serial: u64,
    tx: mpsc::Sender<Item>,
    state: Arc<FeedState>,
}

impl Feed {
    fn push(&self, item: Item) {
        match self.tx.try_send(item) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            // The queue is full: the session wakes anyway and reads everything afresh.
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.state.lagged.store(true, Ordering::Release)
            }
        }
    }
}

/// The sessions' feeds of one dispatcher.
#[derive(Default)]
pub(super) struct Feeds {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_node: HashMap<String, Feed>,
    /// A pump is running.
    pumping: bool,
}

/// A session's end of its feed.
pub(super) struct FeedRx {
    rx: mpsc::Receiver<Item>,
    state: Arc<FeedState>,
}

impl FeedRx {
    /// The next event for this session; `Lagged` when some were dropped (read everything
    /// again), `Closed` when the feed ended.
    pub async fn recv(&mut self) -> Result<Event, RecvError> {
        let item = self.rx.recv().await.ok_or(RecvError::Closed)?;
        if self.state.lagged.swap(false, Ordering::AcqRel) {
            // Everything queued is older than the full read that follows.
            while self.rx.try_recv().is_ok() {}
            return Err(RecvError::Lagged(0));
        }
        match item {
            Item::Event(e) => Ok(e),
            Item::Lagged => Err(RecvError::Lagged(0)),
        }
    }

    /// Whether the session holds network state (events about nodes and tasks then concern
    /// it even when no network is left).
    pub fn set_net_busy(&self, busy: bool) {
        self.state.net_busy.store(busy, Ordering::Relaxed);
    }
}

/// Whether every session must see the event: files, networks and services concern every
/// node; node and task changes do while the swarm has networks.
fn for_everyone(t: &Touched) -> bool {
    t.has(Kind::Secret)
        || t.has(Kind::Config)
        || t.has(Kind::Network)
        || t.has(Kind::Service)
        || t.task_networks()
        || (t.networks() && (t.has(Kind::Node) || t.has(Kind::Task)))
}

impl Feeds {
    /// A feed for the session `serial` of `node` (replacing an older one of the node), of
    /// the events of `store` from now on: subscribe before reading the state the events
    /// change.
    pub fn subscribe(self: &Arc<Self>, node: &str, serial: u64, store: &Store) -> FeedRx {
        let (tx, rx) = mpsc::channel(FEED_QUEUE);
        let state = Arc::new(FeedState::default());
        let mut inner = self.inner.lock().expect("feeds lock");
        inner.by_node.insert(
            node.to_string(),
            Feed {
                serial,
                tx,
                state: state.clone(),
            },
        );
        if !inner.pumping {
            inner.pumping = true;
            // Subscribed here, under the lock: no event after this call is missed.
            let rx = store.watch();
            tokio::spawn(self.clone().pump(rx));
        }
        FeedRx { rx, state }
    }

    /// The session `serial` of `node` ended.
    pub fn unsubscribe(&self, node: &str, serial: u64) {
        let mut inner = self.inner.lock().expect("feeds lock");
        if inner.by_node.get(node).is_some_and(|f| f.serial == serial) {
            inner.by_node.remove(node);
        }
    }

    /// Hands out the store's events until no session is left or the store closes.
    async fn pump(self: Arc<Self>, mut events: broadcast::Receiver<Event>) {
        loop {
            let ev = events.recv().await;
            let mut inner = self.inner.lock().expect("feeds lock");
            if inner.by_node.is_empty() || matches!(ev, Err(RecvError::Closed)) {
                inner.pumping = false;
                return;
            }
            match ev {
                Ok(e) => self::deliver(&inner.by_node, e),
                Err(_) => {
                    for f in inner.by_node.values() {
                        f.state.lagged.store(true, Ordering::Release);
                        f.push(Item::Lagged);
                    }
                }
            }
        }
    }
}

/// Hands `e` to the feeds it concerns.
fn deliver(feeds: &HashMap<String, Feed>, e: Event) {
    if for_everyone(&e.touched) {
        for f in feeds.values() {
            f.push(Item::Event(e.clone()));
        }
        return;
    }
    let node_or_task = e.touched.has(Kind::Node) || e.touched.has(Kind::Task);
    if node_or_task {
        // Sessions that still hold network state (a network just removed) see these too.
        for f in feeds.values() {
            if f.state.net_busy.load(Ordering::Relaxed) {
                f.push(Item::Event(e.clone()));
            }
        }
    }
    for node in e.touched.nodes() {
        if let Some(f) = feeds.get(node) {
            if !(node_or_task && f.state.net_busy.load(Ordering::Relaxed)) {
                f.push(Item::Event(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::tests::{bare_task as task_on, node};
    use crate::store::{DirectProposer, Object, Op, Txn};

    async fn write(store: &Store, ops: Vec<Op>) {
        store.propose(Txn::new(ops)).await.expect("write");
    }

    /// Nothing more is queued for `rx` (polled for a while: the pump runs on its own).
    async fn quiet(rx: &mut FeedRx) -> bool {
        tokio::time::timeout(Duration::from_millis(200), rx.recv())
            .await
            .is_err()
    }

    #[tokio::test]
    async fn a_session_hears_of_its_own_tasks_and_of_files_not_of_other_nodes() {
        let store = Store::new();
        DirectProposer::install(&store);
        let feeds = Arc::new(Feeds::default());
        let mut a = feeds.subscribe("a", 1, &store);
        let mut b = feeds.subscribe("b", 2, &store);
        // A node registering and a task placed on `a` concern `a` alone.
        write(&store, vec![Op::Create(Object::Node(node("c", "c")))]).await;
        write(&store, vec![Op::Create(Object::Task(task_on("t1", "a")))]).await;
        let e = a.recv().await.expect("a's event");
        assert_eq!(e.touched.node_tasks("a"), &[0]);
        assert!(quiet(&mut a).await);
        assert!(quiet(&mut b).await);
        // A session that holds network state hears of every node and task change.
        b.set_net_busy(true);
        write(&store, vec![Op::Create(Object::Node(node("d", "d")))]).await;
        assert!(b.recv().await.expect("b's event").touched.has(Kind::Node));
        assert!(quiet(&mut a).await);
        // Ended sessions are no longer fed; the others are.
        feeds.unsubscribe("b", 2);
        feeds.unsubscribe("a", 99);
        write(&store, vec![Op::Create(Object::Task(task_on("t2", "a")))]).await;
        assert!(a.recv().await.is_ok());
        assert!(matches!(b.recv().await, Err(RecvError::Closed)));
    }

    #[tokio::test]
    async fn a_session_that_falls_behind_is_told_it_lagged() {
        let store = Store::new();
        DirectProposer::install(&store);
        let feeds = Arc::new(Feeds::default());
        let mut a = feeds.subscribe("a", 1, &store);
        for i in 0..FEED_QUEUE + 10 {
            write(
                &store,
                vec![Op::Create(Object::Task(task_on(&format!("t{i}"), "a")))],
            )
            .await;
            // Let the pump keep up with the store (its own buffer is smaller).
            tokio::task::yield_now().await;
        }
        // The queue overflowed: the first read says so and drops what was queued.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match a.recv().await {
                Err(RecvError::Lagged(_)) => break,
                Ok(_) => assert!(tokio::time::Instant::now() < deadline, "never lagged"),
                Err(RecvError::Closed) => panic!("closed"),
            }
        }
        assert!(quiet(&mut a).await);
    }
}
