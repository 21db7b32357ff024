//! The certificate profile read by strict parsers: every certificate the CA makes (its own, a user's for each user key type, and a recovery key's) under a CA key of each algorithm, read by Python's `cryptography` and linted by pkilint; only the findings ARCHITECTURE.md lists are allowed.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use ca_service::hsm::KeyAlgorithm;
use common::{DevServer, UserKey, UserKeyPair, ca_info, issue, pem_der};
use e2ee_ca_proto::v1::admin_client::AdminClient;

/// The Python that has pkilint and `cryptography` (`tests/testdata/lint-requirements.txt`):
/// `E2EE_CA_TEST_PYTHON`, else the virtual environment `tests/run.sh` makes in the target directory.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("E2EE_CA_TEST_PYTHON") {
        return PathBuf::from(python);
    }
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("../lint-venv/bin/python3")
}

/// Which certificate a finding is on: the findings ARCHITECTURE.md allows are listed per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Ca,
    User,
    Recovery,
}

/// A pkilint finding: on which kind of certificate, its severity and its code.
type Finding = (Kind, String, String);

/// The findings ARCHITECTURE.md lists under the issuer, one per line:
/// `` - pkilint `CODE` (SEVERITY, CA certificate | user certificates | CA and user certificates |
/// recovery certificate | user and recovery certificates | every certificate): why ``.
fn allowed_findings() -> BTreeSet<Finding> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md"))
        .expect("read ARCHITECTURE.md");
    let mut allowed = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("- pkilint `") else {
            continue;
        };
        let (code, rest) = rest
            .split_once("` (")
            .expect("- pkilint `CODE` (SEVERITY, KIND): reason");
        let (severity, rest) = rest.split_once(", ").expect("severity");
        let kinds: &[Kind] = match rest.split_once("):").map(|(kind, _)| kind) {
            Some("CA certificate") => &[Kind::Ca],
            Some("user certificates") => &[Kind::User],
            Some("CA and user certificates") => &[Kind::Ca, Kind::User],
            Some("recovery certificate") => &[Kind::Recovery],
            Some("user and recovery certificates") => &[Kind::User, Kind::Recovery],
            Some("every certificate") => &[Kind::Ca, Kind::User, Kind::Recovery],
            _ => panic!("unknown certificate kind in {line:?}"),
        };
        for kind in kinds {
            allowed.insert((*kind, severity.to_owned(), code.to_owned()));
        }
    }
    assert!(!allowed.is_empty(), "ARCHITECTURE.md lists the pkilint findings kept");
    allowed
}

/// Lints `ca` and `users` (DER files) with `tests/testdata/lint_certificates.py`; returns its lines.
fn lint(ca: &Path, users: &[PathBuf]) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/testdata/lint_certificates.py");
    let python = python();
    let output = Command::new(&python)
        .arg(&script)
        .arg(ca)
        .args(users)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error} (tests/run.sh installs it)", python.display()));
    assert!(
        output.status.success(),
        "{} failed (pkilint installed? `pip install -r tests/testdata/lint-requirements.txt`): {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_certificate_reads_strictly_and_lints_with_only_the_documented_findings() {
    let directory = tempfile::tempdir().expect("tempdir");
    let user_keys: Vec<(UserKey, UserKeyPair)> = UserKey::ALL
        .into_iter()
        .map(|kind| (kind, UserKeyPair::generate(kind)))
        .collect();
    let mut unreadable = Vec::new();
    let mut findings = BTreeSet::new();
    let mut seen = Vec::new();
    for algorithm in KeyAlgorithm::ALL {
        let data = directory.path().join(algorithm.name());
        let server = DevServer::start_in(&data.join("data"), algorithm.name());
        let mut client = server.client().await;
        let certificates = data.join("certificates");
        std::fs::create_dir_all(&certificates).expect("certificates directory");
        let ca = certificates.join("ca.der");
        std::fs::write(&ca, pem_der(&ca_info(&mut client).await.ca_chain_pem)).expect("write the CA certificate");
        let mut users = Vec::new();
        for (kind, key) in &user_keys {
            let user_id = format!("user-{kind:?}");
            let issued = issue(&mut client, &user_id, &key.csr(&user_id)).await.expect("issued");
            let path = certificates.join(format!("{user_id}.der"));
            std::fs::write(&path, pem_der(&issued.certificate_pem)).expect("write the user certificate");
            users.push(path);
        }
        // The recovery key's certificate, registered under dual control.
        let mut alice = AdminClient::new(server.connect_as("admin-alice").await);
        let mut bob = AdminClient::new(server.connect_as("admin-bob").await);
        common::key_backup::register(&mut alice, &mut bob, 3).await;
        let recovery = certificates.join("recovery.der");
        let status = ca_info(&mut client).await.recovery.expect("recovery status");
        std::fs::write(&recovery, pem_der(&status.certificate_pem)).expect("write the recovery certificate");
        users.push(recovery.clone());
        for line in lint(&ca, &users) {
            let mut fields = line.splitn(5, ' ');
            let (tag, file) = (fields.next(), fields.next().unwrap_or_default());
            let kind = if Path::new(file) == ca {
                Kind::Ca
            } else if Path::new(file) == recovery {
                Kind::Recovery
            } else {
                Kind::User
            };
            match tag {
                Some("unreadable") => unreadable.push(format!("{}: {line}", algorithm.name())),
                Some("finding") => {
                    let severity = fields.next().expect("severity").to_owned();
                    let code = fields.next().expect("code").to_owned();
                    seen.push(format!("{} {line}", algorithm.name()));
                    findings.insert((kind, severity, code));
                }
                _ => panic!("unexpected linter output {line:?}"),
            }
        }
    }
    assert!(unreadable.is_empty(), "cryptography cannot read: {unreadable:#?}");
    assert_eq!(
        findings,
        allowed_findings(),
        "pkilint's findings differ from those ARCHITECTURE.md lists (fix or list each): {seen:#?}"
    );
}
