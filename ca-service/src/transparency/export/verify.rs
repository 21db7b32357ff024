//! `audit verify`: an export directory checked with `tlog` alone, no database and no HSM, streaming over the entries once.
//!
//! The checks, in the order their failures are reported:
//! 1. the exported checkpoint verifies under the trusted key (its origin is the key's name); a
//!    pinned earlier checkpoint verifies too and is not larger (a rollback);
//! 2. `certificates.bin`, if present, is well formed (read first, into a table by serial);
//! 3. per record of `entries.bin`: the indices are 0, 1, 2, … without a gap, and the entry's `time`
//!    does not go back by more than the tolerance;
//! 4. the checkpoint's size is the number of entries, and the RFC 6962 root recomputed from them
//!    (`tlog::merkle::Frontier`) is the checkpoint's root. If it is not and `leaves.bin` is
//!    present, the stored leaf hashes tell which entry changed: when their root is the signed one,
//!    they are authenticated, and the first index where an entry's leaf hash differs from the
//!    stored one is the entry altered after it was logged. When the roots match, the stored leaves
//!    must equal the entries' (else the store's tree was changed);
//! 5. a pinned checkpoint is a prefix of the recomputed tree (the root over its first `size`
//!    entries is its root: the consistency proof computed from the leaves would show no more);
//! 6. every entry parses, and the key history replays (`replay`);
//! 7. every stored certificate matches the entry that records it (`certificates`).
//!
//! The failures of 6 and 7 are found during the same pass but reported after 4 and 5, so that an
//! entry changed in the export is named as changed, not as whatever its new bytes claim.
//!
//! Memory: the replay's per-user state and the certificate table; one entry at a time.

use std::fs;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tlog::checkpoint::{OpenError, SignedCheckpoint};
use tlog::key::VerifierKey;
use tlog::merkle::{Frontier, Hash, leaf_hash};
use tlog::note::{NoteError, SignedNote};

use super::certificates::{CertificateCounts, CertificateFailure, CertificateTable};
use super::replay::{HistoryCounts, Replay, ReplayFailure};
use super::{CERTIFICATES_FILE, CHECKPOINT_FILE, ENTRIES_FILE, ENTRIES_MAGIC, LEAVES_FILE, LEAVES_MAGIC};
use crate::audit::{EntryParseError, ParsedEntry};

/// One exported entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedEntry {
    /// The index the record states.
    pub index: u64,
    /// The exact entry bytes.
    pub bytes: Vec<u8>,
}

