//! End-to-end fault tests: the real `ca-service serve --config` on a private SoftHSM token, loaded through hsm-sim's fault-injecting PKCS#11 module.
//!
//! Each test provisions a token, runs the ceremony against SoftHSM directly, then serves through
//! `libpkcs11_fault.so` and rewrites its control file while the CA runs, checking the recovery
//! rules of hsm.md ("Rules for the session manager") from the outside: gRPC status codes, the
//! health service, and the module's call log. Build the module first:
//! `cargo build -p pkcs11-fault && cargo test -p ca-service --test hsm_faults`. The fixture is
//! `common::faults`, shared with `tests/audit_faults.rs`; the Admin test serves mTLS with a dev PKI,
//! since Admin calls need a named admin.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use std::time::{Duration, Instant};

use common::faults::{AuditBounds, Listener, Setup, Token, USER_PIN};
use common::{UserKey, UserKeyPair, ca_info, issue, pem_der};
use e2ee_ca_proto::v1::admin_client::AdminClient;
use e2ee_ca_proto::v1::identity_client::IdentityClient;
use e2ee_ca_proto::v1::revoke_certificate_request::Target;
use e2ee_ca_proto::v1::{
    GetCertificatesRequest, GetCrlRequest, GetCrlResponse, GetIdentityRequest, GetIdentityResponse, RevocationReason,
    RevokeCertificateRequest,
};
use hsm_sim::faults::Fault;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

/// Issues a certificate for a fresh user (a new name and key each time, so pinning and rate limits never interfere).
async fn issue_new_user(client: &mut IdentityClient<Channel>, user: &str) -> Result<(), tonic::Status> {
    let key = UserKeyPair::generate(UserKey::EcP256);
    issue(client, user, &key.csr(user)).await.map(drop)
}

fn fail(function: &'static str, rv: &'static str, times: Option<u32>) -> Fault {
    Fault::Fail { function, rv, times }
}

