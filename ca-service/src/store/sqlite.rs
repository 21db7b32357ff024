//! The embedded store: SQLite (bundled) in WAL mode with `synchronous=FULL`, versioned migrations.
//!
//! Concurrency: one writing connection behind a mutex and a few read-only connections, used from
//! blocking threads; in WAL mode a read never waits for a write transaction. Writes are serialised
//! by `BEGIN IMMEDIATE`, and the uniqueness constraints of the schema (not this code) guarantee one
//! key per user, one user per key and unique serials.
//!
//! Group commit: issuances and audit appends go to one writer thread, which writes everything
//! waiting in one transaction, each write in its own savepoint, so that one fsync makes a whole
//! group durable. A write that the constraints refuse rolls back its savepoint alone; any other
//! failure, or a failed `COMMIT`, fails the whole group and writes nothing. No caller hears back
//! before the `COMMIT` that holds its write has returned. Once the sequencer has handed the log
//! head over (`transparency::inline`), each group also sequences what is pending, in a savepoint
//! of the same transaction, and answers each write with its entry's log index. While every HSM
//! session is busy, a group with an issuance is held open briefly for the next signed certificates
//! (`hold_for_more`).

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

use super::StoreError;
use crate::audit::{AuditEvent, AuditKind};
use crate::identity::{KeyFingerprint, SerialNumber, StoredCertificate, UserId};
use crate::issuer::{CommitOutcome, IdentityStore, LogEntryRef, NewCertificate, PinState, SigningQueue};
use crate::transparency::inline::InlineSequencing;
use crate::transparency::{
    LogHead, LogStore, NodeKey, PendingEntry, SequenceOutcome, StoredCheckpoint, frontier_keys, plan_batch,
};
use tlog::merkle::Hash;

/// Versioned migrations, applied in order; a version is never edited once released.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/sqlite/0001_identities.sql")),
    (2, include_str!("migrations/sqlite/0002_transparency_log.sql")),
    (3, include_str!("migrations/sqlite/0003_ca_certificates.sql")),
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Read-only connections beside the writer: in WAL mode they read the last committed state
/// without waiting for a write transaction (and its fsync) to finish.
const READERS: usize = 4;

/// Prepared statements each connection keeps. The writer runs about 20 distinct statements per
/// group (writes, savepoints, sequencing); with rusqlite's default of 16 the least recently used
/// were evicted and parsed again on every group.
const STATEMENT_CACHE: usize = 64;

/// Most writes the group committer puts in one transaction.
const MAX_GROUP_COMMIT: usize = 256;

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    /// The one connection that writes (SQLite allows one writer at a time anyway).
    connection: Arc<Mutex<Connection>>,
    /// Connections for reads that need no transaction with a write, used round robin.
    readers: Arc<[Mutex<Connection>]>,
    next_reader: Arc<AtomicUsize>,
    /// The group committer's queue (see the module docs); its thread ends with the last clone.
    writes: mpsc::Sender<GroupedWrite>,
    /// The sequencer's hand-over to the group committer (see `transparency::inline`).
    inline: Arc<InlineSequencing>,
    /// The issuer's count of issuances at the HSM, once it shows it (`IdentityStore::follow_signing`).
    signing: Arc<SigningFollower>,
}

/// One message for the group committer: a write, with where its outcome goes, or a nudge.
enum GroupedWrite {
    Issuance {
        certificate: NewCertificate,
        event: AuditEvent,
        reply: oneshot::Sender<Result<CommitOutcome, StoreError>>,
    },
    Append {
        event: AuditEvent,
        reply: oneshot::Sender<Result<LogEntryRef, StoreError>>,
    },
    Checkpoint {
        checkpoint: StoredCheckpoint,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Nothing to write: run a group anyway, so that pending entries are sequenced.
    Nudge,
}

impl GroupedWrite {
    /// Writes inside the group's transaction (in the caller's savepoint).
    fn write(self, connection: &Connection) -> Written {
        match self {
            GroupedWrite::Issuance {
                certificate,
                event,
                reply,
            } => Written::Issuance(Answer {
                outcome: write_issuance(connection, &certificate, event),
                reply,
            }),
            GroupedWrite::Append { event, reply } => Written::Append(Answer {
                outcome: append_entry(connection, &event),
                reply,
            }),
            GroupedWrite::Checkpoint { checkpoint, reply } => Written::Checkpoint(Answer {
                outcome: write_checkpoint(connection, &checkpoint),
                reply,
            }),
            GroupedWrite::Nudge => Written::Nothing,
        }
    }

    /// Answers with the group's error: nothing of it was written.
    fn fail(self, error: StoreError) {
        // A caller that gave up waiting is not an error here.
        let _ = match self {
            GroupedWrite::Issuance { reply, .. } => reply.send(Err(error)).map_err(drop),
            GroupedWrite::Append { reply, .. } => reply.send(Err(error)).map_err(drop),
            GroupedWrite::Checkpoint { reply, .. } => reply.send(Err(error)).map_err(drop),
            GroupedWrite::Nudge => Ok(()),
        };
    }
}

/// A grouped write's outcome and where it goes.
struct Answer<T> {
    outcome: Result<T, StoreError>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T> Answer<T> {
    fn error(&self) -> Option<&StoreError> {
        self.outcome.as_ref().err()
    }

    fn send(self) {
        // A caller that gave up waiting is not an error: its write stays committed, as it would have
        // without grouping.
        let _ = self.reply.send(self.outcome);
    }

    fn fail(self, error: StoreError) {
        let _ = self.reply.send(Err(error));
    }
}

/// A grouped write done inside its savepoint, not yet answered.
enum Written {
    Issuance(Answer<CommitOutcome>),
    Append(Answer<LogEntryRef>),
    Checkpoint(Answer<()>),
    Nothing,
}

impl Written {
    /// True when the savepoint holds something to commit: refusals and constraint failures
    /// are rolled back to it.
    fn keeps(&self) -> bool {
        match self {
            Written::Issuance(answer) => matches!(answer.outcome, Ok(CommitOutcome::Committed { .. })),
            Written::Append(answer) => answer.outcome.is_ok(),
            Written::Checkpoint(answer) => answer.outcome.is_ok(),
            Written::Nothing => false,
        }
    }

