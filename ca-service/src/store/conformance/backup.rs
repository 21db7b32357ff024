//! Conformance: key backups and their proof nonces, escrow deposits, the recovery key's
//! registration and disabling, escrow releases, what a reset does to them, and migration 6.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use time::OffsetDateTime;

use super::{Harness, certificate, committed, event, key, logged_entries, user};
use crate::api::admin::IdentityDirectory;
use crate::approvals::{
    ApprovalKind, ApprovalRefused, ApprovalRequest, ApprovalStore, NewRequest, OpenRefused, ProposedRecoveryKey,
    RequestId, RequestState,
};
use crate::audit::{AuditEvent, AuditKind, LogEntryRef};
use crate::identity::KeyFingerprint;
use crate::issuer::{IssuanceStore, ResetOutcome};
use crate::key_backup::{
    KeyBackupStore, MAX_OUTSTANDING_NONCES, Nonce, NonceRefused, ProvenWrite, WrappedKey, WriteRefused,
};
use crate::recovery::{RecoveryChange, RecoveryStore, ReleaseRefused};
use crate::revocation::RevocationReason;
use crate::transparency::LogSequencer;

/// Now, in whole seconds (the embedded store keeps seconds).
fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc().replace_nanosecond(0).expect("whole seconds")
}

/// A wrapped key in Nextcloud's format, its ciphertext filled with `fill`.
fn wrapped_key(fill: u8) -> WrappedKey {
    let raw = [vec![fill; 64], vec![1; 12], vec![2; 40]]
        .iter()
        .map(|part| STANDARD.encode(part))
        .collect::<Vec<_>>()
        .join("|");
    WrappedKey::parse(raw).expect("a valid wrapped key")
}

/// An X25519 SubjectPublicKeyInfo (RFC 8410) with key bytes `[byte; 32]`.
fn recovery_spki(byte: u8) -> Vec<u8> {
    let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00];
    der.extend_from_slice(&[byte; 32]);
    der
}

fn recovery_fingerprint(byte: u8) -> KeyFingerprint {
    KeyFingerprint::of_spki(&recovery_spki(byte))
}

/// A fresh nonce for `user_name`, valid for five minutes from `now()`.
async fn nonce(store: &impl KeyBackupStore, user_name: &str) -> Nonce {
    let nonce = Nonce::generate();
    store
        .create_nonce(&user(user_name), nonce, now(), now() + time::Duration::minutes(5))
        .await
        .expect("store")
        .expect("nonce");
    nonce
}

/// A write by `user_name`, proven with `nonce` against key `[key_byte; 32]`, at `now()`.
fn proven(user_name: &str, nonce: Nonce, key_byte: u8) -> ProvenWrite {
    ProvenWrite {
        user: user(user_name),
        nonce,
        key_fingerprint: key(key_byte),
        actor: user_name.to_owned(),
        now: now(),
    }
}

/// A request of `kind` for `user_name` (ignored for the recovery-key kinds), by `by`.
fn request(kind: ApprovalKind, user_name: &str, by: &str) -> NewRequest {
    NewRequest {
        id: RequestId::generate(),
        kind,
        subject: kind.concerns_a_user().then(|| user(user_name)),
        recovery_key: None,
        reason: "the officers' ceremony".to_owned(),
        revocation_reason: RevocationReason::Superseded,
        requested_by: by.to_owned(),
        requested_at: now(),
        expires_at: now() + time::Duration::hours(24),
    }
}

/// A registration of the recovery key `[byte; 32]`, by `by`.
fn registration(byte: u8, by: &str) -> NewRequest {
    NewRequest {
        recovery_key: Some(ProposedRecoveryKey {
            spki_der: recovery_spki(byte),
            ceremony_reference: format!("ceremony {byte}"),
        }),
        ..request(ApprovalKind::RecoveryKeyRegistration, "", by)
    }
}

async fn opened(store: &impl ApprovalStore, request: NewRequest) -> ApprovalRequest {
    store.open_request(request).await.expect("store").expect("opened").0
}

/// Registers the recovery key `[byte; 32]` (requested by admin-alice, approved by admin-bob).
async fn registered(store: &(impl ApprovalStore + RecoveryStore), byte: u8) -> (ApprovalRequest, LogEntryRef) {
    let request = opened(store, registration(byte, "admin-alice")).await;
    store
        .approve_recovery_change(
            request.id,
            "admin-bob".to_owned(),
            now(),
            RecoveryChange::Register {
                certificate_der: vec![byte; 100],
            },
        )
        .await
        .expect("store")
        .expect("registered")
}

