//! Revocation: the reasons an admin may give, `RevocationStore` (revocations and the CRLs that
//! list them), and `CrlPublisher`, which signs a new CRL (in `crl`) with the CA key after every
//! revocation and periodically.
//!
//! CRL numbers only grow, across restarts and replicas: a publisher reads the latest number and
//! the revoked certificates in one read, signs number + 1, and stores it only if no CRL of that
//! number exists (another replica's); otherwise it reads again. So the latest CRL lists every
//! revocation committed before its read.

pub mod crl;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use self::crl::{CrlError, CrlParams, RevokedEntry};
use crate::audit::LogEntryRef;
use crate::hsm::Signer;
use crate::identity::{SerialNumber, UserId};
use crate::issuer::CaCertificate;
use crate::storage::StoreError;

/// What an admin revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevocationTarget {
    /// One certificate.
    Serial(SerialNumber),
    /// Every unrevoked certificate of a user.
    User(UserId),
}

/// A committed revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Whose certificates they were.
    pub user: UserId,
    /// The serials revoked by this call.
    pub serials: Vec<SerialNumber>,
    /// The audit entry recording it.
    pub entry: LogEntryRef,
}

/// Why nothing was revoked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeRefused {
    /// No such certificate, or the user has none.
    #[error("no such certificate or user")]
    NotFound,
    /// Everything targeted is revoked already.
    #[error("already revoked")]
    AlreadyRevoked,
}

/// A signed CRL as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCrl {
    /// Its CRL number.
    pub number: u64,
    /// Its thisUpdate.
    pub this_update: OffsetDateTime,
    /// Its nextUpdate.
    pub next_update: OffsetDateTime,
    /// How many certificates it lists.
    pub revoked_count: u64,
    /// The CRL, DER.
    pub der: Vec<u8>,
}

/// What revocation and CRL publication need from a store. Implementations: both stores, held to
/// it by `store::conformance`.
///
/// Contract: `revoke` records the revocation of every targeted unrevoked certificate with one
/// audit entry (actor `actor`, subject the user, the serials and the reason) in one transaction,
/// or nothing; `store_crl` inserts a CRL unless one with its number exists (then `false`).
pub trait RevocationStore: Send + Sync + 'static {
    /// Revokes `target` (see the trait contract).
    fn revoke(
        &self,
        target: RevocationTarget,
        reason: RevocationReason,
        actor: String,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Result<Revoked, RevokeRefused>, StoreError>> + Send;

    /// The latest CRL number (if any) and every revoked certificate, in one read.
    fn crl_inputs(&self) -> impl Future<Output = Result<(Option<u64>, Vec<RevokedEntry>), StoreError>> + Send;

    /// Stores `crl` unless a CRL with its number exists.
    fn store_crl(&self, crl: StoredCrl) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The CRL with the highest number.
    fn latest_crl(&self) -> impl Future<Output = Result<Option<StoredCrl>, StoreError>> + Send;
}

/// Why a CRL was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Signing failed (the HSM is down or refused).
    #[error(transparent)]
    Crl(#[from] CrlError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Other replicas kept publishing the numbers this one tried.
    #[error("lost the race for a CRL number {0} times")]
    Contended(usize),
}

/// How often a publisher retries after another replica took its CRL number.
const PUBLISH_ATTEMPTS: usize = 5;

/// How CRLs are published.
#[derive(Debug, Clone, Copy)]
pub struct CrlConfig {
    /// A new CRL is signed at least this often, even without revocations.
    pub refresh: Duration,
    /// nextUpdate = thisUpdate + this; longer than `refresh`, so a relying party always has a
    /// current CRL.
    pub validity: Duration,
}

/// Signs and stores CRLs with the CA key.
pub struct CrlPublisher<S> {
    signer: Signer,
    ca: Arc<CaCertificate>,
    store: Arc<S>,
    config: CrlConfig,
    // One publication at a time in this process; replicas race on the CRL number instead.
    publishing: tokio::sync::Mutex<()>,
    // Wakes `run` to publish now (a reset revoked certificates, or a publication failed).
    refresh: Arc<tokio::sync::Notify>,
}

