//! How the client reaches the CA: a small trait, and its gRPC implementation.
//!
//! Status codes the caller can act on become their own `CaError` variants (the KeyBackup service's
//! write-once and nonce rules answer ALREADY_EXISTS, NOT_FOUND and FAILED_PRECONDITION, each with
//! the server's message); the CA's answers are parsed into typed values here, at the edge.

use std::future::Future;

use e2ee_ca_proto::v1::identity_client::IdentityClient;
use e2ee_ca_proto::v1::key_backup_client::KeyBackupClient;
use e2ee_ca_proto::v1::{
    CreateBackupChallengeRequest, DepositEscrowRequest, GetCaInfoRequest, GetCaInfoResponse, GetCertificatesRequest,
    GetWrappedPrivateKeyRequest, IssueCertificateRequest, PutWrappedPrivateKeyRequest,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use zeroize::Zeroizing;

use crate::format::private_key_blob::PrivateKeyBlob;
use crate::protocol::possession::{BackupNonce, ProofOfPossession};
use crate::recovery::RecoveryKeyInfo;

/// What the CA answered, or why it could not be reached.
///
/// The messages are the CA's own; they never carry key material (the CA has none to give).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// ALREADY_EXISTS: what the call would create exists (a stored wrapped key, without `replace`).
    #[error("already exists on the CA: {0}")]
    AlreadyExists(String),
    /// NOT_FOUND: nothing is stored for the request (no wrapped key, nothing to replace).
    #[error("not found on the CA: {0}")]
    NotFound(String),
    /// FAILED_PRECONDITION: the request is well formed but the CA's state does not allow it now (a nonce that
    /// expired or was used, a user without a pinned key, a recovery key that changed or was disabled); the
    /// message says which.
    #[error("the CA refused the request as things stand: {0}")]
    FailedPrecondition(String),
    /// INVALID_ARGUMENT: the CA refused what was sent (a malformed blob, a forged proof).
    #[error("the CA refused the request as invalid: {0}")]
    InvalidArgument(String),
    /// UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED: try again later.
    #[error("the CA cannot answer now ({code:?}): {message}")]
    Unavailable {
        /// The gRPC status code.
        code: tonic::Code,
        /// The CA's explanation.
        message: String,
    },
    /// The CA refused the request with another status; `code` is the gRPC status code and `message` says why.
    #[error("the CA refused the request ({code:?}): {message}")]
    Refused {
        /// The gRPC status code, e.g. `PermissionDenied`.
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

impl CaError {
    /// The gRPC status code the CA answered with; `None` when it was not reached or its answer was unusable.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            CaError::AlreadyExists(_) => Some(tonic::Code::AlreadyExists),
            CaError::NotFound(_) => Some(tonic::Code::NotFound),
            CaError::FailedPrecondition(_) => Some(tonic::Code::FailedPrecondition),
            CaError::InvalidArgument(_) => Some(tonic::Code::InvalidArgument),
            CaError::Unavailable { code, .. } | CaError::Refused { code, .. } => Some(*code),
            CaError::Connect(_) | CaError::InvalidAnswer(_) => None,
        }
    }
}

