//! Key backup: each user's mnemonic-wrapped private key and, while an offline recovery key is
//! enabled, the user's private key sealed to it (escrow). The server can open neither; it checks
//! their form, who may write them (a proof of possession of the pinned key), and logs every read.
//!
//! `possession` holds the proof text and its check; `KeyBackupStore` is what the `KeyBackup`
//! service needs from a store.

pub mod possession;

use std::fmt;
use std::future::Future;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use time::OffsetDateTime;

use crate::audit::LogEntryRef;
use crate::identity::{KeyFingerprint, UserId};
use crate::issuer::PinEntry;
use crate::storage::StoreError;

/// Largest wrapped key accepted, in bytes (an RSA-4096 key wraps to about 4.4 KiB).
pub const MAX_WRAPPED_KEY_BYTES: usize = 16 * 1024;
/// Largest escrow blob accepted, in bytes.
pub const MAX_ESCROW_BYTES: usize = 16 * 1024;
/// Most unexpired nonces one user may hold at once.
pub const MAX_OUTSTANDING_NONCES: u64 = 16;
/// Length of a nonce, in bytes.
pub const NONCE_BYTES: usize = 32;

/// A mnemonic-wrapped private key in Nextcloud's storage format (nextcloud-e2ee.md §1.5):
/// `b64(ct‖tag)|b64(iv)|b64(salt)`, or the legacy separator `fA==`; the IV is 12 bytes, the salt
/// 40, the ciphertext at least a GCM tag. Kept exactly as sent.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey(String);

/// Why a wrapped key was refused (fixed text: the blob is never echoed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WrappedKeyError {
    /// Empty or over `MAX_WRAPPED_KEY_BYTES`.
    #[error("wrapped_key must be 1 to 16384 bytes")]
    Size,
    /// Not three segments.
    #[error("wrapped_key must be three base64 segments, b64(ciphertext‖tag)|b64(iv)|b64(salt)")]
    Segments,
    /// A segment is not strict standard base64.
    #[error("a wrapped_key segment is not standard base64")]
    Base64,
    /// The IV is not 12 bytes or the salt not 40.
    #[error("the wrapped_key's IV must be 12 bytes and its salt 40 bytes")]
    Parameters,
    /// The ciphertext is shorter than a GCM tag.
    #[error("the wrapped_key's ciphertext is shorter than a GCM tag")]
    Ciphertext,
}

impl WrappedKey {
    /// Validates `raw` as Nextcloud's server does (three segments, strict base64, a 12-byte IV, a
    /// 40-byte salt), accepting the legacy separator too.
    pub fn parse(raw: String) -> Result<WrappedKey, WrappedKeyError> {
        if raw.is_empty() || raw.len() > MAX_WRAPPED_KEY_BYTES {
            return Err(WrappedKeyError::Size);
        }
        let segments: Vec<&str> = if raw.contains('|') {
            raw.split('|').collect()
        } else {
            raw.split("fA==").collect()
        };
        let [ciphertext, iv, salt] = segments.as_slice() else {
            return Err(WrappedKeyError::Segments);
        };
        let decode = |segment: &str| STANDARD.decode(segment).map_err(|_| WrappedKeyError::Base64);
        let (ciphertext, iv, salt) = (decode(ciphertext)?, decode(iv)?, decode(salt)?);
        if iv.len() != 12 || salt.len() != 40 {
            return Err(WrappedKeyError::Parameters);
        }
        if ciphertext.len() <= 16 {
            return Err(WrappedKeyError::Ciphertext);
        }
        Ok(WrappedKey(raw))
    }

    /// Rebuilds a key read back from a store (validated when it was written).
    pub fn from_stored(raw: String) -> WrappedKey {
        WrappedKey(raw)
    }

    /// The exact text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "WrappedKey({} bytes)", self.0.len())
    }
}

/// A single-use challenge for one proof of possession: 32 random bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce([u8; NONCE_BYTES]);

