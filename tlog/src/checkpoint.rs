//! C2SP checkpoints (c2sp.org/tlog-checkpoint v1.0.0): the signed tree head body, and opening one.
//!
//! The body is the note text: the origin line, the tree size in decimal, the standard base64 of
//! the root hash, then optional extension lines, each line non-empty and ending in a newline.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::key::VerifierKey;
use crate::merkle::Hash;
use crate::note::{KeyName, NoteError, SignedNote, VerifyError, check_text};

/// A checkpoint body: which log, how many entries, which root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Invariant: a non-empty line of valid note text.
    origin: String,
    size: u64,
    root_hash: Hash,
    /// Invariant: non-empty lines of valid note text.
    extensions: Vec<String>,
}

/// Why a checkpoint body was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The body is not valid note text (no final newline, or a control character).
    #[error("the checkpoint is not valid note text")]
    InvalidText(#[source] NoteError),
    /// The body has fewer than three lines.
    #[error("a checkpoint has at least three lines")]
    MissingLines,
    /// The origin is empty or spans several lines.
    #[error("the origin is empty or spans several lines")]
    InvalidOrigin,
    /// The size line is not a decimal number without leading zeros that fits in 64 bits.
    #[error("the tree size is not a canonical decimal number")]
    InvalidSize,
    /// The root line is not the canonical base64 of 32 bytes.
    #[error("the root hash is not base64 of 32 bytes")]
    InvalidRootHash,
    /// An extension line is empty.
    #[error("extension line {line} is empty")]
    EmptyExtension {
        /// 1-based line number within the checkpoint.
        line: usize,
    },
}

/// Why a signed checkpoint could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The signatures do not verify under the given keys.
    #[error("checkpoint signatures rejected")]
    Signature(#[source] VerifyError),
    /// The signed text is not a checkpoint.
    #[error("malformed checkpoint")]
    Checkpoint(#[source] CheckpointError),
    /// The checkpoint is from another log.
    #[error("checkpoint origin is {found:?}, expected {expected:?}")]
    OriginMismatch {
        /// The origin the caller expected.
        expected: String,
        /// The origin in the checkpoint.
        found: String,
    },
}

impl Checkpoint {
    /// A checkpoint without extension lines (the recommended form).
    pub fn new(origin: &str, size: u64, root_hash: Hash) -> Result<Self, CheckpointError> {
        if origin.contains('\n') {
            return Err(CheckpointError::InvalidOrigin);
        }
        Checkpoint::parse(&format!("{origin}\n{size}\n{}\n", BASE64.encode(root_hash)))
    }

    /// Parses a checkpoint body (the text of a signed note).
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        check_text(text).map_err(CheckpointError::InvalidText)?;
        // `check_text` guarantees the final newline, so the last split piece is empty.
        let mut lines: Vec<&str> = text.split('\n').collect();
        lines.pop();
        let [origin, size, root_hash, extensions @ ..] = lines.as_slice() else {
            return Err(CheckpointError::MissingLines);
        };
        if origin.is_empty() {
            return Err(CheckpointError::InvalidOrigin);
        }
        if let Some(position) = extensions.iter().position(|line| line.is_empty()) {
            return Err(CheckpointError::EmptyExtension { line: position + 4 });
        }
        Ok(Checkpoint {
            origin: (*origin).to_owned(),
            size: parse_canonical_decimal(size).ok_or(CheckpointError::InvalidSize)?,
            root_hash: parse_root_hash(root_hash)?,
            extensions: extensions.iter().map(|line| (*line).to_owned()).collect(),
        })
    }

    /// The log's identity, e.g. `ca.example.org/audit/v1`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The number of entries in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The RFC 6962 root of the tree.
    pub fn root_hash(&self) -> &Hash {
        &self.root_hash
    }

    /// Extension lines, without their newlines (NOT RECOMMENDED by the spec).
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }
}

impl fmt::Display for Checkpoint {
    /// The checkpoint body: the note text to sign.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(formatter, "{}", self.origin)?;
        writeln!(formatter, "{}", self.size)?;
        writeln!(formatter, "{}", BASE64.encode(self.root_hash))?;
        for extension in &self.extensions {
            writeln!(formatter, "{extension}")?;
        }
        Ok(())
    }
}

/// A checkpoint whose note signatures verified and whose origin is the expected one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    checkpoint: Checkpoint,
    note: SignedNote,
    verified_by: Vec<KeyName>,
}

impl SignedCheckpoint {
    /// Verifies `note` with `verifiers` (signed-note rules), parses its text as a checkpoint and
    /// checks that the checkpoint is from `origin`.
    ///
    /// Signatures are checked first, so nothing is read from unauthenticated text.
    pub fn open(note: SignedNote, origin: &str, verifiers: &[VerifierKey]) -> Result<Self, OpenError> {
        let verified_by = note.verify(verifiers).map_err(OpenError::Signature)?;
        let checkpoint = Checkpoint::parse(note.text()).map_err(OpenError::Checkpoint)?;
        if checkpoint.origin != origin {
            return Err(OpenError::OriginMismatch {
                expected: origin.to_owned(),
                found: checkpoint.origin,
            });
        }
        Ok(SignedCheckpoint {
            checkpoint,
            note,
            verified_by,
        })
    }

    /// The checkpoint body.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The whole signed note, including signatures from unknown keys (e.g. other witnesses).
    pub fn note(&self) -> &SignedNote {
        &self.note
    }

    /// Names of the keys whose signatures verified.
    pub fn verified_by(&self) -> &[KeyName] {
        &self.verified_by
    }
}

