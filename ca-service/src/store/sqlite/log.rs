//! The embedded store's transparency log: `LogReader` and `LogSequencer`, the sequencing
//! statements (`store::sequencing` holds the algorithm), and sequencing inside the group
//! committer's transactions once the sequencer hands the head over (`transparency::inline`).

use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;
use tlog::merkle::Hash;

use super::group_commit::{GroupWrite, Message, WriteTransaction};
use super::{SqliteStore, cached_row, store_error, unix};
use crate::storage::StoreError;
use crate::store::codec::{checkpoint_stored, to_hash, to_i64, to_u64};
use crate::store::sequencing::{self, SequencingStatements, run_ready};
use crate::transparency::inline::InlineSequencing;
use crate::transparency::{
    LogHead, LogReader, LogSequencer, NodeKey, PendingEntry, PlannedBatch, SequenceOutcome, StoredCheckpoint,
};

fn read_head(connection: &Connection) -> Result<LogHead, StoreError> {
    let (size, root): (i64, Vec<u8>) = cached_row(
        connection,
        "SELECT size, root FROM audit_log_head WHERE id = 1",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .map_err(store_error)?;
    Ok(LogHead {
        size: to_u64(size)?,
        root: to_hash(&root)?,
    })
}

fn read_nodes(connection: &Connection, keys: &[NodeKey]) -> Result<Vec<Option<Hash>>, StoreError> {
    let mut statement = connection
        .prepare_cached("SELECT hash FROM audit_tree_nodes WHERE level = ?1 AND node_index = ?2")
        .map_err(store_error)?;
    keys.iter()
        .map(|(level, index)| {
            let hash: Option<Vec<u8>> = statement
                .query_row(params![level, to_i64(*index)?], |row| row.get(0))
                .optional()
                .map_err(store_error)?;
            hash.as_deref().map(to_hash).transpose()
        })
        .collect()
}

/// The sequencing statements on a connection inside a `BEGIN IMMEDIATE` transaction (which holds
/// SQLite's write lock, so the head read is the head the update replaces). Synchronous: every
/// future they return is ready at once.
struct SqliteStatements<'a>(&'a Connection);

impl SequencingStatements for SqliteStatements<'_> {
    async fn locked_head(&mut self) -> Result<LogHead, StoreError> {
        read_head(self.0)
    }

    async fn pending(&mut self, limit: usize) -> Result<Vec<PendingEntry>, StoreError> {
        let mut statement = self
            .0
            .prepare_cached("SELECT id, entry FROM audit_entries WHERE leaf_index IS NULL ORDER BY id LIMIT ?1")
            .map_err(store_error)?;
        let rows = statement
            .query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |row| {
                Ok(PendingEntry {
                    entry_id: row.get(0)?,
                    bytes: row.get(1)?,
                })
            })
            .map_err(store_error)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(store_error)
    }

    async fn nodes(&mut self, keys: &[NodeKey]) -> Result<Vec<Option<Hash>>, StoreError> {
        read_nodes(self.0, keys)
    }

    async fn write_batch(&mut self, batch: &PlannedBatch) -> Result<u64, StoreError> {
        let mut insert_node = self
            .0
            .prepare_cached("INSERT INTO audit_tree_nodes (level, node_index, hash) VALUES (?1, ?2, ?3)")
            .map_err(store_error)?;
        for ((level, index), hash) in &batch.nodes {
            insert_node
                .execute(params![level, to_i64(*index)?, hash.as_slice()])
                .map_err(store_error)?;
        }
        let mut assign = self
            .0
            .prepare_cached("UPDATE audit_entries SET leaf_index = ?2 WHERE id = ?1 AND leaf_index IS NULL")
            .map_err(store_error)?;
        let mut assigned = 0;
        for (entry_id, index) in &batch.assignments {
            assigned += assign
                .execute(params![entry_id, to_i64(*index)?])
                .map_err(store_error)? as u64;
        }
        Ok(assigned)
    }

    async fn swap_head(&mut self, old: LogHead, new: LogHead) -> Result<u64, StoreError> {
        let (new_size, old_size) = (to_i64(new.size)?, to_i64(old.size)?);
        let swapped = self
            .0
            .prepare_cached("UPDATE audit_log_head SET size = ?1, root = ?2 WHERE id = 1 AND size = ?3 AND root = ?4")
            .and_then(|mut statement| {
                statement.execute(params![new_size, new.root.as_slice(), old_size, old.root.as_slice()])
            })
            .map_err(store_error)?;
        Ok(swapped as u64)
    }
}

