//! The audit key: an ECDSA P-256 key on the HSM that signs checkpoints as C2SP signed notes.
//!
//! Signature type 0x02: key ID = first 4 bytes of SHA-256(DER SPKI), signature = ASN.1 DER ECDSA
//! over SHA-256 of the note text. The HSM layer hashes with SHA-256 and returns DER for P-256 keys,
//! which is exactly that. The private key never leaves the token; `hsm::Signer` verifies every
//! signature with the public key, and the note is verified as clients parse it before it is stored.

use tlog::checkpoint::Checkpoint;
use tlog::key::VerifierKey;
use tlog::note::{KeyId, KeyName, NoteSigner, SignedNote};

use crate::hsm::{HsmError, KeyAlgorithm, LeaseSigner, Signer};

/// Why a checkpoint could not be signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditKeyError {
    /// The origin is not a valid key name (empty, spaces or '+').
    #[error("audit.origin {0:?} is not a valid signed-note key name (no spaces, no '+')")]
    InvalidOrigin(String),
    /// The key on the token is not an ECDSA P-256 key.
    #[error("the audit key must be an ECDSA P-256 key")]
    NotP256,
    /// The HSM failed.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// The note could not be built (invalid checkpoint text).
    #[error("cannot build the checkpoint note: {0}")]
    Note(String),
    /// The HSM's signature did not verify with the audit public key; nothing was stored.
    #[error("the checkpoint signature failed verification with the audit public key")]
    SignatureCheck,
}

/// The audit key: its HSM signer and its signed-note verifier key (name = the log origin).
#[derive(Debug, Clone)]
pub struct AuditKey {
    signer: Signer,
    verifier: VerifierKey,
}

impl AuditKey {
    /// Wraps an HSM P-256 key's signer as the signer of the log named `origin`.
    pub fn new(signer: Signer, origin: &str) -> Result<AuditKey, AuditKeyError> {
        if signer.key().algorithm() != KeyAlgorithm::EcdsaP256 {
            return Err(AuditKeyError::NotP256);
        }
        let name = KeyName::new(origin).map_err(|_| AuditKeyError::InvalidOrigin(origin.to_owned()))?;
        let verifier = VerifierKey::ecdsa_p256(name, signer.key().spki_der()).map_err(|_| AuditKeyError::NotP256)?;
        Ok(AuditKey { signer, verifier })
    }

    /// The log origin (also the key name).
    pub fn origin(&self) -> &str {
        self.verifier.name().as_str()
    }

    /// The verifier key; its `Display` is the vkey text clients pin.
    pub fn verifier(&self) -> &VerifierKey {
        &self.verifier
    }

    /// Signs `checkpoint` on the HSM (one pooled session, on a blocking thread) and verifies the
    /// note before returning it.
    pub async fn sign(&self, checkpoint: &Checkpoint) -> Result<SignedNote, AuditKeyError> {
        let key = self.clone();
        let text = checkpoint.to_string();
        let note = self
            .signer
            .with_lease(move |signer| {
                let signer = NoteLeaseSigner { signer, key: &key };
                SignedNote::sign(&text, &signer).map_err(|error| match error {
                    tlog::note::SignError::Signer(HsmError::SignatureCheck(_)) => AuditKeyError::SignatureCheck,
                    tlog::note::SignError::Signer(hsm_error) => AuditKeyError::Hsm(hsm_error),
                    other => AuditKeyError::Note(other.to_string()),
                })
            })
            .await??;
        note.verify(std::slice::from_ref(&self.verifier))
            .map_err(|_| AuditKeyError::SignatureCheck)?;
        Ok(note)
    }
}

/// `NoteSigner` over a leased HSM session: blocking, so it runs on a blocking thread.
struct NoteLeaseSigner<'a, 'b> {
    signer: &'a LeaseSigner<'b>,
    key: &'a AuditKey,
}

impl NoteSigner for NoteLeaseSigner<'_, '_> {
    type Error = HsmError;

    fn key_name(&self) -> &KeyName {
        self.key.verifier.name()
    }

    fn key_id(&self) -> KeyId {
        self.key.verifier.key_id()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        // The HSM layer signs P-256 as ECDSA over SHA-256(message) and returns DER: type 0x02.
        self.signer.sign(message)
    }
}