/// Resets `user_name` to key `[key_byte; 32]` under an approved request; returns the reset's entry.
async fn reset(store: &(impl ApprovalStore + IssuanceStore), user_name: &str, key_byte: u8) -> LogEntryRef {
    let request = opened(store, request(ApprovalKind::IdentityReset, user_name, "admin-alice")).await;
    store
        .approve_request(request.id, "admin-bob".to_owned(), now())
        .await
        .expect("store")
        .expect("approved");
    let grant = store
        .approved_reset(&user(user_name), now())
        .await
        .expect("store")
        .expect("approved reset");
    let reset_event = AuditEvent {
        kind: AuditKind::IdentityReset,
        ..event(user_name)
    };
    match store
        .commit_reset(certificate(user_name, key_byte, key_byte), reset_event, grant)
        .await
        .expect("store")
    {
        ResetOutcome::Reset { entry, .. } => entry,
        other => panic!("expected a reset, got {other:?}"),
    }
}

/// The text of `entry`, read back from the log (everything pending is sequenced first).
async fn entry_text(store: &impl LogSequencer, entry: &LogEntryRef) -> String {
    use sha2::Digest;
    let size = logged_entries(store).await;
    let entries = store.entries(0, size).await.expect("entries");
    let bytes = entries
        .into_iter()
        .find(|bytes| <[u8; 32]>::from(sha2::Sha256::digest(bytes)) == entry.entry_hash)
        .expect("the entry is logged");
    String::from_utf8(bytes).expect("utf-8")
}

pub(super) async fn the_pinned_key_is_read_with_its_entry<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    assert_eq!(store.pinned_key(&user("alice")).await.expect("read"), None);
    committed(&store, certificate("alice", 1, 1)).await;
    let pinned = store.pinned_key(&user("alice")).await.expect("read").expect("pinned");
    assert_eq!(pinned.fingerprint, key(1));
    assert_eq!(
        pinned.spki_der,
        key(1).as_bytes().to_vec(),
        "the SPKI the issuance pinned"
    );
    let state = store
        .pin_state(&user("alice"), &key(1), now())
        .await
        .expect("pin state");
    assert!(pinned.pin_entry.is_some());
    assert_eq!(pinned.pin_entry, state.pin_entry, "read as pin_state reads it");
}

pub(super) async fn a_nonce_is_good_for_one_write_of_its_user_before_it_expires<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, certificate("alice", 1, 1)).await;
    committed(&store, certificate("bob", 2, 2)).await;
    let once = nonce(&store, "alice").await;
    let first = store
        .put_wrapped_key(proven("alice", once, 1), wrapped_key(1), false)
        .await
        .expect("store");
    assert_eq!(first.map(|(_, replaced)| replaced), Ok(false));
    let again = store
        .put_wrapped_key(proven("alice", once, 1), wrapped_key(2), true)
        .await
        .expect("store");
    assert_eq!(again.expect_err("used"), WriteRefused::Nonce);
    // Another user's nonce is refused, and stays good for its own user.
    let alices = nonce(&store, "alice").await;
    let bobs_try = store
        .put_wrapped_key(proven("bob", alices, 2), wrapped_key(3), false)
        .await
        .expect("store");
    assert_eq!(bobs_try.expect_err("not bob's"), WriteRefused::Nonce);
    let unknown = store
        .put_wrapped_key(proven("bob", Nonce::generate(), 2), wrapped_key(3), false)
        .await
        .expect("store");
    assert_eq!(unknown.expect_err("unknown"), WriteRefused::Nonce);
    // A refused write keeps nothing, its nonce included.
    let refused = store
        .put_wrapped_key(proven("alice", alices, 1), wrapped_key(4), false)
        .await
        .expect("store");
    assert_eq!(refused.expect_err("stored"), WriteRefused::AlreadyExists);
    let replaced = store
        .put_wrapped_key(proven("alice", alices, 1), wrapped_key(4), true)
        .await
        .expect("store");
    assert_eq!(replaced.map(|(_, replaced)| replaced), Ok(true));
    // An expired nonce is refused.
    let short = Nonce::generate();
    store
        .create_nonce(&user("alice"), short, now(), now() + time::Duration::seconds(1))
        .await
        .expect("store")
        .expect("nonce");
    let late = ProvenWrite {
        now: now() + time::Duration::seconds(5),
        ..proven("alice", short, 1)
    };
    let expired = store.put_wrapped_key(late, wrapped_key(5), true).await.expect("store");
    assert_eq!(expired.expect_err("expired"), WriteRefused::Nonce);
}

