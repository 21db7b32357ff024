//! The CA's offline recovery key as this client sees it: its checked certificate, the notice a user must
//! acknowledge before their key is sealed to it, the device's record of that acknowledgement, and the deposit.
//!
//! The order is enforced by types. `prepare_escrow` reads `GetCaInfo` afresh and compares its recovery key with
//! the one acknowledged on this device (`RecoveryAcknowledgements`, a JSON file). A key not acknowledged yet (the
//! first one, or one whose fingerprint differs) comes back as a `RecoveryKeyEnabled` notice; only its
//! `acknowledge`, which records the fingerprint, makes the `AcknowledgedRecoveryKey` that `deposit_escrow` takes
//! and consumes. A recovery key that was acknowledged and is now disabled is reported, not forgotten.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer;

use crate::escrow::{self, EscrowError, RecoveryPublicKey};
use crate::protocol::folder::Account;
use crate::protocol::possession::{self, PossessionError, Purpose};
use crate::transport::{CaError, CaInfo, CaTransport};

/// Why the CA's recovery-key certificate was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryKeyError {
    /// The certificate is not one PEM "CERTIFICATE" block holding an X.509 certificate.
    #[error("the recovery-key certificate is not a PEM certificate")]
    NotACertificate,
    /// The CA public key it should verify under is not a PEM SubjectPublicKeyInfo.
    #[error("the CA public key is not a PEM SubjectPublicKeyInfo")]
    BadCaKey,
    /// The certificate's signature does not verify under the CA key.
    #[error("the recovery-key certificate is not signed by the CA key")]
    NotSignedByCa,
    /// The SHA-256 of the certified SPKI is not the fingerprint the CA reported.
    #[error("the recovery-key certificate certifies key {certified}, not the reported {reported}")]
    FingerprintMismatch {
        /// SHA-256 of the certificate's SPKI, hex.
        certified: String,
        /// The fingerprint in `GetCaInfo`.
        reported: String,
    },
    /// The certified key is not an X25519 recovery key.
    #[error(transparent)]
    Key(#[from] EscrowError),
}

/// The recovery key the CA reports (`GetCaInfoResponse.recovery`), checked: its certificate verifies under the
/// CA key and certifies the key whose SPKI hashes to `fingerprint`.
#[derive(Debug, Clone)]
pub struct RecoveryKeyInfo {
    /// The recovery key's certificate, PEM, as the CA served it.
    pub certificate_pem: String,
    /// SHA-256 of the recovery key's DER SPKI, lowercase hex.
    pub fingerprint: String,
    /// When recovery was enabled, RFC 3339, as the CA reported it.
    pub enabled_since: String,
    public_key: RecoveryPublicKey,
}

impl RecoveryKeyInfo {
    /// Checks the CA's report of an enabled recovery key against `ca_public_key_pem` (the same answer's CA key).
    pub fn verify(
        certificate_pem: &str,
        fingerprint: &str,
        enabled_since: &str,
        ca_public_key_pem: &str,
    ) -> Result<RecoveryKeyInfo, RecoveryKeyError> {
        let blocks = pem::parse_many(certificate_pem).map_err(|_| RecoveryKeyError::NotACertificate)?;
        let [block] = blocks.as_slice() else {
            return Err(RecoveryKeyError::NotACertificate);
        };
        if block.tag() != "CERTIFICATE" {
            return Err(RecoveryKeyError::NotACertificate);
        }
        let (rest, certificate) =
            x509_parser::parse_x509_certificate(block.contents()).map_err(|_| RecoveryKeyError::NotACertificate)?;
        if !rest.is_empty() {
            return Err(RecoveryKeyError::NotACertificate);
        }
        let ca_key_block = pem::parse(ca_public_key_pem).map_err(|_| RecoveryKeyError::BadCaKey)?;
        let (_, ca_key) = x509_parser::x509::SubjectPublicKeyInfo::from_der(ca_key_block.contents())
            .map_err(|_| RecoveryKeyError::BadCaKey)?;
        certificate
            .verify_signature(Some(&ca_key))
            .map_err(|_| RecoveryKeyError::NotSignedByCa)?;
        let spki_der = certificate.public_key().raw;
        let certified = hex::encode(Sha256::digest(spki_der));
        if !certified.eq_ignore_ascii_case(fingerprint) {
            return Err(RecoveryKeyError::FingerprintMismatch {
                certified,
                reported: fingerprint.to_owned(),
            });
        }
        let public_key = RecoveryPublicKey::from_spki_der(spki_der)?;
        Ok(RecoveryKeyInfo {
            certificate_pem: certificate_pem.to_owned(),
            // `from_spki_der` accepts only the DER form, so this is the certified fingerprint, in lower case.
            fingerprint: public_key.fingerprint(),
            enabled_since: enabled_since.to_owned(),
            public_key,
        })
    }

