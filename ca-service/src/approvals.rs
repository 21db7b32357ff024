//! Dual control: one admin requests, a different admin approves, and the action the approval
//! authorizes consumes it, once, before it expires. One mechanism for every kind of request
//! (`ApprovalKind`: an identity reset, an escrow release, registering or disabling the recovery
//! key).
//!
//! Life of a request: `open` (pending) → `approve` by another principal (approved) → consumed
//! inside the transaction of the action it authorizes (the store's `consume`, a compare-and-set on
//! the row, so that two replicas cannot both consume it). A request not consumed by `expires_at`
//! is expired, approved or not. Each step is written with its audit entry in one transaction.

use std::fmt;
use std::future::Future;

use time::OffsetDateTime;

use crate::audit::LogEntryRef;
use crate::identity::{KeyFingerprint, UserId};
use crate::revocation::RevocationReason;
use crate::storage::StoreError;

/// Longest reason an admin may give, in bytes.
pub const MAX_REASON_BYTES: usize = 512;

/// A request id: 128 random bits, as 32 lowercase hex characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// A fresh random id.
    pub fn generate() -> RequestId {
        RequestId(hex::encode(rand::random::<[u8; 16]>()))
    }

    /// Parses an id as a caller sent it.
    pub fn parse(raw: &str) -> Option<RequestId> {
        let valid = raw.len() == 32 && raw.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'));
        valid.then(|| RequestId(raw.to_owned()))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "RequestId({})", self.0)
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApprovalKind {
    /// Let the user's next issuance pin a new key, revoking the old certificates (consumed by
    /// that issuance).
    IdentityReset,
    /// Let one `GetEscrow` return the user's escrow deposit (consumed by it).
    EscrowRelease,
    /// Certify a recovery key and enable it (performed and consumed by the approval).
    RecoveryKeyRegistration,
    /// Disable the recovery key (performed and consumed by the approval).
    RecoveryKeyDisable,
}

/// Every kind, for lookups by name.
const KINDS: [ApprovalKind; 4] = [
    ApprovalKind::IdentityReset,
    ApprovalKind::EscrowRelease,
    ApprovalKind::RecoveryKeyRegistration,
    ApprovalKind::RecoveryKeyDisable,
];

/// The audit subject of recovery-key requests, which concern no user.
pub const RECOVERY_KEY_SUBJECT: &str = "recovery-key";

impl ApprovalKind {
    /// The name stored and logged.
    pub fn name(self) -> &'static str {
        match self {
            ApprovalKind::IdentityReset => "identity-reset",
            ApprovalKind::EscrowRelease => "escrow-release",
            ApprovalKind::RecoveryKeyRegistration => "recovery-key-registration",
            ApprovalKind::RecoveryKeyDisable => "recovery-key-disable",
        }
    }

    /// The kind stored as `name`.
    pub fn from_name(name: &str) -> Option<ApprovalKind> {
        KINDS.into_iter().find(|kind| kind.name() == name)
    }

    /// True for the kinds that concern one user (the others have no `subject`).
    pub fn concerns_a_user(self) -> bool {
        matches!(self, ApprovalKind::IdentityReset | ApprovalKind::EscrowRelease)
    }
}

/// A recovery key proposed for registration, carried by its request until approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposedRecoveryKey {
    /// The X25519 SubjectPublicKeyInfo, DER (`recovery::RecoveryPublicKey`).
    pub spki_der: Vec<u8>,
    /// The ceremony reference.
    pub ceremony_reference: String,
}

