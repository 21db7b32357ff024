//! The embedded store's key backup and recovery key: wrapped keys, proof nonces and escrow deposits
//! (`KeyBackupStore`), the recovery key's registration and disabling and the release of a deposit
//! (`RecoveryStore`). Every write, and every read of a wrapped key, is a `GroupWrite` with its
//! audit entry in its savepoint; a refused write keeps nothing (its nonce stays unused).

use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use super::group_commit::GroupWrite;
use super::identities::{append_entry, read_pin};
use super::requests::{consume, find_request};
use super::{SqliteStore, cached_row, store_error, unix};
use crate::approvals::{ApprovalKind, ApprovalRefused, ApprovalRequest, RequestId, RequestState};
use crate::audit::LogEntryRef;
use crate::identity::{KeyFingerprint, UserId};
use crate::key_backup::{
    KeyBackupStore, MAX_OUTSTANDING_NONCES, Nonce, NonceRefused, PinnedKey, ProvenWrite, StoredBackup, WrappedKey,
    WriteRefused,
};
use crate::recovery::{EscrowRecord, RecoveryChange, RecoveryKeyRecord, RecoveryStore, ReleaseRefused};
use crate::storage::StoreError;
use crate::store::codec::{fingerprint, from_unix, pin_entry, to_i64};

/// The enabled recovery key (at most one row has no `disabled_at`).
pub(super) fn enabled_recovery_key(connection: &Connection) -> Result<Option<RecoveryKeyRecord>, StoreError> {
    let row: Option<(Vec<u8>, Vec<u8>, String, i64)> = cached_row(
        connection,
        "SELECT key_sha256, certificate_der, ceremony_reference, enabled_at FROM recovery_keys
         WHERE disabled_at IS NULL",
        [],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
    )
    .optional()
    .map_err(store_error)?;
    row.map(|(key, certificate_der, ceremony_reference, enabled_at)| {
        Ok(RecoveryKeyRecord {
            fingerprint: fingerprint(&key)?,
            certificate_der,
            ceremony_reference,
            enabled_at: from_unix(enabled_at)?,
        })
    })
    .transpose()
}

/// What every proven write checks first: consumes its nonce (compare-and-set: unused, unexpired,
/// for this user) and requires the pin the proof verified against to be the user's pin still.
fn check_proof(connection: &Connection, write: &ProvenWrite) -> Result<Result<(), WriteRefused>, StoreError> {
    let consumed = connection
        .prepare_cached(
            "UPDATE backup_nonces SET used_at = ?3
             WHERE nonce = ?1 AND user_id = ?2 AND used_at IS NULL AND expires_at > ?3",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                write.nonce.as_bytes().as_slice(),
                write.user.as_str(),
                unix(write.now)
            ])
        })
        .map_err(store_error)?;
    if consumed != 1 {
        return Ok(Err(WriteRefused::Nonce));
    }
    let pinned: Option<Vec<u8>> = cached_row(
        connection,
        "SELECT key_sha256 FROM identities WHERE user_id = ?1",
        params![write.user.as_str()],
        |row| row.get(0),
    )
    .optional()
    .map_err(store_error)?;
    if pinned.as_deref() != Some(write.key_fingerprint.as_bytes().as_slice()) {
        return Ok(Err(WriteRefused::PinMoved));
    }
    Ok(Ok(()))
}

/// `KeyBackupStore::create_nonce` as a grouped write (it adds no audit entry: nothing changed for
/// anyone).
struct NonceWrite {
    user: UserId,
    nonce: Nonce,
    now: OffsetDateTime,
    expires_at: OffsetDateTime,
}

impl GroupWrite for NonceWrite {
    type Output = Result<(), NonceRefused>;

    fn adds_entry(&self) -> bool {
        false
    }

