//! The PostgreSQL store's transparency log: `LogReader` and `LogSequencer`, the sequencing
//! statements (`store::sequencing` holds the algorithm), and the sequencer's advisory lock.

use deadpool_postgres::{GenericClient, Object, Transaction};
use tlog::merkle::Hash;
use tokio::time::timeout_at;

use super::{PostgresStore, bounded_client, store_error};
use crate::storage::StoreError;
use crate::store::codec::{checkpoint_stored, to_hash, to_i64, to_u64};
use crate::store::sequencing::{self, SequencingStatements};
use crate::transparency::{
    LogHead, LogReader, LogSequencer, NodeKey, PendingEntry, PlannedBatch, SequenceOutcome, StoredCheckpoint,
};

/// Advisory lock key held by the one replica that sequences the audit log ("e2eeca" + 2).
pub(super) const SEQUENCER_LOCK: i64 = 0x6532_6565_6361_0002;

/// The head, as a reader sees it.
const READ_HEAD: &str = "SELECT size, root FROM audit_log_head WHERE id = 1";

/// The head, locked until the sequencing transaction ends.
const LOCK_HEAD: &str = "SELECT size, root FROM audit_log_head WHERE id = 1 FOR UPDATE";

/// The head through `query` (`READ_HEAD` or `LOCK_HEAD`).
async fn read_head(client: &impl GenericClient, query: &str) -> Result<LogHead, StoreError> {
    // Prepared once per connection: a one-row table has no plan to go wrong.
    let statement = client.prepare_cached(query).await.map_err(store_error)?;
    let row = client.query_one(&statement, &[]).await.map_err(store_error)?;
    Ok(LogHead {
        size: to_u64(row.get(0))?,
        root: to_hash(row.get(1))?,
    })
}

/// The hashes of `keys` in one query, in the order of `keys`: one primary-key probe per key, in
/// any plan. A join of the keys with `audit_tree_nodes` let the generic plan that a pooled
/// connection caches after five executions be a hash join over a sequential scan of every node,
/// when it was planned while the tree was small; that plan stayed, and each read then cost time in
/// proportion to the whole log. A scalar subquery per key is planned as its own index probe.
pub(super) const READ_NODES: &str = "SELECT (SELECT node.hash FROM audit_tree_nodes AS node
                                  WHERE node.level = wanted.level AND node.node_index = wanted.node_index)
                          FROM unnest($1::smallint[], $2::bigint[]) WITH ORDINALITY AS wanted (level, node_index, position)
                          ORDER BY wanted.position";

/// The hashes of `keys` (`READ_NODES`), `None` for a node not stored.
async fn read_nodes(client: &impl GenericClient, keys: &[NodeKey]) -> Result<Vec<Option<Hash>>, StoreError> {
    // Levels are at most 63 (a tree of at most 2^63 leaves), so they fit a SMALLINT.
    let levels: Vec<i16> = keys.iter().map(|(level, _)| *level as i16).collect();
    let indices: Vec<i64> = keys.iter().map(|(_, index)| to_i64(*index)).collect::<Result<_, _>>()?;
    let statement = client.prepare_cached(READ_NODES).await.map_err(store_error)?;
    let rows = client
        .query(&statement, &[&levels, &indices])
        .await
        .map_err(store_error)?;
    rows.iter()
        .map(|row| row.get::<_, Option<&[u8]>>(0).map(to_hash).transpose())
        .collect()
}

/// The sequencing statements inside a transaction: the head row is locked (`FOR UPDATE`) and
/// pending entries are taken with `SKIP LOCKED`.
struct PostgresStatements<'a, 'b>(&'a Transaction<'b>);

impl SequencingStatements for PostgresStatements<'_, '_> {
    async fn locked_head(&mut self) -> Result<LogHead, StoreError> {
        read_head(self.0, LOCK_HEAD).await
    }