pub(super) async fn concurrent_writes_with_one_nonce_commit_once<H: Harness>() {
    let harness = H::create().await;
    let store = Arc::new(harness.open().await.expect("open"));
    committed(store.as_ref(), certificate("alice", 1, 1)).await;
    let first = nonce(store.as_ref(), "alice").await;
    store
        .put_wrapped_key(proven("alice", first, 1), wrapped_key(1), false)
        .await
        .expect("store")
        .expect("stored");
    let shared = nonce(store.as_ref(), "alice").await;
    let writes: Vec<_> = (0..8u8)
        .map(|attempt| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .put_wrapped_key(proven("alice", shared, 1), wrapped_key(10 + attempt), true)
                    .await
                    .expect("store")
            })
        })
        .collect();
    let mut stored = 0;
    for write in writes {
        match write.await.expect("task") {
            Ok(_) => stored += 1,
            Err(refused) => assert_eq!(refused, WriteRefused::Nonce),
        }
    }
    assert_eq!(stored, 1, "exactly one write consumes the nonce");
}

pub(super) async fn nonces_need_a_pin_and_are_bounded_per_user<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let create = async |user_name: &str, at: OffsetDateTime| {
        store
            .create_nonce(&user(user_name), Nonce::generate(), at, at + time::Duration::minutes(5))
            .await
            .expect("store")
    };
    assert_eq!(create("nobody", now()).await, Err(NonceRefused::NoPin));
    committed(&store, certificate("alice", 1, 1)).await;
    committed(&store, certificate("bob", 2, 2)).await;
    let entries = logged_entries(&store).await;
    for _ in 0..MAX_OUTSTANDING_NONCES {
        assert_eq!(create("alice", now()).await, Ok(()));
    }
    assert_eq!(create("alice", now()).await, Err(NonceRefused::TooMany));
    assert_eq!(create("bob", now()).await, Ok(()), "the bound is per user");
    // Once they expire they no longer count (and are deleted).
    let later = now() + time::Duration::minutes(10);
    for _ in 0..MAX_OUTSTANDING_NONCES {
        assert_eq!(create("alice", later).await, Ok(()));
    }
    assert_eq!(create("alice", later).await, Err(NonceRefused::TooMany));
    assert_eq!(logged_entries(&store).await, entries, "nonces are not logged");
}

pub(super) async fn a_wrapped_key_is_written_once_and_replaced_only_when_asked<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, certificate("alice", 1, 1)).await;
    let put = async |fill: u8, replace: bool| {
        let nonce = nonce(&store, "alice").await;
        store
            .put_wrapped_key(proven("alice", nonce, 1), wrapped_key(fill), replace)
            .await
            .expect("store")
    };
    assert_eq!(put(1, true).await.expect_err("none"), WriteRefused::NothingToReplace);
    let (first, replaced) = put(1, false).await.expect("stored");
    assert!(!replaced);
    assert_eq!(put(2, false).await.expect_err("once"), WriteRefused::AlreadyExists);
    let (second, replaced) = put(2, true).await.expect("replaced");
    assert!(replaced);
    let (backup, _) = store
        .read_wrapped_key(&user("alice"), "alice".to_owned(), now())
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(backup.wrapped_key, wrapped_key(2));
    assert_eq!(backup.key_fingerprint, key(1));
    assert_eq!(backup.stored_at, now(), "written at the write's time");
    let first = entry_text(&store, &first).await;
    assert!(first.contains("kind key-backup-stored\n") && first.contains("replaced false\n"));
    assert!(first.contains("actor alice\n") && first.contains(&format!("key-sha256 {}\n", key(1).to_hex())));
    assert!(entry_text(&store, &second).await.contains("replaced true\n"));
}

