//! The signer guard and the startup check on the embedded store: a database rolled back behind what
//! was signed is refused at startup and never signed while serving; the guard file keeps the truth.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    CA_SERVICE, DevServer, UserKey, UserKeyPair, assert_exits_without_serving, issue, issue_and_wait_for_checkpoint,
};
use tlog::merkle::{Hash, leaf_hash, tree_root};
use tonic::Code;

/// The guard file dev mode configures (`audit.guard_file`, relative to the data directory).
const GUARD_FILE: &str = "audit-signer-guard";

/// The size the guard file records.
fn guarded_size(data_dir: &Path) -> u64 {
    let text = std::fs::read_to_string(data_dir.join(GUARD_FILE)).expect("guard file");
    text.lines()
        .find_map(|line| line.strip_prefix("size "))
        .and_then(|size| size.parse().ok())
        .unwrap_or_else(|| panic!("no size line in the guard file:\n{text}"))
}

/// The embedded store's files (database, WAL, shared memory), those that exist.
fn store_files(data_dir: &Path) -> Vec<PathBuf> {
    ["ca.sqlite3", "ca.sqlite3-wal", "ca.sqlite3-shm"]
        .iter()
        .map(|name| data_dir.join(name))
        .filter(|path| path.exists())
        .collect()
}

/// Runs `serve --dev` on `data_dir`, which must refuse to start; returns what it printed.
fn assert_refuses_to_start(data_dir: &Path) -> String {
    let mut command = Command::new(CA_SERVICE);
    command
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir);
    assert_exits_without_serving(command)
}

/// Rolls the log in the embedded store back to its first `size` entries, as a database
/// administrator could: entries, nodes and checkpoints above it deleted, the head rewritten.
fn truncate_log(data_dir: &Path, size: u64) {
    let database = rusqlite::Connection::open(data_dir.join("ca.sqlite3")).expect("open store");
    database.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
    let entries: Vec<Vec<u8>> = database
        .prepare("SELECT entry FROM audit_entries WHERE leaf_index < ?1 ORDER BY leaf_index")
        .expect("prepare")
        .query_map([size as i64], |row| row.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("entries");
    let leaves: Vec<Hash> = entries.iter().map(|entry| leaf_hash(entry)).collect();
    let root = tree_root(&leaves);
    database
        .execute_batch(&format!(
            "BEGIN;
             DELETE FROM audit_entries WHERE leaf_index >= {size};
             DELETE FROM audit_tree_nodes WHERE (node_index + 1) << level > {size};
             DELETE FROM audit_checkpoints WHERE size > {size};
             COMMIT;"
        ))
        .expect("truncate");
    database
        .execute(
            "UPDATE audit_log_head SET size = ?1, root = ?2 WHERE id = 1",
            rusqlite::params![size as i64, root.to_vec()],
        )
        .expect("roll the head back");
}

#[tokio::test]
async fn a_database_restored_from_an_older_backup_is_refused_at_startup() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), "ecdsa-p256");
    let early_size = issue_and_wait_for_checkpoint(&server, &["alice"]).await.size;
    let data_dir = server.stop();
    // The backup: the store as it was then.
    let backup = directory.path().join("backup");
    std::fs::create_dir(&backup).expect("mkdir");
    for file in store_files(&data_dir) {
        std::fs::copy(&file, backup.join(file.file_name().expect("name"))).expect("back up");
    }

    let server = DevServer::start_in(&data_dir, "ecdsa-p256");
    let later_size = issue_and_wait_for_checkpoint(&server, &["bob", "carol"]).await.size;
    server.stop();
    assert!(later_size > early_size);
    assert_eq!(guarded_size(&data_dir), later_size);

    // Restoring the old backup is a rollback of the log: the service refuses to serve it.
    for file in store_files(&data_dir) {
        std::fs::remove_file(file).expect("remove");
    }
    for file in store_files(&backup) {
        std::fs::copy(&file, data_dir.join(file.file_name().expect("name"))).expect("restore");
    }
    let text = assert_refuses_to_start(&data_dir);
    assert!(text.contains("refusing to serve"), "{text}");
    assert!(
        text.contains(&format!(
            "the log (size {early_size}) is behind the last tree this signer signed (size {later_size})"
        )),
        "{text}"
    );
    assert_eq!(guarded_size(&data_dir), later_size, "the guard keeps what was signed");
}

#[tokio::test]
async fn a_head_behind_its_own_checkpoint_is_refused_even_without_the_guard_file() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), "ecdsa-p256");
    let size = issue_and_wait_for_checkpoint(&server, &["alice", "bob"]).await.size;
    let data_dir = server.stop();
    // Only the head row is rolled back (the checkpoints stay), and the guard file is gone.
    let database = rusqlite::Connection::open(data_dir.join("ca.sqlite3")).expect("open store");
    let first: Vec<u8> = database
        .query_row("SELECT entry FROM audit_entries WHERE leaf_index = 0", [], |row| {
            row.get(0)
        })
        .expect("entry 0");
    database
        .execute(
            "UPDATE audit_log_head SET size = 1, root = ?1 WHERE id = 1",
            [leaf_hash(&first).to_vec()],
        )
        .expect("roll the head back");
    drop(database);
    std::fs::remove_file(data_dir.join(GUARD_FILE)).expect("remove the guard file");
    let text = assert_refuses_to_start(&data_dir);
    assert!(
        text.contains(&format!(
            "the database's log head (size 1) is behind its own latest signed checkpoint (size {size})"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn a_log_truncated_while_serving_is_never_signed_and_issuance_fails_closed() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), "ecdsa-p256");
    let signed_size = issue_and_wait_for_checkpoint(&server, &["alice", "bob", "carol"])
        .await
        .size;
    let data_dir = directory.path().join("data");

    // Behind the running CA's back, the log loses its tail (entries, nodes, checkpoints, head),
    // consistently enough that the database alone no longer shows it.
    let kept = signed_size - 2;
    truncate_log(&data_dir, kept);

    // New issuance is refused: the sequencer will not sign a tree behind the guard, so the entry
    // is never indexed (withheld), and soon the log is reported stalled (refused up front).
    let mut client = server.client().await;
    let key = UserKeyPair::generate(UserKey::EcP256);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answers = Vec::new();
    while !answers
        .iter()
        .any(|message: &String| message.contains("cannot currently record"))
    {
        assert!(
            Instant::now() < deadline,
            "the log was never reported stalled: {answers:?}"
        );
        let started = Instant::now();
        let result = issue(&mut client, "dave", &key.csr("dave")).await;
        let status = result.expect_err("nothing is released on a rolled-back log");
        assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "bounded by audit.sequence_wait_ms"
        );
        answers.push(status.message().to_owned());
    }

    // Nothing above the truncation was signed, and the guard still holds the signed size.
    let database = rusqlite::Connection::open(data_dir.join("ca.sqlite3")).expect("open store");
    let largest: i64 = database
        .query_row("SELECT coalesce(max(size), 0) FROM audit_checkpoints", [], |row| {
            row.get(0)
        })
        .expect("largest checkpoint");
    assert!(
        largest as u64 <= kept,
        "a checkpoint of size {largest} was signed after the rollback"
    );
    drop(database);
    assert_eq!(guarded_size(&data_dir), signed_size);

    // And after a restart the startup check refuses the store outright.
    server.stop();
    let text = assert_refuses_to_start(&data_dir);
    assert!(text.contains("refusing to serve"), "{text}");
}
