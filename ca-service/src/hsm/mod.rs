//! The HSM: the only code that speaks PKCS#11 (through cryptoki).
//!
//! One `Pkcs11` context per process, a login session that is opened first and never closed, and a
//! bounded pool of sessions with cached key handles (`pool`). Private keys never leave the token:
//! the rest of the service signs through `Signer` (`signer`), which exposes only "sign" and "public
//! key" and verifies every signature with the public key before returning it.
//!
//! Errors are sorted into the recovery classes of hsm.md:
//! - retry: the session is gone; open a new one and retry once;
//! - re-login: the token forgot the login; log in again and retry once;
//! - device: the token or module is gone; trip the breaker (callers get `Unavailable`) and rebuild
//!   the whole context in the background, with backoff, until it works;
//! - PIN: never retried, never looped on.

mod der;
mod pool;
mod signer;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256, Sha384};
use thiserror::Error;

pub use pool::Hsm;
use pool::SessionLease;
pub use signer::{LeaseSigner, Signed, Signer, Verifier};

/// The key types the CA (and the audit log) can hold on the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256, signatures over SHA-256 (the default).
    EcdsaP256,
    /// ECDSA on NIST P-384, signatures over SHA-384.
    EcdsaP384,
    /// RSA 2048-bit, PKCS#1 v1.5 signatures over SHA-256.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// RSA 3072-bit, PKCS#1 v1.5 signatures over SHA-256.
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    /// RSA 4096-bit, PKCS#1 v1.5 signatures over SHA-256.
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl KeyAlgorithm {
    /// Every supported algorithm, for help texts and tests.
    pub const ALL: [KeyAlgorithm; 5] = [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
    ];

    /// The name used in config files and `GetCaInfo`.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
        }
    }

    /// Parses a config name such as `ecdsa-p256`.
    pub fn from_name(name: &str) -> Option<KeyAlgorithm> {
        KeyAlgorithm::ALL.into_iter().find(|algorithm| algorithm.name() == name)
    }

    /// The X.509 signature algorithm of certificates this key signs.
    pub fn signature_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
        }
    }

    fn rsa_bits(self) -> Option<u64> {
        match self {
            KeyAlgorithm::Rsa2048 => Some(2048),
            KeyAlgorithm::Rsa3072 => Some(3072),
            KeyAlgorithm::Rsa4096 => Some(4096),
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => None,
        }
    }

    fn curve_oid(self) -> Option<&'static [u8]> {
        match self {
            KeyAlgorithm::EcdsaP256 => Some(der::OID_P256),
            KeyAlgorithm::EcdsaP384 => Some(der::OID_P384),
            _ => None,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// The user PIN, wiped from memory when dropped; never printed.
#[derive(Clone, zeroize::ZeroizeOnDrop)]
pub struct Pin(String);

impl Pin {
    /// Wraps a PIN read from a file or the environment (surrounding whitespace removed).
    pub fn new(pin: &str) -> Pin {
        Pin(pin.trim().to_owned())
    }

    fn auth_pin(&self) -> AuthPin {
        AuthPin::new(self.0.clone().into())
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Pin(<redacted>)")
    }
}

/// How to reach the token.
#[derive(Debug, Clone)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module (`libsofthsm2.so` or a vendor's).
    pub module: PathBuf,
    /// Label of the token; the slot is found by it (slot ids change at every SoftHSM token init).
    pub token_label: String,
    /// The user PIN.
    pub pin: Pin,
    /// Number of signing sessions in the pool.
    pub pool_size: usize,
    /// How long a caller waits for a free session before `PoolExhausted`.
    pub session_wait: Duration,
}

