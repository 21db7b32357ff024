//! The PostgreSQL store's pins and certificates: the issuer's `IssuanceStore`, the Identity API's
//! `CertificateLookup`, the startup's `CaRecord` and the health probe's `StoreHealth`, and the two
//! grouped writes behind them.
//!
//! An issuance pins with `ON CONFLICT DO NOTHING` (which waits for a concurrent inserter of the
//! same user or key to finish) and resolves a conflict by re-reading, and share-locking, the row
//! that won. A group of issuances does the same in four multi-row statements (pins, the pins that
//! were there, then certificates and entries of the issuances that stand); a group the database
//! refuses while it still answers (a serial collision, or a deadlock with another replica's group,
//! whose pins it inserted in another order) is committed again one issuance per transaction.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::{GenericClient, Object};
use time::OffsetDateTime;

use super::group_commit::GroupedWrite;
use super::{PostgresStore, store_error};
use crate::api::identity::CertificateLookup;
use crate::approvals::ApprovalRequest;
use crate::audit::{AuditEntry, AuditEvent, AuditKind, LogEntryRef};
use crate::health::StoreHealth;
use crate::identity::{KeyFingerprint, SerialNumber, StoredCertificate, UserId};
use crate::issuer::{CommitOutcome, IssuanceStore, NewCertificate, PinState, ResetOutcome};
use crate::service::CaRecord;
use crate::storage::StoreError;
use crate::store::codec::{self, fingerprint, to_u64};

/// The pins of users, locked for update until the transaction ends, so that one user's renewals
/// take turns and the rate limit counts each (see `commit_issuance`). A lateral subquery with a
/// locking clause is never flattened into a join: one primary-key probe per user in any plan (see
/// `log::READ_NODES` for what a join's generic plan can become).
pub(super) const LOCK_PINS: &str = "SELECT wanted.user_id, pinned.key_sha256
                         FROM unnest($1::text[]) AS wanted (user_id)
                         CROSS JOIN LATERAL (
                             SELECT key_sha256 FROM identities WHERE identities.user_id = wanted.user_id FOR UPDATE
                         ) AS pinned";

/// `IssuanceStore::commit_issuance`, grouped.
pub(super) struct IssuanceGroup {
    pub(super) certificate: NewCertificate,
    pub(super) event: AuditEvent,
}

/// What an issuance holds exclusively within a group.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) enum IssuanceClaim {
    User(String),
    Key(KeyFingerprint),
}

impl GroupedWrite for IssuanceGroup {
    type Output = CommitOutcome;
    type Claim = IssuanceClaim;

    const NAME: &'static str = "issuance";
    const MAX_GROUP: usize = 64;
    const RETRY_ALONE: bool = true;

    fn claims(&self) -> Vec<IssuanceClaim> {
        vec![
            IssuanceClaim::User(self.certificate.user_id.as_str().to_owned()),
            IssuanceClaim::Key(self.certificate.key_fingerprint),
        ]
    }

    async fn commit_group(client: &mut Object, group: &[&IssuanceGroup]) -> Result<Vec<CommitOutcome>, StoreError> {
        commit_group(client, group).await
    }

    async fn commit_alone(client: &mut Object, write: &IssuanceGroup) -> Result<CommitOutcome, StoreError> {
        commit_issuance(client, &write.certificate, write.event.clone()).await
    }
}

/// `IssuanceStore::append_event` (entries that are a transaction of their own, such as refusals),
/// grouped: up to 1024 entries in one statement.
pub(super) struct AppendGroup {
    entry: AuditEntry,
}

impl GroupedWrite for AppendGroup {
    type Output = LogEntryRef;
    type Claim = ();

    const NAME: &'static str = "audit append";
    const MAX_GROUP: usize = 1024;
    // One statement of new rows: a refusal is the whole statement's, and retrying 1024 inserts one
    // by one under an overloaded database would only multiply the wait.
    const RETRY_ALONE: bool = false;

    fn claims(&self) -> Vec<()> {
        Vec::new()
    }

    async fn commit_group(client: &mut Object, group: &[&AppendGroup]) -> Result<Vec<LogEntryRef>, StoreError> {
        let entries: Vec<&AuditEntry> = group.iter().map(|append| &append.entry).collect();
        let ids = insert_entries(&*client, &entries).await?;
        Ok(entries
            .iter()
            .zip(ids)
            .map(|(entry, entry_id)| LogEntryRef {
                entry_id,
                entry_hash: entry.hash,
                leaf_index: None,
            })
            .collect())
    }

