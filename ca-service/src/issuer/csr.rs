//! Parsing and checking a PKCS#10 request: PEM, DER, key policy, self-signature, subject.
//!
//! Checks run in this order so that each refusal names the real problem: the encoding, then the key
//! (a weak key is reported as weak, not as "bad signature"), then the self-signature, then the subject.
//! Extensions the CSR requests are ignored: the certificate is built from the CA's profile alone.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, Oid,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::identity::{KeyFingerprint, UserId};

/// Largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_BYTES: usize = 64 * 1024;

/// Why a CSR was refused; each message says what was wrong (sent to the caller as is, and written
/// to the audit log as the refusal's reason). Every message is fixed text: a name in it (a PEM label,
/// a key algorithm, a curve) comes from a table here, never from the request, so that a message
/// stays short whatever was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// No PEM block could be read.
    #[error("csr_pem is not PEM: expected a -----BEGIN CERTIFICATE REQUEST----- block")]
    NotPem,
    /// Text other than whitespace before or after the PEM block, or PEM headers inside it.
    #[error("csr_pem must hold the PEM block alone: no text before or after it, no headers in it")]
    TextAroundPem,
    /// More than one PEM block.
    #[error("csr_pem holds more than one PEM block; send the CERTIFICATE REQUEST alone")]
    SeveralPemBlocks,
    /// A PEM block of another type was sent: its label if a known one.
    #[error("csr_pem holds a {} PEM block; expected CERTIFICATE REQUEST", .0.unwrap_or("non-CSR"))]
    WrongPemLabel(Option<&'static str>),
    /// The DER inside is not a PKCS#10 request.
    #[error("csr_pem is not a well-formed PKCS#10 certificate request")]
    Malformed,
    /// The key is of a type the CA does not certify: its name if a known one.
    #[error(
        "unsupported key type {}; allowed: RSA 2048-4096 bits with e = 65537, EC P-256, EC P-384",
        .0.unwrap_or("(unknown algorithm)")
    )]
    UnsupportedKeyType(Option<&'static str>),
    /// An EC key on a curve the CA does not certify: its name if a known named curve (explicit
    /// parameters, no parameters and unknown curves are `None`).
    #[error(
        "unsupported EC curve {}; allowed: the named curves P-256, P-384",
        .0.unwrap_or("(explicit parameters or an unknown curve)")
    )]
    UnsupportedCurve(Option<&'static str>),
    /// The EC point is not an uncompressed point of the curve's size.
    #[error("the EC public key must be an uncompressed point of the curve's size")]
    BadEcPoint,
    /// RSA modulus outside 2048-4096 bits.
    #[error("RSA key is {0} bits; allowed: 2048 to 4096 bits")]
    RsaKeySize(usize),
    /// RSA exponent other than 65537.
    #[error("RSA public exponent must be 65537")]
    RsaExponent,
    /// The key is not in its one DER encoding (a BER length, a non-minimal INTEGER, other or missing
    /// algorithm parameters): it would be pinned under another fingerprint than the one certified.
    #[error(
        "the CSR's public key is not in canonical DER (RFC 5280, RFC 3279, RFC 5480); encode it as a standard library does"
    )]
    NonCanonicalKey,
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
    let block = pem_block(csr_pem)?;
    if !matches!(block.tag(), "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST") {
        let known = KNOWN_PEM_LABELS.iter().copied().find(|label| *label == block.tag());
        return Err(CsrError::WrongPemLabel(known));
    }
    let (rest, csr) = X509CertificationRequest::from_der(block.contents()).map_err(|_| CsrError::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed);
    }
    let info = &csr.certification_request_info;
    let (key_type, spki_der) = check_key(&info.subject_pki)?;
    // One key, one encoding: the pin is the SHA-256 of these bytes, and the certificate carries
    // them (rcgen re-encodes the key; a BER or re-parameterised SPKI would be pinned under another
    // fingerprint than the one certified, and a key could be pinned to two users).
    if spki_der != info.subject_pki.raw {
        return Err(CsrError::NonCanonicalKey);
    }
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
    Ok(CheckedCsr {
        fingerprint: KeyFingerprint::of_spki(&spki_der),
        spki_der,
        key_type,
    })
}

