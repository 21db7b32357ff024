//! The reference E2EE client: device keys, enrollment against the CA, and Nextcloud's E2EE formats.
//!
//! The client reaches the CA through the small `transport::CaTransport` trait; gRPC is the default
//! implementation. It never depends on the CA's own crate.
//!
//! Like age, the Nextcloud side (shared/spec/nextcloud-e2ee.md) is split in three layers:
//! * `crypto`: primitives (AES-GCM with 12- and 16-byte nonces, RSA-OAEP-SHA256, RSA PKCS#1 v1.5 signatures,
//!   PBKDF2, randomness), all on aws-lc-rs;
//! * `format`: wire encodings (the private-key storage string, metadata v2 JSON, minimal DER for CMS);
//! * `protocol`: operations built from both (the mnemonic-wrapped key backup, streaming file encryption,
//!   metadata v2 encryption and file drop, the CMS metadata signature).
//!
//! `protocol::folder` ties them into encrypted folders (create, add, share, unshare, open), over the small
//! `FolderStorage` trait; `storage` implements it on a local directory standing in for the sync server.
//! `mnemonic` holds the 12-word recovery phrase; `pins` the local pins of contacts' keys.
//! `escrow` seals a user's private key to the CA's offline recovery key (HPKE), splits that key into paper
//! shares and combines them, and holds the steps of the officers' `e2ee-recovery` tool.
//!
//! Against the CA's KeyBackup service: `protocol::possession` makes the proofs of possession every write carries;
//! `backup` stores the mnemonic-wrapped key on the CA and opens or imports a key on a new device (accepted only
//! once the CA certifies it); `recovery` checks the CA's recovery-key certificate, turns a recovery key the device
//! has not acknowledged into a notice the application must acknowledge, and makes the escrow deposit.

#![forbid(unsafe_code)]

pub mod backup;
pub mod crypto;
pub mod escrow;
pub mod format;
pub mod identity;
pub mod mnemonic;
pub mod pins;
pub mod protocol;
pub mod recovery;
pub mod storage;
#[cfg(test)]
mod testing;
pub mod transport;
