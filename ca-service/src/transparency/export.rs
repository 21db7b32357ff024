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
//! - `certificates.bin`: every certificate the store holds, in serial order: the line
//!   `e2ee-ca certificates v1\n`, then per certificate the state of the entry the store says records
//!   it (1 byte: 0 no stored entry, 1 not sequenced yet, 2 sequenced) and that entry's log index
//!   (8 bytes, big-endian; 0 unless sequenced), the serial (2-byte big-endian length, then the
//!   bytes), the user id (2-byte length, UTF-8), the certified key's SHA-256 (32 bytes) and the
//!   certificate (4-byte length, DER). Written by `export_certificates`, after the entries, so every
//!   certificate an exported entry records is in it (certificates are never deleted).
//! - `checkpoint.txt`: the latest signed checkpoint, verbatim (a C2SP signed note).
//! - `vkey.txt`: the log's verifier key, when the exporter was given it. Informational only: the
//!   verifier trusts the key the auditor passes (`--trusted-key`), never this file.
//!
//! `leaves.bin` and `certificates.bin` are newer than the other files, and the admin CLI's export
//! (over the `Transparency` API) writes neither: the verifier checks what it finds and says what it
//! could not check. What it checks is listed in `verify`'s docs; it needs no database and no HSM.

mod certificates;
mod replay;
mod verify;

use std::fs;
use std::future::Future;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use tlog::key::VerifierKey;

// The verifier's files are this module's children; what callers name is here, as
// `export::verify` (main.rs, benches/audit_log.rs).
pub use self::certificates::{CertificateCounts, CertificateFailure};
pub use self::replay::{HistoryCounts, ReplayFailure};
pub use self::verify::{ExportedEntry, StoredTree, VerifyFailure, VerifyOptions, VerifyReport, parse_entries, verify};
use super::LogReader;
use crate::identity::{KeyFingerprint, SerialNumber, UserId};
use crate::storage::StoreError;

/// The entries file of an export.
pub const ENTRIES_FILE: &str = "entries.bin";
/// The stored leaf hashes of an export.
pub const LEAVES_FILE: &str = "leaves.bin";
/// The stored certificates of an export.
pub const CERTIFICATES_FILE: &str = "certificates.bin";
/// The checkpoint file of an export.
pub const CHECKPOINT_FILE: &str = "checkpoint.txt";
/// The (informational) verifier key file of an export.
pub const VKEY_FILE: &str = "vkey.txt";
/// The first line of `entries.bin`.
pub const ENTRIES_MAGIC: &[u8] = b"e2ee-ca log entries v1\n";
/// The first line of `leaves.bin`.
pub const LEAVES_MAGIC: &[u8] = b"e2ee-ca log leaves v1\n";
/// The first line of `certificates.bin`.
pub const CERTIFICATES_MAGIC: &[u8] = b"e2ee-ca certificates v1\n";

/// Entries (and leaf hashes) read from the store per query.
const EXPORT_CHUNK: u64 = 1024;
/// Certificates read from the store per query.
const CERTIFICATE_PAGE: usize = 512;

/// What `audit export` reads of the stored certificates, besides the log. Implementations:
/// `store::sqlite::export` and `store::postgres::export`.
///
/// Contract: `certificates_after(after, limit)` returns at most `limit` stored certificates whose
/// serial sorts bytewise after `after` (every one when `None`), in ascending serial order, each as
/// committed, with the log position of the entry its row references. Certificates are never
/// deleted, so the pages together hold every certificate committed before the first page was read.
/// A row no correct write could store (a key fingerprint that is not 32 bytes, an invalid user id)
/// is `StoreError::Corrupt` naming its serial.
pub trait CertificateExport: Send + Sync + 'static {
    /// One page of certificates in serial order (see the contract).
    fn certificates_after(
        &self,
        after: Option<SerialNumber>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ExportedCertificate>, StoreError>> + Send;
}

/// A stored certificate as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedCertificate {
    /// Its serial (the table's key).
    pub serial: SerialNumber,
    /// Whose it is, as stored.
    pub user_id: UserId,
    /// The certified key's fingerprint, as stored.
    pub key_fingerprint: KeyFingerprint,
    /// The certificate, DER, as stored.
    pub certificate_der: Vec<u8>,
    /// The entry the row references.
    pub entry: EntryLink,
}

impl ExportedCertificate {
    /// Builds one from a store's columns: serial, user id, key fingerprint, DER, and the entry the
    /// row references (`None`: no stored entry; `Some(None)`: not sequenced yet; `Some(Some(i))`:
    /// log index `i`). A value no correct write could store is `StoreError::Corrupt` naming the
    /// serial (a row codec both stores share, beside the type it builds). The user id is read as
    /// `UserId::from_stored` reads it, so a certificate enrolled under the earlier id rule is
    /// exported and checked too.
    pub fn from_columns(
        serial: Vec<u8>,
        user_id: &str,
        key_fingerprint: &[u8],
        certificate_der: Vec<u8>,
        entry: Option<Option<i64>>,
    ) -> Result<ExportedCertificate, StoreError> {
        let serial = SerialNumber::from_bytes(serial);
        let corrupt = |what: &str| StoreError::Corrupt(format!("stored certificate {}: {what}", serial.to_hex()));
        let user_id = UserId::from_stored(user_id).map_err(|_| corrupt("the user id is invalid"))?;
        let key_fingerprint = KeyFingerprint::from_bytes(key_fingerprint)
            .ok_or_else(|| corrupt("the key fingerprint is not 32 bytes"))?;
        let entry = match entry {
            None => EntryLink::Missing,
            Some(None) => EntryLink::Pending,
            Some(Some(index)) => {
                EntryLink::Logged(u64::try_from(index).map_err(|_| corrupt("its entry's log index is negative"))?)
            }
        };
        Ok(ExportedCertificate {
            serial,
            user_id,
            key_fingerprint,
            certificate_der,
            entry,
        })
    }
}

