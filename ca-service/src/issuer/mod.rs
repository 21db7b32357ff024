//! Issuance and key pinning: the CA's policy, as numbered steps.
//!
//! `IssueCertificate` (api.md):
//! 1. validate the user id (a request without a valid user names no subject: refused, not logged)
//!    and the CSR size;
//! 2. parse and check the CSR (encoding, key policy, self-signature, CN = user id);
//! 3. read the pin state: a pin must match the audit entry that made it, in the log's tree
//!    (`pins`; a mismatch is `PinMismatch`, nothing signed); a different key pinned to the user,
//!    or this key pinned to someone else, is refused; a renewal is rate-limited; every refusal
//!    from here and from steps 1 (size) and 2 is answered only after its audit entry is committed;
//! 4. refuse up front (UNAVAILABLE) while the audit log is stalled; build the certificate from the
//!    profile and sign it on the HSM;
//! 5. verify the signature with the CA public key;
//! 6. commit pin, certificate and audit entry in one transaction; the store's constraints decide
//!    races (one key per user, one user per key, unique serials) and the transaction counts a
//!    renewal's rate limit, so step 3 is only a fast path;
//! 7. wait (bounded) until the sequencer has given the audit entry its log index; past the bound
//!    the certificate stays committed but is not released (`LogLagging`, UNAVAILABLE: fail closed);
//! 8. only then release the certificate, with its log index.

//!
//! `store` holds the store contract (`IssuanceStore`), `certificate` steps 4 and 5, `csr` step 2,
//! `pins` the pin's check against its log entry in step 3.

mod certificate;
pub mod csr;
pub mod pins;
pub mod refusals;
mod store;

use std::sync::Arc;
use std::time::Duration;

pub use certificate::{CaCertificate, Profile, SigningQueue, SigningTicket, check_certificate, end_entity_extensions};
pub use csr::{CheckedCsr, CsrError, MAX_CSR_BYTES};
pub use pins::PinMismatch;
pub use store::{CommitOutcome, IssuanceStore, NewCertificate, PinEntry, PinState, RateLimit, ResetOutcome};

use crate::approvals::ApprovalRequest;
use crate::audit::{AuditEvent, AuditKind, LogEntryRef};
use crate::clock::Clock;
use crate::hsm::{HsmError, Signer};
use crate::identity::{KeyFingerprint, SerialNumber, UserId, UserIdError};
use crate::principal::Principal;
use crate::storage::StoreError;
use crate::transparency::sequencer::SequencerHandle;

/// How the issuer waits for the sequencer (step 7).
#[derive(Debug, Clone)]
pub struct LogWait {
    /// The local sequencer, woken after each commit.
    pub sequencer: SequencerHandle,
    /// The longest the issuer waits for an index before answering UNAVAILABLE.
    pub bound: Duration,
}

/// How often the issuer re-reads an entry's index when no local sequencer progress is signalled
/// (another replica may be the sequencer).
const LOG_INDEX_POLL: Duration = Duration::from_millis(50);

/// A request to certify a key.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// Who asks: the actor of the audit entry.
    pub actor: Arc<Principal>,
    /// The user id as sent (validated here).
    pub user_id: String,
    /// The CSR as sent (validated here).
    pub csr_pem: String,
}

/// A released certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, DER.
    pub certificate_der: Vec<u8>,
    /// The serial.
    pub serial: SerialNumber,
    /// The pinned key.
    pub key_fingerprint: KeyFingerprint,
    /// True for a renewal.
    pub renewal: bool,
    /// The audit entry recording it.
    pub entry: LogEntryRef,
    /// The entry's log index.
    pub log_index: u64,
}

/// Why an issuance did not happen. `api` maps these to gRPC codes in one place.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The user id is invalid.
    #[error(transparent)]
    UserId(#[from] UserIdError),
    /// The CSR is larger than 64 KiB.
    #[error("csr_pem is {0} bytes; the limit is {MAX_CSR_BYTES} bytes")]
    CsrTooLarge(usize),
    /// The CSR was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// Another key is pinned to the user.
    #[error("user already has a pinned key (SHA-256 {0}); an identity reset approved by two admins is required")]
    PinnedToOtherKey(KeyFingerprint),
    /// The key is pinned to another user.
    #[error("this key is already pinned to another user; generate a new key pair")]
    KeyPinnedElsewhere,
    /// Too many certificates for this user today.
    #[error("user has received {0} certificates in the last 24 hours; try again later")]
    RateLimited(u64),
    /// The user's pin does not match the audit entry that made it: the database was changed
    /// outside the service (or the sequencer is behind, `PinMismatch::is_transient`); nothing was
    /// signed.
    #[error("the stored pin does not match the audit log")]
    PinMismatch(#[from] PinMismatch),
    /// The HSM failed or is busy.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The certificate could not be built (internal).
    #[error("certificate construction failed: {0}")]
    Build(String),
    /// The signature did not verify with the CA public key, or the certificate does not carry what
    /// was verified; nothing was released.
    #[error("the signed certificate failed verification with the CA public key")]
    SignatureCheck,
    /// The audit log has been unable to sequence or sign for longer than its bound: nothing was
    /// signed or committed.
    #[error("the audit log is stalled")]
    LogStalled,
    /// The audit log did not sequence the entry within the bound: the certificate is committed but
    /// not released (a retry with the same key is a renewal).
    #[error("the audit log did not record the issuance within {0:?}")]
    LogLagging(Duration),
}

/// Why an issuer could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerSetupError {
    /// The CA certificate does not parse.
    #[error("cannot parse the CA certificate: {0}")]
    Certificate(String),
    /// The CA certificate carries another key than the CA signer's.
    #[error("the CA certificate's public key is not the public key of HSM key {0:?}")]
    KeyMismatch(String),
}

