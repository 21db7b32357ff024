//! `[store]`: the store's URL and bounds, and the location it selects (`StoreLocation`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;

use super::ServeConfig;

/// Where state lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite:PATH` for the embedded store (relative paths against the config file), or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?OPTIONS]` for PostgreSQL, which several
    /// replicas of the CA may share. The URL is never logged (it may hold a password).
    pub url: String,
    /// PostgreSQL only: connections each replica keeps at most (default 16).
    pub pool_size: Option<usize>,
    /// PostgreSQL only: the bound on one store operation, in ms, covering the wait for a pooled
    /// connection, connecting, and every statement of the transaction (default 5000). Past it the
    /// request fails with UNAVAILABLE and nothing is written. An issuance makes up to three store
    /// operations (pin read, rate-limit count, commit), then waits up to `audit.sequence_wait_ms`
    /// for its log index and up to 1 s for its receipt: keep the sum below callers' deadlines.
    pub timeout_ms: Option<u64>,
}

/// The store selected by `store.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded SQLite store at this path.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(Box<PostgresLocation>),
}

/// A PostgreSQL store, parsed from `[store]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresLocation {
    /// Connection parameters (its `Debug` redacts the password).
    pub connection: tokio_postgres::Config,
    /// Connections kept at most.
    pub pool_size: usize,
    /// Bound on one store operation.
    pub timeout: Duration,
}

impl PostgresLocation {
    /// `host:port/database`, for logs and error messages: never the user or password.
    pub fn describe(&self) -> String {
        let host = match self.connection.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "?".to_owned(),
        };
        let port = self.connection.get_ports().first().copied().unwrap_or(5432);
        let database = self
            .connection
            .get_dbname()
            .or(self.connection.get_user())
            .unwrap_or("?");
        format!("{host}:{port}/{database}")
    }
}

/// Default PostgreSQL pool size.
const DEFAULT_POSTGRES_POOL_SIZE: usize = 16;

/// Default bound on one PostgreSQL store operation.
const DEFAULT_STORE_TIMEOUT_MS: u64 = 5000;

impl ServeConfig {
    /// The store selected by `store.url`.
    pub fn store_location(&self) -> anyhow::Result<StoreLocation> {
        let url = self.store.url.as_str();
        if let Some(path) = url.strip_prefix("sqlite:") {
            if path.is_empty() {
                bail!("store.url sqlite: needs a path, e.g. sqlite:ca.sqlite3");
            }
            if self.store.pool_size.is_some() || self.store.timeout_ms.is_some() {
                bail!("store.pool_size and store.timeout_ms apply to PostgreSQL only");
            }
            return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            // Only the scheme is echoed: the rest of a URL may hold a password.
            let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
            bail!("store.url must be sqlite:PATH or postgres://USER@HOST/DATABASE (got scheme {scheme:?})");
        }
        let connection: tokio_postgres::Config = url
            .parse()
            .map_err(|error| anyhow::anyhow!("store.url is not a valid PostgreSQL URL: {error}"))?;
        if connection.get_hosts().is_empty() {
            bail!("store.url must name a host, e.g. postgres://ca@db.internal/ca");
        }
        let pool_size = self.store.pool_size.unwrap_or(DEFAULT_POSTGRES_POOL_SIZE);
        if !(1..=1000).contains(&pool_size) {
            bail!("store.pool_size must be between 1 and 1000");
        }
        let timeout_ms = self.store.timeout_ms.unwrap_or(DEFAULT_STORE_TIMEOUT_MS);
        if !(100..=300_000).contains(&timeout_ms) {
            bail!("store.timeout_ms must be between 100 and 300000");
        }
        Ok(StoreLocation::Postgres(Box::new(PostgresLocation {
            connection,
            pool_size,
            timeout: Duration::from_millis(timeout_ms),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{VALID, load};

    #[test]
    fn postgres_urls_select_the_postgres_store() {
        let text = VALID.replace(
            "url = \"sqlite:state/ca.sqlite3\"",
            "url = \"postgres://ca:s3cret@db.internal:6432/ca\"\npool_size = 8\ntimeout_ms = 2500",
        );
        let config = load(&text).expect("valid");
        let Ok(StoreLocation::Postgres(location)) = config.store_location() else {
            panic!("expected a PostgreSQL store");
        };
        assert_eq!(location.pool_size, 8);
        assert_eq!(location.timeout, Duration::from_millis(2500));
        assert_eq!(location.describe(), "db.internal:6432/ca");
        assert!(
            !format!("{location:?}").contains("s3cret"),
            "Debug redacts the password"
        );
    }
}
