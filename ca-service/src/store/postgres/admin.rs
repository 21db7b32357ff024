//! The PostgreSQL store's side of the Admin service: the reset an approval authorizes
//! (`commit_reset`), revocations and CRLs (`RevocationStore`) and the admin's lookups
//! (`IdentityDirectory`); the requests themselves are in `requests`.
//!
//! Admin writes are rare, so each is a transaction of its own (`bounded`), not a group. Races
//! between replicas are decided by row locks and compare-and-set updates: a reset consumes its
//! approval with `requests::consume`, an `UPDATE … WHERE consumed_at IS NULL` (a second consumer
//! waits, then sees it consumed), and moves the pin only from the key it was approved for.

use deadpool_postgres::GenericClient;
use time::OffsetDateTime;

use super::identities::{Recorded, insert_certificates, insert_entries, single_id};
use super::requests::consume;
use super::{PostgresStore, store_error};
use crate::api::admin::{
    CertificateRecord, IdentityDirectory, IdentityRecord, IdentitySummary, MAX_HISTORY, UserLogEntry,
};
use crate::approvals::{ApprovalKind, ApprovalRequest};
use crate::audit::{AuditEvent, LogEntryRef, serial_details};
use crate::identity::{SerialNumber, UserId};
use crate::issuer::{NewCertificate, ResetOutcome};
use crate::revocation::crl::RevokedEntry;
use crate::revocation::{RevocationReason, RevocationStore, RevocationTarget, RevokeRefused, Revoked, StoredCrl};
use crate::storage::StoreError;
use crate::store::codec::{fingerprint, reason, to_hash, to_i64, to_u64, user_id};

pub(super) fn reason_code(reason: RevocationReason) -> i16 {
    i16::from(reason.code())
}

/// Inserts one entry; returns where it landed.
pub(super) async fn append(client: &impl GenericClient, event: &AuditEvent) -> Result<LogEntryRef, StoreError> {
    let entry = event.encode();
    let entry_id = single_id(insert_entries(client, &[&entry]).await?)?;
    Ok(LogEntryRef {
        entry_id,
        entry_hash: entry.hash,
        leaf_index: None,
    })
}

/// The user's unrevoked certificates, their rows locked (a concurrent revocation waits).
async fn unrevoked(client: &impl GenericClient, user: &str) -> Result<Vec<SerialNumber>, StoreError> {
    let rows = client
        .query(
            "SELECT certificates.serial FROM certificates
             WHERE certificates.user_id = $1
               AND NOT EXISTS (SELECT 1 FROM revocations WHERE revocations.serial = certificates.serial)
             FOR UPDATE OF certificates",
            &[&user],
        )
        .await
        .map_err(store_error)?;
    Ok(rows.iter().map(|row| SerialNumber::from_bytes(row.get(0))).collect())
}

async fn insert_revocations(
    client: &impl GenericClient,
    serials: &[SerialNumber],
    reason: RevocationReason,
    now: OffsetDateTime,
    entry: &LogEntryRef,
) -> Result<(), StoreError> {
    let serials: Vec<&[u8]> = serials.iter().map(SerialNumber::as_bytes).collect();
    client
        .execute(
            "INSERT INTO revocations (serial, reason, revoked_at, entry_id)
             SELECT serial, $2, $3, $4 FROM unnest($1::bytea[]) AS revoked (serial)",
            &[&serials, &reason_code(reason), &now, &entry.entry_id],
        )
        .await
        .map_err(store_error)?;
    Ok(())
}

impl PostgresStore {
    /// `IssuanceStore::commit_reset`, in one transaction.
    pub(super) async fn commit_reset_of(
        &self,
        certificate: NewCertificate,
        event: AuditEvent,
        request: ApprovalRequest,
    ) -> Result<ResetOutcome, StoreError> {
        self.bounded(async |client| {
            let Some(old_key) = request.key_fingerprint else {
                return Ok(ResetOutcome::NotApproved);
            };
            let now = certificate.issued_at;
            let user = certificate.user_id.as_str();
            let transaction = client.transaction().await.map_err(store_error)?;
            if !consume(
                &transaction,
                &request.id,
                ApprovalKind::IdentityReset,
                &certificate.user_id,
                now,
            )
            .await?
            {
                transaction.rollback().await.map_err(store_error)?;
                return Ok(ResetOutcome::NotApproved);
            }
            let owner = transaction
                .query_opt(
                    "SELECT user_id FROM identities WHERE key_sha256 = $1 FOR SHARE",
                    &[&certificate.key_fingerprint.as_bytes().as_slice()],
                )
                .await
                .map_err(store_error)?;
            if owner.is_some() {
                transaction.rollback().await.map_err(store_error)?;
                return Ok(ResetOutcome::KeyPinnedElsewhere);
            }
            let repinned = transaction
                .execute(
                    "UPDATE identities SET key_sha256 = $3, spki_der = $4, pinned_at = $5
                     WHERE user_id = $1 AND key_sha256 = $2",
                    &[
                        &user,
                        &old_key.as_bytes().as_slice(),
                        &certificate.key_fingerprint.as_bytes().as_slice(),
                        &certificate.spki_der,
                        &now,
                    ],
                )
                .await
                .map_err(store_error)?;
            if repinned != 1 {
                transaction.rollback().await.map_err(store_error)?;
                return Ok(ResetOutcome::NotApproved);
            }
            // The wrapped key was made for the old key: gone with it. The escrow deposit stays: it
            // holds the old key, which may still open the user's old files.
            let deleted = transaction
                .execute("DELETE FROM key_backups WHERE user_id = $1", &[&user])
                .await
                .map_err(store_error)?;
            let revoked = unrevoked(&transaction, user).await?;
            let mut event = event;
            event.details.push(("key-backup-deleted", (deleted == 1).to_string()));
            event.details.extend(serial_details(&revoked));
            let entry = append(&transaction, &event).await?;
            insert_revocations(&transaction, &revoked, request.revocation_reason, now, &entry).await?;
            insert_certificates(
                &transaction,
                &[Recorded {
                    certificate: &certificate,
                    entry_id: entry.entry_id,
                    pins: true,
                }],
            )
            .await?;
            transaction.commit().await.map_err(store_error)?;
            Ok(ResetOutcome::Reset { entry, revoked })
        })
        .await
    }
}

