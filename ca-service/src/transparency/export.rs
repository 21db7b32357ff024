//! Offline audit of the transparency log: the export directory format, writing it from a `LogReader`, and verifying it with `tlog` alone.
//!
//! An export directory (written by `ca-service audit export`, read by `ca-service audit verify`):
//! - `entries.bin`: the sequenced entries `[0, size)` of the exported checkpoint, in index order.
//!   It starts with the line `e2ee-ca log entries v1\n`; then, per entry, its log index (8 bytes,
//!   big-endian), its length (4 bytes, big-endian) and its exact stored bytes (the leaf data). The
//!   index is explicit so that a deleted, duplicated or reordered record is named by the verifier.
//! - `checkpoint.txt`: the latest signed checkpoint, verbatim (a C2SP signed note).
//! - `vkey.txt`: the log's verifier key, when the exporter was given it. Informational only: the
//!   verifier trusts the key the auditor passes (`--trusted-key`), never this file.
//!
//! Verification needs no database and no HSM: the checkpoint must verify under the trusted key
//! (its origin is the key's name), the indices must be 0, 1, 2, … without a gap, every entry's
//! `time` line must not go back by more than a tolerance, the RFC 6962 root recomputed from the
//! entries (`tlog::merkle::Frontier`) must equal the checkpoint's root at the checkpoint's size,
//! and a pinned earlier checkpoint, if any, must verify and be consistent with the recomputed tree
//! (a consistency proof computed from the exported leaf hashes, checked with
//! `tlog::proof::verify_consistency`).

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tlog::checkpoint::{OpenError, SignedCheckpoint};
use tlog::key::VerifierKey;
use tlog::merkle::{Frontier, Hash, leaf_hash};
use tlog::note::{NoteError, SignedNote};

use super::LogReader;
use crate::storage::StoreError;

/// The entries file of an export.
pub const ENTRIES_FILE: &str = "entries.bin";
/// The checkpoint file of an export.
pub const CHECKPOINT_FILE: &str = "checkpoint.txt";
/// The (informational) verifier key file of an export.
pub const VKEY_FILE: &str = "vkey.txt";
/// The first line of `entries.bin`.
pub const ENTRIES_MAGIC: &[u8] = b"e2ee-ca log entries v1\n";

/// Entries read from the store per query.
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
    /// Whether `vkey.txt` was written.
    pub vkey_written: bool,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the latest signed checkpoint, the entries it covers and (if given) the vkey into `dir`
/// (created if missing; existing export files are replaced).
pub async fn export<L: LogReader>(
    store: &L,
    dir: &Path,
    vkey: Option<&VerifierKey>,
) -> Result<ExportSummary, ExportError> {
    let checkpoint = store.latest_checkpoint().await?.ok_or(ExportError::NoCheckpoint)?;
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let entries_path = dir.join(ENTRIES_FILE);
    let file = fs::File::create(&entries_path).map_err(io_error(&entries_path))?;
    let mut out = BufWriter::new(file);
    out.write_all(ENTRIES_MAGIC).map_err(io_error(&entries_path))?;
    let mut start = 0u64;
    while start < checkpoint.size {
        let end = checkpoint.size.min(start.saturating_add(EXPORT_CHUNK));
        let entries = store.entries(start, end).await?;
        if entries.len() as u64 != end - start {
            return Err(ExportError::MissingEntries {
                start,
                end,
                got: entries.len(),
            });
        }
        for (index, bytes) in (start..end).zip(entries) {
            let length = u32::try_from(bytes.len()).map_err(|_| ExportError::EntryTooLong(index))?;
            out.write_all(&index.to_be_bytes()).map_err(io_error(&entries_path))?;
            out.write_all(&length.to_be_bytes()).map_err(io_error(&entries_path))?;
            out.write_all(&bytes).map_err(io_error(&entries_path))?;
        }
        start = end;
    }
    let file = out
        .into_inner()
        .map_err(|error| io_error(&entries_path)(error.into_error()))?;
    file.sync_all().map_err(io_error(&entries_path))?;
    let checkpoint_path = dir.join(CHECKPOINT_FILE);
    fs::write(&checkpoint_path, checkpoint.note.as_bytes()).map_err(io_error(&checkpoint_path))?;
    if let Some(vkey) = vkey {
        let vkey_path = dir.join(VKEY_FILE);
        fs::write(&vkey_path, format!("{vkey}\n")).map_err(io_error(&vkey_path))?;
    }
    Ok(ExportSummary {
        entries: checkpoint.size,
        vkey_written: vkey.is_some(),
    })
}

