//! `revocation::crl` on a real SoftHSM token: CRLs signed by RSA, P-256 and P-384 CA keys made by the real ceremony verify with `openssl crl -verify` under their CA certificate and under no other, and say (to openssl and to `describe_crl`) the number, AKI, dates and reasons they were given; bad inputs are refused.
//!
//! Its own `main` (`harness = false`, libtest-mimic output), because SoftHSM reads `SOFTHSM2_CONF`
//! once and the variable can be set only while the process has one thread.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

#[path = "common/softhsm.rs"]
mod softhsm;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use ca_service::config::CeremonyConfig;
use ca_service::hsm::{Hsm, KeyAlgorithm, Signer};
use ca_service::identity::SerialNumber;
use ca_service::issuer::CaCertificate;
use ca_service::revocation::RevocationReason;
use ca_service::revocation::crl::{self, CrlError, CrlParams, RevokedEntry};
use libtest_mimic::{Arguments, Failed, Trial};
use time::OffsetDateTime;

const TOKEN_LABEL: &str = "crl-signer";
const USER_PIN: &str = "crl-signer-pin";

fn main() -> ExitCode {
    let arguments = Arguments::from_args();
    let workspace = tempfile::tempdir().expect("tempdir");
    let hsm = softhsm::connect(workspace.path(), TOKEN_LABEL, USER_PIN);
    let root = workspace.path().to_path_buf();
    let mut trials: Vec<Trial> = [KeyAlgorithm::Rsa2048, KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384]
        .into_iter()
        .map(|algorithm| {
            let (hsm, root) = (hsm.clone(), root.clone());
            Trial::test(
                format!("a_crl_signed_by_a_{algorithm}_ca_key_verifies_with_openssl_under_its_ca_only"),
                move || a_crl_verifies_with_openssl_under_its_ca_only(&hsm, &root, algorithm),
            )
        })
        .collect();
    {
        let (hsm, root) = (hsm.clone(), root.clone());
        trials.push(Trial::test(
            "a_crl_is_refused_for_bad_dates_and_for_a_ca_certificate_it_cannot_use",
            move || a_crl_is_refused_for_bad_dates_and_unusable_ca_certificates(&hsm, &root),
        ));
    }
    let conclusion = libtest_mimic::run(&arguments, trials);
    drop(workspace);
    conclusion.exit_code()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A root CA of `algorithm` named `common_name` made by the real ceremony under `root/name`: its signer, its
/// certificate and the path of that certificate's PEM.
async fn ceremony(
    hsm: &Hsm,
    root: &Path,
    name: &str,
    common_name: &str,
    algorithm: KeyAlgorithm,
) -> (Signer, CaCertificate, PathBuf) {
    let directory = root.join(name);
    std::fs::create_dir_all(&directory).expect("ceremony directory");
    std::fs::write(directory.join("pin"), USER_PIN).expect("pin file");
    let config = directory.join("ceremony.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"root\"\nkey_label = \"{name}-ca\"\nkey_algorithm = \"{algorithm}\"\noutput = \"ca.pem\"\n\
             [subject]\ncommon_name = {common_name:?}\n\
             [hsm]\nmodule = {module:?}\ntoken_label = {TOKEN_LABEL:?}\npin_file = \"pin\"\n",
            module = hsm_sim::find_module().expect("module").display().to_string(),
        ),
    )
    .expect("ceremony config");
    let config = CeremonyConfig::load(&config).expect("ceremony config loads");
    ca_service::ceremony::run(hsm, &config).await.expect("ceremony");
    let signer = Signer::load(hsm, &format!("{name}-ca"), algorithm)
        .await
        .expect("CA key");
    let pem_path = directory.join("ca.pem");
    let certificates = ca_service::ceremony::read_pem_certificates(&pem_path).expect("CA certificate");
    let ca = CaCertificate {
        certificate_der: certificates[0].clone(),
        parents_der: Vec::new(),
    };
    (signer, ca, pem_path)
}

/// Whole seconds: what a CRL keeps of a time.
fn now_in_seconds() -> OffsetDateTime {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("zero nanoseconds")
}

/// One entry per reason, revoked a minute apart.
fn entries(now: OffsetDateTime) -> Vec<RevokedEntry> {
    RevocationReason::ALL
        .into_iter()
        .enumerate()
        .map(|(index, reason)| RevokedEntry {
            serial: SerialNumber::generate(),
            revoked_at: now - time::Duration::minutes(60 - i64::try_from(index).expect("small")),
            reason,
        })
        .collect()
}

fn write_pem(path: &Path, tag: &str, der: &[u8]) {
    std::fs::write(path, pem::encode(&pem::Pem::new(tag, der.to_vec()))).expect("write PEM");
}

