//! The session pool: one context, one login session that is never closed, N signing sessions with
//! cached key handles, a breaker that trips on device errors and a background rebuild.
//!
//! Concurrency: `Shared::backend` is `None` while the breaker is open. A lease holds an `Arc` of the
//! backend it was taken from, so a rebuild never pulls a session out from under a signer; sessions
//! of a replaced backend are simply dropped when their lease ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::object::{ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{
    ErrorClass, HsmConfig, HsmError, HsmKey, KeyAlgorithm, classify, failed, find_one, find_slot, generate_key_pair,
    initialize, login, read_public_key, sign_with,
};

/// A handle on the token, cheap to clone; all clones share one context and one pool.
#[derive(Clone)]
pub struct Hsm {
    shared: Arc<Shared>,
}

struct Shared {
    config: HsmConfig,
    /// The live backend, or `None` while the breaker is open.
    backend: RwLock<Option<Arc<Backend>>>,
    /// One permit per pooled session: bounds concurrent signers.
    permits: Arc<Semaphore>,
    /// Set while a rebuild thread runs, so that only one runs.
    rebuilding: AtomicBool,
    /// Set when the token refused the PIN: never retried, never looped on.
    pin_rejected: AtomicBool,
    /// Generation counter for backends.
    generations: AtomicU64,
}

struct Backend {
    pkcs11: Pkcs11,
    slot: Slot,
    generation: u64,
    /// Opened first and never closed: closing pool sessions can never log the application out.
    login_session: Mutex<PooledSession>,
    /// The token allows a single session (a smartcard) and `pool_size` is 1: sign on the login
    /// session, under its mutex, instead of on pooled sessions.
    signs_on_login_session: bool,
    idle: Mutex<Vec<PooledSession>>,
}

struct PooledSession {
    session: Session,
    /// Private key handles by label, looked up once per session.
    handles: HashMap<String, ObjectHandle>,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Hsm")
            .field("module", &self.shared.config.module)
            .field("token_label", &self.shared.config.token_label)
            .field("pool_size", &self.shared.config.pool_size)
            .finish()
    }
}

/// Recovers a mutex whose holder panicked: the guarded data (sessions, handles) stays valid.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Backend {
    /// Initialises the module, finds the token, logs in and opens the pool one session at a time
    /// (parallel logins with a wrong PIN could lock the token).
    fn open(config: &HsmConfig, generation: u64) -> Result<Backend, HsmError> {
        let pkcs11 = initialize(&config.module)?;
        let result = Backend::open_with(pkcs11.clone(), config, generation);
        if result.is_err() {
            // Leave the module uninitialised so that the next attempt starts clean.
            let _ = pkcs11.finalize();
        }
        result
    }

    fn open_with(pkcs11: Pkcs11, config: &HsmConfig, generation: u64) -> Result<Backend, HsmError> {
        let slot = find_slot(&pkcs11, &config.token_label)?;
        let login_session = pkcs11.open_rw_session(slot).map_err(failed)?;
        login(&login_session, &config.pin)?;
        let mut idle = Vec::with_capacity(config.pool_size);
        let mut signs_on_login_session = false;
        for _ in 0..config.pool_size {
            match pkcs11.open_ro_session(slot) {
                Ok(session) => idle.push(PooledSession {
                    session,
                    handles: HashMap::new(),
                }),
                // A one-session token (smartcard) with a pool of one: the login session signs too.
                Err(CryptokiError::Pkcs11(RvError::SessionCount, _)) if config.pool_size == 1 => {
                    tracing::warn!("the token allows a single session: signing on the login session");
                    signs_on_login_session = true;
                }
                // Refuse at startup rather than fail one request in N later: the pool is sized by
                // the semaphore, which assumes every pooled session can be open at once.
                Err(CryptokiError::Pkcs11(RvError::SessionCount, _)) => {
                    let open = idle.len() + 1;
                    return Err(HsmError::SessionLimit {
                        open,
                        pool_size: config.pool_size,
                        needed: config.pool_size + 1,
                        suggested: (open - 1).max(1),
                    });
                }
                Err(error) => return Err(failed(error)),
            }
        }
        Ok(Backend {
            pkcs11,
            slot,
            generation,
            login_session: Mutex::new(PooledSession {
                session: login_session,
                handles: HashMap::new(),
            }),
            signs_on_login_session,
            idle: Mutex::new(idle),
        })
    }

    fn relogin(&self, config: &HsmConfig) -> Result<(), HsmError> {
        let mut login_session = lock(&self.login_session);
        match login(&login_session.session, &config.pin) {
            Err(HsmError::Failed { .. }) => {
                // The login session itself is gone: replace it (the old one is dropped and closed).
                *login_session = PooledSession {
                    session: self.pkcs11.open_rw_session(self.slot).map_err(failed)?,
                    handles: HashMap::new(),
                };
                login(&login_session.session, &config.pin)
            }
            other => other,
        }
    }
}