/// One exported entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedEntry {
    /// The index the record states.
    pub index: u64,
    /// The exact entry bytes.
    pub bytes: Vec<u8>,
}

/// Why an export failed verification; each variant names the file, entry or checkpoint at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyFailure {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file is not a signed note.
    #[error("{which} checkpoint ({path}) is not a signed note")]
    CheckpointUnreadable {
        /// "exported" or "pinned".
        which: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: NoteError,
    },
    /// A checkpoint does not verify under the trusted key (or is from another log).
    #[error("{which} checkpoint ({path}) is rejected under the trusted key")]
    CheckpointRejected {
        /// "exported" or "pinned".
        which: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: OpenError,
    },
    /// `entries.bin` does not start with the format line.
    #[error(
        "{ENTRIES_FILE} does not start with the format line {:?}",
        String::from_utf8_lossy(ENTRIES_MAGIC)
    )]
    BadMagic,
    /// `entries.bin` ends inside a record.
    #[error("{ENTRIES_FILE} ends inside the record at position {position} (byte offset {offset})")]
    TruncatedRecord {
        /// 0-based position of the record in the file.
        position: u64,
        /// Byte offset where the record starts.
        offset: usize,
    },
    /// A record's index is not the next one: an entry was deleted, duplicated or reordered.
    #[error(
        "entry index {found} at position {position}, expected index {expected}: an entry is missing, duplicated or out of order"
    )]
    IndexGap {
        /// 0-based position of the record in the file.
        position: u64,
        /// The index the record states.
        found: u64,
        /// The index it should state.
        expected: u64,
    },
    /// An entry has no parsable `time` line.
    #[error("entry {index}: no valid `time <RFC 3339>` line")]
    NoTime {
        /// The entry's index.
        index: u64,
    },
    /// An entry's time goes back past the tolerance.
    #[error("entry {index}: time {time} is before entry {previous_index}'s time {previous} (more than the tolerance)")]
    TimeBackwards {
        /// The entry's index.
        index: u64,
        /// Its time.
        time: String,
        /// The index of the latest earlier time.
        previous_index: u64,
        /// That time.
        previous: String,
    },
    /// The checkpoint covers more (or fewer) entries than exported.
    #[error(
        "exported checkpoint claims size {checkpoint_size} but {ENTRIES_FILE} holds {entries} entries{}",
        if entries < checkpoint_size { format!(" (entries {entries}..{checkpoint_size} are missing)") } else { String::new() }
    )]
    SizeMismatch {
        /// The checkpoint's size.
        checkpoint_size: u64,
        /// Entries in the file.
        entries: u64,
    },
    /// The recomputed root differs from the checkpoint's: some entry in `[0, size)` was changed.
    #[error(
        "exported checkpoint (size {size}) does not match the entries: the root recomputed from entries 0..{size} differs, so an entry's bytes were changed{}",
        match suspect { Some((start, end)) => format!(" (the change is in entries {start}..{end}, per the pinned checkpoint)"), None => String::new() }
    )]
    RootMismatch {
        /// The checkpoint's size.
        size: u64,
        /// The range the change lies in, when a pinned checkpoint narrows it down.
        suspect: Option<(u64, u64)>,
    },
    /// The pinned checkpoint is larger than the export: the log was rolled back.
    #[error(
        "pinned checkpoint (size {pinned}) is larger than the exported checkpoint (size {size}): the log was rolled back"
    )]
    RolledBack {
        /// The pinned size.
        pinned: u64,
        /// The exported size.
        size: u64,
    },
    /// The pinned checkpoint is not a prefix of the exported tree: the log was rewritten (a fork).
    #[error(
        "pinned checkpoint (size {pinned}) is not consistent with the exported checkpoint (size {size}): the log was rewritten"
    )]
    Inconsistent {
        /// The pinned size.
        pinned: u64,
        /// The exported size.
        size: u64,
    },
}

/// What the auditor supplies.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The log's key as the auditor trusts it; its name is the log's origin.
    pub trusted_key: VerifierKey,
    /// An earlier checkpoint the auditor pinned (signed note text) and where it came from.
    pub pinned: Option<(PathBuf, String)>,
    /// How far an entry's time may go back behind an earlier entry's (entries committed
    /// concurrently are sequenced in commit order, not in the order of their timestamps).
    pub time_tolerance: Duration,
}

