//! End-to-end: the KeyBackup service and the Admin recovery calls on the real binary over mTLS,
//! at the gRPC level (the client's story is `recovery_story.rs`): write-once wrapped keys, proofs
//! of possession (forged, replayed, for an unpinned key), logged reads listed by GetIdentity,
//! dual-control registration of a recovery key, deposits for a stale key, and a release returned
//! exactly once. Both stores: the dev server's embedded store and PostgreSQL.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is the test failing")]

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::key_backup::{nonce, proof, put, recovery_key, register, wrapped_key};
use common::{DevServer, UserKey, UserKeyPair, ca_info, issue};
use e2ee_ca_proto::v1::admin_client::AdminClient;
use e2ee_ca_proto::v1::key_backup_client::KeyBackupClient;
use e2ee_ca_proto::v1::{
    ApproveRequestRequest, CreateBackupChallengeRequest, DepositEscrowRequest, DisableRecoveryKeyRequest,
    GetEscrowRequest, GetIdentityRequest, GetWrappedPrivateKeyRequest, RegisterRecoveryKeyRequest,
    RequestEscrowReleaseRequest,
};
use sha2::{Digest, Sha256};
use tonic::Code;

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    result.expect_err("refused").code()
}

/// The whole gRPC-level behaviour on one server.
async fn check(server: &DevServer) {
    let mut identity = server.client().await;
    let mut backup = KeyBackupClient::new(server.connect_as("sync-server").await);
    let mut alice = AdminClient::new(server.connect_as("admin-alice").await);
    let mut bob = AdminClient::new(server.connect_as("admin-bob").await);
    let key = UserKeyPair::generate(UserKey::Rsa2048);
    let other = UserKeyPair::generate(UserKey::EcP256);

    // No pin, no nonce; no pin, no backup.
    assert_eq!(
        code(
            backup
                .create_backup_challenge(CreateBackupChallengeRequest {
                    user_id: "carol".to_owned()
                })
                .await
        ),
        Code::FailedPrecondition
    );
    issue(&mut identity, "carol", &key.csr("carol"))
        .await
        .expect("carol enrolled");
    issue(&mut identity, "dave", &other.csr("dave"))
        .await
        .expect("dave enrolled");

    // The first upload, with a proof by the pinned key.
    let first = wrapped_key(1);
    let carol_nonce = nonce(&mut backup, "carol").await;
    let stored = backup
        .put_wrapped_private_key(put(
            "carol",
            &first,
            false,
            Some(proof(&key, "key-backup", "carol", &carol_nonce, first.as_bytes())),
        ))
        .await
        .expect("stored")
        .into_inner();
    assert!(!stored.replaced);
    // The nonce is spent; a replay is refused even with a valid signature.
    let second = wrapped_key(2);
    assert_eq!(
        code(
            backup
                .put_wrapped_private_key(put(
                    "carol",
                    &second,
                    true,
                    Some(proof(&key, "key-backup", "carol", &carol_nonce, second.as_bytes())),
                ))
                .await
        ),
        Code::FailedPrecondition,
        "replayed nonce"
    );
    // Write-once.
    let fresh = nonce(&mut backup, "carol").await;
    assert_eq!(
        code(
            backup
                .put_wrapped_private_key(put(
                    "carol",
                    &second,
                    false,
                    Some(proof(&key, "key-backup", "carol", &fresh, second.as_bytes())),
                ))
                .await
        ),
        Code::AlreadyExists
    );
    // A replacement without a proof, with a proof by another key (a key the CA never pinned to
    // carol), over another blob, for another purpose, or under dave's nonce.
    assert_eq!(
        code(backup.put_wrapped_private_key(put("carol", &second, true, None)).await),
        Code::InvalidArgument,
        "no proof"
    );
    let forged = [
        proof(&other, "key-backup", "carol", &fresh, second.as_bytes()),
        proof(&key, "key-backup", "carol", &fresh, first.as_bytes()),
        proof(&key, "escrow", "carol", &fresh, second.as_bytes()),
        proof(&key, "key-backup", "dave", &fresh, second.as_bytes()),
    ];
    for forged in forged {
        assert_eq!(
            code(
                backup
                    .put_wrapped_private_key(put("carol", &second, true, Some(forged)))
                    .await
            ),
            Code::InvalidArgument,
            "forged proof"
        );
    }
    let dave_nonce = nonce(&mut backup, "dave").await;
    assert_eq!(
        code(
            backup
                .put_wrapped_private_key(put(
                    "carol",
                    &second,
                    true,
                    Some(proof(&key, "key-backup", "carol", &dave_nonce, second.as_bytes())),
                ))
                .await
        ),
        Code::FailedPrecondition,
        "another user's nonce"
    );
    // Malformed blobs never reach the proof check.
    let oversized = format!(
        "{}|{}|{}",
        "A".repeat(17_000),
        STANDARD.encode([0; 12]),
        STANDARD.encode([0; 40])
    );
    for bad in ["", "abc", &wrapped_key(3).replace('|', ","), &oversized] {
        assert_eq!(
            code(backup.put_wrapped_private_key(put("carol", bad, true, None)).await),
            Code::InvalidArgument
        );
    }
    // The replacement with a fresh proof.
    let replaced = backup
        .put_wrapped_private_key(put(
            "carol",
            &second,
            true,
            Some(proof(&key, "key-backup", "carol", &fresh, second.as_bytes())),
        ))
        .await
        .expect("replaced")
        .into_inner();
    assert!(replaced.replaced);
    // Nothing to replace for dave.
    let blob = wrapped_key(4);
    let dave_fresh = nonce(&mut backup, "dave").await;
    assert_eq!(
        code(
            backup
                .put_wrapped_private_key(put(
                    "dave",
                    &blob,
                    true,
                    Some(proof(&other, "key-backup", "dave", &dave_fresh, blob.as_bytes())),
                ))
                .await
        ),
        Code::NotFound
    );

    // Reads: logged, listed by GetIdentity with the caller.
    for _ in 0..2 {
        let read = backup
            .get_wrapped_private_key(GetWrappedPrivateKeyRequest {
                user_id: "carol".to_owned(),
            })
            .await
            .expect("read")
            .into_inner();
        assert_eq!(read.wrapped_key, second);
        assert_eq!(read.key_fingerprint, key.fingerprint());
    }
    assert_eq!(
        code(
            backup
                .get_wrapped_private_key(GetWrappedPrivateKeyRequest {
                    user_id: "dave".to_owned()
                })
                .await
        ),
        Code::NotFound
    );
    let carol = alice
        .get_identity(GetIdentityRequest {
            user_id: "carol".to_owned(),
        })
        .await
        .expect("identity")
        .into_inner();
    assert!(carol.wrapped_key_stored);
    assert_eq!(carol.backup_reads.len(), 2, "{:?}", carol.backup_reads);
    assert!(
        carol
            .backup_reads
            .iter()
            .all(|read| read.read_by == "sync-server" && read.index.is_some())
    );
    let stored_entries = carol
        .log_entries
        .iter()
        .filter(|entry| entry.entry.contains("\nkind key-backup-stored\n"))
        .count();
    assert_eq!(stored_entries, 2, "the upload and the replacement are logged");
    assert!(
        carol
            .log_entries
            .iter()
            .all(|entry| !entry.entry.contains(&second) && !entry.entry.contains(&first)),
        "entries hold digests, never the blob"
    );

    // Escrow: refused while recovery is off.
    let escrow_blob = vec![7u8; 300];
    let (_, unregistered) = recovery_key(9);
    let deposit = |nonce: &[u8], fingerprint: &str| DepositEscrowRequest {
        user_id: "carol".to_owned(),
        recovery_key_fingerprint: fingerprint.to_owned(),
        escrow_blob: escrow_blob.clone(),
        proof: Some(proof(&key, "escrow", "carol", nonce, &escrow_blob)),
    };
    let escrow_nonce = nonce(&mut backup, "carol").await;
    assert_eq!(
        code(backup.deposit_escrow(deposit(&escrow_nonce, &unregistered)).await),
        Code::FailedPrecondition,
        "recovery disabled"
    );
    assert_eq!(
        code(
            alice
                .request_escrow_release(RequestEscrowReleaseRequest {
                    user_id: "carol".to_owned(),
                    reason: "no deposit".to_owned()
                })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            alice
                .disable_recovery_key(DisableRecoveryKeyRequest {
                    reason: "nothing enabled".to_owned()
                })
                .await
        ),
        Code::FailedPrecondition
    );
    for bad_key in ["", "junk", &key.csr("x")] {
        assert_eq!(
            code(
                alice
                    .register_recovery_key(RegisterRecoveryKeyRequest {
                        public_key_pem: bad_key.to_owned(),
                        ceremony_reference: "ref".to_owned(),
                        reason: "bad".to_owned(),
                    })
                    .await
            ),
            Code::InvalidArgument
        );
    }
    // Registration under dual control, reported by GetCaInfo with a certificate from the CA key.
    let old = register(&mut alice, &mut bob, 1).await;
    let current = register(&mut alice, &mut bob, 2).await;
    let info = ca_info(&mut identity).await;
    let recovery = info.recovery.expect("recovery status");
    assert!(recovery.enabled);
    assert_eq!(recovery.fingerprint, current);
    let certificate = common::pem_der(&recovery.certificate_pem);
    let (_, parsed) = x509_parser::parse_x509_certificate(&certificate).expect("recovery certificate");
    let ca = common::pem_der(&info.ca_chain_pem);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca).expect("CA certificate");
    parsed
        .verify_signature(Some(ca.public_key()))
        .expect("signed by the CA key");
    assert_eq!(hex::encode(Sha256::digest(parsed.public_key().raw)), current);
    // A stale recovery key, then the current one.
    assert_eq!(
        code(backup.deposit_escrow(deposit(&escrow_nonce, &old)).await),
        Code::FailedPrecondition,
        "stale recovery key"
    );
    backup
        .deposit_escrow(deposit(&escrow_nonce, &current))
        .await
        .expect("deposited");
    // Release: once, only after another admin approved it.
    let release = alice
        .request_escrow_release(RequestEscrowReleaseRequest {
            user_id: "carol".to_owned(),
            reason: "carol lost every device".to_owned(),
        })
        .await
        .expect("release requested")
        .into_inner()
        .request
        .expect("request");
    let get = || GetEscrowRequest {
        request_id: release.request_id.clone(),
    };
    assert_eq!(code(alice.get_escrow(get()).await), Code::FailedPrecondition, "pending");
    bob.approve_request(ApproveRequestRequest {
        request_id: release.request_id.clone(),
    })
    .await
    .expect("release approved");
    let released = alice.get_escrow(get()).await.expect("released").into_inner();
    assert_eq!(released.escrow_blob, escrow_blob);
    assert_eq!(released.recovery_key_fingerprint, current);
    assert_eq!(
        code(bob.get_escrow(get()).await),
        Code::FailedPrecondition,
        "a second GetEscrow"
    );
    // Disable under dual control: deposits are refused afterwards.
    let disable = alice
        .disable_recovery_key(DisableRecoveryKeyRequest {
            reason: "retired".to_owned(),
        })
        .await
        .expect("disable opened")
        .into_inner()
        .request
        .expect("request");
    bob.approve_request(ApproveRequestRequest {
        request_id: disable.request_id,
    })
    .await
    .expect("disabled");
    assert!(!ca_info(&mut identity).await.recovery.expect("status").enabled);
    let late_nonce = nonce(&mut backup, "carol").await;
    assert_eq!(
        code(backup.deposit_escrow(deposit(&late_nonce, &current)).await),
        Code::FailedPrecondition
    );
    // The sync server cannot call the Admin service, and admins cannot read backups.
    let mut as_sync = AdminClient::new(server.connect_as("sync-server").await);
    assert_eq!(code(as_sync.get_escrow(get()).await), Code::PermissionDenied);
    let mut as_admin = KeyBackupClient::new(server.connect_as("admin-alice").await);
    assert_eq!(
        code(
            as_admin
                .get_wrapped_private_key(GetWrappedPrivateKeyRequest {
                    user_id: "carol".to_owned()
                })
                .await
        ),
        Code::PermissionDenied
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_backup_and_recovery_calls_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(dir.path(), "ecdsa-p256");
    check(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_backup_and_recovery_calls_on_postgres() {
    let database = common::postgres::TestDatabase::create().await;
    let ca = common::postgres::ProvisionedCa::create();
    let server = DevServer::start_with_config(&ca.replica_config(0, &database.url));
    check(&server).await;
}

/// A deposit of carol's sealed to a freshly registered recovery key; returns her key.
async fn deposit_for_carol(server: &DevServer) -> UserKeyPair {
    let mut identity = server.client().await;
    let mut backup = KeyBackupClient::new(server.connect_as("sync-server").await);
    let mut alice = AdminClient::new(server.connect_as("admin-alice").await);
    let mut bob = AdminClient::new(server.connect_as("admin-bob").await);
    let key = UserKeyPair::generate(UserKey::EcP256);
    issue(&mut identity, "carol", &key.csr("carol"))
        .await
        .expect("carol enrolled");
    let fingerprint = register(&mut alice, &mut bob, 5).await;
    let blob = vec![3u8; 200];
    let nonce = nonce(&mut backup, "carol").await;
    backup
        .deposit_escrow(DepositEscrowRequest {
            user_id: "carol".to_owned(),
            recovery_key_fingerprint: fingerprint,
            escrow_blob: blob.clone(),
            proof: Some(proof(&key, "escrow", "carol", &nonce, &blob)),
        })
        .await
        .expect("deposited");
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escrow_release_not_used_before_it_expires_returns_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A dev data directory, then a server on its config with a 2-second request lifetime.
    let data_dir = DevServer::start(dir.path(), "ecdsa-p256").stop();
    let config = data_dir.join("ca-service.toml");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str("\n[admin]\nrequest_lifetime_seconds = 2\n");
    std::fs::write(&config, text).expect("write config");
    let server = DevServer::start_with_config(&config);
    deposit_for_carol(&server).await;
    let mut alice = AdminClient::new(server.connect_as("admin-alice").await);
    let mut bob = AdminClient::new(server.connect_as("admin-bob").await);
    let release = |reason: &str| RequestEscrowReleaseRequest {
        user_id: "carol".to_owned(),
        reason: reason.to_owned(),
    };
    // Approved in time, fetched too late.
    let approved = alice
        .request_escrow_release(release("approved, then left"))
        .await
        .expect("requested")
        .into_inner()
        .request
        .expect("request");
    bob.approve_request(ApproveRequestRequest {
        request_id: approved.request_id.clone(),
    })
    .await
    .expect("approved");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let late = alice
        .get_escrow(GetEscrowRequest {
            request_id: approved.request_id,
        })
        .await
        .expect_err("expired");
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert!(late.message().contains("expired"), "{}", late.message());
    // Never approved in time.
    let pending = alice
        .request_escrow_release(release("never approved in time"))
        .await
        .expect("requested again: the expired one no longer blocks")
        .into_inner()
        .request
        .expect("request");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(
        code(
            bob.approve_request(ApproveRequestRequest {
                request_id: pending.request_id
            })
            .await
        ),
        Code::FailedPrecondition
    );
}

/// Nothing on the CA's side can open a deposit: the service holds only the recovery public key,
/// and no HPKE (nor the client crate, which seals and opens) is in its build.
#[test]
fn the_ca_links_no_code_that_opens_an_escrow_deposit() {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--quiet",
            "--offline",
            "-p",
            "ca-service",
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo tree");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8(output.stdout).expect("UTF-8");
    assert!(tree.lines().any(|line| line.starts_with("ca-service ")), "{tree}");
    for crate_name in ["hpke ", "e2ee-client ", "vsss-rs ", "x25519-dalek "] {
        assert!(
            !tree.lines().any(|line| line.starts_with(crate_name)),
            "ca-service links {crate_name}"
        );
    }
}
