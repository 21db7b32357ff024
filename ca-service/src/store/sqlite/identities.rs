//! The embedded store's pins and certificates: the issuer's `IssuanceStore`, the Identity API's
//! `CertificateLookup`, the startup's `CaRecord` and the health probe's `StoreHealth`, and the
//! grouped writes behind them (an issuance, a refusal's entry, the CA certificate's record).

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use time::OffsetDateTime;

use super::group_commit::GroupWrite;
use super::{SqliteStore, cached_row, store_error, unix};
use crate::api::identity::CertificateLookup;
use crate::approvals::ApprovalRequest;
use crate::audit::{AuditEvent, AuditKind, LogEntryRef};
use crate::health::StoreHealth;
use crate::identity::{KeyFingerprint, SerialNumber, StoredCertificate, UserId};
use crate::issuer::{CommitOutcome, IssuanceStore, NewCertificate, PinEntry, PinState, ResetOutcome};
use crate::service::CaRecord;
use crate::storage::StoreError;
use crate::store::codec::{fingerprint, pin_entry, to_u64};

/// Inserts `event`'s entry into the outbox (no log index yet).
pub(super) fn append_entry(connection: &Connection, event: &AuditEvent) -> Result<LogEntryRef, StoreError> {
    let entry = event.encode();
    connection
        .prepare_cached("INSERT INTO audit_entries (entry, entry_hash, subject) VALUES (?1, ?2, ?3)")
        .and_then(|mut statement| statement.execute(params![entry.bytes, entry.hash.as_slice(), entry.subject]))
        .map_err(store_error)?;
    Ok(LogEntryRef {
        entry_id: connection.last_insert_rowid(),
        entry_hash: entry.hash,
        leaf_index: None,
    })
}

/// Inserts `certificate`, recorded by entry `entry_id`; a serial collision is `Integrity`.
pub(super) fn insert_certificate(
    connection: &Connection,
    certificate: &NewCertificate,
    entry_id: i64,
) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "INSERT INTO certificates (serial, user_id, key_sha256, certificate_der, not_before, not_after, issued_at,
                                       entry_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                certificate.serial.as_bytes(),
                certificate.user_id.as_str(),
                certificate.key_fingerprint.as_bytes().as_slice(),
                certificate.certificate_der,
                unix(certificate.not_before),
                unix(certificate.not_after),
                unix(certificate.issued_at),
                entry_id,
            ])
        })
        .map_err(store_error)?;
    Ok(())
}

/// The user's certificates issued at or after `since`: the rate limit's count.
fn certificates_since(connection: &Connection, user: &str, since: OffsetDateTime) -> Result<u64, StoreError> {
    let count: i64 = cached_row(
        connection,
        "SELECT count(*) FROM certificates WHERE user_id = ?1 AND issued_at >= ?2",
        params![user, unix(since)],
        |row| row.get(0),
    )
    .map_err(store_error)?;
    Ok(count.unsigned_abs())
}

/// `IssuanceStore::commit_issuance` as a grouped write.
pub(super) struct IssuanceWrite {
    pub(super) certificate: NewCertificate,
    pub(super) event: AuditEvent,
}

impl GroupWrite for IssuanceWrite {
    type Output = CommitOutcome;

    fn awaits_index(&self) -> bool {
        true
    }