pub(super) async fn a_write_proven_against_a_pin_that_moved_is_refused<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, certificate("alice", 1, 1)).await;
    let before = nonce(&store, "alice").await;
    reset(&store, "alice", 3).await;
    let moved = store
        .put_wrapped_key(proven("alice", before, 1), wrapped_key(1), false)
        .await
        .expect("store");
    assert_eq!(moved.expect_err("moved"), WriteRefused::PinMoved);
    registered(&store, 7).await;
    let escrow_nonce = nonce(&store, "alice").await;
    let moved = store
        .deposit_escrow(proven("alice", escrow_nonce, 1), recovery_fingerprint(7), vec![1; 80])
        .await
        .expect("store");
    assert_eq!(moved.expect_err("moved"), WriteRefused::PinMoved);
    // Proven against the new pin, the same (unburnt) nonce is good.
    let stored = store
        .put_wrapped_key(proven("alice", before, 3), wrapped_key(1), false)
        .await
        .expect("store");
    assert!(stored.is_ok(), "{stored:?}");
}

pub(super) async fn a_read_is_logged_once_naming_the_reader<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, certificate("alice", 1, 1)).await;
    committed(&store, certificate("bob", 2, 2)).await;
    let before = logged_entries(&store).await;
    let nothing = store
        .read_wrapped_key(&user("bob"), "admin-carol".to_owned(), now())
        .await
        .expect("read");
    assert_eq!(nothing, None);
    assert_eq!(logged_entries(&store).await, before, "nothing read, nothing logged");
    let nonce = nonce(&store, "alice").await;
    store
        .put_wrapped_key(proven("alice", nonce, 1), wrapped_key(1), false)
        .await
        .expect("store")
        .expect("stored");
    let before = logged_entries(&store).await;
    let (backup, entry) = store
        .read_wrapped_key(&user("alice"), "admin-carol".to_owned(), now())
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(backup.wrapped_key, wrapped_key(1));
    assert_eq!(logged_entries(&store).await, before + 1, "one entry per read");
    let text = entry_text(&store, &entry).await;
    assert!(text.contains("kind key-backup-read\n"), "{text}");
    assert!(
        text.contains("actor admin-carol\n") && text.contains("subject alice\n"),
        "{text}"
    );
    let history = store.identity(&user("alice")).await.expect("read").expect("alice");
    let last = history.entries.last().expect("entries");
    assert_eq!(last.hash, entry.entry_hash, "in the user's history");
}

pub(super) async fn a_deposit_needs_the_enabled_recovery_key<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, certificate("alice", 1, 1)).await;
    let deposit = async |recovery_byte: u8, blob: Vec<u8>| {
        let nonce = nonce(&store, "alice").await;
        store
            .deposit_escrow(proven("alice", nonce, 1), recovery_fingerprint(recovery_byte), blob)
            .await
            .expect("store")
    };
    assert_eq!(
        deposit(7, vec![1; 80]).await.expect_err("disabled"),
        WriteRefused::RecoveryDisabled
    );
    registered(&store, 7).await;
    assert_eq!(
        deposit(8, vec![1; 80]).await.expect_err("stale"),
        WriteRefused::StaleRecoveryKey(recovery_fingerprint(7).to_hex())
    );
    let alice = store.identity(&user("alice")).await.expect("read").expect("alice");
    assert_eq!(alice.escrow_recovery_key, None, "refusals store nothing");
    let entry = deposit(7, vec![1; 80]).await.expect("deposited");
    let text = entry_text(&store, &entry).await;
    assert!(
        text.contains("kind escrow-deposited\n") && text.contains("actor alice\n"),
        "{text}"
    );
    assert!(text.contains(&format!("recovery-key-sha256 {}\n", recovery_fingerprint(7).to_hex())));
    // A second deposit replaces the first.
    deposit(7, vec![2; 80]).await.expect("deposited again");
    let alice = store.identity(&user("alice")).await.expect("read").expect("alice");
    assert_eq!(alice.escrow_recovery_key, Some(recovery_fingerprint(7)));
    let release = opened(&store, request(ApprovalKind::EscrowRelease, "alice", "admin-alice")).await;
    store
        .approve_request(release.id.clone(), "admin-bob".to_owned(), now())
        .await
        .expect("store")
        .expect("approved");
    let (record, _) = store
        .release_escrow(release.id, "admin-carol".to_owned(), now())
        .await
        .expect("store")
        .expect("released");
    assert_eq!(record.blob, vec![2; 80]);
}

