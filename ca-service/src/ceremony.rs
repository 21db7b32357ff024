//! The key ceremony: generate the CA key on the token and write a self-signed CA certificate, or a
//! CSR for an external root, or import the certificate that root signed. Its only input is one config
//! file; it never reuses a key label and never overwrites a file.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use time::OffsetDateTime;

use crate::config::ceremony::{CeremonyConfig, CeremonyMode, SubjectSection};
use crate::hsm::{Hsm, HsmKey, KeyAlgorithm, LeaseSigner, Signer};
use crate::identity::{KeyFingerprint, SerialNumber};

/// What a ceremony did, for the operator.
#[derive(Debug)]
pub struct CeremonyReport {
    /// The key's label.
    pub key_label: String,
    /// SHA-256 of the key's SubjectPublicKeyInfo.
    pub key_fingerprint: KeyFingerprint,
    /// What was written.
    pub output: String,
    /// The audit key generated with the CA key (`audit_key_label`): label and SPKI SHA-256.
    pub audit_key: Option<(String, KeyFingerprint)>,
}

/// Runs the ceremony described by `config` on `hsm`.
pub async fn run(hsm: &Hsm, config: &CeremonyConfig) -> anyhow::Result<CeremonyReport> {
    let mut audit = None;
    let (key, pem) = match config.mode {
        CeremonyMode::Root | CeremonyMode::Csr => {
            let key = {
                let hsm = hsm.clone();
                let label = config.key_label.clone();
                let algorithm = config.key_algorithm;
                tokio::task::spawn_blocking(move || hsm.generate_key(&label, algorithm))
                    .await
                    .context("key generation task failed")?
                    .with_context(|| format!("cannot generate CA key {:?}", config.key_label))?
            };
            let subject = config.subject.as_ref().context("[subject] is required")?;
            if let Some(label) = &config.audit_key_label {
                let hsm = hsm.clone();
                let label = label.clone();
                let audit_key = tokio::task::spawn_blocking(move || hsm.generate_key(&label, KeyAlgorithm::EcdsaP256))
                    .await
                    .context("key generation task failed")?
                    .with_context(|| format!("cannot generate audit key {:?}", config.audit_key_label))?;
                audit = Some((
                    audit_key.label().to_owned(),
                    KeyFingerprint::of_spki(audit_key.spki_der()),
                ));
            }
            let signer = Signer::new(hsm.clone(), key.clone())?;
            let pem = if config.mode == CeremonyMode::Root {
                self_signed(&signer, subject, config.validity_days.unwrap_or(3650)).await?
            } else {
                signing_request(&signer, subject).await?
            };
            (key, pem)
        }
        CeremonyMode::Import => {
            let hsm = hsm.clone();
            let label = config.key_label.clone();
            let algorithm = config.key_algorithm;
            let key = tokio::task::spawn_blocking(move || hsm.load_key(&label, algorithm))
                .await
                .context("key lookup task failed")?
                .with_context(|| format!("cannot load CA key {:?}", config.key_label))?;
            (key.clone(), import(&key, config)?)
        }
    };
    write_new_file(&config.output, pem.as_bytes())?;
    Ok(CeremonyReport {
        key_label: key.label().to_owned(),
        key_fingerprint: KeyFingerprint::of_spki(key.spki_der()),
        output: config.output.display().to_string(),
        audit_key: audit,
    })
}

fn ca_params(subject: &SubjectSection, key: &HsmKey) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    // rcgen without a software crypto backend cannot hash: give it the subject key identifier.
    params.key_identifier_method =
        rcgen::KeyIdMethod::PreSpecified(KeyFingerprint::of_spki(key.spki_der()).key_identifier());
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(country) = &subject.country {
        params
            .distinguished_name
            .push(rcgen::DnType::CountryName, country.as_str());
    }
    if let Some(organization) = &subject.organization {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, organization.as_str());
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, subject.common_name.as_str());
    // Path length 0: this CA issues end-entity certificates only.
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Why a ceremony signature failed: the HSM's error behind rcgen's, or rcgen's own.
fn signing_error(signer: &LeaseSigner<'_>, what: &str, error: rcgen::Error) -> anyhow::Error {
    match signer.take_error() {
        Some(hsm_error) => anyhow::Error::new(hsm_error),
        None => anyhow::anyhow!("cannot build the {what}: {error}"),
    }
}