    /// Pins the key unless the user or the key is pinned already, then inserts the certificate and
    /// its entry; the schema's unique indexes decide. A renewal counts the user's certificates in
    /// its window here, in the one writer's transaction, so that concurrent renewals cannot pass
    /// the limit together.
    fn write(self, connection: &Connection) -> Result<CommitOutcome, StoreError> {
        let IssuanceWrite { certificate, event } = self;
        let user = certificate.user_id.as_str();
        let key = certificate.key_fingerprint.as_bytes().as_slice();
        let pinned: Option<Vec<u8>> = connection
            .prepare_cached("SELECT key_sha256 FROM identities WHERE user_id = ?1")
            .and_then(|mut statement| statement.query_row(params![user], |row| row.get(0)).optional())
            .map_err(store_error)?;
        let renewal = match pinned {
            Some(pinned) if pinned.as_slice() == key => true,
            Some(pinned) => return Ok(CommitOutcome::PinnedToOtherKey(fingerprint(&pinned)?)),
            None => false,
        };
        if renewal {
            let count = certificates_since(connection, user, certificate.rate_limit.since)?;
            if count >= certificate.rate_limit.max {
                return Ok(CommitOutcome::RateLimited(count));
            }
        }
        // The recorded kind follows what the transaction saw, not the earlier read.
        let event = AuditEvent {
            kind: AuditKind::issuance(renewal),
            ..event
        };
        let entry = append_entry(connection, &event)?;
        if !renewal {
            let inserted = connection
                .prepare_cached(
                    "INSERT INTO identities (user_id, key_sha256, spki_der, pinned_at, pin_entry_id)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        user,
                        key,
                        certificate.spki_der,
                        unix(certificate.issued_at),
                        entry.entry_id
                    ])
                });
            match inserted {
                Ok(_) => {}
                // The key's UNIQUE constraint: the key belongs to another user (the savepoint,
                // entry included, is rolled back).
                Err(error) if error.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                    return Ok(CommitOutcome::KeyPinnedElsewhere);
                }
                Err(error) => return Err(store_error(error)),
            }
        }
        insert_certificate(connection, &certificate, entry.entry_id)?;
        Ok(CommitOutcome::Committed { renewal, entry })
    }

    fn keeps(outcome: &CommitOutcome) -> bool {
        matches!(outcome, CommitOutcome::Committed { .. })
    }

    fn entry(outcome: &mut CommitOutcome) -> Option<&mut LogEntryRef> {
        match outcome {
            CommitOutcome::Committed { entry, .. } => Some(entry),
            _ => None,
        }
    }
}

/// `IssuanceStore::append_event` (a refusal) as a grouped write.
pub(super) struct AppendWrite {
    pub(super) event: AuditEvent,
}

impl GroupWrite for AppendWrite {
    type Output = LogEntryRef;

    fn write(self, connection: &Connection) -> Result<LogEntryRef, StoreError> {
        append_entry(connection, &self.event)
    }

    fn entry(entry: &mut LogEntryRef) -> Option<&mut LogEntryRef> {
        Some(entry)
    }
}

/// `CaRecord::record_ca_certificate` as a grouped write.
struct RecordCaWrite {
    certificate_sha256: [u8; 32],
    event: AuditEvent,
}

impl GroupWrite for RecordCaWrite {
    type Output = Option<LogEntryRef>;

    fn write(self, connection: &Connection) -> Result<Option<LogEntryRef>, StoreError> {
        let known = cached_row(
            connection,
            "SELECT 1 FROM ca_certificates WHERE certificate_sha256 = ?1",
            params![self.certificate_sha256.as_slice()],
            |_| Ok(()),
        )
        .optional()
        .map_err(store_error)?;
        if known.is_some() {
            return Ok(None);
        }
        let entry = append_entry(connection, &self.event)?;
        connection
            .prepare_cached(
                "INSERT INTO ca_certificates (certificate_sha256, entry_id, first_served_at) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    self.certificate_sha256.as_slice(),
                    entry.entry_id,
                    unix(OffsetDateTime::now_utc())
                ])
            })
            .map_err(store_error)?;
        Ok(Some(entry))
    }

    fn keeps(recorded: &Option<LogEntryRef>) -> bool {
        recorded.is_some()
    }

    fn entry(recorded: &mut Option<LogEntryRef>) -> Option<&mut LogEntryRef> {
        recorded.as_mut()
    }
}

/// The pin of `user` with the entry it references and that entry's leaf in the tree, as the
/// issuer checks it (`issuer::pins::check_pin`): one probe of each primary key, and nothing but the
/// first when the user has no pin. `pin_state` and `KeyBackupStore::pinned_key` read pins with it.
pub(super) fn read_pin(
    connection: &Connection,
    user: &UserId,
) -> Result<Option<(KeyFingerprint, Option<PinEntry>)>, StoreError> {
    type PinRow = (Vec<u8>, Option<Vec<u8>>, Option<i64>, Option<Vec<u8>>);
    let pin: Option<PinRow> = cached_row(
        connection,
        "SELECT identities.key_sha256, audit_entries.entry, audit_entries.leaf_index, audit_tree_nodes.hash
         FROM identities
         LEFT JOIN audit_entries ON audit_entries.id = identities.pin_entry_id
         LEFT JOIN audit_tree_nodes
                ON audit_tree_nodes.level = 0 AND audit_tree_nodes.node_index = audit_entries.leaf_index
         WHERE identities.user_id = ?1",
        params![user.as_str()],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
    )
    .optional()
    .map_err(store_error)?;
    pin.map(|(pinned, entry, leaf_index, leaf_hash)| {
        Ok((fingerprint(&pinned)?, pin_entry(entry, leaf_index, leaf_hash)?))
    })
    .transpose()
}

