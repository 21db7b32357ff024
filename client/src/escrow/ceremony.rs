//! The steps of `e2ee-recovery`: the recovery-key ceremony and opening an escrowed key, with their config files.
//!
//! Both run on an air-gapped machine, and each takes one TOML file (paths in it are relative to it):
//! ```toml
//! # e2ee-recovery ceremony --config ceremony.toml
//! reference = "2026-05-04, room 3.14, officers A. Lovelace, G. Hopper, …; witness K. Johnson"
//! threshold = 3
//! shares = 5
//! officers = ["Ada", "Grace", "Katherine", "Margaret", "Radia"]   # optional, one per share
//! output_dir = "ceremony-out"
//!
//! # e2ee-recovery open --config open.toml   (the shares' words on stdin, one share per line)
//! escrow_blob = "alice.escrow"            # the raw blob the admin tool saved from GetEscrow
//! user_id = "alice"
//! recovery_public_key = "ceremony-out/recovery-public-key.pem"
//! rewrap_out = "alice.private.key"        # or private_key_out = "alice.pem"
//! ```
//! The ceremony writes only public files (the key's PEM and the registration request); the secret and its shares
//! exist only in memory (zeroized on drop) and as the share sheet handed back for printing. `open` writes the
//! user's key either as PKCS#8 PEM or re-wrapped under a fresh mnemonic; both files are created 0600 and never
//! replace an existing file.

use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use super::shares::{self, RecoverySecret, Share, ShareError};
use super::{EscrowError, MAX_BLOB_LEN, RecoveryPublicKey};
use crate::crypto::rsa::RsaPrivateKey;
use crate::mnemonic::{Mnemonic, MnemonicError};
use crate::protocol::key_backup::{self, KeyBackupError};

/// The public key file the ceremony writes into `output_dir`.
pub const PUBLIC_KEY_FILE: &str = "recovery-public-key.pem";
/// The registration request file the ceremony writes into `output_dir`.
pub const REGISTRATION_FILE: &str = "registration-request.json";
/// Longest ceremony reference, in bytes (the CA's bound).
pub const MAX_REFERENCE_LEN: usize = 512;
/// Longest officer name, in bytes.
pub const MAX_OFFICER_LEN: usize = 128;
/// Longest line of share words read from the officers.
const MAX_SHARE_LINE_LEN: usize = 4096;

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this command (unknown or missing field, wrong type).
    #[error("{path} is not a valid config: {reason}")]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("{path}: {reason}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The ceremony config file (`e2ee-recovery ceremony --config FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeremonyConfig {
    /// Which ceremony this is (date, place, officers' record), 1 to 512 bytes without control characters: it goes
    /// into the registration request, and from there into the recovery key's certificate and the audit log.
    pub reference: String,
    /// How many shares open an escrow: 2 to `shares`.
    pub threshold: u8,
    /// How many shares to make, one per officer: `threshold` to 16.
    pub shares: u8,
    /// The officers' names, one per share in index order, printed in each share's header; optional.
    #[serde(default)]
    pub officers: Option<Vec<String>>,
    /// Where to write `recovery-public-key.pem` and `registration-request.json` (created if missing; relative
    /// to the config file). Neither file may exist.
    pub output_dir: PathBuf,
}

