//! Shared harness for the end-to-end tests: the real `ca-service` binary in dev mode on an ephemeral
//! port, each with its own data directory and SoftHSM token, reached through the real gRPC client.

#![allow(dead_code, reason = "each test binary uses a different part of the shared fixture")]

pub mod faults;
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

/// A running dev-mode CA. Killed when dropped.
pub struct DevServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Everything the server printed on stdout before it started listening.
    pub banner: String,
    data_dir: PathBuf,
}

impl DevServer {
    /// Starts `ca-service serve --dev` on a fresh data directory under `parent`.
    pub fn start(parent: &Path, algorithm: &str) -> DevServer {
        let data_dir = parent.join("data");
        DevServer::start_in(&data_dir, algorithm)
    }

    /// Starts (or restarts) the dev server on `data_dir`.
    pub fn start_in(data_dir: &Path, algorithm: &str) -> DevServer {
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
            .arg(data_dir);
        let (child, endpoint, banner) = spawn_listening(command);
        DevServer {
            child,
            endpoint,
            banner,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Starts `ca-service serve --config CONFIG --listen 127.0.0.1:0` (a production-style server).
    pub fn start_with_config(config: &Path) -> DevServer {
        let mut command = Command::new(CA_SERVICE);
        command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0"]);
        let (child, endpoint, banner) = spawn_listening(command);
        DevServer {
            child,
            endpoint,
            banner,
            data_dir: config.parent().expect("config in a directory").to_path_buf(),
        }
    }

    /// A gRPC client for the Identity service.
    pub async fn client(&self) -> IdentityClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match IdentityClient::connect(self.endpoint.clone()).await {
                Ok(client) => return client,
                Err(error) if Instant::now() > deadline => panic!("cannot connect to {}: {error}", self.endpoint),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
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
/// endpoint and the banner printed until then.
fn spawn_listening(mut command: Command) -> (Child, String, String) {
    let mut child = command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ca-service");
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
    (child, format!("http://{address}"), banner)
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
    let mut transparency = TransparencyClient::connect(server.endpoint.clone())
        .await
        .expect("connect");
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
