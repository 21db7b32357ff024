//! The sequencer: a background task that gives pending audit entries their log indices in batches
//! (group commit) and signs one checkpoint per batch with the audit key.
//!
//! One replica sequences at a time (`LogSequencer::try_lead`, a PostgreSQL advisory lock); the others
//! retry every `lead_retry`. Safety does not rest on that lock but on the store's compare-and-swap
//! of the head, and on the rules checked here before every signature: the new tree must be
//! consistent with the last checkpoint stored in the database, and the signer guard (`guard`),
//! whose state lives outside the database, must accept a consistency proof from the last tree it
//! authorized; so a checkpoint that forks or rolls back the log is never signed, even if the
//! database lies. Sequencing and signing run side by side (issuers wait for a sequencing
//! transaction, not for the HSM; one signature covers whatever was sequenced meanwhile), and the
//! signed log may lag the sequenced one by at most `stall_bound`. While idle nothing is signed,
//! except a heartbeat signature of the same head every `heartbeat`.
//!
//! On a store that groups its writes (the embedded store) the sequencing itself is handed over to
//! the store's writer, which sequences inside the transactions that write the entries
//! ([`super::inline`]); the sequencer then records the batches it reports and keeps every rule
//! above.
//!
//! When sequencing or signing has kept failing for `stall_bound`, or the signed log has lagged
//! that long, the sequencer stops sequencing and reports the log unhealthy
//! ([`SequencerHandle::log_healthy`]): the issuer refuses new issuance up front (UNAVAILABLE)
//! instead of committing certificates it would have to withhold; the next signed checkpoint makes
//! it healthy again.
//!
//! It runs as a supervised task (`tasks`): told to stop, it stops sequencing and signs the head it
//! sequenced if no checkpoint covers it yet, so that a clean shutdown leaves the log signed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tlog::checkpoint::Checkpoint;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::guard::{GuardError, SignerGuard};
use super::inline::{InlineReport, InlineSequencing};
use super::signer::AuditKey;
use super::{LogHead, LogSequencer, SequenceOutcome, StoredCheckpoint, consistency_proof};
use tokio_util::sync::CancellationToken;

/// How the sequencer runs.
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    /// Most entries in one batch (one transaction, one signature).
    pub max_batch: usize,
    /// How often to look for entries written by other replicas when nobody wakes the sequencer.
    pub poll_interval: Duration,
    /// Re-sign the unchanged head this often (liveness of the signer), even when idle.
    pub heartbeat: Duration,
    /// At least this long between two checkpoint signatures: under load one signature covers
    /// more batches, and the HSM signs at most 1/interval checkpoints per second.
    pub checkpoint_interval: Duration,
    /// How often a replica that is not the sequencer tries to become it.
    pub lead_retry: Duration,
    /// How long sequencing or signing may keep failing before the log is reported unhealthy.
    pub stall_bound: Duration,
}

/// The issuer's side of the sequencer: wake it after a commit, and watch the sequenced size.
#[derive(Debug, Clone)]
pub struct SequencerHandle {
    wake: Arc<Notify>,
    sequenced: watch::Receiver<u64>,
    healthy: watch::Receiver<bool>,
    recent: Arc<Mutex<RecentIndices>>,
}

/// How many of the latest `(entry id, log index)` assignments the sequencer keeps for issuers.
const RECENT_INDICES: usize = 1 << 16;

/// The indices this process's sequencer gave most recently, so that a waiting issuer learns its
/// entry's index without a store read. Only committed batches are added; the oldest go first.
#[derive(Debug, Default)]
struct RecentIndices {
    by_entry: HashMap<i64, u64>,
    order: VecDeque<i64>,
}

impl RecentIndices {
    fn add(&mut self, assignments: &[(i64, u64)]) {
        for &(entry_id, index) in assignments {
            self.by_entry.insert(entry_id, index);
            self.order.push_back(entry_id);
        }
        while self.order.len() > RECENT_INDICES {
            if let Some(oldest) = self.order.pop_front() {
                self.by_entry.remove(&oldest);
            }
        }
    }
}

impl SequencerHandle {
    /// Asks the sequencer to run now (entries were committed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The size of the log as last sequenced by this process's sequencer.
    pub fn sequenced(&self) -> watch::Receiver<u64> {
        self.sequenced.clone()
    }

