//! C2SP signed notes (c2sp.org/signed-note v1.0.0): parse, serialize, sign through a trait, verify.
//!
//! A signed note is the note text (UTF-8, ending in a newline, no control characters other than
//! newline), one blank line, then one or more signature lines
//! `— <key name> <base64(4-byte key ID ‖ signature)>`.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::key::VerifierKey;

/// Most signature lines a note may carry; the spec requires accepting at least 16.
///
/// The bound keeps a hostile note from making a verifier do unbounded work.
pub const MAX_SIGNATURES: usize = 100;

/// Prefix of a signature line: an em dash (U+2014) and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// A key name: non-empty, with no white space, no control character and no '+'.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyName(String);

/// A key name broke the signed-note rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key name {0:?}: it must be non-empty, without spaces, control characters or '+'")]
pub struct InvalidKeyName(pub String);

impl KeyName {
    /// Validates a key name; schema-less URLs such as `ca.example.org/audit/v1` are recommended.
    pub fn new(name: &str) -> Result<Self, InvalidKeyName> {
        let valid = !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c.is_control() || c == '+');
        if valid {
            Ok(KeyName(name.to_owned()))
        } else {
            Err(InvalidKeyName(name.to_owned()))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A 4-byte key ID, which together with the key name selects the verifier key of a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 4]);

impl fmt::Display for KeyId {
    /// Eight lowercase hex digits, as in a vkey.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:08x}", u32::from_be_bytes(self.0))
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    name: KeyName,
    key_id: KeyId,
    /// Invariant: non-empty.
    signature: Vec<u8>,
}

impl NoteSignature {
    /// Name of the key that made the signature.
    pub fn key_name(&self) -> &KeyName {
        &self.name
    }

    /// ID of the key that made the signature.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The signature bytes, after the key ID.
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }
}

/// Something that signs notes: a software key in tests, an HSM key in the CA.
///
/// Contract: `sign` receives the whole note text, final newline included, and returns the
/// signature bytes that follow the key ID on the signature line, in the encoding of the key's
/// signature type. For ECDSA (type 0x02) that is an ASN.1 DER signature over SHA-256(message):
/// the signer hashes (PKCS#11 `CKM_ECDSA_SHA256`, or SHA-256 then `CKM_ECDSA`) and re-encodes the
/// token's raw r‖s with [`crate::key::ecdsa_der_signature`]. For Ed25519 (type 0x01) it is the
/// 64-byte RFC 8032 signature of the message itself. `key_name` and `key_id` must be those of
/// the matching [`VerifierKey`], or verifiers will ignore the signature.
pub trait NoteSigner {
    /// What signing fails with (for an HSM: session lost, key not found, ...).
    type Error;

    /// Name of the signing key; for a log, its origin.
    fn key_name(&self) -> &KeyName;

    /// ID of the signing key.
    fn key_id(&self) -> KeyId;

    /// Signs the note text.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Self::Error>;
}

/// Why text could not be parsed as a signed note.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// There is no blank line separating the text from the signatures.
    #[error("no blank line separates the note text from its signatures")]
    MissingSignatureBlock,
    /// The note text (or the signature block) does not end in a newline.
    #[error("the note text does not end in a newline")]
    MissingFinalNewline,
    /// The note text has a control character other than newline.
    #[error("the note text has a control character")]
    ControlCharacter,
    /// The note has no signature line.
    #[error("the note has no signature")]
    NoSignatures,
    /// The note has more than [`MAX_SIGNATURES`] signature lines.
    #[error("the note has more than {MAX_SIGNATURES} signatures")]
    TooManySignatures,
    /// A signature line is not `— <name> <base64>`.
    #[error("signature line {line} is malformed")]
    MalformedSignatureLine {
        /// 1-based number of the line within the signature block.
        line: usize,
    },
    /// A signature line names an invalid key.
    #[error("signature line {line} has an invalid key name")]
    InvalidKeyName {
        /// 1-based number of the line within the signature block.
        line: usize,
    },
    /// A signature line's base64 is invalid or shorter than a key ID plus one byte.
    #[error("signature line {line} has an invalid signature")]
    InvalidSignatureEncoding {
        /// 1-based number of the line within the signature block.
        line: usize,
    },
}

