//! Issuance and key pinning: the CA's policy, as numbered steps.
//!
//! `IssueCertificate` (api.md):
//! 1. validate the user id (a request without a valid user names no subject: refused, not logged)
//!    and the CSR size;
//! 2. parse and check the CSR (encoding, key policy, self-signature, CN = user id);
//! 3. read the pin state: a different key pinned to the user, or this key pinned to someone else,
//!    is refused; a renewal is rate-limited; every refusal from here and from steps 1 (size) and 2
//!    is answered only after its audit entry is committed;
//! 4. refuse up front (UNAVAILABLE) while the audit log is stalled; build the certificate from the
//!    profile and sign it on the HSM;
//! 5. verify the signature with the CA public key;
//! 6. commit pin, certificate and audit entry in one transaction; the store's constraints decide
//!    races (one key per user, one user per key, unique serials), so step 3 is only a fast path;
//! 7. wait (bounded) until the sequencer has given the audit entry its log index; past the bound
//!    the certificate stays committed but is not released (`LogLagging`, UNAVAILABLE: fail closed);
//! 8. only then release the certificate, with its log index.

pub mod csr;

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use time::OffsetDateTime;

use crate::audit::{AuditEvent, AuditKind};
use crate::hsm::{Hsm, HsmError, HsmKey, KeyAlgorithm, SessionLease};
use crate::identity::{KeyFingerprint, SerialNumber, StoredCertificate, UserId, UserIdError};
use crate::store::StoreError;
use crate::transparency::sequencer::SequencerHandle;
pub use csr::{CheckedCsr, CsrError, MAX_CSR_BYTES};

/// Where an audit entry landed: its row in the store's outbox, and its log index when the store
/// sequenced it in the same transaction (the embedded store, `transparency::inline`); otherwise
/// the index is assigned later, by the sequencer (`IdentityStore::log_index`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntryRef {
    /// The store's id of the entry (`audit_entries.id`): opaque, unique, not the log index.
    pub entry_id: i64,
    /// SHA-256 of the stored entry bytes.
    pub entry_hash: [u8; 32],
    /// The log index, if the entry was sequenced in the transaction that wrote it.
    pub leaf_index: Option<u64>,
}

/// The pin state of a (user, key) pair and the user's recent issuance, read before signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinState {
    /// The key pinned to the user, if any.
    pub user_pin: Option<KeyFingerprint>,
    /// True when the key is pinned to a different user.
    pub key_pinned_elsewhere: bool,
    /// How many certificates the user received at or after the time asked about (the rate limit).
    pub certificates_since: u64,
}

/// A signed certificate ready to be committed.
#[derive(Debug, Clone)]
pub struct NewCertificate {
    /// Whose it is.
    pub user_id: UserId,
    /// The certified key's fingerprint.
    pub key_fingerprint: KeyFingerprint,
    /// The certified key's DER SubjectPublicKeyInfo (stored with the pin).
    pub spki_der: Vec<u8>,
    /// The serial.
    pub serial: SerialNumber,
    /// The certificate, DER.
    pub certificate_der: Vec<u8>,
    /// Validity bounds, for lookups.
    pub not_before: OffsetDateTime,
    /// Validity bounds, for lookups.
    pub not_after: OffsetDateTime,
}

/// The outcome of committing an issuance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Pin (if new), certificate and audit entry are durable.
    Committed {
        /// True when the key was already pinned to the user.
        renewal: bool,
        /// The audit entry.
        entry: LogEntryRef,
    },
    /// Another key is pinned to the user (a concurrent request won); nothing was written.
    PinnedToOtherKey(KeyFingerprint),
    /// The key is pinned to another user; nothing was written.
    KeyPinnedElsewhere,
}

