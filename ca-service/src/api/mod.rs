//! The gRPC boundary: the only module that knows protobuf and tonic types.
//!
//! `Services` holds one value per gRPC service, each typed by the store traits it needs and no
//! more; `serve` runs them with health and reflection, over mTLS (`tls_config`) or plaintext,
//! behind one `principal::AccessLayer`, which authenticates every request, authorizes it from one
//! table and fills in its `Principal`. Errors become statuses in `status` only. Each service is
//! its own file (`identity`, `admin`, `transparency`); room is left for `KeyBackup`.

pub mod admin;
pub mod identity;
pub mod key_backup;
pub mod principal;
mod recovery;
mod status;
pub mod transparency;

use std::future::Future;

use anyhow::Context;
use e2ee_ca_proto::v1::admin_server::AdminServer;
use e2ee_ca_proto::v1::identity_server::IdentityServer;
use e2ee_ca_proto::v1::key_backup_server::KeyBackupServer;
use e2ee_ca_proto::v1::transparency_server::TransparencyServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;

use self::admin::{AdminService, IdentityDirectory};
use self::identity::{CertificateLookup, IdentityService};
use self::key_backup::KeyBackupService;
use self::principal::{AccessLayer, Authenticator};
use self::transparency::TransparencyService;
use crate::approvals::ApprovalStore;
use crate::config::tls::TlsSection;
use crate::issuer::IssuanceStore;
use crate::key_backup::KeyBackupStore;
use crate::recovery::RecoveryStore;
use crate::revocation::RevocationStore;
use crate::transparency::LogReader;

/// Default largest gRPC message, in bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// The gRPC services, each over the store traits it needs.
pub struct Services<S> {
    /// The sync server's calls.
    pub identity: IdentityService<S>,
    /// The admin console's calls.
    pub admin: AdminService<S>,
    /// The sync server's key-backup calls.
    pub key_backup: KeyBackupService<S>,
    /// The log's readers' calls.
    pub transparency: TransparencyService<S>,
}

/// How `serve` runs.
#[derive(Debug)]
pub struct ServeOptions {
    /// Largest message accepted (CSRs are bounded again by the issuer).
    pub max_message_bytes: usize,
    /// The TLS listener, or `None` for plaintext.
    pub tls: Option<ServerTlsConfig>,
    /// Who the callers are (must be `Authenticator::mutual_tls` when `tls` is set).
    pub authenticator: Authenticator,
}

/// A TLS handshake that has not finished by then is dropped (a stalled client holds no task).
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The server side of `[tls]`: its certificate and key, and client authentication that is optional
/// in the handshake but verified against the client CAs when a certificate is presented.
///
/// tonic's own `ServerTlsConfig` is enough: `client_ca_root` takes a PEM bundle (every client CA)
/// and `client_auth_optional(true)` builds rustls's `WebPkiClientVerifier` with
/// `allow_unauthenticated`, which is exactly "no certificate is allowed, a presented one must
/// chain"; so no hand-built rustls config or accept loop is needed. Files are read here, at startup.
pub fn tls_config(tls: &TlsSection) -> anyhow::Result<ServerTlsConfig> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
    };
    let certificate = read(&tls.certificate, "tls.certificate")?;
    let key = zeroize::Zeroizing::new(read(&tls.key, "tls.key")?);
    let mut client_cas = Vec::new();
    for client_ca in &tls.client_ca {
        client_cas.extend(read(&client_ca.file, "tls.client_ca file")?);
        client_cas.push(b'\n');
    }
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(certificate, key.as_slice()))
        .client_ca_root(Certificate::from_pem(client_cas))
        .client_auth_optional(true)
        .timeout(HANDSHAKE_TIMEOUT))
}

/// How long requests in flight may take to finish once shutdown begins; then the server is dropped
/// with them (a stalled stream, such as an export whose reader never reads, never finishes).
const REQUEST_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// HTTP/2 keepalive: a ping every 30 s on an idle connection, and a connection whose peer does not
/// answer within 20 s is closed (with what it had buffered).
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Serves `services`, `grpc.health.v1` (fed by `health`: `None` until the first probe, then
/// whether the service is healthy) and reflection on `listener` until `shutdown` completes; then
/// waits for the requests in flight, at most `REQUEST_DRAIN`.
pub async fn serve<S>(
    listener: TcpListener,
    services: Services<S>,
    options: ServeOptions,
    health: watch::Receiver<Option<bool>>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()>
where
    S: IssuanceStore
        + CertificateLookup
        + LogReader
        + RevocationStore
        + IdentityDirectory
        + ApprovalStore
        + RecoveryStore
        + KeyBackupStore,
{
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(e2ee_ca_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    let identity = IdentityServer::new(services.identity).max_decoding_message_size(options.max_message_bytes);
    let admin = AdminServer::new(services.admin);
    let key_backup = KeyBackupServer::new(services.key_backup);
    let transparency = TransparencyServer::new(services.transparency);
    // Without TCP_NODELAY, small responses wait for the peer's delayed ACK (about 40 ms per call).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let stopping = tokio::sync::Notify::new();
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(tls) = options.tls {
        anyhow::ensure!(
            options.authenticator.is_mutual_tls(),
            "a TLS listener needs the mTLS authenticator"
        );
        builder = builder.tls_config(tls).context("invalid [tls] certificate or key")?;
    }
    let server = builder
        .layer(AccessLayer::new(options.authenticator))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(identity)
        .add_service(admin)
        .add_service(key_backup)
        .add_service(transparency)
        .serve_with_incoming_shutdown(incoming, async {
            shutdown.await;
            stopping.notify_one();
        });
    tokio::select! {
        result = server => result.context("gRPC server failed"),
        never = report_health(health, reporter) => match never {},
        () = async {
            stopping.notified().await;
            tokio::time::sleep(REQUEST_DRAIN).await;
        } => {
            tracing::warn!(bound = ?REQUEST_DRAIN, "requests still open after the shutdown drain: dropped");
            Ok(())
        }
    }
}

/// The names `grpc.health.v1` answers for: the whole server, then each service.
const HEALTH_NAMES: [&str; 5] = [
    "",
    "e2ee.ca.v1.Identity",
    "e2ee.ca.v1.Admin",
    "e2ee.ca.v1.KeyBackup",
    "e2ee.ca.v1.Transparency",
];

/// Mirrors `health` into `grpc.health.v1` for the whole server and each service.
async fn report_health(
    mut health: watch::Receiver<Option<bool>>,
    reporter: tonic_health::server::HealthReporter,
) -> std::convert::Infallible {
    loop {
        let healthy = *health.borrow_and_update();
        if let Some(healthy) = healthy {
            let status = if healthy {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for service in HEALTH_NAMES {
                reporter.set_service_status(service, status).await;
            }
        }
        if health.changed().await.is_err() {
            // The probe is gone (the service is stopping): nothing vouches for health any more.
            for service in HEALTH_NAMES {
                reporter.set_service_status(service, ServingStatus::NotServing).await;
            }
            return std::future::pending().await;
        }
    }
}
