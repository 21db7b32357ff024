//! End-to-end issuance and pinning through the real binary, a real SoftHSM token and real gRPC.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use std::time::{Duration, Instant};

use common::{DevServer, UserKey, UserKeyPair, assert_refused, ca_info, issue, pem_der};
use e2ee_ca_proto::v1::{ExportEntriesRequest, GetCertificatesRequest, GetCheckpointRequest};
use sha2::{Digest, Sha256};
use tonic::Code;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

/// Checks every field the profile promises and the signature against the CA key from GetCaInfo.
fn check_certificate(
    response: &e2ee_ca_proto::v1::IssueCertificateResponse,
    info: &e2ee_ca_proto::v1::GetCaInfoResponse,
    user_id: &str,
    user_key: &UserKeyPair,
) {
    let certificate_der = pem_der(&response.certificate_pem);
    let (_, certificate) = x509_parser::parse_x509_certificate(&certificate_der).expect("certificate parses");
    let ca_der = pem_der(&info.ca_chain_pem);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("CA certificate parses");
    let ca_key_der = pem_der(&info.ca_public_key_pem);
    let (_, ca_key) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&ca_key_der).expect("CA SPKI parses");

    certificate
        .verify_signature(Some(&ca_key))
        .expect("signature verifies with the CA key from GetCaInfo");
    assert_eq!(
        ca.public_key().raw,
        ca_key.raw,
        "GetCaInfo's key is the CA certificate's key"
    );
    assert_eq!(certificate.issuer(), ca.subject(), "issuer = CA subject");
    let common_names: Vec<&str> = certificate
        .subject()
        .iter_common_name()
        .map(|name| name.as_str().expect("utf-8"))
        .collect();
    assert_eq!(common_names, [user_id]);
    assert_eq!(
        certificate.public_key().raw,
        user_key.spki_der().as_slice(),
        "certifies the CSR's key"
    );
    assert_eq!(response.key_fingerprint, user_key.fingerprint());

    let serial = certificate.raw_serial();
    assert!(
        serial.len() >= 9 || (serial.len() == 8 && serial[0] & 0x80 == 0),
        "serial has ≥ 64 bits"
    );
    assert!(serial.len() >= 8);
    assert_eq!(hex::encode(serial), response.serial_hex);

    let validity = certificate.validity();
    let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
    assert!(
        (365 * 86_400..=366 * 86_400).contains(&lifetime),
        "validity from config: {lifetime} s"
    );
    assert!(validity.is_valid(), "valid now");

    let ca_ski = ca
        .extensions()
        .iter()
        .find_map(|extension| match extension.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(identifier) => Some(identifier.0.to_vec()),
            _ => None,
        })
        .expect("CA has an SKI");
    let mut saw = (false, false, false, false);
    for extension in certificate.extensions() {
        match extension.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                assert_eq!(
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec()),
                    Some(ca_ski.clone()),
                    "AKI = CA SKI"
                );
                saw.0 = true;
            }
            ParsedExtension::SubjectKeyIdentifier(ski) => {
                assert_eq!(ski.0, &Sha256::digest(user_key.spki_der())[..20], "SKI of the user key");
                saw.1 = true;
            }
            ParsedExtension::BasicConstraints(constraints) => {
                assert!(!constraints.ca, "CA:FALSE");
                saw.2 = true;
            }
            ParsedExtension::KeyUsage(usage) => {
                assert!(extension.critical);
                let rsa =
                    certificate.public_key().algorithm.algorithm == x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
                assert!(usage.digital_signature());
                assert_eq!(usage.key_encipherment(), rsa, "keyEncipherment for RSA keys only");
                assert!(!usage.key_cert_sign() && !usage.crl_sign());
                saw.3 = true;
            }
            _ => {}
        }
    }
    assert_eq!(
        saw,
        (true, true, true, true),
        "AKI, SKI, basicConstraints and keyUsage present"
    );
    assert_eq!(
        pem_der(&response.chain_pem),
        ca_der,
        "chain starts with the CA certificate"
    );
    assert!(response.log_entry.is_some(), "the issuance has an audit entry");
}

/// Issues one certificate for each accepted user key type under a CA of `algorithm`.
async fn issue_every_user_key_type(algorithm: &str) {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), algorithm);
    assert!(
        server.banner.contains("DEV MODE"),
        "dev mode says so loudly: {}",
        server.banner
    );
    let mut client = server.client().await;
    let info = ca_info(&mut client).await;
    assert_eq!(info.ca_key_algorithm, algorithm);
    for kind in UserKey::ALL {
        let user_id = format!("user-{kind:?}@example.com");
        let key = UserKeyPair::generate(kind);
        let response = issue(&mut client, &user_id, &key.csr(&user_id)).await.expect("issued");
        assert!(!response.renewal);
        check_certificate(&response, &info, &user_id, &key);
    }
}

