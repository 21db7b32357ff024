//! The PostgreSQL store: several CA replicas on one database, versioned migrations, bounded operations.
//!
//! Concurrency: a pool of tokio-postgres connections per replica. `commit_issuance` is one READ
//! COMMITTED transaction whose outcome the schema's constraints decide: the pin is inserted with
//! `ON CONFLICT DO NOTHING` (which waits for a concurrent inserter of the same user or key to finish),
//! and a conflict is resolved by re-reading, and share-locking, the row that won. Nothing is cached:
//! every request reads the database, so replicas never disagree about pins.
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
//! Group commit: `append_event` (entries that are a transaction of their own, such as refusals)
//! goes through one task that inserts whatever is queued, up to 1024 entries, in one statement, so
//! concurrent callers share one commit; each is answered after that commit. `commit_issuance` goes
//! through another task that commits whatever issuances are queued, up to 64, in one transaction of
//! four multi-row statements (pins with `ON CONFLICT DO NOTHING`, the pins that were there, share-
//! locked, then certificates and audit entries for the issuances that stand), instead of a
//! transaction of four or five statements each: the same constraints decide, and a group never
//! holds two issuances for one user or one key (a later one waits for the next group), so each
//! outcome is the one it would have had alone in the group's place. A group the database refuses
//! while it still answers (a serial collision, or a deadlock with another replica's group, whose
//! pins it inserted in another order) is rolled back and its issuances are committed one by one,
//! each with its own outcome; a group the database did not answer (a lost connection, the bound)
//! answers every caller `Unavailable`. Groups are committed one at a time: a
//! group that waits for a lock (another replica pinning the same user or key at that moment)
//! holds up the next, within the store's bound.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, error::Elapsed, timeout_at};

use super::StoreError;
use crate::audit::{AuditEntry, AuditEvent, AuditKind};
use crate::config::PostgresLocation;
use crate::identity::{KeyFingerprint, SerialNumber, StoredCertificate, UserId};
use crate::issuer::{CommitOutcome, IdentityStore, LogEntryRef, NewCertificate, PinState};
use crate::transparency::{
    LogHead, LogStore, NodeKey, PendingEntry, SequenceOutcome, StoredCheckpoint, frontier_keys, plan_batch,
};
use tlog::merkle::Hash;

/// Versioned migrations, applied in order; a version is never edited once released.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/postgres/0001_identities.sql")),
    (2, include_str!("migrations/postgres/0002_transparency_log.sql")),
    (3, include_str!("migrations/postgres/0003_ca_certificates.sql")),
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Advisory lock key that serialises the migrations of replicas starting together ("e2eeca" + 1).
const MIGRATION_LOCK: i64 = 0x6532_6565_6361_0001;

/// Advisory lock key held by the one replica that sequences the audit log ("e2eeca" + 2).
const SEQUENCER_LOCK: i64 = 0x6532_6565_6361_0002;

/// The PostgreSQL store. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    timeout: Duration,
    /// The group committer of `append_event` (see [`group_appends`]).
    appends: mpsc::Sender<PendingAppend>,
    /// The group committer of `commit_issuance` (see [`group_issuances`]).
    issuances: mpsc::Sender<PendingIssuance>,
}

/// One `commit_issuance` waiting for the group committer.
struct PendingIssuance {
    certificate: NewCertificate,
    event: AuditEvent,
    reply: oneshot::Sender<Result<CommitOutcome, StoreError>>,
}

/// Most issuances the group committer commits in one transaction.
const MAX_GROUP_ISSUANCE: usize = 64;

/// One `append_event` waiting for the group committer.
struct PendingAppend {
    entry: AuditEntry,
    reply: oneshot::Sender<Result<LogEntryRef, StoreError>>,
}

/// Most entries the group committer inserts in one statement.
const MAX_GROUP_APPEND: usize = 1024;

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

fn fingerprint(bytes: &[u8]) -> Result<KeyFingerprint, StoreError> {
    KeyFingerprint::from_bytes(bytes).ok_or_else(|| StoreError::Corrupt("key fingerprint is not 32 bytes".to_owned()))
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

impl PostgresStore {
    /// Connects to the database at `location`, applies pending migrations and returns the store.
    /// Fails within about `location.timeout` when the database cannot be reached.
    pub async fn connect(location: &PostgresLocation) -> Result<PostgresStore, StoreError> {
        let store = PostgresStore::with_pool(location)?;
        store.migrate().await?;
        Ok(store)
    }

    /// Builds the pool; no connection is opened until the first operation.
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
        let (appends, pending) = mpsc::channel(MAX_GROUP_APPEND * 4);
        tokio::spawn(group_appends(pool.clone(), timeout, pending));
        let (issuances, pending) = mpsc::channel(MAX_GROUP_ISSUANCE * 4);
        tokio::spawn(group_issuances(pool.clone(), timeout, pending));
        Ok(PostgresStore {
            pool,
            timeout,
            appends,
            issuances,
        })
    }

    /// A pooled connection, or `Unavailable` by `deadline`.
    async fn client(&self, deadline: Instant) -> Result<Object, StoreError> {
        bounded_client(&self.pool, deadline, self.timeout).await
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// Hands `pending` to a group committer (`task` names it in errors) and waits for its answer,
    /// both under the store's bound. A group committer gives each group its own bound, so a caller
    /// queued behind a slow group may time out first: like any timed-out commit, the outcome is
    /// then unknown to the caller, who was told nothing about it.
    async fn queue<P, T>(
        &self,
        committer: &mpsc::Sender<P>,
        pending: P,
        answer: oneshot::Receiver<Result<T, StoreError>>,
        task: &str,
    ) -> Result<T, StoreError> {
        let deadline = self.deadline();
        let timed_out = || StoreError::Unavailable("store operation timed out".to_owned());
        let stopped = || StoreError::Unavailable(format!("the {task} task stopped"));
        timeout_at(deadline, committer.send(pending))
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| stopped())?;
        match timeout_at(deadline, answer).await {
            Ok(answer) => answer.map_err(|_| stopped())?,
            Err(_) => Err(timed_out()),
        }
    }

    /// Applies every migration newer than the database's version in one transaction, under an
    /// advisory lock so that replicas starting together migrate once. Refuses a newer schema.
    /// Returns the version the database was at before.
    pub async fn migrate(&self) -> Result<i64, StoreError> {
        let mut client = self.client(self.deadline()).await?;
        // No client deadline for the migration itself: a future migration may rewrite large tables.
        let outcome = migrate(&mut client).await;
        if outcome.is_err() {
            drop(Object::take(client));
        }
        outcome
    }
}