    /// An error that must fail the whole group: anything but a constraint the store enforces for
    /// this one write.
    fn group_error(&self) -> Option<StoreError> {
        let error = match self {
            Written::Issuance(answer) => answer.error(),
            Written::Append(answer) => answer.error(),
            Written::Checkpoint(answer) => answer.error(),
            Written::Nothing => None,
        }?;
        (!matches!(error, StoreError::Integrity(_))).then(|| error.clone())
    }

    /// Answers with this write's own outcome (after the group committed), with the log index of
    /// its entry when the group's transaction sequenced it (`assignments` in entry id order).
    fn answer(self, assignments: &[(i64, u64)]) {
        let index = |entry: &mut LogEntryRef| {
            entry.leaf_index = assignments
                .binary_search_by_key(&entry.entry_id, |(entry_id, _)| *entry_id)
                .ok()
                .map(|position| assignments[position].1);
        };
        match self {
            Written::Issuance(mut answer) => {
                if let Ok(CommitOutcome::Committed { entry, .. }) = &mut answer.outcome {
                    index(entry);
                }
                answer.send();
            }
            Written::Append(mut answer) => {
                if let Ok(entry) = &mut answer.outcome {
                    index(entry);
                }
                answer.send();
            }
            Written::Checkpoint(answer) => answer.send(),
            Written::Nothing => {}
        }
    }

    /// Answers with the group's error instead: nothing of the group was written.
    fn fail(self, error: StoreError) {
        match self {
            Written::Issuance(answer) => answer.fail(error),
            Written::Append(answer) => answer.fail(error),
            Written::Checkpoint(answer) => answer.fail(error),
            Written::Nothing => {}
        }
    }
}

/// How long the writer may leave entries that nobody waits for (refusals) unsequenced, so that one
/// sequencing covers many groups of them; a group with an issuance, whose caller waits for its
/// index, is sequenced in its own transaction.
const APPEND_SEQUENCING_DELAY: Duration = Duration::from_millis(10);

/// How long the writer may hold a group that holds an issuance open for more while every HSM session
/// is busy (`SigningQueue::saturated`). The HSM then sets the pace, so the wait costs no throughput,
/// and each commit it saves is CPU that a software token needs for signing: with an RSA-3072 CA on
/// SoftHSM, groups grew from 2.1 to 5.2 issuances and the service's CPU beyond the signature fell
/// from 490 to 432 µs per certificate (medians of 19 and 13 runs, BENCHMARKS.md).
const SATURATED_GROUP_HOLD: Duration = Duration::from_millis(6);

/// How often a held group looks again whether every HSM session is still busy.
const SATURATION_CHECK: Duration = Duration::from_micros(500);

/// The issuances at the HSM as the writer sees them (`IdentityStore::follow_signing`), and how long
/// it may hold a group for more of them.
struct SigningFollower {
    queue: OnceLock<Arc<SigningQueue>>,
    /// `SATURATED_GROUP_HOLD` in microseconds (tests change it).
    hold_micros: AtomicU64,
}

impl SigningFollower {
    fn new() -> SigningFollower {
        SigningFollower {
            queue: OnceLock::new(),
            hold_micros: AtomicU64::new(SATURATED_GROUP_HOLD.as_micros() as u64),
        }
    }

    fn saturated(&self) -> bool {
        self.queue.get().is_some_and(|queue| queue.saturated())
    }

