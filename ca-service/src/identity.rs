//! Validated identity types shared by the issuer, the stores and the API: parse at the edge, then trust.

use std::fmt;

use precis_core::profile::Profile;
use precis_profiles::UsernameCasePreserved;
use sha2::{Digest, Sha256};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
use unicode_security::{GeneralSecurityProfile, RestrictionLevel, RestrictionLevelDetection};

/// Longest accepted user id, in characters: X.520's ub-common-name, since the id is the subject CN
/// of the user's certificate (RFC 5280, appendix A.1).
pub const MAX_USER_ID_CHARS: usize = 64;

/// Longest user id the earlier rule accepted, in bytes: what `UserId::from_stored` still takes.
pub const MAX_USER_ID_BYTES: usize = 255;

/// A user id: the Nextcloud user id, and the subject CN of the user's certificates.
///
/// The syntax, checked by `parse` in this order, each refusal naming the rule and a code point,
/// never echoing the input:
/// 1. 1 to 64 characters (X.520's ub-common-name).
/// 2. No control (Cc) or format (Cf) character: no bidirectional control (U+202E and the other
///    embeddings, overrides, isolates and marks), no zero-width space, joiner or non-joiner, no BOM,
///    no soft hyphen, no tag character.
/// 3. No line or paragraph separator (U+2028, U+2029), and no space but U+0020, which may only
///    separate two non-empty parts: no leading, trailing or doubled space, no id of spaces only.
/// 4. In Unicode Normalization Form C: a decomposed `ë` is refused, not silently composed, so that
///    two byte strings never name one user.
/// 5. Each space-separated part satisfies PRECIS UsernameCasePreserved (RFC 8265 section 3.4, whose
///    section 3.1 allows such parts) unchanged by its enforcement: IdentifierClass characters only
///    (letters and digits, ASCII punctuation; no symbols, emoji, non-ASCII punctuation or
///    compatibility characters such as fullwidth letters, which width mapping would rewrite), the
///    context rules, and the bidi rule of RFC 5893.
/// 6. Each label (a run between spaces and ASCII punctuation, as in `first.last@example.com`) holds
///    characters of UTS #39's General Security Profile only, in one script or a CJK combination
///    (the "highly restrictive" level): a Cyrillic `а` among Latin letters is refused.
///
/// Case is preserved and significant (`Alice` and `alice` are two ids), as in Nextcloud, whose user
/// ids keep the case they were created with; whole-script look-alikes (an id entirely in Cyrillic
/// that reads as a Latin one) and ASCII look-alikes (`l` and `1`) are not detected: that would need
/// a skeleton index in the stores.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

/// A character as refusals name it: `U+202E`, never the character itself (which may reorder or
/// hide the rest of the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodePoint(pub char);

impl fmt::Display for CodePoint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "U+{:04X}", u32::from(self.0))
    }
}

/// Why a user id was refused. Positions count characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    /// The id is empty.
    #[error("user_id is empty")]
    Empty,
    /// The id is longer than 64 characters.
    #[error(
        "user_id is {0} characters long; the limit is {MAX_USER_ID_CHARS} (X.520's bound on a certificate's common name)"
    )]
    TooLong(usize),
    /// The id contains a control character (Cc).
    #[error("user_id contains the control character {1} at character {0}")]
    ControlCharacter(usize, CodePoint),
    /// The id contains a bidirectional control, which changes how the id is displayed.
    #[error("user_id contains the bidirectional control {1} at character {0}")]
    BidiControl(usize, CodePoint),
    /// The id contains another format character (Cf): zero-width, BOM, soft hyphen, tag.
    #[error("user_id contains the invisible format character {1} at character {0}")]
    FormatCharacter(usize, CodePoint),
    /// The id contains a line or paragraph separator.
    #[error("user_id contains the line or paragraph separator {1} at character {0}")]
    LineSeparator(usize, CodePoint),
    /// The id contains a space other than U+0020.
    #[error("user_id contains the space {1} at character {0}; only U+0020 may separate words")]
    OtherSpace(usize, CodePoint),
    /// The id starts or ends with a space, or has two in a row.
    #[error("user_id has a space at its start or end, or two in a row")]
    SpacePlacement,
    /// The id is not in Unicode Normalization Form C.
    #[error("user_id is not in Unicode Normalization Form C; send its NFC form")]
    NotNfc,
    /// PRECIS's IdentifierClass disallows a character (a symbol, an emoji, non-ASCII punctuation, a
    /// compatibility character, a character unassigned in Unicode 6.3, a failed context rule).
    #[error("user_id contains {1} at character {0}, which RFC 8265 usernames do not allow")]
    Disallowed(usize, CodePoint),
    /// PRECIS enforcement would change the id (a fullwidth or halfwidth form).
    #[error("user_id holds a fullwidth or halfwidth form that RFC 8265 maps to another character; send that one")]
    WidthForm,
    /// The id mixes right-to-left and other text in a way RFC 5893's bidi rule refuses.
    #[error("user_id mixes right-to-left and left-to-right text against RFC 5893's bidi rule")]
    BidiRule,
    /// A character outside UTS #39's General Security Profile (obsolete, limited-use, technical).
    #[error("user_id contains {1} at character {0}, which Unicode's security profile does not allow in identifiers")]
    Restricted(usize, CodePoint),
    /// A label mixes scripts.
    #[error(
        "user_id mixes scripts in its label {0} (such as a Cyrillic letter among Latin ones); labels are the runs \
         between spaces and ASCII punctuation"
    )]
    MixedScript(usize),
}