    async fn commit_alone(client: &mut Object, write: &AppendGroup) -> Result<LogEntryRef, StoreError> {
        let mut committed = AppendGroup::commit_group(client, &[write]).await?;
        committed
            .pop()
            .ok_or_else(|| StoreError::Corrupt("an appended entry was not returned".to_owned()))
    }
}

/// The pin of user `$1` with the entry it references and that entry's leaf in the tree (key, entry
/// bytes, leaf index, stored leaf hash; decoded by `codec::pin_entry`), as the issuer checks it
/// (`issuer::pins::check_pin`): two primary-key probes beyond the pin's, only when there is one.
/// `pin_state` reads it as a lateral subquery, `KeyBackupStore::pinned_key` with the SPKI.
pub(super) const PIN_WITH_ENTRY: &str =
    "SELECT identities.key_sha256, audit_entries.entry, audit_entries.leaf_index, audit_tree_nodes.hash
     FROM identities
     LEFT JOIN audit_entries ON audit_entries.id = identities.pin_entry_id
     LEFT JOIN audit_tree_nodes
            ON audit_tree_nodes.level = 0 AND audit_tree_nodes.node_index = audit_entries.leaf_index
     WHERE identities.user_id = $1";

/// `pin_state`'s statement, built once (it embeds `PIN_WITH_ENTRY`).
static PIN_STATE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT pin.key_sha256, pin.entry, pin.leaf_index, pin.hash,
                (SELECT user_id FROM identities WHERE key_sha256 = $2),
                (SELECT count(*) FROM certificates WHERE user_id = $1 AND issued_at >= $3)
         FROM (SELECT 1) AS one
         LEFT JOIN LATERAL ({PIN_WITH_ENTRY}) AS pin ON true"
    )
});

async fn pin_state(
    client: &Object,
    user: &UserId,
    key: &KeyFingerprint,
    since: OffsetDateTime,
) -> Result<PinState, StoreError> {
    // One round trip: the primary key (with the entry the pin references and that entry's leaf in
    // the tree, two more primary-key probes only when there is a pin), the key's UNIQUE index and
    // the (user_id, issued_at) index.
    let statement = client.prepare_cached(&PIN_STATE).await.map_err(store_error)?;
    let row = client
        .query_one(&statement, &[&user.as_str(), &key.as_bytes().as_slice(), &since])
        .await
        .map_err(store_error)?;
    let user_pin: Option<Vec<u8>> = row.get(0);
    let pin_entry = match user_pin {
        Some(_) => codec::pin_entry(row.get(1), row.get(2), row.get(3))?,
        None => None,
    };
    let owner: Option<String> = row.get(4);
    let certificates_since: i64 = row.get(5);
    Ok(PinState {
        user_pin: user_pin.as_deref().map(fingerprint).transpose()?,
        pin_entry,
        key_pinned_elsewhere: owner.is_some_and(|owner| owner != user.as_str()),
        certificates_since: certificates_since.unsigned_abs(),
    })
}

