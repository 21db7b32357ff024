//! The PostgreSQL store: several CA replicas on one database, versioned migrations, bounded operations.
//!
//! Concurrency: a pool of tokio-postgres connections per replica. Outcomes are decided by the
//! schema's constraints in READ COMMITTED transactions, never by a cache: every request reads the
//! database, so replicas never disagree about pins.
//!
//! Bounded time: each operation runs under one deadline (`timeout`) covering the wait for a pooled
//! connection, connecting, and every statement; the server enforces the same bound as
//! `statement_timeout`. A connection whose operation timed out or failed for connection reasons is
//! discarded rather than returned to the pool: closing it makes the server roll back whatever was
//! open, so the caller's `StoreError::Unavailable` means nothing was written. The one exception no
//! database client can close is a connection lost while `COMMIT` is in flight: the transaction may
//! then have committed although the caller sees `Unavailable`; the certificate is not released and a
//! retry with the same key is a renewal.
//!
//! `group_commit` holds the group committers (issuances and refusals' entries share commits),
//! `identities` the pins and certificates, `log` the transparency log, `requests` the dual-control
//! requests, `admin` the rest of the Admin service (the reset write, revocations and lookups),
//! `backup` the key backups, escrow deposits and the recovery key, `migrate` the schema.

mod admin;
mod backup;
mod export;
mod group_commit;
mod identities;
mod log;
mod migrate;
mod requests;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use tokio::time::{Instant, error::Elapsed, timeout_at};

use self::group_commit::Committer;
use self::identities::{AppendGroup, IssuanceGroup};
pub use self::log::PostgresLeadership;
pub use self::migrate::SCHEMA_VERSION;
use crate::config::store::PostgresLocation;
use crate::storage::StoreError;

/// The PostgreSQL store. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    timeout: Duration,
    /// The group committer of `commit_issuance`.
    issuances: Committer<IssuanceGroup>,
    /// The group committer of `append_event`.
    appends: Committer<AppendGroup>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("PostgresStore")
    }
}

/// Maps a driver error. No server answer means the connection failed, closed or timed out.
fn store_error(error: tokio_postgres::Error) -> StoreError {
    let Some(database_error) = error.as_db_error() else {
        return StoreError::Unavailable(error.to_string());
    };
    // For logs only (`api` never forwards store messages): the server's message and SQLSTATE.
    let code = database_error.code().code();
    let message = match database_error.constraint() {
        Some(constraint) => format!(
            "{} (SQLSTATE {code}, constraint {constraint})",
            database_error.message()
        ),
        None => format!("{} (SQLSTATE {code})", database_error.message()),
    };
    // SQLSTATE classes: 08 connection exception, 53 insufficient resources, 57 operator intervention
    // (admin shutdown, pg_terminate_backend, statement_timeout), 40 transaction rollback
    // (serialization failure, deadlock), 55 lock not available, 58 system error (I/O).
    match &code[..2] {
        "08" | "53" | "57" | "40" | "55" | "58" => StoreError::Unavailable(message),
        "23" => StoreError::Integrity(message),
        "42" => StoreError::Schema(message),
        _ => StoreError::Corrupt(message),
    }
}

