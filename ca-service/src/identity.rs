//! Validated identity types shared by the issuer, the stores and the API: parse at the edge, then trust.

use std::fmt;

use sha2::{Digest, Sha256};

/// Longest accepted user id, in bytes.
pub const MAX_USER_ID_BYTES: usize = 255;

/// A user id: 1 to 255 bytes of UTF-8 with no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

/// Why a user id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    /// The id is empty.
    #[error("user_id is empty")]
    Empty,
    /// The id is longer than 255 bytes.
    #[error("user_id is {0} bytes long; the limit is 255")]
    TooLong(usize),
    /// The id contains a control character.
    #[error("user_id contains a control character at byte {0}")]
    ControlCharacter(usize),
}

impl UserId {
    /// Validates `raw` as a user id.
    pub fn parse(raw: &str) -> Result<UserId, UserIdError> {
        if raw.is_empty() {
            return Err(UserIdError::Empty);
        }
        if raw.len() > MAX_USER_ID_BYTES {
            return Err(UserIdError::TooLong(raw.len()));
        }
        if let Some((offset, _)) = raw.char_indices().find(|(_, character)| character.is_control()) {
            return Err(UserIdError::ControlCharacter(offset));
        }
        Ok(UserId(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// SHA-256 of a DER SubjectPublicKeyInfo: what a pin binds to a user.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyFingerprint([u8; 32]);

impl KeyFingerprint {
    /// Fingerprints a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> KeyFingerprint {
        KeyFingerprint(Sha256::digest(spki_der).into())
    }

    /// Rebuilds a fingerprint read back from a store; `None` unless it is 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<KeyFingerprint> {
        bytes.try_into().ok().map(KeyFingerprint)
    }

    /// The X.509 key identifier (SKI/AKI) of this key: the first 160 bits of the SPKI's SHA-256
    /// (RFC 7093 section 2, method 4 applied to the whole SPKI, as rcgen does).
    pub fn key_identifier(&self) -> Vec<u8> {
        self.0[..20].to_vec()
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, as shown to people and returned over the API.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for KeyFingerprint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "KeyFingerprint({})", self.to_hex())
    }
}

impl fmt::Display for KeyFingerprint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_hex())
    }
}

/// A certificate serial number, 16 bytes: the issuing time in nanoseconds since 1970 (8 bytes,
/// big-endian), then 8 bytes from the CSPRNG. Positive and non-sequential, with the 64 random bits
/// the CA/Browser Forum asks of public CAs. The time first makes each new serial sort after the
/// ones before it, so the store's serial index grows at its right edge instead of dirtying a
/// random leaf per certificate.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SerialNumber(Vec<u8>);

impl SerialNumber {
    /// A fresh serial: the current time, then 64 bits from the OS-seeded CSPRNG.
    pub fn generate() -> SerialNumber {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX));
        let mut bytes = [0_u8; 16];
        bytes[..8].copy_from_slice(&nanos.to_be_bytes());
        bytes[8..].copy_from_slice(&rand::random::<[u8; 8]>());
        // Positive, and no leading zero byte for DER to strip, so the length stays fixed. Neither
        // touches a clock set between 1972 and 2262.
        bytes[0] &= 0x7f;
        if bytes[0] == 0 {
            bytes[0] = 0x01;
        }
        SerialNumber(bytes.to_vec())
    }

    /// Rebuilds a serial read back from a store or a certificate.
    pub fn from_bytes(bytes: Vec<u8>) -> SerialNumber {
        SerialNumber(bytes)
    }

    /// The big-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Debug for SerialNumber {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "SerialNumber({})", self.to_hex())
    }
}

/// A certificate as the stores keep it.
#[derive(Debug, Clone)]
pub struct StoredCertificate {
    /// Whose certificate it is.
    pub user_id: UserId,
    /// The certificate's serial.
    pub serial: SerialNumber,
    /// The certified key.
    pub key_fingerprint: KeyFingerprint,
    /// The certificate, DER.
    pub certificate_der: Vec<u8>,
    /// True when it was revoked.
    pub revoked: bool,
    /// The bytes of the audit entry that records it (`audit::check_certificate_entry`), if the
    /// certificate references a stored entry.
    pub entry: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_validated() {
        assert_eq!(UserId::parse(""), Err(UserIdError::Empty));
        assert_eq!(UserId::parse(&"a".repeat(256)), Err(UserIdError::TooLong(256)));
        assert!(UserId::parse(&"a".repeat(255)).is_ok());
        assert_eq!(UserId::parse("al\nice"), Err(UserIdError::ControlCharacter(2)));
        assert_eq!(UserId::parse("bob\u{7f}"), Err(UserIdError::ControlCharacter(3)));
        assert_eq!(
            UserId::parse("zoë@example.com").map(|user| user.to_string()),
            Ok("zoë@example.com".to_owned())
        );
    }

    #[test]
    fn serials_are_positive_sixteen_bytes_time_first_and_distinct() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64;
        let serials: Vec<SerialNumber> = (0..1000).map(|_| SerialNumber::generate()).collect();
        let distinct: std::collections::HashSet<&SerialNumber> = serials.iter().collect();
        assert_eq!(distinct.len(), serials.len());
        let random_halves: std::collections::HashSet<&[u8]> =
            serials.iter().map(|serial| &serial.as_bytes()[8..]).collect();
        assert_eq!(
            random_halves.len(),
            serials.len(),
            "the last 8 bytes are drawn afresh for each serial"
        );
        for serial in &serials {
            let bytes = serial.as_bytes();
            assert_eq!(bytes.len(), 16);
            assert!(bytes[0] & 0x80 == 0 && bytes[0] != 0);
            let issued = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
            assert!(
                issued.abs_diff(before) < 60_000_000_000,
                "the first 8 bytes are the issuing time"
            );
        }
    }
}
