//! Device identity: the RSA key pair a device holds, its CSR, enrollment, and the checks the client
//! runs on every certificate the CA returns.

use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use crate::crypto::rsa::RsaPublicKey;
use crate::transport::{CaError, CaInfo, CaTransport};

/// RSA sizes a device key may have (Nextcloud clients use 2048).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaSize {
    /// 2048 bits (the default).
    Bits2048,
    /// 3072 bits.
    Bits3072,
    /// 4096 bits.
    Bits4096,
}

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Key generation or encoding failed.
    #[error("key error: {0}")]
    Key(String),
    /// The CA refused or could not be reached.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The returned certificate does not verify with the CA's key, or does not match the request.
    #[error("the CA returned an unacceptable certificate: {0}")]
    BadCertificate(String),
}

/// A device's private key. Its PEM is only ever handed out wrapped in `Zeroizing`.
pub struct DeviceKey {
    key_pair: rcgen::KeyPair,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("DeviceKey(<private>)")
    }
}

impl DeviceKey {
    /// Generates a fresh RSA key pair.
    pub fn generate(size: RsaSize) -> Result<DeviceKey, IdentityError> {
        let size = match size {
            RsaSize::Bits2048 => rcgen::RsaKeySize::_2048,
            RsaSize::Bits3072 => rcgen::RsaKeySize::_3072,
            RsaSize::Bits4096 => rcgen::RsaKeySize::_4096,
        };
        let key_pair = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size)
            .map_err(|error| IdentityError::Key(error.to_string()))?;
        Ok(DeviceKey { key_pair })
    }

    /// Loads a PKCS#8 PEM private key.
    pub fn from_pem(pem: &str) -> Result<DeviceKey, IdentityError> {
        let key_pair = rcgen::KeyPair::from_pem(pem).map_err(|error| IdentityError::Key(error.to_string()))?;
        Ok(DeviceKey { key_pair })
    }

    /// The PKCS#8 PEM private key.
    pub fn to_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key_pair.serialize_pem())
    }

    /// DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.key_pair)
    }

    /// SHA-256 of the SubjectPublicKeyInfo, hex: the fingerprint the CA pins.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.spki_der()))
    }

    /// A PKCS#10 request with CN = `user_id`, PEM.
    pub fn csr(&self, user_id: &str) -> Result<String, IdentityError> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, user_id);
        let request = params
            .serialize_request(&self.key_pair)
            .map_err(|error| IdentityError::Key(error.to_string()))?;
        request.pem().map_err(|error| IdentityError::Key(error.to_string()))
    }
}

/// A certificate the client accepted.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// True when the CA treated it as a renewal.
    pub renewal: bool,
    /// The pinned key fingerprint.
    pub key_fingerprint: String,
    /// The audit-log index of the issuance.
    pub log_index: Option<u64>,
    /// The CA it was checked against.
    pub ca: CaInfo,
}

/// Enrolls `key` for `user_id`: sends the CSR, then checks the certificate before accepting it.
pub async fn enroll(
    transport: &mut impl CaTransport,
    user_id: &str,
    key: &DeviceKey,
) -> Result<Enrollment, IdentityError> {
    let ca = transport.ca_info().await?;
    let issued = transport.issue_certificate(user_id, &key.csr(user_id)?).await?;
    check_certificate(&issued.certificate_pem, &ca, user_id, Some(&key.spki_der()))?;
    Ok(Enrollment {
        certificate_pem: issued.certificate_pem,
        renewal: issued.renewal,
        key_fingerprint: issued.key_fingerprint,
        log_index: issued.log_index,
        ca,
    })
}

/// Checks that `certificate_pem` is signed by the CA, names `user_id`, is a leaf, and (when given)
/// certifies `expected_spki`.
pub fn check_certificate(
    certificate_pem: &str,
    ca: &CaInfo,
    user_id: &str,
    expected_spki: Option<&[u8]>,
) -> Result<(), IdentityError> {
    let certificate_block = pem::parse(certificate_pem).map_err(|_| bad("not PEM"))?;
    let certificate = signed_certificate_for(certificate_block.contents(), &ca.public_key_pem, user_id)?;
    if certificate.is_ca() {
        return Err(bad("a CA certificate was returned for a user"));
    }
    if let Some(expected) = expected_spki
        && certificate.public_key().raw != expected
    {
        return Err(bad("the certificate is for another key"));
    }
    if !certificate.validity().is_valid() {
        return Err(bad("the certificate is not valid now"));
    }
    Ok(())
}

