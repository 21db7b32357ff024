//! Opening an escrowed key, the `open` step of `e2ee-recovery`, with its config file.
//!
//! It runs on an air-gapped machine and takes one TOML file (paths in it are relative to it):
//! ```toml
//! # e2ee-recovery open --config open.toml   (the shares' words on stdin, one share per line)
//! escrow_blob = "alice.escrow"            # the raw blob the admin tool saved from GetEscrow
//! user_id = "alice"
//! recovery_public_key = "ceremony-out/recovery-public-key.pem"
//! rewrap_out = "alice.private.key"        # or private_key_out = "alice.pem"
//! ```
//! The shares exist only in memory (zeroized on drop). `open` writes the user's key either as PKCS#8 PEM or
//! re-wrapped under a fresh mnemonic; both files are created 0600 and never replace an existing file.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use super::files::{ConfigError, read_toml, resolve, write_new};
use super::shares::{self, Share, ShareError};
use super::{EscrowError, MAX_BLOB_LEN, RecoveryPublicKey};
use crate::crypto::rsa::RsaPrivateKey;
use crate::mnemonic::{Mnemonic, MnemonicError};
use crate::protocol::key_backup::{self, KeyBackupError};

/// Longest line of share words read from the officers.
const MAX_SHARE_LINE_LEN: usize = 4096;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escrow::ceremony::PUBLIC_KEY_FILE;
    use crate::escrow::ceremony::tests::{ceremony, write_config};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::OnceLock;

    /// One RSA key for the tests (key generation is the slow part).
    fn user_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| RsaPrivateKey::generate_2048().expect("keygen"))
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
    fn the_open_example_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("recovery-open.toml");
        std::fs::write(&open, include_str!("../../../deploy/recovery-open.example.toml")).expect("write");
        let loaded = OpenConfig::load(&open).expect("the open example loads");
        assert_eq!(
            loaded.output,
            OpenOutput::PrivateKeyPem(dir.path().join("alice-key.pem"))
        );
    }
}
