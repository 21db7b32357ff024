//! PBKDF2 in the three variants Nextcloud clients have used to derive the private-key wrapping key.

use std::num::NonZeroU32;

use aws_lc_rs::pbkdf2;
use zeroize::Zeroizing;

use super::CryptoError;
use super::gcm::Aes256Key;

/// A PBKDF2 parameter set (nextcloud-e2ee.md §1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pbkdf2Variant {
    /// PBKDF2-HMAC-SHA256, 600 000 iterations: what every current client writes.
    Sha256Iterations600000,
    /// PBKDF2-HMAC-SHA1, 600 000 iterations: older desktop and Android clients.
    Sha1Iterations600000,
    /// PBKDF2-HMAC-SHA1, 1024 iterations: the oldest clients (the RFC's "1000" is wrong).
    Sha1Iterations1024,
}

impl Pbkdf2Variant {
    /// The variant used when writing.
    pub const WRITE: Pbkdf2Variant = Pbkdf2Variant::Sha256Iterations600000;

    /// The order readers try: the desktop's (SHA256/600000, SHA1/600000, SHA1/1024).
    pub const READ_ORDER: [Pbkdf2Variant; 3] = [
        Pbkdf2Variant::Sha256Iterations600000,
        Pbkdf2Variant::Sha1Iterations600000,
        Pbkdf2Variant::Sha1Iterations1024,
    ];

    fn parameters(self) -> (pbkdf2::Algorithm, u32) {
        match self {
            Pbkdf2Variant::Sha256Iterations600000 => (pbkdf2::PBKDF2_HMAC_SHA256, 600_000),
            Pbkdf2Variant::Sha1Iterations600000 => (pbkdf2::PBKDF2_HMAC_SHA1, 600_000),
            Pbkdf2Variant::Sha1Iterations1024 => (pbkdf2::PBKDF2_HMAC_SHA1, 1024),
        }
    }

    /// Derives the 32-byte AES-256 key from `passphrase` and `salt`.
    pub fn derive(self, passphrase: &[u8], salt: &[u8]) -> Result<Aes256Key, CryptoError> {
        let (algorithm, iterations) = self.parameters();
        let iterations = NonZeroU32::new(iterations).ok_or(CryptoError::Backend("PBKDF2 iterations"))?;
        let mut output = Zeroizing::new([0u8; 32]);
        pbkdf2::derive(algorithm, iterations, salt, passphrase, output.as_mut());
        Aes256Key::from_slice(output.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected outputs computed with Python's `hashlib.pbkdf2_hmac` (OpenSSL), an independent implementation.
    #[test]
    fn every_variant_matches_python_hashlib() {
        let salt = [0x5au8; 40];
        let cases = [
            (
                Pbkdf2Variant::Sha256Iterations600000,
                "8959c734ee013b3ffb2c4c2eb43175448db18689988eed80d1f58097624eb838",
            ),
            (
                Pbkdf2Variant::Sha1Iterations600000,
                "6651fb227aa38e6d9cea0600cda71efe95199fb55db2275d802ec65379fe6ba4",
            ),
            (
                Pbkdf2Variant::Sha1Iterations1024,
                "5385550a5cb868d49ed06929e7afd6fd43c253df66cf79f8ef4f696665dfe7f9",
            ),
        ];
        for (variant, expected) in cases {
            let key = variant.derive(b"deputyabandonbetray", &salt).expect("derive");
            assert_eq!(hex::encode(key.as_bytes()), expected, "{variant:?}");
        }
    }
}