async fn self_signed(signer: &Signer, subject: &SubjectSection, days: u32) -> anyhow::Result<String> {
    let mut params = ca_params(subject, signer.key());
    // RFC 5280 lets a self-signed certificate omit the AKI; path builders and linters (pkilint's
    // issuer/subject check) expect it, equal to the SKI.
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(i64::from(days));
    params.serial_number = Some(rcgen::SerialNumber::from_slice(SerialNumber::generate().as_bytes()));
    signer
        .with_lease(move |signer| {
            let certificate = params
                .self_signed(signer)
                .map_err(|error| signing_error(signer, "CA certificate", error))?;
            // The signer verified its signature; the certificate must carry exactly that.
            let key = signer.key();
            crate::issuer::check_certificate(certificate.der(), key.spki_der(), key.algorithm(), signer.take_signed())
                .context("the new CA certificate does not carry the signature the HSM made and the CA key verified")?;
            Ok(certificate.pem())
        })
        .await?
}

async fn signing_request(signer: &Signer, subject: &SubjectSection) -> anyhow::Result<String> {
    // A CSR carries the subject only: the external root decides the CA extensions it signs.
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = ca_params(subject, signer.key()).distinguished_name;
    signer
        .with_lease(move |signer| {
            let request = params
                .serialize_request(signer)
                .map_err(|error| signing_error(signer, "CA CSR", error))?;
            request.pem().context("cannot encode the CA CSR")
        })
        .await?
}

/// Checks the externally signed certificate (key, CA flag, signature by the chain) and returns the
/// PEM to install: the certificate, then the chain.
fn import(key: &HsmKey, config: &CeremonyConfig) -> anyhow::Result<String> {
    let signed_path = config
        .signed_certificate
        .as_ref()
        .context("signed_certificate is required")?;
    let signed = read_pem_certificates(signed_path)?;
    let [certificate_der] = signed.as_slice() else {
        bail!("{} must hold exactly one certificate", signed_path.display());
    };
    let (_, certificate) = x509_parser::parse_x509_certificate(certificate_der)
        .with_context(|| format!("cannot parse {}", signed_path.display()))?;
    if certificate.public_key().raw != key.spki_der() {
        bail!(
            "the signed certificate does not carry the public key of HSM key {:?}",
            key.label()
        );
    }
    if !certificate.is_ca() {
        bail!("the signed certificate is not a CA certificate (basicConstraints CA:TRUE is missing)");
    }
    let chain = match &config.chain {
        Some(path) => read_pem_certificates(path)?,
        None => Vec::new(),
    };
    match chain.first() {
        Some(parent_der) => {
            let (_, parent) = x509_parser::parse_x509_certificate(parent_der).context("cannot parse the chain")?;
            certificate
                .verify_signature(Some(parent.public_key()))
                .context("the signed certificate does not verify with the first certificate of the chain")?;
        }
        None => bail!("mode import needs the chain that signed the certificate (chain = ...)"),
    }
    Ok(std::iter::once(certificate_der)
        .chain(&chain)
        .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
        .collect())
}

/// Reads every CERTIFICATE block of a PEM file.
pub fn read_pem_certificates(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let blocks = pem::parse_many(text).with_context(|| format!("{} is not PEM", path.display()))?;
    let certificates: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(|block| block.into_contents())
        .collect();
    if certificates.is_empty() {
        bail!("{} holds no CERTIFICATE block", path.display());
    }
    Ok(certificates)
}

/// Creates `path` with `contents`, refusing to overwrite, and syncs it to disk.
pub fn write_new_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (the ceremony never overwrites a file)",
                path.display()
            )
        })?;
    file.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", path.display()))
}
