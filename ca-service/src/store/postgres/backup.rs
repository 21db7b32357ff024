//! The PostgreSQL store's key backup and recovery key: wrapped keys, proof nonces and escrow
//! deposits (`KeyBackupStore`), the recovery key's registration and disabling and the release of a
//! deposit (`RecoveryStore`).
//!
//! Each write, and each read of a wrapped key, is a transaction of its own (`bounded`) with its
//! audit entry; a refused one is rolled back whole (its nonce stays unused). Races between replicas
//! are decided as in `requests` and `admin`: a proven write locks the user's pin row (`FOR UPDATE`)
//! first, so that it serializes with a reset and with the user's other writes, and consumes its
//! nonce with a compare-and-set; a recovery-key change locks its request row and the enabled key's
//! row, which a deposit share-locks while it checks that key.

use deadpool_postgres::{GenericClient, Transaction};
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::admin::append;
use super::identities::PIN_WITH_ENTRY;
use super::requests::{REQUEST_COLUMNS, consume, decode_request};
use super::{PostgresStore, store_error};
use crate::approvals::{ApprovalKind, ApprovalRefused, ApprovalRequest, RequestId, RequestState};
use crate::audit::LogEntryRef;
use crate::identity::{KeyFingerprint, UserId};
use crate::key_backup::{
    KeyBackupStore, MAX_OUTSTANDING_NONCES, Nonce, NonceRefused, PinnedKey, ProvenWrite, StoredBackup, WrappedKey,
    WriteRefused,
};
use crate::recovery::{EscrowRecord, RecoveryChange, RecoveryKeyRecord, RecoveryStore, ReleaseRefused};
use crate::storage::StoreError;
use crate::store::codec::{self, fingerprint, to_i64};

/// The enabled recovery key (at most one row has no `disabled_at`), as `recovery_key_record`
/// decodes it; callers add the lock they need.
pub(super) const ENABLED_RECOVERY_KEY: &str = "SELECT key_sha256, certificate_der, ceremony_reference, enabled_at
     FROM recovery_keys WHERE disabled_at IS NULL";

fn recovery_key_record(row: &Row) -> Result<RecoveryKeyRecord, StoreError> {
    Ok(RecoveryKeyRecord {
        fingerprint: fingerprint(row.get(0))?,
        certificate_der: row.get(1),
        ceremony_reference: row.get(2),
        enabled_at: row.get(3),
    })
}

/// Commits `transaction` when `outcome` is a success and rolls it back when it is a refusal.
async fn settle<T, R>(transaction: Transaction<'_>, outcome: Result<T, R>) -> Result<Result<T, R>, StoreError> {
    match &outcome {
        Ok(_) => transaction.commit().await.map_err(store_error)?,
        Err(_) => transaction.rollback().await.map_err(store_error)?,
    }
    Ok(outcome)
}

/// What every proven write checks first, the user's pin row locked: consumes its nonce
/// (compare-and-set: unused, unexpired, for this user) and requires the pin the proof verified
/// against to be the user's pin still.
async fn check_proof(client: &impl GenericClient, write: &ProvenWrite) -> Result<Result<(), WriteRefused>, StoreError> {
    let pinned = client
        .query_opt(
            "SELECT key_sha256 FROM identities WHERE user_id = $1 FOR UPDATE",
            &[&write.user.as_str()],
        )
        .await
        .map_err(store_error)?;
    let consumed = client
        .execute(
            "UPDATE backup_nonces SET used_at = $3
             WHERE nonce = $1 AND user_id = $2 AND used_at IS NULL AND expires_at > $3",
            &[&write.nonce.as_bytes().as_slice(), &write.user.as_str(), &write.now],
        )
        .await
        .map_err(store_error)?;
    if consumed != 1 {
        return Ok(Err(WriteRefused::Nonce));
    }
    let pinned: Option<&[u8]> = pinned.as_ref().map(|row| row.get(0));
    if pinned != Some(write.key_fingerprint.as_bytes().as_slice()) {
        return Ok(Err(WriteRefused::PinMoved));
    }
    Ok(Ok(()))
}

