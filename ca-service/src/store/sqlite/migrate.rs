//! The embedded store's schema: versioned migrations, applied in order at open, each in its own
//! transaction; a database newer than this binary is refused.

use rusqlite::{Connection, TransactionBehavior, params};
use time::OffsetDateTime;

use super::{cached_row, store_error, unix};
use crate::storage::StoreError;

/// Versioned migrations, applied in order; a version is never edited once released.
pub(super) const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_identities.sql")),
    (2, include_str!("migrations/0002_transparency_log.sql")),
    (3, include_str!("migrations/0003_ca_certificates.sql")),
    (4, include_str!("migrations/0004_admin.sql")),
    (5, include_str!("migrations/0005_log_backed_pins.sql")),
    (6, include_str!("migrations/0006_key_backup.sql")),
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Applies every migration newer than the database's version, each in its own transaction.
pub(super) fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
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
