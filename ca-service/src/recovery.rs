//! The offline recovery key, on the CA's side: an X25519 public key made by the officers'
//! ceremony (`e2ee-recovery ceremony`), certified by the CA key once two admins agree, against
//! which clients seal their escrow deposits; and the release of a deposit, once, under dual
//! control. The CA never holds the recovery private key and cannot open a deposit.
//!
//! `RecoveryStore` is what the Admin service's recovery calls and `GetCaInfo` need from a store.

use std::future::Future;
use std::sync::Arc;

use time::OffsetDateTime;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::approvals::{ApprovalRefused, ApprovalRequest, RequestId, RequestState};
use crate::audit::LogEntryRef;
use crate::hsm::{HsmError, Signer};
use crate::identity::{KeyFingerprint, UserId};
use crate::issuer::{CaCertificate, IssueError};
use crate::storage::StoreError;

/// id-X25519 (RFC 8410).
const OID_X25519: &str = "1.3.101.110";

/// How long a recovery certificate is valid: the key is meant to outlive many CA certificates'
/// users, and is disabled, not expired, when it is retired.
pub const CERTIFICATE_VALIDITY: time::Duration = time::Duration::days(10 * 365);

/// Longest ceremony reference, in bytes.
pub const MAX_REFERENCE_BYTES: usize = 512;

/// A recovery public key as registered: an X25519 SubjectPublicKeyInfo (RFC 8410, no parameters,
/// a 32-byte key), kept as the exact DER whose SHA-256 is its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPublicKey {
    spki_der: Vec<u8>,
    fingerprint: KeyFingerprint,
}

/// Why a recovery public key was refused (fixed text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryKeyError {
    /// Not one PEM "PUBLIC KEY" block.
    #[error("public_key_pem must be one PEM \"PUBLIC KEY\" block")]
    Pem,
    /// Not an X25519 SubjectPublicKeyInfo in DER.
    #[error("the recovery key must be an X25519 SubjectPublicKeyInfo (RFC 8410), as e2ee-recovery ceremony writes it")]
    NotX25519,
}

impl RecoveryPublicKey {
    /// Parses a PEM SubjectPublicKeyInfo.
    pub fn from_pem(text: &str) -> Result<RecoveryPublicKey, RecoveryKeyError> {
        let blocks = pem::parse_many(text).map_err(|_| RecoveryKeyError::Pem)?;
        match blocks.as_slice() {
            [block] if block.tag() == "PUBLIC KEY" => RecoveryPublicKey::from_der(block.contents()),
            _ => Err(RecoveryKeyError::Pem),
        }
    }

    /// Parses a DER SubjectPublicKeyInfo.
    pub fn from_der(der: &[u8]) -> Result<RecoveryPublicKey, RecoveryKeyError> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(der).map_err(|_| RecoveryKeyError::NotX25519)?;
        let x25519 = rest.is_empty()
            && spki.algorithm.algorithm.to_id_string() == OID_X25519
            && spki.algorithm.parameters.is_none()
            && spki.subject_public_key.unused_bits == 0
            && spki.subject_public_key.data.len() == 32;
        // Only the canonical encoding (RFC 8410's 44 bytes), so that one key has one fingerprint.
        if !x25519 || der.len() != 44 {
            return Err(RecoveryKeyError::NotX25519);
        }
        Ok(RecoveryPublicKey {
            spki_der: der.to_vec(),
            fingerprint: KeyFingerprint::of_spki(der),
        })
    }

    /// The DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// SHA-256 of the DER.
    pub fn fingerprint(&self) -> KeyFingerprint {
        self.fingerprint
    }
}

/// The enabled recovery key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryKeyRecord {
    /// Its fingerprint.
    pub fingerprint: KeyFingerprint,
    /// Its certificate, DER, signed by the CA key.
    pub certificate_der: Vec<u8>,
    /// The ceremony reference it was registered with.
    pub ceremony_reference: String,
    /// When it was enabled.
    pub enabled_at: OffsetDateTime,
}

/// What an approved recovery-key request does, in the approval's transaction.
#[derive(Debug, Clone)]
pub enum RecoveryChange {
    /// Enable the requested key with this certificate (signed before the transaction), disabling
    /// the one enabled before.
    Register {
        /// The certificate, DER.
        certificate_der: Vec<u8>,
    },
    /// Disable the enabled key.
    Disable,
}

/// A user's escrow deposit, as released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscrowRecord {
    /// The user.
    pub user: UserId,
    /// The recovery key it is sealed to.
    pub recovery_fingerprint: KeyFingerprint,
    /// The sealed blob, as deposited.
    pub blob: Vec<u8>,
    /// When it was deposited.
    pub deposited_at: OffsetDateTime,
}

/// Why an escrow release was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseRefused {
    /// No escrow-release request with this id.
    #[error("no escrow-release request with this id")]
    NotFound,
    /// The request is not approved and unconsumed.
    #[error("the escrow release is {0}; only an approved, unused release returns the deposit")]
    NotApproved(RequestState),
    /// The user has no deposit any more.
    #[error("the user has no escrow deposit")]
    NoDeposit,
}

