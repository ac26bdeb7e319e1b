//! The runtime a node's executor drives: the OCI runtime with each task attached to the
//! node's networks first (its namespace is made before the container, which joins it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent_net::node::NodeNet;
use proto::spec::Assignment;
use worker::runtime::{Restored, RestoredState, Runtime, RuntimeError, RuntimeOp};

/// How long a task that takes traffic keeps running after it left DNS and the load
/// balancers (every node drops it as soon as the managers ask it to stop), before its stop
/// signal: in-flight requests finish and no new one reaches it.
pub const DRAIN: Duration = Duration::from_secs(1);

pub struct NetworkedRuntime {
    inner: Arc<dyn Runtime>,
    net: Arc<NodeNet>,
}

impl NetworkedRuntime {
    pub fn new(inner: Arc<dyn Runtime>, net: Arc<NodeNet>) -> NetworkedRuntime {
        NetworkedRuntime { inner, net }
    }
}

#[async_trait::async_trait]
impl Runtime for NetworkedRuntime {
    async fn prepare(&self, task: &Assignment) -> Result<(), RuntimeError> {
        self.net
            .attach(task)
            .await
            .map_err(|e| RuntimeError::Failed {
                task_id: task.task_id.clone(),
                op: RuntimeOp::Prepare,
                reason: format!("network: {e}"),
            })?;
        self.inner.prepare(task).await
    }
    async fn start(&self, task_id: &str) -> Result<(), RuntimeError> {
        self.inner.start(task_id).await?;
        if !self.net.wait_listening(task_id).await {
            tracing::warn!(
                task = task_id,
                "the task does not listen on its published ports; counting it as running anyway"
            );
        }
        Ok(())
    }
    async fn wait(&self, task_id: &str) -> Result<i32, RuntimeError> {
        self.inner.wait(task_id).await
    }
    async fn stop(&self, task_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        if self.net.is_endpoint(task_id) {
            tokio::time::sleep(DRAIN).await;
        }
        self.inner.stop(task_id, grace).await
    }
    async fn remove(&self, task_id: &str) -> Result<(), RuntimeError> {
        let r = self.inner.remove(task_id).await;
        if let Err(e) = self.net.detach(task_id).await {
            tracing::warn!(task = task_id, error = %e, "removing the task's network");
        }
        r
    }
    fn forget(&self, task_id: &str) {
        self.inner.forget(task_id)
    }
    fn log_path(&self, task_id: &str) -> Option<PathBuf> {
        self.inner.log_path(task_id)
    }
    async fn restore(&self) -> Vec<Restored> {
        let restored = self.inner.restore().await;
        for r in &restored {
            if matches!(
                r.state,
                RestoredState::Running { .. } | RestoredState::Created
            ) {
                if let Err(e) = self.net.restore(&r.assignment).await {
                    tracing::warn!(task = %r.task_id, error = %e, "restoring the task's network");
                }
            }
        }
        restored
    }
    async fn exit_detail(&self, task_id: &str) -> Option<String> {
        self.inner.exit_detail(task_id).await
    }
    fn exec_argv(&self, task_id: &str, cmd: &[String]) -> Result<Vec<String>, RuntimeError> {
        self.inner.exec_argv(task_id, cmd)
    }
}