impl RevocationStore for PostgresStore {
    async fn revoke(
        &self,
        target: RevocationTarget,
        reason: RevocationReason,
        actor: String,
        now: OffsetDateTime,
    ) -> Result<Result<Revoked, RevokeRefused>, StoreError> {
        self.bounded(async |client| {
            let transaction = client.transaction().await.map_err(store_error)?;
            let (user, serials) = match &target {
                RevocationTarget::Serial(serial) => {
                    // The certificate row locked: a concurrent revocation of it waits, then sees it.
                    let row = transaction
                        .query_opt(
                            "SELECT user_id, EXISTS (SELECT 1 FROM revocations WHERE revocations.serial = certificates.serial)
                             FROM certificates WHERE serial = $1 FOR UPDATE",
                            &[&serial.as_bytes()],
                        )
                        .await
                        .map_err(store_error)?;
                    match row.map(|row| (row.get::<_, String>(0), row.get::<_, bool>(1))) {
                        None => {
                            transaction.rollback().await.map_err(store_error)?;
                            return Ok(Err(RevokeRefused::NotFound));
                        }
                        Some((_, true)) => {
                            transaction.rollback().await.map_err(store_error)?;
                            return Ok(Err(RevokeRefused::AlreadyRevoked));
                        }
                        Some((user, false)) => (user_id(&user)?, vec![serial.clone()]),
                    }
                }
                RevocationTarget::User(user) => {
                    let known = transaction
                        .query_opt("SELECT 1 FROM identities WHERE user_id = $1", &[&user.as_str()])
                        .await
                        .map_err(store_error)?;
                    if known.is_none() {
                        transaction.rollback().await.map_err(store_error)?;
                        return Ok(Err(RevokeRefused::NotFound));
                    }
                    let serials = unrevoked(&transaction, user.as_str()).await?;
                    if serials.is_empty() {
                        transaction.rollback().await.map_err(store_error)?;
                        return Ok(Err(RevokeRefused::AlreadyRevoked));
                    }
                    (user.clone(), serials)
                }
            };
            let event = crate::audit::revocation(&actor, &user, &serials, reason);
            let entry = append(&transaction, &event).await?;
            insert_revocations(&transaction, &serials, reason, now, &entry).await?;
            transaction.commit().await.map_err(store_error)?;
            Ok(Ok(Revoked { user, serials, entry }))
        })
        .await
    }

