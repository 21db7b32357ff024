//! Conformance behaviours of pins and certificates: `IssuanceStore`, `CertificateLookup`, `CaRecord`, `StoreHealth`.

use time::OffsetDateTime;

use super::*;
use crate::api::identity::CertificateLookup;
use crate::health::StoreHealth;
use crate::identity::KeyFingerprint;
use crate::issuer::{CommitOutcome, IssuanceStore, NewCertificate, PinState, RateLimit};
use crate::service::CaRecord;
use crate::storage::StoreError;
use crate::transparency::LogReader;

pub(super) async fn pins_are_unique_both_ways<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let (renewal, entry) = committed(&store, certificate("alice", 1, 1)).await;
    assert!(!renewal, "the first certificate pins the key");
    assert_eq!(entry.entry_id, 1);

    let other_key = store.commit_issuance(certificate("alice", 2, 2), event("alice")).await;
    assert_eq!(other_key.expect("commit"), CommitOutcome::PinnedToOtherKey(key(1)));
    let stolen_key = store.commit_issuance(certificate("bob", 1, 3), event("bob")).await;
    assert_eq!(stolen_key.expect("commit"), CommitOutcome::KeyPinnedElsewhere);

    // Refusals write nothing: no pin, no certificate, no audit entry.
    let bob = store
        .pin_state(&user("bob"), &key(2), an_hour_ago())
        .await
        .expect("pin state");
    assert_eq!(
        bob,
        PinState {
            user_pin: None,
            pin_entry: None,
            key_pinned_elsewhere: false,
            certificates_since: 0
        },
        "key 2 was not pinned to anyone"
    );
    let since = OffsetDateTime::now_utc() - time::Duration::hours(1);
    assert_eq!(certificates_since(&store, &user("alice"), since).await, 1);
    assert_eq!(certificates_since(&store, &user("bob"), since).await, 0);
    assert_eq!(logged_entries(&store).await, 1, "refusals appended no entry");
}

pub(super) async fn pin_state_reports_both_directions<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let unknown = store
        .pin_state(&user("alice"), &key(1), an_hour_ago())
        .await
        .expect("pin state");
    assert_eq!(
        unknown,
        PinState {
            user_pin: None,
            pin_entry: None,
            key_pinned_elsewhere: false,
            certificates_since: 0
        }
    );
    let (_, pinning) = committed(&store, certificate("alice", 1, 1)).await;
    let own = store
        .pin_state(&user("alice"), &key(1), an_hour_ago())
        .await
        .expect("pin state");
    let pin_entry = own.pin_entry.clone().expect("the pin references its entry");
    assert_eq!(sha256(&pin_entry.bytes), pinning.entry_hash);
    assert_eq!(
        own,
        PinState {
            user_pin: Some(key(1)),
            pin_entry: Some(pin_entry),
            key_pinned_elsewhere: false,
            certificates_since: 1
        }
    );
    let other = store
        .pin_state(&user("bob"), &key(1), an_hour_ago())
        .await
        .expect("pin state");
    assert_eq!(
        other,
        PinState {
            user_pin: None,
            pin_entry: None,
            key_pinned_elsewhere: true,
            certificates_since: 0
        }
    );
}

pub(super) async fn renewals_are_detected<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    assert!(!committed(&store, certificate("alice", 1, 1)).await.0);
    assert!(
        committed(&store, certificate("alice", 1, 2)).await.0,
        "same key again is a renewal"
    );
    assert!(committed(&store, certificate("alice", 1, 3)).await.0);
    let since = OffsetDateTime::now_utc() - time::Duration::hours(1);
    assert_eq!(certificates_since(&store, &user("alice"), since).await, 3);
}

