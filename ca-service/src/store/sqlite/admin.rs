//! The embedded store's side of the Admin service: dual-control requests (`ApprovalStore`), the
//! reset an approval authorizes (`IssuanceStore::approved_reset` and `commit_reset`), revocations
//! and CRLs (`RevocationStore`) and the admin's lookups (`IdentityDirectory`). Every write is a
//! `GroupWrite` written with its audit entry in its savepoint.

use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, params};
use time::OffsetDateTime;

use super::group_commit::GroupWrite;
use super::identities::append_entry;
use super::{SqliteStore, cached_row, store_error, unix};
use crate::api::admin::{CertificateRecord, IdentityDirectory, IdentityRecord, IdentitySummary, UserLogEntry};
use crate::approvals::{
    ApprovalKind, ApprovalRefused, ApprovalRequest, ApprovalStore, NewRequest, OpenRefused, RequestId,
};
use crate::audit::{AuditEvent, LogEntryRef, serial_details};
use crate::identity::{KeyFingerprint, SerialNumber, UserId};
use crate::issuer::{NewCertificate, ResetOutcome};
use crate::revocation::crl::RevokedEntry;
use crate::revocation::{RevocationReason, RevocationStore, RevocationTarget, RevokeRefused, Revoked, StoredCrl};
use crate::storage::StoreError;
use crate::store::codec::{
    approval_kind, fingerprint, from_unix, proposed_key, reason, request_id, to_i64, to_u64, user_id,
};

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

/// The user's unrevoked certificates.
fn unrevoked(connection: &Connection, user: &str) -> Result<Vec<SerialNumber>, StoreError> {
    let mut statement = connection
        .prepare_cached(
            "SELECT certificates.serial FROM certificates
             LEFT JOIN revocations ON revocations.serial = certificates.serial
             WHERE certificates.user_id = ?1 AND revocations.serial IS NULL",
        )
        .map_err(store_error)?;
    let rows = statement
        .query_map(params![user], |row| row.get::<_, Vec<u8>>(0))
        .map_err(store_error)?;
    rows.map(|serial| serial.map(SerialNumber::from_bytes).map_err(store_error))
        .collect()
}

fn insert_revocations(
    connection: &Connection,
    serials: &[SerialNumber],
    reason: RevocationReason,
    now: OffsetDateTime,
    entry: &LogEntryRef,
) -> Result<(), StoreError> {
    let mut statement = connection
        .prepare_cached("INSERT INTO revocations (serial, reason, revoked_at, entry_id) VALUES (?1, ?2, ?3, ?4)")
        .map_err(store_error)?;
    for serial in serials {
        statement
            .execute(params![serial.as_bytes(), reason.code(), unix(now), entry.entry_id])
            .map_err(store_error)?;
    }
    Ok(())
}

/// `IssuanceStore::commit_reset` as a grouped write.
pub(super) struct ResetWrite {
    pub(super) certificate: NewCertificate,
    pub(super) event: AuditEvent,
    pub(super) request: ApprovalRequest,
}

impl GroupWrite for ResetWrite {
    type Output = ResetOutcome;

    fn awaits_index(&self) -> bool {
        true
    }

