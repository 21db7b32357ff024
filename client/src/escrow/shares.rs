//! The recovery secret and its Shamir shares (k of n over GF(256), via vsss-rs), written as words for paper.
//!
//! A share in words is 32 words of the BIP-39 English list, 11 bits each, encoding 44 bytes:
//! ```text
//! format 0x01 (1) ‖ threshold (1) ‖ index (1) ‖ split id (4) ‖ share value (32) ‖ checksum (5)
//! ```
//! The checksum is the first 5 bytes of SHA-256("e2ee-ca recovery share v1" ‖ the 39 bytes before it), so a
//! mistyped, missing or swapped word is caught (but for a 2⁻⁴⁰ chance) before any share is combined. The split id
//! is random per split, the same on all its shares: shares of two ceremonies are refused as such.

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use hpke::{Deserializable, Serializable};

use super::{EscrowPrivateKey, RecoveryPublicKey};
use crate::crypto::{CryptoError, fill_random};
use crate::mnemonic::word_list;

/// Fewest shares a split may require.
pub const MIN_THRESHOLD: u8 = 2;
/// Most shares a split may make.
pub const MAX_SHARES: u8 = 16;
/// Number of words in a share.
pub const SHARE_WORDS: usize = 32;

/// Length of the recovery secret (an X25519 private key).
const SECRET_LEN: usize = 32;
/// Length of a split id.
const SPLIT_ID_LEN: usize = 4;
/// The share format this code writes and reads.
const SHARE_FORMAT: u8 = 1;
/// Bytes before the checksum.
const PAYLOAD_LEN: usize = 3 + SPLIT_ID_LEN + SECRET_LEN;
/// Checksum bytes.
const CHECKSUM_LEN: usize = 5;
/// Bytes the words encode: 32 words × 11 bits = 352 bits = 44 bytes.
const ENCODED_LEN: usize = PAYLOAD_LEN + CHECKSUM_LEN;
/// Domain separation of the checksum.
const CHECKSUM_LABEL: &[u8] = b"e2ee-ca recovery share v1";

/// Why shares could not be made, read or combined. No message contains a share value or a word.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShareError {
    /// The threshold or share count is out of range (2 ≤ threshold ≤ count ≤ 16).
    #[error("cannot split {threshold} of {count}: it needs {MIN_THRESHOLD} ≤ threshold ≤ shares ≤ {MAX_SHARES}")]
    InvalidParameters {
        /// The threshold asked for.
        threshold: u8,
        /// The number of shares asked for.
        count: u8,
    },
    /// The share does not have 32 words.
    #[error("a share has {SHARE_WORDS} words, this one has {0}")]
    WordCount(usize),
    /// A word is not in the BIP-39 English list (position counts from 1).
    #[error("word {position} of the share is not in the word list")]
    UnknownWord {
        /// The 1-based position of the word.
        position: usize,
    },
    /// The words do not check: one is mistyped, missing, or out of order.
    #[error("the share's checksum does not match: a word is mistyped, missing or out of order")]
    BadChecksum,
    /// The share is of a format this tool does not know.
    #[error("share format {0} is not supported (this tool reads format {SHARE_FORMAT})")]
    UnsupportedFormat(u8),
    /// The share checks but its index or threshold is out of range (it was not made by this tool).
    #[error("the share's {0} is out of range")]
    OutOfRange(&'static str),
    /// No share was given.
    #[error("no share was given")]
    NoShares,
    /// Fewer shares than the threshold.
    #[error("{have} distinct shares given, {need} needed")]
    TooFewShares {
        /// Distinct shares given.
        have: usize,
        /// The threshold.
        need: usize,
    },
    /// A share belongs to another split (another ceremony) than the first share given.
    #[error(
        "share {index} (given as number {position}) is from split {split_id}, the first share given is from split {first_split_id}"
    )]
    MixedSplits {
        /// Its index.
        index: u8,
        /// Its 1-based position among the shares given.
        position: usize,
        /// Its split id, hex.
        split_id: String,
        /// The first share's split id, hex.
        first_split_id: String,
    },
    /// A share of the same split says another threshold than the first share (a forged share).
    #[error(
        "share {index} (given as number {position}) says threshold {threshold}, the first share says {first_threshold}"
    )]
    ThresholdMismatch {
        /// Its index.
        index: u8,
        /// Its 1-based position among the shares given.
        position: usize,
        /// Its threshold.
        threshold: u8,
        /// The first share's threshold.
        first_threshold: u8,
    },
    /// The same share index was given twice.
    #[error("share {index} was given twice (again as number {position})")]
    DuplicateShare {
        /// The repeated index.
        index: u8,
        /// The 1-based position of the repeat among the shares given.
        position: usize,
    },
    /// The shares combine to a key other than the registered recovery key (a share is wrong).
    #[error("the shares do not combine to the expected recovery key (fingerprint {expected})")]
    WrongKey {
        /// The expected key's fingerprint.
        expected: String,
    },
    /// The random generator failed.
    #[error(transparent)]
    Random(#[from] CryptoError),
    /// vsss-rs refused to split or combine.
    #[error("secret sharing failed: {0}")]
    Shamir(String),
}

