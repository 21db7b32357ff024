//! The embedded store: SQLite (bundled) in WAL mode with `synchronous=FULL`, versioned migrations.
//!
//! Concurrency: one connection behind a mutex, used from blocking threads. Writes are serialised by
//! `BEGIN IMMEDIATE`, and the uniqueness constraints of the schema (not this code) guarantee one key
//! per user, one user per key and unique serials.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

use super::StoreError;
use crate::audit::{AuditEvent, AuditKind};
use crate::identity::{KeyFingerprint, SerialNumber, StoredCertificate, UserId};
use crate::issuer::{CommitOutcome, IdentityStore, LogEntryRef, NewCertificate, PinState};

/// Versioned migrations, applied in order; a version is never edited once released.
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("migrations/sqlite/0001_identities.sql"))];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
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
                 PRAGMA busy_timeout = 5000;",
            )
            .map_err(store_error)?;
        let mut connection = connection;
        migrate(&mut connection)?;
        Ok(SqliteStore {
            connection: Arc::new(Mutex::new(connection)),
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
    let current: i64 = connection
        .query_row("SELECT coalesce(max(version), 0) FROM schema_migrations", [], |row| {
            row.get(0)
        })
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
        .execute(
            "INSERT INTO audit_entries (entry, entry_hash) VALUES (?1, ?2)",
            params![entry.bytes, entry.hash.as_slice()],
        )
        .map_err(store_error)?;
    let id = connection.last_insert_rowid();
    Ok(LogEntryRef {
        index: (id - 1) as u64,
        entry_hash: entry.hash,
    })
}

fn fingerprint(bytes: Vec<u8>) -> Result<KeyFingerprint, StoreError> {
    KeyFingerprint::from_bytes(&bytes).ok_or_else(|| StoreError::Corrupt("key fingerprint is not 32 bytes".to_owned()))
}

impl IdentityStore for SqliteStore {
    async fn pin_state(&self, user: &UserId, key: &KeyFingerprint) -> Result<PinState, StoreError> {
        let user = user.clone();
        let key = *key;
        self.with_connection(move |connection| {
            let user_pin: Option<Vec<u8>> = connection
                .query_row(
                    "SELECT key_sha256 FROM identities WHERE user_id = ?1",
                    params![user.as_str()],
                    |row| row.get(0),
                )
                .optional()
                .map_err(store_error)?;
            let owner: Option<String> = connection
                .query_row(
                    "SELECT user_id FROM identities WHERE key_sha256 = ?1",
                    params![key.as_bytes().as_slice()],
                    |row| row.get(0),
                )
                .optional()
                .map_err(store_error)?;
            Ok(PinState {
                user_pin: user_pin.map(fingerprint).transpose()?,
                key_pinned_elsewhere: owner.is_some_and(|owner| owner != user.as_str()),
            })
        })
        .await
    }

    async fn certificates_since(&self, user: &UserId, since: OffsetDateTime) -> Result<u64, StoreError> {
        let user = user.clone();
        self.with_connection(move |connection| {
            connection
                .query_row(
                    "SELECT count(*) FROM certificates WHERE user_id = ?1 AND issued_at >= ?2",
                    params![user.as_str(), unix(since)],
                    |row| row.get::<_, i64>(0),
                )
                .map(|count| count as u64)
                .map_err(store_error)
        })
        .await
    }

    async fn commit_issuance(
        &self,
        certificate: NewCertificate,
        event: AuditEvent,
    ) -> Result<CommitOutcome, StoreError> {
        self.with_connection(move |connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(store_error)?;
            let user = certificate.user_id.as_str();
            let key = certificate.key_fingerprint.as_bytes().as_slice();
            let pinned: Option<Vec<u8>> = transaction
                .query_row("SELECT key_sha256 FROM identities WHERE user_id = ?1", params![user], |row| row.get(0))
                .optional()
                .map_err(store_error)?;
            let renewal = match pinned {
                Some(pinned) if pinned.as_slice() == key => true,
                Some(pinned) => return Ok(CommitOutcome::PinnedToOtherKey(fingerprint(pinned)?)),
                None => {
                    let inserted = transaction.execute(
                        "INSERT INTO identities (user_id, key_sha256, spki_der, pinned_at) VALUES (?1, ?2, ?3, ?4)",
                        params![user, key, certificate.spki_der, unix(OffsetDateTime::now_utc())],
                    );
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
            transaction
                .execute(
                    "INSERT INTO certificates (serial, user_id, key_sha256, certificate_der, not_before, not_after, issued_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        certificate.serial.as_bytes(),
                        user,
                        key,
                        certificate.certificate_der,
                        unix(certificate.not_before),
                        unix(certificate.not_after),
                        unix(OffsetDateTime::now_utc()),
                    ],
                )
                .map_err(store_error)?;
            // The recorded kind follows what the transaction saw, not the earlier read.
            let event = AuditEvent { kind: if renewal { AuditKind::Renewal } else { AuditKind::Issuance }, ..event };
            let entry = append_entry(&transaction, &event)?;
            transaction.commit().map_err(store_error)?;
            Ok(CommitOutcome::Committed { renewal, entry })
        })
        .await
    }

    async fn append_event(&self, event: AuditEvent) -> Result<LogEntryRef, StoreError> {
        self.with_connection(move |connection| {
            let transaction = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(store_error)?;
            let entry = append_entry(&transaction, &event)?;
            transaction.commit().map_err(store_error)?;
            Ok(entry)
        })
        .await
    }

    async fn latest_certificates(&self, users: Vec<UserId>) -> Result<Vec<StoredCertificate>, StoreError> {
        self.with_connection(move |connection| {
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

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_connection(|connection| {
            connection
                .query_row("SELECT 1", [], |row| row.get::<_, i64>(0))
                .map(|_| ())
                .map_err(store_error)
        })
        .await
    }
}
