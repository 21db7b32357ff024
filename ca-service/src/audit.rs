//! Audit events: the canonical bytes that record every state change and refusal.
//!
//! An entry is UTF-8 text, one `name value` pair per line in a fixed order, ending with a random
//! nonce. It holds hashes of keys and certificates, never a secret. The stores write it in the same
//! transaction as the change it records; the bytes are stored and hashed exactly as encoded here.

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The format tag on the first line of every entry.
const FORMAT_LINE: &str = "e2ee-ca audit entry v1";

/// The longest value a line holds; a longer one is recorded as its SHA-256 and length
/// (`sha256:<hex> (<n> bytes)`), so that no caller input can make an entry large.
pub const MAX_VALUE_BYTES: usize = 4096;

/// The longest entry: values are replaced by their digests, longest first, until it fits.
pub const MAX_ENTRY_BYTES: usize = 8192;

/// Values at most this long are never replaced by a digest (a digest line is about this long).
const DIGEST_VALUE_BYTES: usize = 96;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// A first certificate: the key was pinned.
    Issuance,
    /// A certificate for the already pinned key.
    Renewal,
    /// An issuance refused: a bad or oversized CSR (`csr-sha256`), a pin conflict, a key owned by
    /// someone else, a rate limit (`key-sha256`). Requests without a valid user id name no subject
    /// and are refused without an entry.
    IssuanceRefused,
    /// A CA certificate (and its key, made by the ceremony) first served: recorded once per
    /// certificate at startup, with its SHA-256, the key's SPKI SHA-256 and the checkpoint key.
    Ceremony,
    /// A dual-control request opened by an admin (`request-id`, `request-kind`, `reason`).
    RequestOpened,
    /// A dual-control request approved by a second admin (`request-id`, `requested-by`).
    RequestApproved,
    /// An approved identity reset consumed by the user's next issuance: the new key pinned in place
    /// of the old one, the old certificates revoked. Names both fingerprints, both admins, the
    /// reason and the request id, so that a client can prove the change was approved.
    IdentityReset,
    /// Certificates revoked by an admin (`serials` or their digest, `revocation-reason`).
    Revocation,
    /// One caller's refusals past the per-window bound, counted rather than logged one by one
    /// (`issuer::refusals`): the window, the count by reason class, the distinct subjects.
    RefusalsSummarized,
    /// A wrapped private key stored or replaced, after a proof of possession (`key-sha256`, the
    /// blob's `wrapped-key-sha256`, `replaced`).
    KeyBackupStored,
    /// A wrapped private key read (actor: who read it; `key-sha256`, `wrapped-key-sha256`).
    KeyBackupRead,
    /// An escrow deposit (`key-sha256`, `recovery-key-sha256`, `escrow-sha256`).
    EscrowDeposited,
    /// An escrow deposit released to an admin (actor) under an approved request (`request-id`,
    /// `requested-by`, `approved-by`, `recovery-key-sha256`, `escrow-sha256`).
    EscrowReleased,
    /// A recovery key certified and enabled under an approved request (`request-id`,
    /// `requested-by`, `approved-by`, `recovery-key-sha256`, `certificate-sha256`,
    /// `ceremony-reference`, and `replaced-recovery-key-sha256` when one was enabled before).
    RecoveryKeyRegistered,
    /// The recovery key disabled under an approved request (`request-id`, `requested-by`,
    /// `approved-by`, `recovery-key-sha256`).
    RecoveryKeyDisabled,
}

impl AuditKind {
    /// The kind of a committed certificate: a renewal when the key was already pinned to the user.
    pub fn issuance(renewal: bool) -> AuditKind {
        if renewal {
            AuditKind::Renewal
        } else {
            AuditKind::Issuance
        }
    }