/// What the stored leaf hashes (`leaves.bin`) say when the entries do not lead to the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredTree {
    /// The export has no `leaves.bin`.
    NotExported,
    /// The stored leaves do not lead to the signed root either.
    Differs,
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
        offset: u64,
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
    /// `leaves.bin` does not start with its format line.
    #[error(
        "{LEAVES_FILE} does not start with the format line {:?}",
        String::from_utf8_lossy(LEAVES_MAGIC)
    )]
    LeavesBadMagic,
    /// `leaves.bin` holds another number of leaf hashes than the checkpoint's size.
    #[error(
        "{LEAVES_FILE} holds {leaves} whole leaf hashes (and {extra} bytes more), the exported checkpoint covers {size}"
    )]
    LeavesSizeMismatch {
        /// Whole 32-byte hashes in the file.
        leaves: u64,
        /// Bytes after the last whole hash.
        extra: u64,
        /// The checkpoint's size.
        size: u64,
    },
    /// The recomputed root differs from the checkpoint's, and the stored leaves cannot say where.
    #[error(
        "exported checkpoint (size {size}) does not match the entries: the root recomputed from entries 0..{size} differs, so an entry's bytes were changed{}{}",
        match suspect { Some((start, end)) => format!(" (the change is in entries {start}..{end}, per the pinned checkpoint)"), None => String::new() },
        match stored { StoredTree::Differs => "; the stored leaf hashes (leaves.bin) do not lead to the checkpoint's root either", StoredTree::NotExported => "" }
    )]
    RootMismatch {
        /// The checkpoint's size.
        size: u64,
        /// The range the change lies in, when a pinned checkpoint narrows it down.
        suspect: Option<(u64, u64)>,
        /// What the stored leaves say.
        stored: StoredTree,
    },
    /// The stored leaves lead to the signed root, and this entry's leaf hash is not the stored one.
    #[error(
        "entry {index} was altered after it was logged: its leaf hash differs from the stored tree's leaf {index}, and the stored leaves (leaves.bin) lead to the exported checkpoint's root (size {size})"
    )]
    AlteredEntry {
        /// The first altered entry's index.
        index: u64,
        /// The checkpoint's size.
        size: u64,
    },
    /// The entries match the checkpoint, but a stored leaf hash does not match its entry.
    #[error(
        "the stored tree's leaf {index} (leaves.bin) differs from entry {index}'s leaf hash, although the entries match the exported checkpoint: the store's tree was changed"
    )]
    StoredLeafDiffers {
        /// The first differing index.
        index: u64,
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
    /// A logged entry is not an audit entry the service writes.
    #[error("entry {index} is not a well-formed audit entry")]
    Unparsable {
        /// The entry's index.
        index: u64,
        /// Why.
        #[source]
        source: EntryParseError,
    },
    /// The key history does not replay (boxed: the largest failure, and the rarest).
    #[error(transparent)]
    History(#[from] Box<ReplayFailure>),
    /// `certificates.bin` does not start with its format line.
    #[error(
        "{CERTIFICATES_FILE} does not start with the format line {:?}",
        String::from_utf8_lossy(super::CERTIFICATES_MAGIC)
    )]
    CertificatesBadMagic,
    /// A record of `certificates.bin` is malformed.
    #[error("{CERTIFICATES_FILE}: the record at position {position} is malformed: {what}")]
    CertificatesMalformed {
        /// 0-based position of the record in the file.
        position: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// The stored certificates do not match the log.
    #[error(transparent)]
    Certificate(#[from] CertificateFailure),
}

/// What the auditor supplies.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The log's key as the auditor trusts it; its name is the log's origin.
    pub trusted_key: VerifierKey,
    /// An earlier checkpoint the auditor pinned (signed note text) and where it came from.
    pub pinned: Option<(PathBuf, String)>,
    /// How far an entry's time may go back behind an earlier entry's (entries committed
    /// concurrently are sequenced in commit order, not in the order of their timestamps), and how
    /// far an approval or reset may pass its request's expiry.
    pub time_tolerance: Duration,
}

/// What passed, one line per check, and the counts behind them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The exported checkpoint's size.
    pub size: u64,
    /// Human-readable lines, one per passed check (or per check the export could not support).
    pub passed: Vec<String>,
    /// What the key-history replay saw.
    pub history: HistoryCounts,
    /// The certificate check's counts; `None` when the export has no `certificates.bin`.
    pub certificates: Option<CertificateCounts>,
    /// Whether the export had `leaves.bin` (and its leaves equal the entries').
    pub leaves_checked: bool,
}

fn io_failure(path: &Path) -> impl FnOnce(std::io::Error) -> VerifyFailure + '_ {
    move |source| VerifyFailure::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads from `reader` until `buffer` is full or the file ends; returns how many bytes it read.
pub(super) fn fill(reader: &mut impl Read, buffer: &mut [u8], path: &Path) -> Result<usize, VerifyFailure> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => return Err(io_failure(path)(source)),
        }
    }
    Ok(filled)
}

/// The records of `entries.bin`, read one at a time: checks the format line, whole records and
/// contiguous indices from 0.
struct EntryRecords<R: Read> {
    reader: R,
    path: PathBuf,
    position: u64,
    offset: u64,
}

impl EntryRecords<BufReader<fs::File>> {
    /// Opens `entries.bin` at `path`.
    fn open(path: &Path) -> Result<Self, VerifyFailure> {
        let file = fs::File::open(path).map_err(io_failure(path))?;
        EntryRecords::new(BufReader::new(file), path)
    }
}

impl<R: Read> EntryRecords<R> {
    /// Reads the format line from `reader` (the contents of `path`).
    fn new(mut reader: R, path: &Path) -> Result<Self, VerifyFailure> {
        let mut magic = vec![0u8; ENTRIES_MAGIC.len()];
        if fill(&mut reader, &mut magic, path)? != magic.len() || magic != ENTRIES_MAGIC {
            return Err(VerifyFailure::BadMagic);
        }
        Ok(EntryRecords {
            reader,
            path: path.to_path_buf(),
            position: 0,
            offset: ENTRIES_MAGIC.len() as u64,
        })
    }

