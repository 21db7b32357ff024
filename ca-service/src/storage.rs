//! The vocabulary every store trait shares: `StoreError`.
//!
//! The traits themselves live with their callers, each as small as its caller needs:
//! `issuer::IssuanceStore`, `api::identity::CertificateLookup`, `service::CaRecord`,
//! `health::StoreHealth`, `transparency::LogReader` and `transparency::LogSequencer`.
//! Their implementations are in `store` (the embedded store and PostgreSQL); nothing but the
//! wiring point names them.

/// A store failure. Messages are for logs; `api` never sends them to callers.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database cannot be reached or is busy; nothing was written, retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The database refused a write that should not conflict (for example a serial collision).
    #[error("store integrity error: {0}")]
    Integrity(String),
    /// The schema is newer than this binary, or a migration failed.
    #[error("store schema error: {0}")]
    Schema(String),
    /// Stored data could not be decoded.
    #[error("store data error: {0}")]
    Corrupt(String),
}
