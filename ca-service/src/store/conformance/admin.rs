//! Conformance: dual-control requests, the reset they authorize, revocations, CRLs and the
//! admin's lookups.

use std::sync::Arc;

use time::OffsetDateTime;

use super::{Harness, certificate, committed, event, key, user};
use crate::api::admin::IdentityDirectory;
use crate::api::identity::CertificateLookup;
use crate::approvals::{
    ApprovalKind, ApprovalRefused, ApprovalRequest, ApprovalStore, NewRequest, OpenRefused, RequestId, RequestState,
};
use crate::audit::AuditKind;
use crate::identity::SerialNumber;
use crate::issuer::{CommitOutcome, IssuanceStore, ResetOutcome};
use crate::revocation::{RevocationReason, RevocationStore, RevocationTarget, RevokeRefused, StoredCrl};

fn new_request(user_name: &str, by: &str, lifetime: time::Duration) -> NewRequest {
    // Stores keep whole seconds (the embedded store) or microseconds: requests are made in whole seconds.
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).expect("whole seconds");
    NewRequest {
        id: RequestId::generate(),
        kind: ApprovalKind::IdentityReset,
        subject: Some(user(user_name)),
        recovery_key: None,
        reason: "lost every device".to_owned(),
        revocation_reason: RevocationReason::KeyCompromise,
        requested_by: by.to_owned(),
        requested_at: now,
        expires_at: now + lifetime,
    }
}

async fn opened(store: &impl ApprovalStore, request: NewRequest) -> ApprovalRequest {
    store.open_request(request).await.expect("store").expect("opened").0
}

async fn approved(store: &impl ApprovalStore, id: &RequestId, by: &str) -> ApprovalRequest {
    store
        .approve_request(id.clone(), by.to_owned(), OffsetDateTime::now_utc())
        .await
        .expect("store")
        .expect("approved")
        .0
}

pub(super) async fn requests_are_approved_once_by_another_admin_before_they_expire<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    // Nothing to reset for a user without a pin.
    let refused = store
        .open_request(new_request("nobody", "admin-alice", time::Duration::hours(24)))
        .await
        .expect("store");
    assert_eq!(refused.expect_err("no pin"), OpenRefused::UnknownUser);
    committed(&store, certificate("alice", 1, 1)).await;
    let request = opened(&store, new_request("alice", "admin-alice", time::Duration::hours(24))).await;
    assert_eq!(request.key_fingerprint, Some(key(1)), "the pin it would replace");
    assert_eq!(request.state(OffsetDateTime::now_utc()), RequestState::Pending);
    // A second open request for the same user is refused, naming the open one.
    let second = store
        .open_request(new_request("alice", "admin-bob", time::Duration::hours(24)))
        .await
        .expect("store");
    assert_eq!(
        second.expect_err("one open"),
        OpenRefused::AlreadyOpen(request.id.clone())
    );
    let listed = store.open_requests(OffsetDateTime::now_utc(), 10).await.expect("list");
    assert_eq!(listed, vec![request.clone()]);
    // Self-approval, then another admin, then a second approval.
    let own = store
        .approve_request(request.id.clone(), "admin-alice".to_owned(), OffsetDateTime::now_utc())
        .await
        .expect("store");
    assert_eq!(own.expect_err("self"), ApprovalRefused::SelfApproval);
    let approval = approved(&store, &request.id, "admin-bob").await;
    assert_eq!(approval.approval.as_ref().map(|(by, _)| by.as_str()), Some("admin-bob"));
    let again = store
        .approve_request(request.id.clone(), "admin-carol".to_owned(), OffsetDateTime::now_utc())
        .await
        .expect("store");
    assert_eq!(
        again.expect_err("approved"),
        ApprovalRefused::NotPending(RequestState::Approved)
    );
    let unknown = store
        .approve_request(RequestId::generate(), "admin-bob".to_owned(), OffsetDateTime::now_utc())
        .await
        .expect("store");
    assert_eq!(unknown.expect_err("unknown"), ApprovalRefused::NotFound);
    // An expired request cannot be approved, and is no longer listed.
    committed(&store, certificate("bob", 2, 2)).await;
    let short = opened(&store, new_request("bob", "admin-alice", time::Duration::seconds(1))).await;
    let later = OffsetDateTime::now_utc() + time::Duration::seconds(5);
    let expired = store
        .approve_request(short.id.clone(), "admin-bob".to_owned(), later)
        .await
        .expect("store");
    assert_eq!(
        expired.expect_err("expired"),
        ApprovalRefused::NotPending(RequestState::Expired)
    );
    let listed = store.open_requests(later, 10).await.expect("list");
    assert_eq!(
        listed.iter().map(|request| request.id.clone()).collect::<Vec<_>>(),
        vec![request.id.clone()]
    );
    // The entries name the requester and the approver as actors.
    let history = store.identity(&user("alice")).await.expect("read").expect("alice");
    let texts: Vec<String> = history
        .entries
        .iter()
        .map(|entry| String::from_utf8(entry.bytes.clone()).expect("utf-8"))
        .collect();
    assert!(
        texts
            .iter()
            .any(|text| text.contains("kind request-opened\n") && text.contains("actor admin-alice\n"))
    );
    assert!(
        texts
            .iter()
            .any(|text| text.contains("kind request-approved\n") && text.contains("actor admin-bob\n"))
    );
}

