//! Conformance behaviours of the transparency log: `LogReader`, `LogSequencer`, exports and migrations.

use std::collections::HashSet;
use std::time::Duration;

use super::*;
use crate::issuer::IssuanceStore;
use crate::storage::StoreError;
use crate::transparency::{LogHead, LogReader, LogSequencer, SequenceOutcome, StoredCheckpoint};
use sha2::Digest;

/// Sequences what is pending the way the store offers, until the log holds `size` entries: handed
/// over to its writer when it sequences inline (then a nudge runs a group), else one `sequence`
/// transaction at a time.
async fn sequence_by_the_stores_path(store: &impl LogSequencer, head: LogHead, size: u64) -> LogHead {
    let Some(inline) = store.inline_sequencing() else {
        return sequence_all(store, 100).await.last().copied().unwrap_or(head);
    };
    inline.hand_over(head, 100);
    store.nudge();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let current = store.log_head().await.expect("head");
        if current.size >= size {
            inline.take_back();
            return current;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer sequenced within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whichever path the store sequences by, committed entries get contiguous indices in commit
/// order, and the head is the RFC 6962 root of exactly their bytes.
pub(super) async fn entries_are_sequenced_by_the_path_the_store_offers<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let mut entries = Vec::new();
    for round in 0..4u8 {
        entries.push(
            committed(&store, certificate(&format!("user-{round}"), round + 1, round + 1))
                .await
                .1,
        );
        entries.push(store.append_event(event("refused")).await.expect("append"));
    }
    let head = sequence_by_the_stores_path(&store, LogHead::empty(), 8).await;
    assert_eq!(head.size, 8);
    let mut indices = Vec::new();
    for entry in &entries {
        indices.push(store.log_index(entry).await.expect("index").expect("sequenced"));
    }
    assert_eq!(indices, (0..8).collect::<Vec<u64>>(), "contiguous, in commit order");
    assert_eq!(head.root, tlog::merkle::tree_root(&leaf_hashes(&store, 8).await));
    assert_eq!(store.log_head().await.expect("head"), head, "and durable");
}

pub(super) async fn sequencing_gives_contiguous_indices_in_batches<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    assert_eq!(store.log_head().await.expect("head"), LogHead::empty());
    let mut entries = Vec::new();
    for round in 0..5u8 {
        entries.push(store.append_event(event("refused")).await.expect("append"));
        entries.push(
            committed(&store, certificate(&format!("user-{round}"), round + 1, round + 1))
                .await
                .1,
        );
    }
    for entry in &entries {
        assert_eq!(
            store.log_index(entry).await.expect("index"),
            None,
            "pending until sequenced"
        );
    }
    let sizes: Vec<u64> = sequence_all(&store, 3).await.iter().map(|head| head.size).collect();
    assert_eq!(sizes, [3, 6, 9, 10], "batches of at most 3, one head per batch");
    let mut indices = Vec::new();
    for entry in &entries {
        indices.push(store.log_index(entry).await.expect("index").expect("sequenced"));
    }
    assert_eq!(indices, (0..10).collect::<Vec<u64>>(), "contiguous, in commit order");
    let hashes: HashSet<[u8; 32]> = entries.iter().map(|entry| entry.entry_hash).collect();
    assert_eq!(hashes.len(), entries.len(), "every entry is distinct (nonce)");
    // The head is the RFC 6962 root of exactly the stored entry bytes.
    let head = store.log_head().await.expect("head");
    assert_eq!(head.size, 10);
    assert_eq!(head.root, tlog::merkle::tree_root(&leaf_hashes(&store, 10).await));
    let exported = store.entries(0, 10).await.expect("entries");
    for (entry, bytes) in entries.iter().zip(&exported) {
        assert_eq!(<[u8; 32]>::from(sha2::Sha256::digest(bytes)), entry.entry_hash);
    }
    // Entries written later continue the sequence.
    let later = store.append_event(event("later")).await.expect("append");
    assert_eq!(sequence_all(&store, 100).await.len(), 1);
    assert_eq!(store.log_index(&later).await.expect("index"), Some(10));
}

