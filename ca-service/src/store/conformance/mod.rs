//! The store conformance suite: every behaviour of the store traits, run against SQLite and PostgreSQL.
//!
//! Each behaviour is a generic function over a `Harness`, and `conformance_suite!` instantiates
//! all of them once per store, so no behaviour of the store traits can exist in only one store.
//!
//! Three mechanisms are each one store's own, and are tested in that store's modules; what they
//! serve is held here for both:
//! - sequencing inside the group transactions (`sqlite::log`): the embedded store has one writer
//!   thread for every write, so it can extend the log head in the transaction that writes an
//!   entry; PostgreSQL has one writer per replica, and only the leading replica's sequencer
//!   sequences, in its own transaction. Held here: `entries_are_sequenced_by_the_path_the_store_offers`.
//! - the saturated-HSM hold (`sqlite::group_commit`): it trades latency for fewer fsyncs of the one
//!   writer; a PostgreSQL group is not held. Held here: the outcomes of grouped commits below.
//! - the one-by-one fallback after a deadlock (`postgres::group_commit`): two replicas' groups can
//!   wait for each other's rows; one SQLite writer cannot deadlock. Held here:
//!   `a_group_gives_each_commit_the_outcome_it_would_have_alone`.
//!
//! Every test gets a fresh database: a temporary SQLite file, or a uniquely named PostgreSQL
//! database created through the maintenance database named by `E2EE_CA_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`) and dropped when the test ends, pass
//! or fail.

mod admin;
mod backup;
mod identities;
mod log;

use std::time::Duration;

use time::OffsetDateTime;

use super::Store;
use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use crate::audit::{AuditEvent, AuditKind, LogEntryRef};
use crate::config::store::PostgresLocation;
use crate::identity::{KeyFingerprint, SerialNumber, UserId};
use crate::issuer::{CommitOutcome, IssuanceStore, NewCertificate};
use crate::storage::StoreError;
use crate::transparency::{LogHead, LogSequencer, SequenceOutcome};
use tlog::merkle::Hash;

/// A fresh, empty database for one store implementation.
pub(crate) trait Harness: Sized {
    /// The store under test.
    type Store: Store;

    /// Creates an empty database (nothing migrated yet).
    async fn create() -> Self;

    /// Opens the store on the database, applying migrations.
    async fn open(&self) -> Result<Self::Store, StoreError>;

    /// Records a schema version newer than any this binary knows, behind the store's back.
    async fn record_schema_version(&self, version: i64);

    /// Runs `sql` (statements in the store's dialect) behind the store's back.
    async fn execute_raw(&self, sql: &str);
}

/// The embedded store on a temporary file.
pub(crate) struct SqliteHarness {
    directory: tempfile::TempDir,
}

impl Harness for SqliteHarness {
    type Store = SqliteStore;

    async fn create() -> SqliteHarness {
        SqliteHarness {
            directory: tempfile::tempdir().expect("tempdir"),
        }
    }

    async fn open(&self) -> Result<SqliteStore, StoreError> {
        SqliteStore::open(&self.directory.path().join("ca.sqlite3"))
    }

    async fn record_schema_version(&self, version: i64) {
        let connection = rusqlite::Connection::open(self.directory.path().join("ca.sqlite3")).expect("open raw");
        connection
            .execute("INSERT INTO schema_migrations VALUES (?1, 0)", [version])
            .expect("record version");
    }

    async fn execute_raw(&self, sql: &str) {
        let connection = rusqlite::Connection::open(self.directory.path().join("ca.sqlite3")).expect("open raw");
        connection.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
        connection.execute_batch(sql).expect("raw SQL");
    }
}

