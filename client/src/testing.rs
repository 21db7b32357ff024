//! Unit-test support: an in-memory CA that keeps the KeyBackup contract of key_backup.proto (single-use nonces
//! bound to a user, proofs checked under the pinned key, write-once wrapped keys, deposits to the current recovery
//! key only), so that the library's flows run without a server. End-to-end tests use the real CA instead.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

use std::collections::{BTreeMap, BTreeSet};

use crate::crypto::rsa::{RsaPrivateKey, RsaPublicKey};
use crate::format::private_key_blob::PrivateKeyBlob;
use crate::protocol::possession::{self, BackupNonce, ProofOfPossession, Purpose};
use crate::recovery::RecoveryKeyInfo;
use crate::transport::{
    BackupChallenge, BackupWrite, CaError, CaInfo, CaTransport, EscrowDeposited, IssuedCertificate, StoredWrappedKey,
    WrappedKeyStored,
};

/// The fake CA.
pub(crate) struct FakeCa {
    key: rcgen::KeyPair,
    certificates: BTreeMap<String, (String, RsaPublicKey)>,
    nonces: BTreeSet<(String, [u8; 32])>,
    spent: usize,
    wrapped_keys: BTreeMap<String, (String, String)>,
    /// The recovery key `ca_info` reports.
    pub(crate) recovery: Option<RecoveryKeyInfo>,
    /// Deposits: user id → (recovery-key fingerprint, blob).
    pub(crate) deposits: BTreeMap<String, (String, Vec<u8>)>,
}

impl FakeCa {
    pub(crate) fn new() -> FakeCa {
        FakeCa {
            key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA keygen"),
            certificates: BTreeMap::new(),
            nonces: BTreeSet::new(),
            spent: 0,
            wrapped_keys: BTreeMap::new(),
            recovery: None,
            deposits: BTreeMap::new(),
        }
    }

    /// The CA key (to sign recovery-key certificates with).
    pub(crate) fn key(&self) -> &rcgen::KeyPair {
        &self.key
    }

    /// Makes a key for `user_id`, certifies and pins it; returns the private key.
    pub(crate) fn enroll(&mut self, user_id: &str) -> RsaPrivateKey {
        let private_key = RsaPrivateKey::generate_2048().expect("keygen");
        let subject = rcgen::KeyPair::from_pem(&private_key.to_pkcs8_pem()).expect("rcgen key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, user_id);
        let mut issuer_params = rcgen::CertificateParams::default();
        issuer_params.distinguished_name = rcgen::DistinguishedName::new();
        issuer_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Fake CA");
        let issuer = rcgen::Issuer::from_params(&issuer_params, &self.key);
        let certificate = params.signed_by(&subject, &issuer).expect("certify");
        let public_key = RsaPublicKey::from_spki_der(private_key.public_key().spki_der()).expect("spki");
        self.certificates
            .insert(user_id.to_owned(), (certificate.pem(), public_key));
        private_key
    }

    /// The certificate issued to `user_id`.
    pub(crate) fn certificate(&self, user_id: &str) -> String {
        self.certificates[user_id].0.clone()
    }

    /// How many nonces were spent on accepted or refused proofs.
    pub(crate) fn nonces_spent(&self) -> usize {
        self.spent
    }

    /// Spends the proof's nonce and checks its signature, as the server does before anything else.
    fn check_proof(
        &mut self,
        user_id: &str,
        purpose: Purpose,
        payload: &[u8],
        proof: &ProofOfPossession,
    ) -> Result<(), CaError> {
        if !self.nonces.remove(&(user_id.to_owned(), *proof.nonce.as_bytes())) {
            return Err(CaError::FailedPrecondition("unknown, expired or used nonce".into()));
        }
        self.spent += 1;
        let (_, public_key) = self
            .certificates
            .get(user_id)
            .ok_or_else(|| CaError::FailedPrecondition("no pinned key".into()))?;
        let text = possession::proof_text(purpose, user_id, &proof.nonce, payload).expect("text");
        public_key
            .verify_pkcs1_sha256(text.as_bytes(), &proof.signature)
            .map_err(|_| CaError::InvalidArgument("the proof of possession does not verify".into()))
    }
}

impl CaTransport for FakeCa {
    async fn issue_certificate(&mut self, _user_id: &str, _csr_pem: &str) -> Result<IssuedCertificate, CaError> {
        Err(CaError::Refused {
            code: tonic::Code::Unimplemented,
            message: "the fake CA enrolls with FakeCa::enroll".into(),
        })
    }

