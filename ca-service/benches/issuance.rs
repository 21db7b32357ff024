//! Issuance over gRPC next to the raw signing rate of the same SoftHSM token and pool, with scenarios.
//!
//! `cargo bench -p ca-service --bench issuance -- [SECONDS] [CLIENTS] [USERS] [PREFILLED]`
//! (defaults 8 16 512 1000000). One run measures:
//! 1. the raw rate of `Hsm::danger_sign_unverified` through the service's own session pool, same token and keys, with
//!    no gRPC, parsing or storage (the physical limit), for each CA key type, right before and right
//!    after the empty-store scenario: ratios are to the mean, and the difference shows the host's drift;
//! 2. `IssueCertificate` over gRPC from CLIENTS concurrent clients against `serve --config` on the
//!    embedded store with the transparency log on (each answer waits for its log index), with
//!    pre-generated RSA-2048 CSRs (as Nextcloud clients use) for USERS users: the first round pins,
//!    later rounds renew; rate, p50/p95/p99 latency, errors by code, the ratio to the raw rate, the
//!    CPU time per certificate of the service and of the load generator (robust against other load,
//!    unlike rates) and the raw signature's share of it, the service's peak RSS and its startup time;
//! 3. with the P-256 CA, back to back: the same on a store already holding PREFILLED pinned
//!    identities (with its startup time), then the empty store again, so that the prefilled run is
//!    compared with the mean of the two empty-store runs around it;
//! 4. for each CA key, the same at half the maximum rate (paced), for the p99 latency target;
//! 5. for each CA key, the floor under the ratio target: the CPU a certificate may cost at the
//!    target ratio (the raw signature's CPU over the target: with the cores as busy as in the raw
//!    run, the ratio of rates is the signature's share of the CPU per certificate), less what no
//!    issuance can skip, each measured in the same run: the raw signature, a gRPC round trip of
//!    the same clients with a certificate-sized answer and no issuance work (`GetCaInfo`: the
//!    service's and the load generator's CPU per call), and the checks the policy requires (the
//!    CSR's parse and self-signature, and the verification of the signed certificate with the CA
//!    key, timed on one thread); what is left is the budget for building the certificate, the
//!    durable commit and the audit log, printed next to what the empty-store run spent on them.
//!
//! Results go to stdout; with `BENCH_MARKDOWN=FILE` a Markdown table is also written to FILE. With
//! `BENCH_SERVICE_BINARY=PATH` the scenarios serve with that `ca-service` build instead (to compare
//! a change against a copy of the binary before it); `BENCH_CA_KEYS=rsa-3072` (or `ecdsa-p256`)
//! runs one CA key's scenarios only; `BENCH_SCENARIOS=empty` runs only step 2 (the empty-store
//! scenario between its raw rates), which an older binary can serve too (no prefilled store of
//! this version's schema), for A/B runs of the issuance and renewal path.

#![allow(
    clippy::expect_used,
    reason = "bench code: a failed expectation aborts the benchmark, as it should"
)]

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ca_service::hsm::{Hsm, HsmConfig, HsmKey, KeyAlgorithm, Pin};
use e2ee_ca_proto::v1::identity_client::IdentityClient;
use e2ee_ca_proto::v1::{GetCaInfoRequest, IssueCertificateRequest};

const CA_SERVICE: &str = env!("CARGO_BIN_EXE_ca-service");
const TOKEN_LABEL: &str = "bench";
const USER_PIN: &str = "bench-user-pin";
const POOL_SIZE: usize = 4;

struct Settings {
    seconds: u64,
    clients: usize,
    users: usize,
    prefilled: usize,
}

