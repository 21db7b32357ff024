//! The one wiring point: from a serve config and an HSM, build every part the service runs with
//! (store, CA and audit signers, signer guard, sequencer, issuer, health probe, the gRPC services)
//! and serve until shutdown; and `CaRecord`, what startup needs from a store.
//!
//! Startup, in order (each step refuses to start rather than serve without it):
//! 1. open and migrate the store that `store.url` names;
//! 2. load the CA key and certificate (which must carry that key), and the audit log's checkpoint
//!    key, from the HSM;
//! 3. check the database's log against the signer guard and its own latest checkpoint;
//! 4. record the CA certificate in the log, once per certificate (the ceremony's outcome);
//! 5. start the sequencer (it signs the stored head before sequencing on it), the health probe,
//!    the CRL publisher (a CRL at once unless a fresh one is stored, then every `crl.refresh_seconds`)
//!    and the refusal summaries' flusher;
//! 6. build the issuer and the gRPC services, each with only the store traits it needs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::admin::AdminService;
use crate::api::identity::{CaInfo, IdentityService};
use crate::api::key_backup::KeyBackupService;
use crate::api::principal::Authenticator;
use crate::api::transparency::TransparencyService;
use crate::api::{self, ServeOptions, Services};
use crate::audit::{AuditEvent, AuditKind, LogEntryRef};
use crate::ceremony::read_pem_certificates;
use crate::clock::SystemClock;
use crate::config::ServeConfig;
use crate::hsm::{Hsm, KeyAlgorithm, Signer};
use crate::issuer::refusals::{self, RefusalSummaries};
use crate::issuer::{CaCertificate, Issuer, IssuerParts, LogWait, SigningQueue};
use crate::revocation::CrlPublisher;
use crate::storage::StoreError;
use crate::store::{Store, StoreTask, with_store};
use crate::tasks::Supervisor;
use crate::transparency::guard::{self, SignerGuard, StartupCheck};
use crate::transparency::sequencer::Sequencer;
use crate::transparency::signer::AuditKey;

/// How long the background tasks may take to drain at shutdown (the sequencer's last signature).
const DRAIN_BOUND: Duration = Duration::from_secs(10);

/// What startup needs from a store. Implementations: `store::sqlite` and `store::postgres`, held
/// to this contract by `store::conformance`.
pub trait CaRecord: Send + Sync + 'static {
    /// Records the CA certificate with SHA-256 `certificate_sha256` and appends `event` (its
    /// ceremony, as the log first sees it) in one transaction, unless that certificate was
    /// recorded before: then writes nothing and returns `None`. Concurrent callers record it once.
    fn record_ca_certificate(
        &self,
        certificate_sha256: [u8; 32],
        event: AuditEvent,
    ) -> impl Future<Output = Result<Option<LogEntryRef>, StoreError>> + Send;
}

/// What the operator is shown once the service is built.
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    /// SHA-256 of the CA certificate, hex.
    pub ca_fingerprint: String,
    /// The audit log's origin.
    pub log_origin: String,
    /// The checkpoint verifier key (vkey text) clients pin.
    pub checkpoint_key: String,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Serves the built services on a listener until a shutdown future completes.
type Serve = Box<dyn FnOnce(TcpListener, BoxFuture<()>) -> BoxFuture<anyhow::Result<()>> + Send>;

/// The built service: running background tasks, and the gRPC services ready to serve.
pub struct Service {
    info: ServiceInfo,
    tasks: Supervisor,
    serve: Serve,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Service").field("info", &self.info).finish()
    }
}

impl Service {
    /// Builds the service described by `config` on `hsm` (steps in the module docs).
    pub async fn build(config: &ServeConfig, hsm: Hsm) -> anyhow::Result<Service> {
        let signing = Arc::new(SigningQueue::new(hsm.pool_size()));
        let location = config.store_location()?;
        let following = Arc::clone(&signing);
        with_store(&location, Some(&following), Build { config, hsm, signing }).await
    }

    /// The CA and log the service signs with.
    pub fn info(&self) -> &ServiceInfo {
        &self.info
    }

    /// Serves on `listener` until `shutdown` completes (or a background task fails), then lets the
    /// requests in flight finish and drains the background tasks.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Service { mut tasks, serve, .. } = self;
        let outcome = tokio::select! {
            served = serve(listener, Box::pin(shutdown)) => served,
            stopped = tasks.stopped() => {
                tracing::error!(%stopped, "a background task stopped: shutting down");
                Err(stopped.into())
            }
        };
        tasks.shutdown(DRAIN_BOUND).await;
        outcome
    }
}

