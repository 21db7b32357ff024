//! Backing up a user's private key under their mnemonic, in the form Nextcloud's server stores (§1.5).
//!
//! Write: PBKDF2-HMAC-SHA256 (600 000 iterations, 40-byte random salt) → AES-256-GCM (12-byte random IV)
//! over base64 of the PKCS#8 PEM text. Read: try the three KDF variants clients have used, in the desktop's order.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::crypto::gcm::{self, GcmNonce};
use crate::crypto::kdf::Pbkdf2Variant;
use crate::crypto::rsa::RsaPrivateKey;
use crate::crypto::{CryptoError, fill_random};
use crate::format::private_key_blob::{IV_LEN, PrivateKeyBlob, SALT_LEN};
use crate::mnemonic::Mnemonic;

/// Why a private key could not be wrapped or unwrapped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyBackupError {
    /// No KDF variant opens the blob: the mnemonic is wrong, or the blob was altered or truncated.
    /// (GCM cannot tell the two apart.)
    #[error("the mnemonic does not open this private key (wrong mnemonic, or the stored key was altered)")]
    WrongMnemonicOrCorrupted,
    /// The blob opened, but its content is not base64 of a PKCS#8 PEM RSA private key.
    #[error("the decrypted private key is malformed: {0}")]
    MalformedKey(String),
    /// A primitive failed (randomness, backend).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// A private key recovered from its backup.
#[derive(Debug)]
pub struct RecoveredKey {
    /// The user's RSA private key.
    pub key: RsaPrivateKey,
    /// The KDF variant that opened the blob; anything but `Pbkdf2Variant::WRITE` is worth re-wrapping.
    pub kdf: Pbkdf2Variant,
}

/// Wraps `key` under `mnemonic` with the current parameters and fresh salt and IV.
pub fn wrap(key: &RsaPrivateKey, mnemonic: &Mnemonic) -> Result<PrivateKeyBlob, KeyBackupError> {
    wrap_with(key, mnemonic, Pbkdf2Variant::WRITE)
}

/// `wrap` with an explicit KDF; only tests use other variants (to exercise the read fallbacks).
fn wrap_with(key: &RsaPrivateKey, mnemonic: &Mnemonic, kdf: Pbkdf2Variant) -> Result<PrivateKeyBlob, KeyBackupError> {
    let mut salt = [0u8; SALT_LEN];
    fill_random(&mut salt)?;
    let nonce = GcmNonce::random12()?;
    let wrapping_key = kdf.derive(mnemonic.passphrase().as_bytes(), &salt)?;
    // The plaintext is base64 of the PEM *text* (an undocumented double encoding; RFC issues #54, #67).
    let plaintext = Zeroizing::new(STANDARD.encode(key.to_pkcs8_pem().as_bytes()));
    let ciphertext_and_tag = gcm::seal(&wrapping_key, &nonce, plaintext.as_bytes())?;
    let mut iv = [0u8; IV_LEN];
    iv.copy_from_slice(nonce.as_bytes());
    Ok(PrivateKeyBlob {
        ciphertext_and_tag,
        iv,
        salt,
    })
}