fn pool_error(error: PoolError) -> StoreError {
    match error {
        PoolError::Backend(error) => store_error(error),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Finishes a bounded operation on `client`. A connection that timed out or failed is closed
/// instead of pooled, so the server aborts its open transaction and later requests get a fresh one.
fn finish<T>(client: Object, outcome: Result<Result<T, StoreError>, Elapsed>) -> Result<T, StoreError> {
    match outcome {
        Ok(Err(error @ StoreError::Unavailable(_))) => {
            drop(Object::take(client));
            Err(error)
        }
        Ok(result) => result,
        Err(_) => {
            drop(Object::take(client));
            Err(StoreError::Unavailable("store operation timed out".to_owned()))
        }
    }
}

/// A pooled connection, or `Unavailable` by `deadline`.
async fn bounded_client(pool: &Pool, deadline: Instant, timeout: Duration) -> Result<Object, StoreError> {
    match timeout_at(deadline, pool.get()).await {
        Ok(result) => result.map_err(pool_error),
        Err(_) => Err(StoreError::Unavailable(format!(
            "no database connection within {} ms",
            timeout.as_millis()
        ))),
    }
}

impl PostgresStore {
    /// Connects to the database at `location`, applies pending migrations and returns the store.
    /// Fails within about `location.timeout` when the database cannot be reached.
    pub async fn connect(location: &PostgresLocation) -> Result<PostgresStore, StoreError> {
        let store = PostgresStore::with_pool(location)?;
        store.migrate().await?;
        Ok(store)
    }

    /// Builds the pool and starts the group committers; no connection is opened until the first
    /// operation.
    fn with_pool(location: &PostgresLocation) -> Result<PostgresStore, StoreError> {
        let timeout = location.timeout;
        let mut connection = location.connection.clone();
        // The server-side bounds: a statement (including its lock waits) may not outlive the
        // client's deadline, and a transaction left open by a vanished client is rolled back.
        let server_options = format!(
            "-c statement_timeout={statement} -c idle_in_transaction_session_timeout={idle}",
            statement = timeout.as_millis(),
            idle = timeout.as_millis().saturating_mul(2),
        );
        let options = match connection.get_options() {
            Some(existing) if !existing.is_empty() => format!("{existing} {server_options}"),
            _ => server_options,
        };
        connection
            .options(options)
            .connect_timeout(timeout)
            .keepalives_idle(Duration::from_secs(30));
        if connection.get_application_name().is_none() {
            connection.application_name("ca-service");
        }
        let manager = Manager::from_config(
            connection,
            tokio_postgres::NoTls,
            ManagerConfig {
                // Connections that failed are discarded by `finish`; checking `is_closed` suffices.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(location.pool_size)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|error| StoreError::Unavailable(format!("cannot build the connection pool: {error}")))?;
        Ok(PostgresStore {
            issuances: Committer::start(pool.clone(), timeout),
            appends: Committer::start(pool.clone(), timeout),
            pool,
            timeout,
        })
    }

    /// Runs `work` on a pooled connection under the store's bound (module docs).
    async fn bounded<T>(&self, work: impl AsyncFnOnce(&mut Object) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let mut client = bounded_client(&self.pool, deadline, self.timeout).await?;
        let outcome = timeout_at(deadline, work(&mut client)).await;
        finish(client, outcome)
    }

    /// Applies every migration newer than the database's version in one transaction, under an
    /// advisory lock so that replicas starting together migrate once. Refuses a newer schema.
    /// Returns the version the database was at before.
    pub async fn migrate(&self) -> Result<i64, StoreError> {
        let mut client = bounded_client(&self.pool, Instant::now() + self.timeout, self.timeout).await?;
        // No client deadline for the migration itself: a future migration may rewrite large tables.
        let outcome = migrate::migrate(&mut client).await;
        if outcome.is_err() {
            drop(Object::take(client));
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    //! The bounds on a networked database: unreachable, dropped connections, blocked transactions.

    use std::time::Instant as StdInstant;

    use time::OffsetDateTime;

    use super::*;
    use crate::health::StoreHealth;
    use crate::issuer::{CommitOutcome, IssuanceStore};
    use crate::store::conformance::{Harness, PostgresHarness, certificate, event, key, user};

    fn with_timeout(harness: &PostgresHarness, timeout: Duration) -> PostgresLocation {
        PostgresLocation {
            timeout,
            ..harness.location().clone()
        }
    }

    #[tokio::test]
    async fn an_unreachable_database_fails_fast_with_unavailable() {
        let mut location = PostgresLocation {
            connection: "postgres://postgres@127.0.0.1:1/none".parse().expect("url"),
            pool_size: 2,
            timeout: Duration::from_secs(2),
        };
        let started = StdInstant::now();
        let result = PostgresStore::connect(&location).await;
        assert!(matches!(result, Err(StoreError::Unavailable(_))), "{result:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        // A host that never answers (TEST-NET-1) is bounded by the timeout too.
        location.connection = "postgres://postgres@192.0.2.1:5432/none".parse().expect("url");
        location.timeout = Duration::from_millis(500);
        let started = StdInstant::now();
        let result = PostgresStore::connect(&location).await;
        assert!(matches!(result, Err(StoreError::Unavailable(_))), "{result:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn terminated_connections_fail_with_unavailable_and_the_store_recovers() {
        let harness = PostgresHarness::create().await;
        let store = harness.open().await.expect("open");
        for round in 0..3u8 {
            // Warm the pool, then kill every connection of the store behind its back.
            store.ping().await.expect("ping");
            let terminated: i64 = harness
                .raw_client()
                .await
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&harness.name()],
                )
                .await
                .expect("terminate")
                .get(0);
            assert!(terminated >= 1, "the store had a connection");
            let user_name = format!("user-{round}");
            let first = store
                .commit_issuance(certificate(&user_name, round + 1, round + 1), event(&user_name))
                .await;
            match first {
                Ok(CommitOutcome::Committed { .. }) | Err(StoreError::Unavailable(_)) => {}
                other => panic!("only success or Unavailable are acceptable, got {other:?}"),
            }
            // The dead connection was discarded: the next operation gets a fresh one.
            let state = store
                .pin_state(&user(&user_name), &key(round + 1), OffsetDateTime::now_utc())
                .await
                .expect("recovered");
            if first.is_err() {
                assert_eq!(state.user_pin, None, "Unavailable wrote nothing");
            }
            let retried = store
                .commit_issuance(certificate(&user_name, round + 1, round + 101), event(&user_name))
                .await;
            assert!(matches!(retried, Ok(CommitOutcome::Committed { .. })), "{retried:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocked_transaction_times_out_with_unavailable_and_writes_nothing() {
        let harness = PostgresHarness::create().await;
        drop(harness.open().await.expect("migrate"));
        let store = PostgresStore::connect(&with_timeout(&harness, Duration::from_millis(500)))
            .await
            .expect("open");
        let mut blocker = harness.raw_client().await;
        let transaction = blocker.transaction().await.expect("begin");
        transaction
            .batch_execute("LOCK TABLE audit_entries IN ACCESS EXCLUSIVE MODE")
            .await
            .expect("lock");
        let started = StdInstant::now();
        let blocked = store.commit_issuance(certificate("alice", 1, 1), event("alice")).await;
        assert!(matches!(blocked, Err(StoreError::Unavailable(_))), "{blocked:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "bounded by the store timeout, took {:?}",
            started.elapsed()
        );
        transaction.rollback().await.expect("release the lock");
        let alice = store
            .pin_state(&user("alice"), &key(1), OffsetDateTime::now_utc())
            .await
            .expect("pin state");
        assert_eq!(alice.user_pin, None, "the pin written before the block was rolled back");
        let retried = store.commit_issuance(certificate("alice", 1, 1), event("alice")).await;
        assert!(
            matches!(retried, Ok(CommitOutcome::Committed { renewal: false, .. })),
            "{retried:?}"
        );
    }
}