/// One issuance in a transaction of its own (the `commit_issuance` contract).
async fn commit_issuance(
    client: &mut Object,
    certificate: &NewCertificate,
    event: AuditEvent,
) -> Result<CommitOutcome, StoreError> {
    let user = certificate.user_id.as_str();
    let key = certificate.key_fingerprint.as_bytes().as_slice();
    let transaction = client.transaction().await.map_err(store_error)?;
    // The constraints decide: a new pin is inserted unless either unique index already holds the
    // user or the key. ON CONFLICT waits for a concurrent inserter and skips if it committed.
    let insert_pin = transaction
        .prepare_cached(
            "INSERT INTO identities (user_id, key_sha256, spki_der, pinned_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING RETURNING 1",
        )
        .await
        .map_err(store_error)?;
    let inserted = transaction
        .query_opt(
            &insert_pin,
            &[&user, &key, &certificate.spki_der, &certificate.issued_at],
        )
        .await
        .map_err(store_error)?;
    let renewal = if inserted.is_some() {
        false
    } else {
        // The conflicting row is committed (READ COMMITTED: this statement sees it). FOR UPDATE
        // keeps it in place until this transaction ends, and makes the user's renewals take turns,
        // so that the rate limit's count below sees every committed one.
        let pinned = transaction
            .query_opt(
                "SELECT key_sha256 FROM identities WHERE user_id = $1 FOR UPDATE",
                &[&user],
            )
            .await
            .map_err(store_error)?;
        match pinned {
            Some(row) if row.get::<_, &[u8]>(0) == key => {
                let counts = renewal_counts(&transaction, &[certificate]).await?;
                if let Some(count) = counts
                    .get(user)
                    .copied()
                    .filter(|count| *count >= certificate.rate_limit.max)
                {
                    transaction.rollback().await.map_err(store_error)?;
                    return Ok(CommitOutcome::RateLimited(count));
                }
                true
            }
            Some(row) => {
                let pinned = fingerprint(row.get(0))?;
                transaction.rollback().await.map_err(store_error)?;
                return Ok(CommitOutcome::PinnedToOtherKey(pinned));
            }
            // The user has no pin, so the conflict was on the key's UNIQUE index.
            None => {
                transaction.rollback().await.map_err(store_error)?;
                return Ok(CommitOutcome::KeyPinnedElsewhere);
            }
        }
    };
    // The recorded kind follows what the transaction saw, not the earlier read.
    let event = AuditEvent {
        kind: AuditKind::issuance(renewal),
        ..event
    };
    let entry = event.encode();
    let entry_id = single_id(insert_entries(&transaction, &[&entry]).await?)?;
    insert_certificates(
        &transaction,
        &[Recorded {
            certificate,
            entry_id,
            pins: !renewal,
        }],
    )
    .await?;
    transaction.commit().await.map_err(store_error)?;
    Ok(CommitOutcome::Committed {
        renewal,
        entry: LogEntryRef {
            entry_id,
            entry_hash: entry.hash,
            leaf_index: None,
        },
    })
}

