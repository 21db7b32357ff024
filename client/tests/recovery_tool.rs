//! The real `e2ee-recovery` binary: a 3-of-5 ceremony into a temporary directory, then `open` of a sealed key.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use e2ee_client::crypto::rsa::RsaPrivateKey;
use e2ee_client::escrow::{self, RecoveryPublicKey};
use e2ee_client::format::private_key_blob::PrivateKeyBlob;
use e2ee_client::identity::{DeviceKey, RsaSize};
use e2ee_client::mnemonic::Mnemonic;
use e2ee_client::protocol::key_backup;

const BINARY: &str = env!("CARGO_BIN_EXE_e2ee-recovery");

/// A ceremony's outputs in `dir`: the sheet's share lines and the public key file.
struct Ceremony {
    /// Header and words of each share, in order.
    shares: Vec<(String, String)>,
    public_key_path: PathBuf,
}

/// A test directory with a ceremony in `dir/out`, and alice's key sealed to it in `dir/alice.escrow`.
struct Fixture {
    dir: tempfile::TempDir,
    ceremony: Ceremony,
    /// Alice's key, PKCS#8 PEM, as `RsaPrivateKey` encodes it.
    alice_pem: String,
}

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BINARY)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn e2ee-recovery");
    let written = child.stdin.take().expect("stdin").write_all(stdin.as_bytes());
    // A tool that refuses before reading its input (an existing output file) closes stdin early.
    if let Err(error) = written {
        assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {error}");
    }
    child.wait_with_output().expect("wait")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

fn ceremony(dir: &Path, config_name: &str, output_dir: &str) -> Ceremony {
    let config = dir.join(config_name);
    std::fs::write(
        &config,
        format!(
            "reference = \"recovery_tool test\"\nthreshold = 3\nshares = 5\n\
             officers = [\"Ada\", \"Grace\", \"Katherine\", \"Margaret\", \"Radia\"]\noutput_dir = \"{output_dir}\"\n"
        ),
    )
    .expect("write config");
    let output = run(&["ceremony", "--config", config.to_str().expect("path")], "");
    assert!(output.status.success(), "ceremony failed: {}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|line| !line.is_empty()).collect();
    assert_eq!(lines.len(), 10, "a header and a words line per share:\n{stdout}");
    let shares: Vec<(String, String)> = lines
        .chunks(2)
        .map(|pair| (pair[0].to_owned(), pair[1].to_owned()))
        .collect();
    let public_key_path = dir.join(output_dir).join("recovery-public-key.pem");
    Ceremony {
        shares,
        public_key_path,
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let ceremony = ceremony(dir.path(), "ceremony.toml", "out");
    let public_key =
        RecoveryPublicKey::from_pem(&std::fs::read_to_string(&ceremony.public_key_path).expect("read public key"))
            .expect("public key");
    let device_key = DeviceKey::generate(RsaSize::Bits2048).expect("RSA key");
    let der = pem::parse(device_key.to_pem().as_bytes()).expect("PEM").into_contents();
    let blob = escrow::seal(&public_key, "alice", &der).expect("seal");
    std::fs::write(dir.path().join("alice.escrow"), blob).expect("write blob");
    let alice_pem = RsaPrivateKey::from_pkcs8_der(&der)
        .expect("RSA")
        .to_pkcs8_pem()
        .to_string();
    Fixture {
        dir,
        ceremony,
        alice_pem,
    }
}

impl Fixture {
    /// Runs `open` for `user_id` with `output` (a TOML line) and `stdin`.
    fn open(&self, user_id: &str, output: &str, stdin: &str) -> Output {
        let config = self.dir.path().join(format!("open-{user_id}.toml"));
        std::fs::write(
            &config,
            format!(
                "escrow_blob = \"alice.escrow\"\nuser_id = \"{user_id}\"\n\
                 recovery_public_key = \"out/recovery-public-key.pem\"\n{output}\n"
            ),
        )
        .expect("write config");
        run(&["open", "--config", config.to_str().expect("path")], stdin)
    }

    /// The words of the shares at `positions` (0-based), one per line.
    fn input(&self, positions: &[usize]) -> String {
        positions
            .iter()
            .map(|position| format!("{}\n", self.ceremony.shares[*position].1))
            .collect()
    }

    /// Runs a failing `open` and returns its stderr, after checking that it shows no share words.
    fn failure(&self, user_id: &str, stdin: &str, shares: &[&Ceremony]) -> String {
        let output = self.open(user_id, "private_key_out = \"refused.pem\"", stdin);
        assert!(!output.status.success(), "open should fail");
        assert!(output.stdout.is_empty(), "nothing on stdout");
        let stderr = text(&output.stderr);
        for ceremony in shares {
            for (_, words) in &ceremony.shares {
                let words: Vec<&str> = words.split(' ').collect();
                for window in words.windows(3) {
                    assert!(!stderr.contains(&window.join(" ")), "share words on stderr: {stderr}");
                }
            }
        }
        assert!(!self.dir.path().join("refused.pem").exists());
        stderr
    }
}

#[test]
fn the_ceremony_prints_headers_and_refuses_to_overwrite() {
    let fixture = fixture();
    let registration: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture.dir.path().join("out/registration-request.json")).expect("read"),
    )
    .expect("JSON");
    let split_id = registration["split_id"].as_str().expect("split_id");
    let officers = ["Ada", "Grace", "Katherine", "Margaret", "Radia"];
    for (index, ((header, words), officer)) in fixture.ceremony.shares.iter().zip(officers).enumerate() {
        assert_eq!(
            *header,
            format!(
                "share {} of 5 (3 needed), split {split_id}, officer {officer}",
                index + 1
            )
        );
        assert_eq!(words.split(' ').count(), 32);
    }
    let pem_text = std::fs::read_to_string(&fixture.ceremony.public_key_path).expect("read");
    assert_eq!(registration["public_key_pem"], pem_text.as_str());
    assert_eq!(registration["ceremony_reference"], "recovery_tool test");
    assert_eq!(
        registration["fingerprint"],
        RecoveryPublicKey::from_pem(&pem_text)
            .expect("key")
            .fingerprint()
            .as_str()
    );
    assert_eq!(
        (registration["threshold"].as_u64(), registration["shares"].as_u64()),
        (Some(3), Some(5))
    );
    assert!(registration["created_at"].as_str().expect("created_at").ends_with('Z'));
    let files: Vec<_> = std::fs::read_dir(fixture.dir.path().join("out"))
        .expect("list")
        .collect();
    assert_eq!(files.len(), 2, "only the two public files");

    let config = fixture.dir.path().join("ceremony.toml");
    let again = run(&["ceremony", "--config", config.to_str().expect("path")], "");
    assert!(!again.status.success());
    assert!(again.stdout.is_empty(), "no shares printed");
    assert!(text(&again.stderr).contains("exists already"));
    assert_eq!(
        std::fs::read_to_string(&fixture.ceremony.public_key_path).expect("read"),
        pem_text
    );
}