    async fn pending(&mut self, limit: usize) -> Result<Vec<PendingEntry>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // The pending entries must come from an ordered scan of the partial index, which stops
        // after `limit` rows. Without statistics (a new database, before autovacuum's first
        // ANALYZE) the planner prefers a bitmap scan of every pending row and a full sort under the
        // row locks, a cost that grows with the backlog. A planner setting only: the rows taken
        // are the same.
        self.0
            .batch_execute("SET LOCAL enable_bitmapscan = off")
            .await
            .map_err(store_error)?;
        let pending = self
            .0
            .query(
                "SELECT id, entry FROM audit_entries WHERE leaf_index IS NULL
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&limit],
            )
            .await
            .map_err(store_error)?
            .iter()
            .map(|row| PendingEntry {
                entry_id: row.get(0),
                bytes: row.get(1),
            })
            .collect();
        self.0
            .batch_execute("SET LOCAL enable_bitmapscan TO DEFAULT")
            .await
            .map_err(store_error)?;
        Ok(pending)
    }

    async fn nodes(&mut self, keys: &[NodeKey]) -> Result<Vec<Option<Hash>>, StoreError> {
        read_nodes(self.0, keys).await
    }

    async fn write_batch(&mut self, batch: &PlannedBatch) -> Result<u64, StoreError> {
        let levels: Vec<i16> = batch.nodes.iter().map(|((level, _), _)| *level as i16).collect();
        let indices: Vec<i64> = batch
            .nodes
            .iter()
            .map(|((_, index), _)| to_i64(*index))
            .collect::<Result<_, _>>()?;
        let hashes: Vec<&[u8]> = batch.nodes.iter().map(|(_, hash)| hash.as_slice()).collect();
        // The primary key refuses a node written twice: a second sequencer could not slip through.
        // Prepared once per connection (no join, so no plan to go wrong).
        let insert_nodes = self
            .0
            .prepare_cached(
                "INSERT INTO audit_tree_nodes (level, node_index, hash)
                 SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])",
            )
            .await
            .map_err(store_error)?;
        self.0
            .execute(&insert_nodes, &[&levels, &indices, &hashes])
            .await
            .map_err(store_error)?;
        let entry_ids: Vec<i64> = batch.assignments.iter().map(|(entry_id, _)| *entry_id).collect();
        let leaf_indices: Vec<i64> = batch
            .assignments
            .iter()
            .map(|(_, index)| to_i64(*index))
            .collect::<Result<_, _>>()?;
        self.0
            .execute(
                "UPDATE audit_entries SET leaf_index = assignment.leaf_index
                 FROM unnest($1::bigint[], $2::bigint[]) AS assignment (id, leaf_index)
                 WHERE audit_entries.id = assignment.id AND audit_entries.leaf_index IS NULL",
                &[&entry_ids, &leaf_indices],
            )
            .await
            .map_err(store_error)
    }

    async fn swap_head(&mut self, old: LogHead, new: LogHead) -> Result<u64, StoreError> {
        let swap_head = self
            .0
            .prepare_cached("UPDATE audit_log_head SET size = $1, root = $2 WHERE id = 1 AND size = $3 AND root = $4")
            .await
            .map_err(store_error)?;
        self.0
            .execute(
                &swap_head,
                &[
                    &to_i64(new.size)?,
                    &new.root.as_slice(),
                    &to_i64(old.size)?,
                    &old.root.as_slice(),
                ],
            )
            .await
            .map_err(store_error)
    }
}

/// One sequencing transaction (the `LogSequencer::sequence` contract), committed only when it
/// sequenced a batch.
async fn sequence(client: &mut Object, expected: LogHead, max_entries: usize) -> Result<SequenceOutcome, StoreError> {
    let transaction = client.transaction().await.map_err(store_error)?;
    let outcome = sequencing::sequence(&mut PostgresStatements(&transaction), expected, max_entries).await?;
    if matches!(outcome, SequenceOutcome::Sequenced { .. }) {
        transaction.commit().await.map_err(store_error)?;
    } else {
        transaction.rollback().await.map_err(store_error)?;
    }
    Ok(outcome)
}

/// The sequencer's advisory lock, held by a connection taken out of the pool for good: the lock
/// ends when this is dropped (the connection closes) or when the connection dies.
pub struct PostgresLeadership {
    client: deadpool_postgres::ClientWrapper,
}

impl std::fmt::Debug for PostgresLeadership {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("PostgresLeadership")
    }
}

impl LogReader for PostgresStore {
    async fn log_head(&self) -> Result<LogHead, StoreError> {
        self.bounded(async |client| read_head(&*client, READ_HEAD).await).await
    }

    async fn subtree_hashes(&self, keys: Vec<NodeKey>) -> Result<Vec<Option<Hash>>, StoreError> {
        self.bounded(async |client| read_nodes(&*client, &keys).await).await
    }

    async fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.bounded(async |client| {
            let rows = client
                .query(
                    "SELECT entry FROM audit_entries WHERE leaf_index >= $1 AND leaf_index < $2 ORDER BY leaf_index",
                    &[&to_i64(start)?, &to_i64(end)?],
                )
                .await
                .map_err(store_error)?;
            Ok(rows.iter().map(|row| row.get::<_, Vec<u8>>(0)).collect())
        })
        .await
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        self.bounded(async |client| {
            let row = client
                .query_opt(
                    "SELECT size, root, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1",
                    &[],
                )
                .await
                .map_err(store_error)?;
            row.map(|row| {
                Ok(StoredCheckpoint {
                    size: to_u64(row.get(0))?,
                    root: to_hash(row.get(1))?,
                    note: row.get(2),
                })
            })
            .transpose()
        })
        .await
    }
}

impl LogSequencer for PostgresStore {
    type Leadership = PostgresLeadership;

