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
        "recovery",
        "recovery register",
        "recovery disable",
        "recovery status",
        "escrow",
        "escrow request",
        "escrow get",
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
        vec!["recovery", "register", "--reason", "new ceremony"],
        vec![
            "recovery",
            "register",
            "--reference",
            "2026-03-01",
            "--reason",
            "new ceremony",
        ],
        vec!["recovery", "disable"],
        vec!["escrow", "request", "--reason", "left the company"],
        vec!["escrow", "request", "--user", "alice"],
        vec!["escrow", "get", "--request", "0123456789abcdef0123456789abcdef"],
        vec!["escrow", "get", "--out", "blob.bin"],
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
        ceremony_reference: String::new(),
    }
}

/// A request of another kind than a reset: no revocation reason, and for the recovery-key kinds
/// no user, the recovery key's fingerprint and (for a registration) the ceremony reference.
fn approval_of(kind: &str, request_id: &str, approved: bool) -> pb::ApprovalRequest {
    let recovery_key = kind.starts_with("recovery-key-");
    pb::ApprovalRequest {
        request_id: request_id.to_owned(),
        kind: kind.to_owned(),
        user_id: if recovery_key {
            String::new()
        } else {
            "alice".to_owned()
        },
        reason: if recovery_key {
            "yearly key rotation".to_owned()
        } else {
            "left the company; legal hold".to_owned()
        },
        revocation_reason: pb::RevocationReason::Unspecified.into(),
        key_fingerprint: if recovery_key {
            "5f1c0b2e9d3a4c6b8e7f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f".to_owned()
        } else {
            String::new()
        },
        ceremony_reference: if kind == "recovery-key-registration" {
            "2026-03-01 vault B, officers Ada, Bo, Cy".to_owned()
        } else {
            String::new()
        },
        ..approval(approved)
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
        backup_reads: vec![
            pb::BackupRead {
                read_by: "sync-server".to_owned(),
                read_at: "2026-01-05T08:00:00Z".to_owned(),
                index: Some(9),
            },
            pb::BackupRead {
                read_by: "admin-bob".to_owned(),
                read_at: "2026-02-01T00:00:00Z".to_owned(),
                index: None,
            },
        ],
        wrapped_key_stored: true,
        escrow_recovery_key_fingerprint: "5f1c0b2e9d3a4c6b8e7f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f".to_owned(),
    };
    check_both("identity-show", |format| render::identity(&identity, format));
    let unused = pb::GetIdentityResponse {
        certificates: Vec::new(),
        log_entries: Vec::new(),
        backup_reads: Vec::new(),
        wrapped_key_stored: false,
        escrow_recovery_key_fingerprint: String::new(),
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

    check_both("reset-request", |format| render::pending(&approval(false), format));
    check_both("request-approve", |format| render::approved(&approval(true), format));
    check_both("request-list", |format| {
        render::requests(&[approval(false), approval(true)], format)
    });
    check_both("request-list-empty", |format| render::requests(&[], format));

    let registration = |approved| {
        approval_of(
            "recovery-key-registration",
            "1111111111111111aaaaaaaaaaaaaaaa",
            approved,
        )
    };
    let disable = |approved| approval_of("recovery-key-disable", "2222222222222222bbbbbbbbbbbbbbbb", approved);
    let release = |approved| approval_of("escrow-release", "3333333333333333cccccccccccccccc", approved);
    check_both("recovery-register", |format| {
        render::pending(&registration(false), format)
    });
    check_both("recovery-disable", |format| render::pending(&disable(false), format));
    check_both("escrow-request", |format| render::pending(&release(false), format));
    check_both("request-approve-recovery-key-registration", |format| {
        render::approved(&registration(true), format)
    });
    check_both("request-approve-recovery-key-disable", |format| {
        render::approved(&disable(true), format)
    });
    check_both("request-approve-escrow-release", |format| {
        render::approved(&release(true), format)
    });
    check_both("request-list-every-kind", |format| {
        render::requests(
            &[approval(false), release(true), registration(false), disable(false)],
            format,
        )
    });

    let recovery = pb::RecoveryKeyStatus {
        enabled: true,
        certificate_pem: "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n".to_owned(),
        fingerprint: "5f1c0b2e9d3a4c6b8e7f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f".to_owned(),
        enabled_since: "2026-03-01T12:00:00Z".to_owned(),
    };
    check_both("recovery-status", |format| render::recovery(&recovery, None, format));
    check_both("recovery-status-certificate-out", |format| {
        render::recovery(&recovery, Some("recovery-certificate.pem"), format)
    });
    check_both("recovery-status-disabled", |format| {
        render::recovery(&pb::RecoveryKeyStatus::default(), None, format)
    });

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

#[test]
fn escrow_get_renders_what_it_fetched_but_never_the_blob() {
    let blob = b"SEALED-ESCROW-BLOB \x00\x01\x02 do not print".to_vec();
    let response = pb::GetEscrowResponse {
        user_id: "alice".to_owned(),
        escrow_blob: blob.clone(),
        recovery_key_fingerprint: "5f1c0b2e9d3a4c6b8e7f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f".to_owned(),
        deposited_at: "2026-01-05T08:00:00Z".to_owned(),
        log_entry: Some(pb::LogEntryRef {
            index: 31,
            entry_hash: "dd".repeat(32),
            tlog_proof: String::new(),
        }),
    };
    check_both("escrow-get", |format| {
        render::escrow(&response, "alice-escrow.bin", format)
    });
    let hex: String = blob.iter().map(|byte| format!("{byte:02x}")).collect();
    for format in [Format::Table, Format::Json] {
        let out = render::escrow(&response, "alice-escrow.bin", format);
        assert!(!out.contains("SEALED-ESCROW-BLOB") && !out.contains(&hex), "{out}");
    }
}