pub(super) async fn an_approved_registration_enables_the_key_and_replaces_the_one_before<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    assert_eq!(store.recovery_key().await.expect("read"), None);
    let request = opened(&store, registration(7, "admin-alice")).await;
    assert_eq!(request.subject, None);
    assert_eq!(request.key_fingerprint, Some(recovery_fingerprint(7)));
    assert_eq!(store.request(&request.id).await.expect("read"), Some(request.clone()));
    let (approved, entry) = store
        .approve_recovery_change(
            request.id.clone(),
            "admin-bob".to_owned(),
            now(),
            RecoveryChange::Register {
                certificate_der: vec![7; 100],
            },
        )
        .await
        .expect("store")
        .expect("registered");
    assert_eq!(
        approved.state(now()),
        RequestState::Consumed,
        "performed by the approval"
    );
    assert_eq!(approved.approval.as_ref().map(|(by, _)| by.as_str()), Some("admin-bob"));
    assert_eq!(store.request(&request.id).await.expect("read"), Some(approved.clone()));
    let enabled = store.recovery_key().await.expect("read").expect("enabled");
    assert_eq!(enabled.fingerprint, recovery_fingerprint(7));
    assert_eq!(enabled.certificate_der, vec![7; 100]);
    assert_eq!(enabled.ceremony_reference, "ceremony 7");
    assert_eq!(enabled.enabled_at, now());
    let text = entry_text(&store, &entry).await;
    assert!(text.contains("kind recovery-key-registered\n"), "{text}");
    assert!(text.contains("actor admin-bob\n") && text.contains("requested-by admin-alice\n"));
    assert!(!text.contains("replaced-recovery-key-sha256"), "{text}");
    // A second registration replaces the first; the schema keeps at most one key enabled (its
    // unique index), so the first was disabled in the same transaction.
    let (_, entry) = registered(&store, 8).await;
    let enabled = store.recovery_key().await.expect("read").expect("enabled");
    assert_eq!(enabled.fingerprint, recovery_fingerprint(8));
    let text = entry_text(&store, &entry).await;
    assert!(
        text.contains(&format!(
            "replaced-recovery-key-sha256 {}\n",
            recovery_fingerprint(7).to_hex()
        )),
        "{text}"
    );
    // A retired key is not enabled again: the request no longer applies, nothing written.
    let again = opened(&store, registration(7, "admin-alice")).await;
    let before = logged_entries(&store).await;
    let refused = store
        .approve_recovery_change(
            again.id.clone(),
            "admin-bob".to_owned(),
            now(),
            RecoveryChange::Register {
                certificate_der: vec![7; 100],
            },
        )
        .await
        .expect("store");
    assert_eq!(
        refused.expect_err("retired"),
        ApprovalRefused::NotPending(RequestState::Expired)
    );
    assert_eq!(logged_entries(&store).await, before);
    assert_eq!(store.request(&again.id).await.expect("read"), Some(again));
}