    fn write(self, connection: &Connection) -> Result<Self::Output, StoreError> {
        let user = self.user.as_str();
        let pinned = cached_row(
            connection,
            "SELECT 1 FROM identities WHERE user_id = ?1",
            params![user],
            |_| Ok(()),
        )
        .optional()
        .map_err(store_error)?;
        if pinned.is_none() {
            return Ok(Err(NonceRefused::NoPin));
        }
        connection
            .prepare_cached("DELETE FROM backup_nonces WHERE user_id = ?1 AND expires_at <= ?2")
            .and_then(|mut statement| statement.execute(params![user, unix(self.now)]))
            .map_err(store_error)?;
        let outstanding: i64 = cached_row(
            connection,
            "SELECT count(*) FROM backup_nonces WHERE user_id = ?1 AND used_at IS NULL",
            params![user],
            |row| row.get(0),
        )
        .map_err(store_error)?;
        if outstanding >= to_i64(MAX_OUTSTANDING_NONCES)? {
            return Ok(Err(NonceRefused::TooMany));
        }
        connection
            .prepare_cached("INSERT INTO backup_nonces (nonce, user_id, expires_at) VALUES (?1, ?2, ?3)")
            .and_then(|mut statement| {
                statement.execute(params![self.nonce.as_bytes().as_slice(), user, unix(self.expires_at)])
            })
            .map_err(store_error)?;
        Ok(Ok(()))
    }

    fn keeps(output: &Self::Output) -> bool {
        output.is_ok()
    }
}

/// `KeyBackupStore::put_wrapped_key` as a grouped write.
struct PutWrite {
    write: ProvenWrite,
    wrapped_key: WrappedKey,
    replace: bool,
}

impl GroupWrite for PutWrite {
    type Output = Result<(LogEntryRef, bool), WriteRefused>;

    fn write(self, connection: &Connection) -> Result<Self::Output, StoreError> {
        let PutWrite {
            write,
            wrapped_key,
            replace,
        } = self;
        if let Err(refused) = check_proof(connection, &write)? {
            return Ok(Err(refused));
        }
        let stored = cached_row(
            connection,
            "SELECT 1 FROM key_backups WHERE user_id = ?1",
            params![write.user.as_str()],
            |_| Ok(()),
        )
        .optional()
        .map_err(store_error)?
        .is_some();
        match (stored, replace) {
            (true, false) => return Ok(Err(WriteRefused::AlreadyExists)),
            (false, true) => return Ok(Err(WriteRefused::NothingToReplace)),
            _ => {}
        }
        let entry = append_entry(
            connection,
            &crate::audit::key_backup_stored(&write, &wrapped_key, stored),
        )?;
        connection
            .prepare_cached(
                "INSERT INTO key_backups (user_id, wrapped_key, key_sha256, stored_at, entry_id)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (user_id) DO UPDATE SET wrapped_key = excluded.wrapped_key,
                     key_sha256 = excluded.key_sha256, stored_at = excluded.stored_at, entry_id = excluded.entry_id",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    write.user.as_str(),
                    wrapped_key.as_str(),
                    write.key_fingerprint.as_bytes().as_slice(),
                    unix(write.now),
                    entry.entry_id
                ])
            })
            .map_err(store_error)?;
        Ok(Ok((entry, stored)))
    }

    fn keeps(output: &Self::Output) -> bool {
        output.is_ok()
    }

    fn entry(output: &mut Self::Output) -> Option<&mut LogEntryRef> {
        output.as_mut().ok().map(|(entry, _)| entry)
    }
}

/// `KeyBackupStore::read_wrapped_key` as a grouped write: the read and its entry commit together.
struct ReadWrite {
    user: UserId,
    actor: String,
}

impl GroupWrite for ReadWrite {
    type Output = Option<(StoredBackup, LogEntryRef)>;