/// What the issuer needs from a store. Implementations: `store::sqlite` and `store::postgres`,
/// held to this contract by the shared suite in `store::conformance`.
///
/// Contract: `commit_issuance` is one transaction that writes the pin (if the user has none), the
/// certificate and the audit entry, or nothing. Uniqueness of a user's pin, of a key's owner and of
/// serials is enforced by the database, so that concurrent callers (threads or replicas) cannot
/// both win. `StoreError::Unavailable` means nothing was written and the caller may retry later.
pub trait IdentityStore: Send + Sync + 'static {
    /// Reads the pin state of `user` and `key`, and counts the certificates issued to `user` at or
    /// after `since`, in one read.
    fn pin_state(
        &self,
        user: &UserId,
        key: &KeyFingerprint,
        since: OffsetDateTime,
    ) -> impl Future<Output = Result<PinState, StoreError>> + Send;

    /// Commits a signed certificate with its audit event (see the trait contract).
    fn commit_issuance(
        &self,
        certificate: NewCertificate,
        event: AuditEvent,
    ) -> impl Future<Output = Result<CommitOutcome, StoreError>> + Send;

    /// Appends an audit event on its own (refusals).
    fn append_event(&self, event: AuditEvent) -> impl Future<Output = Result<LogEntryRef, StoreError>> + Send;

    /// Records the CA certificate with SHA-256 `certificate_sha256` and appends `event` (its
    /// ceremony, as the log first sees it) in one transaction, unless that certificate was
    /// recorded before: then writes nothing and returns `None`. Concurrent callers record it once.
    fn record_ca_certificate(
        &self,
        certificate_sha256: [u8; 32],
        event: AuditEvent,
    ) -> impl Future<Output = Result<Option<LogEntryRef>, StoreError>> + Send;

    /// The newest certificate of each user that has one.
    fn latest_certificates(
        &self,
        users: Vec<UserId>,
    ) -> impl Future<Output = Result<Vec<StoredCertificate>, StoreError>> + Send;

    /// The log index the sequencer gave `entry`, or `None` while it is pending.
    fn log_index(&self, entry: &LogEntryRef) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Checks that the store answers.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Shows the store how many issuances queue for the HSM, for a store that groups commits and
    /// may hold one briefly while more certificates are on their way (the embedded store). The
    /// default ignores it.
    fn follow_signing(&self, _signing: Arc<SigningQueue>) {}
}

/// The issuances at the HSM: waiting for a session, or building, signing or verifying a certificate.
/// While there are at least as many as the pool has sessions, the HSM sets the pace: a commit that
/// waits a little for the next signed certificates costs no throughput and saves a transaction (on
/// SoftHSM, CPU that signing needs).
#[derive(Debug)]
pub struct SigningQueue {
    in_flight: AtomicUsize,
    sessions: usize,
}

impl SigningQueue {
    /// A queue for an HSM pool of `sessions` sessions.
    pub fn new(sessions: usize) -> SigningQueue {
        SigningQueue {
            in_flight: AtomicUsize::new(0),
            sessions,
        }
    }

    /// True while there are at least as many issuances at the HSM as sessions: every session is
    /// busy or spoken for, so a commit held for more certificates leaves none idle.
    pub fn saturated(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) >= self.sessions
    }

    /// Counts one issuance in until the returned ticket is dropped.
    pub(crate) fn enter(self: &Arc<SigningQueue>) -> SigningTicket {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        SigningTicket(Arc::clone(self))
    }
}

/// One issuance counted in a `SigningQueue`, counted out when dropped.
pub(crate) struct SigningTicket(Arc<SigningQueue>);

impl Drop for SigningTicket {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

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

/// The certificate profile, from config.
#[derive(Debug, Clone)]
pub struct Profile {
    /// How long certificates are valid.
    pub validity: Duration,
    /// How far `notBefore` is set back, for clients with slow clocks.
    pub backdate: Duration,
    /// How many certificates one user may get in 24 hours (first issuance included).
    pub max_certificates_per_day: u64,
}

/// The CA's signing identity: the key on the token and its certificate chain.
#[derive(Debug, Clone)]
pub struct CaIdentity {
    /// The CA key on the HSM.
    pub key: HsmKey,
    /// The CA certificate, DER; its public key is `key`'s.
    pub certificate_der: Vec<u8>,
    /// The chain above the CA certificate (an external root), DER, nearest first; empty for a root CA.
    pub parents_der: Vec<Vec<u8>>,
}

impl CaIdentity {
    /// The chain as PEM: CA certificate first, then its parents.
    pub fn chain_pem(&self) -> String {
        std::iter::once(&self.certificate_der)
            .chain(&self.parents_der)
            .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
            .collect()
    }
}

/// A request to certify a key.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// Who asks (the authenticated principal; `dev` in dev mode).
    pub actor: String,
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
    /// The entry's log index, when the log is enabled (`None` without `[audit]`).
    pub log_index: Option<u64>,
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
    /// The HSM failed or is busy.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The certificate could not be built (internal).
    #[error("certificate construction failed: {0}")]
    Build(String),
    /// The signed certificate did not verify with the CA key; nothing was released.
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

/// The issuer: policy, profile, HSM and store.
pub struct Issuer<S> {
    hsm: Hsm,
    ca: Arc<CaIdentity>,
    ca_verifier: Arc<CaVerifier>,
    profile: Profile,
    store: Arc<S>,
    log_wait: Option<LogWait>,
    signing: Arc<SigningQueue>,
}

impl<S: IdentityStore> Issuer<S> {
    /// Builds an issuer; the CA certificate must carry the HSM key's public key.
    pub fn new(hsm: Hsm, ca: CaIdentity, profile: Profile, store: Arc<S>) -> Result<Issuer<S>, String> {
        let (_, certificate) = x509_parser::parse_x509_certificate(&ca.certificate_der)
            .map_err(|error| format!("cannot parse the CA certificate: {error}"))?;
        if certificate.public_key().raw != ca.key.spki_der() {
            return Err(format!(
                "the CA certificate's public key is not the public key of HSM key {:?}",
                ca.key.label()
            ));
        }
        let ca_verifier = CaVerifier::new(&ca.key)?;
        let signing = Arc::new(SigningQueue::new(hsm.pool_size()));
        store.follow_signing(Arc::clone(&signing));
        Ok(Issuer {
            hsm,
            ca: Arc::new(ca),
            ca_verifier: Arc::new(ca_verifier),
            profile,
            store,
            log_wait: None,
            signing,
        })
    }

