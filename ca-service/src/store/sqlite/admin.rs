//! The embedded store's side of the Admin service: the reset an approval authorizes
//! (`IssuanceStore::commit_reset`), revocations and CRLs (`RevocationStore`) and the admin's
//! lookups (`IdentityDirectory`); the requests themselves are in `requests`. Every write is a
//! `GroupWrite` written with its audit entry in its savepoint.

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use time::OffsetDateTime;

use super::group_commit::GroupWrite;
use super::identities::append_entry;
use super::requests::consume;
use super::{SqliteStore, cached_row, store_error, unix};
use crate::api::admin::{CertificateRecord, IdentityDirectory, IdentityRecord, IdentitySummary, UserLogEntry};
use crate::approvals::{ApprovalKind, ApprovalRequest};
use crate::audit::{AuditEvent, LogEntryRef, serial_details};
use crate::identity::{SerialNumber, UserId};
use crate::issuer::{NewCertificate, ResetOutcome};
use crate::revocation::crl::RevokedEntry;
use crate::revocation::{RevocationReason, RevocationStore, RevocationTarget, RevokeRefused, Revoked, StoredCrl};
use crate::storage::StoreError;
use crate::store::codec::{fingerprint, from_unix, reason, to_i64, to_u64, user_id};

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
