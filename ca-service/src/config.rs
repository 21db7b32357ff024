//! Typed configuration for `serve` and `ceremony`, documented field by field and validated at load.
//!
//! Relative paths are resolved against the directory of the config file, so a config and the files
//! it names can move together. `deploy/ca-service.example.toml` and `deploy/ceremony.example.toml`
//! show every field.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::hsm::{HsmConfig, KeyAlgorithm, Pin};
use crate::issuer::Profile;
use crate::principal::Role;
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
    fn resolve(&mut self, base: &Path) {
        self.module = resolve(base, &self.module);
        self.softhsm2_conf = self.softhsm2_conf.as_ref().map(|path| resolve(base, path));
        self.pin_file = self.pin_file.as_ref().map(|path| resolve(base, path));
    }

    fn validate(&self) -> anyhow::Result<()> {
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

/// Where state lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite:PATH` for the embedded store (relative paths against the config file), or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?OPTIONS]` for PostgreSQL, which several
    /// replicas of the CA may share. The URL is never logged (it may hold a password).
    pub url: String,
    /// PostgreSQL only: connections each replica keeps at most (default 16).
    pub pool_size: Option<usize>,
    /// PostgreSQL only: the bound on one store operation, in ms, covering the wait for a pooled
    /// connection, connecting, and every statement of the transaction (default 5000). Past it the
    /// request fails with UNAVAILABLE and nothing is written. An issuance makes up to three store
    /// operations (pin read, rate-limit count, commit), then waits up to `audit.sequence_wait_ms`
    /// for its log index and up to 1 s for its receipt: keep the sum below callers' deadlines.
    pub timeout_ms: Option<u64>,
}

/// The store selected by `store.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded SQLite store at this path.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(Box<PostgresLocation>),
}

/// A PostgreSQL store, parsed from `[store]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresLocation {
    /// Connection parameters (its `Debug` redacts the password).
    pub connection: tokio_postgres::Config,
    /// Connections kept at most.
    pub pool_size: usize,
    /// Bound on one store operation.
    pub timeout: Duration,
}

impl PostgresLocation {
    /// `host:port/database`, for logs and error messages: never the user or password.
    pub fn describe(&self) -> String {
        let host = match self.connection.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "?".to_owned(),
        };
        let port = self.connection.get_ports().first().copied().unwrap_or(5432);
        let database = self
            .connection
            .get_dbname()
            .or(self.connection.get_user())
            .unwrap_or("?");
        format!("{host}:{port}/{database}")
    }
}

/// Default PostgreSQL pool size.
const DEFAULT_POSTGRES_POOL_SIZE: usize = 16;

/// Default bound on one PostgreSQL store operation.
const DEFAULT_STORE_TIMEOUT_MS: u64 = 5000;

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
    fn validate(&self) -> anyhow::Result<()> {
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

/// The TLS listener: the server's certificate and the CAs whose client certificates it accepts.
/// Client authentication is optional in the handshake (health and reflection stay reachable
/// without a certificate) but a presented certificate must chain to one of `client_ca`, or the
/// handshake fails; which RPCs a principal may call is decided per request (`api::principal`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file: the server certificate first, then any intermediates.
    pub certificate: PathBuf,
    /// PEM file: the server certificate's private key (PKCS#8, SEC1 or PKCS#1; mode 0600). Its
    /// contents are never logged.
    pub key: PathBuf,
    /// The client CAs, at least one: `[[tls.client_ca]] name = "corp", file = "clients-ca.pem"`.
    pub client_ca: Vec<ClientCaSection>,
}

/// A CA that issues client certificates, named so that principals can refer to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCaSection {
    /// The name principals use in `client_ca` (unique).
    pub name: String,
    /// PEM file holding the CA certificate. A client certificate is matched to this CA when the
    /// CA signed it directly (client certificates under an intermediate match by fingerprint only).
    pub file: PathBuf,
}

