//! The transparency log over the audit entries: the store contracts (`LogReader` for every reader,
//! `LogSequencer` for the sequencer alone), batch planning, proofs.
//!
//! Entries are written by business transactions into `audit_entries` without a log index (the
//! outbox). The sequencer (`sequencer`) gives them contiguous indices 0, 1, 2, … in batches, stores
//! every perfect-subtree hash of the RFC 6962 tree (`audit_tree_nodes`, level 0 = leaf hashes) and
//! moves the log head (size, root) with a compare-and-swap; then it signs a C2SP checkpoint with
//! the audit key on the HSM (`signer`). Proofs are built from the stored subtree hashes: about
//! 2·log2(n) primary-key lookups in one query, whatever the log's size.

pub mod export;
pub mod guard;
pub mod inline;
pub mod sequencer;
pub mod signer;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tlog::merkle::{Frontier, Hash, leaf_hash, node_hash};
use tlog::note::SignedNote;
use tlog::proof::{HashReader, ProveError};
use tlog::tlog_proof::TlogProof;

use crate::storage::StoreError;

/// The log head: how many entries are sequenced and the RFC 6962 root over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHead {
    /// Number of sequenced entries.
    pub size: u64,
    /// Root hash of the tree over entries `[0, size)`.
    pub root: Hash,
}

impl LogHead {
    /// The head of the empty log.
    pub fn empty() -> LogHead {
        LogHead {
            size: 0,
            root: tlog::empty_root(),
        }
    }
}

/// The position of a perfect subtree: height (`level`, 0 = a leaf) and index on that level.
pub type NodeKey = (u32, u64);

/// One entry waiting for an index: its outbox id and its exact bytes.
#[derive(Debug, Clone)]
pub struct PendingEntry {
    /// The `audit_entries` row id.
    pub entry_id: i64,
    /// The canonical entry bytes (the leaf data).
    pub bytes: Vec<u8>,
}

/// What one sequencing transaction writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBatch {
    /// New perfect-subtree hashes (every leaf, and every subtree the batch completes).
    pub nodes: Vec<(NodeKey, Hash)>,
    /// `(entry_id, leaf_index)` for each entry, in index order.
    pub assignments: Vec<(i64, u64)>,
    /// The head after the batch.
    pub head: LogHead,
}

/// The outcome of one sequencing attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceOutcome {
    /// Entries were sequenced; the new head and the entries' indices are committed.
    Sequenced {
        /// The head after the batch.
        head: LogHead,
        /// `(entry_id, leaf_index)` of each entry of the batch, in index order.
        assignments: Vec<(i64, u64)>,
    },
    /// No entry was pending; nothing was written.
    Idle(LogHead),
    /// The stored head is not the one the caller expected (another sequencer ran); nothing was
    /// written. The caller reloads and tries again.
    HeadMoved(LogHead),
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// The tree size it signs.
    pub size: u64,
    /// The root it signs.
    pub root: Hash,
    /// The signed note text (checkpoint body, blank line, signature lines).
    pub note: String,
}

/// What readers of the log need from a store: the `Transparency` API, proofs and receipts, the
/// startup check against the signer guard, and the offline export. Implementations:
/// `store::sqlite` and `store::postgres`, held to this contract by `store::conformance`.
///
/// Contract: every read sees only committed state. Nodes, indices and checkpoints are never
/// updated or deleted once written, except that a checkpoint of the same size may be replaced by a
/// fresher signature of the same tree; so a read of sequenced data never changes.
pub trait LogReader: Send + Sync + 'static {
    /// The committed log head.
    fn log_head(&self) -> impl Future<Output = Result<LogHead, StoreError>> + Send;

    /// The stored hashes of `keys`, in order; `None` for a node not (yet) stored.
    fn subtree_hashes(&self, keys: Vec<NodeKey>) -> impl Future<Output = Result<Vec<Option<Hash>>, StoreError>> + Send;

    /// The exact bytes of the sequenced entries `[start, end)`, in index order.
    fn entries(&self, start: u64, end: u64) -> impl Future<Output = Result<Vec<Vec<u8>>, StoreError>> + Send;

    /// The checkpoint with the largest size, if any was signed.
    fn latest_checkpoint(&self) -> impl Future<Output = Result<Option<StoredCheckpoint>, StoreError>> + Send;
}

/// What the sequencer needs from a store, besides reading the log.
///
/// Contract:
/// - `sequence` is one transaction: it reads the head (locking it), refuses with `HeadMoved` if it
///   is not `expected`, takes up to `max_entries` entries without an index, plans them with
///   [`plan_batch`], writes the nodes and indices, and moves the head with a compare-and-swap on
///   (size, root). Two concurrent callers can never both extend the same head: the head row lock,
///   the CAS and the primary keys of the nodes and indices each forbid it. Safety does not depend
///   on `try_lead`.
/// - `try_lead` is liveness only: at most one holder of a `Leadership` at a time per database
///   (PostgreSQL advisory lock; the embedded store always grants it, it has one process).
/// - `store_checkpoint` refuses (`Integrity`) a checkpoint whose size was signed with another root.
pub trait LogSequencer: LogReader {
    /// Proof of being the one sequencer (dropping it lets another replica lead).
    type Leadership: Send + Sync + 'static;

