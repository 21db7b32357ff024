//! Proofs of possession for the CA's KeyBackup service: the exact text key_backup.proto defines, signed by the device key.
//!
//! The text binds a purpose, the user, a single-use server nonce and the SHA-256 of the payload (the wrapped key's
//! UTF-8 bytes, or the escrow blob), so a proof cannot be replayed for another user, payload or write. Device keys
//! are RSA, which signs with RSASSA-PKCS1-v1_5 and SHA-256.

use sha2::{Digest, Sha256};

use crate::crypto::CryptoError;
use crate::crypto::rsa::RsaPrivateKey;

/// Length of a KeyBackup nonce.
pub const NONCE_LEN: usize = 32;

/// The first line of every proof text.
const HEADER: &str = "e2ee-ca proof-of-possession v1";

/// A nonce from `CreateBackupChallenge`: 32 bytes, valid for one proof by one user for a few minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupNonce([u8; NONCE_LEN]);

impl BackupNonce {
    /// The nonce the CA sent.
    pub fn new(bytes: [u8; NONCE_LEN]) -> BackupNonce {
        BackupNonce(bytes)
    }

    /// The nonce's bytes, as they go back to the CA.
    pub fn as_bytes(&self) -> &[u8; NONCE_LEN] {
        &self.0
    }
}

impl TryFrom<&[u8]> for BackupNonce {
    type Error = PossessionError;

    fn try_from(bytes: &[u8]) -> Result<BackupNonce, PossessionError> {
        <[u8; NONCE_LEN]>::try_from(bytes)
            .map(BackupNonce)
            .map_err(|_| PossessionError::NonceLength(bytes.len()))
    }
}

/// What a proof is for: its `purpose` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Storing or replacing the mnemonic-wrapped key (`PutWrappedPrivateKey`); the payload is the wrapped key's text.
    KeyBackup,
    /// Depositing the key sealed to the recovery key (`DepositEscrow`); the payload is the escrow blob.
    Escrow,
}

impl Purpose {
    /// The word on the `purpose` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::KeyBackup => "key-backup",
            Purpose::Escrow => "escrow",
        }
    }
}

/// Why a proof could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PossessionError {
    /// The CA's nonce does not have 32 bytes.
    #[error("a backup nonce has {NONCE_LEN} bytes, this one has {0}")]
    NonceLength(usize),
    /// The user id contains a line break, which would make the proof text ambiguous.
    #[error("a user id with a line break cannot be proven")]
    UserIdWithLineBreak,
    /// Signing failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// A signed proof, as `PutWrappedPrivateKey` and `DepositEscrow` carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofOfPossession {
    /// The nonce the proof spends.
    pub nonce: BackupNonce,
    /// RSASSA-PKCS1-v1_5 SHA-256 signature of the proof text.
    pub signature: Vec<u8>,
}

/// The UTF-8 proof text for `purpose`, `user_id`, `nonce` and `payload`, byte for byte as key_backup.proto gives it:
/// five lines, each ending in `\n`, hex in lower case.
pub fn proof_text(
    purpose: Purpose,
    user_id: &str,
    nonce: &BackupNonce,
    payload: &[u8],
) -> Result<String, PossessionError> {
    if user_id.contains(['\n', '\r']) {
        return Err(PossessionError::UserIdWithLineBreak);
    }
    Ok(format!(
        "{HEADER}\npurpose {}\nuser {user_id}\nnonce {}\nsha256 {}\n",
        purpose.as_str(),
        hex::encode(nonce.as_bytes()),
        hex::encode(Sha256::digest(payload)),
    ))
}

/// Signs the proof text with the user's device key.
pub fn prove(
    key: &RsaPrivateKey,
    purpose: Purpose,
    user_id: &str,
    nonce: &BackupNonce,
    payload: &[u8],
) -> Result<ProofOfPossession, PossessionError> {
    let text = proof_text(purpose, user_id, nonce, payload)?;
    Ok(ProofOfPossession {
        nonce: *nonce,
        signature: key.sign_pkcs1_sha256(text.as_bytes())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonce() -> BackupNonce {
        let mut bytes = [0u8; NONCE_LEN];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = index as u8;
        }
        BackupNonce::new(bytes)
    }

    #[test]
    fn the_text_is_exactly_the_one_key_backup_proto_gives() {
        // SHA-256("abc") is the FIPS 180-2 example digest.
        let text = proof_text(Purpose::KeyBackup, "alice", &nonce(), b"abc").expect("text");
        let expected = "e2ee-ca proof-of-possession v1\n\
                        purpose key-backup\n\
                        user alice\n\
                        nonce 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n\
                        sha256 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n";
        assert_eq!(text.as_bytes(), expected.as_bytes());

        // The escrow purpose, a user id with a space, an empty payload.
        let text = proof_text(Purpose::Escrow, "Ada Lovelace", &BackupNonce::new([0xff; 32]), b"").expect("text");
        let expected = "e2ee-ca proof-of-possession v1\n\
                        purpose escrow\n\
                        user Ada Lovelace\n\
                        nonce ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff\n\
                        sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn line_breaks_in_the_user_id_and_short_nonces_are_refused() {
        for user_id in ["alice\nuser mallory", "alice\r"] {
            assert!(matches!(
                proof_text(Purpose::Escrow, user_id, &nonce(), b""),
                Err(PossessionError::UserIdWithLineBreak)
            ));
        }
        assert!(matches!(
            BackupNonce::try_from(&[0u8; 31][..]),
            Err(PossessionError::NonceLength(31))
        ));
        assert_eq!(
            BackupNonce::try_from(&nonce().as_bytes()[..]).expect("32 bytes"),
            nonce()
        );
    }

    #[test]
    fn the_signature_verifies_over_the_text_under_the_device_key() {
        let key = RsaPrivateKey::generate_2048().expect("keygen");
        let proof = prove(&key, Purpose::KeyBackup, "alice", &nonce(), b"wrapped").expect("prove");
        assert_eq!(proof.nonce, nonce());
        let text = proof_text(Purpose::KeyBackup, "alice", &nonce(), b"wrapped").expect("text");
        key.public_key()
            .verify_pkcs1_sha256(text.as_bytes(), &proof.signature)
            .expect("verifies");
        let other_payload = proof_text(Purpose::KeyBackup, "alice", &nonce(), b"wrapped!").expect("text");
        assert!(
            key.public_key()
                .verify_pkcs1_sha256(other_payload.as_bytes(), &proof.signature)
                .is_err()
        );
    }
}
