//! Cryptographic primitives for the Nextcloud formats: AES-GCM, RSA-OAEP, PBKDF2 and randomness, on aws-lc-rs.
//!
//! Nothing here knows a wire format; `format` and `protocol` build on these.

pub mod gcm;
pub mod kdf;
pub mod rsa;

/// Why a primitive failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The GCM tag did not verify: wrong key or nonce, or the data was altered or truncated.
    #[error("authentication failed: wrong key, or the data was altered or truncated")]
    Authentication,
    /// A key, nonce, tag or ciphertext had a length the algorithm does not accept.
    #[error("invalid {what} length: {length} bytes")]
    InvalidLength {
        /// What had the wrong length.
        what: &'static str,
        /// The length given.
        length: usize,
    },
    /// More data than one GCM message may hold (about 64 GiB).
    #[error("message too long for AES-GCM")]
    MessageTooLong,
    /// The bytes are not an RSA key this client can use.
    #[error("invalid RSA key: {0}")]
    InvalidRsaKey(String),
    /// RSA-OAEP decryption failed: the ciphertext was made for another key, or altered.
    #[error("RSA-OAEP decryption failed")]
    RsaDecryption,
    /// An RSA signature does not verify under the given public key.
    #[error("the signature does not verify")]
    BadSignature,
    /// The operating system's random generator failed.
    #[error("the random generator failed")]
    Random,
    /// aws-lc-rs refused an operation that should not fail.
    #[error("cryptographic backend failure in {0}")]
    Backend(&'static str),
}

/// Fills `buffer` from the operating system's CSPRNG (through aws-lc-rs).
pub fn fill_random(buffer: &mut [u8]) -> Result<(), CryptoError> {
    aws_lc_rs::rand::fill(buffer).map_err(|_| CryptoError::Random)
}

/// Compares two byte strings in time independent of where they differ.
pub(crate) fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(left, right).is_ok()
}
