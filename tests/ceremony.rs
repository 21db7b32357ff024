//! The ceremony CLI and production `serve --config` through the real binary on private SoftHSM tokens.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{CA_SERVICE, UserKey, UserKeyPair, issue, pem_der};
use e2ee_ca_proto::v1::identity_client::IdentityClient;

const TOKEN_LABEL: &str = "ceremony-test";
const USER_PIN: &str = "1234-user-pin";

/// The `[audit]` section of every serve config here: the key `make_root_ca` makes, the guard
/// file next to the config.
const AUDIT_SECTION: &str =
    "[audit]\nkey_label = \"audit\"\norigin = \"test.example/audit-log\"\nguard_file = \"signer-guard\"\n";

/// A private token directory with one initialised token and a PIN file.
struct Token {
    directory: tempfile::TempDir,
    conf: PathBuf,
}

impl Token {
    fn new() -> Token {
        let directory = tempfile::tempdir().expect("tempdir");
        let tokens = hsm_sim::TokenDirectory::create(&directory.path().join("softhsm")).expect("token directory");
        tokens
            .init_token(TOKEN_LABEL, "5678-so-pin", USER_PIN)
            .expect("init token");
        std::fs::write(directory.path().join("pin"), USER_PIN).expect("pin file");
        Token {
            conf: tokens.conf_path(),
            directory,
        }
    }

    /// Runs a root ceremony: P-256 key labelled `ca`, certificate `ca.pem`.
    fn make_root_ca(&self) {
        let made = self.ceremony(
            "root.toml",
            &format!(
                "mode = \"root\"\nkey_label = \"ca\"\nkey_algorithm = \"ecdsa-p256\"\noutput = \"ca.pem\"\n\
                 audit_key_label = \"audit\"\n{ROOT_SUBJECT}"
            ),
        );
        assert!(made.status.success(), "{}", text(&made));
    }

    fn path(&self, name: &str) -> PathBuf {
        self.directory.path().join(name)
    }

    fn hsm_section(&self, pin_file: &str) -> String {
        format!(
            "[hsm]\nmodule = {:?}\nsofthsm2_conf = {:?}\ntoken_label = {TOKEN_LABEL:?}\npin_file = {pin_file:?}\n",
            hsm_sim::find_module().expect("SoftHSM module").display().to_string(),
            self.conf.display().to_string(),
        )
    }

    /// Writes a ceremony config and runs `ca-service ceremony --config` on it.
    fn ceremony(&self, name: &str, body: &str) -> Output {
        let path = self.path(name);
        std::fs::write(&path, format!("{body}\n{}", self.hsm_section("pin"))).expect("write ceremony config");
        run(Command::new(CA_SERVICE).arg("ceremony").arg("--config").arg(&path))
    }
}

fn run(command: &mut Command) -> Output {
    command.env("RUST_LOG", "warn").output().expect("run ca-service")
}

/// Asserts that a run failed and said `fragment`.
fn assert_fails_with(output: &Output, fragment: &str) {
    assert!(!output.status.success(), "expected a failure mentioning {fragment:?}");
    assert!(
        text(output).contains(fragment),
        "expected {fragment:?} in: {}",
        text(output)
    );
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

const ROOT_SUBJECT: &str = "[subject]\ncommon_name = \"Test Issuing CA\"\norganization = \"Example\"\n";

#[test]
fn root_ceremony_refuses_to_overwrite_or_reuse_a_label() {
    let token = Token::new();
    let body = format!(
        "mode = \"root\"\nkey_label = \"ca-1\"\nkey_algorithm = \"ecdsa-p256\"\noutput = \"ca.pem\"\n{ROOT_SUBJECT}"
    );
    let first = token.ceremony("root.toml", &body);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("key SHA-256 (SPKI)"));
    let ca_pem = std::fs::read_to_string(token.path("ca.pem")).expect("ca.pem written");
    let ca_der = pem_der(&ca_pem);
    let (_, certificate) = x509_parser::parse_x509_certificate(&ca_der).expect("parses");
    assert!(certificate.is_ca());
    certificate.verify_signature(None).expect("self-signed by the HSM key");

    let again = token.ceremony("root.toml", &body);
    assert_fails_with(&again, "never overwrites");
    assert_eq!(
        std::fs::read_to_string(token.path("ca.pem")).expect("still there"),
        ca_pem,
        "file untouched"
    );

    let same_label = token.ceremony("root2.toml", &body.replace("ca.pem", "ca2.pem"));
    assert_fails_with(&same_label, "already exists on the token");
    assert!(!token.path("ca2.pem").exists());
}

