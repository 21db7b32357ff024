//! The stored private-key string: `base64(ciphertext‖tag)|base64(iv)|base64(salt)` (nextcloud-e2ee.md §1.5).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::crypto::gcm::TAG_LEN;

/// Length of the AES-256-GCM IV in the blob.
pub const IV_LEN: usize = 12;
/// Length of the PBKDF2 salt in the blob.
pub const SALT_LEN: usize = 40;

/// The separator current clients write.
const SEPARATOR: &str = "|";
/// The legacy separator: base64 of "|", written by old clients; used only when no `|` is present.
const LEGACY_SEPARATOR: &str = "fA==";

/// Why a stored private-key string does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrivateKeyBlobError {
    /// The string does not have exactly three separated parts.
    #[error("expected 3 parts (ciphertext|iv|salt), found {0}")]
    PartCount(usize),
    /// A part is not standard, padded base64.
    #[error("the {0} part is not valid base64")]
    Base64(&'static str),
    /// The IV does not decode to 12 bytes.
    #[error("the IV is {0} bytes, expected {IV_LEN}")]
    IvLength(usize),
    /// The salt does not decode to 40 bytes.
    #[error("the salt is {0} bytes, expected {SALT_LEN}")]
    SaltLength(usize),
    /// The ciphertext is shorter than a GCM tag.
    #[error("the ciphertext is {0} bytes, shorter than a GCM tag")]
    CiphertextTooShort(usize),
}

/// A parsed private-key blob. The ciphertext is not secret, so nothing here needs zeroizing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateKeyBlob {
    /// AES-256-GCM ciphertext with its 16-byte tag appended.
    pub ciphertext_and_tag: Vec<u8>,
    /// The GCM IV.
    pub iv: [u8; IV_LEN],
    /// The PBKDF2 salt.
    pub salt: [u8; SALT_LEN],
}

impl PrivateKeyBlob {
    /// Parses the stored string. Splits on `|` when present, otherwise on the legacy `fA==`
    /// (as the desktop's `splitCipherParts` and Android's CryptoHelper do); requires the lengths
    /// the server enforces (12-byte IV, 40-byte salt).
    pub fn parse(stored: &str) -> Result<PrivateKeyBlob, PrivateKeyBlobError> {
        let stored = stored.trim();
        let parts: Vec<&str> = if stored.contains(SEPARATOR) {
            stored.split(SEPARATOR).collect()
        } else {
            split_legacy(stored)
        };
        let [ciphertext_part, iv_part, salt_part] = parts.as_slice() else {
            return Err(PrivateKeyBlobError::PartCount(parts.len()));
        };
        let decode = |part: &str, name| STANDARD.decode(part).map_err(|_| PrivateKeyBlobError::Base64(name));
        let ciphertext_and_tag = decode(ciphertext_part, "ciphertext")?;
        let iv = decode(iv_part, "IV")?;
        let salt = decode(salt_part, "salt")?;
        if ciphertext_and_tag.len() < TAG_LEN {
            return Err(PrivateKeyBlobError::CiphertextTooShort(ciphertext_and_tag.len()));
        }
        Ok(PrivateKeyBlob {
            iv: <[u8; IV_LEN]>::try_from(iv.as_slice()).map_err(|_| PrivateKeyBlobError::IvLength(iv.len()))?,
            salt: <[u8; SALT_LEN]>::try_from(salt.as_slice())
                .map_err(|_| PrivateKeyBlobError::SaltLength(salt.len()))?,
            ciphertext_and_tag,
        })
    }
}

/// Splits on the legacy `fA==`, which is also how base64 of a part ending in the byte `|` ends
/// (salt or ciphertext, about one blob in 256 per part). Padding only ends a part, so an empty
/// piece right after a part that does not end in `=` means the `fA==` before it was that part's
/// own ending: it is given back, and the parts stay three.
fn split_legacy(stored: &str) -> Vec<&str> {
    // Byte ranges of the parts found so far.
    let mut parts: Vec<std::ops::Range<usize>> = Vec::with_capacity(3);
    let mut piece_start = 0;
    let separators = stored.match_indices(LEGACY_SEPARATOR).map(|(at, _)| at);
    for piece_end in separators.chain([stored.len()]) {
        match parts.last_mut() {
            Some(last) if piece_start == piece_end && !stored[last.clone()].ends_with('=') => {
                last.end = piece_end;
            }
            _ => parts.push(piece_start..piece_end),
        }
        piece_start = piece_end + LEGACY_SEPARATOR.len();
    }
    parts.into_iter().map(|range| &stored[range]).collect()
}

