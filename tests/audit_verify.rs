//! Offline audit end to end: `ca-service audit export` from a dev server's store, `audit verify` with no database or HSM, and tampered exports, forks, rollbacks, a tampered store, forged entries and changed certificates detected.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use std::path::{Path, PathBuf};

use common::{
    DevServer, UserKey, UserKeyPair, audit_export, audit_verify, ca_info, issue, issue_and_wait_for_checkpoint,
};
use e2ee_ca_proto::v1::admin_client::AdminClient;
use e2ee_ca_proto::v1::revoke_certificate_request::Target;
use e2ee_ca_proto::v1::{
    ApproveRequestRequest, RequestIdentityResetRequest, RevocationReason, RevokeCertificateRequest,
};
use sha2::{Digest, Sha256};
use tlog::checkpoint::SignedCheckpoint;
use tlog::key::VerifierKey;
use tlog::note::SignedNote;

/// The first line of `entries.bin` (see ca-service/src/transparency/export.rs).
const MAGIC: &[u8] = b"e2ee-ca log entries v1\n";

fn export(data_dir: &Path, out: &Path, vkey: &str) {
    let (ok, text) = audit_export(&data_dir.join("ca-service.toml"), out, &["--vkey", vkey]);
    assert!(ok, "export failed: {text}");
}

fn verify(dir: &Path, vkey: &str, pinned: Option<&Path>) -> (bool, String) {
    audit_verify(dir, vkey, pinned, &[])
}

fn assert_fails(result: (bool, String), fragment: &str) {
    let (ok, text) = result;
    assert!(!ok, "verification should fail ({fragment:?}): {text}");
    assert!(text.contains(fragment), "output should say {fragment:?}: {text}");
}

/// The records of `entries.bin`: (index, bytes).
fn records(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let data = std::fs::read(dir.join("entries.bin")).expect("entries.bin");
    let mut rest = data.strip_prefix(MAGIC).expect("format line");
    let mut out = Vec::new();
    while !rest.is_empty() {
        let index = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        let length = u32::from_be_bytes(rest[8..12].try_into().expect("4 bytes")) as usize;
        out.push((index, rest[12..12 + length].to_vec()));
        rest = &rest[12 + length..];
    }
    out
}

