//! The gRPC boundary: the only module that knows protobuf and tonic types.
//!
//! Errors become `tonic::Status` in exactly one place, `status()`. What survives the hop: the code,
//! and for caller errors (INVALID_ARGUMENT, FAILED_PRECONDITION, ALREADY_EXISTS, RESOURCE_EXHAUSTED)
//! a message saying what was wrong. HSM and database details never leave the process; they are
//! logged and the caller gets a generic UNAVAILABLE or INTERNAL.

use std::sync::Arc;
use std::time::Duration;

use e2ee_ca_proto::v1::identity_server::Identity;
use e2ee_ca_proto::v1::transparency_server::Transparency;
use e2ee_ca_proto::v1::{
    ExportEntriesRequest, ExportEntriesResponse, GetCheckpointRequest, GetCheckpointResponse,
    GetConsistencyProofRequest, GetConsistencyProofResponse, GetInclusionProofRequest, GetInclusionProofResponse,
};
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
use crate::transparency::signer::AuditKey;
use crate::transparency::{LogStore, ProofError, StoredCheckpoint};

/// Most user ids accepted in one `GetCertificates` call.
pub const MAX_LOOKUP_USERS: usize = 1000;

/// The principal recorded as actor until mTLS principals land.
const DEV_ACTOR: &str = "unauthenticated";

/// The `Identity` service.
pub struct IdentityService<S> {
    issuer: Arc<Issuer<S>>,
    audit_key: AuditKey,
}

impl<S> IdentityService<S> {
    /// Serves `issuer`; `audit_key` names the log and its checkpoint key in `GetCaInfo`.
    pub fn new(issuer: Arc<Issuer<S>>, audit_key: AuditKey) -> IdentityService<S> {
        IdentityService { issuer, audit_key }
    }
}

impl<S: IdentityStore + LogStore> IdentityService<S> {
    /// The entry's tlog-proof if a checkpoint covers it within `RECEIPT_WAIT`, else empty. The
    /// certificate is committed and indexed by now, so a missing receipt never fails the call.
    async fn receipt(&self, index: u64) -> String {
        match crate::transparency::receipt(self.issuer.store().as_ref(), index, RECEIPT_WAIT).await {
            Ok(Some(receipt)) => receipt.to_string(),
            Ok(None) => String::new(),
            Err(error) => {
                tracing::warn!(%error, index, "cannot build the entry's tlog-proof");
                String::new()
            }
        }
    }
}

/// How long `IssueCertificate` waits, when asked to, for a checkpoint covering the new entry, for
/// its receipt: normally at most `audit.checkpoint_interval_ms` and one HSM signature.
const RECEIPT_WAIT: Duration = Duration::from_secs(1);

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
        IssueError::LogStalled => Status::unavailable(
            "the audit log cannot currently record issuances (sequencing or checkpoint signing is failing), \
             so nothing was issued; retry later",
        ),
        IssueError::LogLagging(bound) => Status::unavailable(format!(
            "the audit log did not record the issuance within {} ms, so the certificate was withheld; \
             retry later (the retry is a renewal of the same key)",
            bound.as_millis()
        )),
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
impl<S: IdentityStore + LogStore> Identity for IdentityService<S> {
    async fn issue_certificate(
        &self,
        request: Request<IssueCertificateRequest>,
    ) -> Result<Response<IssueCertificateResponse>, Status> {
        let request = request.into_inner();
        let wait_for_checkpoint = request.wait_for_checkpoint;
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
            log_entry: match issued.log_index {
                Some(index) => Some(LogEntryRef {
                    index,
                    entry_hash: hex::encode(issued.entry.entry_hash),
                    tlog_proof: if wait_for_checkpoint {
                        self.receipt(index).await
                    } else {
                        String::new()
                    },
                }),
                None => None,
            },
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
            log_origin: self.audit_key.origin().to_owned(),
            checkpoint_verifier_keys: vec![self.audit_key.verifier().to_string()],
            recovery: Some(RecoveryKeyStatus::default()),
        }))
    }
}

/// Entries per `ExportEntries` message (and per store read).
const EXPORT_CHUNK: u64 = 256;

/// The `Transparency` service: checkpoints and proofs from the log store.
pub struct TransparencyService<L> {
    store: Arc<L>,
}

impl<L> TransparencyService<L> {
    /// Serves the log in `store`.
    pub fn new(store: Arc<L>) -> TransparencyService<L> {
        TransparencyService { store }
    }
}

