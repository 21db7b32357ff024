//! The metadata v2 signature (nextcloud-e2ee.md §2.4): a detached CMS SignedData, RSA PKCS#1 v1.5 with
//! SHA-256, over the ASCII of `MetadataDocument::signed_content`, sent in `X-NC-E2EE-SIGNATURE`.
//!
//! Signing writes DER like OpenSSL's `CMS_sign(…, CMS_DETACHED)`: signed attributes contentType,
//! signingTime and messageDigest, the signer named by IssuerAndSerialNumber, its certificate embedded.
//! Verification follows the desktop: the signer must be a SignerInfo whose issuer and serial match one of
//! the folder users' certificates, and its signature must verify under that certificate's key.
//! Whether those certificates are trustworthy (issued by the CA) is the caller's check.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use crate::crypto::CryptoError;
use crate::crypto::rsa::{RsaPrivateKey, RsaPublicKey};
use crate::format::der::{self, DerError, tag};
use crate::format::metadata::{MetadataDocument, MetadataFormatError, MetadataUser};

/// DER contents of the object identifiers CMS needs.
mod oid {
    /// id-signedData 1.2.840.113549.1.7.2
    pub(super) const SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
    /// id-data 1.2.840.113549.1.7.1
    pub(super) const DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
    /// id-sha256 2.16.840.1.101.3.4.2.1
    pub(super) const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    /// rsaEncryption 1.2.840.113549.1.1.1
    pub(super) const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    /// sha256WithRSAEncryption 1.2.840.113549.1.1.11
    pub(super) const SHA256_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    /// id-contentType 1.2.840.113549.1.9.3
    pub(super) const CONTENT_TYPE: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03];
    /// id-messageDigest 1.2.840.113549.1.9.4
    pub(super) const MESSAGE_DIGEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];
    /// id-signingTime 1.2.840.113549.1.9.5
    pub(super) const SIGNING_TIME: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x05];
}