async fn migrate(client: &mut Object) -> Result<i64, StoreError> {
    let transaction = client.transaction().await.map_err(store_error)?;
    transaction
        .batch_execute(&format!(
            "SET LOCAL statement_timeout = 0;
             SELECT pg_advisory_xact_lock({MIGRATION_LOCK});
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    BIGINT      NOT NULL PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL
             );"
        ))
        .await
        .map_err(store_error)?;
    let current: i64 = transaction
        .query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[])
        .await
        .map_err(store_error)?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(StoreError::Schema(format!(
            "the database is at schema version {current}, newer than this binary knows ({SCHEMA_VERSION}); upgrade the CA"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
        transaction
            .batch_execute(sql)
            .await
            .map_err(|error| StoreError::Schema(format!("migration {version} failed: {error}")))?;
        transaction
            .execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now())",
                &[version],
            )
            .await
            .map_err(store_error)?;
        tracing::info!(version, "applied PostgreSQL store migration");
    }
    transaction.commit().await.map_err(store_error)?;
    Ok(current)
}

async fn pin_state(
    client: &Object,
    user: &UserId,
    key: &KeyFingerprint,
    since: OffsetDateTime,
) -> Result<PinState, StoreError> {
    // One round trip: the primary key, the key's UNIQUE index and the (user_id, issued_at) index.
    let statement = client
        .prepare_cached(
            "SELECT (SELECT key_sha256 FROM identities WHERE user_id = $1),
                    (SELECT user_id FROM identities WHERE key_sha256 = $2),
                    (SELECT count(*) FROM certificates WHERE user_id = $1 AND issued_at >= $3)",
        )
        .await
        .map_err(store_error)?;
    let row = client
        .query_one(&statement, &[&user.as_str(), &key.as_bytes().as_slice(), &since])
        .await
        .map_err(store_error)?;
    let user_pin: Option<Vec<u8>> = row.get(0);
    let owner: Option<String> = row.get(1);
    let certificates_since: i64 = row.get(2);
    Ok(PinState {
        user_pin: user_pin.as_deref().map(fingerprint).transpose()?,
        key_pinned_elsewhere: owner.is_some_and(|owner| owner != user.as_str()),
        certificates_since: certificates_since.unsigned_abs(),
    })
}