async fn create_nonce(
    client: &impl GenericClient,
    user: &UserId,
    nonce: Nonce,
    now: OffsetDateTime,
    expires_at: OffsetDateTime,
) -> Result<Result<(), NonceRefused>, StoreError> {
    // The pin row locked: one user's nonces are counted and added one request at a time.
    let pinned = client
        .query_opt(
            "SELECT 1 FROM identities WHERE user_id = $1 FOR UPDATE",
            &[&user.as_str()],
        )
        .await
        .map_err(store_error)?;
    if pinned.is_none() {
        return Ok(Err(NonceRefused::NoPin));
    }
    client
        .execute(
            "DELETE FROM backup_nonces WHERE user_id = $1 AND expires_at <= $2",
            &[&user.as_str(), &now],
        )
        .await
        .map_err(store_error)?;
    let outstanding: i64 = client
        .query_one(
            "SELECT count(*) FROM backup_nonces WHERE user_id = $1 AND used_at IS NULL",
            &[&user.as_str()],
        )
        .await
        .map_err(store_error)?
        .get(0);
    if outstanding >= to_i64(MAX_OUTSTANDING_NONCES)? {
        return Ok(Err(NonceRefused::TooMany));
    }
    client
        .execute(
            "INSERT INTO backup_nonces (nonce, user_id, expires_at) VALUES ($1, $2, $3)",
            &[&nonce.as_bytes().as_slice(), &user.as_str(), &expires_at],
        )
        .await
        .map_err(store_error)?;
    Ok(Ok(()))
}

async fn put_wrapped_key(
    client: &impl GenericClient,
    write: &ProvenWrite,
    wrapped_key: &WrappedKey,
    replace: bool,
) -> Result<Result<(LogEntryRef, bool), WriteRefused>, StoreError> {
    if let Err(refused) = check_proof(client, write).await? {
        return Ok(Err(refused));
    }
    let stored = client
        .query_opt("SELECT 1 FROM key_backups WHERE user_id = $1", &[&write.user.as_str()])
        .await
        .map_err(store_error)?
        .is_some();
    match (stored, replace) {
        (true, false) => return Ok(Err(WriteRefused::AlreadyExists)),
        (false, true) => return Ok(Err(WriteRefused::NothingToReplace)),
        _ => {}
    }
    let entry = append(client, &crate::audit::key_backup_stored(write, wrapped_key, stored)).await?;
    client
        .execute(
            "INSERT INTO key_backups (user_id, wrapped_key, key_sha256, stored_at, entry_id)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id) DO UPDATE SET wrapped_key = excluded.wrapped_key,
                 key_sha256 = excluded.key_sha256, stored_at = excluded.stored_at, entry_id = excluded.entry_id",
            &[
                &write.user.as_str(),
                &wrapped_key.as_str(),
                &write.key_fingerprint.as_bytes().as_slice(),
                &write.now,
                &entry.entry_id,
            ],
        )
        .await
        .map_err(store_error)?;
    Ok(Ok((entry, stored)))
}

async fn read_wrapped_key(
    client: &impl GenericClient,
    user: &UserId,
    actor: &str,
) -> Result<Option<(StoredBackup, LogEntryRef)>, StoreError> {
    let row = client
        .query_opt(
            "SELECT key_backups.wrapped_key, key_backups.key_sha256, key_backups.stored_at,
                    audit_entries.entry, audit_entries.leaf_index, audit_tree_nodes.hash
             FROM key_backups
             LEFT JOIN audit_entries ON audit_entries.id = key_backups.entry_id
             LEFT JOIN audit_tree_nodes
                    ON audit_tree_nodes.level = 0 AND audit_tree_nodes.node_index = audit_entries.leaf_index
             WHERE key_backups.user_id = $1",
            &[&user.as_str()],
        )
        .await
        .map_err(store_error)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let backup = StoredBackup {
        wrapped_key: WrappedKey::from_stored(row.get(0)),
        key_fingerprint: fingerprint(row.get(1))?,
        stored_at: row.get(2),
        recorded_by: codec::pin_entry(row.get(3), row.get(4), row.get(5))?,
    };
    let entry = append(client, &crate::audit::key_backup_read(actor, user, &backup)).await?;
    Ok(Some((backup, entry)))
}