fn main() -> anyhow::Result<()> {
    let arguments: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|argument| argument.parse().ok())
        .collect();
    let settings = Settings {
        seconds: arguments.first().copied().unwrap_or(8) as u64,
        clients: arguments.get(1).copied().unwrap_or(16),
        users: arguments.get(2).copied().unwrap_or(512),
        prefilled: arguments.get(3).copied().unwrap_or(1_000_000),
    };
    let workspace = tempfile::tempdir()?;
    let tokens = hsm_sim::TokenDirectory::create(&workspace.path().join("softhsm"))?;
    tokens.init_token(TOKEN_LABEL, "bench-so-pin", USER_PIN)?;
    std::fs::write(workspace.path().join("pin"), USER_PIN)?;
    // `BENCH_CA_KEYS=rsa-3072` (or `ecdsa-p256`) runs only that CA key's scenarios.
    let only = std::env::var("BENCH_CA_KEYS").ok();
    let algorithms: Vec<KeyAlgorithm> = [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa3072]
        .into_iter()
        .filter(|algorithm| {
            only.as_deref()
                .is_none_or(|only| only.split(',').any(|name| name == algorithm.name()))
        })
        .collect();
    anyhow::ensure!(
        !algorithms.is_empty(),
        "BENCH_CA_KEYS names no CA key (ecdsa-p256, rsa-3072)"
    );
    for &algorithm in &algorithms {
        ceremony(workspace.path(), &tokens, algorithm)?;
    }
    // Single-threaded until here: SoftHSM reads SOFTHSM2_CONF in C_Initialize.
    hsm_sim::set_softhsm2_conf(&tokens.conf_path())?;
    let csrs = Arc::new(user_csrs(settings.users));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let hsm = Hsm::connect(HsmConfig {
            module: hsm_sim::find_module()?,
            token_label: TOKEN_LABEL.to_owned(),
            pin: Pin::new(USER_PIN),
            pool_size: POOL_SIZE,
            session_wait: Duration::from_secs(5),
        })?;
        let mut report = Report::default();
        report.line(format!("machine: {} cores, {}", num_cores(), support::cpu_model()));
        report.line(format!(
            "settings: {} s per measurement, {} gRPC clients, {} users with RSA-2048 keys, HSM pool of {POOL_SIZE}",
            settings.seconds, settings.clients, settings.users
        ));
        let duration = Duration::from_secs(settings.seconds);
        let only_empty = std::env::var("BENCH_SCENARIOS").is_ok_and(|scenarios| scenarios == "empty");
        // Filled first, so that the comparison below runs back to back.
        let prefilled_store = workspace.path().join("store-prefilled.sqlite3");
        if !only_empty {
            prefill(workspace.path(), &tokens, &prefilled_store, settings.prefilled)?;
        }
        for &algorithm in &algorithms {
            let store = workspace.path().join(format!("store-{algorithm}.sqlite3"));
            let scenario = async |store: &Path, paced: Option<f64>| {
                let call = Call::IssueCertificate;
                run_scenario(
                    workspace.path(),
                    &tokens,
                    algorithm,
                    store,
                    &csrs,
                    &settings,
                    paced,
                    call,
                )
                .await
            };
            // The raw rate is measured right before and right after the full-rate scenario: the
            // host's drift shows as the difference, and the ratio is to their mean.
            let raw_before = raw_signing_rate(&hsm, algorithm, duration).await?;
            let full = scenario(&store, None).await?;
            let raw = raw_before.bracket(raw_signing_rate(&hsm, algorithm, duration).await?);
            report.row(algorithm, "embedded store, empty", raw, &full);
            if only_empty {
                continue;
            }
            let mut maximum = full.rate;
            if algorithm == KeyAlgorithm::EcdsaP256 {
                // Empty, prefilled, empty again, back to back: the prefilled run is compared with
                // the mean of the two around it.
                let large = scenario(&prefilled_store, None).await?;
                report.row(
                    algorithm,
                    &format!("embedded store, {} identities pinned", settings.prefilled),
                    raw,
                    &large,
                );
                let again = scenario(&store, None).await?;
                report.row(algorithm, "embedded store, empty store again", raw, &again);
                let empty_rate = (full.rate + again.rate) / 2.0;
                let empty_cpu = (full.cpu_us + again.cpu_us) / 2.0;
                report.line(format!(
                    "  with {} identities: {:.0}% of the empty-store rate (mean of the runs before and after), \
                     CPU per certificate {:+.0}%, startup {:.2} s",
                    settings.prefilled,
                    100.0 * large.rate / empty_rate,
                    100.0 * (large.cpu_us / empty_cpu - 1.0),
                    large.startup.as_secs_f64()
                ));
                maximum = full.rate.min(again.rate);
            }
            let half = maximum / 2.0;
            let paced = scenario(&store, Some(half)).await?;
            report.row(
                algorithm,
                &format!("paced at half the maximum ({half:.0}/s)"),
                raw,
                &paced,
            );
            let call = Call::GetCaInfo;
            let round_trip = run_scenario(
                workspace.path(),
                &tokens,
                algorithm,
                &store,
                &csrs,
                &settings,
                None,
                call,
            )
            .await?;
            let checks = required_checks(&hsm, algorithm, &csrs).await?;
            report.floor(algorithm, raw, &full, &round_trip, checks);
        }
        report.finish()
    })
}

