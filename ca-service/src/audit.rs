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

    fn name(self) -> &'static str {
        match self {
            AuditKind::Issuance => "issuance",
            AuditKind::Renewal => "renewal",
            AuditKind::IssuanceRefused => "issuance-refused",
            AuditKind::Ceremony => "ceremony",
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
    /// SHA-256 of `bytes`.
    pub hash: [u8; 32],
}

impl AuditEvent {
    /// Encodes the event with the current time and a fresh 128-bit nonce.
    pub fn encode(&self) -> AuditEntry {
        self.encode_at(OffsetDateTime::now_utc(), rand::random())
    }

    fn encode_at(&self, time: OffsetDateTime, nonce: [u8; 16]) -> AuditEntry {
        let timestamp = time
            .format(&Rfc3339)
            .unwrap_or_else(|_| time.unix_timestamp().to_string());
        let mut text = format!("{FORMAT_LINE}\nkind {}\ntime {timestamp}\n", self.kind.name());
        push_line(&mut text, "actor", &self.actor);
        push_line(&mut text, "subject", &self.subject);
        for (name, value) in &self.details {
            push_line(&mut text, name, value);
        }
        push_line(&mut text, "nonce", &hex::encode(nonce));
        let bytes = text.into_bytes();
        let hash = Sha256::digest(&bytes).into();
        AuditEntry { bytes, hash }
    }
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