/// Parses a decimal u64 with no sign and no leading zeros.
pub(crate) fn parse_canonical_decimal(text: &str) -> Option<u64> {
    let is_canonical =
        !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    if !is_canonical {
        return None;
    }
    text.parse().ok()
}

/// Parses the canonical standard base64 of a 32-byte hash.
fn parse_root_hash(line: &str) -> Result<Hash, CheckpointError> {
    let bytes = BASE64.decode(line).map_err(|_| CheckpointError::InvalidRootHash)?;
    bytes.try_into().map_err(|_| CheckpointError::InvalidRootHash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{EcdsaEncoding, EcdsaSigner, Ed25519Signer};

    const ORIGIN: &str = "ca.example.org/audit/v1";

    #[test]
    fn checkpoints_round_trip() {
        let body = "ca.example.org/audit/v1\n4\n037kGJdt2VdTwcc4Yrk5j6Kiz5tP8P3+izDNlSCWFLc=\nextension\n";
        let checkpoint = Checkpoint::parse(body).expect("parses");
        assert_eq!(checkpoint.origin(), ORIGIN);
        assert_eq!(checkpoint.size(), 4);
        // The RFC 6962 root of the first four reference leaves.
        assert_eq!(checkpoint.root_hash()[..4], [0xd3, 0x7e, 0xe4, 0x18]);
        assert_eq!(checkpoint.extensions(), ["extension"]);
        assert_eq!(checkpoint.to_string(), body);

        let empty = Checkpoint::new(ORIGIN, 0, crate::merkle::empty_root()).expect("valid");
        assert_eq!(Checkpoint::parse(&empty.to_string()), Ok(empty));
        let largest = Checkpoint::new(ORIGIN, u64::MAX, [0xff; 32]).expect("valid");
        assert_eq!(Checkpoint::parse(&largest.to_string()), Ok(largest));
    }

    #[test]
    fn malformed_checkpoints_are_rejected() {
        let root = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let cases = [
            (
                format!("{ORIGIN}\n1\n{root}"),
                CheckpointError::InvalidText(NoteError::MissingFinalNewline),
            ),
            (format!("{ORIGIN}\n1\n"), CheckpointError::MissingLines),
            (format!("\n1\n{root}\n"), CheckpointError::InvalidOrigin),
            (format!("{ORIGIN}\n01\n{root}\n"), CheckpointError::InvalidSize),
            (format!("{ORIGIN}\n+1\n{root}\n"), CheckpointError::InvalidSize),
            (format!("{ORIGIN}\n-1\n{root}\n"), CheckpointError::InvalidSize),
            (format!("{ORIGIN}\n\n{root}\n"), CheckpointError::InvalidSize),
            (
                format!("{ORIGIN}\n18446744073709551616\n{root}\n"),
                CheckpointError::InvalidSize,
            ),
            (format!("{ORIGIN}\n1\nAAAA\n"), CheckpointError::InvalidRootHash),
            // Non-canonical: the last character carries nonzero unused bits.
            (
                format!("{ORIGIN}\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\n"),
                CheckpointError::InvalidRootHash,
            ),
            (
                format!("{ORIGIN}\n1\n{root}\n\n"),
                CheckpointError::EmptyExtension { line: 4 },
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(Checkpoint::parse(&body), Err(expected), "{body:?}");
        }
        assert_eq!(
            Checkpoint::new("two\nlines", 1, [0; 32]),
            Err(CheckpointError::InvalidOrigin)
        );
    }

    #[test]
    fn signed_checkpoints_open_only_for_the_right_log_and_keys() {
        let log = EcdsaSigner::new(ORIGIN, EcdsaEncoding::FixedThenReencoded);
        let witness = Ed25519Signer::new("witness.example/w1", 9);
        let checkpoint = Checkpoint::new(ORIGIN, 3, [1; 32]).expect("valid");
        let mut note = SignedNote::sign(&checkpoint.to_string(), &log).expect("signs");
        note.add_signature(&witness).expect("signs");

        let opened = SignedCheckpoint::open(note.clone(), ORIGIN, &[log.verifier()]).expect("opens");
        assert_eq!(opened.checkpoint(), &checkpoint);
        assert_eq!(opened.verified_by(), [log.verifier().name().clone()]);
        assert_eq!(opened.note(), &note);

        assert_eq!(
            SignedCheckpoint::open(note.clone(), "other.example/log", &[log.verifier()]),
            Err(OpenError::OriginMismatch {
                expected: "other.example/log".to_owned(),
                found: ORIGIN.to_owned(),
            })
        );
        let stranger = Ed25519Signer::new(ORIGIN, 3);
        assert_eq!(
            SignedCheckpoint::open(note, ORIGIN, &[stranger.verifier()]),
            Err(OpenError::Signature(VerifyError::NoKnownSignature))
        );
        let not_a_checkpoint = SignedNote::sign("hello\n", &log).expect("signs");
        assert_eq!(
            SignedCheckpoint::open(not_a_checkpoint, ORIGIN, &[log.verifier()]),
            Err(OpenError::Checkpoint(CheckpointError::MissingLines))
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_checkpoints_round_trip(
            origin in "[^\\p{Cc}]{1,40}",
            size in proptest::prelude::any::<u64>(),
            root in proptest::prelude::any::<[u8; 32]>(),
        ) {
            let checkpoint = Checkpoint::new(&origin, size, root).expect("valid");
            proptest::prop_assert_eq!(Checkpoint::parse(&checkpoint.to_string()), Ok(checkpoint));
        }
    }
}