impl CeremonyConfig {
    /// Reads, resolves and validates a ceremony config file.
    pub fn load(path: &Path) -> Result<CeremonyConfig, ConfigError> {
        let mut config: CeremonyConfig = read_toml(path)?;
        config.output_dir = resolve(path, &config.output_dir);
        config.validate().map_err(|reason| ConfigError::Invalid {
            path: path.to_owned(),
            reason,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        check_text("reference", &self.reference, MAX_REFERENCE_LEN)?;
        if self.threshold < shares::MIN_THRESHOLD || self.threshold > self.shares || self.shares > shares::MAX_SHARES {
            return Err(format!(
                "threshold {} of shares {}: it needs {} ≤ threshold ≤ shares ≤ {}",
                self.threshold,
                self.shares,
                shares::MIN_THRESHOLD,
                shares::MAX_SHARES
            ));
        }
        if let Some(officers) = &self.officers {
            if officers.len() != usize::from(self.shares) {
                return Err(format!(
                    "{} officers for {} shares: name one per share",
                    officers.len(),
                    self.shares
                ));
            }
            for (officer, index) in officers.iter().zip(1..) {
                check_text(&format!("officer {index}"), officer, MAX_OFFICER_LEN)?;
            }
        }
        Ok(())
    }
}

/// `registration-request.json`: what an admin registers with the CA (RegisterRecoveryKey), and its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationRequest {
    /// The recovery public key, PEM SubjectPublicKeyInfo ("PUBLIC KEY").
    pub public_key_pem: String,
    /// The ceremony reference from the config.
    pub ceremony_reference: String,
    /// Shares needed.
    pub threshold: u8,
    /// Shares made.
    pub shares: u8,
    /// SHA-256 of the key's SPKI DER, lowercase hex (what the CA reports).
    pub fingerprint: String,
    /// The split id printed on every share, hex.
    pub split_id: String,
    /// When the ceremony ran, RFC 3339 UTC.
    pub created_at: String,
}

/// Why the ceremony failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CeremonyError {
    /// An output file exists already (the ceremony never replaces one).
    #[error("{0} exists already; the ceremony never overwrites its outputs")]
    Exists(PathBuf),
    /// Splitting, or the check that the shares combine back, failed.
    #[error("splitting the recovery key failed: {0}")]
    Shares(#[from] ShareError),
    /// The shares did not combine back to the public key (a bug; nothing was written).
    #[error("shares {0:?} did not combine back to the recovery key; nothing was written")]
    SelfCheck(Vec<u8>),
    /// The output directory or a file could not be created or written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The timestamp or the registration request could not be encoded.
    #[error("cannot encode the registration request: {0}")]
    Encode(String),
}

/// A ceremony whose key is made and split, not yet written: print `share_sheet`, then `write` the public files.
///
/// That order means a registration request exists only for a key whose shares were printed: shares printed for a
/// key that was then not saved are paper to destroy, a registered key without shares would lose every escrow.
#[derive(Debug)]
pub struct Ceremony {
    public_key: RecoveryPublicKey,
    registration: RegistrationRequest,
    registration_json: String,
    public_key_path: PathBuf,
    registration_path: PathBuf,
    output_dir: PathBuf,
    shares: Vec<Share>,
    officers: Option<Vec<String>>,
}

/// What the ceremony wrote.
#[derive(Debug)]
pub struct CeremonyOutcome {
    /// The new recovery public key.
    pub public_key: RecoveryPublicKey,
    /// The registration request written next to it.
    pub registration: RegistrationRequest,
    /// The files written.
    pub written: Vec<PathBuf>,
}

/// Prepares the ceremony: (1) refuse existing outputs, (2) generate the key pair, (3) split it, (4) check that the
/// words of every share parse back and that consecutive threshold-sized groups covering every share combine to
/// the public key, (5) build the registration request. The secret is dropped (zeroized) here; the shares live in
/// the `Ceremony` until `write` consumes it.
pub fn prepare_ceremony(config: &CeremonyConfig, now: OffsetDateTime) -> Result<Ceremony, CeremonyError> {
    // 1. Outputs.
    let public_key_path = config.output_dir.join(PUBLIC_KEY_FILE);
    let registration_path = config.output_dir.join(REGISTRATION_FILE);
    for path in [&public_key_path, &registration_path] {
        if path.exists() {
            return Err(CeremonyError::Exists(path.clone()));
        }
    }
    // 2. The key pair.
    let (secret, public_key) = RecoverySecret::generate();
    // 3. The shares.
    let shares = shares::split(&secret, config.threshold, config.shares)?;
    drop(secret);
    // 4. What will be printed gives the key back.
    let reparsed = shares
        .iter()
        .map(|share| Share::parse(&share.to_words()))
        .collect::<Result<Vec<Share>, ShareError>>()?;
    let threshold = usize::from(config.threshold);
    for start in (0..reparsed.len()).step_by(threshold) {
        let group: Vec<Share> = (start..start + threshold)
            .map(|offset| reparsed[offset % reparsed.len()].clone())
            .collect();
        if shares::combine_for(&group, &public_key).is_err() {
            return Err(CeremonyError::SelfCheck(group.iter().map(Share::index).collect()));
        }
    }
    drop(reparsed);
    // 5. The registration request.
    let registration = RegistrationRequest {
        public_key_pem: public_key.to_pem(),
        ceremony_reference: config.reference.clone(),
        threshold: config.threshold,
        shares: config.shares,
        fingerprint: public_key.fingerprint(),
        split_id: shares.first().map(Share::split_id).unwrap_or_default(),
        created_at: now
            .to_offset(time::UtcOffset::UTC)
            .replace_nanosecond(0)
            .map_err(|error| CeremonyError::Encode(error.to_string()))?
            .format(&Rfc3339)
            .map_err(|error| CeremonyError::Encode(error.to_string()))?,
    };
    let mut registration_json =
        serde_json::to_string_pretty(&registration).map_err(|error| CeremonyError::Encode(error.to_string()))?;
    registration_json.push('\n');
    Ok(Ceremony {
        public_key,
        registration,
        registration_json,
        public_key_path,
        registration_path,
        output_dir: config.output_dir.clone(),
        shares,
        officers: config.officers.clone(),
    })
}

impl Ceremony {
    /// The share sheet for printing: per share a header line
    /// (`share 2 of 5 (3 needed), split 1a2b3c4d, officer Grace`) then its 32 words on one line, shares separated
    /// by a blank line.
    pub fn share_sheet(&self) -> Zeroizing<String> {
        let mut sheet = Zeroizing::new(String::new());
        for (offset, share) in self.shares.iter().enumerate() {
            if offset > 0 {
                sheet.push('\n');
            }
            sheet.push_str(&format!(
                "share {} of {} ({} needed), split {}",
                share.index(),
                self.shares.len(),
                share.threshold(),
                share.split_id()
            ));
            if let Some(officer) = self.officers.as_ref().and_then(|officers| officers.get(offset)) {
                sheet.push_str(", officer ");
                sheet.push_str(officer);
            }
            sheet.push('\n');
            sheet.push_str(&share.to_words());
            sheet.push('\n');
        }
        sheet
    }

