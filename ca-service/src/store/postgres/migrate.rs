//! The PostgreSQL store's schema: versioned migrations, applied in one transaction under an
//! advisory lock (replicas starting together migrate once); a database newer than this binary is
//! refused.

use deadpool_postgres::Object;

use super::store_error;
use crate::storage::StoreError;

/// Versioned migrations, applied in order; a version is never edited once released.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_identities.sql")),
    (2, include_str!("migrations/0002_transparency_log.sql")),
    (3, include_str!("migrations/0003_ca_certificates.sql")),
    (4, include_str!("migrations/0004_admin.sql")),
    (5, include_str!("migrations/0005_log_backed_pins.sql")),
    (6, include_str!("migrations/0006_key_backup.sql")),
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Advisory lock key that serialises the migrations of replicas starting together ("e2eeca" + 1).
const MIGRATION_LOCK: i64 = 0x6532_6565_6361_0001;

/// Applies the pending migrations; returns the version the database was at before.
pub(super) async fn migrate(client: &mut Object) -> Result<i64, StoreError> {
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
