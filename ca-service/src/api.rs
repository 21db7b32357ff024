//! The gRPC boundary: the only module that knows protobuf and tonic types.
//!
//! Errors become `tonic::Status` in exactly one place, `status()`. What survives the hop: the code,
//! and for caller errors (INVALID_ARGUMENT, FAILED_PRECONDITION, ALREADY_EXISTS, RESOURCE_EXHAUSTED)
//! a message saying what was wrong. HSM and database details never leave the process; they are
//! logged and the caller gets a generic UNAVAILABLE or INTERNAL.

use std::sync::Arc;

use e2ee_ca_proto::v1::identity_server::Identity;
use e2ee_ca_proto::v1::{
    GetCaInfoRequest, GetCaInfoResponse, GetCertificatesRequest, GetCertificatesResponse, IssueCertificateRequest,
    IssueCertificateResponse, LogEntryRef, RecoveryKeyStatus, UserCertificate,
};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::hsm::HsmError;
use crate::identity::UserId;
use crate::issuer::{IdentityStore, IssueError, IssueRequest, Issuer};
use crate::store::StoreError;

/// Most user ids accepted in one `GetCertificates` call.
pub const MAX_LOOKUP_USERS: usize = 1000;

/// The principal recorded as actor until mTLS principals land.
const DEV_ACTOR: &str = "unauthenticated";

/// The `Identity` service.
pub struct IdentityService<S> {
    issuer: Arc<Issuer<S>>,
}

impl<S> IdentityService<S> {
    /// Serves `issuer`.
    pub fn new(issuer: Arc<Issuer<S>>) -> IdentityService<S> {
        IdentityService { issuer }
    }
}

fn certificate_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// Maps an issuance error to a status: the one place where errors cross the boundary.
fn status(error: IssueError) -> Status {
    match error {
        IssueError::UserId(_) | IssueError::Csr(_) => Status::invalid_argument(error.to_string()),
        IssueError::CsrTooLarge(_) | IssueError::RateLimited(_) => Status::resource_exhausted(error.to_string()),
        IssueError::PinnedToOtherKey(_) => Status::failed_precondition(error.to_string()),
        IssueError::KeyPinnedElsewhere => Status::already_exists(error.to_string()),
        IssueError::Hsm(HsmError::PoolExhausted) => {
            Status::resource_exhausted("the CA is at capacity (all HSM sessions busy); retry with backoff")
        }
        IssueError::Hsm(hsm_error) => {
            tracing::error!(error = %hsm_error, "issuance failed in the HSM");
            Status::unavailable("the CA's HSM is unavailable; nothing was issued; retry later")
        }
        IssueError::Store(store_error) => store_status(store_error),
        IssueError::Build(_) | IssueError::SignatureCheck => {
            tracing::error!(%error, "issuance failed");
            Status::internal("the CA could not produce a valid certificate; nothing was issued")
        }
    }
}

fn store_status(error: StoreError) -> Status {
    tracing::error!(%error, "store failure");
    match error {
        StoreError::Unavailable(_) => {
            Status::unavailable("the CA's database is unavailable; nothing was changed; retry later")
        }
        _ => Status::internal("the CA's database failed; nothing was changed"),
    }
}

#[tonic::async_trait]
impl<S: IdentityStore> Identity for IdentityService<S> {
    async fn issue_certificate(
        &self,
        request: Request<IssueCertificateRequest>,
    ) -> Result<Response<IssueCertificateResponse>, Status> {
        let request = request.into_inner();
        let issued = self
            .issuer
            .issue(IssueRequest {
                actor: DEV_ACTOR.to_owned(),
                user_id: request.user_id,
                csr_pem: request.csr_pem,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(IssueCertificateResponse {
            certificate_pem: certificate_pem(&issued.certificate_der),
            chain_pem: self.issuer.ca().chain_pem(),
            serial_hex: issued.serial.to_hex(),
            key_fingerprint: issued.key_fingerprint.to_hex(),
            renewal: issued.renewal,
            log_entry: Some(LogEntryRef {
                index: issued.entry.index,
                entry_hash: hex::encode(issued.entry.entry_hash),
            }),
        }))
    }

    async fn get_certificates(
        &self,
        request: Request<GetCertificatesRequest>,
    ) -> Result<Response<GetCertificatesResponse>, Status> {
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
            .issuer
            .store()
            .latest_certificates(user_ids.clone())
            .await
            .map_err(store_status)?;
        let mut certificates = Vec::with_capacity(found.len());
        let mut unknown_user_ids = Vec::new();
        for user_id in user_ids {
            match found.iter().find(|certificate| certificate.user_id == user_id) {
                Some(certificate) => certificates.push(UserCertificate {
                    user_id: user_id.to_string(),
                    certificate_pem: certificate_pem(&certificate.certificate_der),
                    key_fingerprint: certificate.key_fingerprint.to_hex(),
                    serial_hex: certificate.serial.to_hex(),
                }),
                None => unknown_user_ids.push(user_id.to_string()),
            }
        }
        Ok(Response::new(GetCertificatesResponse {
            certificates,
            unknown_user_ids,
        }))
    }

    async fn get_ca_info(&self, _request: Request<GetCaInfoRequest>) -> Result<Response<GetCaInfoResponse>, Status> {
        let ca = self.issuer.ca();
        Ok(Response::new(GetCaInfoResponse {
            ca_chain_pem: ca.chain_pem(),
            ca_public_key_pem: ca.key.public_key_pem(),
            ca_certificate_fingerprint: hex::encode(Sha256::digest(&ca.certificate_der)),
            ca_key_algorithm: ca.key.algorithm().name().to_owned(),
            log_origin: String::new(),
            checkpoint_verifier_keys: Vec::new(),
            recovery: Some(RecoveryKeyStatus::default()),
        }))
    }
}