    /// The registration request `write` will write.
    pub fn registration(&self) -> &RegistrationRequest {
        &self.registration
    }

    /// Writes the public key and the registration request (never replacing a file; the directory is created if
    /// missing) and drops the shares.
    pub fn write(self) -> Result<CeremonyOutcome, CeremonyError> {
        std::fs::create_dir_all(&self.output_dir).map_err(|source| CeremonyError::Write {
            path: self.output_dir.clone(),
            source,
        })?;
        let write = |path: &PathBuf, contents: &[u8]| {
            write_new(path, contents, 0o644).map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => CeremonyError::Exists(path.clone()),
                _ => CeremonyError::Write {
                    path: path.clone(),
                    source,
                },
            })
        };
        write(&self.public_key_path, self.registration.public_key_pem.as_bytes())?;
        write(&self.registration_path, self.registration_json.as_bytes())?;
        Ok(CeremonyOutcome {
            public_key: self.public_key,
            registration: self.registration,
            written: vec![self.public_key_path, self.registration_path],
        })
    }
}

/// The raw `open` config file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpenConfig {
    /// The sealed blob's raw bytes, as the admin tool saved them from GetEscrow.
    escrow_blob: PathBuf,
    /// The user whose key it is: the blob opens only for the user id it was sealed for.
    user_id: String,
    /// The registered recovery public key, PEM (the ceremony's `recovery-public-key.pem`).
    recovery_public_key: PathBuf,
    /// Write the user's private key here as PKCS#8 PEM ("PRIVATE KEY"), mode 0600. Exactly one of this and
    /// `rewrap_out`.
    #[serde(default)]
    private_key_out: Option<PathBuf>,
    /// Write the user's private key here wrapped under a fresh 12-word mnemonic (Nextcloud's private-key
    /// string), mode 0600; the mnemonic is printed once. Exactly one of this and `private_key_out`.
    #[serde(default)]
    rewrap_out: Option<PathBuf>,
}

/// What `open` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenOutput {
    /// The private key as PKCS#8 PEM, at this path.
    PrivateKeyPem(PathBuf),
    /// The private key wrapped under a fresh mnemonic, at this path.
    Rewrap(PathBuf),
}

impl OpenOutput {
    /// The file it writes.
    pub fn path(&self) -> &Path {
        match self {
            OpenOutput::PrivateKeyPem(path) | OpenOutput::Rewrap(path) => path,
        }
    }
}

/// The `open` config file (`e2ee-recovery open --config FILE`), validated; paths resolved against it.
#[derive(Debug, Clone)]
pub struct OpenConfig {
    /// The sealed blob's raw bytes.
    pub escrow_blob: PathBuf,
    /// The user the blob was sealed for.
    pub user_id: String,
    /// The registered recovery public key, PEM.
    pub recovery_public_key: PathBuf,
    /// What to write.
    pub output: OpenOutput,
}