/// The bidirectional controls: ALM, LRM, RLM, the embeddings and overrides, and the isolates.
fn is_bidi_control(character: char) -> bool {
    matches!(character, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

impl UserId {
    /// Validates `raw` as a user id (the syntax in the type's docs).
    pub fn parse(raw: &str) -> Result<UserId, UserIdError> {
        if raw.is_empty() {
            return Err(UserIdError::Empty);
        }
        let length = raw.chars().count();
        if length > MAX_USER_ID_CHARS {
            return Err(UserIdError::TooLong(length));
        }
        for (index, character) in raw.chars().enumerate() {
            let (position, code_point) = (index + 1, CodePoint(character));
            match character.general_category() {
                GeneralCategory::Control => return Err(UserIdError::ControlCharacter(position, code_point)),
                GeneralCategory::Format if is_bidi_control(character) => {
                    return Err(UserIdError::BidiControl(position, code_point));
                }
                GeneralCategory::Format => return Err(UserIdError::FormatCharacter(position, code_point)),
                GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => {
                    return Err(UserIdError::LineSeparator(position, code_point));
                }
                GeneralCategory::SpaceSeparator if character != ' ' => {
                    return Err(UserIdError::OtherSpace(position, code_point));
                }
                _ => {}
            }
        }
        if raw.starts_with(' ') || raw.ends_with(' ') || raw.contains("  ") {
            return Err(UserIdError::SpacePlacement);
        }
        if !unicode_normalization::is_nfc(raw) {
            return Err(UserIdError::NotNfc);
        }
        let profile = UsernameCasePreserved::new();
        let mut offset = 0;
        for part in raw.split(' ') {
            match profile.enforce(part) {
                Ok(enforced) if enforced == part => {}
                Ok(_) => return Err(UserIdError::WidthForm),
                Err(precis_core::Error::BadCodepoint(info)) => return Err(disallowed(offset, info.position, info.cp)),
                Err(precis_core::Error::Unexpected(
                    precis_core::UnexpectedError::ContextRuleNotApplicable(info)
                    | precis_core::UnexpectedError::MissingContextRule(info),
                )) => return Err(disallowed(offset, info.position, info.cp)),
                Err(precis_core::Error::Invalid | precis_core::Error::Unexpected(_)) => {
                    return Err(UserIdError::BidiRule);
                }
            }
            offset += part.chars().count() + 1;
        }
        let mut position = 0;
        for (index, label) in raw
            .split(|character: char| character == ' ' || character.is_ascii_punctuation())
            .enumerate()
        {
            for character in label.chars() {
                position += 1;
                if !GeneralSecurityProfile::identifier_allowed(character) {
                    return Err(UserIdError::Restricted(position, CodePoint(character)));
                }
            }
            // The separator after the label.
            position += 1;
            if label.detect_restriction_level() > RestrictionLevel::HighlyRestrictive {
                return Err(UserIdError::MixedScript(index + 1));
            }
        }
        Ok(UserId(raw.to_owned()))
    }

    /// Rebuilds a user id that a store read back, for the stores' codecs. Ids stored under the
    /// earlier rule (1 to 255 bytes of UTF-8 without control characters) are accepted here, so that
    /// a look-alike enrolled before the current rule keeps its certificates revocable by serial and
    /// its requests listable; new ids enter only through `parse`, so such an id can no longer be
    /// issued to, looked up, revoked or reset by id.
    pub fn from_stored(raw: &str) -> Result<UserId, UserIdError> {
        if raw.is_empty() {
            return Err(UserIdError::Empty);
        }
        if raw.len() > MAX_USER_ID_BYTES {
            return Err(UserIdError::TooLong(raw.chars().count()));
        }
        if let Some((index, character)) = raw.chars().enumerate().find(|(_, character)| character.is_control()) {
            return Err(UserIdError::ControlCharacter(index + 1, CodePoint(character)));
        }
        Ok(UserId(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The refusal of `code_point` at `position` (from 0) of the part that starts at character `offset`
/// (from 0) of the id; PRECIS reports no code point it does not hold.
fn disallowed(offset: usize, position: usize, code_point: u32) -> UserIdError {
    let character = char::from_u32(code_point).unwrap_or(char::REPLACEMENT_CHARACTER);
    UserIdError::Disallowed(offset + position + 1, CodePoint(character))
}

impl fmt::Display for UserId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// SHA-256 of a DER SubjectPublicKeyInfo: what a pin binds to a user.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyFingerprint([u8; 32]);

impl KeyFingerprint {
    /// Fingerprints a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> KeyFingerprint {
        KeyFingerprint(Sha256::digest(spki_der).into())
    }

    /// Rebuilds a fingerprint read back from a store; `None` unless it is 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<KeyFingerprint> {
        bytes.try_into().ok().map(KeyFingerprint)
    }

    /// The X.509 key identifier (SKI/AKI) of this key: the first 160 bits of the SPKI's SHA-256
    /// (RFC 7093 section 2, method 4 applied to the whole SPKI, as rcgen does).
    pub fn key_identifier(&self) -> Vec<u8> {
        self.0[..20].to_vec()
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, as shown to people and returned over the API.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for KeyFingerprint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "KeyFingerprint({})", self.to_hex())
    }
}

impl fmt::Display for KeyFingerprint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_hex())
    }
}

