//! Who may call what, through the real binary over real mTLS: each dev principal's roles, callers
//! without a certificate, with a foreign CA's or an unknown one, plaintext dev mode, and a config-mode
//! server whose principals change across a restart. The table itself is unit-tested in
//! `api::principal`.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{DevServer, UserKey, UserKeyPair, issue};
use e2ee_ca_proto::v1::identity_client::IdentityClient;
use e2ee_ca_proto::v1::transparency_client::TransparencyClient;
use e2ee_ca_proto::v1::{ExportEntriesRequest, GetCaInfoRequest, GetCheckpointRequest};
use e2ee_client::transport::ClientTls;
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;

/// The dev principals and their roles, as `serve --dev` configures them.
const DEV_PRINCIPALS: [&str; 4] = ["sync-server", "admin-alice", "admin-bob", "auditor"];

/// Asserts that `result` is a refusal with `code` whose message mentions `fragment`.
fn check_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, fragment: &str) {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), code, "status message: {}", status.message());
    assert!(
        status.message().contains(fragment),
        "{:?} should mention {fragment:?}",
        status.message()
    );
}

async fn ca_info(channel: &Channel) -> Result<(), tonic::Status> {
    IdentityClient::new(channel.clone())
        .get_ca_info(GetCaInfoRequest {})
        .await
        .map(drop)
}

async fn checkpoint(channel: &Channel) -> Result<u64, tonic::Status> {
    TransparencyClient::new(channel.clone())
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .map(|response| response.into_inner().tree_size)
}

async fn issue_new(channel: &Channel, user: &str) -> Result<(), tonic::Status> {
    let key = UserKeyPair::generate(UserKey::EcP256);
    issue(&mut IdentityClient::new(channel.clone()), user, &key.csr(user))
        .await
        .map(drop)
}

/// The entries `[0, end)` (once a checkpoint covers them), as text.
async fn export(channel: &Channel, end: u64) -> Result<Vec<String>, tonic::Status> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while checkpoint(channel).await.unwrap_or(0) < end {
        assert!(Instant::now() < deadline, "no checkpoint of size {end} within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stream = TransparencyClient::new(channel.clone())
        .export_entries(ExportEntriesRequest { start: 0, end })
        .await?
        .into_inner();
    let mut entries = Vec::new();
    while let Some(chunk) = stream.message().await? {
        entries.extend(
            chunk
                .entries
                .into_iter()
                .map(|bytes| String::from_utf8(bytes).expect("UTF-8 entry")),
        );
    }
    Ok(entries)
}

/// A client certificate (CN `common_name`, and `uri_san` if given) issued by the dev CA in `pki`,
/// as TLS settings trusting the dev CA for the server; and the certificate's SHA-256 (hex).
fn minted(pki: &Path, common_name: &str, uri_san: Option<&str>) -> (ClientTls, String) {
    let read = |name: &str| std::fs::read_to_string(pki.join(name)).expect("dev PKI file");
    let ca_key = rcgen::KeyPair::from_pem(&read("ca-key.pem")).expect("dev CA key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca.pem"), ca_key).expect("dev CA");
    let (certificate_pem, key_pem, fingerprint) = leaf(&issuer, common_name, uri_san);
    let tls = ClientTls::new(read("ca.pem").into_bytes())
        .with_client_certificate(certificate_pem, zeroize::Zeroizing::new(key_pem));
    (tls, fingerprint)
}

fn leaf(
    issuer: &rcgen::Issuer<'_, impl rcgen::SigningKey>,
    common_name: &str,
    uri_san: Option<&str>,
) -> (Vec<u8>, Vec<u8>, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    if let Some(uri) = uri_san {
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().expect("URI")));
    }
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let certificate = params.signed_by(&key, issuer).expect("signed");
    let fingerprint = hex::encode(Sha256::digest(certificate.der()));
    (
        certificate.pem().into_bytes(),
        key.serialize_pem().into_bytes(),
        fingerprint,
    )
}

