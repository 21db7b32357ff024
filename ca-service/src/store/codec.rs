//! Row codecs both stores share: database integers and byte strings to the service's types, with
//! `StoreError::Corrupt` for a value no correct write could have stored.

use tlog::merkle::Hash;

use crate::identity::KeyFingerprint;
use crate::storage::StoreError;

/// A stored (signed) size, index or count as `u64`.
pub(super) fn to_u64(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative log value {value}")))
}

/// A size or index as the database's signed 64-bit integer.
pub(super) fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("log value {value} out of range")))
}

/// A stored tree hash.
pub(super) fn to_hash(bytes: &[u8]) -> Result<Hash, StoreError> {
    Hash::try_from(bytes).map_err(|_| StoreError::Corrupt("stored hash is not 32 bytes".to_owned()))
}

/// A stored key fingerprint (SPKI SHA-256).
pub(super) fn fingerprint(bytes: &[u8]) -> Result<KeyFingerprint, StoreError> {
    KeyFingerprint::from_bytes(bytes).ok_or_else(|| StoreError::Corrupt("key fingerprint is not 32 bytes".to_owned()))
}

/// The `PinEntry` of a pin's joined columns (entry bytes, leaf index, stored leaf hash); `None`
/// when the pin references no stored entry.
pub(super) fn pin_entry(
    bytes: Option<Vec<u8>>,
    leaf_index: Option<i64>,
    leaf_hash: Option<Vec<u8>>,
) -> Result<Option<crate::issuer::PinEntry>, StoreError> {
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    Ok(Some(crate::issuer::PinEntry {
        bytes,
        leaf_index: leaf_index.map(to_u64).transpose()?,
        tree_leaf_hash: leaf_hash.as_deref().map(to_hash).transpose()?,
    }))
}

/// The rows a checkpoint upsert changed: 1, or 0 when a checkpoint of that size is stored with
/// another root (a fork, never stored).
pub(super) fn checkpoint_stored(written: u64, size: u64) -> Result<(), StoreError> {
    if written == 1 {
        Ok(())
    } else {
        Err(StoreError::Integrity(format!(
            "a checkpoint of size {size} with another root exists"
        )))
    }
}

/// A stored Unix time (the embedded store keeps seconds).
pub(super) fn from_unix(seconds: i64) -> Result<time::OffsetDateTime, StoreError> {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .map_err(|_| StoreError::Corrupt(format!("stored time {seconds} is out of range")))
}

/// A stored RFC 5280 reason code.
pub(super) fn reason(code: i64) -> Result<crate::revocation::RevocationReason, StoreError> {
    crate::revocation::RevocationReason::from_code(code)
        .ok_or_else(|| StoreError::Corrupt(format!("stored revocation reason {code} is not one the CA gives")))
}

/// A stored request id.
pub(super) fn request_id(id: &str) -> Result<crate::approvals::RequestId, StoreError> {
    crate::approvals::RequestId::parse(id)
        .ok_or_else(|| StoreError::Corrupt("stored request id is malformed".to_owned()))
}

/// A stored user id.
pub(super) fn user_id(user: &str) -> Result<crate::identity::UserId, StoreError> {
    crate::identity::UserId::from_stored(user).map_err(|_| StoreError::Corrupt("stored user id is invalid".to_owned()))
}

/// A stored approval kind.
pub(super) fn approval_kind(kind: &str) -> Result<crate::approvals::ApprovalKind, StoreError> {
    crate::approvals::ApprovalKind::from_name(kind)
        .ok_or_else(|| StoreError::Corrupt(format!("stored request kind {kind:?} is unknown")))
}

/// A request's proposed recovery key, from its two nullable columns.
pub(super) fn proposed_key(
    spki_der: Option<Vec<u8>>,
    ceremony_reference: Option<String>,
) -> Option<crate::approvals::ProposedRecoveryKey> {
    Some(crate::approvals::ProposedRecoveryKey {
        spki_der: spki_der?,
        ceremony_reference: ceremony_reference?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_no_correct_write_stores_are_corrupt() {
        assert_eq!(to_u64(7).expect("positive"), 7);
        assert!(matches!(to_u64(-1), Err(StoreError::Corrupt(_))));
        assert_eq!(to_i64(7).expect("small"), 7);
        assert!(matches!(to_i64(u64::MAX), Err(StoreError::Corrupt(_))));
        assert_eq!(to_hash(&[3; 32]).expect("32 bytes"), [3; 32]);
        assert!(matches!(to_hash(&[3; 31]), Err(StoreError::Corrupt(_))));
        assert!(fingerprint(&[1; 32]).is_ok());
        assert!(matches!(fingerprint(&[1; 33]), Err(StoreError::Corrupt(_))));
        assert!(checkpoint_stored(1, 5).is_ok());
        assert!(matches!(checkpoint_stored(0, 5), Err(StoreError::Integrity(_))));
    }
}