/// A known caller: `[[principals]] name = "…", roles = [...]` and one match rule, either
/// `fingerprint_sha256`, or `client_ca` with `cn` or `san`. A certificate is matched by
/// fingerprint first, then by the `client_ca` rules in file order; the first match wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSection {
    /// The principal's name (unique): the actor of its audit entries and the name in logs.
    pub name: String,
    /// Its roles: `sync-server` (Identity issuance and lookups, KeyBackup), `admin` (Admin),
    /// `auditor` (Transparency `ExportEntries`). Every principal may read CA info and proofs.
    pub roles: Vec<Role>,
    /// Match rule 1: the SHA-256 of the client certificate's DER, 64 hex digits (`openssl x509
    /// -noout -fingerprint -sha256`, with or without colons).
    pub fingerprint_sha256: Option<String>,
    /// Match rule 2: the `[[tls.client_ca]]` name of the CA that issued the certificate, with
    /// `cn` or `san`.
    pub client_ca: Option<String>,
    /// With `client_ca`: the certificate's subject common name.
    pub cn: Option<String>,
    /// With `client_ca`: a DNS name, URI or email address among the certificate's subject
    /// alternative names.
    pub san: Option<String>,
}

impl PrincipalSection {
    /// The fingerprint rule as 32 bytes, if set (validated at load).
    pub fn fingerprint(&self) -> anyhow::Result<Option<[u8; 32]>> {
        let Some(text) = &self.fingerprint_sha256 else {
            return Ok(None);
        };
        let digits: String = text.chars().filter(|character| *character != ':').collect();
        let bytes = hex::decode(&digits)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
        match bytes {
            Some(bytes) => Ok(Some(bytes)),
            None => bail!(
                "principal {:?}: fingerprint_sha256 must be 64 hex digits (the SHA-256 of the certificate's DER)",
                self.name
            ),
        }
    }

    fn validate(&self, tls: &TlsSection) -> anyhow::Result<()> {
        let name = &self.name;
        if name.is_empty() || name.chars().any(char::is_control) {
            bail!("a [[principals]] name must be non-empty without control characters (got {name:?})");
        }
        self.fingerprint()?;
        match (&self.fingerprint_sha256, &self.client_ca, &self.cn, &self.san) {
            (None, None, None, None) => {
                bail!("principal {name:?} has no match rule: set fingerprint_sha256, or client_ca with cn or san")
            }
            (Some(_), None, None, None) => Ok(()),
            (Some(_), _, _, _) => {
                bail!("principal {name:?}: set either fingerprint_sha256 or client_ca with cn or san, not both")
            }
            (None, None, _, _) => {
                bail!("principal {name:?}: cn and san need client_ca, the CA that issued the certificate")
            }
            (None, Some(_), None, None) => bail!("principal {name:?}: client_ca needs cn or san"),
            (None, Some(_), Some(_), Some(_)) => bail!("principal {name:?}: set cn or san, not both"),
            (None, Some(ca), cn, san) => {
                if !tls.client_ca.iter().any(|known| known.name == *ca) {
                    let known: Vec<&str> = tls.client_ca.iter().map(|known| known.name.as_str()).collect();
                    bail!(
                        "principal {name:?}: client_ca {ca:?} is not a [[tls.client_ca]] name (known: {})",
                        known.join(", ")
                    );
                }
                if cn.as_deref().or(san.as_deref()).is_some_and(str::is_empty) {
                    bail!("principal {name:?}: cn and san must not be empty");
                }
                Ok(())
            }
        }
    }
}

impl TlsSection {
    fn resolve(&mut self, base: &Path) {
        self.certificate = resolve(base, &self.certificate);
        self.key = resolve(base, &self.key);
        for client_ca in &mut self.client_ca {
            client_ca.file = resolve(base, &client_ca.file);
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.client_ca.is_empty() {
            bail!(
                "[tls] needs at least one [[tls.client_ca]] (name, file): the CAs whose client certificates \
                 authenticate callers"
            );
        }
        let mut names = HashSet::new();
        for client_ca in &self.client_ca {
            if client_ca.name.is_empty() {
                bail!("a [[tls.client_ca]] name must not be empty");
            }
            if !names.insert(client_ca.name.as_str()) {
                bail!("[[tls.client_ca]] name {:?} is used twice", client_ca.name);
            }
        }
        Ok(())
    }
}

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

