//! Offline audit of the transparency log: the export directory format, writing it from the store, and verifying it with `tlog` alone.
//!
//! An export directory (written by `ca-service audit export`, read by `ca-service audit verify`):
//! - `entries.bin`: the sequenced entries `[0, size)` of the exported checkpoint, in index order.
//!   It starts with the line `e2ee-ca log entries v1\n`; then, per entry, its log index (8 bytes,
//!   big-endian), its length (4 bytes, big-endian) and its exact stored bytes (the leaf data). The
//!   index is explicit so that a deleted, duplicated or reordered record is named by the verifier.
//! - `leaves.bin`: the leaf hashes the store's tree holds (`audit_tree_nodes` at level 0) for the
//!   same indices: the line `e2ee-ca log leaves v1\n`, then 32 bytes per index, in index order.
//!   Not written when the store lacks one (the export says which). It lets the verifier name the
//!   entry whose bytes changed after they were logged (see `verify`).
//! - `checkpoint.txt`: the latest signed checkpoint, verbatim (a C2SP signed note).
//! - `vkey.txt`: the log's verifier key, when the exporter was given it. Informational only: the
//!   verifier trusts the key the auditor passes (`--trusted-key`), never this file.
//!
//! `leaves.bin` is newer than the other files, and the admin CLI's export (over the `Transparency`
//! API) does not write it: the verifier checks what it finds and says what it could not check. What it checks is listed in `verify`'s docs; it needs no database and no HSM.

mod replay;
mod verify;

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use tlog::key::VerifierKey;

// The verifier's files are this module's children; what callers name is here, as
// `export::verify` (main.rs, benches/audit_log.rs).
pub use self::replay::{HistoryCounts, ReplayFailure};
pub use self::verify::{ExportedEntry, StoredTree, VerifyFailure, VerifyOptions, VerifyReport, parse_entries, verify};
use super::LogReader;
use crate::storage::StoreError;

/// The entries file of an export.
pub const ENTRIES_FILE: &str = "entries.bin";
/// The stored leaf hashes of an export.
pub const LEAVES_FILE: &str = "leaves.bin";
/// The checkpoint file of an export.
pub const CHECKPOINT_FILE: &str = "checkpoint.txt";
/// The (informational) verifier key file of an export.
pub const VKEY_FILE: &str = "vkey.txt";
/// The first line of `entries.bin`.
pub const ENTRIES_MAGIC: &[u8] = b"e2ee-ca log entries v1\n";
/// The first line of `leaves.bin`.
pub const LEAVES_MAGIC: &[u8] = b"e2ee-ca log leaves v1\n";

/// Entries (and leaf hashes) read from the store per query.
const EXPORT_CHUNK: u64 = 1024;

/// Why an export could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No checkpoint was ever signed, so there is nothing an auditor could verify.
    #[error("the log has no signed checkpoint yet")]
    NoCheckpoint,
    /// The store returned fewer entries than its latest checkpoint covers.
    #[error("the store returned {got} entries for [{start}, {end}) below its latest checkpoint")]
    MissingEntries {
        /// First index asked for.
        start: u64,
        /// End of the range asked for.
        end: u64,
        /// How many came back.
        got: usize,
    },
    /// An entry does not fit the 4-byte length prefix.
    #[error("entry {0} is longer than 4 GiB")]
    EntryTooLong(u64),
    /// The output directory could not be written.
    #[error("cannot write {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// Entries written (the exported checkpoint's size).
    pub entries: u64,
    /// The first index whose leaf hash the store does not hold; `leaves.bin` was not written then.
    pub missing_leaf: Option<u64>,
    /// Whether `vkey.txt` was written.
    pub vkey_written: bool,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A file written as `<name>.partial` and renamed into place once complete and synced, so that a
/// failed export never leaves a partial file under the final name.
struct ExportFile {
    path: PathBuf,
    partial: PathBuf,
    out: BufWriter<fs::File>,
}