    /// The `kind` line's value.
    pub fn name(self) -> &'static str {
        match self {
            AuditKind::Issuance => "issuance",
            AuditKind::Renewal => "renewal",
            AuditKind::IssuanceRefused => "issuance-refused",
            AuditKind::Ceremony => "ceremony",
            AuditKind::RequestOpened => "request-opened",
            AuditKind::RequestApproved => "request-approved",
            AuditKind::IdentityReset => "identity-reset",
            AuditKind::Revocation => "revocation",
            AuditKind::RefusalsSummarized => "refusals-summarized",
            AuditKind::KeyBackupStored => "key-backup-stored",
            AuditKind::KeyBackupRead => "key-backup-read",
            AuditKind::EscrowDeposited => "escrow-deposited",
            AuditKind::EscrowReleased => "escrow-released",
            AuditKind::RecoveryKeyRegistered => "recovery-key-registered",
            AuditKind::RecoveryKeyDisabled => "recovery-key-disabled",
        }
    }
}

/// One audit event, before encoding.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// What happened.
    pub kind: AuditKind,
    /// Who asked: a principal's name (`unauthenticated` while the service authenticates nobody).
    pub actor: String,
    /// Whom it concerns (a user id, or the CA key label).
    pub subject: String,
    /// Further `(name, value)` facts: hashes, serials, reasons. Values hold no newline.
    pub details: Vec<(&'static str, String)>,
}

/// Where an audit entry landed: its row in the store's outbox, and its log index when the store
/// sequenced it in the same transaction (the embedded store, `transparency::inline`); otherwise
/// the index is assigned later, by the sequencer (`issuer::IssuanceStore::log_index`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntryRef {
    /// The store's id of the entry (`audit_entries.id`): opaque, unique, not the log index.
    pub entry_id: i64,
    /// SHA-256 of the stored entry bytes.
    pub entry_hash: [u8; 32],
    /// The log index, if the entry was sequenced in the transaction that wrote it.
    pub leaf_index: Option<u64>,
}

/// An encoded entry and its SHA-256.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// The canonical bytes, stored as is.
    pub bytes: Vec<u8>,
    /// The event's subject, stored beside the bytes so that a user's history is an index probe
    /// (the bytes hold it too; they, not this column, are what the log proves).
    pub subject: String,
    /// SHA-256 of `bytes`.
    pub hash: [u8; 32],
}

impl AuditEvent {
    /// Encodes the event with the current time and a fresh 128-bit nonce.
    pub fn encode(&self) -> AuditEntry {
        self.encode_at(OffsetDateTime::now_utc(), rand::random())
    }

    fn encode_at(&self, time: OffsetDateTime, nonce: [u8; 16]) -> AuditEntry {
        let timestamp = rfc3339(time);
        let mut values: Vec<(&str, String)> = Vec::with_capacity(self.details.len() + 3);
        values.push(("actor", bounded_value(&self.actor)));
        values.push(("subject", bounded_value(&self.subject)));
        values.extend(self.details.iter().map(|(name, value)| (*name, bounded_value(value))));
        let fixed = FORMAT_LINE.len() + self.kind.name().len() + timestamp.len() + 80;
        let mut total = fixed
            + values
                .iter()
                .map(|(name, value)| name.len() + value.len() + 2)
                .sum::<usize>();
        while total > MAX_ENTRY_BYTES {
            let Some((_, longest)) = values
                .iter_mut()
                .filter(|(_, value)| value.len() > DIGEST_VALUE_BYTES)
                .max_by_key(|(_, value)| value.len())
            else {
                break;
            };
            let digest = digest_value(longest);
            total = total - longest.len() + digest.len();
            *longest = digest;
        }
        let mut text = format!("{FORMAT_LINE}\nkind {}\ntime {timestamp}\n", self.kind.name());
        for (name, value) in &values {
            push_line(&mut text, name, value);
        }
        push_line(&mut text, "nonce", &hex::encode(nonce));
        let bytes = text.into_bytes();
        let hash = Sha256::digest(&bytes).into();
        AuditEntry {
            bytes,
            hash,
            subject: self.subject.clone(),
        }
    }
}