/// Pins the keys of the users without one, share-locks the pins that were there already; for
/// each issuance that stands, this inserts its certificate and its audit entry. Every issuance
/// gets the outcome that `commit_issuance` would give it alone; `members` holds no user or key
/// twice (its claims). One transaction: an error rolls all of it back.
async fn commit_group(client: &mut Object, members: &[&IssuanceGroup]) -> Result<Vec<CommitOutcome>, StoreError> {
    let users: Vec<&str> = members
        .iter()
        .map(|member| member.certificate.user_id.as_str())
        .collect();
    let keys: Vec<&[u8]> = members
        .iter()
        .map(|member| member.certificate.key_fingerprint.as_bytes().as_slice())
        .collect();
    let spkis: Vec<&[u8]> = members
        .iter()
        .map(|member| member.certificate.spki_der.as_slice())
        .collect();
    let pinned_at: Vec<OffsetDateTime> = members.iter().map(|member| member.certificate.issued_at).collect();
    let transaction = client.transaction().await.map_err(store_error)?;
    // As in `commit_issuance`: the unique indexes decide, ON CONFLICT waits for a concurrent
    // inserter and skips if it committed. Users in one order, so that two replicas' groups
    // seldom wait for each other in a cycle (a deadlock: the group is retried one by one).
    let insert_pins = transaction
        .prepare_cached(
            "INSERT INTO identities (user_id, key_sha256, spki_der, pinned_at)
             SELECT user_id, key_sha256, spki_der, pinned_at
             FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::timestamptz[])
                  AS new (user_id, key_sha256, spki_der, pinned_at)
             ORDER BY user_id
             ON CONFLICT DO NOTHING RETURNING user_id",
        )
        .await
        .map_err(store_error)?;
    let pinned_now: HashSet<String> = transaction
        .query(&insert_pins, &[&users, &keys, &spkis, &pinned_at])
        .await
        .map_err(store_error)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let others: Vec<&str> = users
        .iter()
        .copied()
        .filter(|user| !pinned_now.contains(*user))
        .collect();
    let mut others = others;
    others.sort_unstable();
    let mut pinned_before: HashMap<String, Vec<u8>> = HashMap::new();
    if !others.is_empty() {
        // The conflicting rows are committed (READ COMMITTED), and locked for update in one order
        // (renewals of a user take turns, as in `commit_issuance`).
        let read_pins = transaction.prepare_cached(LOCK_PINS).await.map_err(store_error)?;
        for row in transaction.query(&read_pins, &[&others]).await.map_err(store_error)? {
            pinned_before.insert(row.get(0), row.get(1));
        }
    }
    // The renewals' rate limits, counted after their pins are locked (a statement of its own, so
    // that it sees what the previous lock holders committed).
    let renewals: Vec<&NewCertificate> = members
        .iter()
        .map(|member| &member.certificate)
        .filter(|certificate| {
            pinned_before
                .get(certificate.user_id.as_str())
                .is_some_and(|pinned| pinned.as_slice() == certificate.key_fingerprint.as_bytes())
        })
        .collect();
    let counts = if renewals.is_empty() {
        HashMap::new()
    } else {
        renewal_counts(&transaction, &renewals).await?
    };
    // Per issuance: `Ok(renewal)` if it stands, or the outcome that refuses it.
    let decisions: Vec<Result<bool, CommitOutcome>> = members
        .iter()
        .map(|member| {
            let certificate = &member.certificate;
            let user = certificate.user_id.as_str();
            if pinned_now.contains(user) {
                return Ok(Ok(false));
            }
            Ok(match pinned_before.get(user) {
                Some(pinned) if pinned.as_slice() == certificate.key_fingerprint.as_bytes() => {
                    match counts.get(user).copied() {
                        Some(count) if count >= certificate.rate_limit.max => Err(CommitOutcome::RateLimited(count)),
                        _ => Ok(true),
                    }
                }
                Some(pinned) => Err(CommitOutcome::PinnedToOtherKey(fingerprint(pinned)?)),
                // The user has no pin, so the conflict was on the key's UNIQUE index.
                None => Err(CommitOutcome::KeyPinnedElsewhere),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let standing: Vec<(&IssuanceGroup, bool)> = members
        .iter()
        .zip(&decisions)
        .filter_map(|(member, decision)| decision.as_ref().ok().map(|renewal| (*member, *renewal)))
        .collect();
    let mut committed = Vec::with_capacity(standing.len());
    if !standing.is_empty() {
        // The recorded kind follows what the transaction saw, not the earlier read.
        let entries: Vec<AuditEntry> = standing
            .iter()
            .map(|(member, renewal)| {
                AuditEvent {
                    kind: AuditKind::issuance(*renewal),
                    ..member.event.clone()
                }
                .encode()
            })
            .collect();
        let ids = insert_entries(&transaction, &entries.iter().collect::<Vec<_>>()).await?;
        let recorded: Vec<Recorded> = standing
            .iter()
            .zip(&ids)
            .map(|((member, renewal), entry_id)| Recorded {
                certificate: &member.certificate,
                entry_id: *entry_id,
                pins: !renewal,
            })
            .collect();
        insert_certificates(&transaction, &recorded).await?;
        committed.extend(entries.iter().zip(ids).map(|(entry, entry_id)| LogEntryRef {
            entry_id,
            entry_hash: entry.hash,
            leaf_index: None,
        }));
    }
    transaction.commit().await.map_err(store_error)?;
    // `insert_entries` returns one id per entry, in order: one per standing issuance.
    let mut committed = committed.into_iter();
    decisions
        .into_iter()
        .map(|decision| match decision {
            Ok(renewal) => committed
                .next()
                .map(|entry| CommitOutcome::Committed { renewal, entry })
                .ok_or_else(|| StoreError::Corrupt("an issuance of a group got no audit entry".to_owned())),
            Err(refused) => Ok(refused),
        })
        .collect()
}

/// A certificate to insert with the entry that records it.
pub(super) struct Recorded<'a> {
    /// The certificate.
    pub(super) certificate: &'a NewCertificate,
    /// Its entry's id.
    pub(super) entry_id: i64,
    /// True when the entry pinned the key (a first issuance or a reset): the user's pin is made to
    /// reference it.
    pub(super) pins: bool,
}

/// Inserts `certificates` in one statement, each referencing its entry, and points the pins they
/// made at their entries. A serial collision is a unique violation (23505): Integrity, and the
/// transaction rolls back.
pub(super) async fn insert_certificates(
    client: &impl GenericClient,
    certificates: &[Recorded<'_>],
) -> Result<(), StoreError> {
    let serials: Vec<&[u8]> = certificates
        .iter()
        .map(|recorded| recorded.certificate.serial.as_bytes())
        .collect();
    let users: Vec<&str> = certificates
        .iter()
        .map(|recorded| recorded.certificate.user_id.as_str())
        .collect();
    let keys: Vec<&[u8]> = certificates
        .iter()
        .map(|recorded| recorded.certificate.key_fingerprint.as_bytes().as_slice())
        .collect();
    let ders: Vec<&[u8]> = certificates
        .iter()
        .map(|recorded| recorded.certificate.certificate_der.as_slice())
        .collect();
    let not_before: Vec<OffsetDateTime> = certificates
        .iter()
        .map(|recorded| recorded.certificate.not_before)
        .collect();
    let not_after: Vec<OffsetDateTime> = certificates
        .iter()
        .map(|recorded| recorded.certificate.not_after)
        .collect();
    let issued_at: Vec<OffsetDateTime> = certificates
        .iter()
        .map(|recorded| recorded.certificate.issued_at)
        .collect();
    let entry_ids: Vec<i64> = certificates.iter().map(|recorded| recorded.entry_id).collect();
    let pins: Vec<bool> = certificates.iter().map(|recorded| recorded.pins).collect();
    let statement = client
        .prepare_cached(
            "WITH new AS (
                 SELECT * FROM unnest($1::bytea[], $2::text[], $3::bytea[], $4::bytea[], $5::timestamptz[],
                                      $6::timestamptz[], $7::timestamptz[], $8::bigint[], $9::bool[])
                          AS new (serial, user_id, key_sha256, certificate_der, not_before, not_after, issued_at,
                                  entry_id, pins)
             ), pinned AS (
                 UPDATE identities SET pin_entry_id = new.entry_id
                 FROM new WHERE new.pins AND identities.user_id = new.user_id
             )
             INSERT INTO certificates (serial, user_id, key_sha256, certificate_der, not_before, not_after, issued_at,
                                       entry_id)
             SELECT serial, user_id, key_sha256, certificate_der, not_before, not_after, issued_at, entry_id FROM new",
        )
        .await
        .map_err(store_error)?;
    client
        .execute(
            &statement,
            &[
                &serials,
                &users,
                &keys,
                &ders,
                &not_before,
                &not_after,
                &issued_at,
                &entry_ids,
                &pins,
            ],
        )
        .await
        .map_err(store_error)?;
    Ok(())
}

/// The number of certificates each renewing user received inside its rate limit's window (users
/// with none are absent). Run after the users' pins are locked.
async fn renewal_counts(
    client: &impl GenericClient,
    certificates: &[&NewCertificate],
) -> Result<HashMap<String, u64>, StoreError> {
    let users: Vec<&str> = certificates
        .iter()
        .map(|certificate| certificate.user_id.as_str())
        .collect();
    let since: Vec<OffsetDateTime> = certificates
        .iter()
        .map(|certificate| certificate.rate_limit.since)
        .collect();
    let statement = client
        .prepare_cached(
            "SELECT wanted.user_id,
                    (SELECT count(*) FROM certificates
                     WHERE certificates.user_id = wanted.user_id AND certificates.issued_at >= wanted.since)
             FROM unnest($1::text[], $2::timestamptz[]) AS wanted (user_id, since)",
        )
        .await
        .map_err(store_error)?;
    let rows = client.query(&statement, &[&users, &since]).await.map_err(store_error)?;
    Ok(rows
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1).unsigned_abs()))
        .collect())
}

