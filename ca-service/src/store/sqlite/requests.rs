//! The embedded store's dual-control requests (`ApprovalStore`), the approved reset the issuer
//! looks for (`IssuanceStore::approved_reset`) and `consume`, with which the action a request
//! authorizes uses it up in its own transaction. Every write is a `GroupWrite` written with its
//! audit entry in its savepoint.

use rusqlite::{Connection, OptionalExtension, Row, params};
use time::OffsetDateTime;

use super::group_commit::GroupWrite;
use super::identities::append_entry;
use super::{SqliteStore, cached_row, store_error, unix};
use crate::approvals::{
    ApprovalKind, ApprovalRefused, ApprovalRequest, ApprovalStore, NewRequest, OpenRefused, RequestId,
};
use crate::audit::LogEntryRef;
use crate::identity::{KeyFingerprint, UserId};
use crate::storage::StoreError;
use crate::store::codec::{approval_kind, fingerprint, from_unix, proposed_key, reason, request_id, user_id};

/// The columns `request_row` decodes, in order.
const REQUEST_COLUMNS: &str = "id, kind, subject, reason, revocation_reason, key_sha256, requested_by, requested_at,
     expires_at, approved_by, approved_at, consumed_at, recovery_spki_der, ceremony_reference";

fn request_row(row: &Row<'_>) -> rusqlite::Result<RawRequest> {
    Ok(RawRequest {
        id: row.get(0)?,
        kind: row.get(1)?,
        subject: row.get(2)?,
        reason: row.get(3)?,
        revocation_reason: row.get(4)?,
        key: row.get(5)?,
        requested_by: row.get(6)?,
        requested_at: row.get(7)?,
        expires_at: row.get(8)?,
        approved_by: row.get(9)?,
        approved_at: row.get(10)?,
        consumed_at: row.get(11)?,
        recovery_spki_der: row.get(12)?,
        ceremony_reference: row.get(13)?,
    })
}

/// A request row before decoding (rusqlite's row mapper cannot return `StoreError`).
struct RawRequest {
    id: String,
    kind: String,
    subject: String,
    reason: String,
    revocation_reason: i64,
    key: Option<Vec<u8>>,
    requested_by: String,
    requested_at: i64,
    expires_at: i64,
    approved_by: Option<String>,
    approved_at: Option<i64>,
    consumed_at: Option<i64>,
    recovery_spki_der: Option<Vec<u8>>,
    ceremony_reference: Option<String>,
}

impl RawRequest {
    fn decode(self) -> Result<ApprovalRequest, StoreError> {
        let kind = approval_kind(&self.kind)?;
        Ok(ApprovalRequest {
            id: request_id(&self.id)?,
            kind,
            subject: if kind.concerns_a_user() {
                Some(user_id(&self.subject)?)
            } else {
                None
            },
            recovery_key: proposed_key(self.recovery_spki_der, self.ceremony_reference),
            reason: self.reason,
            revocation_reason: reason(self.revocation_reason)?,
            key_fingerprint: self.key.as_deref().map(fingerprint).transpose()?,
            requested_by: self.requested_by,
            requested_at: from_unix(self.requested_at)?,
            expires_at: from_unix(self.expires_at)?,
            approval: match (self.approved_by, self.approved_at) {
                (Some(by), Some(at)) => Some((by, from_unix(at)?)),
                _ => None,
            },
            consumed_at: self.consumed_at.map(from_unix).transpose()?,
        })
    }
}

pub(super) fn find_request(connection: &Connection, id: &RequestId) -> Result<Option<ApprovalRequest>, StoreError> {
    cached_row(
        connection,
        &format!("SELECT {REQUEST_COLUMNS} FROM approval_requests WHERE id = ?1"),
        params![id.as_str()],
        request_row,
    )
    .optional()
    .map_err(store_error)?
    .map(RawRequest::decode)
    .transpose()
}

