//! What the issuer needs from a store: `IssuanceStore` and the values that cross it.

use std::future::Future;

use time::OffsetDateTime;

use crate::approvals::ApprovalRequest;
use crate::audit::{AuditEvent, LogEntryRef};
use crate::identity::{KeyFingerprint, SerialNumber, UserId};
use crate::storage::StoreError;

/// The pin state of a (user, key) pair and the user's recent issuance, read before signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinState {
    /// The key pinned to the user, if any.
    pub user_pin: Option<KeyFingerprint>,
    /// The audit entry the pin references (its `issuance` or `identity-reset`), read with the pin;
    /// `None` when the user has no pin or the pin references no stored entry.
    pub pin_entry: Option<PinEntry>,
    /// True when the key is pinned to a different user.
    pub key_pinned_elsewhere: bool,
    /// How many certificates the user received at or after the time asked about (the rate limit).
    pub certificates_since: u64,
}

/// The entry that pinned a user's key, as the store holds it: what the issuer checks the pin
/// against before signing (`issuer::pins`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinEntry {
    /// The entry's stored bytes.
    pub bytes: Vec<u8>,
    /// Its log index, once sequenced.
    pub leaf_index: Option<u64>,
    /// The tree's stored leaf hash at that index, if the tree holds one.
    pub tree_leaf_hash: Option<[u8; 32]>,
}

/// The renewal rate limit, decided in the write transaction: a renewal is refused when the user
/// holds `max` certificates issued at or after `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// The start of the window.
    pub since: OffsetDateTime,
    /// Certificates allowed in the window.
    pub max: u64,
}

/// A signed certificate ready to be committed.
#[derive(Debug, Clone)]
pub struct NewCertificate {
    /// Whose it is.
    pub user_id: UserId,
    /// The certified key's fingerprint.
    pub key_fingerprint: KeyFingerprint,
    /// The certified key's DER SubjectPublicKeyInfo (stored with the pin).
    pub spki_der: Vec<u8>,
    /// The serial.
    pub serial: SerialNumber,
    /// The certificate, DER.
    pub certificate_der: Vec<u8>,
    /// Validity bounds, for lookups.
    pub not_before: OffsetDateTime,
    /// Validity bounds, for lookups.
    pub not_after: OffsetDateTime,
    /// When the issuer's clock made it: what the rate limit's window counts (and the pin's time).
    pub issued_at: OffsetDateTime,
    /// The limit a renewal is held to (an identity reset is not).
    pub rate_limit: RateLimit,
}

/// The outcome of committing an issuance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Pin (if new), certificate and audit entry are durable.
    Committed {
        /// True when the key was already pinned to the user.
        renewal: bool,
        /// The audit entry.
        entry: LogEntryRef,
    },
    /// Another key is pinned to the user (a concurrent request won); nothing was written.
    PinnedToOtherKey(KeyFingerprint),
    /// The key is pinned to another user; nothing was written.
    KeyPinnedElsewhere,
    /// A renewal over the rate limit: the user holds this many certificates in the window; nothing
    /// was written.
    RateLimited(u64),
}

/// The outcome of committing an issuance under an approved identity reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetOutcome {
    /// The new key is pinned in place of the old one, the old certificates are revoked, the
    /// approval is consumed, and the certificate and its `identity-reset` entry are durable.
    Reset {
        /// The audit entry.
        entry: LogEntryRef,
        /// The certificates the reset revoked.
        revoked: Vec<SerialNumber>,
    },
    /// The approval was consumed, expired or no longer matches the pin (another replica used it);
    /// nothing was written.
    NotApproved,
    /// The new key is pinned to another user; nothing was written.
    KeyPinnedElsewhere,
}

/// What the issuer needs from a store. Implementations: `store::sqlite` and `store::postgres`,
/// held to this contract by the shared suite in `store::conformance`.
///
/// Contract: `commit_issuance` is one transaction that writes the pin (if the user has none, with a
/// reference to the entry), the certificate (with a reference to the entry) and the audit entry,
/// or nothing; a renewal over its `rate_limit`, counted inside that transaction (serialized per
/// user), writes nothing. Uniqueness of a user's pin, of a key's owner and of
/// serials is enforced by the database, so that concurrent callers (threads or replicas) cannot
/// both win; the audit entry's kind (issuance or renewal) follows what that transaction saw. An
/// answer (`Ok`) is given only after the transaction is durable. `StoreError::Unavailable` means
/// nothing was written and the caller may retry later; `Integrity` means the database refused this
/// one write (a serial collision).
pub trait IssuanceStore: Send + Sync + 'static {
    /// Reads the pin state of `user` and `key`, and counts the certificates issued to `user` at or
    /// after `since`, in one read.
    fn pin_state(
        &self,
        user: &UserId,
        key: &KeyFingerprint,
        since: OffsetDateTime,
    ) -> impl Future<Output = Result<PinState, StoreError>> + Send;

    /// Commits a signed certificate with its audit event (see the trait contract).
    fn commit_issuance(
        &self,
        certificate: NewCertificate,
        event: AuditEvent,
    ) -> impl Future<Output = Result<CommitOutcome, StoreError>> + Send;

    /// The user's approved, unconsumed identity reset that is unexpired at `now`, if any: read only
    /// when a CSR carries another key than the pinned one.
    fn approved_reset(
        &self,
        user: &UserId,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<ApprovalRequest>, StoreError>> + Send;

    /// Commits a certificate under the approved reset `request`, in one transaction: consumes the
    /// approval (unless consumed or expired at `certificate.issued_at`, or the user's pin is no
    /// longer the one it was approved for: `NotApproved`), pins the new key in place of the old,
    /// revokes every unrevoked certificate of the user with the request's revocation reason, and
    /// writes the certificate and `event` (kind `identity-reset`), or nothing.
    fn commit_reset(
        &self,
        certificate: NewCertificate,
        event: AuditEvent,
        request: ApprovalRequest,
    ) -> impl Future<Output = Result<ResetOutcome, StoreError>> + Send;

    /// Appends an audit event on its own (a refusal), durably, before answering.
    fn append_event(&self, event: AuditEvent) -> impl Future<Output = Result<LogEntryRef, StoreError>> + Send;

    /// The log index the sequencer gave `entry`, or `None` while it is pending.
    fn log_index(&self, entry: &LogEntryRef) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;
}