    /// The log index this process's sequencer gave entry `entry_id`, if it did so recently (and
    /// committed it). `None` says nothing: another replica may have sequenced it, or long ago; the
    /// store knows (`issuer::IssuanceStore::log_index`).
    pub fn recent_index(&self, entry_id: i64) -> Option<u64> {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.by_entry.get(&entry_id).copied()
    }

    /// False while this process leads and sequencing or signing has been failing for longer than
    /// `stall_bound` (a replica that does not lead always says true: its issuances are bounded by
    /// their own wait for an index).
    pub fn log_healthy(&self) -> bool {
        *self.healthy.borrow()
    }
}

impl<L: LogSequencer> Sequencer<L> {
    /// A sequencer over `store`, and the issuers' handle on it; run it with [`Sequencer::run`].
    /// The guard must have passed [`super::guard::check_at_startup`] against `store`.
    pub fn new(
        store: Arc<L>,
        key: AuditKey,
        guard: SignerGuard,
        config: SequencerConfig,
    ) -> (Sequencer<L>, SequencerHandle) {
        let wake = Arc::new(Notify::new());
        let (sequenced_sender, sequenced) = watch::channel(0);
        let (healthy_sender, healthy) = watch::channel(true);
        let recent = Arc::new(Mutex::new(RecentIndices::default()));
        let sequencer = Sequencer {
            recent: Arc::clone(&recent),
            store,
            key,
            guard: Arc::new(Mutex::new(guard)),
            config,
            wake: Arc::clone(&wake),
            sequenced: sequenced_sender,
            healthy: healthy_sender,
        };
        let handle = SequencerHandle {
            wake,
            sequenced,
            healthy,
            recent,
        };
        (sequencer, handle)
    }
}

/// The sequencer's state; [`Sequencer::run`] is the task.
pub struct Sequencer<L> {
    store: Arc<L>,
    key: AuditKey,
    /// Shared with blocking threads, which do its file I/O (an fsync per signature).
    guard: Arc<Mutex<SignerGuard>>,
    config: SequencerConfig,
    wake: Arc<Notify>,
    sequenced: watch::Sender<u64>,
    healthy: watch::Sender<bool>,
    /// Filled before `sequenced` changes, so an issuer woken by it finds its index here.
    recent: Arc<Mutex<RecentIndices>>,
}

/// The batches sequenced but not yet covered by a signed checkpoint: their sizes and when they
/// were sequenced, oldest first.
#[derive(Debug, Default)]
struct UnsignedBatches(VecDeque<(u64, Instant)>);

impl UnsignedBatches {
    fn sequenced(&mut self, size: u64) {
        self.0.push_back((size, Instant::now()));
    }

    /// Forgets the batches a checkpoint of `signed_size` covers.
    fn signed_up_to(&mut self, signed_size: u64) {
        while self.0.front().is_some_and(|(size, _)| *size <= signed_size) {
            self.0.pop_front();
        }
    }

    /// When the oldest batch no checkpoint covers was sequenced.
    fn oldest(&self) -> Option<Instant> {
        self.0.front().map(|(_, at)| *at)
    }
}

/// Pause after a failure (store or HSM down) before trying again.
const FAILURE_BACKOFF: Duration = Duration::from_millis(500);

/// Pause after the guard or the consistency check refused: that needs an operator, not a retry.
const REFUSAL_BACKOFF: Duration = Duration::from_secs(5);

impl<L: LogSequencer> Sequencer<L> {
    /// Leads whenever it can, until `stop` is cancelled; then signs what it sequenced and returns.
    pub async fn run(self, stop: CancellationToken) {
        // Set while this replica leads; left set when `stop` interrupts its leadership.
        let leading = AtomicBool::new(false);
        tokio::select! {
            () = self.lead_while_running(&leading) => {}
            () = stop.cancelled() => {}
        }
        if leading.load(Ordering::Relaxed) {
            self.sign_before_stopping().await;
        }
    }

    /// Signs the sequenced head if the latest checkpoint does not cover it (the last batches before
    /// a shutdown). Best effort: a failure here is what a crash would leave, and the next start
    /// signs that head after checking it.
    async fn sign_before_stopping(&self) {
        let outcome = async {
            let head = self.store.log_head().await?;
            let previous = self.store.latest_checkpoint().await?;
            if previous
                .as_ref()
                .is_some_and(|signed| signed.size == head.size && signed.root == head.root)
            {
                return Ok::<_, SequencerError>(None);
            }
            self.sign(previous.as_ref(), head).await.map(|signed| Some(signed.size))
        }
        .await;
        match outcome {
            Ok(Some(size)) => tracing::info!(size, "sequencer: signed the last head before stopping"),
            Ok(None) => tracing::debug!("sequencer: the log was signed when it stopped"),
            Err(error) => {
                tracing::warn!(%error, "sequencer: cannot sign the last head before stopping; the next start signs it")
            }
        }
    }

