//! The signer guard: the last tree this signer agreed to sign, kept in a file outside the database,
//! so that a database rolled back or rewritten by its own administrator cannot get a checkpoint
//! signed for a tree that contradicts an earlier one (an in-house witness; Sunlight's rule "never
//! sign a checkpoint that is not consistent with the last one signed").
//!
//! Before every signature the sequencer asks the guard to authorize the new head with a consistency
//! proof from the guarded tree; the guard verifies it itself, refuses sizes that go backwards and
//! same-size forks, and records the new head durably (temporary file, fsync, rename, fsync of the
//! directory) *before* the HSM signs, so no signature exists that the guard does not know about.
//! The file is re-read before every authorization: several replicas may share one guard file, and a
//! file that went backwards behind this process's back is refused too.
//!
//! Format (text, for the operator's eyes):
//! ```text
//! e2ee-ca signer guard v1
//! origin e2ee-ca.example/audit-log
//! size 1234
//! root <hex of the 32-byte root>
//! ```

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use tlog::checkpoint::Checkpoint;
use tlog::key::VerifierKey;
use tlog::merkle::Hash;
use tlog::note::SignedNote;

use super::{LogHead, LogReader, consistency_proof};
use crate::storage::StoreError;

/// First line of the guard file.
const FORMAT_LINE: &str = "e2ee-ca signer guard v1";

