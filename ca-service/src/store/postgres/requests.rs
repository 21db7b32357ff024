//! The PostgreSQL store's dual-control requests (`ApprovalStore`), the approved reset the issuer
//! looks for (`approved_reset`) and `consume`, with which the action a request authorizes uses it
//! up in its own transaction.
//!
//! Admin writes are rare, so each is a transaction of its own (`bounded`), not a group. Races
//! between replicas are decided by row locks and compare-and-set updates: opens of one subject take
//! turns on the user's pin row (`FOR UPDATE`), or for the recovery-key requests on an advisory lock;
//! an approval locks its request row before checking it; `consume` is an
//! `UPDATE … WHERE consumed_at IS NULL` (a second consumer waits, then sees it consumed).

use deadpool_postgres::GenericClient;
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::admin::{append, reason_code};
use super::backup::ENABLED_RECOVERY_KEY;
use super::{PostgresStore, store_error};
use crate::approvals::{
    ApprovalKind, ApprovalRefused, ApprovalRequest, ApprovalStore, NewRequest, OpenRefused, RequestId,
};
use crate::audit::LogEntryRef;
use crate::identity::{KeyFingerprint, UserId};
use crate::storage::StoreError;
use crate::store::codec::{approval_kind, fingerprint, proposed_key, reason, request_id, user_id};

/// The columns `decode_request` reads, in order.
pub(super) const REQUEST_COLUMNS: &str =
    "id, kind, subject, reason, revocation_reason, key_sha256, requested_by, requested_at,
     expires_at, approved_by, approved_at, consumed_at, recovery_spki_der, ceremony_reference";

pub(super) fn decode_request(row: &Row) -> Result<ApprovalRequest, StoreError> {
    let key: Option<&[u8]> = row.get(5);
    let approved_by: Option<String> = row.get(9);
    let approved_at: Option<OffsetDateTime> = row.get(10);
    let kind = approval_kind(row.get(1))?;
    Ok(ApprovalRequest {
        id: request_id(row.get(0))?,
        kind,
        subject: if kind.concerns_a_user() {
            Some(user_id(row.get(2))?)
        } else {
            None
        },
        recovery_key: proposed_key(row.get(12), row.get(13)),
        reason: row.get(3),
        revocation_reason: reason(row.get::<_, i16>(4).into())?,
        key_fingerprint: key.map(fingerprint).transpose()?,
        requested_by: row.get(6),
        requested_at: row.get(7),
        expires_at: row.get(8),
        approval: approved_by.zip(approved_at),
        consumed_at: row.get(11),
    })
}

/// Consumes the approved request `id` for `subject` at `now`, once (see `sqlite::requests::consume`).
pub(super) async fn consume(
    client: &impl GenericClient,
    id: &RequestId,
    kind: ApprovalKind,
    subject: &UserId,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    let consumed = client
        .execute(
            "UPDATE approval_requests SET consumed_at = $4
             WHERE id = $1 AND kind = $2 AND subject = $3 AND approved_by IS NOT NULL
               AND consumed_at IS NULL AND expires_at > $4",
            &[&id.as_str(), &kind.name(), &subject.as_str(), &now],
        )
        .await
        .map_err(store_error)?;
    Ok(consumed == 1)
}

impl PostgresStore {
    /// `IssuanceStore::approved_reset`.
    pub(super) async fn approved_reset_of(
        &self,
        user: &UserId,
        now: OffsetDateTime,
    ) -> Result<Option<ApprovalRequest>, StoreError> {
        self.bounded(async |client| {
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {REQUEST_COLUMNS} FROM approval_requests
                         WHERE subject = $1 AND kind = $2 AND consumed_at IS NULL AND approved_by IS NOT NULL
                           AND expires_at > $3
                         ORDER BY requested_at LIMIT 1"
                    ),
                    &[&user.as_str(), &ApprovalKind::IdentityReset.name(), &now],
                )
                .await
                .map_err(store_error)?;
            row.as_ref().map(decode_request).transpose()
        })
        .await
    }
}

