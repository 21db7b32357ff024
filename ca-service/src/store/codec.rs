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
