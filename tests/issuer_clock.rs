//! The issuer as a library on a real SoftHSM token and the embedded store, under a clock the test holds still and moves: the rate limit's 24-hour window and the validity period follow the clock passed in.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once, when the process first initialises it, and the variable can
//! only be set while the process has one thread: so this test binary has its own `main`
//! (`harness = false`, with libtest-mimic for the usual test output), which provisions a token and
//! sets the variable before any thread starts.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

#[path = "common/softhsm.rs"]
mod softhsm;

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ca_service::clock::Clock;
use ca_service::config::CeremonyConfig;
use ca_service::hsm::{Hsm, KeyAlgorithm, Signer};
use ca_service::issuer::refusals::{RefusalLimits, RefusalSummaries};
use ca_service::issuer::{
    CaCertificate, IssueError, IssueRequest, Issued, Issuer, IssuerParts, LogWait, Profile, SigningQueue,
};
use ca_service::principal::Principal;
use ca_service::store::sqlite::SqliteStore;
use ca_service::transparency::guard::{self, SignerGuard};
use ca_service::transparency::sequencer::{Sequencer, SequencerConfig};
use ca_service::transparency::signer::AuditKey;
use libtest_mimic::{Arguments, Failed, Trial};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

const TOKEN_LABEL: &str = "issuer-clock";
const USER_PIN: &str = "issuer-clock-pin";

fn main() -> ExitCode {
    let arguments = Arguments::from_args();
    let workspace = tempfile::tempdir().expect("tempdir");
    let hsm = softhsm::connect(workspace.path(), TOKEN_LABEL, USER_PIN);
    let root = workspace.path().to_path_buf();
    let trials = vec![Trial::test(
        "the_rate_limit_window_and_the_validity_follow_the_clock_passed_in",
        move || the_rate_limit_window_and_the_validity_follow_the_clock_passed_in(&hsm, &root),
    )];
    let conclusion = libtest_mimic::run(&arguments, trials);
    drop(workspace);
    conclusion.exit_code()
}

/// A clock that stands still until the test moves it.
#[derive(Debug)]
struct HeldClock(Mutex<OffsetDateTime>);

impl HeldClock {
    fn advance(&self, by: time::Duration) {
        *self.0.lock().expect("clock") += by;
    }
}

impl Clock for HeldClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().expect("clock")
    }
}

/// A CA made by the real ceremony on the shared token (CA key and audit key under fresh labels).
async fn ceremony(hsm: &Hsm, root: &Path, name: &str) -> (Signer, CaCertificate, AuditKey) {
    let directory = root.join(name);
    std::fs::create_dir_all(&directory).expect("ceremony directory");
    std::fs::write(directory.join("pin"), USER_PIN).expect("pin file");
    let config = directory.join("ceremony.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"root\"\nkey_label = \"{name}-ca\"\nkey_algorithm = \"ecdsa-p256\"\noutput = \"ca.pem\"\n\
             audit_key_label = \"{name}-audit\"\n[subject]\ncommon_name = \"Clock Test CA\"\n\
             [hsm]\nmodule = {module:?}\ntoken_label = {TOKEN_LABEL:?}\npin_file = \"pin\"\n",
            module = hsm_sim::find_module().expect("module").display().to_string(),
        ),
    )
    .expect("ceremony config");
    let config = CeremonyConfig::load(&config).expect("ceremony config loads");
    ca_service::ceremony::run(hsm, &config).await.expect("ceremony");
    let signer = Signer::load(hsm, &format!("{name}-ca"), KeyAlgorithm::EcdsaP256)
        .await
        .expect("CA key");
    let certificates = ca_service::ceremony::read_pem_certificates(&directory.join("ca.pem")).expect("CA certificate");
    let ca = CaCertificate {
        certificate_der: certificates[0].clone(),
        parents_der: Vec::new(),
    };
    let audit_signer = Signer::load(hsm, &format!("{name}-audit"), KeyAlgorithm::EcdsaP256)
        .await
        .expect("audit key");
    let audit_key = AuditKey::new(audit_signer, "clock.test/audit-log").expect("audit key");
    (signer, ca, audit_key)
}

