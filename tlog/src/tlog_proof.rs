//! Offline inclusion receipts in the c2sp.org/tlog-proof format: encode, parse, verify.
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! extra <base64>          (optional)
//! index <decimal>
//! <base64 inclusion hash> (zero or more, bottom-up)
//!
//! <signed checkpoint, verbatim, with its cosignatures>
//! ```

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::checkpoint::{OpenError, SignedCheckpoint, parse_canonical_decimal};
use crate::key::VerifierKey;
use crate::merkle::{Hash, leaf_hash};
use crate::note::{NoteError, SignedNote};
use crate::proof::{ProofError, verify_inclusion};

/// First line of every tlog-proof.
const HEADER: &str = "c2sp.org/tlog-proof@v1";

/// Most inclusion hashes a proof may hold: the depth of a tree of 2^64 leaves.
const MAX_PROOF_HASHES: usize = 64;

/// A per-entry receipt: an inclusion proof of one entry in a signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogProof {
    extra: Option<Vec<u8>>,
    index: u64,
    /// Invariant: at most [`MAX_PROOF_HASHES`] hashes.
    inclusion_proof: Vec<Hash>,
    checkpoint: SignedNote,
}

/// Why a tlog-proof could not be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlogProofError {
    /// The first line is not `c2sp.org/tlog-proof@v1`.
    #[error("not a c2sp.org/tlog-proof@v1 proof")]
    WrongHeader,
    /// The `extra` line is not valid base64.
    #[error("the extra line is not valid base64")]
    InvalidExtra,
    /// The `index <n>` line is missing or not a canonical decimal number.
    #[error("the index line is missing or invalid")]
    InvalidIndex,
    /// A proof line is not the base64 of a 32-byte hash.
    #[error("proof line {line} is not base64 of a 32-byte hash")]
    InvalidHash {
        /// 1-based line number within the proof file.
        line: usize,
    },
    /// The proof has more hashes than any tree needs.
    #[error("the proof has more than {MAX_PROOF_HASHES} hashes")]
    TooManyHashes,
    /// There is no blank line before the checkpoint.
    #[error("no blank line before the checkpoint")]
    MissingCheckpoint,
    /// The checkpoint is not a valid signed note.
    #[error("the checkpoint is not a valid signed note")]
    InvalidCheckpoint(#[source] NoteError),
}

