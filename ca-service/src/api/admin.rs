//! The `Admin` service (admin.proto): identity lookups, revocation and dual-control resets for
//! the admin console. Every call is by a named admin (`Principal`, role `admin`, checked by the
//! authorization table before the handler runs), who is the actor of every entry it causes.
//!
//! `IdentityDirectory` is what the lookups need from a store; the writes go through
//! `approvals::ApprovalStore` and `revocation::RevocationStore`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use e2ee_ca_proto::v1 as pb;
use e2ee_ca_proto::v1::admin_server::Admin;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use super::identity::certificate_pem;
use super::principal::principal;
use super::status::{log_entry_status, store_status};
use crate::approvals::{
    ApprovalKind, ApprovalRequest, ApprovalStore, MAX_REASON_BYTES, NewRequest, OpenRefused, RequestId,
};
use crate::audit::{LogEntryRef, rfc3339};
use crate::hsm::Signer;
use crate::identity::{KeyFingerprint, SerialNumber, UserId};
use crate::issuer::{CaCertificate, IssuanceStore, LogWait, wait_for_log_index};
use crate::recovery::RecoveryStore;
use crate::revocation::{CrlPublisher, RevocationReason, RevocationStore, RevocationTarget, RevokeRefused};
use crate::storage::StoreError;

/// Most certificates and log entries `GetIdentity` returns.
pub const MAX_HISTORY: usize = 1000;
/// `ListIdentities`' default and largest page.
pub const DEFAULT_PAGE: usize = 100;
/// See `DEFAULT_PAGE`.
pub const MAX_PAGE: usize = 1000;
/// Most open requests `ListRequests` returns.
pub const MAX_OPEN_REQUESTS: usize = 1000;

/// A certificate as the admin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    /// Its serial.
    pub serial: SerialNumber,
    /// The certified key.
    pub key_fingerprint: KeyFingerprint,
    /// When it was issued.
    pub issued_at: OffsetDateTime,
    /// Its notAfter.
    pub not_after: OffsetDateTime,
    /// The certificate, DER.
    pub certificate_der: Vec<u8>,
    /// When and why it was revoked, if it was.
    pub revocation: Option<(OffsetDateTime, RevocationReason)>,
}

/// An audit entry about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLogEntry {
    /// Its log index, once sequenced.
    pub index: Option<u64>,
    /// Its exact bytes.
    pub bytes: Vec<u8>,
    /// SHA-256 of the bytes.
    pub hash: [u8; 32],
}

/// A pinned identity, its certificates and its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    /// The user.
    pub user: UserId,
    /// The pinned key.
    pub key_fingerprint: KeyFingerprint,
    /// When it was pinned.
    pub pinned_at: OffsetDateTime,
    /// The newest `MAX_HISTORY` certificates, newest first.
    pub certificates: Vec<CertificateRecord>,
    /// The newest `MAX_HISTORY` entries whose subject is the user, oldest first.
    pub entries: Vec<UserLogEntry>,
    /// True when a wrapped private key is stored for the user.
    pub wrapped_key_stored: bool,
    /// The recovery key of the user's escrow deposit, if there is one.
    pub escrow_recovery_key: Option<KeyFingerprint>,
}

/// One row of `ListIdentities`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySummary {
    /// The user.
    pub user: String,
    /// The pinned key.
    pub key_fingerprint: KeyFingerprint,
    /// When it was pinned.
    pub pinned_at: OffsetDateTime,
}

/// What the Admin lookups need from a store. Implementations: both stores, held to it by
/// `store::conformance`.
pub trait IdentityDirectory: Send + Sync + 'static {
    /// The identity of `user`, if pinned (see `IdentityRecord` for the bounds).
    fn identity(&self, user: &UserId) -> impl Future<Output = Result<Option<IdentityRecord>, StoreError>> + Send;

    /// Up to `limit` identities whose user id sorts after `after` (all when `None`), in user-id
    /// order: one index range scan, as fast on the last page as on the first.
    fn list_identities(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<IdentitySummary>, StoreError>> + Send;
}

/// The `Admin` service.
pub struct AdminService<S> {
    pub(super) store: Arc<S>,
    crls: Arc<CrlPublisher<S>>,
    log_wait: LogWait,
    pub(super) request_lifetime: Duration,
    /// The CA key and certificate, which certify a registered recovery key.
    pub(super) recovery_ca: (Signer, Arc<CaCertificate>),
}

