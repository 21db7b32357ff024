//! Typed configuration for `serve` and `ceremony`, documented field by field and validated at load.
//!
//! Relative paths are resolved against the directory of the config file, so a config and the files
//! it names can move together. `deploy/ca-service.example.toml` and `deploy/ceremony-*.example.toml`
//! show every field.
//!
//! This module holds `ServeConfig`, its loading and the checks across sections; the sections are
//! in `tls` (`[tls]`, `[[principals]]` and the listener rule), `store` (`[store]` and the location
//! it selects), `sections` (the other sections of `serve`, and `[hsm]`, shared with `ceremony`) and
//! `ceremony` (`CeremonyConfig`).

pub mod ceremony;
pub mod sections;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

pub use self::ceremony::CeremonyConfig;
use self::sections::{
    AdminSection, AuditSection, CaSection, CrlSection, HsmSection, IssuanceSection, KeyBackupSection,
    TransparencySection,
};
use self::store::StoreSection;
use self::tls::{PrincipalSection, TlsSection};
use crate::issuer::Profile;

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `ca-service serve --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on, e.g. `0.0.0.0:50051` with `[tls]`.
    pub listen: SocketAddr,
    /// Serve plaintext gRPC instead of mTLS: allowed only without `[tls]` and on a loopback
    /// `listen` address (a TLS-terminating proxy on the same host). Nobody is authenticated then:
    /// every caller is the principal `unauthenticated`, holding `sync-server` only, so Admin and
    /// `ExportEntries` answer UNAUTHENTICATED. Default false: without `[tls]` the CA refuses to start.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// mTLS: the server certificate and the client CAs. Required unless `allow_plaintext`.
    pub tls: Option<TlsSection>,
    /// The callers the CA knows, each with its roles and how its client certificate is matched.
    #[serde(default)]
    pub principals: Vec<PrincipalSection>,
    /// Largest gRPC message accepted, in bytes (default 131072; CSRs are limited to 64 KiB anyway).
    pub max_message_bytes: Option<usize>,
    /// Log format (default human).
    #[serde(default)]
    pub log_format: LogFormat,
    /// The token.
    pub hsm: HsmSection,
    /// The CA key and certificate.
    pub ca: CaSection,
    /// The certificate profile.
    pub issuance: IssuanceSection,
    /// The store.
    pub store: StoreSection,
    /// The audit log (always on: every state change is logged, sequenced and signed).
    pub audit: AuditSection,
    /// CRL publication (defaults apply when absent).
    #[serde(default)]
    pub crl: CrlSection,
    /// The Admin service's dual-control requests (defaults apply when absent).
    #[serde(default)]
    pub admin: AdminSection,
    /// The Transparency service's export limits (defaults apply when absent).
    #[serde(default)]
    pub transparency: TransparencySection,
    /// The KeyBackup service's proofs of possession (defaults apply when absent).
    #[serde(default)]
    pub key_backup: KeyBackupSection,
}

impl ServeConfig {
    /// Reads, resolves and validates a serve config.
    pub fn load(path: &Path) -> anyhow::Result<ServeConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut config: ServeConfig =
            toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.hsm.resolve(base);
        config.ca.certificate = resolve(base, &config.ca.certificate);
        config.audit.guard_file = resolve(base, &config.audit.guard_file);
        if let Some(tls) = &mut config.tls {
            tls.resolve(base);
        }
        if let Some(rest) = config.store.url.strip_prefix("sqlite:") {
            config.store.url = format!(
                "sqlite:{}",
                resolve(base, Path::new(rest.trim_start_matches("//"))).display()
            );
        }
        config
            .validate()
            .with_context(|| format!("inconsistent config file {}", path.display()))?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.hsm.validate()?;
        self.crl.validate()?;
        self.admin.validate()?;
        self.transparency.validate()?;
        self.key_backup.validate()?;
        self.check_listener()?;
        self.validate_principals()?;
        if self.ca.key_label.is_empty() {
            bail!("ca.key_label must not be empty");
        }
        if !(1..=825).contains(&self.issuance.validity_days) {
            bail!("issuance.validity_days must be between 1 and 825");
        }
        if self.issuance.max_certificates_per_user_per_day == Some(0) {
            bail!("issuance.max_certificates_per_user_per_day must be at least 1");
        }
        if let Some(bytes) = self.max_message_bytes
            && bytes < 80 * 1024
        {
            bail!("max_message_bytes must be at least 81920 so that a 64 KiB CSR fits");
        }
        self.store_location()?;
        self.audit.validate()?;
        if self.audit.key_label == self.ca.key_label {
            bail!("audit.key_label must name a key of its own, not the CA key");
        }
        Ok(())
    }

    /// The certificate profile.
    pub fn profile(&self) -> Profile {
        Profile {
            validity: Duration::from_secs(u64::from(self.issuance.validity_days) * 86_400),
            backdate: Duration::from_secs(u64::from(self.issuance.backdate_seconds.unwrap_or(300))),
            max_certificates_per_day: u64::from(self.issuance.max_certificates_per_user_per_day.unwrap_or(20)),
        }
    }

    /// How refusals are summarized per caller.
    pub fn refusal_limits(&self) -> crate::issuer::refusals::RefusalLimits {
        let defaults = crate::issuer::refusals::RefusalLimits::default();
        crate::issuer::refusals::RefusalLimits {
            entries_per_window: self
                .issuance
                .refusal_entries_per_minute
                .unwrap_or(defaults.entries_per_window)
                .max(1),
            ..defaults
        }
    }
}

/// True for a loopback address (`127.0.0.0/8`, `::1`): where plaintext may be served. An
/// IPv4-mapped form (`::ffff:127.0.0.1`) is refused rather than interpreted: write `127.0.0.1`.
pub fn is_loopback(address: std::net::IpAddr) -> bool {
    match address {
        std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => false,
        other => other.is_loopback(),
    }
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::store::StoreLocation;

    pub(super) const VALID: &str = r#"
listen = "127.0.0.1:50051"
allow_plaintext = true
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "ca"
pin_env = "CA_PIN"
[ca]
key_label = "ca-key"
key_algorithm = "ecdsa-p256"
certificate = "ca.pem"
[issuance]
validity_days = 365
[store]
url = "sqlite:state/ca.sqlite3"
[audit]
key_label = "audit-key"
origin = "e2ee-ca.example/audit-log"
guard_file = "guard/signer-state"
"#;

    pub(super) fn load(text: &str) -> anyhow::Result<ServeConfig> {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("ca.toml");
        std::fs::write(&path, text).expect("write");
        ServeConfig::load(&path)
    }

    #[test]
    fn valid_config_resolves_relative_paths() {
        let config = load(VALID).expect("valid");
        assert!(config.ca.certificate.is_absolute());
        assert!(matches!(config.store_location(), Ok(StoreLocation::Sqlite(path)) if path.is_absolute()));
        assert_eq!(config.profile().max_certificates_per_day, 20);
    }

    #[test]
    fn inconsistent_configs_are_refused_with_the_reason() {
        let cases = [
            (VALID.replace("pin_env = \"CA_PIN\"", ""), "pin_file or hsm.pin_env"),
            (
                VALID.replace("127.0.0.1:50051", "0.0.0.0:50051"),
                "loopback address only",
            ),
            (
                VALID.replace("validity_days = 365", "validity_days = 0"),
                "validity_days",
            ),
            (VALID.replace("sqlite:state/ca.sqlite3", "mysql://x"), "store.url"),
            (
                VALID.replace("sqlite:state/ca.sqlite3", "mysql://root:hunter2@x"),
                "got scheme \"mysql\"",
            ),
            (
                VALID.replace("sqlite:state/ca.sqlite3", "postgres:///ca"),
                "must name a host",
            ),
            (
                VALID.replace("sqlite:state/ca.sqlite3\"", "postgres://x/ca\"\npool_size = 0"),
                "pool_size",
            ),
            (
                VALID.replace("sqlite:state/ca.sqlite3\"", "postgres://x/ca\"\ntimeout_ms = 1"),
                "timeout_ms",
            ),
            (
                VALID.replace("sqlite:state/ca.sqlite3\"", "sqlite:state/ca.sqlite3\"\npool_size = 4"),
                "PostgreSQL only",
            ),
            (VALID.replace("ecdsa-p256", "dsa-1024"), "unknown variant"),
            (format!("{VALID}\nsurprise = 1\n"), "unknown field"),
        ];
        for (text, expected) in cases {
            let error = format!("{:#}", load(&text).expect_err("must be refused"));
            assert!(error.contains(expected), "{error:?} should mention {expected:?}");
            assert!(!error.contains("hunter2"), "{error:?} must not echo a password");
        }
    }

    #[test]
    fn deploy_examples_are_valid() {
        let directory = tempfile::tempdir().expect("tempdir");
        let serve = directory.path().join("ca-service.toml");
        std::fs::write(&serve, include_str!("../../../deploy/ca-service.example.toml")).expect("write");
        let config = ServeConfig::load(&serve).expect("the serve example is valid");
        assert_eq!(config.audit.origin, "e2ee-ca.example/audit-log");
        for (name, text) in [
            ("root", include_str!("../../../deploy/ceremony-root.example.toml")),
            ("csr", include_str!("../../../deploy/ceremony-csr.example.toml")),
        ] {
            let path = directory.path().join(format!("ceremony-{name}.toml"));
            std::fs::write(&path, text).expect("write");
            let ceremony = CeremonyConfig::load(&path).unwrap_or_else(|error| panic!("{name}: {error:#}"));
            assert_eq!(ceremony.audit_key_label.as_deref(), Some("e2ee-ca-audit-2026"));
        }
    }
}