/// Why a note could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError<E> {
    /// The text is not valid note text.
    #[error("invalid note text")]
    InvalidText(#[source] NoteError),
    /// The note already has [`MAX_SIGNATURES`] signatures.
    #[error("the note already has {MAX_SIGNATURES} signatures")]
    TooManySignatures,
    /// The signer returned no bytes.
    #[error("the signer returned an empty signature")]
    EmptySignature,
    /// The signer failed.
    #[error("the signer failed")]
    Signer(#[source] E),
}

/// Why a note's signatures were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A signature from a known key does not verify: the note is forged or corrupted.
    #[error("the signature by {name} ({key_id}) does not verify")]
    BadSignature {
        /// Name of the known key.
        name: KeyName,
        /// ID of the known key.
        key_id: KeyId,
    },
    /// No signature comes from a known key.
    #[error("the note has no signature from a known key")]
    NoKnownSignature,
}

/// A note and its signatures, as parsed or as signed; signatures are not verified until
/// [`SignedNote::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNote {
    /// Invariant: valid note text (see [`check_text`]).
    text: String,
    /// Invariant: 1 to [`MAX_SIGNATURES`] signatures.
    signatures: Vec<NoteSignature>,
}

impl SignedNote {
    /// Parses a signed note; the text is everything up to the last blank line.
    ///
    /// Parsing is strict (canonical base64, no stray lines), so the note serializes back to the
    /// same bytes with `to_string()`.
    pub fn parse(input: &str) -> Result<Self, NoteError> {
        let split = input.rfind("\n\n").ok_or(NoteError::MissingSignatureBlock)?;
        let (text, signature_block) = (&input[..split + 1], &input[split + 2..]);
        check_text(text)?;
        let Some(signature_block) = signature_block.strip_suffix('\n') else {
            return Err(if signature_block.is_empty() {
                NoteError::NoSignatures
            } else {
                NoteError::MissingFinalNewline
            });
        };
        let mut signatures = Vec::new();
        for (index, line) in signature_block.split('\n').enumerate() {
            if signatures.len() == MAX_SIGNATURES {
                return Err(NoteError::TooManySignatures);
            }
            signatures.push(parse_signature_line(line, index + 1)?);
        }
        Ok(SignedNote {
            text: text.to_owned(),
            signatures,
        })
    }

    /// Signs `text` (which must end in a newline) with one signer.
    pub fn sign<S: NoteSigner + ?Sized>(text: &str, signer: &S) -> Result<Self, SignError<S::Error>> {
        check_text(text).map_err(SignError::InvalidText)?;
        let signature = sign_text(text, signer)?;
        Ok(SignedNote {
            text: text.to_owned(),
            signatures: vec![signature],
        })
    }

    /// Adds one more signature line, for key rotation, a second algorithm or a cosignature.
    pub fn add_signature<S: NoteSigner + ?Sized>(&mut self, signer: &S) -> Result<(), SignError<S::Error>> {
        if self.signatures.len() >= MAX_SIGNATURES {
            return Err(SignError::TooManySignatures);
        }
        let signature = sign_text(&self.text, signer)?;
        self.signatures.push(signature);
        Ok(())
    }