/// A certificate serial number, 16 bytes: the issuing time in nanoseconds since 1970 (8 bytes,
/// big-endian), then 8 bytes from the CSPRNG. Positive and non-sequential, with the 64 random bits
/// the CA/Browser Forum asks of public CAs. The time first makes each new serial sort after the
/// ones before it, so the store's serial index grows at its right edge instead of dirtying a
/// random leaf per certificate.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SerialNumber(Vec<u8>);

impl SerialNumber {
    /// A fresh serial: the current time, then 64 bits from the OS-seeded CSPRNG.
    pub fn generate() -> SerialNumber {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX));
        let mut bytes = [0_u8; 16];
        bytes[..8].copy_from_slice(&nanos.to_be_bytes());
        bytes[8..].copy_from_slice(&rand::random::<[u8; 8]>());
        // Positive, and no leading zero byte for DER to strip, so the length stays fixed. Neither
        // touches a clock set between 1972 and 2262.
        bytes[0] &= 0x7f;
        if bytes[0] == 0 {
            bytes[0] = 0x01;
        }
        SerialNumber(bytes.to_vec())
    }

    /// Rebuilds a serial read back from a store or a certificate.
    pub fn from_bytes(bytes: Vec<u8>) -> SerialNumber {
        SerialNumber(bytes)
    }

    /// The big-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Debug for SerialNumber {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "SerialNumber({})", self.to_hex())
    }
}