/// The audit details naming revoked serials: all of them up to `LISTED_SERIALS`, and always their
/// count and the SHA-256 of their sorted hex list (one per line), so an entry stays bounded.
pub fn serial_details(serials: &[crate::identity::SerialNumber]) -> Vec<(&'static str, String)> {
    use sha2::Digest;
    const LISTED_SERIALS: usize = 64;
    let mut hex: Vec<String> = serials.iter().map(crate::identity::SerialNumber::to_hex).collect();
    hex.sort();
    let digest = sha2::Sha256::digest(hex.join("\n").as_bytes());
    let mut details = vec![
        ("revoked-count", hex.len().to_string()),
        ("revoked-serials-sha256", hex::encode(digest)),
    ];
    if hex.len() <= LISTED_SERIALS {
        details.push(("revoked-serials", hex.join(",")));
    }
    details
}

/// The entry of an opened dual-control request (actor: the requester).
pub fn request_opened(request: &crate::approvals::ApprovalRequest) -> AuditEvent {
    let mut details = vec![
        ("request-id", request.id.to_string()),
        ("request-kind", request.kind.name().to_owned()),
        ("reason", request.reason.clone()),
        ("revocation-reason", request.revocation_reason.to_string()),
        ("expires", rfc3339(request.expires_at)),
    ];
    if let Some(key) = &request.key_fingerprint {
        details.push(("key-sha256", key.to_hex()));
    }
    if let Some(proposed) = &request.recovery_key {
        details.push(("ceremony-reference", proposed.ceremony_reference.clone()));
    }
    AuditEvent {
        kind: AuditKind::RequestOpened,
        actor: request.requested_by.clone(),
        subject: request.subject_text().to_owned(),
        details,
    }
}

/// The entry of an approval (actor: the approver).
pub fn request_approved(request: &crate::approvals::ApprovalRequest) -> AuditEvent {
    AuditEvent {
        kind: AuditKind::RequestApproved,
        actor: request.approval.as_ref().map(|(by, _)| by.clone()).unwrap_or_default(),
        subject: request.subject_text().to_owned(),
        details: vec![
            ("request-id", request.id.to_string()),
            ("request-kind", request.kind.name().to_owned()),
            ("requested-by", request.requested_by.clone()),
        ],
    }
}

/// SHA-256 of `bytes`, lowercase hex.
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The entry of a wrapped key stored for `write.user` (actor: the caller).
pub fn key_backup_stored(
    write: &crate::key_backup::ProvenWrite,
    wrapped_key: &crate::key_backup::WrappedKey,
    replaced: bool,
) -> AuditEvent {
    AuditEvent {
        kind: AuditKind::KeyBackupStored,
        actor: write.actor.clone(),
        subject: write.user.to_string(),
        details: vec![
            ("key-sha256", write.key_fingerprint.to_hex()),
            ("wrapped-key-sha256", sha256_hex(wrapped_key.as_str().as_bytes())),
            ("replaced", replaced.to_string()),
        ],
    }
}

/// The entry of a read of `user`'s wrapped key by `actor`.
pub fn key_backup_read(
    actor: &str,
    user: &crate::identity::UserId,
    backup: &crate::key_backup::StoredBackup,
) -> AuditEvent {
    AuditEvent {
        kind: AuditKind::KeyBackupRead,
        actor: actor.to_owned(),
        subject: user.to_string(),
        details: vec![
            ("key-sha256", backup.key_fingerprint.to_hex()),
            ("wrapped-key-sha256", sha256_hex(backup.wrapped_key.as_str().as_bytes())),
        ],
    }
}

/// The entry of an escrow deposit by `write.user` (actor: the caller).
pub fn escrow_deposited(
    write: &crate::key_backup::ProvenWrite,
    recovery_fingerprint: &crate::identity::KeyFingerprint,
    blob: &[u8],
) -> AuditEvent {
    AuditEvent {
        kind: AuditKind::EscrowDeposited,
        actor: write.actor.clone(),
        subject: write.user.to_string(),
        details: vec![
            ("key-sha256", write.key_fingerprint.to_hex()),
            ("recovery-key-sha256", recovery_fingerprint.to_hex()),
            ("escrow-sha256", sha256_hex(blob)),
        ],
    }
}

