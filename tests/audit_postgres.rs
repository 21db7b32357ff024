//! Offline audit of a PostgreSQL store: a replica's log exported with `audit export`, checked with `audit verify`, and rows changed, deleted, swapped, forged or rolled back in the database detected.
//!
//! One replica (`serve --config`) runs on a fresh database (`common::postgres`), issues
//! certificates and refusals until a checkpoint covers them, and is stopped; that database is the
//! template of one fresh copy per tampering (`CREATE DATABASE … TEMPLATE`), so every case starts
//! from the same signed log.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::postgres::{ProvisionedCa, TestDatabase};
use common::{DevServer, UserKey, UserKeyPair, audit_export, audit_verify, ca_info, issue};
use sha2::{Digest, Sha256};
use tonic::Code;

/// The signed log every case starts from.
struct Fixture {
    ca: ProvisionedCa,
    template: TestDatabase,
    vkey: String,
    /// The checkpoint taken after the first round, as the auditor pinned it.
    early: PathBuf,
    early_size: u64,
    /// The final checkpoint, as the auditor pinned it.
    latest: PathBuf,
    size: u64,
    directory: tempfile::TempDir,
    /// The next replica directory for a case's config (0 is the replica that wrote the log).
    next_replica: AtomicUsize,
}

impl Fixture {
    /// A fresh copy of the signed log named `case`: its database and a config pointing at it.
    async fn case(&self, case: &str) -> Case {
        let database = TestDatabase::copy_of(&self.template).await;
        let config = self
            .ca
            .replica_config(self.next_replica.fetch_add(1, Ordering::Relaxed), &database.url);
        Case {
            database,
            config,
            out: self.directory.path().join(format!("export-{case}")),
        }
    }

    /// `audit verify` of the export in `dir`, with `extra` options.
    fn verify(&self, dir: &Path, pinned: Option<&Path>, extra: &[&str]) -> (bool, String) {
        audit_verify(dir, &self.vkey, pinned, extra)
    }

    fn assert_verify_fails(&self, dir: &Path, pinned: Option<&Path>, extra: &[&str], fragment: &str) {
        let (ok, text) = self.verify(dir, pinned, extra);
        assert!(!ok, "verification should fail ({fragment:?}): {text}");
        assert!(text.contains("FAIL "), "a FAIL line: {text}");
        assert!(text.contains(fragment), "output should say {fragment:?}: {text}");
    }
}

/// One tampering: its own database, a config on it and an export directory.
struct Case {
    database: TestDatabase,
    config: PathBuf,
    out: PathBuf,
}

impl Case {
    /// Runs the SQL as a database administrator would, behind the CA's back.
    async fn tamper(&self, sql: &str) {
        self.database
            .client()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|error| panic!("tamper with {sql:?}: {error}"));
    }

    fn export(&self) -> (bool, String) {
        audit_export(&self.config, &self.out, &[])
    }

    fn assert_exported(&self) {
        let (ok, text) = self.export();
        assert!(ok, "export failed: {text}");
    }
}

/// Issues to each `(user, key)` in turn, expecting a certificate (`None`) or a refusal with the
/// given code (a second key for a user, a key pinned to another user); a refusal is an audit entry
/// too. Returns how many entries were written.
async fn issue_round(server: &DevServer, requests: &[(&str, &UserKeyPair, Option<Code>)]) -> u64 {
    let mut identity = server.client().await;
    for (user, key, refusal) in requests {
        let result = issue(&mut identity, user, &key.csr(user)).await;
        match (refusal, result) {
            (None, Ok(_)) => {}
            (Some(code), Err(status)) if status.code() == *code => {}
            (expected, result) => panic!("{user}: expected refusal {expected:?}, got {result:?}"),
        }
    }
    requests.len() as u64
}

