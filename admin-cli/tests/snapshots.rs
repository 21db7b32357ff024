//! Snapshot tests: `--help` of every subcommand and the table and JSON renderings of representative responses, compared with the files in `tests/expected/`.
//!
//! Committed expected files rather than `insta`: the snapshots are plain text reviewed in diffs,
//! and the comparison is a few lines, so no new dependency (nor cargo-insta) is needed. After an
//! intended change, rewrite them with `UPDATE_EXPECTED=1 cargo test -p e2ee-ca-admin --test snapshots`
//! and review the diff.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

use std::path::PathBuf;

use e2ee_ca_admin::render::{self, CrlSummary, ExportSummary, Format};
use e2ee_ca_proto::v1 as pb;

/// Compares `actual` with `tests/expected/NAME`, or rewrites that file with `UPDATE_EXPECTED=1`.
fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/expected")
        .join(name);
    if std::env::var_os("UPDATE_EXPECTED").is_some() {
        std::fs::write(&path, actual).expect("write expected file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "{}: {error}; run UPDATE_EXPECTED=1 cargo test -p e2ee-ca-admin --test snapshots",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{name} differs from {}:\n--- expected\n{expected}\n--- actual\n{actual}\n(if intended: UPDATE_EXPECTED=1 cargo test -p e2ee-ca-admin --test snapshots)",
        path.display()
    );
}

/// Runs the CLI in-process with an empty environment: (exit code, stdout, stderr).
fn run(arguments: &[&str]) -> (u8, String, String) {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let nothing = |_: &str| None;
    let code = e2ee_ca_admin::run(
        std::iter::once("e2ee-ca-admin").chain(arguments.iter().copied()),
        &nothing,
        &mut stdout,
        &mut stderr,
    );
    (
        code,
        String::from_utf8(stdout).expect("UTF-8"),
        String::from_utf8(stderr).expect("UTF-8"),
    )
}

#[test]
fn the_help_of_every_subcommand_matches_its_snapshot() {
    for command in [
        "",
        "identity",
        "identity show",
        "identity list",
        "revoke",
        "reset",
        "reset request",
        "request",
        "request approve",
        "request list",
        "checkpoint",
        "log",
        "log export",
        "crl",
    ] {
        let mut arguments: Vec<&str> = command.split_whitespace().collect();
        arguments.push("--help");
        let (code, stdout, stderr) = run(&arguments);
        assert_eq!((code, stderr.as_str()), (0, ""), "{command} --help");
        let name = if command.is_empty() {
            "help.txt".to_owned()
        } else {
            format!("help-{}.txt", command.replace(' ', "-"))
        };
        check(&name, &stdout);
    }
}

#[test]
fn usage_errors_exit_2_with_claps_message_on_stderr() {
    // No subcommand: clap prints the help to stderr, with status 2.
    let (code, stdout, stderr) = run(&[]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty() && stderr.contains("Usage: e2ee-ca-admin"), "{stderr}");
    for arguments in [
        vec!["revoke", "--reason", "superseded"],
        vec!["revoke", "--serial", "01", "--user", "alice", "--reason", "superseded"],
        vec!["revoke", "--serial", "01", "--reason", "unspecified"],
        vec!["reset", "request", "alice"],
        vec![
            "reset",
            "request",
            "alice",
            "--reason",
            "lost",
            "--revocation-reason",
            "privilege-withdrawn",
        ],
        vec!["identity", "list", "--page-size", "many"],
        vec!["identity", "list", "--all", "--page-token", "x"],
        vec!["log", "export"],
        vec!["frobnicate"],
    ] {
        let (code, stdout, stderr) = run(&arguments);
        assert_eq!(code, 2, "{arguments:?}: {stderr}");
        assert!(
            stdout.is_empty() && stderr.starts_with("error:"),
            "{arguments:?}: {stderr}"
        );
    }
}

fn certificate(serial: &str, revoked: bool) -> pb::CertificateStatus {
    pb::CertificateStatus {
        serial_hex: serial.to_owned(),
        key_fingerprint: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
        issued_at: "2026-01-02T03:04:05Z".to_owned(),
        not_after: "2027-01-02T03:04:05Z".to_owned(),
        revoked,
        revoked_at: if revoked {
            "2026-02-01T00:00:00Z".to_owned()
        } else {
            String::new()
        },
        revocation_reason: if revoked {
            pb::RevocationReason::Superseded.into()
        } else {
            pb::RevocationReason::Unspecified.into()
        },
        certificate_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_owned(),
    }
}