/// What the recovery calls need from a store. Implementations: both stores, held to it by
/// `store::conformance`.
///
/// Contract: `approve_recovery_change` does in one transaction what `ApprovalStore::approve_request`
/// does (the row locked, `check_approval`, the `request-approved` entry), and also consumes the
/// request and applies `change` with its own entry (`recovery-key-registered` or
/// `recovery-key-disabled`, naming both admins and the request); a request of another kind, or a
/// disable while nothing is enabled, is `ApprovalRefused::NotPending` as if expired, nothing
/// written. `release_escrow` consumes an approved `escrow-release` request (compare-and-set) and
/// reads the deposit with an `escrow-released` entry naming the caller and both admins, in one
/// transaction; a second call finds the request consumed.
pub trait RecoveryStore: Send + Sync + 'static {
    /// The enabled recovery key, if any.
    fn recovery_key(&self) -> impl Future<Output = Result<Option<RecoveryKeyRecord>, StoreError>> + Send;

    /// The request `id`, whatever its state.
    fn request(&self, id: &RequestId) -> impl Future<Output = Result<Option<ApprovalRequest>, StoreError>> + Send;

    /// Approves the recovery-key request `id` as `approver` at `now` and applies `change` (see the
    /// trait contract). Returns the approved request and the change's entry.
    fn approve_recovery_change(
        &self,
        id: RequestId,
        approver: String,
        now: OffsetDateTime,
        change: RecoveryChange,
    ) -> impl Future<Output = Result<Result<(ApprovalRequest, LogEntryRef), ApprovalRefused>, StoreError>> + Send;

    /// Releases the deposit that the approved request `id` authorizes, to `actor` at `now`, once.
    fn release_escrow(
        &self,
        id: RequestId,
        actor: String,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Result<(EscrowRecord, LogEntryRef), ReleaseRefused>, StoreError>> + Send;
}

/// Certifies `key` with the CA key: subject CN "e2ee-ca recovery key" and the ceremony reference as
/// the organizational unit, keyUsage keyAgreement only (RFC 8410 §5), not a CA, valid for
/// `CERTIFICATE_VALIDITY` from `now`; signed through `signer` (which verifies the signature) and
/// checked like a user's certificate before it is returned.
pub async fn sign_certificate(
    signer: &Signer,
    ca: &Arc<CaCertificate>,
    key: &RecoveryPublicKey,
    ceremony_reference: &str,
    now: OffsetDateTime,
) -> Result<Vec<u8>, IssueError> {
    let mut params = rcgen::CertificateParams::default();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(
        crate::identity::SerialNumber::generate().as_bytes(),
    ));
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + CERTIFICATE_VALIDITY;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "e2ee-ca recovery key");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, ceremony_reference);
    params.is_ca = rcgen::IsCa::NoCa;
    params.custom_extensions = crate::issuer::end_entity_extensions(&key.fingerprint().key_identifier());
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyAgreement];
    params.use_authority_key_identifier_extension = true;
    let subject_key =
        rcgen::SubjectPublicKeyInfo::from_der(key.spki_der()).map_err(|error| IssueError::Build(error.to_string()))?;
    let ca = Arc::clone(ca);
    let subject_spki = key.spki_der().to_vec();
    signer
        .with_lease(move |signer| {
            let issuer = rcgen::Issuer::from_ca_cert_der(&ca.certificate_der.as_slice().into(), signer)
                .map_err(|error| IssueError::Build(error.to_string()))?;
            let certificate = params
                .signed_by(&subject_key, &issuer)
                .map_err(|error| match signer.take_error() {
                    Some(HsmError::SignatureCheck(_)) => IssueError::SignatureCheck,
                    Some(hsm_error) => IssueError::Hsm(hsm_error),
                    None => IssueError::Build(error.to_string()),
                })?;
            let certificate_der = certificate.der().to_vec();
            crate::issuer::check_certificate(
                &certificate_der,
                &subject_spki,
                signer.key().algorithm(),
                signer.take_signed(),
            )?;
            Ok::<_, IssueError>(certificate_der)
        })
        .await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;

    /// An X25519 SPKI: the RFC 8410 prefix and 32 key bytes.
    fn x25519_spki(key: [u8; 32]) -> Vec<u8> {
        let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00];
        der.extend_from_slice(&key);
        der
    }

    #[test]
    fn only_a_canonical_x25519_key_is_a_recovery_key() {
        let der = x25519_spki([9; 32]);
        let key = RecoveryPublicKey::from_der(&der).expect("x25519");
        assert_eq!(key.fingerprint(), KeyFingerprint::of_spki(&der));
        let pem_text = pem::encode(&pem::Pem::new("PUBLIC KEY", der.clone()));
        assert_eq!(RecoveryPublicKey::from_pem(&pem_text), Ok(key));
        let ed25519 = {
            let mut other = der.clone();
            other[8] = 0x70;
            other
        };
        let mut trailing = der.clone();
        trailing.push(0);
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("key")
            .subject_public_key_info();
        for bad in [ed25519, trailing, p256, der[..20].to_vec(), Vec::new()] {
            assert_eq!(RecoveryPublicKey::from_der(&bad), Err(RecoveryKeyError::NotX25519));
        }
        let certificate = pem::encode(&pem::Pem::new("CERTIFICATE", der.clone()));
        for bad in [certificate.clone(), format!("{pem_text}{pem_text}"), "junk".to_owned()] {
            assert_eq!(RecoveryPublicKey::from_pem(&bad), Err(RecoveryKeyError::Pem));
        }
    }
}
