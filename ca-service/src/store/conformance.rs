//! The store conformance suite: every `IdentityStore` behaviour, run against SQLite and PostgreSQL.
//!
//! Each behaviour is a generic function over a `Harness`, and `conformance_suite!` instantiates
//! all of them once per store, so no behaviour can exist in only one store. Every test gets a
//! fresh database: a temporary SQLite file, or a uniquely named PostgreSQL database created through
//! the maintenance database named by `E2EE_CA_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped when the test ends, pass or fail.

use std::collections::HashSet;
use std::time::Duration;

use time::OffsetDateTime;

use super::StoreError;
use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use crate::audit::{AuditEvent, AuditKind};
use crate::config::PostgresLocation;
use crate::identity::{KeyFingerprint, SerialNumber, UserId};
use crate::issuer::{CommitOutcome, IdentityStore, LogEntryRef, NewCertificate, PinState};
use crate::transparency::{LogHead, LogStore, SequenceOutcome, StoredCheckpoint};
use sha2::Digest;
use tlog::merkle::Hash;

/// A fresh, empty database for one store implementation.
pub(crate) trait Harness: Sized {
    /// The store under test.
    type Store: IdentityStore + LogStore + Clone + std::fmt::Debug;

    /// Creates an empty database (nothing migrated yet).
    async fn create() -> Self;

    /// Opens the store on the database, applying migrations.
    async fn open(&self) -> Result<Self::Store, StoreError>;

    /// Records a schema version newer than any this binary knows, behind the store's back.
    async fn record_schema_version(&self, version: i64);
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
async fn certificates_since(store: &impl IdentityStore, user: &UserId, since: OffsetDateTime) -> u64 {
    store
        .pin_state(user, &key(0xee), since)
        .await
        .expect("pin state")
        .certificates_since
}

/// An hour ago: every certificate a test commits counts.
fn an_hour_ago() -> OffsetDateTime {
    OffsetDateTime::now_utc() - time::Duration::hours(1)
}

/// Commits and expects a `Committed` outcome; returns (renewal, entry).
async fn committed(store: &impl IdentityStore, certificate: NewCertificate) -> (bool, LogEntryRef) {
    let user_name = certificate.user_id.to_string();
    match store.commit_issuance(certificate, event(&user_name)).await {
        Ok(CommitOutcome::Committed { renewal, entry }) => (renewal, entry),
        other => panic!("expected Committed, got {other:?}"),
    }
}

/// How many audit entries were written before: appends a probe and counts from its id (ids start
/// at 1 and these tests never burn one).
async fn next_index(store: &impl IdentityStore) -> i64 {
    store.append_event(event("probe")).await.expect("append").entry_id - 1
}

async fn pins_are_unique_both_ways<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let (renewal, entry) = committed(&store, certificate("alice", 1, 1)).await;
    assert!(!renewal, "the first certificate pins the key");
    assert_eq!(entry.entry_id, 1);

    let other_key = store.commit_issuance(certificate("alice", 2, 2), event("alice")).await;
    assert_eq!(other_key.expect("commit"), CommitOutcome::PinnedToOtherKey(key(1)));
    let stolen_key = store.commit_issuance(certificate("bob", 1, 3), event("bob")).await;
    assert_eq!(stolen_key.expect("commit"), CommitOutcome::KeyPinnedElsewhere);

    // Refusals write nothing: no pin, no certificate, no audit entry.
    let bob = store
        .pin_state(&user("bob"), &key(2), an_hour_ago())
        .await
        .expect("pin state");
    assert_eq!(
        bob,
        PinState {
            user_pin: None,
            key_pinned_elsewhere: false,
            certificates_since: 0
        },
        "key 2 was not pinned to anyone"
    );
    let since = OffsetDateTime::now_utc() - time::Duration::hours(1);
    assert_eq!(certificates_since(&store, &user("alice"), since).await, 1);
    assert_eq!(certificates_since(&store, &user("bob"), since).await, 0);
    assert_eq!(next_index(&store).await, 1, "refusals appended no entry");
}