/// The recovery key's private half: an X25519 private key, zeroized on drop (x25519-dalek's `StaticSecret`).
pub struct RecoverySecret {
    key: EscrowPrivateKey,
}

impl std::fmt::Debug for RecoverySecret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("RecoverySecret(<secret>)")
    }
}

impl RecoverySecret {
    /// A fresh key pair from the OS generator (hpke panics only if the OS generator fails).
    pub fn generate() -> (RecoverySecret, RecoveryPublicKey) {
        let secret = RecoverySecret {
            key: super::generate_private_key(),
        };
        let public_key = secret.public_key();
        (secret, public_key)
    }

    /// The matching public key.
    pub fn public_key(&self) -> RecoveryPublicKey {
        super::public_key_of(&self.key)
    }

    /// The KEM private key, for `open`.
    pub(crate) fn hpke_private_key(&self) -> &EscrowPrivateKey {
        &self.key
    }

    fn to_bytes(&self) -> Zeroizing<[u8; SECRET_LEN]> {
        let mut bytes = Zeroizing::new([0u8; SECRET_LEN]);
        let mut serialized = self.key.to_bytes();
        bytes.copy_from_slice(&serialized);
        serialized.zeroize();
        bytes
    }

    /// From the 32 raw bytes (clamped as X25519 stores them).
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<RecoverySecret, ShareError> {
        let key = EscrowPrivateKey::from_bytes(bytes)
            .map_err(|_| ShareError::Shamir(format!("the combined secret is {} bytes", bytes.len())))?;
        Ok(RecoverySecret { key })
    }
}

/// One Shamir share of a recovery secret. Its value is zeroized on drop.
#[derive(Clone)]
pub struct Share {
    index: u8,
    threshold: u8,
    split_id: [u8; SPLIT_ID_LEN],
    value: Zeroizing<[u8; SECRET_LEN]>,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "Share(index {}, threshold {}, split {}, <secret>)",
            self.index,
            self.threshold,
            self.split_id()
        )
    }
}

impl Share {
    /// Its index (the x coordinate), from 1.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// How many shares of its split are needed.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// The id of the split it belongs to, hex (8 characters).
    pub fn split_id(&self) -> String {
        hex::encode(self.split_id)
    }

    /// The 32 words for paper, lower case, separated by single spaces.
    pub fn to_words(&self) -> Zeroizing<String> {
        let mut encoded = Zeroizing::new([0u8; ENCODED_LEN]);
        encoded[0] = SHARE_FORMAT;
        encoded[1] = self.threshold;
        encoded[2] = self.index;
        encoded[3..3 + SPLIT_ID_LEN].copy_from_slice(&self.split_id);
        encoded[3 + SPLIT_ID_LEN..PAYLOAD_LEN].copy_from_slice(self.value.as_ref());
        let checksum = checksum(&encoded[..PAYLOAD_LEN]);
        encoded[PAYLOAD_LEN..].copy_from_slice(&checksum);
        let words = word_list();
        let mut phrase = Zeroizing::new(String::with_capacity(SHARE_WORDS * 9));
        for position in 0..SHARE_WORDS {
            if position > 0 {
                phrase.push(' ');
            }
            phrase.push_str(words[usize::from(read_bits11(&encoded, position))]);
        }
        phrase
    }

