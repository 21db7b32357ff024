//! The smaller sections: `[hsm]` (shared by `serve` and `ceremony`), and for `serve` `[ca]`,
//! `[issuance]`, `[audit]`, `[key_backup]`, `[crl]`, `[admin]` and `[transparency]`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::resolve;
use crate::hsm::{HsmConfig, KeyAlgorithm, Pin};
use crate::transparency::sequencer::SequencerConfig;

/// How to reach the token (shared by `serve` and `ceremony`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmSection {
    /// Path of the PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// SoftHSM only: the `softhsm2.conf` to use (sets `SOFTHSM2_CONF` before the module loads).
    pub softhsm2_conf: Option<PathBuf>,
    /// Label of the token holding the keys.
    pub token_label: String,
    /// File holding the user PIN (mode 0600 recommended). Exactly one of `pin_file` and `pin_env`.
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN.
    pub pin_env: Option<String>,
    /// Signing sessions kept open (default 4). Smartcards and YubiHSMs may need 1 or 2.
    pub pool_size: Option<usize>,
    /// How long a request waits for a free session before RESOURCE_EXHAUSTED, in ms (default 2000).
    pub session_wait_ms: Option<u64>,
}

impl HsmSection {
    pub(super) fn resolve(&mut self, base: &Path) {
        self.module = resolve(base, &self.module);
        self.softhsm2_conf = self.softhsm2_conf.as_ref().map(|path| resolve(base, path));
        self.pin_file = self.pin_file.as_ref().map(|path| resolve(base, path));
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if self.token_label.is_empty() || self.token_label.len() > 32 {
            bail!("hsm.token_label must be 1 to 32 bytes");
        }
        match (&self.pin_file, &self.pin_env) {
            (Some(_), Some(_)) => bail!("set only one of hsm.pin_file and hsm.pin_env"),
            (None, None) => bail!("set hsm.pin_file or hsm.pin_env: the CA needs the token's user PIN"),
            _ => {}
        }
        if self.pool_size == Some(0) {
            bail!("hsm.pool_size must be at least 1");
        }
        Ok(())
    }

    /// Reads the PIN from its source and builds the signer config.
    pub fn hsm_config(&self) -> anyhow::Result<HsmConfig> {
        let pin = match (&self.pin_file, &self.pin_env) {
            (Some(path), _) => {
                let text = zeroize::Zeroizing::new(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read hsm.pin_file {}", path.display()))?,
                );
                Pin::new(&text)
            }
            (None, Some(variable)) => {
                let text = zeroize::Zeroizing::new(
                    std::env::var(variable)
                        .with_context(|| format!("environment variable {variable} (hsm.pin_env) is not set"))?,
                );
                Pin::new(&text)
            }
            (None, None) => bail!("no PIN source configured"),
        };
        Ok(HsmConfig {
            module: self.module.clone(),
            token_label: self.token_label.clone(),
            pin,
            pool_size: self.pool_size.unwrap_or(4),
            session_wait: Duration::from_millis(self.session_wait_ms.unwrap_or(2000)),
        })
    }
}

/// The CA key and certificate used for issuance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaSection {
    /// Label of the CA private key on the token.
    pub key_label: String,
    /// The CA key's algorithm: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096.
    pub key_algorithm: KeyAlgorithm,
    /// PEM file: the CA certificate first, then any parents up to the root.
    pub certificate: PathBuf,
}

/// The end-entity certificate profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuanceSection {
    /// Certificate lifetime in days (1 to 825).
    pub validity_days: u32,
    /// `notBefore` is set this many seconds in the past, for clients with slow clocks (default 300).
    pub backdate_seconds: Option<u32>,
    /// Certificates one user may receive in 24 hours, renewals included (default 20).
    pub max_certificates_per_user_per_day: Option<u32>,
    /// Refusals one caller gets an audit entry each for per minute (default 20, at least 1); the
    /// rest of its minute is counted into one `refusals-summarized` entry.
    pub refusal_entries_per_minute: Option<u32>,
}