async fn pin_state_reports_both_directions<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let unknown = store
        .pin_state(&user("alice"), &key(1), an_hour_ago())
        .await
        .expect("pin state");
    assert_eq!(
        unknown,
        PinState {
            user_pin: None,
            key_pinned_elsewhere: false,
            certificates_since: 0
        }
    );
    committed(&store, certificate("alice", 1, 1)).await;
    let own = store
        .pin_state(&user("alice"), &key(1), an_hour_ago())
        .await
        .expect("pin state");
    assert_eq!(
        own,
        PinState {
            user_pin: Some(key(1)),
            key_pinned_elsewhere: false,
            certificates_since: 1
        }
    );
    let other = store
        .pin_state(&user("bob"), &key(1), an_hour_ago())
        .await
        .expect("pin state");
    assert_eq!(
        other,
        PinState {
            user_pin: None,
            key_pinned_elsewhere: true,
            certificates_since: 0
        }
    );
}

async fn renewals_are_detected<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    assert!(!committed(&store, certificate("alice", 1, 1)).await.0);
    assert!(
        committed(&store, certificate("alice", 1, 2)).await.0,
        "same key again is a renewal"
    );
    assert!(committed(&store, certificate("alice", 1, 3)).await.0);
    let since = OffsetDateTime::now_utc() - time::Duration::hours(1);
    assert_eq!(certificates_since(&store, &user("alice"), since).await, 3);
}

async fn duplicate_serial_is_an_integrity_error_and_writes_nothing<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, certificate("alice", 1, 7)).await;
    // A new user whose certificate reuses a serial: the pin must roll back with the certificate.
    let duplicate = store.commit_issuance(certificate("bob", 2, 7), event("bob")).await;
    assert!(matches!(duplicate, Err(StoreError::Integrity(_))), "{duplicate:?}");
    let bob = store
        .pin_state(&user("bob"), &key(2), an_hour_ago())
        .await
        .expect("pin state");
    assert_eq!(bob.user_pin, None, "the pin was rolled back");
    assert!(!bob.key_pinned_elsewhere);
    // A renewal reusing a serial.
    let duplicate = store.commit_issuance(certificate("alice", 1, 7), event("alice")).await;
    assert!(matches!(duplicate, Err(StoreError::Integrity(_))), "{duplicate:?}");
    let since = OffsetDateTime::now_utc() - time::Duration::hours(1);
    assert_eq!(certificates_since(&store, &user("alice"), since).await, 1);
    assert_eq!(next_index(&store).await, 1, "no audit entry for the failed commits");
    // Bob can still enroll with a fresh serial.
    assert!(!committed(&store, certificate("bob", 2, 8)).await.0);
}

async fn latest_certificates_returns_the_newest_per_known_user<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, certificate("alice", 1, 1)).await;
    committed(&store, certificate("alice", 1, 2)).await;
    committed(&store, certificate("bob", 2, 3)).await;
    committed(&store, certificate("alice", 1, 4)).await;
    let mut latest = store
        .latest_certificates(vec![user("alice"), user("carol"), user("bob")])
        .await
        .expect("latest");
    latest.sort_by(|left, right| left.user_id.as_str().cmp(right.user_id.as_str()));
    let summary: Vec<(&str, &[u8], KeyFingerprint, &[u8])> = latest
        .iter()
        .map(|stored| {
            (
                stored.user_id.as_str(),
                stored.serial.as_bytes(),
                stored.key_fingerprint,
                stored.certificate_der.as_slice(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("alice", &[4; 16][..], key(1), &[4; 16][..]),
            ("bob", &[3; 16][..], key(2), &[3; 16][..]),
        ],
        "carol is unknown and omitted"
    );
    assert!(store.latest_certificates(vec![]).await.expect("latest").is_empty());
}

async fn certificates_since_counts_a_users_window<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, certificate("alice", 1, 1)).await;
    committed(&store, certificate("alice", 1, 2)).await;
    committed(&store, certificate("bob", 2, 3)).await;
    let now = OffsetDateTime::now_utc();
    let alice = user("alice");
    assert_eq!(
        certificates_since(&store, &alice, now - time::Duration::days(1)).await,
        2
    );
    assert_eq!(
        certificates_since(&store, &alice, now + time::Duration::minutes(5)).await,
        0,
        "nothing issued in the future"
    );
    assert_eq!(
        certificates_since(&store, &user("carol"), now - time::Duration::days(1)).await,
        0
    );
}