    fn write(self, connection: &Connection) -> Result<Self::Output, StoreError> {
        type BackupRow = (String, Vec<u8>, i64, Option<Vec<u8>>, Option<i64>, Option<Vec<u8>>);
        let row: Option<BackupRow> = cached_row(
            connection,
            "SELECT key_backups.wrapped_key, key_backups.key_sha256, key_backups.stored_at,
                    audit_entries.entry, audit_entries.leaf_index, audit_tree_nodes.hash
             FROM key_backups
             LEFT JOIN audit_entries ON audit_entries.id = key_backups.entry_id
             LEFT JOIN audit_tree_nodes
                    ON audit_tree_nodes.level = 0 AND audit_tree_nodes.node_index = audit_entries.leaf_index
             WHERE key_backups.user_id = ?1",
            params![self.user.as_str()],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                ))
            },
        )
        .optional()
        .map_err(store_error)?;
        let Some((wrapped_key, key, stored_at, entry, leaf_index, leaf_hash)) = row else {
            return Ok(None);
        };
        let backup = StoredBackup {
            wrapped_key: WrappedKey::from_stored(wrapped_key),
            key_fingerprint: fingerprint(&key)?,
            stored_at: from_unix(stored_at)?,
            recorded_by: pin_entry(entry, leaf_index, leaf_hash)?,
        };
        let entry = append_entry(
            connection,
            &crate::audit::key_backup_read(&self.actor, &self.user, &backup),
        )?;
        Ok(Some((backup, entry)))
    }

    fn keeps(output: &Self::Output) -> bool {
        output.is_some()
    }

    fn entry(output: &mut Self::Output) -> Option<&mut LogEntryRef> {
        output.as_mut().map(|(_, entry)| entry)
    }
}

/// `KeyBackupStore::deposit_escrow` as a grouped write.
struct DepositWrite {
    write: ProvenWrite,
    recovery_fingerprint: KeyFingerprint,
    blob: Vec<u8>,
}

impl GroupWrite for DepositWrite {
    type Output = Result<LogEntryRef, WriteRefused>;

    fn write(self, connection: &Connection) -> Result<Self::Output, StoreError> {
        let DepositWrite {
            write,
            recovery_fingerprint,
            blob,
        } = self;
        if let Err(refused) = check_proof(connection, &write)? {
            return Ok(Err(refused));
        }
        match enabled_recovery_key(connection)? {
            None => return Ok(Err(WriteRefused::RecoveryDisabled)),
            Some(enabled) if enabled.fingerprint != recovery_fingerprint => {
                return Ok(Err(WriteRefused::StaleRecoveryKey(enabled.fingerprint.to_hex())));
            }
            Some(_) => {}
        }
        let entry = append_entry(
            connection,
            &crate::audit::escrow_deposited(&write, &recovery_fingerprint, &blob),
        )?;
        connection
            .prepare_cached(
                "INSERT INTO escrows (user_id, recovery_key_sha256, blob, key_sha256, deposited_at, entry_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (user_id) DO UPDATE SET recovery_key_sha256 = excluded.recovery_key_sha256,
                     blob = excluded.blob, key_sha256 = excluded.key_sha256, deposited_at = excluded.deposited_at,
                     entry_id = excluded.entry_id",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    write.user.as_str(),
                    recovery_fingerprint.as_bytes().as_slice(),
                    blob,
                    write.key_fingerprint.as_bytes().as_slice(),
                    unix(write.now),
                    entry.entry_id
                ])
            })
            .map_err(store_error)?;
        Ok(Ok(entry))
    }

    fn keeps(output: &Self::Output) -> bool {
        output.is_ok()
    }

    fn entry(output: &mut Self::Output) -> Option<&mut LogEntryRef> {
        output.as_mut().ok()
    }
}

/// `RecoveryStore::approve_recovery_change` as a grouped write. The writer is the only writer, so
/// what is read here cannot change before the updates.
///
/// A request of another kind than `change` is `NotFound` (there is no such recovery-key request,
/// as `release_escrow` answers for a request that is no release). A request that can no longer be
/// carried out as approved is `NotPending(Expired)`, as the `RecoveryStore` contract says: a
/// disable whose key is no longer the enabled one, or a registration of a key registered before (a
/// retired recovery key stays retired; a new ceremony makes a new one).
struct RecoveryChangeWrite {
    id: RequestId,
    approver: String,
    now: OffsetDateTime,
    change: RecoveryChange,
}

impl GroupWrite for RecoveryChangeWrite {
    type Output = Result<(ApprovalRequest, LogEntryRef), ApprovalRefused>;