    /// Tries to become the sequencer; `None` while another replica is.
    fn try_lead(&self) -> impl Future<Output = Result<Option<Self::Leadership>, StoreError>> + Send;

    /// False once the leadership was lost (its connection died).
    fn still_leading(&self, leadership: &Self::Leadership) -> bool;

    /// Sequences up to `max_entries` pending entries on top of `expected` (see the contract).
    fn sequence(
        &self,
        expected: LogHead,
        max_entries: usize,
    ) -> impl Future<Output = Result<SequenceOutcome, StoreError>> + Send;

    /// Stores a signed checkpoint (replacing one of the same size and root).
    fn store_checkpoint(&self, checkpoint: StoredCheckpoint) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The hand-over to the store's writer, for a store that sequences inside its own write
    /// transactions (see [`inline`]); `None` (the default): the sequencer calls `sequence`.
    fn inline_sequencing(&self) -> Option<&inline::InlineSequencing> {
        None
    }

    /// Has the writer run a transaction soon even with nothing to write, which sequences what is
    /// pending (entries written outside its groups, or left over). Only for a store with
    /// `inline_sequencing`.
    fn nudge(&self) {}
}

/// Why a batch could not be planned: the stored right edge does not match the head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stored right-edge subtree hashes do not lead to the log head's root (size {size})")]
pub struct FrontierMismatch {
    /// The head size whose edge failed.
    pub size: u64,
}

/// The perfect subtrees whose roots make up the tree of `size` leaves (its frontier), largest first.
pub fn frontier_keys(size: u64) -> Vec<NodeKey> {
    let mut keys = Vec::new();
    let mut start = 0u64;
    for level in (0..64u32).rev() {
        let width = 1u64 << level;
        if size & width != 0 {
            keys.push((level, start >> level));
            start += width;
        }
    }
    keys
}

/// Plans a batch on top of `head`, given the hashes of `frontier_keys(head.size)` and the entries
/// in the order they get their indices. Checks that the frontier leads to `head.root`, so a
/// corrupted node is never built upon.
pub fn plan_batch(
    head: LogHead,
    frontier: Vec<Hash>,
    entries: &[PendingEntry],
) -> Result<PlannedBatch, FrontierMismatch> {
    let mismatch = FrontierMismatch { size: head.size };
    let levels: Vec<u32> = frontier_keys(head.size).into_iter().map(|(level, _)| level).collect();
    if levels.len() != frontier.len() {
        return Err(mismatch);
    }
    let check = Frontier::from_parts(head.size, frontier.clone()).map_err(|_| mismatch.clone())?;
    if check.root() != head.root {
        return Err(mismatch);
    }
    // The right edge as a stack of (level, hash), largest subtree at the bottom.
    let mut edge: Vec<(u32, Hash)> = levels.into_iter().zip(frontier).collect();
    let mut nodes = Vec::with_capacity(entries.len() * 2);
    let mut assignments = Vec::with_capacity(entries.len());
    let mut index = head.size;
    for entry in entries {
        let mut hash = leaf_hash(&entry.bytes);
        nodes.push(((0, index), hash));
        let mut level = 0u32;
        // A new leaf completes every subtree on the edge of its own height, right to left.
        while let Some(&(top_level, top_hash)) = edge.last() {
            if top_level != level {
                break;
            }
            edge.pop();
            hash = node_hash(&top_hash, &hash);
            level += 1;
            nodes.push(((level, index >> level), hash));
        }
        edge.push((level, hash));
        assignments.push((entry.entry_id, index));
        index += 1;
    }
    let hashes: Vec<Hash> = edge.into_iter().map(|(_, hash)| hash).collect();
    let root = Frontier::from_parts(index, hashes).map_err(|_| mismatch)?.root();
    Ok(PlannedBatch {
        nodes,
        assignments,
        head: LogHead { size: index, root },
    })
}

/// Why a proof could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The sizes or index are out of range (caller error).
    #[error("{0}")]
    OutOfRange(String),
    /// A node the proof needs is not stored (the store is behind or damaged).
    #[error("subtree {1} at level {0} is not stored")]
    Missing(u32, u64),
    /// A stored checkpoint could not be parsed into a receipt (the store is damaged).
    #[error("stored checkpoint of size {0} is not a valid signed note")]
    BadCheckpoint(u64),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Records the keys a proof asks for (first pass; the answers are placeholders).
struct KeyRecorder(RefCell<Vec<NodeKey>>);

impl HashReader for KeyRecorder {
    type Error = ProofError;

    fn subtree_hash(&self, level: u32, index: u64) -> Result<Hash, ProofError> {
        self.0.borrow_mut().push((level, index));
        Ok([0; 32])
    }
}

/// Answers from hashes fetched in one query (second pass).
struct FetchedNodes(HashMap<NodeKey, Hash>);

impl HashReader for FetchedNodes {
    type Error = ProofError;