    fn hold(&self) -> Duration {
        Duration::from_micros(self.hold_micros.load(Ordering::Relaxed))
    }
}

/// While every HSM session is busy, keeps a group that holds an issuance open for the next signed
/// certificates, at most the hold time, so that one commit serves several. Stops as soon as a
/// session is free (holding on would leave the HSM idle) or the group is full.
fn hold_for_more(writes: &mpsc::Receiver<GroupedWrite>, group: &mut Vec<GroupedWrite>, signing: &SigningFollower) {
    if !group.iter().any(|write| matches!(write, GroupedWrite::Issuance { .. })) {
        return;
    }
    let until = Instant::now() + signing.hold();
    while group.len() < MAX_GROUP_COMMIT && signing.saturated() {
        let slice = until.saturating_duration_since(Instant::now()).min(SATURATION_CHECK);
        if slice.is_zero() {
            break;
        }
        match writes.recv_timeout(slice) {
            Ok(write) => group.push(write),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Every store handle is gone: commit what is here; the loop then ends.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
}

/// The group committer's thread: takes what is waiting (at most `MAX_GROUP_COMMIT` writes), writes
/// it in one transaction, answers, and starts again; it ends when every store clone is gone. With
/// the log head handed over, it sequences in a group that holds an issuance or a nudge, and
/// otherwise at most `APPEND_SEQUENCING_DELAY` after the oldest entry it left pending (waking up for
/// it if nothing else comes). While every HSM session is busy it holds a group with an issuance
/// open for more (`hold_for_more`).
fn group_commit(
    connection: Arc<Mutex<Connection>>,
    writes: mpsc::Receiver<GroupedWrite>,
    inline: Arc<InlineSequencing>,
    signing: Arc<SigningFollower>,
) {
    // When the oldest entry committed but left unsequenced was committed.
    let mut owed_since: Option<Instant> = None;
    loop {
        let first = match owed_since {
            None => match writes.recv() {
                Ok(write) => write,
                Err(_) => break,
            },
            Some(since) => match writes.recv_timeout(APPEND_SEQUENCING_DELAY.saturating_sub(since.elapsed())) {
                Ok(write) => write,
                // Time to sequence what was left: a group with nothing to write does it.
                Err(mpsc::RecvTimeoutError::Timeout) => GroupedWrite::Nudge,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP_COMMIT {
            match writes.try_recv() {
                Ok(write) => group.push(write),
                Err(_) => break,
            }
        }
        hold_for_more(&writes, &mut group, &signing);
        let sequence = owed_since.is_some_and(|since| since.elapsed() >= APPEND_SEQUENCING_DELAY)
            || group
                .iter()
                .any(|write| matches!(write, GroupedWrite::Issuance { .. } | GroupedWrite::Nudge));
        // A nudge only asks for a group: it needs no place in one.
        group.retain(|write| !matches!(write, GroupedWrite::Nudge));
        let appends = group.iter().any(|write| matches!(write, GroupedWrite::Append { .. }));
        let mut connection = connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        commit_group(&mut connection, group, &inline, sequence);
        owed_since = match (sequence, inline.assignment()) {
            (true, _) | (false, None) => None,
            (false, Some(_)) if appends => owed_since.or_else(|| Some(Instant::now())),
            (false, Some(_)) => owed_since,
        };
    }
}

/// Writes `group` in one transaction, each write in its own savepoint; then, if `sequence` is set
/// and the sequencer handed the log head over, sequences what is pending (the group's entries
/// included) in the same transaction. Answers every caller: with its own outcome and its entry's
/// log index once `COMMIT` returned, or with the error that stopped the group. A group of one needs
/// no savepoint: a refused write rolls the whole transaction back (unless entries were sequenced).
fn commit_group(connection: &mut Connection, group: Vec<GroupedWrite>, inline: &InlineSequencing, sequence: bool) {
    let assignment = inline.assignment().filter(|_| sequence);
    if group.is_empty() && assignment.is_none() {
        return;
    }
    let transaction = match WriteTransaction::begin(connection) {
        Ok(transaction) => transaction,
        Err(error) => {
            let error = store_error(error);
            if let Some((head, _)) = assignment {
                inline.report(head, Err(error.clone()));
            }
            group.into_iter().for_each(|write| write.fail(error.clone()));
            return;
        }
    };
    let savepoints = group.len() > 1;
    let mut written = Vec::with_capacity(group.len());
    let mut kept = 0;
    let mut writes = group.into_iter();
    let mut failure = None;
    while failure.is_none()
        && let Some(write) = writes.next()
    {
        if savepoints && let Err(error) = transaction.run("SAVEPOINT grouped_write") {
            let error = store_error(error);
            write.fail(error.clone());
            failure = Some(error);
            continue;
        }
        let done = write.write(&transaction);
        failure = done.group_error();
        if failure.is_none() && done.keeps() {
            kept += 1;
        }
        if savepoints && failure.is_none() {
            // Refusals keep nothing: back to the savepoint, which RELEASE then drops either way.
            let ended = if done.keeps() {
                transaction.run("RELEASE grouped_write")
            } else {
                transaction
                    .run("ROLLBACK TO grouped_write")
                    .and_then(|()| transaction.run("RELEASE grouped_write"))
            };
            failure = ended.map_err(store_error).err();
        }
        written.push(done);
    }
    let sequencing = match assignment {
        Some((head, max_entries)) if failure.is_none() => {
            let outcome = sequence_in_savepoint(&transaction, head, max_entries).unwrap_or_else(|error| {
                failure = Some(error.clone());
                Err(error)
            });
            Some((head, outcome))
        }
        _ => None,
    };
    let assignments = match &sequencing {
        Some((_, Ok(SequenceOutcome::Sequenced { assignments, .. }))) => assignments.clone(),
        _ => Vec::new(),
    };
    // Commit only what is worth keeping. After a failure nothing of the group stays, and a lone
    // refused write keeps nothing: dropping the transaction then rolls it back.
    let failure = match failure {
        None if kept > 0 || !assignments.is_empty() => transaction.commit().map_err(store_error).err(),
        failure => failure,
    };
    match (sequencing, &failure) {
        // Rolled back with the group: the head stays where it was, to be extended next time.
        (Some((_, Ok(SequenceOutcome::Sequenced { .. }))), Some(_)) | (None, _) => {}
        (Some((head, outcome)), _) => inline.report(head, outcome),
    }
    match failure {
        None => written.into_iter().for_each(|done| done.answer(&assignments)),
        Some(error) => {
            written.into_iter().for_each(|done| done.fail(error.clone()));
            writes.for_each(|write| write.fail(error.clone()));
        }
    }
}

/// Sequences up to `max_entries` pending entries onto `head` inside the group's transaction, in a
/// savepoint: a failure or a moved head (the inner result) writes nothing of the sequencing and
/// leaves the group's own writes to commit. The outer error means the savepoint itself failed: the
/// transaction is in doubt and the group must fail.
fn sequence_in_savepoint(
    transaction: &WriteTransaction<'_>,
    head: LogHead,
    max_entries: usize,
) -> Result<Result<SequenceOutcome, StoreError>, StoreError> {
    transaction.run("SAVEPOINT sequencing").map_err(store_error)?;
    let outcome = sequence_within(transaction, head, max_entries);
    let ended = if matches!(outcome, Ok(SequenceOutcome::Sequenced { .. })) {
        transaction.run("RELEASE sequencing")
    } else {
        transaction
            .run("ROLLBACK TO sequencing")
            .and_then(|()| transaction.run("RELEASE sequencing"))
    };
    ended.map_err(store_error)?;
    Ok(outcome)
}

/// A `BEGIN IMMEDIATE` transaction whose control statements (`BEGIN`, `SAVEPOINT`, `RELEASE`,
/// `COMMIT`, `ROLLBACK`) are prepared once per connection and cached, where rusqlite's `Transaction`
/// parses each one every time: on the write path that parsing cost more than some of the writes.
/// Rolls back when dropped uncommitted.
struct WriteTransaction<'a> {
    connection: &'a Connection,
    open: bool,
}

impl<'a> WriteTransaction<'a> {
    fn begin(connection: &'a Connection) -> rusqlite::Result<WriteTransaction<'a>> {
        run_cached(connection, "BEGIN IMMEDIATE")?;
        Ok(WriteTransaction { connection, open: true })
    }

    /// Runs one cached statement that returns no rows.
    fn run(&self, sql: &str) -> rusqlite::Result<()> {
        run_cached(self.connection, sql)
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        // A failed COMMIT leaves the transaction open: the drop then rolls it back.
        self.run("COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for WriteTransaction<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.connection
    }
}

impl Drop for WriteTransaction<'_> {
    fn drop(&mut self) {
        if self.open {
            // If the rollback fails the connection is broken, and the next BEGIN reports it.
            let _ = run_cached(self.connection, "ROLLBACK");
        }
    }
}

fn run_cached(connection: &Connection, sql: &str) -> rusqlite::Result<()> {
    connection.prepare_cached(sql)?.execute([]).map(drop)
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SqliteStore")
    }
}

fn store_error(error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::SystemIoFailure | ErrorCode::DiskFull,
        ) => StoreError::Unavailable(error.to_string()),
        Some(ErrorCode::ConstraintViolation) => StoreError::Integrity(error.to_string()),
        Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => {
            StoreError::Unavailable(error.to_string())
        }
        _ => StoreError::Corrupt(error.to_string()),
    }
}

fn unix(time: OffsetDateTime) -> i64 {
    time.unix_timestamp()
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|error| StoreError::Unavailable(format!("create {}: {error}", parent.display())))?;
        }
        let connection = Connection::open(path).map_err(store_error)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA busy_timeout = 5000;
                 PRAGMA cache_size = -32768;",
            )
            .map_err(store_error)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mut connection = connection;
        migrate(&mut connection)?;
        let readers = (0..READERS)
            .map(|_| {
                let reader =
                    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(store_error)?;
                reader
                    .execute_batch("PRAGMA busy_timeout = 5000; PRAGMA cache_size = -8192;")
                    .map_err(store_error)?;
                reader.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                Ok(Mutex::new(reader))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let connection = Arc::new(Mutex::new(connection));
        let (writes, queue) = mpsc::channel();
        let writer = Arc::clone(&connection);
        let inline = Arc::new(InlineSequencing::default());
        let handed_over = Arc::clone(&inline);
        let signing = Arc::new(SigningFollower::new());
        let followed = Arc::clone(&signing);
        std::thread::Builder::new()
            .name("sqlite-group-commit".to_owned())
            .spawn(move || group_commit(writer, queue, handed_over, followed))
            .map_err(|error| StoreError::Unavailable(format!("cannot start the store's writer thread: {error}")))?;
        Ok(SqliteStore {
            connection,
            readers: readers.into(),
            next_reader: Arc::new(AtomicUsize::new(0)),
            writes,
            inline,
            signing,
        })
    }

    /// Runs `work` on the connection on a blocking thread.
    async fn with_connection<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut connection)
        })
        .await
        .map_err(|_| StoreError::Unavailable("store task panicked".to_owned()))?
    }

    /// Queues `write` for the group committer.
    fn group_write(&self, write: GroupedWrite) -> Result<(), StoreError> {
        self.writes.send(write).map_err(|_| writer_stopped())
    }

    /// Runs the read-only `work` on one of the reader connections on a blocking thread. It sees
    /// every transaction committed before it starts.
    async fn with_reader<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        let index = self.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        tokio::task::spawn_blocking(move || {
            let reader = readers[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&reader)
        })
        .await
        .map_err(|_| StoreError::Unavailable("store task panicked".to_owned()))?
    }
}