/// What the issuer is built from, besides its store.
#[derive(Debug)]
pub struct IssuerParts {
    /// The CA key on the HSM.
    pub signer: Signer,
    /// The CA certificate the signer's key is certified by.
    pub ca: CaCertificate,
    /// The certificate profile.
    pub profile: Profile,
    /// How long to wait for log indices, and on whom.
    pub log_wait: LogWait,
    /// The policy's clock.
    pub clock: Arc<dyn Clock>,
    /// The count of issuances at the HSM (shared with the embedded store, which follows it).
    pub signing: Arc<SigningQueue>,
    /// Woken after an identity reset revoked certificates (the CRL publisher), if any.
    pub crl_refresh: Option<Arc<tokio::sync::Notify>>,
    /// The callers' refusal windows (written by `refusals::run_flusher`).
    pub refusals: Arc<refusals::RefusalSummaries>,
}

/// The issuer: policy, profile, CA signer and store.
pub struct Issuer<S> {
    signer: Signer,
    ca: Arc<CaCertificate>,
    profile: Profile,
    store: Arc<S>,
    log_wait: LogWait,
    clock: Arc<dyn Clock>,
    signing: Arc<SigningQueue>,
    crl_refresh: Option<Arc<tokio::sync::Notify>>,
    refusals: Arc<refusals::RefusalSummaries>,
}

impl<S: IssuanceStore> Issuer<S> {
    /// Builds an issuer; the CA certificate must carry the signer's public key.
    pub fn new(parts: IssuerParts, store: Arc<S>) -> Result<Issuer<S>, IssuerSetupError> {
        let IssuerParts {
            signer,
            ca,
            profile,
            log_wait,
            clock,
            signing,
            crl_refresh,
            refusals,
        } = parts;
        ca.check_key(&signer)?;
        Ok(Issuer {
            signer,
            ca: Arc::new(ca),
            profile,
            store,
            log_wait,
            clock,
            signing,
            crl_refresh,
            refusals,
        })
    }