/// Polls `GetCrl` until a CRL numbered at least `number` is served, at most 10 s.
async fn crl_numbered(identity: &mut IdentityClient<Channel>, number: u64) -> GetCrlResponse {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(crl) = identity.get_crl(GetCrlRequest {}).await {
            let crl = crl.into_inner();
            if crl.crl_number >= number {
                return crl;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no CRL numbered {number} or above within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The serials `crl` lists (lowercase hex, leading zero bytes dropped), after checking that the CA
/// certificate in `ca_chain_pem` signed it.
fn crl_serials(crl: &GetCrlResponse, ca_chain_pem: &str) -> Vec<String> {
    let ca_der = pem_der(ca_chain_pem);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("CA certificate");
    let (_, parsed) = x509_parser::parse_x509_crl(&crl.crl_der).expect("CRL parses");
    parsed
        .verify_signature(ca.public_key())
        .expect("the CRL verifies with the CA key");
    parsed
        .iter_revoked_certificates()
        .map(|revoked| significant_hex(revoked.raw_serial()))
        .collect()
}

/// `bytes` as lowercase hex without leading zero bytes (as a DER INTEGER may or may not carry them).
fn significant_hex(bytes: &[u8]) -> String {
    let start = bytes.iter().position(|byte| *byte != 0).unwrap_or(bytes.len());
    hex::encode(&bytes[start..])
}

async fn identity_record(admin: &mut AdminClient<Channel>, user: &str) -> GetIdentityResponse {
    admin
        .get_identity(GetIdentityRequest {
            user_id: user.to_owned(),
        })
        .await
        .expect("GetIdentity")
        .into_inner()
}

/// The entries of `record` whose kind is `revocation`.
fn revocation_entries(record: &GetIdentityResponse) -> Vec<&str> {
    record
        .log_entries
        .iter()
        .map(|entry| entry.entry.as_str())
        .filter(|entry| entry.lines().any(|line| line == "kind revocation"))
        .collect()
}

/// hsm.md, retry class: a session that went away is replaced and the signature retried once.
#[tokio::test]
async fn one_off_session_handle_invalid_on_sign_is_retried_transparently() {
    let token = Token::new();
    let server = token.serve(2, 2000, &[]);
    let mut client = server.client().await;
    issue_new_user(&mut client, "before")
        .await
        .expect("issued before the fault");
    let opened_before = token.calls.calls("C_OpenSession");

    token
        .control
        .set(&[fail("C_Sign", "CKR_SESSION_HANDLE_INVALID", Some(1))])
        .expect("set fault");
    issue_new_user(&mut client, "alice")
        .await
        .expect("issued despite the lost session");

    assert_eq!(token.calls.injected("C_Sign", "CKR_SESSION_HANDLE_INVALID"), 1);
    assert_eq!(
        token.calls.calls("C_OpenSession"),
        opened_before + 1,
        "exactly one replacement session"
    );
    assert_eq!(token.calls.calls("C_Finalize"), 0, "no rebuild for a lost session");
    assert_eq!(server.health().await, ServingStatus::Serving);
}

/// hsm.md, re-login class: the token forgot the login; the CA logs in again and retries once.
#[tokio::test]
async fn one_off_user_not_logged_in_triggers_relogin() {
    let token = Token::new();
    let server = token.serve(2, 2000, &[]);
    let mut client = server.client().await;
    issue_new_user(&mut client, "before")
        .await
        .expect("issued before the fault");
    assert_eq!(token.calls.calls("C_Login"), 1, "one login at startup");

    token
        .control
        .set(&[fail("C_Sign", "CKR_USER_NOT_LOGGED_IN", Some(1))])
        .expect("set fault");
    if let Err(status) = issue_new_user(&mut client, "bob").await {
        panic!(
            "not issued after logging in again: {status:?}\n{}",
            server.output.text()
        );
    }

    assert_eq!(token.calls.injected("C_Sign", "CKR_USER_NOT_LOGGED_IN"), 1);
    assert_eq!(token.calls.calls("C_Login"), 2, "exactly one re-login");
    assert_eq!(token.calls.calls("C_Finalize"), 0, "no rebuild for a lost login");
    assert_eq!(server.health().await, ServingStatus::Serving);
}

/// hsm.md, each class retried once: a lost session and then a lost login in the same signature
/// are each recovered (one replacement session, one re-login), not counted as one retry too many.
#[tokio::test]
async fn a_lost_session_then_a_lost_login_in_one_signature_are_each_recovered() {
    let token = Token::new();
    let server = token.serve(2, 2000, &[]);
    let mut client = server.client().await;
    issue_new_user(&mut client, "before")
        .await
        .expect("issued before the faults");
    let opened_before = token.calls.calls("C_OpenSession");

    token
        .control
        .set(&[
            fail("C_Sign", "CKR_SESSION_HANDLE_INVALID", Some(1)),
            fail("C_Sign", "CKR_USER_NOT_LOGGED_IN", Some(1)),
        ])
        .expect("set faults");
    if let Err(status) = issue_new_user(&mut client, "dora").await {
        panic!(
            "not issued after a new session and a new login: {status:?}\n{}",
            server.output.text()
        );
    }

    assert_eq!(token.calls.injected("C_Sign", "CKR_SESSION_HANDLE_INVALID"), 1);
    assert_eq!(token.calls.injected("C_Sign", "CKR_USER_NOT_LOGGED_IN"), 1);
    assert_eq!(
        token.calls.calls("C_OpenSession"),
        opened_before + 1,
        "exactly one replacement session"
    );
    assert_eq!(token.calls.calls("C_Login"), 2, "exactly one re-login");
    assert_eq!(
        token.calls.calls("C_Finalize"),
        0,
        "no rebuild: the breaker stayed closed"
    );
    assert_eq!(server.health().await, ServingStatus::Serving);
}

/// hsm.md, device class: the breaker opens (UNAVAILABLE at once, health NOT_SERVING), the context is
/// rebuilt in the background with backoff while the token is gone, and the CA recovers by itself.
#[tokio::test]
async fn device_error_opens_the_breaker_and_the_service_recovers_by_itself() {
    let token = Token::new();
    let mut server = token.serve(2, 2000, &[]);
    let mut client = server.client().await;
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(10))
        .await;
    issue_new_user(&mut client, "before")
        .await
        .expect("issued before the fault");

    // The device fails, and while it is gone the token is not even listed, so rebuilds fail too.
    token
        .control
        .set(&[
            fail("C_Sign", "CKR_DEVICE_ERROR", None),
            fail("C_GetSlotList", "CKR_TOKEN_NOT_PRESENT", None),
        ])
        .expect("set faults");
    let started = Instant::now();
    let status = issue_new_user(&mut client, "carol").await.expect_err("device error");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fails fast: {:?}",
        started.elapsed()
    );
    // While the breaker is open, callers are turned away without touching the token.
    let signs = token.calls.calls("C_Sign");
    let started = Instant::now();
    let status = issue_new_user(&mut client, "carol").await.expect_err("breaker open");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "breaker answers at once");
    assert_eq!(
        token.calls.calls("C_Sign"),
        signs,
        "no signing attempt while the breaker is open"
    );
    let took = server
        .wait_for_health(ServingStatus::NotServing, Duration::from_secs(10))
        .await;
    eprintln!("NOT_SERVING after {took:?}");
    // The rebuild keeps trying (C_Initialize, then the slot list fails) with backoff.
    let deadline = Instant::now() + Duration::from_secs(10);
    while token.calls.injected("C_GetSlotList", "CKR_TOKEN_NOT_PRESENT") < 2 {
        assert!(
            Instant::now() < deadline,
            "no rebuild attempts:\n{}",
            server.output.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        token.calls.calls("C_Finalize") >= 2,
        "each failed rebuild finalises the module"
    );

    // The token comes back: no restart, the CA recovers by itself.
    token.control.clear().expect("clear faults");
    let recovered = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match issue_new_user(&mut client, &format!("dave-{attempt}")).await {
            Ok(()) => break,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(
                    recovered.elapsed() < Duration::from_secs(20),
                    "no recovery within 20 s:\n{}",
                    server.output.text()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    eprintln!("issuing again {:?} after the token came back", recovered.elapsed());
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(12))
        .await;
    server.assert_running();
    assert!(
        server.output.text().contains("breaker open"),
        "{}",
        server.output.text()
    );
}

/// A token that allows a single session (a smartcard): with `pool_size = 1` the CA signs on its
/// login session, which it still never closes.
#[tokio::test]
async fn session_limit_of_one_still_issues_with_a_pool_of_one() {
    let token = Token::new();
    let server = token.serve(1, 2000, &[Fault::SessionLimit(1)]);
    let mut client = server.client().await;
    for user in ["erin", "frank", "grace"] {
        issue_new_user(&mut client, user)
            .await
            .expect("issued on a one-session token");
    }
    assert!(
        token.calls.injected("C_OpenSession", "CKR_SESSION_COUNT") >= 1,
        "the limit was hit"
    );
    assert_eq!(
        token.calls.calls("C_CloseSession"),
        0,
        "the only session is never closed"
    );
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(10))
        .await;
}

/// A token that signs wrongly (the RSA CA key's signature comes back `CKR_OK` with a bit flipped) gets
/// no certificate out: the CA verifies each certificate against its public key before release, so
/// the caller hears INTERNAL, nothing is stored or pinned, and the same key enrolls normally once the
/// token signs correctly again. (An RSA-CRT fault can leak the key in the faulty signature itself.)
#[tokio::test]
async fn a_wrong_signature_from_the_token_is_never_released() {
    let token = Token::provision(Setup {
        ca_key_algorithm: "rsa-2048",
        audit: AuditBounds {
            sequence_wait_ms: 5000,
            heartbeat_seconds: 60,
        },
    });
    let server = token.serve(2, 2000, &[]);
    let mut client = server.client().await;
    let key = UserKeyPair::generate(UserKey::EcP256);
    let csr = key.csr("ivan");

    // 256 bytes and up: the RSA-2048 CA key's signatures, never the P-256 audit key's 64-byte ones.
    // Every one until cleared: the health probe signs with the CA key too, every 5 s, and a single
    // corrupted signature could go to the probe instead of the issuance.
    token
        .control
        .set(&[Fault::CorruptSignature {
            times: None,
            min_len: 256,
        }])
        .expect("set fault");
    let refused = issue(&mut client, "ivan", &csr)
        .await
        .expect_err("a wrongly signed certificate was released");
    assert_eq!(refused.code(), tonic::Code::Internal, "{refused:?}");
    token.control.clear().expect("clear fault");
    let stored = client
        .get_certificates(GetCertificatesRequest {
            user_ids: vec!["ivan".to_owned()],
        })
        .await
        .expect("GetCertificates")
        .into_inner();
    assert!(
        stored.certificates.is_empty(),
        "stored after a bad signature: {stored:?}"
    );

    let issued = issue(&mut client, "ivan", &csr)
        .await
        .expect("issued once the token signs correctly");
    assert!(!issued.renewal, "the refused attempt pinned nothing");
    let (_, certificate_pem) = x509_parser::pem::parse_x509_pem(issued.certificate_pem.as_bytes()).expect("PEM");
    let (_, ca_pem) = x509_parser::pem::parse_x509_pem(issued.chain_pem.as_bytes()).expect("chain PEM");
    let certificate = certificate_pem.parse_x509().expect("certificate");
    let ca = ca_pem.parse_x509().expect("CA certificate");
    certificate
        .verify_signature(Some(ca.public_key()))
        .expect("the released certificate verifies");
    // A probe that signed while the fault was set reported NOT_SERVING; the next one recovers.
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(10))
        .await;
}

