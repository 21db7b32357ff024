//! Parsing and checking a PKCS#10 request: PEM, DER, key policy, self-signature, subject.
//!
//! Checks run in this order so that each refusal names the real problem: the encoding, then the key
//! (a weak key is reported as weak, not as "bad signature"), then the self-signature, then the subject.
//! Extensions the CSR requests are ignored: the certificate is built from the CA's profile alone.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::identity::{KeyFingerprint, UserId};

/// Largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_BYTES: usize = 64 * 1024;

/// Why a CSR was refused; each message says what was wrong (sent to the caller as is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// No PEM block could be read.
    #[error("csr_pem is not PEM: expected a -----BEGIN CERTIFICATE REQUEST----- block")]
    NotPem,
    /// A PEM block of another type was sent.
    #[error("csr_pem holds a {0:?} PEM block; expected CERTIFICATE REQUEST")]
    WrongPemLabel(String),
    /// The DER inside is not a PKCS#10 request.
    #[error("csr_pem is not a well-formed PKCS#10 certificate request")]
    Malformed,
    /// The key is of a type the CA does not certify.
    #[error("unsupported key type {0}; allowed: RSA 2048-4096 bits with e = 65537, EC P-256, EC P-384")]
    UnsupportedKeyType(String),
    /// An EC key on a curve the CA does not certify.
    #[error("unsupported EC curve {0}; allowed: P-256, P-384")]
    UnsupportedCurve(String),
    /// The EC point is not an uncompressed point of the curve's size.
    #[error("the EC public key must be an uncompressed point of the curve's size")]
    BadEcPoint,
    /// RSA modulus outside 2048-4096 bits.
    #[error("RSA key is {0} bits; allowed: 2048 to 4096 bits")]
    RsaKeySize(usize),
    /// RSA exponent other than 65537.
    #[error("RSA public exponent must be 65537")]
    RsaExponent,
    /// The self-signature does not verify (or uses an algorithm we cannot check).
    #[error("the CSR's self-signature does not verify with its own public key")]
    BadSignature,
    /// The subject has no common name, or several.
    #[error("the CSR subject must hold exactly one common name (CN), equal to user_id")]
    MissingCommonName,
    /// The common name differs from the user id.
    #[error("the CSR subject common name does not match user_id")]
    CommonNameMismatch,
}

/// The accepted user-key types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKeyType {
    /// RSA with this many modulus bits.
    Rsa(usize),
    /// ECDSA P-256.
    EcP256,
    /// ECDSA P-384.
    EcP384,
}

impl std::fmt::Display for UserKeyType {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserKeyType::Rsa(bits) => write!(formatter, "rsa-{bits}"),
            UserKeyType::EcP256 => formatter.write_str("ec-p256"),
            UserKeyType::EcP384 => formatter.write_str("ec-p384"),
        }
    }
}

/// A request that passed every check.
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    /// DER SubjectPublicKeyInfo of the requested key.
    pub spki_der: Vec<u8>,
    /// Its SHA-256: the pin.
    pub fingerprint: KeyFingerprint,
    /// Its type.
    pub key_type: UserKeyType,
}

/// Parses and checks `csr_pem` for `user_id` (the size limit is checked by the caller).
pub fn check(user_id: &UserId, csr_pem: &str) -> Result<CheckedCsr, CsrError> {
    let block = pem::parse(csr_pem.trim()).map_err(|_| CsrError::NotPem)?;
    if !matches!(block.tag(), "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST") {
        return Err(CsrError::WrongPemLabel(block.tag().to_owned()));
    }
    let (rest, csr) = X509CertificationRequest::from_der(block.contents()).map_err(|_| CsrError::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed);
    }
    let info = &csr.certification_request_info;
    let key_type = check_key(&info.subject_pki)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    let mut common_names = info.subject.iter_common_name();
    let common_name = common_names.next().ok_or(CsrError::MissingCommonName)?;
    if common_names.next().is_some() {
        return Err(CsrError::MissingCommonName);
    }
    let common_name = common_name.as_str().map_err(|_| CsrError::MissingCommonName)?;
    if common_name != user_id.as_str() {
        return Err(CsrError::CommonNameMismatch);
    }
    let spki_der = info.subject_pki.raw.to_vec();
    Ok(CheckedCsr {
        fingerprint: KeyFingerprint::of_spki(&spki_der),
        spki_der,
        key_type,
    })
}