    /// Runs `IssueCertificate` (steps in the module docs).
    pub async fn issue(&self, request: IssueRequest) -> Result<Issued, IssueError> {
        // 1. Validate the user id and the CSR size.
        let user_id = UserId::parse(&request.user_id)?;
        let actor = request.actor.name();
        let csr_detail = || ("csr-sha256", hex::encode(sha2_digest(request.csr_pem.as_bytes())));
        if request.csr_pem.len() > MAX_CSR_BYTES {
            let error = IssueError::CsrTooLarge(request.csr_pem.len());
            return Err(self.refuse(actor, &user_id, csr_detail(), error).await);
        }
        // 2. Parse and check the CSR.
        let checked = match csr::check(&user_id, &request.csr_pem) {
            Ok(checked) => checked,
            Err(error) => return Err(self.refuse(actor, &user_id, csr_detail(), error.into()).await),
        };
        let key_detail = || ("key-sha256", checked.fingerprint.to_hex());
        // 3. Pin state and rate limit (a fast path: step 6 decides races). A different key than the
        //    pinned one passes only under an approved identity reset for that pin.
        let since = self.clock.now() - time::Duration::days(1);
        let pin_state = self.store.pin_state(&user_id, &checked.fingerprint, since).await?;
        // A pin that contradicts the log stops everything for the user. One whose entry is merely
        // not sequenced yet (another replica just pinned it) stops only what would sign on it.
        let mut pin_unsequenced = None;
        if let Some(pinned) = &pin_state.user_pin
            && let Err(mismatch) = pins::check_pin(&user_id, pinned, pin_state.pin_entry.as_ref())
        {
            if mismatch.is_transient() {
                pin_unsequenced = Some(mismatch);
            } else {
                tracing::error!(user = %user_id, %mismatch, "the stored pin does not match the audit log: refusing to sign");
                return Err(IssueError::PinMismatch(mismatch));
            }
        }
        let mut reset = None;
        if let Some(pinned) = pin_state.user_pin.filter(|pinned| *pinned != checked.fingerprint) {
            match self.store.approved_reset(&user_id, self.clock.now()).await? {
                Some(request) if request.key_fingerprint == Some(pinned) => reset = Some((pinned, request)),
                _ => {
                    // The pin was read before the reset lookup: another replica may have consumed
                    // the reset in between, pinning a new key. Name the key pinned now (unless it is
                    // this request's own, which a retry renews), not the one it replaced.
                    let pinned_now = self
                        .store
                        .pin_state(&user_id, &checked.fingerprint, since)
                        .await?
                        .user_pin
                        .filter(|now| *now != checked.fingerprint)
                        .unwrap_or(pinned);
                    let error = IssueError::PinnedToOtherKey(pinned_now);
                    return Err(self.refuse(actor, &user_id, key_detail(), error).await);
                }
            }
        }
        if (pin_state.user_pin.is_none() || reset.is_some()) && pin_state.key_pinned_elsewhere {
            return Err(self
                .refuse(actor, &user_id, key_detail(), IssueError::KeyPinnedElsewhere)
                .await);
        }
        if reset.is_none()
            && pin_state.user_pin.is_some()
            && pin_state.certificates_since >= self.profile.max_certificates_per_day
        {
            let error = IssueError::RateLimited(pin_state.certificates_since);
            return Err(self.refuse(actor, &user_id, key_detail(), error).await);
        }
        // 4. Refuse while the log cannot record it; build and sign; 5. check.
        if !self.log_wait.sequencer.log_healthy() {
            return Err(IssueError::LogStalled);
        }
        if let Some(mismatch) = pin_unsequenced {
            // A renewal or a reset would sign on this pin: not before its entry is in the log.
            tracing::warn!(user = %user_id, %mismatch, "pin not yet backed by a sequenced entry");
            return Err(IssueError::PinMismatch(mismatch));
        }
        let certificate = {
            let _at_the_hsm = self.signing.enter();
            let now = self.clock.now();
            certificate::sign(&self.signer, &self.ca, &self.profile, now, &user_id, &checked).await?
        };

        // 6. Commit pin, certificate and audit entry in one transaction.
        let renewal_hint = pin_state.user_pin.is_some();
        let event = AuditEvent {
            kind: AuditKind::issuance(renewal_hint),
            actor: actor.to_owned(),
            subject: user_id.to_string(),
            details: vec![
                ("key-sha256", checked.fingerprint.to_hex()),
                ("key-type", checked.key_type.to_string()),
                ("serial", certificate.serial.to_hex()),
                (
                    "certificate-sha256",
                    hex::encode(sha2_digest(&certificate.certificate_der)),
                ),
            ],
        };
        let serial = certificate.serial.clone();
        let certificate_der = certificate.certificate_der.clone();
        let committed = match reset {
            Some((old_key, request)) => {
                let reset_event = reset_event(event.clone(), &old_key, &request);
                match self
                    .store
                    .commit_reset(certificate.clone(), reset_event, request)
                    .await?
                {
                    ResetOutcome::Reset { entry, revoked } => {
                        tracing::warn!(user = %user_id, old = %old_key, new = %checked.fingerprint, revoked = revoked.len(), "identity reset: new key pinned");
                        if let Some(published) = &self.crl_refresh {
                            published.notify_one();
                        }
                        CommitOutcome::Committed { renewal: false, entry }
                    }
                    // Another replica consumed it first: decide as an ordinary issuance.
                    ResetOutcome::NotApproved => self.store.commit_issuance(certificate, event).await?,
                    ResetOutcome::KeyPinnedElsewhere => CommitOutcome::KeyPinnedElsewhere,
                }
            }
            None => self.store.commit_issuance(certificate, event).await?,
        };
        match committed {
            CommitOutcome::Committed { renewal, entry } => {
                // 7. Wait for the log index; 8. release.
                let log_index = wait_for_log_index(&self.log_wait, &*self.store, &entry).await?;
                tracing::info!(user = %user_id, serial = %serial.to_hex(), renewal, log_index, "certificate issued");
                Ok(Issued {
                    certificate_der,
                    serial,
                    key_fingerprint: checked.fingerprint,
                    renewal,
                    entry,
                    log_index,
                })
            }
            CommitOutcome::PinnedToOtherKey(pinned) => {
                let error = IssueError::PinnedToOtherKey(pinned);
                Err(self.refuse(actor, &user_id, key_detail(), error).await)
            }
            CommitOutcome::KeyPinnedElsewhere => Err(self
                .refuse(actor, &user_id, key_detail(), IssueError::KeyPinnedElsewhere)
                .await),
            CommitOutcome::RateLimited(count) => Err(self
                .refuse(actor, &user_id, key_detail(), IssueError::RateLimited(count))
                .await),
        }
    }