/// A CSR for `user` with a fresh P-256 key.
fn csr(user: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, user);
    params.serialize_request(&key).expect("csr").pem().expect("pem")
}

/// The validity of an issued certificate.
fn validity(issued: &Issued) -> (OffsetDateTime, OffsetDateTime) {
    let (_, certificate) = x509_parser::parse_x509_certificate(&issued.certificate_der).expect("parses");
    let validity = certificate.validity();
    (validity.not_before.to_datetime(), validity.not_after.to_datetime())
}

fn the_rate_limit_window_and_the_validity_follow_the_clock_passed_in(hsm: &Hsm, root: &Path) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (signer, ca, audit_key) = ceremony(hsm, root, "window").await;
        let store = Arc::new(SqliteStore::open(&root.join("window.sqlite3")).expect("store"));
        let mut guard = SignerGuard::open(&root.join("window.guard"), audit_key.origin()).expect("guard");
        guard::check_at_startup(store.as_ref(), &mut guard, audit_key.verifier())
            .await
            .expect("a new log");
        let config = SequencerConfig {
            max_batch: 1024,
            poll_interval: Duration::from_millis(200),
            heartbeat: Duration::from_secs(60),
            checkpoint_interval: Duration::from_millis(100),
            lead_retry: Duration::from_secs(2),
            stall_bound: Duration::from_secs(5),
        };
        let (sequencer, handle) = Sequencer::new(Arc::clone(&store), audit_key, guard, config);
        let stop = CancellationToken::new();
        let sequencer = tokio::spawn(sequencer.run(stop.clone()));

        // 2031-03-03 08:00 UTC: a time the system clock is not at, so nothing can pass by reading it.
        let start = OffsetDateTime::from_unix_timestamp(1_930_291_200).expect("a time");
        let clock = Arc::new(HeldClock(Mutex::new(start)));
        let issuer = Issuer::new(
            IssuerParts {
                signer,
                ca,
                profile: Profile {
                    validity: Duration::from_secs(86_400),
                    backdate: Duration::from_secs(300),
                    max_certificates_per_day: 3,
                },
                log_wait: LogWait {
                    sequencer: handle,
                    bound: Duration::from_secs(5),
                },
                clock: Arc::clone(&clock) as Arc<dyn Clock>,
                signing: Arc::new(SigningQueue::new(hsm.pool_size())),
                crl_refresh: None,
                refusals: Arc::new(RefusalSummaries::new(RefusalLimits::default())),
            },
            Arc::clone(&store),
        )
        .expect("issuer");
        let alice = csr("alice");
        let issue = || {
            issuer.issue(IssueRequest {
                actor: Arc::new(Principal::unauthenticated()),
                user_id: "alice".to_owned(),
                csr_pem: alice.clone(),
            })
        };

        let first = issue().await.expect("the first certificate pins the key");
        assert!(!first.renewal);
        assert_eq!(
            validity(&first),
            (start - time::Duration::minutes(5), start + time::Duration::days(1)),
            "validity from the clock passed in, backdated by the profile"
        );
        for _ in 0..2 {
            assert!(issue().await.expect("renewal within the limit").renewal);
        }
        assert!(
            matches!(issue().await, Err(IssueError::RateLimited(3))),
            "the fourth in 24 hours"
        );

        clock.advance(time::Duration::hours(23) + time::Duration::minutes(59));
        assert!(
            matches!(issue().await, Err(IssueError::RateLimited(3))),
            "a minute before the window has passed"
        );

        clock.advance(time::Duration::minutes(1) + time::Duration::seconds(1));
        let later = issue().await.expect("the window has passed on the clock passed in");
        let now = start + time::Duration::days(1) + time::Duration::seconds(1);
        assert_eq!(
            validity(&later),
            (now - time::Duration::minutes(5), now + time::Duration::days(1))
        );
        assert_eq!(
            later.log_index, 5,
            "after three issuances and two refusals, in that order"
        );

        stop.cancel();
        sequencer.await.expect("the sequencer drains");
    });
    Ok(())
}