impl Nonce {
    /// A fresh random nonce.
    pub fn generate() -> Nonce {
        Nonce(rand::random())
    }

    /// A nonce as a caller sent it: exactly 32 bytes.
    pub fn parse(raw: &[u8]) -> Option<Nonce> {
        raw.try_into().ok().map(Nonce)
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8; NONCE_BYTES] {
        &self.0
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Nonce(..)")
    }
}

/// The key pinned to a user, as a proof of possession is checked against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedKey {
    /// SHA-256 of `spki_der`.
    pub fingerprint: KeyFingerprint,
    /// The pinned SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
    /// The entry the pin references, read with it (`issuer::pins::check_pin`).
    pub pin_entry: Option<PinEntry>,
}

/// A wrapped key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBackup {
    /// The blob, as sent.
    pub wrapped_key: WrappedKey,
    /// The key pinned when it was stored (the one whose holder proved possession).
    pub key_fingerprint: KeyFingerprint,
    /// When it was stored.
    pub stored_at: OffsetDateTime,
    /// The `key-backup-stored` entry that recorded it (`key_backups.entry_id`), read with it, with
    /// the tree's leaf at its index: what a read checks the blob against (`check_recorded`).
    pub recorded_by: Option<PinEntry>,
}

/// Why a stored blob does not match the log entry that recorded it. The log, not the row, is the
/// source of truth: a blob changed in the database alone is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordMismatch {
    /// The row references no stored entry.
    #[error("the row references no audit entry")]
    NoEntry,
    /// The entry has no log index yet (transient).
    #[error("the recording entry is not sequenced yet")]
    Unsequenced,
    /// The tree's leaf at the entry's index is not the entry's hash.
    #[error("the recording entry at index {0} is not the tree's leaf there")]
    NotInTree(u64),
    /// The entry is not of the expected kind and subject, or records other values.
    #[error("the entry at index {index} does not record this row ({detail} differs)")]
    Differs {
        /// The entry's index.
        index: u64,
        /// What differs.
        detail: &'static str,
    },
}

impl RecordMismatch {
    /// True when a retry may succeed (the entry is not sequenced yet).
    pub fn is_transient(&self) -> bool {
        matches!(self, RecordMismatch::Unsequenced)
    }
}

/// Checks that `entry` is in the tree at its index, is of `kind` about `subject`, and records each
/// of `details` (name, expected value) exactly.
pub fn check_recorded(
    entry: Option<&PinEntry>,
    kind: crate::audit::AuditKind,
    subject: &str,
    details: &[(&'static str, String)],
) -> Result<(), RecordMismatch> {
    let entry = entry.ok_or(RecordMismatch::NoEntry)?;
    let index = entry.leaf_index.ok_or(RecordMismatch::Unsequenced)?;
    if entry.tree_leaf_hash != Some(tlog::merkle::leaf_hash(&entry.bytes)) {
        return Err(RecordMismatch::NotInTree(index));
    }
    let differs = |detail| RecordMismatch::Differs { index, detail };
    let parsed = crate::audit::ParsedEntry::parse(&entry.bytes).map_err(|_| differs("format"))?;
    if parsed.kind != kind.name() {
        return Err(differs("kind"));
    }
    if parsed.subject != subject {
        return Err(differs("subject"));
    }
    for (name, expected) in details {
        if parsed.detail(name) != Some(expected.as_str()) {
            return Err(differs(name));
        }
    }
    Ok(())
}

/// SHA-256 of `bytes`, lowercase hex (as entries record payloads).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// What a proof of possession was made for; each write checks its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `PutWrappedPrivateKey`.
    KeyBackup,
    /// `DepositEscrow`.
    Escrow,
}

/// A verified write, for the store to commit with its nonce consumed.
#[derive(Debug, Clone)]
pub struct ProvenWrite {
    /// The user.
    pub user: UserId,
    /// The nonce the proof signed: consumed by the write, once.
    pub nonce: Nonce,
    /// The pinned key the proof verified against: the write is refused if the pin moved since.
    pub key_fingerprint: KeyFingerprint,
    /// The calling principal.
    pub actor: String,
    /// Now.
    pub now: OffsetDateTime,
}

/// Why a nonce was not handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceRefused {
    /// The user has no pinned key.
    NoPin,
    /// The user holds `MAX_OUTSTANDING_NONCES` unexpired nonces.
    TooMany,
}