/// A pool larger than the token's session limit is a configuration error, reported at startup with
/// the fix, not a CA that fails one request in N later.
#[test]
fn pool_larger_than_the_session_limit_fails_at_startup_with_the_fix() {
    let token = Token::new();
    let (status, output, _) = token.serve_until_exit(2, &[Fault::SessionLimit(1)], Duration::from_secs(20));
    assert!(!status.success());
    assert!(output.contains("allows only 1 open session"), "{output}");
    assert!(output.contains("set hsm.pool_size = 1"), "{output}");

    let (status, output, _) = token.serve_until_exit(3, &[Fault::SessionLimit(2)], Duration::from_secs(20));
    assert!(!status.success());
    assert!(output.contains("allows only 2 open session"), "{output}");
    assert!(output.contains("set hsm.pool_size = 1"), "{output}");
}

/// A slow token and a small pool: callers wait at most `session_wait_ms`, then get
/// RESOURCE_EXHAUSTED, while the caller holding the session succeeds.
#[tokio::test]
async fn slow_signing_with_a_pool_of_one_turns_concurrent_callers_away() {
    let token = Token::new();
    let server = token.serve(1, 50, &[]);
    let client = server.client().await;
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(10))
        .await;
    token
        .control
        .set(&[Fault::Latency {
            function: "C_Sign",
            millis: 200,
        }])
        .expect("set latency");
    let (mut issued, mut exhausted) = (0, 0);
    // The health probe (200 ms every 5 s) and checkpoint signatures also take the session, so allow a
    // few bursts.
    for burst in 0..3 {
        let requests = (0..4).map(|index| {
            let mut client = client.clone();
            tokio::spawn(async move { issue_new_user(&mut client, &format!("user-{burst}-{index}")).await })
        });
        for request in requests.collect::<Vec<_>>() {
            match request.await.expect("request task") {
                Ok(()) => issued += 1,
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                    assert!(status.message().contains("at capacity"), "{status:?}");
                    exhausted += 1;
                }
            }
        }
        if issued > 0 && exhausted > 0 {
            break;
        }
        // The only session may be busy with a checkpoint signature (the audit key signs on the same
        // pool, 200 ms under this fault): start the next burst after one would have finished.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(issued >= 1, "at least one caller got the session");
    assert!(exhausted >= 1, "concurrent callers were turned away");
    assert_eq!(server.health().await, ServingStatus::Serving, "busy is not unhealthy");
}