/// What can go wrong in the HSM layer.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The PKCS#11 module could not be loaded or initialised.
    #[error("cannot load the PKCS#11 module {module}: {detail}")]
    Module {
        /// The module path.
        module: PathBuf,
        /// What the loader said.
        detail: String,
    },
    /// No token with this label is present.
    #[error("no token labelled {0:?} is present in the PKCS#11 module")]
    TokenNotFound(String),
    /// The token refused the PIN (incorrect, locked or expired). Never retried.
    #[error("the token refused the PIN ({0}); check the PIN source; the CA will not retry it")]
    PinRejected(&'static str),
    /// No private key with this label is on the token.
    #[error("no private key labelled {0:?} on the token")]
    KeyNotFound(String),
    /// A key with this label already exists (the ceremony refuses to reuse labels).
    #[error("a key labelled {0:?} already exists on the token")]
    KeyExists(String),
    /// The key on the token is not of the expected type.
    #[error("key {label:?} is not a {expected} key")]
    WrongKeyType {
        /// The key label.
        label: String,
        /// The expected algorithm.
        expected: KeyAlgorithm,
    },
    /// The token is unreachable (device error, removed, breaker open); retry later.
    #[error("the HSM is unavailable")]
    Unavailable,
    /// The token's signature did not verify with the key's public key (a faulty token); nothing
    /// signed with it was released.
    #[error("the HSM's signature failed verification with the public key of {0:?}")]
    SignatureCheck(String),
    /// Every session was busy for longer than the configured wait.
    #[error("all HSM sessions are busy")]
    PoolExhausted,
    /// The token refused to open the sessions the pool needs (`CKR_SESSION_COUNT`): a configuration error.
    #[error(
        "the token allows only {open} open session(s) but hsm.pool_size = {pool_size} needs {needed} \
         (one login session plus one per pooled signer); set hsm.pool_size = {suggested}"
    )]
    SessionLimit {
        /// Sessions open when the token refused another one.
        open: usize,
        /// The configured pool size.
        pool_size: usize,
        /// Sessions the pool needs.
        needed: usize,
        /// The largest pool the token allows (1 signs on the login session).
        suggested: usize,
    },
    /// Any other PKCS#11 failure; the detail is for logs only, never for callers.
    #[error("PKCS#11 {function} failed: {detail}")]
    Failed {
        /// The PKCS#11 function.
        function: String,
        /// The return value or cryptoki error.
        detail: String,
    },
}

/// The recovery class of a PKCS#11 failure (hsm.md, "Errors sorted into classes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorClass {
    /// The session is gone: drop it, open a new one, retry once.
    Retry,
    /// A cached key handle went stale: look it up again, retry once.
    StaleHandle,
    /// The token forgot the login: log in again, retry once.
    Relogin,
    /// The device is gone: open the breaker and rebuild the context.
    Device,
    /// The PIN is wrong, locked or expired: stop using the token.
    Pin,
    /// Anything else: fail this operation only.
    Other,
}

fn classify(error: &CryptokiError) -> ErrorClass {
    match error {
        CryptokiError::Pkcs11(rv, _) => match rv {
            RvError::SessionHandleInvalid | RvError::SessionClosed => ErrorClass::Retry,
            RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid => ErrorClass::StaleHandle,
            RvError::UserNotLoggedIn => ErrorClass::Relogin,
            RvError::DeviceError
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::CryptokiNotInitialized
            | RvError::GeneralError => ErrorClass::Device,
            RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired => ErrorClass::Pin,
            _ => ErrorClass::Other,
        },
        _ => ErrorClass::Other,
    }
}

fn pin_error(error: &CryptokiError) -> HsmError {
    let reason = match error {
        CryptokiError::Pkcs11(RvError::PinLocked, _) => "locked",
        CryptokiError::Pkcs11(RvError::PinExpired, _) => "expired",
        _ => "incorrect",
    };
    HsmError::PinRejected(reason)
}

fn failed(error: CryptokiError) -> HsmError {
    match &error {
        CryptokiError::Pkcs11(rv, function) => HsmError::Failed {
            function: format!("{function:?}"),
            detail: format!("{rv:?}"),
        },
        other => HsmError::Failed {
            function: "cryptoki".to_owned(),
            detail: other.to_string(),
        },
    }
}

/// A key on the token: its label, algorithm and public half. The private half stays on the token.
#[derive(Debug, Clone)]
pub struct HsmKey {
    label: String,
    algorithm: KeyAlgorithm,
    /// DER SubjectPublicKeyInfo.
    spki_der: Vec<u8>,
    /// The `subjectPublicKey` bit-string contents (SEC1 point or PKCS#1 RSAPublicKey).
    public_key: Vec<u8>,
}