    async fn try_lead(&self) -> Result<Option<PostgresLeadership>, StoreError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let client = bounded_client(&self.pool, deadline, self.timeout).await?;
        let outcome = timeout_at(deadline, async {
            let row = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&SEQUENCER_LOCK])
                .await
                .map_err(store_error)?;
            Ok(row.get::<_, bool>(0))
        })
        .await;
        // A lock holder leaves the pool for good (it must never be handed out, and the lock ends
        // with its session); a connection that did not get the lock holds nothing and goes back.
        let acquired = match outcome {
            Ok(Ok(acquired)) => acquired,
            Ok(Err(error)) => {
                drop(Object::take(client));
                return Err(error);
            }
            Err(_) => {
                drop(Object::take(client));
                return Err(StoreError::Unavailable("store operation timed out".to_owned()));
            }
        };
        if acquired {
            Ok(Some(PostgresLeadership {
                client: Object::take(client),
            }))
        } else {
            Ok(None)
        }
    }

    fn still_leading(&self, leadership: &PostgresLeadership) -> bool {
        !leadership.client.is_closed()
    }

    async fn sequence(&self, expected: LogHead, max_entries: usize) -> Result<SequenceOutcome, StoreError> {
        self.bounded(async |client| sequence(client, expected, max_entries).await)
            .await
    }

    async fn store_checkpoint(&self, checkpoint: StoredCheckpoint) -> Result<(), StoreError> {
        self.bounded(async |client| {
            let written = client
                .execute(
                    "INSERT INTO audit_checkpoints (size, root, note, signed_at) VALUES ($1, $2, $3, now())
                     ON CONFLICT (size) DO UPDATE SET note = excluded.note, signed_at = excluded.signed_at
                     WHERE audit_checkpoints.root = excluded.root",
                    &[&to_i64(checkpoint.size)?, &checkpoint.root.as_slice(), &checkpoint.note],
                )
                .await
                .map_err(store_error)?;
            checkpoint_stored(written, checkpoint.size)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    //! Plans that stay index probes in any cached plan, and the sequencer's advisory lock.

    use std::time::{Duration, Instant as StdInstant};

    use super::super::identities;
    use super::*;
    use crate::store::conformance::{Harness, PostgresHarness};

    /// The plan a pooled connection caches after five executions of `statement`, made as a generic
    /// plan on a fresh (empty) schema.
    async fn generic_plan(harness: &PostgresHarness, statement: &str, types: &str, arguments: &str) -> String {
        let client = harness.raw_client().await;
        client
            .batch_execute("SET plan_cache_mode = force_generic_plan")
            .await
            .expect("set");
        client
            .batch_execute(&format!("PREPARE probe ({types}) AS {statement}"))
            .await
            .expect("prepare");
        let plan: Vec<String> = client
            .query(&format!("EXPLAIN EXECUTE probe ({arguments})"), &[])
            .await
            .expect("explain")
            .iter()
            .map(|row| row.get(0))
            .collect();
        plan.join("\n")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tree_nodes_and_pins_are_read_by_primary_key_even_in_a_generic_plan_made_on_an_empty_schema() {
        let harness = PostgresHarness::create().await;
        drop(harness.open().await.expect("migrate"));
        let nodes = generic_plan(
            &harness,
            READ_NODES,
            "smallint[], bigint[]",
            "'{3, 2, 0}', '{0, 2, 12}'",
        )
        .await;
        assert!(
            nodes.contains("Index Scan using audit_tree_nodes_pkey on audit_tree_nodes"),
            "{nodes}"
        );
        assert!(!nodes.contains("Seq Scan on audit_tree_nodes"), "{nodes}");
        let pins = generic_plan(&harness, identities::LOCK_PINS, "text[]", "'{alice, bob}'").await;
        assert!(
            pins.contains("Index Scan using identities_pkey on identities"),
            "{pins}"
        );
        assert!(!pins.contains("Seq Scan on identities"), "{pins}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_replica_leads_the_sequencer_until_its_connection_ends() {
        let harness = PostgresHarness::create().await;
        let first = harness.open().await.expect("open");
        let second = harness.open().await.expect("open");
        let leadership = first.try_lead().await.expect("try").expect("the first replica leads");
        assert!(first.still_leading(&leadership));
        assert!(second.try_lead().await.expect("try").is_none(), "one leader at a time");
        assert!(
            first.try_lead().await.expect("try").is_none(),
            "even for another connection of the leader"
        );
        // The lock lives and dies with the leader's session.
        harness
            .raw_client()
            .await
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&((SEQUENCER_LOCK & 0xffff_ffff) as u32)],
            )
            .await
            .expect("terminate the leader's session");
        let started = StdInstant::now();
        let taken_over = loop {
            if let Some(leadership) = second.try_lead().await.expect("try") {
                break leadership;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "the lock was not released");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(second.still_leading(&taken_over));
        let deadline = StdInstant::now() + Duration::from_secs(5);
        while first.still_leading(&leadership) {
            assert!(
                StdInstant::now() < deadline,
                "the old leader notices its connection died"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
