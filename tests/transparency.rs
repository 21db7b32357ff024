//! End-to-end transparency log: issued certificates are provably in HSM-signed checkpoints, checked over gRPC with only the tlog crate.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use std::time::{Duration, Instant};

use common::{DevServer, UserKey, UserKeyPair, audit_export, ca_info, issue, issue_with_receipt};
use e2ee_ca_proto::v1::transparency_client::TransparencyClient;
use e2ee_ca_proto::v1::{
    ExportEntriesRequest, GetCheckpointRequest, GetConsistencyProofRequest, GetInclusionProofRequest,
};
use sha2::{Digest, Sha256};
use tlog::checkpoint::SignedCheckpoint;
use tlog::key::VerifierKey;
use tlog::merkle::Hash;
use tlog::note::SignedNote;
use tlog::tlog_proof::TlogProof;
use tonic::Code;
use tonic::transport::Channel;

/// What a client pins from `GetCaInfo`: the origin and the checkpoint keys.
struct LogTrust {
    origin: String,
    verifiers: Vec<VerifierKey>,
}

impl LogTrust {
    /// The log's origin and checkpoint keys as `GetCaInfo` publishes them.
    fn from_ca_info(info: &e2ee_ca_proto::v1::GetCaInfoResponse) -> LogTrust {
        LogTrust {
            origin: info.log_origin.clone(),
            verifiers: info
                .checkpoint_verifier_keys
                .iter()
                .map(|vkey| VerifierKey::parse(vkey).expect("vkey parses"))
                .collect(),
        }
    }
}

/// Polls `GetCheckpoint` until a checkpoint of at least `min_size` verifies; returns it opened.
async fn checkpoint_covering(
    client: &mut TransparencyClient<Channel>,
    trust: &LogTrust,
    min_size: u64,
) -> SignedCheckpoint {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match client.get_checkpoint(GetCheckpointRequest {}).await {
            Ok(response) => {
                let response = response.into_inner();
                let note = SignedNote::parse(&response.checkpoint).expect("the checkpoint is a signed note");
                let opened = SignedCheckpoint::open(note, &trust.origin, &trust.verifiers)
                    .expect("the checkpoint verifies with the vkey from GetCaInfo");
                assert_eq!(opened.checkpoint().size(), response.tree_size);
                if opened.checkpoint().size() >= min_size {
                    return opened;
                }
            }
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of size {min_size} within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hashes(raw: Vec<Vec<u8>>) -> Vec<Hash> {
    raw.into_iter()
        .map(|hash| Hash::try_from(hash.as_slice()).expect("32-byte hash"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuances_are_provably_in_signed_checkpoints() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), "ecdsa-p256");
    let mut identity = server.client().await;
    let info = ca_info(&mut identity).await;
    assert_eq!(info.log_origin, "localhost/e2ee-ca-dev/audit-log");
    let trust = LogTrust::from_ca_info(&info);
    assert_eq!(trust.verifiers.len(), 1, "one checkpoint key");
    assert_eq!(trust.verifiers[0].name().as_str(), info.log_origin, "key name = origin");
    let mut transparency = server.transparency().await;

    // 1. Issue; the response carries the sequenced index.
    let alice = UserKeyPair::generate(UserKey::EcP256);
    let issued = issue_with_receipt(&mut identity, "alice", &alice.csr("alice"))
        .await
        .expect("issued");
    let entry_ref = issued.log_entry.expect("the response names its log entry");

    // 2. Wait for a checkpoint covering it, verified with the vkey from GetCaInfo.
    let first = checkpoint_covering(&mut transparency, &trust, entry_ref.index + 1).await;
    let first_size = first.checkpoint().size();

    // 3. The inclusion proof over gRPC, checked with tlog alone.
    let proof = transparency
        .get_inclusion_proof(GetInclusionProofRequest {
            leaf_index: entry_ref.index,
            tree_size: first_size,
        })
        .await
        .expect("inclusion proof")
        .into_inner();
    assert_eq!(
        hex::encode(Sha256::digest(&proof.entry)),
        entry_ref.entry_hash,
        "the proven entry is the one the issuance named"
    );
    let text = String::from_utf8(proof.entry.clone()).expect("entries are UTF-8");
    assert!(text.contains("\nkind issuance\n"), "{text}");
    assert!(text.contains("\nsubject alice\n"), "{text}");
    assert!(text.contains(&format!("\nserial {}\n", issued.serial_hex)), "{text}");
    let path = hashes(proof.hashes);
    tlog::proof::verify_inclusion(
        &tlog::leaf_hash(&proof.entry),
        entry_ref.index,
        first_size,
        &path,
        first.checkpoint().root_hash(),
    )
    .expect("the inclusion proof verifies against the signed root");
    // The receipt that came with the certificate verifies offline on its own.
    let receipt = TlogProof::parse(&entry_ref.tlog_proof).expect("IssueCertificate returned a tlog-proof");
    let receipt_checkpoint = receipt
        .verify(&proof.entry, &trust.origin, &trust.verifiers)
        .expect("the receipt proves the entry in a signed checkpoint");
    assert!(receipt_checkpoint.checkpoint().size() > entry_ref.index);
    let mut tampered = proof.entry.clone();
    tampered[0] ^= 1;
    assert!(
        tlog::proof::verify_inclusion(
            &tlog::leaf_hash(&tampered),
            entry_ref.index,
            first_size,
            &path,
            first.checkpoint().root_hash()
        )
        .is_err(),
        "a changed entry does not verify"
    );

    // 4. More issuances, a later checkpoint, and the consistency proof between the two.
    let bob = UserKeyPair::generate(UserKey::EcP256);
    let bob_issued = issue(&mut identity, "bob", &bob.csr("bob")).await.expect("issued");
    let bob_index = bob_issued.log_entry.expect("entry").index;
    assert!(bob_index > entry_ref.index, "indices grow");
    let second = checkpoint_covering(&mut transparency, &trust, bob_index + 1).await;
    let second_size = second.checkpoint().size();
    assert!(second_size > first_size);
    let consistency = transparency
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: first_size,
            new_size: second_size,
        })
        .await
        .expect("consistency proof")
        .into_inner();
    let consistency = hashes(consistency.hashes);
    tlog::proof::verify_consistency(
        first_size,
        second_size,
        first.checkpoint().root_hash(),
        second.checkpoint().root_hash(),
        &consistency,
    )
    .expect("the later checkpoint extends the earlier one");
    assert!(
        tlog::proof::verify_consistency(
            first_size,
            second_size,
            &[7; 32],
            second.checkpoint().root_hash(),
            &consistency
        )
        .is_err(),
        "a forked earlier root is detected"
    );

    // 5. An export recomputes the signed root.
    let mut stream = transparency
        .export_entries(ExportEntriesRequest {
            start: 0,
            end: second_size,
        })
        .await
        .expect("export")
        .into_inner();
    let mut leaves = Vec::new();
    while let Some(chunk) = stream.message().await.expect("export chunk") {
        assert_eq!(chunk.start, leaves.len() as u64, "chunks are contiguous");
        leaves.extend(chunk.entries.iter().map(|entry| tlog::leaf_hash(entry)));
    }
    assert_eq!(leaves.len() as u64, second_size);
    assert_eq!(
        &tlog::merkle::tree_root(&leaves),
        second.checkpoint().root_hash(),
        "the exported entries are exactly the signed tree"
    );

    // 6. Nothing is proven against an unsigned tree, and bad ranges are refused.
    let latest = checkpoint_covering(&mut transparency, &trust, second_size).await;
    let beyond = latest.checkpoint().size() + 1;
    let refused = transparency
        .get_inclusion_proof(GetInclusionProofRequest {
            leaf_index: 0,
            tree_size: beyond,
        })
        .await
        .expect_err("beyond the signed size");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let refused = transparency
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: second_size,
            new_size: first_size,
        })
        .await
        .expect_err("old larger than new");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_survives_a_restart_and_stays_consistent() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), "ecdsa-p256");
    let mut identity = server.client().await;
    let info = ca_info(&mut identity).await;
    let trust = LogTrust::from_ca_info(&info);
    let alice = UserKeyPair::generate(UserKey::EcP256);
    let first_index = issue(&mut identity, "alice", &alice.csr("alice"))
        .await
        .expect("issued")
        .log_entry
        .expect("entry")
        .index;
    let mut transparency = server.transparency().await;
    let before = checkpoint_covering(&mut transparency, &trust, first_index + 1).await;
    drop(transparency);
    let data_dir = server.stop();

    let server = DevServer::start_in(&data_dir, "ecdsa-p256");
    let mut identity = server.client().await;
    assert_eq!(
        ca_info(&mut identity).await.checkpoint_verifier_keys,
        info.checkpoint_verifier_keys,
        "the same audit key after a restart"
    );
    let renewed_index = issue(&mut identity, "alice", &alice.csr("alice"))
        .await
        .expect("renewed")
        .log_entry
        .expect("entry")
        .index;
    assert!(renewed_index > first_index, "the log continues where it stopped");
    let mut transparency = server.transparency().await;
    let after = checkpoint_covering(&mut transparency, &trust, renewed_index + 1).await;
    let proof = transparency
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: before.checkpoint().size(),
            new_size: after.checkpoint().size(),
        })
        .await
        .expect("consistency proof")
        .into_inner();
    tlog::proof::verify_consistency(
        before.checkpoint().size(),
        after.checkpoint().size(),
        before.checkpoint().root_hash(),
        after.checkpoint().root_hash(),
        &hashes(proof.hashes),
    )
    .expect("the checkpoint after the restart extends the one before");
}

