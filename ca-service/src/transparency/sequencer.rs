//! The sequencer: a background task that gives pending audit entries their log indices in batches
//! (group commit) and signs one checkpoint per batch with the audit key.
//!
//! One replica sequences at a time (`LogStore::try_lead`, a PostgreSQL advisory lock); the others
//! retry every `lead_retry`. Safety does not rest on that lock but on the store's compare-and-swap
//! of the head, and on the rule checked here before every signature: the new tree must be
//! consistent with the last signed one (a consistency proof from the stored nodes is verified), so
//! a checkpoint that forks the log is never signed. A new batch is sequenced only once the previous
//! one is signed, so the signed log lags the sequenced one by at most one batch. While idle nothing
//! is signed, except a heartbeat signature of the same head every `heartbeat`.

use std::sync::Arc;
use std::time::Duration;

use tlog::checkpoint::Checkpoint;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::signer::AuditKey;
use super::{LogHead, LogStore, SequenceOutcome, StoredCheckpoint, consistency_proof};
use crate::hsm::Hsm;

/// How the sequencer runs.
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    /// Most entries in one batch (one transaction, one signature).
    pub max_batch: usize,
    /// How often to look for entries written by other replicas when nobody wakes the sequencer.
    pub poll_interval: Duration,
    /// Re-sign the unchanged head this often (liveness of the signer), even when idle.
    pub heartbeat: Duration,
    /// How often a replica that is not the sequencer tries to become it.
    pub lead_retry: Duration,
}

/// The issuer's side of the sequencer: wake it after a commit, and watch the sequenced size.
#[derive(Debug, Clone)]
pub struct SequencerHandle {
    wake: Arc<Notify>,
    sequenced: watch::Receiver<u64>,
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
}

/// Starts the sequencer on the runtime; it runs until the returned task is aborted.
pub fn spawn<L: LogStore>(
    store: Arc<L>,
    hsm: Hsm,
    key: AuditKey,
    config: SequencerConfig,
) -> (SequencerHandle, tokio::task::JoinHandle<()>) {
    let wake = Arc::new(Notify::new());
    let (sequenced_sender, sequenced) = watch::channel(0);
    let sequencer = Sequencer {
        store,
        hsm,
        key,
        config,
        wake: Arc::clone(&wake),
        sequenced: sequenced_sender,
    };
    let task = tokio::spawn(sequencer.run());
    (SequencerHandle { wake, sequenced }, task)
}

struct Sequencer<L> {
    store: Arc<L>,
    hsm: Hsm,
    key: AuditKey,
    config: SequencerConfig,
    wake: Arc<Notify>,
    sequenced: watch::Sender<u64>,
}

/// Pause after a failure (store or HSM down) before trying again.
const FAILURE_BACKOFF: Duration = Duration::from_millis(500);

impl<L: LogStore> Sequencer<L> {
    async fn run(self) {
        loop {
            let leadership = match self.store.try_lead().await {
                Ok(Some(leadership)) => leadership,
                Ok(None) => {
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
            if let Err(error) = self.lead(&leadership).await {
                tracing::warn!(%error, "sequencer: stepping down after a failure");
            }
            drop(leadership);
            tokio::time::sleep(FAILURE_BACKOFF).await;
        }
    }

    /// Sequences and signs while the leadership holds; returns on a failure that needs a reload.
    async fn lead(&self, leadership: &L::Leadership) -> Result<(), SequencerError> {
        let mut head = self.store.log_head().await?;
        let mut signed = self.store.latest_checkpoint().await?;
        let mut last_signature: Option<Instant> = None;
        while self.store.still_leading(leadership) {
            // Sign before sequencing more: at most one batch is ever sequenced but unsigned, so
            // when the HSM cannot sign, new entries stay unindexed and issuance fails closed
            // after its bound instead of running ahead of the signed log.
            let unsigned = signed
                .as_ref()
                .is_none_or(|checkpoint| checkpoint.size != head.size || checkpoint.root != head.root);
            let heartbeat_due = last_signature.is_none_or(|at| at.elapsed() >= self.config.heartbeat);
            if unsigned || heartbeat_due {
                let checkpoint = self.sign(signed.as_ref(), head).await?;
                signed = Some(checkpoint);
                last_signature = Some(Instant::now());
            }
            match self.store.sequence(head, self.config.max_batch).await? {
                SequenceOutcome::Sequenced(new_head) => {
                    // Straight back to the top: sign this batch, then look for more.
                    head = new_head;
                    self.publish(head.size);
                }
                SequenceOutcome::Idle(current) => {
                    head = current;
                    self.publish(head.size);
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(self.config.poll_interval) => {}
                    }
                }
                SequenceOutcome::HeadMoved(actual) => {
                    // Another sequencer extended the log: only possible if two replicas both
                    // believe they lead. The CAS kept the log linear; follow it (the signature
                    // at the top still checks consistency with what was signed before).
                    tracing::warn!(
                        expected = head.size,
                        actual = actual.size,
                        "sequencer: the log head moved underneath"
                    );
                    head = actual;
                }
            }
        }
        Ok(())
    }

    /// Tells waiting issuers the sequenced size, waking them only when it changed.
    fn publish(&self, size: u64) {
        self.sequenced.send_if_modified(|published| {
            let changed = *published != size;
            *published = size;
            changed
        });
    }

    /// Signs `head` after checking it is consistent with the last signed checkpoint, and stores it.
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
        let checkpoint = Checkpoint::new(self.key.origin(), head.size, head.root)
            .map_err(|error| SequencerError::Inconsistent(error.to_string()))?;
        let note = self.key.sign(&self.hsm, &checkpoint).await?;
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

/// Why the sequencer stepped down for a while.
#[derive(Debug, thiserror::Error)]
enum SequencerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] super::signer::AuditKeyError),
    /// The tree is not consistent with what was signed before: refuse to sign (fork or rollback).
    #[error("refusing to sign: {0}")]
    Inconsistent(String),
}
