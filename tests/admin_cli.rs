//! The admin CLI end to end against a real `ca-service serve --dev`: list and show identities, the dual-control reset (the requester's own approval is refused with exit 3, another admin's is accepted), revocation by serial, the CRL verified with `openssl crl -verify`, the checkpoint, and a log export that `ca-service audit verify` accepts; and a recovery key registered under dual control and an escrow deposit released once into a 0600 file.
//!
//! The CLI runs in-process through `e2ee_ca_admin::run`, the function its `main` calls with the
//! process's arguments and streams, so that `cargo test -p ca-service` needs no second binary built.
//! The dev server serves mTLS with its dev PKI (`<data>/dev-pki/`), and each step runs as the dev
//! principal it names: admin-alice, admin-bob, auditor, or sync-server (whose Admin call is refused).

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{DevServer, audit_verify, ca_info, issue_and_wait_for_checkpoint};
use serde_json::Value;

/// The CLI's answer: exit code, stdout, stderr.
struct Answer {
    code: u8,
    stdout: String,
    stderr: String,
}

impl Answer {
    fn json(&self) -> Value {
        assert_eq!(self.code, 0, "stderr: {}", self.stderr);
        serde_json::from_str(&self.stdout).expect("JSON output")
    }
}

/// How to reach the dev server as one of its principals.
struct Admin {
    endpoint: String,
    pki: PathBuf,
}

impl Admin {
    fn mutual_tls(&self) -> bool {
        self.endpoint.starts_with("https://")
    }

