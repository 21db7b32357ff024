//! How the client reaches the CA: a small trait, and its gRPC implementation.

use std::future::Future;

use e2ee_ca_proto::v1::identity_client::IdentityClient;
use e2ee_ca_proto::v1::{GetCaInfoRequest, GetCertificatesRequest, IssueCertificateRequest};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use zeroize::Zeroizing;

/// What the CA answered, or why it could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The CA refused the request; `code` is the gRPC status code name and `message` says why.
    #[error("the CA refused the request ({code}): {message}")]
    Refused {
        /// The gRPC status code, e.g. `FailedPrecondition`.
        code: tonic::Code,
        /// The CA's explanation.
        message: String,
    },
    /// The CA could not be reached.
    #[error("cannot reach the CA: {0}")]
    Connect(String),
    /// The CA answered with something the client cannot use.
    #[error("the CA's answer is invalid: {0}")]
    InvalidAnswer(String),
}

impl From<tonic::Status> for CaError {
    fn from(status: tonic::Status) -> CaError {
        CaError::Refused {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// The chain, PEM.
    pub chain_pem: String,
    /// The pinned key's SHA-256, hex.
    pub key_fingerprint: String,
    /// True when the CA treated this as a renewal.
    pub renewal: bool,
    /// The audit-log index of the issuance.
    pub log_index: Option<u64>,
}

/// The CA's public identity.
#[derive(Debug, Clone)]
pub struct CaInfo {
    /// The CA chain, PEM.
    pub chain_pem: String,
    /// The CA public key, PEM SubjectPublicKeyInfo (Nextcloud's "server key").
    pub public_key_pem: String,
    /// The CA certificate's SHA-256, hex.
    pub certificate_fingerprint: String,
}

/// The calls the client makes to the CA.
pub trait CaTransport {
    /// `IssueCertificate`.
    fn issue_certificate(
        &mut self,
        user_id: &str,
        csr_pem: &str,
    ) -> impl Future<Output = Result<IssuedCertificate, CaError>> + Send;

    /// `GetCaInfo`.
    fn ca_info(&mut self) -> impl Future<Output = Result<CaInfo, CaError>> + Send;

    /// `GetCertificates` for one user: `None` when the CA knows no certificate for them.
    fn certificate_of(&mut self, user_id: &str) -> impl Future<Output = Result<Option<String>, CaError>> + Send;
}

/// How to reach a CA that serves mTLS: the CA certificate that issued the server's certificate,
/// and the caller's client certificate and key (PEM), which the CA maps to a principal (the sync
/// server's, for this client's calls).
#[derive(Clone)]
pub struct ClientTls {
    server_ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
}

impl ClientTls {
    /// Trusts `server_ca_pem` for the server's certificate; presents no client certificate.
    pub fn new(server_ca_pem: Vec<u8>) -> ClientTls {
        ClientTls {
            server_ca_pem,
            identity: None,
        }
    }

    /// Also presents `certificate_pem`, proven with `key_pem`.
    pub fn with_client_certificate(self, certificate_pem: Vec<u8>, key_pem: Zeroizing<Vec<u8>>) -> ClientTls {
        ClientTls {
            identity: Some((certificate_pem, key_pem)),
            ..self
        }
    }

    /// A channel to `endpoint` (`https://HOST:PORT`) over this TLS configuration; the server's
    /// certificate must name HOST (a DNS name or an IP address).
    pub async fn channel(&self, endpoint: &str) -> Result<Channel, CaError> {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.server_ca_pem));
        if let Some((certificate_pem, key_pem)) = &self.identity {
            config = config.identity(Identity::from_pem(certificate_pem, key_pem.as_slice()));
        }
        Endpoint::from_shared(endpoint.to_owned())
            .map_err(|error| CaError::Connect(error_chain(&error)))?
            .tls_config(config)
            .map_err(|error| CaError::Connect(error_chain(&error)))?
            .connect()
            .await
            .map_err(|error| CaError::Connect(error_chain(&error)))
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is never printed.
        formatter
            .debug_struct("ClientTls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

/// An error and its sources, for a connection failure whose top-level message ("transport error")
/// says too little (a TLS handshake refused, a certificate not trusted).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The gRPC transport.
#[derive(Debug, Clone)]
pub struct GrpcTransport {
    client: IdentityClient<Channel>,
}

impl GrpcTransport {
    /// Connects to `endpoint` over plaintext, e.g. `http://127.0.0.1:50051` (a dev CA started with
    /// `--plaintext`, or one behind a TLS-terminating proxy on this host).
    pub async fn connect(endpoint: &str) -> Result<GrpcTransport, CaError> {
        let client = IdentityClient::connect(endpoint.to_owned())
            .await
            .map_err(|error| CaError::Connect(error_chain(&error)))?;
        Ok(GrpcTransport { client })
    }

    /// Connects to `endpoint` over mTLS, e.g. `https://127.0.0.1:50051`.
    pub async fn connect_tls(endpoint: &str, tls: &ClientTls) -> Result<GrpcTransport, CaError> {
        Ok(GrpcTransport {
            client: IdentityClient::new(tls.channel(endpoint).await?),
        })
    }
}

impl CaTransport for GrpcTransport {
    async fn issue_certificate(&mut self, user_id: &str, csr_pem: &str) -> Result<IssuedCertificate, CaError> {
        let response = self
            .client
            .issue_certificate(IssueCertificateRequest {
                user_id: user_id.to_owned(),
                csr_pem: csr_pem.to_owned(),
                wait_for_checkpoint: false,
            })
            .await?
            .into_inner();
        Ok(IssuedCertificate {
            certificate_pem: response.certificate_pem,
            chain_pem: response.chain_pem,
            key_fingerprint: response.key_fingerprint,
            renewal: response.renewal,
            log_index: response.log_entry.map(|entry| entry.index),
        })
    }

    async fn ca_info(&mut self) -> Result<CaInfo, CaError> {
        let response = self.client.get_ca_info(GetCaInfoRequest {}).await?.into_inner();
        Ok(CaInfo {
            chain_pem: response.ca_chain_pem,
            public_key_pem: response.ca_public_key_pem,
            certificate_fingerprint: response.ca_certificate_fingerprint,
        })
    }

    async fn certificate_of(&mut self, user_id: &str) -> Result<Option<String>, CaError> {
        let response = self
            .client
            .get_certificates(GetCertificatesRequest {
                user_ids: vec![user_id.to_owned()],
            })
            .await?;
        Ok(response
            .into_inner()
            .certificates
            .into_iter()
            .next()
            .map(|certificate| certificate.certificate_pem))
    }
}
