//! A hostile database and a hostile caller against the real binary: pins, certificates, wrapped keys, escrow deposits and log rows changed behind the CA's back are caught before anything is signed or served, renewals racing the rate limit stay within it, refusals cannot flood the log, plaintext is never served off loopback, and the service's files are private.
//!
//! Each store case runs on the embedded store (`serve --dev` over mTLS, its SQLite file edited with rusqlite
//! while the service runs) and on PostgreSQL (`serve --config` on a fresh database, edited with
//! tokio-postgres): the attack first, then the refusal or the detection.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::postgres::{ProvisionedCa, TestDatabase};
use common::{CA_SERVICE, DevServer, UserKey, UserKeyPair, assert_exits_without_serving, issue};
use e2ee_ca_proto::v1::admin_client::AdminClient;
use e2ee_ca_proto::v1::{GetCertificatesRequest, GetIdentityRequest};
use tonic::Code;

/// Where a case's store lives, and how an attacker with database access edits it.
enum Store {
    Embedded {
        data_dir: PathBuf,
    },
    Postgres {
        /// Held for its directory (the dev CA and the replica's token), removed when dropped.
        _ca: ProvisionedCa,
        database: TestDatabase,
        config: PathBuf,
    },
}

/// A value bound to a statement's `$1` (or `$2`).
enum Value<'a> {
    Bytes(&'a [u8]),
    Text(&'a str),
}

impl Store {
    async fn embedded(directory: &Path) -> (Store, DevServer) {
        let data_dir = directory.join("data");
        let server = DevServer::start_in(&data_dir, "ecdsa-p256");
        (Store::Embedded { data_dir }, server)
    }

    async fn postgres() -> (Store, DevServer) {
        let ca = ProvisionedCa::create();
        let database = TestDatabase::create().await;
        let config = ca.replica_config(0, &database.url);
        let server = DevServer::start_with_config(&config);
        (
            Store::Postgres {
                _ca: ca,
                database,
                config,
            },
            server,
        )
    }

    /// Starts the service on this store again.
    fn restart(&self) -> DevServer {
        match self {
            Store::Embedded { data_dir } => DevServer::start_in(data_dir, "ecdsa-p256"),
            Store::Postgres { config, .. } => DevServer::start_with_config(config),
        }
    }

    /// The command that starts the service on this store (for a start that must fail).
    fn serve_command(&self) -> Command {
        let mut command = Command::new(CA_SERVICE);
        match self {
            Store::Embedded { data_dir } => {
                command
                    .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
                    .arg(data_dir);
            }
            Store::Postgres { config, .. } => {
                command
                    .args(["serve", "--config"])
                    .arg(config)
                    .args(["--listen", "127.0.0.1:0"]);
            }
        }
        command
    }

    fn sqlite(data_dir: &Path) -> rusqlite::Connection {
        let connection = rusqlite::Connection::open(data_dir.join("ca.sqlite3")).expect("open the store");
        connection.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
        connection
    }

    /// Runs `sql` with its parameters, as a database administrator would, behind the CA's back;
    /// returns the rows changed.
    async fn execute(&self, sql: &str, values: &[Value<'_>]) -> u64 {
        match self {
            Store::Embedded { data_dir } => {
                let connection = Store::sqlite(data_dir);
                let params: Vec<Box<dyn rusqlite::ToSql>> = values
                    .iter()
                    .map(|value| -> Box<dyn rusqlite::ToSql> {
                        match value {
                            Value::Bytes(bytes) => Box::new(bytes.to_vec()),
                            Value::Text(text) => Box::new((*text).to_owned()),
                        }
                    })
                    .collect();
                let changed = connection
                    .execute(sql, rusqlite::params_from_iter(params.iter()))
                    .unwrap_or_else(|error| panic!("{sql}: {error}"));
                changed as u64
            }
            Store::Postgres { database, .. } => {
                let client = database.client().await;
                let params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync>> = values
                    .iter()
                    .map(|value| -> Box<dyn tokio_postgres::types::ToSql + Sync> {
                        match value {
                            Value::Bytes(bytes) => Box::new(bytes.to_vec()),
                            Value::Text(text) => Box::new((*text).to_owned()),
                        }
                    })
                    .collect();
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    params.iter().map(|param| param.as_ref()).collect();
                client
                    .execute(sql, &refs)
                    .await
                    .unwrap_or_else(|error| panic!("{sql}: {error}"))
            }
        }
    }

    /// The one integer `sql` selects.
    async fn count(&self, sql: &str) -> i64 {
        match self {
            Store::Embedded { data_dir } => Store::sqlite(data_dir)
                .query_row(sql, [], |row| row.get(0))
                .unwrap_or_else(|error| panic!("{sql}: {error}")),
            Store::Postgres { database, .. } => database
                .client()
                .await
                .query_one(sql, &[])
                .await
                .unwrap_or_else(|error| panic!("{sql}: {error}"))
                .get(0),
        }
    }

    /// The one byte string `sql` selects.
    async fn bytes(&self, sql: &str) -> Vec<u8> {
        match self {
            Store::Embedded { data_dir } => Store::sqlite(data_dir)
                .query_row(sql, [], |row| row.get(0))
                .unwrap_or_else(|error| panic!("{sql}: {error}")),
            Store::Postgres { database, .. } => database
                .client()
                .await
                .query_one(sql, &[])
                .await
                .unwrap_or_else(|error| panic!("{sql}: {error}"))
                .get(0),
        }
    }

    /// Waits until every entry has a log index.
    async fn sequenced(&self) {
        for _ in 0..300 {
            if self
                .count("SELECT count(*) FROM audit_entries WHERE leaf_index IS NULL")
                .await
                == 0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("entries still unsequenced after 15 s");
    }
}

/// Both stores, one after the other, each in its own directory.
async fn on_both_stores<F, Fut>(case: F)
where
    F: Fn(Store, DevServer, PathBuf) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let directory = tempfile::tempdir().expect("tempdir");
    let (store, server) = Store::embedded(directory.path()).await;
    case(store, server, directory.path().to_path_buf()).await;
    let (store, server) = Store::postgres().await;
    case(store, server, directory.path().to_path_buf()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_moved_in_the_database_gets_no_certificate_signed() {
    on_both_stores(|store, server, _| async move {
        let mut identity = server.client().await;
        let alice = UserKeyPair::generate(UserKey::EcP256);
        issue(&mut identity, "alice", &alice.csr("alice"))
            .await
            .expect("alice enrolls");
        store.sequenced().await;

        // The attack: point alice's pin at mallory's key, as a database administrator could.
        let mallory = UserKeyPair::generate(UserKey::EcP256);
        let fingerprint = hex::decode(mallory.fingerprint()).expect("hex");
        let changed = store
            .execute(
                "UPDATE identities SET key_sha256 = $1, spki_der = $2 WHERE user_id = 'alice'",
                &[Value::Bytes(&fingerprint), Value::Bytes(&mallory.spki_der())],
            )
            .await;
        assert_eq!(changed, 1);
        let certificates_before = store.count("SELECT count(*) FROM certificates").await;

        // Mallory's "renewal" as alice is refused, and so is alice's own (the pin is not hers).
        for (key, who) in [(&mallory, "mallory's key"), (&alice, "alice's key")] {
            let refused = issue(&mut identity, "alice", &key.csr("alice")).await;
            let status = refused.expect_err(who);
            assert_eq!(status.code(), Code::Internal, "{who}: {}", status.message());
            assert!(status.message().contains("audit log"), "{who}: {}", status.message());
        }
        assert_eq!(
            store.count("SELECT count(*) FROM certificates").await,
            certificates_before,
            "nothing was signed or stored"
        );

        // A pin pointed at another user's entry (same key swap, with bob's entry) is refused too.
        let bob = UserKeyPair::generate(UserKey::EcP256);
        issue(&mut identity, "bob", &bob.csr("bob")).await.expect("bob enrolls");
        store.sequenced().await;
        store
            .execute(
                "UPDATE identities SET pin_entry_id = (SELECT pin_entry_id FROM identities WHERE user_id = 'bob')
                 WHERE user_id = 'alice'",
                &[],
            )
            .await;
        let refused = issue(&mut identity, "alice", &mallory.csr("alice")).await;
        assert_eq!(refused.expect_err("pin on bob's entry").code(), Code::Internal);
        // Bob is untouched.
        issue(&mut identity, "bob", &bob.csr("bob")).await.expect("bob renews");
        drop(server);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_changed_in_the_database_is_not_served() {
    on_both_stores(|store, server, _| async move {
        let mut identity = server.client().await;
        let alice = UserKeyPair::generate(UserKey::EcP256);
        issue(&mut identity, "alice", &alice.csr("alice"))
            .await
            .expect("alice enrolls");
        let lookup = || GetCertificatesRequest {
            user_ids: vec!["alice".to_owned()],
        };
        identity.get_certificates(lookup()).await.expect("served while intact");

        let mut der = store
            .bytes("SELECT certificate_der FROM certificates WHERE user_id = 'alice'")
            .await;
        let middle = der.len() / 2;
        der[middle] ^= 0x01;
        store
            .execute(
                "UPDATE certificates SET certificate_der = $1 WHERE user_id = 'alice'",
                &[Value::Bytes(&der)],
            )
            .await;
        let status = identity
            .get_certificates(lookup())
            .await
            .expect_err("a tampered certificate");
        assert_eq!(status.code(), Code::Internal, "{}", status.message());
        assert!(status.message().contains("audit log"), "{}", status.message());
        // The Admin service does not serve it either.
        let mut admin = AdminClient::new(server.connect_as("admin-alice").await);
        let status = admin
            .get_identity(GetIdentityRequest {
                user_id: "alice".to_owned(),
            })
            .await
            .expect_err("a tampered certificate");
        assert_eq!(status.code(), Code::Internal, "{}", status.message());
        drop(server);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapped_key_or_an_escrow_deposit_changed_in_the_database_is_not_served() {
    use common::key_backup::{nonce, proof, put, register, wrapped_key};
    use e2ee_ca_proto::v1::key_backup_client::KeyBackupClient;
    use e2ee_ca_proto::v1::{
        ApproveRequestRequest, DepositEscrowRequest, GetEscrowRequest, GetWrappedPrivateKeyRequest,
        RequestEscrowReleaseRequest,
    };
    on_both_stores(|store, server, _| async move {
        let mut identity = server.client().await;
        let mut backup = KeyBackupClient::new(server.connect_as("sync-server").await);
        let mut alice = AdminClient::new(server.connect_as("admin-alice").await);
        let mut bob = AdminClient::new(server.connect_as("admin-bob").await);
        let carol = UserKeyPair::generate(UserKey::EcP256);
        issue(&mut identity, "carol", &carol.csr("carol"))
            .await
            .expect("carol enrolls");
        let blob = wrapped_key(1);
        let challenge = nonce(&mut backup, "carol").await;
        backup
            .put_wrapped_private_key(put(
                "carol",
                &blob,
                false,
                Some(proof(&carol, "key-backup", "carol", &challenge, blob.as_bytes())),
            ))
            .await
            .expect("stored");
        let read = || GetWrappedPrivateKeyRequest {
            user_id: "carol".to_owned(),
        };
        backup
            .get_wrapped_private_key(read())
            .await
            .expect("served while intact");
        // Another well-formed blob, written in the database alone.
        let swapped = wrapped_key(2);
        let changed = store
            .execute(
                "UPDATE key_backups SET wrapped_key = $1 WHERE user_id = 'carol'",
                &[Value::Text(&swapped)],
            )
            .await;
        assert_eq!(changed, 1);
        let status = backup
            .get_wrapped_private_key(read())
            .await
            .expect_err("a swapped blob");
        assert_eq!(status.code(), Code::Internal, "{}", status.message());
        assert!(status.message().contains("audit log"), "{}", status.message());

        // A deposit, released once but altered in the database first: withheld.
        let fingerprint = register(&mut alice, &mut bob, 7).await;
        let sealed = vec![5u8; 150];
        let challenge = nonce(&mut backup, "carol").await;
        backup
            .deposit_escrow(DepositEscrowRequest {
                user_id: "carol".to_owned(),
                recovery_key_fingerprint: fingerprint,
                escrow_blob: sealed.clone(),
                proof: Some(proof(&carol, "escrow", "carol", &challenge, &sealed)),
            })
            .await
            .expect("deposited");
        let release = alice
            .request_escrow_release(RequestEscrowReleaseRequest {
                user_id: "carol".to_owned(),
                reason: "tampering test".to_owned(),
            })
            .await
            .expect("requested")
            .into_inner()
            .request
            .expect("request");
        bob.approve_request(ApproveRequestRequest {
            request_id: release.request_id.clone(),
        })
        .await
        .expect("approved");
        let forged = vec![6u8; 150];
        store
            .execute(
                "UPDATE escrows SET blob = $1 WHERE user_id = 'carol'",
                &[Value::Bytes(&forged)],
            )
            .await;
        let status = alice
            .get_escrow(GetEscrowRequest {
                request_id: release.request_id,
            })
            .await
            .expect_err("an altered deposit");
        assert_eq!(status.code(), Code::Internal, "{}", status.message());
        assert!(status.message().contains("audit log"), "{}", status.message());
        drop(server);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_altered_log_row_stops_the_service_at_startup() {
    on_both_stores(|store, server, _| async move {
        let mut identity = server.client().await;
        let alice = UserKeyPair::generate(UserKey::EcP256);
        issue(&mut identity, "alice", &alice.csr("alice"))
            .await
            .expect("alice enrolls");
        // The newest entry is a refusal (nothing references it).
        let other = UserKeyPair::generate(UserKey::EcP256);
        let refused = issue(&mut identity, "alice", &other.csr("alice")).await;
        assert_eq!(refused.expect_err("second key").code(), Code::FailedPrecondition);
        store.sequenced().await;
        drop(identity);
        server.stop();
        let last = store.count("SELECT max(leaf_index) FROM audit_entries").await;

        // Altered: one byte of the newest entry.
        let mut entry = store
            .bytes(&format!("SELECT entry FROM audit_entries WHERE leaf_index = {last}"))
            .await;
        let original = entry.clone();
        entry[40] ^= 0x01;
        store
            .execute(
                &format!("UPDATE audit_entries SET entry = $1 WHERE leaf_index = {last}"),
                &[Value::Bytes(&entry)],
            )
            .await;
        let text = assert_exits_without_serving(store.serve_command());
        assert!(text.contains(&format!("log index {last} does not match")), "{text}");

        // Deleted: the newest entry's row.
        store
            .execute(
                &format!("UPDATE audit_entries SET entry = $1 WHERE leaf_index = {last}"),
                &[Value::Bytes(&original)],
            )
            .await;
        let server = store.restart();
        drop(server.stop());
        store
            .execute(&format!("DELETE FROM audit_entries WHERE leaf_index = {last}"), &[])
            .await;
        let text = assert_exits_without_serving(store.serve_command());
        assert!(text.contains(&format!("log index {last} is missing")), "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_racing_the_rate_limit_stay_within_it() {
    on_both_stores(|store, server, directory| async move {
        // The limit is 20 a day (the default): rewrite the config, then restart on it.
        server.stop();
        let config = match &store {
            Store::Embedded { data_dir } => data_dir.join("ca-service.toml"),
            Store::Postgres { config, .. } => config.clone(),
        };
        let text = std::fs::read_to_string(&config).expect("config");
        let mut table: toml::Table = toml::from_str(&text).expect("config parses");
        table["issuance"]
            .as_table_mut()
            .expect("[issuance]")
            .insert("max_certificates_per_user_per_day".to_owned(), 20.into());
        std::fs::write(&config, toml::to_string(&table).expect("serialise")).expect("write config");
        let server = store.restart();
        let alice = UserKeyPair::generate(UserKey::EcP256);
        let csr = alice.csr("alice");
        issue(&mut server.client().await, "alice", &csr)
            .await
            .expect("alice enrolls");

        // 60 renewals in flight at once, on 6 connections.
        let mut clients = Vec::new();
        for _ in 0..6 {
            clients.push(server.client().await);
        }
        let tasks: Vec<_> = (0..60)
            .map(|n| {
                let mut client = clients[n % clients.len()].clone();
                let csr = csr.clone();
                tokio::spawn(async move { issue(&mut client, "alice", &csr).await })
            })
            .collect();
        let mut renewed = 0;
        for task in tasks {
            match task.await.expect("task") {
                Ok(_) => renewed += 1,
                Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message()),
            }
        }
        let stored = store
            .count("SELECT count(*) FROM certificates WHERE user_id = 'alice'")
            .await;
        // Before the limit was decided in the write transaction, the store held 39 here. (A
        // renewal may also be refused for HSM capacity, RESOURCE_EXHAUSTED too, so fewer may pass.)
        assert!(stored <= 20, "the first certificate and at most 19 renewals: {stored}");
        assert!(stored > 10, "most renewals up to the limit went through: {stored}");
        assert_eq!(renewed, stored - 1, "every certificate answered is stored");
        drop(server);
        let _ = directory;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_refusals_are_summarized_with_their_count() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (store, server) = Store::embedded(directory.path()).await;
    let mut identity = server.client().await;
    // 100 oversized garbage CSRs (just under the 64 KiB cap) from one caller.
    let garbage = "A".repeat(60 * 1024);
    for _ in 0..100 {
        let status = issue(&mut identity, "alice", &garbage).await.expect_err("garbage");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().len() < 512,
            "a bounded message: {} bytes",
            status.message().len()
        );
    }
    // A graceful stop writes the open window's summary.
    drop(identity);
    let (exited, _) = server.terminate(Duration::from_secs(30)).await;
    assert!(exited, "a clean exit");
    let refused = store
        .count("SELECT count(*) FROM audit_entries WHERE subject = 'alice'")
        .await;
    assert_eq!(refused, 20, "20 refusals logged one by one");
    let largest = store.count("SELECT max(length(entry)) FROM audit_entries").await;
    assert!(largest < 2048, "no entry echoes the input: {largest} bytes");
    let summary = store
        .bytes(
            "SELECT entry FROM audit_entries WHERE instr(entry, CAST(char(10) || 'kind refusals-summarized' || char(10) AS BLOB)) > 0",
        )
        .await;
    let summary = String::from_utf8(summary).expect("utf-8");
    assert!(summary.contains("\nsummarized-count 80\n"), "{summary}");
    assert!(summary.contains("\nrefused-csr 80\n"), "{summary}");
    assert!(summary.contains("\nactor sync-server\n"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused_on_any_address_but_loopback() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (store, server) = Store::embedded(directory.path()).await;
    server.stop();
    let Store::Embedded { data_dir } = &store else {
        unreachable!()
    };
    // A plaintext config on loopback, as a TLS-terminating proxy on the same host would use.
    let text = std::fs::read_to_string(data_dir.join("ca-service.toml")).expect("config");
    let mut table: toml::Table = toml::from_str(&text).expect("config parses");
    table.remove("tls");
    table.remove("principals");
    table.insert("allow_plaintext".to_owned(), true.into());
    table.insert("listen".to_owned(), "127.0.0.1:0".into());
    let config = data_dir.join("plaintext.toml");
    std::fs::write(&config, toml::to_string(&table).expect("serialise")).expect("write config");
    for listen in ["0.0.0.0:0", "[::]:0", "[::ffff:127.0.0.1]:0"] {
        let mut command = Command::new(CA_SERVICE);
        command
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", listen]);
        let text = assert_exits_without_serving(command);
        assert!(text.contains("loopback"), "{listen}: {text}");
    }
    table.insert("listen".to_owned(), "[::ffff:127.0.0.1]:0".into());
    std::fs::write(&config, toml::to_string(&table).expect("serialise")).expect("write config");
    let mut command = Command::new(CA_SERVICE);
    command.args(["serve", "--config"]).arg(&config);
    let text = assert_exits_without_serving(command);
    assert!(text.contains("loopback"), "{text}");
    // And on loopback it serves.
    table.insert("listen".to_owned(), "127.0.0.1:0".into());
    std::fs::write(&config, toml::to_string(&table).expect("serialise")).expect("write config");
    let server = DevServer::start_with_config(&config);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_files_are_private() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (_, server) = Store::embedded(directory.path()).await;
    let alice = UserKeyPair::generate(UserKey::EcP256);
    issue(&mut server.client().await, "alice", &alice.csr("alice"))
        .await
        .expect("alice enrolls");
    let data_dir = server.stop();
    let mut checked = 0;
    let mut pending = vec![data_dir.clone()];
    while let Some(path) = pending.pop() {
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        if path.is_dir() {
            assert_eq!(mode, 0o700, "{} is mode {mode:o}", path.display());
            pending.extend(
                std::fs::read_dir(&path)
                    .expect("read dir")
                    .map(|entry| entry.expect("entry").path()),
            );
        } else {
            assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", path.display());
            checked += 1;
        }
    }
    for name in ["ca.sqlite3", "ca.sqlite3-wal", "audit-signer-guard", "ca-service.toml"] {
        assert!(data_dir.join(name).exists(), "{name} exists (and was checked)");
    }
    assert!(checked > 10, "checked {checked} files");
}