impl HsmKey {
    /// The key's label on the token.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// DER SubjectPublicKeyInfo of the public key.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The `subjectPublicKey` contents: a SEC1 point (EC) or a PKCS#1 `RSAPublicKey` (RSA).
    pub fn public_key_bytes(&self) -> &[u8] {
        &self.public_key
    }

    /// PEM ("PUBLIC KEY") of the public key.
    pub fn public_key_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki_der.clone()))
    }
}

/// Loads the module and initialises it for multi-threaded use.
fn initialize(module: &PathBuf) -> Result<Pkcs11, HsmError> {
    let pkcs11 = Pkcs11::new(module).map_err(|error| HsmError::Module {
        module: module.clone(),
        detail: error.to_string(),
    })?;
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|error| HsmError::Module {
            module: module.clone(),
            detail: error.to_string(),
        })?;
    Ok(pkcs11)
}

fn find_slot(pkcs11: &Pkcs11, token_label: &str) -> Result<Slot, HsmError> {
    for slot in pkcs11.get_slots_with_initialized_token().map_err(failed)? {
        let info = pkcs11.get_token_info(slot).map_err(failed)?;
        if info.label().trim_end() == token_label {
            return Ok(slot);
        }
    }
    Err(HsmError::TokenNotFound(token_label.to_owned()))
}

fn login(session: &Session, pin: &Pin) -> Result<(), HsmError> {
    match session.login(UserType::User, Some(&pin.auth_pin())) {
        Ok(()) => Ok(()),
        Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(error) if classify(&error) == ErrorClass::Pin => Err(pin_error(&error)),
        Err(error) => Err(failed(error)),
    }
}

fn find_one(session: &Session, class: ObjectClass, label: &str) -> Result<Option<ObjectHandle>, CryptokiError> {
    let template = [Attribute::Class(class), Attribute::Label(label.as_bytes().to_vec())];
    let handles = session.find_objects(&template)?;
    Ok(handles.first().copied())
}

/// Reads the public key labelled `label` and checks it has the expected algorithm.
fn read_public_key(session: &Session, label: &str, algorithm: KeyAlgorithm) -> Result<HsmKey, HsmError> {
    let handle = find_one(session, ObjectClass::PUBLIC_KEY, label)
        .map_err(failed)?
        .ok_or_else(|| HsmError::KeyNotFound(label.to_owned()))?;
    let wrong_type = || HsmError::WrongKeyType {
        label: label.to_owned(),
        expected: algorithm,
    };
    let (spki_der, public_key) = if let Some(curve_oid) = algorithm.curve_oid() {
        let attributes = session
            .get_attributes(
                handle,
                &[AttributeType::KeyType, AttributeType::EcParams, AttributeType::EcPoint],
            )
            .map_err(failed)?;
        let mut params = None;
        let mut point = None;
        for attribute in attributes {
            match attribute {
                Attribute::KeyType(key_type) if key_type != KeyType::EC => return Err(wrong_type()),
                Attribute::EcParams(value) => params = Some(value),
                Attribute::EcPoint(value) => point = Some(value),
                _ => {}
            }
        }
        if params.as_deref() != Some(curve_oid) {
            return Err(wrong_type());
        }
        let point = point.as_deref().and_then(der::unwrap_ec_point).ok_or_else(wrong_type)?;
        (der::ec_spki(curve_oid, &point), point)
    } else {
        let attributes = session
            .get_attributes(
                handle,
                &[
                    AttributeType::KeyType,
                    AttributeType::Modulus,
                    AttributeType::PublicExponent,
                ],
            )
            .map_err(failed)?;
        let mut modulus = None;
        let mut exponent = None;
        for attribute in attributes {
            match attribute {
                Attribute::KeyType(key_type) if key_type != KeyType::RSA => return Err(wrong_type()),
                Attribute::Modulus(value) => modulus = Some(value),
                Attribute::PublicExponent(value) => exponent = Some(value),
                _ => {}
            }
        }
        let (modulus, exponent) = modulus.zip(exponent).ok_or_else(wrong_type)?;
        let bits = modulus.iter().skip_while(|byte| **byte == 0).count() as u64 * 8;
        if Some(bits) != algorithm.rsa_bits() {
            return Err(wrong_type());
        }
        let rsa_public_key = der::rsa_public_key(&modulus, &exponent);
        (der::rsa_spki(&rsa_public_key), rsa_public_key)
    };
    Ok(HsmKey {
        label: label.to_owned(),
        algorithm,
        spki_der,
        public_key,
    })
}

