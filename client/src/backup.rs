//! The user's key backup on the CA (KeyBackup service): the mnemonic-wrapped key stored with a proof of possession,
//! and a key recovered from it, or imported from a file, accepted on a new device only once the CA certifies it.
//!
//! The wrapping itself is `protocol::key_backup` (Nextcloud's format); this module adds the CA's rules: a stored
//! key is write-once unless replaced on purpose (`BackupWrite`), every write spends a fresh nonce, and a key
//! opened from the CA's blob must be the key the CA pinned (`key_fingerprint`) and certifies now.

use sha2::{Digest, Sha256};

use crate::crypto::kdf::Pbkdf2Variant;
use crate::crypto::rsa::RsaPrivateKey;
use crate::identity::{self, IdentityError};
use crate::mnemonic::{Mnemonic, MnemonicError};
use crate::protocol::folder::Account;
use crate::protocol::key_backup::{self, KeyBackupError};
use crate::protocol::possession::{self, PossessionError, Purpose};
use crate::transport::{BackupWrite, CaError, CaInfo, CaTransport, StoredWrappedKey, WrappedKeyStored};

/// Why a key-backup operation failed. No message carries the words, the key or the wrapped blob.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// A wrapped key is stored already (the key was backed up before); nothing was written. Replacing it is a
    /// deliberate `BackupWrite::Replace` (the CLI's `rewrap`).
    #[error("a wrapped key is already stored on the CA ({0})")]
    AlreadyStored(String),
    /// `BackupWrite::Replace`, or a recovery, with no wrapped key stored on the CA for the user.
    #[error("no wrapped key is stored on the CA for this user ({0})")]
    NothingStored(String),
    /// The CA knows no certificate for the user.
    #[error("the CA knows no certificate for {0:?}")]
    NoCertificate(String),
    /// The unwrapped key is not the key the CA pinned when the wrapped key was stored.
    #[error("the unwrapped key has SPKI SHA-256 {actual}, not the pinned {expected}")]
    KeyMismatch {
        /// The fingerprint the CA recorded with the wrapped key.
        expected: String,
        /// The unwrapped key's fingerprint.
        actual: String,
    },
    /// The CA's certificate for the user does not verify, or does not certify this key.
    #[error("the CA's certificate does not certify this key: {0}")]
    Certificate(#[from] IdentityError),
    /// The words do not open the wrapped key, or what they open is not a key.
    #[error(transparent)]
    Unwrap(#[from] KeyBackupError),
    /// No fresh mnemonic could be drawn.
    #[error(transparent)]
    Mnemonic(#[from] MnemonicError),
    /// The proof of possession could not be made.
    #[error(transparent)]
    Proof(#[from] PossessionError),
    /// The CA refused or could not be reached.
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// A key wrapped under fresh words and stored on the CA.
#[derive(Debug)]
pub struct NewBackup {
    /// The words: show them to the user once, then drop them (they are zeroized).
    pub mnemonic: Mnemonic,
    /// What the CA recorded.
    pub stored: WrappedKeyStored,
}

/// A key certified by the CA for its user: what a new device is set up with.
#[derive(Debug)]
pub struct CertifiedAccount {
    /// The user, their key, and the CA's certificate for it.
    pub account: Account,
    /// The CA the certificate was checked against.
    pub ca: CaInfo,
}

/// A key opened from the CA's wrapped key.
#[derive(Debug)]
pub struct RecoveredAccount {
    /// The recovered key, certified.
    pub certified: CertifiedAccount,
    /// The KDF that opened it; anything but `Pbkdf2Variant::WRITE` is worth re-wrapping.
    pub kdf: Pbkdf2Variant,
}

/// Wraps `key` under a fresh mnemonic and stores it on the CA for `user_id` with a proof of possession (purpose
/// key-backup, over the wrapped key's text). `BackupWrite::CreateOnly` over a stored key is
/// `BackupError::AlreadyStored`; `BackupWrite::Replace` with nothing stored is `BackupError::NothingStored`.
pub async fn store(
    transport: &mut impl CaTransport,
    user_id: &str,
    key: &RsaPrivateKey,
    write: BackupWrite,
) -> Result<NewBackup, BackupError> {
    let mnemonic = Mnemonic::generate()?;
    let wrapped_key = key_backup::wrap(key, &mnemonic)?;
    let challenge = transport.create_backup_challenge(user_id).await?;
    let proof = possession::prove(
        key,
        Purpose::KeyBackup,
        user_id,
        &challenge.nonce,
        wrapped_key.to_string().as_bytes(),
    )?;
    let stored = transport
        .put_wrapped_private_key(user_id, &wrapped_key, write, &proof)
        .await
        .map_err(|error| match error {
            CaError::AlreadyExists(message) => BackupError::AlreadyStored(message),
            CaError::NotFound(message) => BackupError::NothingStored(message),
            other => BackupError::Ca(other),
        })?;
    Ok(NewBackup { mnemonic, stored })
}

/// Fetches the wrapped key the CA holds for `user_id` (an audit entry on the CA); none is
/// `BackupError::NothingStored`.
pub async fn fetch(transport: &mut impl CaTransport, user_id: &str) -> Result<StoredWrappedKey, BackupError> {
    transport
        .wrapped_private_key(user_id)
        .await
        .map_err(|error| match error {
            CaError::NotFound(message) => BackupError::NothingStored(message),
            other => BackupError::Ca(other),
        })
}

/// Opens `stored` with `mnemonic`, checks that the key is the one the CA pinned with it, and that the CA's current
/// certificate for `user_id` certifies it.
pub async fn open(
    transport: &mut impl CaTransport,
    user_id: &str,
    stored: &StoredWrappedKey,
    mnemonic: &Mnemonic,
) -> Result<RecoveredAccount, BackupError> {
    let recovered = key_backup::unwrap(&stored.wrapped_key, mnemonic)?;
    let actual = hex::encode(Sha256::digest(recovered.key.public_key().spki_der()));
    if !actual.eq_ignore_ascii_case(&stored.key_fingerprint) {
        return Err(BackupError::KeyMismatch {
            expected: stored.key_fingerprint.clone(),
            actual,
        });
    }
    Ok(RecoveredAccount {
        certified: certify(transport, user_id, recovered.key).await?,
        kdf: recovered.kdf,
    })
}

/// Accepts `key` for `user_id` only if the CA's current certificate for the user verifies under the CA key and
/// certifies it (a recovered key, or one the officers released from escrow).
pub async fn certify(
    transport: &mut impl CaTransport,
    user_id: &str,
    key: RsaPrivateKey,
) -> Result<CertifiedAccount, BackupError> {
    let ca = transport.ca_info().await?;
    let certificate_pem = transport
        .certificate_of(user_id)
        .await?
        .ok_or_else(|| BackupError::NoCertificate(user_id.to_owned()))?;
    identity::check_certificate(&certificate_pem, &ca, user_id, Some(key.public_key().spki_der()))?;
    Ok(CertifiedAccount {
        account: Account {
            user_id: user_id.to_owned(),
            private_key: key,
            certificate_pem,
        },
        ca,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeCa;

    #[tokio::test(flavor = "current_thread")]
    async fn a_backup_is_write_once_and_rewrap_replaces_it() {
        let mut ca = FakeCa::new();
        let key = ca.enroll("alice");

        let first = store(&mut ca, "alice", &key, BackupWrite::CreateOnly)
            .await
            .expect("store");
        assert!(!first.stored.replaced);
        assert!(matches!(
            store(&mut ca, "alice", &key, BackupWrite::CreateOnly).await,
            Err(BackupError::AlreadyStored(_))
        ));
        let second = store(&mut ca, "alice", &key, BackupWrite::Replace)
            .await
            .expect("rewrap");
        assert!(second.stored.replaced);
        assert_ne!(first.mnemonic.phrase(), second.mnemonic.phrase());

        // Only the new words open what is stored now.
        let stored = fetch(&mut ca, "alice").await.expect("fetch");
        assert!(matches!(
            open(&mut ca, "alice", &stored, &first.mnemonic).await,
            Err(BackupError::Unwrap(KeyBackupError::WrongMnemonicOrCorrupted))
        ));
        let recovered = open(&mut ca, "alice", &stored, &second.mnemonic).await.expect("open");
        assert_eq!(recovered.kdf, Pbkdf2Variant::WRITE);
        assert_eq!(
            recovered.certified.account.private_key.public_key().spki_der(),
            key.public_key().spki_der()
        );
        assert_eq!(recovered.certified.account.certificate_pem, ca.certificate("alice"));

        // Every write spent its own nonce.
        assert_eq!(ca.nonces_spent(), 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn nothing_stored_and_another_users_key_are_refused() {
        let mut ca = FakeCa::new();
        let alice = ca.enroll("alice");
        let bob = ca.enroll("bob");
        assert!(matches!(
            fetch(&mut ca, "alice").await,
            Err(BackupError::NothingStored(_))
        ));
        assert!(matches!(
            store(&mut ca, "alice", &alice, BackupWrite::Replace).await,
            Err(BackupError::NothingStored(_))
        ));
        // Bob's key cannot prove possession for alice.
        assert!(matches!(
            store(&mut ca, "alice", &bob, BackupWrite::CreateOnly).await,
            Err(BackupError::Ca(CaError::InvalidArgument(_)))
        ));

        // Bob's key, wrapped and stored as if it were alice's, opens but is not the key pinned for alice.
        let backup = store(&mut ca, "bob", &bob, BackupWrite::CreateOnly)
            .await
            .expect("store");
        let mut stored = fetch(&mut ca, "bob").await.expect("fetch");
        stored.key_fingerprint = hex::encode(Sha256::digest(alice.public_key().spki_der()));
        assert!(matches!(
            open(&mut ca, "alice", &stored, &backup.mnemonic).await,
            Err(BackupError::KeyMismatch { .. })
        ));
        // And a key the CA does not certify for the user is refused by `certify`.
        assert!(matches!(
            certify(&mut ca, "alice", bob).await,
            Err(BackupError::Certificate(_))
        ));
        assert!(matches!(
            certify(&mut ca, "carol", alice).await,
            Err(BackupError::NoCertificate(_))
        ));
    }
}