    fn validate(&self) -> anyhow::Result<()> {
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

    fn validate(&self) -> anyhow::Result<()> {
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

    fn validate(&self) -> anyhow::Result<()> {
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

/// True for a loopback address (`127.0.0.0/8`, `::1`): where plaintext may be served. An
/// IPv4-mapped form (`::ffff:127.0.0.1`) is refused rather than interpreted: write `127.0.0.1`.
pub fn is_loopback(address: std::net::IpAddr) -> bool {
    match address {
        std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => false,
        other => other.is_loopback(),
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

    fn validate(&self) -> anyhow::Result<()> {
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

    /// Sets the listen address (`--listen`), checked like the file's.
    pub fn set_listen(&mut self, listen: SocketAddr) -> anyhow::Result<()> {
        self.listen = listen;
        self.check_listener()
    }

    /// mTLS, or plaintext only when asked for on loopback (`Service::run` checks the address
    /// actually bound again).
    fn check_listener(&self) -> anyhow::Result<()> {
        match (&self.tls, self.allow_plaintext) {
            (Some(tls), false) => tls.validate(),
            (Some(_), true) => bail!("allow_plaintext = true contradicts [tls]: remove one of them"),
            (None, true) if is_loopback(self.listen.ip()) => Ok(()),
            (None, true) => bail!(
                "allow_plaintext = true is allowed on a loopback address only (listen = {}): configure [tls] \
                 to serve mTLS on this address, or put a TLS-terminating proxy on the same host and listen on \
                 127.0.0.1",
                self.listen
            ),
            (None, false) => bail!(
                "no [tls] section: the CA serves mTLS (set [tls] certificate, key and [[tls.client_ca]]), or \
                 plaintext behind a TLS-terminating proxy on the same host with allow_plaintext = true and a \
                 loopback listen address"
            ),
        }
    }

    fn validate_principals(&self) -> anyhow::Result<()> {
        let Some(tls) = &self.tls else {
            if !self.principals.is_empty() {
                bail!("[[principals]] need [tls]: without client certificates nobody can be matched to them");
            }
            return Ok(());
        };
        let mut names = HashSet::new();
        for principal in &self.principals {
            principal.validate(tls)?;
            if !names.insert(principal.name.as_str()) {
                bail!("principal name {:?} is used twice", principal.name);
            }
        }
        Ok(())
    }

    /// The store selected by `store.url`.
    pub fn store_location(&self) -> anyhow::Result<StoreLocation> {
        let url = self.store.url.as_str();
        if let Some(path) = url.strip_prefix("sqlite:") {
            if path.is_empty() {
                bail!("store.url sqlite: needs a path, e.g. sqlite:ca.sqlite3");
            }
            if self.store.pool_size.is_some() || self.store.timeout_ms.is_some() {
                bail!("store.pool_size and store.timeout_ms apply to PostgreSQL only");
            }
            return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            // Only the scheme is echoed: the rest of a URL may hold a password.
            let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
            bail!("store.url must be sqlite:PATH or postgres://USER@HOST/DATABASE (got scheme {scheme:?})");
        }
        let connection: tokio_postgres::Config = url
            .parse()
            .map_err(|error| anyhow::anyhow!("store.url is not a valid PostgreSQL URL: {error}"))?;
        if connection.get_hosts().is_empty() {
            bail!("store.url must name a host, e.g. postgres://ca@db.internal/ca");
        }
        let pool_size = self.store.pool_size.unwrap_or(DEFAULT_POSTGRES_POOL_SIZE);
        if !(1..=1000).contains(&pool_size) {
            bail!("store.pool_size must be between 1 and 1000");
        }
        let timeout_ms = self.store.timeout_ms.unwrap_or(DEFAULT_STORE_TIMEOUT_MS);
        if !(100..=300_000).contains(&timeout_ms) {
            bail!("store.timeout_ms must be between 100 and 300000");
        }
        Ok(StoreLocation::Postgres(Box::new(PostgresLocation {
            connection,
            pool_size,
            timeout: Duration::from_millis(timeout_ms),
        })))
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

    const VALID: &str = r#"
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

    fn load(text: &str) -> anyhow::Result<ServeConfig> {
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
    fn postgres_urls_select_the_postgres_store() {
        let text = VALID.replace(
            "url = \"sqlite:state/ca.sqlite3\"",
            "url = \"postgres://ca:s3cret@db.internal:6432/ca\"\npool_size = 8\ntimeout_ms = 2500",
        );
        let config = load(&text).expect("valid");
        let Ok(StoreLocation::Postgres(location)) = config.store_location() else {
            panic!("expected a PostgreSQL store");
        };
        assert_eq!(location.pool_size, 8);
        assert_eq!(location.timeout, Duration::from_millis(2500));
        assert_eq!(location.describe(), "db.internal:6432/ca");
        assert!(
            !format!("{location:?}").contains("s3cret"),
            "Debug redacts the password"
        );
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

    /// `VALID` with mTLS instead of plaintext, two client CAs and three principals.
    fn with_tls(listen: &str) -> String {
        let tls = r#"
[tls]
certificate = "tls/server.pem"
key = "tls/server-key.pem"
[[tls.client_ca]]
name = "corp"
file = "tls/corp-ca.pem"
[[tls.client_ca]]
name = "partners"
file = "/etc/partners-ca.pem"
[[principals]]
name = "sync-1"
roles = ["sync-server"]
client_ca = "corp"
cn = "sync.corp.example"
[[principals]]
name = "alice"
roles = ["admin", "auditor"]
client_ca = "partners"
san = "alice@partners.example"
[[principals]]
name = "witness"
roles = []
fingerprint_sha256 = "AB:cd:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:01"
"#;
        format!(
            "{}{tls}",
            VALID
                .replace("allow_plaintext = true\n", "")
                .replace("127.0.0.1:50051", listen)
        )
    }

    #[test]
    fn tls_sections_resolve_paths_and_read_principals() {
        let config = load(&with_tls("0.0.0.0:50051")).expect("valid");
        let tls = config.tls.as_ref().expect("tls");
        assert!(tls.certificate.is_absolute() && tls.certificate.ends_with("tls/server.pem"));
        assert!(tls.key.is_absolute());
        assert!(tls.client_ca[0].file.is_absolute());
        assert_eq!(tls.client_ca[1].file, PathBuf::from("/etc/partners-ca.pem"));
        assert_eq!(config.principals.len(), 3);
        assert_eq!(config.principals[1].roles, [Role::Admin, Role::Auditor]);
        let fingerprint = config.principals[2].fingerprint().expect("valid").expect("set");
        assert_eq!((fingerprint[0], fingerprint[1], fingerprint[31]), (0xab, 0xcd, 0x01));
    }

    #[test]
    fn plaintext_needs_allow_plaintext_and_a_loopback_address() {
        // Allowed: mTLS anywhere; plaintext on loopback when asked for.
        load(&with_tls("0.0.0.0:50051")).expect("mTLS on any address");
        load(VALID).expect("plaintext on loopback with allow_plaintext");
        load(&VALID.replace("127.0.0.1:50051", "[::1]:50051")).expect("IPv6 loopback");
        let without_permission = VALID.replace("allow_plaintext = true\n", "");
        let cases = [
            (without_permission.clone(), "no [tls] section"),
            (
                without_permission.replace("127.0.0.1:50051", "0.0.0.0:50051"),
                "no [tls] section",
            ),
            (
                VALID.replace("127.0.0.1:50051", "10.0.0.1:50051"),
                "loopback address only",
            ),
            (
                format!("allow_plaintext = true\n{}", with_tls("127.0.0.1:1").trim_start()),
                "contradicts [tls]",
            ),
        ];
        for (text, expected) in cases {
            let error = format!("{:#}", load(&text).expect_err("must be refused"));
            assert!(error.contains(expected), "{error:?} should mention {expected:?}");
        }
        // `--listen` is checked like the file.
        let mut config = load(VALID).expect("valid");
        let error = config
            .set_listen("0.0.0.0:1".parse().expect("address"))
            .expect_err("refused");
        assert!(error.to_string().contains("loopback address only"), "{error}");
        config
            .set_listen("127.0.0.1:0".parse().expect("address"))
            .expect("loopback");
    }

    #[test]
    fn bad_tls_and_principal_sections_are_refused_with_the_reason() {
        let valid = with_tls("0.0.0.0:50051");
        let cases = [
            (
                valid.replace("[\"sync-server\"]", "[\"superuser\"]"),
                "unknown variant `superuser`",
            ),
            (
                valid.replace("name = \"alice\"", "name = \"sync-1\""),
                "\"sync-1\" is used twice",
            ),
            (valid.replace("name = \"alice\"", "name = \"\""), "must be non-empty"),
            (
                valid.replace("client_ca = \"partners\"\n", ""),
                "cn and san need client_ca",
            ),
            (
                valid.replace("san = \"alice@partners.example\"\n", ""),
                "client_ca needs cn or san",
            ),
            (
                valid.replace("san = \"alice@partners.example\"", "san = \"a\"\ncn = \"b\""),
                "cn or san, not both",
            ),
            (
                valid.replace("client_ca = \"partners\"", "client_ca = \"nobody\""),
                "\"nobody\" is not a [[tls.client_ca]] name (known: corp, partners)",
            ),
            (
                valid.replace(
                    "cn = \"sync.corp.example\"",
                    &format!(
                        "cn = \"sync.corp.example\"\nfingerprint_sha256 = \"{}\"",
                        "0".repeat(64)
                    ),
                ),
                "not both",
            ),
            (valid.replace("AB:cd:00", "zz:cd:00"), "64 hex digits"),
            (valid.replace("AB:cd:00:", ""), "64 hex digits"),
            (valid.replace("fingerprint_sha256 = ", "# "), "has no match rule"),
            (
                valid.replace("name = \"partners\"", "name = \"corp\""),
                "name \"corp\" is used twice",
            ),
            (
                valid
                    .replace(
                        "[[tls.client_ca]]\nname = \"partners\"\nfile = \"/etc/partners-ca.pem\"\n",
                        "",
                    )
                    .replace(
                        "[[tls.client_ca]]\nname = \"corp\"\nfile = \"tls/corp-ca.pem\"\n",
                        "client_ca = []\n",
                    )
                    .split("[[principals]]")
                    .next()
                    .expect("prefix")
                    .to_owned(),
                "at least one [[tls.client_ca]]",
            ),
            (
                valid.replace("key = \"tls/server-key.pem\"\n", ""),
                "missing field `key`",
            ),
            (
                format!(
                    "{VALID}[[principals]]\nname = \"x\"\nroles = []\nfingerprint_sha256 = \"{}\"\n",
                    "0".repeat(64)
                ),
                "[[principals]] need [tls]",
            ),
        ];
        for (text, expected) in cases {
            let error = format!("{:#}", load(&text).expect_err("must be refused"));
            assert!(error.contains(expected), "{error:?} should mention {expected:?}");
        }
    }

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

    #[test]
    fn deploy_examples_are_valid() {
        let directory = tempfile::tempdir().expect("tempdir");
        let serve = directory.path().join("ca-service.toml");
        std::fs::write(&serve, include_str!("../../deploy/ca-service.example.toml")).expect("write");
        let config = ServeConfig::load(&serve).expect("the serve example is valid");
        assert_eq!(config.audit.origin, "e2ee-ca.example/audit-log");
        for (name, text) in [
            ("root", include_str!("../../deploy/ceremony-root.example.toml")),
            ("csr", include_str!("../../deploy/ceremony-csr.example.toml")),
        ] {
            let path = directory.path().join(format!("ceremony-{name}.toml"));
            std::fs::write(&path, text).expect("write");
            let ceremony = CeremonyConfig::load(&path).unwrap_or_else(|error| panic!("{name}: {error:#}"));
            assert_eq!(ceremony.audit_key_label.as_deref(), Some("e2ee-ca-audit-2026"));
        }
    }
}