    async fn lead_while_running(&self, leading: &AtomicBool) {
        let mut failing_since: Option<Instant> = None;
        // Batches sequenced but not yet covered by a checkpoint (kept across leaderships, so that a
        // failing signer cannot reset the lag bound by stepping down and up again).
        let mut unsigned = UnsignedBatches::default();
        loop {
            let leadership = match self.store.try_lead().await {
                Ok(Some(leadership)) => leadership,
                Ok(None) => {
                    failing_since = None;
                    self.set_healthy(true);
                    tokio::time::sleep(self.config.lead_retry).await;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "sequencer: cannot try to take the lead");
                    tokio::time::sleep(self.config.lead_retry).await;
                    continue;
                }
            };
            tracing::info!("sequencer: leading");
            leading.store(true, Ordering::Relaxed);
            let result = self.lead(&leadership, &mut failing_since, &mut unsigned).await;
            leading.store(false, Ordering::Relaxed);
            drop(leadership);
            let backoff = match result {
                Ok(()) => {
                    // The leadership was lost: another replica leads now, which is not a failure,
                    // and this replica's issuances are bounded by their own wait for an index.
                    failing_since = None;
                    self.set_healthy(true);
                    tokio::time::sleep(FAILURE_BACKOFF).await;
                    continue;
                }
                Err(error @ (SequencerError::Inconsistent(_) | SequencerError::Guard(_))) => {
                    // Loud on purpose: the database contradicts what was signed before.
                    tracing::error!(%error, "SEQUENCER REFUSED TO SIGN: the log may have been rolled back or rewritten; new issuance is refused until an operator investigates");
                    REFUSAL_BACKOFF
                }
                Err(error) => {
                    tracing::warn!(%error, "sequencer: stepping down after a failure");
                    FAILURE_BACKOFF
                }
            };
            let since = *failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.config.stall_bound {
                self.set_healthy(false);
            }
            tokio::time::sleep(backoff).await;
        }
    }

    /// Tells the issuer whether the log keeps up, logging the transitions.
    fn set_healthy(&self, healthy: bool) {
        let changed = self.healthy.send_if_modified(|published| {
            let changed = *published != healthy;
            *published = healthy;
            changed
        });
        if changed && healthy {
            tracing::info!("audit log healthy again: issuance resumes");
        } else if changed {
            tracing::error!(bound = ?self.config.stall_bound, "audit log stalled: new issuance answers UNAVAILABLE until a checkpoint is signed");
        }
    }

    /// Sequences and signs while the leadership holds; returns on a failure that needs a reload.
    ///
    /// Two loops run side by side: one sequences batches as fast as the store commits them, the
    /// other signs the latest sequenced head whenever it is free (so under load one signature
    /// covers several batches, and issuers wait for a sequencing transaction, not for the HSM).
    /// The signed log may lag the sequenced one, but not for longer than `stall_bound`: past it
    /// the sequencing loop stops and the log is reported unhealthy (fail closed).
    async fn lead(
        &self,
        leadership: &L::Leadership,
        failing_since: &mut Option<Instant>,
        unsigned: &mut UnsignedBatches,
    ) -> Result<(), SequencerError> {
        let head = self.store.log_head().await?;
        let previous = self.store.latest_checkpoint().await?;
        // Nothing is built on a head that was not checked first: it may have been rewritten while
        // nobody led. Signing it checks it against the last checkpoint and the guard.
        let signed = self.sign(previous.as_ref(), head).await?;
        *failing_since = None;
        self.set_healthy(true);
        let (head_sender, head_receiver) = watch::channel(head);
        let (signed_sender, signed_receiver) = watch::channel(signed.size);
        tokio::select! {
            result = self.sequence_loop(leadership, head, head_sender, signed_receiver, unsigned) => result,
            result = self.sign_loop(leadership, signed, head_receiver, signed_sender, failing_since) => result,
        }
    }

    /// Sequences pending entries onto `head`, publishing every new head to the signing loop and
    /// to waiting issuers, unless the signed log has lagged for longer than `stall_bound`.
    async fn sequence_loop(
        &self,
        leadership: &L::Leadership,
        mut head: LogHead,
        heads: watch::Sender<LogHead>,
        mut signed_size: watch::Receiver<u64>,
        unsigned: &mut UnsignedBatches,
    ) -> Result<(), SequencerError> {
        if let Some(inline) = self.store.inline_sequencing() {
            return self
                .sequence_inline(inline, leadership, head, heads, signed_size, unsigned)
                .await;
        }
        self.publish(head.size);
        while self.store.still_leading(leadership) {
            if self.lagging(unsigned, &mut signed_size) {
                // Do not run further ahead of the signed log: new entries stay unindexed, so
                // issuance is withheld or refused until signing catches up.
                self.set_healthy(false);
                tokio::select! {
                    _ = signed_size.changed() => {}
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                }
                continue;
            }
            match self.store.sequence(head, self.config.max_batch).await? {
                SequenceOutcome::Sequenced {
                    head: new_head,
                    assignments,
                } => {
                    self.record(unsigned, new_head, &assignments);
                    head = new_head;
                    heads.send_replace(head);
                    self.publish(head.size);
                    if assignments.len() < self.config.max_batch {
                        // The batch took everything pending when it read: anything committed since
                        // has woken us (a commit notifies after it returns), so wait for that wake
                        // rather than spend a write transaction finding nothing. The timer covers
                        // entries other replicas commit.
                        self.until_woken_or_polled().await;
                    }
                }
                SequenceOutcome::Idle(current) if current != head => {
                    // The store checks the expected head first; this is only a second line.
                    return Err(SequencerError::HeadMoved {
                        expected: head.size,
                        actual: current.size,
                    });
                }
                SequenceOutcome::Idle(_) => self.until_woken_or_polled().await,
                SequenceOutcome::HeadMoved(actual) => {
                    // Another sequencer extended (or someone rewrote) the log: only possible if
                    // two replicas both believe they lead, or behind the CA's back. The CAS kept
                    // the log linear; step down, so that the head is checked against what was
                    // signed before (and the guard) before anything is built on it.
                    return Err(SequencerError::HeadMoved {
                        expected: head.size,
                        actual: actual.size,
                    });
                }
            }
        }
        Ok(())
    }

    /// Sequencing handed over to the store's writer (`inline`), which sequences inside its own
    /// group transactions: records the batches it reports (each must extend the last), publishes
    /// them like `sequence_loop` does, pauses the writer while the signed log lags past
    /// `stall_bound`, and nudges it when entries may be pending that no group would pick up (a
    /// batch that was full, the end of a pause, and every poll interval for entries written
    /// outside the groups). Takes sequencing back when it returns or is dropped.
    async fn sequence_inline(
        &self,
        inline: &InlineSequencing,
        leadership: &L::Leadership,
        mut head: LogHead,
        heads: watch::Sender<LogHead>,
        mut signed_size: watch::Receiver<u64>,
        unsigned: &mut UnsignedBatches,
    ) -> Result<(), SequencerError> {
        struct TakeBack<'a>(&'a InlineSequencing);
        impl Drop for TakeBack<'_> {
            fn drop(&mut self) {
                self.0.take_back();
            }
        }
        self.publish(head.size);
        inline.hand_over(head, self.config.max_batch);
        let _take_back = TakeBack(inline);
        self.store.nudge();
        let mut paused = false;
        while self.store.still_leading(leadership) {
            let mut more_pending = false;
            for report in inline.take_reports() {
                match report {
                    InlineReport::Sequenced {
                        previous,
                        head: new_head,
                        assignments,
                        full,
                    } => {
                        if previous != head {
                            return Err(SequencerError::HeadMoved {
                                expected: head.size,
                                actual: previous.size,
                            });
                        }
                        self.record(unsigned, new_head, &assignments);
                        head = new_head;
                        more_pending = full;
                    }
                    InlineReport::HeadMoved { expected, actual } => {
                        return Err(SequencerError::HeadMoved {
                            expected: expected.size,
                            actual: actual.size,
                        });
                    }
                    InlineReport::Failed(error) => return Err(error.into()),
                }
            }
            heads.send_if_modified(|published| {
                let changed = *published != head;
                *published = head;
                changed
            });
            self.publish(head.size);
            let lagging = self.lagging(unsigned, &mut signed_size);
            inline.pause(lagging);
            if lagging {
                // Do not run further ahead of the signed log: new entries stay unindexed, so
                // issuance is withheld or refused until signing catches up.
                self.set_healthy(false);
            } else if more_pending || paused {
                self.store.nudge();
            }
            paused = lagging;
            tokio::select! {
                () = inline.reported() => {}
                // Local commits' wakes are not needed here: the writer sequences the entries it
                // commits (at once when a caller waits for the index, else within its delay).
                _ = signed_size.changed() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {
                    if !lagging {
                        self.store.nudge();
                    }
                }
            }
        }
        Ok(())
    }

    /// Signs the latest sequenced head whenever it differs from the last signed one, and the same
    /// head again every `heartbeat` while idle. A successful signature clears `failing_since`.
    async fn sign_loop(
        &self,
        leadership: &L::Leadership,
        mut signed: StoredCheckpoint,
        mut heads: watch::Receiver<LogHead>,
        signed_size: watch::Sender<u64>,
        failing_since: &mut Option<Instant>,
    ) -> Result<(), SequencerError> {
        let mut last_signature = Instant::now();
        while self.store.still_leading(leadership) {
            let head = *heads.borrow_and_update();
            let unsigned = signed.size != head.size || signed.root != head.root;
            let since_signature = last_signature.elapsed();
            if unsigned && since_signature < self.config.checkpoint_interval {
                tokio::time::sleep(self.config.checkpoint_interval - since_signature).await;
                continue;
            }
            if unsigned || since_signature >= self.config.heartbeat {
                signed = self.sign(Some(&signed), head).await?;
                signed_size.send_replace(signed.size);
                last_signature = Instant::now();
                *failing_since = None;
                self.set_healthy(true);
                continue;
            }
            let until_heartbeat = self.config.heartbeat.saturating_sub(last_signature.elapsed());
            tokio::select! {
                changed = heads.changed() => {
                    if changed.is_err() {
                        // The sequencing loop ended: `lead` is returning.
                        return Ok(());
                    }
                }
                () = tokio::time::sleep(until_heartbeat) => {}
            }
        }
        Ok(())
    }

    /// Records a committed batch: its size for the lag bound, its indices for waiting issuers.
    fn record(&self, unsigned: &mut UnsignedBatches, head: LogHead, assignments: &[(i64, u64)]) {
        unsigned.sequenced(head.size);
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(assignments);
    }

    /// Whether the oldest batch no checkpoint covers yet (after the latest signed size) has waited
    /// for `stall_bound` or longer.
    fn lagging(&self, unsigned: &mut UnsignedBatches, signed_size: &mut watch::Receiver<u64>) -> bool {
        unsigned.signed_up_to(*signed_size.borrow_and_update());
        unsigned
            .oldest()
            .is_some_and(|since| since.elapsed() >= self.config.stall_bound)
    }

    /// Waits for a local commit's wake, or at most one poll interval (entries other replicas commit).
    async fn until_woken_or_polled(&self) {
        tokio::select! {
            () = self.wake.notified() => {}
            () = tokio::time::sleep(self.config.poll_interval) => {}
        }
    }

    /// Tells waiting issuers the sequenced size, waking them only when it changed.
    fn publish(&self, size: u64) {
        self.sequenced.send_if_modified(|published| {
            let changed = *published != size;
            *published = size;
            changed
        });
    }

    /// Signs `head` after checking it is consistent with the last signed checkpoint and after the
    /// guard has authorized (and durably recorded) it, and stores it.
    async fn sign(
        &self,
        previous: Option<&StoredCheckpoint>,
        head: LogHead,
    ) -> Result<StoredCheckpoint, SequencerError> {
        if let Some(previous) = previous {
            if previous.size > head.size {
                return Err(SequencerError::Inconsistent(format!(
                    "the head (size {}) is behind the last signed checkpoint (size {})",
                    head.size, previous.size
                )));
            }
            let proof = consistency_proof(self.store.as_ref(), previous.size, head.size)
                .await
                .map_err(|error| SequencerError::Inconsistent(error.to_string()))?;
            tlog::proof::verify_consistency(previous.size, head.size, &previous.root, &head.root, &proof).map_err(
                |error| {
                    SequencerError::Inconsistent(format!(
                        "size {} is not consistent with signed size {}: {error}",
                        head.size, previous.size
                    ))
                },
            )?;
        }
        self.authorize(head).await?;
        let checkpoint = Checkpoint::new(self.key.origin(), head.size, head.root)
            .map_err(|error| SequencerError::Inconsistent(error.to_string()))?;
        let note = self.key.sign(&checkpoint).await?;
        let stored = StoredCheckpoint {
            size: head.size,
            root: head.root,
            note: note.to_string(),
        };
        self.store.store_checkpoint(stored.clone()).await?;
        tracing::debug!(size = head.size, "sequencer: checkpoint signed");
        Ok(stored)
    }
}