pub(super) async fn proofs_from_stored_nodes_verify<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    for _ in 0..13 {
        store.append_event(event("entry")).await.expect("append");
    }
    sequence_all(&store, 5).await;
    let leaves = leaf_hashes(&store, 13).await;
    for size in 1..=13u64 {
        let root = tlog::merkle::tree_root(&leaves[..size as usize]);
        for index in 0..size {
            let proof = crate::transparency::inclusion_proof(&store, index, size)
                .await
                .expect("inclusion proof");
            tlog::proof::verify_inclusion(&leaves[index as usize], index, size, &proof, &root)
                .unwrap_or_else(|error| panic!("inclusion of {index} in {size}: {error}"));
        }
        for old_size in 0..=size {
            let old_root = tlog::merkle::tree_root(&leaves[..old_size as usize]);
            let proof = crate::transparency::consistency_proof(&store, old_size, size)
                .await
                .expect("consistency proof");
            tlog::proof::verify_consistency(old_size, size, &old_root, &root, &proof)
                .unwrap_or_else(|error| panic!("consistency {old_size} -> {size}: {error}"));
        }
    }
    let beyond = crate::transparency::inclusion_proof(&store, 3, 14).await;
    assert!(
        matches!(beyond, Err(crate::transparency::ProofError::Missing(..))),
        "{beyond:?}"
    );
}

pub(super) async fn a_stale_head_is_refused_and_nothing_is_written<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let first = store.append_event(event("first")).await.expect("append");
    sequence_all(&store, 10).await;
    let head = store.log_head().await.expect("head");
    let second = store.append_event(event("second")).await.expect("append");
    // A sequencer that still believes the log is empty (it lost a race or was partitioned).
    let outcome = store.sequence(LogHead::empty(), 10).await.expect("sequence");
    assert_eq!(outcome, SequenceOutcome::HeadMoved(head));
    let forged = LogHead { size: 1, root: [9; 32] };
    assert_eq!(
        store.sequence(forged, 10).await.expect("sequence"),
        SequenceOutcome::HeadMoved(head)
    );
    assert_eq!(store.log_head().await.expect("head"), head, "the head did not move");
    assert_eq!(
        store.log_index(&second).await.expect("index"),
        None,
        "nothing was sequenced"
    );
    assert_eq!(store.log_index(&first).await.expect("index"), Some(0));
    assert_eq!(sequence_all(&store, 10).await.last().map(|head| head.size), Some(2));
}