fn write_records(dir: &Path, records: &[(u64, Vec<u8>)]) {
    let mut data = MAGIC.to_vec();
    for (index, bytes) in records {
        data.extend_from_slice(&index.to_be_bytes());
        data.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        data.extend_from_slice(bytes);
    }
    std::fs::write(dir.join("entries.bin"), data).expect("write entries.bin");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A copy of the export in `dir` named `name`, for one tampering.
fn tampered(dir: &Path, name: &str) -> PathBuf {
    let copy = dir.with_file_name(name);
    copy_dir(dir, &copy);
    copy
}

/// Flips one byte inside the `subject` line of `bytes`.
fn flip_subject_byte(bytes: &mut [u8]) {
    let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
    let at = text.find("\nsubject ").expect("subject line") + "\nsubject ".len();
    bytes[at] ^= 0x01;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_verify_offline_and_tampering_is_named() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), "ecdsa-p256");
    let mut identity = server.client().await;
    let vkey_text = ca_info(&mut identity).await.checkpoint_verifier_keys[0].clone();
    let vkey = VerifierKey::parse(&vkey_text).expect("vkey");

    // An early state: a checkpoint the auditor pins, and an export of it.
    let pinned_text = issue_and_wait_for_checkpoint(&server, &["alice", "bob"]).await.note;
    let pinned = directory.path().join("pinned.txt");
    std::fs::write(&pinned, &pinned_text).expect("write pinned");
    let data_dir = server.stop();
    let early = directory.path().join("early");
    export(&data_dir, &early, &vkey_text);
    let fork_dir = directory.path().join("fork-data");
    copy_dir(&data_dir, &fork_dir);

    // The log grows; the auditor pins its later checkpoint too.
    let server = DevServer::start_in(&data_dir, "ecdsa-p256");
    let later_text = issue_and_wait_for_checkpoint(&server, &["carol", "dave"]).await.note;
    let later_pinned = directory.path().join("later-pinned.txt");
    std::fs::write(&later_pinned, &later_text).expect("write later pinned");
    server.stop();
    let export_dir = directory.path().join("export");
    export(&data_dir, &export_dir, &vkey_text);
    assert_eq!(
        std::fs::read_to_string(export_dir.join("vkey.txt"))
            .expect("vkey.txt")
            .trim(),
        vkey_text
    );

    // The untouched exports verify, with and without the pinned checkpoint; the vkey file works too.
    let (ok, text) = verify(&export_dir, &vkey_text, None);
    assert!(ok, "{text}");
    assert!(text.contains("PASS exported checkpoint: signature verifies"), "{text}");
    assert!(text.contains("equals the exported checkpoint's root"), "{text}");
    assert!(text.contains("OK: the export of"), "{text}");
    let (ok, text) = verify(
        &export_dir,
        export_dir.join("vkey.txt").to_str().expect("utf-8"),
        Some(&pinned),
    );
    assert!(ok, "{text}");
    assert!(text.contains("is consistent with the exported checkpoint"), "{text}");
    let (ok, text) = verify(&early, &vkey_text, Some(&pinned));
    assert!(ok, "{text}");
    // An export from before leaves.bin and certificates.bin verifies, and says what it could not check.
    let old = tampered(&export_dir, "old-format");
    for file in ["leaves.bin", "certificates.bin"] {
        std::fs::remove_file(old.join(file)).expect("remove");
    }
    let (ok, text) = verify(&old, &vkey_text, Some(&pinned));
    assert!(ok, "{text}");
    assert!(text.contains("PASS leaves.bin not exported"), "{text}");
    assert!(text.contains("certificates not exported"), "{text}");

    let all = records(&export_dir);
    let size = all.len() as u64;
    assert!(size >= 4, "four issuances at least: {size}");
    let pinned_size = SignedNote::parse(&pinned_text)
        .ok()
        .and_then(|note| SignedCheckpoint::open(note, vkey.name().as_str(), std::slice::from_ref(&vkey)).ok())
        .expect("pinned opens")
        .checkpoint()
        .size();
    let victim = (size - 1) as usize;

    // Another key is not trusted.
    let other = VerifierKey::ed25519(vkey.name().clone(), [7; 32]).to_string();
    assert_fails(verify(&export_dir, &other, None), "exported checkpoint (");

    // One byte of an entry changed: the checkpoint does not match, and the stored leaf hashes,
    // which do, name the entry.
    let dir = tampered(&export_dir, "flipped");
    let mut changed = all.clone();
    flip_subject_byte(&mut changed[victim].1);
    write_records(&dir, &changed);
    let altered = format!("entry {victim} was altered after it was logged");
    assert_fails(verify(&dir, &vkey_text, None), &altered);
    assert_fails(verify(&dir, &vkey_text, Some(&pinned)), &altered);
    // An export without leaves.bin (an older one) can only say that the root differs; the pinned
    // checkpoint narrows it down.
    std::fs::remove_file(dir.join("leaves.bin")).expect("remove leaves.bin");
    assert_fails(
        verify(&dir, &vkey_text, None),
        &format!("exported checkpoint (size {size}) does not match the entries"),
    );
    assert_fails(
        verify(&dir, &vkey_text, Some(&pinned)),
        &format!("the change is in entries {pinned_size}..{size}"),
    );
    // Stored leaves that do not lead to the signed root authenticate nothing.
    let dir = tampered(&export_dir, "flipped-with-leaves");
    write_records(&dir, &changed);
    let mut leaves = std::fs::read(dir.join("leaves.bin")).expect("leaves.bin");
    let last = leaves.len() - 1;
    leaves[last] ^= 1;
    std::fs::write(dir.join("leaves.bin"), &leaves).expect("write leaves.bin");
    assert_fails(
        verify(&dir, &vkey_text, None),
        "do not lead to the checkpoint's root either",
    );
    // A stored leaf changed while the entries are intact: the store's tree was changed.
    let dir = tampered(&export_dir, "leaf-changed");
    std::fs::write(dir.join("leaves.bin"), &leaves).expect("write leaves.bin");
    assert_fails(
        verify(&dir, &vkey_text, None),
        &format!("the stored tree's leaf {victim} (leaves.bin) differs from entry {victim}'s leaf hash"),
    );

    // An entry deleted from the middle.
    let dir = tampered(&export_dir, "deleted");
    let mut fewer = all.clone();
    fewer.remove(1);
    write_records(&dir, &fewer);
    assert_fails(
        verify(&dir, &vkey_text, None),
        "entry index 2 at position 1, expected index 1",
    );

    // Two entries swapped.
    let dir = tampered(&export_dir, "swapped");
    let mut swapped = all.clone();
    swapped.swap(1, 2);
    write_records(&dir, &swapped);
    assert_fails(
        verify(&dir, &vkey_text, None),
        "entry index 2 at position 1, expected index 1",
    );

    // Swapped with their indices rewritten to look contiguous: only the root can tell, and the
    // stored leaves name the first of the two.
    let dir = tampered(&export_dir, "swapped-renumbered");
    let mut renumbered = swapped.clone();
    renumbered[1].0 = 1;
    renumbered[2].0 = 2;
    write_records(&dir, &renumbered);
    assert_fails(
        verify(&dir, &vkey_text, None),
        "entry 1 was altered after it was logged",
    );

    // An entry dated a year back (same length): named by the time check.
    let dir = tampered(&export_dir, "backdated");
    let mut backdated = all.clone();
    let text = String::from_utf8(backdated[2].1.clone()).expect("utf-8");
    let at = text.find("\ntime ").expect("time line") + "\ntime ".len();
    let year: u32 = text[at..at + 4].parse().expect("year");
    backdated[2].1[at..at + 4].copy_from_slice((year - 1).to_string().as_bytes());
    write_records(&dir, &backdated);
    assert_fails(verify(&dir, &vkey_text, None), "entry 2: time");
    assert_fails(verify(&dir, &vkey_text, None), "is before entry 1's time");

    // The tail truncated: the checkpoint claims more than the entries.
    let dir = tampered(&export_dir, "truncated");
    write_records(&dir, &all[..victim]);
    assert_fails(
        verify(&dir, &vkey_text, None),
        &format!(
            "exported checkpoint claims size {size} but entries.bin holds {victim} entries (entries {victim}..{size} are missing)"
        ),
    );

    // A record cut in the middle.
    let dir = tampered(&export_dir, "cut");
    let data = std::fs::read(export_dir.join("entries.bin")).expect("read");
    std::fs::write(dir.join("entries.bin"), &data[..data.len() - 3]).expect("write");
    assert_fails(
        verify(&dir, &vkey_text, None),
        &format!("ends inside the record at position {victim}"),
    );

    // A checkpoint with its body edited no longer verifies.
    let dir = tampered(&export_dir, "bad-checkpoint");
    let note = std::fs::read_to_string(export_dir.join("checkpoint.txt")).expect("read");
    let edited = note.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1);
    std::fs::write(dir.join("checkpoint.txt"), edited).expect("write");
    assert_fails(verify(&dir, &vkey_text, None), "exported checkpoint");
    assert_fails(verify(&dir, &vkey_text, None), "rejected under the trusted key");

    // Rollback: the auditor pinned the later checkpoint, the export is the early one.
    assert_fails(
        verify(&early, &vkey_text, Some(&later_pinned)),
        &format!("pinned checkpoint (size {size}) is larger than the exported checkpoint"),
    );

    // Fork: the log rewritten from the early state (same key, other entries) and re-signed.
    let server = DevServer::start_in(&fork_dir, "ecdsa-p256");
    issue_and_wait_for_checkpoint(&server, &["erin", "frank", "grace"]).await;
    server.stop();
    let fork = directory.path().join("fork");
    export(&fork_dir, &fork, &vkey_text);
    let (ok, text) = verify(&fork, &vkey_text, None);
    assert!(ok, "a fork verifies on its own: {text}");
    assert_fails(
        verify(&fork, &vkey_text, Some(&later_pinned)),
        &format!("pinned checkpoint (size {size}) is not consistent with the exported checkpoint"),
    );

    // The store itself tampered: one byte of a stored entry changed, then exported.
    let database = rusqlite::Connection::open(data_dir.join("ca.sqlite3")).expect("open store");
    let mut stored: Vec<u8> = database
        .query_row(
            "SELECT entry FROM audit_entries WHERE leaf_index = ?1",
            [victim as i64],
            |row| row.get(0),
        )
        .expect("stored entry");
    flip_subject_byte(&mut stored);
    database
        .execute(
            "UPDATE audit_entries SET entry = ?1 WHERE leaf_index = ?2",
            rusqlite::params![stored, victim as i64],
        )
        .expect("tamper");
    drop(database);
    let from_store = directory.path().join("from-tampered-store");
    export(&data_dir, &from_store, &vkey_text);
    assert_fails(
        verify(&from_store, &vkey_text, Some(&pinned)),
        &format!("entry {victim} was altered after it was logged"),
    );
}

