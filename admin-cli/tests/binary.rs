//! The `e2ee-ca-admin` binary as a process: exit codes and the one-line error for usage errors, bad env files, unreadable or wrong TLS files and an unreachable CA; no key material in any output; `escrow get` and `recovery register` refusing bad files before any connection.

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

/// A listening port, and a check that nothing connected to it.
struct Listener(std::net::TcpListener);

impl Listener {
    fn new() -> Listener {
        Listener(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.0.local_addr().expect("address").port())
    }

    fn assert_untouched(&self) {
        self.0.set_nonblocking(true).expect("nonblocking");
        match self.0.accept() {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the CLI connected: {other:?}"),
        }
    }
}

const REQUEST_ID: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn escrow_get_refuses_an_existing_out_file_before_contacting_the_ca() {
    let directory = tempfile::tempdir().expect("tempdir");
    let out = directory.path().join("alice-escrow.bin");
    std::fs::write(&out, "an earlier release").expect("write");
    let listener = Listener::new();
    let endpoint = listener.endpoint();
    let escrow_get = |out: &Path| {
        admin(
            &[
                "--plaintext",
                "--endpoint",
                &endpoint,
                "escrow",
                "get",
                "--request",
                REQUEST_ID,
                "--out",
                out.to_str().expect("UTF-8"),
            ],
            &[],
        )
    };
    let (code, stdout, stderr) = escrow_get(&out);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains("alice-escrow.bin exists: escrow get never overwrites a file"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&out).expect("read"), "an earlier release");
    // A dangling symlink is refused too: nothing is created where it points.
    #[cfg(unix)]
    {
        let target = directory.path().join("elsewhere.bin");
        let link = directory.path().join("link.bin");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let (code, _, stderr) = escrow_get(&link);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("link.bin exists"), "{stderr}");
        assert!(!target.exists());
    }
    let (code, _, stderr) = escrow_get(Path::new("-"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("the blob never goes to stdout"), "{stderr}");
    listener.assert_untouched();
}

#[test]
fn escrow_get_against_an_unreachable_ca_exits_5_and_leaves_no_file() {
    let directory = tempfile::tempdir().expect("tempdir");
    let out = directory.path().join("alice-escrow.bin");
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let (code, stdout, stderr) = admin(
        &[
            "--plaintext",
            "--endpoint",
            &endpoint,
            "escrow",
            "get",
            "--request",
            REQUEST_ID,
            "--out",
            out.to_str().expect("UTF-8"),
        ],
        &[],
    );
    assert_eq!(code, 5, "{stderr}");
    assert!(stdout.is_empty());
    one_error_line(&stderr);
    assert!(!out.exists(), "no file without a release");
}

/// An X25519 SubjectPublicKeyInfo, PEM, as the ceremony writes recovery-public-key.pem.
const RECOVERY_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VuAyEAhSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\n-----END PUBLIC KEY-----\n";

#[test]
fn recovery_register_refuses_bad_files_and_flag_combinations_before_contacting_the_ca() {
    let directory = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = directory.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.to_str().expect("UTF-8").to_owned()
    };
    let secret = "MC4CAQAwBQYDK2VuBCIEIHcHbQpzGKV9PBbBclGyZkXfTC+H68CZKrF3+6UduSwq";
    let public_key = write("recovery-public-key.pem", RECOVERY_PUBLIC_KEY);
    let private_key = write(
        "recovery-private-key.pem",
        &format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"),
    );
    let certificate = write(
        "recovery-certificate.pem",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    );
    let request = write(
        "registration-request.json",
        &serde_json::json!({
            "public_key_pem": RECOVERY_PUBLIC_KEY,
            "ceremony_reference": "2026-03-01 vault B",
        })
        .to_string(),
    );
    let not_json = write("not-json.json", "public_key_pem: no");
    let no_reference = write(
        "no-reference.json",
        &serde_json::json!({ "public_key_pem": RECOVERY_PUBLIC_KEY }).to_string(),
    );
    let missing = directory.path().join("missing.pem");
    let missing = missing.to_str().expect("UTF-8");
    let listener = Listener::new();
    let endpoint = listener.endpoint();
    let register = |arguments: &[&str]| {
        let mut all = vec!["--plaintext", "--endpoint", &endpoint, "recovery", "register"];
        all.extend_from_slice(arguments);
        all.extend_from_slice(&["--reason", "new ceremony"]);
        admin(&all, &[])
    };
    for (arguments, expected) in [
        (vec!["--public-key", missing, "--reference", "r"], "cannot read"),
        (
            vec!["--public-key", &private_key, "--reference", "r"],
            "holds a private key",
        ),
        (
            vec!["--public-key", &certificate, "--reference", "r"],
            "expected one \"PUBLIC KEY\" block",
        ),
        (vec!["--public-key", &public_key], "--reference <TEXT>"),
        (vec!["--reference", "r"], "--public-key <FILE>"),
        (vec![], "<--public-key <FILE>|--request <FILE>>"),
        (
            vec!["--public-key", &public_key, "--reference", "r", "--request", &request],
            "cannot be used with",
        ),
        (vec!["--request", &request, "--reference", "r"], "cannot be used with"),
        (vec!["--request", &not_json], "is not JSON"),
        (
            vec!["--request", &no_reference],
            "has no string field \"ceremony_reference\"",
        ),
    ] {
        let (code, stdout, stderr) = register(&arguments);
        assert_eq!(code, 2, "{arguments:?}: {stderr}");
        assert!(stdout.is_empty(), "{arguments:?}: {stdout}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(expected),
            "{arguments:?}: expected {expected:?} in {stderr}"
        );
        assert!(!stderr.contains(secret), "no key material: {stderr}");
    }
    listener.assert_untouched();

    // Good files get as far as the connection.
    let closed = format!("http://127.0.0.1:{}", closed_port());
    for arguments in [
        vec!["--public-key", public_key.as_str(), "--reference", "2026-03-01 vault B"],
        vec!["--request", request.as_str()],
    ] {
        let mut all = vec!["--plaintext", "--endpoint", &closed, "recovery", "register"];
        all.extend_from_slice(&arguments);
        all.extend_from_slice(&["--reason", "new ceremony"]);
        let (code, _, stderr) = admin(&all, &[]);
        assert_eq!(code, 5, "{arguments:?}: {stderr}");
        assert!(stderr.contains("UNAVAILABLE: cannot connect to"), "{stderr}");
    }
}
