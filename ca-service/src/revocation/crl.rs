//! The CRL: a CRL v2 over every revoked certificate, signed by the CA key on the HSM.
//!
//! rcgen builds it (`CertificateRevocationListParams`) and signs through the CA's `LeaseSigner` on a
//! blocking thread, as `issuer::certificate` signs certificates. The lease verifies the HSM's
//! signature with the key's public half. Before the CRL leaves `sign_crl`, `check_crl` makes sure
//! that the CA *certificate* (what relying parties verify with) carries that key, and that the DER
//! holds exactly the to-be-signed bytes and the signature the lease verified, under the key's
//! algorithm inside and outside the signed part: the assurance of verifying it again, without a
//! second public-key operation or a parse of every entry (which, at 100,000 entries, costs more
//! than building and signing).

use time::OffsetDateTime;
use x509_parser::asn1_rs::{Any, BitString, FromDer, Tag};
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{self, Oid};
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::x509::AlgorithmIdentifier;

use super::RevocationReason;
use crate::hsm::{HsmError, HsmKey, KeyAlgorithm, Signed, Signer};
use crate::identity::SerialNumber;
use crate::issuer::CaCertificate;

/// One revoked certificate, as the CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// The certificate's serial number.
    pub serial: SerialNumber,
    /// When it was revoked (the CRL keeps whole seconds).
    pub revoked_at: OffsetDateTime,
    /// Why; the entry's reasonCode extension.
    pub reason: RevocationReason,
}

/// What a CRL says besides its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlParams {
    /// The CRL number (RFC 5280 §5.2.3): it only grows.
    pub number: u64,
    /// thisUpdate (whole seconds are kept).
    pub this_update: OffsetDateTime,
    /// nextUpdate: relying parties fetch a new CRL by then; must be after `this_update`.
    pub next_update: OffsetDateTime,
}

/// A CRL read back: what `GetCrl` answers with, and what tests check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSummary {
    /// The CRL number.
    pub number: u64,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate.
    pub next_update: OffsetDateTime,
    /// The authority key identifier (the CA certificate's subject key identifier).
    pub authority_key_identifier: Vec<u8>,
    /// The entries, in CRL order.
    pub revoked: Vec<RevokedEntry>,
}

/// Why a CRL could not be signed or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    /// The HSM could not sign (unavailable, pool exhausted, or its signature did not verify).
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// rcgen could not build the CRL, or the parameters are inconsistent (nextUpdate not after
    /// thisUpdate).
    #[error("cannot build the CRL: {0}")]
    Build(String),
    /// The CA certificate does not parse or has no subject key identifier for the CRL's AKI.
    #[error("unusable CA certificate for the CRL: {0}")]
    CaCertificate(String),
    /// The signed CRL does not verify under the CA certificate's public key and algorithm: nothing
    /// was returned.
    #[error("the signed CRL does not verify under the CA certificate's key")]
    SignatureCheck,
    /// The bytes are not a CRL of this CA's shape (for `describe_crl`).
    #[error("not a readable CRL: {0}")]
    Parse(String),
}

/// Signs a CRL v2 (DER) over `revoked` with the CA key: CRL number, AKI = the CA certificate's SKI,
/// thisUpdate, nextUpdate, each entry with its reasonCode; the signature verified before it is
/// returned.
pub async fn sign_crl(
    signer: &Signer,
    ca: &CaCertificate,
    params: &CrlParams,
    revoked: &[RevokedEntry],
) -> Result<Vec<u8>, CrlError> {
    if params.next_update <= params.this_update {
        return Err(CrlError::Build("nextUpdate must be after thisUpdate".to_owned()));
    }
    let subject_key_identifier = subject_key_identifier(&ca.certificate_der)?;
    let crl_params = rcgen::CertificateRevocationListParams {
        this_update: params.this_update,
        next_update: params.next_update,
        crl_number: rcgen::SerialNumber::from_slice(&minimal_be_bytes(params.number)),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|entry| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(entry.serial.as_bytes()),
                revocation_time: entry.revoked_at,
                reason_code: Some(rcgen_reason(entry.reason)),
                invalidity_date: None,
            })
            .collect(),
        // rcgen takes the CRL's AKI from the CRL parameters, not from the issuer certificate, and
        // without a software crypto backend it cannot hash: give it the CA certificate's SKI.
        key_identifier_method: rcgen::KeyIdMethod::PreSpecified(subject_key_identifier),
    };
    let certificate_der = ca.certificate_der.clone();
    let crl_der = signer
        .with_lease(move |signer| {
            let issuer = rcgen::Issuer::from_ca_cert_der(&certificate_der.as_slice().into(), signer)
                .map_err(|error| CrlError::CaCertificate(error.to_string()))?;
            let crl = crl_params
                .signed_by(&issuer)
                .map_err(|error| match signer.take_error() {
                    Some(hsm_error) => CrlError::Hsm(hsm_error),
                    None => CrlError::Build(error.to_string()),
                })?;
            let crl_der = crl.der().to_vec();
            check_crl(&crl_der, &certificate_der, signer.key(), signer.take_signed())?;
            Ok::<_, CrlError>(crl_der)
        })
        .await??;
    Ok(crl_der)
}