/// The audit (transparency) log: its checkpoint key and the sequencer's bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Label of the ECDSA P-256 checkpoint key on the token (made by the ceremony's
    /// `audit_key_label`); separate from the CA key.
    pub key_label: String,
    /// The log's origin: the first line of every checkpoint and the signing key's name, a
    /// schema-less URL such as `e2ee-ca.example/audit-log` (no spaces, no '+').
    pub origin: String,
    /// The signer guard's state file: the last tree this CA agreed to sign, kept outside the
    /// database (relative to this config file). Keep it on another disk or mount than the database
    /// where you can, and back it up with the HSM, not with the database: restoring an old copy of
    /// it together with an old database is exactly the rollback it exists to catch.
    pub guard_file: PathBuf,
    /// How long an issuance waits for the sequencer to index its entry before answering
    /// UNAVAILABLE (certificate withheld), in ms (default 5000).
    pub sequence_wait_ms: Option<u64>,
    /// Most entries per sequencing batch: one transaction and one checkpoint signature (default 1024).
    pub max_batch: Option<usize>,
    /// How often the sequencer looks for entries committed by other replicas, in ms (default 200).
    pub poll_interval_ms: Option<u64>,
    /// How often the unchanged head is re-signed while idle, in seconds (default 60).
    pub heartbeat_seconds: Option<u64>,
    /// Least time between two checkpoint signatures, in ms (default 100): bounds the HSM's
    /// checkpoint signatures to 10 per second and adds at most this to the time from commit to
    /// a signed checkpoint (issuance waits for its index, not for the checkpoint).
    pub checkpoint_interval_ms: Option<u64>,
}

impl AuditSection {
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if self.key_label.is_empty() {
            bail!("audit.key_label must not be empty");
        }
        if self.guard_file.as_os_str().is_empty() || self.guard_file.is_dir() {
            bail!(
                "audit.guard_file must name a file (the signer guard's state), e.g. \"/var/lib/e2ee-ca-guard/state\""
            );
        }
        if tlog::note::KeyName::new(&self.origin).is_err() || self.origin.contains('\n') {
            bail!("audit.origin must be non-empty without spaces or '+', e.g. \"e2ee-ca.example/audit-log\"");
        }
        if !(100..=300_000).contains(&self.sequence_wait_ms.unwrap_or(5000)) {
            bail!("audit.sequence_wait_ms must be between 100 and 300000");
        }
        if !(1..=65_536).contains(&self.max_batch.unwrap_or(1024)) {
            bail!("audit.max_batch must be between 1 and 65536");
        }
        if !(10..=60_000).contains(&self.poll_interval_ms.unwrap_or(200)) {
            bail!("audit.poll_interval_ms must be between 10 and 60000");
        }
        if !(1..=86_400).contains(&self.heartbeat_seconds.unwrap_or(60)) {
            bail!("audit.heartbeat_seconds must be between 1 and 86400");
        }
        if self.checkpoint_interval_ms.unwrap_or(100) > 10_000 {
            bail!("audit.checkpoint_interval_ms must be at most 10000");
        }
        Ok(())
    }

    /// The sequencer's settings.
    pub fn sequencer(&self) -> SequencerConfig {
        SequencerConfig {
            max_batch: self.max_batch.unwrap_or(1024),
            poll_interval: Duration::from_millis(self.poll_interval_ms.unwrap_or(200)),
            heartbeat: Duration::from_secs(self.heartbeat_seconds.unwrap_or(60)),
            checkpoint_interval: Duration::from_millis(self.checkpoint_interval_ms.unwrap_or(100)),
            lead_retry: Duration::from_secs(2),
            stall_bound: self.sequence_wait(),
        }
    }

    /// How long an issuance waits for its log index.
    pub fn sequence_wait(&self) -> Duration {
        Duration::from_millis(self.sequence_wait_ms.unwrap_or(5000))
    }
}