/// Collects the lines printed and the Markdown table written for `BENCH_MARKDOWN`.
#[derive(Default)]
struct Report {
    markdown: String,
    /// The floor lines, after the table.
    floors: String,
}

impl Report {
    fn line(&mut self, text: String) {
        println!("{text}");
    }

    fn row(&mut self, algorithm: KeyAlgorithm, scenario: &str, raw: Raw, result: &Scenario) {
        println!("\nCA key {algorithm}, {scenario}:");
        let (raw_text, raw_cell) = match raw.before_after {
            Some((before, after)) => (
                format!(
                    "{:.0} signatures/s (mean of {before:.0} before and {after:.0} after the empty-store run: drift {:+.0}%)",
                    raw.rate,
                    100.0 * (after / before - 1.0)
                ),
                format!("{:.0} ({before:.0} / {after:.0})", raw.rate),
            ),
            None => (format!("{:.0} signatures/s", raw.rate), format!("{:.0}", raw.rate)),
        };
        println!(
            "  raw SoftHSM signing (service pool, {POOL_SIZE} signers): {raw_text}, {:.0} µs CPU each",
            raw.cpu_us
        );
        let ratio = result.rate / raw.rate;
        // What the ratio would be if both saturated the cores: steadier than rates on a shared host.
        let cpu_share = raw.cpu_us / (result.cpu_us + result.client_cpu_us);
        println!(
            "  IssueCertificate over gRPC: {:.0} certificates/s ({} ok in {:.1} s); ratio to raw signing {ratio:.2}",
            result.rate, result.ok, result.elapsed,
        );
        println!(
            "  CPU per certificate: service {:.0} µs ({:.0} µs beyond the raw signature), load generator {:.0} µs; \
             raw signature's share of it {cpu_share:.2}",
            result.cpu_us,
            result.cpu_us - raw.cpu_us,
            result.client_cpu_us
        );
        println!(
            "  latency p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms; errors {:?}; peak RSS {} MB; startup {:.2} s",
            result.p50,
            result.p95,
            result.p99,
            result.errors,
            result.peak_rss_kb / 1024,
            result.startup.as_secs_f64()
        );
        let _ = writeln!(
            self.markdown,
            "| {algorithm} | {scenario} | {raw_cell} | {:.0} | {ratio:.2} | {cpu_share:.2} | {:.0} / {:.0} / {:.0} | {:.1} / {:.1} / {:.1} | {} | {:.2} s | {:?} |",
            result.rate,
            result.cpu_us,
            raw.cpu_us,
            result.client_cpu_us,
            result.p50,
            result.p95,
            result.p99,
            result.peak_rss_kb / 1024,
            result.startup.as_secs_f64(),
            result.errors
        );
    }