/// The one PEM block `csr_pem` holds, with nothing around it but whitespace (RFC 7468's strict
/// form, without explanatory text): anything else could carry what a reader of the request sees
/// and the CA does not check.
fn pem_block(csr_pem: &str) -> Result<pem::Pem, CsrError> {
    let text = csr_pem.trim_matches(|character: char| character.is_ascii_whitespace());
    let mut blocks = pem::parse_many(text).map_err(|_| CsrError::NotPem)?;
    if blocks.len() > 1 {
        return Err(CsrError::SeveralPemBlocks);
    }
    let block = blocks.pop().ok_or(CsrError::NotPem)?;
    // The text is the block's BEGIN line, base64 and whitespace, and its END line: nothing before,
    // after or between (a header, a second END line) that the lax parser skipped.
    let body = text
        .strip_prefix("-----BEGIN ")
        .and_then(|rest| rest.strip_prefix(block.tag()))
        .and_then(|rest| rest.strip_prefix("-----"))
        .and_then(|rest| rest.strip_suffix("-----"))
        .and_then(|rest| rest.strip_suffix(block.tag()))
        .and_then(|rest| rest.strip_suffix("-----END "))
        .ok_or(CsrError::TextAroundPem)?;
    let base64_or_whitespace =
        |byte: &u8| byte.is_ascii_alphanumeric() || b"+/=".contains(byte) || byte.is_ascii_whitespace();
    if !body.as_bytes().iter().all(base64_or_whitespace) {
        return Err(CsrError::TextAroundPem);
    }
    Ok(block)
}

/// Checks the key against the policy; returns its type and its SubjectPublicKeyInfo in the one DER
/// encoding RFC 5280 and RFC 3279 / RFC 5480 give it, rebuilt from its parts.
fn check_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(UserKeyType, Vec<u8>), CsrError> {
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
        let public_key = der(
            SEQUENCE,
            &[der(INTEGER, &unsigned_integer(rsa.modulus)), der(INTEGER, &exponent)].concat(),
        );
        let canonical = der(SEQUENCE, &[&RSA_ENCRYPTION[..], &bit_string(&public_key)].concat());
        return Ok((UserKeyType::Rsa(bits), canonical));
    }
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        // A named curve is an OBJECT IDENTIFIER; `as_oid` alone would read any value's bytes as one.
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .filter(|parameters| parameters.tag() == Tag::Oid)
            .and_then(|parameters| parameters.as_oid().ok())
            .ok_or(CsrError::UnsupportedCurve(None))?;
        let (key_type, point_length) = if curve == OID_EC_P256 {
            (UserKeyType::EcP256, 65)
        } else if curve == OID_NIST_EC_P384 {
            (UserKeyType::EcP384, 97)
        } else {
            return Err(CsrError::UnsupportedCurve(known_name(KNOWN_CURVES, &curve)));
        };
        let point = &spki.subject_public_key.data;
        if point.len() != point_length || point.first() != Some(&0x04) {
            return Err(CsrError::BadEcPoint);
        }
        let algorithm = der(
            SEQUENCE,
            &[
                der(OBJECT_IDENTIFIER, &ID_EC_PUBLIC_KEY),
                der(OBJECT_IDENTIFIER, curve.as_bytes()),
            ]
            .concat(),
        );
        return Ok((key_type, der(SEQUENCE, &[algorithm, bit_string(point)].concat())));
    }
    Err(CsrError::UnsupportedKeyType(known_name(
        KNOWN_KEY_ALGORITHMS,
        algorithm,
    )))
}