fn check_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<UserKeyType, CsrError> {
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(CsrError::Malformed);
        };
        let bits = significant_bits(rsa.modulus);
        if !(2048..=4096).contains(&bits) {
            return Err(CsrError::RsaKeySize(bits));
        }
        let exponent: Vec<u8> = rsa.exponent.iter().copied().skip_while(|byte| *byte == 0).collect();
        if exponent != [0x01, 0x00, 0x01] {
            return Err(CsrError::RsaExponent);
        }
        return Ok(UserKeyType::Rsa(bits));
    }
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|parameters| parameters.as_oid().ok())
            .ok_or_else(|| CsrError::UnsupportedCurve("(no named curve)".to_owned()))?;
        let (key_type, point_length) = if curve == OID_EC_P256 {
            (UserKeyType::EcP256, 65)
        } else if curve == OID_NIST_EC_P384 {
            (UserKeyType::EcP384, 97)
        } else {
            return Err(CsrError::UnsupportedCurve(curve.to_id_string()));
        };
        let point = &spki.subject_public_key.data;
        if point.len() != point_length || point.first() != Some(&0x04) {
            return Err(CsrError::BadEcPoint);
        }
        return Ok(key_type);
    }
    let name = x509_parser::oid_registry::OidRegistry::default()
        .with_crypto()
        .get(algorithm)
        .map(|entry| entry.sn().to_owned())
        .unwrap_or_else(|| algorithm.to_id_string());
    Err(CsrError::UnsupportedKeyType(name))
}

/// Bit length of an unsigned big-endian integer.
fn significant_bits(magnitude: &[u8]) -> usize {
    let trimmed: Vec<u8> = magnitude.iter().copied().skip_while(|byte| *byte == 0).collect();
    match trimmed.first() {
        Some(first) => (trimmed.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).expect("valid user id")
    }

    fn csr_for(common_name: &str, algorithm: &'static rcgen::SignatureAlgorithm) -> String {
        let key = rcgen::KeyPair::generate_for(algorithm).expect("keygen");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params.serialize_request(&key).expect("csr").pem().expect("pem")
    }

    #[test]
    fn accepts_ec_keys_and_fingerprints_the_spki() {
        let p256 = check(&user("alice"), &csr_for("alice", &rcgen::PKCS_ECDSA_P256_SHA256)).expect("p256");
        assert_eq!(p256.key_type, UserKeyType::EcP256);
        assert_eq!(p256.fingerprint, KeyFingerprint::of_spki(&p256.spki_der));
        let p384 = check(&user("alice"), &csr_for("alice", &rcgen::PKCS_ECDSA_P384_SHA384)).expect("p384");
        assert_eq!(p384.key_type, UserKeyType::EcP384);
    }

    #[test]
    fn refuses_other_common_name_and_garbage() {
        let csr = csr_for("mallory", &rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(check(&user("alice"), &csr).unwrap_err(), CsrError::CommonNameMismatch);
        assert_eq!(check(&user("alice"), "hello").unwrap_err(), CsrError::NotPem);
        let wrong = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(
            check(&user("alice"), wrong).unwrap_err(),
            CsrError::WrongPemLabel("CERTIFICATE".to_owned())
        );
        let garbage = "-----BEGIN CERTIFICATE REQUEST-----\nAAECAwQF\n-----END CERTIFICATE REQUEST-----\n";
        assert_eq!(check(&user("alice"), garbage).unwrap_err(), CsrError::Malformed);
    }

    #[test]
    fn refuses_ed25519() {
        let csr = csr_for("alice", &rcgen::PKCS_ED25519);
        assert!(matches!(
            check(&user("alice"), &csr).unwrap_err(),
            CsrError::UnsupportedKeyType(_)
        ));
    }

    #[test]
    fn counts_modulus_bits() {
        assert_eq!(significant_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(significant_bits(&[0x01, 0xff]), 9);
        assert_eq!(significant_bits(&[]), 0);
    }
}