/// Parses a CRL DER back (x509-parser): number, thisUpdate, nextUpdate, AKI and entries.
pub fn describe_crl(der: &[u8]) -> Result<CrlSummary, CrlError> {
    let crl = parse(der)?;
    let number = crl.crl_number().ok_or_else(|| parse_error("no CRL number"))?;
    let number = match number.to_u64_digits().as_slice() {
        [] => 0,
        [number] => *number,
        _ => return Err(parse_error("the CRL number does not fit 64 bits")),
    };
    let next_update = crl.next_update().ok_or_else(|| parse_error("no nextUpdate"))?;
    let authority_key_identifier = crl
        .extensions()
        .iter()
        .find_map(|extension| match extension.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(identifier) => identifier.key_identifier.as_ref(),
            _ => None,
        })
        .ok_or_else(|| parse_error("no authority key identifier"))?
        .0
        .to_vec();
    let revoked = crl
        .iter_revoked_certificates()
        .map(|entry| {
            let serial = SerialNumber::from_bytes(entry.serial().to_bytes_be());
            let (_, code) = entry
                .reason_code()
                .ok_or_else(|| parse_error(&format!("entry {} has no reason code", serial.to_hex())))?;
            let reason = RevocationReason::from_code(code.0.into())
                .ok_or_else(|| parse_error(&format!("entry {} has reason code {}", serial.to_hex(), code.0)))?;
            Ok(RevokedEntry {
                serial,
                revoked_at: entry.revocation_date.to_datetime(),
                reason,
            })
        })
        .collect::<Result<Vec<_>, CrlError>>()?;
    Ok(CrlSummary {
        number,
        this_update: crl.last_update().to_datetime(),
        next_update: next_update.to_datetime(),
        authority_key_identifier,
        revoked,
    })
}

/// The CA certificate carries the signing key, and `crl_der` is one CertificateList holding exactly
/// the to-be-signed bytes and signature in `signed` (what the lease verified with that key), naming
/// the key's signature algorithm inside and outside the signed part.
fn check_crl(crl_der: &[u8], ca_certificate_der: &[u8], key: &HsmKey, signed: Option<Signed>) -> Result<(), CrlError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(ca_certificate_der)
        .map_err(|error| CrlError::CaCertificate(error.to_string()))?;
    let carries_the_key = certificate.public_key().raw == key.spki_der();
    let signed = signed.ok_or(CrlError::SignatureCheck)?;
    if !carries_the_key || !carries(crl_der, &signed, &signature_oid(key.algorithm())) {
        tracing::error!("a signed CRL does not verify under the CA certificate's key");
        return Err(CrlError::SignatureCheck);
    }
    Ok(())
}

/// True when `der` is `SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue }` with exactly
/// `signed`'s message and signature and `oid` in both algorithm fields. Reads the outer structure
/// only (the entries inside the to-be-signed bytes are covered by the comparison).
fn carries(der: &[u8], signed: &Signed, oid: &Oid<'_>) -> bool {
    let outer = match Any::from_der(der) {
        Ok((rest, outer)) if rest.is_empty() && outer.tag() == Tag::Sequence => outer,
        _ => return false,
    };
    let Ok((after_tbs, tbs)) = Any::from_der(outer.data) else {
        return false;
    };
    let tbs_der = &outer.data[..outer.data.len() - after_tbs.len()];
    let Ok((after_algorithm, algorithm)) = AlgorithmIdentifier::from_der(after_tbs) else {
        return false;
    };
    let signature = match BitString::from_der(after_algorithm) {
        Ok((rest, signature)) if rest.is_empty() && signature.unused_bits == 0 => signature,
        _ => return false,
    };
    // Inside the signed part: version (present in a v2 CRL), then the signature algorithm.
    let inner_algorithm = Any::from_der(tbs.data)
        .ok()
        .and_then(|(after_version, _)| AlgorithmIdentifier::from_der(after_version).ok())
        .map(|(_, inner)| inner.algorithm);
    tbs.tag() == Tag::Sequence
        && tbs_der == signed.message.as_slice()
        && signature.data.as_ref() == signed.signature.as_slice()
        && algorithm.algorithm == *oid
        && inner_algorithm.as_ref() == Some(oid)
}

