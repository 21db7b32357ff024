//! The Admin service's recovery calls (admin.proto): registering and disabling the offline
//! recovery key and releasing escrow deposits, each under dual control. The `Admin` trait
//! implementation in `admin.rs` hands these calls here.
//!
//! A registration or disable is performed by its approval (`approve_recovery`), in the approval's
//! transaction; the registration's certificate is signed by the CA key on the HSM before it, so a
//! down HSM leaves the request pending. An escrow release is consumed by `GetEscrow`, which returns
//! the blob only after its `escrow-released` entry is committed and indexed.

use e2ee_ca_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::admin::{AdminService, now, request_to_proto, valid_reason};
use super::principal::principal;
use super::status::store_status;
use crate::approvals::{
    ApprovalKind, ApprovalRefused, ApprovalRequest, ApprovalStore, NewRequest, OpenRefused, RequestId,
};
use crate::audit::{LogEntryRef, rfc3339};
use crate::issuer::{IssuanceStore, IssueError};
use crate::recovery::{MAX_REFERENCE_BYTES, RecoveryChange, RecoveryPublicKey, RecoveryStore, ReleaseRefused};
use crate::revocation::RevocationReason;

/// The status of a refused request opening.
fn open_refused_status(refused: OpenRefused) -> Status {
    match refused {
        OpenRefused::UnknownUser => Status::not_found("no identity is pinned for this user"),
        refused @ OpenRefused::NoDeposit => Status::not_found(refused.to_string()),
        refused @ (OpenRefused::AlreadyOpen(_) | OpenRefused::RecoveryDisabled) => {
            Status::failed_precondition(refused.to_string())
        }
    }
}

/// The status of a refused approval.
pub(super) fn approval_refused_status(actor: &str, refused: ApprovalRefused) -> Status {
    match refused {
        ApprovalRefused::NotFound => Status::not_found("no request with this id"),
        refused @ ApprovalRefused::SelfApproval => {
            tracing::warn!(admin = actor, "self-approval refused");
            Status::permission_denied(refused.to_string())
        }
        refused @ ApprovalRefused::NotPending(_) => Status::failed_precondition(refused.to_string()),
    }
}