/// A request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequest {
    /// Its id.
    pub id: RequestId,
    /// What it asks for.
    pub kind: ApprovalKind,
    /// The user it concerns; `None` exactly for the recovery-key kinds.
    pub subject: Option<UserId>,
    /// Why, as the requester gave it.
    pub reason: String,
    /// For a reset: how the old certificates are revoked.
    pub revocation_reason: RevocationReason,
    /// For a reset, the key pinned when it was requested (the one the reset replaces); for an
    /// escrow release, the recovery key of the deposit; for a recovery-key request, that key.
    pub key_fingerprint: Option<KeyFingerprint>,
    /// For a recovery-key registration: the proposed key.
    pub recovery_key: Option<ProposedRecoveryKey>,
    /// The requesting principal.
    pub requested_by: String,
    /// When it was requested.
    pub requested_at: OffsetDateTime,
    /// When it expires unless consumed.
    pub expires_at: OffsetDateTime,
    /// The approving principal and when, once approved.
    pub approval: Option<(String, OffsetDateTime)>,
    /// When it was consumed, if it was.
    pub consumed_at: Option<OffsetDateTime>,
}

impl ApprovalRequest {
    /// The subject as stored and logged: the user id, or `RECOVERY_KEY_SUBJECT`.
    pub fn subject_text(&self) -> &str {
        self.subject.as_ref().map_or(RECOVERY_KEY_SUBJECT, UserId::as_str)
    }

    /// Where the request stands at `now`.
    pub fn state(&self, now: OffsetDateTime) -> RequestState {
        if self.consumed_at.is_some() {
            RequestState::Consumed
        } else if now >= self.expires_at {
            RequestState::Expired
        } else if self.approval.is_some() {
            RequestState::Approved
        } else {
            RequestState::Pending
        }
    }

    /// Whether `approver` may approve it at `now`; the store applies this inside the transaction
    /// that records the approval.
    pub fn check_approval(&self, approver: &str, now: OffsetDateTime) -> Result<(), ApprovalRefused> {
        match self.state(now) {
            RequestState::Pending if self.requested_by == approver => Err(ApprovalRefused::SelfApproval),
            RequestState::Pending => Ok(()),
            other => Err(ApprovalRefused::NotPending(other)),
        }
    }
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    /// Waiting for another admin.
    Pending,
    /// Approved, not yet consumed.
    Approved,
    /// Used by the action it authorized.
    Consumed,
    /// Past `expires_at` before it was consumed.
    Expired,
}

impl fmt::Display for RequestState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "already approved",
            RequestState::Consumed => "already consumed",
            RequestState::Expired => "expired",
        })
    }
}

/// Why an approval was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalRefused {
    /// No such request.
    #[error("no request with this id")]
    NotFound,
    /// The requester tried to approve their own request.
    #[error("a request must be approved by a different admin than the one who made it")]
    SelfApproval,
    /// The request is not pending.
    #[error("the request is {0}; only a pending request can be approved")]
    NotPending(RequestState),
}

/// Why a request could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenRefused {
    /// The user has no pinned key (nothing to reset).
    #[error("the user has no pinned identity")]
    UnknownUser,
    /// An escrow release for a user without a deposit.
    #[error("the user has no escrow deposit")]
    NoDeposit,
    /// A recovery-key disable while none is enabled.
    #[error("no recovery key is enabled")]
    RecoveryDisabled,
    /// The user has an open request of this kind already.
    #[error("the user already has an open request ({0}); approve it or let it expire")]
    AlreadyOpen(RequestId),
}

/// A request to open. The store fills in `key_fingerprint` from what it sees: the pinned key (a
/// reset), the deposit's recovery key (a release), the enabled recovery key (a disable), or the
/// proposed key's (a registration).
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// Its id.
    pub id: RequestId,
    /// What it asks for.
    pub kind: ApprovalKind,
    /// The user it concerns; `None` exactly for the recovery-key kinds.
    pub subject: Option<UserId>,
    /// For a recovery-key registration: the proposed key.
    pub recovery_key: Option<ProposedRecoveryKey>,
    /// Why.
    pub reason: String,
    /// For a reset: how the old certificates are revoked.
    pub revocation_reason: RevocationReason,
    /// The requesting principal.
    pub requested_by: String,
    /// Now.
    pub requested_at: OffsetDateTime,
    /// `requested_at` plus the configured lifetime.
    pub expires_at: OffsetDateTime,
}