/// Sequences everything pending in batches of `batch`, returning the head after each batch.
async fn sequence_all(store: &impl LogStore, batch: usize) -> Vec<LogHead> {
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
async fn leaf_hashes(store: &impl LogStore, size: u64) -> Vec<Hash> {
    let entries = store.entries(0, size).await.expect("entries");
    assert_eq!(entries.len() as u64, size, "every index below the head has its entry");
    entries.iter().map(|entry| tlog::leaf_hash(entry)).collect()
}

async fn sequencing_gives_contiguous_indices_in_batches<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    assert_eq!(store.log_head().await.expect("head"), LogHead::empty());
    let mut entries = Vec::new();
    for round in 0..5u8 {
        entries.push(store.append_event(event("refused")).await.expect("append"));
        entries.push(
            committed(&store, certificate(&format!("user-{round}"), round + 1, round + 1))
                .await
                .1,
        );
    }
    for entry in &entries {
        assert_eq!(
            store.log_index(entry).await.expect("index"),
            None,
            "pending until sequenced"
        );
    }
    let sizes: Vec<u64> = sequence_all(&store, 3).await.iter().map(|head| head.size).collect();
    assert_eq!(sizes, [3, 6, 9, 10], "batches of at most 3, one head per batch");
    let mut indices = Vec::new();
    for entry in &entries {
        indices.push(store.log_index(entry).await.expect("index").expect("sequenced"));
    }
    assert_eq!(indices, (0..10).collect::<Vec<u64>>(), "contiguous, in commit order");
    let hashes: HashSet<[u8; 32]> = entries.iter().map(|entry| entry.entry_hash).collect();
    assert_eq!(hashes.len(), entries.len(), "every entry is distinct (nonce)");
    // The head is the RFC 6962 root of exactly the stored entry bytes.
    let head = store.log_head().await.expect("head");
    assert_eq!(head.size, 10);
    assert_eq!(head.root, tlog::merkle::tree_root(&leaf_hashes(&store, 10).await));
    let exported = store.entries(0, 10).await.expect("entries");
    for (entry, bytes) in entries.iter().zip(&exported) {
        assert_eq!(<[u8; 32]>::from(sha2::Sha256::digest(bytes)), entry.entry_hash);
    }
    // Entries written later continue the sequence.
    let later = store.append_event(event("later")).await.expect("append");
    assert_eq!(sequence_all(&store, 100).await.len(), 1);
    assert_eq!(store.log_index(&later).await.expect("index"), Some(10));
}

async fn proofs_from_stored_nodes_verify<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    for _ in 0..13 {
        store.append_event(event("entry")).await.expect("append");
    }
    sequence_all(&store, 5).await;
    let leaves = leaf_hashes(&store, 13).await;
    for size in 1..=13u64 {
        let root = tlog::merkle::tree_root(&leaves[..size as usize]);
        for index in 0..size {
            let proof = crate::transparency::inclusion_proof(&store, index, size)
                .await
                .expect("inclusion proof");
            tlog::proof::verify_inclusion(&leaves[index as usize], index, size, &proof, &root)
                .unwrap_or_else(|error| panic!("inclusion of {index} in {size}: {error}"));
        }
        for old_size in 0..=size {
            let old_root = tlog::merkle::tree_root(&leaves[..old_size as usize]);
            let proof = crate::transparency::consistency_proof(&store, old_size, size)
                .await
                .expect("consistency proof");
            tlog::proof::verify_consistency(old_size, size, &old_root, &root, &proof)
                .unwrap_or_else(|error| panic!("consistency {old_size} -> {size}: {error}"));
        }
    }
    let beyond = crate::transparency::inclusion_proof(&store, 3, 14).await;
    assert!(
        matches!(beyond, Err(crate::transparency::ProofError::Missing(..))),
        "{beyond:?}"
    );
}

async fn a_stale_head_is_refused_and_nothing_is_written<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let first = store.append_event(event("first")).await.expect("append");
    sequence_all(&store, 10).await;
    let head = store.log_head().await.expect("head");
    let second = store.append_event(event("second")).await.expect("append");
    // A sequencer that still believes the log is empty (it lost a race or was partitioned).
    let outcome = store.sequence(LogHead::empty(), 10).await.expect("sequence");
    assert_eq!(outcome, SequenceOutcome::HeadMoved(head));
    let forged = LogHead { size: 1, root: [9; 32] };
    assert_eq!(
        store.sequence(forged, 10).await.expect("sequence"),
        SequenceOutcome::HeadMoved(head)
    );
    assert_eq!(store.log_head().await.expect("head"), head, "the head did not move");
    assert_eq!(
        store.log_index(&second).await.expect("index"),
        None,
        "nothing was sequenced"
    );
    assert_eq!(store.log_index(&first).await.expect("index"), Some(0));
    assert_eq!(sequence_all(&store, 10).await.last().map(|head| head.size), Some(2));
}