impl<S> AdminService<S> {
    /// Serves the admin calls on `store`; revocations publish through `crls`; requests expire
    /// `request_lifetime` after they are opened; `ca_signer` under `ca` certifies recovery keys.
    pub fn new(
        store: Arc<S>,
        crls: Arc<CrlPublisher<S>>,
        log_wait: LogWait,
        request_lifetime: Duration,
        (ca_signer, ca): (Signer, Arc<CaCertificate>),
    ) -> AdminService<S> {
        AdminService {
            store,
            crls,
            log_wait,
            request_lifetime,
            recovery_ca: (ca_signer, ca),
        }
    }
}

/// Now, in whole seconds: what both stores keep exactly.
pub(super) fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// The reason as the API names it.
pub(super) fn reason_to_proto(reason: RevocationReason) -> pb::RevocationReason {
    match reason {
        RevocationReason::KeyCompromise => pb::RevocationReason::KeyCompromise,
        RevocationReason::AffiliationChanged => pb::RevocationReason::AffiliationChanged,
        RevocationReason::Superseded => pb::RevocationReason::Superseded,
        RevocationReason::CessationOfOperation => pb::RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn => pb::RevocationReason::PrivilegeWithdrawn,
    }
}

/// A reason as sent: `UNSPECIFIED` and unknown values are refused.
fn reason_from_proto(value: i32, field: &str) -> Result<RevocationReason, Status> {
    RevocationReason::from_code(i64::from(value)).ok_or_else(|| {
        Status::invalid_argument(format!(
            "{field} is required: one of KEY_COMPROMISE, AFFILIATION_CHANGED, SUPERSEDED, \
             CESSATION_OF_OPERATION, PRIVILEGE_WITHDRAWN"
        ))
    })
}

pub(super) fn user_argument(raw: &str, field: &str) -> Result<UserId, Status> {
    UserId::parse(raw).map_err(|error| Status::invalid_argument(format!("{field}: {error}")))
}

/// A request's reason, trimmed: 1 to `MAX_REASON_BYTES` bytes without control characters.
pub(super) fn valid_reason(raw: &str) -> Result<&str, Status> {
    let reason = raw.trim();
    if reason.is_empty() || reason.len() > MAX_REASON_BYTES || reason.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "reason is required: 1 to {MAX_REASON_BYTES} bytes of text without control characters"
        )));
    }
    Ok(reason)
}

pub(super) fn request_to_proto(request: &ApprovalRequest) -> pb::ApprovalRequest {
    pb::ApprovalRequest {
        request_id: request.id.to_string(),
        kind: request.kind.name().to_owned(),
        user_id: request.subject.as_ref().map(UserId::to_string).unwrap_or_default(),
        reason: request.reason.clone(),
        requested_by: request.requested_by.clone(),
        requested_at: rfc3339(request.requested_at),
        expires_at: rfc3339(request.expires_at),
        approved_by: request.approval.as_ref().map(|(by, _)| by.clone()).unwrap_or_default(),
        approved_at: request
            .approval
            .as_ref()
            .map(|(_, at)| rfc3339(*at))
            .unwrap_or_default(),
        revocation_reason: reason_to_proto(request.revocation_reason).into(),
        key_fingerprint: request.key_fingerprint.map(|key| key.to_hex()).unwrap_or_default(),
        ceremony_reference: request
            .recovery_key
            .as_ref()
            .map(|proposed| proposed.ceremony_reference.clone())
            .unwrap_or_default(),
    }
}

impl<S: IssuanceStore> AdminService<S> {
    /// The entry's log index (bounded wait), for the response; the change is committed already.
    pub(super) async fn indexed(&self, entry: &LogEntryRef) -> Result<pb::LogEntryRef, Status> {
        let index = wait_for_log_index(&self.log_wait, self.store.as_ref(), entry)
            .await
            .map_err(log_entry_status)?;
        Ok(pb::LogEntryRef {
            index,
            entry_hash: hex::encode(entry.entry_hash),
            tlog_proof: String::new(),
        })
    }
}