pub(super) async fn an_approved_reset_pins_the_new_key_revokes_the_old_and_is_consumed_once<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, certificate("alice", 1, 1)).await;
    committed(&store, certificate("alice", 1, 2)).await;
    let request = opened(&store, new_request("alice", "admin-alice", time::Duration::hours(24))).await;
    // Not approved yet: nothing to find.
    let now = OffsetDateTime::now_utc();
    assert_eq!(store.approved_reset(&user("alice"), now).await.expect("read"), None);
    approved(&store, &request.id, "admin-bob").await;
    let grant = store
        .approved_reset(&user("alice"), now)
        .await
        .expect("read")
        .expect("approved");
    assert_eq!(grant.id, request.id);
    let reset_event = crate::audit::AuditEvent {
        kind: AuditKind::IdentityReset,
        ..event("alice")
    };
    let outcome = store
        .commit_reset(certificate("alice", 3, 3), reset_event.clone(), grant.clone())
        .await
        .expect("reset");
    let ResetOutcome::Reset { revoked, .. } = outcome else {
        panic!("expected a reset, got {outcome:?}");
    };
    let mut revoked: Vec<Vec<u8>> = revoked.iter().map(|serial| serial.as_bytes().to_vec()).collect();
    revoked.sort();
    assert_eq!(revoked, vec![vec![1; 16], vec![2; 16]]);
    let state = store
        .pin_state(&user("alice"), &key(3), super::an_hour_ago())
        .await
        .expect("state");
    assert_eq!(state.user_pin, Some(key(3)));
    // Consumed: a second use is refused and writes nothing; the new key renews normally.
    let again = store
        .commit_reset(certificate("alice", 4, 4), reset_event, grant)
        .await
        .expect("store");
    assert_eq!(again, ResetOutcome::NotApproved);
    assert_eq!(store.approved_reset(&user("alice"), now).await.expect("read"), None);
    assert!(matches!(
        store.commit_issuance(certificate("alice", 4, 4), event("alice")).await,
        Ok(CommitOutcome::PinnedToOtherKey(pinned)) if pinned == key(3)
    ));
    let (renewal, _) = committed(&store, certificate("alice", 3, 5)).await;
    assert!(renewal);
    let record = store.identity(&user("alice")).await.expect("read").expect("alice");
    assert_eq!(record.key_fingerprint, key(3));
    let statuses: Vec<(u8, bool)> = record
        .certificates
        .iter()
        .map(|certificate| (certificate.serial.as_bytes()[0], certificate.revocation.is_some()))
        .collect();
    assert_eq!(statuses.len(), 4, "two revoked, the reset's and its renewal");
    for (serial, revoked) in statuses {
        assert_eq!(revoked, serial < 3, "serial {serial}");
    }
    assert!(record.certificates.iter().all(|certificate| {
        certificate
            .revocation
            .is_none_or(|(_, reason)| reason == RevocationReason::KeyCompromise)
    }));
    let latest = store.latest_certificates(vec![user("alice")]).await.expect("lookup");
    assert!(!latest[0].revoked);
}