/// Inserts `entries` in one statement (one transaction); returns their ids in the same order.
pub(super) async fn insert_entries(
    client: &impl GenericClient,
    entries: &[&AuditEntry],
) -> Result<Vec<i64>, StoreError> {
    let bytes: Vec<&[u8]> = entries.iter().map(|entry| entry.bytes.as_slice()).collect();
    let hashes: Vec<&[u8]> = entries.iter().map(|entry| entry.hash.as_slice()).collect();
    let subjects: Vec<&str> = entries.iter().map(|entry| entry.subject.as_str()).collect();
    let statement = client
        .prepare_cached(
            "INSERT INTO audit_entries (entry, entry_hash, subject)
             SELECT entry, entry_hash, subject FROM unnest($1::bytea[], $2::bytea[], $3::text[])
                    AS new (entry, entry_hash, subject)
             RETURNING id, entry_hash",
        )
        .await
        .map_err(store_error)?;
    let rows = client
        .query(&statement, &[&bytes, &hashes, &subjects])
        .await
        .map_err(store_error)?;
    // Matched by hash (each entry carries a random nonce), not by the order of RETURNING.
    let ids: HashMap<Vec<u8>, i64> = rows.iter().map(|row| (row.get(1), row.get(0))).collect();
    entries
        .iter()
        .map(|entry| {
            ids.get(entry.hash.as_slice())
                .copied()
                .ok_or_else(|| StoreError::Corrupt("an appended entry was not returned".to_owned()))
        })
        .collect()
}