impl NewRequest {
    /// The subject as stored and logged (see `ApprovalRequest::subject_text`).
    pub fn subject_text(&self) -> &str {
        self.subject.as_ref().map_or(RECOVERY_KEY_SUBJECT, UserId::as_str)
    }
}

/// What the Admin service needs from a store for dual control. Implementations: both stores,
/// held to it by `store::conformance`.
///
/// Contract: `open` writes the request and its audit entry (built by the store from the request:
/// see `audit::request_opened`) in one transaction, refusing an open request of the same kind and
/// subject (pending or approved, unconsumed, unexpired; recovery-key requests share one subject),
/// a reset of a user without a pin, a release of a user without a deposit and a disable while no
/// recovery key is enabled; `approve` reads the row
/// locked, applies `ApprovalRequest::check_approval` and records the approval with its entry in one
/// transaction, so that two approvals cannot both succeed.
pub trait ApprovalStore: Send + Sync + 'static {
    /// Opens `request` (see the trait contract).
    fn open_request(
        &self,
        request: NewRequest,
    ) -> impl Future<Output = Result<Result<(ApprovalRequest, LogEntryRef), OpenRefused>, StoreError>> + Send;

    /// Approves `id` as `approver` at `now` (see the trait contract).
    fn approve_request(
        &self,
        id: RequestId,
        approver: String,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Result<(ApprovalRequest, LogEntryRef), ApprovalRefused>, StoreError>> + Send;

    /// The open requests at `now` (pending, or approved and unconsumed), oldest first, at most
    /// `limit`.
    fn open_requests(
        &self,
        now: OffsetDateTime,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ApprovalRequest>, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(requested_by: &str) -> ApprovalRequest {
        ApprovalRequest {
            id: RequestId::generate(),
            kind: ApprovalKind::IdentityReset,
            subject: Some(UserId::parse("alice").expect("user")),
            reason: "lost every device".to_owned(),
            revocation_reason: RevocationReason::Superseded,
            key_fingerprint: None,
            recovery_key: None,
            requested_by: requested_by.to_owned(),
            requested_at: OffsetDateTime::UNIX_EPOCH,
            expires_at: OffsetDateTime::UNIX_EPOCH + time::Duration::hours(24),
            approval: None,
            consumed_at: None,
        }
    }

    #[test]
    fn only_another_admin_approves_a_pending_unexpired_request() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1);
        let mut pending = request("admin-alice");
        assert_eq!(pending.check_approval("admin-bob", now), Ok(()));
        assert_eq!(
            pending.check_approval("admin-alice", now),
            Err(ApprovalRefused::SelfApproval)
        );
        let expired = OffsetDateTime::UNIX_EPOCH + time::Duration::hours(24);
        assert_eq!(
            pending.check_approval("admin-bob", expired),
            Err(ApprovalRefused::NotPending(RequestState::Expired))
        );
        pending.approval = Some(("admin-bob".to_owned(), now));
        assert_eq!(pending.state(now), RequestState::Approved);
        assert_eq!(
            pending.check_approval("admin-carol", now),
            Err(ApprovalRefused::NotPending(RequestState::Approved))
        );
        pending.consumed_at = Some(now);
        assert_eq!(pending.state(expired), RequestState::Consumed);
    }

    #[test]
    fn request_ids_are_32_lowercase_hex_characters() {
        let id = RequestId::generate();
        assert_eq!(RequestId::parse(id.as_str()), Some(id.clone()));
        assert_ne!(RequestId::generate(), id);
        for bad in ["", "abc", &"A".repeat(32), &"g".repeat(32), &"a".repeat(33)] {
            assert_eq!(RequestId::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            ApprovalKind::from_name("identity-reset"),
            Some(ApprovalKind::IdentityReset)
        );
        for kind in KINDS {
            assert_eq!(ApprovalKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(ApprovalKind::from_name("escrow"), None);
    }
}