/// `Service::build` once the store is open.
struct Build<'a> {
    config: &'a ServeConfig,
    hsm: Hsm,
    signing: Arc<SigningQueue>,
}

impl StoreTask for Build<'_> {
    type Output = Service;

    async fn run<S: Store>(self, store: S) -> anyhow::Result<Service> {
        let Build { config, hsm, signing } = self;
        let store = Arc::new(store);
        // 2. The keys and the CA certificate.
        let certificates = read_pem_certificates(&config.ca.certificate)?;
        let (certificate_der, parents_der) = certificates
            .split_first()
            .context("the CA certificate file holds no certificate")?;
        let ca = CaCertificate {
            certificate_der: certificate_der.clone(),
            parents_der: parents_der.to_vec(),
        };
        let ca_signer = Signer::load(&hsm, &config.ca.key_label, config.ca.key_algorithm)
            .await
            .with_context(|| format!("cannot load CA key {:?}", config.ca.key_label))?;
        ca.check_key(&ca_signer)?;
        let audit = &config.audit;
        let audit_signer = Signer::load(&hsm, &audit.key_label, KeyAlgorithm::EcdsaP256)
            .await
            .with_context(|| format!("cannot load audit key {:?} (ECDSA P-256)", audit.key_label))?;
        let audit_key = AuditKey::new(audit_signer, &audit.origin)?;
        // 3. The log against the guard.
        let guard = checked_guard(config, store.as_ref(), &audit_key).await?;
        // 4. The CA certificate in the log.
        record_ca_certificate(store.as_ref(), &ca, &ca_signer, &audit_key).await?;
        // 5. The background tasks.
        let mut tasks = Supervisor::new();
        let (sequencer, sequencer_handle) =
            Sequencer::new(Arc::clone(&store), audit_key.clone(), guard, audit.sequencer());
        tasks.spawn("sequencer", |stop| sequencer.run(stop));
        let (health_sender, health) = watch::channel(None);
        {
            let (signer, store) = (ca_signer.clone(), Arc::clone(&store));
            tasks.spawn("health probe", |stop| {
                crate::health::probe(signer, store, health_sender, stop)
            });
        }
        // 6. The issuer and the services.
        let ca_info = CaInfo {
            chain_pem: ca.chain_pem(),
            public_key_pem: ca_signer.key().public_key_pem(),
            certificate_fingerprint: hex::encode(Sha256::digest(&ca.certificate_der)),
            key_algorithm: ca_signer.key().algorithm().name().to_owned(),
            log_origin: audit_key.origin().to_owned(),
            checkpoint_verifier_keys: vec![audit_key.verifier().to_string()],
        };
        let info = ServiceInfo {
            ca_fingerprint: ca_info.certificate_fingerprint.clone(),
            log_origin: ca_info.log_origin.clone(),
            checkpoint_key: audit_key.verifier().to_string(),
        };
        let ca = Arc::new(ca);
        let crls = Arc::new(CrlPublisher::new(
            ca_signer.clone(),
            Arc::clone(&ca),
            Arc::clone(&store),
            config.crl.crl_config(),
        ));
        {
            let crls = Arc::clone(&crls);
            tasks.spawn("CRL publisher", |stop| crls.run(stop));
        }
        let log_wait = LogWait {
            sequencer: sequencer_handle,
            bound: audit.sequence_wait(),
        };
        let refusals = Arc::new(RefusalSummaries::new(config.refusal_limits()));
        {
            let (refusals, store) = (Arc::clone(&refusals), Arc::clone(&store));
            tasks.spawn("refusal summaries", |stop| refusals::run_flusher(refusals, store, stop));
        }
        let recovery_ca = (ca_signer.clone(), Arc::clone(&ca));
        let issuer = Issuer::new(
            IssuerParts {
                signer: ca_signer,
                ca: CaCertificate::clone(&ca),
                profile: config.profile(),
                log_wait: log_wait.clone(),
                clock: Arc::new(SystemClock),
                signing,
                crl_refresh: Some(crls.refresh_handle()),
                refusals: Arc::clone(&refusals),
            },
            Arc::clone(&store),
        )?;
        let services = Services {
            identity: IdentityService::new(issuer, Arc::clone(&store), ca_info),
            admin: AdminService::new(
                Arc::clone(&store),
                crls,
                log_wait.clone(),
                config.admin.request_lifetime(),
                recovery_ca,
            ),
            key_backup: KeyBackupService::new(Arc::clone(&store), log_wait, config.key_backup.nonce_lifetime()),
            transparency: TransparencyService::new(store, config.transparency.export_limits()),
        };
        let (tls, authenticator) = match &config.tls {
            Some(tls) => (
                Some(api::tls_config(tls)?),
                Authenticator::mutual_tls(tls, &config.principals)?,
            ),
            None => (None, Authenticator::plaintext()),
        };
        let options = ServeOptions {
            max_message_bytes: config.max_message_bytes.unwrap_or(api::DEFAULT_MAX_MESSAGE_BYTES),
            tls,
            authenticator,
        };
        let serve: Serve = Box::new(move |listener, shutdown| {
            Box::pin(async move {
                // Whatever chose the address (file, flag, a caller's listener), plaintext is served
                // on loopback only.
                let address = listener.local_addr().context("cannot read the listening address")?;
                if options.tls.is_none() && !crate::config::is_loopback(address.ip()) {
                    anyhow::bail!(
                        "refusing to serve plaintext gRPC on {address}: plaintext is allowed on a loopback \
                         address only; configure [tls]"
                    );
                }
                api::serve(listener, services, options, health, shutdown).await
            })
        });
        Ok(Service { info, tasks, serve })
    }
}