async fn concurrent_sequencers_never_fork<H: Harness>() {
    let harness = H::create().await;
    // Two handles on one database, like two replicas that both believe they lead.
    let stores = [harness.open().await.expect("open"), harness.open().await.expect("open")];
    let writer = {
        let store = stores[0].clone();
        tokio::spawn(async move {
            let mut written = Vec::new();
            for _ in 0..40 {
                written.push(store.append_event(event("racing")).await.expect("append"));
            }
            written
        })
    };
    let sequencers: Vec<_> = stores
        .iter()
        .cloned()
        .map(|store| {
            tokio::spawn(async move {
                let mut head = LogHead::empty();
                let mut moved = 0;
                for _ in 0..400 {
                    match store.sequence(head, 3).await.expect("sequence") {
                        SequenceOutcome::Sequenced { head: new_head, .. } | SequenceOutcome::Idle(new_head) => {
                            head = new_head
                        }
                        SequenceOutcome::HeadMoved(actual) => {
                            moved += 1;
                            head = actual;
                        }
                    }
                    if head.size == 40 {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                moved
            })
        })
        .collect();
    let written = writer.await.expect("writer");
    for sequencer in sequencers {
        sequencer.await.expect("sequencer");
    }
    sequence_all(&stores[0], 100).await;
    let head = stores[1].log_head().await.expect("head");
    assert_eq!(head.size, 40, "every entry sequenced exactly once");
    let mut indices = Vec::new();
    for entry in &written {
        indices.push(stores[0].log_index(entry).await.expect("index").expect("sequenced"));
    }
    indices.sort_unstable();
    assert_eq!(indices, (0..40).collect::<Vec<u64>>(), "no gap, no duplicate");
    assert_eq!(head.root, tlog::merkle::tree_root(&leaf_hashes(&stores[1], 40).await));
}

/// Many appends at once (which PostgreSQL commits in groups): each caller gets its own entry, the
/// one holding exactly its bytes, and every entry is stored once.
async fn concurrent_appends_are_each_committed_once<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let appends: Vec<_> = (0..300)
        .map(|number| {
            let store = store.clone();
            tokio::spawn(async move {
                let event = event(&format!("user-{number}"));
                let entry = store.append_event(event).await.expect("append");
                (number, entry)
            })
        })
        .collect();
    let mut answered = Vec::new();
    for append in appends {
        answered.push(append.await.expect("task"));
    }
    let ids: HashSet<i64> = answered.iter().map(|(_, entry)| entry.entry_id).collect();
    assert_eq!(ids.len(), 300, "one entry per caller");
    sequence_all(&store, 1000).await;
    assert_eq!(store.log_head().await.expect("head").size, 300, "each stored once");
    let stored = store.entries(0, 300).await.expect("entries");
    for (number, entry) in &answered {
        let index = store.log_index(entry).await.expect("index").expect("sequenced");
        let bytes = &stored[index as usize];
        assert_eq!(
            <[u8; 32]>::from(sha2::Sha256::digest(bytes)),
            entry.entry_hash,
            "the caller's reference names its own entry"
        );
        let text = String::from_utf8_lossy(bytes);
        assert!(text.contains(&format!("\nsubject user-{number}\n")), "{text}");
    }
}

/// The CA certificate's entry is written once per certificate, also when replicas race to write it.
async fn a_ca_certificate_is_recorded_once<H: Harness>() {
    let harness = H::create().await;
    let stores = [harness.open().await.expect("open"), harness.open().await.expect("open")];
    let racers: Vec<_> = (0..8)
        .map(|number| {
            let store = stores[number % 2].clone();
            tokio::spawn(async move { store.record_ca_certificate([7; 32], event("ca-key")).await })
        })
        .collect();
    let mut recorded = Vec::new();
    for racer in racers {
        if let Some(entry) = racer.await.expect("task").expect("record") {
            recorded.push(entry);
        }
    }
    assert_eq!(recorded.len(), 1, "one entry for one certificate");
    let another = stores[0]
        .record_ca_certificate([8; 32], event("ca-key"))
        .await
        .expect("record");
    assert!(another.is_some(), "another certificate gets its own entry");
    sequence_all(&stores[0], 100).await;
    assert_eq!(
        stores[1].log_head().await.expect("head").size,
        2,
        "nothing else was written"
    );
}

async fn checkpoints_keep_history_and_refuse_a_fork<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    assert_eq!(store.latest_checkpoint().await.expect("latest"), None);
    let checkpoint = |size: u64, root: u8, note: &str| StoredCheckpoint {
        size,
        root: [root; 32],
        note: note.to_owned(),
    };
    store.store_checkpoint(checkpoint(0, 0, "empty")).await.expect("store");
    store.store_checkpoint(checkpoint(3, 3, "three")).await.expect("store");
    store.store_checkpoint(checkpoint(2, 2, "two")).await.expect("store");
    assert_eq!(
        store.latest_checkpoint().await.expect("latest"),
        Some(checkpoint(3, 3, "three")),
        "the largest size is the latest"
    );
    // A heartbeat re-signature of the same tree replaces the note.
    store
        .store_checkpoint(checkpoint(3, 3, "three again"))
        .await
        .expect("store");
    assert_eq!(
        store.latest_checkpoint().await.expect("latest").expect("some").note,
        "three again"
    );
    // Another root at a signed size is a fork: refused, and the signed one stays.
    let fork = store.store_checkpoint(checkpoint(3, 4, "fork")).await;
    assert!(matches!(fork, Err(StoreError::Integrity(_))), "{fork:?}");
    assert_eq!(
        store.latest_checkpoint().await.expect("latest").expect("some").note,
        "three again"
    );
}