/// Where the entry a stored certificate references stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryLink {
    /// The row references no stored entry.
    Missing,
    /// The entry is in the outbox, without a log index yet.
    Pending,
    /// The entry's log index.
    Logged(u64),
}

impl EntryLink {
    /// Whether the entry lies outside a log of `size` entries (not sequenced, or sequenced later).
    pub fn beyond(self, size: u64) -> bool {
        match self {
            EntryLink::Missing => false,
            EntryLink::Pending => true,
            EntryLink::Logged(index) => index >= size,
        }
    }
}

impl std::fmt::Display for EntryLink {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntryLink::Missing => formatter.write_str("no stored entry"),
            EntryLink::Pending => formatter.write_str("an entry not sequenced yet"),
            EntryLink::Logged(index) => write!(formatter, "entry {index}"),
        }
    }
}

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
    /// A certificate's serial or DER does not fit its length prefix.
    #[error("stored certificate {0}: its serial or DER is too long for {CERTIFICATES_FILE}")]
    CertificateTooLong(String),
    /// The store returned certificates out of serial order (its pages would skip or repeat rows).
    #[error("the store returned certificate {0} out of serial order")]
    CertificatesUnordered(String),
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

/// What `export_certificates` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificatesSummary {
    /// Certificates written.
    pub certificates: u64,
    /// Of those, the ones whose entry lies beyond the exported checkpoint (or has no index yet):
    /// the verifier cannot check them against this export.
    pub beyond_checkpoint: u64,
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
/// given) the vkey into `dir` (created if missing; existing export files are replaced, and a
/// `certificates.bin` of an earlier export is removed: `export_certificates` writes this one's).
pub async fn export<L: LogReader>(
    store: &L,
    dir: &Path,
    vkey: Option<&VerifierKey>,
) -> Result<ExportSummary, ExportError> {
    let checkpoint = store.latest_checkpoint().await?.ok_or(ExportError::NoCheckpoint)?;
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    remove_stale(&dir.join(CERTIFICATES_FILE))?;
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

/// Writes `certificates.bin` into `dir`: every stored certificate, paged by serial (bounded memory),
/// counting those whose entry lies beyond a checkpoint of `checkpoint_size` entries. Run after
/// `export`, so that every certificate an exported entry records is included.
pub async fn export_certificates<C: CertificateExport>(
    store: &C,
    dir: &Path,
    checkpoint_size: u64,
) -> Result<CertificatesSummary, ExportError> {
    let mut file = ExportFile::create(dir, CERTIFICATES_FILE, CERTIFICATES_MAGIC)?;
    let mut summary = CertificatesSummary {
        certificates: 0,
        beyond_checkpoint: 0,
    };
    let mut after: Option<SerialNumber> = None;
    loop {
        let page = store.certificates_after(after.clone(), CERTIFICATE_PAGE).await?;
        let full = page.len() == CERTIFICATE_PAGE;
        for certificate in page {
            if after
                .as_ref()
                .is_some_and(|previous| previous.as_bytes() >= certificate.serial.as_bytes())
            {
                return Err(ExportError::CertificatesUnordered(certificate.serial.to_hex()));
            }
            file.write(&encode_certificate(&certificate)?)?;
            summary.certificates += 1;
            if certificate.entry.beyond(checkpoint_size) {
                summary.beyond_checkpoint += 1;
            }
            after = Some(certificate.serial);
        }
        if !full {
            break;
        }
    }
    file.finish()?;
    Ok(summary)
}

/// One record of `certificates.bin` (see the module docs).
fn encode_certificate(certificate: &ExportedCertificate) -> Result<Vec<u8>, ExportError> {
    let too_long = || ExportError::CertificateTooLong(certificate.serial.to_hex());
    let serial = certificate.serial.as_bytes();
    let user = certificate.user_id.as_str().as_bytes();
    let der = &certificate.certificate_der;
    let (state, index) = match certificate.entry {
        EntryLink::Missing => (0u8, 0u64),
        EntryLink::Pending => (1, 0),
        EntryLink::Logged(index) => (2, index),
    };
    let mut record = Vec::with_capacity(9 + 2 + serial.len() + 2 + user.len() + 32 + 4 + der.len());
    record.push(state);
    record.extend_from_slice(&index.to_be_bytes());
    record.extend_from_slice(&u16::try_from(serial.len()).map_err(|_| too_long())?.to_be_bytes());
    record.extend_from_slice(serial);
    record.extend_from_slice(&u16::try_from(user.len()).map_err(|_| too_long())?.to_be_bytes());
    record.extend_from_slice(user);
    record.extend_from_slice(certificate.key_fingerprint.as_bytes());
    record.extend_from_slice(&u32::try_from(der.len()).map_err(|_| too_long())?.to_be_bytes());
    record.extend_from_slice(der);
    Ok(record)
}