/// Sequencing inside a write transaction the caller ends (`store::sequencing::sequence`).
pub(super) fn sequence_within(
    connection: &Connection,
    expected: LogHead,
    max_entries: usize,
) -> Result<SequenceOutcome, StoreError> {
    run_ready(sequencing::sequence(
        &mut SqliteStatements(connection),
        expected,
        max_entries,
    ))
    .unwrap_or_else(|| {
        Err(StoreError::Corrupt(
            "a synchronous sequencing statement did not complete".to_owned(),
        ))
    })
}

/// One sequencing transaction of its own (the `LogSequencer::sequence` contract).
fn sequence(connection: &Connection, expected: LogHead, max_entries: usize) -> Result<SequenceOutcome, StoreError> {
    let transaction = WriteTransaction::begin(connection).map_err(store_error)?;
    let outcome = sequence_within(&transaction, expected, max_entries)?;
    if matches!(outcome, SequenceOutcome::Sequenced { .. }) {
        transaction.commit().map_err(store_error)?;
    }
    Ok(outcome)
}

/// `LogSequencer::store_checkpoint` as a grouped write: it shares the next group's transaction and
/// fsync instead of taking the write connection between two groups.
struct CheckpointWrite {
    checkpoint: StoredCheckpoint,
}

impl GroupWrite for CheckpointWrite {
    type Output = ();

    fn adds_entry(&self) -> bool {
        false
    }

    /// Stores a signed checkpoint, replacing the signature of one of the same size and root; a
    /// different root for a signed size would be a fork and is refused (`Integrity`).
    fn write(self, connection: &Connection) -> Result<(), StoreError> {
        let checkpoint = self.checkpoint;
        let size = to_i64(checkpoint.size)?;
        let written = connection
            .prepare_cached(
                "INSERT INTO audit_checkpoints (size, root, note, signed_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (size) DO UPDATE SET note = excluded.note, signed_at = excluded.signed_at
                 WHERE audit_checkpoints.root = excluded.root",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    size,
                    checkpoint.root.as_slice(),
                    checkpoint.note,
                    unix(OffsetDateTime::now_utc())
                ])
            })
            .map_err(store_error)?;
        checkpoint_stored(written as u64, checkpoint.size)
    }
}

impl LogReader for SqliteStore {
    async fn log_head(&self) -> Result<LogHead, StoreError> {
        self.with_reader(read_head).await
    }

    async fn subtree_hashes(&self, keys: Vec<NodeKey>) -> Result<Vec<Option<Hash>>, StoreError> {
        self.with_reader(move |connection| read_nodes(connection, &keys)).await
    }

    async fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.with_reader(move |connection| {
            let mut statement = connection
                .prepare_cached(
                    "SELECT entry FROM audit_entries WHERE leaf_index >= ?1 AND leaf_index < ?2 ORDER BY leaf_index",
                )
                .map_err(store_error)?;
            let rows = statement
                .query_map(params![to_i64(start)?, to_i64(end)?], |row| row.get(0))
                .map_err(store_error)?;
            rows.collect::<Result<Vec<Vec<u8>>, _>>().map_err(store_error)
        })
        .await
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        self.with_reader(|connection| {
            let row: Option<(i64, Vec<u8>, String)> = cached_row(
                connection,
                "SELECT size, root, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .map_err(store_error)?;
            row.map(|(size, root, note)| {
                Ok(StoredCheckpoint {
                    size: to_u64(size)?,
                    root: to_hash(&root)?,
                    note,
                })
            })
            .transpose()
        })
        .await
    }
}

/// The embedded store has one process: it always leads.
#[derive(Debug)]
pub struct SqliteLeadership;

impl LogSequencer for SqliteStore {
    type Leadership = SqliteLeadership;

    async fn try_lead(&self) -> Result<Option<SqliteLeadership>, StoreError> {
        Ok(Some(SqliteLeadership))
    }

    fn still_leading(&self, _leadership: &SqliteLeadership) -> bool {
        true
    }

    async fn sequence(&self, expected: LogHead, max_entries: usize) -> Result<SequenceOutcome, StoreError> {
        self.with_connection(move |connection| sequence(connection, expected, max_entries))
            .await
    }