/// A software Ed25519 checkpoint signer (the service signs on the HSM; the export does not care).
struct TestSigner {
    key_pair: ring::signature::Ed25519KeyPair,
    verifier: tlog::key::VerifierKey,
}

impl TestSigner {
    fn new(origin: &str) -> TestSigner {
        use ring::signature::KeyPair;
        let key_pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[9; 32]).expect("seed");
        let public_key: [u8; 32] = key_pair.public_key().as_ref().try_into().expect("32 bytes");
        let name = tlog::note::KeyName::new(origin).expect("name");
        TestSigner {
            key_pair,
            verifier: tlog::key::VerifierKey::ed25519(name, public_key),
        }
    }
}

impl tlog::note::NoteSigner for TestSigner {
    type Error = std::convert::Infallible;

    fn key_name(&self) -> &tlog::note::KeyName {
        self.verifier.name()
    }

    fn key_id(&self) -> tlog::note::KeyId {
        self.verifier.key_id()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Self::Error> {
        Ok(self.key_pair.sign(message).as_ref().to_vec())
    }
}

async fn exports_hold_the_latest_checkpoint_and_its_entries<H: Harness>() {
    use crate::transparency::export;
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let out = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        export::export(&store, out.path(), None).await,
        Err(export::ExportError::NoCheckpoint)
    ));
    for round in 0..5u8 {
        committed(&store, certificate(&format!("user-{round}"), round + 1, round + 1)).await;
    }
    let head = *sequence_all(&store, 3).await.last().expect("sequenced");
    let signer = TestSigner::new("test.example/log");
    let body = tlog::checkpoint::Checkpoint::new("test.example/log", head.size, head.root).expect("checkpoint");
    let note = tlog::note::SignedNote::sign(&body.to_string(), &signer).expect("sign");
    store
        .store_checkpoint(StoredCheckpoint {
            size: head.size,
            root: head.root,
            note: note.to_string(),
        })
        .await
        .expect("store checkpoint");
    // One more entry is sequenced but not yet signed: the export stops at the checkpoint.
    store.append_event(event("refused")).await.expect("append");
    sequence_all(&store, 3).await;
    let summary = export::export(&store, out.path(), Some(&signer.verifier))
        .await
        .expect("export");
    assert_eq!(summary.entries, head.size);
    let options = export::VerifyOptions {
        trusted_key: signer.verifier.clone(),
        pinned: None,
        time_tolerance: Duration::from_secs(1),
    };
    let report = export::verify(out.path(), &options).expect("the export verifies");
    assert_eq!(report.size, 5);
    let entries =
        export::parse_entries(&std::fs::read(out.path().join(export::ENTRIES_FILE)).expect("read")).expect("entries");
    let stored = store.entries(0, 5).await.expect("entries");
    assert_eq!(entries.into_iter().map(|entry| entry.bytes).collect::<Vec<_>>(), stored);
}