/// Why a proven write was refused by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteRefused {
    /// The nonce is unknown, for another user, used or expired.
    Nonce,
    /// The user's pin is no longer the key the proof verified against.
    PinMoved,
    /// A wrapped key is stored and `replace` was not asked.
    AlreadyExists,
    /// `replace` was asked and nothing is stored.
    NothingToReplace,
    /// No recovery key is enabled (escrow).
    RecoveryDisabled,
    /// The deposit names another recovery key than the current one (escrow); holds the current.
    StaleRecoveryKey(String),
}

/// What the `KeyBackup` service needs from a store. Implementations: both stores, held to it by
/// `store::conformance`.
///
/// Contract: every write and every read of a wrapped key is one transaction with its audit entry
/// (kinds `key-backup-stored`, `key-backup-read`, `escrow-deposited`, built by the store with the
/// `audit` helpers); a proven write consumes its nonce with a compare-and-set in that transaction
/// (unused, unexpired, for that user), so a nonce is good for one write across replicas. A reset
/// (`IssuanceStore::commit_reset`) deletes the user's wrapped key in its own transaction.
pub trait KeyBackupStore: Send + Sync + 'static {
    /// The key pinned to `user` with the entry its pin references, if pinned.
    fn pinned_key(&self, user: &UserId) -> impl Future<Output = Result<Option<PinnedKey>, StoreError>> + Send;

    /// Records `nonce` for `user` until `expires_at`, unless the user has no pin or holds
    /// `MAX_OUTSTANDING_NONCES` unexpired ones at `now` (expired ones of the user are deleted).
    fn create_nonce(
        &self,
        user: &UserId,
        nonce: Nonce,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> impl Future<Output = Result<Result<(), NonceRefused>, StoreError>> + Send;

    /// Stores `wrapped_key` for the write's user (see the trait contract); `replace` allows, and
    /// requires, an existing one. Returns the entry and whether a key was replaced.
    fn put_wrapped_key(
        &self,
        write: ProvenWrite,
        wrapped_key: WrappedKey,
        replace: bool,
    ) -> impl Future<Output = Result<Result<(LogEntryRef, bool), WriteRefused>, StoreError>> + Send;

    /// The wrapped key of `user`, with the entry recording this read by `actor` at `now`; `None`
    /// (and no entry) when none is stored.
    fn read_wrapped_key(
        &self,
        user: &UserId,
        actor: String,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<(StoredBackup, LogEntryRef)>, StoreError>> + Send;

    /// Stores `blob`, sealed to the recovery key `recovery_fingerprint`, as the write's user's
    /// deposit (replacing an earlier one), if that is the enabled recovery key.
    fn deposit_escrow(
        &self,
        write: ProvenWrite,
        recovery_fingerprint: KeyFingerprint,
        blob: Vec<u8>,
    ) -> impl Future<Output = Result<Result<LogEntryRef, WriteRefused>, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(ciphertext: usize, iv: usize, salt: usize, separator: &str) -> String {
        [vec![7u8; ciphertext], vec![1u8; iv], vec![2u8; salt]]
            .iter()
            .map(|part| STANDARD.encode(part))
            .collect::<Vec<_>>()
            .join(separator)
    }

    #[test]
    fn wrapped_keys_are_nextclouds_format_with_either_separator() {
        for separator in ["|", "fA=="] {
            let raw = blob(100, 12, 40, separator);
            assert_eq!(WrappedKey::parse(raw.clone()).expect(separator).as_str(), raw);
        }
        let cases = [
            (String::new(), WrappedKeyError::Size),
            ("A".repeat(MAX_WRAPPED_KEY_BYTES + 1), WrappedKeyError::Size),
            (blob(100, 12, 40, "|") + "|AAAA", WrappedKeyError::Segments),
            ("abc".to_owned(), WrappedKeyError::Segments),
            (blob(100, 16, 40, "|"), WrappedKeyError::Parameters),
            (blob(100, 12, 32, "|"), WrappedKeyError::Parameters),
            (blob(16, 12, 40, "|"), WrappedKeyError::Ciphertext),
            (
                format!("!!!!|{}", blob(12, 12, 40, "|").split_once('|').expect("split").1),
                WrappedKeyError::Base64,
            ),
            (blob(100, 12, 40, "|").replacen('=', "", 1), WrappedKeyError::Base64),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                WrappedKey::parse(raw.clone()),
                Err(expected),
                "{}",
                &raw[..raw.len().min(40)]
            );
        }
    }

    #[test]
    fn a_row_matches_only_the_sequenced_entry_that_recorded_it() {
        use crate::audit::{AuditEvent, AuditKind};
        let bytes = AuditEvent {
            kind: AuditKind::KeyBackupStored,
            actor: "sync-server".to_owned(),
            subject: "carol".to_owned(),
            details: vec![("wrapped-key-sha256", sha256_hex(b"blob"))],
        }
        .encode()
        .bytes;
        let logged = |index: Option<u64>, leaf: Option<[u8; 32]>| PinEntry {
            bytes: bytes.clone(),
            leaf_index: index,
            tree_leaf_hash: leaf,
        };
        let in_tree = logged(Some(4), Some(tlog::merkle::leaf_hash(&bytes)));
        let expect = |blob: &[u8]| vec![("wrapped-key-sha256", sha256_hex(blob))];
        let check =
            |entry: Option<&PinEntry>, kind, subject, blob: &[u8]| check_recorded(entry, kind, subject, &expect(blob));
        assert_eq!(
            check(Some(&in_tree), AuditKind::KeyBackupStored, "carol", b"blob"),
            Ok(())
        );
        let differs = |detail| Err(RecordMismatch::Differs { index: 4, detail });
        assert_eq!(
            check(Some(&in_tree), AuditKind::KeyBackupStored, "carol", b"other"),
            differs("wrapped-key-sha256")
        );
        assert_eq!(
            check(Some(&in_tree), AuditKind::KeyBackupStored, "dave", b"blob"),
            differs("subject")
        );
        assert_eq!(
            check(Some(&in_tree), AuditKind::EscrowDeposited, "carol", b"blob"),
            differs("kind")
        );
        assert_eq!(
            check(None, AuditKind::KeyBackupStored, "carol", b"blob"),
            Err(RecordMismatch::NoEntry)
        );
        let unsequenced = check(Some(&logged(None, None)), AuditKind::KeyBackupStored, "carol", b"blob");
        assert_eq!(unsequenced, Err(RecordMismatch::Unsequenced));
        assert!(unsequenced.expect_err("transient").is_transient());
        assert_eq!(
            check(
                Some(&logged(Some(4), Some([0; 32]))),
                AuditKind::KeyBackupStored,
                "carol",
                b"blob"
            ),
            Err(RecordMismatch::NotInTree(4))
        );
    }

    #[test]
    fn nonces_are_32_bytes_and_never_printed() {
        let nonce = Nonce::generate();
        assert_eq!(Nonce::parse(nonce.as_bytes()), Some(nonce));
        assert_ne!(Nonce::generate(), nonce);
        assert_eq!(Nonce::parse(&[0; 31]), None);
        assert_eq!(Nonce::parse(&[0; 33]), None);
        assert_eq!(format!("{nonce:?}"), "Nonce(..)");
        assert_eq!(
            format!("{:?}", WrappedKey::parse(blob(100, 12, 40, "|")).expect("key")),
            "WrappedKey(210 bytes)"
        );
    }
}