pub(super) async fn duplicate_serial_is_an_integrity_error_and_writes_nothing<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, certificate("alice", 1, 7)).await;
    // A new user whose certificate reuses a serial: the pin must roll back with the certificate.
    let duplicate = store.commit_issuance(certificate("bob", 2, 7), event("bob")).await;
    assert!(matches!(duplicate, Err(StoreError::Integrity(_))), "{duplicate:?}");
    let bob = store
        .pin_state(&user("bob"), &key(2), an_hour_ago())
        .await
        .expect("pin state");
    assert_eq!(bob.user_pin, None, "the pin was rolled back");
    assert!(!bob.key_pinned_elsewhere);
    // A renewal reusing a serial.
    let duplicate = store.commit_issuance(certificate("alice", 1, 7), event("alice")).await;
    assert!(matches!(duplicate, Err(StoreError::Integrity(_))), "{duplicate:?}");
    let since = OffsetDateTime::now_utc() - time::Duration::hours(1);
    assert_eq!(certificates_since(&store, &user("alice"), since).await, 1);
    assert_eq!(logged_entries(&store).await, 1, "no audit entry for the failed commits");
    // Bob can still enroll with a fresh serial.
    assert!(!committed(&store, certificate("bob", 2, 8)).await.0);
}

pub(super) async fn latest_certificates_returns_the_newest_per_known_user<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, certificate("alice", 1, 1)).await;
    committed(&store, certificate("alice", 1, 2)).await;
    committed(&store, certificate("bob", 2, 3)).await;
    committed(&store, certificate("alice", 1, 4)).await;
    let mut latest = store
        .latest_certificates(vec![user("alice"), user("carol"), user("bob")])
        .await
        .expect("latest");
    latest.sort_by(|left, right| left.user_id.as_str().cmp(right.user_id.as_str()));
    let summary: Vec<(&str, &[u8], KeyFingerprint, &[u8])> = latest
        .iter()
        .map(|stored| {
            (
                stored.user_id.as_str(),
                stored.serial.as_bytes(),
                stored.key_fingerprint,
                stored.certificate_der.as_slice(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("alice", &[4; 16][..], key(1), &[4; 16][..]),
            ("bob", &[3; 16][..], key(2), &[3; 16][..]),
        ],
        "carol is unknown and omitted"
    );
    assert!(store.latest_certificates(vec![]).await.expect("latest").is_empty());
}

pub(super) async fn certificates_since_counts_a_users_window<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, certificate("alice", 1, 1)).await;
    committed(&store, certificate("alice", 1, 2)).await;
    committed(&store, certificate("bob", 2, 3)).await;
    let now = OffsetDateTime::now_utc();
    let alice = user("alice");
    assert_eq!(
        certificates_since(&store, &alice, now - time::Duration::days(1)).await,
        2
    );
    assert_eq!(
        certificates_since(&store, &alice, now + time::Duration::minutes(5)).await,
        0,
        "nothing issued in the future"
    );
    assert_eq!(
        certificates_since(&store, &user("carol"), now - time::Duration::days(1)).await,
        0
    );
}

