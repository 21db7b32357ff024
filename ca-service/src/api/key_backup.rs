//! The `KeyBackup` service (key_backup.proto): the user's wrapped private key and escrow deposit,
//! opaque to the CA. Called by the sync server (role `sync-server`) for a logged-in user.
//!
//! A write is answered only after it and its audit entry are committed and the entry is indexed;
//! so is a read, whose entry names the caller. Every write carries a proof of possession of the
//! pinned key (`key_backup::possession`), checked here against the pin as the log recorded it
//! (`issuer::pins::check_pin`) before the store consumes the proof's nonce; a wrapped key is served
//! only if it is the one its `key-backup-stored` entry recorded (`key_backup::check_recorded`).

use std::sync::Arc;
use std::time::Duration;

use e2ee_ca_proto::v1 as pb;
use e2ee_ca_proto::v1::key_backup_server::KeyBackup;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use super::principal::principal;
use super::status::{log_entry_status, pin_mismatch_status, record_mismatch_status, store_status};
use crate::audit::{AuditKind, LogEntryRef, rfc3339};
use crate::identity::{KeyFingerprint, UserId};
use crate::issuer::{IssuanceStore, LogWait, wait_for_log_index};
use crate::key_backup::possession::{proof_text, verifies};
use crate::key_backup::{
    KeyBackupStore, MAX_ESCROW_BYTES, Nonce, NonceRefused, ProvenWrite, Purpose, WrappedKey, WriteRefused,
    check_recorded, sha256_hex,
};

/// The `KeyBackup` service.
pub struct KeyBackupService<S> {
    store: Arc<S>,
    log_wait: LogWait,
    nonce_lifetime: Duration,
}

impl<S> KeyBackupService<S> {
    /// Serves key backups in `store`; nonces expire `nonce_lifetime` after they are handed out.
    pub fn new(store: Arc<S>, log_wait: LogWait, nonce_lifetime: Duration) -> KeyBackupService<S> {
        KeyBackupService {
            store,
            log_wait,
            nonce_lifetime,
        }
    }
}

/// Now, in whole seconds: what both stores keep exactly.
fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

fn user_argument(raw: &str) -> Result<UserId, Status> {
    UserId::parse(raw).map_err(|error| Status::invalid_argument(format!("user_id: {error}")))
}

/// The status of a proven write the store refused.
fn refused_status(refused: WriteRefused) -> Status {
    match refused {
        WriteRefused::Nonce => Status::failed_precondition(
            "the proof's nonce is unknown, for another user, already used or expired; ask CreateBackupChallenge for a fresh one",
        ),
        WriteRefused::PinMoved => Status::failed_precondition(
            "the user's pinned key changed while the proof was checked; prove possession of the new key",
        ),
        WriteRefused::AlreadyExists => Status::already_exists(
            "a wrapped key is stored for this user; set replace (with a proof of possession) to replace it",
        ),
        WriteRefused::NothingToReplace => {
            Status::not_found("no wrapped key is stored for this user: nothing to replace")
        }
        WriteRefused::RecoveryDisabled => {
            Status::failed_precondition("no recovery key is enabled: escrow deposits are not accepted")
        }
        WriteRefused::StaleRecoveryKey(current) => Status::failed_precondition(format!(
            "the deposit is sealed to a recovery key that is not the current one ({current}); read GetCaInfo and seal again"
        )),
    }
}

impl<S: KeyBackupStore + IssuanceStore> KeyBackupService<S> {
    /// The entry's log reference once indexed (bounded wait); the change is committed already.
    async fn indexed(&self, entry: &LogEntryRef) -> Result<pb::LogEntryRef, Status> {
        let index = wait_for_log_index(&self.log_wait, self.store.as_ref(), entry)
            .await
            .map_err(log_entry_status)?;
        Ok(pb::LogEntryRef {
            index,
            entry_hash: hex::encode(entry.entry_hash),
            tlog_proof: String::new(),
        })
    }

    /// Checks `proof` over `payload` for `purpose` against the key pinned to `user` (as its log
    /// entry recorded it): the write the store may then commit, consuming the nonce.
    async fn proven(
        &self,
        user: UserId,
        purpose: Purpose,
        payload: &[u8],
        proof: Option<pb::ProofOfPossession>,
        actor: &str,
    ) -> Result<ProvenWrite, Status> {
        let proof = proof.ok_or_else(|| {
            Status::invalid_argument(
                "proof is required: sign the proof text with the pinned key (see key_backup.proto)",
            )
        })?;
        let nonce = Nonce::parse(&proof.nonce).ok_or_else(|| {
            Status::invalid_argument("proof.nonce must be the 32 bytes CreateBackupChallenge returned")
        })?;
        let Some(pinned) = self.store.pinned_key(&user).await.map_err(store_status)? else {
            return Err(Status::failed_precondition(
                "the user has no pinned key: enroll (IssueCertificate) first",
            ));
        };
        if KeyFingerprint::of_spki(&pinned.spki_der) != pinned.fingerprint {
            tracing::error!(%user, "the stored pinned key does not hash to its fingerprint");
            return Err(Status::internal("the user's pinned key failed its integrity check"));
        }
        crate::issuer::pins::check_pin(&user, &pinned.fingerprint, pinned.pin_entry.as_ref())
            .map_err(|mismatch| pin_mismatch_status(&user, &mismatch))?;
        let text = proof_text(purpose, &user, &nonce, payload);
        if !verifies(&pinned.spki_der, &text, &proof.signature) {
            tracing::warn!(%user, caller = actor, purpose = purpose.name(), "proof of possession refused");
            return Err(Status::invalid_argument(
                "the proof of possession does not verify against the user's pinned key",
            ));
        }
        Ok(ProvenWrite {
            user,
            nonce,
            key_fingerprint: pinned.fingerprint,
            actor: actor.to_owned(),
            now: now(),
        })
    }
}