    /// Makes issuance wait (bounded) for the sequencer to index each entry (step 7).
    pub fn with_log_wait(self, log_wait: LogWait) -> Issuer<S> {
        Issuer {
            log_wait: Some(log_wait),
            ..self
        }
    }

    /// The CA identity.
    pub fn ca(&self) -> &CaIdentity {
        &self.ca
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The HSM.
    pub fn hsm(&self) -> &Hsm {
        &self.hsm
    }

    /// Runs `IssueCertificate` (steps in the module docs).
    pub async fn issue(&self, request: IssueRequest) -> Result<Issued, IssueError> {
        // 1. Validate the user id and the CSR size.
        let user_id = UserId::parse(&request.user_id)?;
        let csr_detail = || ("csr-sha256", hex::encode(sha2_digest(request.csr_pem.as_bytes())));
        if request.csr_pem.len() > MAX_CSR_BYTES {
            let error = IssueError::CsrTooLarge(request.csr_pem.len());
            return Err(self.refuse(&request.actor, &user_id, csr_detail(), error).await);
        }
        // 2. Parse and check the CSR.
        let checked = match csr::check(&user_id, &request.csr_pem) {
            Ok(checked) => checked,
            Err(error) => return Err(self.refuse(&request.actor, &user_id, csr_detail(), error.into()).await),
        };
        let key_detail = || ("key-sha256", checked.fingerprint.to_hex());
        // 3. Pin state and rate limit (a fast path: step 6 decides races).
        let since = OffsetDateTime::now_utc() - time::Duration::days(1);
        let pin_state = self.store.pin_state(&user_id, &checked.fingerprint, since).await?;
        if let Some(pinned) = pin_state.user_pin.filter(|pinned| *pinned != checked.fingerprint) {
            return Err(self
                .refuse(
                    &request.actor,
                    &user_id,
                    key_detail(),
                    IssueError::PinnedToOtherKey(pinned),
                )
                .await);
        }
        if pin_state.user_pin.is_none() && pin_state.key_pinned_elsewhere {
            return Err(self
                .refuse(&request.actor, &user_id, key_detail(), IssueError::KeyPinnedElsewhere)
                .await);
        }
        if pin_state.user_pin.is_some() && pin_state.certificates_since >= self.profile.max_certificates_per_day {
            let error = IssueError::RateLimited(pin_state.certificates_since);
            return Err(self.refuse(&request.actor, &user_id, key_detail(), error).await);
        }
        // 4. Refuse while the log cannot record it; build and sign; 5. verify.
        if let Some(log_wait) = &self.log_wait
            && !log_wait.sequencer.log_healthy()
        {
            return Err(IssueError::LogStalled);
        }
        let certificate = self.sign_certificate(&user_id, &checked).await?;
        // 6. Commit pin, certificate and audit entry in one transaction.
        let renewal_hint = pin_state.user_pin.is_some();
        let event = AuditEvent {
            kind: AuditKind::issuance(renewal_hint),
            actor: request.actor.clone(),
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
        match self.store.commit_issuance(certificate, event).await? {
            CommitOutcome::Committed { renewal, entry } => {
                // 7. Wait for the log index; 8. release.
                let log_index = self.wait_for_log_index(&entry).await?;
                tracing::info!(user = %user_id, serial = %serial.to_hex(), renewal, ?log_index, "certificate issued");
                Ok(Issued {
                    certificate_der,
                    serial,
                    key_fingerprint: checked.fingerprint,
                    renewal,
                    entry,
                    log_index,
                })
            }
            CommitOutcome::PinnedToOtherKey(pinned) => Err(self
                .refuse(
                    &request.actor,
                    &user_id,
                    key_detail(),
                    IssueError::PinnedToOtherKey(pinned),
                )
                .await),
            CommitOutcome::KeyPinnedElsewhere => Err(self
                .refuse(&request.actor, &user_id, key_detail(), IssueError::KeyPinnedElsewhere)
                .await),
        }
    }

    /// Step 7: wakes the sequencer and waits until `entry` has a log index, at most the bound.
    /// The local sequencer publishes the indices it gives; the store is asked only when no local
    /// progress shows the entry for `LOG_INDEX_POLL` (another replica sequences, or a long wait).
    async fn wait_for_log_index(&self, entry: &LogEntryRef) -> Result<Option<u64>, IssueError> {
        let Some(log_wait) = &self.log_wait else {
            return Ok(None);
        };
        if entry.leaf_index.is_some() {
            return Ok(entry.leaf_index);
        }
        // Subscribed before the first look, so that no batch goes unnoticed in between.
        let mut sequenced = log_wait.sequencer.sequenced();
        log_wait.sequencer.wake();
        let deadline = tokio::time::Instant::now() + log_wait.bound;
        let mut store_check = tokio::time::Instant::now() + LOG_INDEX_POLL;
        loop {
            if let Some(index) = log_wait.sequencer.recent_index(entry.entry_id) {
                return Ok(Some(index));
            }
            if tokio::time::Instant::now() >= store_check {
                if let Some(index) = self.store.log_index(entry).await? {
                    return Ok(Some(index));
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

    /// Logs a policy refusal and returns the error to answer with. If the refusal cannot be logged,
    /// the caller gets the store error instead (fail closed: no answer without its audit entry).
    /// `detail` names what was refused (the key's or the CSR's SHA-256).
    async fn refuse(
        &self,
        actor: &str,
        user_id: &UserId,
        detail: (&'static str, String),
        error: IssueError,
    ) -> IssueError {
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

    async fn sign_certificate(&self, user_id: &UserId, checked: &CheckedCsr) -> Result<NewCertificate, IssueError> {
        let _signing = self.signing.enter();
        let now = OffsetDateTime::now_utc();
        let not_before = now - self.profile.backdate;
        let not_after = now + self.profile.validity;
        let serial = SerialNumber::generate();
        let mut params = rcgen::CertificateParams::default();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(serial.as_bytes()));
        params.not_before = not_before;
        params.not_after = not_after;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, user_id.as_str());
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        // rcgen without a software crypto backend cannot hash: give it the subject key identifier.
        params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(checked.fingerprint.key_identifier());
        let subject_key = rcgen::SubjectPublicKeyInfo::from_der(&checked.spki_der)
            .map_err(|error| IssueError::Build(error.to_string()))?;

        let lease = self.hsm.lease().await?;
        let ca = Arc::clone(&self.ca);
        let ca_verifier = Arc::clone(&self.ca_verifier);
        let certificate_der = tokio::task::spawn_blocking(move || {
            let certificate_der = {
                let signer = LeaseSigner::new(lease, &ca.key);
                let issuer = rcgen::Issuer::from_ca_cert_der(&ca.certificate_der.as_slice().into(), &signer)
                    .map_err(|error| IssueError::Build(error.to_string()))?;
                let certificate =
                    params
                        .signed_by(&subject_key, &issuer)
                        .map_err(|error| match signer.take_error() {
                            Some(hsm_error) => IssueError::Hsm(hsm_error),
                            None => IssueError::Build(error.to_string()),
                        })?;
                certificate.der().to_vec()
                // The session goes back to the pool here: verifying needs no HSM.
            };
            ca_verifier.verify(&certificate_der)?;
            Ok::<_, IssueError>(certificate_der)
        })
        .await
        .map_err(|_| IssueError::Build("signing task panicked".to_owned()))??;

        Ok(NewCertificate {
            user_id: user_id.clone(),
            key_fingerprint: checked.fingerprint,
            spki_der: checked.spki_der.clone(),
            serial,
            certificate_der,
            not_before,
            not_after,
        })
    }
}

/// Checks each issued certificate's signature with the CA's public key before release (step 5): an HSM
/// that returned a faulty signature (an RSA-CRT fault can even leak the key) never gets it out.
/// The key is parsed once: aws-lc then keeps its RSA Montgomery context, which parsing per certificate
/// rebuilt every time (about 100 µs per RSA-3072 certificate, a fifth of the service's overhead there).
/// Public for the issuance bench, which times the check it makes.
pub struct CaVerifier {
    public_key: aws_lc_rs::signature::ParsedPublicKey,
    signature_oid: x509_parser::oid_registry::Oid<'static>,
}

impl CaVerifier {
    /// A verifier for signatures of the CA key `key`.
    pub fn new(key: &HsmKey) -> Result<CaVerifier, String> {
        use aws_lc_rs::signature;
        use x509_parser::oid_registry;
        let (algorithm, signature_oid): (&'static dyn signature::VerificationAlgorithm, _) = match key.algorithm() {
            KeyAlgorithm::EcdsaP256 => (
                &signature::ECDSA_P256_SHA256_ASN1,
                oid_registry::OID_SIG_ECDSA_WITH_SHA256,
            ),
            KeyAlgorithm::EcdsaP384 => (
                &signature::ECDSA_P384_SHA384_ASN1,
                oid_registry::OID_SIG_ECDSA_WITH_SHA384,
            ),
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => (
                &signature::RSA_PKCS1_2048_8192_SHA256,
                oid_registry::OID_PKCS1_SHA256WITHRSA,
            ),
        };
        let public_key = signature::ParsedPublicKey::new(algorithm, key.public_key_bytes())
            .map_err(|error| format!("cannot use HSM key {:?} to verify signatures: {error}", key.label()))?;
        Ok(CaVerifier {
            public_key,
            signature_oid,
        })
    }

    /// The certificate parses, names the CA key's signature algorithm (in and outside the signed part),
    /// and its signature verifies.
    fn verify(&self, certificate_der: &[u8]) -> Result<(), IssueError> {
        let (_, certificate) =
            x509_parser::parse_x509_certificate(certificate_der).map_err(|_| IssueError::SignatureCheck)?;
        if certificate.signature_algorithm.algorithm != self.signature_oid
            || certificate.tbs_certificate.signature.algorithm != self.signature_oid
        {
            return Err(IssueError::SignatureCheck);
        }
        if self.verifies(certificate.tbs_certificate.as_ref(), &certificate.signature_value.data) {
            Ok(())
        } else {
            Err(IssueError::SignatureCheck)
        }
    }

    /// True when `signature` (in X.509's format) is the CA key's signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.public_key.verify_sig(message, signature).is_ok()
    }
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// rcgen's signer over a leased HSM session. rcgen's error type cannot carry our error, so the
/// HSM error is kept here and recovered after signing fails.
pub struct LeaseSigner<'a> {
    lease: RefCell<SessionLease>,
    key: &'a HsmKey,
    error: RefCell<Option<HsmError>>,
}

impl<'a> LeaseSigner<'a> {
    /// Wraps a lease for signing with `key`.
    pub fn new(lease: SessionLease, key: &'a HsmKey) -> LeaseSigner<'a> {
        LeaseSigner {
            lease: RefCell::new(lease),
            key,
            error: RefCell::new(None),
        }
    }

    /// The HSM error behind the last failed signature, if any.
    pub fn take_error(&self) -> Option<HsmError> {
        self.error.borrow_mut().take()
    }
}

impl rcgen::PublicKeyData for LeaseSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.key.public_key_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.key.algorithm().signature_algorithm()
    }
}

impl rcgen::SigningKey for LeaseSigner<'_> {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.lease.borrow_mut().sign(self.key, message).map_err(|error| {
            *self.error.borrow_mut() = Some(error);
            rcgen::Error::RemoteKeyError
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signing_queue_is_saturated_while_as_many_issuances_as_sessions_are_in() {
        let queue = Arc::new(SigningQueue::new(2));
        assert!(!queue.saturated(), "empty");
        let first = queue.enter();
        assert!(!queue.saturated(), "a session is free");
        let second = queue.enter();
        assert!(queue.saturated(), "every session busy");
        let third = queue.enter();
        drop(first);
        assert!(queue.saturated(), "one waiting takes the freed session");
        drop(third);
        drop(second);
        assert!(!queue.saturated(), "counted out when dropped");
    }
}
