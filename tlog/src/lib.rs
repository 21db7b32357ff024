//! Transparency-log primitives shared by the CA, the client and the offline verifier; no I/O.
//!
//! - [`merkle`]: RFC 6962 leaf and node hashes, and the [`merkle::Frontier`] that recomputes a
//!   root in one pass.
//! - [`proof`]: inclusion and consistency proofs, generated from a [`proof::HashReader`] and
//!   checked with the RFC 9162 §2.1.3.2 / §2.1.4.2 verifiers.
//! - [`note`] and [`key`]: C2SP signed notes; signing goes through [`note::NoteSigner`] (the HSM
//!   implements it elsewhere), verification uses software Ed25519 and ECDSA P-256 keys.
//! - [`checkpoint`]: C2SP checkpoints (origin, size, root) and opening a signed one.
//! - [`tlog_proof`]: c2sp.org/tlog-proof receipts for one entry.
//!
//! Everything is pure and deterministic; nothing here reads files, clocks or the network.

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod key;
pub mod merkle;
pub mod note;
pub mod proof;
pub mod tlog_proof;

#[cfg(test)]
mod testing;

pub use merkle::{Hash, empty_root, leaf_hash, node_hash};