impl ExportFile {
    fn create(dir: &Path, name: &str, magic: &[u8]) -> Result<ExportFile, ExportError> {
        let path = dir.join(name);
        let partial = dir.join(format!("{name}.partial"));
        let file = fs::File::create(&partial).map_err(io_error(&partial))?;
        let mut out = BufWriter::new(file);
        out.write_all(magic).map_err(io_error(&partial))?;
        Ok(ExportFile { path, partial, out })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ExportError> {
        self.out.write_all(bytes).map_err(io_error(&self.partial))
    }

    fn finish(self) -> Result<(), ExportError> {
        let file = self
            .out
            .into_inner()
            .map_err(|error| io_error(&self.partial)(error.into_error()))?;
        file.sync_all().map_err(io_error(&self.partial))?;
        fs::rename(&self.partial, &self.path).map_err(io_error(&self.path))
    }

    fn abandon(self) -> Result<(), ExportError> {
        drop(self.out);
        fs::remove_file(&self.partial).map_err(io_error(&self.partial))
    }
}

/// Removes `path` if it exists.
fn remove_stale(path: &Path) -> Result<(), ExportError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(io_error(path)(error)),
        _ => Ok(()),
    }
}

/// Writes the latest signed checkpoint, the entries it covers, their stored leaf hashes and (if
/// given) the vkey into `dir` (created if missing; existing export files are replaced).
pub async fn export<L: LogReader>(
    store: &L,
    dir: &Path,
    vkey: Option<&VerifierKey>,
) -> Result<ExportSummary, ExportError> {
    let checkpoint = store.latest_checkpoint().await?.ok_or(ExportError::NoCheckpoint)?;
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let mut entries = ExportFile::create(dir, ENTRIES_FILE, ENTRIES_MAGIC)?;
    let mut start = 0u64;
    while start < checkpoint.size {
        let end = checkpoint.size.min(start.saturating_add(EXPORT_CHUNK));
        let chunk = store.entries(start, end).await?;
        if chunk.len() as u64 != end - start {
            return Err(ExportError::MissingEntries {
                start,
                end,
                got: chunk.len(),
            });
        }
        for (index, bytes) in (start..end).zip(chunk) {
            let length = u32::try_from(bytes.len()).map_err(|_| ExportError::EntryTooLong(index))?;
            entries.write(&index.to_be_bytes())?;
            entries.write(&length.to_be_bytes())?;
            entries.write(&bytes)?;
        }
        start = end;
    }
    entries.finish()?;
    let missing_leaf = export_leaves(store, dir, checkpoint.size).await?;
    let checkpoint_path = dir.join(CHECKPOINT_FILE);
    fs::write(&checkpoint_path, checkpoint.note.as_bytes()).map_err(io_error(&checkpoint_path))?;
    if let Some(vkey) = vkey {
        let vkey_path = dir.join(VKEY_FILE);
        fs::write(&vkey_path, format!("{vkey}\n")).map_err(io_error(&vkey_path))?;
    }
    Ok(ExportSummary {
        entries: checkpoint.size,
        missing_leaf,
        vkey_written: vkey.is_some(),
    })
}

/// Writes `leaves.bin` for `[0, size)`; returns the first index the store holds no leaf for (and
/// then writes no file: a stored tree with a hole cannot authenticate anything).
async fn export_leaves<L: LogReader>(store: &L, dir: &Path, size: u64) -> Result<Option<u64>, ExportError> {
    remove_stale(&dir.join(LEAVES_FILE))?;
    let mut leaves = ExportFile::create(dir, LEAVES_FILE, LEAVES_MAGIC)?;
    let mut start = 0u64;
    while start < size {
        let end = size.min(start.saturating_add(EXPORT_CHUNK));
        let hashes = store
            .subtree_hashes((start..end).map(|index| (0, index)).collect())
            .await?;
        for (index, hash) in (start..end).zip(hashes) {
            match hash {
                Some(hash) => leaves.write(&hash)?,
                None => {
                    leaves.abandon()?;
                    return Ok(Some(index));
                }
            }
        }
        start = end;
    }
    leaves.finish()?;
    Ok(None)
}