pub(super) async fn recovery_changes_refuse_self_approval_and_a_kind_mismatch<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let nothing_enabled = store
        .open_request(request(ApprovalKind::RecoveryKeyDisable, "", "admin-alice"))
        .await
        .expect("store");
    assert_eq!(nothing_enabled.expect_err("disabled"), OpenRefused::RecoveryDisabled);
    let proposal = opened(&store, registration(7, "admin-alice")).await;
    let second = store.open_request(registration(8, "admin-bob")).await.expect("store");
    assert_eq!(
        second.expect_err("one open"),
        OpenRefused::AlreadyOpen(proposal.id.clone())
    );
    let approve = async |id: &RequestId, by: &str, change: RecoveryChange| {
        store
            .approve_recovery_change(id.clone(), by.to_owned(), now(), change)
            .await
            .expect("store")
    };
    let register = || RecoveryChange::Register {
        certificate_der: vec![7; 100],
    };
    assert_eq!(
        approve(&proposal.id, "admin-alice", register())
            .await
            .expect_err("self"),
        ApprovalRefused::SelfApproval
    );
    // Another kind than the call names: no such request (see `sqlite::backup`).
    assert_eq!(
        approve(&proposal.id, "admin-bob", RecoveryChange::Disable)
            .await
            .expect_err("kind"),
        ApprovalRefused::NotFound
    );
    committed(&store, certificate("alice", 1, 1)).await;
    let reset = opened(&store, request(ApprovalKind::IdentityReset, "alice", "admin-alice")).await;
    let before = logged_entries(&store).await;
    assert_eq!(
        approve(&reset.id, "admin-bob", register()).await.expect_err("kind"),
        ApprovalRefused::NotFound
    );
    assert_eq!(
        approve(&RequestId::generate(), "admin-bob", register())
            .await
            .expect_err("unknown"),
        ApprovalRefused::NotFound
    );
    assert_eq!(logged_entries(&store).await, before, "refusals write nothing");
    assert_eq!(store.request(&proposal.id).await.expect("read"), Some(proposal.clone()));
    assert_eq!(store.request(&reset.id).await.expect("read"), Some(reset));
    assert_eq!(store.recovery_key().await.expect("read"), None);
    // Registered, then disabled under a request of its own.
    approve(&proposal.id, "admin-bob", register())
        .await
        .expect("registered");
    let disable = opened(&store, request(ApprovalKind::RecoveryKeyDisable, "", "admin-bob")).await;
    assert_eq!(disable.key_fingerprint, Some(recovery_fingerprint(7)));
    assert_eq!(
        approve(&disable.id, "admin-carol", register()).await.expect_err("kind"),
        ApprovalRefused::NotFound
    );
    let (disabled, entry) = approve(&disable.id, "admin-carol", RecoveryChange::Disable)
        .await
        .expect("disabled");
    assert_eq!(disabled.state(now()), RequestState::Consumed);
    assert_eq!(store.recovery_key().await.expect("read"), None);
    let text = entry_text(&store, &entry).await;
    assert!(text.contains("kind recovery-key-disabled\n") && text.contains("actor admin-carol\n"));
    assert!(text.contains(&format!("recovery-key-sha256 {}\n", recovery_fingerprint(7).to_hex())));
    let again = store
        .open_request(request(ApprovalKind::RecoveryKeyDisable, "", "admin-alice"))
        .await
        .expect("store");
    assert_eq!(again.expect_err("disabled"), OpenRefused::RecoveryDisabled);
}

pub(super) async fn a_disable_of_a_key_no_longer_enabled_is_refused<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    registered(&store, 7).await;
    let disable = opened(&store, request(ApprovalKind::RecoveryKeyDisable, "", "admin-alice")).await;
    // Replaced meanwhile: the disable named key 7, and does not disable key 8.
    registered(&store, 8).await;
    let refused = store
        .approve_recovery_change(disable.id, "admin-bob".to_owned(), now(), RecoveryChange::Disable)
        .await
        .expect("store");
    assert_eq!(
        refused.expect_err("replaced"),
        ApprovalRefused::NotPending(RequestState::Expired)
    );
    let enabled = store.recovery_key().await.expect("read").expect("enabled");
    assert_eq!(enabled.fingerprint, recovery_fingerprint(8));
}

pub(super) async fn an_escrow_release_returns_the_deposit_once<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, certificate("alice", 1, 1)).await;
    let no_deposit = store
        .open_request(request(ApprovalKind::EscrowRelease, "alice", "admin-alice"))
        .await
        .expect("store");
    assert_eq!(no_deposit.expect_err("none"), OpenRefused::NoDeposit);
    let nobody = store
        .open_request(request(ApprovalKind::EscrowRelease, "nobody", "admin-alice"))
        .await
        .expect("store");
    assert_eq!(nobody.expect_err("none"), OpenRefused::NoDeposit);
    registered(&store, 7).await;
    let nonce = nonce(&store, "alice").await;
    store
        .deposit_escrow(proven("alice", nonce, 1), recovery_fingerprint(7), vec![9; 80])
        .await
        .expect("store")
        .expect("deposited");
    let release = opened(&store, request(ApprovalKind::EscrowRelease, "alice", "admin-alice")).await;
    assert_eq!(release.key_fingerprint, Some(recovery_fingerprint(7)));
    let release_now = async |id: &RequestId| {
        store
            .release_escrow(id.clone(), "admin-carol".to_owned(), now())
            .await
            .expect("store")
    };
    let before = logged_entries(&store).await;
    assert_eq!(
        release_now(&release.id).await.expect_err("pending"),
        ReleaseRefused::NotApproved(RequestState::Pending)
    );
    assert_eq!(logged_entries(&store).await, before, "a refused release writes nothing");
    store
        .approve_request(release.id.clone(), "admin-bob".to_owned(), now())
        .await
        .expect("store")
        .expect("approved");
    let (record, entry) = release_now(&release.id).await.expect("released");
    assert_eq!(record.user, user("alice"));
    assert_eq!(record.recovery_fingerprint, recovery_fingerprint(7));
    assert_eq!(record.blob, vec![9; 80]);
    assert_eq!(record.deposited_at, now());
    let text = entry_text(&store, &entry).await;
    assert!(
        text.contains("kind escrow-released\n") && text.contains("actor admin-carol\n"),
        "{text}"
    );
    assert!(text.contains("requested-by admin-alice\n") && text.contains("approved-by admin-bob\n"));
    assert_eq!(
        release_now(&release.id).await.expect_err("once"),
        ReleaseRefused::NotApproved(RequestState::Consumed)
    );
    assert_eq!(
        store
            .request(&release.id)
            .await
            .expect("read")
            .map(|request| request.state(now())),
        Some(RequestState::Consumed)
    );
    // Only a release releases.
    let reset = opened(&store, request(ApprovalKind::IdentityReset, "alice", "admin-alice")).await;
    store
        .approve_request(reset.id.clone(), "admin-bob".to_owned(), now())
        .await
        .expect("store")
        .expect("approved");
    assert_eq!(
        release_now(&reset.id).await.expect_err("a reset"),
        ReleaseRefused::NotFound
    );
    assert_eq!(
        release_now(&RequestId::generate()).await.expect_err("unknown"),
        ReleaseRefused::NotFound
    );
}