async fn migrations_are_idempotent_and_refuse_newer_schemas<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("first open migrates");
    committed(&store, certificate("alice", 1, 1)).await;
    drop(store);
    let store = harness.open().await.expect("second open is a no-op");
    let alice = store
        .pin_state(&user("alice"), &key(1), an_hour_ago())
        .await
        .expect("pin state");
    assert_eq!(alice.user_pin, Some(key(1)), "data survives reopening");
    drop(store);
    harness.record_schema_version(99).await;
    match harness.open().await {
        Err(StoreError::Schema(message)) => assert!(message.contains("99"), "{message}"),
        other => panic!("expected a schema error, got {other:?}"),
    }
}

async fn concurrent_commits_for_one_user_pin_exactly_one_key<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let tasks: Vec<_> = (0..32u8)
        .map(|index| {
            let store = store.clone();
            tokio::spawn(async move {
                let certificate = certificate("alice", index + 1, index + 1);
                (index + 1, store.commit_issuance(certificate, event("alice")).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut outcomes = Vec::new();
    for task in tasks {
        let (key_byte, outcome) = task.await.expect("task");
        match outcome.expect("no store error") {
            CommitOutcome::Committed { renewal: false, .. } => winners.push(key_byte),
            other => outcomes.push(other),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one key is pinned: {winners:?}");
    let winner = key(winners[0]);
    assert_eq!(outcomes.len(), 31);
    assert!(
        outcomes
            .iter()
            .all(|outcome| *outcome == CommitOutcome::PinnedToOtherKey(winner)),
        "every loser names the winning key: {outcomes:?}"
    );
    let alice = store
        .pin_state(&user("alice"), &winner, an_hour_ago())
        .await
        .expect("pin state");
    assert_eq!(alice.user_pin, Some(winner));
    assert_eq!(next_index(&store).await, 1, "only the winner appended an entry");
}

async fn concurrent_commits_of_one_key_pin_it_to_exactly_one_user<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let tasks: Vec<_> = (0..16u8)
        .map(|index| {
            let store = store.clone();
            tokio::spawn(async move {
                let user_name = format!("user-{index}");
                let certificate = certificate(&user_name, 42, index + 1);
                store.commit_issuance(certificate, event(&user_name)).await
            })
        })
        .collect();
    let mut committed_count = 0;
    for task in tasks {
        match task.await.expect("task").expect("no store error") {
            CommitOutcome::Committed { renewal: false, .. } => committed_count += 1,
            CommitOutcome::KeyPinnedElsewhere => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(committed_count, 1, "the key belongs to exactly one user");
}

async fn ping_answers<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    store.ping().await.expect("ping");
}

/// Instantiates every behaviour above for one store.
macro_rules! conformance_suite {
    ($module:ident, $harness:ty) => {
        mod $module {
            use super::*;

            conformance_suite!(@tests $harness;
                pins_are_unique_both_ways,
                pin_state_reports_both_directions,
                renewals_are_detected,
                duplicate_serial_is_an_integrity_error_and_writes_nothing,
                latest_certificates_returns_the_newest_per_known_user,
                certificates_since_counts_a_users_window,
                sequencing_gives_contiguous_indices_in_batches,
                proofs_from_stored_nodes_verify,
                a_stale_head_is_refused_and_nothing_is_written,
                concurrent_sequencers_never_fork,
                concurrent_appends_are_each_committed_once,
                a_ca_certificate_is_recorded_once,
                checkpoints_keep_history_and_refuse_a_fork,
                exports_hold_the_latest_checkpoint_and_its_entries,
                migrations_are_idempotent_and_refuse_newer_schemas,
                concurrent_commits_for_one_user_pin_exactly_one_key,
                concurrent_commits_of_one_key_pin_it_to_exactly_one_user,
                ping_answers,
            );
        }
    };
    (@tests $harness:ty; $($behaviour:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $behaviour() {
                super::$behaviour::<$harness>().await;
            }
        )*
    };
}

conformance_suite!(sqlite, SqliteHarness);
conformance_suite!(postgres, PostgresHarness);
