//! End-to-end fault tests: the real `ca-service serve --config` on a private SoftHSM token, loaded through hsm-sim's fault-injecting PKCS#11 module.
//!
//! Each test provisions a token, runs the ceremony against SoftHSM directly, then serves through
//! `libpkcs11_fault.so` and rewrites its control file while the CA runs, checking the recovery
//! rules of hsm.md ("Rules for the session manager") from the outside: gRPC status codes, the
//! health service, and the module's call log. Build the module first:
//! `cargo build -p pkcs11-fault && cargo test -p ca-service --test hsm_faults`.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{CA_SERVICE, UserKey, UserKeyPair, issue};
use e2ee_ca_proto::v1::identity_client::IdentityClient;
use hsm_sim::faults::{CONTROL_ENV, CallLog, Fault, FaultControl, LOG_ENV, TARGET_ENV};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TOKEN_LABEL: &str = "fault-test";
const USER_PIN: &str = "1234-user-pin";

/// A private token with a CA made by the ceremony, a fault control file and a call log.
struct Token {
    directory: tempfile::TempDir,
    conf: PathBuf,
    control: FaultControl,
    calls: CallLog,
}

impl Token {
    fn new() -> Token {
        let directory = tempfile::tempdir().expect("tempdir");
        let tokens = hsm_sim::TokenDirectory::create(&directory.path().join("softhsm")).expect("token directory");
        tokens
            .init_token(TOKEN_LABEL, "5678-so-pin", USER_PIN)
            .expect("init token");
        std::fs::write(directory.path().join("pin"), USER_PIN).expect("pin file");
        let token = Token {
            conf: tokens.conf_path(),
            control: FaultControl::new(&directory.path().join("faults")),
            calls: CallLog::new(&directory.path().join("calls.log")),
            directory,
        };
        token.control.clear().expect("empty control file");
        // The ceremony talks to SoftHSM directly: the faults are for the serving CA only.
        let ceremony = token.path("ceremony.toml");
        std::fs::write(
            &ceremony,
            format!(
                "mode = \"root\"\nkey_label = \"ca\"\nkey_algorithm = \"ecdsa-p256\"\noutput = \"ca.pem\"\n\
                 audit_key_label = \"audit\"\n[subject]\ncommon_name = \"Fault Test CA\"\n{}",
                token.hsm_section(&softhsm_module(), 1, 2000)
            ),
        )
        .expect("write ceremony config");
        let output = Command::new(CA_SERVICE)
            .args(["ceremony", "--config"])
            .arg(&ceremony)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run ceremony");
        assert!(output.status.success(), "ceremony failed: {}", output_text(&output));
        token
    }

    fn path(&self, name: &str) -> PathBuf {
        self.directory.path().join(name)
    }

    fn hsm_section(&self, module: &Path, pool_size: usize, session_wait_ms: u64) -> String {
        format!(
            "[hsm]\nmodule = {:?}\nsofthsm2_conf = {:?}\ntoken_label = {TOKEN_LABEL:?}\npin_file = \"pin\"\n\
             pool_size = {pool_size}\nsession_wait_ms = {session_wait_ms}\n",
            module.display().to_string(),
            self.conf.display().to_string(),
        )
    }