/// The maintenance database that test databases are created through.
pub(crate) fn maintenance_url() -> String {
    std::env::var("E2EE_CA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A uniquely named PostgreSQL database, dropped (with FORCE) when the harness is dropped.
pub(crate) struct PostgresHarness {
    name: String,
    location: PostgresLocation,
}

impl PostgresHarness {
    /// The connection parameters of the test database.
    pub(crate) fn location(&self) -> &PostgresLocation {
        &self.location
    }

    /// A plain connection to the test database, for inspecting or breaking it behind the store.
    pub(crate) async fn raw_client(&self) -> tokio_postgres::Client {
        let (client, connection) = self
            .location
            .connection
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(connection);
        client
    }

    /// The test database's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

async fn maintenance_client() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&maintenance_url(), tokio_postgres::NoTls)
        .await
        .expect(
            "connect to the PostgreSQL maintenance database (is PostgreSQL running? see E2EE_CA_TEST_POSTGRES_URL)",
        );
    tokio::spawn(connection);
    client
}

impl Harness for PostgresHarness {
    type Store = PostgresStore;

    async fn create() -> PostgresHarness {
        let name = format!("e2ee_ca_test_{}", hex::encode(rand::random::<[u8; 8]>()));
        maintenance_client()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let mut connection: tokio_postgres::Config = maintenance_url().parse().expect("maintenance URL");
        connection.dbname(&name);
        PostgresHarness {
            name,
            location: PostgresLocation {
                connection,
                pool_size: 8,
                timeout: Duration::from_secs(10),
            },
        }
    }

    async fn open(&self) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect(&self.location).await
    }

    async fn record_schema_version(&self, version: i64) {
        self.raw_client()
            .await
            .execute("INSERT INTO schema_migrations VALUES ($1, now())", &[&version])
            .await
            .expect("record version");
    }

    async fn execute_raw(&self, sql: &str) {
        self.raw_client().await.batch_execute(sql).await.expect("raw SQL");
    }
}