#[tokio::test]
async fn each_dev_principal_calls_what_its_roles_allow_and_nothing_else() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), "ecdsa-p256");
    assert!(
        server.endpoint.starts_with("https://"),
        "mTLS by default: {}",
        server.endpoint
    );
    for principal in DEV_PRINCIPALS {
        assert!(
            server.banner.contains(&format!("principal {principal} (")),
            "the banner names {principal}'s files: {}",
            server.banner
        );
    }
    let sync_server = server.connect_as("sync-server").await;
    let auditor = server.connect_as("auditor").await;
    let admin = server.connect_as("admin-alice").await;

    // Everyone authenticated reads CA info and checkpoints.
    for principal in DEV_PRINCIPALS {
        let channel = server.connect_as(principal).await;
        ca_info(&channel)
            .await
            .unwrap_or_else(|status| panic!("{principal}: GetCaInfo: {status}"));
        // Past the access layer; the log may not have signed its first checkpoint yet.
        if let Err(status) = checkpoint(&channel).await {
            assert_eq!(status.code(), Code::Unavailable, "{principal}: GetCheckpoint: {status}");
        }
    }

    // sync-server issues, and may not export.
    issue_new(&sync_server, "alice").await.expect("the sync server issues");
    check_refused(
        export(&sync_server, 2).await,
        Code::PermissionDenied,
        "needs role auditor",
    );
    check_refused(
        export(&sync_server, 2).await,
        Code::PermissionDenied,
        "principal sync-server does not hold it",
    );

    // auditor exports, and may not issue; the issuance's entry names its principal.
    let entries = export(&auditor, 2).await.expect("the auditor exports");
    assert!(
        entries
            .iter()
            .any(|entry| entry.contains("\nactor sync-server\n") && entry.contains("\nsubject alice\n")),
        "the issuance is recorded with the principal as actor: {entries:#?}"
    );
    check_refused(
        issue_new(&auditor, "bob").await,
        Code::PermissionDenied,
        "needs role sync-server",
    );

    // admin may not issue (nor export).
    check_refused(
        issue_new(&admin, "bob").await,
        Code::PermissionDenied,
        "needs role sync-server",
    );
    check_refused(export(&admin, 2).await, Code::PermissionDenied, "needs role auditor");
    let lookup = IdentityClient::new(admin.clone())
        .get_certificates(e2ee_ca_proto::v1::GetCertificatesRequest {
            user_ids: vec!["alice".to_owned()],
        })
        .await;
    check_refused(lookup, Code::PermissionDenied, "needs role sync-server");
}

#[tokio::test]
async fn callers_without_a_known_certificate_are_unauthenticated_or_fail_the_handshake() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), "ecdsa-p256");
    let pki = directory.path().join("data/dev-pki");

    // No client certificate: the handshake succeeds, health answers, our RPCs are UNAUTHENTICATED.
    let anonymous = server.connect_without_certificate().await;
    let health = tonic_health::pb::health_client::HealthClient::new(anonymous.clone())
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await;
    assert!(health.is_ok(), "health is open: {health:?}");
    check_refused(
        issue_new(&anonymous, "alice").await,
        Code::Unauthenticated,
        "needs a client certificate",
    );
    check_refused(
        ca_info(&anonymous).await,
        Code::Unauthenticated,
        "needs a client certificate",
    );

    // A certificate from the dev CA that no principal matches: UNAUTHENTICATED, naming its SHA-256.
    let (stranger, fingerprint) = minted(&pki, "stranger", None);
    let stranger = server.connect_with(Some(stranger)).await;
    check_refused(
        issue_new(&stranger, "alice").await,
        Code::Unauthenticated,
        "unknown client certificate",
    );
    check_refused(ca_info(&stranger).await, Code::Unauthenticated, &fingerprint);
    // The CN of a dev principal from another CA does not make it that principal: the handshake
    // refuses a certificate that chains to no configured client CA.
    let foreign_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut foreign_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    foreign_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    foreign_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "e2ee-ca dev TLS CA");
    let foreign_ca = rcgen::CertifiedIssuer::self_signed(foreign_params, foreign_key).expect("foreign CA");
    let (certificate_pem, key_pem, _) = leaf(&foreign_ca, "sync-server", None);
    let foreign = ClientTls::new(std::fs::read(pki.join("ca.pem")).expect("dev CA"))
        .with_client_certificate(certificate_pem, zeroize::Zeroizing::new(key_pem));
    // With TLS 1.3 the client may finish its side before the server rejects the certificate, so the
    // refusal shows either at connect or on the first call; either way no RPC is answered.
    if let Ok(channel) = foreign.channel(&server.endpoint).await {
        let status = issue_new(&channel, "alice").await.expect_err("the handshake fails");
        assert!(
            !matches!(status.code(), Code::Ok | Code::PermissionDenied | Code::Unauthenticated),
            "a transport failure, not an answer of the CA: {status:?}"
        );
    }
    // The server is still serving the others.
    issue_new(&server.connect_as("sync-server").await, "alice")
        .await
        .expect("issued");
}

