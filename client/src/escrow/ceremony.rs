//! The recovery-key ceremony of `e2ee-recovery`, with its config file.
//!
//! It runs on an air-gapped machine and takes one TOML file (paths in it are relative to it):
//! ```toml
//! # e2ee-recovery ceremony --config ceremony.toml
//! reference = "2026-05-04, room 3.14, officers A. Lovelace, G. Hopper, …; witness K. Johnson"
//! threshold = 3
//! shares = 5
//! officers = ["Ada", "Grace", "Katherine", "Margaret", "Radia"]   # optional, one per share
//! output_dir = "ceremony-out"
//! ```
//! The ceremony writes only public files (the key's PEM and the registration request); the secret and its shares
//! exist only in memory (zeroized on drop) and as the share sheet handed back for printing. Opening an escrowed key
//! with the shares is `opening`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use super::RecoveryPublicKey;
use super::files::{ConfigError, read_toml, resolve, write_new};
use super::shares::{self, RecoverySecret, Share, ShareError};

/// The public key file the ceremony writes into `output_dir`.
pub const PUBLIC_KEY_FILE: &str = "recovery-public-key.pem";
/// The registration request file the ceremony writes into `output_dir`.
pub const REGISTRATION_FILE: &str = "registration-request.json";
/// Longest ceremony reference, in bytes (the CA's bound).
pub const MAX_REFERENCE_LEN: usize = 512;
/// Longest officer name, in bytes.
pub const MAX_OFFICER_LEN: usize = 128;

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
pub(super) mod tests {
    use super::*;

    /// Writes `text` to the config file `name` in `directory`.
    pub(in crate::escrow) fn write_config(directory: &Path, name: &str, text: &str) -> PathBuf {
        let path = directory.join(name);
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn ceremony_config(directory: &Path, text: &str) -> Result<CeremonyConfig, ConfigError> {
        CeremonyConfig::load(&write_config(directory, "ceremony.toml", text))
    }

    const CEREMONY: &str = "reference = \"test\"\nthreshold = 3\nshares = 5\noutput_dir = \"out\"\n";

    /// A ceremony in `directory`, and the words of its shares (one line each).
    pub(in crate::escrow) fn ceremony(directory: &Path) -> (CeremonyOutcome, Vec<String>) {
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
    fn the_ceremony_example_loads() {
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
    }
}