#[tokio::test]
async fn ecdsa_p256_ca_issues_for_every_user_key_type() {
    issue_every_user_key_type("ecdsa-p256").await;
}

#[tokio::test]
async fn ecdsa_p384_ca_issues_for_every_user_key_type() {
    issue_every_user_key_type("ecdsa-p384").await;
}

#[tokio::test]
async fn rsa_2048_ca_issues_for_every_user_key_type() {
    issue_every_user_key_type("rsa-2048").await;
}

#[tokio::test]
async fn rsa_3072_ca_issues_for_every_user_key_type() {
    issue_every_user_key_type("rsa-3072").await;
}

#[tokio::test]
async fn rsa_4096_ca_issues_for_every_user_key_type() {
    issue_every_user_key_type("rsa-4096").await;
}

#[tokio::test]
async fn pinning_renewal_and_refusals() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), "ecdsa-p256");
    let mut client = server.client().await;
    let info = ca_info(&mut client).await;

    let alice_key = UserKeyPair::generate(UserKey::EcP256);
    let first = issue(&mut client, "alice", &alice_key.csr("alice"))
        .await
        .expect("first issuance");
    assert!(!first.renewal);

    // Renewal: same key, new certificate and serial.
    let renewed = issue(&mut client, "alice", &alice_key.csr("alice"))
        .await
        .expect("renewal");
    assert!(renewed.renewal);
    assert_ne!(renewed.serial_hex, first.serial_hex);
    assert_eq!(renewed.key_fingerprint, first.key_fingerprint);
    check_certificate(&renewed, &info, "alice", &alice_key);
    assert!(renewed.log_entry.expect("entry").index > first.log_entry.expect("entry").index);

    // A different key for a pinned user: FAILED_PRECONDITION naming the pinned fingerprint.
    let other_key = UserKeyPair::generate(UserKey::Rsa2048);
    assert_refused(
        issue(&mut client, "alice", &other_key.csr("alice")).await,
        Code::FailedPrecondition,
        &alice_key.fingerprint(),
    );

    // Alice's key for another user: ALREADY_EXISTS, without naming alice.
    let stolen = issue(&mut client, "bob", &alice_key.csr("bob")).await;
    assert_refused(stolen.clone(), Code::AlreadyExists, "already pinned to another user");
    assert!(
        !stolen.expect_err("refused").message().contains("alice"),
        "another user's id is not disclosed"
    );

    // GetCertificates: newest certificate for known users, unknown ones listed.
    let lookup = client
        .get_certificates(GetCertificatesRequest {
            user_ids: vec!["alice".into(), "nobody".into()],
        })
        .await
        .expect("GetCertificates")
        .into_inner();
    assert_eq!(lookup.certificates.len(), 1);
    assert_eq!(lookup.certificates[0].serial_hex, renewed.serial_hex);
    assert_eq!(lookup.unknown_user_ids, ["nobody"]);

    // Both refusals were audited (kind, subject, reason), after the issuance and the renewal.
    let database = rusqlite::Connection::open(directory.path().join("data/ca.sqlite3")).expect("open the store");
    let entries: Vec<String> = database
        .prepare("SELECT entry FROM audit_entries ORDER BY id")
        .expect("prepare")
        .query_map([], |row| row.get::<_, Vec<u8>>(0))
        .expect("query")
        .map(|entry| String::from_utf8(entry.expect("row")).expect("UTF-8 entry"))
        .collect();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|entry| {
            entry
                .lines()
                .find_map(|line| line.strip_prefix("kind "))
                .expect("kind line")
        })
        .collect();
    // The CA's own entry (its certificate, logged once at first start), then the requests.
    assert_eq!(
        kinds,
        [
            "ceremony",
            "issuance",
            "renewal",
            "issuance-refused",
            "issuance-refused"
        ]
    );
    assert!(entries[3].contains("subject alice\n") && entries[3].contains("another pinned key"));
    assert!(entries[4].contains("subject bob\n") && entries[4].contains("key pinned to another user"));
    for entry in &entries {
        assert!(
            !entry.contains("PRIVATE KEY") && !entry.contains("BEGIN"),
            "no key material in the log"
        );
    }
}