    fn write(self, connection: &Connection) -> Result<Self::Output, StoreError> {
        let RecoveryChangeWrite {
            id,
            approver,
            now,
            change,
        } = self;
        let Some(mut request) = find_request(connection, &id)? else {
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
        let enabled = enabled_recovery_key(connection)?.map(|enabled| enabled.fingerprint);
        match &registration {
            Some((new_key, _, _)) => {
                let registered_before = cached_row(
                    connection,
                    "SELECT 1 FROM recovery_keys WHERE key_sha256 = ?1",
                    params![new_key.as_bytes().as_slice()],
                    |_| Ok(()),
                )
                .optional()
                .map_err(store_error)?;
                if registered_before.is_some() {
                    return no_longer_applies;
                }
            }
            None if enabled.is_none() || enabled != request.key_fingerprint => return no_longer_applies,
            None => {}
        }
        // Approved and consumed at once: the approval performs what it authorizes.
        request.approval = Some((approver, now));
        request.consumed_at = Some(now);
        append_entry(connection, &crate::audit::request_approved(&request))?;
        connection
            .prepare_cached(
                "UPDATE approval_requests SET approved_by = ?2, approved_at = ?3, consumed_at = ?3
                 WHERE id = ?1 AND approved_by IS NULL AND consumed_at IS NULL",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    request.id.as_str(),
                    request.approval.as_ref().map(|(by, _)| by.as_str()),
                    unix(now)
                ])
            })
            .map_err(store_error)?;
        connection
            .prepare_cached("UPDATE recovery_keys SET disabled_at = ?1 WHERE disabled_at IS NULL")
            .and_then(|mut statement| statement.execute(params![unix(now)]))
            .map_err(store_error)?;
        let event = match (registration, enabled) {
            (Some((new_key, proposed, certificate_der)), replaced) => {
                connection
                    .prepare_cached(
                        "INSERT INTO recovery_keys (key_sha256, spki_der, certificate_der, ceremony_reference,
                             request_id, enabled_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .and_then(|mut statement| {
                        statement.execute(params![
                            new_key.as_bytes().as_slice(),
                            proposed.spki_der,
                            certificate_der,
                            proposed.ceremony_reference,
                            request.id.as_str(),
                            unix(now)
                        ])
                    })
                    .map_err(store_error)?;
                crate::audit::recovery_key_registered(&request, &new_key, certificate_der, replaced.as_ref())
            }
            (None, Some(disabled)) => crate::audit::recovery_key_disabled(&request, &disabled),
            // A disable found its key enabled above.
            (None, None) => return no_longer_applies,
        };
        let entry = append_entry(connection, &event)?;
        Ok(Ok((request, entry)))
    }

    fn keeps(output: &Self::Output) -> bool {
        output.is_ok()
    }

    fn entry(output: &mut Self::Output) -> Option<&mut LogEntryRef> {
        output.as_mut().ok().map(|(_, entry)| entry)
    }
}

/// `RecoveryStore::release_escrow` as a grouped write: the consumed request, the deposit read and
/// its entry commit together, or nothing does.
struct ReleaseWrite {
    id: RequestId,
    actor: String,
    now: OffsetDateTime,
}

impl GroupWrite for ReleaseWrite {
    type Output = Result<(EscrowRecord, LogEntryRef), ReleaseRefused>;

