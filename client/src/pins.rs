//! The local pin store for contacts: the key each user's certificate certified when this device first saw it.
//!
//! Nextcloud clients cache a sharee's certificate on first use (nextcloud-e2ee.md §1.2, §4); we pin the
//! SHA-256 of its SubjectPublicKeyInfo, so a renewal for the same key is accepted and a *different key*
//! is `PinError::KeyChanged`, an error the application must show. It is never accepted silently: the
//! only way past it is `PinStore::forget`, an explicit decision by the user.
//!
//! `ContactTrust` combines the pin with the CA check (`identity::check_certificate`) for the folder code.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::identity::{self, IdentityError};
use crate::transport::CaInfo;

/// Why a contact's certificate was not accepted by the pin store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// The user's certificate now certifies another key than the one pinned: a key change or an attack.
    #[error("the key of {user_id:?} changed: pinned {pinned}, presented {presented}")]
    KeyChanged {
        /// The contact.
        user_id: String,
        /// The pinned SPKI SHA-256, hex.
        pinned: String,
        /// The SPKI SHA-256 of the presented certificate, hex.
        presented: String,
    },
    /// The certificate is not a PEM X.509 certificate.
    #[error("not a certificate: {0}")]
    Certificate(String),
    /// The pin file cannot be read or written.
    #[error("pin store {path}: {source}")]
    Io {
        /// The pin file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The pin file is not the JSON this module writes.
    #[error("pin store {path} is corrupt: {source}")]
    Corrupt {
        /// The pin file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// What `PinStore::check` concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinOutcome {
    /// First sight of this user: their key is now pinned.
    NewlyPinned,
    /// The key equals the pinned one.
    Matches,
}

/// Pins kept in a JSON file (`{"user id": "spki sha-256 hex"}`), saved on every new pin.
#[derive(Debug)]
pub struct PinStore {
    path: PathBuf,
    pins: BTreeMap<String, String>,
}

impl PinStore {
    /// Opens the pin file at `path`; a missing file is an empty store.
    pub fn open(path: &Path) -> Result<PinStore, PinError> {
        let pins = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| PinError::Corrupt {
                path: path.to_owned(),
                source,
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(PinError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Ok(PinStore {
            path: path.to_owned(),
            pins,
        })
    }

    /// The pinned SPKI SHA-256 of `user_id`, if any.
    pub fn pinned(&self, user_id: &str) -> Option<&str> {
        self.pins.get(user_id).map(String::as_str)
    }

    /// Checks `certificate_pem` for `user_id` against the pin, pinning (and saving) on first use.
    /// Does not check who issued the certificate: `ContactTrust` does both.
    pub fn check(&mut self, user_id: &str, certificate_pem: &str) -> Result<PinOutcome, PinError> {
        let presented = spki_fingerprint(certificate_pem)?;
        match self.pins.get(user_id) {
            Some(pinned) if *pinned == presented => Ok(PinOutcome::Matches),
            Some(pinned) => Err(PinError::KeyChanged {
                user_id: user_id.to_owned(),
                pinned: pinned.clone(),
                presented,
            }),
            None => {
                self.pins.insert(user_id.to_owned(), presented);
                self.save()?;
                Ok(PinOutcome::NewlyPinned)
            }
        }
    }

    /// Drops the pin of `user_id`, so that their next certificate is pinned afresh. Only on the user's
    /// explicit decision (after checking the new key out of band); returns whether a pin existed.
    pub fn forget(&mut self, user_id: &str) -> Result<bool, PinError> {
        let existed = self.pins.remove(user_id).is_some();
        if existed {
            self.save()?;
        }
        Ok(existed)
    }

    /// Writes the whole file through a temporary file and a rename, so a crash leaves the old or the new pins.
    fn save(&self) -> Result<(), PinError> {
        let io_error = |source| PinError::Io {
            path: self.path.clone(),
            source,
        };
        let directory = match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let mut temporary = tempfile::NamedTempFile::new_in(directory).map_err(io_error)?;
        let json = serde_json::to_vec_pretty(&self.pins).map_err(|source| PinError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        temporary.write_all(&json).map_err(io_error)?;
        temporary.as_file().sync_all().map_err(io_error)?;
        temporary.persist(&self.path).map_err(|error| io_error(error.error))?;
        Ok(())
    }
}

/// SHA-256 of the certificate's SubjectPublicKeyInfo, hex (the same fingerprint the CA pins).
pub fn spki_fingerprint(certificate_pem: &str) -> Result<String, PinError> {
    let block = pem::parse(certificate_pem).map_err(|error| PinError::Certificate(error.to_string()))?;
    let (_, certificate) = x509_parser::parse_x509_certificate(block.contents())
        .map_err(|error| PinError::Certificate(error.to_string()))?;
    Ok(hex::encode(Sha256::digest(certificate.public_key().raw)))
}

/// Why a folder user's certificate is not trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The certificate was not issued by our CA for this user, or is not valid now.
    #[error(transparent)]
    NotFromCa(#[from] IdentityError),
    /// The certificate conflicts with the pinned key, or the pin store failed.
    #[error(transparent)]
    Pin(#[from] PinError),
}

/// Trusts a certificate for a user when the CA issued it to that user and its key matches the local pin.
#[derive(Debug)]
pub struct ContactTrust {
    /// The CA, as fetched and checked at enrollment.
    pub ca: CaInfo,
    /// This device's pins.
    pub pins: PinStore,
}

impl ContactTrust {
    /// Checks the certificate against the CA, then against the pin (pinning on first use).
    pub fn check(&mut self, user_id: &str, certificate_pem: &str) -> Result<PinOutcome, TrustError> {
        identity::check_certificate(certificate_pem, &self.ca, user_id, None)?;
        Ok(self.pins.check(user_id, certificate_pem)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(json: &str) -> String {
        let value: serde_json::Value = serde_json::from_str(json).expect("json");
        value["certificatePem"].as_str().expect("certificate").to_owned()
    }

    #[test]
    fn first_use_pins_the_same_key_matches_and_a_changed_key_is_an_error_that_persists() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("pins.json");
        let alice = certificate(include_str!("../testdata/nextcloud/alice.json"));
        let bob = certificate(include_str!("../testdata/nextcloud/bob.json"));

        let mut pins = PinStore::open(&path).expect("open");
        assert_eq!(pins.check("alice", &alice).expect("first"), PinOutcome::NewlyPinned);
        assert_eq!(pins.check("alice", &alice).expect("again"), PinOutcome::Matches);
        assert_eq!(
            pins.pinned("alice"),
            Some(spki_fingerprint(&alice).expect("spki").as_str())
        );

        // Another device state, reloaded from disk: the pin survived, and bob's key under alice's name is refused.
        let mut reloaded = PinStore::open(&path).expect("reopen");
        match reloaded.check("alice", &bob) {
            Err(PinError::KeyChanged {
                user_id,
                pinned,
                presented,
            }) => {
                assert_eq!(user_id, "alice");
                assert_eq!(pinned, spki_fingerprint(&alice).expect("spki"));
                assert_eq!(presented, spki_fingerprint(&bob).expect("spki"));
            }
            other => panic!("expected KeyChanged, got {other:?}"),
        }
        // The refusal did not replace the pin.
        assert_eq!(reloaded.check("alice", &alice).expect("still"), PinOutcome::Matches);
        assert!(matches!(
            reloaded.check("alice", "garbage"),
            Err(PinError::Certificate(_))
        ));

        // Only an explicit forget lets a new key in.
        assert!(reloaded.forget("alice").expect("forget"));
        assert_eq!(reloaded.check("alice", &bob).expect("re-pin"), PinOutcome::NewlyPinned);
        assert_eq!(
            PinStore::open(&path).expect("reopen").pinned("alice"),
            Some(spki_fingerprint(&bob).expect("spki").as_str())
        );
    }

    #[test]
    fn a_corrupt_pin_file_is_an_error_not_an_empty_store() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("pins.json");
        std::fs::write(&path, b"not json").expect("write");
        assert!(matches!(PinStore::open(&path), Err(PinError::Corrupt { .. })));
    }
}
