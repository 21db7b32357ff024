//! The `e2ee-ca-admin` binary as a process: exit codes and the one-line error for usage errors, bad env files, unreadable or wrong TLS files and an unreachable CA; no key material in any output.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

use std::path::Path;
use std::process::Command;

const ADMIN: &str = env!("CARGO_BIN_EXE_e2ee-ca-admin");

/// Runs the binary with no E2EE_CA_* variables from the test's environment.
fn admin(arguments: &[&str], environment: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(ADMIN);
    for variable in ["E2EE_CA_ENDPOINT", "E2EE_CA_CACERT", "E2EE_CA_CERT", "E2EE_CA_KEY"] {
        command.env_remove(variable);
    }
    let output = command
        .args(arguments)
        .envs(environment.iter().copied())
        .output()
        .expect("runs");
    (
        output.status.code().expect("exited"),
        String::from_utf8(output.stdout).expect("UTF-8"),
        String::from_utf8(output.stderr).expect("UTF-8"),
    )
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

fn one_error_line(stderr: &str) {
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("error: "), "{stderr:?}");
}

#[test]
fn help_exits_0_and_a_usage_error_exits_2() {
    let (code, stdout, _) = admin(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("Exit codes:"), "{stdout}");
    let (code, stdout, stderr) = admin(&["revoke", "--serial", "01"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty() && stderr.contains("--reason"), "{stderr}");
}

#[test]
fn an_unreachable_ca_exits_5_with_one_line_naming_unavailable() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let (code, stdout, stderr) = admin(&["--plaintext", "--endpoint", &endpoint, "checkpoint"], &[]);
    assert_eq!(code, 5, "{stderr}");
    assert!(stdout.is_empty());
    one_error_line(&stderr);
    assert!(stderr.contains("UNAVAILABLE: cannot connect to"), "{stderr}");
    // The same endpoint from the environment.
    let (code, _, stderr) = admin(&["--plaintext", "identity", "list"], &[("E2EE_CA_ENDPOINT", &endpoint)]);
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains(&endpoint), "{stderr}");
}

#[test]
fn bad_connection_settings_exit_2_naming_what_is_wrong() {
    let directory = tempfile::tempdir().expect("tempdir");
    let env_file = directory.path().join("admin.env");
    std::fs::write(&env_file, "E2EE_CA_ENDPOINT=https://127.0.0.1:1\nthis line is wrong\n").expect("write");
    let env_file = env_file.to_str().expect("UTF-8 path");
    let (code, _, stderr) = admin(&["--env-file", env_file, "request", "list"], &[]);
    assert_eq!(code, 2, "{stderr}");
    one_error_line(&stderr);
    assert!(stderr.contains("admin.env:2: expected KEY=VALUE"), "{stderr}");

    let (code, _, stderr) = admin(&["--endpoint", "https://127.0.0.1:1", "request", "list"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("needs --ca-cert"), "{stderr}");

    let missing = directory.path().join("missing-ca.pem");
    let (code, _, stderr) = admin(
        &[
            "--endpoint",
            "https://127.0.0.1:1",
            "--ca-cert",
            missing.to_str().expect("UTF-8"),
            "crl",
        ],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot read --ca-cert"), "{stderr}");
}

#[test]
fn key_material_is_never_printed_even_when_the_key_file_is_unusable() {
    let directory = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = directory.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let secret = "c2VjcmV0LWtleS1tYXRlcmlhbC1kby1ub3QtcHJpbnQ";
    let key = write(
        "admin-key.pem",
        &format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"),
    );
    let certificate = write(
        "admin.pem",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    );
    let ca = write(
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    );
    let endpoint = format!("https://127.0.0.1:{}", closed_port());
    let path = |path: &Path| path.to_str().expect("UTF-8").to_owned();
    let (code, stdout, stderr) = admin(
        &[
            "--endpoint",
            &endpoint,
            "--ca-cert",
            &path(&ca),
            "--cert",
            &path(&certificate),
            "--key",
            &path(&key),
            "identity",
            "show",
            "alice",
        ],
        &[],
    );
    assert_ne!(code, 0);
    one_error_line(&stderr);
    assert!(!stdout.contains(secret) && !stderr.contains(secret), "{stderr}");
}
