//! The CRL signer at scale: a CRL of 100,000 revoked entries built, signed on SoftHSM and verified, next to a 1,000-entry CRL as the in-run baseline.
//!
//! `cargo bench -p ca-service --bench crl -- [RUNS]` (default 3). For a P-256 and an RSA-3072 CA
//! key, each made by the real ceremony on a fresh SoftHSM token, `revocation::crl::sign_crl` is
//! timed end to end (rcgen building the DER, one HSM signature, the lease's verification and the
//! check that the DER carries what was verified): the median of RUNS runs per size, the DER
//! size in bytes, the ratios of time and size to the 1,000-entry CRL, and how long `describe_crl`
//! takes to read the large one back (what GetCrl's response fields cost).

#![allow(
    clippy::expect_used,
    reason = "bench code: a failed expectation aborts the benchmark, as it should"
)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use ca_service::config::CeremonyConfig;
use ca_service::hsm::{Hsm, HsmConfig, KeyAlgorithm, Pin, Signer};
use ca_service::identity::SerialNumber;
use ca_service::issuer::CaCertificate;
use ca_service::revocation::RevocationReason;
use ca_service::revocation::crl::{self, CrlParams, RevokedEntry};
use time::OffsetDateTime;

const TOKEN_LABEL: &str = "bench";
const USER_PIN: &str = "bench-user-pin";
const BASELINE_ENTRIES: usize = 1_000;
const LARGE_ENTRIES: usize = 100_000;

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|argument| argument.parse().ok())
        .unwrap_or(3)
        .max(1);
    let workspace = tempfile::tempdir()?;
    let tokens = hsm_sim::TokenDirectory::create(&workspace.path().join("softhsm"))?;
    tokens.init_token(TOKEN_LABEL, "bench-so-pin", USER_PIN)?;
    std::fs::write(workspace.path().join("pin"), USER_PIN)?;
    // Single-threaded until here: SoftHSM reads SOFTHSM2_CONF in C_Initialize.
    hsm_sim::set_softhsm2_conf(&tokens.conf_path())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let hsm = Hsm::connect(HsmConfig {
            module: hsm_sim::find_module()?,
            token_label: TOKEN_LABEL.to_owned(),
            pin: Pin::new(USER_PIN),
            pool_size: 2,
            session_wait: Duration::from_secs(5),
        })?;
        println!(
            "machine: {} cores, {}",
            std::thread::available_parallelism().map_or(0, usize::from),
            support::cpu_model()
        );
        println!("settings: median of {runs} runs per CRL; 16-byte serials, every reason in turn");
        for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa3072] {
            let (signer, ca) = ceremony(&hsm, workspace.path(), algorithm).await?;
            let (baseline_time, baseline_bytes, _) = measure(&signer, &ca, BASELINE_ENTRIES, runs).await?;
            let (large_time, large_bytes, large_der) = measure(&signer, &ca, LARGE_ENTRIES, runs).await?;
            let started = Instant::now();
            let summary = crl::describe_crl(&large_der)?;
            let describe_time = started.elapsed();
            anyhow::ensure!(
                summary.revoked.len() == LARGE_ENTRIES,
                "the large CRL lists every entry"
            );
            println!(
                "CRL {algorithm}: {BASELINE_ENTRIES} entries {:.1} ms, {baseline_bytes} bytes; \
                 {LARGE_ENTRIES} entries {:.1} ms, {large_bytes} bytes; ratio {:.1}x time, {:.1}x size \
                 ({:.2} µs and {:.1} bytes per entry); describe_crl {:.1} ms",
                millis(baseline_time),
                millis(large_time),
                large_time.as_secs_f64() / baseline_time.as_secs_f64(),
                large_bytes as f64 / baseline_bytes as f64,
                large_time.as_secs_f64() * 1e6 / LARGE_ENTRIES as f64,
                large_bytes as f64 / LARGE_ENTRIES as f64,
                millis(describe_time),
            );
        }
        Ok(())
    })
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// The median time of `runs` signatures of a CRL with `count` entries, its DER size and the last DER.
async fn measure(
    signer: &Signer,
    ca: &CaCertificate,
    count: usize,
    runs: usize,
) -> anyhow::Result<(Duration, usize, Vec<u8>)> {
    let now = OffsetDateTime::now_utc();
    let revoked: Vec<RevokedEntry> = (0..count)
        .map(|index| RevokedEntry {
            serial: SerialNumber::generate(),
            revoked_at: now - time::Duration::seconds(i64::try_from(index).unwrap_or(0)),
            reason: RevocationReason::ALL[index % RevocationReason::ALL.len()],
        })
        .collect();
    let params = CrlParams {
        number: 1,
        this_update: now,
        next_update: now + time::Duration::days(1),
    };
    let mut times = Vec::with_capacity(runs);
    let mut der = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        der = crl::sign_crl(signer, ca, &params, &revoked).await?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok((times[times.len() / 2], der.len(), der))
}

/// A root CA of `algorithm` by the real ceremony: its signer and certificate.
async fn ceremony(hsm: &Hsm, root: &Path, algorithm: KeyAlgorithm) -> anyhow::Result<(Signer, CaCertificate)> {
    let name = algorithm.name();
    let directory = root.join(name);
    std::fs::create_dir_all(&directory)?;
    let config = directory.join("ceremony.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"root\"\nkey_label = \"{name}-ca\"\nkey_algorithm = \"{name}\"\noutput = \"ca.pem\"\n\
             [subject]\ncommon_name = \"CRL Bench CA\"\n\
             [hsm]\nmodule = {module:?}\ntoken_label = {TOKEN_LABEL:?}\npin_file = \"../pin\"\n",
            module = hsm_sim::find_module()?.display().to_string(),
        ),
    )?;
    let config = CeremonyConfig::load(&config)?;
    ca_service::ceremony::run(hsm, &config).await?;
    let signer = Signer::load(hsm, &format!("{name}-ca"), algorithm).await?;
    let certificates = ca_service::ceremony::read_pem_certificates(&directory.join("ca.pem"))?;
    let certificate_der = certificates
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the ceremony wrote no certificate"))?;
    Ok((
        signer,
        CaCertificate {
            certificate_der,
            parents_der: Vec::new(),
        },
    ))
}