fn proof_status(error: ProofError) -> Status {
    match error {
        ProofError::OutOfRange(message) => Status::invalid_argument(message),
        ProofError::Store(store_error) => store_status(store_error),
        ProofError::Missing(..) | ProofError::BadCheckpoint(_) => {
            tracing::error!(%error, "log store is missing a subtree hash");
            Status::internal("the CA's log store is inconsistent; nothing was served")
        }
    }
}

impl<L: LogStore> TransparencyService<L> {
    /// The latest checkpoint; proofs are only served up to its size (never against an unsigned tree).
    async fn signed(&self) -> Result<StoredCheckpoint, Status> {
        self.store
            .latest_checkpoint()
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::unavailable("the audit log has no signed checkpoint yet; retry shortly"))
    }
}

/// Checks `size <= signed`, naming the field.
fn within_signed(field: &str, size: u64, signed: u64) -> Result<(), Status> {
    if size > signed {
        return Err(Status::invalid_argument(format!(
            "{field} {size} is beyond the latest signed checkpoint (size {signed}); fetch GetCheckpoint first"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl<L: LogStore> Transparency for TransparencyService<L> {
    async fn get_checkpoint(
        &self,
        _request: Request<GetCheckpointRequest>,
    ) -> Result<Response<GetCheckpointResponse>, Status> {
        let checkpoint = self.signed().await?;
        Ok(Response::new(GetCheckpointResponse {
            checkpoint: checkpoint.note,
            tree_size: checkpoint.size,
        }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<GetInclusionProofResponse>, Status> {
        let request = request.into_inner();
        let signed = self.signed().await?;
        within_signed("tree_size", request.tree_size, signed.size)?;
        if request.leaf_index >= request.tree_size {
            return Err(Status::invalid_argument(format!(
                "leaf_index {} is not below tree_size {}",
                request.leaf_index, request.tree_size
            )));
        }
        let hashes = crate::transparency::inclusion_proof(self.store.as_ref(), request.leaf_index, request.tree_size)
            .await
            .map_err(proof_status)?;
        let entry = self
            .store
            .entries(request.leaf_index, request.leaf_index + 1)
            .await
            .map_err(store_status)?
            .pop()
            .ok_or_else(|| Status::internal("the CA's log store is inconsistent; nothing was served"))?;
        Ok(Response::new(GetInclusionProofResponse {
            leaf_index: request.leaf_index,
            tree_size: request.tree_size,
            hashes: hashes.iter().map(|hash| hash.to_vec()).collect(),
            entry,
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<GetConsistencyProofResponse>, Status> {
        let request = request.into_inner();
        let signed = self.signed().await?;
        within_signed("new_size", request.new_size, signed.size)?;
        if request.old_size > request.new_size {
            return Err(Status::invalid_argument(format!(
                "old_size {} is larger than new_size {}",
                request.old_size, request.new_size
            )));
        }
        let hashes = crate::transparency::consistency_proof(self.store.as_ref(), request.old_size, request.new_size)
            .await
            .map_err(proof_status)?;
        Ok(Response::new(GetConsistencyProofResponse {
            old_size: request.old_size,
            new_size: request.new_size,
            hashes: hashes.iter().map(|hash| hash.to_vec()).collect(),
        }))
    }

    type ExportEntriesStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<ExportEntriesResponse, Status>> + Send + 'static>>;

    async fn export_entries(
        &self,
        request: Request<ExportEntriesRequest>,
    ) -> Result<Response<Self::ExportEntriesStream>, Status> {
        let request = request.into_inner();
        let signed = self.signed().await?;
        within_signed("end", request.end, signed.size)?;
        if request.start >= request.end {
            return Err(Status::invalid_argument(format!(
                "start {} is not below end {}",
                request.start, request.end
            )));
        }
        let store = Arc::clone(&self.store);
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut start = request.start;
            while start < request.end {
                let end = request.end.min(start.saturating_add(EXPORT_CHUNK));
                let message = match store.entries(start, end).await {
                    Ok(entries) if entries.len() as u64 == end - start => Ok(ExportEntriesResponse { start, entries }),
                    Ok(_) => Err(Status::internal("the CA's log store is inconsistent; export stopped")),
                    Err(error) => Err(store_status(error)),
                };
                let failed = message.is_err();
                // A closed receiver means the caller went away: stop reading.
                if sender.send(message).await.is_err() || failed {
                    return;
                }
                start = end;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        ))))
    }
}