impl std::fmt::Display for PrivateKeyBlob {
    /// The stored form with `|` separators, as current clients write it.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "{}{SEPARATOR}{}{SEPARATOR}{}",
            STANDARD.encode(&self.ciphertext_and_tag),
            STANDARD.encode(self.iv),
            STANDARD.encode(self.salt)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> PrivateKeyBlob {
        PrivateKeyBlob {
            ciphertext_and_tag: (0u8..40).collect(),
            iv: [1u8; IV_LEN],
            salt: [2u8; SALT_LEN],
        }
    }

    #[test]
    fn the_legacy_separator_is_read() {
        let blob = sample();
        let legacy = blob.to_string().replace('|', "fA==");
        assert_eq!(PrivateKeyBlob::parse(&legacy), Ok(blob));
    }

    /// base64 of a part ending in the byte `|` ends in `fA==`, the legacy separator itself: the
    /// desktop's plain split would find four parts (and fail on one blob in about 128).
    #[test]
    fn parts_ending_like_the_legacy_separator_are_read() {
        let mut salt_ends_in_bar = [2u8; SALT_LEN];
        salt_ends_in_bar[SALT_LEN - 1] = b'|';
        let mut ciphertext_ends_in_bar: Vec<u8> = (0u8..39).collect();
        ciphertext_ends_in_bar.push(b'|');
        for blob in [
            PrivateKeyBlob {
                salt: salt_ends_in_bar,
                ..sample()
            },
            PrivateKeyBlob {
                ciphertext_and_tag: ciphertext_ends_in_bar.clone(),
                ..sample()
            },
            PrivateKeyBlob {
                ciphertext_and_tag: ciphertext_ends_in_bar,
                salt: salt_ends_in_bar,
                ..sample()
            },
        ] {
            let legacy = blob.to_string().replace('|', "fA==");
            assert!(legacy.matches("fA==").count() > 2, "{legacy}");
            assert_eq!(PrivateKeyBlob::parse(&legacy), Ok(blob), "{legacy}");
        }
    }

    #[test]
    fn malformed_strings_are_refused() {
        let stored = sample().to_string();
        let parts: Vec<&str> = stored.split('|').collect();
        let short_iv = STANDARD.encode([1u8; 16]);
        let short_salt = STANDARD.encode([2u8; 39]);
        let cases = [
            (format!("{}|{}", parts[0], parts[1]), PrivateKeyBlobError::PartCount(2)),
            (format!("{stored}|{}", parts[2]), PrivateKeyBlobError::PartCount(4)),
            (String::new(), PrivateKeyBlobError::PartCount(1)),
            (
                format!("{}|{short_iv}|{}", parts[0], parts[2]),
                PrivateKeyBlobError::IvLength(16),
            ),
            (
                format!("{}|{}|{short_salt}", parts[0], parts[1]),
                PrivateKeyBlobError::SaltLength(39),
            ),
            (
                format!("@@@@|{}|{}", parts[1], parts[2]),
                PrivateKeyBlobError::Base64("ciphertext"),
            ),
            (
                format!("{}|{}|{}", STANDARD.encode([0u8; 15]), parts[1], parts[2]),
                PrivateKeyBlobError::CiphertextTooShort(15),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(PrivateKeyBlob::parse(&input), Err(expected), "{input}");
        }
    }

    proptest! {
        /// The parser never panics, whatever the input.
        #[test]
        fn parsing_arbitrary_text_does_not_panic(text in "[A-Za-z0-9+/=|]{0,120}") {
            let _ = PrivateKeyBlob::parse(&text);
        }

        #[test]
        fn display_then_parse_is_the_identity(ciphertext_and_tag in proptest::collection::vec(any::<u8>(), TAG_LEN..600),
                                              iv in any::<[u8; IV_LEN]>(), salt in proptest::collection::vec(any::<u8>(), SALT_LEN)) {
            let blob = PrivateKeyBlob { ciphertext_and_tag, iv, salt: salt.try_into().expect("40 bytes") };
            prop_assert_eq!(PrivateKeyBlob::parse(&blob.to_string()), Ok(blob.clone()));
            let legacy = blob.to_string().replace('|', LEGACY_SEPARATOR);
            prop_assert_eq!(PrivateKeyBlob::parse(&legacy), Ok(blob));
        }
    }
}