/// `[key_backup]`: the KeyBackup service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBackupSection {
    /// How long a proof-of-possession nonce from CreateBackupChallenge stays usable, in seconds
    /// (default 300; 10 to 3600).
    #[serde(default = "KeyBackupSection::default_nonce_seconds")]
    pub nonce_seconds: u64,
}

impl KeyBackupSection {
    fn default_nonce_seconds() -> u64 {
        300
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if !(10..=3600).contains(&self.nonce_seconds) {
            bail!("key_backup.nonce_seconds must be between 10 and 3600");
        }
        Ok(())
    }

    /// How long a nonce is valid.
    pub fn nonce_lifetime(&self) -> Duration {
        Duration::from_secs(self.nonce_seconds)
    }
}

impl Default for KeyBackupSection {
    fn default() -> KeyBackupSection {
        KeyBackupSection {
            nonce_seconds: KeyBackupSection::default_nonce_seconds(),
        }
    }
}

/// `[crl]`: how often the CA signs a CRL, and for how long each is valid.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlSection {
    /// A new CRL is signed at least this often, even without revocations, in seconds (default
    /// 3600); every revocation also publishes one at once.
    #[serde(default = "CrlSection::default_refresh")]
    pub refresh_seconds: u64,
    /// nextUpdate - thisUpdate, in seconds (default 86400); must exceed `refresh_seconds`, so a
    /// relying party always holds a current CRL.
    #[serde(default = "CrlSection::default_validity")]
    pub validity_seconds: u64,
}

impl CrlSection {
    fn default_refresh() -> u64 {
        3600
    }

    fn default_validity() -> u64 {
        86_400
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if !(60..=7 * 86_400).contains(&self.refresh_seconds) {
            bail!("crl.refresh_seconds must be between 60 and 604800");
        }
        if self.validity_seconds <= self.refresh_seconds || self.validity_seconds > 30 * 86_400 {
            bail!("crl.validity_seconds must exceed crl.refresh_seconds and be at most 2592000 (30 days)");
        }
        Ok(())
    }

    /// The publisher's settings.
    pub fn crl_config(&self) -> crate::revocation::CrlConfig {
        crate::revocation::CrlConfig {
            refresh: Duration::from_secs(self.refresh_seconds),
            validity: Duration::from_secs(self.validity_seconds),
        }
    }
}

impl Default for CrlSection {
    fn default() -> CrlSection {
        CrlSection {
            refresh_seconds: CrlSection::default_refresh(),
            validity_seconds: CrlSection::default_validity(),
        }
    }
}

/// `[admin]`: dual-control requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// How long a request (an identity reset) stays valid, approved or not, before it must be
    /// consumed, in seconds (default 86400: 24 hours).
    #[serde(default = "AdminSection::default_lifetime")]
    pub request_lifetime_seconds: u64,
}

impl AdminSection {
    fn default_lifetime() -> u64 {
        86_400
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if !(1..=30 * 86_400).contains(&self.request_lifetime_seconds) {
            bail!("admin.request_lifetime_seconds must be between 1 and 2592000 (30 days)");
        }
        Ok(())
    }

    /// The lifetime of a request.
    pub fn request_lifetime(&self) -> Duration {
        Duration::from_secs(self.request_lifetime_seconds)
    }
}

impl Default for AdminSection {
    fn default() -> AdminSection {
        AdminSection {
            request_lifetime_seconds: AdminSection::default_lifetime(),
        }
    }
}

/// `[transparency]`: how many `ExportEntries` streams one replica serves at once, and how long
/// one may stall. A stalled stream holds about two 32 KiB messages of the server's memory
/// (`api::transparency`; 142 KiB a stream measured, with the buffers its connection grew), so the
/// cap bounds what stalled readers can pin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransparencySection {
    /// `ExportEntries` streams served at once (default 32); one more is answered
    /// RESOURCE_EXHAUSTED. A place is freed when a stream ends, its reader goes away, or it idles
    /// for `export_idle_seconds`.
    #[serde(default = "TransparencySection::default_max_streams")]
    pub max_export_streams: usize,
    /// A stream whose reader takes no message for this long, in seconds, is ended with
    /// DEADLINE_EXCEEDED and its place freed (default 30); the reader exports again from the first
    /// index it lacks.
    #[serde(default = "TransparencySection::default_idle")]
    pub export_idle_seconds: u64,
}