    /// The recovery key itself, to seal to.
    pub fn public_key(&self) -> &RecoveryPublicKey {
        &self.public_key
    }
}

/// A recovery key this device has not acknowledged: show it to the user and ask. It is the only way to an
/// `AcknowledgedRecoveryKey`; dropping it declines (nothing is recorded or deposited).
#[derive(Debug)]
#[must_use = "the user must be shown the recovery-key notice and asked; dropping it declines"]
pub struct RecoveryKeyEnabled {
    key: RecoveryKeyInfo,
    replaces: Option<String>,
}

impl RecoveryKeyEnabled {
    /// The recovery key's fingerprint (SHA-256 of its SPKI, lowercase hex), to show.
    pub fn fingerprint(&self) -> &str {
        &self.key.fingerprint
    }

    /// The recovery key's certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.key.certificate_pem
    }

    /// Since when the CA has had it, RFC 3339.
    pub fn enabled_since(&self) -> &str {
        &self.key.enabled_since
    }

    /// The fingerprint acknowledged on this device before, when this key is a different one.
    pub fn replaces(&self) -> Option<&str> {
        self.replaces.as_deref()
    }

    /// The user accepted the notice: records the fingerprint in `acknowledgements` (durably, before returning) and
    /// hands out the token `deposit_escrow` needs.
    pub fn acknowledge(
        self,
        acknowledgements: &mut RecoveryAcknowledgements,
    ) -> Result<AcknowledgedRecoveryKey, RecoveryError> {
        acknowledgements.record(&self.key)?;
        Ok(AcknowledgedRecoveryKey { key: self.key })
    }
}

/// Proof that the user saw and accepted this recovery key (on this device, now or earlier). Not `Clone` and not
/// `Default`: it comes only from `RecoveryKeyEnabled::acknowledge`, or from `prepare_escrow` for the key this
/// device acknowledged before, and a deposit consumes it.
#[derive(Debug)]
pub struct AcknowledgedRecoveryKey {
    key: RecoveryKeyInfo,
}

impl AcknowledgedRecoveryKey {
    /// The acknowledged recovery key's fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.key.fingerprint
    }

    /// Since when the CA has had it, RFC 3339.
    pub fn enabled_since(&self) -> &str {
        &self.key.enabled_since
    }
}

/// Where escrow stands for this device, from a fresh `GetCaInfo` and the device's acknowledgements.
#[derive(Debug)]
#[non_exhaustive]
#[must_use = "a recovery-key notice in it must be shown to the user"]
pub enum EscrowStatus {
    /// The CA has no recovery key, and this device never acknowledged one.
    Disabled,
    /// The CA has no recovery key any more; this device had acknowledged `fingerprint`. The CA accepts no
    /// deposits, but keeps earlier ones, which the officers can still release.
    DisabledSinceAcknowledged {
        /// The recovery key acknowledged on this device.
        fingerprint: String,
    },
    /// A recovery key this device has not acknowledged: show the notice before anything else.
    Notice(RecoveryKeyEnabled),
    /// The recovery key acknowledged on this device earlier is still the CA's.
    Acknowledged(AcknowledgedRecoveryKey),
}

