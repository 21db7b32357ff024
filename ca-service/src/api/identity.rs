//! The `Identity` service (the sync server's calls): issuance, certificate lookup, CA info; and
//! `CertificateLookup`, what `GetCertificates` needs from a store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use e2ee_ca_proto::v1::identity_server::Identity;
use e2ee_ca_proto::v1::{
    GetCaInfoRequest, GetCaInfoResponse, GetCertificatesRequest, GetCertificatesResponse, GetCrlRequest,
    GetCrlResponse, IssueCertificateRequest, IssueCertificateResponse, LogEntryRef, RecoveryKeyStatus, UserCertificate,
};
use tonic::{Request, Response, Status};

use super::principal::principal;
use super::status::{issue_status, store_status};
use crate::audit::{CertificateRow, check_certificate_entry, rfc3339};
use crate::identity::{StoredCertificate, UserId};
use crate::issuer::{IssuanceStore, IssueRequest, Issuer};
use crate::recovery::RecoveryStore;
use crate::revocation::RevocationStore;
use crate::storage::StoreError;
use crate::transparency::LogReader;

/// Most user ids accepted in one `GetCertificates` call.
pub const MAX_LOOKUP_USERS: usize = 1000;

/// How long `IssueCertificate` waits, when asked to, for a checkpoint covering the new entry, for
/// its receipt: normally at most `audit.checkpoint_interval_ms` and one HSM signature.
const RECEIPT_WAIT: Duration = Duration::from_secs(1);

/// What `GetCertificates` needs from a store. Implementations: `store::sqlite` and
/// `store::postgres`, held to this contract by `store::conformance`.
///
/// Contract: one consistent read; users without a certificate are absent from the answer.
pub trait CertificateLookup: Send + Sync + 'static {
    /// The newest certificate of each user that has one.
    fn latest_certificates(
        &self,
        users: Vec<UserId>,
    ) -> impl Future<Output = Result<Vec<StoredCertificate>, StoreError>> + Send;
}

/// A stored certificate as served, once it matched the audit entry that records it (a row changed
/// in the database alone is never served: INTERNAL, and an ERROR naming it).
fn checked_certificate(certificate: &StoredCertificate) -> Result<UserCertificate, Status> {
    let serial_hex = certificate.serial.to_hex();
    let key_hex = certificate.key_fingerprint.to_hex();
    let row = CertificateRow {
        user: certificate.user_id.as_str(),
        serial_hex: &serial_hex,
        key_hex: &key_hex,
        certificate_der: &certificate.certificate_der,
    };
    if let Err(mismatch) = check_certificate_entry(row, certificate.entry.as_deref()) {
        tracing::error!(user = %certificate.user_id, serial = %serial_hex, %mismatch, "stored certificate does not match the audit log: not served");
        return Err(Status::internal(
            "a stored certificate failed its check against the audit log and is not served",
        ));
    }
    Ok(UserCertificate {
        user_id: certificate.user_id.to_string(),
        certificate_pem: certificate_pem(&certificate.certificate_der),
        key_fingerprint: key_hex,
        serial_hex,
        revoked: certificate.revoked,
    })
}

/// What `GetCaInfo` answers, fixed at startup.
#[derive(Debug, Clone)]
pub struct CaInfo {
    /// The CA certificate and its parents, PEM.
    pub chain_pem: String,
    /// The CA public key, PEM.
    pub public_key_pem: String,
    /// SHA-256 of the CA certificate, hex.
    pub certificate_fingerprint: String,
    /// The CA key's algorithm name.
    pub key_algorithm: String,
    /// The audit log's origin.
    pub log_origin: String,
    /// The log's checkpoint verifier keys (vkey text).
    pub checkpoint_verifier_keys: Vec<String>,
}

/// The `Identity` service.
pub struct IdentityService<S> {
    issuer: Arc<Issuer<S>>,
    store: Arc<S>,
    ca: Arc<CaInfo>,
}

impl<S> IdentityService<S> {
    /// Serves `issuer`, looks certificates and receipts up in `store`, and answers `ca` for the CA.
    pub fn new(issuer: Issuer<S>, store: Arc<S>, ca: CaInfo) -> IdentityService<S> {
        IdentityService {
            issuer: Arc::new(issuer),
            store,
            ca: Arc::new(ca),
        }
    }
}

impl<S: LogReader> IdentityService<S> {
    /// The entry's tlog-proof if a checkpoint covers it within `RECEIPT_WAIT`, else empty. The
    /// certificate is committed and indexed by now, so a missing receipt never fails the call.
    async fn receipt(&self, index: u64) -> String {
        match crate::transparency::receipt(self.store.as_ref(), index, RECEIPT_WAIT).await {
            Ok(Some(receipt)) => receipt.to_string(),
            Ok(None) => String::new(),
            Err(error) => {
                tracing::warn!(%error, index, "cannot build the entry's tlog-proof");
                String::new()
            }
        }
    }
}

