//! Log subscriptions: the leader asks a node for the logs of some of its tasks over the
//! node's session; the node answers with chunks on the same session.

use proto::pb;

use super::{Dispatcher, LeaderView, LogSink};

impl Dispatcher {
    /// Open a log subscription on `node`: its chunks go to `sink`. Returns the subscription
    /// id and the serial of the session the request went to, or None if the node holds no
    /// session with this manager.
    pub async fn subscribe_logs(
        &self,
        leader: &dyn LeaderView,
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
        let mut m = self.session_message(leader, node);
        m.log_request = Some(req);
        if tx.send(Ok(m)).await.is_err() {
            self.log_subs.lock().expect("dispatcher lock").remove(&id);
            return None;
        }
        Some((id, serial))
    }

    /// Close a subscription; with `tell_node`, the node stops following.
    pub async fn unsubscribe_logs(&self, leader: &dyn LeaderView, id: u64, tell_node: bool) {
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
            let mut m = self.session_message(leader, &node);
            m.log_request = Some(pb::LogRequest {
                subscription: id,
                cancel: true,
                ..Default::default()
            });
            let _ = tx.try_send(Ok(m));
        }
    }

    /// A chunk from `node`: to its subscriber, if the subscription is that node's.
    pub(super) fn deliver_logs(&self, node: &str, chunk: pb::LogChunk) {
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
}