impl OpenConfig {
    /// Reads, resolves and validates an `open` config file.
    pub fn load(path: &Path) -> Result<OpenConfig, ConfigError> {
        let raw: RawOpenConfig = read_toml(path)?;
        let invalid = |reason: &str| ConfigError::Invalid {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let output = match (raw.private_key_out, raw.rewrap_out) {
            (Some(out), None) => OpenOutput::PrivateKeyPem(resolve(path, &out)),
            (None, Some(out)) => OpenOutput::Rewrap(resolve(path, &out)),
            _ => return Err(invalid("set exactly one of private_key_out and rewrap_out")),
        };
        if raw.user_id.is_empty() || raw.user_id.len() > super::MAX_USER_ID_LEN {
            return Err(invalid("user_id must be 1 to 1024 bytes"));
        }
        Ok(OpenConfig {
            escrow_blob: resolve(path, &raw.escrow_blob),
            user_id: raw.user_id,
            recovery_public_key: resolve(path, &raw.recovery_public_key),
            output,
        })
    }
}

/// Why `open` failed. No message contains share words, keys or the blob.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// An input file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The escrow blob file is larger than any blob (16 KiB).
    #[error("{0} is larger than an escrow blob can be (16 KiB)")]
    BlobTooLarge(PathBuf),
    /// The recovery public key file is not an X25519 public key.
    #[error("{path}: {source}")]
    PublicKey {
        /// The file.
        path: PathBuf,
        /// Why.
        source: EscrowError,
    },
    /// The output file exists already (never replaced).
    #[error("{0} exists already; open never overwrites it")]
    Exists(PathBuf),
    /// The shares could not be read from standard input.
    #[error("cannot read the shares: {0}")]
    Input(std::io::Error),
    /// A line of share words is longer than any share.
    #[error("line {line}: too long for a share")]
    LineTooLong {
        /// The 1-based line number.
        line: usize,
    },
    /// A line is not UTF-8 text.
    #[error("line {line}: not text")]
    NotText {
        /// The 1-based line number.
        line: usize,
    },
    /// A line is not a valid share.
    #[error("share on line {line}: {source}")]
    Share {
        /// The 1-based line number.
        line: usize,
        /// Why.
        source: ShareError,
    },
    /// The shares do not combine, and one of them is to blame.
    #[error("share on line {line} (index {index}): {source}")]
    CombineShare {
        /// The 1-based line number of the share.
        line: usize,
        /// Its index.
        index: u8,
        /// Why.
        source: ShareError,
    },
    /// The shares do not combine (too few, or the result is not the registered key).
    #[error("{0}")]
    Combine(ShareError),
    /// The blob does not open (another user, another recovery key, altered, not a blob).
    #[error("{path}: {source}")]
    Escrow {
        /// The blob file.
        path: PathBuf,
        /// Why.
        source: EscrowError,
    },
    /// The blob opened but does not hold an RSA PKCS#8 private key.
    #[error("the escrowed key is not an RSA private key: {0}")]
    NotRsaKey(String),
    /// A fresh mnemonic could not be made.
    #[error(transparent)]
    Mnemonic(#[from] MnemonicError),
    /// Re-wrapping the key failed.
    #[error(transparent)]
    Rewrap(#[from] KeyBackupError),
    /// The output file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What `open` did.
#[derive(Debug)]
pub struct OpenOutcome {
    /// The file written.
    pub written: PathBuf,
    /// The number of shares combined.
    pub shares_used: usize,
    /// For `rewrap_out`: the fresh mnemonic, to show once.
    pub mnemonic: Option<Mnemonic>,
}

/// Opens an escrow: (1) read the recovery public key and the blob, refuse an existing output, (2) read the shares
/// from `shares_input`, one share's words per non-empty line, until EOF, (3) combine them and check the result is
/// the registered key, (4) open the blob for the user id, (5) check it holds an RSA private key, (6) write it.
pub fn open_escrow(config: &OpenConfig, shares_input: impl BufRead) -> Result<OpenOutcome, OpenError> {
    // 1. Inputs that need no officer.
    let public_key_pem = std::fs::read_to_string(&config.recovery_public_key).map_err(|source| OpenError::Read {
        path: config.recovery_public_key.clone(),
        source,
    })?;
    let public_key = RecoveryPublicKey::from_pem(&public_key_pem).map_err(|source| OpenError::PublicKey {
        path: config.recovery_public_key.clone(),
        source,
    })?;
    let blob = read_blob(&config.escrow_blob)?;
    let output_path = config.output.path();
    if output_path.exists() {
        return Err(OpenError::Exists(output_path.to_owned()));
    }
    // 2. The shares, each with its line number.
    let (lines, shares) = read_shares(shares_input)?;
    // 3. The recovery secret.
    let secret = shares::combine_for(&shares, &public_key).map_err(|error| combine_error(&lines, &shares, error))?;
    drop(shares);
    // 4. The user's key.
    let pkcs8_der = super::open(&secret, &config.user_id, &blob).map_err(|source| OpenError::Escrow {
        path: config.escrow_blob.clone(),
        source,
    })?;
    drop(secret);
    // 5. It is an RSA key.
    let key = RsaPrivateKey::from_pkcs8_der(&pkcs8_der).map_err(|error| OpenError::NotRsaKey(error.to_string()))?;
    // 6. The output.
    let write = |contents: &[u8]| {
        write_new(output_path, contents, 0o600).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => OpenError::Exists(output_path.to_owned()),
            _ => OpenError::Write {
                path: output_path.to_owned(),
                source,
            },
        })
    };
    let mnemonic = match &config.output {
        OpenOutput::PrivateKeyPem(_) => {
            write(key.to_pkcs8_pem().as_bytes())?;
            None
        }
        OpenOutput::Rewrap(_) => {
            let mnemonic = Mnemonic::generate()?;
            let wrapped = key_backup::wrap(&key, &mnemonic)?;
            write(wrapped.to_string().as_bytes())?;
            Some(mnemonic)
        }
    };
    Ok(OpenOutcome {
        written: output_path.to_owned(),
        shares_used: lines.len(),
        mnemonic,
    })
}

/// Reads the blob file, refusing one larger than any blob before reading it whole.
fn read_blob(path: &Path) -> Result<Vec<u8>, OpenError> {
    use std::io::Read;
    let read_error = |source| OpenError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut blob = Vec::new();
    file.take(MAX_BLOB_LEN as u64 + 1)
        .read_to_end(&mut blob)
        .map_err(read_error)?;
    if blob.len() > MAX_BLOB_LEN {
        return Err(OpenError::BlobTooLarge(path.to_owned()));
    }
    Ok(blob)
}

/// Parses one share per non-empty line; returns each share's line number next to it.
fn read_shares(mut input: impl BufRead) -> Result<(Vec<usize>, Vec<Share>), OpenError> {
    let mut lines = Vec::new();
    let mut shares = Vec::new();
    let mut buffer = Zeroizing::new(Vec::new());
    let mut line = 0;
    loop {
        buffer.clear();
        line += 1;
        // Bounded, so that a stray binary file on stdin cannot exhaust memory.
        let mut limited = std::io::Read::take(&mut input, MAX_SHARE_LINE_LEN as u64 + 1);
        let read = limited.read_until(b'\n', &mut buffer).map_err(OpenError::Input)?;
        if read == 0 {
            break;
        }
        if buffer.len() > MAX_SHARE_LINE_LEN && !buffer.ends_with(b"\n") {
            return Err(OpenError::LineTooLong { line });
        }
        let text = std::str::from_utf8(&buffer).map_err(|_| OpenError::NotText { line })?;
        if text.trim().is_empty() {
            continue;
        }
        let share = Share::parse(text).map_err(|source| OpenError::Share { line, source })?;
        lines.push(line);
        shares.push(share);
    }
    Ok((lines, shares))
}

/// Names the share a combine error is about by its line.
fn combine_error(lines: &[usize], shares: &[Share], error: ShareError) -> OpenError {
    let position = match &error {
        ShareError::MixedSplits { position, .. }
        | ShareError::ThresholdMismatch { position, .. }
        | ShareError::DuplicateShare { position, .. } => Some(*position),
        _ => None,
    };
    match position.and_then(|position| Some((lines.get(position - 1)?, shares.get(position - 1)?))) {
        Some((line, share)) => OpenError::CombineShare {
            line: *line,
            index: share.index(),
            source: error,
        },
        None => OpenError::Combine(error),
    }
}

/// Creates `path` (never replacing a file) with `mode` and writes `contents`.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|error| ConfigError::Syntax {
        path: path.to_owned(),
        reason: error.to_string().trim_end().to_owned(),
    })
}