/// Applies every migration newer than the database's version, each in its own transaction.
fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    connection
        .execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INTEGER NOT NULL PRIMARY KEY,
                 applied_at INTEGER NOT NULL
             ) STRICT;",
        )
        .map_err(store_error)?;
    let current: i64 = cached_row(
        connection,
        "SELECT coalesce(max(version), 0) FROM schema_migrations",
        [],
        |row| row.get(0),
    )
    .map_err(store_error)?;
    let latest = SCHEMA_VERSION;
    if current > latest {
        return Err(StoreError::Schema(format!(
            "the database is at schema version {current}, newer than this binary knows ({latest}); upgrade the CA"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(store_error)?;
        transaction
            .execute_batch(sql)
            .map_err(|error| StoreError::Schema(format!("migration {version} failed: {error}")))?;
        transaction
            .execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![version, unix(OffsetDateTime::now_utc())],
            )
            .map_err(store_error)?;
        transaction.commit().map_err(store_error)?;
        tracing::info!(version, "applied embedded-store migration");
    }
    Ok(())
}

fn append_entry(connection: &Connection, event: &AuditEvent) -> Result<LogEntryRef, StoreError> {
    let entry = event.encode();
    connection
        .prepare_cached("INSERT INTO audit_entries (entry, entry_hash) VALUES (?1, ?2)")
        .and_then(|mut statement| statement.execute(params![entry.bytes, entry.hash.as_slice()]))
        .map_err(store_error)?;
    Ok(LogEntryRef {
        entry_id: connection.last_insert_rowid(),
        entry_hash: entry.hash,
        leaf_index: None,
    })
}

/// Stores a signed checkpoint, replacing the signature of one of the same size and root; a
/// different root for a signed size would be a fork and is refused (`Integrity`).
fn write_checkpoint(connection: &Connection, checkpoint: &StoredCheckpoint) -> Result<(), StoreError> {
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
    if written != 1 {
        return Err(StoreError::Integrity(format!(
            "a checkpoint of size {} with another root exists",
            checkpoint.size
        )));
    }
    Ok(())
}

/// The `commit_issuance` contract inside a transaction (or savepoint) the caller commits.
fn write_issuance(
    connection: &Connection,
    certificate: &NewCertificate,
    event: AuditEvent,
) -> Result<CommitOutcome, StoreError> {
    let user = certificate.user_id.as_str();
    let key = certificate.key_fingerprint.as_bytes().as_slice();
    let pinned: Option<Vec<u8>> = connection
        .prepare_cached("SELECT key_sha256 FROM identities WHERE user_id = ?1")
        .and_then(|mut statement| statement.query_row(params![user], |row| row.get(0)).optional())
        .map_err(store_error)?;
    let renewal = match pinned {
        Some(pinned) if pinned.as_slice() == key => true,
        Some(pinned) => return Ok(CommitOutcome::PinnedToOtherKey(fingerprint(pinned)?)),
        None => {
            let inserted = connection
                .prepare_cached(
                    "INSERT INTO identities (user_id, key_sha256, spki_der, pinned_at) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        user,
                        key,
                        certificate.spki_der,
                        unix(OffsetDateTime::now_utc())
                    ])
                });
            match inserted {
                Ok(_) => false,
                // The key's UNIQUE constraint: the key belongs to another user.
                Err(error) if error.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                    return Ok(CommitOutcome::KeyPinnedElsewhere);
                }
                Err(error) => return Err(store_error(error)),
            }
        }
    };
    connection
        .prepare_cached(
            "INSERT INTO certificates (serial, user_id, key_sha256, certificate_der, not_before, not_after, issued_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                certificate.serial.as_bytes(),
                user,
                key,
                certificate.certificate_der,
                unix(certificate.not_before),
                unix(certificate.not_after),
                unix(OffsetDateTime::now_utc()),
            ])
        })
        .map_err(store_error)?;
    // The recorded kind follows what the transaction saw, not the earlier read.
    let event = AuditEvent {
        kind: AuditKind::issuance(renewal),
        ..event
    };
    let entry = append_entry(connection, &event)?;
    Ok(CommitOutcome::Committed { renewal, entry })
}