impl Hsm {
    /// Connects to the token: one context, one login session, `pool_size` signing sessions.
    ///
    /// Blocking: call it before the runtime starts or from `spawn_blocking`.
    pub fn connect(config: HsmConfig) -> Result<Hsm, HsmError> {
        let pool_size = config.pool_size.max(1);
        let config = HsmConfig { pool_size, ..config };
        let backend = Backend::open(&config, 0)?;
        Ok(Hsm {
            shared: Arc::new(Shared {
                config,
                backend: RwLock::new(Some(Arc::new(backend))),
                permits: Arc::new(Semaphore::new(pool_size)),
                rebuilding: AtomicBool::new(false),
                pin_rejected: AtomicBool::new(false),
                generations: AtomicU64::new(1),
            }),
        })
    }

    /// The pool size in force.
    pub fn pool_size(&self) -> usize {
        self.shared.config.pool_size
    }

    /// True while the breaker is closed (the token answered at the last attempt).
    pub fn is_available(&self) -> bool {
        self.current_backend().is_ok()
    }

    fn current_backend(&self) -> Result<Arc<Backend>, HsmError> {
        if self.shared.pin_rejected.load(Ordering::Acquire) {
            return Err(HsmError::PinRejected("rejected earlier"));
        }
        self.shared
            .backend
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or(HsmError::Unavailable)
    }

    /// Loads the public half of the key labelled `label`, checking its algorithm.
    pub fn load_key(&self, label: &str, algorithm: KeyAlgorithm) -> Result<HsmKey, HsmError> {
        let backend = self.current_backend()?;
        let session = lock(&backend.login_session);
        read_public_key(&session.session, label, algorithm).inspect_err(|error| self.note_failure(&backend, error))
    }

    /// Generates a new key pair labelled `label` (the ceremony); refuses an existing label.
    pub fn generate_key(&self, label: &str, algorithm: KeyAlgorithm) -> Result<HsmKey, HsmError> {
        let backend = self.current_backend()?;
        let session = lock(&backend.login_session);
        generate_key_pair(&session.session, label, algorithm)?;
        read_public_key(&session.session, label, algorithm)
    }

    /// Takes a signing session from the pool, waiting at most `wait`.
    pub(super) async fn lease_within(&self, wait: Duration) -> Result<SessionLease, HsmError> {
        let backend = self.current_backend()?;
        let permit = tokio::time::timeout(wait, self.shared.permits.clone().acquire_owned())
            .await
            .map_err(|_| HsmError::PoolExhausted)?
            // The semaphore is never closed.
            .map_err(|_| HsmError::Unavailable)?;
        let session = lock(&backend.idle).pop();
        Ok(SessionLease {
            hsm: self.clone(),
            backend,
            session,
            _permit: permit,
        })
    }

    /// How long a caller waits for a free session before `PoolExhausted`.
    pub fn session_wait(&self) -> Duration {
        self.shared.config.session_wait
    }

    /// Signs `message` with `key` on a blocking thread (one lease, released at the end) without
    /// verifying the signature: the raw signing rate the issuance bench compares the service with.
    /// The service signs only through `Signer`, which verifies every signature it returns.
    pub async fn danger_sign_unverified(&self, key: &HsmKey, message: Vec<u8>) -> Result<Vec<u8>, HsmError> {
        let mut lease = self.lease_within(self.shared.config.session_wait).await?;
        let key = key.clone();
        tokio::task::spawn_blocking(move || lease.sign(&key, &message))
            .await
            .map_err(|_| HsmError::Unavailable)?
    }

