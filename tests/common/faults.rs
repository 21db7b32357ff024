//! Fixture of the fault tests: a private SoftHSM token with a CA made by the ceremony, and `ca-service serve --config` loaded through hsm-sim's fault-injecting PKCS#11 module.
//!
//! The ceremony talks to SoftHSM directly; only the serving CA goes through `libpkcs11_fault.so`,
//! whose control file the test rewrites while the CA runs. The CA serves plaintext on loopback, or
//! mTLS with a dev PKI made in the token's directory (`Listener`). Build the module first:
//! `cargo build -p pkcs11-fault`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2ee_ca_proto::v1::identity_client::IdentityClient;
use e2ee_ca_proto::v1::transparency_client::TransparencyClient;
use hsm_sim::faults::{CONTROL_ENV, CallLog, Fault, FaultControl, LOG_ENV, TARGET_ENV};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::{CA_SERVICE, output_text};

pub const TOKEN_LABEL: &str = "fault-test";
pub const USER_PIN: &str = "1234-user-pin";
/// Label of the audit log's checkpoint key, made by the ceremony's `audit_key_label`.
pub const AUDIT_KEY_LABEL: &str = "audit";
/// The audit log's origin (and its key's name).
pub const AUDIT_ORIGIN: &str = "fault-test.example/audit-log";

/// How the serving CA listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Plaintext on loopback (`allow_plaintext`): every caller is the unauthenticated principal,
    /// so Admin calls answer UNAUTHENTICATED.
    Plaintext,
    /// mTLS with the dev PKI of `ca_service::dev::pki`, made once in the token's directory: the dev
    /// principals (`sync-server`, `admin-alice`, `admin-bob`, `auditor`) match by CN.
    MutualTls,
}

/// What the ceremony puts on the token and how `serve` is configured.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// The CA key's algorithm (`ecdsa-p256`, `rsa-2048`, ...).
    pub ca_key_algorithm: &'static str,
    /// The audit log's bounds (every CA has an audit log).
    pub audit: AuditBounds,
}

/// The `[audit]` bounds a test chooses.
#[derive(Debug, Clone, Copy)]
pub struct AuditBounds {
    /// `audit.sequence_wait_ms`: how long an issuance waits for its log index.
    pub sequence_wait_ms: u64,
    /// `audit.heartbeat_seconds`: how often the idle sequencer re-signs its head.
    pub heartbeat_seconds: u64,
}

/// The `[audit]` section of the serve config. The one place that writes it, so that a field
/// every CA with an audit log needs is added here once.
pub fn audit_section(bounds: &AuditBounds) -> String {
    format!(
        "[audit]\nkey_label = {AUDIT_KEY_LABEL:?}\norigin = {AUDIT_ORIGIN:?}\nsequence_wait_ms = {}\n\
         heartbeat_seconds = {}\npoll_interval_ms = 50\nguard_file = \"signer-guard\"\n",
        bounds.sequence_wait_ms, bounds.heartbeat_seconds
    )
}

/// A private token with a CA made by the ceremony, a fault control file and a call log.
pub struct Token {
    directory: tempfile::TempDir,
    conf: PathBuf,
    setup: Setup,
    pub control: FaultControl,
    pub calls: CallLog,
}

impl Token {
    /// A token with an ECDSA P-256 CA key and the audit log's default bounds.
    pub fn new() -> Token {
        Token::provision(Setup {
            ca_key_algorithm: "ecdsa-p256",
            audit: AuditBounds {
                sequence_wait_ms: 5000,
                heartbeat_seconds: 60,
            },
        })
    }