/// hsm.md, never-retry class: a refused PIN stops the CA at once, after a single login attempt.
#[test]
fn pin_incorrect_at_startup_fails_fast_after_one_login() {
    let token = Token::new();
    let (status, output, elapsed) = token.serve_until_exit(
        4,
        &[fail("C_Login", "CKR_PIN_INCORRECT", None)],
        Duration::from_secs(20),
    );
    assert!(!status.success());
    assert!(output.contains("refused the PIN"), "{output}");
    assert!(!output.contains(USER_PIN), "the PIN never appears in output");
    assert!(elapsed < Duration::from_secs(10), "fails fast: {elapsed:?}");
    assert_eq!(token.calls.calls("C_Login"), 1, "exactly one login attempt");
    assert_eq!(token.calls.calls("C_Initialize"), 1, "no reconnect loop");
}

/// Revocation fails closed: while the CA key cannot sign (so no CRL could list it), RevokeCertificate
/// answers UNAVAILABLE at once and records nothing (the certificate stays unrevoked, no entry, no
/// CRL lists it); once the token is back, the same revocation succeeds and a new CRL lists it.
#[tokio::test]
async fn a_revocation_while_the_hsm_is_down_answers_unavailable_and_records_nothing() {
    let token = Token::new();
    let mut server = token.serve_on(Listener::MutualTls, 2, 2000, &[]);
    assert!(server.endpoint.starts_with("https://"), "{}", server.endpoint);
    let mut identity = server.client().await;
    let mut admin = AdminClient::new(server.channel_as("admin-alice").await);
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(10))
        .await;
    let info = ca_info(&mut identity).await;
    let key = UserKeyPair::generate(UserKey::EcP256);
    let issued = issue(&mut identity, "mallory", &key.csr("mallory"))
        .await
        .expect("issued");
    let serial = significant_hex(&hex::decode(&issued.serial_hex).expect("hex serial"));
    // The CRL published at startup, before any revocation.
    let before = crl_numbered(&mut identity, 1).await;

    // The device fails, and while it is gone the token is not even listed, so rebuilds fail too.
    token
        .control
        .set(&[
            fail("C_Sign", "CKR_DEVICE_ERROR", None),
            fail("C_GetSlotList", "CKR_TOKEN_NOT_PRESENT", None),
        ])
        .expect("set faults");
    let revoke = RevokeCertificateRequest {
        target: Some(Target::SerialHex(issued.serial_hex.clone())),
        reason: RevocationReason::KeyCompromise.into(),
    };
    let started = Instant::now();
    let status = admin
        .revoke_certificate(revoke.clone())
        .await
        .expect_err("no revocation while the CA key cannot sign");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("nothing was revoked"), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fails fast: {:?}",
        started.elapsed()
    );
    assert!(
        token.calls.injected("C_Sign", "CKR_DEVICE_ERROR") >= 1,
        "the token was asked"
    );
    server
        .wait_for_health(ServingStatus::NotServing, Duration::from_secs(10))
        .await;

    // The token comes back.
    token.control.clear().expect("clear faults");
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(20))
        .await;

    // Nothing was recorded: not revoked, no revocation entry, not in the latest CRL.
    let record = identity_record(&mut admin, "mallory").await;
    let certificate = record
        .certificates
        .iter()
        .find(|certificate| certificate.serial_hex == issued.serial_hex)
        .expect("the certificate is listed");
    assert!(!certificate.revoked, "{certificate:?}");
    assert!(certificate.revoked_at.is_empty(), "{certificate:?}");
    assert!(
        revocation_entries(&record).is_empty(),
        "{:?}",
        revocation_entries(&record)
    );
    let latest = identity.get_crl(GetCrlRequest {}).await.expect("GetCrl").into_inner();
    assert!(latest.crl_number >= before.crl_number);
    assert_eq!(latest.revoked_count, 0);
    assert!(!crl_serials(&latest, &info.ca_chain_pem).contains(&serial));

    // The same revocation now succeeds, and the CRL it published lists the certificate.
    let revoked = admin
        .revoke_certificate(revoke)
        .await
        .expect("revoked once the token is back")
        .into_inner();
    assert_eq!(revoked.revoked_serials, vec![issued.serial_hex.clone()]);
    assert!(revoked.log_entry.is_some());
    assert!(
        revoked.crl_number > latest.crl_number,
        "the revocation published a CRL: {} after {}",
        revoked.crl_number,
        latest.crl_number
    );
    let crl = crl_numbered(&mut identity, revoked.crl_number).await;
    assert_eq!(crl.revoked_count, 1);
    assert_eq!(crl_serials(&crl, &info.ca_chain_pem), vec![serial]);
    let record = identity_record(&mut admin, "mallory").await;
    let certificate = record
        .certificates
        .iter()
        .find(|certificate| certificate.serial_hex == issued.serial_hex)
        .expect("the certificate is listed");
    assert!(certificate.revoked);
    assert_eq!(
        certificate.revocation_reason,
        i32::from(RevocationReason::KeyCompromise)
    );
    let entries = revocation_entries(&record);
    assert_eq!(entries.len(), 1, "one revocation recorded: {entries:?}");
    assert!(entries[0].contains("\nactor admin-alice\n"), "{}", entries[0]);
    server.assert_running();
}