/// Opens the signer guard and refuses a database that is behind or inconsistent with it or with
/// its own latest checkpoint (step 3).
async fn checked_guard<S: Store>(config: &ServeConfig, store: &S, audit_key: &AuditKey) -> anyhow::Result<SignerGuard> {
    let audit = &config.audit;
    let mut guard = SignerGuard::open(&audit.guard_file, &audit.origin)?;
    let check = guard::check_at_startup(store, &mut guard, audit_key.verifier())
        .await
        .with_context(|| {
            format!(
                "refusing to serve: the audit log in the database contradicts what was signed before \
                 (signer guard {}); investigate before anything else, do not delete the guard file",
                audit.guard_file.display()
            )
        })?;
    match check {
        StartupCheck::Extends {
            guarded_size,
            head_size,
        } => tracing::info!(
            guarded_size,
            head_size,
            "signer guard: the log extends the guarded tree"
        ),
        StartupCheck::Adopted { size: None } => tracing::info!(
            guard_file = %audit.guard_file.display(),
            "signer guard: a new log; the guard file is written before the first checkpoint is signed"
        ),
        StartupCheck::Adopted { size: Some(size) } => tracing::warn!(
            guard_file = %audit.guard_file.display(),
            adopted_size = size,
            "signer guard: no state file; it now guards the database's latest checkpoint (a new replica, or the file was lost)"
        ),
    }
    Ok(guard)
}

/// Logs the CA this service signs with, once per CA certificate: the ceremony's outcome as the
/// log first sees it (the ceremony itself runs offline, with no store). Refuses to start if the
/// entry cannot be written (step 4).
async fn record_ca_certificate<S: CaRecord>(
    store: &S,
    ca: &CaCertificate,
    ca_signer: &Signer,
    audit_key: &AuditKey,
) -> anyhow::Result<()> {
    let certificate_sha256: [u8; 32] = Sha256::digest(&ca.certificate_der).into();
    let key = ca_signer.key();
    let event = AuditEvent {
        kind: AuditKind::Ceremony,
        actor: "ca-service".to_owned(),
        subject: key.label().to_owned(),
        details: vec![
            ("certificate-sha256", hex::encode(certificate_sha256)),
            ("key-sha256", hex::encode(Sha256::digest(key.spki_der()))),
            ("key-algorithm", key.algorithm().name().to_owned()),
            ("checkpoint-key", audit_key.verifier().to_string()),
        ],
    };
    let recorded = store
        .record_ca_certificate(certificate_sha256, event)
        .await
        .context("cannot record the CA certificate in the audit log")?;
    if let Some(entry) = recorded {
        tracing::info!(
            entry_id = entry.entry_id,
            "audit log: first service with this CA certificate recorded"
        );
    }
    Ok(())
}