/// `path` relative to the directory of the config file at `config`.
fn resolve(config: &Path, path: &Path) -> PathBuf {
    match config.parent() {
        Some(directory) if path.is_relative() => directory.join(path),
        _ => path.to_owned(),
    }
}

/// 1 to `max` bytes, no control characters (the text ends up on one printed line, a certificate, a log).
fn check_text(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.trim().is_empty() || text.len() > max {
        return Err(format!("{what} must be 1 to {max} bytes and not blank"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{what} contains a control character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::OnceLock;

    /// One RSA key for the tests (key generation is the slow part).
    fn user_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| RsaPrivateKey::generate_2048().expect("keygen"))
    }

    fn write_config(directory: &Path, name: &str, text: &str) -> PathBuf {
        let path = directory.join(name);
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn ceremony_config(directory: &Path, text: &str) -> Result<CeremonyConfig, ConfigError> {
        CeremonyConfig::load(&write_config(directory, "ceremony.toml", text))
    }

    const CEREMONY: &str = "reference = \"test\"\nthreshold = 3\nshares = 5\noutput_dir = \"out\"\n";

    /// A ceremony in `directory`, and the words of its shares (one line each).
    fn ceremony(directory: &Path) -> (CeremonyOutcome, Vec<String>) {
        let config = ceremony_config(directory, CEREMONY).expect("config");
        let ceremony = prepare_ceremony(&config, OffsetDateTime::UNIX_EPOCH).expect("ceremony");
        let words = ceremony
            .share_sheet()
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with("share "))
            .map(str::to_owned)
            .collect();
        (ceremony.write().expect("write"), words)
    }

    /// An open config for `user_id`'s blob sealed to the ceremony's key, writing `output`.
    fn open_config(directory: &Path, user_id: &str, output: &str) -> OpenConfig {
        let der = Zeroizing::new(
            pem::parse(user_key().to_pkcs8_pem().as_bytes())
                .expect("pem")
                .into_contents(),
        );
        let public_key = RecoveryPublicKey::from_pem(
            &std::fs::read_to_string(directory.join("out").join(PUBLIC_KEY_FILE)).expect("public key"),
        )
        .expect("parse");
        let blob = super::super::seal(&public_key, "alice", &der).expect("seal");
        std::fs::write(directory.join("alice.escrow"), blob).expect("blob");
        let text = format!(
            "escrow_blob = \"alice.escrow\"\nuser_id = \"{user_id}\"\nrecovery_public_key = \"out/{PUBLIC_KEY_FILE}\"\n{output}\n"
        );
        OpenConfig::load(&write_config(directory, "open.toml", &text)).expect("open config")
    }

    #[test]
    fn ceremony_configs_are_validated() {
        let directory = tempfile::tempdir().expect("tempdir");
        let config = ceremony_config(directory.path(), CEREMONY).expect("valid");
        assert_eq!(config.output_dir, directory.path().join("out"));
        let refused = |text: &str| ceremony_config(directory.path(), text).expect_err(text).to_string();
        assert!(refused(&format!("{CEREMONY}color = \"red\"\n")).contains("unknown field"));
        assert!(refused("reference = \"test\"\nthreshold = 3\nshares = 5\n").contains("output_dir"));
        for (threshold, shares) in [(1, 5), (6, 5), (3, 17)] {
            let text = format!("reference = \"x\"\nthreshold = {threshold}\nshares = {shares}\noutput_dir = \"o\"\n");
            assert!(refused(&text).contains("threshold"), "{threshold} of {shares}");
        }
        let reference =
            |value: &str| format!("reference = \"{value}\"\nthreshold = 2\nshares = 2\noutput_dir = \"o\"\n");
        assert!(refused(&reference("")).contains("reference"));
        assert!(refused(&reference(&"x".repeat(513))).contains("reference"));
        assert!(refused(&reference("a\\nb")).contains("control"));
        ceremony_config(directory.path(), &reference(&"x".repeat(512))).expect("512 bytes is fine");
        let officers = format!("{CEREMONY}officers = [\"Ada\", \"Grace\"]\n");
        assert!(refused(&officers).contains("2 officers for 5 shares"));
        let absolute = "reference = \"x\"\nthreshold = 2\nshares = 2\noutput_dir = \"/srv/out\"\n";
        assert_eq!(
            ceremony_config(directory.path(), absolute).expect("valid").output_dir,
            Path::new("/srv/out")
        );
    }

    #[test]
    fn the_ceremony_writes_public_files_and_a_sheet_that_combines() {
        let directory = tempfile::tempdir().expect("tempdir");
        let text = format!("{CEREMONY}officers = [\"Ada\", \"Grace\", \"Katherine\", \"Margaret\", \"Radia\"]\n");
        let config = ceremony_config(directory.path(), &text).expect("config");
        let ceremony = prepare_ceremony(&config, OffsetDateTime::UNIX_EPOCH).expect("ceremony");
        let out = directory.path().join("out");
        assert!(!out.exists(), "nothing is written before the shares are printed");
        let sheet = ceremony.share_sheet();
        let outcome = ceremony.write().expect("write");
        let pem_text = std::fs::read_to_string(out.join(PUBLIC_KEY_FILE)).expect("public key");
        assert_eq!(
            RecoveryPublicKey::from_pem(&pem_text).expect("parse"),
            outcome.public_key
        );
        let registration: RegistrationRequest =
            serde_json::from_str(&std::fs::read_to_string(out.join(REGISTRATION_FILE)).expect("json")).expect("parse");
        assert_eq!(registration, outcome.registration);
        assert_eq!(registration.public_key_pem, pem_text);
        assert_eq!(registration.fingerprint, outcome.public_key.fingerprint());
        assert_eq!((registration.threshold, registration.shares), (3, 5));
        assert_eq!(registration.ceremony_reference, "test");
        assert_eq!(registration.created_at, "1970-01-01T00:00:00Z");
        assert_eq!(
            std::fs::read_dir(&out).expect("list").count(),
            2,
            "nothing else is written"
        );

        let lines: Vec<&str> = sheet.lines().collect();
        assert_eq!(lines.len(), 5 * 3 - 1);
        let split_id = &registration.split_id;
        assert_eq!(
            lines[0],
            format!("share 1 of 5 (3 needed), split {split_id}, officer Ada")
        );
        assert_eq!(
            lines[3],
            format!("share 2 of 5 (3 needed), split {split_id}, officer Grace")
        );
        assert_eq!(lines[2], "");
        let shares: Vec<Share> = [1, 7, 13]
            .iter()
            .map(|line| Share::parse(lines[*line]).expect("share"))
            .collect();
        assert_eq!(shares.iter().map(Share::index).collect::<Vec<_>>(), [1, 3, 5]);
        shares::combine_for(&shares, &outcome.public_key).expect("the printed shares combine");

        let again = prepare_ceremony(&config, OffsetDateTime::UNIX_EPOCH).expect_err("outputs exist");
        assert!(matches!(again, CeremonyError::Exists(path) if path == out.join(PUBLIC_KEY_FILE)));
    }

    #[test]
    fn without_officers_the_header_names_none() {
        let directory = tempfile::tempdir().expect("tempdir");
        let config = ceremony_config(directory.path(), CEREMONY).expect("config");
        let ceremony = prepare_ceremony(&config, OffsetDateTime::UNIX_EPOCH).expect("ceremony");
        let sheet = ceremony.share_sheet();
        let header = sheet.lines().next().expect("a line");
        assert_eq!(
            header,
            format!("share 1 of 5 (3 needed), split {}", ceremony.registration().split_id)
        );
    }

    #[test]
    fn open_configs_need_exactly_one_output() {
        let directory = tempfile::tempdir().expect("tempdir");
        let base = "escrow_blob = \"b\"\nuser_id = \"alice\"\nrecovery_public_key = \"k.pem\"\n";
        let load = |text: &str| OpenConfig::load(&write_config(directory.path(), "open.toml", text));
        let both = format!("{base}private_key_out = \"a.pem\"\nrewrap_out = \"a.key\"\n");
        assert!(load(&both).expect_err("both").to_string().contains("exactly one"));
        assert!(load(base).expect_err("neither").to_string().contains("exactly one"));
        let config = load(&format!("{base}rewrap_out = \"a.key\"\n")).expect("valid");
        assert_eq!(config.output, OpenOutput::Rewrap(directory.path().join("a.key")));
        assert_eq!(config.escrow_blob, directory.path().join("b"));
        let no_user = "escrow_blob = \"b\"\nuser_id = \"\"\nrecovery_public_key = \"k.pem\"\nrewrap_out = \"a\"\n";
        assert!(load(no_user).expect_err("empty user").to_string().contains("user_id"));
    }

    #[test]
    fn open_writes_the_key_0600_once() {
        let directory = tempfile::tempdir().expect("tempdir");
        let (_, words) = ceremony(directory.path());
        let config = open_config(directory.path(), "alice", "private_key_out = \"alice.pem\"");
        let input = format!("\n{}\n\n  {}  \n{}", words[4], words[0], words[2]);
        let outcome = open_escrow(&config, input.as_bytes()).expect("open");
        assert_eq!(outcome.shares_used, 3);
        assert!(outcome.mnemonic.is_none());
        let written = std::fs::read_to_string(&outcome.written).expect("read");
        assert_eq!(written, *user_key().to_pkcs8_pem());
        let mode = std::fs::metadata(&outcome.written)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = open_escrow(&config, input.as_bytes()).expect_err("exists");
        assert!(matches!(again, OpenError::Exists(_)));
    }

    #[test]
    fn open_rewraps_under_a_fresh_mnemonic() {
        let directory = tempfile::tempdir().expect("tempdir");
        let (_, words) = ceremony(directory.path());
        let config = open_config(directory.path(), "alice", "rewrap_out = \"alice.private.key\"");
        let outcome = open_escrow(&config, words[1..4].join("\n").as_bytes()).expect("open");
        let mnemonic = outcome.mnemonic.expect("a mnemonic");
        let stored = std::fs::read_to_string(&outcome.written).expect("read");
        let blob = crate::format::private_key_blob::PrivateKeyBlob::parse(&stored).expect("blob");
        let recovered = key_backup::unwrap(&blob, &mnemonic).expect("unwrap");
        assert_eq!(*recovered.key.to_pkcs8_pem(), *user_key().to_pkcs8_pem());
    }

    #[test]
    fn open_errors_name_the_share_or_the_cause() {
        let directory = tempfile::tempdir().expect("tempdir");
        let (_, words) = ceremony(directory.path());
        let config = open_config(directory.path(), "alice", "private_key_out = \"alice.pem\"");
        let error = |input: String| open_escrow(&config, input.as_bytes()).expect_err("refused").to_string();

        let too_few = error(format!("{}\n{}\n", words[0], words[1]));
        assert_eq!(too_few, "2 distinct shares given, 3 needed");
        let mut mistyped: Vec<&str> = words[1].split(' ').collect();
        mistyped[4] = if mistyped[4] == "zoo" { "abandon" } else { "zoo" };
        let corrupted = error(format!("{}\n\n{}\n{}\n", words[0], mistyped.join(" "), words[2]));
        assert!(
            corrupted.starts_with("share on line 3: the share's checksum does not match"),
            "{corrupted}"
        );
        let typo = error(format!("{}\n{}x\n", words[0], words[1]));
        assert_eq!(typo, "share on line 2: word 32 of the share is not in the word list");
        let repeated = error(format!("{}\n{}\n{}\n", words[0], words[1], words[0]));
        assert_eq!(
            repeated,
            "share on line 3 (index 1): share 1 was given twice (again as number 3)"
        );
        assert!(matches!(
            open_escrow(&config, b"\n\n".as_slice()),
            Err(OpenError::Combine(ShareError::NoShares))
        ));
        assert!(matches!(
            open_escrow(&config, [0xffu8, b'\n'].as_slice()),
            Err(OpenError::NotText { line: 1 })
        ));
        assert!(matches!(
            open_escrow(&config, vec![b'a'; 5000].as_slice()),
            Err(OpenError::LineTooLong { line: 1 })
        ));
        for message in [too_few, corrupted, typo, repeated] {
            for share in &words {
                let first_words: Vec<&str> = share.split(' ').take(3).collect();
                assert!(!message.contains(&first_words.join(" ")), "{message}");
            }
        }
        assert!(!directory.path().join("alice.pem").exists());
    }

    #[test]
    fn open_refuses_another_user_and_another_key() {
        let directory = tempfile::tempdir().expect("tempdir");
        let (_, words) = ceremony(directory.path());
        let input = words[..3].join("\n");
        let bob = open_config(directory.path(), "bob", "private_key_out = \"bob.pem\"");
        assert!(matches!(
            open_escrow(&bob, input.as_bytes()),
            Err(OpenError::Escrow {
                source: EscrowError::DoesNotOpen,
                ..
            })
        ));
        // Shares of another ceremony, against this ceremony's registered key.
        let other = tempfile::tempdir().expect("tempdir");
        let (_, other_words) = ceremony(other.path());
        let alice = open_config(directory.path(), "alice", "private_key_out = \"alice.pem\"");
        assert!(matches!(
            open_escrow(&alice, other_words[..3].join("\n").as_bytes()),
            Err(OpenError::Combine(ShareError::WrongKey { .. }))
        ));
        let mixed = format!("{}\n{}\n{}\n", words[0], words[1], other_words[2]);
        let error = open_escrow(&alice, mixed.as_bytes()).expect_err("mixed");
        assert!(matches!(
            error,
            OpenError::CombineShare {
                line: 3,
                index: 3,
                source: ShareError::MixedSplits { .. }
            }
        ));
        // A blob file larger than any blob is refused before any share is read.
        std::fs::write(directory.path().join("alice.escrow"), vec![0u8; MAX_BLOB_LEN + 1]).expect("write");
        assert!(matches!(
            open_escrow(&alice, input.as_bytes()),
            Err(OpenError::BlobTooLarge(_))
        ));
    }

    #[test]
    fn the_deploy_examples_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ceremony = dir.path().join("recovery-ceremony.toml");
        std::fs::write(
            &ceremony,
            include_str!("../../../deploy/recovery-ceremony.example.toml"),
        )
        .expect("write");
        let loaded = CeremonyConfig::load(&ceremony).expect("the ceremony example loads");
        assert_eq!((loaded.threshold, loaded.shares), (3, 5));
        assert_eq!(loaded.output_dir, dir.path().join("recovery-key"));
        let open = dir.path().join("recovery-open.toml");
        std::fs::write(&open, include_str!("../../../deploy/recovery-open.example.toml")).expect("write");
        let loaded = OpenConfig::load(&open).expect("the open example loads");
        assert_eq!(
            loaded.output,
            OpenOutput::PrivateKeyPem(dir.path().join("alice-key.pem"))
        );
    }
}
