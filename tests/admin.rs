//! End-to-end: the Admin service on the real binary over mTLS, as the dev admins `admin-alice` and
//! `admin-bob`: the whole identity-reset story, revocation and the HSM-signed CRL (checked with
//! openssl), request expiry with a short configured lifetime, and every bad input.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is the test failing")]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{DevServer, UserKey, UserKeyPair, audit_export, audit_verify, ca_info, issue};
use e2ee_ca_proto::v1::admin_client::AdminClient;
use e2ee_ca_proto::v1::identity_client::IdentityClient;
use e2ee_ca_proto::v1::{
    ApproveRequestRequest, GetCertificatesRequest, GetCrlRequest, GetCrlResponse, GetIdentityRequest,
    ListIdentitiesRequest, ListRequestsRequest, RequestIdentityResetRequest, RevocationReason,
    RevokeCertificateRequest, revoke_certificate_request::Target,
};
use tonic::Code;
use tonic::transport::Channel;

async fn admin(server: &DevServer, name: &str) -> AdminClient<Channel> {
    AdminClient::new(server.connect_as(name).await)
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    result.expect_err("refused").code()
}

/// Polls `GetCrl` until a CRL numbered above `after` is served (published after a revocation).
async fn crl_after(identity: &mut IdentityClient<Channel>, after: u64) -> GetCrlResponse {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(crl) = identity.get_crl(GetCrlRequest {}).await {
            let crl = crl.into_inner();
            if crl.crl_number > after {
                return crl;
            }
        }
        assert!(Instant::now() < deadline, "no CRL numbered above {after} within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `openssl crl -verify` on `crl_der` against the CA chain and returns its `-text` output.
fn openssl_verified_crl(dir: &Path, ca_chain_pem: &str, crl_der: &[u8]) -> String {
    let ca = dir.join("ca.pem");
    let crl = dir.join("crl.der");
    std::fs::write(&ca, ca_chain_pem).expect("write CA");
    std::fs::write(&crl, crl_der).expect("write CRL");
    let output = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in"])
        .arg(&crl)
        .arg("-CAfile")
        .arg(&ca)
        .args(["-verify", "-noout", "-text"])
        .output()
        .expect("run openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && text.contains("verify OK"),
        "openssl refused the CRL:\n{text}"
    );
    text
}

/// The serial as openssl prints it in a CRL listing.
fn openssl_serial(serial_hex: &str) -> String {
    serial_hex.to_uppercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_reset_needs_two_admins_pins_the_new_key_and_revokes_the_old_in_a_verified_crl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(dir.path(), "ecdsa-p256");
    let mut identity = server.client().await;
    let mut alice_admin = admin(&server, "admin-alice").await;
    let mut bob_admin = admin(&server, "admin-bob").await;
    let info = ca_info(&mut identity).await;
    let first_crl = crl_after(&mut identity, 0).await;

    // 1. alice enrolls; 2. a second key is refused.
    let old_key = UserKeyPair::generate(UserKey::EcP256);
    let enrolled = issue(&mut identity, "alice", &old_key.csr("alice"))
        .await
        .expect("enrolled");
    let new_key = UserKeyPair::generate(UserKey::EcP256);
    let refused = issue(&mut identity, "alice", &new_key.csr("alice")).await;
    assert_eq!(code(refused), Code::FailedPrecondition);

    // 3. admin-alice requests a reset; approving it herself is refused.
    let request = alice_admin
        .request_identity_reset(RequestIdentityResetRequest {
            user_id: "alice".to_owned(),
            reason: "lost every device (ticket 4711)".to_owned(),
            revocation_reason: RevocationReason::KeyCompromise.into(),
        })
        .await
        .expect("requested")
        .into_inner()
        .request
        .expect("request");
    assert_eq!(request.requested_by, "admin-alice");
    assert_eq!(request.key_fingerprint, enrolled.key_fingerprint);
    let own = alice_admin
        .approve_request(ApproveRequestRequest {
            request_id: request.request_id.clone(),
        })
        .await;
    assert_eq!(code(own), Code::PermissionDenied);
    // A second request for alice while this one is open is refused.
    let second = bob_admin
        .request_identity_reset(RequestIdentityResetRequest {
            user_id: "alice".to_owned(),
            reason: "again".to_owned(),
            revocation_reason: 0,
        })
        .await;
    assert_eq!(code(second), Code::FailedPrecondition);
    let pending = bob_admin
        .list_requests(ListRequestsRequest {})
        .await
        .expect("list")
        .into_inner()
        .requests;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].approved_by, "");
    // Until approved, the new key is still refused.
    assert_eq!(
        code(issue(&mut identity, "alice", &new_key.csr("alice")).await),
        Code::FailedPrecondition
    );

    // 4. admin-bob approves; a second approval is refused.
    let approved = bob_admin
        .approve_request(ApproveRequestRequest {
            request_id: request.request_id.clone(),
        })
        .await
        .expect("approved")
        .into_inner()
        .request
        .expect("request");
    assert_eq!(approved.approved_by, "admin-bob");
    let again = bob_admin
        .approve_request(ApproveRequestRequest {
            request_id: request.request_id.clone(),
        })
        .await;
    assert_eq!(code(again), Code::FailedPrecondition);

    // 5. The new key is pinned; the old one is now the refused one.
    let reset = issue(&mut identity, "alice", &new_key.csr("alice"))
        .await
        .expect("new key pinned");
    assert!(!reset.renewal);
    assert_eq!(reset.key_fingerprint, new_key.fingerprint());
    assert_eq!(
        code(issue(&mut identity, "alice", &old_key.csr("alice")).await),
        Code::FailedPrecondition
    );
    let lookup = identity
        .get_certificates(GetCertificatesRequest {
            user_ids: vec!["alice".to_owned()],
        })
        .await
        .expect("lookup")
        .into_inner();
    assert_eq!(lookup.certificates[0].key_fingerprint, new_key.fingerprint());
    assert!(!lookup.certificates[0].revoked);
    // The approval is consumed: no open request is left.
    let open = bob_admin
        .list_requests(ListRequestsRequest {})
        .await
        .expect("list")
        .into_inner()
        .requests;
    assert!(open.is_empty(), "{open:?}");

    // 6. The old certificate is in the next CRL, which openssl verifies against the CA.
    let crl = crl_after(&mut identity, first_crl.crl_number).await;
    assert_eq!(crl.revoked_count, 1);
    let text = openssl_verified_crl(dir.path(), &info.ca_chain_pem, &crl.crl_der);
    assert!(text.contains(&openssl_serial(&enrolled.serial_hex)), "{text}");
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(!text.contains(&openssl_serial(&reset.serial_hex)), "{text}");

    // 7. GetIdentity shows the history; the reset's entry names both admins and both keys.
    let record = alice_admin
        .get_identity(GetIdentityRequest {
            user_id: "alice".to_owned(),
        })
        .await
        .expect("identity")
        .into_inner();
    assert_eq!(record.key_fingerprint, new_key.fingerprint());
    let old = record
        .certificates
        .iter()
        .find(|certificate| certificate.serial_hex == enrolled.serial_hex)
        .expect("old certificate listed");
    assert!(old.revoked);
    assert_eq!(old.revocation_reason, i32::from(RevocationReason::KeyCompromise));
    let reset_entry = record
        .log_entries
        .iter()
        .find(|entry| entry.entry.contains("\nkind identity-reset\n"))
        .expect("the reset's entry");
    for line in [
        format!("old-key-sha256 {}\n", enrolled.key_fingerprint),
        format!("key-sha256 {}\n", new_key.fingerprint()),
        "requested-by admin-alice\n".to_owned(),
        "approved-by admin-bob\n".to_owned(),
        format!("request-id {}\n", request.request_id),
        "reason lost every device (ticket 4711)\n".to_owned(),
        format!("revoked-serials {}\n", enrolled.serial_hex),
    ] {
        assert!(
            reset_entry.entry.contains(&line),
            "missing {line:?} in\n{}",
            reset_entry.entry
        );
    }
    assert!(reset_entry.index.is_some());
    let kinds: Vec<&str> = record
        .log_entries
        .iter()
        .filter_map(|entry| entry.entry.lines().find_map(|line| line.strip_prefix("kind ")))
        .collect();
    assert_eq!(
        kinds,
        [
            "issuance",
            "issuance-refused",
            "request-opened",
            "issuance-refused",
            "request-approved",
            "identity-reset",
            "issuance-refused"
        ]
    );
    assert!(
        record
            .log_entries
            .iter()
            .any(|entry| entry.entry.contains("actor admin-alice\n"))
    );

    // The whole log verifies offline.
    let data_dir = server.stop();
    let out = dir.path().join("export");
    let (exported, text) = audit_export(&data_dir.join("ca-service.toml"), &out, &[]);
    assert!(exported, "{text}");
    let vkey = info.checkpoint_verifier_keys.first().expect("vkey").clone();
    let (verified, text) = audit_verify(&out, &vkey, None, &[]);
    assert!(verified, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_by_serial_and_by_user_lists_the_certificates_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(dir.path(), "rsa-2048");
    let mut identity = server.client().await;
    let mut alice_admin = admin(&server, "admin-alice").await;
    let info = ca_info(&mut identity).await;
    let first_crl = crl_after(&mut identity, 0).await;
    let bob_key = UserKeyPair::generate(UserKey::EcP256);
    let bob = issue(&mut identity, "bob", &bob_key.csr("bob")).await.expect("bob");
    let bob_renewed = issue(&mut identity, "bob", &bob_key.csr("bob")).await.expect("renewal");
    let carol_key = UserKeyPair::generate(UserKey::EcP256);
    let carol = issue(&mut identity, "carol", &carol_key.csr("carol"))
        .await
        .expect("carol");

    let revoke = |target: Target, reason: RevocationReason| RevokeCertificateRequest {
        target: Some(target),
        reason: reason.into(),
    };
    let one = alice_admin
        .revoke_certificate(revoke(
            Target::SerialHex(bob.serial_hex.clone()),
            RevocationReason::KeyCompromise,
        ))
        .await
        .expect("revoked")
        .into_inner();
    assert_eq!(one.revoked_serials, vec![bob.serial_hex.clone()]);
    assert!(one.crl_number > first_crl.crl_number, "the revocation published a CRL");
    assert!(one.log_entry.is_some());
    let twice = alice_admin
        .revoke_certificate(revoke(
            Target::SerialHex(bob.serial_hex.clone()),
            RevocationReason::KeyCompromise,
        ))
        .await;
    assert_eq!(code(twice), Code::FailedPrecondition);
    let by_user = alice_admin
        .revoke_certificate(revoke(
            Target::UserId("bob".to_owned()),
            RevocationReason::CessationOfOperation,
        ))
        .await
        .expect("revoked")
        .into_inner();
    assert_eq!(by_user.revoked_serials, vec![bob_renewed.serial_hex.clone()]);
    let crl = identity.get_crl(GetCrlRequest {}).await.expect("crl").into_inner();
    assert_eq!(crl.crl_number, by_user.crl_number);
    assert_eq!(crl.revoked_count, 2);
    let text = openssl_verified_crl(dir.path(), &info.ca_chain_pem, &crl.crl_der);
    assert!(text.contains(&openssl_serial(&bob.serial_hex)), "{text}");
    assert!(text.contains(&openssl_serial(&bob_renewed.serial_hex)), "{text}");
    assert!(!text.contains(&openssl_serial(&carol.serial_hex)), "{text}");
    let lookup = identity
        .get_certificates(GetCertificatesRequest {
            user_ids: vec!["bob".to_owned(), "carol".to_owned()],
        })
        .await
        .expect("lookup")
        .into_inner();
    assert_eq!(
        lookup
            .certificates
            .iter()
            .map(|certificate| certificate.revoked)
            .collect::<Vec<_>>(),
        [true, false]
    );

    // Bad input: each refused with its code, nothing revoked.
    let bad = [
        (
            revoke(Target::SerialHex("zz".to_owned()), RevocationReason::KeyCompromise),
            Code::InvalidArgument,
        ),
        (
            revoke(Target::SerialHex(String::new()), RevocationReason::KeyCompromise),
            Code::InvalidArgument,
        ),
        (
            revoke(Target::SerialHex("ab".repeat(21)), RevocationReason::KeyCompromise),
            Code::InvalidArgument,
        ),
        (
            revoke(Target::SerialHex("ab".repeat(16)), RevocationReason::KeyCompromise),
            Code::NotFound,
        ),
        (
            revoke(Target::UserId("nobody".to_owned()), RevocationReason::KeyCompromise),
            Code::NotFound,
        ),
        (
            revoke(Target::UserId(String::new()), RevocationReason::KeyCompromise),
            Code::InvalidArgument,
        ),
        (
            revoke(Target::UserId("carol".to_owned()), RevocationReason::Unspecified),
            Code::InvalidArgument,
        ),
        (
            RevokeCertificateRequest {
                target: None,
                reason: RevocationReason::KeyCompromise.into(),
            },
            Code::InvalidArgument,
        ),
        (
            RevokeCertificateRequest {
                target: Some(Target::UserId("carol".to_owned())),
                reason: 2,
            },
            Code::InvalidArgument,
        ),
    ];
    for (request, expected) in bad {
        let described = format!("{request:?}");
        assert_eq!(
            code(alice_admin.revoke_certificate(request).await),
            expected,
            "{described}"
        );
    }
    let reset = |user: &str, reason: &str, revocation_reason: i32| RequestIdentityResetRequest {
        user_id: user.to_owned(),
        reason: reason.to_owned(),
        revocation_reason,
    };
    for (request, expected) in [
        (reset("carol", "", 0), Code::InvalidArgument),
        (reset("carol", "   ", 0), Code::InvalidArgument),
        (reset("carol", &"x".repeat(513), 0), Code::InvalidArgument),
        (reset("carol", "line\nbreak", 0), Code::InvalidArgument),
        (
            reset("carol", "ok", RevocationReason::PrivilegeWithdrawn.into()),
            Code::InvalidArgument,
        ),
        (reset("nobody", "ok", 0), Code::NotFound),
        (reset("", "ok", 0), Code::InvalidArgument),
    ] {
        let described = format!("{request:?}");
        assert_eq!(
            code(alice_admin.request_identity_reset(request).await),
            expected,
            "{described}"
        );
    }
    for (id, expected) in [
        ("", Code::InvalidArgument),
        ("not-an-id", Code::InvalidArgument),
        ("ABCDEF0123456789ABCDEF0123456789", Code::InvalidArgument),
        ("abcdef0123456789abcdef0123456789", Code::NotFound),
    ] {
        let approved = alice_admin
            .approve_request(ApproveRequestRequest {
                request_id: id.to_owned(),
            })
            .await;
        assert_eq!(code(approved), expected, "{id:?}");
    }
    assert_eq!(
        code(
            alice_admin
                .get_identity(GetIdentityRequest {
                    user_id: "nobody".to_owned()
                })
                .await
        ),
        Code::NotFound
    );
    for (token, size) in [("garbage", 10), ("", 1001)] {
        let listed = alice_admin
            .list_identities(ListIdentitiesRequest {
                page_token: token.to_owned(),
                page_size: size,
            })
            .await;
        assert_eq!(code(listed), Code::InvalidArgument, "{token:?} {size}");
    }
    // Nothing above was recorded: the CRL is unchanged and carol is not revoked.
    let unchanged = identity.get_crl(GetCrlRequest {}).await.expect("crl").into_inner();
    assert_eq!(unchanged.crl_number, by_user.crl_number);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_are_listed_in_stable_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(dir.path(), "ecdsa-p256");
    let mut identity = server.client().await;
    let mut alice_admin = admin(&server, "admin-alice").await;
    let mut names: Vec<String> = (0..7).map(|index| format!("user{index}")).collect();
    for name in names.iter().rev() {
        let key = UserKeyPair::generate(UserKey::EcP256);
        issue(&mut identity, name, &key.csr(name)).await.expect("enrolled");
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = alice_admin
            .list_identities(ListIdentitiesRequest {
                page_token: token.clone(),
                page_size: 3,
            })
            .await
            .expect("page")
            .into_inner();
        assert!(page.identities.len() <= 3);
        listed.extend(page.identities.into_iter().map(|identity| identity.user_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    names.sort();
    assert_eq!(listed, names);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_expires_after_the_configured_lifetime() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A dev data directory, then a server on its config with a 2-second request lifetime.
    let data_dir = DevServer::start(dir.path(), "ecdsa-p256").stop();
    let config = data_dir.join("ca-service.toml");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str("\n[admin]\nrequest_lifetime_seconds = 2\n");
    std::fs::write(&config, text).expect("write config");
    let server = DevServer::start_with_config(&config);
    let mut identity = server.client().await;
    let mut alice_admin = admin(&server, "admin-alice").await;
    let mut bob_admin = admin(&server, "admin-bob").await;
    let key = UserKeyPair::generate(UserKey::EcP256);
    issue(&mut identity, "dave", &key.csr("dave")).await.expect("enrolled");
    let request = alice_admin
        .request_identity_reset(RequestIdentityResetRequest {
            user_id: "dave".to_owned(),
            reason: "expiry test".to_owned(),
            revocation_reason: 0,
        })
        .await
        .expect("requested")
        .into_inner()
        .request
        .expect("request");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let late = bob_admin
        .approve_request(ApproveRequestRequest {
            request_id: request.request_id.clone(),
        })
        .await;
    let status = late.expect_err("expired");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("expired"), "{}", status.message());
    let open = bob_admin
        .list_requests(ListRequestsRequest {})
        .await
        .expect("list")
        .into_inner()
        .requests;
    assert!(open.is_empty());
    // An expired request no longer blocks a new one.
    alice_admin
        .request_identity_reset(RequestIdentityResetRequest {
            user_id: "dave".to_owned(),
            reason: "second try".to_owned(),
            revocation_reason: 0,
        })
        .await
        .expect("a new request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_reach_the_admin_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(dir.path(), "ecdsa-p256");
    let mut identity = server.client().await;
    let key = UserKeyPair::generate(UserKey::EcP256);
    issue(&mut identity, "erin", &key.csr("erin")).await.expect("enrolled");
    let lookup = || GetIdentityRequest {
        user_id: "erin".to_owned(),
    };
    for principal in ["admin-alice", "admin-bob"] {
        admin(&server, principal)
            .await
            .get_identity(lookup())
            .await
            .expect("an admin may");
    }
    for principal in ["sync-server", "auditor"] {
        let status = admin(&server, principal)
            .await
            .get_identity(lookup())
            .await
            .expect_err("not an admin");
        assert_eq!(status.code(), Code::PermissionDenied, "{principal}: {status:?}");
        assert!(
            status.message().contains("admin"),
            "names the role: {}",
            status.message()
        );
    }
    let anonymous = AdminClient::new(server.connect_without_certificate().await)
        .get_identity(lookup())
        .await;
    assert_eq!(code(anonymous), Code::Unauthenticated);
    // An admin may read the CRL (any authenticated caller may), but not issue.
    let mut as_admin = IdentityClient::new(server.connect_as("admin-alice").await);
    as_admin
        .get_crl(GetCrlRequest {})
        .await
        .expect("CRLs are public to principals");
    assert_eq!(
        code(issue(&mut as_admin, "erin", &key.csr("erin")).await),
        Code::PermissionDenied
    );
    let anonymous_crl = IdentityClient::new(server.connect_without_certificate().await)
        .get_crl(GetCrlRequest {})
        .await;
    assert_eq!(code(anonymous_crl), Code::Unauthenticated);
    let data_dir = server.stop();

    // Plaintext dev mode knows no principal: Admin is UNAUTHENTICATED, for every call.
    let plaintext = DevServer::start_plaintext_in(&data_dir, "ecdsa-p256");
    let mut anonymous = admin(&plaintext, "admin-alice").await;
    assert_eq!(code(anonymous.get_identity(lookup()).await), Code::Unauthenticated);
    assert_eq!(
        code(anonymous.list_requests(ListRequestsRequest {}).await),
        Code::Unauthenticated
    );
    let revoked = anonymous
        .revoke_certificate(RevokeCertificateRequest {
            target: Some(Target::UserId("erin".to_owned())),
            reason: RevocationReason::KeyCompromise.into(),
        })
        .await;
    assert_eq!(code(revoked), Code::Unauthenticated);
}