pub(super) async fn concurrent_consumers_of_one_approval_pin_exactly_one_key<H: Harness>() {
    let harness = H::create().await;
    let store = Arc::new(harness.open().await.expect("open"));
    committed(store.as_ref(), certificate("alice", 1, 1)).await;
    let request = opened(
        store.as_ref(),
        new_request("alice", "admin-alice", time::Duration::hours(24)),
    )
    .await;
    approved(store.as_ref(), &request.id, "admin-bob").await;
    let grant = store
        .approved_reset(&user("alice"), OffsetDateTime::now_utc())
        .await
        .expect("read")
        .expect("approved");
    let attempts: Vec<_> = (0..8u8)
        .map(|attempt| {
            let (store, grant) = (Arc::clone(&store), grant.clone());
            tokio::spawn(async move {
                store
                    .commit_reset(certificate("alice", 10 + attempt, 10 + attempt), event("alice"), grant)
                    .await
                    .expect("store")
            })
        })
        .collect();
    let mut resets = 0;
    for attempt in attempts {
        match attempt.await.expect("task") {
            ResetOutcome::Reset { .. } => resets += 1,
            ResetOutcome::NotApproved => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(resets, 1, "exactly one consumer wins");
}

pub(super) async fn revocations_are_recorded_once_and_listed_for_the_crl<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, certificate("alice", 1, 1)).await;
    committed(&store, certificate("alice", 1, 2)).await;
    committed(&store, certificate("bob", 2, 3)).await;
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).expect("whole seconds");
    let serial = |byte: u8| SerialNumber::from_bytes(vec![byte; 16]);
    let revoke = |target, reason| store.revoke(target, reason, "admin-alice".to_owned(), now);
    let one = revoke(RevocationTarget::Serial(serial(1)), RevocationReason::KeyCompromise)
        .await
        .expect("store")
        .expect("revoked");
    assert_eq!((one.user.as_str(), one.serials.len()), ("alice", 1));
    let twice = revoke(RevocationTarget::Serial(serial(1)), RevocationReason::KeyCompromise)
        .await
        .expect("store");
    assert_eq!(twice.expect_err("again"), RevokeRefused::AlreadyRevoked);
    let missing = revoke(RevocationTarget::Serial(serial(9)), RevocationReason::KeyCompromise)
        .await
        .expect("store");
    assert_eq!(missing.expect_err("unknown"), RevokeRefused::NotFound);
    let nobody = revoke(RevocationTarget::User(user("nobody")), RevocationReason::Superseded)
        .await
        .expect("store");
    assert_eq!(nobody.expect_err("unknown"), RevokeRefused::NotFound);
    // By user: only what is not revoked yet.
    let rest = revoke(
        RevocationTarget::User(user("alice")),
        RevocationReason::AffiliationChanged,
    )
    .await
    .expect("store")
    .expect("revoked");
    assert_eq!(rest.serials, vec![serial(2)]);
    let none_left = revoke(RevocationTarget::User(user("alice")), RevocationReason::Superseded)
        .await
        .expect("store");
    assert_eq!(none_left.expect_err("all revoked"), RevokeRefused::AlreadyRevoked);
    let (latest, revoked) = store.crl_inputs().await.expect("inputs");
    assert_eq!(latest, None);
    let listed: Vec<(Vec<u8>, RevocationReason, OffsetDateTime)> = revoked
        .iter()
        .map(|entry| (entry.serial.as_bytes().to_vec(), entry.reason, entry.revoked_at))
        .collect();
    assert_eq!(
        listed,
        vec![
            (vec![1; 16], RevocationReason::KeyCompromise, now),
            (vec![2; 16], RevocationReason::AffiliationChanged, now)
        ]
    );
    let latest = store
        .latest_certificates(vec![user("alice"), user("bob")])
        .await
        .expect("lookup");
    assert_eq!(
        latest.iter().map(|certificate| certificate.revoked).collect::<Vec<_>>(),
        [true, false]
    );
    // The entry names the admin, the user, the reason and the serials.
    let record = store.identity(&user("alice")).await.expect("read").expect("alice");
    let last = String::from_utf8(record.entries.last().expect("entry").bytes.clone()).expect("utf-8");
    assert!(
        last.contains("kind revocation\n") && last.contains("actor admin-alice\n"),
        "{last}"
    );
    assert!(last.contains("revocation-reason affiliationChanged\n"), "{last}");
    assert!(
        last.contains(&format!("revoked-serials {}\n", serial(2).to_hex())),
        "{last}"
    );
}

pub(super) async fn crl_numbers_only_grow_and_the_latest_is_served<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    assert_eq!(store.latest_crl().await.expect("read"), None);
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).expect("whole seconds");
    let crl = |number: u64| StoredCrl {
        number,
        this_update: now,
        next_update: now + time::Duration::days(1),
        revoked_count: number,
        der: vec![u8::try_from(number).expect("small"); 8],
    };
    assert!(store.store_crl(crl(1)).await.expect("store"));
    assert!(store.store_crl(crl(2)).await.expect("store"));
    assert!(!store.store_crl(crl(2)).await.expect("store"), "a number is taken once");
    assert_eq!(store.latest_crl().await.expect("read"), Some(crl(2)));
    assert_eq!(store.crl_inputs().await.expect("inputs").0, Some(2));
}

pub(super) async fn identities_are_listed_in_pages_by_user_id<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    for (index, name) in ["carol", "alice", "erin", "bob", "dave"].iter().enumerate() {
        let byte = u8::try_from(index).expect("small") + 1;
        committed(&store, certificate(name, byte, byte)).await;
    }
    let first = store.list_identities(None, 2).await.expect("page");
    let names = |page: &[crate::api::admin::IdentitySummary]| {
        page.iter().map(|identity| identity.user.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(&first), ["alice", "bob"]);
    let second = store.list_identities(Some("bob".to_owned()), 2).await.expect("page");
    assert_eq!(names(&second), ["carol", "dave"]);
    let last = store.list_identities(Some("dave".to_owned()), 2).await.expect("page");
    assert_eq!(names(&last), ["erin"]);
    assert!(
        store
            .list_identities(Some("erin".to_owned()), 2)
            .await
            .expect("page")
            .is_empty()
    );
    assert_eq!(first[0].key_fingerprint, key(2));
    assert_eq!(store.identity(&user("nobody")).await.expect("read"), None);
    let alice = store.identity(&user("alice")).await.expect("read").expect("alice");
    assert_eq!(alice.certificates.len(), 1);
    assert_eq!(alice.entries.len(), 1);
    assert!(String::from_utf8_lossy(&alice.entries[0].bytes).contains("subject alice\n"));
}