/// Why a metadata signature could not be made or does not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The document cannot be canonicalised.
    #[error(transparent)]
    Format(#[from] MetadataFormatError),
    /// The signature header is not base64 of a CMS SignedData this client understands.
    #[error("malformed CMS signature: {0}")]
    Malformed(&'static str),
    /// No SignerInfo names (by issuer and serial) a certificate of the folder's users.
    #[error("the signature is not by any user of this folder")]
    UnknownSigner,
    /// The signed messageDigest is not the SHA-256 of this document: it signs something else.
    #[error("the signature is for different metadata")]
    DigestMismatch,
    /// The RSA signature over the signed attributes does not verify.
    #[error("the signature does not verify")]
    BadSignature,
    /// A digest or signature algorithm other than SHA-256 with RSA PKCS#1 v1.5.
    #[error("unsupported signature algorithm")]
    UnsupportedAlgorithm,
    /// A certificate cannot be parsed, or the signing key is not the certificate's.
    #[error("unusable certificate: {0}")]
    Certificate(String),
    /// A primitive failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl From<DerError> for SignatureError {
    fn from(error: DerError) -> SignatureError {
        SignatureError::Malformed(error.0)
    }
}

/// The certificate fields CMS refers to.
struct SignerCertificate {
    der: Vec<u8>,
    /// The issuer Name, full DER.
    issuer: Vec<u8>,
    /// The serial INTEGER's content bytes.
    serial: Vec<u8>,
    public_key: RsaPublicKey,
}

impl SignerCertificate {
    fn parse(certificate_pem: &str) -> Result<SignerCertificate, SignatureError> {
        let bad = |reason: String| SignatureError::Certificate(reason);
        let block = pem::parse(certificate_pem).map_err(|error| bad(error.to_string()))?;
        let (_, certificate) =
            x509_parser::parse_x509_certificate(block.contents()).map_err(|error| bad(error.to_string()))?;
        Ok(SignerCertificate {
            issuer: certificate.issuer().as_raw().to_vec(),
            serial: certificate.raw_serial().to_vec(),
            public_key: RsaPublicKey::from_spki_der(certificate.public_key().raw)?,
            der: block.contents().to_vec(),
        })
    }
}

/// Signs `document` as `signer_key`, whose certificate is `signer_certificate_pem`; returns the header value
/// (base64 of the DER ContentInfo).
pub fn sign_metadata(
    document: &MetadataDocument,
    signer_key: &RsaPrivateKey,
    signer_certificate_pem: &str,
) -> Result<String, SignatureError> {
    let certificate = SignerCertificate::parse(signer_certificate_pem)?;
    if certificate.public_key.spki_der() != signer_key.public_key().spki_der() {
        return Err(SignatureError::Certificate("the certificate is for another key".into()));
    }
    let content = document.signed_content()?;
    let digest = Sha256::digest(content.as_bytes());

    let attribute = |oid: &[u8], value: Vec<u8>| {
        der::encode_parts(
            tag::SEQUENCE,
            &[&der::encode(tag::OID, oid), &der::encode(tag::SET, &value)],
        )
    };
    let mut attributes = [
        attribute(oid::CONTENT_TYPE, der::encode(tag::OID, oid::DATA)),
        attribute(oid::SIGNING_TIME, der::encode(tag::UTC_TIME, utc_time_now().as_bytes())),
        attribute(oid::MESSAGE_DIGEST, der::encode(tag::OCTET_STRING, &digest)),
    ];
    // DER orders SET OF elements by their encodings.
    attributes.sort();
    let attributes = attributes.concat();
    // The signature covers the attributes encoded as a SET (RFC 5652 §5.4), not as the [0] they travel in.
    let signature = signer_key.sign_pkcs1_sha256(&der::encode(tag::SET, &attributes))?;

    let sha256_algorithm = der::encode(tag::SEQUENCE, &der::encode(tag::OID, oid::SHA256));
    let rsa_algorithm = der::encode_parts(
        tag::SEQUENCE,
        &[
            &der::encode(tag::OID, oid::RSA_ENCRYPTION),
            &der::encode(tag::NULL, &[]),
        ],
    );
    let version_1 = der::encode(tag::INTEGER, &[1]);
    let signer_info = der::encode_parts(
        tag::SEQUENCE,
        &[
            &version_1,
            &der::encode_parts(
                tag::SEQUENCE,
                &[&certificate.issuer, &der::encode(tag::INTEGER, &certificate.serial)],
            ),
            &sha256_algorithm,
            &der::encode(tag::CONTEXT_0, &attributes),
            &rsa_algorithm,
            &der::encode(tag::OCTET_STRING, &signature),
        ],
    );
    let signed_data = der::encode_parts(
        tag::SEQUENCE,
        &[
            &version_1,
            &der::encode(tag::SET, &sha256_algorithm),
            // Detached: the encapsulated content names id-data and carries no eContent.
            &der::encode(tag::SEQUENCE, &der::encode(tag::OID, oid::DATA)),
            &der::encode(tag::CONTEXT_0, &certificate.der),
            &der::encode(tag::SET, &signer_info),
        ],
    );
    let content_info = der::encode_parts(
        tag::SEQUENCE,
        &[
            &der::encode(tag::OID, oid::SIGNED_DATA),
            &der::encode(tag::CONTEXT_0, &signed_data),
        ],
    );
    Ok(STANDARD.encode(content_info))
}

/// Verifies the `X-NC-E2EE-SIGNATURE` value for `document` against `users` (the top-level folder's users,
/// also for subfolders). Returns the signer's user id.
pub fn verify_metadata_signature(
    document: &MetadataDocument,
    signature_base64: &str,
    users: &[MetadataUser],
) -> Result<String, SignatureError> {
    let cms = STANDARD
        .decode(signature_base64.trim())
        .map_err(|_| SignatureError::Malformed("not base64"))?;
    let (content_info, _) = der::read_tagged(&cms, tag::SEQUENCE, "ContentInfo is not a SEQUENCE")?;
    let (content_type, rest) = der::read_tagged(content_info.content, tag::OID, "no contentType")?;
    if content_type.content != oid::SIGNED_DATA {
        return Err(SignatureError::Malformed("not SignedData"));
    }
    let (explicit, _) = der::read_tagged(rest, tag::CONTEXT_0, "no content")?;
    let (signed_data, _) = der::read_tagged(explicit.content, tag::SEQUENCE, "SignedData is not a SEQUENCE")?;
    // version, digestAlgorithms, encapContentInfo, [0] certificates?, [1] crls?, signerInfos: the last one.
    let fields = der::children(signed_data.content)?;
    let signer_infos = fields
        .last()
        .filter(|field| field.tag == tag::SET)
        .ok_or(SignatureError::Malformed("no signerInfos"))?;

    let content = document.signed_content()?;
    let digest = Sha256::digest(content.as_bytes());
    let certificates: Vec<(&MetadataUser, SignerCertificate)> = users
        .iter()
        .filter_map(|user| {
            SignerCertificate::parse(&user.certificate)
                .ok()
                .map(|certificate| (user, certificate))
        })
        .collect();

    for signer_info in der::children(signer_infos.content)? {
        let parts = der::children(signer_info.content)?;
        let [
            _version,
            signer_id,
            digest_algorithm,
            signed_attributes,
            signature_algorithm,
            signature,
            ..,
        ] = parts.as_slice()
        else {
            return Err(SignatureError::Malformed("SignerInfo without signed attributes"));
        };
        if signer_id.tag != tag::SEQUENCE {
            continue; // A subjectKeyIdentifier signer: no Nextcloud client writes one.
        }
        let (issuer, rest) = der::read_tagged(signer_id.content, tag::SEQUENCE, "bad issuer")?;
        let (serial, _) = der::read_tagged(rest, tag::INTEGER, "bad serial")?;
        let Some((user, certificate)) = certificates.iter().find(|(_, certificate)| {
            der::read(&certificate.issuer).is_ok_and(|(name, _)| name.content == issuer.content)
                && certificate.serial == serial.content
        }) else {
            continue;
        };
        check_algorithms(digest_algorithm, signature_algorithm)?;
        if signed_attributes.tag != tag::CONTEXT_0 || signature.tag != tag::OCTET_STRING {
            return Err(SignatureError::Malformed("bad signed attributes or signature"));
        }
        check_attributes(signed_attributes.content, &digest)?;
        certificate
            .public_key
            .verify_pkcs1_sha256(&der::encode(tag::SET, signed_attributes.content), signature.content)
            .map_err(|_| SignatureError::BadSignature)?;
        return Ok(user.user_id.clone());
    }
    Err(SignatureError::UnknownSigner)
}

fn check_algorithms(
    digest_algorithm: &der::Element<'_>,
    signature_algorithm: &der::Element<'_>,
) -> Result<(), SignatureError> {
    let algorithm_oid = |element: &der::Element<'_>| -> Result<Vec<u8>, SignatureError> {
        let (identifier, _) = der::read_tagged(element.content, tag::OID, "bad AlgorithmIdentifier")?;
        Ok(identifier.content.to_vec())
    };
    let signature_oid = algorithm_oid(signature_algorithm)?;
    if algorithm_oid(digest_algorithm)? != oid::SHA256
        || (signature_oid != oid::RSA_ENCRYPTION && signature_oid != oid::SHA256_WITH_RSA)
    {
        return Err(SignatureError::UnsupportedAlgorithm);
    }
    Ok(())
}

