//! The sequencing transaction, written once for both stores (the `LogSequencer::sequence`
//! contract): each store supplies its statements (`SequencingStatements`), in its own dialect,
//! inside a write transaction it opened and ends.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tlog::merkle::Hash;

use crate::storage::StoreError;
use crate::transparency::{LogHead, NodeKey, PendingEntry, PlannedBatch, SequenceOutcome, frontier_keys, plan_batch};

/// The statements of one sequencing transaction, run inside a write transaction that the store
/// opened and will commit only on `SequenceOutcome::Sequenced`.
pub(super) trait SequencingStatements {
    /// The committed head, locked (or under the write lock) until the transaction ends.
    fn locked_head(&mut self) -> impl Future<Output = Result<LogHead, StoreError>>;

    /// Up to `limit` entries without a log index, oldest first.
    fn pending(&mut self, limit: usize) -> impl Future<Output = Result<Vec<PendingEntry>, StoreError>>;

    /// The stored hashes of `keys`, in order; `None` for a node not stored.
    fn nodes(&mut self, keys: &[NodeKey]) -> impl Future<Output = Result<Vec<Option<Hash>>, StoreError>>;

    /// Writes the batch's nodes and gives its entries their indices, each only if it has none yet;
    /// returns how many entries were given one.
    fn write_batch(&mut self, batch: &PlannedBatch) -> impl Future<Output = Result<u64, StoreError>>;

    /// Replaces the head `old` by `new` if it is still `old`; returns the rows changed (1 or 0).
    fn swap_head(&mut self, old: LogHead, new: LogHead) -> impl Future<Output = Result<u64, StoreError>>;
}

/// Sequences up to `max_entries` pending entries on top of `expected`: refuses a head that is not
/// `expected` (`HeadMoved`), plans the batch on the stored right edge (which must lead to the
/// head's root, so a damaged node is never built upon), writes it and moves the head with a
/// compare-and-swap. An `Integrity` error (an entry or the head changed underneath) means the
/// transaction must not commit.
pub(super) async fn sequence<T: SequencingStatements>(
    statements: &mut T,
    expected: LogHead,
    max_entries: usize,
) -> Result<SequenceOutcome, StoreError> {
    let head = statements.locked_head().await?;
    if head != expected {
        return Ok(SequenceOutcome::HeadMoved(head));
    }
    let pending = statements.pending(max_entries).await?;
    if pending.is_empty() {
        return Ok(SequenceOutcome::Idle(head));
    }
    let frontier = statements
        .nodes(&frontier_keys(head.size))
        .await?
        .into_iter()
        .collect::<Option<Vec<Hash>>>()
        .ok_or_else(|| StoreError::Corrupt(format!("right-edge nodes of size {} are missing", head.size)))?;
    let planned = plan_batch(head, frontier, &pending).map_err(|error| StoreError::Corrupt(error.to_string()))?;
    let assigned = statements.write_batch(&planned).await?;
    if assigned != planned.assignments.len() as u64 {
        return Err(StoreError::Integrity("an entry was sequenced twice".to_owned()));
    }
    if statements.swap_head(head, planned.head).await? != 1 {
        return Err(StoreError::Integrity(
            "the log head changed during sequencing".to_owned(),
        ));
    }
    Ok(SequenceOutcome::Sequenced {
        head: planned.head,
        assignments: planned.assignments,
    })
}

/// Runs `future` to completion on this thread, for statements that never wait (the embedded
/// store's are synchronous calls): `None` if it did wait, which such statements cannot do.
pub(super) fn run_ready<F: Future>(future: F) -> Option<F::Output> {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}
