//! Dual control across replicas: two `serve --config` replicas on one PostgreSQL database, over mTLS as the dev principals, racing the approval of one reset request and the issuances that would consume it.
//!
//! Each round opens a fresh request, so that one lucky ordering cannot hide a race: the store's
//! row lock and compare-and-set (`approvals`) must make exactly one approval and exactly one new key
//! win, whichever replica each call lands on.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use std::time::Duration;

use common::postgres::{ProvisionedCa, TestDatabase};
use common::{DevServer, UserKey, UserKeyPair};
use e2ee_ca_proto::v1::admin_client::AdminClient;
use e2ee_ca_proto::v1::identity_client::IdentityClient;
use e2ee_ca_proto::v1::{
    ApproveRequestRequest, ApproveRequestResponse, GetCertificatesRequest, GetIdentityRequest, GetIdentityResponse,
    IssueCertificateRequest, IssueCertificateResponse, ListRequestsRequest, RequestIdentityResetRequest,
    RevocationReason,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The deadline every test request carries: well above the replicas' store bound.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Resets raced, each with a fresh request.
const ROUNDS: usize = 3;

const USER: &str = "alice";

/// One replica as the sync server and as each dev admin.
struct Replica {
    identity: IdentityClient<Channel>,
    alice_admin: AdminClient<Channel>,
    bob_admin: AdminClient<Channel>,
}

impl Replica {
    async fn connect(server: &DevServer) -> Replica {
        Replica {
            identity: server.client().await,
            alice_admin: AdminClient::new(server.connect_as("admin-alice").await),
            bob_admin: AdminClient::new(server.connect_as("admin-bob").await),
        }
    }
}

fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(REQUEST_DEADLINE);
    request
}

async fn issue(client: &mut IdentityClient<Channel>, key: &UserKeyPair) -> Result<IssueCertificateResponse, Status> {
    client
        .issue_certificate(with_deadline(IssueCertificateRequest {
            user_id: USER.to_owned(),
            csr_pem: key.csr(USER),
            wait_for_checkpoint: false,
        }))
        .await
        .map(tonic::Response::into_inner)
}