/// Advisory lock key under which recovery-key requests are opened, one at a time: they share one
/// subject and lock no row ("e2eeca" + 3; `migrate::MIGRATION_LOCK` is + 1, `log::SEQUENCER_LOCK` + 2).
const RECOVERY_KEY_REQUESTS_LOCK: i64 = 0x6532_6565_6361_0003;

/// The key a new request concerns (`NewRequest`), or why it cannot be opened: the pinned key (a
/// reset), the deposit's recovery key (a release), the proposed key (a registration) or the
/// enabled one (a disable). Takes the lock under which opens of one subject take turns: the
/// user's pin row, or `RECOVERY_KEY_REQUESTS_LOCK`.
async fn request_key(
    client: &impl GenericClient,
    request: &NewRequest,
) -> Result<Result<KeyFingerprint, OpenRefused>, StoreError> {
    let subject = request.subject_text();
    if !request.kind.concerns_a_user() {
        client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&RECOVERY_KEY_REQUESTS_LOCK])
            .await
            .map_err(store_error)?;
    }
    let (key, refused): (Option<Vec<u8>>, _) = match request.kind {
        ApprovalKind::IdentityReset => {
            let pinned = client
                .query_opt(
                    "SELECT key_sha256 FROM identities WHERE user_id = $1 FOR UPDATE",
                    &[&subject],
                )
                .await
                .map_err(store_error)?;
            (pinned.map(|row| row.get(0)), OpenRefused::UnknownUser)
        }
        ApprovalKind::EscrowRelease => {
            // A deposit's user is pinned (its foreign key): the pin row is the lock.
            let deposit = client
                .query_opt(
                    "SELECT escrows.recovery_key_sha256 FROM identities
                     JOIN escrows ON escrows.user_id = identities.user_id
                     WHERE identities.user_id = $1 FOR UPDATE OF identities",
                    &[&subject],
                )
                .await
                .map_err(store_error)?;
            (deposit.map(|row| row.get(0)), OpenRefused::NoDeposit)
        }
        ApprovalKind::RecoveryKeyRegistration => {
            return match &request.recovery_key {
                Some(proposed) => Ok(Ok(KeyFingerprint::of_spki(&proposed.spki_der))),
                // The caller's mistake: refused, nothing written.
                None => Err(StoreError::Integrity(
                    "a recovery-key registration must carry the proposed key".to_owned(),
                )),
            };
        }
        ApprovalKind::RecoveryKeyDisable => {
            let enabled = client.query_opt(ENABLED_RECOVERY_KEY, &[]).await.map_err(store_error)?;
            (enabled.map(|row| row.get(0)), OpenRefused::RecoveryDisabled)
        }
    };
    Ok(key.as_deref().map(fingerprint).transpose()?.ok_or(refused))
}