    /// Records a failure: device-class errors open the breaker and start a rebuild.
    fn note_failure(&self, backend: &Arc<Backend>, error: &HsmError) {
        match error {
            HsmError::Unavailable => self.trip(backend.generation),
            HsmError::PinRejected(_) => {
                tracing::error!("the token refused the PIN; signing stops until the CA is restarted with a valid PIN");
                self.shared.pin_rejected.store(true, Ordering::Release);
            }
            _ => {}
        }
    }

    /// Opens the breaker for `generation` (if still current) and rebuilds in the background.
    fn trip(&self, generation: u64) {
        {
            let mut backend = self
                .shared
                .backend
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match backend.as_ref() {
                Some(current) if current.generation == generation => {
                    tracing::error!("HSM device error: breaker open, answering UNAVAILABLE until the token is back");
                    let old = backend.take();
                    if let Some(old) = old {
                        // Finalising makes every outstanding session fail fast instead of hanging.
                        let _ = old.pkcs11.clone().finalize();
                    }
                }
                _ => return,
            }
        }
        if self.shared.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        let hsm = self.clone();
        let spawned = std::thread::Builder::new()
            .name("hsm-rebuild".to_owned())
            .spawn(move || hsm.rebuild());
        if spawned.is_err() {
            tracing::error!("could not start the HSM rebuild thread");
            self.shared.rebuilding.store(false, Ordering::Release);
        }
    }

    /// Rebuilds the context with exponential backoff (100 ms to 5 s) until it works or the PIN is refused.
    fn rebuild(&self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            std::thread::sleep(backoff);
            let generation = self.shared.generations.fetch_add(1, Ordering::AcqRel);
            match Backend::open(&self.shared.config, generation) {
                Ok(backend) => {
                    *self
                        .shared
                        .backend
                        .write()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(backend));
                    tracing::info!("HSM reconnected: breaker closed");
                    break;
                }
                Err(HsmError::PinRejected(reason)) => {
                    tracing::error!(reason, "the token refused the PIN while reconnecting; giving up");
                    self.shared.pin_rejected.store(true, Ordering::Release);
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "HSM still unavailable");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.shared.rebuilding.store(false, Ordering::Release);
    }
}

/// A signing session taken from the pool; goes back to the pool when dropped.
pub struct SessionLease {
    hsm: Hsm,
    backend: Arc<Backend>,
    /// `None` when the pooled session was dropped after an error (a new one is opened on demand).
    session: Option<PooledSession>,
    _permit: OwnedSemaphorePermit,
}

/// The retries one signature has used, one allowance per recovery class (hsm.md: "retried once").
#[derive(Debug, Default)]
struct Retries {
    session: bool,
    handle: bool,
    login: bool,
    /// The last attempt failed with CKR_FUNCTION_FAILED (a second one in a row is a device error).
    function_failed: bool,
}

impl Retries {
    /// Uses the allowance of `class`; false when it was used already.
    fn take(&mut self, class: ErrorClass) -> bool {
        let used = match class {
            ErrorClass::Retry => &mut self.session,
            ErrorClass::StaleHandle => &mut self.handle,
            ErrorClass::Relogin => &mut self.login,
            ErrorClass::Device | ErrorClass::Pin | ErrorClass::Other => return false,
        };
        !std::mem::replace(used, true)
    }
}

/// Why one signing attempt failed.
enum Attempt {
    Pkcs11(CryptokiError),
    Hsm(HsmError),
}