async fn deposit_escrow(
    client: &impl GenericClient,
    write: &ProvenWrite,
    recovery_fingerprint: &KeyFingerprint,
    blob: &[u8],
) -> Result<Result<LogEntryRef, WriteRefused>, StoreError> {
    if let Err(refused) = check_proof(client, write).await? {
        return Ok(Err(refused));
    }
    // Share-locked: a registration or disable of this key waits for the deposit, or the deposit
    // for it (and then finds no enabled key: the client asks again).
    let enabled = client
        .query_opt(&format!("{ENABLED_RECOVERY_KEY} FOR SHARE"), &[])
        .await
        .map_err(store_error)?;
    match enabled.as_ref().map(recovery_key_record).transpose()? {
        None => return Ok(Err(WriteRefused::RecoveryDisabled)),
        Some(enabled) if enabled.fingerprint != *recovery_fingerprint => {
            return Ok(Err(WriteRefused::StaleRecoveryKey(enabled.fingerprint.to_hex())));
        }
        Some(_) => {}
    }
    let entry = append(
        client,
        &crate::audit::escrow_deposited(write, recovery_fingerprint, blob),
    )
    .await?;
    client
        .execute(
            "INSERT INTO escrows (user_id, recovery_key_sha256, blob, key_sha256, deposited_at, entry_id)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (user_id) DO UPDATE SET recovery_key_sha256 = excluded.recovery_key_sha256,
                 blob = excluded.blob, key_sha256 = excluded.key_sha256, deposited_at = excluded.deposited_at,
                 entry_id = excluded.entry_id",
            &[
                &write.user.as_str(),
                &recovery_fingerprint.as_bytes().as_slice(),
                &blob,
                &write.key_fingerprint.as_bytes().as_slice(),
                &write.now,
                &entry.entry_id,
            ],
        )
        .await
        .map_err(store_error)?;
    Ok(Ok(entry))
}

/// `RecoveryStore::approve_recovery_change` (see `sqlite::backup::RecoveryChangeWrite` for the
/// refusals: a request of another kind is `NotFound`, one that no longer applies
/// `NotPending(Expired)`).
async fn approve_recovery_change(
    client: &impl GenericClient,
    id: &RequestId,
    approver: String,
    now: OffsetDateTime,
    change: &RecoveryChange,
) -> Result<Result<(ApprovalRequest, LogEntryRef), ApprovalRefused>, StoreError> {
    let row = client
        .query_opt(
            &format!("SELECT {REQUEST_COLUMNS} FROM approval_requests WHERE id = $1 FOR UPDATE"),
            &[&id.as_str()],
        )
        .await
        .map_err(store_error)?;
    let Some(mut request) = row.as_ref().map(decode_request).transpose()? else {
        return Ok(Err(ApprovalRefused::NotFound));
    };
    // A registration: the proposed key, its fingerprint and its certificate.
    let registration = match change.for_request(&request) {
        Ok(registration) => registration,
        Err(refused) => return Ok(Err(refused)),
    };
    if let Err(refused) = request.check_approval(&approver, now) {
        return Ok(Err(refused));
    }
    let no_longer_applies = Ok(Err(ApprovalRefused::NotPending(RequestState::Expired)));
    let enabled = client
        .query_opt(&format!("{ENABLED_RECOVERY_KEY} FOR UPDATE"), &[])
        .await
        .map_err(store_error)?;
    let enabled = enabled
        .as_ref()
        .map(recovery_key_record)
        .transpose()?
        .map(|enabled| enabled.fingerprint);
    match &registration {
        Some((new_key, _, _)) => {
            let registered_before = client
                .query_opt(
                    "SELECT 1 FROM recovery_keys WHERE key_sha256 = $1",
                    &[&new_key.as_bytes().as_slice()],
                )
                .await
                .map_err(store_error)?;
            if registered_before.is_some() {
                return no_longer_applies;
            }
        }
        None if enabled.is_none() || enabled != request.key_fingerprint => return no_longer_applies,
        None => {}
    }
    // Approved and consumed at once: the approval performs what it authorizes.
    request.approval = Some((approver.clone(), now));
    request.consumed_at = Some(now);
    append(client, &crate::audit::request_approved(&request)).await?;
    client
        .execute(
            "UPDATE approval_requests SET approved_by = $2, approved_at = $3, consumed_at = $3 WHERE id = $1",
            &[&id.as_str(), &approver, &now],
        )
        .await
        .map_err(store_error)?;
    client
        .execute(
            "UPDATE recovery_keys SET disabled_at = $1 WHERE disabled_at IS NULL",
            &[&now],
        )
        .await
        .map_err(store_error)?;
    let event = match (registration, enabled) {
        (Some((new_key, proposed, certificate_der)), replaced) => {
            client
                .execute(
                    "INSERT INTO recovery_keys (key_sha256, spki_der, certificate_der, ceremony_reference,
                         request_id, enabled_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &new_key.as_bytes().as_slice(),
                        &proposed.spki_der,
                        certificate_der,
                        &proposed.ceremony_reference,
                        &id.as_str(),
                        &now,
                    ],
                )
                .await
                .map_err(store_error)?;
            crate::audit::recovery_key_registered(&request, &new_key, certificate_der, replaced.as_ref())
        }
        (None, Some(disabled)) => crate::audit::recovery_key_disabled(&request, &disabled),
        // A disable found its key enabled above.
        (None, None) => return no_longer_applies,
    };
    let entry = append(client, &event).await?;
    Ok(Ok((request, entry)))
}