/// Opens a backup with `mnemonic`, trying SHA256/600000, SHA1/600000, then SHA1/1024.
///
/// A wrong mnemonic costs three key derivations (about a second) and yields `WrongMnemonicOrCorrupted`.
pub fn unwrap(blob: &PrivateKeyBlob, mnemonic: &Mnemonic) -> Result<RecoveredKey, KeyBackupError> {
    let passphrase = mnemonic.passphrase();
    let nonce = GcmNonce::from_slice(&blob.iv)?;
    for kdf in Pbkdf2Variant::READ_ORDER {
        let wrapping_key = kdf.derive(passphrase.as_bytes(), &blob.salt)?;
        match gcm::open(&wrapping_key, &nonce, &blob.ciphertext_and_tag) {
            Ok(plaintext) => {
                let key = parse_plaintext(&plaintext)?;
                return Ok(RecoveredKey { key, kdf });
            }
            Err(CryptoError::Authentication) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Err(KeyBackupError::WrongMnemonicOrCorrupted)
}

/// base64 → PEM text → PKCS#8 RSA key.
fn parse_plaintext(plaintext: &[u8]) -> Result<RsaPrivateKey, KeyBackupError> {
    let pem_bytes = Zeroizing::new(
        STANDARD
            .decode(plaintext)
            .map_err(|_| KeyBackupError::MalformedKey("not base64".into()))?,
    );
    let pem_text =
        std::str::from_utf8(&pem_bytes).map_err(|_| KeyBackupError::MalformedKey("the PEM is not UTF-8".into()))?;
    RsaPrivateKey::from_pkcs8_pem(pem_text).map_err(|error| KeyBackupError::MalformedKey(error.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::crypto::rsa::RsaPublicKey;
    use proptest::prelude::*;

    struct Vector {
        mnemonic: String,
        encrypted_private_key: String,
        private_key_pem: String,
        certificate_pem: String,
    }

    fn vector(json: &str) -> Vector {
        let value: serde_json::Value = serde_json::from_str(json).expect("json");
        let field = |name: &str| value[name].as_str().expect(name).to_owned();
        Vector {
            mnemonic: field("mnemonic"),
            encrypted_private_key: field("encryptedPrivateKey"),
            private_key_pem: field("privateKeyPem"),
            certificate_pem: field("certificatePem"),
        }
    }

    fn alice() -> Vector {
        vector(include_str!("../../testdata/nextcloud/alice.json"))
    }

    fn bob() -> Vector {
        vector(include_str!("../../testdata/nextcloud/bob.json"))
    }

    /// One RSA key for the property tests (key generation is the slow part).
    fn test_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| RsaPrivateKey::generate_2048().expect("keygen"))
    }

    #[test]
    fn nextcloud_vectors_alice_and_bob_unwrap() {
        for vector in [alice(), bob()] {
            let blob = PrivateKeyBlob::parse(&vector.encrypted_private_key).expect("blob");
            let mnemonic = Mnemonic::parse(&vector.mnemonic).expect("mnemonic");
            let recovered = unwrap(&blob, &mnemonic).expect("unwrap");
            assert_eq!(recovered.kdf, Pbkdf2Variant::Sha256Iterations600000);
            // Byte-identical PEM: same DER, and our encoding matches the clients' (64 columns, LF).
            assert_eq!(*recovered.key.to_pkcs8_pem(), vector.private_key_pem);
            let certified = RsaPublicKey::from_certificate_pem(&vector.certificate_pem).expect("certificate");
            assert_eq!(certified.spki_der(), recovered.key.public_key().spki_der());
            let wrapped = certified.encrypt(&[9u8; 16]).expect("encrypt");
            assert_eq!(*recovered.key.decrypt(&wrapped).expect("decrypt"), [9u8; 16]);
            // Our own re-wrap of the vector's key opens too.
            let rewrapped = wrap(&recovered.key, &mnemonic).expect("wrap");
            assert_eq!(
                *unwrap(&rewrapped, &mnemonic).expect("unwrap").key.to_pkcs8_pem(),
                vector.private_key_pem
            );
        }
    }

    #[test]
    fn nextcloud_vectors_only_the_sha256_variant_opens() {
        let vector = alice();
        let blob = PrivateKeyBlob::parse(&vector.encrypted_private_key).expect("blob");
        let passphrase = Mnemonic::parse(&vector.mnemonic).expect("mnemonic").passphrase();
        let nonce = GcmNonce::from_slice(&blob.iv).expect("nonce");
        for kdf in [Pbkdf2Variant::Sha1Iterations600000, Pbkdf2Variant::Sha1Iterations1024] {
            let wrapping_key = kdf.derive(passphrase.as_bytes(), &blob.salt).expect("derive");
            assert!(matches!(
                gcm::open(&wrapping_key, &nonce, &blob.ciphertext_and_tag),
                Err(CryptoError::Authentication)
            ));
        }
    }

    #[test]
    fn whitespace_and_case_in_the_mnemonic_do_not_matter() {
        let vector = bob();
        let blob = PrivateKeyBlob::parse(&vector.encrypted_private_key).expect("blob");
        let messy = format!("  {}\n", vector.mnemonic.to_uppercase().replace(' ', " \t "));
        assert!(unwrap(&blob, &Mnemonic::parse(&messy).expect("mnemonic")).is_ok());
    }

    #[test]
    fn wrong_mnemonic_is_a_typed_error() {
        let blob = PrivateKeyBlob::parse(&alice().encrypted_private_key).expect("blob");
        let mnemonic = Mnemonic::parse(&bob().mnemonic).expect("mnemonic");
        assert!(matches!(
            unwrap(&blob, &mnemonic),
            Err(KeyBackupError::WrongMnemonicOrCorrupted)
        ));
    }

    #[test]
    fn altered_or_truncated_blobs_are_refused() {
        // Each case costs three key derivations; tag and IV flips are covered in `crypto::gcm`.
        let vector = alice();
        let mnemonic = Mnemonic::parse(&vector.mnemonic).expect("mnemonic");
        let original = PrivateKeyBlob::parse(&vector.encrypted_private_key).expect("blob");
        let mut flipped_ciphertext = original.clone();
        flipped_ciphertext.ciphertext_and_tag[10] ^= 0x80;
        let mut flipped_salt = original.clone();
        flipped_salt.salt[39] ^= 0x01;
        let mut truncated = original.clone();
        truncated
            .ciphertext_and_tag
            .truncate(original.ciphertext_and_tag.len() - 16);
        let mnemonic = &mnemonic;
        std::thread::scope(|scope| {
            let handles: Vec<_> = [flipped_ciphertext, flipped_salt, truncated]
                .into_iter()
                .map(|blob| scope.spawn(move || unwrap(&blob, mnemonic)))
                .collect();
            for handle in handles {
                let result = handle.join().expect("thread");
                assert!(
                    matches!(result, Err(KeyBackupError::WrongMnemonicOrCorrupted)),
                    "{result:?}"
                );
            }
        });
        // A truncated *string* fails to parse instead.
        let stored = &vector.encrypted_private_key;
        assert!(PrivateKeyBlob::parse(&stored[..stored.len() - 8]).is_err());
        assert!(PrivateKeyBlob::parse(&stored[..stored.find('|').expect("separator")]).is_err());
    }

    #[test]
    fn content_that_is_not_a_key_is_malformed_not_a_panic() {
        let mnemonic = Mnemonic::generate().expect("mnemonic");
        let salt = [3u8; SALT_LEN];
        let nonce = GcmNonce::random12().expect("nonce");
        let wrapping_key = Pbkdf2Variant::Sha1Iterations1024
            .derive(mnemonic.passphrase().as_bytes(), &salt)
            .expect("derive");
        for plaintext in [&b"not base64!"[..], STANDARD.encode("not a pem").as_bytes(), b""] {
            let mut iv = [0u8; IV_LEN];
            iv.copy_from_slice(nonce.as_bytes());
            let blob = PrivateKeyBlob {
                ciphertext_and_tag: gcm::seal(&wrapping_key, &nonce, plaintext).expect("seal"),
                iv,
                salt,
            };
            assert!(matches!(unwrap(&blob, &mnemonic), Err(KeyBackupError::MalformedKey(_))));
        }
    }

    #[test]
    fn written_blobs_use_sha256_and_the_server_lengths() {
        let mnemonic = Mnemonic::generate().expect("mnemonic");
        let blob = wrap(test_key(), &mnemonic).expect("wrap");
        let stored = blob.to_string();
        assert_eq!(stored.split('|').count(), 3);
        let reparsed = PrivateKeyBlob::parse(&stored).expect("parse");
        assert_eq!(unwrap(&reparsed, &mnemonic).expect("unwrap").kdf, Pbkdf2Variant::WRITE);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        /// wrap → string → parse → unwrap gives the key back, for any mnemonic and every KDF variant
        /// (the slow variants are exercised by the tests above; here SHA1/1024 keeps cases cheap).
        #[test]
        fn wrap_unwrap_round_trip(indices in proptest::collection::vec(0usize..2048, 12), legacy_separator in any::<bool>()) {
            let words: Vec<&str> = crate::mnemonic::tests_support::words(&indices);
            let mnemonic = Mnemonic::parse(&words.join(" ")).expect("mnemonic");
            let blob = wrap_with(test_key(), &mnemonic, Pbkdf2Variant::Sha1Iterations1024).expect("wrap");
            let mut stored = blob.to_string();
            if legacy_separator {
                stored = stored.replace('|', "fA==");
            }
            let reparsed = PrivateKeyBlob::parse(&stored).expect("parse");
            prop_assert_eq!(&reparsed, &blob);
            let recovered = unwrap(&reparsed, &mnemonic).expect("unwrap");
            prop_assert_eq!(recovered.kdf, Pbkdf2Variant::Sha1Iterations1024);
            prop_assert_eq!(recovered.key.public_key().spki_der(), test_key().public_key().spki_der());
        }
    }
}