/// PEM labels a refusal names (RFC 7468 and OpenSSL's).
const KNOWN_PEM_LABELS: &[&str] = &[
    "CERTIFICATE",
    "TRUSTED CERTIFICATE",
    "X509 CRL",
    "PUBLIC KEY",
    "RSA PUBLIC KEY",
    "PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "PKCS7",
    "CMS",
];

/// Key algorithms a refusal names, by OID arcs.
const KNOWN_KEY_ALGORITHMS: &[(&[u64], &str)] = &[
    (&[1, 3, 101, 110], "X25519"),
    (&[1, 3, 101, 111], "X448"),
    (&[1, 3, 101, 112], "Ed25519"),
    (&[1, 3, 101, 113], "Ed448"),
    (&[1, 2, 840, 10040, 4, 1], "DSA"),
    (&[1, 2, 840, 113549, 1, 1, 7], "RSAES-OAEP"),
    (&[1, 2, 840, 113549, 1, 1, 10], "RSASSA-PSS"),
    (&[1, 2, 840, 113549, 1, 3, 1], "PKCS #3 DH"),
    (&[1, 2, 840, 10046, 2, 1], "X9.42 DH"),
    (&[1, 3, 132, 1, 12], "ECDH-only EC"),
    (&[1, 3, 132, 1, 13], "ECMQV-only EC"),
];

/// Named curves a refusal names, by OID arcs.
const KNOWN_CURVES: &[(&[u64], &str)] = &[
    (&[1, 2, 840, 10045, 3, 1, 1], "P-192"),
    (&[1, 3, 132, 0, 33], "P-224"),
    (&[1, 3, 132, 0, 35], "P-521"),
    (&[1, 3, 132, 0, 10], "secp256k1"),
    (&[1, 3, 36, 3, 3, 2, 8, 1, 1, 7], "brainpoolP256r1"),
    (&[1, 3, 36, 3, 3, 2, 8, 1, 1, 11], "brainpoolP384r1"),
    (&[1, 3, 36, 3, 3, 2, 8, 1, 1, 13], "brainpoolP512r1"),
    (&[1, 2, 156, 10197, 1, 301], "SM2"),
];

