//! Status batching: the reports nodes send are queued (newest per task) and written in
//! batches, forward moves only.

use std::sync::Arc;
use std::time::Duration;

use proto::spec::{StatusReport, TaskStatus};
use tokio_util::sync::CancellationToken;

use super::Dispatcher;
use crate::manager::Manager;
use crate::store::{Object, Op, Txn};

impl Dispatcher {
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
}