/// Requires contentType = id-data and messageDigest = `digest` among the signed attributes.
fn check_attributes(attributes: &[u8], digest: &[u8]) -> Result<(), SignatureError> {
    let mut content_type_ok = false;
    let mut digest_ok = false;
    for attribute in der::children(attributes)? {
        let (attribute_type, rest) = der::read_tagged(attribute.content, tag::OID, "bad attribute")?;
        let (values, _) = der::read_tagged(rest, tag::SET, "bad attribute values")?;
        let values = der::children(values.content)?;
        let [value] = values.as_slice() else {
            return Err(SignatureError::Malformed("attribute without exactly one value"));
        };
        if attribute_type.content == oid::CONTENT_TYPE {
            content_type_ok = value.tag == tag::OID && value.content == oid::DATA;
        } else if attribute_type.content == oid::MESSAGE_DIGEST {
            if value.tag != tag::OCTET_STRING || value.content != digest {
                return Err(SignatureError::DigestMismatch);
            }
            digest_ok = true;
        }
    }
    if !content_type_ok || !digest_ok {
        return Err(SignatureError::Malformed("missing contentType or messageDigest"));
    }
    Ok(())
}

/// The current time as a UTCTime string, `YYMMDDHHMMSSZ`.
fn utc_time_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    utc_time(seconds)
}