    fn write(self, connection: &Connection) -> Result<ResetOutcome, StoreError> {
        let ResetWrite {
            certificate,
            event,
            request,
        } = self;
        let user = certificate.user_id.as_str();
        let now = certificate.issued_at;
        let Some(old_key) = request.key_fingerprint else {
            return Ok(ResetOutcome::NotApproved);
        };
        if !consume(
            connection,
            &request.id,
            ApprovalKind::IdentityReset,
            &certificate.user_id,
            now,
        )? {
            return Ok(ResetOutcome::NotApproved);
        }
        let owner: Option<String> = cached_row(
            connection,
            "SELECT user_id FROM identities WHERE key_sha256 = ?1",
            params![certificate.key_fingerprint.as_bytes().as_slice()],
            |row| row.get(0),
        )
        .optional()
        .map_err(store_error)?;
        if owner.is_some() {
            return Ok(ResetOutcome::KeyPinnedElsewhere);
        }
        let repinned = connection
            .prepare_cached(
                "UPDATE identities SET key_sha256 = ?3, spki_der = ?4, pinned_at = ?5
                 WHERE user_id = ?1 AND key_sha256 = ?2",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    user,
                    old_key.as_bytes().as_slice(),
                    certificate.key_fingerprint.as_bytes().as_slice(),
                    certificate.spki_der,
                    unix(now)
                ])
            });
        match repinned {
            Ok(1) => {}
            // The pin moved since the approval: the approval no longer applies.
            Ok(_) => return Ok(ResetOutcome::NotApproved),
            Err(error) if error.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                return Ok(ResetOutcome::KeyPinnedElsewhere);
            }
            Err(error) => return Err(store_error(error)),
        }
        // The wrapped key was made for the old key: gone with it. The escrow deposit stays: it holds
        // the old key, which may still open the user's old files.
        let deleted = connection
            .prepare_cached("DELETE FROM key_backups WHERE user_id = ?1")
            .and_then(|mut statement| statement.execute(params![user]))
            .map_err(store_error)?;
        let revoked = unrevoked(connection, user)?;
        let mut event = event;
        event.details.push(("key-backup-deleted", (deleted == 1).to_string()));
        event.details.extend(serial_details(&revoked));
        let entry = append_entry(connection, &event)?;
        insert_revocations(connection, &revoked, request.revocation_reason, now, &entry)?;
        super::identities::insert_certificate(connection, &certificate, entry.entry_id)?;
        // The new pin references the entry that made it.
        connection
            .prepare_cached("UPDATE identities SET pin_entry_id = ?2 WHERE user_id = ?1")
            .and_then(|mut statement| statement.execute(params![user, entry.entry_id]))
            .map_err(store_error)?;
        Ok(ResetOutcome::Reset { entry, revoked })
    }

    fn keeps(outcome: &ResetOutcome) -> bool {
        matches!(outcome, ResetOutcome::Reset { .. })
    }

    fn entry(outcome: &mut ResetOutcome) -> Option<&mut LogEntryRef> {
        match outcome {
            ResetOutcome::Reset { entry, .. } => Some(entry),
            _ => None,
        }
    }
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

/// `RevocationStore::revoke` as a grouped write.
struct RevokeWrite {
    target: RevocationTarget,
    reason: RevocationReason,
    actor: String,
    now: OffsetDateTime,
}

impl GroupWrite for RevokeWrite {
    type Output = Result<Revoked, RevokeRefused>;

    fn write(self, connection: &Connection) -> Result<Self::Output, StoreError> {
        let (user, serials) = match &self.target {
            RevocationTarget::Serial(serial) => {
                let found: Option<(String, Option<i64>)> = cached_row(
                    connection,
                    "SELECT certificates.user_id, revocations.reason FROM certificates
                     LEFT JOIN revocations ON revocations.serial = certificates.serial
                     WHERE certificates.serial = ?1",
                    params![serial.as_bytes()],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(store_error)?;
                match found {
                    None => return Ok(Err(RevokeRefused::NotFound)),
                    Some((_, Some(_))) => return Ok(Err(RevokeRefused::AlreadyRevoked)),
                    Some((user, None)) => (user_id(&user)?, vec![serial.clone()]),
                }
            }
            RevocationTarget::User(user) => {
                let known = cached_row(
                    connection,
                    "SELECT 1 FROM identities WHERE user_id = ?1",
                    params![user.as_str()],
                    |_| Ok(()),
                )
                .optional()
                .map_err(store_error)?;
                if known.is_none() {
                    return Ok(Err(RevokeRefused::NotFound));
                }
                let serials = unrevoked(connection, user.as_str())?;
                if serials.is_empty() {
                    return Ok(Err(RevokeRefused::AlreadyRevoked));
                }
                (user.clone(), serials)
            }
        };
        let event = crate::audit::revocation(&self.actor, &user, &serials, self.reason);
        let entry = append_entry(connection, &event)?;
        insert_revocations(connection, &serials, self.reason, self.now, &entry)?;
        Ok(Ok(Revoked { user, serials, entry }))
    }

    fn keeps(output: &Self::Output) -> bool {
        output.is_ok()
    }

    fn entry(output: &mut Self::Output) -> Option<&mut LogEntryRef> {
        output.as_mut().ok().map(|revoked| &mut revoked.entry)
    }
}

/// `RevocationStore::store_crl` as a grouped write (it adds no audit entry).
struct CrlWrite {
    crl: StoredCrl,
}

impl GroupWrite for CrlWrite {
    type Output = bool;