#[test]
fn root_ceremony_makes_the_audit_key_and_keeps_its_label_rules() {
    let token = Token::new();
    let body = format!(
        "mode = \"root\"\nkey_label = \"ca-1\"\nkey_algorithm = \"rsa-2048\"\noutput = \"ca.pem\"\n\
         audit_key_label = \"audit-1\"\n{ROOT_SUBJECT}"
    );
    let first = token.ceremony("root.toml", &body);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("audit key label: audit-1"), "{}", text(&first));
    assert!(text(&first).contains("audit key SHA-256 (SPKI)"), "{}", text(&first));

    // Another ceremony may not reuse the audit key's label, and then writes nothing.
    let reused = token.ceremony("root2.toml", &body.replace("ca-1", "ca-2").replace("ca.pem", "ca2.pem"));
    assert_fails_with(&reused, "already exists on the token");
    assert!(!token.path("ca2.pem").exists());

    // The audit key is never the CA key.
    let same = token.ceremony(
        "root3.toml",
        &body
            .replace("audit-1", "ca-3")
            .replace("ca-1", "ca-3")
            .replace("ca.pem", "ca3.pem"),
    );
    assert_fails_with(&same, "differ from key_label");
}

#[test]
fn ceremony_config_errors_are_clear() {
    let token = Token::new();
    let missing_subject = token.ceremony(
        "bad.toml",
        "mode = \"root\"\nkey_label = \"ca-1\"\nkey_algorithm = \"ecdsa-p256\"\noutput = \"ca.pem\"\n",
    );
    assert_fails_with(&missing_subject, "[subject] is required");
    let bad_algorithm = token.ceremony(
        "bad2.toml",
        &format!(
            "mode = \"root\"\nkey_label = \"ca-1\"\nkey_algorithm = \"rsa-1024\"\noutput = \"ca.pem\"\n{ROOT_SUBJECT}"
        ),
    );
    assert_fails_with(&bad_algorithm, "unknown variant");
}

/// CSR for an external root, signed by a software root here, imported, then served with
/// `serve --config`: issued certificates chain to the external root.
#[tokio::test]
async fn external_root_csr_import_and_serve() {
    let token = Token::new();
    let csr_body = format!(
        "mode = \"csr\"\nkey_label = \"issuing\"\nkey_algorithm = \"rsa-3072\"\noutput = \"issuing.csr\"\n\
         audit_key_label = \"audit\"\n{ROOT_SUBJECT}"
    );
    let made = token.ceremony("csr.toml", &csr_body);
    assert!(made.status.success(), "{}", text(&made));

    // The external root (a software key standing in for an offline root).
    let root_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("root key");
    let mut root_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    root_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Offline Root");
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let root_certificate = root_params.self_signed(&root_key).expect("root certificate");
    let root_issuer = rcgen::Issuer::new(root_params, &root_key);
    let csr_pem = std::fs::read_to_string(token.path("issuing.csr")).expect("csr written");
    let mut request = rcgen::CertificateSigningRequestParams::from_pem(&csr_pem).expect("CSR verifies");
    request.params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    request.params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let signed = request.signed_by(&root_issuer).expect("root signs");
    std::fs::write(token.path("signed.pem"), signed.pem()).expect("write");
    std::fs::write(token.path("root.pem"), root_certificate.pem()).expect("write");

    // Import refuses a certificate for another key.
    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut stranger_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    stranger_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    std::fs::write(
        token.path("stranger.pem"),
        stranger_params.signed_by(&stranger, &root_issuer).expect("sign").pem(),
    )
    .expect("write");
    let wrong = token.ceremony(
        "import-wrong.toml",
        "mode = \"import\"\nkey_label = \"issuing\"\nkey_algorithm = \"rsa-3072\"\noutput = \"x.pem\"\n\
         signed_certificate = \"stranger.pem\"\nchain = \"root.pem\"\n",
    );
    assert_fails_with(&wrong, "does not carry the public key");

    let imported = token.ceremony(
        "import.toml",
        "mode = \"import\"\nkey_label = \"issuing\"\nkey_algorithm = \"rsa-3072\"\noutput = \"ca.pem\"\n\
         signed_certificate = \"signed.pem\"\nchain = \"root.pem\"\n",
    );
    assert!(imported.status.success(), "{}", text(&imported));

    // Production serve on the imported CA.
    let config = format!(
        "listen = \"127.0.0.1:0\"\nallow_plaintext = true\n{}\n[ca]\nkey_label = \"issuing\"\nkey_algorithm = \"rsa-3072\"\ncertificate = \"ca.pem\"\n\
         [issuance]\nvalidity_days = 90\n[store]\nurl = \"sqlite:state/ca.sqlite3\"\n{AUDIT_SECTION}",
        token.hsm_section("pin")
    );
    std::fs::write(token.path("serve.toml"), config).expect("write");
    let server = ServeProcess::start(&token.path("serve.toml"));
    let mut client = IdentityClient::connect(server.endpoint.clone()).await.expect("connect");
    let key = UserKeyPair::generate(UserKey::Rsa2048);
    let response = issue(&mut client, "frank", &key.csr("frank")).await.expect("issued");
    let chain = pem::parse_many(&response.chain_pem).expect("chain PEM");
    assert_eq!(chain.len(), 2, "CA certificate, then the external root");
    let (_, root) = x509_parser::parse_x509_certificate(chain[1].contents()).expect("root");
    let (_, issuing) = x509_parser::parse_x509_certificate(chain[0].contents()).expect("issuing");
    issuing
        .verify_signature(Some(root.public_key()))
        .expect("issuing CA chains to the root");
    let leaf_der = pem_der(&response.certificate_pem);
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).expect("leaf");
    leaf.verify_signature(Some(issuing.public_key()))
        .expect("leaf chains to the issuing CA");
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(
        (90 * 86_400..=90 * 86_400 + 600).contains(&lifetime),
        "validity from config: {lifetime}"
    );
}