/// `openssl crl -in CRL -CAfile CA -verify -noout`: its exit status and what it printed.
fn openssl_verify(crl: &Path, ca: &Path) -> (bool, String) {
    let output = Command::new("openssl")
        .args(["crl", "-noout", "-verify", "-in"])
        .arg(crl)
        .arg("-CAfile")
        .arg(ca)
        .output()
        .expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `openssl crl -text -noout`, its runs of whitespace made single spaces.
fn openssl_text(crl: &Path) -> String {
    let output = Command::new("openssl")
        .args(["crl", "-text", "-noout", "-in"])
        .arg(crl)
        .output()
        .expect("openssl runs");
    assert!(output.status.success(), "openssl crl -text: {output:?}");
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The CA certificate's subject key identifier, as openssl prints it (`AB:CD:…`).
fn subject_key_identifier(ca: &CaCertificate) -> Vec<u8> {
    let (_, certificate) = x509_parser::parse_x509_certificate(&ca.certificate_der).expect("CA parses");
    certificate
        .extensions()
        .iter()
        .find_map(|extension| match extension.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(identifier) => Some(identifier.0.to_vec()),
            _ => None,
        })
        .expect("the ceremony's CA certificate has an SKI")
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// openssl's date form in `Last Update:` / `Next Update:`, spaces collapsed: `Jan 2 03:04:05 2026 GMT`.
fn openssl_date(at: OffsetDateTime) -> String {
    let format =
        time::format_description::parse("[month repr:short] [day padding:none] [hour]:[minute]:[second] [year] GMT")
            .expect("format");
    at.format(&format).expect("formats")
}

fn a_crl_verifies_with_openssl_under_its_ca_only(
    hsm: &Hsm,
    root: &Path,
    algorithm: KeyAlgorithm,
) -> Result<(), Failed> {
    runtime().block_on(async {
        let name = algorithm.name();
        let common_name = format!("CRL Test CA {name}");
        let (signer, ca, ca_pem) = ceremony(hsm, root, name, &common_name, algorithm).await;
        // Another CA of the same name and algorithm: only the key tells them apart.
        let (_, other_ca, other_ca_pem) = ceremony(hsm, root, &format!("{name}-other"), &common_name, algorithm).await;
        let now = now_in_seconds();
        let params = CrlParams {
            number: 4242,
            this_update: now,
            next_update: now + time::Duration::hours(24),
        };
        let revoked = entries(now);
        let der = crl::sign_crl(&signer, &ca, &params, &revoked).await.expect("signs");
        let directory = root.join(name);
        let crl_pem = directory.join("crl.pem");
        write_pem(&crl_pem, "X509 CRL", &der);

        let (verified, output) = openssl_verify(&crl_pem, &ca_pem);
        assert!(verified && output.contains("verify OK"), "{algorithm}: {output}");
        // OpenSSL 3.0's `crl -verify` exits 0 after a failed signature check and only prints
        // "verify failure" (seen with 3.0.19), so the message decides here, not the status.
        let (_, output) = openssl_verify(&crl_pem, &other_ca_pem);
        assert!(
            !output.contains("verify OK") && output.contains("verify failure"),
            "{algorithm}: another CA's certificate must not verify it: {output}"
        );
        assert_ne!(ca.certificate_der, other_ca.certificate_der);

        let text = openssl_text(&crl_pem);
        let ski = subject_key_identifier(&ca);
        let signature_algorithm = match algorithm {
            KeyAlgorithm::EcdsaP256 => "ecdsa-with-SHA256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-with-SHA384",
            _ => "sha256WithRSAEncryption",
        };
        for expected in [
            "Version 2 (0x1)".to_owned(),
            format!("Signature Algorithm: {signature_algorithm}"),
            format!("Issuer: CN = CRL Test CA {name}"),
            format!("Last Update: {}", openssl_date(params.this_update)),
            format!("Next Update: {}", openssl_date(params.next_update)),
            "X509v3 CRL Number: 4242".to_owned(),
            format!("X509v3 Authority Key Identifier: {}", colon_hex(&ski)),
            "X509v3 CRL Reason Code: Key Compromise".to_owned(),
            "X509v3 CRL Reason Code: Affiliation Changed".to_owned(),
            "X509v3 CRL Reason Code: Superseded".to_owned(),
            "X509v3 CRL Reason Code: Cessation Of Operation".to_owned(),
            "X509v3 CRL Reason Code: Privilege Withdrawn".to_owned(),
        ] {
            assert!(text.contains(&expected), "{algorithm}: {expected:?} not in\n{text}");
        }
        for entry in &revoked {
            let serial = format!(
                "Serial Number: {} Revocation Date: {}",
                entry.serial.to_hex().to_uppercase(),
                openssl_date(entry.revoked_at)
            );
            assert!(text.contains(&serial), "{algorithm}: serial {serial} not in\n{text}");
        }

        let summary = crl::describe_crl(&der).expect("describes");
        assert_eq!(summary.number, 4242);
        assert_eq!(summary.this_update, params.this_update);
        assert_eq!(summary.next_update, params.next_update);
        assert_eq!(summary.authority_key_identifier, ski, "AKI = the CA certificate's SKI");
        assert_eq!(
            summary.revoked, revoked,
            "every entry with its serial, time and reason, in order"
        );

        // An empty CRL (nothing revoked yet) is signed, verifies and says so.
        let empty_params = CrlParams { number: 0, ..params };
        let empty = crl::sign_crl(&signer, &ca, &empty_params, &[])
            .await
            .expect("signs an empty CRL");
        let empty_pem = directory.join("empty-crl.pem");
        write_pem(&empty_pem, "X509 CRL", &empty);
        let (verified, output) = openssl_verify(&empty_pem, &ca_pem);
        assert!(verified && output.contains("verify OK"), "{algorithm} empty: {output}");
        let text = openssl_text(&empty_pem);
        assert!(text.contains("No Revoked Certificates."), "{text}");
        let summary = crl::describe_crl(&empty).expect("describes the empty CRL");
        assert_eq!((summary.number, summary.revoked.len()), (0, 0));
    });
    Ok(())
}

fn a_crl_is_refused_for_bad_dates_and_unusable_ca_certificates(hsm: &Hsm, root: &Path) -> Result<(), Failed> {
    runtime().block_on(async {
        let (signer, ca, _) = ceremony(hsm, root, "refusals", "Refusals CA", KeyAlgorithm::EcdsaP256).await;
        let (_, other_ca, _) = ceremony(hsm, root, "refusals-other", "Refusals CA", KeyAlgorithm::EcdsaP256).await;
        let now = now_in_seconds();
        let revoked = entries(now);
        let good = CrlParams {
            number: 1,
            this_update: now,
            next_update: now + time::Duration::hours(1),
        };

        for next_update in [now, now - time::Duration::seconds(1)] {
            let params = CrlParams { next_update, ..good };
            let refused = crl::sign_crl(&signer, &ca, &params, &revoked).await;
            assert!(
                matches!(refused, Err(CrlError::Build(_))),
                "nextUpdate not after thisUpdate: {refused:?}"
            );
        }

        // The CA certificate of another key: the HSM's signature verifies with the signer's own
        // key, but not with the certificate's, so nothing is returned.
        let refused = crl::sign_crl(&signer, &other_ca, &good, &revoked).await;
        assert!(matches!(refused, Err(CrlError::SignatureCheck)), "{refused:?}");

        // Not a certificate at all.
        let garbage = CaCertificate {
            certificate_der: b"not a certificate".to_vec(),
            parents_der: Vec::new(),
        };
        let refused = crl::sign_crl(&signer, &garbage, &good, &revoked).await;
        assert!(matches!(refused, Err(CrlError::CaCertificate(_))), "{refused:?}");

        // A certificate without a subject key identifier: the CRL's AKI would have nothing to match.
        let software_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = rcgen::IsCa::NoCa;
        let no_ski = CaCertificate {
            certificate_der: params.self_signed(&software_key).expect("self-signed").der().to_vec(),
            parents_der: Vec::new(),
        };
        let refused = crl::sign_crl(&signer, &no_ski, &good, &revoked).await;
        assert!(matches!(refused, Err(CrlError::CaCertificate(_))), "{refused:?}");

        // A CA certificate whose key usage does not include cRLSign.
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let no_crl_sign = CaCertificate {
            certificate_der: params.self_signed(&software_key).expect("self-signed").der().to_vec(),
            parents_der: Vec::new(),
        };
        let refused = crl::sign_crl(&signer, &no_crl_sign, &good, &revoked).await;
        assert!(matches!(refused, Err(CrlError::Build(_))), "{refused:?}");

        // describe_crl refuses what is not a whole CRL.
        let der = crl::sign_crl(&signer, &ca, &good, &revoked).await.expect("signs");
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(matches!(crl::describe_crl(&trailing), Err(CrlError::Parse(_))));
        assert!(matches!(
            crl::describe_crl(&der[..der.len() / 2]),
            Err(CrlError::Parse(_))
        ));
        assert!(matches!(
            crl::describe_crl(&ca.certificate_der),
            Err(CrlError::Parse(_))
        ));
    });
    Ok(())
}
