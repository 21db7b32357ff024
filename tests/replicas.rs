//! Several `ca-service` replicas on one PostgreSQL database: racing enrollments, dropped connections, startup.
//!
//! One CA is provisioned once (dev mode, then stopped); each replica gets its own copy of the SoftHSM
//! token directory and a serve config pointing at the same fresh database (`common::postgres`).

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::postgres::{ProvisionedCa, STORE_TIMEOUT_MS, TestDatabase};
use common::{
    CA_SERVICE, DevServer, UserKey, UserKeyPair, assert_exits_without_serving, ca_info, issue_and_wait_for_checkpoint,
    pem_der,
};
use e2ee_ca_proto::v1::identity_client::IdentityClient;
use e2ee_ca_proto::v1::{
    GetCertificatesRequest, GetCheckpointRequest, GetConsistencyProofRequest, IssueCertificateRequest,
};
use tlog::checkpoint::SignedCheckpoint;
use tlog::key::VerifierKey;
use tlog::note::SignedNote;
use tonic::Code;
use tonic::transport::Channel;
use x509_parser::prelude::FromDer;

/// The deadline every test request carries.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

async fn issue(
    client: &mut IdentityClient<Channel>,
    user_id: &str,
    csr_pem: String,
) -> Result<e2ee_ca_proto::v1::IssueCertificateResponse, tonic::Status> {
    let mut request = tonic::Request::new(IssueCertificateRequest {
        user_id: user_id.to_owned(),
        csr_pem,
        wait_for_checkpoint: false,
    });
    request.set_timeout(REQUEST_DEADLINE);
    client.issue_certificate(request).await.map(tonic::Response::into_inner)
}