/// `query_row` through the connection's statement cache: the hot paths run the same few statements,
/// and parsing them again each time cost more than running them.
fn cached_row<T, P: rusqlite::Params>(
    connection: &Connection,
    sql: &str,
    params: P,
    map: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    connection.prepare_cached(sql)?.query_row(params, map)
}

/// The group committer's thread has stopped (it panicked): nothing more can be written.
fn writer_stopped() -> StoreError {
    StoreError::Unavailable("the store's writer thread has stopped".to_owned())
}

fn fingerprint(bytes: Vec<u8>) -> Result<KeyFingerprint, StoreError> {
    KeyFingerprint::from_bytes(&bytes).ok_or_else(|| StoreError::Corrupt("key fingerprint is not 32 bytes".to_owned()))
}

impl IdentityStore for SqliteStore {
    fn follow_signing(&self, signing: Arc<SigningQueue>) {
        // One issuer per store: a second one (tests) leaves the first one's count in place.
        let _ = self.signing.queue.set(signing);
    }

    async fn pin_state(
        &self,
        user: &UserId,
        key: &KeyFingerprint,
        since: OffsetDateTime,
    ) -> Result<PinState, StoreError> {
        let user = user.clone();
        let key = *key;
        self.with_reader(move |connection| {
            let user_pin: Option<Vec<u8>> = cached_row(
                connection,
                "SELECT key_sha256 FROM identities WHERE user_id = ?1",
                params![user.as_str()],
                |row| row.get(0),
            )
            .optional()
            .map_err(store_error)?;
            let owner: Option<String> = cached_row(
                connection,
                "SELECT user_id FROM identities WHERE key_sha256 = ?1",
                params![key.as_bytes().as_slice()],
                |row| row.get(0),
            )
            .optional()
            .map_err(store_error)?;
            let certificates_since: i64 = cached_row(
                connection,
                "SELECT count(*) FROM certificates WHERE user_id = ?1 AND issued_at >= ?2",
                params![user.as_str(), unix(since)],
                |row| row.get(0),
            )
            .map_err(store_error)?;
            Ok(PinState {
                user_pin: user_pin.map(fingerprint).transpose()?,
                key_pinned_elsewhere: owner.is_some_and(|owner| owner != user.as_str()),
                certificates_since: certificates_since.unsigned_abs(),
            })
        })
        .await
    }

    async fn commit_issuance(
        &self,
        certificate: NewCertificate,
        event: AuditEvent,
    ) -> Result<CommitOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.group_write(GroupedWrite::Issuance {
            certificate,
            event,
            reply,
        })?;
        answer.await.map_err(|_| writer_stopped())?
    }

    async fn append_event(&self, event: AuditEvent) -> Result<LogEntryRef, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.group_write(GroupedWrite::Append { event, reply })?;
        answer.await.map_err(|_| writer_stopped())?
    }

    async fn record_ca_certificate(
        &self,
        certificate_sha256: [u8; 32],
        event: AuditEvent,
    ) -> Result<Option<LogEntryRef>, StoreError> {
        self.with_connection(move |connection| {
            let transaction = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(store_error)?;
            let known = cached_row(
                &transaction,
                "SELECT 1 FROM ca_certificates WHERE certificate_sha256 = ?1",
                params![certificate_sha256.as_slice()],
                |_| Ok(()),
            )
            .optional()
            .map_err(store_error)?;
            if known.is_some() {
                return Ok(None);
            }
            let entry = append_entry(&transaction, &event)?;
            transaction
                .execute(
                    "INSERT INTO ca_certificates (certificate_sha256, entry_id, first_served_at) VALUES (?1, ?2, ?3)",
                    params![
                        certificate_sha256.as_slice(),
                        entry.entry_id,
                        unix(OffsetDateTime::now_utc())
                    ],
                )
                .map_err(store_error)?;
            transaction.commit().map_err(store_error)?;
            Ok(Some(entry))
        })
        .await
    }

    async fn latest_certificates(&self, users: Vec<UserId>) -> Result<Vec<StoredCertificate>, StoreError> {
        self.with_reader(move |connection| {
            let mut statement = connection
                .prepare_cached(
                    "SELECT serial, key_sha256, certificate_der FROM certificates
                     WHERE user_id = ?1 ORDER BY issued_at DESC, rowid DESC LIMIT 1",
                )
                .map_err(store_error)?;
            let mut found = Vec::new();
            for user in users {
                let row = statement
                    .query_row(params![user.as_str()], |row| {
                        Ok((
                            row.get::<_, Vec<u8>>(0)?,
                            row.get::<_, Vec<u8>>(1)?,
                            row.get::<_, Vec<u8>>(2)?,
                        ))
                    })
                    .optional()
                    .map_err(store_error)?;
                if let Some((serial, key, certificate_der)) = row {
                    found.push(StoredCertificate {
                        user_id: user,
                        serial: SerialNumber::from_bytes(serial),
                        key_fingerprint: fingerprint(key)?,
                        certificate_der,
                    });
                }
            }
            Ok(found)
        })
        .await
    }

    async fn log_index(&self, entry: &LogEntryRef) -> Result<Option<u64>, StoreError> {
        let entry_id = entry.entry_id;
        self.with_reader(move |connection| {
            let index: Option<Option<i64>> = cached_row(
                connection,
                "SELECT leaf_index FROM audit_entries WHERE id = ?1",
                params![entry_id],
                |row| row.get(0),
            )
            .optional()
            .map_err(store_error)?;
            index.flatten().map(to_u64).transpose()
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_connection(|connection| {
            cached_row(connection, "SELECT 1", [], |row| row.get::<_, i64>(0))
                .map(|_| ())
                .map_err(store_error)
        })
        .await
    }
}

fn to_u64(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative log value {value}")))
}

fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("log value {value} out of range")))
}