/// An entry as the issuer writes one for `user` and a certificate, forged by someone who holds the
/// database file and not the CA: well formed, dated now, naming any key.
fn forged_entry(kind: &str, user: &str, key_sha256: &str, serial: &[u8], certificate_der: &[u8]) -> Vec<u8> {
    let time = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    format!(
        "e2ee-ca audit entry v1\nkind {kind}\ntime {time}\nactor sync-server\nsubject {user}\nkey-sha256 {key_sha256}\n\
         key-type ecdsa-p256\nserial {}\ncertificate-sha256 {}\nnonce {}\n",
        hex::encode(serial),
        hex::encode(Sha256::digest(certificate_der)),
        hex::encode(rand::random::<[u8; 16]>()),
    )
    .into_bytes()
}

/// Forges, behind the running CA's back, a `kind` entry for `user` naming `key_sha256` into the
/// outbox of the store in `data_dir` (no log index: the CA's sequencer logs and signs it), and a
/// certificate row matching it; returns the entry's row id.
fn forge(data_dir: &Path, kind: &str, user: &str, key_sha256: &str) -> i64 {
    let serial: [u8; 16] = rand::random();
    let certificate_der = b"not a certificate the CA signed".to_vec();
    let entry = forged_entry(kind, user, key_sha256, &serial, &certificate_der);
    let database = rusqlite::Connection::open(data_dir.join("ca.sqlite3")).expect("open store");
    database
        .busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    database
        .execute(
            "INSERT INTO audit_entries (entry, entry_hash, subject) VALUES (?1, ?2, ?3)",
            rusqlite::params![entry, Sha256::digest(&entry).as_slice(), user],
        )
        .expect("forge the entry");
    let entry_id = database.last_insert_rowid();
    database
        .execute(
            "INSERT INTO certificates (serial, user_id, key_sha256, certificate_der, not_before, not_after, issued_at, entry_id)
             VALUES (?1, ?2, ?3, ?4, 0, 0, 0, ?5)",
            rusqlite::params![
                serial.as_slice(),
                user,
                hex::decode(key_sha256).expect("hex"),
                certificate_der,
                entry_id
            ],
        )
        .expect("forge the certificate");
    entry_id
}

