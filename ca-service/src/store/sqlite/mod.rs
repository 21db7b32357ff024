//! The embedded store: SQLite (bundled) in WAL mode with `synchronous=FULL`, versioned migrations.
//!
//! Concurrency: one writing connection and a few read-only ones, used from blocking threads; in WAL
//! mode a read never waits for a write transaction (or its fsync). Every write goes through the
//! group committer (`group_commit`), one thread that writes what is queued in one transaction,
//! each write in a savepoint of its own, so that one fsync makes a whole group durable; writes are
//! serialised by `BEGIN IMMEDIATE`, and the schema's uniqueness constraints (not this code)
//! guarantee one key per user, one user per key and unique serials.
//!
//! `identities` holds the pins and certificates (the issuer's, the lookups' and the CA record's
//! traits), `log` the transparency log (the readers' and the sequencer's traits, and sequencing
//! inside the groups), `requests` the dual-control requests, `admin` the rest of the Admin service
//! (the reset write, revocations and lookups), `backup` the key backups, escrow deposits and the
//! recovery key, `migrate` the schema.

mod admin;
mod backup;
mod export;
mod group_commit;
mod identities;
mod log;
mod migrate;
mod requests;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::oneshot;

use self::group_commit::{GroupWrite, Message, SigningFollower};
pub use self::log::SqliteLeadership;
pub use self::migrate::SCHEMA_VERSION;
use crate::issuer::SigningQueue;
use crate::storage::StoreError;
use crate::transparency::inline::InlineSequencing;

/// Read-only connections beside the writer: in WAL mode they read the last committed state
/// without waiting for a write transaction (and its fsync) to finish.
const READERS: usize = 4;

/// Prepared statements each connection keeps: more than the writer runs per group (writes,
/// savepoints, sequencing), so that none is parsed again.
const STATEMENT_CACHE: usize = 64;

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    /// The one connection that writes (SQLite allows one writer at a time anyway).
    connection: Arc<Mutex<Connection>>,
    /// Connections for reads that need no transaction with a write, used round robin.
    readers: Arc<[Mutex<Connection>]>,
    next_reader: Arc<AtomicUsize>,
    /// The group committer's queue (see `group_commit`); its thread ends with the last clone.
    writes: mpsc::Sender<Message>,
    /// The sequencer's hand-over to the group committer (see `transparency::inline`).
    inline: Arc<InlineSequencing>,
    /// The issuer's count of issuances at the HSM, once the store follows it.
    signing: Arc<SigningFollower>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SqliteStore")
    }
}

/// Maps a SQLite error: busy, locked, I/O and permission failures mean nothing was written.
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

/// Unix seconds, as the schema stores times.
fn unix(time: time::OffsetDateTime) -> i64 {
    time.unix_timestamp()
}

/// The group committer's thread has stopped (it panicked): nothing more can be written.
fn writer_stopped() -> StoreError {
    StoreError::Unavailable("the store's writer thread has stopped".to_owned())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|error| StoreError::Unavailable(format!("create {}: {error}", parent.display())))?;
        }
        let mut connection = Connection::open(path).map_err(store_error)?;
        // Page caches: 32 MiB for the writer, 8 MiB per reader (SQLite's 2 MiB made issuance on a
        // store of a million identities markedly slower than on an empty one).
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
        migrate::migrate(&mut connection)?;
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
        let inline = Arc::new(InlineSequencing::default());
        let signing = Arc::new(SigningFollower::default());
        let writes = group_commit::start(Arc::clone(&connection), Arc::clone(&inline), Arc::clone(&signing))?;
        Ok(SqliteStore {
            connection,
            readers: readers.into(),
            next_reader: Arc::new(AtomicUsize::new(0)),
            writes,
            inline,
            signing,
        })
    }

    /// Opens the store on a blocking thread (opening migrates, which may take a while).
    pub async fn open_async(path: &Path) -> Result<SqliteStore, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || SqliteStore::open(&path))
            .await
            .map_err(|_| StoreError::Unavailable("the store's open task panicked".to_owned()))?
    }

    /// Follows the issuer's count of issuances at the HSM: while every session is busy, the group
    /// committer holds a group holding an issuance open briefly for the next signed certificates.
    /// One issuer per store: a second call is ignored.
    pub fn follow_signing(&self, signing: Arc<SigningQueue>) {
        self.signing.follow(signing, group_commit::SATURATED_GROUP_HOLD);
    }

    /// Runs `work` on the write connection on a blocking thread (between two groups).
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

    /// Queues `write` for the group committer and waits for its answer, which comes only after the
    /// transaction holding it committed (or failed).
    async fn grouped<W: GroupWrite>(&self, write: W) -> Result<W::Output, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(Message::write(write, reply))
            .map_err(|_| writer_stopped())?;
        answer.await.map_err(|_| writer_stopped())?
    }
}

#[cfg(test)]
mod test_support {
    //! What the embedded store's own tests share: waiting for the writer's reports.

    use std::time::Duration;

    use super::SqliteStore;
    use crate::audit::LogEntryRef;
    use crate::issuer::{CommitOutcome, IssuanceStore, NewCertificate};
    use crate::store::conformance::event;
    use crate::transparency::inline::InlineReport;

    /// Waits for the writer's reports about the head it was handed (at least one), oldest first.
    pub(super) async fn reports(store: &SqliteStore) -> Vec<InlineReport> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let reports = store.inline.take_reports();
                if !reports.is_empty() {
                    return reports;
                }
                store.inline.reported().await;
            }
        })
        .await
        .expect("a report within 5 s")
    }

    /// Commits `certificate` and expects it to stand; returns its entry.
    pub(super) async fn committed_entry(store: &SqliteStore, certificate: NewCertificate) -> LogEntryRef {
        match store.commit_issuance(certificate, event("x")).await.expect("commit") {
            CommitOutcome::Committed { entry, .. } => entry,
            other => panic!("expected a commit, got {other:?}"),
        }
    }
}