    /// Parses a share's words as an officer typed them: any whitespace between words, any case.
    pub fn parse(phrase: &str) -> Result<Share, ShareError> {
        let count = phrase.split_whitespace().count();
        if count != SHARE_WORDS {
            return Err(ShareError::WordCount(count));
        }
        let words = word_list();
        let mut encoded = Zeroizing::new([0u8; ENCODED_LEN]);
        for (position, word) in phrase.split_whitespace().enumerate() {
            let lower = Zeroizing::new(word.to_lowercase());
            let index = words
                .binary_search(&lower.as_str())
                .map_err(|_| ShareError::UnknownWord { position: position + 1 })?;
            // The list has 2048 words, so an index fits in 11 bits.
            write_bits11(&mut encoded, position, index as u16);
        }
        let expected = checksum(&encoded[..PAYLOAD_LEN]);
        if !crate::crypto::constant_time_eq(&expected, &encoded[PAYLOAD_LEN..]) {
            return Err(ShareError::BadChecksum);
        }
        if encoded[0] != SHARE_FORMAT {
            return Err(ShareError::UnsupportedFormat(encoded[0]));
        }
        let (threshold, index) = (encoded[1], encoded[2]);
        if !(MIN_THRESHOLD..=MAX_SHARES).contains(&threshold) {
            return Err(ShareError::OutOfRange("threshold"));
        }
        if !(1..=MAX_SHARES).contains(&index) {
            return Err(ShareError::OutOfRange("index"));
        }
        let mut split_id = [0u8; SPLIT_ID_LEN];
        split_id.copy_from_slice(&encoded[3..3 + SPLIT_ID_LEN]);
        let mut value = Zeroizing::new([0u8; SECRET_LEN]);
        value.copy_from_slice(&encoded[3 + SPLIT_ID_LEN..PAYLOAD_LEN]);
        Ok(Share {
            index,
            threshold,
            split_id,
            value,
        })
    }
}

/// Splits `secret` into `count` shares, any `threshold` of which give it back. Indices run 1..=count.
pub fn split(secret: &RecoverySecret, threshold: u8, count: u8) -> Result<Vec<Share>, ShareError> {
    if threshold < MIN_THRESHOLD || threshold > count || count > MAX_SHARES {
        return Err(ShareError::InvalidParameters { threshold, count });
    }
    let mut split_id = [0u8; SPLIT_ID_LEN];
    fill_random(&mut split_id)?;
    let secret_bytes = secret.to_bytes();
    let identifiers = (1..=count).map(|index| vsss_rs::IdentifierGf256(vsss_rs::Gf256(index)));
    // vsss-rs draws the polynomial coefficients from the OS generator; `UnwrapErr` panics only if it fails.
    let raw_shares = vsss_rs::Gf256::split_bytes_with_participant_ids_iter(
        usize::from(threshold),
        usize::from(count),
        secret_bytes.as_ref(),
        getrandom::rand_core::UnwrapErr(getrandom::SysRng),
        identifiers,
    )
    .map_err(|error| ShareError::Shamir(error.to_string()))?;
    let raw_shares: Vec<Zeroizing<Vec<u8>>> = raw_shares.into_iter().map(Zeroizing::new).collect();
    let mut shares = Vec::with_capacity(raw_shares.len());
    for (raw, index) in raw_shares.iter().zip(1..=count) {
        // vsss-rs writes each share as its identifier followed by one byte per secret byte.
        let Some((identifier, value_bytes)) = raw.split_first() else {
            return Err(ShareError::Shamir("an empty share".into()));
        };
        if *identifier != index || value_bytes.len() != SECRET_LEN {
            return Err(ShareError::Shamir("an unexpected share layout".into()));
        }
        let mut value = Zeroizing::new([0u8; SECRET_LEN]);
        value.copy_from_slice(value_bytes);
        shares.push(Share {
            index,
            threshold,
            split_id,
            value,
        });
    }
    Ok(shares)
}