/// Generates a key pair on the token: private half sensitive, non-extractable, on the token,
/// with a random `CKA_ID` shared by both halves.
fn generate_key_pair(session: &Session, label: &str, algorithm: KeyAlgorithm) -> Result<(), HsmError> {
    if find_one(session, ObjectClass::PRIVATE_KEY, label)
        .map_err(failed)?
        .is_some()
        || find_one(session, ObjectClass::PUBLIC_KEY, label)
            .map_err(failed)?
            .is_some()
    {
        return Err(HsmError::KeyExists(label.to_owned()));
    }
    let id: [u8; 16] = rand::random();
    let mut public_template = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    let mechanism = match (algorithm.curve_oid(), algorithm.rsa_bits()) {
        (Some(curve_oid), _) => {
            public_template.push(Attribute::EcParams(curve_oid.to_vec()));
            Mechanism::EccKeyPairGen
        }
        (None, Some(bits)) => {
            public_template.push(Attribute::ModulusBits(bits.into()));
            public_template.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            Mechanism::RsaPkcsKeyPairGen
        }
        (None, None) => unreachable!("every algorithm is EC or RSA"),
    };
    let private_template = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    session
        .generate_key_pair(&mechanism, &public_template, &private_template)
        .map_err(failed)?;
    Ok(())
}

/// Signs `message` with the private key behind `handle`, in the format X.509 expects for `algorithm`.
fn sign_with(
    session: &Session,
    handle: ObjectHandle,
    algorithm: KeyAlgorithm,
    message: &[u8],
) -> Result<Vec<u8>, CryptokiError> {
    match algorithm {
        // SoftHSM has no CKM_ECDSA_SHA256: hash here, sign the digest with CKM_ECDSA, convert to DER.
        KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
            let digest = if algorithm == KeyAlgorithm::EcdsaP256 {
                Sha256::digest(message).to_vec()
            } else {
                Sha384::digest(message).to_vec()
            };
            let raw = session.sign(&Mechanism::Ecdsa, handle, &digest)?;
            der::ecdsa_raw_to_der(&raw).ok_or(CryptokiError::InvalidValue)
        }
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            session.sign(&Mechanism::Sha256RsaPkcs, handle, message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Named {
        algorithm: KeyAlgorithm,
    }

    #[test]
    fn config_names_and_display_names_agree() {
        for algorithm in KeyAlgorithm::ALL {
            let parsed: Named = toml::from_str(&format!("algorithm = {:?}", algorithm.name())).expect("config name");
            assert_eq!(parsed.algorithm, algorithm);
            assert_eq!(KeyAlgorithm::from_name(algorithm.name()), Some(algorithm));
            assert_eq!(algorithm.to_string(), algorithm.name());
        }
        assert_eq!(KeyAlgorithm::from_name("rsa-1024"), None);
    }

    #[test]
    fn error_classes_follow_hsm_md() {
        let class = |rv| classify(&CryptokiError::Pkcs11(rv, cryptoki::context::Function::Sign));
        assert_eq!(class(RvError::SessionHandleInvalid), ErrorClass::Retry);
        assert_eq!(class(RvError::SessionClosed), ErrorClass::Retry);
        assert_eq!(class(RvError::UserNotLoggedIn), ErrorClass::Relogin);
        assert_eq!(class(RvError::KeyHandleInvalid), ErrorClass::StaleHandle);
        assert_eq!(class(RvError::DeviceRemoved), ErrorClass::Device);
        assert_eq!(class(RvError::TokenNotPresent), ErrorClass::Device);
        assert_eq!(class(RvError::CryptokiNotInitialized), ErrorClass::Device);
        assert_eq!(class(RvError::PinLocked), ErrorClass::Pin);
        assert_eq!(class(RvError::DataLenRange), ErrorClass::Other);
    }

    #[test]
    fn pins_are_redacted_in_debug_output() {
        let pin = Pin::new(" 123456\n");
        assert_eq!(format!("{pin:?}"), "Pin(<redacted>)");
    }
}
