//! Wiring: builds the issuer and the audit log from config and serves the gRPC services until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use e2ee_ca_proto::v1::identity_server::IdentityServer;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use crate::api::{IdentityService, TransparencyService};
use crate::audit::{AuditEvent, AuditKind};
use crate::ceremony::read_pem_certificates;
use crate::config::ServeConfig;
use crate::hsm::{Hsm, KeyAlgorithm};
use crate::issuer::{CaIdentity, IdentityStore, Issuer, LogWait};
use crate::transparency::LogStore;
use crate::transparency::guard::{self, SignerGuard, StartupCheck};
use crate::transparency::sequencer;
use crate::transparency::signer::AuditKey;
use e2ee_ca_proto::v1::transparency_server::TransparencyServer;

/// How often the health probe signs and verifies a message and pings the store.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Default largest gRPC message, in bytes.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// Loads the CA key and certificate named by `config` and builds the issuer over `store`.
pub async fn build_issuer<S: IdentityStore>(config: &ServeConfig, hsm: Hsm, store: S) -> anyhow::Result<Issuer<S>> {
    let certificates = read_pem_certificates(&config.ca.certificate)?;
    let (certificate_der, parents_der) = certificates
        .split_first()
        .context("the CA certificate file holds no certificate")?;
    let key = {
        let hsm = hsm.clone();
        let label = config.ca.key_label.clone();
        let algorithm = config.ca.key_algorithm;
        tokio::task::spawn_blocking(move || hsm.load_key(&label, algorithm))
            .await
            .context("key lookup task failed")?
            .with_context(|| format!("cannot load CA key {:?}", config.ca.key_label))?
    };
    let ca = CaIdentity {
        key,
        certificate_der: certificate_der.clone(),
        parents_der: parents_der.to_vec(),
    };
    Issuer::new(hsm, ca, config.profile(), Arc::new(store)).map_err(anyhow::Error::msg)
}

/// The running audit log: its key and the sequencer task (aborted when this is dropped).
pub struct AuditLog {
    /// The checkpoint key.
    pub key: AuditKey,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Loads the audit key named by `[audit]`, refuses a database that is behind or inconsistent with
/// the signer guard or its own latest checkpoint, starts the sequencer over the issuer's store and
/// makes issuance wait for log indices.
pub async fn start_audit_log<S: IdentityStore + LogStore>(
    config: &ServeConfig,
    issuer: Issuer<S>,
) -> anyhow::Result<(Issuer<S>, AuditLog)> {
    let audit = &config.audit;
    let key = {
        let hsm = issuer.hsm().clone();
        let label = audit.key_label.clone();
        tokio::task::spawn_blocking(move || hsm.load_key(&label, KeyAlgorithm::EcdsaP256))
            .await
            .context("key lookup task failed")?
            .with_context(|| format!("cannot load audit key {:?} (ECDSA P-256)", audit.key_label))?
    };
    let key = AuditKey::new(key, &audit.origin)?;
    let mut guard = SignerGuard::open(&audit.guard_file, &audit.origin)?;
    let check = guard::check_at_startup(issuer.store().as_ref(), &mut guard, key.verifier())
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
    record_ca_certificate(&issuer, &key).await?;
    let (handle, task) = sequencer::spawn(
        Arc::clone(issuer.store()),
        issuer.hsm().clone(),
        key.clone(),
        guard,
        audit.sequencer(),
    );
    let issuer = issuer.with_log_wait(LogWait {
        sequencer: handle,
        bound: audit.sequence_wait(),
    });
    Ok((issuer, AuditLog { key, task }))
}

/// Logs the CA this service signs with, once per CA certificate: the ceremony's outcome as the
/// log first sees it (the ceremony itself runs offline, with no store). Refuses to start if the
/// entry cannot be written.
async fn record_ca_certificate<S: IdentityStore>(issuer: &Issuer<S>, audit_key: &AuditKey) -> anyhow::Result<()> {
    let ca = issuer.ca();
    let certificate_sha256: [u8; 32] = Sha256::digest(&ca.certificate_der).into();
    let event = AuditEvent {
        kind: AuditKind::Ceremony,
        actor: "ca-service".to_owned(),
        subject: ca.key.label().to_owned(),
        details: vec![
            ("certificate-sha256", hex::encode(certificate_sha256)),
            ("key-sha256", hex::encode(Sha256::digest(ca.key.spki_der()))),
            ("key-algorithm", ca.key.algorithm().name().to_owned()),
            ("checkpoint-key", audit_key.verifier().to_string()),
        ],
    };
    let recorded = issuer
        .store()
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

/// Serves Identity, Transparency, health and reflection on `listener` until `shutdown` completes.
pub async fn run<S: IdentityStore + LogStore>(
    listener: TcpListener,
    issuer: Arc<Issuer<S>>,
    audit_key: AuditKey,
    max_message_bytes: Option<usize>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let probe = tokio::spawn(probe_health(Arc::clone(&issuer), health_reporter));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(e2ee_ca_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    let max_message_bytes = max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    let transparency = TransparencyServer::new(TransparencyService::new(Arc::clone(issuer.store())));
    let identity =
        IdentityServer::new(IdentityService::new(issuer, audit_key)).max_decoding_message_size(max_message_bytes);
    // Without TCP_NODELAY, small responses wait for the peer's delayed ACK (about 40 ms per call).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(identity)
        .add_service(transparency)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("gRPC server failed");
    probe.abort();
    result
}

/// Feeds `grpc.health.v1`: SERVING only while an HSM sign-and-verify and a store ping both succeed.
async fn probe_health<S: IdentityStore>(issuer: Arc<Issuer<S>>, reporter: tonic_health::server::HealthReporter) {
    let mut last = None;
    loop {
        let hsm = issuer.hsm().probe(&issuer.ca().key).await;
        let store = issuer.store().ping().await;
        let healthy = hsm.is_ok() && store.is_ok();
        if last != Some(healthy) {
            if let Err(error) = &hsm {
                tracing::warn!(%error, "health probe: HSM failing");
            }
            if let Err(error) = &store {
                tracing::warn!(%error, "health probe: store failing");
            }
            tracing::info!(healthy, "health status changed");
            let status = if healthy {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter.set_service_status("e2ee.ca.v1.Identity", status).await;
            reporter.set_service_status("e2ee.ca.v1.Transparency", status).await;
            last = Some(healthy);
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}