    fn write(self, connection: &Connection) -> Result<Self::Output, StoreError> {
        let request = find_request(connection, &self.id)?;
        let Some((mut request, user)) = request.and_then(|request| match (request.kind, request.subject.clone()) {
            (ApprovalKind::EscrowRelease, Some(user)) => Some((request, user)),
            _ => None,
        }) else {
            return Ok(Err(ReleaseRefused::NotFound));
        };
        if !consume(connection, &request.id, ApprovalKind::EscrowRelease, &user, self.now)? {
            return Ok(Err(ReleaseRefused::NotApproved(request.state(self.now))));
        }
        request.consumed_at = Some(self.now);
        type EscrowRow = (Vec<u8>, Vec<u8>, i64, Option<Vec<u8>>, Option<i64>, Option<Vec<u8>>);
        let row: Option<EscrowRow> = cached_row(
            connection,
            "SELECT escrows.recovery_key_sha256, escrows.blob, escrows.deposited_at,
                    audit_entries.entry, audit_entries.leaf_index, audit_tree_nodes.hash
             FROM escrows
             LEFT JOIN audit_entries ON audit_entries.id = escrows.entry_id
             LEFT JOIN audit_tree_nodes
                    ON audit_tree_nodes.level = 0 AND audit_tree_nodes.node_index = audit_entries.leaf_index
             WHERE escrows.user_id = ?1",
            params![user.as_str()],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                ))
            },
        )
        .optional()
        .map_err(store_error)?;
        // No deposit any more: the savepoint, consumption included, is rolled back.
        let Some((recovery_key, blob, deposited_at, entry, leaf_index, leaf_hash)) = row else {
            return Ok(Err(ReleaseRefused::NoDeposit));
        };
        let record = EscrowRecord {
            user,
            recovery_fingerprint: fingerprint(&recovery_key)?,
            blob,
            deposited_at: from_unix(deposited_at)?,
            recorded_by: pin_entry(entry, leaf_index, leaf_hash)?,
        };
        let entry = append_entry(
            connection,
            &crate::audit::escrow_released(&self.actor, &request, &record),
        )?;
        Ok(Ok((record, entry)))
    }

    fn keeps(output: &Self::Output) -> bool {
        output.is_ok()
    }

    fn entry(output: &mut Self::Output) -> Option<&mut LogEntryRef> {
        output.as_mut().ok().map(|(_, entry)| entry)
    }
}

impl KeyBackupStore for SqliteStore {
    async fn pinned_key(&self, user: &UserId) -> Result<Option<PinnedKey>, StoreError> {
        let user = user.clone();
        self.with_reader(move |connection| {
            // One read transaction: the SPKI is the pin's.
            connection.execute_batch("BEGIN").map_err(store_error)?;
            let read = (|| {
                let Some((fingerprint, pin_entry)) = read_pin(connection, &user)? else {
                    return Ok(None);
                };
                let spki_der: Vec<u8> = cached_row(
                    connection,
                    "SELECT spki_der FROM identities WHERE user_id = ?1",
                    params![user.as_str()],
                    |row| row.get(0),
                )
                .map_err(store_error)?;
                Ok(Some(PinnedKey {
                    fingerprint,
                    spki_der,
                    pin_entry,
                }))
            })();
            connection.execute_batch("COMMIT").map_err(store_error)?;
            read
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
        self.grouped(NonceWrite {
            user: user.clone(),
            nonce,
            now,
            expires_at,
        })
        .await
    }

    async fn put_wrapped_key(
        &self,
        write: ProvenWrite,
        wrapped_key: WrappedKey,
        replace: bool,
    ) -> Result<Result<(LogEntryRef, bool), WriteRefused>, StoreError> {
        self.grouped(PutWrite {
            write,
            wrapped_key,
            replace,
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
        self.grouped(ReadWrite {
            user: user.clone(),
            actor,
        })
        .await
    }

    async fn deposit_escrow(
        &self,
        write: ProvenWrite,
        recovery_fingerprint: KeyFingerprint,
        blob: Vec<u8>,
    ) -> Result<Result<LogEntryRef, WriteRefused>, StoreError> {
        self.grouped(DepositWrite {
            write,
            recovery_fingerprint,
            blob,
        })
        .await
    }
}

impl RecoveryStore for SqliteStore {
    async fn recovery_key(&self) -> Result<Option<RecoveryKeyRecord>, StoreError> {
        self.with_reader(enabled_recovery_key).await
    }

    async fn request(&self, id: &RequestId) -> Result<Option<ApprovalRequest>, StoreError> {
        let id = id.clone();
        self.with_reader(move |connection| find_request(connection, &id)).await
    }

    async fn approve_recovery_change(
        &self,
        id: RequestId,
        approver: String,
        now: OffsetDateTime,
        change: RecoveryChange,
    ) -> Result<Result<(ApprovalRequest, LogEntryRef), ApprovalRefused>, StoreError> {
        self.grouped(RecoveryChangeWrite {
            id,
            approver,
            now,
            change,
        })
        .await
    }

    async fn release_escrow(
        &self,
        id: RequestId,
        actor: String,
        now: OffsetDateTime,
    ) -> Result<Result<(EscrowRecord, LogEntryRef), ReleaseRefused>, StoreError> {
        self.grouped(ReleaseWrite { id, actor, now }).await
    }
}