async fn approve(admin: &mut AdminClient<Channel>, request_id: &str) -> Result<ApproveRequestResponse, Status> {
    admin
        .approve_request(with_deadline(ApproveRequestRequest {
            request_id: request_id.to_owned(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

async fn identity(admin: &mut AdminClient<Channel>) -> GetIdentityResponse {
    admin
        .get_identity(with_deadline(GetIdentityRequest {
            user_id: USER.to_owned(),
        }))
        .await
        .expect("GetIdentity")
        .into_inner()
}

/// Of two racing calls (on replica A, on replica B), which one succeeded, its answer and the other's
/// refusal, which must be FAILED_PRECONDITION; panics unless exactly one succeeded.
fn one_winner<T: std::fmt::Debug>(on_a: Result<T, Status>, on_b: Result<T, Status>, what: &str) -> (usize, T, Status) {
    let (winner, answer, refusal) = match (on_a, on_b) {
        (Ok(answer), Err(refusal)) => (0, answer, refusal),
        (Err(refusal), Ok(answer)) => (1, answer, refusal),
        (on_a, on_b) => panic!("{what}: exactly one of the racing calls must succeed, got {on_a:?} and {on_b:?}"),
    };
    assert_eq!(
        refusal.code(),
        Code::FailedPrecondition,
        "{what}: the loser is refused: {}",
        refusal.message()
    );
    (winner, answer, refusal)
}

/// How many of `record`'s log entries are of `kind`.
fn entries_of_kind(record: &GetIdentityResponse, kind: &str) -> usize {
    let line = format!("kind {kind}");
    record
        .log_entries
        .iter()
        .filter(|entry| entry.entry.lines().any(|candidate| candidate == line))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_racing_one_reset_approve_it_once_and_pin_exactly_one_new_key() {
    let ca = ProvisionedCa::create();
    let database = TestDatabase::create().await;
    let servers = ca.start_replicas(2, &database.url);
    let mut replicas = [Replica::connect(&servers[0]).await, Replica::connect(&servers[1]).await];
    for server in &servers {
        assert!(server.endpoint.starts_with("https://"), "mTLS: {}", server.endpoint);
    }

    // alice enrolls with key 1 on replica A.
    let first_key = UserKeyPair::generate(UserKey::EcP256);
    let mut current = issue(&mut replicas[0].identity, &first_key).await.expect("enrolled");
    let mut wins = [0usize; 2];
    for round in 1..=ROUNDS {
        // admin-alice requests a reset on replica A.
        let request = replicas[0]
            .alice_admin
            .request_identity_reset(with_deadline(RequestIdentityResetRequest {
                user_id: USER.to_owned(),
                reason: format!("lost every device, round {round}"),
                revocation_reason: 0,
            }))
            .await
            .expect("requested")
            .into_inner()
            .request
            .expect("request");
        assert_eq!(request.key_fingerprint, current.key_fingerprint, "round {round}");

        // admin-bob approves it on replica A and, at the same time, on replica B: one approval.
        let [on_a, on_b] = &mut replicas;
        let (approved_a, approved_b) = tokio::join!(
            approve(&mut on_a.bob_admin, &request.request_id),
            approve(&mut on_b.bob_admin, &request.request_id)
        );
        let (_, approved, refusal) = one_winner(approved_a, approved_b, "approval");
        assert_eq!(approved.request.expect("request").approved_by, "admin-bob");
        assert!(refusal.message().contains("already approved"), "{}", refusal.message());

        // Two new keys at once, key 2 on replica A and key 3 on replica B: one is pinned, and the
        // other is refused as pinned to the winner's key.
        let keys = [
            UserKeyPair::generate(UserKey::EcP256),
            UserKeyPair::generate(UserKey::EcP256),
        ];
        let [on_a, on_b] = &mut replicas;
        let (issued_a, issued_b) =
            tokio::join!(issue(&mut on_a.identity, &keys[0]), issue(&mut on_b.identity, &keys[1]));
        let (winner, issued, refusal) = one_winner(issued_a, issued_b, "issuance");
        wins[winner] += 1;
        let winner_key = keys[winner].fingerprint();
        assert_eq!(issued.key_fingerprint, winner_key, "round {round}");
        assert!(!issued.renewal, "a reset pins a new key");
        assert!(
            refusal.message().contains(&winner_key),
            "the loser is pinned to the winner's key {winner_key} (the replaced one was {}): {}",
            current.key_fingerprint,
            refusal.message()
        );

        // Both replicas serve the winner's certificate (nothing is cached).
        for (index, replica) in replicas.iter_mut().enumerate() {
            let lookup = replica
                .identity
                .get_certificates(with_deadline(GetCertificatesRequest {
                    user_ids: vec![USER.to_owned()],
                }))
                .await
                .expect("GetCertificates")
                .into_inner();
            assert_eq!(lookup.certificates.len(), 1, "replica {index}");
            let certificate = &lookup.certificates[0];
            assert_eq!(
                (
                    &certificate.key_fingerprint,
                    &certificate.serial_hex,
                    certificate.revoked
                ),
                (&winner_key, &issued.serial_hex, false),
                "replica {index}, round {round}"
            );

            // The old certificate is revoked; one approval and one reset were recorded per round.
            let record = identity(&mut replica.alice_admin).await;
            assert_eq!(record.key_fingerprint, winner_key);
            let old = record
                .certificates
                .iter()
                .find(|certificate| certificate.serial_hex == current.serial_hex)
                .expect("the old certificate is listed");
            assert!(old.revoked, "replica {index}: the old certificate is revoked");
            assert_eq!(old.revocation_reason, i32::from(RevocationReason::Superseded));
            let new = record
                .certificates
                .iter()
                .find(|certificate| certificate.serial_hex == issued.serial_hex)
                .expect("the new certificate is listed");
            assert!(!new.revoked);
            assert_eq!(entries_of_kind(&record, "request-approved"), round, "replica {index}");
            assert_eq!(entries_of_kind(&record, "identity-reset"), round, "replica {index}");
        }

        // The approval is consumed: it approves nothing again, and a further key is refused on
        // either replica.
        for (index, replica) in replicas.iter_mut().enumerate() {
            let again = approve(&mut replica.bob_admin, &request.request_id)
                .await
                .expect_err("a consumed request cannot be approved");
            assert_eq!(again.code(), Code::FailedPrecondition, "replica {index}");
            assert!(again.message().contains("consumed"), "{}", again.message());
            let another = UserKeyPair::generate(UserKey::EcP256);
            let refused = issue(&mut replica.identity, &another)
                .await
                .expect_err("no second reset with a consumed approval");
            assert_eq!(refused.code(), Code::FailedPrecondition, "replica {index}");
            assert!(refused.message().contains(&winner_key), "{}", refused.message());
            let open = replica
                .alice_admin
                .list_requests(with_deadline(ListRequestsRequest {}))
                .await
                .expect("ListRequests")
                .into_inner()
                .requests;
            assert!(open.is_empty(), "replica {index}: {open:?}");
        }
        current = issued;
    }

    // The history adds up: every certificate but the newest is revoked.
    let record = identity(&mut replicas[1].alice_admin).await;
    assert_eq!(record.certificates.len(), ROUNDS + 1);
    let revoked = record
        .certificates
        .iter()
        .filter(|certificate| certificate.revoked)
        .count();
    assert_eq!(revoked, ROUNDS);
    eprintln!(
        "issuance race won on replica A {} times, on B {} times",
        wins[0], wins[1]
    );
}