/// Combines shares of one split into the secret: at least `threshold` distinct shares, all of the same split.
///
/// Interpolation cannot tell a wrong share from a right one; check the result with `combine_for`.
pub fn combine(shares: &[Share]) -> Result<RecoverySecret, ShareError> {
    let Some(first) = shares.first() else {
        return Err(ShareError::NoShares);
    };
    for (offset, share) in shares.iter().enumerate() {
        let position = offset + 1;
        if share.split_id != first.split_id {
            return Err(ShareError::MixedSplits {
                index: share.index,
                position,
                split_id: share.split_id(),
                first_split_id: first.split_id(),
            });
        }
        if share.threshold != first.threshold {
            return Err(ShareError::ThresholdMismatch {
                index: share.index,
                position,
                threshold: share.threshold,
                first_threshold: first.threshold,
            });
        }
        if shares[..offset].iter().any(|earlier| earlier.index == share.index) {
            return Err(ShareError::DuplicateShare {
                index: share.index,
                position,
            });
        }
    }
    if shares.len() < usize::from(first.threshold) {
        return Err(ShareError::TooFewShares {
            have: shares.len(),
            need: usize::from(first.threshold),
        });
    }
    let raw_shares: Vec<Vec<u8>> = shares
        .iter()
        .map(|share| {
            let mut raw = Vec::with_capacity(1 + SECRET_LEN);
            raw.push(share.index);
            raw.extend_from_slice(share.value.as_ref());
            raw
        })
        .collect();
    let raw_shares = Zeroizing::new(raw_shares);
    let secret_bytes = Zeroizing::new(
        vsss_rs::Gf256::combine_bytes(raw_shares.as_slice()).map_err(|error| ShareError::Shamir(error.to_string()))?,
    );
    RecoverySecret::from_bytes(&secret_bytes)
}

/// `combine`, then checks that the secret is the private half of `expected` (the registered recovery key).
pub fn combine_for(shares: &[Share], expected: &RecoveryPublicKey) -> Result<RecoverySecret, ShareError> {
    let secret = combine(shares)?;
    if secret.public_key() != *expected {
        return Err(ShareError::WrongKey {
            expected: expected.fingerprint(),
        });
    }
    Ok(secret)
}

/// The share checksum: the first 5 bytes of SHA-256(label ‖ payload).
fn checksum(payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::new()
        .chain_update(CHECKSUM_LABEL)
        .chain_update(payload)
        .finalize();
    let mut checksum = [0u8; CHECKSUM_LEN];
    checksum.copy_from_slice(&digest[..CHECKSUM_LEN]);
    checksum
}

/// The 11-bit group at `position` of `bytes`, most significant bit first.
fn read_bits11(bytes: &[u8; ENCODED_LEN], position: usize) -> u16 {
    let mut value = 0u16;
    for bit in position * 11..position * 11 + 11 {
        let set = (bytes[bit / 8] >> (7 - bit % 8)) & 1;
        value = (value << 1) | u16::from(set);
    }
    value
}

