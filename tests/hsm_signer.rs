//! `hsm::Signer` on a real SoftHSM token, directly: every key algorithm signs, and what it returns verifies with the key's public half through the one verifier; the health probe signs and verifies.
//!
//! Its own `main` (`harness = false`, libtest-mimic output), because SoftHSM reads `SOFTHSM2_CONF`
//! once and the variable can be set only while the process has one thread. The same signer
//! through hsm-sim's fault-injecting module is exercised end to end in `hsm_faults.rs`.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

#[path = "common/softhsm.rs"]
mod softhsm;

use std::process::ExitCode;

use ca_service::hsm::{Hsm, KeyAlgorithm, Signer, Verifier};
use libtest_mimic::{Arguments, Failed, Trial};

const TOKEN_LABEL: &str = "hsm-signer";
const USER_PIN: &str = "hsm-signer-pin";

fn main() -> ExitCode {
    let arguments = Arguments::from_args();
    let workspace = tempfile::tempdir().expect("tempdir");
    let hsm = softhsm::connect(workspace.path(), TOKEN_LABEL, USER_PIN);
    let trials = KeyAlgorithm::ALL
        .into_iter()
        .map(|algorithm| {
            let hsm = hsm.clone();
            Trial::test(
                format!("a_{algorithm}_signer_returns_only_signatures_its_key_verifies"),
                move || check(&hsm, algorithm),
            )
        })
        .collect();
    let conclusion = libtest_mimic::run(&arguments, trials);
    drop(workspace);
    conclusion.exit_code()
}

fn check(hsm: &Hsm, algorithm: KeyAlgorithm) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let label = format!("signer-{algorithm}");
        let generated = {
            let (hsm, label) = (hsm.clone(), label.clone());
            tokio::task::spawn_blocking(move || hsm.generate_key(&label, algorithm))
                .await
                .expect("task")
                .expect("key generated on the token")
        };
        let signer = Signer::load(hsm, &label, algorithm).await.expect("loaded by label");
        assert_eq!(signer.key().spki_der(), generated.spki_der(), "the same public key");
        let message = b"a certificate's to-be-signed bytes".to_vec();
        let signature = signer.sign(message.clone()).await.expect("signs");
        let verifier = Verifier::new(signer.key()).expect("verifier");
        assert!(verifier.verifies(&message, &signature), "the signature verifies");
        assert!(
            !verifier.verifies(b"another message", &signature),
            "and only for its message"
        );
        let mut flipped = signature.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(
            !verifier.verifies(&message, &flipped),
            "a changed signature does not verify"
        );
        let signed = signer
            .with_lease(|lease| {
                let signature = lease.sign(b"inside a lease").expect("signs in a lease");
                (signature, lease.take_signed())
            })
            .await
            .expect("a lease");
        let (signature, recorded) = signed;
        let recorded = recorded.expect("the lease keeps what it verified");
        assert_eq!(
            (recorded.message.as_slice(), recorded.signature),
            (&b"inside a lease"[..], signature)
        );
        signer.probe().await.expect("the health probe signs and verifies");
        // Loading under the wrong algorithm is refused, not guessed.
        let wrong = match algorithm {
            KeyAlgorithm::EcdsaP256 => KeyAlgorithm::Rsa2048,
            _ => KeyAlgorithm::EcdsaP256,
        };
        assert!(
            Signer::load(hsm, &label, wrong).await.is_err(),
            "{label} is not a {wrong} key"
        );
    });
    Ok(())
}