/// The details naming an approved request and both its admins.
fn approved_request_details(request: &crate::approvals::ApprovalRequest) -> Vec<(&'static str, String)> {
    vec![
        ("request-id", request.id.to_string()),
        ("requested-by", request.requested_by.clone()),
        (
            "approved-by",
            request.approval.as_ref().map(|(by, _)| by.clone()).unwrap_or_default(),
        ),
    ]
}

/// The entry of `escrow` released to `actor` under the approved `request`.
pub fn escrow_released(
    actor: &str,
    request: &crate::approvals::ApprovalRequest,
    escrow: &crate::recovery::EscrowRecord,
) -> AuditEvent {
    let mut details = approved_request_details(request);
    details.push(("recovery-key-sha256", escrow.recovery_fingerprint.to_hex()));
    details.push(("escrow-sha256", sha256_hex(&escrow.blob)));
    AuditEvent {
        kind: AuditKind::EscrowReleased,
        actor: actor.to_owned(),
        subject: escrow.user.to_string(),
        details,
    }
}

/// The entry of the recovery key `fingerprint` enabled with `certificate_der` under the approved
/// `request` (actor: the approver), replacing `replaced` if one was enabled.
pub fn recovery_key_registered(
    request: &crate::approvals::ApprovalRequest,
    fingerprint: &crate::identity::KeyFingerprint,
    certificate_der: &[u8],
    replaced: Option<&crate::identity::KeyFingerprint>,
) -> AuditEvent {
    let mut details = approved_request_details(request);
    details.push(("recovery-key-sha256", fingerprint.to_hex()));
    details.push(("certificate-sha256", sha256_hex(certificate_der)));
    if let Some(proposed) = &request.recovery_key {
        details.push(("ceremony-reference", proposed.ceremony_reference.clone()));
    }
    if let Some(replaced) = replaced {
        details.push(("replaced-recovery-key-sha256", replaced.to_hex()));
    }
    AuditEvent {
        kind: AuditKind::RecoveryKeyRegistered,
        actor: request.approval.as_ref().map(|(by, _)| by.clone()).unwrap_or_default(),
        subject: crate::approvals::RECOVERY_KEY_SUBJECT.to_owned(),
        details,
    }
}

/// The entry of the recovery key `fingerprint` disabled under the approved `request` (actor: the
/// approver).
pub fn recovery_key_disabled(
    request: &crate::approvals::ApprovalRequest,
    fingerprint: &crate::identity::KeyFingerprint,
) -> AuditEvent {
    let mut details = approved_request_details(request);
    details.push(("recovery-key-sha256", fingerprint.to_hex()));
    AuditEvent {
        kind: AuditKind::RecoveryKeyDisabled,
        actor: request.approval.as_ref().map(|(by, _)| by.clone()).unwrap_or_default(),
        subject: crate::approvals::RECOVERY_KEY_SUBJECT.to_owned(),
        details,
    }
}

/// The entry of an admin's revocation of `serials` of `user`.
pub fn revocation(
    actor: &str,
    user: &crate::identity::UserId,
    serials: &[crate::identity::SerialNumber],
    reason: crate::revocation::RevocationReason,
) -> AuditEvent {
    let mut details = vec![("revocation-reason", reason.to_string())];
    details.extend(serial_details(serials));
    AuditEvent {
        kind: AuditKind::Revocation,
        actor: actor.to_owned(),
        subject: user.to_string(),
        details,
    }
}

/// `value`, or its digest form when it is longer than `MAX_VALUE_BYTES`.
fn bounded_value(value: &str) -> String {
    if value.len() > MAX_VALUE_BYTES {
        digest_value(value)
    } else {
        value.to_owned()
    }
}

/// `sha256:<hex> (<n> bytes)`: what an entry records instead of an oversized value.
fn digest_value(value: &str) -> String {
    format!(
        "sha256:{} ({} bytes)",
        hex::encode(Sha256::digest(value.as_bytes())),
        value.len()
    )
}