/// Verifies `certificate_pem` with the CA public key (SPKI PEM from GetCaInfo).
fn assert_signed_by_ca(certificate_pem: &str, ca_public_key_pem: &str) {
    let certificate_der = pem_der(certificate_pem);
    let (_, certificate) = x509_parser::parse_x509_certificate(&certificate_der).expect("certificate parses");
    let ca_key_der = pem_der(ca_public_key_pem);
    let (_, ca_key) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&ca_key_der).expect("CA key parses");
    certificate
        .verify_signature(Some(&ca_key))
        .expect("certificate verifies with the CA key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_racing_enrollments_pin_one_key_per_user() {
    const USERS: usize = 20;
    const REPLICAS: usize = 3;
    const KEYS_PER_REPLICA: usize = 2;
    let ca = ProvisionedCa::create();
    let database = TestDatabase::create().await;
    let replicas = ca.start_replicas(REPLICAS, &database.url);
    let mut clients = Vec::new();
    for replica in &replicas {
        clients.push(replica.client().await);
    }
    let info = ca_info(&mut clients[0]).await;
    for client in &mut clients[1..] {
        assert_eq!(
            ca_info(client).await.ca_public_key_pem,
            info.ca_public_key_pem,
            "one CA"
        );
    }

    // Every user enrolls with 6 different keys, 2 through each replica, all at once.
    let mut requests = Vec::new();
    for user in 0..USERS {
        for replica in 0..REPLICAS {
            for _ in 0..KEYS_PER_REPLICA {
                let user_id = format!("user-{user}@example.com");
                let key = UserKeyPair::generate(UserKey::EcP256);
                requests.push((
                    replica,
                    user_id,
                    key.fingerprint(),
                    key.csr(&format!("user-{user}@example.com")),
                ));
            }
        }
    }
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(replica, user_id, fingerprint, csr_pem)| {
            let mut client = clients[replica].clone();
            tokio::spawn(async move {
                let result = issue(&mut client, &user_id, csr_pem).await;
                (user_id, fingerprint, result)
            })
        })
        .collect();
    let mut winners: HashMap<String, (String, String)> = HashMap::new();
    let mut refusals: Vec<(String, String)> = Vec::new();
    for task in tasks {
        let (user_id, fingerprint, result) = task.await.expect("task");
        match result {
            Ok(response) => {
                assert!(!response.renewal);
                assert_eq!(response.key_fingerprint, fingerprint);
                assert_signed_by_ca(&response.certificate_pem, &info.ca_public_key_pem);
                let previous = winners.insert(user_id.clone(), (fingerprint, response.serial_hex));
                assert!(previous.is_none(), "{user_id} got two certificates for different keys");
            }
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message());
                refusals.push((user_id, status.message().to_owned()));
            }
        }
    }
    assert_eq!(winners.len(), USERS, "every user got exactly one certificate");
    assert_eq!(refusals.len(), USERS * (REPLICAS * KEYS_PER_REPLICA - 1));
    for (user_id, message) in &refusals {
        let (winner, _) = &winners[user_id];
        assert!(
            message.contains(winner.as_str()),
            "refusal names the pinned key: {message}"
        );
    }

    // The database agrees: one pin and one certificate per user, distinct serials, every event logged.
    let client = database.client().await;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM identities), (SELECT count(*) FROM certificates),
                    (SELECT count(DISTINCT serial) FROM certificates), (SELECT count(*) FROM audit_entries)",
            &[],
        )
        .await
        .expect("counts");
    let counts: (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    let expected_users = i64::try_from(USERS).expect("small");
    let requests_made = i64::try_from(USERS * REPLICAS * KEYS_PER_REPLICA).expect("small");
    // One entry per request, plus the CA's own entry, recorded once however many replicas start.
    assert_eq!(
        counts,
        (expected_users, expected_users, expected_users, requests_made + 1)
    );
    let stored_serials: HashSet<String> = client
        .query("SELECT serial FROM certificates", &[])
        .await
        .expect("serials")
        .iter()
        .map(|row| hex::encode(row.get::<_, &[u8]>(0)))
        .collect();
    let issued_serials: HashSet<String> = winners.values().map(|(_, serial)| serial.clone()).collect();
    assert_eq!(stored_serials, issued_serials);

    // No replica caches: each one reports every winner, whichever replica issued it.
    let user_ids: Vec<String> = (0..USERS).map(|user| format!("user-{user}@example.com")).collect();
    for client in &mut clients {
        let response = client
            .get_certificates(GetCertificatesRequest {
                user_ids: user_ids.clone(),
            })
            .await
            .expect("GetCertificates")
            .into_inner();
        assert!(response.unknown_user_ids.is_empty());
        for certificate in response.certificates {
            let (fingerprint, serial) = &winners[&certificate.user_id];
            assert_eq!(
                (&certificate.key_fingerprint, &certificate.serial_hex),
                (fingerprint, serial)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_linear_log_sequenced_by_one_of_them() {
    const REPLICAS: usize = 3;
    const PER_REPLICA: usize = 8;
    let ca = ProvisionedCa::create();
    let database = TestDatabase::create().await;
    let replicas = ca.start_replicas(REPLICAS, &database.url);
    let mut clients = Vec::new();
    for replica in &replicas {
        clients.push(replica.client().await);
    }
    let info = ca_info(&mut clients[0]).await;
    let verifiers: Vec<VerifierKey> = info
        .checkpoint_verifier_keys
        .iter()
        .map(|vkey| VerifierKey::parse(vkey).expect("vkey"))
        .collect();
    assert_eq!(verifiers.len(), 1);

    // Fresh users enroll through every replica at once; each answer carries a sequenced index.
    let tasks: Vec<_> = (0..REPLICAS * PER_REPLICA)
        .map(|request| {
            let mut client = clients[request % REPLICAS].clone();
            tokio::spawn(async move {
                let user_id = format!("log-user-{request}");
                let key = UserKeyPair::generate(UserKey::EcP256);
                issue(&mut client, &user_id, key.csr(&user_id)).await
            })
        })
        .collect();
    let mut indices = HashSet::new();
    for task in tasks {
        let response = task.await.expect("task").expect("issued");
        let index = response.log_entry.expect("sequenced entry").index;
        assert!(indices.insert(index), "index {index} given twice");
    }

    // One replica holds the sequencer lock; the log has every entry once, without gaps.
    let client = database.client().await;
    let leaders: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = $1
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&0x6361_0002u32],
        )
        .await
        .expect("locks")
        .get(0);
    assert_eq!(leaders, 1, "exactly one sequencer");
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT leaf_index), min(leaf_index), max(leaf_index) FROM audit_entries",
            &[],
        )
        .await
        .expect("indices");
    let total: i64 = row.get(0);
    // The CA's own entry (recorded once by whichever replica started first), then the issuances.
    assert_eq!(total, i64::try_from(REPLICAS * PER_REPLICA).expect("small") + 1);
    assert_eq!(
        (
            row.get::<_, i64>(1),
            row.get::<_, Option<i64>>(2),
            row.get::<_, Option<i64>>(3)
        ),
        (total, Some(0), Some(total - 1)),
        "indices are 0..n, each once"
    );

    // Every replica serves the same signed log: checkpoints verify and are mutually consistent.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut checkpoints = Vec::new();
    for replica in &replicas {
        let mut transparency = replica.transparency().await;
        let checkpoint = loop {
            let response = transparency
                .get_checkpoint(GetCheckpointRequest {})
                .await
                .expect("checkpoint")
                .into_inner();
            let note = SignedNote::parse(&response.checkpoint).expect("note");
            let opened = SignedCheckpoint::open(note, &info.log_origin, &verifiers).expect("verifies");
            if opened.checkpoint().size() == u64::try_from(total).expect("positive") {
                break opened;
            }
            assert!(Instant::now() < deadline, "no checkpoint covering every entry");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let proof = transparency
            .get_consistency_proof(GetConsistencyProofRequest {
                old_size: 1,
                new_size: checkpoint.checkpoint().size(),
            })
            .await
            .expect("consistency proof")
            .into_inner();
        let leaf = client
            .query_one("SELECT entry FROM audit_entries WHERE leaf_index = 0", &[])
            .await
            .expect("entry 0")
            .get::<_, Vec<u8>>(0);
        let proof: Vec<[u8; 32]> = proof
            .hashes
            .iter()
            .map(|hash| <[u8; 32]>::try_from(hash.as_slice()).expect("32 bytes"))
            .collect();
        tlog::proof::verify_consistency(
            1,
            checkpoint.checkpoint().size(),
            &tlog::leaf_hash(&leaf),
            checkpoint.checkpoint().root_hash(),
            &proof,
        )
        .expect("the one-entry tree is a prefix of the signed tree");
        checkpoints.push(checkpoint.checkpoint().clone());
    }
    assert!(
        checkpoints.windows(2).all(|pair| pair[0] == pair[1]),
        "one log, not one per replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issuance_fails_closed_when_the_log_cannot_sequence_within_the_bound() {
    let ca = ProvisionedCa::create();
    let database = TestDatabase::create().await;
    let replica = DevServer::start_with_config(&ca.replica_config_with_sequence_wait(&database.url, 500));
    let mut client = replica.client().await;
    let key = UserKeyPair::generate(UserKey::EcP256);
    let first = issue(&mut client, "alice", key.csr("alice")).await.expect("issued");
    assert!(first.log_entry.is_some());

    // Block the sequencer: hold the log head's lock in a transaction of our own.
    let mut blocker = database.client().await;
    let transaction = blocker.transaction().await.expect("begin");
    transaction
        .batch_execute("LOCK TABLE audit_log_head IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock the head");
    let started = Instant::now();
    let withheld = issue(&mut client, "alice", key.csr("alice"))
        .await
        .expect_err("no certificate without its log index");
    assert_eq!(withheld.code(), Code::Unavailable, "{}", withheld.message());
    assert!(withheld.message().contains("withheld"), "{}", withheld.message());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by audit.sequence_wait_ms, took {:?}",
        started.elapsed()
    );

    // Once the log can move again, the retry is a renewal with a real index, after the
    // withheld certificate's entry.
    transaction.rollback().await.expect("release the head");
    let renewed = issue(&mut client, "alice", key.csr("alice")).await.expect("renewed");
    assert!(renewed.renewal);
    let first_index = first.log_entry.expect("entry").index;
    assert!(renewed.log_entry.expect("entry").index >= first_index + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolled_back_log_is_never_signed_and_issuance_fails_closed() {
    let ca = ProvisionedCa::create();
    let database = TestDatabase::create().await;
    let replica = DevServer::start_with_config(&ca.replica_config_with_sequence_wait(&database.url, 500));
    let mut client = replica.client().await;
    let key = UserKeyPair::generate(UserKey::EcP256);
    issue(&mut client, "alice", key.csr("alice")).await.expect("issued");
    // Issuance answers once its entry is sequenced: wait until a checkpoint covers everything so
    // far, so that no legitimate signature is still on its way when the rollback is staged.
    issue_and_wait_for_checkpoint(&replica, &["bob"]).await;

    // Someone with database access plants a checkpoint of a larger log, as if the real log had
    // been truncated behind the CA's back, and makes the sequencer reload its state.
    let admin = database.client().await;
    admin
        .execute(
            "INSERT INTO audit_checkpoints (size, root, note, signed_at) VALUES (1000, $1, 'planted', now())",
            &[&[7u8; 32].as_slice()],
        )
        .await
        .expect("plant a checkpoint");
    let signed_before: i64 = admin
        .query_one("SELECT count(*) FROM audit_checkpoints", &[])
        .await
        .expect("count")
        .get(0);
    database.terminate_connections(&admin).await;

    // The sequencer refuses to sign a head that is behind (inconsistent with) the latest
    // checkpoint, and sequences nothing more: issuance answers UNAVAILABLE within its bound.
    let deadline = Instant::now() + Duration::from_secs(15);
    let refused = loop {
        match issue(&mut client, "alice", key.csr("alice")).await {
            // Withheld after the wait for an index, or refused up front once the log is stalled.
            Err(status)
                if status.code() == Code::Unavailable
                    && (status.message().contains("withheld")
                        || status.message().contains("cannot currently record")) =>
            {
                break status;
            }
            Ok(_) | Err(_) => {
                assert!(Instant::now() < deadline, "issuance never failed closed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(refused.code(), Code::Unavailable);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let signed_after: i64 = admin
        .query_one("SELECT count(*) FROM audit_checkpoints", &[])
        .await
        .expect("count")
        .get(0);
    let pending: i64 = admin
        .query_one("SELECT count(*) FROM audit_entries WHERE leaf_index IS NULL", &[])
        .await
        .expect("count")
        .get(0);
    assert!(
        signed_after <= signed_before,
        "no checkpoint was signed after the rollback"
    );
    assert!(pending >= 1, "the withheld issuance's entry stays unsequenced");
}

/// The signer guard and the startup check on PostgreSQL: the log's tail deleted and its head rolled
/// back consistently (entries, nodes, checkpoints), so that the database alone shows nothing wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_truncated_log_is_refused_by_the_signer_guard_and_at_startup() {
    let ca = ProvisionedCa::create();
    let database = TestDatabase::create().await;
    let config = ca.replica_config_with_sequence_wait(&database.url, 1000);
    let replica = DevServer::start_with_config(&config);
    let signed = issue_and_wait_for_checkpoint(&replica, &["alice", "bob", "carol"]).await;
    let guard_file = config.with_file_name("audit-signer-guard");
    let guarded = std::fs::read_to_string(&guard_file).expect("the replica's guard file");
    assert!(guarded.contains(&format!("\nsize {}\n", signed.size)), "{guarded}");

    let kept = signed.size - 2;
    let admin = database.client().await;
    let entries: Vec<Vec<u8>> = admin
        .query(
            "SELECT entry FROM audit_entries WHERE leaf_index < $1 ORDER BY leaf_index",
            &[&(kept as i64)],
        )
        .await
        .expect("entries")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let root = tlog::merkle::tree_root(&entries.iter().map(|entry| tlog::leaf_hash(entry)).collect::<Vec<_>>());
    admin
        .batch_execute(&format!(
            "BEGIN;
             DELETE FROM audit_entries WHERE leaf_index >= {kept};
             DELETE FROM audit_tree_nodes WHERE (node_index + 1) * (1::bigint << level) > {kept};
             DELETE FROM audit_checkpoints WHERE size > {kept};
             COMMIT;"
        ))
        .await
        .expect("truncate the log");
    admin
        .execute(
            "UPDATE audit_log_head SET size = $1, root = $2 WHERE id = 1",
            &[&(kept as i64), &root.as_slice()],
        )
        .await
        .expect("roll the head back");
    // The sequencer reloads its state from the database when its connections die.
    database.terminate_connections(&admin).await;

    // Issuance fails closed until the log is reported stalled, and nothing above the truncation
    // is ever signed.
    let mut client = replica.client().await;
    let key = UserKeyPair::generate(UserKey::EcP256);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = issue(&mut client, "dave", key.csr("dave"))
            .await
            .expect_err("nothing is released on a truncated log");
        assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
        if status.message().contains("cannot currently record") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log was never reported stalled: {}",
            status.message()
        );
    }
    let largest: Option<i64> = admin
        .query_one("SELECT max(size) FROM audit_checkpoints", &[])
        .await
        .expect("largest checkpoint")
        .get(0);
    assert!(
        largest.unwrap_or(0) as u64 <= kept,
        "a checkpoint of size {largest:?} was signed after the truncation"
    );
    assert_eq!(
        std::fs::read_to_string(&guard_file).expect("guard file"),
        guarded,
        "the guard did not move"
    );

    // A restart refuses to serve the truncated log.
    replica.stop();
    let mut command = std::process::Command::new(CA_SERVICE);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config);
    let text = assert_exits_without_serving(command);
    assert!(text.contains("refusing to serve"), "{text}");
    assert!(
        text.contains(&format!("last tree this signer signed (size {})", signed.size)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_answer_unavailable_while_connections_drop_and_recover_without_restart() {
    let ca = ProvisionedCa::create();
    let database = TestDatabase::create().await;
    let replicas = ca.start_replicas(2, &database.url);
    let mut clients = Vec::new();
    for replica in &replicas {
        clients.push(replica.client().await);
    }

    // Load: 8 clients enrolling fresh users as fast as they can, while every connection the
    // replicas hold is terminated ten times.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|worker| {
            let mut client = clients[worker % clients.len()].clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut sequence = 0;
                while !stop.load(Ordering::Relaxed) {
                    let user_id = format!("load-{worker}-{sequence}");
                    sequence += 1;
                    let key = UserKeyPair::generate(UserKey::EcP256);
                    let started = Instant::now();
                    let result = issue(&mut client, &user_id, key.csr(&user_id)).await;
                    let elapsed = started.elapsed();
                    outcomes.push((user_id, result.map(|response| response.serial_hex), elapsed));
                }
                outcomes
            })
        })
        .collect();
    let killer = database.client().await;
    let mut terminated = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        terminated += database.terminate_connections(&killer).await;
    }
    stop.store(true, Ordering::Relaxed);
    assert!(terminated > 0, "the replicas had connections to kill");

    let mut issued = HashMap::new();
    let mut unavailable = 0;
    for task in load {
        for (user_id, result, elapsed) in task.await.expect("load task") {
            assert!(
                elapsed < Duration::from_millis(3 * STORE_TIMEOUT_MS),
                "a request took {elapsed:?}: the store bound was not kept"
            );
            match result {
                Ok(serial) => {
                    issued.insert(user_id, serial);
                }
                Err(status) if status.code() == Code::Unavailable => {
                    assert!(
                        !status.message().to_lowercase().contains("sql"),
                        "no database detail leaks: {}",
                        status.message()
                    );
                    unavailable += 1;
                }
                Err(status) => panic!("only OK or UNAVAILABLE may appear, got {status:?}"),
            }
        }
    }
    assert!(!issued.is_empty(), "issuance went on between terminations");
    eprintln!(
        "{} issued, {unavailable} unavailable, {terminated} connections terminated",
        issued.len()
    );

    // Nothing half-written: no pin without its certificate, every released certificate stored.
    let client = database.client().await;
    let orphans: i64 = client
        .query_one(
            "SELECT count(*) FROM identities WHERE NOT EXISTS
                 (SELECT 1 FROM certificates WHERE certificates.user_id = identities.user_id)",
            &[],
        )
        .await
        .expect("orphans")
        .get(0);
    assert_eq!(orphans, 0, "a pin was written without its certificate");
    let stored: HashMap<String, String> = client
        .query("SELECT user_id, serial FROM certificates", &[])
        .await
        .expect("certificates")
        .iter()
        .map(|row| (row.get::<_, String>(0), hex::encode(row.get::<_, &[u8]>(1))))
        .collect();
    for (user_id, serial) in &issued {
        assert_eq!(
            stored.get(user_id),
            Some(serial),
            "released certificate of {user_id} is stored"
        );
    }

    // The database is back (it never left): every replica issues again, without a restart.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (index, client) in clients.iter_mut().enumerate() {
        let user_id = format!("after-{index}");
        let key = UserKeyPair::generate(UserKey::EcP256);
        let response = issue(client, &user_id, key.csr(&user_id)).await;
        assert!(response.is_ok(), "replica {index} recovered: {response:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_once_and_an_unreachable_database_stops_startup_fast() {
    let ca = ProvisionedCa::create();
    let database = TestDatabase::create().await;
    let config = ca.replica_config(0, &database.url);
    for _ in 0..2 {
        let output = tokio::process::Command::new(CA_SERVICE)
            .arg("migrate")
            .arg("--config")
            .arg(&config)
            .output()
            .await
            .expect("run migrate");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let latest = ca_service::store::postgres::SCHEMA_VERSION;
        assert!(stdout.contains(&format!("schema version {latest}")), "{stdout}");
    }
    let versions: Vec<i64> = database
        .client()
        .await
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await
        .expect("versions")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let all: Vec<i64> = (1..=ca_service::store::postgres::SCHEMA_VERSION).collect();
    assert_eq!(versions, all, "each version applied once");

    let unreachable = ca.replica_config(1, "postgres://postgres:hunter2@127.0.0.1:1/ca");
    let started = Instant::now();
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(CA_SERVICE)
            .arg("serve")
            .arg("--config")
            .arg(&unreachable)
            .output(),
    )
    .await
    .expect("startup did not hang")
    .expect("run serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "serve must refuse to start");
    assert!(
        stderr.contains("cannot open the PostgreSQL store at 127.0.0.1:1/ca"),
        "clear message: {stderr}"
    );
    assert!(!stderr.contains("hunter2"), "the password is never printed: {stderr}");
    assert!(
        started.elapsed() < Duration::from_millis(STORE_TIMEOUT_MS + 5000),
        "fails fast: {:?}",
        started.elapsed()
    );
}