    /// The note text, final newline included: the signed message.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The signature lines, in order.
    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }

    /// Checks the signatures against `verifiers`, following the signed-note rules.
    ///
    /// Signatures whose (name, key ID) matches no verifier are ignored. A signature from a known
    /// key that fails rejects the whole note. At least one known key must have signed. Returns
    /// the names of the keys that verified, in signature order (a key may appear twice if it
    /// signed twice).
    pub fn verify(&self, verifiers: &[VerifierKey]) -> Result<Vec<KeyName>, VerifyError> {
        let mut verified = Vec::new();
        for signature in &self.signatures {
            let mut candidates = verifiers
                .iter()
                .filter(|verifier| verifier.name() == &signature.name && verifier.key_id() == signature.key_id);
            let Some(first) = candidates.next() else {
                continue;
            };
            // Several verifiers can share a (name, ID) only by misconfiguration or a 32-bit
            // collision; any of them verifying is enough.
            let message = self.text.as_bytes();
            let is_valid = std::iter::once(first)
                .chain(candidates)
                .any(|verifier| verifier.verify(message, &signature.signature));
            if !is_valid {
                return Err(VerifyError::BadSignature {
                    name: signature.name.clone(),
                    key_id: signature.key_id,
                });
            }
            verified.push(signature.name.clone());
        }
        if verified.is_empty() {
            return Err(VerifyError::NoKnownSignature);
        }
        Ok(verified)
    }
}

impl fmt::Display for SignedNote {
    /// The signed-note serialization: text, blank line, signature lines.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.text)?;
        formatter.write_str("\n")?;
        for signature in &self.signatures {
            let mut bytes = Vec::with_capacity(4 + signature.signature.len());
            bytes.extend_from_slice(&signature.key_id.0);
            bytes.extend_from_slice(&signature.signature);
            writeln!(
                formatter,
                "{SIGNATURE_PREFIX}{} {}",
                signature.name,
                BASE64.encode(bytes)
            )?;
        }
        Ok(())
    }
}

/// Checks the note-text rules: ends in a newline, no control character but newline.
pub(crate) fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::MissingFinalNewline);
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::ControlCharacter);
    }
    Ok(())
}

/// Parses `— <name> <base64(key ID ‖ signature)>` (without its newline).
fn parse_signature_line(line: &str, line_number: usize) -> Result<NoteSignature, NoteError> {
    let malformed = NoteError::MalformedSignatureLine { line: line_number };
    let rest = line.strip_prefix(SIGNATURE_PREFIX).ok_or(malformed.clone())?;
    let (name, encoded) = rest.split_once(' ').ok_or(malformed)?;
    let name = KeyName::new(name).map_err(|_| NoteError::InvalidKeyName { line: line_number })?;
    let invalid = NoteError::InvalidSignatureEncoding { line: line_number };
    let bytes = BASE64.decode(encoded).map_err(|_| invalid.clone())?;
    let (key_id, signature) = bytes.split_first_chunk::<4>().ok_or(invalid.clone())?;
    if signature.is_empty() {
        return Err(invalid);
    }
    Ok(NoteSignature {
        name,
        key_id: KeyId(*key_id),
        signature: signature.to_vec(),
    })
}