/// What passed, one line per check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The exported checkpoint's size.
    pub size: u64,
    /// Human-readable lines, one per passed check.
    pub passed: Vec<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, VerifyFailure> {
    fs::read(path).map_err(|source| VerifyFailure::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn open_checkpoint(
    which: &'static str,
    path: &Path,
    text: &str,
    key: &VerifierKey,
) -> Result<SignedCheckpoint, VerifyFailure> {
    let note = SignedNote::parse(text).map_err(|source| VerifyFailure::CheckpointUnreadable {
        which,
        path: path.to_path_buf(),
        source,
    })?;
    SignedCheckpoint::open(note, key.name().as_str(), std::slice::from_ref(key)).map_err(|source| {
        VerifyFailure::CheckpointRejected {
            which,
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Parses `entries.bin`; checks the format line, whole records and contiguous indices from 0.
pub fn parse_entries(data: &[u8]) -> Result<Vec<ExportedEntry>, VerifyFailure> {
    let mut rest = data.strip_prefix(ENTRIES_MAGIC).ok_or(VerifyFailure::BadMagic)?;
    let mut entries = Vec::new();
    let mut offset = ENTRIES_MAGIC.len();
    while !rest.is_empty() {
        let position = entries.len() as u64;
        let truncated = VerifyFailure::TruncatedRecord { position, offset };
        let (index, after) = rest.split_first_chunk::<8>().ok_or(truncated)?;
        let truncated = VerifyFailure::TruncatedRecord { position, offset };
        let (length, after) = after.split_first_chunk::<4>().ok_or(truncated)?;
        let index = u64::from_be_bytes(*index);
        let length = u32::from_be_bytes(*length) as usize;
        if after.len() < length {
            return Err(VerifyFailure::TruncatedRecord { position, offset });
        }
        let (bytes, after) = after.split_at(length);
        if index != position {
            return Err(VerifyFailure::IndexGap {
                position,
                found: index,
                expected: position,
            });
        }
        entries.push(ExportedEntry {
            index,
            bytes: bytes.to_vec(),
        });
        offset += 12 + length;
        rest = after;
    }
    Ok(entries)
}

/// The `time` line of an audit entry.
fn entry_time(bytes: &[u8]) -> Option<OffsetDateTime> {
    let text = std::str::from_utf8(bytes).ok()?;
    let value = text.lines().find_map(|line| line.strip_prefix("time "))?;
    OffsetDateTime::parse(value, &Rfc3339).ok()
}

fn format_time(time: OffsetDateTime) -> String {
    time.format(&Rfc3339)
        .unwrap_or_else(|_| time.unix_timestamp().to_string())
}

/// Verifies the export in `dir` (see the module doc for the checks).
pub fn verify(dir: &Path, options: &VerifyOptions) -> Result<VerifyReport, VerifyFailure> {
    let mut passed = Vec::new();
    let key = &options.trusted_key;
    let checkpoint_path = dir.join(CHECKPOINT_FILE);
    let checkpoint_text = String::from_utf8_lossy(&read(&checkpoint_path)?).into_owned();
    let checkpoint = open_checkpoint("exported", &checkpoint_path, &checkpoint_text, key)?;
    let size = checkpoint.checkpoint().size();
    passed.push(format!(
        "exported checkpoint: signature verifies under {} (origin {}, size {size})",
        key,
        key.name().as_str()
    ));

    let pinned = match &options.pinned {
        Some((path, text)) => {
            let pinned = open_checkpoint("pinned", path, text, key)?;
            passed.push(format!(
                "pinned checkpoint: signature verifies (size {})",
                pinned.checkpoint().size()
            ));
            if pinned.checkpoint().size() > size {
                return Err(VerifyFailure::RolledBack {
                    pinned: pinned.checkpoint().size(),
                    size,
                });
            }
            Some(pinned)
        }
        None => None,
    };

    let entries = parse_entries(&read(&dir.join(ENTRIES_FILE))?)?;
    passed.push(format!(
        "{ENTRIES_FILE}: {} records with contiguous indices from 0",
        entries.len()
    ));

    let mut latest: Option<(u64, OffsetDateTime)> = None;
    for entry in &entries {
        let time = entry_time(&entry.bytes).ok_or(VerifyFailure::NoTime { index: entry.index })?;
        if let Some((previous_index, previous)) = latest {
            if time + options.time_tolerance < previous {
                return Err(VerifyFailure::TimeBackwards {
                    index: entry.index,
                    time: format_time(time),
                    previous_index,
                    previous: format_time(previous),
                });
            }
            if time <= previous {
                continue;
            }
        }
        latest = Some((entry.index, time));
    }
    passed.push(format!(
        "entry times never go back (tolerance {} ms)",
        options.time_tolerance.as_millis()
    ));

    if entries.len() as u64 != size {
        return Err(VerifyFailure::SizeMismatch {
            checkpoint_size: size,
            entries: entries.len() as u64,
        });
    }
    let leaves: Vec<Hash> = entries.iter().map(|entry| leaf_hash(&entry.bytes)).collect();
    let mut frontier = Frontier::new();
    let mut root_at_pinned = None;
    for leaf in &leaves {
        if let Some(pinned) = &pinned
            && frontier.size() == pinned.checkpoint().size()
        {
            root_at_pinned = Some(frontier.root());
        }
        // A Vec cannot hold u64::MAX leaves, so the frontier is never full.
        frontier.push(*leaf).map_err(|_| VerifyFailure::SizeMismatch {
            checkpoint_size: size,
            entries: entries.len() as u64,
        })?;
    }
    if frontier.root() != *checkpoint.checkpoint().root_hash() {
        // A pinned checkpoint tells whether the change is before or after its size.
        let suspect = pinned.as_ref().and_then(|pinned| {
            let pinned_size = pinned.checkpoint().size();
            let pinned_root = if pinned_size == size {
                Some(frontier.root())
            } else {
                root_at_pinned
            };
            match pinned_root {
                Some(root) if root == *pinned.checkpoint().root_hash() => Some((pinned_size, size)),
                Some(_) => Some((0, pinned_size)),
                None => None,
            }
        });
        return Err(VerifyFailure::RootMismatch { size, suspect });
    }
    passed.push(format!(
        "root recomputed from entries 0..{size} equals the exported checkpoint's root"
    ));

    if let Some(pinned) = &pinned {
        let pinned_size = pinned.checkpoint().size();
        let inconsistent = || VerifyFailure::Inconsistent {
            pinned: pinned_size,
            size,
        };
        // The leaf hashes cover [0, size) and pinned_size <= size, so the proof can always be
        // built; a failure would still be reported as an inconsistency, never as a pass.
        let proof = tlog::proof::consistency_proof(leaves.as_slice(), pinned_size, size).map_err(|_| inconsistent())?;
        tlog::proof::verify_consistency(
            pinned_size,
            size,
            pinned.checkpoint().root_hash(),
            checkpoint.checkpoint().root_hash(),
            &proof,
        )
        .map_err(|_| inconsistent())?;
        passed.push(format!(
            "pinned checkpoint (size {pinned_size}) is consistent with the exported checkpoint (size {size})"
        ));
    }
    Ok(VerifyReport { size, passed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(index: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = index.to_be_bytes().to_vec();
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn records_parse_and_gaps_and_truncation_are_named() {
        let mut data = ENTRIES_MAGIC.to_vec();
        data.extend(record(0, b"a"));
        data.extend(record(1, b"bc"));
        let entries = parse_entries(&data).expect("parses");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].bytes, b"bc");

        let mut gap = ENTRIES_MAGIC.to_vec();
        gap.extend(record(0, b"a"));
        gap.extend(record(2, b"c"));
        assert!(matches!(
            parse_entries(&gap),
            Err(VerifyFailure::IndexGap {
                position: 1,
                found: 2,
                expected: 1
            })
        ));
        assert!(matches!(
            parse_entries(&data[..data.len() - 1]),
            Err(VerifyFailure::TruncatedRecord { position: 1, .. })
        ));
        assert!(matches!(parse_entries(b"nope"), Err(VerifyFailure::BadMagic)));
    }

    #[test]
    fn entry_times_are_read_from_the_time_line() {
        let time = entry_time(b"e2ee-ca audit entry v1\nkind x\ntime 2026-01-02T03:04:05.5Z\n").expect("time");
        assert_eq!(time.unix_timestamp(), 1_767_323_045);
        assert!(entry_time(b"no time here\n").is_none());
    }
}
