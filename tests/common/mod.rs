//! Shared harness for the end-to-end tests: the real `ca-service` binary in dev mode on an ephemeral
//! port, each with its own data directory and SoftHSM token, reached through the real gRPC client,
//! over mTLS as one of the dev principals (`connect_as`) unless started with `--plaintext`.

#![allow(dead_code, reason = "each test binary uses a different part of the shared fixture")]

pub mod client;
pub mod faults;
pub mod key_backup;
pub mod postgres;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2ee_ca_proto::v1::identity_client::IdentityClient;
use e2ee_ca_proto::v1::transparency_client::TransparencyClient;
use e2ee_ca_proto::v1::{
    GetCaInfoRequest, GetCaInfoResponse, GetCheckpointRequest, IssueCertificateRequest, IssueCertificateResponse,
};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

/// The binary under test.
pub const CA_SERVICE: &str = env!("CARGO_BIN_EXE_ca-service");

/// How a test server is reached.
#[derive(Debug, Clone)]
pub enum Transport {
    /// mTLS with a dev PKI (`<data>/dev-pki/`): `ca.pem` for the server, `<principal>.pem` and
    /// `<principal>-key.pem` for each caller.
    MutualTls { pki: PathBuf },
    /// Plaintext: every caller is the unauthenticated principal.
    Plaintext,
}

/// A running dev-mode CA. Killed when dropped.
pub struct DevServer {
    child: Child,
    /// `https://127.0.0.1:PORT` (mTLS) or `http://127.0.0.1:PORT` (plaintext).
    pub endpoint: String,
    /// Everything the server printed on stdout before it started listening.
    pub banner: String,
    /// How to reach it.
    pub transport: Transport,
    data_dir: PathBuf,
}

impl DevServer {
    /// Starts `ca-service serve --dev` on a fresh data directory under `parent`.
    pub fn start(parent: &Path, algorithm: &str) -> DevServer {
        let data_dir = parent.join("data");
        DevServer::start_in(&data_dir, algorithm)
    }

    /// Starts (or restarts) the dev server on `data_dir`, serving mTLS with its dev PKI.
    pub fn start_in(data_dir: &Path, algorithm: &str) -> DevServer {
        DevServer::start_dev(data_dir, algorithm, &[])
    }

    /// Starts the dev server on a fresh data directory under `parent` at log level `debug`, its
    /// log (stderr) written to `log`: for tests that read what the service logs.
    pub fn start_logging(parent: &Path, algorithm: &str, log: &Path) -> DevServer {
        let data_dir = parent.join("data");
        let mut command = Command::new(CA_SERVICE);
        command
            .args([
                "serve",
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--ca-key-algorithm",
                algorithm,
                "--data-dir",
            ])
            .arg(&data_dir);
        let transport = Transport::MutualTls {
            pki: data_dir.join("dev-pki"),
        };
        let (child, address, banner) = spawn_listening_with(command, Some(log));
        DevServer {
            child,
            endpoint: format!("https://{address}"),
            banner,
            transport,
            data_dir,
        }
    }

    /// Starts (or restarts) the dev server on `data_dir` with `--plaintext`.
    pub fn start_plaintext_in(data_dir: &Path, algorithm: &str) -> DevServer {
        DevServer::start_dev(data_dir, algorithm, &["--plaintext"])
    }