/// A certificate as the stores keep it.
#[derive(Debug, Clone)]
pub struct StoredCertificate {
    /// Whose certificate it is.
    pub user_id: UserId,
    /// The certificate's serial.
    pub serial: SerialNumber,
    /// The certified key.
    pub key_fingerprint: KeyFingerprint,
    /// The certificate, DER.
    pub certificate_der: Vec<u8>,
    /// True when it was revoked.
    pub revoked: bool,
    /// The bytes of the audit entry that records it (`audit::check_certificate_entry`), if the
    /// certificate references a stored entry.
    pub entry: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `raw` and compares the outcome with `expected` (`Ok` for an accepted id).
    fn check(raw: &str, expected: Result<(), UserIdError>) {
        let parsed = UserId::parse(raw).map(|user| assert_eq!(user.as_str(), raw, "accepted ids are kept as sent"));
        assert_eq!(
            parsed,
            expected,
            "{raw:?} (code points {:?})",
            raw.chars()
                .map(CodePoint)
                .map(|code| code.to_string())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn user_ids_of_nextcloud_email_and_other_scripts_are_accepted() {
        for raw in [
            "alice",
            "bob",
            "carol-1712345678",
            "Alice",
            "zoë@example.com",
            "first.last@example.com",
            "O'Brien",
            "Jean Dupont",
            "user_name+tag@example.com",
            "s:AbCdEf0123456789",
            "иван@example.com",
            "Ελένη",
            "山田太郎",
            "やまだ たろう",
            "José María",
            "straße",
            &"a".repeat(MAX_USER_ID_CHARS),
        ] {
            check(raw, Ok(()));
        }
    }

    #[test]
    fn user_ids_too_short_or_too_long_are_refused() {
        check("", Err(UserIdError::Empty));
        check(&"a".repeat(65), Err(UserIdError::TooLong(65)));
        // 64 characters are the bound, whatever their UTF-8 length.
        check(&"é".repeat(64), Ok(()));
        check(&"é".repeat(65), Err(UserIdError::TooLong(65)));
        check(&"x".repeat(1 << 20), Err(UserIdError::TooLong(1 << 20)));
    }

    #[test]
    fn invisible_and_control_characters_are_refused_by_code_point() {
        type Refusal = fn(usize, CodePoint) -> UserIdError;
        let cases: [(&str, Refusal, usize, char); 19] = [
            ("al\nice", UserIdError::ControlCharacter, 3, '\n'),
            ("bob\u{7f}", UserIdError::ControlCharacter, 4, '\u{7f}'),
            ("\u{0}alice", UserIdError::ControlCharacter, 1, '\u{0}'),
            ("ali\u{202E}ecl", UserIdError::BidiControl, 4, '\u{202E}'),
            ("alice\u{200E}", UserIdError::BidiControl, 6, '\u{200E}'),
            ("\u{2066}alice\u{2069}", UserIdError::BidiControl, 1, '\u{2066}'),
            ("alice\u{061C}", UserIdError::BidiControl, 6, '\u{061C}'),
            ("ali\u{200B}ce", UserIdError::FormatCharacter, 4, '\u{200B}'),
            ("ali\u{200D}ce", UserIdError::FormatCharacter, 4, '\u{200D}'),
            ("ali\u{200C}ce", UserIdError::FormatCharacter, 4, '\u{200C}'),
            ("\u{FEFF}alice", UserIdError::FormatCharacter, 1, '\u{FEFF}'),
            ("ali\u{2060}ce", UserIdError::FormatCharacter, 4, '\u{2060}'),
            ("ali\u{AD}ce", UserIdError::FormatCharacter, 4, '\u{AD}'),
            ("alice\u{E0041}", UserIdError::FormatCharacter, 6, '\u{E0041}'),
            ("alice\u{2028}", UserIdError::LineSeparator, 6, '\u{2028}'),
            ("alice\u{2029}bob", UserIdError::LineSeparator, 6, '\u{2029}'),
            ("alice\u{A0}smith", UserIdError::OtherSpace, 6, '\u{A0}'),
            ("alice\u{3000}", UserIdError::OtherSpace, 6, '\u{3000}'),
            ("\u{2003}", UserIdError::OtherSpace, 1, '\u{2003}'),
        ];
        for (raw, error, position, character) in cases {
            check(raw, Err(error(position, CodePoint(character))));
        }
    }

    #[test]
    fn spaces_only_separate_words() {
        for raw in [" ", "   ", " alice", "alice ", "alice  smith", "\u{20}"] {
            check(raw, Err(UserIdError::SpacePlacement));
        }
        check("alice smith", Ok(()));
    }

    #[test]
    fn non_nfc_and_width_forms_are_refused_not_rewritten() {
        // A decomposed ë (e + U+0308), and Hangul in conjoining jamo.
        check("zoe\u{308}@example.com", Err(UserIdError::NotNfc));
        check("\u{1100}\u{1161}", Err(UserIdError::NotNfc));
        // Fullwidth ａlice (U+FF41), which width mapping turns into alice.
        check("\u{FF41}lice", Err(UserIdError::WidthForm));
    }

    #[test]
    fn symbols_compatibility_characters_and_bidi_mixes_are_refused() {
        check("alice\u{2603}", Err(UserIdError::Disallowed(6, CodePoint('\u{2603}'))));
        check(
            "alice\u{1F600}",
            Err(UserIdError::Disallowed(6, CodePoint('\u{1F600}'))),
        );
        check("al\u{2026}ce", Err(UserIdError::Disallowed(3, CodePoint('\u{2026}'))));
        // The ﬁ ligature and a Roman numeral: compatibility characters. In the second word, the
        // position counts from the start of the id.
        check("\u{FB01}le", Err(UserIdError::Disallowed(1, CodePoint('\u{FB01}'))));
        check("Louis \u{2168}", Err(UserIdError::Disallowed(7, CodePoint('\u{2168}'))));
        // Hebrew after Latin letters in one part breaks RFC 5893's rule.
        check("alice\u{5D0}", Err(UserIdError::BidiRule));
        check("\u{5D0}\u{5D1}", Ok(()));
    }

    #[test]
    fn mixed_script_look_alikes_are_refused_per_label() {
        // Cyrillic а (U+0430) in alice, Cyrillic е (U+0435) in the domain, Greek ο (U+03BF).
        check("\u{430}lice", Err(UserIdError::MixedScript(1)));
        check("alice@\u{435}xample.com", Err(UserIdError::MixedScript(2)));
        check("b\u{3BF}b", Err(UserIdError::MixedScript(1)));
        check("p\u{430}yp\u{430}l.support", Err(UserIdError::MixedScript(1)));
        // Coptic is outside the General Security Profile.
        check(
            "\u{2C81}\u{2C83}",
            Err(UserIdError::Restricted(1, CodePoint('\u{2C81}'))),
        );
        check("ab.\u{2C81}", Err(UserIdError::Restricted(4, CodePoint('\u{2C81}'))));
        // Han with Hiragana is one Japanese label.
        check("山田たろう", Ok(()));
    }

    #[test]
    fn refusals_never_echo_the_input() {
        for raw in ["\u{430}lice", "ali\u{202E}ecl", &"y".repeat(100_000), "alice\u{2603}"] {
            let message = UserId::parse(raw).expect_err("refused").to_string();
            assert!(!message.contains(raw), "{message:?}");
            assert!(message.len() < 200, "{message:?}");
            assert!(message.is_ascii(), "{message:?}");
        }
    }

    #[test]
    fn stored_ids_of_the_earlier_rule_are_still_read_back() {
        for raw in ["\u{430}lice", " alice", "ali\u{200B}ce", &"a".repeat(255)] {
            assert!(UserId::parse(raw).is_err());
            assert_eq!(
                UserId::from_stored(raw).map(|user| user.to_string()),
                Ok(raw.to_owned())
            );
        }
        assert_eq!(UserId::from_stored(""), Err(UserIdError::Empty));
        assert_eq!(UserId::from_stored(&"a".repeat(256)), Err(UserIdError::TooLong(256)));
        assert_eq!(
            UserId::from_stored("al\nice"),
            Err(UserIdError::ControlCharacter(3, CodePoint('\n')))
        );
    }

    #[test]
    fn serials_are_positive_sixteen_bytes_time_first_and_distinct() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64;
        let serials: Vec<SerialNumber> = (0..1000).map(|_| SerialNumber::generate()).collect();
        let distinct: std::collections::HashSet<&SerialNumber> = serials.iter().collect();
        assert_eq!(distinct.len(), serials.len());
        let random_halves: std::collections::HashSet<&[u8]> =
            serials.iter().map(|serial| &serial.as_bytes()[8..]).collect();
        assert_eq!(
            random_halves.len(),
            serials.len(),
            "the last 8 bytes are drawn afresh for each serial"
        );
        for serial in &serials {
            let bytes = serial.as_bytes();
            assert_eq!(bytes.len(), 16);
            assert!(bytes[0] & 0x80 == 0 && bytes[0] != 0);
            let issued = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
            assert!(
                issued.abs_diff(before) < 60_000_000_000,
                "the first 8 bytes are the issuing time"
            );
        }
    }
}
