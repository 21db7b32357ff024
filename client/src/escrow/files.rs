//! The files of `e2ee-recovery`: reading a command's one TOML config file (`ConfigError`; paths in it are relative
//! to it) and creating an output file, never replacing one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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

pub(super) fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
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
pub(super) fn resolve(config: &Path, path: &Path) -> PathBuf {
    match config.parent() {
        Some(directory) if path.is_relative() => directory.join(path),
        _ => path.to_owned(),
    }
}

/// Creates `path` (never replacing a file) with `mode` and writes `contents`.
pub(super) fn write_new(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