fn to_hash(bytes: Vec<u8>) -> Result<Hash, StoreError> {
    Hash::try_from(bytes.as_slice()).map_err(|_| StoreError::Corrupt("stored hash is not 32 bytes".to_owned()))
}

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
        root: to_hash(root)?,
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
            hash.map(to_hash).transpose()
        })
        .collect()
}

/// One sequencing transaction (the `LogStore::sequence` contract). `BEGIN IMMEDIATE` takes the
/// write lock first, so the head read here is the head the update replaces.
fn sequence(connection: &Connection, expected: LogHead, max_entries: usize) -> Result<SequenceOutcome, StoreError> {
    let transaction = WriteTransaction::begin(connection).map_err(store_error)?;
    let outcome = sequence_within(&transaction, expected, max_entries)?;
    if matches!(outcome, SequenceOutcome::Sequenced { .. }) {
        transaction.commit().map_err(store_error)?;
    }
    Ok(outcome)
}

/// Sequencing inside a write transaction the caller ends: reads the head, refuses a head that is
/// not `expected`, and writes the batch's nodes, indices and the new head (with the
/// compare-and-swap).
fn sequence_within(
    connection: &Connection,
    expected: LogHead,
    max_entries: usize,
) -> Result<SequenceOutcome, StoreError> {
    let head = read_head(connection)?;
    if head != expected {
        return Ok(SequenceOutcome::HeadMoved(head));
    }
    let pending = {
        let mut statement = connection
            .prepare_cached("SELECT id, entry FROM audit_entries WHERE leaf_index IS NULL ORDER BY id LIMIT ?1")
            .map_err(store_error)?;
        let rows = statement
            .query_map(params![max_entries as i64], |row| {
                Ok(PendingEntry {
                    entry_id: row.get(0)?,
                    bytes: row.get(1)?,
                })
            })
            .map_err(store_error)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(store_error)?
    };
    if pending.is_empty() {
        return Ok(SequenceOutcome::Idle(head));
    }
    let frontier = read_nodes(connection, &frontier_keys(head.size))?
        .into_iter()
        .collect::<Option<Vec<Hash>>>()
        .ok_or_else(|| StoreError::Corrupt(format!("right-edge nodes of size {} are missing", head.size)))?;
    let planned = plan_batch(head, frontier, &pending).map_err(|error| StoreError::Corrupt(error.to_string()))?;
    {
        let mut insert_node = connection
            .prepare_cached("INSERT INTO audit_tree_nodes (level, node_index, hash) VALUES (?1, ?2, ?3)")
            .map_err(store_error)?;
        for ((level, index), hash) in &planned.nodes {
            insert_node
                .execute(params![level, to_i64(*index)?, hash.as_slice()])
                .map_err(store_error)?;
        }
        let mut assign = connection
            .prepare_cached("UPDATE audit_entries SET leaf_index = ?2 WHERE id = ?1 AND leaf_index IS NULL")
            .map_err(store_error)?;
        for (entry_id, index) in &planned.assignments {
            if assign
                .execute(params![entry_id, to_i64(*index)?])
                .map_err(store_error)?
                != 1
            {
                return Err(StoreError::Integrity(format!("entry {entry_id} was sequenced twice")));
            }
        }
    }
    // The compare-and-swap: only the head this transaction read may be replaced.
    let (new_size, old_size) = (to_i64(planned.head.size)?, to_i64(head.size)?);
    let swapped = connection
        .prepare_cached("UPDATE audit_log_head SET size = ?1, root = ?2 WHERE id = 1 AND size = ?3 AND root = ?4")
        .and_then(|mut statement| {
            statement.execute(params![
                new_size,
                planned.head.root.as_slice(),
                old_size,
                head.root.as_slice()
            ])
        })
        .map_err(store_error)?;
    if swapped != 1 {
        return Err(StoreError::Integrity(
            "the log head changed during sequencing".to_owned(),
        ));
    }
    Ok(SequenceOutcome::Sequenced {
        head: planned.head,
        assignments: planned.assignments,
    })
}

/// The embedded store has one process: it always leads.
#[derive(Debug)]
pub struct SqliteLeadership;

impl LogStore for SqliteStore {
    type Leadership = SqliteLeadership;

    async fn try_lead(&self) -> Result<Option<SqliteLeadership>, StoreError> {
        Ok(Some(SqliteLeadership))
    }

    fn still_leading(&self, _leadership: &SqliteLeadership) -> bool {
        true
    }

    async fn log_head(&self) -> Result<LogHead, StoreError> {
        self.with_reader(read_head).await
    }

