//! Steps 4 and 5 of issuance: the certificate built from the profile, signed by the CA key on the
//! HSM, and checked before anything else sees it; and `SigningQueue`, the count of issuances at
//! the HSM that the embedded store follows.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use x509_parser::oid_registry::{self, Oid};

use super::csr::{CheckedCsr, UserKeyType};
use super::store::NewCertificate;
use super::{IssueError, IssuerSetupError};
use crate::hsm::{HsmError, KeyAlgorithm, Signed, Signer};
use crate::identity::{SerialNumber, UserId};

/// The certificate profile, from config.
#[derive(Debug, Clone)]
pub struct Profile {
    /// How long certificates are valid.
    pub validity: Duration,
    /// How far `notBefore` is set back, for clients with slow clocks.
    pub backdate: Duration,
    /// How many certificates one user may get in 24 hours (first issuance included).
    pub max_certificates_per_day: u64,
}

/// The CA certificate the issuer signs under, and the chain above it.
#[derive(Debug, Clone)]
pub struct CaCertificate {
    /// The CA certificate, DER; its public key is the CA signer's.
    pub certificate_der: Vec<u8>,
    /// The chain above the CA certificate (an external root), DER, nearest first; empty for a root CA.
    pub parents_der: Vec<Vec<u8>>,
}

impl CaCertificate {
    /// The chain as PEM: CA certificate first, then its parents.
    pub fn chain_pem(&self) -> String {
        std::iter::once(&self.certificate_der)
            .chain(&self.parents_der)
            .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
            .collect()
    }

    /// Checks that the CA certificate parses and carries the public key of `signer`.
    pub fn check_key(&self, signer: &Signer) -> Result<(), IssuerSetupError> {
        let (_, certificate) = x509_parser::parse_x509_certificate(&self.certificate_der)
            .map_err(|error| IssuerSetupError::Certificate(error.to_string()))?;
        if certificate.public_key().raw != signer.key().spki_der() {
            return Err(IssuerSetupError::KeyMismatch(signer.key().label().to_owned()));
        }
        Ok(())
    }
}

/// The issuances at the HSM: waiting for a session, or building, signing or verifying a certificate.
/// While there are at least as many as the pool has sessions, the HSM sets the pace: a commit that
/// waits a little for the next signed certificates costs no throughput and saves a transaction (on
/// a software token, CPU that signing needs).
#[derive(Debug)]
pub struct SigningQueue {
    in_flight: AtomicUsize,
    sessions: usize,
}

impl SigningQueue {
    /// A queue for an HSM pool of `sessions` sessions.
    pub fn new(sessions: usize) -> SigningQueue {
        SigningQueue {
            in_flight: AtomicUsize::new(0),
            sessions,
        }
    }

    /// True while there are at least as many issuances at the HSM as sessions: every session is
    /// busy or spoken for, so a commit held for more certificates leaves none idle.
    pub fn saturated(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) >= self.sessions
    }

    /// Counts one issuance in until the returned ticket is dropped.
    pub fn enter(self: &Arc<SigningQueue>) -> SigningTicket {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        SigningTicket(Arc::clone(self))
    }
}

/// One issuance counted in a `SigningQueue`, counted out when dropped.
#[derive(Debug)]
pub struct SigningTicket(Arc<SigningQueue>);

impl Drop for SigningTicket {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Builds the certificate for `checked` from `profile` at `now`, signs it with the CA signer (which
/// verifies the signature) and checks the result (step 5).
pub(super) async fn sign(
    signer: &Signer,
    ca: &Arc<CaCertificate>,
    profile: &Profile,
    now: OffsetDateTime,
    user_id: &UserId,
    checked: &CheckedCsr,
) -> Result<NewCertificate, IssueError> {
    let not_before = now - profile.backdate;
    let not_after = now + profile.validity;
    let serial = SerialNumber::generate();
    let mut params = rcgen::CertificateParams::default();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(serial.as_bytes()));
    params.not_before = not_before;
    params.not_after = not_after;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, user_id.as_str());
    // `IsCa::NoCa` writes neither basicConstraints nor the SKI: both are written here, because
    // rcgen's `ExplicitNoCa` encodes `cA FALSE`, a DEFAULT that DER forbids (strict parsers refuse it).
    params.is_ca = rcgen::IsCa::NoCa;
    params.custom_extensions = end_entity_extensions(&checked.fingerprint.key_identifier());
    params.key_usages = match checked.key_type {
        // Nextcloud wraps metadata keys to the user's RSA key with RSA-OAEP.
        UserKeyType::Rsa(_) => vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ],
        // RFC 5480 §3 allows no keyEncipherment for an EC key.
        UserKeyType::EcP256 | UserKeyType::EcP384 => vec![rcgen::KeyUsagePurpose::DigitalSignature],
    };
    params.use_authority_key_identifier_extension = true;
    let subject_key = rcgen::SubjectPublicKeyInfo::from_der(&checked.spki_der)
        .map_err(|error| IssueError::Build(error.to_string()))?;
    let ca = Arc::clone(ca);
    let subject_spki = checked.spki_der.clone();
    let certificate_der = signer
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
            check_certificate(
                &certificate_der,
                &subject_spki,
                signer.key().algorithm(),
                signer.take_signed(),
            )?;
            Ok::<_, IssueError>(certificate_der)
        })
        .await??;
    Ok(NewCertificate {
        user_id: user_id.clone(),
        key_fingerprint: checked.fingerprint,
        spki_der: checked.spki_der.clone(),
        serial,
        certificate_der,
        not_before,
        not_after,
        issued_at: now,
        rate_limit: super::RateLimit {
            since: now - time::Duration::days(1),
            max: profile.max_certificates_per_day,
        },
    })
}