/// Why an escrow step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// The CA refused or could not be reached.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The CA's public key is not the one this device enrolled with: nothing its answer says is trusted.
    #[error("the CA's public key is not the one this device enrolled with")]
    CaChanged,
    /// The CA refused the deposit as things stand (FAILED_PRECONDITION), most often because the recovery key
    /// changed or was disabled since it was read; `prepare_escrow` again reads the current one (a new notice).
    #[error("the CA refused the deposit: {0}")]
    Stale(String),
    /// Sealing the key to the recovery key failed.
    #[error(transparent)]
    Seal(#[from] EscrowError),
    /// The proof of possession could not be made.
    #[error(transparent)]
    Proof(#[from] PossessionError),
    /// The acknowledgement file cannot be read or written.
    #[error("recovery acknowledgements {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The acknowledgement file is not the JSON this module writes.
    #[error("recovery acknowledgements {path} are corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// The acknowledgement file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AcknowledgementRecord {
    /// The recovery key acknowledged last: its fingerprint, and since when the CA had it then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acknowledged: Option<Acknowledged>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Acknowledged {
    fingerprint: String,
    enabled_since: String,
}

/// The recovery key this device's user acknowledged, kept in a JSON file (e.g. `DEVICE/recovery.json`).
#[derive(Debug)]
pub struct RecoveryAcknowledgements {
    path: PathBuf,
    record: AcknowledgementRecord,
}

impl RecoveryAcknowledgements {
    /// Opens the file at `path`; a missing file means nothing was acknowledged.
    pub fn open(path: &Path) -> Result<RecoveryAcknowledgements, RecoveryError> {
        let record = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| RecoveryError::Corrupt {
                path: path.to_owned(),
                source,
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => AcknowledgementRecord::default(),
            Err(source) => {
                return Err(RecoveryError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Ok(RecoveryAcknowledgements {
            path: path.to_owned(),
            record,
        })
    }

    /// The fingerprint acknowledged on this device, if any.
    pub fn acknowledged_fingerprint(&self) -> Option<&str> {
        self.record
            .acknowledged
            .as_ref()
            .map(|acknowledged| acknowledged.fingerprint.as_str())
    }

    /// Where escrow stands given `ca`, a `CaInfo` just read from the CA.
    pub fn status(&self, ca: &CaInfo) -> EscrowStatus {
        let acknowledged = self.acknowledged_fingerprint();
        match (&ca.recovery, acknowledged) {
            (None, None) => EscrowStatus::Disabled,
            (None, Some(fingerprint)) => EscrowStatus::DisabledSinceAcknowledged {
                fingerprint: fingerprint.to_owned(),
            },
            (Some(key), Some(fingerprint)) if key.fingerprint.eq_ignore_ascii_case(fingerprint) => {
                EscrowStatus::Acknowledged(AcknowledgedRecoveryKey { key: key.clone() })
            }
            (Some(key), previous) => EscrowStatus::Notice(RecoveryKeyEnabled {
                key: key.clone(),
                replaces: previous.map(str::to_owned),
            }),
        }
    }

    /// Records `key` as acknowledged: written to a temporary file, synced and renamed over the file.
    fn record(&mut self, key: &RecoveryKeyInfo) -> Result<(), RecoveryError> {
        let record = AcknowledgementRecord {
            acknowledged: Some(Acknowledged {
                fingerprint: key.fingerprint.clone(),
                enabled_since: key.enabled_since.clone(),
            }),
        };
        let io = |source| RecoveryError::Io {
            path: self.path.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|source| RecoveryError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        let directory = self.path.parent().unwrap_or(Path::new("."));
        let mut temporary = tempfile::NamedTempFile::new_in(directory).map_err(io)?;
        temporary.write_all(&json).map_err(io)?;
        temporary.as_file().sync_all().map_err(io)?;
        temporary.persist(&self.path).map_err(|error| io(error.error))?;
        self.record = record;
        Ok(())
    }
}

/// Reads `GetCaInfo` afresh and says where escrow stands for this device. `enrolled` is the CA this device
/// enrolled with: an answer under another CA key is `RecoveryError::CaChanged`, since its recovery certificate
/// proves nothing.
pub async fn prepare_escrow(
    transport: &mut impl CaTransport,
    enrolled: &CaInfo,
    acknowledgements: &RecoveryAcknowledgements,
) -> Result<EscrowStatus, RecoveryError> {
    let current = transport.ca_info().await?;
    if !same_public_key(&current.public_key_pem, &enrolled.public_key_pem) {
        return Err(RecoveryError::CaChanged);
    }
    Ok(acknowledgements.status(&current))
}

/// Compares two PEM public keys by their DER (the PEM text may differ in line breaks).
fn same_public_key(left_pem: &str, right_pem: &str) -> bool {
    match (pem::parse(left_pem), pem::parse(right_pem)) {
        (Ok(left), Ok(right)) => left.tag() == right.tag() && left.contents() == right.contents(),
        _ => false,
    }
}

/// A deposit the CA recorded.
#[derive(Debug, Clone)]
pub struct EscrowDeposit {
    /// The recovery key the deposit is sealed to.
    pub fingerprint: String,
    /// The audit-log index of the deposit.
    pub log_index: Option<u64>,
}

/// Seals `account`'s private key (PKCS#8 DER) to the acknowledged recovery key for its user id, proves possession
/// over the blob with a fresh nonce, and deposits it (replacing the user's earlier deposit on the CA).
///
/// FAILED_PRECONDITION is `RecoveryError::Stale`: read the recovery key again with `prepare_escrow`.
pub async fn deposit_escrow(
    transport: &mut impl CaTransport,
    account: &Account,
    acknowledged: AcknowledgedRecoveryKey,
) -> Result<EscrowDeposit, RecoveryError> {
    let key = acknowledged.key;
    let blob = escrow::seal(key.public_key(), &account.user_id, &account.private_key.to_pkcs8_der())?;
    let challenge = transport.create_backup_challenge(&account.user_id).await?;
    let proof = possession::prove(
        &account.private_key,
        Purpose::Escrow,
        &account.user_id,
        &challenge.nonce,
        &blob,
    )?;
    let deposited = transport
        .deposit_escrow(&account.user_id, &key.fingerprint, &blob, &proof)
        .await
        .map_err(|error| match error {
            CaError::FailedPrecondition(message) => RecoveryError::Stale(message),
            other => RecoveryError::Ca(other),
        })?;
    Ok(EscrowDeposit {
        fingerprint: key.fingerprint,
        log_index: deposited.log_index,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::format::der::{self, tag};

    /// An X25519 SPKI (RFC 8410) with key bytes `fill`.
    pub(crate) fn x25519_spki(fill: u8) -> Vec<u8> {
        let mut spki = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00];
        spki.extend_from_slice(&[fill; 32]);
        spki
    }

    /// A CA key for tests: P-256, as the dev CA's may be.
    pub(crate) fn ca_key() -> rcgen::KeyPair {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen")
    }

    /// A certificate for `spki` signed by `signer` (ECDSA P-256 with SHA-256), built by hand: rcgen cannot
    /// certify an X25519 key, which is no signature algorithm.
    pub(crate) fn recovery_certificate(spki: &[u8], signer: &rcgen::KeyPair) -> String {
        use rcgen::SigningKey;
        // ecdsa-with-SHA256, 1.2.840.10045.4.3.2, without parameters.
        let algorithm = der::encode(
            tag::SEQUENCE,
            &der::encode(tag::OID, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
        );
        // CN=<common name>, as a Name.
        let name = |common_name: &str| {
            let attribute = der::encode_parts(
                tag::SEQUENCE,
                &[
                    &der::encode(tag::OID, &[0x55, 0x04, 0x03]),
                    &der::encode(0x0c, common_name.as_bytes()),
                ],
            );
            der::encode(tag::SEQUENCE, &der::encode(tag::SET, &attribute))
        };
        let validity = der::encode_parts(
            tag::SEQUENCE,
            &[
                &der::encode(tag::UTC_TIME, b"250101000000Z"),
                &der::encode(tag::UTC_TIME, b"491231235959Z"),
            ],
        );
        let tbs = der::encode_parts(
            tag::SEQUENCE,
            &[
                &der::encode(tag::CONTEXT_0, &der::encode(tag::INTEGER, &[2])),
                &der::encode(tag::INTEGER, &[0x01, 0x23]),
                &algorithm,
                &name("Test CA"),
                &validity,
                &name("e2ee-ca recovery key"),
                spki,
            ],
        );
        let signature = signer.sign(&tbs).expect("sign");
        let mut bit_string = vec![0u8];
        bit_string.extend_from_slice(&signature);
        let certificate = der::encode_parts(tag::SEQUENCE, &[&tbs, &algorithm, &der::encode(0x03, &bit_string)]);
        pem::encode(&pem::Pem::new("CERTIFICATE", certificate))
    }

    fn fingerprint(spki: &[u8]) -> String {
        hex::encode(Sha256::digest(spki))
    }

    /// A `CaInfo` under `ca_key`, with the recovery key `spki` enabled (`Some`) or not.
    fn ca_info(ca_key: &rcgen::KeyPair, spki: Option<&[u8]>) -> CaInfo {
        let public_key_pem = ca_key.public_key_pem();
        let recovery = spki.map(|spki| {
            RecoveryKeyInfo::verify(
                &recovery_certificate(spki, ca_key),
                &fingerprint(spki),
                "2026-01-02T03:04:05Z",
                &public_key_pem,
            )
            .expect("a recovery certificate signed by the CA")
        });
        CaInfo {
            chain_pem: String::new(),
            public_key_pem,
            certificate_fingerprint: String::new(),
            recovery,
        }
    }

    #[test]
    fn a_recovery_certificate_signed_by_the_ca_for_the_reported_key_is_accepted() {
        let ca = ca_key();
        let spki = x25519_spki(9);
        let certificate = recovery_certificate(&spki, &ca);
        let info = RecoveryKeyInfo::verify(
            &certificate,
            &fingerprint(&spki).to_uppercase(),
            "2026-01-02T03:04:05Z",
            &ca.public_key_pem(),
        )
        .expect("accepted");
        assert_eq!(info.fingerprint, fingerprint(&spki));
        assert_eq!(info.public_key().spki_der(), spki);
        assert_eq!(info.enabled_since, "2026-01-02T03:04:05Z");
        assert_eq!(info.certificate_pem, certificate);
    }

    #[test]
    fn a_recovery_certificate_not_signed_by_the_ca_key_is_refused() {
        let ca = ca_key();
        let impostor = ca_key();
        let spki = x25519_spki(9);
        let certificate = recovery_certificate(&spki, &impostor);
        assert!(matches!(
            RecoveryKeyInfo::verify(&certificate, &fingerprint(&spki), "", &ca.public_key_pem()),
            Err(RecoveryKeyError::NotSignedByCa)
        ));
        // One flipped byte in the signed part fails the same way.
        let block = pem::parse(recovery_certificate(&spki, &ca)).expect("pem");
        let mut altered = block.contents().to_vec();
        let position = altered.len() - 120;
        altered[position] ^= 1;
        let altered = pem::encode(&pem::Pem::new("CERTIFICATE", altered));
        assert!(RecoveryKeyInfo::verify(&altered, &fingerprint(&spki), "", &ca.public_key_pem()).is_err());
    }

    #[test]
    fn a_recovery_certificate_for_another_key_than_the_fingerprint_is_refused() {
        let ca = ca_key();
        let certified = x25519_spki(9);
        let reported = x25519_spki(10);
        let certificate = recovery_certificate(&certified, &ca);
        assert!(matches!(
            RecoveryKeyInfo::verify(&certificate, &fingerprint(&reported), "", &ca.public_key_pem()),
            Err(RecoveryKeyError::FingerprintMismatch { certified: got, reported: want })
                if got == fingerprint(&certified) && want == fingerprint(&reported)
        ));
        // A certified key that is not X25519 is refused even when its fingerprint matches.
        let p256 = ca_key();
        let p256_spki = rcgen::PublicKeyData::subject_public_key_info(&p256);
        let certificate = recovery_certificate(&p256_spki, &ca);
        assert!(matches!(
            RecoveryKeyInfo::verify(&certificate, &fingerprint(&p256_spki), "", &ca.public_key_pem()),
            Err(RecoveryKeyError::Key(_))
        ));
        assert!(matches!(
            RecoveryKeyInfo::verify("not pem", &fingerprint(&certified), "", &ca.public_key_pem()),
            Err(RecoveryKeyError::NotACertificate)
        ));
    }

    #[test]
    fn a_new_recovery_key_is_a_notice_and_its_acknowledgement_persists() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("recovery.json");
        let ca = ca_key();
        let first = x25519_spki(1);
        let mut acknowledgements = RecoveryAcknowledgements::open(&path).expect("open");

        // Disabled, nothing acknowledged: nothing to say.
        assert!(matches!(
            acknowledgements.status(&ca_info(&ca, None)),
            EscrowStatus::Disabled
        ));

        // First sight: a notice. Declining (dropping it) records nothing.
        let EscrowStatus::Notice(notice) = acknowledgements.status(&ca_info(&ca, Some(&first))) else {
            panic!("a notice")
        };
        assert_eq!(notice.fingerprint(), fingerprint(&first));
        assert_eq!(notice.enabled_since(), "2026-01-02T03:04:05Z");
        assert_eq!(notice.replaces(), None);
        assert!(notice.certificate_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        drop(notice);
        assert!(matches!(
            RecoveryAcknowledgements::open(&path)
                .expect("open")
                .status(&ca_info(&ca, Some(&first))),
            EscrowStatus::Notice(_)
        ));
        assert!(!path.exists());

        // Acknowledged: the token names the key, and the record survives a reopen.
        let EscrowStatus::Notice(notice) = acknowledgements.status(&ca_info(&ca, Some(&first))) else {
            panic!("a notice")
        };
        let token = notice.acknowledge(&mut acknowledgements).expect("acknowledge");
        assert_eq!(token.fingerprint(), fingerprint(&first));
        let reopened = RecoveryAcknowledgements::open(&path).expect("reopen");
        assert_eq!(reopened.acknowledged_fingerprint(), Some(fingerprint(&first).as_str()));
        assert!(matches!(
            reopened.status(&ca_info(&ca, Some(&first))),
            EscrowStatus::Acknowledged(token) if token.fingerprint() == fingerprint(&first)
        ));

        // Another key: a new notice that says which key it replaces, never a silent token.
        let second = x25519_spki(2);
        let EscrowStatus::Notice(notice) = reopened.status(&ca_info(&ca, Some(&second))) else {
            panic!("a changed recovery key is a new notice")
        };
        assert_eq!(notice.fingerprint(), fingerprint(&second));
        assert_eq!(notice.replaces(), Some(fingerprint(&first).as_str()));

        // Disabled after an acknowledgement: reported, naming the acknowledged key.
        assert!(matches!(
            reopened.status(&ca_info(&ca, None)),
            EscrowStatus::DisabledSinceAcknowledged { fingerprint: acknowledged } if acknowledged == fingerprint(&first)
        ));
    }

    /// The fake CA's report of the recovery key `spki`, signed by its key.
    fn enable(ca: &mut crate::testing::FakeCa, spki: &[u8]) {
        let info = RecoveryKeyInfo::verify(
            &recovery_certificate(spki, ca.key()),
            &fingerprint(spki),
            "2026-01-02T03:04:05Z",
            &ca.key().public_key_pem(),
        )
        .expect("verifies");
        ca.recovery = Some(info);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_deposit_needs_the_acknowledgement_and_a_changed_key_is_a_new_notice() {
        let directory = tempfile::tempdir().expect("tempdir");
        let mut acknowledgements =
            RecoveryAcknowledgements::open(&directory.path().join("recovery.json")).expect("open");
        let mut ca = crate::testing::FakeCa::new();
        let private_key = ca.enroll("alice");
        let account = Account {
            user_id: "alice".into(),
            private_key,
            certificate_pem: ca.certificate("alice"),
        };
        let enrolled = ca.ca_info().await.expect("ca info");
        let (secret, public_key) = escrow::RecoverySecret::generate();
        let first = public_key.spki_der();
        enable(&mut ca, &first);

        let EscrowStatus::Notice(notice) = prepare_escrow(&mut ca, &enrolled, &acknowledgements)
            .await
            .expect("status")
        else {
            panic!("a notice")
        };
        let token = notice.acknowledge(&mut acknowledgements).expect("acknowledge");
        let deposit = deposit_escrow(&mut ca, &account, token).await.expect("deposit");
        assert_eq!(deposit.fingerprint, fingerprint(&first));
        let (deposited_to, blob) = &ca.deposits["alice"];
        assert_eq!(deposited_to, &fingerprint(&first));
        // The officers' secret opens it, for alice only, to her PKCS#8 key.
        let opened = escrow::open(&secret, "alice", blob).expect("opens");
        assert_eq!(*opened, *account.private_key.to_pkcs8_der());
        assert!(escrow::open(&secret, "bob", blob).is_err());

        // The officers replace the recovery key between the read and the deposit: the deposit is stale, and the
        // next read is a notice for the new key, naming the one it replaces.
        let EscrowStatus::Acknowledged(token) = prepare_escrow(&mut ca, &enrolled, &acknowledgements)
            .await
            .expect("status")
        else {
            panic!("acknowledged before")
        };
        let second = x25519_spki(2);
        enable(&mut ca, &second);
        assert!(matches!(
            deposit_escrow(&mut ca, &account, token).await,
            Err(RecoveryError::Stale(message)) if message.contains("not the current one")
        ));
        let EscrowStatus::Notice(notice) = prepare_escrow(&mut ca, &enrolled, &acknowledgements)
            .await
            .expect("status")
        else {
            panic!("a new notice")
        };
        assert_eq!(notice.replaces(), Some(fingerprint(&first).as_str()));
        assert_eq!(ca.deposits["alice"].0, fingerprint(&first));

        // Another CA key: nothing in the answer is trusted.
        let other = crate::testing::FakeCa::new().ca_info().await.expect("ca info");
        assert!(matches!(
            prepare_escrow(&mut ca, &other, &acknowledgements).await,
            Err(RecoveryError::CaChanged)
        ));
    }

    #[test]
    fn a_corrupt_acknowledgement_file_is_an_error_not_a_blank_slate() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("recovery.json");
        std::fs::write(&path, b"{not json").expect("write");
        assert!(matches!(
            RecoveryAcknowledgements::open(&path),
            Err(RecoveryError::Corrupt { .. })
        ));
    }
}