/// The key a new request concerns (`NewRequest`), or why it cannot be opened: the pinned key (a
/// reset), the deposit's recovery key (a release), the proposed key (a registration) or the
/// enabled one (a disable).
fn request_key(
    connection: &Connection,
    request: &NewRequest,
) -> Result<Result<KeyFingerprint, OpenRefused>, StoreError> {
    let subject = request.subject_text();
    let (sql, refused) = match request.kind {
        ApprovalKind::IdentityReset => (
            "SELECT key_sha256 FROM identities WHERE user_id = ?1",
            OpenRefused::UnknownUser,
        ),
        ApprovalKind::EscrowRelease => (
            "SELECT recovery_key_sha256 FROM escrows WHERE user_id = ?1",
            OpenRefused::NoDeposit,
        ),
        ApprovalKind::RecoveryKeyRegistration => {
            return match &request.recovery_key {
                Some(proposed) => Ok(Ok(KeyFingerprint::of_spki(&proposed.spki_der))),
                // The caller's mistake: this write alone is refused, nothing written.
                None => Err(StoreError::Integrity(
                    "a recovery-key registration must carry the proposed key".to_owned(),
                )),
            };
        }
        ApprovalKind::RecoveryKeyDisable => {
            let enabled = super::backup::enabled_recovery_key(connection)?;
            return Ok(enabled
                .map(|enabled| enabled.fingerprint)
                .ok_or(OpenRefused::RecoveryDisabled));
        }
    };
    let key: Option<Vec<u8>> = cached_row(connection, sql, params![subject], |row| row.get(0))
        .optional()
        .map_err(store_error)?;
    key.map(|key| fingerprint(&key))
        .transpose()
        .map(|key| key.ok_or(refused))
}

/// `ApprovalStore::open_request` as a grouped write.
struct OpenWrite {
    request: NewRequest,
}

impl GroupWrite for OpenWrite {
    type Output = Result<(ApprovalRequest, LogEntryRef), OpenRefused>;

    fn write(self, connection: &Connection) -> Result<Self::Output, StoreError> {
        let mut request = self.request;
        // Only the user kinds have a subject, and only a registration carries a key: stored as the
        // decoding reads them back.
        if !request.kind.concerns_a_user() {
            request.subject = None;
        }
        if request.kind != ApprovalKind::RecoveryKeyRegistration {
            request.recovery_key = None;
        }
        let subject = request.subject_text().to_owned();
        let subject = subject.as_str();
        let key_fingerprint = match request_key(connection, &request)? {
            Ok(key_fingerprint) => key_fingerprint,
            Err(refused) => return Ok(Err(refused)),
        };
        let open: Option<String> = cached_row(
            connection,
            "SELECT id FROM approval_requests
             WHERE subject = ?1 AND kind = ?2 AND consumed_at IS NULL AND expires_at > ?3 LIMIT 1",
            params![subject, request.kind.name(), unix(request.requested_at)],
            |row| row.get(0),
        )
        .optional()
        .map_err(store_error)?;
        if let Some(open) = open {
            return Ok(Err(OpenRefused::AlreadyOpen(request_id(&open)?)));
        }
        let stored = ApprovalRequest {
            id: request.id,
            kind: request.kind,
            subject: request.subject,
            recovery_key: request.recovery_key,
            reason: request.reason,
            revocation_reason: request.revocation_reason,
            key_fingerprint: Some(key_fingerprint),
            requested_by: request.requested_by,
            requested_at: request.requested_at,
            expires_at: request.expires_at,
            approval: None,
            consumed_at: None,
        };
        let entry = append_entry(connection, &crate::audit::request_opened(&stored))?;
        connection
            .prepare_cached(
                "INSERT INTO approval_requests (id, kind, subject, reason, revocation_reason, key_sha256,
                     requested_by, requested_at, expires_at, recovery_spki_der, ceremony_reference)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    stored.id.as_str(),
                    stored.kind.name(),
                    stored.subject_text(),
                    stored.reason,
                    stored.revocation_reason.code(),
                    key_fingerprint.as_bytes().as_slice(),
                    stored.requested_by,
                    unix(stored.requested_at),
                    unix(stored.expires_at),
                    stored
                        .recovery_key
                        .as_ref()
                        .map(|proposed| proposed.spki_der.as_slice()),
                    stored
                        .recovery_key
                        .as_ref()
                        .map(|proposed| proposed.ceremony_reference.as_str()),
                ])
            })
            .map_err(store_error)?;
        Ok(Ok((stored, entry)))
    }

    fn keeps(output: &Self::Output) -> bool {
        output.is_ok()
    }

    fn entry(output: &mut Self::Output) -> Option<&mut LogEntryRef> {
        output.as_mut().ok().map(|(_, entry)| entry)
    }
}