fn parse(der: &[u8]) -> Result<CertificateRevocationList<'_>, CrlError> {
    let (rest, crl) = x509_parser::parse_x509_crl(der).map_err(|error| parse_error(&error.to_string()))?;
    if !rest.is_empty() {
        return Err(parse_error("trailing bytes after the CRL"));
    }
    Ok(crl)
}

fn parse_error(detail: &str) -> CrlError {
    CrlError::Parse(detail.to_owned())
}

/// The CA certificate's subject key identifier.
fn subject_key_identifier(certificate_der: &[u8]) -> Result<Vec<u8>, CrlError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(certificate_der)
        .map_err(|error| CrlError::CaCertificate(error.to_string()))?;
    certificate
        .extensions()
        .iter()
        .find_map(|extension| match extension.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(identifier) => Some(identifier.0.to_vec()),
            _ => None,
        })
        .ok_or_else(|| CrlError::CaCertificate("it has no subject key identifier".to_owned()))
}

/// The X.509 signature algorithm of what a key of `algorithm` signs.
fn signature_oid(algorithm: KeyAlgorithm) -> Oid<'static> {
    match algorithm {
        KeyAlgorithm::EcdsaP256 => oid_registry::OID_SIG_ECDSA_WITH_SHA256,
        KeyAlgorithm::EcdsaP384 => oid_registry::OID_SIG_ECDSA_WITH_SHA384,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => oid_registry::OID_PKCS1_SHA256WITHRSA,
    }
}

/// `number` big-endian without leading zero bytes (at least one byte), as a DER INTEGER holds it.
fn minimal_be_bytes(number: u64) -> Vec<u8> {
    let bytes = number.to_be_bytes();
    let first = bytes.iter().position(|byte| *byte != 0).unwrap_or(bytes.len() - 1);
    bytes[first..].to_vec()
}

/// The rcgen name of `reason`.
fn rcgen_reason(reason: RevocationReason) -> rcgen::RevocationReason {
    match reason {
        RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
        RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
        RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
        RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crl_numbers_are_minimal_big_endian() {
        assert_eq!(minimal_be_bytes(0), vec![0]);
        assert_eq!(minimal_be_bytes(1), vec![1]);
        assert_eq!(minimal_be_bytes(0x1_0000), vec![1, 0, 0]);
        assert_eq!(minimal_be_bytes(u64::MAX), vec![0xff; 8]);
    }

    #[test]
    fn every_reason_keeps_its_rfc_5280_code_in_rcgen() {
        for reason in RevocationReason::ALL {
            assert_eq!(rcgen_reason(reason) as u8, reason.code(), "{reason}");
        }
    }

    /// A CRL signed by rcgen's software key, and what its signer signed.
    fn crl_and_signed() -> (Vec<u8>, Signed) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&key).expect("CA");
        let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), &key).expect("issuer");
        let now = OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::hours(1),
            crl_number: rcgen::SerialNumber::from_slice(&[7]),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&[1, 2, 3]),
                revocation_time: now,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::PreSpecified(vec![1; 20]),
        };
        let der = params.signed_by(&issuer).expect("CRL").der().to_vec();
        let (_, parsed) = x509_parser::parse_x509_crl(&der).expect("parses");
        let signed = Signed {
            message: parsed.tbs_cert_list.as_ref().to_vec(),
            signature: parsed.signature_value.data.to_vec(),
        };
        (der, signed)
    }

    #[test]
    fn a_crl_passes_only_with_exactly_what_was_verified_under_the_keys_algorithm() {
        let (der, signed) = crl_and_signed();
        let p256 = oid_registry::OID_SIG_ECDSA_WITH_SHA256;
        assert!(carries(&der, &signed, &p256));
        assert!(
            !carries(&der, &signed, &oid_registry::OID_SIG_ECDSA_WITH_SHA384),
            "another algorithm"
        );
        let mut other_signature = signed.clone();
        other_signature.signature[5] ^= 1;
        assert!(!carries(&der, &other_signature, &p256), "another signature");
        let mut other_message = signed.clone();
        other_message.message[20] ^= 1;
        assert!(!carries(&der, &other_message, &p256), "other to-be-signed bytes");
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(!carries(&trailing, &signed, &p256), "trailing bytes");
        assert!(!carries(&der[..der.len() - 1], &signed, &p256), "truncated");
        assert!(!carries(b"", &signed, &p256), "empty");
    }

    #[test]
    fn what_is_not_a_crl_is_refused_by_describe() {
        assert!(matches!(describe_crl(b""), Err(CrlError::Parse(_))));
        assert!(matches!(
            describe_crl(&[0x30, 0x03, 0x02, 0x01, 0x00]),
            Err(CrlError::Parse(_))
        ));
    }
}