impl From<tonic::Status> for CaError {
    fn from(status: tonic::Status) -> CaError {
        let message = status.message().to_owned();
        match status.code() {
            tonic::Code::AlreadyExists => CaError::AlreadyExists(message),
            tonic::Code::NotFound => CaError::NotFound(message),
            tonic::Code::FailedPrecondition => CaError::FailedPrecondition(message),
            tonic::Code::InvalidArgument => CaError::InvalidArgument(message),
            code @ (tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::ResourceExhausted) => {
                CaError::Unavailable { code, message }
            }
            code => CaError::Refused { code, message },
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
    /// The offline recovery key, when one is enabled; its certificate was checked against `public_key_pem`.
    /// Never stored: `Device` state read back from disk has `None` here, so read it fresh from the CA.
    pub recovery: Option<RecoveryKeyInfo>,
}

/// A nonce for one proof of possession (`CreateBackupChallenge`).
#[derive(Debug, Clone)]
pub struct BackupChallenge {
    /// The nonce to sign.
    pub nonce: BackupNonce,
    /// When it expires, RFC 3339.
    pub expires_at: String,
}

/// Whether `PutWrappedPrivateKey` may replace a stored wrapped key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupWrite {
    /// Store only when nothing is stored (the first backup); a stored key is `CaError::AlreadyExists`.
    CreateOnly,
    /// Replace the stored key (a re-wrap under new words); nothing stored is `CaError::NotFound`.
    Replace,
}

/// What `PutWrappedPrivateKey` recorded.
#[derive(Debug, Clone)]
pub struct WrappedKeyStored {
    /// True when an earlier wrapped key was replaced.
    pub replaced: bool,
    /// The audit-log index of the write.
    pub log_index: Option<u64>,
}

/// The wrapped private key the CA holds for a user (`GetWrappedPrivateKey`). Its `Debug` leaves the blob out.
#[derive(Clone)]
pub struct StoredWrappedKey {
    /// The wrapped key, parsed from its stored string.
    pub wrapped_key: PrivateKeyBlob,
    /// SHA-256 of the SPKI of the key pinned when it was stored, lowercase hex: the unwrapped key must have it.
    pub key_fingerprint: String,
    /// When it was stored, RFC 3339.
    pub stored_at: String,
    /// The audit-log index of this read.
    pub log_index: Option<u64>,
}

impl std::fmt::Debug for StoredWrappedKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StoredWrappedKey")
            .field("wrapped_key", &"<wrapped>")
            .field("key_fingerprint", &self.key_fingerprint)
            .field("stored_at", &self.stored_at)
            .field("log_index", &self.log_index)
            .finish()
    }
}

/// What `DepositEscrow` recorded.
#[derive(Debug, Clone)]
pub struct EscrowDeposited {
    /// The audit-log index of the deposit.
    pub log_index: Option<u64>,
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

    /// `CreateBackupChallenge`: a fresh nonce for one proof by `user_id`.
    fn create_backup_challenge(
        &mut self,
        user_id: &str,
    ) -> impl Future<Output = Result<BackupChallenge, CaError>> + Send;

    /// `PutWrappedPrivateKey`: stores `wrapped_key` in its `|`-separated string form (`PrivateKeyBlob`'s
    /// `Display`), whose UTF-8 bytes are the payload `proof` signs (purpose key-backup).
    fn put_wrapped_private_key(
        &mut self,
        user_id: &str,
        wrapped_key: &PrivateKeyBlob,
        write: BackupWrite,
        proof: &ProofOfPossession,
    ) -> impl Future<Output = Result<WrappedKeyStored, CaError>> + Send;

    /// `GetWrappedPrivateKey`: nothing stored is `CaError::NotFound`. Every read is an audit entry.
    fn wrapped_private_key(&mut self, user_id: &str) -> impl Future<Output = Result<StoredWrappedKey, CaError>> + Send;

    /// `DepositEscrow`: `escrow_blob` sealed to the recovery key `recovery_key_fingerprint`, with `proof` over the
    /// blob (purpose escrow). A recovery key that is not the current one is `CaError::FailedPrecondition`.
    fn deposit_escrow(
        &mut self,
        user_id: &str,
        recovery_key_fingerprint: &str,
        escrow_blob: &[u8],
        proof: &ProofOfPossession,
    ) -> impl Future<Output = Result<EscrowDeposited, CaError>> + Send;
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

/// The gRPC transport: the Identity and KeyBackup services over one channel.
#[derive(Debug, Clone)]
pub struct GrpcTransport {
    client: IdentityClient<Channel>,
    key_backup: KeyBackupClient<Channel>,
}

impl GrpcTransport {
    /// Connects to `endpoint` over plaintext, e.g. `http://127.0.0.1:50051` (a dev CA started with
    /// `--plaintext`, or one behind a TLS-terminating proxy on this host).
    pub async fn connect(endpoint: &str) -> Result<GrpcTransport, CaError> {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|error| CaError::Connect(error_chain(&error)))?
            .connect()
            .await
            .map_err(|error| CaError::Connect(error_chain(&error)))?;
        Ok(GrpcTransport::over(channel))
    }

