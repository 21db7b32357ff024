//! The 12-word mnemonic that protects a user's private key, and the passphrase derived from it.
//!
//! Nextcloud mnemonics are 12 words drawn independently and uniformly from the BIP-39 English list
//! (132 bits). They are *not* BIP-39 mnemonics: there is no checksum and no BIP-39 seed derivation
//! (nextcloud-e2ee.md §1.4). The KDF passphrase is the words lower-cased with all whitespace removed.

use std::sync::LazyLock;

use zeroize::Zeroizing;

use crate::crypto::{CryptoError, fill_random};

/// The BIP-39 English list, one word per line (see wordlist/README.md for its provenance).
const WORD_LIST: &str = include_str!("../wordlist/bip39-english.txt");

/// Number of words in a mnemonic.
pub const WORD_COUNT: usize = 12;

/// Why a mnemonic was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MnemonicError {
    /// The phrase does not have exactly 12 words.
    #[error("a mnemonic has {WORD_COUNT} words, this one has {0}")]
    WordCount(usize),
    /// A word is not in the BIP-39 English list (position counts from 1).
    #[error("word {position} of the mnemonic is not in the word list")]
    UnknownWord {
        /// The 1-based position of the word.
        position: usize,
    },
    /// The random generator failed while making a new mnemonic.
    #[error(transparent)]
    Random(#[from] CryptoError),
}

/// A 12-word mnemonic, held as lower-case words separated by single spaces and zeroized on drop.
#[derive(Clone)]
pub struct Mnemonic(Zeroizing<String>);

impl std::fmt::Debug for Mnemonic {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Mnemonic(<secret>)")
    }
}

impl Mnemonic {
    /// Draws 12 words independently and uniformly with the OS CSPRNG.
    pub fn generate() -> Result<Mnemonic, MnemonicError> {
        let words = word_list();
        let mut random = Zeroizing::new([0u8; 2 * WORD_COUNT]);
        fill_random(random.as_mut())?;
        let mut phrase = Zeroizing::new(String::new());
        for pair in random.chunks_exact(2) {
            // 2048 divides 65536, so the low 11 bits of a uniform u16 are uniform: no modulo bias.
            let index = usize::from(u16::from_be_bytes([pair[0], pair[1]]) & 0x07ff);
            if !phrase.is_empty() {
                phrase.push(' ');
            }
            phrase.push_str(words[index]);
        }
        Ok(Mnemonic(phrase))
    }

    /// Parses a phrase as a user typed or pasted it: any whitespace between words, any case.
    /// Every word must be in the list, so a typo is reported here rather than as a failed decryption.
    pub fn parse(phrase: &str) -> Result<Mnemonic, MnemonicError> {
        let words = word_list();
        let count = phrase.split_whitespace().count();
        if count != WORD_COUNT {
            return Err(MnemonicError::WordCount(count));
        }
        let mut normalised = Zeroizing::new(String::new());
        for (index, word) in phrase.split_whitespace().enumerate() {
            let lower = Zeroizing::new(word.to_lowercase());
            if words.binary_search(&lower.as_str()).is_err() {
                return Err(MnemonicError::UnknownWord { position: index + 1 });
            }
            if !normalised.is_empty() {
                normalised.push(' ');
            }
            normalised.push_str(&lower);
        }
        Ok(Mnemonic(normalised))
    }

    /// The phrase to show the user: lower-case words separated by single spaces.
    pub fn phrase(&self) -> &str {
        &self.0
    }

    /// The KDF passphrase: the words lower-cased, all whitespace removed, concatenated (UTF-8).
    pub fn passphrase(&self) -> Zeroizing<String> {
        let mut passphrase = Zeroizing::new(String::with_capacity(self.0.len()));
        passphrase.extend(self.0.chars().filter(|character| !character.is_whitespace()));
        passphrase
    }
}

/// The 2048 words, in list order (which is sorted, so `binary_search` works).
pub(crate) fn word_list() -> &'static [&'static str] {
    static WORDS: LazyLock<Vec<&'static str>> = LazyLock::new(|| WORD_LIST.lines().collect());
    &WORDS
}

/// Test helpers for other modules.
#[cfg(test)]
pub(crate) mod tests_support {
    /// The words at `indices`.
    pub(crate) fn words(indices: &[usize]) -> Vec<&'static str> {
        indices.iter().map(|index| super::word_list()[*index]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_list_is_bip39_english() {
        let words = word_list();
        assert_eq!(words.len(), 2048);
        assert!(words.windows(2).all(|pair| pair[0] < pair[1]), "sorted and distinct");
        assert!(
            words
                .iter()
                .all(|word| word.chars().all(|character| character.is_ascii_lowercase()))
        );
        assert_eq!((words[0], words[2047]), ("abandon", "zoo"));
        assert!(WORD_LIST.ends_with("zoo\n"));
    }

    #[test]
    fn parsing_normalises_case_and_whitespace() {
        let mnemonic =
            Mnemonic::parse("  Deputy abandon\tBETRAY jacket\n rigid object because source primary diary wonder turn ")
                .expect("parse");
        assert_eq!(
            mnemonic.phrase(),
            "deputy abandon betray jacket rigid object because source primary diary wonder turn"
        );
        assert_eq!(
            *mnemonic.passphrase(),
            "deputyabandonbetrayjacketrigidobjectbecausesourceprimarydiarywonderturn"
        );
    }

    #[test]
    fn bad_phrases_are_typed_errors() {
        assert!(matches!(
            Mnemonic::parse("deputy abandon"),
            Err(MnemonicError::WordCount(2))
        ));
        assert!(matches!(Mnemonic::parse(""), Err(MnemonicError::WordCount(0))));
        let typo = "deputy abandon betray jacket rigid objekt because source primary diary wonder turn";
        assert!(matches!(
            Mnemonic::parse(typo),
            Err(MnemonicError::UnknownWord { position: 6 })
        ));
    }

    #[test]
    fn generated_mnemonics_have_12_listed_words_and_differ() {
        let first = Mnemonic::generate().expect("generate");
        let second = Mnemonic::generate().expect("generate");
        assert_ne!(first.phrase(), second.phrase());
        let reparsed = Mnemonic::parse(first.phrase()).expect("a generated mnemonic parses");
        assert_eq!(reparsed.phrase(), first.phrase());
        assert_eq!(first.phrase().split(' ').count(), WORD_COUNT);
    }

    #[test]
    fn generation_uses_the_whole_list() {
        // 200 mnemonics = 2400 draws: each half of the list is hit with overwhelming probability,
        // which catches an index that ignores the high bits.
        let words = word_list();
        let mut seen_high = false;
        let mut seen_low = false;
        for _ in 0..200 {
            let mnemonic = Mnemonic::generate().expect("generate");
            for word in mnemonic.phrase().split(' ') {
                let index = words.binary_search(&word).expect("listed");
                seen_high |= index >= 1024;
                seen_low |= index < 1024;
            }
        }
        assert!(seen_high && seen_low);
    }
}
