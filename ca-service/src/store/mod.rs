//! The stores: the embedded SQLite store and PostgreSQL, each a folder by concern (`mod`: the
//! connections, `group_commit`, `identities`, `log`, `migrate`), implementing the traits their
//! callers define (see `storage`). `conformance` runs one behaviour suite against both.
//!
//! What both compute the same way is written once here: the sequencing transaction
//! (`sequencing`) and the row codecs (`codec`). Only the wiring point (`service`, the CLI commands
//! through `with_store`) names a store type.

mod codec;
#[cfg(test)]
pub(crate) mod conformance;
pub mod postgres;
mod sequencing;
pub mod sqlite;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;

use crate::api::admin::IdentityDirectory;
use crate::api::identity::CertificateLookup;
use crate::approvals::ApprovalStore;
use crate::config::store::StoreLocation;
use crate::health::StoreHealth;
use crate::issuer::{IssuanceStore, SigningQueue};
use crate::key_backup::KeyBackupStore;
use crate::recovery::RecoveryStore;
use crate::revocation::RevocationStore;
use crate::service::CaRecord;
use crate::transparency::LogSequencer;
use crate::transparency::export::CertificateExport;
use postgres::PostgresStore;
use sqlite::SqliteStore;

/// Everything a store implementation provides. Only the wiring point and the conformance suite
/// ask for all of it; every other part asks for its own trait.
pub trait Store:
    IssuanceStore
    + CertificateLookup
    + CaRecord
    + LogSequencer
    + CertificateExport
    + StoreHealth
    + IdentityDirectory
    + ApprovalStore
    + RevocationStore
    + KeyBackupStore
    + RecoveryStore
    + Clone
    + std::fmt::Debug
{
}

impl<S> Store for S where
    S: IssuanceStore
        + CertificateLookup
        + CaRecord
        + LogSequencer
        + CertificateExport
        + StoreHealth
        + IdentityDirectory
        + ApprovalStore
        + RevocationStore
        + KeyBackupStore
        + RecoveryStore
        + Clone
        + std::fmt::Debug
{
}

/// Work to do with whichever store `store.url` selects (a closure cannot be generic over it).
pub trait StoreTask {
    /// What the work gives back.
    type Output;

    /// Does the work with the opened, migrated store.
    fn run<S: Store>(self, store: S) -> impl Future<Output = anyhow::Result<Self::Output>>;
}

/// Opens (and migrates) the store at `location` and runs `task` with it: the one place a store is
/// chosen. The embedded store follows `signing` when given (see `SqliteStore::follow_signing`).
pub async fn with_store<T: StoreTask>(
    location: &StoreLocation,
    signing: Option<&Arc<SigningQueue>>,
    task: T,
) -> anyhow::Result<T::Output> {
    match location {
        StoreLocation::Sqlite(path) => {
            let store = SqliteStore::open_async(path)
                .await
                .with_context(|| format!("cannot open store {}", path.display()))?;
            if let Some(signing) = signing {
                store.follow_signing(Arc::clone(signing));
            }
            task.run(store).await
        }
        StoreLocation::Postgres(location) => {
            // Fails within store.timeout_ms when the database is unreachable. The URL is never
            // printed: it may hold a password.
            let store = PostgresStore::connect(location)
                .await
                .with_context(|| format!("cannot open the PostgreSQL store at {}", location.describe()))?;
            tracing::info!(store = %location.describe(), pool_size = location.pool_size, "PostgreSQL store ready");
            task.run(store).await
        }
    }
}

/// The schema version this binary writes to the store at `location`.
pub fn schema_version(location: &StoreLocation) -> i64 {
    match location {
        StoreLocation::Sqlite(_) => sqlite::SCHEMA_VERSION,
        StoreLocation::Postgres(_) => postgres::SCHEMA_VERSION,
    }
}