impl SessionLease {
    /// Signs `message` with `key`, applying the retry, stale-handle and re-login classes once each
    /// (each class has its own allowance: a lost session followed by a lost login is retried twice).
    /// The signature is not verified here: `Signer` does that.
    ///
    /// Blocking (PKCS#11 calls): run it on a blocking thread.
    pub fn sign(&mut self, key: &HsmKey, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let mut retries = Retries::default();
        loop {
            let error = match self.attempt(key, message) {
                Ok(signature) => return Ok(signature),
                Err(Attempt::Hsm(error)) => return Err(error),
                Err(Attempt::Pkcs11(error)) => error,
            };
            let class = match classify(&error) {
                // A second CKR_FUNCTION_FAILED in a row counts as a device error (hsm.md).
                ErrorClass::Other if matches!(error, CryptokiError::Pkcs11(RvError::FunctionFailed, _)) => {
                    if retries.function_failed {
                        ErrorClass::Device
                    } else {
                        retries.function_failed = true;
                        ErrorClass::Retry
                    }
                }
                class => {
                    retries.function_failed = false;
                    class
                }
            };
            tracing::warn!(?class, error = %error, key = key.label(), "PKCS#11 signing error");
            match class {
                ErrorClass::Retry if retries.take(class) => self.session = None,
                ErrorClass::StaleHandle if retries.take(class) => {
                    if self.backend.signs_on_login_session {
                        lock(&self.backend.login_session).handles.remove(key.label());
                    } else if let Some(pooled) = self.session.as_mut() {
                        pooled.handles.remove(key.label());
                    }
                }
                ErrorClass::Relogin if retries.take(class) => {
                    if let Err(error) = self.backend.relogin(&self.hsm.shared.config) {
                        self.hsm.note_failure(&self.backend, &error);
                        return Err(error);
                    }
                }
                ErrorClass::Pin => {
                    let error = super::pin_error(&error);
                    self.hsm.note_failure(&self.backend, &error);
                    return Err(error);
                }
                ErrorClass::Device | ErrorClass::Retry | ErrorClass::StaleHandle | ErrorClass::Relogin => {
                    self.session = None;
                    self.hsm.trip(self.backend.generation);
                    return Err(HsmError::Unavailable);
                }
                ErrorClass::Other => return Err(failed(error)),
            }
        }
    }

    fn attempt(&mut self, key: &HsmKey, message: &[u8]) -> Result<Vec<u8>, Attempt> {
        if self.backend.signs_on_login_session {
            // The semaphore has one permit, so this lock is only ever contended by load_key/relogin.
            return sign_on(&mut lock(&self.backend.login_session), key, message);
        }
        if self.session.is_none() {
            let session = self
                .backend
                .pkcs11
                .open_ro_session(self.backend.slot)
                .map_err(Attempt::Pkcs11)?;
            self.session = Some(PooledSession {
                session,
                handles: HashMap::new(),
            });
        }
        let Some(pooled) = self.session.as_mut() else {
            unreachable!("a session was opened just above");
        };
        sign_on(pooled, key, message)
    }
}

/// Signs on `pooled`, looking the key handle up once per session.
fn sign_on(pooled: &mut PooledSession, key: &HsmKey, message: &[u8]) -> Result<Vec<u8>, Attempt> {
    let handle = match pooled.handles.get(key.label()) {
        Some(handle) => *handle,
        None => {
            let handle = find_one(&pooled.session, ObjectClass::PRIVATE_KEY, key.label())
                .map_err(Attempt::Pkcs11)?
                .ok_or_else(|| Attempt::Hsm(HsmError::KeyNotFound(key.label().to_owned())))?;
            pooled.handles.insert(key.label().to_owned(), handle);
            handle
        }
    };
    sign_with(&pooled.session, handle, key.algorithm(), message).map_err(Attempt::Pkcs11)
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        if let Some(pooled) = self.session.take() {
            lock(&self.backend.idle).push(pooled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_recovery_class_has_its_own_single_retry() {
        let mut retries = Retries::default();
        assert!(retries.take(ErrorClass::Retry), "a lost session is retried");
        assert!(retries.take(ErrorClass::Relogin), "then a lost login too");
        assert!(retries.take(ErrorClass::StaleHandle), "then a stale handle too");
        assert!(!retries.take(ErrorClass::Retry), "but each only once");
        assert!(!retries.take(ErrorClass::Relogin));
        assert!(!retries.take(ErrorClass::StaleHandle));
        assert!(
            !Retries::default().take(ErrorClass::Device),
            "a device error is never retried"
        );
        assert!(!Retries::default().take(ErrorClass::Pin), "nor a PIN error");
    }
}