    /// A token provisioned by the ceremony as `setup` says (CA key and audit key).
    pub fn provision(setup: Setup) -> Token {
        let directory = tempfile::tempdir().expect("tempdir");
        let tokens = hsm_sim::TokenDirectory::create(&directory.path().join("softhsm")).expect("token directory");
        tokens
            .init_token(TOKEN_LABEL, "5678-so-pin", USER_PIN)
            .expect("init token");
        std::fs::write(directory.path().join("pin"), USER_PIN).expect("pin file");
        let token = Token {
            conf: tokens.conf_path(),
            setup,
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
                "mode = \"root\"\nkey_label = \"ca\"\nkey_algorithm = {:?}\noutput = \"ca.pem\"\n\
                 audit_key_label = {AUDIT_KEY_LABEL:?}\n[subject]\ncommon_name = \"Fault Test CA\"\n{}",
                setup.ca_key_algorithm,
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

    pub fn path(&self, name: &str) -> PathBuf {
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

    /// The serve config (written on every start, always the same for one token), for
    /// `serve --config` and `audit export --config`.
    pub fn serve_config(&self) -> PathBuf {
        self.path("serve.toml")
    }

    /// The dev PKI's directory in the token's directory, made on first use.
    fn dev_pki(&self) -> ca_service::dev::pki::DevPki {
        let (pki, _) = ca_service::dev::pki::ensure(self.directory.path()).expect("dev PKI");
        pki
    }

    /// `ca-service serve --config` through the fault module, not yet started.
    fn serve_command(&self, listener: Listener, pool_size: usize, session_wait_ms: u64) -> Command {
        let module = hsm_sim::faults::fault_module_path().unwrap_or_else(|error| panic!("{error}"));
        let audit = audit_section(&self.setup.audit);
        // Top-level keys first; `[tls]` and `[[principals]]` (paths relative to this directory) after
        // the other sections.
        let (plaintext, tls) = match listener {
            Listener::Plaintext => ("allow_plaintext = true\n", String::new()),
            Listener::MutualTls => ("", self.dev_pki().config_sections()),
        };
        let config = format!(
            "listen = \"127.0.0.1:0\"\n{plaintext}{}\n[ca]\nkey_label = \"ca\"\nkey_algorithm = {:?}\ncertificate = \"ca.pem\"\n\
             [issuance]\nvalidity_days = 30\n[store]\nurl = \"sqlite:ca.sqlite3\"\n{tls}\n{audit}",
            self.hsm_section(&module, pool_size, session_wait_ms),
            self.setup.ca_key_algorithm,
        );
        let path = self.serve_config();
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

    /// Starts the CA on plaintext with `faults` in force from the first PKCS#11 call, and waits
    /// until it listens.
    pub fn serve(&self, pool_size: usize, session_wait_ms: u64, faults: &[Fault]) -> Server {
        self.serve_on(Listener::Plaintext, pool_size, session_wait_ms, faults)
    }

    /// `serve` on `listener`.
    pub fn serve_on(&self, listener: Listener, pool_size: usize, session_wait_ms: u64, faults: &[Fault]) -> Server {
        self.control.set(faults).expect("set faults");
        let mut child = self
            .serve_command(listener, pool_size, session_wait_ms)
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
        let (endpoint, pki) = match listener {
            Listener::Plaintext => (format!("http://{address}"), None),
            Listener::MutualTls => (format!("https://{address}"), Some(self.dev_pki())),
        };
        Server {
            child,
            output,
            endpoint,
            pki,
        }
    }

    /// Runs the CA with `faults` in force and expects it to exit by itself within `limit`.
    pub fn serve_until_exit(
        &self,
        pool_size: usize,
        faults: &[Fault],
        limit: Duration,
    ) -> (ExitStatus, String, Duration) {
        self.control.set(faults).expect("set faults");
        let started = Instant::now();
        let mut child = self
            .serve_command(Listener::Plaintext, pool_size, 2000)
            .spawn()
            .expect("spawn ca-service");
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

pub fn softhsm_module() -> PathBuf {
    hsm_sim::find_module().expect("SoftHSM2 module")
}

/// Everything a child printed on stdout and stderr so far, collected by two reader threads.
#[derive(Clone)]
pub struct Output(Arc<Mutex<String>>);

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

    pub fn text(&self) -> String {
        self.0.lock().expect("output lock").clone()
    }
}

/// A serving CA, killed when dropped.
pub struct Server {
    child: Child,
    pub output: Output,
    pub endpoint: String,
    /// The dev PKI, when it serves mTLS.
    pki: Option<ca_service::dev::pki::DevPki>,
}

impl Server {
    /// A channel as the sync server (over plaintext, every caller is the same).
    pub async fn channel(&self) -> Channel {
        self.channel_as("sync-server").await
    }

    /// A channel as dev principal `principal` (over plaintext, the unauthenticated principal),
    /// retried for up to 10 s while the server starts.
    pub async fn channel_as(&self, principal: &str) -> Channel {
        let tls = self.pki.as_ref().map(|pki| {
            let read =
                |path: PathBuf| std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            e2ee_client::transport::ClientTls::new(read(pki.ca_certificate())).with_client_certificate(
                read(pki.certificate(principal)),
                zeroize::Zeroizing::new(read(pki.key(principal))),
            )
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let channel = match &tls {
                Some(tls) => tls.channel(&self.endpoint).await.map_err(|error| error.to_string()),
                None => tonic::transport::Endpoint::from_shared(self.endpoint.clone())
                    .expect("endpoint")
                    .connect()
                    .await
                    .map_err(|error| error.to_string()),
            };
            match channel {
                Ok(channel) => return channel,
                Err(error) if Instant::now() > deadline => panic!("cannot connect to {}: {error}", self.endpoint),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub async fn client(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel().await)
    }

    pub async fn transparency(&self) -> TransparencyClient<Channel> {
        TransparencyClient::new(self.channel().await)
    }

    /// The health status of the Identity service.
    /// A transport hiccup on a machine loaded by other tests is retried (three attempts); the
    /// status the service reports is never second-guessed.
    pub async fn health(&self) -> ServingStatus {
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
    pub async fn wait_for_health(&self, expected: ServingStatus, limit: Duration) -> Duration {
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

    pub fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "ca-service exited:\n{}",
            self.output.text()
        );
    }

    /// SIGKILLs the CA (no shutdown of any kind) and reaps it; returns what it printed.
    pub fn kill(mut self) -> String {
        self.child.kill().expect("SIGKILL ca-service");
        self.child.wait().expect("reap ca-service");
        self.output.text()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