pub(super) async fn concurrent_sequencers_never_fork<H: Harness>() {
    let harness = H::create().await;
    // Two handles on one database, like two replicas that both believe they lead.
    let stores = [harness.open().await.expect("open"), harness.open().await.expect("open")];
    let writer = {
        let store = stores[0].clone();
        tokio::spawn(async move {
            let mut written = Vec::new();
            for _ in 0..40 {
                written.push(store.append_event(event("racing")).await.expect("append"));
            }
            written
        })
    };
    let sequencers: Vec<_> = stores
        .iter()
        .cloned()
        .map(|store| {
            tokio::spawn(async move {
                let mut head = LogHead::empty();
                let mut moved = 0;
                for _ in 0..400 {
                    match store.sequence(head, 3).await.expect("sequence") {
                        SequenceOutcome::Sequenced { head: new_head, .. } | SequenceOutcome::Idle(new_head) => {
                            head = new_head
                        }
                        SequenceOutcome::HeadMoved(actual) => {
                            moved += 1;
                            head = actual;
                        }
                    }
                    if head.size == 40 {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                moved
            })
        })
        .collect();
    let written = writer.await.expect("writer");
    for sequencer in sequencers {
        sequencer.await.expect("sequencer");
    }
    sequence_all(&stores[0], 100).await;
    let head = stores[1].log_head().await.expect("head");
    assert_eq!(head.size, 40, "every entry sequenced exactly once");
    let mut indices = Vec::new();
    for entry in &written {
        indices.push(stores[0].log_index(entry).await.expect("index").expect("sequenced"));
    }
    indices.sort_unstable();
    assert_eq!(indices, (0..40).collect::<Vec<u64>>(), "no gap, no duplicate");
    assert_eq!(head.root, tlog::merkle::tree_root(&leaf_hashes(&stores[1], 40).await));
}

/// Many appends at once (which PostgreSQL commits in groups): each caller gets its own entry, the
/// one holding exactly its bytes, and every entry is stored once.
pub(super) async fn concurrent_appends_are_each_committed_once<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let appends: Vec<_> = (0..300)
        .map(|number| {
            let store = store.clone();
            tokio::spawn(async move {
                let event = event(&format!("user-{number}"));
                let entry = store.append_event(event).await.expect("append");
                (number, entry)
            })
        })
        .collect();
    let mut answered = Vec::new();
    for append in appends {
        answered.push(append.await.expect("task"));
    }
    let ids: HashSet<i64> = answered.iter().map(|(_, entry)| entry.entry_id).collect();
    assert_eq!(ids.len(), 300, "one entry per caller");
    sequence_all(&store, 1000).await;
    assert_eq!(store.log_head().await.expect("head").size, 300, "each stored once");
    let stored = store.entries(0, 300).await.expect("entries");
    for (number, entry) in &answered {
        let index = store.log_index(entry).await.expect("index").expect("sequenced");
        let bytes = &stored[index as usize];
        assert_eq!(
            <[u8; 32]>::from(sha2::Sha256::digest(bytes)),
            entry.entry_hash,
            "the caller's reference names its own entry"
        );
        let text = String::from_utf8_lossy(bytes);
        assert!(text.contains(&format!("\nsubject user-{number}\n")), "{text}");
    }
}

pub(super) async fn checkpoints_keep_history_and_refuse_a_fork<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    assert_eq!(store.latest_checkpoint().await.expect("latest"), None);
    let checkpoint = |size: u64, root: u8, note: &str| StoredCheckpoint {
        size,
        root: [root; 32],
        note: note.to_owned(),
    };
    store.store_checkpoint(checkpoint(0, 0, "empty")).await.expect("store");
    store.store_checkpoint(checkpoint(3, 3, "three")).await.expect("store");
    store.store_checkpoint(checkpoint(2, 2, "two")).await.expect("store");
    assert_eq!(
        store.latest_checkpoint().await.expect("latest"),
        Some(checkpoint(3, 3, "three")),
        "the largest size is the latest"
    );
    // A heartbeat re-signature of the same tree replaces the note.
    store
        .store_checkpoint(checkpoint(3, 3, "three again"))
        .await
        .expect("store");
    assert_eq!(
        store.latest_checkpoint().await.expect("latest").expect("some").note,
        "three again"
    );
    // Another root at a signed size is a fork: refused, and the signed one stays.
    let fork = store.store_checkpoint(checkpoint(3, 4, "fork")).await;
    assert!(matches!(fork, Err(StoreError::Integrity(_))), "{fork:?}");
    assert_eq!(
        store.latest_checkpoint().await.expect("latest").expect("some").note,
        "three again"
    );
}

/// A software Ed25519 checkpoint signer (the service signs on the HSM; the export does not care).
struct TestSigner {
    key_pair: ring::signature::Ed25519KeyPair,
    verifier: tlog::key::VerifierKey,
}

impl TestSigner {
    fn new(origin: &str) -> TestSigner {
        use ring::signature::KeyPair;
        let key_pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[9; 32]).expect("seed");
        let public_key: [u8; 32] = key_pair.public_key().as_ref().try_into().expect("32 bytes");
        let name = tlog::note::KeyName::new(origin).expect("name");
        TestSigner {
            key_pair,
            verifier: tlog::key::VerifierKey::ed25519(name, public_key),
        }
    }
}

impl tlog::note::NoteSigner for TestSigner {
    type Error = std::convert::Infallible;

    fn key_name(&self) -> &tlog::note::KeyName {
        self.verifier.name()
    }