impl<S> AdminService<S>
where
    S: ApprovalStore + RecoveryStore + IssuanceStore,
{
    /// Opens `request` and answers it once its entry is indexed.
    async fn open(&self, request: NewRequest) -> Result<ApprovalRequest, Status> {
        let (request, entry) = self
            .store
            .open_request(request)
            .await
            .map_err(store_status)?
            .map_err(open_refused_status)?;
        self.indexed(&entry).await?;
        tracing::warn!(admin = %request.requested_by, kind = request.kind.name(), subject = request.subject_text(), request = %request.id, "request opened");
        Ok(request)
    }

    /// A new request of `kind` by `actor`, expiring after the configured lifetime.
    fn new_request(
        &self,
        kind: ApprovalKind,
        actor: &str,
        subject: Option<crate::identity::UserId>,
        reason: &str,
    ) -> NewRequest {
        let now = now();
        NewRequest {
            id: RequestId::generate(),
            kind,
            subject,
            recovery_key: None,
            reason: reason.to_owned(),
            revocation_reason: RevocationReason::Superseded,
            requested_by: actor.to_owned(),
            requested_at: now,
            expires_at: now + self.request_lifetime,
        }
    }

    pub(super) async fn register_recovery_key(
        &self,
        request: Request<pb::RegisterRecoveryKeyRequest>,
    ) -> Result<Response<pb::RegisterRecoveryKeyResponse>, Status> {
        let actor = principal(&request)?;
        let request = request.into_inner();
        let reason = valid_reason(&request.reason)?;
        let reference = request.ceremony_reference.trim();
        if reference.is_empty() || reference.len() > MAX_REFERENCE_BYTES || reference.chars().any(char::is_control) {
            return Err(Status::invalid_argument(format!(
                "ceremony_reference is required: 1 to {MAX_REFERENCE_BYTES} bytes of text without control characters"
            )));
        }
        let key = RecoveryPublicKey::from_pem(&request.public_key_pem)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let mut new = self.new_request(ApprovalKind::RecoveryKeyRegistration, actor.name(), None, reason);
        new.recovery_key = Some(crate::approvals::ProposedRecoveryKey {
            spki_der: key.spki_der().to_vec(),
            ceremony_reference: reference.to_owned(),
        });
        let opened = self.open(new).await?;
        Ok(Response::new(pb::RegisterRecoveryKeyResponse {
            request: Some(request_to_proto(&opened)),
        }))
    }

    pub(super) async fn disable_recovery_key(
        &self,
        request: Request<pb::DisableRecoveryKeyRequest>,
    ) -> Result<Response<pb::DisableRecoveryKeyResponse>, Status> {
        let actor = principal(&request)?;
        let reason = valid_reason(&request.get_ref().reason)?;
        let new = self.new_request(ApprovalKind::RecoveryKeyDisable, actor.name(), None, reason);
        let opened = self.open(new).await?;
        Ok(Response::new(pb::DisableRecoveryKeyResponse {
            request: Some(request_to_proto(&opened)),
        }))
    }

    pub(super) async fn request_escrow_release(
        &self,
        request: Request<pb::RequestEscrowReleaseRequest>,
    ) -> Result<Response<pb::RequestEscrowReleaseResponse>, Status> {
        let actor = principal(&request)?;
        let request = request.into_inner();
        let subject = super::admin::user_argument(&request.user_id, "user_id")?;
        let reason = valid_reason(&request.reason)?;
        let new = self.new_request(ApprovalKind::EscrowRelease, actor.name(), Some(subject), reason);
        let opened = self.open(new).await?;
        Ok(Response::new(pb::RequestEscrowReleaseResponse {
            request: Some(request_to_proto(&opened)),
        }))
    }

    pub(super) async fn get_escrow(
        &self,
        request: Request<pb::GetEscrowRequest>,
    ) -> Result<Response<pb::GetEscrowResponse>, Status> {
        let actor = principal(&request)?;
        let id = RequestId::parse(&request.get_ref().request_id)
            .ok_or_else(|| Status::invalid_argument("request_id must be 32 lowercase hex characters"))?;
        let (escrow, entry) = match self
            .store
            .release_escrow(id, actor.name().to_owned(), now())
            .await
            .map_err(store_status)?
        {
            Ok(released) => released,
            Err(ReleaseRefused::NotFound) => return Err(Status::not_found("no escrow-release request with this id")),
            Err(refused @ (ReleaseRefused::NotApproved(_) | ReleaseRefused::NoDeposit)) => {
                return Err(Status::failed_precondition(refused.to_string()));
            }
        };
        // The release is in the log before the blob leaves, and the blob is the one the log
        // recorded (a deposit changed in the database alone is withheld; the release is spent).
        let log_entry = self.indexed(&entry).await?;
        crate::key_backup::check_recorded(
            escrow.recorded_by.as_ref(),
            crate::audit::AuditKind::EscrowDeposited,
            escrow.user.as_str(),
            &[
                ("recovery-key-sha256", escrow.recovery_fingerprint.to_hex()),
                ("escrow-sha256", crate::key_backup::sha256_hex(&escrow.blob)),
            ],
        )
        .map_err(|mismatch| super::status::record_mismatch_status("escrow deposit", &escrow.user, &mismatch))?;
        tracing::warn!(admin = actor.name(), user = %escrow.user, "escrow deposit released");
        Ok(Response::new(pb::GetEscrowResponse {
            user_id: escrow.user.to_string(),
            escrow_blob: escrow.blob,
            recovery_key_fingerprint: escrow.recovery_fingerprint.to_hex(),
            deposited_at: rfc3339(escrow.deposited_at),
            log_entry: Some(log_entry),
        }))
    }

    /// `ApproveRequest` for a recovery-key request: signs the registration's certificate, then
    /// approves and performs the change in one transaction. Returns the approved request and the
    /// change's entry.
    pub(super) async fn approve_recovery(
        &self,
        request: &ApprovalRequest,
        approver: &str,
    ) -> Result<(ApprovalRequest, LogEntryRef), Status> {
        // The same refusals as the store's, before the HSM is asked to sign anything.
        request
            .check_approval(approver, now())
            .map_err(|refused| approval_refused_status(approver, refused))?;
        let change = match (request.kind, &request.recovery_key) {
            (ApprovalKind::RecoveryKeyRegistration, Some(proposed)) => {
                let key = RecoveryPublicKey::from_der(&proposed.spki_der).map_err(|_| {
                    tracing::error!(request = %request.id, "a stored recovery-key request holds no X25519 key");
                    Status::internal("the stored request is corrupt; open a new one")
                })?;
                let certificate_der = crate::recovery::sign_certificate(
                    &self.recovery_ca.0,
                    &self.recovery_ca.1,
                    &key,
                    &proposed.ceremony_reference,
                    now(),
                )
                .await
                .map_err(|error| match error {
                    IssueError::Hsm(hsm_error) => {
                        tracing::error!(error = %hsm_error, "recovery certificate not signed");
                        Status::unavailable("the CA's HSM is unavailable; the request is still pending; retry later")
                    }
                    other => {
                        tracing::error!(error = %other, "recovery certificate not signed");
                        Status::internal("the CA could not certify the recovery key; the request is still pending")
                    }
                })?;
                RecoveryChange::Register { certificate_der }
            }
            (ApprovalKind::RecoveryKeyDisable, _) => RecoveryChange::Disable,
            _ => return Err(Status::internal("not a recovery-key request")),
        };
        let (approved, entry) = self
            .store
            .approve_recovery_change(request.id.clone(), approver.to_owned(), now(), change)
            .await
            .map_err(store_status)?
            .map_err(|refused| approval_refused_status(approver, refused))?;
        self.indexed(&entry).await?;
        tracing::warn!(admin = approver, kind = approved.kind.name(), request = %approved.id, "recovery key changed");
        Ok((approved, entry))
    }
}