#[tokio::test]
async fn bad_input_is_refused_with_a_reason() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), "ecdsa-p256");
    let mut client = server.client().await;
    let key = UserKeyPair::generate(UserKey::EcP256);

    // User ids.
    assert_refused(
        issue(&mut client, "", &key.csr("")).await,
        Code::InvalidArgument,
        "user_id is empty",
    );
    let long = "u".repeat(256);
    assert_refused(
        issue(&mut client, &long, &key.csr(&long)).await,
        Code::InvalidArgument,
        "the limit is 64",
    );
    assert_refused(
        issue(&mut client, "al\u{7}ice", &key.csr("alice")).await,
        Code::InvalidArgument,
        "control character",
    );
    assert_refused(
        issue(&mut client, "al\nice", &key.csr("alice")).await,
        Code::InvalidArgument,
        "control character",
    );

    // Subject must match.
    assert_refused(
        issue(&mut client, "carol", &key.csr("mallory")).await,
        Code::InvalidArgument,
        "does not match",
    );

    // Malformed CSRs.
    assert_refused(
        issue(&mut client, "carol", "not a csr").await,
        Code::InvalidArgument,
        "not PEM",
    );
    let garbage = "-----BEGIN CERTIFICATE REQUEST-----\nMIIBAAAAAAAAAAAA\n-----END CERTIFICATE REQUEST-----\n";
    assert_refused(
        issue(&mut client, "carol", garbage).await,
        Code::InvalidArgument,
        "well-formed PKCS#10",
    );
    let truncated = {
        let der = pem_der(&key.csr("carol"));
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der[..der.len() - 10].to_vec()))
    };
    assert_refused(
        issue(&mut client, "carol", &truncated).await,
        Code::InvalidArgument,
        "well-formed PKCS#10",
    );

    // Bad self-signature: flip a bit in the last byte of the signature.
    let tampered = {
        let mut der = pem_der(&key.csr("carol"));
        let last = der.len() - 1;
        der[last] ^= 0x01;
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der))
    };
    assert_refused(
        issue(&mut client, "carol", &tampered).await,
        Code::InvalidArgument,
        "self-signature",
    );

    // Over 64 KiB.
    let huge = format!("{}{}", key.csr("carol"), " ".repeat(64 * 1024));
    assert_refused(
        issue(&mut client, "carol", &huge).await,
        Code::ResourceExhausted,
        "limit is 65536",
    );

    // A message over the gRPC limit never reaches the handler.
    let oversized = "A".repeat(1024 * 1024);
    let status = issue(&mut client, "carol", &oversized).await.expect_err("refused");
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "oversized message: {:?} {}",
        status.code(),
        status.message()
    );

    // Keys the CA does not certify (OpenSSL-made CSRs, see tests/testdata/README.md).
    let cases = [
        ("rsa-1024.csr", "RSA key is 1024 bits"),
        ("rsa-8192.csr", "RSA key is 8192 bits"),
        ("rsa-2048-e3.csr", "exponent must be 65537"),
        ("ec-p521.csr", "unsupported EC curve"),
        ("ec-secp256k1.csr", "unsupported EC curve"),
        ("ec-p256-explicit-params.csr", "unsupported EC curve"),
        ("ed25519.csr", "unsupported key type"),
        ("dsa-2048.csr", "unsupported key type"),
        ("rsa-2048-two-cns.csr", "exactly one common name"),
        ("rsa-2048-no-cn.csr", "exactly one common name"),
    ];
    for (file, fragment) in cases {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/testdata")
            .join(file);
        let csr = std::fs::read_to_string(&path).expect("testdata CSR");
        let result = issue(&mut client, "weak-user", &csr).await;
        match result {
            Err(status) if status.code() == Code::InvalidArgument && status.message().contains(fragment) => {}
            other => panic!("{file}: expected INVALID_ARGUMENT mentioning {fragment:?}, got {other:?}"),
        }
    }

    // Nothing above pinned anything: carol and weak-user can still enroll.
    let carol = issue(&mut client, "carol", &key.csr("carol"))
        .await
        .expect("carol enrolls after the refusals");

    // Every refusal that named a valid user is in the audit log, before carol's issuance: the
    // mismatched subject, 4 malformed CSRs, the oversized CSR and the 10 refused keys. The
    // invalid user ids and the message over the gRPC limit name no subject and left nothing.
    let carol_index = carol.log_entry.expect("carol's log entry").index;
    assert_eq!(
        carol_index, 17,
        "the CA's own entry, then one per refusal with a valid user id"
    );
    let entries = exported_entries(&server, carol_index + 1).await;
    let fingerprint = ca_info(&mut client).await.ca_certificate_fingerprint;
    assert!(
        entries[0].contains("\nkind ceremony\n")
            && entries[0].contains(&format!("\ncertificate-sha256 {fingerprint}\n")),
        "the log starts with the CA certificate it serves: {}",
        entries[0]
    );
    let refusals: Vec<&String> = entries
        .iter()
        .filter(|entry| entry.contains("\nkind issuance-refused\n"))
        .collect();
    assert_eq!(refusals.len(), 16, "{entries:#?}");
    let not_pem = hex::encode(Sha256::digest(b"not a csr"));
    assert!(
        refusals.iter().any(|entry| entry.contains("\nsubject carol\n")
            && entry.contains(&format!("\ncsr-sha256 {not_pem}\n"))
            && entry.contains("\nreason ")),
        "the malformed CSR's refusal names the user, the CSR's hash and the reason: {refusals:#?}"
    );
    assert!(
        refusals
            .iter()
            .any(|entry| entry.contains("\nsubject weak-user\n") && entry.contains("RSA key is 1024 bits")),
        "{refusals:#?}"
    );
}