/// Checks a certificate issued by a Nextcloud server (a sharee's, fetched with `GET public-key`) the way
/// Nextcloud's clients do (nextcloud-e2ee.md §1.2): its signature verifies under the server's SPKI key
/// (`GET server-key`; RSA PKCS#1 v1.5 with SHA-1 or SHA-256), its CN is `user_id`, and it is valid now.
/// Unlike `check_certificate`, `CA:TRUE` is tolerated: the server copies it from PHP's openssl.cnf.
/// Returns the certified key, for wrapping metadata keys to that user.
pub fn check_nextcloud_certificate(
    certificate_pem: &str,
    server_public_key_pem: &str,
    user_id: &str,
) -> Result<RsaPublicKey, IdentityError> {
    let certificate_block = pem::parse(certificate_pem).map_err(|_| bad("not PEM"))?;
    let certificate = signed_certificate_for(certificate_block.contents(), server_public_key_pem, user_id)?;
    if !certificate.validity().is_valid() {
        return Err(bad("the certificate is not valid now"));
    }
    RsaPublicKey::from_spki_der(certificate.public_key().raw).map_err(|error| bad(&error.to_string()))
}

fn bad(reason: &str) -> IdentityError {
    IdentityError::BadCertificate(reason.to_owned())
}

/// Parses `certificate_der` and checks that it verifies under `signer_key_pem` (SPKI) and that its CN is `user_id`.
fn signed_certificate_for<'a>(
    certificate_der: &'a [u8],
    signer_key_pem: &str,
    user_id: &str,
) -> Result<x509_parser::certificate::X509Certificate<'a>, IdentityError> {
    let signer_key_block = pem::parse(signer_key_pem).map_err(|_| bad("the CA public key is not PEM"))?;
    let (_, certificate) =
        x509_parser::parse_x509_certificate(certificate_der).map_err(|_| bad("not a certificate"))?;
    let (_, signer_key) = x509_parser::x509::SubjectPublicKeyInfo::from_der(signer_key_block.contents())
        .map_err(|_| bad("the CA public key is not a SubjectPublicKeyInfo"))?;
    certificate
        .verify_signature(Some(&signer_key))
        .map_err(|_| bad("signature does not verify with the CA key"))?;
    let common_name = certificate
        .subject()
        .iter_common_name()
        .next()
        .and_then(|name| name.as_str().ok())
        .ok_or_else(|| bad("no common name"))?;
    if common_name != user_id {
        return Err(bad("the common name is not the user id"));
    }
    Ok(certificate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nextcloud_vectors_alice_and_bob_certificates_verify_under_the_server_key() {
        let field = |json: &str, name: &str| {
            let value: serde_json::Value = serde_json::from_str(json).expect("json");
            value[name].as_str().expect(name).to_owned()
        };
        let server_key = field(include_str!("../testdata/nextcloud/server.json"), "publicKeyPem");
        let alice = include_str!("../testdata/nextcloud/alice.json");
        let bob = include_str!("../testdata/nextcloud/bob.json");
        for (json, user_id) in [(alice, "alice"), (bob, "bob")] {
            let certificate = field(json, "certificatePem");
            let public_key = check_nextcloud_certificate(&certificate, &server_key, user_id).expect("verifies");
            let private_key =
                crate::crypto::rsa::RsaPrivateKey::from_pkcs8_pem(&field(json, "privateKeyPem")).expect("key");
            assert_eq!(public_key.spki_der(), private_key.public_key().spki_der());
            assert!(check_nextcloud_certificate(&certificate, &server_key, "mallory").is_err());
        }
        // Under another key (alice's own) the signature fails.
        let alice_certificate = field(alice, "certificatePem");
        let other_key = DeviceKey::generate(RsaSize::Bits2048).expect("keygen");
        let other_key_pem = pem::encode(&pem::Pem::new("PUBLIC KEY", other_key.spki_der()));
        assert!(matches!(
            check_nextcloud_certificate(&alice_certificate, &other_key_pem, "alice"),
            Err(IdentityError::BadCertificate(_))
        ));
    }

    #[test]
    fn csr_names_the_user_and_carries_the_key() {
        let key = DeviceKey::generate(RsaSize::Bits2048).expect("keygen");
        let csr = key.csr("alice").expect("csr");
        let block = pem::parse(&csr).expect("pem");
        let (_, request) =
            x509_parser::certification_request::X509CertificationRequest::from_der(block.contents()).expect("parse");
        request.verify_signature().expect("self-signature");
        let info = &request.certification_request_info;
        assert_eq!(
            info.subject.iter_common_name().next().and_then(|cn| cn.as_str().ok()),
            Some("alice")
        );
        assert_eq!(info.subject_pki.raw, key.spki_der().as_slice());
        let reloaded = DeviceKey::from_pem(&key.to_pem()).expect("reload");
        assert_eq!(reloaded.fingerprint(), key.fingerprint());
    }
}