/// The DER of basicConstraints `CA:FALSE` (critical): an empty SEQUENCE, `cA` being DEFAULT FALSE.
const BASIC_CONSTRAINTS_NOT_CA: [u8; 2] = [0x30, 0x00];

/// basicConstraints `CA:FALSE` and the subjectKeyIdentifier `key_identifier` (20 bytes), as
/// rcgen's `ExplicitNoCa` would write them, but in DER.
pub fn end_entity_extensions(key_identifier: &[u8]) -> Vec<rcgen::CustomExtension> {
    let mut basic_constraints =
        rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 19], BASIC_CONSTRAINTS_NOT_CA.to_vec());
    basic_constraints.set_criticality(true);
    // An OCTET STRING of at most 127 bytes: tag, short-form length, bytes.
    let mut subject_key_identifier = vec![0x04, key_identifier.len() as u8];
    subject_key_identifier.extend_from_slice(key_identifier);
    vec![
        rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 14], subject_key_identifier),
        basic_constraints,
    ]
}

/// The X.509 signature algorithm of certificates signed by a key of `algorithm`.
fn signature_oid(algorithm: KeyAlgorithm) -> Oid<'static> {
    match algorithm {
        KeyAlgorithm::EcdsaP256 => oid_registry::OID_SIG_ECDSA_WITH_SHA256,
        KeyAlgorithm::EcdsaP384 => oid_registry::OID_SIG_ECDSA_WITH_SHA384,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => oid_registry::OID_PKCS1_SHA256WITHRSA,
    }
}

/// Step 5 (and the ceremony's check of a new CA certificate): the certificate parses, certifies
/// exactly `subject_spki` (the pinned bytes), names the CA key's signature algorithm inside and
/// outside the signed part, and carries exactly the to-be-signed bytes and the signature that the
/// signer verified with the CA public key: the same assurance as verifying it again, without a
/// second public-key operation.
pub fn check_certificate(
    certificate_der: &[u8],
    subject_spki: &[u8],
    algorithm: KeyAlgorithm,
    signed: Option<Signed>,
) -> Result<(), IssueError> {
    let signed = signed.ok_or(IssueError::SignatureCheck)?;
    let (rest, certificate) =
        x509_parser::parse_x509_certificate(certificate_der).map_err(|_| IssueError::SignatureCheck)?;
    let oid = signature_oid(algorithm);
    let carries_what_was_verified = rest.is_empty()
        && certificate.public_key().raw == subject_spki
        && certificate.signature_algorithm.algorithm == oid
        && certificate.tbs_certificate.signature.algorithm == oid
        && certificate.tbs_certificate.as_ref() == signed.message.as_slice()
        && certificate.signature_value.data.as_ref() == signed.signature.as_slice();
    if carries_what_was_verified {
        Ok(())
    } else {
        Err(IssueError::SignatureCheck)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signing_queue_is_saturated_while_as_many_issuances_as_sessions_are_in() {
        let queue = Arc::new(SigningQueue::new(2));
        assert!(!queue.saturated(), "empty");
        let first = queue.enter();
        assert!(!queue.saturated(), "a session is free");
        let second = queue.enter();
        assert!(queue.saturated(), "every session busy");
        let third = queue.enter();
        drop(first);
        assert!(queue.saturated(), "one waiting takes the freed session");
        drop(third);
        drop(second);
        assert!(!queue.saturated(), "counted out when dropped");
    }

    /// A certificate made with rcgen's software key, the SPKI it certifies, and what its signer signed.
    fn certificate_and_signed() -> (Vec<u8>, Vec<u8>, Signed) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let certificate = rcgen::CertificateParams::new(vec!["x".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("sign");
        let der = certificate.der().to_vec();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let signed = Signed {
            message: parsed.tbs_certificate.as_ref().to_vec(),
            signature: parsed.signature_value.data.to_vec(),
        };
        (der, rcgen::PublicKeyData::subject_public_key_info(&key), signed)
    }

    #[test]
    fn a_certificate_passes_only_with_exactly_what_was_verified_under_the_ca_keys_algorithm() {
        let (der, spki, signed) = certificate_and_signed();
        assert!(check_certificate(&der, &spki, KeyAlgorithm::EcdsaP256, Some(signed.clone())).is_ok());
        let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let other_spki = rcgen::PublicKeyData::subject_public_key_info(&other_key);
        assert!(
            matches!(
                check_certificate(&der, &other_spki, KeyAlgorithm::EcdsaP256, Some(signed.clone())),
                Err(IssueError::SignatureCheck)
            ),
            "certifies another key than the one pinned"
        );
        assert!(
            matches!(
                check_certificate(&der, &spki, KeyAlgorithm::Rsa3072, Some(signed.clone())),
                Err(IssueError::SignatureCheck)
            ),
            "another algorithm than the CA key's"
        );
        assert!(
            matches!(
                check_certificate(&der, &spki, KeyAlgorithm::EcdsaP256, None),
                Err(IssueError::SignatureCheck)
            ),
            "nothing verified"
        );
        let mut other_signature = signed.clone();
        other_signature.signature[10] ^= 1;
        assert!(matches!(
            check_certificate(&der, &spki, KeyAlgorithm::EcdsaP256, Some(other_signature)),
            Err(IssueError::SignatureCheck)
        ));
        let mut other_message = signed.clone();
        other_message.message[20] ^= 1;
        assert!(matches!(
            check_certificate(&der, &spki, KeyAlgorithm::EcdsaP256, Some(other_message)),
            Err(IssueError::SignatureCheck)
        ));
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(matches!(
            check_certificate(&trailing, &spki, KeyAlgorithm::EcdsaP256, Some(signed)),
            Err(IssueError::SignatureCheck)
        ));
    }
}