    /// Runs `e2ee-ca-admin` as `principal` with `arguments`.
    fn run(&self, principal: &str, arguments: &[&str]) -> Answer {
        let mut all: Vec<String> = vec![
            "e2ee-ca-admin".to_owned(),
            "--endpoint".to_owned(),
            self.endpoint.clone(),
        ];
        if self.mutual_tls() {
            let file = |name: String| self.pki.join(name).display().to_string();
            all.extend([
                "--ca-cert".to_owned(),
                file("ca.pem".to_owned()),
                "--cert".to_owned(),
                file(format!("{principal}.pem")),
                "--key".to_owned(),
                file(format!("{principal}-key.pem")),
            ]);
        } else {
            all.push("--plaintext".to_owned());
        }
        all.extend(arguments.iter().map(|argument| (*argument).to_owned()));
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let nothing = |_: &str| None;
        let code = e2ee_ca_admin::run(all, &nothing, &mut stdout, &mut stderr);
        Answer {
            code,
            stdout: String::from_utf8(stdout).expect("UTF-8"),
            stderr: String::from_utf8(stderr).expect("UTF-8"),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|item| item.as_str().expect("string").to_owned())
        .collect()
}

fn openssl(arguments: &[&str], crl: &Path) -> (bool, String) {
    let output = Command::new("openssl")
        .arg("crl")
        .args(arguments)
        .arg("-in")
        .arg(crl)
        .output()
        .expect("openssl runs");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn an_admin_lists_shows_resets_revokes_and_fetches_a_crl_that_openssl_verifies() {
    let workspace = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(workspace.path(), "ecdsa-p256");
    assert!(
        server.endpoint.starts_with("https://"),
        "serve --dev serves mTLS: {}",
        server.endpoint
    );
    let admin = Admin {
        endpoint: server.endpoint.clone(),
        pki: workspace.path().join("data").join("dev-pki"),
    };
    let runtime = runtime();
    let (ca_chain_pem, vkey) = runtime.block_on(async {
        issue_and_wait_for_checkpoint(&server, &["alice", "bob", "carol"]).await;
        let info = ca_info(&mut server.client().await).await;
        (info.ca_chain_pem, info.checkpoint_verifier_keys[0].clone())
    });

    // 1. List: every identity in user-id order, one page or page by page.
    let listed = admin.run("admin-alice", &["--json", "identity", "list"]).json();
    let users: Vec<&str> = listed["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .map(|identity| identity["user_id"].as_str().expect("user_id"))
        .collect();
    assert_eq!(users, ["alice", "bob", "carol"]);
    let first_page = admin.run("admin-alice", &["identity", "list", "--page-size", "2"]);
    assert_eq!(first_page.code, 0, "{}", first_page.stderr);
    assert!(first_page.stdout.starts_with("USER "), "{}", first_page.stdout);
    assert!(
        first_page.stdout.contains("more: --page-token "),
        "{}",
        first_page.stdout
    );
    let every_page = admin
        .run(
            "admin-alice",
            &["--json", "identity", "list", "--all", "--page-size", "2"],
        )
        .json();
    assert_eq!(every_page["identities"].as_array().expect("identities").len(), 3);
    assert_eq!(every_page["next_page_token"], "");

    // A principal without the admin role is refused (exit 3), and so is no client certificate.
    let sync_server = admin.run("sync-server", &["identity", "list"]);
    assert_eq!(sync_server.code, 3, "{}", sync_server.stderr);
    assert!(
        sync_server.stderr.starts_with("error: PERMISSION_DENIED: "),
        "{}",
        sync_server.stderr
    );
    let mut anonymous = vec![
        "e2ee-ca-admin".to_owned(),
        "--endpoint".to_owned(),
        admin.endpoint.clone(),
    ];
    anonymous.extend(["--ca-cert".to_owned(), admin.pki.join("ca.pem").display().to_string()]);
    anonymous.extend(["identity".to_owned(), "list".to_owned()]);
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let code = e2ee_ca_admin::run(anonymous, &|_: &str| None, &mut stdout, &mut stderr);
    let stderr = String::from_utf8(stderr).expect("UTF-8");
    assert_eq!(code, 3, "no client certificate: {stderr}");
    assert!(stderr.starts_with("error: UNAUTHENTICATED: "), "{stderr}");

    // 2. Show one; an unknown user is exit 4, an invalid one exit 3.
    let bob = admin.run("admin-alice", &["--json", "identity", "show", "bob"]).json();
    assert_eq!(bob["user_id"], "bob");
    let bob_serial = bob["certificates"][0]["serial_hex"]
        .as_str()
        .expect("serial")
        .to_owned();
    assert_eq!(bob["certificates"][0]["revoked"], false);
    let shown = admin.run("admin-alice", &["identity", "show", "alice"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(shown.stdout.starts_with("user:            alice\n"), "{}", shown.stdout);
    let unknown = admin.run("admin-alice", &["identity", "show", "nobody"]);
    assert_eq!(unknown.code, 4, "{}", unknown.stderr);
    assert!(unknown.stderr.starts_with("error: NOT_FOUND: "), "{}", unknown.stderr);

    // 3. The reset: admin-alice requests; her own approval is refused; admin-bob approves.
    let requested = admin
        .run(
            "admin-alice",
            &[
                "--json",
                "reset",
                "request",
                "alice",
                "--reason",
                "lost her laptop",
                "--revocation-reason",
                "key-compromise",
            ],
        )
        .json();
    let request_id = requested["request_id"].as_str().expect("request_id").to_owned();
    assert_eq!(requested["user_id"], "alice");
    assert_eq!(requested["revocation_reason"], "key-compromise");
    assert_eq!(requested["approved_by"], Value::Null);
    let open = admin.run("admin-bob", &["--json", "request", "list"]).json();
    assert!(
        open["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .any(|request| request["request_id"] == request_id.as_str()),
        "{open}"
    );
    let again = admin.run("admin-alice", &["reset", "request", "alice", "--reason", "twice"]);
    assert_eq!(again.code, 3, "a second open reset: {}", again.stderr);
    let own = admin.run("admin-alice", &["request", "approve", &request_id]);
    assert_eq!(own.code, 3, "the requester approving: {}", own.stderr);
    assert!(own.stderr.starts_with("error: PERMISSION_DENIED: "), "{}", own.stderr);
    assert_eq!(own.stderr.lines().count(), 1, "{}", own.stderr);
    if admin.mutual_tls() {
        let approved = admin
            .run("admin-bob", &["--json", "request", "approve", &request_id])
            .json();
        assert_eq!(approved["approved_by"], "admin-bob");
        assert_eq!(approved["requested_by"], "admin-alice");
    } else {
        eprintln!(
            "admin_cli: the server serves plaintext (every caller is one principal): admin-bob's approval needs mTLS and was not exercised"
        );
    }
    let malformed = admin.run("admin-bob", &["request", "approve", "not-an-id"]);
    assert_eq!(malformed.code, 3, "{}", malformed.stderr);

    // 4. Revoke by serial; again is refused; an unknown serial is not found.
    let revoked = admin
        .run(
            "admin-alice",
            &[
                "--json",
                "revoke",
                "--serial",
                &bob_serial,
                "--reason",
                "key-compromise",
            ],
        )
        .json();
    assert_eq!(strings(&revoked["revoked_serials"]), [bob_serial.as_str()]);
    let crl_number = revoked["crl_number"].as_u64().expect("crl_number");
    let twice = admin.run(
        "admin-alice",
        &["revoke", "--serial", &bob_serial, "--reason", "superseded"],
    );
    assert_eq!(twice.code, 3, "{}", twice.stderr);
    assert!(
        twice.stderr.starts_with("error: FAILED_PRECONDITION: "),
        "{}",
        twice.stderr
    );
    let unknown = admin.run(
        "admin-alice",
        &["revoke", "--serial", "0102030405060708", "--reason", "superseded"],
    );
    assert_eq!(unknown.code, 4, "{}", unknown.stderr);
    let bob = admin.run("admin-alice", &["--json", "identity", "show", "bob"]).json();
    assert_eq!(bob["certificates"][0]["revoked"], true);
    assert_eq!(bob["certificates"][0]["revocation_reason"], "key-compromise");

    // 5. The CRL lists it, and openssl verifies it under the CA certificate.
    let crl_pem = workspace.path().join("crl.pem");
    let fetched = admin
        .run(
            "admin-alice",
            &["--json", "crl", "--pem", "--out", crl_pem.to_str().expect("UTF-8")],
        )
        .json();
    assert!(
        fetched["revoked_count"].as_u64().expect("revoked_count") >= 1,
        "{fetched}"
    );
    if crl_number > 0 {
        assert!(
            fetched["crl_number"].as_u64().expect("crl_number") >= crl_number,
            "{fetched}"
        );
    }
    let ca_pem = workspace.path().join("ca.pem");
    std::fs::write(&ca_pem, &ca_chain_pem).expect("CA certificate");
    let (_, output) = openssl(
        &["-noout", "-verify", "-CAfile", ca_pem.to_str().expect("UTF-8")],
        &crl_pem,
    );
    assert!(output.contains("verify OK"), "{output}");
    let (listed, text) = openssl(&["-noout", "-text"], &crl_pem);
    assert!(listed, "{text}");
    assert!(
        text.contains(&bob_serial.to_uppercase()),
        "bob's serial in the CRL: {text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    let printed = admin.run("admin-alice", &["crl", "--pem"]);
    assert_eq!(printed.code, 0, "{}", printed.stderr);
    assert!(
        printed.stdout.starts_with("-----BEGIN X509 CRL-----"),
        "{}",
        printed.stdout
    );

    // 6. The checkpoint, and an export that the offline verifier accepts.
    let checkpoint = admin.run("auditor", &["--json", "checkpoint"]).json();
    assert!(
        checkpoint["tree_size"].as_u64().expect("tree_size") >= 3,
        "{checkpoint}"
    );
    let export_dir = workspace.path().join("export");
    let exported = admin
        .run(
            "auditor",
            &["--json", "log", "export", "--out", export_dir.to_str().expect("UTF-8")],
        )
        .json();
    assert_eq!(exported["start"], 0);
    assert_eq!(exported["end"], exported["tree_size"]);
    let (verified, output) = audit_verify(&export_dir, &vkey, None, &[]);
    assert!(verified, "audit verify on the CLI's export: {output}");
    let elsewhere = workspace.path().join("export-refused");
    let elsewhere = elsewhere.to_str().expect("UTF-8");
    let backwards = admin.run(
        "auditor",
        &["log", "export", "--start", "2", "--end", "1", "--out", elsewhere],
    );
    assert_eq!(backwards.code, 2, "start past end: {}", backwards.stderr);
    let past_the_checkpoint = admin.run("auditor", &["log", "export", "--end", "1000000", "--out", elsewhere]);
    assert_eq!(
        past_the_checkpoint.code, 3,
        "end past the checkpoint: {}",
        past_the_checkpoint.stderr
    );
    assert!(
        past_the_checkpoint.stderr.starts_with("error: INVALID_ARGUMENT: "),
        "{}",
        past_the_checkpoint.stderr
    );
    let left: Vec<_> = std::fs::read_dir(elsewhere).expect("the directory was made").collect();
    assert!(left.is_empty(), "a refused export leaves no files: {left:?}");
}

#[test]
fn an_admin_registers_a_recovery_key_and_an_escrow_is_released_to_a_file_once() {
    use e2ee_ca_proto::v1::DepositEscrowRequest;
    use e2ee_ca_proto::v1::key_backup_client::KeyBackupClient;
    use std::os::unix::fs::PermissionsExt;

    let workspace = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(workspace.path(), "ecdsa-p256");
    let admin = Admin {
        endpoint: server.endpoint.clone(),
        pki: workspace.path().join("data").join("dev-pki"),
    };
    let (public_key_pem, fingerprint) = common::key_backup::recovery_key(4);
    let public_key = workspace.path().join("recovery-public-key.pem");
    std::fs::write(&public_key, public_key_pem).expect("write");
    let public_key = public_key.to_str().expect("path");

    // Registration under dual control, through the CLI; status reports it.
    let opened = admin
        .run(
            "admin-alice",
            &[
                "--json",
                "recovery",
                "register",
                "--public-key",
                public_key,
                "--reference",
                "vault B",
                "--reason",
                "policy",
            ],
        )
        .json();
    let request_id = opened["request_id"].as_str().expect("request_id").to_owned();
    assert_eq!(opened["key_fingerprint"].as_str(), Some(fingerprint.as_str()));
    assert_eq!(
        admin.run("admin-alice", &["request", "approve", &request_id]).code,
        3,
        "self-approval"
    );
    assert_eq!(admin.run("admin-bob", &["request", "approve", &request_id]).code, 0);
    let status = admin.run("auditor", &["--json", "recovery", "status"]).json();
    assert_eq!(status["fingerprint"].as_str(), Some(fingerprint.as_str()), "{status}");

    // carol deposits (the sync server's call, with a proof by her key).
    let runtime = runtime();
    let blob = vec![9u8; 123];
    runtime.block_on(async {
        let key = common::UserKeyPair::generate(common::UserKey::EcP256);
        common::issue(&mut server.client().await, "carol", &key.csr("carol"))
            .await
            .expect("carol enrolled");
        let mut backup = KeyBackupClient::new(server.connect_as("sync-server").await);
        let nonce = common::key_backup::nonce(&mut backup, "carol").await;
        backup
            .deposit_escrow(DepositEscrowRequest {
                user_id: "carol".to_owned(),
                recovery_key_fingerprint: fingerprint.clone(),
                escrow_blob: blob.clone(),
                proof: Some(common::key_backup::proof(&key, "escrow", "carol", &nonce, &blob)),
            })
            .await
            .expect("deposited");
    });
    let shown = admin
        .run("admin-alice", &["--json", "identity", "show", "carol"])
        .json();
    assert_eq!(
        shown["escrow_recovery_key_fingerprint"].as_str(),
        Some(fingerprint.as_str())
    );

    // The release: requested, approved by the other admin, written once to a 0600 file.
    let release = admin
        .run(
            "admin-alice",
            &[
                "--json",
                "escrow",
                "request",
                "--user",
                "carol",
                "--reason",
                "lost devices",
            ],
        )
        .json();
    let release_id = release["request_id"].as_str().expect("request_id").to_owned();
    assert_eq!(admin.run("admin-bob", &["request", "approve", &release_id]).code, 0);
    let out = workspace.path().join("carol.escrow");
    let out_text = out.to_str().expect("path");
    let got = admin.run(
        "admin-alice",
        &["escrow", "get", "--request", &release_id, "--out", out_text],
    );
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert_eq!(std::fs::read(&out).expect("blob written"), blob);
    assert_eq!(
        std::fs::metadata(&out).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    let again_out = workspace.path().join("again.escrow");
    let again = admin.run(
        "admin-bob",
        &[
            "escrow",
            "get",
            "--request",
            &release_id,
            "--out",
            again_out.to_str().expect("path"),
        ],
    );
    assert_eq!(
        again.code, 3,
        "a second release is FAILED_PRECONDITION: {}",
        again.stderr
    );
    assert!(!again_out.exists(), "no file is left by a refused release");
    let denied = admin.run(
        "sync-server",
        &["escrow", "request", "--user", "carol", "--reason", "x"],
    );
    assert_eq!(denied.code, 3, "the sync server is no admin: {}", denied.stderr);
    server.stop();
}