    fn start_dev(data_dir: &Path, algorithm: &str, extra: &[&str]) -> DevServer {
        let mut command = Command::new(CA_SERVICE);
        command
            .args([
                "serve",
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--ca-key-algorithm",
                algorithm,
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra);
        let transport = if extra.contains(&"--plaintext") {
            Transport::Plaintext
        } else {
            Transport::MutualTls {
                pki: data_dir.join("dev-pki"),
            }
        };
        DevServer::spawn(command, transport, data_dir.to_path_buf())
    }

    fn spawn(command: Command, transport: Transport, data_dir: PathBuf) -> DevServer {
        let (child, address, banner) = spawn_listening(command);
        let endpoint = match transport {
            Transport::MutualTls { .. } => format!("https://{address}"),
            Transport::Plaintext => format!("http://{address}"),
        };
        DevServer {
            child,
            endpoint,
            banner,
            transport,
            data_dir,
        }
    }

    /// Starts `ca-service serve --config CONFIG --listen 127.0.0.1:0` (a production-style server).
    /// With a `[tls]` section, its certificate's directory must hold a dev PKI's files (as the
    /// configs copied from a dev data directory do).
    pub fn start_with_config(config: &Path) -> DevServer {
        let directory = config.parent().expect("config in a directory").to_path_buf();
        let text = std::fs::read_to_string(config).expect("read config");
        let table: toml::Table = toml::from_str(&text).expect("config parses");
        let transport = match table.get("tls").and_then(|tls| tls.get("certificate")) {
            Some(certificate) => {
                let certificate = directory.join(certificate.as_str().expect("tls.certificate is a string"));
                Transport::MutualTls {
                    pki: certificate.parent().expect("certificate in a directory").to_path_buf(),
                }
            }
            None => Transport::Plaintext,
        };
        let mut command = Command::new(CA_SERVICE);
        command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0"]);
        DevServer::spawn(command, transport, directory)
    }

    /// The dev PKI's CA certificate, and `principal`'s certificate and key, if the server is mTLS.
    pub fn tls_files(&self, principal: &str) -> Option<(PathBuf, PathBuf, PathBuf)> {
        match &self.transport {
            Transport::MutualTls { pki } => Some((
                pki.join("ca.pem"),
                pki.join(format!("{principal}.pem")),
                pki.join(format!("{principal}-key.pem")),
            )),
            Transport::Plaintext => None,
        }
    }

    /// The reference client's TLS settings as dev principal `principal` (`None` for plaintext).
    pub fn client_tls(&self, principal: &str) -> Option<e2ee_client::transport::ClientTls> {
        let (ca, certificate, key) = self.tls_files(principal)?;
        let read = |path: &Path| std::fs::read(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        Some(
            e2ee_client::transport::ClientTls::new(read(&ca))
                .with_client_certificate(read(&certificate), zeroize::Zeroizing::new(read(&key))),
        )
    }

    /// A channel as dev principal `principal` (over plaintext, every caller is the same).
    pub async fn connect_as(&self, principal: &str) -> Channel {
        self.connect_with(self.client_tls(principal)).await
    }

    /// A channel that presents no client certificate (over TLS when the server serves mTLS).
    pub async fn connect_without_certificate(&self) -> Channel {
        let tls = match &self.transport {
            Transport::MutualTls { pki } => Some(e2ee_client::transport::ClientTls::new(
                std::fs::read(pki.join("ca.pem")).expect("dev CA certificate"),
            )),
            Transport::Plaintext => None,
        };
        self.connect_with(tls).await
    }

    /// A channel with `tls` (or plaintext), retried for up to 10 s while the server starts.
    pub async fn connect_with(&self, tls: Option<e2ee_client::transport::ClientTls>) -> Channel {
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

    /// A gRPC client for the Identity service, as the sync server.
    pub async fn client(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.connect_as("sync-server").await)
    }

    /// A gRPC client for the Transparency service, as the auditor (who may also export).
    pub async fn transparency(&self) -> TransparencyClient<Channel> {
        TransparencyClient::new(self.connect_as("auditor").await)
    }

    /// The server's process id (for CPU accounting in the benches).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the server to shut down as an orchestrator does (SIGTERM) and waits for it to exit, at
    /// most `limit`; returns whether it exited successfully and how long it took. Async, so that the
    /// test's own gRPC connections keep running and can close when the server says goodbye.
    pub async fn terminate(mut self, limit: Duration) -> (bool, Duration) {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "SIGTERM delivered");
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (status.success(), started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "ca-service did not exit within {limit:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server (SIGKILL: nothing may depend on a clean shutdown).
    pub fn stop(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.data_dir.clone()
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `command` and waits until it prints `listening on ADDRESS`; returns the child, the
/// address and the banner printed until then.
fn spawn_listening(command: Command) -> (Child, String, String) {
    spawn_listening_with(command, None)
}

/// `spawn_listening`, with the log at level `debug` in `log` when given (else `warn`, inherited).
fn spawn_listening_with(mut command: Command, log: Option<&Path>) -> (Child, String, String) {
    match log {
        Some(log) => command
            .env("RUST_LOG", "debug")
            .stderr(std::fs::File::create(log).expect("create the server log")),
        None => command.env("RUST_LOG", "warn").stderr(Stdio::inherit()),
    };
    let mut child = command.stdout(Stdio::piped()).spawn().expect("spawn ca-service");
    let stdout = child.stdout.take().expect("stdout is piped");
    let (sender, receiver) = std::sync::mpsc::channel();
    // Read the banner on a thread so that a server that never prints cannot hang the test.
    std::thread::spawn(move || {
        let mut banner = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            banner.push_str(&line);
            banner.push('\n');
            if let Some(address) = line.strip_prefix("listening on ") {
                let _ = sender.send((address.to_owned(), banner.clone()));
            }
        }
    });
    // RSA-4096 key generation on SoftHSM can take a while on a busy 2-core machine.
    let (address, banner) = receiver.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("ca-service did not start listening within 120 s");
    });
    (child, address, banner)
}

/// User key types the CA accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKey {
    Rsa2048,
    Rsa3072,
    Rsa4096,
    EcP256,
    EcP384,
}

impl UserKey {
    pub const ALL: [UserKey; 5] = [
        UserKey::Rsa2048,
        UserKey::Rsa3072,
        UserKey::Rsa4096,
        UserKey::EcP256,
        UserKey::EcP384,
    ];
}

/// A user key pair and CSRs made with it.
pub struct UserKeyPair {
    pub key_pair: rcgen::KeyPair,
}

impl UserKeyPair {
    pub fn generate(kind: UserKey) -> UserKeyPair {
        let key_pair = match kind {
            UserKey::Rsa2048 => rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048),
            UserKey::Rsa3072 => rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072),
            UserKey::Rsa4096 => rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096),
            UserKey::EcP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            UserKey::EcP384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        }
        .expect("key generation");
        UserKeyPair { key_pair }
    }

    /// A CSR with subject CN = `common_name`.
    pub fn csr(&self, common_name: &str) -> String {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params
            .serialize_request(&self.key_pair)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    pub fn spki_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.key_pair)
    }

    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.spki_der()))
    }
}