/// Writes the low 11 bits of `value` as the group at `position` of `bytes`, most significant bit first.
fn write_bits11(bytes: &mut [u8; ENCODED_LEN], position: usize, value: u16) {
    for (offset, bit) in (position * 11..position * 11 + 11).enumerate() {
        let set = ((value >> (10 - offset)) & 1) as u8;
        bytes[bit / 8] |= set << (7 - bit % 8);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split_of(threshold: u8, count: u8) -> (RecoverySecret, RecoveryPublicKey, Vec<Share>) {
        let (secret, public_key) = RecoverySecret::generate();
        let shares = split(&secret, threshold, count).expect("split");
        (secret, public_key, shares)
    }

    /// The word at `position` (1-based) of `phrase` replaced by `replacement`.
    fn with_word(phrase: &str, position: usize, replacement: &str) -> String {
        let mut words: Vec<&str> = phrase.split(' ').collect();
        words[position - 1] = replacement;
        words.join(" ")
    }

    #[test]
    fn the_public_key_is_the_one_aws_lc_computes() {
        // An independent X25519 and SPKI encoder: aws-lc's.
        use aws_lc_rs::encoding::AsDer;
        for _ in 0..8 {
            let (secret, public_key) = RecoverySecret::generate();
            let private = aws_lc_rs::agreement::PrivateKey::from_private_key(
                &aws_lc_rs::agreement::X25519,
                secret.to_bytes().as_ref(),
            )
            .expect("aws-lc takes the key");
            let der = private.compute_public_key().expect("public").as_der().expect("der");
            assert_eq!(der.as_ref(), public_key.spki_der().as_slice());
        }
    }

    #[test]
    fn split_makes_numbered_shares_of_one_split() {
        let (_, _, shares) = split_of(3, 5);
        assert_eq!(shares.len(), 5);
        for (share, index) in shares.iter().zip(1..) {
            assert_eq!(share.index(), index);
            assert_eq!(share.threshold(), 3);
            assert_eq!(share.split_id(), shares[0].split_id());
            assert_eq!(share.split_id().len(), 8);
        }
        let (_, _, other) = split_of(3, 5);
        assert_ne!(
            other[0].split_id(),
            shares[0].split_id(),
            "split ids are random (2⁻³² to collide)"
        );
        assert!(!format!("{:?}", shares[0]).contains(&hex::encode(shares[0].value.as_ref())));
    }

    #[test]
    fn split_parameters_are_bounded() {
        let (secret, _) = RecoverySecret::generate();
        for (threshold, count) in [(1, 5), (0, 0), (4, 3), (2, 17), (17, 17)] {
            assert!(
                matches!(
                    split(&secret, threshold, count),
                    Err(ShareError::InvalidParameters { .. })
                ),
                "{threshold} of {count}"
            );
        }
        for (threshold, count) in [(2, 2), (16, 16), (2, 16)] {
            assert_eq!(
                split(&secret, threshold, count).expect("split").len(),
                usize::from(count)
            );
        }
    }

    #[test]
    fn fewer_than_the_threshold_is_refused() {
        let (_, _, shares) = split_of(3, 5);
        assert!(matches!(
            combine(&shares[..2]),
            Err(ShareError::TooFewShares { have: 2, need: 3 })
        ));
        assert!(matches!(
            combine(&shares[..1]),
            Err(ShareError::TooFewShares { have: 1, need: 3 })
        ));
        assert!(matches!(combine(&[]), Err(ShareError::NoShares)));
    }

    #[test]
    fn duplicates_and_other_splits_are_named() {
        let (_, public_key, shares) = split_of(3, 5);
        let (_, _, other) = split_of(3, 5);
        let repeated = [shares[0].clone(), shares[1].clone(), shares[0].clone()];
        assert!(matches!(
            combine(&repeated),
            Err(ShareError::DuplicateShare { index: 1, position: 3 })
        ));
        let mixed = [shares[0].clone(), shares[1].clone(), other[2].clone()];
        match combine_for(&mixed, &public_key) {
            Err(ShareError::MixedSplits {
                index,
                position,
                split_id,
                first_split_id,
            }) => {
                assert_eq!((index, position), (3, 3));
                assert_eq!(split_id, other[2].split_id());
                assert_eq!(first_split_id, shares[0].split_id());
            }
            result => panic!("expected MixedSplits, got {result:?}"),
        }
    }

    #[test]
    fn a_wrong_share_value_gives_another_key() {
        let (_, public_key, shares) = split_of(3, 5);
        let mut wrong = shares[1].clone();
        // Not byte 0 or 31: X25519 clamping ignores 5 of their bits, so some changes there give the same key.
        wrong.value[10] ^= 1;
        let subset = [shares[0].clone(), wrong, shares[2].clone()];
        assert!(matches!(
            combine_for(&subset, &public_key),
            Err(ShareError::WrongKey { .. })
        ));
        let (_, other_key) = RecoverySecret::generate();
        assert!(matches!(
            combine_for(&shares[..3], &other_key),
            Err(ShareError::WrongKey { .. })
        ));
        // A share claiming another threshold under the same split id.
        let mut forged = shares[2].clone();
        forged.threshold = 2;
        let subset = [shares[0].clone(), shares[1].clone(), forged];
        assert!(matches!(
            combine(&subset),
            Err(ShareError::ThresholdMismatch { index: 3, .. })
        ));
    }

    #[test]
    fn words_encode_the_documented_bytes() {
        let share = Share {
            index: 2,
            threshold: 3,
            split_id: [0xde, 0xad, 0xbe, 0xef],
            value: Zeroizing::new([0x55; SECRET_LEN]),
        };
        let phrase = share.to_words();
        assert_eq!(phrase.split(' ').count(), SHARE_WORDS);
        // 0x01 0x03 0x02 … : the first 11 bits are 00000001 000 = 8, the next 00011 000000 = 192.
        let words = word_list();
        let mut iter = phrase.split(' ');
        assert_eq!(iter.next(), Some(words[8]));
        assert_eq!(iter.next(), Some(words[192]));
        let parsed = Share::parse(&phrase).expect("parse");
        assert_eq!(
            (parsed.index(), parsed.threshold(), parsed.split_id()),
            (2, 3, "deadbeef".to_owned())
        );
        assert_eq!(parsed.value, share.value);
    }

    #[test]
    fn parsing_tolerates_case_and_whitespace() {
        let (_, _, shares) = split_of(2, 3);
        let phrase = shares[1].to_words();
        let messy = format!("  {}\t\n", phrase.to_uppercase().replace(' ', "   "));
        assert_eq!(Share::parse(&messy).expect("parse").to_words(), phrase);
    }

    #[test]
    fn bad_words_are_named() {
        let (_, _, shares) = split_of(3, 5);
        let phrase = shares[0].to_words();
        assert!(matches!(Share::parse(""), Err(ShareError::WordCount(0))));
        let short: Vec<&str> = phrase.split(' ').take(31).collect();
        assert!(matches!(Share::parse(&short.join(" ")), Err(ShareError::WordCount(31))));
        assert!(matches!(
            Share::parse(&format!("{} zoo", *phrase)),
            Err(ShareError::WordCount(33))
        ));
        assert!(matches!(
            Share::parse(&with_word(&phrase, 7, "abandonn")),
            Err(ShareError::UnknownWord { position: 7 })
        ));
        // Every single changed word, and every swap of two different neighbours, fails the checksum.
        let words: Vec<&str> = phrase.split(' ').collect();
        for position in 1..=SHARE_WORDS {
            let replacement = if words[position - 1] == "zoo" { "abandon" } else { "zoo" };
            assert!(
                matches!(
                    Share::parse(&with_word(&phrase, position, replacement)),
                    Err(ShareError::BadChecksum)
                ),
                "word {position}"
            );
        }
        for position in 0..SHARE_WORDS - 1 {
            if words[position] == words[position + 1] {
                continue;
            }
            let mut swapped = words.clone();
            swapped.swap(position, position + 1);
            assert!(
                matches!(Share::parse(&swapped.join(" ")), Err(ShareError::BadChecksum)),
                "swap {position}"
            );
        }
    }

    #[test]
    fn a_checked_share_out_of_range_is_refused() {
        for (format, threshold, index, expected) in [
            (2, 3, 1, "format"),
            (1, 1, 1, "threshold"),
            (1, 3, 0, "index"),
            (1, 3, 17, "index"),
        ] {
            let mut encoded = [0u8; ENCODED_LEN];
            encoded[..3].copy_from_slice(&[format, threshold, index]);
            let checksum = checksum(&encoded[..PAYLOAD_LEN]);
            encoded[PAYLOAD_LEN..].copy_from_slice(&checksum);
            let words = word_list();
            let phrase: Vec<&str> = (0..SHARE_WORDS)
                .map(|position| words[usize::from(read_bits11(&encoded, position))])
                .collect();
            let result = Share::parse(&phrase.join(" "));
            match expected {
                "format" => assert!(matches!(result, Err(ShareError::UnsupportedFormat(2)))),
                field => assert!(
                    matches!(result, Err(ShareError::OutOfRange(name)) if name == field),
                    "{field}"
                ),
            }
        }
    }

    /// The `key: value` blocks of a vector file, without comments.
    pub(crate) fn vector_cases(text: &str) -> Vec<std::collections::HashMap<String, String>> {
        text.split("\n\n")
            .map(|block| {
                block
                    .lines()
                    .filter(|line| !line.starts_with('#'))
                    .filter_map(|line| line.split_once(": "))
                    .map(|(key, value)| (key.to_owned(), value.to_owned()))
                    .collect::<std::collections::HashMap<_, _>>()
            })
            .filter(|case| !case.is_empty())
            .collect()
    }

    #[test]
    fn independent_share_vectors_combine() {
        let cases = vector_cases(include_str!("../../testdata/escrow/shares.txt"));
        assert_eq!(cases.len(), 4);
        for case in cases {
            let name = &case["name"];
            let expected = RecoveryPublicKey::from_spki_der(&hex::decode(&case["spki"]).expect("hex")).expect("spki");
            let chosen: Vec<Share> = case["combine"]
                .split(' ')
                .map(|index| {
                    let share = Share::parse(&case[&format!("share {index}")]).expect(name);
                    assert_eq!(share.index().to_string(), index, "{name}");
                    assert_eq!(share.threshold().to_string(), case["threshold"], "{name}");
                    assert_eq!(share.split_id(), case["split_id"], "{name}");
                    share
                })
                .collect();
            match case["expect"].as_str() {
                "combines" => {
                    let secret = combine_for(&chosen, &expected).expect(name);
                    assert_eq!(hex::encode(secret.to_bytes().as_ref()), case["secret"], "{name}");
                }
                "wrong-key" => {
                    assert!(
                        matches!(combine_for(&chosen, &expected), Err(ShareError::WrongKey { .. })),
                        "{name}"
                    );
                }
                other => panic!("{name}: unknown expectation {other}"),
            }
        }
    }

    /// A threshold, a count and a subset of the count's indices (as positions 0..count) of at least threshold.
    fn split_and_subset() -> impl Strategy<Value = (u8, u8, Vec<usize>)> {
        (MIN_THRESHOLD..=MAX_SHARES)
            .prop_flat_map(|threshold| (Just(threshold), threshold..=MAX_SHARES))
            .prop_flat_map(|(threshold, count)| {
                let subset = proptest::sample::subsequence(
                    (0..usize::from(count)).collect::<Vec<_>>(),
                    usize::from(threshold)..=usize::from(count),
                );
                (Just(threshold), Just(count), subset).prop_flat_map(|(threshold, count, subset)| {
                    (Just(threshold), Just(count), Just(subset).prop_shuffle())
                })
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_threshold_subset_combines_to_the_secret((threshold, count, subset) in split_and_subset()) {
            let (secret, public_key, shares) = split_of(threshold, count);
            let chosen: Vec<Share> = subset.iter().map(|position| shares[*position].clone()).collect();
            let combined = combine_for(&chosen, &public_key).expect("combine");
            prop_assert_eq!(combined.to_bytes(), secret.to_bytes());
            // One fewer is refused.
            prop_assert!(
                matches!(combine(&chosen[..usize::from(threshold) - 1]), Err(ShareError::TooFewShares { .. })),
                "threshold minus one"
            );
        }

        #[test]
        fn words_round_trip(index in 1..=MAX_SHARES, threshold in MIN_THRESHOLD..=MAX_SHARES, split_id in any::<[u8; 4]>(), value in any::<[u8; 32]>()) {
            let share = Share { index, threshold, split_id, value: Zeroizing::new(value) };
            let parsed = Share::parse(&share.to_words()).expect("parse");
            prop_assert_eq!((parsed.index, parsed.threshold, parsed.split_id), (index, threshold, split_id));
            prop_assert_eq!(*parsed.value, value);
        }

        #[test]
        fn parse_never_panics(phrase in "[a-z ]{0,400}") {
            let _ = Share::parse(&phrase);
        }
    }
}