    /// The next record; `None` at the end of the file.
    fn next_entry(&mut self) -> Result<Option<ExportedEntry>, VerifyFailure> {
        let truncated = VerifyFailure::TruncatedRecord {
            position: self.position,
            offset: self.offset,
        };
        let mut head = [0u8; 12];
        match fill(&mut self.reader, &mut head, &self.path)? {
            0 => return Ok(None),
            12 => {}
            _ => return Err(truncated),
        }
        let (mut index, mut length) = ([0u8; 8], [0u8; 4]);
        index.copy_from_slice(&head[..8]);
        length.copy_from_slice(&head[8..]);
        let (index, length) = (u64::from_be_bytes(index), u32::from_be_bytes(length));
        let mut bytes = Vec::new();
        (&mut self.reader)
            .take(u64::from(length))
            .read_to_end(&mut bytes)
            .map_err(io_failure(&self.path))?;
        if bytes.len() as u64 != u64::from(length) {
            return Err(truncated);
        }
        if index != self.position {
            return Err(VerifyFailure::IndexGap {
                position: self.position,
                found: index,
                expected: self.position,
            });
        }
        self.position += 1;
        self.offset += 12 + u64::from(length);
        Ok(Some(ExportedEntry { index, bytes }))
    }
}

/// `leaves.bin`, read in step with the entries: the stored leaves' own root, and the first index
/// where a stored leaf differs from the entry's.
struct StoredLeaves {
    reader: BufReader<fs::File>,
    path: PathBuf,
    frontier: Frontier,
    /// Whole hashes read.
    read: u64,
    /// Once the file ended before the entries did: the bytes of its last, partial hash.
    ended: Option<u64>,
    first_difference: Option<u64>,
}

/// What the stored leaves say, once all entries were read.
struct StoredLeavesSeen {
    /// The root over the stored leaves.
    root: Hash,
    /// The first index whose stored leaf is not the entry's leaf hash.
    first_difference: Option<u64>,
}

impl StoredLeaves {
    /// Opens `leaves.bin` in `dir`; `None` when the export has none.
    fn open(dir: &Path) -> Result<Option<StoredLeaves>, VerifyFailure> {
        let path = dir.join(LEAVES_FILE);
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(VerifyFailure::Io { path, source }),
        };
        let mut reader = BufReader::new(file);
        let mut magic = vec![0u8; LEAVES_MAGIC.len()];
        if fill(&mut reader, &mut magic, &path)? != magic.len() || magic != LEAVES_MAGIC {
            return Err(VerifyFailure::LeavesBadMagic);
        }
        Ok(Some(StoredLeaves {
            reader,
            path,
            frontier: Frontier::new(),
            read: 0,
            ended: None,
            first_difference: None,
        }))
    }

    /// Compares the stored leaf of entry `index` (the next one) with the entry's `leaf`.
    fn compare(&mut self, index: u64, leaf: &Hash) -> Result<(), VerifyFailure> {
        if self.ended.is_some() {
            return Ok(());
        }
        let mut stored: Hash = [0u8; 32];
        let got = fill(&mut self.reader, &mut stored, &self.path)?;
        if got < stored.len() {
            self.ended = Some(got as u64);
            return Ok(());
        }
        self.read += 1;
        // No more leaves than entries are pushed, and a file cannot hold u64::MAX entries.
        self.frontier
            .push(stored)
            .map_err(|_| VerifyFailure::LeavesSizeMismatch {
                leaves: self.read,
                extra: 0,
                size: index,
            })?;
        if stored != *leaf && self.first_difference.is_none() {
            self.first_difference = Some(index);
        }
        Ok(())
    }

    /// After the last of `size` entries: the file must hold exactly `size` hashes.
    fn finish(mut self, size: u64) -> Result<StoredLeavesSeen, VerifyFailure> {
        let extra = match self.ended {
            Some(extra) => extra,
            None => std::io::copy(&mut self.reader, &mut std::io::sink()).map_err(io_failure(&self.path))?,
        };
        if self.read != size || extra != 0 {
            return Err(VerifyFailure::LeavesSizeMismatch {
                leaves: self.read + extra / 32,
                extra: extra % 32,
                size,
            });
        }
        Ok(StoredLeavesSeen {
            root: self.frontier.root(),
            first_difference: self.first_difference,
        })
    }
}

