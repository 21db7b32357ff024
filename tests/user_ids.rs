//! Look-alike user ids over gRPC: once `alice` is enrolled, ids that display like hers (a Cyrillic
//! `а`, a bidi override, a zero-width space, a BOM, a trailing space) are refused with
//! INVALID_ARGUMENT by IssueCertificate, GetCertificates and the Admin RPCs that take a user id,
//! with a short message that names the rule and never echoes the id; a 64-character id (X.520's
//! bound on the CN) is issued and a 65-character one refused.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use common::{DevServer, UserKey, UserKeyPair, issue};
use e2ee_ca_proto::v1::admin_client::AdminClient;
use e2ee_ca_proto::v1::revoke_certificate_request::Target;
use e2ee_ca_proto::v1::{
    GetCertificatesRequest, GetIdentityRequest, RequestIdentityResetRequest, RevocationReason, RevokeCertificateRequest,
};
use tonic::Code;

/// Ids that a user shown a list of names could take for `alice`, and the rule each breaks.
const LOOK_ALIKES: [(&str, &str); 7] = [
    ("\u{430}lice", "mixes scripts"),
    ("alic\u{435}", "mixes scripts"),
    ("\u{202E}ecila", "bidirectional control U+202E"),
    ("ali\u{200B}ce", "invisible format character U+200B"),
    ("\u{FEFF}alice", "invisible format character U+FEFF"),
    ("alice ", "space at its start or end"),
    ("\u{FF41}lice", "fullwidth or halfwidth form"),
];

/// Asserts an INVALID_ARGUMENT naming `fragment`, short and without the id itself.
fn check_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, user_id: &str, fragment: &str) {
    let status = result.expect_err("a look-alike id must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    let message = status.message();
    assert!(message.contains(fragment), "{message:?} should mention {fragment:?}");
    assert!(
        !message.contains(user_id.trim()),
        "the message echoes the id: {message:?}"
    );
    assert!(
        message.len() < 250 && message.is_ascii(),
        "the message is short and plain: {message:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_user_ids_are_refused_by_every_rpc_that_takes_one() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), "ecdsa-p256");
    let mut identity = server.client().await;
    let mut admin = AdminClient::new(server.connect_as("admin-alice").await);
    let alice = UserKeyPair::generate(UserKey::EcP256);
    issue(&mut identity, "alice", &alice.csr("alice"))
        .await
        .expect("alice is enrolled");

    for (user_id, fragment) in LOOK_ALIKES {
        // The attack: a second identity that displays as alice, with the attacker's own key.
        let mallory = UserKeyPair::generate(UserKey::EcP256);
        check_refused(
            issue(&mut identity, user_id, &mallory.csr(user_id)).await,
            user_id,
            fragment,
        );
        check_refused(
            identity
                .get_certificates(GetCertificatesRequest {
                    user_ids: vec!["alice".to_owned(), user_id.to_owned()],
                })
                .await,
            user_id,
            fragment,
        );
        check_refused(
            admin
                .get_identity(GetIdentityRequest {
                    user_id: user_id.to_owned(),
                })
                .await,
            user_id,
            fragment,
        );
        check_refused(
            admin
                .request_identity_reset(RequestIdentityResetRequest {
                    user_id: user_id.to_owned(),
                    reason: "look-alike".to_owned(),
                    revocation_reason: 0,
                })
                .await,
            user_id,
            fragment,
        );
        check_refused(
            admin
                .revoke_certificate(RevokeCertificateRequest {
                    target: Some(Target::UserId(user_id.to_owned())),
                    reason: RevocationReason::KeyCompromise.into(),
                })
                .await,
            user_id,
            fragment,
        );
    }
    // The refused ids were never enrolled: alice is the only identity.
    let listed = identity
        .get_certificates(GetCertificatesRequest {
            user_ids: vec!["alice".to_owned()],
        })
        .await
        .expect("lookup")
        .into_inner();
    assert_eq!(listed.certificates.len(), 1);
    let alice_record = admin
        .get_identity(GetIdentityRequest {
            user_id: "alice".to_owned(),
        })
        .await
        .expect("alice's identity")
        .into_inner();
    assert_eq!(alice_record.key_fingerprint, alice.fingerprint());

    // An unbounded id is refused by its length, in a bounded message.
    let huge = "a".repeat(100_000);
    check_refused(
        issue(&mut identity, &huge, &alice.csr("alice")).await,
        &huge,
        "100000 characters long; the limit is 64",
    );
    // The certificate's CN is the id: 64 characters are issued, 65 refused.
    let longest = format!("{}@example.com", "l".repeat(64 - "@example.com".len()));
    let key = UserKeyPair::generate(UserKey::EcP256);
    issue(&mut identity, &longest, &key.csr(&longest))
        .await
        .expect("a 64-character id");
    let too_long = format!("m{longest}");
    check_refused(
        issue(&mut identity, &too_long, &key.csr(&too_long)).await,
        &too_long,
        "65 characters long; the limit is 64",
    );
}