fn approval(approved: bool) -> pb::ApprovalRequest {
    pb::ApprovalRequest {
        request_id: "0123456789abcdef0123456789abcdef".to_owned(),
        kind: "identity-reset".to_owned(),
        user_id: "alice".to_owned(),
        reason: "lost her laptop".to_owned(),
        requested_by: "admin-alice".to_owned(),
        requested_at: "2026-03-01T10:00:00Z".to_owned(),
        expires_at: "2026-03-02T10:00:00Z".to_owned(),
        approved_by: if approved {
            "admin-bob".to_owned()
        } else {
            String::new()
        },
        approved_at: if approved {
            "2026-03-01T10:05:00Z".to_owned()
        } else {
            String::new()
        },
        revocation_reason: pb::RevocationReason::KeyCompromise.into(),
        key_fingerprint: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".to_owned(),
    }
}

/// Each rendering in both formats: NAME.txt and NAME.json.
fn check_both(name: &str, render: impl Fn(Format) -> String) {
    check(&format!("{name}.txt"), &render(Format::Table));
    let json = render(Format::Json);
    serde_json::from_str::<serde_json::Value>(&json).expect("valid JSON");
    check(&format!("{name}.json"), &json);
}

#[test]
fn responses_render_as_their_table_and_json_snapshots() {
    let identity = pb::GetIdentityResponse {
        user_id: "alice".to_owned(),
        key_fingerprint: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
        pinned_since: "2026-01-02T03:04:05Z".to_owned(),
        certificates: vec![certificate("18edaaca88ca459d", false), certificate("18ed0001", true)],
        log_entries: vec![
            pb::IdentityLogEntry {
                index: Some(7),
                entry: "kind issuance\nuser alice\n".to_owned(),
                entry_hash: "aa".repeat(32),
            },
            pb::IdentityLogEntry {
                index: None,
                entry: "kind revocation\nuser alice\n".to_owned(),
                entry_hash: "bb".repeat(32),
            },
        ],
    };
    check_both("identity-show", |format| render::identity(&identity, format));
    let unused = pb::GetIdentityResponse {
        certificates: Vec::new(),
        log_entries: Vec::new(),
        ..identity.clone()
    };
    check_both("identity-show-empty", |format| render::identity(&unused, format));

    let identities = vec![
        pb::IdentitySummary {
            user_id: "alice".to_owned(),
            key_fingerprint: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
            pinned_since: "2026-01-02T03:04:05Z".to_owned(),
        },
        pb::IdentitySummary {
            user_id: "bartholomew@example.org".to_owned(),
            key_fingerprint: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".to_owned(),
            pinned_since: "2026-01-03T00:00:00Z".to_owned(),
        },
    ];
    check_both("identity-list", |format| {
        render::identities(&identities, "YWxpY2U", format)
    });
    check_both("identity-list-empty", |format| render::identities(&[], "", format));

    let revoked = pb::RevokeCertificateResponse {
        revoked_serials: vec!["18edaaca88ca459d".to_owned(), "18ed0001".to_owned()],
        log_entry: Some(pb::LogEntryRef {
            index: 12,
            entry_hash: "cc".repeat(32),
            tlog_proof: String::new(),
        }),
        crl_number: 3,
    };
    check_both("revoke", |format| render::revoked(&revoked, format));
    let unsigned = pb::RevokeCertificateResponse {
        crl_number: 0,
        ..revoked.clone()
    };
    check_both("revoke-crl-pending", |format| render::revoked(&unsigned, format));

    check_both("reset-request", |format| render::request(&approval(false), format));
    check_both("request-approve", |format| render::request(&approval(true), format));
    check_both("request-list", |format| {
        render::requests(&[approval(false), approval(true)], format)
    });
    check_both("request-list-empty", |format| render::requests(&[], format));

    let checkpoint = pb::GetCheckpointResponse {
        checkpoint: "dev.e2ee-ca.local/audit-log\n42\nq1w2e3r4t5y6u7i8o9p0q1w2e3r4t5y6u7i8o9p0q1w=\n\n— dev.e2ee-ca.local/audit-log AbCdEfGh\n".to_owned(),
        tree_size: 42,
    };
    check_both("checkpoint", |format| render::checkpoint(&checkpoint, format));

    let export = ExportSummary {
        dir: "audit-export".to_owned(),
        start: 0,
        end: 42,
        tree_size: 42,
    };
    check_both("log-export", |format| render::export(&export, format));

    let crl = CrlSummary {
        crl_number: 5,
        this_update: "2026-03-01T10:00:00Z".to_owned(),
        next_update: "2026-03-02T10:00:00Z".to_owned(),
        revoked_count: 2,
        der_bytes: 431,
        out: Some("crl.der".to_owned()),
    };
    check_both("crl", |format| render::crl(&crl, format));
    let not_written = CrlSummary { out: None, ..crl };
    check_both("crl-summary", |format| render::crl(&not_written, format));
}
