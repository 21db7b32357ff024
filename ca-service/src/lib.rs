//! e2ee-ca: an HSM-backed certificate authority for end-to-end-encrypted file sync.
//!
//! Entry points: `server::run` (the gRPC service), `ceremony::run` (CA key generation) and `dev`
//! (dev-mode provisioning). See ARCHITECTURE.md for the code map and the invariants.

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod ceremony;
pub mod config;
pub mod dev;
pub mod hsm;
pub mod identity;
pub mod issuer;
pub mod server;
pub mod store;
pub mod transparency;