/// An entry read back from its canonical bytes: what the issuer checks a pin against and what the
/// offline verifier replays. Parsing is strict: the format line, then `kind`, `time`, `actor` and
/// `subject`, the details, and `nonce` last, each `name value` on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEntry {
    /// The `kind` line's value (`AuditKind::name`, or a kind this version does not know).
    pub kind: String,
    /// The `time` line's value, RFC 3339.
    pub time: String,
    /// Who asked.
    pub actor: String,
    /// Whom it concerns.
    pub subject: String,
    /// The details, in order.
    pub details: Vec<(String, String)>,
}

/// Why entry bytes do not parse as an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryParseError {
    /// Not UTF-8.
    #[error("the entry is not UTF-8")]
    NotUtf8,
    /// The first line is not the format line.
    #[error("the entry does not start with the format line")]
    Format,
    /// A required line is missing or out of order.
    #[error("the entry has no {0} line where one is required")]
    Missing(&'static str),
    /// A line has no `name value` shape, or the entry does not end with a newline.
    #[error("the entry holds a malformed line")]
    Malformed,
}

impl ParsedEntry {
    /// Parses canonical entry bytes.
    pub fn parse(bytes: &[u8]) -> Result<ParsedEntry, EntryParseError> {
        let text = std::str::from_utf8(bytes).map_err(|_| EntryParseError::NotUtf8)?;
        let body = text.strip_suffix('\n').ok_or(EntryParseError::Malformed)?;
        let mut lines = body.split('\n');
        if lines.next() != Some(FORMAT_LINE) {
            return Err(EntryParseError::Format);
        }
        let mut fields = Vec::new();
        for line in lines {
            let (name, value) = line.split_once(' ').ok_or(EntryParseError::Malformed)?;
            if name.is_empty() {
                return Err(EntryParseError::Malformed);
            }
            fields.push((name.to_owned(), value.to_owned()));
        }
        let mut fields = fields.into_iter();
        let mut required = |name: &'static str| match fields.next() {
            Some((found, value)) if found == name => Ok(value),
            _ => Err(EntryParseError::Missing(name)),
        };
        let kind = required("kind")?;
        let time = required("time")?;
        let actor = required("actor")?;
        let subject = required("subject")?;
        let mut details: Vec<(String, String)> = fields.collect();
        match details.pop() {
            Some((name, _)) if name == "nonce" => {}
            _ => return Err(EntryParseError::Missing("nonce")),
        }
        Ok(ParsedEntry {
            kind,
            time,
            actor,
            subject,
            details,
        })
    }

    /// The first detail named `name`.
    pub fn detail(&self, name: &str) -> Option<&str> {
        self.details
            .iter()
            .find(|(found, _)| found == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Why a stored certificate does not match the entry that records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateEntryMismatch {
    /// The certificate references no stored entry.
    #[error("the certificate references no audit entry")]
    NoEntry,
    /// The entry does not parse, or records no certificate.
    #[error("the certificate's audit entry records no certificate")]
    NotACertificateEntry,
    /// The entry records another user or serial.
    #[error("the certificate's audit entry records another user or serial")]
    OtherCertificate,
    /// The stored key fingerprint is not the one the entry names.
    #[error("the certificate's key fingerprint differs from its audit entry's key-sha256")]
    KeyDiffers,
    /// The certificate's bytes are not the ones the entry hashed.
    #[error("the certificate's bytes differ from its audit entry's certificate-sha256")]
    BytesDiffer,
}

/// What a stored certificate row claims, checked by `check_certificate_entry`.
#[derive(Debug, Clone, Copy)]
pub struct CertificateRow<'a> {
    /// Whose it is.
    pub user: &'a str,
    /// Its serial, hex.
    pub serial_hex: &'a str,
    /// The certified key's fingerprint, hex.
    pub key_hex: &'a str,
    /// The certificate, DER.
    pub certificate_der: &'a [u8],
}

/// Checks a stored certificate against the entry that records it: an `issuance`, `renewal` or
/// `identity-reset` of the row's user naming its serial and key, whose `certificate-sha256` is the
/// SHA-256 of its bytes. A certificate changed in the database alone fails here.
pub fn check_certificate_entry(row: CertificateRow<'_>, entry: Option<&[u8]>) -> Result<(), CertificateEntryMismatch> {
    let entry = entry.ok_or(CertificateEntryMismatch::NoEntry)?;
    let parsed = ParsedEntry::parse(entry).map_err(|_| CertificateEntryMismatch::NotACertificateEntry)?;
    let certifies = [AuditKind::Issuance, AuditKind::Renewal, AuditKind::IdentityReset]
        .iter()
        .any(|kind| kind.name() == parsed.kind);
    if !certifies {
        return Err(CertificateEntryMismatch::NotACertificateEntry);
    }
    if parsed.subject != row.user || parsed.detail("serial") != Some(row.serial_hex) {
        return Err(CertificateEntryMismatch::OtherCertificate);
    }
    if parsed.detail("key-sha256") != Some(row.key_hex) {
        return Err(CertificateEntryMismatch::KeyDiffers);
    }
    let digest = hex::encode(Sha256::digest(row.certificate_der));
    if parsed.detail("certificate-sha256") != Some(digest.as_str()) {
        return Err(CertificateEntryMismatch::BytesDiffer);
    }
    Ok(())
}

/// RFC 3339, as entries (and the API) write times.
pub(crate) fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&Rfc3339)
        .unwrap_or_else(|_| time.unix_timestamp().to_string())
}