pub(super) async fn a_reset_deletes_the_wrapped_key_and_keeps_the_escrow<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, certificate("alice", 1, 1)).await;
    committed(&store, certificate("bob", 2, 2)).await;
    let bob = store.identity(&user("bob")).await.expect("read").expect("bob");
    assert!(!bob.wrapped_key_stored);
    assert_eq!(bob.escrow_recovery_key, None);
    registered(&store, 7).await;
    let first = nonce(&store, "alice").await;
    store
        .put_wrapped_key(proven("alice", first, 1), wrapped_key(1), false)
        .await
        .expect("store")
        .expect("stored");
    let second = nonce(&store, "alice").await;
    store
        .deposit_escrow(proven("alice", second, 1), recovery_fingerprint(7), vec![9; 80])
        .await
        .expect("store")
        .expect("deposited");
    let alice = store.identity(&user("alice")).await.expect("read").expect("alice");
    assert!(alice.wrapped_key_stored);
    assert_eq!(alice.escrow_recovery_key, Some(recovery_fingerprint(7)));
    let entry = reset(&store, "alice", 3).await;
    assert!(entry_text(&store, &entry).await.contains("key-backup-deleted true\n"));
    let alice = store.identity(&user("alice")).await.expect("read").expect("alice");
    assert!(!alice.wrapped_key_stored, "made for the old key");
    assert_eq!(
        alice.escrow_recovery_key,
        Some(recovery_fingerprint(7)),
        "the old key may still open old files"
    );
    let read = store
        .read_wrapped_key(&user("alice"), "alice".to_owned(), now())
        .await
        .expect("read");
    assert_eq!(read, None);
    let entry = reset(&store, "bob", 4).await;
    assert!(entry_text(&store, &entry).await.contains("key-backup-deleted false\n"));
}

pub(super) async fn migration_6_applies_to_a_version_5_database_with_rows<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, certificate("alice", 1, 1)).await;
    let pending = opened(&store, request(ApprovalKind::IdentityReset, "alice", "admin-alice")).await;
    drop(store);
    // As a version-5 database holds them: migration 6 undone behind the store's back (the same
    // statements in both dialects).
    harness
        .execute_raw(
            "DROP TABLE escrows; DROP TABLE recovery_keys; DROP TABLE backup_nonces; DROP TABLE key_backups;
             ALTER TABLE approval_requests DROP COLUMN ceremony_reference;
             ALTER TABLE approval_requests DROP COLUMN recovery_spki_der;
             DELETE FROM schema_migrations WHERE version = 6;",
        )
        .await;
    let store = harness.open().await.expect("migration 6 applies");
    assert_eq!(store.request(&pending.id).await.expect("read"), Some(pending));
    let alice = store.identity(&user("alice")).await.expect("read").expect("alice");
    assert!(!alice.wrapped_key_stored);
    assert_eq!(alice.escrow_recovery_key, None);
    let nonce = nonce(&store, "alice").await;
    let stored = store
        .put_wrapped_key(proven("alice", nonce, 1), wrapped_key(1), false)
        .await
        .expect("store");
    assert!(stored.is_ok(), "{stored:?}");
    registered(&store, 7).await;
}
