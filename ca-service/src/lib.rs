//! e2ee-ca: an HSM-backed certificate authority for end-to-end-encrypted file sync.
//!
//! Entry points: `service::Service` (the one wiring point: build, then serve), `ceremony::run` (CA
//! key generation) and `dev` (dev-mode provisioning). See ARCHITECTURE.md for the code map and the
//! invariants.

#![forbid(unsafe_code)]

pub mod api;
pub mod approvals;
pub mod audit;
pub mod ceremony;
pub mod clock;
pub mod config;
pub mod dev;
pub mod health;
pub mod hsm;
pub mod identity;
pub mod issuer;
pub mod key_backup;
pub mod principal;
pub mod recovery;
pub mod revocation;
pub mod service;
pub mod storage;
pub mod store;
pub mod tasks;
pub mod transparency;