    fn subtree_hash(&self, level: u32, index: u64) -> Result<Hash, ProofError> {
        self.0
            .get(&(level, index))
            .copied()
            .ok_or(ProofError::Missing(level, index))
    }
}

fn prove_error(error: ProveError<ProofError>) -> ProofError {
    match error {
        ProveError::Reader(error) => error,
        other => ProofError::OutOfRange(other.to_string()),
    }
}

/// Runs `prove` twice: once to learn which subtrees it reads (the proof's shape depends only on
/// the index and sizes), then over those hashes fetched from the store in one query.
async fn prove<L, P>(store: &L, prove: P) -> Result<Vec<Hash>, ProofError>
where
    L: LogReader,
    P: Fn(&dyn HashReader<Error = ProofError>) -> Result<Vec<Hash>, ProveError<ProofError>>,
{
    let recorder = KeyRecorder(RefCell::new(Vec::new()));
    prove(&recorder).map_err(prove_error)?;
    let keys = recorder.0.into_inner();
    let hashes = store.subtree_hashes(keys.clone()).await?;
    let mut fetched = HashMap::with_capacity(keys.len());
    for (key, hash) in keys.into_iter().zip(hashes) {
        let hash = hash.ok_or(ProofError::Missing(key.0, key.1))?;
        fetched.insert(key, hash);
    }
    prove(&FetchedNodes(fetched)).map_err(prove_error)
}

/// The inclusion proof of leaf `index` in the tree of size `size` (`size` must be sequenced).
pub async fn inclusion_proof<L: LogReader>(store: &L, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
    prove(store, |reader| tlog::proof::inclusion_proof(reader, index, size)).await
}

/// The consistency proof from `old_size` to `new_size` (`new_size` must be sequenced).
pub async fn consistency_proof<L: LogReader>(store: &L, old_size: u64, new_size: u64) -> Result<Vec<Hash>, ProofError> {
    prove(store, |reader| {
        tlog::proof::consistency_proof(reader, old_size, new_size)
    })
    .await
}

/// How often `receipt` looks for a covering checkpoint.
const RECEIPT_POLL: Duration = Duration::from_millis(20);

/// A c2sp.org/tlog-proof receipt for entry `index` against the latest signed checkpoint, once one
/// covers it; waits at most `wait` for that checkpoint, then gives `None`.
pub async fn receipt<L: LogReader>(store: &L, index: u64, wait: Duration) -> Result<Option<TlogProof>, ProofError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(checkpoint) = store.latest_checkpoint().await?
            && checkpoint.size > index
        {
            let hashes = inclusion_proof(store, index, checkpoint.size).await?;
            let note = SignedNote::parse(&checkpoint.note).map_err(|_| ProofError::BadCheckpoint(checkpoint.size))?;
            let receipt =
                TlogProof::new(index, hashes, note, None).map_err(|_| ProofError::BadCheckpoint(checkpoint.size))?;
            return Ok(Some(receipt));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(RECEIPT_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(range: std::ops::Range<u64>) -> Vec<PendingEntry> {
        range
            .map(|number| PendingEntry {
                entry_id: number as i64 + 100,
                bytes: format!("entry {number}").into_bytes(),
            })
            .collect()
    }

    #[test]
    fn batches_build_the_rfc6962_tree_and_every_perfect_subtree() {
        let all = entries(0..37);
        let leaf_hashes: Vec<Hash> = all.iter().map(|entry| leaf_hash(&entry.bytes)).collect();
        let mut head = LogHead::empty();
        let mut stored: HashMap<NodeKey, Hash> = HashMap::new();
        for batch in [&all[0..1], &all[1..8], &all[8..9], &all[9..30], &all[30..37]] {
            let frontier = frontier_keys(head.size).iter().map(|key| stored[key]).collect();
            let planned = plan_batch(head, frontier, batch).expect("plan");
            for (key, hash) in planned.nodes {
                assert!(stored.insert(key, hash).is_none(), "node {key:?} written twice");
            }
            head = planned.head;
            assert_eq!(head.root, tlog::merkle::tree_root(&leaf_hashes[..head.size as usize]));
        }
        // Every perfect subtree inside the tree is stored with its RFC 6962 hash.
        for level in 0..6u32 {
            for index in 0..(37u64 >> level) {
                let start = (index << level) as usize;
                let expected = tlog::merkle::tree_root(&leaf_hashes[start..start + (1 << level)]);
                assert_eq!(stored[&(level, index)], expected, "node ({level}, {index})");
            }
        }
    }

    #[test]
    fn a_frontier_that_does_not_match_the_head_is_refused() {
        let planned = plan_batch(LogHead::empty(), vec![], &entries(0..3)).expect("plan");
        let wrong = vec![[7u8; 32], [8u8; 32]];
        assert_eq!(
            plan_batch(planned.head, wrong, &entries(3..4)),
            Err(FrontierMismatch { size: 3 })
        );
        assert_eq!(frontier_keys(3), vec![(1, 0), (0, 2)]);
        assert_eq!(frontier_keys(0), vec![]);
        assert_eq!(frontier_keys(13), vec![(3, 0), (2, 2), (0, 12)]);
    }
}