    fn adds_entry(&self) -> bool {
        false
    }

    fn write(self, connection: &Connection) -> Result<bool, StoreError> {
        let crl = self.crl;
        let (number, revoked_count) = (to_i64(crl.number)?, to_i64(crl.revoked_count)?);
        let inserted = connection
            .prepare_cached(
                "INSERT INTO crls (number, this_update, next_update, revoked_count, der) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (number) DO NOTHING",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    number,
                    unix(crl.this_update),
                    unix(crl.next_update),
                    revoked_count,
                    crl.der
                ])
            });
        inserted.map(|rows| rows == 1).map_err(store_error)
    }

    fn keeps(inserted: &bool) -> bool {
        *inserted
    }
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

impl RevocationStore for SqliteStore {
    async fn revoke(
        &self,
        target: RevocationTarget,
        reason: RevocationReason,
        actor: String,
        now: OffsetDateTime,
    ) -> Result<Result<Revoked, RevokeRefused>, StoreError> {
        self.grouped(RevokeWrite {
            target,
            reason,
            actor,
            now,
        })
        .await
    }

    async fn crl_inputs(&self) -> Result<(Option<u64>, Vec<RevokedEntry>), StoreError> {
        self.with_reader(|connection| {
            // One read transaction: the number and the list are of one moment.
            connection.execute_batch("BEGIN").map_err(store_error)?;
            let read = (|| {
                let latest: Option<i64> = cached_row(connection, "SELECT max(number) FROM crls", [], |row| row.get(0))
                    .map_err(store_error)?;
                let mut statement = connection
                    .prepare_cached("SELECT serial, revoked_at, reason FROM revocations ORDER BY serial")
                    .map_err(store_error)?;
                let rows = statement
                    .query_map([], |row| {
                        Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
                    })
                    .map_err(store_error)?;
                let revoked = rows
                    .map(|row| {
                        let (serial, revoked_at, code) = row.map_err(store_error)?;
                        Ok(RevokedEntry {
                            serial: SerialNumber::from_bytes(serial),
                            revoked_at: from_unix(revoked_at)?,
                            reason: reason(code)?,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                Ok((latest.map(to_u64).transpose()?, revoked))
            })();
            connection.execute_batch("COMMIT").map_err(store_error)?;
            read
        })
        .await
    }

    async fn store_crl(&self, crl: StoredCrl) -> Result<bool, StoreError> {
        self.grouped(CrlWrite { crl }).await
    }

    async fn latest_crl(&self) -> Result<Option<StoredCrl>, StoreError> {
        self.with_reader(|connection| {
            let row: Option<(i64, i64, i64, i64, Vec<u8>)> = cached_row(
                connection,
                "SELECT number, this_update, next_update, revoked_count, der FROM crls ORDER BY number DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)),
            )
            .optional()
            .map_err(store_error)?;
            row.map(|(number, this_update, next_update, revoked_count, der)| {
                Ok(StoredCrl {
                    number: to_u64(number)?,
                    this_update: from_unix(this_update)?,
                    next_update: from_unix(next_update)?,
                    revoked_count: to_u64(revoked_count)?,
                    der,
                })
            })
            .transpose()
        })
        .await
    }
}

impl IdentityDirectory for SqliteStore {
    async fn identity(&self, user: &UserId) -> Result<Option<IdentityRecord>, StoreError> {
        let user = user.clone();
        self.with_reader(move |connection| {
            connection.execute_batch("BEGIN").map_err(store_error)?;
            let read = read_identity(connection, user);
            connection.execute_batch("COMMIT").map_err(store_error)?;
            read
        })
        .await
    }

    async fn list_identities(&self, after: Option<String>, limit: usize) -> Result<Vec<IdentitySummary>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_reader(move |connection| {
            // `user_id > ''` holds for every stored id (never empty): one statement, one range scan.
            let after = after.unwrap_or_default();
            let mut statement = connection
                .prepare_cached(
                    "SELECT user_id, key_sha256, pinned_at FROM identities
                     WHERE user_id > ?1 ORDER BY user_id LIMIT ?2",
                )
                .map_err(store_error)?;
            let rows = statement
                .query_map(params![after, limit], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, Vec<u8>>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })
                .map_err(store_error)?;
            rows.map(|row| {
                let (user, key, pinned_at) = row.map_err(store_error)?;
                Ok(IdentitySummary {
                    user,
                    key_fingerprint: fingerprint(&key)?,
                    pinned_at: from_unix(pinned_at)?,
                })
            })
            .collect()
        })
        .await
    }
}

fn read_identity(connection: &Connection, user: UserId) -> Result<Option<IdentityRecord>, StoreError> {
    let pin: Option<(Vec<u8>, i64)> = cached_row(
        connection,
        "SELECT key_sha256, pinned_at FROM identities WHERE user_id = ?1",
        params![user.as_str()],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .optional()
    .map_err(store_error)?;
    let Some((key, pinned_at)) = pin else {
        return Ok(None);
    };
    let history = i64::try_from(crate::api::admin::MAX_HISTORY).unwrap_or(i64::MAX);
    let mut statement = connection
        .prepare_cached(
            "SELECT certificates.serial, certificates.key_sha256, certificates.issued_at, certificates.not_after,
                    certificates.certificate_der, revocations.revoked_at, revocations.reason
             FROM certificates LEFT JOIN revocations ON revocations.serial = certificates.serial
             WHERE certificates.user_id = ?1 ORDER BY certificates.issued_at DESC, certificates.rowid DESC LIMIT ?2",
        )
        .map_err(store_error)?;
    type CertificateRow = (Vec<u8>, Vec<u8>, i64, i64, Vec<u8>, Option<i64>, Option<i64>);
    let rows = statement
        .query_map(params![user.as_str(), history], |row| {
            Ok::<CertificateRow, _>((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
            ))
        })
        .map_err(store_error)?;
    let certificates = rows
        .map(|row| {
            let (serial, key, issued_at, not_after, der, revoked_at, code) = row.map_err(store_error)?;
            Ok(CertificateRecord {
                serial: SerialNumber::from_bytes(serial),
                key_fingerprint: fingerprint(&key)?,
                issued_at: from_unix(issued_at)?,
                not_after: from_unix(not_after)?,
                certificate_der: der,
                revocation: match (revoked_at, code) {
                    (Some(at), Some(code)) => Some((from_unix(at)?, reason(code)?)),
                    _ => None,
                },
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let mut statement = connection
        .prepare_cached(
            "SELECT leaf_index, entry, entry_hash FROM audit_entries WHERE subject = ?1 ORDER BY id DESC LIMIT ?2",
        )
        .map_err(store_error)?;
    let rows = statement
        .query_map(params![user.as_str(), history], |row| {
            Ok((
                row.get::<_, Option<i64>>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, Vec<u8>>(2)?,
            ))
        })
        .map_err(store_error)?;
    let mut entries = rows
        .map(|row| {
            let (index, bytes, hash) = row.map_err(store_error)?;
            Ok(UserLogEntry {
                index: index.map(to_u64).transpose()?,
                bytes,
                hash: crate::store::codec::to_hash(&hash)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    entries.reverse();
    let (wrapped_key_stored, escrow_recovery_key): (bool, Option<Vec<u8>>) = cached_row(
        connection,
        "SELECT EXISTS (SELECT 1 FROM key_backups WHERE user_id = ?1),
                (SELECT recovery_key_sha256 FROM escrows WHERE user_id = ?1)",
        params![user.as_str()],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .map_err(store_error)?;
    Ok(Some(IdentityRecord {
        user,
        key_fingerprint: fingerprint(&key)?,
        pinned_at: from_unix(pinned_at)?,
        certificates,
        entries,
        wrapped_key_stored,
        escrow_recovery_key: escrow_recovery_key.as_deref().map(fingerprint).transpose()?,
    }))
}
