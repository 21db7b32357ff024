//! Log-backed pins: before the issuer signs for a pinned user, the pin must match the audit entry
//! that made it, and that entry must be the one the log's tree holds.
//!
//! A pin row alone is only a database row: an attacker with write access to the database could
//! point it at their own key. The entry it references (`identities.pin_entry_id`) is what the log
//! proves, so the issuer checks, from the one read that fetched the pin:
//! - the entry is sequenced, and SHA-256(0x00 ‖ bytes) equals the tree's stored leaf hash at its
//!   index (the stored tree is bound to the signed checkpoints by the guard and the startup tail
//!   check, and to the auditor by `audit verify`);
//! - it is an `issuance` or an `identity-reset` of this user, naming exactly the pinned key.
//!
//! Anything else is `PinMismatch`: nothing is signed, and the issuer logs an ERROR naming it.

use tlog::merkle::leaf_hash;

use super::store::PinEntry;
use crate::audit::{AuditKind, ParsedEntry};
use crate::identity::{KeyFingerprint, UserId};

/// Why a pin does not match its log entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PinMismatch {
    /// The pin references no stored entry.
    #[error("the pin references no audit entry")]
    NoEntry,
    /// The entry has no log index yet.
    #[error("the pin's audit entry is not sequenced yet")]
    Unsequenced,
    /// The entry's bytes are not the tree's leaf at its index.
    #[error("the pin's audit entry (log index {0}) differs from the log's leaf")]
    NotInTree(u64),
    /// The entry does not parse.
    #[error("the pin's audit entry (log index {0}) is malformed")]
    Malformed(u64),
    /// The entry is of a kind that pins nothing, or of another user.
    #[error("the pin's audit entry (log index {0}) is a {1} entry of another subject or kind")]
    WrongEntry(u64, String),
    /// The entry pinned another key than the pin row holds.
    #[error("the pin's audit entry (log index {index}) pinned key {logged}, not the stored {stored}")]
    KeyDiffers {
        /// The entry's log index.
        index: u64,
        /// The key the entry pinned.
        logged: String,
        /// The key the pin row holds.
        stored: KeyFingerprint,
    },
}

impl PinMismatch {
    /// True when the pin may be fine and only the sequencer is behind (retry later).
    pub fn is_transient(&self) -> bool {
        matches!(self, PinMismatch::Unsequenced)
    }
}

/// Checks that `pinned`, the key the store pins to `user`, is what `entry` (the pin's referenced
/// entry, as read with it) recorded, and that the entry is the tree's leaf at its index.
pub fn check_pin(user: &UserId, pinned: &KeyFingerprint, entry: Option<&PinEntry>) -> Result<(), PinMismatch> {
    let entry = entry.ok_or(PinMismatch::NoEntry)?;
    let index = entry.leaf_index.ok_or(PinMismatch::Unsequenced)?;
    if entry.tree_leaf_hash != Some(leaf_hash(&entry.bytes)) {
        return Err(PinMismatch::NotInTree(index));
    }
    let parsed = ParsedEntry::parse(&entry.bytes).map_err(|_| PinMismatch::Malformed(index))?;
    let pins = parsed.kind == AuditKind::Issuance.name() || parsed.kind == AuditKind::IdentityReset.name();
    if !pins || parsed.subject != user.as_str() {
        return Err(PinMismatch::WrongEntry(index, parsed.kind));
    }
    let logged = parsed.detail("key-sha256").unwrap_or_default();
    if logged != pinned.to_hex() {
        return Err(PinMismatch::KeyDiffers {
            index,
            logged: logged.chars().take(64).collect(),
            stored: *pinned,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditEvent;

    fn entry(kind: AuditKind, subject: &str, key: &KeyFingerprint) -> PinEntry {
        let bytes = AuditEvent {
            kind,
            actor: "sync-server".to_owned(),
            subject: subject.to_owned(),
            details: vec![("key-sha256", key.to_hex()), ("serial", "00".repeat(16))],
        }
        .encode()
        .bytes;
        PinEntry {
            tree_leaf_hash: Some(leaf_hash(&bytes)),
            bytes,
            leaf_index: Some(7),
        }
    }

    #[test]
    fn a_pin_matches_only_its_own_sequenced_entry() {
        let alice = UserId::parse("alice").expect("user");
        let key = KeyFingerprint::of_spki(b"alice's key");
        let other = KeyFingerprint::of_spki(b"mallory's key");
        let good = entry(AuditKind::Issuance, "alice", &key);
        assert_eq!(check_pin(&alice, &key, Some(&good)), Ok(()));
        assert_eq!(
            check_pin(&alice, &key, Some(&entry(AuditKind::IdentityReset, "alice", &key))),
            Ok(())
        );

        assert_eq!(check_pin(&alice, &key, None), Err(PinMismatch::NoEntry));
        let unsequenced = PinEntry {
            leaf_index: None,
            ..good.clone()
        };
        assert_eq!(
            check_pin(&alice, &key, Some(&unsequenced)),
            Err(PinMismatch::Unsequenced)
        );
        assert!(PinMismatch::Unsequenced.is_transient());
        let mut altered = good.clone();
        altered.bytes[40] ^= 1;
        assert_eq!(check_pin(&alice, &key, Some(&altered)), Err(PinMismatch::NotInTree(7)));
        let off_tree = PinEntry {
            tree_leaf_hash: None,
            ..good.clone()
        };
        assert_eq!(check_pin(&alice, &key, Some(&off_tree)), Err(PinMismatch::NotInTree(7)));
        assert!(matches!(
            check_pin(&alice, &other, Some(&good)),
            Err(PinMismatch::KeyDiffers { index: 7, .. })
        ));
        assert_eq!(
            check_pin(&alice, &key, Some(&entry(AuditKind::Renewal, "alice", &key))),
            Err(PinMismatch::WrongEntry(7, "renewal".to_owned()))
        );
        assert_eq!(
            check_pin(&alice, &key, Some(&entry(AuditKind::Issuance, "bob", &key))),
            Err(PinMismatch::WrongEntry(7, "issuance".to_owned()))
        );
        let mut garbage = PinEntry {
            bytes: b"not an entry".to_vec(),
            ..good
        };
        garbage.tree_leaf_hash = Some(leaf_hash(&garbage.bytes));
        assert_eq!(check_pin(&alice, &key, Some(&garbage)), Err(PinMismatch::Malformed(7)));
    }
}