/// Waits until every entry is sequenced and a checkpoint of `size` entries is stored; returns it.
async fn checkpoint_covering(database: &TestDatabase, size: u64) -> String {
    let client = database.client().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM audit_entries),
                        (SELECT count(*) FROM audit_entries WHERE leaf_index IS NULL),
                        (SELECT note FROM audit_checkpoints ORDER BY size DESC LIMIT 1),
                        (SELECT max(size) FROM audit_checkpoints)",
                &[],
            )
            .await
            .expect("log state");
        let (entries, pending): (i64, i64) = (row.get(0), row.get(1));
        let signed: Option<i64> = row.get(3);
        assert_eq!(entries, i64::try_from(size).expect("small"), "one entry per request");
        if pending == 0 && signed == Some(entries) {
            return row.get(2);
        }
        assert!(Instant::now() < deadline, "no checkpoint of size {size} within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs one replica on a fresh database: two rounds of issuances and refusals, a checkpoint
/// pinned after each; then stops it.
async fn signed_log() -> Fixture {
    let ca = ProvisionedCa::create();
    let template = TestDatabase::create().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let replica = DevServer::start_with_config(&ca.replica_config(0, &template.url));
    let vkey = ca_info(&mut replica.client().await).await.checkpoint_verifier_keys[0].clone();
    let keys: Vec<UserKeyPair> = (0..4).map(|_| UserKeyPair::generate(UserKey::EcP256)).collect();

    // The CA's own entry (its certificate, logged at first start), then the first round.
    let early_size = 1 + issue_round(
        &replica,
        &[
            ("alice", &keys[0], None),
            ("bob", &keys[1], None),
            ("alice", &keys[2], Some(Code::FailedPrecondition)),
        ],
    )
    .await;
    let early = directory.path().join("early.txt");
    std::fs::write(&early, checkpoint_covering(&template, early_size).await).expect("write pinned");

    let size = early_size
        + issue_round(
            &replica,
            &[
                ("carol", &keys[2], None),
                ("alice", &keys[0], None),
                ("dave", &keys[1], Some(Code::AlreadyExists)),
            ],
        )
        .await;
    let latest = directory.path().join("latest.txt");
    std::fs::write(&latest, checkpoint_covering(&template, size).await).expect("write pinned");
    replica.stop();
    Fixture {
        ca,
        template,
        vkey,
        early,
        early_size,
        latest,
        size,
        directory,
        next_replica: AtomicUsize::new(1),
    }
}

/// SQL that forges, as someone with the database and not the CA would, a well-formed `kind` entry
/// for `user` naming `key_sha256` into the outbox (no log index: the sequencer logs it), with a
/// certificate row that matches it.
fn forge(kind: &str, user: &str, key_sha256: &str) -> String {
    let time = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    let serial = hex::encode(rand::random::<[u8; 16]>());
    let certificate_der = b"not a certificate the CA signed";
    let entry = format!(
        "e2ee-ca audit entry v1\nkind {kind}\ntime {time}\nactor sync-server\nsubject {user}\nkey-sha256 {key_sha256}\n\
         key-type ecdsa-p256\nserial {serial}\ncertificate-sha256 {}\nnonce {}\n",
        hex::encode(Sha256::digest(certificate_der)),
        hex::encode(rand::random::<[u8; 16]>()),
    );
    let entry = hex::encode(entry.as_bytes());
    format!(
        "WITH forged AS (
             INSERT INTO audit_entries (entry, entry_hash, subject)
             VALUES (decode('{entry}', 'hex'), sha256(decode('{entry}', 'hex')), '{user}') RETURNING id)
         INSERT INTO certificates (serial, user_id, key_sha256, certificate_der, not_before, not_after, issued_at, entry_id)
         SELECT decode('{serial}', 'hex'), '{user}', decode('{key_sha256}', 'hex'), decode('{}', 'hex'), now(), now(), now(), id
         FROM forged",
        hex::encode(certificate_der)
    )
}

