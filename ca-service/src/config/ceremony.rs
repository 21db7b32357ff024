//! `ca-service ceremony --config FILE`: `CeremonyConfig`, its mode and the CA certificate's subject.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use super::resolve;
use super::sections::HsmSection;
use crate::hsm::KeyAlgorithm;

/// What a ceremony produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CeremonyMode {
    /// Generate the key and a self-signed root CA certificate.
    Root,
    /// Generate the key and a CSR for an external root to sign.
    Csr,
    /// Check a certificate signed by the external root against the key, and install it.
    Import,
}

/// The subject of the CA certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectSection {
    /// Common name, e.g. "Example Corp E2EE Identity CA".
    pub common_name: String,
    /// Organization, optional.
    pub organization: Option<String>,
    /// Country (two letters), optional.
    pub country: Option<String>,
}

/// `ca-service ceremony --config FILE`: the file is the ceremony's only input.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeremonyConfig {
    /// root, csr or import.
    pub mode: CeremonyMode,
    /// The token.
    pub hsm: HsmSection,
    /// Label of the CA key to create (root, csr) or to match (import).
    pub key_label: String,
    /// Algorithm of the CA key.
    pub key_algorithm: KeyAlgorithm,
    /// Subject of the CA certificate or CSR (root, csr).
    pub subject: Option<SubjectSection>,
    /// Lifetime of a self-signed root, in days (root; default 3650).
    pub validity_days: Option<u32>,
    /// Output file: the CA certificate (root, import) or the CSR (csr). Never overwritten.
    pub output: PathBuf,
    /// Import only: the certificate the external root signed (PEM).
    pub signed_certificate: Option<PathBuf>,
    /// Import only: the external chain above it (PEM), nearest first.
    pub chain: Option<PathBuf>,
    /// Root and csr: also generate the audit log's checkpoint key (ECDSA P-256) with this label,
    /// for `[audit] key_label` of the serve config. Refused if the label exists.
    pub audit_key_label: Option<String>,
}

impl CeremonyConfig {
    /// Reads, resolves and validates a ceremony config.
    pub fn load(path: &Path) -> anyhow::Result<CeremonyConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read ceremony file {}", path.display()))?;
        let mut config: CeremonyConfig =
            toml::from_str(&text).with_context(|| format!("invalid ceremony file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.hsm.resolve(base);
        config.output = resolve(base, &config.output);
        config.signed_certificate = config.signed_certificate.as_ref().map(|path| resolve(base, path));
        config.chain = config.chain.as_ref().map(|path| resolve(base, path));
        config
            .validate()
            .with_context(|| format!("inconsistent ceremony file {}", path.display()))?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.hsm.validate()?;
        if self.key_label.is_empty() {
            bail!("key_label must not be empty");
        }
        if self.output.exists() {
            bail!(
                "output {} already exists; the ceremony never overwrites a file",
                self.output.display()
            );
        }
        match self.mode {
            CeremonyMode::Root | CeremonyMode::Csr => {
                let subject = self
                    .subject
                    .as_ref()
                    .context("[subject] is required for mode root and csr")?;
                if subject.common_name.is_empty() {
                    bail!("subject.common_name must not be empty");
                }
                if self.signed_certificate.is_some() || self.chain.is_some() {
                    bail!("signed_certificate and chain belong to mode import only");
                }
                if let Some(label) = &self.audit_key_label
                    && (label.is_empty() || *label == self.key_label)
                {
                    bail!("audit_key_label must be non-empty and differ from key_label");
                }
            }
            CeremonyMode::Import => {
                if self.audit_key_label.is_some() {
                    bail!("audit_key_label belongs to mode root and csr, which generate keys");
                }
                if self.signed_certificate.is_none() {
                    bail!("mode import needs signed_certificate");
                }
            }
        }
        if let Some(days) = self.validity_days
            && !(1..=36_500).contains(&days)
        {
            bail!("validity_days must be between 1 and 36500");
        }
        Ok(())
    }
}