pub(super) fn certificate_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

#[tonic::async_trait]
impl<S: IssuanceStore + CertificateLookup + LogReader + RevocationStore + RecoveryStore> Identity
    for IdentityService<S>
{
    async fn issue_certificate(
        &self,
        request: Request<IssueCertificateRequest>,
    ) -> Result<Response<IssueCertificateResponse>, Status> {
        let actor = principal(&request)?;
        let request = request.into_inner();
        let wait_for_checkpoint = request.wait_for_checkpoint;
        let issued = self
            .issuer
            .issue(IssueRequest {
                actor,
                user_id: request.user_id,
                csr_pem: request.csr_pem,
            })
            .await
            .map_err(issue_status)?;
        let tlog_proof = if wait_for_checkpoint {
            self.receipt(issued.log_index).await
        } else {
            String::new()
        };
        Ok(Response::new(IssueCertificateResponse {
            certificate_pem: certificate_pem(&issued.certificate_der),
            chain_pem: self.ca.chain_pem.clone(),
            serial_hex: issued.serial.to_hex(),
            key_fingerprint: issued.key_fingerprint.to_hex(),
            renewal: issued.renewal,
            log_entry: Some(LogEntryRef {
                index: issued.log_index,
                entry_hash: hex::encode(issued.entry.entry_hash),
                tlog_proof,
            }),
        }))
    }

    async fn get_certificates(
        &self,
        request: Request<GetCertificatesRequest>,
    ) -> Result<Response<GetCertificatesResponse>, Status> {
        principal(&request)?;
        let raw_ids = request.into_inner().user_ids;
        if raw_ids.len() > MAX_LOOKUP_USERS {
            return Err(Status::invalid_argument(format!(
                "{} user ids requested; at most {MAX_LOOKUP_USERS} per call",
                raw_ids.len()
            )));
        }
        let mut user_ids = Vec::with_capacity(raw_ids.len());
        for (position, raw) in raw_ids.iter().enumerate() {
            let user_id = UserId::parse(raw)
                .map_err(|error| Status::invalid_argument(format!("user_ids[{position}]: {error}")))?;
            user_ids.push(user_id);
        }
        let found = self
            .store
            .latest_certificates(user_ids.clone())
            .await
            .map_err(store_status)?;
        let mut certificates = Vec::with_capacity(found.len());
        let mut unknown_user_ids = Vec::new();
        for user_id in user_ids {
            match found.iter().find(|certificate| certificate.user_id == user_id) {
                Some(certificate) => certificates.push(checked_certificate(certificate)?),
                None => unknown_user_ids.push(user_id.to_string()),
            }
        }
        Ok(Response::new(GetCertificatesResponse {
            certificates,
            unknown_user_ids,
        }))
    }

    async fn get_ca_info(&self, request: Request<GetCaInfoRequest>) -> Result<Response<GetCaInfoResponse>, Status> {
        principal(&request)?;
        let ca = &self.ca;
        // Read on every call: another replica may have changed it, and clients must see a change.
        let recovery = match self.store.recovery_key().await.map_err(store_status)? {
            Some(key) => RecoveryKeyStatus {
                enabled: true,
                certificate_pem: certificate_pem(&key.certificate_der),
                fingerprint: key.fingerprint.to_hex(),
                enabled_since: rfc3339(key.enabled_at),
            },
            None => RecoveryKeyStatus::default(),
        };
        Ok(Response::new(GetCaInfoResponse {
            ca_chain_pem: ca.chain_pem.clone(),
            ca_public_key_pem: ca.public_key_pem.clone(),
            ca_certificate_fingerprint: ca.certificate_fingerprint.clone(),
            ca_key_algorithm: ca.key_algorithm.clone(),
            log_origin: ca.log_origin.clone(),
            checkpoint_verifier_keys: ca.checkpoint_verifier_keys.clone(),
            recovery: Some(recovery),
        }))
    }

    async fn get_crl(&self, request: Request<GetCrlRequest>) -> Result<Response<GetCrlResponse>, Status> {
        principal(&request)?;
        let Some(crl) = self.store.latest_crl().await.map_err(store_status)? else {
            return Err(Status::not_found(
                "no CRL has been published yet (the CA publishes one at startup); retry shortly",
            ));
        };
        Ok(Response::new(GetCrlResponse {
            crl_number: crl.number,
            this_update: rfc3339(crl.this_update),
            next_update: rfc3339(crl.next_update),
            revoked_count: crl.revoked_count,
            crl_der: crl.der,
        }))
    }
}