/// SQL that flips one byte inside the `subject` line of the entry at `index` (same length, still UTF-8).
fn flip_subject_byte(index: u64) -> String {
    format!(
        "UPDATE audit_entries
         SET entry = set_byte(entry, position(convert_to(E'\\nsubject ', 'UTF8') IN entry) + 8,
                              get_byte(entry, position(convert_to(E'\\nsubject ', 'UTF8') IN entry) + 8) # 1)
         WHERE leaf_index = {index}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_postgresql_store_is_detected_offline() {
    let fixture = signed_log().await;
    let (early_size, size) = (fixture.early_size, fixture.size);
    assert_eq!((early_size, size), (4, 7));

    // The untouched store exports a log that verifies, alone and against both pinned checkpoints:
    // its key history replays and its certificates match their entries.
    let case = fixture.case("clean").await;
    case.assert_exported();
    for pinned in [None, Some(fixture.early.as_path()), Some(fixture.latest.as_path())] {
        let (ok, text) = fixture.verify(&case.out, pinned, &[]);
        assert!(ok, "pinned {pinned:?}: {text}");
        for line in [
            format!("OK: the export of {size} entries verifies"),
            "users 3, pins 3, renewals 1, identity resets 0".to_owned(),
            "PASS certificates.bin: 4 stored certificates match the entries that record them".to_owned(),
        ] {
            assert!(text.contains(&line), "{line:?} in {text}");
        }
    }

    // One byte of a stored entry after it was checkpointed: the root differs, and the stored
    // leaf hashes, which lead to the signed root, name the entry.
    let case = fixture.case("flipped-late").await;
    case.tamper(&flip_subject_byte(size - 1)).await;
    case.assert_exported();
    let altered = format!("entry {} was altered after it was logged", size - 1);
    fixture.assert_verify_fails(&case.out, None, &[], &altered);
    fixture.assert_verify_fails(&case.out, Some(&fixture.early), &[], &altered);
    // Without the stored leaves (an older export) the root only says that something changed, and
    // the pinned checkpoint narrows the change down to the entries it does not cover.
    std::fs::remove_file(case.out.join("leaves.bin")).expect("remove leaves.bin");
    fixture.assert_verify_fails(
        &case.out,
        None,
        &[],
        &format!("exported checkpoint (size {size}) does not match the entries"),
    );
    fixture.assert_verify_fails(
        &case.out,
        Some(&fixture.early),
        &[],
        &format!("the change is in entries {early_size}..{size}"),
    );

    // One byte of the first entry: inside what the early checkpoint covers.
    let case = fixture.case("flipped-early").await;
    case.tamper(&flip_subject_byte(0)).await;
    case.assert_exported();
    fixture.assert_verify_fails(
        &case.out,
        Some(&fixture.early),
        &[],
        "entry 0 was altered after it was logged",
    );

    // Two entries' bytes swapped (indices kept): only the recomputed root can tell, and the stored
    // leaves name the first of them. The time check would name the later entry if the two were
    // written more than its tolerance apart (a slow machine); a wide tolerance keeps this case
    // about the root.
    let case = fixture.case("swapped").await;
    let wide_tolerance = ["--time-tolerance-ms", "3600000"];
    case.tamper(
        "UPDATE audit_entries AS target SET entry = source.entry
         FROM audit_entries AS source
         WHERE (target.leaf_index, source.leaf_index) IN ((1, 2), (2, 1))",
    )
    .await;
    case.assert_exported();
    fixture.assert_verify_fails(
        &case.out,
        None,
        &wide_tolerance,
        "entry 1 was altered after it was logged",
    );

    // The tree's stored leaf changed too, to the altered entry's hash: the stored leaves no
    // longer lead to the signed root, so they cannot name the entry.
    let case = fixture.case("flipped-and-leaf").await;
    case.tamper(&flip_subject_byte(size - 1)).await;
    case.tamper(&format!(
        "UPDATE audit_tree_nodes SET hash = sha256('\\x00'::bytea || (SELECT entry FROM audit_entries WHERE leaf_index = {}))
         WHERE level = 0 AND node_index = {}",
        size - 1,
        size - 1
    ))
    .await;
    case.assert_exported();
    fixture.assert_verify_fails(&case.out, None, &[], "do not lead to the checkpoint's root either");

    // One byte of a stored certificate: named by its serial and the entry that records it (bob's
    // issuance, entry 2).
    let case = fixture.case("certificate-changed").await;
    let bob_serial: String = case
        .database
        .client()
        .await
        .query_one(
            "SELECT encode(serial, 'hex') FROM certificates WHERE user_id = 'bob'",
            &[],
        )
        .await
        .expect("bob's certificate")
        .get(0);
    case.tamper(
        "UPDATE certificates SET certificate_der = set_byte(certificate_der, 100, get_byte(certificate_der, 100) # 1)
         WHERE user_id = 'bob'",
    )
    .await;
    case.assert_exported();
    fixture.assert_verify_fails(
        &case.out,
        None,
        &[],
        &format!("stored certificate {bob_serial} does not match entry 2, which records it: the SHA-256 of its DER"),
    );

    // Entries forged into the outbox behind the CA's back, with certificate rows that match them,
    // and logged and signed by a running replica's sequencer: the replayed key history names them.
    let attacker = UserKeyPair::generate(UserKey::EcP256).fingerprint();
    for (name, kind, user, fragment) in [
        (
            "forged-issuance",
            "issuance",
            "alice",
            format!("FAIL entry {size}: issuance pins key {attacker} for alice, who is already pinned to key"),
        ),
        (
            "forged-renewal",
            "renewal",
            "bob",
            format!("FAIL entry {size}: renewal for bob names key {attacker}, but bob's pinned key is"),
        ),
    ] {
        let case = fixture.case(name).await;
        let replica = DevServer::start_with_config(&case.config);
        case.tamper(&forge(kind, user, &attacker)).await;
        checkpoint_covering(&case.database, size + 1).await;
        replica.stop();
        case.assert_exported();
        fixture.assert_verify_fails(&case.out, None, &[], &fragment);
    }

    // An entry deleted from the middle: the export refuses, naming the short range. (Pins and
    // certificates reference their entries by plain columns, not foreign keys: the log check, not the
    // schema, guards them.)
    let case = fixture.case("deleted").await;
    case.tamper("DELETE FROM audit_entries WHERE leaf_index = 1").await;
    let (ok, text) = case.export();
    assert!(!ok, "export of a store missing an entry must fail: {text}");
    assert!(
        text.contains(&format!(
            "the store returned {} entries for [0, {size}) below its latest checkpoint",
            size - 1
        )),
        "{text}"
    );

    // The tail deleted, head and checkpoints left: the export refuses the same way.
    let case = fixture.case("truncated").await;
    case.tamper(&format!("DELETE FROM audit_entries WHERE leaf_index >= {early_size}"))
        .await;
    let (ok, text) = case.export();
    assert!(!ok, "export of a truncated store must fail: {text}");
    assert!(
        text.contains(&format!(
            "the store returned {early_size} entries for [0, {size}) below its latest checkpoint"
        )),
        "{text}"
    );

    // The log rolled back to the early checkpoint (entries, the subtrees over them, the head and
    // the later checkpoints), the pins and certificates those entries recorded left in place: they
    // are recorded by no entry of the exported log.
    let case = fixture.case("rolled-back").await;
    case.tamper(&format!(
        "BEGIN;
         DELETE FROM audit_entries WHERE leaf_index >= {early_size};
         DELETE FROM audit_tree_nodes WHERE (node_index + 1) << level > {early_size};
         UPDATE audit_log_head SET size = checkpoint.size, root = checkpoint.root
           FROM audit_checkpoints AS checkpoint WHERE checkpoint.size = {early_size};
         DELETE FROM audit_checkpoints WHERE size > {early_size};
         COMMIT;"
    ))
    .await;
    let head: i64 = case
        .database
        .client()
        .await
        .query_one("SELECT size FROM audit_log_head", &[])
        .await
        .expect("head")
        .get(0);
    assert_eq!(
        head,
        i64::try_from(early_size).expect("small"),
        "the head was rolled back"
    );
    case.assert_exported();
    fixture.assert_verify_fails(
        &case.out,
        Some(&fixture.early),
        &[],
        "is recorded by no entry of the exported log (the store links it to no stored entry)",
    );
    // With them rolled back too, the store is a consistent log of the early size, so its export
    // verifies on its own; the auditor's later pinned checkpoint catches it.
    case.tamper(
        "BEGIN;
         DELETE FROM certificates WHERE entry_id NOT IN (SELECT id FROM audit_entries);
         DELETE FROM identities WHERE pin_entry_id NOT IN (SELECT id FROM audit_entries);
         COMMIT;",
    )
    .await;
    case.assert_exported();
    let (ok, text) = fixture.verify(&case.out, Some(&fixture.early), &[]);
    assert!(ok, "a rollback to a signed size is consistent on its own: {text}");
    fixture.assert_verify_fails(
        &case.out,
        Some(&fixture.latest),
        &[],
        &format!(
            "pinned checkpoint (size {size}) is larger than the exported checkpoint (size {early_size}): the log was rolled back"
        ),
    );
}