    fn key_id(&self) -> tlog::note::KeyId {
        self.verifier.key_id()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Self::Error> {
        Ok(self.key_pair.sign(message).as_ref().to_vec())
    }
}

pub(super) async fn exports_hold_the_latest_checkpoint_and_its_entries<H: Harness>() {
    use crate::transparency::export;
    let harness = H::create().await;
    let store = harness.open().await.expect("open");
    let out = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        export::export(&store, out.path(), None).await,
        Err(export::ExportError::NoCheckpoint)
    ));
    // Issuances whose entries record their certificates as the issuer's do, so that the export
    // replays and its certificates check.
    let issue = async |certificate: crate::issuer::NewCertificate| {
        let event = AuditEvent {
            details: vec![
                ("key-sha256", certificate.key_fingerprint.to_hex()),
                ("serial", certificate.serial.to_hex()),
                (
                    "certificate-sha256",
                    hex::encode(sha2::Sha256::digest(&certificate.certificate_der)),
                ),
            ],
            ..event(certificate.user_id.as_str())
        };
        let outcome = store.commit_issuance(certificate, event).await.expect("commit");
        assert!(
            matches!(outcome, CommitOutcome::Committed { renewal: false, .. }),
            "{outcome:?}"
        );
    };
    for round in 0..5u8 {
        issue(certificate(&format!("user-{round}"), round + 1, round + 1)).await;
    }
    let head = *sequence_all(&store, 3).await.last().expect("sequenced");
    let signer = TestSigner::new("test.example/log");
    let body = tlog::checkpoint::Checkpoint::new("test.example/log", head.size, head.root).expect("checkpoint");
    let note = tlog::note::SignedNote::sign(&body.to_string(), &signer).expect("sign");
    store
        .store_checkpoint(StoredCheckpoint {
            size: head.size,
            root: head.root,
            note: note.to_string(),
        })
        .await
        .expect("store checkpoint");
    // One more certificate is sequenced but not yet signed: the export stops at the checkpoint,
    // and the certificate is exported as one the verifier cannot check yet.
    issue(certificate("user-late", 9, 9)).await;
    sequence_all(&store, 3).await;
    let summary = export::export(&store, out.path(), Some(&signer.verifier))
        .await
        .expect("export");
    assert_eq!((summary.entries, summary.missing_leaf), (head.size, None));
    let certificates = export::export_certificates(&store, out.path(), summary.entries)
        .await
        .expect("export certificates");
    assert_eq!((certificates.certificates, certificates.beyond_checkpoint), (6, 1));
    let options = export::VerifyOptions {
        trusted_key: signer.verifier.clone(),
        pinned: None,
        time_tolerance: Duration::from_secs(1),
    };
    let report = export::verify(out.path(), &options).expect("the export verifies");
    assert_eq!(report.size, 5);
    assert!(report.leaves_checked);
    assert_eq!((report.history.users, report.history.pins), (5, 5));
    assert_eq!(
        report.certificates,
        Some(export::CertificateCounts {
            checked: 5,
            beyond_checkpoint: 1
        })
    );
    let entries =
        export::parse_entries(&std::fs::read(out.path().join(export::ENTRIES_FILE)).expect("read")).expect("entries");
    let stored = store.entries(0, 5).await.expect("entries");
    assert_eq!(entries.into_iter().map(|entry| entry.bytes).collect::<Vec<_>>(), stored);
}

pub(super) async fn migrations_are_idempotent_and_refuse_newer_schemas<H: Harness>() {
    let harness = H::create().await;
    let store = harness.open().await.expect("first open migrates");
    committed(&store, certificate("alice", 1, 1)).await;
    drop(store);
    let store = harness.open().await.expect("second open is a no-op");
    let alice = store
        .pin_state(&user("alice"), &key(1), an_hour_ago())
        .await
        .expect("pin state");
    assert_eq!(alice.user_pin, Some(key(1)), "data survives reopening");
    drop(store);
    harness.record_schema_version(99).await;
    match harness.open().await {
        Err(StoreError::Schema(message)) => assert!(message.contains("99"), "{message}"),
        other => panic!("expected a schema error, got {other:?}"),
    }
}