    /// Connects to `endpoint` over mTLS, e.g. `https://127.0.0.1:50051`.
    pub async fn connect_tls(endpoint: &str, tls: &ClientTls) -> Result<GrpcTransport, CaError> {
        Ok(GrpcTransport::over(tls.channel(endpoint).await?))
    }

    fn over(channel: Channel) -> GrpcTransport {
        GrpcTransport {
            client: IdentityClient::new(channel.clone()),
            key_backup: KeyBackupClient::new(channel),
        }
    }
}

/// Converts `GetCaInfo`'s answer. A recovery certificate the CA's own key did not sign, or whose key is not the
/// fingerprint, makes the whole answer unusable: it is what a substituted recovery key would look like. A status
/// with `enabled` false is `None`, whatever else it holds.
fn ca_info_from(response: GetCaInfoResponse) -> Result<CaInfo, CaError> {
    let recovery = match response.recovery {
        Some(status) if status.enabled => Some(
            RecoveryKeyInfo::verify(
                &status.certificate_pem,
                &status.fingerprint,
                &status.enabled_since,
                &response.ca_public_key_pem,
            )
            .map_err(|error| CaError::InvalidAnswer(error.to_string()))?,
        ),
        _ => None,
    };
    Ok(CaInfo {
        chain_pem: response.ca_chain_pem,
        public_key_pem: response.ca_public_key_pem,
        certificate_fingerprint: response.ca_certificate_fingerprint,
        recovery,
    })
}