/// Checks each certificate of `record` against the entry among `record.entries` that records it
/// (`audit::check_certificate_entry`); a certificate whose entry lies beyond the history served is
/// not checked here (`GetCertificates` checks the newest one through its own reference). A
/// mismatch is INTERNAL, with an ERROR naming it: a row changed in the database alone is not served.
fn check_certificates(record: &IdentityRecord) -> Result<(), Status> {
    let entries: Vec<(&[u8], crate::audit::ParsedEntry)> = record
        .entries
        .iter()
        .filter_map(|entry| {
            Some((
                entry.bytes.as_slice(),
                crate::audit::ParsedEntry::parse(&entry.bytes).ok()?,
            ))
        })
        .collect();
    for certificate in &record.certificates {
        let serial_hex = certificate.serial.to_hex();
        let Some((bytes, _)) = entries.iter().find(|(_, entry)| {
            entry.detail("serial") == Some(serial_hex.as_str()) && entry.detail("certificate-sha256").is_some()
        }) else {
            continue;
        };
        let key_hex = certificate.key_fingerprint.to_hex();
        let row = crate::audit::CertificateRow {
            user: record.user.as_str(),
            serial_hex: &serial_hex,
            key_hex: &key_hex,
            certificate_der: &certificate.certificate_der,
        };
        if let Err(mismatch) = crate::audit::check_certificate_entry(row, Some(bytes)) {
            tracing::error!(user = %record.user, serial = %serial_hex, %mismatch, "stored certificate does not match the audit log: not served");
            return Err(Status::internal(
                "a stored certificate failed its check against the audit log and is not served",
            ));
        }
    }
    Ok(())
}

/// The reads of the user's wrapped key among `entries` (`key-backup-read`), oldest first.
fn backup_reads(entries: &[UserLogEntry]) -> Vec<pb::BackupRead> {
    entries
        .iter()
        .filter_map(|entry| {
            let parsed = crate::audit::ParsedEntry::parse(&entry.bytes).ok()?;
            (parsed.kind == crate::audit::AuditKind::KeyBackupRead.name()).then_some(pb::BackupRead {
                read_by: parsed.actor,
                read_at: parsed.time,
                index: entry.index,
            })
        })
        .collect()
}

