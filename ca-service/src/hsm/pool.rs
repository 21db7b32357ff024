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
use cryptoki::error::Error as CryptokiError;
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
    login_session: Mutex<Session>,
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
        for _ in 0..config.pool_size {
            let session = pkcs11.open_ro_session(slot).map_err(failed)?;
            idle.push(PooledSession {
                session,
                handles: HashMap::new(),
            });
        }
        Ok(Backend {
            pkcs11,
            slot,
            generation,
            login_session: Mutex::new(login_session),
            idle: Mutex::new(idle),
        })
    }

    fn relogin(&self, config: &HsmConfig) -> Result<(), HsmError> {
        let mut login_session = lock(&self.login_session);
        match login(&login_session, &config.pin) {
            Err(HsmError::Failed { .. }) => {
                // The login session itself is gone: replace it (the old one is dropped and closed).
                *login_session = self.pkcs11.open_rw_session(self.slot).map_err(failed)?;
                login(&login_session, &config.pin)
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
        read_public_key(&session, label, algorithm).inspect_err(|error| self.note_failure(&backend, error))
    }

    /// Generates a new key pair labelled `label` (the ceremony); refuses an existing label.
    pub fn generate_key(&self, label: &str, algorithm: KeyAlgorithm) -> Result<HsmKey, HsmError> {
        let backend = self.current_backend()?;
        let session = lock(&backend.login_session);
        generate_key_pair(&session, label, algorithm)?;
        read_public_key(&session, label, algorithm)
    }

    /// Takes a signing session from the pool, waiting at most the configured time.
    pub async fn lease(&self) -> Result<SessionLease, HsmError> {
        let backend = self.current_backend()?;
        let wait = self.shared.config.session_wait;
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

    /// Signs `message` with `key` on a blocking thread (one lease, released at the end).
    pub async fn sign(&self, key: &HsmKey, message: Vec<u8>) -> Result<Vec<u8>, HsmError> {
        let mut lease = self.lease().await?;
        let key = key.clone();
        tokio::task::spawn_blocking(move || lease.sign(&key, &message))
            .await
            .map_err(|_| HsmError::Unavailable)?
    }

    /// Signs and verifies a fixed message: the health probe.
    pub async fn probe(&self, key: &HsmKey) -> Result<(), HsmError> {
        const PROBE: &[u8] = b"e2ee-ca health probe";
        let signature = self.sign(key, PROBE.to_vec()).await?;
        if super::verify_signature(key, PROBE, &signature) {
            Ok(())
        } else {
            Err(HsmError::Failed {
                function: "probe".to_owned(),
                detail: "signature did not verify".to_owned(),
            })
        }
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

/// Why one signing attempt failed.
enum Attempt {
    Pkcs11(CryptokiError),
    Hsm(HsmError),
}

impl SessionLease {
    /// Signs `message` with `key`, applying the retry, stale-handle and re-login classes once each.
    ///
    /// Blocking (PKCS#11 calls): run it on a blocking thread.
    pub fn sign(&mut self, key: &HsmKey, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let mut retried = false;
        loop {
            let error = match self.attempt(key, message) {
                Ok(signature) => return Ok(signature),
                Err(Attempt::Hsm(error)) => return Err(error),
                Err(Attempt::Pkcs11(error)) => error,
            };
            let class = match classify(&error) {
                // A second CKR_FUNCTION_FAILED in a row counts as a device error (hsm.md).
                ErrorClass::Other
                    if matches!(
                        error,
                        CryptokiError::Pkcs11(cryptoki::error::RvError::FunctionFailed, _)
                    ) =>
                {
                    if retried {
                        ErrorClass::Device
                    } else {
                        ErrorClass::Retry
                    }
                }
                class => class,
            };
            tracing::warn!(?class, error = %error, key = key.label(), "PKCS#11 signing error");
            match class {
                ErrorClass::Retry if !retried => self.session = None,
                ErrorClass::StaleHandle if !retried => {
                    if let Some(pooled) = self.session.as_mut() {
                        pooled.handles.remove(key.label());
                    }
                }
                ErrorClass::Relogin if !retried => {
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
            retried = true;
        }
    }

    fn attempt(&mut self, key: &HsmKey, message: &[u8]) -> Result<Vec<u8>, Attempt> {
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
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        if let Some(pooled) = self.session.take() {
            lock(&self.backend.idle).push(pooled);
        }
    }
}