async fn release_escrow(
    client: &impl GenericClient,
    id: &RequestId,
    actor: &str,
    now: OffsetDateTime,
) -> Result<Result<(EscrowRecord, LogEntryRef), ReleaseRefused>, StoreError> {
    // The row locked: a concurrent release waits, then finds it consumed.
    let row = client
        .query_opt(
            &format!("SELECT {REQUEST_COLUMNS} FROM approval_requests WHERE id = $1 FOR UPDATE"),
            &[&id.as_str()],
        )
        .await
        .map_err(store_error)?;
    let request = row.as_ref().map(decode_request).transpose()?;
    let Some((mut request, user)) = request.and_then(|request| match (request.kind, request.subject.clone()) {
        (ApprovalKind::EscrowRelease, Some(user)) => Some((request, user)),
        _ => None,
    }) else {
        return Ok(Err(ReleaseRefused::NotFound));
    };
    if !consume(client, &request.id, ApprovalKind::EscrowRelease, &user, now).await? {
        return Ok(Err(ReleaseRefused::NotApproved(request.state(now))));
    }
    request.consumed_at = Some(now);
    let deposit = client
        .query_opt(
            "SELECT escrows.recovery_key_sha256, escrows.blob, escrows.deposited_at,
                    audit_entries.entry, audit_entries.leaf_index, audit_tree_nodes.hash
             FROM escrows
             LEFT JOIN audit_entries ON audit_entries.id = escrows.entry_id
             LEFT JOIN audit_tree_nodes
                    ON audit_tree_nodes.level = 0 AND audit_tree_nodes.node_index = audit_entries.leaf_index
             WHERE escrows.user_id = $1",
            &[&user.as_str()],
        )
        .await
        .map_err(store_error)?;
    // No deposit any more: the transaction, consumption included, is rolled back.
    let Some(deposit) = deposit else {
        return Ok(Err(ReleaseRefused::NoDeposit));
    };
    let record = EscrowRecord {
        user,
        recovery_fingerprint: fingerprint(deposit.get(0))?,
        blob: deposit.get(1),
        deposited_at: deposit.get(2),
        recorded_by: codec::pin_entry(deposit.get(3), deposit.get(4), deposit.get(5))?,
    };
    let entry = append(client, &crate::audit::escrow_released(actor, &request, &record)).await?;
    Ok(Ok((record, entry)))
}

impl KeyBackupStore for PostgresStore {
    async fn pinned_key(&self, user: &UserId) -> Result<Option<PinnedKey>, StoreError> {
        self.bounded(async |client| {
            // One statement: the SPKI is the pin's.
            let row = client
                .query_opt(
                    &format!(
                        "SELECT pin.key_sha256, pin.entry, pin.leaf_index, pin.hash,
                                (SELECT spki_der FROM identities WHERE user_id = $1)
                         FROM ({PIN_WITH_ENTRY}) AS pin"
                    ),
                    &[&user.as_str()],
                )
                .await
                .map_err(store_error)?;
            row.map(|row| {
                Ok(PinnedKey {
                    fingerprint: fingerprint(row.get(0))?,
                    spki_der: row.get(4),
                    pin_entry: codec::pin_entry(row.get(1), row.get(2), row.get(3))?,
                })
            })
            .transpose()
        })
        .await
    }