impl TransparencySection {
    fn default_max_streams() -> usize {
        32
    }

    fn default_idle() -> u64 {
        30
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if !(1..=4096).contains(&self.max_export_streams) {
            bail!("transparency.max_export_streams must be between 1 and 4096");
        }
        if !(1..=3600).contains(&self.export_idle_seconds) {
            bail!("transparency.export_idle_seconds must be between 1 and 3600");
        }
        Ok(())
    }

    /// The export limits the Transparency service enforces.
    pub fn export_limits(&self) -> crate::api::transparency::ExportLimits {
        crate::api::transparency::ExportLimits {
            max_streams: self.max_export_streams,
            idle: Duration::from_secs(self.export_idle_seconds),
        }
    }
}

impl Default for TransparencySection {
    fn default() -> TransparencySection {
        TransparencySection {
            max_export_streams: TransparencySection::default_max_streams(),
            export_idle_seconds: TransparencySection::default_idle(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{VALID, load};

    #[test]
    fn audit_sections_are_validated() {
        let config = load(VALID).expect("valid");
        assert_eq!(config.audit.sequence_wait(), Duration::from_secs(5));
        assert_eq!(config.audit.sequencer().max_batch, 1024);
        assert!(config.audit.guard_file.is_absolute() && config.audit.guard_file.ends_with("guard/signer-state"));
        let without_audit = VALID.split("[audit]").next().expect("prefix").to_owned();
        let cases = [
            (without_audit, "missing field `audit`"),
            (
                VALID.replace("guard_file = \"guard/signer-state\"\n", ""),
                "missing field `guard_file`",
            ),
            (VALID.replace("guard/signer-state", ""), "audit.guard_file"),
            (VALID.replace("e2ee-ca.example/audit-log", "has space"), "audit.origin"),
            (VALID.replace("e2ee-ca.example/audit-log", "a+b"), "audit.origin"),
            (VALID.replace("e2ee-ca.example/audit-log", ""), "audit.origin"),
            (VALID.replace("\"audit-key\"", "\"ca-key\""), "not the CA key"),
            (format!("{VALID}sequence_wait_ms = 5\n"), "sequence_wait_ms"),
            (format!("{VALID}max_batch = 0\n"), "max_batch"),
            (
                format!("{VALID}checkpoint_interval_ms = 60000\n"),
                "checkpoint_interval_ms",
            ),
        ];
        for (text, expected) in cases {
            let error = format!("{:#}", load(&text).expect_err("must be refused"));
            assert!(error.contains(expected), "{error:?} should mention {expected:?}");
        }
    }

    #[test]
    fn transparency_sections_are_validated() {
        let config = load(VALID).expect("valid");
        let limits = config.transparency.export_limits();
        assert_eq!((limits.max_streams, limits.idle), (32, Duration::from_secs(30)));
        let set = load(&format!(
            "{VALID}[transparency]\nmax_export_streams = 200\nexport_idle_seconds = 5\n"
        ))
        .expect("valid");
        assert_eq!(set.transparency.export_limits().max_streams, 200);
        assert_eq!(set.transparency.export_limits().idle, Duration::from_secs(5));
        for (section, expected) in [
            ("max_export_streams = 0", "transparency.max_export_streams"),
            ("max_export_streams = 5000", "transparency.max_export_streams"),
            ("export_idle_seconds = 0", "transparency.export_idle_seconds"),
            ("export_idle_seconds = 86400", "transparency.export_idle_seconds"),
            ("export_buffer = 1", "unknown field"),
        ] {
            let error = format!(
                "{:#}",
                load(&format!("{VALID}[transparency]\n{section}\n")).expect_err("must be refused")
            );
            assert!(error.contains(expected), "{error:?} should mention {expected:?}");
        }
    }
}
