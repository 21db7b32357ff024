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
        let mut text = format!("{FORMAT_LINE}\nkind {}\ntime {timestamp}\n", self.kind.name());
        push_line(&mut text, "actor", &self.actor);
        push_line(&mut text, "subject", &self.subject);
        for (name, value) in &self.details {
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
    AuditEvent {
        kind: AuditKind::RequestOpened,
        actor: request.requested_by.clone(),
        subject: request.subject.to_string(),
        details,
    }
}

/// The entry of an approval (actor: the approver).
pub fn request_approved(request: &crate::approvals::ApprovalRequest) -> AuditEvent {
    AuditEvent {
        kind: AuditKind::RequestApproved,
        actor: request.approval.as_ref().map(|(by, _)| by.clone()).unwrap_or_default(),
        subject: request.subject.to_string(),
        details: vec![
            ("request-id", request.id.to_string()),
            ("request-kind", request.kind.name().to_owned()),
            ("requested-by", request.requested_by.clone()),
        ],
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
    }
}
