//! The CRL: a CRL v2 over every revoked certificate, signed by the CA key on the HSM.
//! (Placeholder API until the signer lands.)

use time::OffsetDateTime;

use super::RevocationReason;
use crate::hsm::{HsmError, Signer};
use crate::identity::SerialNumber;
use crate::issuer::CaCertificate;

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Its serial.
    pub serial: SerialNumber,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
    /// Why.
    pub reason: RevocationReason,
}

/// A CRL's number and validity.
#[derive(Debug, Clone)]
pub struct CrlParams {
    /// The CRL number.
    pub number: u64,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate.
    pub next_update: OffsetDateTime,
}

/// Why a CRL could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    /// The HSM failed.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// The CRL could not be built.
    #[error("cannot build the CRL: {0}")]
    Build(String),
}

/// Signs a CRL.
pub async fn sign_crl(
    _signer: &Signer,
    _ca: &CaCertificate,
    _params: &CrlParams,
    _revoked: &[RevokedEntry],
) -> Result<Vec<u8>, CrlError> {
    Err(CrlError::Build("not yet".to_owned()))
}