    async fn ca_info(&mut self) -> Result<CaInfo, CaError> {
        Ok(CaInfo {
            chain_pem: String::new(),
            public_key_pem: self.key.public_key_pem(),
            certificate_fingerprint: String::new(),
            recovery: self.recovery.clone(),
        })
    }

    async fn certificate_of(&mut self, user_id: &str) -> Result<Option<String>, CaError> {
        Ok(self.certificates.get(user_id).map(|(pem, _)| pem.clone()))
    }

    async fn create_backup_challenge(&mut self, user_id: &str) -> Result<BackupChallenge, CaError> {
        let mut nonce = [0u8; 32];
        crate::crypto::fill_random(&mut nonce).expect("random");
        self.nonces.insert((user_id.to_owned(), nonce));
        Ok(BackupChallenge {
            nonce: BackupNonce::new(nonce),
            expires_at: "2026-01-01T00:05:00Z".into(),
        })
    }

    async fn put_wrapped_private_key(
        &mut self,
        user_id: &str,
        wrapped_key: &PrivateKeyBlob,
        write: BackupWrite,
        proof: &ProofOfPossession,
    ) -> Result<WrappedKeyStored, CaError> {
        let text = wrapped_key.to_string();
        self.check_proof(user_id, Purpose::KeyBackup, text.as_bytes(), proof)?;
        let stored = self.wrapped_keys.contains_key(user_id);
        match (write, stored) {
            (BackupWrite::CreateOnly, true) => return Err(CaError::AlreadyExists("a wrapped key is stored".into())),
            (BackupWrite::Replace, false) => return Err(CaError::NotFound("nothing to replace".into())),
            _ => {}
        }
        let fingerprint = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(self.certificates[user_id].1.spki_der()))
        };
        self.wrapped_keys.insert(user_id.to_owned(), (text, fingerprint));
        Ok(WrappedKeyStored {
            replaced: stored,
            log_index: Some(7),
        })
    }

    async fn wrapped_private_key(&mut self, user_id: &str) -> Result<StoredWrappedKey, CaError> {
        let (text, fingerprint) = self
            .wrapped_keys
            .get(user_id)
            .ok_or_else(|| CaError::NotFound("no wrapped key".into()))?;
        Ok(StoredWrappedKey {
            wrapped_key: PrivateKeyBlob::parse(text).expect("stored as parsed"),
            key_fingerprint: fingerprint.clone(),
            stored_at: "2026-01-01T00:00:00Z".into(),
            log_index: Some(8),
        })
    }

    async fn deposit_escrow(
        &mut self,
        user_id: &str,
        recovery_key_fingerprint: &str,
        escrow_blob: &[u8],
        proof: &ProofOfPossession,
    ) -> Result<EscrowDeposited, CaError> {
        self.check_proof(user_id, Purpose::Escrow, escrow_blob, proof)?;
        match &self.recovery {
            Some(key) if key.fingerprint == recovery_key_fingerprint => {}
            _ => {
                return Err(CaError::FailedPrecondition(
                    "the recovery key is not the current one".into(),
                ));
            }
        }
        self.deposits.insert(
            user_id.to_owned(),
            (recovery_key_fingerprint.to_owned(), escrow_blob.to_vec()),
        );
        Ok(EscrowDeposited { log_index: Some(9) })
    }
}