    async fn store_checkpoint(&self, checkpoint: StoredCheckpoint) -> Result<(), StoreError> {
        self.grouped(CheckpointWrite { checkpoint }).await
    }

    fn inline_sequencing(&self) -> Option<&InlineSequencing> {
        Some(&self.inline)
    }

    fn nudge(&self) {
        // A stopped writer fails every write already, and says so there.
        let _ = self.writes.send(Message::Nudge);
    }
}

#[cfg(test)]
mod tests {
    //! Sequencing inside the group committer's transactions (the embedded store's mechanism; the
    //! log's contract is in `store::conformance`).

    use super::super::migrate::MIGRATIONS;
    use super::super::test_support::{committed_entry, reports};
    use super::*;
    use crate::api::identity::CertificateLookup;
    use crate::audit::{AuditEvent, AuditKind};
    use crate::identity::UserId;
    use crate::issuer::IssuanceStore;
    use crate::store::conformance::{certificate, event};
    use crate::transparency::inline::InlineReport;

    #[tokio::test]
    async fn entries_written_before_the_log_existed_are_sequenced_first() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("ca.sqlite3");
        let old_entries: Vec<Vec<u8>> = (0..3)
            .map(|number| format!("old entry {number}\n").into_bytes())
            .collect();
        {
            // A database at schema version 1, with audit entries and no log.
            let connection = Connection::open(&path).expect("open");
            connection
                .execute_batch(
                    "CREATE TABLE schema_migrations (version INTEGER NOT NULL PRIMARY KEY, applied_at INTEGER NOT NULL) STRICT;
                     INSERT INTO schema_migrations VALUES (1, 0);",
                )
                .expect("version table");
            connection.execute_batch(MIGRATIONS[0].1).expect("version 1");
            for entry in &old_entries {
                connection
                    .execute(
                        "INSERT INTO audit_entries (entry, entry_hash) VALUES (?1, ?2)",
                        params![entry, [0u8; 32].as_slice()],
                    )
                    .expect("old entry");
            }
        }
        let store = SqliteStore::open(&path).expect("migrates to the current version");
        let new_entry = store
            .append_event(AuditEvent {
                kind: AuditKind::Ceremony,
                actor: "test".to_owned(),
                subject: "new".to_owned(),
                details: vec![],
            })
            .await
            .expect("append");
        let head = match store.sequence(LogHead::empty(), 100).await.expect("sequence") {
            SequenceOutcome::Sequenced { head, .. } => head,
            other => panic!("expected a batch, got {other:?}"),
        };
        assert_eq!(head.size, 4);
        assert_eq!(store.log_index(&new_entry).await.expect("index"), Some(3));
        let entries = store.entries(0, 4).await.expect("entries");
        assert_eq!(
            &entries[..3],
            old_entries.as_slice(),
            "old entries keep their order, first"
        );
        let leaves: Vec<Hash> = entries.iter().map(|entry| tlog::leaf_hash(entry)).collect();
        assert_eq!(head.root, tlog::merkle::tree_root(&leaves));
    }

    /// The one report the writer makes next.
    async fn next_report(store: &SqliteStore) -> InlineReport {
        let mut reports = reports(store).await;
        assert_eq!(reports.len(), 1, "one report: {reports:?}");
        reports.remove(0)
    }

    fn open(directory: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&directory.path().join("ca.sqlite3")).expect("open")
    }

    #[tokio::test]
    async fn a_handed_over_head_is_extended_in_the_transaction_that_writes_an_issuance() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = open(&directory);
        store.inline.hand_over(LogHead::empty(), 100);

        let first = committed_entry(&store, certificate("alice", 1, 1)).await;
        assert_eq!(first.leaf_index, Some(0), "answered with its index");
        assert_eq!(
            store.log_index(&first).await.expect("index"),
            Some(0),
            "and it is stored"
        );
        let second = committed_entry(&store, certificate("bob", 2, 2)).await;
        assert_eq!(second.leaf_index, Some(1));
        let head = store.log_head().await.expect("head");
        assert_eq!(head.size, 2, "the head moved with the commits");
        let entries = store.entries(0, 2).await.expect("entries");
        let leaves: Vec<Hash> = entries.iter().map(|entry| tlog::leaf_hash(entry)).collect();
        assert_eq!(head.root, tlog::merkle::tree_root(&leaves));

        match &reports(&store).await[..] {
            [
                InlineReport::Sequenced {
                    previous,
                    head: after_first,
                    assignments,
                    full: false,
                },
                InlineReport::Sequenced {
                    previous: before_second,
                    head: after_second,
                    ..
                },
            ] => {
                assert_eq!(*previous, LogHead::empty());
                assert_eq!(after_first.size, 1);
                assert_eq!(*assignments, vec![(first.entry_id, 0)]);
                assert_eq!(before_second, after_first, "each batch extends the last");
                assert_eq!(*after_second, head);
            }
            other => panic!("expected two batches, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn entries_written_before_the_hand_over_are_sequenced_by_a_nudge_and_paused_ones_wait() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = open(&directory);
        let early = store.append_event(event("early")).await.expect("append");
        assert_eq!(
            early.leaf_index, None,
            "nothing handed over: the entry waits in the outbox"
        );

        store.inline.hand_over(LogHead::empty(), 100);
        store.inline.pause(true);
        let paused = store.append_event(event("paused")).await.expect("append");
        assert_eq!(paused.leaf_index, None, "paused: no index");
        assert_eq!(store.log_head().await.expect("head").size, 0);

        store.inline.pause(false);
        store.nudge();
        assert!(matches!(
            next_report(&store).await,
            InlineReport::Sequenced { ref assignments, .. }
                if *assignments == vec![(early.entry_id, 0), (paused.entry_id, 1)]
        ));
        assert_eq!(store.log_index(&early).await.expect("index"), Some(0), "oldest first");
    }

    #[tokio::test]
    async fn a_full_batch_leaves_the_rest_pending_and_says_so() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = open(&directory);
        for number in 0..3 {
            store.append_event(event(&format!("e{number}"))).await.expect("append");
        }
        store.inline.hand_over(LogHead::empty(), 2);
        store.nudge();
        assert!(matches!(
            next_report(&store).await,
            InlineReport::Sequenced { full: true, head, .. } if head.size == 2
        ));
        store.nudge();
        assert!(matches!(
            next_report(&store).await,
            InlineReport::Sequenced { full: false, head, .. } if head.size == 3
        ));
    }

    #[tokio::test]
    async fn a_head_that_moved_is_given_back_and_the_writes_still_commit() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = open(&directory);
        let stale = LogHead { size: 7, root: [7; 32] };
        store.inline.hand_over(stale, 100);
        let entry = committed_entry(&store, certificate("alice", 1, 1)).await;
        assert_eq!(
            entry.leaf_index, None,
            "not sequenced on a head the store does not have"
        );
        assert!(matches!(
            next_report(&store).await,
            InlineReport::HeadMoved { expected, actual } if expected == stale && actual == LogHead::empty()
        ));
        assert_eq!(store.inline.assignment(), None, "the writer gave the head back");
        assert_eq!(
            store.log_head().await.expect("head"),
            LogHead::empty(),
            "nothing sequenced"
        );
        assert_eq!(
            store
                .latest_certificates(vec![UserId::parse("alice").expect("user")])
                .await
                .expect("read")
                .len(),
            1,
            "the issuance committed all the same"
        );
    }

    #[tokio::test]
    async fn a_sequencing_failure_is_reported_and_rolls_back_only_the_sequencing() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("ca.sqlite3");
        let store = SqliteStore::open(&path).expect("open");
        store.inline.hand_over(LogHead::empty(), 100);
        committed_entry(&store, certificate("alice", 1, 1)).await;
        let head = match next_report(&store).await {
            InlineReport::Sequenced { head, .. } => head,
            other => panic!("expected a batch, got {other:?}"),
        };
        // The right edge the next batch builds on is gone behind the store's back.
        Connection::open(&path)
            .expect("open raw")
            .execute_batch("DELETE FROM audit_tree_nodes")
            .expect("delete");
        let bob = committed_entry(&store, certificate("bob", 2, 2)).await;
        assert_eq!(bob.leaf_index, None);
        assert!(matches!(
            next_report(&store).await,
            InlineReport::Failed(StoreError::Corrupt(_))
        ));
        assert_eq!(store.inline.assignment(), None);
        assert_eq!(
            store.log_head().await.expect("head"),
            head,
            "the failed batch wrote nothing"
        );
        assert_eq!(
            store.log_index(&bob).await.expect("index"),
            None,
            "bob's entry waits in the outbox"
        );
    }
}
