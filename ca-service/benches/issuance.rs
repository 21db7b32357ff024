//! Issuance throughput over gRPC next to the raw signing rate of the same SoftHSM token and pool.
//!
//! `cargo bench -p ca-service --bench issuance` (optionally `-- SECONDS CLIENTS`). For each CA key
//! type it measures, in one run: (1) the raw rate of `Hsm::sign` through the service's own session
//! pool, with no gRPC, parsing or storage; (2) `IssueCertificate` over gRPC from N concurrent clients
//! against `ca-service serve --config` on the embedded store, with distinct users and pre-generated
//! CSRs; then prints both and their ratio, with latency percentiles and errors by code.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ca_service::hsm::{Hsm, HsmConfig, KeyAlgorithm, Pin};
use e2ee_ca_proto::v1::IssueCertificateRequest;
use e2ee_ca_proto::v1::identity_client::IdentityClient;

const CA_SERVICE: &str = env!("CARGO_BIN_EXE_ca-service");
const TOKEN_LABEL: &str = "bench";
const USER_PIN: &str = "bench-user-pin";
const POOL_SIZE: usize = 4;

fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args()
        .skip(1)
        .filter(|argument| !argument.starts_with('-'))
        .collect();
    let seconds: u64 = arguments.first().and_then(|value| value.parse().ok()).unwrap_or(8);
    let clients: usize = arguments.get(1).and_then(|value| value.parse().ok()).unwrap_or(16);
    let workspace = tempfile::tempdir()?;
    let tokens = hsm_sim::TokenDirectory::create(&workspace.path().join("softhsm"))?;
    tokens.init_token(TOKEN_LABEL, "bench-so-pin", USER_PIN)?;
    std::fs::write(workspace.path().join("pin"), USER_PIN)?;
    let algorithms = [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa3072];
    for algorithm in algorithms {
        ceremony(workspace.path(), &tokens, algorithm)?;
    }
    // Single-threaded until here: SoftHSM reads SOFTHSM2_CONF in C_Initialize.
    hsm_sim::set_softhsm2_conf(&tokens.conf_path())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let hsm = Hsm::connect(HsmConfig {
            module: hsm_sim::find_module()?,
            token_label: TOKEN_LABEL.to_owned(),
            pin: Pin::new(USER_PIN),
            pool_size: POOL_SIZE,
            session_wait: Duration::from_secs(5),
        })?;
        println!("machine: {} cores, {}", num_cores(), cpu_model());
        println!("settings: {seconds} s per measurement, {clients} gRPC clients, HSM pool of {POOL_SIZE} sessions");
        for algorithm in algorithms {
            let raw = raw_signing_rate(&hsm, algorithm, Duration::from_secs(seconds)).await?;
            let issuance = grpc_issuance(workspace.path(), &tokens, algorithm, seconds, clients).await?;
            println!("\nCA key {algorithm}:");
            println!("  raw SoftHSM signing (service pool, {POOL_SIZE} signers): {raw:.0} signatures/s");
            println!(
                "  IssueCertificate over gRPC, embedded store: {:.0} certificates/s ({} ok in {:.1} s)",
                issuance.rate, issuance.ok, issuance.elapsed
            );
            println!("  ratio issuance / raw signing: {:.2}", issuance.rate / raw);
            println!(
                "  latency p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms; errors: {:?}",
                issuance.p50, issuance.p95, issuance.p99, issuance.errors
            );
        }
        Ok::<_, anyhow::Error>(())
    })
}

fn key_label(algorithm: KeyAlgorithm) -> String {
    format!("bench-{algorithm}")
}