/// The entries `[0, size)` through `ExportEntries`, once a checkpoint covers them (at most 15 s).
async fn exported_entries(server: &DevServer, size: u64) -> Vec<String> {
    let mut transparency = server.transparency().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let checkpoint = transparency
            .get_checkpoint(GetCheckpointRequest {})
            .await
            .expect("checkpoint")
            .into_inner();
        if checkpoint.tree_size >= size {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint of size {size} within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stream = transparency
        .export_entries(ExportEntriesRequest { start: 0, end: size })
        .await
        .expect("export")
        .into_inner();
    let mut entries = Vec::new();
    while let Some(chunk) = stream.message().await.expect("chunk") {
        assert_eq!(chunk.start, entries.len() as u64, "contiguous chunks");
        entries.extend(
            chunk
                .entries
                .into_iter()
                .map(|bytes| String::from_utf8(bytes).expect("UTF-8 entry")),
        );
    }
    assert_eq!(entries.len() as u64, size);
    entries
}

#[tokio::test]
async fn concurrent_enrollments_for_one_new_user_pin_exactly_one_key() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), "ecdsa-p256");
    let client = server.client().await;
    let keys: Vec<UserKeyPair> = (0..32).map(|_| UserKeyPair::generate(UserKey::EcP256)).collect();
    let mut tasks = Vec::new();
    for key in &keys {
        let mut client = client.clone();
        let csr = key.csr("dave");
        tasks.push(tokio::spawn(async move { issue(&mut client, "dave", &csr).await }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(response) => winners.push(response.key_fingerprint),
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message()),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one of 32 concurrent enrollments pins a key");
    let mut client = client;
    let lookup = client
        .get_certificates(GetCertificatesRequest {
            user_ids: vec!["dave".into()],
        })
        .await
        .expect("lookup")
        .into_inner();
    assert_eq!(lookup.certificates[0].key_fingerprint, winners[0]);
}

#[tokio::test]
async fn pins_survive_a_restart() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), "ecdsa-p256");
    let mut client = server.client().await;
    let fingerprint_before = ca_info(&mut client).await.ca_certificate_fingerprint;
    let key = UserKeyPair::generate(UserKey::EcP256);
    issue(&mut client, "erin", &key.csr("erin"))
        .await
        .expect("first issuance");
    let data_dir = server.stop();

    let server = DevServer::start_in(&data_dir, "ecdsa-p256");
    assert!(
        server.banner.contains("reused"),
        "second run reuses the token and CA: {}",
        server.banner
    );
    let mut client = server.client().await;
    assert_eq!(
        ca_info(&mut client).await.ca_certificate_fingerprint,
        fingerprint_before,
        "same CA after restart"
    );
    let other = UserKeyPair::generate(UserKey::EcP256);
    assert_refused(
        issue(&mut client, "erin", &other.csr("erin")).await,
        Code::FailedPrecondition,
        &key.fingerprint(),
    );
    let renewal = issue(&mut client, "erin", &key.csr("erin"))
        .await
        .expect("renewal after restart");
    assert!(renewal.renewal);
}

#[tokio::test]
async fn health_and_reflection_answer() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), "ecdsa-p256");
    // Health and reflection are open: no client certificate needed.
    let channel = server.connect_without_certificate().await;

    let mut health = HealthClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: "e2ee.ca.v1.Identity".into(),
            })
            .await
            .map(|response| response.into_inner().status);
        if matches!(status, Ok(code) if code == ServingStatus::Serving as i32) {
            break;
        }
        assert!(Instant::now() < deadline, "Identity never became SERVING: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.message().await.expect("stream").expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|service| service.name).collect();
    assert!(names.contains(&"e2ee.ca.v1.Identity".to_owned()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");
}