    /// `ca-service serve --config` through the fault module, not yet started.
    fn serve_command(&self, pool_size: usize, session_wait_ms: u64) -> Command {
        let module = hsm_sim::faults::fault_module_path().unwrap_or_else(|error| panic!("{error}"));
        let config = format!(
            "listen = \"127.0.0.1:0\"\n{}\n[ca]\nkey_label = \"ca\"\nkey_algorithm = \"ecdsa-p256\"\ncertificate = \"ca.pem\"\n\
             [issuance]\nvalidity_days = 30\n[store]\nurl = \"sqlite:ca.sqlite3\"\n\
             [audit]\nkey_label = \"audit\"\norigin = \"test.example/audit-log\"\nguard_file = \"signer-guard\"\n",
            self.hsm_section(&module, pool_size, session_wait_ms)
        );
        let path = self.path("serve.toml");
        std::fs::write(&path, config).expect("write serve config");
        let mut command = Command::new(CA_SERVICE);
        command
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .env(TARGET_ENV, softhsm_module())
            .env(CONTROL_ENV, self.control.path())
            .env(LOG_ENV, self.calls.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Starts the CA with `faults` in force from the first PKCS#11 call, and waits until it listens.
    fn serve(&self, pool_size: usize, session_wait_ms: u64, faults: &[Fault]) -> Server {
        self.control.set(faults).expect("set faults");
        let mut child = self
            .serve_command(pool_size, session_wait_ms)
            .spawn()
            .expect("spawn ca-service");
        let output = Output::capture(&mut child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let address = loop {
            if let Some(address) = output
                .text()
                .lines()
                .find_map(|line| line.strip_prefix("listening on "))
            {
                break address.to_owned();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("ca-service exited ({status}) before listening:\n{}", output.text());
            }
            assert!(
                Instant::now() < deadline,
                "ca-service did not listen within 60 s:\n{}",
                output.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Server {
            child,
            output,
            endpoint: format!("http://{address}"),
        }
    }

    /// Runs the CA with `faults` in force and expects it to exit by itself within `limit`.
    fn serve_until_exit(&self, pool_size: usize, faults: &[Fault], limit: Duration) -> (ExitStatus, String, Duration) {
        self.control.set(faults).expect("set faults");
        let started = Instant::now();
        let mut child = self.serve_command(pool_size, 2000).spawn().expect("spawn ca-service");
        let output = Output::capture(&mut child);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return (status, output.text(), started.elapsed());
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ca-service kept running for {limit:?} instead of failing:\n{}",
                    output.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn softhsm_module() -> PathBuf {
    hsm_sim::find_module().expect("SoftHSM2 module")
}

fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Everything a child printed on stdout and stderr so far, collected by two reader threads.
#[derive(Clone)]
struct Output(Arc<Mutex<String>>);

impl Output {
    fn capture(child: &mut Child) -> Output {
        let output = Output(Arc::new(Mutex::new(String::new())));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        output.read_from(stdout);
        output.read_from(stderr);
        output
    }

    fn read_from(&self, stream: impl Read + Send + 'static) {
        let text = Arc::clone(&self.0);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let mut text = text.lock().expect("output lock");
                text.push_str(&line);
                text.push('\n');
            }
        });
    }

    fn text(&self) -> String {
        self.0.lock().expect("output lock").clone()
    }
}

/// A serving CA, killed when dropped.
struct Server {
    child: Child,
    output: Output,
    endpoint: String,
}

impl Server {
    async fn channel(&self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match tonic::transport::Endpoint::from_shared(self.endpoint.clone())
                .expect("endpoint")
                .connect()
                .await
            {
                Ok(channel) => return channel,
                Err(error) if Instant::now() > deadline => panic!("cannot connect to {}: {error}", self.endpoint),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn client(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel().await)
    }

    /// The health status of the Identity service.
    /// A transport hiccup on a machine loaded by other tests is retried (three attempts); the
    /// status the service reports is never second-guessed.
    async fn health(&self) -> ServingStatus {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut health = HealthClient::new(self.channel().await);
            let answer = health
                .check(HealthCheckRequest {
                    service: "e2ee.ca.v1.Identity".into(),
                })
                .await;
            match answer {
                Ok(response) => {
                    return ServingStatus::try_from(response.into_inner().status).expect("known status");
                }
                Err(status) if attempt < 3 => {
                    eprintln!("health check attempt {attempt} failed ({status:?}); retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => panic!("health check failed {attempt} times: {status:?}"),
            }
        }
    }

    /// Waits until the Identity service reports `expected`, at most `limit`; returns the time taken.
    async fn wait_for_health(&self, expected: ServingStatus, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let status = self.health().await;
            if status == expected {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "health stayed {status:?} for {limit:?}, expected {expected:?}:\n{}",
                self.output.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "ca-service exited:\n{}",
            self.output.text()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issues a certificate for a fresh user (a new name and key each time, so pinning and rate limits never interfere).
async fn issue_new_user(client: &mut IdentityClient<Channel>, user: &str) -> Result<(), tonic::Status> {
    let key = UserKeyPair::generate(UserKey::EcP256);
    issue(client, user, &key.csr(user)).await.map(drop)
}

fn fail(function: &'static str, rv: &'static str, times: Option<u32>) -> Fault {
    Fault::Fail { function, rv, times }
}

/// hsm.md, retry class: a session that went away is replaced and the signature retried once.
#[tokio::test]
async fn one_off_session_handle_invalid_on_sign_is_retried_transparently() {
    let token = Token::new();
    let server = token.serve(2, 2000, &[]);
    let mut client = server.client().await;
    issue_new_user(&mut client, "before")
        .await
        .expect("issued before the fault");
    let opened_before = token.calls.calls("C_OpenSession");

    token
        .control
        .set(&[fail("C_Sign", "CKR_SESSION_HANDLE_INVALID", Some(1))])
        .expect("set fault");
    issue_new_user(&mut client, "alice")
        .await
        .expect("issued despite the lost session");

    assert_eq!(token.calls.injected("C_Sign", "CKR_SESSION_HANDLE_INVALID"), 1);
    assert_eq!(
        token.calls.calls("C_OpenSession"),
        opened_before + 1,
        "exactly one replacement session"
    );
    assert_eq!(token.calls.calls("C_Finalize"), 0, "no rebuild for a lost session");
    assert_eq!(server.health().await, ServingStatus::Serving);
}

/// hsm.md, re-login class: the token forgot the login; the CA logs in again and retries once.
#[tokio::test]
async fn one_off_user_not_logged_in_triggers_relogin() {
    let token = Token::new();
    let server = token.serve(2, 2000, &[]);
    let mut client = server.client().await;
    issue_new_user(&mut client, "before")
        .await
        .expect("issued before the fault");
    assert_eq!(token.calls.calls("C_Login"), 1, "one login at startup");

    token
        .control
        .set(&[fail("C_Sign", "CKR_USER_NOT_LOGGED_IN", Some(1))])
        .expect("set fault");
    if let Err(status) = issue_new_user(&mut client, "bob").await {
        panic!(
            "not issued after logging in again: {status:?}\n{}",
            server.output.text()
        );
    }

    assert_eq!(token.calls.injected("C_Sign", "CKR_USER_NOT_LOGGED_IN"), 1);
    assert_eq!(token.calls.calls("C_Login"), 2, "exactly one re-login");
    assert_eq!(token.calls.calls("C_Finalize"), 0, "no rebuild for a lost login");
    assert_eq!(server.health().await, ServingStatus::Serving);
}

/// hsm.md, device class: the breaker opens (UNAVAILABLE at once, health NOT_SERVING), the context is
/// rebuilt in the background with backoff while the token is gone, and the CA recovers by itself.
#[tokio::test]
async fn device_error_opens_the_breaker_and_the_service_recovers_by_itself() {
    let token = Token::new();
    let mut server = token.serve(2, 2000, &[]);
    let mut client = server.client().await;
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(10))
        .await;
    issue_new_user(&mut client, "before")
        .await
        .expect("issued before the fault");

    // The device fails, and while it is gone the token is not even listed, so rebuilds fail too.
    token
        .control
        .set(&[
            fail("C_Sign", "CKR_DEVICE_ERROR", None),
            fail("C_GetSlotList", "CKR_TOKEN_NOT_PRESENT", None),
        ])
        .expect("set faults");
    let started = Instant::now();
    let status = issue_new_user(&mut client, "carol").await.expect_err("device error");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fails fast: {:?}",
        started.elapsed()
    );
    // While the breaker is open, callers are turned away without touching the token.
    let signs = token.calls.calls("C_Sign");
    let started = Instant::now();
    let status = issue_new_user(&mut client, "carol").await.expect_err("breaker open");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "breaker answers at once");
    assert_eq!(
        token.calls.calls("C_Sign"),
        signs,
        "no signing attempt while the breaker is open"
    );
    let took = server
        .wait_for_health(ServingStatus::NotServing, Duration::from_secs(10))
        .await;
    eprintln!("NOT_SERVING after {took:?}");
    // The rebuild keeps trying (C_Initialize, then the slot list fails) with backoff.
    let deadline = Instant::now() + Duration::from_secs(10);
    while token.calls.injected("C_GetSlotList", "CKR_TOKEN_NOT_PRESENT") < 2 {
        assert!(
            Instant::now() < deadline,
            "no rebuild attempts:\n{}",
            server.output.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        token.calls.calls("C_Finalize") >= 2,
        "each failed rebuild finalises the module"
    );

    // The token comes back: no restart, the CA recovers by itself.
    token.control.clear().expect("clear faults");
    let recovered = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match issue_new_user(&mut client, &format!("dave-{attempt}")).await {
            Ok(()) => break,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(
                    recovered.elapsed() < Duration::from_secs(20),
                    "no recovery within 20 s:\n{}",
                    server.output.text()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    eprintln!("issuing again {:?} after the token came back", recovered.elapsed());
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(12))
        .await;
    server.assert_running();
    assert!(
        server.output.text().contains("breaker open"),
        "{}",
        server.output.text()
    );
}

/// A token that allows a single session (a smartcard): with `pool_size = 1` the CA signs on its
/// login session, which it still never closes.
#[tokio::test]
async fn session_limit_of_one_still_issues_with_a_pool_of_one() {
    let token = Token::new();
    let server = token.serve(1, 2000, &[Fault::SessionLimit(1)]);
    let mut client = server.client().await;
    for user in ["erin", "frank", "grace"] {
        issue_new_user(&mut client, user)
            .await
            .expect("issued on a one-session token");
    }
    assert!(
        token.calls.injected("C_OpenSession", "CKR_SESSION_COUNT") >= 1,
        "the limit was hit"
    );
    assert_eq!(
        token.calls.calls("C_CloseSession"),
        0,
        "the only session is never closed"
    );
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(10))
        .await;
}

/// A pool larger than the token's session limit is a configuration error, reported at startup with
/// the fix, not a CA that fails one request in N later.
#[test]
fn pool_larger_than_the_session_limit_fails_at_startup_with_the_fix() {
    let token = Token::new();
    let (status, output, _) = token.serve_until_exit(2, &[Fault::SessionLimit(1)], Duration::from_secs(20));
    assert!(!status.success());
    assert!(output.contains("allows only 1 open session"), "{output}");
    assert!(output.contains("set hsm.pool_size = 1"), "{output}");

    let (status, output, _) = token.serve_until_exit(3, &[Fault::SessionLimit(2)], Duration::from_secs(20));
    assert!(!status.success());
    assert!(output.contains("allows only 2 open session"), "{output}");
    assert!(output.contains("set hsm.pool_size = 1"), "{output}");
}

/// A slow token and a small pool: callers wait at most `session_wait_ms`, then get
/// RESOURCE_EXHAUSTED, while the caller holding the session succeeds.
#[tokio::test]
async fn slow_signing_with_a_pool_of_one_turns_concurrent_callers_away() {
    let token = Token::new();
    let server = token.serve(1, 50, &[]);
    let client = server.client().await;
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(10))
        .await;
    token
        .control
        .set(&[Fault::Latency {
            function: "C_Sign",
            millis: 200,
        }])
        .expect("set latency");
    let (mut issued, mut exhausted) = (0, 0);
    // The health probe also takes the session (200 ms every 5 s), so allow a few bursts.
    for burst in 0..3 {
        let requests = (0..4).map(|index| {
            let mut client = client.clone();
            tokio::spawn(async move { issue_new_user(&mut client, &format!("user-{burst}-{index}")).await })
        });
        for request in requests.collect::<Vec<_>>() {
            match request.await.expect("request task") {
                Ok(()) => issued += 1,
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                    assert!(status.message().contains("at capacity"), "{status:?}");
                    exhausted += 1;
                }
            }
        }
        if issued > 0 && exhausted > 0 {
            break;
        }
    }
    assert!(issued >= 1, "at least one caller got the session");
    assert!(exhausted >= 1, "concurrent callers were turned away");
    assert_eq!(server.health().await, ServingStatus::Serving, "busy is not unhealthy");
}

/// hsm.md, never-retry class: a refused PIN stops the CA at once, after a single login attempt.
#[test]
fn pin_incorrect_at_startup_fails_fast_after_one_login() {
    let token = Token::new();
    let (status, output, elapsed) = token.serve_until_exit(
        4,
        &[fail("C_Login", "CKR_PIN_INCORRECT", None)],
        Duration::from_secs(20),
    );
    assert!(!status.success());
    assert!(output.contains("refused the PIN"), "{output}");
    assert!(!output.contains(USER_PIN), "the PIN never appears in output");
    assert!(elapsed < Duration::from_secs(10), "fails fast: {elapsed:?}");
    assert_eq!(token.calls.calls("C_Login"), 1, "exactly one login attempt");
    assert_eq!(token.calls.calls("C_Initialize"), 1, "no reconnect loop");
}
