//! The key-backup and recovery story end to end, on the real CA with SoftHSM, on both stores, with
//! the real binaries people and officers run: alice enrolls (her wrapped key goes to the CA), a
//! second device recovers it with the 12 words, she shares a folder with bob; two admins enable an
//! offline recovery key made by a 3-of-5 ceremony, and her client warns and waits for her
//! acknowledgement before it deposits her escrow; she loses both devices and her words; two admins
//! release the deposit, three of five officers open it offline, and her folder decrypts again on a
//! third device. The exported log verifies and lists every one of these events, naming the admins.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is the test failing")]

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use common::client::{Cli, client_package_binary, get, recovery_words};
use common::{DevServer, audit_export, audit_verify, ca_info, output_text};
use e2ee_ca_proto::v1::admin_client::AdminClient;
use e2ee_ca_proto::v1::key_backup_client::KeyBackupClient;
use e2ee_ca_proto::v1::{
    ApproveRequestRequest, GetEscrowRequest, GetIdentityRequest, GetWrappedPrivateKeyRequest,
    RegisterRecoveryKeyRequest, RequestEscrowReleaseRequest,
};
use tonic::Code;

/// Runs the officers' `e2ee-recovery` with `args` and `stdin`.
fn recovery_tool(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(client_package_binary("e2ee-recovery"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn e2ee-recovery");
    let written = child.stdin.take().expect("stdin").write_all(stdin.as_bytes());
    if let Err(error) = written {
        assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {error}");
    }
    child.wait_with_output().expect("e2ee-recovery output")
}

/// The 3-of-5 ceremony in `dir`: the five shares' word lines and the public key file.
fn ceremony(dir: &Path) -> (Vec<String>, PathBuf) {
    let config = dir.join("ceremony.toml");
    std::fs::write(
        &config,
        "reference = \"recovery ceremony 2026-12, vault B\"\nthreshold = 3\nshares = 5\n\
         officers = [\"Ada\", \"Grace\", \"Katherine\", \"Margaret\", \"Radia\"]\noutput_dir = \"recovery\"\n",
    )
    .expect("write ceremony config");
    let output = recovery_tool(&["ceremony", "--config", config.to_str().expect("path")], "");
    assert!(output.status.success(), "ceremony: {}", output_text(&output));
    let sheet = String::from_utf8(output.stdout).expect("UTF-8 sheet");
    let lines: Vec<&str> = sheet.lines().filter(|line| !line.is_empty()).collect();
    let shares: Vec<String> = lines.chunks(2).map(|pair| pair[1].to_owned()).collect();
    assert_eq!(shares.len(), 5, "{sheet}");
    assert!(
        !dir.join("recovery").read_dir().expect("outputs").any(|entry| {
            let text = std::fs::read_to_string(entry.expect("entry").path()).unwrap_or_default();
            shares.iter().any(|share| text.contains(share.as_str()))
        }),
        "no share is written to disk"
    );
    (shares, dir.join("recovery").join("recovery-public-key.pem"))
}

/// The entries of an export, as text, one per entry.
fn exported_entries(export: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(export.join("entries.bin")).expect("entries.bin")).into_owned()
}

/// The story on `server`; `directory` holds devices, storage and the officers' files; `log` is
/// the server's debug log when it is captured.
async fn story(server: DevServer, directory: &Path, log: Option<&Path>) {
    let cli = Cli::for_server(&server, directory.join("storage"));
    let mut identity = server.client().await;
    let mut alice_admin = AdminClient::new(server.connect_as("admin-alice").await);
    let mut bob_admin = AdminClient::new(server.connect_as("admin-bob").await);
    let laptop = directory.join("alice-laptop");
    let phone = directory.join("alice-phone");
    let bob = directory.join("bob-laptop");
    let report = directory.join("report.txt");
    std::fs::write(&report, b"the numbers only alice and bob may read\n").expect("write");

    // 1. alice enrolls on device 1: her wrapped key is on the CA.
    let enrolled = cli.ok(&laptop, &["enroll", "--user", "alice"]);
    let words = recovery_words(&enrolled);
    let alice = alice_admin
        .get_identity(GetIdentityRequest {
            user_id: "alice".to_owned(),
        })
        .await
        .expect("alice")
        .into_inner();
    assert!(alice.wrapped_key_stored, "enrolment uploads the wrapped key");
    // 2. device 2 recovers it with the 12 words.
    cli.ok_with_input(&phone, &["recover", "--user", "alice"], &format!("{words}\n"));
    // 3. alice shares a folder with bob.
    cli.ok(&bob, &["enroll", "--user", "bob"]);
    cli.ok(&laptop, &["create", "--folder", "Finance"]);
    cli.ok(&laptop, &["add", "--folder", "Finance", report.to_str().expect("path")]);
    cli.ok(&laptop, &["share", "--folder", "Finance", "--user", "bob"]);
    let bob_copy = directory.join("bob-report.txt");
    cli.ok(&bob, &get("Finance", "report.txt", &bob_copy));

    // 4. The officers' ceremony; two admins enable the recovery key.
    let (shares, public_key) = ceremony(directory);
    let request = alice_admin
        .register_recovery_key(RegisterRecoveryKeyRequest {
            public_key_pem: std::fs::read_to_string(&public_key).expect("public key"),
            ceremony_reference: "recovery ceremony 2026-12, vault B".to_owned(),
            reason: "company policy: an offline recovery key".to_owned(),
        })
        .await
        .expect("registration requested")
        .into_inner()
        .request
        .expect("request");
    bob_admin
        .approve_request(ApproveRequestRequest {
            request_id: request.request_id,
        })
        .await
        .expect("registration approved");
    let recovery = ca_info(&mut identity).await.recovery.expect("status");
    assert!(recovery.enabled);
    // The client warns, naming the key, and deposits nothing until alice acknowledges.
    let declined = cli.run(&phone, &["escrow"], "no\n");
    assert_eq!(declined.status.code(), Some(3), "{}", output_text(&declined));
    let warning = String::from_utf8_lossy(&declined.stderr);
    assert!(warning.contains(&recovery.fingerprint), "{warning}");
    let before = alice_admin
        .get_identity(GetIdentityRequest {
            user_id: "alice".to_owned(),
        })
        .await
        .expect("alice")
        .into_inner();
    assert!(before.escrow_recovery_key_fingerprint.is_empty(), "nothing deposited");
    // 5. alice acknowledges: her escrow is deposited.
    let deposited = cli.ok_with_input(&phone, &["escrow"], "yes\n");
    assert!(deposited.contains(&recovery.fingerprint), "{deposited}");
    let after = alice_admin
        .get_identity(GetIdentityRequest {
            user_id: "alice".to_owned(),
        })
        .await
        .expect("alice")
        .into_inner();
    assert_eq!(after.escrow_recovery_key_fingerprint, recovery.fingerprint);
    assert_eq!(after.backup_reads.len(), 1, "device 2's fetch is listed");
    assert_eq!(after.backup_reads[0].read_by, "sync-server");

    // 6. alice loses both devices and her words.
    std::fs::remove_dir_all(&laptop).expect("lose the laptop");
    std::fs::remove_dir_all(&phone).expect("lose the phone");
    drop(words);

    // 7. Two admins approve a release; the blob is returned once.
    let release = alice_admin
        .request_escrow_release(RequestEscrowReleaseRequest {
            user_id: "alice".to_owned(),
            reason: "alice lost every device and her recovery words".to_owned(),
        })
        .await
        .expect("release requested")
        .into_inner()
        .request
        .expect("request");
    assert_eq!(
        alice_admin
            .approve_request(ApproveRequestRequest {
                request_id: release.request_id.clone(),
            })
            .await
            .expect_err("self-approval")
            .code(),
        Code::PermissionDenied
    );
    bob_admin
        .approve_request(ApproveRequestRequest {
            request_id: release.request_id.clone(),
        })
        .await
        .expect("release approved");
    let escrow = alice_admin
        .get_escrow(GetEscrowRequest {
            request_id: release.request_id.clone(),
        })
        .await
        .expect("released")
        .into_inner();
    assert_eq!(
        bob_admin
            .get_escrow(GetEscrowRequest {
                request_id: release.request_id,
            })
            .await
            .expect_err("a second GetEscrow")
            .code(),
        Code::FailedPrecondition
    );
    let blob = directory.join("alice.escrow");
    std::fs::write(&blob, &escrow.escrow_blob).expect("write blob");

    // 8. Three of five officers open it offline; alice's key works again on a third device.
    let open_config = directory.join("open.toml");
    std::fs::write(
        &open_config,
        format!(
            "escrow_blob = \"alice.escrow\"\nuser_id = \"alice\"\nrecovery_public_key = \"{}\"\n\
             private_key_out = \"alice-key.pem\"\n",
            public_key.display()
        ),
    )
    .expect("write open config");
    let two = format!("{}\n{}\n", shares[0], shares[3]);
    let refused = recovery_tool(&["open", "--config", open_config.to_str().expect("path")], &two);
    assert!(!refused.status.success(), "two shares of a 3-of-5 split open nothing");
    assert!(!directory.join("alice-key.pem").exists());
    let three = format!("{}\n{}\n{}\n", shares[4], shares[1], shares[2]);
    let opened = recovery_tool(&["open", "--config", open_config.to_str().expect("path")], &three);
    assert!(opened.status.success(), "open: {}", output_text(&opened));
    let key_file = directory.join("alice-key.pem");
    let mode = std::fs::metadata(&key_file).expect("key written").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let tablet = directory.join("alice-tablet");
    cli.ok(
        &tablet,
        &[
            "import-key",
            "--user",
            "alice",
            "--private-key",
            key_file.to_str().expect("path"),
        ],
    );
    let recovered_copy = directory.join("recovered-report.txt");
    cli.ok(&tablet, &get("Finance", "report.txt", &recovered_copy));
    assert_eq!(
        std::fs::read(&recovered_copy).expect("read"),
        std::fs::read(&report).expect("read")
    );

    // No secret and no blob in the service's own log.
    if let Some(log) = log {
        let wrapped_key = KeyBackupClient::new(server.connect_as("sync-server").await)
            .get_wrapped_private_key(GetWrappedPrivateKeyRequest {
                user_id: "alice".to_owned(),
            })
            .await
            .expect("wrapped key")
            .into_inner()
            .wrapped_key;
        let text = std::fs::read_to_string(log).expect("server log");
        assert!(
            text.contains("escrow deposit released"),
            "the log is captured at debug level"
        );
        let mut secrets: Vec<String> = shares.clone();
        secrets.extend(shares.iter().flat_map(|share| {
            share
                .split(' ')
                .collect::<Vec<_>>()
                .windows(4)
                .map(|run| run.join(" "))
                .collect::<Vec<_>>()
        }));
        secrets.extend(wrapped_key.split('|').map(str::to_owned));
        secrets.push(hex::encode(&escrow.escrow_blob[..32]));
        secrets.push(base64::engine::general_purpose::STANDARD.encode(&escrow.escrow_blob[..30]));
        for secret in secrets {
            assert!(!text.contains(&secret), "the server log holds a secret or a blob");
        }
    }

    // 9. The exported log verifies offline and lists every step, naming the admins.
    let vkey = ca_info(&mut identity)
        .await
        .checkpoint_verifier_keys
        .first()
        .expect("vkey")
        .clone();
    let config_dir = server.stop();
    let export = directory.join("export");
    let (exported, text) = audit_export(&config_dir.join("ca-service.toml"), &export, &[]);
    assert!(exported, "{text}");
    let (verified, text) = audit_verify(&export, &vkey, None, &[]);
    assert!(verified, "{text}");
    assert!(text.contains("escrow releases and recovery-key changes 2"), "{text}");
    let entries = exported_entries(&export);
    for (kind, names) in [
        ("issuance", vec!["subject alice"]),
        ("key-backup-stored", vec!["subject alice"]),
        ("key-backup-read", vec!["actor sync-server", "subject alice"]),
        (
            "request-opened",
            vec!["actor admin-alice", "request-kind recovery-key-registration"],
        ),
        (
            "recovery-key-registered",
            vec!["actor admin-bob", "requested-by admin-alice", "approved-by admin-bob"],
        ),
        ("escrow-deposited", vec!["subject alice"]),
        (
            "request-opened",
            vec!["actor admin-alice", "request-kind escrow-release"],
        ),
        (
            "request-approved",
            vec!["actor admin-bob", "request-kind escrow-release"],
        ),
        (
            "escrow-released",
            vec!["actor admin-alice", "approved-by admin-bob", "subject alice"],
        ),
    ] {
        let found = entries.split("e2ee-ca audit entry v1\n").any(|entry| {
            entry.starts_with(&format!("kind {kind}\n"))
                && names.iter().all(|name| entry.contains(&format!("\n{name}\n")))
        });
        assert!(found, "no {kind} entry with {names:?} in the exported log");
    }
    for share in &shares {
        assert!(!entries.contains(share.as_str()), "no share in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_recovers_her_key_from_words_and_from_the_officers_on_the_embedded_store() {
    let directory = tempfile::tempdir().expect("tempdir");
    let log = directory.path().join("server.log");
    let server = DevServer::start_logging(directory.path(), "ecdsa-p256", &log);
    story(server, directory.path(), Some(&log)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_recovers_her_key_from_words_and_from_the_officers_on_postgres() {
    let directory = tempfile::tempdir().expect("tempdir");
    let database = common::postgres::TestDatabase::create().await;
    let ca = common::postgres::ProvisionedCa::create();
    let server = DevServer::start_with_config(&ca.replica_config(0, &database.url));
    story(server, directory.path(), None).await;
}