impl ApprovalStore for PostgresStore {
    async fn open_request(
        &self,
        request: NewRequest,
    ) -> Result<Result<(ApprovalRequest, LogEntryRef), OpenRefused>, StoreError> {
        let mut request = request;
        // Only the user kinds have a subject, and only a registration carries a key: stored as the
        // decoding reads them back.
        if !request.kind.concerns_a_user() {
            request.subject = None;
        }
        if request.kind != ApprovalKind::RecoveryKeyRegistration {
            request.recovery_key = None;
        }
        self.bounded(async |client| {
            let transaction = client.transaction().await.map_err(store_error)?;
            let subject = request.subject_text();
            let key_fingerprint = match request_key(&transaction, &request).await? {
                Ok(key_fingerprint) => key_fingerprint,
                Err(refused) => {
                    transaction.rollback().await.map_err(store_error)?;
                    return Ok(Err(refused));
                }
            };
            let open = transaction
                .query_opt(
                    "SELECT id FROM approval_requests
                     WHERE subject = $1 AND kind = $2 AND consumed_at IS NULL AND expires_at > $3 LIMIT 1",
                    &[&subject, &request.kind.name(), &request.requested_at],
                )
                .await
                .map_err(store_error)?;
            if let Some(open) = open {
                transaction.rollback().await.map_err(store_error)?;
                return Ok(Err(OpenRefused::AlreadyOpen(request_id(open.get(0))?)));
            }
            let stored = ApprovalRequest {
                id: request.id.clone(),
                kind: request.kind,
                subject: request.subject.clone(),
                recovery_key: request.recovery_key.clone(),
                reason: request.reason.clone(),
                revocation_reason: request.revocation_reason,
                key_fingerprint: Some(key_fingerprint),
                requested_by: request.requested_by.clone(),
                requested_at: request.requested_at,
                expires_at: request.expires_at,
                approval: None,
                consumed_at: None,
            };
            let entry = append(&transaction, &crate::audit::request_opened(&stored)).await?;
            transaction
                .execute(
                    "INSERT INTO approval_requests (id, kind, subject, reason, revocation_reason, key_sha256,
                         requested_by, requested_at, expires_at, recovery_spki_der, ceremony_reference)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    &[
                        &stored.id.as_str(),
                        &stored.kind.name(),
                        &subject,
                        &stored.reason,
                        &reason_code(stored.revocation_reason),
                        &key_fingerprint.as_bytes().as_slice(),
                        &stored.requested_by,
                        &stored.requested_at,
                        &stored.expires_at,
                        &stored
                            .recovery_key
                            .as_ref()
                            .map(|proposed| proposed.spki_der.as_slice()),
                        &stored
                            .recovery_key
                            .as_ref()
                            .map(|proposed| proposed.ceremony_reference.as_str()),
                    ],
                )
                .await
                .map_err(store_error)?;
            transaction.commit().await.map_err(store_error)?;
            Ok(Ok((stored, entry)))
        })
        .await
    }

    async fn approve_request(
        &self,
        id: RequestId,
        approver: String,
        now: OffsetDateTime,
    ) -> Result<Result<(ApprovalRequest, LogEntryRef), ApprovalRefused>, StoreError> {
        self.bounded(async |client| {
            let transaction = client.transaction().await.map_err(store_error)?;
            let row = transaction
                .query_opt(
                    &format!("SELECT {REQUEST_COLUMNS} FROM approval_requests WHERE id = $1 FOR UPDATE"),
                    &[&id.as_str()],
                )
                .await
                .map_err(store_error)?;
            let Some(mut request) = row.as_ref().map(decode_request).transpose()? else {
                transaction.rollback().await.map_err(store_error)?;
                return Ok(Err(ApprovalRefused::NotFound));
            };
            if let Err(refused) = request.check_approval(&approver, now) {
                transaction.rollback().await.map_err(store_error)?;
                return Ok(Err(refused));
            }
            request.approval = Some((approver.clone(), now));
            let entry = append(&transaction, &crate::audit::request_approved(&request)).await?;
            transaction
                .execute(
                    "UPDATE approval_requests SET approved_by = $2, approved_at = $3 WHERE id = $1",
                    &[&id.as_str(), &approver, &now],
                )
                .await
                .map_err(store_error)?;
            transaction.commit().await.map_err(store_error)?;
            Ok(Ok((request, entry)))
        })
        .await
    }

    async fn open_requests(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<ApprovalRequest>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.bounded(async |client| {
            let rows = client
                .query(
                    &format!(
                        "SELECT {REQUEST_COLUMNS} FROM approval_requests
                         WHERE consumed_at IS NULL AND expires_at > $1 ORDER BY requested_at, id LIMIT $2"
                    ),
                    &[&now, &limit],
                )
                .await
                .map_err(store_error)?;
            rows.iter().map(decode_request).collect()
        })
        .await
    }
}