/// Why the guard refused, or could not do its job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// The head is smaller than the guarded tree: the log was truncated or rolled back.
    #[error(
        "the log (size {head_size}) is behind the last tree this signer signed (size {guarded_size}): \
         the database was rolled back or truncated"
    )]
    Rollback {
        /// The head offered for signature.
        head_size: u64,
        /// The guarded size.
        guarded_size: u64,
    },
    /// The head does not extend the guarded tree (a same-size fork, or a failed consistency proof).
    #[error(
        "the log (size {head_size}) is not an extension of the last tree this signer signed (size {guarded_size}): {reason}"
    )]
    Fork {
        /// The head offered for signature.
        head_size: u64,
        /// The guarded size.
        guarded_size: u64,
        /// What failed.
        reason: String,
    },
    /// The guard file went backwards while this process held a later state.
    #[error("the signer guard file {path} went back from size {remembered} to size {found}")]
    FileRolledBack {
        /// The guard file.
        path: PathBuf,
        /// The size this process last recorded or read.
        remembered: u64,
        /// The size now in the file.
        found: u64,
    },
    /// The guard file belongs to another log.
    #[error("the signer guard file {path} guards log {found:?}, not {expected:?}")]
    OtherLog {
        /// The guard file.
        path: PathBuf,
        /// Its origin line.
        found: String,
        /// This log's origin.
        expected: String,
    },
    /// The guard file is not in the guard format.
    #[error("the signer guard file {path} is malformed: {reason}")]
    Malformed {
        /// The guard file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The guard file could not be read or written.
    #[error("cannot {action} the signer guard file {path}: {source}")]
    Io {
        /// "read" or "write".
        action: &'static str,
        /// The guard file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The tree the guard last authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardedTree {
    /// Its size.
    pub size: u64,
    /// Its root.
    pub root: Hash,
}

/// The signer guard of one log.
#[derive(Debug)]
pub struct SignerGuard {
    path: PathBuf,
    origin: String,
    /// The latest tree this process recorded or read; the file may only move forward from it.
    remembered: Option<GuardedTree>,
}

impl SignerGuard {
    /// Opens the guard file of the log `origin`; a missing file is a guard with no tree yet
    /// ([`SignerGuard::tree`] is `None`), which the caller initialises with [`SignerGuard::adopt`].
    pub fn open(path: &Path, origin: &str) -> Result<SignerGuard, GuardError> {
        let mut guard = SignerGuard {
            path: path.to_owned(),
            origin: origin.to_owned(),
            remembered: None,
        };
        guard.remembered = guard.read()?;
        Ok(guard)
    }

    /// The guard file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The guarded tree, as last read or recorded (`None` before the first one).
    pub fn tree(&self) -> Option<GuardedTree> {
        self.remembered
    }

    /// Re-reads the file (it may have moved forward through another replica sharing it) and
    /// returns the guarded tree; refuses a file that went backwards.
    pub fn refresh(&mut self) -> Result<Option<GuardedTree>, GuardError> {
        let found = self.read()?;
        match (self.remembered, found) {
            (Some(remembered), None) => Err(GuardError::FileRolledBack {
                path: self.path.clone(),
                remembered: remembered.size,
                found: 0,
            }),
            (Some(remembered), Some(found)) if found.size < remembered.size => Err(GuardError::FileRolledBack {
                path: self.path.clone(),
                remembered: remembered.size,
                found: found.size,
            }),
            _ => {
                self.remembered = found;
                Ok(found)
            }
        }
    }

    /// Checks that `head` extends the guarded tree, given the consistency proof from the guarded
    /// size to `head.size` (empty when there is no guarded tree, or it is empty or the same size).
    /// Does not record anything.
    pub fn check(&self, head: LogHead, proof: &[Hash]) -> Result<(), GuardError> {
        let Some(guarded) = self.remembered else {
            return Ok(());
        };
        if head.size < guarded.size {
            return Err(GuardError::Rollback {
                head_size: head.size,
                guarded_size: guarded.size,
            });
        }
        tlog::proof::verify_consistency(guarded.size, head.size, &guarded.root, &head.root, proof).map_err(|error| {
            GuardError::Fork {
                head_size: head.size,
                guarded_size: guarded.size,
                reason: if guarded.size == head.size {
                    "same size, different root".to_owned()
                } else {
                    format!("the consistency proof does not verify ({error})")
                },
            }
        })
    }

    /// Authorizes signing `head`: re-reads the file, checks `head` against it with `proof` (from
    /// the guarded size, see [`SignerGuard::refresh`] for which size that is), and records `head`
    /// durably before returning. The caller signs only after `Ok`.
    pub fn authorize(&mut self, head: LogHead, proof: &[Hash]) -> Result<(), GuardError> {
        self.check(head, proof)?;
        self.record(head)
    }

    /// Starts guarding from `head` without a proof: only for a guard with no tree yet (first start,
    /// from the latest checkpoint whose signature the caller verified).
    pub fn adopt(&mut self, head: LogHead) -> Result<(), GuardError> {
        debug_assert!(self.remembered.is_none(), "adopt is for a guard without a tree");
        self.record(head)
    }

    fn record(&mut self, head: LogHead) -> Result<(), GuardError> {
        if self
            .remembered
            .is_some_and(|tree| tree.size == head.size && tree.root == head.root)
        {
            return Ok(());
        }
        let text = format!(
            "{FORMAT_LINE}\norigin {}\nsize {}\nroot {}\n",
            self.origin,
            head.size,
            hex::encode(head.root)
        );
        write_durably(&self.path, text.as_bytes()).map_err(|source| GuardError::Io {
            action: "write",
            path: self.path.clone(),
            source,
        })?;
        self.remembered = Some(GuardedTree {
            size: head.size,
            root: head.root,
        });
        Ok(())
    }

    fn read(&self) -> Result<Option<GuardedTree>, GuardError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(GuardError::Io {
                    action: "read",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let malformed = |reason: &str| GuardError::Malformed {
            path: self.path.clone(),
            reason: reason.to_owned(),
        };
        let lines: Vec<&str> = text.lines().collect();
        let [format_line, origin_line, size_line, root_line] = lines.as_slice() else {
            return Err(malformed("expected 4 lines"));
        };
        if *format_line != FORMAT_LINE {
            return Err(malformed("unknown format line"));
        }
        let origin = origin_line
            .strip_prefix("origin ")
            .ok_or_else(|| malformed("no origin line"))?;
        if origin != self.origin {
            return Err(GuardError::OtherLog {
                path: self.path.clone(),
                found: origin.to_owned(),
                expected: self.origin.clone(),
            });
        }
        let size = size_line
            .strip_prefix("size ")
            .and_then(|size| size.parse().ok())
            .ok_or_else(|| malformed("bad size line"))?;
        let root = root_line
            .strip_prefix("root ")
            .and_then(|root| hex::decode(root).ok())
            .and_then(|root| <Hash>::try_from(root.as_slice()).ok())
            .ok_or_else(|| malformed("bad root line"))?;
        Ok(Some(GuardedTree { size, root }))
    }
}

/// What [`check_at_startup`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupCheck {
    /// The database's log extends the guarded tree (consistency proof verified).
    Extends {
        /// The guarded size.
        guarded_size: u64,
        /// The database's head size.
        head_size: u64,
    },
    /// The guard file did not exist; it now guards the latest checkpoint in the database (whose
    /// signature was verified), or nothing yet when there is none.
    Adopted {
        /// The adopted size, if a checkpoint existed.
        size: Option<u64>,
    },
}

/// How many of the newest sequenced entries startup checks against the tree's leaves.
pub const TAIL_CHECKED: u64 = 4096;

/// Refuses to serve a database that is behind or inconsistent with what was signed: the newest
/// `TAIL_CHECKED` entries must each be stored and hash to the tree's leaf at their index (a
/// deleted or altered row would otherwise leave a permanent hole under the next index); the head
/// must not be behind its own latest checkpoint, and must extend the guarded tree (verified with a
/// consistency proof from the stored nodes). A guard without a file adopts the latest checkpoint,
/// after verifying its signature with `verifier` and that the head extends it.
pub async fn check_at_startup<L: LogReader>(
    store: &L,
    guard: &mut SignerGuard,
    verifier: &VerifierKey,
) -> Result<StartupCheck, StartupError> {
    let head = store.log_head().await?;
    check_tail(store, head.size).await?;
    let latest = store.latest_checkpoint().await?;
    if let Some(latest) = &latest {
        if latest.size > head.size {
            return Err(StartupError::BehindCheckpoint {
                head_size: head.size,
                checkpoint_size: latest.size,
            });
        }
        let proof = consistency_proof(store, latest.size, head.size)
            .await
            .map_err(|error| StartupError::Proof(error.to_string()))?;
        tlog::proof::verify_consistency(latest.size, head.size, &latest.root, &head.root, &proof)
            .map_err(|error| StartupError::CheckpointFork(latest.size, error.to_string()))?;
    }
    let Some(guarded) = guard.tree() else {
        let Some(latest) = latest else {
            return Ok(StartupCheck::Adopted { size: None });
        };
        let note = SignedNote::parse(&latest.note).map_err(|_| StartupError::BadCheckpoint(latest.size))?;
        note.verify(std::slice::from_ref(verifier))
            .map_err(|_| StartupError::BadCheckpoint(latest.size))?;
        let checkpoint = Checkpoint::parse(note.text()).map_err(|_| StartupError::BadCheckpoint(latest.size))?;
        if checkpoint.origin() != verifier.name().as_str()
            || checkpoint.size() != latest.size
            || *checkpoint.root_hash() != latest.root
        {
            return Err(StartupError::BadCheckpoint(latest.size));
        }
        guard.adopt(LogHead {
            size: latest.size,
            root: latest.root,
        })?;
        return Ok(StartupCheck::Adopted {
            size: Some(latest.size),
        });
    };
    if head.size < guarded.size {
        return Err(GuardError::Rollback {
            head_size: head.size,
            guarded_size: guarded.size,
        }
        .into());
    }
    let proof = if guarded.size == 0 || guarded.size == head.size {
        Vec::new()
    } else {
        consistency_proof(store, guarded.size, head.size)
            .await
            .map_err(|error| StartupError::Proof(error.to_string()))?
    };
    guard.check(head, &proof)?;
    Ok(StartupCheck::Extends {
        guarded_size: guarded.size,
        head_size: head.size,
    })
}

/// Why the service refuses to start on this database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// The head row is behind the database's own latest checkpoint.
    #[error(
        "the database's log head (size {head_size}) is behind its own latest signed checkpoint (size {checkpoint_size}): \
         the log was rolled back or truncated"
    )]
    BehindCheckpoint {
        /// The head size.
        head_size: u64,
        /// The latest checkpoint's size.
        checkpoint_size: u64,
    },
    /// The head does not extend the database's latest checkpoint.
    #[error("the database's log does not extend its own latest signed checkpoint (size {0}): {1}")]
    CheckpointFork(u64, String),
    /// The latest checkpoint does not verify with the audit key or does not match its row.
    #[error("the database's latest checkpoint (size {0}) does not verify with the audit key")]
    BadCheckpoint(u64),
    /// A sequenced entry below the head is not stored.
    #[error("the audit entry at log index {0} is missing from the database (deleted or lost)")]
    MissingEntry(u64),
    /// A sequenced entry does not hash to the tree's leaf at its index (or the leaf is missing).
    #[error("the audit entry at log index {0} does not match the log's tree: it was altered, or its leaf removed")]
    AlteredEntry(u64),
    /// A consistency proof could not be built from the stored nodes (nodes missing: damaged store).
    #[error("cannot build a consistency proof from the stored tree: {0}")]
    Proof(String),
    /// The guard refused, or its file could not be read or written.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks the entries `[size - TAIL_CHECKED, size)` against the stored leaves, naming the first
