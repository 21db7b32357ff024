//! End-to-end audit-log fault tests: only the checkpoint signatures fail (the fault module's `mechanism=` filter on `CKM_ECDSA`) while the RSA CA key keeps signing.
//!
//! The CA key is RSA (`CKM_SHA256_RSA_PKCS`) and the audit key ECDSA P-256 (`CKM_ECDSA`), so
//! `fail C_SignInit CKR_KEY_FUNCTION_NOT_PERMITTED mechanism=CKM_ECDSA` fails the sequencer alone. Checked
//! from the outside: issuance fails closed within `audit.sequence_wait_ms` and recovers without a
//! restart; reads keep working; a CA killed with a batch sequenced but unsigned signs exactly that
//! head after a restart, and nothing is lost or duplicated (the embedded store, read with
//! rusqlite, and `audit export` + `audit verify`). Build the module first:
//! `cargo build -p pkcs11-fault && cargo test -p ca-service --test audit_faults`.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::faults::{AUDIT_ORIGIN, AuditBounds, Server, Setup, Token};
use common::{UserKey, UserKeyPair, audit_export, audit_verify, ca_info, issue};
use e2ee_ca_proto::v1::identity_client::IdentityClient;
use e2ee_ca_proto::v1::transparency_client::TransparencyClient;
use e2ee_ca_proto::v1::{
    GetCertificatesRequest, GetCheckpointRequest, GetInclusionProofRequest, IssueCertificateResponse,
};
use hsm_sim::faults::Fault;
use sha2::{Digest, Sha256};
use tlog::checkpoint::SignedCheckpoint;
use tlog::key::VerifierKey;
use tlog::merkle::Hash;
use tlog::note::SignedNote;
use tonic::transport::Channel;

/// How long an issuance waits for its log index in these tests.
const SEQUENCE_WAIT: Duration = Duration::from_millis(2000);
/// Allowed on top of `SEQUENCE_WAIT` for signing, committing and the gRPC hop on a busy machine.
const SLACK: Duration = Duration::from_secs(3);

/// Only the audit key's checkpoint signatures fail; the CA key's `C_SignInit` is forwarded.
///
/// `CKR_KEY_FUNCTION_NOT_PERMITTED` is in the signer's "other" class: that signature fails, with
/// no retry and no breaker. (`CKR_FUNCTION_FAILED` would not do: twice in a row it counts as a
/// device error, which opens the breaker for every key on the token, the CA key included.)
const CHECKPOINT_SIGNING_FAILS: Fault = Fault::FailMechanism {
    function: "C_SignInit",
    rv: "CKR_KEY_FUNCTION_NOT_PERMITTED",
    mechanism: "CKM_ECDSA",
    times: None,
};

/// A token with an RSA-2048 CA key (the fastest RSA) and the audit key.
fn token(heartbeat_seconds: u64) -> Token {
    Token::provision(Setup {
        ca_key_algorithm: "rsa-2048",
        audit: AuditBounds {
            sequence_wait_ms: SEQUENCE_WAIT.as_millis() as u64,
            heartbeat_seconds,
        },
    })
}

/// Issues a certificate to `user` with a fresh key.
async fn issue_to(client: &mut IdentityClient<Channel>, user: &str) -> Result<IssueCertificateResponse, tonic::Status> {
    let key = UserKeyPair::generate(UserKey::EcP256);
    issue(client, user, &key.csr(user)).await
}

/// The checkpoint key as `GetCaInfo` publishes it.
async fn checkpoint_key(server: &Server) -> VerifierKey {
    let info = ca_info(&mut server.client().await).await;
    assert_eq!(info.log_origin, AUDIT_ORIGIN);
    VerifierKey::parse(&info.checkpoint_verifier_keys[0]).expect("vkey parses")
}

/// `GetCheckpoint`, verified with `vkey`.
async fn checkpoint(transparency: &mut TransparencyClient<Channel>, vkey: &VerifierKey) -> SignedCheckpoint {
    let text = transparency
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .expect("GetCheckpoint")
        .into_inner()
        .checkpoint;
    let note = SignedNote::parse(&text).expect("signed note");
    SignedCheckpoint::open(note, AUDIT_ORIGIN, std::slice::from_ref(vkey)).expect("the checkpoint verifies")
}