/// Issuances committed at once (which both stores commit in groups): each gets the outcome it
/// would have alone, a duplicate serial fails only its own issuance, and only the issuances that
/// stand write an entry.
pub(super) async fn a_group_gives_each_commit_the_outcome_it_would_have_alone<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, certificate("bob", 2, 200)).await;
    committed(&store, certificate("carol", 3, 201)).await;
    let members = [
        (certificate("alice", 1, 11), "serial 11"),
        (certificate("bob", 2, 12), "renewal"),
        (certificate("carol", 9, 13), "carol's other key"),
        (certificate("dave", 3, 14), "carol's key"),
        (certificate("erin", 5, 11), "serial 11"),
    ];
    let commits: Vec<_> = members
        .into_iter()
        .map(|(certificate, why)| {
            let store = store.clone();
            tokio::spawn(async move {
                let user_name = certificate.user_id.to_string();
                (why, store.commit_issuance(certificate, event(&user_name)).await)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for commit in commits {
        outcomes.push(commit.await.expect("task"));
    }
    let mut serial_refused = 0;
    for (why, outcome) in outcomes {
        match why {
            "renewal" => assert!(
                matches!(outcome, Ok(CommitOutcome::Committed { renewal: true, .. })),
                "{why}: {outcome:?}"
            ),
            "carol's other key" => assert_eq!(outcome.expect(why), CommitOutcome::PinnedToOtherKey(key(3))),
            "carol's key" => assert_eq!(outcome.expect(why), CommitOutcome::KeyPinnedElsewhere),
            _ => match outcome {
                // Alice and erin share a serial: whichever came second was refused alone.
                Err(StoreError::Integrity(_)) => serial_refused += 1,
                Ok(CommitOutcome::Committed { renewal: false, .. }) => {}
                other => panic!("{why}: {other:?}"),
            },
        }
    }
    let since = an_hour_ago();
    let alice = store.pin_state(&user("alice"), &key(1), since).await.expect("alice");
    let erin = store.pin_state(&user("erin"), &key(5), since).await.expect("erin");
    assert_eq!(serial_refused, 1, "exactly one of the two with serial 11 was refused");
    assert_eq!(
        u64::from(alice.user_pin.is_some()) + u64::from(erin.user_pin.is_some()),
        1,
        "the refused issuance pinned nothing"
    );
    assert_eq!(
        store
            .pin_state(&user("dave"), &key(3), since)
            .await
            .expect("dave")
            .user_pin,
        None
    );
    let entries = sequence_all(&store, 100).await.last().map_or(0, |head| head.size);
    assert_eq!(
        entries,
        2 + 2,
        "one entry per issuance that stands: the two before, bob's renewal, serial 11"
    );
}

/// Many concurrent commits, every fourth reusing the serial of the one before it: each caller is
/// answered once, with its own outcome, and only the committed ones wrote entries.
pub(super) async fn concurrent_commits_are_each_answered_once_with_their_own_outcome<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let commits: Vec<_> = (0..64u8)
        .map(|number| {
            let store = store.clone();
            let serial = number - u8::from(number % 4 == 3);
            tokio::spawn(async move {
                store
                    .commit_issuance(certificate(&format!("user{number}"), number, serial), event("x"))
                    .await
            })
        })
        .collect();
    let (mut committed_count, mut refused) = (0, 0);
    for commit in commits {
        match commit.await.expect("task") {
            Ok(CommitOutcome::Committed { .. }) => committed_count += 1,
            Err(StoreError::Integrity(_)) => refused += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((committed_count, refused), (48, 16));
    let entries = sequence_all(&store, 100).await.last().map_or(0, |head| head.size);
    assert_eq!(
        entries, 48,
        "one entry per committed issuance, none for the refused ones"
    );
}

/// The rate limit's window counts the times the issuer's clock gave the certificates, not the
/// store's own clock: what lets the issuer's expiry logic run on a clock that tests control.
pub(super) async fn the_window_counts_the_issue_times_the_issuer_gave<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let now = OffsetDateTime::now_utc();
    for (serial, age) in [
        (1, time::Duration::days(3)),
        (2, time::Duration::hours(25)),
        (3, time::Duration::hours(2)),
    ] {
        let mut issued = certificate("alice", 1, serial);
        issued.issued_at = now - age;
        committed(&store, issued).await;
    }
    let alice = user("alice");
    assert_eq!(
        certificates_since(&store, &alice, now - time::Duration::days(1)).await,
        1
    );
    assert_eq!(
        certificates_since(&store, &alice, now - time::Duration::days(2)).await,
        2
    );
    assert_eq!(
        certificates_since(&store, &alice, now - time::Duration::days(4)).await,
        3
    );
}

pub(super) async fn concurrent_commits_for_one_user_pin_exactly_one_key<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let tasks: Vec<_> = (0..32u8)
        .map(|index| {
            let store = store.clone();
            tokio::spawn(async move {
                let certificate = certificate("alice", index + 1, index + 1);
                (index + 1, store.commit_issuance(certificate, event("alice")).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut outcomes = Vec::new();
    for task in tasks {
        let (key_byte, outcome) = task.await.expect("task");
        match outcome.expect("no store error") {
            CommitOutcome::Committed { renewal: false, .. } => winners.push(key_byte),
            other => outcomes.push(other),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one key is pinned: {winners:?}");
    let winner = key(winners[0]);
    assert_eq!(outcomes.len(), 31);
    assert!(
        outcomes
            .iter()
            .all(|outcome| *outcome == CommitOutcome::PinnedToOtherKey(winner)),
        "every loser names the winning key: {outcomes:?}"
    );
    let alice = store
        .pin_state(&user("alice"), &winner, an_hour_ago())
        .await
        .expect("pin state");
    assert_eq!(alice.user_pin, Some(winner));
    assert_eq!(logged_entries(&store).await, 1, "only the winner appended an entry");
}

pub(super) async fn concurrent_commits_of_one_key_pin_it_to_exactly_one_user<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let tasks: Vec<_> = (0..16u8)
        .map(|index| {
            let store = store.clone();
            tokio::spawn(async move {
                let user_name = format!("user-{index}");
                let certificate = certificate(&user_name, 42, index + 1);
                store.commit_issuance(certificate, event(&user_name)).await
            })
        })
        .collect();
    let mut committed_count = 0;
    for task in tasks {
        match task.await.expect("task").expect("no store error") {
            CommitOutcome::Committed { renewal: false, .. } => committed_count += 1,
            CommitOutcome::KeyPinnedElsewhere => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(committed_count, 1, "the key belongs to exactly one user");
}

pub(super) async fn ping_answers<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    store.ping().await.expect("ping");
}

/// The CA certificate's entry is written once per certificate, also when replicas race to write it.
pub(super) async fn a_ca_certificate_is_recorded_once<H: Harness>() {
    let harness = H::create().await;
    let stores = [harness.open().await.expect("open"), harness.open().await.expect("open")];
    let racers: Vec<_> = (0..8)
        .map(|number| {
            let store = stores[number % 2].clone();
            tokio::spawn(async move { store.record_ca_certificate([7; 32], event("ca-key")).await })
        })
        .collect();
    let mut recorded = Vec::new();
    for racer in racers {
        if let Some(entry) = racer.await.expect("task").expect("record") {
            recorded.push(entry);
        }
    }
    assert_eq!(recorded.len(), 1, "one entry for one certificate");
    let another = stores[0]
        .record_ca_certificate([8; 32], event("ca-key"))
        .await
        .expect("record");
    assert!(another.is_some(), "another certificate gets its own entry");
    sequence_all(&stores[0], 100).await;
    assert_eq!(
        stores[1].log_head().await.expect("head").size,
        2,
        "nothing else was written"
    );
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// `certificate`, held to at most `max` certificates in the last hour.
fn limited(mut certificate: NewCertificate, max: u64) -> NewCertificate {
    certificate.rate_limit = RateLimit {
        since: an_hour_ago(),
        max,
    };
    certificate
}

pub(super) async fn pins_and_certificates_reference_their_entries<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let (_, pinning) = committed(&store, certificate("alice", 1, 1)).await;
    let (renewal, renewing) = committed(&store, certificate("alice", 1, 2)).await;
    assert!(renewal);
    sequence_all(&store, 16).await;
    let state = store
        .pin_state(&user("alice"), &key(1), an_hour_ago())
        .await
        .expect("pin state");
    let pin_entry = state.pin_entry.expect("the pin references an entry");
    assert_eq!(
        sha256(&pin_entry.bytes),
        pinning.entry_hash,
        "a renewal does not move the pin's entry"
    );
    let index = pin_entry.leaf_index.expect("sequenced");
    assert_eq!(pin_entry.tree_leaf_hash, Some(tlog::leaf_hash(&pin_entry.bytes)));
    let stored = store.entries(index, index + 1).await.expect("entries");
    assert_eq!(stored, vec![pin_entry.bytes.clone()]);

    let latest = store.latest_certificates(vec![user("alice")]).await.expect("lookup");
    let entry = latest[0]
        .entry
        .as_deref()
        .expect("the certificate references its entry");
    assert_eq!(
        sha256(entry),
        renewing.entry_hash,
        "the newest certificate is the renewal's"
    );
}

pub(super) async fn a_renewal_over_the_rate_limit_writes_nothing<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, limited(certificate("alice", 1, 1), 2)).await;
    committed(&store, limited(certificate("alice", 1, 2), 2)).await;
    let refused = store
        .commit_issuance(limited(certificate("alice", 1, 3), 2), event("alice"))
        .await
        .expect("commit");
    assert_eq!(refused, CommitOutcome::RateLimited(2));
    assert_eq!(certificates_since(&store, &user("alice"), an_hour_ago()).await, 2);
    // A first issuance is not a renewal: the limit does not apply to it.
    committed(&store, limited(certificate("bob", 2, 4), 0)).await;
}

pub(super) async fn concurrent_renewals_never_pass_the_rate_limit<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    committed(&store, limited(certificate("alice", 1, 1), 20)).await;
    let renewals: Vec<_> = (2..=61u8)
        .map(|serial| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .commit_issuance(limited(certificate("alice", 1, serial), 20), event("alice"))
                    .await
            })
        })
        .collect();
    let (mut renewed, mut refused) = (0, 0);
    for renewal in renewals {
        match renewal.await.expect("task").expect("no store error") {
            CommitOutcome::Committed { renewal: true, .. } => renewed += 1,
            CommitOutcome::RateLimited(count) => {
                assert_eq!(count, 20, "a refusal counts the full window");
                refused += 1;
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((renewed, refused), (19, 41), "20 in the window, the rest refused");
    assert_eq!(certificates_since(&store, &user("alice"), an_hour_ago()).await, 20);
}

/// The backfill of migration 5 (its statements after the column definitions), as the store
/// `H` runs it.
fn backfill_statements(migration: &str) -> &str {
    let start = migration.find("UPDATE identities").expect("the backfill");
    &migration[start..]
}

pub(super) async fn migration_5_backfills_the_entries_of_pins_and_certificates<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    // Entries as the issuer writes them: naming the key and the serial.
    let commit = async |certificate: NewCertificate| {
        let event = AuditEvent {
            details: vec![
                ("key-sha256", certificate.key_fingerprint.to_hex()),
                ("serial", certificate.serial.to_hex()),
            ],
            ..event(certificate.user_id.as_str())
        };
        match store.commit_issuance(certificate, event).await.expect("commit") {
            CommitOutcome::Committed { entry, .. } => entry,
            other => panic!("expected Committed, got {other:?}"),
        }
    };
    let pinning = commit(certificate("alice", 1, 1)).await;
    let renewing = commit(certificate("alice", 1, 2)).await;
    commit(certificate("bob", 2, 3)).await;
    // As a version-4 database holds them: no references.
    harness
        .execute_raw("UPDATE identities SET pin_entry_id = NULL; UPDATE certificates SET entry_id = NULL;")
        .await;
    let state = store
        .pin_state(&user("alice"), &key(1), an_hour_ago())
        .await
        .expect("pin state");
    assert_eq!(state.pin_entry, None);
    let migration = if std::any::type_name::<H>().contains("Sqlite") {
        include_str!("../sqlite/migrations/0005_log_backed_pins.sql")
    } else {
        include_str!("../postgres/migrations/0005_log_backed_pins.sql")
    };
    harness.execute_raw(backfill_statements(migration)).await;
    let state = store
        .pin_state(&user("alice"), &key(1), an_hour_ago())
        .await
        .expect("pin state");
    let pin_entry = state.pin_entry.expect("backfilled");
    assert_eq!(
        sha256(&pin_entry.bytes),
        pinning.entry_hash,
        "the issuance, not the renewal"
    );
    let latest = store.latest_certificates(vec![user("alice")]).await.expect("lookup");
    let entry = latest[0].entry.as_deref().expect("backfilled");
    assert_eq!(sha256(entry), renewing.entry_hash);
}
