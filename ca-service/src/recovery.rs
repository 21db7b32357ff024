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

use crate::approvals::{ApprovalKind, ApprovalRefused, ApprovalRequest, ProposedRecoveryKey, RequestId, RequestState};
use crate::audit::LogEntryRef;
use crate::hsm::{HsmError, Signer};
use crate::identity::{KeyFingerprint, UserId};
use crate::issuer::{CaCertificate, IssueError, PinEntry};
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

/// A registration as its approval carries it out: the proposed key's fingerprint, the key, and
/// the certificate the CA signed for it.
pub type Registration<'a> = (KeyFingerprint, ProposedRecoveryKey, &'a Vec<u8>);

impl RecoveryChange {
    /// What this change does for `request`: the registration (the proposed key's fingerprint, the
    /// key, and this change's certificate) or `None` for a disable; `ApprovalRefused::NotFound`
    /// when the request is of another kind (no such recovery-key request). Both stores apply it
    /// inside the approval's transaction.
    pub fn for_request(&self, request: &ApprovalRequest) -> Result<Option<Registration<'_>>, ApprovalRefused> {
        match (self, request.kind, &request.recovery_key) {
            (RecoveryChange::Register { certificate_der }, ApprovalKind::RecoveryKeyRegistration, Some(proposed)) => {
                Ok(Some((
                    KeyFingerprint::of_spki(&proposed.spki_der),
                    proposed.clone(),
                    certificate_der,
                )))
            }
            (RecoveryChange::Disable, ApprovalKind::RecoveryKeyDisable, _) => Ok(None),
            _ => Err(ApprovalRefused::NotFound),
        }
    }
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
    /// The `escrow-deposited` entry that recorded it (`escrows.entry_id`), read with it, with the
    /// tree's leaf at its index: what the release checks the blob against
    /// (`key_backup::check_recorded`).
    pub recorded_by: Option<PinEntry>,
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
/// `recovery-key-disabled`, naming both admins and the request); a request of another kind is
/// `ApprovalRefused::NotFound` (no such recovery-key request), and one that can no longer be
/// carried out (a disable of a key no longer enabled, a registration of a retired key) is
/// `NotPending(Expired)`, nothing written. `release_escrow` consumes an approved `escrow-release` request (compare-and-set) and
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
/// the organizational unit, keyUsage keyAgreement only (RFC 8410 §5), not a CA, the SKI derived
/// from the key as for users and the AKI the CA's, valid for `CERTIFICATE_VALIDITY` from `now`;
/// signed through `signer` (which verifies the signature) and checked like a user's certificate
/// before it is returned.
///
/// rcgen writes a subject key only under a signature algorithm it knows, and X25519 is none, so
/// the to-be-signed part is written here with yasna (rcgen's DER writer) from the same fields.
pub async fn sign_certificate(
    signer: &Signer,
    ca: &Arc<CaCertificate>,
    key: &RecoveryPublicKey,
    ceremony_reference: &str,
    now: OffsetDateTime,
) -> Result<Vec<u8>, IssueError> {
    let algorithm = signer.key().algorithm();
    let (issuer, authority_key_id) = ca_names(&ca.certificate_der)?;
    let serial = crate::identity::SerialNumber::generate();
    let not_before = now - time::Duration::minutes(5);
    let not_after = now + CERTIFICATE_VALIDITY;
    let tbs = yasna::construct_der(|writer| {
        writer.write_sequence(|writer| {
            writer
                .next()
                .write_tagged(yasna::Tag::context(0), |writer| writer.write_u8(2));
            writer.next().write_bigint_bytes(serial.as_bytes(), true);
            write_signature_algorithm(writer.next(), algorithm);
            writer.next().write_der(&issuer);
            writer.next().write_sequence(|writer| {
                write_time(writer.next(), not_before);
                write_time(writer.next(), not_after);
            });
            writer.next().write_sequence(|writer| {
                for (oid, value) in [
                    (&[2u64, 5, 4, 3][..], "e2ee-ca recovery key"),
                    (&[2, 5, 4, 11], ceremony_reference),
                ] {
                    writer.next().write_set(|writer| {
                        writer.next().write_sequence(|writer| {
                            writer
                                .next()
                                .write_oid(&yasna::models::ObjectIdentifier::from_slice(oid));
                            writer.next().write_utf8_string(value);
                        });
                    });
                }
            });
            writer.next().write_der(key.spki_der());
            writer.next().write_tagged(yasna::Tag::context(3), |writer| {
                writer.write_sequence(|writer| {
                    let subject_key_id = yasna::construct_der(|writer| {
                        writer.write_bytes(&key.fingerprint().key_identifier());
                    });
                    let authority = yasna::construct_der(|writer| {
                        writer.write_sequence(|writer| {
                            writer.next().write_tagged_implicit(yasna::Tag::context(0), |writer| {
                                writer.write_bytes(&authority_key_id)
                            });
                        });
                    });
                    let extensions: [(&[u64], bool, Vec<u8>); 4] = [
                        // basicConstraints CA:FALSE: an empty SEQUENCE (cA is DEFAULT FALSE).
                        (&[2, 5, 29, 19], true, vec![0x30, 0x00]),
                        // keyUsage keyAgreement (bit 4): 3 unused bits, 0b0000_1000.
                        (&[2, 5, 29, 15], true, vec![0x03, 0x02, 0x03, 0x08]),
                        (&[2, 5, 29, 14], false, subject_key_id),
                        (&[2, 5, 29, 35], false, authority),
                    ];
                    for (oid, critical, value) in extensions {
                        writer.next().write_sequence(|writer| {
                            writer
                                .next()
                                .write_oid(&yasna::models::ObjectIdentifier::from_slice(oid));
                            if critical {
                                writer.next().write_bool(true);
                            }
                            writer.next().write_bytes(&value);
                        });
                    }
                });
            });
        });
    });
    let signature = signer.sign(tbs.clone()).await.map_err(|error| match error {
        HsmError::SignatureCheck(_) => IssueError::SignatureCheck,
        other => IssueError::Hsm(other),
    })?;
    let certificate_der = yasna::construct_der(|writer| {
        writer.write_sequence(|writer| {
            writer.next().write_der(&tbs);
            write_signature_algorithm(writer.next(), algorithm);
            writer.next().write_bitvec_bytes(&signature, signature.len() * 8);
        });
    });
    crate::issuer::check_certificate(
        &certificate_der,
        key.spki_der(),
        algorithm,
        Some(crate::hsm::Signed {
            message: tbs,
            signature,
        }),
    )?;
    Ok(certificate_der)
}