fn ceremony(directory: &Path, tokens: &hsm_sim::TokenDirectory, algorithm: KeyAlgorithm) -> anyhow::Result<()> {
    let config = directory.join(format!("ceremony-{algorithm}.toml"));
    std::fs::write(
        &config,
        format!(
            "mode = \"root\"\nkey_label = {:?}\nkey_algorithm = {:?}\noutput = \"ca-{algorithm}.pem\"\n\
             [subject]\ncommon_name = \"Bench CA\"\n{}",
            key_label(algorithm),
            algorithm.name(),
            hsm_section(tokens),
        ),
    )?;
    let output = Command::new(CA_SERVICE)
        .arg("ceremony")
        .arg("--config")
        .arg(&config)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "ceremony failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

fn hsm_section(tokens: &hsm_sim::TokenDirectory) -> String {
    format!(
        "[hsm]\nmodule = {:?}\nsofthsm2_conf = {:?}\ntoken_label = {TOKEN_LABEL:?}\npin_file = \"pin\"\npool_size = {POOL_SIZE}\n",
        hsm_sim::find_module()
            .map(|path| path.display().to_string())
            .unwrap_or_default(),
        tokens.conf_path().display().to_string(),
    )
}

/// Signatures per second through the pool: as many concurrent signers as sessions.
async fn raw_signing_rate(hsm: &Hsm, algorithm: KeyAlgorithm, duration: Duration) -> anyhow::Result<f64> {
    let key = {
        let hsm = hsm.clone();
        tokio::task::spawn_blocking(move || hsm.load_key(&key_label(algorithm), algorithm)).await??
    };
    // A certificate-sized message (about the size of a TBSCertificate).
    let message = vec![0x5a_u8; 600];
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..POOL_SIZE {
        let hsm = hsm.clone();
        let key = key.clone();
        let message = message.clone();
        workers.push(tokio::spawn(async move {
            let mut count = 0_u64;
            while started.elapsed() < duration {
                hsm.sign(&key, message.clone()).await?;
                count += 1;
            }
            Ok::<_, ca_service::hsm::HsmError>(count)
        }));
    }
    let mut total = 0;
    for worker in workers {
        total += worker.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

struct Issuance {
    rate: f64,
    ok: usize,
    elapsed: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    errors: std::collections::BTreeMap<String, usize>,
}

async fn grpc_issuance(
    directory: &Path,
    tokens: &hsm_sim::TokenDirectory,
    algorithm: KeyAlgorithm,
    seconds: u64,
    clients: usize,
) -> anyhow::Result<Issuance> {
    let config = directory.join(format!("serve-{algorithm}.toml"));
    let store = directory.join(format!("store-{algorithm}.sqlite3"));
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n{}\n[ca]\nkey_label = {:?}\nkey_algorithm = {:?}\ncertificate = \"ca-{algorithm}.pem\"\n\
             [issuance]\nvalidity_days = 365\n[store]\nurl = \"sqlite:{}\"\n",
            hsm_section(tokens),
            key_label(algorithm),
            algorithm.name(),
            store.display(),
        ),
    )?;
    let server = Server::start(&config)?;
    // Distinct users with pre-generated P-256 CSRs (cheap to make in bulk).
    let requests: Vec<(String, String)> = (0..clients * 4000)
        .map(|index| {
            let user = format!("bench-user-{index}");
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(rcgen::DnType::CommonName, user.as_str());
            let csr = params.serialize_request(&key).expect("csr").pem().expect("pem");
            (user, csr)
        })
        .collect();
    let requests = Arc::new(requests);
    let client = IdentityClient::connect(server.endpoint.clone()).await?;
    let duration = Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..clients {
        let mut client = client.clone();
        let requests = Arc::clone(&requests);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            let mut index = worker;
            while started.elapsed() < duration && index < requests.len() {
                let (user, csr) = &requests[index];
                let sent = Instant::now();
                let result = client
                    .issue_certificate(IssueCertificateRequest {
                        user_id: user.clone(),
                        csr_pem: csr.clone(),
                    })
                    .await;
                match result {
                    Ok(_) => latencies.push(sent.elapsed().as_secs_f64() * 1000.0),
                    Err(status) => errors.push(format!("{:?}", status.code())),
                }
                index += clients;
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = std::collections::BTreeMap::new();
    for task in tasks {
        let (task_latencies, task_errors) = task.await?;
        latencies.extend(task_latencies);
        for code in task_errors {
            *errors.entry(code).or_insert(0) += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(server);
    latencies.sort_by(f64::total_cmp);
    let percentile = |fraction: f64| {
        latencies
            .get(((latencies.len() as f64 * fraction) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
    };
    Ok(Issuance {
        rate: latencies.len() as f64 / elapsed,
        ok: latencies.len(),
        elapsed,
        p50: percentile(0.50).unwrap_or(f64::NAN),
        p95: percentile(0.95).unwrap_or(f64::NAN),
        p99: percentile(0.99).unwrap_or(f64::NAN),
        errors,
    })
}

struct Server {
    child: std::process::Child,
    endpoint: String,
}

impl Server {
    fn start(config: &PathBuf) -> anyhow::Result<Server> {
        use std::io::BufRead;
        let mut child = Command::new(CA_SERVICE)
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let address = loop {
            let line = lines
                .next()
                .ok_or_else(|| anyhow::anyhow!("server exited before listening"))??;
            if let Some(address) = line.strip_prefix("listening on ") {
                break address.to_owned();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Server {
            child,
            endpoint: format!("http://{address}"),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}