    /// The floor under the ratio target (module docs, step 5).
    fn floor(&mut self, algorithm: KeyAlgorithm, raw: Raw, full: &Scenario, round_trip: &Scenario, checks: Checks) {
        let target = match algorithm {
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => 0.85,
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => 0.60,
        };
        // What a certificate may cost if the service keeps the cores as busy as the raw run did:
        // then the ratio of rates is the raw signature's share of the CPU per certificate.
        let budget = raw.cpu_us / target;
        let round_trip_us = round_trip.cpu_us + round_trip.client_cpu_us;
        let left = budget - raw.cpu_us - round_trip_us - checks.csr_us - checks.verify_us;
        let spent = full.cpu_us - raw.cpu_us + full.client_cpu_us - round_trip_us - checks.csr_us - checks.verify_us;
        let text = format!(
            "CA key {algorithm}, the floor under {:.0} % of raw ({:.0}/s): {budget:.0} µs of CPU per certificate with \
             the cores as busy as in the raw run; the raw signature {:.0}, a gRPC round trip {round_trip_us:.0} (GetCaInfo from the same clients, \
             {:.0}/s: service {:.0} + load generator {:.0}), the CSR check {:.0} and the certificate's verification {:.0} \
             leave {left:.0} µs for building the certificate, the durable commit and the audit log; \
             the empty-store run spent {spent:.0} µs on them",
            100.0 * target,
            target * raw.rate,
            raw.cpu_us,
            round_trip.rate,
            round_trip.cpu_us,
            round_trip.client_cpu_us,
            checks.csr_us,
            checks.verify_us,
        );
        println!("\n{text}");
        let _ = writeln!(self.floors, "- {text}.");
    }

    fn finish(self) -> anyhow::Result<()> {
        if let Ok(path) = std::env::var("BENCH_MARKDOWN") {
            let header = "| CA key | scenario | raw signing/s: mean (before / after) | issued/s | ratio | CPU share | CPU µs: service per certificate / raw signature / load generator per certificate | p50 / p95 / p99 ms | peak RSS MB | startup | errors |\n\
                          |---|---|---|---|---|---|---|---|---|---|---|\n";
            std::fs::write(path, format!("{header}{}\n{}", self.markdown, self.floors))?;
        }
        Ok(())
    }
}

fn key_label(algorithm: KeyAlgorithm) -> String {
    format!("bench-{algorithm}")
}