/// The one id `insert_entries` returned for one entry.
pub(super) fn single_id(ids: Vec<i64>) -> Result<i64, StoreError> {
    match ids[..] {
        [id] => Ok(id),
        _ => Err(StoreError::Corrupt("an appended entry was not returned".to_owned())),
    }
}

async fn latest_certificates(client: &Object, users: &[UserId]) -> Result<Vec<StoredCertificate>, StoreError> {
    // One round trip: per user, a backward scan of certificates_by_user that stops at the first row.
    let statement = client
        .prepare_cached(
            "SELECT wanted.user_id, newest.serial, newest.key_sha256, newest.certificate_der,
                    EXISTS (SELECT 1 FROM revocations WHERE revocations.serial = newest.serial),
                    (SELECT entry FROM audit_entries WHERE audit_entries.id = newest.entry_id)
             FROM unnest($1::text[]) AS wanted (user_id)
             CROSS JOIN LATERAL (
                 SELECT serial, key_sha256, certificate_der, entry_id FROM certificates
                 WHERE certificates.user_id = wanted.user_id
                 ORDER BY issued_at DESC, id DESC LIMIT 1
             ) AS newest",
        )
        .await
        .map_err(store_error)?;
    let names: Vec<&str> = users.iter().map(UserId::as_str).collect();
    let rows = client.query(&statement, &[&names]).await.map_err(store_error)?;
    rows.iter()
        .map(|row| {
            let user_id = UserId::from_stored(row.get::<_, &str>(0))
                .map_err(|error| StoreError::Corrupt(format!("stored user id: {error}")))?;
            Ok(StoredCertificate {
                user_id,
                serial: SerialNumber::from_bytes(row.get(1)),
                key_fingerprint: fingerprint(row.get(2))?,
                certificate_der: row.get(3),
                revoked: row.get(4),
                entry: row.get(5),
            })
        })
        .collect()
}

impl IssuanceStore for PostgresStore {
    async fn pin_state(
        &self,
        user: &UserId,
        key: &KeyFingerprint,
        since: OffsetDateTime,
    ) -> Result<PinState, StoreError> {
        self.bounded(async |client| pin_state(client, user, key, since).await)
            .await
    }

    async fn commit_issuance(
        &self,
        certificate: NewCertificate,
        event: AuditEvent,
    ) -> Result<CommitOutcome, StoreError> {
        self.issuances.submit(IssuanceGroup { certificate, event }).await
    }

    async fn append_event(&self, event: AuditEvent) -> Result<LogEntryRef, StoreError> {
        self.appends.submit(AppendGroup { entry: event.encode() }).await
    }

    async fn approved_reset(&self, user: &UserId, now: OffsetDateTime) -> Result<Option<ApprovalRequest>, StoreError> {
        self.approved_reset_of(user, now).await
    }

    async fn commit_reset(
        &self,
        certificate: NewCertificate,
        event: AuditEvent,
        request: ApprovalRequest,
    ) -> Result<ResetOutcome, StoreError> {
        self.commit_reset_of(certificate, event, request).await
    }

    async fn log_index(&self, entry: &LogEntryRef) -> Result<Option<u64>, StoreError> {
        self.bounded(async |client| {
            let statement = client
                .prepare_cached("SELECT leaf_index FROM audit_entries WHERE id = $1")
                .await
                .map_err(store_error)?;
            let row = client
                .query_opt(&statement, &[&entry.entry_id])
                .await
                .map_err(store_error)?;
            row.and_then(|row| row.get::<_, Option<i64>>(0)).map(to_u64).transpose()
        })
        .await
    }
}

impl CertificateLookup for PostgresStore {
    async fn latest_certificates(&self, users: Vec<UserId>) -> Result<Vec<StoredCertificate>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        self.bounded(async |client| latest_certificates(client, &users).await)
            .await
    }
}