fn proof_message(proof: &ProofOfPossession) -> e2ee_ca_proto::v1::ProofOfPossession {
    e2ee_ca_proto::v1::ProofOfPossession {
        nonce: proof.nonce.as_bytes().to_vec(),
        signature: proof.signature.clone(),
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
        ca_info_from(response)
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

    async fn create_backup_challenge(&mut self, user_id: &str) -> Result<BackupChallenge, CaError> {
        let response = self
            .key_backup
            .create_backup_challenge(CreateBackupChallengeRequest {
                user_id: user_id.to_owned(),
            })
            .await?
            .into_inner();
        let nonce = BackupNonce::try_from(response.nonce.as_slice())
            .map_err(|error| CaError::InvalidAnswer(error.to_string()))?;
        Ok(BackupChallenge {
            nonce,
            expires_at: response.expires_at,
        })
    }

    async fn put_wrapped_private_key(
        &mut self,
        user_id: &str,
        wrapped_key: &PrivateKeyBlob,
        write: BackupWrite,
        proof: &ProofOfPossession,
    ) -> Result<WrappedKeyStored, CaError> {
        let response = self
            .key_backup
            .put_wrapped_private_key(PutWrappedPrivateKeyRequest {
                user_id: user_id.to_owned(),
                wrapped_key: wrapped_key.to_string(),
                replace: write == BackupWrite::Replace,
                proof: Some(proof_message(proof)),
            })
            .await?
            .into_inner();
        Ok(WrappedKeyStored {
            replaced: response.replaced,
            log_index: response.log_entry.map(|entry| entry.index),
        })
    }

    async fn wrapped_private_key(&mut self, user_id: &str) -> Result<StoredWrappedKey, CaError> {
        let response = self
            .key_backup
            .get_wrapped_private_key(GetWrappedPrivateKeyRequest {
                user_id: user_id.to_owned(),
            })
            .await?
            .into_inner();
        // The blob's parse errors name lengths and parts, never its content.
        let wrapped_key = PrivateKeyBlob::parse(&response.wrapped_key)
            .map_err(|error| CaError::InvalidAnswer(format!("the stored wrapped key is malformed: {error}")))?;
        Ok(StoredWrappedKey {
            wrapped_key,
            key_fingerprint: response.key_fingerprint,
            stored_at: response.stored_at,
            log_index: response.log_entry.map(|entry| entry.index),
        })
    }

    async fn deposit_escrow(
        &mut self,
        user_id: &str,
        recovery_key_fingerprint: &str,
        escrow_blob: &[u8],
        proof: &ProofOfPossession,
    ) -> Result<EscrowDeposited, CaError> {
        let response = self
            .key_backup
            .deposit_escrow(DepositEscrowRequest {
                user_id: user_id.to_owned(),
                recovery_key_fingerprint: recovery_key_fingerprint.to_owned(),
                escrow_blob: escrow_blob.to_vec(),
                proof: Some(proof_message(proof)),
            })
            .await?
            .into_inner();
        Ok(EscrowDeposited {
            log_index: response.log_entry.map(|entry| entry.index),
        })
    }
}

#[cfg(test)]
mod tests {
    use e2ee_ca_proto::v1::RecoveryKeyStatus;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::recovery::tests::{ca_key, recovery_certificate, x25519_spki};

    fn response(ca_public_key_pem: String, recovery: Option<RecoveryKeyStatus>) -> GetCaInfoResponse {
        GetCaInfoResponse {
            ca_chain_pem: "chain".into(),
            ca_public_key_pem,
            ca_certificate_fingerprint: "ab".repeat(32),
            recovery,
            ..GetCaInfoResponse::default()
        }
    }

    fn status(certificate_pem: String, fingerprint: String) -> RecoveryKeyStatus {
        RecoveryKeyStatus {
            enabled: true,
            certificate_pem,
            fingerprint,
            enabled_since: "2026-01-02T03:04:05Z".into(),
        }
    }

    #[test]
    fn ca_info_carries_a_recovery_key_only_when_enabled_and_certified_by_the_ca() {
        let ca = ca_key();
        let spki = x25519_spki(5);
        let fingerprint = hex::encode(Sha256::digest(&spki));
        let certified = status(recovery_certificate(&spki, &ca), fingerprint.clone());

        let info = ca_info_from(response(ca.public_key_pem(), Some(certified.clone()))).expect("accepted");
        let recovery = info.recovery.expect("enabled");
        assert_eq!(recovery.fingerprint, fingerprint);
        assert_eq!(recovery.enabled_since, "2026-01-02T03:04:05Z");

        // Disabled (or absent): no recovery key, even if the other fields are filled in.
        let disabled = RecoveryKeyStatus {
            enabled: false,
            ..certified.clone()
        };
        assert!(
            ca_info_from(response(ca.public_key_pem(), Some(disabled)))
                .expect("ok")
                .recovery
                .is_none()
        );
        assert!(
            ca_info_from(response(ca.public_key_pem(), None))
                .expect("ok")
                .recovery
                .is_none()
        );

        // Signed by another key than the answer's CA key, or for another key than the fingerprint: refused.
        let forged = status(recovery_certificate(&spki, &ca_key()), fingerprint.clone());
        assert!(matches!(
            ca_info_from(response(ca.public_key_pem(), Some(forged))),
            Err(CaError::InvalidAnswer(message)) if message.contains("not signed by the CA key")
        ));
        let other_key = status(recovery_certificate(&x25519_spki(6), &ca), fingerprint);
        assert!(matches!(
            ca_info_from(response(ca.public_key_pem(), Some(other_key))),
            Err(CaError::InvalidAnswer(message)) if message.contains("not the reported")
        ));
    }

    #[test]
    fn status_codes_a_caller_acts_on_have_their_own_variants() {
        let cases = [
            (tonic::Code::AlreadyExists, "AlreadyExists"),
            (tonic::Code::NotFound, "NotFound"),
            (tonic::Code::FailedPrecondition, "FailedPrecondition"),
            (tonic::Code::InvalidArgument, "InvalidArgument"),
            (tonic::Code::Unavailable, "Unavailable"),
            (tonic::Code::ResourceExhausted, "Unavailable"),
            (tonic::Code::PermissionDenied, "Refused"),
        ];
        for (code, variant) in cases {
            let error = CaError::from(tonic::Status::new(code, "the server's reason"));
            assert!(format!("{error:?}").starts_with(variant), "{code:?}: {error:?}");
            assert_eq!(error.code(), Some(code));
            assert!(error.to_string().contains("the server's reason"), "{error}");
        }
    }
}
