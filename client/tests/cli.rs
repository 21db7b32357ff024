//! The `e2ee-client` command line where no CA is needed: the help and exit-code table, and the refusals that come
//! before any call (a device that already has a key, a key file that is not one, a device not enrolled). The flows
//! against a CA (enroll, recover, rewrap, import-key, escrow) are in the workspace's end-to-end tests.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A port nothing listens on: a command that tried to reach the CA would fail with "cannot reach the CA".
const NO_CA: &str = "http://127.0.0.1:9";

fn e2ee_client(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_e2ee-client"))
        .args(["--ca", NO_CA])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run e2ee-client")
}

/// Runs a command that must fail with `code`; checks that stderr is exactly `expected_stderr`.
fn check_failure(args: &[&str], code: i32, expected_stderr: &str) {
    let output = e2ee_client(args);
    let stderr = String::from_utf8(output.stderr).expect("utf-8 stderr");
    assert_eq!(output.status.code(), Some(code), "e2ee-client {args:?}: {stderr}");
    assert_eq!(stderr, expected_stderr, "e2ee-client {args:?}");
    assert!(output.stdout.is_empty(), "e2ee-client {args:?} printed to stdout");
}

fn path(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn help_lists_the_key_commands_and_the_exit_codes() {
    let output = e2ee_client(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).expect("utf-8 help");
    for command in ["enroll", "recover", "rewrap", "import-key", "escrow", "ca-info"] {
        assert!(
            help.lines()
                .any(|line| line.trim_start().starts_with(&format!("{command} "))),
            "{command} in:\n{help}"
        );
    }
    assert!(
        help.ends_with(
            "Exit codes:\n  0  ok\n  1  an error (one line on stderr)\n  2  usage error (bad flags)\n  \
             3  the recovery-key notice was declined: nothing was deposited\n"
        ),
        "{help}"
    );
    for (command, flag) in [
        ("enroll", "--yes"),
        ("escrow", "--yes"),
        ("import-key", "--private-key"),
        ("import-key", "--rewrap"),
    ] {
        let output = e2ee_client(&[command, "--help"]);
        let help = String::from_utf8(output.stdout).expect("utf-8 help");
        assert!(help.contains(flag), "{command} {flag} in:\n{help}");
    }
}

#[test]
fn recover_and_import_key_refuse_a_device_that_has_a_key() {
    let directory = tempfile::tempdir().expect("tempdir");
    let device = directory.path().join("device");
    std::fs::create_dir(&device).expect("mkdir");
    std::fs::write(device.join("private-key.pem"), "not for replacing").expect("write");
    let key_file = directory.path().join("released.pem");
    std::fs::write(&key_file, "irrelevant").expect("write");
    let expected = format!(
        "e2ee-client: error: {} already exists; set the key up in a new device directory\n",
        device.join("private-key.pem").display()
    );
    check_failure(&["--dir", path(&device), "recover", "--user", "alice"], 1, &expected);
    check_failure(
        &[
            "--dir",
            path(&device),
            "import-key",
            "--user",
            "alice",
            "--private-key",
            path(&key_file),
        ],
        1,
        &expected,
    );
    assert_eq!(
        std::fs::read_to_string(device.join("private-key.pem")).expect("read"),
        "not for replacing"
    );
}

#[test]
fn import_key_refuses_a_file_that_is_not_a_private_key() {
    let directory = tempfile::tempdir().expect("tempdir");
    let device = directory.path().join("device");
    let key_file = directory.path().join("certificate.pem");
    std::fs::write(
        &key_file,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    check_failure(
        &[
            "--dir",
            path(&device),
            "import-key",
            "--user",
            "alice",
            "--private-key",
            path(&key_file),
        ],
        1,
        &format!(
            "e2ee-client: error: {} is not a PKCS#8 PEM RSA private key: invalid RSA key: \
             a PEM \"CERTIFICATE\" block, not PRIVATE KEY\n",
            key_file.display()
        ),
    );
    assert!(!device.exists(), "nothing is set up");
}

#[test]
fn rewrap_and_escrow_need_an_enrolled_device() {
    let directory = tempfile::tempdir().expect("tempdir");
    for command in ["rewrap", "escrow"] {
        let output = e2ee_client(&["--dir", path(directory.path()), command]);
        let stderr = String::from_utf8(output.stderr).expect("utf-8 stderr");
        assert_eq!(output.status.code(), Some(1), "{command}: {stderr}");
        assert!(
            stderr.starts_with(
                "e2ee-client: error: this device is not enrolled (run `enroll`, `recover` or `import-key` first): "
            ),
            "{command}: {stderr}"
        );
    }
}

#[test]
fn escrow_without_a_ca_fails_before_anything_is_recorded() {
    let directory = tempfile::tempdir().expect("tempdir");
    let device = directory.path();
    let key = e2ee_client::crypto::rsa::RsaPrivateKey::generate_2048().expect("keygen");
    std::fs::write(device.join("private-key.pem"), key.to_pkcs8_pem().as_bytes()).expect("write");
    std::fs::write(device.join("certificate.pem"), "").expect("write");
    let device_json = serde_json::json!({
        "user_id": "alice",
        "ca_public_key_pem": "",
        "ca_chain_pem": "",
        "ca_certificate_fingerprint": "",
    });
    std::fs::write(device.join("device.json"), device_json.to_string()).expect("write");
    for extra in [&["--yes"][..], &[][..]] {
        let mut args = vec!["--dir", path(device), "escrow"];
        args.extend(extra);
        let output = e2ee_client(&args);
        let stderr = String::from_utf8(output.stderr).expect("utf-8 stderr");
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.starts_with("e2ee-client: error: cannot reach the CA: "),
            "{stderr}"
        );
    }
    assert!(!device.join("recovery.json").exists());
}