impl<S: RevocationStore> CrlPublisher<S> {
    /// A publisher signing with `signer`, the key of `ca`.
    pub fn new(signer: Signer, ca: Arc<CaCertificate>, store: Arc<S>, config: CrlConfig) -> CrlPublisher<S> {
        CrlPublisher {
            signer,
            ca,
            store,
            config,
            publishing: tokio::sync::Mutex::new(()),
            refresh: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// What wakes the background task to publish now (given to the issuer, whose resets revoke).
    pub fn refresh_handle(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.refresh)
    }

    /// Asks the background task to publish as soon as it can.
    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Signs and verifies a probe with the CA key: whether a CRL could be signed now.
    pub async fn check_signer(&self) -> Result<(), crate::hsm::HsmError> {
        self.signer.probe().await
    }

    /// Signs and stores a CRL over every revocation committed so far, numbered one above the
    /// latest (see the module docs).
    pub async fn publish(&self) -> Result<StoredCrl, PublishError> {
        let _one_at_a_time = self.publishing.lock().await;
        for _ in 0..PUBLISH_ATTEMPTS {
            let (latest, revoked) = self.store.crl_inputs().await?;
            let this_update = OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .unwrap_or(OffsetDateTime::now_utc());
            let params = CrlParams {
                number: latest.map_or(1, |number| number.saturating_add(1)),
                this_update,
                next_update: this_update + self.config.validity,
            };
            let der = crl::sign_crl(&self.signer, &self.ca, &params, &revoked).await?;
            let crl = StoredCrl {
                number: params.number,
                this_update: params.this_update,
                next_update: params.next_update,
                revoked_count: u64::try_from(revoked.len()).unwrap_or(u64::MAX),
                der,
            };
            if self.store.store_crl(crl.clone()).await? {
                tracing::info!(number = crl.number, revoked = crl.revoked_count, "CRL published");
                return Ok(crl);
            }
        }
        Err(PublishError::Contended(PUBLISH_ATTEMPTS))
    }

    /// The background task: publishes at once unless a CRL younger than `refresh` is stored, then
    /// whenever the latest CRL is `refresh` old, until `stop`. Failures are logged and retried
    /// within a minute.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        const RETRY: Duration = Duration::from_secs(60);
        loop {
            let wait = match self.store.latest_crl().await {
                Ok(Some(crl)) => {
                    let age = OffsetDateTime::now_utc() - crl.this_update;
                    let age = Duration::try_from(age).unwrap_or(Duration::ZERO);
                    self.config.refresh.saturating_sub(age)
                }
                Ok(None) => Duration::ZERO,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the latest CRL; retrying");
                    RETRY
                }
            };
            let wait = if wait.is_zero() {
                match self.publish().await {
                    Ok(_) => self.config.refresh,
                    Err(error) => {
                        tracing::error!(%error, "cannot publish a CRL; retrying");
                        RETRY.min(self.config.refresh)
                    }
                }
            } else {
                wait
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = self.refresh.notified() => {
                    if let Err(error) = self.publish().await {
                        tracing::error!(%error, "cannot publish a CRL; retrying");
                    }
                }
            }
        }
    }
}

/// An RFC 5280 §5.3.1 reason code an admin may give. `unspecified` is not offered: every
/// revocation says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    /// keyCompromise (1).
    KeyCompromise,
    /// affiliationChanged (3).
    AffiliationChanged,
    /// superseded (4): a reset replaced the key.
    Superseded,
    /// cessationOfOperation (5).
    CessationOfOperation,
    /// privilegeWithdrawn (9).
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// Every reason, in code order.
    pub const ALL: [RevocationReason; 5] = [
        RevocationReason::KeyCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn,
    ];

    /// The RFC 5280 code (the CRL entry's reasonCode, and what the stores keep).
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::KeyCompromise => 1,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
            RevocationReason::PrivilegeWithdrawn => 9,
        }
    }

    /// The reason with RFC 5280 code `code`, if it is one an admin may give.
    pub fn from_code(code: i64) -> Option<RevocationReason> {
        RevocationReason::ALL
            .into_iter()
            .find(|reason| i64::from(reason.code()) == code)
    }

    /// The RFC 5280 name, as the audit log records it.
    pub fn name(self) -> &'static str {
        match self {
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
            RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_through_their_rfc_5280_codes() {
        for reason in RevocationReason::ALL {
            assert_eq!(RevocationReason::from_code(reason.code().into()), Some(reason));
        }
        for refused in [0, 2, 6, 7, 8, 10, -1] {
            assert_eq!(RevocationReason::from_code(refused), None, "code {refused}");
        }
        assert_eq!(RevocationReason::KeyCompromise.to_string(), "keyCompromise");
    }
}