pub async fn issue(
    client: &mut IdentityClient<Channel>,
    user_id: &str,
    csr_pem: &str,
) -> Result<IssueCertificateResponse, tonic::Status> {
    issue_request(client, user_id, csr_pem, false).await
}

/// `issue` that also waits for the entry's receipt (`wait_for_checkpoint`).
pub async fn issue_with_receipt(
    client: &mut IdentityClient<Channel>,
    user_id: &str,
    csr_pem: &str,
) -> Result<IssueCertificateResponse, tonic::Status> {
    issue_request(client, user_id, csr_pem, true).await
}

async fn issue_request(
    client: &mut IdentityClient<Channel>,
    user_id: &str,
    csr_pem: &str,
    wait_for_checkpoint: bool,
) -> Result<IssueCertificateResponse, tonic::Status> {
    client
        .issue_certificate(IssueCertificateRequest {
            user_id: user_id.to_owned(),
            csr_pem: csr_pem.to_owned(),
            wait_for_checkpoint,
        })
        .await
        .map(tonic::Response::into_inner)
}

pub async fn ca_info(client: &mut IdentityClient<Channel>) -> GetCaInfoResponse {
    client
        .get_ca_info(GetCaInfoRequest {})
        .await
        .expect("GetCaInfo")
        .into_inner()
}

