//! Errors become `tonic::Status` here and nowhere else.
//!
//! What survives the hop: the code, and for caller errors (INVALID_ARGUMENT, FAILED_PRECONDITION,
//! ALREADY_EXISTS, RESOURCE_EXHAUSTED) a message saying what was wrong. HSM and database details
//! never leave the process; they are logged and the caller gets a generic UNAVAILABLE or INTERNAL.

use tonic::Status;

use crate::hsm::HsmError;
use crate::issuer::IssueError;
use crate::storage::StoreError;
use crate::transparency::ProofError;

/// An issuance error as the caller sees it.
pub(super) fn issue_status(error: IssueError) -> Status {
    match error {
        IssueError::UserId(_) | IssueError::Csr(_) => Status::invalid_argument(error.to_string()),
        IssueError::CsrTooLarge(_) | IssueError::RateLimited(_) => Status::resource_exhausted(error.to_string()),
        IssueError::PinnedToOtherKey(_) => Status::failed_precondition(error.to_string()),
        IssueError::KeyPinnedElsewhere => Status::already_exists(error.to_string()),
        IssueError::Hsm(HsmError::PoolExhausted) => {
            Status::resource_exhausted("the CA is at capacity (all HSM sessions busy); retry with backoff")
        }
        IssueError::Hsm(hsm_error) => {
            tracing::error!(error = %hsm_error, "issuance failed in the HSM");
            Status::unavailable("the CA's HSM is unavailable; nothing was issued; retry later")
        }
        IssueError::Store(store_error) => store_status(store_error),
        IssueError::Build(_) | IssueError::SignatureCheck => {
            tracing::error!(%error, "issuance failed");
            Status::internal("the CA could not produce a valid certificate; nothing was issued")
        }
        IssueError::PinMismatch(mismatch) if mismatch.is_transient() => Status::unavailable(
            "the audit log has not yet recorded this user's pin, so nothing was issued; retry shortly",
        ),
        // The issuer logged the mismatch at ERROR; the caller learns only that it was refused.
        IssueError::PinMismatch(_) => Status::internal(
            "the CA's record of this user's key failed its check against the audit log; nothing was issued",
        ),
        IssueError::LogStalled => Status::unavailable(
            "the audit log cannot currently record issuances (sequencing or checkpoint signing is failing), \
             so nothing was issued; retry later",
        ),
        IssueError::LogLagging(bound) => Status::unavailable(format!(
            "the audit log did not record the issuance within {} ms, so the certificate was withheld; \
             retry later (the retry is a renewal of the same key)",
            bound.as_millis()
        )),
    }
}

/// A pin that failed its check against the log, met outside issuance (a proof of possession):
/// logged at ERROR here, INTERNAL for the caller (UNAVAILABLE while the pin's entry is unsequenced).
pub(super) fn pin_mismatch_status(user: &crate::identity::UserId, mismatch: &crate::issuer::PinMismatch) -> Status {
    if mismatch.is_transient() {
        return Status::unavailable("the audit log has not yet recorded this user's pin; retry shortly");
    }
    tracing::error!(%user, %mismatch, "the pinned key failed its check against the audit log");
    Status::internal("the CA's record of this user's key failed its check against the audit log; nothing was changed")
}

/// A stored blob (`what`: "wrapped key", "escrow deposit") that does not match the log entry that
/// recorded it: ERROR here, INTERNAL for the caller (UNAVAILABLE while the entry is unsequenced).
pub(super) fn record_mismatch_status(
    what: &'static str,
    user: &crate::identity::UserId,
    mismatch: &crate::key_backup::RecordMismatch,
) -> Status {
    if mismatch.is_transient() {
        return Status::unavailable(format!(
            "the audit log has not yet sequenced the {what}'s entry; retry shortly"
        ));
    }
    tracing::error!(%user, what, %mismatch, "a stored blob does not match the audit log: not served");
    Status::internal(format!(
        "the stored {what} failed its check against the audit log and is not served"
    ))
}

/// A store error on a read or write: nothing was changed.
pub(super) fn store_status(error: StoreError) -> Status {
    tracing::error!(%error, "store failure");
    match error {
        StoreError::Unavailable(_) => {
            Status::unavailable("the CA's database is unavailable; nothing was changed; retry later")
        }
        _ => Status::internal("the CA's database failed; nothing was changed"),
    }
}

/// The change is committed but its entry was not given a log index in time.
pub(super) fn log_entry_status(error: IssueError) -> Status {
    match error {
        IssueError::Store(error) => store_status(error),
        other => {
            tracing::error!(error = %other, "committed admin change not yet in the log");
            Status::unavailable(
                "the change is committed but the audit log did not index it in time; check with GetIdentity or ListRequests before retrying",
            )
        }
    }
}

/// A proof that could not be served.
pub(super) fn proof_status(error: ProofError) -> Status {
    match error {
        ProofError::OutOfRange(message) => Status::invalid_argument(message),
        ProofError::Store(store_error) => store_status(store_error),
        ProofError::Missing(..) | ProofError::BadCheckpoint(_) => {
            tracing::error!(%error, "log store is missing a subtree hash");
            inconsistent_log()
        }
    }
}

/// The log store contradicts itself (a node or entry missing under a signed checkpoint).
pub(super) fn inconsistent_log() -> Status {
    Status::internal("the CA's log store is inconsistent; nothing was served")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn callers_learn_what_they_can_act_on_and_nothing_of_the_internals() {
        let hsm = issue_status(IssueError::Hsm(HsmError::Failed {
            function: "C_Sign".to_owned(),
            detail: "CKR_DEVICE_ERROR at slot 3".to_owned(),
        }));
        assert_eq!(hsm.code(), Code::Unavailable);
        assert!(
            !hsm.message().contains("C_Sign") && !hsm.message().contains("slot"),
            "{}",
            hsm.message()
        );
        let store = store_status(StoreError::Corrupt("row 17 of identities: bad bytes".to_owned()));
        assert_eq!(store.code(), Code::Internal);
        assert!(!store.message().contains("row 17"), "{}", store.message());
        assert_eq!(
            issue_status(IssueError::Hsm(HsmError::PoolExhausted)).code(),
            Code::ResourceExhausted
        );
        assert_eq!(issue_status(IssueError::KeyPinnedElsewhere).code(), Code::AlreadyExists);
        assert_eq!(issue_status(IssueError::SignatureCheck).code(), Code::Internal);
        assert_eq!(
            store_status(StoreError::Unavailable("connection refused".to_owned())).code(),
            Code::Unavailable
        );
        assert_eq!(
            proof_status(ProofError::OutOfRange("size 9 > 3".to_owned())).code(),
            Code::InvalidArgument
        );
    }
}