    /// Logs a policy refusal and returns the error to answer with. If the refusal cannot be logged,
    /// the caller gets the store error instead (fail closed: no answer without its audit entry).
    /// `detail` names what was refused (the key's or the CSR's SHA-256). Past the caller's bound
    /// for the window, the refusal is counted for its summary instead (`refusals`).
    async fn refuse(
        &self,
        actor: &str,
        user_id: &UserId,
        detail: (&'static str, String),
        error: IssueError,
    ) -> IssueError {
        let class = match &error {
            IssueError::CsrTooLarge(_) => "refused-csr-size",
            IssueError::Csr(_) => "refused-csr",
            IssueError::PinnedToOtherKey(_) => "refused-pinned-to-other-key",
            IssueError::KeyPinnedElsewhere => "refused-key-pinned-elsewhere",
            IssueError::RateLimited(_) => "refused-rate-limited",
            _ => "refused-other",
        };
        if self.refusals.admit(actor, user_id.as_str(), class) == refusals::Admission::Counted {
            tracing::debug!(user = %user_id, refused = %detail.1, %error, "issuance refused (summarized)");
            return error;
        }
        let reason = match &error {
            IssueError::PinnedToOtherKey(pinned) => format!("user has another pinned key {pinned}"),
            IssueError::KeyPinnedElsewhere => "key pinned to another user".to_owned(),
            IssueError::RateLimited(count) => format!("rate limited after {count} certificates in 24h"),
            other => other.to_string(),
        };
        let event = AuditEvent {
            kind: AuditKind::IssuanceRefused,
            actor: actor.to_owned(),
            subject: user_id.to_string(),
            details: vec![detail.clone(), ("reason", reason)],
        };
        match self.store.append_event(event).await {
            Ok(_) => {
                tracing::info!(user = %user_id, refused = %detail.1, %error, "issuance refused");
                error
            }
            Err(store_error) => IssueError::Store(store_error),
        }
    }
}

/// The `identity-reset` entry: the issuance's facts plus what a client needs to prove the change
/// was approved (both fingerprints, both admins, the reason, the request id).
fn reset_event(issuance: AuditEvent, old_key: &KeyFingerprint, request: &ApprovalRequest) -> AuditEvent {
    let mut details = issuance.details;
    details.extend([
        ("old-key-sha256", old_key.to_hex()),
        ("request-id", request.id.to_string()),
        ("requested-by", request.requested_by.clone()),
        (
            "approved-by",
            request.approval.as_ref().map(|(by, _)| by.clone()).unwrap_or_default(),
        ),
        ("reason", request.reason.clone()),
        ("revocation-reason", request.revocation_reason.to_string()),
    ]);
    AuditEvent {
        kind: AuditKind::IdentityReset,
        details,
        ..issuance
    }
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Step 7 (and any caller that answers with a log index): wakes the sequencer and waits until `entry` has a log index, at most the bound.
/// The local sequencer publishes the indices it gives; the store is asked only when no local
/// progress shows the entry for `LOG_INDEX_POLL` (another replica sequences, or a long wait).
pub async fn wait_for_log_index<S: IssuanceStore>(
    log_wait: &LogWait,
    store: &S,
    entry: &LogEntryRef,
) -> Result<u64, IssueError> {
    if let Some(index) = entry.leaf_index {
        return Ok(index);
    }
    // Subscribed before the first look, so that no batch goes unnoticed in between.
    let mut sequenced = log_wait.sequencer.sequenced();
    log_wait.sequencer.wake();
    let deadline = tokio::time::Instant::now() + log_wait.bound;
    let mut store_check = tokio::time::Instant::now() + LOG_INDEX_POLL;
    loop {
        if let Some(index) = log_wait.sequencer.recent_index(entry.entry_id) {
            return Ok(index);
        }
        if tokio::time::Instant::now() >= store_check {
            if let Some(index) = store.log_index(entry).await? {
                return Ok(index);
            }
            store_check = tokio::time::Instant::now() + LOG_INDEX_POLL;
        }
        let progressed = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                changed = sequenced.changed() => {
                    // A stopped sequencer: fall back to the store rather than spinning.
                    if changed.is_err() {
                        tokio::time::sleep_until(store_check).await;
                    }
                }
                () = tokio::time::sleep_until(store_check) => {}
            }
        })
        .await;
        if progressed.is_err() {
            tracing::error!(entry_id = entry.entry_id, bound = ?log_wait.bound, "audit log lagging: certificate withheld");
            return Err(IssueError::LogLagging(log_wait.bound));
        }
    }
}