/// `serve --config` in the background, killed on drop.
struct ServeProcess {
    child: std::process::Child,
    endpoint: String,
}

impl ServeProcess {
    fn start(config: &Path) -> ServeProcess {
        use std::io::BufRead;
        let mut child = Command::new(CA_SERVICE)
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("piped");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("listening on ") {
                    let _ = sender.send(address.to_owned());
                }
            }
        });
        let address = receiver.recv_timeout(Duration::from_secs(60)).expect("server listens");
        ServeProcess {
            child,
            endpoint: format!("http://{address}"),
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_refuses_a_wrong_pin_quickly_and_without_retrying() {
    let token = Token::new();
    token.make_root_ca();
    std::fs::write(token.path("wrong-pin"), "0000-wrong").expect("write");
    let config = format!(
        "listen = \"127.0.0.1:0\"\nallow_plaintext = true\n{}\n[ca]\nkey_label = \"ca\"\nkey_algorithm = \"ecdsa-p256\"\ncertificate = \"ca.pem\"\n\
         [issuance]\nvalidity_days = 30\n[store]\nurl = \"sqlite:ca.sqlite3\"\n{AUDIT_SECTION}",
        token.hsm_section("wrong-pin")
    );
    std::fs::write(token.path("serve.toml"), config).expect("write");
    let started = Instant::now();
    let output = run(Command::new(CA_SERVICE)
        .args(["serve", "--config"])
        .arg(token.path("serve.toml")));
    assert!(!output.status.success());
    assert!(started.elapsed() < Duration::from_secs(20), "fails fast");
    let message = text(&output);
    assert!(message.contains("refused the PIN"), "{message}");
    assert!(!message.contains("0000-wrong"), "the PIN never appears in output");

    // The right PIN still works afterwards: the token was not locked by a retry loop.
    let good = run(Command::new(CA_SERVICE).arg("ceremony").arg("--config").arg({
        let path = token.path("second.toml");
        std::fs::write(
            &path,
            format!(
                "mode = \"csr\"\nkey_label = \"second\"\nkey_algorithm = \"ecdsa-p256\"\noutput = \"second.csr\"\n{ROOT_SUBJECT}\n{}",
                token.hsm_section("pin")
            ),
        )
        .expect("write");
        path
    }));
    assert!(good.status.success(), "{}", text(&good));
}

#[test]
fn serve_refuses_inconsistent_configs() {
    let token = Token::new();
    let base = format!(
        "listen = \"0.0.0.0:50051\"\n{}\n[ca]\nkey_label = \"ca\"\nkey_algorithm = \"ecdsa-p256\"\ncertificate = \"ca.pem\"\n\
         [issuance]\nvalidity_days = 30\n[store]\nurl = \"sqlite:ca.sqlite3\"\n{AUDIT_SECTION}",
        token.hsm_section("pin")
    );
    std::fs::write(token.path("serve.toml"), &base).expect("write");
    let output = run(Command::new(CA_SERVICE)
        .args(["serve", "--config"])
        .arg(token.path("serve.toml")));
    assert_fails_with(&output, "no [tls] section");
    std::fs::write(token.path("serve.toml"), format!("allow_plaintext = true\n{base}")).expect("write");
    let output = run(Command::new(CA_SERVICE)
        .args(["serve", "--config"])
        .arg(token.path("serve.toml")));
    assert_fails_with(&output, "allowed on a loopback address only");

    let missing_certificate = format!("allow_plaintext = true\n{}", base.replace("0.0.0.0", "127.0.0.1"));
    std::fs::write(token.path("serve.toml"), missing_certificate).expect("write");
    let output = run(Command::new(CA_SERVICE)
        .args(["serve", "--config"])
        .arg(token.path("serve.toml")));
    assert!(!output.status.success());
    assert!(
        text(&output).contains("ca.pem"),
        "names the missing file: {}",
        text(&output)
    );
}

/// The documented examples in deploy/ parse and validate: each run gets as far as reading the PIN.
#[test]
fn deploy_examples_are_valid_configs() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let cases = [
        ("serve", "ca-service.example.toml", "hsm.pin_file"),
        ("ceremony", "ceremony-root.example.toml", "hsm.pin_file"),
        ("ceremony", "ceremony-csr.example.toml", "E2EE_CA_HSM_PIN"),
        ("ceremony", "ceremony-import.example.toml", "E2EE_CA_HSM_PIN"),
    ];
    for (command, file, expected) in cases {
        let output = run(Command::new(CA_SERVICE)
            .arg(command)
            .arg("--config")
            .arg(deploy.join(file))
            .env_remove("E2EE_CA_HSM_PIN"));
        assert!(!output.status.success(), "{file}: no PIN is available here");
        let message = text(&output);
        assert!(
            message.contains(expected),
            "{file}: config must be valid up to the PIN: {message}"
        );
    }
}