/// `ApprovalStore::approve_request` as a grouped write. The writer is the only writer, so the row
/// read here cannot change before the update.
struct ApproveWrite {
    id: RequestId,
    approver: String,
    now: OffsetDateTime,
}

impl GroupWrite for ApproveWrite {
    type Output = Result<(ApprovalRequest, LogEntryRef), ApprovalRefused>;

    fn write(self, connection: &Connection) -> Result<Self::Output, StoreError> {
        let Some(mut request) = find_request(connection, &self.id)? else {
            return Ok(Err(ApprovalRefused::NotFound));
        };
        if let Err(refused) = request.check_approval(&self.approver, self.now) {
            return Ok(Err(refused));
        }
        request.approval = Some((self.approver, self.now));
        let entry = append_entry(connection, &crate::audit::request_approved(&request))?;
        connection
            .prepare_cached(
                "UPDATE approval_requests SET approved_by = ?2, approved_at = ?3
                 WHERE id = ?1 AND approved_by IS NULL AND consumed_at IS NULL",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    request.id.as_str(),
                    request.approval.as_ref().map(|(by, _)| by.as_str()),
                    unix(self.now)
                ])
            })
            .map_err(store_error)?;
        Ok(Ok((request, entry)))
    }

    fn keeps(output: &Self::Output) -> bool {
        output.is_ok()
    }

    fn entry(output: &mut Self::Output) -> Option<&mut LogEntryRef> {
        output.as_mut().ok().map(|(_, entry)| entry)
    }
}

/// Consumes the approved request `id` for `subject` at `now`, once: false when it is not approved,
/// consumed, expired or for someone else. The action it authorizes runs in the same transaction.
pub(super) fn consume(
    connection: &Connection,
    id: &RequestId,
    kind: ApprovalKind,
    subject: &UserId,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    let consumed = connection
        .prepare_cached(
            "UPDATE approval_requests SET consumed_at = ?4
             WHERE id = ?1 AND kind = ?2 AND subject = ?3 AND approved_by IS NOT NULL
               AND consumed_at IS NULL AND expires_at > ?4",
        )
        .and_then(|mut statement| statement.execute(params![id.as_str(), kind.name(), subject.as_str(), unix(now)]))
        .map_err(store_error)?;
    Ok(consumed == 1)
}

/// The approved, unconsumed reset of `user` unexpired at `now`.
pub(super) fn approved_reset(
    connection: &Connection,
    user: &UserId,
    now: OffsetDateTime,
) -> Result<Option<ApprovalRequest>, StoreError> {
    cached_row(
        connection,
        &format!(
            "SELECT {REQUEST_COLUMNS} FROM approval_requests
             WHERE subject = ?1 AND kind = ?2 AND consumed_at IS NULL AND approved_by IS NOT NULL
               AND expires_at > ?3
             ORDER BY requested_at LIMIT 1"
        ),
        params![user.as_str(), ApprovalKind::IdentityReset.name(), unix(now)],
        request_row,
    )
    .optional()
    .map_err(store_error)?
    .map(RawRequest::decode)
    .transpose()
}

impl ApprovalStore for SqliteStore {
    async fn open_request(
        &self,
        request: NewRequest,
    ) -> Result<Result<(ApprovalRequest, LogEntryRef), OpenRefused>, StoreError> {
        self.grouped(OpenWrite { request }).await
    }

    async fn approve_request(
        &self,
        id: RequestId,
        approver: String,
        now: OffsetDateTime,
    ) -> Result<Result<(ApprovalRequest, LogEntryRef), ApprovalRefused>, StoreError> {
        self.grouped(ApproveWrite { id, approver, now }).await
    }

    async fn open_requests(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<ApprovalRequest>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_reader(move |connection| {
            let mut statement = connection
                .prepare_cached(&format!(
                    "SELECT {REQUEST_COLUMNS} FROM approval_requests
                     WHERE consumed_at IS NULL AND expires_at > ?1 ORDER BY requested_at, id LIMIT ?2"
                ))
                .map_err(store_error)?;
            let rows = statement
                .query_map(params![unix(now), limit], request_row)
                .map_err(store_error)?;
            rows.map(|row| row.map_err(store_error).and_then(RawRequest::decode))
                .collect()
        })
        .await
    }
}
