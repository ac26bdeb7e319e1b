//! The runtime a node's executor drives: the OCI runtime with each task attached to the
//! node-local network first (its namespace is made before the container, which joins it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent_net::local::LocalNet;
use proto::spec::Assignment;
use worker::runtime::{Restored, Runtime, RuntimeError, RuntimeOp};

pub struct NetworkedRuntime {
    inner: Arc<dyn Runtime>,
    net: Arc<LocalNet>,
}

impl NetworkedRuntime {
    pub fn new(inner: Arc<dyn Runtime>, net: Arc<LocalNet>) -> NetworkedRuntime {
        NetworkedRuntime { inner, net }
    }
}

#[async_trait::async_trait]
impl Runtime for NetworkedRuntime {
    async fn prepare(&self, task: &Assignment) -> Result<(), RuntimeError> {
        self.net
            .attach(&task.task_id, &format!("eth{}", task.networks.len()))
            .await
            .map_err(|e| RuntimeError::Failed {
                task_id: task.task_id.clone(),
                op: RuntimeOp::Prepare,
                reason: format!("network: {e}"),
            })?;
        self.inner.prepare(task).await
    }
    async fn start(&self, task_id: &str) -> Result<(), RuntimeError> {
        self.inner.start(task_id).await
    }
    async fn wait(&self, task_id: &str) -> Result<i32, RuntimeError> {
        self.inner.wait(task_id).await
    }
    async fn stop(&self, task_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.inner.stop(task_id, grace).await
    }
    async fn remove(&self, task_id: &str) -> Result<(), RuntimeError> {
        let r = self.inner.remove(task_id).await;
        let _ = self.net.detach(task_id).await;
        r
    }
    fn log_path(&self, task_id: &str) -> Option<PathBuf> {
        self.inner.log_path(task_id)
    }
    async fn restore(&self) -> Vec<Restored> {
        self.inner.restore().await
    }
    async fn exit_detail(&self, task_id: &str) -> Option<String> {
        self.inner.exit_detail(task_id).await
    }
    fn exec_argv(&self, task_id: &str, cmd: &[String]) -> Result<Vec<String>, RuntimeError> {
        self.inner.exec_argv(task_id, cmd)
    }
}