impl IssuanceStore for SqliteStore {
    async fn pin_state(
        &self,
        user: &UserId,
        key: &KeyFingerprint,
        since: OffsetDateTime,
    ) -> Result<PinState, StoreError> {
        let user = user.clone();
        let key = *key;
        self.with_reader(move |connection| {
            let pin = read_pin(connection, &user)?;
            let owner: Option<String> = cached_row(
                connection,
                "SELECT user_id FROM identities WHERE key_sha256 = ?1",
                params![key.as_bytes().as_slice()],
                |row| row.get(0),
            )
            .optional()
            .map_err(store_error)?;
            let certificates_since = certificates_since(connection, user.as_str(), since)?;
            let (user_pin, pin_entry) = match pin {
                Some((pinned, entry)) => (Some(pinned), entry),
                None => (None, None),
            };
            Ok(PinState {
                user_pin,
                pin_entry,
                key_pinned_elsewhere: owner.is_some_and(|owner| owner != user.as_str()),
                certificates_since,
            })
        })
        .await
    }

    async fn commit_issuance(
        &self,
        certificate: NewCertificate,
        event: AuditEvent,
    ) -> Result<CommitOutcome, StoreError> {
        self.grouped(IssuanceWrite { certificate, event }).await
    }

    async fn append_event(&self, event: AuditEvent) -> Result<LogEntryRef, StoreError> {
        self.grouped(AppendWrite { event }).await
    }

    async fn approved_reset(&self, user: &UserId, now: OffsetDateTime) -> Result<Option<ApprovalRequest>, StoreError> {
        let user = user.clone();
        self.with_reader(move |connection| super::requests::approved_reset(connection, &user, now))
            .await
    }

    async fn commit_reset(
        &self,
        certificate: NewCertificate,
        event: AuditEvent,
        request: ApprovalRequest,
    ) -> Result<ResetOutcome, StoreError> {
        self.grouped(super::admin::ResetWrite {
            certificate,
            event,
            request,
        })
        .await
    }

    async fn log_index(&self, entry: &LogEntryRef) -> Result<Option<u64>, StoreError> {
        let entry_id = entry.entry_id;
        self.with_reader(move |connection| {
            let index: Option<Option<i64>> = cached_row(
                connection,
                "SELECT leaf_index FROM audit_entries WHERE id = ?1",
                params![entry_id],
                |row| row.get(0),
            )
            .optional()
            .map_err(store_error)?;
            index.flatten().map(to_u64).transpose()
        })
        .await
    }
}

impl CertificateLookup for SqliteStore {
    async fn latest_certificates(&self, users: Vec<UserId>) -> Result<Vec<StoredCertificate>, StoreError> {
        self.with_reader(move |connection| {
            let mut statement = connection
                .prepare_cached(
                    "SELECT serial, key_sha256, certificate_der,
                            EXISTS (SELECT 1 FROM revocations WHERE revocations.serial = certificates.serial),
                            (SELECT entry FROM audit_entries WHERE audit_entries.id = certificates.entry_id)
                     FROM certificates WHERE user_id = ?1 ORDER BY issued_at DESC, rowid DESC LIMIT 1",
                )
                .map_err(store_error)?;
            let mut found = Vec::new();
            for user in users {
                let row = statement
                    .query_row(params![user.as_str()], |row| {
                        Ok((
                            row.get::<_, Vec<u8>>(0)?,
                            row.get::<_, Vec<u8>>(1)?,
                            row.get::<_, Vec<u8>>(2)?,
                            row.get::<_, bool>(3)?,
                            row.get::<_, Option<Vec<u8>>>(4)?,
                        ))
                    })
                    .optional()
                    .map_err(store_error)?;
                if let Some((serial, key, certificate_der, revoked, entry)) = row {
                    found.push(StoredCertificate {
                        user_id: user,
                        serial: SerialNumber::from_bytes(serial),
                        key_fingerprint: fingerprint(&key)?,
                        certificate_der,
                        revoked,
                        entry,
                    });
                }
            }
            Ok(found)
        })
        .await
    }
}

impl CaRecord for SqliteStore {
    async fn record_ca_certificate(
        &self,
        certificate_sha256: [u8; 32],
        event: AuditEvent,
    ) -> Result<Option<LogEntryRef>, StoreError> {
        self.grouped(RecordCaWrite {
            certificate_sha256,
            event,
        })
        .await
    }
}

impl StoreHealth for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.with_connection(|connection| {
            cached_row(connection, "SELECT 1", [], |row| row.get::<_, i64>(0))
                .map(|_| ())
                .map_err(store_error)
        })
        .await
    }
}