impl<L: LogSequencer> Sequencer<L> {
    /// Has the guard check `head` against the last tree it authorized (re-read from its file) with
    /// a consistency proof from the stored nodes, and record it before anything is signed.
    async fn authorize(&self, head: LogHead) -> Result<(), SequencerError> {
        let guard = Arc::clone(&self.guard);
        let guarded = tokio::task::spawn_blocking(move || lock(&guard).refresh())
            .await
            .map_err(|_| SequencerError::GuardTask)??;
        let proof = match guarded {
            Some(tree) if tree.size > 0 && tree.size < head.size => {
                consistency_proof(self.store.as_ref(), tree.size, head.size)
                    .await
                    .map_err(|error| SequencerError::Inconsistent(error.to_string()))?
            }
            _ => Vec::new(),
        };
        let guard = Arc::clone(&self.guard);
        tokio::task::spawn_blocking(move || lock(&guard).authorize(head, &proof))
            .await
            .map_err(|_| SequencerError::GuardTask)??;
        Ok(())
    }
}

/// The guard's state is a file plus a copy in memory updated only after the file: a panic in
/// between leaves the memory behind the file, which the next `refresh` corrects.
fn lock(guard: &Mutex<SignerGuard>) -> std::sync::MutexGuard<'_, SignerGuard> {
    guard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why the sequencer stepped down for a while.