/// The name `table` gives `oid`, if any: a refusal names only what it knows.
fn known_name(table: &[(&[u64], &'static str)], oid: &Oid<'_>) -> Option<&'static str> {
    table
        .iter()
        .find(|(arcs, _)| Oid::from(arcs).is_ok_and(|known| known == *oid))
        .map(|(_, name)| *name)
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OBJECT_IDENTIFIER: u8 = 0x06;
/// The DER AlgorithmIdentifier of rsaEncryption, with the NULL parameters RFC 3279 requires.
const RSA_ENCRYPTION: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// The content of the OBJECT IDENTIFIER id-ecPublicKey (1.2.840.10045.2.1).
const ID_EC_PUBLIC_KEY: [u8; 7] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// DER: `tag`, the length of `content` in the shortest form, `content`.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let length = content.len().to_be_bytes();
    let significant = &length[length.iter().take_while(|byte| **byte == 0).count()..];
    let mut out = Vec::with_capacity(content.len() + 2 + significant.len());
    out.push(tag);
    match significant {
        [short] if *short < 0x80 => out.push(*short),
        [] => out.push(0),
        // At most 8 bytes of length: the count fits the low 7 bits.
        long => {
            out.push(0x80 | long.len() as u8);
            out.extend_from_slice(long);
        }
    }
    out.extend_from_slice(content);
    out
}

/// A BIT STRING with no unused bits holding `bytes`.
fn bit_string(bytes: &[u8]) -> Vec<u8> {
    der(BIT_STRING, &[&[0][..], bytes].concat())
}

/// The content of the minimal DER INTEGER of the unsigned big-endian `magnitude`.
fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let trimmed = &magnitude[magnitude.iter().take_while(|byte| **byte == 0).count()..];
    match trimmed.first() {
        Some(first) if *first < 0x80 => trimmed.to_vec(),
        _ => [&[0][..], trimmed].concat(),
    }
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
            CsrError::WrongPemLabel(Some("CERTIFICATE"))
        );
        let garbage = "-----BEGIN CERTIFICATE REQUEST-----\nAAECAwQF\n-----END CERTIFICATE REQUEST-----\n";
        assert_eq!(check(&user("alice"), garbage).unwrap_err(), CsrError::Malformed);
    }

    #[test]
    fn refuses_text_around_the_pem_block_and_a_second_block() {
        let csr = csr_for("alice", &rcgen::PKCS_ECDSA_P256_SHA256);
        let alice = user("alice");
        // Whitespace and CRLF around it are fine.
        check(&alice, &format!("\r\n  {}\r\n\n", csr.replace('\n', "\r\n"))).expect("whitespace around");
        let refused =
            |text: String, expected: CsrError| assert_eq!(check(&alice, &text).unwrap_err(), expected, "{text}");
        refused(format!("Certificate Request:\n{csr}"), CsrError::TextAroundPem);
        refused(format!("{csr}trailing text\n"), CsrError::TextAroundPem);
        refused(format!("{csr}x"), CsrError::TextAroundPem);
        let headers = csr.replacen("-----\n", "-----\nProc-Type: 4,ENCRYPTED\n\n", 1);
        refused(headers, CsrError::TextAroundPem);
        // A stray END line after the block, which a lax parser skips.
        refused(
            format!("{csr}junk-----END CERTIFICATE REQUEST-----\n"),
            CsrError::TextAroundPem,
        );
        refused(format!("{csr}{csr}"), CsrError::SeveralPemBlocks);
        let other = csr_for("alice", &rcgen::PKCS_ECDSA_P384_SHA384);
        refused(format!("{csr}\n{other}"), CsrError::SeveralPemBlocks);
        let certificate = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        refused(format!("{csr}{certificate}"), CsrError::SeveralPemBlocks);
    }

    #[test]
    fn refuses_ed25519() {
        let csr = csr_for("alice", &rcgen::PKCS_ED25519);
        assert!(matches!(
            check(&user("alice"), &csr).unwrap_err(),
            CsrError::UnsupportedKeyType(_)
        ));
    }

    /// A PEM CSR for CN=alice whose key has the algorithm identifier `algorithm` (the DER inside the
    /// SEQUENCE) and the key bits `key`; the signature is junk (the key is checked first).
    fn csr_with_key_algorithm(algorithm: &[u8], key: &[u8]) -> String {
        let common_name = [der(0x06, &[0x55, 0x04, 0x03]), der(0x0c, b"alice")].concat();
        let subject = der(0x30, &der(0x31, &der(0x30, &common_name)));
        let spki = der(
            0x30,
            &[der(0x30, algorithm), der(0x03, &[&[0][..], key].concat())].concat(),
        );
        let info = der(0x30, &[der(0x02, &[0]), subject, spki, vec![0xa0, 0x00]].concat());
        let ecdsa_with_sha256 = der(0x30, &der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]));
        let csr = der(0x30, &[info, ecdsa_with_sha256, der(0x03, &[0, 1, 2, 3])].concat());
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr))
    }

    /// The DER of an OBJECT IDENTIFIER 1.3.6.1.4.1 followed by `arcs` arcs of 1.
    fn long_oid(arcs: usize) -> Vec<u8> {
        der(0x06, &[&[0x2b, 0x06, 0x01, 0x04, 0x01][..], &vec![0x01; arcs]].concat())
    }

    /// Asserts that `csr` is refused with `expected` and a message of at most 200 bytes.
    fn assert_short_refusal(csr: &str, expected: CsrError) {
        let error = check(&user("alice"), csr).unwrap_err();
        assert_eq!(error, expected);
        let message = error.to_string();
        assert!(message.len() <= 200, "{} bytes: {message:.300}", message.len());
    }

    #[test]
    fn refusal_messages_are_short_whatever_the_request_holds() {
        // OpenSSL's explicit P-256 parameters (tests/testdata): the message used to hex-dump them.
        let explicit = include_str!("../../../tests/testdata/ec-p256-explicit-params.csr");
        assert_short_refusal(explicit, CsrError::UnsupportedCurve(None));
        let point = [&[0x04][..], &[0x11; 64]].concat();
        // Explicit parameters of 40 KB (a SEQUENCE where the curve's OID belongs).
        let parameters = der(0x30, &der(0x04, &vec![0xff; 40_000]));
        let algorithm = [der(0x06, &ID_EC_PUBLIC_KEY), parameters].concat();
        assert_short_refusal(
            &csr_with_key_algorithm(&algorithm, &point),
            CsrError::UnsupportedCurve(None),
        );
        // A 40,000-arc curve OID, and a 40,000-arc key algorithm.
        let algorithm = [der(0x06, &ID_EC_PUBLIC_KEY), long_oid(40_000)].concat();
        assert_short_refusal(
            &csr_with_key_algorithm(&algorithm, &point),
            CsrError::UnsupportedCurve(None),
        );
        assert_short_refusal(
            &csr_with_key_algorithm(&long_oid(40_000), &point),
            CsrError::UnsupportedKeyType(None),
        );
        // Known names are named.
        let p521 = [der(0x06, &ID_EC_PUBLIC_KEY), der(0x06, &[0x2b, 0x81, 0x04, 0x00, 0x23])].concat();
        assert_short_refusal(
            &csr_with_key_algorithm(&p521, &point),
            CsrError::UnsupportedCurve(Some("P-521")),
        );
        assert_short_refusal(
            &csr_with_key_algorithm(&der(0x06, &[0x2b, 0x65, 0x70]), &[0x11; 32]),
            CsrError::UnsupportedKeyType(Some("Ed25519")),
        );
        // A 40 KB PEM label.
        let label = "X".repeat(40_000);
        let wrong = format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n");
        assert_short_refusal(&wrong, CsrError::WrongPemLabel(None));
    }

    #[test]
    fn refuses_keys_in_a_non_canonical_encoding() {
        let point = [&[0x04][..], &[0x11; 64]].concat();
        let p256 = der(OBJECT_IDENTIFIER, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]);
        let ec = [der(OBJECT_IDENTIFIER, &ID_EC_PUBLIC_KEY), p256].concat();
        let rsa_public_key = der(
            SEQUENCE,
            &[
                der(INTEGER, &[&[0][..], &[0xc3; 256]].concat()),
                der(INTEGER, &[1, 0, 1]),
            ]
            .concat(),
        );
        // The AlgorithmIdentifier's content: the rsaEncryption OID and NULL.
        let rsa = &RSA_ENCRYPTION[2..];
        // In canonical DER, the keys pass every key check and fail only at the junk self-signature.
        assert_short_refusal(&csr_with_key_algorithm(&ec, &point), CsrError::BadSignature);
        assert_short_refusal(&csr_with_key_algorithm(rsa, &rsa_public_key), CsrError::BadSignature);
        // A NULL after the named curve; rsaEncryption without its NULL.
        let ec_with_null = [&ec[..], &[0x05, 0x00]].concat();
        assert_short_refusal(
            &csr_with_key_algorithm(&ec_with_null, &point),
            CsrError::NonCanonicalKey,
        );
        let rsa_without_null = &rsa[..rsa.len() - 2];
        assert_short_refusal(
            &csr_with_key_algorithm(rsa_without_null, &rsa_public_key),
            CsrError::NonCanonicalKey,
        );
    }

    #[test]
    fn counts_modulus_bits() {
        assert_eq!(significant_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(significant_bits(&[0x01, 0xff]), 9);
        assert_eq!(significant_bits(&[]), 0);
    }
}
