//! The store's write path. Components write through [`Store::propose`] and never see raft:
//! on a manager the proposer is the raft leader's write queue ([`crate::manager::Manager`]
//! batches the transactions into log entries); in unit tests it is [`DirectProposer`], which
//! applies each transaction at once, so a component runs on a bare store.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Store, Txn, TxnError, TxnOutcome};

/// Why a write did not commit.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("this manager is not the leader")]
    NotLeader,
    #[error("{0}")]
    Refused(TxnError),
    #[error("raft: {0}")]
    Raft(String),
}

/// A write's future: the log index it committed at.
pub type Proposal<'a> = Pin<Box<dyn Future<Output = Result<u64, ProposeError>> + Send + 'a>>;

/// Commits transactions (swarmkit's store holds its proposer the same way). `store` is the
/// store the write is for.
pub trait Proposer: Send + Sync {
    fn propose<'a>(&'a self, store: &'a Store, txn: Txn) -> Proposal<'a>;
}

/// Applies each transaction to the store at once, at the next index: for tests of components
/// without raft.
#[derive(Default)]
pub struct DirectProposer {
    index: AtomicU64,
}

impl DirectProposer {
    /// Makes `store` write through a new direct proposer.
    pub fn install(store: &Store) {
        store.set_proposer(Arc::new(DirectProposer::default()));
    }
}

impl Proposer for DirectProposer {
    fn propose<'a>(&'a self, store: &'a Store, txn: Txn) -> Proposal<'a> {
        let index = self.index.fetch_add(1, Ordering::SeqCst) + 1;
        let out = match store.apply(index, &txn) {
            TxnOutcome::Refused(e) => Err(ProposeError::Refused(e)),
            _ => Ok(index),
        };
        Box::pin(std::future::ready(out))
    }
}