#[derive(Debug, thiserror::Error)]
enum SequencerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::storage::StoreError),
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] super::signer::AuditKeyError),
    /// The tree is not consistent with what was signed before: refuse to sign (fork or rollback).
    #[error("refusing to sign: {0}")]
    Inconsistent(String),
    /// The signer guard refused the tree, or could not read or write its file.
    #[error("the signer guard refuses: {0}")]
    Guard(#[from] GuardError),
    /// The guard's blocking task died.
    #[error("the signer guard task failed")]
    GuardTask,
    /// The stored head is not the one this sequencer left (another writer): step down and check.
    #[error("the log head moved underneath (expected size {expected}, found {actual})")]
    HeadMoved {
        /// The size this sequencer expected.
        expected: u64,
        /// The size found.
        actual: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_indices_keep_the_latest_assignments_only() {
        let mut recent = RecentIndices::default();
        let first: Vec<(i64, u64)> = (0..10).map(|entry| (1000 + entry, entry as u64)).collect();
        recent.add(&first);
        assert_eq!(recent.by_entry.get(&1003), Some(&3));
        let later: Vec<(i64, u64)> = (0..RECENT_INDICES as i64)
            .map(|entry| (5000 + entry, 10 + entry as u64))
            .collect();
        recent.add(&later);
        assert_eq!(recent.by_entry.len(), RECENT_INDICES);
        assert_eq!(recent.by_entry.get(&1009), None, "the oldest went first");
        assert_eq!(recent.by_entry.get(&5000), Some(&10));
        assert_eq!(
            recent.by_entry.get(&(5000 + RECENT_INDICES as i64 - 1)),
            Some(&(9 + RECENT_INDICES as u64))
        );
    }

    #[test]
    fn the_lag_is_the_age_of_the_oldest_batch_no_checkpoint_covers() {
        let mut unsigned = UnsignedBatches::default();
        assert_eq!(unsigned.oldest(), None);
        unsigned.sequenced(10);
        let first = unsigned.oldest().expect("one batch");
        std::thread::sleep(Duration::from_millis(5));
        unsigned.sequenced(20);
        unsigned.sequenced(30);
        // A checkpoint of size 15 covers only the first batch: the lag now starts at the second,
        // even though the log was never fully signed in between.
        unsigned.signed_up_to(15);
        let second = unsigned.oldest().expect("two batches left");
        assert!(second > first);
        unsigned.signed_up_to(20);
        assert!(unsigned.oldest().is_some());
        unsigned.signed_up_to(30);
        assert_eq!(unsigned.oldest(), None);
    }
}