/// Polls `GetCheckpoint` until a checkpoint of at least `size` verifies, at most `limit`.
async fn checkpoint_covering(server: &Server, vkey: &VerifierKey, size: u64, limit: Duration) -> SignedCheckpoint {
    let mut transparency = server.transparency().await;
    let started = Instant::now();
    loop {
        let signed = checkpoint(&mut transparency, vkey).await;
        if signed.checkpoint().size() >= size {
            return signed;
        }
        assert!(
            started.elapsed() < limit,
            "no checkpoint of size {size} within {limit:?} (latest {}):\n{}",
            signed.checkpoint().size(),
            server.output.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the module has failed at least `count` checkpoint signatures, at most `limit`.
async fn wait_for_failed_checkpoint_signatures(token: &Token, server: &Server, count: usize, limit: Duration) {
    let started = Instant::now();
    while token.calls.injected("C_SignInit", "CKR_KEY_FUNCTION_NOT_PERMITTED") < count {
        assert!(
            started.elapsed() < limit,
            "the sequencer made no checkpoint signature attempt within {limit:?}:\n{}",
            server.output.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `C_SignInit` calls forwarded to SoftHSM that it accepted: while every `CKM_ECDSA` one is
/// injected, these are the CA key's.
fn forwarded_sign_inits(token: &Token) -> usize {
    token
        .calls
        .lines()
        .iter()
        .filter(|line| *line == "C_SignInit CKR_OK")
        .count()
}

/// The two fail-closed answers of an issuance while the log cannot sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailedClosed {
    /// Signed and committed, then withheld after waiting the bound for a log index.
    Withheld,
    /// Refused up front (nothing signed or committed): the log has been failing for the bound.
    Stalled,
}

/// Asserts that `result` is a fail-closed answer (UNAVAILABLE naming the audit log, within the
/// bound) and says which.
fn fail_closed(
    result: Result<IssueCertificateResponse, tonic::Status>,
    elapsed: Duration,
    server: &Server,
) -> FailedClosed {
    let status = match result {
        Ok(response) => panic!(
            "a certificate was released while the audit log cannot sign: {:?}",
            response.log_entry
        ),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(elapsed <= SEQUENCE_WAIT + SLACK, "answered after {elapsed:?}");
    if status.message().contains("audit log cannot currently record") {
        return FailedClosed::Stalled;
    }
    assert!(
        status.message().contains("audit log did not record"),
        "{:?}\n{}",
        status.message(),
        server.output.text()
    );
    assert!(
        elapsed >= SEQUENCE_WAIT - Duration::from_millis(100),
        "answered after {elapsed:?}, before the bound"
    );
    FailedClosed::Withheld
}

/// Only checkpoint signing fails: issuance fails closed within the bound while the CA key keeps
/// signing and every read keeps working; once signing works again, issuance recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_fails_closed_while_checkpoints_cannot_be_signed_and_recovers_by_itself() {
    let token = token(1);
    let server = token.serve(2, 2000, &[]);
    let vkey = checkpoint_key(&server).await;
    let mut client = server.client().await;
    let alice = issue_to(&mut client, "alice").await.expect("issued before the fault");
    let alice_entry = alice.log_entry.clone().expect("alice's log entry");
    let before = checkpoint_covering(&server, &vkey, alice_entry.index + 1, Duration::from_secs(15)).await;

    token.control.set(&[CHECKPOINT_SIGNING_FAILS]).expect("set fault");
    // The idle sequencer re-signs every second: wait until that has failed.
    wait_for_failed_checkpoint_signatures(&token, &server, 1, Duration::from_secs(10)).await;
    let failing = Instant::now();
    let rsa_sign_inits = forwarded_sign_inits(&token);
    let signatures = token.calls.calls("C_Sign");

    // Within the bound the signed log may lag: an entry can still be sequenced and its
    // certificate released with an index. Past the bound issuance fails closed: withheld after
    // waiting for an index, or refused up front once the log is reported stalled.
    let mut released = 0usize;
    let mut withheld = 0usize;
    let first_refusal = loop {
        let user = format!("bob-{}", released + withheld);
        let started = Instant::now();
        match issue_to(&mut client, &user).await {
            Ok(_) => {
                released += 1;
                assert!(
                    failing.elapsed() <= SEQUENCE_WAIT + SLACK,
                    "released {:?} after checkpoint signing started failing",
                    failing.elapsed()
                );
            }
            result => match fail_closed(result, started.elapsed(), &server) {
                FailedClosed::Withheld => {
                    withheld += 1;
                    break FailedClosed::Withheld;
                }
                FailedClosed::Stalled => break FailedClosed::Stalled,
            },
        }
    };
    assert!(
        failing.elapsed() <= 2 * SEQUENCE_WAIT + SLACK,
        "issuance failed closed only {:?} after checkpoint signing started failing ({first_refusal:?})",
        failing.elapsed()
    );
    // And it stays closed.
    let started = Instant::now();
    let carol = issue_to(&mut client, "carol").await;
    if fail_closed(carol, started.elapsed(), &server) == FailedClosed::Withheld {
        withheld += 1;
    }
    // The CA key signed every certificate released or withheld (committed): its C_SignInit calls
    // went through while every CKM_ECDSA one was failed.
    let committed = released + withheld;
    assert!(
        forwarded_sign_inits(&token) >= rsa_sign_inits + committed,
        "the CA key kept signing"
    );
    assert!(
        token.calls.calls("C_Sign") >= signatures + committed,
        "the CA key kept signing"
    );
    assert!(
        token.calls.injected("C_SignInit", "CKR_KEY_FUNCTION_NOT_PERMITTED") >= 2,
        "the sequencer retries"
    );

    // Reads do not need the audit key.
    let certificates = client
        .get_certificates(GetCertificatesRequest {
            user_ids: vec!["alice".to_owned()],
        })
        .await
        .expect("GetCertificates during the fault")
        .into_inner();
    assert_eq!(certificates.certificates.len(), 1, "{certificates:?}");
    assert_eq!(certificates.certificates[0].serial_hex, alice.serial_hex);
    assert_eq!(ca_info(&mut client).await.log_origin, AUDIT_ORIGIN);
    let mut transparency = server.transparency().await;
    let during = checkpoint(&mut transparency, &vkey).await;
    assert_eq!(
        (during.checkpoint().size(), during.checkpoint().root_hash()),
        (before.checkpoint().size(), before.checkpoint().root_hash()),
        "the signed log did not move"
    );
    let proof = transparency
        .get_inclusion_proof(GetInclusionProofRequest {
            leaf_index: alice_entry.index,
            tree_size: during.checkpoint().size(),
        })
        .await
        .expect("GetInclusionProof during the fault")
        .into_inner();
    assert_eq!(
        hex::encode(Sha256::digest(&proof.entry)),
        alice_entry.entry_hash,
        "the proven entry is alice's"
    );
    let path: Vec<Hash> = proof
        .hashes
        .iter()
        .map(|hash| Hash::try_from(hash.as_slice()).expect("32-byte hash"))
        .collect();
    tlog::proof::verify_inclusion(
        &tlog::leaf_hash(&proof.entry),
        alice_entry.index,
        during.checkpoint().size(),
        &path,
        during.checkpoint().root_hash(),
    )
    .expect("alice's entry is proven in the signed checkpoint");

    // Signing works again: no restart, issuance recovers by itself.
    token.control.clear().expect("clear fault");
    let recovering = Instant::now();
    let mut attempt = 0;
    let dave = loop {
        attempt += 1;
        match issue_to(&mut client, &format!("dave-{attempt}")).await {
            Ok(response) => break response,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                if status.message().contains("audit log did not record") {
                    withheld += 1;
                }
                assert!(
                    recovering.elapsed() < Duration::from_secs(30),
                    "no recovery within 30 s:\n{}",
                    server.output.text()
                );
            }
        }
    };
    eprintln!(
        "issuing again {:?} after checkpoint signing came back ({attempt} attempts)",
        recovering.elapsed()
    );
    // alice, the issuances released or withheld during the fault, then dave: the withheld entries
    // were indexed too, and the ones refused up front left nothing.
    let dave_index = dave.log_entry.expect("dave's log entry").index;
    assert_eq!(
        dave_index,
        alice_entry.index + 1 + u64::try_from(released + withheld).expect("small"),
        "no entry lost or skipped"
    );
    let after = checkpoint_covering(&server, &vkey, dave_index + 1, Duration::from_secs(15)).await;
    assert!(after.checkpoint().size() > before.checkpoint().size());
}

/// The log's rows in the embedded store.
struct StoredLog {
    /// `audit_log_head`: the sequenced size and root.
    head: (u64, Vec<u8>),
    /// `audit_checkpoints`: (size, root) of every signed checkpoint, by size.
    checkpoints: Vec<(u64, Vec<u8>)>,
    /// `audit_entries`: (id, leaf index, entry bytes), by id.
    entries: Vec<(i64, Option<u64>, Vec<u8>)>,
}

impl StoredLog {
    fn read(database: &Path) -> StoredLog {
        let connection = rusqlite::Connection::open_with_flags(database, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the embedded store");
        let head = connection
            .query_row("SELECT size, root FROM audit_log_head WHERE id = 1", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .expect("log head");
        let mut statement = connection
            .prepare("SELECT size, root FROM audit_checkpoints ORDER BY size")
            .expect("prepare");
        let checkpoints = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .expect("checkpoints")
            .collect::<Result<_, _>>()
            .expect("checkpoint rows");
        let mut statement = connection
            .prepare("SELECT id, leaf_index, entry FROM audit_entries ORDER BY id")
            .expect("prepare");
        let entries = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .expect("entries")
            .collect::<Result<_, _>>()
            .expect("entry rows");
        StoredLog {
            head,
            checkpoints,
            entries,
        }
    }

    fn latest_checkpoint_size(&self) -> u64 {
        self.checkpoints.last().map_or(0, |(size, _)| *size)
    }

    fn pending(&self) -> usize {
        self.entries.iter().filter(|(_, index, _)| index.is_none()).count()
    }
}

/// Killed with a batch sequenced but not signed: after a restart the first checkpoint signed is
/// exactly that head, then every pending entry is indexed, once, and the whole log verifies offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sequenced_but_unsigned_at_a_crash_is_signed_as_it_was_after_the_restart() {
    // A long heartbeat: the sequencer is idle and due no signature when the fault is set, so the
    // next entry is sequenced, and only then is a checkpoint signature attempted (and failed).
    let token = token(600);
    let database = token.path("ca.sqlite3");
    let server = token.serve(2, 2000, &[]);
    let vkey = checkpoint_key(&server).await;
    let mut client = server.client().await;
    let alice_key = UserKeyPair::generate(UserKey::EcP256);
    let alice = issue(&mut client, "alice", &alice_key.csr("alice"))
        .await
        .expect("issued before the fault");
    let alice_index = alice.log_entry.expect("alice's log entry").index;
    checkpoint_covering(&server, &vkey, alice_index + 1, Duration::from_secs(15)).await;

    token.control.set(&[CHECKPOINT_SIGNING_FAILS]).expect("set fault");
    // Sequenced and released with its index (the signed log may lag within its bound); its
    // checkpoint signature then fails.
    let bob = issue_to(&mut client, "bob")
        .await
        .expect("sequenced and released while the signed log lags within its bound");
    let bob_index = bob.log_entry.expect("bob's log entry").index;
    assert_eq!(bob_index, alice_index + 1);
    wait_for_failed_checkpoint_signatures(&token, &server, 1, Duration::from_secs(10)).await;
    // A refusal (a second key for a pinned user) appends its entry without waiting for an index.
    let refused = issue_to(&mut client, "alice").await.expect_err("alice is pinned");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    // The CA's own entry (its certificate, logged at first start), alice, bob, the refusal.
    let caused = 4;
    let output = server.kill();

    // What the crash left on disk: bob's batch (at least) sequenced but not signed.
    let before_kill = StoredLog::read(&database);
    assert_eq!(before_kill.entries.len(), caused, "one entry per event");
    assert!(before_kill.head.0 > bob_index, "bob's batch is sequenced");
    assert_eq!(
        before_kill.latest_checkpoint_size(),
        alice_index + 1,
        "bob's batch is not signed"
    );
    assert_eq!(
        before_kill.head.0 + before_kill.pending() as u64,
        caused as u64,
        "every entry is sequenced or pending"
    );

    // Signing works again; the CA restarts on the same files.
    token.control.clear().expect("clear fault");
    let server = token.serve(2, 2000, &[]);
    let everything = caused as u64;
    let latest = checkpoint_covering(&server, &vkey, everything, Duration::from_secs(20)).await;
    assert_eq!(latest.checkpoint().size(), everything, "nothing added, nothing lost");
    let output = format!("{output}{}", server.kill());

    let after = StoredLog::read(&database);
    // The head sequenced before the kill was signed as it was (same size, same root), and it was
    // the first signature after the restart; the last one covers every entry.
    let new_checkpoints: Vec<&(u64, Vec<u8>)> = after
        .checkpoints
        .iter()
        .filter(|(size, _)| *size > before_kill.latest_checkpoint_size())
        .collect();
    assert_eq!(
        new_checkpoints.first().copied(),
        Some(&before_kill.head),
        "the first checkpoint after the restart is not the head sequenced before the kill: {:?}\n{output}",
        after.checkpoints
    );
    assert_eq!(
        new_checkpoints.last().map(|(size, _)| *size),
        Some(everything),
        "{output}"
    );
    assert_eq!(after.head.0, everything);
    assert_eq!(after.pending(), 0, "every entry is indexed");
    // Same entries, in the same order; the indices given before the kill stand; the rest follow on.
    assert_eq!(after.entries.len(), caused, "no entry duplicated");
    for ((id_before, index_before, entry_before), (id, index, entry)) in before_kill.entries.iter().zip(&after.entries)
    {
        assert_eq!((id_before, entry_before), (id, entry));
        if index_before.is_some() {
            assert_eq!(index_before, index, "an index was rewritten");
        }
    }
    let mut indices: Vec<u64> = after
        .entries
        .iter()
        .map(|(_, index, _)| index.expect("indexed"))
        .collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..everything).collect::<Vec<_>>(), "contiguous from 0");

    // The offline auditor agrees: the exported log verifies against the checkpoint key.
    let export = token.path("export");
    let vkey_text = vkey.to_string();
    let config = token.serve_config();
    let (ok, text) = audit_export(&config, &export, &[]);
    assert!(ok, "export failed: {text}\n{output}");
    let (ok, text) = audit_verify(&export, &vkey_text, None, &[]);
    assert!(ok, "the export does not verify: {text}");
    assert!(text.contains("PASS exported checkpoint: signature verifies"), "{text}");
}