fn utc_time(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let second_of_day = unix_seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}Z",
        year % 100,
        month,
        day,
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        document: MetadataDocument,
        alice_key: RsaPrivateKey,
        alice_certificate: String,
        bob_key: RsaPrivateKey,
        bob_certificate: String,
    }

    fn fixture() -> Fixture {
        let user = |json: &str| {
            let value: serde_json::Value = serde_json::from_str(json).expect("json");
            let key = RsaPrivateKey::from_pkcs8_pem(value["privateKeyPem"].as_str().expect("key")).expect("pkcs8");
            (key, value["certificatePem"].as_str().expect("certificate").to_owned())
        };
        let (alice_key, alice_certificate) = user(include_str!("../../testdata/nextcloud/alice.json"));
        let (bob_key, bob_certificate) = user(include_str!("../../testdata/nextcloud/bob.json"));
        Fixture {
            document: MetadataDocument::parse(include_str!("../../testdata/metadata-signature/metadata.json"))
                .expect("metadata"),
            alice_key,
            alice_certificate,
            bob_key,
            bob_certificate,
        }
    }

    #[test]
    fn signed_content_matches_the_independent_canonicalisation() {
        let fixture = fixture();
        let expected = include_str!("../../testdata/metadata-signature/content.txt");
        assert_eq!(fixture.document.signed_content().expect("content"), expected);
    }

    #[test]
    fn openssl_signatures_verify_in_der_and_ber() {
        let fixture = fixture();
        for signature in [
            include_str!("../../testdata/metadata-signature/openssl-der.sig.b64"),
            include_str!("../../testdata/metadata-signature/openssl-ber-indefinite.sig.b64"),
        ] {
            let signer = verify_metadata_signature(&fixture.document, signature, &fixture.document.users);
            assert_eq!(signer.expect("verify"), "alice");
        }
    }

    #[test]
    fn our_signatures_verify_and_bind_the_document() {
        let fixture = fixture();
        let users = &fixture.document.users;
        for (key, certificate, name) in [
            (&fixture.alice_key, &fixture.alice_certificate, "alice"),
            (&fixture.bob_key, &fixture.bob_certificate, "bob"),
        ] {
            let signature = sign_metadata(&fixture.document, key, certificate).expect("sign");
            assert_eq!(
                verify_metadata_signature(&fixture.document, &signature, users).expect("verify"),
                name
            );
        }

        let signature = sign_metadata(&fixture.document, &fixture.alice_key, &fixture.alice_certificate).expect("sign");
        // filedrop is outside the signature.
        let mut without_filedrop = fixture.document.clone();
        without_filedrop.filedrop = None;
        assert!(verify_metadata_signature(&without_filedrop, &signature, users).is_ok());
        // Everything else is inside it.
        let mut altered = fixture.document.clone();
        altered.metadata.nonce = "AAAAAAAAAAAAAAAAAAAAAA==".into();
        assert!(matches!(
            verify_metadata_signature(&altered, &signature, users),
            Err(SignatureError::DigestMismatch)
        ));
        let mut removed_user = fixture.document.clone();
        removed_user.users.pop();
        assert!(verify_metadata_signature(&removed_user, &signature, users).is_err());
        // Only the folder's users count as signers.
        assert!(matches!(
            verify_metadata_signature(&fixture.document, &signature, &users[1..]),
            Err(SignatureError::UnknownSigner)
        ));
        // A flipped bit in the RSA signature (the last bytes of the CMS) fails.
        let mut cms = STANDARD.decode(&signature).expect("b64");
        let last = cms.len() - 1;
        cms[last] ^= 1;
        assert!(matches!(
            verify_metadata_signature(&fixture.document, &STANDARD.encode(&cms), users),
            Err(SignatureError::BadSignature)
        ));
        // Signing with a key that is not the certificate's is refused.
        assert!(matches!(
            sign_metadata(&fixture.document, &fixture.bob_key, &fixture.alice_certificate),
            Err(SignatureError::Certificate(_))
        ));
    }

    #[test]
    fn garbage_signatures_are_errors() {
        let fixture = fixture();
        for garbage in [
            "",
            "not base64!",
            "MAA=",
            "MIIBAA==",
            &STANDARD.encode([0x30, 0x80, 0x06, 0x00]),
        ] {
            assert!(verify_metadata_signature(&fixture.document, garbage, &fixture.document.users).is_err());
        }
    }

    /// Expected values from Python's `datetime.fromtimestamp(t, UTC).strftime("%y%m%d%H%M%SZ")`.
    #[test]
    fn utc_time_formats_known_instants() {
        assert_eq!(utc_time(0), "700101000000Z");
        assert_eq!(utc_time(951_782_400), "000229000000Z");
        assert_eq!(utc_time(1_795_000_000), "261118110640Z");
    }
}