/// The CA certificate's subject (raw DER, the issuer of what it signs) and its subject key
/// identifier (the AKI of what it signs).
fn ca_names(certificate_der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), IssueError> {
    let (_, certificate) =
        x509_parser::parse_x509_certificate(certificate_der).map_err(|error| IssueError::Build(error.to_string()))?;
    let key_id = certificate
        .extensions()
        .iter()
        .find_map(|extension| match extension.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
        .ok_or_else(|| IssueError::Build("the CA certificate has no subject key identifier".to_owned()))?;
    Ok((certificate.tbs_certificate.subject.as_raw().to_vec(), key_id))
}

/// The AlgorithmIdentifier of signatures by a CA key of `algorithm` (RFC 5758, RFC 4055).
fn write_signature_algorithm(writer: yasna::DERWriter<'_>, algorithm: crate::hsm::KeyAlgorithm) {
    use crate::hsm::KeyAlgorithm;
    writer.write_sequence(|writer| match algorithm {
        KeyAlgorithm::EcdsaP256 => writer.next().write_oid(&yasna::models::ObjectIdentifier::from_slice(&[
            1, 2, 840, 10045, 4, 3, 2,
        ])),
        KeyAlgorithm::EcdsaP384 => writer.next().write_oid(&yasna::models::ObjectIdentifier::from_slice(&[
            1, 2, 840, 10045, 4, 3, 3,
        ])),
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            writer.next().write_oid(&yasna::models::ObjectIdentifier::from_slice(&[
                1, 2, 840, 113549, 1, 1, 11,
            ]));
            writer.next().write_null();
        }
    });
}

/// UTCTime through 2049, GeneralizedTime after (RFC 5280 §4.1.2.5), in whole seconds.
fn write_time(writer: yasna::DERWriter<'_>, time: OffsetDateTime) {
    let time = time.replace_nanosecond(0).unwrap_or(time);
    match yasna::models::UTCTime::from_datetime_opt(time) {
        Some(utc) => writer.write_utctime(&utc),
        None => writer.write_generalized_time(&yasna::models::GeneralizedTime::from_datetime(time)),
    }
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