    async fn crl_inputs(&self) -> Result<(Option<u64>, Vec<RevokedEntry>), StoreError> {
        self.bounded(async |client| {
            // One snapshot: the number and the list are of one moment.
            let transaction = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(store_error)?;
            let latest: Option<i64> = transaction
                .query_one("SELECT max(number) FROM crls", &[])
                .await
                .map_err(store_error)?
                .get(0);
            let rows = transaction
                .query(
                    "SELECT serial, revoked_at, reason FROM revocations ORDER BY serial",
                    &[],
                )
                .await
                .map_err(store_error)?;
            transaction.commit().await.map_err(store_error)?;
            let revoked = rows
                .iter()
                .map(|row| {
                    Ok(RevokedEntry {
                        serial: SerialNumber::from_bytes(row.get(0)),
                        revoked_at: row.get(1),
                        reason: reason(row.get::<_, i16>(2).into())?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok((latest.map(to_u64).transpose()?, revoked))
        })
        .await
    }

    async fn store_crl(&self, crl: StoredCrl) -> Result<bool, StoreError> {
        let number = to_i64(crl.number)?;
        let revoked_count = to_i64(crl.revoked_count)?;
        self.bounded(async |client| {
            let inserted = client
                .execute(
                    "INSERT INTO crls (number, this_update, next_update, revoked_count, der)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (number) DO NOTHING",
                    &[&number, &crl.this_update, &crl.next_update, &revoked_count, &crl.der],
                )
                .await
                .map_err(store_error)?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn latest_crl(&self) -> Result<Option<StoredCrl>, StoreError> {
        self.bounded(async |client| {
            let row = client
                .query_opt(
                    "SELECT number, this_update, next_update, revoked_count, der FROM crls ORDER BY number DESC LIMIT 1",
                    &[],
                )
                .await
                .map_err(store_error)?;
            row.map(|row| {
                Ok(StoredCrl {
                    number: to_u64(row.get(0))?,
                    this_update: row.get(1),
                    next_update: row.get(2),
                    revoked_count: to_u64(row.get(3))?,
                    der: row.get(4),
                })
            })
            .transpose()
        })
        .await
    }
}

impl IdentityDirectory for PostgresStore {
    async fn identity(&self, user: &UserId) -> Result<Option<IdentityRecord>, StoreError> {
        let history = i64::try_from(MAX_HISTORY).unwrap_or(i64::MAX);
        self.bounded(async |client| {
            let transaction = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(store_error)?;
            // Cached statements: a lookup is four executions, not four parses and plans.
            let read_pin = transaction
                .prepare_cached("SELECT key_sha256, pinned_at FROM identities WHERE user_id = $1")
                .await
                .map_err(store_error)?;
            let pin = transaction
                .query_opt(&read_pin, &[&user.as_str()])
                .await
                .map_err(store_error)?;
            let Some(pin) = pin else {
                transaction.commit().await.map_err(store_error)?;
                return Ok(None);
            };
            let read_certificates = transaction
                .prepare_cached(
                    "SELECT certificates.serial, certificates.key_sha256, certificates.issued_at,
                            certificates.not_after, certificates.certificate_der,
                            revocations.revoked_at, revocations.reason
                     FROM certificates LEFT JOIN revocations ON revocations.serial = certificates.serial
                     WHERE certificates.user_id = $1
                     ORDER BY certificates.issued_at DESC, certificates.id DESC LIMIT $2",
                )
                .await
                .map_err(store_error)?;
            let certificates = transaction
                .query(&read_certificates, &[&user.as_str(), &history])
                .await
                .map_err(store_error)?;
            let read_entries = transaction
                .prepare_cached(
                    "SELECT leaf_index, entry, entry_hash FROM audit_entries
                     WHERE subject = $1 ORDER BY id DESC LIMIT $2",
                )
                .await
                .map_err(store_error)?;
            let entries = transaction
                .query(&read_entries, &[&user.as_str(), &history])
                .await
                .map_err(store_error)?;
            let read_backups = transaction
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM key_backups WHERE user_id = $1),
                            (SELECT recovery_key_sha256 FROM escrows WHERE user_id = $1)",
                )
                .await
                .map_err(store_error)?;
            let backups = transaction
                .query_one(&read_backups, &[&user.as_str()])
                .await
                .map_err(store_error)?;
            transaction.commit().await.map_err(store_error)?;
            let certificates = certificates
                .iter()
                .map(|row| {
                    let revoked_at: Option<OffsetDateTime> = row.get(5);
                    let code: Option<i16> = row.get(6);
                    Ok(CertificateRecord {
                        serial: SerialNumber::from_bytes(row.get(0)),
                        key_fingerprint: fingerprint(row.get(1))?,
                        issued_at: row.get(2),
                        not_after: row.get(3),
                        certificate_der: row.get(4),
                        revocation: match (revoked_at, code) {
                            (Some(at), Some(code)) => Some((at, reason(code.into())?)),
                            _ => None,
                        },
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let mut entries = entries
                .iter()
                .map(|row| {
                    Ok(UserLogEntry {
                        index: row.get::<_, Option<i64>>(0).map(to_u64).transpose()?,
                        bytes: row.get(1),
                        hash: to_hash(row.get(2))?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            entries.reverse();
            Ok(Some(IdentityRecord {
                user: user.clone(),
                key_fingerprint: fingerprint(pin.get(0))?,
                pinned_at: pin.get(1),
                certificates,
                entries,
                wrapped_key_stored: backups.get(0),
                escrow_recovery_key: backups.get::<_, Option<&[u8]>>(1).map(fingerprint).transpose()?,
            }))
        })
        .await
    }

    async fn list_identities(&self, after: Option<String>, limit: usize) -> Result<Vec<IdentitySummary>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.bounded(async |client| {
            // Two statements rather than `$1 IS NULL OR user_id > $1`, which a generic plan cannot
            // turn into an index range scan.
            let rows = match &after {
                Some(after) => client
                    .query(
                        "SELECT user_id, key_sha256, pinned_at FROM identities
                         WHERE user_id > $1 ORDER BY user_id LIMIT $2",
                        &[after, &limit],
                    )
                    .await
                    .map_err(store_error)?,
                None => client
                    .query(
                        "SELECT user_id, key_sha256, pinned_at FROM identities ORDER BY user_id LIMIT $1",
                        &[&limit],
                    )
                    .await
                    .map_err(store_error)?,
            };
            rows.iter()
                .map(|row| {
                    Ok(IdentitySummary {
                        user: row.get(0),
                        key_fingerprint: fingerprint(row.get(1))?,
                        pinned_at: row.get(2),
                    })
                })
                .collect()
        })
        .await
    }
}