/// Why a tlog-proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlogProofVerifyError {
    /// The checkpoint's signatures, body or origin were rejected.
    #[error("the checkpoint was rejected")]
    Checkpoint(#[source] OpenError),
    /// The inclusion proof does not place the entry in the checkpoint's tree.
    #[error("the inclusion proof was rejected")]
    Inclusion(#[source] ProofError),
}

impl TlogProof {
    /// Builds a receipt; `extra` is opaque data carried for the verifier's application.
    pub fn new(
        index: u64,
        inclusion_proof: Vec<Hash>,
        checkpoint: SignedNote,
        extra: Option<Vec<u8>>,
    ) -> Result<Self, TlogProofError> {
        if inclusion_proof.len() > MAX_PROOF_HASHES {
            return Err(TlogProofError::TooManyHashes);
        }
        Ok(TlogProof {
            extra,
            index,
            inclusion_proof,
            checkpoint,
        })
    }

    /// Parses a `.tlog-proof` file; `to_string()` gives the same bytes back.
    pub fn parse(text: &str) -> Result<Self, TlogProofError> {
        let (header, checkpoint) = text.split_once("\n\n").ok_or(TlogProofError::MissingCheckpoint)?;
        let mut lines = header.split('\n').enumerate();
        if lines.next().map(|(_, line)| line) != Some(HEADER) {
            return Err(TlogProofError::WrongHeader);
        }
        let mut next = lines.next().map(|(_, line)| line);
        let mut extra = None;
        if let Some(encoded) = next.and_then(|line| line.strip_prefix("extra ")) {
            let decoded = BASE64.decode(encoded).map_err(|_| TlogProofError::InvalidExtra)?;
            extra = Some(decoded);
            next = lines.next().map(|(_, line)| line);
        }
        let index = next
            .and_then(|line| line.strip_prefix("index "))
            .and_then(parse_canonical_decimal)
            .ok_or(TlogProofError::InvalidIndex)?;
        let mut inclusion_proof = Vec::new();
        for (line_index, line) in lines {
            if inclusion_proof.len() == MAX_PROOF_HASHES {
                return Err(TlogProofError::TooManyHashes);
            }
            let invalid = TlogProofError::InvalidHash { line: line_index + 1 };
            let bytes = BASE64.decode(line).map_err(|_| invalid.clone())?;
            inclusion_proof.push(bytes.try_into().map_err(|_| invalid)?);
        }
        let checkpoint = SignedNote::parse(checkpoint).map_err(TlogProofError::InvalidCheckpoint)?;
        Ok(TlogProof {
            extra,
            index,
            inclusion_proof,
            checkpoint,
        })
    }

    /// Index of the entry in the log.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The inclusion proof, bottom-up.
    pub fn inclusion_proof(&self) -> &[Hash] {
        &self.inclusion_proof
    }

    /// The signed checkpoint, with whatever cosignatures it carries.
    pub fn checkpoint(&self) -> &SignedNote {
        &self.checkpoint
    }

    /// The opaque `extra` data, if any.
    pub fn extra(&self) -> Option<&[u8]> {
        self.extra.as_deref()
    }

    /// Verifies that `entry` (the exact leaf bytes) is in the log `origin`: the checkpoint must be
    /// signed by one of `verifiers` (signed-note rules), and the inclusion proof must lead from
    /// the entry's leaf hash to the checkpoint's root.
    ///
    /// Witness quorums (c2sp.org/tlog-policy) are the caller's to check, on the returned
    /// checkpoint's note.
    pub fn verify(
        &self,
        entry: &[u8],
        origin: &str,
        verifiers: &[VerifierKey],
    ) -> Result<SignedCheckpoint, TlogProofVerifyError> {
        let signed = SignedCheckpoint::open(self.checkpoint.clone(), origin, verifiers)
            .map_err(TlogProofVerifyError::Checkpoint)?;
        let checkpoint = signed.checkpoint();
        verify_inclusion(
            &leaf_hash(entry),
            self.index,
            checkpoint.size(),
            &self.inclusion_proof,
            checkpoint.root_hash(),
        )
        .map_err(TlogProofVerifyError::Inclusion)?;
        Ok(signed)
    }
}

impl fmt::Display for TlogProof {
    /// The `.tlog-proof` file contents.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(formatter, "{HEADER}")?;
        if let Some(extra) = &self.extra {
            writeln!(formatter, "extra {}", BASE64.encode(extra))?;
        }
        writeln!(formatter, "index {}", self.index)?;
        for hash in &self.inclusion_proof {
            writeln!(formatter, "{}", BASE64.encode(hash))?;
        }
        writeln!(formatter)?;
        write!(formatter, "{}", self.checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::merkle::tree_root;
    use crate::note::VerifyError;
    use crate::proof::inclusion_proof;
    use crate::testing::{EcdsaEncoding, EcdsaSigner, Ed25519Signer};

    const ORIGIN: &str = "ca.example.org/audit/v1";

    fn entry(index: u32) -> Vec<u8> {
        format!("{{\"v\":\"nc-e2ee-ca-audit/1\",\"n\":{index}}}").into_bytes()
    }

    /// A 13-entry log, its signed checkpoint and the log's verifier key.
    fn signed_log() -> (Vec<Hash>, SignedNote, VerifierKey) {
        let leaves: Vec<Hash> = (0..13).map(|i| leaf_hash(&entry(i))).collect();
        let log = EcdsaSigner::new(ORIGIN, EcdsaEncoding::Der);
        let checkpoint = Checkpoint::new(ORIGIN, 13, tree_root(&leaves)).expect("valid");
        let mut note = SignedNote::sign(&checkpoint.to_string(), &log).expect("signs");
        note.add_signature(&Ed25519Signer::new("witness.example/w1", 9))
            .expect("signs");
        (leaves, note, log.verifier())
    }

    #[test]
    fn receipts_round_trip_and_verify() {
        let (leaves, note, log_key) = signed_log();
        for index in 0..13u32 {
            let proof = inclusion_proof(&leaves[..], index.into(), 13).expect("in range");
            let extra = (index % 2 == 0).then(|| vec![index as u8; 5]);
            let receipt = TlogProof::new(index.into(), proof, note.clone(), extra).expect("valid");
            let text = receipt.to_string();
            assert!(text.starts_with("c2sp.org/tlog-proof@v1\n"));
            let parsed = TlogProof::parse(&text).expect("parses");
            assert_eq!(parsed, receipt);
            assert_eq!(parsed.to_string(), text);

            let opened = parsed
                .verify(&entry(index), ORIGIN, std::slice::from_ref(&log_key))
                .expect("verifies");
            assert_eq!(opened.checkpoint().size(), 13);
            assert_eq!(
                parsed.verify(&entry(index + 1), ORIGIN, std::slice::from_ref(&log_key)),
                Err(TlogProofVerifyError::Inclusion(ProofError::RootMismatch))
            );
        }
    }

    #[test]
    fn receipts_need_the_log_key_and_the_right_index() {
        let (leaves, note, log_key) = signed_log();
        let proof = inclusion_proof(&leaves[..], 4, 13).expect("in range");
        let receipt = TlogProof::new(4, proof.clone(), note.clone(), None).expect("valid");
        let witness_only = Ed25519Signer::new("witness.example/other", 1).verifier();
        assert_eq!(
            receipt.verify(&entry(4), ORIGIN, &[witness_only]),
            Err(TlogProofVerifyError::Checkpoint(OpenError::Signature(
                VerifyError::NoKnownSignature
            )))
        );
        let moved = TlogProof::new(5, proof, note, None).expect("valid");
        assert!(moved.verify(&entry(4), ORIGIN, &[log_key]).is_err());
    }

    #[test]
    fn malformed_receipts_are_rejected() {
        let (leaves, note, _) = signed_log();
        let proof = inclusion_proof(&leaves[..], 4, 13).expect("in range");
        let good = TlogProof::new(4, proof, note.clone(), None).expect("valid").to_string();
        let hash_line = BASE64.encode([7u8; 32]);
        let cases = [
            (good.replacen("@v1", "@v2", 1), TlogProofError::WrongHeader),
            (good.replacen("index 4", "index 04", 1), TlogProofError::InvalidIndex),
            (good.replacen("index 4", "index", 1), TlogProofError::InvalidIndex),
            (
                good.replacen("index 4", "extra !!\nindex 4", 1),
                TlogProofError::InvalidExtra,
            ),
            (
                good.replacen("index 4\n", "index 4\nAAAA\n", 1),
                TlogProofError::InvalidHash { line: 3 },
            ),
            (
                good.replacen(
                    "index 4\n",
                    &format!("index 4\n{}", format!("{hash_line}\n").repeat(61)),
                    1,
                ),
                TlogProofError::TooManyHashes,
            ),
            (
                "c2sp.org/tlog-proof@v1\nindex 4\n".to_owned(),
                TlogProofError::MissingCheckpoint,
            ),
            (
                good.replacen("\n\u{2014}", "\n-", 1),
                TlogProofError::InvalidCheckpoint(NoteError::MalformedSignatureLine { line: 1 }),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(TlogProof::parse(&text), Err(expected), "{text}");
        }
        assert_eq!(
            TlogProof::new(0, vec![[0; 32]; 65], note, None),
            Err(TlogProofError::TooManyHashes)
        );
    }

    proptest::proptest! {
        #[test]
        fn receipts_round_trip(
            index in proptest::prelude::any::<u64>(),
            hashes in proptest::collection::vec(proptest::prelude::any::<[u8; 32]>(), 0..=64),
            extra in proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..50)),
        ) {
            let signer = Ed25519Signer::new(ORIGIN, 4);
            let note = SignedNote::sign("c\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", &signer)
                .expect("signs");
            let receipt = TlogProof::new(index, hashes, note, extra).expect("valid");
            proptest::prop_assert_eq!(TlogProof::parse(&receipt.to_string()), Ok(receipt));
        }
    }
}