/// `--log-format json` gives one JSON object per log line (and the PIN never appears).
#[test]
fn logs_can_be_json_lines() {
    let token = Token::new();
    let config = format!(
        "listen = \"127.0.0.1:0\"\nallow_plaintext = true\n{}\n[ca]\nkey_label = \"ca\"\nkey_algorithm = \"ecdsa-p256\"\ncertificate = \"ca.pem\"\n\
         [issuance]\nvalidity_days = 30\n[store]\nurl = \"sqlite:ca.sqlite3\"\n{AUDIT_SECTION}",
        token.hsm_section("pin")
    );
    std::fs::write(token.path("serve.toml"), config).expect("write");
    let output = Command::new(CA_SERVICE)
        .args(["--log-format", "json", "migrate", "--config"])
        .arg(token.path("serve.toml"))
        .env("RUST_LOG", "info")
        .output()
        .expect("run migrate");
    assert!(output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "migrate logs the migration it applied");
    for line in &lines {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not a JSON object: {line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|line| line.contains("\"level\":\"INFO\"") && line.contains("applied embedded-store migration")),
        "{stderr}"
    );
    assert!(!stderr.contains(USER_PIN));
}

/// Renewals are rate-limited per user (issuance.max_certificates_per_user_per_day).
#[tokio::test]
async fn renewals_are_rate_limited_per_user() {
    let token = Token::new();
    token.make_root_ca();
    let config = format!(
        "listen = \"127.0.0.1:0\"\nallow_plaintext = true\n{}\n[ca]\nkey_label = \"ca\"\nkey_algorithm = \"ecdsa-p256\"\ncertificate = \"ca.pem\"\n\
         [issuance]\nvalidity_days = 30\nmax_certificates_per_user_per_day = 2\n[store]\nurl = \"sqlite:ca.sqlite3\"\n{AUDIT_SECTION}",
        token.hsm_section("pin")
    );
    std::fs::write(token.path("serve.toml"), config).expect("write");
    let server = ServeProcess::start(&token.path("serve.toml"));
    let mut client = IdentityClient::connect(server.endpoint.clone()).await.expect("connect");
    let key = UserKeyPair::generate(UserKey::EcP256);
    issue(&mut client, "grace", &key.csr("grace"))
        .await
        .expect("first certificate");
    issue(&mut client, "grace", &key.csr("grace"))
        .await
        .expect("one renewal");
    let limited = issue(&mut client, "grace", &key.csr("grace"))
        .await
        .expect_err("over the limit");
    assert_eq!(limited.code(), tonic::Code::ResourceExhausted, "{}", limited.message());
    assert!(
        limited.message().contains("2 certificates in the last 24 hours"),
        "{}",
        limited.message()
    );
    // Other users are not affected.
    let other = UserKeyPair::generate(UserKey::EcP256);
    issue(&mut client, "heidi", &other.csr("heidi"))
        .await
        .expect("another user still enrolls");
}