fn ceremony(directory: &Path, tokens: &hsm_sim::TokenDirectory, algorithm: KeyAlgorithm) -> anyhow::Result<()> {
    let config = directory.join(format!("ceremony-{algorithm}.toml"));
    std::fs::write(
        &config,
        format!(
            "mode = \"root\"\nkey_label = {:?}\naudit_key_label = \"bench-audit-{algorithm}\"\nkey_algorithm = {:?}\n\
             output = \"ca-{algorithm}.pem\"\n[subject]\ncommon_name = \"Bench CA\"\n{}",
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

fn serve_config(
    directory: &Path,
    tokens: &hsm_sim::TokenDirectory,
    algorithm: KeyAlgorithm,
    store: &Path,
) -> anyhow::Result<PathBuf> {
    let config = directory.join(format!(
        "serve-{algorithm}-{}.toml",
        store.file_stem().and_then(|stem| stem.to_str()).unwrap_or("store")
    ));
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nallow_plaintext = true\n{}\n[ca]\nkey_label = {:?}\nkey_algorithm = {:?}\ncertificate = \"ca-{algorithm}.pem\"\n\
             [issuance]\nvalidity_days = 365\nmax_certificates_per_user_per_day = 4000000000\n[store]\nurl = \"sqlite:{}\"\n\
             [audit]\nkey_label = \"bench-audit-{algorithm}\"\norigin = \"bench.example/audit-log\"\n\
             guard_file = \"{}.guard\"\n",
            hsm_section(tokens),
            key_label(algorithm),
            algorithm.name(),
            store.display(),
            store.display(),
        ),
    )?;
    Ok(config)
}

/// One RSA-2048 key and CSR per user, generated on all cores.
fn user_csrs(users: usize) -> Vec<(String, String)> {
    let threads = num_cores().max(1);
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            std::thread::spawn(move || {
                (thread..users)
                    .step_by(threads)
                    .map(|index| {
                        let user = format!("bench-user-{index}");
                        let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                            .expect("RSA key generation");
                        let mut params = rcgen::CertificateParams::default();
                        params.distinguished_name = rcgen::DistinguishedName::new();
                        params.distinguished_name.push(rcgen::DnType::CommonName, user.as_str());
                        let csr = params.serialize_request(&key).expect("csr").pem().expect("pem");
                        (user, csr)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|handle| handle.join().expect("CSR thread"))
        .collect()
}

/// Signatures per second through the pool: as many concurrent signers as sessions.
/// The raw signing rate, and the CPU time per signature (this process does nothing else meanwhile).
async fn raw_signing_rate(hsm: &Hsm, algorithm: KeyAlgorithm, duration: Duration) -> anyhow::Result<Raw> {
    let key = load_ca_key(hsm, algorithm).await?;
    // A certificate-sized message (about the size of a TBSCertificate).
    let message = vec![0x5a_u8; 600];
    let cpu_before = support::cpu_seconds(std::process::id());
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..POOL_SIZE {
        let hsm = hsm.clone();
        let key = key.clone();
        let message = message.clone();
        workers.push(tokio::spawn(async move {
            let mut count = 0_u64;
            while started.elapsed() < duration {
                hsm.danger_sign_unverified(&key, message.clone()).await?;
                count += 1;
            }
            Ok::<_, ca_service::hsm::HsmError>(count)
        }));
    }
    let mut total = 0;
    for worker in workers {
        total += worker.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = support::cpu_seconds(std::process::id())
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    Ok(Raw {
        rate: total as f64 / elapsed,
        cpu_us: cpu.map_or(f64::NAN, |cpu| cpu * 1e6 / total.max(1) as f64),
        before_after: None,
    })
}

/// The checks the policy requires of every issuance, in CPU microseconds each on one thread.
#[derive(Clone, Copy)]
struct Checks {
    /// Parsing an RSA-2048 CSR and checking it (policy and self-signature): `issuer::csr::check`.
    csr_us: f64,
    /// Verifying a CA signature over a certificate-sized message with the service's own
    /// `hsm::Verifier` (the CA public key parsed once), as `hsm::Signer` checks every signature.
    verify_us: f64,
}

/// The bench's CA key of `algorithm`, as the service loads it.
async fn load_ca_key(hsm: &Hsm, algorithm: KeyAlgorithm) -> anyhow::Result<HsmKey> {
    let hsm = hsm.clone();
    Ok(tokio::task::spawn_blocking(move || hsm.load_key(&key_label(algorithm), algorithm)).await??)
}

/// Times the required checks on one blocking thread, with a signature made on the token.
async fn required_checks(
    hsm: &Hsm,
    algorithm: KeyAlgorithm,
    csrs: &Arc<Vec<(String, String)>>,
) -> anyhow::Result<Checks> {
    let key = load_ca_key(hsm, algorithm).await?;
    let message = vec![0x5a_u8; 600];
    let signature_der = hsm.danger_sign_unverified(&key, message.clone()).await?;
    let csrs = Arc::clone(csrs);
    tokio::task::spawn_blocking(move || {
        let users = csrs
            .iter()
            .map(|(user, _)| ca_service::identity::UserId::parse(user))
            .collect::<Result<Vec<_>, _>>()?;
        let rounds = 4;
        let started = Instant::now();
        for _ in 0..rounds {
            for (user, (_, csr)) in users.iter().zip(csrs.iter()) {
                std::hint::black_box(ca_service::issuer::csr::check(user, csr)?);
            }
        }
        let csr_us = started.elapsed().as_secs_f64() * 1e6 / (rounds * csrs.len()) as f64;
        let verifier = ca_service::hsm::Verifier::new(&key)?;
        let verifications = 2000;
        let started = Instant::now();
        for _ in 0..verifications {
            anyhow::ensure!(
                verifier.verifies(std::hint::black_box(&message), &signature_der),
                "the token's signature does not verify"
            );
        }
        let verify_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(verifications);
        Ok(Checks { csr_us, verify_us })
    })
    .await?
}

/// The physical limit: the raw signing rate and its CPU cost; after `bracket`, the mean of a
/// measurement before and one after the scenario it is compared with.
#[derive(Clone, Copy)]
struct Raw {
    /// Signatures per second.
    rate: f64,
    /// CPU microseconds per signature (SoftHSM and the pool).
    cpu_us: f64,
    /// The rates measured before and after, when bracketed.
    before_after: Option<(f64, f64)>,
}

impl Raw {
    /// The mean of this measurement and `after`, keeping both rates.
    fn bracket(self, after: Raw) -> Raw {
        Raw {
            rate: (self.rate + after.rate) / 2.0,
            cpu_us: (self.cpu_us + after.cpu_us) / 2.0,
            before_after: Some((self.rate, after.rate)),
        }
    }
}

/// Fills a new embedded store with `identities` pinned users, each with one certificate row.
/// The certificate bytes are a placeholder: only the tables' and indexes' sizes matter here.
fn prefill(directory: &Path, tokens: &hsm_sim::TokenDirectory, store: &Path, identities: usize) -> anyhow::Result<()> {
    let config = serve_config(directory, tokens, KeyAlgorithm::EcdsaP256, store)?;
    let output = Command::new(CA_SERVICE)
        .args(["migrate", "--config"])
        .arg(&config)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut database = rusqlite::Connection::open(store)?;
    database.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;")?;
    let transaction = database.transaction()?;
    {
        let mut identity = transaction
            .prepare("INSERT INTO identities (user_id, key_sha256, spki_der, pinned_at) VALUES (?1, ?2, ?3, 0)")?;
        let mut certificate = transaction.prepare(
            "INSERT INTO certificates (serial, user_id, key_sha256, certificate_der, not_before, not_after, issued_at)
             VALUES (?1, ?2, ?3, x'00', 0, 0, 0)",
        )?;
        for index in 0..identities {
            let user = format!("prefilled-user-{index}");
            let key: [u8; 32] = rand::random();
            let serial: [u8; 16] = rand::random();
            identity.execute(rusqlite::params![user, key.as_slice(), key.as_slice()])?;
            certificate.execute(rusqlite::params![serial.as_slice(), user, key.as_slice()])?;
        }
    }
    transaction.commit()?;
    database.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(())
}

struct Scenario {
    rate: f64,
    ok: usize,
    elapsed: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    errors: BTreeMap<String, usize>,
    peak_rss_kb: u64,
    startup: Duration,
    /// The service's CPU microseconds per certificate issued (HSM signing included: SoftHSM runs
    /// inside the service process).
    cpu_us: f64,
    /// The load generator's CPU microseconds per certificate (the gRPC clients, on the same cores).
    client_cpu_us: f64,
}

/// What the clients of a scenario call.
#[derive(Clone, Copy)]
enum Call {
    /// `IssueCertificate`, the scenarios' call.
    IssueCertificate,
    /// `GetCaInfo`: a round trip with a certificate-sized answer and no issuance work (the floor).
    GetCaInfo,
}

/// Serves `store` with a CA of `algorithm` and drives it for the configured time with `call`;
/// `paced` limits the offered load to that many requests per second (open loop), otherwise clients
/// send back to back. Rates and CPU are per successful call.
#[allow(
    clippy::too_many_arguments,
    reason = "a bench's scenario knobs, each named at the call site"
)]
async fn run_scenario(
    directory: &Path,
    tokens: &hsm_sim::TokenDirectory,
    algorithm: KeyAlgorithm,
    store: &Path,
    csrs: &Arc<Vec<(String, String)>>,
    settings: &Settings,
    paced: Option<f64>,
    call: Call,
) -> anyhow::Result<Scenario> {
    let config = serve_config(directory, tokens, algorithm, store)?;
    let server = Server::start(&config)?;
    let client = IdentityClient::connect(server.endpoint.clone()).await?;
    let duration = Duration::from_secs(settings.seconds);
    let clients = settings.clients;
    let cpu_before = support::cpu_seconds(server.child.id());
    let client_cpu_before = support::cpu_seconds(std::process::id());
    let interval = paced.map(|rate| Duration::from_secs_f64(clients as f64 / rate.max(1.0)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..clients {
        let mut client = client.clone();
        let csrs = Arc::clone(csrs);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            let mut index = worker;
            let mut next = Instant::now()
                + interval.map_or(Duration::ZERO, |interval| {
                    interval.mul_f64(worker as f64 / clients as f64)
                });
            while started.elapsed() < duration {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                }
                let (user, csr) = &csrs[index % csrs.len()];
                let sent = Instant::now();
                let result = match call {
                    Call::IssueCertificate => client
                        .issue_certificate(IssueCertificateRequest {
                            user_id: user.clone(),
                            csr_pem: csr.clone(),
                            wait_for_checkpoint: false,
                        })
                        .await
                        .map(drop),
                    Call::GetCaInfo => client.get_ca_info(GetCaInfoRequest {}).await.map(drop),
                };
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
    let mut errors = BTreeMap::new();
    for task in tasks {
        let (task_latencies, task_errors) = task.await?;
        latencies.extend(task_latencies);
        for code in task_errors {
            *errors.entry(code).or_insert(0) += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = support::cpu_seconds(server.child.id())
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let client_cpu = support::cpu_seconds(std::process::id())
        .zip(client_cpu_before)
        .map(|(after, before)| after - before);
    let peak_rss_kb = server.peak_rss_kb();
    let startup = server.startup;
    drop(server);
    latencies.sort_by(f64::total_cmp);
    let percentile = |fraction: f64| {
        latencies
            .get(((latencies.len() as f64 * fraction) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Scenario {
        rate: latencies.len() as f64 / elapsed,
        ok: latencies.len(),
        elapsed,
        p50: percentile(0.50),
        p95: percentile(0.95),
        p99: percentile(0.99),
        errors,
        peak_rss_kb,
        startup,
        cpu_us: cpu.map_or(f64::NAN, |cpu| cpu * 1e6 / latencies.len().max(1) as f64),
        client_cpu_us: client_cpu.map_or(f64::NAN, |cpu| cpu * 1e6 / latencies.len().max(1) as f64),
    })
}

struct Server {
    child: std::process::Child,
    endpoint: String,
    /// From spawn to the "listening on" line (HSM login, store open and migrations included).
    startup: Duration,
}

impl Server {
    fn start(config: &Path) -> anyhow::Result<Server> {
        use std::io::BufRead;
        let spawned = Instant::now();
        // BENCH_SERVICE_BINARY serves with another build (A/B comparisons of a change, same run).
        let binary = std::env::var_os("BENCH_SERVICE_BINARY").map_or_else(|| PathBuf::from(CA_SERVICE), PathBuf::from);
        let mut child = Command::new(binary)
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
        let startup = spawned.elapsed();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Server {
            child,
            endpoint: format!("http://{address}"),
            startup,
        })
    }

    /// The service's peak resident set size (VmHWM), in KiB.
    fn peak_rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix("VmHWM:"))
                    .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
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