/// index whose entry is missing or does not hash to its leaf.
async fn check_tail<L: LogReader>(store: &L, size: u64) -> Result<(), StartupError> {
    let start = size.saturating_sub(TAIL_CHECKED);
    if start == size {
        return Ok(());
    }
    let leaves = store
        .subtree_hashes((start..size).map(|index| (0, index)).collect())
        .await?;
    let entries = store.entries(start, size).await?;
    if entries.len() as u64 != size - start {
        // Some row is gone: find the first missing index, one probe each.
        for index in start..size {
            if store.entries(index, index + 1).await?.is_empty() {
                return Err(StartupError::MissingEntry(index));
            }
        }
        return Err(StartupError::MissingEntry(size - 1));
    }
    for ((index, entry), leaf) in (start..size).zip(&entries).zip(leaves) {
        if leaf != Some(tlog::merkle::leaf_hash(entry)) {
            return Err(StartupError::AlteredEntry(index));
        }
    }
    Ok(())
}

/// Replaces `path` with `content` so that a crash leaves either the old or the new file, and the
/// new one is on disk when this returns.
fn write_durably(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    // One temporary name per process, so replicas sharing the file never write the same one.
    let temporary = directory.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let mut file = fs::File::create(&temporary)?;
    file.write_all(content)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, path)?;
    fs::File::open(&directory)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tlog::merkle::{leaf_hash, tree_root};

    const ORIGIN: &str = "e2ee-ca.example/audit-log";

    fn leaves(count: usize) -> Vec<Hash> {
        (0..count)
            .map(|index| leaf_hash(format!("entry {index}").as_bytes()))
            .collect()
    }

    fn head(leaves: &[Hash]) -> LogHead {
        LogHead {
            size: leaves.len() as u64,
            root: tree_root(leaves),
        }
    }

    /// A consistency proof between prefixes of `leaves`.
    fn proof(leaves: &[Hash], old_size: u64, new_size: u64) -> Vec<Hash> {
        tlog::proof::consistency_proof(leaves, old_size, new_size).expect("proof")
    }

    #[test]
    fn a_guard_moves_forward_with_proofs_and_survives_reopening() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("guard");
        let all = leaves(20);
        let mut guard = SignerGuard::open(&path, ORIGIN).expect("open");
        assert_eq!(guard.tree(), None);
        guard.adopt(head(&all[..3])).expect("adopt");
        guard.authorize(head(&all[..3]), &[]).expect("same tree again");
        guard
            .authorize(head(&all[..11]), &proof(&all, 3, 11))
            .expect("extension");
        let reopened = SignerGuard::open(&path, ORIGIN).expect("reopen");
        assert_eq!(reopened.tree().map(|tree| tree.size), Some(11));
        assert_eq!(reopened.tree().map(|tree| tree.root), Some(tree_root(&all[..11])));
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("e2ee-ca signer guard v1\norigin e2ee-ca.example/audit-log\nsize 11\nroot "));
    }

    #[test]
    fn rollbacks_forks_and_bad_proofs_are_refused_and_not_recorded() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("guard");
        let all = leaves(20);
        let mut guard = SignerGuard::open(&path, ORIGIN).expect("open");
        guard.adopt(head(&all[..10])).expect("adopt");
        let mut forked = all.clone();
        forked[4] = leaf_hash(b"rewritten");
        let cases = [
            (head(&all[..9]), vec![], "behind the last tree"),
            (head(&forked[..10]), vec![], "same size, different root"),
            (
                head(&forked[..12]),
                proof(&forked, 10, 12),
                "consistency proof does not verify",
            ),
            (
                head(&all[..12]),
                proof(&all, 10, 11),
                "consistency proof does not verify",
            ),
            (head(&all[..12]), vec![], "consistency proof does not verify"),
        ];
        for (offered, proof, expected) in cases {
            let error = guard.authorize(offered, &proof).expect_err("must refuse").to_string();
            assert!(error.contains(expected), "{error}");
        }
        let reopened = SignerGuard::open(&path, ORIGIN).expect("reopen");
        assert_eq!(
            reopened.tree().map(|tree| tree.size),
            Some(10),
            "nothing refused was recorded"
        );
    }

    #[test]
    fn a_file_that_goes_back_or_guards_another_log_is_refused() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("guard");
        let all = leaves(8);
        let mut guard = SignerGuard::open(&path, ORIGIN).expect("open");
        guard.adopt(head(&all[..2])).expect("adopt");
        let old_file = fs::read(&path).expect("read");
        guard.authorize(head(&all[..8]), &proof(&all, 2, 8)).expect("extend");
        fs::write(&path, &old_file).expect("roll the file back");
        let error = guard.refresh().expect_err("went back").to_string();
        assert!(error.contains("went back from size 8 to size 2"), "{error}");
        fs::remove_file(&path).expect("remove");
        assert!(guard.refresh().is_err(), "a vanished file is a rollback too");

        fs::write(&path, &old_file).expect("restore");
        let error = SignerGuard::open(&path, "other.example/log")
            .expect_err("other log")
            .to_string();
        assert!(error.contains("guards log \"e2ee-ca.example/audit-log\""), "{error}");
        for (bad, expected) in [
            ("", "expected 4 lines"),
            (
                "e2ee-ca signer guard v2\norigin x\nsize 1\nroot 00\n",
                "unknown format line",
            ),
            (
                &format!("{FORMAT_LINE}\norigin {ORIGIN}\nsize -1\nroot 00\n"),
                "bad size line",
            ),
            (
                &format!("{FORMAT_LINE}\norigin {ORIGIN}\nsize 1\nroot 00\n"),
                "bad root line",
            ),
        ] {
            fs::write(&path, bad).expect("write");
            let error = SignerGuard::open(&path, ORIGIN).expect_err("malformed").to_string();
            assert!(error.contains(expected), "{bad:?}: {error}");
        }
    }
}