    async fn sequence(&self, expected: LogHead, max_entries: usize) -> Result<SequenceOutcome, StoreError> {
        self.with_connection(move |connection| sequence(connection, expected, max_entries))
            .await
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

    async fn store_checkpoint(&self, checkpoint: StoredCheckpoint) -> Result<(), StoreError> {
        // Through the group committer: it shares the next group's transaction and fsync instead
        // of taking the write connection between two groups.
        let (reply, answer) = oneshot::channel();
        self.group_write(GroupedWrite::Checkpoint { checkpoint, reply })?;
        answer.await.map_err(|_| writer_stopped())?
    }

    fn inline_sequencing(&self) -> Option<&InlineSequencing> {
        Some(&self.inline)
    }

    fn nudge(&self) {
        // A stopped writer fails every write already, and says so there.
        let _ = self.group_write(GroupedWrite::Nudge);
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
                    root: to_hash(root)?,
                    note,
                })
            })
            .transpose()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    //! Behaviour specific to the embedded store; the shared behaviours are in `conformance`.

    use super::*;
    use crate::store::conformance::{certificate, event};
    use crate::transparency::inline::InlineReport;

    /// Queues an issuance for a hand-made group and returns where its answer arrives.
    fn issuance(
        group: &mut Vec<GroupedWrite>,
        certificate: NewCertificate,
    ) -> oneshot::Receiver<Result<CommitOutcome, StoreError>> {
        let (reply, answer) = oneshot::channel();
        let event = event(certificate.user_id.as_str());
        group.push(GroupedWrite::Issuance {
            certificate,
            event,
            reply,
        });
        answer
    }

    fn count(connection: &Connection, table: &str) -> i64 {
        connection
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0))
            .expect("count")
    }

    fn fresh_connection(directory: &tempfile::TempDir) -> Connection {
        let path = directory.path().join("ca.sqlite3");
        drop(SqliteStore::open(&path).expect("migrated"));
        Connection::open(&path).expect("open")
    }

    #[test]
    fn a_refused_write_in_a_group_rolls_back_alone() {
        let directory = tempfile::tempdir().expect("tempdir");
        let mut connection = fresh_connection(&directory);
        let mut group = Vec::new();
        let alice = issuance(&mut group, certificate("alice", 1, 1));
        // Same serial as alice's: its identity row, written first, must go too.
        let bob = issuance(&mut group, certificate("bob", 2, 1));
        let (reply, appended) = oneshot::channel();
        group.push(GroupedWrite::Append {
            event: event("refusal"),
            reply,
        });
        // Alice's key, pinned earlier in the same group.
        let carol = issuance(&mut group, certificate("carol", 1, 3));
        commit_group(&mut connection, group, &InlineSequencing::default(), true);

        assert!(matches!(
            alice.blocking_recv().expect("answered"),
            Ok(CommitOutcome::Committed { renewal: false, .. })
        ));
        assert!(matches!(
            bob.blocking_recv().expect("answered"),
            Err(StoreError::Integrity(_))
        ));
        assert!(appended.blocking_recv().expect("answered").is_ok());
        assert_eq!(
            carol.blocking_recv().expect("answered").expect("no store error"),
            CommitOutcome::KeyPinnedElsewhere
        );
        assert_eq!(count(&connection, "identities"), 1, "only alice is pinned");
        assert_eq!(count(&connection, "certificates"), 1);
        assert_eq!(
            count(&connection, "audit_entries"),
            2,
            "alice's issuance and the refusal"
        );
    }

    #[test]
    fn a_failed_write_fails_its_whole_group_and_writes_nothing() {
        let directory = tempfile::tempdir().expect("tempdir");
        let mut connection = fresh_connection(&directory);
        let mut group = Vec::new();
        let (reply, appended) = oneshot::channel();
        group.push(GroupedWrite::Append {
            event: event("first"),
            reply,
        });
        let alice = issuance(&mut group, certificate("alice", 1, 1));
        let bob = issuance(&mut group, certificate("bob", 2, 2));
        // Not a constraint: the store cannot write certificates at all.
        connection
            .execute_batch("ALTER TABLE certificates RENAME TO certificates_elsewhere")
            .expect("rename");
        commit_group(&mut connection, group, &InlineSequencing::default(), true);

        assert!(matches!(
            appended.blocking_recv().expect("answered"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            alice.blocking_recv().expect("answered"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(
            matches!(bob.blocking_recv().expect("answered"), Err(StoreError::Corrupt(_))),
            "the write after the failure is answered too"
        );
        assert_eq!(count(&connection, "identities"), 0);
        assert_eq!(
            count(&connection, "audit_entries"),
            0,
            "the append before the failure is rolled back"
        );
    }

    #[tokio::test]
    async fn concurrent_writes_through_the_group_committer_are_each_answered_once() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&directory.path().join("ca.sqlite3")).expect("open");
        let commits = (0..64u8).map(|number| {
            let store = store.clone();
            // Every fourth request reuses the serial of the one before it.
            let serial = number - u8::from(number % 4 == 3);
            tokio::spawn(async move {
                store
                    .commit_issuance(certificate(&format!("user{number}"), number, serial), event("x"))
                    .await
            })
        });
        let mut committed = 0;
        let mut refused = 0;
        for commit in commits {
            match commit.await.expect("task") {
                Ok(CommitOutcome::Committed { .. }) => committed += 1,
                Err(StoreError::Integrity(_)) => refused += 1,
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        assert_eq!((committed, refused), (48, 16));
        let entries = store
            .with_reader(|connection| Ok(count(connection, "audit_entries")))
            .await
            .expect("count");
        assert_eq!(
            entries, 48,
            "one entry per committed issuance, none for the refused ones"
        );
    }

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

    /// Waits for the writer's reports about the head it was handed (at least one), oldest first.
    async fn reports(store: &SqliteStore) -> Vec<InlineReport> {
        let inline = store.inline_sequencing().expect("the embedded store sequences inline");
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                let reports = inline.take_reports();
                if !reports.is_empty() {
                    return reports;
                }
                inline.reported().await;
            }
        })
        .await
        .expect("a report within 5 s")
    }

    /// The one report the writer makes next.
    async fn next_report(store: &SqliteStore) -> InlineReport {
        let mut reports = reports(store).await;
        assert_eq!(reports.len(), 1, "one report: {reports:?}");
        reports.remove(0)
    }

    async fn committed_entry(store: &SqliteStore, certificate: NewCertificate) -> LogEntryRef {
        match store.commit_issuance(certificate, event("x")).await.expect("commit") {
            CommitOutcome::Committed { entry, .. } => entry,
            other => panic!("expected a commit, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_handed_over_head_is_extended_in_the_transaction_that_writes_an_issuance() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&directory.path().join("ca.sqlite3")).expect("open");
        let inline = store.inline_sequencing().expect("inline");
        inline.hand_over(LogHead::empty(), 100);

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

    /// A store whose log head is handed over, following `signing` with a hold of `hold`.
    fn store_following(directory: &tempfile::TempDir, signing: &Arc<SigningQueue>, hold: Duration) -> SqliteStore {
        let store = SqliteStore::open(&directory.path().join("ca.sqlite3")).expect("open");
        store
            .inline_sequencing()
            .expect("inline")
            .hand_over(LogHead::empty(), 100);
        store.follow_signing(Arc::clone(signing));
        store
            .signing
            .hold_micros
            .store(hold.as_micros() as u64, Ordering::Relaxed);
        store
    }

    #[tokio::test]
    async fn while_every_hsm_session_is_busy_an_issuance_is_held_for_the_next_to_share_its_commit() {
        let directory = tempfile::tempdir().expect("tempdir");
        let signing = Arc::new(SigningQueue::new(1));
        let store = Arc::new(store_following(&directory, &signing, Duration::from_secs(30)));
        let busy = signing.enter();

        let commit = |name: &'static str, serial: u8| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { committed_entry(&store, certificate(name, serial, serial)).await })
        };
        let first = commit("alice", 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!first.is_finished(), "held while the only session is busy");
        let second = commit("bob", 2);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!second.is_finished(), "the next one joins the held group");

        let released = Instant::now();
        drop(busy);
        let first = tokio::time::timeout(Duration::from_secs(5), first)
            .await
            .expect("answered once a session is free")
            .expect("task");
        let second = second.await.expect("task");
        assert!(
            released.elapsed() < Duration::from_secs(5),
            "not kept for the whole hold"
        );
        match &reports(&store).await[..] {
            [InlineReport::Sequenced { assignments, .. }] => assert_eq!(
                *assignments,
                vec![(first.entry_id, 0), (second.entry_id, 1)],
                "one group, one sequencing for both"
            ),
            other => panic!("expected one batch, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_held_group_commits_when_its_hold_ends_though_every_session_stays_busy() {
        let directory = tempfile::tempdir().expect("tempdir");
        let signing = Arc::new(SigningQueue::new(1));
        let hold = Duration::from_millis(300);
        let store = store_following(&directory, &signing, hold);
        let _busy = signing.enter();

        let started = Instant::now();
        let entry = tokio::time::timeout(
            Duration::from_secs(10),
            committed_entry(&store, certificate("alice", 1, 1)),
        )
        .await
        .expect("answered after the hold");
        assert!(started.elapsed() >= hold, "held for the hold time");
        assert_eq!(entry.leaf_index, Some(0), "and sequenced in its group");
    }

    #[tokio::test]
    async fn nothing_is_held_while_a_session_is_free_nor_a_group_without_an_issuance() {
        let directory = tempfile::tempdir().expect("tempdir");
        let signing = Arc::new(SigningQueue::new(2));
        let store = store_following(&directory, &signing, Duration::from_secs(30));
        let _one_of_two = signing.enter();
        tokio::time::timeout(
            Duration::from_secs(5),
            committed_entry(&store, certificate("alice", 1, 1)),
        )
        .await
        .expect("a session is free: not held");

        let _two_of_two = signing.enter();
        tokio::time::timeout(Duration::from_secs(5), store.append_event(event("refused")))
            .await
            .expect("a refusal is not held")
            .expect("append");
    }

    #[tokio::test]
    async fn appends_nobody_waits_for_are_sequenced_after_the_delay() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&directory.path().join("ca.sqlite3")).expect("open");
        store
            .inline_sequencing()
            .expect("inline")
            .hand_over(LogHead::empty(), 100);
        let started = std::time::Instant::now();
        let mut appended = Vec::new();
        for number in 0..3 {
            let entry = store
                .append_event(event(&format!("refused {number}")))
                .await
                .expect("append");
            if number == 0 {
                assert_eq!(entry.leaf_index, None, "a refusal does not wait for its index");
            }
            appended.push(entry.entry_id);
        }
        // Usually one batch for the three; on a slow disk the delay may pass between two appends.
        let mut sequenced = Vec::new();
        while sequenced.len() < appended.len() {
            for report in reports(&store).await {
                match report {
                    InlineReport::Sequenced { assignments, .. } => {
                        sequenced.extend(assignments.iter().map(|(entry_id, _)| *entry_id));
                    }
                    other => panic!("expected a batch, got {other:?}"),
                }
            }
        }
        assert_eq!(sequenced, appended, "sequenced in order, each once");
        assert!(started.elapsed() >= APPEND_SEQUENCING_DELAY, "not before the delay");
        assert_eq!(store.log_head().await.expect("head").size, 3);
    }

    #[tokio::test]
    async fn entries_written_before_the_hand_over_are_sequenced_by_a_nudge_and_paused_ones_wait() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&directory.path().join("ca.sqlite3")).expect("open");
        let inline = store.inline_sequencing().expect("inline");
        let early = store.append_event(event("early")).await.expect("append");
        assert_eq!(
            early.leaf_index, None,
            "nothing handed over: the entry waits in the outbox"
        );

        inline.hand_over(LogHead::empty(), 100);
        inline.pause(true);
        let paused = store.append_event(event("paused")).await.expect("append");
        assert_eq!(paused.leaf_index, None, "paused: no index");
        assert_eq!(store.log_head().await.expect("head").size, 0);

        inline.pause(false);
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
        let store = SqliteStore::open(&directory.path().join("ca.sqlite3")).expect("open");
        let inline = store.inline_sequencing().expect("inline");
        for number in 0..3 {
            store.append_event(event(&format!("e{number}"))).await.expect("append");
        }
        inline.hand_over(LogHead::empty(), 2);
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
        let store = SqliteStore::open(&directory.path().join("ca.sqlite3")).expect("open");
        let inline = store.inline_sequencing().expect("inline");
        let stale = LogHead { size: 7, root: [7; 32] };
        inline.hand_over(stale, 100);
        let entry = committed_entry(&store, certificate("alice", 1, 1)).await;
        assert_eq!(
            entry.leaf_index, None,
            "not sequenced on a head the store does not have"
        );
        assert!(matches!(
            next_report(&store).await,
            InlineReport::HeadMoved { expected, actual } if expected == stale && actual == LogHead::empty()
        ));
        assert_eq!(inline.assignment(), None, "the writer gave the head back");
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
        let inline = store.inline_sequencing().expect("inline");
        inline.hand_over(LogHead::empty(), 100);
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
        assert_eq!(inline.assignment(), None);
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