/// Appends `name value\n`, replacing any control character in `value` so an entry stays one field per line.
fn push_line(text: &mut String, name: &str, value: &str) {
    text.push_str(name);
    text.push(' ');
    text.extend(
        value
            .chars()
            .map(|character| if character.is_control() { '\u{fffd}' } else { character }),
    );
    text.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_canonical_lines_with_nonce() {
        let event = AuditEvent {
            kind: AuditKind::IssuanceRefused,
            actor: "dev".to_owned(),
            subject: "alice".to_owned(),
            details: vec![("reason", "pinned\nto another key".to_owned())],
        };
        let entry = event.encode_at(OffsetDateTime::UNIX_EPOCH, [0xab; 16]);
        let text = String::from_utf8(entry.bytes.clone()).expect("utf-8");
        assert_eq!(
            text,
            "e2ee-ca audit entry v1\nkind issuance-refused\ntime 1970-01-01T00:00:00Z\nactor dev\nsubject alice\n\
             reason pinned\u{fffd}to another key\nnonce abababababababababababababababab\n"
        );
        assert_eq!(entry.hash, <[u8; 32]>::from(Sha256::digest(&entry.bytes)));
        assert_ne!(event.encode().bytes, event.encode().bytes, "nonces differ");
        let parsed = ParsedEntry::parse(&entry.bytes).expect("parses");
        assert_eq!(
            (parsed.kind.as_str(), parsed.actor.as_str(), parsed.subject.as_str()),
            ("issuance-refused", "dev", "alice")
        );
        assert_eq!(parsed.detail("reason"), Some("pinned\u{fffd}to another key"));
    }

    #[test]
    fn oversized_values_become_digests_and_entries_stay_bounded() {
        let huge = "x".repeat(200_000);
        let event = AuditEvent {
            kind: AuditKind::IssuanceRefused,
            actor: "a".repeat(MAX_VALUE_BYTES + 1),
            subject: "alice".to_owned(),
            details: (0..40)
                .map(|_| ("reason", huge[..MAX_VALUE_BYTES].to_owned()))
                .chain([("csr", huge.clone())])
                .collect(),
        };
        let entry = event.encode();
        assert!(entry.bytes.len() <= MAX_ENTRY_BYTES, "{} bytes", entry.bytes.len());
        let parsed = ParsedEntry::parse(&entry.bytes).expect("parses");
        let expected = format!("sha256:{} (200000 bytes)", hex::encode(Sha256::digest(huge.as_bytes())));
        assert_eq!(parsed.detail("csr"), Some(expected.as_str()));
        assert!(parsed.actor.starts_with("sha256:"), "an oversized actor is a digest");
        assert_eq!(parsed.subject, "alice", "short values are kept");
    }

    fn row<'a>(user: &'a str, serial_hex: &'a str, key_hex: &'a str, certificate_der: &'a [u8]) -> CertificateRow<'a> {
        CertificateRow {
            user,
            serial_hex,
            key_hex,
            certificate_der,
        }
    }

    #[test]
    fn certificates_are_checked_against_their_entries() {
        let der = b"certificate bytes".to_vec();
        let entry = |kind: AuditKind, serial: &str, der: &[u8]| {
            AuditEvent {
                kind,
                actor: "sync-server".to_owned(),
                subject: "alice".to_owned(),
                details: vec![
                    ("key-sha256", "ab".to_owned()),
                    ("serial", serial.to_owned()),
                    ("certificate-sha256", hex::encode(Sha256::digest(der))),
                ],
            }
            .encode()
            .bytes
        };
        for kind in [AuditKind::Issuance, AuditKind::Renewal, AuditKind::IdentityReset] {
            let good = entry(kind, "0a", &der);
            assert_eq!(
                check_certificate_entry(row("alice", "0a", "ab", &der), Some(&good)),
                Ok(())
            );
        }
        let good = entry(AuditKind::Issuance, "0a", &der);
        let mut tampered = der.clone();
        tampered[3] ^= 1;
        for (stored, entry, expected) in [
            (row("alice", "0a", "ab", &der), None, CertificateEntryMismatch::NoEntry),
            (
                row("alice", "0a", "ab", &tampered),
                Some(good.clone()),
                CertificateEntryMismatch::BytesDiffer,
            ),
            (
                row("alice", "0a", "cd", &der),
                Some(good.clone()),
                CertificateEntryMismatch::KeyDiffers,
            ),
            (
                row("bob", "0a", "ab", &der),
                Some(good.clone()),
                CertificateEntryMismatch::OtherCertificate,
            ),
            (
                row("alice", "0b", "ab", &der),
                Some(good.clone()),
                CertificateEntryMismatch::OtherCertificate,
            ),
            (
                row("alice", "0a", "ab", &der),
                Some(entry(AuditKind::Revocation, "0a", &der)),
                CertificateEntryMismatch::NotACertificateEntry,
            ),
            (
                row("alice", "0a", "ab", &der),
                Some(b"junk".to_vec()),
                CertificateEntryMismatch::NotACertificateEntry,
            ),
        ] {
            assert_eq!(check_certificate_entry(stored, entry.as_deref()), Err(expected));
        }
    }

    #[test]
    fn malformed_entries_are_refused() {
        let good = AuditEvent {
            kind: AuditKind::Issuance,
            actor: "dev".to_owned(),
            subject: "alice".to_owned(),
            details: vec![("key-sha256", "00".repeat(32))],
        }
        .encode()
        .bytes;
        let text = String::from_utf8(good.clone()).expect("utf-8");
        for (bytes, error) in [
            (vec![0xff], EntryParseError::NotUtf8),
            (good[..good.len() - 1].to_vec(), EntryParseError::Malformed),
            (
                text.replacen("e2ee-ca audit entry v1", "v0", 1).into_bytes(),
                EntryParseError::Format,
            ),
            (
                text.replacen("\nactor dev", "", 1).into_bytes(),
                EntryParseError::Missing("actor"),
            ),
            (
                text.replacen("\nnonce ", "\nnoncx ", 1).into_bytes(),
                EntryParseError::Missing("nonce"),
            ),
            (
                text.replacen("\nkey-sha256 ", "\nkey-sha256\n", 1).into_bytes(),
                EntryParseError::Malformed,
            ),
        ] {
            assert_eq!(ParsedEntry::parse(&bytes), Err(error));
        }
    }
}