    async fn create_nonce(
        &self,
        user: &UserId,
        nonce: Nonce,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<Result<(), NonceRefused>, StoreError> {
        self.bounded(async |client| {
            let transaction = client.transaction().await.map_err(store_error)?;
            let outcome = create_nonce(&transaction, user, nonce, now, expires_at).await?;
            settle(transaction, outcome).await
        })
        .await
    }

    async fn put_wrapped_key(
        &self,
        write: ProvenWrite,
        wrapped_key: WrappedKey,
        replace: bool,
    ) -> Result<Result<(LogEntryRef, bool), WriteRefused>, StoreError> {
        self.bounded(async |client| {
            let transaction = client.transaction().await.map_err(store_error)?;
            let outcome = put_wrapped_key(&transaction, &write, &wrapped_key, replace).await?;
            settle(transaction, outcome).await
        })
        .await
    }

    async fn read_wrapped_key(
        &self,
        user: &UserId,
        actor: String,
        // Nothing is stored with a read but its entry, which is timed as it is encoded.
        _now: OffsetDateTime,
    ) -> Result<Option<(StoredBackup, LogEntryRef)>, StoreError> {
        self.bounded(async |client| {
            let transaction = client.transaction().await.map_err(store_error)?;
            // Nothing stored: nothing written, and the empty transaction commits as well.
            let outcome = read_wrapped_key(&transaction, user, &actor).await?;
            transaction.commit().await.map_err(store_error)?;
            Ok(outcome)
        })
        .await
    }

    async fn deposit_escrow(
        &self,
        write: ProvenWrite,
        recovery_fingerprint: KeyFingerprint,
        blob: Vec<u8>,
    ) -> Result<Result<LogEntryRef, WriteRefused>, StoreError> {
        self.bounded(async |client| {
            let transaction = client.transaction().await.map_err(store_error)?;
            let outcome = deposit_escrow(&transaction, &write, &recovery_fingerprint, &blob).await?;
            settle(transaction, outcome).await
        })
        .await
    }
}

impl RecoveryStore for PostgresStore {
    async fn recovery_key(&self) -> Result<Option<RecoveryKeyRecord>, StoreError> {
        self.bounded(async |client| {
            let row = client.query_opt(ENABLED_RECOVERY_KEY, &[]).await.map_err(store_error)?;
            row.as_ref().map(recovery_key_record).transpose()
        })
        .await
    }

    async fn request(&self, id: &RequestId) -> Result<Option<ApprovalRequest>, StoreError> {
        self.bounded(async |client| {
            let row = client
                .query_opt(
                    &format!("SELECT {REQUEST_COLUMNS} FROM approval_requests WHERE id = $1"),
                    &[&id.as_str()],
                )
                .await
                .map_err(store_error)?;
            row.as_ref().map(decode_request).transpose()
        })
        .await
    }

    async fn approve_recovery_change(
        &self,
        id: RequestId,
        approver: String,
        now: OffsetDateTime,
        change: RecoveryChange,
    ) -> Result<Result<(ApprovalRequest, LogEntryRef), ApprovalRefused>, StoreError> {
        self.bounded(async |client| {
            let transaction = client.transaction().await.map_err(store_error)?;
            let outcome = approve_recovery_change(&transaction, &id, approver.clone(), now, &change).await?;
            settle(transaction, outcome).await
        })
        .await
    }

    async fn release_escrow(
        &self,
        id: RequestId,
        actor: String,
        now: OffsetDateTime,
    ) -> Result<Result<(EscrowRecord, LogEntryRef), ReleaseRefused>, StoreError> {
        self.bounded(async |client| {
            let transaction = client.transaction().await.map_err(store_error)?;
            let outcome = release_escrow(&transaction, &id, &actor, now).await?;
            settle(transaction, outcome).await
        })
        .await
    }
}