async fn commit_issuance(
    client: &mut Object,
    certificate: &NewCertificate,
    event: AuditEvent,
) -> Result<CommitOutcome, StoreError> {
    let user = certificate.user_id.as_str();
    let key = certificate.key_fingerprint.as_bytes().as_slice();
    let now = OffsetDateTime::now_utc();
    let transaction = client.transaction().await.map_err(store_error)?;
    // The constraints decide: a new pin is inserted unless either unique index already holds the
    // user or the key. ON CONFLICT waits for a concurrent inserter and skips if it committed.
    let insert_pin = transaction
        .prepare_cached(
            "INSERT INTO identities (user_id, key_sha256, spki_der, pinned_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING RETURNING 1",
        )
        .await
        .map_err(store_error)?;
    let inserted = transaction
        .query_opt(&insert_pin, &[&user, &key, &certificate.spki_der, &now])
        .await
        .map_err(store_error)?;
    let renewal = if inserted.is_some() {
        false
    } else {
        // The conflicting row is committed (READ COMMITTED: this statement sees it). FOR SHARE
        // keeps it in place until this transaction ends.
        let pinned = transaction
            .query_opt(
                "SELECT key_sha256 FROM identities WHERE user_id = $1 FOR SHARE",
                &[&user],
            )
            .await
            .map_err(store_error)?;
        match pinned {
            Some(row) if row.get::<_, &[u8]>(0) == key => true,
            Some(row) => {
                let pinned = fingerprint(row.get(0))?;
                transaction.rollback().await.map_err(store_error)?;
                return Ok(CommitOutcome::PinnedToOtherKey(pinned));
            }
            // The user has no pin, so the conflict was on the key's UNIQUE index.
            None => {
                transaction.rollback().await.map_err(store_error)?;
                return Ok(CommitOutcome::KeyPinnedElsewhere);
            }
        }
    };
    let insert_certificate = transaction
        .prepare_cached(
            "INSERT INTO certificates (serial, user_id, key_sha256, certificate_der, not_before, not_after, issued_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await
        .map_err(store_error)?;
    // A serial collision is a unique violation (23505): Integrity, and the transaction rolls back.
    transaction
        .execute(
            &insert_certificate,
            &[
                &certificate.serial.as_bytes(),
                &user,
                &key,
                &certificate.certificate_der,
                &certificate.not_before,
                &certificate.not_after,
                &now,
            ],
        )
        .await
        .map_err(store_error)?;
    // The recorded kind follows what the transaction saw, not the earlier read.
    let event = AuditEvent {
        kind: AuditKind::issuance(renewal),
        ..event
    };
    let entry = append_entry(&transaction, &event).await?;
    transaction.commit().await.map_err(store_error)?;
    Ok(CommitOutcome::Committed { renewal, entry })
}

/// The group committer of issuances (module docs): takes what is queued, up to
/// `MAX_GROUP_ISSUANCE`, commits it in groups without a repeated user or key, and answers each
/// caller after the commit that decided its outcome.
async fn group_issuances(pool: Pool, timeout: Duration, mut pending: mpsc::Receiver<PendingIssuance>) {
    let mut queued = Vec::with_capacity(MAX_GROUP_ISSUANCE);
    while pending.recv_many(&mut queued, MAX_GROUP_ISSUANCE).await > 0 {
        while !queued.is_empty() {
            let (group, later) = without_repeats(std::mem::take(&mut queued));
            queued = later;
            commit_or_answer(&pool, timeout, group).await;
        }
    }
}

/// Splits `queued` into a group in which no user and no key appears twice, in queue order, and
/// the rest, for the next group.
fn without_repeats(queued: Vec<PendingIssuance>) -> (Vec<PendingIssuance>, Vec<PendingIssuance>) {
    let mut users = HashSet::new();
    let mut keys = HashSet::new();
    queued.into_iter().partition(|pending| {
        let certificate = &pending.certificate;
        // Both checked before either is recorded, so that a later issuance is judged alone.
        let fresh = !users.contains(certificate.user_id.as_str()) && !keys.contains(&certificate.key_fingerprint);
        if fresh {
            users.insert(certificate.user_id.as_str().to_owned());
            keys.insert(certificate.key_fingerprint);
        }
        fresh
    })
}

/// Commits `group` in one transaction and answers each caller. When the database refused the
/// group and still answers (a serial collision; a deadlock with another replica's group, which
/// PostgreSQL breaks by aborting one of them), the group is rolled back and each issuance is
/// committed in a transaction of its own instead; when the database did not answer (a lost
/// connection, the bound), every caller gets that error.
async fn commit_or_answer(pool: &Pool, timeout: Duration, group: Vec<PendingIssuance>) {
    let members: Vec<(&NewCertificate, &AuditEvent)> = group
        .iter()
        .map(|pending| (&pending.certificate, &pending.event))
        .collect();
    let deadline = Instant::now() + timeout;
    let (outcome, refused) = match bounded_client(pool, deadline, timeout).await {
        Ok(mut client) => {
            let outcome = timeout_at(deadline, commit_group(&mut client, &members)).await;
            let refused = matches!(outcome, Ok(Err(_))) && !client.is_closed();
            (finish(client, outcome), refused)
        }
        Err(error) => (Err(error), false),
    };
    match outcome {
        Ok(outcomes) => {
            for (pending, outcome) in group.into_iter().zip(outcomes) {
                let _ = pending.reply.send(Ok(outcome));
            }
        }
        Err(error) if !refused => {
            for pending in group {
                let _ = pending.reply.send(Err(error.clone()));
            }
        }
        Err(error) => {
            tracing::warn!(%error, issuances = group.len(), "group commit failed: committing its issuances one by one");
            for pending in group {
                let deadline = Instant::now() + timeout;
                let outcome = match bounded_client(pool, deadline, timeout).await {
                    Ok(mut client) => {
                        let outcome = timeout_at(
                            deadline,
                            commit_issuance(&mut client, &pending.certificate, pending.event),
                        )
                        .await;
                        finish(client, outcome)
                    }
                    Err(error) => Err(error),
                };
                let _ = pending.reply.send(outcome);
            }
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

/// The pins of users, share-locked until the transaction ends. A lateral subquery with a locking
/// clause is never flattened into a join: one primary-key probe per user in any plan (see
/// `READ_NODES` for what a join's generic plan can become).
const READ_PINS: &str = "SELECT wanted.user_id, pinned.key_sha256
                         FROM unnest($1::text[]) AS wanted (user_id)
                         CROSS JOIN LATERAL (
                             SELECT key_sha256 FROM identities WHERE identities.user_id = wanted.user_id FOR SHARE
                         ) AS pinned";

/// Pins the keys of the users without one, share-locks the pins that were there already; for
/// each issuance that stands, this inserts its certificate and its audit entry. Every issuance
/// gets the outcome that `commit_issuance` would give it alone; `members` holds no user or key
/// twice (`without_repeats`). One transaction: an error rolls all of it back.
async fn commit_group(
    client: &mut Object,
    members: &[(&NewCertificate, &AuditEvent)],
) -> Result<Vec<CommitOutcome>, StoreError> {
    let now = OffsetDateTime::now_utc();
    let users: Vec<&str> = members
        .iter()
        .map(|(certificate, _)| certificate.user_id.as_str())
        .collect();
    let keys: Vec<&[u8]> = members
        .iter()
        .map(|(certificate, _)| certificate.key_fingerprint.as_bytes().as_slice())
        .collect();
    let spkis: Vec<&[u8]> = members
        .iter()
        .map(|(certificate, _)| certificate.spki_der.as_slice())
        .collect();
    let transaction = client.transaction().await.map_err(store_error)?;
    // As in `commit_issuance`: the unique indexes decide, ON CONFLICT waits for a concurrent
    // inserter and skips if it committed. Users in one order, so that two replicas' groups
    // seldom wait for each other in a cycle (a deadlock: `commit_or_answer` retries one by one).
    let insert_pins = transaction
        .prepare_cached(
            "INSERT INTO identities (user_id, key_sha256, spki_der, pinned_at)
             SELECT user_id, key_sha256, spki_der, $4
             FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS new (user_id, key_sha256, spki_der)
             ORDER BY user_id
             ON CONFLICT DO NOTHING RETURNING user_id",
        )
        .await
        .map_err(store_error)?;
    let pinned_now: HashSet<String> = transaction
        .query(&insert_pins, &[&users, &keys, &spkis, &now])
        .await
        .map_err(store_error)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let others: Vec<&str> = users
        .iter()
        .copied()
        .filter(|user| !pinned_now.contains(*user))
        .collect();
    let mut pinned_before: HashMap<String, Vec<u8>> = HashMap::new();
    if !others.is_empty() {
        // The conflicting rows are committed (READ COMMITTED).
        let read_pins = transaction.prepare_cached(READ_PINS).await.map_err(store_error)?;
        for row in transaction.query(&read_pins, &[&others]).await.map_err(store_error)? {
            pinned_before.insert(row.get(0), row.get(1));
        }
    }
    // Per issuance: `Ok(renewal)` if it stands, or the outcome that refuses it.
    let decisions: Vec<Result<bool, CommitOutcome>> = members
        .iter()
        .map(|(certificate, _)| {
            let user = certificate.user_id.as_str();
            if pinned_now.contains(user) {
                return Ok(Ok(false));
            }
            Ok(match pinned_before.get(user) {
                Some(pinned) if pinned.as_slice() == certificate.key_fingerprint.as_bytes() => Ok(true),
                Some(pinned) => Err(CommitOutcome::PinnedToOtherKey(fingerprint(pinned)?)),
                // The user has no pin, so the conflict was on the key's UNIQUE index.
                None => Err(CommitOutcome::KeyPinnedElsewhere),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let standing: Vec<(&NewCertificate, &AuditEvent, bool)> = members
        .iter()
        .zip(&decisions)
        .filter_map(|((certificate, event), decision)| {
            decision.as_ref().ok().map(|renewal| (*certificate, *event, *renewal))
        })
        .collect();
    let mut committed = Vec::with_capacity(standing.len());
    if !standing.is_empty() {
        insert_certificates(&transaction, &standing, now).await?;
        // The recorded kind follows what the transaction saw, not the earlier read.
        let entries: Vec<AuditEntry> = standing
            .iter()
            .map(|(_, event, renewal)| {
                AuditEvent {
                    kind: AuditKind::issuance(*renewal),
                    ..(*event).clone()
                }
                .encode()
            })
            .collect();
        let ids = insert_entries(&transaction, &entries.iter().collect::<Vec<_>>()).await?;
        committed.extend(entries.iter().zip(ids).map(|(entry, entry_id)| LogEntryRef {
            entry_id,
            entry_hash: entry.hash,
            leaf_index: None,
        }));
    }
    transaction.commit().await.map_err(store_error)?;
    // `insert_entries` returns one id per entry, in order: one per standing issuance.
    let mut committed = committed.into_iter();
    decisions
        .into_iter()
        .map(|decision| match decision {
            Ok(renewal) => committed
                .next()
                .map(|entry| CommitOutcome::Committed { renewal, entry })
                .ok_or_else(|| StoreError::Corrupt("an issuance of a group got no audit entry".to_owned())),
            Err(refused) => Ok(refused),
        })
        .collect()
}

/// Inserts the certificates of `standing` in one statement. A serial collision is a unique
/// violation (23505): Integrity, and the group rolls back.
async fn insert_certificates(
    client: &impl deadpool_postgres::GenericClient,
    standing: &[(&NewCertificate, &AuditEvent, bool)],
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let serials: Vec<&[u8]> = standing
        .iter()
        .map(|(certificate, ..)| certificate.serial.as_bytes())
        .collect();
    let users: Vec<&str> = standing
        .iter()
        .map(|(certificate, ..)| certificate.user_id.as_str())
        .collect();
    let keys: Vec<&[u8]> = standing
        .iter()
        .map(|(certificate, ..)| certificate.key_fingerprint.as_bytes().as_slice())
        .collect();
    let ders: Vec<&[u8]> = standing
        .iter()
        .map(|(certificate, ..)| certificate.certificate_der.as_slice())
        .collect();
    let not_before: Vec<OffsetDateTime> = standing
        .iter()
        .map(|(certificate, ..)| certificate.not_before)
        .collect();
    let not_after: Vec<OffsetDateTime> = standing.iter().map(|(certificate, ..)| certificate.not_after).collect();
    let statement = client
        .prepare_cached(
            "INSERT INTO certificates (serial, user_id, key_sha256, certificate_der, not_before, not_after, issued_at)
             SELECT serial, user_id, key_sha256, certificate_der, not_before, not_after, $7
             FROM unnest($1::bytea[], $2::text[], $3::bytea[], $4::bytea[], $5::timestamptz[], $6::timestamptz[])
                  AS new (serial, user_id, key_sha256, certificate_der, not_before, not_after)",
        )
        .await
        .map_err(store_error)?;
    client
        .execute(
            &statement,
            &[&serials, &users, &keys, &ders, &not_before, &not_after, &now],
        )
        .await
        .map_err(store_error)?;
    Ok(())
}

async fn append_entry(
    client: &impl deadpool_postgres::GenericClient,
    event: &AuditEvent,
) -> Result<LogEntryRef, StoreError> {
    let entry = event.encode();
    let statement = client
        .prepare_cached("INSERT INTO audit_entries (entry, entry_hash) VALUES ($1, $2) RETURNING id")
        .await
        .map_err(store_error)?;
    let entry_id: i64 = client
        .query_one(&statement, &[&entry.bytes, &entry.hash.as_slice()])
        .await
        .map_err(store_error)?
        .get(0);
    Ok(LogEntryRef {
        entry_id,
        entry_hash: entry.hash,
        leaf_index: None,
    })
}

/// The group committer: audit entries that are a transaction of their own (refusals and other
/// events without a state change) are inserted together, up to [`MAX_GROUP_APPEND`] per
/// statement, so that concurrent callers share one commit. Each caller is answered only after
/// the commit that holds its entry (or with the error that rolled it back).
async fn group_appends(pool: Pool, timeout: Duration, mut pending: mpsc::Receiver<PendingAppend>) {
    let mut group = Vec::with_capacity(MAX_GROUP_APPEND);
    while pending.recv_many(&mut group, MAX_GROUP_APPEND).await > 0 {
        let deadline = Instant::now() + timeout;
        let entries: Vec<&AuditEntry> = group.iter().map(|append| &append.entry).collect();
        let outcome = match bounded_client(&pool, deadline, timeout).await {
            Ok(client) => {
                let outcome = timeout_at(deadline, insert_entries(&client, &entries)).await;
                finish(client, outcome)
            }
            Err(error) => Err(error),
        };
        match outcome {
            Ok(ids) => {
                for (append, entry_id) in group.drain(..).zip(ids) {
                    let _ = append.reply.send(Ok(LogEntryRef {
                        entry_id,
                        entry_hash: append.entry.hash,
                        leaf_index: None,
                    }));
                }
            }
            Err(error) => {
                for append in group.drain(..) {
                    let _ = append.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Inserts `entries` in one statement (one transaction); returns their ids in the same order.
async fn insert_entries(
    client: &impl deadpool_postgres::GenericClient,
    entries: &[&AuditEntry],
) -> Result<Vec<i64>, StoreError> {
    let bytes: Vec<&[u8]> = entries.iter().map(|entry| entry.bytes.as_slice()).collect();
    let hashes: Vec<&[u8]> = entries.iter().map(|entry| entry.hash.as_slice()).collect();
    let statement = client
        .prepare_cached(
            "INSERT INTO audit_entries (entry, entry_hash)
             SELECT entry, entry_hash FROM unnest($1::bytea[], $2::bytea[]) AS new (entry, entry_hash)
             RETURNING id, entry_hash",
        )
        .await
        .map_err(store_error)?;
    let rows = client
        .query(&statement, &[&bytes, &hashes])
        .await
        .map_err(store_error)?;
    // Matched by hash (each entry carries a random nonce), not by the order of RETURNING.
    let ids: HashMap<Vec<u8>, i64> = rows.iter().map(|row| (row.get(1), row.get(0))).collect();
    entries
        .iter()
        .map(|entry| {
            ids.get(entry.hash.as_slice())
                .copied()
                .ok_or_else(|| StoreError::Corrupt("an appended entry was not returned".to_owned()))
        })
        .collect()
}

async fn latest_certificates(client: &Object, users: &[UserId]) -> Result<Vec<StoredCertificate>, StoreError> {
    // One round trip: per user, a backward scan of certificates_by_user that stops at the first row.
    let statement = client
        .prepare_cached(
            "SELECT wanted.user_id, newest.serial, newest.key_sha256, newest.certificate_der
             FROM unnest($1::text[]) AS wanted (user_id)
             CROSS JOIN LATERAL (
                 SELECT serial, key_sha256, certificate_der FROM certificates
                 WHERE certificates.user_id = wanted.user_id
                 ORDER BY issued_at DESC, id DESC LIMIT 1
             ) AS newest",
        )
        .await
        .map_err(store_error)?;
    let names: Vec<&str> = users.iter().map(UserId::as_str).collect();
    let rows = client.query(&statement, &[&names]).await.map_err(store_error)?;
    rows.iter()
        .map(|row| {
            let user_id = UserId::parse(row.get::<_, &str>(0))
                .map_err(|error| StoreError::Corrupt(format!("stored user id: {error}")))?;
            Ok(StoredCertificate {
                user_id,
                serial: SerialNumber::from_bytes(row.get(1)),
                key_fingerprint: fingerprint(row.get(2))?,
                certificate_der: row.get(3),
            })
        })
        .collect()
}

impl IdentityStore for PostgresStore {
    async fn pin_state(
        &self,
        user: &UserId,
        key: &KeyFingerprint,
        since: OffsetDateTime,
    ) -> Result<PinState, StoreError> {
        let deadline = self.deadline();
        let client = self.client(deadline).await?;
        let outcome = timeout_at(deadline, pin_state(&client, user, key, since)).await;
        finish(client, outcome)
    }

    async fn commit_issuance(
        &self,
        certificate: NewCertificate,
        event: AuditEvent,
    ) -> Result<CommitOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        let pending = PendingIssuance {
            certificate,
            event,
            reply,
        };
        self.queue(&self.issuances, pending, answer, "issuance").await
    }

    async fn append_event(&self, event: AuditEvent) -> Result<LogEntryRef, StoreError> {
        let (reply, answer) = oneshot::channel();
        let pending = PendingAppend {
            entry: event.encode(),
            reply,
        };
        self.queue(&self.appends, pending, answer, "audit append").await
    }

    async fn record_ca_certificate(
        &self,
        certificate_sha256: [u8; 32],
        event: AuditEvent,
    ) -> Result<Option<LogEntryRef>, StoreError> {
        let deadline = self.deadline();
        let mut client = self.client(deadline).await?;
        let outcome = timeout_at(deadline, async {
            let transaction = client.transaction().await.map_err(store_error)?;
            let entry = append_entry(&transaction, &event).await?;
            // Waits for a concurrent recorder of the same certificate, then conflicts with its
            // row: rolling back also takes this entry back.
            let claimed = transaction
                .execute(
                    "INSERT INTO ca_certificates (certificate_sha256, entry_id, first_served_at)
                     VALUES ($1, $2, now()) ON CONFLICT DO NOTHING",
                    &[&certificate_sha256.as_slice(), &entry.entry_id],
                )
                .await
                .map_err(store_error)?;
            if claimed == 0 {
                transaction.rollback().await.map_err(store_error)?;
                return Ok(None);
            }
            transaction.commit().await.map_err(store_error)?;
            Ok(Some(entry))
        })
        .await;
        finish(client, outcome)
    }

    async fn latest_certificates(&self, users: Vec<UserId>) -> Result<Vec<StoredCertificate>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = self.deadline();
        let client = self.client(deadline).await?;
        let outcome = timeout_at(deadline, latest_certificates(&client, &users)).await;
        finish(client, outcome)
    }

    async fn log_index(&self, entry: &LogEntryRef) -> Result<Option<u64>, StoreError> {
        let deadline = self.deadline();
        let client = self.client(deadline).await?;
        let outcome = timeout_at(deadline, async {
            let statement = client
                .prepare_cached("SELECT leaf_index FROM audit_entries WHERE id = $1")
                .await
                .map_err(store_error)?;
            let row = client
                .query_opt(&statement, &[&entry.entry_id])
                .await
                .map_err(store_error)?;
            row.and_then(|row| row.get::<_, Option<i64>>(0)).map(to_u64).transpose()
        })
        .await;
        finish(client, outcome)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let deadline = self.deadline();
        let client = self.client(deadline).await?;
        let outcome = timeout_at(deadline, async {
            client.simple_query("SELECT 1").await.map(|_| ()).map_err(store_error)
        })
        .await;
        finish(client, outcome)
    }
}

fn to_u64(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative log value {value}")))
}

fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("log value {value} out of range")))
}

fn to_hash(bytes: &[u8]) -> Result<Hash, StoreError> {
    Hash::try_from(bytes).map_err(|_| StoreError::Corrupt("stored hash is not 32 bytes".to_owned()))
}

async fn read_head(client: &impl deadpool_postgres::GenericClient, lock: bool) -> Result<LogHead, StoreError> {
    let query = if lock {
        "SELECT size, root FROM audit_log_head WHERE id = 1 FOR UPDATE"
    } else {
        "SELECT size, root FROM audit_log_head WHERE id = 1"
    };
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
/// when it was planned while the tree was small; that plan stayed, and each read of the right edge
/// or of a proof then cost time in proportion to the whole log (`BENCHMARKS.md`, the late-night
/// session). A scalar subquery per key is planned as its own index probe.
const READ_NODES: &str = "SELECT (SELECT node.hash FROM audit_tree_nodes AS node
                                  WHERE node.level = wanted.level AND node.node_index = wanted.node_index)
                          FROM unnest($1::smallint[], $2::bigint[]) WITH ORDINALITY AS wanted (level, node_index, position)
                          ORDER BY wanted.position";

/// The hashes of `keys` (`READ_NODES`), `None` for a node not stored.
async fn read_nodes(
    client: &impl deadpool_postgres::GenericClient,
    keys: &[NodeKey],
) -> Result<Vec<Option<Hash>>, StoreError> {
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

/// One sequencing transaction (the `LogStore::sequence` contract): the head row is locked
/// (`FOR UPDATE`), pending entries are taken with `SKIP LOCKED`, and the head moves by a
/// compare-and-swap on (size, root).
async fn sequence(client: &mut Object, expected: LogHead, max_entries: usize) -> Result<SequenceOutcome, StoreError> {
    let transaction = client.transaction().await.map_err(store_error)?;
    let head = read_head(&transaction, true).await?;
    if head != expected {
        transaction.rollback().await.map_err(store_error)?;
        return Ok(SequenceOutcome::HeadMoved(head));
    }
    let limit = i64::try_from(max_entries).unwrap_or(i64::MAX);
    // The pending entries must come from an ordered scan of the partial index, which stops after
    // `limit` rows. Without statistics (a new database, before autovacuum's first ANALYZE) the
    // planner prefers a bitmap scan of every pending row and a full sort under the row locks: a
    // cost that grows with the backlog (EXPLAIN ANALYZE: 35 ms instead of 1.3 ms for 1,024 of
    // 22,000 pending; see BENCHMARKS.md). A planner setting only: the rows taken are the same.
    transaction
        .batch_execute("SET LOCAL enable_bitmapscan = off")
        .await
        .map_err(store_error)?;
    let pending: Vec<PendingEntry> = transaction
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
    transaction
        .batch_execute("SET LOCAL enable_bitmapscan TO DEFAULT")
        .await
        .map_err(store_error)?;
    if pending.is_empty() {
        transaction.rollback().await.map_err(store_error)?;
        return Ok(SequenceOutcome::Idle(head));
    }
    let frontier = read_nodes(&transaction, &frontier_keys(head.size))
        .await?
        .into_iter()
        .collect::<Option<Vec<Hash>>>()
        .ok_or_else(|| StoreError::Corrupt(format!("right-edge nodes of size {} are missing", head.size)))?;
    let planned = plan_batch(head, frontier, &pending).map_err(|error| StoreError::Corrupt(error.to_string()))?;
    let levels: Vec<i16> = planned.nodes.iter().map(|((level, _), _)| *level as i16).collect();
    let indices: Vec<i64> = planned
        .nodes
        .iter()
        .map(|((_, index), _)| to_i64(*index))
        .collect::<Result<_, _>>()?;
    let hashes: Vec<&[u8]> = planned.nodes.iter().map(|(_, hash)| hash.as_slice()).collect();
    // The primary key refuses a node written twice: a second sequencer could not slip through.
    // Prepared once per connection (no join, so no plan to go wrong; as the two head statements).
    let insert_nodes = transaction
        .prepare_cached(
            "INSERT INTO audit_tree_nodes (level, node_index, hash)
             SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])",
        )
        .await
        .map_err(store_error)?;
    transaction
        .execute(&insert_nodes, &[&levels, &indices, &hashes])
        .await
        .map_err(store_error)?;
    let entry_ids: Vec<i64> = planned.assignments.iter().map(|(entry_id, _)| *entry_id).collect();
    let leaf_indices: Vec<i64> = planned
        .assignments
        .iter()
        .map(|(_, index)| to_i64(*index))
        .collect::<Result<_, _>>()?;
    let assigned = transaction
        .execute(
            "UPDATE audit_entries SET leaf_index = assignment.leaf_index
             FROM unnest($1::bigint[], $2::bigint[]) AS assignment (id, leaf_index)
             WHERE audit_entries.id = assignment.id AND audit_entries.leaf_index IS NULL",
            &[&entry_ids, &leaf_indices],
        )
        .await
        .map_err(store_error)?;
    if assigned != entry_ids.len() as u64 {
        return Err(StoreError::Integrity("an entry was sequenced twice".to_owned()));
    }
    let swap_head = transaction
        .prepare_cached("UPDATE audit_log_head SET size = $1, root = $2 WHERE id = 1 AND size = $3 AND root = $4")
        .await
        .map_err(store_error)?;
    let swapped = transaction
        .execute(
            &swap_head,
            &[
                &to_i64(planned.head.size)?,
                &planned.head.root.as_slice(),
                &to_i64(head.size)?,
                &head.root.as_slice(),
            ],
        )
        .await
        .map_err(store_error)?;
    if swapped != 1 {
        return Err(StoreError::Integrity(
            "the log head changed during sequencing".to_owned(),
        ));
    }
    transaction.commit().await.map_err(store_error)?;
    Ok(SequenceOutcome::Sequenced {
        head: planned.head,
        assignments: planned.assignments,
    })
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

impl LogStore for PostgresStore {
    type Leadership = PostgresLeadership;

    async fn try_lead(&self) -> Result<Option<PostgresLeadership>, StoreError> {
        let deadline = self.deadline();
        let client = self.client(deadline).await?;
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

    async fn log_head(&self) -> Result<LogHead, StoreError> {
        let deadline = self.deadline();
        let client = self.client(deadline).await?;
        let outcome = timeout_at(deadline, read_head(&client, false)).await;
        finish(client, outcome)
    }

    async fn sequence(&self, expected: LogHead, max_entries: usize) -> Result<SequenceOutcome, StoreError> {
        let deadline = self.deadline();
        let mut client = self.client(deadline).await?;
        let outcome = timeout_at(deadline, sequence(&mut client, expected, max_entries)).await;
        finish(client, outcome)
    }

    async fn subtree_hashes(&self, keys: Vec<NodeKey>) -> Result<Vec<Option<Hash>>, StoreError> {
        let deadline = self.deadline();
        let client = self.client(deadline).await?;
        let outcome = timeout_at(deadline, read_nodes(&client, &keys)).await;
        finish(client, outcome)
    }

    async fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let deadline = self.deadline();
        let client = self.client(deadline).await?;
        let outcome = timeout_at(deadline, async {
            let rows = client
                .query(
                    "SELECT entry FROM audit_entries WHERE leaf_index >= $1 AND leaf_index < $2 ORDER BY leaf_index",
                    &[&to_i64(start)?, &to_i64(end)?],
                )
                .await
                .map_err(store_error)?;
            Ok(rows.iter().map(|row| row.get::<_, Vec<u8>>(0)).collect())
        })
        .await;
        finish(client, outcome)
    }

    async fn store_checkpoint(&self, checkpoint: StoredCheckpoint) -> Result<(), StoreError> {
        let deadline = self.deadline();
        let client = self.client(deadline).await?;
        let outcome = timeout_at(deadline, async {
            let written = client
                .execute(
                    "INSERT INTO audit_checkpoints (size, root, note, signed_at) VALUES ($1, $2, $3, now())
                     ON CONFLICT (size) DO UPDATE SET note = excluded.note, signed_at = excluded.signed_at
                     WHERE audit_checkpoints.root = excluded.root",
                    &[&to_i64(checkpoint.size)?, &checkpoint.root.as_slice(), &checkpoint.note],
                )
                .await
                .map_err(store_error)?;
            // A different root for a signed size would be a fork: never stored.
            if written != 1 {
                return Err(StoreError::Integrity(format!(
                    "a checkpoint of size {} with another root exists",
                    checkpoint.size
                )));
            }
            Ok(())
        })
        .await;
        finish(client, outcome)
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        let deadline = self.deadline();
        let client = self.client(deadline).await?;
        let outcome = timeout_at(deadline, async {
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
        .await;
        finish(client, outcome)
    }
}

#[cfg(test)]
mod tests {
    //! Failure behaviour specific to a networked database; the shared behaviours are in `conformance`.

    use std::time::Instant as StdInstant;

    use super::*;
    use crate::store::conformance::{Harness, PostgresHarness, certificate, event, key, user};
    use crate::transparency::LogStore;

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
        let pins = generic_plan(&harness, READ_PINS, "text[]", "'{alice, bob}'").await;
        assert!(
            pins.contains("Index Scan using identities_pkey on identities"),
            "{pins}"
        );
        assert!(!pins.contains("Seq Scan on identities"), "{pins}");
    }

    #[test]
    fn a_group_never_holds_a_user_or_a_key_twice_and_keeps_the_queue_order() {
        let pending = |user_name: &str, key_byte: u8| PendingIssuance {
            certificate: certificate(user_name, key_byte, key_byte),
            event: event(user_name),
            reply: oneshot::channel().0,
        };
        let queued = vec![
            pending("alice", 1),
            pending("alice", 2),
            pending("bob", 1),
            pending("carol", 3),
            pending("carol", 3),
            pending("dave", 4),
        ];
        let (group, later) = without_repeats(queued);
        let names = |issuances: &[PendingIssuance]| {
            issuances
                .iter()
                .map(|pending| {
                    format!(
                        "{}/{}",
                        pending.certificate.user_id,
                        pending.certificate.key_fingerprint.as_bytes()[0]
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&group), ["alice/1", "carol/3", "dave/4"]);
        assert_eq!(names(&later), ["alice/2", "bob/1", "carol/3"]);
        let (group, later) = without_repeats(later);
        assert_eq!(names(&group), ["alice/2", "bob/1", "carol/3"]);
        assert!(later.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_gives_each_issuance_the_outcome_it_would_have_alone() {
        let harness = PostgresHarness::create().await;
        let store = harness.open().await.expect("open");
        for (name, key_byte) in [("bob", 2), ("carol", 3)] {
            let committed = store
                .commit_issuance(certificate(name, key_byte, key_byte), event(name))
                .await;
            assert!(matches!(committed, Ok(CommitOutcome::Committed { renewal: false, .. })));
        }
        let members = [
            certificate("alice", 1, 11),
            certificate("bob", 2, 12),
            certificate("carol", 9, 13),
            certificate("dave", 3, 14),
        ];
        let events: Vec<AuditEvent> = members.iter().map(|member| event(member.user_id.as_str())).collect();
        let group: Vec<(&NewCertificate, &AuditEvent)> = members.iter().zip(&events).collect();
        let mut client = store.pool.get().await.expect("client");
        let outcomes = commit_group(&mut client, &group).await.expect("group");
        assert!(
            matches!(&outcomes[0], CommitOutcome::Committed { renewal: false, .. }),
            "{outcomes:?}"
        );
        assert!(
            matches!(&outcomes[1], CommitOutcome::Committed { renewal: true, .. }),
            "{outcomes:?}"
        );
        assert_eq!(outcomes[2], CommitOutcome::PinnedToOtherKey(key(3)));
        assert_eq!(outcomes[3], CommitOutcome::KeyPinnedElsewhere);
        let since = OffsetDateTime::now_utc() - time::Duration::hours(1);
        for (name, key_byte, pinned, certificates) in [
            ("alice", 1, Some(key(1)), 1),
            ("bob", 2, Some(key(2)), 2),
            ("carol", 9, Some(key(3)), 1),
            ("dave", 3, None, 0),
        ] {
            let state = store
                .pin_state(&user(name), &key(key_byte), since)
                .await
                .expect("pin state");
            assert_eq!(state.user_pin, pinned, "{name}");
            assert_eq!(state.certificates_since, certificates, "{name}");
        }
        // Two entries more than the two single commits: the issuance and the renewal, in that order.
        let entries: Vec<Vec<u8>> = harness
            .raw_client()
            .await
            .query("SELECT entry FROM audit_entries ORDER BY id", &[])
            .await
            .expect("entries")
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(entries.len(), 4);
        let text = |entry: &[u8]| String::from_utf8_lossy(entry).into_owned();
        let (alice, bob) = (text(&entries[2]), text(&entries[3]));
        assert!(
            alice.contains("\nkind issuance\n") && alice.contains("\nsubject alice\n"),
            "{alice}"
        );
        assert!(
            bob.contains("\nkind renewal\n") && bob.contains("\nsubject bob\n"),
            "{bob}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_that_fails_is_committed_one_by_one_each_with_its_own_outcome() {
        let harness = PostgresHarness::create().await;
        let store = harness.open().await.expect("open");
        // Same serial: the group's certificate insert violates the primary key and rolls back.
        let (first, first_answer) = oneshot::channel();
        let (second, second_answer) = oneshot::channel();
        let group = vec![
            PendingIssuance {
                certificate: certificate("alice", 1, 7),
                event: event("alice"),
                reply: first,
            },
            PendingIssuance {
                certificate: certificate("erin", 5, 7),
                event: event("erin"),
                reply: second,
            },
        ];
        commit_or_answer(&store.pool, Duration::from_secs(10), group).await;
        let first = first_answer.await.expect("answered");
        let second = second_answer.await.expect("answered");
        assert!(
            matches!(first, Ok(CommitOutcome::Committed { renewal: false, .. })),
            "{first:?}"
        );
        assert!(matches!(second, Err(StoreError::Integrity(_))), "{second:?}");
        let since = OffsetDateTime::now_utc() - time::Duration::hours(1);
        let alice = store.pin_state(&user("alice"), &key(1), since).await.expect("alice");
        assert_eq!((alice.user_pin, alice.certificates_since), (Some(key(1)), 1));
        let erin = store.pin_state(&user("erin"), &key(5), since).await.expect("erin");
        assert_eq!(
            (erin.user_pin, erin.certificates_since),
            (None, 0),
            "erin's transaction rolled back"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_aborted_by_a_deadlock_with_another_replica_is_committed_one_by_one() {
        let harness = PostgresHarness::create().await;
        let store = harness.open().await.expect("open");
        // The other replica: bob's pin first, uncommitted.
        let mut other = harness.raw_client().await;
        let other = other.transaction().await.expect("begin");
        let pin = "INSERT INTO identities (user_id, key_sha256, spki_der, pinned_at) VALUES ($1, $2, $2, now())";
        other
            .execute(pin, &[&"bob", &key(20).as_bytes().as_slice()])
            .await
            .expect("bob");
        // The group pins alice, then waits for bob's row.
        let (first, first_answer) = oneshot::channel();
        let (second, second_answer) = oneshot::channel();
        let group = vec![
            PendingIssuance {
                certificate: certificate("bob", 2, 12),
                event: event("bob"),
                reply: first,
            },
            PendingIssuance {
                certificate: certificate("alice", 1, 11),
                event: event("alice"),
                reply: second,
            },
        ];
        let pool = store.pool.clone();
        let committer = tokio::spawn(async move { commit_or_answer(&pool, Duration::from_secs(10), group).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The other replica now waits for alice's row: a cycle. PostgreSQL aborts the group, whose
        // wait is the older (deadlock_timeout, 1 s by default), and this insert goes through.
        other
            .execute(pin, &[&"alice", &key(21).as_bytes().as_slice()])
            .await
            .expect("alice, once the group is aborted");
        other.commit().await.expect("commit");
        committer.await.expect("committer");
        // One by one, after the other replica committed: both users are pinned to its keys.
        let bob = first_answer.await.expect("answered");
        let alice = second_answer.await.expect("answered");
        assert!(
            matches!(&bob, Ok(CommitOutcome::PinnedToOtherKey(pinned)) if *pinned == key(20)),
            "{bob:?}"
        );
        assert!(
            matches!(&alice, Ok(CommitOutcome::PinnedToOtherKey(pinned)) if *pinned == key(21)),
            "{alice:?}"
        );
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
