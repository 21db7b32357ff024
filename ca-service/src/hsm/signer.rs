//! One HSM signer for every key the CA signs with (the CA key, the audit log's checkpoint key, the
//! CRL signer to come): sign on a pooled session, verify with the public key, only then return.
//!
//! A faulty token can return a wrong signature (an RSA-CRT fault can even leak the key), so no
//! signature leaves `Signer` or `LeaseSigner` unverified. The public key is parsed once
//! (`Verifier`): aws-lc then keeps its RSA Montgomery context between signatures.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::signature::{self, ParsedPublicKey};

use super::{Hsm, HsmError, HsmKey, KeyAlgorithm, SessionLease};

/// Checks signatures of one HSM key with its public key, in the formats X.509 and signed notes use
/// (DER ECDSA, PKCS#1 v1.5 RSA).
pub struct Verifier {
    public_key: ParsedPublicKey,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Verifier")
    }
}

impl Verifier {
    /// A verifier for signatures of `key`.
    pub fn new(key: &HsmKey) -> Result<Verifier, HsmError> {
        let algorithm: &'static dyn signature::VerificationAlgorithm = match key.algorithm() {
            KeyAlgorithm::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
            KeyAlgorithm::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                &signature::RSA_PKCS1_2048_8192_SHA256
            }
        };
        let public_key =
            ParsedPublicKey::new(algorithm, key.public_key_bytes()).map_err(|_| HsmError::WrongKeyType {
                label: key.label().to_owned(),
                expected: key.algorithm(),
            })?;
        Ok(Verifier { public_key })
    }

    /// True when `signature` is this key's signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.public_key.verify_sig(message, signature).is_ok()
    }
}

/// A key on the token that signs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Signer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    hsm: Hsm,
    key: HsmKey,
    verifier: Verifier,
}

/// The message the health probe signs.
const PROBE_MESSAGE: &[u8] = b"e2ee-ca health probe";

/// The health probe waits at least this long for a session: a pool that is merely busy is healthy,
/// and reporting NOT_SERVING under load would make a load balancer drain a working replica.
const PROBE_SESSION_WAIT: Duration = Duration::from_secs(5);

impl Signer {
    /// Signs with `key` through `hsm`'s pool.
    pub fn new(hsm: Hsm, key: HsmKey) -> Result<Signer, HsmError> {
        let verifier = Verifier::new(&key)?;
        Ok(Signer {
            inner: Arc::new(Inner { hsm, key, verifier }),
        })
    }

    /// Finds the key labelled `label` on the token (checking its algorithm) and signs with it.
    pub async fn load(hsm: &Hsm, label: &str, algorithm: KeyAlgorithm) -> Result<Signer, HsmError> {
        let key = {
            let hsm = hsm.clone();
            let label = label.to_owned();
            tokio::task::spawn_blocking(move || hsm.load_key(&label, algorithm))
                .await
                .map_err(|_| HsmError::Unavailable)??
        };
        Signer::new(hsm.clone(), key)
    }

    /// The key (label, algorithm and public half).
    pub fn key(&self) -> &HsmKey {
        &self.inner.key
    }

    /// Signs `message` (one pooled session, on a blocking thread) and verifies the signature.
    pub async fn sign(&self, message: Vec<u8>) -> Result<Vec<u8>, HsmError> {
        self.with_lease(move |signer| signer.sign(&message)).await?
    }

    /// Runs `work` on a blocking thread with a pooled session of this key, waiting for a session
    /// at most the pool's configured wait (`PoolExhausted` past it). For callers that sign from
    /// inside a synchronous library (rcgen builds certificates, tlog builds notes).
    pub async fn with_lease<T, F>(&self, work: F) -> Result<T, HsmError>
    where
        T: Send + 'static,
        F: FnOnce(&LeaseSigner<'_>) -> T + Send + 'static,
    {
        self.with_lease_within(self.inner.hsm.session_wait(), work).await
    }

    async fn with_lease_within<T, F>(&self, wait: Duration, work: F) -> Result<T, HsmError>
    where
        T: Send + 'static,
        F: FnOnce(&LeaseSigner<'_>) -> T + Send + 'static,
    {
        let lease = self.inner.hsm.lease_within(wait).await?;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&LeaseSigner::new(lease, &inner)))
            .await
            .map_err(|_| HsmError::Unavailable)
    }

    /// The health probe: signs and verifies a fixed message, waiting for a session for at least
    /// `PROBE_SESSION_WAIT` (only sessions held this long mean the token hangs).
    pub async fn probe(&self) -> Result<(), HsmError> {
        let wait = self.inner.hsm.session_wait().max(PROBE_SESSION_WAIT);
        self.with_lease_within(wait, |signer| signer.sign(PROBE_MESSAGE))
            .await?
            .map(drop)
    }
}

/// A message and the signature of it that was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// What was signed.
    pub message: Vec<u8>,
    /// Its verified signature.
    pub signature: Vec<u8>,
}

/// A `Signer` with a leased session, for synchronous signing on a blocking thread: rcgen's
/// `SigningKey` and plain `sign`. rcgen's error type cannot carry our error, so the HSM error is
/// kept here (`take_error`), and so is the last verified signature (`take_signed`), which lets a
/// caller check that a certificate carries exactly what was verified without verifying it again.
pub struct LeaseSigner<'a> {
    lease: RefCell<SessionLease>,
    signer: &'a Inner,
    error: RefCell<Option<HsmError>>,
    signed: RefCell<Option<Signed>>,
}

impl<'a> LeaseSigner<'a> {
    fn new(lease: SessionLease, signer: &'a Inner) -> LeaseSigner<'a> {
        LeaseSigner {
            lease: RefCell::new(lease),
            signer,
            error: RefCell::new(None),
            signed: RefCell::new(None),
        }
    }

    /// The key.
    pub fn key(&self) -> &HsmKey {
        &self.signer.key
    }

    /// Signs `message` on the leased session and verifies the signature with the public key.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let signature = self.lease.borrow_mut().sign(&self.signer.key, message)?;
        if !self.signer.verifier.verifies(message, &signature) {
            tracing::error!(
                key = self.signer.key.label(),
                "the HSM returned a signature that does not verify"
            );
            return Err(HsmError::SignatureCheck(self.signer.key.label().to_owned()));
        }
        *self.signed.borrow_mut() = Some(Signed {
            message: message.to_vec(),
            signature: signature.clone(),
        });
        Ok(signature)
    }

    /// The HSM error behind the last failed signature, if any.
    pub fn take_error(&self) -> Option<HsmError> {
        self.error.borrow_mut().take()
    }

    /// The last message signed and its verified signature, if any.
    pub fn take_signed(&self) -> Option<Signed> {
        self.signed.borrow_mut().take()
    }
}

impl rcgen::PublicKeyData for LeaseSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.signer.key.public_key_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.signer.key.algorithm().signature_algorithm()
    }
}

impl rcgen::SigningKey for LeaseSigner<'_> {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        LeaseSigner::sign(self, message).map_err(|error| {
            *self.error.borrow_mut() = Some(error);
            rcgen::Error::RemoteKeyError
        })
    }
}