/// The log index the sequencer gave the entry with row id `entry_id`.
fn log_index(data_dir: &Path, entry_id: i64) -> u64 {
    let database = rusqlite::Connection::open(data_dir.join("ca.sqlite3")).expect("open store");
    let index: i64 = database
        .query_row(
            "SELECT leaf_index FROM audit_entries WHERE id = ?1",
            [entry_id],
            |row| row.get(0),
        )
        .expect("the forged entry was sequenced");
    u64::try_from(index).expect("an index")
}

/// Runs `sql` on the stopped store in `data_dir`, as an attacker with the database file would.
fn tamper(data_dir: &Path, sql: &str, params: impl rusqlite::Params) {
    let database = rusqlite::Connection::open(data_dir.join("ca.sqlite3")).expect("open store");
    let changed = database.execute(sql, params).expect("tamper");
    assert_eq!(changed, 1, "{sql}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_history_and_the_stored_certificates_are_checked_against_the_log() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), "ecdsa-p256");
    let mut identity = server.client().await;
    let vkey = ca_info(&mut identity).await.checkpoint_verifier_keys[0].clone();

    // The honest history: issuances, a renewal, a dual-control reset and a revocation.
    let alice_key = UserKeyPair::generate(UserKey::EcP256);
    issue(&mut identity, "alice", &alice_key.csr("alice"))
        .await
        .expect("alice");
    let renewed = issue(&mut identity, "alice", &alice_key.csr("alice"))
        .await
        .expect("renewal");
    assert!(renewed.renewal);
    let bob_key = UserKeyPair::generate(UserKey::EcP256);
    let bob = issue(&mut identity, "bob", &bob_key.csr("bob")).await.expect("bob");
    let carol_key = UserKeyPair::generate(UserKey::EcP256);
    let carol = issue(&mut identity, "carol", &carol_key.csr("carol"))
        .await
        .expect("carol");
    let mut admin_alice = AdminClient::new(server.connect_as("admin-alice").await);
    let mut admin_bob = AdminClient::new(server.connect_as("admin-bob").await);
    let request = admin_alice
        .request_identity_reset(RequestIdentityResetRequest {
            user_id: "alice".to_owned(),
            reason: "lost every device".to_owned(),
            revocation_reason: 0,
        })
        .await
        .expect("requested")
        .into_inner()
        .request
        .expect("request");
    admin_bob
        .approve_request(ApproveRequestRequest {
            request_id: request.request_id,
        })
        .await
        .expect("approved");
    let new_key = UserKeyPair::generate(UserKey::EcP256);
    let reset = issue(&mut identity, "alice", &new_key.csr("alice"))
        .await
        .expect("reset");
    assert_eq!(reset.key_fingerprint, new_key.fingerprint());
    admin_alice
        .revoke_certificate(RevokeCertificateRequest {
            target: Some(Target::SerialHex(bob.serial_hex.clone())),
            reason: RevocationReason::KeyCompromise.into(),
        })
        .await
        .expect("revoked");
    issue_and_wait_for_checkpoint(&server, &["dave"]).await;
    let data_dir = server.stop();
    let honest = directory.path().join("honest");
    export(&data_dir, &honest, &vkey);
    let (ok, text) = verify(&honest, &vkey, None);
    assert!(ok, "{text}");
    for line in [
        "PASS leaves.bin: the store's",
        "PASS key history replayed: 4 users pinned (4 issuances, 1 renewals, 1 identity resets",
        "PASS certificates.bin: 6 stored certificates match the entries that record them",
        "users 4, pins 4, renewals 1, identity resets 1, requests 1 (approved 1)",
        "certificates checked 6, beyond the checkpoint 0",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
    let index = |issued: &e2ee_ca_proto::v1::IssueCertificateResponse| issued.log_entry.as_ref().expect("entry").index;

    // One byte of a stored certificate changed: named by its serial and the entry recording it.
    let case = directory.path().join("certificate-changed");
    copy_dir(&data_dir, &case);
    let serial = hex::decode(&carol.serial_hex).expect("hex");
    let mut der: Vec<u8> = rusqlite::Connection::open(case.join("ca.sqlite3"))
        .expect("open store")
        .query_row(
            "SELECT certificate_der FROM certificates WHERE serial = ?1",
            [&serial],
            |row| row.get(0),
        )
        .expect("carol's certificate");
    der[100] ^= 1;
    tamper(
        &case,
        "UPDATE certificates SET certificate_der = ?1 WHERE serial = ?2",
        rusqlite::params![der, serial],
    );
    let out = directory.path().join("certificate-changed-export");
    export(&case, &out, &vkey);
    assert_fails(
        verify(&out, &vkey, None),
        &format!(
            "stored certificate {} does not match entry {}, which records it: the SHA-256 of its DER",
            carol.serial_hex,
            index(&carol)
        ),
    );

    // A stored certificate deleted (the reset's; the ones it revoked are held by their
    // revocations): the entry recording it names it missing.
    let case = directory.path().join("certificate-deleted");
    copy_dir(&data_dir, &case);
    tamper(
        &case,
        "DELETE FROM certificates WHERE serial = ?1",
        [hex::decode(&reset.serial_hex).expect("hex")],
    );
    let out = directory.path().join("certificate-deleted-export");
    export(&case, &out, &vkey);
    assert_fails(
        verify(&out, &vkey, None),
        &format!(
            "entry {} records certificate {} of alice, which the store does not hold: missing certificate",
            index(&reset),
            reset.serial_hex
        ),
    );

    // A forged issuance for alice with an attacker's key, logged and signed by the running CA:
    // a key change without an approved reset, though its certificate row matches it.
    let attacker = UserKeyPair::generate(UserKey::EcP256).fingerprint();
    for (name, kind, user, fragment) in [
        (
            "forged-issuance",
            "issuance",
            "alice",
            format!(
                "issuance pins key {attacker} for alice, who is already pinned to key {} (entry {})",
                new_key.fingerprint(),
                index(&reset)
            ),
        ),
        (
            "forged-renewal",
            "renewal",
            "carol",
            format!(
                "renewal for carol names key {attacker}, but carol's pinned key is {} (entry {})",
                carol_key.fingerprint(),
                index(&carol)
            ),
        ),
    ] {
        let case = directory.path().join(name);
        copy_dir(&data_dir, &case);
        let server = DevServer::start_in(&case, "ecdsa-p256");
        let forged = forge(&case, kind, user, &attacker);
        issue_and_wait_for_checkpoint(&server, &["zoe"]).await;
        server.stop();
        let forged_index = log_index(&case, forged);
        let out = directory.path().join(format!("{name}-export"));
        export(&case, &out, &vkey);
        assert_fails(
            verify(&out, &vkey, None),
            &format!("FAIL entry {forged_index}: {fragment}"),
        );
    }
}