/// Has `signer` sign `text`, which the caller has checked.
fn sign_text<S: NoteSigner + ?Sized>(text: &str, signer: &S) -> Result<NoteSignature, SignError<S::Error>> {
    let signature = signer.sign(text.as_bytes()).map_err(SignError::Signer)?;
    if signature.is_empty() {
        return Err(SignError::EmptySignature);
    }
    Ok(NoteSignature {
        name: signer.key_name().clone(),
        key_id: signer.key_id(),
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{EcdsaEncoding, EcdsaSigner, Ed25519Signer};

    const TEXT: &str = "ca.example.org/audit/v1\n7\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";

    #[test]
    fn key_names_follow_the_spec() {
        for valid in ["ca.example.org/audit/v1", "PeterNeumann", "é"] {
            assert!(KeyName::new(valid).is_ok(), "{valid}");
        }
        for invalid in ["", "a b", "a+b", "a\nb", "a\tb", "a\u{7f}"] {
            assert_eq!(KeyName::new(invalid), Err(InvalidKeyName(invalid.to_owned())));
        }
    }

    #[test]
    fn signed_notes_round_trip_and_verify() {
        let ed25519 = Ed25519Signer::new("log.example/ed", 1);
        let ecdsa = EcdsaSigner::new("log.example/ecdsa", EcdsaEncoding::Der);
        let hsm_like = EcdsaSigner::new("log.example/hsm", EcdsaEncoding::FixedThenReencoded);
        let mut note = SignedNote::sign(TEXT, &ed25519).expect("signs");
        note.add_signature(&ecdsa).expect("signs");
        note.add_signature(&hsm_like).expect("signs");

        let serialized = note.to_string();
        assert!(serialized.starts_with(&format!("{TEXT}\n\u{2014} log.example/ed ")));
        let parsed = SignedNote::parse(&serialized).expect("parses");
        assert_eq!(parsed, note);
        assert_eq!(parsed.to_string(), serialized);

        let verifiers = [ed25519.verifier(), ecdsa.verifier(), hsm_like.verifier()];
        let names: Vec<&str> = ["log.example/ed", "log.example/ecdsa", "log.example/hsm"].into();
        let verified = parsed.verify(&verifiers).expect("verifies");
        assert_eq!(verified.iter().map(KeyName::as_str).collect::<Vec<_>>(), names);
        // Any single known key is enough; the others are ignored.
        assert_eq!(parsed.verify(&verifiers[1..2]).expect("verifies").len(), 1);
    }

    #[test]
    fn a_bad_signature_from_a_known_key_rejects_the_note() {
        let ed25519 = Ed25519Signer::new("log.example/ed", 1);
        let ecdsa = EcdsaSigner::new("log.example/ecdsa", EcdsaEncoding::Der);
        let mut note = SignedNote::sign(TEXT, &ed25519).expect("signs");
        note.add_signature(&ecdsa).expect("signs");
        let forged = note.to_string().replacen("\n7\n", "\n8\n", 1);
        let forged = SignedNote::parse(&forged).expect("parses");
        assert_eq!(
            forged.verify(&[ecdsa.verifier()]),
            Err(VerifyError::BadSignature {
                name: ecdsa.verifier().name().clone(),
                key_id: ecdsa.verifier().key_id(),
            })
        );
        // A key with the same name but another ID is unknown, not a failure.
        let impostor = Ed25519Signer::new("log.example/ed", 2);
        assert_eq!(note.verify(&[impostor.verifier()]), Err(VerifyError::NoKnownSignature));
        assert_eq!(note.verify(&[]), Err(VerifyError::NoKnownSignature));
    }

    #[test]
    fn at_least_sixteen_signatures_are_accepted_and_the_count_is_bounded() {
        let signers: Vec<Ed25519Signer> = (0..=MAX_SIGNATURES)
            .map(|i| Ed25519Signer::new(&format!("witness{i}"), i as u8))
            .collect();
        let mut note = SignedNote::sign(TEXT, &signers[0]).expect("signs");
        for signer in &signers[1..MAX_SIGNATURES] {
            note.add_signature(signer).expect("below the bound");
            let count = note.signatures().len();
            if count == 17 {
                let parsed = SignedNote::parse(&note.to_string()).expect("17 signatures parse");
                let last = signers[16].verifier();
                assert_eq!(parsed.verify(&[last]).expect("verifies").len(), 1);
            }
        }
        assert_eq!(note.signatures().len(), MAX_SIGNATURES);
        let at_bound = SignedNote::parse(&note.to_string()).expect("the bound parses");
        let all: Vec<VerifierKey> = signers.iter().map(Ed25519Signer::verifier).collect();
        assert_eq!(at_bound.verify(&all).expect("verifies").len(), MAX_SIGNATURES);

        assert_eq!(
            note.add_signature(&signers[MAX_SIGNATURES]),
            Err(SignError::TooManySignatures)
        );
        let extra_line = format!("\u{2014} extra {}\n", BASE64.encode([1u8; 68]));
        let over_bound = format!("{note}{extra_line}");
        assert_eq!(SignedNote::parse(&over_bound), Err(NoteError::TooManySignatures));
    }

    #[test]
    fn signing_checks_the_text_and_passes_signer_errors_through() {
        struct FailingSigner(KeyName);
        impl NoteSigner for FailingSigner {
            type Error = &'static str;
            fn key_name(&self) -> &KeyName {
                &self.0
            }
            fn key_id(&self) -> KeyId {
                KeyId([0; 4])
            }
            fn sign(&self, message: &[u8]) -> Result<Vec<u8>, &'static str> {
                if message.is_empty() {
                    Ok(Vec::new())
                } else {
                    Err("token removed")
                }
            }
        }
        let signer = FailingSigner(KeyName::new("hsm").expect("valid"));
        assert_eq!(SignedNote::sign(TEXT, &signer), Err(SignError::Signer("token removed")));
        assert_eq!(
            SignedNote::sign("no newline", &signer),
            Err(SignError::InvalidText(NoteError::MissingFinalNewline))
        );
        assert_eq!(
            SignedNote::sign("bell\u{7}\n", &signer),
            Err(SignError::InvalidText(NoteError::ControlCharacter))
        );
    }

    #[test]
    fn malformed_notes_are_rejected() {
        let signer = Ed25519Signer::new("log.example/ed", 1);
        let good = SignedNote::sign(TEXT, &signer).expect("signs").to_string();
        let signature_line = good.rsplit_once("\n\n").expect("split").1;
        let cases = [
            (TEXT.to_owned(), NoteError::MissingSignatureBlock),
            (format!("{TEXT}\n"), NoteError::NoSignatures),
            (format!("{TEXT}\n{signature_line}\n"), NoteError::NoSignatures),
            (
                format!("{TEXT}\n{}", signature_line.trim_end()),
                NoteError::MissingFinalNewline,
            ),
            (
                format!("{TEXT}\n{signature_line}junk\n"),
                NoteError::MalformedSignatureLine { line: 2 },
            ),
            (
                format!("{TEXT}\n\u{2014} nospace\n"),
                NoteError::MalformedSignatureLine { line: 1 },
            ),
            (
                format!("{TEXT}\n\u{2014}  AAAAAAA=\n"),
                NoteError::InvalidKeyName { line: 1 },
            ),
            (
                format!("{TEXT}\n\u{2014} name not base64\n"),
                NoteError::InvalidSignatureEncoding { line: 1 },
            ),
            (format!("a\u{0}b\n\n{signature_line}"), NoteError::ControlCharacter),
        ];
        for (input, expected) in cases {
            assert_eq!(SignedNote::parse(&input), Err(expected), "{input:?}");
        }
    }

    /// A signer that returns fixed bytes, to build arbitrary signature lines.
    struct ReplaySigner {
        name: KeyName,
        key_id: KeyId,
        signature: Vec<u8>,
    }

    impl NoteSigner for ReplaySigner {
        type Error = std::convert::Infallible;
        fn key_name(&self) -> &KeyName {
            &self.name
        }
        fn key_id(&self) -> KeyId {
            self.key_id
        }
        fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, Self::Error> {
            Ok(self.signature.clone())
        }
    }

    proptest::proptest! {
        #[test]
        fn notes_round_trip(
            lines in proptest::collection::vec("[^\\p{Cc}]{0,30}", 1..6),
            signers in proptest::collection::vec(
                ("[a-z0-9./_-]{1,20}", proptest::prelude::any::<[u8; 4]>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 1..80)),
                1..20,
            ),
        ) {
            let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
            let mut signers = signers.into_iter().map(|(name, key_id, signature)| ReplaySigner {
                name: KeyName::new(&name).expect("regex makes valid names"),
                key_id: KeyId(key_id),
                signature,
            });
            let first = signers.next().expect("at least one");
            let mut note = SignedNote::sign(&text, &first).expect("valid text");
            for signer in signers {
                note.add_signature(&signer).expect("below the bound");
            }
            let serialized = note.to_string();
            let parsed = SignedNote::parse(&serialized).expect("parses");
            proptest::prop_assert_eq!(&parsed, &note);
            proptest::prop_assert_eq!(parsed.to_string(), serialized);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(input in "(\\PC|\n|\u{2014} ){0,200}") {
            if let Ok(note) = SignedNote::parse(&input) {
                proptest::prop_assert_eq!(note.to_string(), input);
            }
        }
    }
}