/// Parses a whole `entries.bin` held in memory (`verify` streams it instead); checks the format
/// line, whole records and contiguous indices from 0.
pub fn parse_entries(data: &[u8]) -> Result<Vec<ExportedEntry>, VerifyFailure> {
    let mut records = EntryRecords::new(data, Path::new(ENTRIES_FILE))?;
    let mut entries = Vec::new();
    while let Some(entry) = records.next_entry()? {
        entries.push(entry);
    }
    Ok(entries)
}

/// Opens a checkpoint note and verifies it under `key`.
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

/// Verifies the export in `dir` (see the module docs for the checks and their order).
pub fn verify(dir: &Path, options: &VerifyOptions) -> Result<VerifyReport, VerifyFailure> {
    let mut passed = Vec::new();
    let key = &options.trusted_key;
    let checkpoint_path = dir.join(CHECKPOINT_FILE);
    let checkpoint_text =
        String::from_utf8_lossy(&fs::read(&checkpoint_path).map_err(io_failure(&checkpoint_path))?).into_owned();
    let checkpoint = open_checkpoint("exported", &checkpoint_path, &checkpoint_text, key)?;
    let size = checkpoint.checkpoint().size();
    let signed_root = *checkpoint.checkpoint().root_hash();
    passed.push(format!(
        "exported checkpoint: signature verifies under {} (origin {}, size {size})",
        key,
        key.name().as_str()
    ));

    let pinned = match &options.pinned {
        Some((path, text)) => {
            let pinned = open_checkpoint("pinned", path, text, key)?;
            let pinned_size = pinned.checkpoint().size();
            passed.push(format!("pinned checkpoint: signature verifies (size {pinned_size})"));
            if pinned_size > size {
                return Err(VerifyFailure::RolledBack {
                    pinned: pinned_size,
                    size,
                });
            }
            Some((pinned_size, *pinned.checkpoint().root_hash()))
        }
        None => None,
    };

    let mut certificates = CertificateTable::read(dir)?;
    let mut leaves = StoredLeaves::open(dir)?;
    let mut records = EntryRecords::open(&dir.join(ENTRIES_FILE))?;
    let mut replay = Replay::new(options.time_tolerance);
    // The first failure of the replay and of the certificate check: reported after the root.
    let mut history_failure: Option<VerifyFailure> = None;
    let mut certificate_failure: Option<CertificateFailure> = None;
    let mut frontier = Frontier::new();
    let mut root_at_pinned = None;
    let mut latest: Option<(u64, OffsetDateTime)> = None;
    while let Some(entry) = records.next_entry()? {
        let index = entry.index;
        let time = entry_time(&entry.bytes).ok_or(VerifyFailure::NoTime { index })?;
        match latest {
            Some((previous_index, previous)) if time + options.time_tolerance < previous => {
                return Err(VerifyFailure::TimeBackwards {
                    index,
                    time: format_time(time),
                    previous_index,
                    previous: format_time(previous),
                });
            }
            Some((_, previous)) if time <= previous => {}
            _ => latest = Some((index, time)),
        }

        let leaf = leaf_hash(&entry.bytes);
        if let Some((pinned_size, _)) = pinned
            && frontier.size() == pinned_size
        {
            root_at_pinned = Some(frontier.root());
        }
        // Fewer than u64::MAX records fit in a file, so the frontier is never full.
        frontier.push(leaf).map_err(|_| VerifyFailure::SizeMismatch {
            checkpoint_size: size,
            entries: index,
        })?;
        if let Some(leaves) = &mut leaves {
            leaves.compare(index, &leaf)?;
        }

        let certificates_pending = certificates.is_some() && certificate_failure.is_none();
        if history_failure.is_some() && !certificates_pending {
            continue;
        }
        let parsed = match ParsedEntry::parse(&entry.bytes) {
            Ok(parsed) => parsed,
            Err(source) => {
                history_failure.get_or_insert(VerifyFailure::Unparsable { index, source });
                continue;
            }
        };
        if history_failure.is_none()
            && let Err(failure) = replay.apply(index, &parsed)
        {
            history_failure = Some(Box::new(failure).into());
        }
        if let Some(table) = certificates.as_mut().filter(|_| certificate_failure.is_none())
            && let Err(failure) = table.check_entry(index, &parsed)
        {
            certificate_failure = Some(failure);
        }
    }
    let entries = records.position;
    passed.push(format!(
        "{ENTRIES_FILE}: {entries} records with contiguous indices from 0"
    ));
    passed.push(format!(
        "entry times never go back (tolerance {} ms)",
        options.time_tolerance.as_millis()
    ));

    if entries != size {
        return Err(VerifyFailure::SizeMismatch {
            checkpoint_size: size,
            entries,
        });
    }
    let stored = leaves.map(|leaves| leaves.finish(size)).transpose()?;
    // Whether the entries' first `pinned_size` lead to the pinned root (an empty tree is a prefix
    // of every tree, RFC 9162 §2.1.4.2). `root_at_pinned` was taken before the pinned size's
    // successor was pushed, so it is there whenever the pinned size is below the entries'.
    let pinned_prefix = pinned.map(|(pinned_size, pinned_root)| {
        let prefix_root = if pinned_size == size {
            Some(frontier.root())
        } else {
            root_at_pinned
        };
        (pinned_size, pinned_size == 0 || prefix_root == Some(pinned_root))
    });
    if frontier.root() != signed_root {
        return Err(match stored {
            Some(StoredLeavesSeen {
                root,
                first_difference: Some(index),
            }) if root == signed_root => VerifyFailure::AlteredEntry { index, size },
            stored => VerifyFailure::RootMismatch {
                size,
                // The change is after the pinned size if the pinned prefix is intact.
                suspect: pinned_prefix.map(
                    |(pinned_size, intact)| {
                        if intact { (pinned_size, size) } else { (0, pinned_size) }
                    },
                ),
                stored: match stored {
                    Some(_) => StoredTree::Differs,
                    None => StoredTree::NotExported,
                },
            },
        });
    }
    passed.push(format!(
        "root recomputed from entries 0..{size} equals the exported checkpoint's root"
    ));
    let leaves_checked = match stored {
        Some(StoredLeavesSeen {
            first_difference: Some(index),
            ..
        }) => return Err(VerifyFailure::StoredLeafDiffers { index }),
        Some(_) => {
            passed.push(format!(
                "{LEAVES_FILE}: the store's {size} leaf hashes equal the entries'"
            ));
            true
        }
        None => {
            passed.push(format!(
                "{LEAVES_FILE} not exported: an entry changed after it was logged is detected, but not named"
            ));
            false
        }
    };

    if let Some((pinned_size, intact)) = pinned_prefix {
        if !intact {
            return Err(VerifyFailure::Inconsistent {
                pinned: pinned_size,
                size,
            });
        }
        passed.push(format!(
            "pinned checkpoint (size {pinned_size}) is consistent with the exported checkpoint (size {size})"
        ));
    }

    if let Some(failure) = history_failure {
        return Err(failure);
    }
    let history = replay.counts();
    passed.push(format!(
        "key history replayed: {} users pinned ({} issuances, {} renewals, {} identity resets each under a request a second admin approved); no key pinned to two users",
        history.users, history.pins, history.renewals, history.resets
    ));

    let certificates = match certificates {
        Some(table) => {
            if let Some(failure) = certificate_failure {
                return Err(failure.into());
            }
            let counts = table.finish(size)?;
            passed.push(format!(
                "{CERTIFICATES_FILE}: {} stored certificates match the entries that record them (user, serial, key, SHA-256 of the DER); {} recorded beyond the exported checkpoint, not checked yet",
                counts.checked, counts.beyond_checkpoint
            ));
            Some(counts)
        }
        None => {
            passed.push(format!(
                "certificates not exported (no {CERTIFICATES_FILE}): the stored certificates were not checked"
            ));
            None
        }
    };
    Ok(VerifyReport {
        size,
        passed,
        history,
        certificates,
        leaves_checked,
    })
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
        assert!(matches!(
            parse_entries(&data[..data.len() - 5]),
            Err(VerifyFailure::TruncatedRecord {
                position: 1,
                offset: 36
            })
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