/// A clean shutdown drains the sequencer: SIGTERM while a checkpoint is still ten seconds away
/// (`audit.checkpoint_interval_ms = 10000`), and the log an auditor exports afterwards is signed up
/// to the last issuance, which the service had already answered with its index.
#[tokio::test]
async fn a_clean_shutdown_signs_what_was_sequenced() {
    let directory = tempfile::tempdir().expect("tempdir");
    let config = DevServer::start(directory.path(), "ecdsa-p256")
        .stop()
        .join("ca-service.toml");
    // [audit] is the dev config's last section.
    let mut text = std::fs::read_to_string(&config).expect("dev config");
    text.push_str("checkpoint_interval_ms = 10000\n");
    std::fs::write(&config, text).expect("config");
    let server = DevServer::start_with_config(&config);
    let mut client = server.client().await;
    // Past the first checkpoint the sequencer signs at startup, so the next one is 10 s away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let key = UserKeyPair::generate(UserKey::EcP256);
    let issued = issue(&mut client, "drained", &key.csr("drained"))
        .await
        .expect("issued");
    let index = issued.log_entry.expect("indexed").index;

    let (clean, took) = server.terminate(Duration::from_secs(30)).await;
    assert!(clean, "exits successfully on SIGTERM");
    assert!(
        took < Duration::from_secs(8),
        "without waiting for the checkpoint interval: {took:?}"
    );
    let out = directory.path().join("export");
    let (exported, text) = audit_export(&config, &out, &[]);
    assert!(exported, "{text}");
    let checkpoint = std::fs::read_to_string(out.join("checkpoint.txt")).expect("checkpoint.txt");
    let size: u64 = checkpoint.lines().nth(1).expect("size line").parse().expect("size");
    assert!(
        size > index,
        "the last checkpoint (size {size}) covers the last issuance (index {index})"
    );
}