#[tonic::async_trait]
impl<S: KeyBackupStore + IssuanceStore> KeyBackup for KeyBackupService<S> {
    async fn create_backup_challenge(
        &self,
        request: Request<pb::CreateBackupChallengeRequest>,
    ) -> Result<Response<pb::CreateBackupChallengeResponse>, Status> {
        principal(&request)?;
        let user = user_argument(&request.get_ref().user_id)?;
        let nonce = Nonce::generate();
        let now = now();
        let expires_at = now + self.nonce_lifetime;
        match self
            .store
            .create_nonce(&user, nonce, now, expires_at)
            .await
            .map_err(store_status)?
        {
            Ok(()) => Ok(Response::new(pb::CreateBackupChallengeResponse {
                nonce: nonce.as_bytes().to_vec(),
                expires_at: rfc3339(expires_at),
            })),
            Err(NonceRefused::NoPin) => Err(Status::failed_precondition(
                "the user has no pinned key: enroll (IssueCertificate) first",
            )),
            Err(NonceRefused::TooMany) => Err(Status::resource_exhausted(format!(
                "the user holds {} unexpired nonces; use one or wait for them to expire",
                crate::key_backup::MAX_OUTSTANDING_NONCES
            ))),
        }
    }

    async fn put_wrapped_private_key(
        &self,
        request: Request<pb::PutWrappedPrivateKeyRequest>,
    ) -> Result<Response<pb::PutWrappedPrivateKeyResponse>, Status> {
        let actor = principal(&request)?;
        let request = request.into_inner();
        let user = user_argument(&request.user_id)?;
        let wrapped_key =
            WrappedKey::parse(request.wrapped_key).map_err(|error| Status::invalid_argument(error.to_string()))?;
        let write = self
            .proven(
                user,
                Purpose::KeyBackup,
                wrapped_key.as_str().as_bytes(),
                request.proof,
                actor.name(),
            )
            .await?;
        let user = write.user.clone();
        let (entry, replaced) = self
            .store
            .put_wrapped_key(write, wrapped_key, request.replace)
            .await
            .map_err(store_status)?
            .map_err(refused_status)?;
        tracing::info!(%user, caller = actor.name(), replaced, "wrapped key stored");
        Ok(Response::new(pb::PutWrappedPrivateKeyResponse {
            log_entry: Some(self.indexed(&entry).await?),
            replaced,
        }))
    }

    async fn get_wrapped_private_key(
        &self,
        request: Request<pb::GetWrappedPrivateKeyRequest>,
    ) -> Result<Response<pb::GetWrappedPrivateKeyResponse>, Status> {
        let actor = principal(&request)?;
        let user = user_argument(&request.get_ref().user_id)?;
        let Some((backup, entry)) = self
            .store
            .read_wrapped_key(&user, actor.name().to_owned(), now())
            .await
            .map_err(store_status)?
        else {
            return Err(Status::not_found("no wrapped key is stored for this user"));
        };
        // The read is in the log before the blob leaves, and the blob is the one the log recorded.
        let log_entry = self.indexed(&entry).await?;
        check_recorded(
            backup.recorded_by.as_ref(),
            AuditKind::KeyBackupStored,
            user.as_str(),
            &[
                ("key-sha256", backup.key_fingerprint.to_hex()),
                ("wrapped-key-sha256", sha256_hex(backup.wrapped_key.as_str().as_bytes())),
            ],
        )
        .map_err(|mismatch| record_mismatch_status("wrapped key", &user, &mismatch))?;
        tracing::info!(%user, caller = actor.name(), "wrapped key read");
        Ok(Response::new(pb::GetWrappedPrivateKeyResponse {
            wrapped_key: backup.wrapped_key.as_str().to_owned(),
            key_fingerprint: backup.key_fingerprint.to_hex(),
            stored_at: rfc3339(backup.stored_at),
            log_entry: Some(log_entry),
        }))
    }

    async fn deposit_escrow(
        &self,
        request: Request<pb::DepositEscrowRequest>,
    ) -> Result<Response<pb::DepositEscrowResponse>, Status> {
        let actor = principal(&request)?;
        let request = request.into_inner();
        let user = user_argument(&request.user_id)?;
        if request.escrow_blob.is_empty() || request.escrow_blob.len() > MAX_ESCROW_BYTES {
            return Err(Status::invalid_argument(format!(
                "escrow_blob must be 1 to {MAX_ESCROW_BYTES} bytes"
            )));
        }
        let recovery_fingerprint = hex::decode(&request.recovery_key_fingerprint)
            .ok()
            .and_then(|bytes| KeyFingerprint::from_bytes(&bytes))
            .filter(|fingerprint| fingerprint.to_hex() == request.recovery_key_fingerprint)
            .ok_or_else(|| {
                Status::invalid_argument("recovery_key_fingerprint must be 64 lowercase hex characters (GetCaInfo)")
            })?;
        let write = self
            .proven(user, Purpose::Escrow, &request.escrow_blob, request.proof, actor.name())
            .await?;
        let user = write.user.clone();
        let entry = self
            .store
            .deposit_escrow(write, recovery_fingerprint, request.escrow_blob)
            .await
            .map_err(store_status)?
            .map_err(refused_status)?;
        tracing::info!(%user, caller = actor.name(), recovery_key = %recovery_fingerprint.to_hex(), "escrow deposited");
        Ok(Response::new(pb::DepositEscrowResponse {
            log_entry: Some(self.indexed(&entry).await?),
        }))
    }
}