#[test]
fn three_shares_write_the_key_as_pem_0600() {
    let fixture = fixture();
    let output = fixture.open("alice", "private_key_out = \"alice.pem\"", &fixture.input(&[3, 0, 4]));
    assert!(output.status.success(), "open failed: {}", text(&output.stderr));
    assert!(output.stdout.is_empty(), "the PEM goes to the file only");
    let path = fixture.dir.path().join("alice.pem");
    let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let written = std::fs::read_to_string(&path).expect("read");
    assert!(written.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert_eq!(written, fixture.alice_pem);
    DeviceKey::from_pem(&written).expect("a device key");

    let again = fixture.open("alice", "private_key_out = \"alice.pem\"", &fixture.input(&[3, 0, 4]));
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("exists already"));
}

#[test]
fn three_shares_rewrap_under_a_printed_mnemonic() {
    let fixture = fixture();
    let output = fixture.open(
        "alice",
        "rewrap_out = \"alice.private.key\"",
        &fixture.input(&[1, 2, 4]),
    );
    assert!(output.status.success(), "open failed: {}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "only the mnemonic on stdout");
    let mnemonic = Mnemonic::parse(stdout.trim()).expect("12 words");
    assert!(!text(&output.stderr).contains(mnemonic.phrase()));
    let path = fixture.dir.path().join("alice.private.key");
    let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let blob = PrivateKeyBlob::parse(&std::fs::read_to_string(&path).expect("read")).expect("Nextcloud blob");
    let recovered = key_backup::unwrap(&blob, &mnemonic).expect("the printed mnemonic unwraps it");
    assert_eq!(*recovered.key.to_pkcs8_pem(), fixture.alice_pem);
}

#[test]
fn two_shares_are_too_few() {
    let fixture = fixture();
    let stderr = fixture.failure("alice", &fixture.input(&[0, 1]), &[&fixture.ceremony]);
    assert!(stderr.contains("2 distinct shares given, 3 needed"), "{stderr}");
}

#[test]
fn a_corrupted_share_is_named() {
    let fixture = fixture();
    let mut words: Vec<String> = fixture.ceremony.shares[1].1.split(' ').map(str::to_owned).collect();
    words[9] = if words[9] == "zoo" {
        "abandon".into()
    } else {
        "zoo".into()
    };
    let stdin = format!(
        "{}\n{}\n{}",
        fixture.ceremony.shares[0].1,
        words.join(" "),
        fixture.ceremony.shares[2].1
    );
    let stderr = fixture.failure("alice", &stdin, &[&fixture.ceremony]);
    assert!(
        stderr.contains("share on line 2: the share's checksum does not match"),
        "{stderr}"
    );
}

#[test]
fn a_share_of_another_ceremony_is_named() {
    let fixture = fixture();
    let other = ceremony(fixture.dir.path(), "other-ceremony.toml", "other-out");
    let stdin = format!(
        "{}\n\n{}\n{}\n",
        fixture.ceremony.shares[0].1, fixture.ceremony.shares[1].1, other.shares[2].1
    );
    let stderr = fixture.failure("alice", &stdin, &[&fixture.ceremony, &other]);
    assert!(stderr.contains("share on line 4 (index 3): share 3"), "{stderr}");
    assert!(stderr.contains("is from split"), "{stderr}");
    // All of the other ceremony's shares: they combine, but not to the registered key.
    let stdin: String = other.shares[..3]
        .iter()
        .map(|(_, words)| format!("{words}\n"))
        .collect();
    let stderr = fixture.failure("alice", &stdin, &[&fixture.ceremony, &other]);
    assert!(
        stderr.contains("do not combine to the expected recovery key"),
        "{stderr}"
    );
}

#[test]
fn a_blob_for_alice_does_not_open_for_bob() {
    let fixture = fixture();
    let stderr = fixture.failure("bob", &fixture.input(&[0, 1, 2]), &[&fixture.ceremony]);
    assert!(stderr.contains("does not open for this user id"), "{stderr}");
}