impl Drop for PostgresHarness {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread of its own.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                maintenance_client()
                    .await
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

pub(crate) fn user(name: &str) -> UserId {
    UserId::parse(name).expect("user id")
}

pub(crate) fn key(byte: u8) -> KeyFingerprint {
    KeyFingerprint::from_bytes(&[byte; 32]).expect("32 bytes")
}

/// A certificate for `user` with key `[key; 32]` and serial `[serial; 16]`.
pub(crate) fn certificate(user_name: &str, key_byte: u8, serial: u8) -> NewCertificate {
    certificate_with_key(user_name, key(key_byte), SerialNumber::from_bytes(vec![serial; 16]))
}

fn certificate_with_key(user_name: &str, key_fingerprint: KeyFingerprint, serial: SerialNumber) -> NewCertificate {
    NewCertificate {
        user_id: user(user_name),
        key_fingerprint,
        spki_der: key_fingerprint.as_bytes().to_vec(),
        certificate_der: serial.as_bytes().to_vec(),
        serial,
        not_before: OffsetDateTime::now_utc(),
        not_after: OffsetDateTime::now_utc() + time::Duration::days(365),
        issued_at: OffsetDateTime::now_utc(),
        rate_limit: crate::issuer::RateLimit {
            since: OffsetDateTime::now_utc() - time::Duration::days(1),
            max: u64::MAX,
        },
    }
}

pub(crate) fn event(user_name: &str) -> AuditEvent {
    AuditEvent {
        kind: AuditKind::Issuance,
        actor: "test".to_owned(),
        subject: user_name.to_owned(),
        details: vec![],
    }
}

/// The certificates `user` received at or after `since`, as `pin_state` counts them.
pub(super) async fn certificates_since(store: &impl IssuanceStore, user: &UserId, since: OffsetDateTime) -> u64 {
    store
        .pin_state(user, &key(0xee), since)
        .await
        .expect("pin state")
        .certificates_since
}

/// An hour ago: every certificate a test commits counts.
pub(super) fn an_hour_ago() -> OffsetDateTime {
    OffsetDateTime::now_utc() - time::Duration::hours(1)
}

/// Commits and expects a `Committed` outcome; returns (renewal, entry).
pub(super) async fn committed(store: &impl IssuanceStore, certificate: NewCertificate) -> (bool, LogEntryRef) {
    let user_name = certificate.user_id.to_string();
    match store.commit_issuance(certificate, event(&user_name)).await {
        Ok(CommitOutcome::Committed { renewal, entry }) => (renewal, entry),
        other => panic!("expected Committed, got {other:?}"),
    }
}

/// How many audit entries were written: sequences everything pending and reads the log's size
/// (entry ids are not counted: PostgreSQL burns ids in transactions that roll back).
pub(super) async fn logged_entries(store: &impl LogSequencer) -> u64 {
    sequence_all(store, 1024).await;
    store.log_head().await.expect("head").size
}

/// Sequences everything pending in batches of `batch`, returning the head after each batch.
pub(super) async fn sequence_all(store: &impl LogSequencer, batch: usize) -> Vec<LogHead> {
    let mut head = store.log_head().await.expect("head");
    let mut heads = Vec::new();
    loop {
        match store.sequence(head, batch).await.expect("sequence") {
            SequenceOutcome::Sequenced { head: new_head, .. } => {
                heads.push(new_head);
                head = new_head;
            }
            SequenceOutcome::Idle(current) => {
                assert_eq!(current, head);
                return heads;
            }
            SequenceOutcome::HeadMoved(actual) => {
                panic!("nobody else sequences here, yet the head moved to {actual:?}")
            }
        }
    }
}

/// The leaf hashes of the sequenced entries `[0, size)`, read back as exported.
pub(super) async fn leaf_hashes(store: &impl LogSequencer, size: u64) -> Vec<Hash> {
    let entries = store.entries(0, size).await.expect("entries");
    assert_eq!(entries.len() as u64, size, "every index below the head has its entry");
    entries.iter().map(|entry| tlog::leaf_hash(entry)).collect()
}

/// Instantiates every behaviour for one store.
macro_rules! conformance_suite {
    ($module:ident, $harness:ty) => {
        mod $module {
            use super::*;

            conformance_suite!(@tests $harness;
                identities::pins_are_unique_both_ways,
                identities::pin_state_reports_both_directions,
                identities::renewals_are_detected,
                identities::duplicate_serial_is_an_integrity_error_and_writes_nothing,
                identities::latest_certificates_returns_the_newest_per_known_user,
                identities::certificates_since_counts_a_users_window,
                identities::the_window_counts_the_issue_times_the_issuer_gave,
                identities::a_group_gives_each_commit_the_outcome_it_would_have_alone,
                identities::concurrent_commits_are_each_answered_once_with_their_own_outcome,
                identities::concurrent_commits_for_one_user_pin_exactly_one_key,
                identities::concurrent_commits_of_one_key_pin_it_to_exactly_one_user,
                identities::a_ca_certificate_is_recorded_once,
                identities::ping_answers,
                identities::pins_and_certificates_reference_their_entries,
                identities::a_renewal_over_the_rate_limit_writes_nothing,
                identities::concurrent_renewals_never_pass_the_rate_limit,
                identities::migration_5_backfills_the_entries_of_pins_and_certificates,
                log::entries_are_sequenced_by_the_path_the_store_offers,
                log::sequencing_gives_contiguous_indices_in_batches,
                log::proofs_from_stored_nodes_verify,
                log::a_stale_head_is_refused_and_nothing_is_written,
                log::concurrent_sequencers_never_fork,
                log::concurrent_appends_are_each_committed_once,
                log::checkpoints_keep_history_and_refuse_a_fork,
                log::exports_hold_the_latest_checkpoint_and_its_entries,
                log::migrations_are_idempotent_and_refuse_newer_schemas,
                admin::requests_are_approved_once_by_another_admin_before_they_expire,
                admin::an_approved_reset_pins_the_new_key_revokes_the_old_and_is_consumed_once,
                admin::concurrent_consumers_of_one_approval_pin_exactly_one_key,
                admin::revocations_are_recorded_once_and_listed_for_the_crl,
                admin::crl_numbers_only_grow_and_the_latest_is_served,
                admin::identities_are_listed_in_pages_by_user_id,
                backup::the_pinned_key_is_read_with_its_entry,
                backup::a_nonce_is_good_for_one_write_of_its_user_before_it_expires,
                backup::concurrent_writes_with_one_nonce_commit_once,
                backup::nonces_need_a_pin_and_are_bounded_per_user,
                backup::a_wrapped_key_is_written_once_and_replaced_only_when_asked,
                backup::a_write_proven_against_a_pin_that_moved_is_refused,
                backup::a_read_is_logged_once_naming_the_reader,
                backup::a_deposit_needs_the_enabled_recovery_key,
                backup::an_approved_registration_enables_the_key_and_replaces_the_one_before,
                backup::recovery_changes_refuse_self_approval_and_a_kind_mismatch,
                backup::a_disable_of_a_key_no_longer_enabled_is_refused,
                backup::an_escrow_release_returns_the_deposit_once,
                backup::a_reset_deletes_the_wrapped_key_and_keeps_the_escrow,
                backup::migration_6_applies_to_a_version_5_database_with_rows,
            );
        }
    };
    (@tests $harness:ty; $($concern:ident :: $behaviour:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $behaviour() {
                super::$concern::$behaviour::<$harness>().await;
            }
        )*
    };
}

conformance_suite!(sqlite, SqliteHarness);
conformance_suite!(postgres, PostgresHarness);