#[tonic::async_trait]
impl<S> Admin for AdminService<S>
where
    S: IdentityDirectory + ApprovalStore + RevocationStore + IssuanceStore + RecoveryStore,
{
    async fn get_identity(
        &self,
        request: Request<pb::GetIdentityRequest>,
    ) -> Result<Response<pb::GetIdentityResponse>, Status> {
        principal(&request)?;
        let user = user_argument(&request.get_ref().user_id, "user_id")?;
        let Some(record) = self.store.identity(&user).await.map_err(store_status)? else {
            return Err(Status::not_found(format!("no identity is pinned for user {user}")));
        };
        check_certificates(&record)?;
        Ok(Response::new(pb::GetIdentityResponse {
            user_id: record.user.to_string(),
            key_fingerprint: record.key_fingerprint.to_hex(),
            pinned_since: rfc3339(record.pinned_at),
            certificates: record
                .certificates
                .iter()
                .map(|certificate| pb::CertificateStatus {
                    serial_hex: certificate.serial.to_hex(),
                    key_fingerprint: certificate.key_fingerprint.to_hex(),
                    issued_at: rfc3339(certificate.issued_at),
                    not_after: rfc3339(certificate.not_after),
                    revoked: certificate.revocation.is_some(),
                    revoked_at: certificate.revocation.map(|(at, _)| rfc3339(at)).unwrap_or_default(),
                    revocation_reason: certificate
                        .revocation
                        .map_or(pb::RevocationReason::Unspecified, |(_, reason)| reason_to_proto(reason))
                        .into(),
                    certificate_pem: certificate_pem(&certificate.certificate_der),
                })
                .collect(),
            log_entries: record
                .entries
                .iter()
                .map(|entry| pb::IdentityLogEntry {
                    index: entry.index,
                    entry: String::from_utf8_lossy(&entry.bytes).into_owned(),
                    entry_hash: hex::encode(entry.hash),
                })
                .collect(),
            backup_reads: backup_reads(&record.entries),
            wrapped_key_stored: record.wrapped_key_stored,
            escrow_recovery_key_fingerprint: record.escrow_recovery_key.map(|key| key.to_hex()).unwrap_or_default(),
        }))
    }

    async fn list_identities(
        &self,
        request: Request<pb::ListIdentitiesRequest>,
    ) -> Result<Response<pb::ListIdentitiesResponse>, Status> {
        principal(&request)?;
        let request = request.into_inner();
        let page_size = match usize::try_from(request.page_size).unwrap_or(usize::MAX) {
            0 => DEFAULT_PAGE,
            size if size > MAX_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "page_size {size} is over the limit of {MAX_PAGE}"
                )));
            }
            size => size,
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(page_token::decode(&request.page_token)?)
        };
        let mut page = self
            .store
            .list_identities(after, page_size + 1)
            .await
            .map_err(store_status)?;
        let more = page.len() > page_size;
        page.truncate(page_size);
        let next_page_token = match page.last() {
            Some(last) if more => page_token::encode(&last.user),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListIdentitiesResponse {
            identities: page
                .iter()
                .map(|identity| pb::IdentitySummary {
                    user_id: identity.user.clone(),
                    key_fingerprint: identity.key_fingerprint.to_hex(),
                    pinned_since: rfc3339(identity.pinned_at),
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn revoke_certificate(
        &self,
        request: Request<pb::RevokeCertificateRequest>,
    ) -> Result<Response<pb::RevokeCertificateResponse>, Status> {
        let actor = principal(&request)?;
        let request = request.into_inner();
        let reason = reason_from_proto(request.reason, "reason")?;
        let target = match request.target {
            Some(pb::revoke_certificate_request::Target::SerialHex(serial)) => {
                let bytes = hex::decode(serial.trim())
                    .ok()
                    .filter(|bytes| !bytes.is_empty() && bytes.len() <= 20)
                    .ok_or_else(|| {
                        Status::invalid_argument("serial_hex must be 1 to 20 bytes of hex (as in serial_hex)")
                    })?;
                RevocationTarget::Serial(SerialNumber::from_bytes(bytes))
            }
            Some(pb::revoke_certificate_request::Target::UserId(user)) => {
                RevocationTarget::User(user_argument(&user, "user_id")?)
            }
            None => return Err(Status::invalid_argument("set serial_hex or user_id")),
        };
        // Fail closed before anything is recorded: a revocation the CA key cannot put in a CRL
        // is refused while the HSM is down.
        self.crls.check_signer().await.map_err(|error| {
            tracing::error!(%error, "revocation refused: the CA key does not sign");
            Status::unavailable("the CA's HSM is unavailable; nothing was revoked; retry later")
        })?;
        let revoked = match self
            .store
            .revoke(target, reason, actor.name().to_owned(), now())
            .await
            .map_err(store_status)?
        {
            Ok(revoked) => revoked,
            Err(RevokeRefused::NotFound) => return Err(Status::not_found("no such certificate or user")),
            Err(RevokeRefused::AlreadyRevoked) => {
                return Err(Status::failed_precondition("already revoked: nothing to revoke"));
            }
        };
        tracing::warn!(admin = actor.name(), user = %revoked.user, count = revoked.serials.len(), %reason, "certificates revoked");
        // The CRL first: it must list a committed revocation even if the log's index is late.
        let crl_number = match self.crls.publish().await {
            Ok(crl) => crl.number,
            Err(error) => {
                tracing::error!(%error, "revocation committed, but the CRL could not be published yet; retrying in the background");
                self.crls.request_refresh();
                0
            }
        };
        let log_entry = self.indexed(&revoked.entry).await?;
        Ok(Response::new(pb::RevokeCertificateResponse {
            revoked_serials: revoked.serials.iter().map(SerialNumber::to_hex).collect(),
            log_entry: Some(log_entry),
            crl_number,
        }))
    }

    async fn request_identity_reset(
        &self,
        request: Request<pb::RequestIdentityResetRequest>,
    ) -> Result<Response<pb::RequestIdentityResetResponse>, Status> {
        let actor = principal(&request)?;
        let request = request.into_inner();
        let subject = user_argument(&request.user_id, "user_id")?;
        let reason = valid_reason(&request.reason)?;
        let revocation_reason = match request.revocation_reason {
            0 => RevocationReason::Superseded,
            value => match reason_from_proto(value, "revocation_reason")? {
                chosen @ (RevocationReason::Superseded | RevocationReason::KeyCompromise) => chosen,
                _ => {
                    return Err(Status::invalid_argument(
                        "revocation_reason of a reset is SUPERSEDED or KEY_COMPROMISE",
                    ));
                }
            },
        };
        let now = now();
        let opened = self
            .store
            .open_request(NewRequest {
                id: RequestId::generate(),
                kind: ApprovalKind::IdentityReset,
                subject: Some(subject),
                recovery_key: None,
                reason: reason.to_owned(),
                revocation_reason,
                requested_by: actor.name().to_owned(),
                requested_at: now,
                expires_at: now + self.request_lifetime,
            })
            .await
            .map_err(store_status)?;
        match opened {
            Ok((request, entry)) => {
                self.indexed(&entry).await?;
                tracing::warn!(admin = actor.name(), subject = request.subject_text(), request = %request.id, "identity reset requested");
                Ok(Response::new(pb::RequestIdentityResetResponse {
                    request: Some(request_to_proto(&request)),
                }))
            }
            Err(OpenRefused::UnknownUser) => Err(Status::not_found("no identity is pinned for this user")),
            Err(refused @ OpenRefused::NoDeposit) => Err(Status::not_found(refused.to_string())),
            Err(refused @ (OpenRefused::AlreadyOpen(_) | OpenRefused::RecoveryDisabled)) => {
                Err(Status::failed_precondition(refused.to_string()))
            }
        }
    }

    async fn approve_request(
        &self,
        request: Request<pb::ApproveRequestRequest>,
    ) -> Result<Response<pb::ApproveRequestResponse>, Status> {
        let actor = principal(&request)?;
        let id = RequestId::parse(&request.get_ref().request_id)
            .ok_or_else(|| Status::invalid_argument("request_id must be 32 lowercase hex characters"))?;
        let Some(found) = self.store.request(&id).await.map_err(store_status)? else {
            return Err(Status::not_found("no request with this id"));
        };
        if !found.kind.concerns_a_user() {
            let (approved, _) = self.approve_recovery(&found, actor.name()).await?;
            return Ok(Response::new(pb::ApproveRequestResponse {
                request: Some(request_to_proto(&approved)),
            }));
        }
        let approved = self
            .store
            .approve_request(id, actor.name().to_owned(), now())
            .await
            .map_err(store_status)?;
        match approved {
            Ok((request, entry)) => {
                self.indexed(&entry).await?;
                tracing::warn!(admin = actor.name(), subject = request.subject_text(), request = %request.id, "request approved");
                Ok(Response::new(pb::ApproveRequestResponse {
                    request: Some(request_to_proto(&request)),
                }))
            }
            Err(refused) => Err(super::recovery::approval_refused_status(actor.name(), refused)),
        }
    }

    async fn register_recovery_key(
        &self,
        request: Request<pb::RegisterRecoveryKeyRequest>,
    ) -> Result<Response<pb::RegisterRecoveryKeyResponse>, Status> {
        AdminService::register_recovery_key(self, request).await
    }

    async fn disable_recovery_key(
        &self,
        request: Request<pb::DisableRecoveryKeyRequest>,
    ) -> Result<Response<pb::DisableRecoveryKeyResponse>, Status> {
        AdminService::disable_recovery_key(self, request).await
    }

    async fn request_escrow_release(
        &self,
        request: Request<pb::RequestEscrowReleaseRequest>,
    ) -> Result<Response<pb::RequestEscrowReleaseResponse>, Status> {
        AdminService::request_escrow_release(self, request).await
    }

    async fn get_escrow(
        &self,
        request: Request<pb::GetEscrowRequest>,
    ) -> Result<Response<pb::GetEscrowResponse>, Status> {
        AdminService::get_escrow(self, request).await
    }

    async fn list_requests(
        &self,
        request: Request<pb::ListRequestsRequest>,
    ) -> Result<Response<pb::ListRequestsResponse>, Status> {
        principal(&request)?;
        let requests = self
            .store
            .open_requests(now(), MAX_OPEN_REQUESTS)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ListRequestsResponse {
            requests: requests.iter().map(request_to_proto).collect(),
        }))
    }
}

/// Page tokens: the last user id of the page, base64url, so that a token is opaque to callers
/// but costs nothing to decode (keyset pagination needs no server state).
mod page_token {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use tonic::Status;

    const PREFIX: &str = "u1.";

    pub(super) fn encode(last_user: &str) -> String {
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(last_user))
    }

    pub(super) fn decode(token: &str) -> Result<String, Status> {
        let malformed = || Status::invalid_argument("page_token is malformed: pass next_page_token unchanged");
        let encoded = token.strip_prefix(PREFIX).ok_or_else(malformed)?;
        if encoded.len() > 1024 {
            return Err(malformed());
        }
        let bytes = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| malformed())?;
        String::from_utf8(bytes).map_err(|_| malformed())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn tokens_round_trip_and_garbage_is_refused() {
            assert_eq!(
                decode(&encode("alice@example.org")).expect("round trip"),
                "alice@example.org"
            );
            for bad in ["", "alice", "u1.!!!", "u2.YWxpY2U", &format!("u1.{}", "A".repeat(2000))] {
                assert_eq!(
                    decode(bad).expect_err(bad).code(),
                    tonic::Code::InvalidArgument,
                    "{bad}"
                );
            }
        }
    }
}
