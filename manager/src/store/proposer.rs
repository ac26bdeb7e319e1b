//! The store's write path. Components write through [`Store::propose`] and never see raft:
//! on a manager the proposer is the raft leader's write queue ([`crate::manager::Manager`]
//! batches the transactions into log entries); in unit tests it is [`DirectProposer`], which
//! applies each transaction at once, so a component runs on a bare store.
//! [`Store::update_with_retry`] is the read-modify-write every writer of a shared object uses.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Store, StoreData, Txn, TxnError, TxnOutcome};

/// Attempts of a read-modify-write before it gives up to a busier writer.
const UPDATE_ATTEMPTS: usize = 10;

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

/// Why a read-modify-write ([`Store::update_with_retry`]) did not commit.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    /// The transaction could not be built: the builder's own error.
    #[error(transparent)]
    Build(E),
    /// The write was refused for a reason a retry does not cure, or was not committed.
    #[error(transparent)]
    Propose(ProposeError),
    /// Every attempt met a concurrent change.
    #[error("too many concurrent updates; retry")]
    Contended,
}

impl ProposeError {
    /// A refusal that a fresh read may cure: what was read changed meanwhile.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            ProposeError::Refused(
                TxnError::Conflict { .. }
                    | TxnError::AddressInUse { .. }
                    | TxnError::NetworkClash { .. }
            )
        )
    }
}

impl Store {
    /// Read-modify-write: builds the transaction from a fresh read and proposes it, again
    /// (a few times) while it is refused for a concurrent change.
    pub async fn update_with_retry<E, F>(&self, mut build: F) -> Result<u64, UpdateError<E>>
    where
        F: FnMut(&StoreData) -> Result<Txn, E>,
    {
        for _ in 0..UPDATE_ATTEMPTS {
            let txn = self.view(&mut build).map_err(UpdateError::Build)?;
            match self.propose(txn).await {
                Ok(i) => return Ok(i),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(UpdateError::Propose(e)),
            }
        }
        Err(UpdateError::Contended)
    }
}

/// Transactions of one writer in flight at once ([`Store::propose_each`]): enough to share
/// raft entries with the writes queued behind them, few enough that a burst of thousands of
/// task writes does not turn into megabyte entries that miss the replication timeout.
pub const PROPOSALS_IN_FLIGHT: usize = 4;

impl Store {
    /// Proposes `txns` in order, [`PROPOSALS_IN_FLIGHT`] at a time; the outcome of each,
    /// in order.
    pub async fn propose_each(
        &self,
        txns: impl IntoIterator<Item = Txn>,
    ) -> Vec<Result<u64, ProposeError>> {
        use futures::StreamExt;
        futures::stream::iter(txns)
            .map(|txn| self.propose(txn))
            .buffered(PROPOSALS_IN_FLIGHT)
            .collect()
            .await
    }
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