impl CaRecord for PostgresStore {
    async fn record_ca_certificate(
        &self,
        certificate_sha256: [u8; 32],
        event: AuditEvent,
    ) -> Result<Option<LogEntryRef>, StoreError> {
        self.bounded(async |client| {
            let transaction = client.transaction().await.map_err(store_error)?;
            let entry = event.encode();
            let entry_id = single_id(insert_entries(&transaction, &[&entry]).await?)?;
            // Waits for a concurrent recorder of the same certificate, then conflicts with its
            // row: rolling back also takes this entry back.
            let claimed = transaction
                .execute(
                    "INSERT INTO ca_certificates (certificate_sha256, entry_id, first_served_at)
                     VALUES ($1, $2, now()) ON CONFLICT DO NOTHING",
                    &[&certificate_sha256.as_slice(), &entry_id],
                )
                .await
                .map_err(store_error)?;
            if claimed == 0 {
                transaction.rollback().await.map_err(store_error)?;
                return Ok(None);
            }
            transaction.commit().await.map_err(store_error)?;
            Ok(Some(LogEntryRef {
                entry_id,
                entry_hash: entry.hash,
                leaf_index: None,
            }))
        })
        .await
    }
}

impl StoreHealth for PostgresStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async |client| client.simple_query("SELECT 1").await.map(drop).map_err(store_error))
            .await
    }
}

#[cfg(test)]
mod tests {
    //! A group's statements; what the store answers its callers is in `store::conformance`.

    use super::*;
    use crate::store::conformance::{Harness, PostgresHarness, certificate, event, key, user};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_gives_each_issuance_the_outcome_it_would_have_alone() {
        let harness = PostgresHarness::create().await;
        let store = harness.open().await.expect("open");
        for (name, key_byte) in [("bob", 2), ("carol", 3)] {
            let committed = store
                .commit_issuance(certificate(name, key_byte, key_byte), event(name))
                .await;
            assert!(matches!(committed, Ok(CommitOutcome::Committed { renewal: false, .. })));
        }
        let members = [
            certificate("alice", 1, 11),
            certificate("bob", 2, 12),
            certificate("carol", 9, 13),
            certificate("dave", 3, 14),
        ];
        let members: Vec<IssuanceGroup> = members
            .into_iter()
            .map(|certificate| IssuanceGroup {
                event: event(certificate.user_id.as_str()),
                certificate,
            })
            .collect();
        let group: Vec<&IssuanceGroup> = members.iter().collect();
        let mut client = store.pool.get().await.expect("client");
        let outcomes = commit_group(&mut client, &group).await.expect("group");
        assert!(
            matches!(&outcomes[0], CommitOutcome::Committed { renewal: false, .. }),
            "{outcomes:?}"
        );
        assert!(
            matches!(&outcomes[1], CommitOutcome::Committed { renewal: true, .. }),
            "{outcomes:?}"
        );
        assert_eq!(outcomes[2], CommitOutcome::PinnedToOtherKey(key(3)));
        assert_eq!(outcomes[3], CommitOutcome::KeyPinnedElsewhere);
        let since = OffsetDateTime::now_utc() - time::Duration::hours(1);
        for (name, key_byte, pinned, certificates) in [
            ("alice", 1, Some(key(1)), 1),
            ("bob", 2, Some(key(2)), 2),
            ("carol", 9, Some(key(3)), 1),
            ("dave", 3, None, 0),
        ] {
            let state = store
                .pin_state(&user(name), &key(key_byte), since)
                .await
                .expect("pin state");
            assert_eq!(state.user_pin, pinned, "{name}");
            assert_eq!(state.certificates_since, certificates, "{name}");
        }
        // Two entries more than the two single commits: the issuance and the renewal, in that order.
        let entries: Vec<Vec<u8>> = harness
            .raw_client()
            .await
            .query("SELECT entry FROM audit_entries ORDER BY id", &[])
            .await
            .expect("entries")
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(entries.len(), 4);
        let text = |entry: &[u8]| String::from_utf8_lossy(entry).into_owned();
        let (alice, bob) = (text(&entries[2]), text(&entries[3]));
        assert!(
            alice.contains("\nkind issuance\n") && alice.contains("\nsubject alice\n"),
            "{alice}"
        );
        assert!(
            bob.contains("\nkind renewal\n") && bob.contains("\nsubject bob\n"),
            "{bob}"
        );
    }
}