/// DER of the first PEM block.
pub fn pem_der(text: &str) -> Vec<u8> {
    pem::parse(text).expect("PEM").into_contents()
}

/// Asserts a refusal's code and that its message mentions `fragment`.
pub fn assert_refused(result: Result<IssueCertificateResponse, tonic::Status>, code: tonic::Code, fragment: &str) {
    match result {
        Ok(_) => panic!("expected {code:?} mentioning {fragment:?}, got a certificate"),
        Err(status) => {
            assert_eq!(status.code(), code, "status message: {}", status.message());
            assert!(
                status.message().contains(fragment),
                "message {:?} should mention {fragment:?}",
                status.message()
            );
        }
    }
}

/// A signed checkpoint the server served, verified with the key from `GetCaInfo`.
pub struct SeenCheckpoint {
    /// Its tree size.
    pub size: u64,
    /// The signed note text.
    pub note: String,
}

/// Issues a certificate to each of `users` (fresh P-256 keys) and waits, at most 15 s, for a
/// signed checkpoint covering them.
pub async fn issue_and_wait_for_checkpoint(server: &DevServer, users: &[&str]) -> SeenCheckpoint {
    let mut identity = server.client().await;
    let vkey = tlog::key::VerifierKey::parse(&ca_info(&mut identity).await.checkpoint_verifier_keys[0])
        .expect("checkpoint key from GetCaInfo");
    let mut needed = 0;
    for user in users {
        let key = UserKeyPair::generate(UserKey::EcP256);
        let issued = issue(&mut identity, user, &key.csr(user)).await.expect("issued");
        needed = issued.log_entry.expect("log entry").index + 1;
    }
    let mut transparency = server.transparency().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(response) = transparency.get_checkpoint(GetCheckpointRequest {}).await {
            let note = response.into_inner().checkpoint;
            let parsed = tlog::note::SignedNote::parse(&note).expect("signed note");
            let opened =
                tlog::checkpoint::SignedCheckpoint::open(parsed, vkey.name().as_str(), std::slice::from_ref(&vkey))
                    .expect("the checkpoint verifies");
            let size = opened.checkpoint().size();
            if size >= needed {
                return SeenCheckpoint { size, note };
            }
        }
        assert!(Instant::now() < deadline, "no checkpoint of size {needed} within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `command` (a `ca-service serve ...`), which must exit with an error within 60 s without
/// listening; returns what it printed.
pub fn assert_exits_without_serving(mut command: Command) -> String {
    let mut child = command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ca-service");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ca-service kept running instead of refusing to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("output");
    let text = output_text(&output);
    assert!(!output.status.success(), "must exit with an error: {text}");
    assert!(!text.contains("listening on"), "must not serve: {text}");
    text
}

/// What a finished child printed, stdout then stderr.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `ca-service ARGS` to completion; returns whether it succeeded and what it printed.
pub fn run_ca_service(args: &[&str]) -> (bool, String) {
    let output = Command::new(CA_SERVICE)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ca-service");
    (output.status.success(), output_text(&output))
}

/// `ca-service audit export --config CONFIG --out OUT`, then `extra` options (`--vkey …`).
pub fn audit_export(config: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "audit",
        "export",
        "--config",
        config.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
    ];
    args.extend(extra);
    run_ca_service(&args)
}

/// `ca-service audit verify --dir DIR --trusted-key VKEY`, with `--pinned-checkpoint` when given, then
/// `extra` options: the offline auditor's check of an export.
pub fn audit_verify(dir: &Path, vkey: &str, pinned: Option<&Path>, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "audit",
        "verify",
        "--dir",
        dir.to_str().expect("utf-8 path"),
        "--trusted-key",
        vkey,
    ];
    if let Some(pinned) = pinned {
        args.extend(["--pinned-checkpoint", pinned.to_str().expect("utf-8 path")]);
    }
    args.extend(extra);
    run_ca_service(&args)
}