#[tokio::test]
async fn plaintext_dev_mode_lets_the_sync_server_issue_and_authenticates_nobody_else() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start_plaintext_in(&directory.path().join("data"), "ecdsa-p256");
    assert!(server.endpoint.starts_with("http://"), "{}", server.endpoint);
    assert!(server.banner.contains("PLAINTEXT"), "says so loudly: {}", server.banner);
    assert!(server.banner.contains("NOBODY IS AUTHENTICATED"), "{}", server.banner);
    let channel = server.connect_as("anyone").await;
    issue_new(&channel, "alice").await.expect("Identity works in plaintext");
    ca_info(&channel).await.expect("GetCaInfo works in plaintext");
    checkpoint(&channel).await.expect("GetCheckpoint works in plaintext");
    check_refused(export(&channel, 2).await, Code::Unauthenticated, "authenticates nobody");
}

#[tokio::test]
async fn config_principals_match_by_fingerprint_cn_and_san_and_a_removed_one_is_refused_after_restart() {
    let directory = tempfile::tempdir().expect("tempdir");
    let data_dir = directory.path().join("data");
    // Provision a data directory (token, CA, dev PKI) in dev mode, then serve it with a config.
    DevServer::start_in(&data_dir, "ecdsa-p256").stop();
    let pki = data_dir.join("dev-pki");
    let auditor_fingerprint = hex::encode(Sha256::digest(common::pem_der(
        &std::fs::read_to_string(pki.join("auditor.pem")).expect("auditor certificate"),
    )));
    let (robot, _) = minted(&pki, "robot", Some("spiffe://corp.example/sync"));
    let write_config = |principals: &str| {
        let dev = std::fs::read_to_string(data_dir.join("ca-service.toml")).expect("dev config");
        let mut config: toml::Table = toml::from_str(&dev).expect("dev config parses");
        let principals: toml::Table = toml::from_str(principals).expect("principals parse");
        config.insert("principals".to_owned(), principals["principals"].clone());
        let path = data_dir.join("access.toml");
        std::fs::write(&path, toml::to_string(&config).expect("serialise")).expect("write config");
        path
    };
    let sync_by_cn =
        "[[principals]]\nname = \"nextcloud\"\nroles = [\"sync-server\"]\nclient_ca = \"dev\"\ncn = \"sync-server\"\n";
    let robot_by_san = "[[principals]]\nname = \"robot\"\nroles = [\"sync-server\"]\nclient_ca = \"dev\"\nsan = \"spiffe://corp.example/sync\"\n";
    let auditor_by_fingerprint = format!(
        "[[principals]]\nname = \"compliance\"\nroles = [\"auditor\"]\nfingerprint_sha256 = \"{auditor_fingerprint}\"\n"
    );

    let config = write_config(&format!("{sync_by_cn}{robot_by_san}{auditor_by_fingerprint}"));
    let server = DevServer::start_with_config(&config);
    issue_new(&server.connect_as("sync-server").await, "carol")
        .await
        .expect("matched by CN");
    issue_new(&server.connect_with(Some(robot.clone())).await, "dave")
        .await
        .expect("matched by SAN");
    let entries = export(&server.connect_as("auditor").await, 3)
        .await
        .expect("matched by fingerprint");
    assert!(
        entries
            .iter()
            .any(|entry| entry.contains("\nactor nextcloud\n") && entry.contains("\nsubject carol\n")),
        "the configured principal's name is the actor: {entries:#?}"
    );
    assert!(
        entries.iter().any(|entry| entry.contains("\nactor robot\n")),
        "{entries:#?}"
    );
    check_refused(
        issue_new(&server.connect_as("admin-alice").await, "erin").await,
        Code::Unauthenticated,
        "unknown client certificate",
    );
    server.stop();

    // The auditor and the robot are removed: after a restart their certificates are unknown.
    let config = write_config(sync_by_cn);
    let server = DevServer::start_with_config(&config);
    check_refused(
        checkpoint(&server.connect_as("auditor").await).await,
        Code::Unauthenticated,
        &auditor_fingerprint,
    );
    check_refused(
        issue_new(&server.connect_with(Some(robot)).await, "frank").await,
        Code::Unauthenticated,
        "unknown client certificate",
    );
    issue_new(&server.connect_as("sync-server").await, "grace")
        .await
        .expect("still known");
}
